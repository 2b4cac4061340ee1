//! NV storage: defining, writing, incrementing, reading and describing NV indices (the EK
//! certificates among them).

use crate::public::alg;
use crate::{cc, CommandBuilder, ResponseReader, WireError};

use super::{response_parameters, single_tpm2b_parameter, TPM_RH_OWNER};

/// TPMA_NV bits (TCG TPM 2.0 Library, Part 2 §13.4).
pub mod nv_attr {
    pub const PPWRITE: u32 = 1 << 0;
    pub const OWNERWRITE: u32 = 1 << 1;
    pub const AUTHWRITE: u32 = 1 << 2;
    /// TPM_NT_COUNTER in the index type field (bits 4..7).
    pub const TYPE_COUNTER: u32 = 1 << 4;
    pub const POLICY_DELETE: u32 = 1 << 10;
    pub const WRITEDEFINE: u32 = 1 << 13;
    pub const PPREAD: u32 = 1 << 16;
    pub const OWNERREAD: u32 = 1 << 17;
    pub const AUTHREAD: u32 = 1 << 18;
    pub const NO_DA: u32 = 1 << 25;
    /// Set by the TPM once the index has been written.
    pub const WRITTEN: u32 = 1 << 29;
    pub const PLATFORMCREATE: u32 = 1 << 30;
}

/// NV attributes: owner/auth read and write, no dictionary-attack protection.
pub const NV_ORDINARY_ATTRS: u32 = nv_attr::OWNERWRITE
    | nv_attr::AUTHWRITE
    | nv_attr::OWNERREAD
    | nv_attr::AUTHREAD
    | nv_attr::NO_DA;
/// Same, as a monotonic counter.
pub const NV_COUNTER_ATTRS: u32 = NV_ORDINARY_ATTRS | nv_attr::TYPE_COUNTER;
/// NV attributes of an EK certificate index as swtpm_setup defines them (and as the TCG EK
/// Credential Profile describes real TPMs'): PPWRITE | WRITEDEFINE | PPREAD | OWNERREAD |
/// AUTHREAD | NO_DA | PLATFORMCREATE, defined with [`nv_define_space_with_auth`] and
/// [`TPM_RH_PLATFORM`] and written with [`nv_write_with_auth`] under platform authorization.
pub const NV_EK_CERT_ATTRS: u32 = nv_attr::PPWRITE
    | nv_attr::WRITEDEFINE
    | nv_attr::PPREAD
    | nv_attr::OWNERREAD
    | nv_attr::AUTHREAD
    | nv_attr::NO_DA
    | nv_attr::PLATFORMCREATE;

/// NV index of the RSA 2048 EK certificate (TCG EK Credential Profile, section 2.2.1.4, low
/// range).
pub const RSA_EK_CERT_INDEX: u32 = 0x01C0_0002;
/// NV index of the ECC NIST P-256 EK certificate (low range).
pub const ECC_EK_CERT_INDEX: u32 = 0x01C0_000A;

/// Largest NV_Write / NV_Read payload (MAX_NV_BUFFER_SIZE of libtpms, and the PC Client
/// profile's minimum): larger contents take several commands.
pub const MAX_NV_BUFFER: usize = 1024;

/// NV_DefineSpace in the owner hierarchy with an empty index password.
pub fn nv_define_space(index: u32, size: u16, attributes: u32) -> Vec<u8> {
    nv_define_space_with_auth(TPM_RH_OWNER, index, size, attributes)
}

/// NV_DefineSpace authorised by `auth_handle` (TPM_RH_OWNER, or TPM_RH_PLATFORM for a
/// platform-created index such as an EK certificate's, whose attributes must then include
/// TPMA_NV_PLATFORMCREATE), with an empty index password and SHA-256 name.
pub fn nv_define_space_with_auth(
    auth_handle: u32,
    index: u32,
    size: u16,
    attributes: u32,
) -> Vec<u8> {
    let public = CommandBuilder::new(0, 0)
        .u32(index)
        .u16(alg::SHA256)
        .u32(attributes)
        .tpm2b(&[])
        .u16(size)
        .finish();
    CommandBuilder::with_sessions(cc::NV_DEFINE_SPACE)
        .u32(auth_handle)
        .password_auth(&[])
        .tpm2b(&[])
        .tpm2b(&public[crate::HEADER_SIZE..])
        .finish()
}

pub fn nv_undefine_space(index: u32) -> Vec<u8> {
    nv_undefine_space_with_auth(TPM_RH_OWNER, index)
}

/// NV_UndefineSpace authorised by `auth_handle` (TPM_RH_PLATFORM for a platform-created
/// index).
pub fn nv_undefine_space_with_auth(auth_handle: u32, index: u32) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::NV_UNDEFINE_SPACE)
        .u32(auth_handle)
        .u32(index)
        .password_auth(&[])
        .finish()
}

/// NV_Write authorised by the index itself.
pub fn nv_write(index: u32, offset: u16, data: &[u8]) -> Vec<u8> {
    nv_write_with_auth(index, index, offset, data)
}

/// NV_Write authorised by `auth_handle`: the index itself (TPMA_NV_AUTHWRITE), TPM_RH_OWNER
/// (OWNERWRITE) or TPM_RH_PLATFORM (PPWRITE). `data` is at most [`MAX_NV_BUFFER`] bytes;
/// larger contents take several writes.
pub fn nv_write_with_auth(auth_handle: u32, index: u32, offset: u16, data: &[u8]) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::NV_WRITE)
        .u32(auth_handle)
        .u32(index)
        .password_auth(&[])
        .tpm2b(data)
        .u16(offset)
        .finish()
}

/// NV_Increment of a counter index, authorised by the index itself.
pub fn nv_increment(index: u32) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::NV_INCREMENT)
        .u32(index)
        .u32(index)
        .password_auth(&[])
        .finish()
}

/// NV_Read authorised by the index itself.
pub fn nv_read(index: u32, size: u16, offset: u16) -> Vec<u8> {
    nv_read_with_auth(index, index, size, offset)
}

/// NV_Read of `size` bytes (at most [`MAX_NV_BUFFER`]) from `offset`, authorised by
/// `auth_handle` with an empty password: the index itself (TPMA_NV_AUTHREAD), TPM_RH_OWNER
/// (OWNERREAD) or TPM_RH_PLATFORM (PPREAD).
pub fn nv_read_with_auth(auth_handle: u32, index: u32, size: u16, offset: u16) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::NV_READ)
        .u32(auth_handle)
        .u32(index)
        .password_auth(&[])
        .u16(size)
        .u16(offset)
        .finish()
}

/// The data from an NV_Read response.
pub fn parse_nv_read(resp: &[u8]) -> Result<Vec<u8>, WireError> {
    single_tpm2b_parameter(resp)
}

/// NV_ReadPublic of `index` (answers TPM_RC_HANDLE for an index that is not defined).
pub fn nv_read_public(index: u32) -> Vec<u8> {
    CommandBuilder::no_sessions(cc::NV_READ_PUBLIC)
        .u32(index)
        .finish()
}

/// An NV index's public area (TPMS_NV_PUBLIC), as NV_ReadPublic answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvPublic {
    pub index: u32,
    pub name_alg: u16,
    /// TPMA_NV (see [`nv_attr`]).
    pub attributes: u32,
    pub auth_policy: Vec<u8>,
    /// The size of the index's data.
    pub data_size: u16,
}

/// The public area from an NV_ReadPublic response (its name is checked for size and
/// dropped).
pub fn parse_nv_read_public(resp: &[u8]) -> Result<NvPublic, WireError> {
    let (_, mut r) = response_parameters(resp, 0)?;
    let mut p = ResponseReader::new(r.tpm2b()?);
    let _name = r.tpm2b()?;
    let public = NvPublic {
        index: p.u32()?,
        name_alg: p.u16()?,
        attributes: p.u32()?,
        auth_policy: p.tpm2b()?.to_vec(),
        data_size: p.u16()?,
    };
    p.expect_end("trailing bytes after a TPMS_NV_PUBLIC")?;
    Ok(public)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::tests::response;
    use crate::commands::{AIK_ATTRS, TPM_RH_PLATFORM};
    use crate::{tag, Header};

    #[test]
    fn ek_cert_attributes_match_swtpm_setup() {
        // tpm2_nvreadpublic on swtpm_setup's 0x01c00002 shows 0x62072001 once written.
        assert_eq!(NV_EK_CERT_ATTRS | 0x2000_0000, 0x6207_2001);
        assert_eq!(NV_EK_CERT_ATTRS | nv_attr::WRITTEN, 0x6207_2001);
        assert_eq!(
            (NV_ORDINARY_ATTRS, NV_COUNTER_ATTRS),
            (0x0206_0006, 0x0206_0016)
        );
        assert_eq!(AIK_ATTRS, 0x0005_0072);
    }

    #[test]
    fn with_auth_builders_put_the_auth_handle_first() {
        let define = nv_define_space_with_auth(TPM_RH_PLATFORM, 0x01c0_0002, 1200, 0);
        assert_eq!(&define[10..14], &TPM_RH_PLATFORM.to_be_bytes());
        assert_eq!(
            nv_define_space(0x0150_0001, 64, 0)[10..14],
            TPM_RH_OWNER.to_be_bytes()
        );
        let write = nv_write_with_auth(TPM_RH_PLATFORM, 0x01c0_0002, 7, b"x");
        assert_eq!(&write[10..14], &TPM_RH_PLATFORM.to_be_bytes());
        assert_eq!(&write[14..18], &0x01c0_0002u32.to_be_bytes());
        // ... data TPM2B then the offset.
        assert_eq!(&write[write.len() - 5..], &[0, 1, b'x', 0, 7]);
        assert_eq!(
            nv_write(0x0150_0001, 0, b"x")[10..14],
            0x0150_0001u32.to_be_bytes()
        );
        let undefine = nv_undefine_space_with_auth(TPM_RH_PLATFORM, 0x01c0_0002);
        assert_eq!(&undefine[10..18], &[0x40, 0, 0, 0x0c, 0x01, 0xc0, 0, 0x02]);
    }

    #[test]
    fn nv_read_builders_and_the_public_area() {
        let read = nv_read_with_auth(TPM_RH_PLATFORM, 0x01c0_0002, 512, 1024);
        assert_eq!(&read[10..18], &[0x40, 0, 0, 0x0c, 0x01, 0xc0, 0, 0x02]);
        assert_eq!(&read[read.len() - 4..], &[2, 0, 4, 0]);
        let own = nv_read(0x0150_0001, 5, 0);
        assert_eq!(&own[10..18], &[1, 0x50, 0, 1, 1, 0x50, 0, 1]);

        let cmd = nv_read_public(0x01c0_000a);
        assert_eq!(
            Header::parse(&cmd).unwrap(),
            Header {
                tag: tag::NO_SESSIONS,
                size: 14,
                code: cc::NV_READ_PUBLIC
            }
        );
        assert_eq!(&cmd[10..], &ECC_EK_CERT_INDEX.to_be_bytes());
        // TPM2B_NV_PUBLIC (index, nameAlg, attributes, authPolicy, dataSize), then the name.
        let mut public = ECC_EK_CERT_INDEX.to_be_bytes().to_vec();
        public.extend_from_slice(&[0, 0x0b]);
        public.extend_from_slice(&(NV_EK_CERT_ATTRS | nv_attr::WRITTEN).to_be_bytes());
        public.extend_from_slice(&[0, 1, 0x55, 0x02, 0x9c]);
        let mut params = (public.len() as u16).to_be_bytes().to_vec();
        params.extend_from_slice(&public);
        params.extend_from_slice(&[0, 2, 0, 0x0b]);
        let resp = response(None, &params, false);
        assert_eq!(
            parse_nv_read_public(&resp).unwrap(),
            NvPublic {
                index: ECC_EK_CERT_INDEX,
                name_alg: alg::SHA256,
                attributes: 0x6207_2001,
                auth_policy: vec![0x55],
                data_size: 668,
            }
        );
        for cut in 10..resp.len() {
            let mut short = resp[..cut].to_vec();
            short[2..6].copy_from_slice(&(cut as u32).to_be_bytes());
            assert!(parse_nv_read_public(&short).is_err(), "cut at {cut}");
        }
        assert_eq!(
            parse_nv_read_public(&crate::error_response(0x18b)),
            Err(WireError::Tpm(0x18b))
        );
    }
}
