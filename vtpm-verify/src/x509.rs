//! Certificates as the checks need them: parsed from DER or PEM, verified up to a trust
//! anchor (OpenSSL's path validation at the current time), their AIK profile, their keys.

use der::asn1::{AnyRef, ObjectIdentifier};
use der::{Decode, Tag, Tagged};
use openssl::pkey::{PKey, Public};
use openssl::x509::X509;
use tpm_proto::public::{PublicParams, TpmPublic};
use x509_cert::ext::pkix::BasicConstraints;

/// A certificate from DER, or PEM.
pub fn parse(bytes: &[u8]) -> Result<X509, String> {
    X509::from_der(bytes)
        .or_else(|_| X509::from_pem(bytes))
        .map_err(|e| format!("not a certificate: {e}"))
}

/// The certificate's subject, one line.
pub fn subject(cert: &X509) -> String {
    vtpm_ca::subject_text(cert)
}

/// Verifies `leaf` up to one of `trusted` through `intermediates`; the verified chain, leaf
/// first.
pub fn verify_chain(
    anchor: &'static str,
    trusted: &[X509],
    leaf: &X509,
    intermediates: &[X509],
) -> Result<Vec<X509>, String> {
    vtpm_ca::chain::verify_chain(trusted, leaf, intermediates).map_err(|e| format!("{anchor}: {e}"))
}

/// An AIK certificate (DER or PEM) issued by the CA root itself, checked against its
/// [`aik_profile`]: a host AIK (`host`) or a vAIK.
pub fn ca_issued_aik(bytes: &[u8], ca_root: &X509, host: bool) -> Result<X509, String> {
    let cert = parse(bytes)?;
    verify_chain("the CA root", std::slice::from_ref(ca_root), &cert, &[])?;
    aik_profile(&cert, host)?;
    Ok(cert)
}

/// `extnID` contents of extendedKeyUsage (2.5.29.37) and basicConstraints (2.5.29.19).
const EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];
const BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
/// tcg-kp-AIKCertificate (2.23.133.8.3).
const TCG_KP_AIK_CERTIFICATE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.8.3");

/// Checks the AIK certificate profile of ADR 0008: extended key usage tcg-kp-AIKCertificate
/// (2.23.133.8.3), and a CA (host AIK) or not (vAIK).
pub fn aik_profile(cert: &X509, ca: bool) -> Result<(), String> {
    let der = cert.to_der().map_err(|e| e.to_string())?;
    let exts = vtpm_ca::issue::extensions(&der).ok_or("unreadable certificate extensions")?;
    let one = |oid: &[u8]| {
        let mut found = exts.iter().filter(|e| e.oid == oid);
        match (found.next(), found.next()) {
            (e, None) => Ok(e),
            _ => Err("an extension appears twice".to_string()),
        }
    };
    let eku = one(EXT_KEY_USAGE)?.ok_or("not an AIK certificate (no extended key usage)")?;
    // ExtKeyUsageSyntax ::= SEQUENCE OF KeyPurposeId; purposes other than ours may have
    // arcs too large to decode as OIDs here, so they are compared encoded.
    let purposes: Vec<AnyRef<'_>> =
        Vec::from_der(eku.value).map_err(|e| format!("ExtKeyUsageSyntax: {e}"))?;
    let aik = purposes.iter().any(|p| {
        p.tag() == Tag::ObjectIdentifier && p.value() == TCG_KP_AIK_CERTIFICATE.as_bytes()
    });
    if !aik {
        return Err("not an AIK certificate (no EKU tcg-kp-AIKCertificate)".into());
    }
    let is_ca = match one(BASIC_CONSTRAINTS)? {
        None => false,
        Some(bc) => {
            BasicConstraints::from_der(bc.value)
                .map_err(|e| format!("BasicConstraints: {e}"))?
                .ca
        }
    };
    match (is_ca, ca) {
        (true, false) => Err("a CA certificate where a vAIK (CA:FALSE) was expected".into()),
        (false, true) => Err("not a CA certificate where a host AIK (CA:TRUE) was expected".into()),
        _ => Ok(()),
    }
}

/// SHA-256 of the certificate's SubjectPublicKeyInfo (DER).
pub fn key_sha256(cert: &X509) -> Result<Vec<u8>, String> {
    let spki = cert
        .public_key()
        .and_then(|k| k.public_key_to_der())
        .map_err(|e| e.to_string())?;
    Ok(openssl::sha::sha256(&spki).to_vec())
}

/// The public key of a TPMT_PUBLIC (RSA or ECC NIST P-256), for comparison with a
/// certificate's.
pub fn tpm_public_key(public: &TpmPublic) -> Result<PKey<Public>, String> {
    use openssl::bn::BigNum;
    let e = |e: openssl::error::ErrorStack| e.to_string();
    match &public.params {
        PublicParams::Rsa {
            modulus, exponent, ..
        } => {
            let exponent = if *exponent == 0 { 65_537 } else { *exponent };
            let rsa = openssl::rsa::Rsa::from_public_components(
                BigNum::from_slice(modulus).map_err(e)?,
                BigNum::from_u32(exponent).map_err(e)?,
            )
            .map_err(e)?;
            PKey::from_rsa(rsa).map_err(e)
        }
        PublicParams::Ecc {
            curve: tpm_proto::public::curve::NIST_P256,
            x,
            y,
            ..
        } => {
            let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)
                .map_err(e)?;
            let (x, y) = (
                BigNum::from_slice(x).map_err(e)?,
                BigNum::from_slice(y).map_err(e)?,
            );
            let key = openssl::ec::EcKey::from_public_key_affine_coordinates(&group, &x, &y)
                .map_err(e)?;
            PKey::from_ec_key(key).map_err(e)
        }
        _ => Err("neither an RSA key nor an ECC NIST P-256 key".into()),
    }
}

/// Verifies a TPM signature (ECDSA or RSASSA with SHA-256) over `message` with `key`.
pub fn verify_tpm_signature(
    key: &PKey<Public>,
    message: &[u8],
    signature: &tpm_proto::attest::Signature,
) -> Result<(), String> {
    use tpm_proto::attest::Signature;
    use tpm_proto::public::alg;
    let e = |e: openssl::error::ErrorStack| e.to_string();
    let ok = match signature {
        Signature::Ecdsa { hash, r, s } => {
            if *hash != alg::SHA256 {
                return Err(format!(
                    "signature hash algorithm {hash:#06x} is not SHA-256"
                ));
            }
            let ec = key
                .ec_key()
                .map_err(|_| "an ECDSA signature, but the certified key is not ECC")?;
            let sig = openssl::ecdsa::EcdsaSig::from_private_components(
                openssl::bn::BigNum::from_slice(r).map_err(e)?,
                openssl::bn::BigNum::from_slice(s).map_err(e)?,
            )
            .map_err(e)?;
            sig.verify(&openssl::sha::sha256(message), &ec).map_err(e)?
        }
        Signature::RsaSsa { hash, sig } => {
            if *hash != alg::SHA256 {
                return Err(format!(
                    "signature hash algorithm {hash:#06x} is not SHA-256"
                ));
            }
            let mut v = openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), key)
                .map_err(e)?;
            v.set_rsa_padding(openssl::rsa::Padding::PKCS1).map_err(e)?;
            v.update(message).map_err(e)?;
            v.verify(sig).unwrap_or(false)
        }
    };
    if ok {
        Ok(())
    } else {
        Err("the signature does not verify with the certified key".into())
    }
}
