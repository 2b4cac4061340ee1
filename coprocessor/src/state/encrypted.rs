//! The encrypted, authenticated, rollback-checked state directory of one vTPM instance.
//!
//! Files in the directory:
//! - `instance.key`: the key record (the instance key wrapped by the host key, see
//!   [`crate::keys`]). Written once when the instance is created.
//! - `state.vtpm`: every engine blob, encrypted under the instance key ([`super::format`]),
//!   rewritten as a whole on every change with the generation incremented.
//! - `state.gen`: the generation record, the newest generation written, authenticated under
//!   the instance key. A state file older than it was put back by someone: refused.
//! - `lock`: held (flock) while a daemon or an operator command uses the directory.
//!
//! Nothing here ever overwrites, resets or deletes a state file it refused; opening only
//! reads until every check passed. [`EncryptedStore::reset`] is the explicit way out, and it
//! moves the old files into a backup directory.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use log::warn;
use nix::fcntl::Flock;

use super::format::{self, StateContents, StateHeader};
use super::{atomic, check_name, StateError, StateStore};
use crate::keys::{HostKey, InstanceId, SecretKey};

pub const KEY_RECORD: &str = "instance.key";
pub const STATE_FILE: &str = "state.vtpm";
pub const ANCHOR_FILE: &str = "state.gen";
/// The plain permanent-state file of earlier builds.
const LEGACY_PLAIN_STATE: &str = "tpm2-permall.bin";

/// How [`EncryptedStore::open`] found the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// A new instance was created (fresh TPM).
    Created,
    /// An existing instance authenticated at this generation.
    Existing { generation: u64 },
}

/// What an operator sees about an instance (`vtpm-state inspect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    pub instance: InstanceId,
    pub format_version: u16,
    pub generation: u64,
    /// Generation in the generation record (checked when the key was available).
    pub recorded_generation: Option<u64>,
    /// `Some` when the state was decrypted: engine and blob sizes.
    pub engine: Option<String>,
    pub blobs: Vec<(String, usize)>,
}

/// An instance's state directory, opened and authenticated.
pub struct EncryptedStore {
    dir: PathBuf,
    instance: InstanceId,
    key: SecretKey,
    engine: String,
    inner: Mutex<Inner>,
    _lock: Flock<File>,
}

impl std::fmt::Debug for EncryptedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedStore")
            .field("dir", &self.dir)
            .field("instance", &self.instance)
            .finish()
    }
}

struct Inner {
    generation: u64,
    blobs: BTreeMap<String, Vec<u8>>,
}

/// Result of reading and checking a directory, before anything is written.
struct Checked {
    instance: InstanceId,
    key: SecretKey,
    /// `None`: no state yet (new instance, or creation interrupted before the first write).
    state: Option<(StateHeader, StateContents)>,
    recorded_generation: Option<u64>,
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    atomic::read_optional(path).map_err(|source| StateError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Locks an existing state directory (operator commands must not create one).
fn lock_existing(dir: &Path) -> Result<Flock<File>, StateError> {
    if !dir.is_dir() {
        return Err(StateError::Dir {
            path: dir.to_owned(),
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    prepare_dir(dir)
}

fn prepare_dir(dir: &Path) -> Result<Flock<File>, StateError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| StateError::Dir {
        path: dir.to_owned(),
        source,
    };
    fs::create_dir_all(dir).map_err(err)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)?;
    atomic::lock(dir)
        .map_err(err)?
        .ok_or_else(|| StateError::Locked {
            path: dir.to_owned(),
        })
}

/// Reads and verifies everything in `dir` with `host_key`; writes nothing.
fn check(dir: &Path, host_key: &HostKey) -> Result<Option<Checked>, StateError> {
    let legacy = dir.join(LEGACY_PLAIN_STATE);
    if legacy.exists() {
        return Err(StateError::PlainStateFound { path: legacy });
    }
    let key_path = dir.join(KEY_RECORD);
    let state_path = dir.join(STATE_FILE);
    let anchor_path = dir.join(ANCHOR_FILE);
    let Some(record) = read(&key_path)? else {
        for orphan in [&state_path, &anchor_path] {
            if orphan.exists() {
                return Err(StateError::KeyRecordMissing {
                    path: key_path,
                    state: orphan.clone(),
                });
            }
        }
        return Ok(None);
    };
    let (instance, key) = host_key.unwrap(&key_path, &record)?;
    let state = read(&state_path)?;
    let invalid = |source| StateError::Invalid {
        path: state_path.clone(),
        source,
    };
    // Whose file it is comes first: a swapped file is named as such, whatever else differs.
    if let Some(bytes) = &state {
        let header = format::parse_header(bytes).map_err(invalid)?;
        if header.instance != instance {
            return Err(StateError::WrongInstance {
                path: state_path,
                found: header.instance,
                expected: instance,
            });
        }
    }
    let recorded = match read(&anchor_path)? {
        None => None,
        Some(bytes) => {
            let invalid = |source| StateError::AnchorInvalid {
                path: anchor_path.clone(),
                source,
            };
            let (anchor_instance, generation) =
                format::decode_anchor(&key, &bytes).map_err(invalid)?;
            if anchor_instance != instance {
                return Err(invalid(format::FormatError::Malformed(format!(
                    "it is for instance {anchor_instance}"
                ))));
            }
            Some(generation)
        }
    };
    let Some(bytes) = state else {
        if let Some(generation) = recorded {
            return Err(StateError::StateMissing {
                path: state_path,
                anchor: anchor_path,
                generation,
            });
        }
        return Ok(Some(Checked {
            instance,
            key,
            state: None,
            recorded_generation: None,
        }));
    };
    let (header, contents) = format::decode(&key, &bytes).map_err(invalid)?;
    match recorded {
        Some(newest) if header.generation < newest => {
            return Err(StateError::RolledBack {
                path: state_path,
                anchor: anchor_path,
                generation: header.generation,
                newest,
            })
        }
        // The very first write of an instance may be interrupted before its record exists.
        None if header.generation > 1 => {
            return Err(StateError::AnchorMissing {
                path: state_path,
                anchor: anchor_path,
                generation: header.generation,
            })
        }
        _ => {}
    }
    Ok(Some(Checked {
        instance,
        key,
        state: Some((header, contents)),
        recorded_generation: recorded,
    }))
}

impl EncryptedStore {
    /// Opens the instance in `dir`, or creates a new one (a fresh TPM) if `dir` holds none.
    /// Refuses, naming the file and the reason, anything that does not authenticate, belongs
    /// to another instance, is older than the generation record, or cannot be unwrapped with
    /// `host_key`.
    pub fn open(
        dir: &Path,
        host_key: &HostKey,
        engine: &str,
    ) -> Result<(Self, Opened), StateError> {
        // An unusable key file is reported before anything is created.
        host_key.check()?;
        let lock = prepare_dir(dir)?;
        match check(dir, host_key)? {
            None => {
                let store = Self::create_locked(dir, host_key, engine, BTreeMap::new(), lock)?;
                Ok((store, Opened::Created))
            }
            Some(Checked {
                instance,
                key,
                state: None,
                ..
            }) => {
                // Created but never written (interrupted creation): start it fresh.
                let store =
                    EncryptedStore::with(dir, instance, key, engine, 0, BTreeMap::new(), lock);
                store.persist(&BTreeMap::new(), 1)?;
                store.set_generation(1);
                Ok((store, Opened::Created))
            }
            Some(Checked {
                instance,
                key,
                state: Some((header, contents)),
                recorded_generation,
            }) => {
                if contents.engine != engine {
                    return Err(StateError::Invalid {
                        path: dir.join(STATE_FILE),
                        source: format::FormatError::Malformed(format!(
                            "it holds {} state, not {engine}",
                            contents.engine
                        )),
                    });
                }
                let generation = header.generation;
                let store = EncryptedStore::with(
                    dir,
                    instance,
                    key,
                    engine,
                    generation,
                    contents.blobs,
                    lock,
                );
                if recorded_generation != Some(generation) {
                    // The record lags after a crash between the two writes; bring it level.
                    store.write_anchor(generation, true)?;
                }
                Ok((store, Opened::Existing { generation }))
            }
        }
    }

    /// Creates a new instance in `dir` holding `blobs` (an import). Refuses a directory that
    /// already holds an instance.
    pub fn create(
        dir: &Path,
        host_key: &HostKey,
        engine: &str,
        blobs: BTreeMap<String, Vec<u8>>,
    ) -> Result<Self, StateError> {
        for name in blobs.keys() {
            check_name(name)?;
        }
        let lock = prepare_dir(dir)?;
        for f in [KEY_RECORD, STATE_FILE, ANCHOR_FILE, LEGACY_PLAIN_STATE] {
            if dir.join(f).exists() {
                return Err(StateError::AlreadyExists {
                    path: dir.to_owned(),
                });
            }
        }
        Self::create_locked(dir, host_key, engine, blobs, lock)
    }

    fn create_locked(
        dir: &Path,
        host_key: &HostKey,
        engine: &str,
        blobs: BTreeMap<String, Vec<u8>>,
        lock: Flock<File>,
    ) -> Result<Self, StateError> {
        let instance = InstanceId::random()?;
        let key = SecretKey::random()?;
        let key_path = dir.join(KEY_RECORD);
        let record = host_key.wrap(&instance, &key, &key_path)?;
        atomic::replace(dir, KEY_RECORD, &record, true).map_err(|source| StateError::Write {
            path: key_path,
            source,
        })?;
        let store = EncryptedStore::with(dir, instance, key, engine, 0, BTreeMap::new(), lock);
        store.persist(&blobs, 1)?;
        {
            let mut inner = store.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.generation = 1;
            inner.blobs = blobs;
        }
        Ok(store)
    }

    fn with(
        dir: &Path,
        instance: InstanceId,
        key: SecretKey,
        engine: &str,
        generation: u64,
        blobs: BTreeMap<String, Vec<u8>>,
        lock: Flock<File>,
    ) -> Self {
        EncryptedStore {
            dir: dir.to_owned(),
            instance,
            key,
            engine: engine.to_owned(),
            inner: Mutex::new(Inner { generation, blobs }),
            _lock: lock,
        }
    }

    fn set_generation(&self, generation: u64) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .generation = generation;
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn instance(&self) -> InstanceId {
        self.instance
    }

    /// Generation of the state file on disk.
    pub fn generation(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .generation
    }

    /// Writes `blobs` as `generation`: the state file durably (fsync file and directory),
    /// then the generation record. A crash between the two leaves the record one behind,
    /// which [`EncryptedStore::open`] accepts and repairs; the record's rename becomes durable
    /// with the next write's directory fsync (same directory) or on drop.
    fn persist(
        &self,
        blobs: &BTreeMap<String, Vec<u8>>,
        generation: u64,
    ) -> Result<(), StateError> {
        let path = self.dir.join(STATE_FILE);
        let contents = StateContents {
            engine: self.engine.clone(),
            blobs: blobs.clone(),
        };
        let bytes =
            format::encode(&self.key, &self.instance, generation, &contents).map_err(|source| {
                StateError::Invalid {
                    path: path.clone(),
                    source,
                }
            })?;
        atomic::replace(&self.dir, STATE_FILE, &bytes, true)
            .map_err(|source| StateError::Write { path, source })?;
        self.write_anchor(generation, false)
    }

    fn write_anchor(&self, generation: u64, sync_dir: bool) -> Result<(), StateError> {
        let path = self.dir.join(ANCHOR_FILE);
        let bytes =
            format::encode_anchor(&self.key, &self.instance, generation).map_err(|source| {
                StateError::AnchorInvalid {
                    path: path.clone(),
                    source,
                }
            })?;
        atomic::replace(&self.dir, ANCHOR_FILE, &bytes, sync_dir)
            .map_err(|source| StateError::Write { path, source })
    }

    /// Reads and verifies `dir` with `host_key` without changing anything (`inspect`).
    pub fn verify(dir: &Path, host_key: &HostKey) -> Result<Option<InstanceInfo>, StateError> {
        let _lock = lock_existing(dir)?;
        let Some(checked) = check(dir, host_key)? else {
            return Ok(None);
        };
        let (generation, version, engine, blobs) = match &checked.state {
            Some((h, c)) => (
                h.generation,
                h.version,
                Some(c.engine.clone()),
                c.blobs.iter().map(|(n, d)| (n.clone(), d.len())).collect(),
            ),
            None => (0, format::FORMAT_VERSION, None, Vec::new()),
        };
        Ok(Some(InstanceInfo {
            instance: checked.instance,
            format_version: version,
            generation,
            recorded_generation: checked.recorded_generation,
            engine,
            blobs,
        }))
    }

    /// Accepts the state file as it is after an operator decided so (its generation record
    /// is missing, or it is an older file restored on purpose): the file must still
    /// authenticate under the instance's key; the generation record is rewritten to match.
    /// Returns the accepted generation.
    pub fn accept_current(dir: &Path, host_key: &HostKey) -> Result<u64, StateError> {
        let lock = lock_existing(dir)?;
        let key_path = dir.join(KEY_RECORD);
        let state_path = dir.join(STATE_FILE);
        let record = read(&key_path)?.ok_or_else(|| StateError::KeyRecordMissing {
            path: key_path.clone(),
            state: state_path.clone(),
        })?;
        let (instance, key) = host_key.unwrap(&key_path, &record)?;
        let bytes = read(&state_path)?.ok_or_else(|| StateError::Read {
            path: state_path.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        let invalid = |source| StateError::Invalid {
            path: state_path.clone(),
            source,
        };
        let header = format::parse_header(&bytes).map_err(invalid)?;
        if header.instance != instance {
            return Err(StateError::WrongInstance {
                path: state_path,
                found: header.instance,
                expected: instance,
            });
        }
        let (header, contents) = format::decode(&key, &bytes).map_err(invalid)?;
        let store = EncryptedStore::with(
            dir,
            instance,
            key,
            &contents.engine,
            header.generation,
            BTreeMap::new(),
            lock,
        );
        store.write_anchor(header.generation, true)?;
        warn!(
            "operator accepted state file {} at generation {} as the newest",
            state_path.display(),
            header.generation
        );
        Ok(header.generation)
    }

    /// Reads the clear-text headers (no key needed): instance, format and generation.
    pub fn inspect(dir: &Path) -> Result<Option<InstanceInfo>, StateError> {
        let state_path = dir.join(STATE_FILE);
        let Some(bytes) = read(&state_path)? else {
            return Ok(None);
        };
        let header = format::parse_header(&bytes).map_err(|source| StateError::Invalid {
            path: state_path,
            source,
        })?;
        Ok(Some(InstanceInfo {
            instance: header.instance,
            format_version: header.version,
            generation: header.generation,
            recorded_generation: None,
            engine: None,
            blobs: Vec::new(),
        }))
    }

    /// Resets the instance: moves its key record, state file and generation record into a
    /// new `backup-<unix time>` directory inside `dir` (nothing is deleted), so the next
    /// start creates a fresh TPM. Needs no key: it is also the way out when the key is lost.
    /// Returns the backup directory, or `None` if there was nothing to reset.
    pub fn reset(dir: &Path) -> Result<Option<PathBuf>, StateError> {
        let _lock = lock_existing(dir)?;
        let present: Vec<&str> = [KEY_RECORD, STATE_FILE, ANCHOR_FILE, LEGACY_PLAIN_STATE]
            .into_iter()
            .filter(|f| dir.join(f).exists())
            .collect();
        if present.is_empty() {
            return Ok(None);
        }
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let dir_err = |path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Dir { path, source }
        };
        let mut backup = dir.join(format!("backup-{secs}"));
        let mut n = 1;
        while backup.exists() {
            backup = dir.join(format!("backup-{secs}-{n}"));
            n += 1;
        }
        fs::create_dir(&backup).map_err(dir_err(&backup))?;
        for f in &present {
            fs::rename(dir.join(f), backup.join(f)).map_err(dir_err(&backup))?;
        }
        atomic::sync(&backup).map_err(dir_err(&backup))?;
        atomic::sync(dir).map_err(dir_err(dir))?;
        warn!(
            "vTPM state in {} reset by operator; previous files kept in {}",
            dir.display(),
            backup.display()
        );
        Ok(Some(backup))
    }
}

impl StateStore for EncryptedStore {
    fn load(&self, name: &str) -> Result<Option<Vec<u8>>, StateError> {
        check_name(name)?;
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Ok(inner.blobs.get(name).cloned())
    }

    fn store(&self, name: &str, data: &[u8]) -> Result<(), StateError> {
        check_name(name)?;
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let previous = inner.blobs.insert(name.to_owned(), data.to_vec());
        let generation = inner.generation + 1;
        match self.persist(&inner.blobs, generation) {
            Ok(()) => {
                inner.generation = generation;
                Ok(())
            }
            Err(e) => {
                match previous {
                    Some(p) => inner.blobs.insert(name.to_owned(), p),
                    None => inner.blobs.remove(name),
                };
                Err(e)
            }
        }
    }

    fn delete(&self, name: &str) -> Result<(), StateError> {
        check_name(name)?;
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(previous) = inner.blobs.remove(name) else {
            return Ok(());
        };
        let generation = inner.generation + 1;
        match self.persist(&inner.blobs, generation) {
            Ok(()) => {
                inner.generation = generation;
                Ok(())
            }
            Err(e) => {
                inner.blobs.insert(name.to_owned(), previous);
                Err(e)
            }
        }
    }
}

impl Drop for EncryptedStore {
    fn drop(&mut self) {
        // Makes the last generation record's rename durable.
        if let Err(e) = atomic::sync(&self.dir) {
            warn!("cannot sync state directory {}: {e}", self.dir.display());
        }
    }
}
