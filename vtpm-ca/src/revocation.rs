//! Revocation, the CRL, status answers, and the chain checks that depend on them.
//!
//! This module owns `revocations.json`: serials of revoked CA-issued certificates and
//! fingerprints of revoked certificates the CA did not issue (coprocessor certificates,
//! which a host TPM signed, or vEK certificates), each with its time and reason; it is
//! read, changed and written back holding the store lock ([`Store::lock`]), so revocations
//! made at once by the server and `vtpm-ca revoke` are all kept. From it come
//! the DER X.509 CRL (CA-issued serials only, signed by the CA key, with nextUpdate), the
//! answers of `GET /v1/status`, and the rule that no certificate of a chain the CA relies on
//! may be revoked. It also owns coprocessor registration (`POST /v1/coprocessor`), which
//! makes a coprocessor certificate known by fingerprint.

use openssl::asn1::{Asn1Integer, Asn1Object, Asn1OctetString, Asn1Time};
use openssl::bn::BigNum;
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{
    X509CrlBuilder, X509Extension, X509Ref, X509RevokedBuilder, X509StoreContext, X509,
};
use serde::{Deserialize, Serialize};

use crate::api::CertStatus;
use crate::certstore::{self, CertStoreError, Principal};
use crate::store::{normalize_serial, IndexEntry, Store, StoreError, PUBLIC_FILE};
use crate::util::{asn1_to_unix, fingerprint, now_unix};

const REVOCATIONS: &str = "revocations.json";

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("no certificate with serial {0} was issued by this CA")]
    UnknownSerial(String),
    #[error("certificate chain does not verify up to {anchor}: {reason} (at depth {depth})")]
    Untrusted {
        anchor: &'static str,
        reason: String,
        depth: u32,
    },
    #[error("certificate {subject} ({fingerprint}) is revoked: {reason}")]
    Revoked {
        subject: String,
        fingerprint: String,
        reason: String,
    },
    #[error("empty certificate chain")]
    EmptyChain,
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error(transparent)]
    Access(#[from] CertStoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("OpenSSL: {0}")]
    Crypto(#[from] ErrorStack),
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
        Ok(store.read_json_opt(REVOCATIONS)?.unwrap_or_default())
    }

    /// Writes `revocations.json`. To change it, hold [`Store::lock`] from the load to the
    /// save.
    pub fn save(&self, store: &Store) -> Result<(), StoreError> {
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
        let fp = fingerprint(cert)?;
        if let Some(r) = self.fingerprint(&fp) {
            return Ok(Some(r.reason.clone()));
        }
        if let Some(crate::store::Known {
            entry: IndexEntry::Issued { serial },
            ..
        }) = store.lookup(&fp)?
        {
            if let Some(r) = self.serial(&serial) {
                return Ok(Some(r.reason.clone()));
            }
        }
        Ok(None)
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
    let _lock = store.lock()?;
    let cert = store
        .issued(&serial)?
        .ok_or_else(|| RevocationError::UnknownSerial(serial.clone()))?;
    if fingerprint(&cert)? == fingerprint(&*store.ca_cert()?)? {
        return Err(RevocationError::BadRequest(
            "the CA root cannot revoke itself".into(),
        ));
    }
    let mut revs = Revocations::load(store)?;
    let fp = fingerprint(&cert)?;
    if revs.serial(&serial).is_some() {
        return Ok(Revoked {
            serial: Some(serial),
            fingerprint: Some(fp),
            newly_revoked: false,
        });
    }
    revs.serials.push(RevokedSerial {
        serial: serial.clone(),
        time: now_unix(),
        reason: reason_or_default(reason),
    });
    revs.save(store)?;
    log::info!("revoked serial {serial} ({fp})");
    Ok(Revoked {
        serial: Some(serial),
        fingerprint: Some(fp),
        newly_revoked: true,
    })
}

/// Revokes a certificate: by serial if the CA issued it, by fingerprint otherwise (the
/// certificate is then registered too, so that status queries know it).
pub fn revoke_cert(
    store: &Store,
    cert: &X509Ref,
    reason: Option<&str>,
) -> Result<Revoked, RevocationError> {
    let fp = fingerprint(cert)?;
    let _lock = store.lock()?;
    if let Some(crate::store::Known {
        entry: IndexEntry::Issued { serial },
        ..
    }) = store.lookup(&fp)?
    {
        return revoke_serial(store, &serial, reason);
    }
    let mut revs = Revocations::load(store)?;
    if revs.fingerprint(&fp).is_some() {
        return Ok(Revoked {
            serial: None,
            fingerprint: Some(fp),
            newly_revoked: false,
        });
    }
    store.register(cert)?;
    revs.fingerprints.push(RevokedFingerprint {
        fingerprint: fp.clone(),
        subject: subject_text(cert),
        time: now_unix(),
        reason: reason_or_default(reason),
    });
    revs.save(store)?;
    log::info!("revoked certificate {fp} ({})", subject_text(cert));
    Ok(Revoked {
        serial: None,
        fingerprint: Some(fp),
        newly_revoked: true,
    })
}

/// A one-line subject (`CN=...`, or the fingerprint's start for an empty subject).
pub fn subject_text(cert: &X509Ref) -> String {
    let parts: Vec<String> = cert
        .subject_name()
        .entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?").to_string();
            let val = e.data().to_string().unwrap_or_default();
            format!("{key}={val}")
        })
        .collect();
    if parts.is_empty() {
        "(empty subject)".to_string()
    } else {
        parts.join(",")
    }
}

/// DER of `SEQUENCE { [0] keyIdentifier }`.
fn aki_der(keyid: &[u8]) -> Vec<u8> {
    let mut inner = vec![0x80, keyid.len() as u8];
    inner.extend_from_slice(keyid);
    let mut der = vec![0x30, inner.len() as u8];
    der.extend_from_slice(&inner);
    der
}

/// DER of an INTEGER holding `n`.
fn integer_der(n: u64) -> Vec<u8> {
    let mut bytes: Vec<u8> = n
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    if !matches!(bytes.first(), Some(b) if b & 0x80 == 0) {
        bytes.insert(0, 0);
    }
    let mut der = vec![0x02, bytes.len() as u8];
    der.extend_from_slice(&bytes);
    der
}

/// The CRL: every revoked CA-issued serial, signed by the CA, thisUpdate now, nextUpdate
/// after the configured CRL lifetime, CRL number = the time of issue. DER.
pub fn crl(store: &Store) -> Result<Vec<u8>, RevocationError> {
    let ca_cert = store.ca_cert()?;
    let ca_key = store.ca_key()?;
    let config = store.config()?;
    let revs = Revocations::load(store)?;
    let now = now_unix();
    let mut b = X509CrlBuilder::new()?;
    b.set_issuer_name(ca_cert.subject_name())?;
    b.set_last_update(&*Asn1Time::from_unix(now as i64)?)?;
    let next = now.saturating_add(config.crl_validity_secs.max(1));
    b.set_next_update(&*Asn1Time::from_unix(next as i64)?)?;
    let ski = ca_cert
        .subject_key_id()
        .map(|s| s.as_slice().to_vec())
        .ok_or_else(|| RevocationError::BadRequest("the CA root has no key identifier".into()))?;
    b.append_extension(X509Extension::new_from_der(
        &*Asn1Object::from_str("2.5.29.35")?,
        false,
        &*Asn1OctetString::new_from_bytes(&aki_der(&ski))?,
    )?)?;
    b.append_extension(X509Extension::new_from_der(
        &*Asn1Object::from_str("2.5.29.20")?,
        false,
        &*Asn1OctetString::new_from_bytes(&integer_der(now))?,
    )?)?;
    for r in &revs.serials {
        let mut e = X509RevokedBuilder::new()?;
        let serial: Asn1Integer = BigNum::from_hex_str(&r.serial)?.to_asn1_integer()?;
        e.set_serial_number(&serial)?;
        e.set_revocation_date(&*Asn1Time::from_unix(r.time as i64)?)?;
        b.add_revoked(e.build())?;
    }
    if !revs.serials.is_empty() {
        b.sort()?;
    }
    b.sign(&ca_key, MessageDigest::sha256())?;
    Ok(b.build()?.to_der()?)
}

/// The status of the certificate with this fingerprint.
pub fn status(store: &Store, fp: &str) -> Result<CertStatus, RevocationError> {
    let fp = fp.to_ascii_lowercase();
    let Some(known) = store.lookup(&fp)? else {
        return Ok(CertStatus {
            fingerprint: fp,
            status: crate::api::Status::Unknown,
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
    let not_after = asn1_to_unix(known.cert.not_after())?;
    let status = if revoked.is_some() {
        crate::api::Status::Revoked
    } else if not_after < i64::try_from(now_unix()).unwrap_or(i64::MAX) {
        crate::api::Status::Expired
    } else {
        crate::api::Status::Good
    };
    Ok(CertStatus {
        fingerprint: fp,
        status,
        serial,
        subject: Some(subject_text(&known.cert)),
        not_after: Some(not_after),
        revoked_at: revoked.as_ref().map(|r| r.0),
        reason: revoked.map(|r| r.1),
    })
}

/// Verifies `leaf` up to one of `trusted` through `intermediates` (OpenSSL's path
/// validation at the current time); returns the chain, leaf first, anchor last.
pub fn verify_chain(
    anchor: &'static str,
    trusted: &[X509],
    leaf: &X509Ref,
    intermediates: &[X509],
) -> Result<Vec<X509>, RevocationError> {
    let mut sb = X509StoreBuilder::new()?;
    for t in trusted {
        sb.add_cert(t.clone())?;
    }
    let st = sb.build();
    let mut chain = Stack::new()?;
    for c in intermediates {
        chain.push(c.clone())?;
    }
    let mut ctx = X509StoreContext::new()?;
    let result = ctx.init(&st, leaf, &chain, |c| {
        let ok = c.verify_cert()?;
        let verified: Vec<X509> = c
            .chain()
            .map(|s| s.iter().map(|x| x.to_owned()).collect())
            .unwrap_or_default();
        Ok((ok, c.error(), c.error_depth(), verified))
    })?;
    let (ok, err, depth, verified) = result;
    if !ok {
        return Err(RevocationError::Untrusted {
            anchor,
            reason: err.error_string().to_string(),
            depth,
        });
    }
    Ok(verified)
}

/// Fails if any certificate of `chain` is revoked.
pub fn check_not_revoked(store: &Store, chain: &[X509]) -> Result<(), RevocationError> {
    let revs = Revocations::load(store)?;
    for c in chain {
        if let Some(reason) = revs.reason(store, c)? {
            return Err(RevocationError::Revoked {
                subject: subject_text(c),
                fingerprint: fingerprint(c)?,
                reason,
            });
        }
    }
    Ok(())
}

/// The result of registering a coprocessor certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub fingerprint: String,
    /// Where it is in the certificate store: `coprocessor/<fingerprint>`.
    pub name: String,
}

/// Registers a coprocessor certificate chain (`[coprocessor, host AIK, ...]`): it must
/// verify up to the CA root with nothing revoked, and `principal` needs write permission on
/// `coprocessor/<fingerprint>`.
pub fn register_coprocessor(
    store: &Store,
    chain: &[X509],
    principal: Option<&Principal>,
) -> Result<Registered, RevocationError> {
    let leaf = chain.first().ok_or(RevocationError::EmptyChain)?;
    let fp = fingerprint(leaf)?;
    let name = format!("coprocessor/{fp}");
    certstore::authorize_write(principal, &name)?;
    let _lock = store.lock()?;
    let ca = store.ca_cert()?;
    let verified = verify_chain("the CA root", &[ca], leaf, &chain[1..])?;
    check_not_revoked(store, &verified)?;
    store.register(leaf)?;
    certstore::put_unchecked(store, &name, &verified[..verified.len().saturating_sub(1)])?;
    log::info!(
        "registered coprocessor certificate {fp} ({}) for principal {:?}",
        subject_text(leaf),
        principal.map(|p| p.name.as_str()).unwrap_or("-")
    );
    Ok(Registered {
        fingerprint: fp,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Status;
    use crate::issue::{aik_cert, generate_key, Kind};
    use crate::store::tests::new_store;
    use crate::store::Config;

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
        )
        .unwrap();
        store.record_issued(&c).unwrap();
        c
    }

    fn openssl_crl_text(der: &[u8]) -> String {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), der).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
            .arg(tmp.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn crl_lists_revoked_serials_and_verifies() {
        let (_tmp, store, _) = new_store(Config::default());
        let empty = crl(&store).unwrap();
        let t = openssl_crl_text(&empty);
        assert!(t.contains("No Revoked Certificates"), "{t}");
        assert!(t.contains("Next Update"), "{t}");

        let c = issue(&store, Kind::Host, 3600);
        let serial = crate::store::serial_of(&c).unwrap();
        let r = revoke_serial(&store, &serial.to_lowercase(), Some("key compromise")).unwrap();
        assert!(r.newly_revoked);
        assert!(!revoke_serial(&store, &serial, None).unwrap().newly_revoked);
        let der = crl(&store).unwrap();
        let t = openssl_crl_text(&der);
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
        // Not in the CRL: the CA did not issue it.
        let t = openssl_crl_text(&crl(&store).unwrap());
        assert_eq!(t.matches("Serial Number").count(), 1, "{t}");

        let short = issue(&store, Kind::Vtpm, 1);
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert_eq!(
            status(&store, &fingerprint(&short).unwrap())
                .unwrap()
                .status,
            Status::Expired
        );
    }

    #[test]
    fn chains_are_verified_and_checked_for_revocation() {
        let (_tmp, store, _) = new_store(Config::default());
        let ca = store.ca_cert().unwrap();
        let host = issue(&store, Kind::Host, 3600);
        let chain = verify_chain("the CA root", std::slice::from_ref(&ca), &host, &[]).unwrap();
        assert_eq!(chain.len(), 2);
        check_not_revoked(&store, &chain).unwrap();
        revoke_cert(&store, &host, None).unwrap();
        assert!(matches!(
            check_not_revoked(&store, &chain),
            Err(RevocationError::Revoked { .. })
        ));
        let key = generate_key().unwrap();
        let stranger = crate::issue::root_cert(&key, "stranger", 3600).unwrap();
        assert!(matches!(
            verify_chain("the CA root", &[ca], &stranger, &[]),
            Err(RevocationError::Untrusted { .. })
        ));
    }

    #[test]
    fn integer_der_is_minimal_and_positive() {
        assert_eq!(integer_der(0), [2, 1, 0]);
        assert_eq!(integer_der(0x7f), [2, 1, 0x7f]);
        assert_eq!(integer_der(0x80), [2, 2, 0, 0x80]);
        assert_eq!(integer_der(0x0102), [2, 2, 1, 2]);
    }
}
