//! What the coprocessor certificate and the vEK certificates have in common: a
//! `TBSCertificate` made by `x509-cert`'s builder from typed parts (names, validity, key,
//! extensions as `der` types), signed with ECDSA P-256 / SHA-256 through a
//! [`signature::Signer`], and checked with OpenSSL before it is handed out.
//!
//! The signers ([`crate::key`]'s coprocessor key, the host TPM's AIK) only sign bytes; what
//! the builder also wants of a signer (the issuer's public key, the signature algorithm
//! identifier) comes from the issuer certificate, through [`IssuerSigner`]. The issuer's
//! key is used for nothing else than that and the final verification: the authority key
//! identifier comes from the issuer certificate ([`crate::issuer_key_identifier`]).

use const_oid::db::rfc5912::ECDSA_WITH_SHA_256;
use const_oid::ObjectIdentifier;
use der::asn1::OctetString;
use der::{Decode, Encode};
use openssl::pkey::{HasPublic, PKeyRef};
use openssl::x509::{X509NameRef, X509Ref, X509};
use p256::ecdsa::{DerSignature, Signature};
use signature::{Keypair, Signer};
use spki::{
    AlgorithmIdentifierOwned, Document, DynSignatureAlgorithmIdentifier, EncodePublicKey,
    SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef,
};
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::certificate::TbsCertificate;
use x509_cert::ext::Extension;
use x509_cert::name::Name;

use crate::{IdentityError, Validity};

/// Everything of a certificate but its serial number, validity, key and signature.
pub(crate) struct Profile {
    pub issuer: Name,
    pub subject: Name,
    /// In the order they appear in the certificate.
    pub extensions: Vec<Extension>,
}

impl BuilderProfile for Profile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        _spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        _tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        Ok(self.extensions.clone())
    }
}

/// An extension: its OID, criticality, and its value DER-encoded into the OCTET STRING.
pub(crate) fn extension(
    oid: ObjectIdentifier,
    critical: bool,
    value: &impl Encode,
) -> Result<Extension, IdentityError> {
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

/// An OpenSSL name (the issuer certificate's subject) as an `x509-cert` name, encoded the same.
pub(crate) fn name(name: &X509NameRef) -> Result<Name, IdentityError> {
    Ok(Name::from_der(&name.to_der()?)?)
}

/// A public key's SubjectPublicKeyInfo, as OpenSSL encodes it.
pub(crate) fn spki<T: HasPublic>(
    key: &PKeyRef<T>,
) -> Result<SubjectPublicKeyInfoOwned, IdentityError> {
    Ok(SubjectPublicKeyInfoOwned::from_der(
        &key.public_key_to_der()?,
    )?)
}

/// The issuer's public key, DER SubjectPublicKeyInfo.
#[derive(Clone)]
pub(crate) struct IssuerKey(Vec<u8>);

impl EncodePublicKey for IssuerKey {
    fn to_public_key_der(&self) -> spki::Result<Document> {
        Ok(Document::try_from(self.0.as_slice())?)
    }
}

/// An ECDSA P-256 signer as `x509-cert`'s builder wants it: with the issuer's public key and
/// the signature algorithm (ecdsa-with-SHA256, parameters absent: RFC 5758 §3.2), giving
/// the signature DER-encoded.
pub(crate) struct IssuerSigner<'a, S> {
    signer: &'a S,
    issuer_key: IssuerKey,
}

impl<S> Keypair for IssuerSigner<'_, S> {
    type VerifyingKey = IssuerKey;

    fn verifying_key(&self) -> IssuerKey {
        self.issuer_key.clone()
    }
}

impl<S> DynSignatureAlgorithmIdentifier for IssuerSigner<'_, S> {
    fn signature_algorithm_identifier(&self) -> spki::Result<AlgorithmIdentifierOwned> {
        Ok(AlgorithmIdentifierOwned {
            oid: ECDSA_WITH_SHA_256,
            parameters: None,
        })
    }
}

impl<S: Signer<Signature>> Signer<DerSignature> for IssuerSigner<'_, S> {
    fn try_sign(&self, msg: &[u8]) -> Result<DerSignature, signature::Error> {
        Ok(self.signer.try_sign(msg)?.to_der())
    }
}

/// Builds the certificate of `subject_key` that `profile` describes, with a random serial
/// number, valid for `validity`, signed by `signer` (whose key must be `issuer`'s). The
/// result is parsed by OpenSSL, must encode back to the same bytes, and must verify with
/// the issuer's public key ([`IdentityError::SignatureInvalid`] otherwise).
pub(crate) fn issue<T, S>(
    profile: Profile,
    subject_key: &PKeyRef<T>,
    validity: &Validity,
    issuer: &X509Ref,
    signer: &S,
) -> Result<X509, IdentityError>
where
    T: HasPublic,
    S: Signer<Signature>,
{
    let issuer_key = issuer.public_key()?;
    let signer = IssuerSigner {
        signer,
        issuer_key: IssuerKey(issuer_key.public_key_to_der()?),
    };
    let builder = CertificateBuilder::new(
        profile,
        crate::random_serial()?,
        validity.x509()?,
        spki(subject_key)?,
    )?;
    let der = builder.build::<_, DerSignature>(&signer)?.to_der()?;
    let cert = X509::from_der(&der)?;
    if cert.to_der()? != der {
        return Err(IdentityError::Encoding(
            "the certificate does not round-trip through OpenSSL".into(),
        ));
    }
    if !cert.verify(&issuer_key)? {
        return Err(IdentityError::SignatureInvalid);
    }
    Ok(cert)
}
