//! The QEMU patch series (qemu/patches/) in the shape QEMU review expects: every patch is
//! `git format-patch` output with a Signed-off-by line, and QEMU 10.0.2's
//! scripts/checkpatch.pl is clean on each (qemu/checkpatch.sh; its one allowed warning is
//! explained in qemu/README.md). Cheap: perl on twelve small files, no QEMU build and no
//! guest. Needs the QEMU source tarball that qemu/build.sh (scripts/setup.sh) caches.

// Integration tests: a failed step panics with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use testbed::run_tool;

#[test]
fn qemu_series_passes_checkpatch_and_is_signed_off() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu/checkpatch.sh");
    let text = run_tool(Command::new("bash").arg(&script))
        .unwrap_or_else(|text| panic!("qemu/checkpatch.sh failed:\n{text}"));
    // The script checked something: one "ok" line per patch.
    let patches = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu/patches"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "patch")
        })
        .count();
    assert!(
        patches > 1,
        "qemu/patches holds {patches} patch(es), expected a series"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ok   ")).count(),
        patches,
        "{text}"
    );
}
