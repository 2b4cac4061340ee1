//! Host enrolment tokens: what authorises a host TPM to enrol a subject for the first time.
//!
//! A host AIK certificate is an intermediate CA (`CA:TRUE, pathlen:1`): whoever gets one can
//! issue vEK certificates that verify up to this CA. A valid EK chain proves only that the
//! TPM was made by a trusted manufacturer, not that the administrator wants it as a host, so
//! the first enrolment of a host subject needs an enrolment token (`vtpm-ca enroll-token`,
//! `POST /v1/enroll-tokens`): issued by an administrator for one subject, valid until it
//! expires, used once. The token is sent as the bearer token of `enroll/start`; the CA keeps
//! only its SHA-256 (`enroll-tokens.json`, mode 0600), with the subject, the expiry, and
//! once used, when and by which endorsement key.
//!
//! This module owns that file: issuing, looking a token up, and consuming one, all under
//! the store lock; [`crate::enroll`] decides when a token is needed.

use serde::{Deserialize, Serialize};

use crate::certstore::{new_token, token_hash};
use crate::names;
use crate::store::{Locked, Store, StoreError, PRIVATE_FILE};
use crate::util::now_unix;

const ENROLL_TOKENS: &str = "enroll-tokens.json";

/// Default lifetime of an enrolment token: a day.
pub const DEFAULT_TOKEN_VALIDITY_SECS: u64 = 86_400;
/// Longest lifetime of an enrolment token: 30 days.
pub const MAX_TOKEN_VALIDITY_SECS: u64 = 30 * 86_400;
/// Tokens expired (used or not) longer ago than this are dropped from the file when a new
/// one is issued.
const KEEP_EXPIRED_SECS: u64 = 30 * 86_400;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "invalid subject {0:?}: 1 to 64 characters of [A-Za-z0-9._:@-], not starting with '.'"
    )]
    BadSubject(String),
    #[error("invalid token lifetime of {0} seconds: 1 second to 30 days")]
    BadValidity(u64),
    #[error(transparent)]
    Access(crate::certstore::CertStoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("OpenSSL: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
}

/// When and by what a token was used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUse {
    pub time: u64,
    /// The endorsement key (SHA-256 of its SubjectPublicKeyInfo, hex) that enrolled with it.
    pub ek_public_key_sha256: String,
    /// Serial of the host AIK certificate issued.
    pub serial: String,
}

/// One enrolment token, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollToken {
    /// SHA-256 of the token, lower-case hex.
    pub token_sha256: String,
    /// The host subject it lets enrol (`aik/host/<subject>`).
    pub subject: String,
    /// Unix times.
    pub created: u64,
    pub expires: u64,
    /// Who issued it (principal name, or `cli`).
    pub issued_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<TokenUse>,
}

/// Why a token does not authorise an enrolment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    Expired,
    Used,
    /// Issued for another subject (the one named).
    OtherSubject(String),
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Expired => f.write_str("the enrolment token has expired"),
            Unusable::Used => f.write_str("the enrolment token was used already"),
            Unusable::OtherSubject(s) => {
                write!(f, "the enrolment token is for host subject {s:?}")
            }
        }
    }
}

impl EnrollToken {
    /// Whether this token lets `subject` enrol at `now`.
    pub fn check(&self, subject: &str, now: u64) -> Result<(), Unusable> {
        if self.subject != subject {
            return Err(Unusable::OtherSubject(self.subject.clone()));
        }
        if self.used.is_some() {
            return Err(Unusable::Used);
        }
        if self.expires <= now {
            return Err(Unusable::Expired);
        }
        Ok(())
    }
}

/// A newly issued token: the secret itself is shown only here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub token: String,
    pub subject: String,
    pub expires: u64,
}

/// `enroll-tokens.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollTokens {
    #[serde(default)]
    pub tokens: Vec<EnrollToken>,
}

impl EnrollTokens {
    pub fn load(store: &Store) -> Result<EnrollTokens, StoreError> {
        Ok(store.read_json_optional(ENROLL_TOKENS)?.unwrap_or_default())
    }

    fn save(&self, store: &Locked<'_>) -> Result<(), StoreError> {
        store.write_json(ENROLL_TOKENS, self, PRIVATE_FILE)
    }

    /// The stored token whose secret is `token`, if any.
    pub fn find(&self, token: &str) -> Option<&EnrollToken> {
        self.find_hash(&token_hash(token))
    }

    /// The stored token with this SHA-256 (hex).
    pub fn find_hash(&self, sha256: &str) -> Option<&EnrollToken> {
        self.tokens.iter().find(|t| {
            t.token_sha256.len() == sha256.len()
                && openssl::memcmp::eq(t.token_sha256.as_bytes(), sha256.as_bytes())
        })
    }
}

/// Issues a token that lets host `subject` enrol once within `validity_secs`.
pub fn issue(
    store: &Store,
    subject: &str,
    validity_secs: u64,
    issued_by: &str,
) -> Result<Issued, TokenError> {
    if !names::is_subject(subject) {
        return Err(TokenError::BadSubject(subject.to_string()));
    }
    if validity_secs == 0 || validity_secs > MAX_TOKEN_VALIDITY_SECS {
        return Err(TokenError::BadValidity(validity_secs));
    }
    let token = new_token()?;
    let now = now_unix();
    let expires = now + validity_secs;
    let store = store.lock()?;
    let mut all = EnrollTokens::load(&store)?;
    all.tokens
        .retain(|t| t.expires.saturating_add(KEEP_EXPIRED_SECS) > now);
    all.tokens.push(EnrollToken {
        token_sha256: token_hash(&token),
        subject: subject.to_string(),
        created: now,
        expires,
        issued_by: issued_by.to_string(),
        used: None,
    });
    all.save(&store)?;
    log::info!("enrolment token for host {subject:?} issued by {issued_by}, valid until {expires}");
    Ok(Issued {
        token,
        subject: subject.to_string(),
        expires,
    })
}

/// Marks the token with this SHA-256 used by `ek_public_key_sha256` for certificate
/// `serial`, under the store lock the enrolment holds. Fails if it is gone or was used.
pub fn consume(
    store: &Locked<'_>,
    sha256: &str,
    ek_public_key_sha256: &str,
    serial: &str,
) -> Result<(), Option<Unusable>> {
    let mut all = EnrollTokens::load(store).map_err(|_| None)?;
    let Some(t) = all.tokens.iter_mut().find(|t| t.token_sha256 == sha256) else {
        return Err(None);
    };
    if t.used.is_some() {
        return Err(Some(Unusable::Used));
    }
    t.used = Some(TokenUse {
        time: now_unix(),
        ek_public_key_sha256: ek_public_key_sha256.to_string(),
        serial: serial.to_string(),
    });
    all.save(store).map_err(|_| None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::tests::new_store;
    use crate::store::Config;

    #[test]
    fn tokens_are_stored_hashed_for_one_subject_and_used_once() {
        let (_tmp, store, _) = new_store(Config::default());
        let t = issue(&store, "host-1", 60, "cli").unwrap();
        assert_eq!(t.token.len(), 64);
        let text = std::fs::read_to_string(store.path(ENROLL_TOKENS)).unwrap();
        assert!(!text.contains(&t.token), "{text}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.path(ENROLL_TOKENS))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, PRIVATE_FILE);
        let all = EnrollTokens::load(&store).unwrap();
        let stored = all.find(&t.token).unwrap();
        let now = now_unix();
        stored.check("host-1", now).unwrap();
        assert_eq!(
            stored.check("host-2", now),
            Err(Unusable::OtherSubject("host-1".into()))
        );
        assert_eq!(stored.check("host-1", now + 61), Err(Unusable::Expired));
        assert!(all.find("not a token").is_none());

        let hash = stored.token_sha256.clone();
        consume(&store.lock().unwrap(), &hash, "ab", "01").unwrap();
        let all = EnrollTokens::load(&store).unwrap();
        assert_eq!(
            all.find(&t.token).unwrap().check("host-1", now),
            Err(Unusable::Used)
        );
        assert_eq!(
            consume(&store.lock().unwrap(), &hash, "ab", "01"),
            Err(Some(Unusable::Used))
        );
        assert!(matches!(
            issue(&store, "../x", 60, "cli"),
            Err(TokenError::BadSubject(_))
        ));
        assert!(matches!(
            issue(&store, "h", 0, "cli"),
            Err(TokenError::BadValidity(0))
        ));
    }
}
