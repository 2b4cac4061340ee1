//! The endorsement key templates of the TCG EK Credential Profile for TPM 2.0 (version 2.x,
//! section 2.2.1.4, "Low Range" templates L-1 and L-2), marshalled as `TPMT_PUBLIC`.
//!
//! These are the templates `tpm2_createek -G rsa` / `-G ecc` use (and that swtpm_setup, the
//! Linux TPM stack and go-attestation assume): CreatePrimary under the endorsement hierarchy
//! with them yields the EK whose certificate sits at the matching NV index. Being the same
//! template is what makes the guest's `tpm2_createek` find the key a vEK certificate names;
//! `tests/identity.rs` checks that against tpm2-tools and swtpm.

use tpm_proto::CommandBuilder;

pub const TPM_ALG_RSA: u16 = 0x0001;
pub const TPM_ALG_AES: u16 = 0x0006;
pub const TPM_ALG_SHA256: u16 = 0x000B;
pub const TPM_ALG_NULL: u16 = 0x0010;
pub const TPM_ALG_ECC: u16 = 0x0023;
pub const TPM_ALG_CFB: u16 = 0x0043;
pub const TPM_ECC_NIST_P256: u16 = 0x0003;

/// fixedTPM | fixedParent | sensitiveDataOrigin | adminWithPolicy | restricted | decrypt
/// (userWithAuth clear: the EK is used only through its policy).
pub const EK_OBJECT_ATTRIBUTES: u32 =
    (1 << 1) | (1 << 4) | (1 << 5) | (1 << 7) | (1 << 16) | (1 << 17);

/// The EK's authPolicy: `TPM2_PolicySecret(TPM_RH_ENDORSEMENT)` under SHA-256.
pub const EK_AUTH_POLICY: [u8; 32] = [
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xB3, 0xF8, 0x1A, 0x90, 0xCC, 0x8D, 0x46, 0xA5, 0xD7, 0x24,
    0xFD, 0x52, 0xD7, 0x6E, 0x06, 0x52, 0x0B, 0x64, 0xF2, 0xA1, 0xDA, 0x1B, 0x33, 0x14, 0x69, 0xAA,
];

/// NV index of the RSA 2048 EK certificate (TCG EK Credential Profile, section 2.2.1.4).
pub const RSA_EK_CERT_NV_INDEX: u32 = 0x01C0_0002;
/// NV index of the ECC NIST P-256 EK certificate.
pub const ECC_EK_CERT_NV_INDEX: u32 = 0x01C0_000A;

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
            EkKind::Rsa2048 => RSA_EK_CERT_NV_INDEX,
            EkKind::EccP256 => ECC_EK_CERT_NV_INDEX,
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
        let common = |b: CommandBuilder, alg: u16| {
            b.u16(alg)
                .u16(TPM_ALG_SHA256)
                .u32(EK_OBJECT_ATTRIBUTES)
                .tpm2b(&EK_AUTH_POLICY)
                // symmetric: TPMT_SYM_DEF_OBJECT AES-128-CFB
                .u16(TPM_ALG_AES)
                .u16(128)
                .u16(TPM_ALG_CFB)
                // scheme: TPM_ALG_NULL
                .u16(TPM_ALG_NULL)
        };
        // A scratch builder: only the bytes after the 10-byte header are kept.
        let b = common(CommandBuilder::new(0, 0), self.alg());
        let b = match self {
            EkKind::Rsa2048 => b
                .u16(2048) // keyBits
                .u32(0) // exponent: 0 means the default 65537
                .tpm2b(&[0u8; 256]), // unique.rsa
            EkKind::EccP256 => b
                .u16(TPM_ECC_NIST_P256)
                .u16(TPM_ALG_NULL) // kdf
                .tpm2b(&[0u8; 32]) // unique.ecc.x
                .tpm2b(&[0u8; 32]), // unique.ecc.y
        };
        b.finish().split_off(tpm_proto::HEADER_SIZE)
    }

    pub(super) fn alg(self) -> u16 {
        match self {
            EkKind::Rsa2048 => TPM_ALG_RSA,
            EkKind::EccP256 => TPM_ALG_ECC,
        }
    }
}

#[cfg(test)]
#[path = "../tests/identity_templates.rs"]
mod tests;
