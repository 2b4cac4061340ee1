//! The daemon's side of a sealed migration (ADR 0010): the serving gate, DEVICE_STATE SAVE
//! (source) and LOAD (destination), and acting on the controller's decision.
//!
//! With `--migration-controller` the instance's engine runs on a [`SharedStore`] this module
//! keeps a handle of, and the request queue is served only while the gate is open
//! ([`Control::serving`], checked in one place, `backend::process_queue`):
//!
//! * **Serving**: the instance is this daemon's to run.
//! * **Released** (source): QEMU's SAVE got a package sealed for the ticket's destination;
//!   the pending record is in the state directory. Nothing is served until the controller
//!   decides: aborted, the record goes and the gate opens with nothing lost; committed, the
//!   copy is destroyed (tombstone, key record, state) and the gate opens on an engine that
//!   answers every command with TPM_RC_FAILURE. A kick while released means the VMM
//!   resumed the VM here (its migration failed): the daemon asks the controller to abort.
//! * **Incoming** (`--migration-incoming`): the state directory is reserved, the engine runs
//!   on memory; only a LOAD of a package that verifies, is claimed and decrypts is imported.
//! * **Imported** (destination): the instance is durable; it serves once the controller
//!   committed the migration (the guest's commands wait), and is destroyed if it was
//!   aborted.
//! * **Gone**: destroyed; every command is answered with TPM_RC_FAILURE.
//!
//! The gate is reopened through an eventfd the vring worker listens on ([`GATE_EVENT`]), so
//! commands the guest queued while the gate was closed are served at once.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coprocessor::libtpms::LibtpmsEngine;
use coprocessor::{Coprocessor, EngineState, StateStore};
use log::{error, info, warn};
use migration::api::Role;
use migration::client::{Auth, Client};
use migration::destination;
use migration::host::HostMaterial;
use migration::pending::{self, Pending};
use migration::seal::Trust;
use migration::source::{self, Decision};
use migration::store::SharedStore;
use migration::{MigrationId, Refusal};
use vhost::vhost_user::message::VhostTransferStateDirection;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vtpm_state::encrypted::VM_BINDING;
use vtpm_state::keys::HostKey;
use vtpm_state::{EncryptedStore, Opened, Reserved};

use crate::backend::{lock, SharedDevice};
use crate::config::{EngineConfig, MigrationConfig};
use crate::daemon::DaemonError;

/// The vring worker's event id for "the gate opened" (ids up to the queue count are the
/// queues' and the exit event's).
pub const GATE_EVENT: u16 = 2;
/// How often a held instance asks the controller for the decision.
const POLL: Duration = Duration::from_millis(200);

/// Why a DEVICE_STATE transfer failed. QEMU's migration fails with it; the source resumes.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Pipe(#[from] migration::DeviceStateError),
    #[error("package refused ({code}): {0}", code = .0.code())]
    Refused(#[from] Refusal),
    #[error("no package released: {0}")]
    Source(#[from] source::SourceError),
    #[error("exporting the engine's state: {0}")]
    Export(#[source] coprocessor::Error),
    #[error("DEVICE_STATE refused: {0}")]
    NotNow(String),
}

enum Phase {
    Serving,
    /// Waiting for a package; `None` once a failed import lost the reservation.
    Incoming(Option<Reserved>),
    Released(Pending),
    Imported(Pending),
    Gone(String),
}

impl Phase {
    fn describe(&self) -> String {
        match self {
            Phase::Serving => "serving".into(),
            Phase::Incoming(_) => "waiting for an incoming migration".into(),
            Phase::Released(p) => format!(
                "released to host {} in migration {}, waiting for the controller's decision",
                p.peer, p.migration
            ),
            Phase::Imported(p) => format!(
                "imported from host {} in migration {}, waiting for the commit",
                p.peer, p.migration
            ),
            Phase::Gone(why) => format!("gone: {why}"),
        }
    }
}

/// An engine for an instance that is gone: every command fails, nothing is stored.
struct Gone;

/// TPM_RC_FAILURE, as a complete response.
const FAILURE_RESPONSE: [u8; 10] = [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0x01];

impl Coprocessor for Gone {
    fn driver_name(&self) -> &'static str {
        "gone"
    }
    fn execute(&mut self, _command: &mut [u8]) -> coprocessor::Result<&[u8]> {
        Ok(&FAILURE_RESPONSE)
    }
    fn power_cycle(&mut self) -> coprocessor::Result<()> {
        Ok(())
    }
    fn save(&mut self) -> coprocessor::Result<()> {
        Ok(())
    }
    fn export_state(&mut self) -> coprocessor::Result<EngineState> {
        Err(coprocessor::Error::Unsupported(
            "export of a destroyed instance",
        ))
    }
    fn import_state(&mut self, _state: &EngineState) -> coprocessor::Result<()> {
        Err(coprocessor::Error::Unsupported(
            "import into a destroyed instance",
        ))
    }
}

/// The migration side of one daemon.
pub struct Control {
    state_dir: PathBuf,
    host_key: HostKey,
    host: HostMaterial,
    client: Client,
    ca: vtpm_ca::Client,
    trust: Trust,
    store: SharedStore,
    /// The VM this daemon serves (`--vm-id`): only its vTPM leaves or arrives.
    vm_id: Option<String>,
    /// `--migration-pipe-timeout`.
    pipe_timeout: Duration,
    phase: Mutex<Phase>,
    gate_consumer: EventConsumer,
    gate_notifier: EventNotifier,
    /// A kick arrived while released: the VMM runs the VM here again.
    vmm_resumed: AtomicBool,
    deciding: AtomicBool,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn migration_error(what: &str, e: impl std::fmt::Display) -> DaemonError {
    DaemonError::Migration(format!("{what}: {e}"))
}

fn read_file(path: &Path) -> Result<Vec<u8>, DaemonError> {
    std::fs::read(path).map_err(|e| migration_error(&path.display().to_string(), e))
}

fn start_engine(store: &SharedStore) -> Result<Box<dyn Coprocessor>, DaemonError> {
    let engine =
        LibtpmsEngine::start(Box::new(store.clone())).map_err(|source| DaemonError::Engine {
            engine: "libtpms",
            source,
        })?;
    Ok(Box::new(engine))
}

/// Opens the engine of a daemon with migration configured, and its control.
pub fn open(
    engine: &EngineConfig,
    config: &MigrationConfig,
) -> Result<(Box<dyn Coprocessor>, Arc<Control>), DaemonError> {
    let EngineConfig::Libtpms {
        state_dir,
        host_key,
        vm_id,
    } = engine
    else {
        return Err(DaemonError::Migration(
            "sealed migration needs the libtpms engine".into(),
        ));
    };
    let host = HostMaterial::load(&config.host_dir, host_key)
        .map_err(|e| migration_error("host directory", e))?;
    let controller_pem = read_file(&config.controller_cert)?;
    let trust = Trust {
        ca_root: host.ca_root.clone(),
        controller: openssl::x509::X509::from_pem(&controller_pem)
            .map_err(|e| migration_error("--migration-controller-cert", e))?,
    };
    let client = Client::new(
        &config.controller,
        &controller_pem,
        Auth::Host(host.credentials.clone()),
    )
    .map_err(|e| migration_error("migration controller", e))?;
    let ca_pem = host
        .ca_root
        .to_pem()
        .map_err(|e| migration_error("CA root", e))?;
    let ca = vtpm_ca::Client::new(&config.ca, &ca_pem, None)
        .map_err(|e| migration_error("--migration-ca", e))?;
    let record = pending::read(state_dir).map_err(|e| migration_error("migration record", e))?;
    let holds_instance = state_dir.join(vtpm_state::encrypted::KEY_RECORD).exists();

    let (store, phase) = if config.incoming && !holds_instance {
        if let Some(stale) = record.as_ref() {
            // A crash between the record and the instance's creation: nothing was imported.
            warn!(
                "removing the record of migration {} whose import never completed",
                stale.migration
            );
            pending::remove(state_dir).map_err(|e| migration_error("migration record", e))?;
        }
        let reserved = EncryptedStore::reserve(state_dir)?;
        info!(
            "waiting for an incoming migration into {} (host {})",
            state_dir.display(),
            host.host_id
        );
        (SharedStore::memory(), Phase::Incoming(Some(reserved)))
    } else {
        if config.incoming {
            info!(
                "{} already holds an instance: --migration-incoming has no effect",
                state_dir.display()
            );
        }
        let (store, opened) = EncryptedStore::open(state_dir, host_key, "libtpms")?;
        match opened {
            Opened::Created => info!("new vTPM instance {}", store.instance()),
            Opened::Existing { generation } => info!(
                "vTPM instance {} state authenticated (generation {generation})",
                store.instance()
            ),
        }
        crate::daemon::bind_to_vm(&store, vm_id.as_deref())?;
        let phase = match record {
            None => Phase::Serving,
            Some(p) if p.role == Role::Source => Phase::Released(p),
            Some(p) => Phase::Imported(p),
        };
        (SharedStore::durable(store), phase)
    };
    if !matches!(phase, Phase::Serving) {
        info!("migration: {}", phase.describe());
    }
    let engine = start_engine(&store)?;
    let (gate_consumer, gate_notifier) =
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)
            .map_err(|e| migration_error("gate event", e))?;
    let control = Arc::new(Control {
        state_dir: state_dir.clone(),
        host_key: host_key.clone(),
        host,
        client,
        ca,
        trust,
        store,
        vm_id: vm_id.clone(),
        pipe_timeout: config.pipe_timeout,
        phase: Mutex::new(phase),
        gate_consumer,
        gate_notifier,
        vmm_resumed: AtomicBool::new(false),
        deciding: AtomicBool::new(false),
    });
    Ok((engine, control))
}

/// A daemon without migration configured refuses a state directory held for a migration.
pub fn refuse_pending(state_dir: &Path) -> Result<(), DaemonError> {
    match pending::read(state_dir) {
        Ok(None) => Ok(()),
        Ok(Some(p)) => Err(DaemonError::Migration(format!(
            "{} is held for migration {} ({} host {}); start the daemon with \
             --migration-controller so that it can ask the controller for the decision",
            state_dir.display(),
            p.migration,
            if p.role == Role::Source {
                "released to"
            } else {
                "imported from"
            },
            p.peer
        ))),
        Err(e) => Err(migration_error("migration record", e)),
    }
}

impl Control {
    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether commands may run. A closed gate on a source remembers the kick: the VMM
    /// resumed the VM here, so its migration failed.
    pub fn serving(&self) -> bool {
        match &*self.phase() {
            Phase::Serving | Phase::Gone(_) => true,
            Phase::Released(_) => {
                self.vmm_resumed.store(true, Ordering::SeqCst);
                false
            }
            _ => false,
        }
    }

    /// The eventfd the vring worker listens on for [`GATE_EVENT`].
    pub fn gate_fd(&self) -> RawFd {
        self.gate_consumer.as_raw_fd()
    }

    /// Consumes a gate event.
    pub fn consume_gate(&self) {
        let _ = self.gate_consumer.consume();
    }

    fn open_gate(&self, phase: Phase) {
        let text = phase.describe();
        *self.phase() = phase;
        self.vmm_resumed.store(false, Ordering::SeqCst);
        info!("migration: {text}; serving");
        if let Err(e) = self.gate_notifier.notify() {
            error!("cannot wake the request queue: {e}");
        }
    }

    /// Starts acting on the pending migration, if any (at start, after a restart).
    pub fn resume(self: &Arc<Self>, device: &SharedDevice) {
        if matches!(&*self.phase(), Phase::Released(_) | Phase::Imported(_)) {
            self.spawn_decider(device.clone());
        }
    }

    fn spawn_decider(self: &Arc<Self>, device: SharedDevice) {
        if self.deciding.swap(true, Ordering::SeqCst) {
            return;
        }
        let control = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("migration".into())
            .spawn(move || {
                control.decide(&device);
                control.deciding.store(false, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            error!("cannot start the migration thread: {e}");
            self.deciding.store(false, Ordering::SeqCst);
        }
    }

    /// Asks the controller until the held migration is decided, then acts on it.
    fn decide(&self, device: &SharedDevice) {
        let mut reported = false;
        let mut asked_abort = false;
        loop {
            let record = match &*self.phase() {
                Phase::Released(p) | Phase::Imported(p) => p.clone(),
                _ => return,
            };
            let Ok(id) = record.migration.parse::<MigrationId>() else {
                error!(
                    "malformed migration id {:?} in the record",
                    record.migration
                );
                return;
            };
            if record.role == Role::Source
                && !asked_abort
                && self.vmm_resumed.load(Ordering::SeqCst)
            {
                asked_abort = true;
                match self
                    .client
                    .abort(&id, "the VMM resumed the VM on the source")
                {
                    Ok(_) => info!("migration {id}: the VM runs on the source again; aborted"),
                    Err(e) => warn!("migration {id}: the VM runs on the source again, abort: {e}"),
                }
            }
            if record.role == Role::Destination && !reported {
                match self.client.imported(&id) {
                    Ok(_) => reported = true,
                    Err(e) if e.is_transport() => {}
                    // Refused (aborted meanwhile): the decision below says so.
                    Err(e) => {
                        warn!("migration {id}: reporting the import: {e}");
                        reported = true;
                    }
                }
            }
            match source::decision(&self.client, &id) {
                Ok(Decision::Committed) => return self.committed(device, &record),
                Ok(Decision::Aborted) => return self.aborted(device, &record),
                Ok(Decision::Undecided(_)) => {}
                Err(e) => warn!("migration {id}: asking the controller: {e}"),
            }
            std::thread::sleep(POLL);
        }
    }

    fn committed(&self, device: &SharedDevice, record: &Pending) {
        match record.role {
            Role::Source => self.destroy(
                device,
                record,
                format!(
                    "migrated to host {} (migration {})",
                    record.peer, record.migration
                ),
                true,
            ),
            Role::Destination => {
                if let Ok(instance) = migration::ticket::parse_instance(&record.instance) {
                    if let Err(e) = self.host.record_epoch(&instance, record.epoch + 1) {
                        warn!("recording the epoch: {e}");
                    }
                }
                if let Err(e) = pending::remove(&self.state_dir) {
                    // Still held on disk: a restart asks the controller again, which says
                    // committed again.
                    error!("cannot remove the migration record: {e}");
                }
                info!(
                    "migration {}: committed, this host owns the vTPM (epoch {})",
                    record.migration,
                    record.epoch + 1
                );
                self.open_gate(Phase::Serving);
            }
        }
    }

    fn aborted(&self, device: &SharedDevice, record: &Pending) {
        match record.role {
            Role::Source => {
                if let Err(e) = pending::remove(&self.state_dir) {
                    error!("cannot remove the migration record: {e}");
                }
                info!(
                    "migration {}: aborted, the source resumes with nothing lost",
                    record.migration
                );
                self.open_gate(Phase::Serving);
            }
            Role::Destination => self.destroy(
                device,
                record,
                format!(
                    "the import from host {} was aborted (migration {})",
                    record.peer, record.migration
                ),
                false,
            ),
        }
    }

    /// Destroys this copy: the engine first (no command runs on it again), then the state.
    fn destroy(&self, device: &SharedDevice, record: &Pending, why: String, source: bool) {
        let mut dev = lock(device);
        drop(dev.replace_engine(Box::new(Gone)));
        match self.store.take() {
            Some(store) if source => {
                if let Err(e) = migration::source::destroy(store, record, &self.host, &self.client)
                {
                    error!(
                        "migration {}: destroying the source's copy: {e}",
                        record.migration
                    );
                }
            }
            Some(store) => {
                if let Err(e) = store
                    .destroy(&why)
                    .map_err(|e| e.to_string())
                    .and_then(|()| pending::remove(&self.state_dir).map_err(|e| e.to_string()))
                {
                    error!(
                        "migration {}: destroying the imported copy: {e}",
                        record.migration
                    );
                }
            }
            None => error!("migration {}: no state to destroy", record.migration),
        }
        drop(dev);
        info!("migration {}: {why}", record.migration);
        self.open_gate(Phase::Gone(why));
    }

    /// Runs a DEVICE_STATE transfer (on its own thread; the frontend reads or writes the
    /// pipe meanwhile).
    pub fn transfer(
        self: &Arc<Self>,
        direction: VhostTransferStateDirection,
        device: SharedDevice,
        file: File,
    ) -> Result<(), TransferError> {
        match direction {
            VhostTransferStateDirection::SAVE => self.save(device, file),
            VhostTransferStateDirection::LOAD => self.load(device, file),
        }
    }

    fn save(self: &Arc<Self>, device: SharedDevice, file: File) -> Result<(), TransferError> {
        let released = {
            // A command in flight finishes first; none runs after this lock.
            let mut dev = lock(&device);
            let mut phase = self.phase();
            if !matches!(*phase, Phase::Serving) {
                return Err(TransferError::NotNow(format!(
                    "the instance is not this daemon's to release ({})",
                    phase.describe()
                )));
            }
            let instance = self
                .store
                .instance()
                .ok_or_else(|| TransferError::NotNow("the instance has no durable state".into()))?;
            let state = dev.engine().export_state().map_err(TransferError::Export)?;
            // Only a kick after this release means the VM resumed here.
            self.vmm_resumed.store(false, Ordering::SeqCst);
            let what = source::Releasing {
                instance: &instance,
                vm: self.vm_id.as_deref(),
                state_dir: &self.state_dir,
            };
            match source::release(&state, what, &self.host, &self.client, &self.trust, now()) {
                Ok(r) => {
                    if let Ok(Some(p)) = pending::read(&self.state_dir) {
                        *phase = Phase::Released(p);
                    }
                    r
                }
                Err((e, held)) => {
                    if held {
                        if let Ok(Some(p)) = pending::read(&self.state_dir) {
                            *phase = Phase::Released(p);
                        }
                        drop(phase);
                        drop(dev);
                        self.spawn_decider(device);
                    }
                    return Err(e.into());
                }
            }
        };
        self.spawn_decider(device);
        info!(
            "migration {}: sending the sealed package ({} bytes) to host {}",
            released.migration,
            released.package.len(),
            released.destination
        );
        migration::device_state::send_within(&released.package, file, self.pipe_timeout)?;
        Ok(())
    }

    fn load(self: &Arc<Self>, device: SharedDevice, mut file: File) -> Result<(), TransferError> {
        let bytes = migration::device_state::receive_within(&mut file, self.pipe_timeout)?;
        if !matches!(&*self.phase(), Phase::Incoming(Some(_))) {
            return Err(Refusal::NotIncoming(format!(
                "{} (start it with --migration-incoming on an empty state directory)",
                self.phase().describe()
            ))
            .into());
        }
        let accepted = destination::accept(
            &bytes,
            &self.host,
            &self.trust,
            &self.client,
            &self.ca,
            self.vm_id.as_deref(),
            now(),
        )?;
        let mut dev = lock(&device);
        let mut phase = self.phase();
        let Phase::Incoming(reserved) = &mut *phase else {
            return Err(Refusal::NotIncoming("another import ran meanwhile".into()).into());
        };
        let Some(reserved) = reserved.take() else {
            return Err(
                Refusal::NotIncoming("the state directory is no longer reserved".into()).into(),
            );
        };
        match destination::install(
            dev.engine(),
            &self.store,
            reserved,
            &accepted,
            &self.host,
            &self.host_key,
        ) {
            Ok(()) => {
                if let Some(vm) = &self.vm_id {
                    // The instance arrives bound to the VM the ticket moved (checked equal
                    // to --vm-id in `accept`), as it was at the source.
                    if let Err(e) = self.store.store(VM_BINDING, vm.as_bytes()) {
                        warn!(
                            "migration: cannot bind the imported instance to VM {vm} ({e}); \
                             it is bound at the daemon's next start"
                        );
                    }
                }
                let record = pending::read(&self.state_dir).ok().flatten();
                *phase = match record {
                    Some(p) => Phase::Imported(p),
                    None => Phase::Gone("the migration record vanished".into()),
                };
                drop(phase);
                drop(dev);
                info!(
                    "migration {}: device state loaded; serving once the controller commits",
                    accepted.verified.ticket.ticket.migration
                );
                self.spawn_decider(device);
                Ok(())
            }
            Err((e, reserved)) => {
                *phase = Phase::Incoming(reserved);
                drop(phase);
                drop(dev);
                destination::abort_after_claim(&self.client, &accepted.verified, &e);
                Err(e.into())
            }
        }
    }
}
