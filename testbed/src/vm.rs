//! A QEMU guest for the end-to-end tests: our QEMU build with `vhost-user-tpm-pci` (or
//! `tpm-crb` with swtpm, for comparison) and the test guest (Debian kernel + initramfs with
//! busybox, tpm2-tools and `tpm_virtio`), driven over the guest's serial console.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::console::{clean_console, GuestConsole, PROMPT};
use crate::env::workspace_root;
use crate::{DaemonProcess, Env};

/// Starts the release daemon of `env` under `dir` (debug log in `dir/daemon.log`).
pub fn start_daemon(env: &Env, dir: &Path, extra: &[&str]) -> DaemonProcess {
    let mut args = vec!["--log-level", "debug"];
    args.extend_from_slice(extra);
    DaemonProcess::start(&env.daemon, dir, &args).expect("start vhost-vtpm")
}

/// The test guest's kernel command line (serial console on ttyS0).
pub const GUEST_CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

/// How QEMU runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    fn arg(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The TPM front-end the guest gets.
#[derive(Debug, Clone)]
pub enum TpmFrontend {
    /// Our device, served by the daemon at this socket.
    VhostUser(PathBuf),
    /// QEMU's tpm-crb backed by an swtpm control socket (the baseline).
    CrbSwtpm(PathBuf),
    None,
}

/// A running guest, driven over its serial console (QEMU's stdio). The shell session
/// itself ([`GuestConsole`]: `run`, `must`, `read_file`, ...) is reached through `Deref`.
pub struct Vm {
    child: Child,
    console: GuestConsole,
    stderr: Arc<Mutex<String>>,
    pub accel: Accel,
    /// Whether the guest found its TPM at the last boot.
    pub has_tpm: bool,
    monitor: PathBuf,
    _scratch: tempfile::TempDir,
}

/// Where a migration destination reads the stream from.
#[derive(Debug, Clone)]
enum Incoming {
    /// A stream file written by [`Vm::migrate_to_file`].
    File(PathBuf),
    /// A TCP port on loopback the source connects to.
    Tcp(u16),
}

/// The disks of a Debian guest (guest-driver/debian/build.sh): a qcow2 overlay of the built
/// root file system, so the image stays untouched, a blank data disk (`/dev/vdb` in the
/// guest) and, with [`DebianDisks::with_files`], an ext4 disk holding host files (`/dev/vdc`,
/// label `vtpm-files`). They live in a temporary directory for as long as this value does,
/// so one value boots the same guest again (after a reboot, a daemon restart or a power-off).
pub struct DebianDisks {
    drives: DebianDrives,
    _dir: tempfile::TempDir,
}

/// The disk files QEMU opens for a Debian guest.
#[derive(Debug, Clone)]
struct DebianDrives {
    root: PathBuf,
    data: PathBuf,
    files: Option<PathBuf>,
}

impl DebianDisks {
    /// A fresh overlay of the Debian image and a blank data disk of `data_mib` MiB.
    pub fn new(env: &Env, data_mib: u64) -> DebianDisks {
        Self::with_files(env, data_mib, &[])
    }

    /// Like [`DebianDisks::new`], plus a third disk with `files` copied to its top
    /// directory (none when `files` is empty).
    pub fn with_files(env: &Env, data_mib: u64, files: &[&Path]) -> DebianDisks {
        let image = env.debian();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let root = dir.path().join("root.qcow2");
        let data = dir.path().join("data.raw");
        let status = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&image.rootfs)
            .arg(&root)
            .status()
            .unwrap_or_else(|e| panic!("qemu-img: {e}"));
        assert!(status.success(), "qemu-img create failed");
        let file = std::fs::File::create(&data).unwrap_or_else(|e| panic!("{e}"));
        file.set_len(data_mib << 20)
            .unwrap_or_else(|e| panic!("{}: {e}", data.display()));
        let files = (!files.is_empty()).then(|| {
            let content = dir.path().join("files");
            std::fs::create_dir(&content).unwrap_or_else(|e| panic!("{e}"));
            let mut bytes = 0;
            for f in files {
                let name = f.file_name().unwrap_or_default();
                bytes += std::fs::copy(f, content.join(name))
                    .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            }
            let disk = dir.path().join("files.ext4");
            // Made at its size first: mkfs.ext4 announces a file it creates even with -q.
            std::fs::File::create(&disk)
                .and_then(|f| f.set_len(((bytes >> 20) * 2 + 16) << 20))
                .unwrap_or_else(|e| panic!("{}: {e}", disk.display()));
            let status = Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", "vtpm-files", "-d"])
                .arg(&content)
                .arg(&disk)
                .status()
                .unwrap_or_else(|e| panic!("mkfs.ext4: {e}"));
            assert!(status.success(), "mkfs.ext4 failed");
            disk
        });
        DebianDisks {
            drives: DebianDrives { root, data, files },
            _dir: dir,
        }
    }
}

/// How a guest is started.
#[derive(Debug, Clone, Default)]
struct VmOptions {
    /// Keep QEMU running across a guest reboot (no `-no-reboot`).
    pub allow_reboot: bool,
    /// Start as a migration destination.
    pub incoming: Option<Incoming>,
    /// Return as soon as QEMU runs (a destination waiting for its stream).
    pub no_wait: bool,
    /// Boot the Debian guest from these disks instead of the busybox initramfs.
    debian: Option<DebianDrives>,
}

static ACCEL: OnceLock<Accel> = OnceLock::new();

/// KVM when a probe boot shows it works here, else TCG (nested KVM hangs on some hosts).
/// `VTPM_ACCEL=kvm|tcg` forces the choice. The probe result is cached in `target/`.
pub fn accel(env: &Env) -> Accel {
    *ACCEL.get_or_init(|| {
        let decided = match std::env::var("VTPM_ACCEL").as_deref() {
            Ok("kvm") => Accel::Kvm,
            Ok("tcg") => Accel::Tcg,
            _ => probe_accel(env),
        };
        eprintln!("testbed: guests run under {}", decided.arg());
        decided
    })
}

fn probe_accel(env: &Env) -> Accel {
    let cache = workspace_root().join("target/vtpm-accel");
    if let Ok(s) = std::fs::read_to_string(&cache) {
        match s.trim() {
            "kvm" => return Accel::Kvm,
            "tcg" => return Accel::Tcg,
            _ => {}
        }
    }
    let works = Path::new("/dev/kvm").exists()
        && Vm::try_boot(
            env,
            Accel::Kvm,
            &TpmFrontend::None,
            Duration::from_secs(45),
            &VmOptions::default(),
        )
        .map(|vm| vm.shutdown())
        .is_ok();
    let a = if works { Accel::Kvm } else { Accel::Tcg };
    let _ = std::fs::write(&cache, a.arg());
    a
}

impl Vm {
    /// Boots the guest with `frontend` and waits until its shell is ready with a TPM.
    pub fn boot(env: &Env, frontend: &TpmFrontend) -> Vm {
        Self::boot_opts(env, frontend, false)
    }

    /// Boots the guest with `frontend` (which may be none) without asking for a TPM.
    pub fn boot_any(env: &Env, frontend: &TpmFrontend) -> Vm {
        Self::try_boot(
            env,
            accel(env),
            frontend,
            Duration::from_secs(240),
            &VmOptions::default(),
        )
        .unwrap_or_else(|e| panic!("guest did not boot: {e}"))
    }

    /// Like [`Vm::boot`]; `allow_reboot` keeps QEMU running across a guest reboot.
    pub fn boot_opts(env: &Env, frontend: &TpmFrontend, allow_reboot: bool) -> Vm {
        let opts = VmOptions {
            allow_reboot,
            ..VmOptions::default()
        };
        Self::boot_with_tpm(env, frontend, Duration::from_secs(240), &opts, "guest")
    }

    /// Boots the Debian systemd guest from `disks` and waits until its boot has finished
    /// and its console shell is ready (with a TPM). QEMU keeps running across a guest reboot.
    pub fn boot_debian(env: &Env, frontend: &TpmFrontend, disks: &DebianDisks) -> Vm {
        let opts = VmOptions {
            allow_reboot: true,
            debian: Some(disks.drives.clone()),
            ..VmOptions::default()
        };
        Self::boot_with_tpm(
            env,
            frontend,
            Duration::from_secs(600),
            &opts,
            "Debian guest",
        )
    }

    /// Boots with `opts` within `timeout`; panics (naming the `guest`) if it does not boot
    /// or finds no TPM.
    fn boot_with_tpm(
        env: &Env,
        frontend: &TpmFrontend,
        timeout: Duration,
        opts: &VmOptions,
        guest: &str,
    ) -> Vm {
        let vm = Self::try_boot(env, accel(env), frontend, timeout, opts)
            .unwrap_or_else(|e| panic!("{guest} did not boot: {e}"));
        assert!(vm.has_tpm, "guest has no TPM:\n{}", vm.console_text());
        vm
    }

    /// Starts QEMU as a migration destination loading the stream in `stream_file` (written
    /// by [`Vm::migrate_to_file`]) and returns once the migrated guest's shell answers.
    pub fn incoming(env: &Env, frontend: &TpmFrontend, stream_file: &Path) -> Vm {
        let opts = VmOptions {
            incoming: Some(Incoming::File(stream_file.to_path_buf())),
            ..VmOptions::default()
        };
        Self::try_boot(env, accel(env), frontend, Duration::from_secs(240), &opts)
            .unwrap_or_else(|e| panic!("migrated guest did not resume: {e}"))
    }

    /// Starts QEMU as a migration destination listening on loopback TCP `port` and returns
    /// at once; [`Vm::wait_migrated`] waits for the migrated guest.
    pub fn incoming_tcp(env: &Env, frontend: &TpmFrontend, port: u16) -> Vm {
        Self::incoming_tcp_opts(env, frontend, port, None)
    }

    /// Like [`Vm::incoming_tcp`], for the Debian guest booted from `disks` (the source's:
    /// storage shared, as on one host).
    pub fn incoming_tcp_debian(
        env: &Env,
        frontend: &TpmFrontend,
        port: u16,
        disks: &DebianDisks,
    ) -> Vm {
        Self::incoming_tcp_opts(env, frontend, port, Some(disks))
    }

    fn incoming_tcp_opts(
        env: &Env,
        frontend: &TpmFrontend,
        port: u16,
        disks: Option<&DebianDisks>,
    ) -> Vm {
        let opts = VmOptions {
            incoming: Some(Incoming::Tcp(port)),
            no_wait: true,
            allow_reboot: disks.is_some(),
            debian: disks.map(|d| d.drives.clone()),
        };
        let vm = Self::try_boot(env, accel(env), frontend, Duration::from_secs(240), &opts)
            .unwrap_or_else(|e| panic!("destination QEMU did not start: {e}"));
        // A probe connection would be taken for the migration stream: watch the socket
        // table for the listener instead.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !tcp_listening(port) {
            assert!(
                Instant::now() < deadline,
                "destination QEMU does not listen on port {port}:\n{}",
                vm.qemu_messages()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        vm
    }

    /// Waits until the migrated guest's shell answers (a destination): pokes it until it
    /// shows a prompt.
    pub fn wait_migrated(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            self.raw_line("")?;
            if self.wait_for(PROMPT, Duration::from_secs(2)).is_ok() {
                self.has_tpm = true;
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no prompt after migration:\n{}",
                    self.qemu_messages()
                ));
            }
        }
    }

    /// Live-migrates the running guest to a destination listening on loopback TCP `port`
    /// and waits until QEMU reports the migration completed (`Ok`, with `info migrate`) or
    /// failed (`Err`, with `info migrate`).
    pub fn migrate_tcp(&mut self, port: u16, timeout: Duration) -> Result<String, String> {
        let answer = self.hmp(&format!("migrate -d tcp:127.0.0.1:{port}"));
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.hmp("info migrate");
            if info.contains("Migration status: completed") || info.contains("status: completed") {
                return Ok(info);
            }
            if info.contains("failed") || info.contains("cancelled") {
                return Err(format!("{answer}\n{info}"));
            }
            if Instant::now() > deadline {
                return Err(format!("migration did not finish: {info}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills QEMU (SIGKILL): the host or the network gone.
    /// The QEMU process's pid (its threads run the vCPUs, the main loop and the devices).
    pub fn qemu_pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn try_boot(
        env: &Env,
        accel: Accel,
        frontend: &TpmFrontend,
        timeout: Duration,
        opts: &VmOptions,
    ) -> Result<Vm, String> {
        let scratch = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let monitor = scratch.path().join("monitor.sock");
        let mut cmd = Command::new(&env.qemu);
        cmd.arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()));
        match &opts.incoming {
            Some(Incoming::File(stream)) => {
                cmd.arg("-incoming")
                    .arg(format!("exec:cat {}", stream.display()));
            }
            Some(Incoming::Tcp(port)) => {
                cmd.arg("-incoming").arg(format!("tcp:127.0.0.1:{port}"));
            }
            None => {}
        }
        if let Some(dir) = &env.qemu_data_dir {
            cmd.arg("-L").arg(dir);
        }
        // systemd and its services want more room than the busybox guest.
        let mem = if opts.debian.is_some() { "1G" } else { "512M" };
        cmd.args(["-accel", accel.arg(), "-m", mem, "-smp", "1"])
            .args(["-machine", "q35,memory-backend=mem"])
            .arg("-object")
            .arg(format!("memory-backend-memfd,id=mem,size={mem},share=on"))
            .args([
                "-nodefaults",
                "-nographic",
                "-serial",
                "stdio",
                "-vga",
                "none",
            ]);
        match &opts.debian {
            None => {
                cmd.arg("-kernel")
                    .arg(&env.kernel)
                    .arg("-initrd")
                    .arg(&env.initrd)
                    .args(["-append", GUEST_CMDLINE]);
            }
            Some(drives) => {
                let image = env.debian();
                cmd.arg("-kernel")
                    .arg(&image.kernel)
                    .arg("-initrd")
                    .arg(&image.initrd)
                    .args([
                        "-append",
                        "console=ttyS0 root=/dev/vda rw panic=-1 quiet loglevel=1 \
                         systemd.show_status=0",
                    ])
                    .arg("-drive")
                    .arg(format!(
                        "file={},if=virtio,format=qcow2",
                        drives.root.display()
                    ))
                    .arg("-drive")
                    .arg(format!(
                        "file={},if=virtio,format=raw",
                        drives.data.display()
                    ));
                if let Some(files) = &drives.files {
                    cmd.arg("-drive")
                        .arg(format!("file={},if=virtio,format=raw", files.display()));
                }
            }
        }
        if accel == Accel::Kvm {
            cmd.args(["-cpu", "host"]);
        }
        if !opts.allow_reboot {
            cmd.arg("-no-reboot");
        }
        match frontend {
            TpmFrontend::VhostUser(sock) => {
                cmd.arg("-chardev")
                    .arg(format!(
                        "socket,id=vtpm0,path={},reconnect-ms=500",
                        sock.display()
                    ))
                    .args(["-device", "vhost-user-tpm-pci,chardev=vtpm0,id=vtpm"]);
            }
            TpmFrontend::CrbSwtpm(ctrl) => {
                cmd.arg("-chardev")
                    .arg(format!("socket,id=chrtpm,path={}", ctrl.display()))
                    .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"])
                    .args(["-device", "tpm-crb,tpmdev=tpm0"]);
            }
            TpmFrontend::None => {}
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", env.qemu.display()))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        // The serial console is QEMU's stdout; QEMU's own messages go to stderr and are kept
        // apart so they never mix into a command's output.
        let console = GuestConsole::new(Box::new(stdin), Box::new(stdout));
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut stream) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        let mut vm = Vm {
            child,
            console,
            stderr,
            accel,
            has_tpm: false,
            monitor,
            _scratch: scratch,
        };
        if opts.no_wait {
            return Ok(vm);
        }
        if opts.incoming.is_some() {
            // The guest resumes mid-session.
            vm.wait_migrated(timeout)?;
        } else {
            vm.wait_ready(timeout)?;
        }
        Ok(vm)
    }

    /// Sends one command to QEMU's human monitor and returns its answer.
    pub fn hmp(&self, command: &str) -> String {
        use std::os::unix::net::UnixStream;
        let mut s = UnixStream::connect(&self.monitor)
            .unwrap_or_else(|e| panic!("monitor {}: {e}", self.monitor.display()));
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let read_prompt = |s: &mut UnixStream| -> String {
            let mut out = Vec::new();
            let mut b = [0u8; 1024];
            while !String::from_utf8_lossy(&out).contains("(qemu) ") {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&b[..n]),
                }
            }
            clean_console(&String::from_utf8_lossy(&out))
        };
        read_prompt(&mut s);
        let _ = s.write_all(format!("{command}\n").as_bytes());
        read_prompt(&mut s)
    }

    /// Live-migrates the running guest into `stream_file` (QEMU's migration stream, carrying
    /// the vTPM through vhost-user DEVICE_STATE) and waits for completion.
    pub fn migrate_to_file(&mut self, stream_file: &Path) {
        let answer = self.hmp(&format!(
            "migrate -d \"exec:cat > {}\"",
            stream_file.display()
        ));
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let info = self.hmp("info migrate");
            if info.contains("completed") {
                return;
            }
            assert!(
                !info.contains("failed") && !info.contains("cancelled"),
                "migration failed: {answer}\n{info}\n{}",
                self.qemu_messages()
            );
            assert!(
                Instant::now() < deadline,
                "migration did not finish: {info}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for the guest's ready marker and its prompt; records whether it has a TPM.
    fn wait_ready(&mut self, timeout: Duration) -> Result<bool, String> {
        let tpm = self.console.wait_ready(timeout)?;
        self.has_tpm = tpm;
        Ok(tpm)
    }

    /// What QEMU itself printed on stderr.
    pub fn qemu_messages(&self) -> String {
        self.stderr.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Reboots the guest (`reboot -f`) and waits for its shell again.
    pub fn reboot(&mut self) {
        self.raw_line("reboot -f").unwrap_or_else(|e| panic!("{e}"));
        let tpm = self
            .wait_ready(Duration::from_secs(240))
            .unwrap_or_else(|e| panic!("guest did not come back: {e}"));
        assert!(
            tpm,
            "guest has no TPM after reboot:\n{}",
            self.console_text()
        );
    }

    /// Powers the guest off and waits for QEMU to exit.
    pub fn shutdown(mut self) {
        let _ = self.raw_line("poweroff -f");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl std::ops::Deref for Vm {
    type Target = GuestConsole;
    fn deref(&self) -> &GuestConsole {
        &self.console
    }
}

impl std::ops::DerefMut for Vm {
    fn deref_mut(&mut self) -> &mut GuestConsole {
        &mut self.console
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether something listens on loopback TCP `port` (from /proc/net/tcp: local address
/// 127.0.0.1:port, state LISTEN).
fn tcp_listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .map(|t| {
            t.lines().skip(1).any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(1) == Some(&want.as_str()) && f.get(3) == Some(&"0A")
            })
        })
        .unwrap_or(false)
}
