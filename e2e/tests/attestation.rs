//! Deep attestation with a real guest (docs/adr/0011): swtpm as the host TPM with its PCRs
//! 0-7 extended with known values first, the host enrolled with the local CA, the vTPM
//! provisioned and its vAIK enrolled, the daemon mirroring PCRs 0-7 and answering the deep
//! quote. In the guest, unmodified tpm2-tools see the mirror and cannot change it, cannot
//! use the platform hierarchy, and `vtpm-evidence` collects evidence that `vtpm-verify` on
//! the host accepts; each refusal of the issue fails with its own named check; after a
//! daemon SIGKILL and restart while the guest runs, the mirrored PCRs hold again.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use guest_driver::{ClientOptions, VtpmClient};
use host_tpm::HostTpm;
use nix::sys::signal::Signal;
use openssl::sha::sha256;
use testbed::{pcr_values, start_daemon, ChainSetup, DaemonProcess, Env, TpmFrontend, Vm};

const MIRRORED: [u8; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
const VAIK: &str = "0x81008001";

/// The host: PCRs, and what the mirrored vPCRs must hold.
struct Host<'a> {
    chain: &'a ChainSetup,
}

impl Host<'_> {
    fn tpm(&self) -> HostTpm {
        HostTpm::connect(&self.chain.host_tpm.tcti()).unwrap()
    }

    fn mirror(&self) -> Vec<(u8, String)> {
        let values = self.tpm().read_pcrs_sha256(&MIRRORED).unwrap();
        MIRRORED
            .iter()
            .zip(values)
            .map(|(&p, v)| (p, hex::encode(sha256(&[[0u8; 32], v].concat()))))
            .collect()
    }
}

/// `vtpm-verify` on the host, with the nonce directory `state`.
struct Verifier {
    bin: PathBuf,
    state: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
}

impl Verifier {
    fn new(bin_dir: &Path, dir: &Path, chain: &ChainSetup) -> Verifier {
        let open = dir.join("open-policy.json");
        std::fs::write(&open, "{}").unwrap();
        Verifier {
            bin: bin_dir.join("vtpm-verify"),
            state: dir.join("verifier"),
            args: vec![
                "--ca-cert".into(),
                chain.ca.ca_cert.display().to_string(),
                "--ek-root".into(),
                chain.manufacturer.root.display().to_string(),
                "--ek-root".into(),
                chain.manufacturer.issuer.display().to_string(),
                "--ca".into(),
                chain.ca.url.clone(),
            ],
            dir: dir.to_owned(),
        }
    }

    fn run(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(&self.bin).args(args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    fn nonce(&self) -> String {
        let (code, out) = self.run(&["nonce", "--state", &self.state.display().to_string()]);
        assert_eq!(code, 0, "{out}");
        out.trim().to_owned()
    }

    /// `vtpm-verify check` of `bundle` (a file) with `policy` (`None`: accept any values).
    fn check(&self, bundle: &Path, policy: Option<&Path>) -> (i32, String) {
        let open = self.dir.join("open-policy.json");
        let state = self.state.display().to_string();
        let policy = policy.unwrap_or(&open).display().to_string();
        let bundle = bundle.display().to_string();
        let mut args = vec!["check", "--state", &state, "--policy", &policy];
        args.extend(self.args.iter().map(String::as_str));
        args.push(&bundle);
        self.run(&args)
    }
}

/// Has the guest collect a bundle for a fresh nonce with `ak`; returns its path on the host
/// and the nonce.
fn collect(vm: &mut Vm, verifier: &Verifier, ak: &str, name: &str) -> (PathBuf, String) {
    let nonce = verifier.nonce();
    vm.must(&format!(
        "vtpm-evidence {nonce} {ak} /tmp/vaik.pem > /tmp/{name}.json"
    ));
    let path = verifier.dir.join(format!("{name}.json"));
    std::fs::write(&path, vm.read_file(&format!("/tmp/{name}.json"))).unwrap();
    (path, nonce)
}

/// The checks a `vtpm-verify check` output says failed.
fn failed(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("FAIL "))
        .filter_map(|l| l.split(':').next())
        .map(str::to_owned)
        .collect()
}

#[track_caller]
fn assert_refused_by(verdict: (i32, String), check: &str) {
    let (code, out) = verdict;
    assert_eq!(code, 1, "{out}");
    assert_eq!(failed(&out), [check], "{out}");
}

fn start_mirroring(env: &Env, chain: &ChainSetup, dir: &Path) -> DaemonProcess {
    start_daemon(env, dir, &chain.mirror_args().args())
}

#[test]
fn a_guest_proves_its_host_down_to_the_hosts_boot() {
    let env = Env::load();
    let tmp = tempfile::tempdir().unwrap();
    let bin_dir = env.daemon.parent().unwrap().to_owned();
    let chain = ChainSetup::start(&bin_dir, &tmp.path().join("host"), "attest-host").unwrap();
    let host = Host { chain: &chain };
    {
        let mut tpm = host.tpm();
        for pcr in MIRRORED {
            tpm.pcr_extend_sha256(pcr, sha256(format!("host boot stage {pcr}").as_bytes()))
                .unwrap();
        }
    }
    let vm_dir = tmp.path().join("vm");
    std::fs::create_dir_all(&vm_dir).unwrap();
    chain.provision(&vm_dir.join("state")).unwrap();
    let vaik_pem = chain
        .enroll_vaik(&vm_dir.join("state"), "attest-vm")
        .unwrap();
    let mut daemon = start_mirroring(&env, &chain, &vm_dir);
    let verifier = Verifier::new(&bin_dir, tmp.path(), &chain);

    let mut vm = Vm::boot(&env, &TpmFrontend::VhostUser(daemon.socket.clone()));
    vm.must("cd /tmp");

    // --- the mirror, as tpm2-tools see it, and the guard ---
    let pcrread = "tpm2_pcrread sha256:0,1,2,3,4,5,6,7";
    let mirror = host.mirror();
    assert_eq!(
        pcr_values(&vm.must(pcrread)),
        mirror,
        "vPCR[i] = SHA-256(0^32 || hostPCR[i])"
    );
    let (rc, out) = vm.run(&format!(
        "tpm2_pcrextend 0:sha256={}",
        hex::encode([0xab; 32])
    ));
    assert_ne!(rc, 0, "tpm2_pcrextend on a mirrored PCR succeeded: {out}");
    let (rc, out) = vm.run("tpm2_pcrreset 7");
    assert_ne!(rc, 0, "tpm2_pcrreset on a mirrored PCR succeeded: {out}");
    assert_eq!(pcr_values(&vm.must(pcrread)), mirror, "unchanged");
    vm.must(&format!(
        "tpm2_pcrextend 16:sha256={}",
        hex::encode([0xab; 32])
    ));
    assert_eq!(
        pcr_values(&vm.must("tpm2_pcrread sha256:16")),
        [(16, hex::encode(sha256(&[[0u8; 32], [0xab; 32]].concat())))],
        "PCR 16 still extends"
    );

    // --- the platform hierarchy is closed; the certificates still verify ---
    vm.must("tpm2_nvread 0x01c00002 -C o -o vek-before.der");
    vm.must("head -c 16 /dev/urandom > junk");
    for (what, cmd) in [
        ("nvundefine", "tpm2_nvundefine 0x01c00002 -C p"),
        ("nvwrite", "tpm2_nvwrite 0x01c00002 -C p -i junk"),
        (
            "hierarchycontrol",
            "tpm2_hierarchycontrol -C p shEnable clear",
        ),
        (
            "hierarchycontrol",
            "tpm2_hierarchycontrol -C p ehEnable clear",
        ),
        ("changeauth", "tpm2_changeauth -c p newpass"),
    ] {
        let (rc, out) = vm.run(cmd);
        assert_ne!(rc, 0, "{what} with -C p succeeded: {out}");
    }
    vm.write_file("/tmp/ca.pem", &std::fs::read(&chain.ca.ca_cert).unwrap());
    vm.must("tpm2_nvread 0x01c00002 -C o -o vek.der && cmp vek.der vek-before.der");
    vm.must(
        "tpm2_nvread 0x01c00100 -C o -o chain0.der && tpm2_nvread 0x01c00101 -C o -o chain1.der",
    );
    for f in ["vek", "chain0", "chain1"] {
        vm.must(&format!(
            "openssl x509 -inform DER -in {f}.der -out {f}.pem"
        ));
    }
    let out = vm
        .must("openssl verify -CAfile ca.pem -untrusted chain0.pem -untrusted chain1.pem vek.pem");
    assert!(out.contains("vek.pem: OK"), "{out}");

    // --- evidence for a host-chosen nonce: accepted ---
    vm.write_file("/tmp/vaik.pem", &std::fs::read(&vaik_pem).unwrap());
    let (bundle, _) = collect(&mut vm, &verifier, VAIK, "ev1");
    let (code, out) = verifier.check(&bundle, None);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ACCEPTED: all 17 checks passed"), "{out}");

    // --- refused: a replayed nonce ---
    assert_refused_by(verifier.check(&bundle, None), "nonce");

    // --- refused: a golden value that does not match ---
    let (code, golden) = verifier.run(&["golden", &bundle.display().to_string()]);
    assert_eq!(code, 0, "{golden}");
    let golden_file = tmp.path().join("golden.json");
    std::fs::write(&golden_file, &golden).unwrap();
    let (bundle, _) = collect(&mut vm, &verifier, VAIK, "ev2");
    let (code, out) = verifier.check(&bundle, Some(&golden_file));
    assert_eq!(code, 0, "the bundle's own values are golden: {out}");
    let wrong = golden.replacen(
        &hex::encode(host.tpm().read_pcrs_sha256(&[0]).unwrap()[0]),
        &"00".repeat(32),
        1,
    );
    assert_ne!(wrong, golden);
    let wrong_file = tmp.path().join("wrong-golden.json");
    std::fs::write(&wrong_file, wrong).unwrap();
    let (bundle, _) = collect(&mut vm, &verifier, VAIK, "ev3");
    assert_refused_by(
        verifier.check(&bundle, Some(&wrong_file)),
        "policy_host_pcrs",
    );

    // --- refused: a vTPM quote signed by a key without a vAIK certificate ---
    vm.must("tpm2_createek -Q -c ek.ctx -G rsa");
    vm.must("tpm2_createak -Q -C ek.ctx -c rogue.ctx -G ecc -g sha256 -s ecdsa");
    let (bundle, _) = collect(&mut vm, &verifier, "rogue.ctx", "ev4");
    assert_refused_by(verifier.check(&bundle, None), "vtpm_quote_signature");

    // --- refused: a host quote taken for another vTPM (relay) ---
    let other_dir = tmp.path().join("other-vm");
    std::fs::create_dir_all(&other_dir).unwrap();
    chain.provision(&other_dir.join("state")).unwrap();
    let other = start_mirroring(&env, &chain, &other_dir);
    let (bundle, nonce) = collect(&mut vm, &verifier, VAIK, "ev5");
    let relayed = {
        let mut client = VtpmClient::connect(&other.socket, ClientOptions::default()).unwrap();
        client
            .transact(&tpm_proto::commands::startup(
                tpm_proto::commands::TPM_SU_CLEAR,
            ))
            .unwrap();
        let mut t = |cmd: &[u8]| client.transact(cmd).unwrap();
        testbed::evidence::deep_quote(&mut t, &hex::decode(&nonce).unwrap())
    };
    drop(other);
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    testbed::evidence::set_bytes(&mut json, &["deep_quote"], &relayed);
    std::fs::write(&bundle, json.to_string()).unwrap();
    assert_refused_by(verifier.check(&bundle, None), "deep_quote_binding");

    // --- refused: a host PCR extended after the vTPM started ---
    host.tpm()
        .pcr_extend_sha256(5, sha256(b"the host changed under the running VM"))
        .unwrap();
    let (bundle, _) = collect(&mut vm, &verifier, VAIK, "ev6");
    assert_refused_by(verifier.check(&bundle, None), "mirror");

    // --- the daemon killed and restarted while the guest runs: the mirror holds again ---
    assert!(!daemon.signal(Signal::SIGKILL).unwrap().success());
    daemon.restart().unwrap();
    let (rc, out) = vm.run_timeout(pcrread, std::time::Duration::from_secs(120));
    assert_eq!(rc, 0, "{out}");
    assert_eq!(
        pcr_values(&out),
        host.mirror(),
        "the mirror of the host's current PCRs, after the restart"
    );
    let (rc, out) = vm.run(&format!("tpm2_pcrextend 3:sha256={}", hex::encode([1; 32])));
    assert_ne!(rc, 0, "the guard holds after the restart: {out}");
    let (rc, out) = vm.run("tpm2_nvundefine 0x01c00002 -C p");
    assert_ne!(rc, 0, "the platform stays closed after the restart: {out}");
    let (bundle, _) = collect(&mut vm, &verifier, VAIK, "ev7");
    let (code, out) = verifier.check(&bundle, None);
    assert_eq!(code, 0, "after the restart: {out}");

    // --- refused: the host AIK certificate revoked at the CA ---
    chain
        .ca
        .command(&[
            "revoke",
            "--cert",
            &chain.host_dir.join("host-aik.pem").display().to_string(),
            "--reason",
            "host compromised",
        ])
        .unwrap();
    let (bundle, _) = collect(&mut vm, &verifier, VAIK, "ev8");
    assert_refused_by(verifier.check(&bundle, None), "revocation");
    vm.shutdown();
}
