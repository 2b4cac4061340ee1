//! Small helpers shared by the modules: time, fingerprints, subjects, randomness.

use std::time::{SystemTime, UNIX_EPOCH};

use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::x509::X509Ref;

/// Seconds since the Unix epoch.
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An ASN.1 time as seconds since the Unix epoch (negative before 1970).
pub(crate) fn asn1_to_unix(t: &Asn1TimeRef) -> Result<i64, ErrorStack> {
    let epoch = Asn1Time::from_unix(0)?;
    let d = epoch.diff(t)?;
    Ok(i64::from(d.days) * 86_400 + i64::from(d.secs))
}

/// Whether `cert` has expired at `now` (Unix seconds).
pub(crate) fn expired(cert: &X509Ref, now: u64) -> Result<bool, ErrorStack> {
    Ok(asn1_to_unix(cert.not_after())? < i64::try_from(now).unwrap_or(i64::MAX))
}

/// SHA-256 of the certificate's DER, lower-case hex: the fingerprint used everywhere.
pub fn fingerprint(cert: &X509Ref) -> Result<String, ErrorStack> {
    Ok(hex::encode(cert.digest(MessageDigest::sha256())?))
}

/// SHA-256 of the certificate's DER SubjectPublicKeyInfo, lower-case hex: what identifies
/// its key whatever certificate carries it (subject bindings use it).
pub fn public_key_fingerprint(cert: &X509Ref) -> Result<String, ErrorStack> {
    let spki = cert.public_key()?.public_key_to_der()?;
    Ok(hex::encode(openssl::hash::hash(
        MessageDigest::sha256(),
        &spki,
    )?))
}

/// A one-line subject (`CN=...`, or `(empty subject)`), for messages and listings.
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

/// `n` random bytes from OpenSSL's CSPRNG.
pub(crate) fn random(n: usize) -> Result<Vec<u8>, ErrorStack> {
    let mut buf = vec![0; n];
    openssl::rand::rand_bytes(&mut buf)?;
    Ok(buf)
}

/// `n` random bytes from OpenSSL's CSPRNG, lower-case hex (tokens, session ids).
pub(crate) fn random_hex(n: usize) -> Result<String, ErrorStack> {
    Ok(hex::encode(random(n)?))
}

/// Whether `s` is a 64-digit hex SHA-256 fingerprint.
pub(crate) fn is_fingerprint(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asn1_time_converts() {
        let t = Asn1Time::from_unix(1_700_000_000).unwrap();
        assert_eq!(asn1_to_unix(&t).unwrap(), 1_700_000_000);
    }

    #[test]
    fn fingerprints_are_lower_case_sha256_hex() {
        let key = crate::issue::generate_key().unwrap();
        let cert = crate::issue::root_cert(&key, "r", 60).unwrap();
        let fp = fingerprint(&cert).unwrap();
        assert!(is_fingerprint(&fp), "{fp}");
        assert_eq!(fp, fp.to_lowercase());
        assert!(!is_fingerprint(&fp[1..]));
        assert_eq!(subject_text(&cert), "CN=r");
        assert_eq!(random_hex(16).unwrap().len(), 32);
    }
}
