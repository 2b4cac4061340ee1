//! Coprocessor registration (`POST /v1/coprocessor`).
//!
//! A coprocessor certificate is signed by a host AIK, not by the CA, so the CA learns of it
//! by registration: the chain `[coprocessor, host AIK, ...]` must verify up to the CA root
//! with nothing in it revoked ([`crate::chain::check_coprocessor_chain`]), and the principal
//! needs write permission on `coprocessor/<fingerprint>`. The certificate is then known by
//! fingerprint (status queries, revocation, vTPM enrollment through it) and stored, with its
//! chain up to the root, as `coprocessor/<fingerprint>` in the named store.

use openssl::error::ErrorStack;
use openssl::x509::X509;

use crate::certstore::{self, CertStoreError, Principal};
use crate::chain::{self, ChainError};
use crate::store::{Store, StoreError};
use crate::util::{fingerprint, subject_text};

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("invalid request: chain entry {index} is not PEM: {source}")]
    BadPem { index: usize, source: ErrorStack },
    #[error("empty certificate chain")]
    EmptyChain,
    /// Path validation failed ([`ChainError::Untrusted`]).
    #[error("certificate chain does not verify up to the CA root: {0}")]
    Untrusted(ChainError),
    #[error("certificate {subject} ({fingerprint}) is revoked: {reason}")]
    Revoked {
        subject: String,
        fingerprint: String,
        reason: String,
    },
    #[error(transparent)]
    Access(#[from] CertStoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("OpenSSL: {0}")]
    Crypto(#[from] ErrorStack),
}

impl From<ChainError> for RegistrationError {
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::EmptyChain => RegistrationError::EmptyChain,
            ChainError::Revoked {
                subject,
                fingerprint,
                reason,
            } => RegistrationError::Revoked {
                subject,
                fingerprint,
                reason,
            },
            ChainError::Store(e) => RegistrationError::Store(e),
            ChainError::Crypto(e) => RegistrationError::Crypto(e),
            other => RegistrationError::Untrusted(other),
        }
    }
}

/// The result of registering a coprocessor certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub fingerprint: String,
    /// Where it is in the certificate store: `coprocessor/<fingerprint>`.
    pub name: String,
}

/// The certificates of the PEM entries of a request, in order (an entry may hold several).
pub fn parse_chain(pems: &[String]) -> Result<Vec<X509>, RegistrationError> {
    let mut chain = Vec::new();
    for (index, pem) in pems.iter().enumerate() {
        let certs = X509::stack_from_pem(pem.as_bytes())
            .map_err(|source| RegistrationError::BadPem { index, source })?;
        chain.extend(certs);
    }
    Ok(chain)
}

/// Registers a coprocessor certificate chain (`[coprocessor, host AIK, ...]`) for
/// `principal`.
pub fn register(
    store: &Store,
    chain: &[X509],
    principal: Option<&Principal>,
) -> Result<Registered, RegistrationError> {
    let leaf = chain.first().ok_or(RegistrationError::EmptyChain)?;
    let fp = fingerprint(leaf)?;
    let name = format!("coprocessor/{fp}");
    certstore::authorize_write(principal, &name)?;
    let store = store.lock()?;
    let verified = chain::check_coprocessor_chain(&store, chain)?;
    store.register(leaf)?;
    certstore::put_unchecked(&store, &name, &verified[..verified.len().saturating_sub(1)])?;
    log::info!(
        "registered coprocessor certificate {fp} ({}) for principal {:?}",
        subject_text(leaf),
        certstore::who(principal)
    );
    Ok(Registered {
        fingerprint: fp,
        name,
    })
}
