//! `vtpm-bench guest`: TPM command latency seen by a program inside the guest, through our
//! virtio device (vhost-vtpm) and through QEMU's tpm-crb with swtpm, same QEMU build, same
//! guest kernel, same run. Prints Markdown tables and the ratios.
//!
//! `cargo run --release -p vtpm-bench -- guest` (after scripts/setup.sh).

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use testbed::{accel, start_daemon, Env, SwtpmProcess, TpmFrontend, Vm};

const OURS: &str = "vhost-user-tpm (ours)";
const OURS_BUSY: &str = "vhost-user-tpm, daemon busy-poll 200 µs";
const CRB: &str = "tpm-crb + swtpm";

/// (command, device) -> (p50 µs, p99 µs, ops/s)
type Results = BTreeMap<(String, String), (f64, f64, f64)>;

fn pin_self(cpus: &[usize]) {
    let mut set = CpuSet::new();
    for &c in cpus {
        let _ = set.set(c);
    }
    let _ = sched_setaffinity(Pid::from_raw(0), &set);
}

fn parse(out: &str, device: &str, into: &mut Results) {
    for line in out.lines().filter(|l| l.starts_with("BENCH ")) {
        let mut parts = line.split_whitespace().skip(1);
        let name = parts.next().unwrap_or("?").to_string();
        let kv: BTreeMap<&str, f64> = parts
            .filter_map(|p| p.split_once('='))
            .filter_map(|(k, v)| v.parse().ok().map(|v| (k, v)))
            .collect();
        into.insert(
            (name, device.to_string()),
            (kv["p50_us"], kv["p99_us"], kv["ops_s"]),
        );
    }
}

fn run_guest(env: &Env, frontend: &TpmFrontend, fast: u32, sign: u32) -> String {
    let mut vm = Vm::boot(env, frontend);
    let (rc, out) = vm.run_timeout(
        &format!("tpm_bench -d /dev/tpmrm0 -n {fast} -s {sign}"),
        Duration::from_secs(1800),
    );
    assert_eq!(rc, 0, "tpm_bench failed:\n{out}");
    vm.shutdown();
    out
}

/// Runs the guest benchmark: `fast` iterations of the fast commands, `sign` of ECDSA sign.
pub fn run(fast: u32, sign: u32) {
    let env = Env::load();
    let a = accel(&env);
    let cpus: Vec<usize> = (0..std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1))
        .collect();
    println!(
        "# vtpm-bench guest\n\nGuest under {a:?}; {} host CPUs; {fast} iterations ({sign} for sign).",
        cpus.len()
    );
    for (title, pin) in [
        ("Default placement", cpus.clone()),
        ("QEMU, daemon and swtpm pinned to CPU 0", vec![0]),
    ] {
        pin_self(&pin);
        let mut results = Results::new();
        for (label, args) in [(OURS, vec![]), (OURS_BUSY, vec!["--busy-poll-us", "200"])] {
            let dir = tempfile::tempdir().expect("tempdir");
            let daemon = start_daemon(&env, dir.path(), &args);
            let frontend = TpmFrontend::VhostUser(daemon.socket.clone());
            let out = run_guest(&env, &frontend, fast, sign);
            parse(&out, label, &mut results);
        }
        {
            let dir = tempfile::tempdir().expect("tempdir");
            let swtpm = SwtpmProcess::start(dir.path(), false).expect("start swtpm");
            let out = run_guest(&env, &TpmFrontend::CrbSwtpm(swtpm.ctrl.clone()), fast, sign);
            parse(&out, CRB, &mut results);
        }
        println!("\n### {title}\n");
        println!("| command (via /dev/tpmrm0) | device | p50 µs | p99 µs | ops/s | p50 crb ÷ this | p99 crb ÷ this |");
        println!("|---|---|---:|---:|---:|---:|---:|");
        let names: Vec<String> = results
            .keys()
            .map(|(n, _)| n.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for name in names {
            let get = |dev: &str| results.get(&(name.clone(), dev.to_string())).copied();
            let crb = get(CRB);
            for dev in [OURS, OURS_BUSY, CRB] {
                let Some((p50, p99, ops)) = get(dev) else {
                    continue;
                };
                // How many times slower tpm-crb is than this row.
                let ratio = match (crb, dev != CRB) {
                    (Some(c), true) => format!("{:.1}x | {:.1}x", c.0 / p50, c.1 / p99),
                    _ => " | ".to_string(),
                };
                println!("| {name} | {dev} | {p50:.1} | {p99:.1} | {ops:.0} | {ratio} |");
            }
        }
    }
}
