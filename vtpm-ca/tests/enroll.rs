//! Enrollment against real TPMs: swtpm (manufactured by swtpm_setup with an EK certificate
//! from a private swtpm_localca) driven by tpm2-tools, the real `vtpm-ca` binary over HTTPS.
//! The CA's software MakeCredential must be what `tpm2_activatecredential` accepts.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::{assert_api_error, openssl_verify, vtpm_ca_ok, CaServer, Swtpm};
use openssl::hash::MessageDigest;
use openssl::x509::X509;
use vtpm_ca::api::{EnrollFinishRequest, EnrollFinishResponse, EnrollStartRequest, Kind, Status};
use vtpm_ca::{tpm2_tools_credential_file, Client};

fn pem_of(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// A host TPM in `name` below the CA's temporary directory, with its EK and AK made, and
/// the CA trusting its EK root.
fn host_tpm(server: &CaServer, name: &str) -> Swtpm {
    let tpm = Swtpm::start(&server.tmp.path().join(name));
    tpm.create_ek_and_ak();
    vtpm_ca_ok(
        &server.store,
        &["add-ek-root", tpm.ek_root().to_str().unwrap()],
    );
    tpm
}

/// A CA issuing certificates valid for `validity_secs`, one host TPM it trusts the EK root
/// of, and a client without a token.
fn ca_with_host(validity_secs: u64) -> (CaServer, Swtpm, Client) {
    let server = CaServer::start(validity_secs, &[]);
    let tpm = host_tpm(&server, "host");
    let client = server.client(None);
    (server, tpm, client)
}

fn host_start_request(tpm: &Swtpm, subject: &str) -> EnrollStartRequest {
    EnrollStartRequest {
        kind: Kind::Host,
        subject: subject.into(),
        ek_cert_chain: vec![tpm.ek_cert_pem(), pem_of(&tpm.ek_issuer())],
        aik_public: B64.encode(tpm.read("ak.pub")),
    }
}

/// The whole two-step protocol with `tpm` doing ActivateCredential.
fn enroll(client: &Client, tpm: &Swtpm, req: &EnrollStartRequest) -> EnrollFinishResponse {
    let start = client.enroll_start(req).unwrap();
    // The CA computed the same name as tpm2_createak.
    let name: String = tpm
        .read("ak.name")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(start.aik_name, name);
    let file = tpm2_tools_credential_file(
        &B64.decode(&start.credential_blob).unwrap(),
        &B64.decode(&start.encrypted_secret).unwrap(),
    );
    let secret = tpm.activate(&file);
    client
        .enroll_finish(&EnrollFinishRequest {
            session: start.session,
            secret: B64.encode(secret),
        })
        .unwrap()
}

/// Enrols `tpm` as a new host `subject`, with the enrolment token an administrator issued
/// for it.
fn enroll_host(server: &CaServer, tpm: &Swtpm, subject: &str) -> EnrollFinishResponse {
    enroll(
        &server.host_client(subject),
        tpm,
        &host_start_request(tpm, subject),
    )
}

/// The credential module alone against a real TPM: MakeCredential from the EK certificate
/// (read from NV) and the name tpm2_createak printed; tpm2_activatecredential recovers it.
#[test]
fn software_make_credential_activates_in_swtpm() {
    let tmp = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start(&tmp.path().join("tpm"));
    tpm.create_ek_and_ak();
    let ek = X509::from_pem(tpm.ek_cert_pem().as_bytes()).unwrap();
    let secret = *b"thirty-two bytes of credential!!";
    let made = vtpm_ca::credential::make_credential(&ek, &tpm.read("ak.name"), &secret).unwrap();
    let file = tpm2_tools_credential_file(&made.credential_blob, &made.encrypted_secret);
    // The same layout as tpm2_makecredential's own output for that EK and name: header
    // (magic, version) and the sizes of the two TPM2Bs.
    std::fs::write(
        tpm.path("ek.pub.pem"),
        ek.public_key().unwrap().public_key_to_pem().unwrap(),
    )
    .unwrap();
    std::fs::write(tpm.path("secret.bin"), secret).unwrap();
    let name_hex = hex::encode(tpm.read("ak.name"));
    let out = std::process::Command::new("tpm2_makecredential")
        .current_dir(&tpm.dir)
        .args([
            "--tcti",
            "none",
            "-G",
            "rsa",
            "-e",
            "ek.pub.pem",
            "-s",
            "secret.bin",
        ])
        .args(["-n", &name_hex, "-o", "tools.cred"])
        .output()
        .expect("tpm2_makecredential (scripts/setup.sh installs tpm2-tools)");
    assert!(out.status.success(), "{out:?}");
    let tools = tpm.read("tools.cred");
    assert_eq!(file[..8], tools[..8], "header");
    let (blob, enc) = vtpm_ca::credential::parse_tpm2_tools_credential_file(&tools).unwrap();
    assert_eq!(
        (made.credential_blob.len(), made.encrypted_secret.len()),
        (blob.len(), enc.len())
    );
    assert_eq!(file.len(), tools.len());
    assert_eq!(tpm.activate(&file), secret);
    // And the TPM accepts tpm2-tools' file as well: both protect the secret for that AK.
    assert_eq!(tpm.activate(&tools), secret);
}

#[test]
fn host_enrollment_with_swtpm_then_revocation_crl_and_status() {
    let (server, tpm, _) = ca_with_host(3600);
    let req = host_start_request(&tpm, "host-1");
    let out = enroll(&server.host_client("host-1"), &tpm, &req);

    assert_eq!(out.name, "aik/host/host-1");
    let cert = X509::from_pem(out.certificate.as_bytes()).unwrap();
    openssl_verify(&server.root(), &[], &cert).unwrap();
    // The certificate's key is the TPM's AK.
    assert!(cert.public_key().unwrap().public_eq(&tpm.public_key("ak")));
    // It binds the host EK certificate.
    let ek = X509::from_pem(req.ek_cert_chain[0].as_bytes()).unwrap();
    assert_eq!(
        vtpm_ca::issue::host_ek_cert_hash(&cert).unwrap(),
        ek.digest(MessageDigest::sha256()).unwrap().to_vec()
    );
    let text = String::from_utf8(cert.to_text().unwrap()).unwrap();
    assert!(text.contains("CA:TRUE, pathlen:1"), "{text}");
    assert!(text.contains("2.23.133.8.3"), "{text}");
    assert!(
        text.contains("CN=host-1") || text.contains("CN = host-1"),
        "{text}"
    );

    // Stored under its name; readable by the admin.
    let admin = server.admin();
    let stored = X509::from_pem(admin.get_cert("aik/host/host-1").unwrap().as_bytes()).unwrap();
    assert_eq!(stored.to_der().unwrap(), cert.to_der().unwrap());
    assert_eq!(admin.status(&out.fingerprint).unwrap().status, Status::Good);

    // Revoke it: the CRL lists the serial and parses with the openssl CLI.
    admin
        .revoke_serial(&out.serial, Some("key compromise"))
        .unwrap();
    let text = testbed::openssl::crl_text(&admin.crl().unwrap()).unwrap();
    assert!(
        text.contains(&format!("Serial Number: {}", out.serial)),
        "{text}"
    );
    let st = admin.status(&out.fingerprint).unwrap();
    assert_eq!(st.status, Status::Revoked);
    assert_eq!(st.serial.as_deref(), Some(out.serial.as_str()));
}

/// A second TPM (another EK, under another trusted root) asking for a subject that the
/// first one enrolled is refused before any credential is made, and the first one's
/// certificate stays; the first one re-enrolls (renewal); after `vtpm-ca release` the
/// second one may take the subject.
#[test]
fn another_ek_cannot_take_over_an_enrolled_subject() {
    let server = CaServer::start(3600, &[]);
    let first = host_tpm(&server, "first");
    let second = host_tpm(&server, "second");
    let client = server.client(None);
    let admin = server.admin();
    let out = enroll_host(&server, &first, "host-1");
    let stored = admin.get_cert("aik/host/host-1").unwrap();
    assert_eq!(
        X509::from_pem(stored.as_bytes()).unwrap().to_der().unwrap(),
        X509::from_pem(out.certificate.as_bytes())
            .unwrap()
            .to_der()
            .unwrap()
    );

    // The second TPM's chain is valid, but host-1 belongs to the first EK.
    let taken = host_start_request(&second, "host-1");
    let e = client.enroll_start(&taken).unwrap_err();
    assert_api_error(&e, 403, "subject_taken");
    assert_eq!(admin.get_cert("aik/host/host-1").unwrap(), stored);
    // It may enroll under a name of its own.
    let other = enroll_host(&server, &second, "host-2");
    assert_eq!(other.name, "aik/host/host-2");

    // Renewal: the first TPM enrolls host-1 again with the same EK.
    let renewed = enroll(&client, &first, &host_start_request(&first, "host-1"));
    assert_ne!(renewed.serial, out.serial);
    assert_eq!(
        admin.get_cert("aik/host/host-1").unwrap(),
        renewed.certificate
    );

    // Released by the administrator, host-1 may be enrolled by the second TPM.
    let text = vtpm_ca_ok(
        &server.store,
        &["release", "--kind", "host", "--subject", "host-1"],
    );
    assert!(text.starts_with("released aik/host/host-1"), "{text}");
    let text = vtpm_ca_ok(
        &server.store,
        &["release", "--kind", "host", "--subject", "host-1"],
    );
    assert!(text.contains("not bound"), "{text}");
    let moved = enroll(&server.host_client("host-1"), &second, &taken);
    assert_eq!(
        admin.get_cert("aik/host/host-1").unwrap(),
        moved.certificate
    );
    // ... and now the first one is the stranger.
    let e = client
        .enroll_start(&host_start_request(&first, "host-1"))
        .unwrap_err();
    assert_eq!(e.code(), Some("subject_taken"), "{e}");
}

/// A host TPM with a valid EK chain enrolls a new subject only with an enrolment token the
/// administrator issued for that subject (or an admin's token), once; enrolling again with
/// the same EK (renewal) needs none, unless its certificate was revoked.
#[test]
fn a_new_host_subject_needs_an_enrolment_token() {
    let (server, tpm, client) = ca_with_host(3600);
    let admin = server.admin();
    let req = host_start_request(&tpm, "host-1");

    // No token: refused before any credential is made; nothing issued or bound.
    let e = client.enroll_start(&req).unwrap_err();
    assert_api_error(&e, 401, "enrollment_token_required");
    assert!(e.to_string().contains("vtpm-ca enroll-token"), "{e}");
    let e = admin.get_cert("aik/host/host-1").unwrap_err();
    assert_eq!(e.code(), Some("not_found"), "{e}");
    // A principal that is not an admin is no authority; an unknown token is refused.
    let writer = server.add_principal(&["--name", "w", "--write-prefix", "coprocessor/"]);
    let e = server.client(Some(&writer)).enroll_start(&req).unwrap_err();
    assert_api_error(&e, 401, "enrollment_token_required");
    let e = server
        .client(Some(&"0".repeat(64)))
        .enroll_start(&req)
        .unwrap_err();
    assert_api_error(&e, 403, "enrollment_token_invalid");
    // A token for another subject, or an expired one.
    let e = server.host_client("host-2").enroll_start(&req).unwrap_err();
    assert_api_error(&e, 403, "enrollment_token_invalid");
    assert!(e.to_string().contains("host-2"), "{e}");
    let short = vtpm_ca_ok(
        &server.store,
        &[
            "enroll-token",
            "--subject",
            "host-1",
            "--validity-secs",
            "1",
        ],
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let e = server
        .client(Some(short.trim()))
        .enroll_start(&req)
        .unwrap_err();
    assert_api_error(&e, 403, "enrollment_token_invalid");
    assert!(e.to_string().contains("expired"), "{e}");

    // The right token enrolls, once.
    let token = server.enroll_token("host-1");
    let with_token = server.client(Some(&token));
    let first = enroll(&with_token, &tpm, &req);
    let text = vtpm_ca_ok(&server.store, &["list"]);
    assert!(
        text.contains("aik/host/host-1\tused=") && text.contains(&first.serial),
        "{text}"
    );
    // The same TPM renews without one.
    let renewed = enroll(&client, &tpm, &req);
    assert_ne!(renewed.serial, first.serial);
    // Released, the subject needs a token again, and the used one does not do.
    vtpm_ca_ok(
        &server.store,
        &["release", "--kind", "host", "--subject", "host-1"],
    );
    let e = client.enroll_start(&req).unwrap_err();
    assert_api_error(&e, 401, "enrollment_token_required");
    let e = with_token.enroll_start(&req).unwrap_err();
    assert_api_error(&e, 403, "enrollment_token_invalid");
    assert!(e.to_string().contains("used"), "{e}");
    let again = enroll(&server.host_client("host-1"), &tpm, &req);

    // A revoked host re-enrolls only with the administrator's consent (here an admin token).
    admin.revoke_serial(&again.serial, Some("retired")).unwrap();
    let e = client.enroll_start(&req).unwrap_err();
    assert_api_error(&e, 401, "enrollment_token_required");
    assert!(e.to_string().contains("revoked"), "{e}");
    let back = enroll(&admin, &tpm, &req);
    assert_eq!(admin.get_cert("aik/host/host-1").unwrap(), back.certificate);
    enroll(&client, &tpm, &req);
}

#[test]
fn wrong_secret_is_activation_failed_and_ends_the_session() {
    let (server, tpm, _) = ca_with_host(3600);
    let client = server.host_client("host-1");
    let start = client
        .enroll_start(&host_start_request(&tpm, "host-1"))
        .unwrap();
    let req = EnrollFinishRequest {
        session: start.session,
        secret: B64.encode([0x55u8; 32]),
    };
    let e = client.enroll_finish(&req).unwrap_err();
    assert_api_error(&e, 403, "activation_failed");
    let e = client.enroll_finish(&req).unwrap_err();
    assert_eq!(e.code(), Some("unknown_session"), "{e}");
    // Nothing was issued.
    let e = server.admin().get_cert("aik/host/host-1").unwrap_err();
    assert_eq!(e.code(), Some("not_found"), "{e}");
}

#[test]
fn ek_not_under_a_trusted_root_is_refused() {
    let server = CaServer::start(3600, &[]);
    let tpm = Swtpm::start(&server.tmp.path().join("host"));
    tpm.create_ek_and_ak();
    let client = server.client(None);
    let req = host_start_request(&tpm, "host-1");

    // No EK root at all.
    let e = client.enroll_start(&req).unwrap_err();
    assert_api_error(&e, 403, "untrusted_ek");

    // Trusting some other root (here: the CA's own) does not help.
    let ca_pem = server.store.join("ca.pem");
    vtpm_ca_ok(&server.store, &["add-ek-root", ca_pem.to_str().unwrap()]);
    let e = client.enroll_start(&req).unwrap_err();
    assert_eq!(e.code(), Some("untrusted_ek"), "{e}");
    let detail = e.to_string();
    assert!(detail.contains("issuer certificate"), "{detail}");

    // Without the intermediate, even the right root does not verify the chain.
    vtpm_ca_ok(
        &server.store,
        &["add-ek-root", tpm.ek_root().to_str().unwrap()],
    );
    let mut short = req.clone();
    short.ek_cert_chain.truncate(1);
    let e = client.enroll_start(&short).unwrap_err();
    assert_eq!(e.code(), Some("untrusted_ek"), "{e}");
    server.host_client("host-1").enroll_start(&req).unwrap();
}

#[test]
fn aik_with_wrong_attributes_is_refused_with_the_list() {
    let (_server, tpm, client) = ca_with_host(3600);
    // An ordinary (not restricted) signing-and-decryption ECC key under an owner primary.
    tpm.tpm2(&["tpm2_createprimary", "-C", "o", "-c", "prim.ctx"]);
    tpm.flush();
    tpm.tpm2(&[
        "tpm2_create",
        "-C",
        "prim.ctx",
        "-G",
        "ecc",
        "-u",
        "bad.pub",
        "-r",
        "bad.priv",
    ]);
    tpm.flush();
    let mut req = host_start_request(&tpm, "host-1");
    req.aik_public = B64.encode(tpm.read("bad.pub"));
    let e = client.enroll_start(&req).unwrap_err();
    assert_api_error(&e, 422, "aik_not_restricted_signing");
    let detail = e.to_string();
    assert!(detail.contains("restricted is not set"), "{detail}");
    assert!(detail.contains("decrypt is set"), "{detail}");

    // Garbage is a different error.
    req.aik_public = B64.encode([0u8; 10]);
    let e = client.enroll_start(&req).unwrap_err();
    assert_eq!(e.code(), Some("bad_aik_public"), "{e}");
}

#[test]
fn certificates_expire_with_the_configured_validity() {
    let (server, tpm, client) = ca_with_host(2);
    let out = enroll_host(&server, &tpm, "short-lived");
    assert_eq!(
        out.not_after - out.not_before,
        2 + vtpm_ca::issue::BACKDATE_SECS
    );
    let cert = X509::from_pem(out.certificate.as_bytes()).unwrap();
    let root = server.root();
    openssl_verify(&root, &[], &cert).unwrap();
    assert_eq!(
        client.status(&out.fingerprint).unwrap().status,
        Status::Good
    );
    std::thread::sleep(std::time::Duration::from_millis(3100));
    assert_eq!(
        client.status(&out.fingerprint).unwrap().status,
        Status::Expired
    );
    let (code, why) = openssl_verify(&root, &[], &cert).unwrap_err();
    assert_eq!(code, 10, "X509_V_ERR_CERT_HAS_EXPIRED expected, got {why}");
}

/// ADR 0008 end to end: the host TPM enrolls; its AIK signs a coprocessor certificate
/// (`tpm2_sign`, which hashes in the TPM to get the ticket a restricted key needs); the
/// coprocessor is registered; it certifies a second TPM's EK (the vEK); that TPM enrolls as a
/// vTPM. `openssl verify` with the CA root and the two intermediates accepts the vEK
/// certificate, and revoking the coprocessor stops further vTPM enrollments.
#[test]
fn vtpm_enrollment_through_a_registered_coprocessor() {
    use identity::{issue_signed_by, CertSpec, Validity};
    use openssl::ecdsa::EcdsaSig;
    use openssl::x509::extension::{AuthorityKeyIdentifier, BasicConstraints, KeyUsage};
    use openssl::x509::{X509Builder, X509NameBuilder};
    use std::time::Duration;

    let (server, host, client) = ca_with_host(3600);
    let host_out = enroll_host(&server, &host, "host-1");
    let host_aik = X509::from_pem(host_out.certificate.as_bytes()).unwrap();

    // The coprocessor certificate: software P-256 key, signed by the host AIK in the TPM
    // (`tpm2_sign` gives a DER ECDSA signature; the coprocessor crate wants (r, s)).
    let cop_key = vtpm_ca::issue::generate_key().unwrap();
    let cop = issue_signed_by(
        &CertSpec::coprocessor(
            "host-1",
            Validity::starting_now(Duration::from_secs(86_400)),
        ),
        &host_aik,
        &cop_key,
        |tbs| -> Result<_, openssl::error::ErrorStack> {
            let sig = EcdsaSig::from_der(&host.sign_with_ak(tbs))?;
            Ok((sig.r().to_vec(), sig.s().to_vec()))
        },
    )
    .unwrap();
    assert!(cop.verify(&host_aik.public_key().unwrap()).unwrap());
    let cop_pem = String::from_utf8(cop.to_pem().unwrap()).unwrap();

    // The vTPM: a second swtpm; its RSA EK certified by the coprocessor key.
    let vtpm = Swtpm::start(&server.tmp.path().join("vtpm"));
    vtpm.create_ek_and_ak();
    let vek_pub = vtpm.public_key("ek");
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&vtpm_ca::issue::random_serial().unwrap())
        .unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "vek vm-1").unwrap();
    b.set_subject_name(&name.build()).unwrap();
    b.set_issuer_name(cop.subject_name()).unwrap();
    b.set_pubkey(&vek_pub).unwrap();
    b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    b.append_extension(BasicConstraints::new().critical().build().unwrap())
        .unwrap();
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_encipherment()
            .build()
            .unwrap(),
    )
    .unwrap();
    let aki = AuthorityKeyIdentifier::new()
        .keyid(true)
        .build(&b.x509v3_context(Some(&cop), None))
        .unwrap();
    b.append_extension(aki).unwrap();
    b.sign(&cop_key, MessageDigest::sha256()).unwrap();
    let vek = b.build();
    let vek_pem = String::from_utf8(vek.to_pem().unwrap()).unwrap();

    let root = server.root();
    openssl_verify(&root, &[host_aik.clone(), cop.clone()], &vek).unwrap();

    let vreq = EnrollStartRequest {
        kind: Kind::Vtpm,
        subject: "vm-1".into(),
        ek_cert_chain: vec![vek_pem, cop_pem.clone(), host_out.certificate.clone()],
        aik_public: B64.encode(vtpm.read("ak.pub")),
    };
    // Not registered yet.
    let e = client.enroll_start(&vreq).unwrap_err();
    assert_eq!(e.code(), Some("unregistered_coprocessor"), "{e}");

    // Registration needs write permission on coprocessor/<fingerprint>.
    let chain = vec![cop_pem.clone(), host_out.certificate.clone()];
    let e = client.register_coprocessor(&chain).unwrap_err();
    assert_eq!(e.code(), Some("unauthenticated"), "{e}");
    let agent = server.add_principal(&["--name", "host-agent", "--write-prefix", "coprocessor/"]);
    let reg = server
        .client(Some(&agent))
        .register_coprocessor(&chain)
        .unwrap();
    assert_eq!(reg.fingerprint, vtpm_ca::fingerprint(&cop).unwrap());
    assert_eq!(
        reg.name,
        format!("coprocessor/{}", vtpm_ca::fingerprint(&cop).unwrap())
    );
    assert_eq!(
        client.status(&reg.fingerprint).unwrap().status,
        Status::Good
    );

    let out = enroll(&client, &vtpm, &vreq);
    assert_eq!(out.name, "aik/vtpm/vm-1");
    let vaik = X509::from_pem(out.certificate.as_bytes()).unwrap();
    openssl_verify(&root, &[], &vaik).unwrap();
    let text = String::from_utf8(vaik.to_text().unwrap()).unwrap();
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("2.23.133.8.3"), "{text}");

    // The openssl CLI agrees on the vEK chain (ADR 0008's verification command).
    let f = |n: &str, c: &X509| {
        let p = server.tmp.path().join(n);
        std::fs::write(&p, c.to_pem().unwrap()).unwrap();
        p
    };
    let o = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(f("ca.pem", &root))
        .arg("-untrusted")
        .arg(f("host-aik.pem", &host_aik))
        .arg("-untrusted")
        .arg(f("coprocessor.pem", &cop))
        .arg(f("vek.pem", &vek))
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");

    // Revoking the coprocessor (not CA-issued: by fingerprint) stops vTPM enrollment.
    let r = server
        .admin()
        .revoke_cert(&cop_pem, Some("host retired"))
        .unwrap();
    assert_eq!(r.serial, None);
    assert_eq!(
        client.status(&reg.fingerprint).unwrap().status,
        Status::Revoked
    );
    let e = client.enroll_start(&vreq).unwrap_err();
    assert_api_error(&e, 403, "revoked");
    assert!(e.to_string().contains("host retired"), "{e}");
}
