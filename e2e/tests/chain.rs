//! The certificate chain of ADR 0008 seen from a real guest: the host TPM (swtpm with an EK
//! certificate from swtpm_localca) enrolled with the local CA, the coprocessor certified by
//! the host TPM, a vTPM provisioned with its vEK certificates; in the guest, unmodified
//! tpm2-tools read the vEK certificate and its chain from the TPM, `openssl verify` checks
//! the chain to the CA root (in the guest and again on the host), and the guest enrols a vAIK
//! by credential activation. The guest has no network, so the test carries the CA's
//! messages over the serial console.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use base64::Engine;
use openssl::x509::X509;
use testbed::{start_daemon, ChainSetup, Env, TpmFrontend, Vm};
use vtpm_ca::api::{EnrollFinishRequest, EnrollStartRequest, Kind};
use vtpm_ca::Client;

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

fn host_openssl_verify(dir: &Path, ca: &Path, untrusted: &[&[u8]], leaf: &[u8]) -> String {
    let mut cmd = Command::new("openssl");
    cmd.arg("verify").arg("-CAfile").arg(ca);
    for (i, der) in untrusted.iter().enumerate() {
        let p = dir.join(format!("chain{i}.pem"));
        std::fs::write(&p, X509::from_der(der).unwrap().to_pem().unwrap()).unwrap();
        cmd.arg("-untrusted").arg(p);
    }
    let leaf_path = dir.join("vek.pem");
    std::fs::write(&leaf_path, X509::from_der(leaf).unwrap().to_pem().unwrap()).unwrap();
    let out = cmd.arg(&leaf_path).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// In the guest's /tmp: certificate `cert` (PEM) holds the public key of the TPM object
/// whose context is `{name}.ctx`.
fn assert_certifies(vm: &mut Vm, cert: &str, name: &str, what: &str) {
    let from_tpm = vm.must(&format!(
        "tpm2_readpublic -c {name}.ctx -f pem -o {name}pub.pem >/dev/null && cat {name}pub.pem"
    ));
    let from_cert = vm.must(&format!("openssl x509 -in {cert} -noout -pubkey"));
    assert_eq!(from_tpm.trim(), from_cert.trim(), "{what}");
}

#[test]
fn guest_reads_its_vek_chain_verifies_it_and_enrols_a_vaik() {
    let env = Env::load();
    let tmp = tempfile::tempdir().unwrap();
    let bin_dir = env.daemon.parent().unwrap().to_owned();
    let chain = ChainSetup::start(&bin_dir, tmp.path(), "e2e-host").expect("host enrolled");
    let vm_dir = tmp.path().join("vm");
    chain.provision(&vm_dir.join("state")).expect("provision");
    let tcti = chain.host_tpm.tcti();
    let daemon = start_daemon(&env, &vm_dir, &["--host-tpm", &tcti]);
    let ca_pem = std::fs::read(&chain.ca.ca_cert).unwrap();

    let mut vm = Vm::boot(&env, &TpmFrontend::VhostUser(daemon.socket.clone()));
    // The vEK certificates as every attestation client reads them, and the chain range.
    vm.verify_vek_chain(&ca_pem);
    let subject = vm.must("openssl x509 -in chain1.pem -noout -subject");
    assert!(
        subject.contains("e2e-host"),
        "chain1 is the host AIK: {subject}"
    );

    // Copied out, the same chain verifies on the host with the CA root as the only anchor.
    let rsa = vm.read_file("/tmp/rsa.der");
    let chain0 = vm.read_file("/tmp/chain0.der");
    let chain1 = vm.read_file("/tmp/chain1.der");
    let out = host_openssl_verify(tmp.path(), &chain.ca.ca_cert, &[&chain0, &chain1], &rsa);
    assert!(
        out.trim_end().ends_with(": OK"),
        "host openssl verify: {out}"
    );
    // The vEK in the certificate is the EK the guest's tools derive.
    vm.must("tpm2_createek -c ek.ctx -G rsa -u ek.pub");
    assert_certifies(&mut vm, "rsa.pem", "ek", "vEK certificate key vs TPM EK");

    // vAIK: created in the guest, enrolled by credential activation against the vEK chain.
    vm.must("tpm2_createak -C ek.ctx -c ak.ctx -G ecc -g sha256 -s ecdsa -u ak.pub -n ak.name");
    let ak_pub = vm.read_file("/tmp/ak.pub");
    let ca = Client::new(&chain.ca.url, &ca_pem, None).unwrap();
    let request = EnrollStartRequest {
        kind: Kind::Vtpm,
        subject: "e2e-vm".into(),
        ek_cert_chain: ["rsa.der", "chain0.der", "chain1.der"]
            .iter()
            .map(|f| {
                let der = vm.read_file(&format!("/tmp/{f}"));
                String::from_utf8(X509::from_der(&der).unwrap().to_pem().unwrap()).unwrap()
            })
            .collect(),
        aik_public: b64(&ak_pub),
    };

    // A wrong answer to the challenge is refused and consumes the session.
    let start = ca.enroll_start(&request).expect("enroll/start");
    let err = ca
        .enroll_finish(&EnrollFinishRequest {
            session: start.session,
            secret: b64(&[0u8; 32]),
        })
        .unwrap_err();
    assert_eq!(err.code(), Some("activation_failed"), "{err}");

    let start = ca.enroll_start(&request).expect("enroll/start");
    let credential = vtpm_ca::tpm2_tools_credential_file(
        &unb64(&start.credential_blob),
        &unb64(&start.encrypted_secret),
    );
    vm.write_file("/tmp/cred", &credential);
    vm.must(
        "tpm2_startauthsession --policy-session -S s.ctx && tpm2_policysecret -S s.ctx -c e && \
         tpm2_activatecredential -c ak.ctx -C ek.ctx -i cred -o secret -P session:s.ctx && \
         tpm2_flushcontext s.ctx",
    );
    let secret = vm.read_file("/tmp/secret");
    let done = ca
        .enroll_finish(&EnrollFinishRequest {
            session: start.session,
            secret: b64(&secret),
        })
        .expect("enroll/finish with the activated secret");
    vm.write_file("/tmp/vaik.pem", done.certificate.as_bytes());
    let out = vm.must("openssl verify -CAfile ca.pem vaik.pem");
    assert!(out.contains("vaik.pem: OK"), "{out}");
    // It certifies the guest's AK, and expires: a verifier after notAfter refuses it.
    assert_certifies(
        &mut vm,
        "vaik.pem",
        "ak",
        "vAIK certificate key vs the guest's AK",
    );
    let after = done.not_after + 60;
    let (rc, out) = vm.run(&format!(
        "openssl verify -attime {after} -CAfile ca.pem vaik.pem"
    ));
    assert_ne!(rc, 0, "an expired vAIK certificate verified: {out}");
    assert!(out.contains("expired"), "{out}");
    vm.shutdown();
}
