//! Where `scripts/setup.sh` put what the end-to-end tests, the demo and the guest benchmark
//! need: `target/vtpm-env` (`QEMU=`, `QEMU_DATA_DIR=`, `KERNEL=`, `INITRD=`, `DAEMON=` lines,
//! the Debian guest's `DEBIAN_*=` lines from guest-driver/debian/build.sh and `HOST_DEB=`, the
//! host package from packaging/deb/build.sh).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Paths of the built artefacts.
#[derive(Debug, Clone)]
pub struct Env {
    pub qemu: PathBuf,
    pub qemu_data_dir: Option<PathBuf>,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub daemon: PathBuf,
    /// The Debian guest, when the set-up built it.
    pub debian: Option<DebianImage>,
    /// The host side's Debian package (packaging/deb/build.sh), when the set-up built it.
    pub host_deb: Option<PathBuf>,
}

/// The Debian systemd guest (guest-driver/debian/build.sh).
#[derive(Debug, Clone)]
pub struct DebianImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The ext4 root file system; guests boot from a qcow2 overlay of it.
    pub rootfs: PathBuf,
    /// The driver's package installed in the image.
    pub module_deb: PathBuf,
    /// The kernel's ABI name (e.g. `6.1.0-57-amd64`).
    pub kver: String,
}

/// The workspace's top directory.
pub(crate) fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

impl Env {
    /// The Debian guest; panics with the fix if the set-up did not build it.
    pub fn debian(&self) -> &DebianImage {
        self.debian.as_ref().unwrap_or_else(|| {
            panic!("no DEBIAN_*= lines in target/vtpm-env: run scripts/setup.sh (it builds the Debian guest)")
        })
    }

    /// Reads `target/vtpm-env` (or the file named by `VTPM_ENV`). Panics with the fix if the
    /// set-up has not been run: these tests must not silently skip.
    pub fn load() -> Env {
        let path = std::env::var_os("VTPM_ENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target/vtpm-env"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}: run scripts/setup.sh first (it builds QEMU and the guest)",
                path.display()
            )
        });
        let map: HashMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let get = |k: &str| -> PathBuf {
            let p = PathBuf::from(
                map.get(k)
                    .unwrap_or_else(|| panic!("{k}= missing in {}", path.display())),
            );
            assert!(
                p.exists(),
                "{k}={} does not exist: re-run scripts/setup.sh",
                p.display()
            );
            p
        };
        Env {
            qemu: get("QEMU"),
            qemu_data_dir: map
                .get("QEMU_DATA_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            kernel: get("KERNEL"),
            initrd: get("INITRD"),
            daemon: get("DAEMON"),
            host_deb: map.get("HOST_DEB").map(|_| get("HOST_DEB")),
            debian: map.get("DEBIAN_ROOTFS").map(|_| DebianImage {
                kernel: get("DEBIAN_KERNEL"),
                initrd: get("DEBIAN_INITRD"),
                rootfs: get("DEBIAN_ROOTFS"),
                module_deb: get("DEBIAN_MODULE_DEB"),
                kver: map.get("DEBIAN_KVER").unwrap_or(&"").to_string(),
            }),
        }
    }
}

/// A binary of this workspace built by the same `cargo` run as the calling test (same target
/// directory and profile), for tests that use another crate's binary. Panics with the fix if
/// it was not built: `cargo test --workspace` builds every binary first.
pub fn workspace_bin(name: &str) -> PathBuf {
    // A test runs as target/<profile>/deps/<test>-<hash>; binaries are in target/<profile>.
    let profile_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| panic!("cannot locate the target directory of this test"));
    let bin = profile_dir.join(name);
    assert!(
        bin.exists(),
        "{} is not built: run the tests with `cargo test --workspace` (or build it first)",
        bin.display()
    );
    bin
}
