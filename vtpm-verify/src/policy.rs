//! Golden values: what the host's and the guest's SHA-256 PCRs may hold.
//!
//! ```json
//! {
//!   "host_pcrs": { "0": "3d45…", "7": ["aa…", "bb…"] },
//!   "vtpm_pcrs": { "16": "00…" }
//! }
//! ```
//!
//! Each entry is one hex value or a list of accepted values. `host_pcrs` are checked
//! against the host TPM's quote, `vtpm_pcrs` against the vTPM's (mirrored ones included).
//! A PCR named here that the quote does not cover fails the check. An empty policy (`{}`)
//! accepts any values and says so.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("not a policy: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not a policy: a policy is a JSON object")]
    NotAnObject,
    #[error("{which}: {key:?} is not a PCR index 0..=23")]
    BadPcr { which: &'static str, key: String },
    #[error("{which} PCR {pcr}: {value:?} is not a 32-byte hex SHA-256 value")]
    BadValue {
        which: &'static str,
        pcr: u8,
        value: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
enum Values {
    One(String),
    Any(Vec<String>),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    host_pcrs: BTreeMap<String, Values>,
    #[serde(default)]
    vtpm_pcrs: BTreeMap<String, Values>,
}

/// Accepted values per PCR.
pub type Golden = BTreeMap<u8, Vec<[u8; 32]>>;

/// A parsed policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub host_pcrs: Golden,
    pub vtpm_pcrs: Golden,
}

fn golden(which: &'static str, map: BTreeMap<String, Values>) -> Result<Golden, PolicyError> {
    let mut out = Golden::new();
    for (key, values) in map {
        let pcr = match key.trim().parse::<u8>() {
            Ok(p) if p < 24 => p,
            _ => return Err(PolicyError::BadPcr { which, key }),
        };
        let list = match values {
            Values::One(v) => vec![v],
            Values::Any(v) => v,
        };
        let parsed = list
            .into_iter()
            .map(|v| {
                hex::decode(v.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or(PolicyError::BadValue {
                        which,
                        pcr,
                        value: v,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.insert(pcr, parsed);
    }
    Ok(out)
}

impl Policy {
    pub fn parse(json: &[u8]) -> Result<Self, PolicyError> {
        let value: serde_json::Value = serde_json::from_slice(json)?;
        if !value.is_object() {
            return Err(PolicyError::NotAnObject);
        }
        let file: PolicyFile = serde_json::from_value(value)?;
        Ok(Policy {
            host_pcrs: golden("host_pcrs", file.host_pcrs)?,
            vtpm_pcrs: golden("vtpm_pcrs", file.vtpm_pcrs)?,
        })
    }

    /// The policy that accepts exactly these values (what `vtpm-verify golden` prints).
    pub fn from_values(host: &[(u8, [u8; 32])], vtpm: &[(u8, [u8; 32])]) -> Self {
        let g = |v: &[(u8, [u8; 32])]| v.iter().map(|(p, d)| (*p, vec![*d])).collect();
        Policy {
            host_pcrs: g(host),
            vtpm_pcrs: g(vtpm),
        }
    }

    pub fn to_json(&self) -> String {
        let m = |g: &Golden| -> BTreeMap<String, Values> {
            g.iter()
                .map(|(p, v)| {
                    let values: Vec<String> = v.iter().map(hex::encode).collect();
                    let values = match <[String; 1]>::try_from(values) {
                        Ok([one]) => Values::One(one),
                        Err(many) => Values::Any(many),
                    };
                    (p.to_string(), values)
                })
                .collect()
        };
        serde_json::to_string_pretty(&PolicyFile {
            host_pcrs: m(&self.host_pcrs),
            vtpm_pcrs: m(&self.vtpm_pcrs),
        })
        .unwrap_or_default()
    }
}

/// Checks `quoted` (PCR, value) against `golden`: `Ok` with a summary, or `Err` naming the
/// first PCR that differs or is missing.
pub fn check(what: &str, golden: &Golden, quoted: &[(u8, [u8; 32])]) -> Result<String, String> {
    if golden.is_empty() {
        return Ok(format!(
            "the policy names no {what} PCR: any values accepted"
        ));
    }
    for (pcr, accepted) in golden {
        match quoted.iter().find(|(p, _)| p == pcr) {
            None => return Err(format!("{what} PCR {pcr} is in the policy but not quoted")),
            Some((_, v)) if accepted.contains(v) => {}
            Some((_, v)) => {
                return Err(format!(
                    "{what} PCR {pcr} = {}, the policy accepts {}",
                    hex::encode(v),
                    accepted
                        .iter()
                        .map(hex::encode)
                        .collect::<Vec<_>>()
                        .join(" or ")
                ))
            }
        }
    }
    Ok(format!(
        "{what} PCRs {:?} hold golden values",
        golden.keys().collect::<Vec<_>>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trip_and_check() {
        let a = hex::encode([1u8; 32]);
        let b = hex::encode([2u8; 32]);
        let json = format!(r#"{{"host_pcrs": {{"0": "{a}", "7": ["{a}", "{b}"]}}}}"#);
        let p = Policy::parse(json.as_bytes()).unwrap();
        assert_eq!(p.host_pcrs[&7], vec![[1; 32], [2; 32]]);
        assert!(p.vtpm_pcrs.is_empty());
        assert_eq!(Policy::parse(p.to_json().as_bytes()).unwrap(), p);
        assert!(check("host", &p.host_pcrs, &[(0, [1; 32]), (7, [2; 32])]).is_ok());
        let err = check("host", &p.host_pcrs, &[(0, [1; 32]), (7, [3; 32])]).unwrap_err();
        assert!(err.contains("host PCR 7 = 0303"), "{err}");
        let err = check("host", &p.host_pcrs, &[(0, [1; 32])]).unwrap_err();
        assert!(err.contains("not quoted"), "{err}");
        assert!(check("vTPM", &p.vtpm_pcrs, &[]).is_ok());
    }

    #[test]
    fn bad_policies_are_refused() {
        for bad in [
            r#"{"host_pcrs": {"24": "00"}}"#.to_string(),
            r#"{"host_pcrs": {"x": "00"}}"#.to_string(),
            r#"{"vtpm_pcrs": {"1": "00"}}"#.to_string(),
            r#"{"vtpm_pcrs": {"1": ["zz"]}}"#.to_string(),
            r#"{"other": {}}"#.to_string(),
            "[]".to_string(),
        ] {
            assert!(Policy::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(Policy::parse(b"{}").unwrap(), Policy::default());
    }
}
