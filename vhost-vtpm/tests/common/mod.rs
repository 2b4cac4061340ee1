//! Shared helpers of the daemon integration tests: run the real `vhost-vtpm` binary as a
//! process and talk to it through the guest-driver harness.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use guest_driver::{ClientOptions, VtpmClient};
use tpm_proto::{commands as c, rc, response_code};

pub const DAEMON: &str = env!("CARGO_BIN_EXE_vhost-vtpm");

/// A daemon process with its own socket and state directory.
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
    /// Whether the daemon keeps its own state (libtpms) and so gets --state-dir.
    own_state: bool,
}

impl Daemon {
    /// Starts a daemon whose files live under `dir`; with `--engine swtpm` in `extra` the
    /// daemon gets no --state-dir (swtpm keeps the state).
    pub fn start_in(dir: &Path, extra: &[&str]) -> Daemon {
        let mut d = Daemon {
            child: None,
            dir: dir.to_path_buf(),
            socket: dir.join("vtpm.sock"),
            state: dir.join("state"),
            log: dir.join("daemon.log"),
            own_state: !extra.contains(&"swtpm"),
        };
        d.spawn(extra);
        d
    }

    pub fn spawn(&mut self, extra: &[&str]) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(DAEMON);
        cmd.arg("--socket-path").arg(&self.socket);
        if self.own_state {
            cmd.arg("--state-dir").arg(&self.state);
        }
        cmd.arg("--log-level")
            .arg("debug")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn vhost-vtpm"));
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn connect(&self) -> VtpmClient {
        self.connect_with(ClientOptions::default())
    }

    pub fn connect_with(&self, opts: ClientOptions) -> VtpmClient {
        VtpmClient::connect(&self.socket, opts)
            .unwrap_or_else(|e| panic!("connect: {e}\n--- daemon log ---\n{}", self.log_text()))
    }

    fn signal_and_wait(&mut self, sig: nix::sys::signal::Signal) -> ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "daemon did not exit on {sig}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, and the daemon must exit 0.
    pub fn stop(&mut self) {
        let st = self.signal_and_wait(nix::sys::signal::Signal::SIGTERM);
        assert!(
            st.success(),
            "daemon exited with {st} on SIGTERM\n{}",
            self.log_text()
        );
    }

    pub fn kill(&mut self) {
        self.signal_and_wait(nix::sys::signal::Signal::SIGKILL);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn thread_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends a command as a TSS would (resubmitting on TPM_RC_RETRY).
pub fn run(client: &mut VtpmClient, cmd: &[u8]) -> Vec<u8> {
    client.transact_tss(cmd).expect("transact")
}

pub fn rc_of(resp: &[u8]) -> u32 {
    response_code(resp).expect("well-formed response")
}

/// TPM2_Startup(CLEAR); a TPM that is already started (resumed state) is fine too.
pub fn startup(client: &mut VtpmClient) {
    let code = rc_of(&run(client, &c::startup(c::TPM_SU_CLEAR)));
    assert!(
        code == rc::SUCCESS || code == rc::INITIALIZE,
        "Startup returned {code:#x}"
    );
}

pub fn pcr_read(client: &mut VtpmClient, pcr: u32) -> Vec<u8> {
    c::parse_pcr_read_single(&run(client, &c::pcr_read_sha256(pcr))).expect("PCR_Read")
}

pub fn assert_success(resp: &[u8], what: &str) {
    assert_eq!(rc_of(resp), rc::SUCCESS, "{what} failed");
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

impl Daemon {
    /// Waits for the daemon process to end (after a signal sent elsewhere).
    pub fn wait_exit(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}
