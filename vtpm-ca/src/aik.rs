//! The AIK an enrolling TPM presents, as a `TPM2B_PUBLIC` (`tpm2_createak -u`).
//!
//! Parsing, the TPM name and the attestation-key rules are `tpm_proto::public`'s; this
//! module owns turning the public area into an OpenSSL key (the subject key of the AIK
//! certificate) and the errors the CA reports for it. Only RSA and ECC (NIST P-256, P-384,
//! P-521) keys become keys; [`AikPublic::violations`] says whether one is a proper AIK.

use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::error::ErrorStack;
use openssl::nid::Nid;
use openssl::pkey::{PKey, PKeyRef, Public};
use openssl::rsa::Rsa;
use tpm_proto::public::{curve, PublicParams, TpmPublic};
use tpm_proto::WireError;

pub use tpm_proto::public::{alg, attr};

#[derive(Debug, thiserror::Error)]
pub enum AikError {
    #[error("malformed TPM2B_PUBLIC: {0}")]
    Malformed(WireError),
    #[error("unsupported key type {0:#06x}: an AIK is an RSA or ECC key")]
    UnsupportedType(u16),
    #[error("unsupported name algorithm {0:#06x}: an AIK is named with SHA-256")]
    UnsupportedNameAlg(u16),
    #[error("unsupported ECC curve {0:#06x}: expected NIST P-256, P-384 or P-521")]
    UnsupportedCurve(u16),
    #[error("the public key is not valid: {0}")]
    BadKey(ErrorStack),
}

/// The public area of an AIK, with its name and OpenSSL key.
#[derive(Debug, Clone)]
pub struct AikPublic {
    pub public: TpmPublic,
    name: Vec<u8>,
    key: PKey<Public>,
}

impl AikPublic {
    /// Reads a marshalled `TPM2B_PUBLIC` (u16 size, then exactly the `TPMT_PUBLIC`).
    pub fn from_tpm2b(tpm2b: &[u8]) -> Result<Self, AikError> {
        Self::from_public(TpmPublic::parse_tpm2b(tpm2b).map_err(AikError::Malformed)?)
    }

    /// Reads a marshalled `TPMT_PUBLIC`.
    pub fn from_tpmt(tpmt: &[u8]) -> Result<Self, AikError> {
        Self::from_public(TpmPublic::parse(tpmt).map_err(AikError::Malformed)?)
    }

    fn from_public(public: TpmPublic) -> Result<Self, AikError> {
        let key = match &public.params {
            PublicParams::Rsa {
                exponent, modulus, ..
            } => rsa_key(*exponent, modulus).map_err(AikError::BadKey)?,
            PublicParams::Ecc { curve: c, x, y, .. } => {
                let nid = match *c {
                    curve::NIST_P256 => Nid::X9_62_PRIME256V1,
                    curve::NIST_P384 => Nid::SECP384R1,
                    curve::NIST_P521 => Nid::SECP521R1,
                    other => return Err(AikError::UnsupportedCurve(other)),
                };
                ec_key(nid, x, y).map_err(AikError::BadKey)?
            }
            PublicParams::Other(t) => return Err(AikError::UnsupportedType(*t)),
        };
        let name = public
            .name()
            .map_err(|_| AikError::UnsupportedNameAlg(public.name_alg))?;
        Ok(AikPublic { public, name, key })
    }

    /// The TPM name: `nameAlg` (big-endian u16) followed by `H_nameAlg(TPMT_PUBLIC)`.
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// The public key, for the AIK certificate.
    pub fn public_key(&self) -> &PKeyRef<Public> {
        &self.key
    }

    /// Why this is not a proper attestation key; empty if it is one.
    pub fn violations(&self) -> Vec<String> {
        self.public.aik_violations()
    }
}

fn rsa_key(exponent: u32, modulus: &[u8]) -> Result<PKey<Public>, ErrorStack> {
    let e = if exponent == 0 { 65_537 } else { exponent };
    let rsa = Rsa::from_public_components(BigNum::from_slice(modulus)?, BigNum::from_u32(e)?)?;
    PKey::from_rsa(rsa)
}

fn ec_key(nid: Nid, x: &[u8], y: &[u8]) -> Result<PKey<Public>, ErrorStack> {
    let group = EcGroup::from_curve_name(nid)?;
    let x = BigNum::from_slice(x)?;
    let y = BigNum::from_slice(y)?;
    // Fails for a point that is not on the curve.
    let key = EcKey::from_public_key_affine_coordinates(&group, &x, &y)?;
    key.check_key()?;
    PKey::from_ec_key(key)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A marshalled TPM2B_PUBLIC of a restricted ECDSA P-256 key as `tpm2_createak -G ecc
    /// -g sha256 -s ecdsa` makes it (taken from swtpm), and its name (`-n ak.name`).
    pub(crate) const AK_PUB: &str = "00580023000b00050072000000100018000b00030010\
        0020b9fd050f0a7b725f3026c2a27504cdd18e0daac60db8bb5ae93bd729ee81a56e\
        0020f03e9211db6490cc3c754be75749b5c502cc7fc78349b135c8cd73a9b699788d";
    pub(crate) const AK_NAME: &str =
        "000b78bf596c31175a56bc22217e8fd7cf33ed570763d999391189bd07febf87a1fb";

    pub(crate) fn ak_pub() -> Vec<u8> {
        hex::decode(AK_PUB.replace(' ', "")).unwrap()
    }

    #[test]
    fn parses_a_tpm2_tools_ak_and_computes_its_name() {
        let aik = AikPublic::from_tpm2b(&ak_pub()).unwrap();
        assert_eq!(aik.public.object_type, alg::ECC);
        assert_eq!(hex::encode(aik.name()), AK_NAME);
        assert!(aik.violations().is_empty(), "{:?}", aik.violations());
        assert_eq!(aik.public_key().bits(), 256);
    }

    #[test]
    fn reports_every_missing_attribute() {
        let mut raw = ak_pub();
        // TPMA_OBJECT is at offset 2 (size) + 2 (type) + 2 (nameAlg).
        let attrs = attr::FIXED_TPM | attr::USER_WITH_AUTH | attr::DECRYPT | attr::SIGN;
        raw[6..10].copy_from_slice(&attrs.to_be_bytes());
        let aik = AikPublic::from_tpm2b(&raw).unwrap();
        let v = aik.violations().join("\n");
        assert!(v.contains("restricted is not set"), "{v}");
        assert!(v.contains("fixedParent is not set"), "{v}");
        assert!(v.contains("sensitiveDataOrigin is not set"), "{v}");
        assert!(v.contains("decrypt is set"), "{v}");
        assert!(!v.contains("fixedTPM"), "{v}");
    }

    #[test]
    fn rejects_truncated_and_trailing_bytes() {
        let raw = ak_pub();
        assert!(matches!(
            AikPublic::from_tpm2b(&raw[..raw.len() - 1]),
            Err(AikError::Malformed(_))
        ));
        let mut long = raw.clone();
        long.push(0);
        assert!(matches!(
            AikPublic::from_tpm2b(&long),
            Err(AikError::Malformed(_))
        ));
        let mut tpmt = raw[2..].to_vec();
        tpmt.push(0);
        assert!(matches!(
            AikPublic::from_tpmt(&tpmt),
            Err(AikError::Malformed(_))
        ));
    }

    #[test]
    fn rejects_a_point_off_the_curve() {
        let mut raw = ak_pub();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(matches!(
            AikPublic::from_tpm2b(&raw),
            Err(AikError::BadKey(_))
        ));
    }
}
