//! Where a vTPM instance's state lives between runs, the keys that protect it, and the
//! operator's commands on it (`vtpm-state`).
//!
//! An engine keeps named blobs (`permall` for the permanent NV state, `volatilestate` for
//! what a clean shutdown saves) behind the `coprocessor::StateStore` seam.
//! [`EncryptedStore`] is the store the daemon uses: one state directory per instance holding
//! the instance's key record, its encrypted and authenticated state file, and a generation
//! record against replay of older state files (ADR 0007). Every file is replaced atomically
//! through `durable_fs` (a fresh temporary that is never a symlink, fsync, rename, fsync of
//! the directory), so a crash at any instant leaves the old or the new file, never a torn
//! one, and whoever can write into the directory cannot redirect a write elsewhere.
//!
//! Modules: [`encrypted`] (the state directory), [`format`] (the state file and generation
//! record, pure), [`host_key_args`] (the options shared with the daemon), [`keys`] (host
//! keys, instance keys, key records), [`swtpm_import`] (reading an swtpm state directory:
//! its pure file-format parser, its key options, running swtpm on a private copy), [`cli`]
//! (the `vtpm-state` commands).

pub mod cli;
pub mod encrypted;
pub mod format;
pub mod host_key_args;
pub mod keys;
pub mod swtpm_import;

use std::io;
use std::path::PathBuf;

pub use encrypted::{EncryptedStore, InstanceInfo, Opened, Reserved};
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
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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
    #[error("the vTPM instance of this state directory is gone ({path}: {why}); it is never served here again (`vtpm-state reset` starts a new TPM)")]
    MigratedAway { path: PathBuf, why: String },
    #[error(transparent)]
    Key(#[from] KeyError),
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
mod tests {
    //! The encrypted state directory: round trips, and every way a directory is refused.
    use std::collections::BTreeMap;
    use std::fs;
    use std::path::{Path, PathBuf};

    use super::encrypted::{
        ANCHOR_FILE, INSTANCE_FILES, KEY_RECORD, LOCK_FILE, STATE_FILE, STATE_FILE_B,
    };
    use super::*;
    use crate::keys::{generate_host_key_file, HostKey, KeyError};

    struct Host {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        key: HostKey,
    }

    fn host() -> Host {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_owned();
        let key = generate_host_key_file(&root.join("host.key")).unwrap();
        Host {
            _tmp: tmp,
            root,
            key,
        }
    }

    fn open(dir: &Path, key: &HostKey) -> Result<EncryptedStore, StateError> {
        EncryptedStore::open(dir, key, "libtpms").map(|(s, _)| s)
    }

    fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        INSTANCE_FILES
            .iter()
            .filter_map(|f| fs::read(dir.join(f)).ok().map(|d| (f.to_string(), d)))
            .collect()
    }

    #[test]
    fn blobs_round_trip_and_generations_advance() {
        let h = host();
        let dir = h.root.join("vm1");
        let (s, how) = EncryptedStore::open(&dir, &h.key, "libtpms").unwrap();
        assert_eq!(how, Opened::Created);
        assert_eq!(s.generation(), 1);
        assert_eq!(s.load("permall").unwrap(), None);
        s.store("permall", b"one").unwrap();
        s.store("permall", b"two").unwrap();
        s.store("volatilestate", b"vol").unwrap();
        s.delete("volatilestate").unwrap();
        s.delete("volatilestate").unwrap();
        assert_eq!(s.generation(), 5);
        let id = s.instance();
        drop(s);
        let (s, how) = EncryptedStore::open(&dir, &h.key, "libtpms").unwrap();
        assert_eq!(how, Opened::Existing { generation: 5 });
        assert_eq!(s.instance(), id);
        assert_eq!(s.load("permall").unwrap().as_deref(), Some(&b"two"[..]));
        assert_eq!(s.load("volatilestate").unwrap(), None);
        // The secret is not in the file in clear.
        let raw = fs::read(dir.join(STATE_FILE)).unwrap();
        assert!(!raw.windows(3).any(|w| w == b"two"));
    }

    #[test]
    fn names_are_checked() {
        let h = host();
        let s = open(&h.root.join("vm"), &h.key).unwrap();
        assert!(matches!(s.store("../x", b""), Err(StateError::BadName(_))));
        assert!(matches!(s.load(""), Err(StateError::BadName(_))));
    }

    #[test]
    fn files_and_directory_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let h = host();
        let dir = h.root.join("vm");
        let s = open(&dir, &h.key).unwrap();
        s.store("permall", b"secret").unwrap();
        for f in INSTANCE_FILES {
            let mode = fs::metadata(dir.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_directory_is_used_by_one_process_at_a_time() {
        let h = host();
        let dir = h.root.join("vm");
        let s = open(&dir, &h.key).unwrap();
        assert!(matches!(open(&dir, &h.key), Err(StateError::Locked { .. })));
        assert!(matches!(
            EncryptedStore::reset(&dir),
            Err(StateError::Locked { .. })
        ));
        drop(s);
        open(&dir, &h.key).unwrap();
    }

    /// Every refusal leaves every file of the instance byte-identical.
    fn assert_refused_untouched(dir: &Path, key: &HostKey, check: impl Fn(&StateError) -> bool) {
        let before = snapshot(dir);
        let err = open(dir, key).expect_err("must be refused");
        assert!(check(&err), "unexpected error: {err}");
        assert_eq!(snapshot(dir), before, "refusal changed files: {err}");
        // The message names the file it refused.
        let msg = err.to_string();
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
    }

    fn fails_authentication(e: &StateError) -> bool {
        matches!(
            e,
            StateError::Invalid {
                source: FormatError::Authentication,
                ..
            }
        )
    }

    /// A populated instance without `files`: opening it is refused, and none of them is
    /// made again.
    fn assert_refused_without(files: &[&str], check: impl Fn(&StateError) -> bool) {
        let h = host();
        let dir = populated(&h, "vm");
        for f in files {
            fs::remove_file(dir.join(f)).unwrap();
        }
        assert_refused_untouched(&dir, &h.key, check);
        for f in files {
            assert!(!dir.join(f).exists(), "{f}");
        }
    }

    /// A new instance whose `permall` was stored as `first`, then as `second`, with `files`
    /// put back as they were after the first store; returns the directory and the content of
    /// the first of them.
    fn rewound(h: &Host, files: &[&str], first: &[u8], second: &[u8]) -> (PathBuf, Vec<u8>) {
        let dir = h.root.join("vm");
        let s = open(&dir, &h.key).unwrap();
        s.store("permall", first).unwrap();
        let old: Vec<Vec<u8>> = files
            .iter()
            .map(|f| fs::read(dir.join(f)).unwrap())
            .collect();
        s.store("permall", second).unwrap();
        drop(s);
        for (f, data) in files.iter().zip(&old) {
            fs::write(dir.join(f), data).unwrap();
        }
        (dir, old[0].clone())
    }

    /// The state slot that holds the newest generation: the one to tamper with (changing the
    /// other, stale one changes nothing the instance depends on).
    fn newest_slot(dir: &Path) -> PathBuf {
        EncryptedStore::newest_state_file(dir).unwrap().unwrap()
    }

    fn populated(h: &Host, name: &str) -> PathBuf {
        let dir = h.root.join(name);
        let s = open(&dir, &h.key).unwrap();
        s.store("permall", name.as_bytes()).unwrap();
        dir
    }

    #[test]
    fn a_change_rewrites_the_slot_that_does_not_hold_the_newest_state() {
        let h = host();
        let dir = h.root.join("vm");
        let s = open(&dir, &h.key).unwrap();
        assert_eq!(newest_slot(&dir), dir.join(STATE_FILE));
        let stale_before = fs::read(dir.join(STATE_FILE)).unwrap();
        s.store("permall", b"two").unwrap();
        assert_eq!(newest_slot(&dir), dir.join(STATE_FILE_B));
        // The slot that was newest is not touched by the write.
        assert_eq!(fs::read(dir.join(STATE_FILE)).unwrap(), stale_before);
        s.store("permall", b"three").unwrap();
        assert_eq!(newest_slot(&dir), dir.join(STATE_FILE));
        drop(s);
        let info = EncryptedStore::verify(&dir, &h.key).unwrap().unwrap();
        assert_eq!((info.generation, info.recorded_generation), (3, Some(3)));
    }

    #[test]
    fn a_torn_write_of_the_stale_slot_falls_back_to_the_newest() {
        let h = host();
        let dir = populated(&h, "vm");
        let newest = newest_slot(&dir);
        let stale = [STATE_FILE, STATE_FILE_B]
            .map(|f| dir.join(f))
            .into_iter()
            .find(|p| *p != newest)
            .unwrap();
        // What a power cut in the middle of the next change leaves: part of a new version
        // over the stale slot.
        let mut torn = fs::read(&newest).unwrap();
        torn.truncate(torn.len() / 2);
        fs::write(&stale, &torn).unwrap();
        let s = open(&dir, &h.key).unwrap();
        assert_eq!(s.generation(), 2);
        assert_eq!(s.load("permall").unwrap().as_deref(), Some(&b"vm"[..]));
        // The next change goes into the torn slot; the newest stays as it was until then.
        s.store("permall", b"after").unwrap();
        assert_eq!(newest_slot(&dir), stale);
        drop(s);
        let s = open(&dir, &h.key).unwrap();
        assert_eq!(s.load("permall").unwrap().as_deref(), Some(&b"after"[..]));
    }

    #[test]
    fn a_torn_copy_of_the_generation_record_is_passed_over() {
        let h = host();
        let dir = populated(&h, "vm");
        let s = open(&dir, &h.key).unwrap();
        s.store("permall", b"three").unwrap();
        drop(s);
        // Generation 3's copy is the second; tear it: the first (generation 2) counts, and
        // the state at 3 is newer, which is accepted and repaired.
        let anchor = dir.join(ANCHOR_FILE);
        let mut raw = fs::read(&anchor).unwrap();
        assert_eq!(raw.len(), 2 * format::ANCHOR_LEN);
        raw[format::ANCHOR_LEN + 3] ^= 0xff;
        fs::write(&anchor, &raw).unwrap();
        let s = open(&dir, &h.key).unwrap();
        assert_eq!(s.generation(), 3);
        drop(s);
        let info = EncryptedStore::verify(&dir, &h.key).unwrap().unwrap();
        assert_eq!(info.recorded_generation, Some(3));
        // Both copies torn: refused, naming the record.
        let mut raw = fs::read(&anchor).unwrap();
        raw[3] ^= 0xff;
        raw[format::ANCHOR_LEN + 3] ^= 0xff;
        fs::write(&anchor, &raw).unwrap();
        assert_refused_untouched(&dir, &h.key, |e| {
            matches!(e, StateError::AnchorInvalid { .. })
        });
    }

    #[test]
    fn a_directory_of_an_earlier_build_opens_and_gains_its_second_slot() {
        let h = host();
        let dir = populated(&h, "vm");
        let s = open(&dir, &h.key).unwrap();
        s.store("permall", b"three").unwrap();
        drop(s);
        // Earlier builds: one state file (`state.vtpm`, here at generation 3) and a record
        // of one copy.
        assert_eq!(newest_slot(&dir), dir.join(STATE_FILE));
        fs::remove_file(dir.join(STATE_FILE_B)).unwrap();
        let anchor = dir.join(ANCHOR_FILE);
        let raw = fs::read(&anchor).unwrap();
        fs::write(&anchor, &raw[format::ANCHOR_LEN..]).unwrap();
        let s = open(&dir, &h.key).unwrap();
        assert_eq!(s.generation(), 3);
        assert!(dir.join(STATE_FILE_B).exists());
        s.store("permall", b"four").unwrap();
        drop(s);
        let s = open(&dir, &h.key).unwrap();
        assert_eq!(s.load("permall").unwrap().as_deref(), Some(&b"four"[..]));
        assert_eq!(newest_slot(&dir), dir.join(STATE_FILE_B));
    }

    #[test]
    fn a_hard_link_at_a_slot_is_refused_never_written_through() {
        let h = host();
        let dir = populated(&h, "vm");
        let outside = h.root.join("outside");
        let stale = [STATE_FILE, STATE_FILE_B]
            .map(|f| dir.join(f))
            .into_iter()
            .find(|p| *p != newest_slot(&dir))
            .unwrap();
        fs::write(&outside, b"outside").unwrap();
        fs::remove_file(&stale).unwrap();
        fs::hard_link(&outside, &stale).unwrap();
        let err = open(&dir, &h.key).unwrap_err();
        assert!(err.to_string().contains("single link"), "{err}");
        assert_eq!(fs::read(&outside).unwrap(), b"outside");
    }

    #[test]
    fn flipped_byte_is_refused() {
        let h = host();
        let dir = populated(&h, "vm");
        let path = newest_slot(&dir);
        let mut raw = fs::read(&path).unwrap();
        let at = raw.len() - 20;
        raw[at] ^= 0x01;
        fs::write(&path, &raw).unwrap();
        assert_refused_untouched(&dir, &h.key, fails_authentication);
        // A flipped generation in the clear header does not authenticate either.
        raw[at] ^= 0x01;
        raw[format::HEADER_LEN - 5] ^= 0x01;
        fs::write(&path, &raw).unwrap();
        assert_refused_untouched(&dir, &h.key, fails_authentication);
        // An altered format version is named as such.
        raw[format::HEADER_LEN - 5] ^= 0x01;
        raw[9] = 0;
        fs::write(&path, &raw).unwrap();
        assert_refused_untouched(&dir, &h.key, |e| {
            matches!(
                e,
                StateError::Invalid {
                    source: FormatError::UnsupportedVersion { found: 0 },
                    ..
                }
            )
        });
    }

    #[test]
    fn truncated_file_is_refused() {
        let h = host();
        let dir = populated(&h, "vm");
        let path = newest_slot(&dir);
        let raw = fs::read(&path).unwrap();
        for len in [raw.len() - 1, format::HEADER_LEN, 20, 0] {
            fs::write(&path, &raw[..len]).unwrap();
            assert_refused_untouched(&dir, &h.key, |e| {
                // An emptied slot looks like one never written, so what is left is the
                // older slot, which the generation record refuses.
                matches!(
                    e,
                    StateError::Invalid {
                        source: FormatError::Truncated(_) | FormatError::BadMagic,
                        ..
                    }
                ) || (len == 0 && matches!(e, StateError::RolledBack { .. }))
            });
        }
    }

    #[test]
    fn state_files_swapped_between_instances_are_refused() {
        let h = host();
        let a = populated(&h, "vm-a");
        let b = populated(&h, "vm-b");
        let (a_newest, b_newest) = (newest_slot(&a), newest_slot(&b));
        let a_state = fs::read(&a_newest).unwrap();
        let b_state = fs::read(&b_newest).unwrap();
        fs::write(&a_newest, &b_state).unwrap();
        fs::write(&b_newest, &a_state).unwrap();
        for dir in [&a, &b] {
            assert_refused_untouched(dir, &h.key, |e| {
                matches!(e, StateError::WrongInstance { .. })
            });
        }
        // Relabelling the other instance's file with this instance's id does not help: it is
        // encrypted under the other instance's key.
        let mut forged = b_state.clone();
        forged[12..28].copy_from_slice(&a_state[12..28]);
        fs::write(&a_newest, &forged).unwrap();
        assert_refused_untouched(&a, &h.key, fails_authentication);
    }

    #[test]
    fn replayed_older_state_file_is_refused() {
        let h = host();
        let (dir, _) = rewound(&h, &[STATE_FILE, STATE_FILE_B], b"counter=1", b"counter=2");
        assert_refused_untouched(&dir, &h.key, |e| {
            matches!(
                e,
                StateError::RolledBack {
                    generation: 2,
                    newest: 3,
                    ..
                }
            )
        });
        // Deleting the generation record as well is noticed too.
        fs::remove_file(dir.join(ANCHOR_FILE)).unwrap();
        assert_refused_untouched(&dir, &h.key, |e| {
            matches!(e, StateError::AnchorMissing { .. })
        });
        // The operator may accept it explicitly; then it opens.
        assert_eq!(EncryptedStore::accept_current(&dir, &h.key).unwrap(), 2);
        let s = open(&dir, &h.key).unwrap();
        assert_eq!(
            s.load("permall").unwrap().as_deref(),
            Some(&b"counter=1"[..])
        );
    }

    #[test]
    fn generation_record_one_behind_after_a_crash_is_accepted_and_repaired() {
        let h = host();
        // As if the crash came after the state file's rename and before the record's.
        let (dir, anchor) = rewound(&h, &[ANCHOR_FILE], b"a", b"b");
        let (s, how) = EncryptedStore::open(&dir, &h.key, "libtpms").unwrap();
        assert_eq!(how, Opened::Existing { generation: 3 });
        assert_eq!(s.load("permall").unwrap().as_deref(), Some(&b"b"[..]));
        drop(s);
        assert_ne!(fs::read(dir.join(ANCHOR_FILE)).unwrap(), anchor);
    }

    #[test]
    fn wrong_host_key_is_refused() {
        let h = host();
        let dir = populated(&h, "vm");
        let other = generate_host_key_file(&h.root.join("other.key")).unwrap();
        assert_refused_untouched(&dir, &other, |e| {
            matches!(e, StateError::Key(KeyError::WrongHostKey { .. }))
        });
        // A missing key file is named too.
        let missing = HostKey::File(h.root.join("nope.key"));
        let before = snapshot(&dir);
        let err = open(&dir, &missing).unwrap_err();
        assert!(
            matches!(err, StateError::Key(KeyError::HostKeyFile { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("nope.key"));
        assert_eq!(snapshot(&dir), before);
    }

    #[test]
    fn missing_key_record_is_refused_not_replaced() {
        assert_refused_without(&[KEY_RECORD], |e| {
            matches!(e, StateError::KeyRecordMissing { .. })
        });
    }

    #[test]
    fn host_key_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let h = host();
        let HostKey::File(path) = &h.key else {
            unreachable!()
        };
        fs::set_permissions(path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = open(&h.root.join("vm"), &h.key).unwrap_err();
        assert!(
            matches!(
                err,
                StateError::Key(KeyError::HostKeyFilePermissions { mode: 0o640, .. })
            ),
            "{err}"
        );
    }

    #[test]
    fn unencrypted_state_of_earlier_builds_is_not_ignored() {
        let h = host();
        let dir = h.root.join("vm");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("tpm2-permall.bin"), b"plain").unwrap();
        let err = open(&dir, &h.key).unwrap_err();
        assert!(matches!(err, StateError::PlainStateFound { .. }), "{err}");
        assert!(!dir.join(KEY_RECORD).exists());
    }

    #[test]
    fn reset_keeps_a_backup_and_starts_fresh() {
        let h = host();
        let dir = populated(&h, "vm");
        let before = snapshot(&dir);
        let backup = EncryptedStore::reset(&dir).unwrap().unwrap();
        assert_eq!(snapshot(&backup), before, "backup holds the exact files");
        assert!(snapshot(&dir).is_empty());
        let (s, how) = EncryptedStore::open(&dir, &h.key, "libtpms").unwrap();
        assert_eq!(how, Opened::Created);
        assert_eq!(s.load("permall").unwrap(), None);
        drop(s);
        // Resetting a directory with nothing in it is a no-op.
        let empty = h.root.join("empty");
        fs::create_dir(&empty).unwrap();
        assert_eq!(EncryptedStore::reset(&empty).unwrap(), None);
    }

    #[test]
    fn create_imports_blobs_and_refuses_an_existing_instance() {
        let h = host();
        let dir = h.root.join("vm");
        let blobs: BTreeMap<_, _> = [("permall".to_string(), b"imported".to_vec())].into();
        let s = EncryptedStore::create(&dir, &h.key, "libtpms", blobs.clone()).unwrap();
        assert_eq!(
            s.load("permall").unwrap().as_deref(),
            Some(&b"imported"[..])
        );
        drop(s);
        let before = snapshot(&dir);
        assert!(matches!(
            EncryptedStore::create(&dir, &h.key, "libtpms", blobs),
            Err(StateError::AlreadyExists { .. })
        ));
        assert_eq!(snapshot(&dir), before);
        let info = EncryptedStore::verify(&dir, &h.key).unwrap().unwrap();
        assert_eq!(info.generation, 1);
        assert_eq!(info.blobs, vec![("permall".to_string(), 8)]);
    }

    #[test]
    fn state_of_another_engine_is_refused() {
        let h = host();
        let dir = populated(&h, "vm");
        let err = EncryptedStore::open(&dir, &h.key, "other-engine").unwrap_err();
        assert!(err.to_string().contains("holds libtpms state"), "{err}");
    }

    #[test]
    fn deleted_state_is_refused_never_replaced_by_a_fresh_tpm() {
        // Both the state file and its generation record gone, the key record left: before, this
        // looked like an unfinished creation and started a new TPM with new seeds.
        assert_refused_without(&[STATE_FILE, STATE_FILE_B, ANCHOR_FILE], |e| {
            matches!(e, StateError::StateMissing { .. })
        });
    }

    #[test]
    fn symlinks_in_the_directory_are_refused_or_removed_never_followed() {
        use std::os::unix::fs::symlink;
        let h = host();
        let outside = h.root.join("outside");
        fs::write(&outside, b"outside").unwrap();
        let dir = h.root.join("vm");
        fs::create_dir(&dir).unwrap();

        // At the lock: refused, naming it, before anything is written.
        symlink(&outside, dir.join(LOCK_FILE)).unwrap();
        let err = open(&dir, &h.key).unwrap_err();
        assert!(matches!(err, StateError::Lock { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&dir.join(LOCK_FILE).display().to_string())
                && msg.contains("symbolic link"),
            "{msg}"
        );
        assert!(snapshot(&dir).is_empty());
        fs::remove_file(dir.join(LOCK_FILE)).unwrap();

        // At temporary names, of earlier builds and of this one: removed, never written
        // through. (A name this build will pick cannot be guessed: it is random and created
        // with O_EXCL.)
        let temporaries: Vec<String> = [KEY_RECORD, STATE_FILE, ANCHOR_FILE]
            .iter()
            .flat_map(|f| [format!(".{f}.tmp"), format!(".{f}.AbC123.tmp")])
            .collect();
        for t in &temporaries {
            symlink(&outside, dir.join(t)).unwrap();
        }
        let s = open(&dir, &h.key).unwrap();
        for t in &temporaries {
            assert!(fs::symlink_metadata(dir.join(t)).is_err(), "{t} left");
        }
        // Planted again while the directory is in use: a write never uses them.
        for t in &temporaries {
            symlink(&outside, dir.join(t)).unwrap();
        }
        s.store("permall", b"secret").unwrap();
        drop(s);
        assert_eq!(fs::read(&outside).unwrap(), b"outside");
        let s = open(&dir, &h.key).unwrap();
        assert_eq!(s.load("permall").unwrap().as_deref(), Some(&b"secret"[..]));
        drop(s);

        // At a state file: refused, naming it (its contents are never read through a link).
        let state = dir.join(STATE_FILE);
        fs::rename(&state, h.root.join("moved")).unwrap();
        symlink(h.root.join("moved"), &state).unwrap();
        let err = open(&dir, &h.key).unwrap_err();
        assert!(matches!(err, StateError::Read { .. }), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(fs::read(&outside).unwrap(), b"outside");
    }

    #[test]
    fn creation_commits_with_the_key_record() {
        let h = host();
        let dir = h.root.join("vm");
        drop(open(&dir, &h.key).unwrap());
        // As if the creation had crashed before its key record was durable: the orphan state is
        // refused (nothing is lost, a reset cleans it), not silently adopted or overwritten.
        fs::remove_file(dir.join(KEY_RECORD)).unwrap();
        assert_refused_untouched(&dir, &h.key, |e| {
            matches!(e, StateError::KeyRecordMissing { .. })
        });
    }

    #[test]
    fn a_destroyed_instance_leaves_a_tombstone_and_never_opens_again() {
        use super::encrypted::TOMBSTONE;
        let h = host();
        let dir = populated(&h, "vm");
        let backup = fs::read(dir.join(STATE_FILE)).unwrap();
        let s = open(&dir, &h.key).unwrap();
        let id = s.instance();
        s.destroy("migrated to host-b by migration 00ff").unwrap();
        for f in INSTANCE_FILES {
            assert!(!dir.join(f).exists(), "{f} left behind");
        }
        let err = open(&dir, &h.key).unwrap_err();
        assert!(matches!(err, StateError::MigratedAway { .. }), "{err}");
        assert!(err.to_string().contains("host-b"), "{err}");
        // A copy of the state file put back is refused too (and removed again): the key
        // record that could read it is gone.
        fs::write(dir.join(STATE_FILE), &backup).unwrap();
        assert!(matches!(
            open(&dir, &h.key),
            Err(StateError::MigratedAway { .. })
        ));
        assert!(!dir.join(STATE_FILE).exists());

        // The instance may come back: an import into the tombstoned directory, with its id.
        let reserved = EncryptedStore::reserve(&dir).unwrap();
        assert!(matches!(
            EncryptedStore::reserve(&dir),
            Err(StateError::Locked { .. })
        ));
        let blobs = [("permall".to_owned(), b"back again".to_vec())].into();
        let s = reserved.create(&h.key, "libtpms", id, blobs).unwrap();
        assert_eq!(s.instance(), id);
        drop(s);
        assert!(!dir.join(TOMBSTONE).exists());
        let s = open(&dir, &h.key).unwrap();
        assert_eq!(s.instance(), id);
        assert_eq!(
            s.load("permall").unwrap().as_deref(),
            Some(&b"back again"[..])
        );
        drop(s);
        // A directory that holds an instance cannot be reserved.
        assert!(matches!(
            EncryptedStore::reserve(&dir),
            Err(StateError::AlreadyExists { .. })
        ));
        // A reset clears the tombstone like any other instance file.
        let dir = populated(&h, "vm2");
        open(&dir, &h.key).unwrap().destroy("gone").unwrap();
        EncryptedStore::reset(&dir).unwrap().unwrap();
        open(&dir, &h.key).unwrap();
    }
}
