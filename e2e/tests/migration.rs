//! A real guest migrated live between two QEMU processes on this machine, its vTPM sealed
//! (ADR 0010): two hosts with simulated host TPMs (swtpm) enrolled with the local CA, the
//! migration controller, a daemon per host. The stream passes through a relay on loopback
//! TCP, which keeps a copy of it and can cut it.
//!
//! * The move: NV data, PCRs and a loaded key's signature survive; in the destination guest
//!   the vEK chain verifies through the destination's coprocessor certificate (openssl in
//!   the guest); the source's state files are gone and its daemon refuses to serve; a random
//!   marker the guest wrote to NV appears nowhere in the migration stream.
//! * The destination killed while the package is on its way: the source VM resumes, its
//!   daemon has the controller abort, the guest's vTPM serves with nothing lost.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sha::sha256;
use openssl::sign::Verifier;
use testbed::{
    free_port, start_daemon, DaemonProcess, Env, HostRef, MigrationBed, Relay, TpmFrontend, Vm,
};

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn daemon(
    env: &Env,
    bed: &MigrationBed,
    host: HostRef<'_>,
    dir: &Path,
    incoming: bool,
) -> DaemonProcess {
    std::fs::create_dir_all(dir).unwrap();
    let args = bed.daemon_args(host, incoming);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start_daemon(env, dir, &args)
}

/// The source: a provisioned instance on host A, registered, its daemon, a booted guest
/// that wrote a random NV marker, extended a PCR and loaded a signing key.
struct Source {
    daemon: DaemonProcess,
    vm: Vm,
    instance: String,
    expected: Expected,
}

/// What the guest's vTPM must still hold.
struct Expected {
    marker: String,
    pcr: String,
    key_pem: Vec<u8>,
}

fn boot_source(env: &Env, bed: &MigrationBed, dir: &Path) -> Source {
    bed.a().provision(&dir.join("state")).unwrap();
    let instance = bed.register(&dir.join("state"), bed.a()).unwrap();
    let daemon = daemon(env, bed, bed.a(), dir, false);
    let mut vm = Vm::boot(env, &TpmFrontend::VhostUser(daemon.socket.clone()));
    vm.must("cd /tmp");
    let mut marker = [0u8; 32];
    openssl::rand::rand_bytes(&mut marker).unwrap();
    vm.write_file("/tmp/marker", &marker);
    vm.must("tpm2_nvdefine 0x1500018 -C o -s 32 -a 'ownerread|ownerwrite|authread|authwrite'");
    vm.must("tpm2_nvwrite 0x1500018 -C o -i marker && rm marker");
    vm.must(&format!(
        "tpm2_pcrextend 16:sha256={}",
        hex::encode(sha256(b"before migration"))
    ));
    let pcr = vm.pcr_sha256(16);
    vm.must("tpm2_createprimary -Q -C o -c p.ctx");
    vm.must("tpm2_create -Q -C p.ctx -G ecc256 -u k.pub -r k.priv");
    vm.must("tpm2_load -Q -C p.ctx -u k.pub -r k.priv -c k.ctx");
    vm.must("tpm2_readpublic -Q -c k.ctx -f pem -o k.pem");
    let key_pem = vm.read_file("/tmp/k.pem");
    Source {
        daemon,
        vm,
        instance,
        expected: Expected {
            marker: hex::encode(marker),
            pcr,
            key_pem,
        },
    }
}

/// Checks the guest's vTPM: NV marker, PCR 16, the loaded key signs.
fn check_guest(vm: &mut Vm, src: &Expected) {
    vm.must("cd /tmp");
    vm.must("tpm2_nvread 0x1500018 -C o -s 32 -o back");
    assert_eq!(
        hex::encode(vm.read_file("/tmp/back")),
        src.marker,
        "NV marker"
    );
    assert_eq!(vm.pcr_sha256(16), src.pcr, "PCR 16");
    vm.must("echo -n 'signed after the move' > msg");
    vm.must("tpm2_sign -Q -c k.ctx -g sha256 -f plain -o sig.der msg");
    let sig = vm.read_file("/tmp/sig.der");
    let key = PKey::public_key_from_pem(&src.key_pem).unwrap();
    let mut v = Verifier::new(MessageDigest::sha256(), &key).unwrap();
    v.update(b"signed after the move").unwrap();
    assert!(
        v.verify(&sig).unwrap(),
        "the key loaded before the move signs"
    );
}

/// A move of the source (booted in `tmp/vm-a` on host A) to host B, authorised, with the
/// destination daemon (in `tmp/vm-b`) and its QEMU waiting for the stream on `port`.
///
/// Fields drop in the order written: the destination's guest and daemon, then the source's,
/// then the controller, CA and hosts of `bed` that they talk to.
struct Move {
    dst: Vm,
    dst_daemon: DaemonProcess,
    /// The migration's id.
    id: String,
    src: Source,
    bed: MigrationBed,
    port: u16,
}

fn prepare_move(env: &Env, tmp: &Path) -> Move {
    let bin_dir = env.daemon.parent().unwrap().to_owned();
    let bed = MigrationBed::start(&bin_dir, tmp).unwrap();
    let src = boot_source(env, &bed, &tmp.join("vm-a"));
    let id = bed
        .authorise(&src.instance, "vm-1", bed.a(), bed.b())
        .unwrap();
    let dst_daemon = daemon(env, &bed, bed.b(), &tmp.join("vm-b"), true);
    let port = free_port().unwrap();
    let dst = Vm::incoming_tcp(
        env,
        &TpmFrontend::VhostUser(dst_daemon.socket.clone()),
        port,
    );
    Move {
        bed,
        src,
        id,
        dst_daemon,
        dst,
        port,
    }
}

#[test]
fn live_migration_carries_the_vtpm_to_a_new_daemon() {
    let env = Env::load();
    let tmp = tempfile::tempdir().unwrap();
    let mut mv = prepare_move(&env, tmp.path());
    let src_dir = tmp.path().join("vm-a");
    let relay = Relay::start(mv.port, None).unwrap();
    mv.src
        .vm
        .migrate_tcp(relay.port, Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("migration failed: {e}\n{}", mv.src.daemon.log_text()));
    let stream = relay.finish().unwrap();
    mv.dst.wait_migrated(Duration::from_secs(240)).unwrap();

    // Only the sealed package crossed: no plain snapshot, not the NV marker.
    assert!(
        contains(&stream, b"VTPMMIG1"),
        "no sealed package in the stream"
    );
    assert!(
        !contains(&stream, b"VTPMSNP1"),
        "a plain snapshot in the stream"
    );
    let marker = (0..32)
        .map(|i| u8::from_str_radix(&mv.src.expected.marker[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<u8>>();
    assert!(
        !contains(&stream, &marker),
        "the NV marker is in the stream"
    );
    std::fs::write(tmp.path().join("migration.stream"), &stream).unwrap();

    check_guest(&mut mv.dst, &mv.src.expected);
    assert!(
        mv.dst_daemon
            .log_text()
            .contains("committed, this host owns the vTPM"),
        "{}",
        mv.dst_daemon.log_text()
    );

    // In the destination guest, the vEK chain now verifies through host B's coprocessor.
    mv.dst
        .verify_vek_chain(&std::fs::read(&mv.bed.chain.ca.ca_cert).unwrap());
    let subject = mv.dst.must("openssl x509 -in chain0.pem -noout -subject");
    assert!(subject.contains("coprocessor host-b"), "{subject}");

    // The source: its files gone, its daemon refuses to serve.
    assert!(mv
        .bed
        .wait_state(&mv.id, "source_deleted", Duration::from_secs(60)));
    let state = src_dir.join("state");
    for f in ["instance.key", "state.vtpm", "state.b.vtpm", "state.gen"] {
        assert!(!state.join(f).exists(), "{f} left on the source");
    }
    assert!(state.join("migrated").exists());
    drop(mv.src.vm);
    assert!(mv.src.daemon.log_text().contains("source deleted"));
    mv.src
        .daemon
        .signal(nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let err = mv.src.daemon.restart().unwrap_err().to_string();
    assert!(err.contains("is gone"), "{err}");
    mv.dst.shutdown();
}

#[test]
fn destination_killed_mid_transfer_the_source_resumes_with_nothing_lost() {
    let env = Env::load();
    let tmp = tempfile::tempdir().unwrap();
    let mut mv = prepare_move(&env, tmp.path());
    // The stream is cut, and the destination QEMU killed, as the sealed package (released
    // by the source daemon) is on its way.
    let relay = Relay::start(mv.port, Some(b"VTPMMIG1".to_vec())).unwrap();
    // With a return path the source learns that the destination never completed (as a
    // source on a real network learns that its peer is gone).
    let caps = mv.src.vm.hmp("migrate_set_capability return-path on");
    assert!(!caps.contains("rror"), "{caps}");
    let hmp = mv
        .src
        .vm
        .hmp(&format!("migrate -d tcp:127.0.0.1:{}", relay.port));
    assert!(
        relay.wait_cut(Duration::from_secs(300)),
        "the package never came: {hmp}\n{}",
        mv.src.daemon.log_text()
    );
    // The stream was cut at the package: the destination never had it whole.
    assert!(contains(&relay.captured(), b"VTPMMIG1"));
    mv.dst.kill();
    relay.sever();
    assert!(mv.src.daemon.log_text().contains("package of"));
    // QEMU resumes the source VM; its vTPM serves again once the controller aborted.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let info = mv.src.vm.hmp("info migrate");
        if info.contains("failed") || info.contains("cancelled") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{info}\n--- destination daemon ---\n{}\n--- source daemon ---\n{}",
            mv.dst_daemon.log_text(),
            mv.src.daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    check_guest(&mut mv.src.vm, &mv.src.expected);
    assert!(mv
        .bed
        .wait_state(&mv.id, "aborted", Duration::from_secs(30)));
    assert!(
        mv.src
            .daemon
            .log_text()
            .contains("aborted, the source resumes with nothing lost"),
        "{}",
        mv.src.daemon.log_text()
    );
    assert!(mv.src.vm.must("tpm2_getrandom --hex 8").trim().len() == 16);
    // The destination's daemon imported nothing.
    assert!(!tmp.path().join("vm-b/state/instance.key").exists());
    mv.src.vm.shutdown();
}
