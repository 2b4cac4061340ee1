//! Offline moves of a stopped vTPM (`vtpm-migrate export`, `import`, `settle`): the same
//! package and the same controller steps as a live migration, on a state directory no
//! daemon runs on (its lock is taken).
//!
//! * `export` (source host): seals the instance for the authorised migration's destination,
//!   writes the pending record and the package file. The instance is then held: a daemon
//!   started on the directory, or `settle`, asks the controller and destroys it once the
//!   migration is committed, or releases it once aborted.
//! * `import` (destination host): checks, claims and decrypts the package, imports it into a
//!   scratch engine, re-issues its vEK certificates, makes it durable with the pending record,
//!   reports it imported; the controller commits it. A daemon serves it only once committed.
//! * `settle`: waits for the decision about the directory's pending migration and acts on it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coprocessor::libtpms::LibtpmsEngine;
use coprocessor::Coprocessor;
use log::info;
use migration::api::Role;
use migration::client::{retry, Auth, Client};
use migration::destination;
use migration::host::HostMaterial;
use migration::pending;
use migration::seal::Trust;
use migration::source::{self, Decision, PATIENCE};
use migration::store::SharedStore;
use migration::MigrationId;
use openssl::x509::X509;
use vtpm_state::keys::HostKey;
use vtpm_state::EncryptedStore;

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("{0}")]
    Host(#[from] migration::host::HostError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vTPM state: {0}")]
    State(#[from] vtpm_state::StateError),
    #[error("engine: {0}")]
    Engine(#[from] coprocessor::Error),
    #[error("migration record: {0}")]
    Pending(#[from] pending::PendingError),
    #[error("{0}")]
    Source(#[from] source::SourceError),
    #[error("package refused ({code}): {refusal}", code = .refusal.code())]
    Refused { refusal: migration::Refusal },
    #[error("migration controller: {0}")]
    Controller(#[from] migration::client::ClientError),
    #[error("{0}")]
    Other(String),
}

impl From<migration::Refusal> for OfflineError {
    fn from(refusal: migration::Refusal) -> Self {
        OfflineError::Refused { refusal }
    }
}

/// A host's side of an offline move.
pub struct Offline {
    pub host: HostMaterial,
    pub host_key: HostKey,
    pub client: Client,
    pub trust: Trust,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OfflineError + '_ {
    move |source| OfflineError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Offline {
    /// The host in `host_dir` (keys unwrapped with `host_key`), a client of the controller.
    pub fn new(
        host_dir: &Path,
        host_key: HostKey,
        controller: &str,
        controller_pem: &[u8],
    ) -> Result<Self, OfflineError> {
        let host = HostMaterial::load(host_dir, &host_key)?;
        let client = Client::new(
            controller,
            controller_pem,
            Auth::Host(host.credentials.clone()),
        )?;
        let trust = Trust {
            ca_root: host.ca_root.clone(),
            controller: X509::from_pem(controller_pem)
                .map_err(|e| OfflineError::Other(format!("controller certificate: {e}")))?,
        };
        Ok(Offline {
            host,
            host_key,
            client,
            trust,
        })
    }

    /// Seals the stopped instance in `state_dir` into the package file `out`; returns the
    /// migration id.
    pub fn export(&self, state_dir: &Path, out: &Path) -> Result<MigrationId, OfflineError> {
        if let Some(p) = pending::read(state_dir)? {
            return Err(OfflineError::Other(format!(
                "{} is already held for migration {}",
                state_dir.display(),
                p.migration
            )));
        }
        let (store, _) = EncryptedStore::open(state_dir, &self.host_key, "libtpms")?;
        let instance = store.instance();
        // A bound instance leaves only under a ticket for its VM.
        let vm = store
            .load(vtpm_state::encrypted::VM_BINDING)?
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let shared = SharedStore::durable(store);
        let mut engine = LibtpmsEngine::start(Box::new(shared.clone()))?;
        let state = engine.export_state();
        // Starting the engine consumed the saved volatile state: keep it, whatever happens.
        let saved = engine.save();
        drop(engine);
        let state = state?;
        saved?;
        let what = source::Releasing {
            instance: &instance,
            vm: vm.as_deref(),
            state_dir,
        };
        let released = source::release(&state, what, &self.host, &self.client, &self.trust, now())
            .map_err(|(e, _)| e)?;
        durable_fs::replace(out, &released.package, 0o600, true).map_err(io(out))?;
        info!(
            "instance {instance} exported to {} for host {} (migration {})",
            out.display(),
            released.destination,
            released.migration
        );
        Ok(released.migration)
    }

    /// Imports the package file `input` into the empty `state_dir`, reports it imported and
    /// waits (at most `wait`) for the commit.
    pub fn import(
        &self,
        state_dir: &Path,
        input: &Path,
        ca: &vtpm_ca::Client,
        wait: Duration,
    ) -> Result<Decision, OfflineError> {
        let reserved = EncryptedStore::reserve(state_dir)?;
        let bytes = std::fs::read(input).map_err(io(input))?;
        if bytes.len() as u64 > migration::MAX_DEVICE_STATE {
            return Err(OfflineError::Other(format!(
                "{} is larger than a package can be",
                input.display()
            )));
        }
        let accepted = destination::accept(
            &bytes,
            &self.host,
            &self.trust,
            &self.client,
            ca,
            None,
            now(),
        )?;
        let store = SharedStore::memory();
        let mut engine = LibtpmsEngine::start(Box::new(store.clone()))?;
        if let Err((refusal, _)) = destination::install(
            &mut engine,
            &store,
            reserved,
            &accepted,
            &self.host,
            &self.host_key,
        ) {
            destination::abort_after_claim(&self.client, &accepted.verified, &refusal);
            return Err(refusal.into());
        }
        // The TPM continues where the source stopped when a daemon starts on it.
        engine.save()?;
        drop(engine);
        drop(store);
        let id = accepted.verified.ticket.ticket.migration;
        retry(PATIENCE, || self.client.imported(&id))?;
        self.settle(state_dir, wait)
    }

    /// Waits (at most `wait`) for the decision about `state_dir`'s pending migration and
    /// acts on it; returns it (undecided when the wait ran out, the directory still held).
    pub fn settle(&self, state_dir: &Path, wait: Duration) -> Result<Decision, OfflineError> {
        let Some(record) = pending::read(state_dir)? else {
            return Err(OfflineError::Other(format!(
                "{} holds no pending migration",
                state_dir.display()
            )));
        };
        let id: MigrationId = record
            .migration
            .parse()
            .map_err(|e: migration::ticket::BadId| OfflineError::Other(e.to_string()))?;
        let deadline = Instant::now() + wait;
        let decision = loop {
            let d = retry(PATIENCE, || source::decision(&self.client, &id))?;
            if !matches!(d, Decision::Undecided(_)) || Instant::now() >= deadline {
                break d;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        match (record.role, decision) {
            (_, Decision::Undecided(_)) => {}
            (Role::Source, Decision::Committed) => {
                let (store, _) = EncryptedStore::open(state_dir, &self.host_key, "libtpms")?;
                source::destroy(store, &record, &self.host, &self.client)?;
            }
            (Role::Source, Decision::Aborted) => pending::remove(state_dir)?,
            (Role::Destination, Decision::Committed) => {
                if let Ok(instance) = migration::ticket::parse_instance(&record.instance) {
                    self.host.record_epoch(&instance, record.epoch + 1)?;
                }
                pending::remove(state_dir)?;
            }
            (Role::Destination, Decision::Aborted) => {
                let (store, _) = EncryptedStore::open(state_dir, &self.host_key, "libtpms")?;
                store.destroy(&format!(
                    "the import from host {} was aborted (migration {})",
                    record.peer, record.migration
                ))?;
                pending::remove(state_dir)?;
            }
        }
        Ok(decision)
    }
}
