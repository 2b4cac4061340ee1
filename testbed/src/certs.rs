//! Throwaway keys and certificates for tests that need a small PKI (a root, an AIK, a
//! coprocessor, a controller) without running the CA: certificates with a random serial,
//! good for building and verifying chains, nothing else.

use ::openssl::asn1::Asn1Time;
use ::openssl::bn::{BigNum, MsbOption};
use ::openssl::ec::{EcGroup, EcKey};
use ::openssl::hash::MessageDigest;
use ::openssl::nid::Nid;
use ::openssl::pkey::{HasPublic, PKey, PKeyRef, Private};
use ::openssl::x509::extension::BasicConstraints;
use ::openssl::x509::{X509Builder, X509Name, X509Ref, X509};

/// A fresh ECDSA P-256 key.
pub fn p256_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

/// A version 3 certificate of `subject`'s key, named `cn`, with a random serial, valid from
/// now for `days`: issued under `issuer`, or its own issuer when `None`. The caller adds
/// the extensions and signs it.
pub fn builder(
    cn: &str,
    subject: &PKeyRef<impl HasPublic>,
    issuer: Option<&X509Ref>,
    days: u32,
) -> X509Builder {
    let mut name = X509Name::builder().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(120, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(issuer.map_or(&*name, |i| i.subject_name()))
        .unwrap();
    b.set_pubkey(subject).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(days).unwrap())
        .unwrap();
    b
}

/// A CA certificate for `subject`'s key, named `cn` and signed by `signer`, valid for 30
/// days: self-signed (its own issuer) when `issuer` is `None`, else issued under `issuer`.
pub fn ca_cert(
    cn: &str,
    signer: &PKeyRef<Private>,
    subject: &PKeyRef<impl HasPublic>,
    issuer: Option<&X509>,
) -> X509 {
    let mut b = builder(cn, subject, issuer.map(|i| &**i), 30);
    b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
        .unwrap();
    b.sign(signer, MessageDigest::sha256()).unwrap();
    b.build()
}

/// A fresh P-256 key and its self-signed CA certificate named `cn`: a root, or a migration
/// controller's certificate.
pub fn self_signed(cn: &str) -> (PKey<Private>, X509) {
    let key = p256_key();
    let cert = ca_cert(cn, &key, &key, None);
    (key, cert)
}

/// A host's chain as it signs migration packages and controller requests, leaf first: the
/// certificate of `coprocessor`'s key, `CN=vhost-vtpm coprocessor <host>`, issued by a
/// fresh host AIK named `host`, which `root` (whose key is `root_key`) issued.
pub fn coprocessor_chain(
    host: &str,
    root_key: &PKeyRef<Private>,
    root: &X509,
    coprocessor: &PKeyRef<impl HasPublic>,
) -> Vec<X509> {
    let aik_key = p256_key();
    let aik = ca_cert(host, root_key, &aik_key, Some(root));
    let leaf = ca_cert(
        &format!("vhost-vtpm coprocessor {host}"),
        &aik_key,
        coprocessor,
        Some(&aik),
    );
    vec![leaf, aik]
}
