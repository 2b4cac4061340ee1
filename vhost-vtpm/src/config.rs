//! Command line of the daemon and its validation into a [`Config`].

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use coprocessor::keys::HostKey;

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

    #[command(flatten)]
    pub host_key: HostKeyArgs,

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

/// What protects the instance's state key (shared by the daemon and `vtpm-state`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct HostKeyArgs {
    /// Seal the instance's state key with the host TPM reached through this TCTI
    /// (`device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`, ...).
    #[arg(long, value_name = "TCTI", conflicts_with = "host_key_file")]
    pub host_tpm: Option<String>,

    /// With --host-tpm: bind a new instance's key to these SHA-256 PCRs of the host TPM
    /// (comma-separated, e.g. `0,7`). The key then unseals only while they hold.
    #[arg(long, value_name = "PCRS", value_delimiter = ',')]
    pub host_tpm_pcrs: Vec<u8>,

    /// Without a host TPM: wrap the instance's state key with this key file (32 bytes or 64
    /// hex digits, readable only by the daemon's user; `vtpm-state gen-host-key` makes one).
    #[arg(long, value_name = "PATH")]
    pub host_key_file: Option<PathBuf>,
}

impl HostKeyArgs {
    fn is_set(&self) -> bool {
        self.host_tpm.is_some() || self.host_key_file.is_some()
    }

    /// The validated host key, `None` if neither option was given.
    pub fn host_key(&self) -> Result<Option<HostKey>, ConfigError> {
        if !self.host_tpm_pcrs.is_empty() && self.host_tpm.is_none() {
            return Err(ConfigError::PcrsWithoutHostTpm);
        }
        if let Some(&pcr) = self.host_tpm_pcrs.iter().find(|&&p| p > 23) {
            return Err(ConfigError::BadPcr(pcr));
        }
        let mut pcrs = self.host_tpm_pcrs.clone();
        pcrs.sort_unstable();
        pcrs.dedup();
        Ok(match (&self.host_tpm, &self.host_key_file) {
            (Some(tcti), None) => Some(HostKey::Tpm {
                tcti: tcti.clone(),
                pcrs,
            }),
            (None, Some(path)) => Some(HostKey::File(path.clone())),
            // clap rejects both at once.
            _ => None,
        })
    }
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
    Libtpms {
        state_dir: PathBuf,
        host_key: HostKey,
    },
    Swtpm {
        ctrl: PathBuf,
        data: PathBuf,
    },
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
    #[error(
        "--host-tpm or --host-key-file is required with --engine libtpms: vTPM state is always \
         stored encrypted under a key that one of them protects"
    )]
    NoHostKey,
    #[error("--host-tpm and --host-key-file are not used with --engine swtpm: swtpm encrypts its own state (its --key option)")]
    HostKeyWithSwtpm,
    #[error("--host-tpm-pcrs: PCR {0} is out of range 0..=23")]
    BadPcr(u8),
    #[error("--host-tpm-pcrs needs --host-tpm: PCRs bind the key to the host TPM")]
    PcrsWithoutHostTpm,
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
                let state_dir = args.state_dir.ok_or(ConfigError::NoStateDir)?;
                let host_key = args.host_key.host_key()?.ok_or(ConfigError::NoHostKey)?;
                EngineConfig::Libtpms {
                    state_dir,
                    host_key,
                }
            }
            Engine::Swtpm if args.state_dir.is_some() => {
                return Err(ConfigError::StateDirWithSwtpm)
            }
            Engine::Swtpm if args.host_key.is_set() => return Err(ConfigError::HostKeyWithSwtpm),
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
        "features": ["engine-libtpms", "engine-swtpm", "busy-poll", "fd", "encrypted-state", "host-tpm"],
        "virtio-device-id": crate::virtio_tpm::DEFAULT_DEVICE_ID,
        "max-buffer-size": crate::virtio_tpm::MAX_BUFFER_SIZE,
    })
}

#[cfg(test)]
#[path = "tests/config.rs"]
mod tests;
