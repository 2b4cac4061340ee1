//! `vtpm-bench migration`: what sealed migration (ADR 0010) costs.
//!
//! 1. The package, in this process, with the keys of two hosts whose simulated host TPMs
//!    (swtpm) wrapped them (unwrapped once, as a daemon does at start): seal (ECDH,
//!    HKDF, AES-256-GCM, the coprocessor's signature), verify (ticket, binding, chain,
//!    signature), decrypt, import into libtpms, and the vEK re-issue, each and in total.
//! 2. Two real daemons under the real controller and CA: DEVICE_STATE SAVE on the source
//!    (ticket, seal, record, "sealed"), LOAD on the destination (checks, revocation at the
//!    CA, claim, decrypt, import, re-chain, durable), and the time until the destination
//!    serves (the commit), over migrations back and forth.
//! 3. With `--guest-runs N` (after scripts/setup.sh): QEMU's downtime of a live migration
//!    of the same guest with our vTPM and without a TPM.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coprocessor::libtpms::LibtpmsEngine;
use coprocessor::Coprocessor;
use guest_driver::{ClientOptions, VtpmClient};
use identity::provision::provision_ek;
use identity::Validity;
use migration::host::HostMaterial;
use migration::seal::{self, Trust};
use migration::store::SharedStore;
use migration::ticket::{self, MigrationId, Ticket};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use testbed::{free_port, DaemonProcess, Env, MigrationBed, TpmFrontend, Vm};
use tpm_proto::commands as c;
use vtpm_state::keys::{HostKey, InstanceId};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let pct = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1e3;
    (pct(0.5), pct(0.99))
}

fn row(what: &str, v: Vec<Duration>) {
    let n = v.len();
    let (p50, p99) = stats(v);
    println!("| {what} | {n} | {p50:.2} | {p99:.2} |");
}

fn tpm_key(tcti: &str) -> HostKey {
    HostKey::Tpm {
        tcti: tcti.to_owned(),
        pcrs: Vec::new(),
        auth: None,
    }
}

/// Runs the benchmark: `runs` packages in process, `moves` migrations between daemons,
/// `guest_runs` guest migrations of each kind (0: none).
pub fn run(bin_dir: &Path, runs: usize, moves: usize, guest_runs: usize) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bed = MigrationBed::start(bin_dir, tmp.path()).expect("two hosts, the CA, the controller");
    println!("\n## Sealed migration (ADR 0010)\n");
    package_section(&bed, runs);
    daemon_section(&bed, bin_dir, tmp.path(), moves);
    if guest_runs > 0 {
        guest_section(&bed, tmp.path(), guest_runs);
    }
}

fn package_section(bed: &MigrationBed, runs: usize) {
    let a = HostMaterial::load(bed.a().host_dir, &tpm_key(&bed.a().host_tpm.tcti()))
        .expect("host A's keys");
    let b = HostMaterial::load(bed.b().host_dir, &tpm_key(&bed.b().host_tpm.tcti()))
        .expect("host B's keys");
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let controller_key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let controller = self_signed(&controller_key);
    let trust = Trust {
        ca_root: b.ca_root.clone(),
        controller,
    };
    let me = b.recipient().unwrap();
    // An instance with a little of everything: started, a key, an NV index, a PCR.
    let store = SharedStore::memory();
    let mut engine = LibtpmsEngine::start(Box::new(store.clone())).expect("libtpms");
    for cmd in [
        c::startup(c::TPM_SU_CLEAR),
        c::create_primary_ecc_signing(),
        c::nv_define_space(0x0150_0001, 64, c::NV_ORDINARY_ATTRS),
        c::nv_write(0x0150_0001, 0, &[7; 64]),
        c::pcr_extend_sha256(16, &[1; 32]),
    ] {
        let mut cmd = cmd;
        engine.execute(&mut cmd).expect("set-up command");
    }
    let state = engine.export_state().unwrap();
    let chain = &a.credentials.chain;
    let (mut t_seal, mut t_verify, mut t_open, mut t_import, mut t_total, mut t_rechain) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut size = 0;
    for i in 0..runs {
        let t = Ticket {
            migration: MigrationId::random().unwrap(),
            instance: InstanceId([9; 16]),
            vm: "vm-1".into(),
            source: a.host_id.clone(),
            destination: b.host_id.clone(),
            destination_key: me.migration_key.clone().try_into().unwrap(),
            epoch: i as u64,
            issued_at: now(),
            expires_at: now() + 600,
        };
        let signed = ticket::sign(&t, &controller_key).unwrap();
        let start = Instant::now();
        let package = seal::seal(&signed, &state, &a.credentials.key, chain).unwrap();
        let sealed = start.elapsed();
        size = package.len();
        let t1 = Instant::now();
        let verified = seal::verify(&package, &trust, &me, now(), None).unwrap();
        let checked = t1.elapsed();
        let t2 = Instant::now();
        let opened = seal::open(&verified, &b.migration_key).unwrap();
        let decrypted = t2.elapsed();
        let t3 = Instant::now();
        engine.import_state(&opened).unwrap();
        let imported = t3.elapsed();
        t_total.push(start.elapsed());
        t_seal.push(sealed);
        t_verify.push(checked);
        t_open.push(decrypted);
        t_import.push(imported);
        if i < runs.min(20) {
            let t4 = Instant::now();
            provision_ek(
                &mut engine,
                &b.credentials.key,
                &b.credentials.chain[0],
                &b.credentials.chain[1..],
                &Validity::starting_now(Duration::from_secs(86_400)),
            )
            .unwrap();
            t_rechain.push(t4.elapsed());
        }
    }
    println!(
        "### One package, in process ({} KiB: permanent {} + volatile {} bytes of libtpms state)\n",
        size / 1024,
        state.permanent.len(),
        state.volatile.len()
    );
    println!("| step | n | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|");
    row(
        "seal (ECDH, HKDF, AES-256-GCM, coprocessor signature)",
        t_seal,
    );
    row(
        "verify (ticket, binding, epoch, chain to the CA root, signature)",
        t_verify,
    );
    row("decrypt (ECDH with the migration key, AES-256-GCM)", t_open);
    row("import into libtpms", t_import);
    row("**seal + verify + decrypt + import**", t_total);
    row("re-issue both vEK certificates (`provision_ek`)", t_rechain);
    drop(engine);
}

fn self_signed(key: &PKey<openssl::pkey::Private>) -> openssl::x509::X509 {
    let mut name = openssl::x509::X509Name::builder().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, "bench controller")
        .unwrap();
    let name = name.build();
    let mut b = openssl::x509::X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(key).unwrap();
    let (nb, na) = (
        openssl::asn1::Asn1Time::days_from_now(0).unwrap(),
        openssl::asn1::Asn1Time::days_from_now(1).unwrap(),
    );
    b.set_not_before(&nb).unwrap();
    b.set_not_after(&na).unwrap();
    b.sign(key, openssl::hash::MessageDigest::sha256()).unwrap();
    b.build()
}

fn daemon(
    bed: &MigrationBed,
    bin_dir: &Path,
    host: testbed::HostRef<'_>,
    dir: &Path,
    incoming: bool,
) -> DaemonProcess {
    std::fs::create_dir_all(dir).unwrap();
    let mut args = vec!["--log-level".to_owned(), "warn".into()];
    args.extend(bed.daemon_args(host, incoming));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    DaemonProcess::start(&bin_dir.join("vhost-vtpm"), dir, &args).expect("start vhost-vtpm")
}

fn daemon_section(bed: &MigrationBed, bin_dir: &Path, dir: &Path, moves: usize) {
    let first = dir.join("vm-0");
    bed.a().provision(&first.join("state")).unwrap();
    let instance = bed.register(&first.join("state"), bed.a()).unwrap();
    let mut src = daemon(bed, bin_dir, bed.a(), &first, false);
    let mut client = VtpmClient::connect(&src.socket, ClientOptions::default()).unwrap();
    let cmd = c::startup(c::TPM_SU_CLEAR);
    client.transact(&cmd).unwrap();
    let hosts = [bed.a(), bed.b()];
    let (mut save, mut load, mut serving) = (vec![], vec![], vec![]);
    for i in 0..moves {
        let (from, to) = (hosts[i % 2], hosts[(i + 1) % 2]);
        bed.authorise(&instance, "vm-1", from, to).unwrap();
        let next_dir = dir.join(format!("vm-{}", i + 1));
        let dst = daemon(bed, bin_dir, to, &next_dir, true);
        let mut next = VtpmClient::connect(&dst.socket, ClientOptions::default()).unwrap();
        let t0 = Instant::now();
        let package = client.save_device_state().unwrap();
        save.push(t0.elapsed());
        let t1 = Instant::now();
        next.load_device_state(&package).unwrap();
        load.push(t1.elapsed());
        next.transact(&c::get_random(8)).unwrap();
        serving.push(t1.elapsed());
        drop(client);
        drop(src);
        src = dst;
        client = next;
    }
    drop(client);
    drop(src);
    println!("\n### Between two daemons (real controller and CA over HTTPS on loopback)\n");
    println!("| step | n | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|");
    row(
        "SAVE on the source (ticket, seal, record, \"sealed\")",
        save,
    );
    row(
        "LOAD on the destination (checks, revocation, claim, decrypt, import, re-chain, durable)",
        load,
    );
    row(
        "LOAD until the destination serves (+ \"imported\", commit)",
        serving,
    );
}

/// `info migrate`'s downtime in ms.
fn downtime(info: &str) -> f64 {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("downtime:"))
        .and_then(|v| v.trim().trim_end_matches("ms").trim().parse().ok())
        .unwrap_or(f64::NAN)
}

fn guest_section(bed: &MigrationBed, dir: &Path, runs: usize) {
    let env = Env::load();
    let mut with_vtpm = Vec::new();
    let mut without = Vec::new();
    for i in 0..runs {
        // Without a TPM.
        let mut vm = Vm::boot_any(&env, &TpmFrontend::None);
        let port = free_port().unwrap();
        let mut dst = Vm::incoming_tcp(&env, &TpmFrontend::None, port);
        let info = vm.migrate_tcp(port, Duration::from_secs(300)).unwrap();
        without.push(downtime(&info));
        dst.wait_migrated(Duration::from_secs(240)).unwrap();
        dst.shutdown();
        drop(vm);

        // With our vTPM, sealed.
        let src_dir = dir.join(format!("guest-{i}-a"));
        bed.a().provision(&src_dir.join("state")).unwrap();
        let instance = bed.register(&src_dir.join("state"), bed.a()).unwrap();
        let src = daemon(bed, env.daemon.parent().unwrap(), bed.a(), &src_dir, false);
        let mut vm = Vm::boot(&env, &TpmFrontend::VhostUser(src.socket.clone()));
        vm.must("tpm2_getrandom --hex 8");
        bed.authorise(&instance, &format!("guest-{i}"), bed.a(), bed.b())
            .unwrap();
        let dst_daemon = daemon(
            bed,
            env.daemon.parent().unwrap(),
            bed.b(),
            &dir.join(format!("guest-{i}-b")),
            true,
        );
        let port = free_port().unwrap();
        let mut dst = Vm::incoming_tcp(
            &env,
            &TpmFrontend::VhostUser(dst_daemon.socket.clone()),
            port,
        );
        let info = vm.migrate_tcp(port, Duration::from_secs(300)).unwrap();
        with_vtpm.push(downtime(&info));
        dst.wait_migrated(Duration::from_secs(240)).unwrap();
        dst.must("tpm2_getrandom --hex 8");
        dst.shutdown();
        drop(vm);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, b) = (median(without.clone()), median(with_vtpm.clone()));
    println!("\n### QEMU's downtime of a live migration (`info migrate`, median of {runs})\n");
    println!("| guest | downtime ms (runs) | median ms |");
    println!("|---|---|---:|");
    println!("| no TPM | {without:?} | {a:.0} |");
    println!("| our vTPM, sealed | {with_vtpm:?} | {b:.0} |");
    println!("| **added by the vTPM** | | **{:.0}** |", b - a);
}
