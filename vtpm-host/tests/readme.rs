//! The README's "A host from scratch", run as a new operator would run it: its shell blocks,
//! taken from README.md when the test runs (so the two cannot drift apart) and run as
//! written by bash with `set -euo pipefail`, with an swtpm as the host TPM (the README's "A
//! stand-in host TPM" block), a real `vtpm-ca` process and the workspace's binaries on PATH.
//! Only what differs per run comes from outside, through the variables the README reads:
//! the working directory, the ports, the CA's name and listening address.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

mod common;

use common::bin_dir;

/// How long the whole README may take (it manufactures a TPM, starts the CA, enrols...).
const TIMEOUT: Duration = Duration::from_secs(300);

/// Two free consecutive loopback ports (swtpm's data and control channels).
fn free_port_pair() -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 65000 && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// What the README's commands leave running: the bash process group (the CA it put in the
/// background, the daemon) and the swtpm, which daemonizes itself and writes a pid file.
struct Cleanup {
    group: Option<Pid>,
    swtpm_pid_file: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(group) = self.group {
            let _ = killpg(group, Signal::SIGTERM);
        }
        if let Some(pid) = std::fs::read_to_string(&self.swtpm_pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn pem(path: &Path) -> openssl::x509::X509 {
    openssl::x509::X509::from_pem(&std::fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn wait_with_timeout(child: &mut Child, log: &dyn Fn() -> String) -> std::process::ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
            panic!(
                "the README's commands did not finish within {TIMEOUT:?}\n{}",
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn readme_host_from_scratch_runs_verbatim() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let scratch = testbed::readme_shell_blocks(&readme, "## A host from scratch").unwrap();
    let swtpm = testbed::readme_shell_blocks(&readme, "### A stand-in host TPM (swtpm)").unwrap();
    // The variables, the CA machine, the host, the daemon; the stand-in host TPM. A README
    // rewritten into another shape must bring this test along.
    let [variables, ca_steps, host_steps, daemon] = &scratch[..] else {
        panic!("expected 4 shell blocks under \"A host from scratch\": {scratch:#?}");
    };
    let [swtpm] = &swtpm[..] else {
        panic!("expected 1 shell block under \"A stand-in host TPM\": {swtpm:#?}");
    };
    assert!(daemon.contains("vhost-vtpm "), "{daemon}");
    // The README must never show a bearer token redirected into a file with the umask's mode.
    for line in readme.lines() {
        let command = line.trim_start();
        assert!(
            !(command.starts_with("vtpm-ca") && command.contains('>')),
            "the README redirects vtpm-ca output (a token?) into a file: {line}"
        );
    }

    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let run_dir = tmp.path().join("run");
    let ca_port = testbed::free_port().unwrap();
    let tpm_port = free_port_pair();
    // The README's blocks in the order it gives (the stand-in TPM after the variables and
    // before the CA), unchanged; the glue only puts the daemon, which runs until stopped, in
    // the background and waits for its socket.
    let script = format!(
        "set -euo pipefail\n{variables}\n{swtpm}\n{ca_steps}\n{host_steps}\n\
         ( {daemon} ) &\n\
         for _ in $(seq 300); do [ -S \"$RUN_DIR/vm1.sock\" ] && break; sleep 0.1; done\n\
         [ -S \"$RUN_DIR/vm1.sock\" ] && echo \"daemon listening on $RUN_DIR/vm1.sock\"\n"
    );
    std::fs::write(tmp.path().join("readme.sh"), &script).unwrap();
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (stdout, stderr) = (tmp.path().join("stdout"), tmp.path().join("stderr"));
    let mut cleanup = Cleanup {
        group: None,
        swtpm_pid_file: work.join("vtpm-swtpm").join("swtpm.pid"),
    };
    let mut child = Command::new("bash")
        .arg(tmp.path().join("readme.sh"))
        .current_dir(tmp.path())
        .env("PATH", path)
        .env("WORK", &work)
        .env("CA_HOST", "localhost")
        .env("CA_PORT", ca_port.to_string())
        .env("CA_LISTEN", "127.0.0.1")
        .env("TPM_PORT", tpm_port.to_string())
        .env("RUN_DIR", &run_dir)
        .env_remove("RUST_LOG")
        .env_remove("HOST_TPM")
        .env_remove("HOST_ID")
        .env_remove("EK_ROOT")
        .env_remove("EK_ISSUER")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        // Its own process group: whatever the README starts in the background goes with it.
        .process_group(0)
        .spawn()
        .unwrap();
    cleanup.group = Some(Pid::from_raw(child.id() as i32));
    let log = || {
        format!(
            "--- stdout\n{}\n--- stderr\n{}",
            std::fs::read_to_string(&stdout).unwrap_or_default(),
            std::fs::read_to_string(&stderr).unwrap_or_default()
        )
    };
    let status = wait_with_timeout(&mut child, &log);
    let log = log();
    assert!(
        status.success(),
        "the README's commands failed ({status})\n{log}"
    );

    // What each step says it did.
    let out = std::fs::read_to_string(&stdout).unwrap();
    let host_id = String::from_utf8(Command::new("hostname").arg("-s").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned();
    for expected in [
        format!("host {host_id} enrolled"),
        "registered with the CA".to_owned(),
        "chain in 0x01c00100, 0x01c00101".to_owned(),
        "rsa-vek.pem: OK".to_owned(),
        "ecc-vek.pem: OK".to_owned(),
        "daemon listening on".to_owned(),
    ] {
        assert!(
            out.contains(&expected),
            "no {expected:?} in the output\n{log}"
        );
    }
    // tss-esapi's line per TPM context stays out of an operator's way by default.
    assert!(!log.contains("Closing context"), "{log}");

    // The tokens: files only their owner can read, never printed.
    let vtpm = work.join("vtpm");
    for token in [
        format!("{host_id}.token"),
        format!("{host_id}.enroll-token"),
    ] {
        let path = vtpm.join(&token);
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        let secret = std::fs::read_to_string(&path).unwrap();
        assert_eq!(secret.trim().len(), 64, "{token}: {secret:?}");
        assert!(!log.contains(secret.trim()), "{token} was printed\n{log}");
    }
    assert_eq!(mode(&vtpm), 0o700);
    assert_eq!(mode(&work.join("vtpm-ca").join("admin.token")), 0o600);

    // The host directory: private, with what `enroll` and `certify-coprocessor` keep.
    let host = vtpm.join("host");
    assert_eq!(mode(&host), 0o700);
    // Keys (wrapped by the host TPM, but still) readable by the owner only; certificates
    // and the public key writable by the owner only.
    for file in ["host-aik.blob", "coprocessor.key", "migration.key"] {
        assert_eq!(mode(&host.join(file)), 0o600, "{file}");
    }
    for file in [
        "host-ek.pem",
        "host-ek-intermediates.pem",
        "host-aik.pem",
        "ca.pem",
        "coprocessor.pem",
        "migration.pub",
    ] {
        assert_eq!(mode(&host.join(file)) & 0o022, 0, "{file}");
    }
    assert!(!host.join(".coprocessor.staging").exists());

    // The chain is what the README's NV table says: chain-0 (0x01c00100) the coprocessor
    // certificate, chain-1 (0x01c00101) the host AIK certificate, under the CA's root.
    let certs = vtpm.join("vm1-certificates");
    let der = |p: &Path| pem(p).to_der().unwrap();
    assert_eq!(
        der(&certs.join("chain-0.pem")),
        der(&host.join("coprocessor.pem"))
    );
    assert_eq!(
        der(&certs.join("chain-1.pem")),
        der(&host.join("host-aik.pem"))
    );
    assert_eq!(
        der(&host.join("ca.pem")),
        der(&work.join("vtpm-ca").join("ca.pem"))
    );
    assert_eq!(
        der(&vtpm.join("ca.pem")),
        der(&work.join("vtpm-ca").join("ca.pem"))
    );
    let verified = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(work.join("vtpm-ca").join("ca.pem"))
        .arg("-untrusted")
        .arg(certs.join("chain-0.pem"))
        .arg("-untrusted")
        .arg(certs.join("chain-1.pem"))
        .arg(certs.join("rsa-vek.pem"))
        .arg(certs.join("ecc-vek.pem"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{text}");
    assert_eq!(text.matches(": OK").count(), 2, "{text}");

    // The host sent the manufacturer's intermediate, which the CA does not trust by itself.
    let intermediates = std::fs::read(host.join("host-ek-intermediates.pem")).unwrap();
    let issuer = work
        .join("vtpm-swtpm")
        .join("localca")
        .join("issuercert.pem");
    assert_eq!(
        pem(&issuer).to_der().unwrap(),
        openssl::x509::X509::from_pem(&intermediates)
            .unwrap()
            .to_der()
            .unwrap()
    );
    let ca_list = Command::new(bin_dir().join("vtpm-ca"))
        .arg("--store")
        .arg(work.join("vtpm-ca"))
        .arg("list")
        .output()
        .unwrap();
    let ca_list = String::from_utf8_lossy(&ca_list.stdout);
    let issuer_fp = hex(&pem(&issuer)
        .digest(openssl::hash::MessageDigest::sha256())
        .unwrap());
    let root = work
        .join("vtpm-swtpm")
        .join("localca")
        .join("swtpm-localca-rootca-cert.pem");
    let root_fp = hex(&pem(&root)
        .digest(openssl::hash::MessageDigest::sha256())
        .unwrap());
    assert!(ca_list.contains(&root_fp), "{ca_list}");
    assert!(!ca_list.contains(&issuer_fp), "{ca_list}");

    // The daemon is stopped with the rest of the process group.
    drop(cleanup);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
