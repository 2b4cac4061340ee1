//! A `vhost-vtpm` daemon process with its socket, state directory, host key and log under one
//! directory of the caller's.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::process::{stop_child, POLL};

/// A `vhost-vtpm` daemon: socket `vtpm.sock`, state directory `state/`, host key file
/// `host.key` and log `daemon.log` under one directory.
pub struct DaemonProcess {
    child: Option<Child>,
    bin: PathBuf,
    args: Vec<OsString>,
    pub socket: PathBuf,
    pub state: PathBuf,
    /// The host key file passed with `--host-key-file`, when the testbed chose the key.
    pub host_key: Option<PathBuf>,
    pub log: PathBuf,
}

/// Creates a host key file (as `vtpm-state gen-host-key` does) unless it exists.
pub fn ensure_host_key(path: &Path) -> io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    vtpm_state::keys::generate_host_key_file(path)
        .map(drop)
        .map_err(io::Error::other)
}

impl DaemonProcess {
    /// Starts `bin` with `extra` arguments after `--socket-path` and, unless `extra` selects
    /// the swtpm engine (which keeps its own state), `--state-dir` and (unless `extra` names
    /// a host key itself) `--host-key-file` with a key made for this directory.
    pub fn start(bin: &Path, dir: &Path, extra: &[&str]) -> io::Result<Self> {
        let socket = dir.join("vtpm.sock");
        let state = dir.join("state");
        let mut args: Vec<OsString> = vec!["--socket-path".into(), socket.clone().into()];
        let mut host_key = None;
        if !extra.contains(&"swtpm") {
            args.extend(["--state-dir".into(), state.clone().into()]);
            if !extra.contains(&"--host-tpm") && !extra.contains(&"--host-key-file") {
                let key = dir.join("host.key");
                ensure_host_key(&key)?;
                args.extend(["--host-key-file".into(), key.clone().into()]);
                host_key = Some(key);
            }
        }
        args.extend(extra.iter().map(OsString::from));
        let mut d = DaemonProcess {
            child: None,
            bin: bin.to_path_buf(),
            args,
            socket,
            state,
            host_key,
            log: dir.join("daemon.log"),
        };
        d.restart()?;
        Ok(d)
    }

    /// Starts the daemon again with the same arguments (after it stopped or was killed) and
    /// waits for its socket.
    /// An error if the daemon exits instead (it refused its configuration or state), with
    /// what it logged.
    pub fn restart(&mut self) -> io::Result<()> {
        // A running daemon would keep its state directory locked, and its handle would be
        // lost here (leaving the process behind): stop it first.
        if self.wait_exit_timeout()?.is_none() && self.child.is_some() {
            return Err(io::Error::other(
                "the daemon is still running: stop it (signal) before restart",
            ));
        }
        let log = File::options().create(true).append(true).open(&self.log)?;
        // A socket file left by a killed daemon would look like a listening one.
        let _ = std::fs::remove_file(&self.socket);
        let logged_before = self.log_text().len();
        let child = Command::new(&self.bin)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket.exists() {
            if let Some(status) = self.wait_exit_timeout()? {
                let log = self.log_text();
                return Err(io::Error::other(format!(
                    "vhost-vtpm exited ({status}) instead of listening:\n{}",
                    log.get(logged_before..).unwrap_or(&log)
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{} did not appear within 20 s", self.socket.display()),
                ));
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    /// The running process' id.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Sends `sig` and waits (at most 30 s) for the process to end.
    pub fn signal(&mut self, sig: Signal) -> io::Result<ExitStatus> {
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| io::Error::other("daemon is not running"))?;
        let status = stop_child(child, sig, Duration::from_secs(30))?;
        self.child = None;
        Ok(status)
    }

    fn wait_exit_timeout(&mut self) -> io::Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = child.try_wait()?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    /// Waits for a process that was signalled elsewhere to end.
    pub fn wait_exit(&mut self) -> io::Result<Option<ExitStatus>> {
        match self.child.take() {
            Some(mut c) => c.wait().map(Some),
            None => Ok(None),
        }
    }

    /// Everything the daemon logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
