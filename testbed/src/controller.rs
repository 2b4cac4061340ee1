//! The migration controller (`vtpm-migrate`) as a process.

use std::fs::File;
use std::io::{self, BufRead};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::process::{run_tool, stop_child};

/// The migration controller: a directory made by `vtpm-migrate init` and `vtpm-migrate
/// serve` on a loopback port (the same port again after a restart, so the daemons'
/// `--migration-controller` URL stays right). The process may be killed and restarted
/// through a shared reference (a test's supervising thread does).
pub struct ControllerProcess {
    child: Mutex<Option<Child>>,
    pub bin: PathBuf,
    /// The controller's directory.
    pub store: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The controller's certificate (what daemons and the CLI trust).
    pub cert: PathBuf,
    /// The operator's token file.
    pub token_file: PathBuf,
}

impl ControllerProcess {
    /// `vtpm-migrate init --store DIR --ca URL --ca-cert PEM INIT_ARGS...`, then serves it.
    pub fn start(
        bin: &Path,
        store: &Path,
        ca_url: &str,
        ca_cert: &Path,
        init_args: &[&str],
    ) -> io::Result<Self> {
        run_tool(
            Command::new(bin)
                .arg("init")
                .arg("--store")
                .arg(store)
                .args(["--ca", ca_url])
                .arg("--ca-cert")
                .arg(ca_cert)
                .args(init_args),
        )
        .map_err(|e| io::Error::other(format!("vtpm-migrate init: {e}")))?;
        let mut c = ControllerProcess {
            child: Mutex::new(None),
            bin: bin.to_owned(),
            store: store.to_owned(),
            url: String::new(),
            cert: store.join("controller.pem"),
            token_file: store.join("admin.token"),
        };
        c.url = c.spawn(&[])?;
        Ok(c)
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves the directory again on its port (after a kill or a crash). `env` is set for
    /// the server process (`VTPM_MIGRATE_CRASH_AFTER`).
    pub fn serve(&self, env: &[(&str, &str)]) -> io::Result<()> {
        self.spawn(env).map(drop)
    }

    /// Starts the server on the port it had (a free one the first time); its URL.
    fn spawn(&self, env: &[(&str, &str)]) -> io::Result<String> {
        let listen = self
            .url
            .strip_prefix("https://")
            .unwrap_or("127.0.0.1:0")
            .to_owned();
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.store.join("serve.log"))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut child = Command::new(&self.bin)
                .args(["--log-level", "debug", "serve", "--store"])
                .arg(&self.store)
                .args(["--listen", &listen])
                .envs(env.iter().copied())
                .stdout(Stdio::piped())
                .stderr(log.try_clone()?)
                .spawn()?;
            let mut line = String::new();
            if let Some(out) = child.stdout.take() {
                io::BufReader::new(out).read_line(&mut line)?;
            }
            if let Some(url) = line.trim().strip_prefix("listening on ") {
                *self.child() = Some(child);
                return Ok(url.to_owned());
            }
            let _ = child.kill();
            let _ = child.wait();
            // The old port may linger a moment after a kill.
            if std::time::Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "vtpm-migrate serve did not start: {line:?}\n{}",
                    self.log_text()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the server process has exited (a crash test hook killed it).
    pub fn exited(&self) -> Option<ExitStatus> {
        let mut child = self.child();
        let status = child.as_mut()?.try_wait().ok().flatten();
        if status.is_some() {
            *child = None;
        }
        status
    }

    /// Whether a server process runs (or ran and was not yet found exited).
    pub fn running(&self) -> bool {
        self.child().is_some()
    }

    /// Waits (at most `timeout`) for the server to exit by itself.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(st) = self.exited() {
                return Some(st);
            }
            if !self.running() || std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, no grace.
    pub fn kill(&self) {
        if let Some(mut c) = self.child().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; waits for the server to exit.
    pub fn stop(&self) -> io::Result<ExitStatus> {
        let mut child = self
            .child()
            .take()
            .ok_or_else(|| io::Error::other("vtpm-migrate is not serving"))?;
        stop_child(&mut child, Signal::SIGTERM, Duration::from_secs(15))
    }

    /// Runs an operator command (`vtpm-migrate CMD --controller URL --controller-cert PEM
    /// --token-file F ARGS...`): its output, or its output as the error.
    pub fn operator(&self, cmd: &str, args: &[&str]) -> Result<String, String> {
        run_tool(
            Command::new(&self.bin)
                .arg(cmd)
                .args(["--controller", &self.url])
                .arg("--controller-cert")
                .arg(&self.cert)
                .arg("--token-file")
                .arg(&self.token_file)
                .args(args),
        )
    }

    /// `vtpm-migrate attest` for a host (its directory and TPM).
    pub fn attest(
        &self,
        host_dir: &Path,
        tcti: &str,
        migration: &str,
        role: &str,
    ) -> Result<String, String> {
        run_tool(
            Command::new(&self.bin)
                .arg("attest")
                .args(["--controller", &self.url])
                .arg("--controller-cert")
                .arg(&self.cert)
                .arg("--host-dir")
                .arg(host_dir)
                .args(["--host-tpm", tcti, "--migration", migration, "--role", role]),
        )
    }

    /// The operator's token.
    pub fn token(&self) -> io::Result<String> {
        Ok(std::fs::read_to_string(&self.token_file)?.trim().to_owned())
    }

    /// Everything the server logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.store.join("serve.log")).unwrap_or_default()
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
