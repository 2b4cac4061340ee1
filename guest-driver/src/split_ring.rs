//! A driver-side split virtqueue (virtio 1.x §2.7) over shared guest memory.
//!
//! Memory layout used by the harness (guest physical addresses):
//! descriptor table at 0x0, avail ring at 0x1000, used ring at 0x2000, indirect tables from
//! 0x3000 (32 bytes per slot), and per-slot command/response buffers of 4096 bytes each from
//! 0x10000. A request occupies slot `s` and descriptors `2s` and `2s + 1`.

use std::sync::atomic::{fence, Ordering};

use virtio_bindings::bindings::virtio_ring;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::client::HarnessError;

pub const DESC_F_NEXT: u16 = virtio_ring::VRING_DESC_F_NEXT as u16;
pub const DESC_F_WRITE: u16 = virtio_ring::VRING_DESC_F_WRITE as u16;
pub const DESC_F_INDIRECT: u16 = virtio_ring::VRING_DESC_F_INDIRECT as u16;
const USED_F_NO_NOTIFY: u16 = virtio_ring::VRING_USED_F_NO_NOTIFY as u16;

pub const DESC_TABLE: u64 = 0x0;
pub const AVAIL_RING: u64 = 0x1000;
pub const USED_RING: u64 = 0x2000;
pub const INDIRECT_TABLES: u64 = 0x3000;
pub const BUFFERS: u64 = 0x1_0000;
pub const BUF_SIZE: u64 = 4096;

/// One raw descriptor as the driver writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// The driver's view of one split queue.
pub struct SplitRing {
    pub size: u16,
    event_idx: bool,
    next_avail: u16,
    last_used: u16,
}

fn mem_err(e: vm_memory::GuestMemoryError) -> HarnessError {
    HarnessError::Setup(format!("guest memory access: {e}"))
}

impl SplitRing {
    pub fn new(size: u16, event_idx: bool) -> Self {
        SplitRing {
            size,
            event_idx,
            next_avail: 0,
            last_used: 0,
        }
    }

    /// How many requests can be in flight at once (two descriptors each).
    pub fn slots(&self) -> u16 {
        self.size / 2
    }

    pub fn cmd_buf(slot: u16) -> u64 {
        BUFFERS + u64::from(slot) * 2 * BUF_SIZE
    }

    pub fn resp_buf(slot: u16) -> u64 {
        Self::cmd_buf(slot) + BUF_SIZE
    }

    fn used_event_addr(&self) -> u64 {
        AVAIL_RING + 4 + 2 * u64::from(self.size)
    }

    fn avail_event_addr(&self) -> u64 {
        USED_RING + 4 + 8 * u64::from(self.size)
    }

    pub fn write_desc(
        mem: &GuestMemoryMmap,
        table: u64,
        index: u16,
        d: Desc,
    ) -> Result<(), HarnessError> {
        let at = table + 16 * u64::from(index);
        mem.write_obj(d.addr.to_le(), GuestAddress(at))
            .map_err(mem_err)?;
        mem.write_obj(d.len.to_le(), GuestAddress(at + 8))
            .map_err(mem_err)?;
        mem.write_obj(d.flags.to_le(), GuestAddress(at + 12))
            .map_err(mem_err)?;
        mem.write_obj(d.next.to_le(), GuestAddress(at + 14))
            .map_err(mem_err)
    }

    /// Writes `cmd` into the slot's buffer and the slot's two-descriptor chain (direct, or
    /// through the slot's indirect table). Returns the head index; not yet published.
    pub fn prepare(
        &self,
        mem: &GuestMemoryMmap,
        slot: u16,
        cmd: &[u8],
        indirect: bool,
    ) -> Result<u16, HarnessError> {
        if cmd.len() as u64 > BUF_SIZE {
            return Err(HarnessError::CommandTooLarge(cmd.len()));
        }
        mem.write_slice(cmd, GuestAddress(Self::cmd_buf(slot)))
            .map_err(mem_err)?;
        let head = 2 * slot;
        let chain = [
            Desc {
                addr: Self::cmd_buf(slot),
                len: cmd.len() as u32,
                flags: DESC_F_NEXT,
                next: 1,
            },
            Desc {
                addr: Self::resp_buf(slot),
                len: BUF_SIZE as u32,
                flags: DESC_F_WRITE,
                next: 0,
            },
        ];
        if indirect {
            let table = INDIRECT_TABLES + u64::from(slot) * 32;
            Self::write_desc(mem, table, 0, chain[0])?;
            Self::write_desc(mem, table, 1, chain[1])?;
            Self::write_desc(
                mem,
                DESC_TABLE,
                head,
                Desc {
                    addr: table,
                    len: 32,
                    flags: DESC_F_INDIRECT,
                    next: 0,
                },
            )?;
        } else {
            let mut first = chain[0];
            first.next = head + 1;
            Self::write_desc(mem, DESC_TABLE, head, first)?;
            Self::write_desc(mem, DESC_TABLE, head + 1, chain[1])?;
        }
        Ok(head)
    }

    /// Puts `head` in the avail ring (not yet visible: see [`SplitRing::publish`]).
    pub fn push_avail(&mut self, mem: &GuestMemoryMmap, head: u16) -> Result<(), HarnessError> {
        let at = AVAIL_RING + 4 + 2 * u64::from(self.next_avail % self.size);
        mem.write_obj(head.to_le(), GuestAddress(at))
            .map_err(mem_err)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(())
    }

    /// Makes every pushed entry visible to the device; returns whether the device wants a
    /// kick for them (VRING_USED_F_NO_NOTIFY, or avail_event under EVENT_IDX).
    pub fn publish(&mut self, mem: &GuestMemoryMmap, old_avail: u16) -> Result<bool, HarnessError> {
        fence(Ordering::Release);
        mem.store(
            self.next_avail.to_le(),
            GuestAddress(AVAIL_RING + 2),
            Ordering::Release,
        )
        .map_err(mem_err)?;
        fence(Ordering::SeqCst);
        if self.event_idx {
            let avail_event = u16::from_le(
                mem.load(GuestAddress(self.avail_event_addr()), Ordering::Acquire)
                    .map_err(mem_err)?,
            );
            let new = self.next_avail;
            Ok(new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old_avail))
        } else {
            let flags: u16 = u16::from_le(
                mem.load(GuestAddress(USED_RING), Ordering::Acquire)
                    .map_err(mem_err)?,
            );
            Ok(flags & USED_F_NO_NOTIFY == 0)
        }
    }

    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// Pops one used element (head id, length) if the device has returned one.
    pub fn pop_used(&mut self, mem: &GuestMemoryMmap) -> Result<Option<(u32, u32)>, HarnessError> {
        let used_idx: u16 = u16::from_le(
            mem.load(GuestAddress(USED_RING + 2), Ordering::Acquire)
                .map_err(mem_err)?,
        );
        if used_idx == self.last_used {
            return Ok(None);
        }
        let at = USED_RING + 4 + 8 * u64::from(self.last_used % self.size);
        let id = u32::from_le(mem.read_obj(GuestAddress(at)).map_err(mem_err)?);
        let len = u32::from_le(mem.read_obj(GuestAddress(at + 4)).map_err(mem_err)?);
        self.last_used = self.last_used.wrapping_add(1);
        Ok(Some((id, len)))
    }

    /// Writes `used_event` directly (a hostile driver's value).
    pub fn set_used_event(&self, mem: &GuestMemoryMmap, value: u16) -> Result<(), HarnessError> {
        mem.store(
            value.to_le(),
            GuestAddress(self.used_event_addr()),
            Ordering::Release,
        )
        .map_err(mem_err)
    }

    /// The device's used index.
    pub fn used_index(&self, mem: &GuestMemoryMmap) -> Result<u16, HarnessError> {
        mem.load(GuestAddress(USED_RING + 2), Ordering::Acquire)
            .map(u16::from_le)
            .map_err(mem_err)
    }

    /// Asks for an interrupt at the next used entry (EVENT_IDX's used_event), then reports
    /// whether something arrived meanwhile, so the caller may sleep only if not.
    pub fn arm_interrupt(&self, mem: &GuestMemoryMmap) -> Result<bool, HarnessError> {
        if self.event_idx {
            mem.store(
                self.last_used.to_le(),
                GuestAddress(self.used_event_addr()),
                Ordering::Release,
            )
            .map_err(mem_err)?;
        }
        fence(Ordering::SeqCst);
        let used_idx: u16 = u16::from_le(
            mem.load(GuestAddress(USED_RING + 2), Ordering::Acquire)
                .map_err(mem_err)?,
        );
        Ok(used_idx != self.last_used)
    }
}
