//! The evidence bundle a guest collects for one nonce (README.md, "Evidence format"): JSON,
//! binary fields in standard base64, exactly the bytes the TPMs and tools produced.
//!
//! ```json
//! {
//!   "version": 1,
//!   "nonce": "<hex, as the verifier issued it>",
//!   "vtpm_quote": {
//!     "attest": "<TPMS_ATTEST: tpm2_quote -m>",
//!     "signature": "<TPMT_SIGNATURE: tpm2_quote -s>",
//!     "pcr_values": "<the quoted SHA-256 PCR values, concatenated: tpm2_quote -o -F values>"
//!   },
//!   "vaik_certificate": "<the vAIK certificate, DER (PEM accepted)>",
//!   "vek_certificates": ["<vEK certificates from NV 0x01c00002 / 0x01c0000a, DER>"],
//!   "vek_chain": ["<NV 0x01c00100, 0x01c00101, ...: coprocessor, host AIK certificates, DER>"],
//!   "deep_quote": "<the whole response to the deep-quote command (tpm2_send -o)>"
//! }
//! ```

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The only format version this build reads and writes.
pub const VERSION: u32 = 1;

/// Bytes, as standard base64 in JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map(Bytes)
            .map_err(serde::de::Error::custom)
    }
}

/// The vTPM's own quote, by the vAIK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VtpmQuote {
    pub attest: Bytes,
    pub signature: Bytes,
    pub pcr_values: Bytes,
}

/// One evidence bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    pub version: u32,
    /// Hex, as the verifier issued it.
    pub nonce: String,
    pub vtpm_quote: VtpmQuote,
    pub vaik_certificate: Bytes,
    pub vek_certificates: Vec<Bytes>,
    pub vek_chain: Vec<Bytes>,
    pub deep_quote: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("not an evidence bundle: {0}")]
    Json(#[from] serde_json::Error),
    #[error("evidence format version {0} (this build reads version {VERSION})")]
    Version(u32),
    #[error("the nonce is not hex: {0}")]
    Nonce(#[from] hex::FromHexError),
}

impl Evidence {
    /// Parses and checks the version and the nonce's encoding.
    pub fn parse(json: &[u8]) -> Result<Self, EvidenceError> {
        let e: Evidence = serde_json::from_slice(json)?;
        if e.version != VERSION {
            return Err(EvidenceError::Version(e.version));
        }
        e.nonce_bytes()?;
        Ok(e)
    }

    pub fn nonce_bytes(&self) -> Result<Vec<u8>, hex::FromHexError> {
        hex::decode(self.nonce.trim())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Evidence {
        Evidence {
            version: 1,
            nonce: "00ff".into(),
            vtpm_quote: VtpmQuote {
                attest: Bytes(vec![1, 2]),
                signature: Bytes(vec![3]),
                pcr_values: Bytes(vec![]),
            },
            vaik_certificate: Bytes(vec![0x30]),
            vek_certificates: vec![Bytes(vec![4])],
            vek_chain: vec![Bytes(vec![5]), Bytes(vec![6])],
            deep_quote: Bytes(vec![7; 40]),
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let e = sample();
        assert_eq!(Evidence::parse(e.to_json().as_bytes()).unwrap(), e);
        let mut v = serde_json::to_value(&e).unwrap();
        v["version"] = 2.into();
        assert!(matches!(
            Evidence::parse(v.to_string().as_bytes()),
            Err(EvidenceError::Version(2))
        ));
        let mut v = serde_json::to_value(&e).unwrap();
        v["nonce"] = "xyz".into();
        assert!(matches!(
            Evidence::parse(v.to_string().as_bytes()),
            Err(EvidenceError::Nonce(_))
        ));
        let mut v = serde_json::to_value(&e).unwrap();
        v["extra"] = 1.into();
        assert!(Evidence::parse(v.to_string().as_bytes()).is_err());
        let mut v = serde_json::to_value(&e).unwrap();
        v["deep_quote"] = "not base64!".into();
        assert!(Evidence::parse(v.to_string().as_bytes()).is_err());
        assert!(Evidence::parse(b"").is_err());
        // base64 wrapped over lines (busybox base64 without -w0) is accepted.
        let mut v = serde_json::to_value(&e).unwrap();
        v["deep_quote"] = "BwcH\nBwcH".into();
        assert_eq!(
            Evidence::parse(v.to_string().as_bytes())
                .unwrap()
                .deep_quote,
            Bytes(vec![7; 6])
        );
    }
}
