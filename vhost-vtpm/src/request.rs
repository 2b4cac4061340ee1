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
#[path = "tests/request.rs"]
mod tests;
