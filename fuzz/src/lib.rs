//! Shared pieces of the fuzz targets: a model guest (a memory image holding a split queue and
//! chains the fuzzer plans well formed and then breaks on purpose), the reference reading of a
//! chain that the device's answers are checked against, and a mock engine that checks what
//! reaches it.
//!
//! The reference ([`predict`]) is written from docs/virtio-tpm.md, not from the device's code:
//! the `serve_chain` target holds the two against each other byte for byte.

use arbitrary::Arbitrary;
use coprocessor::{Coprocessor, EngineState};
use tpm_proto::{error_response, rc, HEADER_SIZE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory: one region at 0.
pub const MEM: u64 = 0x1_0000;
/// The queue's descriptor table (up to 256 entries).
pub const DESC_TABLE: u64 = 0x0;
/// The avail ring (flags, idx, 256 entries, used_event).
pub const AVAIL: u64 = 0x1000;
/// The used ring (flags, idx, 256 elements, avail_event).
pub const USED: u64 = 0x1400;
/// Where hand-made indirect tables go (256 entries).
pub const TABLES: u64 = 0x2000;
/// Command and response buffers.
pub const DATA: u64 = 0x3000;

pub const MAX: usize = 4096;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const MAX_CHAIN: usize = 256;

/// Where a descriptor points: mostly somewhere useful, sometimes anywhere.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Addr {
    Data(u16),
    Table(u8),
    Ring(u16),
    Raw(u64),
}

impl Addr {
    pub fn resolve(self) -> u64 {
        match self {
            Addr::Data(o) => DATA + u64::from(o) % (MEM - DATA),
            Addr::Table(i) => TABLES + 16 * u64::from(i),
            Addr::Ring(o) => u64::from(o) % TABLES,
            Addr::Raw(a) => a,
        }
    }
}

/// A descriptor length: small, around the 4096-byte limit, or anything.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Len {
    Small(u8),
    AroundMax(i8),
    Any(u32),
}

impl Len {
    pub fn resolve(self) -> u32 {
        match self {
            Len::Small(n) => u32::from(n),
            Len::AroundMax(d) => (4096 + i32::from(d)) as u32,
            Len::Any(n) => n,
        }
    }
}

/// What the mock engine does with a command.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct EngineCase {
    pub fail: bool,
    /// Length of its response (the device refuses < 10 or > 4096 from an engine).
    pub resp_len: u16,
}

/// One buffer of a planned chain. Without an address it is placed by the plan: readable
/// buffers one after the other over the command, writable ones one after the other in the
/// chain's response area.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Segment {
    pub writable: bool,
    pub len: Len,
    pub addr: Option<Addr>,
}

/// How a planned chain is laid out in the rings.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Layout {
    Direct,
    /// One descriptor referring to an indirect table holding every segment.
    Indirect,
    /// The first `n` segments direct, then a descriptor referring to a table with the rest.
    DirectThenIndirect(u8),
}

/// A change to a planned chain after it is laid out: how the fuzzer breaks good chains.
/// `index` is the descriptor's position in the chain (direct ones first, then the table's).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Mutation {
    Flags {
        index: u8,
        flags: u8,
    },
    Next {
        index: u8,
        next: u16,
    },
    Len {
        index: u8,
        len: Len,
    },
    Addr {
        index: u8,
        addr: Addr,
    },
    /// The length of the descriptor that refers to the table.
    TableLen(Len),
}

/// A chain as the fuzzer plans it: well formed unless its segments or mutations say otherwise.
#[derive(Arbitrary, Debug, Clone)]
pub struct ChainPlan {
    pub head: u16,
    pub layout: Layout,
    pub segments: Vec<Segment>,
    pub mutations: Vec<Mutation>,
}

/// Where the command is: every plan's readable buffers start here.
pub const COMMAND: u64 = DATA;
/// Where plan `i`'s response area starts, and how large it is.
pub fn response_area(i: usize) -> (u64, u64) {
    (0x4400 + 0x2C00 * i as u64, 0x2C00)
}
/// Where plan `i`'s indirect table goes (64 entries each).
pub fn table_area(i: usize) -> u64 {
    TABLES + 0x400 * i as u64
}
const PLANS: usize = 4;
const TABLE_ENTRIES: usize = 64;

/// A guest memory image: up to four planned chains, a command, and raw bytes poked over the
/// ring area afterwards.
#[derive(Arbitrary, Debug)]
pub struct Image {
    pub chains: Vec<ChainPlan>,
    pub command: Vec<u8>,
    /// Put a TPM header whose size is the first plan's readable length before the command
    /// bytes (else they are the whole command, header included).
    pub fix_header: bool,
    pub pokes: Vec<(u16, u8)>,
}

fn put(img: &mut [u8], at: u64, raw: [u8; 16]) {
    if let Some(slot) = usize::try_from(at)
        .ok()
        .and_then(|a| img.get_mut(a..a.checked_add(16)?))
    {
        slot.copy_from_slice(&raw);
    }
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0..8].copy_from_slice(&addr.to_le_bytes());
    out[8..12].copy_from_slice(&len.to_le_bytes());
    out[12..14].copy_from_slice(&flags.to_le_bytes());
    out[14..16].copy_from_slice(&next.to_le_bytes());
    out
}

impl Image {
    /// The memory bytes and the head index of each planned chain.
    pub fn build(&self, queue_size: u16) -> (Vec<u8>, Vec<u16>) {
        let mut img = vec![0u8; MEM as usize];
        let mut heads = Vec::new();
        for (i, plan) in self.chains.iter().take(PLANS).enumerate() {
            heads.push(plan.head % queue_size);
            lay_out(&mut img, plan, i, queue_size);
        }
        let mut command = Vec::with_capacity(self.command.len() + 10);
        if self.fix_header {
            // A TPM header whose size is the first plan's readable length, then the payload.
            let readable: u64 = self
                .chains
                .first()
                .map(|p| {
                    p.segments
                        .iter()
                        .filter(|s| !s.writable)
                        .map(|s| u64::from(s.len.resolve()))
                        .sum()
                })
                .unwrap_or(0);
            command.extend_from_slice(&0x8001u16.to_be_bytes());
            command.extend_from_slice(&(readable as u32).to_be_bytes());
            command.extend_from_slice(&0x17Bu32.to_be_bytes());
        }
        command.extend_from_slice(&self.command);
        command.truncate(0x1400);
        img[COMMAND as usize..COMMAND as usize + command.len()].copy_from_slice(&command);
        for &(at, byte) in self.pokes.iter().take(16) {
            img[usize::from(at) % DATA as usize] = byte;
        }
        (img, heads)
    }
}

/// Writes plan `i`'s descriptors: direct ones from its head in the queue's table (wrapping at
/// the queue size), table entries in its table area, then applies its mutations.
fn lay_out(img: &mut [u8], plan: &ChainPlan, i: usize, queue_size: u16) {
    let n = plan.segments.len().min(300);
    let direct = match plan.layout {
        Layout::Direct => n,
        Layout::Indirect => 0,
        Layout::DirectThenIndirect(k) => usize::from(k).min(n),
    };
    let with_table = direct < n || matches!(plan.layout, Layout::Indirect);
    // Buffers in chain order.
    let (resp_start, resp_size) = response_area(i);
    let (mut r_off, mut w_off) = (0u64, 0u64);
    let bufs: Vec<(u64, u32, bool)> = plan.segments[..n]
        .iter()
        .map(|s| {
            let len = s.len.resolve();
            let addr = match s.addr {
                Some(a) => a.resolve(),
                None if s.writable => {
                    let a = resp_start + w_off % resp_size;
                    w_off += u64::from(len);
                    a
                }
                None => {
                    let a = COMMAND + r_off % 0x1400;
                    r_off += u64::from(len);
                    a
                }
            };
            (addr, len, s.writable)
        })
        .collect();
    // Positions of the chain's descriptors: (table address, index).
    let slot = |k: usize| (plan.head as usize + k) % usize::from(queue_size);
    let mut places: Vec<(u64, u16)> = (0..direct).map(|k| (DESC_TABLE, slot(k) as u16)).collect();
    let table = table_area(i);
    let table_slot = slot(direct) as u16;
    for k in 0..n - direct {
        places.push((table, (k % TABLE_ENTRIES) as u16));
    }
    for (k, &(addr, len, writable)) in bufs.iter().enumerate() {
        let last = k + 1 == n;
        let mut flags = if writable { F_WRITE } else { 0 };
        let mut next = 0u16;
        if !last && (k + 1 < direct || k >= direct) {
            flags |= F_NEXT;
            next = places[k + 1].1;
        } else if !last && with_table {
            // The last direct descriptor leads to the one referring to the table.
            flags |= F_NEXT;
            next = table_slot;
        }
        let (t, idx) = places[k];
        put(img, t + 16 * u64::from(idx), desc(addr, len, flags, next));
    }
    let mut table_len = 16 * (n - direct).min(TABLE_ENTRIES) as u32;
    for m in plan.mutations.iter().take(8) {
        if let Mutation::TableLen(l) = m {
            table_len = l.resolve();
        }
    }
    if with_table {
        put(
            img,
            DESC_TABLE + 16 * u64::from(table_slot),
            desc(table, table_len, F_INDIRECT, 0),
        );
    }
    for m in plan.mutations.iter().take(8) {
        let at = |index: u8| {
            places
                .get(usize::from(index) % places.len().max(1))
                .map(|&(t, idx)| t + 16 * u64::from(idx))
        };
        let (index, field, value): (u8, u64, Vec<u8>) = match *m {
            Mutation::Flags { index, flags } => {
                let mut f = u16::from(flags & 7);
                if flags & 0x80 != 0 {
                    f |= 0x10;
                }
                (index, 12, f.to_le_bytes().to_vec())
            }
            Mutation::Next { index, next } => (index, 14, next.to_le_bytes().to_vec()),
            Mutation::Len { index, len } => (index, 8, len.resolve().to_le_bytes().to_vec()),
            Mutation::Addr { index, addr } => (index, 0, addr.resolve().to_le_bytes().to_vec()),
            Mutation::TableLen(_) => continue,
        };
        if let Some(d) = at(index) {
            let start = (d + field) as usize;
            if let Some(dst) = img.get_mut(start..start + value.len()) {
                dst.copy_from_slice(&value);
            }
        }
    }
}

/// Guest memory holding `img`.
pub fn memory(img: &[u8]) -> GuestMemoryMmap {
    let mem =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).expect("guest memory");
    mem.write_slice(img, GuestAddress(0)).expect("image");
    mem
}

/// The engine of the fuzz targets: checks that every command it gets is well formed (a TPM
/// header whose size is the command's length, 10..=4096 bytes), scribbles over it as libtpms
/// does when it decrypts parameters in place, and answers as `case` says.
pub struct MockEngine {
    pub case: EngineCase,
    pub commands: Vec<Vec<u8>>,
    pub wipes: usize,
    resp: Vec<u8>,
    pub imported: Option<EngineState>,
}

impl MockEngine {
    pub fn new(case: EngineCase) -> Self {
        MockEngine {
            case,
            commands: Vec::new(),
            wipes: 0,
            resp: Vec::new(),
            imported: None,
        }
    }

    /// The response the engine gives to `command` (when it does not fail).
    pub fn response_for(case: EngineCase, command: &[u8]) -> Vec<u8> {
        (0..usize::from(case.resp_len))
            .map(|i| command[i % command.len()] ^ (i as u8).wrapping_mul(31))
            .collect()
    }
}

impl Coprocessor for MockEngine {
    fn driver_name(&self) -> &'static str {
        "fuzz"
    }

    fn execute(&mut self, command: &mut [u8]) -> coprocessor::Result<&[u8]> {
        let len = command.len();
        assert!(
            (HEADER_SIZE..=MAX).contains(&len),
            "the engine got a {len}-byte command"
        );
        let size = u32::from_be_bytes([command[2], command[3], command[4], command[5]]);
        assert_eq!(
            size as usize, len,
            "the engine got a command whose header lies"
        );
        self.commands.push(command.to_vec());
        self.resp = Self::response_for(self.case, command);
        command[HEADER_SIZE..].fill(0xEE);
        if self.case.fail {
            return Err(coprocessor::Error::Unsupported("fuzz engine failure"));
        }
        Ok(&self.resp)
    }

    fn wipe_response(&mut self) {
        self.resp.fill(0);
        self.wipes += 1;
    }

    fn power_cycle(&mut self) -> coprocessor::Result<()> {
        Ok(())
    }

    fn save(&mut self) -> coprocessor::Result<()> {
        Ok(())
    }

    fn export_state(&mut self) -> coprocessor::Result<EngineState> {
        Err(coprocessor::Error::Unsupported("export"))
    }

    fn import_state(&mut self, state: &EngineState) -> coprocessor::Result<()> {
        self.imported = Some(state.clone());
        Ok(())
    }
}

/// One buffer of a chain as the reference reads it: (address, length, device-writable).
pub type Buf = (u64, u32, bool);

fn read_desc(img: &[u8], at: u64) -> Option<(u64, u32, u16, u16)> {
    let start = usize::try_from(at).ok()?;
    let d = img.get(start..start.checked_add(16)?)?;
    Some((
        u64::from_le_bytes(d[0..8].try_into().ok()?),
        u32::from_le_bytes(d[8..12].try_into().ok()?),
        u16::from_le_bytes([d[12], d[13]]),
        u16::from_le_bytes([d[14], d[15]]),
    ))
}

/// The chain at `head`, read by the rules of docs/virtio-tpm.md, or `None` if the device must
/// refuse it with used length 0 for its shape.
pub fn walk(img: &[u8], queue_size: u16, head: u16) -> Option<Vec<Buf>> {
    if head >= queue_size {
        return None;
    }
    let (mut table, mut entries, mut index) = (DESC_TABLE, u32::from(queue_size), head);
    let (mut visited, mut reads, mut in_indirect, mut seen_writable) = (0u32, 0usize, false, false);
    let mut bufs = Vec::new();
    loop {
        // More descriptors than the table holds is a loop; more than the limit is refused.
        if visited == entries || reads == MAX_CHAIN {
            return None;
        }
        let (addr, len, flags, next) = read_desc(img, table.checked_add(16 * u64::from(index))?)?;
        reads += 1;
        visited += 1;
        if flags & F_INDIRECT != 0 {
            if in_indirect || flags & F_NEXT != 0 || len == 0 || len % 16 != 0 {
                return None;
            }
            (table, entries, index, visited, in_indirect) = (addr, len / 16, 0, 0, true);
            continue;
        }
        let writable = flags & F_WRITE != 0;
        if !writable && seen_writable {
            return None;
        }
        seen_writable |= writable;
        bufs.push((addr, len, writable));
        if flags & F_NEXT == 0 {
            return Some(bufs);
        }
        index = next;
        if u32::from(index) >= entries {
            return None;
        }
    }
}

/// What the device must do with a chain: the used length, the command the engine must see
/// (if any) and the guest memory afterwards.
#[derive(Debug)]
pub struct Expected {
    pub used_len: u32,
    pub command: Option<Vec<u8>>,
    pub memory: Vec<u8>,
}

fn in_memory(addr: u64, len: u32) -> bool {
    len == 0
        || addr
            .checked_add(u64::from(len))
            .is_some_and(|end| end <= MEM)
}

/// Writes `data` over the writable buffers in order; returns how much fit.
fn scatter(img: &mut [u8], bufs: &[Buf], data: &[u8]) -> usize {
    let mut done = 0;
    for &(addr, len, _) in bufs.iter().filter(|b| b.2 && b.1 > 0) {
        let n = (len as usize).min(data.len() - done);
        let at = addr as usize;
        img[at..at + n].copy_from_slice(&data[done..done + n]);
        done += n;
        if done == data.len() {
            break;
        }
    }
    done
}

/// The reference answer for the chain at `head` of memory `img`, with an engine doing `case`.
pub fn predict(img: &[u8], queue_size: u16, head: u16, case: EngineCase) -> Expected {
    let untouched = |used_len| Expected {
        used_len,
        command: None,
        memory: img.to_vec(),
    };
    let Some(bufs) = walk(img, queue_size, head) else {
        return untouched(0);
    };
    let writable: u64 = bufs.iter().filter(|b| b.2).map(|b| u64::from(b.1)).sum();
    let readable: u64 = bufs.iter().filter(|b| !b.2).map(|b| u64::from(b.1)).sum();
    if writable == 0 || bufs.iter().any(|b| !in_memory(b.0, b.1)) {
        return untouched(0);
    }
    let answer = |data: &[u8], command: Option<Vec<u8>>| {
        let mut memory = img.to_vec();
        let n = scatter(&mut memory, &bufs, data);
        Expected {
            used_len: n as u32,
            command,
            memory,
        }
    };
    let refuse = |code: u32| {
        if writable < HEADER_SIZE as u64 {
            untouched(0)
        } else {
            answer(&error_response(code), None)
        }
    };
    if writable < MAX as u64 {
        return refuse(rc::SIZE);
    }
    if readable > MAX as u64 || readable < HEADER_SIZE as u64 {
        return refuse(rc::COMMAND_SIZE);
    }
    let mut command = Vec::new();
    for &(addr, len, _) in bufs.iter().filter(|b| !b.2 && b.1 > 0) {
        command.extend_from_slice(&img[addr as usize..(addr + u64::from(len)) as usize]);
    }
    let size = u32::from_be_bytes([command[2], command[3], command[4], command[5]]);
    if size as usize != command.len() {
        return refuse(rc::COMMAND_SIZE);
    }
    let response = MockEngine::response_for(case, &command);
    let mut out = if case.fail || !(HEADER_SIZE..=MAX).contains(&response.len()) {
        answer(&error_response(rc::FAILURE), None)
    } else {
        answer(&response, None)
    };
    out.command = Some(command);
    out
}

/// Everything `mem` holds, as bytes.
pub fn snapshot(mem: &GuestMemoryMmap) -> Vec<u8> {
    let mut out = vec![0u8; MEM as usize];
    mem.read_slice(&mut out, GuestAddress(0))
        .expect("read memory");
    out
}
