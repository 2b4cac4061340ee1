//! The local CA (`vtpm-ca`) as a process.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::process::stop_child;

/// The local CA (`vtpm-ca`): a store made by `vtpm-ca init` and `vtpm-ca serve` on a free
/// loopback port.
pub struct CaProcess {
    child: Option<Child>,
    bin: PathBuf,
    /// The CA's store directory.
    pub store: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The CA root certificate (PEM file in the store).
    pub ca_cert: PathBuf,
    /// File holding the admin principal's bearer token.
    pub admin_token_file: PathBuf,
}

impl CaProcess {
    /// `vtpm-ca --store DIR init INIT_ARGS...` (binary `bin`), then serves it.
    pub fn start(bin: &Path, store: &Path, init_args: &[&str]) -> io::Result<Self> {
        let mut ca = CaProcess {
            child: None,
            bin: bin.to_owned(),
            store: store.to_owned(),
            url: String::new(),
            ca_cert: store.join("ca.pem"),
            admin_token_file: store.join("admin.token"),
        };
        ca.command(&[&["init"], init_args].concat())?;
        ca.serve()?;
        Ok(ca)
    }

    /// Runs `vtpm-ca --store DIR ARGS...` on the store to completion; returns stdout.
    pub fn command(&self, args: &[&str]) -> io::Result<String> {
        let out = Command::new(&self.bin)
            .arg("--store")
            .arg(&self.store)
            .args(args)
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "vtpm-ca {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Serves the store (again, after [`CaProcess::stop`]) on a new free port.
    pub fn serve(&mut self) -> io::Result<()> {
        use std::io::BufRead;
        let mut child = Command::new(&self.bin)
            .arg("--store")
            .arg(&self.store)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(File::create(self.store.join("serve.log"))?)
            .spawn()?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            std::io::BufReader::new(out).read_line(&mut line)?;
        }
        match line.trim().strip_prefix("listening on ") {
            Some(url) => {
                self.url = url.to_owned();
                self.child = Some(child);
                Ok(())
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(io::Error::other(format!(
                    "vtpm-ca serve did not start: {line:?} {}",
                    std::fs::read_to_string(self.store.join("serve.log")).unwrap_or_default()
                )))
            }
        }
    }

    /// SIGTERM to the server; waits (at most 15 s) for it to exit.
    pub fn stop(&mut self) -> io::Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| io::Error::other("vtpm-ca is not serving"))?;
        let stopped = stop_child(&mut child, Signal::SIGTERM, Duration::from_secs(15));
        if stopped.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
        stopped
    }

    /// The admin bearer token.
    pub fn admin_token(&self) -> io::Result<String> {
        Ok(std::fs::read_to_string(&self.admin_token_file)?
            .trim()
            .to_owned())
    }
}

impl Drop for CaProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
