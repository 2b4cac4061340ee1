//! Enrollment by credential activation, in two steps.
//!
//! **Start** checks the EK certificate chain (host: up to a configured EK root; vTPM: up to
//! this CA's root through a registered coprocessor certificate and a host AIK certificate,
//! nothing revoked) and the AIK (a restricted signing key), then runs `TPM2_MakeCredential`
//! for the AIK's name with a random 32-byte secret and keeps a session.
//!
//! **Finish** consumes the session: the secret `TPM2_ActivateCredential` recovered must be
//! the one the CA chose, which proves the AIK is in the TPM holding the EK. The CA then
//! issues the AIK certificate, records it by serial and stores it as `aik/<kind>/<subject>`.
//! The chain rules are [`crate::chain`]'s; this module reports them in its own errors.
//!
//! The caller names the subject, so a subject belongs to the endorsement key that enrolled
//! it first: finish binds `aik/<kind>/<subject>` to the SHA-256 of the EK's (host) or vEK's
//! (vTPM) SubjectPublicKeyInfo ([`crate::store::Locked::bind_subject`]), and start and
//! finish refuse another key with [`EnrollError::SubjectTaken`]. The same key may enroll
//! again (renewal, a re-issued EK or vEK certificate); `vtpm-ca release` frees a subject.
//!
//! # Authorization
//!
//! A host AIK certificate lets its holder issue vEK certificates that verify up to this CA,
//! so a host enrolls a subject for the first time only with an enrolment token an
//! administrator issued for that subject ([`crate::tokens`], sent as the bearer token;
//! consumed when the certificate is issued) or with an admin principal's token. Without
//! one, a host may only renew: enroll again a subject bound to its own EK whose current
//! certificate is not revoked. A vTPM's authorization is its vEK chain ([`Authorization`]).
//!
//! Because EK and vEK certificates are public, requests without a token are anonymous:
//! [`crate::limits`] bounds their rate (per client address and together), and their
//! sessions are bounded per client and in all ([`crate::limits::Limits`]); when full, new
//! ones are refused rather than old ones evicted, and sessions of token-authorised
//! enrolments (one per token) are kept apart, so no flood drops them.
//!
//! This module owns those checks, the sessions (in memory, expiring) and the errors.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::memcmp;
use openssl::x509::{X509Ref, X509};

use crate::aik::{AikError, AikPublic};
use crate::api::{
    EnrollFinishRequest, EnrollFinishResponse, EnrollStartRequest, EnrollStartResponse,
};
use crate::certstore::{Acl, CertStoreError, PemError};
use crate::chain::{self, ChainError};
use crate::credential::{self, CredentialError};
use crate::issue::{self, IssueError, Kind};
use crate::limits::{self, RateLimiter, Refused};
use crate::names;
use crate::revocation::Revocations;
use crate::store::{Bind, Store, StoreError};
use crate::tokens::{self, EnrollTokens, Unusable};
use crate::util::{
    asn1_to_unix, fingerprint, now_unix, public_key_fingerprint, random, random_hex,
};

/// Size of the secret the CA protects with the credential.
pub const SECRET_SIZE: usize = 32;
/// Most sessions of admin-authorised enrollments kept at once (anonymous ones are bounded
/// by [`crate::limits::Limits`], token-authorised ones at one per token).
pub const MAX_SESSIONS: usize = 10_000;

/// What is wrong with the `ek_cert_chain` of a request.
#[derive(Debug, thiserror::Error)]
pub enum EkChainError {
    #[error("ek_cert_chain is empty")]
    Empty,
    #[error("entry {index}: {error}")]
    Entry { index: usize, error: PemError },
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("invalid request: {what} is not base64: {source}")]
    BadBase64 {
        what: &'static str,
        source: base64::DecodeError,
    },
    #[error(
        "invalid subject {0:?}: 1 to 64 characters of [A-Za-z0-9._:@-], not starting with '.'"
    )]
    BadSubject(String),
    #[error("invalid EK certificate chain: {0}")]
    BadEkCertificate(EkChainError),
    #[error("invalid AIK public area: {0}")]
    BadAikPublic(#[from] AikError),
    #[error("the AIK is not a restricted signing key: {}", .0.join("; "))]
    AikNotRestrictedSigning(Vec<String>),
    #[error("unsupported EK: {0}")]
    UnsupportedEk(CredentialError),
    #[error("the EK certificate does not chain to a trusted EK root: {0}")]
    UntrustedEk(ChainError),
    #[error("the vEK certificate chain does not verify up to this CA: {0}")]
    UntrustedVekChain(ChainError),
    #[error("certificate {subject} ({fingerprint}) in the chain is revoked: {reason}")]
    Revoked {
        subject: String,
        fingerprint: String,
        reason: String,
    },
    #[error("coprocessor certificate {subject} ({fingerprint}) is not registered with this CA (POST /v1/coprocessor)")]
    UnregisteredCoprocessor {
        subject: String,
        fingerprint: String,
    },
    #[error("aik/{kind}/{subject} is enrolled with another endorsement key; an administrator can free it with `vtpm-ca release --kind {kind} --subject {subject}`")]
    SubjectTaken { kind: Kind, subject: String },
    #[error("enrolling host {subject:?} needs an enrolment token (`vtpm-ca enroll-token --subject {subject}`, sent as the bearer token): the subject is not enrolled with this EK{}", if *.revoked { ", or its certificate is revoked" } else { "" })]
    EnrollTokenRequired { subject: String, revoked: bool },
    #[error("enrolment token refused: {0}")]
    EnrollTokenRefused(String),
    #[error("too many enrollment requests {}: try again later", match .0 { Refused::Client => "from this client", Refused::Overall => "without a token" })]
    RateLimited(Refused),
    #[error("too many open enrollment sessions {}: finish or let them expire, then try again", if *.per_client { "from this client" } else { "without a token" })]
    TooManySessions { per_client: bool },
    #[error("no enrollment session {0:?} (unknown, finished or expired)")]
    UnknownSession(String),
    #[error("enrollment session {0:?} expired")]
    SessionExpired(String),
    #[error("credential activation failed: the secret does not match (the AIK is not in the TPM holding that EK); the session is closed")]
    ActivationFailed,
    #[error("issuing the certificate: {0}")]
    Issue(#[from] IssueError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    CertStore(#[from] CertStoreError),
    #[error("OpenSSL: {0}")]
    Crypto(#[from] ErrorStack),
}

impl EnrollError {
    /// `e`, from checking the chain of a `kind` enrollment, as enrollment reports it: a
    /// revoked certificate, an unregistered coprocessor and store failures as themselves,
    /// anything else as an untrusted EK (host) or vEK chain (vTPM).
    fn from_chain(kind: Kind, e: ChainError) -> Self {
        match e {
            ChainError::Revoked {
                subject,
                fingerprint,
                reason,
            } => EnrollError::Revoked {
                subject,
                fingerprint,
                reason,
            },
            ChainError::UnregisteredCoprocessor {
                subject,
                fingerprint,
            } => EnrollError::UnregisteredCoprocessor {
                subject,
                fingerprint,
            },
            ChainError::Store(e) => EnrollError::Store(e),
            ChainError::Crypto(e) => EnrollError::Crypto(e),
            other => match kind {
                Kind::Host => EnrollError::UntrustedEk(other),
                Kind::Vtpm => EnrollError::UntrustedVekChain(other),
            },
        }
    }
}

/// The endorsement identity an enrollment proved: the EK (host) or vEK (vTPM) certificate
/// whose key the credential was made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endorsement {
    /// SHA-256 of the certificate's DER (what a host AIK certificate carries).
    pub cert_sha256: Vec<u8>,
    /// SHA-256 of its SubjectPublicKeyInfo, hex: what the subject is bound to.
    pub key_sha256: String,
    /// The same, as bytes (what a vAIK certificate carries).
    pub key_digest: Vec<u8>,
}

impl Endorsement {
    pub fn of(cert: &X509Ref) -> Result<Endorsement, ErrorStack> {
        Ok(Endorsement {
            cert_sha256: cert.digest(MessageDigest::sha256())?.to_vec(),
            key_sha256: public_key_fingerprint(cert)?,
            key_digest: openssl::hash::hash(
                MessageDigest::sha256(),
                &cert.public_key()?.public_key_to_der()?,
            )?
            .to_vec(),
        })
    }
}

/// Who sends a request, as far as enrollment cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The client's address; `None` for an in-process caller (no per-client limits).
    pub addr: Option<IpAddr>,
    /// The bearer token of the request: an enrolment token, or a principal's.
    pub token: Option<String>,
}

impl Caller {
    /// An in-process caller without a token.
    pub fn local() -> Caller {
        Caller::default()
    }

    /// An in-process caller with a bearer token.
    pub fn with_token(token: &str) -> Caller {
        Caller {
            addr: None,
            token: Some(token.to_string()),
        }
    }
}

/// What authorises an enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    /// A host enrolment token for this subject, by its SHA-256; consumed at issue.
    Token(String),
    /// An admin principal (its name).
    Admin(String),
    /// A host enrolling again a subject bound to its EK, whose current certificate is not
    /// revoked. Anonymous: the EK certificate is public.
    Renewal,
    /// A vTPM whose vEK chain verifies up to this CA. Anonymous: so is the chain.
    VekChain,
}

impl Authorization {
    /// Whether anyone holding public certificates could have sent the request.
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Authorization::Renewal | Authorization::VekChain)
    }
}

/// What the bearer token of a request is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bearer {
    None,
    Enroll(tokens::EnrollToken),
    Admin(String),
    /// A principal that is not an admin: no authority over enrollment.
    Principal,
    Unknown,
}

impl Bearer {
    fn of(store: &Store, token: Option<&str>) -> Result<Bearer, StoreError> {
        let Some(token) = token else {
            return Ok(Bearer::None);
        };
        if let Some(t) = EnrollTokens::load(store)?.find(token) {
            return Ok(Bearer::Enroll(t.clone()));
        }
        Ok(match Acl::load(store)?.authenticate(token) {
            Some(p) if p.admin => Bearer::Admin(p.name.clone()),
            Some(_) => Bearer::Principal,
            None => Bearer::Unknown,
        })
    }

    /// Whether the request passes the anonymous limits.
    fn is_authority(&self) -> bool {
        matches!(self, Bearer::Enroll(_) | Bearer::Admin(_))
    }
}

/// A started enrollment.
#[derive(Debug)]
struct Session {
    kind: Kind,
    subject: String,
    aik: AikPublic,
    secret: Vec<u8>,
    ek: Endorsement,
    expires: Instant,
    auth: Authorization,
    /// The client it came from ([`limits::client_key`]).
    client: Option<IpAddr>,
}

/// The open enrollment sessions, and the rate limits of the requests that make them.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    limiter: RateLimiter,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `session` as `id`, within the limits: anonymous sessions per client and in
    /// all, one session per enrolment token (a new one replaces the old), and
    /// [`MAX_SESSIONS`] of admin-authorised ones. Full is a refusal, never an eviction.
    fn insert(
        &self,
        id: String,
        session: Session,
        limits: &limits::Limits,
    ) -> Result<(), EnrollError> {
        let mut map = self.lock();
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        match &session.auth {
            auth if auth.is_anonymous() => {
                let anonymous = map.values().filter(|s| s.auth.is_anonymous());
                let (mut total, mut mine) = (0usize, 0usize);
                for s in anonymous {
                    total += 1;
                    if session.client.is_some() && s.client == session.client {
                        mine += 1;
                    }
                }
                let cap = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
                if session.client.is_some() && mine >= cap(limits.sessions_per_client) {
                    return Err(EnrollError::TooManySessions { per_client: true });
                }
                if total >= cap(limits.sessions) {
                    return Err(EnrollError::TooManySessions { per_client: false });
                }
            }
            Authorization::Token(hash) => {
                map.retain(|_, s| !matches!(&s.auth, Authorization::Token(h) if h == hash));
            }
            _ => {
                let admin = map
                    .values()
                    .filter(|s| matches!(s.auth, Authorization::Admin(_)))
                    .count();
                if admin >= MAX_SESSIONS {
                    return Err(EnrollError::TooManySessions { per_client: false });
                }
            }
        }
        map.insert(id, session);
        Ok(())
    }

    /// Number of open (possibly expired, not yet pruned) sessions.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Checks a subject string ([`names::is_subject`]).
pub fn validate_subject(s: &str) -> Result<(), EnrollError> {
    if !names::is_subject(s) {
        return Err(EnrollError::BadSubject(s.to_string()));
    }
    Ok(())
}

fn decode_b64(what: &'static str, s: &str) -> Result<Vec<u8>, EnrollError> {
    B64.decode(s.trim())
        .map_err(|source| EnrollError::BadBase64 { what, source })
}

/// The certificates of `ek_cert_chain`: at least one, and at least one in every entry.
fn parse_chain(pems: &[String]) -> Result<Vec<X509>, EnrollError> {
    let bad = |index, error| EnrollError::BadEkCertificate(EkChainError::Entry { index, error });
    if pems.is_empty() {
        return Err(EnrollError::BadEkCertificate(EkChainError::Empty));
    }
    let mut out = Vec::new();
    for (i, pem) in pems.iter().enumerate() {
        let certs = X509::stack_from_pem(pem.as_bytes()).map_err(|e| bad(i, PemError::Parse(e)))?;
        if certs.is_empty() {
            return Err(bad(i, PemError::NoCertificate));
        }
        out.extend(certs);
    }
    Ok(out)
}

/// Step 1: checks and `TPM2_MakeCredential`, for `caller` (its address for the limits, its
/// bearer token for the authorization).
pub fn start(
    store: &Store,
    sessions: &Sessions,
    req: &EnrollStartRequest,
    caller: &Caller,
) -> Result<EnrollStartResponse, EnrollError> {
    let config = store.config()?;
    sessions
        .limiter
        .client(&config.limits, caller.addr)
        .map_err(EnrollError::RateLimited)?;
    let bearer = Bearer::of(store, caller.token.as_deref())?;
    if !bearer.is_authority() {
        sessions
            .limiter
            .anonymous(&config.limits)
            .map_err(EnrollError::RateLimited)?;
    }
    validate_subject(&req.subject)?;
    let chain = parse_chain(&req.ek_cert_chain)?;
    let aik = AikPublic::from_tpm2b(&decode_b64("aik_public", &req.aik_public)?)?;
    let ek = &chain[0];
    match req.kind {
        Kind::Host => chain::check_host_ek_chain(store, &chain),
        Kind::Vtpm => chain::check_vek_chain(store, &chain),
    }
    .map_err(|e| EnrollError::from_chain(req.kind, e))?;
    let violations = aik.violations();
    if !violations.is_empty() {
        log::warn!(
            "enroll {} {:?}: AIK refused: {}",
            req.kind,
            req.subject,
            violations.join("; ")
        );
        return Err(EnrollError::AikNotRestrictedSigning(violations));
    }
    // Checked before any credential is made; checked again (and bound) at finish.
    let endorsement = Endorsement::of(ek)?;
    check_subject_free(store, req.kind, &req.subject, &endorsement)?;
    let auth = authorize(store, req.kind, &req.subject, &endorsement, &bearer)?;
    let secret = random(SECRET_SIZE)?;
    let made = credential::make_credential(ek, aik.name(), &secret).map_err(|e| match e {
        CredentialError::Crypto(e) => EnrollError::Crypto(e),
        other => EnrollError::UnsupportedEk(other),
    })?;
    let id = random_hex(16)?;
    let ttl = config.session_ttl_secs.max(1);
    let aik_name = hex::encode(aik.name());
    let auth_text = format!("{auth:?}");
    sessions.insert(
        id.clone(),
        Session {
            kind: req.kind,
            subject: req.subject.clone(),
            aik,
            secret,
            ek: endorsement,
            expires: Instant::now() + Duration::from_secs(ttl),
            auth,
            client: caller.addr.map(limits::client_key),
        },
        &config.limits,
    )?;
    log::info!(
        "enroll {} {:?}: session {id} started for AIK {aik_name} ({auth_text})",
        req.kind,
        req.subject
    );
    Ok(EnrollStartResponse {
        session: id,
        credential_blob: B64.encode(&made.credential_blob),
        encrypted_secret: B64.encode(&made.encrypted_secret),
        aik_name,
        expires_at: now_unix() + ttl,
    })
}

/// Fails with [`EnrollError::SubjectTaken`] if `aik/<kind>/<subject>` is bound to an
/// endorsement key other than `ek`'s.
fn check_subject_free(
    store: &Store,
    kind: Kind,
    subject: &str,
    ek: &Endorsement,
) -> Result<(), EnrollError> {
    match store.subject_binding(kind, subject)? {
        Some(b) if b.ek_public_key_sha256 != ek.key_sha256 => {
            Err(subject_taken(kind, subject, &b.ek_public_key_sha256, ek))
        }
        _ => Ok(()),
    }
}

fn subject_taken(kind: Kind, subject: &str, bound: &str, ek: &Endorsement) -> EnrollError {
    log::warn!(
        "enroll {kind} {subject:?}: refused: the subject is bound to endorsement key {bound}, \
         the request came with {}",
        ek.key_sha256
    );
    EnrollError::SubjectTaken {
        kind,
        subject: subject.to_string(),
    }
}

/// What authorises a `kind` enrollment of `subject` by `ek` with this bearer token (see
/// the module documentation).
fn authorize(
    store: &Store,
    kind: Kind,
    subject: &str,
    ek: &Endorsement,
    bearer: &Bearer,
) -> Result<Authorization, EnrollError> {
    if kind == Kind::Vtpm {
        return Ok(Authorization::VekChain);
    }
    match bearer {
        Bearer::Enroll(t) => match t.check(subject, now_unix()) {
            Ok(()) => Ok(Authorization::Token(t.token_sha256.clone())),
            Err(why) => {
                log::warn!("enroll host {subject:?}: refused: {why}");
                Err(EnrollError::EnrollTokenRefused(why.to_string()))
            }
        },
        Bearer::Admin(name) => Ok(Authorization::Admin(name.clone())),
        Bearer::Unknown => {
            log::warn!("enroll host {subject:?}: refused: unknown bearer token");
            Err(EnrollError::EnrollTokenRefused(
                "no such enrolment token (or principal)".into(),
            ))
        }
        Bearer::None | Bearer::Principal => match renewal(store, subject, ek)? {
            Renewal::Allowed => Ok(Authorization::Renewal),
            other => {
                log::warn!("enroll host {subject:?}: refused: no enrolment token ({other:?})");
                Err(EnrollError::EnrollTokenRequired {
                    subject: subject.to_string(),
                    revoked: other == Renewal::Revoked,
                })
            }
        },
    }
}

/// Whether a host may enroll `subject` again without a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    Allowed,
    /// The subject is bound to no key (or another one).
    NotBound,
    /// Its current certificate (`aik/host/<subject>`) is revoked.
    Revoked,
}

fn renewal(store: &Store, subject: &str, ek: &Endorsement) -> Result<Renewal, EnrollError> {
    match store.subject_binding(Kind::Host, subject)? {
        Some(b) if b.ek_public_key_sha256 == ek.key_sha256 => {}
        _ => return Ok(Renewal::NotBound),
    }
    let name = format!("aik/{}/{subject}", Kind::Host);
    let Some(pem) = crate::certstore::get_unchecked(store, &name)? else {
        return Ok(Renewal::Allowed);
    };
    let revocations = Revocations::load(store)?;
    for cert in X509::stack_from_pem(pem.as_bytes())? {
        if revocations.reason(store, &cert)?.is_some() {
            return Ok(Renewal::Revoked);
        }
    }
    Ok(Renewal::Allowed)
}

/// Step 2: checks the secret and issues the AIK certificate.
///
/// The certificate names `crl_url` as its CRL distribution point, if given.
pub fn finish(
    store: &Store,
    sessions: &Sessions,
    req: &EnrollFinishRequest,
    caller: &Caller,
    crl_url: Option<&str>,
) -> Result<EnrollFinishResponse, EnrollError> {
    sessions
        .limiter
        .client(&store.config()?.limits, caller.addr)
        .map_err(EnrollError::RateLimited)?;
    let secret = decode_b64("secret", &req.secret)?;
    // The session is consumed whatever happens next: one guess per credential.
    let session = sessions
        .lock()
        .remove(&req.session)
        .ok_or_else(|| EnrollError::UnknownSession(req.session.clone()))?;
    if session.expires <= Instant::now() {
        return Err(EnrollError::SessionExpired(req.session.clone()));
    }
    if secret.len() != session.secret.len() || !memcmp::eq(&secret, &session.secret) {
        log::warn!(
            "enroll {} {:?}: session {}: activation failed (wrong secret)",
            session.kind,
            session.subject,
            req.session
        );
        return Err(EnrollError::ActivationFailed);
    }
    let out = issue_aik(
        store,
        session.kind,
        &session.subject,
        &session.aik,
        &session.ek,
        &session.auth,
        crl_url,
    )?;
    log::info!(
        "enroll {} {:?}: issued AIK certificate {} ({})",
        session.kind,
        session.subject,
        out.serial,
        out.name
    );
    Ok(out)
}

/// Issues, records and stores an AIK certificate (after a successful activation against
/// `ek`), under the store lock: checks `auth` again (a token must still be unused, a
/// renewal's subject still bound to `ek` and not revoked), binds the subject to `ek`'s key,
/// and refuses with [`EnrollError::SubjectTaken`] (issuing nothing) if it is bound to
/// another key. A token is consumed once the certificate is stored.
pub fn issue_aik(
    store: &Store,
    kind: Kind,
    subject: &str,
    aik: &AikPublic,
    ek: &Endorsement,
    auth: &Authorization,
    crl_url: Option<&str>,
) -> Result<EnrollFinishResponse, EnrollError> {
    validate_subject(subject)?;
    let store = store.lock()?;
    if let Some(b) = store.subject_binding(kind, subject)? {
        if b.ek_public_key_sha256 != ek.key_sha256 {
            return Err(subject_taken(kind, subject, &b.ek_public_key_sha256, ek));
        }
    }
    match auth {
        Authorization::Token(hash) => {
            let all = EnrollTokens::load(&store)?;
            let t = all.find_hash(hash).ok_or_else(|| {
                EnrollError::EnrollTokenRefused("the enrolment token is gone".into())
            })?;
            if t.used.is_some() {
                log::warn!("enroll host {subject:?}: refused at finish: token used already");
                return Err(EnrollError::EnrollTokenRefused(Unusable::Used.to_string()));
            }
        }
        Authorization::Renewal => {
            let r = renewal(&store, subject, ek)?;
            if r != Renewal::Allowed {
                return Err(EnrollError::EnrollTokenRequired {
                    subject: subject.to_string(),
                    revoked: r == Renewal::Revoked,
                });
            }
        }
        Authorization::Admin(_) | Authorization::VekChain => {}
    }
    match store.bind_subject(kind, subject, &ek.key_sha256, &hex::encode(&ek.cert_sha256))? {
        Bind::Taken(b) => return Err(subject_taken(kind, subject, &b.ek_public_key_sha256, ek)),
        Bind::New => log::info!(
            "enroll {kind} {subject:?}: bound to endorsement key {}",
            ek.key_sha256
        ),
        Bind::Same => {}
    }
    let config = store.config()?;
    let ca_cert = store.ca_cert()?;
    // Host AIK certificates carry the EK certificate's hash, vAIK certificates the vEK
    // key's (issue::VTPM_EK_KEY_HASH_OID).
    let endorsement = match kind {
        Kind::Host => &ek.cert_sha256,
        Kind::Vtpm => &ek.key_digest,
    };
    let cert = issue::aik_cert(
        &*store.ca_key()?,
        &ca_cert,
        kind,
        subject,
        aik.public_key(),
        endorsement,
        config.validity_secs,
        crl_url,
    )?;
    let serial = store.record_issued(&cert)?;
    let name = format!("aik/{kind}/{subject}");
    crate::certstore::put_unchecked(&store, &name, std::slice::from_ref(&cert))?;
    if let Authorization::Token(hash) = auth {
        // After the certificate is stored: a token is never spent on nothing. (The
        // subject is bound to this EK now, so no other TPM could use it anyway.)
        if tokens::consume(&store, hash, &ek.key_sha256, &serial).is_err() {
            log::error!("enroll host {subject:?}: could not mark the enrolment token used");
        }
    }
    Ok(EnrollFinishResponse {
        certificate: String::from_utf8_lossy(&cert.to_pem()?).into_owned(),
        ca_certificate: String::from_utf8_lossy(&ca_cert.to_pem()?).into_owned(),
        serial,
        fingerprint: fingerprint(&cert)?,
        name,
        not_before: asn1_to_unix(cert.not_before())?,
        not_after: asn1_to_unix(cert.not_after())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aik::tests::ak_pub;
    use crate::issue::generate_key;
    use crate::revocation;
    use crate::setup::tests::new_store;
    use crate::store::Config;
    use openssl::pkey::{PKey, Private};
    use openssl::rsa::Rsa;
    use openssl::x509::extension::{BasicConstraints, KeyUsage};
    use openssl::x509::{X509Builder, X509NameBuilder};

    /// The store administrator, as a caller: what the tests below enroll as (a host needs
    /// an authority; the authorization rules have tests of their own).
    fn admin(store: &Store) -> Caller {
        let token = std::fs::read_to_string(store.admin_token_path()).unwrap();
        Caller::with_token(token.trim())
    }

    /// [`super::start`] as the administrator.
    fn start(
        store: &Store,
        sessions: &Sessions,
        req: &EnrollStartRequest,
    ) -> Result<EnrollStartResponse, EnrollError> {
        super::start(store, sessions, req, &admin(store))
    }

    /// [`super::finish`] in process.
    fn finish(
        store: &Store,
        sessions: &Sessions,
        req: &EnrollFinishRequest,
    ) -> Result<EnrollFinishResponse, EnrollError> {
        super::finish(store, sessions, req, &Caller::local(), None)
    }

    /// A certificate for `key` signed by `issuer_key`/`issuer` (self-signed without one).
    pub(crate) fn cert<T: openssl::pkey::HasPublic>(
        cn: &str,
        key: &openssl::pkey::PKeyRef<T>,
        issuer: Option<(&X509, &PKey<Private>)>,
        ca: Option<u32>,
        self_key: Option<&PKey<Private>>,
    ) -> X509 {
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", cn).unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&issue::random_serial().unwrap())
            .unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(issuer.map(|i| i.0.subject_name()).unwrap_or(&name))
            .unwrap();
        b.set_pubkey(key).unwrap();
        b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        match ca {
            Some(p) => {
                b.append_extension(
                    BasicConstraints::new()
                        .critical()
                        .ca()
                        .pathlen(p)
                        .build()
                        .unwrap(),
                )
                .unwrap();
                b.append_extension(
                    KeyUsage::new()
                        .key_cert_sign()
                        .digital_signature()
                        .build()
                        .unwrap(),
                )
                .unwrap();
            }
            None => {
                b.append_extension(BasicConstraints::new().critical().build().unwrap())
                    .unwrap();
                b.append_extension(KeyUsage::new().key_encipherment().build().unwrap())
                    .unwrap();
            }
        }
        let signer = issuer.map(|i| i.1).or(self_key).unwrap();
        b.sign(signer, MessageDigest::sha256()).unwrap();
        b.build()
    }

    fn pem(c: &X509) -> String {
        String::from_utf8(c.to_pem().unwrap()).unwrap()
    }

    struct Host {
        root: X509,
        ek_key: PKey<Private>,
        ek: X509,
    }

    impl Host {
        /// An enrollment request of `kind` with this host's EK certificate alone.
        fn request(&self, kind: Kind) -> EnrollStartRequest {
            start_req(kind, vec![pem(&self.ek)], &ak_pub())
        }
    }

    /// A software "manufacturer": root CA and an RSA 2048 EK certificate.
    fn manufacturer() -> Host {
        let root_key = generate_key().unwrap();
        let root = cert("maker root", &root_key, None, Some(1), Some(&root_key));
        let ek_key = rsa_key();
        let ek = cert("ek", &ek_key, Some((&root, &root_key)), None, None);
        Host { root, ek_key, ek }
    }

    /// A [`manufacturer`] whose root `store` trusts for host enrollment.
    fn trusted_manufacturer(store: &Store) -> Host {
        let host = manufacturer();
        store.lock().unwrap().add_ek_root(&host.root).unwrap();
        host
    }

    fn start_req(kind: Kind, chain: Vec<String>, aik: &[u8]) -> EnrollStartRequest {
        EnrollStartRequest {
            kind,
            subject: "subject-1".into(),
            ek_cert_chain: chain,
            aik_public: B64.encode(aik),
        }
    }

    /// Activates the credential of `s` with `ek_key` (as the TPM would) and finishes.
    fn activate_and_finish(
        store: &Store,
        sessions: &Sessions,
        ek_key: &PKey<Private>,
        s: EnrollStartResponse,
    ) -> Result<EnrollFinishResponse, EnrollError> {
        let aik = AikPublic::from_tpm2b(&ak_pub()).unwrap();
        let secret = credential::activate_credential(
            ek_key,
            aik.name(),
            &B64.decode(&s.credential_blob).unwrap(),
            &B64.decode(&s.encrypted_secret).unwrap(),
        )
        .unwrap();
        finish(
            store,
            sessions,
            &EnrollFinishRequest {
                session: s.session,
                secret: B64.encode(secret),
            },
        )
    }

    /// Runs a full host enrollment with a software EK and returns the response.
    fn enroll_host(store: &Store, sessions: &Sessions, host: &Host) -> EnrollFinishResponse {
        let s = start(store, sessions, &host.request(Kind::Host)).unwrap();
        activate_and_finish(store, sessions, &host.ek_key, s).unwrap()
    }

    /// Another EK certificate of the same maker (another TPM).
    fn sibling(host: &Host, root_key: &PKey<Private>) -> Host {
        let ek_key = rsa_key();
        let ek = cert("ek 2", &ek_key, Some((&host.root, root_key)), None, None);
        Host {
            root: host.root.clone(),
            ek_key,
            ek,
        }
    }

    /// A store whose vTPM enrollment does not ask for the coprocessor to be registered.
    fn store_trusting_unregistered_coprocessors() -> (tempfile::TempDir, Store) {
        let (tmp, store, _) = new_store(Config {
            require_registered_coprocessor: false,
            ..Config::default()
        });
        (tmp, store)
    }

    /// An RSA 2048 key, as EKs and vEKs have.
    fn rsa_key() -> PKey<Private> {
        PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
    }

    /// The upper part of a vEK chain: a host AIK certificate the CA issued (for a software
    /// key standing in for the host TPM's AIK) and a coprocessor certificate that AIK signed.
    struct VekIssuers {
        host_aik: X509,
        host_aik_serial: String,
        cop: X509,
        cop_key: PKey<Private>,
    }

    impl VekIssuers {
        fn new(store: &Store) -> VekIssuers {
            let host_aik_key = generate_key().unwrap();
            let host_aik = issue::aik_cert(
                &store.ca_key().unwrap(),
                &store.ca_cert().unwrap(),
                Kind::Host,
                "host-1",
                &host_aik_key,
                &[1; 32],
                3600,
                None,
            )
            .unwrap();
            let host_aik_serial = store.lock().unwrap().record_issued(&host_aik).unwrap();
            let cop_key = generate_key().unwrap();
            let cop = cert(
                "coprocessor",
                &cop_key,
                Some((&host_aik, &host_aik_key)),
                Some(0),
                None,
            );
            VekIssuers {
                host_aik,
                host_aik_serial,
                cop,
                cop_key,
            }
        }

        /// A vEK certificate for `key`, issued by the coprocessor.
        fn vek(&self, key: &PKey<Private>) -> X509 {
            cert("vek", key, Some((&self.cop, &self.cop_key)), None, None)
        }

        /// The vTPM enrollment request with `vek` and this chain above it.
        fn request(&self, vek: &X509) -> EnrollStartRequest {
            start_req(
                Kind::Vtpm,
                vec![pem(vek), pem(&self.cop), pem(&self.host_aik)],
                &ak_pub(),
            )
        }
    }

    fn named(store: &Store, name: &str) -> String {
        crate::certstore::get_unchecked(store, name)
            .unwrap()
            .unwrap()
    }

    /// A second EK with a valid chain asking for an enrolled host's subject: refused at
    /// start (no credential made) and, if it got a session while the subject was free, at
    /// finish; the enrolled certificate stays. The first EK renews, also with a re-issued EK
    /// certificate; after a release the subject is free again.
    #[test]
    fn a_host_subject_belongs_to_the_ek_that_enrolled_it() {
        let (_tmp, store, _) = new_store(Config::default());
        let sessions = Sessions::default();
        let root_key = generate_key().unwrap();
        let root = cert("maker root", &root_key, None, Some(1), Some(&root_key));
        let first_key = rsa_key();
        let first = Host {
            ek: cert("ek 1", &first_key, Some((&root, &root_key)), None, None),
            ek_key: first_key,
            root,
        };
        let second = sibling(&first, &root_key);
        store.lock().unwrap().add_ek_root(&first.root).unwrap();

        let out = enroll_host(&store, &sessions, &first);
        let stored = named(&store, &out.name);
        let binding = store
            .subject_binding(Kind::Host, "subject-1")
            .unwrap()
            .unwrap();
        assert_eq!(
            binding.ek_public_key_sha256,
            public_key_fingerprint(&first.ek).unwrap()
        );
        assert_eq!(binding.ek_certificate, fingerprint(&first.ek).unwrap());

        let taken = second.request(Kind::Host);
        match start(&store, &sessions, &taken) {
            Err(EnrollError::SubjectTaken { kind, subject }) => {
                assert_eq!((kind, subject.as_str()), (Kind::Host, "subject-1"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(sessions.len(), 0, "no credential was made");
        assert_eq!(named(&store, &out.name), stored);
        // The vTPM subject of the same name is another subject (not bound).
        assert!(store
            .subject_binding(Kind::Vtpm, "subject-1")
            .unwrap()
            .is_none());

        // Renewal, then a re-issued EK certificate for the same key.
        let renewed = enroll_host(&store, &sessions, &first);
        assert_ne!(renewed.serial, out.serial);
        let reissued = Host {
            ek: cert(
                "ek 1",
                &first.ek_key,
                Some((&first.root, &root_key)),
                None,
                None,
            ),
            ek_key: first.ek_key.clone(),
            root: first.root.clone(),
        };
        assert_ne!(
            fingerprint(&reissued.ek).unwrap(),
            fingerprint(&first.ek).unwrap()
        );
        let again = enroll_host(&store, &sessions, &reissued);
        assert_eq!(named(&store, &again.name), again.certificate);

        // Released: both may start; the first to finish takes it, the other is refused at
        // finish and nothing is issued for it.
        assert!(store
            .lock()
            .unwrap()
            .release_subject(Kind::Host, "subject-1")
            .unwrap()
            .is_some());
        let s2 = start(&store, &sessions, &taken).unwrap();
        let s1 = start(&store, &sessions, &first.request(Kind::Host)).unwrap();
        let issued_before = store.issued_all().unwrap().len();
        let won = activate_and_finish(&store, &sessions, &first.ek_key, s1).unwrap();
        assert!(matches!(
            activate_and_finish(&store, &sessions, &second.ek_key, s2),
            Err(EnrollError::SubjectTaken { .. })
        ));
        assert_eq!(store.issued_all().unwrap().len(), issued_before + 1);
        assert_eq!(named(&store, &won.name), won.certificate);

        // Released again, the second TPM takes the subject.
        store
            .lock()
            .unwrap()
            .release_subject(Kind::Host, "subject-1")
            .unwrap();
        let moved = enroll_host(&store, &sessions, &second);
        assert_eq!(named(&store, &moved.name), moved.certificate);
        assert!(matches!(
            start(&store, &sessions, &first.request(Kind::Host)),
            Err(EnrollError::SubjectTaken { .. })
        ));
    }

    #[test]
    fn host_enrollment_with_a_software_ek() {
        let (_tmp, store, _) = new_store(Config::default());
        let sessions = Sessions::default();
        let host = manufacturer();
        // No EK root yet.
        assert!(matches!(
            start(&store, &sessions, &host.request(Kind::Host)),
            Err(EnrollError::UntrustedEk(_))
        ));
        store.lock().unwrap().add_ek_root(&host.root).unwrap();
        let out = enroll_host(&store, &sessions, &host);
        assert_eq!(out.name, "aik/host/subject-1");
        let cert = X509::from_pem(out.certificate.as_bytes()).unwrap();
        assert_eq!(
            issue::host_ek_cert_hash(&cert).unwrap(),
            host.ek.digest(MessageDigest::sha256()).unwrap().to_vec()
        );
        assert!(store.issued(&out.serial).unwrap().is_some());
        assert!(crate::certstore::get_unchecked(&store, &out.name)
            .unwrap()
            .is_some());
        assert_eq!(sessions.len(), 0);
    }

    #[test]
    fn wrong_secret_fails_and_consumes_the_session() {
        let (_tmp, store, _) = new_store(Config::default());
        let sessions = Sessions::default();
        let host = trusted_manufacturer(&store);
        let s = start(&store, &sessions, &host.request(Kind::Host)).unwrap();
        let req = EnrollFinishRequest {
            session: s.session.clone(),
            secret: B64.encode([0u8; 32]),
        };
        assert!(matches!(
            finish(&store, &sessions, &req),
            Err(EnrollError::ActivationFailed)
        ));
        assert!(matches!(
            finish(&store, &sessions, &req),
            Err(EnrollError::UnknownSession(_))
        ));
    }

    #[test]
    fn bad_aik_and_bad_requests_are_refused() {
        let (_tmp, store, _) = new_store(Config::default());
        let sessions = Sessions::default();
        let host = trusted_manufacturer(&store);
        let mut raw = ak_pub();
        raw[6..10].copy_from_slice(&0x0006_0072u32.to_be_bytes()); // sign|decrypt, not restricted
        match start(
            &store,
            &sessions,
            &start_req(Kind::Host, vec![pem(&host.ek)], &raw),
        ) {
            Err(EnrollError::AikNotRestrictedSigning(v)) => {
                assert!(
                    v.iter().any(|s| s.contains("restricted is not set")),
                    "{v:?}"
                )
            }
            other => panic!("{other:?}"),
        }
        let mut r = host.request(Kind::Host);
        r.subject = "../etc".into();
        assert!(matches!(
            start(&store, &sessions, &r),
            Err(EnrollError::BadSubject(_))
        ));
        let r = start_req(Kind::Host, vec!["junk".into()], &ak_pub());
        assert!(matches!(
            start(&store, &sessions, &r),
            Err(EnrollError::BadEkCertificate(_))
        ));
        let mut r = host.request(Kind::Host);
        r.aik_public = "!!".into();
        assert!(matches!(
            start(&store, &sessions, &r),
            Err(EnrollError::BadBase64 {
                what: "aik_public",
                ..
            })
        ));
        // An ECC EK is not supported for MakeCredential.
        let root_key = generate_key().unwrap();
        let root = cert("ecc maker", &root_key, None, Some(1), Some(&root_key));
        store.lock().unwrap().add_ek_root(&root).unwrap();
        let ecc_ek = cert(
            "ecc ek",
            &generate_key().unwrap(),
            Some((&root, &root_key)),
            None,
            None,
        );
        assert!(matches!(
            start(
                &store,
                &sessions,
                &start_req(Kind::Host, vec![pem(&ecc_ek)], &ak_pub())
            ),
            Err(EnrollError::UnsupportedEk(_))
        ));
    }

    #[test]
    fn vtpm_chain_rules() {
        let (_tmp, store, _) = new_store(Config::default());
        let sessions = Sessions::default();
        let issuers = VekIssuers::new(&store);
        let vek_key = rsa_key();
        let vek = issuers.vek(&vek_key);
        let req = issuers.request(&vek);

        // The coprocessor is not registered yet.
        assert!(matches!(
            start(&store, &sessions, &req),
            Err(EnrollError::UnregisteredCoprocessor { .. })
        ));
        crate::coprocessor::register(
            &store,
            &[issuers.cop.clone(), issuers.host_aik.clone()],
            Some(&crate::certstore::Principal::new(
                "a",
                "t",
                false,
                vec!["".into()],
                false,
            )),
        )
        .unwrap();
        let s = start(&store, &sessions, &req).unwrap();
        let out = activate_and_finish(&store, &sessions, &vek_key, s).unwrap();
        assert_eq!(out.name, "aik/vtpm/subject-1");
        // The vAIK certificate names the vEK it was proved against, by its key's hash.
        let vaik = X509::from_pem(out.certificate.as_bytes()).unwrap();
        assert_eq!(
            issue::vtpm_ek_key_hash(&vaik).unwrap(),
            openssl::sha::sha256(&vek_key.public_key_to_der().unwrap())
        );
        assert_eq!(issue::host_ek_cert_hash(&vaik), None);

        // Missing intermediates: does not verify.
        let short = start_req(Kind::Vtpm, vec![pem(&vek)], &ak_pub());
        assert!(matches!(
            start(&store, &sessions, &short),
            Err(EnrollError::UntrustedVekChain(_))
        ));
        // A host EK chain is not a vEK chain.
        let host = trusted_manufacturer(&store);
        assert!(matches!(
            start(&store, &sessions, &host.request(Kind::Vtpm)),
            Err(EnrollError::UntrustedVekChain(_))
        ));
        // Revoking the coprocessor (by fingerprint) or the host AIK (by serial) stops it.
        revocation::revoke_cert(&store, &issuers.cop, Some("host decommissioned")).unwrap();
        assert!(matches!(
            start(&store, &sessions, &req),
            Err(EnrollError::Revoked { .. })
        ));
    }

    /// A vTPM subject is bound to the vEK's key: a re-provisioned vEK certificate (new
    /// serial, same key) still enrolls it, another vEK does not.
    #[test]
    fn a_vtpm_subject_belongs_to_the_vek_key_not_the_certificate() {
        let (_tmp, store) = store_trusting_unregistered_coprocessors();
        let sessions = Sessions::default();
        let issuers = VekIssuers::new(&store);
        let vek_key = rsa_key();
        let enroll_with = |vek: &X509, key: &PKey<Private>| {
            let s = start(&store, &sessions, &issuers.request(vek))?;
            activate_and_finish(&store, &sessions, key, s)
        };
        let vek = issuers.vek(&vek_key);
        enroll_with(&vek, &vek_key).unwrap();
        let reprovisioned = issuers.vek(&vek_key);
        let out = enroll_with(&reprovisioned, &vek_key).unwrap();
        assert_eq!(out.name, "aik/vtpm/subject-1");
        let other_key = rsa_key();
        let other = issuers.vek(&other_key);
        assert!(matches!(
            enroll_with(&other, &other_key),
            Err(EnrollError::SubjectTaken {
                kind: Kind::Vtpm,
                ..
            })
        ));
        assert_eq!(named(&store, "aik/vtpm/subject-1"), out.certificate);
        // The host subject of the same name is free for a host EK.
        assert!(store
            .subject_binding(Kind::Host, "subject-1")
            .unwrap()
            .is_none());
    }

    #[test]
    fn revoked_host_aik_stops_vtpm_enrollment() {
        let (_tmp, store) = store_trusting_unregistered_coprocessors();
        let sessions = Sessions::default();
        let issuers = VekIssuers::new(&store);
        let req = issuers.request(&issuers.vek(&rsa_key()));
        start(&store, &sessions, &req).unwrap();
        revocation::revoke_serial(&store, &issuers.host_aik_serial, None).unwrap();
        match start(&store, &sessions, &req) {
            Err(EnrollError::Revoked { subject, .. }) => assert!(subject.contains("host-1")),
            other => panic!("{other:?}"),
        }
    }

    /// Anonymous sessions are bounded per client and in all, and a full pool refuses new
    /// ones instead of evicting: a token-authorised session started before the flood still
    /// finishes, and one started during it is still accepted. One session per token.
    #[test]
    fn anonymous_sessions_are_bounded_and_never_evict_authorised_ones() {
        let (_tmp, store, _) = new_store(Config {
            require_registered_coprocessor: false,
            limits: limits::Limits {
                sessions: 3,
                sessions_per_client: 2,
                ..limits::Limits::default()
            },
            ..Config::default()
        });
        let sessions = Sessions::default();
        let host = trusted_manufacturer(&store);
        let token = |subject: &str| {
            Caller::with_token(&tokens::issue(&store, subject, 60, "test").unwrap().token)
        };
        let authorised = token("subject-1");
        let before =
            super::start(&store, &sessions, &host.request(Kind::Host), &authorised).unwrap();

        let issuers = VekIssuers::new(&store);
        let anonymous = |ip: &str| Caller {
            addr: Some(ip.parse().unwrap()),
            token: None,
        };
        let vtpm = |ip: &str| {
            let req = issuers.request(&issuers.vek(&rsa_key()));
            super::start(&store, &sessions, &req, &anonymous(ip))
        };
        vtpm("192.0.2.1").unwrap();
        vtpm("192.0.2.1").unwrap();
        assert!(matches!(
            vtpm("192.0.2.1"),
            Err(EnrollError::TooManySessions { per_client: true })
        ));
        vtpm("192.0.2.2").unwrap();
        assert!(matches!(
            vtpm("192.0.2.3"),
            Err(EnrollError::TooManySessions { per_client: false })
        ));
        assert_eq!(sessions.len(), 4);

        // Authorised enrollments are not counted against the anonymous ones, and were not
        // evicted for them.
        let mut req = host.request(Kind::Host);
        req.subject = "subject-2".into();
        let during = super::start(&store, &sessions, &req, &token("subject-2")).unwrap();
        activate_and_finish(&store, &sessions, &host.ek_key, before).unwrap();
        activate_and_finish(&store, &sessions, &host.ek_key, during).unwrap();
        // A second start with the same token replaces the first session of that token.
        let t3 = token("subject-3");
        let mut req3 = host.request(Kind::Host);
        req3.subject = "subject-3".into();
        let first = super::start(&store, &sessions, &req3, &t3).unwrap();
        let second = super::start(&store, &sessions, &req3, &t3).unwrap();
        assert!(matches!(
            activate_and_finish(&store, &sessions, &host.ek_key, first),
            Err(EnrollError::UnknownSession(_))
        ));
        activate_and_finish(&store, &sessions, &host.ek_key, second).unwrap();
    }

    /// Host authorization in process: no token, a token for another subject, a used one,
    /// a renewal, a renewal after a revocation.
    #[test]
    fn a_new_host_subject_needs_a_token_and_a_renewal_an_unrevoked_certificate() {
        let (_tmp, store, _) = new_store(Config::default());
        let sessions = Sessions::default();
        let host = trusted_manufacturer(&store);
        let req = host.request(Kind::Host);
        assert!(matches!(
            super::start(&store, &sessions, &req, &Caller::local()),
            Err(EnrollError::EnrollTokenRequired { revoked: false, .. })
        ));
        assert_eq!(sessions.len(), 0);
        let other = tokens::issue(&store, "subject-2", 60, "t").unwrap();
        assert!(matches!(
            super::start(&store, &sessions, &req, &Caller::with_token(&other.token)),
            Err(EnrollError::EnrollTokenRefused(_))
        ));
        let t = tokens::issue(&store, "subject-1", 60, "t").unwrap();
        let s = super::start(&store, &sessions, &req, &Caller::with_token(&t.token)).unwrap();
        let out = activate_and_finish(&store, &sessions, &host.ek_key, s).unwrap();
        // Used: refused even after the subject is released.
        store
            .lock()
            .unwrap()
            .release_subject(Kind::Host, "subject-1")
            .unwrap();
        assert!(matches!(
            super::start(&store, &sessions, &req, &Caller::with_token(&t.token)),
            Err(EnrollError::EnrollTokenRefused(_))
        ));
        let s = start(&store, &sessions, &req).unwrap();
        activate_and_finish(&store, &sessions, &host.ek_key, s).unwrap();
        // Bound to this EK: a renewal needs no token ...
        let s = super::start(&store, &sessions, &req, &Caller::local()).unwrap();
        let renewed = activate_and_finish(&store, &sessions, &host.ek_key, s).unwrap();
        assert_ne!(renewed.serial, out.serial);
        // ... unless the current certificate is revoked, also between start and finish.
        let s = super::start(&store, &sessions, &req, &Caller::local()).unwrap();
        revocation::revoke_serial(&store, &renewed.serial, None).unwrap();
        assert!(matches!(
            activate_and_finish(&store, &sessions, &host.ek_key, s),
            Err(EnrollError::EnrollTokenRequired { revoked: true, .. })
        ));
        assert!(matches!(
            super::start(&store, &sessions, &req, &Caller::local()),
            Err(EnrollError::EnrollTokenRequired { revoked: true, .. })
        ));
    }
}
