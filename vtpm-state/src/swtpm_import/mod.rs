//! Importing an existing swtpm TPM 2.0 state directory, so that an operator can move a VM from
//! QEMU + swtpm to vhost-vtpm keeping every key, seed and NV index.
//!
//! This module owns reading swtpm's state directory and hands back the raw libtpms blobs
//! (`permall`, and `volatilestate` when swtpm saved one) exactly as our libtpms engine loads
//! them; storing them is the caller's business. The operator's directory is only ever read.
//! It is split along pure-versus-I/O lines:
//! - this file: the orchestration ([`read_swtpm_state`]) and its errors;
//! - [`format`]: swtpm's blob files, parsed (pure: bytes in, blob or [`FormatError`] out);
//! - [`key`]: how the state is protected, as the operator names it (swtpm's `--key` syntax;
//!   pure);
//! - `secret`: reading the key or passphrase file (wiped from memory after use);
//! - `runner`: running swtpm on a private copy of the state.
//!
//! Plain state is parsed natively, in every layout swtpm reads (see [`format`]). State that
//! swtpm encrypted (`--key file=...`, or `--key pwdfile=...` as libvirt does it) is
//! decrypted by swtpm itself, not here: the encrypted layout (IV, HMAC, key-size flags, and the
//! older hash-then-encrypt version 1) and the derivation of a key from a passphrase are swtpm's
//! and versioned by swtpm, so running swtpm reads every version that swtpm can read, and a
//! wrong key or passphrase is judged by swtpm's own integrity check. swtpm writes into the
//! directory it serves (its lock file, the mode of every file it reads, state when the TPM
//! starts, and it deletes the volatile state it hands out), so the import copies the
//! `tpm2-00.*` files into a private directory (mode 0700), starts `swtpm socket` on the copy
//! with the key or the passphrase passed through a pipe (never on disk or its command line),
//! powers the TPM on (`CMD_INIT`), asks for each blob decrypted over the control channel
//! (`CMD_GET_STATEBLOB`), shuts swtpm down and removes the copy. swtpm is killed and reaped on
//! every error path.
//!
//! A passphrase is the passphrase file's bytes exactly as swtpm reads them (swtpm 0.7.1,
//! verified): the whole file, a trailing newline included, which swtpm turns into the key with
//! PBKDF2-HMAC-SHA512 (its default, and what swtpm_setup and libvirt use) or one SHA-512.
//!
//! With a key, the volatile blob (imported only when the directory has `tpm2-00.volatilestate`)
//! is swtpm's serialisation of the TPM restored from that file: swtpm hands out volatile state
//! only by saving the running TPM. It holds the same sessions, objects and PCRs as the file;
//! libtpms' clock fields and the checksum over them are as of the import, as in QEMU's own
//! migration of a swtpm TPM. Without a key the file's blob is returned byte for byte.

pub mod format;
pub mod key;
mod runner;
mod secret;

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use log::info;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use coprocessor::swtpm::ctrl::CMD_INIT;

pub use format::{BlobKind, FormatError, MAX_FILE};
pub use key::{
    KeyKind, KeySpecError, KeySpecReason, SwtpmCipher, SwtpmKdf, SwtpmKey, SwtpmKeyFormat,
    SwtpmKeySource, UnknownValue,
};
pub use runner::{BlobAnswerError, SwtpmError};
pub use secret::{HexKeyError, SecretError, MAX_PASSPHRASE};

use format::{parse_state_file, Contents};
use runner::{Scratch, Swtpm};

/// swtpm's file for TPM 2.0 permanent state (libtpms' `permall`).
pub const PERMANENT_FILE: &str = "tpm2-00.permall";
/// swtpm's file for saved TPM 2.0 volatile state (libtpms' `volatilestate`).
pub const VOLATILE_FILE: &str = "tpm2-00.volatilestate";
/// What a swtpm TPM 1.2 directory has instead of [`PERMANENT_FILE`].
const TPM12_PERMANENT_FILE: &str = "tpm-00.permall";
/// Where libvirt keeps swtpm's TPM 2.0 directory inside a VM's swtpm directory.
const LIBVIRT_SUBDIR: &str = "tpm2";
/// The file swtpm holds a POSIX write lock on while it serves a directory.
const LOCK_FILE: &str = ".lock";
/// Prefix of the files copied for swtpm (`tpm2-00.permall`, `.volatilestate`, `.savestate`).
const STATE_FILE_PREFIX: &str = "tpm2-00.";

/// The libtpms blobs of one swtpm TPM 2.0 instance; wiped when dropped.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SwtpmBlobs {
    /// libtpms' `permall`: seeds, hierarchies, persistent objects, NV indices.
    pub permanent: Vec<u8>,
    /// libtpms' `volatilestate`, if swtpm had saved one.
    pub volatile: Option<Vec<u8>>,
}

impl fmt::Debug for SwtpmBlobs {
    /// Sizes only: the blobs hold the TPM's seeds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwtpmBlobs")
            .field("permanent_len", &self.permanent.len())
            .field("volatile_len", &self.volatile.as_ref().map(Vec::len))
            .finish()
    }
}

/// Why an swtpm state directory could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("swtpm state directory {}: {source}", dir.display())]
    NoDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a swtpm TPM 2.0 state directory: it has no {PERMANENT_FILE}", dir.display())]
    NotSwtpmDir { dir: PathBuf },
    #[error(
        "{} is not a swtpm state directory, but {} is (libvirt's layout): import that",
        dir.display(), subdir.display()
    )]
    StateInSubdir { dir: PathBuf, subdir: PathBuf },
    #[error(
        "{} holds swtpm TPM 1.2 state ({TPM12_PERMANENT_FILE}); vhost-vtpm is a TPM 2.0 only",
        dir.display()
    )]
    Tpm12State { dir: PathBuf },
    #[error(
        "{} is in use: process {pid} holds swtpm's lock on it; stop its VM (and swtpm) first",
        dir.display()
    )]
    InUse { dir: PathBuf, pid: i32 },
    #[error("cannot read {}: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} has more than {max} bytes, more than any TPM state", file.display())]
    TooLarge { file: PathBuf, max: usize },
    #[error("{}: {source}", file.display())]
    Format {
        file: PathBuf,
        #[source]
        source: FormatError,
    },
    #[error(
        "{}: state is encrypted by swtpm; pass its key (swtpm's --key \
         file=...,mode=...,format=...) or passphrase (--key pwdfile=...,mode=...,kdf=...)",
        file.display()
    )]
    Encrypted { file: PathBuf },
    #[error(
        "{} is not encrypted, but {kind} {} was given (swtpm would refuse it too); import without \
         a key",
        file.display(), key.display()
    )]
    NotEncrypted {
        file: PathBuf,
        key: PathBuf,
        kind: KeyKind,
    },
    #[error(
        "{} is encrypted with a {state_bits}-bit key, but key {} is given as {mode}",
        file.display(), key.display()
    )]
    KeySizeMismatch {
        file: PathBuf,
        key: PathBuf,
        state_bits: usize,
        mode: SwtpmCipher,
    },
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("cannot make a private copy of the state at {}: {source}", path.display())]
    Scratch {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Swtpm(#[from] SwtpmError),
    #[error(
        "swtpm could not open the state in {} with {kind} {} (TPM result {code:#x}): {}, \
         or damaged state; swtpm said: {log}",
        dir.display(), key.display(), kind.suspects()
    )]
    WrongKey {
        dir: PathBuf,
        key: PathBuf,
        kind: KeyKind,
        code: u32,
        log: String,
    },
}

/// Reads the swtpm TPM 2.0 state in `dir` and returns its libtpms blobs.
///
/// Without `key` the files are parsed here and encrypted state is refused
/// ([`ImportError::Encrypted`]). With `key` (a key or a passphrase file) the state must be
/// encrypted, and swtpm decrypts a private copy of it (see the module documentation); a key or
/// passphrase that does not decrypt it is [`ImportError::WrongKey`]. A directory that a running
/// swtpm still holds is refused ([`ImportError::InUse`]): its state would move on after the
/// import.
pub fn read_swtpm_state(dir: &Path, key: Option<&SwtpmKey>) -> Result<SwtpmBlobs, ImportError> {
    let no_dir = |source| ImportError::NoDir {
        dir: dir.to_owned(),
        source,
    };
    let dir = fs::canonicalize(dir).map_err(no_dir)?;
    if !fs::metadata(&dir).map_err(no_dir)?.is_dir() {
        return Err(no_dir(io::Error::other("not a directory")));
    }
    let lock = dir.join(LOCK_FILE);
    if let Some(pid) =
        lock_holder(&lock).map_err(|source| ImportError::Read { file: lock, source })?
    {
        return Err(ImportError::InUse { dir, pid });
    }

    let Some(permanent) = StateFile::read(&dir, PERMANENT_FILE, BlobKind::Permanent)? else {
        let subdir = dir.join(LIBVIRT_SUBDIR);
        return Err(if subdir.join(PERMANENT_FILE).exists() {
            ImportError::StateInSubdir { dir, subdir }
        } else if dir.join(TPM12_PERMANENT_FILE).exists() {
            ImportError::Tpm12State { dir }
        } else {
            ImportError::NotSwtpmDir { dir }
        });
    };
    let volatile = StateFile::read(&dir, VOLATILE_FILE, BlobKind::Volatile)?;

    let blobs = match key {
        None => {
            let plain = |f: StateFile| match f.contents {
                Contents::Plain(mut blob) => Ok(std::mem::take(&mut *blob)),
                Contents::Encrypted { .. } => Err(ImportError::Encrypted { file: f.path }),
            };
            SwtpmBlobs {
                permanent: plain(permanent)?,
                volatile: volatile.map(plain).transpose()?,
            }
        }
        Some(key) => decrypt_with_swtpm(&dir, key, &permanent, volatile.as_ref())?,
    };
    info!(
        "read swtpm state from {}{}: permanent {} bytes, volatile {}",
        dir.display(),
        if key.is_some() {
            " (decrypted by swtpm)"
        } else {
            ""
        },
        blobs.permanent.len(),
        blobs
            .volatile
            .as_ref()
            .map_or("none".to_owned(), |v| format!("{} bytes", v.len())),
    );
    Ok(blobs)
}

/// One state file as read from the operator's directory.
struct StateFile {
    path: PathBuf,
    kind: BlobKind,
    /// The file's bytes (a plain file holds the blob in clear: wiped when dropped).
    bytes: Zeroizing<Vec<u8>>,
    contents: Contents,
}

impl StateFile {
    /// Reads and parses `dir/name`; `None` if it does not exist.
    fn read(dir: &Path, name: &str, kind: BlobKind) -> Result<Option<StateFile>, ImportError> {
        let path = dir.join(name);
        let Some(bytes) = read_limited(&path)? else {
            return Ok(None);
        };
        let contents = parse_state_file(&bytes, kind).map_err(|source| ImportError::Format {
            file: path.clone(),
            source,
        })?;
        Ok(Some(StateFile {
            path,
            kind,
            bytes,
            contents,
        }))
    }
}

/// Reads a whole state file of at most [`MAX_FILE`] bytes; `None` if it does not exist.
fn read_limited(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, ImportError> {
    let read_err = |source| ImportError::Read {
        file: path.to_owned(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    // Room for the whole file up front, so that no reallocation leaves a copy of it behind.
    let size = file.metadata().map_err(read_err)?.len();
    let capacity = usize::try_from(size).map_or(MAX_FILE, |s| s.min(MAX_FILE)) + 1;
    let mut bytes = Zeroizing::new(Vec::with_capacity(capacity));
    file.take(MAX_FILE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() > MAX_FILE {
        return Err(ImportError::TooLarge {
            file: path.to_owned(),
            max: MAX_FILE,
        });
    }
    Ok(Some(bytes))
}

/// The pid of a process holding a POSIX lock on `lock` (swtpm's `.lock` while it serves the
/// directory), if any. Opens the file read-only: nothing is written.
fn lock_holder(lock: &Path) -> io::Result<Option<i32>> {
    let file = match File::open(lock) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut query = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // SAFETY: `file` is an open descriptor for the whole call, and `query` is a valid flock
    // that F_GETLK only reads and overwrites in place.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut query) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((query.l_type != libc::F_UNLCK as libc::c_short).then_some(query.l_pid))
}

fn decrypt_with_swtpm(
    dir: &Path,
    key: &SwtpmKey,
    permanent: &StateFile,
    volatile: Option<&StateFile>,
) -> Result<SwtpmBlobs, ImportError> {
    let secret = secret::load_secret(key)?;
    for f in std::iter::once(permanent).chain(volatile) {
        match f.contents {
            Contents::Plain(_) => {
                return Err(ImportError::NotEncrypted {
                    file: f.path.clone(),
                    key: key.file().to_owned(),
                    kind: key.kind(),
                })
            }
            // A raw key's size is checked here; with a passphrase swtpm judges everything.
            Contents::Encrypted {
                key_bits: Some(bits),
            } if key.kind() == KeyKind::Key && bits != key.mode.key_len() * 8 => {
                return Err(ImportError::KeySizeMismatch {
                    file: f.path.clone(),
                    key: key.file().to_owned(),
                    state_bits: bits,
                    mode: key.mode,
                })
            }
            Contents::Encrypted { .. } => {}
        }
    }

    let scratch = Scratch::new().map_err(|source| ImportError::Scratch {
        path: std::env::temp_dir(),
        source,
    })?;
    let state = scratch.path().join("state");
    DirBuilder::new()
        .mode(0o700)
        .create(&state)
        .map_err(|source| ImportError::Scratch {
            path: state.clone(),
            source,
        })?;
    copy_state_files(
        dir,
        &state,
        &[permanent].into_iter().chain(volatile).collect::<Vec<_>>(),
    )?;

    let mut swtpm = Swtpm::start(&state, Some((key.mode, &secret)), scratch.path())?;
    let code = swtpm.control(CMD_INIT, &0u32.to_be_bytes())?;
    if code != 0 {
        return Err(ImportError::WrongKey {
            dir: dir.to_owned(),
            key: key.file().to_owned(),
            kind: key.kind(),
            code,
            log: swtpm.log(),
        });
    }
    let mut blobs = SwtpmBlobs {
        permanent: Vec::new(),
        volatile: None,
    };
    blobs.permanent = std::mem::take(&mut *swtpm.decrypted_blob(&permanent.path, permanent.kind)?);
    if let Some(f) = volatile {
        blobs.volatile = Some(std::mem::take(&mut *swtpm.decrypted_blob(&f.path, f.kind)?));
    }
    swtpm.shutdown();
    Ok(blobs)
}

/// Copies every `tpm2-00.*` file of `from` into `to` (owner-only), the already read ones from
/// memory so that swtpm sees exactly the bytes that were checked.
fn copy_state_files(from: &Path, to: &Path, read: &[&StateFile]) -> Result<(), ImportError> {
    let read_err = |source| ImportError::Read {
        file: from.to_owned(),
        source,
    };
    for entry in fs::read_dir(from).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| n.starts_with(STATE_FILE_PREFIX)) else {
            continue;
        };
        let src = entry.path();
        let other;
        let bytes: &[u8] = match read.iter().find(|f| f.path == src) {
            Some(f) => &f.bytes,
            None if src.is_file() => match read_limited(&src)? {
                Some(b) => {
                    other = b;
                    &other
                }
                None => continue,
            },
            None => continue,
        };
        let dst = to.join(name);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&dst)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(|source| ImportError::Scratch { path: dst, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Importing state directories made by the real swtpm_setup and decrypted by the real swtpm.
    //! Where an imported blob must be shown to be the same TPM, a separate swtpm process serves it
    //! (this process' libtpms belongs to the engine tests).
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;
    use std::process::Command;

    use super::format::has_libtpms_magic;
    use super::runner::DATA_SOCKET;
    use super::secret::{load_secret, Secret};
    use super::*;
    use coprocessor::swtpm::ctrl::CMD_STORE_VOLATILE;

    const KEY_256: &str = "00112233445566778899aabbccddeeff0123456789abcdef0f1e2d3c4b5a6978";
    const OTHER_KEY_256: &str = "ffeeddccbbaa99887766554433221100fedcba98765432100f1e2d3c4b5a6978";
    const KEY_128: &str = "00112233445566778899aabbccddeeff";
    /// As an operator writes it with `echo`: the newline is part of the passphrase, for swtpm.
    const PASSPHRASE: &[u8] = b"correct horse battery staple\n";
    const WRONG_PASSPHRASE: &[u8] = b"incorrect horse battery staple\n";

    /// TPM2_Startup(TPM_SU_CLEAR).
    const STARTUP_CLEAR: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0];
    /// TPM2_ReadPublic of the RSA EK that swtpm_setup --createek makes persistent at 0x81010001.
    const READ_EK: [u8; 14] = [
        0x80, 0x01, 0, 0, 0, 14, 0, 0, 0x01, 0x73, 0x81, 0x01, 0x00, 0x01,
    ];
    /// TPM2_PCR_Read of sha256 PCR 16.
    const READ_PCR16: [u8; 20] = [
        0x80, 0x01, 0, 0, 0, 20, 0, 0, 0x01, 0x7e, 0, 0, 0, 1, 0x00, 0x0b, 3, 0, 0, 1,
    ];

    /// TPM2_PCR_Extend of sha256 PCR 16 with a password session and a fixed digest.
    fn extend_pcr16() -> Vec<u8> {
        let mut cmd = vec![0x80, 0x02, 0, 0, 0, 65, 0, 0, 0x01, 0x82, 0, 0, 0, 16];
        cmd.extend_from_slice(&[0, 0, 0, 9, 0x40, 0, 0, 9, 0, 0, 0, 0, 0]);
        cmd.extend_from_slice(&[0, 0, 0, 1, 0x00, 0x0b]);
        cmd.extend_from_slice(&[0x5a; 32]);
        assert_eq!(cmd.len(), 65);
        cmd
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        state: PathBuf,
    }

    impl Fixture {
        fn new() -> Fixture {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().canonicalize().unwrap();
            let state = root.join("swtpm");
            fs::create_dir(&state).unwrap();
            Fixture {
                _tmp: tmp,
                root,
                state,
            }
        }

        /// Writes a key file (from hex) in the given format.
        fn key(
            &self,
            name: &str,
            hex: &str,
            mode: SwtpmCipher,
            format: SwtpmKeyFormat,
        ) -> SwtpmKey {
            let file = self.root.join(name);
            match format {
                SwtpmKeyFormat::Hex => fs::write(&file, format!("{hex}\n")).unwrap(),
                SwtpmKeyFormat::Binary => fs::write(&file, unhex(hex)).unwrap(),
            }
            SwtpmKey::key_file(file, mode, format)
        }

        /// Writes a passphrase file.
        fn passphrase(
            &self,
            name: &str,
            bytes: &[u8],
            mode: SwtpmCipher,
            kdf: SwtpmKdf,
        ) -> SwtpmKey {
            let file = self.root.join(name);
            fs::write(&file, bytes).unwrap();
            SwtpmKey::passphrase_file(file, mode, kdf)
        }

        /// Writes [`PASSPHRASE`] as the state's passphrase file, for aes-256-cbc and `kdf`.
        fn state_passphrase(&self, kdf: SwtpmKdf) -> SwtpmKey {
            self.passphrase("state.pw", PASSPHRASE, SwtpmCipher::Aes256Cbc, kdf)
        }

        fn permall(&self) -> Vec<u8> {
            fs::read(self.state.join(PERMANENT_FILE)).unwrap()
        }
    }

    fn unhex(text: &str) -> Vec<u8> {
        hex::decode(text).unwrap()
    }

    /// Runs swtpm_setup on `state`, with an EK, encrypted with `key` (a hex key file, or a
    /// passphrase file as libvirt has swtpm_setup use it) if given.
    fn swtpm_setup(state: &Path, key: Option<&SwtpmKey>) {
        let mut cmd = Command::new("swtpm_setup");
        cmd.args(["--tpm2", "--tpmstate"])
            .arg(state)
            .args(["--createek", "--overwrite"]);
        if let Some(key) = key {
            match &key.source {
                SwtpmKeySource::File { file, format } => {
                    assert_eq!(*format, SwtpmKeyFormat::Hex, "swtpm_setup reads hex keys");
                    cmd.arg("--keyfile").arg(file);
                }
                SwtpmKeySource::Passphrase { file, kdf } => {
                    assert_eq!(
                        *kdf,
                        SwtpmKdf::Pbkdf2,
                        "swtpm_setup uses swtpm's default kdf"
                    );
                    cmd.arg("--pwdfile").arg(file);
                }
            }
            cmd.arg("--cipher").arg(key.mode.to_string());
        }
        let out = match cmd.output() {
            Ok(out) => out,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                panic!("swtpm_setup is not installed: scripts/setup.sh installs it (swtpm-tools)")
            }
            Err(e) => panic!("cannot run swtpm_setup: {e}"),
        };
        assert!(
            out.status.success(),
            "swtpm_setup failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn plain_state() -> Fixture {
        let f = Fixture::new();
        swtpm_setup(&f.state, None);
        f
    }

    fn encrypted_state(mode: SwtpmCipher) -> (Fixture, SwtpmKey) {
        let f = Fixture::new();
        let hex = match mode {
            SwtpmCipher::Aes128Cbc => KEY_128,
            SwtpmCipher::Aes256Cbc => KEY_256,
        };
        let key = f.key("state.key", hex, mode, SwtpmKeyFormat::Hex);
        swtpm_setup(&f.state, Some(&key));
        (f, key)
    }

    /// State encrypted by swtpm_setup with [`PASSPHRASE`] and aes-256-cbc, as libvirt makes it.
    fn passphrase_state() -> (Fixture, SwtpmKey) {
        let f = Fixture::new();
        let key = f.state_passphrase(SwtpmKdf::Pbkdf2);
        swtpm_setup(&f.state, Some(&key));
        (f, key)
    }

    /// Every entry of `dir`: name, mode and contents.
    fn snapshot(dir: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let path = e.unwrap().path();
                let meta = fs::symlink_metadata(&path).unwrap();
                let data = if meta.is_file() {
                    fs::read(&path).unwrap()
                } else {
                    Vec::new()
                };
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, (meta.permissions().mode(), data))
            })
            .collect()
    }

    /// The payload of a plain swtpm file, checked by hand: header version 2 (readable from 1), the
    /// total length, then exactly one item with tag 1.
    fn data_item(file: &[u8]) -> &[u8] {
        assert_eq!(&file[..4], &[2, 1, 0, 10]);
        assert_eq!(
            u32::from_be_bytes(file[6..10].try_into().unwrap()) as usize,
            file.len()
        );
        assert_eq!(&file[10..12], &[0, 1]);
        let len = u32::from_be_bytes(file[12..16].try_into().unwrap()) as usize;
        assert_eq!(16 + len, file.len());
        &file[16..]
    }

    /// A plain swtpm file holding `blob`.
    fn swtpm_file(blob: &[u8]) -> Vec<u8> {
        let mut file = vec![2, 1, 0, 10, 0, 0];
        file.extend_from_slice(&(16 + blob.len() as u32).to_be_bytes());
        file.extend_from_slice(&[0, 1]);
        file.extend_from_slice(&(blob.len() as u32).to_be_bytes());
        file.extend_from_slice(blob);
        file
    }

    /// swtpm serving `state` (it writes there), powered on, with its data channel.
    struct Running {
        swtpm: Swtpm,
        data: UnixStream,
        _scratch: Scratch,
    }

    fn run(state: &Path, key: Option<(SwtpmCipher, &Secret)>) -> Running {
        let scratch = Scratch::new().unwrap();
        let mut swtpm = Swtpm::start(state, key, scratch.path()).unwrap();
        let code = swtpm.control(CMD_INIT, &0u32.to_be_bytes()).unwrap();
        assert_eq!(code, 0, "CMD_INIT: {}", swtpm.log());
        let data = UnixStream::connect(scratch.path().join(DATA_SOCKET)).unwrap();
        Running {
            swtpm,
            data,
            _scratch: scratch,
        }
    }

    impl Running {
        /// Executes a TPM command; returns the response after checking it succeeded.
        fn command(&mut self, cmd: &[u8]) -> Vec<u8> {
            self.data.write_all(cmd).unwrap();
            let mut resp = vec![0u8; 10];
            self.data.read_exact(&mut resp).unwrap();
            let size = u32::from_be_bytes(resp[2..6].try_into().unwrap()) as usize;
            resp.resize(size, 0);
            self.data.read_exact(&mut resp[10..]).unwrap();
            let rc = u32::from_be_bytes(resp[6..10].try_into().unwrap());
            assert_eq!(rc, 0, "TPM command {:02x?} failed", &cmd[6..10]);
            resp
        }

        fn stop(self) {
            self.swtpm.shutdown();
        }
    }

    /// Copies the `tpm2-00.*` files of `state` into a new directory.
    fn copy_of(state: &Path) -> tempfile::TempDir {
        let copy = tempfile::tempdir().unwrap();
        for e in fs::read_dir(state).unwrap() {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if name.starts_with(STATE_FILE_PREFIX) {
                fs::copy(&path, copy.path().join(name)).unwrap();
            }
        }
        copy
    }

    /// The public part of the EK that swtpm serves from `state` (on a throwaway copy).
    fn ek_of(state: &Path, key: Option<(SwtpmCipher, &Secret)>) -> Vec<u8> {
        let copy = copy_of(state);
        let mut tpm = run(&copy.path().canonicalize().unwrap(), key);
        tpm.command(&STARTUP_CLEAR);
        let ek = tpm.command(&READ_EK);
        tpm.stop();
        ek
    }

    /// A plain swtpm directory holding the given blobs.
    fn plain_dir_with(blobs: &SwtpmBlobs) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(PERMANENT_FILE),
            swtpm_file(&blobs.permanent),
        )
        .unwrap();
        if let Some(v) = &blobs.volatile {
            fs::write(dir.path().join(VOLATILE_FILE), swtpm_file(v)).unwrap();
        }
        dir
    }

    /// Starts the TPM in `state`, extends PCR 16 and has swtpm save the volatile state; returns
    /// what PCR_Read of PCR 16 answered.
    fn save_volatile_with_pcr16(state: &Path, key: Option<(SwtpmCipher, &Secret)>) -> Vec<u8> {
        let mut tpm = run(state, key);
        tpm.command(&STARTUP_CLEAR);
        tpm.command(&extend_pcr16());
        let pcr = tpm.command(&READ_PCR16);
        let code = tpm.swtpm.control(CMD_STORE_VOLATILE, &[]).unwrap();
        assert_eq!(code, 0, "CMD_STORE_VOLATILE: {}", tpm.swtpm.log());
        tpm.stop();
        assert!(state.join(VOLATILE_FILE).exists());
        pcr
    }

    /// What PCR_Read of PCR 16 answers right after swtpm resumes `blobs` (no TPM2_Startup: the
    /// volatile state is a started TPM).
    fn pcr16_after_resuming(blobs: &SwtpmBlobs) -> Vec<u8> {
        let dir = plain_dir_with(blobs);
        let mut tpm = run(&dir.path().canonicalize().unwrap(), None);
        let pcr = tpm.command(&READ_PCR16);
        tpm.stop();
        pcr
    }

    fn key_arg(key: &SwtpmKey) -> Secret {
        load_secret(key).unwrap()
    }

    impl Fixture {
        /// Imports the state directory with `key`, checking that swtpm's directory is left
        /// exactly as it was, whether the import succeeds or is refused.
        fn import(&self, key: Option<&SwtpmKey>) -> Result<SwtpmBlobs, ImportError> {
            let before = snapshot(&self.state);
            let result = read_swtpm_state(&self.state, key);
            assert_eq!(snapshot(&self.state), before, "{key:?}");
            result
        }
    }

    /// `blobs`, imported from the encrypted state of `f` with `key`, are that TPM in clear:
    /// the kind of blob a plain state holds (and not the file's encrypted bytes), which swtpm
    /// serves with the EK it serves from the encrypted directory, and which reads back
    /// natively from a plain directory.
    fn assert_decrypted_same_tpm(f: &Fixture, key: &SwtpmKey, blobs: &SwtpmBlobs) {
        assert!(has_libtpms_magic(&blobs.permanent, BlobKind::Permanent));
        let permall = f.permall();
        assert!(!permall.windows(64).any(|w| blobs.permanent.starts_with(w)));
        let plain = data_item(&plain_state().permall()).len();
        assert!(
            blobs.permanent.len().abs_diff(plain) < 1024,
            "{} bytes, a plain state has {plain}",
            blobs.permanent.len()
        );
        let imported = plain_dir_with(blobs);
        assert_eq!(
            ek_of(imported.path(), None),
            ek_of(&f.state, Some((key.mode, &key_arg(key)))),
            "{key:?}"
        );
        assert_eq!(read_swtpm_state(imported.path(), None).unwrap(), *blobs);
    }

    /// `err` refuses `key` for the state in `dir` as the wrong key (or passphrase), naming
    /// the key's file.
    fn assert_wrong_key(err: &ImportError, dir: &Path, key: &SwtpmKey, kind: KeyKind) {
        match err {
            ImportError::WrongKey {
                dir: d,
                key: k,
                kind: found,
                code,
                ..
            } => {
                assert_eq!(d, dir);
                assert_eq!(k, key.file());
                assert_eq!(*found, kind);
                assert_ne!(*code, 0);
            }
            other => panic!("{other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&key.file().display().to_string()), "{msg}");
    }

    /// What is refused before swtpm runs, for a key file and a passphrase file alike: `key`
    /// for a plain state, and `missing` (a file of the same kind that does not exist) for
    /// the encrypted state of `f`.
    fn assert_refused_before_swtpm(f: &Fixture, key: &SwtpmKey, missing: &SwtpmKey) {
        let kind = key.kind();
        let plain = plain_state();
        let err = read_swtpm_state(&plain.state, Some(key)).unwrap_err();
        assert!(
            matches!(&err, ImportError::NotEncrypted { key: k, kind: found, .. }
            if k == key.file() && *found == kind),
            "{err:?}"
        );
        assert!(err.to_string().contains(&kind.to_string()), "{err}");
        let err = f.import(Some(missing)).unwrap_err();
        assert!(
            matches!(&err, ImportError::Secret(SecretError::KeyRead { kind: found, .. })
            if *found == kind),
            "{err:?}"
        );
    }

    #[test]
    fn plain_import_is_the_data_item_and_leaves_the_directory_alone() {
        let f = plain_state();
        let blobs = f.import(None).unwrap();
        assert_eq!(blobs.permanent, data_item(&f.permall()));
        assert!(has_libtpms_magic(&blobs.permanent, BlobKind::Permanent));
        assert_eq!(blobs.volatile, None);
        // A relative path works as well.
        let cwd = std::env::current_dir().unwrap();
        let relative = cwd
            .components()
            .map(|_| "..")
            .collect::<PathBuf>()
            .join(f.state.strip_prefix("/").unwrap());
        assert_eq!(read_swtpm_state(&relative, None).unwrap(), blobs);
    }

    #[test]
    fn encrypted_import_is_the_same_tpm_and_leaves_the_directory_alone() {
        for (mode, format) in [
            (SwtpmCipher::Aes256Cbc, SwtpmKeyFormat::Hex),
            (SwtpmCipher::Aes128Cbc, SwtpmKeyFormat::Binary),
        ] {
            let (f, hex_key) = encrypted_state(mode);
            let key = match format {
                SwtpmKeyFormat::Hex => hex_key,
                SwtpmKeyFormat::Binary => {
                    let hex = fs::read_to_string(hex_key.file()).unwrap();
                    f.key("state.bin", hex.trim(), mode, format)
                }
            };
            let blobs = f.import(Some(&key)).unwrap();
            assert_eq!(blobs.volatile, None);
            assert_decrypted_same_tpm(&f, &key, &blobs);
        }
    }

    #[test]
    fn volatile_state_is_imported_plain_and_encrypted() {
        let f = plain_state();
        let pcr = save_volatile_with_pcr16(&f.state, None);
        let blobs = f.import(None).unwrap();
        let file = fs::read(f.state.join(VOLATILE_FILE)).unwrap();
        assert_eq!(blobs.volatile.as_deref(), Some(data_item(&file)));
        assert_eq!(pcr16_after_resuming(&blobs), pcr);

        let (f, key) = encrypted_state(SwtpmCipher::Aes256Cbc);
        let pcr = save_volatile_with_pcr16(&f.state, Some((key.mode, &key_arg(&key))));
        // swtpm deletes the volatile state it hands out: it did so in its copy only.
        let blobs = f.import(Some(&key)).unwrap();
        let volatile = blobs.volatile.as_deref().unwrap();
        assert!(has_libtpms_magic(volatile, BlobKind::Volatile));
        assert_eq!(pcr16_after_resuming(&blobs), pcr);
    }

    #[test]
    fn encrypted_state_without_its_key_is_refused() {
        let (f, _) = encrypted_state(SwtpmCipher::Aes256Cbc);
        let err = read_swtpm_state(&f.state, None).unwrap_err();
        assert!(
            matches!(&err, ImportError::Encrypted { file } if *file == f.state.join(PERMANENT_FILE)),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("state is encrypted by swtpm; pass its key"),
            "{err}"
        );
    }

    #[test]
    fn wrong_key_is_refused_naming_the_key_file() {
        let (f, key) = encrypted_state(SwtpmCipher::Aes256Cbc);
        let wrong = f.key("wrong.key", OTHER_KEY_256, key.mode, SwtpmKeyFormat::Hex);
        let err = f.import(Some(&wrong)).unwrap_err();
        assert_wrong_key(&err, &f.state, &wrong, KeyKind::Key);
        let msg = err.to_string();
        assert!(
            !msg.contains(OTHER_KEY_256) && !msg.contains(KEY_256),
            "{msg}"
        );
    }

    #[test]
    fn key_that_cannot_match_is_refused_before_running_swtpm() {
        let (f, key) = encrypted_state(SwtpmCipher::Aes256Cbc);
        let short = f.key(
            "short.key",
            KEY_128,
            SwtpmCipher::Aes128Cbc,
            SwtpmKeyFormat::Hex,
        );
        let err = read_swtpm_state(&f.state, Some(&short)).unwrap_err();
        assert!(
            matches!(
                err,
                ImportError::KeySizeMismatch {
                    state_bits: 256,
                    mode: SwtpmCipher::Aes128Cbc,
                    ..
                }
            ),
            "{err:?}"
        );

        let missing = SwtpmKey::key_file(f.root.join("no.key"), key.mode, SwtpmKeyFormat::Hex);
        assert_refused_before_swtpm(&f, &key, &missing);
    }

    #[test]
    fn missing_and_foreign_directories_are_refused() {
        let f = Fixture::new();
        let missing = f.root.join("nope");
        let err = read_swtpm_state(&missing, None).unwrap_err();
        assert!(
            matches!(&err, ImportError::NoDir { dir, .. } if *dir == missing),
            "{err:?}"
        );

        let file = f.root.join("file");
        fs::write(&file, b"x").unwrap();
        let err = read_swtpm_state(&file, None).unwrap_err();
        assert!(matches!(err, ImportError::NoDir { .. }), "{err:?}");

        let err = read_swtpm_state(&f.state, None).unwrap_err();
        assert!(
            matches!(&err, ImportError::NotSwtpmDir { dir } if *dir == f.state),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("not a swtpm TPM 2.0 state directory"), "{msg}");
        assert!(msg.contains(&f.state.display().to_string()), "{msg}");

        // libvirt keeps swtpm's directory in a tpm2/ subdirectory.
        let tpm2 = f.state.join("tpm2");
        fs::create_dir(&tpm2).unwrap();
        fs::write(tpm2.join(PERMANENT_FILE), b"x").unwrap();
        let err = read_swtpm_state(&f.state, None).unwrap_err();
        assert!(
            matches!(&err, ImportError::StateInSubdir { subdir, .. } if *subdir == tpm2),
            "{err:?}"
        );
        fs::remove_dir_all(&tpm2).unwrap();

        fs::write(f.state.join("tpm-00.permall"), b"x").unwrap();
        let err = read_swtpm_state(&f.state, None).unwrap_err();
        assert!(matches!(err, ImportError::Tpm12State { .. }), "{err:?}");
    }

    #[test]
    fn a_directory_that_swtpm_still_serves_is_refused() {
        let f = plain_state();
        let tpm = run(&f.state, None);
        let pid = tpm.swtpm.pid() as i32;
        let err = read_swtpm_state(&f.state, None).unwrap_err();
        assert!(
            matches!(err, ImportError::InUse { pid: p, .. } if p == pid),
            "{err:?}"
        );
        tpm.stop();
        read_swtpm_state(&f.state, None).unwrap();
    }

    /// Imports a directory whose permall is `bytes`; returns the format error it is refused with.
    fn format_error(bytes: &[u8]) -> FormatError {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(PERMANENT_FILE);
        fs::write(&file, bytes).unwrap();
        match read_swtpm_state(dir.path(), None) {
            Err(ImportError::Format { file: f, source }) => {
                assert_eq!(f, file.canonicalize().unwrap());
                source
            }
            other => panic!("{other:?}"),
        }
    }

    fn with_totlen(mut file: Vec<u8>) -> Vec<u8> {
        let len = file.len() as u32;
        file[6..10].copy_from_slice(&len.to_be_bytes());
        file
    }

    #[test]
    fn damaged_files_are_refused_with_the_specific_error() {
        let good = plain_state().permall();
        let len = good.len();
        let item = len - 16;

        let err = format_error(&good[..len - 100]);
        assert_eq!(
            err,
            FormatError::Truncated {
                expected: len,
                actual: len - 100
            }
        );
        let err = format_error(&good[..5]);
        assert_eq!(
            err,
            FormatError::Truncated {
                expected: 10,
                actual: 5
            }
        );
        assert_eq!(
            format_error(&[]),
            FormatError::Truncated {
                expected: 10,
                actual: 0
            }
        );

        let mut bad = good.clone();
        bad[6..10].copy_from_slice(&(len as u32 - 1).to_be_bytes());
        assert_eq!(
            format_error(&bad),
            FormatError::LengthMismatch {
                header: len - 1,
                actual: len
            }
        );

        let mut bad = good.clone();
        bad[12..16].copy_from_slice(&(item as u32 + 1).to_be_bytes());
        assert_eq!(
            format_error(&bad),
            FormatError::TlvOverrun {
                offset: 10,
                tag: 1,
                len: item as u32 + 1,
                available: item
            }
        );

        let mut bad = good.clone();
        bad.extend_from_slice(&[0, 1, 0]);
        assert_eq!(
            format_error(&with_totlen(bad)),
            FormatError::TlvTruncated { offset: len }
        );

        let mut bad = good.clone();
        bad.extend_from_slice(&[0, 1, 0, 0, 0, 0]);
        assert_eq!(
            format_error(&with_totlen(bad)),
            FormatError::DuplicateTag(1)
        );

        let mut bad = good.clone();
        bad[10..12].copy_from_slice(&[0, 9]);
        assert_eq!(format_error(&bad), FormatError::MissingTag(1));

        let mut bad = good.clone();
        bad[2..4].copy_from_slice(&[0, 12]);
        assert_eq!(format_error(&bad), FormatError::BadHeaderSize(12));

        let mut bad = good.clone();
        bad[..2].copy_from_slice(&[3, 3]);
        assert_eq!(
            format_error(&bad),
            FormatError::UnsupportedVersion {
                version: 3,
                min_version: 3
            }
        );

        let mut bad = good.clone();
        bad[16 + 3] ^= 0xff;
        assert_eq!(
            format_error(&bad),
            FormatError::NotLibtpms {
                kind: BlobKind::Permanent,
                magic: 0xab36_4723
            }
        );

        // Every cut of a good file is refused, none panics.
        for cut in 0..len {
            assert!(
                parse_state_file(&good[..cut], BlobKind::Permanent).is_err(),
                "cut at {cut}"
            );
        }

        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(PERMANENT_FILE), vec![0u8; MAX_FILE + 1]).unwrap();
        let err = read_swtpm_state(dir.path(), None).unwrap_err();
        assert!(matches!(err, ImportError::TooLarge { .. }), "{err:?}");

        // The header's encrypted flag alone marks a file as encrypted.
        let mut flagged = good.clone();
        flagged[5] |= 1;
        fs::write(dir.path().join(PERMANENT_FILE), flagged).unwrap();
        let err = read_swtpm_state(dir.path(), None).unwrap_err();
        assert!(matches!(err, ImportError::Encrypted { .. }), "{err:?}");

        // A damaged volatile state is refused too, naming that file.
        fs::write(dir.path().join(PERMANENT_FILE), &good).unwrap();
        fs::write(dir.path().join(VOLATILE_FILE), &good[..20]).unwrap();
        let err = read_swtpm_state(dir.path(), None).unwrap_err();
        assert!(
            matches!(&err, ImportError::Format { file, .. } if file.ends_with(VOLATILE_FILE)),
            "{err:?}"
        );
    }

    #[test]
    fn legacy_layouts_that_swtpm_reads_are_imported() {
        let good = plain_state().permall();
        let blob = data_item(&good).to_vec();
        let dir = tempfile::tempdir().unwrap();

        // The bare blob (swtpm before headers).
        fs::write(dir.path().join(PERMANENT_FILE), &blob).unwrap();
        assert_eq!(read_swtpm_state(dir.path(), None).unwrap().permanent, blob);

        // A version-1 header and the bare blob.
        let mut v1 = vec![1, 1, 0, 10, 0, 0];
        v1.extend_from_slice(&(10 + blob.len() as u32).to_be_bytes());
        v1.extend_from_slice(&blob);
        fs::write(dir.path().join(PERMANENT_FILE), &v1).unwrap();
        assert_eq!(read_swtpm_state(dir.path(), None).unwrap().permanent, blob);

        // Anything else after a version-1 header is encrypted state.
        v1[10 + 3] ^= 0xff;
        fs::write(dir.path().join(PERMANENT_FILE), &v1).unwrap();
        let err = read_swtpm_state(dir.path(), None).unwrap_err();
        assert!(matches!(err, ImportError::Encrypted { .. }), "{err:?}");
    }

    #[test]
    fn passphrase_encrypted_import_is_the_same_tpm_and_leaves_the_directory_alone() {
        let (f, key) = passphrase_state();
        let blobs = f.import(Some(&key)).unwrap();
        assert_eq!(blobs.volatile, None);
        assert_decrypted_same_tpm(&f, &key, &blobs);

        // The trailing newline is part of the passphrase, as in swtpm: without it, no match.
        let trimmed = f.passphrase(
            "trimmed.pw",
            PASSPHRASE.trim_ascii_end(),
            key.mode,
            SwtpmKdf::Pbkdf2,
        );
        let err = f.import(Some(&trimmed)).unwrap_err();
        assert_wrong_key(&err, &f.state, &trimmed, KeyKind::Passphrase);
    }

    #[test]
    fn wrong_passphrase_is_refused_naming_the_passphrase_file() {
        let (f, key) = passphrase_state();
        let wrong = f.passphrase("wrong.pw", WRONG_PASSPHRASE, key.mode, SwtpmKdf::Pbkdf2);
        // The right passphrase with the other kdf or cipher derives another key: only swtpm
        // judges a passphrase, there is no key to check the size of beforehand.
        let other_kdf = SwtpmKey::passphrase_file(key.file(), key.mode, SwtpmKdf::Sha512);
        let other_mode =
            SwtpmKey::passphrase_file(key.file(), SwtpmCipher::Aes128Cbc, SwtpmKdf::Pbkdf2);
        for bad in [&wrong, &other_kdf, &other_mode] {
            let err = f.import(Some(bad)).unwrap_err();
            assert_wrong_key(&err, &f.state, bad, KeyKind::Passphrase);
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("passphrase file {}", bad.file().display())),
                "{msg}"
            );
            assert!(msg.contains("wrong passphrase"), "{msg}");
            for secret in [PASSPHRASE, WRONG_PASSPHRASE] {
                let secret = String::from_utf8_lossy(secret.trim_ascii_end()).into_owned();
                assert!(!msg.contains(&secret), "the passphrase leaks: {msg}");
            }
        }

        // Checked before swtpm runs: plain state, a missing file, an oversized one.
        let missing = SwtpmKey::passphrase_file(f.root.join("no.pw"), key.mode, SwtpmKdf::Pbkdf2);
        assert_refused_before_swtpm(&f, &key, &missing);
        let long = f.passphrase(
            "long.pw",
            &vec![b'x'; MAX_PASSPHRASE + 1],
            key.mode,
            SwtpmKdf::Pbkdf2,
        );
        let err = f.import(Some(&long)).unwrap_err();
        assert!(
            matches!(&err, ImportError::Secret(SecretError::PassphraseTooLong {
                file,
                max: MAX_PASSPHRASE
            }) if file == long.file()),
            "{err:?}"
        );
    }

    #[test]
    fn sha512_passphrase_state_with_volatile_state_is_imported() {
        // swtpm_setup always uses the default kdf; swtpm itself makes a TPM with the other one.
        let f = Fixture::new();
        let key = f.state_passphrase(SwtpmKdf::Sha512);
        let pcr = save_volatile_with_pcr16(&f.state, Some((key.mode, &key_arg(&key))));
        assert!(matches!(
            parse_state_file(&f.permall(), BlobKind::Permanent),
            Ok(Contents::Encrypted {
                key_bits: Some(256)
            })
        ));
        let blobs = f.import(Some(&key)).unwrap();
        assert!(has_libtpms_magic(&blobs.permanent, BlobKind::Permanent));
        let volatile = blobs.volatile.as_deref().unwrap();
        assert!(has_libtpms_magic(volatile, BlobKind::Volatile));
        assert_eq!(pcr16_after_resuming(&blobs), pcr);

        let pbkdf2 = SwtpmKey::passphrase_file(key.file(), key.mode, SwtpmKdf::Pbkdf2);
        let err = f.import(Some(&pbkdf2)).unwrap_err();
        assert_wrong_key(&err, &f.state, &pbkdf2, KeyKind::Passphrase);
    }
}
