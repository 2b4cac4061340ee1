//! The benchmark binary keeps working: a tiny run through every path and placement must
//! print a complete table. (Speed is measured by running it, never asserted here.) It needs
//! the `vhost-vtpm` binary beside it, which `cargo test --workspace` builds.

#[test]
fn vtpm_bench_prints_every_path_and_placement() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vtpm-bench"))
        .args(["--fast", "20", "--slow", "3"])
        .output()
        .expect("run vtpm-bench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "vtpm-bench failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "All on CPU 0",
        "Unpinned",
        "Split",
        "| libtpms in-process (floor) | GetRandom(32) |",
        "| swtpm socket | ECDSA P-256 Sign |",
        "| vhost-vtpm | PCR_Extend |",
        "| vhost-vtpm + busy-poll | NV_Write (durable) |",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}
