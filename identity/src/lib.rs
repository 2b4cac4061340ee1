//! The vTPM's identity: the coprocessor key, the certificate the host TPM signs for it, and
//! the vEK certificates it signs and provisions into instances (ADR 0008).
//!
//! The chain, leaf first: vEK certificate (signed by the [`CoprocessorKey`]) ← coprocessor
//! certificate (signed by the host TPM's AIK, [`tpm_signed::issue_signed_with`]) ← host AIK
//! certificate ← local CA root. Every piece is plain X.509, so `openssl verify` checks it.
//!
//! - [`key`]: the host's coprocessor key (software ECC P-256), wrapped by the host key, and
//!   the host's migration key (ECDH P-256, likewise wrapped) that migration packages are
//!   sealed to; coprocessor signatures for a [`Purpose`] other than a certificate.
//! - [`tpm_signed`]: a certificate whose signature comes from an external ECDSA P-256
//!   [`signature::Signer`] (the host TPM); the coprocessor certificate.
//! - [`templates`]: the TCG EK templates L-1 (RSA 2048) and L-2 (ECC P-256).
//! - [`ek_cert`]: the vEK certificate per the TCG EK Credential Profile.
//! - [`provision`]: creating the vEKs in an instance and storing their certificates in its NV
//!   ([`provision_ek`]), idempotent so that migration can re-issue.
//! - `cert` (private): what both certificates share: the `TBSCertificate` built from
//!   `x509-cert` types, signed through a [`signature::Signer`] and checked with OpenSSL.

mod cert;
pub mod ek_cert;
pub mod key;
pub mod provision;
pub mod templates;
pub mod tpm_signed;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use der::asn1::GeneralizedTime;
use der::Decode;
use openssl::pkey::{HasPublic, PKeyRef};
use openssl::x509::X509Ref;
use spki::SubjectPublicKeyInfoRef;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Time;

pub use ek_cert::{issue_ek_cert, EkPublic, TpmInfo};
pub use key::{verify_for, CoprocessorKey, MigrationKey, Purpose};
pub use provision::{
    create_ek, provision_ek, read_ek_cert, refresh_chain_of_running, refresh_ek_chain, CreatedEk,
    ProvisionedEk, Refreshed,
};
pub use templates::EkKind;
pub use tpm_signed::{issue_signed_by, issue_signed_with, CertSpec};

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
    #[error("{path} is not a migration key record (record id {id})")]
    NotAMigrationKey { path: PathBuf, id: InstanceId },
    #[error("DER encoding: {0}")]
    Encoding(String),
    #[error("the external signer failed: {}", error_chain(.0.as_ref()))]
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

impl From<der::Error> for IdentityError {
    fn from(e: der::Error) -> Self {
        IdentityError::Encoding(e.to_string())
    }
}

impl From<x509_cert::builder::Error> for IdentityError {
    fn from(e: x509_cert::builder::Error) -> Self {
        match e {
            // A failure of the signer itself (the host TPM refused, the connection broke).
            x509_cert::builder::Error::Signature(e) => IdentityError::Signer(Box::new(e)),
            e => IdentityError::Encoding(e.to_string()),
        }
    }
}

/// An error and its sources, `: `-separated: a [`signature::Error`] says only "signature
/// error" itself, the reason is its source.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
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

    /// This validity, ending no later than `issuer`'s notAfter (a certificate does not
    /// outlive its issuer). Refused if the issuer has expired.
    pub fn capped_at(&self, issuer: &X509Ref) -> Result<Validity, IdentityError> {
        let epoch = openssl::asn1::Asn1Time::from_unix(0)?;
        let d = epoch.diff(issuer.not_after())?;
        let end = i64::from(d.days) * 86_400 + i64::from(d.secs);
        let now = unix_seconds(SystemTime::now());
        if end <= now {
            return Err(IdentityError::Refused(format!(
                "the issuer certificate expired at {} (Unix time {end}): it cannot issue",
                issuer.not_after()
            )));
        }
        Ok(Validity {
            not_before: self.not_before,
            not_after: self.not_after.min(end),
        })
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

    /// The X.509 validity. Times are given as GeneralizedTime; the certificate builder
    /// encodes those before 2050 as UTCTime, as RFC 5280 §4.1.2.5 requires (and OpenSSL did).
    fn x509(&self) -> Result<x509_cert::time::Validity, IdentityError> {
        self.check()?;
        let time = |t: i64| -> Result<Time, IdentityError> {
            let secs = u64::try_from(t).map_err(|_| {
                IdentityError::Refused(format!("a certificate time before 1970 ({t})"))
            })?;
            Ok(Time::GeneralTime(GeneralizedTime::from_unix_duration(
                Duration::from_secs(secs),
            )?))
        };
        Ok(x509_cert::time::Validity::new(
            time(self.not_before)?,
            time(self.not_after)?,
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
fn random_serial() -> Result<SerialNumber, IdentityError> {
    let mut bytes = [0u8; 16];
    openssl::rand::rand_bytes(&mut bytes)?;
    // Positive, and exactly 16 significant octets.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::new(&bytes)?)
}

/// RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits.
fn key_identifier<T: HasPublic>(key: &PKeyRef<T>) -> Result<Vec<u8>, IdentityError> {
    let spki = key.public_key_to_der()?;
    let spki = SubjectPublicKeyInfoRef::from_der(&spki)?;
    Ok(openssl::sha::sha1(spki.subject_public_key.raw_bytes()).to_vec())
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

#[cfg(test)]
mod tests {
    use super::*;
    use der::Encode;

    #[test]
    fn validity_saturates_at_no_expiry() {
        let v = Validity::starting_now(Duration::MAX);
        assert_eq!(v.not_after, Validity::NO_EXPIRY);
        let not_after = v.x509().unwrap().not_after;
        assert_eq!(not_after.to_string(), "9999-12-31T23:59:59Z");
        assert_eq!(not_after.to_der().unwrap(), b"\x18\x0f99991231235959Z");
        let day = Validity::starting_now(Duration::from_secs(86_400));
        assert_eq!(day.not_after - day.not_before, 86_400 + 300);
        assert!(Validity {
            not_before: 10,
            not_after: 10
        }
        .x509()
        .is_err());
    }

    /// A self-signed certificate ending at Unix time `not_after`.
    fn issuer_ending_at(not_after: i64) -> openssl::x509::X509 {
        let key = openssl::pkey::PKey::from_ec_key(
            openssl::ec::EcKey::generate(
                &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)
                    .unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        let mut b = openssl::x509::X509Builder::new().unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&openssl::asn1::Asn1Time::from_unix(0).unwrap())
            .unwrap();
        b.set_not_after(&openssl::asn1::Asn1Time::from_unix(not_after).unwrap())
            .unwrap();
        b.sign(&key, openssl::hash::MessageDigest::sha256())
            .unwrap();
        b.build()
    }

    /// ADR 0012: what an issuer signs ends no later than the issuer, and an expired issuer
    /// signs nothing.
    #[test]
    fn validity_is_capped_at_the_issuers_end() {
        let now = unix_seconds(SystemTime::now());
        let ten_years = Validity::starting_now(Duration::from_secs(3650 * 86_400));
        let issuer = issuer_ending_at(now + 3600);
        let capped = ten_years.capped_at(&issuer).unwrap();
        assert_eq!(capped.not_before, ten_years.not_before);
        assert_eq!(capped.not_after, now + 3600);
        let short = Validity::starting_now(Duration::from_secs(60));
        assert_eq!(short.capped_at(&issuer).unwrap().not_after, short.not_after);
        let expired = issuer_ending_at(now - 1);
        assert!(matches!(
            ten_years.capped_at(&expired),
            Err(IdentityError::Refused(_))
        ));
    }

    #[test]
    fn serials_are_positive_and_16_bytes() {
        for _ in 0..32 {
            let serial = random_serial().unwrap();
            let der = serial.to_der().unwrap();
            // INTEGER, 16 content octets, no sign octet needed: positive.
            assert_eq!(der[..2], [0x02, 16]);
            assert_eq!(der[2] & 0xc0, 0x40);
            assert_eq!(serial.as_bytes().len(), 16);
        }
    }
}
