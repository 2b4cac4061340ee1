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

/// How often the testbed looks for a socket or an exit: fine enough that start-up times
/// measured through it (the cold-start benchmark) are not rounded up noticeably.
const POLL: Duration = Duration::from_micros(200);

/// Sends `sig` to `child` and waits at most `timeout` for it to exit.
pub fn stop_child(child: &mut Child, sig: Signal, timeout: Duration) -> io::Result<ExitStatus> {
    kill(Pid::from_raw(child.id() as i32), sig).map_err(io::Error::from)?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{:?} did not exit on {sig} within {timeout:?}", child.id()),
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until a Unix socket at `path` accepts connections: swtpm binds its socket (the
/// file appears) a moment before it listens, and a client in that gap is refused.
pub fn wait_for_listener(path: &Path, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    wait_for_path(path, timeout)?;
    loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

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
        std::thread::sleep(POLL);
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

/// The files of a local CA that swtpm_localca keeps for [`HostTpmSimulator::manufacture`].
#[derive(Debug, Clone)]
pub struct ManufacturerCa {
    /// swtpm_localca's root certificate (self-signed).
    pub root: PathBuf,
    /// Its intermediate that signs the EK certificates.
    pub issuer: PathBuf,
}

fn which(program: &str) -> io::Result<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(program))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{program} is not installed (scripts/setup.sh installs swtpm-tools)"),
            )
        })
}

impl HostTpmSimulator {
    /// A host TPM as a manufacturer ships it: `swtpm_setup --createek --create-ek-cert` makes
    /// the RSA EK and its certificate at NV 0x01c00002, issued by swtpm_localca keeping its
    /// CA in `dir/manufacturer-ca` (not the system-wide /var/lib/swtpm-localca); then the
    /// simulator runs on that state (`dir/state`).
    pub fn manufacture(dir: &Path) -> io::Result<(HostTpmSimulator, ManufacturerCa)> {
        let state = dir.join("state");
        let ca = dir.join("manufacturer-ca");
        std::fs::create_dir_all(&state)?;
        std::fs::create_dir_all(&ca)?;
        let localca_conf = dir.join("swtpm-localca.conf");
        std::fs::write(
            &localca_conf,
            format!(
                "statedir = {ca}\nsigningkey = {ca}/signkey.pem\nissuercert = {ca}/issuercert.pem\n\
                 certserial = {ca}/certserial\n",
                ca = ca.display()
            ),
        )?;
        let localca_options = dir.join("swtpm-localca.options");
        std::fs::write(
            &localca_options,
            "--platform-manufacturer vhost-vtpm-tests\n--platform-version 2.1\n\
             --platform-model swtpm\n",
        )?;
        let setup_conf = dir.join("swtpm_setup.conf");
        std::fs::write(
            &setup_conf,
            format!(
                "create_certs_tool = {}\ncreate_certs_tool_config = {}\n\
                 create_certs_tool_options = {}\nactive_pcr_banks = sha256\n",
                which("swtpm_localca")?.display(),
                localca_conf.display(),
                localca_options.display()
            ),
        )?;
        let out = Command::new(which("swtpm_setup")?)
            .args([
                "--tpm2",
                "--createek",
                "--create-ek-cert",
                "--create-platform-cert",
                "--overwrite",
            ])
            .arg("--tpmstate")
            .arg(&state)
            .arg("--config")
            .arg(&setup_conf)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "swtpm_setup failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let root = ca.join("swtpm-localca-rootca-cert.pem");
        let issuer = ca.join("issuercert.pem");
        for p in [&root, &issuer] {
            if !p.exists() {
                return Err(io::Error::other(format!(
                    "swtpm_localca did not write {}",
                    p.display()
                )));
            }
        }
        let tpm = HostTpmSimulator::start(&state)?;
        Ok((tpm, ManufacturerCa { root, issuer }))
    }
}

impl Drop for HostTpmSimulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
        let out = Command::new(bin)
            .arg("--store")
            .arg(store)
            .arg("init")
            .args(init_args)
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "vtpm-ca init: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let mut ca = CaProcess {
            child: None,
            bin: bin.to_owned(),
            store: store.to_owned(),
            url: String::new(),
            ca_cert: store.join("ca.pem"),
            admin_token_file: store.join("admin.token"),
        };
        ca.serve()?;
        Ok(ca)
    }

    /// Runs another `vtpm-ca --store DIR ARGS...` command on the store; returns stdout.
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

/// Runs a command-line tool to completion: what it printed (stdout, then stderr), as the
/// error when it failed.
pub fn run_tool(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// The whole host side of the certificate chain (ADR 0008), set up with the project's
/// binaries from `bin_dir`: a manufactured host TPM, the local CA trusting its manufacturer,
/// the host enrolled (`vtpm-host enroll`) and its coprocessor certified and registered
/// (`vtpm-host certify-coprocessor`, with a CA principal allowed to write `coprocessor/`).
pub struct ChainSetup {
    bin_dir: PathBuf,
    pub host_tpm: HostTpmSimulator,
    pub manufacturer: ManufacturerCa,
    pub ca: CaProcess,
    /// `vtpm-host --dir`.
    pub host_dir: PathBuf,
    pub host_id: String,
}

impl ChainSetup {
    pub fn start(bin_dir: &Path, dir: &Path, host_id: &str) -> io::Result<ChainSetup> {
        Self::start_with(bin_dir, dir, host_id, &[])
    }

    /// Like [`ChainSetup::start`], with more `vtpm-ca init` arguments (`--validity-secs N`).
    pub fn start_with(
        bin_dir: &Path,
        dir: &Path,
        host_id: &str,
        ca_init: &[&str],
    ) -> io::Result<ChainSetup> {
        let (host_tpm, manufacturer) = HostTpmSimulator::manufacture(&dir.join("host-tpm"))?;
        let root = manufacturer.root.display().to_string();
        let issuer = manufacturer.issuer.display().to_string();
        let mut init = vec!["--ek-root", root.as_str(), "--ek-root", issuer.as_str()];
        init.extend_from_slice(ca_init);
        let ca = CaProcess::start(&bin_dir.join("vtpm-ca"), &dir.join("ca"), &init)?;
        let setup = ChainSetup {
            bin_dir: bin_dir.to_owned(),
            host_tpm,
            manufacturer,
            ca,
            host_dir: dir.join("host"),
            host_id: host_id.to_owned(),
        };
        let ca_args = setup.ca_args();
        let ca_args: Vec<&str> = ca_args.iter().map(String::as_str).collect();
        let mut enroll = vec!["enroll", "--host-id", host_id];
        enroll.extend(&ca_args);
        setup.host(&enroll).map_err(io::Error::other)?;
        let token = setup.ca.command(&[
            "acl",
            "add",
            "--name",
            host_id,
            "--write-prefix",
            "coprocessor/",
        ])?;
        let token_file = setup.token_file();
        std::fs::write(&token_file, token.lines().last().unwrap_or_default().trim())?;
        let token_file = token_file.display().to_string();
        let mut certify = vec!["certify-coprocessor", "--host-id", host_id];
        certify.extend(&ca_args);
        certify.extend(["--token-file", &token_file]);
        setup.host(&certify).map_err(io::Error::other)?;
        Ok(setup)
    }

    /// The file with the bearer token of this host's CA principal (may write `coprocessor/`).
    pub fn token_file(&self) -> PathBuf {
        self.host_dir.with_file_name("host.token")
    }

    /// `--ca URL --ca-cert PEM`.
    pub fn ca_args(&self) -> Vec<String> {
        vec![
            "--ca".into(),
            self.ca.url.clone(),
            "--ca-cert".into(),
            self.ca.ca_cert.display().to_string(),
        ]
    }

    /// Runs `vtpm-host --dir HOST_DIR --host-tpm TCTI ARGS...`: its output, or its output as
    /// the error when it fails.
    pub fn host(&self, args: &[&str]) -> Result<String, String> {
        run_tool(
            Command::new(self.bin_dir.join("vtpm-host"))
                .arg("--dir")
                .arg(&self.host_dir)
                .args(["--host-tpm", &self.host_tpm.tcti()])
                .args(args),
        )
    }

    /// Provisions the vEK certificates into the (new or stopped) instance in `state_dir`,
    /// whose state key the host TPM seals.
    pub fn provision(&self, state_dir: &Path) -> Result<String, String> {
        self.host(&["provision", "--state-dir", &state_dir.display().to_string()])
    }

    /// A PEM file of the host directory (`host-aik.pem`, `coprocessor.pem`, ...).
    pub fn host_pem(&self, name: &str) -> io::Result<String> {
        std::fs::read_to_string(self.host_dir.join(name))
    }
}

/// Checks a README against the command lines it documents: every option the tools' `--help`
/// shows must appear in the README, and every option in the README's table rows (rows
/// starting with `` | `--`` or with `` | `TOOL `` for one of the tools) must exist. `tools`
/// pairs each binary with the argument lists whose `--help` to read (`&[]` for the top level,
/// `&["enroll"]` for a subcommand). Returns what drifted.
pub fn readme_drift(readme: &str, tools: &[(&Path, &[&[&str]])]) -> Result<(), String> {
    use std::collections::BTreeSet;
    let options = |text: &str| -> BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("--") && w.len() > 2 && !w.ends_with('-'))
            .map(str::to_owned)
            .collect()
    };
    let mut help = String::new();
    let mut names = Vec::new();
    for (bin, commands) in tools {
        names.push(
            bin.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        for args in *commands {
            let out = Command::new(bin)
                .args(*args)
                .arg("--help")
                .output()
                .map_err(|e| format!("{}: {e}", bin.display()))?;
            let text = String::from_utf8_lossy(&out.stdout);
            if !text.contains("Usage") {
                return Err(format!(
                    "{} {args:?} --help printed no usage",
                    bin.display()
                ));
            }
            help.push_str(&text);
        }
    }
    let (in_help, in_readme) = (options(&help), options(readme));
    let missing: Vec<_> = in_help
        .iter()
        .filter(|o| !["--help", "--version"].contains(&o.as_str()) && !in_readme.contains(*o))
        .collect();
    let table_rows: String = readme
        .lines()
        .filter(|l| {
            l.starts_with("| `--") || names.iter().any(|n| l.starts_with(&format!("| `{n} ")))
        })
        .filter_map(|l| l.split('|').nth(1))
        .collect::<Vec<_>>()
        .join("\n");
    let stale: Vec<_> = options(&table_rows)
        .into_iter()
        .filter(|o| !in_help.contains(o))
        .collect();
    if missing.is_empty() && stale.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "options missing from the README: {missing:?}; README options the CLI lacks: {stale:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_drift_finds_missing_and_stale_options() {
        let ls = Path::new("/bin/ls");
        let all = |extra: &str| {
            let help = Command::new(ls).arg("--help").output().unwrap().stdout;
            format!("{}\n{extra}", String::from_utf8_lossy(&help))
        };
        let commands: &[&[&str]] = &[&[]];
        assert!(readme_drift(&all(""), &[(ls, commands)]).is_ok());
        let err = readme_drift("| `ls --all` | x |", &[(ls, commands)]).unwrap_err();
        assert!(err.contains("--recursive"), "{err}");
        let err =
            readme_drift(&all("| `ls --no-such-option` | x |"), &[(ls, commands)]).unwrap_err();
        assert!(err.contains("--no-such-option"), "{err}");
    }
}
