//! The vendor-specific command of vhost-vtpm: TPM2_VTPM_DeepQuote (docs/virtio-tpm.md,
//! "Deep quote"). The daemon answers it, not the engine: a quote of the host TPM, by the
//! host's attestation key, over the host PCRs the vTPM mirrors, whose qualifying data binds
//! the guest's nonce to this vTPM's endorsement key ([`qualifying_data`]).
//!
//! ```text
//! command:  tag TPM_ST_NO_SESSIONS | size | TPM_CC 0x20000001
//!           TPM2B_DATA       nonce      (at most 64 bytes)
//!           TPMI_ALG_PUBLIC  vekType    (TPM_ALG_RSA: the RSA 2048 vEK, TPM_ALG_ECC: P-256)
//! response: tag TPM_ST_NO_SESSIONS | size | TPM_RC
//!           TPM2B_PUBLIC     vekPublic  (the bound vEK's TPMT_PUBLIC)
//!           TPM2B_ATTEST     hostQuote  (the host TPM's TPMS_ATTEST)
//!           TPMT_SIGNATURE   hostSignature
//!           UINT32 count, count x TPM2B_DIGEST  hostPcrValues (the quoted SHA-256 PCRs,
//!                                        ascending, as their digest covers them)
//!           UINT16 count, count x TPM2B  hostCertificates (DER: the host AIK certificate,
//!                                        then the host EK certificate)
//! ```
//!
//! Pure: bytes in, bytes out.

use sha2::{Digest, Sha256};

use crate::attest::Signature;
use crate::public::alg;
use crate::{rc, tag, CommandBuilder, Header, ResponseReader, WireError, HEADER_SIZE};

/// The vendor bit of a TPM_CC (TPMA_CC `V`).
pub const TPM_CC_VENDOR: u32 = 0x2000_0000;
/// TPM_CC of the deep quote.
pub const CC_DEEP_QUOTE: u32 = TPM_CC_VENDOR | 0x0001;
/// Its TPMA_CC as TPM2_GetCapability(TPM_CAP_COMMANDS) reports it: commandIndex 0x0001, `V`,
/// no handles in or out, neither `nv` nor `extensive` nor `flushed`.
pub const DEEP_QUOTE_TPMA_CC: u32 = TPM_CC_VENDOR | 0x0001;
/// Longest nonce (the size of TPMU_HA, as TPM2B_DATA allows).
pub const MAX_NONCE: usize = 64;

/// TPM_RC_BAD_TAG.
pub const RC_BAD_TAG: u32 = 0x01E;
/// TPM_RC_SIZE on parameter 1 (the nonce).
pub const RC_NONCE_SIZE: u32 = rc::fmt1::SIZE | rc::P | 0x100;
/// TPM_RC_VALUE on parameter 2 (vekType).
pub const RC_VEK_TYPE: u32 = rc::fmt1::VALUE | rc::P | 0x200;
/// TPM_RC_INSUFFICIENT: the parameters end early.
pub const RC_INSUFFICIENT: u32 = rc::fmt1::INSUFFICIENT | rc::P | 0x100;
/// TPM_RC_SIZE: bytes after the last parameter.
pub const RC_TRAILING: u32 = rc::fmt1::SIZE;

/// The qualifying data of a deep quote: SHA-256(nonce || vEK name).
pub fn qualifying_data(nonce: &[u8], vek_name: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(nonce);
    h.update(vek_name);
    h.finalize().into()
}

/// A deep-quote command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeepQuoteRequest {
    pub nonce: Vec<u8>,
    /// `alg::RSA` or `alg::ECC`.
    pub vek_type: u16,
}

impl DeepQuoteRequest {
    pub fn build(&self) -> Vec<u8> {
        CommandBuilder::no_sessions(CC_DEEP_QUOTE)
            .tpm2b(&self.nonce)
            .u16(self.vek_type)
            .finish()
    }

    /// Parses a complete command (header included, its size already checked against the
    /// buffer by the device). `Err` is the response code to answer with.
    pub fn parse(command: &[u8]) -> Result<Self, u32> {
        let header = Header::parse(command).map_err(|_| rc::COMMAND_SIZE)?;
        if header.code != CC_DEEP_QUOTE {
            return Err(rc::COMMAND_CODE);
        }
        if header.tag != tag::NO_SESSIONS {
            return Err(RC_BAD_TAG);
        }
        let mut r = ResponseReader::new(command.get(HEADER_SIZE..).unwrap_or_default());
        let nonce_len = usize::from(r.u16().map_err(|_| RC_INSUFFICIENT)?);
        if nonce_len > MAX_NONCE {
            return Err(RC_NONCE_SIZE);
        }
        let nonce = r.take(nonce_len).map_err(|_| RC_INSUFFICIENT)?.to_vec();
        let vek_type = r.u16().map_err(|_| RC_INSUFFICIENT)?;
        if vek_type != alg::RSA && vek_type != alg::ECC {
            return Err(RC_VEK_TYPE);
        }
        if r.remaining() != 0 {
            return Err(RC_TRAILING);
        }
        Ok(DeepQuoteRequest { nonce, vek_type })
    }
}

/// A deep-quote answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeepQuoteResponse {
    /// The bound vEK's marshalled TPMT_PUBLIC (its name is what the quote binds).
    pub vek_public: Vec<u8>,
    /// The host TPM's marshalled TPMS_ATTEST.
    pub host_attest: Vec<u8>,
    /// The host TPM's marshalled TPMT_SIGNATURE.
    pub host_signature: Vec<u8>,
    /// The quoted host PCR values, ascending by PCR.
    pub host_pcr_values: Vec<[u8; 32]>,
    /// DER certificates: the host AIK's, then the host EK's.
    pub host_certificates: Vec<Vec<u8>>,
}

/// Why a deep-quote response does not parse or cannot be encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeepQuoteError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("{0} does not fit its TPM2B")]
    TooLarge(&'static str),
}

fn tpm2b_checked(
    b: CommandBuilder,
    what: &'static str,
    data: &[u8],
) -> Result<CommandBuilder, DeepQuoteError> {
    if data.len() > usize::from(u16::MAX) {
        return Err(DeepQuoteError::TooLarge(what));
    }
    Ok(b.tpm2b(data))
}

impl DeepQuoteResponse {
    /// The complete response (header with TPM_RC_SUCCESS, then the parameters).
    pub fn encode(&self) -> Result<Vec<u8>, DeepQuoteError> {
        // A response is built like a command: the third header field is the response code.
        let mut b = CommandBuilder::new(tag::NO_SESSIONS, rc::SUCCESS);
        b = tpm2b_checked(b, "vekPublic", &self.vek_public)?;
        b = tpm2b_checked(b, "hostQuote", &self.host_attest)?;
        b = b.bytes(&self.host_signature);
        let pcrs = u32::try_from(self.host_pcr_values.len())
            .map_err(|_| DeepQuoteError::TooLarge("hostPcrValues"))?;
        b = b.u32(pcrs);
        for v in &self.host_pcr_values {
            b = b.tpm2b(v);
        }
        let certs = u16::try_from(self.host_certificates.len())
            .map_err(|_| DeepQuoteError::TooLarge("hostCertificates"))?;
        b = b.u16(certs);
        for c in &self.host_certificates {
            b = tpm2b_checked(b, "a host certificate", c)?;
        }
        Ok(b.finish())
    }

    /// Parses a complete success response; an error response is `WireError::Tpm(rc)`.
    pub fn parse(resp: &[u8]) -> Result<Self, DeepQuoteError> {
        let r = ResponseReader::success(resp)?;
        Self::parse_parameters(r)
    }

    /// Parses the parameters alone (a response without its 10-byte header).
    pub fn parse_body(body: &[u8]) -> Result<Self, DeepQuoteError> {
        Self::parse_parameters(ResponseReader::new(body))
    }

    fn parse_parameters(mut r: ResponseReader<'_>) -> Result<Self, DeepQuoteError> {
        let vek_public = r.tpm2b()?.to_vec();
        let host_attest = r.tpm2b()?.to_vec();
        let rest = r.take(r.remaining())?;
        let mut r = ResponseReader::new(rest);
        let signature_start = rest.len() - r.remaining();
        Signature::read_from(&mut r)?;
        let host_signature = rest[signature_start..rest.len() - r.remaining()].to_vec();
        let count = r.u32()? as usize;
        // Each value takes 34 bytes: a count the response cannot hold is refused before
        // anything is allocated for it.
        if count > r.remaining() / 34 {
            return Err(WireError::Unexpected("more PCR values than the response holds").into());
        }
        let mut host_pcr_values = Vec::with_capacity(count);
        for _ in 0..count {
            host_pcr_values.push(
                r.tpm2b()?
                    .try_into()
                    .map_err(|_| WireError::Unexpected("a host PCR value that is not 32 bytes"))?,
            );
        }
        let count = usize::from(r.u16()?);
        if count > r.remaining() / 2 {
            return Err(WireError::Unexpected("more certificates than the response holds").into());
        }
        let host_certificates = (0..count)
            .map(|_| r.tpm2b().map(<[u8]>::to_vec))
            .collect::<Result<Vec<_>, _>>()?;
        r.expect_end("trailing bytes after a deep quote")?;
        Ok(DeepQuoteResponse {
            vek_public,
            host_attest,
            host_signature,
            host_pcr_values,
            host_certificates,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_and_refusals() {
        let req = DeepQuoteRequest {
            nonce: vec![7; 32],
            vek_type: alg::RSA,
        };
        let cmd = req.build();
        assert_eq!(&cmd[6..10], &CC_DEEP_QUOTE.to_be_bytes());
        assert_eq!(DeepQuoteRequest::parse(&cmd), Ok(req.clone()));
        // Every truncation of the parameters is an answer, never a panic.
        for cut in 0..cmd.len() {
            let mut c = cmd[..cut].to_vec();
            if c.len() >= 6 {
                c[2..6].copy_from_slice(&(cut as u32).to_be_bytes());
            }
            assert!(DeepQuoteRequest::parse(&c).is_err(), "cut at {cut}");
        }
        let mut sessions = cmd.clone();
        sessions[1] = 0x02;
        assert_eq!(DeepQuoteRequest::parse(&sessions), Err(RC_BAD_TAG));
        let big = DeepQuoteRequest {
            nonce: vec![0; 65],
            vek_type: alg::ECC,
        };
        assert_eq!(DeepQuoteRequest::parse(&big.build()), Err(RC_NONCE_SIZE));
        let other = DeepQuoteRequest {
            nonce: vec![],
            vek_type: alg::SHA256,
        };
        assert_eq!(DeepQuoteRequest::parse(&other.build()), Err(RC_VEK_TYPE));
        let mut trailing = cmd;
        trailing.push(0);
        assert_eq!(DeepQuoteRequest::parse(&trailing), Err(RC_TRAILING));
    }

    #[test]
    fn response_round_trip_and_every_truncation() {
        let resp = DeepQuoteResponse {
            vek_public: vec![1, 2, 3],
            host_attest: vec![4; 40],
            host_signature: vec![0, 0x18, 0, 0x0b, 0, 1, 9, 0, 1, 8],
            host_pcr_values: vec![[1; 32], [2; 32]],
            host_certificates: vec![vec![0x30, 0], vec![0x30, 1, 5]],
        };
        let bytes = resp.encode().unwrap();
        assert_eq!(crate::response_code(&bytes), Ok(rc::SUCCESS));
        assert_eq!(DeepQuoteResponse::parse(&bytes), Ok(resp.clone()));
        assert_eq!(
            DeepQuoteResponse::parse_body(&bytes[HEADER_SIZE..]),
            Ok(resp)
        );
        for cut in HEADER_SIZE..bytes.len() {
            assert!(
                DeepQuoteResponse::parse_body(&bytes[HEADER_SIZE..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let error = crate::error_response(rc::FAILURE);
        assert_eq!(
            DeepQuoteResponse::parse(&error),
            Err(DeepQuoteError::Wire(WireError::Tpm(rc::FAILURE)))
        );
    }

    #[test]
    fn qualifying_data_is_sha256_of_nonce_and_name() {
        let q = qualifying_data(b"ab", b"cd");
        assert_eq!(q, <[u8; 32]>::from(Sha256::digest(b"abcd")));
    }
}
