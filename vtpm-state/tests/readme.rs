//! This crate's README documents the `vtpm-state` commands: every option `--help` shows is
//! in it, and every option it shows exists.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn readme_options_match_the_command_line() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let commands: &[&[&str]] = &[
        &["gen-host-key"],
        &["inspect"],
        &["reset"],
        &["accept-current"],
        &["import-swtpm"],
    ];
    testbed::readme_drift(
        &readme,
        &[(
            std::path::Path::new(env!("CARGO_BIN_EXE_vtpm-state")),
            commands,
        )],
    )
    .unwrap();
}
