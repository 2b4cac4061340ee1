//! Shared helpers of the integration tests: the real `vtpm-ca` binary serving HTTPS on
//! 127.0.0.1:0, and swtpm + tpm2-tools standing in for a host TPM (or a vTPM).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use testbed::{CaProcess, HostTpmSimulator, ManufacturerCa};
use vtpm_ca::Client;

pub const BIN: &str = env!("CARGO_BIN_EXE_vtpm-ca");

/// Runs `vtpm-ca --store DIR ARGS...` to completion.
pub fn vtpm_ca(store: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .expect("run vtpm-ca")
}

/// Like [`vtpm_ca`], asserting success; returns stdout.
pub fn vtpm_ca_ok(store: &Path, args: &[&str]) -> String {
    let out = vtpm_ca(store, args);
    assert!(
        out.status.success(),
        "vtpm-ca {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A CA store and a `vtpm-ca serve` process on it (`testbed::CaProcess`).
pub struct CaServer {
    pub tmp: tempfile::TempDir,
    pub store: PathBuf,
    pub url: String,
    pub ca_pem: Vec<u8>,
    pub admin_token: String,
    process: CaProcess,
}

impl CaServer {
    /// `vtpm-ca init --validity-secs VALIDITY EXTRA...`, then `serve --listen 127.0.0.1:0`.
    pub fn start(validity_secs: u64, extra_init: &[&str]) -> CaServer {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("ca");
        let validity = validity_secs.to_string();
        let mut args = vec!["--validity-secs", &validity];
        args.extend_from_slice(extra_init);
        let process = CaProcess::start(Path::new(BIN), &store, &args).expect("start vtpm-ca");
        let admin_token = process.admin_token().unwrap();
        let ca_pem = std::fs::read(&process.ca_cert).unwrap();
        assert!(
            process.url.starts_with("https://127.0.0.1:"),
            "{}",
            process.url
        );
        CaServer {
            tmp,
            store,
            url: process.url.clone(),
            ca_pem,
            admin_token,
            process,
        }
    }

    /// Starts `vtpm-ca serve` on the store again after [`CaServer::stop`].
    pub fn serve(&mut self) {
        self.process.serve().expect("vtpm-ca serve");
        self.url = self.process.url.clone();
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.process.stop().expect("stop vtpm-ca")
    }

    pub fn client(&self, token: Option<&str>) -> Client {
        Client::new(&self.url, &self.ca_pem, token.map(str::to_string)).unwrap()
    }

    /// The CA root certificate.
    pub fn root(&self) -> openssl::x509::X509 {
        openssl::x509::X509::from_pem(&self.ca_pem).unwrap()
    }

    pub fn admin(&self) -> Client {
        self.client(Some(&self.admin_token))
    }

    /// `vtpm-ca enroll-token --subject SUBJECT` on the running store; returns the token.
    pub fn enroll_token(&self, subject: &str) -> String {
        vtpm_ca_ok(&self.store, &["enroll-token", "--subject", subject])
            .trim()
            .to_string()
    }

    /// A client carrying a new enrolment token for host `subject`.
    pub fn host_client(&self, subject: &str) -> Client {
        self.client(Some(&self.enroll_token(subject)))
    }

    /// `vtpm-ca acl add` on the running store; returns the token.
    pub fn add_principal(&self, args: &[&str]) -> String {
        let mut a = vec!["acl", "add"];
        a.extend_from_slice(args);
        vtpm_ca_ok(&self.store, &a).trim().to_string()
    }
}

/// A swtpm manufactured by swtpm_setup with EK certificates from a private swtpm_localca
/// (`testbed::HostTpmSimulator::manufacture`), reached by tpm2-tools over TCP.
pub struct Swtpm {
    pub dir: PathBuf,
    tpm: HostTpmSimulator,
    ca: ManufacturerCa,
}

impl Swtpm {
    /// Manufactures (EK + EK certificate) and starts a TPM in `dir`.
    pub fn start(dir: &Path) -> Swtpm {
        let (tpm, ca) = HostTpmSimulator::manufacture(dir).expect("manufacture a TPM");
        Swtpm {
            dir: dir.to_owned(),
            tpm,
            ca,
        }
    }

    /// The swtpm_localca root (the EK root to trust).
    pub fn ek_root(&self) -> PathBuf {
        self.ca.root.clone()
    }

    /// The swtpm_localca intermediate that signs the EK certificates.
    pub fn ek_issuer(&self) -> PathBuf {
        self.ca.issuer.clone()
    }

    /// Runs a tpm2-tools command in the TPM's directory; returns its output (asserting success).
    pub fn tpm2(&self, args: &[&str]) -> Output {
        let out = self.tpm2_raw(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn tpm2_raw(&self, args: &[&str]) -> Output {
        Command::new(args[0])
            .args(&args[1..])
            .current_dir(&self.dir)
            .env("TPM2TOOLS_TCTI", self.tpm.tcti())
            .output()
            .expect("tpm2-tools (scripts/setup.sh installs them)")
    }

    /// Flushes transient objects and sessions (swtpm has no resource manager).
    pub fn flush(&self) {
        self.tpm2(&["tpm2_flushcontext", "-t"]);
        self.tpm2(&["tpm2_flushcontext", "-s"]);
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }

    pub fn read(&self, f: &str) -> Vec<u8> {
        std::fs::read(self.path(f)).unwrap()
    }

    /// `tpm2_createek` (RSA, `ek.ctx`) and `tpm2_createak` (restricted ECDSA P-256:
    /// `ak.ctx`, `ak.pub`, `ak.name`).
    pub fn create_ek_and_ak(&self) {
        self.tpm2(&["tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"]);
        self.flush();
        self.tpm2(&[
            "tpm2_createak",
            "-C",
            "ek.ctx",
            "-c",
            "ak.ctx",
            "-G",
            "ecc",
            "-g",
            "sha256",
            "-s",
            "ecdsa",
            "-u",
            "ak.pub",
            "-n",
            "ak.name",
        ]);
        self.flush();
    }

    /// The public key of the object in context file `{name}.ctx` (`tpm2_readpublic`).
    pub fn public_key(&self, name: &str) -> openssl::pkey::PKey<openssl::pkey::Public> {
        let (ctx, pem) = (format!("{name}.ctx"), format!("{name}.pem"));
        self.tpm2(&["tpm2_readpublic", "-c", &ctx, "-f", "pem", "-o", &pem]);
        self.flush();
        openssl::pkey::PKey::public_key_from_pem(&self.read(&pem)).unwrap()
    }

    /// The RSA EK certificate from NV (PEM).
    pub fn ek_cert_pem(&self) -> String {
        self.tpm2(&["tpm2_getekcertificate", "-o", "ek.crt"]);
        let der = self.read("ek.crt");
        let cert = openssl::x509::X509::from_der(&der).unwrap();
        String::from_utf8(cert.to_pem().unwrap()).unwrap()
    }

    /// `tpm2_activatecredential` of a tpm2-tools credential file with the EK and the AK;
    /// returns the recovered secret.
    pub fn activate(&self, cred_file: &[u8]) -> Vec<u8> {
        std::fs::write(self.path("cred.in"), cred_file).unwrap();
        self.flush();
        self.tpm2(&[
            "tpm2_startauthsession",
            "--policy-session",
            "-S",
            "session.ctx",
        ]);
        self.tpm2(&["tpm2_policysecret", "-S", "session.ctx", "-c", "e"]);
        let out = self.tpm2_raw(&[
            "tpm2_activatecredential",
            "-c",
            "ak.ctx",
            "-C",
            "ek.ctx",
            "-i",
            "cred.in",
            "-o",
            "cred.out",
            "-P",
            "session:session.ctx",
        ]);
        self.tpm2(&["tpm2_flushcontext", "session.ctx"]);
        self.flush();
        assert!(
            out.status.success(),
            "tpm2_activatecredential: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.read("cred.out")
    }

    /// Signs `data` with the AK (the TPM hashes it, so a restricted key may sign): DER ECDSA.
    pub fn sign_with_ak(&self, data: &[u8]) -> Vec<u8> {
        std::fs::write(self.path("tosign.bin"), data).unwrap();
        self.flush();
        self.tpm2(&[
            "tpm2_sign",
            "-c",
            "ak.ctx",
            "-g",
            "sha256",
            "-s",
            "ecdsa",
            "-f",
            "plain",
            "-o",
            "sig.der",
            "tosign.bin",
        ]);
        self.flush();
        self.read("sig.der")
    }
}

/// `e` is the API's refusal with HTTP `status` and error `code`.
pub fn assert_api_error(e: &vtpm_ca::ClientError, status: u16, code: &str) {
    assert_eq!((e.status(), e.code()), (Some(status), Some(code)), "{e}");
}

/// OpenSSL's verification of `leaf` against `root` with `untrusted` intermediates: Ok or
/// the verify error code (e.g. 10 = X509_V_ERR_CERT_HAS_EXPIRED).
pub fn openssl_verify(
    root: &openssl::x509::X509,
    untrusted: &[openssl::x509::X509],
    leaf: &openssl::x509::X509,
) -> Result<(), (i32, String)> {
    use openssl::stack::Stack;
    use openssl::x509::store::X509StoreBuilder;
    use openssl::x509::X509StoreContext;
    let mut sb = X509StoreBuilder::new().unwrap();
    sb.add_cert(root.clone()).unwrap();
    let store = sb.build();
    let mut chain = Stack::new().unwrap();
    for c in untrusted {
        chain.push(c.clone()).unwrap();
    }
    let mut ctx = X509StoreContext::new().unwrap();
    ctx.init(&store, leaf, &chain, |c| {
        let ok = c.verify_cert()?;
        Ok(if ok {
            Ok(())
        } else {
            Err((c.error().as_raw(), c.error().error_string().to_string()))
        })
    })
    .unwrap()
}
