//! A QEMU guest for the end-to-end tests: our QEMU build with `vhost-user-tpm-pci` (or
//! `tpm-crb` with swtpm, for comparison) and the test guest (Debian kernel + initramfs with
//! busybox, tpm2-tools and `tpm_virtio`), driven over the guest's serial console.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::env::workspace_root;
use crate::{DaemonProcess, Env};

/// Starts the release daemon of `env` under `dir` (debug log in `dir/daemon.log`).
pub fn start_daemon(env: &Env, dir: &Path, extra: &[&str]) -> DaemonProcess {
    let mut args = vec!["--log-level", "debug"];
    args.extend_from_slice(extra);
    DaemonProcess::start(&env.daemon, dir, &args).expect("start vhost-vtpm")
}

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

/// A running guest, driven over its serial console.
pub struct Vm {
    child: Child,
    stdin: ChildStdin,
    console: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    cursor: usize,
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

/// How a guest is started.
#[derive(Debug, Clone, Default)]
struct VmOptions {
    /// Keep QEMU running across a guest reboot (no `-no-reboot`).
    pub allow_reboot: bool,
    /// Start as a migration destination.
    pub incoming: Option<Incoming>,
    /// Return as soon as QEMU runs (a destination waiting for its stream).
    pub no_wait: bool,
}

const READY_TPM: &str = "VTPM-GUEST-READY tpm=";
const PROMPT: &str = "vtpm-guest# ";

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
        let vm = Self::try_boot(env, accel(env), frontend, Duration::from_secs(240), &opts)
            .unwrap_or_else(|e| panic!("guest did not boot: {e}"));
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
        let opts = VmOptions {
            incoming: Some(Incoming::Tcp(port)),
            no_wait: true,
            ..VmOptions::default()
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

    /// Waits until the migrated guest's shell answers (a destination).
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
        cmd.args(["-accel", accel.arg(), "-m", "512M", "-smp", "1"])
            .args(["-machine", "q35,memory-backend=mem"])
            .args(["-object", "memory-backend-memfd,id=mem,size=512M,share=on"])
            .args([
                "-nodefaults",
                "-nographic",
                "-serial",
                "stdio",
                "-vga",
                "none",
            ])
            .arg("-kernel")
            .arg(&env.kernel)
            .arg("-initrd")
            .arg(&env.initrd)
            .args(["-append", "console=ttyS0 panic=-1 quiet"]);
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
        let console = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        // The serial console is QEMU's stdout; QEMU's own messages go to stderr and are kept
        // apart so they never mix into a command's output.
        for (stream, sink) in [
            (
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn Read + Send>),
                console.clone(),
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn Read + Send>),
                stderr.clone(),
            ),
        ] {
            if let Some(stream) = stream {
                std::thread::spawn(move || pump(stream, sink));
            }
        }
        let mut vm = Vm {
            child,
            stdin,
            console,
            stderr,
            cursor: 0,
            accel,
            has_tpm: false,
            monitor,
            _scratch: scratch,
        };
        if opts.no_wait {
            return Ok(vm);
        }
        if opts.incoming.is_some() {
            // The guest resumes mid-session: poke its shell until it shows a prompt.
            let deadline = Instant::now() + timeout;
            loop {
                vm.raw_line("")?;
                if vm.wait_for(PROMPT, Duration::from_secs(2)).is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "no prompt after migration:\n{}",
                        vm.qemu_messages()
                    ));
                }
            }
            vm.has_tpm = true;
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

    /// Waits for the guest's ready marker and its prompt; returns whether it has a TPM.
    fn wait_ready(&mut self, timeout: Duration) -> Result<bool, String> {
        self.wait_for(READY_TPM, timeout)?;
        let tpm = self.wait_for("\n", Duration::from_secs(5))?.trim() == "yes";
        self.wait_for(PROMPT, Duration::from_secs(30))?;
        self.raw_line("stty -echo")?;
        self.wait_for(PROMPT, Duration::from_secs(30))?;
        self.has_tpm = tpm;
        Ok(tpm)
    }

    pub fn console_text(&self) -> String {
        self.console.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// What QEMU itself printed on stderr.
    pub fn qemu_messages(&self) -> String {
        self.stderr.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn raw_line(&mut self, line: &str) -> Result<(), String> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("console write: {e}"))
    }

    /// Waits for `needle` after the cursor; moves the cursor past it.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let text = self.console_text();
                if let Some(pos) = text.get(self.cursor..).and_then(|t| t.find(needle)) {
                    let start = self.cursor;
                    self.cursor += pos + needle.len();
                    return Ok(text[start..start + pos].to_string());
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "QEMU exited ({status}) before {needle:?}:\n{}",
                    self.console_text()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no {needle:?} within {timeout:?}:\n{}",
                    self.console_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs a shell command in the guest; returns (exit status, output).
    ///
    /// The marker is split in the command (`@@R""C=`) so that the shell's echo of the typed
    /// line never looks like the marker itself.
    pub fn run_timeout(&mut self, command: &str, timeout: Duration) -> (i32, String) {
        self.raw_line(&format!("{command}; echo \"@@R\"\"C=$?@@\""))
            .unwrap_or_else(|e| panic!("{e}"));
        let body = self
            .wait_for("@@RC=", timeout)
            .unwrap_or_else(|e| panic!("guest command {command:?}: {e}"));
        let rc = self
            .wait_for("@@", Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("guest command {command:?}: {e}"));
        let rc: i32 = rc.trim().parse().unwrap_or(-1);
        let body = body.replace(PROMPT, "");
        // Drop the echo of the typed line, if the shell echoed it.
        let body = match body.split_once('\n') {
            Some((first, rest)) if first.contains("@@R\"\"C=") => rest,
            _ => body.as_str(),
        };
        (rc, body.trim_matches('\n').to_string())
    }

    pub fn run(&mut self, command: &str) -> (i32, String) {
        self.run_timeout(command, Duration::from_secs(120))
    }

    /// Runs a command that must succeed; returns its output.
    pub fn must(&mut self, command: &str) -> String {
        let (rc, out) = self.run(command);
        assert_eq!(rc, 0, "guest command failed: {command}\n{out}");
        out
    }

    /// The guest's SHA-256 PCR `pcr` (`tpm2_pcrread`), lower-case hex.
    pub fn pcr_sha256(&mut self, pcr: u8) -> String {
        let out = self.must(&format!("tpm2_pcrread sha256:{pcr}"));
        pcr_values(&out)
            .into_iter()
            .find_map(|(p, value)| (p == pcr).then_some(value))
            .unwrap_or_else(|| panic!("no PCR {pcr} in:\n{out}"))
    }

    /// In /tmp (left as the working directory): the vEK certificates as every attestation
    /// client reads them (`tpm2_getekcertificate`) and the chain range (NV 0x01c00100 and
    /// 0x01c00101), each as `rsa`, `ecc`, `chain0`, `chain1` `.der` and `.pem`, and `ca_pem`
    /// as ca.pem; then the guest's `openssl verify` of both vEK certificates through the chain
    /// under that root, which must pass.
    pub fn verify_vek_chain(&mut self, ca_pem: &[u8]) {
        self.must("cd /tmp");
        self.must("tpm2_getekcertificate -o rsa.der -o ecc.der");
        self.must(
            "tpm2_nvread 0x01c00100 -C o -o chain0.der && tpm2_nvread 0x01c00101 -C o -o chain1.der",
        );
        for f in ["rsa", "ecc", "chain0", "chain1"] {
            self.must(&format!(
                "openssl x509 -inform DER -in {f}.der -out {f}.pem"
            ));
        }
        self.write_file("/tmp/ca.pem", ca_pem);
        let out = self.must(
            "openssl verify -CAfile ca.pem -untrusted chain0.pem -untrusted chain1.pem rsa.pem ecc.pem",
        );
        assert!(
            out.contains("rsa.pem: OK") && out.contains("ecc.pem: OK"),
            "in-guest openssl verify: {out}"
        );
    }

    /// Reads a guest file as bytes (base64 over the console).
    pub fn read_file(&mut self, path: &str) -> Vec<u8> {
        let b64 = self.must(&format!("base64 {path}"));
        decode_base64(&b64)
    }

    /// Writes `data` to a guest file (base64 over the console, in chunks short enough for
    /// the guest's line discipline).
    pub fn write_file(&mut self, path: &str, data: &[u8]) {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(data);
        self.must(&format!(": > {path}.b64"));
        for chunk in b64.as_bytes().chunks(768) {
            let chunk = std::str::from_utf8(chunk).unwrap_or_default();
            self.must(&format!("echo {chunk} >> {path}.b64"));
        }
        self.must(&format!("base64 -d {path}.b64 > {path} && rm {path}.b64"));
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

fn pump(mut from: Box<dyn Read + Send>, to: Arc<Mutex<String>>) {
    let mut buf = [0u8; 4096];
    // Bytes of an escape sequence (or UTF-8 character) cut by the end of a read.
    let mut pending: Vec<u8> = Vec::new();
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                let keep_from = incomplete_tail(&pending);
                let text = String::from_utf8_lossy(&pending[..keep_from]).into_owned();
                pending.drain(..keep_from);
                if let Ok(mut s) = to.lock() {
                    s.push_str(&clean_console(&text));
                }
            }
        }
    }
}

/// Where a trailing, unfinished escape sequence or UTF-8 character starts (or the length).
fn incomplete_tail(bytes: &[u8]) -> usize {
    let tail_start = bytes.len().saturating_sub(16);
    if let Some(esc) = bytes[tail_start..].iter().rposition(|&b| b == 0x1b) {
        let esc = tail_start + esc;
        let finished = bytes[esc..]
            .iter()
            .skip(2)
            .any(|b| (b'@'..=b'~').contains(b));
        if !finished {
            return esc;
        }
    }
    match std::str::from_utf8(&bytes[tail_start..]) {
        Err(e) if e.error_len().is_none() => tail_start + e.valid_up_to(),
        _ => bytes.len(),
    }
}

/// Serial console text without \r and without terminal escape sequences (busybox's line
/// editor asks for the cursor position, `ESC [ 6 n`, after every prompt).
fn clean_console(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // CSI: parameters, then one final byte in @..~
                    while let Some(&p) = chars.peek() {
                        chars.next();
                        if ('@'..='~').contains(&p) {
                            break;
                        }
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// The values of `tpm2_pcrread sha256:...` output, by PCR (lower-case hex).
pub fn pcr_values(out: &str) -> Vec<(u8, String)> {
    out.lines()
        .filter_map(|l| {
            let (pcr, value) = l.trim().split_once(": 0x")?;
            Some((pcr.trim().parse().ok()?, value.trim().to_lowercase()))
        })
        .collect()
}

/// Decodes standard base64, ignoring whitespace (line breaks of `base64` in the guest).
pub fn decode_base64(text: &str) -> Vec<u8> {
    use base64::Engine;
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .unwrap_or_else(|e| panic!("guest sent invalid base64 ({e}): {text:?}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn console_cleaning_drops_cr_and_escapes() {
        assert_eq!(
            super::clean_console("vtpm-guest# \u{1b}[6nls\r\nx\u{1b}[0;1my"),
            "vtpm-guest# ls\nxy"
        );
    }

    #[test]
    fn escape_cut_by_a_read_is_held_back() {
        let b = b"abc\x1b[6";
        assert_eq!(super::incomplete_tail(b), 3);
        assert_eq!(super::incomplete_tail(b"abc\x1b[6n"), 7);
        assert_eq!(super::incomplete_tail("x\u{e9}".as_bytes()), 3);
        assert_eq!(super::incomplete_tail(&"x\u{e9}".as_bytes()[..2]), 1);
    }

    #[test]
    fn base64_decodes() {
        assert_eq!(super::decode_base64("aGVsbG8g\nd29ybGQ=\n"), b"hello world");
    }
}
