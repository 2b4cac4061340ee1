//! What the benchmarks read about server processes and the host from /proc: a process' CPU
//! time and memory, the host's available memory and load, the file system under a path. Shared by the state section (one
//! instance at a time) and `vtpm-bench scale` (hundreds at once).

use std::io;
use std::path::Path;

/// CPU time of all threads of `pid` in nanoseconds (first field of each task's schedstat).
pub(crate) fn cpu_ns(pid: i32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for t in tasks.flatten() {
        let s = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
        total += s.split(' ').next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Memory of one process, KiB (and its thread count).
pub(crate) struct Mem {
    pub(crate) rss: u64,
    pub(crate) anon: u64,
    pub(crate) file: u64,
    pub(crate) shmem: u64,
    pub(crate) hwm: u64,
    pub(crate) pss: Option<u64>,
    pub(crate) threads: u64,
}

/// The number in a `Name: value [kB]` line of a /proc file such as status or meminfo.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)?
            .strip_prefix(':')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// /proc/PID/status and smaps_rollup of `pid`; an error if the process is gone.
pub(crate) fn read_mem(pid: i32) -> io::Result<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let f = |name| kib_field(&status, name).unwrap_or(0);
    Ok(Mem {
        rss: f("VmRSS"),
        anon: f("RssAnon"),
        file: f("RssFile"),
        shmem: f("RssShmem"),
        hwm: f("VmHWM"),
        pss: std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .ok()
            .and_then(|t| kib_field(&t, "Pss")),
        threads: f("Threads"),
    })
}

/// The host's MemAvailable, KiB.
pub(crate) fn mem_available() -> Option<u64> {
    kib_field(
        &std::fs::read_to_string("/proc/meminfo").ok()?,
        "MemAvailable",
    )
}

/// The 1-minute load average: how busy the rest of the machine was during a run.
pub(crate) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// File system type and device holding `path` (longest matching mount point).
pub(crate) fn filesystem(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (dev, mnt, fs) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mnt)
                .then(|| (mnt.len(), format!("{fs} ({dev})")))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, s)| s)
        .unwrap_or_else(|| "?".into())
}
