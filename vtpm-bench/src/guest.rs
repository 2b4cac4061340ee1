//! `vtpm-bench guest`: TPM command latency seen by a program inside the guest, through our
//! virtio device (vhost-vtpm) and through QEMU's tpm-crb with swtpm, same QEMU build, same
//! guest kernel, same run. Prints Markdown tables and the ratios, and the CPU each path
//! burns per command: in the guest (the benchmark process's user + system time, which
//! includes the driver's completion polling) and on the host (QEMU's threads plus the daemon
//! or swtpm, from their schedstat, less what the same guest program costs without commands).
//!
//! `cargo run --release -p vtpm-bench -- guest` (after scripts/setup.sh).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use testbed::{accel, start_daemon, Env, SwtpmProcess, TpmFrontend, Vm};

const OURS: &str = "vhost-user-tpm (ours)";
const OURS_BUSY: &str = "vhost-user-tpm, daemon busy-poll 200 µs";
const CRB: &str = "tpm-crb + swtpm";

/// What one command measured on one device.
#[derive(Clone, Copy)]
struct Measured {
    p50: f64,
    p99: f64,
    ops: f64,
    /// CPU µs per command of the guest program.
    guest_cpu: f64,
    /// CPU µs per command of QEMU and the TPM server on the host (`None`: not measured).
    host_cpu: Option<f64>,
}

/// (command, device) -> what it measured
type Results = BTreeMap<(String, String), Measured>;

/// The commands of tpm_bench, and whether each is a "sign" (fewer iterations).
const OPS: [(&str, bool); 4] = [
    ("GetRandom(32)", false),
    ("PCR_Read", false),
    ("PCR_Extend", false),
    ("ECDSA_P256_Sign", true),
];

fn pin_self(cpus: &[usize]) {
    let mut set = CpuSet::new();
    for &c in cpus {
        let _ = set.set(c);
    }
    let _ = sched_setaffinity(Pid::from_raw(0), &set);
}

/// The BENCH line of `name` in tpm_bench's output, with `host_cpu`.
fn parse(out: &str, name: &str, host_cpu: Option<f64>) -> Option<Measured> {
    let line = out.lines().find(|l| {
        l.strip_prefix("BENCH ")
            .is_some_and(|r| r.starts_with(name))
    })?;
    let kv: BTreeMap<&str, f64> = line
        .split_whitespace()
        .filter_map(|p| p.split_once('='))
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k, v)))
        .collect();
    Some(Measured {
        p50: *kv.get("p50_us")?,
        p99: *kv.get("p99_us")?,
        ops: *kv.get("ops_s")?,
        guest_cpu: *kv.get("cpu_us_op")?,
        host_cpu,
    })
}

/// CPU ns of QEMU and the server so far.
fn host_cpu_ns(qemu: u32, server: Option<i32>) -> Option<u64> {
    let qemu = crate::cpu_ns(i32::try_from(qemu).ok()?)?;
    Some(qemu + server.and_then(crate::cpu_ns).unwrap_or(0))
}

/// Boots a guest on `frontend` and runs each command of tpm_bench in its own invocation,
/// charging the host CPU of QEMU and `server` (less a run without commands) to it.
fn run_guest(
    env: &Env,
    frontend: &TpmFrontend,
    server: Option<i32>,
    fast: u32,
    sign: u32,
    device: &str,
    into: &mut Results,
) -> Result<()> {
    let mut vm = Vm::boot(env, frontend);
    let qemu = vm.qemu_pid();
    let invoke = |vm: &mut Vm, op: &str| -> Result<(String, Option<u64>)> {
        let before = host_cpu_ns(qemu, server);
        let (rc, out) = vm.run_timeout(
            &format!("tpm_bench -d /dev/tpmrm0 -n {fast} -s {sign} -o '{op}'"),
            Duration::from_secs(1800),
        );
        ensure!(
            rc == 0,
            "tpm_bench -o {op} on {device} failed ({rc}):\n{out}"
        );
        let after = host_cpu_ns(qemu, server);
        Ok((out, after.zip(before).map(|(a, b)| a.saturating_sub(b))))
    };
    // What starting tpm_bench and opening the device cost without a command.
    let (_, baseline) = invoke(&mut vm, "none")?;
    for (op, is_sign) in OPS {
        let (out, cpu) = invoke(&mut vm, op)?;
        let n = f64::from(if is_sign { sign } else { fast });
        let host = cpu
            .zip(baseline)
            .map(|(c, b)| c.saturating_sub(b) as f64 / 1e3 / n);
        let measured = parse(&out, op, host)
            .with_context(|| format!("no complete BENCH line for {op} on {device}:\n{out}"))?;
        into.insert((op.to_string(), device.to_string()), measured);
    }
    vm.shutdown();
    Ok(())
}

/// Runs the guest benchmark: `fast` iterations of the fast commands, `sign` of ECDSA sign.
pub fn run(fast: u32, sign: u32) -> Result<()> {
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
            let dir = tempfile::tempdir().context("tempdir")?;
            let daemon = start_daemon(&env, dir.path(), &args);
            let frontend = TpmFrontend::VhostUser(daemon.socket.clone());
            let pid = daemon.pid();
            run_guest(&env, &frontend, pid, fast, sign, label, &mut results)?;
        }
        {
            let dir = tempfile::tempdir().context("tempdir")?;
            let swtpm = SwtpmProcess::start(dir.path(), false).context("start swtpm")?;
            let frontend = TpmFrontend::CrbSwtpm(swtpm.ctrl.clone());
            let pid = Some(swtpm.pid());
            run_guest(&env, &frontend, pid, fast, sign, CRB, &mut results)?;
        }
        println!("\n### {title}\n");
        println!("| command (via /dev/tpmrm0) | device | p50 µs | p99 µs | ops/s | guest CPU µs/op | host CPU µs/op | p50 crb ÷ this | p99 crb ÷ this |");
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
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
                let Some(m) = get(dev) else {
                    continue;
                };
                // How many times slower tpm-crb is than this row.
                let ratio = match (crb, dev != CRB) {
                    (Some(c), true) => format!("{:.1}x | {:.1}x", c.p50 / m.p50, c.p99 / m.p99),
                    _ => " | ".to_string(),
                };
                let host = m
                    .host_cpu
                    .map(|h| format!("{h:.1}"))
                    .unwrap_or_else(|| "-".into());
                println!(
                    "| {name} | {dev} | {:.1} | {:.1} | {:.0} | {:.1} | {host} | {ratio} |",
                    m.p50, m.p99, m.ops, m.guest_cpu
                );
            }
        }
    }
    Ok(())
}
