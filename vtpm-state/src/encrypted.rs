//! The encrypted, authenticated, rollback-checked state directory of one vTPM instance.
//!
//! Files in the directory:
//! - `instance.key`: the key record (the instance key wrapped by the host key, see
//!   [`crate::keys`]). Written once when the instance is created.
//! - `state.vtpm` and `state.b.vtpm`, the two state slots: each holds every engine blob,
//!   encrypted under the instance key ([`crate::format`]) with its generation. A change
//!   rewrites, in place, the slot that does not hold the newest generation, with one
//!   `fdatasync`: the newest slot is never written, so a crash tears at most the write that
//!   was not yet acknowledged, and the older slot stays readable. (Slot A keeps the name of
//!   the single state file of earlier builds, which open as it.)
//! - `state.gen`: the generation record, the newest generation written, authenticated under
//!   the instance key, in two alternating copies. State older than it was put back by
//!   someone: refused. It is written after the slot without waiting for the disk (write-back
//!   is started at once): after a power cut it may lag the slots, which opening accepts and
//!   repairs; it is made durable when the store is dropped.
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
//! with `O_CREAT | O_EXCL | O_NOFOLLOW` and renamed over it, or rewritten in place through a
//! descriptor opened with `O_NOFOLLOW` that must name a regular file with one link; read and
//! locked with `O_NOFOLLOW` (a symlink at `lock`, `instance.key`, a state slot or `state.gen`
//! is refused, naming it). The temporaries a crash left behind are removed when the directory is opened
//! under its lock.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use durable_fs::{InPlaceFile, LockFile};
use log::{info, warn};
use zeroize::Zeroizing;

use coprocessor::{StateStore, StoreError};

use crate::format::{self, Blobs, StateContents, StateHeader};
use crate::keys::{HostKey, InstanceId, SecretKey};
use crate::{check_name, StateError};

pub const KEY_RECORD: &str = "instance.key";
/// State slot A (the name of the single state file of earlier builds).
pub const STATE_FILE: &str = "state.vtpm";
/// State slot B.
pub const STATE_FILE_B: &str = "state.b.vtpm";
/// The two state slots; a change rewrites the one that does not hold the newest generation.
pub const STATE_SLOTS: [&str; 2] = [STATE_FILE, STATE_FILE_B];
pub const ANCHOR_FILE: &str = "state.gen";
/// Every file of an instance, in the order a destruction removes them: the key record first
/// (without it no copy of the state can be read).
pub const INSTANCE_FILES: [&str; 4] = [KEY_RECORD, STATE_FILE, STATE_FILE_B, ANCHOR_FILE];
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
    files: Files,
}

/// The open state slots and generation record of a store.
struct Files {
    slots: [InPlaceFile; 2],
    /// The slot holding the newest generation; the next change rewrites the other.
    live: usize,
    anchor: InPlaceFile,
}

/// The newest state slot that authenticated.
struct Slot {
    index: usize,
    header: StateHeader,
    contents: StateContents,
}

/// An instance's files, read and authenticated, before any rollback policy or write.
struct Authenticated {
    instance: InstanceId,
    key: SecretKey,
    newest: Slot,
    /// A slot that did not authenticate (a write a crash tore, or tampering): harmless when
    /// the newest slot is confirmed by the generation record, the reason of the refusal when
    /// it is not.
    refused: Option<StateError>,
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
    durable_fs::create_private_dir(dir).map_err(|source| StateError::Dir {
        path: dir.to_owned(),
        source,
    })?;
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
        &[INSTANCE_FILES.as_slice(), &[TOMBSTONE]].concat(),
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
    let anchor_path = dir.join(ANCHOR_FILE);
    let Some(record) = read(&key_path)? else {
        for name in STATE_SLOTS.iter().chain([&ANCHOR_FILE]) {
            let orphan = dir.join(name);
            if orphan.exists() {
                return Err(StateError::KeyRecordMissing {
                    path: key_path,
                    state: orphan,
                });
            }
        }
        return Ok(None);
    };
    let (instance, key) = host_key.unwrap(&key_path, &record)?;
    let mut newest: Option<Slot> = None;
    let mut refused = None;
    for (index, name) in STATE_SLOTS.iter().enumerate() {
        let path = dir.join(name);
        // A missing or empty slot was never written (a new instance, or a directory of an
        // earlier build with one state file).
        let Some(bytes) = read(&path)?.filter(|b| !b.is_empty()) else {
            continue;
        };
        match read_slot(&path, &instance, &key, &bytes) {
            Ok((header, contents)) => {
                if newest
                    .as_ref()
                    .is_none_or(|n| header.generation > n.header.generation)
                {
                    newest = Some(Slot {
                        index,
                        header,
                        contents,
                    });
                }
            }
            // Another instance's file is never a torn write of ours.
            Err(e @ StateError::WrongInstance { .. }) => return Err(e),
            Err(e) => {
                refused.get_or_insert(e);
            }
        }
    }
    let Some(newest) = newest else {
        return Err(refused.unwrap_or(StateError::StateMissing {
            path: dir.join(STATE_FILE),
            key_record: key_path,
        }));
    };
    let recorded = read(&anchor_path).and_then(|anchor| match anchor {
        None => Ok(None),
        Some(bytes) => read_anchor(&anchor_path, &instance, &key, &bytes).map(Some),
    });
    Ok(Some(Authenticated {
        instance,
        key,
        newest,
        refused,
        recorded,
    }))
}

/// Authenticates one state slot of `instance`.
fn read_slot(
    path: &Path,
    instance: &InstanceId,
    key: &SecretKey,
    bytes: &[u8],
) -> Result<(StateHeader, StateContents), StateError> {
    let invalid = |source| StateError::Invalid {
        path: path.to_owned(),
        source,
    };
    // Whose file it is comes first: a swapped file is named as such, whatever else differs.
    let header = format::parse_header(bytes).map_err(invalid)?;
    if header.instance != *instance {
        return Err(StateError::WrongInstance {
            path: path.to_owned(),
            found: header.instance,
            expected: *instance,
        });
    }
    format::decode(key, bytes).map_err(invalid)
}

/// The generation record of `instance` ([`format::decode_anchor_file`]).
fn read_anchor(
    path: &Path,
    instance: &InstanceId,
    key: &SecretKey,
    bytes: &[u8],
) -> Result<u64, StateError> {
    let invalid = |source| StateError::AnchorInvalid {
        path: path.to_owned(),
        source,
    };
    let (anchor_instance, generation) = format::decode_anchor_file(key, bytes).map_err(invalid)?;
    if anchor_instance != *instance {
        return Err(invalid(format::FormatError::OtherInstance(anchor_instance)));
    }
    Ok(generation)
}

/// [`read_instance`] and the rollback policy: the newest slot must not be older than the
/// generation record, and the record may be missing only for the first generation.
fn check(dir: &Path, host_key: &HostKey) -> Result<Option<Authenticated>, StateError> {
    let Some(mut found) = read_instance(dir, host_key)? else {
        return Ok(None);
    };
    let generation = found.newest.header.generation;
    let recorded = std::mem::replace(&mut found.recorded, Ok(None))?;
    let (path, anchor) = (
        dir.join(STATE_SLOTS[found.newest.index]),
        dir.join(ANCHOR_FILE),
    );
    match recorded {
        // The slot that should hold the newest generation was refused (tampered with, or
        // truncated), or both were put back: name what is wrong with it.
        Some(newest) if generation < newest => {
            return Err(found.refused.take().unwrap_or(StateError::RolledBack {
                path,
                anchor,
                generation,
                newest,
            }))
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
    if let Some(refused) = &found.refused {
        // Only the slot that is not the newest is ever written, so this is a write that a
        // power cut tore before it was acknowledged (or a stale copy someone changed).
        warn!(
            "{refused}; {} at generation {generation} is the newest state and the generation \
             record confirms it: the other slot will be rewritten by the next change",
            path.display()
        );
    }
    found.recorded = Ok(recorded);
    Ok(Some(found))
}

/// Opens the two state slots and the generation record of an instance, creating those that
/// are missing (an instance of an earlier build has one state file); a creation is made
/// durable before anything is written into it.
fn open_files(dir: &Path, live: usize) -> Result<Files, StateError> {
    let mut created = false;
    let mut open = |name: &str| {
        let path = dir.join(name);
        let file = match InPlaceFile::open(&path) {
            Ok(Some(file)) => Ok(file),
            Ok(None) => {
                created = true;
                InPlaceFile::create(&path, FILE_MODE)
            }
            Err(e) => Err(e),
        };
        file.map_err(|source| StateError::Write { path, source })
    };
    let files = Files {
        slots: [open(STATE_SLOTS[0])?, open(STATE_SLOTS[1])?],
        live,
        anchor: open(ANCHOR_FILE)?,
    };
    if created {
        durable_fs::sync_dir(dir).map_err(|source| StateError::Write {
            path: dir.to_owned(),
            source,
        })?;
    }
    Ok(files)
}

/// Rewrites the whole generation record at `generation`, durably (creation, repair, an
/// operator's decision).
fn record_generation(
    files: &mut Files,
    key: &SecretKey,
    instance: &InstanceId,
    generation: u64,
) -> Result<(), StateError> {
    let path = files.anchor.path().to_owned();
    let bytes = format::encode_anchor_file(key, instance, generation).map_err(|source| {
        StateError::AnchorInvalid {
            path: path.clone(),
            source,
        }
    })?;
    files
        .anchor
        .rewrite(&bytes)
        .map_err(|source| StateError::Write { path, source })
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
        let newest = found.newest;
        if newest.contents.engine != engine {
            return Err(StateError::Invalid {
                path: dir.join(STATE_SLOTS[newest.index]),
                source: format::FormatError::OtherEngine {
                    found: newest.contents.engine,
                    expected: engine.to_owned(),
                },
            });
        }
        let generation = newest.header.generation;
        let mut files = open_files(dir, newest.index)?;
        if found.recorded.ok().flatten() != Some(generation) {
            // The record lags after a crash between the slot and its record; bring it level.
            record_generation(&mut files, &found.key, &found.instance, generation)?;
        }
        let store = EncryptedStore::with(
            dir,
            found.instance,
            found.key,
            engine,
            generation,
            newest.contents.blobs,
            files,
            lock,
        );
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
        let blobs = wipeable(blobs)?;
        let lock = prepare_dir(dir)?;
        refuse_existing(dir)?;
        remove_stale_temporaries(dir);
        Self::create_locked(dir, host_key, engine, None, blobs, lock)
    }

    /// Locks `dir` (created if missing) for an instance to be imported into it later
    /// ([`Reserved::create`]): it must hold no instance; a tombstone of one that moved away
    /// is allowed (the instance may come back).
    pub fn reserve(dir: &Path) -> Result<Reserved, StateError> {
        let lock = prepare_dir(dir)?;
        remove_stale_temporaries(dir);
        refuse_existing(dir)?;
        Ok(Reserved {
            dir: dir.to_owned(),
            lock,
        })
    }

    /// Creates the instance's files: both slots and the generation record (empty, their
    /// names made durable), generation 1 in slot A and its record, and the key record last.
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
        // `live` is slot B, so that generation 1 goes to slot A.
        let files = open_files(dir, 1)?;
        let store = EncryptedStore::with(dir, instance, key, engine, 0, blobs, files, lock);
        {
            let mut inner = store.inner.lock().unwrap_or_else(|p| p.into_inner());
            let inner = &mut *inner;
            store.persist(&mut inner.files, &inner.blobs, 1)?;
            inner.generation = 1;
            record_generation(&mut inner.files, &store.key, &instance, 1)?;
        }
        // The key record last: it commits the creation (see `read_instance`). Until it is
        // durable, the state file is an orphan that the next start refuses, never a TPM.
        write(dir, KEY_RECORD, &record, true)?;
        Ok(store)
    }

    #[allow(clippy::too_many_arguments)]
    fn with(
        dir: &Path,
        instance: InstanceId,
        key: SecretKey,
        engine: &str,
        generation: u64,
        blobs: Blobs,
        files: Files,
        lock: LockFile,
    ) -> Self {
        EncryptedStore {
            dir: dir.to_owned(),
            instance,
            key,
            engine: engine.to_owned(),
            inner: Mutex::new(Inner {
                generation,
                blobs,
                files,
            }),
            _lock: lock,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn instance(&self) -> InstanceId {
        self.instance
    }

    /// Generation of the newest state on disk.
    pub fn generation(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .generation
    }

    /// Writes `blobs` as `generation` into the slot that does not hold the newest state, with
    /// one `fdatasync`, then this generation's copy of the generation record without waiting
    /// for the disk. A crash before the slot is durable leaves the previous generation in the
    /// other slot; one after it leaves the record behind, which [`EncryptedStore::open`]
    /// accepts and repairs.
    fn persist(&self, files: &mut Files, blobs: &Blobs, generation: u64) -> Result<(), StateError> {
        let target = 1 - files.live;
        let slot = &mut files.slots[target];
        let bytes = format::encode(&self.key, &self.instance, generation, &self.engine, blobs)
            .map_err(|source| StateError::Invalid {
                path: slot.path().to_owned(),
                source,
            })?;
        slot.rewrite(&bytes).map_err(|source| StateError::Write {
            path: slot.path().to_owned(),
            source,
        })?;
        files.live = target;
        DURABLE_WRITES.fetch_add(1, Ordering::Relaxed);
        // The state is durable: a record that cannot be written only lags, as after a
        // power cut, and is repaired on the next open.
        let written = format::encode_anchor(&self.key, &self.instance, generation)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|copy| {
                files
                    .anchor
                    .write_unsynced(format::anchor_copy_offset(generation), &copy)
            });
        if let Err(e) = written {
            warn!(
                "cannot write generation record {} at generation {generation}: {e}",
                files.anchor.path().display()
            );
        }
        Ok(())
    }

    /// Reads and verifies `dir` with `host_key` without changing anything (`inspect`).
    pub fn verify(dir: &Path, host_key: &HostKey) -> Result<Option<InstanceInfo>, StateError> {
        let _lock = lock_existing(dir)?;
        let Some(found) = check(dir, host_key)? else {
            return Ok(None);
        };
        let newest = found.newest;
        Ok(Some(InstanceInfo {
            instance: found.instance,
            format_version: newest.header.version,
            generation: newest.header.generation,
            recorded_generation: found.recorded.ok().flatten(),
            engine: Some(newest.contents.engine.clone()),
            blobs: newest
                .contents
                .blobs
                .iter()
                .map(|(n, d)| (n.clone(), d.len()))
                .collect(),
        }))
    }

    /// Accepts the newest state slot as it is after an operator decided so (its generation
    /// record is missing, or it is older state restored on purpose): it must still
    /// authenticate under the instance's key; the generation record is rewritten to match.
    /// Returns the accepted generation.
    pub fn accept_current(dir: &Path, host_key: &HostKey) -> Result<u64, StateError> {
        let _lock = lock_existing(dir)?;
        // Everything but the rollback policy: the state must authenticate, whatever the
        // generation record says (or whether it is there at all).
        let found = read_instance(dir, host_key)?.ok_or_else(|| StateError::KeyRecordMissing {
            path: dir.join(KEY_RECORD),
            state: dir.join(STATE_FILE),
        })?;
        let generation = found.newest.header.generation;
        let mut files = open_files(dir, found.newest.index)?;
        record_generation(&mut files, &found.key, &found.instance, generation)?;
        warn!(
            "operator accepted state file {} at generation {generation} as the newest",
            dir.join(STATE_SLOTS[found.newest.index]).display()
        );
        Ok(generation)
    }

    /// Reads the clear-text headers (no key needed): instance, format and generation of the
    /// newest slot.
    pub fn inspect(dir: &Path) -> Result<Option<InstanceInfo>, StateError> {
        Ok(newest_header(dir)?.map(|(_, header)| InstanceInfo {
            instance: header.instance,
            format_version: header.version,
            generation: header.generation,
            recorded_generation: None,
            engine: None,
            blobs: Vec::new(),
        }))
    }

    /// The state slot whose clear-text header names the newest generation (no key needed,
    /// nothing authenticated): the file that holds the instance's state now.
    pub fn newest_state_file(dir: &Path) -> Result<Option<PathBuf>, StateError> {
        Ok(newest_header(dir)?.map(|(path, _)| path))
    }

    /// Resets the instance: moves its key record, state file and generation record into a
    /// new `backup-<unix time>` directory inside `dir` (nothing is deleted), so the next
    /// start creates a fresh TPM. Needs no key: it is also the way out when the key is lost.
    /// Returns the backup directory, or `None` if there was nothing to reset.
    pub fn reset(dir: &Path) -> Result<Option<PathBuf>, StateError> {
        let _lock = lock_existing(dir)?;
        let present: Vec<&str> = INSTANCE_FILES
            .into_iter()
            .chain([LEGACY_PLAIN_STATE, TOMBSTONE])
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

/// The slot with the newest clear-text header; a header that does not parse is an error
/// only when no slot has one that does.
fn newest_header(dir: &Path) -> Result<Option<(PathBuf, StateHeader)>, StateError> {
    let mut newest: Option<(PathBuf, StateHeader)> = None;
    let mut refused = None;
    for name in STATE_SLOTS {
        let path = dir.join(name);
        let Some(bytes) = read(&path)?.filter(|b| !b.is_empty()) else {
            continue;
        };
        match format::parse_header(&bytes) {
            Ok(header) => {
                if newest
                    .as_ref()
                    .is_none_or(|(_, n)| header.generation > n.generation)
                {
                    newest = Some((path, header));
                }
            }
            Err(source) => {
                refused.get_or_insert(StateError::Invalid { path, source });
            }
        }
    }
    match (newest, refused) {
        (None, Some(e)) => Err(e),
        (newest, _) => Ok(newest),
    }
}

/// The blobs of an import, each to be wiped when dropped; their names checked.
fn wipeable(blobs: BTreeMap<String, Vec<u8>>) -> Result<Blobs, StateError> {
    let blobs: Blobs = blobs
        .into_iter()
        .map(|(name, data)| (name, Zeroizing::new(data)))
        .collect();
    for name in blobs.keys() {
        check_name(name)?;
    }
    Ok(blobs)
}

/// Refuses a directory that holds (part of) an instance.
fn refuse_existing(dir: &Path) -> Result<(), StateError> {
    let mut names = INSTANCE_FILES.into_iter().chain([LEGACY_PLAIN_STATE]);
    if names.any(|f| dir.join(f).exists()) {
        return Err(StateError::AlreadyExists {
            path: dir.to_owned(),
        });
    }
    Ok(())
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
        let blobs = wipeable(blobs)?;
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

/// Removes the key record first (without it every copy of the state is unreadable), then
/// the state slots and the generation record; each removal is durable.
fn remove_instance_files(dir: &Path) -> Result<(), StateError> {
    for f in INSTANCE_FILES {
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
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *guard;
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
        match self.persist(&mut inner.files, &inner.blobs, generation) {
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
        // Makes the last generation record durable (the slots already are).
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = inner.files.anchor.sync_data() {
            warn!(
                "cannot sync generation record {}: {e}",
                inner.files.anchor.path().display()
            );
        }
    }
}
