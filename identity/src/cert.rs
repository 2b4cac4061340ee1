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
//!
//! Two rules hold for every certificate issued here (ADR 0012):
//! - it never outlives its issuer: its notAfter is capped at the issuer's, and an issuer
//!   that has expired issues nothing;
//! - it is on the CRL its issuer is on: if the issuer certificate has CRL distribution
//!   points, the new certificate gets the same points, each naming as its cRLIssuer
//!   whoever issues that CRL (the point's own cRLIssuer, or else the issuer's issuer). The
//!   host AIK certificate points at the local CA's CRL, so the coprocessor and vEK
//!   certificates do too, as entries of that indirect CRL.

use const_oid::db::rfc5280::ID_CE_CRL_DISTRIBUTION_POINTS;
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
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::CrlDistributionPoints;
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
/// number, valid for `validity` (but not past the issuer's notAfter), with the CRL
/// distribution points it inherits from `issuer` after the profile's extensions, signed by
/// `signer` (whose key must be `issuer`'s). The result is parsed by OpenSSL, must encode
/// back to the same bytes, and must verify with the issuer's public key
/// ([`IdentityError::SignatureInvalid`] otherwise).
pub(crate) fn issue<T, S>(
    mut profile: Profile,
    subject_key: &PKeyRef<T>,
    validity: &Validity,
    issuer: &X509Ref,
    signer: &S,
) -> Result<X509, IdentityError>
where
    T: HasPublic,
    S: Signer<Signature>,
{
    let validity = validity.capped_at(issuer)?;
    if let Some(points) = inherited_crl_distribution_points(issuer)? {
        profile
            .extensions
            .push(extension(ID_CE_CRL_DISTRIBUTION_POINTS, false, &points)?);
    }
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

/// The CRL distribution points of a certificate `issuer` signs (see the module
/// documentation): `issuer`'s own, each with its cRLIssuer, or `issuer`'s issuer as one;
/// `None` if `issuer` has none.
pub(crate) fn inherited_crl_distribution_points(
    issuer: &X509Ref,
) -> Result<Option<CrlDistributionPoints>, IdentityError> {
    let der = issuer.to_der()?;
    let Some(value) = extension_value(&der, &ID_CE_CRL_DISTRIBUTION_POINTS)? else {
        return Ok(None);
    };
    let points = CrlDistributionPoints::from_der(value)?;
    let issuers_issuer = vec![GeneralName::DirectoryName(name(issuer.issuer_name())?)];
    Ok(Some(CrlDistributionPoints(
        points
            .0
            .into_iter()
            .map(|p| DistributionPoint {
                distribution_point: p.distribution_point,
                reasons: p.reasons,
                crl_issuer: Some(p.crl_issuer.unwrap_or_else(|| issuers_issuer.clone())),
            })
            .collect(),
    )))
}

/// The DER value of the extension `oid` of a DER certificate, if it has one (read by
/// [`cert_ext`]: `x509-cert` cannot decode every certificate of the chain).
fn extension_value<'a>(
    cert_der: &'a [u8],
    oid: &const_oid::ObjectIdentifier,
) -> Result<Option<&'a [u8]>, IdentityError> {
    Ok(cert_ext::extensions(cert_der)?
        .into_iter()
        .flatten()
        .find(|e| e.oid == oid.as_bytes())
        .map(|e| e.value))
}
