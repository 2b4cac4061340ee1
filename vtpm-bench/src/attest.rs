//! `vtpm-bench attest`: what deep attestation (docs/adr/0011) costs.
//!
//! 1. Start-up cost of mirroring: the TPM2_Startup(CLEAR) round trip through the daemon
//!    (a device reset before each), with the platform lock alone and with host PCRs 0-7
//!    mirrored from swtpm as the host TPM.
//! 2. Evidence through the harness (the daemon's side without a guest): the deep quote
//!    alone, and a whole bundle (vTPM quote, deep quote, certificates from NV).
//! 3. The verifier: `vtpm_verify::verify` of one bundle, revocation through the CA's status
//!    API (HTTPS to the local CA) and through its CRL.
//! 4. In a real guest: `vtpm-evidence` collecting one bundle (tpm2-tools), timed in the guest.
//!
//! Deep quotes are paced at the daemon's rate limit (two per second), so no sample waits on
//! it. `cargo run --release -p vtpm-bench -- attest` (after scripts/setup.sh for part 4).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use guest_driver::{ClientOptions, VtpmClient};
use openssl::x509::X509;
use testbed::evidence::Transact;
use testbed::{ChainSetup, DaemonProcess, Env, TpmFrontend, Vm};
use tpm_proto::commands as c;

const PCRS: [u8; 9] = [0, 1, 2, 3, 4, 5, 6, 7, 16];
const VAIK: u32 = 0x8100_8001;
/// The daemon answers two deep quotes per second after a burst.
const DEEP_QUOTE_PACE: Duration = Duration::from_millis(520);

/// n, p50 and p99 (ms) of `samples`, which must not be empty.
fn stats(mut samples: Vec<Duration>) -> (usize, f64, f64) {
    samples.sort();
    let pct = |p: f64| {
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples[i].as_secs_f64() * 1e3
    };
    (samples.len(), pct(0.5), pct(0.99))
}

/// Prints one table row; a row without samples is an error (nothing was measured).
fn row(what: &str, samples: Vec<Duration>) -> Result<()> {
    ensure!(!samples.is_empty(), "{what}: no samples");
    let (n, p50, p99) = stats(samples);
    println!("| {what} | {n} | {p50:.3} | {p99:.3} |");
    Ok(())
}

fn header(title: &str) {
    println!("\n### {title}\n\n| what | n | p50 ms | p99 ms |\n|---|---|---|---|");
}

fn daemon(bin_dir: &Path, dir: &Path, extra: &[&str]) -> Result<DaemonProcess> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    DaemonProcess::start(&bin_dir.join("vhost-vtpm"), dir, extra)
        .with_context(|| format!("start vhost-vtpm in {}", dir.display()))
}

/// TPM2_Startup(CLEAR) after a device reset, `samples` times (after one unmeasured).
fn startup_samples(d: &DaemonProcess, samples: usize) -> Result<Vec<Duration>> {
    let mut client = VtpmClient::connect(&d.socket, ClientOptions::default())
        .context("connect to vhost-vtpm")?;
    let mut out = Vec::new();
    for i in 0..samples + 1 {
        client.reset_device().context("device reset")?;
        let t = Instant::now();
        let resp = client
            .transact(&c::startup(c::TPM_SU_CLEAR))
            .context("Startup")?;
        out.push(t.elapsed());
        let code = tpm_proto::response_code(&resp);
        ensure!(code == Ok(0), "Startup after device reset {i}: {code:x?}");
    }
    out.remove(0);
    Ok(out)
}

/// Runs `f` with the transact function testbed's evidence helpers take, over `client`'s
/// TSS path. That function cannot fail, so a transport error is answered with an empty
/// response (which the helpers see as a malformed answer) and is what this returns, as the
/// cause.
fn with_tss<T>(client: &mut VtpmClient, f: impl FnOnce(&mut Transact<'_>) -> T) -> Result<T> {
    let mut failed = None;
    let out = f(&mut |cmd: &[u8]| match client.transact_tss(cmd) {
        Ok(resp) => resp,
        Err(e) => {
            failed.get_or_insert(e);
            Vec::new()
        }
    });
    match failed {
        Some(e) => Err(e).context("vhost-vtpm transact (TSS)"),
        None => Ok(out),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs the section with `samples` per row; the guest part only with `guest`.
pub fn run(bin_dir: &Path, samples: usize, guest: bool) -> Result<()> {
    let bin_dir = bin_dir.to_owned();
    let tmp = tempfile::tempdir().context("tempdir")?;
    let chain = ChainSetup::start(&bin_dir, &tmp.path().join("host"), "bench-host")
        .context("start the host TPM, CA and manufacturer chain")?;
    let tcti = chain.host_tpm.tcti();
    {
        let mut host = host_tpm::HostTpm::connect(&tcti).context("connect to the host TPM")?;
        for pcr in 0..8u8 {
            host.pcr_extend_sha256(pcr, openssl::sha::sha256(&[pcr]))
                .with_context(|| format!("extend host PCR {pcr}"))?;
        }
    }
    println!(
        "# vtpm-bench attest\n\nHost TPM: swtpm over loopback TCP (tss-esapi's swtpm TCTI); \
         {samples} samples per row."
    );

    // --- 1. Startup ---
    header("TPM2_Startup(CLEAR) round trip (after a device reset)");
    // One daemon at a time: each is stopped before the next row starts.
    for (what, dir, extra) in [
        (
            "platform lock only (`--host-key-file`)",
            "lock-only",
            &[][..],
        ),
        (
            "platform lock only (`--host-tpm`, no mirror)",
            "no-mirror",
            &["--host-tpm", tcti.as_str()][..],
        ),
    ] {
        let d = daemon(&bin_dir, &tmp.path().join(dir), extra)?;
        row(what, startup_samples(&d, samples).context(what)?)?;
    }
    let mirroring = daemon(
        &bin_dir,
        &tmp.path().join("mirror"),
        &["--host-tpm", &tcti, "--mirror-pcrs", "0-7"],
    )?;
    let what = "mirroring host PCRs 0-7 + platform lock";
    row(what, startup_samples(&mirroring, samples).context(what)?)?;
    // The hook's own parts, as the daemon timed them.
    let log = mirroring.log_text();
    let logged = |what: &str| -> Vec<Duration> {
        log.lines()
            .filter_map(|l| l.split(what).nth(1))
            .filter_map(|rest| rest.trim().split(' ').next()?.parse().ok())
            .map(Duration::from_micros)
            .collect()
    };
    let mirror_part = logged("mirrored into the vTPM in");
    let lock_part = logged("platform hierarchy locked in");
    drop(mirroring);
    row(
        "of which mirroring (in the daemon: host TPM connection, PCR_Read, 8 PCR_Extend)",
        mirror_part,
    )?;
    row(
        "of which the platform lock (in the daemon: HierarchyChangeAuth)",
        lock_part,
    )?;

    // --- 2. Evidence through the harness ---
    let vm_dir = tmp.path().join("vm");
    std::fs::create_dir_all(&vm_dir).with_context(|| format!("create {}", vm_dir.display()))?;
    chain
        .provision(&vm_dir.join("state"))
        .map_err(|e| anyhow!("provision the vTPM's identity: {e}"))?;
    let vaik_pem = chain
        .enroll_vaik(&vm_dir.join("state"), "bench-vm")
        .map_err(|e| anyhow!("enroll the vAIK: {e}"))?;
    let vaik = X509::from_pem(&std::fs::read(&vaik_pem).context("read the vAIK certificate")?)
        .and_then(|cert| cert.to_der())
        .context("the vAIK certificate")?;
    let d = daemon(&bin_dir, &vm_dir, &chain.mirror_args().args())?;
    let mut client = VtpmClient::connect(&d.socket, ClientOptions::default())
        .context("connect to vhost-vtpm")?;
    client
        .transact(&c::startup(c::TPM_SU_CLEAR))
        .context("Startup")?;
    let nonces = vtpm_verify::NonceStore::open(tmp.path().join("verifier"))
        .context("open the verifier's nonce store")?;
    let (mut deep, mut bundle_times, mut bundles) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..samples {
        let nonce = nonces.issue(now(), 3600).context("issue a nonce")?;
        std::thread::sleep(DEEP_QUOTE_PACE);
        let (resp, took) = with_tss(&mut client, |t| {
            let start = Instant::now();
            let resp = testbed::evidence::deep_quote(t, &[7; 32]);
            (resp, start.elapsed())
        })
        .context("deep quote")?;
        deep.push(took);
        let code = tpm_proto::response_code(&resp);
        ensure!(code == Ok(0), "deep quote: {code:x?}");
        std::thread::sleep(DEEP_QUOTE_PACE);
        let (bundle, took) = with_tss(&mut client, |t| {
            let start = Instant::now();
            let bundle = testbed::evidence::collect(t, &nonce, VAIK, &vaik, &PCRS);
            (bundle, start.elapsed())
        })
        .context("collect an evidence bundle")?;
        let bundle = bundle.map_err(|e| anyhow!("collect an evidence bundle: {e}"))?;
        bundle_times.push(took);
        bundles.push(bundle.to_string());
    }
    header("Evidence through the harness (daemon side, no guest)");
    row("deep quote (vendor command: vEK from NV, host quote)", deep)?;
    row(
        "whole bundle (vTPM quote, deep quote, 4 NV certificates)",
        bundle_times,
    )?;

    // --- 3. The verifier ---
    let read_cert = |path: &Path| -> Result<X509> {
        let pem = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        X509::from_pem(&pem).with_context(|| format!("parse {}", path.display()))
    };
    let trust = vtpm_verify::Trust {
        ca_root: read_cert(&chain.ca.ca_cert)?,
        ek_roots: [&chain.manufacturer.root, &chain.manufacturer.issuer]
            .iter()
            .map(|p| read_cert(p))
            .collect::<Result<_>>()?,
    };
    let ca_pem = std::fs::read(&chain.ca.ca_cert).context("read the CA certificate")?;
    let ca = vtpm_ca::Client::new(&chain.ca.url, &ca_pem, None).context("CA client")?;
    let crl =
        vtpm_verify::Revocation::crl(&ca.crl().context("fetch the CA's CRL")?, &trust.ca_root)
            .map_err(|e| anyhow!("the CA's CRL: {e}"))?;
    let status = vtpm_verify::Revocation::StatusApi(ca);
    let policy = vtpm_verify::Policy::default();
    let half = bundles.len() / 2;
    let mut times = (Vec::new(), Vec::new());
    for (i, b) in bundles.iter().enumerate() {
        let revocation = if i < half { &status } else { &crl };
        let start = Instant::now();
        let report = vtpm_verify::verify(b.as_bytes(), &trust, revocation, &policy, &nonces, now());
        let took = start.elapsed();
        ensure!(
            report.accepted(),
            "bundle {i} not accepted: {:?}",
            report.failed()
        );
        if i < half {
            times.0.push(took);
        } else {
            times.1.push(took);
        }
    }
    header("Verifier (`vtpm_verify::verify`, 17 checks)");
    row(
        "revocation by the CA's status API (5 HTTPS queries)",
        times.0,
    )?;
    row("revocation by the CA's CRL", times.1)?;
    drop(client);

    // --- 4. In a guest ---
    if !guest {
        return Ok(());
    }
    let env = Env::load();
    let mut vm = Vm::boot(&env, &TpmFrontend::VhostUser(d.socket.clone()));
    vm.write_file(
        "/tmp/vaik.pem",
        &std::fs::read(&vaik_pem).context("read the vAIK certificate")?,
    );
    let mut in_guest = Vec::new();
    for _ in 0..samples {
        let nonce = nonces.issue(now(), 3600).context("issue a nonce")?;
        std::thread::sleep(DEEP_QUOTE_PACE);
        // busybox's date has no sub-second format: the uptime clock (10 ms steps).
        let out = vm.must(&format!(
            "s=$(cut -d' ' -f1 /proc/uptime); vtpm-evidence {nonce} 0x81008001 /tmp/vaik.pem \
             > /tmp/e.json; e=$(cut -d' ' -f1 /proc/uptime); echo UPTIME $s $e"
        ));
        let times: Option<Vec<f64>> = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("UPTIME "))
            .map(|t| {
                t.split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            });
        let Some(&[start, end]) = times.as_deref() else {
            bail!("vtpm-evidence in the guest: no timing in {out:?}");
        };
        let ns = ((end - start) * 1e9) as u64;
        in_guest.push(Duration::from_nanos(ns));
    }
    header(&format!(
        "In the guest ({:?}): `vtpm-evidence`, tpm2-tools",
        testbed::accel(&env)
    ));
    row(
        "whole bundle (tpm2_quote, tpm2_send, 4 tpm2_nvread, openssl, base64)",
        in_guest,
    )?;
    vm.shutdown();
    Ok(())
}
