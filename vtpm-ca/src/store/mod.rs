//! The CA's persistent directory store.
//!
//! This module owns the on-disk layout, reading it, and the rule for changing it: every
//! change is made holding the store's lock ([`Store::lock`], an exclusive `flock(2)` on
//! `DIR/.lock`) and through the guard it returns ([`Locked`]), which is the only way to
//! write. The server and any number of `vtpm-ca` commands may work on the same store at once,
//! and a read-modify-write (`revocations.json`, `acl.json`, a subject binding, ...) in one of
//! them never loses another's update.
//!
//! The lock is not re-entrant: an operation that changes several things (an enrollment
//! binds a subject, records the certificate and stores it by name) takes it once, at its
//! top, and passes the guard down; the functions below it take a `&Locked`, never the lock.
//!
//! Files are replaced atomically and durably with `durable-fs` (temporary file, fsync,
//! rename, directory fsync; no symlink followed); the store directory and its
//! subdirectories are `0700`, secrets (`ca.key`, `tls.key`, `admin.token`, `acl.json`) are
//! `0600`.
//!
//! ```text
//! DIR/
//!   ca.key  ca.pem          CA key (ECC P-256, PKCS#8 PEM) and self-signed root
//!   tls.key tls.pem         HTTPS server key and certificate (issued by the CA key)
//!   admin.token             the admin principal's bearer token, as printed by `init`
//!   config.json             validity of issued certificates, CRL lifetime, ...
//!   acl.json                principals of the certificate store (tokens stored hashed)
//!   revocations.json        revoked serials and fingerprints
//!   ek-roots/<sha256>.pem   trusted EK roots for host enrollment        (ek_roots.rs)
//!   issued/<SERIAL>.pem     every certificate the CA issued, by serial   (certs.rs)
//!   registered/<sha256>.pem certificates registered but not issued here  (certs.rs)
//!   index/<sha256>.json     fingerprint -> issued serial / registered    (certs.rs)
//!   index/subjects/<kind>/<subject>.json
//!                           the endorsement key an enrolled subject is bound to (subjects.rs)
//!   certs/<name>.pem        the named certificate store                  (named.rs)
//!   .lock                   the store lock
//! ```
//!
//! `acl.json` and `revocations.json` belong to [`crate::certstore`] and
//! [`crate::revocation`], which read and write them with [`Store::read_json_optional`] and
//! [`Locked::write_json`]. Creating a store is [`crate::setup::init`]'s.

mod certs;
mod ek_roots;
mod named;
mod subjects;

pub use certs::{normalize_serial, serial_of, IndexEntry, Known};
pub use subjects::{Bind, SubjectBinding};

use std::fs;
use std::io::ErrorKind;
use std::ops::Deref;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use openssl::error::ErrorStack;
use openssl::pkey::{PKey, PKeyRef, Private};
use openssl::x509::{X509Ref, X509};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Mode of private files.
pub const PRIVATE_FILE: u32 = 0o600;
/// Mode of public files (inside the `0700` store directory anyway).
pub const PUBLIC_FILE: u32 = 0o644;
/// Mode of the store directory and its subdirectories.
pub const PRIVATE_DIR: u32 = 0o700;

const CA_KEY: &str = "ca.key";
const CA_CERT: &str = "ca.pem";
const TLS_KEY: &str = "tls.key";
const TLS_CERT: &str = "tls.pem";
const ADMIN_TOKEN: &str = "admin.token";
const CONFIG: &str = "config.json";
const EK_ROOTS: &str = "ek-roots";
const ISSUED: &str = "issued";
const REGISTERED: &str = "registered";
const INDEX: &str = "index";
const CERTS: &str = "certs";
const LOCK: &str = ".lock";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} is not a vtpm-ca store (no ca.key/ca.pem; create one with `vtpm-ca init`)")]
    NotAStore(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{what}: not a PEM certificate: {source}")]
    BadPem { what: String, source: ErrorStack },
    #[error("invalid serial number {0:?}: expected a positive hexadecimal number")]
    BadSerial(String),
    #[error("invalid fingerprint {0:?}: expected 64 hexadecimal digits (SHA-256)")]
    BadFingerprint(String),
    #[error(
        "invalid subject {0:?}: 1 to 64 characters of [A-Za-z0-9._:@-], not starting with '.'"
    )]
    BadSubject(String),
    #[error(
        "invalid certificate name {0:?}: use /-separated segments of letters, digits and ._:@-"
    )]
    BadName(String),
    #[error("OpenSSL: {0}")]
    Crypto(#[from] ErrorStack),
}

/// The `map_err` of an I/O error on `path`.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The CA's settings (`config.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Lifetime of the certificates the CA issues (AIK certificates), in seconds.
    pub validity_secs: u64,
    /// Time from a CRL's thisUpdate to its nextUpdate, in seconds.
    pub crl_validity_secs: u64,
    /// How long an enrollment session waits for its finish, in seconds.
    pub session_ttl_secs: u64,
    /// vTPM enrollment requires every non-CA-issued intermediate (the coprocessor
    /// certificate) to have been registered with `POST /v1/coprocessor`.
    pub require_registered_coprocessor: bool,
    /// What anonymous clients may cost the CA (enrollment rates, sessions, connections).
    pub limits: crate::limits::Limits,
    /// The URL of the CRL that AIK certificates name as their CRL distribution point (and,
    /// through them, the coprocessor and vEK certificates). Unset, `vtpm-ca serve` uses
    /// `https://<its address>/v1/crl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crl_url: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            validity_secs: 30 * 86_400,
            crl_validity_secs: 86_400,
            session_ttl_secs: 300,
            require_registered_coprocessor: true,
            limits: crate::limits::Limits::default(),
            crl_url: None,
        }
    }
}

/// An open store directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens an existing store.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        if !dir.join(CA_KEY).is_file() || !dir.join(CA_CERT).is_file() {
            return Err(StoreError::NotAStore(dir.to_owned()));
        }
        Ok(Store {
            dir: dir.to_owned(),
        })
    }

    /// The store in `dir`, which [`crate::setup::init`] is making: it is no store yet for
    /// [`Store::open`] until [`Locked::write_ca`] has run.
    pub(crate) fn being_created(dir: &Path) -> Store {
        Store {
            dir: dir.to_owned(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a file in the store.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn ca_cert_path(&self) -> PathBuf {
        self.path(CA_CERT)
    }

    pub fn tls_cert_path(&self) -> PathBuf {
        self.path(TLS_CERT)
    }

    pub fn tls_key_path(&self) -> PathBuf {
        self.path(TLS_KEY)
    }

    pub fn admin_token_path(&self) -> PathBuf {
        self.path(ADMIN_TOKEN)
    }

    /// The CA's signing key.
    pub fn ca_key(&self) -> Result<PKey<Private>, StoreError> {
        let pem = self.read(CA_KEY)?;
        Ok(PKey::private_key_from_pem(&pem)?)
    }

    /// The root certificate.
    pub fn ca_cert(&self) -> Result<X509, StoreError> {
        self.read_cert(CA_CERT)
    }

    /// The root certificate, PEM.
    pub fn ca_pem(&self) -> Result<String, StoreError> {
        Ok(String::from_utf8_lossy(&self.read(CA_CERT)?).into_owned())
    }

    pub fn config(&self) -> Result<Config, StoreError> {
        self.read_json(CONFIG)
    }

    /// Takes the store's exclusive lock, waiting until it is free; it is held until the
    /// returned guard is dropped. Not re-entrant: a thread that holds it and asks again
    /// waits forever, so an operation takes it once and passes the guard down.
    pub fn lock(&self) -> Result<Locked<'_>, StoreError> {
        let path = self.dir.join(LOCK);
        let flock = durable_fs::lock(&path, PRIVATE_FILE).map_err(io_err(&path))?;
        Ok(Locked {
            store: self,
            _flock: flock,
        })
    }

    /// Reads a file of the store (a symlink is refused, never followed).
    pub(crate) fn read(&self, rel: &str) -> Result<Vec<u8>, StoreError> {
        let p = self.dir.join(rel);
        self.read_optional(rel)?.ok_or_else(|| StoreError::Io {
            path: p,
            source: Errno::ENOENT.into(),
        })
    }

    /// Reads a file of the store, `None` if it does not exist.
    pub(crate) fn read_optional(&self, rel: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let p = self.dir.join(rel);
        durable_fs::read_optional(&p).map_err(io_err(&p))
    }

    pub(crate) fn read_json<T: DeserializeOwned>(&self, rel: &str) -> Result<T, StoreError> {
        let p = self.dir.join(rel);
        serde_json::from_slice(&self.read(rel)?)
            .map_err(|source| StoreError::Json { path: p, source })
    }

    pub(crate) fn read_json_optional<T: DeserializeOwned>(
        &self,
        rel: &str,
    ) -> Result<Option<T>, StoreError> {
        let p = self.dir.join(rel);
        match self.read_optional(rel)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StoreError::Json { path: p, source }),
        }
    }

    fn parse_cert(&self, rel: &str, pem: &[u8]) -> Result<X509, StoreError> {
        X509::from_pem(pem).map_err(|source| StoreError::BadPem {
            what: self.dir.join(rel).display().to_string(),
            source,
        })
    }

    fn read_cert(&self, rel: &str) -> Result<X509, StoreError> {
        self.parse_cert(rel, &self.read(rel)?)
    }

    fn read_cert_optional(&self, rel: &str) -> Result<Option<X509>, StoreError> {
        self.read_optional(rel)?
            .map(|pem| self.parse_cert(rel, &pem))
            .transpose()
    }

    /// The certificates `sub/*.pem`, by file name.
    fn certs_in(&self, sub: &str) -> Result<Vec<X509>, StoreError> {
        let d = self.dir.join(sub);
        let mut names: Vec<String> = fs::read_dir(&d)
            .map_err(io_err(&d))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".pem") && !n.starts_with('.'))
            .collect();
        names.sort();
        names
            .iter()
            .map(|n| self.read_cert(&format!("{sub}/{n}")))
            .collect()
    }
}

/// The store's lock, held until dropped ([`Store::lock`]): every change to the store is made
/// through it. It dereferences to the [`Store`] for reading.
pub struct Locked<'a> {
    store: &'a Store,
    _flock: durable_fs::LockFile,
}

impl std::fmt::Debug for Locked<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locked")
            .field("dir", &self.store.dir)
            .finish()
    }
}

impl Deref for Locked<'_> {
    type Target = Store;

    fn deref(&self) -> &Store {
        self.store
    }
}

impl Locked<'_> {
    /// Creates the store's subdirectories (`0700`) of a new store.
    pub(crate) fn create_layout(&self) -> Result<(), StoreError> {
        for sub in [EK_ROOTS, ISSUED, REGISTERED, INDEX, CERTS] {
            self.mkdir(sub)?;
        }
        Ok(())
    }

    pub(crate) fn write_config(&self, config: &Config) -> Result<(), StoreError> {
        self.write_json(CONFIG, config, PUBLIC_FILE)
    }

    /// Writes the HTTPS server key and certificate.
    pub(crate) fn write_tls(
        &self,
        key: &PKeyRef<Private>,
        cert: &X509Ref,
    ) -> Result<(), StoreError> {
        self.write(TLS_KEY, &key.private_key_to_pem_pkcs8()?, PRIVATE_FILE)?;
        self.write_cert(TLS_CERT, cert)
    }

    pub(crate) fn write_admin_token(&self, token: &str) -> Result<(), StoreError> {
        self.write(ADMIN_TOKEN, format!("{token}\n").as_bytes(), PRIVATE_FILE)
    }

    /// Writes the CA key and root: once both exist, [`Store::open`] takes the directory for
    /// a store, so [`crate::setup::init`] writes them last.
    pub(crate) fn write_ca(
        &self,
        key: &PKeyRef<Private>,
        cert: &X509Ref,
    ) -> Result<(), StoreError> {
        self.write(CA_KEY, &key.private_key_to_pem_pkcs8()?, PRIVATE_FILE)?;
        self.write_cert(CA_CERT, cert)
    }

    /// Creates the directory `rel` and its missing parents, `0700`.
    pub(crate) fn mkdir(&self, rel: &str) -> Result<(), StoreError> {
        let d = self.dir.join(rel);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR)
            .create(&d)
            .map_err(io_err(&d))
    }

    /// Replaces a file of the store atomically and durably, with `mode`.
    pub(crate) fn write(&self, rel: &str, data: &[u8], mode: u32) -> Result<(), StoreError> {
        let p = self.dir.join(rel);
        durable_fs::replace(&p, data, mode, true).map_err(io_err(&p))
    }

    /// [`Locked::write`] of `cert` as PEM, readable by all (certificates are public).
    pub(crate) fn write_cert(&self, rel: &str, cert: &X509Ref) -> Result<(), StoreError> {
        self.write(rel, &cert.to_pem()?, PUBLIC_FILE)
    }

    /// [`Locked::write`] of `value` as pretty JSON with a final newline.
    pub(crate) fn write_json<T: Serialize>(
        &self,
        rel: &str,
        value: &T,
        mode: u32,
    ) -> Result<(), StoreError> {
        let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| StoreError::Json {
            path: self.dir.join(rel),
            source,
        })?;
        bytes.push(b'\n');
        self.write(rel, &bytes, mode)
    }

    /// Removes a file of the store durably; whether it was there.
    pub(crate) fn remove(&self, rel: &str) -> Result<bool, StoreError> {
        let p = self.dir.join(rel);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(&p)(e)),
        }
        let parent = p.parent().unwrap_or(&self.dir);
        durable_fs::sync_dir(parent).map_err(io_err(parent))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::tests::new_store;
    use std::os::unix::fs::PermissionsExt;

    pub(crate) fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn open_refuses_a_directory_that_is_not_a_store() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            Store::open(tmp.path()),
            Err(StoreError::NotAStore(_))
        ));
    }

    #[test]
    fn the_lock_excludes_other_threads() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (_tmp, store, _) = new_store(Config::default());
        let outer = store.lock().unwrap();
        let released = AtomicBool::new(false);
        std::thread::scope(|s| {
            let t = s.spawn(|| {
                // Another Store value for the same directory, as another request has.
                let other = Store::open(store.dir()).unwrap();
                let _l = other.lock().unwrap();
                released.load(Ordering::SeqCst)
            });
            std::thread::sleep(std::time::Duration::from_millis(200));
            released.store(true, Ordering::SeqCst);
            drop(outer);
            assert!(
                t.join().unwrap(),
                "the other thread got the lock while it was held"
            );
        });
        assert_eq!(mode(&store.dir().join(LOCK)), 0o600);
        // Free again once the guards are gone.
        drop(store.lock().unwrap());
    }

    #[test]
    fn concurrent_read_modify_writes_lose_nothing() {
        let (_tmp, store, _) = new_store(Config::default());
        std::thread::scope(|s| {
            for i in 0..16 {
                let store = Store::open(store.dir()).unwrap();
                s.spawn(move || {
                    crate::certstore::Acl::add(&store, &format!("p{i}"), true, vec![], false)
                        .unwrap();
                });
            }
        });
        let acl = crate::certstore::Acl::load(&store).unwrap();
        assert_eq!(acl.principals.len(), 17, "{acl:?}");
    }

    #[test]
    fn writes_replace_with_the_mode_and_reads_refuse_symlinks() {
        let (tmp, store, _) = new_store(Config::default());
        let locked = store.lock().unwrap();
        locked.write("f", b"one", 0o600).unwrap();
        locked.write("f", b"two", 0o644).unwrap();
        assert_eq!(store.read("f").unwrap(), b"two");
        assert_eq!(mode(&store.path("f")), 0o644);
        assert!(locked.remove("f").unwrap());
        assert!(!locked.remove("f").unwrap());
        assert!(matches!(
            store.read("f"),
            Err(StoreError::Io { source, .. }) if source.kind() == ErrorKind::NotFound
        ));
        // No temporary file is left behind.
        assert!(fs::read_dir(store.dir()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));
        let outside = tmp.path().join("outside");
        fs::write(&outside, b"x").unwrap();
        std::os::unix::fs::symlink(&outside, store.path("link")).unwrap();
        assert!(store.read_optional("link").is_err());
    }
}
