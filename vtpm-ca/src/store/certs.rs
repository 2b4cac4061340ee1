//! Issued and registered certificates and the fingerprint index over both.
//!
//! `issued/<SERIAL>.pem` holds everything the CA issued (by canonical serial: upper-case
//! hex, even number of digits), `registered/<sha256>.pem` the certificates it knows without
//! having issued them (coprocessor certificates, certificates revoked by fingerprint), and
//! `index/<sha256>.json` says for a fingerprint which of the two it is ([`IndexEntry`]).

use openssl::bn::BigNum;
use openssl::x509::{X509Ref, X509};
use serde::{Deserialize, Serialize};

use super::{Locked, Store, StoreError, INDEX, ISSUED, PUBLIC_FILE, REGISTERED};
use crate::util::{fingerprint, is_fingerprint};

/// Where a fingerprint is known from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum IndexEntry {
    /// Issued by this CA, with this serial.
    Issued { serial: String },
    /// Registered (e.g. a coprocessor certificate signed by a host AIK).
    Registered,
}

/// A certificate found by fingerprint.
#[derive(Debug, Clone)]
pub struct Known {
    pub entry: IndexEntry,
    pub cert: X509,
}

impl Store {
    /// The issued certificate with this serial (any hex spelling).
    pub fn issued(&self, serial: &str) -> Result<Option<X509>, StoreError> {
        let serial = normalize_serial(serial)?;
        self.read_cert_optional(&format!("{ISSUED}/{serial}.pem"))
    }

    /// Every issued certificate.
    pub fn issued_all(&self) -> Result<Vec<X509>, StoreError> {
        self.certs_in(ISSUED)
    }

    /// Every registered certificate.
    pub fn registered_all(&self) -> Result<Vec<X509>, StoreError> {
        self.certs_in(REGISTERED)
    }

    /// The certificate with this SHA-256 fingerprint (either case), if issued or registered
    /// here.
    pub fn lookup(&self, fp: &str) -> Result<Option<Known>, StoreError> {
        if !is_fingerprint(fp) {
            return Err(StoreError::BadFingerprint(fp.to_string()));
        }
        let fp = fp.to_ascii_lowercase();
        let entry: Option<IndexEntry> = self.read_json_optional(&format!("{INDEX}/{fp}.json"))?;
        let Some(entry) = entry else {
            return Ok(None);
        };
        let cert = match &entry {
            IndexEntry::Issued { serial } => self.issued(serial)?,
            IndexEntry::Registered => self.read_cert_optional(&format!("{REGISTERED}/{fp}.pem"))?,
        };
        Ok(cert.map(|cert| Known { entry, cert }))
    }

    /// The serial of `cert` if this CA issued it.
    pub fn issued_serial(&self, cert: &X509Ref) -> Result<Option<String>, StoreError> {
        Ok(match self.lookup(&fingerprint(cert)?)? {
            Some(Known {
                entry: IndexEntry::Issued { serial },
                ..
            }) => Some(serial),
            _ => None,
        })
    }
}

impl Locked<'_> {
    /// Records a certificate this CA issued; returns its serial.
    pub fn record_issued(&self, cert: &X509Ref) -> Result<String, StoreError> {
        let serial = serial_of(cert)?;
        self.write_cert(&format!("{ISSUED}/{serial}.pem"), cert)?;
        self.write_json(
            &format!("{INDEX}/{}.json", fingerprint(cert)?),
            &IndexEntry::Issued {
                serial: serial.clone(),
            },
            PUBLIC_FILE,
        )?;
        Ok(serial)
    }

    /// Registers a certificate the CA did not issue (one it issued stays known as issued);
    /// returns its fingerprint.
    pub fn register(&self, cert: &X509Ref) -> Result<String, StoreError> {
        let fp = fingerprint(cert)?;
        if self.issued_serial(cert)?.is_some() {
            return Ok(fp);
        }
        self.write_cert(&format!("{REGISTERED}/{fp}.pem"), cert)?;
        self.write_json(
            &format!("{INDEX}/{fp}.json"),
            &IndexEntry::Registered,
            PUBLIC_FILE,
        )?;
        Ok(fp)
    }
}

/// The serial of a certificate, canonical (upper-case hex, even number of digits).
pub fn serial_of(cert: &X509Ref) -> Result<String, StoreError> {
    Ok(cert.serial_number().to_bn()?.to_hex_str()?.to_string())
}

/// A serial in canonical form: accepts either case, an optional `0x` and `:` separators.
pub fn normalize_serial(s: &str) -> Result<String, StoreError> {
    let bad = || StoreError::BadSerial(s.to_string());
    let t: String = s
        .trim()
        .trim_start_matches("0x")
        .trim_start_matches("0X")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    if t.is_empty() || t.len() > 128 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let bn = BigNum::from_hex_str(&t).map_err(|_| bad())?;
    if bn.num_bits() == 0 {
        return Err(bad());
    }
    Ok(bn.to_hex_str().map_err(|_| bad())?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::tests::new_store;
    use crate::store::Config;

    #[test]
    fn serials_normalize() {
        assert_eq!(normalize_serial("0x0a").unwrap(), "0A");
        assert_eq!(normalize_serial("1f:2E").unwrap(), "1F2E");
        assert!(normalize_serial("0").is_err());
        assert!(normalize_serial("xyz").is_err());
        assert!(normalize_serial("").is_err());
    }

    #[test]
    fn issued_and_registered_certificates_are_found_by_fingerprint() {
        let (_tmp, store, _) = new_store(Config::default());
        let key = crate::issue::generate_key().unwrap();
        let other = crate::issue::root_cert(&key, "someone else", 3600).unwrap();
        let fp = fingerprint(&other).unwrap();
        assert!(store.lookup(&fp).unwrap().is_none());
        assert!(matches!(
            store.lookup("not hex"),
            Err(StoreError::BadFingerprint(_))
        ));
        let locked = store.lock().unwrap();
        assert_eq!(locked.register(&other).unwrap(), fp);
        let known = store.lookup(&fp.to_uppercase()).unwrap().unwrap();
        assert_eq!(known.entry, IndexEntry::Registered);
        assert_eq!(store.registered_all().unwrap().len(), 1);
        assert_eq!(store.issued_serial(&other).unwrap(), None);
        // The root, issued at init, stays known as issued when registered.
        let ca = store.ca_cert().unwrap();
        let serial = store.issued_serial(&ca).unwrap().unwrap();
        locked.register(&ca).unwrap();
        assert_eq!(
            store
                .lookup(&fingerprint(&ca).unwrap())
                .unwrap()
                .unwrap()
                .entry,
            IndexEntry::Issued { serial }
        );
        assert_eq!(store.registered_all().unwrap().len(), 1);
    }
}
