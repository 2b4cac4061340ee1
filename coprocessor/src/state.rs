//! Where a vTPM instance's state lives between runs.
//!
//! An engine keeps named blobs (`permall` for the permanent NV state, `volatilestate` for
//! what a clean shutdown saves). [`StateStore`] is the seam between the engine and the
//! storage format: [`DirStore`] writes each blob as a plain file, replaced atomically
//! (write to a temporary file, fsync it, rename over the old one, fsync the directory), so a
//! crash at any instant leaves either the old or the new blob, never a torn one.
//! The encrypted, authenticated format replaces this store behind the same trait.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write state file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid state blob name {0:?}")]
    BadName(String),
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

/// Plain files in one directory, one per blob, replaced atomically.
#[derive(Debug)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    /// Opens (creating if needed, mode 0700) the state directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StateError> {
        let dir = dir.into();
        let err = |source| StateError::Dir {
            path: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(err)?;
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(err)?;
        }
        Ok(DirStore { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> Result<PathBuf, StateError> {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(StateError::BadName(name.to_owned()));
        }
        Ok(self.dir.join(format!("tpm2-{name}.bin")))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

impl StateStore for DirStore {
    fn load(&self, name: &str) -> Result<Option<Vec<u8>>, StateError> {
        let path = self.path(name)?;
        match fs::read(&path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Read { path, source }),
        }
    }

    fn store(&self, name: &str, data: &[u8]) -> Result<(), StateError> {
        let path = self.path(name)?;
        let tmp = path.with_extension("tmp");
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode_0600()
                .open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            self.sync_dir()
        };
        write().map_err(|source| StateError::Write { path, source })
    }

    fn delete(&self, name: &str) -> Result<(), StateError> {
        let path = self.path(name)?;
        match fs::remove_file(&path) {
            Ok(()) => self
                .sync_dir()
                .map_err(|source| StateError::Write { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Write { path, source }),
        }
    }
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

#[cfg(test)]
#[path = "tests/state.rs"]
mod tests;
