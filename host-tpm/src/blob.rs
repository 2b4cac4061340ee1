//! The serialised form of a sealed secret: which PCRs it is bound to and the TPM's public
//! and private parts of the sealed object. The private part is encrypted by the TPM under its
//! storage root key; the blob is useless on any other TPM.

const MAGIC: &[u8; 8] = b"VTPMSEAL";
const VERSION: u8 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlobError {
    #[error("not a sealed-key blob (bad magic)")]
    BadMagic,
    #[error("sealed-key blob version {0} is not supported (this build reads version 1)")]
    Version(u8),
    #[error("sealed-key blob is truncated")]
    Truncated,
    #[error("sealed-key blob has {0} trailing bytes")]
    Trailing(usize),
}

/// A secret sealed by the host TPM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedBlob {
    /// SHA-256 PCRs the secret is bound to (empty: no PCR policy).
    pub pcrs: Vec<u8>,
    /// Marshalled TPMT_PUBLIC of the sealed object.
    pub public: Vec<u8>,
    /// TPM2B_PRIVATE contents of the sealed object.
    pub private: Vec<u8>,
}

impl SealedBlob {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(16 + self.pcrs.len() + self.public.len() + self.private.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(self.pcrs.len() as u8);
        out.extend_from_slice(&self.pcrs);
        for part in [&self.public, &self.private] {
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BlobError> {
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or(BlobError::BadMagic)?;
        let (&version, rest) = rest.split_first().ok_or(BlobError::Truncated)?;
        if version != VERSION {
            return Err(BlobError::Version(version));
        }
        let (&npcrs, rest) = rest.split_first().ok_or(BlobError::Truncated)?;
        let pcrs = rest
            .get(..usize::from(npcrs))
            .ok_or(BlobError::Truncated)?
            .to_vec();
        let mut rest = &rest[usize::from(npcrs)..];
        let mut part = || -> Result<Vec<u8>, BlobError> {
            let len = rest.get(..2).ok_or(BlobError::Truncated)?;
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            let data = rest.get(2..2 + len).ok_or(BlobError::Truncated)?.to_vec();
            rest = &rest[2 + len..];
            Ok(data)
        };
        let public = part()?;
        let private = part()?;
        if !rest.is_empty() {
            return Err(BlobError::Trailing(rest.len()));
        }
        Ok(SealedBlob {
            pcrs,
            public,
            private,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let b = SealedBlob {
            pcrs: vec![7, 16],
            public: vec![1; 50],
            private: vec![2; 70],
        };
        let bytes = b.to_bytes();
        assert_eq!(SealedBlob::from_bytes(&bytes).unwrap(), b);
        for cut in 0..bytes.len() {
            assert!(SealedBlob::from_bytes(&bytes[..cut]).is_err());
        }
        let mut v2 = bytes.clone();
        v2[8] = 2;
        assert_eq!(SealedBlob::from_bytes(&v2), Err(BlobError::Version(2)));
    }
}
