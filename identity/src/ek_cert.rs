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

use const_oid::db::rfc5280::{
    ID_CE_AUTHORITY_KEY_IDENTIFIER, ID_CE_BASIC_CONSTRAINTS, ID_CE_CERTIFICATE_POLICIES,
    ID_CE_EXT_KEY_USAGE, ID_CE_KEY_USAGE, ID_CE_SUBJECT_ALT_NAME,
    ID_CE_SUBJECT_DIRECTORY_ATTRIBUTES, ID_QT_UNOTICE,
};
use const_oid::{db::tcgtpm, ObjectIdentifier};
use der::asn1::{Any, SetOfVec};
use der::{Sequence, Tag};
use openssl::asn1::Asn1Object;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Public};
use openssl::rsa::Rsa;
use openssl::x509::{X509Ref, X509};
use tpm_proto::public::{curve, PublicParams, TpmPublic};
use tpm_proto::WireError;
use x509_cert::attr::Attribute;
use x509_cert::ext::pkix::certpolicy::{DisplayText, PolicyQualifierInfo, UserNotice};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName,
    SubjectDirectoryAttributes,
};
use x509_cert::name::Name;

use crate::cert::{self, Profile};
use crate::templates::EkKind;
use crate::tpm_signed::{authority_key_identifier, single_valued_name};
use crate::{CoprocessorKey, IdentityError, Validity};

/// This project's policy for vEK certificates, version 1: an OID in the UUID arc
/// (ITU-T X.667, `2.25.<UUID d45a1b56-38e0-47ba-88fe-5ad73f56378e>`), which needs no
/// registration. (Kept in dotted form: its 128-bit arc is beyond `const-oid`, whose arcs are
/// 32-bit, so OpenSSL encodes it.)
pub const VEK_CERT_POLICY: &str = "2.25.282264196279953873026584430621905794958";
/// The user notice the TCG EK Credential Profile puts into certificatePolicies.
pub const EK_POLICY_NOTICE: &str = "TCPA Trusted Platform Module Endorsement";

pub const TCG_AT_TPM_MANUFACTURER: ObjectIdentifier = tcgtpm::TCG_AT_TPM_MANUFACTURER;
pub const TCG_AT_TPM_MODEL: ObjectIdentifier = tcgtpm::TCG_AT_TPM_MODEL;
pub const TCG_AT_TPM_VERSION: ObjectIdentifier = tcgtpm::TCG_AT_TPM_VERSION;
pub const TCG_AT_TPM_SPECIFICATION: ObjectIdentifier = tcgtpm::TCG_AT_TPM_SPECIFICATION;
pub const TCG_KP_EK_CERTIFICATE: ObjectIdentifier = tcgtpm::TCG_KP_EK_CERTIFICATE;

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

    /// The key a vEK certificate certifies: an RSA key, or an ECC key on NIST P-256.
    pub fn from_certificate(cert: &X509Ref) -> Result<Self, IdentityError> {
        let key = cert.public_key()?;
        if let Ok(rsa) = key.rsa() {
            let e = rsa.e().to_vec();
            if e.len() > 4 {
                return Err(IdentityError::Refused("an RSA exponent above 2^32".into()));
            }
            let exponent = e.iter().fold(0u32, |a, b| a << 8 | u32::from(*b));
            return Ok(EkPublic::Rsa {
                modulus: rsa.n().to_vec(),
                exponent,
            });
        }
        let ec = key.ec_key().map_err(|_| {
            IdentityError::Refused("the certificate's key is neither RSA nor ECC".into())
        })?;
        if ec.group().curve_name() != Some(Nid::X9_62_PRIME256V1) {
            return Err(IdentityError::Refused(
                "the certificate's ECC key is not on NIST P-256".into(),
            ));
        }
        let mut ctx = openssl::bn::BigNumContext::new()?;
        let (mut x, mut y) = (BigNum::new()?, BigNum::new()?);
        ec.public_key()
            .affine_coordinates(ec.group(), &mut x, &mut y, &mut ctx)?;
        Ok(EkPublic::Ecc {
            x: x.to_vec_padded(32)?,
            y: y.to_vec_padded(32)?,
        })
    }

    /// The TPMT_PUBLIC that CreatePrimary returns for this key under its kind's standard
    /// template ([`EkKind::template`] with `unique` filled in): so its TPM name is the EK's
    /// name, computed without the TPM. Refuses a key no standard template produces (another
    /// modulus size or exponent).
    pub fn tpmt_public(&self) -> Result<Vec<u8>, IdentityError> {
        let mut public = self.kind().template();
        let unique: Vec<u8> = match self {
            EkPublic::Rsa { modulus, exponent } => {
                if modulus.len() != 256 || *exponent != 65_537 {
                    return Err(IdentityError::Refused(
                        "not an RSA 2048 key with exponent 65537 (template L-1)".into(),
                    ));
                }
                modulus.clone()
            }
            EkPublic::Ecc { x, y } => {
                if x.len() != 32 || y.len() != 32 {
                    return Err(IdentityError::Refused(
                        "not a NIST P-256 point (template L-2)".into(),
                    ));
                }
                [&[0, 32][..], x, &[0, 32], y].concat()
            }
        };
        // The template ends with `unique` (RSA: the modulus' TPM2B body; ECC: both TPM2Bs),
        // zero-filled at exactly this size.
        let at = public.len() - unique.len();
        public[at..].copy_from_slice(&unique);
        Ok(public)
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
    let usage = match ek.kind() {
        EkKind::Rsa2048 => KeyUsages::KeyEncipherment,
        EkKind::EccP256 => KeyUsages::KeyAgreement,
    };
    let extensions = vec![
        cert::extension(ID_CE_CERTIFICATE_POLICIES, false, &certificate_policies()?)?,
        cert::extension(ID_CE_SUBJECT_ALT_NAME, true, &subject_alt_name(tpm)?)?,
        cert::extension(
            ID_CE_BASIC_CONSTRAINTS,
            true,
            &BasicConstraints {
                ca: false,
                path_len_constraint: None,
            },
        )?,
        cert::extension(
            ID_CE_SUBJECT_DIRECTORY_ATTRIBUTES,
            false,
            &subject_directory_attributes(tpm)?,
        )?,
        cert::extension(
            ID_CE_AUTHORITY_KEY_IDENTIFIER,
            false,
            &authority_key_identifier(coprocessor_cert)?,
        )?,
        cert::extension(ID_CE_KEY_USAGE, true, &KeyUsage(usage.into()))?,
        cert::extension(
            ID_CE_EXT_KEY_USAGE,
            false,
            &ExtendedKeyUsage(vec![TCG_KP_EK_CERTIFICATE]),
        )?,
    ];
    let profile = Profile {
        issuer: cert::name(coprocessor_cert.subject_name())?,
        // Empty: the TPM is named by the subjectAltName.
        subject: Name::default(),
        extensions,
    };
    let ek_key = ek.to_pkey()?;
    cert::issue(profile, &ek_key, validity, coprocessor_cert, &key.signer())
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

/// `GeneralNames` holding one directoryName, one single-valued RDN per attribute.
fn subject_alt_name(tpm: &TpmInfo) -> Result<SubjectAltName, IdentityError> {
    let name = single_valued_name(&[
        (TCG_AT_TPM_MANUFACTURER, &tpm.manufacturer_id()),
        (TCG_AT_TPM_MODEL, &tpm.model),
        (TCG_AT_TPM_VERSION, &tpm.version_id()),
    ])?;
    Ok(SubjectAltName(vec![GeneralName::DirectoryName(name)]))
}

/// `TPMSpecification ::= SEQUENCE { family UTF8String (SIZE (1..STRMAX)), level INTEGER,
/// revision INTEGER }` (TCG EK Credential Profile).
#[derive(Sequence)]
struct TpmSpecification {
    family: String,
    level: u32,
    revision: u32,
}

/// `SEQUENCE OF Attribute` with tcg-at-tpmSpecification: family, level and revision.
fn subject_directory_attributes(
    tpm: &TpmInfo,
) -> Result<SubjectDirectoryAttributes, IdentityError> {
    let spec = TpmSpecification {
        family: tpm.family.clone(),
        level: tpm.level,
        revision: tpm.revision,
    };
    Ok(SubjectDirectoryAttributes(vec![Attribute {
        oid: TCG_AT_TPM_SPECIFICATION,
        values: SetOfVec::try_from(vec![Any::encode_from(&spec)?])?,
    }]))
}

/// `PolicyInformation`, with the policy identifier as an encoded OBJECT IDENTIFIER:
/// `x509-cert`'s own type holds a `const-oid` identifier, which cannot hold
/// [`VEK_CERT_POLICY`].
#[derive(Sequence)]
struct PolicyInformation {
    policy_identifier: Any,
    policy_qualifiers: Option<Vec<PolicyQualifierInfo>>,
}

/// `certificatePolicies` with [`VEK_CERT_POLICY`] qualified by the profile's user notice.
fn certificate_policies() -> Result<Vec<PolicyInformation>, IdentityError> {
    let notice = UserNotice {
        notice_ref: None,
        explicit_text: Some(DisplayText::Utf8String(EK_POLICY_NOTICE.into())),
    };
    let policy = Asn1Object::from_str(VEK_CERT_POLICY)?;
    Ok(vec![PolicyInformation {
        policy_identifier: Any::new(Tag::ObjectIdentifier, policy.as_slice())?,
        policy_qualifiers: Some(vec![PolicyQualifierInfo {
            policy_qualifier_id: ID_QT_UNOTICE,
            qualifier: Some(Any::encode_from(&notice)?),
        }]),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Encode;

    fn info() -> TpmInfo {
        TpmInfo {
            manufacturer: 0x4942_4D00,
            model: "SW   TPM".into(),
            firmware_version: 0x2019_1023,
            family: "2.0".into(),
            level: 0,
            revision: 164,
        }
    }

    /// The extension values encode exactly as the OpenSSL-built certificates of earlier
    /// versions had them (bytes taken from such a certificate).
    #[test]
    fn extension_values_encode_as_before() {
        let der = |v: &dyn Fn() -> Vec<u8>| hex::encode_upper(v());
        assert_eq!(
            der(&|| certificate_policies().unwrap().to_der().unwrap()),
            "3052305006146983A8DA8DD5C78E829EF588FF96DAF3FAD8EF0E3038303606082B060105050702\
             02302A0C2854435041205472757374656420506C6174666F726D204D6F64756C6520456E646F72\
             73656D656E74"
        );
        assert_eq!(
            der(&|| subject_alt_name(&info()).unwrap().to_der().unwrap()),
            "3049A447304531163014060567810502010C0B69643A343934323444303031133011060567810502\
             020C08535720202054504D31163014060567810502030C0B69643A3230313931303233"
        );
        assert_eq!(
            der(&|| subject_directory_attributes(&info())
                .unwrap()
                .to_der()
                .unwrap()),
            "3019301706056781050210310E300C0C03322E30020100020200A4"
        );
        let basic = BasicConstraints {
            ca: false,
            path_len_constraint: None,
        };
        assert_eq!(der(&|| basic.to_der().unwrap()), "3000");
        let usage = |u: KeyUsages| hex::encode_upper(KeyUsage(u.into()).to_der().unwrap());
        assert_eq!(usage(KeyUsages::KeyEncipherment), "03020520");
        assert_eq!(usage(KeyUsages::KeyAgreement), "03020308");
        assert_eq!(
            der(&|| ExtendedKeyUsage(vec![TCG_KP_EK_CERTIFICATE])
                .to_der()
                .unwrap()),
            "300706056781050801"
        );
    }
}
