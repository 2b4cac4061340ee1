//! Small helpers shared by the modules: hex, time, fingerprints, randomness.

use std::time::{SystemTime, UNIX_EPOCH};

use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::x509::X509Ref;

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
/// Bytes of a hex string (either case), `None` if it is not hex.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() & 1 == 1 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|d| u8::from_str_radix(d, 16).ok()))
        .collect()
}

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

/// SHA-256 of the certificate's DER, lower-case hex: the fingerprint used everywhere.
pub fn fingerprint(cert: &X509Ref) -> Result<String, ErrorStack> {
    Ok(hex(&cert.digest(MessageDigest::sha256())?))
}

/// SHA-256 of the certificate's DER SubjectPublicKeyInfo, lower-case hex: what identifies
/// its key whatever certificate carries it (subject bindings use it).
pub fn public_key_fingerprint(cert: &X509Ref) -> Result<String, ErrorStack> {
    let spki = cert.public_key()?.public_key_to_der()?;
    Ok(hex(&openssl::hash::hash(MessageDigest::sha256(), &spki)?))
}

/// `n` random bytes from OpenSSL's CSPRNG.
pub(crate) fn random(n: usize) -> Result<Vec<u8>, ErrorStack> {
    let mut buf = vec![0; n];
    openssl::rand::rand_bytes(&mut buf)?;
    Ok(buf)
}

/// Whether `s` is a 64-digit hex SHA-256 fingerprint.
pub(crate) fn is_fingerprint(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(unhex("00AB10"), Some(vec![0, 0xab, 0x10]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn asn1_time_converts() {
        let t = Asn1Time::from_unix(1_700_000_000).unwrap();
        assert_eq!(asn1_to_unix(&t).unwrap(), 1_700_000_000);
    }
}
