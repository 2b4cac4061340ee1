//! `vtpm-host enroll-vaik` with every real part: an swtpm as the host TPM (manufactured with
//! an EK certificate), the `vtpm-ca` service over HTTPS, `vtpm-host` for enrollment,
//! coprocessor certification, vEK provisioning and the vAIK, and the `vhost-vtpm` daemon
//! serving the instance afterwards, where the test uses the persistent vAIK like a guest
//! would and checks its certificate and signatures with the `openssl` command.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use guest_driver::{ClientOptions, VtpmClient};
use openssl::bn::BigNum;
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;
use openssl::x509::X509;
use testbed::{ChainSetup, DaemonProcess};
use tpm_proto::commands as c;
use tpm_proto::public::{alg, curve, PublicParams};
use vtpm_ca::aik::AikPublic;
use vtpm_ca::client::Client;

mod common;

use common::{bin, bin_dir};

const AIK_HANDLE: u32 = 0x8100_8001;

/// `vtpm-host --dir HOST_DIR --host-tpm TCTI enroll-vaik --state-dir STATE --ca ... EXTRA`.
fn enroll_vaik(s: &ChainSetup, state: &Path, extra: &[&str]) -> Result<String, String> {
    let state = state.display().to_string();
    let mut args = vec!["enroll-vaik", "--state-dir", state.as_str()];
    let ca_args = s.ca_args();
    args.extend(ca_args.iter().map(String::as_str));
    args.extend_from_slice(extra);
    s.host(&args)
}

fn openssl(args: &[&str], dir: &Path) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn cn(cert: &X509) -> String {
    cert.subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .unwrap()
        .data()
        .to_string()
        .unwrap()
}

fn connect(daemon: &DaemonProcess) -> VtpmClient {
    let mut client = VtpmClient::connect(&daemon.socket, ClientOptions::default()).unwrap();
    let rc = tpm_proto::response_code(&client.transact_tss(&c::startup(c::TPM_SU_CLEAR)).unwrap())
        .unwrap();
    // 0x100 (TPM_RC_INITIALIZE): the daemon resumed a TPM that was already started.
    assert!(rc == 0 || rc == 0x100, "Startup: {rc:#x}");
    client
}

/// What a guest does with the vAIK: ReadPublic at the handle (the key must be the
/// certificate's), then TPM2_Hash (for the ticket a restricted key needs) and TPM2_Sign;
/// the signature must verify with `openssl dgst` and the certificate's key.
fn guest_uses_the_vaik(client: &mut VtpmClient, cert_pem: &Path, work: &Path) {
    let resp = client.transact_tss(&c::read_public(AIK_HANDLE)).unwrap();
    let (public, _name) = c::parse_read_public(&resp).expect("ReadPublic of the vAIK");
    // Read as the CA reads the AIKs it certifies.
    let aik = AikPublic::from_tpmt(&public).unwrap();
    assert_eq!(aik.public.attributes, 0x0005_0072, "restricted signing key");
    assert!(aik.violations().is_empty(), "{:?}", aik.violations());
    assert!(
        matches!(
            aik.public.params,
            PublicParams::Ecc {
                curve: curve::NIST_P256,
                ..
            }
        ),
        "the vAIK is not an ECC P-256 key: {:?}",
        aik.public
    );
    let cert = X509::from_pem(&std::fs::read(cert_pem).unwrap()).unwrap();
    assert!(
        cert.public_key().unwrap().public_eq(aik.public_key()),
        "the persistent vAIK is the certificate's key"
    );

    let data = b"quote me: the vAIK signs what the guest hashes in its TPM".to_vec();
    let resp = client
        .transact_tss(&c::hash(&data, alg::SHA256, c::TPM_RH_OWNER))
        .unwrap();
    let (digest, ticket) = c::parse_hash(&resp).expect("Hash");
    let resp = client
        .transact_tss(&c::sign_ecdsa_sha256_with_ticket(
            AIK_HANDLE, &digest, &ticket,
        ))
        .unwrap();
    let (r, s) = c::parse_sign_ecdsa(&resp).expect("Sign with the vAIK");
    let sig = EcdsaSig::from_private_components(
        BigNum::from_slice(&r).unwrap(),
        BigNum::from_slice(&s).unwrap(),
    )
    .unwrap();
    std::fs::create_dir_all(work).unwrap();
    std::fs::write(work.join("sig.der"), sig.to_der().unwrap()).unwrap();
    std::fs::write(work.join("data"), &data).unwrap();
    std::fs::write(work.join("other"), b"something else").unwrap();
    let cert_pem = cert_pem.to_str().unwrap();
    openssl(
        &[
            "x509", "-in", cert_pem, "-noout", "-pubkey", "-out", "pub.pem",
        ],
        work,
    );
    let verify = |file: &str| {
        let dgst = [
            "dgst",
            "-sha256",
            "-verify",
            "pub.pem",
            "-signature",
            "sig.der",
            file,
        ];
        openssl(&dgst, work)
    };
    let out = verify("data");
    assert!(out.contains("Verified OK"), "openssl dgst -verify: {out}");
    let out = verify("other");
    assert!(!out.contains("Verified OK"), "{out}");
}

/// In a new temporary directory: the chain for `host_id`, and the directory of instance `vm`
/// with the path of its (not yet provisioned) state.
fn set_up(host_id: &str, vm: &str) -> (tempfile::TempDir, ChainSetup, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let s = ChainSetup::start(bin_dir(), tmp.path(), host_id).unwrap();
    let vm = tmp.path().join(vm);
    let state = vm.join("state");
    (tmp, s, vm, state)
}

/// `cert` verifies against the CA root with `openssl verify`.
fn assert_issued_by_the_ca(s: &ChainSetup, cert: &Path, dir: &Path) {
    let ca_cert = s.ca.ca_cert.to_str().unwrap();
    let out = openssl(&["verify", "-CAfile", ca_cert, cert.to_str().unwrap()], dir);
    assert!(out.trim_end().ends_with(": OK"), "openssl verify: {out}");
}

/// The `vhost-vtpm` daemon serving the instance in `vm`, with the chain's host TPM.
fn start_daemon(s: &ChainSetup, vm: &Path) -> DaemonProcess {
    let tcti = s.host_tpm.tcti();
    DaemonProcess::start(&bin("vhost-vtpm"), vm, &["--host-tpm", &tcti]).unwrap()
}

/// Stops the daemon with SIGTERM (it saves the TPM's volatile state, as on a host shutdown).
fn stop(daemon: &mut DaemonProcess) {
    let pid = daemon.pid().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    daemon.wait_exit().unwrap();
}

#[test]
fn vaik_enrolled_from_the_host_verifies_signs_in_the_guest_and_is_reissued() {
    let (tmp, s, vm, state) = set_up("host-1", "vm1");
    s.provision(&state).unwrap();

    // 1. The vAIK, enrolled with the CA from the host while the instance is stopped.
    let out = enroll_vaik(&s, &state, &[]).unwrap();
    let vaik = state.join("vaik.pem");
    assert!(
        out.contains(&vaik.display().to_string()) && out.contains("0x81008001"),
        "{out}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&vaik).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_issued_by_the_ca(&s, &vaik, tmp.path());
    let first = X509::from_pem(&std::fs::read(&vaik).unwrap()).unwrap();
    let instance = vtpm_state::EncryptedStore::inspect(&state)
        .unwrap()
        .unwrap()
        .instance;
    assert_eq!(
        cn(&first),
        instance.to_string(),
        "CN defaults to the instance id"
    );

    // 2. The guest finds the key at the handle and signs with it.
    let mut daemon = start_daemon(&s, &vm);
    let mut client = connect(&daemon);
    guest_uses_the_vaik(&mut client, &vaik, &tmp.path().join("sign1"));
    drop(client);
    stop(&mut daemon);

    // 3. Re-issuing is the same command (here with a subject and the handle without 0x):
    //    a new certificate, and the key at the same handle still works. The TPM the daemon
    //    saved running is left running.
    let out = enroll_vaik(
        &s,
        &state,
        &["--subject", "vm1", "--aik-handle", "81008001"],
    )
    .unwrap();
    assert!(out.contains("aik/vtpm/vm1"), "{out}");
    let second = X509::from_pem(&std::fs::read(&vaik).unwrap()).unwrap();
    assert_ne!(
        first.serial_number().to_bn().unwrap(),
        second.serial_number().to_bn().unwrap(),
        "a new certificate"
    );
    assert_eq!(cn(&second), "vm1");
    assert_issued_by_the_ca(&s, &vaik, tmp.path());
    daemon.restart().unwrap();
    let mut client = connect(&daemon);
    guest_uses_the_vaik(&mut client, &vaik, &tmp.path().join("sign2"));

    // 4. And once more with the TPM powered off (a killed daemon saves nothing).
    drop(client);
    drop(daemon);
    let out = enroll_vaik(&s, &state, &[]).unwrap();
    assert!(out.contains("0x81008001"), "{out}");
    let daemon = start_daemon(&s, &vm);
    let mut client = connect(&daemon);
    guest_uses_the_vaik(&mut client, &vaik, &tmp.path().join("sign3"));
}

#[test]
fn enroll_vaik_refuses_a_running_instance_a_foreign_handle_and_a_revoked_coprocessor() {
    let (tmp, s, vm, state) = set_up("host-2", "vm2");
    let vaik = state.join("vaik.pem");

    // Nothing to enrol in a directory without an instance (and none is created).
    let empty = tmp.path().join("empty");
    let err = enroll_vaik(&s, &empty, &[]).unwrap_err();
    assert!(err.contains("vtpm-host provision"), "{err}");
    assert!(!empty.join("state.vtpm").exists());

    s.provision(&state).unwrap();
    // A handle outside the owner's persistent range is refused before anything runs.
    let err = enroll_vaik(&s, &state, &["--aik-handle", "0x01c00002"]).unwrap_err();
    assert!(err.contains("persistent handle"), "{err}");

    // While the daemon runs on the instance: the directory lock, clearly.
    let mut daemon = start_daemon(&s, &vm);
    let err = enroll_vaik(&s, &state, &[]).unwrap_err();
    assert!(
        err.contains("in use by another process") && err.contains("daemon"),
        "{err}"
    );
    // The guest keeps one of its own keys (not an attestation key) at 0x81010003.
    let mut client = connect(&daemon);
    let resp = client
        .transact_tss(&c::create_primary_ecc_signing())
        .unwrap();
    let key = c::parse_create_primary_ecc(&resp).unwrap().handle;
    let resp = client
        .transact_tss(&c::evict_control(key, 0x8101_0003))
        .unwrap();
    assert_eq!(tpm_proto::response_code(&resp).unwrap(), 0);
    // Its transient copy stays loaded in the state the daemon saves (a paused guest's): one
    // of libtpms' three object slots is taken while enroll-vaik runs.
    drop(client);
    stop(&mut daemon);
    let err = enroll_vaik(&s, &state, &["--aik-handle", "0x81010003"]).unwrap_err();
    assert!(
        err.contains("0x81010003") && err.contains("not an attestation key"),
        "{err}"
    );
    assert!(!vaik.exists());

    // The coprocessor revoked: the CA refuses the vEK chain, nothing is written.
    let ca_pem = std::fs::read(&s.ca.ca_cert).unwrap();
    let admin = Client::new(&s.ca.url, &ca_pem, Some(s.ca.admin_token().unwrap())).unwrap();
    admin
        .revoke_cert(
            &s.host_pem("coprocessor.pem").unwrap(),
            Some("key compromise"),
        )
        .unwrap();
    let err = enroll_vaik(&s, &state, &[]).unwrap_err();
    assert!(err.contains("revoked"), "{err}");
    assert!(!vaik.exists());

    // The guest's key is untouched and no vAIK was left behind.
    daemon.restart().unwrap();
    let mut client = connect(&daemon);
    let resp = client.transact_tss(&c::read_public(0x8101_0003)).unwrap();
    c::parse_read_public(&resp).expect("the guest's key is still there");
    let resp = client.transact_tss(&c::read_public(AIK_HANDLE)).unwrap();
    assert!(c::parse_read_public(&resp).is_err(), "no vAIK persisted");
}
