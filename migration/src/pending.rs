//! The migration record in a state directory (`migration.pending`): while it is there, the
//! instance is held for a migration and serves nothing (ADR 0010).
//!
//! * On a source it says that the package of migration M was released: the instance serves
//!   again only once the controller says M was aborted; once committed, it is destroyed.
//! * On a destination it says that the instance was imported for migration M: it serves
//!   only once the controller committed M; if M was aborted, it is destroyed.
//!
//! It is written durably before the step it guards (before the package leaves, before the
//! imported instance exists), so a crash at any instant leaves a directory that a restarted
//! daemon asks the controller about instead of serving. JSON, no secrets.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::Role;

/// File name in the state directory.
pub const PENDING_FILE: &str = "migration.pending";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub role: Role,
    /// The migration id (hex).
    pub migration: String,
    /// The instance id (hex).
    pub instance: String,
    /// The epoch the migration moves.
    pub epoch: u64,
    /// The other host.
    pub peer: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PendingError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a migration record: {reason}")]
    Malformed { path: PathBuf, reason: String },
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(PENDING_FILE)
}

/// The record in `state_dir`, if any.
pub fn read(state_dir: &Path) -> Result<Option<Pending>, PendingError> {
    let path = path(state_dir);
    let Some(bytes) = durable_fs::read_optional(&path).map_err(|source| PendingError::Io {
        path: path.clone(),
        source,
    })?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| PendingError::Malformed {
            path,
            reason: e.to_string(),
        })
}

/// Writes the record durably.
pub fn write(state_dir: &Path, record: &Pending) -> Result<(), PendingError> {
    let path = path(state_dir);
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| PendingError::Malformed {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    durable_fs::replace(&path, &bytes, 0o600, true)
        .map_err(|source| PendingError::Io { path, source })
}

/// Removes the record durably (the migration is decided).
pub fn remove(state_dir: &Path) -> Result<(), PendingError> {
    let path = path(state_dir);
    durable_fs::remove(&path, true)
        .map(drop)
        .map_err(|source| PendingError::Io { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_malformed() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let p = Pending {
            role: Role::Source,
            migration: "00".repeat(16),
            instance: "11".repeat(16),
            epoch: 3,
            peer: "host-b".into(),
        };
        write(dir.path(), &p).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(p));
        remove(dir.path()).unwrap();
        remove(dir.path()).unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join(PENDING_FILE), b"{").unwrap();
        assert!(matches!(
            read(dir.path()),
            Err(PendingError::Malformed { .. })
        ));
    }
}
