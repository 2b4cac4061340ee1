//! A whole queue against the device: arbitrary ring placement, queue size, indices (sane or
//! not), EVENT_IDX, avail entries naming any head, chains of every shape. Checks: no panic; the
//! device consumes exactly the pending entries when there are at most a queue's worth and none
//! otherwise; it returns at most one used element per consumed entry, never one for a head
//! beyond the queue; its counters add up; a second drain finds nothing to do.
#![no_main]

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vhost_vtpm::request::{drain_queue, Stats};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vtpm_fuzz::{memory, EngineCase, Image, MockEngine, AVAIL, DESC_TABLE, MAX, USED};

#[derive(Arbitrary, Debug)]
enum Rings {
    Standard,
    Moved { desc: u64, avail: u64, used: u64 },
}

#[derive(Arbitrary, Debug)]
struct Case {
    size_log2: u8,
    rings: Rings,
    event_idx: bool,
    next_avail: u16,
    /// The avail index is `next_avail + pending`.
    pending: u16,
    next_used: u16,
    used_event: u16,
    /// Avail entries after the planned chains' heads (any value).
    avail: Vec<u16>,
    image: Image,
    engine: EngineCase,
}

fuzz_target!(|case: Case| {
    let size = 1u16 << (case.size_log2 % 9);
    let (img, planned) = case.image.build(size);
    let mem = memory(&img);
    let (desc, avail_wanted, used) = match case.rings {
        Rings::Standard => (DESC_TABLE, AVAIL, USED),
        Rings::Moved { desc, avail, used } => (desc, avail, used),
    };
    let mut q = Queue::new(256).expect("queue");
    q.set_size(size);
    q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
    q.set_avail_ring_address(Some(avail_wanted as u32), Some((avail_wanted >> 32) as u32));
    q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
    q.set_event_idx(case.event_idx);
    q.set_next_avail(case.next_avail);
    q.set_next_used(case.next_used);
    q.set_ready(true);
    // The queue refuses misaligned ring addresses (and keeps its previous ones): the driver's
    // side goes where the device will look.
    let avail = q.avail_ring();
    let avail_idx = case.next_avail.wrapping_add(case.pending);
    // The driver's side of the avail ring (where it fits in memory).
    let _ = mem.store(
        avail_idx.to_le(),
        GuestAddress(avail.wrapping_add(2)),
        Ordering::Relaxed,
    );
    let entries = planned.iter().chain(case.avail.iter());
    for (i, head) in entries.take(usize::from(size)).enumerate() {
        let slot = (u64::from(case.next_avail) + i as u64) % u64::from(size);
        let _ = mem.write_obj(head.to_le(), GuestAddress(avail.wrapping_add(4 + 2 * slot)));
    }
    let _ = mem.write_obj(
        case.used_event.to_le(),
        GuestAddress(avail.wrapping_add(4 + 2 * u64::from(size))),
    );

    let mut engine = MockEngine::new(case.engine);
    let mut scratch = [0u8; MAX];
    let mut stats = Stats::default();
    let (avail_before, used_before) = (q.next_avail(), q.next_used());
    let result = drain_queue(&mut q, &mem, &mut engine, &mut scratch, &mut stats);
    let consumed = (Wrapping(q.next_avail()) - Wrapping(avail_before)).0;
    let returned = (Wrapping(q.next_used()) - Wrapping(used_before)).0;
    match &result {
        Ok(n) => {
            assert_eq!(*n, usize::from(returned));
            if case.pending <= size {
                assert_eq!(consumed, case.pending, "pending entries left behind");
            } else {
                assert_eq!(consumed, 0, "served an impossible index");
            }
        }
        Err(_) => assert!(consumed <= case.pending.min(size)),
    }
    assert!(returned <= consumed);
    assert_eq!(u64::from(consumed), stats.commands + stats.refused_chains);
    // Entries consumed without a used element: the heads beyond the queue, and on a used
    // ring that cannot be written, the one chain whose element could not be added.
    let unreturned = u64::from(consumed - returned);
    if result.is_ok() {
        assert_eq!(unreturned, stats.bad_heads);
    } else {
        assert!(unreturned == stats.bad_heads || unreturned == stats.bad_heads + 1);
    }
    assert_eq!(
        stats.commands,
        engine.commands.len() as u64 - stats.engine_failures
    );
    assert!(scratch.iter().all(|b| *b == 0), "command left in scratch");
    if result.is_ok() && case.pending <= size {
        // Everything pending was consumed: a second drain has nothing to do (unless a response
        // landed on the avail index and moved it).
        let idx: u16 = mem
            .load(GuestAddress(avail.wrapping_add(2)), Ordering::Relaxed)
            .map(u16::from_le)
            .unwrap_or(avail_idx);
        if idx == avail_idx {
            let again = drain_queue(&mut q, &mem, &mut engine, &mut scratch, &mut stats);
            assert!(matches!(again, Ok(0)), "{again:?}");
        }
    }
});
