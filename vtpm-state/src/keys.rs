//! Per-instance state keys and the host key that protects them.
//!
//! Every vTPM instance has its own random 256-bit [`InstanceKey`]; its state file is
//! encrypted under it and under nothing else, so one instance's state is useless to another
//! (ADR 0007). The instance key never rests in clear: the instance's key record
//! (`instance.key`) holds it wrapped by the [`HostKey`]:
//! - [`HostKey::Tpm`]: sealed by the host's TPM (through [`host_tpm`]), optionally to a PCR
//!   policy, so the record opens only on that TPM (and only while those PCRs hold).
//! - [`HostKey::File`]: AES-256-GCM under a key file readable only by the daemon's user. It
//!   protects against leaked state directories and backups, not against root on the host;
//!   the daemon warns loudly when it is used.
//!
//! Record layout (all integers big-endian):
//! `"VTPMKEY1" | version u16 | protection u16 | instance id [16] | body length u32 | body`.
//! Body for the host TPM: the sealed blob of `instance id | instance key`. Body for a key
//! file: `host key id [8] | nonce [12] | ciphertext [32] | tag [16]`, with everything before
//! the nonce as associated data; the host key id (a truncated SHA-256 of the host key) lets
//! the daemon tell "wrong host key" from "modified record".

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use host_tpm::{HostTpm, HostTpmError, SealedBlob};
use openssl::hash::{hash, MessageDigest};
use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of an instance key and of a host key file's key.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HOST_KEY_ID_LEN: usize = 8;

const RECORD_MAGIC: &[u8; 8] = b"VTPMKEY1";
const RECORD_VERSION: u16 = 1;
const PROTECTION_HOST_TPM: u16 = 1;
const PROTECTION_KEY_FILE: u16 = 2;
/// Magic, version, protection, instance id, body length.
const RECORD_HEADER_LEN: usize = 8 + 2 + 2 + InstanceId::LEN + 4;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("host key file {path}: {source}")]
    HostKeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("host key file {path}: not a regular file")]
    HostKeyNotFile { path: PathBuf },
    #[error("host key file {path}: expected 32 raw bytes or 64 hex digits")]
    HostKeyFormat { path: PathBuf },
    #[error(
        "host key file {path} is accessible to group or others (mode {mode:04o}): it must be \
         readable only by the daemon's user (chmod 600)"
    )]
    HostKeyFilePermissions { path: PathBuf, mode: u32 },
    #[error(
        "wrong host key: key record {record} was wrapped by host key {expected}, but {given} \
         has id {found}"
    )]
    WrongHostKey {
        record: PathBuf,
        given: PathBuf,
        expected: String,
        found: String,
    },
    #[error("key record {path} is damaged or was modified: {reason}")]
    RecordCorrupt { path: PathBuf, reason: String },
    #[error("key record {path} is protected by {record}, but the daemon was given {configured}")]
    ProtectionMismatch {
        path: PathBuf,
        record: &'static str,
        configured: &'static str,
    },
    #[error("key record {path}: host TPM: {source}")]
    HostTpm {
        path: PathBuf,
        #[source]
        source: HostTpmError,
    },
    #[error("cryptography failed: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
}

/// A vTPM instance's identity, chosen at random when the instance is created.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct InstanceId(pub [u8; InstanceId::LEN]);

impl InstanceId {
    pub const LEN: usize = 16;

    pub fn random() -> Result<Self, KeyError> {
        let mut id = [0u8; Self::LEN];
        openssl::rand::rand_bytes(&mut id)?;
        Ok(InstanceId(id))
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceId({self})")
    }
}

/// A 256-bit secret key, wiped when dropped.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; KEY_LEN]);

impl SecretKey {
    pub fn random() -> Result<Self, KeyError> {
        // Filled in place: no copy of the key is left on the stack.
        let mut k = SecretKey([0u8; KEY_LEN]);
        openssl::rand::rand_bytes(&mut k.0)?;
        Ok(k)
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        SecretKey(bytes)
    }

    /// The key in `bytes`, which the caller has checked are [`KEY_LEN`] long.
    fn copied_from(bytes: &[u8]) -> Self {
        let mut k = SecretKey([0u8; KEY_LEN]);
        k.0.copy_from_slice(bytes);
        k
    }

    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Short public identifier of the key (truncated SHA-256), safe to store and print.
    pub fn id(&self) -> Result<[u8; HOST_KEY_ID_LEN], KeyError> {
        let digest = hash(MessageDigest::sha256(), &self.0)?;
        let mut id = [0u8; HOST_KEY_ID_LEN];
        id.copy_from_slice(&digest[..HOST_KEY_ID_LEN]);
        Ok(id)
    }

    /// AES-256-GCM with a fresh random nonce: returns `nonce | ciphertext | tag`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        openssl::rand::rand_bytes(&mut nonce)?;
        let mut tag = [0u8; TAG_LEN];
        let ct = encrypt_aead(
            Cipher::aes_256_gcm(),
            &self.0,
            Some(&nonce),
            aad,
            plaintext,
            &mut tag,
        )?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens what [`SecretKey::seal`] produced; `None` when it does not authenticate. The
    /// plaintext is wiped when dropped.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        decrypt_aead(Cipher::aes_256_gcm(), &self.0, Some(nonce), aad, ct, tag)
            .ok()
            .map(Zeroizing::new)
    }
}

/// Length overhead of [`SecretKey::seal`].
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Body of a key-file record: host key id and the wrapped instance key.
const KEY_FILE_BODY_LEN: usize = HOST_KEY_ID_LEN + KEY_LEN + SEAL_OVERHEAD;

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// What wraps the instance keys on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKey {
    /// The host TPM reached through `tcti` (e.g. `device:/dev/tpmrm0`); new instance keys are
    /// sealed to the SHA-256 `pcrs` (empty: no PCR policy).
    Tpm { tcti: String, pcrs: Vec<u8> },
    /// A key file holding 32 bytes (raw, or 64 hex digits).
    File(PathBuf),
}

impl HostKey {
    fn kind(&self) -> &'static str {
        match self {
            HostKey::Tpm { .. } => "the host TPM",
            HostKey::File(_) => "a host key file",
        }
    }

    /// Checks what can be checked without using the key: a key file exists, is private and
    /// holds a key.
    pub fn check(&self) -> Result<(), KeyError> {
        match self {
            HostKey::File(path) => load_host_key_file(path).map(drop),
            HostKey::Tpm { .. } => Ok(()),
        }
    }

    /// One line for logs saying how state is protected.
    pub fn describe(&self) -> String {
        match self {
            HostKey::Tpm { tcti, pcrs } if pcrs.is_empty() => {
                format!("sealed by the host TPM ({tcti})")
            }
            HostKey::Tpm { tcti, pcrs } => {
                format!("sealed by the host TPM ({tcti}) to SHA-256 PCRs {pcrs:?}")
            }
            HostKey::File(p) => format!("wrapped by host key file {}", p.display()),
        }
    }

    /// Wraps a new instance's key into a key record.
    pub fn wrap(
        &self,
        id: &InstanceId,
        key: &SecretKey,
        record: &Path,
    ) -> Result<Vec<u8>, KeyError> {
        match self {
            HostKey::Tpm { tcti, pcrs } => {
                let tpm_err = |source| KeyError::HostTpm {
                    path: record.to_owned(),
                    source,
                };
                let mut tpm = HostTpm::connect(tcti).map_err(tpm_err)?;
                let mut secret = Zeroizing::new(Vec::with_capacity(InstanceId::LEN + KEY_LEN));
                secret.extend_from_slice(&id.0);
                secret.extend_from_slice(key.bytes());
                let body = tpm.seal(&secret, pcrs).map_err(tpm_err)?.to_bytes();
                Ok(record_bytes(PROTECTION_HOST_TPM, id, &body))
            }
            HostKey::File(path) => {
                let host = load_host_key_file(path)?;
                let mut aad = record_header(PROTECTION_KEY_FILE, id, KEY_FILE_BODY_LEN as u32);
                let key_id = host.id()?;
                aad.extend_from_slice(&key_id);
                let wrapped = host.seal(&aad, key.bytes())?;
                let mut body = key_id.to_vec();
                body.extend_from_slice(&wrapped);
                Ok(record_bytes(PROTECTION_KEY_FILE, id, &body))
            }
        }
    }

    /// Opens a key record: returns the instance id it belongs to and its key.
    pub fn unwrap(&self, record: &Path, bytes: &[u8]) -> Result<(InstanceId, SecretKey), KeyError> {
        let corrupt = |reason: &str| KeyError::RecordCorrupt {
            path: record.to_owned(),
            reason: reason.to_owned(),
        };
        if bytes.len() < RECORD_HEADER_LEN || &bytes[..8] != RECORD_MAGIC {
            return Err(corrupt(
                "not a vhost-vtpm key record (bad magic or too short)",
            ));
        }
        let version = u16::from_be_bytes([bytes[8], bytes[9]]);
        if version != RECORD_VERSION {
            return Err(corrupt(&format!(
                "key record version {version} is not supported (this build reads {RECORD_VERSION})"
            )));
        }
        let protection = u16::from_be_bytes([bytes[10], bytes[11]]);
        let mut id = [0u8; InstanceId::LEN];
        id.copy_from_slice(&bytes[12..12 + InstanceId::LEN]);
        let id = InstanceId(id);
        let len_at = 12 + InstanceId::LEN;
        let body_len = u32::from_be_bytes([
            bytes[len_at],
            bytes[len_at + 1],
            bytes[len_at + 2],
            bytes[len_at + 3],
        ]) as usize;
        let body = &bytes[RECORD_HEADER_LEN..];
        if body.len() != body_len {
            return Err(corrupt(&format!(
                "body of {} bytes where the header says {body_len}",
                body.len()
            )));
        }
        let record_kind = match protection {
            PROTECTION_HOST_TPM => "the host TPM",
            PROTECTION_KEY_FILE => "a host key file",
            other => return Err(corrupt(&format!("unknown protection {other}"))),
        };
        match (self, protection) {
            (HostKey::Tpm { tcti, .. }, PROTECTION_HOST_TPM) => {
                let blob = SealedBlob::from_bytes(body).map_err(|e| corrupt(&e.to_string()))?;
                let tpm_err = |source| KeyError::HostTpm {
                    path: record.to_owned(),
                    source,
                };
                let mut tpm = HostTpm::connect(tcti).map_err(tpm_err)?;
                let secret = Zeroizing::new(tpm.unseal(&blob).map_err(tpm_err)?);
                if secret.len() != InstanceId::LEN + KEY_LEN {
                    Err(corrupt("the sealed secret has the wrong length"))
                } else if secret[..InstanceId::LEN] != id.0 {
                    Err(corrupt("the sealed secret belongs to another instance"))
                } else {
                    Ok((id, SecretKey::copied_from(&secret[InstanceId::LEN..])))
                }
            }
            (HostKey::File(path), PROTECTION_KEY_FILE) => {
                let host = load_host_key_file(path)?;
                if body.len() != KEY_FILE_BODY_LEN {
                    return Err(corrupt("wrapped key has the wrong length"));
                }
                let (key_id, wrapped) = body.split_at(HOST_KEY_ID_LEN);
                let given_id = host.id()?;
                if key_id != given_id {
                    return Err(KeyError::WrongHostKey {
                        record: record.to_owned(),
                        given: path.clone(),
                        expected: hex::encode(key_id),
                        found: hex::encode(given_id),
                    });
                }
                let mut aad = bytes[..RECORD_HEADER_LEN].to_vec();
                aad.extend_from_slice(key_id);
                let plain = host
                    .open(&aad, wrapped)
                    .ok_or_else(|| corrupt("the wrapped key does not authenticate"))?;
                if plain.len() != KEY_LEN {
                    return Err(corrupt("the wrapped key has the wrong length"));
                }
                Ok((id, SecretKey::copied_from(&plain)))
            }
            _ => Err(KeyError::ProtectionMismatch {
                path: record.to_owned(),
                record: record_kind,
                configured: self.kind(),
            }),
        }
    }
}

fn record_header(protection: u16, id: &InstanceId, body_len: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN);
    out.extend_from_slice(RECORD_MAGIC);
    out.extend_from_slice(&RECORD_VERSION.to_be_bytes());
    out.extend_from_slice(&protection.to_be_bytes());
    out.extend_from_slice(&id.0);
    out.extend_from_slice(&body_len.to_be_bytes());
    out
}

fn record_bytes(protection: u16, id: &InstanceId, body: &[u8]) -> Vec<u8> {
    let mut out = record_header(protection, id, body.len() as u32);
    out.extend_from_slice(body);
    out
}

/// Reads a host key file, refusing one that others can read.
pub fn load_host_key_file(path: &Path) -> Result<SecretKey, KeyError> {
    use std::os::unix::fs::MetadataExt;
    let bad = |source| KeyError::HostKeyFile {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(bad)?;
    if !meta.is_file() {
        return Err(KeyError::HostKeyNotFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::HostKeyFilePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let raw = Zeroizing::new(fs::read(path).map_err(bad)?);
    decode_key(&raw).ok_or_else(|| KeyError::HostKeyFormat {
        path: path.to_owned(),
    })
}

/// A host key file's contents: 32 raw bytes, or 64 hex digits with optional surrounding
/// whitespace (a trailing newline). Works on bytes, so any input is safe.
fn decode_key(raw: &[u8]) -> Option<SecretKey> {
    if raw.len() == KEY_LEN {
        return Some(SecretKey::copied_from(raw));
    }
    // Decoded into the key itself: a partly decoded key is wiped with it.
    let mut key = SecretKey([0u8; KEY_LEN]);
    hex::decode_to_slice(raw.trim_ascii(), &mut key.0).ok()?;
    Some(key)
}

/// Creates a new host key file (mode 0600) holding 64 hex digits; refuses to overwrite.
/// Returns the [`HostKey`] that names it.
pub fn generate_host_key_file(path: &Path) -> Result<HostKey, KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let bad = |source| KeyError::HostKeyFile {
        path: path.to_owned(),
        source,
    };
    let key = SecretKey::random()?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(bad)?;
    // Hex digits and a newline, encoded in place so that no copy of the key is left behind.
    let mut text = Zeroizing::new([b'\n'; 2 * KEY_LEN + 1]);
    hex::encode_to_slice(key.bytes(), &mut text[..2 * KEY_LEN])
        .map_err(|e| bad(std::io::Error::other(e)))?;
    f.write_all(&text[..]).map_err(bad)?;
    f.sync_all().map_err(bad)?;
    Ok(HostKey::File(path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &Path, contents: &[u8], mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("k");
        fs::write(&p, contents).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn host_key_files_in_hex_or_raw() {
        let dir = tempfile::tempdir().unwrap();
        let raw = [7u8; KEY_LEN];
        let a = load_host_key_file(&key_file(dir.path(), &raw, 0o600)).unwrap();
        let b = load_host_key_file(&key_file(
            dir.path(),
            format!("{}\n", hex::encode(raw)).as_bytes(),
            0o400,
        ))
        .unwrap();
        assert_eq!(a.bytes(), b.bytes());
        // Not hex, too short, and 64 bytes that are not ASCII (no panic on a char boundary).
        let multibyte = format!("a{}b", "é".repeat(31));
        for bad in [&b"short"[..], &[b'z'; 64][..], multibyte.as_bytes()] {
            let err = load_host_key_file(&key_file(dir.path(), bad, 0o600)).unwrap_err();
            assert!(matches!(err, KeyError::HostKeyFormat { .. }), "{err}");
        }
    }

    #[test]
    fn generated_key_file_is_private_and_not_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("host.key");
        generate_host_key_file(&p).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let first = fs::read(&p).unwrap();
        assert!(generate_host_key_file(&p).is_err());
        assert_eq!(fs::read(&p).unwrap(), first);
        load_host_key_file(&p).unwrap();
    }

    #[test]
    fn key_record_round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let host = generate_host_key_file(&dir.path().join("host.key")).unwrap();
        let id = InstanceId::random().unwrap();
        let key = SecretKey::random().unwrap();
        let record_path = dir.path().join("instance.key");
        let record = host.wrap(&id, &key, &record_path).unwrap();
        let (id2, key2) = host.unwrap(&record_path, &record).unwrap();
        assert_eq!(id2, id);
        assert_eq!(key2.bytes(), key.bytes());
        // A changed instance id (authenticated) or wrapped key fails.
        for at in [14, record.len() - 3] {
            let mut bad = record.clone();
            bad[at] ^= 1;
            let err = host.unwrap(&record_path, &bad).unwrap_err();
            assert!(matches!(err, KeyError::RecordCorrupt { .. }), "{err}");
        }
        // A record for the host TPM is not opened with a key file.
        let tpm = HostKey::Tpm {
            tcti: "device:/nonexistent".into(),
            pcrs: vec![],
        };
        let err = tpm.unwrap(&record_path, &record).unwrap_err();
        assert!(matches!(err, KeyError::ProtectionMismatch { .. }), "{err}");
    }

    #[test]
    fn aead_rejects_other_keys_and_associated_data() {
        let a = SecretKey::random().unwrap();
        let b = SecretKey::random().unwrap();
        let sealed = a.seal(b"aad", b"secret").unwrap();
        assert_eq!(a.open(b"aad", &sealed).unwrap().as_slice(), b"secret");
        assert!(b.open(b"aad", &sealed).is_none());
        assert!(a.open(b"other", &sealed).is_none());
        assert!(a.open(b"aad", &sealed[..10]).is_none());
    }
}
