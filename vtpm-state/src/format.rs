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
//!
//! Pure: bytes and keys in, bytes or a [`FormatError`] out. Every buffer that holds blobs in
//! clear (the TPM's seeds among them) wipes itself when dropped.

use std::collections::BTreeMap;
use std::fmt;

use zeroize::Zeroizing;

use crate::keys::{InstanceId, KeyError, SecretKey, SEAL_OVERHEAD};

pub const STATE_MAGIC: &[u8; 8] = b"VTPMSTAT";
pub const FORMAT_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 8 + 2 + 2 + InstanceId::LEN + 8 + 4;
const ANCHOR_MAGIC: &[u8; 8] = b"VTPMGEN1";
const ANCHOR_PREFIX_LEN: usize = 8 + InstanceId::LEN + 8;
pub const ANCHOR_LEN: usize = ANCHOR_PREFIX_LEN + SEAL_OVERHEAD;
/// Upper bound of a state file; libtpms' permanent state is tens of KiB.
pub const MAX_STATE_LEN: usize = 16 << 20;

/// The engine's blobs by name, each wiped when dropped.
pub type Blobs = BTreeMap<String, Zeroizing<Vec<u8>>>;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not a vhost-vtpm state file (bad magic)")]
    BadMagic,
    #[error(
        "format version {found} is not the version this build reads ({FORMAT_VERSION}); \
         an older or newer vhost-vtpm wrote it, or it was altered"
    )]
    UnsupportedVersion { found: u16 },
    #[error("truncated: {0}")]
    Truncated(Truncation),
    #[error("{0} bytes exceed the {MAX_STATE_LEN}-byte limit")]
    TooLarge(usize),
    #[error(
        "authentication failed: the file was modified, or it is not encrypted under this \
         instance's key"
    )]
    Authentication,
    #[error("authenticated contents are malformed: {0}")]
    Malformed(&'static str),
    #[error("authenticated contents are malformed: it holds {found} state, not {expected}")]
    OtherEngine { found: String, expected: String },
    #[error("authenticated contents are malformed: it is for instance {0}")]
    OtherInstance(InstanceId),
    /// Boxed: a key error is large, and this one is rare.
    #[error(transparent)]
    Crypto(Box<KeyError>),
}

impl From<KeyError> for FormatError {
    fn from(e: KeyError) -> Self {
        FormatError::Crypto(Box::new(e))
    }
}

/// How a file is shorter (or longer) than its own header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    /// A state file shorter than its header.
    Header { len: usize },
    /// A state file whose payload is not the length its header gives.
    Payload { have: usize, declared: u32 },
    /// A generation record that is not one or two copies of [`ANCHOR_LEN`] bytes.
    Anchor { len: usize },
}

impl fmt::Display for Truncation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Truncation::Header { len } => {
                write!(f, "{len} bytes, shorter than the {HEADER_LEN}-byte header")
            }
            Truncation::Payload { have, declared } => {
                write!(
                    f,
                    "payload of {have} bytes where the header says {declared}"
                )
            }
            Truncation::Anchor { len } => write!(
                f,
                "{len} bytes, expected {ANCHOR_LEN} or {}",
                2 * ANCHOR_LEN
            ),
        }
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
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StateContents {
    /// Engine whose blobs these are (`libtpms`).
    pub engine: String,
    pub blobs: Blobs,
}

impl fmt::Debug for StateContents {
    /// Blob sizes only: the blobs hold the TPM's seeds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateContents")
            .field("engine", &self.engine)
            .field(
                "blob_lens",
                &self
                    .blobs
                    .iter()
                    .map(|(n, d)| (n, d.len()))
                    .collect::<BTreeMap<_, _>>(),
            )
            .finish()
    }
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

/// The clear text of a state file's payload (the TPM's seeds among it), wiped when dropped.
/// Allocated at its final size, so that no reallocation leaves a copy behind.
fn plaintext(engine: &str, blobs: &Blobs) -> Result<Zeroizing<Vec<u8>>, FormatError> {
    let size: usize = blobs.iter().map(|(n, d)| 5 + n.len() + d.len()).sum();
    let mut out = Zeroizing::new(Vec::with_capacity(3 + engine.len() + size));
    let engine = engine.as_bytes();
    let engine_len =
        u8::try_from(engine.len()).map_err(|_| FormatError::Malformed("engine name"))?;
    out.push(engine_len);
    out.extend_from_slice(engine);
    let count = u16::try_from(blobs.len()).map_err(|_| FormatError::Malformed("too many blobs"))?;
    out.extend_from_slice(&count.to_be_bytes());
    for (name, data) in blobs {
        let name_len = u8::try_from(name.len()).map_err(|_| FormatError::Malformed("blob name"))?;
        out.push(name_len);
        out.extend_from_slice(name.as_bytes());
        let len = u32::try_from(data.len()).map_err(|_| FormatError::TooLarge(data.len()))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(data);
    }
    if out.len() > MAX_STATE_LEN {
        return Err(FormatError::TooLarge(out.len()));
    }
    Ok(out)
}

fn parse_plaintext(mut p: &[u8]) -> Result<StateContents, FormatError> {
    let mut take = |n: usize, what: &'static str| -> Result<&[u8], FormatError> {
        let (a, b) = p.split_at_checked(n).ok_or(FormatError::Malformed(what))?;
        p = b;
        Ok(a)
    };
    let engine_len = take(1, "engine name length")?[0] as usize;
    let engine = std::str::from_utf8(take(engine_len, "engine name")?)
        .map_err(|_| FormatError::Malformed("engine name is not UTF-8"))?
        .to_owned();
    let count = be_u16(take(2, "blob count")?);
    let mut blobs = Blobs::new();
    for _ in 0..count {
        let name_len = take(1, "blob name length")?[0] as usize;
        let name = std::str::from_utf8(take(name_len, "blob name")?)
            .map_err(|_| FormatError::Malformed("blob name is not UTF-8"))?
            .to_owned();
        let len = be_u32(take(4, "blob length")?) as usize;
        let data = take(len, "blob data")?;
        blobs.insert(name, Zeroizing::new(data.to_vec()));
    }
    if !p.is_empty() {
        return Err(FormatError::Malformed("trailing bytes"));
    }
    Ok(StateContents { engine, blobs })
}

/// Encrypts the engine's `blobs` into a complete state file.
pub fn encode(
    key: &SecretKey,
    instance: &InstanceId,
    generation: u64,
    engine: &str,
    blobs: &Blobs,
) -> Result<Vec<u8>, FormatError> {
    let plain = plaintext(engine, blobs)?;
    let payload_len = (plain.len() + SEAL_OVERHEAD) as u32;
    let mut out = header_bytes(instance, generation, payload_len);
    let sealed = key.seal(&out, &plain)?;
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
        return Err(FormatError::Truncated(Truncation::Header {
            len: bytes.len(),
        }));
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
        return Err(FormatError::Truncated(Truncation::Payload {
            have,
            declared: payload_len,
        }));
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
    let plain = key.open(aad, sealed).ok_or(FormatError::Authentication)?;
    Ok((header, parse_plaintext(&plain)?))
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
        return Err(FormatError::Truncated(Truncation::Anchor {
            len: bytes.len(),
        }));
    }
    let (prefix, tag) = bytes.split_at(ANCHOR_PREFIX_LEN);
    key.open(prefix, tag).ok_or(FormatError::Authentication)?;
    let mut id = [0u8; InstanceId::LEN];
    id.copy_from_slice(&prefix[8..8 + InstanceId::LEN]);
    Ok((InstanceId(id), be_u64(&prefix[8 + InstanceId::LEN..])))
}

/// Where the copy of the generation record for `generation` goes in the record file: the
/// file holds two copies written alternately, so a write torn by a crash leaves the other.
pub fn anchor_copy_offset(generation: u64) -> u64 {
    (generation % 2) * ANCHOR_LEN as u64
}

/// A whole generation record file at `generation`: both copies.
pub fn encode_anchor_file(
    key: &SecretKey,
    instance: &InstanceId,
    generation: u64,
) -> Result<Vec<u8>, FormatError> {
    let copy = encode_anchor(key, instance, generation)?;
    Ok([copy.as_slice(), copy.as_slice()].concat())
}

/// Authenticates a generation record file: one copy (earlier builds) or two, of which the
/// newest that authenticates counts, so a copy torn by a crash is passed over. Every copy
/// that authenticates must name the same instance.
pub fn decode_anchor_file(key: &SecretKey, bytes: &[u8]) -> Result<(InstanceId, u64), FormatError> {
    if bytes.len() != ANCHOR_LEN && bytes.len() != 2 * ANCHOR_LEN {
        return Err(FormatError::Truncated(Truncation::Anchor {
            len: bytes.len(),
        }));
    }
    let mut newest: Option<(InstanceId, u64)> = None;
    let mut refused = None;
    for copy in bytes.chunks(ANCHOR_LEN) {
        match decode_anchor(key, copy) {
            Ok((instance, _)) if newest.is_some_and(|(first, _)| first != instance) => {
                return Err(FormatError::OtherInstance(instance))
            }
            Ok((instance, generation)) => {
                if newest.is_none_or(|(_, g)| generation > g) {
                    newest = Some((instance, generation));
                }
            }
            Err(e) => {
                refused.get_or_insert(e);
            }
        }
    }
    match (newest, refused) {
        (Some(found), _) => Ok(found),
        (None, Some(e)) => Err(e),
        (None, None) => Err(FormatError::Truncated(Truncation::Anchor { len: 0 })),
    }
}
