//! Shared helpers of the daemon integration tests: run the real `vhost-vtpm` binary as a
//! process and talk to it through the guest-driver harness.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use guest_driver::{ClientOptions, VtpmClient};
use nix::sys::signal::Signal;
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

/// NV_DefineSpace of `size` bytes at `index` with `attributes`, which must succeed.
pub fn define_nv(client: &mut VtpmClient, index: u32, size: u16, attributes: u32) {
    let resp = run(client, &c::nv_define_space(index, size, attributes));
    assert_success(&resp, &format!("NV_DefineSpace {index:#x}"));
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

/// Whether (r, s) is an ECDSA P-256 signature over `digest` by the public key (x, y), as
/// openssl judges it.
pub fn ecdsa_p256_verifies(x: &[u8], y: &[u8], digest: &[u8], r: &[u8], s: &[u8]) -> bool {
    use openssl::{bn::BigNum, ec::*, ecdsa::EcdsaSig, nid::Nid};
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let public = EcKey::from_public_key_affine_coordinates(
        &group,
        &BigNum::from_slice(x).unwrap(),
        &BigNum::from_slice(y).unwrap(),
    )
    .unwrap();
    public.check_key().unwrap();
    let sig = EcdsaSig::from_private_components(
        BigNum::from_slice(r).unwrap(),
        BigNum::from_slice(s).unwrap(),
    )
    .unwrap();
    sig.verify(digest, &public).unwrap()
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
    use tpm_proto::commands as c;

    pub const DATA: u32 = 0x0150_0030;
    pub const COUNTER: u32 = 0x0150_0031;

    /// Reads the data index and the counter as u64s.
    pub fn observe(client: &mut VtpmClient) -> (u64, u64) {
        let read = |client: &mut VtpmClient, index| {
            let resp = super::run(client, &c::nv_read(index, 8, 0));
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
