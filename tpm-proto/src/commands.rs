//! Builders for the commands the tests and benchmarks send, and parsers for their responses.
//!
//! All authorizations are empty passwords; objects are created in the owner hierarchy.

use crate::{cc, tag, CommandBuilder, ResponseReader, WireError};

pub const TPM_SU_CLEAR: u16 = 0x0000;
pub const TPM_SU_STATE: u16 = 0x0001;
pub const TPM_RH_OWNER: u32 = 0x4000_0001;
pub const TPM_RH_NULL: u32 = 0x4000_0007;
pub const TPM_ALG_SHA256: u16 = 0x000B;
pub const TPM_ALG_NULL: u16 = 0x0010;
pub const TPM_ALG_ECDSA: u16 = 0x0018;
pub const TPM_ALG_ECC: u16 = 0x0023;
pub const TPM_ECC_NIST_P256: u16 = 0x0003;

/// NV attributes: owner/auth read and write, no dictionary-attack protection.
pub const NV_ORDINARY_ATTRS: u32 =
    0x0000_0002 | 0x0000_0004 | 0x0002_0000 | 0x0004_0000 | 0x0200_0000;
/// Same, as a monotonic counter (TPM_NT_COUNTER in bits 4..7).
pub const NV_COUNTER_ATTRS: u32 = NV_ORDINARY_ATTRS | (1 << 4);

pub fn startup(su: u16) -> Vec<u8> {
    CommandBuilder::no_sessions(cc::STARTUP).u16(su).finish()
}

pub fn shutdown(su: u16) -> Vec<u8> {
    CommandBuilder::no_sessions(cc::SHUTDOWN).u16(su).finish()
}

pub fn get_random(bytes: u16) -> Vec<u8> {
    CommandBuilder::no_sessions(cc::GET_RANDOM)
        .u16(bytes)
        .finish()
}

/// Parses a GetRandom response into the random bytes.
pub fn parse_get_random(resp: &[u8]) -> Result<Vec<u8>, WireError> {
    Ok(ResponseReader::success(resp)?.tpm2b()?.to_vec())
}

/// PCR_Extend of one SHA-256 digest into `pcr`.
pub fn pcr_extend_sha256(pcr: u32, digest: &[u8; 32]) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::PCR_EXTEND)
        .u32(pcr)
        .password_auth(&[])
        .u32(1)
        .u16(TPM_ALG_SHA256)
        .bytes(digest)
        .finish()
}

/// PCR_Read of one PCR in the SHA-256 bank.
pub fn pcr_read_sha256(pcr: u32) -> Vec<u8> {
    let mut select = [0u8; 3];
    if let Some(byte) = select.get_mut((pcr / 8) as usize) {
        *byte = 1 << (pcr % 8);
    }
    CommandBuilder::no_sessions(cc::PCR_READ)
        .u32(1)
        .u16(TPM_ALG_SHA256)
        .u8(3)
        .bytes(&select)
        .finish()
}

/// Parses a PCR_Read response for a single selected PCR into its digest.
pub fn parse_pcr_read_single(resp: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut r = ResponseReader::success(resp)?;
    let _update_counter = r.u32()?;
    let selections = r.u32()?;
    for _ in 0..selections {
        let _hash = r.u16()?;
        let n = r.u8()?;
        r.skip(usize::from(n))?;
    }
    let digests = r.u32()?;
    if digests != 1 {
        return Err(WireError::Unexpected(
            "PCR_Read returned other than one digest",
        ));
    }
    Ok(r.tpm2b()?.to_vec())
}

/// CreatePrimary of an ECC NIST P-256 ECDSA/SHA-256 signing key under the owner hierarchy.
pub fn create_primary_ecc_signing() -> Vec<u8> {
    // fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | sign
    const ATTRS: u32 = 0x0000_0002 | 0x0000_0010 | 0x0000_0020 | 0x0000_0040 | 0x0004_0000;
    let public = CommandBuilder::new(0, 0) // scratch buffer for the TPMT_PUBLIC body
        .u16(TPM_ALG_ECC)
        .u16(TPM_ALG_SHA256)
        .u32(ATTRS)
        .tpm2b(&[])
        .u16(TPM_ALG_NULL) // symmetric
        .u16(TPM_ALG_ECDSA)
        .u16(TPM_ALG_SHA256)
        .u16(TPM_ECC_NIST_P256)
        .u16(TPM_ALG_NULL) // kdf
        .tpm2b(&[]) // unique.x
        .tpm2b(&[]) // unique.y
        .finish();
    let public = &public[crate::HEADER_SIZE..];
    CommandBuilder::with_sessions(cc::CREATE_PRIMARY)
        .u32(TPM_RH_OWNER)
        .password_auth(&[])
        .u16(4) // TPM2B_SENSITIVE_CREATE: empty userAuth + empty data
        .tpm2b(&[])
        .tpm2b(&[])
        .tpm2b(public)
        .tpm2b(&[]) // outsideInfo
        .u32(0) // creationPCR: empty selection
        .finish()
}

/// The loaded key's handle and public point from a CreatePrimary response of
/// [`create_primary_ecc_signing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EccPrimary {
    pub handle: u32,
    pub x: Vec<u8>,
    pub y: Vec<u8>,
}

pub fn parse_create_primary_ecc(resp: &[u8]) -> Result<EccPrimary, WireError> {
    let mut r = ResponseReader::success(resp)?;
    let handle = r.u32()?;
    let _param_size = r.u32()?;
    let public = r.tpm2b()?;
    let mut p = ResponseReader::new(public);
    if p.u16()? != TPM_ALG_ECC {
        return Err(WireError::Unexpected(
            "CreatePrimary did not return an ECC key",
        ));
    }
    let _name_alg = p.u16()?;
    let _attrs = p.u32()?;
    let _policy = p.tpm2b()?;
    if p.u16()? != TPM_ALG_NULL {
        return Err(WireError::Unexpected(
            "signing key with a symmetric algorithm",
        ));
    }
    if p.u16()? != TPM_ALG_NULL {
        let _scheme_hash = p.u16()?;
    }
    let _curve = p.u16()?;
    if p.u16()? != TPM_ALG_NULL {
        let _kdf_hash = p.u16()?;
    }
    let x = p.tpm2b()?.to_vec();
    let y = p.tpm2b()?.to_vec();
    Ok(EccPrimary { handle, x, y })
}

/// Sign a SHA-256 `digest` with an ECDSA key (the key's own scheme; a NULL hash check
/// ticket, which an unrestricted key accepts).
pub fn sign_ecdsa_sha256(key: u32, digest: &[u8; 32]) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::SIGN)
        .u32(key)
        .password_auth(&[])
        .tpm2b(digest)
        .u16(TPM_ALG_ECDSA)
        .u16(TPM_ALG_SHA256)
        .u16(tag::HASHCHECK)
        .u32(TPM_RH_NULL)
        .tpm2b(&[])
        .finish()
}

/// (r, s) of an ECDSA signature response.
pub fn parse_sign_ecdsa(resp: &[u8]) -> Result<(Vec<u8>, Vec<u8>), WireError> {
    let mut r = ResponseReader::success(resp)?;
    let _param_size = r.u32()?;
    if r.u16()? != TPM_ALG_ECDSA {
        return Err(WireError::Unexpected("signature is not ECDSA"));
    }
    let _hash = r.u16()?;
    let sig_r = r.tpm2b()?.to_vec();
    let sig_s = r.tpm2b()?.to_vec();
    Ok((sig_r, sig_s))
}

/// EvictControl in the owner hierarchy: makes `object` persistent at `persistent` (or, with
/// a persistent `object`, evicts it).
pub fn evict_control(object: u32, persistent: u32) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::EVICT_CONTROL)
        .u32(TPM_RH_OWNER)
        .u32(object)
        .password_auth(&[])
        .u32(persistent)
        .finish()
}

/// ReadPublic of an object (answers TPM_RC_HANDLE for one that does not exist).
pub fn read_public(object: u32) -> Vec<u8> {
    CommandBuilder::no_sessions(cc::READ_PUBLIC)
        .u32(object)
        .finish()
}

pub fn flush_context(handle: u32) -> Vec<u8> {
    CommandBuilder::no_sessions(cc::FLUSH_CONTEXT)
        .u32(handle)
        .finish()
}

/// NV_DefineSpace in the owner hierarchy with an empty index password.
pub fn nv_define_space(index: u32, size: u16, attributes: u32) -> Vec<u8> {
    let public = CommandBuilder::new(0, 0)
        .u32(index)
        .u16(TPM_ALG_SHA256)
        .u32(attributes)
        .tpm2b(&[])
        .u16(size)
        .finish();
    CommandBuilder::with_sessions(cc::NV_DEFINE_SPACE)
        .u32(TPM_RH_OWNER)
        .password_auth(&[])
        .tpm2b(&[])
        .tpm2b(&public[crate::HEADER_SIZE..])
        .finish()
}

pub fn nv_undefine_space(index: u32) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::NV_UNDEFINE_SPACE)
        .u32(TPM_RH_OWNER)
        .u32(index)
        .password_auth(&[])
        .finish()
}

/// NV_Write authorised by the index itself.
pub fn nv_write(index: u32, offset: u16, data: &[u8]) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::NV_WRITE)
        .u32(index)
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
    CommandBuilder::with_sessions(cc::NV_READ)
        .u32(index)
        .u32(index)
        .password_auth(&[])
        .u16(size)
        .u16(offset)
        .finish()
}

pub fn parse_nv_read(resp: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut r = ResponseReader::success(resp)?;
    let _param_size = r.u32()?;
    Ok(r.tpm2b()?.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Header;

    #[test]
    fn every_builder_produces_a_consistent_header() {
        for cmd in [
            startup(TPM_SU_CLEAR),
            get_random(32),
            pcr_extend_sha256(16, &[0xaa; 32]),
            pcr_read_sha256(16),
            create_primary_ecc_signing(),
            sign_ecdsa_sha256(0x8000_0000, &[1; 32]),
            nv_define_space(0x0150_0001, 64, NV_ORDINARY_ATTRS),
            nv_write(0x0150_0001, 0, b"hello"),
            nv_read(0x0150_0001, 5, 0),
            nv_increment(0x0150_0002),
            flush_context(0x8000_0000),
            evict_control(0x8000_0000, 0x8100_0001),
            read_public(0x8100_0001),
        ] {
            let h = Header::parse(&cmd).unwrap();
            assert_eq!(h.size as usize, cmd.len());
            assert!(h.tag == tag::NO_SESSIONS || h.tag == tag::SESSIONS);
        }
    }

    #[test]
    fn pcr_read_selects_the_right_bit() {
        let cmd = pcr_read_sha256(16);
        assert_eq!(&cmd[cmd.len() - 3..], &[0, 0, 1]);
    }

    #[test]
    fn tpm_error_is_surfaced() {
        let resp = crate::error_response(crate::rc::FAILURE);
        assert_eq!(
            parse_get_random(&resp),
            Err(WireError::Tpm(crate::rc::FAILURE))
        );
    }
}
