//! One descriptor chain in, one TPM command executed, one response out.
//!
//! A chain is the driver's device-readable buffers holding exactly one TPM command, followed
//! by device-writable buffers for the response (docs/virtio-tpm.md). The chain's layout is
//! not fixed: any number of descriptors up to [`MAX_CHAIN_DESCRIPTORS`], direct, through one
//! indirect table, or direct ones followed by one indirect table, split at any byte.
//!
//! Everything read here is guest-controlled and a vCPU may rewrite it while the device works,
//! so the device reads each descriptor exactly once: [`walk_chain`] copies the chain's
//! buffers (address, length, direction) into a bounded local [`ChainCopy`], and every check
//! and every copy to or from guest memory uses only that copy. Every refusal is an answer,
//! never a panic:
//! - chains that cannot be trusted at all (no writable part, descriptors outside guest memory,
//!   a loop, a `next` beyond its table, a broken indirect table, readable after writable,
//!   more than [`MAX_CHAIN_DESCRIPTORS`] descriptors) are returned with used length 0;
//! - chains that are well formed but carry a bad command (empty, truncated, over the limit,
//!   header size not matching) get a 10-byte TPM error response and are not executed;
//! - an avail entry naming a head beyond the queue cannot be returned at all (the used ring
//!   carries that index): it is consumed, counted and logged.
//!
//! The command is copied into the device's scratch buffer before anything parses it and wiped
//! from there (and from the engine's response buffer) once the answer is delivered: libtpms
//! decrypts parameters in place, so the scratch buffer holds secrets.
//!
//! [`drain_queue`] serves every available chain of a queue; a bad chain never stops the batch.
//! Every log line a guest can trigger goes through [`worth_logging`].

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use coprocessor::Coprocessor;
use log::{error, warn};
use tpm_proto::{error_response, rc, Header, HEADER_SIZE};
use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};
use zeroize::Zeroize;

use crate::virtio_tpm::MAX_BUFFER_SIZE;
pub use crate::virtio_tpm::MAX_CHAIN_DESCRIPTORS;

const MAX: usize = MAX_BUFFER_SIZE as usize;
const DESC_SIZE: u64 = std::mem::size_of::<Descriptor>() as u64;
const F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
const F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// Why a chain was not executed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("head index {head} is beyond the queue of {queue_size} descriptors")]
    HeadOutOfRange { head: u16, queue_size: u16 },
    #[error("descriptor chain loops (more descriptors than its table of {0} holds)")]
    Loop(u32),
    #[error("descriptor chain has a next index {next} beyond its table of {table_size}")]
    NextOutOfRange { next: u16, table_size: u32 },
    #[error("descriptor chain is longer than {MAX_CHAIN_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    #[error("invalid indirect descriptor: {0}")]
    BadIndirect(&'static str),
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("descriptor chain has no device-writable buffer for the response")]
    NoWritable,
    #[error("{len} bytes at guest address {addr:#x} are outside guest memory")]
    OutsideMemory { addr: u64, len: u64 },
    #[error("response buffer of {0} bytes is smaller than the required {MAX} bytes")]
    WritableTooSmall(u64),
    #[error("command of {0} bytes is shorter than a TPM header")]
    CommandTooShort(u64),
    #[error("command of {0} bytes exceeds the {MAX}-byte limit")]
    CommandTooLarge(u64),
    #[error("command header says {header} bytes but the chain carries {actual}")]
    HeaderSizeMismatch { header: u32, actual: usize },
    #[error("coprocessor failed: {0}")]
    Engine(String),
    #[error("cannot copy between guest memory and the device: {0}")]
    Copy(String),
}

/// What the device put in the used ring for a chain.
#[derive(Debug, PartialEq, Eq)]
pub struct Served {
    pub used_len: u32,
    pub error: Option<ChainError>,
}

impl Served {
    fn refused(error: ChainError) -> Self {
        Served {
            used_len: 0,
            error: Some(error),
        }
    }
}

/// One guest buffer of a chain, as the device copied it out of a descriptor.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

/// A chain's buffers, copied out of guest memory once, in chain order (readable first).
/// Bounded: a chain of more than [`MAX_CHAIN_DESCRIPTORS`] descriptors is refused, so the work
/// per chain is bounded whatever the guest's tables say.
#[derive(Debug, Clone)]
pub struct ChainCopy {
    buffers: [Buffer; MAX_CHAIN_DESCRIPTORS],
    count: usize,
    readable: u64,
    writable: u64,
    seen_writable: bool,
}

impl Default for ChainCopy {
    fn default() -> Self {
        ChainCopy {
            buffers: [Buffer::default(); MAX_CHAIN_DESCRIPTORS],
            count: 0,
            readable: 0,
            writable: 0,
            seen_writable: false,
        }
    }
}

impl ChainCopy {
    /// The buffers, in chain order.
    pub fn buffers(&self) -> &[Buffer] {
        &self.buffers[..self.count]
    }

    /// Total bytes of the device-readable part.
    pub fn readable_len(&self) -> u64 {
        self.readable
    }

    /// Total bytes of the device-writable part.
    pub fn writable_len(&self) -> u64 {
        self.writable
    }

    fn push(&mut self, desc: &Descriptor) -> Result<(), ChainError> {
        let writable = desc.flags() & F_WRITE != 0;
        // Even after a zero-length writable descriptor: the order is a rule of the ring.
        if !writable && self.seen_writable {
            return Err(ChainError::ReadableAfterWritable);
        }
        self.seen_writable |= writable;
        let slot = self
            .buffers
            .get_mut(self.count)
            .ok_or(ChainError::TooManyDescriptors)?;
        *slot = Buffer {
            addr: desc.addr().0,
            len: desc.len(),
            writable,
        };
        self.count += 1;
        let len = u64::from(desc.len());
        if writable {
            self.writable += len;
        } else {
            self.readable += len;
        }
        Ok(())
    }
}

/// Reads descriptor `index` of the table at `table` (one read of 16 bytes).
fn read_desc<M: GuestMemory + ?Sized>(
    mem: &M,
    table: u64,
    index: u16,
) -> Result<Descriptor, ChainError> {
    let outside = ChainError::OutsideMemory {
        addr: table,
        len: DESC_SIZE * (u64::from(index) + 1),
    };
    let at = table
        .checked_add(DESC_SIZE * u64::from(index))
        .ok_or(ChainError::OutsideMemory {
            addr: table,
            len: u64::MAX,
        })?;
    mem.read_obj::<Descriptor>(GuestAddress(at))
        .map_err(|_| outside)
}

/// Walks the chain starting at `head` of the descriptor table at `desc_table` (a queue of
/// `queue_size` entries), reading each descriptor once and copying it into `out`.
///
/// Follows the rules of the virtio split ring: `next` must stay inside the current table; a
/// descriptor with `INDIRECT` (its `WRITE` flag ignored) may end the direct chain, its table
/// a whole number of descriptors, not empty, not nested and not itself with `NEXT`. A chain
/// that visits more descriptors than its table holds loops. At most
/// [`MAX_CHAIN_DESCRIPTORS`] descriptors are read in all.
pub fn walk_chain<M: GuestMemory + ?Sized>(
    mem: &M,
    desc_table: u64,
    queue_size: u16,
    head: u16,
    out: &mut ChainCopy,
) -> Result<(), ChainError> {
    if head >= queue_size {
        return Err(ChainError::HeadOutOfRange { head, queue_size });
    }
    let mut table = desc_table;
    let mut table_size = u32::from(queue_size);
    let mut index = head;
    let mut in_table = 0u32;
    let mut indirect = false;
    let mut reads = 0usize;
    loop {
        if in_table == table_size {
            return Err(ChainError::Loop(table_size));
        }
        if reads == MAX_CHAIN_DESCRIPTORS {
            return Err(ChainError::TooManyDescriptors);
        }
        let desc = read_desc(mem, table, index)?;
        reads += 1;
        in_table += 1;
        let flags = desc.flags();
        if flags & F_INDIRECT != 0 {
            if indirect {
                return Err(ChainError::BadIndirect("an indirect table inside another"));
            }
            if flags & F_NEXT != 0 {
                return Err(ChainError::BadIndirect("INDIRECT together with NEXT"));
            }
            if desc.len() == 0 {
                return Err(ChainError::BadIndirect("an empty table"));
            }
            if u64::from(desc.len()) % DESC_SIZE != 0 {
                return Err(ChainError::BadIndirect(
                    "a table length that is not a whole number of descriptors",
                ));
            }
            table = desc.addr().0;
            table_size = desc.len() / DESC_SIZE as u32;
            index = 0;
            in_table = 0;
            indirect = true;
            continue;
        }
        out.push(&desc)?;
        if flags & F_NEXT == 0 {
            return Ok(());
        }
        index = desc.next();
        if u32::from(index) >= table_size {
            return Err(ChainError::NextOutOfRange {
                next: index,
                table_size,
            });
        }
    }
}

/// Whether every byte of every non-empty buffer is guest memory.
fn check_in_memory<M: GuestMemory + ?Sized>(mem: &M, chain: &ChainCopy) -> Result<(), ChainError> {
    for b in chain.buffers().iter().filter(|b| b.len > 0) {
        let access = if b.writable {
            Permissions::Write
        } else {
            Permissions::Read
        };
        let fits = b.addr.checked_add(u64::from(b.len)).is_some()
            && mem.check_range(GuestAddress(b.addr), b.len as usize, access);
        if !fits {
            return Err(ChainError::OutsideMemory {
                addr: b.addr,
                len: u64::from(b.len),
            });
        }
    }
    Ok(())
}

/// Copies the readable part (exactly `into.len()` bytes, checked by the caller) into `into`.
fn read_command<M: GuestMemory + ?Sized>(
    mem: &M,
    chain: &ChainCopy,
    into: &mut [u8],
) -> Result<(), ChainError> {
    let mut done = 0usize;
    for b in chain.buffers().iter().filter(|b| !b.writable && b.len > 0) {
        let end = done + b.len as usize;
        let dst = into
            .get_mut(done..end)
            .ok_or_else(|| ChainError::Copy("readable part grew".into()))?;
        mem.read_slice(dst, GuestAddress(b.addr))
            .map_err(|e| ChainError::Copy(e.to_string()))?;
        done = end;
    }
    Ok(())
}

/// Writes `data` into the writable part, in order. Returns how many bytes were written; the
/// caller checked that the writable part holds `data`.
fn write_answer<M: GuestMemory + ?Sized>(
    mem: &M,
    chain: &ChainCopy,
    data: &[u8],
) -> Result<usize, (usize, ChainError)> {
    let mut done = 0usize;
    for b in chain.buffers().iter().filter(|b| b.writable && b.len > 0) {
        if done == data.len() {
            break;
        }
        let n = (b.len as usize).min(data.len() - done);
        mem.write_slice(&data[done..done + n], GuestAddress(b.addr))
            .map_err(|e| (done, ChainError::Copy(e.to_string())))?;
        done += n;
    }
    if done < data.len() {
        return Err((done, ChainError::Copy("writable part too small".into())));
    }
    Ok(done)
}

/// Wipes the command bytes from the scratch buffer when serving ends, however it ends.
struct WipeOnDrop<'a>(&'a mut [u8]);

impl Drop for WipeOnDrop<'_> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Serves the chain at `head` of the queue whose descriptor table is at `desc_table`:
/// validates it, executes the command on `engine` and writes the response.
///
/// `scratch` holds the command while the engine runs (the engine may rewrite it in place); the
/// bytes used are wiped before this returns, and so is the engine's response buffer.
pub fn serve_chain<M: GuestMemory + ?Sized>(
    mem: &M,
    desc_table: u64,
    queue_size: u16,
    head: u16,
    engine: &mut dyn Coprocessor,
    scratch: &mut [u8; MAX],
) -> Served {
    let mut chain = ChainCopy::default();
    if let Err(e) = walk_chain(mem, desc_table, queue_size, head, &mut chain) {
        return Served::refused(e);
    }
    if chain.writable_len() == 0 {
        return Served::refused(ChainError::NoWritable);
    }
    if let Err(e) = check_in_memory(mem, &chain) {
        return Served::refused(e);
    }

    let answer_error = |rc: u32, error: ChainError| -> Served {
        if chain.writable_len() < HEADER_SIZE as u64 {
            return Served::refused(error);
        }
        match write_answer(mem, &chain, &error_response(rc)) {
            Ok(n) => Served {
                used_len: n as u32,
                error: Some(error),
            },
            Err(_) => Served::refused(error),
        }
    };

    let (readable, writable) = (chain.readable_len(), chain.writable_len());
    if writable < MAX as u64 {
        return answer_error(rc::SIZE, ChainError::WritableTooSmall(writable));
    }
    if readable > MAX as u64 {
        return answer_error(rc::COMMAND_SIZE, ChainError::CommandTooLarge(readable));
    }
    if readable < HEADER_SIZE as u64 {
        return answer_error(rc::COMMAND_SIZE, ChainError::CommandTooShort(readable));
    }
    // Bounded by MAX above.
    let len = readable as usize;
    let command = WipeOnDrop(&mut scratch[..len]);
    if let Err(e) = read_command(mem, &chain, command.0) {
        return answer_error(rc::FAILURE, e);
    }
    match Header::parse(command.0) {
        Ok(h) if h.size as usize == len => {}
        Ok(h) => {
            return answer_error(
                rc::COMMAND_SIZE,
                ChainError::HeaderSizeMismatch {
                    header: h.size,
                    actual: len,
                },
            )
        }
        Err(_) => return answer_error(rc::COMMAND_SIZE, ChainError::CommandTooShort(len as u64)),
    }

    let served = match engine.execute(command.0) {
        Ok(r) if r.len() >= HEADER_SIZE && r.len() <= MAX => match write_answer(mem, &chain, r) {
            Ok(n) => Served {
                used_len: n as u32,
                error: None,
            },
            Err((n, e)) => Served {
                used_len: n as u32,
                error: Some(e),
            },
        },
        Ok(r) => {
            let e = ChainError::Engine(format!("response of {} bytes", r.len()));
            answer_error(rc::FAILURE, e)
        }
        Err(e) => answer_error(rc::FAILURE, ChainError::Engine(e.to_string())),
    };
    engine.wipe_response();
    served
}

/// Counters of one device, reported in logs and used by tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub commands: u64,
    /// Chains not executed, or whose execution failed in the engine, including bad heads.
    pub refused_chains: u64,
    pub interrupts: u64,
    /// Avail entries naming a head beyond the queue (consumed, never returned).
    pub bad_heads: u64,
    /// Commands the engine itself failed on.
    pub engine_failures: u64,
    /// How long answered commands took, from taking the chain off the queue to the answer in
    /// the guest's buffer.
    pub latency: crate::metrics::Histogram,
}

/// Whether the `n`th occurrence (from 1) of a guest-triggerable event is logged: the first 16
/// in full, after that only the 32nd, 64th, 128th, ... so that a guest repeating a bad request
/// forever costs at most 16 + 48 lines per kind of event, each saying how many so far.
pub fn worth_logging(n: u64) -> bool {
    n <= 16 || n.is_power_of_two()
}

fn log_refusal(stats: &Stats, head: u16, e: &ChainError) {
    let n = stats.refused_chains;
    if worth_logging(n) {
        warn!("refused descriptor chain (head {head}, {n} refused so far): {e}");
    }
}

/// Why [`drain_queue`] stopped before the queue was empty. Either means the ring itself (not
/// a chain) is unusable: the driver has to fix or reset it.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the avail ring cannot be read: {0}")]
    AvailRing(virtio_queue::Error),
    #[error("the used ring cannot be written: {0}")]
    UsedRing(virtio_queue::Error),
}

/// Reads the head index the driver put at avail ring position `next`.
fn avail_entry<M: GuestMemory>(queue: &Queue, mem: &M, next: u16) -> Result<u16, QueueError> {
    let slot = u64::from(next % queue.size());
    let at = queue
        .avail_ring()
        .checked_add(4 + 2 * slot)
        .ok_or(QueueError::AvailRing(virtio_queue::Error::AddressOverflow))?;
    mem.load(GuestAddress(at), Ordering::Acquire)
        .map(u16::from_le)
        .map_err(|e| QueueError::AvailRing(virtio_queue::Error::GuestMemory(e)))
}

/// Pops and serves the chains the driver made available, at most one queue's worth (the avail
/// index is read once: a driver publishing more meanwhile is served on the next round).
/// Returns how many chains were returned through the used ring; the caller decides about
/// interrupts (once per batch) and sees progress in the queue's `next_avail`. An avail entry
/// naming a head beyond the queue is consumed without a used element
/// ([`ChainError::HeadOutOfRange`]); an impossible avail index (more pending than the queue
/// holds) serves nothing and is the caller's to report.
pub fn drain_queue<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    engine: &mut dyn Coprocessor,
    scratch: &mut [u8; MAX],
    stats: &mut Stats,
) -> Result<usize, QueueError> {
    let size = queue.size();
    if !queue.ready() || size == 0 {
        return Ok(0);
    }
    let avail_idx = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(QueueError::AvailRing)?;
    let pending = (avail_idx - Wrapping(queue.next_avail())).0;
    if pending > size {
        return Ok(0);
    }
    let mut returned = 0;
    for _ in 0..pending {
        let next = queue.next_avail();
        let head = avail_entry(queue, mem, next)?;
        queue.set_next_avail(next.wrapping_add(1));
        if head >= size {
            stats.bad_heads += 1;
            stats.refused_chains += 1;
            let e = ChainError::HeadOutOfRange {
                head,
                queue_size: size,
            };
            log_refusal(stats, head, &e);
            continue;
        }
        let started = std::time::Instant::now();
        let result = serve_chain(mem, queue.desc_table(), size, head, engine, scratch);
        match &result.error {
            None => {
                stats.commands += 1;
                stats.latency.observe(started.elapsed());
            }
            Some(e @ ChainError::Engine(_)) => {
                stats.refused_chains += 1;
                stats.engine_failures += 1;
                let n = stats.engine_failures;
                if worth_logging(n) {
                    error!("TPM command failed inside the coprocessor ({n} so far): {e}");
                }
            }
            Some(e) => {
                stats.refused_chains += 1;
                log_refusal(stats, head, e);
            }
        }
        queue
            .add_used(mem, head, result.used_len)
            .map_err(QueueError::UsedRing)?;
        returned += 1;
    }
    Ok(returned)
}

#[cfg(test)]
mod tests {
    //! Chain parsing against virtio-queue's mock split queue. The engine here is a stand-in
    //! that records what reached it; the real engine is exercised by the integration tests.
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::{split::Descriptor as SplitDesc, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
    const QSIZE: u16 = 16;
    const MEM_SIZE: usize = 0x20_0000;

    /// Answers every command with a 12-byte response that echoes its command code, and
    /// records the commands it saw.
    #[derive(Default)]
    struct RecordingEngine {
        seen: Vec<Vec<u8>>,
        fail: bool,
        resp: Vec<u8>,
        wipes: usize,
    }

    impl Coprocessor for RecordingEngine {
        fn driver_name(&self) -> &'static str {
            "recording"
        }
        fn execute(&mut self, command: &mut [u8]) -> coprocessor::Result<&[u8]> {
            self.seen.push(command.to_vec());
            if self.fail {
                return Err(coprocessor::Error::CommandTooLarge(0));
            }
            self.resp = vec![0x80, 0x01, 0, 0, 0, 12, 0, 0, 0, 0, command[8], command[9]];
            Ok(&self.resp)
        }
        fn wipe_response(&mut self) {
            self.resp.iter_mut().for_each(|b| *b = 0);
            self.wipes += 1;
        }
        fn power_cycle(&mut self) -> coprocessor::Result<()> {
            Ok(())
        }
        fn save(&mut self) -> coprocessor::Result<()> {
            Ok(())
        }
        fn export_state(&mut self) -> coprocessor::Result<coprocessor::EngineState> {
            Err(coprocessor::Error::Unsupported("export"))
        }
        fn import_state(&mut self, _: &coprocessor::EngineState) -> coprocessor::Result<()> {
            Err(coprocessor::Error::Unsupported("import"))
        }
    }

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDesc::new(addr, len, flags, next))
    }

    /// A guest: memory, a mock queue, and helpers to publish chains.
    struct Guest {
        mem: GuestMemoryMmap,
    }

    struct Ring<'a> {
        mock: MockSplitQueue<'a, GuestMemoryMmap>,
        avail: u16,
        next_desc: u16,
    }

    impl Guest {
        fn new() -> Self {
            Guest {
                mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
            }
        }
        fn ring(&self) -> Ring<'_> {
            Ring {
                mock: MockSplitQueue::new(&self.mem, QSIZE),
                avail: 0,
                next_desc: 0,
            }
        }
    }

    impl Ring<'_> {
        /// Stores `descs` at consecutive table slots and publishes the first as a chain head;
        /// `next` fields are taken as given, relative to the first slot.
        fn publish(&mut self, descs: &[RawDescriptor]) -> u16 {
            let head = self.next_desc;
            for (i, raw) in descs.iter().enumerate() {
                let sd = SplitDesc::from(*raw);
                let fixed = SplitDesc::new(sd.addr().0, sd.len(), sd.flags(), sd.next() + head);
                self.mock
                    .desc_table()
                    .store(head + i as u16, RawDescriptor::from(fixed))
                    .unwrap();
            }
            self.next_desc += descs.len() as u16;
            self.push_head(head);
            head
        }

        /// Publishes a raw avail entry naming `head`, whatever the descriptor table holds.
        fn push_head(&mut self, head: u16) {
            self.mock
                .avail()
                .ring()
                .ref_at(usize::from(self.avail))
                .unwrap()
                .store(head);
            self.avail += 1;
            self.mock.avail().idx().store(self.avail);
        }

        fn used(&self, i: usize) -> (u32, u32) {
            let e = self.mock.used().ring().ref_at(i).unwrap().load();
            (e.id(), e.len())
        }
    }

    fn cmd(cc: u32, total: usize) -> Vec<u8> {
        let mut c = vec![0u8; total];
        c[0..2].copy_from_slice(&0x8001u16.to_be_bytes());
        c[2..6].copy_from_slice(&(total as u32).to_be_bytes());
        c[6..10].copy_from_slice(&cc.to_be_bytes());
        c
    }

    const CMD_AT: u64 = 0x10_000;
    const RESP_AT: u64 = 0x20_000;

    /// Runs one chain through `drain_queue` and returns (used length, response bytes, stats).
    fn run_one(
        guest: &Guest,
        descs: &[RawDescriptor],
        command: &[u8],
        engine: &mut RecordingEngine,
    ) -> (u32, Vec<u8>, Stats) {
        guest
            .mem
            .write_slice(command, GuestAddress(CMD_AT))
            .unwrap();
        let mut ring = guest.ring();
        ring.publish(descs);
        let mut q: Queue = ring.mock.create_queue().unwrap();
        let mut scratch = [0u8; MAX];
        let mut stats = Stats::default();
        let n = drain_queue(&mut q, &guest.mem, engine, &mut scratch, &mut stats).unwrap();
        assert_eq!(n, 1);
        let (_, len) = ring.used(0);
        let mut resp = vec![0u8; len as usize];
        guest
            .mem
            .read_slice(&mut resp, GuestAddress(RESP_AT))
            .unwrap();
        (len, resp, stats)
    }

    fn rc_of(resp: &[u8]) -> u32 {
        tpm_proto::response_code(resp).unwrap()
    }

    /// [`run_one`] on a new guest with a new engine: (used length, response bytes, stats, the
    /// commands the engine executed).
    fn run_fresh(descs: &[RawDescriptor], command: &[u8]) -> (u32, Vec<u8>, Stats, Vec<Vec<u8>>) {
        let mut e = RecordingEngine::default();
        let (len, resp, stats) = run_one(&Guest::new(), descs, command, &mut e);
        (len, resp, stats, e.seen)
    }

    /// Runs one chain (a 12-byte command at CMD_AT) on `guest` with a new engine: it must be
    /// returned with used length 0, unexecuted. The device's counters.
    fn assert_refused_unexecuted(guest: &Guest, descs: &[RawDescriptor]) -> Stats {
        let mut e = RecordingEngine::default();
        let (len, _, stats) = run_one(guest, descs, &cmd(0x17B, 12), &mut e);
        assert_eq!(len, 0, "{descs:?}");
        assert!(e.seen.is_empty(), "{descs:?} was executed");
        stats
    }

    #[test]
    fn well_formed_chain_is_executed_and_answered() {
        let c = cmd(0x17B, 12);
        let (len, resp, stats, seen) =
            run_fresh(&[d(CMD_AT, 12, NEXT, 1), d(RESP_AT, 4096, WRITE, 0)], &c);
        assert_eq!(len, 12);
        assert_eq!(&resp[10..], &[0x01, 0x7B]);
        assert_eq!(seen, vec![c]);
        assert_eq!(stats.commands, 1);
    }

    #[test]
    fn command_and_response_may_be_split_anywhere() {
        let c = cmd(0x182, 100);
        let (len, resp, _, seen) = run_fresh(
            &[
                d(CMD_AT, 3, NEXT, 1),
                d(CMD_AT + 3, 0, NEXT, 2),
                d(CMD_AT + 3, 97, NEXT, 3),
                d(RESP_AT, 5, WRITE | NEXT, 4),
                d(RESP_AT + 5, 4091, WRITE, 0),
            ],
            &c,
        );
        assert_eq!(len, 12);
        assert_eq!(rc_of(&resp), 0);
        assert_eq!(seen, vec![c]);
    }

    #[test]
    fn no_writable_descriptor_is_used_len_zero() {
        let stats = assert_refused_unexecuted(&Guest::new(), &[d(CMD_AT, 12, 0, 0)]);
        assert_eq!(stats.refused_chains, 1);
    }

    #[test]
    fn writable_smaller_than_max_response_is_refused_before_execution() {
        let g = Guest::new();
        let mut e = RecordingEngine::default();
        let descs = [d(CMD_AT, 12, NEXT, 1), d(RESP_AT, 100, WRITE, 0)];
        let (len, resp, _) = run_one(&g, &descs, &cmd(0x17B, 12), &mut e);
        assert_eq!(len, 10);
        assert_eq!(rc_of(&resp), rc::SIZE);
        assert!(
            e.seen.is_empty(),
            "nothing executes without room for its answer"
        );

        let descs = [d(CMD_AT, 12, NEXT, 1), d(RESP_AT, 4, WRITE, 0)];
        let (len, _, _) = run_one(&g, &descs, &cmd(0x17B, 12), &mut e);
        assert_eq!(len, 0, "not even room for an error header");
    }

    #[test]
    fn oversized_command_gets_command_size_error() {
        let descs = [d(CMD_AT, 4097, NEXT, 1), d(RESP_AT, 4096, WRITE, 0)];
        let (len, resp, _, seen) = run_fresh(&descs, &cmd(0x17B, 4097));
        assert_eq!((len, rc_of(&resp)), (10, rc::COMMAND_SIZE));
        assert!(seen.is_empty());
    }

    #[test]
    fn zero_length_and_truncated_commands_get_command_size_error() {
        let g = Guest::new();
        let mut e = RecordingEngine::default();
        for descs in [
            vec![d(CMD_AT, 0, NEXT, 1), d(RESP_AT, 4096, WRITE, 0)],
            vec![d(RESP_AT, 4096, WRITE, 0)],
            vec![d(CMD_AT, 6, NEXT, 1), d(RESP_AT, 4096, WRITE, 0)],
        ] {
            let (len, resp, _) = run_one(&g, &descs, &cmd(0x17B, 12), &mut e);
            assert_eq!((len, rc_of(&resp)), (10, rc::COMMAND_SIZE));
        }
        // Header claims 12 bytes, chain carries 20.
        let descs = [d(CMD_AT, 20, NEXT, 1), d(RESP_AT, 4096, WRITE, 0)];
        let (len, resp, _) = run_one(&g, &descs, &cmd(0x17B, 12), &mut e);
        assert_eq!((len, rc_of(&resp)), (10, rc::COMMAND_SIZE));
        assert!(e.seen.is_empty());
    }

    #[test]
    fn descriptor_outside_guest_memory_is_used_len_zero() {
        let g = Guest::new();
        let far = MEM_SIZE as u64 + 0x1000;
        for descs in [
            vec![d(far, 12, NEXT, 1), d(RESP_AT, 4096, WRITE, 0)],
            vec![d(CMD_AT, 12, NEXT, 1), d(far, 4096, WRITE, 0)],
            // Straddles the end of memory.
            vec![
                d(CMD_AT, 12, NEXT, 1),
                d(MEM_SIZE as u64 - 16, 4096, WRITE, 0),
            ],
            vec![d(u64::MAX - 4, 12, NEXT, 1), d(RESP_AT, 4096, WRITE, 0)],
        ] {
            assert_refused_unexecuted(&g, &descs);
        }
    }

    #[test]
    fn descriptor_loop_is_used_len_zero() {
        let descs = [d(CMD_AT, 12, NEXT, 1), d(RESP_AT, 4096, WRITE | NEXT, 0)];
        let stats = assert_refused_unexecuted(&Guest::new(), &descs);
        assert_eq!(stats.refused_chains, 1);
    }

    #[test]
    fn next_index_out_of_range_is_used_len_zero() {
        assert_refused_unexecuted(&Guest::new(), &[d(CMD_AT, 12, NEXT, 200)]);
    }

    #[test]
    fn readable_after_writable_is_used_len_zero() {
        let descs = [d(RESP_AT, 4096, WRITE | NEXT, 1), d(CMD_AT, 12, 0, 0)];
        assert_refused_unexecuted(&Guest::new(), &descs);
    }

    const TABLE_AT: u64 = 0x30_000;

    /// Writes `descs` as an indirect table at `at`.
    fn write_table_at(g: &Guest, at: u64, descs: &[RawDescriptor]) {
        for (i, raw) in descs.iter().enumerate() {
            g.mem
                .write_obj(*raw, GuestAddress(at + 16 * i as u64))
                .unwrap();
        }
    }

    /// Writes an indirect table at TABLE_AT: the command descriptor, then `second`.
    fn write_table(g: &Guest, second: RawDescriptor) {
        write_table_at(g, TABLE_AT, &[d(CMD_AT, 12, NEXT, 1), second]);
    }

    #[test]
    fn indirect_table_is_followed() {
        let g = Guest::new();
        let mut e = RecordingEngine::default();
        write_table(&g, d(RESP_AT, 4096, WRITE, 0));
        let (len, resp, _) = run_one(&g, &[d(TABLE_AT, 32, INDIRECT, 0)], &cmd(0x17B, 12), &mut e);
        assert_eq!((len, rc_of(&resp)), (12, 0));
    }

    #[test]
    fn indirect_table_errors_are_used_len_zero() {
        let g = Guest::new();
        // Table length not a multiple of the descriptor size.
        write_table(&g, d(RESP_AT, 4096, WRITE, 0));
        assert_refused_unexecuted(&g, &[d(TABLE_AT, 31, INDIRECT, 0)]);
        // A nested indirect descriptor.
        write_table(&g, d(TABLE_AT, 32, INDIRECT, 0));
        assert_refused_unexecuted(&g, &[d(TABLE_AT, 32, INDIRECT, 0)]);
        // A table outside guest memory.
        assert_refused_unexecuted(&g, &[d(MEM_SIZE as u64 * 2, 32, INDIRECT, 0)]);
        // A loop inside the table.
        write_table(&g, d(RESP_AT, 4096, WRITE | NEXT, 0));
        assert_refused_unexecuted(&g, &[d(TABLE_AT, 32, INDIRECT, 0)]);
    }

    #[test]
    fn engine_failure_is_a_tpm_failure_response() {
        let g = Guest::new();
        let mut e = RecordingEngine {
            fail: true,
            ..Default::default()
        };
        let descs = [d(CMD_AT, 12, NEXT, 1), d(RESP_AT, 4096, WRITE, 0)];
        let (len, resp, _) = run_one(&g, &descs, &cmd(0x17B, 12), &mut e);
        assert_eq!((len, rc_of(&resp)), (10, rc::FAILURE));
    }

    #[test]
    fn bad_chains_do_not_disturb_the_rest_of_the_batch() {
        let g = Guest::new();
        let mut e = RecordingEngine::default();
        let mut ring = g.ring();
        let resp = |i: u64| RESP_AT + i * 0x1000;
        let at = |i: u64| CMD_AT + i * 0x100;
        for i in 0..3u64 {
            g.mem
                .write_slice(&cmd(0x100 + i as u32, 12), GuestAddress(at(i)))
                .unwrap();
        }
        ring.publish(&[d(at(0), 12, NEXT, 1), d(resp(0), 4096, WRITE, 0)]);
        ring.publish(&[d(at(1), 12, NEXT, 1), d(resp(1), 4096, WRITE | NEXT, 0)]); // loop
        ring.publish(&[d(at(1), 12, NEXT, 1), d(resp(2), 4096, WRITE, 0)]);
        ring.publish(&[d(at(2), 12, 0, 0)]); // no writable
        ring.publish(&[d(at(2), 12, NEXT, 1), d(resp(4), 4096, WRITE, 0)]);
        let mut q: Queue = ring.mock.create_queue().unwrap();
        let mut scratch = [0u8; MAX];
        let mut stats = Stats::default();
        let n = drain_queue(&mut q, &g.mem, &mut e, &mut scratch, &mut stats).unwrap();
        assert_eq!(n, 5);
        let lens: Vec<u32> = (0..5).map(|i| ring.used(i).1).collect();
        assert_eq!(lens, vec![12, 0, 12, 0, 12]);
        let heads: Vec<u32> = (0..5).map(|i| ring.used(i).0).collect();
        assert_eq!(heads, vec![0, 2, 4, 6, 7]);
        assert_eq!(e.seen.len(), 3);
        assert_eq!(stats.latency.count(), 3, "one latency per answered command");
        assert_eq!(
            stats,
            Stats {
                commands: 3,
                refused_chains: 2,
                interrupts: 0,
                bad_heads: 0,
                engine_failures: 0,
                latency: stats.latency,
            }
        );
    }

    // Issue 11, item 1: an avail entry naming a head beyond the queue cannot be returned
    // (the used ring carries the index); it must not stop the batch either.
    #[test]
    fn head_index_beyond_the_queue_is_consumed_and_the_batch_goes_on() {
        let g = Guest::new();
        let mut e = RecordingEngine::default();
        let mut ring = g.ring();
        g.mem
            .write_slice(&cmd(0x17B, 12), GuestAddress(CMD_AT))
            .unwrap();
        ring.publish(&[d(CMD_AT, 12, NEXT, 1), d(RESP_AT, 4096, WRITE, 0)]);
        ring.push_head(QSIZE);
        ring.push_head(u16::MAX);
        ring.publish(&[d(CMD_AT, 12, NEXT, 1), d(RESP_AT + 0x1000, 4096, WRITE, 0)]);
        let mut q: Queue = ring.mock.create_queue().unwrap();
        let mut scratch = [0u8; MAX];
        let mut stats = Stats::default();
        let n = drain_queue(&mut q, &g.mem, &mut e, &mut scratch, &mut stats)
            .expect("a bad head does not abort the batch");
        assert_eq!(n, 2, "both good chains returned");
        assert_eq!(q.next_avail(), 4, "all four avail entries consumed");
        assert_eq!(ring.mock.used().idx().load(), 2);
        assert_eq!((ring.used(0), ring.used(1)), ((0, 12), (2, 12)));
        assert_eq!(e.seen.len(), 2);
        assert_eq!((stats.refused_chains, stats.bad_heads), (2, 2));
    }

    /// Guest memory whose vCPU rewrites one descriptor's length right after the device first
    /// read it: what a racing guest can do between two walks of the same chain.
    struct RacingGuest {
        mem: GuestMemoryMmap,
        /// Guest address of the descriptor that changes.
        desc_at: u64,
        new_len: u32,
        reads: std::cell::Cell<u32>,
    }

    impl vm_memory::GuestMemory for RacingGuest {
        type PhysicalMemory = GuestMemoryMmap;
        type Bitmap = ();

        fn check_range(
            &self,
            addr: GuestAddress,
            count: usize,
            access: vm_memory::Permissions,
        ) -> bool {
            <GuestMemoryMmap as vm_memory::GuestMemory>::check_range(&self.mem, addr, count, access)
        }

        fn get_slices<'a>(
            &'a self,
            addr: GuestAddress,
            count: usize,
            access: vm_memory::Permissions,
        ) -> vm_memory::GuestMemoryResult<
            impl vm_memory::guest_memory::GuestMemorySliceIterator<
                'a,
                vm_memory::bitmap::BS<'a, Self::Bitmap>,
            >,
        > {
            if addr.0 <= self.desc_at && self.desc_at < addr.0 + count as u64 {
                self.reads.set(self.reads.get() + 1);
                if self.reads.get() == 2 {
                    self.mem
                        .write_obj(self.new_len.to_le(), GuestAddress(self.desc_at + 8))
                        .unwrap();
                }
            }
            <GuestMemoryMmap as vm_memory::GuestMemory>::get_slices(&self.mem, addr, count, access)
        }
    }

    // Issue 11, item 2: the sizes the device checks are the sizes it uses.
    #[test]
    fn a_descriptor_rewritten_after_the_check_does_not_change_the_answer() {
        let g = Guest::new();
        let mut e = RecordingEngine::default();
        let c = cmd(0x17B, 12);
        g.mem.write_slice(&c, GuestAddress(CMD_AT)).unwrap();
        let mut ring = g.ring();
        let head = ring.publish(&[d(CMD_AT, 12, NEXT, 1), d(RESP_AT, 4096, WRITE, 0)]);
        let desc_table = ring.mock.desc_table_addr().0;
        let mut q: Queue = ring.mock.create_queue().unwrap();
        let racing = RacingGuest {
            mem: g.mem.clone(),
            desc_at: desc_table + 16 * u64::from(head + 1),
            new_len: 8,
            reads: std::cell::Cell::new(0),
        };
        let mut scratch = [0u8; MAX];
        let mut stats = Stats::default();
        let n = drain_queue(&mut q, &racing, &mut e, &mut scratch, &mut stats).unwrap();
        assert_eq!(n, 1);
        assert_eq!(e.seen, vec![c], "the command ran");
        assert_eq!(
            ring.used(0),
            (0, 12),
            "its whole answer was delivered into the buffer the device checked"
        );
        assert_eq!(racing.reads.get(), 1, "each descriptor is read once");
    }

    // Issue 11, item 2: the work per chain is bounded, whatever the indirect table's size.
    #[test]
    fn a_chain_longer_than_the_descriptor_limit_is_refused_unread() {
        let g = Guest::new();
        let entries = 300u16;
        let table: Vec<RawDescriptor> = (0..entries)
            .map(|i| {
                if i == 0 {
                    d(CMD_AT, 12, NEXT, 1)
                } else if i + 1 < entries {
                    d(RESP_AT, 0, WRITE | NEXT, i + 1)
                } else {
                    d(RESP_AT, 4096, WRITE, 0)
                }
            })
            .collect();
        write_table_at(&g, TABLE_AT, &table);
        assert_refused_unexecuted(&g, &[d(TABLE_AT, 16 * u32::from(entries), INDIRECT, 0)]);
    }

    // Issue 11, item 8: libtpms decrypts parameters in the scratch buffer, and responses carry
    // secrets too: neither lingers once the chain is answered (or refused after reading).
    #[test]
    fn the_command_and_the_response_are_wiped_once_answered() {
        let g = Guest::new();
        let mut e = RecordingEngine::default();
        let mut good = cmd(0x17B, 100);
        good[10..].fill(0xA5);
        let mut mismatched = cmd(0x17B, 100);
        mismatched[10..].fill(0x5A);
        mismatched[2..6].copy_from_slice(&64u32.to_be_bytes());
        g.mem.write_slice(&good, GuestAddress(CMD_AT)).unwrap();
        g.mem
            .write_slice(&mismatched, GuestAddress(CMD_AT + 0x1000))
            .unwrap();
        let mut ring = g.ring();
        ring.publish(&[d(CMD_AT, 100, NEXT, 1), d(RESP_AT, 4096, WRITE, 0)]);
        ring.publish(&[
            d(CMD_AT + 0x1000, 100, NEXT, 1),
            d(RESP_AT + 0x1000, 4096, WRITE, 0),
        ]);
        let mut q: Queue = ring.mock.create_queue().unwrap();
        let mut scratch = [0u8; MAX];
        let mut stats = Stats::default();
        let n = drain_queue(&mut q, &g.mem, &mut e, &mut scratch, &mut stats).unwrap();
        assert_eq!(n, 2);
        assert_eq!(ring.used(0), (0, 12));
        assert_eq!(ring.used(1).1, 10, "the mismatched command is refused");
        assert!(scratch.iter().all(|b| *b == 0), "command bytes left behind");
        assert_eq!(e.wipes, 1, "the engine's response wiped after delivery");
        assert!(e.resp.iter().all(|b| *b == 0));
    }

    #[test]
    fn indirect_descriptor_rules_of_the_split_ring() {
        let g = Guest::new();
        let mut e = RecordingEngine::default();
        let c = cmd(0x17B, 12);
        write_table_at(&g, TABLE_AT, &[d(RESP_AT, 4096, WRITE, 0)]);
        // Direct descriptors followed by one indirect descriptor: valid (virtio 1.x 2.7.5.3.2).
        let (len, resp, _) = run_one(
            &g,
            &[d(CMD_AT, 12, NEXT, 1), d(TABLE_AT, 16, INDIRECT, 0)],
            &c,
            &mut e,
        );
        assert_eq!((len, rc_of(&resp)), (12, 0), "indirect not at the head");
        // The device ignores WRITE on a descriptor that refers to a table.
        write_table(&g, d(RESP_AT, 4096, WRITE, 0));
        let (len, _, _) = run_one(&g, &[d(TABLE_AT, 32, INDIRECT | WRITE, 0)], &c, &mut e);
        assert_eq!(len, 12, "INDIRECT|WRITE");
        assert_eq!(e.seen.len(), 2);
        // INDIRECT with NEXT, and an empty table, are refused.
        for descs in [
            vec![
                d(TABLE_AT, 32, INDIRECT | NEXT, 1),
                d(RESP_AT, 4096, WRITE, 0),
            ],
            vec![d(TABLE_AT, 0, INDIRECT, 0)],
        ] {
            let (len, _, stats) = run_one(&g, &descs, &c, &mut e);
            assert_eq!((len, stats.refused_chains), (0, 1), "{descs:?}");
        }
        assert_eq!(e.seen.len(), 2);
    }

    #[test]
    fn zero_length_writable_descriptors_are_no_writable_part() {
        let g = Guest::new();
        for descs in [
            vec![d(CMD_AT, 12, NEXT, 1), d(RESP_AT, 0, WRITE, 0)],
            vec![
                d(CMD_AT, 12, NEXT, 1),
                d(RESP_AT, 0, WRITE | NEXT, 2),
                d(MEM_SIZE as u64 * 4, 0, WRITE, 0),
            ],
            // A readable descriptor after a writable one, even an empty one.
            vec![
                d(CMD_AT, 6, NEXT, 1),
                d(RESP_AT, 0, WRITE | NEXT, 2),
                d(CMD_AT + 6, 6, NEXT, 3),
                d(RESP_AT, 4096, WRITE, 0),
            ],
        ] {
            assert_refused_unexecuted(&g, &descs);
        }
    }

    #[test]
    fn writable_part_boundaries() {
        let g = Guest::new();
        let mut e = RecordingEngine::default();
        let c = cmd(0x17B, 12);
        let cases: [(&[RawDescriptor], u32); 5] = [
            (&[d(CMD_AT, 12, NEXT, 1), d(RESP_AT, 4095, WRITE, 0)], 10),
            (&[d(CMD_AT, 12, NEXT, 1), d(RESP_AT, 4096, WRITE, 0)], 12),
            (
                &[
                    d(CMD_AT, 12, NEXT, 1),
                    d(RESP_AT, 2048, WRITE | NEXT, 2),
                    d(RESP_AT + 2048, 2047, WRITE, 0),
                ],
                10,
            ),
            (
                &[
                    d(CMD_AT, 12, NEXT, 1),
                    d(RESP_AT, 2048, WRITE | NEXT, 2),
                    d(RESP_AT + 2048, 2048, WRITE, 0),
                ],
                12,
            ),
            // The response split over 1-byte buffers.
            (
                &[
                    d(CMD_AT, 12, NEXT, 1),
                    d(RESP_AT, 1, WRITE | NEXT, 2),
                    d(RESP_AT + 1, 1, WRITE | NEXT, 3),
                    d(RESP_AT + 2, 4094, WRITE, 0),
                ],
                12,
            ),
        ];
        for (descs, want) in cases {
            let before = e.seen.len();
            let (len, resp, _) = run_one(&g, descs, &c, &mut e);
            assert_eq!(len, want, "{descs:?}");
            if want == 10 {
                assert_eq!(rc_of(&resp), rc::SIZE);
                assert_eq!(e.seen.len(), before, "not executed without room to answer");
            } else {
                assert_eq!(&resp[10..], &[0x01, 0x7B]);
            }
        }
    }

    #[test]
    fn guest_triggered_log_lines_are_bounded() {
        let logged = (1..=1_000_000u64).filter(|n| worth_logging(*n)).count();
        assert_eq!(logged, 16 + 15, "the first 16, then 32, 64, ... 2^19");
    }
}
