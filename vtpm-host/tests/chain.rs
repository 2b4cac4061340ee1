//! The certificate chain of ADR 0008 with every real part except the guest: an swtpm as the
//! host TPM (manufactured with an EK certificate by swtpm_localca, the "manufacturer"), the
//! `vtpm-ca` service over HTTPS, `vtpm-host` for enrollment, coprocessor certification and
//! vEK provisioning, and the `vhost-vtpm` daemon serving the instance, whose NV the test
//! reads like a guest would and verifies with the `openssl verify` command.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use guest_driver::{ClientOptions, VtpmClient};
use testbed::{run_tool, CaProcess, ChainSetup, DaemonProcess, HostTpmSimulator};
use tpm_proto::commands as c;
use vtpm_ca::api::{EnrollStartRequest, Kind};
use vtpm_ca::client::Client;

mod common;

use common::{bin, bin_dir, HOST};

fn vtpm_host(dir: &Path, tcti: &str, args: &[&str]) -> Result<String, String> {
    run_tool(
        Command::new(HOST)
            .arg("--dir")
            .arg(dir)
            .args(["--host-tpm", tcti])
            .args(args),
    )
}

fn der_to_pem(der: &[u8]) -> String {
    String::from_utf8(
        openssl::x509::X509::from_der(der)
            .unwrap()
            .to_pem()
            .unwrap(),
    )
    .unwrap()
}

/// `openssl verify` as a verifier runs it: the CA root as the only trust anchor.
fn openssl_verify(dir: &Path, ca: &Path, untrusted: &[&str], leaf: &str, extra: &[&str]) -> String {
    let mut cmd = Command::new("openssl");
    cmd.arg("verify").args(extra).arg("-CAfile").arg(ca);
    for (i, u) in untrusted.iter().enumerate() {
        let p = dir.join(format!("untrusted{i}.pem"));
        std::fs::write(&p, u).unwrap();
        cmd.arg("-untrusted").arg(p);
    }
    let leaf_path = dir.join("leaf.pem");
    std::fs::write(&leaf_path, leaf).unwrap();
    let out = cmd.arg(&leaf_path).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn nv_read_all(client: &mut VtpmClient, index: u32) -> Vec<u8> {
    // The size is what NV_ReadPublic says; read in chunks like a TSS.
    let resp = client
        .transact_tss(&c::nv_read_public(index))
        .expect("NV_ReadPublic");
    let public =
        c::parse_nv_read_public(&resp).unwrap_or_else(|e| panic!("NV_ReadPublic {index:#x}: {e}"));
    assert_eq!(public.index, index);
    let size = public.data_size;
    let mut out = Vec::new();
    while out.len() < usize::from(size) {
        let n = (usize::from(size) - out.len()).min(c::MAX_NV_BUFFER) as u16;
        let resp = client
            .transact_tss(&c::nv_read(index, n, out.len() as u16))
            .unwrap();
        out.extend(c::parse_nv_read(&resp).expect("NV_Read"));
    }
    out
}

#[test]
fn chain_from_the_host_tpm_to_the_vek_verifies_with_openssl() {
    let tmp = tempfile::tempdir().unwrap();
    // 1-2. Host enrolled (EK certificate under the manufacturer root, credential
    //      activation), coprocessor certified by the host TPM and registered with the CA by
    //      a principal that may write only coprocessor certificates.
    let s = ChainSetup::start(bin_dir(), tmp.path(), "host-1").unwrap();
    let host_aik = s.host_pem("host-aik.pem").unwrap();
    let coprocessor = s.host_pem("coprocessor.pem").unwrap();
    assert!(host_aik.contains("BEGIN CERTIFICATE") && coprocessor.contains("BEGIN CERTIFICATE"));

    // 3. A new vTPM instance gets its vEK certificates and the chain.
    let vm = tmp.path().join("vm1");
    let out = s.provision(&vm.join("state")).unwrap();
    assert!(out.contains("0x01c00100, 0x01c00101"), "{out}");

    // 4. The daemon serves it; read everything from NV as the guest would.
    let tcti = s.host_tpm.tcti();
    let daemon = DaemonProcess::start(&bin("vhost-vtpm"), &vm, &["--host-tpm", &tcti]).unwrap();
    let mut client = VtpmClient::connect(&daemon.socket, ClientOptions::default()).unwrap();
    let rc = tpm_proto::response_code(&client.transact_tss(&c::startup(c::TPM_SU_CLEAR)).unwrap());
    assert_eq!(rc.unwrap(), 0);
    let rsa_vek = der_to_pem(&nv_read_all(&mut client, 0x01c0_0002));
    let ecc_vek = der_to_pem(&nv_read_all(&mut client, 0x01c0_000a));
    let chain0 = der_to_pem(&nv_read_all(&mut client, 0x01c0_0100));
    let chain1 = der_to_pem(&nv_read_all(&mut client, 0x01c0_0101));
    assert_eq!(
        chain0, coprocessor,
        "the coprocessor certificate is in the chain range"
    );
    assert_eq!(chain1, host_aik, "then the host AIK certificate");

    // 5. openssl verify: root -> host AIK -> coprocessor -> vEK, for both vEKs.
    let work = tmp.path().join("verify");
    std::fs::create_dir_all(&work).unwrap();
    for vek in [&rsa_vek, &ecc_vek] {
        let out = openssl_verify(&work, &s.ca.ca_cert, &[&chain0, &chain1], vek, &[]);
        assert!(out.trim_end().ends_with(": OK"), "openssl verify: {out}");
    }
    // Without the host AIK certificate (or with another CA as the anchor) it does not.
    let out = openssl_verify(&work, &s.ca.ca_cert, &[&chain0], &rsa_vek, &[]);
    assert!(!out.trim_end().ends_with(": OK"), "{out}");
    let out = openssl_verify(
        &work,
        &s.manufacturer.root,
        &[&chain0, &chain1],
        &rsa_vek,
        &[],
    );
    assert!(!out.trim_end().ends_with(": OK"), "{out}");

    // 6. The vTPM enrols an AIK with the CA against that chain ...
    // An ECC P-256 restricted signing key (what `tpm2_createak -G ecc` makes).
    let resp = client
        .transact_tss(&c::create_primary(
            c::TPM_RH_OWNER,
            &c::ecc_p256_aik_template(),
        ))
        .unwrap();
    let (_, aik_public) = c::parse_create_primary(&resp).expect("CreatePrimary (AIK)");
    let mut tpm2b = (aik_public.len() as u16).to_be_bytes().to_vec();
    tpm2b.extend_from_slice(&aik_public);
    use base64::Engine;
    let request = EnrollStartRequest {
        kind: Kind::Vtpm,
        subject: "vm1".into(),
        ek_cert_chain: vec![rsa_vek.clone(), chain0.clone(), chain1.clone()],
        aik_public: base64::engine::general_purpose::STANDARD.encode(&tpm2b),
    };
    let ca_pem = std::fs::read(&s.ca.ca_cert).unwrap();
    let ca_client = Client::new(&s.ca.url, &ca_pem, None).unwrap();
    ca_client
        .enroll_start(&request)
        .expect("the CA accepts the vEK chain");
    // ... until the coprocessor certificate is revoked: then its vEKs are refused.
    let admin = Client::new(&s.ca.url, &ca_pem, Some(s.ca.admin_token().unwrap())).unwrap();
    admin
        .revoke_cert(&coprocessor, Some("key compromise"))
        .unwrap();
    let err = ca_client.enroll_start(&request).unwrap_err();
    assert_eq!(err.code(), Some("revoked"), "{err}");
    drop(client);
}

#[test]
fn host_whose_ek_is_not_under_a_trusted_root_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (host_tpm, _) = HostTpmSimulator::manufacture(&tmp.path().join("host-tpm")).unwrap();
    // A CA that trusts no manufacturer.
    let ca = CaProcess::start(&bin("vtpm-ca"), &tmp.path().join("ca"), &[]).unwrap();
    let host = tmp.path().join("host");
    let enroll = || {
        vtpm_host(
            &host,
            &host_tpm.tcti(),
            &[
                "enroll",
                "--ca",
                &ca.url,
                "--ca-cert",
                ca.ca_cert.to_str().unwrap(),
            ],
        )
        .unwrap_err()
    };
    let err = enroll();
    assert!(err.contains("untrusted_ek"), "{err}");
    assert!(!host.join("host-aik.pem").exists());
    // The AIK the CA did not certify is not kept either.
    assert!(!host.join("host-aik.blob").exists());

    // A host enrolled before keeps its AIK and certificate when an enrollment fails.
    let (blob, pem) = (
        b"the enrolled AIK".as_slice(),
        b"its certificate".as_slice(),
    );
    std::fs::write(host.join("host-aik.blob"), blob).unwrap();
    std::fs::write(host.join("host-aik.pem"), pem).unwrap();
    let err = enroll();
    assert!(err.contains("untrusted_ek"), "{err}");
    assert_eq!(std::fs::read(host.join("host-aik.blob")).unwrap(), blob);
    assert_eq!(std::fs::read(host.join("host-aik.pem")).unwrap(), pem);
}

/// `vtpm-host enroll` of a new host id needs the administrator's enrolment token: without
/// one (or with one for another host id) the CA refuses and nothing is kept; with it the
/// host is enrolled, and enrolling again with the same TPM (a renewal) needs no token.
#[test]
fn enroll_needs_the_enrolment_token_for_its_host_id() {
    let tmp = tempfile::tempdir().unwrap();
    let (host_tpm, maker) = HostTpmSimulator::manufacture(&tmp.path().join("host-tpm")).unwrap();
    let (root, issuer) = (
        maker.root.display().to_string(),
        maker.issuer.display().to_string(),
    );
    let ca = CaProcess::start(
        &bin("vtpm-ca"),
        &tmp.path().join("ca"),
        &["--ek-root", &root, "--ek-root", &issuer],
    )
    .unwrap();
    let host = tmp.path().join("host");
    let enroll = |extra: &[&str]| {
        let mut args = vec![
            "enroll",
            "--host-id",
            "host-1",
            "--ca",
            &ca.url,
            "--ca-cert",
            ca.ca_cert.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        vtpm_host(&host, &host_tpm.tcti(), &args)
    };
    let token_file = |subject: &str| {
        let token = ca.command(&["enroll-token", "--subject", subject]).unwrap();
        let p = tmp.path().join(format!("{subject}.token"));
        std::fs::write(&p, token.trim()).unwrap();
        p.display().to_string()
    };
    let err = enroll(&[]).unwrap_err();
    assert!(err.contains("enrollment_token_required"), "{err}");
    assert!(!host.join("host-aik.pem").exists() && !host.join("host-aik.blob").exists());
    let other = token_file("host-2");
    let err = enroll(&["--enroll-token-file", &other]).unwrap_err();
    assert!(err.contains("enrollment_token_invalid"), "{err}");
    assert!(!host.join("host-aik.pem").exists());

    let mine = token_file("host-1");
    enroll(&["--enroll-token-file", &mine]).unwrap();
    let first = std::fs::read_to_string(host.join("host-aik.pem")).unwrap();
    // The token is spent; the same TPM enrolls again without one.
    enroll(&[]).unwrap();
    assert_ne!(
        std::fs::read_to_string(host.join("host-aik.pem")).unwrap(),
        first
    );
}

#[test]
fn renew_reissues_the_host_certificates_that_are_due() {
    let tmp = tempfile::tempdir().unwrap();
    let bin_dir = bin_dir();
    // Issued certificates live 60 s (plus the CA's backdating): due at once.
    let s =
        ChainSetup::start_with(bin_dir, tmp.path(), "host-1", &["--validity-secs", "60"]).unwrap();
    let aik_before = s.host_pem("host-aik.pem").unwrap();
    let coprocessor_before = s.host_pem("coprocessor.pem").unwrap();
    // certify-coprocessor made the host's migration key, wrapped like the coprocessor key.
    let migration_pub = s.host_pem("migration.pub").unwrap();
    assert!(
        migration_pub.contains("BEGIN PUBLIC KEY"),
        "{migration_pub}"
    );
    assert!(s.host_dir.join("migration.key").exists());
    let token = s.token_file().display().to_string();
    let mut args = vec!["renew", "--host-id", "host-1", "--token-file", &token];
    let ca_args = s.ca_args();
    args.extend(ca_args.iter().map(String::as_str));
    let out = s.host(&args).unwrap();
    assert!(
        out.contains("renewed: host AIK certificate, coprocessor certificate"),
        "{out}"
    );
    let aik_after = s.host_pem("host-aik.pem").unwrap();
    let coprocessor_after = s.host_pem("coprocessor.pem").unwrap();
    assert_ne!(aik_after, aik_before);
    assert_ne!(coprocessor_after, coprocessor_before);
    // The renewed coprocessor certificate chains through the renewed host AIK certificate.
    let work = tmp.path().join("verify");
    std::fs::create_dir_all(&work).unwrap();
    let out = openssl_verify(&work, &s.ca.ca_cert, &[&aik_after], &coprocessor_after, &[]);
    assert!(out.trim_end().ends_with(": OK"), "{out}");
    // Renewal keeps the migration key.
    assert_eq!(s.host_pem("migration.pub").unwrap(), migration_pub);

    // A CA issuing for a year: nothing is due.
    let tmp = tempfile::tempdir().unwrap();
    let s = ChainSetup::start(bin_dir, tmp.path(), "host-2").unwrap();
    let token = s.token_file().display().to_string();
    let mut args = vec!["renew", "--host-id", "host-2", "--token-file", &token];
    let ca_args = s.ca_args();
    args.extend(ca_args.iter().map(String::as_str));
    assert!(s.host(&args).unwrap().contains("nothing due for renewal"));
}

/// `certify-coprocessor` is all or nothing: without a token, or with a token that may not
/// register coprocessors, it keeps no coprocessor key or certificate, so `provision` has
/// nothing to provision with; a failed re-certification keeps the registered key and
/// certificate as they were.
#[test]
fn certify_coprocessor_keeps_nothing_the_ca_did_not_register() {
    let tmp = tempfile::tempdir().unwrap();
    let s = ChainSetup::enrolled(bin_dir(), tmp.path(), "host-1", &[]).unwrap();
    let key = s.host_dir.join("coprocessor.key");
    let cert = s.host_dir.join("coprocessor.pem");
    let leftovers = || {
        let mut names: Vec<String> = std::fs::read_dir(&s.host_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("coprocessor") || n.starts_with(".coprocessor"))
            .collect();
        names.sort();
        names
    };
    let ca_args = s.ca_args();
    let certify = |extra: &[&str]| {
        let mut args = vec!["certify-coprocessor", "--host-id", "host-1"];
        args.extend(ca_args.iter().map(String::as_str));
        args.extend_from_slice(extra);
        s.host(&args)
    };
    let vm = tmp.path().join("vm1").join("state");

    // No token: refused before anything is made.
    let err = certify(&[]).unwrap_err();
    assert!(err.contains("--token-file"), "{err}");
    assert_eq!(leftovers(), Vec::<String>::new());
    // A principal that may not write coprocessor/...: the host TPM signs, the CA refuses
    // the registration, nothing is kept.
    let other =
        s.ca.command(&["acl", "add", "--name", "reader", "--write-prefix", "vek/"])
            .unwrap();
    let other_file = tmp.path().join("reader.token");
    std::fs::write(&other_file, other.trim()).unwrap();
    let other_file = other_file.display().to_string();
    let err = certify(&["--token-file", &other_file]).unwrap_err();
    assert!(err.contains("forbidden"), "{err}");
    assert_eq!(leftovers(), Vec::<String>::new());
    let err = s.provision(&vm).unwrap_err();
    assert!(err.contains("certify-coprocessor"), "{err}");

    // With the host's principal: registered, kept, and provision works.
    s.certify_coprocessor().unwrap();
    assert_eq!(leftovers(), vec!["coprocessor.key", "coprocessor.pem"]);
    let (key_before, cert_before) = (std::fs::read(&key).unwrap(), std::fs::read(&cert).unwrap());
    let fp = vtpm_ca::fingerprint(&openssl::x509::X509::from_pem(&cert_before).unwrap()).unwrap();
    let ca_pem = std::fs::read(&s.ca.ca_cert).unwrap();
    let status = Client::new(&s.ca.url, &ca_pem, None)
        .unwrap()
        .status(&fp)
        .unwrap();
    assert_eq!(status.status, vtpm_ca::api::Status::Good);
    s.provision(&vm).unwrap();

    // A failed re-certification keeps the registered key and certificate.
    let err = certify(&["--token-file", &other_file]).unwrap_err();
    assert!(err.contains("forbidden"), "{err}");
    assert_eq!(std::fs::read(&key).unwrap(), key_before);
    assert_eq!(std::fs::read(&cert).unwrap(), cert_before);
    assert_eq!(leftovers(), vec!["coprocessor.key", "coprocessor.pem"]);
}

/// `vtpm-host certificates`: the PEM files of a stopped instance's NV, in `out`.
fn instance_certificates(s: &ChainSetup, state_dir: &Path, out: &Path) -> Vec<String> {
    let (state, out_dir) = (state_dir.display().to_string(), out.display().to_string());
    s.host(&["certificates", "--state-dir", &state, "--out", &out_dir])
        .unwrap();
    ["rsa-vek.pem", "ecc-vek.pem", "chain-0.pem", "chain-1.pem"]
        .iter()
        .map(|n| std::fs::read_to_string(out.join(n)).unwrap())
        .collect()
}

/// The URIs of the CRL distribution points of a PEM certificate, as `openssl x509` prints
/// them, and its CRL issuers (`DirName:` lines).
fn crl_distribution_points(dir: &Path, pem: &str) -> (Vec<String>, Vec<String>) {
    let path = dir.join("cdp.pem");
    std::fs::write(&path, pem).unwrap();
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "crlDistributionPoints", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let uris = text
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("URI:").map(str::to_owned))
        .collect();
    let issuers = text
        .lines()
        .filter_map(|l| l.split_once("DirName:").map(|(_, n)| n.trim().to_owned()))
        .collect();
    (uris, issuers)
}

/// Fetches the CRL at `url` (a `https://HOST:PORT/v1/crl` of the CA) into `dir/crl.pem`.
fn fetch_crl(s: &ChainSetup, url: &str, dir: &Path) -> std::path::PathBuf {
    let base = url.strip_suffix("/v1/crl").expect("the CA's CRL path");
    let ca_pem = std::fs::read(&s.ca.ca_cert).unwrap();
    let der = Client::new(base, &ca_pem, None).unwrap().crl().unwrap();
    let pem = openssl::x509::X509Crl::from_der(&der)
        .unwrap()
        .to_pem()
        .unwrap();
    let path = dir.join("crl.pem");
    std::fs::write(&path, pem).unwrap();
    path
}

/// Item 10 of issue 11: a verifier with nothing but `openssl verify` and the CRL the
/// certificates point at rejects a vEK chain whose `which` ("coprocessor" or "host AIK")
/// certificate was revoked, and accepts it before.
fn revoked_issuer_is_visible_to_openssl(which: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let s = ChainSetup::start(bin_dir(), tmp.path(), "host-1").unwrap();
    let vm = tmp.path().join("vm1").join("state");
    s.provision(&vm).unwrap();
    let work = tmp.path().join("verify");
    let certs = instance_certificates(&s, &vm, &work);
    let (rsa_vek, ecc_vek, coprocessor, host_aik) = (&certs[0], &certs[1], &certs[2], &certs[3]);
    assert_eq!(coprocessor, &s.host_pem("coprocessor.pem").unwrap());
    assert_eq!(host_aik, &s.host_pem("host-aik.pem").unwrap());

    // Every certificate under the root names the CA's CRL; those the CA did not sign name
    // the CA as its issuer (an indirect CRL).
    let url = format!("{}/v1/crl", s.ca.url);
    let (uris, issuers) = crl_distribution_points(&work, host_aik);
    assert_eq!((uris, issuers), (vec![url.clone()], vec![]));
    for cert in [coprocessor, rsa_vek, ecc_vek] {
        let (uris, issuers) = crl_distribution_points(&work, cert);
        assert_eq!(uris, vec![url.clone()]);
        assert_eq!(issuers.len(), 1, "{issuers:?}");
        assert!(issuers[0].contains("vhost-vtpm local CA"), "{issuers:?}");
    }

    let verify = |crl: &Path, leaf: &str| {
        let crl = crl.display().to_string();
        let flags = ["-crl_check_all", "-extended_crl", "-CRLfile", crl.as_str()];
        openssl_verify(&work, &s.ca.ca_cert, &[coprocessor, host_aik], leaf, &flags)
    };
    let crl = fetch_crl(&s, &url, &work);
    for vek in [rsa_vek, ecc_vek] {
        let out = verify(&crl, vek);
        assert!(out.trim_end().ends_with(": OK"), "before revocation: {out}");
    }
    // An OpenSSL that does not read indirect CRLs fails closed.
    let crl_file = crl.display().to_string();
    let flags = ["-crl_check_all", "-CRLfile", crl_file.as_str()];
    let out = openssl_verify(
        &work,
        &s.ca.ca_cert,
        &[coprocessor, host_aik],
        rsa_vek,
        &flags,
    );
    assert!(!out.trim_end().ends_with(": OK"), "{out}");

    let ca_pem = std::fs::read(&s.ca.ca_cert).unwrap();
    let admin = Client::new(&s.ca.url, &ca_pem, Some(s.ca.admin_token().unwrap())).unwrap();
    let revoked = if which == "coprocessor" {
        coprocessor
    } else {
        host_aik
    };
    admin.revoke_cert(revoked, Some("key compromise")).unwrap();
    let crl = fetch_crl(&s, &url, &work);
    for leaf in [rsa_vek, ecc_vek, revoked] {
        let out = verify(&crl, leaf);
        assert!(!out.trim_end().ends_with(": OK"), "{which} revoked: {out}");
        assert!(
            out.contains("certificate revoked"),
            "{which} revoked: {out}"
        );
    }
    if which == "coprocessor" {
        // The host AIK certificate itself is still good.
        let out = verify(&crl, host_aik);
        assert!(out.trim_end().ends_with(": OK"), "{out}");
    }
}

#[test]
fn revoked_coprocessor_certificate_is_visible_to_openssl_with_the_crl() {
    revoked_issuer_is_visible_to_openssl("coprocessor");
}

#[test]
fn revoked_host_aik_certificate_is_visible_to_openssl_with_the_crl() {
    revoked_issuer_is_visible_to_openssl("host AIK");
}

/// Item 9 of issue 11: no certificate outlives its issuer (the coprocessor certificate
/// asked for a year ends with the host AIK certificate, the vEK certificates asked for ten
/// years with the coprocessor's), and `vtpm-host refresh` brings the chain in a stopped
/// instance's NV up to date after the host certificates changed, keeping vEK certificates
/// that still verify.
#[test]
fn no_certificate_outlives_its_issuer_and_refresh_updates_the_chain_in_nv() {
    let tmp = tempfile::tempdir().unwrap();
    let s = ChainSetup::start_with(
        bin_dir(),
        tmp.path(),
        "host-1",
        &["--validity-secs", "3600"],
    )
    .unwrap();
    let vm = tmp.path().join("vm1").join("state");
    s.provision(&vm).unwrap();
    let work = tmp.path().join("nv");
    let certs = instance_certificates(&s, &vm, &work);
    let x509 = |pem: &str| openssl::x509::X509::from_pem(pem.as_bytes()).unwrap();
    let (rsa_vek, ecc_vek, coprocessor, host_aik) = (
        x509(&certs[0]),
        x509(&certs[1]),
        x509(&certs[2]),
        x509(&certs[3]),
    );
    let ca_root = x509(&std::fs::read_to_string(&s.ca.ca_cert).unwrap());
    for (cert, issuer) in [
        (&host_aik, &ca_root),
        (&coprocessor, &host_aik),
        (&rsa_vek, &coprocessor),
        (&ecc_vek, &coprocessor),
    ] {
        assert!(
            cert.not_after() <= issuer.not_after(),
            "{:?} ends {} after its issuer {:?}, {}",
            cert.subject_name(),
            cert.not_after(),
            issuer.subject_name(),
            issuer.not_after()
        );
    }
    let state = vm.display().to_string();
    let refresh = || {
        let out = s.host(&["refresh", "--state-dir", &state]).unwrap();
        out.lines().next().unwrap_or_default().to_owned()
    };
    assert_eq!(refresh(), "vEK certificates kept; chain unchanged");

    // The coprocessor is certified again (same key, a new certificate): refresh puts it in
    // NV and keeps the vEK certificates, which still verify under it.
    let token = s.token_file().display().to_string();
    let mut args = vec![
        "certify-coprocessor",
        "--host-id",
        "host-1",
        "--token-file",
        &token,
    ];
    let ca_args = s.ca_args();
    args.extend(ca_args.iter().map(String::as_str));
    s.host(&args).unwrap();
    let renewed = s.host_pem("coprocessor.pem").unwrap();
    assert_ne!(renewed, certs[2]);
    assert_eq!(refresh(), "vEK certificates kept; chain rewritten");
    let after = instance_certificates(&s, &vm, &tmp.path().join("nv2"));
    assert_eq!(after[2], renewed);
    assert_eq!(after[3], s.host_pem("host-aik.pem").unwrap());
    assert_eq!((&after[0], &after[1]), (&certs[0], &certs[1]));
    let verify_dir = tmp.path().join("verify");
    std::fs::create_dir_all(&verify_dir).unwrap();
    for vek in [&after[0], &after[1]] {
        let out = openssl_verify(
            &verify_dir,
            &s.ca.ca_cert,
            &[&after[2], &after[3]],
            vek,
            &[],
        );
        assert!(out.trim_end().ends_with(": OK"), "{out}");
    }
    assert_eq!(refresh(), "vEK certificates kept; chain unchanged");
}

#[test]
fn readme_options_match_the_command_line() {
    let commands: &[&[&str]] = &[
        &[],
        &["enroll"],
        &["certify-coprocessor"],
        &["provision"],
        &["enroll-vaik"],
        &["refresh"],
        &["certificates"],
        &["renew"],
    ];
    testbed::crate_readme_drift(env!("CARGO_MANIFEST_DIR"), Path::new(HOST), commands).unwrap();
}
