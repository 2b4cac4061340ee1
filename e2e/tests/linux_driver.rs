//! The Linux driver builds, warning-free, against every installed Debian kernel: the
//! bookworm kernel (the test guest's, 6.1) and the bookworm-backports one (6.12), both
//! installed by scripts/setup.sh. Its upstream shape passes its checks: the in-tree patch
//! is current, checkpatch --strict is clean, and the patched drivers/char/tpm builds
//! against the 6.1 headers with the real private tpm.h (guest-driver/linux/upstream/check.sh,
//! which needs linux-source-6.1, also installed by scripts/setup.sh). dkms itself builds the
//! module from its DKMS configuration, as on a guest owner's machine.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use testbed::run_tool;

#[test]
fn tpm_virtio_builds_without_warnings_for_6_1_and_6_12() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../guest-driver/linux/build-all.sh"
    );
    let out_dir = tempfile::tempdir().unwrap();
    let text = run_tool(
        Command::new("bash")
            .arg(script)
            .env("OUT_DIR", out_dir.path()),
    )
    .unwrap_or_else(|text| panic!("driver build failed:\n{text}"));
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
    let text = run_tool(Command::new("bash").arg(script))
        .unwrap_or_else(|text| panic!("upstream checks failed:\n{text}"));
    assert!(text.contains("check: ok"), "{text}");
}

/// The DKMS way a guest owner installs the driver for their own kernel: the driver's directory
/// as `/usr/src/tpm-virtio-<version>` would hold it (guest-driver/linux/dkms.conf says so), and
/// `dkms build` for the test guest's kernel, in a DKMS tree of the test's own so the host's is
/// untouched. The module it leaves is for that kernel.
#[test]
fn dkms_builds_the_module_from_its_configuration() {
    let env = testbed::Env::load();
    let kver = &env.debian().kver;
    assert!(!kver.is_empty(), "no DEBIAN_KVER= in target/vtpm-env");
    let linux = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../guest-driver/linux"
    ));
    let conf = std::fs::read_to_string(linux.join("dkms.conf")).unwrap();
    let version = conf
        .lines()
        .find_map(|l| l.strip_prefix("PACKAGE_VERSION="))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("PACKAGE_VERSION in dkms.conf");
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join(format!("src/tpm-virtio-{version}"));
    copy_tree(linux, &source, &["build", "upstream"]);
    std::fs::create_dir(tmp.path().join("dkms")).unwrap();
    let text = run_tool(
        Command::new("dkms")
            .args(["build", "-m", "tpm-virtio", "-v", &version, "-k", kver])
            .arg("--sourcetree")
            .arg(tmp.path().join("src"))
            .arg("--dkmstree")
            .arg(tmp.path().join("dkms")),
    )
    .unwrap_or_else(|text| panic!("dkms build failed (scripts/setup.sh installs dkms):\n{text}"));
    let module = tmp.path().join(format!(
        "dkms/tpm-virtio/{version}/{kver}/x86_64/module/tpm_virtio.ko"
    ));
    assert!(
        module.is_file(),
        "dkms left no {}:\n{text}",
        module.display()
    );
    let vermagic = Command::new("modinfo")
        .args(["-F", "vermagic"])
        .arg(&module)
        .output()
        .unwrap();
    let vermagic = String::from_utf8_lossy(&vermagic.stdout);
    assert!(
        vermagic.starts_with(&format!("{kver} ")),
        "vermagic {vermagic:?} is not for {kver}"
    );
}

/// Copies `from` into `to` (created), leaving out the top-level entries named in `skip`.
fn copy_tree(from: &std::path::Path, to: &std::path::Path, skip: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let name = e.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        let p = e.path();
        if p.is_dir() {
            copy_tree(&p, &to.join(&name), &[]);
        } else {
            std::fs::copy(&p, to.join(&name)).unwrap();
        }
    }
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
