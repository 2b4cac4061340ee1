//! The identity chain end to end: coprocessor key, a coprocessor certificate made by an
//! external signer, vEK certificates provisioned into a libtpms instance and read back, the
//! chain checked by OpenSSL (library and `openssl verify`), and the EK templates checked
//! against tpm2-tools on a swtpm.
//!
//! libtpms is a process singleton: everything that uses it runs in one test, in order.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use coprocessor::libtpms::LibtpmsEngine;
use coprocessor::Coprocessor;
use identity::provision::tpm_info;
use identity::{
    create_ek, issue_signed_by, provision_ek, read_ek_cert, CertSpec, CoprocessorKey, EkKind,
    EkPublic, IdentityError, Validity,
};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectKeyIdentifier,
};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509Ref, X509StoreContext, X509};
use testbed::certs::p256_key;
use testbed::HostTpmSimulator;
use tpm_proto::commands::{self as c, nv_attr};
use tpm_proto::public::alg;
use tpm_proto::{cc, rc, CommandBuilder};
use vtpm_state::keys::generate_host_key_file;
use vtpm_state::EncryptedStore;

const DAY: Duration = Duration::from_secs(86_400);

/// A software stand-in for the local CA root and the host AIK (ADR 0008's two top links).
struct Pki {
    root: X509,
    aik_key: PKey<Private>,
    aik: X509,
}

fn ca_cert(
    cn: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509Ref, &PKey<Private>)>,
    pathlen: u32,
) -> X509 {
    let mut b = testbed::certs::builder(cn, key, issuer.map(|(c, _)| c), 3650);
    b.append_extension(
        BasicConstraints::new()
            .critical()
            .ca()
            .pathlen(pathlen)
            .build()
            .unwrap(),
    )
    .unwrap();
    let mut usage = KeyUsage::new();
    usage.critical().key_cert_sign().crl_sign();
    if issuer.is_some() {
        usage.digital_signature();
        b.append_extension(
            ExtendedKeyUsage::new()
                .other("2.23.133.8.3")
                .build()
                .unwrap(),
        )
        .unwrap();
    }
    b.append_extension(usage.build().unwrap()).unwrap();
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(issuer.map(|(c, _)| c), None))
        .unwrap();
    b.append_extension(ski).unwrap();
    if let Some((issuer_cert, _)) = issuer {
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(Some(issuer_cert), None))
            .unwrap();
        b.append_extension(aki).unwrap();
    }
    b.sign(issuer.map_or(key, |(_, k)| k), MessageDigest::sha256())
        .unwrap();
    b.build()
}

impl Pki {
    fn new() -> Self {
        let root_key = p256_key();
        let root = ca_cert("test local CA root", &root_key, None, 2);
        let aik_key = p256_key();
        let aik = ca_cert("test host AIK", &aik_key, Some((&root, &root_key)), 1);
        Pki { root, aik_key, aik }
    }

    /// What the host TPM does with the TBS: SHA-256 it and ECDSA-sign the digest, returning
    /// fixed-width (32-byte) r and s like TPM2_Sign.
    fn tpm_like_sign(key: &PKey<Private>, tbs: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let digest = openssl::sha::sha256(tbs);
        let sig = EcdsaSig::sign(&digest, &*key.ec_key().unwrap()).unwrap();
        (
            sig.r().to_vec_padded(32).unwrap(),
            sig.s().to_vec_padded(32).unwrap(),
        )
    }

    fn coprocessor_cert(&self, key: &CoprocessorKey) -> X509 {
        let spec = CertSpec::coprocessor("host-under-test", Validity::starting_now(365 * DAY));
        issue_signed_by(&spec, &self.aik, &key.public_key(), |tbs| {
            Ok::<_, std::convert::Infallible>(Pki::tpm_like_sign(&self.aik_key, tbs))
        })
        .unwrap()
    }

    /// `openssl verify` done by the library: leaf ← coprocessor ← AIK ← root.
    fn verify(&self, coprocessor: &X509, leaf: &X509) -> Result<(), String> {
        let mut store = X509StoreBuilder::new().unwrap();
        store.add_cert(self.root.clone()).unwrap();
        let store = store.build();
        let mut chain = Stack::new().unwrap();
        chain.push(self.aik.clone()).unwrap();
        chain.push(coprocessor.clone()).unwrap();
        let mut ctx = X509StoreContext::new().unwrap();
        ctx.init(&store, leaf, &chain, |c| {
            Ok(if c.verify_cert()? {
                Ok(())
            } else {
                Err(format!("{} at depth {}", c.error(), c.error_depth()))
            })
        })
        .unwrap()
    }
}

fn run(e: &mut dyn Coprocessor, cmd: &[u8]) -> Vec<u8> {
    let mut cmd = cmd.to_vec();
    e.execute(&mut cmd).unwrap().to_vec()
}

fn rc_of(resp: &[u8]) -> u32 {
    tpm_proto::response_code(resp).unwrap()
}

/// NV_ReadPublic → (attributes, size).
fn nv_read_public(e: &mut dyn Coprocessor, index: u32) -> (u32, u16) {
    let p = c::parse_nv_read_public(&run(e, &c::nv_read_public(index))).unwrap();
    assert_eq!(p.index, index);
    assert_eq!(p.name_alg, alg::SHA256, "SHA-256 name");
    assert!(p.auth_policy.is_empty(), "no authPolicy");
    (p.attributes, p.data_size)
}

/// The index's contents read as a guest would: NV_Read authorised by the index's empty auth.
fn nv_read_all(e: &mut dyn Coprocessor, index: u32) -> Vec<u8> {
    let (_, size) = nv_read_public(e, index);
    let mut out = Vec::new();
    while out.len() < usize::from(size) {
        let n = (usize::from(size) - out.len()).min(512) as u16;
        let chunk = c::parse_nv_read(&run(e, &c::nv_read(index, n, out.len() as u16))).unwrap();
        out.extend_from_slice(&chunk);
    }
    out
}

fn startup(e: &mut dyn Coprocessor) {
    assert_eq!(rc_of(&run(e, &c::startup(c::TPM_SU_CLEAR))), rc::SUCCESS);
}

fn check_stored(e: &mut dyn Coprocessor, kind: EkKind, cert: &X509) {
    let index = kind.cert_nv_index();
    let (attrs, size) = nv_read_public(e, index);
    assert_eq!(
        attrs,
        c::NV_EK_CERT_ATTRS | nv_attr::WRITTEN,
        "attributes + WRITTEN"
    );
    assert_eq!(attrs, 0x6207_2001, "what swtpm_setup gives these indices");
    let der = cert.to_der().unwrap();
    assert_eq!(usize::from(size), der.len());
    assert_eq!(
        nv_read_all(e, index),
        der,
        "{} certificate in NV",
        kind.name()
    );
    assert_eq!(
        read_ek_cert(e, kind).unwrap().unwrap().to_der().unwrap(),
        der
    );
}

fn text(cert: &X509) -> String {
    String::from_utf8(cert.to_text().unwrap()).unwrap()
}

fn write_pem(dir: &Path, name: &str, cert: &X509) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, cert.to_pem().unwrap()).unwrap();
    path
}

#[test]
fn coprocessor_key_and_vek_certificates_in_libtpms() {
    let dir = tempfile::tempdir().unwrap();
    let host_key = generate_host_key_file(&dir.path().join("host.key")).unwrap();
    let id_dir = dir.path().join("identity");

    // --- the coprocessor key: created once, reopened, refused when it is not one ---
    let key = CoprocessorKey::create(&id_dir, &host_key).unwrap();
    assert!(matches!(
        CoprocessorKey::create(&id_dir, &host_key),
        Err(IdentityError::KeyExists { .. })
    ));
    let reopened = CoprocessorKey::open(&id_dir, &host_key).unwrap();
    assert!(reopened.public_key().public_eq(&key.public_key()));
    assert!(!format!("{key:?}").contains("Private"));
    let other_host_key = generate_host_key_file(&dir.path().join("other-host.key")).unwrap();
    assert!(matches!(
        CoprocessorKey::open(&id_dir, &other_host_key),
        Err(IdentityError::Key(_))
    ));

    // --- the coprocessor certificate, signed by a "host AIK" through the external-signer path ---
    let pki = Pki::new();
    let coprocessor_cert = pki.coprocessor_cert(&key);
    assert!(coprocessor_cert
        .verify(&pki.aik.public_key().unwrap())
        .unwrap());
    assert!(pki.verify(&coprocessor_cert, &coprocessor_cert).is_ok());
    let t = text(&coprocessor_cert);
    for expected in [
        "Subject: CN=vhost-vtpm coprocessor host-under-test",
        "Issuer: CN=test host AIK",
        "X509v3 Basic Constraints: critical\n                CA:TRUE, pathlen:0",
        "X509v3 Key Usage: critical\n                Digital Signature, Certificate Sign, CRL Sign",
        "X509v3 Subject Key Identifier",
        "Signature Algorithm: ecdsa-with-SHA256",
    ] {
        assert!(t.contains(expected), "{expected:?} missing from\n{t}");
    }
    assert_eq!(
        coprocessor_cert.authority_key_id().unwrap().as_slice(),
        pki.aik.subject_key_id().unwrap().as_slice()
    );
    assert_eq!(
        coprocessor_cert
            .serial_number()
            .to_bn()
            .unwrap()
            .num_bytes(),
        16
    );
    // A signature by anything but the issuer's key is refused; signer errors surface.
    let spec = CertSpec::coprocessor("x", Validity::starting_now(DAY));
    let stranger = p256_key();
    assert!(matches!(
        issue_signed_by(&spec, &pki.aik, &key.public_key(), |tbs| {
            Ok::<_, std::convert::Infallible>(Pki::tpm_like_sign(&stranger, tbs))
        }),
        Err(IdentityError::SignatureInvalid)
    ));
    assert!(matches!(
        issue_signed_by(&spec, &pki.aik, &key.public_key(), |_| Err("TPM busy")),
        Err(IdentityError::Signer(_))
    ));

    // --- an instance, and its vEK certificates ---
    let state = dir.path().join("vm");
    let open_store = || {
        Box::new(
            EncryptedStore::open(&state, &host_key, "libtpms")
                .unwrap()
                .0,
        )
    };
    // A key record that is not a coprocessor key (an instance's) is refused.
    {
        let _store = open_store();
        let fake = dir.path().join("fake-identity");
        std::fs::create_dir(&fake).unwrap();
        std::fs::copy(state.join("instance.key"), fake.join("coprocessor.key")).unwrap();
        assert!(matches!(
            CoprocessorKey::open(&fake, &host_key),
            Err(IdentityError::NotACoprocessorKey { .. })
        ));
    }
    let mut e = LibtpmsEngine::start(open_store()).unwrap();
    let validity = Validity::starting_now(365 * DAY);
    // Refused: a coprocessor certificate for another key.
    assert!(matches!(
        provision_ek(&mut e, &key, &pki.aik, &[], &validity),
        Err(IdentityError::Refused(_))
    ));
    let issuers = [pki.aik.clone()];
    let first = provision_ek(&mut e, &key, &coprocessor_cert, &issuers, &validity).unwrap();
    // It started the fresh TPM itself, so it left it waiting for the guest's Startup.
    assert_eq!(rc_of(&run(&mut e, &c::get_random(8))), rc::INITIALIZE);
    startup(&mut e);
    check_stored(&mut e, EkKind::Rsa2048, &first.rsa_cert);
    check_stored(&mut e, EkKind::EccP256, &first.ecc_cert);
    // The chain a verifier needs is in the TPM too: coprocessor cert, then the host AIK's.
    assert_eq!(first.chain_indices, vec![0x01c0_0100, 0x01c0_0101]);
    assert_eq!(
        nv_read_all(&mut e, 0x01c0_0100),
        coprocessor_cert.to_der().unwrap()
    );
    assert_eq!(nv_read_all(&mut e, 0x01c0_0101), pki.aik.to_der().unwrap());
    assert_eq!(nv_read_public(&mut e, 0x01c0_0101).0, 0x6207_2001);

    // The certificates certify the TPM's EKs: a fresh CreatePrimary gives the same keys.
    for (kind, cert) in [
        (EkKind::Rsa2048, &first.rsa_cert),
        (EkKind::EccP256, &first.ecc_cert),
    ] {
        let ek = create_ek(&mut e, kind).unwrap();
        assert!(
            ek.public
                .to_pkey()
                .unwrap()
                .public_eq(&cert.public_key().unwrap()),
            "{} EK",
            kind.name()
        );
        assert_eq!(
            ek.public_area[..2],
            [0x00, if kind == EkKind::Rsa2048 { 0x01 } else { 0x23 }]
        );
        // Without the TPM, from the certificate alone: the same public area, so the same
        // name (what the deep quote binds).
        let from_cert = EkPublic::from_certificate(cert).unwrap();
        assert_eq!(from_cert, ek.public);
        assert_eq!(from_cert.tpmt_public().unwrap(), ek.public_area);
    }
    // The RSA EK is 2048-bit with exponent 65537; the ECC EK is on P-256.
    let rsa = first.rsa_cert.public_key().unwrap().rsa().unwrap();
    assert_eq!(rsa.n().num_bits(), 2048);
    assert_eq!(rsa.e().to_dec_str().unwrap().to_string(), "65537");
    let ec = first.ecc_cert.public_key().unwrap().ec_key().unwrap();
    assert_eq!(ec.group().curve_name(), Some(Nid::X9_62_PRIME256V1));

    // Profile contents, with the TPM's own properties (libtpms: IBM).
    let info = tpm_info(&mut e).unwrap();
    assert_eq!(info.manufacturer, 0x4942_4D00);
    assert_eq!(info.family, "2.0");
    for (cert, usage) in [
        (&first.rsa_cert, "Key Encipherment"),
        (&first.ecc_cert, "Key Agreement"),
    ] {
        let t = text(cert);
        for expected in [
            "Version: 3 (0x2)".to_owned(),
            "Subject: \n".to_owned(),
            "Issuer: CN=vhost-vtpm coprocessor host-under-test".to_owned(),
            "X509v3 Subject Alternative Name: critical".to_owned(),
            format!(
                "DirName:/2.23.133.2.1=id:49424D00/2.23.133.2.2={}/2.23.133.2.3={}",
                info.model,
                info.version_id()
            ),
            "X509v3 Basic Constraints: critical\n                CA:FALSE".to_owned(),
            format!("X509v3 Key Usage: critical\n                {usage}\n"),
            "X509v3 Extended Key Usage: \n                2.23.133.8.1".to_owned(),
            "Policy: 2.25.282264196279953873026584430621905794958".to_owned(),
            "Explicit Text: TCPA Trusted Platform Module Endorsement".to_owned(),
            "X509v3 Subject Directory Attributes".to_owned(),
            "Signature Algorithm: ecdsa-with-SHA256".to_owned(),
        ] {
            assert!(t.contains(&expected), "{expected:?} missing from\n{t}");
        }
        assert_eq!(
            cert.authority_key_id().unwrap().as_slice(),
            coprocessor_cert.subject_key_id().unwrap().as_slice()
        );
        assert!(cert.serial_number().to_bn().unwrap().num_bits() > 120);
        let san = cert.subject_alt_names().unwrap();
        let dir_name = san.get(0).unwrap().directory_name().unwrap();
        let values: Vec<String> = dir_name
            .entries()
            .map(|e| e.data().to_string().unwrap())
            .collect();
        assert_eq!(
            values,
            [
                info.manufacturer_id(),
                info.model.clone(),
                info.version_id()
            ]
        );
        // subjectDirectoryAttributes = tpmSpecification { "2.0", level, revision }.
        let der = cert.to_der().unwrap();
        // (Encoded by hand for level < 128 and 128 <= revision < 32768, as libtpms reports.)
        assert!(info.level < 128 && (128..32768).contains(&info.revision));
        let [_, _, rev_hi, rev_lo] = info.revision.to_be_bytes();
        let spec = [
            &[
                0x06, 0x05, 0x67, 0x81, 0x05, 0x02, 0x10, 0x31, 0x0e, 0x30, 0x0c,
            ][..],
            &[0x0c, 0x03, b'2', b'.', b'0'],
            &[0x02, 0x01, info.level as u8],
            &[0x02, 0x02, rev_hi, rev_lo],
        ]
        .concat();
        assert!(
            der.windows(spec.len()).any(|w| w == spec),
            "tpmSpecification"
        );

        // The chain verifies: vEK ← coprocessor ← host AIK ← root.
        pki.verify(&coprocessor_cert, cert).unwrap();
        // ... and not without the coprocessor certificate.
        let mut store = X509StoreBuilder::new().unwrap();
        store.add_cert(pki.root.clone()).unwrap();
        let store = store.build();
        let mut chain = Stack::new().unwrap();
        chain.push(pki.aik.clone()).unwrap();
        let mut ctx = X509StoreContext::new().unwrap();
        assert!(!ctx.init(&store, cert, &chain, |c| c.verify_cert()).unwrap());
    }

    // The same with the openssl binary on PEM files, as ADR 0008 promises.
    let pem = dir.path().join("pem");
    std::fs::create_dir(&pem).unwrap();
    let ca = write_pem(&pem, "ca.pem", &pki.root);
    let aik = write_pem(&pem, "host-aik.pem", &pki.aik);
    let cop = write_pem(&pem, "coprocessor.pem", &coprocessor_cert);
    let rsa_pem = write_pem(&pem, "vek-rsa.pem", &first.rsa_cert);
    let ecc_pem = write_pem(&pem, "vek-ecc.pem", &first.ecc_cert);
    for strict in [false, true] {
        let mut cmd = Command::new("openssl");
        cmd.arg("verify");
        if strict {
            cmd.arg("-x509_strict");
        }
        let out = cmd
            .arg("-CAfile")
            .arg(&ca)
            .arg("-untrusted")
            .arg(&aik)
            .arg("-untrusted")
            .arg(&cop)
            .arg(&rsa_pem)
            .arg(&ecc_pem)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "openssl verify (strict: {strict}): {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("vek-rsa.pem: OK") && stdout.contains("vek-ecc.pem: OK"));
    }
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&ca)
        .arg("-untrusted")
        .arg(&aik)
        .arg(&rsa_pem)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "verifies without the coprocessor cert"
    );

    // --- re-provisioning (the TPM is running now) replaces both certificates ---
    let second = provision_ek(&mut e, &key, &coprocessor_cert, &[], &validity).unwrap();
    // A shorter chain leaves no stale certificate behind.
    assert_eq!(second.chain_indices, vec![0x01c0_0100]);
    assert_eq!(
        rc::base(rc_of(&run(&mut e, &c::nv_read(0x01c0_0101, 1, 0)))),
        rc::HANDLE
    );
    assert_ne!(
        second.rsa_cert.to_der().unwrap(),
        first.rsa_cert.to_der().unwrap()
    );
    assert_ne!(
        second.ecc_cert.to_der().unwrap(),
        first.ecc_cert.to_der().unwrap()
    );
    assert!(second
        .rsa_cert
        .public_key()
        .unwrap()
        .public_eq(&first.rsa_cert.public_key().unwrap()));
    assert_ne!(
        rc_of(&run(&mut e, &c::get_random(8))),
        rc::INITIALIZE,
        "still running"
    );
    check_stored(&mut e, EkKind::Rsa2048, &second.rsa_cert);
    check_stored(&mut e, EkKind::EccP256, &second.ecc_cert);

    // --- the certificates are durable: they survive an engine restart without save ---
    drop(e);
    let mut e = LibtpmsEngine::start(open_store()).unwrap();
    startup(&mut e);
    check_stored(&mut e, EkKind::Rsa2048, &second.rsa_cert);
    check_stored(&mut e, EkKind::EccP256, &second.ecc_cert);

    // --- a guest that locked the platform hierarchy: a clear error, nothing changed ---
    let disable_platform = CommandBuilder::with_sessions(cc::HIERARCHY_CONTROL)
        .u32(c::TPM_RH_PLATFORM)
        .password_auth(&[])
        .u32(c::TPM_RH_PLATFORM)
        .u8(0)
        .finish();
    assert_eq!(rc_of(&run(&mut e, &disable_platform)), rc::SUCCESS);
    assert!(matches!(
        provision_ek(&mut e, &key, &coprocessor_cert, &[], &validity),
        Err(IdentityError::PlatformUnavailable { .. })
    ));
    check_stored(&mut e, EkKind::Rsa2048, &second.rsa_cert);
    // A power cycle gives the platform hierarchy back, and provisioning works again.
    e.power_cycle().unwrap();
    let third = provision_ek(&mut e, &key, &coprocessor_cert, &[], &validity).unwrap();
    startup(&mut e);
    check_stored(&mut e, EkKind::Rsa2048, &third.rsa_cert);
    check_stored(&mut e, EkKind::EccP256, &third.ecc_cert);
}

// ---------------------------------------------------------------------------------------
// The templates against tpm2-tools, on a swtpm both talk to.

/// A TPM reached over swtpm's TCP data channel (raw commands and responses).
struct TcpTpm {
    stream: TcpStream,
    resp: Vec<u8>,
}

impl Coprocessor for TcpTpm {
    fn driver_name(&self) -> &'static str {
        "swtpm-tcp"
    }

    fn execute(&mut self, command: &mut [u8]) -> coprocessor::Result<&[u8]> {
        let io = |source| coprocessor::Error::SwtpmIo {
            what: "tcp",
            source,
        };
        self.stream.write_all(command).map_err(io)?;
        let mut header = [0u8; 10];
        self.stream.read_exact(&mut header).map_err(io)?;
        let size = u32::from_be_bytes(header[2..6].try_into().unwrap()) as usize;
        self.resp = header.to_vec();
        self.resp.resize(size, 0);
        self.stream.read_exact(&mut self.resp[10..]).map_err(io)?;
        Ok(&self.resp)
    }

    fn power_cycle(&mut self) -> coprocessor::Result<()> {
        Err(coprocessor::Error::Unsupported("power cycle over TCP"))
    }

    fn save(&mut self) -> coprocessor::Result<()> {
        Err(coprocessor::Error::Unsupported("save"))
    }

    fn export_state(&mut self) -> coprocessor::Result<coprocessor::EngineState> {
        Err(coprocessor::Error::Unsupported("export"))
    }

    fn import_state(&mut self, _: &coprocessor::EngineState) -> coprocessor::Result<()> {
        Err(coprocessor::Error::Unsupported("import"))
    }
}

impl TcpTpm {
    /// A fresh connection to `tpm` (drop it before running a tool).
    fn connect(tpm: &HostTpmSimulator) -> TcpTpm {
        TcpTpm {
            stream: tpm.connect().unwrap(),
            resp: Vec::new(),
        }
    }
}

/// Runs a tpm2-tools command in `dir` against `tpm`; returns what it printed.
fn tool(tpm: &HostTpmSimulator, dir: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..])
        .current_dir(dir)
        .env("TPM2TOOLS_TCTI", tpm.tcti());
    testbed::run_tool(&mut cmd).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn installed(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn ek_templates_match_tpm2_createek_and_tools_read_the_certificates() {
    let tools = [
        "swtpm",
        "tpm2_createek",
        "tpm2_flushcontext",
        "tpm2_getekcertificate",
        "tpm2_nvreadpublic",
    ];
    if let Some(missing) = tools.iter().find(|t| !installed(t)) {
        panic!("{missing} is not installed: scripts/setup.sh installs it (swtpm, tpm2-tools)");
    }
    let dir = tempfile::tempdir().unwrap();
    let swtpm = HostTpmSimulator::start(&dir.path().join("swtpm")).unwrap();

    for (kind, alg) in [(EkKind::Rsa2048, "rsa"), (EkKind::EccP256, "ecc")] {
        let ours = {
            let mut tpm = TcpTpm::connect(&swtpm);
            create_ek(&mut tpm, kind).unwrap()
        };
        let public = format!("{alg}.pub");
        let ctx = format!("{alg}.ctx");
        tool(
            &swtpm,
            dir.path(),
            &["tpm2_createek", "-G", alg, "-c", &ctx, "-u", &public],
        );
        tool(&swtpm, dir.path(), &["tpm2_flushcontext", "-t"]);
        // tpm2_createek -u writes a TPM2B_PUBLIC: the size, then the TPMT_PUBLIC.
        let theirs = std::fs::read(dir.path().join(&public)).unwrap();
        assert_eq!(
            usize::from(u16::from_be_bytes([theirs[0], theirs[1]])),
            theirs.len() - 2
        );
        assert_eq!(
            theirs[2..],
            ours.public_area[..],
            "{}: tpm2_createek made another EK (so another template)",
            kind.name()
        );
    }

    // Provision vEK certificates into the swtpm through the same module, then read them with
    // the guest's tools.
    let host_key = generate_host_key_file(&dir.path().join("host.key")).unwrap();
    let key = CoprocessorKey::create(&dir.path().join("id"), &host_key).unwrap();
    let pki = Pki::new();
    let coprocessor_cert = pki.coprocessor_cert(&key);
    let provisioned = {
        let mut tpm = TcpTpm::connect(&swtpm);
        provision_ek(
            &mut tpm,
            &key,
            &coprocessor_cert,
            &[],
            &Validity::starting_now(DAY),
        )
        .unwrap()
    };
    tool(
        &swtpm,
        dir.path(),
        &["tpm2_getekcertificate", "-o", "rsa.der", "-o", "ecc.der"],
    );
    assert_eq!(
        std::fs::read(dir.path().join("rsa.der")).unwrap(),
        provisioned.rsa_cert.to_der().unwrap()
    );
    assert_eq!(
        std::fs::read(dir.path().join("ecc.der")).unwrap(),
        provisioned.ecc_cert.to_der().unwrap()
    );
    let listing = tool(&swtpm, dir.path(), &["tpm2_nvreadpublic"]);
    for index in ["0x1c00002:", "0x1c0000a:"] {
        let entry = listing.split(index).nth(1).unwrap();
        assert!(entry.contains("value: 0x62072001"), "{listing}");
    }
}
