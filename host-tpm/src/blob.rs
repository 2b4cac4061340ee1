//! The serialised forms of what the host TPM creates for later use: a sealed secret
//! ([`SealedBlob`]: which PCRs it is bound to and the sealed object's public and private
//! parts) and a key ([`ObjectBlob`]: its public and private parts, e.g. the host AIK). The
//! private parts are encrypted by the TPM under its storage root key; a blob is useless on
//! any other TPM.
//!
//! Both are `magic | version u8 | ... | u16-length-prefixed parts`, big-endian.

const MAGIC: &[u8; 8] = b"VTPMSEAL";
const VERSION: u8 = 1;
const OBJECT_MAGIC: &[u8; 8] = b"VTPMOBJ1";
const OBJECT_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlobError {
    #[error("not a host TPM blob of the expected kind (bad magic)")]
    BadMagic,
    #[error("host TPM blob version {0} is not supported (this build reads version 1)")]
    Version(u8),
    #[error("host TPM blob is truncated")]
    Truncated,
    #[error("host TPM blob has {0} trailing bytes")]
    Trailing(usize),
}

/// Checks magic and version; returns the rest.
fn header<'a>(bytes: &'a [u8], magic: &[u8; 8], version: u8) -> Result<&'a [u8], BlobError> {
    let rest = bytes
        .strip_prefix(magic.as_slice())
        .ok_or(BlobError::BadMagic)?;
    let (&v, rest) = rest.split_first().ok_or(BlobError::Truncated)?;
    if v != version {
        return Err(BlobError::Version(v));
    }
    Ok(rest)
}

/// Reads one u16-length-prefixed part off the front of `rest`.
fn part(rest: &mut &[u8]) -> Result<Vec<u8>, BlobError> {
    let len = rest.get(..2).ok_or(BlobError::Truncated)?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let data = rest.get(2..2 + len).ok_or(BlobError::Truncated)?.to_vec();
    *rest = &rest[2 + len..];
    Ok(data)
}

/// Appends a u16-length-prefixed part. TPM structures are far below 64 KiB; a larger part
/// is cut at 65535 bytes (keeping the blob well-formed) rather than corrupting the framing.
fn push_part(out: &mut Vec<u8>, part: &[u8]) {
    let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&part[..usize::from(len)]);
}

/// A TPM object's public and private parts, loadable under the host TPM's storage root key
/// (the host AIK is kept this way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectBlob {
    /// Marshalled TPMT_PUBLIC (`tss_esapi::structures::Public::unmarshall` reads it).
    pub public: Vec<u8>,
    /// TPM2B_PRIVATE contents (encrypted by the TPM under its storage root key).
    pub private: Vec<u8>,
}

impl ObjectBlob {
    /// `VTPMOBJ1 | version 1 | u16 len | public | u16 len | private`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(13 + self.public.len() + self.private.len());
        out.extend_from_slice(OBJECT_MAGIC);
        out.push(OBJECT_VERSION);
        push_part(&mut out, &self.public);
        push_part(&mut out, &self.private);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BlobError> {
        let mut rest = header(bytes, OBJECT_MAGIC, OBJECT_VERSION)?;
        let public = part(&mut rest)?;
        let private = part(&mut rest)?;
        if !rest.is_empty() {
            return Err(BlobError::Trailing(rest.len()));
        }
        Ok(ObjectBlob { public, private })
    }
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
        push_part(&mut out, &self.public);
        push_part(&mut out, &self.private);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BlobError> {
        let rest = header(bytes, MAGIC, VERSION)?;
        let (&npcrs, rest) = rest.split_first().ok_or(BlobError::Truncated)?;
        let pcrs = rest
            .get(..usize::from(npcrs))
            .ok_or(BlobError::Truncated)?
            .to_vec();
        let mut rest = &rest[usize::from(npcrs)..];
        let public = part(&mut rest)?;
        let private = part(&mut rest)?;
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

    #[test]
    fn object_blob_round_trip_and_errors() {
        let b = ObjectBlob {
            public: vec![3; 90],
            private: vec![4; 126],
        };
        let bytes = b.to_bytes();
        assert_eq!(&bytes[..9], b"VTPMOBJ1\x01");
        assert_eq!(ObjectBlob::from_bytes(&bytes).unwrap(), b);
        for cut in 0..bytes.len() {
            assert!(ObjectBlob::from_bytes(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut v2 = bytes.clone();
        v2[8] = 2;
        assert_eq!(ObjectBlob::from_bytes(&v2), Err(BlobError::Version(2)));
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(ObjectBlob::from_bytes(&long), Err(BlobError::Trailing(1)));
        // A sealed blob is not an object blob, nor the other way round.
        let sealed = SealedBlob {
            pcrs: vec![],
            public: vec![1],
            private: vec![2],
        }
        .to_bytes();
        assert_eq!(ObjectBlob::from_bytes(&sealed), Err(BlobError::BadMagic));
        assert_eq!(SealedBlob::from_bytes(&bytes), Err(BlobError::BadMagic));
        let huge = ObjectBlob {
            public: vec![0; 70000],
            private: vec![],
        };
        let cut = ObjectBlob::from_bytes(&huge.to_bytes()).unwrap();
        assert_eq!(cut.public.len(), 65535);
    }
}
