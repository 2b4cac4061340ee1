//! Sealed migration between two real daemons (ADR 0010), driven through the guest-driver
//! harness as QEMU drives DEVICE_STATE SAVE and LOAD: two hosts with simulated host TPMs
//! (swtpm) enrolled with the real local CA, and the real migration controller over HTTPS.
//!
//! * A vTPM moves with its NV, PCRs and a loaded key; its vEK certificates are re-issued
//!   under the destination's coprocessor; the source's copy is destroyed and refuses to
//!   serve; no plain snapshot or NV secret crosses.
//! * Every refusal is named, the source keeps serving and loses nothing.
//! * The controller killed right after each step the daemons drive: every migration still
//!   ends committed or aborted, with exactly one live copy.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use guest_driver::VtpmClient;
use openssl::sha::sha256;
use openssl::x509::X509;
use testbed::openssl::ecdsa_p256_verifies;
use testbed::{HostRef, MigrationBed};
use tpm_proto::{commands as c, rc};

const NV_MARKER: u32 = 0x0150_0031;
const RSA_EK_CERT: u32 = 0x01c0_0002;
const CHAIN_FIRST: u32 = 0x01c0_0100;

fn bed(dir: &Path) -> MigrationBed {
    migration_bed(dir)
}

fn daemon(bed: &MigrationBed, host: HostRef<'_>, dir: &Path, incoming: bool) -> Daemon {
    migration_daemon(bed, host, dir, incoming)
}

fn source(bed: &MigrationBed, dir: &Path) -> (Daemon, String) {
    migration_source(bed, dir)
}

/// A [`source`] whose guest has [`prepare`]d its vTPM: the daemon, the instance id, the
/// guest's connection and what it holds.
fn prepared_source(bed: &MigrationBed, dir: &Path) -> (Daemon, String, VtpmClient, Guest) {
    let (src, instance) = source(bed, dir);
    let mut client = src.connect();
    let guest = prepare(&mut client);
    (src, instance, client, guest)
}

fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    openssl::rand::rand_bytes(&mut b).unwrap();
    b
}

/// What the guest left in its vTPM before the move, to check after it.
struct Guest {
    marker: [u8; 32],
    pcr: Vec<u8>,
    key: c::EccPrimary,
}

fn prepare(client: &mut VtpmClient) -> Guest {
    startup(client);
    let marker = random32();
    define_nv(client, NV_MARKER, 32, c::NV_ORDINARY_ATTRS);
    assert_success(
        &run(client, &c::nv_write(NV_MARKER, 0, &marker)),
        "NV_Write",
    );
    assert_success(
        &run(
            client,
            &c::pcr_extend_sha256(16, &sha256(b"before the move")),
        ),
        "PCR_Extend",
    );
    let key = c::parse_create_primary_ecc(&run(client, &c::create_primary_ecc_signing())).unwrap();
    Guest {
        marker,
        pcr: pcr_read(client, 16),
        key,
    }
}

/// Checks that `client`'s vTPM is the guest's: NV, PCRs, and the loaded key still signs.
fn check(client: &mut VtpmClient, guest: &Guest) {
    let resp = run(client, &c::nv_read(NV_MARKER, 32, 0));
    assert_eq!(c::parse_nv_read(&resp).unwrap(), guest.marker, "NV marker");
    assert_eq!(pcr_read(client, 16), guest.pcr, "PCR 16");
    let digest = sha256(b"signed after the move");
    let (r, s) = c::parse_sign_ecdsa(&run(
        client,
        &c::sign_ecdsa_sha256(guest.key.handle, &digest),
    ))
    .expect("the loaded key signs");
    assert!(ecdsa_p256_verifies(
        &guest.key.x,
        &guest.key.y,
        &digest,
        &r,
        &s
    ));
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn sealed_migration_carries_the_vtpm_and_destroys_the_source() {
    let tmp = tempfile::tempdir().unwrap();
    let bed = bed(tmp.path());
    let (src_dir, dst_dir) = (tmp.path().join("vm-a"), tmp.path().join("vm-b"));
    let (mut src, instance, mut a, guest) = prepared_source(&bed, &src_dir);
    let id = bed.authorise(&instance, "vm-1", bed.a(), bed.b()).unwrap();

    let package = a.save_device_state().unwrap();
    assert!(package.starts_with(b"VTPMMIG1"), "not a sealed package");
    assert!(
        !contains(&package, &guest.marker),
        "the NV marker is in the package"
    );
    assert!(
        !contains(&package, b"VTPMSNP1"),
        "a plain snapshot is in the package"
    );
    assert!(src.log_text().contains("package of"), "{}", src.log_text());

    // The destination mirrors host PCRs like any daemon of its host: its platform firmware
    // serves the migrated-in vTPM as a freshly started one.
    std::fs::create_dir_all(&dst_dir).unwrap();
    let mut args = bed.daemon_args(bed.b(), true);
    args.extend(["--mirror-pcrs".to_owned(), "0-7".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dst = Daemon::start_in(&dst_dir, &args);
    let mut b = dst.connect();
    b.load_device_state(&package)
        .unwrap_or_else(|e| panic!("LOAD: {e}\n{}", dst.log_text()));
    // The guest's commands wait for the commit, then find everything.
    check(&mut b, &guest);
    // The platform hierarchy is locked by the destination (the vEKs were re-issued with it
    // opened by the daemon only), and the mirrored PCRs are guarded.
    assert!(
        matches!(
            rc::base(rc_of(&run(
                &mut b,
                &c::hierarchy_change_auth(c::TPM_RH_PLATFORM, &[], b"mine now")
            ))),
            rc::fmt1::BAD_AUTH | rc::fmt1::AUTH_FAIL | rc::fmt1::HIERARCHY
        ),
        "the migrated-in vTPM's platform hierarchy is open"
    );
    assert_eq!(
        rc_of(&run(&mut b, &c::pcr_extend_sha256(0, &[1; 32]))),
        rc::LOCALITY,
        "a mirrored PCR of the migrated-in vTPM is not guarded"
    );
    assert!(bed.wait_state(&id, "source_deleted", Duration::from_secs(30)));
    assert!(dst
        .log_text()
        .contains("committed, this host owns the vTPM"));

    // The vEK certificates now chain through the destination's coprocessor.
    let chain0 = nv_read_all(&mut b, CHAIN_FIRST);
    let b_coprocessor =
        X509::from_pem(&std::fs::read(MigrationBed::coprocessor_pem(bed.b())).unwrap()).unwrap();
    assert_eq!(
        chain0,
        b_coprocessor.to_der().unwrap(),
        "chain[0] is B's coprocessor"
    );
    let ek_cert = X509::from_der(&nv_read_all(&mut b, RSA_EK_CERT)).unwrap();
    assert!(ek_cert
        .verify(&b_coprocessor.public_key().unwrap())
        .unwrap());

    // The source: its files are gone, a tombstone names the move, it serves nothing, and
    // a restart on its directory refuses.
    assert!(wait_until(Duration::from_secs(30), || src
        .log_text()
        .contains("source deleted")));
    let state = src_dir.join("state");
    for f in ["instance.key", "state.vtpm", "state.b.vtpm", "state.gen"] {
        assert!(!state.join(f).exists(), "{f} left on the source");
    }
    let tombstone = std::fs::read_to_string(state.join("migrated")).unwrap();
    assert!(
        tombstone.contains("host-b") && tombstone.contains(&id),
        "{tombstone}"
    );
    drop(a);
    let mut a = src.connect();
    assert_eq!(rc_of(&run(&mut a, &c::get_random(8))), rc::FAILURE);
    drop(a);
    src.stop();
    let err = src.restart().unwrap_err().to_string();
    assert!(err.contains("is gone") && err.contains("host-b"), "{err}");
}

/// Host A's TPM quotes for migration `id` over a nonce that is not the controller's: the
/// controller's answer code.
fn stale_quote(bed: &MigrationBed, id: &str) -> String {
    use base64::Engine;
    use migration::api::{attestation_data, AttestRequest, Role, QUOTED_PCRS};
    let host = bed.a();
    let dir = vtpm_host::HostDir::open(host.host_dir).unwrap();
    let client = vtpm_migrate::host::client(
        &bed.controller.url,
        &std::fs::read(&bed.controller.cert).unwrap(),
        &dir,
        &vtpm_migrate::cli::tpm_host_key(&host.host_tpm.tcti()),
    )
    .unwrap();
    let mid: migration::MigrationId = id.parse().unwrap();
    let key = dir.migration_public().unwrap();
    let data = attestation_data(&mid, Role::Source, &random32(), &key);
    let mut tpm = host_tpm::HostTpm::connect(&host.host_tpm.tcti()).unwrap();
    let quote = tpm.quote(&dir.aik().unwrap(), &QUOTED_PCRS, &data).unwrap();
    drop(tpm);
    let b64 = base64::engine::general_purpose::STANDARD;
    let req = AttestRequest {
        role: Role::Source,
        aik_cert: String::from_utf8(dir.host_aik_cert().unwrap().to_pem().unwrap()).unwrap(),
        attest: b64.encode(&quote.attest),
        signature: b64.encode(&quote.signature),
        migration_key: hex::encode(&key),
    };
    let err = client.attest(&mid, &req).unwrap_err();
    err.code().unwrap_or("transport").to_owned()
}

/// Counts `needle` in the daemon's log.
fn logged(d: &Daemon, needle: &str) -> usize {
    d.log_text().matches(needle).count()
}

/// LOADs `bytes` into `d` through `client` and expects a refusal named `code`.
fn refused(d: &Daemon, client: &mut VtpmClient, bytes: &[u8], code: &str) {
    let needle = format!("package refused ({code})");
    let before = logged(d, &needle);
    assert!(
        client.load_device_state(bytes).is_err(),
        "LOAD accepted, expected {code}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || logged(d, &needle) > before),
        "not refused with {code}:\n{}",
        d.log_text()
    );
}

fn state_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    ["instance.key", "state.vtpm", "state.b.vtpm", "state.gen"]
        .iter()
        .map(|f| {
            (
                f.to_string(),
                std::fs::read(dir.join(f)).unwrap_or_default(),
            )
        })
        .collect()
}

/// The source resumes after a failed migration as QEMU resumes it (the queue started again
/// where it stopped); its commands wait until the daemon has the controller abort the
/// migration, then find everything.
fn resume_and_check(a: &mut VtpmClient, guest: &Guest) {
    a.resume_queue().unwrap();
    check(a, guest);
}

/// A SAVE that must release nothing: it fails, the source logs `why`, and once its queue
/// resumes it serves the guest's vTPM as before.
fn save_refused(src: &Daemon, a: &mut VtpmClient, guest: &Guest, why: &str) {
    assert!(a.save_device_state().is_err());
    assert!(src.log_text().contains(why), "{}", src.log_text());
    resume_and_check(a, guest);
}

#[test]
fn every_refusal_is_named_and_the_source_keeps_serving_with_nothing_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let bed = bed(tmp.path());
    let a_dir = tmp.path().join("vm-a");
    let (mut src, instance, mut a, guest) = prepared_source(&bed, &a_dir);
    let refuser = daemon(&bed, bed.b(), &tmp.path().join("in-b"), true);
    let mut r = refuser.connect();

    // A plain snapshot of an earlier build, and garbage.
    let plain = migration::snapshot::encode(&coprocessor::EngineState {
        permanent: vec![1; 100],
        volatile: vec![2; 100],
    });
    refused(&refuser, &mut r, &plain, "plain_snapshot");
    refused(
        &refuser,
        &mut r,
        &random32().repeat(40),
        "malformed_package",
    );

    // Garbage LOADed into a daemon that holds a vTPM: refused, its files byte-identical, it
    // serves on.
    let before = state_files(&a_dir.join("state"));
    assert!(a.load_device_state(&random32().repeat(40)).is_err());
    assert!(
        src.log_text().contains("not_incoming"),
        "{}",
        src.log_text()
    );
    assert_eq!(state_files(&a_dir.join("state")), before);
    resume_and_check(&mut a, &guest);

    // A host whose quote does not verify gets no ticket: SAVE fails, the source serves on.
    let m0 = bed
        .start_migration(&instance, "vm-1", bed.a(), bed.b())
        .unwrap();
    bed.controller
        .attest(
            bed.b().host_dir,
            &bed.b().host_tpm.tcti(),
            &m0,
            "destination",
        )
        .unwrap();
    assert_eq!(stale_quote(&bed, &m0), "quote_invalid");
    save_refused(&src, &mut a, &guest, "no package released");
    bed.controller
        .operator("abort", &["--migration", &m0])
        .unwrap();

    // A released package, byte-flipped (a dense sample: the header and ticket byte by byte,
    // the rest every 53rd byte, the chain and signature every 7th), sent to another host,
    // and once the migration was aborted: each refused, the source loses nothing.
    let m1 = bed.authorise(&instance, "vm-1", bed.a(), bed.b()).unwrap();
    let p1 = a.save_device_state().unwrap();
    let n = p1.len();
    let positions: Vec<usize> = (0..n)
        .filter(|&i| i < 400 || i % 53 == 0 || (i + 1500 > n && i % 7 == 0))
        .collect();
    let flips_before = logged(&refuser, "package refused");
    for &i in &positions {
        let mut bad = p1.clone();
        bad[i] ^= 1 << (i % 8);
        assert!(
            r.load_device_state(&bad).is_err(),
            "byte {i} flipped: accepted"
        );
    }
    assert!(wait_until(Duration::from_secs(10), || logged(
        &refuser,
        "package refused"
    ) >= flips_before
        + positions.len()));
    let elsewhere = daemon(&bed, bed.a(), &tmp.path().join("in-a"), true);
    refused(
        &elsewhere,
        &mut elsewhere.connect(),
        &p1,
        "wrong_destination",
    );
    resume_and_check(&mut a, &guest);
    assert!(bed.wait_state(&m1, "aborted", Duration::from_secs(10)));
    refused(&refuser, &mut r, &p1, "claim_refused");

    // The move itself, then the same package again: refused.
    let m2 = bed.authorise(&instance, "vm-1", bed.a(), bed.b()).unwrap();
    let p2 = a.save_device_state().unwrap();
    let b_dir = tmp.path().join("vm-b");
    let dst = daemon(&bed, bed.b(), &b_dir, true);
    let mut b = dst.connect();
    b.load_device_state(&p2)
        .unwrap_or_else(|e| panic!("LOAD: {e}\n{}", dst.log_text()));
    check(&mut b, &guest);
    assert!(bed.wait_state(&m2, "source_deleted", Duration::from_secs(30)));
    let again = daemon(&bed, bed.b(), &tmp.path().join("in-b2"), true);
    let mut g = again.connect();
    refused(&again, &mut g, &p2, "replay");

    // Back to host A (into its old, tombstoned directory), then the older package of this
    // vTPM (epoch 0) offered to host B once more: refused.
    drop(a);
    src.stop();
    let m3 = bed.authorise(&instance, "vm-1", bed.b(), bed.a()).unwrap();
    let p3 = b.save_device_state().unwrap();
    let mut back = daemon(&bed, bed.a(), &a_dir, true);
    let mut a = back.connect();
    a.load_device_state(&p3).unwrap();
    check(&mut a, &guest);
    assert!(bed.wait_state(&m3, "source_deleted", Duration::from_secs(30)));
    refused(&again, &mut g, &p2, "replay");

    // Signed by a coprocessor whose certificate was revoked after it sealed: refused.
    let m4 = bed.authorise(&instance, "vm-1", bed.a(), bed.b()).unwrap();
    let p4 = a.save_device_state().unwrap();
    let coprocessor = MigrationBed::coprocessor_pem(bed.a()).display().to_string();
    bed.chain
        .ca
        .command(&["revoke", "--cert", &coprocessor, "--reason", "test"])
        .unwrap();
    refused(&refuser, &mut r, &p4, "revoked");
    resume_and_check(&mut a, &guest);
    assert!(bed.wait_state(&m4, "aborted", Duration::from_secs(10)));
    // Still host A's, at the epoch of the last move.
    let owner = bed.controller.operator("list", &[]).unwrap();
    assert!(owner.contains("aborted"), "{owner}");
    back.stop();
    back.restart().unwrap();
    let mut a = back.connect();
    check_after_restart(&mut a, &guest);
    drop(b);
}

/// After a clean restart the TPM resumes its state: NV and PCRs (the loaded key too).
fn check_after_restart(client: &mut VtpmClient, guest: &Guest) {
    let resp = run(client, &c::nv_read(NV_MARKER, 32, 0));
    assert_eq!(c::parse_nv_read(&resp).unwrap(), guest.marker);
    assert_eq!(pcr_read(client, 16), guest.pcr);
}

#[test]
fn without_a_controller_a_daemon_refuses_device_state_both_ways() {
    let (_dir, d, mut client) = start_fresh(&[]);
    assert!(client.save_device_state().is_err());
    drop(client);
    let plain = migration::snapshot::encode(&coprocessor::EngineState {
        permanent: vec![1; 10],
        volatile: vec![2; 10],
    });
    let mut other = d.connect();
    assert!(other.load_device_state(&plain).is_err());
    drop(other);
    assert!(
        d.log_text().contains("sealed migration is not configured"),
        "{}",
        d.log_text()
    );
}

/// Restarts the controller whenever it dies, until `stop`; a restart with the crash hook
/// set for the next step is asked through `hook`.
struct Supervisor {
    hook: Mutex<Option<String>>,
    stop: std::sync::atomic::AtomicBool,
    restarts: std::sync::atomic::AtomicUsize,
}

#[test]
fn the_controller_killed_after_each_step_every_migration_ends_with_one_live_copy() {
    use std::sync::atomic::Ordering;
    let tmp = tempfile::tempdir().unwrap();
    let bed = bed(tmp.path());
    let first = tmp.path().join("vm-0");
    let (src, instance, mut client, guest) = prepared_source(&bed, &first);
    let sup = Arc::new(Supervisor {
        hook: Mutex::new(None),
        stop: false.into(),
        restarts: 0.into(),
    });
    let steps = [
        "sealed",
        "claimed",
        "imported",
        "committed",
        "source_deleted",
    ];
    /// Stops the supervisor when the steps end, also by a panic: the scope joins it, and a
    /// supervisor left running would turn a failed step into a test that never ends.
    struct StopOnDrop(Arc<Supervisor>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    std::thread::scope(|s| {
        let _stop = StopOnDrop(sup.clone());
        let ctl = &bed.controller;
        let supervisor = sup.clone();
        s.spawn(move || {
            while !supervisor.stop.load(Ordering::SeqCst) {
                let hook = supervisor.hook.lock().unwrap().take();
                if let Some(step) = hook {
                    ctl.kill();
                    ctl.serve(&[("VTPM_MIGRATE_CRASH_AFTER", &step)]).unwrap();
                    supervisor.restarts.fetch_add(1, Ordering::SeqCst);
                } else if ctl.exited().is_some() || !ctl.running() {
                    ctl.serve(&[]).unwrap();
                    supervisor.restarts.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let mut src = src;
        let hosts = [bed.a(), bed.b()];
        for (i, step) in steps.iter().enumerate() {
            let (from, to) = (hosts[i % 2], hosts[(i + 1) % 2]);
            let id = bed.authorise(&instance, "vm-1", from, to).unwrap();
            let restarts = sup.restarts.load(Ordering::SeqCst);
            *sup.hook.lock().unwrap() = Some(step.to_string());
            assert!(wait_until(Duration::from_secs(20), || sup
                .restarts
                .load(Ordering::SeqCst)
                > restarts));
            let package = client.save_device_state().unwrap();
            let dir = tmp.path().join(format!("vm-{}", i + 1));
            let dst = daemon(&bed, to, &dir, true);
            let mut next = dst.connect();
            next.load_device_state(&package).unwrap_or_else(|e| {
                panic!("LOAD after a crash at {step}: {e}\n{}", dst.log_text())
            });
            check(&mut next, &guest);
            assert!(
                bed.wait_state(&id, "source_deleted", Duration::from_secs(60)),
                "crash at {step}: {}",
                bed.status(&id).unwrap_or_default()
            );
            assert!(
                sup.restarts.load(Ordering::SeqCst) > restarts + 1,
                "the controller did not crash at {step}"
            );
            // One live copy: the destination serves, the source refuses, its files gone.
            drop(client);
            let mut old = src.connect();
            assert_eq!(rc_of(&run(&mut old, &c::get_random(8))), rc::FAILURE);
            assert!(!src.state.join("instance.key").exists());
            drop(old);
            src = dst;
            client = next;
        }
    });
}

#[test]
fn an_offline_move_carries_the_same_sealed_package_through_the_same_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let bed = bed(tmp.path());
    let a_dir = tmp.path().join("vm-a");
    let (mut src, instance, a, guest) = prepared_source(&bed, &a_dir);
    drop(a);
    src.stop();
    let id = bed.authorise(&instance, "vm-1", bed.a(), bed.b()).unwrap();
    let pkg = tmp.path().join("vm-1.vtpmmig");
    let a_state = a_dir.join("state").display().to_string();
    let out = bed
        .host_cli(
            "export",
            bed.a(),
            &["--state-dir", &a_state, "--out", &pkg.display().to_string()],
        )
        .unwrap();
    assert_eq!(out.lines().next().unwrap_or_default().trim(), id);
    let package = std::fs::read(&pkg).unwrap();
    assert!(package.starts_with(b"VTPMMIG1"));
    assert!(
        !contains(&package, &guest.marker),
        "the NV marker is in the package file"
    );
    // The exported instance is held: a daemon started on it serves nothing meanwhile.
    assert!(a_dir.join("state/migration.pending").exists());

    let b_dir = tmp.path().join("vm-b");
    let ca = bed.chain.ca.url.clone();
    let import = |state_dir: &Path| {
        bed.host_cli(
            "import",
            bed.b(),
            &[
                "--state-dir",
                &state_dir.display().to_string(),
                "--in",
                &pkg.display().to_string(),
                "--ca",
                &ca,
            ],
        )
    };
    let out = import(&b_dir.join("state")).unwrap();
    assert!(out.contains("committed"), "{out}");
    // Importing the same file again is refused.
    let again = import(&tmp.path().join("vm-b2/state")).unwrap_err();
    assert!(again.contains("package refused (replay)"), "{again}");
    let out = bed
        .host_cli("settle", bed.a(), &["--state-dir", &a_state])
        .unwrap();
    assert!(out.contains("committed"), "{out}");
    assert!(a_dir.join("state/migrated").exists());
    assert!(!a_dir.join("state/instance.key").exists());
    assert!(bed.wait_state(&id, "source_deleted", Duration::from_secs(10)));

    // The destination's daemon resumes the TPM where the source stopped.
    let dst = daemon(&bed, bed.b(), &b_dir, false);
    let mut b = dst.connect();
    check(&mut b, &guest);
    let err = src.restart().unwrap_err().to_string();
    assert!(err.contains("is gone"), "{err}");
}

/// A daemon of `host` with sealed migration and `extra` options.
fn daemon_with(
    bed: &MigrationBed,
    host: HostRef<'_>,
    dir: &Path,
    incoming: bool,
    extra: &[&str],
) -> Daemon {
    std::fs::create_dir_all(dir).unwrap();
    let mut args = bed.daemon_args(host, incoming);
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start_in(dir, &args)
}

/// A daemon of `host` for VM `vm` (`--vm-id`), with sealed migration.
fn vm_daemon(
    bed: &MigrationBed,
    host: HostRef<'_>,
    dir: &Path,
    incoming: bool,
    vm: &str,
) -> Daemon {
    daemon_with(bed, host, dir, incoming, &["--vm-id", vm])
}

// Issue 11, item 7 across hosts: the controller's ticket names the VM; a daemon launched with
// --vm-id releases and takes in only that VM's vTPM, and the instance arrives bound to it.
#[test]
fn a_vm_bound_daemon_moves_only_its_own_vms_vtpm() {
    let tmp = tempfile::tempdir().unwrap();
    let bed = bed(tmp.path());
    let a_dir = tmp.path().join("vm-a");
    bed.a().provision(&a_dir.join("state")).unwrap();
    let instance = bed.register(&a_dir.join("state"), bed.a()).unwrap();
    let src = vm_daemon(&bed, bed.a(), &a_dir, false, "vm-1");
    let mut a = src.connect();
    let guest = prepare(&mut a);

    // A ticket for another VM: the source releases nothing and serves on.
    let wrong = bed.authorise(&instance, "vm-2", bed.a(), bed.b()).unwrap();
    save_refused(
        &src,
        &mut a,
        &guest,
        "the ticket moves VM \"vm-2\"'s vTPM, this daemon serves VM \"vm-1\"",
    );
    bed.controller
        .operator("abort", &["--migration", &wrong])
        .unwrap();

    // The right ticket; a destination launched for another VM refuses the package before
    // claiming it; the one for this VM takes it in.
    let m = bed.authorise(&instance, "vm-1", bed.a(), bed.b()).unwrap();
    let package = a.save_device_state().unwrap();
    let other = vm_daemon(&bed, bed.b(), &tmp.path().join("in-other"), true, "vm-9");
    refused(&other, &mut other.connect(), &package, "wrong_vm");
    let b_dir = tmp.path().join("vm-b");
    let mut dst = vm_daemon(&bed, bed.b(), &b_dir, true, "vm-1");
    let mut b = dst.connect();
    b.load_device_state(&package)
        .unwrap_or_else(|e| panic!("LOAD: {e}\n{}", dst.log_text()));
    check(&mut b, &guest);
    assert!(bed.wait_state(&m, "source_deleted", Duration::from_secs(30)));
    drop(b);
    dst.stop();

    // The moved instance is VM vm-1's: a daemon for another VM refuses its directory.
    let mut args = bed.daemon_args(bed.b(), false);
    args.extend(["--vm-id".to_owned(), "vm-9".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let refused_start = testbed::DaemonProcess::start(Path::new(DAEMON), &b_dir, &args);
    let log = std::fs::read_to_string(b_dir.join("daemon.log")).unwrap_or_default();
    assert!(
        refused_start.is_err(),
        "a daemon for vm-9 served vm-1's vTPM"
    );
    assert!(log.contains("vm-1"), "{log}");
    dst.respawn();
    check_after_restart(&mut dst.connect(), &guest);
}

/// The pipe timeout the hostile-VMM test gives its daemons, and what it allows on top.
const PIPE_TIMEOUT: Duration = Duration::from_secs(2);
const SLACK: Duration = Duration::from_secs(10);

fn pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    nix::unistd::pipe().unwrap()
}

/// Starts a LOAD through a new pipe, as the VMM does on the destination: the write end.
fn start_load(client: &mut VtpmClient) -> std::os::fd::OwnedFd {
    use vhost::vhost_user::message::{
        VhostTransferStateDirection as Dir, VhostTransferStatePhase as Phase,
    };
    let (read_end, write_end) = pipe();
    client
        .set_device_state_fd_raw(Dir::LOAD, Phase::STOPPED, read_end)
        .unwrap();
    write_end
}

/// CHECK_DEVICE_STATE fails, within the pipe timeout and its slack, and `d` logged `why`.
fn check_fails(d: &Daemon, client: &mut VtpmClient, why: &str) {
    let started = std::time::Instant::now();
    assert!(
        client.check_device_state_raw().is_err(),
        "CHECK_DEVICE_STATE succeeded, expected: {why}"
    );
    assert!(
        started.elapsed() < PIPE_TIMEOUT + SLACK,
        "CHECK_DEVICE_STATE took {:?}",
        started.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(5), || d.log_text().contains(why)),
        "not logged: {why}\n{}",
        d.log_text()
    );
}

// Issue 11, hostile frontend: a VMM that sends DEVICE_STATE streams that are garbage, too
// large, never end or are never read, and transfers the daemon is in no phase for, over a
// real vhost-user connection. Every one ends in an error within the pipe timeout, the
// connection stays usable, and nothing is lost: the source serves its vTPM on, the
// destination still takes the real package afterwards.
#[test]
fn a_hostile_vmm_gets_errors_within_the_pipe_timeout_and_nothing_is_lost() {
    use vhost::vhost_user::message::{
        VhostTransferStateDirection as Dir, VhostTransferStatePhase as Phase,
    };
    let timeout = PIPE_TIMEOUT.as_secs().to_string();
    let quick = ["--migration-pipe-timeout", timeout.as_str()];
    let tmp = tempfile::tempdir().unwrap();
    let bed = bed(tmp.path());
    let a_dir = tmp.path().join("vm-a");
    bed.a().provision(&a_dir.join("state")).unwrap();
    let instance = bed.register(&a_dir.join("state"), bed.a()).unwrap();
    let src = daemon_with(&bed, bed.a(), &a_dir, false, &quick);
    let mut a = src.connect();
    let guest = prepare(&mut a);

    // CHECK_DEVICE_STATE with no transfer.
    assert!(a.check_device_state_raw().is_err());

    // SAVE into a pipe the VMM never reads (and never closes): the package does not fit
    // in the pipe, the transfer fails after the timeout; the migration is aborted and the
    // source resumes with everything.
    let m = bed.authorise(&instance, "vm-1", bed.a(), bed.b()).unwrap();
    a.stop_queue().unwrap();
    let (unread, write_end) = pipe();
    nix::fcntl::fcntl(&write_end, nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096)).unwrap();
    a.set_device_state_fd_raw(Dir::SAVE, Phase::STOPPED, write_end)
        .unwrap();
    check_fails(&src, &mut a, "the transfer pipe stayed idle for 2 s");
    drop(unread);
    bed.controller
        .operator("abort", &["--migration", &m])
        .unwrap();
    resume_and_check(&mut a, &guest);

    // A LOAD into the source, which holds a live vTPM: refused, its files unchanged.
    let before = state_files(&a_dir.join("state"));
    a.stop_queue().unwrap();
    let write_end = start_load(&mut a);
    std::fs::File::from(write_end)
        .write_all(&random32().repeat(10))
        .unwrap();
    check_fails(&src, &mut a, "not_incoming");
    assert_eq!(state_files(&a_dir.join("state")), before);
    resume_and_check(&mut a, &guest);

    let b_dir = tmp.path().join("vm-b");
    let dst = daemon_with(&bed, bed.b(), &b_dir, true, &quick);
    let mut b = dst.connect();
    b.stop_queue().unwrap();

    // SAVE from a destination that holds nothing yet.
    let (_read_end, write_end) = pipe();
    b.set_device_state_fd_raw(Dir::SAVE, Phase::STOPPED, write_end)
        .unwrap();
    check_fails(&dst, &mut b, "not this daemon's to release");

    // A LOAD stream larger than any package: read up to the limit, then refused.
    let write_end = start_load(&mut b);
    let flood = std::thread::spawn(move || {
        let chunk = vec![0x5a_u8; 1 << 20];
        let mut w = std::fs::File::from(write_end);
        let mut sent = 0u64;
        // The daemon stops reading after the limit and closes its end: EPIPE ends this.
        while sent <= migration::MAX_DEVICE_STATE + (1 << 20) {
            if w.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len() as u64;
        }
    });
    check_fails(&dst, &mut b, "device state larger than");
    flood.join().unwrap();

    // A LOAD whose pipe is never closed: a few bytes, then silence.
    let write_end = start_load(&mut b);
    let mut silent = std::fs::File::from(write_end);
    silent.write_all(b"half a package").unwrap();
    check_fails(&dst, &mut b, "the transfer pipe stayed idle for 2 s");
    drop(silent);

    // Two transfers without a CHECK between them, the first one garbage: the second one's
    // result is what CHECK reports.
    drop(start_load(&mut b));
    let write_end = start_load(&mut b);
    std::fs::File::from(write_end)
        .write_all(&random32().repeat(40))
        .unwrap();
    check_fails(&dst, &mut b, "package refused (malformed_package)");

    // After all that, the same connection carries the real migration.
    let m = bed.authorise(&instance, "vm-1", bed.a(), bed.b()).unwrap();
    let package = a.save_device_state().unwrap();
    b.load_device_state(&package)
        .unwrap_or_else(|e| panic!("LOAD: {e}\n{}", dst.log_text()));
    check(&mut b, &guest);
    assert!(bed.wait_state(&m, "source_deleted", Duration::from_secs(30)));
}
