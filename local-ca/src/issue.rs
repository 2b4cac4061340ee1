//! Building and signing the certificates the CA issues.
//!
//! This module owns the profile of each certificate (ADR 0008): the self-signed root, the
//! HTTPS server certificate, and the two kinds of AIK certificate. Every one is signed with
//! ECDSA P-256 / SHA-256 by the CA key, has a random positive 127-bit serial, a subject key
//! identifier and (except the root) an authority key identifier.

use std::net::IpAddr;

use openssl::asn1::{Asn1Integer, Asn1Object, Asn1OctetString, Asn1Time};

/// How far before its issue time a certificate's validity starts.
pub const BACKDATE_SECS: i64 = 300;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{HasPublic, PKey, PKeyRef, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509Extension, X509NameBuilder, X509Ref, X509};
use serde::{Deserialize, Serialize};

use crate::util::{now_unix, random};

/// `tcg-kp-AIKCertificate`: extended key usage of AIK certificates.
pub const TCG_KP_AIK_CERTIFICATE: &str = "2.23.133.8.3";
/// `tcg-kp-EKCertificate`: extended key usage of EK certificates.
pub const TCG_KP_EK_CERTIFICATE: &str = "2.23.133.8.1";
/// Non-critical extension of host AIK certificates holding the SHA-256 of the host's EK
/// certificate (DER) as an OCTET STRING. The arc is 2.25 (UUID-derived OIDs, ITU-T X.667)
/// with the UUID 5a6b3f16-c6bf-4abc-920b-dbc8f3ce4aa0.
pub const HOST_EK_CERT_HASH_OID: &str = "2.25.120187374980839550196451616868684155552";

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("invalid certificate subject {0:?}")]
    BadSubject(String),
    #[error("invalid TLS name {0:?}: expected a DNS name or an IP address")]
    BadTlsName(String),
    #[error("validity of {0} seconds is out of range")]
    BadValidity(u64),
    #[error("OpenSSL: {0}")]
    Crypto(#[from] ErrorStack),
}

/// The two kinds of enrolled TPM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The host's TPM: its AIK certificate is an intermediate CA (it signs the
    /// coprocessor certificate).
    Host,
    /// A vTPM: its AIK certificate is a leaf.
    Vtpm,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Host => "host",
            Kind::Vtpm => "vtpm",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host" => Ok(Kind::Host),
            "vtpm" => Ok(Kind::Vtpm),
            other => Err(format!("unknown kind {other:?}: expected host or vtpm")),
        }
    }
}

/// A new ECC P-256 key.
pub fn generate_key() -> Result<PKey<Private>, ErrorStack> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    PKey::from_ec_key(EcKey::generate(&group)?)
}

/// A random positive serial of at most 127 bits, with its top byte non-zero.
pub fn random_serial() -> Result<Asn1Integer, ErrorStack> {
    let mut b = random(16)?;
    b[0] = (b[0] & 0x7f) | 0x01;
    BigNum::from_slice(&b)?.to_asn1_integer()
}

/// Common part of every certificate: version 3, serial, names, key, validity.
fn builder<T: HasPublic>(
    subject_cn: &str,
    issuer: Option<&X509Ref>,
    key: &PKeyRef<T>,
    validity_secs: u64,
) -> Result<X509Builder, IssueError> {
    if subject_cn.is_empty() || subject_cn.len() > 64 {
        return Err(IssueError::BadSubject(subject_cn.to_string()));
    }
    let validity = i64::try_from(validity_secs)
        .ok()
        .filter(|v| *v > 0 && *v < 200 * 365 * 86_400)
        .ok_or(IssueError::BadValidity(validity_secs))?;
    let now = i64::try_from(now_unix()).unwrap_or(0);
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, subject_cn)?;
    let name = name.build();
    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    b.set_serial_number(&*random_serial()?)?;
    b.set_subject_name(&name)?;
    match issuer {
        Some(i) => b.set_issuer_name(i.subject_name())?,
        None => b.set_issuer_name(&name)?,
    }
    b.set_pubkey(key)?;
    // Valid from a little before now: a verifier (a guest, say) whose clock lags the CA's
    // by up to BACKDATE_SECS must not see a certificate that is "not yet valid".
    b.set_not_before(&*Asn1Time::from_unix(now - BACKDATE_SECS)?)?;
    b.set_not_after(&*Asn1Time::from_unix(now + validity)?)?;
    Ok(b)
}

/// The self-signed root: CA:TRUE, keyCertSign | cRLSign, subject key identifier.
pub fn root_cert(key: &PKeyRef<Private>, cn: &str, validity_secs: u64) -> Result<X509, IssueError> {
    let mut b = builder(cn, None, key, validity_secs)?;
    b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()?,
    )?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
    b.append_extension(ski)?;
    b.sign(key, MessageDigest::sha256())?;
    Ok(b.build())
}

fn finish_issued(
    mut b: X509Builder,
    ca_key: &PKeyRef<Private>,
    ca_cert: &X509Ref,
) -> Result<X509, IssueError> {
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(Some(ca_cert), None))?;
    b.append_extension(ski)?;
    let aki = AuthorityKeyIdentifier::new()
        .keyid(true)
        .build(&b.x509v3_context(Some(ca_cert), None))?;
    b.append_extension(aki)?;
    b.sign(ca_key, MessageDigest::sha256())?;
    Ok(b.build())
}

/// The HTTPS server certificate for `names` (DNS names or IP addresses; the first is the CN).
pub fn tls_cert(
    ca_key: &PKeyRef<Private>,
    ca_cert: &X509Ref,
    key: &PKeyRef<Private>,
    names: &[String],
    validity_secs: u64,
) -> Result<X509, IssueError> {
    let first = names
        .first()
        .ok_or_else(|| IssueError::BadTlsName(String::new()))?;
    let mut b = builder(first, Some(ca_cert), key, validity_secs)?;
    b.append_extension(BasicConstraints::new().critical().build()?)?;
    b.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
    b.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
    let mut san = SubjectAlternativeName::new();
    for n in names {
        if n.parse::<IpAddr>().is_ok() {
            san.ip(n);
        } else if !n.is_empty()
            && n.len() <= 253
            && n.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'*')
        {
            san.dns(n);
        } else {
            return Err(IssueError::BadTlsName(n.clone()));
        }
    }
    let san = san.build(&b.x509v3_context(Some(ca_cert), None))?;
    b.append_extension(san)?;
    finish_issued(b, ca_key, ca_cert)
}

/// An AIK certificate.
///
/// * host: CA:TRUE pathlen:1, keyCertSign | digitalSignature, EKU tcg-kp-AIKCertificate,
///   and [`HOST_EK_CERT_HASH_OID`] = SHA-256 of the host EK certificate (`ek_cert_sha256`);
/// * vTPM: CA:FALSE, digitalSignature, EKU tcg-kp-AIKCertificate.
pub fn aik_cert<T: HasPublic>(
    ca_key: &PKeyRef<Private>,
    ca_cert: &X509Ref,
    kind: Kind,
    subject: &str,
    aik: &PKeyRef<T>,
    ek_cert_sha256: &[u8],
    validity_secs: u64,
) -> Result<X509, IssueError> {
    let mut b = builder(subject, Some(ca_cert), aik, validity_secs)?;
    match kind {
        Kind::Host => {
            b.append_extension(BasicConstraints::new().critical().ca().pathlen(1).build()?)?;
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .digital_signature()
                    .build()?,
            )?;
        }
        Kind::Vtpm => {
            b.append_extension(BasicConstraints::new().critical().build()?)?;
            b.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
        }
    }
    b.append_extension(
        ExtendedKeyUsage::new()
            .other(TCG_KP_AIK_CERTIFICATE)
            .build()?,
    )?;
    if kind == Kind::Host {
        b.append_extension(ek_hash_extension(ek_cert_sha256)?)?;
    }
    finish_issued(b, ca_key, ca_cert)
}

/// The [`HOST_EK_CERT_HASH_OID`] extension: an OCTET STRING holding the hash.
fn ek_hash_extension(sha256: &[u8]) -> Result<X509Extension, ErrorStack> {
    let mut der = vec![0x04, sha256.len() as u8];
    der.extend_from_slice(sha256);
    X509Extension::new_from_der(
        &*Asn1Object::from_str(HOST_EK_CERT_HASH_OID)?,
        false,
        &*Asn1OctetString::new_from_bytes(&der)?,
    )
}

/// The EK certificate hash a host AIK certificate carries, if any.
pub fn host_ek_cert_hash(cert: &X509Ref) -> Option<Vec<u8>> {
    // Find the extension in the DER: OID, optional critical flag, OCTET STRING wrapping the
    // inner OCTET STRING. Searching for the encoded OID is enough for our own certificates.
    let der = cert.to_der().ok()?;
    let oid_der = oid_body(HOST_EK_CERT_HASH_OID)?;
    let mut needle = vec![0x06, oid_der.len() as u8];
    needle.extend_from_slice(&oid_der);
    let pos = der.windows(needle.len()).position(|w| w == needle)?;
    let rest = &der[pos + needle.len()..];
    // Skip BOOLEAN critical if present.
    let rest = if rest.first() == Some(&0x01) {
        rest.get(3..)?
    } else {
        rest
    };
    // extnValue OCTET STRING (short form length), then the inner OCTET STRING.
    if rest.first() != Some(&0x04) || rest.get(2) != Some(&0x04) {
        return None;
    }
    let len = usize::from(*rest.get(3)?);
    rest.get(4..4 + len).map(<[u8]>::to_vec)
}

/// The DER body of a dotted OBJECT IDENTIFIER (without tag and length); arcs up to 128 bits.
fn oid_body(dotted: &str) -> Option<Vec<u8>> {
    let arcs: Vec<u128> = dotted
        .split('.')
        .map(|a| a.parse().ok())
        .collect::<Option<_>>()?;
    let (first, second) = (*arcs.first()?, *arcs.get(1)?);
    let mut out = Vec::new();
    for arc in std::iter::once(first.checked_mul(40)?.checked_add(second)?)
        .chain(arcs[2..].iter().copied())
    {
        let mut groups = vec![(arc & 0x7f) as u8];
        let mut rest = arc >> 7;
        while rest != 0 {
            groups.push((rest & 0x7f) as u8 | 0x80);
            rest >>= 7;
        }
        out.extend(groups.iter().rev());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (PKey<Private>, X509) {
        let key = generate_key().unwrap();
        let cert = root_cert(&key, "test root", 3600).unwrap();
        (key, cert)
    }

    fn text(cert: &X509Ref) -> String {
        let mut child = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-text"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&cert.to_pem().unwrap())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn root_is_a_self_signed_ca() {
        let (key, cert) = ca();
        assert!(cert.verify(&key).unwrap());
        let t = text(&cert);
        assert!(t.contains("CA:TRUE"), "{t}");
        assert!(t.contains("Certificate Sign, CRL Sign"), "{t}");
        assert!(t.contains("Subject Key Identifier"), "{t}");
    }

    #[test]
    fn host_aik_certificate_has_the_profile() {
        let (ca_key, ca_cert) = ca();
        let aik = generate_key().unwrap();
        let hash = [0xab; 32];
        let cert = aik_cert(&ca_key, &ca_cert, Kind::Host, "host-1", &aik, &hash, 60).unwrap();
        assert!(cert.verify(&ca_key).unwrap());
        let t = text(&cert);
        assert!(t.contains("CA:TRUE, pathlen:1"), "{t}");
        assert!(t.contains("Digital Signature, Certificate Sign"), "{t}");
        assert!(t.contains("2.23.133.8.3"), "{t}");
        assert!(t.contains(HOST_EK_CERT_HASH_OID), "{t}");
        assert!(t.contains("Authority Key Identifier"), "{t}");
        assert!(t.contains("CN = host-1"), "{t}");
        assert_eq!(host_ek_cert_hash(&cert).unwrap(), hash);
    }

    #[test]
    fn vtpm_aik_certificate_is_a_leaf() {
        let (ca_key, ca_cert) = ca();
        let aik = generate_key().unwrap();
        let cert = aik_cert(&ca_key, &ca_cert, Kind::Vtpm, "vm-1", &aik, &[], 60).unwrap();
        let t = text(&cert);
        assert!(t.contains("CA:FALSE"), "{t}");
        assert!(!t.contains("Certificate Sign"), "{t}");
        assert!(t.contains("2.23.133.8.3"), "{t}");
        assert!(!t.contains(HOST_EK_CERT_HASH_OID), "{t}");
        assert_eq!(host_ek_cert_hash(&cert), None);
    }

    #[test]
    fn tls_certificate_names_dns_and_ip() {
        let (ca_key, ca_cert) = ca();
        let key = generate_key().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let cert = tls_cert(&ca_key, &ca_cert, &key, &names, 60).unwrap();
        let t = text(&cert);
        assert!(t.contains("DNS:localhost"), "{t}");
        assert!(t.contains("IP Address:127.0.0.1"), "{t}");
        assert!(t.contains("TLS Web Server Authentication"), "{t}");
        assert!(matches!(
            tls_cert(&ca_key, &ca_cert, &key, &["a b".to_string()], 60),
            Err(IssueError::BadTlsName(_))
        ));
    }

    #[test]
    fn oid_encoding_matches_openssl() {
        // 1.2.840.10045.4.3.2 (ecdsa-with-SHA256) is 2a 86 48 ce 3d 04 03 02.
        assert_eq!(
            oid_body("1.2.840.10045.4.3.2").unwrap(),
            [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]
        );
        let ext = ek_hash_extension(&[1; 32]).unwrap();
        let der = ext.to_der().unwrap();
        let body = oid_body(HOST_EK_CERT_HASH_OID).unwrap();
        assert!(der.windows(body.len()).any(|w| w == body));
    }

    #[test]
    fn serials_are_positive_and_distinct() {
        let a = random_serial().unwrap().to_bn().unwrap();
        let b = random_serial().unwrap().to_bn().unwrap();
        assert!(!a.is_negative());
        assert_ne!(a, b);
        assert_eq!(a.num_bytes(), 16);
    }
}
