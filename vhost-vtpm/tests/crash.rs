//! Crash safety: a workload of NV writes and counter increments, the daemon SIGKILLed at
//! random moments 200 times. After every restart each write the TPM acknowledged is there
//! (the command in flight at the kill may or may not have happened, nothing older may be
//! lost) and the state loads.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::workload::{observe, provision, random_delays, write_until_gone, Killer};
use common::*;

const KILLS: usize = 200;

#[test]
fn acknowledged_writes_survive_200_sigkills() {
    let (_dir, mut d, mut client) = start_fresh(&[]);
    provision(&mut client);
    drop(client);
    // The last acknowledged (data, counter).
    let mut acked = (0u64, 0u64);
    let (seed, mut next_delay) = random_delays(Duration::from_millis(8));
    let mut writes_acked = 0u64;
    for round in 0..KILLS {
        let mut client = d.connect();
        let (value, count) = observe(&mut client);
        if round == 0 {
            acked.1 = count;
        }
        let (acked_value, acked_count) = acked;
        assert!(
            value == acked_value || value == acked_value + 1,
            "round {round} (seed {seed}): data index holds {value}, last acknowledged {acked_value}"
        );
        assert!(
            count == acked_count || count == acked_count + 1,
            "round {round} (seed {seed}): counter is {count}, last acknowledged {acked_count}"
        );
        acked = (value, count);

        // The kill lands at a random point after the round's first acknowledged write.
        let killer = Killer::arm(d.pid(), next_delay());
        let (writes, refused) = write_until_gone(&mut client, &killer, &mut acked);
        if let Some((what, code)) = refused {
            panic!("{what} answered {code:#x}");
        }
        writes_acked += writes;
        killer.join();
        d.wait_exit().expect("wait for the daemon");
        d.respawn();
    }
    let mut client = d.connect();
    let (value, count) = observe(&mut client);
    assert!(value >= acked.0 && count >= acked.1);
    // Every restart opened the encrypted state: it authenticated and was not older than the
    // generation record, after every one of the kills.
    let authenticated = d
        .log_text()
        .matches("state authenticated (generation")
        .count();
    assert_eq!(
        authenticated,
        KILLS,
        "restarts whose state authenticated\n{}",
        d.log_text()
    );
    // The temporaries of the writes the kills interrupted were removed as the directory was
    // opened again: it holds none, not one per kill.
    let leftovers: Vec<String> = std::fs::read_dir(&d.state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");
    eprintln!(
        "crash test: {KILLS} SIGKILLs, {writes_acked} acknowledged durable writes, none lost, \
         state authenticated after all {authenticated} restarts (seed {seed})"
    );
    assert!(
        writes_acked >= KILLS as u64,
        "a round ended without an acknowledged write: {writes_acked} writes in {KILLS} rounds"
    );
}
