//! Where a vTPM instance's state lives between runs.
//!
//! An engine keeps named blobs (`permall` for the permanent NV state, `volatilestate` for
//! what a clean shutdown saves). [`StateStore`] is the seam between the engine and storage;
//! [`EncryptedStore`] is the store the daemon uses: one state directory per instance holding
//! the instance's key record, its encrypted and authenticated state file, and a generation
//! record against replay of older state files (ADR 0007). Every file is replaced atomically
//! (temporary file, fsync, rename, fsync of the directory), so a crash at any instant leaves
//! the old or the new file, never a torn one.

pub mod atomic;
pub mod encrypted;
pub mod format;

use std::io;
use std::path::PathBuf;

pub use encrypted::{EncryptedStore, InstanceInfo, Opened};
pub use format::FormatError;

use crate::keys::{InstanceId, KeyError};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid state blob name {0:?}")]
    BadName(String),
    #[error("state directory {path} is in use by another process (is a daemon running on it?)")]
    Locked { path: PathBuf },
    #[error("state file {path} refused: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    #[error("state file {path} belongs to instance {found}, but this directory's key record is for instance {expected}: files were swapped between instances")]
    WrongInstance {
        path: PathBuf,
        found: InstanceId,
        expected: InstanceId,
    },
    #[error("state file {path} is generation {generation}, older than generation {newest} recorded in {anchor}: an older state file was put back (replay or rollback)")]
    RolledBack {
        path: PathBuf,
        anchor: PathBuf,
        generation: u64,
        newest: u64,
    },
    #[error("generation record {anchor} is missing while state file {path} is at generation {generation}: the state cannot be checked for rollback")]
    AnchorMissing {
        path: PathBuf,
        anchor: PathBuf,
        generation: u64,
    },
    #[error("generation record {path} refused: {source}")]
    AnchorInvalid {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    #[error("state file {path} is missing although the instance's key record {key_record} exists: the state was deleted or lost; restore it from a backup, or reset the instance with `vtpm-state reset`")]
    StateMissing { path: PathBuf, key_record: PathBuf },
    #[error("key record {path} is missing, so state file {state} cannot be decrypted")]
    KeyRecordMissing { path: PathBuf, state: PathBuf },
    #[error("{path} holds unencrypted state of an earlier vhost-vtpm build; this build keeps state only encrypted")]
    PlainStateFound { path: PathBuf },
    #[error("state directory {path} already holds an instance")]
    AlreadyExists { path: PathBuf },
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Durable storage of an instance's named state blobs.
pub trait StateStore: Send {
    /// Returns the blob, or `None` if it was never stored (a new instance).
    fn load(&self, name: &str) -> Result<Option<Vec<u8>>, StateError>;
    /// Stores the blob durably: when this returns `Ok`, a crash does not lose it.
    fn store(&self, name: &str, data: &[u8]) -> Result<(), StateError>;
    /// Removes the blob if present; durable when it returns.
    fn delete(&self, name: &str) -> Result<(), StateError>;
}

/// Blob names are short identifiers chosen by the engine.
fn check_name(name: &str) -> Result<(), StateError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StateError::BadName(name.to_owned()))
    }
}

#[cfg(test)]
#[path = "../tests/state.rs"]
mod tests;
