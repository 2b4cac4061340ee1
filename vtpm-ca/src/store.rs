//! The CA's persistent directory store.
//!
//! This module owns the on-disk layout and how it is written: every file is replaced
//! atomically (written to a temporary file in the same directory, fsynced, renamed over the
//! old one, then the directory fsynced), the store directory and its subdirectories are
//! `0700`, secrets (`ca.key`, `tls.key`, `admin.token`, `acl.json`) are `0600`.
//!
//! Every change to an existing store is made holding its lock ([`Store::lock`]): an exclusive
//! `flock(2)` on `DIR/.lock`. The server and any number of `vtpm-ca` commands may work on the
//! same store at once, and a read-modify-write (`revocations.json`, `acl.json`, a subject
//! binding, ...) in one of them never loses another's update. The lock is re-entrant within
//! a thread, so a locked operation may call others that lock.
//!
//! ```text
//! DIR/
//!   ca.key  ca.pem          CA key (ECC P-256, PKCS#8 PEM) and self-signed root
//!   tls.key tls.pem         HTTPS server key and certificate (issued by the CA key)
//!   admin.token             the admin principal's bearer token, as printed by `init`
//!   config.json             validity of issued certificates, CRL lifetime, ...
//!   acl.json                principals of the certificate store (tokens stored hashed)
//!   revocations.json        revoked serials and fingerprints
//!   ek-roots/<sha256>.pem   trusted EK roots for host enrollment
//!   issued/<SERIAL>.pem     every certificate the CA issued, by serial (upper-case hex)
//!   registered/<sha256>.pem certificates registered but not issued here (coprocessors)
//!   index/<sha256>.json     fingerprint -> issued serial / registered, for status queries
//!   index/subjects/<kind>/<subject>.json
//!                           the endorsement key an enrolled subject is bound to
//!   certs/<name>.pem        the named certificate store (`aik/host/<id>`, ...)
//!   .lock                   the store lock
//! ```
//!
//! `init` ([`init`]) creates all of it and refuses to touch an existing store.

use std::cell::RefCell;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::marker::PhantomData;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use openssl::bn::BigNum;
use openssl::error::ErrorStack;
use openssl::pkey::{PKey, Private};
use openssl::x509::{X509Ref, X509};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::issue::Kind;
use crate::util::{fingerprint, hex, is_fingerprint, now_unix, random};

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
const SUBJECTS: &str = "subjects";
const LOCK: &str = ".lock";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists and is not empty: refusing to overwrite a store")]
    Exists(PathBuf),
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
    #[error("invalid option: {0}")]
    BadOption(String),
    #[error("OpenSSL: {0}")]
    Crypto(#[from] ErrorStack),
}

impl From<crate::issue::IssueError> for StoreError {
    fn from(e: crate::issue::IssueError) -> Self {
        match e {
            crate::issue::IssueError::Crypto(e) => StoreError::Crypto(e),
            other => StoreError::BadOption(other.to_string()),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            validity_secs: 30 * 86_400,
            crl_validity_secs: 86_400,
            session_ttl_secs: 300,
            require_registered_coprocessor: true,
        }
    }
}

/// What `vtpm-ca init` creates besides the defaults.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// DNS names and IP addresses of the HTTPS server certificate.
    pub tls_names: Vec<String>,
    /// Lifetime of the HTTPS server certificate, in seconds.
    pub tls_validity_secs: u64,
    /// Lifetime of the root certificate, in seconds.
    pub root_validity_secs: u64,
    /// Common name of the root certificate.
    pub root_name: String,
    /// EK roots to trust from the start.
    pub ek_roots: Vec<X509>,
    pub config: Config,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            tls_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            tls_validity_secs: 365 * 86_400,
            root_validity_secs: 20 * 365 * 86_400,
            root_name: "vhost-vtpm local CA".into(),
            ek_roots: Vec::new(),
            config: Config::default(),
        }
    }
}

/// What `init` returns: the store and the admin token (also in `admin.token`).
#[derive(Debug)]
pub struct Initialized {
    pub store: Store,
    pub admin_token: String,
}

/// Creates a new store in `dir` (which must not exist or be empty).
pub fn init(dir: &Path, opts: &InitOptions) -> Result<Initialized, StoreError> {
    if opts.tls_names.is_empty() {
        return Err(StoreError::BadOption(
            "at least one TLS name is needed".into(),
        ));
    }
    if opts.config.validity_secs == 0 {
        return Err(StoreError::BadOption(
            "the validity of issued certificates must be at least 1 second".into(),
        ));
    }
    // Everything that can fail on bad options first, before the directory is touched.
    let ca_key = crate::issue::generate_key()?;
    let ca_cert = crate::issue::root_cert(&ca_key, &opts.root_name, opts.root_validity_secs)?;
    let tls_key = crate::issue::generate_key()?;
    let tls_cert = crate::issue::tls_cert(
        &ca_key,
        &ca_cert,
        &tls_key,
        &opts.tls_names,
        opts.tls_validity_secs,
    )?;
    let admin_token = crate::certstore::new_token()?;

    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(StoreError::Exists(dir.to_owned()));
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            fs::DirBuilder::new()
                .mode(PRIVATE_DIR)
                .create(dir)
                .map_err(io_err(dir))?;
        }
        Err(e) => return Err(io_err(dir)(e)),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR)).map_err(io_err(dir))?;
    let store = Store {
        dir: dir.to_owned(),
    };
    for sub in [EK_ROOTS, ISSUED, REGISTERED, INDEX, CERTS] {
        store.mkdir(&dir.join(sub))?;
    }
    store.write_json(CONFIG, &opts.config, PUBLIC_FILE)?;
    store.write(TLS_KEY, &tls_key.private_key_to_pem_pkcs8()?, PRIVATE_FILE)?;
    store.write(TLS_CERT, &tls_cert.to_pem()?, PUBLIC_FILE)?;
    store.record_issued(&ca_cert)?;
    store.record_issued(&tls_cert)?;
    for root in &opts.ek_roots {
        store.add_ek_root(root)?;
    }
    let acl = crate::certstore::Acl {
        principals: vec![crate::certstore::Principal::new(
            "admin",
            &admin_token,
            true,
            vec![String::new()],
            true,
        )],
    };
    acl.save(&store)?;
    store.write(
        ADMIN_TOKEN,
        format!("{admin_token}\n").as_bytes(),
        PRIVATE_FILE,
    )?;
    crate::revocation::Revocations::default().save(&store)?;
    // The CA key and root last: until both exist, `Store::open` refuses the directory, so
    // an interrupted init never looks like a store.
    store.write(CA_KEY, &ca_key.private_key_to_pem_pkcs8()?, PRIVATE_FILE)?;
    store.write(CA_CERT, &ca_cert.to_pem()?, PUBLIC_FILE)?;
    Ok(Initialized { store, admin_token })
}

/// Where a fingerprint is known from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum IndexEntry {
    /// Issued by this CA, with this serial.
    Issued { serial: String },
    /// Registered (e.g. a coprocessor certificate signed by a host AIK).
    Registered,
}

/// What an enrolled subject (`aik/<kind>/<subject>`) is bound to: the endorsement key of the
/// TPM that enrolled it first (`index/subjects/<kind>/<subject>.json`). Only that key may
/// enroll the subject again, until an administrator releases it (`vtpm-ca release`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectBinding {
    /// SHA-256 (lower-case hex) of the DER SubjectPublicKeyInfo of the host EK (host) or
    /// the vEK (vTPM): a key, not a certificate, so that a re-issued EK/vEK certificate for
    /// the same key still matches.
    pub ek_public_key_sha256: String,
    /// Fingerprint of the EK/vEK certificate of the enrollment that made the binding.
    pub ek_certificate: String,
    /// Unix time of that enrollment.
    pub since: u64,
}

/// The outcome of [`Store::bind_subject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bind {
    /// The subject was free and is now bound.
    New,
    /// Already bound to this key (a renewal).
    Same,
    /// Bound to another key: nothing changed.
    Taken(SubjectBinding),
}

/// The store's lock, held until dropped ([`Store::lock`]). Bound to the thread that took it.
pub struct StoreLock {
    /// The flock and the lock file's (device, inode); `None` for a re-entrant guard.
    held: Option<(Flock<File>, (u64, u64))>,
    _thread_bound: PhantomData<*const ()>,
}

impl std::fmt::Debug for StoreLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreLock")
            .field("reentrant", &self.held.is_none())
            .finish()
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        if let Some((_, id)) = &self.held {
            HELD_LOCKS.with(|h| h.borrow_mut().retain(|x| x != id));
        }
        // The Flock, dropped after this, unlocks.
    }
}

thread_local! {
    /// The store locks this thread holds, by lock file (device, inode).
    static HELD_LOCKS: RefCell<Vec<(u64, u64)>> = const { RefCell::new(Vec::new()) };
}

/// A certificate found by fingerprint.
#[derive(Debug, Clone)]
pub struct Known {
    pub entry: IndexEntry,
    pub cert: X509,
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

    /// The trusted EK roots.
    pub fn ek_roots(&self) -> Result<Vec<X509>, StoreError> {
        self.certs_in(EK_ROOTS)
    }

    /// Takes the store's exclusive lock (blocking until it is free): held by the returned
    /// guard, released when it is dropped. Re-entrant within a thread: if this thread holds
    /// the lock already, the guard is a no-op.
    pub fn lock(&self) -> Result<StoreLock, StoreError> {
        let path = self.dir.join(LOCK);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(PRIVATE_FILE)
            .open(&path)
            .map_err(io_err(&path))?;
        let md = file.metadata().map_err(io_err(&path))?;
        let id = (md.dev(), md.ino());
        if HELD_LOCKS.with(|h| h.borrow().contains(&id)) {
            return Ok(StoreLock {
                held: None,
                _thread_bound: PhantomData,
            });
        }
        let flock = loop {
            match Flock::lock(file, FlockArg::LockExclusive) {
                Ok(l) => break l,
                Err((f, Errno::EINTR)) => file = f,
                Err((_, e)) => return Err(io_err(&path)(e.into())),
            }
        };
        HELD_LOCKS.with(|h| h.borrow_mut().push(id));
        Ok(StoreLock {
            held: Some((flock, id)),
            _thread_bound: PhantomData,
        })
    }

    /// Trusts `root` for host enrollment; returns its fingerprint.
    pub fn add_ek_root(&self, root: &X509Ref) -> Result<String, StoreError> {
        let _lock = self.lock()?;
        let fp = fingerprint(root)?;
        self.write(
            &format!("{EK_ROOTS}/{fp}.pem"),
            &root.to_pem()?,
            PUBLIC_FILE,
        )?;
        Ok(fp)
    }

    /// Records a certificate this CA issued; returns its serial.
    pub fn record_issued(&self, cert: &X509Ref) -> Result<String, StoreError> {
        let _lock = self.lock()?;
        let serial = serial_of(cert)?;
        self.write(
            &format!("{ISSUED}/{serial}.pem"),
            &cert.to_pem()?,
            PUBLIC_FILE,
        )?;
        self.write_json(
            &format!("{INDEX}/{}.json", fingerprint(cert)?),
            &IndexEntry::Issued {
                serial: serial.clone(),
            },
            PUBLIC_FILE,
        )?;
        Ok(serial)
    }

    /// The issued certificate with this serial (any hex spelling).
    pub fn issued(&self, serial: &str) -> Result<Option<X509>, StoreError> {
        let serial = normalize_serial(serial)?;
        self.read_cert_opt(&format!("{ISSUED}/{serial}.pem"))
    }

    /// Every issued certificate.
    pub fn issued_all(&self) -> Result<Vec<X509>, StoreError> {
        self.certs_in(ISSUED)
    }

    /// Registers a certificate the CA did not issue; returns its fingerprint.
    pub fn register(&self, cert: &X509Ref) -> Result<String, StoreError> {
        let _lock = self.lock()?;
        let fp = fingerprint(cert)?;
        if let Some(Known {
            entry: IndexEntry::Issued { .. },
            ..
        }) = self.lookup(&fp)?
        {
            return Ok(fp);
        }
        self.write(
            &format!("{REGISTERED}/{fp}.pem"),
            &cert.to_pem()?,
            PUBLIC_FILE,
        )?;
        self.write_json(
            &format!("{INDEX}/{fp}.json"),
            &IndexEntry::Registered,
            PUBLIC_FILE,
        )?;
        Ok(fp)
    }

    /// Every registered certificate.
    pub fn registered_all(&self) -> Result<Vec<X509>, StoreError> {
        self.certs_in(REGISTERED)
    }

    /// The certificate with this SHA-256 fingerprint, if issued or registered here.
    pub fn lookup(&self, fp: &str) -> Result<Option<Known>, StoreError> {
        if !is_fingerprint(fp) {
            return Err(StoreError::BadFingerprint(fp.to_string()));
        }
        let fp = fp.to_ascii_lowercase();
        let entry: Option<IndexEntry> = self.read_json_opt(&format!("{INDEX}/{fp}.json"))?;
        let Some(entry) = entry else {
            return Ok(None);
        };
        let cert = match &entry {
            IndexEntry::Issued { serial } => self.issued(serial)?,
            IndexEntry::Registered => self.read_cert_opt(&format!("{REGISTERED}/{fp}.pem"))?,
        };
        Ok(cert.map(|cert| Known { entry, cert }))
    }

    /// The file of a subject's binding (the subject is validated here: it names a file).
    fn subject_rel(kind: Kind, subject: &str) -> Result<String, StoreError> {
        crate::enroll::validate_subject(subject)
            .map_err(|e| StoreError::BadOption(e.to_string()))?;
        Ok(format!("{INDEX}/{SUBJECTS}/{kind}/{subject}.json"))
    }

    /// The endorsement key `aik/<kind>/<subject>` is bound to, if it is.
    pub fn subject_binding(
        &self,
        kind: Kind,
        subject: &str,
    ) -> Result<Option<SubjectBinding>, StoreError> {
        self.read_json_opt(&Self::subject_rel(kind, subject)?)
    }

    /// Binds `aik/<kind>/<subject>` to the endorsement key `ek_public_key_sha256` unless it
    /// is bound to another one (then nothing changes and the binding is returned as
    /// [`Bind::Taken`]). `ek_certificate` is the fingerprint of the certificate it came in.
    pub fn bind_subject(
        &self,
        kind: Kind,
        subject: &str,
        ek_public_key_sha256: &str,
        ek_certificate: &str,
    ) -> Result<Bind, StoreError> {
        let rel = Self::subject_rel(kind, subject)?;
        let _lock = self.lock()?;
        if let Some(b) = self.read_json_opt::<SubjectBinding>(&rel)? {
            return Ok(if b.ek_public_key_sha256 == ek_public_key_sha256 {
                Bind::Same
            } else {
                Bind::Taken(b)
            });
        }
        let p = self.dir.join(&rel);
        if let Some(parent) = p.parent() {
            self.mkdir(parent)?;
        }
        self.write_json(
            &rel,
            &SubjectBinding {
                ek_public_key_sha256: ek_public_key_sha256.to_string(),
                ek_certificate: ek_certificate.to_string(),
                since: now_unix(),
            },
            PUBLIC_FILE,
        )?;
        Ok(Bind::New)
    }

    /// Removes the binding of `aik/<kind>/<subject>` (so that any endorsement key may enroll
    /// it next); returns it, `None` if there was none.
    pub fn release_subject(
        &self,
        kind: Kind,
        subject: &str,
    ) -> Result<Option<SubjectBinding>, StoreError> {
        let rel = Self::subject_rel(kind, subject)?;
        let _lock = self.lock()?;
        let Some(b) = self.read_json_opt::<SubjectBinding>(&rel)? else {
            return Ok(None);
        };
        let p = self.dir.join(&rel);
        fs::remove_file(&p).map_err(io_err(&p))?;
        if let Some(parent) = p.parent() {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io_err(parent))?;
        }
        Ok(Some(b))
    }

    /// Every subject binding, sorted by kind and subject.
    pub fn subject_bindings(&self) -> Result<Vec<(Kind, String, SubjectBinding)>, StoreError> {
        let mut out = Vec::new();
        for kind in [Kind::Host, Kind::Vtpm] {
            let d = self.dir.join(INDEX).join(SUBJECTS).join(kind.as_str());
            let entries = match fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&d)(e)),
            };
            let mut subjects: Vec<String> = entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| !n.starts_with('.'))
                .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
                .collect();
            subjects.sort();
            for s in subjects {
                if let Some(b) = self.subject_binding(kind, &s)? {
                    out.push((kind, s, b));
                }
            }
        }
        Ok(out)
    }

    /// The named-certificate file for `name` (validated by [`crate::certstore`]).
    pub(crate) fn named_path(&self, name: &str) -> PathBuf {
        self.dir.join(CERTS).join(format!("{name}.pem"))
    }

    /// Names of the certificates in the named store, sorted.
    pub fn named_all(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let root = self.dir.join(CERTS);
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).map_err(io_err(&d))? {
                let e = e.map_err(io_err(&d))?;
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Some(rel) = p
                    .strip_prefix(&root)
                    .ok()
                    .and_then(|r| r.to_str())
                    .and_then(|r| r.strip_suffix(".pem"))
                {
                    if !rel.rsplit('/').next().is_some_and(|f| f.starts_with('.')) {
                        out.push(rel.to_string());
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    pub(crate) fn mkdir(&self, dir: &Path) -> Result<(), StoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR)
            .create(dir)
            .map_err(io_err(dir))
    }

    /// Reads a file of the store.
    pub(crate) fn read(&self, rel: &str) -> Result<Vec<u8>, StoreError> {
        let p = self.dir.join(rel);
        fs::read(&p).map_err(io_err(&p))
    }

    pub(crate) fn read_opt_path(&self, p: &Path) -> Result<Option<Vec<u8>>, StoreError> {
        match fs::read(p) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(p)(e)),
        }
    }

    fn read_cert(&self, rel: &str) -> Result<X509, StoreError> {
        let pem = self.read(rel)?;
        X509::from_pem(&pem).map_err(|source| StoreError::BadPem {
            what: self.dir.join(rel).display().to_string(),
            source,
        })
    }

    fn read_cert_opt(&self, rel: &str) -> Result<Option<X509>, StoreError> {
        match self.read_opt_path(&self.dir.join(rel))? {
            None => Ok(None),
            Some(pem) => X509::from_pem(&pem)
                .map(Some)
                .map_err(|source| StoreError::BadPem {
                    what: self.dir.join(rel).display().to_string(),
                    source,
                }),
        }
    }

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

    pub(crate) fn read_json<T: DeserializeOwned>(&self, rel: &str) -> Result<T, StoreError> {
        let p = self.dir.join(rel);
        let bytes = fs::read(&p).map_err(io_err(&p))?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Json { path: p, source })
    }

    pub(crate) fn read_json_opt<T: DeserializeOwned>(
        &self,
        rel: &str,
    ) -> Result<Option<T>, StoreError> {
        let p = self.dir.join(rel);
        match self.read_opt_path(&p)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StoreError::Json { path: p, source }),
        }
    }

    pub(crate) fn write_json<T: Serialize>(
        &self,
        rel: &str,
        value: &T,
        mode: u32,
    ) -> Result<(), StoreError> {
        let p = self.dir.join(rel);
        let mut bytes = serde_json::to_vec_pretty(value)
            .map_err(|source| StoreError::Json { path: p, source })?;
        bytes.push(b'\n');
        self.write(rel, &bytes, mode)
    }

    /// Atomically replaces a file of the store.
    pub(crate) fn write(&self, rel: &str, data: &[u8], mode: u32) -> Result<(), StoreError> {
        write_atomic(&self.dir.join(rel), data, mode)
    }
}

/// Replaces `path` with `data` atomically: temporary file, fsync, rename, fsync of the
/// directory. The file gets `mode` whatever the umask.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), StoreError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", hex(&random(8)?)));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err(&tmp))?;
        f.write_all(data).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(io_err(path))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The serial of a certificate, canonical (upper-case hex, even number of digits).
pub fn serial_of(cert: &X509Ref) -> Result<String, StoreError> {
    Ok(cert.serial_number().to_bn()?.to_hex_str()?.to_string())
}

/// A serial in canonical form: accepts either case, an optional `0x` and `:` separators.
pub fn normalize_serial(s: &str) -> Result<String, StoreError> {
    let bad = || StoreError::BadSerial(s.to_string());
    let t: String = s
        .trim()
        .trim_start_matches("0x")
        .trim_start_matches("0X")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    if t.is_empty() || t.len() > 128 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let bn = BigNum::from_hex_str(&t).map_err(|_| bad())?;
    if bn.num_bits() == 0 {
        return Err(bad());
    }
    Ok(bn.to_hex_str().map_err(|_| bad())?.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh store in a temporary directory.
    pub(crate) fn new_store(config: Config) -> (tempfile::TempDir, Store, String) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let init = init(
            &dir,
            &InitOptions {
                config,
                ..InitOptions::default()
            },
        )
        .unwrap();
        (tmp, init.store, init.admin_token)
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_creates_a_private_store_and_refuses_to_overwrite_it() {
        let (_tmp, store, token) = new_store(Config::default());
        let dir = store.dir().to_owned();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("ca.key")), 0o600);
        assert_eq!(mode(&dir.join("tls.key")), 0o600);
        assert_eq!(mode(&dir.join("admin.token")), 0o600);
        assert_eq!(mode(&dir.join("acl.json")), 0o600);
        assert_eq!(mode(&dir.join("issued")), 0o700);
        assert_eq!(
            fs::read_to_string(dir.join("admin.token")).unwrap().trim(),
            token
        );
        // No temporary file is left behind.
        assert!(fs::read_dir(&dir).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));
        let before = fs::read(dir.join("ca.key")).unwrap();
        assert!(matches!(
            init(&dir, &InitOptions::default()),
            Err(StoreError::Exists(_))
        ));
        assert_eq!(fs::read(dir.join("ca.key")).unwrap(), before);

        let store = Store::open(&dir).unwrap();
        let ca = store.ca_cert().unwrap();
        assert!(ca.verify(&store.ca_key().unwrap()).unwrap());
        // Root and TLS certificate are both recorded as issued.
        assert_eq!(store.issued_all().unwrap().len(), 2);
        let fp = fingerprint(&ca).unwrap();
        let known = store.lookup(&fp).unwrap().unwrap();
        assert!(matches!(known.entry, IndexEntry::Issued { .. }));
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
    fn init_with_bad_options_leaves_no_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let opts = InitOptions {
            tls_names: vec!["not a name".into()],
            ..InitOptions::default()
        };
        assert!(matches!(init(&dir, &opts), Err(StoreError::BadOption(_))));
        assert!(!dir.exists());
    }

    #[test]
    fn init_accepts_an_empty_existing_directory() {
        let tmp = tempfile::tempdir().unwrap();
        init(tmp.path(), &InitOptions::default()).unwrap();
        assert_eq!(mode(tmp.path()), 0o700);
    }

    #[test]
    fn serials_normalize() {
        assert_eq!(normalize_serial("0x0a").unwrap(), "0A");
        assert_eq!(normalize_serial("1f:2E").unwrap(), "1F2E");
        assert!(normalize_serial("0").is_err());
        assert!(normalize_serial("xyz").is_err());
        assert!(normalize_serial("").is_err());
    }

    #[test]
    fn the_lock_excludes_other_threads_and_is_reentrant() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (_tmp, store, _) = new_store(Config::default());
        let outer = store.lock().unwrap();
        // Re-entrant, also through another Store value for the same directory.
        let inner = Store::open(store.dir()).unwrap().lock().unwrap();
        drop(inner);
        let released = AtomicBool::new(false);
        std::thread::scope(|s| {
            let t = s.spawn(|| {
                let _l = store.lock().unwrap();
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
        // Free again once every guard is gone.
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
    fn subjects_bind_once_and_release() {
        let (_tmp, store, _) = new_store(Config::default());
        let (k1, k2, c) = ("11".repeat(32), "22".repeat(32), "33".repeat(32));
        assert_eq!(store.subject_binding(Kind::Host, "h").unwrap(), None);
        assert_eq!(
            store.bind_subject(Kind::Host, "h", &k1, &c).unwrap(),
            Bind::New
        );
        assert_eq!(
            store.bind_subject(Kind::Host, "h", &k1, &c).unwrap(),
            Bind::Same
        );
        match store.bind_subject(Kind::Host, "h", &k2, &c).unwrap() {
            Bind::Taken(b) => assert_eq!(b.ek_public_key_sha256, k1),
            other => panic!("{other:?}"),
        }
        // Kinds are separate namespaces.
        assert_eq!(
            store.bind_subject(Kind::Vtpm, "h", &k2, &c).unwrap(),
            Bind::New
        );
        assert_eq!(store.subject_bindings().unwrap().len(), 2);
        assert!(store.release_subject(Kind::Host, "h").unwrap().is_some());
        assert!(store.release_subject(Kind::Host, "h").unwrap().is_none());
        assert_eq!(
            store.bind_subject(Kind::Host, "h", &k2, &c).unwrap(),
            Bind::New
        );
        // Subjects name files: anything else is refused.
        for bad in ["../x", "a/b", ".h", ""] {
            assert!(store.subject_binding(Kind::Host, bad).is_err(), "{bad}");
            assert!(store.release_subject(Kind::Host, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn write_atomic_replaces_and_sets_the_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(mode(&p), 0o644);
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}
