//! The host TPM's identity operations against a real TPM: swtpm, manufactured by
//! `swtpm_setup` with an RSA EK and its certificate (from swtpm's own local CA, configured
//! into the test's temporary directory), reached through tpm2-tss' swtpm TCTI.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use host_tpm::{
    aik_violations, HostTpm, HostTpmError, ObjectBlob, ECC_EK_CERT_INDEX, RSA_EK_CERT_INDEX,
};
use openssl::sha::sha256;
use openssl::x509::X509;
use p256::ecdsa::Signature;
use signature::Signer;
use testbed::openssl::ecdsa_p256_verifies;
use testbed::HostTpmSimulator;
use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::handles::NvIndexTpmHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::{Hierarchy, NvAuth, Provision};
use tss_esapi::structures::{
    Digest, MaxNvBuffer, Name, NvPublicBuilder, Public, SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::Context;

/// A manufactured host TPM (see `HostTpmSimulator::manufacture`) and the local CA
/// certificate that issued its EK certificate.
struct Manufactured {
    tpm: HostTpmSimulator,
    issuer: X509,
}

impl Manufactured {
    fn start(dir: &Path) -> Manufactured {
        let (tpm, ca) = HostTpmSimulator::manufacture(dir).expect("manufacture a host TPM");
        let issuer = X509::from_pem(&std::fs::read(ca.issuer).unwrap()).unwrap();
        Manufactured { tpm, issuer }
    }

    fn connect(&self) -> HostTpm {
        HostTpm::connect(&self.tpm.tcti()).unwrap()
    }
}

/// A marshalled TPMT_PUBLIC, exactly one, as tss-esapi reads it.
fn parse(public: &[u8]) -> Public {
    let parsed = Public::unmarshall(public).unwrap();
    assert_eq!(
        parsed.marshall().unwrap(),
        public,
        "exactly one TPMT_PUBLIC"
    );
    parsed
}

/// The TPM name of a marshalled TPMT_PUBLIC with a SHA-256 name algorithm.
fn name(public: &[u8]) -> Vec<u8> {
    assert_eq!(
        parse(public).name_hashing_algorithm(),
        HashingAlgorithm::Sha256
    );
    [&[0x00, 0x0b][..], &sha256(public)].concat()
}

fn ecc_point(public: &Public) -> (Vec<u8>, Vec<u8>) {
    match public {
        Public::Ecc { unique, .. } => (unique.x().value().to_vec(), unique.y().value().to_vec()),
        other => panic!("not an ECC key: {other:?}"),
    }
}

/// Verifies an ECDSA P-256 signature over SHA-256(data) with the TPM key's public point.
fn verify(public: &Public, data: &[u8], sig: &Signature) -> bool {
    let (r, s) = sig.split_bytes();
    let (x, y) = ecc_point(public);
    ecdsa_p256_verifies(&x, &y, &sha256(data), &r, &s)
}

#[test]
fn ek_certificate_from_nv_certifies_the_rsa_ek() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = Manufactured::start(dir.path());
    let mut host = tpm.connect();

    let der = host
        .read_nv_certificate(RSA_EK_CERT_INDEX)
        .unwrap()
        .expect("swtpm_setup stored an RSA EK certificate");
    let cert = X509::from_der(&der).unwrap();
    assert_eq!(cert.to_der().unwrap(), der, "exactly the DER certificate");
    assert!(cert.verify(&tpm.issuer.public_key().unwrap()).unwrap());

    let ek = parse(&host.ek_public_rsa().unwrap());
    let Public::Rsa {
        parameters,
        unique: modulus,
        ..
    } = &ek
    else {
        panic!("the EK is not RSA: {ek:?}");
    };
    assert_eq!(
        (parameters.key_bits(), parameters.exponent().value()),
        (RsaKeyBits::Rsa2048, 0)
    );
    assert_eq!(
        parameters.symmetric_definition_object(),
        SymmetricDefinitionObject::AES_128_CFB
    );
    let rsa = cert.public_key().unwrap().rsa().unwrap();
    assert_eq!(rsa.n().to_vec(), modulus.value());
    assert_eq!(rsa.e().to_vec(), [1, 0, 1]);
    // The EK is a decryption key, not something a CA may certify as an attestation key.
    assert!(!aik_violations(&ek).is_empty());

    // swtpm_setup makes its ECC EK on NIST P-384 (high range, 0x01c00016), so the P-256
    // index stays empty.
    assert_eq!(host.read_nv_certificate(ECC_EK_CERT_INDEX).unwrap(), None);
    let p384 = host.read_nv_certificate(0x01c0_0016).unwrap().unwrap();
    let p384 = X509::from_der(&p384).unwrap();
    assert!(p384.verify(&tpm.issuer.public_key().unwrap()).unwrap());

    assert!(matches!(
        host.read_nv_certificate(0x8100_0001),
        Err(HostTpmError::BadNvIndex(0x8100_0001))
    ));
}

#[test]
fn a_tpm_without_ek_certificate_reads_none() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = HostTpmSimulator::start(&dir.path().join("bare")).unwrap();
    let mut host = HostTpm::connect(&tpm.tcti()).unwrap();
    assert_eq!(host.read_nv_certificate(RSA_EK_CERT_INDEX).unwrap(), None);
    // The EK itself is there on any TPM: derived from the endorsement seed.
    let ek = host.ek_public_rsa().unwrap();
    assert!(matches!(parse(&ek), Public::Rsa { .. }));
    // ... and the same every time.
    assert_eq!(
        host.ek_public_rsa().unwrap(),
        ek,
        "the EK is derived again from the same seed"
    );
}

/// Defines NV indices through tss-esapi (owner-written) and fills them.
fn define_nv(tcti: &str, indices: &[(u32, NvIndexAttributesBuilder, usize, Option<&[u8]>)]) {
    let mut ctx = Context::new(tcti.parse().unwrap()).unwrap();
    for (index, attributes, size, contents) in indices {
        let public = NvPublicBuilder::new()
            .with_nv_index(NvIndexTpmHandle::new(*index).unwrap())
            .with_index_name_algorithm(HashingAlgorithm::Sha256)
            .with_index_attributes(attributes.with_owner_write(true).build().unwrap())
            .with_data_area_size(*size)
            .build()
            .unwrap();
        let handle = ctx
            .execute_with_nullauth_session(|c| c.nv_define_space(Provision::Owner, None, public))
            .unwrap();
        for (n, chunk) in contents.unwrap_or_default().chunks(1024).enumerate() {
            ctx.execute_with_nullauth_session(|c| {
                c.nv_write(
                    NvAuth::Owner,
                    handle,
                    MaxNvBuffer::try_from(chunk.to_vec()).unwrap(),
                    (n * 1024) as u16,
                )
            })
            .unwrap();
        }
    }
}

#[test]
fn nv_certificates_are_read_in_chunks_with_the_authorization_the_index_allows() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = HostTpmSimulator::start(&dir.path().join("tpm")).unwrap();
    // A 1800-byte DER SEQUENCE in a 2000-byte index padded with 0xff.
    let mut cert = vec![0x30, 0x82, 0x07, 0x04];
    cert.extend((0..1796u32).map(|i| i as u8));
    let mut padded = cert.clone();
    padded.resize(2000, 0xff);
    let not_der = b"not a certificate".to_vec();
    define_nv(
        &tpm.tcti(),
        &[
            // Owner-readable only, so read with owner authorization.
            (
                0x01c0_000a,
                NvIndexAttributesBuilder::new().with_owner_read(true),
                2000,
                Some(&padded),
            ),
            // Readable with its own (empty) authorization only.
            (
                0x0150_0001,
                NvIndexAttributesBuilder::new().with_auth_read(true),
                not_der.len(),
                Some(&not_der),
            ),
            // Defined, never written.
            (
                0x0150_0002,
                NvIndexAttributesBuilder::new().with_auth_read(true),
                100,
                None,
            ),
            // Readable by the platform only.
            (
                0x0150_0003,
                NvIndexAttributesBuilder::new().with_pp_read(true),
                10,
                Some(b"0123456789"),
            ),
        ],
    );
    let mut host = HostTpm::connect(&tpm.tcti()).unwrap();
    assert_eq!(
        host.read_nv_certificate(ECC_EK_CERT_INDEX).unwrap(),
        Some(cert)
    );
    assert_eq!(
        host.read_nv_certificate(0x0150_0001).unwrap(),
        Some(not_der)
    );
    assert_eq!(host.read_nv_certificate(0x0150_0002).unwrap(), None);
    assert!(matches!(
        host.read_nv_certificate(0x0150_0003),
        Err(HostTpmError::NvNotReadable(0x0150_0003))
    ));
}

/// ReadPublic's name for an object blob, through tss-esapi on its own connection.
fn tpm_reported_name(tcti: &str, blob: &ObjectBlob) -> Vec<u8> {
    let mut ctx = Context::new(tcti.parse().unwrap()).unwrap();
    let srk_template = HostTpm::srk_template().unwrap();
    let srk = ctx
        .execute_with_nullauth_session(|c| {
            c.create_primary(Hierarchy::Owner, srk_template, None, None, None, None)
        })
        .unwrap()
        .key_handle;
    let key = ctx
        .execute_with_nullauth_session(|c| {
            c.load(
                srk,
                blob.private.clone().try_into().unwrap(),
                Public::unmarshall(&blob.public).unwrap(),
            )
        })
        .unwrap();
    let (_, name, _) = ctx.read_public(key).unwrap();
    ctx.flush_context(key.into()).unwrap();
    ctx.flush_context(srk.into()).unwrap();
    name.value().to_vec()
}

#[test]
fn aik_is_a_restricted_p256_signing_key_with_the_tpm_reported_name() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = HostTpmSimulator::start(&dir.path().join("tpm")).unwrap();
    let blob = {
        let mut host = HostTpm::connect(&tpm.tcti()).unwrap();
        host.create_aik().unwrap()
    };
    let blob = ObjectBlob::from_bytes(&blob.to_bytes()).unwrap();
    let public = parse(&blob.public);
    assert_eq!(aik_violations(&public), Vec::<String>::new());
    let (x, y) = ecc_point(&public);
    assert_eq!((x.len(), y.len()), (32, 32));
    // The host connection is closed: swtpm serves one client at a time.
    assert_eq!(name(&blob.public), tpm_reported_name(&tpm.tcti(), &blob));
}

#[test]
fn sign_restricted_short_and_long_data_verifies_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = HostTpmSimulator::start(&dir.path().join("tpm")).unwrap();
    let mut host = HostTpm::connect(&tpm.tcti()).unwrap();
    let aik = host.create_aik().unwrap();
    let public = parse(&aik.public);
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 0x30) as u8).collect();
    // Through TPM2_Hash (up to 1024 bytes; data under 4 bytes included, which only it
    // tickets), then through the hash-sequence commands, then TPM2_Hash again.
    for len in [0, 1, 100, 1024, 1025, 2048, 2049, 5000, 300] {
        let sig = host.sign_restricted(&aik, &data[..len]).unwrap();
        assert!(verify(&public, &data[..len], &sig), "{len} bytes");
        assert!(!verify(&public, b"something else", &sig));
    }
    // Other operations work after the raw connection closed the ESAPI one.
    host.sign_restricted(&aik, &data[..2000]).unwrap();
    let sealed = host.seal(b"s", &[]).unwrap();
    assert_eq!(*host.unseal(&sealed).unwrap(), b"s");

    // A restricted key signs nothing that could pass for a TPM-generated structure.
    let mut forged = b"\xffTCG".to_vec();
    forged.extend_from_slice(&[0; 60]);
    let err = host.sign_restricted(&aik, &forged).unwrap_err();
    assert!(matches!(err, HostTpmError::Tpm { .. }), "{err}");
    forged.extend_from_slice(&[0; 2000]);
    let err = host.sign_restricted(&aik, &forged).unwrap_err();
    assert!(matches!(err, HostTpmError::Tpm { .. }), "{err}");

    // A key that is not an attestation key is refused before the TPM sees it.
    let not_aik = ObjectBlob {
        public: host.ek_public_rsa().unwrap(),
        private: aik.private.clone(),
    };
    match host.sign_restricted(&not_aik, b"data") {
        Err(HostTpmError::NotAnAttestationKey(why)) => {
            assert!(why.iter().any(|w| w.contains("decrypt")), "{why:?}")
        }
        other => panic!("expected NotAnAttestationKey, got {other:?}"),
    }
    // A blob from another TPM does not load (an I/O-free TPM error, not a panic).
    let other = HostTpmSimulator::start(&dir.path().join("other")).unwrap();
    let mut other = HostTpm::connect(&other.tcti()).unwrap();
    for len in [10, 3000] {
        let err = other.sign_restricted(&aik, &data[..len]).unwrap_err();
        assert!(
            matches!(
                err,
                HostTpmError::Tpm {
                    operation: "Load (AIK)",
                    ..
                }
            ),
            "{err}"
        );
    }

    // The same key as a `signature::Signer`, as the coprocessor certificate is signed.
    {
        let signer = host.aik_signer(&aik).unwrap();
        for len in [100, 3000] {
            let sig: Signature = signer.try_sign(&data[..len]).unwrap();
            assert!(verify(&public, &data[..len], &sig), "{len} bytes");
        }
        // The TPM's refusal is the signature error's source.
        let err = signer.try_sign(&forged).unwrap_err();
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(source.contains("host TPM"), "{source}");
    }
    assert!(matches!(
        host.aik_signer(&not_aik),
        Err(HostTpmError::NotAnAttestationKey(_))
    ));
    let err = other
        .aik_signer(&aik)
        .unwrap()
        .try_sign(b"tbs")
        .unwrap_err();
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("Load (AIK)"), "{source}");
    // A public area with trailing bytes is no attestation key.
    let mut trailing = aik.clone();
    trailing.public.push(0);
    assert!(matches!(
        host.sign_restricted(&trailing, b"data"),
        Err(HostTpmError::NotAnAttestationKey(_))
    ));
}

/// TPM2_MakeCredential by the TPM itself, with the EK loaded as a public-only object (what
/// the CA does in software).
fn make_credential(tcti: &str, ek_public: &[u8], name: &[u8], secret: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut ctx = Context::new(tcti.parse().unwrap()).unwrap();
    let ek = ctx
        .load_external_public(Public::unmarshall(ek_public).unwrap(), Hierarchy::Null)
        .unwrap();
    let (id_object, encrypted_secret) = ctx
        .make_credential(
            ek,
            Digest::try_from(secret.to_vec()).unwrap(),
            Name::try_from(name.to_vec()).unwrap(),
        )
        .unwrap();
    ctx.flush_context(ek.into()).unwrap();
    (
        id_object.value().to_vec(),
        encrypted_secret.value().to_vec(),
    )
}

#[test]
fn activate_credential_recovers_the_secret_only_for_the_named_key() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = Manufactured::start(dir.path());
    let (aik, other_aik, ek_public) = {
        let mut host = tpm.connect();
        (
            host.create_aik().unwrap(),
            host.create_aik().unwrap(),
            host.ek_public_rsa().unwrap(),
        )
    };
    let aik_name = name(&aik.public);
    let other_name = name(&other_aik.public);
    let secret = [0x5a; 32];
    let (blob, encrypted) = make_credential(&tpm.tpm.tcti(), &ek_public, &aik_name, &secret);
    let (other_blob, other_encrypted) =
        make_credential(&tpm.tpm.tcti(), &ek_public, &other_name, &secret);

    let mut host = tpm.connect();
    assert_eq!(
        *host.activate_credential(&aik, &blob, &encrypted).unwrap(),
        secret
    );
    // Made for another key's name: the integrity check fails.
    let err = host
        .activate_credential(&aik, &other_blob, &other_encrypted)
        .unwrap_err();
    assert!(matches!(err, HostTpmError::ActivationFailed(_)), "{err}");
    assert!(
        err.to_string().contains("credential activation failed"),
        "{err}"
    );
    // A secret that does not decrypt with this EK.
    let mut bad = encrypted.clone();
    bad[10] ^= 1;
    let err = host.activate_credential(&aik, &blob, &bad).unwrap_err();
    assert!(matches!(err, HostTpmError::ActivationFailed(_)), "{err}");
    // A tampered credential.
    let mut bad = blob.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let err = host
        .activate_credential(&aik, &bad, &encrypted)
        .unwrap_err();
    assert!(matches!(err, HostTpmError::ActivationFailed(_)), "{err}");
    // Nothing leaked: the same activation still works (the TPM holds 3 transient objects).
    for _ in 0..3 {
        assert_eq!(
            *host
                .activate_credential(&other_aik, &other_blob, &other_encrypted)
                .unwrap(),
            secret
        );
    }
}
