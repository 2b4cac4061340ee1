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

use guest_driver::{ClientOptions, VtpmClient};
use openssl::x509::X509;
use testbed::{ChainSetup, DaemonProcess, Env, TpmFrontend, Vm};
use tpm_proto::commands as c;

const PCRS: [u8; 9] = [0, 1, 2, 3, 4, 5, 6, 7, 16];
const VAIK: u32 = 0x8100_8001;
/// The daemon answers two deep quotes per second after a burst.
const DEEP_QUOTE_PACE: Duration = Duration::from_millis(520);

fn stats(mut samples: Vec<Duration>) -> (usize, f64, f64) {
    samples.sort();
    let pct = |p: f64| {
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples[i].as_secs_f64() * 1e3
    };
    (samples.len(), pct(0.5), pct(0.99))
}

fn row(what: &str, samples: Vec<Duration>) {
    let (n, p50, p99) = stats(samples);
    println!("| {what} | {n} | {p50:.3} | {p99:.3} |");
}

fn header(title: &str) {
    println!("\n### {title}\n\n| what | n | p50 ms | p99 ms |\n|---|---|---|---|");
}

fn daemon(bin_dir: &Path, dir: &Path, extra: &[&str]) -> DaemonProcess {
    std::fs::create_dir_all(dir).unwrap();
    DaemonProcess::start(&bin_dir.join("vhost-vtpm"), dir, extra).expect("daemon")
}

fn startup_samples(d: &DaemonProcess, samples: usize) -> Vec<Duration> {
    let mut client = VtpmClient::connect(&d.socket, ClientOptions::default()).unwrap();
    let mut out = Vec::new();
    for _ in 0..samples + 1 {
        client.reset_device().unwrap();
        let t = Instant::now();
        let resp = client.transact(&c::startup(c::TPM_SU_CLEAR)).unwrap();
        out.push(t.elapsed());
        assert_eq!(tpm_proto::response_code(&resp), Ok(0));
    }
    out.remove(0);
    out
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs the section with `samples` per row; the guest part only with `guest`.
pub fn run(bin_dir: &Path, samples: usize, guest: bool) {
    let bin_dir = bin_dir.to_owned();
    let tmp = tempfile::tempdir().unwrap();
    let chain = ChainSetup::start(&bin_dir, &tmp.path().join("host"), "bench-host").unwrap();
    let tcti = chain.host_tpm.tcti();
    {
        let mut host = host_tpm::HostTpm::connect(&tcti).unwrap();
        for pcr in 0..8u8 {
            host.pcr_extend_sha256(pcr, openssl::sha::sha256(&[pcr]))
                .unwrap();
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
        let d = daemon(&bin_dir, &tmp.path().join(dir), extra);
        row(what, startup_samples(&d, samples));
    }
    let mirroring = daemon(
        &bin_dir,
        &tmp.path().join("mirror"),
        &["--host-tpm", &tcti, "--mirror-pcrs", "0-7"],
    );
    row(
        "mirroring host PCRs 0-7 + platform lock",
        startup_samples(&mirroring, samples),
    );
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
    );
    row(
        "of which the platform lock (in the daemon: HierarchyChangeAuth)",
        lock_part,
    );

    // --- 2. Evidence through the harness ---
    let vm_dir = tmp.path().join("vm");
    std::fs::create_dir_all(&vm_dir).unwrap();
    chain.provision(&vm_dir.join("state")).unwrap();
    let vaik_pem = chain
        .enroll_vaik(&vm_dir.join("state"), "bench-vm")
        .unwrap();
    let vaik = X509::from_pem(&std::fs::read(&vaik_pem).unwrap())
        .unwrap()
        .to_der()
        .unwrap();
    let d = daemon(&bin_dir, &vm_dir, &chain.mirror_args().args());
    let mut client = VtpmClient::connect(&d.socket, ClientOptions::default()).unwrap();
    client.transact(&c::startup(c::TPM_SU_CLEAR)).unwrap();
    let nonces = vtpm_verify::NonceStore::open(tmp.path().join("verifier")).unwrap();
    let (mut deep, mut bundle_times, mut bundles) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..samples {
        let nonce = nonces.issue(now(), 3600).unwrap();
        std::thread::sleep(DEEP_QUOTE_PACE);
        let mut t = |cmd: &[u8]| client.transact_tss(cmd).unwrap();
        let start = Instant::now();
        let resp = testbed::evidence::deep_quote(&mut t, &[7; 32]);
        deep.push(start.elapsed());
        assert_eq!(tpm_proto::response_code(&resp), Ok(0));
        std::thread::sleep(DEEP_QUOTE_PACE);
        let start = Instant::now();
        let bundle = testbed::evidence::collect(&mut t, &nonce, VAIK, &vaik, &PCRS).unwrap();
        bundle_times.push(start.elapsed());
        bundles.push(bundle.to_string());
    }
    header("Evidence through the harness (daemon side, no guest)");
    row("deep quote (vendor command: vEK from NV, host quote)", deep);
    row(
        "whole bundle (vTPM quote, deep quote, 4 NV certificates)",
        bundle_times,
    );

    // --- 3. The verifier ---
    let trust = vtpm_verify::Trust {
        ca_root: X509::from_pem(&std::fs::read(&chain.ca.ca_cert).unwrap()).unwrap(),
        ek_roots: [&chain.manufacturer.root, &chain.manufacturer.issuer]
            .iter()
            .map(|p| X509::from_pem(&std::fs::read(p).unwrap()).unwrap())
            .collect(),
    };
    let ca_pem = std::fs::read(&chain.ca.ca_cert).unwrap();
    let ca = vtpm_ca::Client::new(&chain.ca.url, &ca_pem, None).unwrap();
    let crl = vtpm_verify::Revocation::crl(&ca.crl().unwrap(), &trust.ca_root).unwrap();
    let status = vtpm_verify::Revocation::StatusApi(ca);
    let policy = vtpm_verify::Policy::default();
    let half = bundles.len() / 2;
    let mut times = (Vec::new(), Vec::new());
    for (i, b) in bundles.iter().enumerate() {
        let revocation = if i < half { &status } else { &crl };
        let start = Instant::now();
        let report = vtpm_verify::verify(b.as_bytes(), &trust, revocation, &policy, &nonces, now());
        let took = start.elapsed();
        assert!(report.accepted(), "{:?}", report.failed());
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
    );
    row("revocation by the CA's CRL", times.1);
    drop(client);

    // --- 4. In a guest ---
    if !guest {
        return;
    }
    let env = Env::load();
    let mut vm = Vm::boot(&env, &TpmFrontend::VhostUser(d.socket.clone()));
    vm.write_file("/tmp/vaik.pem", &std::fs::read(&vaik_pem).unwrap());
    let mut in_guest = Vec::new();
    for _ in 0..samples {
        let nonce = nonces.issue(now(), 3600).unwrap();
        std::thread::sleep(DEEP_QUOTE_PACE);
        // busybox's date has no sub-second format: the uptime clock (10 ms steps).
        let out = vm.must(&format!(
            "s=$(cut -d' ' -f1 /proc/uptime); vtpm-evidence {nonce} 0x81008001 /tmp/vaik.pem \
             > /tmp/e.json; e=$(cut -d' ' -f1 /proc/uptime); echo UPTIME $s $e"
        ));
        let times: Vec<f64> = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("UPTIME "))
            .map(|t| {
                t.split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(times.len(), 2, "no timing in {out:?}");
        let ns = ((times[1] - times[0]) * 1e9) as u64;
        in_guest.push(Duration::from_nanos(ns));
    }
    header(&format!(
        "In the guest ({:?}): `vtpm-evidence`, tpm2-tools",
        testbed::accel(&env)
    ));
    row(
        "whole bundle (tpm2_quote, tpm2_send, 4 tpm2_nvread, openssl, base64)",
        in_guest,
    );
    vm.shutdown();
}
