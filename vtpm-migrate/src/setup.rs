//! The controller's directory: made once by `vtpm-migrate init`, read by `serve`.
//!
//! ```text
//! DIR/                 0700
//!   controller.key     the controller's ECDSA P-256 key (0600): signs tickets, issued tls.pem
//!   controller.pem     its self-signed certificate: what daemons and operators trust
//!                      (--migration-controller-cert, --controller-cert)
//!   tls.key tls.pem    the HTTPS key (0600) and certificate (issued by controller.pem)
//!   ca.pem             the local CA's root: host AIK and coprocessor chains end there
//!   admin.token        the operator's bearer token (0600); the server keeps its SHA-256
//!   config.json        ca_url, lifetime_secs
//!   controller.db      the SQLite store (and its -wal, -shm)
//! ```

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, PKeyRef, Private};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509Builder, X509Name, X509NameRef, X509};
use serde::{Deserialize, Serialize};

pub const CONTROLLER_KEY: &str = "controller.key";
pub const CONTROLLER_CERT: &str = "controller.pem";
pub const TLS_KEY: &str = "tls.key";
pub const TLS_CERT: &str = "tls.pem";
pub const CA_CERT: &str = "ca.pem";
pub const ADMIN_TOKEN: &str = "admin.token";
pub const CONFIG: &str = "config.json";
pub const DATABASE: &str = "controller.db";

/// Certificates of the controller live ten years; the operator replaces the directory's
/// certificate when it is compromised, not on a schedule.
const CERT_DAYS: u32 = 3650;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not empty: refusing to initialise over an existing controller")]
    NotEmpty(PathBuf),
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cryptography: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
}

/// `config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// The local CA's base URL (revocation status).
    pub ca_url: String,
    /// How long a migration may take before it is aborted.
    pub lifetime_secs: u64,
}

/// What `init` is given.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub ca_url: String,
    pub ca_pem: Vec<u8>,
    /// DNS names and IP addresses of the HTTPS certificate.
    pub tls_names: Vec<String>,
    pub lifetime_secs: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SetupError + '_ {
    move |source| SetupError::Io {
        path: path.to_owned(),
        source,
    }
}

fn write(dir: &Path, name: &str, data: &[u8], mode: u32) -> Result<(), SetupError> {
    let path = dir.join(name);
    durable_fs::replace(&path, data, mode, true).map_err(io(&path))
}

fn name(cn: &str) -> Result<X509Name, SetupError> {
    let mut b = X509Name::builder()?;
    b.append_entry_by_nid(Nid::COMMONNAME, cn)?;
    Ok(b.build())
}

fn serial() -> Result<openssl::asn1::Asn1Integer, SetupError> {
    let mut bytes = [0u8; 16];
    openssl::rand::rand_bytes(&mut bytes)?;
    bytes[0] &= 0x7f;
    Ok(BigNum::from_slice(&bytes)?.to_asn1_integer()?)
}

fn p256_key() -> Result<PKey<Private>, SetupError> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    Ok(PKey::from_ec_key(EcKey::generate(&group)?)?)
}

/// A version 3 certificate of `key` for `subject` from `issuer`, with a random serial, valid
/// from now for [`CERT_DAYS`]; the caller adds the extensions and signs it.
fn builder(
    subject: &X509NameRef,
    issuer: &X509NameRef,
    key: &PKeyRef<Private>,
) -> Result<X509Builder, SetupError> {
    let serial_number = serial()?;
    let (not_before, not_after) = (
        Asn1Time::days_from_now(0)?,
        Asn1Time::days_from_now(CERT_DAYS)?,
    );
    let mut b = X509::builder()?;
    b.set_version(2)?;
    b.set_serial_number(&serial_number)?;
    b.set_subject_name(subject)?;
    b.set_issuer_name(issuer)?;
    b.set_pubkey(key)?;
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    Ok(b)
}

/// Creates the controller's directory; returns the operator's token.
pub fn init(dir: &Path, opts: &InitOptions) -> Result<String, SetupError> {
    if dir.exists() && fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
        return Err(SetupError::NotEmpty(dir.to_owned()));
    }
    durable_fs::create_private_dir(dir).map_err(io(dir))?;
    X509::from_pem(&opts.ca_pem).map_err(|e| SetupError::Invalid {
        path: dir.join(CA_CERT),
        reason: format!("the CA root is not a PEM certificate: {e}"),
    })?;

    let key = p256_key()?;
    let subject = name("vhost-vtpm migration controller")?;
    let mut b = builder(&subject, &subject, &key)?;
    b.append_extension(BasicConstraints::new().critical().ca().pathlen(0).build()?)?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .key_cert_sign()
            .build()?,
    )?;
    b.sign(&key, MessageDigest::sha256())?;
    let cert = b.build();

    let tls_key = p256_key()?;
    let tls_subject = name(opts.tls_names.first().map_or("localhost", String::as_str))?;
    let mut b = builder(&tls_subject, cert.subject_name(), &tls_key)?;
    b.append_extension(BasicConstraints::new().critical().build()?)?;
    b.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
    b.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
    let mut san = SubjectAlternativeName::new();
    for n in &opts.tls_names {
        if n.parse::<IpAddr>().is_ok() {
            san.ip(n);
        } else {
            san.dns(n);
        }
    }
    let san = san.build(&b.x509v3_context(Some(&cert), None))?;
    b.append_extension(san)?;
    b.sign(&key, MessageDigest::sha256())?;
    let tls_cert = b.build();

    let mut token = [0u8; 32];
    openssl::rand::rand_bytes(&mut token)?;
    let token = hex::encode(token);
    let config = Config {
        ca_url: opts.ca_url.clone(),
        lifetime_secs: opts.lifetime_secs,
    };
    let config = serde_json::to_vec_pretty(&config).map_err(|e| SetupError::Invalid {
        path: dir.join(CONFIG),
        reason: e.to_string(),
    })?;
    write(dir, CA_CERT, &opts.ca_pem, 0o644)?;
    write(dir, CONTROLLER_KEY, &key.private_key_to_pem_pkcs8()?, 0o600)?;
    write(dir, CONTROLLER_CERT, &cert.to_pem()?, 0o644)?;
    write(dir, TLS_KEY, &tls_key.private_key_to_pem_pkcs8()?, 0o600)?;
    write(dir, TLS_CERT, &tls_cert.to_pem()?, 0o644)?;
    write(dir, CONFIG, &config, 0o644)?;
    write(dir, ADMIN_TOKEN, token.as_bytes(), 0o600)?;
    Ok(token)
}

/// The controller's directory, opened for `serve`.
#[derive(Debug)]
pub struct Dir {
    pub path: PathBuf,
    pub config: Config,
}

impl Dir {
    pub fn open(path: &Path) -> Result<Dir, SetupError> {
        let config_path = path.join(CONFIG);
        let text = fs::read(&config_path).map_err(io(&config_path))?;
        let config = serde_json::from_slice(&text).map_err(|e| SetupError::Invalid {
            path: config_path,
            reason: e.to_string(),
        })?;
        Ok(Dir {
            path: path.to_owned(),
            config,
        })
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn read(&self, name: &str) -> Result<Vec<u8>, SetupError> {
        let path = self.file(name);
        fs::read(&path).map_err(io(&path))
    }

    pub fn key(&self) -> Result<PKey<Private>, SetupError> {
        Ok(PKey::private_key_from_pem(&self.read(CONTROLLER_KEY)?)?)
    }

    pub fn cert(&self, name: &str) -> Result<X509, SetupError> {
        Ok(X509::from_pem(&self.read(name)?)?)
    }

    /// SHA-256 of the operator's token.
    pub fn admin_token_sha256(&self) -> Result<[u8; 32], SetupError> {
        let token = String::from_utf8_lossy(&self.read(ADMIN_TOKEN)?)
            .trim()
            .to_owned();
        Ok(openssl::sha::sha256(token.as_bytes()))
    }
}
