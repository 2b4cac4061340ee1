//! Nonce freshness: the verifier chooses every nonce and accepts each once.
//!
//! A [`NonceStore`] is a directory (mode 0700) holding `nonces.json`: every nonce issued and
//! not yet forgotten, with when it was issued, until when it may be used, and when it was
//! used. It is read and replaced (atomically, durably, through `durable-fs`) under an
//! exclusive lock on `lock`, so concurrent `vtpm-verify` processes never accept one nonce
//! twice. A used nonce is remembered until it expires, so a replay is named as one; after
//! that it is forgotten and a replay is refused as unknown.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE: &str = "nonces.json";
const LOCK: &str = "lock";
const MODE: u32 = 0o600;
/// Size of an issued nonce (the host quote's qualifying data is SHA-256 over it, so any
/// size up to 64 bytes works; 32 is a SHA-256's worth of entropy).
pub const NONCE_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum NonceError {
    #[error("nonce store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nonce store {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot generate a nonce: {0}")]
    Random(#[from] openssl::error::ErrorStack),
}

/// What became of a nonce presented for verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// Issued here, unused and unexpired: now marked used.
    Fresh { issued_at: u64 },
    /// Issued here and already used (a replay).
    Replayed { used_at: u64 },
    /// Issued here but expired before it was presented.
    Expired { expires_at: u64 },
    /// Never issued here (or expired and forgotten).
    Unknown,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Record {
    issued_at: u64,
    expires_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    used_at: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Nonces {
    nonces: BTreeMap<String, Record>,
}

/// The verifier's nonce directory.
#[derive(Debug, Clone)]
pub struct NonceStore {
    dir: PathBuf,
}

impl NonceStore {
    /// Opens (creating, mode 0700) the directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, NonceError> {
        let dir = dir.into();
        durable_fs::create_private_dir(&dir).map_err(|source| NonceError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(NonceStore { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn update<T>(&self, f: impl FnOnce(&mut Nonces) -> T) -> Result<T, NonceError> {
        let lock_path = self.dir.join(LOCK);
        let _lock = durable_fs::lock(&lock_path, MODE).map_err(|source| NonceError::Io {
            path: lock_path,
            source,
        })?;
        let path = self.dir.join(FILE);
        let io = |source| NonceError::Io {
            path: path.clone(),
            source,
        };
        let mut nonces = match durable_fs::read_optional(&path).map_err(io)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| NonceError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            None => Nonces::default(),
        };
        let result = f(&mut nonces);
        let bytes = serde_json::to_vec_pretty(&nonces).map_err(|e| NonceError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        durable_fs::replace(&path, &bytes, MODE, true).map_err(io)?;
        Ok(result)
    }

    /// Issues a fresh random nonce (hex) usable until `now + ttl_secs`; forgets nonces that
    /// expired.
    pub fn issue(&self, now: u64, ttl_secs: u64) -> Result<String, NonceError> {
        let mut bytes = [0u8; NONCE_LEN];
        openssl::rand::rand_bytes(&mut bytes)?;
        let nonce = hex::encode(bytes);
        self.update(|n| {
            n.nonces.retain(|_, r| r.expires_at >= now);
            n.nonces.insert(
                nonce.clone(),
                Record {
                    issued_at: now,
                    expires_at: now.saturating_add(ttl_secs),
                    used_at: None,
                },
            );
        })?;
        Ok(nonce)
    }

    /// Presents `nonce` (hex, any case): a fresh one is marked used, whatever else the
    /// verification finds, so each nonce is accepted at most once.
    pub fn consume(&self, nonce: &str, now: u64) -> Result<Freshness, NonceError> {
        let key = nonce.trim().to_ascii_lowercase();
        self.update(|n| match n.nonces.get_mut(&key) {
            None => Freshness::Unknown,
            Some(r) => match r.used_at {
                Some(used_at) => Freshness::Replayed { used_at },
                None if now > r.expires_at => Freshness::Expired {
                    expires_at: r.expires_at,
                },
                None => {
                    r.used_at = Some(now);
                    Freshness::Fresh {
                        issued_at: r.issued_at,
                    }
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_accepted_once_and_only_while_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let store = NonceStore::open(dir.path().join("nonces")).unwrap();
        let n = store.issue(1000, 60).unwrap();
        assert_eq!(n.len(), 2 * NONCE_LEN);
        assert_ne!(store.issue(1000, 60).unwrap(), n);
        assert_eq!(
            store.consume(&n.to_ascii_uppercase(), 1010).unwrap(),
            Freshness::Fresh { issued_at: 1000 }
        );
        assert_eq!(
            store.consume(&n, 1020).unwrap(),
            Freshness::Replayed { used_at: 1010 }
        );
        // Another process (a new store on the same directory) sees the same.
        let again = NonceStore::open(dir.path().join("nonces")).unwrap();
        assert_eq!(
            again.consume(&n, 1030).unwrap(),
            Freshness::Replayed { used_at: 1010 }
        );
        let late = store.issue(2000, 60).unwrap();
        assert_eq!(
            store.consume(&late, 2061).unwrap(),
            Freshness::Expired { expires_at: 2060 }
        );
        assert_eq!(store.consume("00ff", 2000).unwrap(), Freshness::Unknown);
        // Expired records are forgotten at the next issue: a late replay is unknown.
        store.issue(5000, 60).unwrap();
        assert_eq!(store.consume(&n, 5001).unwrap(), Freshness::Unknown);
    }

    #[test]
    fn a_corrupt_store_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = NonceStore::open(dir.path()).unwrap();
        std::fs::write(dir.path().join(FILE), b"{ not json").unwrap();
        assert!(matches!(
            store.consume("00", 1),
            Err(NonceError::Corrupt { .. })
        ));
        assert!(matches!(store.issue(1, 1), Err(NonceError::Corrupt { .. })));
    }
}
