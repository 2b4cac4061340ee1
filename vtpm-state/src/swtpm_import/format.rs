//! swtpm's state blob format, parsed: bytes in, a libtpms blob (or "encrypted") or a
//! [`FormatError`] out. Pure (no I/O, no process), so it can be tested and fuzzed alone.
//!
//! swtpm keeps each libtpms blob in a file `tpm2-00.<blob>`: a 10-byte header (`version: u8`,
//! `min_version: u8`, `hdrsize: u16`, `flags: u16`, `totlen: u32`, big-endian), then
//! tag-length-value items (`tag: u16`, `len: u32`, value). Plain state is one item with tag 1
//! holding the libtpms blob. Also read: the two older layouts that swtpm (0.7.1, verified)
//! still reads, a version-1 header followed by the bare blob, and the bare blob with no
//! header at all, recognised by libtpms' own magic number. swtpm's answer to
//! `CMD_GET_STATEBLOB` for a decrypted blob has the same header and items, one level deeper.

use std::fmt;

use zeroize::Zeroizing;

use coprocessor::MAX_STATE_BLOB as MAX_BLOB;

/// Largest state file accepted: one blob plus swtpm's headers, MAC, IV and padding.
pub const MAX_FILE: usize = MAX_BLOB + 4096;

const HEADER_SIZE: usize = 10;
const TLV_HEADER_SIZE: usize = 6;

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

/// What a state file holds.
#[derive(PartialEq, Eq)]
pub enum Contents {
    /// The libtpms blob in clear (wiped when dropped).
    Plain(Zeroizing<Vec<u8>>),
    /// Encrypted by swtpm; the key size is known from version-2 headers only.
    Encrypted { key_bits: Option<usize> },
}

impl fmt::Debug for Contents {
    /// The size only: the blob holds the TPM's seeds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Contents::Plain(blob) => write!(f, "Plain({} bytes)", blob.len()),
            Contents::Encrypted { key_bits } => f
                .debug_struct("Encrypted")
                .field("key_bits", key_bits)
                .finish(),
        }
    }
}

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

/// Whether `blob` starts like a libtpms blob of `kind`: a u16 version, then its magic.
pub fn has_libtpms_magic(blob: &[u8], kind: BlobKind) -> bool {
    blob.get(2..6) == Some(&kind.magic().to_be_bytes()[..])
}

fn libtpms_blob(blob: &[u8], kind: BlobKind) -> Result<Zeroizing<Vec<u8>>, FormatError> {
    if has_libtpms_magic(blob, kind) {
        Ok(Zeroizing::new(blob.to_vec()))
    } else {
        Err(FormatError::NotLibtpms {
            kind,
            magic: kind.magic(),
        })
    }
}

/// Parses a state file as swtpm stores it.
pub fn parse_state_file(bytes: &[u8], kind: BlobKind) -> Result<Contents, FormatError> {
    // The bare blob, as swtpm wrote it before it had headers (a header has its size, 10, where
    // libtpms has its magic, so the two cannot be confused).
    if has_libtpms_magic(bytes, kind) {
        return Ok(Contents::Plain(Zeroizing::new(bytes.to_vec())));
    }
    let (header, body) = parse_header(bytes)?;
    let encrypted_flag = header.flags & BLOB_FLAG_ENCRYPTED != 0;
    if header.version == 1 {
        // Version 1: the blob, or its encryption (without IV or MAC, so not recognisable but
        // by the missing magic), follows the header directly.
        return Ok(if encrypted_flag || !has_libtpms_magic(body, kind) {
            Contents::Encrypted { key_bits: None }
        } else {
            Contents::Plain(Zeroizing::new(body.to_vec()))
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
pub fn parse_stateblob_answer(
    bytes: &[u8],
    kind: BlobKind,
) -> Result<Zeroizing<Vec<u8>>, FormatError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A libtpms permanent blob: version, magic, payload.
    fn blob() -> Vec<u8> {
        let mut b = vec![0, 3];
        b.extend_from_slice(&0xab36_4723u32.to_be_bytes());
        b.extend_from_slice(&[7; 100]);
        b
    }

    /// A version-2 file with `flags` holding `items` (tag, value).
    fn file(flags: u16, items: &[(u16, &[u8])]) -> Vec<u8> {
        let mut f = vec![2, 1, 0, 10];
        f.extend_from_slice(&flags.to_be_bytes());
        f.extend_from_slice(&[0; 4]);
        for (tag, value) in items {
            f.extend_from_slice(&tag.to_be_bytes());
            f.extend_from_slice(&(value.len() as u32).to_be_bytes());
            f.extend_from_slice(value);
        }
        let len = f.len() as u32;
        f[6..10].copy_from_slice(&len.to_be_bytes());
        f
    }

    fn plain(contents: Contents) -> Vec<u8> {
        match contents {
            Contents::Plain(blob) => blob.to_vec(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_layout_swtpm_reads_is_parsed() {
        let blob = blob();
        let kind = BlobKind::Permanent;
        assert_eq!(
            plain(parse_state_file(&file(0, &[(TAG_DATA, &blob)]), kind).unwrap()),
            blob
        );
        // The bare blob, and a version-1 header before it.
        assert_eq!(plain(parse_state_file(&blob, kind).unwrap()), blob);
        let mut v1 = vec![1, 1, 0, 10, 0, 0];
        v1.extend_from_slice(&(10 + blob.len() as u32).to_be_bytes());
        v1.extend_from_slice(&blob);
        assert_eq!(plain(parse_state_file(&v1, kind).unwrap()), blob);
        // Encrypted: by the header's flag, by an encrypted item, by a version-1 body without
        // the magic; the key size from the flag.
        for (flags, tag, bits) in [
            (BLOB_FLAG_ENCRYPTED, TAG_DATA, 128),
            (
                BLOB_FLAG_ENCRYPTED | BLOB_FLAG_ENCRYPTED_256BIT_KEY,
                TAG_DATA,
                256,
            ),
            (0, TAG_IVEC_ENCRYPTED_DATA, 128),
        ] {
            assert_eq!(
                parse_state_file(&file(flags, &[(tag, &blob)]), kind).unwrap(),
                Contents::Encrypted {
                    key_bits: Some(bits)
                }
            );
        }
        v1[13] ^= 0xff;
        assert_eq!(
            parse_state_file(&v1, kind).unwrap(),
            Contents::Encrypted { key_bits: None }
        );
        // A blob of the other kind is not taken for this one.
        assert_eq!(
            parse_state_file(&file(0, &[(TAG_DATA, &blob)]), BlobKind::Volatile),
            Err(FormatError::NotLibtpms {
                kind: BlobKind::Volatile,
                magic: 0x4563_7889
            })
        );
    }

    #[test]
    fn every_cut_and_every_flipped_byte_is_handled_without_panic() {
        let good = file(0, &[(TAG_DATA, &blob())]);
        for cut in 0..good.len() {
            assert!(
                parse_state_file(&good[..cut], BlobKind::Permanent).is_err(),
                "cut at {cut}"
            );
        }
        for at in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[at] ^= 1 << bit;
                let _ = parse_state_file(&bad, BlobKind::Permanent);
                let _ = parse_stateblob_answer(&bad, BlobKind::Permanent);
            }
        }
    }

    #[test]
    fn stateblob_answers_are_unwrapped_and_checked() {
        let blob = blob();
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
            *parse_stateblob_answer(&answer(4, TAG_DATA), BlobKind::Permanent).unwrap(),
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
}
