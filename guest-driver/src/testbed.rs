//! The processes the tests and benchmarks run the harness (or a guest) against: a
//! `vhost-vtpm` daemon and an `swtpm`. Each lives under a directory of the caller's, logs to
//! a file there, and is killed when dropped.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Waits until `path` exists.
pub fn wait_for_path(path: &Path, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} did not appear within {timeout:?}", path.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

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

/// Creates a host key file with the project's own `vtpm-state gen-host-key` (installed next
/// to the daemon binary `bin`) unless it exists.
pub fn ensure_host_key(bin: &Path, path: &Path) -> io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let tool = bin.with_file_name("vtpm-state");
    let out = Command::new(&tool)
        .arg("gen-host-key")
        .arg(path)
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", tool.display())))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "vtpm-state gen-host-key failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
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
                ensure_host_key(bin, &key)?;
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
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// The running process' id.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Sends `sig` and waits (at most 30 s) for the process to end.
    pub fn signal(&mut self, sig: Signal) -> io::Result<ExitStatus> {
        let pid = self
            .pid()
            .ok_or_else(|| io::Error::other("daemon is not running"))?;
        kill(Pid::from_raw(pid), sig).map_err(io::Error::from)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.wait_exit_timeout()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("daemon did not exit on {sig}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
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
    pub fn start(dir: &Path, data_socket: bool) -> io::Result<Self> {
        let state = dir.join("swtpm-state");
        std::fs::create_dir_all(&state)?;
        let ctrl = dir.join("swtpm-ctrl.sock");
        let data = data_socket.then(|| dir.join("swtpm-data.sock"));
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
        let child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("swtpm (scripts/setup.sh installs it): {e}"),
            )
        })?;
        let mut s = SwtpmProcess { child, ctrl, data };
        for p in [Some(&s.ctrl), s.data.as_ref()].into_iter().flatten() {
            if let Err(e) = wait_for_path(p, Duration::from_secs(10)) {
                let _ = s.child.kill();
                return Err(e);
            }
        }
        Ok(s)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for SwtpmProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An swtpm standing in for the host's hardware TPM: a TPM 2.0 served on two loopback TCP
/// ports (data, data + 1 = control), reached through tpm2-tss' swtpm TCTI
/// ([`HostTpmSimulator::tcti`]) exactly as `device:/dev/tpmrm0` would be in production.
pub struct HostTpmSimulator {
    child: Child,
    port: u16,
    /// swtpm's state directory: a restart on it is the host rebooting with the same TPM.
    pub state: PathBuf,
}

impl HostTpmSimulator {
    /// Starts (manufacturing on first use) a host TPM whose state lives in `state`.
    pub fn start(state: &Path) -> io::Result<Self> {
        let port = loop {
            let a = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            if a < 65000 && std::net::TcpListener::bind(("127.0.0.1", a + 1)).is_ok() {
                break a;
            }
        };
        std::fs::create_dir_all(state)?;
        let mut child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("swtpm (scripts/setup.sh installs it): {e}"),
                )
            })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port + 1)).is_err() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "host TPM simulator (swtpm) did not listen",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(HostTpmSimulator {
            child,
            port,
            state: state.to_owned(),
        })
    }

    /// The TCTI string for tpm2-tss (`swtpm:host=127.0.0.1,port=N`).
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

impl Drop for HostTpmSimulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
