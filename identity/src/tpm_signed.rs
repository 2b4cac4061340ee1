//! A certificate signed by an external ECDSA P-256 signer: the coprocessor certificate, whose
//! signature the host TPM makes with its restricted AIK.
//!
//! OpenSSL builds the `TBSCertificate`: it fills in every field and extension of a
//! certificate signed by a throwaway P-256 key, and since the signature algorithm
//! (ecdsa-with-SHA256) is part of the TBS and the same for the real signer, that
//! certificate's TBS is exactly the one the real signer must sign. The signer receives the
//! TBS (the host TPM hashes it itself, with a hash sequence, for the ticket a restricted key
//! needs) and returns `(r, s)`; the certificate is then assembled around it in DER and
//! verified against the issuer's public key before it is returned.

use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{HasPublic, Id, PKey, PKeyRef};
use openssl::x509::extension::{BasicConstraints, KeyUsage};
use openssl::x509::{X509Builder, X509NameBuilder, X509Ref, X509};

use tpm_proto::der;

use crate::{IdentityError, Validity};

/// ecdsa-with-SHA256 (RFC 5758 §3.2; parameters absent).
const ECDSA_WITH_SHA256: &str = "1.2.840.10045.4.3.2";

/// What the coprocessor certificate says, apart from its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    /// The host's identifier; the subject is `CN=vhost-vtpm coprocessor <host id>`.
    pub host_id: String,
    pub validity: Validity,
}

impl CertSpec {
    pub fn coprocessor(host_id: impl Into<String>, validity: Validity) -> Self {
        CertSpec {
            host_id: host_id.into(),
            validity,
        }
    }

    /// The subject common name.
    pub fn subject_cn(&self) -> String {
        format!("vhost-vtpm coprocessor {}", self.host_id)
    }
}

/// Issues the coprocessor certificate for `subject_key` under `issuer` (the host AIK's
/// certificate), with the signature made by `sign`.
///
/// `sign` gets the DER `TBSCertificate` and must return the ECDSA signature over its
/// SHA-256 digest as the big-endian integers `(r, s)` (leading zeros allowed: a TPM returns
/// them fixed-width). The certificate: v3, random 16-byte serial, subject
/// `CN=vhost-vtpm coprocessor <host id>`, issuer = the issuer certificate's subject,
/// basicConstraints CA:TRUE pathlen 0 (critical), keyUsage digitalSignature, keyCertSign,
/// cRLSign (critical), subjectKeyIdentifier, authorityKeyIdentifier = the issuer's key id.
///
/// Refuses an issuer whose key is not an EC key, and a signature that does not verify with
/// the issuer's public key.
pub fn issue_signed_by<T, E>(
    spec: &CertSpec,
    issuer: &X509Ref,
    subject_key: &PKeyRef<T>,
    sign: impl FnOnce(&[u8]) -> Result<(Vec<u8>, Vec<u8>), E>,
) -> Result<X509, IdentityError>
where
    T: HasPublic,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let issuer_key = issuer.public_key()?;
    if issuer_key.id() != Id::EC {
        return Err(IdentityError::Refused(
            "the issuer's key is not an ECC key; the certificate is labelled ecdsa-with-SHA256"
                .into(),
        ));
    }
    let (not_before, not_after) = spec.validity.asn1()?;

    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    let serial = crate::random_serial()?;
    b.set_serial_number(&serial)?;
    let mut subject = X509NameBuilder::new()?;
    subject.append_entry_by_nid(Nid::COMMONNAME, &spec.subject_cn())?;
    b.set_subject_name(&subject.build())?;
    b.set_issuer_name(issuer.subject_name())?;
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    b.set_pubkey(subject_key)?;
    b.append_extension(BasicConstraints::new().critical().ca().pathlen(0).build()?)?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .key_cert_sign()
            .crl_sign()
            .build()?,
    )?;
    b.append_extension(crate::subject_key_identifier_ext(&crate::key_identifier(
        subject_key,
    )?)?)?;
    b.append_extension(crate::authority_key_identifier_ext(
        &crate::issuer_key_identifier(issuer)?,
    )?)?;
    // Signed by a throwaway key only to have OpenSSL produce the TBS.
    let p256 = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let throwaway = PKey::from_ec_key(EcKey::generate(&p256)?)?;
    b.sign(&throwaway, MessageDigest::sha256())?;
    let template = b.build().to_der()?;
    let tbs = der::tbs_certificate(&template)?;

    let algorithm = der::sequence(&[&der::oid(ECDSA_WITH_SHA256)?]);
    {
        let mut r = der::Reader::new(der::Reader::new(&template).element()?.content);
        r.element()?;
        let template_alg = r.expect_tag(der::TAG_SEQUENCE, "signatureAlgorithm")?;
        if template_alg.encoded != algorithm.as_slice() {
            return Err(IdentityError::Encoding(
                "OpenSSL labelled the certificate with an unexpected signature algorithm".into(),
            ));
        }
    }

    let (r, s) = sign(tbs).map_err(|e| IdentityError::Signer(e.into()))?;
    let der = assemble(tbs, &algorithm, &r, &s)?;
    let cert = X509::from_der(&der)?;
    if cert.to_der()? != der || der::tbs_certificate(&cert.to_der()?)? != tbs {
        return Err(IdentityError::Encoding(
            "the assembled certificate does not round-trip through OpenSSL".into(),
        ));
    }
    if !cert.verify(&issuer_key)? {
        return Err(IdentityError::SignatureInvalid);
    }
    Ok(cert)
}

/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }` with
/// `signatureValue` the BIT STRING holding `Ecdsa-Sig-Value ::= SEQUENCE { r, s }`.
fn assemble(tbs: &[u8], algorithm: &[u8], r: &[u8], s: &[u8]) -> Result<Vec<u8>, IdentityError> {
    for (name, v) in [("r", r), ("s", s)] {
        if v.iter().all(|b| *b == 0) || v.len() > 66 {
            return Err(IdentityError::Refused(format!(
                "the external signer returned an impossible ECDSA {name} ({} bytes)",
                v.len()
            )));
        }
    }
    let sig = der::sequence(&[&der::unsigned_integer(r), &der::unsigned_integer(s)]);
    Ok(der::sequence(&[tbs, algorithm, &der::bit_string(&sig)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::bn::BigNum;
    use openssl::ecdsa::EcdsaSig;

    #[test]
    fn signature_value_matches_openssl() {
        // r with the top bit set and s with leading zero bytes: both must be minimal.
        let r = [0x80u8; 32];
        let mut s = [0u8; 32];
        s[2] = 0x01;
        s[31] = 0x7f;
        let ours = der::sequence(&[&der::unsigned_integer(&r), &der::unsigned_integer(&s)]);
        let theirs = EcdsaSig::from_private_components(
            BigNum::from_slice(&r).unwrap(),
            BigNum::from_slice(&s).unwrap(),
        )
        .unwrap()
        .to_der()
        .unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn zero_signature_is_refused() {
        assert!(assemble(b"", b"", &[0; 32], &[1]).is_err());
        assert!(assemble(b"", b"", &[1], &[]).is_err());
    }
}
