//! End-to-end tests of the daemon binary driven through a real vhost-user connection by the
//! guest-driver harness, with libtpms as the engine.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use guest_driver::{ClientOptions, Desc, DESC_F_NEXT, DESC_F_WRITE};
use openssl::sha::sha256;
use testbed::openssl::ecdsa_p256_verifies;
use testbed::SwtpmProcess;
use tpm_proto::{commands as c, rc};

#[test]
fn startup_get_random_and_config_space() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), &[]);
    let mut client = d.connect();
    assert_eq!(client.max_buffer_size().unwrap(), 4096);
    assert_success(&run(&mut client, &c::startup(c::TPM_SU_CLEAR)), "Startup");
    let a = get_random(&mut client, 32);
    let b = get_random(&mut client, 32);
    assert_eq!((a.len(), b.len()), (32, 32));
    assert_ne!(a, b, "two GetRandom calls returned the same bytes");
}

#[test]
fn pcr_extend_then_read_matches_host_computed_hash() {
    let (_dir, _d, mut client) = start_fresh(&[]);
    let before = pcr_read(&mut client, 16);
    assert_eq!(before, vec![0u8; 32], "PCR16 starts at zero");
    let mut expected = before;
    for round in 0..3u8 {
        let digest = sha256(&[b'm', round]);
        assert_success(
            &run(&mut client, &c::pcr_extend_sha256(16, &digest)),
            "PCR_Extend",
        );
        expected = pcr_extended(&expected, &digest);
        assert_eq!(
            pcr_read(&mut client, 16),
            expected,
            "PCR16 after extend {round}"
        );
    }
}

#[test]
fn ecc_primary_signature_verifies_with_openssl() {
    let (_dir, _d, mut client) = start_fresh(&[]);
    let key = c::parse_create_primary_ecc(&run(&mut client, &c::create_primary_ecc_signing()))
        .expect("CreatePrimary");
    let digest = sha256(b"attest me");
    let (r, s) = c::parse_sign_ecdsa(&run(
        &mut client,
        &c::sign_ecdsa_sha256(key.handle, &digest),
    ))
    .expect("Sign");

    assert!(
        ecdsa_p256_verifies(&key.x, &key.y, &digest, &r, &s),
        "TPM signature does not verify"
    );
    assert!(
        !ecdsa_p256_verifies(&key.x, &key.y, &sha256(b"something else"), &r, &s),
        "signature verified over the wrong digest"
    );
    assert_success(
        &run(&mut client, &c::flush_context(key.handle)),
        "FlushContext",
    );
}

const NV_INDEX: u32 = 0x0150_0020;

#[test]
fn nv_data_survives_clean_restart_and_sigkill() {
    let (_dir, mut d, mut client) = start_fresh(&[]);
    define_nv(&mut client, NV_INDEX, 16, c::NV_ORDINARY_ATTRS);
    assert_success(
        &run(&mut client, &c::nv_write(NV_INDEX, 0, b"first value 1234")),
        "NV_Write",
    );
    drop(client);
    d.stop();
    assert!(
        d.log_text().contains("vTPM state saved"),
        "{}",
        d.log_text()
    );

    // Clean restart: the TPM resumes (no Startup needed) and NV reads back.
    d.respawn();
    {
        let mut client = d.connect();
        let resp = run(&mut client, &c::nv_read(NV_INDEX, 16, 0));
        assert_eq!(c::parse_nv_read(&resp).unwrap(), b"first value 1234");
        assert_success(
            &run(&mut client, &c::nv_write(NV_INDEX, 0, b"second value 567")),
            "NV_Write",
        );
    }
    // SIGKILL right after the acknowledged write: it must still be there.
    d.kill();
    d.respawn();
    let mut client = d.connect();
    // The guest's kernel will not send Startup again: the daemon did it after the crash.
    assert_eq!(
        get_random(&mut client, 8).len(),
        8,
        "the TPM answers right after a crash restart"
    );
    assert!(d.log_text().contains("recovered from an unclean stop"));
    let resp = run(&mut client, &c::nv_read(NV_INDEX, 16, 0));
    assert_eq!(c::parse_nv_read(&resp).unwrap(), b"second value 567");
}

#[test]
fn frontend_reconnects_find_the_same_tpm_without_leaking_threads() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), &[]);
    let mut expected = vec![0u8; 32];
    let mut baseline = None;
    for round in 0..12u8 {
        {
            let mut client = d.connect();
            startup(&mut client);
            assert_eq!(
                pcr_read(&mut client, 23),
                expected,
                "PCR23 at round {round}"
            );
            let digest = sha256(&[round]);
            assert_success(
                &run(&mut client, &c::pcr_extend_sha256(23, &digest)),
                "PCR_Extend",
            );
            expected = pcr_extended(&expected, &digest);
        }
        // The client is gone; once the daemon is back in accept() (it logs that after the
        // next connection's vring worker exists), it has the same threads as before.
        let settled = wait_until(Duration::from_secs(10), || {
            let log = d.log_text();
            log.matches("frontend disconnected").count() == usize::from(round) + 1
                && log.matches("waiting for a frontend").count() == usize::from(round) + 2
        });
        assert!(settled, "disconnect {round} not logged\n{}", d.log_text());
        let threads = d.thread_count();
        let base = *baseline.get_or_insert(threads);
        assert!(
            wait_until(Duration::from_secs(10), || d.thread_count() <= base),
            "thread count grew from {base} to {} after {} reconnects",
            d.thread_count(),
            round
        );
    }
}

fn many_in_flight(opts: ClientOptions) {
    let (_dir, _d, mut client) = start_fresh_with(&[], opts);
    let before = client.interrupts();
    let cmds: Vec<Vec<u8>> = (0..64).map(|_| c::get_random(16)).collect();
    let refs: Vec<&[u8]> = cmds.iter().map(|v| v.as_slice()).collect();
    let batches = 5;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..batches {
        let resps = client.transact_batch(&refs).expect("batch");
        assert_eq!(resps.len(), 64);
        for r in resps {
            let bytes = c::parse_get_random(&r).expect("GetRandom in batch");
            assert_eq!(bytes.len(), 16);
            assert!(seen.insert(bytes), "duplicate random bytes across requests");
        }
    }
    assert_eq!(
        client.interrupts() - before,
        batches,
        "expected exactly one interrupt per batch ({opts:?})"
    );
}

#[test]
fn many_in_flight_with_event_idx() {
    many_in_flight(ClientOptions::default());
}

#[test]
fn many_in_flight_without_event_idx() {
    many_in_flight(ClientOptions {
        event_idx: false,
        ..Default::default()
    });
}

#[test]
fn many_in_flight_through_indirect_tables() {
    many_in_flight(ClientOptions {
        indirect: true,
        ..Default::default()
    });
}

#[test]
fn malformed_chains_are_answered_and_the_batch_is_served() {
    let (_dir, d, mut client) = start_fresh(&[]);
    let (cmd0, resp0) = guest_driver::VtpmClient::slot_buffers(0);
    let (cmd1, resp1) = guest_driver::VtpmClient::slot_buffers(1);
    let get_random = c::get_random(8);
    client.write_guest(cmd0, &get_random).unwrap();
    client.write_guest(cmd1, &get_random).unwrap();
    let len = get_random.len() as u32;
    let beyond = client.guest_memory_size() + 0x10_0000;
    let desc = |addr, len, flags, next| Desc {
        addr,
        len,
        flags,
        next,
    };
    let chains = vec![
        (
            0,
            vec![
                desc(cmd0, len, DESC_F_NEXT, 1),
                desc(resp0, 4096, DESC_F_WRITE, 0),
            ],
        ),
        // loop
        (
            10,
            vec![
                desc(cmd1, len, DESC_F_NEXT, 11),
                desc(resp1, 4096, DESC_F_WRITE | DESC_F_NEXT, 10),
            ],
        ),
        // no writable part
        (20, vec![desc(cmd1, len, 0, 0)]),
        // response buffer outside guest memory
        (
            30,
            vec![
                desc(cmd1, len, DESC_F_NEXT, 31),
                desc(beyond, 4096, DESC_F_WRITE, 0),
            ],
        ),
        // oversized command
        (
            40,
            vec![
                desc(cmd1, 5000, DESC_F_NEXT, 41),
                desc(resp1, 4096, DESC_F_WRITE, 0),
            ],
        ),
        (
            50,
            vec![
                desc(cmd1, len, DESC_F_NEXT, 51),
                desc(resp1 + 4096 * 4, 4096, DESC_F_WRITE, 0),
            ],
        ),
    ];
    let heads = client.publish_raw_chains(&chains).unwrap();
    let used = client.collect_used(heads.len()).unwrap();
    let used_heads: Vec<u32> = used.iter().map(|u| u.0).collect();
    assert_eq!(
        used_heads,
        vec![0, 10, 20, 30, 40, 50],
        "every chain answered, in order"
    );
    let lens: Vec<u32> = used.iter().map(|u| u.1).collect();
    assert_eq!(&lens[1..4], &[0, 0, 0]);
    assert_eq!(lens[4], 10, "oversized command gets a TPM error header");
    let oversized = client.read_guest(resp1, 10).unwrap();
    assert_eq!(rc_of(&oversized), rc::COMMAND_SIZE);
    for (i, addr) in [(0usize, resp0), (5, resp1 + 4096 * 4)] {
        let resp = client.read_guest(addr, lens[i] as usize).unwrap();
        assert_eq!(
            c::parse_get_random(&resp).unwrap().len(),
            8,
            "good chain {i}"
        );
    }
    // The daemon is alive and still serving through the regular path.
    assert_eq!(
        c::parse_get_random(&client.transact(&c::get_random(4)).unwrap())
            .unwrap()
            .len(),
        4
    );
    assert!(d.log_text().contains("refused descriptor chain"));
}

#[test]
fn device_reset_power_cycles_the_tpm() {
    let (_dir, d, mut client) = start_fresh(&[]);
    assert_success(
        &run(&mut client, &c::pcr_extend_sha256(16, &[7; 32])),
        "PCR_Extend",
    );
    assert_ne!(pcr_read(&mut client, 16), vec![0u8; 32]);
    client.reset_device().unwrap();
    let resp = client
        .transact(&c::get_random(8))
        .unwrap_or_else(|e| panic!("after reset: {e}\n{}", d.log_text()));
    assert_eq!(rc_of(&resp), rc::INITIALIZE);
    assert_success(&run(&mut client, &c::startup(c::TPM_SU_CLEAR)), "Startup");
    assert_eq!(
        pcr_read(&mut client, 16),
        vec![0u8; 32],
        "PCRs reset by the power cycle"
    );
    assert!(d.log_text().contains("device reset: TPM power-cycled"));
}

#[test]
fn busy_poll_window_catches_back_to_back_commands() {
    let (_dir, mut d, mut client) = start_fresh(&["--busy-poll-us", "2000"]);
    for _ in 0..200 {
        get_random(&mut client, 8);
    }
    drop(client);
    d.stop();
    let log = d.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("busy-poll") && l.contains("hits"))
        .expect("stats line");
    let hits: u64 = line
        .split(" windows, ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("hits count");
    assert!(
        hits >= 100,
        "busy-poll caught only {hits} of 200 commands: {line}"
    );
}

#[test]
fn impossible_avail_index_stalls_the_queue_without_spinning_until_reset() {
    let (_dir, d, mut client) = start_fresh(&[]);
    for _ in 0..5 {
        client.publish_avail_index_and_kick(1000).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(wait_until(Duration::from_secs(5), || d
        .log_text()
        .contains("impossible avail index")));
    assert_eq!(
        d.log_text().matches("impossible avail index").count(),
        1,
        "the stall is logged once, not per kick"
    );
    // CPU time over a quiet second stays small: the worker sleeps instead of spinning.
    let cpu = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", d.pid())).unwrap();
        let fields: Vec<&str> = stat.rsplit(") ").next().unwrap().split(' ').collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let before = cpu();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        cpu() - before < 20,
        "daemon kept burning CPU on a stalled queue"
    );
    client.reset_device().unwrap();
    startup(&mut client);
    assert_eq!(get_random(&mut client, 8).len(), 8);
}

#[test]
fn listener_inherited_with_fd() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("inherited.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let fd = listener.as_raw_fd();
    let key = dir.path().join("host.key");
    testbed::ensure_host_key(&key).unwrap();
    let mut cmd = std::process::Command::new(DAEMON);
    cmd.arg("--fd")
        .stderr(std::process::Stdio::null())
        .arg(fd.to_string())
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--host-key-file")
        .arg(&key);
    // SAFETY: only async-signal-safe fcntl between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut client = guest_driver::VtpmClient::connect(&sock, ClientOptions::default()).unwrap();
    startup(&mut client);
    assert_eq!(get_random(&mut client, 8).len(), 8);
    drop(client);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "SIGINT stops the daemon cleanly"
    );
    // The listener is the launcher's too (a systemd socket unit keeps it to start the daemon
    // again): the daemon's stop must leave it listening, not shut it down.
    std::os::unix::net::UnixStream::connect(&sock)
        .expect("the inherited listener still takes connections after the daemon stopped");
    drop(listener);
}

#[test]
fn bad_command_lines_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = exit_of(Command::new(DAEMON).args(["--socket-path", "/tmp/x.sock"]));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--state-dir is required"));

    let (code, stderr) = exit_of(Command::new(DAEMON).args([
        "--socket-path",
        "/tmp/x.sock",
        "--state-dir",
        "/tmp/none",
    ]));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--host-key-file is required"));

    let key = dir.path().join("host.key");
    testbed::ensure_host_key(&key).unwrap();
    let (code, stderr) = exit_of(
        Command::new(DAEMON)
            .args(["--fd", "0", "--host-key-file"])
            .arg(&key)
            .arg("--state-dir")
            .arg(dir.path().join("s"))
            .stdin(plain_file(dir.path())),
    );
    assert_eq!(code, Some(1));
    assert!(stderr.contains("not a socket"), "{stderr}");

    let out = Command::new(DAEMON)
        .args(["--print-capabilities"])
        .output()
        .unwrap();
    let caps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(caps["type"], "tpm");
}

#[test]
fn swtpm_engine_serves_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let swtpm = SwtpmProcess::start(dir.path(), true).unwrap();
    let (ctrl, data) = (swtpm.ctrl.clone(), swtpm.data.clone().unwrap());
    let mut d = Daemon::start_in(
        dir.path(),
        &[
            "--engine",
            "swtpm",
            "--swtpm-ctrl",
            ctrl.to_str().unwrap(),
            "--swtpm-data",
            data.to_str().unwrap(),
        ],
    );
    let mut client = d.connect();
    startup(&mut client);
    let digest = sha256(b"swtpm");
    assert_success(
        &run(&mut client, &c::pcr_extend_sha256(16, &digest)),
        "PCR_Extend",
    );
    let expected = pcr_after_extends(&digest, 1);
    assert_eq!(pcr_read(&mut client, 16), expected);
    drop(client);
    d.stop();
}

#[test]
fn readme_options_match_the_command_line() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    testbed::readme_drift(&readme, &[(std::path::Path::new(DAEMON), &[&[]])]).unwrap();
}

#[test]
fn device_state_migrates_between_daemons() {
    // Sealed (ADR 0010): two hosts, the CA and the migration controller; every refusal is
    // in tests/migration.rs.
    let tmp = tempfile::tempdir().unwrap();
    let bed = migration_bed(tmp.path());
    let (src, instance) = migration_source(&bed, &tmp.path().join("src"));
    let mut a = src.connect();
    startup(&mut a);
    define_nv(&mut a, NV_INDEX, 8, c::NV_ORDINARY_ATTRS);
    assert_success(
        &run(&mut a, &c::nv_write(NV_INDEX, 0, b"migrated")),
        "write",
    );
    assert_success(
        &run(&mut a, &c::pcr_extend_sha256(16, &sha256(b"boot"))),
        "extend",
    );
    let pcr = pcr_read(&mut a, 16);
    bed.authorise(&instance, "vm", bed.a(), bed.b()).unwrap();
    let state = a.save_device_state().unwrap();

    let dst_dir = tmp.path().join("dst");
    let dst = migration_daemon(&bed, bed.b(), &dst_dir, true);
    let mut b = dst.connect();
    // A corrupt stream is refused and leaves the destination as it was.
    let mut corrupt = state.clone();
    corrupt.truncate(state.len() / 2);
    assert!(b.load_device_state(&corrupt).is_err());
    assert!(dst.log_text().contains("device state transfer failed"));
    assert!(!dst_dir.join("state/instance.key").exists());
    drop(b);

    let mut b = dst.connect();
    b.load_device_state(&state).unwrap();
    // The guest continues without Startup: PCRs and NV came along.
    assert_eq!(pcr_read(&mut b, 16), pcr);
    let resp = run(&mut b, &c::nv_read(NV_INDEX, 8, 0));
    assert_eq!(c::parse_nv_read(&resp).unwrap(), b"migrated");
}

#[test]
fn instances_are_isolated() {
    const PERSISTENT: u32 = 0x8100_0042;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Daemon::start_in(dir_a.path(), &[]);
    let b = Daemon::start_in(dir_b.path(), &[]);
    let (mut ca, mut cb) = (a.connect(), b.connect());
    startup(&mut ca);
    startup(&mut cb);
    let key = c::parse_create_primary_ecc(&run(&mut ca, &c::create_primary_ecc_signing())).unwrap();
    assert_success(
        &run(&mut ca, &c::evict_control(key.handle, PERSISTENT)),
        "EvictControl",
    );
    assert_success(
        &run(&mut ca, &c::read_public(PERSISTENT)),
        "ReadPublic in the owning instance",
    );
    let other = rc_of(&run(&mut cb, &c::read_public(PERSISTENT)));
    assert_eq!(
        other & 0xBF,
        rc::HANDLE,
        "instance B sees A's persistent key (rc {other:#x})"
    );
    // The same primary template gives a different key in B: different seeds.
    let key_b =
        c::parse_create_primary_ecc(&run(&mut cb, &c::create_primary_ecc_signing())).unwrap();
    assert_ne!(
        (key.x, key.y),
        (key_b.x, key_b.y),
        "two instances derived the same key"
    );
}

#[test]
fn a_start_that_cannot_listen_keeps_the_saved_state() {
    let (dir, mut d, mut client) = start_fresh(&[]);
    let digest = sha256(b"keep me");
    let expected = pcr_after_extends(&digest, 1);
    assert_success(
        &run(&mut client, &c::pcr_extend_sha256(16, &digest)),
        "PCR_Extend",
    );
    drop(client);
    d.stop();
    // A start whose listener is unusable (stdin is a plain file) fails after the engine
    // consumed the saved volatile state: it must save it again, and leave no run marker.
    let (code, stderr) = exit_of(
        Command::new(DAEMON)
            .args(["--fd", "0", "--state-dir"])
            .arg(&d.state)
            .arg("--host-key-file")
            .arg(d.host_key.as_ref().unwrap())
            .stdin(plain_file(dir.path())),
    );
    assert_eq!(code, Some(1));
    assert!(stderr.contains("not a socket"));
    d.respawn();
    let mut client = d.connect();
    let code = rc_of(&run(&mut client, &c::startup(c::TPM_SU_CLEAR)));
    assert_eq!(
        code,
        rc::INITIALIZE,
        "the TPM resumed, it was not powered on afresh"
    );
    assert_eq!(pcr_read(&mut client, 16), expected);
    assert!(!d.log_text().contains("recovered from an unclean stop"));
}

/// The fields of /proc/PID/status that say whether a process is sandboxed.
fn sandbox_status(pid: i32) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    (field("Seccomp:"), field("NoNewPrivs:"))
}

// The socket file appears only once the daemon listens, so a frontend that connects the
// moment it sees the file is never refused. With a plain bind the file exists from bind(2)
// and a connect before listen(2) gets ECONNREFUSED; the vhost crate's frontend then waits
// 100 ms before it tries again (one start in ten under load, BENCHMARKS.md section 6), QEMU's
// reconnect-ms a whole period. strace holds the daemon's listen(2) back for 300 ms, so a
// socket file made before it would be found refusing. A file left at the name is replaced,
// and no temporary is left beside it.
#[test]
fn the_socket_file_appears_only_once_it_accepts_connections() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vtpm.sock");
    let key = dir.path().join("host.key");
    testbed::ensure_host_key(&key).unwrap();
    std::fs::write(&socket, b"not a socket: left by something else").unwrap();
    let mut strace = Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=listen"])
        .args(["-e", "inject=listen:delay_enter=300000", "--", DAEMON])
        .arg("--socket-path")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--host-key-file")
        .arg(&key)
        .args(["--log-level", "error"])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // Spin without sleeping, to catch the file the moment it appears.
    loop {
        match std::fs::symlink_metadata(&socket) {
            Ok(m) if m.file_type().is_socket() => break,
            _ => {
                assert!(strace.try_wait().unwrap().is_none(), "the daemon exited");
                assert!(
                    std::time::Instant::now() < deadline,
                    "no socket within 20 s"
                );
            }
        }
    }
    let connected = std::os::unix::net::UnixStream::connect(&socket);
    // The daemon is strace's child; strace itself holds fatal signals while it traces.
    let tracer = strace.id();
    let children =
        std::fs::read_to_string(format!("/proc/{tracer}/task/{tracer}/children")).unwrap();
    let daemon: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = strace.wait().unwrap();
    if let Err(e) = connected {
        panic!("the socket file existed but a connect was refused: {e}");
    }
    assert!(status.success(), "the daemon exited with {status}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "temporaries left: {left:?}");
}

// Issue 11: by default the daemon serves under a seccomp filter (mode 2) with no new
// privileges, on every thread, and still does its whole job: commands, a clean stop that
// saves, a restart on the saved state.
#[test]
fn the_daemon_serves_sandboxed_by_default_on_a_private_socket() {
    let (dir, mut d, mut client) = start_fresh(&[]);
    assert_success(
        &run(&mut client, &c::pcr_extend_sha256(16, &[7u8; 32])),
        "PCR_Extend",
    );
    let pid = d.pid();
    // The socket is the daemon user's alone, whatever the umask.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("vtpm.sock"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    // Landlock confines its writes to its state directory (the rules themselves are tested
    // in sandbox.rs; this kernel enforces them).
    assert!(
        d.log_text().contains(&format!(
            "file system confined (Landlock): writes only beneath {}",
            dir.path().join("state").display()
        )),
        "{}",
        d.log_text()
    );
    assert_eq!(
        sandbox_status(pid),
        ("2".to_string(), "1".to_string()),
        "Seccomp and NoNewPrivs of the daemon"
    );
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid = task.unwrap().file_name();
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/task/{}/status", tid.to_string_lossy()))
                .unwrap();
        assert!(
            status
                .lines()
                .any(|l| l.split_whitespace().eq(["Seccomp:", "2"])),
            "thread {tid:?} is not filtered"
        );
        // Started as root, it keeps CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (bits 1 and 2)
        // and nothing else, in every set and on every thread.
        if nix::unistd::geteuid().is_root() {
            for (set, expected) in [
                ("CapInh:", "0000000000000000"),
                ("CapPrm:", "0000000000000006"),
                ("CapEff:", "0000000000000006"),
                ("CapBnd:", "0000000000000006"),
                ("CapAmb:", "0000000000000000"),
            ] {
                assert!(
                    status
                        .lines()
                        .any(|l| l.split_whitespace().eq([set, expected])),
                    "thread {tid:?}: {set} is not {expected}\n{status}"
                );
            }
        }
    }
    drop(client);
    d.stop();
    d.respawn();
    let mut client = d.connect();
    assert_eq!(get_random(&mut client, 8).len(), 8);
    drop(client);
    d.stop();
    assert!(d.log_text().contains("seccomp Kill"), "{}", d.log_text());

    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(dir.path(), &["--seccomp", "none"]);
    let client = d.connect();
    assert_eq!(sandbox_status(d.pid()), ("0".to_string(), "1".to_string()));
    drop(client);
    d.stop();
}

/// What a frontend running as `uid` gets from the daemon listening at `socket`: a child
/// process takes that uid before connecting (the kernel records a peer's credentials at
/// connect time), sends GET_FEATURES and reports whether any answer came (`true`) or the
/// daemon closed the connection without one (`false`).
fn get_features_as(uid: u32, socket: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    // Everything the child needs is prepared here: between fork and _exit it makes raw
    // system calls only (the test process has other threads).
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path = socket.as_os_str().as_bytes();
    assert!(path.len() < addr.sun_path.len(), "socket path too long");
    for (dst, &src) in addr.sun_path.iter_mut().zip(path) {
        *dst = src as libc::c_char;
    }
    // GET_FEATURES (request 1), version 1 flags, no payload.
    let mut msg = [0u8; 12];
    msg[0] = 1;
    msg[4] = 1;
    // SAFETY: the child only makes async-signal-safe system calls on memory prepared
    // before the fork, then _exits; the parent waits for it.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: raw system calls on the child's own copies of `addr`, `msg` and `buf`.
        unsafe {
            if libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                libc::_exit(10);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if fd < 0 {
                libc::_exit(11);
            }
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            // The daemon's socket file appears only once it listens; a refusal is retried
            // for up to 5 s all the same, so that this probe does not depend on that.
            let pause = libc::timespec {
                tv_sec: 0,
                tv_nsec: 10_000_000,
            };
            let mut tries = 0;
            while libc::connect(fd, (&raw const addr).cast(), len) != 0 {
                tries += 1;
                if tries == 500 || *libc::__errno_location() != libc::ECONNREFUSED {
                    libc::_exit(12);
                }
                libc::nanosleep(&pause, std::ptr::null_mut());
            }
            if libc::write(fd, msg.as_ptr().cast(), msg.len()) != msg.len() as isize {
                // A daemon that refused the peer may have shut the connection already.
                let e = *libc::__errno_location();
                libc::_exit(if e == libc::EPIPE || e == libc::ECONNRESET {
                    1
                } else {
                    13
                });
            }
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut pfd, 1, 10_000) != 1 {
                libc::_exit(14);
            }
            let mut buf = [0u8; 64];
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            libc::_exit(if n > 0 { 0 } else { 1 });
        }
    }
    let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
    match status {
        nix::sys::wait::WaitStatus::Exited(_, 0) => true,
        nix::sys::wait::WaitStatus::Exited(_, 1) => false,
        other => panic!("the frontend child as uid {uid} failed: {other:?} (10: setuid, 12: connect, 14: no answer and no close in 10 s)"),
    }
}

// Issue 11, item 3: the frontend's socket credentials decide. A peer that is neither the
// daemon's user, root nor a --frontend-uid is disconnected before it gets any answer, the
// refusal names it, and the daemon keeps serving its own VMM; --frontend-uid admits one.
#[test]
fn a_frontend_of_another_user_is_refused_unless_admitted() {
    use std::os::unix::fs::PermissionsExt;
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test switches a child process to another user: run it as root (CI does)"
    );
    const NOBODY: u32 = 65534;
    let dir = tempfile::tempdir().unwrap();
    // The socket is the daemon user's alone (0600); an operator who opened it up, or a
    // launcher that passed a listener with --fd, leaves the credential check as the guard.
    let open_up = |path: &std::path::Path| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
    };
    open_up(dir.path());
    let d = Daemon::start_in(dir.path(), &[]);
    open_up(&d.socket);
    assert!(
        !get_features_as(NOBODY, &d.socket),
        "uid {NOBODY} got an answer"
    );
    assert!(
        wait_until(Duration::from_secs(5), || d
            .log_text()
            .contains(&format!("uid {NOBODY}, gid {NOBODY} is neither"))),
        "{}",
        d.log_text()
    );
    let mut client = d.connect();
    startup(&mut client);
    assert_success(&run(&mut client, &c::get_random(8)), "GetRandom");
    drop(client);

    let admitting_dir = dir.path().join("admitting");
    std::fs::create_dir(&admitting_dir).unwrap();
    open_up(&admitting_dir);
    let nobody = NOBODY.to_string();
    let admitting = Daemon::start_in(&admitting_dir, &["--frontend-uid", &nobody]);
    open_up(&admitting.socket);
    assert!(
        get_features_as(NOBODY, &admitting.socket),
        "{}",
        admitting.log_text()
    );
    // The daemon logs the admission on its connection thread, maybe after it answered.
    assert!(
        wait_until(Duration::from_secs(5), || admitting
            .log_text()
            .contains("frontend connected: pid")),
        "{}",
        admitting.log_text()
    );
}

/// `name`'s value in a snapshot of the daemon's metrics socket.
fn metric(text: &str, name: &str) -> f64 {
    testbed::metrics::value(text, name).unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

fn scrape(path: &std::path::Path) -> String {
    testbed::metrics::scrape(path).unwrap()
}

// Issue 13, observability: a running daemon tells an operator what it did, without a restart:
// commands, refused chains, a latency histogram, durable writes and the fsyncs they cost.
#[test]
fn the_metrics_socket_reports_what_the_daemon_did() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("metrics.sock");
    let d = Daemon::start_in(dir.path(), &["--metrics-socket", socket.to_str().unwrap()]);
    let before = scrape(&socket);
    assert_eq!(metric(&before, "vtpm_commands_total"), 0.0);
    let mut client = d.connect();
    startup(&mut client);
    for _ in 0..3 {
        assert_success(&run(&mut client, &c::get_random(8)), "GetRandom");
    }
    define_nv(&mut client, 0x0150_0077, 8, c::NV_ORDINARY_ATTRS);
    assert_success(
        &run(&mut client, &c::nv_write(0x0150_0077, 0, &[1; 8])),
        "NV_Write",
    );
    let text = scrape(&socket);
    let commands = metric(&text, "vtpm_commands_total");
    assert!(commands >= 6.0, "{text}");
    assert_eq!(
        metric(&text, "vtpm_command_duration_seconds_count"),
        commands
    );
    assert_eq!(
        metric(&text, "vtpm_command_duration_seconds_bucket{le=\"+Inf\"}"),
        commands
    );
    assert_eq!(metric(&text, "vtpm_refused_chains_total"), 0.0);
    assert_eq!(metric(&text, "vtpm_frontends_admitted_total"), 1.0);
    let writes =
        metric(&text, "vtpm_state_writes_total") - metric(&before, "vtpm_state_writes_total");
    let syncs = metric(&text, "vtpm_state_syncs_total") - metric(&before, "vtpm_state_syncs_total");
    // NV_DefineSpace and NV_Write are durable; each write costs one sync: the state slot's
    // fdatasync (the generation record is written without waiting, no directory sync).
    assert!(writes >= 2.0, "{text}");
    assert_eq!(syncs, writes, "{text}");
    assert!(text.contains("vtpm_info{engine=\"libtpms\"} 1"), "{text}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
}
