//! Command line of the daemon and its validation into a [`Config`].

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// vhost-user backend for a virtio TPM 2.0 device.
#[derive(Parser, Debug, Clone)]
#[command(name = "vhost-vtpm", version, about)]
pub struct Args {
    /// Unix socket to listen on for the vhost-user frontend (QEMU's chardev connects to it).
    #[arg(long, value_name = "PATH", conflicts_with = "fd")]
    pub socket_path: Option<PathBuf>,

    /// Already-listening Unix socket inherited from the launcher (e.g. libvirt), instead of
    /// --socket-path.
    #[arg(long, value_name = "FD")]
    pub fd: Option<RawFd>,

    /// Directory holding this vTPM instance's state (created if missing).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Coprocessor engine that executes the TPM commands.
    #[arg(long, value_enum, default_value_t = Engine::Libtpms)]
    pub engine: Engine,

    /// swtpm control socket (`swtpm socket --ctrl type=unixio,path=...`), for --engine swtpm.
    #[arg(long, value_name = "PATH")]
    pub swtpm_ctrl: Option<PathBuf>,

    /// swtpm data socket (`swtpm socket --server type=unixio,path=...`), for --engine swtpm.
    #[arg(long, value_name = "PATH")]
    pub swtpm_data: Option<PathBuf>,

    /// After answering, keep polling the queue this many microseconds before sleeping
    /// (0 = off). Trades CPU for latency on bursts of commands.
    #[arg(long, value_name = "MICROSECONDS", default_value_t = 0)]
    pub busy_poll_us: u64,

    /// Log level: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: log::LevelFilter,

    /// Print the backend's capabilities as JSON (vhost-user.json style) and exit.
    #[arg(long)]
    pub print_capabilities: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// libtpms linked into the daemon (one engine per daemon process).
    Libtpms,
    /// An external swtpm process reached over its control and data sockets.
    Swtpm,
}

/// Where the frontend connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Path(PathBuf),
    Fd(RawFd),
}

/// Which engine serves the device, with what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineConfig {
    Libtpms { state_dir: PathBuf },
    Swtpm { ctrl: PathBuf, data: PathBuf },
}

/// Validated daemon configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: Listen,
    pub engine: EngineConfig,
    pub busy_poll: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("one of --socket-path or --fd is required")]
    NoListener,
    #[error("--fd {0} is not a valid file descriptor number")]
    BadFd(RawFd),
    #[error("--state-dir is required with --engine libtpms")]
    NoStateDir,
    #[error("--state-dir is not used with --engine swtpm: swtpm keeps its own state (--tpmstate)")]
    StateDirWithSwtpm,
    #[error("--swtpm-ctrl and --swtpm-data are required with --engine swtpm")]
    NoSwtpmSockets,
    #[error("--{0} is only meaningful with --engine swtpm")]
    SwtpmOptionWithoutSwtpm(&'static str),
    #[error("--busy-poll-us {0} is above the 10000 µs limit")]
    BusyPollTooLong(u64),
}

/// Longest busy-poll window accepted; beyond this it is a spinning thread, not a window.
const MAX_BUSY_POLL_US: u64 = 10_000;

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Self, Self::Error> {
        let listen = match (args.socket_path, args.fd) {
            (Some(p), None) => Listen::Path(p),
            (None, Some(fd)) if fd >= 0 => Listen::Fd(fd),
            (None, Some(fd)) => return Err(ConfigError::BadFd(fd)),
            // clap rejects both at once.
            _ => return Err(ConfigError::NoListener),
        };
        let engine = match args.engine {
            Engine::Libtpms => {
                if args.swtpm_ctrl.is_some() {
                    return Err(ConfigError::SwtpmOptionWithoutSwtpm("swtpm-ctrl"));
                }
                if args.swtpm_data.is_some() {
                    return Err(ConfigError::SwtpmOptionWithoutSwtpm("swtpm-data"));
                }
                EngineConfig::Libtpms {
                    state_dir: args.state_dir.ok_or(ConfigError::NoStateDir)?,
                }
            }
            Engine::Swtpm if args.state_dir.is_some() => {
                return Err(ConfigError::StateDirWithSwtpm)
            }
            Engine::Swtpm => match (args.swtpm_ctrl, args.swtpm_data) {
                (Some(ctrl), Some(data)) => EngineConfig::Swtpm { ctrl, data },
                _ => return Err(ConfigError::NoSwtpmSockets),
            },
        };
        if args.busy_poll_us > MAX_BUSY_POLL_US {
            return Err(ConfigError::BusyPollTooLong(args.busy_poll_us));
        }
        Ok(Config {
            listen,
            engine,
            busy_poll: Duration::from_micros(args.busy_poll_us),
        })
    }
}

/// The `--print-capabilities` document.
pub fn capabilities() -> serde_json::Value {
    serde_json::json!({
        "type": "tpm",
        "features": ["engine-libtpms", "engine-swtpm", "busy-poll", "fd"],
        "virtio-device-id": crate::virtio_tpm::DEFAULT_DEVICE_ID,
        "max-buffer-size": crate::virtio_tpm::MAX_BUFFER_SIZE,
    })
}

#[cfg(test)]
#[path = "tests/config.rs"]
mod tests;
