//! Host attestation: checking a host TPM's quote for a migration (ADR 0010).
//!
//! A host proves three things with one quote by its AIK: that it is the host its AIK
//! certificate (issued by our CA) names; that it answers now (the quote's qualifying data
//! binds the controller's fresh nonce for this migration and role); and which migration key
//! it holds (the qualifying data binds it too, so the ticket can name it). The quote covers
//! SHA-256 PCRs 0-7; their digest is recorded in the step log. Revocation of the AIK
//! certificate is checked by the caller, at the CA.

use base64::Engine as _;
use migration::api::{attestation_data, AttestRequest, QUOTED_PCRS};
use migration::seal::{common_name, verify_chain};
use migration::MigrationId;
use openssl::bn::BigNum;
use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcPoint};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;
use openssl::x509::X509;
use tpm_proto::attest::{QuoteAttest, Signature};
use tpm_proto::public::alg;

/// Why a quote is refused.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("the host AIK certificate does not verify up to the CA root: {0}")]
    UntrustedAik(String),
    #[error("the quote is from host {found:?}, the migration's {role} is {expected}")]
    WrongHost {
        role: &'static str,
        expected: String,
        found: String,
    },
    #[error("quote does not verify: {0}")]
    Invalid(String),
}

/// What a verified quote says.
#[derive(Debug, Clone)]
pub struct Attested {
    pub host_id: String,
    pub aik_cert: X509,
    /// The host's migration key (uncompressed P-256 point).
    pub migration_key: Vec<u8>,
    /// SHA-256 of the quoted PCR values (0-7).
    pub pcr_digest: Vec<u8>,
}

fn invalid(reason: impl Into<String>) -> AttestError {
    AttestError::Invalid(reason.into())
}

/// Checks `req` for `migration`, `role` (whose host must be `expected_host`) and the
/// controller's `nonce` for that role, against the CA `root`.
pub fn verify_quote(
    req: &AttestRequest,
    migration: &MigrationId,
    expected_host: &str,
    nonce: &[u8],
    root: &X509,
) -> Result<Attested, AttestError> {
    let aik_cert = X509::from_pem(req.aik_cert.as_bytes())
        .map_err(|e| AttestError::UntrustedAik(format!("unparseable: {e}")))?;
    verify_chain(root, std::slice::from_ref(&aik_cert)).map_err(AttestError::UntrustedAik)?;
    let host_id = common_name(&aik_cert).unwrap_or_default();
    if host_id != expected_host {
        return Err(AttestError::WrongHost {
            role: req.role.as_str(),
            expected: expected_host.to_owned(),
            found: host_id,
        });
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let attest = b64
        .decode(&req.attest)
        .map_err(|_| invalid("attest is not base64"))?;
    let signature = b64
        .decode(&req.signature)
        .map_err(|_| invalid("signature is not base64"))?;
    let migration_key =
        hex::decode(&req.migration_key).map_err(|_| invalid("migration key is not hex"))?;
    let group =
        EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(|e| invalid(e.to_string()))?;
    let mut ctx = BigNumContext::new().map_err(|e| invalid(e.to_string()))?;
    if migration_key.len() != migration::ticket::POINT_LEN
        || migration_key[0] != 4
        || EcPoint::from_bytes(&group, &migration_key, &mut ctx).is_err()
    {
        return Err(invalid(
            "the migration key is not an uncompressed P-256 point",
        ));
    }
    let info =
        QuoteAttest::parse(&attest).map_err(|e| invalid(format!("malformed TPMS_ATTEST: {e}")))?;
    let sig = match Signature::parse(&signature) {
        Ok(Signature::Ecdsa { hash, r, s }) if hash == alg::SHA256 => BigNum::from_slice(&r)
            .and_then(|r| Ok((r, BigNum::from_slice(&s)?)))
            .and_then(|(r, s)| EcdsaSig::from_private_components(r, s))
            .map_err(|_| invalid("malformed ECDSA signature"))?,
        Ok(_) => return Err(invalid("the quote is not signed with ECDSA over SHA-256")),
        Err(e) => return Err(invalid(format!("malformed TPMT_SIGNATURE: {e}"))),
    };
    let aik_key = aik_cert
        .public_key()
        .and_then(|k| k.ec_key())
        .map_err(|_| invalid("the AIK certificate's key is not an EC key"))?;
    if !sig
        .verify(&openssl::sha::sha256(&attest), &aik_key)
        .unwrap_or(false)
    {
        return Err(invalid(
            "the signature does not verify with the AIK certificate's key",
        ));
    }
    let expected = attestation_data(migration, req.role, nonce, &migration_key);
    if info.extra_data != expected {
        return Err(invalid(
            "the qualifying data does not bind this migration's nonce and the migration key \
             (a stale or replayed quote)",
        ));
    }
    let quoted = info
        .quote
        .sha256_pcrs()
        .map_err(|e| invalid(format!("PCR selection: {e}")))?;
    if quoted != QUOTED_PCRS {
        return Err(invalid(format!(
            "quotes SHA-256 PCRs {quoted:?}, not {QUOTED_PCRS:?}"
        )));
    }
    Ok(Attested {
        host_id,
        aik_cert,
        migration_key,
        pcr_digest: info.quote.pcr_digest,
    })
}
