//! An `swtpm socket --tpm2` process.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::process::{stop_child, wait_for_listener};

/// An `swtpm socket --tpm2` process with its state under a directory.
pub struct SwtpmProcess {
    child: Child,
    /// Control channel (`--ctrl`), what QEMU's `-tpmdev emulator` and our swtpm engine use.
    pub ctrl: PathBuf,
    /// Data channel (`--server`), when started with one.
    pub data: Option<PathBuf>,
}

impl SwtpmProcess {
    /// Starts swtpm under `dir`. With `data_socket`, it also serves TPM commands on a data
    /// socket and starts initialised (`not-need-init`), as our swtpm engine expects; without
    /// it, it waits for its client (QEMU) to pass the data channel and initialise it.
    /// Its state lives in `dir/swtpm-state`.
    pub fn start(dir: &Path, data_socket: bool) -> io::Result<Self> {
        Self::start_with(dir, &dir.join("swtpm-state"), data_socket, &[])
    }

    /// Like [`SwtpmProcess::start`] on the state directory `state`, with `extra` arguments
    /// for swtpm (e.g. `--key file=...`).
    pub fn start_with(
        dir: &Path,
        state: &Path,
        data_socket: bool,
        extra: &[&str],
    ) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        std::fs::create_dir_all(state)?;
        let ctrl = dir.join("swtpm-ctrl.sock");
        let data = data_socket.then(|| dir.join("swtpm-data.sock"));
        // Sockets left by an swtpm killed earlier would look like listening ones.
        for p in [Some(&ctrl), data.as_ref()].into_iter().flatten() {
            let _ = std::fs::remove_file(p);
        }
        let mut cmd = Command::new("swtpm");
        cmd.args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", state.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", ctrl.display()))
            .stdout(Stdio::null());
        if let Some(data) = &data {
            cmd.args(["--flags", "not-need-init", "--server"])
                .arg(format!("type=unixio,path={}", data.display()));
        }
        cmd.args(extra);
        let child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("swtpm (scripts/setup.sh installs it): {e}"),
            )
        })?;
        let mut s = SwtpmProcess { child, ctrl, data };
        for p in [Some(&s.ctrl), s.data.as_ref()].into_iter().flatten() {
            if let Err(e) = wait_for_listener(p, Duration::from_secs(10)) {
                let _ = s.child.kill();
                return Err(e);
            }
        }
        Ok(s)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, and waits (at most 30 s) for swtpm to exit.
    pub fn stop(mut self) -> io::Result<ExitStatus> {
        stop_child(&mut self.child, Signal::SIGTERM, Duration::from_secs(30))
    }
}

impl Drop for SwtpmProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
