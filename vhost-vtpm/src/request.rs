//! One descriptor chain in, one TPM command executed, one response out.
//!
//! A chain is the driver's device-readable buffers holding exactly one TPM command, followed
//! by device-writable buffers for the response (docs/virtio-tpm.md). The chain's layout is
//! not fixed: any number of descriptors, direct or through one indirect table, split at any
//! byte. Everything read here is guest-controlled, so every size and address is checked
//! before use and every refusal is an answer, never a panic:
//! - chains that cannot be trusted at all (no writable part, descriptors outside guest memory,
//!   a loop or a broken indirect table, readable after writable) are returned with used
//!   length 0;
//! - chains that are well formed but carry a bad command (empty, truncated, over the limit,
//!   header size not matching) get a 10-byte TPM error response and are not executed.
//!
//! [`drain_queue`] serves every available chain of a queue; a bad chain never stops the batch.

use std::io::{Read, Write};
use std::ops::Deref;

use coprocessor::Coprocessor;
use log::{error, warn};
use tpm_proto::{error_response, rc, Header, HEADER_SIZE};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemory;

use crate::virtio_tpm::MAX_BUFFER_SIZE;

const MAX: usize = MAX_BUFFER_SIZE as usize;

/// Why a chain was not executed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("descriptor chain is empty (or its indirect table is invalid)")]
    Empty,
    #[error(
        "descriptor chain is truncated: a loop, a next index out of range, or a bad indirect table"
    )]
    Truncated,
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("descriptor chain has no device-writable buffer for the response")]
    NoWritable,
    #[error("descriptor points outside guest memory: {0}")]
    OutsideMemory(String),
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

/// Byte totals of a chain, after checking its shape.
struct Layout {
    readable: u64,
    writable: u64,
}

fn layout<M>(chain: &DescriptorChain<M>) -> Result<Layout, ChainError>
where
    M: Deref + Clone,
    M::Target: GuestMemory,
{
    let (mut readable, mut writable) = (0u64, 0u64);
    let mut count = 0usize;
    let mut last_has_next = false;
    for desc in chain.clone() {
        count += 1;
        last_has_next = desc.has_next();
        if desc.is_write_only() {
            writable += u64::from(desc.len());
        } else if writable > 0 {
            return Err(ChainError::ReadableAfterWritable);
        } else {
            readable += u64::from(desc.len());
        }
    }
    if count == 0 {
        return Err(ChainError::Empty);
    }
    // The iterator stops silently on a loop (its TTL runs out), on a next index beyond the
    // queue and on an invalid indirect table; a last descriptor still claiming a successor
    // betrays all three.
    if last_has_next {
        return Err(ChainError::Truncated);
    }
    Ok(Layout { readable, writable })
}

/// Serves one chain: validates it, executes the command on `engine` and writes the response.
///
/// `scratch` holds the command while the engine runs (the engine may rewrite it in place).
pub fn serve_chain<M>(
    chain: DescriptorChain<M>,
    engine: &mut dyn Coprocessor,
    scratch: &mut [u8; MAX],
) -> Served
where
    M: Deref + Clone,
    M::Target: GuestMemory + Sized,
{
    let lay = match layout(&chain) {
        Ok(l) => l,
        Err(e) => return Served::refused(e),
    };
    if lay.writable == 0 {
        return Served::refused(ChainError::NoWritable);
    }
    let mem = chain.memory();
    let mut reader = match chain.clone().reader(mem) {
        Ok(r) => r,
        Err(e) => return Served::refused(ChainError::OutsideMemory(e.to_string())),
    };
    let mut writer = match chain.clone().writer(mem) {
        Ok(w) => w,
        Err(e) => return Served::refused(ChainError::OutsideMemory(e.to_string())),
    };

    let mut answer_error = |rc: u32, error: ChainError| -> Served {
        match writer.write_all(&error_response(rc)) {
            Ok(()) => Served {
                used_len: HEADER_SIZE as u32,
                error: Some(error),
            },
            Err(_) => Served::refused(error),
        }
    };

    if lay.writable < MAX as u64 {
        return answer_error(rc::SIZE, ChainError::WritableTooSmall(lay.writable));
    }
    if lay.readable > MAX as u64 {
        return answer_error(rc::COMMAND_SIZE, ChainError::CommandTooLarge(lay.readable));
    }
    if lay.readable < HEADER_SIZE as u64 {
        return answer_error(rc::COMMAND_SIZE, ChainError::CommandTooShort(lay.readable));
    }
    // Bounded by MAX above.
    let len = lay.readable as usize;
    let command = &mut scratch[..len];
    if let Err(e) = reader.read_exact(command) {
        return answer_error(rc::FAILURE, ChainError::Copy(e.to_string()));
    }
    match Header::parse(command) {
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

    let response = match engine.execute(command) {
        Ok(r) if r.len() >= HEADER_SIZE && r.len() <= MAX => r,
        Ok(r) => {
            let e = ChainError::Engine(format!("response of {} bytes", r.len()));
            return answer_error(rc::FAILURE, e);
        }
        Err(e) => return answer_error(rc::FAILURE, ChainError::Engine(e.to_string())),
    };
    match writer.write_all(response) {
        Ok(()) => Served {
            used_len: response.len() as u32,
            error: None,
        },
        Err(e) => Served {
            used_len: writer.bytes_written() as u32,
            error: Some(ChainError::Copy(e.to_string())),
        },
    }
}

/// Counters of one device, reported in logs and used by tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub commands: u64,
    pub refused_chains: u64,
    pub interrupts: u64,
}

/// Log the first refusals in full; after that only every 1000th, so a hostile guest cannot
/// flood the host log.
fn log_refusal(stats: &Stats, head: u16, e: &ChainError) {
    let n = stats.refused_chains;
    if n <= 16 || n.is_multiple_of(1000) {
        warn!("refused descriptor chain (head {head}, {n} refused so far): {e}");
    }
}

/// Pops and serves every available chain of `queue`. Returns how many chains were served.
/// The caller decides about interrupts (once per batch).
pub fn drain_queue<M>(
    queue: &mut Queue,
    mem: &M,
    engine: &mut dyn Coprocessor,
    scratch: &mut [u8; MAX],
    stats: &mut Stats,
) -> Result<usize, virtio_queue::Error>
where
    M: GuestMemory,
{
    let mut served = 0;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let result = serve_chain(chain, engine, scratch);
        if let Some(e) = &result.error {
            stats.refused_chains += 1;
            if let ChainError::Engine(_) = e {
                error!("TPM command failed inside the coprocessor: {e}");
            } else {
                log_refusal(stats, head, e);
            }
        } else {
            stats.commands += 1;
        }
        queue.add_used(mem, head, result.used_len)?;
        served += 1;
    }
    Ok(served)
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
            self.mock
                .avail()
                .ring()
                .ref_at(usize::from(self.avail))
                .unwrap()
                .store(head);
            self.avail += 1;
            self.mock.avail().idx().store(self.avail);
            head
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

    #[test]
    fn well_formed_chain_is_executed_and_answered() {
        let g = Guest::new();
        let mut e = RecordingEngine::default();
        let c = cmd(0x17B, 12);
        let (len, resp, stats) = run_one(
            &g,
            &[d(CMD_AT, 12, NEXT, 1), d(RESP_AT, 4096, WRITE, 0)],
            &c,
            &mut e,
        );
        assert_eq!(len, 12);
        assert_eq!(&resp[10..], &[0x01, 0x7B]);
        assert_eq!(e.seen, vec![c]);
        assert_eq!(stats.commands, 1);
    }

    #[test]
    fn command_and_response_may_be_split_anywhere() {
        let g = Guest::new();
        let mut e = RecordingEngine::default();
        let c = cmd(0x182, 100);
        let (len, resp, _) = run_one(
            &g,
            &[
                d(CMD_AT, 3, NEXT, 1),
                d(CMD_AT + 3, 0, NEXT, 2),
                d(CMD_AT + 3, 97, NEXT, 3),
                d(RESP_AT, 5, WRITE | NEXT, 4),
                d(RESP_AT + 5, 4091, WRITE, 0),
            ],
            &c,
            &mut e,
        );
        assert_eq!(len, 12);
        assert_eq!(rc_of(&resp), 0);
        assert_eq!(e.seen, vec![c]);
    }

    #[test]
    fn no_writable_descriptor_is_used_len_zero() {
        let g = Guest::new();
        let mut e = RecordingEngine::default();
        let (len, _, stats) = run_one(&g, &[d(CMD_AT, 12, 0, 0)], &cmd(0x17B, 12), &mut e);
        assert_eq!(len, 0);
        assert!(e.seen.is_empty());
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
        let g = Guest::new();
        let mut e = RecordingEngine::default();
        let c = cmd(0x17B, 4097);
        let descs = [d(CMD_AT, 4097, NEXT, 1), d(RESP_AT, 4096, WRITE, 0)];
        let (len, resp, _) = run_one(&g, &descs, &c, &mut e);
        assert_eq!((len, rc_of(&resp)), (10, rc::COMMAND_SIZE));
        assert!(e.seen.is_empty());
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
        let mut e = RecordingEngine::default();
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
            let (len, _, _) = run_one(&g, &descs, &cmd(0x17B, 12), &mut e);
            assert_eq!(len, 0);
        }
        assert!(e.seen.is_empty());
    }

    #[test]
    fn descriptor_loop_is_used_len_zero() {
        let g = Guest::new();
        let mut e = RecordingEngine::default();
        let descs = [d(CMD_AT, 12, NEXT, 1), d(RESP_AT, 4096, WRITE | NEXT, 0)];
        let (len, _, stats) = run_one(&g, &descs, &cmd(0x17B, 12), &mut e);
        assert_eq!(len, 0);
        assert_eq!(stats.refused_chains, 1);
        assert!(e.seen.is_empty());
    }

    #[test]
    fn next_index_out_of_range_is_used_len_zero() {
        let g = Guest::new();
        let mut e = RecordingEngine::default();
        let descs = [d(CMD_AT, 12, NEXT, 200)];
        let (len, _, _) = run_one(&g, &descs, &cmd(0x17B, 12), &mut e);
        assert_eq!(len, 0);
    }

    #[test]
    fn readable_after_writable_is_used_len_zero() {
        let g = Guest::new();
        let mut e = RecordingEngine::default();
        let descs = [d(RESP_AT, 4096, WRITE | NEXT, 1), d(CMD_AT, 12, 0, 0)];
        let (len, _, _) = run_one(&g, &descs, &cmd(0x17B, 12), &mut e);
        assert_eq!(len, 0);
        assert!(e.seen.is_empty());
    }

    const TABLE_AT: u64 = 0x30_000;

    /// Writes an indirect table at TABLE_AT: the command descriptor, then `second`.
    fn write_table(g: &Guest, second: RawDescriptor) {
        for (i, raw) in [d(CMD_AT, 12, NEXT, 1), second].iter().enumerate() {
            g.mem
                .write_obj(*raw, GuestAddress(TABLE_AT + 16 * i as u64))
                .unwrap();
        }
    }

    /// Runs a chain whose head is one indirect descriptor (`len` bytes of table at `at`).
    fn run_indirect(g: &Guest, at: u64, len: u32, e: &mut RecordingEngine) -> (u32, Vec<u8>) {
        let (len, resp, _) = run_one(g, &[d(at, len, INDIRECT, 0)], &cmd(0x17B, 12), e);
        (len, resp)
    }

    #[test]
    fn indirect_table_is_followed() {
        let g = Guest::new();
        let mut e = RecordingEngine::default();
        write_table(&g, d(RESP_AT, 4096, WRITE, 0));
        let (len, resp) = run_indirect(&g, TABLE_AT, 32, &mut e);
        assert_eq!((len, rc_of(&resp)), (12, 0));
    }

    #[test]
    fn indirect_table_errors_are_used_len_zero() {
        let g = Guest::new();
        let mut e = RecordingEngine::default();
        // Table length not a multiple of the descriptor size.
        write_table(&g, d(RESP_AT, 4096, WRITE, 0));
        assert_eq!(run_indirect(&g, TABLE_AT, 31, &mut e).0, 0);
        // A nested indirect descriptor.
        write_table(&g, d(TABLE_AT, 32, INDIRECT, 0));
        assert_eq!(run_indirect(&g, TABLE_AT, 32, &mut e).0, 0);
        // A table outside guest memory.
        assert_eq!(run_indirect(&g, MEM_SIZE as u64 * 2, 32, &mut e).0, 0);
        // A loop inside the table.
        write_table(&g, d(RESP_AT, 4096, WRITE | NEXT, 0));
        assert_eq!(run_indirect(&g, TABLE_AT, 32, &mut e).0, 0);
        assert!(e.seen.is_empty());
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
        assert_eq!(
            stats,
            Stats {
                commands: 3,
                refused_chains: 2,
                interrupts: 0
            }
        );
    }
}
