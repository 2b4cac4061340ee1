//! The Linux driver builds, warning-free, against every installed Debian kernel: the
//! bookworm kernel (the test guest's, 6.1) and the bookworm-backports one (6.12), both
//! installed by scripts/setup.sh. Its upstream shape passes its checks: the in-tree patch
//! is current, checkpatch --strict is clean, and the patched drivers/char/tpm builds
//! against the 6.1 headers with the real private tpm.h (guest-driver/linux/upstream/check.sh,
//! which needs linux-source-6.1, also installed by scripts/setup.sh).

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn tpm_virtio_builds_without_warnings_for_6_1_and_6_12() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../guest-driver/linux/build-all.sh"
    );
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(script)
        .env("OUT_DIR", out_dir.path())
        .output()
        .expect("run build-all.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "driver build failed:\n{text}");
    for series in ["6.1.", "6.12."] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("== ") && l.contains(series)),
            "no {series} kernel headers were built against (run scripts/setup.sh):\n{text}"
        );
    }
    let modules: Vec<_> = walk(out_dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "ko"))
        .collect();
    assert!(
        modules.len() >= 2,
        "expected a module per kernel, got {modules:?}\n{text}"
    );
}

#[test]
fn upstream_patch_is_current_checkpatch_clean_and_builds_in_tree() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../guest-driver/linux/upstream/check.sh"
    );
    let out = Command::new("bash")
        .arg(script)
        .output()
        .expect("run upstream/check.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "upstream checks failed:\n{text}");
    assert!(text.contains("check: ok"), "{text}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
