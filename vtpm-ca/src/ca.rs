//! The CA as one object: a [`Store`] and the enrollment sessions.
//!
//! This module owns the authentication of bearer tokens against the ACL and the dispatch of
//! each API operation. The operations that read-modify-write the store (revocations,
//! registrations, named certificates, issuing) are serialised by the store's own lock
//! ([`Store::lock`], an `flock` on `DIR/.lock`), which covers the server's threads and
//! `vtpm-ca` commands run at the same time alike. The server calls only this; tests and
//! tools may use it directly instead of HTTPS.

use std::path::Path;

use openssl::x509::X509;

use crate::api::{
    CertStatus, CoprocessorRequest, CoprocessorResponse, EnrollFinishRequest, EnrollFinishResponse,
    EnrollStartRequest, EnrollStartResponse, EnrollTokenRequest, EnrollTokenResponse,
    PutCertResponse, RevokeRequest,
};
use crate::certstore::{self, Acl, CertStoreError, Principal};
use crate::coprocessor::{self, RegistrationError};
use crate::enroll::{self, Caller, EnrollError, Sessions};
use crate::revocation::{self, RevocationError, Revoked};
use crate::store::{Store, StoreError};
use crate::tokens::{self, TokenError};

/// The local CA.
#[derive(Debug)]
pub struct Ca {
    store: Store,
    sessions: Sessions,
    /// The CRL URL of the address the server listens on, for a store whose config names
    /// none ([`Ca::crl_url`]).
    served_crl_url: std::sync::OnceLock<String>,
}

impl Ca {
    /// Opens the store in `dir`.
    pub fn open(dir: &Path) -> Result<Ca, StoreError> {
        Ok(Ca::new(Store::open(dir)?))
    }

    pub fn new(store: Store) -> Ca {
        Ca {
            store,
            sessions: Sessions::default(),
            served_crl_url: std::sync::OnceLock::new(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Sets the CRL URL certificates name when the store's config has none: the server
    /// calls this with `https://<its address>/v1/crl` (only the first call counts).
    pub fn set_served_crl_url(&self, url: String) {
        let _ = self.served_crl_url.set(url);
    }

    /// The CRL distribution point of the AIK certificates issued now: the config's
    /// `crl_url`, else the server's address, else none.
    pub fn crl_url(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .store
            .config()?
            .crl_url
            .or_else(|| self.served_crl_url.get().cloned()))
    }

    /// The principal holding `token` (`None` without a token or with an unknown one).
    pub fn principal(&self, token: Option<&str>) -> Result<Option<Principal>, StoreError> {
        let Some(token) = token else {
            return Ok(None);
        };
        Ok(Acl::load(&self.store)?.authenticate(token).cloned())
    }

    /// The root certificate, PEM.
    pub fn ca_pem(&self) -> Result<String, StoreError> {
        self.store.ca_pem()
    }

    /// `enroll/start` by an in-process caller without a token ([`Ca::enroll_start_as`]).
    pub fn enroll_start(
        &self,
        req: &EnrollStartRequest,
    ) -> Result<EnrollStartResponse, EnrollError> {
        self.enroll_start_as(req, &Caller::local())
    }

    /// `enroll/start` from `caller` (address for the limits, bearer token for the
    /// authorization).
    pub fn enroll_start_as(
        &self,
        req: &EnrollStartRequest,
        caller: &Caller,
    ) -> Result<EnrollStartResponse, EnrollError> {
        enroll::start(&self.store, &self.sessions, req, caller)
    }

    /// `enroll/finish` by an in-process caller.
    pub fn enroll_finish(
        &self,
        req: &EnrollFinishRequest,
    ) -> Result<EnrollFinishResponse, EnrollError> {
        self.enroll_finish_as(req, &Caller::local())
    }

    pub fn enroll_finish_as(
        &self,
        req: &EnrollFinishRequest,
        caller: &Caller,
    ) -> Result<EnrollFinishResponse, EnrollError> {
        let url = self.crl_url()?;
        enroll::finish(&self.store, &self.sessions, req, caller, url.as_deref())
    }

    /// Issues a host enrolment token (admin only).
    pub fn create_enroll_token(
        &self,
        req: &EnrollTokenRequest,
        token: Option<&str>,
    ) -> Result<EnrollTokenResponse, TokenError> {
        let p = self.principal(token)?;
        certstore::authorize_admin(p.as_ref(), "enrolment tokens").map_err(|e| match e {
            CertStoreError::Store(e) => TokenError::Store(e),
            other => TokenError::Access(other),
        })?;
        let issued = tokens::issue(
            &self.store,
            &req.subject,
            req.validity_secs
                .unwrap_or(tokens::DEFAULT_TOKEN_VALIDITY_SECS),
            certstore::who(p.as_ref()),
        )?;
        Ok(EnrollTokenResponse {
            token: issued.token,
            subject: issued.subject,
            expires_at: issued.expires,
        })
    }

    pub fn put_cert(
        &self,
        name: &str,
        pem: &str,
        token: Option<&str>,
    ) -> Result<PutCertResponse, CertStoreError> {
        let p = self.principal(token)?;
        let s = certstore::put(&self.store, name, pem, p.as_ref())?;
        Ok(PutCertResponse {
            name: s.name,
            fingerprint: s.fingerprint,
            replaced: s.replaced,
        })
    }

    pub fn get_cert(&self, name: &str, token: Option<&str>) -> Result<String, CertStoreError> {
        let p = self.principal(token)?;
        certstore::get(&self.store, name, p.as_ref())
    }

    /// Revokes (admin only).
    pub fn revoke(
        &self,
        req: &RevokeRequest,
        token: Option<&str>,
    ) -> Result<Revoked, RevocationError> {
        let p = self.principal(token)?;
        certstore::authorize_admin(p.as_ref(), "revocations")?;
        let r = match (&req.serial, &req.certificate) {
            (Some(s), None) => revocation::revoke_serial(&self.store, s, req.reason.as_deref())?,
            (None, Some(pem)) => {
                let cert = X509::from_pem(pem.as_bytes()).map_err(RevocationError::BadPem)?;
                revocation::revoke_cert(&self.store, &cert, req.reason.as_deref())?
            }
            _ => return Err(RevocationError::BadTarget),
        };
        log::info!(
            "{} revoked {:?} {:?}",
            certstore::who(p.as_ref()),
            r.serial,
            r.fingerprint
        );
        Ok(r)
    }

    /// The current CRL, DER.
    pub fn crl(&self) -> Result<Vec<u8>, RevocationError> {
        revocation::crl(&self.store)
    }

    pub fn status(&self, fingerprint: &str) -> Result<CertStatus, RevocationError> {
        revocation::status(&self.store, fingerprint)
    }

    pub fn register_coprocessor(
        &self,
        req: &CoprocessorRequest,
        token: Option<&str>,
    ) -> Result<CoprocessorResponse, RegistrationError> {
        let p = self.principal(token)?;
        let chain = coprocessor::parse_chain(&req.chain)?;
        let r = coprocessor::register(&self.store, &chain, p.as_ref())?;
        Ok(CoprocessorResponse {
            fingerprint: r.fingerprint,
            name: r.name,
        })
    }
}
