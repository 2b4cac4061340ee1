//! Throwaway keys and certificates for tests that need a small PKI (a root, an AIK, a
//! coprocessor, a controller) without running the CA: every certificate here is a CA
//! certificate valid for 30 days with a random serial, good for building and verifying
//! chains, nothing else.

use ::openssl::asn1::Asn1Time;
use ::openssl::bn::BigNum;
use ::openssl::ec::{EcGroup, EcKey};
use ::openssl::hash::MessageDigest;
use ::openssl::nid::Nid;
use ::openssl::pkey::{HasPublic, PKey, PKeyRef, Private};
use ::openssl::x509::extension::BasicConstraints;
use ::openssl::x509::{X509Name, X509};

/// A fresh ECDSA P-256 key.
pub fn p256_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

/// A CA certificate for `subject`'s key, named `cn` and signed by `signer`: self-signed
/// (its own issuer) when `issuer` is `None`, else issued under `issuer`.
pub fn ca_cert(
    cn: &str,
    signer: &PKeyRef<Private>,
    subject: &PKeyRef<impl HasPublic>,
    issuer: Option<&X509>,
) -> X509 {
    let mut name = X509Name::builder().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let serial = BigNum::from_u32(random_serial())
        .unwrap()
        .to_asn1_integer()
        .unwrap();
    b.set_serial_number(&serial).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(issuer.map_or(&name, |i| i.subject_name()))
        .unwrap();
    b.set_pubkey(subject).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
        .unwrap();
    b.sign(signer, MessageDigest::sha256()).unwrap();
    b.build()
}

/// A random, non-zero serial number.
fn random_serial() -> u32 {
    let mut b = [0u8; 4];
    ::openssl::rand::rand_bytes(&mut b).unwrap();
    u32::from_be_bytes(b) | 1
}
