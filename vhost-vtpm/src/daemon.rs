//! The daemon process: one vTPM, one listener, one frontend at a time.
//!
//! It opens the engine, then serves frontend connections one after another on the same
//! listener, so a VMM that reconnects finds the same TPM. Each connection gets its own
//! `VhostUserDaemon` whose worker thread is stopped and joined when the connection ends, so
//! reconnects do not leak threads. SIGTERM and SIGINT are taken by a dedicated thread: it
//! closes the current connection (or wakes the wait for one), the main loop ends, a command in
//! flight finishes, and the engine's state is saved before the process exits. An inherited
//! listener (`--fd`) is left listening: its launcher may start the daemon again on it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use coprocessor::libtpms::{LibtpmsEngine, SavedVolatile};
use coprocessor::swtpm::SwtpmEngine;
use coprocessor::Coprocessor;
use log::{info, warn};
use nix::sys::signal::{SigSet, Signal};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::eventfd::EventFd;
use vtpm_state::encrypted::VM_BINDING;
use vtpm_state::keys::HostKey;
use vtpm_state::{EncryptedStore, Opened, StateError};

use crate::backend::{Device, GuestMem, SharedDevice, VtpmBackend};
use crate::config::{Config, EngineConfig, Listen};
use crate::peer::Admission;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot start the {engine} engine: {source}")]
    Engine {
        engine: &'static str,
        #[source]
        source: coprocessor::Error,
    },
    #[error("vTPM state: {0}")]
    State(#[from] StateError),
    #[error("cannot listen on {what}: {reason}")]
    Listen { what: String, reason: String },
    #[error("cannot write {path} in the state directory: {source}")]
    StateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vhost-user daemon: {0}")]
    VhostUser(String),
    #[error("cannot set up signal handling: {0}")]
    Signals(nix::Error),
    #[error("cannot save the vTPM state at shutdown: {0}")]
    Save(coprocessor::Error),
    #[error("migration: {0}")]
    Migration(String),
    #[error("platform: {0}")]
    Platform(#[from] crate::platform::PlatformError),
    #[error(
        "the vTPM state in {dir} belongs to VM {bound}, not {}: refusing to serve another VM's \
         TPM (was the state directory copied, or is --vm-id wrong?)",
        given.as_deref().unwrap_or("a VM without --vm-id")
    )]
    OtherVm {
        dir: std::path::PathBuf,
        bound: String,
        given: Option<String>,
    },
    #[error("sandbox: {0}")]
    Sandbox(#[from] crate::sandbox::SandboxError),
}

/// Shutdown coordination between the signal thread and the serve loop.
struct Stop {
    requested: AtomicBool,
    connection: Mutex<Option<ShutdownHandle>>,
    /// Made readable by a stop: wakes the serve loop waiting for a frontend. The listener
    /// itself is never shut down to wake it: an inherited one (`--fd`) is also the
    /// launcher's (systemd's socket unit listens on it again once the daemon has exited),
    /// and a shut-down listening socket refuses every later connection.
    wake: EventFd,
}

impl Stop {
    fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        if let Err(e) = self.wake.write(1) {
            warn!("cannot wake the serve loop: {e}");
        }
        if let Ok(conn) = self.connection.lock() {
            if let Some(h) = conn.as_ref() {
                h.shutdown();
            }
        }
    }

    /// Records the live connection; if a stop raced ahead of it, closes it at once.
    fn set_connection(&self, handle: Option<ShutdownHandle>) {
        if let Ok(mut conn) = self.connection.lock() {
            if self.requested() {
                if let Some(h) = handle.as_ref() {
                    h.shutdown();
                }
            }
            *conn = handle;
        }
    }
}

/// Checks (or makes) the binding of the instance to the VM `vm_id` before its engine starts.
///
/// The binding is a blob of the instance's encrypted, authenticated state, so it travels with
/// the state files and cannot be changed without the instance key: a copy of VM A's state
/// directory (key record included) put under VM B is refused, and nothing is written. An
/// instance not yet bound is bound to the first `--vm-id` it is served with; one served
/// without `--vm-id` stays unbound, with a warning.
pub(crate) fn bind_to_vm(store: &EncryptedStore, vm_id: Option<&str>) -> Result<(), DaemonError> {
    let bound = store
        .load(VM_BINDING)?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    match (bound, vm_id) {
        (Some(bound), Some(given)) if bound == given => {
            info!("vTPM instance {} belongs to VM {given}", store.instance());
            Ok(())
        }
        (Some(bound), given) => Err(DaemonError::OtherVm {
            dir: store.dir().to_owned(),
            bound,
            given: given.map(str::to_owned),
        }),
        (None, Some(given)) => {
            store.store(VM_BINDING, given.as_bytes())?;
            info!("vTPM instance {} bound to VM {given}", store.instance());
            Ok(())
        }
        (None, None) => {
            warn!(
                "vTPM instance {} is bound to no VM: a copy of its state directory would serve \
                 any VM; launch the daemon with --vm-id",
                store.instance()
            );
            Ok(())
        }
    }
}

fn open_engine(config: &EngineConfig) -> Result<Box<dyn Coprocessor>, DaemonError> {
    match config {
        EngineConfig::Libtpms {
            state_dir,
            host_key,
            vm_id,
        } => {
            if let HostKey::File(path) = host_key {
                warn!(
                    "WARNING: no host TPM: the vTPM state key is protected only by the host key \
                     file {}; whoever can read that file can decrypt this VM's TPM state. Use \
                     --host-tpm on hosts with a TPM.",
                    path.display()
                );
            }
            if let HostKey::Tpm { auth: None, .. } = host_key {
                warn!(
                    "the vTPM state key is sealed by the host TPM with an empty authValue: any \
                     process that can use the host TPM and read a copy of instance.key can \
                     unseal it. Give --host-tpm-auth-file to new instances."
                );
            }
            let (store, opened) = EncryptedStore::open(state_dir, host_key, "libtpms")?;
            match opened {
                Opened::Created => info!(
                    "new vTPM instance {} in {} (state key {})",
                    store.instance(),
                    state_dir.display(),
                    host_key.describe()
                ),
                Opened::Existing { generation } => info!(
                    "vTPM instance {} state authenticated (generation {generation}, key {})",
                    store.instance(),
                    host_key.describe()
                ),
            }
            bind_to_vm(&store, vm_id.as_deref())?;
            // Under the directory's lock: a run marker left behind says the last run did not
            // stop cleanly, so a saved volatile state is stale. Otherwise it is resumed and
            // kept: the marker made below tells a later crash apart, so the start need not
            // consume it with a durable write (ADR 0006).
            let saved = if RunMarker::found(state_dir)? {
                SavedVolatile::Ignore
            } else {
                SavedVolatile::Resume
            };
            let engine = LibtpmsEngine::start_with(Box::new(store), saved).map_err(|source| {
                DaemonError::Engine {
                    engine: "libtpms",
                    source,
                }
            })?;
            Ok(Box::new(engine))
        }
        EngineConfig::Swtpm { ctrl, data } => {
            let engine =
                SwtpmEngine::connect(ctrl, data).map_err(|source| DaemonError::Engine {
                    engine: "swtpm",
                    source,
                })?;
            Ok(Box::new(engine))
        }
    }
}

fn open_listener(listen: &Listen) -> Result<(Listener, Option<SocketFile>), DaemonError> {
    match listen {
        Listen::Path(path) => {
            // Whoever connects to a vhost-user socket drives the device: it hands over guest
            // memory and the vTPM's state passes through it. So the socket file is the
            // daemon user's alone (0600, whatever the umask), not world-connectable. Only the
            // main thread runs here, so the process-wide umask is changed for this bind only.
            let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
            let listener = bind_listening(path);
            nix::sys::stat::umask(umask);
            let listener = listener.map_err(|e| DaemonError::Listen {
                what: path.display().to_string(),
                reason: e.to_string(),
            })?;
            Ok((
                Listener::from(listener),
                Some(SocketFile(path.to_path_buf())),
            ))
        }
        Listen::Fd(fd) => {
            let err = |reason: String| DaemonError::Listen {
                what: format!("--fd {fd}"),
                reason,
            };
            // SAFETY: F_GETFD only queries the descriptor table; an unknown fd gives EBADF.
            if unsafe { libc::fcntl(*fd, libc::F_GETFD) } < 0 {
                return Err(err(std::io::Error::last_os_error().to_string()));
            }
            // SAFETY: the fd is open (checked above) and the launcher handed it to this
            // process to own; nothing else in the process refers to it.
            let owned = unsafe { OwnedFd::from_raw_fd(*fd) };
            let stat = nix::sys::stat::fstat(&owned).map_err(|e| err(e.to_string()))?;
            if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
                return Err(err("not a socket".into()));
            }
            let listening =
                nix::sys::socket::getsockopt(&owned, nix::sys::socket::sockopt::AcceptConn)
                    .map_err(|e| err(e.to_string()))?;
            if !listening {
                return Err(err("socket is not listening".into()));
            }
            nix::fcntl::fcntl(
                &owned,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .map_err(|e| err(e.to_string()))?;
            // The launcher owns the socket file (if any), and keeps it after the daemon exits.
            Ok((Listener::from(UnixListener::from(owned)), None))
        }
    }
}

/// The longest path a Unix socket address holds (`sun_path` less its NUL).
const SUN_PATH_MAX: usize = 107;

/// Binds and listens on a temporary name beside `path`, then renames it to `path`, so that
/// the socket file appears only once it accepts connections. With a plain bind a frontend
/// that sees the file and connects at once can land between bind(2) and listen(2) and be
/// refused; the vhost crate's frontend then waits 100 ms before it tries again, QEMU's
/// `reconnect-ms` a whole period (measured: one start in ten under load, BENCHMARKS.md §6).
/// The rename replaces whatever was at `path` (a socket file a killed daemon left, a symlink
/// itself), as the unlink before a plain bind did. A path too long to take the temporary's
/// suffix is bound directly.
pub(crate) fn bind_listening(path: &std::path::Path) -> std::io::Result<UnixListener> {
    let file_name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file")
    })?;
    let mut temporary = std::ffi::OsString::from(".");
    temporary.push(file_name);
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = path.with_file_name(temporary);
    if temporary.as_os_str().len() > SUN_PATH_MAX {
        let _ = std::fs::remove_file(path);
        return UnixListener::bind(path);
    }
    // Left by a daemon of this pid that died between its bind and its rename.
    let _ = std::fs::remove_file(&temporary);
    let listener = UnixListener::bind(&temporary)?;
    if let Err(e) = std::fs::rename(&temporary, path) {
        let _ = std::fs::remove_file(&temporary);
        return Err(e);
    }
    Ok(listener)
}

/// The socket file the daemon made for `--socket-path`, removed when the daemon stops
/// listening (a launcher-owned `--fd` socket has none).
struct SocketFile(std::path::PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Blocks SIGTERM/SIGINT in the calling thread (and so in every thread it starts) and returns
/// the set for the signal thread to wait on.
fn block_signals() -> Result<SigSet, DaemonError> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set.thread_block().map_err(DaemonError::Signals)?;
    Ok(set)
}

/// The signal thread: SIGTERM and SIGINT stop the daemon; SIGHUP refreshes the certificate
/// chain in the instance's NV from `host_dir` ([`crate::chain_refresh`]).
fn spawn_signal_thread(
    set: SigSet,
    stop: Arc<Stop>,
    device: SharedDevice,
    host_dir: Option<std::path::PathBuf>,
) -> Result<(), DaemonError> {
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match set.wait() {
                Ok(Signal::SIGHUP) => {
                    crate::chain_refresh::on_sighup(&device, host_dir.as_deref());
                }
                Ok(sig) => {
                    info!("received {sig}, stopping");
                    stop.request();
                }
                Err(e) => warn!("sigwait failed: {e}"),
            }
        })
        .map(|_| ())
        .map_err(|e| DaemonError::Signals(nix::Error::from_raw(e.raw_os_error().unwrap_or(0))))
}

/// A file in the state directory that exists while a daemon runs the instance. Finding it at
/// start means the previous run ended without a clean stop (crash, SIGKILL, power loss).
///
/// Created after the state store locked the directory, through `durable_fs`: only its name
/// must be durable (one directory sync), so it is created with `O_CREAT | O_EXCL |
/// O_NOFOLLOW` and holds the pid of the daemon that made it, unsynced; one left by an unclean
/// stop is kept as it is. A symlink at its name is refused (the daemon does not start, naming
/// the file) rather than followed; it is removed by unlinking the name itself.
struct RunMarker {
    path: std::path::PathBuf,
}

impl RunMarker {
    const NAME: &'static str = "daemon.running";

    /// Refuses a symlink at the marker's name before the engine starts (and consumes the
    /// volatile state saved at the last clean stop), so that such a refusal changes nothing.
    /// [`RunMarker::create`] refuses it again, whatever was planted meanwhile.
    fn refuse_symlink(state_dir: &std::path::Path) -> Result<(), DaemonError> {
        let path = state_dir.join(Self::NAME);
        match durable_fs::exists_not_symlink(&path) {
            Err(source) if path.is_symlink() => Err(DaemonError::StateDir { path, source }),
            // Anything else about the directory is the store's to report, as it opens it.
            _ => Ok(()),
        }
    }

    /// Whether a marker is there (a symlink at its name is refused).
    fn found(state_dir: &std::path::Path) -> Result<bool, DaemonError> {
        let path = state_dir.join(Self::NAME);
        durable_fs::exists_not_symlink(&path)
            .map_err(|source| DaemonError::StateDir { path, source })
    }

    /// Creates the marker; returns it and whether one was already there.
    fn create(state_dir: &std::path::Path) -> Result<(RunMarker, bool), DaemonError> {
        let path = state_dir.join(Self::NAME);
        let err = |source| DaemonError::StateDir {
            path: path.clone(),
            source,
        };
        // Temporaries of a marker write that a crash interrupted (the store holds the lock).
        if let Err(e) = durable_fs::remove_stale_temporaries(state_dir, &[Self::NAME]) {
            warn!(
                "cannot remove stale temporary files of {}: {e}",
                path.display()
            );
        }
        let unclean =
            durable_fs::create_marker(&path, std::process::id().to_string().as_bytes(), 0o600)
                .map_err(err)?;
        Ok((RunMarker { path }, unclean))
    }

    fn remove(self) {
        if let Err(e) = durable_fs::remove(&self.path, true) {
            warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// After an unclean stop the TPM comes back powered on, awaiting TPM2_Startup, but the
/// guest's kernel started it long ago and will not start it again: every command would fail
/// with TPM_RC_INITIALIZE. Start it here, as the power-on the guest never saw.
fn recover_after_unclean_stop(engine: &mut dyn Coprocessor) {
    let mut cmd = tpm_proto::commands::startup(tpm_proto::commands::TPM_SU_CLEAR);
    match engine.execute(&mut cmd).map(tpm_proto::response_code) {
        Ok(Ok(tpm_proto::rc::SUCCESS)) => warn!(
            "recovered from an unclean stop: TPM restarted with TPM2_Startup(CLEAR); \
             persistent data is intact, PCRs and loaded objects were reset"
        ),
        Ok(Ok(tpm_proto::rc::INITIALIZE)) => {
            info!("unclean stop detected, but the TPM resumed its saved state")
        }
        other => warn!("unclean stop detected; TPM2_Startup after it returned {other:?}"),
    }
}

/// Runs the daemon until SIGTERM/SIGINT, then saves the vTPM state.
pub fn run(config: &Config) -> Result<(), DaemonError> {
    let signals = block_signals()?;
    if let EngineConfig::Libtpms { state_dir, .. } = &config.engine {
        RunMarker::refuse_symlink(state_dir)?;
    }
    let (engine, control) = match &config.migration {
        Some(m) => {
            let (engine, control) = crate::migration_control::open(&config.engine, m)?;
            (engine, Some(control))
        }
        None => {
            if let EngineConfig::Libtpms { state_dir, .. } = &config.engine {
                crate::migration_control::refuse_pending(state_dir)?;
            }
            (open_engine(&config.engine)?, None)
        }
    };
    // The platform firmware wraps whichever engine runs the instance, so that a migrated-in
    // vTPM is locked and guarded exactly like a freshly started one (ADR 0011).
    let mut engine = crate::platform::wrap(engine, config)?;
    let marker = match &config.engine {
        EngineConfig::Libtpms { state_dir, .. } => {
            let (marker, unclean) = RunMarker::create(state_dir)?;
            if unclean {
                recover_after_unclean_stop(engine.as_mut());
            }
            Some(marker)
        }
        EngineConfig::Swtpm { .. } => None,
    };
    let engine_name = engine.driver_name();
    let device: SharedDevice = Arc::new(Mutex::new(
        Device::new(engine).with_control(control.clone()),
    ));
    if let Some(c) = &control {
        c.resume(&device);
    }
    // From here on the engine holds state that only a save keeps (it consumed the volatile
    // state saved at the last clean stop): every way out saves and clears the run marker,
    // also a listener that cannot be opened.
    let served = listen_and_serve(&device, engine_name, signals, config, control.as_ref());
    let mut dev = device.lock().unwrap_or_else(|p| p.into_inner());
    let (stats, busy) = dev.stats();
    info!(
        "served {} commands, refused {} chains, {} interrupts; busy-poll {} windows, {} hits, {} µs spinning",
        stats.commands, stats.refused_chains, stats.interrupts, busy.windows, busy.hits, busy.spin_us
    );
    dev.save().map_err(DaemonError::Save)?;
    if let Some(m) = marker {
        m.remove();
    }
    info!("vTPM state saved, exiting");
    served
}

/// Opens the listener, serves frontends until a stop is requested, closes the listener.
fn listen_and_serve(
    device: &SharedDevice,
    engine_name: &'static str,
    signals: SigSet,
    config: &Config,
    control: Option<&Arc<crate::migration_control::Control>>,
) -> Result<(), DaemonError> {
    // The metrics socket exists before the vhost-user one: whoever sees the daemon listening
    // can read its metrics (connections wait in the backlog until the thread serves them).
    let metrics = match &config.metrics_socket {
        Some(path) => Some(crate::metrics::bind(path).map_err(|e| DaemonError::Listen {
            what: format!("--metrics-socket {}", path.display()),
            reason: e.to_string(),
        })?),
        None => None,
    };
    let (mut listener, socket_file) = open_listener(&config.listen)?;
    let connections = Arc::new(crate::metrics::Connections::default());
    let stop = Arc::new(Stop {
        requested: AtomicBool::new(false),
        connection: Mutex::new(None),
        wake: EventFd::new(libc::EFD_CLOEXEC)
            .map_err(|e| DaemonError::VhostUser(format!("cannot create the stop event: {e}")))?,
    });
    // Everything the daemon opens at start is open: from here on it only serves, so the
    // sandbox goes up before the first frontend (and its guest) can reach it, and before the
    // signal thread starts (Landlock confines the threads started after it).
    let mut writable: Vec<&std::path::Path> = Vec::new();
    if let EngineConfig::Libtpms { state_dir, .. } = &config.engine {
        writable.push(state_dir);
    }
    if let Some(host_dir) = &config.host_dir {
        writable.push(host_dir);
    }
    crate::sandbox::enter(config.seccomp, config.sandbox, &writable)?;
    // Only an instance with its own state has a chain in NV to refresh.
    let chain_dir = match &config.engine {
        EngineConfig::Libtpms { .. } => config.host_dir.clone(),
        EngineConfig::Swtpm { .. } => None,
    };
    spawn_signal_thread(signals, stop.clone(), device.clone(), chain_dir)?;
    if let Some(metrics) = metrics {
        crate::metrics::serve(metrics, device.clone(), connections.clone(), engine_name)
            .map_err(|e| DaemonError::VhostUser(format!("metrics thread: {e}")))?;
    }
    info!(
        "vhost-vtpm started: engine {engine_name}, listening on {}, busy-poll {} µs, seccomp {:?}",
        match &config.listen {
            Listen::Path(p) => p.display().to_string(),
            Listen::Fd(fd) => format!("fd {fd}"),
        },
        config.busy_poll.as_micros(),
        config.seccomp
    );
    let served = serve(&mut listener, device, &stop, config, control, &connections);
    drop(listener);
    drop(socket_file);
    served
}

/// Waits until a frontend is waiting to be accepted on `listener` (true) or a stop was
/// requested (false), without touching the listener: an inherited one stays usable by the
/// launcher after the daemon exits.
fn wait_for_frontend(listener: &Listener, wake: &EventFd) -> Result<bool, DaemonError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::BorrowedFd;
    // SAFETY: both fds stay open for this call: `listener` and `wake` are borrowed for it.
    let (listen_fd, wake_fd) = unsafe {
        (
            BorrowedFd::borrow_raw(listener.as_raw_fd()),
            BorrowedFd::borrow_raw(wake.as_raw_fd()),
        )
    };
    loop {
        let mut fds = [
            PollFd::new(listen_fd, PollFlags::POLLIN),
            PollFd::new(wake_fd, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                return Err(DaemonError::VhostUser(format!(
                    "waiting for a frontend: {e}"
                )))
            }
        }
        let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        if ready(&fds[1]) {
            return Ok(false);
        }
        if ready(&fds[0]) {
            return Ok(true);
        }
    }
}

fn serve(
    listener: &mut Listener,
    device: &SharedDevice,
    stop: &Stop,
    config: &Config,
    control: Option<&Arc<crate::migration_control::Control>>,
    connections: &crate::metrics::Connections,
) -> Result<(), DaemonError> {
    while !stop.requested() {
        let mem = GuestMemoryAtomic::new(GuestMem::new());
        let admission = Arc::new(Admission::new());
        let backend = Arc::new(VtpmBackend::new(
            device.clone(),
            mem.clone(),
            config.busy_poll,
            admission.clone(),
        ));
        let mut daemon = VhostUserDaemon::new("vhost-vtpm".into(), backend, mem)
            .map_err(|e| DaemonError::VhostUser(e.to_string()))?;
        if let Some(c) = control {
            // The migration gate's wake-up reaches this connection's vring worker.
            for handler in daemon.get_epoll_handlers() {
                handler
                    .register_listener(
                        c.gate_fd(),
                        vmm_sys_util::epoll::EventSet::IN,
                        u64::from(crate::migration_control::GATE_EVENT),
                    )
                    .map_err(|e| DaemonError::VhostUser(format!("gate event: {e}")))?;
            }
        }
        // Logged after the daemon (and its vring worker thread) exists, so an observer that
        // sees this line sees the idle thread set.
        info!("waiting for a frontend");
        if !wait_for_frontend(listener, &stop.wake)? {
            break;
        }
        if let Err(e) = daemon.start(listener) {
            if stop.requested() {
                break;
            }
            return Err(DaemonError::VhostUser(format!("accept failed: {e}")));
        }
        let peer = crate::peer::frontend_credentials(listener);
        let admitted = matches!(&peer, Ok(p) if config.frontends.admits(p));
        if admitted {
            connections.admitted.fetch_add(1, Ordering::Relaxed);
        } else {
            let refused = connections.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if crate::request::worth_logging(refused) {
                match &peer {
                    Ok(p) => warn!(
                        "refused a frontend ({refused} so far): pid {}, uid {}, gid {} is \
                         neither this daemon's user, root nor a --frontend-uid",
                        p.pid(),
                        p.uid(),
                        p.gid()
                    ),
                    Err(e) => warn!(
                        "refused a frontend whose credentials are unknown ({refused} so far): {e}"
                    ),
                }
            }
        }
        if !admitted {
            // Shut down before the verdict: the backend answers nothing to this peer.
            daemon.request_shutdown();
            admission.decide(false);
            let _ = daemon.wait();
            continue;
        }
        admission.decide(true);
        if let Ok(p) = &peer {
            info!(
                "frontend connected: pid {}, uid {}, gid {}",
                p.pid(),
                p.uid(),
                p.gid()
            );
        }
        stop.set_connection(daemon.shutdown_handle());
        let result = daemon.wait();
        stop.set_connection(None);
        match result {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => info!("frontend disconnected"),
            Err(e) => warn!("frontend disconnected with an error: {e}"),
        }
        // Dropping the daemon stops and joins its worker thread.
    }
    Ok(())
}
