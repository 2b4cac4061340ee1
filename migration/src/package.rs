//! The sealed migration package (`VTPMMIG1`): what a source daemon releases and a
//! destination daemon imports, inside QEMU's migration stream or as a file (ADR 0010).
//! Pure: bytes in, bytes out, bounded sizes, every malformed package refused with a named
//! [`PackageError`].
//!
//! Layout (integers big-endian):
//!
//! ```text
//! header (the AES-GCM associated data):
//!   "VTPMMIG1" | version u16 | migration id [16] | instance id [16]
//!   | VM id (u8 len) | source host id (u8 len) | destination host id (u8 len)
//!   | epoch u64 | ticket (u16 len) | ephemeral public key [65] | nonce [12]
//! body:
//!   ciphertext (u32 len; AES-256-GCM of the instance, tag appended)
//!   | chain: count u8, then each certificate (u16 len, DER): coprocessor, host AIK
//! signature (u16 len, DER ECDSA P-256 by the source coprocessor key over every byte before
//! its length)
//! ```
//!
//! A `VTPMSNP1` plain snapshot of earlier builds is recognised and refused as such
//! ([`PackageError::PlainSnapshot`]).

use vtpm_state::keys::InstanceId;

use crate::snapshot;
use crate::ticket::{
    MigrationId, Route, MAX_HOST_ID, MAX_SIGNATURE, MAX_TICKET, MAX_VM_ID, POINT_LEN,
};
use crate::wire::{check_point, put_prefixed, FieldError, Reader};

pub const MAGIC: &[u8; 8] = b"VTPMMIG1";
pub const VERSION: u16 = 1;
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Largest ciphertext: a snapshot of two blobs at their limit, and the tag.
pub const MAX_CIPHERTEXT: usize = 2 * coprocessor::MAX_STATE_BLOB + 64;
/// Certificates in the chain (the coprocessor's and the host AIK's; room for intermediates).
pub const MAX_CHAIN: usize = 4;
/// Largest certificate in the chain.
pub const MAX_CERT: usize = 16 << 10;

/// The authenticated header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub migration: MigrationId,
    pub instance: InstanceId,
    pub vm: String,
    pub source: String,
    pub destination: String,
    pub epoch: u64,
    /// The controller's signed ticket, as it was issued.
    pub ticket: Vec<u8>,
    /// The source's ephemeral ECDH public key (uncompressed P-256 point).
    pub ephemeral: [u8; POINT_LEN],
    pub nonce: [u8; NONCE_LEN],
}

/// A decoded package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub header: Header,
    /// The header's bytes (the associated data of the ciphertext).
    pub header_bytes: Vec<u8>,
    pub ciphertext: Vec<u8>,
    /// DER certificates: the source's coprocessor certificate, then its issuers.
    pub chain: Vec<Vec<u8>>,
    /// DER ECDSA.
    pub signature: Vec<u8>,
    /// Every byte the signature covers.
    pub signed: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    #[error(
        "a plain vTPM snapshot (VTPMSNP1) of an earlier build: this build accepts only sealed, \
         signed migration packages"
    )]
    PlainSnapshot,
    #[error("not a migration package (bad magic)")]
    BadMagic,
    #[error("migration package version {0} is not supported (this build reads {VERSION})")]
    UnsupportedVersion(u16),
    #[error("migration package: {0}")]
    Field(#[from] FieldError),
    #[error("{0} trailing bytes after the migration package")]
    Trailing(usize),
    #[error("migration package: the certificate chain is empty or longer than {MAX_CHAIN}")]
    ChainLength,
}

impl Header {
    fn route(&self) -> Route<'_> {
        Route {
            migration: &self.migration,
            instance: &self.instance,
            vm: &self.vm,
            source: &self.source,
            destination: &self.destination,
        }
    }

    fn check(&self) -> Result<(), PackageError> {
        self.route().check()?;
        if self.ticket.len() > MAX_TICKET {
            return Err(FieldError::TooLarge {
                field: "ticket",
                len: self.ticket.len(),
                max: MAX_TICKET,
            }
            .into());
        }
        check_point("ephemeral key", &self.ephemeral)?;
        Ok(())
    }

    /// The header's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, PackageError> {
        self.check()?;
        let mut out = Vec::with_capacity(256 + self.ticket.len());
        self.route().put(&mut out, MAGIC, VERSION);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        put_prefixed(&mut out, 2, &self.ticket);
        out.extend_from_slice(&self.ephemeral);
        out.extend_from_slice(&self.nonce);
        Ok(out)
    }
}

/// The signed part of a package: the header's bytes, the ciphertext and the chain.
pub fn signed_part(
    header_bytes: &[u8],
    ciphertext: &[u8],
    chain: &[Vec<u8>],
) -> Result<Vec<u8>, PackageError> {
    if chain.is_empty() || chain.len() > MAX_CHAIN {
        return Err(PackageError::ChainLength);
    }
    let too_large = |field, len, max| PackageError::Field(FieldError::TooLarge { field, len, max });
    if ciphertext.len() > MAX_CIPHERTEXT {
        return Err(too_large("ciphertext", ciphertext.len(), MAX_CIPHERTEXT));
    }
    let mut out = Vec::with_capacity(
        header_bytes.len()
            + ciphertext.len()
            + chain.iter().map(|c| c.len() + 2).sum::<usize>()
            + 8,
    );
    out.extend_from_slice(header_bytes);
    put_prefixed(&mut out, 4, ciphertext);
    out.push(chain.len() as u8);
    for cert in chain {
        if cert.len() > MAX_CERT {
            return Err(too_large("certificate", cert.len(), MAX_CERT));
        }
        put_prefixed(&mut out, 2, cert);
    }
    Ok(out)
}

/// The whole package: the signed part and its signature.
pub fn finish(signed: &[u8], signature: &[u8]) -> Result<Vec<u8>, PackageError> {
    if signature.len() > MAX_SIGNATURE {
        return Err(PackageError::Field(FieldError::TooLarge {
            field: "signature",
            len: signature.len(),
            max: MAX_SIGNATURE,
        }));
    }
    let mut out = Vec::with_capacity(signed.len() + 2 + signature.len());
    out.extend_from_slice(signed);
    put_prefixed(&mut out, 2, signature);
    Ok(out)
}

/// Decodes a package; nothing is verified here but its form.
pub fn decode(bytes: &[u8]) -> Result<Package, PackageError> {
    if bytes.starts_with(snapshot::MAGIC) {
        return Err(PackageError::PlainSnapshot);
    }
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(PackageError::BadMagic);
    }
    let mut r = Reader::new(bytes);
    r.bytes("magic", MAGIC.len())?;
    let version = r.u16("version")?;
    if version != VERSION {
        return Err(PackageError::UnsupportedVersion(version));
    }
    let header = Header {
        migration: MigrationId(r.array("migration id")?),
        instance: InstanceId(r.array("instance id")?),
        vm: r.id("VM id", MAX_VM_ID)?,
        source: r.id("source host id", MAX_HOST_ID)?,
        destination: r.id("destination host id", MAX_HOST_ID)?,
        epoch: r.u64("epoch")?,
        ticket: r.prefixed("ticket", 2, MAX_TICKET)?.to_vec(),
        ephemeral: r.array("ephemeral key")?,
        nonce: r.array("nonce")?,
    };
    header.check()?;
    let header_len = r.pos();
    let ciphertext = r.prefixed("ciphertext", 4, MAX_CIPHERTEXT)?.to_vec();
    if ciphertext.len() < TAG_LEN {
        return Err(FieldError::Invalid {
            field: "ciphertext",
            reason: "shorter than the authentication tag",
        }
        .into());
    }
    let count = usize::from(r.u8("chain length")?);
    if count == 0 || count > MAX_CHAIN {
        return Err(PackageError::ChainLength);
    }
    let mut chain = Vec::with_capacity(count);
    for _ in 0..count {
        chain.push(r.prefixed("certificate", 2, MAX_CERT)?.to_vec());
    }
    let signed_len = r.pos();
    let signature = r.prefixed("signature", 2, MAX_SIGNATURE)?.to_vec();
    if r.remaining() != 0 {
        return Err(PackageError::Trailing(r.remaining()));
    }
    Ok(Package {
        header,
        header_bytes: bytes[..header_len].to_vec(),
        ciphertext,
        chain,
        signature,
        signed: bytes[..signed_len].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut eph = [9u8; POINT_LEN];
        eph[0] = 4;
        let header = Header {
            migration: MigrationId([1; 16]),
            instance: InstanceId([2; 16]),
            vm: "vm".into(),
            source: "a".into(),
            destination: "b".into(),
            epoch: 5,
            ticket: vec![3; 40],
            ephemeral: eph,
            nonce: [4; NONCE_LEN],
        };
        let hb = header.encode().unwrap();
        let signed = signed_part(&hb, &[5; 40], &[vec![6; 30], vec![7; 20]]).unwrap();
        finish(&signed, &[8; 70]).unwrap()
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let p = decode(&bytes).unwrap();
        assert_eq!(p.header.epoch, 5);
        assert_eq!(p.ciphertext, vec![5; 40]);
        assert_eq!(p.chain, vec![vec![6; 30], vec![7; 20]]);
        assert_eq!(p.signature, vec![8; 70]);
        assert_eq!(p.signed, bytes[..bytes.len() - 72]);
        assert_eq!(p.header_bytes, p.header.encode().unwrap());
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.extend_from_slice(&[0, 0]);
        assert_eq!(decode(&extra), Err(PackageError::Trailing(2)));
    }

    #[test]
    fn plain_snapshots_and_garbage_are_named() {
        let plain = snapshot::encode(&coprocessor::EngineState {
            permanent: vec![1],
            volatile: vec![2],
        });
        assert_eq!(decode(&plain), Err(PackageError::PlainSnapshot));
        assert_eq!(decode(b"garbage!garbage!"), Err(PackageError::BadMagic));
        assert_eq!(decode(b""), Err(PackageError::BadMagic));
        let mut v2 = sample();
        v2[9] = 2;
        assert_eq!(decode(&v2), Err(PackageError::UnsupportedVersion(2)));
        // A length field pointing past the limits.
        let mut huge = sample();
        let at = huge.len() - 72 - (2 + 20) - (2 + 30) - 1 - 40 - 4;
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode(&huge),
            Err(PackageError::Field(FieldError::TooLarge {
                field: "ciphertext",
                ..
            }))
        ));
    }
}
