//! TPM2_Quote with the host attestation key: the host TPM's signed statement of its SHA-256
//! PCRs, bound to the caller's qualifying data. The migration controller attests a host
//! with it (ADR 0010): its nonce and the host's migration key go into the qualifying data.
//! The verifier checks the signature against the AIK certificate
//! (`tpm_proto::attest` reads the structure).

use log::debug;
use p256::ecdsa::Signature;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::structures::{Data, SignatureScheme};
use tss_esapi::traits::Marshall;

use crate::identity::{attestation_key, ecdsa_signature};
use crate::{tpm, HostTpm, HostTpmError, ObjectBlob, Result};

/// A quote: the marshalled `TPMS_ATTEST` and the AIK's ECDSA P-256 / SHA-256 signature
/// over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    pub attest: Vec<u8>,
    pub signature: Signature,
}

/// Largest qualifying data a TPM takes (TPM2B_DATA of a SHA-256 TPM: 64 bytes in practice).
pub const MAX_QUALIFYING_DATA: usize = 64;

fn malformed(operation: &'static str) -> HostTpmError {
    HostTpmError::Tpm {
        operation,
        source: tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm),
    }
}

impl HostTpm {
    /// TPM2_Quote of the SHA-256 `pcrs` by the attestation key `aik` (checked: see
    /// [`crate::aik_violations`]) over `qualifying_data` (at most
    /// [`MAX_QUALIFYING_DATA`] bytes).
    pub fn quote(
        &mut self,
        aik: &ObjectBlob,
        qualifying_data: &[u8],
        pcrs: &[u8],
    ) -> Result<Quote> {
        attestation_key(aik)?;
        if qualifying_data.len() > MAX_QUALIFYING_DATA {
            return Err(HostTpmError::SecretTooLarge(qualifying_data.len()));
        }
        let data = Data::try_from(qualifying_data.to_vec()).map_err(tpm("qualifying data"))?;
        let selection = Self::pcr_selection(pcrs)?;
        let key = self.load_object(aik, "Load (AIK)")?;
        let quoted = self.ctx().and_then(|ctx| {
            ctx.execute_with_nullauth_session(|c| {
                c.quote(key, data, SignatureScheme::Null, selection)
            })
            .map_err(tpm("Quote"))
        });
        self.flush(key);
        let (attest, signature) = quoted?;
        let attest = attest.marshall().map_err(tpm("marshal TPMS_ATTEST"))?;
        let signature = match signature {
            tss_esapi::structures::Signature::EcDsa(sig)
                if sig.hashing_algorithm() == HashingAlgorithm::Sha256 =>
            {
                ecdsa_signature(sig.signature_r().value(), sig.signature_s().value())?
            }
            _ => return Err(malformed("Quote (signature scheme)")),
        };
        debug!("quoted SHA-256 PCRs {pcrs:?}");
        Ok(Quote { attest, signature })
    }
}
