//! The vTPM's identity: the coprocessor key, the certificate the host TPM signs for it, and
//! the vEK certificates it signs and provisions into instances (ADR 0008).
//!
//! The chain, leaf first: vEK certificate (signed by the [`CoprocessorKey`]) ← coprocessor
//! certificate (signed by the host TPM's AIK, [`tpm_signed::issue_signed_by`]) ← host AIK
//! certificate ← local CA root. Every piece is plain X.509, so `openssl verify` checks it.
//!
//! - [`key`]: the host's coprocessor key (software ECC P-256), wrapped by the host key.
//! - [`tpm_signed`]: a certificate whose signature comes from an external ECDSA signer (the
//!   host TPM); the coprocessor certificate.
//! - [`templates`]: the TCG EK templates L-1 (RSA 2048) and L-2 (ECC P-256).
//! - [`ek_cert`]: the vEK certificate per the TCG EK Credential Profile.
//! - [`provision`]: creating the vEKs in an instance and storing their certificates in its NV
//!   ([`provision_ek`]), idempotent so that migration can re-issue.

pub mod ek_cert;
pub mod key;
pub mod provision;
pub mod templates;
pub mod tpm_signed;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openssl::asn1::{Asn1Integer, Asn1Object, Asn1OctetString, Asn1Time};
use openssl::bn::BigNum;
use openssl::hash::{hash, MessageDigest};
use openssl::pkey::{HasPublic, PKeyRef};
use openssl::x509::{X509Extension, X509Ref};
use tpm_proto::der;

pub use ek_cert::{issue_ek_cert, EkPublic, TpmInfo};
pub use key::CoprocessorKey;
pub use provision::{create_ek, provision_ek, read_ek_cert, CreatedEk, ProvisionedEk};
pub use templates::EkKind;
pub use tpm_signed::{issue_signed_by, CertSpec};

use vtpm_state::keys::{InstanceId, KeyError};

/// Errors of the identity module.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("key record: {0}")]
    Key(#[from] KeyError),
    #[error("cryptography failed: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a coprocessor key already exists at {path}; refusing to replace it (every vEK certificate on this host chains to it)")]
    KeyExists { path: PathBuf },
    #[error("{path} is not a coprocessor key record (record id {id})")]
    NotACoprocessorKey { path: PathBuf, id: InstanceId },
    #[error("DER encoding: {0}")]
    Encoding(String),
    #[error("the external signer failed: {0}")]
    Signer(Box<dyn std::error::Error + Send + Sync>),
    #[error("the signature made by the external signer does not verify with the issuer certificate's public key")]
    SignatureInvalid,
    #[error("refused: {0}")]
    Refused(String),
    #[error("engine: {0}")]
    Engine(#[from] coprocessor::Error),
    #[error("TPM2_{command} failed with TPM_RC {code:#x}")]
    Tpm { command: &'static str, code: u32 },
    #[error(
        "TPM2_{command} failed with TPM_RC {code:#x}: the platform hierarchy is not usable with \
         an empty password (disabled or re-keyed by the guest's firmware); provision the vEK \
         while the instance is not running a guest (before its first Startup, or after a power \
         cycle)"
    )]
    PlatformUnavailable { command: &'static str, code: u32 },
    #[error("TPM2_{command}: malformed response: {source}")]
    Wire {
        command: &'static str,
        #[source]
        source: tpm_proto::WireError,
    },
}

impl From<der::DerError> for IdentityError {
    fn from(e: der::DerError) -> Self {
        IdentityError::Encoding(e.to_string())
    }
}

/// When a certificate is valid, as seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// Backdating of [`Validity::starting_now`], against verifiers whose clocks lag a little.
    pub const BACKDATE: Duration = Duration::from_secs(300);

    /// RFC 5280's "no well-defined expiration date": 99991231235959Z.
    pub const NO_EXPIRY: i64 = 253_402_300_799;

    /// From [`Validity::BACKDATE`] ago until `lifetime` from now (at most
    /// [`Validity::NO_EXPIRY`]).
    pub fn starting_now(lifetime: Duration) -> Self {
        let now = SystemTime::now();
        let not_after = now
            .checked_add(lifetime)
            .map_or(Validity::NO_EXPIRY, unix_seconds)
            .min(Validity::NO_EXPIRY);
        Validity {
            not_before: unix_seconds(now.checked_sub(Validity::BACKDATE).unwrap_or(now)),
            not_after,
        }
    }

    fn check(&self) -> Result<(), IdentityError> {
        if self.not_after <= self.not_before {
            return Err(IdentityError::Refused(format!(
                "validity ends ({}) before it starts ({})",
                self.not_after, self.not_before
            )));
        }
        Ok(())
    }

    fn asn1(&self) -> Result<(Asn1Time, Asn1Time), IdentityError> {
        self.check()?;
        Ok((
            Asn1Time::from_unix(self.not_before as libc::time_t)?,
            Asn1Time::from_unix(self.not_after as libc::time_t)?,
        ))
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// A random positive 16-byte serial number (RFC 5280 §4.1.2.2: positive, at most 20 octets).
fn random_serial() -> Result<Asn1Integer, IdentityError> {
    let mut bytes = [0u8; 16];
    openssl::rand::rand_bytes(&mut bytes)?;
    // Positive, and exactly 16 significant octets.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(BigNum::from_slice(&bytes)?.to_asn1_integer()?)
}

/// RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits.
fn key_identifier<T: HasPublic>(key: &PKeyRef<T>) -> Result<Vec<u8>, IdentityError> {
    let spki = key.public_key_to_der()?;
    Ok(hash(MessageDigest::sha1(), der::spki_key_bits(&spki)?)?.to_vec())
}

/// The key identifier an issued certificate's AuthorityKeyIdentifier names: the issuer's
/// SubjectKeyIdentifier, or (an issuer without one) the method-1 identifier of its key.
fn issuer_key_identifier(issuer: &X509Ref) -> Result<Vec<u8>, IdentityError> {
    match issuer.subject_key_id() {
        Some(id) => Ok(id.as_slice().to_vec()),
        None => {
            let key = issuer.public_key()?;
            key_identifier(&key)
        }
    }
}

/// An extension from its OID and the DER of its value.
fn extension(oid: &str, critical: bool, value_der: &[u8]) -> Result<X509Extension, IdentityError> {
    let oid = Asn1Object::from_str(oid)?;
    let value = Asn1OctetString::new_from_bytes(value_der)?;
    Ok(X509Extension::new_from_der(&oid, critical, &value)?)
}

fn subject_key_identifier_ext(key_id: &[u8]) -> Result<X509Extension, IdentityError> {
    extension("2.5.29.14", false, &der::octet_string(key_id))
}

fn authority_key_identifier_ext(key_id: &[u8]) -> Result<X509Extension, IdentityError> {
    let aki = der::sequence(&[&der::tlv(der::context_primitive(0), key_id)]);
    extension("2.5.29.35", false, &aki)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_saturates_at_no_expiry() {
        let v = Validity::starting_now(Duration::MAX);
        assert_eq!(v.not_after, Validity::NO_EXPIRY);
        let (_, not_after) = v.asn1().unwrap();
        assert_eq!(not_after.to_string(), "Dec 31 23:59:59 9999 GMT");
        let day = Validity::starting_now(Duration::from_secs(86_400));
        assert_eq!(day.not_after - day.not_before, 86_400 + 300);
        assert!(Validity {
            not_before: 10,
            not_after: 10
        }
        .asn1()
        .is_err());
    }

    #[test]
    fn serials_are_positive_and_16_bytes() {
        for _ in 0..32 {
            let serial = random_serial().unwrap().to_bn().unwrap();
            assert_eq!(serial.num_bytes(), 16);
            assert!(!serial.is_negative());
        }
    }
}
