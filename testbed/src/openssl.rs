//! OpenSSL as a verifier outside this workspace uses it on what the CA, the TPMs and the
//! tools write: the `openssl` command line, and the library's ECDSA check of raw TPM
//! signatures.

use std::process::Command;

use crate::process::run_tool;

/// `openssl crl -text` of a DER CRL: the CRL as OpenSSL reads it, or why it could not.
pub fn crl_text(der: &[u8]) -> Result<String, String> {
    let file = tempfile::NamedTempFile::new().map_err(|e| format!("temporary file: {e}"))?;
    std::fs::write(file.path(), der).map_err(|e| format!("{}: {e}", file.path().display()))?;
    run_tool(
        Command::new("openssl")
            .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
            .arg(file.path()),
    )
}

/// Whether (r, s) is an ECDSA P-256 signature over `digest` by the public key (x, y), as
/// OpenSSL judges it: the big-endian coordinates and scalars a TPM returns.
pub fn ecdsa_p256_verifies(x: &[u8], y: &[u8], digest: &[u8], r: &[u8], s: &[u8]) -> bool {
    use ::openssl::{bn::BigNum, ec::*, ecdsa::EcdsaSig, nid::Nid};
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let public = EcKey::from_public_key_affine_coordinates(
        &group,
        &BigNum::from_slice(x).unwrap(),
        &BigNum::from_slice(y).unwrap(),
    )
    .unwrap();
    public.check_key().unwrap();
    let sig = EcdsaSig::from_private_components(
        BigNum::from_slice(r).unwrap(),
        BigNum::from_slice(s).unwrap(),
    )
    .unwrap();
    sig.verify(digest, &public).unwrap()
}
