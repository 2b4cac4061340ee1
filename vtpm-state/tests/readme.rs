//! This crate's README documents the `vtpm-state` commands: every option `--help` shows is
//! in it, and every option it shows exists.

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
