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

use anyhow::{anyhow, bail, ensure, Context, Result};
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

/// p50 and p99 (ms) of `v`, which must not be empty.
fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let pct = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1e3;
    (pct(0.5), pct(0.99))
}

/// Prints one table row; a row without samples is an error (nothing was measured).
fn row(what: &str, v: Vec<Duration>) -> Result<()> {
    ensure!(!v.is_empty(), "{what}: no samples");
    let n = v.len();
    let (p50, p99) = stats(v);
    println!("| {what} | {n} | {p50:.2} | {p99:.2} |");
    Ok(())
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
pub fn run(bin_dir: &Path, runs: usize, moves: usize, guest_runs: usize) -> Result<()> {
    let tmp = tempfile::tempdir().context("tempdir")?;
    let bed = MigrationBed::start(bin_dir, tmp.path())
        .context("start two hosts, the CA, the controller")?;
    println!("\n## Sealed migration (ADR 0010)\n");
    package_section(&bed, runs).context("one package, in process")?;
    daemon_section(&bed, bin_dir, tmp.path(), moves).context("between two daemons")?;
    if guest_runs > 0 {
        guest_section(&bed, tmp.path(), guest_runs).context("guest migrations")?;
    }
    Ok(())
}

fn package_section(bed: &MigrationBed, runs: usize) -> Result<()> {
    let a = HostMaterial::load(bed.a().host_dir, &tpm_key(&bed.a().host_tpm.tcti()))
        .context("host A's keys")?;
    let b = HostMaterial::load(bed.b().host_dir, &tpm_key(&bed.b().host_tpm.tcti()))
        .context("host B's keys")?;
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).context("the P-256 group")?;
    let controller_key = EcKey::generate(&group)
        .and_then(PKey::from_ec_key)
        .context("generate the controller's key")?;
    let controller =
        self_signed(&controller_key).context("self-sign the controller's certificate")?;
    let trust = Trust {
        ca_root: b.ca_root.clone(),
        controller,
    };
    let me = b.recipient().context("host B as the recipient")?;
    let destination_key = me
        .migration_key
        .clone()
        .try_into()
        .map_err(|key: Vec<u8>| {
            anyhow!("host B's migration key is {} bytes, not a point", key.len())
        })?;
    let Some((b_coprocessor_cert, b_issuers)) = b.credentials.chain.split_first() else {
        bail!("host B's coprocessor certificate chain is empty");
    };
    // An instance with a little of everything: started, a key, an NV index, a PCR.
    let store = SharedStore::memory();
    let mut engine =
        LibtpmsEngine::start(Box::new(store.clone())).context("start libtpms in process")?;
    for cmd in [
        c::startup(c::TPM_SU_CLEAR),
        c::create_primary_ecc_signing(),
        c::nv_define_space(0x0150_0001, 64, c::NV_ORDINARY_ATTRS),
        c::nv_write(0x0150_0001, 0, &[7; 64]),
        c::pcr_extend_sha256(16, &[1; 32]),
    ] {
        let mut cmd = cmd;
        engine.execute(&mut cmd).context("set-up command")?;
    }
    let state = engine.export_state().context("export the libtpms state")?;
    let chain = &a.credentials.chain;
    let (mut t_seal, mut t_verify, mut t_open, mut t_import, mut t_total, mut t_rechain) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut size = 0;
    for i in 0..runs {
        let t = Ticket {
            migration: MigrationId::random().context("a random migration id")?,
            instance: InstanceId([9; 16]),
            vm: "vm-1".into(),
            source: a.host_id.clone(),
            destination: b.host_id.clone(),
            destination_key,
            epoch: i as u64,
            issued_at: now(),
            expires_at: now() + 600,
        };
        let signed = ticket::sign(&t, &controller_key).context("sign the ticket")?;
        let start = Instant::now();
        let package =
            seal::seal(&signed, &state, &a.credentials.key, chain).context("seal the package")?;
        let sealed = start.elapsed();
        size = package.len();
        let t1 = Instant::now();
        let verified =
            seal::verify(&package, &trust, &me, now(), None).context("verify the package")?;
        let checked = t1.elapsed();
        let t2 = Instant::now();
        let opened = seal::open(&verified, &b.migration_key).context("decrypt the package")?;
        let decrypted = t2.elapsed();
        let t3 = Instant::now();
        engine
            .import_state(&opened)
            .context("import the state into libtpms")?;
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
                b_coprocessor_cert,
                b_issuers,
                &Validity::starting_now(Duration::from_secs(86_400)),
            )
            .context("re-issue the vEK certificates")?;
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
    )?;
    row(
        "verify (ticket, binding, epoch, chain to the CA root, signature)",
        t_verify,
    )?;
    row("decrypt (ECDH with the migration key, AES-256-GCM)", t_open)?;
    row("import into libtpms", t_import)?;
    row("**seal + verify + decrypt + import**", t_total)?;
    row("re-issue both vEK certificates (`provision_ek`)", t_rechain)?;
    drop(engine);
    Ok(())
}

fn self_signed(
    key: &PKey<openssl::pkey::Private>,
) -> Result<openssl::x509::X509, openssl::error::ErrorStack> {
    let mut name = openssl::x509::X509Name::builder()?;
    name.append_entry_by_nid(Nid::COMMONNAME, "bench controller")?;
    let name = name.build();
    let mut b = openssl::x509::X509::builder()?;
    b.set_version(2)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(key)?;
    let (nb, na) = (
        openssl::asn1::Asn1Time::days_from_now(0)?,
        openssl::asn1::Asn1Time::days_from_now(1)?,
    );
    b.set_not_before(&nb)?;
    b.set_not_after(&na)?;
    b.sign(key, openssl::hash::MessageDigest::sha256())?;
    Ok(b.build())
}

fn daemon(
    bed: &MigrationBed,
    bin_dir: &Path,
    host: testbed::HostRef<'_>,
    dir: &Path,
    incoming: bool,
) -> Result<DaemonProcess> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut args = vec!["--log-level".to_owned(), "warn".into()];
    args.extend(bed.daemon_args(host, incoming));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    DaemonProcess::start(&bin_dir.join("vhost-vtpm"), dir, &args)
        .with_context(|| format!("start vhost-vtpm in {}", dir.display()))
}

fn daemon_section(bed: &MigrationBed, bin_dir: &Path, dir: &Path, moves: usize) -> Result<()> {
    let first = dir.join("vm-0");
    bed.a()
        .provision(&first.join("state"))
        .map_err(|e| anyhow!("provision the instance on host A: {e}"))?;
    let instance = bed
        .register(&first.join("state"), bed.a())
        .context("register the instance with the controller")?;
    let mut src = daemon(bed, bin_dir, bed.a(), &first, false)?;
    let mut client = VtpmClient::connect(&src.socket, ClientOptions::default())
        .context("connect to the first daemon")?;
    let cmd = c::startup(c::TPM_SU_CLEAR);
    client.transact(&cmd).context("Startup")?;
    let hosts = [bed.a(), bed.b()];
    let (mut save, mut load, mut serving) = (vec![], vec![], vec![]);
    for i in 0..moves {
        let (from, to) = (hosts[i % 2], hosts[(i + 1) % 2]);
        bed.authorise(&instance, "vm-1", from, to)
            .map_err(|e| anyhow!("move {i}: authorise the migration: {e}"))?;
        let next_dir = dir.join(format!("vm-{}", i + 1));
        let dst = daemon(bed, bin_dir, to, &next_dir, true)
            .with_context(|| format!("move {i}: the destination"))?;
        let mut next = VtpmClient::connect(&dst.socket, ClientOptions::default())
            .with_context(|| format!("move {i}: connect to the destination"))?;
        let t0 = Instant::now();
        let package = client
            .save_device_state()
            .with_context(|| format!("move {i}: SAVE on the source"))?;
        save.push(t0.elapsed());
        let t1 = Instant::now();
        next.load_device_state(&package)
            .with_context(|| format!("move {i}: LOAD on the destination"))?;
        load.push(t1.elapsed());
        next.transact(&c::get_random(8))
            .with_context(|| format!("move {i}: GetRandom on the destination"))?;
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
    )?;
    row(
        "LOAD on the destination (checks, revocation, claim, decrypt, import, re-chain, durable)",
        load,
    )?;
    row(
        "LOAD until the destination serves (+ \"imported\", commit)",
        serving,
    )?;
    Ok(())
}

/// `info migrate`'s downtime in ms.
fn downtime(info: &str) -> f64 {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("downtime:"))
        .and_then(|v| v.trim().trim_end_matches("ms").trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// Migrates `vm` live to a new QEMU on a free port, its TPM `frontend`: the destination once
/// its guest runs, and QEMU's downtime in ms. `run` names the run in errors.
fn migrate_live(env: &Env, vm: &mut Vm, frontend: &TpmFrontend, run: &str) -> Result<(Vm, f64)> {
    let port = free_port().context("a free port")?;
    let mut dst = Vm::incoming_tcp(env, frontend, port);
    let info = vm
        .migrate_tcp(port, Duration::from_secs(300))
        .map_err(|e| anyhow!("{run}: migrate: {e}"))?;
    dst.wait_migrated(Duration::from_secs(240))
        .map_err(|e| anyhow!("{run}: wait for the destination: {e}"))?;
    Ok((dst, downtime(&info)))
}

fn guest_section(bed: &MigrationBed, dir: &Path, runs: usize) -> Result<()> {
    let env = Env::load();
    let bin_dir = env
        .daemon
        .parent()
        .with_context(|| format!("{} has no parent directory", env.daemon.display()))?;
    let mut with_vtpm = Vec::new();
    let mut without = Vec::new();
    for i in 0..runs {
        // Without a TPM.
        let mut vm = Vm::boot_any(&env, &TpmFrontend::None);
        let (dst, ms) = migrate_live(
            &env,
            &mut vm,
            &TpmFrontend::None,
            &format!("run {i}, no TPM"),
        )?;
        without.push(ms);
        dst.shutdown();
        drop(vm);

        // With our vTPM, sealed.
        let src_dir = dir.join(format!("guest-{i}-a"));
        bed.a()
            .provision(&src_dir.join("state"))
            .map_err(|e| anyhow!("run {i}: provision the instance on host A: {e}"))?;
        let instance = bed
            .register(&src_dir.join("state"), bed.a())
            .with_context(|| format!("run {i}: register the instance with the controller"))?;
        let src = daemon(bed, bin_dir, bed.a(), &src_dir, false)
            .with_context(|| format!("run {i}: the source daemon"))?;
        let mut vm = Vm::boot(&env, &TpmFrontend::VhostUser(src.socket.clone()));
        vm.must("tpm2_getrandom --hex 8");
        bed.authorise(&instance, &format!("guest-{i}"), bed.a(), bed.b())
            .map_err(|e| anyhow!("run {i}: authorise the migration: {e}"))?;
        let dst_daemon = daemon(
            bed,
            bin_dir,
            bed.b(),
            &dir.join(format!("guest-{i}-b")),
            true,
        )
        .with_context(|| format!("run {i}: the destination daemon"))?;
        let (mut dst, ms) = migrate_live(
            &env,
            &mut vm,
            &TpmFrontend::VhostUser(dst_daemon.socket.clone()),
            &format!("run {i}, our vTPM"),
        )?;
        with_vtpm.push(ms);
        dst.must("tpm2_getrandom --hex 8");
        dst.shutdown();
        drop(vm);
    }
    // Not empty: the caller asks for at least one run.
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
    Ok(())
}
