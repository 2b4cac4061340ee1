//! The certificate chains the CA relies on, and what makes one acceptable.
//!
//! Every chain is first verified by OpenSSL's path validation at the current time
//! ([`verify_chain`]) and then checked for revocation: no certificate of it may be revoked,
//! by serial or by fingerprint ([`check_not_revoked`]). On top of that each kind of chain has
//! its policy:
//!
//! * a host EK chain ([`check_host_ek_chain`]) ends at a configured EK root;
//! * a vEK chain ([`check_vek_chain`]) is vEK, coprocessor, host AIK, up to this CA's root,
//!   with every intermediate either issued here (and then a host AIK certificate) or
//!   registered here (a coprocessor certificate; unregistered ones only if the store allows
//!   them), and at least one host AIK certificate;
//! * a coprocessor chain ([`check_coprocessor_chain`], for registration) is coprocessor, host
//!   AIK, up to this CA's root.
//!
//! The callers (enrollment, registration) turn a [`ChainError`] into their own errors.

use openssl::error::ErrorStack;
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509Ref, X509StoreContext, X509VerifyResult, X509};

use crate::issue;
use crate::revocation::Revocations;
use crate::store::{IndexEntry, Store, StoreError};
use crate::util::{fingerprint, subject_text};

/// Why OpenSSL's path validation refused a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{error} (at depth {depth})")]
pub struct PathError {
    /// OpenSSL's verification result (`X509_V_ERR_...`).
    pub error: X509VerifyResult,
    /// The position in the chain it concerns (0: the leaf).
    pub depth: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error(transparent)]
    Untrusted(PathError),
    #[error("certificate {subject} ({fingerprint}) is revoked: {reason}")]
    Revoked {
        subject: String,
        fingerprint: String,
        reason: String,
    },
    #[error("empty certificate chain")]
    EmptyChain,
    #[error("no EK root is configured (vtpm-ca add-ek-root)")]
    NoEkRoot,
    #[error("the vEK certificate is issued by the CA root itself, not by a coprocessor")]
    NoCoprocessor,
    #[error("{0} is issued by this CA but is not a host AIK certificate")]
    NotAHostAik(String),
    #[error("no host AIK certificate in the chain")]
    NoHostAik,
    #[error("coprocessor certificate {subject} ({fingerprint}) is not registered with this CA (POST /v1/coprocessor)")]
    UnregisteredCoprocessor {
        subject: String,
        fingerprint: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("OpenSSL: {0}")]
    Crypto(#[from] ErrorStack),
}

/// Verifies `leaf` up to one of `trusted` through `intermediates` (OpenSSL's path
/// validation at the current time); returns the chain, leaf first, anchor last.
pub fn verify_chain(
    trusted: &[X509],
    leaf: &X509Ref,
    intermediates: &[X509],
) -> Result<Vec<X509>, ChainError> {
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
    let (ok, error, depth, verified) = ctx.init(&st, leaf, &chain, |c| {
        let ok = c.verify_cert()?;
        let verified: Vec<X509> = c
            .chain()
            .map(|s| s.iter().map(|x| x.to_owned()).collect())
            .unwrap_or_default();
        Ok((ok, c.error(), c.error_depth(), verified))
    })?;
    if !ok {
        return Err(ChainError::Untrusted(PathError { error, depth }));
    }
    Ok(verified)
}

/// Fails if any certificate of `chain` is revoked.
pub fn check_not_revoked(store: &Store, chain: &[X509]) -> Result<(), ChainError> {
    let revs = Revocations::load(store)?;
    for c in chain {
        if let Some(reason) = revs.reason(store, c)? {
            return Err(ChainError::Revoked {
                subject: subject_text(c),
                fingerprint: fingerprint(c)?,
                reason,
            });
        }
    }
    Ok(())
}

/// Verifies `chain` (leaf first, then intermediates) up to one of `trusted` and checks that
/// nothing in it is revoked; returns the verified chain, anchor last.
fn verify_unrevoked(
    store: &Store,
    trusted: &[X509],
    chain: &[X509],
) -> Result<Vec<X509>, ChainError> {
    let (leaf, intermediates) = chain.split_first().ok_or(ChainError::EmptyChain)?;
    let verified = verify_chain(trusted, leaf, intermediates)?;
    check_not_revoked(store, &verified)?;
    Ok(verified)
}

/// Host enrollment: the EK certificate (`chain[0]`, intermediates after it) must chain to a
/// configured EK root, nothing in it revoked.
pub fn check_host_ek_chain(store: &Store, chain: &[X509]) -> Result<(), ChainError> {
    let roots = store.ek_roots()?;
    if roots.is_empty() {
        return Err(ChainError::NoEkRoot);
    }
    verify_unrevoked(store, &roots, chain)?;
    Ok(())
}

/// vTPM enrollment: vEK <- coprocessor <- host AIK <- CA root, none revoked, every
/// intermediate either issued here (a host AIK certificate) or registered here (a
/// coprocessor certificate).
pub fn check_vek_chain(store: &Store, chain: &[X509]) -> Result<(), ChainError> {
    let verified = verify_unrevoked(store, &[store.ca_cert()?], chain)?;
    let require_registered = store.config()?.require_registered_coprocessor;
    let intermediates = &verified[1..verified.len().saturating_sub(1)];
    if intermediates.is_empty() {
        return Err(ChainError::NoCoprocessor);
    }
    let mut saw_host_aik = false;
    for c in intermediates {
        let fp = fingerprint(c)?;
        match store.lookup(&fp)?.map(|k| k.entry) {
            Some(IndexEntry::Issued { .. }) => {
                if issue::host_ek_cert_hash(c).is_none() {
                    return Err(ChainError::NotAHostAik(subject_text(c)));
                }
                saw_host_aik = true;
            }
            Some(IndexEntry::Registered) => {}
            None if require_registered => {
                return Err(ChainError::UnregisteredCoprocessor {
                    subject: subject_text(c),
                    fingerprint: fp,
                })
            }
            None => {}
        }
    }
    if !saw_host_aik {
        return Err(ChainError::NoHostAik);
    }
    Ok(())
}

/// Coprocessor registration: `[coprocessor, host AIK, ...]` up to this CA's root, nothing
/// revoked; returns the verified chain, root last.
pub fn check_coprocessor_chain(store: &Store, chain: &[X509]) -> Result<Vec<X509>, ChainError> {
    verify_unrevoked(store, &[store.ca_cert()?], chain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::{aik_cert, generate_key, Kind};
    use crate::setup::tests::new_store;
    use crate::store::Config;

    #[test]
    fn chains_are_verified_and_checked_for_revocation() {
        let (_tmp, store, _) = new_store(Config::default());
        let ca = store.ca_cert().unwrap();
        let aik = generate_key().unwrap();
        let host = aik_cert(
            &store.ca_key().unwrap(),
            &ca,
            Kind::Host,
            "t",
            &aik,
            &[0; 32],
            3600,
            None,
        )
        .unwrap();
        store.lock().unwrap().record_issued(&host).unwrap();
        let chain = verify_chain(std::slice::from_ref(&ca), &host, &[]).unwrap();
        assert_eq!(chain.len(), 2);
        check_not_revoked(&store, &chain).unwrap();
        crate::revocation::revoke_cert(&store, &host, None).unwrap();
        assert!(matches!(
            check_not_revoked(&store, &chain),
            Err(ChainError::Revoked { .. })
        ));
        let key = generate_key().unwrap();
        let stranger = crate::issue::root_cert(&key, "stranger", 3600).unwrap();
        match verify_chain(&[ca], &stranger, &[]) {
            Err(ChainError::Untrusted(e)) => assert_eq!(e.depth, 0, "{e}"),
            other => panic!("{other:?}"),
        }
    }
}
