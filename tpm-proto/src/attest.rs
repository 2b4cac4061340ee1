//! Attestation on the wire: PCR selections, reading several PCRs, TPM2_Quote, and the
//! structures a verifier checks (`TPMS_ATTEST` of a quote, `TPMT_SIGNATURE`).
//!
//! Parsers keep the marshalled bytes they were given where a signature covers them (the
//! verifier hashes exactly what the TPM signed, never a re-marshalled copy) and refuse
//! trailing bytes, so one buffer is exactly one structure.

use sha2::{Digest, Sha256};

use crate::public::alg;
use crate::{cc, CommandBuilder, ResponseReader, WireError};

/// TPM_GENERATED_VALUE: the magic every TPMS_ATTEST starts with (`\xffTCG`).
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_QUOTE: the structure tag of a quote's TPMS_ATTEST.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
/// PCRs a PC Client TPM has (a 3-byte selection bitmap).
pub const PCR_COUNT: u8 = 24;
/// Largest digest list TPM2_PCR_Read returns at once (TPML_DIGEST holds at most 8).
pub const PCR_READ_MAX: usize = 8;

/// The TPML_PCR_SELECTION body selecting `pcrs` (each below [`PCR_COUNT`]) in the SHA-256
/// bank: count 1, TPM_ALG_SHA256, sizeofSelect 3, bitmap. PCRs out of range are ignored (the
/// callers validate them).
pub fn sha256_selection(pcrs: &[u8]) -> Vec<u8> {
    let mut bitmap = [0u8; 3];
    for &p in pcrs {
        if let Some(byte) = bitmap.get_mut(usize::from(p / 8)) {
            *byte |= 1 << (p % 8);
        }
    }
    let mut out = Vec::with_capacity(10);
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&alg::SHA256.to_be_bytes());
    out.push(3);
    out.extend_from_slice(&bitmap);
    out
}

/// The PCR indices of a selection bitmap, ascending (the order a TPM digests them in).
pub fn pcrs_of_bitmap(bitmap: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, byte) in bitmap.iter().enumerate() {
        for bit in 0..8u8 {
            if byte & (1 << bit) != 0 {
                // A bitmap longer than 32 bytes names no PCR a TPM has; it is cut there.
                if let Ok(i) = u8::try_from(i * 8 + usize::from(bit)) {
                    out.push(i);
                }
            }
        }
    }
    out
}

/// One bank of a TPML_PCR_SELECTION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelection {
    pub hash: u16,
    /// The selected PCRs, ascending.
    pub pcrs: Vec<u8>,
}

/// Reads a TPML_PCR_SELECTION (at most 16 banks, bitmaps of at most 32 bytes: anything
/// larger is no TPM's).
pub fn read_selection(r: &mut ResponseReader<'_>) -> Result<Vec<PcrSelection>, WireError> {
    let count = r.u32()?;
    if count > 16 {
        return Err(WireError::Unexpected(
            "TPML_PCR_SELECTION with more than 16 banks",
        ));
    }
    (0..count)
        .map(|_| {
            let hash = r.u16()?;
            let size = r.u8()?;
            if size > 32 {
                return Err(WireError::Unexpected("PCR selection bitmap over 32 bytes"));
            }
            Ok(PcrSelection {
                hash,
                pcrs: pcrs_of_bitmap(r.take(usize::from(size))?),
            })
        })
        .collect()
}

/// TPM2_PCR_Read of `pcrs` (at most [`PCR_READ_MAX`]) in the SHA-256 bank.
pub fn pcr_read_sha256(pcrs: &[u8]) -> Vec<u8> {
    CommandBuilder::no_sessions(cc::PCR_READ)
        .bytes(&sha256_selection(pcrs))
        .finish()
}

/// A PCR_Read response: the SHA-256 PCRs it read (ascending) and their digests, in that
/// order. A TPM reads at most 8 per command and says which; the caller asks for the rest.
pub fn parse_pcr_read(resp: &[u8]) -> Result<Vec<(u8, [u8; 32])>, WireError> {
    let mut r = ResponseReader::success(resp)?;
    let _update_counter = r.u32()?;
    let selection = read_selection(&mut r)?;
    let pcrs: Vec<u8> = selection
        .into_iter()
        .filter(|s| s.hash == alg::SHA256)
        .flat_map(|s| s.pcrs)
        .collect();
    let count = r.u32()? as usize;
    if count != pcrs.len() {
        return Err(WireError::Unexpected(
            "PCR_Read returned another number of digests than it selected",
        ));
    }
    let mut out = Vec::with_capacity(count);
    for pcr in pcrs {
        let digest: [u8; 32] = r
            .tpm2b()?
            .try_into()
            .map_err(|_| WireError::Unexpected("a SHA-256 PCR value that is not 32 bytes"))?;
        out.push((pcr, digest));
    }
    r.expect_end("trailing bytes after PCR_Read")?;
    Ok(out)
}

/// TPM2_Quote by `key` (password-authorised, empty) over the SHA-256 `pcrs`, with
/// `qualifying_data` (at most 64 bytes) and the key's own signing scheme (TPM_ALG_NULL).
pub fn quote(key: u32, qualifying_data: &[u8], pcrs: &[u8]) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::QUOTE)
        .u32(key)
        .password_auth(&[])
        .tpm2b(qualifying_data)
        .u16(alg::NULL)
        .bytes(&sha256_selection(pcrs))
        .finish()
}

/// A Quote response: the marshalled TPMS_ATTEST (the TPM2B's contents) and the marshalled
/// TPMT_SIGNATURE, both exactly as the TPM returned them.
pub fn parse_quote(resp: &[u8]) -> Result<(Vec<u8>, Vec<u8>), WireError> {
    let mut r = ResponseReader::success(resp)?;
    if crate::Header::parse(resp)?.tag == crate::tag::SESSIONS {
        let size = r.u32()? as usize;
        r = ResponseReader::new(r.take(size)?);
    }
    let attest = r.tpm2b()?.to_vec();
    let rest = r.take(r.remaining())?;
    let signature_len = Signature::marshalled_len(rest)?;
    Ok((attest, rest[..signature_len].to_vec()))
}

/// TPMS_QUOTE_INFO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteInfo {
    pub selection: Vec<PcrSelection>,
    pub pcr_digest: Vec<u8>,
}

impl QuoteInfo {
    /// The SHA-256 PCRs the quote covers, ascending; an error if it covers another bank.
    pub fn sha256_pcrs(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::new();
        for s in &self.selection {
            if s.hash != alg::SHA256 && !s.pcrs.is_empty() {
                return Err(WireError::Unexpected(
                    "a quote over another bank than SHA-256",
                ));
            }
            if s.hash == alg::SHA256 {
                out.extend_from_slice(&s.pcrs);
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}

/// A TPMS_ATTEST of a quote (TPM_ST_ATTEST_QUOTE): what TPM2_Quote signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteAttest {
    /// The qualified name of the signing key.
    pub qualified_signer: Vec<u8>,
    /// The caller's qualifying data (the nonce, or what binds it).
    pub extra_data: Vec<u8>,
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    pub safe: bool,
    pub firmware_version: u64,
    pub quote: QuoteInfo,
}

impl QuoteAttest {
    /// Parses exactly one marshalled TPMS_ATTEST that must be a TPM-generated quote.
    pub fn parse(tpms_attest: &[u8]) -> Result<Self, WireError> {
        let mut r = ResponseReader::new(tpms_attest);
        if r.u32()? != TPM_GENERATED_VALUE {
            return Err(WireError::Unexpected(
                "TPMS_ATTEST without TPM_GENERATED_VALUE (not made by a TPM)",
            ));
        }
        if r.u16()? != TPM_ST_ATTEST_QUOTE {
            return Err(WireError::Unexpected("TPMS_ATTEST is not a quote"));
        }
        let qualified_signer = r.tpm2b()?.to_vec();
        let extra_data = r.tpm2b()?.to_vec();
        let clock = u64::from(r.u32()?) << 32 | u64::from(r.u32()?);
        let reset_count = r.u32()?;
        let restart_count = r.u32()?;
        let safe = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(WireError::Unexpected("TPMI_YES_NO other than 0 or 1")),
        };
        let firmware_version = u64::from(r.u32()?) << 32 | u64::from(r.u32()?);
        let selection = read_selection(&mut r)?;
        let pcr_digest = r.tpm2b()?.to_vec();
        r.expect_end("trailing bytes after a TPMS_ATTEST")?;
        Ok(QuoteAttest {
            qualified_signer,
            extra_data,
            clock,
            reset_count,
            restart_count,
            safe,
            firmware_version,
            quote: QuoteInfo {
                selection,
                pcr_digest,
            },
        })
    }
}

/// SHA-256 over PCR values concatenated in quote order: what a quote's `pcrDigest` is when
/// its key's name algorithm is SHA-256.
pub fn pcr_digest_sha256(values: &[[u8; 32]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for v in values {
        h.update(v);
    }
    h.finalize().into()
}

/// A TPMT_SIGNATURE of the kinds attestation keys make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// TPM_ALG_ECDSA: the hash algorithm and the big-endian `r` and `s`.
    Ecdsa { hash: u16, r: Vec<u8>, s: Vec<u8> },
    /// TPM_ALG_RSASSA (PKCS#1 v1.5): the hash algorithm and the signature.
    RsaSsa { hash: u16, sig: Vec<u8> },
}

impl Signature {
    /// Length of the TPMT_SIGNATURE at the start of `buf`.
    fn marshalled_len(buf: &[u8]) -> Result<usize, WireError> {
        let mut r = ResponseReader::new(buf);
        Self::read_from(&mut r)?;
        Ok(buf.len() - r.remaining())
    }

    /// Reads one TPMT_SIGNATURE off the front of `r`.
    pub fn read_from(r: &mut ResponseReader<'_>) -> Result<Self, WireError> {
        match r.u16()? {
            alg::ECDSA => Ok(Signature::Ecdsa {
                hash: r.u16()?,
                r: r.tpm2b()?.to_vec(),
                s: r.tpm2b()?.to_vec(),
            }),
            alg::RSASSA => Ok(Signature::RsaSsa {
                hash: r.u16()?,
                sig: r.tpm2b()?.to_vec(),
            }),
            _ => Err(WireError::Unexpected(
                "a signature scheme other than ECDSA or RSASSA",
            )),
        }
    }

    /// Parses exactly one marshalled TPMT_SIGNATURE (what `tpm2_quote -s` writes by default).
    pub fn parse(tpmt_signature: &[u8]) -> Result<Self, WireError> {
        let mut r = ResponseReader::new(tpmt_signature);
        let sig = Self::read_from(&mut r)?;
        r.expect_end("trailing bytes after a TPMT_SIGNATURE")?;
        Ok(sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A quote's TPMS_ATTEST as libtpms marshals one (fields written out by hand).
    fn attest(extra: &[u8], pcrs: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&TPM_GENERATED_VALUE.to_be_bytes());
        a.extend_from_slice(&TPM_ST_ATTEST_QUOTE.to_be_bytes());
        a.extend_from_slice(&[0, 3, 0, 0x0b, 0xaa]); // qualifiedSigner
        a.extend_from_slice(&(extra.len() as u16).to_be_bytes());
        a.extend_from_slice(extra);
        a.extend_from_slice(&7u64.to_be_bytes()); // clock
        a.extend_from_slice(&2u32.to_be_bytes()); // resetCount
        a.extend_from_slice(&1u32.to_be_bytes()); // restartCount
        a.push(1); // safe
        a.extend_from_slice(&0x0001_0002_0003_0004u64.to_be_bytes());
        a.extend_from_slice(&sha256_selection(pcrs));
        a.extend_from_slice(&[0, 32]);
        a.extend_from_slice(&[0x55; 32]);
        a
    }

    #[test]
    fn selections_and_bitmaps() {
        assert_eq!(
            sha256_selection(&[0, 7, 16]),
            [0, 0, 0, 1, 0, 0x0b, 3, 0x81, 0, 1]
        );
        assert_eq!(pcrs_of_bitmap(&[0x81, 0, 1]), vec![0, 7, 16]);
        assert_eq!(pcr_read_sha256(&[1])[10..], sha256_selection(&[1])[..]);
    }

    #[test]
    fn quote_attest_round_trip_and_every_truncation() {
        let a = attest(b"nonce", &[0, 1, 2, 16]);
        let q = QuoteAttest::parse(&a).unwrap();
        assert_eq!(q.extra_data, b"nonce");
        assert_eq!(q.qualified_signer, [0, 0x0b, 0xaa]);
        assert_eq!(
            (q.clock, q.reset_count, q.restart_count, q.safe),
            (7, 2, 1, true)
        );
        assert_eq!(q.firmware_version, 0x0001_0002_0003_0004);
        assert_eq!(q.quote.sha256_pcrs().unwrap(), vec![0, 1, 2, 16]);
        assert_eq!(q.quote.pcr_digest, [0x55; 32]);
        for cut in 0..a.len() {
            assert!(QuoteAttest::parse(&a[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = a.clone();
        long.push(0);
        assert!(QuoteAttest::parse(&long).is_err());
        let mut not_tpm = a.clone();
        not_tpm[0] = 0;
        assert!(QuoteAttest::parse(&not_tpm).is_err());
        let mut certify = a;
        certify[5] = 0x17; // TPM_ST_ATTEST_CERTIFY
        assert!(QuoteAttest::parse(&certify).is_err());
    }

    #[test]
    fn signatures_parse_exactly() {
        let ecdsa = [0, 0x18, 0, 0x0b, 0, 2, 1, 2, 0, 1, 3];
        assert_eq!(
            Signature::parse(&ecdsa).unwrap(),
            Signature::Ecdsa {
                hash: alg::SHA256,
                r: vec![1, 2],
                s: vec![3]
            }
        );
        for cut in 0..ecdsa.len() {
            assert!(Signature::parse(&ecdsa[..cut]).is_err());
        }
        assert!(Signature::parse(&[ecdsa.as_slice(), &[0]].concat()).is_err());
        let rsa = [0, 0x14, 0, 0x0b, 0, 1, 9];
        assert!(matches!(
            Signature::parse(&rsa),
            Ok(Signature::RsaSsa { .. })
        ));
        assert!(Signature::parse(&[0, 0x10, 0, 0x0b]).is_err());
    }

    #[test]
    fn quote_response_keeps_exact_bytes() {
        let a = attest(b"n", &[3]);
        let sig = [0, 0x18, 0, 0x0b, 0, 1, 1, 0, 1, 2];
        let mut params = Vec::new();
        params.extend_from_slice(&(a.len() as u16).to_be_bytes());
        params.extend_from_slice(&a);
        params.extend_from_slice(&sig);
        let mut resp = vec![0x80, 0x02, 0, 0, 0, 0, 0, 0, 0, 0];
        resp.extend_from_slice(&(params.len() as u32).to_be_bytes());
        resp.extend_from_slice(&params);
        resp.extend_from_slice(&[0, 0, 1, 0, 0]); // password session response
        let len = resp.len() as u32;
        resp[2..6].copy_from_slice(&len.to_be_bytes());
        assert_eq!(parse_quote(&resp).unwrap(), (a, sig.to_vec()));
    }

    #[test]
    fn pcr_read_response() {
        let mut resp = vec![0x80, 0x01, 0, 0, 0, 0, 0, 0, 0, 0];
        resp.extend_from_slice(&5u32.to_be_bytes());
        resp.extend_from_slice(&sha256_selection(&[2, 9]));
        resp.extend_from_slice(&2u32.to_be_bytes());
        for v in [1u8, 2] {
            resp.extend_from_slice(&[0, 32]);
            resp.extend_from_slice(&[v; 32]);
        }
        let len = resp.len() as u32;
        resp[2..6].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            parse_pcr_read(&resp).unwrap(),
            vec![(2, [1; 32]), (9, [2; 32])]
        );
        // One digest short of the selection.
        let mut short = resp[..resp.len() - 34].to_vec();
        let len = short.len() as u32;
        short[2..6].copy_from_slice(&len.to_be_bytes());
        assert!(parse_pcr_read(&short).is_err());
    }

    #[test]
    fn pcr_digest_is_sha256_of_the_concatenation() {
        let d = pcr_digest_sha256(&[[1; 32], [2; 32]]);
        let mut cat = vec![1u8; 32];
        cat.extend_from_slice(&[2; 32]);
        assert_eq!(d, <[u8; 32]>::from(Sha256::digest(&cat)));
    }
}
