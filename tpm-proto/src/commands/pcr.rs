//! Platform configuration registers: extending and reading one PCR of the SHA-256 bank.

use crate::public::alg;
use crate::{cc, CommandBuilder, ResponseReader, WireError};

/// PCR_Extend of one SHA-256 digest into `pcr`.
/// First handle of the PCRs (TPM_HT_PCR << 24): PCR `i` is handle `i`.
pub const HR_PCR: u32 = 0x0000_0000;

/// PCR_Reset of `pcr` (empty password).
pub fn pcr_reset(pcr: u32) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::PCR_RESET)
        .u32(pcr)
        .password_auth(&[])
        .finish()
}

/// PCR_Event of `data` (at most 1024 bytes) into `pcr` (empty password).
pub fn pcr_event(pcr: u32, data: &[u8]) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::PCR_EVENT)
        .u32(pcr)
        .password_auth(&[])
        .tpm2b(data)
        .finish()
}

pub fn pcr_extend_sha256(pcr: u32, digest: &[u8; 32]) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::PCR_EXTEND)
        .u32(pcr)
        .password_auth(&[])
        .u32(1)
        .u16(alg::SHA256)
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
        .u16(alg::SHA256)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcr_read_selects_the_right_bit() {
        let cmd = pcr_read_sha256(16);
        assert_eq!(&cmd[cmd.len() - 3..], &[0, 0, 1]);
    }
}
