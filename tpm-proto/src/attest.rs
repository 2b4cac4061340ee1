//! `TPMS_ATTEST` of a quote (TPM 2.0 Library Part 2 §10.12): what a verifier of a TPM2_Quote
//! reads from the signed structure. Pure; every malformed structure is refused.
//!
//! Layout: magic u32 (TPM_GENERATED_VALUE) | type u16 (TPM_ST_ATTEST_QUOTE) |
//! qualifiedSigner TPM2B_NAME | extraData TPM2B_DATA | clockInfo (clock u64, resetCount u32,
//! restartCount u32, safe u8) | firmwareVersion u64 | TPMS_QUOTE_INFO (TPML_PCR_SELECTION,
//! pcrDigest TPM2B_DIGEST).

use crate::{ResponseReader, WireError};

/// TPM_GENERATED_VALUE: the first four bytes of everything the TPM signs about itself.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_QUOTE.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
/// TPM_ALG_SHA256.
pub const TPM_ALG_SHA256: u16 = 0x000b;
/// PCR banks and select bytes accepted (a TPM has a handful of banks and 24 PCRs).
const MAX_BANKS: u32 = 8;
const MAX_SELECT: u8 = 8;

/// A parsed quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteInfo {
    /// The signing key's name (hash algorithm and digest of its public area).
    pub qualified_signer: Vec<u8>,
    /// The caller's qualifying data.
    pub extra_data: Vec<u8>,
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    pub safe: bool,
    pub firmware_version: u64,
    /// The PCRs quoted: per bank, its hash algorithm and its select bitmap.
    pub pcr_select: Vec<(u16, Vec<u8>)>,
    /// Digest of the selected PCR values, in selection order.
    pub pcr_digest: Vec<u8>,
}

impl QuoteInfo {
    /// The PCR indices selected in the `hash` bank, ascending.
    pub fn selected(&self, hash: u16) -> Vec<u8> {
        self.pcr_select
            .iter()
            .filter(|(h, _)| *h == hash)
            .flat_map(|(_, bitmap)| {
                bitmap.iter().enumerate().flat_map(|(byte, bits)| {
                    (0..8u8)
                        .filter(move |bit| bits & (1 << bit) != 0)
                        .map(move |bit| (byte as u8) * 8 + bit)
                })
            })
            .collect()
    }
}

/// Parses a quote's `TPMS_ATTEST` (exactly one structure).
pub fn parse_quote(bytes: &[u8]) -> Result<QuoteInfo, WireError> {
    let mut r = ResponseReader::new(bytes);
    if r.u32()? != TPM_GENERATED_VALUE {
        return Err(WireError::Unexpected("not TPM_GENERATED_VALUE"));
    }
    if r.u16()? != TPM_ST_ATTEST_QUOTE {
        return Err(WireError::Unexpected("not a quote (TPM_ST_ATTEST_QUOTE)"));
    }
    let qualified_signer = r.tpm2b()?.to_vec();
    let extra_data = r.tpm2b()?.to_vec();
    let u64 = |r: &mut ResponseReader| -> Result<u64, WireError> {
        Ok((u64::from(r.u32()?) << 32) | u64::from(r.u32()?))
    };
    let clock = u64(&mut r)?;
    let reset_count = r.u32()?;
    let restart_count = r.u32()?;
    let safe = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(WireError::Unexpected("TPMI_YES_NO out of range")),
    };
    let firmware_version = u64(&mut r)?;
    let banks = r.u32()?;
    if banks > MAX_BANKS {
        return Err(WireError::Unexpected("too many PCR banks"));
    }
    let mut pcr_select = Vec::with_capacity(banks as usize);
    for _ in 0..banks {
        let hash = r.u16()?;
        let size = r.u8()?;
        if size > MAX_SELECT {
            return Err(WireError::Unexpected("PCR select bitmap too long"));
        }
        pcr_select.push((hash, r.take(usize::from(size))?.to_vec()));
    }
    let pcr_digest = r.tpm2b()?.to_vec();
    if r.remaining() != 0 {
        return Err(WireError::Unexpected("bytes after the TPMS_ATTEST"));
    }
    Ok(QuoteInfo {
        qualified_signer,
        extra_data,
        clock,
        reset_count,
        restart_count,
        safe,
        firmware_version,
        pcr_select,
        pcr_digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&TPM_GENERATED_VALUE.to_be_bytes());
        b.extend_from_slice(&TPM_ST_ATTEST_QUOTE.to_be_bytes());
        b.extend_from_slice(&[0, 3, 0, 0x0b, 9]);
        b.extend_from_slice(&[0, 2, 0xaa, 0xbb]);
        b.extend_from_slice(&7u64.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&2u32.to_be_bytes());
        b.push(1);
        b.extend_from_slice(&3u64.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        b.extend_from_slice(&[3, 0xff, 0x00, 0x01]);
        b.extend_from_slice(&[0, 4, 1, 2, 3, 4]);
        b
    }

    #[test]
    fn parses_a_quote_and_refuses_every_truncation() {
        let b = sample();
        let q = parse_quote(&b).unwrap();
        assert_eq!(q.extra_data, [0xaa, 0xbb]);
        assert_eq!(q.clock, 7);
        assert!(q.safe);
        assert_eq!(q.selected(TPM_ALG_SHA256), vec![0, 1, 2, 3, 4, 5, 6, 7, 16]);
        assert_eq!(q.pcr_digest, [1, 2, 3, 4]);
        for cut in 0..b.len() {
            assert!(parse_quote(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = b.clone();
        extra.push(0);
        assert!(parse_quote(&extra).is_err());
        let mut not_quote = b.clone();
        not_quote[5] = 0x17;
        assert!(parse_quote(&not_quote).is_err());
    }
}
