//! Shared by the vtpm-host integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub const HOST: &str = env!("CARGO_BIN_EXE_vtpm-host");

/// A sibling binary of the workspace (`cargo build --release --workspace` builds them all).
pub fn bin(name: &str) -> PathBuf {
    let p = Path::new(HOST).with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --release --workspace` (scripts/setup.sh does)",
        p.display()
    );
    p
}

/// The directory of the workspace's binaries.
pub fn bin_dir() -> &'static Path {
    Path::new(HOST).parent().expect("binary directory")
}
