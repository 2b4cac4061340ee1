//! What the host TPM attests: its SHA-256 PCRs ([`HostTpm::read_pcrs_sha256`]) and quotes
//! of them by the host attestation key ([`HostTpm::quote`]), for PCR mirroring and the deep
//! quote (docs/adr/0011).
//!
//! Both run over a raw connection with commands built by `tpm-proto`, so the quote's
//! `TPMS_ATTEST` and `TPMT_SIGNATURE` are returned exactly as the TPM produced them (a
//! verifier hashes those bytes; a copy re-marshalled by a TSS could differ). Nothing stays
//! loaded in the TPM after a call, and callers open a [`HostTpm`] per use and drop it:
//! some TCTIs (swtpm's TCP server, `/dev/tpm0`) serve one client at a time.

use log::debug;
use tpm_proto::attest::{self as at, QuoteAttest};
use tpm_proto::commands as cmd;
use tss_esapi::traits::Marshall;

use crate::identity::{attestation_key, parsed, raw_load_aik, raw_run};
use crate::raw::RawTcti;
use crate::{tpm, HostTpm, HostTpmError, ObjectBlob, Result};

/// How often a quote is taken again when a PCR changed between reading the values and
/// quoting them.
const QUOTE_ATTEMPTS: usize = 4;

/// A quote of the host TPM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostQuote {
    /// The marshalled TPMS_ATTEST, as the TPM returned it.
    pub attest: Vec<u8>,
    /// The marshalled TPMT_SIGNATURE over it.
    pub signature: Vec<u8>,
    /// The quoted SHA-256 PCRs, ascending.
    pub pcrs: Vec<u8>,
    /// Their values, in the same order; their SHA-256 is the quote's `pcrDigest`.
    pub pcr_values: Vec<[u8; 32]>,
}

/// `pcrs` sorted, without duplicates, each checked to be a PCR index.
fn pcr_set(pcrs: &[u8]) -> Result<Vec<u8>> {
    let mut set = pcrs.to_vec();
    if let Some(&bad) = set.iter().find(|&&p| p >= at::PCR_COUNT) {
        return Err(HostTpmError::BadPcr(bad));
    }
    set.sort_unstable();
    set.dedup();
    Ok(set)
}

fn raw_read_pcrs(raw: &mut RawTcti, pcrs: &[u8]) -> Result<Vec<[u8; 32]>> {
    const OP: &str = "PCR_Read";
    let mut values = Vec::with_capacity(pcrs.len());
    let mut left = pcrs.to_vec();
    while !left.is_empty() {
        let ask: Vec<u8> = left.iter().copied().take(at::PCR_READ_MAX).collect();
        let resp = raw_run(raw, OP, &at::pcr_read_sha256(&ask))?;
        let read = parsed(OP, at::parse_pcr_read(&resp))?;
        // The TPM says which it read; it must be a non-empty prefix of what was asked.
        if read.is_empty()
            || read.len() > ask.len()
            || read.iter().zip(&ask).any(|(r, a)| r.0 != *a)
        {
            return Err(HostTpmError::Malformed {
                operation: OP,
                source: tpm_proto::WireError::Unexpected("PCR_Read read other PCRs than asked"),
            });
        }
        left.drain(..read.len());
        values.extend(read.into_iter().map(|(_, v)| v));
    }
    Ok(values)
}

fn raw_quote(
    raw: &mut RawTcti,
    loaded: &mut Vec<u32>,
    srk_template: &[u8],
    aik: &ObjectBlob,
    pcrs: &[u8],
    qualifying_data: &[u8],
) -> Result<HostQuote> {
    let key = raw_load_aik(raw, loaded, srk_template, aik)?;
    const OP_QUOTE: &str = "Quote";
    for attempt in 1..=QUOTE_ATTEMPTS {
        let pcr_values = raw_read_pcrs(raw, pcrs)?;
        let resp = raw_run(raw, OP_QUOTE, &at::quote(key, qualifying_data, pcrs))?;
        let (attest, signature) = parsed(OP_QUOTE, at::parse_quote(&resp))?;
        let quoted = parsed(OP_QUOTE, QuoteAttest::parse(&attest))?;
        if quoted.quote.pcr_digest == at::pcr_digest_sha256(&pcr_values) {
            return Ok(HostQuote {
                attest,
                signature,
                pcrs: pcrs.to_vec(),
                pcr_values,
            });
        }
        debug!("host PCRs changed while quoting (attempt {attempt}); quoting again");
    }
    Err(HostTpmError::Malformed {
        operation: OP_QUOTE,
        source: tpm_proto::WireError::Unexpected(
            "the host PCRs kept changing between reading and quoting them",
        ),
    })
}

impl HostTpm {
    /// The SHA-256 bank's values of `pcrs` (each below 24), in ascending PCR order with
    /// duplicates removed.
    pub fn read_pcrs_sha256(&mut self, pcrs: &[u8]) -> Result<Vec<[u8; 32]>> {
        let set = pcr_set(pcrs)?;
        let mut raw = self.raw_connection()?;
        raw_read_pcrs(&mut raw, &set)
    }

    /// TPM2_Quote by the attestation key `aik` (see [`crate::aik_violations`]) over the
    /// SHA-256 `pcrs` (ascending, duplicates removed), with `qualifying_data` (at most 64
    /// bytes) as its extraData. The PCR values are read with the quote, and read and quoted
    /// again if a PCR changed in between, so they are the ones the quote's digest covers.
    pub fn quote(
        &mut self,
        aik: &ObjectBlob,
        pcrs: &[u8],
        qualifying_data: &[u8],
    ) -> Result<HostQuote> {
        attestation_key(aik)?;
        let set = pcr_set(pcrs)?;
        let srk_template = Self::srk_template()?
            .marshall()
            .map_err(tpm("marshal SRK template"))?;
        let mut raw = self.raw_connection()?;
        let mut loaded = Vec::new();
        let result = raw_quote(
            &mut raw,
            &mut loaded,
            &srk_template,
            aik,
            &set,
            qualifying_data,
        );
        for handle in loaded.into_iter().rev() {
            match raw.execute(&cmd::flush_context(handle)) {
                Ok(r) if tpm_proto::response_code(&r) == Ok(tpm_proto::rc::SUCCESS) => {}
                other => debug!("FlushContext {handle:#x}: {other:?}"),
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcr_sets_are_sorted_deduplicated_and_checked() {
        assert_eq!(pcr_set(&[7, 0, 7, 3]).unwrap(), vec![0, 3, 7]);
        assert!(matches!(pcr_set(&[24]), Err(HostTpmError::BadPcr(24))));
        assert!(pcr_set(&[]).unwrap().is_empty());
    }
}
