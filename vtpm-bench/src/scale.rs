//! `vtpm-bench scale`: many vTPM instances on one host, each with its own server process,
//! and what they cost together next to as many swtpm processes.
//!
//! For each kind in turn (our daemon, then swtpm; each kind has the machine to itself), N
//! instances are started, each with its own state directory and its own client playing its
//! VM: ours through the guest-driver harness over vhost-user (one host key file shared by all,
//! `--log-level warn`), swtpm (`swtpm socket --tpm2`, as the testbed starts it) through the
//! swtpm engine's two sockets. Every instance is given TPM2_Startup(CLEAR) and GetRandom. The
//! module reports:
//!
//! 1. start: spawn to first answer, per instance and for all N (started by a few threads at
//!    once, as a host bringing its VMs up would), for new instances and, after all were
//!    stopped, for all N started again on the state they saved;
//! 2. memory: private (RssAnon) and proportional (Pss) memory of every server process, summed
//!    and per instance, and the host's MemAvailable before, with all N running and after;
//! 3. latency of GetRandom(32) to a random instance from a thread of its own, while all are
//!    idle and while M other instances are flooded with PCR_Extend by M client threads;
//! 4. every instance that failed to start, to answer or to stop cleanly (the run goes on and
//!    the failure is printed; a benchmark that hides a failed instance measures nothing).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, ensure, Context};
use coprocessor::swtpm::SwtpmEngine;
use coprocessor::Coprocessor;
use guest_driver::{ClientOptions, VtpmClient};
use nix::sys::resource::{getrlimit, getrusage, setrlimit, Resource, UsageWho};
use nix::sys::signal::Signal;
use nix::sys::time::TimeValLike;
use testbed::{ensure_host_key, DaemonProcess, SwtpmProcess};
use tpm_proto::{commands as c, rc, response_code};

use crate::procfs::{self, cpu_ns, filesystem, Mem};
use crate::{machine, ms, pct, us};

/// What `vtpm-bench scale` was asked to do.
pub(crate) struct Options {
    pub(crate) instances: usize,
    pub(crate) busy: usize,
    pub(crate) samples: usize,
    pub(crate) start_threads: usize,
}

/// File descriptors this process holds per instance: ours 5 (vhost-user socket, the guest
/// memory's memfd and the mapping's copy of it, kick and call eventfds), swtpm 2 (control
/// and data sockets). Both kinds never run at once; the larger count is what must fit.
const FDS_PER_INSTANCE: u64 = 5;
/// Descriptors beyond the instances': std, the scratch files, /proc reads, spawning.
const FDS_SPARE: u64 = 256;
/// How long the busy instances run before the sampling starts, so that it sees the flood
/// in its steady state rather than its first commands.
const BUSY_SETTLE: Duration = Duration::from_millis(300);
/// The quiet window over which the CPU of N idle servers is measured.
const IDLE_WINDOW: Duration = Duration::from_secs(2);

const DIGEST: [u8; 32] = [0x5a; 32];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ours,
    Swtpm,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Ours => "vhost-vtpm",
            Kind::Swtpm => "swtpm socket",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::Swtpm => "swtpm",
        }
    }
}

/// An instance's server process.
enum Server {
    Ours(DaemonProcess),
    Swtpm(SwtpmProcess),
}

/// The client that plays an instance's VM.
enum Conn {
    // Boxed: the harness' client is ten times the size of the swtpm engine.
    Ours(Box<VtpmClient>),
    Swtpm(SwtpmEngine),
}

/// One running instance: server and client. Dropping it kills the server.
struct Instance {
    index: usize,
    pid: i32,
    conn: Conn,
    server: Server,
    /// It failed a command (reported once): never picked again.
    failed: bool,
}

impl Instance {
    fn transact(&mut self, cmd: &[u8]) -> Result<Vec<u8>, String> {
        match &mut self.conn {
            Conn::Ours(client) => client.transact(cmd).map_err(|e| e.to_string()),
            Conn::Swtpm(engine) => {
                let mut buf = cmd.to_vec();
                engine
                    .execute(&mut buf)
                    .map(<[u8]>::to_vec)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Sends `cmd`; an error unless the TPM answers with one of `ok`.
    fn command(&mut self, cmd: &[u8], what: &str, ok: &[u32]) -> Result<(), String> {
        let r = self.transact(cmd).map_err(|e| format!("{what}: {e}"))?;
        match response_code(&r) {
            Ok(code) if ok.contains(&code) => Ok(()),
            other => Err(format!("{what}: answered {other:x?}")),
        }
    }

    /// What the server logged, for a failure report (ours only: swtpm logs nowhere).
    fn log_tail(&self) -> String {
        match &self.server {
            Server::Ours(d) => tail(&d.log_text()),
            Server::Swtpm(_) => String::new(),
        }
    }
}

/// The last lines of a server log, enough to say why it failed.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" / ");
    if tail.is_empty() {
        tail
    } else {
        format!(" (log: {tail})")
    }
}

/// An instance that failed to start, answer or stop.
struct Failure {
    kind: Kind,
    index: usize,
    phase: &'static str,
    reason: String,
}

/// A started instance with its time from spawn to first answer, or why it did not start.
type Started = Result<(Instance, Duration), String>;

/// Where every instance of a run lives.
struct World {
    dir: PathBuf,
    daemon_bin: PathBuf,
    host_key: String,
}

impl World {
    /// Spawns instance `i` of `kind`, connects, and sends Startup and GetRandom: the time
    /// from spawn to that answer, with the instance.
    fn start(&self, kind: Kind, i: usize) -> Started {
        let dir = self.dir.join(format!("{}-{i}", kind.tag()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let t0 = Instant::now();
        let mut inst = match kind {
            Kind::Ours => {
                let args = ["--host-key-file", &self.host_key, "--log-level", "warn"];
                let daemon = DaemonProcess::start(&self.daemon_bin, &dir, &args)
                    .map_err(|e| format!("start: {e}"))?;
                let pid = daemon.pid().ok_or("the daemon exited at once")?;
                let client = VtpmClient::connect(&daemon.socket, ClientOptions::default())
                    .map_err(|e| format!("connect: {e}{}", tail(&daemon.log_text())))?;
                Instance {
                    index: i,
                    pid,
                    conn: Conn::Ours(Box::new(client)),
                    server: Server::Ours(daemon),
                    failed: false,
                }
            }
            Kind::Swtpm => {
                let server = SwtpmProcess::start(&dir, true).map_err(|e| format!("start: {e}"))?;
                let data = server.data.clone().ok_or("swtpm has no data socket")?;
                let engine = SwtpmEngine::connect(&server.ctrl, &data)
                    .map_err(|e| format!("connect: {e}"))?;
                Instance {
                    index: i,
                    pid: server.pid(),
                    conn: Conn::Swtpm(engine),
                    server: Server::Swtpm(server),
                    failed: false,
                }
            }
        };
        let first = inst
            .command(
                &c::startup(c::TPM_SU_CLEAR),
                "Startup",
                &[rc::SUCCESS, rc::INITIALIZE],
            )
            .and_then(|()| inst.command(&c::get_random(32), "GetRandom", &[rc::SUCCESS]));
        match first {
            Ok(()) => Ok((inst, t0.elapsed())),
            Err(e) => Err(format!("{e}{}", inst.log_tail())),
        }
    }
}

pub(crate) fn run(daemon_bin: &Path, opts: &Options) -> anyhow::Result<()> {
    ensure!(
        opts.busy < opts.instances,
        "--busy ({}) must leave at least one of the --instances ({}) idle to sample",
        opts.busy,
        opts.instances
    );
    let nofile = raise_nofile(opts.instances as u64 * FDS_PER_INSTANCE + FDS_SPARE)?;
    let scratch = tempfile::tempdir().context("tempdir")?;
    let host_key = scratch.path().join("host.key");
    ensure_host_key(&host_key).context("make the host key file")?;
    let world = World {
        dir: scratch.path().to_path_buf(),
        daemon_bin: daemon_bin.to_path_buf(),
        host_key: host_key.display().to_string(),
    };
    println!("# vtpm-bench scale\n\nMachine: {}", machine());
    println!(
        "\n{} instances of each kind, one kind after the other, unpinned; started by {} \
         threads at once; state directories on {}; RLIMIT_NOFILE {nofile}. Ours: \
         `vhost-vtpm --host-key-file` (one key file for all) `--log-level warn`, each reached \
         through the guest-driver harness (the VMM and guest driver over vhost-user). swtpm: \
         `swtpm socket --tpm2 --flags not-need-init` with unix control and data sockets, \
         reached through our swtpm engine. Every instance is new at the first start (no \
         `swtpm_setup`, no imported state) and is given TPM2_Startup(CLEAR) and GetRandom(32); \
         after the stop, all are started again on the state they saved.",
        opts.instances,
        opts.start_threads,
        filesystem(scratch.path())
    );
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    // Other work on the machine shows in the load before the run; during and after it the
    // load includes this benchmark's own floods.
    let load_before = procfs::load_average();
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for kind in [Kind::Ours, Kind::Swtpm] {
        let report =
            run_kind(&world, kind, opts, &mut seed, &mut failures).with_context(|| kind.label())?;
        reports.push(report);
    }
    print_report(&reports, opts, &failures);
    println!(
        "\nLoad average (1 min) before the run: {}; after it: {} (this includes the run's own \
         floods).",
        opt(load_before, 2),
        opt(procfs::load_average(), 2)
    );
    Ok(())
}

/// Raises the soft RLIMIT_NOFILE to at least `want` (up to the hard limit): the soft limit
/// is what this process gets now.
fn raise_nofile(want: u64) -> anyhow::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit NOFILE")?;
    if soft >= want {
        return Ok(soft);
    }
    let new = want.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, new, hard)
        .with_context(|| format!("setrlimit NOFILE to {new}"))?;
    Ok(new)
}

/// Everything measured for one kind.
struct KindReport {
    kind: Kind,
    started: usize,
    start_wall: Duration,
    /// Spawn to first answer of each instance that started, sorted.
    start_each: Vec<Duration>,
    /// The same after every instance was stopped: all N started again on the state they
    /// left (a host coming back up), then stopped.
    restart: Restart,
    /// (condition, per-process memory of every running instance).
    mem: Vec<(String, Vec<Mem>)>,
    /// MemAvailable (KiB) before the first start, with all running, after the last stop.
    avail: [Option<u64>; 3],
    /// This process' RSS growth (KiB) while the instances ran: the clients' side.
    client_rss: Option<i64>,
    /// CPU of all N idle servers over [`IDLE_WINDOW`], ms per second.
    idle_cpu_ms_per_s: Option<f64>,
    lat: Vec<Latency>,
    stop_wall: Duration,
}

/// All N started again on their own state after the stop.
struct Restart {
    started: usize,
    wall: Duration,
    /// Sorted.
    each: Vec<Duration>,
}

/// GetRandom(32) to random instances, one condition.
struct Latency {
    condition: String,
    /// Sorted.
    lat: Vec<Duration>,
    server_cpu_us: Option<f64>,
    /// The flood on the busy instances, when some were busy.
    flood: Option<FloodTotals>,
}

/// All floods of a busy row together.
struct FloodTotals {
    ops_per_s: f64,
    /// CPU of the flooded servers per PCR_Extend.
    server_cpu_us: Option<f64>,
    /// CPU of this process (the flooding clients, and the sampler) per PCR_Extend.
    client_cpu_us: Option<f64>,
}

fn run_kind(
    world: &World,
    kind: Kind,
    opts: &Options,
    seed: &mut u64,
    failures: &mut Vec<Failure>,
) -> anyhow::Result<KindReport> {
    let avail0 = procfs::mem_available();
    let self_pid = std::process::id() as i32;
    let client0 = procfs::read_mem(self_pid).ok();
    eprintln!("scale: starting {} {}", opts.instances, kind.label());
    let (mut instances, start_each, start_wall) = start_all(world, kind, opts, failures)?;
    let avail1 = procfs::mem_available();
    let client1 = procfs::read_mem(self_pid).ok();
    let mut mem = vec![(
        "all idle after start".to_string(),
        sample_memory(&mut instances, failures, "memory after start"),
    )];
    let idle_cpu_ms_per_s = idle_cpu(&instances);

    eprintln!("scale: sampling {} with all idle", kind.label());
    let mut lat = vec![sample_idle(&mut instances, opts.samples, seed, failures)?];
    eprintln!("scale: sampling {} with {} busy", kind.label(), opts.busy);
    lat.push(sample_busy(
        &mut instances,
        opts.busy,
        opts.samples,
        seed,
        failures,
    )?);
    mem.push((
        "after the latency runs".to_string(),
        sample_memory(&mut instances, failures, "memory after the runs"),
    ));

    eprintln!("scale: stopping {} {}", instances.len(), kind.label());
    let started = start_each.len();
    let t = Instant::now();
    for inst in instances {
        stop(kind, inst, failures);
    }
    let stop_wall = t.elapsed();

    // A host coming back up: every instance again, on the state it saved when stopped.
    eprintln!(
        "scale: starting {} {} again on their state",
        opts.instances,
        kind.label()
    );
    let (again, each, wall) = start_all(world, kind, opts, failures)?;
    let restart = Restart {
        started: each.len(),
        wall,
        each,
    };
    for inst in again {
        stop(kind, inst, failures);
    }
    Ok(KindReport {
        kind,
        started,
        start_wall,
        start_each,
        restart,
        mem,
        avail: [avail0, avail1, procfs::mem_available()],
        client_rss: client0
            .zip(client1)
            .map(|(a, b)| b.rss as i64 - a.rss as i64),
        idle_cpu_ms_per_s,
        lat,
        stop_wall,
    })
}

/// Starts instances 0..N of `kind` from `opts.start_threads` threads, each taking the next
/// index: the instances that answered (in index order), their start times (sorted), and the
/// time until the last one answered.
fn start_all(
    world: &World,
    kind: Kind,
    opts: &Options,
    failures: &mut Vec<Failure>,
) -> anyhow::Result<(Vec<Instance>, Vec<Duration>, Duration)> {
    let next = AtomicUsize::new(0);
    let t0 = Instant::now();
    let results = std::thread::scope(|s| -> anyhow::Result<Vec<(usize, Started)>> {
        let workers: Vec<_> = (0..opts.start_threads.max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= opts.instances {
                            return mine;
                        }
                        mine.push((i, world.start(kind, i)));
                    }
                })
            })
            .collect();
        // Every worker is joined before any panic is reported.
        let joined: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
        let mut results = Vec::new();
        for mine in joined {
            results.extend(mine.map_err(|_| anyhow!("a start thread panicked"))?);
        }
        Ok(results)
    })?;
    let wall = t0.elapsed();
    let mut instances = Vec::with_capacity(results.len());
    let mut times = Vec::with_capacity(results.len());
    for (index, r) in results {
        match r {
            Ok((inst, t)) => {
                instances.push(inst);
                times.push(t);
            }
            Err(reason) => failures.push(Failure {
                kind,
                index,
                phase: "start",
                reason,
            }),
        }
    }
    instances.sort_by_key(|i| i.index);
    times.sort();
    Ok((instances, times, wall))
}

/// The memory of every server still running; a server that is gone is a failure.
fn sample_memory(
    instances: &mut [Instance],
    failures: &mut Vec<Failure>,
    phase: &'static str,
) -> Vec<Mem> {
    let mut out = Vec::with_capacity(instances.len());
    for inst in instances.iter_mut() {
        match procfs::read_mem(inst.pid) {
            Ok(m) => out.push(m),
            Err(e) => fail(inst, failures, phase, format!("read /proc: {e}")),
        }
    }
    out
}

/// Records the first failure of an instance and takes it out of the sampling.
fn fail(inst: &mut Instance, failures: &mut Vec<Failure>, phase: &'static str, reason: String) {
    if !inst.failed {
        inst.failed = true;
        let kind = match inst.server {
            Server::Ours(_) => Kind::Ours,
            Server::Swtpm(_) => Kind::Swtpm,
        };
        failures.push(Failure {
            kind,
            index: inst.index,
            phase,
            reason: format!("{reason}{}", inst.log_tail()),
        });
    }
}

/// CPU (ms per second) that all servers spend while no command reaches any of them: what
/// N idle instances cost the host in wake-ups.
fn idle_cpu(instances: &[Instance]) -> Option<f64> {
    let total = || -> Option<u64> { instances.iter().map(|i| cpu_ns(i.pid)).sum() };
    let a = total()?;
    std::thread::sleep(IDLE_WINDOW);
    let b = total()?;
    Some(b.saturating_sub(a) as f64 / 1e6 / IDLE_WINDOW.as_secs_f64())
}

/// xorshift64: a random instance index, enough for spreading samples (no crate needed).
fn next_index(seed: &mut u64, n: usize) -> usize {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    (*seed % n as u64) as usize
}

/// What one sampling thread measured.
struct Samples {
    lat: Vec<Duration>,
    cpu_ns: u64,
    cpu_known: bool,
    failures: Vec<Failure>,
}

/// `n` GetRandom(32), each to a random instance of `instances` that has not failed, from
/// the calling thread; with the server CPU each cost.
fn sample_random(instances: &mut [Instance], n: usize, seed: &mut u64) -> Samples {
    let cmd = c::get_random(32);
    let mut s = Samples {
        lat: Vec::with_capacity(n),
        cpu_ns: 0,
        cpu_known: true,
        failures: Vec::new(),
    };
    let mut alive: Vec<usize> = (0..instances.len())
        .filter(|&i| !instances[i].failed)
        .collect();
    for _ in 0..n {
        if alive.is_empty() {
            break;
        }
        let pick = next_index(seed, alive.len());
        let inst = &mut instances[alive[pick]];
        let cpu0 = cpu_ns(inst.pid);
        let t = Instant::now();
        let r = inst.command(&cmd, "GetRandom", &[rc::SUCCESS]);
        let elapsed = t.elapsed();
        let cpu1 = cpu_ns(inst.pid);
        match r {
            Ok(()) => {
                s.lat.push(elapsed);
                match (cpu0, cpu1) {
                    (Some(a), Some(b)) => s.cpu_ns += b.saturating_sub(a),
                    _ => s.cpu_known = false,
                }
            }
            Err(e) => {
                fail(inst, &mut s.failures, "sampling", e);
                alive.swap_remove(pick);
            }
        }
    }
    s.lat.sort();
    s
}

/// Server CPU µs per sampled command, when every sample's CPU was read.
fn per_op(s: &Samples) -> Option<f64> {
    (s.cpu_known && !s.lat.is_empty()).then(|| s.cpu_ns as f64 / 1e3 / s.lat.len() as f64)
}

/// Random instances sampled from a thread of their own while all are idle.
fn sample_idle(
    instances: &mut [Instance],
    n: usize,
    seed: &mut u64,
    failures: &mut Vec<Failure>,
) -> anyhow::Result<Latency> {
    let s = std::thread::scope(|sc| {
        sc.spawn(move || sample_random(instances, n, seed))
            .join()
            .map_err(|_| anyhow!("the sampling thread panicked"))
    })?;
    let cpu = per_op(&s);
    failures.extend(s.failures);
    Ok(Latency {
        condition: "all idle".into(),
        lat: s.lat,
        server_cpu_us: cpu,
        flood: None,
    })
}

/// The first `busy` instances flooded with PCR_Extend, each by a thread of its own, while a
/// separate thread samples the others.
fn sample_busy(
    instances: &mut [Instance],
    busy: usize,
    n: usize,
    seed: &mut u64,
    failures: &mut Vec<Failure>,
) -> anyhow::Result<Latency> {
    let (flooded, rest) = instances.split_at_mut(busy.min(instances.len()));
    let sampled = rest.len();
    let (stop, running) = (&AtomicBool::new(false), &AtomicUsize::new(0));
    let pids: Vec<i32> = flooded.iter().map(|i| i.pid).collect();
    let cpu = || -> (Option<u64>, Option<u64>) {
        let servers = pids.iter().map(|&pid| cpu_ns(pid)).sum();
        (servers, own_cpu_ns())
    };
    let cpu0 = cpu();
    let (samples, floods) = std::thread::scope(|sc| {
        let floods: Vec<_> = flooded
            .iter_mut()
            .map(|inst| sc.spawn(move || flood(inst, stop, running)))
            .collect();
        let sampler = sc.spawn(move || {
            // Every flood has had its first answer (or failed); then it settles.
            let deadline = Instant::now() + Duration::from_secs(30);
            while running.load(Ordering::Relaxed) < busy && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(BUSY_SETTLE);
            sample_random(rest, n, seed)
        });
        let samples = sampler.join();
        // The floods stop even if the sampler panicked: the scope waits for them.
        stop.store(true, Ordering::Relaxed);
        let floods: Vec<_> = floods.into_iter().map(|f| f.join()).collect();
        let samples = samples.map_err(|_| anyhow!("the sampling thread panicked"))?;
        let floods = floods
            .into_iter()
            .collect::<Result<Vec<Flood>, _>>()
            .map_err(|_| anyhow!("a flood thread panicked"))?;
        Ok::<_, anyhow::Error>((samples, floods))
    })?;
    let cpu1 = cpu();
    for (inst, f) in flooded.iter_mut().zip(&floods) {
        if let Some(e) = &f.error {
            fail(inst, failures, "busy flood", e.clone());
        }
    }
    let ops: u64 = floods.iter().map(|f| f.ops).sum();
    let longest = floods.iter().map(|f| f.time).max().unwrap_or_default();
    let per_flood_op = |a: Option<u64>, b: Option<u64>| {
        a.zip(b)
            .filter(|_| ops > 0)
            .map(|(a, b)| b.saturating_sub(a) as f64 / 1e3 / ops as f64)
    };
    let flood = FloodTotals {
        ops_per_s: ops as f64 / longest.as_secs_f64().max(1e-9),
        server_cpu_us: per_flood_op(cpu0.0, cpu1.0),
        client_cpu_us: per_flood_op(cpu0.1, cpu1.1),
    };
    let cpu = per_op(&samples);
    failures.extend(samples.failures);
    Ok(Latency {
        condition: format!("{busy} busy (PCR_Extend flood), sampled among the other {sampled}"),
        lat: samples.lat,
        server_cpu_us: cpu,
        flood: Some(flood),
    })
}

/// CPU time of this process, threads that have ended included (the flood threads are gone
/// when it is read the second time, and /proc/self/task lists only live ones).
fn own_cpu_ns() -> Option<u64> {
    let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    u64::try_from(usage.user_time().num_nanoseconds() + usage.system_time().num_nanoseconds()).ok()
}

/// What one flood did.
struct Flood {
    ops: u64,
    time: Duration,
    /// The command that ended it early.
    error: Option<String>,
}

/// PCR_Extend to `inst` back to back until `stop`; a failed command ends the flood.
fn flood(inst: &mut Instance, stop: &AtomicBool, running: &AtomicUsize) -> Flood {
    let cmd = c::pcr_extend_sha256(16, &DIGEST);
    let t = Instant::now();
    let mut f = Flood {
        ops: 0,
        time: Duration::ZERO,
        error: None,
    };
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let r = inst.command(&cmd, "PCR_Extend", &[rc::SUCCESS]);
        if first {
            running.fetch_add(1, Ordering::Relaxed);
            first = false;
        }
        if let Err(e) = r {
            f.error = Some(e);
            break;
        }
        f.ops += 1;
    }
    f.time = t.elapsed();
    f
}

/// Stops one instance cleanly: ours with SIGTERM (it saves its state), swtpm likewise;
/// anything but a clean exit is a failure.
fn stop(kind: Kind, inst: Instance, failures: &mut Vec<Failure>) {
    let index = inst.index;
    let log = inst.log_tail();
    let status = match inst.server {
        Server::Ours(mut d) => d.signal(Signal::SIGTERM),
        Server::Swtpm(s) => s.stop(),
    };
    let reason = match status {
        Ok(s) if s.success() => return,
        Ok(s) => format!("exited {s}{log}"),
        Err(e) => format!("{e}{log}"),
    };
    failures.push(Failure {
        kind,
        index,
        phase: "stop",
        reason,
    });
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn print_report(reports: &[KindReport], opts: &Options, failures: &[Failure]) {
    let n = opts.instances;
    println!("\n### Start: spawn to first answer\n");
    println!(
        "From spawning the server process to its answer to GetRandom(32): wait for the socket, \
         connect (ours: the harness' complete vhost-user set-up), TPM2_Startup(CLEAR), \
         GetRandom. \"all N\" is from the first spawn to the last answer; per-instance times \
         include waiting for the CPU behind the {} other starts in flight.",
        opts.start_threads.saturating_sub(1)
    );
    println!();
    println!(
        "\"new\": the first start, each instance created (ours: instance key, both state \
         slots, the generation record, each made durable; swtpm: writes without syncing). \
         \"existing\": after all were stopped, all started again on the state they saved, as \
         when a host comes back up."
    );
    println!();
    println!(
        "| server | state | instances | answering | all N s | per instance median ms | p90 ms | p99 ms | max ms |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in reports {
        let runs = [
            ("new", r.started, r.start_wall, &r.start_each),
            (
                "existing",
                r.restart.started,
                r.restart.wall,
                &r.restart.each,
            ),
        ];
        for (state, started, wall, t) in runs {
            let q = |p| {
                if t.is_empty() {
                    "-".into()
                } else {
                    format!("{:.1}", ms(pct(t, p)))
                }
            };
            println!(
                "| {} | {state} | {n} | {started} | {:.2} | {} | {} | {} | {} |",
                r.kind.label(),
                wall.as_secs_f64(),
                q(0.5),
                q(0.9),
                q(0.99),
                q(1.0),
            );
        }
    }

    println!("\n### Memory of the server processes\n");
    println!(
        "Summed over every running server process and per instance (median), from \
         /proc/PID/status (RssAnon: private anonymous memory; VmRSS; RssShmem: our daemon's \
         view of the guest memory it touched) and /proc/PID/smaps_rollup (Pss: each shared \
         page divided among the processes mapping it, so the sum counts shared libraries \
         once)."
    );
    println!();
    println!(
        "| server | condition | processes | RssAnon total MiB | RssAnon per instance MiB | Pss total MiB | Pss per instance MiB | VmRSS per instance MiB | RssShmem per instance KiB | threads per instance |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in reports {
        for (cond, mems) in &r.mem {
            let anon: u64 = mems.iter().map(|m| m.anon).sum();
            let pss: u64 = mems.iter().filter_map(|m| m.pss).sum();
            println!(
                "| {} | {cond} | {} | {:.1} | {:.2} | {:.1} | {:.2} | {:.2} | {} | {} |",
                r.kind.label(),
                mems.len(),
                mib(anon),
                mib(median(mems.iter().map(|m| m.anon).collect())),
                mib(pss),
                mib(median(mems.iter().filter_map(|m| m.pss).collect())),
                mib(median(mems.iter().map(|m| m.rss).collect())),
                median(mems.iter().map(|m| m.shmem).collect()),
                median(mems.iter().map(|m| m.threads).collect()),
            );
        }
    }

    println!("\n### Host: available memory and idle CPU\n");
    println!(
        "MemAvailable from /proc/meminfo before the first start, with all N running (connected, \
         idle) and after the last stop. The drop includes what the kernel holds for the \
         servers (page tables, kernel stacks, sockets) and the clients' side in this process \
         (shown separately: harness state and the guest memory it touched), and moves with \
         whatever else runs on the machine. Idle CPU: all N servers' CPU time over {} s \
         with no command sent, per second.",
        IDLE_WINDOW.as_secs()
    );
    println!();
    println!(
        "| server | MemAvailable before MiB | all running MiB | after stop MiB | drop MiB | drop per instance MiB | clients (this process) RSS growth MiB | idle CPU of all N ms/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in reports {
        let [before, running, after] = r.avail;
        let drop = before.zip(running).map(|(b, a)| b as f64 - a as f64);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.kind.label(),
            opt(before.map(mib), 0),
            opt(running.map(mib), 0),
            opt(after.map(mib), 0),
            opt(drop.map(|d| d / 1024.0), 0),
            opt(drop.map(|d| d / 1024.0 / r.started.max(1) as f64), 2),
            opt(r.client_rss.map(|k| k as f64 / 1024.0), 1),
            opt(r.idle_cpu_ms_per_s, 2),
        );
    }

    println!("\n### GetRandom(32) to a random instance\n");
    println!(
        "{} samples per row from a thread of its own, each to an instance drawn at random \
         (uniformly, among those not flooded). Busy: the first {} instances each flooded \
         with PCR_Extend by a client thread of its own, back to back, sampled after {} ms. \
         Server CPU: the sampled server's CPU time (all threads) per command. Unpinned.",
        opts.samples,
        opts.busy,
        BUSY_SETTLE.as_millis()
    );
    println!();
    println!(
        "| server | condition | n | p50 µs | p90 µs | p99 µs | max µs | server CPU µs/op | busy instances' PCR_Extend ops/s |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in reports {
        for l in &r.lat {
            let q = |p| {
                if l.lat.is_empty() {
                    "-".into()
                } else {
                    format!("{:.1}", us(pct(&l.lat, p)))
                }
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.kind.label(),
                l.condition,
                l.lat.len(),
                q(0.5),
                q(0.9),
                q(0.99),
                q(1.0),
                opt(l.server_cpu_us, 1),
                opt(l.flood.as_ref().map(|f| f.ops_per_s), 0),
            );
        }
    }

    println!("\n### The flood in the busy rows\n");
    println!(
        "All {} flooded instances together, from the floods' start to their end. Server CPU: \
         the flooded servers' CPU time per PCR_Extend; client CPU: this process' (the flooding \
         client threads, plus the sampling thread and its /proc reads) per PCR_Extend.",
        opts.busy
    );
    println!();
    println!(
        "| server | busy instances | PCR_Extend ops/s | server CPU µs/op | client CPU µs/op |"
    );
    println!("|---|---:|---:|---:|---:|");
    for r in reports {
        for f in r.lat.iter().filter_map(|l| l.flood.as_ref()) {
            println!(
                "| {} | {} | {:.0} | {} | {} |",
                r.kind.label(),
                opts.busy,
                f.ops_per_s,
                opt(f.server_cpu_us, 1),
                opt(f.client_cpu_us, 1),
            );
        }
    }

    println!("\n### Stop\n");
    println!("Each server stopped with SIGTERM, one after the other, and waited for.");
    println!();
    println!("| server | stop all N s |");
    println!("|---|---:|");
    for r in reports {
        println!("| {} | {:.2} |", r.kind.label(), r.stop_wall.as_secs_f64());
    }

    println!("\n### Failures\n");
    if failures.is_empty() {
        println!(
            "None: every instance of both kinds started, answered every command sent to it, \
             and stopped cleanly."
        );
    } else {
        println!("| server | instance | phase | reason |");
        println!("|---|---:|---|---|");
        for f in failures {
            println!(
                "| {} | {} | {} | {} |",
                f.kind.label(),
                f.index,
                f.phase,
                f.reason.replace('|', "/").replace('\n', " ")
            );
        }
    }
}
