//! A simulated host TPM: swtpm on loopback TCP, optionally manufactured with an EK
//! certificate from a private manufacturer CA.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
    ///
    /// The two ports are picked free, but another test of the same process may take one of
    /// them before swtpm binds it (seen in CI: swtpm then exits, and the port probed belonged
    /// to someone else). So swtpm must still run once both ports answer, or it is started
    /// again on other ports.
    pub fn start(state: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(state)?;
        let mut last = None;
        for _ in 0..5 {
            let port = loop {
                let a = std::net::TcpListener::bind("127.0.0.1:0")?
                    .local_addr()?
                    .port();
                if a < 65000 && std::net::TcpListener::bind(("127.0.0.1", a + 1)).is_ok() {
                    break a;
                }
            };
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
            let listening = |p: u16| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok();
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last = Some(io::Error::other(format!(
                        "host TPM simulator (swtpm) on ports {port}/{} exited: {status}",
                        port + 1
                    )));
                    break;
                }
                if listening(port + 1) && listening(port) {
                    // Both answer, and they are swtpm's if it still runs.
                    std::thread::sleep(Duration::from_millis(20));
                    if matches!(child.try_wait(), Ok(None)) {
                        return Ok(HostTpmSimulator {
                            child,
                            port,
                            state: state.to_owned(),
                        });
                    }
                    continue;
                }
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
        }
        Err(last.unwrap_or_else(|| io::Error::other("host TPM simulator (swtpm) did not start")))
    }

    /// The TCTI string for tpm2-tss (`swtpm:host=127.0.0.1,port=N`).
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// A connection to the data channel, for raw TPM commands. swtpm serves one client at a
    /// time: close it before a TCTI user connects.
    pub fn connect(&self) -> io::Result<std::net::TcpStream> {
        std::net::TcpStream::connect(("127.0.0.1", self.port))
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
