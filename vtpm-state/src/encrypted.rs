//! The encrypted, authenticated, rollback-checked state directory of one vTPM instance.
//!
//! Files in the directory:
//! - `instance.key`: the key record (the instance key wrapped by the host key, see
//!   [`crate::keys`]). Written once when the instance is created.
//! - `state.vtpm`: every engine blob, encrypted under the instance key ([`crate::format`]),
//!   rewritten as a whole on every change with the generation incremented.
//! - `state.gen`: the generation record, the newest generation written, authenticated under
//!   the instance key. A state file older than it was put back by someone: refused.
//! - `lock`: held (flock) while a daemon or an operator command uses the directory.
//! - `migrated`: the tombstone of an instance that moved away ([`EncryptedStore::destroy`]):
//!   the directory refuses to open ([`StateError::MigratedAway`]) until an import
//!   ([`Reserved::create`]) or a reset puts an instance in it again.
//!
//! Nothing here ever overwrites, resets or deletes a state file it refused; opening only
//! reads until every check passed. [`EncryptedStore::reset`] is the explicit way out, and it
//! moves the old files into a backup directory.
//!
//! Whoever can write into the directory must not be able to redirect the process that owns
//! it, so every file goes through [`durable_fs`]: replaced through a fresh temporary created
//! with `O_CREAT | O_EXCL | O_NOFOLLOW` and renamed over it, read and locked with
//! `O_NOFOLLOW` (a symlink at `lock`, `instance.key`, `state.vtpm` or `state.gen` is refused,
//! naming it). The temporaries a crash left behind are removed when the directory is opened
//! under its lock.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use durable_fs::LockFile;
use log::{info, warn};
use zeroize::Zeroizing;

use coprocessor::{StateStore, StoreError};

use crate::format::{self, Blobs, StateContents, StateHeader};
use crate::keys::{HostKey, InstanceId, SecretKey};
use crate::{check_name, StateError};

pub const KEY_RECORD: &str = "instance.key";
pub const STATE_FILE: &str = "state.vtpm";
pub const ANCHOR_FILE: &str = "state.gen";
/// The lock file, held (flock) while the directory is in use.
pub const LOCK_FILE: &str = "lock";
/// The tombstone: the instance left this directory (migrated to another host, or an
/// aborted import was destroyed); its text says which migration. Written before the key
/// record is removed, so a directory with a tombstone never opens as an instance again.
pub const TOMBSTONE: &str = "migrated";
/// The blob of an instance's authenticated state that names the VM it belongs to (the
/// daemon's `--vm-id`): it travels with the state files and cannot be changed without the
/// instance key.
pub const VM_BINDING: &str = "vm-binding";
/// Mode of every file in the directory.
const FILE_MODE: u32 = 0o600;
/// The plain permanent-state file of earlier builds.
const LEGACY_PLAIN_STATE: &str = "tpm2-permall.bin";

/// State files this process has written durably (every store's, for metrics: one daemon serves
/// one instance).
static DURABLE_WRITES: AtomicU64 = AtomicU64::new(0);

/// How many state files this process has written durably (each one a new generation).
pub fn durable_writes_total() -> u64 {
    DURABLE_WRITES.load(Ordering::Relaxed)
}

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
    _lock: LockFile,
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
    /// The engine's blobs in clear, each wiped when replaced or dropped.
    blobs: Blobs,
}

/// An instance's files, read and authenticated, before any rollback policy or write.
struct Authenticated {
    instance: InstanceId,
    key: SecretKey,
    header: StateHeader,
    contents: StateContents,
    /// The generation record: missing, or refused (the policy decides what that means).
    recorded: Result<Option<u64>, StateError>,
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    durable_fs::read_optional(path).map_err(|source| StateError::Read {
        path: path.to_owned(),
        source,
    })
}

fn write(dir: &Path, name: &str, data: &[u8], sync_dir: bool) -> Result<(), StateError> {
    let path = dir.join(name);
    durable_fs::replace(&path, data, FILE_MODE, sync_dir)
        .map_err(|source| StateError::Write { path, source })
}

/// Locks an existing state directory (operator commands must not create one).
fn lock_existing(dir: &Path) -> Result<LockFile, StateError> {
    if !dir.is_dir() {
        return Err(StateError::Dir {
            path: dir.to_owned(),
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    prepare_dir(dir)
}

fn prepare_dir(dir: &Path) -> Result<LockFile, StateError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| StateError::Dir {
        path: dir.to_owned(),
        source,
    };
    fs::create_dir_all(dir).map_err(err)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)?;
    let lock = dir.join(LOCK_FILE);
    durable_fs::try_lock(&lock, FILE_MODE)
        .map_err(|source| StateError::Lock { path: lock, source })?
        .ok_or_else(|| StateError::Locked {
            path: dir.to_owned(),
        })
}

/// Removes the temporaries that a crash during a write left in `dir` (the caller holds the
/// lock, so no write of ours is in progress). A failure is only logged: leftovers take
/// space, never the place of a state file.
fn remove_stale_temporaries(dir: &Path) {
    match durable_fs::remove_stale_temporaries(
        dir,
        &[KEY_RECORD, STATE_FILE, ANCHOR_FILE, TOMBSTONE],
    ) {
        Ok(removed) => {
            for path in removed {
                info!(
                    "removed {}, left by a write that a crash interrupted",
                    path.display()
                );
            }
        }
        Err(e) => warn!(
            "cannot remove stale temporary files in {}: {e}",
            dir.display()
        ),
    }
}

/// Reads `dir` and authenticates its state with `host_key`; writes nothing and judges no
/// generation. `None`: no instance (no key record and no state). The key record is written
/// last when an instance is created, so it commits the creation: a key record without a
/// state file means the state was lost, never an unfinished creation.
fn read_instance(dir: &Path, host_key: &HostKey) -> Result<Option<Authenticated>, StateError> {
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
    let Some(bytes) = read(&state_path)? else {
        return Err(StateError::StateMissing {
            path: state_path,
            key_record: key_path,
        });
    };
    let invalid = |source| StateError::Invalid {
        path: state_path.clone(),
        source,
    };
    // Whose file it is comes first: a swapped file is named as such, whatever else differs.
    let header = format::parse_header(&bytes).map_err(invalid)?;
    if header.instance != instance {
        return Err(StateError::WrongInstance {
            path: state_path,
            found: header.instance,
            expected: instance,
        });
    }
    let (header, contents) = format::decode(&key, &bytes).map_err(invalid)?;
    let recorded = read(&anchor_path).and_then(|anchor| {
        let Some(bytes) = anchor else {
            return Ok(None);
        };
        let invalid = |source| StateError::AnchorInvalid {
            path: anchor_path.clone(),
            source,
        };
        let (anchor_instance, generation) = format::decode_anchor(&key, &bytes).map_err(invalid)?;
        if anchor_instance != instance {
            return Err(invalid(format::FormatError::OtherInstance(anchor_instance)));
        }
        Ok(Some(generation))
    });
    Ok(Some(Authenticated {
        instance,
        key,
        header,
        contents,
        recorded,
    }))
}

/// [`read_instance`] and the rollback policy: the state file must not be older than the
/// generation record, and the record may be missing only for the first generation.
fn check(dir: &Path, host_key: &HostKey) -> Result<Option<Authenticated>, StateError> {
    let Some(mut found) = read_instance(dir, host_key)? else {
        return Ok(None);
    };
    let generation = found.header.generation;
    let recorded = std::mem::replace(&mut found.recorded, Ok(None))?;
    let (path, anchor) = (dir.join(STATE_FILE), dir.join(ANCHOR_FILE));
    match recorded {
        Some(newest) if generation < newest => {
            return Err(StateError::RolledBack {
                path,
                anchor,
                generation,
                newest,
            })
        }
        // A crash may end creation between the state file and its record.
        None if generation > 1 => {
            return Err(StateError::AnchorMissing {
                path,
                anchor,
                generation,
            })
        }
        _ => {}
    }
    found.recorded = Ok(recorded);
    Ok(Some(found))
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
        remove_stale_temporaries(dir);
        refuse_tombstone(dir)?;
        let Some(found) = check(dir, host_key)? else {
            let store = Self::create_locked(dir, host_key, engine, None, Blobs::new(), lock)?;
            return Ok((store, Opened::Created));
        };
        if found.contents.engine != engine {
            return Err(StateError::Invalid {
                path: dir.join(STATE_FILE),
                source: format::FormatError::OtherEngine {
                    found: found.contents.engine,
                    expected: engine.to_owned(),
                },
            });
        }
        let generation = found.header.generation;
        let recorded = found.recorded.ok().flatten();
        let store = EncryptedStore::with(
            dir,
            found.instance,
            found.key,
            engine,
            generation,
            found.contents.blobs,
            lock,
        );
        if recorded != Some(generation) {
            // The record lags after a crash between the two writes; bring it level.
            store.write_anchor(generation, true)?;
        }
        Ok((store, Opened::Existing { generation }))
    }

    /// Creates a new instance in `dir` holding `blobs` (an import). Refuses a directory that
    /// already holds an instance.
    pub fn create(
        dir: &Path,
        host_key: &HostKey,
        engine: &str,
        blobs: BTreeMap<String, Vec<u8>>,
    ) -> Result<Self, StateError> {
        let blobs: Blobs = blobs
            .into_iter()
            .map(|(name, data)| (name, Zeroizing::new(data)))
            .collect();
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
        remove_stale_temporaries(dir);
        Self::create_locked(dir, host_key, engine, None, blobs, lock)
    }

    /// Locks `dir` (created if missing) for an instance to be imported into it later
    /// ([`Reserved::create`]): it must hold no instance; a tombstone of one that moved away
    /// is allowed (the instance may come back).
    pub fn reserve(dir: &Path) -> Result<Reserved, StateError> {
        let lock = prepare_dir(dir)?;
        remove_stale_temporaries(dir);
        for f in [KEY_RECORD, STATE_FILE, ANCHOR_FILE, LEGACY_PLAIN_STATE] {
            if dir.join(f).exists() {
                return Err(StateError::AlreadyExists {
                    path: dir.to_owned(),
                });
            }
        }
        Ok(Reserved {
            dir: dir.to_owned(),
            lock,
        })
    }

    fn create_locked(
        dir: &Path,
        host_key: &HostKey,
        engine: &str,
        instance: Option<InstanceId>,
        blobs: Blobs,
        lock: LockFile,
    ) -> Result<Self, StateError> {
        let instance = match instance {
            Some(id) => id,
            None => InstanceId::random()?,
        };
        let key = SecretKey::random()?;
        let key_path = dir.join(KEY_RECORD);
        let record = host_key.wrap(&instance, &key, &key_path)?;
        let store = EncryptedStore::with(dir, instance, key, engine, 1, blobs, lock);
        {
            let inner = store.inner.lock().unwrap_or_else(|p| p.into_inner());
            store.persist(&inner.blobs, 1)?;
        }
        // The key record last: it commits the creation (see `read_instance`). Until it is
        // durable, the state file is an orphan that the next start refuses, never a TPM.
        write(dir, KEY_RECORD, &record, true)?;
        Ok(store)
    }

    fn with(
        dir: &Path,
        instance: InstanceId,
        key: SecretKey,
        engine: &str,
        generation: u64,
        blobs: Blobs,
        lock: LockFile,
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
    fn persist(&self, blobs: &Blobs, generation: u64) -> Result<(), StateError> {
        let bytes = format::encode(&self.key, &self.instance, generation, &self.engine, blobs)
            .map_err(|source| StateError::Invalid {
                path: self.dir.join(STATE_FILE),
                source,
            })?;
        write(&self.dir, STATE_FILE, &bytes, true)?;
        self.write_anchor(generation, false)?;
        DURABLE_WRITES.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn write_anchor(&self, generation: u64, sync_dir: bool) -> Result<(), StateError> {
        let bytes =
            format::encode_anchor(&self.key, &self.instance, generation).map_err(|source| {
                StateError::AnchorInvalid {
                    path: self.dir.join(ANCHOR_FILE),
                    source,
                }
            })?;
        write(&self.dir, ANCHOR_FILE, &bytes, sync_dir)
    }

    /// Reads and verifies `dir` with `host_key` without changing anything (`inspect`).
    pub fn verify(dir: &Path, host_key: &HostKey) -> Result<Option<InstanceInfo>, StateError> {
        let _lock = lock_existing(dir)?;
        let Some(found) = check(dir, host_key)? else {
            return Ok(None);
        };
        Ok(Some(InstanceInfo {
            instance: found.instance,
            format_version: found.header.version,
            generation: found.header.generation,
            recorded_generation: found.recorded.ok().flatten(),
            engine: Some(found.contents.engine.clone()),
            blobs: found
                .contents
                .blobs
                .iter()
                .map(|(n, d)| (n.clone(), d.len()))
                .collect(),
        }))
    }

    /// Accepts the state file as it is after an operator decided so (its generation record
    /// is missing, or it is an older file restored on purpose): the file must still
    /// authenticate under the instance's key; the generation record is rewritten to match.
    /// Returns the accepted generation.
    pub fn accept_current(dir: &Path, host_key: &HostKey) -> Result<u64, StateError> {
        let lock = lock_existing(dir)?;
        // Everything but the rollback policy: the file must authenticate, whatever the
        // generation record says (or whether it is there at all).
        let found = read_instance(dir, host_key)?.ok_or_else(|| StateError::KeyRecordMissing {
            path: dir.join(KEY_RECORD),
            state: dir.join(STATE_FILE),
        })?;
        let generation = found.header.generation;
        let store = EncryptedStore::with(
            dir,
            found.instance,
            found.key,
            &found.contents.engine,
            generation,
            Blobs::new(),
            lock,
        );
        store.write_anchor(generation, true)?;
        warn!(
            "operator accepted state file {} at generation {generation} as the newest",
            dir.join(STATE_FILE).display()
        );
        Ok(generation)
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
        let present: Vec<&str> = [
            KEY_RECORD,
            STATE_FILE,
            ANCHOR_FILE,
            LEGACY_PLAIN_STATE,
            TOMBSTONE,
        ]
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
        durable_fs::sync_dir(&backup).map_err(dir_err(&backup))?;
        durable_fs::sync_dir(dir).map_err(dir_err(dir))?;
        warn!(
            "vTPM state in {} reset by operator; previous files kept in {}",
            dir.display(),
            backup.display()
        );
        Ok(Some(backup))
    }
}

/// A locked, empty state directory waiting for an imported instance (the destination of a
/// migration).
#[derive(Debug)]
pub struct Reserved {
    dir: PathBuf,
    lock: LockFile,
}

impl Reserved {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the instance `instance` (the id it had on its source) holding `blobs`,
    /// under a new instance key wrapped by `host_key`; the tombstone of an earlier stay, if
    /// any, goes first. The key record is written last and commits the creation.
    pub fn create(
        self,
        host_key: &HostKey,
        engine: &str,
        instance: InstanceId,
        blobs: BTreeMap<String, Vec<u8>>,
    ) -> Result<EncryptedStore, StateError> {
        let blobs: Blobs = blobs
            .into_iter()
            .map(|(name, data)| (name, Zeroizing::new(data)))
            .collect();
        for name in blobs.keys() {
            check_name(name)?;
        }
        let tombstone = self.dir.join(TOMBSTONE);
        durable_fs::remove(&tombstone, true).map_err(|source| StateError::Write {
            path: tombstone,
            source,
        })?;
        EncryptedStore::create_locked(
            &self.dir,
            host_key,
            engine,
            Some(instance),
            blobs,
            self.lock,
        )
    }
}

/// Refuses a directory with a tombstone, after finishing a destruction that a crash
/// interrupted (the tombstone is written first: whatever is left of the instance goes).
fn refuse_tombstone(dir: &Path) -> Result<(), StateError> {
    let path = dir.join(TOMBSTONE);
    let Some(text) = read(&path)? else {
        return Ok(());
    };
    remove_instance_files(dir)?;
    Err(StateError::MigratedAway {
        path,
        why: String::from_utf8_lossy(&text).trim().to_owned(),
    })
}

/// Removes the key record first (without it every copy of the state file is unreadable),
/// then the state file and the generation record; each removal is durable.
fn remove_instance_files(dir: &Path) -> Result<(), StateError> {
    for f in [KEY_RECORD, STATE_FILE, ANCHOR_FILE] {
        let path = dir.join(f);
        durable_fs::remove(&path, true).map_err(|source| StateError::Write { path, source })?;
    }
    Ok(())
}

impl EncryptedStore {
    /// Destroys the instance for good, because it now lives elsewhere (a committed
    /// migration) or must not live here (an aborted import): first the tombstone with
    /// `why` (so the directory never opens as this or a fresh instance again), then the key
    /// record (every copy of the state file, backups included, becomes unreadable), then
    /// the state file and the generation record. The instance's key and blobs in memory are
    /// wiped as the store is dropped.
    pub fn destroy(self, why: &str) -> Result<(), StateError> {
        write(&self.dir, TOMBSTONE, why.as_bytes(), true)?;
        remove_instance_files(&self.dir)?;
        warn!(
            "vTPM instance {} destroyed in {}: {why}",
            self.instance,
            self.dir.display()
        );
        Ok(())
    }
}

/// The blobs, as the engine reads and writes them. Each change is durable when it returns.
impl EncryptedStore {
    pub fn load(&self, name: &str) -> Result<Option<Vec<u8>>, StateError> {
        check_name(name)?;
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Ok(inner.blobs.get(name).map(|d| d.to_vec()))
    }

    pub fn store(&self, name: &str, data: &[u8]) -> Result<(), StateError> {
        self.change(name, Some(data))
    }

    pub fn delete(&self, name: &str) -> Result<(), StateError> {
        self.change(name, None)
    }

    /// Sets blob `name` to `data` (`None` deletes it) and persists the next generation. If
    /// that fails, the blob is put back as it was: memory keeps matching the disk. Deleting
    /// a blob that does not exist writes nothing.
    fn change(&self, name: &str, data: Option<&[u8]>) -> Result<(), StateError> {
        check_name(name)?;
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let previous = match data {
            Some(data) => inner
                .blobs
                .insert(name.to_owned(), Zeroizing::new(data.to_vec())),
            None => inner.blobs.remove(name),
        };
        if data.is_none() && previous.is_none() {
            return Ok(());
        }
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
}

impl StateStore for EncryptedStore {
    fn load(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(EncryptedStore::load(self, name)?)
    }

    fn store(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        Ok(EncryptedStore::store(self, name, data)?)
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        Ok(EncryptedStore::delete(self, name)?)
    }
}

impl Drop for EncryptedStore {
    fn drop(&mut self) {
        // Makes the last generation record's rename durable.
        if let Err(e) = durable_fs::sync_dir(&self.dir) {
            warn!("cannot sync state directory {}: {e}", self.dir.display());
        }
    }
}
