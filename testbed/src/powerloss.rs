//! A disk that loses what was not synced ([`PowerLossDisk`]): `testbed/powerloss/disk.py`
//! mounted over a directory, for the power-loss test. Processes see their writes at once;
//! the disk image keeps only what fsync made durable (a file's contents by fsync of the file,
//! names by fsync of their directory). [`PowerLossDisk::cut`] kills the file system process:
//! from that instant nothing more reaches the image and every operation on the mount fails,
//! as when a host loses power; [`PowerLossDisk::mount`] on the same image is the reboot.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::env::workspace_root;
use crate::process::stop_child;

/// The power-loss disk mounted at `mountpoint`, its durable image in `image`.
pub struct PowerLossDisk {
    child: Option<Child>,
    pub image: PathBuf,
    pub mountpoint: PathBuf,
}

fn is_fuse_mount(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::FUSE_SUPER_MAGIC)
        .unwrap_or(false)
}

impl PowerLossDisk {
    /// Mounts the disk whose image is `image` (a new, empty disk if it does not exist) at
    /// `mountpoint` (created if missing). Needs root and python3-fusepy (scripts/setup.sh).
    pub fn mount(image: &Path, mountpoint: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(mountpoint)?;
        let script = workspace_root().join("testbed/powerloss/disk.py");
        let child = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(image)
            .arg(mountpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", script.display())))?;
        let mut disk = PowerLossDisk {
            child: Some(child),
            image: image.to_owned(),
            mountpoint: mountpoint.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_fuse_mount(mountpoint) {
            if let Some(c) = disk.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    disk.child = None;
                    return Err(io::Error::other(format!(
                        "the power-loss disk exited with {status} before mounting (needs root \
                         and python3-fusepy: scripts/setup.sh)"
                    )));
                }
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(
                    "the power-loss disk did not mount in 20 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(disk)
    }

    /// The PID of the file system process (a power cut is a SIGKILL of it).
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Cuts the power: kills the file system process (nothing unsynced reaches the image;
    /// every later operation on the mount fails) and detaches the dead mount.
    pub fn cut(&mut self) -> io::Result<()> {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, Signal::SIGKILL, Duration::from_secs(10))?;
        }
        self.detach()
    }

    fn detach(&self) -> io::Result<()> {
        match nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(io::Error::other(format!(
                "unmounting {}: {e}",
                self.mountpoint.display()
            ))),
        }
    }
}

impl Drop for PowerLossDisk {
    fn drop(&mut self) {
        let _ = self.cut();
    }
}
