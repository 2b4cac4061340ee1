//! Importing an existing swtpm TPM 2.0 state directory, so that an operator can move a VM from
//! QEMU + swtpm to vhost-vtpm keeping every key, seed and NV index.
//!
//! This module owns reading swtpm's state directory and hands back the raw libtpms blobs
//! (`permall`, and `volatilestate` when swtpm saved one) exactly as our libtpms engine loads
//! them; storing them is the caller's business. The operator's directory is only ever read.
//!
//! swtpm keeps each libtpms blob in a file `tpm2-00.<blob>`: a 10-byte header (`version: u8`,
//! `min_version: u8`, `hdrsize: u16`, `flags: u16`, `totlen: u32`, big-endian), then
//! tag-length-value items (`tag: u16`, `len: u32`, value). Plain state is one item with tag 1
//! holding the libtpms blob. This module parses that natively, and also the two older layouts
//! that swtpm (0.7.1, verified) still reads: a version-1 header followed by the bare blob, and
//! the bare blob with no header at all, recognised here by libtpms' own magic number.
//!
//! State that swtpm encrypted (`--key file=...`, or `--key pwdfile=...` as libvirt does it) is
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

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::atomic::{compiler_fence, AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{info, warn};

use coprocessor::swtpm::ctrl::{self, CMD_GET_STATEBLOB, CMD_INIT, CMD_SHUTDOWN};
use coprocessor::MAX_STATE_BLOB as MAX_BLOB;

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

const SWTPM: &str = "swtpm";
const CTRL_SOCKET: &str = "ctrl.sock";
const DATA_SOCKET: &str = "data.sock";
const SWTPM_LOG: &str = "swtpm.log";
const START_TIMEOUT: Duration = Duration::from_secs(10);
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

const HEADER_SIZE: usize = 10;
const TLV_HEADER_SIZE: usize = 6;
/// Largest state file accepted: one blob plus swtpm's headers, MAC, IV and padding.
const MAX_FILE: usize = MAX_BLOB + 4096;
/// Largest key file read: a 256-bit hex key with a `0x` prefix and generous whitespace.
const MAX_KEY_FILE: u64 = 4096;
/// Largest passphrase passed on: swtpm reads its passphrase until a read comes back short, so
/// it must reach the pipe in one write, which POSIX makes atomic up to `PIPE_BUF` (4096 on
/// Linux) bytes.
const MAX_PASSPHRASE: usize = 4096;

// swtpm's blob header flags (swtpm_nvstore.c).
const BLOB_FLAG_ENCRYPTED: u16 = 0x01;
const BLOB_FLAG_MIGRATION_ENCRYPTED: u16 = 0x02;
const BLOB_FLAG_ENCRYPTED_256BIT_KEY: u16 = 0x08;

// swtpm's item tags (tlv.h).
const TAG_DATA: u16 = 1;
const TAG_ENCRYPTED_DATA: u16 = 2;
const TAG_HMAC: u16 = 3;
const TAG_MIGRATION_DATA: u16 = 4;
const TAG_ENCRYPTED_MIGRATION_DATA: u16 = 5;
const TAG_IVEC_ENCRYPTED_DATA: u16 = 6;
const TAG_IVEC_ENCRYPTED_MIGRATION_DATA: u16 = 7;

// CMD_GET_STATEBLOB's flags (swtpm_ioctls(3)).
const PTM_STATE_FLAG_DECRYPTED: u32 = 1;
const PTM_STATE_FLAG_ENCRYPTED: u32 = 2;

/// The cipher swtpm encrypted its state files with (`--key ...,mode=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwtpmCipher {
    /// `mode=aes-cbc` or `mode=aes-128-cbc` (swtpm's default): a 16-byte key.
    Aes128Cbc,
    /// `mode=aes-256-cbc`: a 32-byte key.
    Aes256Cbc,
}

impl SwtpmCipher {
    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            SwtpmCipher::Aes128Cbc => 16,
            SwtpmCipher::Aes256Cbc => 32,
        }
    }

    /// The spelling every swtpm version with this cipher accepts.
    fn swtpm_mode(self) -> &'static str {
        match self {
            SwtpmCipher::Aes128Cbc => "aes-cbc",
            SwtpmCipher::Aes256Cbc => "aes-256-cbc",
        }
    }
}

impl fmt::Display for SwtpmCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SwtpmCipher::Aes128Cbc => "aes-128-cbc",
            SwtpmCipher::Aes256Cbc => "aes-256-cbc",
        })
    }
}

impl FromStr for SwtpmCipher {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "aes-cbc" | "aes-128-cbc" => Ok(SwtpmCipher::Aes128Cbc),
            "aes-256-cbc" => Ok(SwtpmCipher::Aes256Cbc),
            _ => Err(format!(
                "unknown cipher mode {s:?} (aes-cbc, aes-128-cbc or aes-256-cbc)"
            )),
        }
    }
}

/// How the key file is written (`--key ...,format=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwtpmKeyFormat {
    /// Hex digits, optionally prefixed with `0x` and followed by whitespace (swtpm's default).
    Hex,
    /// The raw key bytes, nothing else.
    Binary,
}

impl fmt::Display for SwtpmKeyFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SwtpmKeyFormat::Hex => "hex",
            SwtpmKeyFormat::Binary => "binary",
        })
    }
}

impl FromStr for SwtpmKeyFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hex" => Ok(SwtpmKeyFormat::Hex),
            "binary" => Ok(SwtpmKeyFormat::Binary),
            _ => Err(format!("unknown key format {s:?} (hex or binary)")),
        }
    }
}

/// How swtpm derives the key from a passphrase (`--key pwdfile=...,kdf=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SwtpmKdf {
    /// PBKDF2-HMAC-SHA512 (swtpm's default, and what swtpm_setup and libvirt use).
    #[default]
    Pbkdf2,
    /// The first bytes of one SHA-512 of the passphrase.
    Sha512,
}

impl fmt::Display for SwtpmKdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SwtpmKdf::Pbkdf2 => "pbkdf2",
            SwtpmKdf::Sha512 => "sha512",
        })
    }
}

impl FromStr for SwtpmKdf {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pbkdf2" => Ok(SwtpmKdf::Pbkdf2),
            "sha512" => Ok(SwtpmKdf::Sha512),
            _ => Err(format!("unknown kdf {s:?} (pbkdf2 or sha512)")),
        }
    }
}

/// How swtpm's state files are protected: swtpm's `--key file=...,mode=...,format=...` or
/// `--key pwdfile=...,mode=...,kdf=...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwtpmKey {
    pub source: SwtpmKeySource,
    pub mode: SwtpmCipher,
}

/// Where the key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwtpmKeySource {
    /// `file=`: a file holding the key itself.
    File {
        file: PathBuf,
        format: SwtpmKeyFormat,
    },
    /// `pwdfile=`: a file holding a passphrase, from which swtpm derives the key.
    Passphrase { file: PathBuf, kdf: SwtpmKdf },
}

/// Which kind of file protects the state, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A key file (`file=`).
    Key,
    /// A passphrase file (`pwdfile=`).
    Passphrase,
}

impl KeyKind {
    /// What a failure to decrypt can be blamed on, besides damaged state.
    fn suspects(self) -> &'static str {
        match self {
            KeyKind::Key => "wrong key",
            KeyKind::Passphrase => "wrong passphrase, cipher mode or kdf",
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::Key => "key file",
            KeyKind::Passphrase => "passphrase file",
        })
    }
}

impl SwtpmKey {
    /// swtpm's `--key file=<file>,mode=<mode>,format=<format>`.
    pub fn key_file(file: impl Into<PathBuf>, mode: SwtpmCipher, format: SwtpmKeyFormat) -> Self {
        SwtpmKey {
            source: SwtpmKeySource::File {
                file: file.into(),
                format,
            },
            mode,
        }
    }

    /// swtpm's `--key pwdfile=<file>,mode=<mode>,kdf=<kdf>`.
    pub fn passphrase_file(file: impl Into<PathBuf>, mode: SwtpmCipher, kdf: SwtpmKdf) -> Self {
        SwtpmKey {
            source: SwtpmKeySource::Passphrase {
                file: file.into(),
                kdf,
            },
            mode,
        }
    }

    /// The key or passphrase file.
    pub fn file(&self) -> &Path {
        match &self.source {
            SwtpmKeySource::File { file, .. } | SwtpmKeySource::Passphrase { file, .. } => file,
        }
    }

    /// Whether [`SwtpmKey::file`] holds a key or a passphrase.
    pub fn kind(&self) -> KeyKind {
        match self.source {
            SwtpmKeySource::File { .. } => KeyKind::Key,
            SwtpmKeySource::Passphrase { .. } => KeyKind::Passphrase,
        }
    }
}

/// Parses the value of swtpm's own `--key` option, so that an operator can copy it from the
/// swtpm command line: `file=<path>[,mode=aes-cbc|aes-128-cbc|aes-256-cbc][,format=hex|binary]`
/// or `pwdfile=<path>[,mode=...][,kdf=pbkdf2|sha512]`, with swtpm's defaults (`aes-cbc`, `hex`,
/// `pbkdf2`). `remove=` is accepted and ignored: the import never deletes the file. Descriptor
/// keys (`fd=`, `pwdfd=`, as libvirt passes them) are refused: the descriptor belongs to the
/// process that launched swtpm; give the same bytes in a file. Options that swtpm would
/// ignore (`file=` with `pwdfile=`, `format=` with `pwdfile=`, `kdf=` with `file=`) are refused
/// as contradictory.
impl FromStr for SwtpmKey {
    type Err = ImportError;

    fn from_str(spec: &str) -> Result<Self, ImportError> {
        let bad = |reason: String| ImportError::KeySpec {
            spec: spec.to_owned(),
            reason,
        };
        let mut file = None;
        let mut pwdfile = None;
        let mut mode = SwtpmCipher::Aes128Cbc;
        let mut format = None;
        let mut kdf = None;
        for part in spec.split(',') {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?} is not name=value")))?;
            match name {
                "file" if !value.is_empty() => file = Some(PathBuf::from(value)),
                "pwdfile" if !value.is_empty() => pwdfile = Some(PathBuf::from(value)),
                "mode" => mode = value.parse().map_err(bad)?,
                "format" => format = Some(value.parse().map_err(bad)?),
                "kdf" => kdf = Some(value.parse().map_err(bad)?),
                "remove" => {}
                "fd" | "pwdfd" => {
                    return Err(bad(format!(
                        "descriptors are not supported: {name}= is a descriptor of the process \
                         that started swtpm; put the same bytes in a file and use {}=",
                        if name == "fd" { "file" } else { "pwdfile" }
                    )))
                }
                _ => return Err(bad(format!("unknown or empty option {part:?}"))),
            }
        }
        match (file, pwdfile) {
            (Some(_), Some(_)) => Err(bad("file= and pwdfile= exclude each other".into())),
            (Some(file), None) => match kdf {
                Some(_) => Err(bad("kdf= applies to pwdfile= only".into())),
                None => Ok(SwtpmKey::key_file(
                    file,
                    mode,
                    format.unwrap_or(SwtpmKeyFormat::Hex),
                )),
            },
            (None, Some(file)) => match format {
                Some(_) => Err(bad(
                    "format= applies to file= only; a passphrase is used as it is".into(),
                )),
                None => Ok(SwtpmKey::passphrase_file(
                    file,
                    mode,
                    kdf.unwrap_or_default(),
                )),
            },
            (None, None) => Err(bad("no file=<path> or pwdfile=<path>".into())),
        }
    }
}

/// The libtpms blobs of one swtpm TPM 2.0 instance.
#[derive(Clone, PartialEq, Eq)]
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

/// Which libtpms blob a file or answer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    Permanent,
    Volatile,
}

impl BlobKind {
    /// What libtpms writes after the blob's u16 version (NVMarshal.c: PERSISTENT_ALL_MAGIC,
    /// VOLATILE_STATE_MAGIC).
    fn magic(self) -> u32 {
        match self {
            BlobKind::Permanent => 0xab36_4723,
            BlobKind::Volatile => 0x4563_7889,
        }
    }

    /// swtpm's `PTM_BLOB_TYPE_*`.
    fn ptm_type(self) -> u32 {
        match self {
            BlobKind::Permanent => 1,
            BlobKind::Volatile => 2,
        }
    }
}

impl fmt::Display for BlobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlobKind::Permanent => "permanent",
            BlobKind::Volatile => "volatile",
        })
    }
}

/// Why bytes are not a swtpm state blob we can read. Offsets count from the blob's start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("truncated: {actual} of {expected} bytes")]
    Truncated { expected: usize, actual: usize },
    #[error("corrupt header: it gives the total length as {header} bytes, but there are {actual}")]
    LengthMismatch { header: usize, actual: usize },
    #[error("not a swtpm state blob: header size {0}, expected 10")]
    BadHeaderSize(u16),
    #[error(
        "swtpm blob format version {version} (readable from version {min_version}); \
         versions 1 and 2 are supported"
    )]
    UnsupportedVersion { version: u8, min_version: u8 },
    #[error("truncated item header at offset {offset}")]
    TlvTruncated { offset: usize },
    #[error(
        "item with tag {tag} at offset {offset} claims {len} bytes, but only {available} follow"
    )]
    TlvOverrun {
        offset: usize,
        tag: u16,
        len: u32,
        available: usize,
    },
    #[error("more than one item with tag {0}")]
    DuplicateTag(u16),
    #[error("no item with tag {0}")]
    MissingTag(u16),
    #[error("not a libtpms {kind} state blob (no magic {magic:#010x} after its version)")]
    NotLibtpms { kind: BlobKind, magic: u32 },
    #[error("still encrypted")]
    StillEncrypted,
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
    #[error("invalid swtpm key option {spec:?}: {reason}")]
    KeySpec { spec: String, reason: String },
    #[error("{kind} {}: {source}", file.display())]
    KeyRead {
        file: PathBuf,
        kind: KeyKind,
        #[source]
        source: io::Error,
    },
    #[error(
        "passphrase file {} has more than {max} bytes; swtpm is given at most that many",
        file.display()
    )]
    PassphraseTooLong { file: PathBuf, max: usize },
    #[error("key file {}: {reason}", file.display())]
    KeyFormat { file: PathBuf, reason: String },
    #[error(
        "key file {}: holds a {actual}-byte {format} key, {mode} needs {expected} bytes",
        file.display()
    )]
    KeyLength {
        file: PathBuf,
        format: SwtpmKeyFormat,
        mode: SwtpmCipher,
        expected: usize,
        actual: usize,
    },
    #[error("cannot make a private copy of the state at {}: {source}", path.display())]
    Scratch {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot run {SWTPM} (scripts/setup.sh installs it): {source}")]
    SwtpmSpawn {
        #[source]
        source: io::Error,
    },
    #[error("swtpm exited ({status}) before opening its control socket; swtpm said: {log}")]
    SwtpmExited { status: ExitStatus, log: String },
    #[error("swtpm did not open its control socket within {START_TIMEOUT:?}; swtpm said: {log}")]
    SwtpmStartTimeout { log: String },
    #[error("swtpm control channel ({what}): {source}")]
    SwtpmIo {
        what: &'static str,
        #[source]
        source: io::Error,
    },
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
    #[error("swtpm control command {cmd:#x} failed with TPM result {code:#x}; swtpm said: {log}")]
    SwtpmControl { cmd: u32, code: u32, log: String },
    #[error("swtpm's decrypted {kind} state from {} is unusable: {reason}", file.display())]
    SwtpmBadBlob {
        file: PathBuf,
        kind: BlobKind,
        reason: String,
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
                Contents::Plain(blob) => Ok(blob),
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
    bytes: Vec<u8>,
    contents: Contents,
}

#[derive(Debug, PartialEq, Eq)]
enum Contents {
    Plain(Vec<u8>),
    /// Encrypted by swtpm; the key size is known from version-2 headers only.
    Encrypted {
        key_bits: Option<usize>,
    },
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
fn read_limited(path: &Path) -> Result<Option<Vec<u8>>, ImportError> {
    let read_err = |source| ImportError::Read {
        file: path.to_owned(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let mut bytes = Vec::new();
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
    let secret = load_secret(key)?;
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

    let scratch = Scratch::new()?;
    let state = scratch.path.join("state");
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

    let mut swtpm = Swtpm::start(&state, Some((key.mode, &secret)), &scratch.path)?;
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
    let permanent_blob = swtpm.decrypted_blob(permanent)?;
    let volatile_blob = volatile.map(|f| swtpm.decrypted_blob(f)).transpose()?;
    swtpm.shutdown();
    Ok(SwtpmBlobs {
        permanent: permanent_blob,
        volatile: volatile_blob,
    })
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
        let bytes = match read.iter().find(|f| f.path == src) {
            Some(f) => f.bytes.clone(),
            None if src.is_file() => match read_limited(&src)? {
                Some(b) => b,
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
            .and_then(|mut f| f.write_all(&bytes))
            .map_err(|source| ImportError::Scratch { path: dst, source })?;
    }
    Ok(())
}

/// Overwrites secret bytes with zeros, in a way the compiler does not drop as a dead store.
fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    compiler_fence(Ordering::SeqCst);
}

/// A buffer of key material, wiped when dropped.
struct Wiped(Vec<u8>);

impl Drop for Wiped {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// What swtpm is given through its stdin: the key, or the passphrase it derives the key from.
/// Wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
enum Secret {
    Key(Vec<u8>),
    Passphrase { bytes: Vec<u8>, kdf: SwtpmKdf },
}

impl Drop for Secret {
    fn drop(&mut self) {
        match self {
            Secret::Key(bytes) | Secret::Passphrase { bytes, .. } => wipe(bytes),
        }
    }
}

impl Secret {
    fn bytes(&self) -> &[u8] {
        match self {
            Secret::Key(bytes) | Secret::Passphrase { bytes, .. } => bytes,
        }
    }

    /// swtpm's `--key` option reading this secret from descriptor 0.
    fn swtpm_key_option(&self, mode: SwtpmCipher) -> String {
        match self {
            Secret::Key(_) => format!("fd=0,mode={},format=binary", mode.swtpm_mode()),
            Secret::Passphrase { kdf, .. } => {
                format!("pwdfd=0,mode={},kdf={kdf}", mode.swtpm_mode())
            }
        }
    }
}

impl fmt::Debug for Secret {
    /// Lengths only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Key(bytes) => write!(f, "Key({} bytes)", bytes.len()),
            Secret::Passphrase { bytes, kdf } => {
                write!(f, "Passphrase({} bytes, {kdf})", bytes.len())
            }
        }
    }
}

/// Loads and checks the key or passphrase file.
fn load_secret(key: &SwtpmKey) -> Result<Secret, ImportError> {
    Ok(match &key.source {
        SwtpmKeySource::File { file, format } => {
            Secret::Key(load_raw_key(file, *format, key.mode)?)
        }
        SwtpmKeySource::Passphrase { file, kdf } => Secret::Passphrase {
            bytes: load_passphrase(file)?,
            kdf: *kdf,
        },
    })
}

/// Loads and checks a key file; returns the raw key bytes. The file's contents are wiped
/// from memory once read, whatever the outcome.
fn load_raw_key(
    file: &Path,
    format: SwtpmKeyFormat,
    mode: SwtpmCipher,
) -> Result<Vec<u8>, ImportError> {
    // Room for everything read, so that no reallocation leaves a copy behind.
    let mut raw = Wiped(Vec::with_capacity(MAX_KEY_FILE as usize + 2));
    File::open(file)
        .and_then(|f| f.take(MAX_KEY_FILE + 1).read_to_end(&mut raw.0))
        .map_err(|source| ImportError::KeyRead {
            file: file.to_owned(),
            kind: KeyKind::Key,
            source,
        })?;
    let mut bytes = match format {
        SwtpmKeyFormat::Binary => Wiped(std::mem::take(&mut raw.0)),
        SwtpmKeyFormat::Hex => {
            Wiped(
                parse_hex_key(&raw.0).map_err(|reason| ImportError::KeyFormat {
                    file: file.to_owned(),
                    reason,
                })?,
            )
        }
    };
    if bytes.0.len() != mode.key_len() {
        return Err(ImportError::KeyLength {
            file: file.to_owned(),
            format,
            mode,
            expected: mode.key_len(),
            actual: bytes.0.len(),
        });
    }
    Ok(std::mem::take(&mut bytes.0))
}

/// Reads a passphrase file as swtpm does: every byte, a trailing newline included.
fn load_passphrase(file: &Path) -> Result<Vec<u8>, ImportError> {
    // Room for everything read, so that no reallocation leaves a copy behind.
    let mut bytes = Wiped(Vec::with_capacity(MAX_PASSPHRASE + 2));
    File::open(file)
        .and_then(|f| f.take(MAX_PASSPHRASE as u64 + 1).read_to_end(&mut bytes.0))
        .map_err(|source| ImportError::KeyRead {
            file: file.to_owned(),
            kind: KeyKind::Passphrase,
            source,
        })?;
    if bytes.0.len() > MAX_PASSPHRASE {
        return Err(ImportError::PassphraseTooLong {
            file: file.to_owned(),
            max: MAX_PASSPHRASE,
        });
    }
    Ok(std::mem::take(&mut bytes.0))
}

/// swtpm's hex key syntax: optional `0x`, hex digits, then nothing but whitespace. Errors
/// never quote the key.
fn parse_hex_key(text: &[u8]) -> Result<Vec<u8>, String> {
    let text = text.strip_prefix(b"0x").unwrap_or(text);
    let end = text
        .iter()
        .position(u8::is_ascii_whitespace)
        .unwrap_or(text.len());
    let (digits, rest) = text.split_at(end);
    if !rest.iter().all(u8::is_ascii_whitespace) {
        return Err(
            "more than one word: only hex digits and a trailing newline are allowed".into(),
        );
    }
    if digits.is_empty() {
        return Err("no hex digits".into());
    }
    tpm_proto::hex::decode_bytes(digits).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------
// swtpm's blob format

struct Header {
    version: u8,
    min_version: u8,
    flags: u16,
}

struct Item<'a> {
    tag: u16,
    /// Offset of the value from the start of the blob.
    offset: usize,
    value: &'a [u8],
}

/// Checks swtpm's 10-byte header against `bytes`; returns it and what follows it.
fn parse_header(bytes: &[u8]) -> Result<(Header, &[u8]), FormatError> {
    let Some((header, body)) = bytes.split_first_chunk::<HEADER_SIZE>() else {
        return Err(FormatError::Truncated {
            expected: HEADER_SIZE,
            actual: bytes.len(),
        });
    };
    let [version, min_version, s0, s1, f0, f1, t0, t1, t2, t3] = *header;
    let hdrsize = u16::from_be_bytes([s0, s1]);
    let totlen = u32::from_be_bytes([t0, t1, t2, t3]) as usize;
    if usize::from(hdrsize) != HEADER_SIZE {
        return Err(FormatError::BadHeaderSize(hdrsize));
    }
    if !(1..=2).contains(&version) || min_version > 2 {
        return Err(FormatError::UnsupportedVersion {
            version,
            min_version,
        });
    }
    if totlen > bytes.len() {
        return Err(FormatError::Truncated {
            expected: totlen,
            actual: bytes.len(),
        });
    }
    if totlen < bytes.len() {
        return Err(FormatError::LengthMismatch {
            header: totlen,
            actual: bytes.len(),
        });
    }
    let flags = u16::from_be_bytes([f0, f1]);
    Ok((
        Header {
            version,
            min_version,
            flags,
        },
        body,
    ))
}

/// Splits `bytes`, which start at `base` in their blob, into items; every length is checked.
fn parse_items(mut bytes: &[u8], base: usize) -> Result<Vec<Item<'_>>, FormatError> {
    let mut items = Vec::new();
    let mut offset = base;
    while !bytes.is_empty() {
        let Some((header, rest)) = bytes.split_first_chunk::<TLV_HEADER_SIZE>() else {
            return Err(FormatError::TlvTruncated { offset });
        };
        let [t0, t1, l0, l1, l2, l3] = *header;
        let tag = u16::from_be_bytes([t0, t1]);
        let len = u32::from_be_bytes([l0, l1, l2, l3]);
        let Some((value, rest)) = rest.split_at_checked(len as usize) else {
            return Err(FormatError::TlvOverrun {
                offset,
                tag,
                len,
                available: rest.len(),
            });
        };
        items.push(Item {
            tag,
            offset: offset + TLV_HEADER_SIZE,
            value,
        });
        offset += TLV_HEADER_SIZE + value.len();
        bytes = rest;
    }
    Ok(items)
}

/// The one item with `tag`, if any.
fn find_unique<'i, 'a>(
    items: &'i [Item<'a>],
    tag: u16,
) -> Result<Option<&'i Item<'a>>, FormatError> {
    let mut found = items.iter().filter(|i| i.tag == tag);
    let first = found.next();
    if found.next().is_some() {
        return Err(FormatError::DuplicateTag(tag));
    }
    Ok(first)
}

fn has_libtpms_magic(blob: &[u8], kind: BlobKind) -> bool {
    blob.get(2..6) == Some(&kind.magic().to_be_bytes()[..])
}

fn libtpms_blob(blob: &[u8], kind: BlobKind) -> Result<Vec<u8>, FormatError> {
    if has_libtpms_magic(blob, kind) {
        Ok(blob.to_vec())
    } else {
        Err(FormatError::NotLibtpms {
            kind,
            magic: kind.magic(),
        })
    }
}

/// Parses a state file as swtpm stores it.
fn parse_state_file(bytes: &[u8], kind: BlobKind) -> Result<Contents, FormatError> {
    // The bare blob, as swtpm wrote it before it had headers (a header has its size, 10, where
    // libtpms has its magic, so the two cannot be confused).
    if has_libtpms_magic(bytes, kind) {
        return Ok(Contents::Plain(bytes.to_vec()));
    }
    let (header, body) = parse_header(bytes)?;
    let encrypted_flag = header.flags & BLOB_FLAG_ENCRYPTED != 0;
    if header.version == 1 {
        // Version 1: the blob, or its encryption (without IV or MAC, so not recognisable but
        // by the missing magic), follows the header directly.
        return Ok(if encrypted_flag || !has_libtpms_magic(body, kind) {
            Contents::Encrypted { key_bits: None }
        } else {
            Contents::Plain(body.to_vec())
        });
    }
    let items = parse_items(body, HEADER_SIZE)?;
    let encrypted_items = items.iter().any(|i| {
        matches!(
            i.tag,
            TAG_ENCRYPTED_DATA | TAG_HMAC | TAG_IVEC_ENCRYPTED_DATA
        )
    });
    if encrypted_flag || encrypted_items {
        let bits = if header.flags & BLOB_FLAG_ENCRYPTED_256BIT_KEY != 0 {
            256
        } else {
            128
        };
        return Ok(Contents::Encrypted {
            key_bits: Some(bits),
        });
    }
    let data = find_unique(&items, TAG_DATA)?.ok_or(FormatError::MissingTag(TAG_DATA))?;
    Ok(Contents::Plain(libtpms_blob(data.value, kind)?))
}

/// Unwraps what `CMD_GET_STATEBLOB` returns for a decrypted blob: a header, an item with tag 4
/// (migration data) and in it an item with tag 1 holding the libtpms blob.
fn parse_stateblob_answer(bytes: &[u8], kind: BlobKind) -> Result<Vec<u8>, FormatError> {
    let (header, body) = parse_header(bytes)?;
    if header.version != 2 {
        return Err(FormatError::UnsupportedVersion {
            version: header.version,
            min_version: header.min_version,
        });
    }
    if header.flags & (BLOB_FLAG_ENCRYPTED | BLOB_FLAG_MIGRATION_ENCRYPTED) != 0 {
        return Err(FormatError::StillEncrypted);
    }
    let outer = parse_items(body, HEADER_SIZE)?;
    if outer.iter().any(|i| {
        matches!(
            i.tag,
            TAG_ENCRYPTED_MIGRATION_DATA | TAG_IVEC_ENCRYPTED_MIGRATION_DATA
        )
    }) {
        return Err(FormatError::StillEncrypted);
    }
    let migration = find_unique(&outer, TAG_MIGRATION_DATA)?
        .ok_or(FormatError::MissingTag(TAG_MIGRATION_DATA))?;
    let inner = parse_items(migration.value, migration.offset)?;
    if inner.iter().any(|i| {
        matches!(
            i.tag,
            TAG_ENCRYPTED_DATA | TAG_HMAC | TAG_IVEC_ENCRYPTED_DATA
        )
    }) {
        return Err(FormatError::StillEncrypted);
    }
    let data = find_unique(&inner, TAG_DATA)?.ok_or(FormatError::MissingTag(TAG_DATA))?;
    libtpms_blob(data.value, kind)
}

// ---------------------------------------------------------------------------------------
// Running swtpm

/// A private directory (mode 0700) under the system's temporary directory, removed on drop.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new() -> Result<Scratch, ImportError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let base = std::env::temp_dir();
        for _ in 0..64 {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let path = base.join(format!(
                "vhost-vtpm-import-{}-{}-{nanos:08x}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            // `create`, not `create_all`: fails on anything already there, a symlink included.
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(Scratch { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(ImportError::Scratch { path, source }),
            }
        }
        Err(ImportError::Scratch {
            path: base,
            source: io::Error::new(io::ErrorKind::AlreadyExists, "no free name"),
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// A swtpm child process; killed and reaped when dropped.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        // Fails only if it has exited already; `wait` then reaps it (or returns its status).
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `swtpm socket` serving a state directory, connected to its control channel.
struct Swtpm {
    ctrl: UnixStream,
    log: PathBuf,
    // Last: dropped after the socket is closed.
    process: Reaper,
}

fn unixio(path: &Path) -> OsString {
    let mut arg = OsString::from("type=unixio,path=");
    arg.push(path);
    arg
}

impl Swtpm {
    /// Starts swtpm on `state` (an absolute path) with its sockets and log in `scratch`; the
    /// key or passphrase, if any, goes through a pipe so that it is never copied to disk nor
    /// shown on swtpm's command line.
    fn start(
        state: &Path,
        key: Option<(SwtpmCipher, &Secret)>,
        scratch: &Path,
    ) -> Result<Swtpm, ImportError> {
        let ctrl_path = scratch.join(CTRL_SOCKET);
        let log = scratch.join(SWTPM_LOG);
        let log_file = File::create(&log).map_err(|source| ImportError::Scratch {
            path: log.clone(),
            source,
        })?;
        let mut tpmstate = OsString::from("dir=");
        tpmstate.push(state);
        let mut cmd = Command::new(SWTPM);
        cmd.args(["socket", "--tpm2", "--tpmstate"])
            .arg(tpmstate)
            .arg("--ctrl")
            .arg(unixio(&ctrl_path))
            .arg("--server")
            .arg(unixio(&scratch.join(DATA_SOCKET)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        if let Some((mode, secret)) = key {
            cmd.arg("--key")
                .arg(secret.swtpm_key_option(mode))
                .stdin(Stdio::piped());
        }
        let mut process = Reaper(
            cmd.spawn()
                .map_err(|source| ImportError::SwtpmSpawn { source })?,
        );
        if let (Some((_, secret)), Some(mut pipe)) = (key, process.0.stdin.take()) {
            // One write of at most PIPE_BUF bytes: it lands in the pipe whole, and closing the
            // pipe (at the end of this block) ends a passphrase. A failure means swtpm exited,
            // reported below.
            if let Err(e) = pipe.write_all(secret.bytes()) {
                warn!("passing the key to swtpm: {e}");
            }
        }
        let deadline = Instant::now() + START_TIMEOUT;
        let ctrl = loop {
            let exited = process
                .0
                .try_wait()
                .map_err(|source| ImportError::SwtpmIo {
                    what: "wait",
                    source,
                })?;
            if let Some(status) = exited {
                return Err(ImportError::SwtpmExited {
                    status,
                    log: read_log(&log),
                });
            }
            match UnixStream::connect(&ctrl_path) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Err(_) => {
                    return Err(ImportError::SwtpmStartTimeout {
                        log: read_log(&log),
                    })
                }
            }
        };
        let io = |source| ImportError::SwtpmIo {
            what: "set timeout",
            source,
        };
        ctrl.set_read_timeout(Some(CONTROL_TIMEOUT)).map_err(io)?;
        ctrl.set_write_timeout(Some(CONTROL_TIMEOUT)).map_err(io)?;
        Ok(Swtpm { ctrl, log, process })
    }

    /// Sends a control command and returns the TPM result that starts every answer.
    fn control(&mut self, cmd: u32, payload: &[u8]) -> Result<u32, ImportError> {
        ctrl::command(&mut self.ctrl, cmd, payload)
            .map_err(|(what, source)| ImportError::SwtpmIo { what, source })
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ImportError> {
        self.ctrl
            .read_exact(buf)
            .map_err(|source| ImportError::SwtpmIo {
                what: "control read",
                source,
            })
    }

    /// Fetches `file`'s blob decrypted (`CMD_GET_STATEBLOB`) and unwraps it.
    fn decrypted_blob(&mut self, file: &StateFile) -> Result<Vec<u8>, ImportError> {
        let bad = |reason: String| ImportError::SwtpmBadBlob {
            file: file.path.clone(),
            kind: file.kind,
            reason,
        };
        // From offset 0. Over a socket swtpm answers with the whole blob at once (the offset
        // only matters to its CUSE interface, whose answers are bounded): one request, whose
        // chunk must be the whole.
        let mut req = [0u8; 12];
        req[..4].copy_from_slice(&PTM_STATE_FLAG_DECRYPTED.to_be_bytes());
        req[4..8].copy_from_slice(&file.kind.ptm_type().to_be_bytes());
        req[8..].copy_from_slice(&0u32.to_be_bytes());
        let code = self.control(CMD_GET_STATEBLOB, &req)?;
        if code != 0 {
            return Err(ImportError::SwtpmControl {
                cmd: CMD_GET_STATEBLOB,
                code,
                log: self.log(),
            });
        }
        let mut head = [0u8; 12];
        self.read_exact(&mut head)?;
        let [f0, f1, f2, f3, t0, t1, t2, t3, l0, l1, l2, l3] = head;
        let flags = u32::from_be_bytes([f0, f1, f2, f3]);
        let total = u32::from_be_bytes([t0, t1, t2, t3]) as usize;
        let length = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
        if flags & PTM_STATE_FLAG_ENCRYPTED != 0 {
            return Err(bad("swtpm left it encrypted".into()));
        }
        if length != total {
            return Err(bad(format!("a chunk of {length} bytes of {total}")));
        }
        if total > MAX_FILE {
            return Err(bad(format!("{total} bytes, more than {MAX_FILE}")));
        }
        let mut answer = vec![0u8; total];
        self.read_exact(&mut answer)?;
        parse_stateblob_answer(&answer, file.kind).map_err(|e| bad(e.to_string()))
    }

    /// What swtpm wrote to its log so far, on one line.
    fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Asks swtpm to exit and waits a little for it; dropping kills it if it did not.
    fn shutdown(mut self) {
        match self.control(CMD_SHUTDOWN, &[]) {
            Ok(0) => {}
            Ok(code) => warn!("swtpm CMD_SHUTDOWN returned {code:#x}"),
            Err(e) => warn!("swtpm CMD_SHUTDOWN: {e}"),
        }
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while Instant::now() < deadline {
            match self.process.0.try_wait() {
                Ok(None) => thread::sleep(Duration::from_millis(10)),
                Ok(Some(_)) | Err(_) => return,
            }
        }
        warn!("swtpm did not exit within {EXIT_TIMEOUT:?} of CMD_SHUTDOWN; killing it");
    }
}

/// The last lines of swtpm's log, joined into one line for an error message.
fn read_log(path: &Path) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = lines
        .get(lines.len().saturating_sub(12)..)
        .unwrap_or_default();
    if tail.is_empty() {
        "nothing".to_owned()
    } else {
        tail.join("; ")
    }
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

        fn permall(&self) -> Vec<u8> {
            fs::read(self.state.join(PERMANENT_FILE)).unwrap()
        }
    }

    fn unhex(hex: &str) -> Vec<u8> {
        tpm_proto::hex::decode(hex).unwrap()
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
        let key = f.passphrase(
            "state.pw",
            PASSPHRASE,
            SwtpmCipher::Aes256Cbc,
            SwtpmKdf::Pbkdf2,
        );
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
        let mut swtpm = Swtpm::start(state, key, &scratch.path).unwrap();
        let code = swtpm.control(CMD_INIT, &0u32.to_be_bytes()).unwrap();
        assert_eq!(code, 0, "CMD_INIT: {}", swtpm.log());
        let data = UnixStream::connect(scratch.path.join(DATA_SOCKET)).unwrap();
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

    #[test]
    fn plain_import_is_the_data_item_and_leaves_the_directory_alone() {
        let f = plain_state();
        let before = snapshot(&f.state);
        let blobs = read_swtpm_state(&f.state, None).unwrap();
        assert_eq!(snapshot(&f.state), before);
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
            let before = snapshot(&f.state);
            let blobs = read_swtpm_state(&f.state, Some(&key)).unwrap();
            assert_eq!(snapshot(&f.state), before, "{mode} {format}");
            assert_eq!(blobs.volatile, None);
            // The kind of blob a plain state holds, and not the file's (encrypted) bytes.
            assert!(has_libtpms_magic(&blobs.permanent, BlobKind::Permanent));
            let permall = f.permall();
            assert!(!permall.windows(64).any(|w| blobs.permanent.starts_with(w)));
            let plain = data_item(&plain_state().permall()).len();
            assert!(
                blobs.permanent.len().abs_diff(plain) < 1024,
                "{} bytes, a plain state has {plain}",
                blobs.permanent.len()
            );
            // swtpm serving the imported blob in clear has the EK that it serves from the
            // encrypted directory with the key: the same TPM.
            let imported = plain_dir_with(&blobs);
            assert_eq!(
                ek_of(imported.path(), None),
                ek_of(&f.state, Some((mode, &key_arg(&key)))),
                "{mode} {format}"
            );
            // And the clear copy reads back natively to the same blob.
            assert_eq!(read_swtpm_state(imported.path(), None).unwrap(), blobs);
        }
    }

    #[test]
    fn volatile_state_is_imported_plain_and_encrypted() {
        let f = plain_state();
        let pcr = save_volatile_with_pcr16(&f.state, None);
        let before = snapshot(&f.state);
        let blobs = read_swtpm_state(&f.state, None).unwrap();
        assert_eq!(snapshot(&f.state), before);
        let file = fs::read(f.state.join(VOLATILE_FILE)).unwrap();
        assert_eq!(blobs.volatile.as_deref(), Some(data_item(&file)));
        assert_eq!(pcr16_after_resuming(&blobs), pcr);

        let (f, key) = encrypted_state(SwtpmCipher::Aes256Cbc);
        let pcr = save_volatile_with_pcr16(&f.state, Some((key.mode, &key_arg(&key))));
        let before = snapshot(&f.state);
        let blobs = read_swtpm_state(&f.state, Some(&key)).unwrap();
        // swtpm deletes the volatile state it hands out: it did so in its copy only.
        assert_eq!(snapshot(&f.state), before);
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
        let before = snapshot(&f.state);
        let err = read_swtpm_state(&f.state, Some(&wrong)).unwrap_err();
        assert_eq!(snapshot(&f.state), before);
        match &err {
            ImportError::WrongKey {
                dir,
                key,
                kind,
                code,
                ..
            } => {
                assert_eq!(*dir, f.state);
                assert_eq!(key, wrong.file());
                assert_eq!(*kind, KeyKind::Key);
                assert_ne!(*code, 0);
            }
            other => panic!("{other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&wrong.file().display().to_string()), "{msg}");
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

        let plain = plain_state();
        let err = read_swtpm_state(&plain.state, Some(&key)).unwrap_err();
        assert!(
            matches!(&err, ImportError::NotEncrypted { key: k, .. } if k == key.file()),
            "{err:?}"
        );

        let missing = SwtpmKey::key_file(f.root.join("no.key"), key.mode, SwtpmKeyFormat::Hex);
        let err = read_swtpm_state(&f.state, Some(&missing)).unwrap_err();
        assert!(
            matches!(
                err,
                ImportError::KeyRead {
                    kind: KeyKind::Key,
                    ..
                }
            ),
            "{err:?}"
        );
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
        let pid = tpm.swtpm.process.0.id() as i32;
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
    fn stateblob_answers_are_unwrapped_and_checked() {
        let blob = {
            let mut b = vec![0, 3];
            b.extend_from_slice(&0xab36_4723u32.to_be_bytes());
            b.extend_from_slice(&[7; 100]);
            b
        };
        let answer = |flags: u16, inner_tag: u16| {
            let mut inner = inner_tag.to_be_bytes().to_vec();
            inner.extend_from_slice(&(blob.len() as u32).to_be_bytes());
            inner.extend_from_slice(&blob);
            let mut a = vec![2, 1, 0, 10];
            a.extend_from_slice(&flags.to_be_bytes());
            a.extend_from_slice(&(16 + inner.len() as u32).to_be_bytes());
            a.extend_from_slice(&4u16.to_be_bytes());
            a.extend_from_slice(&(inner.len() as u32).to_be_bytes());
            a.extend_from_slice(&inner);
            a
        };
        assert_eq!(
            parse_stateblob_answer(&answer(4, TAG_DATA), BlobKind::Permanent).unwrap(),
            blob
        );
        assert_eq!(
            parse_stateblob_answer(&answer(4 | 1, TAG_DATA), BlobKind::Permanent),
            Err(FormatError::StillEncrypted)
        );
        assert_eq!(
            parse_stateblob_answer(&answer(4, TAG_ENCRYPTED_DATA), BlobKind::Permanent),
            Err(FormatError::StillEncrypted)
        );
        assert_eq!(
            parse_stateblob_answer(&answer(4, TAG_DATA), BlobKind::Volatile),
            Err(FormatError::NotLibtpms {
                kind: BlobKind::Volatile,
                magic: 0x4563_7889
            })
        );
        // The inner item overruns its container: reported at its offset in the answer.
        let mut a = answer(4, TAG_DATA);
        a[18..22].copy_from_slice(&(blob.len() as u32 + 1).to_be_bytes());
        assert_eq!(
            parse_stateblob_answer(&a, BlobKind::Permanent),
            Err(FormatError::TlvOverrun {
                offset: 16,
                tag: 1,
                len: blob.len() as u32 + 1,
                available: blob.len()
            })
        );
    }

    #[test]
    fn key_files_are_checked() {
        let f = Fixture::new();
        let write = |name: &str, bytes: &[u8], mode, format| {
            let file = f.root.join(name);
            fs::write(&file, bytes).unwrap();
            load_raw_key(&file, format, mode)
        };
        use SwtpmCipher::*;
        use SwtpmKeyFormat::*;

        let key = unhex(KEY_256);
        assert_eq!(write("a", KEY_256.as_bytes(), Aes256Cbc, Hex).unwrap(), key);
        let prefixed = format!("0x{}\r\n", KEY_256.to_uppercase());
        assert_eq!(
            write("b", prefixed.as_bytes(), Aes256Cbc, Hex).unwrap(),
            key
        );
        assert_eq!(write("c", &key, Aes256Cbc, Binary).unwrap(), key);
        assert_eq!(
            write("d", &key[..16], Aes128Cbc, Binary).unwrap(),
            key[..16]
        );

        let refused = |name: &str, bytes: &[u8], mode, format| {
            let err = write(name, bytes, mode, format).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(name), "{msg}");
            assert!(!msg.contains(&KEY_256[8..24]), "the key leaks: {msg}");
            err
        };
        for bad in [
            format!("{}zz\n", &KEY_256[..62]),
            format!("{}\n", &KEY_256[..63]),
            format!("{KEY_256} {KEY_256}\n"),
            "\n".to_owned(),
        ] {
            let err = refused("bad.hex", bad.as_bytes(), Aes256Cbc, Hex);
            assert!(matches!(err, ImportError::KeyFormat { .. }), "{err:?}");
        }
        let err = refused("half.hex", KEY_128.as_bytes(), Aes256Cbc, Hex);
        assert!(
            matches!(
                err,
                ImportError::KeyLength {
                    expected: 32,
                    actual: 16,
                    ..
                }
            ),
            "{err:?}"
        );
        let mut long = key.clone();
        long.push(b'\n');
        let err = refused("long.bin", &long, Aes256Cbc, Binary);
        assert!(
            matches!(
                err,
                ImportError::KeyLength {
                    expected: 32,
                    actual: 33,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn key_option_reads_swtpm_syntax() {
        assert_eq!(
            "file=/k,mode=aes-256-cbc,format=binary,remove=true"
                .parse::<SwtpmKey>()
                .unwrap(),
            SwtpmKey::key_file("/k", SwtpmCipher::Aes256Cbc, SwtpmKeyFormat::Binary)
        );
        assert_eq!(
            "file=/k".parse::<SwtpmKey>().unwrap(),
            SwtpmKey::key_file("/k", SwtpmCipher::Aes128Cbc, SwtpmKeyFormat::Hex)
        );
        assert_eq!(
            "mode=aes-128-cbc,file=k".parse::<SwtpmKey>().unwrap().mode,
            SwtpmCipher::Aes128Cbc
        );
        // Passphrases, with swtpm's defaults (aes-128-cbc, pbkdf2).
        assert_eq!(
            "pwdfile=/p".parse::<SwtpmKey>().unwrap(),
            SwtpmKey::passphrase_file("/p", SwtpmCipher::Aes128Cbc, SwtpmKdf::Pbkdf2)
        );
        let key = "pwdfile=/p,mode=aes-256-cbc,kdf=sha512,remove=true"
            .parse::<SwtpmKey>()
            .unwrap();
        assert_eq!(
            key,
            SwtpmKey::passphrase_file("/p", SwtpmCipher::Aes256Cbc, SwtpmKdf::Sha512)
        );
        assert_eq!(key.file(), Path::new("/p"));
        assert_eq!(key.kind(), KeyKind::Passphrase);
        assert_eq!(
            "kdf=pbkdf2,pwdfile=/p".parse::<SwtpmKey>().unwrap(),
            SwtpmKey::passphrase_file("/p", SwtpmCipher::Aes128Cbc, SwtpmKdf::Pbkdf2)
        );
        for bad in [
            "file=/k,mode=aes-512-cbc",
            "file=/k,format=base64",
            "mode=aes-cbc",
            "file=",
            "pwdfile=",
            "file=/k,bogus",
            "pwdfile=/p,kdf=md5",
            "file=/k,pwdfile=/p",
            "file=/k,kdf=sha512",
            "pwdfile=/p,format=hex",
        ] {
            let err = bad.parse::<SwtpmKey>().unwrap_err();
            assert!(matches!(err, ImportError::KeySpec { .. }), "{bad}: {err:?}");
        }
        // Descriptors (libvirt passes its passphrase as pwdfd=) belong to swtpm's launcher.
        for (bad, instead) in [("pwdfd=3,mode=aes-256-cbc", "pwdfile="), ("fd=3", "file=")] {
            let err = bad.parse::<SwtpmKey>().unwrap_err();
            assert!(matches!(err, ImportError::KeySpec { .. }), "{bad}: {err:?}");
            let msg = err.to_string();
            assert!(
                msg.contains("descriptors are not supported") && msg.contains(instead),
                "{msg}"
            );
        }
    }

    #[test]
    fn passphrase_encrypted_import_is_the_same_tpm_and_leaves_the_directory_alone() {
        let (f, key) = passphrase_state();
        let before = snapshot(&f.state);
        let blobs = read_swtpm_state(&f.state, Some(&key)).unwrap();
        assert_eq!(snapshot(&f.state), before);
        assert_eq!(blobs.volatile, None);
        assert!(has_libtpms_magic(&blobs.permanent, BlobKind::Permanent));
        let permall = f.permall();
        assert!(!permall.windows(64).any(|w| blobs.permanent.starts_with(w)));
        let plain = data_item(&plain_state().permall()).len();
        assert!(
            blobs.permanent.len().abs_diff(plain) < 1024,
            "{} bytes, a plain state has {plain}",
            blobs.permanent.len()
        );
        let imported = plain_dir_with(&blobs);
        assert_eq!(
            ek_of(imported.path(), None),
            ek_of(&f.state, Some((key.mode, &key_arg(&key))))
        );
        assert_eq!(read_swtpm_state(imported.path(), None).unwrap(), blobs);

        // The trailing newline is part of the passphrase, as in swtpm: without it, no match.
        let trimmed = f.passphrase(
            "trimmed.pw",
            PASSPHRASE.trim_ascii_end(),
            key.mode,
            SwtpmKdf::Pbkdf2,
        );
        let err = read_swtpm_state(&f.state, Some(&trimmed)).unwrap_err();
        assert!(matches!(err, ImportError::WrongKey { .. }), "{err:?}");
        assert_eq!(snapshot(&f.state), before);
    }

    #[test]
    fn wrong_passphrase_is_refused_naming_the_passphrase_file() {
        let (f, key) = passphrase_state();
        let before = snapshot(&f.state);
        let wrong = f.passphrase("wrong.pw", WRONG_PASSPHRASE, key.mode, SwtpmKdf::Pbkdf2);
        // The right passphrase with the other kdf or cipher derives another key: only swtpm
        // judges a passphrase, there is no key to check the size of beforehand.
        let other_kdf = SwtpmKey::passphrase_file(key.file(), key.mode, SwtpmKdf::Sha512);
        let other_mode =
            SwtpmKey::passphrase_file(key.file(), SwtpmCipher::Aes128Cbc, SwtpmKdf::Pbkdf2);
        for bad in [&wrong, &other_kdf, &other_mode] {
            let err = read_swtpm_state(&f.state, Some(bad)).unwrap_err();
            assert_eq!(snapshot(&f.state), before);
            match &err {
                ImportError::WrongKey {
                    dir,
                    key,
                    kind,
                    code,
                    ..
                } => {
                    assert_eq!(*dir, f.state);
                    assert_eq!(key, bad.file());
                    assert_eq!(*kind, KeyKind::Passphrase);
                    assert_ne!(*code, 0);
                }
                other => panic!("{other:?}"),
            }
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
        let plain = plain_state();
        let err = read_swtpm_state(&plain.state, Some(&key)).unwrap_err();
        assert!(
            matches!(&err, ImportError::NotEncrypted { key: k, kind: KeyKind::Passphrase, .. }
            if k == key.file()),
            "{err:?}"
        );
        assert!(err.to_string().contains("passphrase file"), "{err}");
        let missing = SwtpmKey::passphrase_file(f.root.join("no.pw"), key.mode, SwtpmKdf::Pbkdf2);
        let err = read_swtpm_state(&f.state, Some(&missing)).unwrap_err();
        assert!(
            matches!(
                err,
                ImportError::KeyRead {
                    kind: KeyKind::Passphrase,
                    ..
                }
            ),
            "{err:?}"
        );
        let long = f.passphrase(
            "long.pw",
            &vec![b'x'; MAX_PASSPHRASE + 1],
            key.mode,
            SwtpmKdf::Pbkdf2,
        );
        let err = read_swtpm_state(&f.state, Some(&long)).unwrap_err();
        assert!(
            matches!(&err, ImportError::PassphraseTooLong { file, max: MAX_PASSPHRASE }
            if file == long.file()),
            "{err:?}"
        );
        assert_eq!(snapshot(&f.state), before);
    }

    #[test]
    fn sha512_passphrase_state_with_volatile_state_is_imported() {
        // swtpm_setup always uses the default kdf; swtpm itself makes a TPM with the other one.
        let f = Fixture::new();
        let key = f.passphrase(
            "state.pw",
            PASSPHRASE,
            SwtpmCipher::Aes256Cbc,
            SwtpmKdf::Sha512,
        );
        let pcr = save_volatile_with_pcr16(&f.state, Some((key.mode, &key_arg(&key))));
        assert!(matches!(
            parse_state_file(&f.permall(), BlobKind::Permanent),
            Ok(Contents::Encrypted {
                key_bits: Some(256)
            })
        ));
        let before = snapshot(&f.state);
        let blobs = read_swtpm_state(&f.state, Some(&key)).unwrap();
        assert_eq!(snapshot(&f.state), before);
        assert!(has_libtpms_magic(&blobs.permanent, BlobKind::Permanent));
        let volatile = blobs.volatile.as_deref().unwrap();
        assert!(has_libtpms_magic(volatile, BlobKind::Volatile));
        assert_eq!(pcr16_after_resuming(&blobs), pcr);

        let pbkdf2 = SwtpmKey::passphrase_file(key.file(), key.mode, SwtpmKdf::Pbkdf2);
        let err = read_swtpm_state(&f.state, Some(&pbkdf2)).unwrap_err();
        assert!(matches!(err, ImportError::WrongKey { .. }), "{err:?}");
    }

    #[test]
    fn secrets_reach_swtpm_as_its_key_option_says() {
        let key = Secret::Key(unhex(KEY_256));
        assert_eq!(
            key.swtpm_key_option(SwtpmCipher::Aes256Cbc),
            "fd=0,mode=aes-256-cbc,format=binary"
        );
        let pw = Secret::Passphrase {
            bytes: PASSPHRASE.to_vec(),
            kdf: SwtpmKdf::Sha512,
        };
        assert_eq!(
            pw.swtpm_key_option(SwtpmCipher::Aes128Cbc),
            "pwdfd=0,mode=aes-cbc,kdf=sha512"
        );
        assert_eq!(pw.bytes(), PASSPHRASE);
        // Debug shows lengths only.
        assert_eq!(
            format!("{key:?} {pw:?}"),
            "Key(32 bytes) Passphrase(29 bytes, sha512)"
        );
    }
}
