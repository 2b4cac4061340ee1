//! The serialised form of a whole vTPM instance ([`EngineState`]): the plaintext that a
//! sealed migration package encrypts ([`crate::seal`]). Pure: bytes in, bytes out.
//!
//! Layout: magic `VTPMSNP1`, then the permanent blob and the volatile blob, each as a
//! big-endian u32 length and the bytes. It exists only inside one process, between the
//! engine and the package's encryption: it never crosses a wire or rests on disk (a package
//! decoder refuses one by its magic). It holds the TPM's secrets, so every buffer here wipes
//! itself when dropped.
//!
//! [`encode`] takes the whole [`EngineState`] apart field by field, so a field added to it
//! does not compile until it is carried here too.

use coprocessor::{EngineState, MAX_STATE_BLOB};
use zeroize::Zeroizing;

/// The snapshot's magic; a package decoder recognises (and refuses) a plain snapshot by it.
pub const MAGIC: &[u8; 8] = b"VTPMSNP1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("not a vTPM snapshot (bad magic)")]
    BadMagic,
    #[error("vTPM snapshot truncated")]
    Truncated,
    #[error("vTPM snapshot blob of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("{0} trailing bytes after the vTPM snapshot")]
    Trailing(usize),
}

/// The snapshot of `state` (allocated at its final size: no reallocation leaves a copy).
pub fn encode(state: &EngineState) -> Zeroizing<Vec<u8>> {
    let EngineState {
        permanent,
        volatile,
    } = state;
    let mut out = Zeroizing::new(Vec::with_capacity(16 + permanent.len() + volatile.len()));
    out.extend_from_slice(MAGIC);
    for blob in [permanent, volatile] {
        out.extend_from_slice(&(blob.len() as u32).to_be_bytes());
        out.extend_from_slice(blob);
    }
    out
}

/// The instance a snapshot holds; every malformed snapshot is refused.
pub fn decode(mut buf: &[u8]) -> Result<EngineState, SnapshotError> {
    if buf.len() < MAGIC.len() || &buf[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    buf = &buf[MAGIC.len()..];
    let mut blob = || -> Result<Zeroizing<Vec<u8>>, SnapshotError> {
        let len_bytes: [u8; 4] = buf
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or(SnapshotError::Truncated)?;
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > MAX_STATE_BLOB {
            return Err(SnapshotError::TooLarge(len));
        }
        let data = buf.get(4..4 + len).ok_or(SnapshotError::Truncated)?;
        buf = &buf[4 + len..];
        Ok(Zeroizing::new(data.to_vec()))
    };
    let mut permanent = blob()?;
    let mut volatile = blob()?;
    if !buf.is_empty() {
        return Err(SnapshotError::Trailing(buf.len()));
    }
    // Moved, not copied, into the state (which wipes them in turn).
    Ok(EngineState {
        permanent: std::mem::take(&mut *permanent),
        volatile: std::mem::take(&mut *volatile),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_truncation_is_refused() {
        let s = EngineState {
            permanent: vec![1, 2, 3],
            volatile: vec![9; 40],
        };
        let enc = encode(&s);
        assert_eq!(decode(&enc).unwrap(), s);
        for cut in 0..enc.len() {
            assert!(decode(&enc[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = enc.clone();
        extra.push(0);
        assert_eq!(decode(&extra), Err(SnapshotError::Trailing(1)));
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode(&huge), Err(SnapshotError::TooLarge(_))));
    }
}
