//! The vhost-user backend: drains the request queue into the coprocessor.
//!
//! One [`Device`] (engine, command buffer, counters) lives for the whole daemon; a fresh
//! [`VtpmBackend`] wraps it for every frontend connection, so a reconnecting VMM finds the
//! same TPM. Per kick the worker serves the whole batch, then interrupts the guest once (if the
//! driver asked for it under EVENT_IDX), then optionally keeps polling the ring for a short
//! window before sleeping again (the busy-poll idea of vhost-net's `busyloop_timeout`): the
//! next command of a burst is then picked up without the kick→wake-up round trip.

use std::fs::File;
use std::io;
use std::num::Wrapping;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use coprocessor::Coprocessor;
use log::{debug, error, info};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserProtocolFeatures,
};
use vhost_user_backend::bitmap::BitmapMmapRegion;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringState, VringT};
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::migration_control::{self, Control, TransferError};
use crate::peer::Admission;
use crate::request::{drain_queue, worth_logging, Stats};
use crate::virtio_tpm::{
    self, VirtioTpmConfig, MAX_BUFFER_SIZE, MAX_QUEUE_SIZE, NUM_QUEUES, REQUEST_QUEUE,
};

/// Guest memory with a dirty-page bitmap: during live migration every byte the device
/// writes into the guest (responses, used ring) is logged for QEMU (VHOST_F_LOG_ALL,
/// VHOST_USER_PROTOCOL_F_LOG_SHMFD).
pub type GuestMem = GuestMemoryMmap<BitmapMmapRegion>;
type Mem = GuestMemoryAtomic<GuestMem>;

/// Busy-poll counters: what the window cost and what it caught.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BusyPollStats {
    /// Windows opened (one per served batch).
    pub windows: u64,
    /// Windows in which a new command arrived before the deadline.
    pub hits: u64,
    /// Time spent spinning, in microseconds.
    pub spin_us: u64,
}

/// The TPM device state shared by all connections of one daemon.
pub struct Device {
    engine: Box<dyn Coprocessor>,
    scratch: Box<[u8; MAX_BUFFER_SIZE as usize]>,
    stats: Stats,
    busy: BusyPollStats,
    /// Set while the driver's avail index is impossible; cleared when it is sane again.
    ring_broken: bool,
    /// How many times the avail index became impossible (rate-limits the log).
    ring_stalls: u64,
    /// How many times serving stopped on a ring the driver broke (rate-limits the log).
    ring_faults: u64,
    /// The sealed migration's control and serving gate, when one is configured.
    control: Option<Arc<Control>>,
}

impl Device {
    pub fn new(engine: Box<dyn Coprocessor>) -> Self {
        Device {
            engine,
            scratch: Box::new([0u8; MAX_BUFFER_SIZE as usize]),
            stats: Stats::default(),
            busy: BusyPollStats::default(),
            ring_broken: false,
            ring_stalls: 0,
            ring_faults: 0,
            control: None,
        }
    }

    /// Puts the request queue behind a migration's serving gate.
    pub fn with_control(mut self, control: Option<Arc<Control>>) -> Self {
        self.control = control;
        self
    }

    pub(crate) fn engine(&mut self) -> &mut dyn Coprocessor {
        self.engine.as_mut()
    }

    /// Swaps the engine (a migrated instance's for one that refuses everything).
    pub(crate) fn replace_engine(&mut self, engine: Box<dyn Coprocessor>) -> Box<dyn Coprocessor> {
        std::mem::replace(&mut self.engine, engine)
    }

    pub fn stats(&self) -> (Stats, BusyPollStats) {
        (self.stats, self.busy)
    }

    /// Saves the engine's state for the next start (clean shutdown).
    pub fn save(&mut self) -> coprocessor::Result<()> {
        self.engine.save()
    }
}

pub type SharedDevice = Arc<Mutex<Device>>;

pub(crate) fn lock(device: &SharedDevice) -> MutexGuard<'_, Device> {
    // A panic while holding the lock cannot leave the engine half-way through a command in
    // a way we could repair; keep serving with the state as it is.
    device.lock().unwrap_or_else(|p| p.into_inner())
}

/// The backend of one frontend connection.
pub struct VtpmBackend {
    device: SharedDevice,
    mem: Mem,
    busy_poll: Duration,
    /// The device-state transfer in progress (vhost-user DEVICE_STATE), joined by
    /// CHECK_DEVICE_STATE.
    transfer: Mutex<Option<JoinHandle<Result<(), TransferError>>>>,
    /// Whether this connection's frontend may drive the device ([`crate::peer`]): every
    /// entry point that touches the device waits for it.
    admission: Arc<Admission>,
}

impl VtpmBackend {
    pub fn new(
        device: SharedDevice,
        mem: Mem,
        busy_poll: Duration,
        admission: Arc<Admission>,
    ) -> Self {
        VtpmBackend {
            device,
            mem,
            busy_poll,
            transfer: Mutex::new(None),
            admission,
        }
    }

    /// Waits for the connection's admission; `Err` for a refused frontend.
    fn admitted(&self) -> io::Result<()> {
        if self.admission.admitted() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "frontend not admitted",
            ))
        }
    }

    fn process_queue(&self, vring: &VringRwLock<Mem>) {
        let mem = self.mem.memory();
        let mut dev = lock(&self.device);
        let dev = &mut *dev;
        // The one serving gate: while a migration holds the instance, chains stay in the
        // ring until the gate opens (GATE_EVENT).
        if dev.control.as_ref().is_some_and(|c| !c.serving()) {
            return;
        }
        let mut vr = vring.get_mut();
        if let Err(e) = self.serve_until_idle(&mut vr, &mem, dev) {
            // A ring the driver broke (rings outside guest memory, an unwritable used ring)
            // must not kill the worker thread: the next kick, reset or reconnect may bring a
            // usable ring. The driver can break it on every kick: rate-limited.
            dev.ring_faults += 1;
            let n = dev.ring_faults;
            if worth_logging(n) {
                error!("request queue processing failed ({n} times so far): {e}");
            }
        }
        // Whatever ended the loop, leave notifications enabled: a device that stops with them
        // disabled never hears from the driver again (it would not kick for its next command).
        // Under EVENT_IDX this also moves avail_event past every entry consumed. A ring that
        // cannot take it was reported above.
        let _ = vr.enable_notification();
    }

    /// Serves batch after batch until the driver has published nothing more, then returns with
    /// notifications enabled (or stops early on a ring it cannot use).
    fn serve_until_idle(
        &self,
        vr: &mut VringState<Mem>,
        mem: &GuestMem,
        dev: &mut Device,
    ) -> io::Result<()> {
        let mut idle_rounds = 0u32;
        loop {
            if !ring_index_sane(vr, mem, dev) {
                return Ok(());
            }
            vr.disable_notification().map_err(io::Error::other)?;
            let queue = vr.get_queue();
            let (avail_before, used_before) = (queue.next_avail(), queue.next_used());
            let drained = drain_queue(
                vr.get_queue_mut(),
                mem,
                dev.engine.as_mut(),
                &mut dev.scratch,
                &mut dev.stats,
            );
            let queue = vr.get_queue();
            let consumed = queue.next_avail() != avail_before;
            let returned = queue.next_used() != used_before;
            // Chains returned before a ring fault are owed their interrupt too.
            if returned && vr.needs_notification().map_err(io::Error::other)? {
                vr.signal_used_queue()?;
                dev.stats.interrupts += 1;
            }
            drained.map_err(io::Error::other)?;
            if returned && !self.busy_poll.is_zero() && self.poll_for_more(vr, mem, &mut dev.busy) {
                continue;
            }
            if !vr.enable_notification().map_err(io::Error::other)? {
                return Ok(());
            }
            // More was published while notifications were off: serve it. A round that consumed
            // nothing although the index says there is work is the driver publishing at that
            // very moment; twice in a row would be spinning: wait for the next kick instead.
            if consumed {
                idle_rounds = 0;
                continue;
            }
            idle_rounds += 1;
            if idle_rounds >= 2 {
                return Ok(());
            }
        }
    }

    /// Spins for up to the busy-poll window waiting for the driver to publish another chain.
    fn poll_for_more(
        &self,
        vr: &VringState<Mem>,
        mem: &GuestMem,
        busy: &mut BusyPollStats,
    ) -> bool {
        let start = Instant::now();
        let queue = vr.get_queue();
        let next = Wrapping(queue.next_avail());
        busy.windows += 1;
        let mut spins = 0u32;
        let found = loop {
            match queue.avail_idx(mem, Ordering::Acquire) {
                Ok(idx) if idx != next => break true,
                Ok(_) => {}
                Err(_) => break false,
            }
            if start.elapsed() >= self.busy_poll {
                break false;
            }
            // Mostly spin, but yield now and then: when the driver's vCPU (or the harness)
            // shares this CPU it gets to run and publish the next command instead of waiting
            // out the window; with nothing else runnable, yield returns at once.
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        };
        busy.spin_us += start.elapsed().as_micros() as u64;
        busy.hits += u64::from(found);
        found
    }
}

/// Checks that the driver has not published more chains than the queue can hold. A driver
/// that does (a bug, a reset in progress, or hostile) would otherwise have the device spin
/// on a ring it can never drain; the queue instead stays stalled until the index is sane
/// again (typically after the driver resets the device). Logged once per stall, and stalls
/// themselves rate-limited (a driver can toggle the index forever).
fn ring_index_sane(vr: &VringState<Mem>, mem: &GuestMem, dev: &mut Device) -> bool {
    let queue = vr.get_queue();
    let pending = queue
        .avail_idx(mem, Ordering::Acquire)
        .map(|idx| (idx - Wrapping(queue.next_avail())).0);
    match pending {
        Ok(n) if n <= queue.size() => {
            if dev.ring_broken {
                if worth_logging(dev.ring_stalls) {
                    info!("request queue index is sane again; serving");
                }
                dev.ring_broken = false;
            }
            true
        }
        other => {
            if !dev.ring_broken {
                dev.ring_stalls += 1;
                let n = dev.ring_stalls;
                if worth_logging(n) {
                    error!(
                        "driver published an impossible avail index ({other:?} pending, queue size {}); \
                         queue stalled until the driver resets it ({n} stalls so far)",
                        queue.size()
                    );
                }
                dev.ring_broken = true;
            }
            false
        }
    }
}

impl VhostUserBackend for VtpmBackend {
    type Bitmap = BitmapMmapRegion;
    type Vring = VringRwLock<Mem>;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        // GET_FEATURES comes first from every VMM: nothing is answered before the verdict
        // (a refused connection is shut down before it is given).
        if self.admitted().is_err() {
            return 0;
        }
        virtio_tpm::device_features()
    }

    fn acked_features(&self, features: u64) {
        debug!("driver acked features {features:#x}");
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        if self.admitted().is_err() {
            return VhostUserProtocolFeatures::empty();
        }
        virtio_tpm::protocol_features()
    }

    fn reset_device(&self) {
        if self.admitted().is_err() {
            return;
        }
        let mut dev = lock(&self.device);
        match dev.engine.power_cycle() {
            Ok(()) => info!("device reset: TPM power-cycled"),
            Err(e) => error!("device reset: TPM power cycle failed: {e}"),
        }
    }

    fn set_event_idx(&self, enabled: bool) {
        debug!(
            "EVENT_IDX (feature bit {VIRTIO_RING_F_EVENT_IDX}) {}",
            if enabled { "on" } else { "off" }
        );
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        VirtioTpmConfig::default().read(offset, size)
    }

    fn update_memory(&self, _mem: Mem) -> io::Result<()> {
        self.admitted()?;
        // `self.mem` is the same atomic the handler just updated.
        debug!("guest memory table updated");
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                error!("cannot create the worker exit event: {e}");
                None
            }
        }
    }

    fn set_device_state_fd(
        &self,
        direction: VhostTransferStateDirection,
        phase: VhostTransferStatePhase,
        file: File,
    ) -> io::Result<Option<File>> {
        self.admitted()?;
        if phase != VhostTransferStatePhase::STOPPED {
            return Err(io::Error::other(format!(
                "unsupported transfer phase {phase:?}"
            )));
        }
        let device = self.device.clone();
        // A vTPM leaves and arrives only as a sealed package, under a migration controller.
        let Some(control) = lock(&device).control.clone() else {
            let why = "DEVICE_STATE refused: sealed migration is not configured \
                       (--migration-controller); a vTPM never leaves or arrives in clear";
            error!("migration: {why}");
            return Err(io::Error::other(why));
        };
        let work = move || control.transfer(direction, device, file);
        let handle = std::thread::Builder::new()
            .name("device-state".into())
            .spawn(work)?;
        let mut slot = self.transfer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(previous) = slot.replace(handle) {
            // A frontend that starts a new transfer without checking the old one.
            let _ = previous.join();
        }
        Ok(None)
    }

    fn check_device_state(&self) -> io::Result<()> {
        self.admitted()?;
        let handle = self
            .transfer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| io::Error::other("no device state transfer in progress"))?;
        match handle.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                error!("migration: device state transfer failed: {e}");
                Err(io::Error::other(e))
            }
            Err(_) => Err(io::Error::other("device state transfer thread panicked")),
        }
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock<Mem>],
        _thread_id: usize,
    ) -> io::Result<()> {
        self.admitted()?;
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        let vring = vrings
            .get(usize::from(REQUEST_QUEUE))
            .ok_or_else(|| io::Error::other("request queue missing"))?;
        match device_event {
            REQUEST_QUEUE => {}
            migration_control::GATE_EVENT => {
                // The migration gate opened: serve what the guest queued meanwhile.
                if let Some(c) = lock(&self.device).control.clone() {
                    c.consume_gate();
                }
                if !vring.get_ref().get_queue().ready() {
                    return Ok(());
                }
            }
            other => return Err(io::Error::other(format!("unknown device event {other}"))),
        }
        self.process_queue(vring);
        Ok(())
    }
}
