//! The named certificate store and its access control list.
//!
//! This module owns who may read and write which certificate. Principals authenticate with
//! a bearer token; the ACL (`acl.json`, mode 0600) keeps only the token's SHA-256. A
//! principal may read every certificate if `read` is set, and may store or replace a
//! certificate whose name is under one of its `write` prefixes, matched on whole segments
//! ([`prefix_covers`]: `vek/rsa/vm-1` covers `vek/rsa/vm-1` and `vek/rsa/vm-1/...`, not
//! `vek/rsa/vm-10`; `vek/` covers everything below `vek`; `""` every name). Every refusal is
//! logged with the principal and the name, and leaves the store unchanged.
//!
//! Names are `/`-separated paths of `[A-Za-z0-9._:@-]` segments (`aik/host/host-1`,
//! `coprocessor/<sha256>`, `vek/rsa/vm-1`); each maps to `certs/<name>.pem` in the store.

use openssl::error::ErrorStack;
use openssl::hash::{hash, MessageDigest};
use openssl::memcmp;
use openssl::x509::X509;
use serde::{Deserialize, Serialize};

use crate::names;
pub use crate::names::MAX_NAME;
use crate::store::{Locked, Store, StoreError, PRIVATE_FILE};
use crate::util::{fingerprint, random_hex};

const ACL: &str = "acl.json";

/// Why a text is not PEM certificates.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{0}")]
    Parse(ErrorStack),
    #[error("no CERTIFICATE block")]
    NoCertificate,
}

#[derive(Debug, thiserror::Error)]
pub enum CertStoreError {
    #[error("authentication required: send a valid bearer token")]
    Unauthenticated,
    #[error("principal {principal:?} may not {action} {name:?}")]
    Forbidden {
        principal: String,
        action: &'static str,
        name: String,
    },
    #[error(
        "invalid certificate name {0:?}: use /-separated segments of letters, digits and ._:@-"
    )]
    BadName(String),
    #[error("not a PEM certificate: {0}")]
    BadPem(PemError),
    #[error("no certificate named {0:?}")]
    NotFound(String),
    #[error("a principal named {0:?} already exists")]
    PrincipalExists(String),
    #[error("invalid principal name {0:?}")]
    BadPrincipal(String),
    #[error(
        "invalid write prefix {0:?}: use \"\" (every name) or a certificate name, optionally ending in /"
    )]
    BadPrefix(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("OpenSSL: {0}")]
    Crypto(#[from] ErrorStack),
}

/// A principal of the ACL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub name: String,
    /// SHA-256 of the bearer token, lower-case hex.
    pub token_sha256: String,
    /// May read every named certificate.
    pub read: bool,
    /// May store certificates under one of these prefixes ([`prefix_covers`]; `""` = every
    /// name).
    pub write: Vec<String>,
    /// May revoke certificates and manage the CA.
    #[serde(default)]
    pub admin: bool,
}

impl Principal {
    pub fn new(name: &str, token: &str, read: bool, write: Vec<String>, admin: bool) -> Self {
        Principal {
            name: name.to_string(),
            token_sha256: token_hash(token),
            read,
            write,
            admin,
        }
    }

    /// Whether this principal may write `name`.
    pub fn may_write(&self, name: &str) -> bool {
        self.write.iter().any(|p| prefix_covers(p, name))
    }
}

/// The access control list (`acl.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acl {
    pub principals: Vec<Principal>,
}

impl Acl {
    pub fn load(store: &Store) -> Result<Acl, StoreError> {
        Ok(store.read_json_optional(ACL)?.unwrap_or_default())
    }

    /// Writes the ACL; loaded under the same lock, nothing is lost.
    pub fn save(&self, store: &Locked<'_>) -> Result<(), StoreError> {
        store.write_json(ACL, self, PRIVATE_FILE)
    }

    /// The principal holding `token`.
    pub fn authenticate(&self, token: &str) -> Option<&Principal> {
        let h = token_hash(token);
        self.principals.iter().find(|p| {
            p.token_sha256.len() == h.len() && memcmp::eq(p.token_sha256.as_bytes(), h.as_bytes())
        })
    }

    /// Adds a principal with a new token, saves the ACL and returns the token.
    pub fn add(
        store: &Store,
        name: &str,
        read: bool,
        write: Vec<String>,
        admin: bool,
    ) -> Result<String, CertStoreError> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
        {
            return Err(CertStoreError::BadPrincipal(name.to_string()));
        }
        for p in &write {
            validate_prefix(p)?;
        }
        let store = store.lock()?;
        let mut acl = Acl::load(&store)?;
        if acl.principals.iter().any(|p| p.name == name) {
            return Err(CertStoreError::PrincipalExists(name.to_string()));
        }
        let token = new_token()?;
        acl.principals
            .push(Principal::new(name, &token, read, write, admin));
        acl.save(&store)?;
        Ok(token)
    }
}

/// A new random bearer token (32 bytes, hex).
pub fn new_token() -> Result<String, ErrorStack> {
    random_hex(32)
}

/// SHA-256 of a token, lower-case hex.
pub fn token_hash(token: &str) -> String {
    hash(MessageDigest::sha256(), token.as_bytes())
        .map(hex::encode)
        .unwrap_or_default()
}

/// Checks a certificate name.
pub fn validate_name(name: &str) -> Result<(), CertStoreError> {
    if !names::is_name(name) {
        return Err(CertStoreError::BadName(name.to_string()));
    }
    Ok(())
}

/// Checks a write prefix: `""` (every name), a certificate name, or a certificate name
/// followed by `/`.
pub fn validate_prefix(prefix: &str) -> Result<(), CertStoreError> {
    if prefix.is_empty() {
        return Ok(());
    }
    validate_name(prefix.strip_suffix('/').unwrap_or(prefix))
        .map_err(|_| CertStoreError::BadPrefix(prefix.to_string()))
}

/// Whether the write prefix `prefix` covers the certificate name `name`, on segment
/// boundaries: `""` covers every name; `a/b` covers `a/b` and `a/b/...` but not `a/bc`;
/// `a/` covers `a/...`.
pub fn prefix_covers(prefix: &str, name: &str) -> bool {
    prefix.is_empty()
        || name
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'))
}

/// Parses the PEM of one or more certificates (a leaf and its chain).
pub fn parse_pem(pem: &str) -> Result<Vec<X509>, CertStoreError> {
    let certs = X509::stack_from_pem(pem.as_bytes())
        .map_err(|e| CertStoreError::BadPem(PemError::Parse(e)))?;
    if certs.is_empty() {
        return Err(CertStoreError::BadPem(PemError::NoCertificate));
    }
    Ok(certs)
}

/// What a successful put did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub name: String,
    /// Fingerprint of the first (leaf) certificate.
    pub fingerprint: String,
    /// Whether a certificate of that name was replaced.
    pub replaced: bool,
}

/// The principal's name for the log, `-` without one.
pub fn who(principal: Option<&Principal>) -> &str {
    principal.map(|p| p.name.as_str()).unwrap_or("-")
}

fn refuse(principal: Option<&Principal>, action: &'static str, name: &str) -> CertStoreError {
    match principal {
        None => {
            log::warn!("certstore: refused to {action} {name:?}: no valid bearer token");
            CertStoreError::Unauthenticated
        }
        Some(p) => {
            log::warn!(
                "certstore: refused to {action} {name:?} for principal {:?}",
                p.name
            );
            CertStoreError::Forbidden {
                principal: p.name.clone(),
                action,
                name: name.to_string(),
            }
        }
    }
}

/// Succeeds if `principal` may write `name`; logs and refuses otherwise.
pub fn authorize_write(principal: Option<&Principal>, name: &str) -> Result<(), CertStoreError> {
    match principal {
        Some(p) if p.may_write(name) => Ok(()),
        other => Err(refuse(other, "write", name)),
    }
}

/// Succeeds if `principal` is an admin; logs and refuses otherwise.
pub fn authorize_admin(principal: Option<&Principal>, what: &str) -> Result<(), CertStoreError> {
    match principal {
        Some(p) if p.admin => Ok(()),
        other => Err(refuse(other, "administer", what)),
    }
}

/// Stores (or replaces) `name` if `principal` may write it.
pub fn put(
    store: &Store,
    name: &str,
    pem: &str,
    principal: Option<&Principal>,
) -> Result<Stored, CertStoreError> {
    if let Err(e) = validate_name(name) {
        log::warn!(
            "certstore: refused to store {name:?} for principal {:?}: invalid name",
            who(principal)
        );
        return Err(e);
    }
    authorize_write(principal, name)?;
    let certs = match parse_pem(pem) {
        Ok(c) => c,
        Err(e) => {
            log::warn!(
                "certstore: refused to store {name:?} for principal {:?}: {e}",
                who(principal)
            );
            return Err(e);
        }
    };
    let stored = put_unchecked(&store.lock()?, name, &certs)?;
    log::info!(
        "certstore: {} stored {name:?} ({})",
        who(principal),
        stored.fingerprint
    );
    Ok(stored)
}

/// Stores `certs` as `name` without an ACL check (for the CA's own use).
pub fn put_unchecked(
    store: &Locked<'_>,
    name: &str,
    certs: &[X509],
) -> Result<Stored, CertStoreError> {
    validate_name(name)?;
    let first = certs
        .first()
        .ok_or(CertStoreError::BadPem(PemError::NoCertificate))?;
    let mut pem = Vec::new();
    for c in certs {
        pem.extend_from_slice(&c.to_pem()?);
    }
    let replaced = store.put_named(name, &pem)?;
    Ok(Stored {
        name: name.to_string(),
        fingerprint: fingerprint(first)?,
        replaced,
    })
}

/// Reads `name` if `principal` may read.
pub fn get(
    store: &Store,
    name: &str,
    principal: Option<&Principal>,
) -> Result<String, CertStoreError> {
    validate_name(name)?;
    match principal {
        Some(p) if p.read => {}
        other => return Err(refuse(other, "read", name)),
    }
    get_unchecked(store, name)?.ok_or_else(|| CertStoreError::NotFound(name.to_string()))
}

/// Reads `name` without an ACL check.
pub fn get_unchecked(store: &Store, name: &str) -> Result<Option<String>, CertStoreError> {
    validate_name(name)?;
    Ok(store
        .named(name)?
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::tests::new_store;
    use crate::store::Config;

    #[test]
    fn names_are_validated() {
        for ok in ["aik/host/h1", "coprocessor/ab12", "a", "x/y.z-1:2@3"] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "../x",
            "a/../b",
            "a/.hidden",
            "a b",
            "a\\b",
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(validate_name(&"a".repeat(MAX_NAME + 1)).is_err());
    }

    #[test]
    fn write_prefixes_match_on_segment_boundaries() {
        for (prefix, name) in [
            ("", "anything/at/all"),
            ("vek/rsa/vm-1", "vek/rsa/vm-1"),
            ("vek/rsa/vm-1", "vek/rsa/vm-1/chain"),
            ("vek/", "vek/rsa/vm-10"),
            ("vek", "vek/rsa/vm-10"),
            ("coprocessor/", "coprocessor/ab12"),
        ] {
            assert!(prefix_covers(prefix, name), "{prefix:?} {name:?}");
        }
        for (prefix, name) in [
            ("vek/rsa/vm-1", "vek/rsa/vm-10"),
            ("vek/rsa/vm-1", "vek/rsa/vm-1.old"),
            ("vek/rsa/vm-1", "vek/rsa/vm"),
            ("vek/", "vek"),
            ("vek", "vekx/a"),
            ("aik/host/h1", "aik/host/h1x"),
        ] {
            assert!(!prefix_covers(prefix, name), "{prefix:?} {name:?}");
        }
        let p = Principal::new("p", "t", false, vec!["vek/rsa/vm-1".into()], false);
        assert!(p.may_write("vek/rsa/vm-1"));
        assert!(!p.may_write("vek/rsa/vm-10"));
        assert!(matches!(
            authorize_write(Some(&p), "vek/rsa/vm-10"),
            Err(CertStoreError::Forbidden { .. })
        ));
    }

    #[test]
    fn write_prefixes_are_validated_when_added() {
        for ok in ["", "vek/", "vek", "vek/rsa/vm-1", "coprocessor/"] {
            validate_prefix(ok).unwrap();
        }
        for bad in [
            "/",
            "//",
            "vek//",
            "../x",
            "vek/../aik",
            "/vek",
            "a b",
            "vek/.x/",
        ] {
            assert!(
                matches!(validate_prefix(bad), Err(CertStoreError::BadPrefix(_))),
                "{bad:?}"
            );
        }
        let (_tmp, store, _) = new_store(Config::default());
        let before = Acl::load(&store).unwrap();
        assert!(matches!(
            Acl::add(
                &store,
                "w",
                false,
                vec!["vek/".into(), "../x".into()],
                false
            ),
            Err(CertStoreError::BadPrefix(_))
        ));
        assert_eq!(Acl::load(&store).unwrap(), before);
        Acl::add(&store, "w", false, vec!["vek/rsa/vm-1".into()], false).unwrap();
    }

    #[test]
    fn acl_enforces_read_and_write_prefixes() {
        let (_tmp, store, admin_token) = new_store(Config::default());
        let pem = store.ca_pem().unwrap();
        let writer_token = Acl::add(&store, "writer", false, vec!["vek/".into()], false).unwrap();
        let reader_token = Acl::add(&store, "reader", true, vec![], false).unwrap();
        assert!(matches!(
            Acl::add(&store, "reader", true, vec![], false),
            Err(CertStoreError::PrincipalExists(_))
        ));
        let acl = Acl::load(&store).unwrap();
        let admin = acl.authenticate(&admin_token).unwrap().clone();
        let writer = acl.authenticate(&writer_token).unwrap().clone();
        let reader = acl.authenticate(&reader_token).unwrap().clone();
        assert!(acl.authenticate("nope").is_none());

        // The writer may write under its prefix only, and may not read.
        put(&store, "vek/rsa/vm1", &pem, Some(&writer)).unwrap();
        assert!(matches!(
            put(&store, "aik/host/h1", &pem, Some(&writer)),
            Err(CertStoreError::Forbidden {
                action: "write",
                ..
            })
        ));
        assert!(get_unchecked(&store, "aik/host/h1").unwrap().is_none());
        assert!(matches!(
            get(&store, "vek/rsa/vm1", Some(&writer)),
            Err(CertStoreError::Forbidden { action: "read", .. })
        ));
        // The reader may read but not write; nobody without a token may do anything.
        assert!(get(&store, "vek/rsa/vm1", Some(&reader))
            .unwrap()
            .contains("BEGIN CERTIFICATE"));
        assert!(matches!(
            put(&store, "vek/rsa/vm1", &pem, Some(&reader)),
            Err(CertStoreError::Forbidden { .. })
        ));
        assert!(matches!(
            get(&store, "vek/rsa/vm1", None),
            Err(CertStoreError::Unauthenticated)
        ));
        // Bad PEM is refused and changes nothing.
        let before = get_unchecked(&store, "vek/rsa/vm1").unwrap();
        assert!(matches!(
            put(&store, "vek/rsa/vm1", "garbage", Some(&admin)),
            Err(CertStoreError::BadPem(_))
        ));
        assert_eq!(get_unchecked(&store, "vek/rsa/vm1").unwrap(), before);
        // The admin writes anywhere; replacing is reported.
        let s = put(&store, "vek/rsa/vm1", &pem, Some(&admin)).unwrap();
        assert!(s.replaced);
        assert!(matches!(
            get(&store, "missing", Some(&admin)),
            Err(CertStoreError::NotFound(_))
        ));
        assert_eq!(store.named_all().unwrap(), vec!["vek/rsa/vm1".to_string()]);
    }

    #[test]
    fn tokens_are_stored_hashed() {
        let (_tmp, store, admin_token) = new_store(Config::default());
        let acl_text = String::from_utf8(store.read(ACL).unwrap()).unwrap();
        assert!(!acl_text.contains(&admin_token));
        assert!(acl_text.contains(&token_hash(&admin_token)));
    }
}
