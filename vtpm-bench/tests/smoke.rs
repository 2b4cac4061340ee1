//! The benchmark binary keeps working: a tiny run through every path and placement must
//! print a complete table. (Speed is measured by running it, never asserted here.) It needs
//! the `vhost-vtpm` and `vtpm-state` binaries beside it, which `cargo test --workspace`
//! builds.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

/// Runs vtpm-bench with tiny iteration counts and returns what it printed.
fn run_bench(extra: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vtpm-bench"))
        .args([
            "--fast",
            "20",
            "--slow",
            "3",
            "--cold-runs",
            "2",
            "--load-ops",
            "20",
        ])
        .args(extra)
        .output()
        .expect("run vtpm-bench");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "vtpm-bench failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

const LATENCY: &[&str] = &[
    "All on CPU 0",
    "Unpinned",
    "Split",
    "| libtpms in-process (floor) | GetRandom(32) |",
    "| swtpm socket | ECDSA P-256 Sign |",
    "| vhost-vtpm | PCR_Extend |",
    "| vhost-vtpm + busy-poll | NV_Write (durable) |",
];

const STATE: &[&str] = &[
    "## State: durability, cold start, memory, isolation",
    "| NV_Write | yes | vhost-vtpm, --host-key-file |",
    "| NV_Increment | yes | vhost-vtpm, --host-tpm (simulator) |",
    "| NV_Increment | yes | swtpm socket |",
    "| GetRandom(32) | no | swtpm socket |",
    "| vhost-vtpm, --host-tpm (simulator) | imported (unseal key in host TPM, decrypt state) | 2 |",
    "| vhost-vtpm, --host-key-file | new instance (manufacture, first write) | 2 |",
    "| swtpm socket | swtpm_setup's (plain permall) | 2 |",
    "| swtpm | tpm2-00.permall |",
    "| vhost-vtpm, --host-key-file | the newest state slot holds libtpms blob permall |",
    "| vhost-vtpm, --host-key-file | idle (connected, after Startup) |",
    "| swtpm socket | after 20 commands |",
    "| unpinned | flooded (PCR_Extend) | 20 |",
    "| all on CPU 0 | idle | 20 |",
];

#[test]
fn vtpm_bench_prints_every_section_path_and_placement() {
    let text = run_bench(&[]);
    for needle in LATENCY.iter().chain(STATE) {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn vtpm_bench_only_state_skips_the_latency_tables() {
    let text = run_bench(&["--only", "state"]);
    for needle in STATE {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(
        !text.contains("| libtpms in-process (floor) |"),
        "--only state printed the latency section:\n{text}"
    );
}

#[test]
fn vtpm_bench_scale_prints_every_table_and_no_failure() {
    let text = run_bench(&[
        "scale",
        "--instances",
        "3",
        "--busy",
        "1",
        "--samples",
        "20",
        "--start-threads",
        "2",
    ]);
    for needle in [
        "| vhost-vtpm | new | 3 | 3 |",
        "| vhost-vtpm | existing | 3 | 3 |",
        "| swtpm socket | new | 3 | 3 |",
        "| swtpm socket | existing | 3 | 3 |",
        "| vhost-vtpm | all idle after start | 3 |",
        "| swtpm socket | after the latency runs | 3 |",
        "| vhost-vtpm | all idle | 20 |",
        "| swtpm socket | 1 busy (PCR_Extend flood), sampled among the other 2 | 20 |",
        "| swtpm socket | 1 |",
        "None: every instance of both kinds started",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}
