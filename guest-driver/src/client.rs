//! The vhost-user frontend plus driver loop: connect, negotiate, transact.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags,
    VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::memory::SharedMemory;
use crate::split_ring::{Desc, SplitRing, AVAIL_RING, DESC_TABLE, USED_RING};

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("harness set-up: {0}")]
    Setup(String),
    #[error("vhost-user: {0}")]
    VhostUser(#[from] vhost::Error),
    #[error("could not connect to {path} within {waited:?}: {last}")]
    Connect {
        path: String,
        waited: Duration,
        last: String,
    },
    #[error("device does not offer required feature {0}")]
    MissingFeature(&'static str),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("device returned unknown descriptor head {0}")]
    UnknownHead(u32),
    #[error("command of {0} bytes does not fit a 4096-byte buffer")]
    CommandTooLarge(usize),
    #[error("{0} requests in flight is more than the queue's {1} slots")]
    TooManyInFlight(usize, u16),
    #[error("the backend closed the vhost-user connection")]
    Disconnected,
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
}

/// How the harness configures the device.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    pub queue_size: u16,
    pub event_idx: bool,
    /// Put each request's two descriptors in an indirect table.
    pub indirect: bool,
    pub timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            queue_size: 128,
            event_idx: true,
            indirect: false,
            timeout: Duration::from_secs(60),
        }
    }
}

const MEM_SIZE: usize = 4 << 20;

/// A connected, running virtio TPM device as seen by its driver.
pub struct VtpmClient {
    frontend: Frontend,
    memory: SharedMemory,
    ring: SplitRing,
    kick: EventFd,
    call: EventFd,
    opts: ClientOptions,
    interrupts: u64,
}

impl VtpmClient {
    /// Connects to the daemon at `socket` (retrying while it starts up) and brings the device
    /// up: features, memory table, the request queue, kick/call eventfds, queue enabled.
    pub fn connect(socket: &Path, opts: ClientOptions) -> Result<Self, HarnessError> {
        let start = Instant::now();
        let frontend = loop {
            match Frontend::connect(socket, 1) {
                Ok(f) => break f,
                Err(e) if start.elapsed() < Duration::from_secs(20) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(HarnessError::Connect {
                        path: socket.display().to_string(),
                        waited: start.elapsed(),
                        last: e.to_string(),
                    })
                }
            }
        };
        let memory = SharedMemory::new(MEM_SIZE)?;
        let kick = EventFd::new(EFD_NONBLOCK).map_err(HarnessError::EventFd)?;
        let call = EventFd::new(EFD_NONBLOCK).map_err(HarnessError::EventFd)?;
        let mut client = VtpmClient {
            frontend,
            memory,
            ring: SplitRing::new(opts.queue_size, opts.event_idx),
            kick,
            call,
            opts,
            interrupts: 0,
        };
        client.negotiate()?;
        Ok(client)
    }

    fn negotiate(&mut self) -> Result<(), HarnessError> {
        let f = &mut self.frontend;
        f.set_owner()?;
        let offered = f.get_features()?;
        let need = |bit: u32, name| {
            if offered & (1u64 << bit) == 0 {
                Err(HarnessError::MissingFeature(name))
            } else {
                Ok(())
            }
        };
        need(VIRTIO_F_VERSION_1, "VERSION_1")?;
        need(VIRTIO_RING_F_EVENT_IDX, "EVENT_IDX")?;
        need(VIRTIO_RING_F_INDIRECT_DESC, "INDIRECT_DESC")?;
        let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if offered & protocol_bit == 0 {
            return Err(HarnessError::MissingFeature("PROTOCOL_FEATURES"));
        }
        let features = Self::driver_features(&self.opts);
        let proto = f.get_protocol_features()?;
        let wanted = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE
            | VhostUserProtocolFeatures::DEVICE_STATE;
        if !proto.contains(wanted) {
            return Err(HarnessError::MissingFeature(
                "CONFIG|REPLY_ACK|RESET_DEVICE|DEVICE_STATE",
            ));
        }
        f.set_protocol_features(wanted)?;
        f.set_features(features)?;

        let base = self.memory.host_base()?;
        let region =
            VhostUserMemoryRegionInfo::new(0, self.memory.size, base, 0, self.memory.raw_fd());
        f.set_mem_table(&[region])?;
        self.start_queue()
    }

    fn start_queue(&mut self) -> Result<(), HarnessError> {
        self.start_queue_at(0)
    }

    /// Sets the queue up with its avail and used indices at `base` and enables it.
    fn start_queue_at(&mut self, base_index: u16) -> Result<(), HarnessError> {
        let base = self.memory.host_base()?;
        let f = &mut self.frontend;
        f.set_vring_num(0, self.opts.queue_size)?;
        f.set_vring_base(0, base_index)?;
        f.set_vring_addr(
            0,
            &VringConfigData {
                queue_max_size: self.opts.queue_size,
                queue_size: self.opts.queue_size,
                flags: 0,
                desc_table_addr: base + DESC_TABLE,
                used_ring_addr: base + USED_RING,
                avail_ring_addr: base + AVAIL_RING,
                log_addr: None,
            },
        )?;
        f.set_vring_call(0, &self.call)?;
        f.set_vring_kick(0, &self.kick)?;
        f.set_vring_enable(0, true)?;
        Ok(())
    }

    /// Reads the device's config space: the largest command/response it carries.
    pub fn max_buffer_size(&mut self) -> Result<u32, HarnessError> {
        let (_, payload) =
            self.frontend
                .get_config(0, 4, VhostUserConfigFlags::WRITABLE, &[0u8; 4])?;
        let bytes: [u8; 4] = payload
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| HarnessError::Setup("short config space".into()))?;
        Ok(u32::from_le_bytes(bytes))
    }

    /// Sends one command and waits for its response.
    pub fn transact(&mut self, cmd: &[u8]) -> Result<Vec<u8>, HarnessError> {
        let mut out = self.transact_batch(&[cmd])?;
        out.pop().ok_or(HarnessError::Timeout(self.opts.timeout))
    }

    /// Sends one command the way a TSS does: a `TPM_RC_RETRY` answer (libtpms gives it while
    /// it self-tests an algorithm on first use) is resubmitted, a few times at most.
    pub fn transact_tss(&mut self, cmd: &[u8]) -> Result<Vec<u8>, HarnessError> {
        let mut resp = self.transact(cmd)?;
        for _ in 0..8 {
            if tpm_proto::response_code(&resp) != Ok(tpm_proto::rc::RETRY) {
                break;
            }
            resp = self.transact(cmd)?;
        }
        Ok(resp)
    }

    /// Puts all `cmds` on the queue, kicks once, and returns the responses in order.
    pub fn transact_batch(&mut self, cmds: &[&[u8]]) -> Result<Vec<Vec<u8>>, HarnessError> {
        if cmds.len() > usize::from(self.ring.slots()) {
            return Err(HarnessError::TooManyInFlight(cmds.len(), self.ring.slots()));
        }
        let mem = &self.memory.mem;
        let old = self.ring.next_avail();
        // Ask for the interrupt before publishing, as a kernel driver enables callbacks
        // before kicking: the device then owes exactly one interrupt for the whole batch.
        self.ring.arm_interrupt(mem)?;
        for (slot, cmd) in cmds.iter().enumerate() {
            let head = self
                .ring
                .prepare(mem, slot as u16, cmd, self.opts.indirect)?;
            self.ring.push_avail(mem, head)?;
        }
        if self.ring.publish(mem, old)? {
            self.kick.write(1).map_err(HarnessError::EventFd)?;
        }
        let mut responses: Vec<Option<Vec<u8>>> = vec![None; cmds.len()];
        let mut pending = cmds.len();
        while pending > 0 {
            let (id, len) = self.wait_used()?;
            let slot = (id / 2) as usize;
            match responses.get_mut(slot) {
                Some(r @ None) if id % 2 == 0 => {
                    let mut buf = vec![0u8; len.min(4096) as usize];
                    self.memory
                        .mem
                        .read_slice(&mut buf, GuestAddress(SplitRing::resp_buf(slot as u16)))
                        .map_err(|e| HarnessError::Setup(e.to_string()))?;
                    *r = Some(buf);
                    pending -= 1;
                }
                _ => return Err(HarnessError::UnknownHead(id)),
            }
        }
        Ok(responses.into_iter().flatten().collect())
    }

    /// Waits for the next used element, sleeping on the call eventfd (the interrupt).
    fn wait_used(&mut self) -> Result<(u32, u32), HarnessError> {
        let deadline = Instant::now() + self.opts.timeout;
        loop {
            if let Some(e) = self.ring.pop_used(&self.memory.mem)? {
                return Ok(e);
            }
            if self.ring.arm_interrupt(&self.memory.mem)? {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HarnessError::Timeout(self.opts.timeout));
            }
            // SAFETY: the eventfd and the socket are owned by `self` and outlive this borrow.
            let call_fd = unsafe { BorrowedFd::borrow_raw(self.call.as_raw_fd()) };
            // SAFETY: as above.
            let sock_fd = unsafe { BorrowedFd::borrow_raw(self.frontend.as_raw_fd()) };
            // The socket is watched too: a backend that dies mid-command must end the wait at
            // once, not after the timeout.
            let mut fds = [
                PollFd::new(call_fd, PollFlags::POLLIN),
                PollFd::new(sock_fd, PollFlags::POLLIN),
            ];
            let ms = PollTimeout::try_from(left.as_millis().min(60_000) as u32)
                .unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, ms) {
                Ok(0) => continue,
                Ok(_) => {
                    if let Ok(n) = self.call.read() {
                        self.interrupts += n;
                    }
                    if self.socket_closed() {
                        if self.ring.arm_interrupt(&self.memory.mem)? {
                            continue;
                        }
                        return Err(HarnessError::Disconnected);
                    }
                }
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(HarnessError::Setup(format!("poll: {e}"))),
            }
        }
    }

    /// Whether the backend has closed the vhost-user socket (it never sends unsolicited
    /// messages to this frontend, so readable means end of file).
    fn socket_closed(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: a one-byte peek into a local buffer on a socket owned by `self`.
        let n = unsafe {
            libc::recv(
                self.frontend.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n == 0
    }

    /// Interrupts (call eventfd signals) received so far, including any not yet waited for.
    pub fn interrupts(&mut self) -> u64 {
        if let Ok(n) = self.call.read() {
            self.interrupts += n;
        }
        self.interrupts
    }

    /// Publishes hand-made descriptor chains (each `Vec<Desc>` stored from table slot
    /// `first_index`, `next` fields absolute) in one batch, for testing malformed chains.
    /// Use slots no regular request is using. Returns the heads, in order.
    pub fn publish_raw_chains(
        &mut self,
        chains: &[(u16, Vec<Desc>)],
    ) -> Result<Vec<u16>, HarnessError> {
        let mem = &self.memory.mem;
        let old = self.ring.next_avail();
        let mut heads = Vec::new();
        for (first, descs) in chains {
            for (i, d) in descs.iter().enumerate() {
                SplitRing::write_desc(mem, DESC_TABLE, first + i as u16, *d)?;
            }
            self.ring.push_avail(mem, *first)?;
            heads.push(*first);
        }
        if self.ring.publish(mem, old)? {
            self.kick.write(1).map_err(HarnessError::EventFd)?;
        }
        Ok(heads)
    }

    /// Publishes raw avail entries naming `heads`, whatever the descriptor table holds there
    /// (a head beyond the queue, say), and kicks if the device asks for it.
    pub fn publish_raw_heads(&mut self, heads: &[u16]) -> Result<(), HarnessError> {
        let mem = &self.memory.mem;
        let old = self.ring.next_avail();
        for head in heads {
            self.ring.push_avail(mem, *head)?;
        }
        if self.ring.publish(mem, old)? {
            self.kick.write(1).map_err(HarnessError::EventFd)?;
        }
        Ok(())
    }

    /// Writes descriptors at consecutive entries of a table at guest address `table` (the
    /// queue's descriptor table is at [`VtpmClient::desc_table`]; elsewhere: an indirect table).
    pub fn write_descs(&self, table: u64, first: u16, descs: &[Desc]) -> Result<(), HarnessError> {
        for (i, d) in descs.iter().enumerate() {
            let index = first
                .checked_add(i as u16)
                .ok_or_else(|| HarnessError::Setup("descriptor index beyond u16".into()))?;
            SplitRing::write_desc(&self.memory.mem, table, index, *d)?;
        }
        Ok(())
    }

    /// Guest address of the queue's descriptor table.
    pub fn desc_table() -> u64 {
        DESC_TABLE
    }

    /// Writes `used_event` (EVENT_IDX: "interrupt me once the used index passes this") as a
    /// hostile driver might; the harness itself rewrites it whenever it waits for an
    /// interrupt, so pair this with [`VtpmClient::poll_used`].
    pub fn set_used_event(&self, value: u16) -> Result<(), HarnessError> {
        self.ring.set_used_event(&self.memory.mem, value)
    }

    /// Kicks the device without publishing anything.
    pub fn kick(&self) -> Result<(), HarnessError> {
        self.kick.write(1).map_err(HarnessError::EventFd)
    }

    /// Waits for `n` used elements by polling the used ring, without asking for an interrupt
    /// (so a used_event set by the test stays as it is).
    pub fn poll_used(&mut self, n: usize) -> Result<Vec<(u32, u32)>, HarnessError> {
        let deadline = Instant::now() + self.opts.timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.ring.pop_used(&self.memory.mem)? {
                Some(e) => out.push(e),
                None if Instant::now() >= deadline => {
                    return Err(HarnessError::Timeout(self.opts.timeout))
                }
                None => std::thread::sleep(Duration::from_micros(200)),
            }
        }
        Ok(out)
    }

    /// The device's used index as the driver sees it.
    pub fn used_index(&self) -> Result<u16, HarnessError> {
        self.ring.used_index(&self.memory.mem)
    }

    /// Another handle on the guest memory (the same mapping), for a test thread that plays
    /// a racing vCPU rewriting the ring while the device works.
    pub fn guest_memory(&self) -> vm_memory::GuestMemoryMmap {
        self.memory.mem.clone()
    }

    /// Publishes an arbitrary avail index and kicks, as a buggy or hostile driver might.
    pub fn publish_avail_index_and_kick(&mut self, idx: u16) -> Result<(), HarnessError> {
        self.memory
            .mem
            .store(
                idx.to_le(),
                GuestAddress(AVAIL_RING + 2),
                std::sync::atomic::Ordering::Release,
            )
            .map_err(|e| HarnessError::Setup(e.to_string()))?;
        self.kick.write(1).map_err(HarnessError::EventFd)
    }

    /// Waits for `n` used elements and returns them as (head, used length).
    pub fn collect_used(&mut self, n: usize) -> Result<Vec<(u32, u32)>, HarnessError> {
        (0..n).map(|_| self.wait_used()).collect()
    }

    /// Writes bytes into guest memory (for hand-made chains).
    pub fn write_guest(&self, addr: u64, data: &[u8]) -> Result<(), HarnessError> {
        self.memory
            .mem
            .write_slice(data, GuestAddress(addr))
            .map_err(|e| HarnessError::Setup(e.to_string()))
    }

    /// Reads bytes from guest memory.
    pub fn read_guest(&self, addr: u64, len: usize) -> Result<Vec<u8>, HarnessError> {
        let mut buf = vec![0u8; len];
        self.memory
            .mem
            .read_slice(&mut buf, GuestAddress(addr))
            .map_err(|e| HarnessError::Setup(e.to_string()))?;
        Ok(buf)
    }

    /// Size of the shared guest memory.
    pub fn guest_memory_size(&self) -> u64 {
        self.memory.size
    }

    /// Guest address of a slot's command / response buffer.
    pub fn slot_buffers(slot: u16) -> (u64, u64) {
        (SplitRing::cmd_buf(slot), SplitRing::resp_buf(slot))
    }

    /// The features this driver acks: VERSION_1 and vhost-user protocol features always,
    /// EVENT_IDX and INDIRECT_DESC as the options say. The same at set-up and after a reset.
    fn driver_features(opts: &ClientOptions) -> u64 {
        let mut features =
            (1u64 << VIRTIO_F_VERSION_1) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if opts.event_idx {
            features |= 1u64 << VIRTIO_RING_F_EVENT_IDX;
        }
        if opts.indirect {
            features |= 1u64 << VIRTIO_RING_F_INDIRECT_DESC;
        }
        features
    }

    /// Resets the device as QEMU does on a guest reset: stop the ring (GET_VRING_BASE),
    /// VHOST_USER_RESET_DEVICE (the TPM is power-cycled), then set the queue up again.
    pub fn reset_device(&mut self) -> Result<(), HarnessError> {
        self.frontend.get_vring_base(0)?;
        self.frontend.reset_device()?;
        self.ring = SplitRing::new(self.opts.queue_size, self.opts.event_idx);
        self.memory
            .mem
            .write_slice(&[0u8; 0x3000], GuestAddress(0))
            .map_err(|e| HarnessError::Setup(e.to_string()))?;
        self.frontend
            .set_features(Self::driver_features(&self.opts))?;
        self.start_queue()
    }

    /// Stops the queue (GET_VRING_BASE) and has the backend save its device state through
    /// a pipe (SET_DEVICE_STATE_FD, direction SAVE), then CHECK_DEVICE_STATE: what QEMU does
    /// on the migration source.
    pub fn save_device_state(&mut self) -> Result<Vec<u8>, HarnessError> {
        use std::io::Read;
        self.frontend.get_vring_base(0)?;
        let (read_end, write_end) =
            nix::unistd::pipe().map_err(|e| HarnessError::Setup(format!("pipe: {e}")))?;
        self.frontend.set_device_state_fd(
            VhostTransferStateDirection::SAVE,
            VhostTransferStatePhase::STOPPED,
            write_end,
        )?;
        let mut state = Vec::new();
        std::fs::File::from(read_end)
            .read_to_end(&mut state)
            .map_err(|e| HarnessError::Setup(format!("reading device state: {e}")))?;
        self.frontend.check_device_state()?;
        Ok(state)
    }

    /// Starts the queue again where [`VtpmClient::save_device_state`] stopped it: what QEMU
    /// does on the migration source when the migration failed and the VM resumes there.
    pub fn resume_queue(&mut self) -> Result<(), HarnessError> {
        self.start_queue_at(self.ring.next_avail())
    }

    /// Stops the queue (GET_VRING_BASE), as a VMM does before a DEVICE_STATE transfer.
    pub fn stop_queue(&mut self) -> Result<(), HarnessError> {
        self.frontend.get_vring_base(0)?;
        Ok(())
    }

    /// SET_DEVICE_STATE_FD as a hostile or careless VMM may send it: any direction and
    /// phase, any pipe end; nothing else happens around it.
    pub fn set_device_state_fd_raw(
        &mut self,
        direction: VhostTransferStateDirection,
        phase: VhostTransferStatePhase,
        fd: std::os::fd::OwnedFd,
    ) -> Result<(), HarnessError> {
        self.frontend.set_device_state_fd(direction, phase, fd)?;
        Ok(())
    }

    /// CHECK_DEVICE_STATE alone: whether the backend's last transfer succeeded.
    pub fn check_device_state_raw(&mut self) -> Result<(), HarnessError> {
        self.frontend.check_device_state()?;
        Ok(())
    }

    /// Sends device state to the backend (direction LOAD), checks it, and starts the queue
    /// again: what QEMU does on the migration destination before the guest runs.
    pub fn load_device_state(&mut self, state: &[u8]) -> Result<(), HarnessError> {
        use std::io::Write;
        let (read_end, write_end) =
            nix::unistd::pipe().map_err(|e| HarnessError::Setup(format!("pipe: {e}")))?;
        self.frontend.get_vring_base(0)?;
        self.frontend.set_device_state_fd(
            VhostTransferStateDirection::LOAD,
            VhostTransferStatePhase::STOPPED,
            read_end,
        )?;
        let mut w = std::fs::File::from(write_end);
        w.write_all(state)
            .map_err(|e| HarnessError::Setup(format!("writing device state: {e}")))?;
        drop(w);
        self.frontend.check_device_state()?;
        self.start_queue()
    }
}
