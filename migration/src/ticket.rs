//! The migration ticket: the migration controller's signed permission for one move of one
//! vTPM, naming the destination host's attested migration key (ADR 0010).
//!
//! Layout (integers big-endian; ids as a u8 length and the bytes):
//! `"VTPMTKT1" | version u16 | migration id [16] | instance id [16] | VM id | source host id
//! | destination host id | destination migration key [65, uncompressed P-256 point] |
//! epoch u64 | issued at u64 | expires at u64 | signature length u16 | signature`
//! where the signature is the controller's ECDSA P-256 / SHA-256 signature (DER) over every
//! byte before its length. Encoding and decoding are pure; [`sign`] and [`SignedTicket::verify`]
//! use OpenSSL.

use std::fmt;
use std::str::FromStr;

use openssl::ecdsa::EcdsaSig;
use openssl::pkey::{HasPublic, PKeyRef, Private};
use vtpm_state::keys::InstanceId;

use crate::wire::{check_id, check_point, put_prefixed, FieldError, Reader};

pub const MAGIC: &[u8; 8] = b"VTPMTKT1";
pub const VERSION: u16 = 1;
/// Length of an uncompressed P-256 point (`04 | X | Y`).
pub const POINT_LEN: usize = 65;
/// Longest host id (the CA's subject limit).
pub const MAX_HOST_ID: usize = 64;
/// Longest VM id.
pub const MAX_VM_ID: usize = 128;
/// Longest DER ECDSA P-256 signature accepted (72 bytes at most in practice).
pub const MAX_SIGNATURE: usize = 80;
/// Longest encoded ticket.
pub const MAX_TICKET: usize = 1024;

/// A migration's identifier, chosen at random by the controller.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MigrationId(pub [u8; 16]);

impl MigrationId {
    pub fn random() -> Result<Self, openssl::error::ErrorStack> {
        let mut id = [0u8; 16];
        openssl::rand::rand_bytes(&mut id)?;
        Ok(MigrationId(id))
    }
}

impl fmt::Display for MigrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for MigrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MigrationId({self})")
    }
}

/// A 32-digit hex id (migration or instance) that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a 32-digit hex identifier")]
pub struct BadId(pub String);

/// Parses 32 hex digits.
pub fn parse_id16(text: &str) -> Result<[u8; 16], BadId> {
    let mut out = [0u8; 16];
    hex::decode_to_slice(text.trim(), &mut out).map_err(|_| BadId(text.to_owned()))?;
    Ok(out)
}

impl FromStr for MigrationId {
    type Err = BadId;
    fn from_str(s: &str) -> Result<Self, BadId> {
        parse_id16(s).map(MigrationId)
    }
}

/// Parses an instance id (32 hex digits, as `vtpm-state inspect` prints it).
pub fn parse_instance(text: &str) -> Result<InstanceId, BadId> {
    parse_id16(text).map(InstanceId)
}

/// What the controller permits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub migration: MigrationId,
    pub instance: InstanceId,
    pub vm: String,
    /// Host ids: the CN of each host's AIK certificate.
    pub source: String,
    pub destination: String,
    /// The destination host's migration key, as its TPM quote attested it.
    pub destination_key: [u8; POINT_LEN],
    /// The vTPM's epoch at the controller when the ticket was issued.
    pub epoch: u64,
    /// Unix seconds.
    pub issued_at: u64,
    pub expires_at: u64,
}

/// The fields a ticket and a package header both open with, after their magic and version:
/// which migration moves which instance of which VM from where to where. One encoding and one
/// check for both formats, so they cannot drift apart.
pub(crate) struct Route<'a> {
    pub migration: &'a MigrationId,
    pub instance: &'a InstanceId,
    pub vm: &'a str,
    pub source: &'a str,
    pub destination: &'a str,
}

impl Route<'_> {
    /// Checks what encoding relies on: ids within the subject rule.
    pub(crate) fn check(&self) -> Result<(), FieldError> {
        check_id("VM id", self.vm, MAX_VM_ID)?;
        check_id("source host id", self.source, MAX_HOST_ID)?;
        check_id("destination host id", self.destination, MAX_HOST_ID)
    }

    /// Appends `magic | version | migration id | instance id | VM id | source host id |
    /// destination host id`; the caller has checked the route.
    pub(crate) fn put(&self, out: &mut Vec<u8>, magic: &[u8], version: u16) {
        out.extend_from_slice(magic);
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&self.migration.0);
        out.extend_from_slice(&self.instance.0);
        for id in [self.vm, self.source, self.destination] {
            put_prefixed(out, 1, id.as_bytes());
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("not a migration ticket (bad magic)")]
    BadMagic,
    #[error("migration ticket version {0} is not supported (this build reads {VERSION})")]
    UnsupportedVersion(u16),
    #[error("migration ticket: {0}")]
    Field(#[from] FieldError),
    #[error("{0} trailing bytes after the migration ticket")]
    Trailing(usize),
    #[error("migration ticket larger than {MAX_TICKET} bytes")]
    TooLarge,
    #[error("the migration ticket's signature does not verify with the controller's key")]
    BadSignature,
    #[error("cryptography: {0}")]
    Crypto(String),
}

impl Ticket {
    pub(crate) fn route(&self) -> Route<'_> {
        Route {
            migration: &self.migration,
            instance: &self.instance,
            vm: &self.vm,
            source: &self.source,
            destination: &self.destination,
        }
    }

    /// Checks what encoding relies on: ids within the subject rule.
    fn check(&self) -> Result<(), TicketError> {
        self.route().check()?;
        check_point("destination key", &self.destination_key)?;
        Ok(())
    }

    /// The signed part.
    pub fn encode_tbs(&self) -> Result<Vec<u8>, TicketError> {
        self.check()?;
        let mut out = Vec::with_capacity(256);
        self.route().put(&mut out, MAGIC, VERSION);
        out.extend_from_slice(&self.destination_key);
        for n in [self.epoch, self.issued_at, self.expires_at] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        Ok(out)
    }
}

/// A ticket as it travels: its fields and its bytes, signature included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTicket {
    pub ticket: Ticket,
    /// The whole encoding.
    pub bytes: Vec<u8>,
    /// Length of the signed part.
    tbs_len: usize,
    /// DER ECDSA.
    signature: Vec<u8>,
}

/// Signs `ticket` with the controller's key: the ticket as it travels.
pub fn sign(ticket: &Ticket, key: &PKeyRef<Private>) -> Result<SignedTicket, TicketError> {
    let crypto = |e: openssl::error::ErrorStack| TicketError::Crypto(e.to_string());
    let tbs = ticket.encode_tbs()?;
    let ec = key.ec_key().map_err(crypto)?;
    let signature = EcdsaSig::sign(&openssl::sha::sha256(&tbs), &ec)
        .and_then(|s| s.to_der())
        .map_err(crypto)?;
    let mut bytes = tbs.clone();
    put_prefixed(&mut bytes, 2, &signature);
    Ok(SignedTicket {
        ticket: ticket.clone(),
        bytes,
        tbs_len: tbs.len(),
        signature,
    })
}

/// Decodes a ticket; every malformed ticket is refused. The signature is not checked here.
pub fn decode(bytes: &[u8]) -> Result<SignedTicket, TicketError> {
    if bytes.len() > MAX_TICKET {
        return Err(TicketError::TooLarge);
    }
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(TicketError::BadMagic);
    }
    let mut r = Reader::new(&bytes[MAGIC.len()..]);
    let version = r.u16("version")?;
    if version != VERSION {
        return Err(TicketError::UnsupportedVersion(version));
    }
    let migration = MigrationId(r.array("migration id")?);
    let instance = InstanceId(r.array("instance id")?);
    let vm = r.id("VM id", MAX_VM_ID)?;
    let source = r.id("source host id", MAX_HOST_ID)?;
    let destination = r.id("destination host id", MAX_HOST_ID)?;
    let destination_key: [u8; POINT_LEN] = r.array("destination key")?;
    let epoch = r.u64("epoch")?;
    let issued_at = r.u64("issued at")?;
    let expires_at = r.u64("expires at")?;
    let tbs_len = MAGIC.len() + r.pos();
    let signature = r.prefixed("signature", 2, MAX_SIGNATURE)?.to_vec();
    if r.remaining() != 0 {
        return Err(TicketError::Trailing(r.remaining()));
    }
    let ticket = Ticket {
        migration,
        instance,
        vm,
        source,
        destination,
        destination_key,
        epoch,
        issued_at,
        expires_at,
    };
    ticket.check()?;
    Ok(SignedTicket {
        ticket,
        bytes: bytes.to_vec(),
        tbs_len,
        signature,
    })
}

impl SignedTicket {
    /// Checks the controller's signature with its public key.
    pub fn verify<T: HasPublic>(&self, controller: &PKeyRef<T>) -> Result<(), TicketError> {
        let crypto = |e: openssl::error::ErrorStack| TicketError::Crypto(e.to_string());
        let ec = controller.ec_key().map_err(crypto)?;
        let Ok(sig) = EcdsaSig::from_der(&self.signature) else {
            return Err(TicketError::BadSignature);
        };
        let digest = openssl::sha::sha256(&self.bytes[..self.tbs_len]);
        if sig.verify(&digest, &ec).unwrap_or(false) {
            Ok(())
        } else {
            Err(TicketError::BadSignature)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use testbed::certs::p256_key;

    pub(crate) fn sample() -> Ticket {
        let mut key = [7u8; POINT_LEN];
        key[0] = 4;
        Ticket {
            migration: MigrationId([1; 16]),
            instance: InstanceId([2; 16]),
            vm: "vm-1".into(),
            source: "host-a".into(),
            destination: "host-b".into(),
            destination_key: key,
            epoch: 3,
            issued_at: 1000,
            expires_at: 2000,
        }
    }

    #[test]
    fn round_trip_and_signature() {
        let key = p256_key();
        let signed = sign(&sample(), &key).unwrap();
        let back = decode(&signed.bytes).unwrap();
        assert_eq!(back, signed);
        back.verify(&key).unwrap();
        assert_eq!(back.verify(&p256_key()), Err(TicketError::BadSignature));
    }

    #[test]
    fn every_truncation_and_every_bit_flip_is_refused() {
        let key = p256_key();
        let signed = sign(&sample(), &key).unwrap();
        for cut in 0..signed.bytes.len() {
            assert!(decode(&signed.bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = signed.bytes.clone();
        extra.push(0);
        assert_eq!(decode(&extra), Err(TicketError::Trailing(1)));
        for i in 0..signed.bytes.len() {
            for bit in 0..8 {
                let mut b = signed.bytes.clone();
                b[i] ^= 1 << bit;
                let verdict = decode(&b).and_then(|t| t.verify(&key));
                assert!(verdict.is_err(), "byte {i} bit {bit} accepted");
            }
        }
    }

    #[test]
    fn malformed_fields_are_named() {
        let mut t = sample();
        t.source = "a/b".into();
        assert!(matches!(
            t.encode_tbs(),
            Err(TicketError::Field(FieldError::Invalid {
                field: "source host id",
                ..
            }))
        ));
        assert_eq!(decode(b"VTPMSNP1"), Err(TicketError::BadMagic));
        let mut v2 = sign(&sample(), &p256_key()).unwrap().bytes;
        v2[9] = 2;
        assert_eq!(decode(&v2), Err(TicketError::UnsupportedVersion(2)));
        assert_eq!(
            "00".repeat(16).parse::<MigrationId>().unwrap(),
            MigrationId([0; 16])
        );
        assert!("xyz".parse::<MigrationId>().is_err());
    }
}
