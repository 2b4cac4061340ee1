//! Who is calling: the operator (a bearer token, of which the controller keeps only the
//! SHA-256) or a host's daemon (a request signed by the host's coprocessor key, whose chain
//! must verify up to the CA root; the host id is its host AIK certificate's common name).

use base64::Engine as _;
use identity::Purpose;
use migration::api::{request_message, MAX_CLOCK_SKEW_SECS};
use migration::seal::{common_name, verify_chain};
use openssl::x509::X509;

/// A host whose signed request verified.
#[derive(Debug, Clone)]
pub struct HostCaller {
    pub host_id: String,
    pub coprocessor_cert: X509,
    pub aik_cert: X509,
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub enum Caller {
    Operator,
    Host(HostCaller),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: a bearer token or a host signature is required")]
    Missing,
    #[error("wrong bearer token")]
    BadToken,
    #[error("malformed host signature headers: {0}")]
    Malformed(&'static str),
    #[error(
        "the request was signed at {time}, more than {MAX_CLOCK_SKEW_SECS} s from now ({now})"
    )]
    Stale { time: u64, now: u64 },
    #[error("the host's chain does not verify up to the CA root: {0}")]
    UntrustedChain(String),
    #[error("the request's signature does not verify with the host's coprocessor certificate")]
    BadSignature,
}

/// Constant-time comparison of two digests.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

/// Authenticates a request from its headers (`header(name)` returns a header's value).
pub fn authenticate(
    header: impl Fn(&str) -> Option<String>,
    method: &str,
    path: &str,
    body: &[u8],
    admin_token_sha256: &[u8; 32],
    ca_root: &X509,
    now: u64,
) -> Result<Caller, AuthError> {
    if let Some(auth) = header("authorization") {
        let token = auth
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim().to_owned())
            .ok_or(AuthError::BadToken)?;
        return if same(&openssl::sha::sha256(token.as_bytes()), admin_token_sha256) {
            Ok(Caller::Operator)
        } else {
            Err(AuthError::BadToken)
        };
    }
    let Some(signature) = header(migration::api::HEADER_SIGNATURE) else {
        return Err(AuthError::Missing);
    };
    let time: u64 = header(migration::api::HEADER_TIME)
        .and_then(|t| t.trim().parse().ok())
        .ok_or(AuthError::Malformed("time"))?;
    if time.abs_diff(now) > MAX_CLOCK_SKEW_SECS {
        return Err(AuthError::Stale { time, now });
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let chain = header(migration::api::HEADER_CHAIN)
        .ok_or(AuthError::Malformed("chain"))?
        .split(',')
        .map(|c| {
            b64.decode(c.trim())
                .ok()
                .and_then(|der| X509::from_der(&der).ok())
        })
        .collect::<Option<Vec<_>>>()
        .ok_or(AuthError::Malformed("chain"))?;
    let [coprocessor_cert, aik_cert] =
        <[X509; 2]>::try_from(chain).map_err(|_| AuthError::Malformed("chain length"))?;
    verify_chain(ca_root, &[coprocessor_cert.clone(), aik_cert.clone()])
        .map_err(AuthError::UntrustedChain)?;
    let host_id = common_name(&aik_cert).unwrap_or_default();
    if common_name(&coprocessor_cert).as_deref()
        != Some(format!("vhost-vtpm coprocessor {host_id}").as_str())
    {
        return Err(AuthError::UntrustedChain(
            "the coprocessor certificate is not the host AIK's host's".into(),
        ));
    }
    let signature = b64
        .decode(signature.trim())
        .map_err(|_| AuthError::Malformed("signature"))?;
    let public = coprocessor_cert
        .public_key()
        .map_err(|_| AuthError::BadSignature)?;
    let msg = request_message(method, path, time, body);
    match identity::verify_for(&public, Purpose::ControllerRequest, &msg, &signature) {
        Ok(true) => Ok(Caller::Host(HostCaller {
            host_id,
            coprocessor_cert,
            aik_cert,
        })),
        _ => Err(AuthError::BadSignature),
    }
}
