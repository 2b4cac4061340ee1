//! The vEK certificate, per the TCG EK Credential Profile for TPM 2.0 (section 3), signed by
//! the coprocessor key:
//!
//! - version 3, random positive 16-byte serial, issuer = the coprocessor certificate's
//!   subject, **empty subject**;
//! - subjectAltName (critical, since the subject is empty): a directoryName with
//!   tcg-at-tpmManufacturer (2.23.133.2.1) `id:<TPM_PT_MANUFACTURER, 8 hex digits>`,
//!   tcg-at-tpmModel (2.23.133.2.2) the TPM's vendor string, tcg-at-tpmVersion
//!   (2.23.133.2.3) `id:<TPM_PT_FIRMWARE_VERSION_1, 8 hex digits>`, one RDN each (as
//!   swtpm_localca and hardware vendors write it);
//! - basicConstraints CA:FALSE (critical); keyUsage keyEncipherment (RSA) or keyAgreement
//!   (ECC) (critical); extendedKeyUsage tcg-kp-EKCertificate (2.23.133.8.1);
//! - certificatePolicies: [`VEK_CERT_POLICY`] with the user notice the profile asks for
//!   ("TCPA Trusted Platform Module Endorsement");
//! - subjectDirectoryAttributes: tcg-at-tpmSpecification (2.23.133.2.16) = family, level,
//!   revision as the TPM reports them (TPM_PT_FAMILY_INDICATOR, TPM_PT_LEVEL,
//!   TPM_PT_REVISION);
//! - authorityKeyIdentifier = the coprocessor certificate's key identifier.
//!
//! The manufacturer, model and version are read from the instance's TPM with
//! `TPM2_GetCapability` ([`crate::provision::tpm_info`]), so they say what the guest's own
//! `tpm2_getcap properties-fixed` says (libtpms: manufacturer "IBM", 0x49424D00).

use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Public};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage};
use openssl::x509::{X509Builder, X509NameBuilder, X509Ref, X509};
use tpm_proto::der;
use tpm_proto::public::{curve, PublicParams, TpmPublic};
use tpm_proto::WireError;

use crate::templates::EkKind;
use crate::{CoprocessorKey, IdentityError, Validity};

/// This project's policy for vEK certificates, version 1: an OID in the UUID arc
/// (ITU-T X.667, `2.25.<UUID d45a1b56-38e0-47ba-88fe-5ad73f56378e>`), which needs no
/// registration.
pub const VEK_CERT_POLICY: &str = "2.25.282264196279953873026584430621905794958";
/// The user notice the TCG EK Credential Profile puts into certificatePolicies.
pub const EK_POLICY_NOTICE: &str = "TCPA Trusted Platform Module Endorsement";

pub const TCG_AT_TPM_MANUFACTURER: &str = "2.23.133.2.1";
pub const TCG_AT_TPM_MODEL: &str = "2.23.133.2.2";
pub const TCG_AT_TPM_VERSION: &str = "2.23.133.2.3";
pub const TCG_AT_TPM_SPECIFICATION: &str = "2.23.133.2.16";
pub const TCG_KP_EK_CERTIFICATE: &str = "2.23.133.8.1";
const ID_QT_UNOTICE: &str = "1.3.6.1.5.5.7.2.2";
const SUBJECT_ALT_NAME: &str = "2.5.29.17";
const SUBJECT_DIRECTORY_ATTRIBUTES: &str = "2.5.29.9";
const CERTIFICATE_POLICIES: &str = "2.5.29.32";

/// What the TPM says about itself (TPM2_GetCapability, TPM_CAP_TPM_PROPERTIES).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmInfo {
    /// TPM_PT_MANUFACTURER (libtpms: "IBM" = 0x49424D00).
    pub manufacturer: u32,
    /// TPM_PT_VENDOR_STRING_1..4, NULs removed, trimmed.
    pub model: String,
    /// TPM_PT_FIRMWARE_VERSION_1.
    pub firmware_version: u32,
    /// TPM_PT_FAMILY_INDICATOR as text ("2.0").
    pub family: String,
    /// TPM_PT_LEVEL.
    pub level: u32,
    /// TPM_PT_REVISION (the specification revision times 100, e.g. 164 for 1.64).
    pub revision: u32,
}

impl TpmInfo {
    /// `id:` and the manufacturer id in 8 hex digits, as the profile writes it.
    pub fn manufacturer_id(&self) -> String {
        format!("id:{:08X}", self.manufacturer)
    }

    /// `id:` and the firmware version in 8 hex digits.
    pub fn version_id(&self) -> String {
        format!("id:{:08X}", self.firmware_version)
    }
}

/// An EK's public key, as CreatePrimary returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EkPublic {
    Rsa {
        /// Big-endian modulus (256 bytes for RSA 2048).
        modulus: Vec<u8>,
        /// Public exponent (the TPM's 0 already replaced by 65537).
        exponent: u32,
    },
    Ecc {
        x: Vec<u8>,
        y: Vec<u8>,
    },
}

impl EkPublic {
    pub fn kind(&self) -> EkKind {
        match self {
            EkPublic::Rsa { .. } => EkKind::Rsa2048,
            EkPublic::Ecc { .. } => EkKind::EccP256,
        }
    }

    /// The key of a marshalled `TPMT_PUBLIC`: an RSA key, or an ECC key on NIST P-256 (the
    /// two standard EKs' kinds).
    pub fn from_tpmt_public(tpmt_public: &[u8]) -> Result<Self, WireError> {
        match TpmPublic::parse(tpmt_public)?.params {
            PublicParams::Rsa {
                modulus, exponent, ..
            } => Ok(EkPublic::Rsa {
                modulus,
                // As marshalled, 0 means the default exponent.
                exponent: if exponent == 0 { 65_537 } else { exponent },
            }),
            PublicParams::Ecc {
                curve: curve::NIST_P256,
                x,
                y,
                ..
            } => Ok(EkPublic::Ecc { x, y }),
            PublicParams::Ecc { .. } => Err(WireError::Unexpected(
                "an ECC key on another curve than NIST P-256",
            )),
            PublicParams::Other(_) => Err(WireError::Unexpected("neither an RSA nor an ECC key")),
        }
    }

    pub fn to_pkey(&self) -> Result<PKey<Public>, IdentityError> {
        Ok(match self {
            EkPublic::Rsa { modulus, exponent } => PKey::from_rsa(Rsa::from_public_components(
                BigNum::from_slice(modulus)?,
                BigNum::from_u32(*exponent)?,
            )?)?,
            EkPublic::Ecc { x, y } => {
                let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
                let (x, y) = (BigNum::from_slice(x)?, BigNum::from_slice(y)?);
                PKey::from_ec_key(EcKey::from_public_key_affine_coordinates(&group, &x, &y)?)?
            }
        })
    }
}

/// Issues the certificate of `ek` under the coprocessor certificate, signed by `key`.
/// Refuses a coprocessor certificate that is not `key`'s.
pub fn issue_ek_cert(
    key: &CoprocessorKey,
    coprocessor_cert: &X509Ref,
    ek: &EkPublic,
    tpm: &TpmInfo,
    validity: &Validity,
) -> Result<X509, IdentityError> {
    check_coprocessor_cert(key, coprocessor_cert)?;
    let (not_before, not_after) = validity.asn1()?;
    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    let serial = crate::random_serial()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&X509NameBuilder::new()?.build())?;
    b.set_issuer_name(coprocessor_cert.subject_name())?;
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    let ek_key = ek.to_pkey()?;
    b.set_pubkey(&ek_key)?;

    b.append_extension(crate::extension(
        CERTIFICATE_POLICIES,
        false,
        &certificate_policies()?,
    )?)?;
    b.append_extension(crate::extension(
        SUBJECT_ALT_NAME,
        true,
        &subject_alt_name(tpm)?,
    )?)?;
    b.append_extension(BasicConstraints::new().critical().build()?)?;
    b.append_extension(crate::extension(
        SUBJECT_DIRECTORY_ATTRIBUTES,
        false,
        &subject_directory_attributes(tpm)?,
    )?)?;
    b.append_extension(crate::authority_key_identifier_ext(
        &crate::issuer_key_identifier(coprocessor_cert)?,
    )?)?;
    let mut usage = KeyUsage::new();
    usage.critical();
    match ek.kind() {
        EkKind::Rsa2048 => usage.key_encipherment(),
        EkKind::EccP256 => usage.key_agreement(),
    };
    b.append_extension(usage.build()?)?;
    b.append_extension(
        ExtendedKeyUsage::new()
            .other(TCG_KP_EK_CERTIFICATE)
            .build()?,
    )?;
    b.sign(key.signing_key(), MessageDigest::sha256())?;
    let cert = b.build();
    let issuer_key = coprocessor_cert.public_key()?;
    if !cert.verify(&issuer_key)? {
        return Err(IdentityError::SignatureInvalid);
    }
    Ok(cert)
}

pub(super) fn check_coprocessor_cert(
    key: &CoprocessorKey,
    coprocessor_cert: &X509Ref,
) -> Result<(), IdentityError> {
    if !coprocessor_cert.public_key()?.public_eq(&key.public_key()) {
        return Err(IdentityError::Refused(
            "the coprocessor certificate is for another key than this host's coprocessor key"
                .into(),
        ));
    }
    Ok(())
}

/// `GeneralNames` holding one directoryName: `[4] EXPLICIT Name`.
fn subject_alt_name(tpm: &TpmInfo) -> Result<Vec<u8>, IdentityError> {
    let rdn = |oid: &str, value: &str| -> Result<Vec<u8>, IdentityError> {
        Ok(der::set_of(&[&der::sequence(&[
            &der::oid(oid)?,
            &der::utf8_string(value),
        ])]))
    };
    let name = der::sequence(&[
        &rdn(TCG_AT_TPM_MANUFACTURER, &tpm.manufacturer_id())?,
        &rdn(TCG_AT_TPM_MODEL, &tpm.model)?,
        &rdn(TCG_AT_TPM_VERSION, &tpm.version_id())?,
    ]);
    Ok(der::sequence(&[&der::tlv(
        der::context_constructed(4),
        &name,
    )]))
}

/// `SEQUENCE OF Attribute` with tcg-at-tpmSpecification:
/// `TPMSpecification ::= SEQUENCE { family UTF8String, level INTEGER, revision INTEGER }`.
fn subject_directory_attributes(tpm: &TpmInfo) -> Result<Vec<u8>, IdentityError> {
    let spec = der::sequence(&[
        &der::utf8_string(&tpm.family),
        &der::integer_u64(u64::from(tpm.level)),
        &der::integer_u64(u64::from(tpm.revision)),
    ]);
    let attribute = der::sequence(&[&der::oid(TCG_AT_TPM_SPECIFICATION)?, &der::set_of(&[&spec])]);
    Ok(der::sequence(&[&attribute]))
}

/// `certificatePolicies` with [`VEK_CERT_POLICY`] qualified by the profile's user notice.
fn certificate_policies() -> Result<Vec<u8>, IdentityError> {
    let notice = der::sequence(&[&der::utf8_string(EK_POLICY_NOTICE)]);
    let qualifier = der::sequence(&[&der::oid(ID_QT_UNOTICE)?, &notice]);
    let policy = der::sequence(&[&der::oid(VEK_CERT_POLICY)?, &der::sequence(&[&qualifier])]);
    Ok(der::sequence(&[&policy]))
}
