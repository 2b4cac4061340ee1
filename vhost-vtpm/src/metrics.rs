//! What an operator can read from a running daemon (`--metrics-socket`): the device's
//! counters, a histogram of command latency, durable state writes and their fsyncs, and the
//! frontends admitted and refused, in the Prometheus text format (version 0.0.4).
//!
//! The socket answers every connection with one snapshot and closes it, so `socat -
//! UNIX-CONNECT:PATH` (or node_exporter's textfile collector fed from it) reads it; nothing is
//! parsed from the reader. It is created 0600 like the vhost-user socket: the counters say
//! what a VM does with its TPM.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};

use crate::backend::{lock, BusyPollStats, SharedDevice};
use crate::request::Stats;

/// Upper bounds of the command latency buckets, in microseconds (the last bucket, +Inf, is
/// implied): from a PCR read on a pinned host (a few µs) to an RSA key generation.
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 100_000,
];

/// A latency histogram with fixed buckets ([`LATENCY_BUCKETS_US`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is above every bound.
    counts: [u64; LATENCY_BUCKETS_US.len() + 1],
    sum_ns: u64,
}

impl Histogram {
    pub fn observe(&mut self, took: Duration) {
        let us = took.as_micros();
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&bound| us <= u128::from(bound))
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.counts[bucket] += 1;
        self.sum_ns = self
            .sum_ns
            .saturating_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// What the daemon's connection loop counts (the device's own counters live in [`Stats`]).
#[derive(Debug, Default)]
pub struct Connections {
    pub admitted: AtomicU64,
    pub refused: AtomicU64,
}

/// One snapshot in the Prometheus text format.
pub fn render(
    stats: &Stats,
    busy: &BusyPollStats,
    connections: &Connections,
    engine: &str,
) -> String {
    let counters: [(&str, &str, String); 12] = [
        (
            "vtpm_commands_total",
            "TPM commands executed and answered.",
            stats.commands.to_string(),
        ),
        (
            "vtpm_refused_chains_total",
            "Descriptor chains refused (malformed, oversized, bad head) or failed in the engine.",
            stats.refused_chains.to_string(),
        ),
        (
            "vtpm_bad_heads_total",
            "Avail entries naming a head beyond the queue.",
            stats.bad_heads.to_string(),
        ),
        (
            "vtpm_engine_failures_total",
            "Commands the engine failed on.",
            stats.engine_failures.to_string(),
        ),
        (
            "vtpm_interrupts_total",
            "Interrupts sent to the guest.",
            stats.interrupts.to_string(),
        ),
        (
            "vtpm_busy_poll_windows_total",
            "Busy-poll windows opened.",
            busy.windows.to_string(),
        ),
        (
            "vtpm_busy_poll_hits_total",
            "Busy-poll windows in which a command arrived.",
            busy.hits.to_string(),
        ),
        (
            "vtpm_busy_poll_spin_seconds_total",
            "Time spent spinning in busy-poll windows.",
            format!("{:.6}", busy.spin_us as f64 / 1e6),
        ),
        (
            "vtpm_state_writes_total",
            "Durable writes of the encrypted state (each a new generation).",
            vtpm_state::encrypted::durable_writes_total().to_string(),
        ),
        (
            "vtpm_state_syncs_total",
            "fsyncs and fdatasyncs of state files and the state directory.",
            durable_fs::syncs_total().to_string(),
        ),
        (
            "vtpm_frontends_admitted_total",
            "vhost-user frontend connections admitted.",
            connections.admitted.load(Ordering::Relaxed).to_string(),
        ),
        (
            "vtpm_frontends_refused_total",
            "vhost-user frontend connections refused by their socket credentials.",
            connections.refused.load(Ordering::Relaxed).to_string(),
        ),
    ];
    let mut out = String::new();
    for (name, help, value) in counters {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name} {value}");
    }
    let name = "vtpm_command_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time from taking a command off the queue to its answer in the guest's buffer."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
        cumulative += stats.latency.counts[i];
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {cumulative}",
            *bound as f64 / 1e6
        );
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\"}} {}",
        stats.latency.count()
    );
    let _ = writeln!(out, "{name}_sum {:.9}", stats.latency.sum_ns as f64 / 1e9);
    let _ = writeln!(out, "{name}_count {}", stats.latency.count());
    let _ = writeln!(out, "# HELP vtpm_info The daemon's engine.");
    let _ = writeln!(out, "# TYPE vtpm_info gauge");
    let _ = writeln!(out, "vtpm_info{{engine=\"{engine}\"}} 1");
    out
}

/// Binds the metrics socket at `path` (0600 whatever the umask; a stale socket file is
/// replaced). Called before the sandbox goes up.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    // Like the vhost-user socket: the file appears listening, replacing whatever was there.
    let listener = crate::daemon::bind_listening(path);
    nix::sys::stat::umask(umask);
    listener
}

/// Answers every connection on `listener` with a snapshot, for the life of the process.
pub fn serve(
    listener: UnixListener,
    device: SharedDevice,
    connections: Arc<Connections>,
    engine: &'static str,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            info!("metrics: serving snapshots");
            for stream in listener.incoming() {
                let mut stream = match stream {
                    Ok(s) => s,
                    Err(e) => {
                        warn!("metrics: accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                let (stats, busy) = lock(&device).stats();
                let text = render(&stats, &busy, &connections, engine);
                // A reader that went away loses its snapshot; nothing else depends on it.
                let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = stream.write_all(text.as_bytes());
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_cumulative_in_the_text() {
        let mut stats = Stats::default();
        for us in [3, 7, 7, 40, 2_000_000] {
            stats.latency.observe(Duration::from_micros(us));
        }
        stats.commands = 5;
        let text = render(
            &stats,
            &BusyPollStats::default(),
            &Connections::default(),
            "libtpms",
        );
        assert!(text.contains("vtpm_commands_total 5\n"), "{text}");
        assert!(text.contains("vtpm_command_duration_seconds_bucket{le=\"0.000005\"} 1\n"));
        assert!(text.contains("vtpm_command_duration_seconds_bucket{le=\"0.00001\"} 3\n"));
        assert!(text.contains("vtpm_command_duration_seconds_bucket{le=\"0.00005\"} 4\n"));
        assert!(text.contains("vtpm_command_duration_seconds_bucket{le=\"0.1\"} 4\n"));
        assert!(text.contains("vtpm_command_duration_seconds_bucket{le=\"+Inf\"} 5\n"));
        assert!(text.contains("vtpm_command_duration_seconds_count 5\n"));
        assert!(
            text.contains("vtpm_command_duration_seconds_sum 2.000057000\n"),
            "{text}"
        );
    }
}
