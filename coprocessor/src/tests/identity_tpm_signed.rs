use super::*;
use openssl::bn::BigNum;
use openssl::ecdsa::EcdsaSig;

#[test]
fn signature_value_matches_openssl() {
    // r with the top bit set and s with leading zero bytes: both must be minimal.
    let r = [0x80u8; 32];
    let mut s = [0u8; 32];
    s[2] = 0x01;
    s[31] = 0x7f;
    let ours = der::sequence(&[&der::unsigned_integer(&r), &der::unsigned_integer(&s)]);
    let theirs = EcdsaSig::from_private_components(
        BigNum::from_slice(&r).unwrap(),
        BigNum::from_slice(&s).unwrap(),
    )
    .unwrap()
    .to_der()
    .unwrap();
    assert_eq!(ours, theirs);
}

#[test]
fn zero_signature_is_refused() {
    assert!(assemble(b"", b"", &[0; 32], &[1]).is_err());
    assert!(assemble(b"", b"", &[1], &[]).is_err());
}
