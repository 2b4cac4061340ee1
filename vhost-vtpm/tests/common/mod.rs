//! Shared helpers of the daemon integration tests: run the real `vhost-vtpm` binary as a
//! process and talk to it through the guest-driver harness.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use guest_driver::{ClientOptions, VtpmClient};
use nix::sys::signal::Signal;
use openssl::sha::sha256;
use tempfile::TempDir;
use testbed::DaemonProcess;
use tpm_proto::{commands as c, rc, response_code};

pub const DAEMON: &str = env!("CARGO_BIN_EXE_vhost-vtpm");

/// The daemon under test: a [`DaemonProcess`] of this crate's binary, logging at debug level.
pub struct Daemon(DaemonProcess);

impl std::ops::Deref for Daemon {
    type Target = DaemonProcess;
    fn deref(&self) -> &DaemonProcess {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut DaemonProcess {
        &mut self.0
    }
}

impl Daemon {
    /// Starts a daemon whose files live under `dir`; with `--engine swtpm` in `extra` the
    /// daemon gets no --state-dir (swtpm keeps the state).
    pub fn start_in(dir: &Path, extra: &[&str]) -> Daemon {
        let mut args = vec!["--log-level", "debug"];
        args.extend_from_slice(extra);
        Daemon(DaemonProcess::start(Path::new(DAEMON), dir, &args).expect("start vhost-vtpm"))
    }

    /// Starts the stopped or killed daemon again, on the same state.
    pub fn respawn(&mut self) {
        self.0.restart().expect("restart vhost-vtpm");
    }

    pub fn pid(&self) -> i32 {
        self.0.pid().expect("daemon running")
    }

    pub fn connect(&self) -> VtpmClient {
        self.connect_with(ClientOptions::default())
    }

    pub fn connect_with(&self, opts: ClientOptions) -> VtpmClient {
        VtpmClient::connect(&self.socket, opts)
            .unwrap_or_else(|e| panic!("connect: {e}\n--- daemon log ---\n{}", self.log_text()))
    }

    /// SIGTERM, and the daemon must exit 0.
    pub fn stop(&mut self) {
        let st = self.0.signal(Signal::SIGTERM).expect("stop the daemon");
        assert!(
            st.success(),
            "daemon exited with {st} on SIGTERM\n{}",
            self.log_text()
        );
    }

    pub fn kill(&mut self) {
        self.0.signal(Signal::SIGKILL).expect("kill the daemon");
    }

    pub fn thread_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// The opening of most tests: a daemon (started with `extra`) whose files live in a new
/// temporary directory, and a client that has sent TPM2_Startup. Bound in this order
/// (`let (dir, d, client) = ...`), the client goes first and the directory last.
pub fn start_fresh(extra: &[&str]) -> (TempDir, Daemon, VtpmClient) {
    start_fresh_with(extra, ClientOptions::default())
}

/// [`start_fresh`] with a client connected with `opts`.
pub fn start_fresh_with(extra: &[&str], opts: ClientOptions) -> (TempDir, Daemon, VtpmClient) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let d = Daemon::start_in(dir.path(), extra);
    let mut client = d.connect_with(opts);
    startup(&mut client);
    (dir, d, client)
}

/// Runs `cmd` (the daemon binary given a configuration it refuses) to its exit: its exit
/// code and what it wrote to stderr.
pub fn exit_of(cmd: &mut Command) -> (Option<i32>, String) {
    let out = cmd.output().expect("run the command");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A plain file under `dir`, opened: as the daemon's stdin with `--fd 0`, a listener that is
/// not a socket.
pub fn plain_file(dir: &Path) -> std::fs::File {
    let file = dir.join("plain-file");
    std::fs::write(&file, b"x").expect("write the plain file");
    std::fs::File::open(&file).expect("open the plain file")
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

/// TPM2_GetRandom of `bytes` bytes, which must succeed: what it returned.
pub fn get_random(client: &mut VtpmClient, bytes: u16) -> Vec<u8> {
    c::parse_get_random(&run(client, &c::get_random(bytes))).expect("GetRandom")
}

pub fn pcr_read(client: &mut VtpmClient, pcr: u32) -> Vec<u8> {
    c::parse_pcr_read_single(&run(client, &c::pcr_read_sha256(pcr))).expect("PCR_Read")
}

pub fn assert_success(resp: &[u8], what: &str) {
    assert_eq!(rc_of(resp), rc::SUCCESS, "{what} failed");
}

/// NV_DefineSpace of `size` bytes at `index` with `attributes`, which must succeed.
pub fn define_nv(client: &mut VtpmClient, index: u32, size: u16, attributes: u32) {
    let resp = run(client, &c::nv_define_space(index, size, attributes));
    assert_success(&resp, &format!("NV_DefineSpace {index:#x}"));
}

/// The whole contents of an NV index, read with its own (empty) authorisation.
pub fn nv_read_all(client: &mut VtpmClient, index: u32) -> Vec<u8> {
    let public = c::parse_nv_read_public(&run(client, &c::nv_read_public(index))).unwrap();
    let mut data = Vec::new();
    while data.len() < usize::from(public.data_size) {
        let n = (usize::from(public.data_size) - data.len()).min(1024) as u16;
        let resp = run(client, &c::nv_read(index, n, data.len() as u16));
        data.extend(c::parse_nv_read(&resp).unwrap());
    }
    data
}

/// What a SHA-256 PCR holding `pcr` holds once `digest` is extended into it.
pub fn pcr_extended(pcr: &[u8], digest: &[u8]) -> Vec<u8> {
    sha256(&[pcr, digest].concat()).to_vec()
}

/// What a SHA-256 PCR that started at zero holds after `digest` was extended into it `times`
/// times.
pub fn pcr_after_extends(digest: &[u8], times: usize) -> Vec<u8> {
    (0..times).fold(vec![0u8; 32], |pcr, _| pcr_extended(&pcr, digest))
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

/// Two hosts, one CA and the migration controller, under `dir` (ADR 0010).
pub fn migration_bed(dir: &Path) -> testbed::MigrationBed {
    let bin_dir = Path::new(DAEMON).parent().expect("binary directory");
    testbed::MigrationBed::start(bin_dir, dir).expect("two hosts, the CA and the controller")
}

/// A daemon of `host` in `dir` with sealed migration (a destination with `incoming`).
pub fn migration_daemon(
    bed: &testbed::MigrationBed,
    host: testbed::HostRef<'_>,
    dir: &Path,
    incoming: bool,
) -> Daemon {
    std::fs::create_dir_all(dir).expect("daemon directory");
    let args = bed.daemon_args(host, incoming);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start_in(dir, &args)
}

/// A provisioned instance on host A, registered with the controller: its daemon and the
/// instance id.
pub fn migration_source(bed: &testbed::MigrationBed, dir: &Path) -> (Daemon, String) {
    bed.a().provision(&dir.join("state")).expect("provision");
    let instance = bed
        .register(&dir.join("state"), bed.a())
        .expect("register the instance");
    (migration_daemon(bed, bed.a(), dir, false), instance)
}

/// The durable workload of the crash and power-loss tests: an ordinary NV index written with
/// ever larger values, and an NV counter incremented.
pub mod workload {
    use std::sync::mpsc::{channel, Sender};
    use std::thread::JoinHandle;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use guest_driver::VtpmClient;
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use tpm_proto::{commands as c, rc};

    use super::{assert_success, define_nv, rc_of, run};

    pub const DATA: u32 = 0x0150_0030;
    pub const COUNTER: u32 = 0x0150_0031;

    /// Defines the two indices and writes their first values (data 0, counter 1).
    pub fn provision(client: &mut VtpmClient) {
        define_nv(client, DATA, 8, c::NV_ORDINARY_ATTRS);
        define_nv(client, COUNTER, 8, c::NV_COUNTER_ATTRS);
        assert_success(
            &run(client, &c::nv_write(DATA, 0, &0u64.to_be_bytes())),
            "first write",
        );
        assert_success(&run(client, &c::nv_increment(COUNTER)), "first increment");
    }

    /// Writes the data index with its next value and increments the counter, in turn, until
    /// an exchange fails (the daemon was killed, its disk lost power). `acked` (data, counter)
    /// follows what the TPM acknowledged; `killer` hears of every acknowledged write. Returns
    /// the writes acknowledged, and the command and response code that ended the round if the
    /// TPM answered one with an error instead.
    pub fn write_until_gone(
        client: &mut VtpmClient,
        killer: &Killer,
        acked: &mut (u64, u64),
    ) -> (u64, Option<(&'static str, u32)>) {
        let send = |client: &mut VtpmClient, what: &'static str, cmd: Vec<u8>| match client
            .transact_tss(&cmd)
        {
            Ok(r) if rc_of(&r) == rc::SUCCESS => Ok(()),
            Ok(r) => Err(Some((what, rc_of(&r)))),
            Err(_) => Err(None),
        };
        let mut writes = 0;
        loop {
            let next = acked.0 + 1;
            if let Err(end) = send(
                client,
                "NV_Write",
                c::nv_write(DATA, 0, &next.to_be_bytes()),
            ) {
                return (writes, end);
            }
            acked.0 = next;
            writes += 1;
            killer.acked();
            if let Err(end) = send(client, "NV_Increment", c::nv_increment(COUNTER)) {
                return (writes, end);
            }
            acked.1 += 1;
            writes += 1;
        }
    }

    /// Reads the data index and the counter as u64s.
    pub fn observe(client: &mut VtpmClient) -> (u64, u64) {
        let read = |client: &mut VtpmClient, index| {
            let resp = run(client, &c::nv_read(index, 8, 0));
            let bytes =
                c::parse_nv_read(&resp).unwrap_or_else(|e| panic!("NV_Read {index:#x}: {e}"));
            u64::from_be_bytes(bytes.try_into().expect("8 bytes"))
        };
        (read(client, DATA), read(client, COUNTER))
    }

    /// A seed from the clock (printed by the tests, so a failure can be replayed) and a
    /// generator of delays below `max` from it (xorshift).
    pub fn random_delays(max: Duration) -> (u64, impl FnMut() -> Duration) {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64
            | 1;
        let mut rng = seed;
        let max_us = (max.as_micros() as u64).max(1);
        (seed, move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            Duration::from_micros(rng % max_us)
        })
    }

    /// SIGKILLs `pid` `delay` after the round's first acknowledged write ([`Killer::acked`]),
    /// so every round writes whatever the disk's speed and the kill lands at a random point
    /// after that.
    pub struct Killer {
        first_ack: Sender<()>,
        thread: JoinHandle<()>,
    }

    impl Killer {
        pub fn arm(pid: i32, delay: Duration) -> Killer {
            let (first_ack, wait_first_ack) = channel::<()>();
            let thread = std::thread::spawn(move || {
                let _ = wait_first_ack.recv_timeout(Duration::from_secs(30));
                std::thread::sleep(delay);
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            });
            Killer { first_ack, thread }
        }

        /// A write was acknowledged (the first one starts the delay).
        pub fn acked(&self) {
            let _ = self.first_ack.send(());
        }

        /// Waits until the kill was sent.
        pub fn join(self) {
            self.thread.join().expect("killer thread");
        }
    }
}
