//! The hostile-guest suite (issue 11): a driver that breaks every rule of the split ring it
//! can, through the guest-driver harness against the real daemon. After each case the daemon
//! still serves a well-behaved chain, and what the guest made it log stays bounded.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use guest_driver::{ClientOptions, Desc, VtpmClient, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use openssl::sha::sha256;
use tempfile::TempDir;
use tpm_proto::{commands as c, rc};
use vm_memory::{Bytes, GuestAddress};

const NEXT: u16 = DESC_F_NEXT;
const WRITE: u16 = DESC_F_WRITE;
const INDIRECT: u16 = DESC_F_INDIRECT;

/// Guest memory the hand-made chains use, clear of the harness's rings and slot buffers.
const CMD: u64 = 0x10_0000;
const RESP: u64 = 0x10_2000;
const TABLE: u64 = 0x11_0000;
const BIG_TABLE: u64 = 0x20_0000;
/// Descriptor slots for hand-made chains; regular requests use slots 0 and 1.
const RAW: u16 = 64;
/// The harness's queue size (ClientOptions::default()).
const QSIZE: u16 = 128;

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> Desc {
    Desc {
        addr,
        len,
        flags,
        next,
    }
}

/// A fresh daemon and a started client of it, with EVENT_IDX as `event_idx` and a patient
/// timeout.
fn start_hostile(event_idx: bool) -> (TempDir, Daemon, VtpmClient) {
    start_fresh_with(
        &[],
        ClientOptions {
            event_idx,
            timeout: Duration::from_secs(20),
            ..Default::default()
        },
    )
}

/// The daemon still answers a well-behaved chain through the regular path (kick included:
/// the device left notifications in a state the driver can use).
fn assert_serves(client: &mut VtpmClient, d: &Daemon) {
    let resp = client
        .transact(&c::get_random(8))
        .unwrap_or_else(|e| panic!("no answer to a good chain: {e}\n{}", d.log_text()));
    assert_eq!(c::parse_get_random(&resp).unwrap().len(), 8);
}

/// What the daemon logged about refused chains, ring faults and stalls.
fn guest_triggered_lines(d: &Daemon) -> usize {
    d.log_text()
        .lines()
        .filter(|l| {
            l.contains("refused descriptor chain")
                || l.contains("request queue")
                || l.contains("inside the coprocessor")
        })
        .count()
}

/// Puts one hand-made chain at the raw slots and returns its (head, used length) and the
/// first `used_len` bytes of the response buffer at `resp`.
fn one_raw_chain(client: &mut VtpmClient, descs: Vec<Desc>, resp: u64) -> (u32, Vec<u8>) {
    client.write_guest(resp, &[0u8; 16]).unwrap();
    let heads = client.publish_raw_chains(&[(RAW, descs)]).unwrap();
    assert_eq!(heads, vec![RAW]);
    let used = client.collect_used(1).unwrap();
    assert_eq!(used[0].0, u32::from(RAW));
    let len = used[0].1;
    (len, client.read_guest(resp, len as usize).unwrap())
}

fn write_command(client: &VtpmClient, at: u64, cmd: &[u8]) -> u32 {
    client.write_guest(at, cmd).unwrap();
    cmd.len() as u32
}

/// Direct chain: the command at CMD, then `writable` as the response buffers.
fn chain_with_writable(cmd_len: u32, writable: &[(u64, u32)]) -> Vec<Desc> {
    let mut descs = vec![desc(CMD, cmd_len, NEXT, RAW + 1)];
    for (i, (addr, len)) in writable.iter().enumerate() {
        let last = i + 1 == writable.len();
        let flags = if last { WRITE } else { WRITE | NEXT };
        descs.push(desc(*addr, *len, flags, RAW + 2 + i as u16));
    }
    descs
}

// Item 1: an avail entry naming a head beyond the queue. It cannot be returned (the used ring
// carries the index); it must neither abort the batch nor leave notifications off.
fn bad_heads(event_idx: bool) {
    let (_dir, d, mut client) = start_hostile(event_idx);
    let base = client.used_index().unwrap();
    let len = write_command(&client, CMD, &c::get_random(8));
    let good = |slot: u16, resp: u64| {
        (
            slot,
            vec![desc(CMD, len, NEXT, slot + 1), desc(resp, 4096, WRITE, 0)],
        )
    };
    let chains = vec![
        good(RAW, RESP),
        (QSIZE, vec![]),
        (u16::MAX, vec![]),
        good(RAW + 2, RESP + 0x1000),
        (QSIZE + 1, vec![]),
    ];
    client.publish_raw_chains(&chains).unwrap();
    let used = client.collect_used(2).unwrap();
    assert_eq!(
        used.iter().map(|u| u.0).collect::<Vec<_>>(),
        vec![u32::from(RAW), u32::from(RAW + 2)],
        "the good chains of the batch are answered, in order"
    );
    for (i, at) in [RESP, RESP + 0x1000].into_iter().enumerate() {
        let resp = client.read_guest(at, used[i].1 as usize).unwrap();
        assert_eq!(c::parse_get_random(&resp).unwrap().len(), 8);
    }
    // Several rounds: each must find notifications enabled (the harness kicks only when the
    // device asks for it, as a kernel driver does).
    for _ in 0..3 {
        client.publish_raw_heads(&[QSIZE + 7, 0xFFFE]).unwrap();
        assert_serves(&mut client, &d);
    }
    assert_eq!(
        client.used_index().unwrap().wrapping_sub(base),
        2 + 3,
        "bad heads are never returned"
    );
    let log = d.log_text();
    assert!(
        log.contains("head index 128 is beyond the queue of 128"),
        "{log}"
    );
    assert!(!log.contains("request queue processing failed"), "{log}");
    assert!(guest_triggered_lines(&d) <= 9);
}

#[test]
fn bad_head_index_is_consumed_and_the_device_keeps_serving_with_event_idx() {
    bad_heads(true);
}

#[test]
fn bad_head_index_is_consumed_and_the_device_keeps_serving_without_event_idx() {
    bad_heads(false);
}

// Item 2: a vCPU racing the device rewrites the lengths of the chain's descriptors while it
// is served. Whatever it sees, the device either refuses the chain unexecuted or executes it
// and delivers the whole answer: never an executed command with a lost or truncated answer.
#[test]
fn a_racing_vcpu_cannot_change_the_chain_after_the_device_checked_it() {
    let (_dir, d, mut client) = start_hostile(true);
    let digest = sha256(b"race");
    let extend = c::pcr_extend_sha256(16, &digest);
    let len = write_command(&client, CMD, &extend);
    let descs = vec![desc(CMD, len, NEXT, RAW + 1), desc(RESP, 4096, WRITE, 0)];

    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let mem = client.guest_memory();
        let stop = stop.clone();
        let table = VtpmClient::desc_table();
        std::thread::spawn(move || {
            let cmd_len = GuestAddress(table + 16 * u64::from(RAW) + 8);
            let resp_len = GuestAddress(table + 16 * u64::from(RAW + 1) + 8);
            let mut flips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for (c_len, r_len) in [(len, 4096u32), (len + 64, 4), (len, 6), (len, 4096)] {
                    mem.write_obj(c_len.to_le(), cmd_len).unwrap();
                    mem.write_obj(r_len.to_le(), resp_len).unwrap();
                }
                flips += 1;
            }
            flips
        })
    };
    let (mut answered, mut refused, mut command_size) = (0usize, 0usize, 0usize);
    for _ in 0..400 {
        let (used, resp) = one_raw_chain(&mut client, descs.clone(), RESP);
        match used {
            0 => refused += 1,
            10 if rc_of(&resp) == rc::SIZE => refused += 1,
            10 if rc_of(&resp) == rc::COMMAND_SIZE => command_size += 1,
            n => {
                assert_eq!(rc_of(&resp), rc::SUCCESS, "used length {n}: {resp:02x?}");
                let size = u32::from_be_bytes(resp[2..6].try_into().unwrap());
                assert_eq!(size, n, "a truncated answer");
                answered += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let flips = racer.join().unwrap();
    assert!(flips > 400, "the racer barely ran ({flips} rounds)");
    // Exactly the answered extends happened: PCR 16 is their hash chain.
    let expected = pcr_after_extends(&digest, answered);
    assert_eq!(
        pcr_read(&mut client, 16),
        expected,
        "{answered} answered, {refused} refused, {command_size} COMMAND_SIZE: \
         an extend ran without its answer"
    );
    assert_serves(&mut client, &d);
    assert!(guest_triggered_lines(&d) <= 16 + 5, "{}", d.log_text());
}

// Item 2: an indirect table may claim 65535 entries; the device reads at most
// MAX_CHAIN_DESCRIPTORS of them, however the chain inside runs.
#[test]
fn huge_indirect_tables_cost_bounded_work() {
    let (_dir, d, mut client) = start_hostile(true);
    let len = write_command(&client, CMD, &c::get_random(8));
    let entries: u32 = 0xFFFF;
    // The chain's head: the whole huge table.
    let huge = desc(BIG_TABLE, 16 * entries, INDIRECT, 0);
    // A long chain of empty readable buffers ending in the response: 300 descriptors.
    let mut long: Vec<Desc> = (1..299u16).map(|i| desc(CMD, 0, NEXT, i + 1)).collect();
    long.insert(0, desc(CMD, len, NEXT, 1));
    long.push(desc(RESP, 4096, WRITE, 0));
    client.write_descs(BIG_TABLE, 0, &long).unwrap();
    let start = Instant::now();
    let (used, _) = one_raw_chain(&mut client, vec![huge], RESP);
    assert_eq!(used, 0, "a 300-descriptor chain is refused");
    // A loop deep inside the table.
    client
        .write_descs(BIG_TABLE, 100, &[desc(CMD, 0, NEXT, 5)])
        .unwrap();
    let (used, _) = one_raw_chain(&mut client, vec![huge], RESP);
    assert_eq!(used, 0, "a loop in a huge table is refused");
    // The same huge table holding a short, good chain is served: its size alone is no fault.
    client
        .write_descs(
            BIG_TABLE,
            0,
            &[desc(CMD, len, NEXT, 1), desc(RESP, 4096, WRITE, 0)],
        )
        .unwrap();
    let (used, resp) = one_raw_chain(&mut client, vec![huge], RESP);
    assert_eq!(c::parse_get_random(&resp).unwrap().len(), 8, "used {used}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?} for three chains",
        start.elapsed()
    );
    assert_serves(&mut client, &d);
}

#[test]
fn indirect_descriptor_abuse() {
    let (_dir, d, mut client) = start_hostile(true);
    let len = write_command(&client, CMD, &c::get_random(8));
    client
        .write_descs(
            TABLE,
            0,
            &[desc(CMD, len, NEXT, 1), desc(RESP, 4096, WRITE, 0)],
        )
        .unwrap();
    client
        .write_descs(TABLE + 0x100, 0, &[desc(RESP, 4096, WRITE, 0)])
        .unwrap();
    let cases: Vec<(&str, Vec<Desc>, bool)> = vec![
        (
            "zero-length indirect table",
            vec![desc(TABLE, 0, INDIRECT, 0)],
            false,
        ),
        (
            "table length not a whole number of descriptors",
            vec![desc(TABLE, 24, INDIRECT, 0)],
            false,
        ),
        (
            "INDIRECT|NEXT",
            vec![
                desc(TABLE, 32, INDIRECT | NEXT, RAW + 1),
                desc(RESP, 4096, WRITE, 0),
            ],
            false,
        ),
        (
            "an indirect table inside an indirect table",
            vec![desc(TABLE + 0x200, 16, INDIRECT, 0)],
            false,
        ),
        (
            "INDIRECT|WRITE (WRITE is ignored on a table descriptor)",
            vec![desc(TABLE, 32, INDIRECT | WRITE, 0)],
            true,
        ),
        (
            "indirect descriptor after a direct one (valid: virtio 1.x 2.7.5.3.2)",
            vec![
                desc(CMD, len, NEXT, RAW + 1),
                desc(TABLE + 0x100, 16, INDIRECT, 0),
            ],
            true,
        ),
        (
            "indirect descriptor in the middle of a direct chain",
            vec![
                desc(CMD, len, NEXT, RAW + 1),
                desc(TABLE + 0x100, 16, INDIRECT | NEXT, RAW + 2),
                desc(RESP, 4096, WRITE, 0),
            ],
            false,
        ),
        (
            "indirect table outside guest memory",
            vec![desc(client.guest_memory_size() + 0x1000, 32, INDIRECT, 0)],
            false,
        ),
    ];
    client
        .write_descs(TABLE + 0x200, 0, &[desc(TABLE, 32, INDIRECT, 0)])
        .unwrap();
    for (what, descs, served) in cases {
        let (used, resp) = one_raw_chain(&mut client, descs, RESP);
        if served {
            assert_eq!(
                c::parse_get_random(&resp).map(|r| r.len()),
                Ok(8),
                "{what}: used {used}"
            );
        } else {
            assert_eq!(used, 0, "{what}");
        }
        assert_serves(&mut client, &d);
    }
    assert!(guest_triggered_lines(&d) <= 16, "{}", d.log_text());
}

#[test]
fn writable_part_abuse_and_boundaries() {
    let (_dir, d, mut client) = start_hostile(true);
    let digest = sha256(b"boundary");
    let len = write_command(&client, CMD, &c::pcr_extend_sha256(16, &digest));
    let mut executed = 0usize;
    enum Want {
        Refused,
        RcSize,
        Answer,
    }
    type Case = (&'static str, Vec<(u64, u32)>, Want);
    let cases: Vec<Case> = vec![
        (
            "only a zero-length writable",
            vec![(RESP, 0)],
            Want::Refused,
        ),
        (
            "only zero-length writables",
            vec![(RESP, 0), (RESP, 0), (RESP + 8, 0)],
            Want::Refused,
        ),
        ("writable 9 bytes", vec![(RESP, 9)], Want::Refused),
        ("writable 4095", vec![(RESP, 4095)], Want::RcSize),
        (
            "writable 2048 + 2047",
            vec![(RESP, 2048), (RESP + 2048, 2047)],
            Want::RcSize,
        ),
        (
            "writable 4095 + zero-length",
            vec![(RESP, 4095), (RESP + 4095, 0)],
            Want::RcSize,
        ),
        ("writable 4096", vec![(RESP, 4096)], Want::Answer),
        (
            "writable 2048 + 2048",
            vec![(RESP, 2048), (RESP + 2048, 2048)],
            Want::Answer,
        ),
        (
            "writable 1 + 1 + 4094",
            vec![(RESP, 1), (RESP + 1, 1), (RESP + 2, 4094)],
            Want::Answer,
        ),
        (
            "writable 4096 straddling the end of guest memory",
            vec![(client.guest_memory_size() - 2048, 4096)],
            Want::Refused,
        ),
    ];
    for (what, writable, want) in cases {
        let descs = chain_with_writable(len, &writable);
        let (used, resp) = one_raw_chain(&mut client, descs, RESP);
        match want {
            Want::Refused => assert_eq!(used, 0, "{what}"),
            Want::RcSize => assert_eq!((used, rc_of(&resp)), (10, rc::SIZE), "{what}"),
            Want::Answer => {
                assert_eq!(rc_of(&resp), rc::SUCCESS, "{what}");
                executed += 1;
            }
        }
    }
    // Exactly the three chains with room for an answer were executed.
    let expected = pcr_after_extends(&digest, executed);
    assert_eq!(executed, 3);
    assert_eq!(pcr_read(&mut client, 16), expected);
    assert_serves(&mut client, &d);
}

// A driver under EVENT_IDX writes used_event; a hostile one writes nonsense there. The device
// keeps serving (interrupts may or may not follow: the driver asked for nonsense).
#[test]
fn hostile_used_event_does_not_stop_the_device() {
    let (_dir, d, mut client) = start_hostile(true);
    let len = write_command(&client, CMD, &c::get_random(8));
    let descs = vec![desc(CMD, len, NEXT, RAW + 1), desc(RESP, 4096, WRITE, 0)];
    let used_now = client.used_index().unwrap();
    for (i, value) in [
        u16::MAX,
        0,
        used_now.wrapping_sub(1),
        used_now.wrapping_add(0x8000),
        used_now.wrapping_add(1000),
    ]
    .into_iter()
    .enumerate()
    {
        client.set_used_event(value).unwrap();
        client.publish_raw_chains(&[(RAW, descs.clone())]).unwrap();
        // The harness may not have kicked (it follows avail_event): kick regardless.
        client.kick().unwrap();
        let used = client.poll_used(1).unwrap();
        assert_eq!(used[0].0, u32::from(RAW), "round {i}");
        let resp = client.read_guest(RESP, used[0].1 as usize).unwrap();
        assert_eq!(c::parse_get_random(&resp).unwrap().len(), 8, "round {i}");
    }
    assert_serves(&mut client, &d);
    assert_eq!(guest_triggered_lines(&d), 0, "{}", d.log_text());
}

// 100,000 bad chains of every kind, as fast as the harness can publish them: the device
// answers every one it can return, serves a good chain afterwards, and its log stays small.
#[test]
fn a_flood_of_bad_chains_keeps_the_log_bounded() {
    let (_dir, d, mut client) = start_hostile(true);
    let len = write_command(&client, CMD, &c::get_random(8));
    let beyond = client.guest_memory_size() + 0x1000;
    // Each bad chain sits at its own raw slots once; the flood only republishes heads.
    let kinds: Vec<(u16, Vec<Desc>)> = vec![
        // a loop
        (
            RAW,
            vec![
                desc(CMD, len, NEXT, RAW + 1),
                desc(RESP, 4096, WRITE | NEXT, RAW),
            ],
        ),
        // no writable part
        (RAW + 2, vec![desc(CMD, len, 0, 0)]),
        // response outside guest memory
        (
            RAW + 3,
            vec![desc(CMD, len, NEXT, RAW + 4), desc(beyond, 4096, WRITE, 0)],
        ),
        // INDIRECT|NEXT
        (
            RAW + 5,
            vec![
                desc(TABLE, 32, INDIRECT | NEXT, RAW + 6),
                desc(RESP, 4096, WRITE, 0),
            ],
        ),
        // zero-length indirect table
        (RAW + 7, vec![desc(TABLE, 0, INDIRECT, 0)]),
        // next beyond the queue
        (RAW + 8, vec![desc(CMD, len, NEXT, 4000)]),
        // oversized command (answered with TPM_RC_COMMAND_SIZE)
        (
            RAW + 9,
            vec![desc(CMD, 5000, NEXT, RAW + 10), desc(RESP, 4096, WRITE, 0)],
        ),
        // writable too small (answered with TPM_RC_SIZE)
        (
            RAW + 11,
            vec![desc(CMD, len, NEXT, RAW + 12), desc(RESP, 100, WRITE, 0)],
        ),
    ];
    for (first, descs) in &kinds {
        client
            .write_descs(VtpmClient::desc_table(), *first, descs)
            .unwrap();
    }
    let mut heads: Vec<u16> = kinds.iter().map(|k| k.0).collect();
    heads.extend([QSIZE, u16::MAX, QSIZE + 100]); // heads beyond the queue
    let lines_before = d.log_text().lines().count();
    let total = 100_000usize;
    let per_batch = usize::from(QSIZE) - 1;
    let start = Instant::now();
    let (mut sent, mut returned) = (0usize, 0usize);
    while sent < total {
        let n = per_batch.min(total - sent);
        let mut batch: Vec<u16> = (0..n).map(|i| heads[(sent + i) % heads.len()]).collect();
        // End every batch on a returned chain, so its used element marks the batch done.
        if *batch.last().unwrap() >= QSIZE {
            *batch.last_mut().unwrap() = RAW + 2;
        }
        let expect = batch.iter().filter(|h| **h < QSIZE).count();
        client.publish_raw_heads(&batch).unwrap();
        let used = client
            .collect_used(expect)
            .unwrap_or_else(|e| panic!("after {sent} bad chains: {e}\n{}", d.log_text()));
        for (head, used_len) in used {
            assert!(
                used_len == 0 || used_len == 10,
                "bad chain {head} answered with {used_len} bytes"
            );
        }
        sent += n;
        returned += expect;
    }
    let elapsed = start.elapsed();
    assert_serves(&mut client, &d);
    let log = d.log_text();
    let added = log.lines().count() - lines_before;
    assert!(
        added <= 16 + 17 + 16 + 17,
        "{added} log lines for {total} bad chains\n{log}"
    );
    assert!(log.contains("refused so far"), "{log}");
    eprintln!(
        "{total} bad chains ({returned} returned) in {elapsed:?}; {added} log lines; \
         log is {} bytes",
        log.len()
    );
    assert!(log.len() < 64 << 10, "log of {} bytes", log.len());
}
