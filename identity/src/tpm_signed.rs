//! A certificate signed by an external ECDSA P-256 signer: the coprocessor certificate, whose
//! signature the host TPM makes with its restricted AIK.
//!
//! The signer is a [`signature::Signer`] of [`p256::ecdsa::Signature`]s (ECDSA over the
//! SHA-256 digest of the message): `host_tpm::AikSigner` in production, which has the TPM
//! hash the `TBSCertificate` itself (for the ticket a restricted key needs) and sign the
//! digest. The `TBSCertificate` is built from typed `x509-cert` parts, labelled
//! ecdsa-with-SHA256 before it is signed; the certificate is verified against the issuer's
//! public key before it is returned. [`issue_signed_by`] takes the signer as a closure
//! returning `(r, s)` instead, for signers that hand back bare integers (`tpm2_sign`).

use std::cell::RefCell;

use const_oid::db::rfc4519::COMMON_NAME;
use const_oid::db::rfc5280::{
    ID_CE_AUTHORITY_KEY_IDENTIFIER, ID_CE_BASIC_CONSTRAINTS, ID_CE_KEY_USAGE,
    ID_CE_SUBJECT_KEY_IDENTIFIER,
};
use der::asn1::{Any, OctetString, Utf8StringRef};
use der::{Decode, Encode};
use openssl::pkey::{HasPublic, Id, PKeyRef};
use openssl::x509::{X509Ref, X509};
use p256::ecdsa::Signature;
use signature::Signer;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier,
};
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};

use crate::cert::{self, Profile};
use crate::{IdentityError, Validity};

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

    /// The subject: one RDN, the common name as a UTF8String.
    fn subject(&self) -> Result<Name, IdentityError> {
        single_valued_name(&[(COMMON_NAME, &self.subject_cn())])
    }
}

/// A name of one single-valued RDN per `(type, value)`, values as UTF8String, in order.
pub(crate) fn single_valued_name(
    attributes: &[(const_oid::ObjectIdentifier, &str)],
) -> Result<Name, IdentityError> {
    let mut rdns = RdnSequence::default();
    for (oid, value) in attributes {
        rdns.push(RelativeDistinguishedName::try_from(vec![
            AttributeTypeAndValue {
                oid: *oid,
                value: Any::encode_from(&Utf8StringRef::new(value)?)?,
            },
        ])?);
    }
    // `x509-cert` makes a `Name` of RDNs only by decoding them (its other way is behind the
    // "hazmat" feature): the same bytes.
    Ok(Name::from_der(&rdns.to_der()?)?)
}

/// Issues the coprocessor certificate for `subject_key` under `issuer` (the host AIK's
/// certificate), signed by `signer`, which must hold the issuer's key.
///
/// The certificate: v3, random 16-byte serial, subject `CN=vhost-vtpm coprocessor <host id>`,
/// issuer = the issuer certificate's subject, signature ecdsa-with-SHA256,
/// basicConstraints CA:TRUE pathlen 0 (critical), keyUsage digitalSignature, keyCertSign,
/// cRLSign (critical), subjectKeyIdentifier (method 1), authorityKeyIdentifier = the
/// issuer's key id.
///
/// Refuses an issuer whose key is not an EC key, and a signature that does not verify with
/// the issuer's public key ([`IdentityError::SignatureInvalid`]); a failing signer is
/// [`IdentityError::Signer`].
pub fn issue_signed_with<T, S>(
    spec: &CertSpec,
    issuer: &X509Ref,
    subject_key: &PKeyRef<T>,
    signer: &S,
) -> Result<X509, IdentityError>
where
    T: HasPublic,
    S: Signer<Signature>,
{
    if issuer.public_key()?.id() != Id::EC {
        return Err(IdentityError::Refused(
            "the issuer's key is not an ECC key; the certificate is labelled ecdsa-with-SHA256"
                .into(),
        ));
    }
    let usage = KeyUsages::DigitalSignature | KeyUsages::KeyCertSign | KeyUsages::CRLSign;
    let extensions = vec![
        cert::extension(
            ID_CE_BASIC_CONSTRAINTS,
            true,
            &BasicConstraints {
                ca: true,
                path_len_constraint: Some(0),
            },
        )?,
        cert::extension(ID_CE_KEY_USAGE, true, &KeyUsage(usage))?,
        cert::extension(
            ID_CE_SUBJECT_KEY_IDENTIFIER,
            false,
            &SubjectKeyIdentifier(OctetString::new(crate::key_identifier(subject_key)?)?),
        )?,
        cert::extension(
            ID_CE_AUTHORITY_KEY_IDENTIFIER,
            false,
            &authority_key_identifier(issuer)?,
        )?,
    ];
    let profile = Profile {
        issuer: cert::name(issuer.subject_name())?,
        subject: spec.subject()?,
        extensions,
    };
    cert::issue(profile, subject_key, &spec.validity, issuer, signer)
}

/// `AuthorityKeyIdentifier` with only the keyIdentifier: the issuer's key id.
pub(crate) fn authority_key_identifier(
    issuer: &X509Ref,
) -> Result<AuthorityKeyIdentifier, IdentityError> {
    Ok(AuthorityKeyIdentifier {
        key_identifier: Some(OctetString::new(crate::issuer_key_identifier(issuer)?)?),
        authority_cert_issuer: None,
        authority_cert_serial_number: None,
    })
}

/// [`issue_signed_with`], with the signature made by `sign`: it gets the DER
/// `TBSCertificate` and returns the ECDSA signature over its SHA-256 digest as the
/// big-endian integers `(r, s)` (leading zeros allowed, as a TPM returns them fixed-width;
/// at most 32 significant bytes each). A zero or oversized `r` or `s` is refused.
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
    let signer = RsSigner {
        sign: RefCell::new(Some(sign)),
        refused: RefCell::new(None),
    };
    let result = issue_signed_with(spec, issuer, subject_key, &signer);
    match signer.refused.into_inner() {
        Some(refusal) => Err(refusal),
        None => result,
    }
}

/// A signer from a closure that returns `(r, s)`; it signs once.
struct RsSigner<F> {
    sign: RefCell<Option<F>>,
    /// Why the signature the closure made was refused (reported instead of the builder's
    /// bare signature error).
    refused: RefCell<Option<IdentityError>>,
}

impl<F, E> Signer<Signature> for RsSigner<F>
where
    F: FnOnce(&[u8]) -> Result<(Vec<u8>, Vec<u8>), E>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn try_sign(&self, msg: &[u8]) -> Result<Signature, signature::Error> {
        let sign = self
            .sign
            .borrow_mut()
            .take()
            .ok_or_else(|| signature::Error::from_source("the signer signs only once"))?;
        let (r, s) = sign(msg).map_err(signature::Error::from_source)?;
        signature_from_rs(&r, &s).map_err(|refusal| {
            *self.refused.borrow_mut() = Some(refusal);
            signature::Error::new()
        })
    }
}

/// An ECDSA P-256 signature from big-endian `r` and `s` of any width (leading zeros are
/// ignored); refused if either is zero, longer than 32 significant bytes, or not below the
/// group order.
fn signature_from_rs(r: &[u8], s: &[u8]) -> Result<Signature, IdentityError> {
    let fixed = |name: &str, v: &[u8]| -> Result<[u8; 32], IdentityError> {
        let start = v.iter().position(|b| *b != 0).unwrap_or(v.len());
        let significant = &v[start..];
        let mut out = [0u8; 32];
        if significant.is_empty() || significant.len() > out.len() {
            return Err(IdentityError::Refused(format!(
                "the external signer returned an impossible ECDSA {name} ({} bytes)",
                v.len()
            )));
        }
        out[32 - significant.len()..].copy_from_slice(significant);
        Ok(out)
    };
    let (r, s) = (fixed("r", r)?, fixed("s", s)?);
    Signature::from_scalars(r, s).map_err(|_| {
        IdentityError::Refused(
            "the external signer returned an ECDSA signature out of the P-256 range".into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::bn::BigNum;
    use openssl::ecdsa::EcdsaSig;
    use openssl::hash::MessageDigest;
    use openssl::pkey::{PKey, Private};
    use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectKeyIdentifier};
    use std::time::Duration;
    use testbed::certs::p256_key;

    /// A self-signed CA certificate of `key` (the host AIK's stand-in).
    fn ca(key: &PKey<Private>) -> X509 {
        let mut b = testbed::certs::builder("test AIK", key, None, 30);
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        b.append_extension(KeyUsage::new().critical().key_cert_sign().build().unwrap())
            .unwrap();
        let ski = SubjectKeyIdentifier::new()
            .build(&b.x509v3_context(None, None))
            .unwrap();
        b.append_extension(ski).unwrap();
        b.sign(key, MessageDigest::sha256()).unwrap();
        b.build()
    }

    /// A software signer standing in for the host TPM's AIK.
    struct SoftSigner(PKey<Private>);

    impl Signer<Signature> for SoftSigner {
        fn try_sign(&self, msg: &[u8]) -> Result<Signature, signature::Error> {
            let sig =
                EcdsaSig::sign(&openssl::sha::sha256(msg), &self.0.ec_key().unwrap()).unwrap();
            Ok(signature_from_rs(&sig.r().to_vec(), &sig.s().to_vec()).unwrap())
        }
    }

    /// A signer that cannot sign (a TPM that is gone).
    struct BrokenSigner;

    impl Signer<Signature> for BrokenSigner {
        fn try_sign(&self, _: &[u8]) -> Result<Signature, signature::Error> {
            Err(signature::Error::from_source("the TPM is not there"))
        }
    }

    /// What the issuance tests start from: a host AIK's stand-in (key and certificate), a
    /// subject key, and the coprocessor certificate to issue for it.
    fn issuance() -> (PKey<Private>, X509, PKey<Private>, CertSpec) {
        let aik_key = p256_key();
        let aik = ca(&aik_key);
        let spec = CertSpec::coprocessor("h1", Validity::starting_now(Duration::from_secs(60)));
        (aik_key, aik, p256_key(), spec)
    }

    #[test]
    fn a_certificate_signed_through_the_signer_trait_verifies_with_openssl() {
        let (aik_key, aik, subject, spec) = issuance();
        let cert = issue_signed_with(&spec, &aik, &subject, &SoftSigner(aik_key.clone())).unwrap();
        assert!(cert.verify(&aik.public_key().unwrap()).unwrap());
        assert!(cert.public_key().unwrap().public_eq(&subject));
        assert_eq!(
            cert.authority_key_id().unwrap().as_slice(),
            aik.subject_key_id().unwrap().as_slice()
        );
        assert_eq!(
            cert.subject_key_id().unwrap().as_slice(),
            crate::key_identifier(&subject).unwrap()
        );
        let text = String::from_utf8(cert.to_text().unwrap()).unwrap();
        assert!(
            text.contains("Subject: CN=vhost-vtpm coprocessor h1"),
            "{text}"
        );
        // The same issuance through the (r, s) closure.
        let by = issue_signed_by(&spec, &aik, &subject, |tbs| {
            let sig = EcdsaSig::sign(&openssl::sha::sha256(tbs), &aik_key.ec_key().unwrap())?;
            Ok::<_, openssl::error::ErrorStack>((sig.r().to_vec(), sig.s().to_vec()))
        })
        .unwrap();
        assert!(by.verify(&aik.public_key().unwrap()).unwrap());
    }

    #[test]
    fn bad_signatures_and_failing_signers_are_refused() {
        let (aik_key, aik, subject, spec) = issuance();
        // A valid signature, by another key than the issuer's.
        assert!(matches!(
            issue_signed_with(&spec, &aik, &subject, &SoftSigner(p256_key())),
            Err(IdentityError::SignatureInvalid)
        ));
        // A signer that fails: its reason is in the error.
        let err = issue_signed_with(&spec, &aik, &subject, &BrokenSigner).unwrap_err();
        assert!(matches!(err, IdentityError::Signer(_)), "{err}");
        assert!(err.to_string().contains("the TPM is not there"), "{err}");
        // (r, s) that are no signature at all.
        assert!(matches!(
            issue_signed_by(&spec, &aik, &subject, |_| {
                Ok::<_, std::convert::Infallible>((vec![0; 32], vec![1; 32]))
            }),
            Err(IdentityError::Refused(_))
        ));
        // An issuer whose key is not an EC key.
        let rsa = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
        assert!(matches!(
            issue_signed_with(&spec, &ca(&rsa), &subject, &SoftSigner(aik_key)),
            Err(IdentityError::Refused(_))
        ));
    }

    #[test]
    fn signature_value_matches_openssl() {
        // r with the top bit set and s with leading zero bytes: both must be minimal.
        let r = [0x80u8; 32];
        let mut s = [0u8; 32];
        s[2] = 0x01;
        s[31] = 0x7f;
        let ours = signature_from_rs(&r, &s).unwrap().to_der();
        let theirs = EcdsaSig::from_private_components(
            BigNum::from_slice(&r).unwrap(),
            BigNum::from_slice(&s).unwrap(),
        )
        .unwrap()
        .to_der()
        .unwrap();
        assert_eq!(ours.as_bytes(), theirs);
        // Leading zeros, as a TPM may return, and shorter integers give the same signature.
        let mut wide = vec![0u8; 4];
        wide.extend_from_slice(&r);
        assert_eq!(
            signature_from_rs(&wide, &s[2..]).unwrap(),
            signature_from_rs(&r, &s).unwrap()
        );
    }

    #[test]
    fn zero_or_oversized_signature_is_refused() {
        for (r, s) in [
            (&[0u8; 32][..], &[1u8][..]),
            (&[1], &[]),
            (&[1; 33], &[1]),
            // Not below the P-256 group order.
            (&[0xff; 32], &[1]),
        ] {
            assert!(
                matches!(signature_from_rs(r, s), Err(IdentityError::Refused(_))),
                "{r:?} {s:?}"
            );
        }
    }
}
