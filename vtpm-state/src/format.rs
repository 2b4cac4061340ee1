//! The bytes of a state file and of its generation record.
//!
//! State file (integers big-endian):
//! `"VTPMSTAT" | format version u16 | flags u16 (0) | instance id [16] | generation u64 |
//! payload length u32 | payload`, where the payload is `nonce [12] | AES-256-GCM ciphertext |
//! tag [16]` under the instance key with the whole header as associated data: the instance id,
//! the format version and the generation cannot be changed without failing authentication.
//! The plaintext is `engine name (u8 length + bytes) | blob count u16 | (name length u8, name,
//! data length u32, data)*`.
//!
//! Generation record: `"VTPMGEN1" | instance id [16] | generation u64 | nonce [12] | tag [16]`,
//! an AES-256-GCM tag over the first three fields under the instance key.

use std::collections::BTreeMap;

use crate::keys::{InstanceId, KeyError, SecretKey, SEAL_OVERHEAD};

pub const STATE_MAGIC: &[u8; 8] = b"VTPMSTAT";
pub const FORMAT_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 8 + 2 + 2 + InstanceId::LEN + 8 + 4;
const ANCHOR_MAGIC: &[u8; 8] = b"VTPMGEN1";
const ANCHOR_PREFIX_LEN: usize = 8 + InstanceId::LEN + 8;
pub const ANCHOR_LEN: usize = ANCHOR_PREFIX_LEN + SEAL_OVERHEAD;
/// Upper bound of a state file; libtpms' permanent state is tens of KiB.
pub const MAX_STATE_LEN: usize = 16 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("not a vhost-vtpm state file (bad magic)")]
    BadMagic,
    #[error(
        "format version {found} is not the version this build reads ({FORMAT_VERSION}); \
         an older or newer vhost-vtpm wrote it, or it was altered"
    )]
    UnsupportedVersion { found: u16 },
    #[error("truncated: {0}")]
    Truncated(String),
    #[error("{0} bytes exceed the {MAX_STATE_LEN}-byte limit")]
    TooLarge(usize),
    #[error(
        "authentication failed: the file was modified, or it is not encrypted under this \
         instance's key"
    )]
    Authentication,
    #[error("authenticated contents are malformed: {0}")]
    Malformed(String),
    #[error("cryptography failed: {0}")]
    Crypto(String),
}

impl From<KeyError> for FormatError {
    fn from(e: KeyError) -> Self {
        FormatError::Crypto(e.to_string())
    }
}

/// The clear-text header of a state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateHeader {
    pub version: u16,
    pub instance: InstanceId,
    pub generation: u64,
    pub payload_len: u32,
}

/// What a state file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateContents {
    /// Engine whose blobs these are (`libtpms`).
    pub engine: String,
    pub blobs: BTreeMap<String, Vec<u8>>,
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn header_bytes(instance: &InstanceId, generation: u64, payload_len: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(STATE_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&instance.0);
    out.extend_from_slice(&generation.to_be_bytes());
    out.extend_from_slice(&payload_len.to_be_bytes());
    out
}

/// A buffer holding clear-text state (the TPM's seeds among it), wiped when dropped.
struct Plaintext(Vec<u8>);

impl Drop for Plaintext {
    fn drop(&mut self) {
        self.0.fill(0);
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    }
}

fn plaintext(engine: &str, blobs: &BTreeMap<String, Vec<u8>>) -> Result<Plaintext, FormatError> {
    let size: usize = blobs.iter().map(|(n, d)| 5 + n.len() + d.len()).sum();
    let mut out = Plaintext(Vec::with_capacity(3 + engine.len() + size));
    let engine = engine.as_bytes();
    let engine_len =
        u8::try_from(engine.len()).map_err(|_| FormatError::Malformed("engine name".into()))?;
    out.0.push(engine_len);
    out.0.extend_from_slice(engine);
    let count =
        u16::try_from(blobs.len()).map_err(|_| FormatError::Malformed("too many blobs".into()))?;
    out.0.extend_from_slice(&count.to_be_bytes());
    for (name, data) in blobs {
        let name_len =
            u8::try_from(name.len()).map_err(|_| FormatError::Malformed("blob name".into()))?;
        out.0.push(name_len);
        out.0.extend_from_slice(name.as_bytes());
        let len = u32::try_from(data.len()).map_err(|_| FormatError::TooLarge(data.len()))?;
        out.0.extend_from_slice(&len.to_be_bytes());
        out.0.extend_from_slice(data);
    }
    if out.0.len() > MAX_STATE_LEN {
        return Err(FormatError::TooLarge(out.0.len()));
    }
    Ok(out)
}

fn parse_plaintext(mut p: &[u8]) -> Result<StateContents, FormatError> {
    let malformed = |what: &str| FormatError::Malformed(what.to_owned());
    let mut take = |n: usize, what: &str| -> Result<Vec<u8>, FormatError> {
        if p.len() < n {
            return Err(malformed(what));
        }
        let (a, b) = p.split_at(n);
        p = b;
        Ok(a.to_vec())
    };
    let engine_len = take(1, "engine name length")?[0] as usize;
    let engine = String::from_utf8(take(engine_len, "engine name")?)
        .map_err(|_| malformed("engine name is not UTF-8"))?;
    let count = be_u16(&take(2, "blob count")?);
    let mut blobs = BTreeMap::new();
    for _ in 0..count {
        let name_len = take(1, "blob name length")?[0] as usize;
        let name = String::from_utf8(take(name_len, "blob name")?)
            .map_err(|_| malformed("blob name is not UTF-8"))?;
        let len = be_u32(&take(4, "blob length")?) as usize;
        let data = take(len, "blob data")?;
        blobs.insert(name, data);
    }
    if !p.is_empty() {
        return Err(malformed("trailing bytes"));
    }
    Ok(StateContents { engine, blobs })
}

/// Encrypts the engine's `blobs` into a complete state file.
pub fn encode(
    key: &SecretKey,
    instance: &InstanceId,
    generation: u64,
    engine: &str,
    blobs: &BTreeMap<String, Vec<u8>>,
) -> Result<Vec<u8>, FormatError> {
    let plain = plaintext(engine, blobs)?;
    let payload_len = (plain.0.len() + SEAL_OVERHEAD) as u32;
    let mut out = header_bytes(instance, generation, payload_len);
    let sealed = key.seal(&out, &plain.0)?;
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Reads the clear-text header, checking magic, version and length (no key needed).
pub fn parse_header(bytes: &[u8]) -> Result<StateHeader, FormatError> {
    if bytes.len() > MAX_STATE_LEN {
        return Err(FormatError::TooLarge(bytes.len()));
    }
    if bytes.len() < STATE_MAGIC.len() || &bytes[..8] != STATE_MAGIC {
        return Err(FormatError::BadMagic);
    }
    if bytes.len() < HEADER_LEN {
        return Err(FormatError::Truncated(format!(
            "{} bytes, shorter than the {HEADER_LEN}-byte header",
            bytes.len()
        )));
    }
    let version = be_u16(&bytes[8..]);
    if version != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion { found: version });
    }
    let mut id = [0u8; InstanceId::LEN];
    id.copy_from_slice(&bytes[12..12 + InstanceId::LEN]);
    let generation = be_u64(&bytes[28..]);
    let payload_len = be_u32(&bytes[36..]);
    let have = bytes.len() - HEADER_LEN;
    if have != payload_len as usize {
        return Err(FormatError::Truncated(format!(
            "payload of {have} bytes where the header says {payload_len}"
        )));
    }
    Ok(StateHeader {
        version,
        instance: InstanceId(id),
        generation,
        payload_len,
    })
}

/// Authenticates and decrypts a state file.
pub fn decode(key: &SecretKey, bytes: &[u8]) -> Result<(StateHeader, StateContents), FormatError> {
    let header = parse_header(bytes)?;
    let (aad, sealed) = bytes.split_at(HEADER_LEN);
    let plain = Plaintext(key.open(aad, sealed).ok_or(FormatError::Authentication)?);
    Ok((header, parse_plaintext(&plain.0)?))
}

/// A generation record for `instance` at `generation`.
pub fn encode_anchor(
    key: &SecretKey,
    instance: &InstanceId,
    generation: u64,
) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::with_capacity(ANCHOR_LEN);
    out.extend_from_slice(ANCHOR_MAGIC);
    out.extend_from_slice(&instance.0);
    out.extend_from_slice(&generation.to_be_bytes());
    let tag = key.seal(&out, &[])?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Authenticates a generation record; returns its instance and generation.
pub fn decode_anchor(key: &SecretKey, bytes: &[u8]) -> Result<(InstanceId, u64), FormatError> {
    if bytes.len() < ANCHOR_MAGIC.len() || &bytes[..8] != ANCHOR_MAGIC {
        return Err(FormatError::BadMagic);
    }
    if bytes.len() != ANCHOR_LEN {
        return Err(FormatError::Truncated(format!(
            "{} bytes, expected {ANCHOR_LEN}",
            bytes.len()
        )));
    }
    let (prefix, tag) = bytes.split_at(ANCHOR_PREFIX_LEN);
    key.open(prefix, tag).ok_or(FormatError::Authentication)?;
    let mut id = [0u8; InstanceId::LEN];
    id.copy_from_slice(&prefix[8..8 + InstanceId::LEN]);
    Ok((InstanceId(id), be_u64(&prefix[8 + InstanceId::LEN..])))
}
