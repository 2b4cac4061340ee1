//! Creating a CA (`vtpm-ca init`): the keys and certificates, then a new store holding them,
//! the configuration, the admin principal and an empty revocation list.
//!
//! This module owns the order of it: everything that can fail on bad options (the keys and
//! certificates) is made before the directory is touched, and the CA key and root are
//! written last, so that an interrupted `init` never leaves a directory [`Store::open`]
//! takes for a store. It refuses a directory that is not empty.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use openssl::error::ErrorStack;
use openssl::x509::X509;

use crate::certstore::{self, Acl, Principal};
use crate::issue::{self, IssueError};
use crate::revocation::Revocations;
use crate::store::{Config, Store, StoreError, PRIVATE_DIR};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0} already exists and is not empty: refusing to overwrite a store")]
    Exists(PathBuf),
    #[error("invalid option: at least one TLS name is needed")]
    NoTlsName,
    #[error("invalid option: the validity of issued certificates must be at least 1 second")]
    ZeroValidity,
    #[error("invalid option: {0}")]
    BadOption(IssueError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("OpenSSL: {0}")]
    Crypto(#[from] ErrorStack),
}

impl From<IssueError> for InitError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::Crypto(e) => InitError::Crypto(e),
            other => InitError::BadOption(other),
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
pub fn init(dir: &Path, opts: &InitOptions) -> Result<Initialized, InitError> {
    if opts.tls_names.is_empty() {
        return Err(InitError::NoTlsName);
    }
    if opts.config.validity_secs == 0 {
        return Err(InitError::ZeroValidity);
    }
    // Everything that can fail on bad options first, before the directory is touched.
    let ca_key = issue::generate_key()?;
    let ca_cert = issue::root_cert(&ca_key, &opts.root_name, opts.root_validity_secs)?;
    let tls_key = issue::generate_key()?;
    let tls_cert = issue::tls_cert(
        &ca_key,
        &ca_cert,
        &tls_key,
        &opts.tls_names,
        opts.tls_validity_secs,
    )?;
    let admin_token = certstore::new_token()?;

    create_empty_dir(dir)?;
    let store = Store::being_created(dir);
    {
        let locked = store.lock()?;
        locked.create_layout()?;
        locked.write_config(&opts.config)?;
        locked.write_tls(&tls_key, &tls_cert)?;
        locked.record_issued(&ca_cert)?;
        locked.record_issued(&tls_cert)?;
        for root in &opts.ek_roots {
            locked.add_ek_root(root)?;
        }
        Acl {
            principals: vec![Principal::new(
                "admin",
                &admin_token,
                true,
                vec![String::new()],
                true,
            )],
        }
        .save(&locked)?;
        locked.write_admin_token(&admin_token)?;
        Revocations::default().save(&locked)?;
        // Last: until both exist, `Store::open` refuses the directory.
        locked.write_ca(&ca_key, &ca_cert)?;
    }
    Ok(Initialized { store, admin_token })
}

/// Makes `dir` an empty `0700` directory: creates it (and its parents) if it does not exist,
/// refuses it if it is not empty.
fn create_empty_dir(dir: &Path) -> Result<(), InitError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| InitError::Io { path, source }
    };
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(InitError::Exists(dir.to_owned()));
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
    fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR)).map_err(io_err(dir))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::IndexEntry;
    use crate::util::fingerprint;

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
            Err(InitError::Exists(_))
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
    fn init_with_bad_options_leaves_no_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let opts = InitOptions {
            tls_names: vec!["not a name".into()],
            ..InitOptions::default()
        };
        assert!(matches!(init(&dir, &opts), Err(InitError::BadOption(_))));
        assert!(!dir.exists());
    }

    #[test]
    fn init_accepts_an_empty_existing_directory() {
        let tmp = tempfile::tempdir().unwrap();
        init(tmp.path(), &InitOptions::default()).unwrap();
        assert_eq!(mode(tmp.path()), 0o700);
    }
}
