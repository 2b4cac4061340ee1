//! The verifier against real evidence: swtpm as the host TPM (PCRs 0-7 extended with known
//! values), the host enrolled with the local CA (a real `vtpm-ca` process), the vTPM
//! provisioned and its vAIK enrolled, the daemon mirroring PCRs 0-7 and answering the deep
//! quote; the evidence collected through the guest-driver harness as the guest tool collects
//! it. Every refusal the issue names fails exactly its own check.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use guest_driver::{ClientOptions, VtpmClient};
use host_tpm::HostTpm;
use openssl::sha::sha256;
use openssl::x509::X509;
use serde_json::Value;
use testbed::evidence::{self, get_bytes, set_bytes};
use testbed::{workspace_bin, ChainSetup, DaemonProcess};
use tpm_proto::commands as c;
use vtpm_verify::checks::names;
use vtpm_verify::revocation::Known;
use vtpm_verify::{NonceStore, Policy, Report, Revocation, Trust};

const PCRS: [u8; 9] = [0, 1, 2, 3, 4, 5, 6, 7, 16];
const VAIK: u32 = 0x8100_8001;

struct Setup {
    _tmp: tempfile::TempDir,
    chain: ChainSetup,
    tcti: String,
    daemon: DaemonProcess,
    vaik: Vec<u8>,
    trust: Trust,
    nonces: NonceStore,
    dir: PathBuf,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn start_daemon(chain: &ChainSetup, dir: &Path) -> DaemonProcess {
    let mirror = chain.mirror_args();
    let args = [&["--log-level", "debug"][..], &mirror.args()].concat();
    DaemonProcess::start(&workspace_bin("vhost-vtpm"), dir, &args).expect("daemon")
}

impl Setup {
    fn start() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let bin_dir = workspace_bin("vhost-vtpm").parent().unwrap().to_owned();
        let chain = ChainSetup::start(&bin_dir, &dir.join("host"), "verify-host").unwrap();
        let tcti = chain.host_tpm.tcti();
        {
            let mut host = HostTpm::connect(&tcti).unwrap();
            for pcr in 0..8u8 {
                host.pcr_extend_sha256(pcr, sha256(format!("firmware {pcr}").as_bytes()))
                    .unwrap();
            }
        }
        let vm = dir.join("vm");
        std::fs::create_dir_all(&vm).unwrap();
        chain.provision(&vm.join("state")).unwrap();
        let vaik_pem = chain.enroll_vaik(&vm.join("state"), "verify-vm").unwrap();
        let vaik = X509::from_pem(&std::fs::read(vaik_pem).unwrap())
            .unwrap()
            .to_der()
            .unwrap();
        let daemon = start_daemon(&chain, &vm);
        let trust = Trust {
            ca_root: X509::from_pem(&std::fs::read(&chain.ca.ca_cert).unwrap()).unwrap(),
            ek_roots: [&chain.manufacturer.root, &chain.manufacturer.issuer]
                .iter()
                .map(|p| X509::from_pem(&std::fs::read(p).unwrap()).unwrap())
                .collect(),
        };
        let nonces = NonceStore::open(dir.join("verifier")).unwrap();
        Setup {
            _tmp: tmp,
            chain,
            tcti,
            daemon,
            vaik,
            trust,
            nonces,
            dir,
        }
    }

    fn client(&self) -> VtpmClient {
        let mut c = VtpmClient::connect(&self.daemon.socket, ClientOptions::default()).unwrap();
        let code = tpm_proto::response_code(&c.transact(&c::startup(c::TPM_SU_CLEAR)).unwrap());
        assert!(matches!(code, Ok(0) | Ok(0x100)), "{code:?}");
        c
    }

    fn status_api(&self) -> Revocation {
        let pem = std::fs::read(&self.chain.ca.ca_cert).unwrap();
        Revocation::StatusApi(vtpm_ca::Client::new(&self.chain.ca.url, &pem, None).unwrap())
    }

    fn collect(&self, client: &mut VtpmClient, ak: u32) -> Value {
        let nonce = self.nonces.issue(now(), 300).unwrap();
        self.collect_for(client, ak, &nonce)
    }

    fn collect_for(&self, client: &mut VtpmClient, ak: u32, nonce: &str) -> Value {
        let mut t = |cmd: &[u8]| client.transact_tss(cmd).unwrap();
        evidence::collect(&mut t, nonce, ak, &self.vaik, &PCRS).unwrap()
    }

    /// Runs the `vtpm-verify` binary; its exit code and output.
    fn cli(&self, args: &[&str]) -> (i32, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vtpm-verify"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn verify(&self, bundle: &Value, policy: &Policy) -> Report {
        self.verify_with(bundle, policy, &self.status_api())
    }

    fn verify_with(&self, bundle: &Value, policy: &Policy, revocation: &Revocation) -> Report {
        vtpm_verify::verify(
            bundle.to_string().as_bytes(),
            &self.trust,
            revocation,
            policy,
            &self.nonces,
            now(),
        )
    }
}

fn lines(r: &Report) -> String {
    r.checks
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[track_caller]
fn assert_accepted(r: &Report) {
    assert!(r.accepted(), "refused:\n{}", lines(r));
    assert_eq!(r.checks.len(), names::ALL.len());
}

#[track_caller]
fn assert_refused_by(r: &Report, expected: &[&str]) {
    assert_eq!(r.failed(), expected, "\n{}", lines(r));
}

#[test]
fn evidence_is_accepted_and_each_refusal_names_its_check() {
    let s = Setup::start();
    let mut client = s.client();
    let open = Policy::default();

    // --- genuine evidence: accepted, every check passes ---
    let bundle = s.collect(&mut client, VAIK);
    let report = s.verify(&bundle, &open);
    assert_accepted(&report);
    // A policy with the values the bundle holds (what `vtpm-verify golden` prints) accepts
    // the next bundle too.
    let (host, vtpm) = vtpm_verify::checks::quoted_pcrs(
        &vtpm_verify::Evidence::parse(bundle.to_string().as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(host.len(), 8);
    assert_eq!(vtpm.len(), 9);
    let golden = Policy::from_values(&host, &vtpm);
    assert_accepted(&s.verify(&s.collect(&mut client, VAIK), &golden));

    // --- the command line: nonce, check (exit 0), the same again (exit 1), golden ---
    let state = s.nonces.dir().display().to_string();
    let (code, nonce) = s.cli(&["nonce", "--state", &state]);
    assert_eq!(code, 0, "{nonce}");
    let file = s.dir.join("bundle.json");
    std::fs::write(
        &file,
        s.collect_for(&mut client, VAIK, nonce.trim()).to_string(),
    )
    .unwrap();
    let policy_file = s.dir.join("policy.json");
    std::fs::write(&policy_file, "{}").unwrap();
    let ca_cert = s.chain.ca.ca_cert.display().to_string();
    let root = s.chain.manufacturer.root.display().to_string();
    let issuer = s.chain.manufacturer.issuer.display().to_string();
    let check = |extra: &[&str]| {
        let mut args = vec![
            "check",
            "--state",
            &state,
            "--ca-cert",
            &ca_cert,
            "--ek-root",
            &root,
            "--ek-root",
            &issuer,
            "--ca",
            &s.chain.ca.url,
        ];
        args.extend_from_slice(extra);
        s.cli(&args)
    };
    let policy_arg = policy_file.display().to_string();
    let bundle_arg = file.display().to_string();
    let (code, out) = check(&["--policy", &policy_arg, &bundle_arg]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("PASS ")).count(),
        names::ALL.len(),
        "{out}"
    );
    assert!(out.contains("ACCEPTED"), "{out}");
    let (code, out) = check(&["--policy", &policy_arg, &bundle_arg]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL nonce: replayed"), "{out}");
    assert!(
        out.contains("REFUSED: 1 of 17 checks failed: nonce"),
        "{out}"
    );
    let (code, golden_json) = s.cli(&["golden", &bundle_arg]);
    assert_eq!(code, 0, "{golden_json}");
    assert_eq!(Policy::parse(golden_json.as_bytes()).unwrap(), golden);
    // Usage errors are exit 2, named.
    let (code, out) = check(&["--policy", "/nonexistent/policy.json", &bundle_arg]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("/nonexistent/policy.json"), "{out}");

    // --- a replayed nonce ---
    assert_refused_by(&s.verify(&bundle, &open), &[names::NONCE]);
    assert!(s
        .verify(&bundle, &open)
        .get(names::NONCE)
        .unwrap()
        .detail
        .contains("replayed"));

    // --- a golden value that does not match (the guest extended PCR 16) ---
    let digest = sha256(b"guest measured something else");
    client
        .transact_tss(&c::pcr_extend_sha256(16, &digest))
        .unwrap();
    assert_refused_by(
        &s.verify(&s.collect(&mut client, VAIK), &golden),
        &[names::POLICY_VTPM_PCRS],
    );

    // --- a vTPM quote signed by a key without a vAIK certificate ---
    let rogue = c::parse_create_primary_ecc(
        &client
            .transact_tss(&c::create_primary_ecc_signing())
            .unwrap(),
    )
    .unwrap()
    .handle;
    assert_refused_by(
        &s.verify(&s.collect(&mut client, rogue), &open),
        &[names::VTPM_QUOTE_SIGNATURE],
    );

    // --- a host quote taken for another vTPM (relay): a second vTPM on the same host,
    // asked for a deep quote with this bundle's nonce ---
    let other_dir = s.dir.join("other-vm");
    std::fs::create_dir_all(&other_dir).unwrap();
    s.chain.provision(&other_dir.join("state")).unwrap();
    let other = start_daemon(&s.chain, &other_dir);
    let mut other_client = VtpmClient::connect(&other.socket, ClientOptions::default()).unwrap();
    other_client.transact(&c::startup(c::TPM_SU_CLEAR)).unwrap();
    let mut bundle = s.collect(&mut client, VAIK);
    let nonce = hex::decode(bundle["nonce"].as_str().unwrap()).unwrap();
    let relayed = {
        let mut t = |cmd: &[u8]| other_client.transact(cmd).unwrap();
        evidence::deep_quote(&mut t, &nonce)
    };
    assert_eq!(tpm_proto::response_code(&relayed), Ok(0));
    set_bytes(&mut bundle, &["deep_quote"], &relayed);
    assert_refused_by(&s.verify(&bundle, &open), &[names::DEEP_QUOTE_BINDING]);
    drop(other_client);
    drop(other);

    // --- tampering: each byte flips the check that covers it ---
    let genuine = s.collect(&mut client, VAIK);
    let mut t = genuine.clone();
    let mut attest = get_bytes(&t, &["vtpm_quote", "attest"]);
    let last = attest.len() - 1;
    attest[last] ^= 1;
    set_bytes(&mut t, &["vtpm_quote", "attest"], &attest);
    let r = s.verify(&t, &open);
    assert!(
        r.failed().contains(&names::VTPM_QUOTE_SIGNATURE),
        "{}",
        lines(&r)
    );
    let mut t = s.collect(&mut client, VAIK);
    let mut values = get_bytes(&t, &["vtpm_quote", "pcr_values"]);
    values[0] ^= 1;
    set_bytes(&mut t, &["vtpm_quote", "pcr_values"], &values);
    assert_refused_by(
        &s.verify(&t, &open),
        &[
            names::VTPM_QUOTE_PCRS,
            names::MIRROR,
            names::POLICY_VTPM_PCRS,
        ],
    );
    let mut t = s.collect(&mut client, VAIK);
    let mut dq = get_bytes(&t, &["deep_quote"]);
    let at = dq.len() / 3;
    dq[at] ^= 0x40;
    set_bytes(&mut t, &["deep_quote"], &dq);
    assert!(!s.verify(&t, &open).accepted());
    // A nonce this verifier never issued; garbage.
    let mut t = s.collect(&mut client, VAIK);
    t["nonce"] = Value::String(hex::encode([7u8; 32]));
    assert!(s.verify(&t, &open).failed().contains(&names::NONCE));
    let garbage = vtpm_verify::verify(b"{}", &s.trust, &s.status_api(), &open, &s.nonces, now());
    assert_eq!(garbage.failed(), names::ALL);
    // A vAIK certificate the CA did not issue (the coprocessor's, from the chain).
    let mut t = s.collect(&mut client, VAIK);
    let coprocessor = get_bytes(&t["vek_chain"][0], &[]);
    set_bytes(&mut t, &["vaik_certificate"], &coprocessor);
    let r = s.verify(&t, &open);
    assert!(
        r.failed().contains(&names::VAIK_CERTIFICATE),
        "{}",
        lines(&r)
    );

    // --- offline revocation (the CA's CRL) accepts genuine evidence too ---
    let ca_pem = std::fs::read(&s.chain.ca.ca_cert).unwrap();
    let crl = vtpm_ca::Client::new(&s.chain.ca.url, &ca_pem, None)
        .unwrap()
        .crl()
        .unwrap();
    let crl = Revocation::crl(&crl, &s.trust.ca_root).unwrap();
    assert_accepted(&s.verify_with(&s.collect(&mut client, VAIK), &open, &crl));

    // --- a host PCR extended after the vTPM started: the mirror no longer matches ---
    HostTpm::connect(&s.tcti)
        .unwrap()
        .pcr_extend_sha256(5, sha256(b"host changed"))
        .unwrap();
    let changed = s.collect(&mut client, VAIK);
    assert_refused_by(&s.verify(&changed, &open), &[names::MIRROR]);
    // A guest reboot (device reset, Startup) mirrors the new value: accepted again.
    client.reset_device().unwrap();
    client.transact(&c::startup(c::TPM_SU_CLEAR)).unwrap();
    assert_accepted(&s.verify(&s.collect(&mut client, VAIK), &open));

    // --- the host AIK certificate revoked at the CA ---
    let host_aik = s.chain.host_pem("host-aik.pem").unwrap();
    s.chain
        .ca
        .command(&[
            "revoke",
            "--cert",
            &s.chain.host_dir.join("host-aik.pem").display().to_string(),
        ])
        .unwrap_or_else(|e| panic!("revoke {host_aik}: {e}"));
    let r = s.verify(&s.collect(&mut client, VAIK), &open);
    assert_refused_by(&r, &[names::REVOCATION]);
    assert!(
        r.get(names::REVOCATION)
            .unwrap()
            .detail
            .contains("host AIK"),
        "{}",
        lines(&r)
    );
    // The CRL says so too, and lists a revoked coprocessor certificate (which the host
    // AIK signed, not the CA) with its issuer (ADR 0012).
    let offline = |s: &Setup| {
        let crl = vtpm_ca::Client::new(&s.chain.ca.url, &ca_pem, None)
            .unwrap()
            .crl()
            .unwrap();
        Revocation::crl(&crl, &s.trust.ca_root).unwrap()
    };
    let r = s.verify_with(&s.collect(&mut client, VAIK), &open, &offline(&s));
    assert_refused_by(&r, &[names::REVOCATION]);
    let coprocessor = s.chain.host_pem("coprocessor.pem").unwrap();
    let coprocessor = openssl::x509::X509::from_pem(coprocessor.as_bytes()).unwrap();
    let revocation = offline(&s);
    assert!(revocation
        .check(&[("coprocessor", &coprocessor, Known::Required)])
        .is_ok());
    s.chain
        .ca
        .command(&[
            "revoke",
            "--cert",
            &s.chain
                .host_dir
                .join("coprocessor.pem")
                .display()
                .to_string(),
        ])
        .unwrap();
    let err = offline(&s)
        .check(&[("coprocessor", &coprocessor, Known::Required)])
        .unwrap_err();
    assert!(err.contains("coprocessor"), "{err}");
}

#[test]
fn readme_options_match_the_command_line() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_vtpm-verify"));
    let commands: &[&[&str]] = &[&[], &["nonce"], &["check"], &["golden"]];
    testbed::readme_drift(&readme, &[(bin, commands)]).unwrap();
}
