//! Building and signing the certificates the CA issues.
//!
//! This module owns the profile of each certificate (ADR 0008): the self-signed root, the
//! HTTPS server certificate, and the two kinds of AIK certificate. Every one is signed with
//! ECDSA P-256 / SHA-256 by the CA key, has a random positive 127-bit serial, a subject key
//! identifier and (except the root) an authority key identifier. AIK certificates carry the
//! CA's CRL distribution point when the CA knows its URL (ADR 0012): the host signs the
//! coprocessor and vEK certificates with the same point, naming this CA as their CRL
//! issuer, so one (indirect) CRL covers the whole chain. No certificate outlives the root.

use std::net::IpAddr;

use der::asn1::{Ia5String, OctetString};
use der::{Decode, Encode};
use openssl::asn1::{Asn1Integer, Asn1Object, Asn1OctetString, Asn1Time};
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

/// How far before its issue time a certificate's validity starts.
pub const BACKDATE_SECS: i64 = 300;

/// `tcg-kp-AIKCertificate`: extended key usage of AIK certificates.
pub const TCG_KP_AIK_CERTIFICATE: &str = "2.23.133.8.3";
/// Non-critical extension of host AIK certificates holding the SHA-256 of the host's EK
/// certificate (DER) as an OCTET STRING. The arc is 2.25 (UUID-derived OIDs, ITU-T X.667)
/// with the UUID 5a6b3f16-c6bf-4abc-920b-dbc8f3ce4aa0.
pub const HOST_EK_CERT_HASH_OID: &str = "2.25.120187374980839550196451616868684155552";
/// Non-critical extension of vTPM AIK (vAIK) certificates holding the SHA-256 of the vEK's
/// SubjectPublicKeyInfo (DER) as an OCTET STRING: the endorsement key the vAIK proved, by
/// credential activation, to live next to. The key rather than its certificate, because vEK
/// certificates are re-issued (migration) while the vEK stays. A verifier of a deep quote
/// binds the vAIK to the vEK through it (vtpm-verify). UUID
/// 445cc84c-f3bb-4577-afb0-a5757f6215af.
pub const VTPM_EK_KEY_HASH_OID: &str = "2.25.90869257603051819483422582930302703023";

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("invalid certificate subject {0:?}")]
    BadSubject(String),
    #[error("invalid TLS name {0:?}: expected a DNS name or an IP address")]
    BadTlsName(String),
    #[error("validity of {0} seconds is out of range")]
    BadValidity(u64),
    #[error("invalid CRL distribution point URL {0:?}")]
    BadCrlUrl(String),
    #[error("the CA root has expired: it cannot issue")]
    IssuerExpired,
    #[error("OpenSSL: {0}")]
    Crypto(#[from] ErrorStack),
    #[error("DER: {0}")]
    Der(#[from] der::Error),
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

/// A kind that is neither `host` nor `vtpm`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown kind {0:?}: expected host or vtpm")]
pub struct UnknownKind(pub String);

impl std::str::FromStr for Kind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host" => Ok(Kind::Host),
            "vtpm" => Ok(Kind::Vtpm),
            other => Err(UnknownKind(other.to_string())),
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
    // Never past the issuer's notAfter: a chain is only as valid as its shortest-lived
    // certificate, and one that outlives its issuer only hides when the chain really ends.
    let mut not_after = now + validity;
    if let Some(i) = issuer {
        let end = crate::util::asn1_to_unix(i.not_after())?;
        if end <= now {
            return Err(IssueError::IssuerExpired);
        }
        not_after = not_after.min(end);
    }
    b.set_not_after(&*Asn1Time::from_unix(not_after)?)?;
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

/// An AIK certificate, valid for `validity_secs` but never past the root's notAfter.
///
/// * host: CA:TRUE pathlen:1, keyCertSign | digitalSignature, EKU tcg-kp-AIKCertificate,
///   and [`HOST_EK_CERT_HASH_OID`] = `endorsement_sha256`, the SHA-256 of the host EK
///   certificate;
/// * vTPM: CA:FALSE, digitalSignature, EKU tcg-kp-AIKCertificate, and (when
///   `endorsement_sha256` is not empty) [`VTPM_EK_KEY_HASH_OID`] = `endorsement_sha256`,
///   the SHA-256 of the vEK's SubjectPublicKeyInfo;
/// * with `crl_url`: cRLDistributionPoints, one point with that URI as its full name.
#[allow(clippy::too_many_arguments)]
pub fn aik_cert<T: HasPublic>(
    ca_key: &PKeyRef<Private>,
    ca_cert: &X509Ref,
    kind: Kind,
    subject: &str,
    aik: &PKeyRef<T>,
    endorsement_sha256: &[u8],
    validity_secs: u64,
    crl_url: Option<&str>,
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
    match kind {
        Kind::Host => b.append_extension(ek_hash_extension(
            HOST_EK_CERT_HASH_OID,
            endorsement_sha256,
        )?)?,
        Kind::Vtpm if !endorsement_sha256.is_empty() => {
            b.append_extension(ek_hash_extension(VTPM_EK_KEY_HASH_OID, endorsement_sha256)?)?
        }
        Kind::Vtpm => {}
    }
    if let Some(url) = crl_url {
        b.append_extension(crl_distribution_points(url)?)?;
    }
    finish_issued(b, ca_key, ca_cert)
}

/// The cRLDistributionPoints extension of CA-issued certificates: one distribution point
/// whose full name is `url` (the CA is the CRL issuer itself, so no cRLIssuer).
pub fn crl_distribution_points(url: &str) -> Result<X509Extension, IssueError> {
    use x509_cert::ext::pkix::crl::dp::DistributionPoint;
    use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
    use x509_cert::ext::pkix::CrlDistributionPoints;
    if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() > 2048 {
        return Err(IssueError::BadCrlUrl(url.to_string()));
    }
    let uri = Ia5String::new(url).map_err(|_| IssueError::BadCrlUrl(url.to_string()))?;
    let points = CrlDistributionPoints(vec![DistributionPoint {
        distribution_point: Some(DistributionPointName::FullName(vec![
            GeneralName::UniformResourceIdentifier(uri),
        ])),
        reasons: None,
        crl_issuer: None,
    }]);
    Ok(X509Extension::new_from_der(
        &*Asn1Object::from_str("2.5.29.31")?,
        false,
        &*Asn1OctetString::new_from_bytes(&points.to_der()?)?,
    )?)
}

/// A hash extension ([`HOST_EK_CERT_HASH_OID`], [`VTPM_EK_KEY_HASH_OID`]): an OCTET STRING
/// holding the hash.
fn ek_hash_extension(oid: &str, sha256: &[u8]) -> Result<X509Extension, IssueError> {
    Ok(X509Extension::new_from_der(
        &*Asn1Object::from_str(oid)?,
        false,
        &*Asn1OctetString::new_from_bytes(&OctetString::new(sha256)?.to_der()?)?,
    )?)
}

/// The EK certificate hash a host AIK certificate carries, if any: the contents of the
/// OCTET STRING in its (single) [`HOST_EK_CERT_HASH_OID`] extension, a SHA-256.
pub fn host_ek_cert_hash(cert: &X509Ref) -> Option<Vec<u8>> {
    hash_extension(cert, HOST_EK_CERT_HASH_OID)
}

/// The vEK key hash a vAIK certificate carries, if any: the contents of the OCTET STRING in
/// its (single) [`VTPM_EK_KEY_HASH_OID`] extension, a SHA-256 of the vEK's
/// SubjectPublicKeyInfo.
pub fn vtpm_ek_key_hash(cert: &X509Ref) -> Option<Vec<u8>> {
    hash_extension(cert, VTPM_EK_KEY_HASH_OID)
}

fn hash_extension(cert: &X509Ref, oid: &str) -> Option<Vec<u8>> {
    let oid = Asn1Object::from_str(oid).ok()?;
    let der = cert.to_der().ok()?;
    let exts = extensions(&der)?;
    let mut ours = exts.iter().filter(|e| e.oid == oid.as_slice());
    let ext = ours.next()?;
    if ours.next().is_some() {
        // RFC 5280 §4.2: an extension appears at most once. Not one of ours.
        return None;
    }
    let hash = OctetString::from_der(ext.value).ok()?;
    (hash.as_bytes().len() == 32).then(|| hash.as_bytes().to_vec())
}

pub use cert_ext::Extension;

/// The extensions of a DER certificate; `None` if it is not a certificate, or if an
/// extension's id or value does not carry its type's tag.
pub fn extensions(cert_der: &[u8]) -> Option<Vec<Extension<'_>>> {
    cert_ext::extensions(cert_der).ok()?.into_iter().collect()
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
        let cert = aik_cert(
            &ca_key,
            &ca_cert,
            Kind::Host,
            "host-1",
            &aik,
            &hash,
            60,
            None,
        )
        .unwrap();
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
        let cert = aik_cert(&ca_key, &ca_cert, Kind::Vtpm, "vm-1", &aik, &[], 60, None).unwrap();
        let t = text(&cert);
        assert!(t.contains("CA:FALSE"), "{t}");
        assert!(!t.contains("Certificate Sign"), "{t}");
        assert!(t.contains("2.23.133.8.3"), "{t}");
        assert!(!t.contains(HOST_EK_CERT_HASH_OID), "{t}");
        assert_eq!(host_ek_cert_hash(&cert), None);
        assert_eq!(vtpm_ek_key_hash(&cert), None);
        // With the vEK's key hash, the certificate binds the vEK (and still no host EK).
        let cert = aik_cert(
            &ca_key,
            &ca_cert,
            Kind::Vtpm,
            "vm-1",
            &aik,
            &[5; 32],
            60,
            None,
        )
        .unwrap();
        let t = text(&cert);
        assert!(t.contains(VTPM_EK_KEY_HASH_OID), "{t}");
        assert!(t.contains("CA:FALSE"), "{t}");
        assert_eq!(vtpm_ek_key_hash(&cert).unwrap(), [5; 32]);
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
    fn extensions_are_read_from_the_certificate_structure() {
        let (ca_key, ca_cert) = ca();
        let aik = generate_key().unwrap();
        let cert = aik_cert(&ca_key, &ca_cert, Kind::Host, "h", &aik, &[7; 32], 60, None).unwrap();
        let der = cert.to_der().unwrap();
        let exts = extensions(&der).unwrap();
        // basicConstraints, keyUsage, extKeyUsage, the EK hash, SKI, AKI.
        assert_eq!(exts.len(), 6, "{exts:?}");
        let bc = Asn1Object::from_str("2.5.29.19").unwrap();
        assert!(exts.iter().any(|e| e.oid == bc.as_slice() && e.critical));
        let ours = Asn1Object::from_str(HOST_EK_CERT_HASH_OID).unwrap();
        let e = exts.iter().find(|e| e.oid == ours.as_slice()).unwrap();
        assert!(!e.critical);
        assert_eq!(e.value[..2], [0x04, 32]);
        // The root has no such extension; garbage is no certificate.
        assert_eq!(host_ek_cert_hash(&ca_cert), None);
        assert!(extensions(&der[..der.len() / 2]).is_none());
        assert!(extensions(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
    }

    /// The hash is found only as the value of the extension itself, not wherever its
    /// encoding appears in the certificate: here inside another extension's value.
    #[test]
    fn an_embedded_copy_of_the_extension_is_not_the_extension() {
        let (ca_key, ca_cert) = ca();
        let aik = generate_key().unwrap();
        let mut b = builder("vm-1", Some(&ca_cert), &aik, 60).unwrap();
        let fake = ek_hash_extension(HOST_EK_CERT_HASH_OID, &[9; 32])
            .unwrap()
            .to_der()
            .unwrap();
        b.append_extension(
            X509Extension::new_from_der(
                &Asn1Object::from_str("1.3.6.1.4.1.99999.1").unwrap(),
                false,
                &Asn1OctetString::new_from_bytes(&fake).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        let cert = finish_issued(b, &ca_key, &ca_cert).unwrap();
        let ours = Asn1Object::from_str(HOST_EK_CERT_HASH_OID).unwrap();
        let der = cert.to_der().unwrap();
        assert!(der
            .windows(ours.as_slice().len())
            .any(|w| w == ours.as_slice()));
        assert_eq!(host_ek_cert_hash(&cert), None);
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
