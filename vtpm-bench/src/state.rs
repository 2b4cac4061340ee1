//! The state section (`--only state`): what the always-encrypted, durable vTPM state costs,
//! and what one instance costs the host, next to swtpm on the same TPM state.
//!
//! 1. Durability: latency of commands that persist (NV_Write, NV_Increment) and of commands
//!    that do not (GetRandom, PCR_Extend), through our daemon with a host key file, our
//!    daemon with a host TPM (the swtpm-based simulator), and swtpm's socket.
//! 2. Cold start: from spawning the server process to its first successful TPM response
//!    (connect, TPM2_Startup, GetRandom), and the size of the state files.
//! 3. Memory per instance (VmRSS, Pss), idle and under a mixed load.
//! 4. Isolation: instance B's latency while a thread floods instance A.
//!
//! Every server of 1 to 3 runs on one TPM state: made by `swtpm_setup` (EKs, SRK), filled
//! through swtpm (NV indices, a persistent signing key), imported for our daemon with
//! `vtpm-state import-swtpm`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use coprocessor::swtpm::SwtpmEngine;
use guest_driver::{ClientOptions, VtpmClient};
use nix::sys::signal::Signal;
use testbed::{ensure_host_key, run_tool, DaemonProcess, HostTpmSimulator, SwtpmProcess};
use tpm_proto::{commands as c, rc, response_code, Header, HEADER_SIZE};

use crate::procfs::{self, filesystem, Mem};
use crate::{
    create_signing_primary, measure_ops, ms, must, pct, pin, us, Args, DaemonPath, EnginePath, Op,
    Path_, Row, NV_INDEX,
};

/// NV counter index for the NV_Increment rows.
const COUNTER_INDEX: u32 = 0x0150_0043;
/// NV indices written full at set-up, so that the state is not trivially small.
const FILL_INDICES: [u32; 4] = [0x0150_0100, 0x0150_0101, 0x0150_0102, 0x0150_0103];
const FILL_SIZE: u16 = 1024;
/// A persistent ECDSA P-256 signing key made at set-up; the memory load signs with it.
const SIGNING_KEY: u32 = 0x8100_0010;

const DIGEST: [u8; 32] = [0x5a; 32];

/// How our daemon protects the instance's state key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    File,
    Tpm,
}

impl Key {
    fn label(self) -> &'static str {
        match self {
            Key::File => "vhost-vtpm, --host-key-file",
            Key::Tpm => "vhost-vtpm, --host-tpm (simulator)",
        }
    }
}

/// The one TPM state, in swtpm's form and imported twice for our daemon.
struct World {
    dir: PathBuf,
    daemon_bin: PathBuf,
    host_key: PathBuf,
    host_tpm: HostTpmSimulator,
    /// swtpm's state directory, `dir/swtpm-state` (where [`SwtpmProcess`] keeps it).
    swtpm_state: PathBuf,
    /// [`DaemonProcess`] directories (the state is in `<dir>/state`) for each key kind.
    ours_key: PathBuf,
    ours_tpm: PathBuf,
}

/// Sends TPM2_Startup(CLEAR) through `transact`; a TPM that is already started is fine.
fn startup(transact: &mut dyn FnMut(&[u8]) -> Result<Vec<u8>>, what: &str) -> Result<()> {
    let code = response_code(&transact(&c::startup(c::TPM_SU_CLEAR))?)
        .map_err(|e| anyhow!("{what}: Startup response: {e:?}"))?;
    ensure!(
        code == rc::SUCCESS || code == rc::INITIALIZE,
        "{what}: Startup {code:#x}"
    );
    Ok(())
}

fn path_startup(path: &mut dyn Path_, what: &str) -> Result<()> {
    startup(&mut |cmd| path.transact(cmd), what)
}

/// A connection to a started swtpm's data socket through our swtpm engine.
fn swtpm_engine(sw: &SwtpmProcess) -> Result<SwtpmEngine> {
    let data = sw.data.as_deref().context("swtpm has no data socket")?;
    SwtpmEngine::connect(&sw.ctrl, data).context("connect to swtpm")
}

impl World {
    fn set_up(dir: &Path, daemon_bin: &Path) -> Result<World> {
        let swtpm_state = dir.join("swtpm-state");
        std::fs::create_dir_all(&swtpm_state).context("create swtpm state dir")?;
        run_tool(
            Command::new("swtpm_setup")
                .args(["--tpm2", "--createek", "--create-spk", "--tpmstate"])
                .arg(&swtpm_state),
        )
        .map_err(|e| anyhow!("swtpm_setup (scripts/setup.sh installs swtpm-tools): {e}"))?;
        {
            // Used through swtpm as a guest would: a persistent key and some NV data.
            let sw = SwtpmProcess::start(dir, true).context("start swtpm")?;
            let mut engine = swtpm_engine(&sw)?;
            let path = &mut EnginePath {
                engine: &mut engine,
                server: None,
            };
            path_startup(path, "swtpm set-up")?;
            let key = create_signing_primary(path)?;
            must(
                path,
                &c::evict_control(key.handle, SIGNING_KEY),
                "EvictControl",
            )?;
            must(path, &c::flush_context(key.handle), "FlushContext")?;
            for (i, &index) in FILL_INDICES.iter().enumerate() {
                must(
                    path,
                    &c::nv_define_space(index, FILL_SIZE, c::NV_ORDINARY_ATTRS),
                    "NV_DefineSpace",
                )?;
                let fill = vec![i as u8 + 1; usize::from(FILL_SIZE)];
                must(path, &c::nv_write(index, 0, &fill), "NV_Write")?;
            }
            must(
                path,
                &c::nv_define_space(NV_INDEX, 32, c::NV_ORDINARY_ATTRS),
                "NV_DefineSpace",
            )?;
            must(path, &c::nv_write(NV_INDEX, 0, &[0; 32]), "NV_Write")?;
            must(
                path,
                &c::nv_define_space(COUNTER_INDEX, 8, c::NV_COUNTER_ATTRS),
                "NV_DefineSpace (counter)",
            )?;
            must(path, &c::nv_increment(COUNTER_INDEX), "NV_Increment")?;
            must(path, &c::shutdown(c::TPM_SU_CLEAR), "Shutdown")?;
        }
        let host_key = dir.join("host.key");
        ensure_host_key(&host_key).context("vtpm-state gen-host-key")?;
        let host_tpm =
            HostTpmSimulator::start(&dir.join("host-tpm")).context("start host TPM simulator")?;
        let world = World {
            dir: dir.to_path_buf(),
            daemon_bin: daemon_bin.to_path_buf(),
            host_key,
            host_tpm,
            swtpm_state,
            ours_key: dir.join("ours-key"),
            ours_tpm: dir.join("ours-tpm"),
        };
        for key in [Key::File, Key::Tpm] {
            let tool = daemon_bin.with_file_name("vtpm-state");
            run_tool(
                Command::new(&tool)
                    .args(["import-swtpm", "--state-dir"])
                    .arg(world.ours_dir(key).join("state"))
                    .arg("--from")
                    .arg(&world.swtpm_state)
                    .args(world.key_args(key)),
            )
            .map_err(|e| anyhow!("vtpm-state import-swtpm: {e}"))?;
        }
        Ok(world)
    }

    fn ours_dir(&self, key: Key) -> &Path {
        match key {
            Key::File => &self.ours_key,
            Key::Tpm => &self.ours_tpm,
        }
    }

    fn key_args(&self, key: Key) -> Vec<String> {
        match key {
            Key::File => vec![
                "--host-key-file".into(),
                self.host_key.display().to_string(),
            ],
            Key::Tpm => vec!["--host-tpm".into(), self.host_tpm.tcti()],
        }
    }

    /// Runs `f` on a started swtpm (over its data socket through our swtpm engine), with
    /// the swtpm's pid.
    fn with_swtpm<T>(&self, f: impl FnOnce(&mut dyn Path_, i32) -> Result<T>) -> Result<T> {
        let sw = SwtpmProcess::start(&self.dir, true).context("start swtpm")?;
        let mut engine = swtpm_engine(&sw)?;
        let mut path = EnginePath {
            engine: &mut engine,
            server: Some(sw.pid()),
        };
        path_startup(&mut path, "swtpm")?;
        f(&mut path, sw.pid())
    }

    /// Our daemon on the imported state, connected; the TPM is started.
    fn start_daemon(&self, key: Key) -> Result<DaemonPath> {
        let mut extra = self.key_args(key);
        extra.extend(["--log-level".into(), "warn".into()]);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let mut path = DaemonPath::start(&self.daemon_bin, self.ours_dir(key), &extra)?;
        path_startup(&mut path, key.label())?;
        Ok(path)
    }
}

/// Stops a daemon cleanly (SIGTERM: it saves the state), so the next start is not a
/// recovery from an unclean stop.
fn stop_daemon(mut path: DaemonPath) -> Result<()> {
    path.daemon
        .signal(Signal::SIGTERM)
        .context("stop vhost-vtpm with SIGTERM")?;
    Ok(())
}

pub(crate) fn run(args: &Args, daemon_bin: &Path, all_cpus: &[usize]) -> Result<()> {
    pin(all_cpus)?;
    let scratch = tempfile::tempdir().context("tempdir")?;
    let world = World::set_up(scratch.path(), daemon_bin)?;
    println!("\n## State: durability, cold start, memory, isolation\n");
    println!(
        "State directories on {}. One TPM state for every server: `swtpm_setup --tpm2 \
         --createek --create-spk`, then through swtpm a persistent ECDSA key and {} NV \
         indices of {} bytes written in full (plus the benchmark's NV index and counter), \
         imported for vhost-vtpm with `vtpm-state import-swtpm` (once with the host key \
         file, once sealed by the host TPM simulator).",
        filesystem(scratch.path()),
        FILL_INDICES.len(),
        FILL_SIZE
    );
    durability(args, &world, all_cpus)?;
    pin(all_cpus)?;
    cold_start(args, &world)?;
    state_sizes(&world)?;
    memory(args, &world)?;
    isolation(args, daemon_bin, all_cpus)?;
    pin(all_cpus)?;
    Ok(())
}

// ---- 1. Durability -------------------------------------------------------------------

fn durability_ops() -> Vec<Op> {
    vec![
        Op::fixed("GetRandom(32)", c::get_random(32), false),
        Op::fixed("PCR_Extend", c::pcr_extend_sha256(16, &DIGEST), false),
        Op::nv_write("NV_Write", NV_INDEX),
        Op::fixed("NV_Increment", c::nv_increment(COUNTER_INDEX), true),
    ]
}

fn durability(args: &Args, world: &World, all_cpus: &[usize]) -> Result<()> {
    println!("\n### Cost of a durable command\n");
    println!(
        "NV_Write and NV_Increment persist (ours: the encrypted state slot that does not hold \
         the newest state is rewritten in place and fdatasynced, then the generation record is \
         written without waiting, before the answer); GetRandom and PCR_Extend do not. Client \
         and server in the same placement; each path on the same imported state. \"over \
         GetRandom\" is a persisting command's p50 minus the same path's GetRandom p50. \
         \"syncs/op\" is what our daemon's metrics socket counts (vtpm_state_syncs_total); \
         swtpm reports none (strace: it makes none)."
    );
    let placements: [(&str, Vec<usize>); 2] = [
        ("All on CPU 0 (pinned)", vec![0]),
        ("Unpinned (scheduler's choice)", all_cpus.to_vec()),
    ];
    for (title, cpus) in placements {
        pin(&cpus)?;
        let ops = durability_ops();
        let mut rows = Vec::new();
        for key in [Key::File, Key::Tpm] {
            let mut path = world.start_daemon(key)?;
            rows.extend(measure_ops(key.label(), &mut path, &ops, args)?);
            stop_daemon(path)?;
        }
        rows.extend(world.with_swtpm(|path, _| measure_ops("swtpm socket", path, &ops, args))?);
        println!("\n#### {title}\n");
        println!(
            "| command | persists | path | n | p50 µs | p99 µs | over GetRandom µs | ops/s | server CPU µs/op | syncs/op |"
        );
        println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
        for op in &ops {
            for r in rows.iter().filter(|r| r.op == op.name) {
                print_durability_row(r, &rows);
            }
        }
    }
    Ok(())
}

fn print_durability_row(r: &Row, rows: &[Row]) {
    let persists = r.op.starts_with("NV_");
    let base = rows
        .iter()
        .find(|b| persists && b.path == r.path && b.op == "GetRandom(32)")
        .map(|b| us(r.p50) - us(b.p50))
        .map(|d| format!("{d:.1}"))
        .unwrap_or_default();
    println!(
        "| {} | {} | {} | {} | {:.1} | {:.1} | {} | {:.0} | {} | {} |",
        r.op,
        if persists { "yes" } else { "no" },
        r.path,
        r.n,
        us(r.p50),
        us(r.p99),
        base,
        r.ops_per_s,
        r.server_cpu_cell(),
        r.syncs_per_op
            .map(|s| format!("{s:.2}"))
            .unwrap_or_else(|| "-".into())
    );
}

// ---- 2. Cold start -------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cold {
    Ours(Key),
    OursFresh,
    Swtpm,
}

impl Cold {
    fn labels(self) -> (&'static str, &'static str) {
        match self {
            Cold::Ours(Key::File) => (
                "vhost-vtpm, --host-key-file",
                "imported (unwrap key, decrypt state)",
            ),
            Cold::Ours(Key::Tpm) => (
                "vhost-vtpm, --host-tpm (simulator)",
                "imported (unseal key in host TPM, decrypt state)",
            ),
            Cold::OursFresh => (
                "vhost-vtpm, --host-key-file",
                "new instance (manufacture, first write)",
            ),
            Cold::Swtpm => ("swtpm socket", "swtpm_setup's (plain permall)"),
        }
    }
}

/// One cold start: (socket listening, first successful response), both from spawn.
fn cold_once(world: &World, which: Cold, run: usize) -> Result<(Duration, Duration)> {
    match which {
        Cold::Swtpm => cold_swtpm(world),
        Cold::Ours(key) => cold_ours(world, world.ours_dir(key), key),
        Cold::OursFresh => cold_ours(world, &world.dir.join(format!("fresh-{run}")), Key::File),
    }
}

fn cold_ours(world: &World, dir: &Path, key: Key) -> Result<(Duration, Duration)> {
    std::fs::create_dir_all(dir).context("create daemon dir")?;
    let mut args = world.key_args(key);
    args.extend(["--log-level".to_owned(), "warn".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let mut daemon =
        DaemonProcess::start(&world.daemon_bin, dir, &args).context("start vhost-vtpm")?;
    let listening = t0.elapsed();
    let mut client = VtpmClient::connect(&daemon.socket, ClientOptions::default())
        .context("connect to vhost-vtpm")?;
    let mut transact = |cmd: &[u8]| client.transact(cmd).context("vhost-vtpm transact");
    startup(&mut transact, "vhost-vtpm cold start")?;
    let r = transact(&c::get_random(32))?;
    let first = t0.elapsed();
    ensure!(
        response_code(&r) == Ok(rc::SUCCESS),
        "GetRandom after start: {r:x?}"
    );
    drop(client);
    daemon
        .signal(Signal::SIGTERM)
        .context("stop vhost-vtpm after the cold start")?;
    Ok((listening, first))
}

/// One request/response on swtpm's data socket.
fn raw_transact(s: &mut UnixStream, cmd: &[u8]) -> Result<Vec<u8>> {
    s.write_all(cmd).context("swtpm data write")?;
    let mut r = vec![0u8; HEADER_SIZE];
    s.read_exact(&mut r).context("swtpm data read")?;
    let size = Header::parse(&r)
        .map_err(|e| anyhow!("swtpm response header: {e:?}"))?
        .size as usize;
    r.resize(size.max(HEADER_SIZE), 0);
    s.read_exact(&mut r[HEADER_SIZE..])
        .context("swtpm data read")?;
    Ok(r)
}

fn cold_swtpm(world: &World) -> Result<(Duration, Duration)> {
    let t0 = Instant::now();
    let server =
        SwtpmProcess::start_with(&world.dir.join("cold-swtpm"), &world.swtpm_state, true, &[])
            .context("start swtpm")?;
    let listening = t0.elapsed();
    let data = server.data.as_deref().context("swtpm has no data socket")?;
    let mut stream = UnixStream::connect(data).context("connect to swtpm's data socket")?;
    startup(
        &mut |cmd| raw_transact(&mut stream, cmd),
        "swtpm cold start",
    )?;
    let r = raw_transact(&mut stream, &c::get_random(32))?;
    let first = t0.elapsed();
    ensure!(
        response_code(&r) == Ok(rc::SUCCESS),
        "GetRandom after start: {r:x?}"
    );
    drop(stream);
    server.stop().context("stop swtpm after the cold start")?;
    Ok((listening, first))
}

fn cold_start(args: &Args, world: &World) -> Result<()> {
    let kinds = [
        Cold::Ours(Key::File),
        Cold::Ours(Key::Tpm),
        Cold::OursFresh,
        Cold::Swtpm,
    ];
    let mut times: Vec<(Vec<Duration>, Vec<Duration>)> = vec![Default::default(); kinds.len()];
    // Interleaved, so that drift on the machine touches every kind alike.
    for run in 0..args.cold_runs {
        for (k, &kind) in kinds.iter().enumerate() {
            let (listening, first) = cold_once(world, kind, run)?;
            times[k].0.push(listening);
            times[k].1.push(first);
        }
    }
    println!("\n### Cold start to the first command\n");
    println!(
        "From spawning the server process to the first successful TPM response: wait for \
         its socket, connect (ours: the full vhost-user set-up of the harness; swtpm: its \
         data socket), TPM2_Startup(CLEAR), GetRandom(32). Unpinned; the kinds are \
         interleaved, each stopped with SIGTERM before the next start. \"listening\" is \
         when the socket appeared (our daemon opens its state and starts the engine before \
         listening)."
    );
    println!();
    println!(
        "| server | state | n | listening median ms | first response median ms | first response p90 ms |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    for (k, kind) in kinds.iter().enumerate() {
        let (listening, first) = &mut times[k];
        listening.sort();
        first.sort();
        let (server, state) = kind.labels();
        println!(
            "| {server} | {state} | {} | {:.1} | {:.1} | {:.1} |",
            first.len(),
            ms(pct(listening, 0.5)),
            ms(pct(first, 0.5)),
            ms(pct(first, 0.9))
        );
    }
    Ok(())
}

fn state_sizes(world: &World) -> Result<()> {
    println!("\n### State on disk\n");
    println!("| server | file | bytes |");
    println!("|---|---|---:|");
    let fresh = world.dir.join("fresh-0");
    let dirs: [(&str, PathBuf, Option<Key>); 4] = [
        ("swtpm", world.swtpm_state.clone(), None),
        (
            "vhost-vtpm, --host-key-file",
            world.ours_key.join("state"),
            Some(Key::File),
        ),
        (
            "vhost-vtpm, --host-tpm",
            world.ours_tpm.join("state"),
            Some(Key::Tpm),
        ),
        (
            "vhost-vtpm, new instance",
            fresh.join("state"),
            Some(Key::File),
        ),
    ];
    for (label, dir, key) in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<(String, u64)> = entries
            .flatten()
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                (meta.is_file() && meta.len() > 0)
                    .then(|| (e.file_name().to_string_lossy().into_owned(), meta.len()))
            })
            .collect();
        files.sort();
        for (name, len) in files {
            println!("| {label} | {name} | {len} |");
        }
        if let Some(key) = key {
            for (blob, len) in blobs(world, key, &dir)? {
                println!("| {label} | the newest state slot holds libtpms blob {blob} | {len} |");
            }
        }
    }
    Ok(())
}

/// The libtpms blobs in one of our state directories, as `vtpm-state inspect` lists them.
fn blobs(world: &World, key: Key, state_dir: &Path) -> Result<Vec<(String, u64)>> {
    let out = Command::new(world.daemon_bin.with_file_name("vtpm-state"))
        .arg("inspect")
        .arg("--state-dir")
        .arg(state_dir)
        .args(world.key_args(key))
        .output()
        .context("run vtpm-state inspect")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("blob ")?.split_once(": ")?;
            let len = rest.strip_suffix(" bytes")?.parse().ok()?;
            Some((name.to_string(), len))
        })
        .collect())
}

// ---- 3. Memory -----------------------------------------------------------------------

/// A server's memory now; the server must be running.
fn read_mem(pid: i32) -> Result<Mem> {
    procfs::read_mem(pid).context("read /proc/PID/status")
}

/// The memory samples of one server: idle, half-way through the load, after it.
fn load_and_sample(path: &mut dyn Path_, pid: i32, load_ops: usize) -> Result<[(String, Mem); 3]> {
    let idle = read_mem(pid)?;
    let mut mid = None;
    for i in 0..load_ops {
        let cmd = match i % 5 {
            0 => c::get_random(32),
            1 => c::pcr_extend_sha256(16, &DIGEST),
            2 => c::sign_ecdsa_sha256(SIGNING_KEY, &DIGEST),
            3 => c::nv_write(NV_INDEX, 0, &(i as u64).to_be_bytes()),
            _ => c::nv_increment(COUNTER_INDEX),
        };
        must(path, &cmd, "memory load")?;
        if i + 1 == load_ops / 2 {
            mid = Some(read_mem(pid)?);
        }
    }
    let after = read_mem(pid)?;
    let mid = match mid {
        Some(m) => m,
        None => read_mem(pid)?,
    };
    Ok([
        ("idle (connected, after Startup)".to_string(), idle),
        (
            format!("under load ({} of {load_ops} commands done)", load_ops / 2),
            mid,
        ),
        (format!("after {load_ops} commands"), after),
    ])
}

fn memory(args: &Args, world: &World) -> Result<()> {
    let mut rows: Vec<(&str, [(String, Mem); 3])> = Vec::new();
    for key in [Key::File, Key::Tpm] {
        let mut path = world.start_daemon(key)?;
        let pid = path.daemon.pid().context("the daemon has no pid")?;
        rows.push((key.label(), load_and_sample(&mut path, pid, args.load_ops)?));
        stop_daemon(path)?;
    }
    rows.push((
        "swtpm socket",
        world.with_swtpm(|path, pid| load_and_sample(path, pid, args.load_ops))?,
    ));
    println!("\n### Memory per instance\n");
    println!(
        "/proc/PID/status and smaps_rollup of the server process (all threads), on the \
         imported state. The load is {} commands, in turn GetRandom, PCR_Extend, ECDSA P-256 \
         sign, NV_Write, NV_Increment. RssShmem of our daemon is the guest memory (the \
         harness' 4 MiB memfd) it has touched; VmHWM is the peak RSS so far.",
        args.load_ops
    );
    println!();
    println!(
        "| server | condition | VmRSS MiB | RssAnon MiB | RssFile MiB | RssShmem KiB | Pss MiB | VmHWM MiB |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let mib = |k: u64| k as f64 / 1024.0;
    for (server, samples) in &rows {
        for (cond, m) in samples {
            println!(
                "| {server} | {cond} | {:.1} | {:.1} | {:.1} | {} | {} | {:.1} |",
                mib(m.rss),
                mib(m.anon),
                mib(m.file),
                m.shmem,
                m.pss
                    .map(|p| format!("{:.1}", mib(p)))
                    .unwrap_or_else(|| "-".into()),
                mib(m.hwm)
            );
        }
    }
    Ok(())
}

// ---- 4. Isolation --------------------------------------------------------------------

struct Sample {
    n: usize,
    p50: Duration,
    p99: Duration,
}

fn sample(client: &mut VtpmClient, cmd: &[u8], n: usize) -> Result<Sample> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = client.transact(cmd).context("instance B transact")?;
        lat.push(t.elapsed());
        ensure!(
            response_code(&r) == Ok(rc::SUCCESS),
            "instance B GetRandom: {r:x?}"
        );
    }
    lat.sort();
    Ok(Sample {
        n,
        p50: pct(&lat, 0.5),
        p99: pct(&lat, 0.99),
    })
}

/// B's GetRandom latency with A idle and with A flooded: (idle, flooded, A's ops/s).
fn isolation_placement(
    args: &Args,
    daemon_bin: &Path,
    a_cpus: &[usize],
    b_cpus: &[usize],
) -> Result<(Sample, Sample, f64)> {
    let dir_a = tempfile::tempdir().context("tempdir")?;
    let dir_b = tempfile::tempdir().context("tempdir")?;
    pin(a_cpus)?;
    let mut a = DaemonProcess::start(daemon_bin, dir_a.path(), &["--log-level", "warn"])
        .context("start instance A")?;
    pin(b_cpus)?;
    let mut b = DaemonProcess::start(daemon_bin, dir_b.path(), &["--log-level", "warn"])
        .context("start instance B")?;

    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let flooder = {
        let socket = a.socket.clone();
        let cpus = a_cpus.to_vec();
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<(u64, Duration)> {
            pin(&cpus)?;
            let mut client = VtpmClient::connect(&socket, ClientOptions::default())
                .context("connect to instance A")?;
            startup(
                &mut |cmd| client.transact(cmd).context("instance A transact"),
                "instance A",
            )?;
            // The measuring thread gone means there is nothing to flood for.
            if ready_tx.send(()).is_err() || go_rx.recv().is_err() {
                return Ok((0, Duration::ZERO));
            }
            let cmd = c::pcr_extend_sha256(16, &DIGEST);
            let start = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = client.transact(&cmd).context("flood instance A")?;
                ensure!(
                    response_code(&r) == Ok(rc::SUCCESS),
                    "instance A PCR_Extend: {r:x?}"
                );
                n += 1;
            }
            Ok((n, start.elapsed()))
        })
    };
    let join = |flooder: std::thread::JoinHandle<Result<(u64, Duration)>>| {
        flooder
            .join()
            .map_err(|_| anyhow!("the flooder thread panicked"))?
    };
    if ready_rx.recv().is_err() {
        // The flooder ended before it was ready: its error says why.
        join(flooder)?;
        return Err(anyhow!("the flooder thread ended before it was ready"));
    }
    let mut client = VtpmClient::connect(&b.socket, ClientOptions::default())
        .context("connect to instance B")?;
    startup(
        &mut |cmd| client.transact(cmd).context("instance B transact"),
        "instance B",
    )?;
    let cmd = c::get_random(32);
    for _ in 0..50 {
        client.transact(&cmd).context("instance B warm-up")?;
    }
    let idle = sample(&mut client, &cmd, args.fast)?;
    go_tx.send(()).context("start the flood")?;
    std::thread::sleep(Duration::from_millis(20));
    let flooded = sample(&mut client, &cmd, args.fast)?;
    stop.store(true, Ordering::Relaxed);
    let (n, elapsed) = join(flooder)?;
    for d in [&mut a, &mut b] {
        d.signal(Signal::SIGTERM).context("stop instance")?;
    }
    Ok((idle, flooded, n as f64 / elapsed.as_secs_f64().max(1e-9)))
}

fn isolation(args: &Args, daemon_bin: &Path, all_cpus: &[usize]) -> Result<()> {
    let last = all_cpus.len() - 1;
    let mut placements: Vec<(String, Vec<usize>, Vec<usize>)> = vec![
        ("unpinned".into(), all_cpus.to_vec(), all_cpus.to_vec()),
        ("all on CPU 0".into(), vec![0], vec![0]),
    ];
    if last > 0 {
        placements.push((
            format!("A + flooder on CPU 0, B + client on CPU {last}"),
            vec![0],
            vec![last],
        ));
    }
    println!("\n### Isolation: instance B while instance A is flooded\n");
    println!(
        "Two daemons (two new instances, host key file). B's GetRandom(32) latency over {} \
         commands, first with A connected and idle, then while a separate thread sends \
         PCR_Extend to A back to back. The placement pins both daemons and both client \
         threads.",
        args.fast
    );
    println!();
    println!("| placement | A | B: n | B p50 µs | B p99 µs | p50 ÷ idle | p99 ÷ idle | A: ops/s |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for (title, a_cpus, b_cpus) in placements {
        let (idle, flooded, a_rate) = isolation_placement(args, daemon_bin, &a_cpus, &b_cpus)?;
        println!(
            "| {title} | idle | {} | {:.1} | {:.1} | | | - |",
            idle.n,
            us(idle.p50),
            us(idle.p99)
        );
        println!(
            "| {title} | flooded (PCR_Extend) | {} | {:.1} | {:.1} | {:.2}x | {:.2}x | {:.0} |",
            flooded.n,
            us(flooded.p50),
            us(flooded.p99),
            flooded.p50.as_secs_f64() / idle.p50.as_secs_f64(),
            flooded.p99.as_secs_f64() / idle.p99.as_secs_f64(),
            a_rate
        );
    }
    Ok(())
}
