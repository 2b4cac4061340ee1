//! Revocation, the CRL and status answers.
//!
//! This module owns `revocations.json`: serials of revoked CA-issued certificates and
//! fingerprints of revoked certificates the CA did not issue (coprocessor certificates,
//! which a host TPM signed, or vEK certificates), each with its time and reason; it is
//! read, changed and written back holding the store lock ([`Store::lock`]), so revocations
//! made at once by the server and `vtpm-ca revoke` are all kept. From it come the DER X.509
//! CRL, the answers of `GET /v1/status`, and what [`crate::chain`] checks chains against.
//!
//! The CRL is an *indirect* CRL (RFC 5280 §5.2.5, §5.3.3; ADR 0012), signed by the CA key,
//! with nextUpdate, built with `x509-cert`: its issuingDistributionPoint (critical) says
//! `indirectCRL`, it lists first the revoked serials the CA issued (host AIK, vAIK, TLS
//! certificates) and then every revoked certificate it did not issue (a coprocessor
//! certificate, which a host AIK signed; a vEK certificate, which a coprocessor signed),
//! each of those with a critical certificateIssuer entry extension naming its issuer. The
//! coprocessor and vEK certificates name this CA as the cRLIssuer of their CRL
//! distribution point, so a verifier with nothing but this CRL and `openssl verify
//! -crl_check_all -extended_crl` checks every certificate of a vEK chain.

use std::time::Duration;

use const_oid::db::rfc5280::{
    ID_CE_AUTHORITY_KEY_IDENTIFIER, ID_CE_CERTIFICATE_ISSUER, ID_CE_CRL_NUMBER,
    ID_CE_ISSUING_DISTRIBUTION_POINT,
};
use const_oid::db::rfc5912::{ECDSA_WITH_SHA_256, SHA_256_WITH_RSA_ENCRYPTION};
use der::asn1::{Any, BitString, OctetString, Uint};
use der::{DateTime, Decode, Encode};
use openssl::bn::BigNum;
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::pkey::{Id, PKeyRef, Private};
use openssl::sign::Signer;
use openssl::x509::X509Ref;
use serde::{Deserialize, Serialize};
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, SubjectKeyIdentifier};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Time;
use x509_cert::{AlgorithmIdentifier, Certificate, Version};

use crate::api::{CertStatus, Status};
use crate::store::{normalize_serial, IndexEntry, Locked, Store, StoreError, PUBLIC_FILE};
use crate::util::{asn1_to_unix, expired, fingerprint, now_unix, subject_text};

const REVOCATIONS: &str = "revocations.json";

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("no certificate with serial {0} was issued by this CA")]
    UnknownSerial(String),
    #[error("invalid request: the CA root cannot revoke itself")]
    RevokeRoot,
    #[error("invalid request: certificate is not PEM: {0}")]
    BadPem(ErrorStack),
    #[error("invalid request: give exactly one of serial and certificate")]
    BadTarget,
    #[error("invalid request: the certificate's validity period cannot be read: {0}")]
    BadValidity(ErrorStack),
    #[error("invalid request: the certificate cannot be listed in a CRL (its issuer or serial does not parse as DER): {0}")]
    Unlistable(Box<RevocationError>),
    #[error("invalid request: the CA root has no key identifier")]
    NoKeyIdentifier,
    #[error("the CA key is neither an ECC nor an RSA key: cannot sign a CRL with it")]
    UnsupportedCaKey,
    #[error(transparent)]
    Access(#[from] crate::certstore::CertStoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("OpenSSL: {0}")]
    Crypto(#[from] ErrorStack),
    #[error("DER: {0}")]
    Der(#[from] der::Error),
}

/// A revoked CA-issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedSerial {
    pub serial: String,
    /// Unix time of the revocation.
    pub time: u64,
    pub reason: String,
}

/// A revoked certificate the CA did not issue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedFingerprint {
    pub fingerprint: String,
    pub subject: String,
    pub time: u64,
    pub reason: String,
}

/// `revocations.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocations {
    #[serde(default)]
    pub serials: Vec<RevokedSerial>,
    #[serde(default)]
    pub fingerprints: Vec<RevokedFingerprint>,
}

/// What a revocation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// Set for a CA-issued certificate.
    pub serial: Option<String>,
    pub fingerprint: Option<String>,
    /// False if it was revoked already (nothing changed).
    pub newly_revoked: bool,
}

impl Revocations {
    pub fn load(store: &Store) -> Result<Revocations, StoreError> {
        Ok(store.read_json_optional(REVOCATIONS)?.unwrap_or_default())
    }

    /// Writes `revocations.json`; loaded under the same lock, nothing is lost.
    pub fn save(&self, store: &Locked<'_>) -> Result<(), StoreError> {
        store.write_json(REVOCATIONS, self, PUBLIC_FILE)
    }

    pub fn serial(&self, serial: &str) -> Option<&RevokedSerial> {
        self.serials.iter().find(|r| r.serial == serial)
    }

    pub fn fingerprint(&self, fp: &str) -> Option<&RevokedFingerprint> {
        self.fingerprints.iter().find(|r| r.fingerprint == fp)
    }

    /// Why `cert` is revoked, if it is (by fingerprint, or by serial if the CA issued it).
    pub fn reason(&self, store: &Store, cert: &X509Ref) -> Result<Option<String>, StoreError> {
        if let Some(r) = self.fingerprint(&fingerprint(cert)?) {
            return Ok(Some(r.reason.clone()));
        }
        Ok(store
            .issued_serial(cert)?
            .and_then(|serial| self.serial(&serial).map(|r| r.reason.clone())))
    }
}

fn reason_or_default(reason: Option<&str>) -> String {
    match reason.map(str::trim) {
        Some(r) if !r.is_empty() => r.chars().take(200).collect(),
        _ => "unspecified".to_string(),
    }
}

/// Revokes the CA-issued certificate with this serial.
pub fn revoke_serial(
    store: &Store,
    serial: &str,
    reason: Option<&str>,
) -> Result<Revoked, RevocationError> {
    let serial = normalize_serial(serial)?;
    revoke_issued(&store.lock()?, serial, reason)
}

/// [`revoke_serial`] under the lock, of a canonical serial.
fn revoke_issued(
    store: &Locked<'_>,
    serial: String,
    reason: Option<&str>,
) -> Result<Revoked, RevocationError> {
    let cert = store
        .issued(&serial)?
        .ok_or_else(|| RevocationError::UnknownSerial(serial.clone()))?;
    let fp = fingerprint(&cert)?;
    if fp == fingerprint(&*store.ca_cert()?)? {
        return Err(RevocationError::RevokeRoot);
    }
    let mut revs = Revocations::load(store)?;
    let newly_revoked = revs.serial(&serial).is_none();
    if newly_revoked {
        revs.serials.push(RevokedSerial {
            serial: serial.clone(),
            time: now_unix(),
            reason: reason_or_default(reason),
        });
        revs.save(store)?;
        log::info!("revoked serial {serial} ({fp})");
    }
    Ok(Revoked {
        serial: Some(serial),
        fingerprint: Some(fp),
        newly_revoked,
    })
}

/// Revokes a certificate: by serial if the CA issued it, by fingerprint otherwise (the
/// certificate is then registered too, so that status queries know it).
pub fn revoke_cert(
    store: &Store,
    cert: &X509Ref,
    reason: Option<&str>,
) -> Result<Revoked, RevocationError> {
    // OpenSSL parses a certificate whose dates are not valid times; registered, it would make
    // every later status query for it fail (found by the ca_router fuzz target).
    asn1_to_unix(cert.not_before())
        .and_then(|_| asn1_to_unix(cert.not_after()))
        .map_err(RevocationError::BadValidity)?;
    let fp = fingerprint(cert)?;
    let store = store.lock()?;
    if let Some(serial) = store.issued_serial(cert)? {
        return revoke_issued(&store, serial, reason);
    }
    // Its CRL entry must be buildable now: OpenSSL parses certificates whose issuer name
    // x509-cert refuses (a malformed OID), and one such entry would make every later CRL
    // fail (found by the ca_router fuzz target).
    indirect_entry(cert, now_unix()).map_err(|e| RevocationError::Unlistable(Box::new(e)))?;
    let mut revs = Revocations::load(&store)?;
    let newly_revoked = revs.fingerprint(&fp).is_none();
    if newly_revoked {
        store.register(cert)?;
        revs.fingerprints.push(RevokedFingerprint {
            fingerprint: fp.clone(),
            subject: subject_text(cert),
            time: now_unix(),
            reason: reason_or_default(reason),
        });
        revs.save(&store)?;
        log::info!("revoked certificate {fp} ({})", subject_text(cert));
    }
    Ok(Revoked {
        serial: None,
        fingerprint: Some(fp),
        newly_revoked,
    })
}

/// An X.509 time (UTCTime until 2049, GeneralizedTime after, as RFC 5280 wants) of a Unix
/// time.
fn x509_time(unix: u64) -> Result<Time, der::Error> {
    Ok(DateTime::from_unix_duration(Duration::from_secs(unix))?.into())
}

/// A non-critical extension holding the DER of `value`.
fn extension(
    oid: const_oid::ObjectIdentifier,
    value: &impl Encode,
) -> Result<Extension, der::Error> {
    Ok(Extension {
        extn_id: oid,
        critical: false,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

/// A critical extension holding the DER of `value`.
fn critical_extension(
    oid: const_oid::ObjectIdentifier,
    value: &impl Encode,
) -> Result<Extension, der::Error> {
    Ok(Extension {
        critical: true,
        ..extension(oid, value)?
    })
}

/// The entry of a revoked certificate this CA did not issue: its serial, and a critical
/// certificateIssuer extension naming its issuer.
fn indirect_entry(cert: &X509Ref, time: u64) -> Result<RevokedCert, RevocationError> {
    let issuer = Name::from_der(&cert.issuer_name().to_der()?)?;
    let names: Vec<GeneralName> = vec![GeneralName::DirectoryName(issuer)];
    Ok(RevokedCert {
        serial_number: SerialNumber::new(&cert.serial_number().to_bn()?.to_vec())?,
        revocation_date: x509_time(time)?,
        crl_entry_extensions: Some(vec![critical_extension(ID_CE_CERTIFICATE_ISSUER, &names)?]),
    })
}

/// By value, as OpenSSL's X509_CRL_sort does: a shorter serial is a smaller one.
fn sort_by_serial(entries: &mut [RevokedCert]) {
    entries.sort_by(|a, b| {
        let (a, b) = (a.serial_number.as_bytes(), b.serial_number.as_bytes());
        (a.len(), a).cmp(&(b.len(), b))
    });
}

/// The algorithm the CA key signs with: ECDSA or RSA (PKCS#1 v1.5), SHA-256.
fn signature_algorithm(key: &PKeyRef<Private>) -> Result<AlgorithmIdentifier, RevocationError> {
    match key.id() {
        // ecdsa-with-SHA256: no parameters (RFC 5758 §3.2).
        Id::EC => Ok(AlgorithmIdentifier {
            oid: ECDSA_WITH_SHA_256,
            parameters: None,
        }),
        // sha256WithRSAEncryption: NULL parameters (RFC 4055 §5).
        Id::RSA => Ok(AlgorithmIdentifier {
            oid: SHA_256_WITH_RSA_ENCRYPTION,
            parameters: Some(Any::null()),
        }),
        _ => Err(RevocationError::UnsupportedCaKey),
    }
}

/// The CRL, DER: an indirect CRL (see the module documentation) signed by the CA,
/// thisUpdate now, nextUpdate after the configured CRL lifetime, with the CA's key
/// identifier, CRL number = the time of issue, and an issuingDistributionPoint saying
/// `indirectCRL`. Entries: every revoked CA-issued serial (sorted), then every revoked
/// certificate the CA did not issue (sorted by serial), each naming its issuer.
pub fn crl(store: &Store) -> Result<Vec<u8>, RevocationError> {
    let ca = Certificate::from_der(&store.ca_cert()?.to_der()?)?;
    let ca_key = store.ca_key()?;
    let config = store.config()?;
    let revs = Revocations::load(store)?;
    let now = now_unix();
    let next = now.saturating_add(config.crl_validity_secs.max(1));
    let (_, ski) = ca
        .tbs_certificate()
        .get_extension::<SubjectKeyIdentifier>()?
        .ok_or(RevocationError::NoKeyIdentifier)?;
    let mut revoked = revs
        .serials
        .iter()
        .map(|r| {
            Ok(RevokedCert {
                serial_number: SerialNumber::new(&BigNum::from_hex_str(&r.serial)?.to_vec())?,
                revocation_date: x509_time(r.time)?,
                crl_entry_extensions: None,
            })
        })
        .collect::<Result<Vec<RevokedCert>, RevocationError>>()?;
    sort_by_serial(&mut revoked);
    // Then those the CA did not issue. The entries without a certificateIssuer come first:
    // an entry without one takes the issuer of the entry before it (RFC 5280 §5.3.3).
    let mut indirect = Vec::new();
    for r in &revs.fingerprints {
        match store.lookup(&r.fingerprint)? {
            Some(known) => indirect.push(indirect_entry(&known.cert, r.time)?),
            None => log::warn!(
                "revoked certificate {} is not registered: not in the CRL",
                r.fingerprint
            ),
        }
    }
    sort_by_serial(&mut indirect);
    revoked.extend(indirect);
    let scope = IssuingDistributionPoint {
        distribution_point: None,
        only_contains_user_certs: false,
        only_contains_ca_certs: false,
        only_some_reasons: None,
        indirect_crl: true,
        only_contains_attribute_certs: false,
    };
    let aki = AuthorityKeyIdentifier {
        key_identifier: Some(ski.0),
        ..Default::default()
    };
    let crl_number = Uint::new(&now.to_be_bytes())?;
    let algorithm = signature_algorithm(&ca_key)?;
    let tbs = TbsCertList {
        version: Version::V2,
        signature: algorithm.clone(),
        issuer: ca.tbs_certificate().subject().clone(),
        this_update: x509_time(now)?,
        next_update: Some(x509_time(next)?),
        revoked_certificates: (!revoked.is_empty()).then_some(revoked),
        crl_extensions: Some(vec![
            extension(ID_CE_AUTHORITY_KEY_IDENTIFIER, &aki)?,
            extension(ID_CE_CRL_NUMBER, &crl_number)?,
            critical_extension(ID_CE_ISSUING_DISTRIBUTION_POINT, &scope)?,
        ]),
    };
    let signature =
        Signer::new(MessageDigest::sha256(), &ca_key)?.sign_oneshot_to_vec(&tbs.to_der()?)?;
    Ok(CertificateList {
        tbs_cert_list: tbs,
        signature_algorithm: algorithm,
        signature: BitString::from_bytes(&signature)?,
    }
    .to_der()?)
}

/// The status of the certificate with this fingerprint.
pub fn status(store: &Store, fp: &str) -> Result<CertStatus, RevocationError> {
    let fp = fp.to_ascii_lowercase();
    let Some(known) = store.lookup(&fp)? else {
        return Ok(CertStatus {
            fingerprint: fp,
            status: Status::Unknown,
            serial: None,
            subject: None,
            not_after: None,
            revoked_at: None,
            reason: None,
        });
    };
    let revs = Revocations::load(store)?;
    let serial = match &known.entry {
        IndexEntry::Issued { serial } => Some(serial.clone()),
        IndexEntry::Registered => None,
    };
    let revoked = serial
        .as_deref()
        .and_then(|s| revs.serial(s))
        .map(|r| (r.time, r.reason.clone()))
        .or_else(|| revs.fingerprint(&fp).map(|r| (r.time, r.reason.clone())));
    let status = if revoked.is_some() {
        Status::Revoked
    } else if expired(&known.cert, now_unix())? {
        Status::Expired
    } else {
        Status::Good
    };
    Ok(CertStatus {
        fingerprint: fp,
        status,
        serial,
        subject: Some(subject_text(&known.cert)),
        not_after: Some(asn1_to_unix(known.cert.not_after())?),
        revoked_at: revoked.as_ref().map(|r| r.0),
        reason: revoked.map(|r| r.1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::{aik_cert, generate_key, Kind};
    use crate::setup::tests::new_store;
    use crate::store::Config;
    use openssl::x509::X509;
    use testbed::openssl::crl_text;

    fn issue(store: &Store, kind: Kind, validity: u64) -> X509 {
        let aik = generate_key().unwrap();
        let c = aik_cert(
            &store.ca_key().unwrap(),
            &store.ca_cert().unwrap(),
            kind,
            "t",
            &aik,
            &[0; 32],
            validity,
            None,
        )
        .unwrap();
        store.lock().unwrap().record_issued(&c).unwrap();
        c
    }

    #[test]
    fn crl_lists_revoked_serials_and_verifies() {
        let (_tmp, store, _) = new_store(Config::default());
        let empty = crl(&store).unwrap();
        let t = crl_text(&empty).unwrap();
        assert!(t.contains("No Revoked Certificates"), "{t}");
        assert!(t.contains("Next Update"), "{t}");

        let c = issue(&store, Kind::Host, 3600);
        let serial = crate::store::serial_of(&c).unwrap();
        let r = revoke_serial(&store, &serial.to_lowercase(), Some("key compromise")).unwrap();
        assert!(r.newly_revoked);
        assert!(!revoke_serial(&store, &serial, None).unwrap().newly_revoked);
        let der = crl(&store).unwrap();
        let t = crl_text(&der).unwrap();
        assert!(t.contains(&serial), "{t}");
        let parsed = openssl::x509::X509Crl::from_der(&der).unwrap();
        assert!(parsed
            .verify(&store.ca_cert().unwrap().public_key().unwrap())
            .unwrap());
        assert!(matches!(
            parsed.get_by_cert(&c),
            openssl::x509::CrlStatus::Revoked(_)
        ));
        assert!(matches!(
            revoke_serial(&store, "0123", None),
            Err(RevocationError::UnknownSerial(_))
        ));
    }

    // A foreign certificate whose notAfter is not a time (OpenSSL parses it) is refused, so it
    // is never registered and the public status query never fails on it.
    // A foreign certificate whose issuer name holds an OID that OpenSSL accepts and x509-cert
    // does not (longer than const-oid's 39 bytes) is refused: revoked, it would make every
    // later CRL fail, as the ca_router fuzz target found with a malformed OID.
    #[test]
    fn a_certificate_whose_issuer_cannot_be_listed_is_not_revoked_and_the_crl_still_builds() {
        use openssl::asn1::Asn1Time;
        use openssl::x509::{X509Builder, X509NameBuilder};
        let (_tmp, store, _) = new_store(Config::default());
        let key = generate_key().unwrap();
        let long_oid: String = std::iter::once("1.3.6.1.4.1".to_string())
            .chain((0..40).map(|i| (1000 + i).to_string()))
            .collect::<Vec<_>>()
            .join(".");
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text(&long_oid, "odd").unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        let odd = b.build();
        assert!(Name::from_der(&odd.issuer_name().to_der().unwrap()).is_err());
        let err = revoke_cert(&store, &odd, None).unwrap_err();
        assert!(matches!(err, RevocationError::Unlistable(_)), "{err}");
        let fp = fingerprint(&odd).unwrap();
        assert_eq!(status(&store, &fp).unwrap().status, Status::Unknown);
        crl(&store).expect("the CRL still builds");
    }

    #[test]
    fn a_certificate_with_unreadable_dates_is_not_revoked_or_registered() {
        let (_tmp, store, _) = new_store(Config::default());
        let good = issue(&store, Kind::Vtpm, 3600);
        let mut der = good.to_der().unwrap();
        let not_after = good.not_after().to_string();
        assert!(!not_after.is_empty());
        // The second UTCTime of the validity: its first digit becomes a letter.
        let times: Vec<usize> = der
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w[0] == 0x17 && w[1] == 13)
            .map(|(i, _)| i)
            .collect();
        der[times[1] + 2] = b's';
        let bad = X509::from_der(&der).expect("OpenSSL parses it");
        assert!(asn1_to_unix(bad.not_after()).is_err());
        assert!(matches!(
            revoke_cert(&store, &bad, None),
            Err(RevocationError::BadValidity(_))
        ));
        let fp = fingerprint(&bad).unwrap();
        assert_eq!(status(&store, &fp).unwrap().status, Status::Unknown);
    }

    /// The CRL as `x509-cert` builds it is what OpenSSL's CRL builder made: v2, signed
    /// with ecdsa-with-SHA256, issued by the root's subject, with the root's key identifier
    /// and a CRL number (the time of issue), the serials sorted by value.
    #[test]
    fn crl_carries_the_issuer_key_identifier_number_and_sorted_serials() {
        let (_tmp, store, _) = new_store(Config::default());
        let mut serials = Vec::new();
        for _ in 0..4 {
            let c = issue(&store, Kind::Vtpm, 3600);
            let serial = crate::store::serial_of(&c).unwrap();
            revoke_serial(&store, &serial, None).unwrap();
            serials.push(BigNum::from_hex_str(&serial).unwrap().to_vec());
        }
        let before = now_unix();
        let der = crl(&store).unwrap();
        let t = crl_text(&der).unwrap();
        assert!(t.contains("Version 2 (0x1)"), "{t}");
        assert!(t.contains("Signature Algorithm: ecdsa-with-SHA256"), "{t}");
        assert!(t.contains("X509v3 Authority Key Identifier"), "{t}");
        assert!(t.contains("X509v3 CRL Number"), "{t}");
        let ca = store.ca_cert().unwrap();
        let parsed = openssl::x509::X509Crl::from_der(&der).unwrap();
        assert_eq!(
            parsed.issuer_name().to_der().unwrap(),
            ca.subject_name().to_der().unwrap()
        );

        let list = CertificateList::<x509_cert::certificate::Rfc5280>::from_der(&der).unwrap();
        let tbs = &list.tbs_cert_list;
        let exts = tbs.crl_extensions.as_ref().unwrap();
        assert_eq!(exts.len(), 3);
        assert!(exts[..2].iter().all(|e| !e.critical));
        // An indirect CRL (ADR 0012), which a verifier must understand to use it.
        assert_eq!(exts[2].extn_id, ID_CE_ISSUING_DISTRIBUTION_POINT);
        assert!(exts[2].critical);
        let idp = IssuingDistributionPoint::from_der(exts[2].extn_value.as_bytes()).unwrap();
        assert!(idp.indirect_crl && idp.distribution_point.is_none());
        let aki = AuthorityKeyIdentifier::from_der(exts[0].extn_value.as_bytes()).unwrap();
        assert_eq!(exts[0].extn_id, ID_CE_AUTHORITY_KEY_IDENTIFIER);
        assert_eq!(
            aki.key_identifier.unwrap().as_bytes(),
            ca.subject_key_id().unwrap().as_slice()
        );
        assert_eq!(exts[1].extn_id, ID_CE_CRL_NUMBER);
        let number = Uint::from_der(exts[1].extn_value.as_bytes()).unwrap();
        let number = number
            .as_bytes()
            .iter()
            .fold(0u64, |n, b| (n << 8) | u64::from(*b));
        let this_update = tbs.this_update.to_unix_duration().as_secs();
        assert_eq!(number, this_update);
        assert!(this_update >= before && this_update <= now_unix());
        let next = tbs.next_update.unwrap().to_unix_duration().as_secs();
        assert_eq!(next - this_update, Config::default().crl_validity_secs);

        serials.sort_by(|a, b| (a.len(), a).cmp(&(b.len(), b)));
        let listed: Vec<Vec<u8>> = tbs
            .revoked_certificates
            .as_ref()
            .unwrap()
            .iter()
            .map(|r| r.serial_number.as_bytes().to_vec())
            .collect();
        assert_eq!(listed, serials);
    }

    #[test]
    fn status_answers_good_revoked_expired_unknown() {
        let (_tmp, store, _) = new_store(Config::default());
        let good = issue(&store, Kind::Vtpm, 3600);
        let fp = fingerprint(&good).unwrap();
        assert_eq!(status(&store, &fp).unwrap().status, Status::Good);
        assert_eq!(
            status(&store, &"ab".repeat(32)).unwrap().status,
            Status::Unknown
        );
        revoke_cert(&store, &good, None).unwrap();
        let s = status(&store, &fp.to_uppercase()).unwrap();
        assert_eq!(s.status, Status::Revoked);
        assert!(s.serial.is_some());

        // A certificate the CA did not issue, revoked by fingerprint.
        let key = generate_key().unwrap();
        let other = crate::issue::root_cert(&key, "someone else", 3600).unwrap();
        let r = revoke_cert(&store, &other, Some("retired")).unwrap();
        assert_eq!(r.serial, None);
        let s = status(&store, &fingerprint(&other).unwrap()).unwrap();
        assert_eq!(s.status, Status::Revoked);
        assert_eq!(s.reason.as_deref(), Some("retired"));
        // In the (indirect) CRL after the CA's own, naming its issuer (ADR 0012).
        let der = crl(&store).unwrap();
        let t = crl_text(&der).unwrap();
        assert_eq!(t.matches("Serial Number").count(), 2, "{t}");
        let list = CertificateList::<x509_cert::certificate::Rfc5280>::from_der(&der).unwrap();
        let entries = list.tbs_cert_list.revoked_certificates.unwrap();
        assert!(entries[0].crl_entry_extensions.is_none());
        let other_serial = other.serial_number().to_bn().unwrap().to_vec();
        assert_eq!(entries[1].serial_number.as_bytes(), other_serial.as_slice());
        let ext = &entries[1].crl_entry_extensions.as_ref().unwrap()[0];
        assert_eq!(ext.extn_id, ID_CE_CERTIFICATE_ISSUER);
        assert!(ext.critical);
        assert!(t.contains("someone else"), "{t}");

        let short = issue(&store, Kind::Vtpm, 1);
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert_eq!(
            status(&store, &fingerprint(&short).unwrap())
                .unwrap()
                .status,
            Status::Expired
        );
    }
}
