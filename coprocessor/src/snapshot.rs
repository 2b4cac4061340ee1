//! The serialised form of a whole vTPM instance, as it travels inside a live migration
//! (vhost-user DEVICE_STATE) between two daemons.
//!
//! Layout: magic `VTPMSNP1`, then the permanent blob and the volatile blob, each as a
//! big-endian u32 length and the bytes. The snapshot is not protected here: inside QEMU's
//! migration stream it is as trusted as the guest's memory; the signed, encrypted migration
//! package of the migration controller wraps it for untrusted transports.

const MAGIC: &[u8; 8] = b"VTPMSNP1";
/// Upper bound for one blob; libtpms' permanent state is tens of KiB.
pub const MAX_BLOB: usize = 4 << 20;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub permanent: Vec<u8>,
    pub volatile: Vec<u8>,
}

impl Snapshot {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.permanent.len() + self.volatile.len());
        out.extend_from_slice(MAGIC);
        for blob in [&self.permanent, &self.volatile] {
            out.extend_from_slice(&(blob.len() as u32).to_be_bytes());
            out.extend_from_slice(blob);
        }
        out
    }

    pub fn decode(mut buf: &[u8]) -> Result<Self, SnapshotError> {
        if buf.len() < MAGIC.len() || &buf[..MAGIC.len()] != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        buf = &buf[MAGIC.len()..];
        let mut blob = || -> Result<Vec<u8>, SnapshotError> {
            let len_bytes: [u8; 4] = buf
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or(SnapshotError::Truncated)?;
            let len = u32::from_be_bytes(len_bytes) as usize;
            if len > MAX_BLOB {
                return Err(SnapshotError::TooLarge(len));
            }
            let data = buf
                .get(4..4 + len)
                .ok_or(SnapshotError::Truncated)?
                .to_vec();
            buf = &buf[4 + len..];
            Ok(data)
        };
        let permanent = blob()?;
        let volatile = blob()?;
        if !buf.is_empty() {
            return Err(SnapshotError::Trailing(buf.len()));
        }
        Ok(Snapshot {
            permanent,
            volatile,
        })
    }
}

#[cfg(test)]
#[path = "tests/snapshot.rs"]
mod tests;
