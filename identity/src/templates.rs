//! The endorsement key templates of the TCG EK Credential Profile for TPM 2.0 (version 2.x,
//! section 2.2.1.4, "Low Range" templates L-1 and L-2), marshalled as `TPMT_PUBLIC`.
//!
//! These are the templates `tpm2_createek -G rsa` / `-G ecc` use (and that swtpm_setup, the
//! Linux TPM stack and go-attestation assume): CreatePrimary under the endorsement hierarchy
//! with them yields the EK whose certificate sits at the matching NV index. Being the same
//! template is what makes the guest's `tpm2_createek` find the key a vEK certificate names;
//! `tests/identity.rs` checks that against tpm2-tools and swtpm.

use tpm_proto::commands::{ECC_EK_CERT_INDEX, RSA_EK_CERT_INDEX};
use tpm_proto::public::{alg, attr, curve};
use tpm_proto::CommandBuilder;

/// fixedTPM | fixedParent | sensitiveDataOrigin | adminWithPolicy | restricted | decrypt
/// (userWithAuth clear: the EK is used only through its policy).
pub const EK_OBJECT_ATTRIBUTES: u32 = attr::FIXED_TPM
    | attr::FIXED_PARENT
    | attr::SENSITIVE_DATA_ORIGIN
    | attr::ADMIN_WITH_POLICY
    | attr::RESTRICTED
    | attr::DECRYPT;

/// The EK's authPolicy: `TPM2_PolicySecret(TPM_RH_ENDORSEMENT)` under SHA-256.
pub const EK_AUTH_POLICY: [u8; 32] = [
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xB3, 0xF8, 0x1A, 0x90, 0xCC, 0x8D, 0x46, 0xA5, 0xD7, 0x24,
    0xFD, 0x52, 0xD7, 0x6E, 0x06, 0x52, 0x0B, 0x64, 0xF2, 0xA1, 0xDA, 0x1B, 0x33, 0x14, 0x69, 0xAA,
];

/// Which of the two standard EKs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EkKind {
    /// Template L-1: RSA 2048, AES-128-CFB, at NV index 0x01c00002.
    Rsa2048,
    /// Template L-2: ECC NIST P-256, AES-128-CFB, at NV index 0x01c0000a.
    EccP256,
}

impl EkKind {
    pub const ALL: [EkKind; 2] = [EkKind::Rsa2048, EkKind::EccP256];

    /// Where the EK certificate of this kind is stored.
    pub fn cert_nv_index(self) -> u32 {
        match self {
            EkKind::Rsa2048 => RSA_EK_CERT_INDEX,
            EkKind::EccP256 => ECC_EK_CERT_INDEX,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EkKind::Rsa2048 => "RSA 2048",
            EkKind::EccP256 => "ECC NIST P-256",
        }
    }

    /// The marshalled `TPMT_PUBLIC` template (the body of CreatePrimary's `inPublic`).
    pub fn template(self) -> Vec<u8> {
        let common = |b: CommandBuilder, object_type: u16| {
            b.u16(object_type)
                .u16(alg::SHA256)
                .u32(EK_OBJECT_ATTRIBUTES)
                .tpm2b(&EK_AUTH_POLICY)
                // symmetric: TPMT_SYM_DEF_OBJECT AES-128-CFB
                .u16(alg::AES)
                .u16(128)
                .u16(alg::CFB)
                // scheme: TPM_ALG_NULL
                .u16(alg::NULL)
        };
        // A scratch builder: only the bytes after the 10-byte header are kept.
        let b = common(CommandBuilder::new(0, 0), self.alg());
        let b = match self {
            EkKind::Rsa2048 => b
                .u16(2048) // keyBits
                .u32(0) // exponent: 0 means the default 65537
                .tpm2b(&[0u8; 256]), // unique.rsa
            EkKind::EccP256 => b
                .u16(curve::NIST_P256)
                .u16(alg::NULL) // kdf
                .tpm2b(&[0u8; 32]) // unique.ecc.x
                .tpm2b(&[0u8; 32]), // unique.ecc.y
        };
        b.finish().split_off(tpm_proto::HEADER_SIZE)
    }

    pub(super) fn alg(self) -> u16 {
        match self {
            EkKind::Rsa2048 => alg::RSA,
            EkKind::EccP256 => alg::ECC,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        hex::decode(&s).unwrap()
    }

    /// The profile's tables, field by field, written out independently of the builder.
    const HEAD: &str = "000b 000300b2 0020
    837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa
    0006 0080 0043 0010";

    #[test]
    fn rsa_template_is_l1() {
        let mut expected = unhex(&format!("0001 {HEAD} 0800 00000000 0100"));
        expected.extend_from_slice(&[0u8; 256]);
        assert_eq!(EkKind::Rsa2048.template(), expected);
        assert_eq!(expected.len(), 2 + 2 + 4 + 34 + 6 + 2 + 2 + 4 + 258);
    }

    #[test]
    fn ecc_template_is_l2() {
        let mut expected = unhex(&format!("0023 {HEAD} 0003 0010 0020"));
        expected.extend_from_slice(&[0u8; 32]);
        expected.extend_from_slice(&[0x00, 0x20]);
        expected.extend_from_slice(&[0u8; 32]);
        assert_eq!(EkKind::EccP256.template(), expected);
    }

    #[test]
    fn attributes_and_policy() {
        assert_eq!(EK_OBJECT_ATTRIBUTES, 0x0003_00B2);
        // PolicySecret(TPM_RH_ENDORSEMENT) from a zero digest, empty policyRef:
        // H(H(0^32 || TPM_CC_PolicySecret || name(TPM_RH_ENDORSEMENT)) || "")
        let mut data = vec![0u8; 32];
        data.extend_from_slice(&0x0000_0151u32.to_be_bytes());
        data.extend_from_slice(&0x4000_000Bu32.to_be_bytes());
        let step = openssl::sha::sha256(&data);
        assert_eq!(openssl::sha::sha256(&step), EK_AUTH_POLICY);
    }
}
