//! `vtpm-host`: the host's side of the certificate chain of ADR 0008.
//!
//! This crate owns the flows that need the host TPM and the local CA together, and the host
//! identity directory they keep their results in:
//! - [`enroll_host`]: the host TPM's EK certificate and a new restricted AIK go to the local
//!   CA; the TPM proves the AIK lives next to that EK by activating the CA's credential; the
//!   CA answers with the host AIK certificate.
//! - [`certify_coprocessor`]: the coprocessor key (software, wrapped by the host TPM) gets a
//!   certificate whose signature the host TPM makes with its AIK (a hash-sequence ticket +
//!   TPM2_Sign), and is registered with the CA.
//! - [`provision_instance`]: a vTPM instance (its state directory, offline) gets its vEK
//!   certificates and the chain in NV, signed by the coprocessor key. Running it again
//!   re-issues them (what migration calls).
//! - [`instance`]: a stopped instance's certificates read from NV, and its identity
//!   refreshed after the host's certificates were renewed (ADR 0012).
//!
//! Host identity directory (default `/var/lib/vtpm/host`, mode 0700):
//! `host-ek.pem`, `host-ek-intermediates.pem` (if `enroll --ek-intermediate` gave any),
//! `host-aik.blob` (the AIK, usable only in this TPM), `host-aik.pem`, `ca.pem`, `coprocessor.key` (wrapped by the host TPM), `coprocessor.pem`,
//! `migration.key` (the host's migration key, wrapped by the host TPM) and `migration.pub`.

pub mod cli;
pub mod instance;
pub mod vaik;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use coprocessor::libtpms::LibtpmsEngine;
use coprocessor::Coprocessor;
use host_tpm::{HostTpm, HostTpmError, ObjectBlob, RSA_EK_CERT_INDEX};
use identity::key::{MIGRATION_KEY_FILE, MIGRATION_PUBLIC_FILE};
use identity::provision::provision_ek;
use identity::tpm_signed::{issue_signed_with, CertSpec};
use identity::{CoprocessorKey, IdentityError, MigrationKey, ProvisionedEk, Validity};
use log::info;
use openssl::x509::X509;
use vtpm_ca::api::{EnrollFinishRequest, EnrollStartRequest, Kind};
use vtpm_ca::client::{Client, ClientError};
use vtpm_state::keys::HostKey;
use vtpm_state::{EncryptedStore, StateError};

pub const HOST_EK_CERT: &str = "host-ek.pem";
/// The intermediate CA certificates between the host EK certificate and its manufacturer's
/// root that `enroll --ek-intermediate` was given: kept so that renewals send them too.
pub const HOST_EK_INTERMEDIATES: &str = "host-ek-intermediates.pem";
pub const HOST_AIK_BLOB: &str = "host-aik.blob";
pub const HOST_AIK_CERT: &str = "host-aik.pem";
pub const CA_CERT: &str = "ca.pem";
pub const COPROCESSOR_CERT: &str = "coprocessor.pem";
/// Where `certify-coprocessor` makes a new coprocessor key until the CA has registered its
/// certificate.
pub const COPROCESSOR_STAGING: &str = ".coprocessor.staging";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("host TPM: {0}")]
    HostTpm(#[from] HostTpmError),
    #[error("the host TPM has no RSA EK certificate at NV index {RSA_EK_CERT_INDEX:#010x}; provision one (swtpm_setup --create-ek-cert for a simulator) or enrol another way")]
    NoEkCertificate,
    #[error("local CA: {0}")]
    Ca(#[from] ClientError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is missing: run `vtpm-host {step}` first")]
    Missing { path: PathBuf, step: &'static str },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("engine: {0}")]
    Engine(#[from] coprocessor::Error),
    #[error("cryptography: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
    #[error(
        "{} holds no provisioned vTPM instance (no vEK certificate at NV 0x01c00002): run \
         `vtpm-host provision --state-dir {}` first",
        .state_dir.display(),
        .state_dir.display()
    )]
    NotProvisioned { state_dir: PathBuf },
    #[error("vTPM: TPM2_{command} failed with TPM_RC {code:#x}{hint}")]
    Vtpm {
        command: &'static str,
        code: u32,
        hint: String,
    },
    #[error("the vTPM did not activate the CA's credential (TPM2_ActivateCredential failed with TPM_RC {code:#x}): {reason}")]
    ActivationFailed { code: u32, reason: String },
}

/// The host identity directory.
#[derive(Debug, Clone)]
pub struct HostDir {
    path: PathBuf,
}

impl HostDir {
    /// Opens (creating, mode 0700) the directory.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, AgentError> {
        let path = path.into();
        durable_fs::create_private_dir(&path).map_err(|source| AgentError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(HostDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn write(&self, name: &str, data: &[u8]) -> Result<(), AgentError> {
        durable_fs::replace(&self.file(name), data, 0o600, true).map_err(|source| AgentError::Io {
            path: self.file(name),
            source,
        })
    }

    fn read(&self, name: &str, step: &'static str) -> Result<Vec<u8>, AgentError> {
        let path = self.file(name);
        match fs::read(&path) {
            Ok(d) => Ok(d),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(AgentError::Missing { path, step })
            }
            Err(source) => Err(AgentError::Io { path, source }),
        }
    }

    fn cert(&self, name: &str, step: &'static str) -> Result<X509, AgentError> {
        let pem = self.read(name, step)?;
        X509::from_pem(&pem).map_err(|e| AgentError::Invalid {
            what: self.file(name).display().to_string(),
            reason: e.to_string(),
        })
    }

    /// The EK intermediates stored by an earlier enrolment (none if there is no file).
    pub fn ek_intermediates(&self) -> Result<Vec<X509>, AgentError> {
        let pem = match fs::read(self.file(HOST_EK_INTERMEDIATES)) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(AgentError::Io {
                    path: self.file(HOST_EK_INTERMEDIATES),
                    source,
                })
            }
        };
        X509::stack_from_pem(&pem).map_err(|e| AgentError::Invalid {
            what: self.file(HOST_EK_INTERMEDIATES).display().to_string(),
            reason: e.to_string(),
        })
    }

    /// The host AIK (usable only in this host's TPM).
    pub fn aik(&self) -> Result<ObjectBlob, AgentError> {
        let bytes = self.read(HOST_AIK_BLOB, "enroll")?;
        ObjectBlob::from_bytes(&bytes).map_err(|e| AgentError::Invalid {
            what: self.file(HOST_AIK_BLOB).display().to_string(),
            reason: e.to_string(),
        })
    }

    /// The host AIK certificate.
    pub fn host_aik_cert(&self) -> Result<X509, AgentError> {
        self.cert(HOST_AIK_CERT, "enroll")
    }

    /// The coprocessor certificate.
    pub fn coprocessor_cert(&self) -> Result<X509, AgentError> {
        self.cert(COPROCESSOR_CERT, "certify-coprocessor")
    }

    /// The CA root the host enrolled with.
    pub fn ca_cert(&self) -> Result<X509, AgentError> {
        self.cert(CA_CERT, "enroll")
    }

    /// This host's id: the common name of its host AIK certificate.
    pub fn host_id(&self) -> Result<String, AgentError> {
        let cert = self.host_aik_cert()?;
        cert.subject_name()
            .entries_by_nid(openssl::nid::Nid::COMMONNAME)
            .next()
            .and_then(|e| e.data().to_string().ok())
            .ok_or_else(|| AgentError::Invalid {
                what: self.file(HOST_AIK_CERT).display().to_string(),
                reason: "no common name".into(),
            })
    }

    /// The public part of the host's migration key, as an uncompressed P-256 point (what a
    /// migration ticket names and the host's quote binds).
    pub fn migration_public(&self) -> Result<Vec<u8>, AgentError> {
        let pem = self.read(MIGRATION_PUBLIC_FILE, "certify-coprocessor")?;
        let invalid = |reason: String| AgentError::Invalid {
            what: self.file(MIGRATION_PUBLIC_FILE).display().to_string(),
            reason,
        };
        let key = openssl::pkey::PKey::public_key_from_pem(&pem)
            .and_then(|k| k.ec_key())
            .map_err(|e| invalid(e.to_string()))?;
        identity::key::public_point(&key).map_err(|e| invalid(e.to_string()))
    }
}

/// `TPM2B_PUBLIC` (u16 size + `TPMT_PUBLIC`), what the CA expects and `tpm2_createak -u` writes.
fn tpm2b(public: &[u8]) -> Result<Vec<u8>, AgentError> {
    let len = u16::try_from(public.len()).map_err(|_| AgentError::Invalid {
        what: "AIK public area".into(),
        reason: "longer than 65535 bytes".into(),
    })?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(public);
    Ok(out)
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(what: &str, text: &str) -> Result<Vec<u8>, AgentError> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| AgentError::Invalid {
            what: what.to_owned(),
            reason: e.to_string(),
        })
}

/// Runs the CA's credential activation for an AIK with the host TPM and stores the host AIK
/// certificate. The first enrolment of `host_id` needs `ca` to carry the enrolment token the
/// administrator issued for it (`vtpm-ca enroll-token`); enrolling again with the same TPM
/// (renewal) needs none. A new AIK is created unless `reuse_aik` and one exists (renewal); a stored
/// AIK that cannot be read is an error, not a reason to make another. A new AIK is kept in
/// memory until the CA has certified it: only then are its blob and its certificate written,
/// so a failed enrollment leaves the stored AIK and certificate as they were.
///
/// The EK certificate goes to the CA followed by `ek_intermediates` (the manufacturer's
/// intermediate CAs, for a CA that trusts only the manufacturer's root); given none, the
/// ones an earlier enrolment stored are sent. Given some, they are stored with the
/// certificate, for renewals.
pub fn enroll_host(
    tpm: &mut HostTpm,
    dir: &HostDir,
    ca: &Client,
    host_id: &str,
    reuse_aik: bool,
    ek_intermediates: &[X509],
) -> Result<X509, AgentError> {
    let ek_der = tpm
        .read_nv_certificate(RSA_EK_CERT_INDEX)?
        .ok_or(AgentError::NoEkCertificate)?;
    let ek_pem = X509::from_der(&ek_der)?.to_pem()?;
    // Written before the CA is asked, so that an operator whose enrolment is refused as
    // `untrusted_ek` can read which issuer the EK certificate names.
    dir.write(HOST_EK_CERT, &ek_pem)?;
    let stored_intermediates;
    let intermediates = if ek_intermediates.is_empty() {
        stored_intermediates = dir.ek_intermediates()?;
        &stored_intermediates[..]
    } else {
        ek_intermediates
    };
    let mut ek_cert_chain = vec![String::from_utf8_lossy(&ek_pem).into_owned()];
    for c in intermediates {
        ek_cert_chain.push(String::from_utf8_lossy(&c.to_pem()?).into_owned());
    }
    let stored = if reuse_aik {
        match dir.aik() {
            Ok(aik) => Some(aik),
            Err(AgentError::Missing { .. }) => None,
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let (aik, new_aik) = match stored {
        Some(aik) => (aik, false),
        None => (tpm.create_aik()?, true),
    };
    let start = ca.enroll_start(&EnrollStartRequest {
        kind: Kind::Host,
        subject: host_id.to_owned(),
        ek_cert_chain,
        aik_public: b64(&tpm2b(&aik.public)?),
    })?;
    let secret = tpm.activate_credential(
        &aik,
        &unb64("credential blob", &start.credential_blob)?,
        &unb64("encrypted secret", &start.encrypted_secret)?,
    )?;
    let done = ca.enroll_finish(&EnrollFinishRequest {
        session: start.session,
        secret: b64(&secret),
    })?;
    let cert = X509::from_pem(done.certificate.as_bytes())?;
    if new_aik {
        dir.write(HOST_AIK_BLOB, &aik.to_bytes())?;
    }
    if !ek_intermediates.is_empty() {
        let mut pem = Vec::new();
        for c in ek_intermediates {
            pem.extend(c.to_pem()?);
        }
        dir.write(HOST_EK_INTERMEDIATES, &pem)?;
    }
    dir.write(HOST_AIK_CERT, done.certificate.as_bytes())?;
    dir.write(CA_CERT, done.ca_certificate.as_bytes())?;
    info!(
        "host {host_id} enrolled: host AIK certificate {} (serial {})",
        done.name, done.serial
    );
    Ok(cert)
}

/// Creates the coprocessor key (once; later calls re-certify the existing key), has the host
/// TPM's AIK sign its certificate and registers it with the CA (`ca` must carry a token
/// allowed to write `coprocessor/...`), then creates the host's migration key, once
/// ([`ensure_migration_key`]).
///
/// All or nothing: a new key is made in a staging directory and the certificate kept in
/// memory until the CA has registered it; only then are the key moved into place and
/// `coprocessor.pem` written. A refusal (no token, no permission, an untrusted chain, the
/// TPM failing) leaves the host directory as it was, so `provision` never finds a
/// coprocessor certificate the CA does not know.
pub fn certify_coprocessor(
    tpm: &mut HostTpm,
    dir: &HostDir,
    host_key: &HostKey,
    host_id: &str,
    validity: Validity,
    ca: &Client,
) -> Result<X509, AgentError> {
    if !ca.has_token() {
        return Err(AgentError::Invalid {
            what: "the CA client".into(),
            reason: "registering the coprocessor certificate needs a token of a CA principal \
                     allowed to write coprocessor/... (--token-file)"
                .into(),
        });
    }
    let aik_cert = dir.host_aik_cert()?;
    let aik = dir.aik()?;
    let staging = dir.file(COPROCESSOR_STAGING);
    let (key, new_key) = match CoprocessorKey::open(dir.path(), host_key) {
        Ok(key) => (key, false),
        Err(IdentityError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            // A staging directory left by an interrupted run holds nothing registered.
            remove_dir_if_present(&staging)?;
            (CoprocessorKey::create(&staging, host_key)?, true)
        }
        Err(e) => return Err(e.into()),
    };
    let certified = (|| {
        let cert = issue_signed_with(
            &CertSpec::coprocessor(host_id, validity),
            &aik_cert,
            &key.public_key(),
            &tpm.aik_signer(&aik)?,
        )?;
        let pem = cert.to_pem()?;
        ca.register_coprocessor(&[
            String::from_utf8_lossy(&pem).into_owned(),
            String::from_utf8_lossy(&aik_cert.to_pem()?).into_owned(),
        ])?;
        Ok::<_, AgentError>((cert, pem))
    })();
    let (cert, pem) = match certified {
        Ok(done) => done,
        Err(e) => {
            if new_key {
                remove_dir_if_present(&staging)?;
            }
            return Err(e);
        }
    };
    if new_key {
        commit_staged_key(dir, &staging)?;
    }
    dir.write(COPROCESSOR_CERT, &pem)?;
    info!(
        "coprocessor certificate issued by the host AIK for host {host_id}, registered with the CA"
    );
    ensure_migration_key(dir, host_key)?;
    Ok(cert)
}

/// Creates the host's migration key (`migration.key`, wrapped by `host_key`, and
/// `migration.pub`) unless it exists; an existing key is opened to check it. Migration
/// packages for this host are sealed to it (ADR 0010).
pub fn ensure_migration_key(dir: &HostDir, host_key: &HostKey) -> Result<(), AgentError> {
    if dir.file(MIGRATION_KEY_FILE).exists() {
        MigrationKey::open(dir.path(), host_key)?;
        if !dir.file(MIGRATION_PUBLIC_FILE).exists() {
            return Err(AgentError::Missing {
                path: dir.file(MIGRATION_PUBLIC_FILE),
                step: "certify-coprocessor",
            });
        }
        return Ok(());
    }
    MigrationKey::create(dir.path(), host_key)?;
    info!("migration key created in {}", dir.path().display());
    Ok(())
}

/// Moves the coprocessor key made in `staging` into the host directory (never replacing
/// one) and removes `staging`.
fn commit_staged_key(dir: &HostDir, staging: &Path) -> Result<(), AgentError> {
    let from = staging.join(identity::key::KEY_FILE);
    let to = dir.file(identity::key::KEY_FILE);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| AgentError::Io { path, source }
    };
    match fs::hard_link(&from, &to) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            remove_dir_if_present(staging)?;
            return Err(IdentityError::KeyExists { path: to }.into());
        }
        Err(e) => return Err(io(&to)(e)),
    }
    durable_fs::sync_dir(dir.path()).map_err(io(dir.path()))?;
    remove_dir_if_present(staging)
}

fn remove_dir_if_present(path: &Path) -> Result<(), AgentError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(AgentError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Provisions (or re-issues) the vEK certificates and their chain into the instance in
/// `state_dir`, whose state key `instance_key` protects. The instance must not be running
/// (its directory lock is taken).
pub fn provision_instance(
    state_dir: &Path,
    instance_key: &HostKey,
    dir: &HostDir,
    coprocessor_key: &HostKey,
    validity: Validity,
) -> Result<ProvisionedEk, AgentError> {
    // The certificate first: `certify-coprocessor` writes it only once the CA registered
    // it, so without it there is nothing to provision with (whatever key is there).
    let coprocessor_cert = dir.coprocessor_cert()?;
    let host_aik_cert = dir.host_aik_cert()?;
    let key = CoprocessorKey::open(dir.path(), coprocessor_key)?;
    let (store, _) = EncryptedStore::open(state_dir, instance_key, "libtpms")?;
    let instance = store.instance();
    let mut engine = LibtpmsEngine::start(Box::new(store))?;
    let provisioned = provision_ek(
        &mut engine,
        &key,
        &coprocessor_cert,
        std::slice::from_ref(&host_aik_cert),
        &validity,
    );
    // Keep whatever volatile state the instance had (a guest paused, not powered off),
    // also when provisioning failed: starting the engine consumed the saved copy.
    let saved = engine.save();
    let provisioned = provisioned?;
    saved?;
    info!(
        "vEK certificates of instance {instance} issued (chain in NV {:x?})",
        provisioned.chain_indices
    );
    Ok(provisioned)
}

/// Whether `cert` is due for renewal now (a third of its lifetime left, or expired).
pub(crate) fn due(cert: &openssl::x509::X509Ref) -> Result<bool, AgentError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    Ok(vtpm_ca::client::renewal_due(
        cert,
        i64::try_from(now).unwrap_or(i64::MAX),
    )?)
}

/// Renews what is due: a certificate with less than a third of its lifetime left is issued
/// again (the host AIK by a new activation with the same AIK, the coprocessor certificate by
/// the host TPM). Returns what was renewed.
pub fn renew(
    tpm: &mut HostTpm,
    dir: &HostDir,
    ca: &Client,
    host_key: &HostKey,
    host_id: &str,
    coprocessor_lifetime: Duration,
) -> Result<Vec<&'static str>, AgentError> {
    let mut renewed = Vec::new();
    let host_aik_cert = dir.host_aik_cert()?;
    if due(&host_aik_cert)? {
        enroll_host(tpm, dir, ca, host_id, true, &[])?;
        renewed.push("host AIK certificate");
    }
    let coprocessor_due = match dir.coprocessor_cert() {
        Ok(cert) => due(&cert)? || !renewed.is_empty(),
        Err(AgentError::Missing { .. }) => true,
        Err(e) => return Err(e),
    };
    if coprocessor_due {
        certify_coprocessor(
            tpm,
            dir,
            host_key,
            host_id,
            Validity::starting_now(coprocessor_lifetime),
            ca,
        )?;
        renewed.push("coprocessor certificate");
    }
    Ok(renewed)
}
