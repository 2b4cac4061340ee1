//! This crate's README documents the `vtpm-state` commands: every option `--help` shows is
//! in it, and every option it shows exists.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn readme_options_match_the_command_line() {
    let commands: &[&[&str]] = &[
        &["gen-host-key"],
        &["inspect"],
        &["reset"],
        &["accept-current"],
        &["import-swtpm"],
    ];
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_vtpm-state"));
    testbed::crate_readme_drift(env!("CARGO_MANIFEST_DIR"), bin, commands).unwrap();
}
