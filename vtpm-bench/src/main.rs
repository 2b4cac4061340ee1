//! `vtpm-bench`: per-command latency of the same TPM commands through every path, in one run.
//!
//! Paths: libtpms in this process (the floor: no transport at all), swtpm over its Unix
//! socket (today's standard path minus QEMU), and the vhost-vtpm daemon through a real
//! vhost-user connection driven by the guest-driver harness (with and without the busy-poll
//! window). Placements: everything on CPU 0, and unpinned (the scheduler's choice on this
//! machine's CPUs). Prints Markdown tables with n, p50, p99, ops/s, the ratio of p50 to the
//! floor, and the server's CPU time per command.
//!
//! A second section ([`state`], `--only state` alone) measures what the always-encrypted,
//! durable state costs: persisting vs non-persisting commands, cold start, memory per
//! instance, and one instance's latency while another is flooded.
//!
//! `vtpm-bench guest` ([`guest`]) measures inside a real guest instead: our device against
//! QEMU's tpm-crb with swtpm. `vtpm-bench attest` ([`attest`]) measures deep attestation:
//! the start-up cost of PCR mirroring, collecting and verifying an evidence bundle.
//! `vtpm-bench migration` ([`migration`]) measures sealed migration: the package in
//! process, between two daemons, and QEMU's downtime. `vtpm-bench scale` ([`scale`]) runs
//! hundreds of instances at once, ours and swtpm's: start time, memory, latency under load.
//!
//! Run it with `cargo run --release -p vtpm-bench` (it needs the release `vhost-vtpm` and
//! `vtpm-state` binaries next to it: `cargo build --release --workspace` first) and swtpm
//! installed.

mod attest;
mod guest;
mod migration;
mod procfs;
mod scale;
mod state;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use coprocessor::libtpms::LibtpmsEngine;
use coprocessor::swtpm::SwtpmEngine;
use coprocessor::Coprocessor;
use guest_driver::{ClientOptions, VtpmClient};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use procfs::cpu_ns;
use testbed::{DaemonProcess, SwtpmProcess};
use tpm_proto::{commands as c, rc, response_code};
use vtpm_state::keys::generate_host_key_file;
use vtpm_state::EncryptedStore;

#[derive(Parser, Debug)]
#[command(
    about = "Latency of TPM commands: in-process libtpms vs swtpm socket vs vhost-vtpm (host \
             side, the default), or inside a guest: our device vs tpm-crb + swtpm (`guest`)"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Iterations for the fast commands (GetRandom, PCR_Extend, PCR_Read).
    #[arg(long, default_value_t = 3000)]
    fast: usize,
    /// Iterations for the slow ones (ECDSA sign, durable NV write).
    #[arg(long, default_value_t = 300)]
    slow: usize,
    /// Busy-poll window given to the daemon in the busy-poll rows, in µs.
    #[arg(long, default_value_t = 200)]
    busy_poll_us: u64,
    /// Directory holding the vhost-vtpm binary (default: next to this executable).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Run only this section (default: all of them).
    #[arg(long, value_enum)]
    only: Option<Section>,
    /// State section: cold starts per variant.
    #[arg(long, default_value_t = 20)]
    cold_runs: usize,
    /// State section: mixed commands (incl. ECDSA signs and NV writes) run before the
    /// "under load" memory sample.
    #[arg(long, default_value_t = 2000)]
    load_ops: usize,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// TPM command latency inside a guest (after scripts/setup.sh): our virtio device vs
    /// QEMU's tpm-crb with swtpm, same QEMU, same kernel, same run.
    Guest {
        /// Iterations of the fast commands (GetRandom, PCR_Extend, PCR_Read).
        #[arg(default_value_t = 500)]
        fast: u32,
        /// Iterations of ECDSA sign.
        #[arg(default_value_t = 100)]
        sign: u32,
    },
    /// Sealed migration: one package in process (seal, verify, decrypt, import), migrations
    /// between two daemons under the controller, and with --guest-runs QEMU's downtime with
    /// and without our vTPM (after scripts/setup.sh).
    Migration {
        /// Packages sealed and opened in process.
        #[arg(long, default_value_t = 200)]
        runs: usize,
        /// Migrations between the two daemons.
        #[arg(long, default_value_t = 20)]
        moves: usize,
        /// Live migrations of a guest of each kind (0: skip).
        #[arg(long, default_value_t = 0)]
        guest_runs: usize,
    },
    /// Deep attestation: TPM2_Startup with and without PCR mirroring, collecting an evidence
    /// bundle (through the harness and in a guest), verifying it.
    Attest {
        /// Samples per row.
        #[arg(long, default_value_t = 30)]
        samples: usize,
        /// Skip the part in a guest (it needs scripts/setup.sh).
        #[arg(long)]
        no_guest: bool,
    },
    /// Many instances on one host, each its own server process: start time, memory, and a
    /// random instance's latency while all are idle and while some are busy; ours, then as
    /// many swtpm processes.
    Scale {
        /// Instances of each kind.
        #[arg(long, default_value_t = 500)]
        instances: usize,
        /// Instances flooded with PCR_Extend (one client thread each) in the busy row.
        #[arg(long, default_value_t = 50)]
        busy: usize,
        /// GetRandom samples per latency row.
        #[arg(long, default_value_t = 2000)]
        samples: usize,
        /// Threads starting instances at once.
        #[arg(long, default_value_t = 4)]
        start_threads: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Section {
    /// Per-command latency of every path and placement.
    Latency,
    /// State: durability, cold start, memory, isolation.
    State,
}

const NV_INDEX: u32 = 0x0150_0042;

/// One way of getting a command to a TPM and its response back.
trait Path_ {
    fn transact(&mut self, cmd: &[u8]) -> Result<Vec<u8>>;
    /// The server process, whose CPU time is charged to the path.
    fn server_pid(&self) -> Option<i32>;
    /// fsyncs and fdatasyncs the server has made so far, where it reports them.
    fn syncs(&self) -> Option<u64> {
        None
    }
}

struct EnginePath<'a> {
    engine: &'a mut dyn Coprocessor,
    server: Option<i32>,
}

impl Path_ for EnginePath<'_> {
    fn transact(&mut self, cmd: &[u8]) -> Result<Vec<u8>> {
        let mut buf = cmd.to_vec();
        Ok(self
            .engine
            .execute(&mut buf)
            .context("engine execute")?
            .to_vec())
    }
    fn server_pid(&self) -> Option<i32> {
        self.server
    }
}

struct DaemonPath {
    client: VtpmClient,
    daemon: DaemonProcess,
    /// The daemon's `--metrics-socket`.
    metrics: PathBuf,
}

impl DaemonPath {
    /// Starts `bin` in `dir` with `extra` arguments and a metrics socket, and connects.
    fn start(bin: &Path, dir: &Path, extra: &[&str]) -> Result<DaemonPath> {
        let metrics = dir.join("metrics.sock");
        let metrics_arg = metrics.display().to_string();
        let mut args = vec!["--metrics-socket", metrics_arg.as_str()];
        args.extend_from_slice(extra);
        let daemon = DaemonProcess::start(bin, dir, &args).context("start vhost-vtpm")?;
        let client = VtpmClient::connect(&daemon.socket, ClientOptions::default())
            .context("connect to vhost-vtpm")?;
        Ok(DaemonPath {
            client,
            daemon,
            metrics,
        })
    }
}

impl Path_ for DaemonPath {
    fn transact(&mut self, cmd: &[u8]) -> Result<Vec<u8>> {
        self.client.transact(cmd).context("daemon transact")
    }
    fn server_pid(&self) -> Option<i32> {
        self.daemon.pid()
    }
    fn syncs(&self) -> Option<u64> {
        let text = testbed::metrics::scrape(&self.metrics).ok()?;
        testbed::metrics::value(&text, "vtpm_state_syncs_total").map(|v| v as u64)
    }
}

struct Op {
    name: &'static str,
    /// Builds the i-th command (NV writes vary their data: libtpms skips the commit of a
    /// write that changes nothing, which would measure no durability at all).
    cmd: Box<dyn Fn(usize) -> Vec<u8>>,
    slow: bool,
}

impl Op {
    /// The same command every time.
    fn fixed(name: &'static str, cmd: Vec<u8>, slow: bool) -> Op {
        Op {
            name,
            cmd: Box::new(move |_| cmd.clone()),
            slow,
        }
    }

    /// An NV_Write of the iteration number, so that every write changes the data.
    fn nv_write(name: &'static str, index: u32) -> Op {
        Op {
            name,
            cmd: Box::new(move |i| c::nv_write(index, 0, &(i as u64).to_be_bytes())),
            slow: true,
        }
    }
}

#[derive(Clone)]
struct Row {
    path: String,
    op: &'static str,
    n: usize,
    p50: Duration,
    p99: Duration,
    ops_per_s: f64,
    server_cpu_us: Option<f64>,
    /// fsyncs and fdatasyncs per operation, where the server reports them.
    syncs_per_op: Option<f64>,
}

impl Row {
    /// The server CPU column: µs per operation, `-` where it was not measured.
    fn server_cpu_cell(&self) -> String {
        self.server_cpu_us
            .map(|c| format!("{c:.1}"))
            .unwrap_or_else(|| "-".into())
    }
}

/// The `p` quantile (0..=1) of `sorted`, which must not be empty.
pub(crate) fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

pub(crate) fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Sends a command, resubmitting on TPM_RC_RETRY as a TSS would; an error on any other
/// failure, named by `what`.
fn must(path: &mut dyn Path_, cmd: &[u8], what: &str) -> Result<Vec<u8>> {
    for _ in 0..8 {
        let r = path.transact(cmd).with_context(|| what.to_owned())?;
        match response_code(&r) {
            Ok(rc::SUCCESS) => return Ok(r),
            Ok(rc::RETRY) => continue,
            other => bail!("{what}: {other:x?}"),
        }
    }
    bail!("{what}: TPM kept answering RETRY");
}

/// Creates the ECC P-256 signing primary every measured path signs with.
fn create_signing_primary(path: &mut dyn Path_) -> Result<c::EccPrimary> {
    c::parse_create_primary_ecc(&must(
        path,
        &c::create_primary_ecc_signing(),
        "CreatePrimary",
    )?)
    .map_err(|e| anyhow!("CreatePrimary response: {e:?}"))
}

/// Startup, a signing key and an NV index: the state every path needs before measuring.
fn prepare(path: &mut dyn Path_) -> Result<Vec<Op>> {
    let code = response_code(
        &path
            .transact(&c::startup(c::TPM_SU_CLEAR))
            .context("Startup")?,
    )
    .map_err(|e| anyhow!("Startup response: {e:?}"))?;
    ensure!(
        code == rc::SUCCESS || code == rc::INITIALIZE,
        "Startup {code:#x}"
    );
    let key = create_signing_primary(path)?;
    // The index may not exist: only a failure to get an answer at all is an error.
    path.transact(&c::nv_undefine_space(NV_INDEX))
        .context("NV_UndefineSpace")?;
    must(
        path,
        &c::nv_define_space(NV_INDEX, 32, c::NV_ORDINARY_ATTRS),
        "NV_DefineSpace",
    )?;
    let digest = [0x5a; 32];
    // The first ECDSA signature triggers libtpms' self-test of the algorithm (TPM_RC_RETRY).
    must(path, &c::sign_ecdsa_sha256(key.handle, &digest), "Sign")?;
    Ok(vec![
        Op::fixed("GetRandom(32)", c::get_random(32), false),
        Op::fixed("PCR_Extend", c::pcr_extend_sha256(16, &digest), false),
        Op::fixed("PCR_Read", c::pcr_read_sha256(16), false),
        Op::fixed(
            "ECDSA P-256 Sign",
            c::sign_ecdsa_sha256(key.handle, &digest),
            true,
        ),
        Op::nv_write("NV_Write (durable)", NV_INDEX),
    ])
}

fn measure(label: &str, path: &mut dyn Path_, args: &Args) -> Result<Vec<Row>> {
    let ops = prepare(path).with_context(|| format!("{label}: prepare"))?;
    measure_ops(label, path, &ops, args)
}

/// Latency of each of `ops` through `path` (after a warm-up of up to 50 of each).
fn measure_ops(label: &str, path: &mut dyn Path_, ops: &[Op], args: &Args) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for op in ops {
        let n = if op.slow { args.slow } else { args.fast };
        for i in 0..n.min(50) {
            // Warm-up: the answers do not matter, getting them does.
            path.transact(&(op.cmd)(usize::MAX - i))
                .with_context(|| format!("{label} {} warm-up", op.name))?;
        }
        let cmds: Vec<Vec<u8>> = (0..n).map(|i| (op.cmd)(i)).collect();
        let mut lat = Vec::with_capacity(n);
        let cpu0 = path.server_pid().and_then(cpu_ns);
        let syncs0 = path.syncs();
        let start = Instant::now();
        for cmd in &cmds {
            let t = Instant::now();
            let r = path
                .transact(cmd)
                .with_context(|| format!("{label} {}", op.name))?;
            lat.push(t.elapsed());
            let code = response_code(&r);
            ensure!(code == Ok(rc::SUCCESS), "{label} {}: {code:x?}", op.name);
        }
        let total = start.elapsed();
        let cpu1 = path.server_pid().and_then(cpu_ns);
        let syncs1 = path.syncs();
        lat.sort();
        rows.push(Row {
            path: label.to_string(),
            op: op.name,
            n,
            p50: pct(&lat, 0.50),
            p99: pct(&lat, 0.99),
            ops_per_s: n as f64 / total.as_secs_f64(),
            server_cpu_us: match (cpu0, cpu1) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1e3 / n as f64),
                _ => None,
            },
            syncs_per_op: match (syncs0, syncs1) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / n as f64),
                _ => None,
            },
        });
    }
    Ok(rows)
}

/// Pins the calling thread to `cpus`.
fn pin(cpus: &[usize]) -> Result<()> {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c).with_context(|| format!("CPU index {c}"))?;
    }
    sched_setaffinity(Pid::from_raw(0), &set)
        .with_context(|| format!("sched_setaffinity to CPUs {cpus:?}"))
}

fn start_daemon(bin: &Path, dir: &Path, busy_poll_us: u64) -> Result<DaemonPath> {
    let busy = busy_poll_us.to_string();
    DaemonPath::start(bin, dir, &["--log-level", "warn", "--busy-poll-us", &busy])
}

fn print_table(title: &str, rows: &[Row]) {
    println!("\n### {title}\n");
    println!("| path | command | n | p50 µs | p99 µs | ops/s | p50 / floor | server CPU µs/op |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let floor = rows
            .iter()
            .find(|f| f.op == r.op && f.path.starts_with("libtpms in-process"))
            .map(|f| f.p50.as_secs_f64());
        let ratio = floor
            .map(|f| format!("{:.2}x", r.p50.as_secs_f64() / f))
            .unwrap_or_default();
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.0} | {} | {} |",
            r.path,
            r.op,
            r.n,
            r.p50.as_secs_f64() * 1e6,
            r.p99.as_secs_f64() * 1e6,
            r.ops_per_s,
            ratio,
            r.server_cpu_cell()
        );
    }
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} CPUs ({model}), Linux {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        kernel.trim()
    )
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("vtpm-bench: {e:#}");
        std::process::exit(1);
    }
}

/// Runs what `args` ask for; the error names the section and the step that failed.
fn run(args: Args) -> Result<()> {
    if let Some(Command::Guest { fast, sign }) = args.command {
        return guest::run(fast, sign).context("guest");
    }
    let bin_dir = args.bin_dir.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default()
    });
    let daemon_bin = bin_dir.join("vhost-vtpm");
    ensure!(
        daemon_bin.exists(),
        "{} not found: cargo build --release --workspace",
        daemon_bin.display()
    );
    if let Some(Command::Attest { samples, no_guest }) = args.command {
        return attest::run(&bin_dir, samples, !no_guest).context("attest");
    }
    if let Some(Command::Scale {
        instances,
        busy,
        samples,
        start_threads,
    }) = args.command
    {
        return scale::run(
            &daemon_bin,
            &scale::Options {
                instances,
                busy,
                samples,
                start_threads,
            },
        )
        .context("scale");
    }
    if let Some(Command::Migration {
        runs,
        moves,
        guest_runs,
    }) = args.command
    {
        println!("# vtpm-bench migration\n\nMachine: {}", machine());
        return migration::run(&bin_dir, runs, moves, guest_runs).context("migration");
    }
    let all_cpus: Vec<usize> = (0..std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1))
        .collect();
    println!("# vtpm-bench\n\nMachine: {}", machine());
    println!(
        "Iterations: {} (fast commands), {} (sign, NV write); busy-poll window {} µs.",
        args.fast, args.slow, args.busy_poll_us
    );
    if args.only != Some(Section::State) {
        latency_section(&args, &daemon_bin, &all_cpus).context("latency section")?;
    }
    if args.only != Some(Section::Latency) {
        state::run(&args, &daemon_bin, &all_cpus).context("state section")?;
    }
    Ok(())
}

/// Every path in every placement, one table per placement.
fn latency_section(args: &Args, daemon_bin: &Path, all_cpus: &[usize]) -> Result<()> {
    let scratch = tempfile::tempdir().context("tempdir")?;
    // The floor keeps its state exactly as the daemon does (encrypted, durable), so the NV
    // write rows compare like with like.
    let floor_key = generate_host_key_file(&scratch.path().join("floor.key"))
        .context("generate the floor's host key")?;
    let (floor_store, _) =
        EncryptedStore::open(&scratch.path().join("floor"), &floor_key, "libtpms")
            .context("open the floor's state store")?;
    let mut floor_engine =
        LibtpmsEngine::start(Box::new(floor_store)).context("start libtpms in process")?;

    let last = all_cpus.len() - 1;
    let placements = [
        ("All on CPU 0 (pinned)", vec![0usize], vec![0usize]),
        (
            "Unpinned (scheduler's choice)",
            all_cpus.to_vec(),
            all_cpus.to_vec(),
        ),
        (
            "Split: client on CPU 0, server on the last CPU",
            vec![0],
            vec![last],
        ),
    ];
    for (title, client_cpus, server_cpus) in placements {
        pin(&client_cpus)?;
        let mut rows = Vec::new();
        rows.extend(measure(
            "libtpms in-process (floor)",
            &mut EnginePath {
                engine: &mut floor_engine,
                server: None,
            },
            args,
        )?);
        {
            let dir = tempfile::tempdir().context("tempdir")?;
            pin(&server_cpus)?;
            let swtpm = SwtpmProcess::start(dir.path(), true).context("start swtpm")?;
            pin(&client_cpus)?;
            let data = swtpm.data.as_deref().context("swtpm has no data socket")?;
            let mut engine = SwtpmEngine::connect(&swtpm.ctrl, data).context("connect to swtpm")?;
            let pid = swtpm.pid();
            rows.extend(measure(
                "swtpm socket",
                &mut EnginePath {
                    engine: &mut engine,
                    server: Some(pid),
                },
                args,
            )?);
        }
        for (label, busy) in [
            ("vhost-vtpm", 0),
            ("vhost-vtpm + busy-poll", args.busy_poll_us),
        ] {
            let dir = tempfile::tempdir().context("tempdir")?;
            pin(&server_cpus)?;
            let mut path = start_daemon(daemon_bin, dir.path(), busy)
                .with_context(|| format!("{label}: start"))?;
            pin(&client_cpus)?;
            rows.extend(measure(label, &mut path, args)?);
        }
        print_table(title, &rows);
    }
    Ok(())
}
