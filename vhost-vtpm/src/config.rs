//! Command line of the daemon and its validation into a [`Config`].

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use vtpm_state::host_key_args::{HostKeyArgError, HostKeyArgs};
use vtpm_state::keys::HostKey;

use crate::peer::FrontendPolicy;
use crate::sandbox::{FsSandbox, SeccompMode};

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

    /// The VM this vTPM belongs to, as the launcher names it (1-128 characters of
    /// `A-Za-z0-9._:@-`, e.g. libvirt's domain UUID). A new instance, or one not yet bound, is
    /// bound to it in its authenticated state; a state directory bound to another VM is
    /// refused, so a copy of VM A's state directory never serves VM B. With --engine libtpms.
    #[arg(long, value_name = "ID", value_parser = parse_vm_id)]
    pub vm_id: Option<String>,

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

    /// Mirror these host PCRs (SHA-256 bank, e.g. `0-7` or `0,2,4-7`) into the vTPM at every
    /// TPM2_Startup(CLEAR): vPCR[i] = SHA-256(32 zero bytes || hostPCR[i]); the guest can
    /// neither extend nor reset them. Needs --host-tpm (the host TPM they are read from).
    #[arg(long, value_name = "PCRS", value_parser = parse_pcr_list)]
    pub mirror_pcrs: Option<PcrList>,

    /// vtpm-host's host identity directory (`vtpm-host --dir`): with --mirror-pcrs, the
    /// daemon answers the deep quote (a host TPM quote of the mirrored PCRs by the host AIK,
    /// bound to this vTPM) with host-aik.blob and host-aik.pem; sealed migration uses its
    /// coprocessor key and certificate, host AIK certificate, CA root and migration key.
    #[arg(long, value_name = "DIR")]
    pub host_dir: Option<PathBuf>,

    /// The migration controller's URL (`https://controller:8444`): enables sealed migration
    /// (DEVICE_STATE SAVE and LOAD carry only sealed, signed packages).
    #[arg(long, value_name = "URL")]
    pub migration_controller: Option<String>,

    /// The migration controller's certificate (its controller.pem): the TLS root trusted
    /// for it and the key its tickets are signed with.
    #[arg(long, value_name = "PEM")]
    pub migration_controller_cert: Option<PathBuf>,

    /// The local CA's URL, asked for the revocation status of a source's certificates.
    #[arg(long, value_name = "URL")]
    pub migration_ca: Option<String>,

    /// Receive this vTPM by migration: the state directory must hold no instance; nothing
    /// is served until a package is imported and the controller committed it.
    #[arg(long)]
    pub migration_incoming: bool,

    /// How long a DEVICE_STATE transfer pipe may stay idle (the VMM neither writes nor
    /// closes it on LOAD, neither reads nor closes it on SAVE) before the transfer fails and
    /// the vhost-user connection is served again (1 to 3600 seconds).
    #[arg(long, value_name = "SECONDS", default_value_t = migration::device_state::PIPE_IDLE_TIMEOUT.as_secs())]
    pub migration_pipe_timeout: u64,

    /// What a system call outside the daemon's seccomp allow-list does once the daemon serves:
    /// kill (the process dies with SIGSYS), log (allowed, logged by the kernel), trap (SIGSYS
    /// in the calling thread) or none (no filter). No-new-privileges is set in every mode.
    #[arg(long, value_enum, value_name = "ACTION", default_value_t = SeccompMode::Kill)]
    pub seccomp: SeccompMode,

    /// Serve the daemon's metrics (commands, refused chains, a command latency histogram,
    /// durable state writes and their fsyncs, frontends admitted and refused) on this Unix
    /// socket, created mode 0600: every connection gets one snapshot in the Prometheus text
    /// format (`socat - UNIX-CONNECT:PATH`).
    #[arg(long, value_name = "PATH")]
    pub metrics_socket: Option<PathBuf>,

    /// How the daemon's file system access is confined once it serves: landlock (writes only
    /// beneath --state-dir and --host-dir and to the TPM and random devices; system
    /// libraries and configuration read-only; nothing else) or none.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = FsSandbox::Landlock)]
    pub sandbox: FsSandbox,

    /// Admit vhost-user frontends (VMMs) running as this user id as well (repeatable). The
    /// daemon's own user and root are always admitted; any other peer of the socket
    /// (SO_PEERCRED) is disconnected before it can reach the device.
    #[arg(long = "frontend-uid", value_name = "UID")]
    pub frontend_uids: Vec<u32>,

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
    Libtpms {
        state_dir: PathBuf,
        host_key: HostKey,
        /// The VM the instance is bound to (`--vm-id`).
        vm_id: Option<String>,
    },
    Swtpm {
        ctrl: PathBuf,
        data: PathBuf,
    },
}

/// Sealed migration under a migration controller (ADR 0010).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationConfig {
    pub controller: String,
    pub controller_cert: PathBuf,
    /// `--host-dir` (the same directory as [`Config::host_dir`]), required here.
    pub host_dir: PathBuf,
    pub ca: String,
    /// Started as a migration's destination.
    pub incoming: bool,
    /// `--migration-pipe-timeout`: how long a transfer pipe may stay idle.
    pub pipe_timeout: Duration,
}

/// Validated daemon configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: Listen,
    pub engine: EngineConfig,
    pub busy_poll: Duration,
    pub migration: Option<MigrationConfig>,
    /// Host PCRs mirrored into the vTPM (ascending; empty: none), read through the host
    /// TPM of [`EngineConfig::Libtpms`]'s host key.
    pub mirror_pcrs: Vec<u8>,
    /// vtpm-host's host identity directory.
    pub host_dir: Option<PathBuf>,
    /// The seccomp filter's action on a call outside the allow-list.
    pub seccomp: SeccompMode,
    /// `--metrics-socket`.
    pub metrics_socket: Option<PathBuf>,
    /// `--sandbox`: the file system confinement.
    pub sandbox: FsSandbox,
    /// Which frontends may connect besides the daemon's user and root.
    pub frontends: FrontendPolicy,
}

/// Longest `--vm-id`.
pub const MAX_VM_ID: usize = 128;

/// Parses a VM id: 1 to [`MAX_VM_ID`] characters of `A-Za-z0-9._:@-`, not starting with `-`
/// or `.` (so it can never be mistaken for an option or a path component).
pub fn parse_vm_id(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= MAX_VM_ID
        && !text.starts_with(['-', '.'])
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@-".contains(&b));
    if ok {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a VM id (1-{MAX_VM_ID} characters of A-Za-z0-9._:@-, not starting with - or .)"
        ))
    }
}

/// A list of PCR indices, ascending, without duplicates (`--mirror-pcrs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrList(pub Vec<u8>);

/// Parses a PCR list: comma-separated indices and ranges (`0-7`, `0,2,4-7`), each below 24.
pub fn parse_pcr_list(text: &str) -> Result<PcrList, String> {
    let mut pcrs = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let one = |s: &str| -> Result<u8, String> {
            match s.trim().parse::<u8>() {
                Ok(p) if p < 24 => Ok(p),
                _ => Err(format!("{s:?} is not a PCR index 0..=23")),
            }
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (one(a)?, one(b)?);
                if a > b {
                    return Err(format!("empty PCR range {part:?}"));
                }
                pcrs.extend(a..=b);
            }
            None => pcrs.push(one(part)?),
        }
    }
    pcrs.sort_unstable();
    pcrs.dedup();
    Ok(PcrList(pcrs))
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
    #[error(
        "--mirror-pcrs needs --host-tpm: the mirrored values are the host TPM's PCRs \
         (refusing to start rather than run without the mirror)"
    )]
    MirrorWithoutHostTpm,
    #[error("--vm-id is not used with --engine swtpm: the binding lives in the daemon's own encrypted state")]
    VmIdWithSwtpm,
    #[error(transparent)]
    HostKey(#[from] HostKeyArgError),
    #[error("--{0} is required for sealed migration (--migration-controller, --migration-controller-cert, --migration-ca and --host-dir go together)")]
    MigrationIncomplete(&'static str),
    #[error("--migration-pipe-timeout {0}: between 1 and {MAX_PIPE_TIMEOUT_S} seconds")]
    PipeTimeout(u64),
    #[error("sealed migration needs --engine libtpms (an external swtpm keeps its own state)")]
    MigrationWithSwtpm,
}

/// Longest busy-poll window accepted; beyond this it is a spinning thread, not a window.
const MAX_BUSY_POLL_US: u64 = 10_000;
/// The longest `--migration-pipe-timeout`: an hour of silence is a VMM that is gone.
const MAX_PIPE_TIMEOUT_S: u64 = 3600;

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
                    vm_id: args.vm_id,
                }
            }
            Engine::Swtpm if args.state_dir.is_some() => {
                return Err(ConfigError::StateDirWithSwtpm)
            }
            Engine::Swtpm if args.host_key.is_set() => return Err(ConfigError::HostKeyWithSwtpm),
            Engine::Swtpm if args.vm_id.is_some() => return Err(ConfigError::VmIdWithSwtpm),
            Engine::Swtpm => match (args.swtpm_ctrl, args.swtpm_data) {
                (Some(ctrl), Some(data)) => EngineConfig::Swtpm { ctrl, data },
                _ => return Err(ConfigError::NoSwtpmSockets),
            },
        };
        if args.busy_poll_us > MAX_BUSY_POLL_US {
            return Err(ConfigError::BusyPollTooLong(args.busy_poll_us));
        }
        let mirror_pcrs = args.mirror_pcrs.map(|l| l.0).unwrap_or_default();
        let host_tpm = matches!(
            &engine,
            EngineConfig::Libtpms {
                host_key: HostKey::Tpm { .. },
                ..
            }
        );
        if !mirror_pcrs.is_empty() && !host_tpm {
            return Err(ConfigError::MirrorWithoutHostTpm);
        }
        if !(1..=MAX_PIPE_TIMEOUT_S).contains(&args.migration_pipe_timeout) {
            return Err(ConfigError::PipeTimeout(args.migration_pipe_timeout));
        }
        let migration = match (
            args.migration_controller,
            args.migration_controller_cert,
            args.migration_ca,
            args.host_dir.clone(),
        ) {
            (None, None, None, _) if !args.migration_incoming => None,
            (controller, controller_cert, ca, host_dir) => {
                if matches!(engine, EngineConfig::Swtpm { .. }) {
                    return Err(ConfigError::MigrationWithSwtpm);
                }
                Some(MigrationConfig {
                    controller: controller
                        .ok_or(ConfigError::MigrationIncomplete("migration-controller"))?,
                    controller_cert: controller_cert.ok_or(ConfigError::MigrationIncomplete(
                        "migration-controller-cert",
                    ))?,
                    ca: ca.ok_or(ConfigError::MigrationIncomplete("migration-ca"))?,
                    host_dir: host_dir.ok_or(ConfigError::MigrationIncomplete("host-dir"))?,
                    incoming: args.migration_incoming,
                    pipe_timeout: Duration::from_secs(args.migration_pipe_timeout),
                })
            }
        };
        Ok(Config {
            listen,
            engine,
            busy_poll: Duration::from_micros(args.busy_poll_us),
            migration,
            mirror_pcrs,
            host_dir: args.host_dir,
            seccomp: args.seccomp,
            sandbox: args.sandbox,
            metrics_socket: args.metrics_socket,
            frontends: FrontendPolicy {
                uids: args.frontend_uids,
            },
        })
    }
}

/// The `--print-capabilities` document.
pub fn capabilities() -> serde_json::Value {
    serde_json::json!({
        "type": "tpm",
        "features": ["engine-libtpms", "engine-swtpm", "busy-poll", "fd", "encrypted-state", "host-tpm", "mirror-pcrs", "deep-quote", "sealed-migration", "seccomp", "landlock", "vm-id", "metrics"],
        "virtio-device-id": crate::virtio_tpm::DEFAULT_DEVICE_ID,
        "max-buffer-size": crate::virtio_tpm::MAX_BUFFER_SIZE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A libtpms daemon's listener and state directory, without a host key.
    const LIBTPMS: [&str; 4] = ["--socket-path", "/s", "--state-dir", "/d"];
    /// A complete swtpm engine configuration.
    const SWTPM: [&str; 8] = [
        "--socket-path",
        "/s",
        "--engine",
        "swtpm",
        "--swtpm-ctrl",
        "/c",
        "--swtpm-data",
        "/d",
    ];

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        parse_with(args, &[])
    }

    /// Parses the arguments `base` followed by `extra`.
    fn parse_with(base: &[&str], extra: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["vhost-vtpm"];
        v.extend_from_slice(base);
        v.extend_from_slice(extra);
        Config::try_from(Args::try_parse_from(v).unwrap())
    }

    #[test]
    fn vm_ids() {
        for ok in ["vm1", "6f1d2c3e-0000-4a4a-9b9b-123456789abc", "a.b:c@d_e-f"] {
            assert_eq!(parse_vm_id(ok), Ok(ok.to_string()));
        }
        let long = "v".repeat(MAX_VM_ID + 1);
        for bad in ["", "-vm", ".vm", "vm/1", "vm 1", "vm\n", long.as_str()] {
            assert!(parse_vm_id(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            parse_with(&SWTPM, &["--vm-id", "vm1"]),
            Err(ConfigError::VmIdWithSwtpm)
        );
    }

    #[test]
    fn minimal_libtpms_config() {
        let c = parse(&[
            "--socket-path",
            "/tmp/s",
            "--state-dir",
            "/tmp/d",
            "--host-key-file",
            "/k",
        ])
        .unwrap();
        assert_eq!(c.listen, Listen::Path("/tmp/s".into()));
        assert_eq!(
            c.engine,
            EngineConfig::Libtpms {
                state_dir: "/tmp/d".into(),
                host_key: HostKey::File("/k".into()),
                vm_id: None,
            }
        );
        assert!(c.busy_poll.is_zero());
    }

    #[test]
    fn missing_pieces_are_named() {
        assert_eq!(parse(&["--state-dir", "/d"]), Err(ConfigError::NoListener));
        assert_eq!(
            parse(&["--socket-path", "/s"]),
            Err(ConfigError::NoStateDir)
        );
        assert_eq!(
            parse(&[
                "--socket-path",
                "/s",
                "--engine",
                "swtpm",
                "--swtpm-ctrl",
                "/c"
            ]),
            Err(ConfigError::NoSwtpmSockets)
        );
        assert_eq!(
            parse_with(&LIBTPMS, &["--swtpm-data", "/x"]),
            Err(ConfigError::SwtpmOptionWithoutSwtpm("swtpm-data"))
        );
        assert_eq!(
            parse(&["--fd=-3", "--state-dir", "/d"]),
            Err(ConfigError::BadFd(-3))
        );
        assert_eq!(
            parse_with(
                &LIBTPMS,
                &["--host-key-file", "/k", "--busy-poll-us", "20000"]
            ),
            Err(ConfigError::BusyPollTooLong(20000))
        );
    }

    #[test]
    fn state_is_always_encrypted_under_one_host_key() {
        assert_eq!(parse(&LIBTPMS), Err(ConfigError::NoHostKey));
        let with = |extra: &[&str]| parse_with(&LIBTPMS, extra);
        let c = with(&[
            "--host-tpm",
            "device:/dev/tpmrm0",
            "--host-tpm-pcrs",
            "7,0,7",
        ])
        .unwrap();
        assert_eq!(
            c.engine,
            EngineConfig::Libtpms {
                state_dir: "/d".into(),
                host_key: HostKey::Tpm {
                    tcti: "device:/dev/tpmrm0".into(),
                    pcrs: vec![0, 7],
                    auth: None,
                },
                vm_id: None,
            }
        );
        assert_eq!(
            with(&["--host-tpm", "device:/dev/tpmrm0", "--host-tpm-pcrs", "24"]),
            Err(ConfigError::HostKey(HostKeyArgError::BadPcr(24)))
        );
        // Both at once, or PCRs without a TPM, are usage errors.
        let both = [
            &["x"][..],
            &LIBTPMS,
            &["--host-tpm", "device:/x", "--host-key-file", "/k"],
        ]
        .concat();
        assert!(Args::try_parse_from(both).is_err());
        assert_eq!(
            with(&["--host-key-file", "/k", "--host-tpm-pcrs", "7"]),
            Err(ConfigError::HostKey(HostKeyArgError::PcrsWithoutHostTpm))
        );
        assert_eq!(
            parse_with(&SWTPM, &["--host-key-file", "/k"]),
            Err(ConfigError::HostKeyWithSwtpm)
        );
    }

    #[test]
    fn mirrored_pcrs_need_the_host_tpm() {
        let with = |extra: &[&str]| parse_with(&LIBTPMS, extra);
        let c = with(&[
            "--host-tpm",
            "device:/dev/tpmrm0",
            "--mirror-pcrs",
            "7,0-3,2",
        ])
        .unwrap();
        assert_eq!(c.mirror_pcrs, vec![0, 1, 2, 3, 7]);
        assert_eq!(c.host_dir, None);
        let c = with(&[
            "--host-tpm",
            "device:/dev/tpmrm0",
            "--mirror-pcrs",
            "0-7",
            "--host-dir",
            "/var/lib/vtpm/host",
        ])
        .unwrap();
        assert_eq!(c.mirror_pcrs, (0..8).collect::<Vec<u8>>());
        assert_eq!(c.host_dir, Some("/var/lib/vtpm/host".into()));
        // Never silently without the mirror: no host TPM is a refusal.
        assert_eq!(
            with(&["--host-key-file", "/k", "--mirror-pcrs", "0-7"]),
            Err(ConfigError::MirrorWithoutHostTpm)
        );
        assert_eq!(
            parse_with(&SWTPM, &["--mirror-pcrs", "0"]),
            Err(ConfigError::MirrorWithoutHostTpm)
        );
        // Without the option nothing is mirrored.
        let c = with(&["--host-tpm", "device:/dev/tpmrm0"]).unwrap();
        assert!(c.mirror_pcrs.is_empty());
    }

    #[test]
    fn pcr_lists_are_parsed_strictly() {
        assert_eq!(
            parse_pcr_list("0-7").unwrap().0,
            (0..8).collect::<Vec<u8>>()
        );
        assert_eq!(parse_pcr_list("23").unwrap().0, vec![23]);
        assert_eq!(parse_pcr_list(" 4 , 1-2 ").unwrap().0, vec![1, 2, 4]);
        for bad in ["24", "0-24", "7-3", "", "a", "1,,2", "-1", "0-", "300"] {
            assert!(parse_pcr_list(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Args::try_parse_from(["x", "--mirror-pcrs", "0-30"]).is_err());
    }

    #[test]
    fn socket_path_and_fd_conflict() {
        assert!(Args::try_parse_from(["x", "--socket-path", "/s", "--fd", "3"]).is_err());
    }

    #[test]
    fn swtpm_config() {
        let c = parse(&[
            "--fd",
            "3",
            "--engine",
            "swtpm",
            "--swtpm-ctrl",
            "/c",
            "--swtpm-data",
            "/d",
            "--busy-poll-us",
            "50",
        ])
        .unwrap();
        assert_eq!(c.listen, Listen::Fd(3));
        assert_eq!(c.busy_poll, Duration::from_micros(50));
    }

    #[test]
    fn sealed_migration_options_go_together() {
        let base = [&LIBTPMS[..], &["--host-tpm", "device:/dev/tpmrm0"]].concat();
        let with = |extra: &[&str]| parse_with(&base, extra);
        assert_eq!(with(&[]).unwrap().migration, None);
        let all = [
            "--migration-controller",
            "https://c:8444",
            "--migration-controller-cert",
            "/c.pem",
            "--migration-ca",
            "https://ca:8443",
            "--host-dir",
            "/h",
        ];
        let c = with(&all).unwrap();
        // One --host-dir: the deep quote and sealed migration read the same directory.
        assert_eq!(c.host_dir, Some(PathBuf::from("/h")));
        assert_eq!(
            c.migration,
            Some(MigrationConfig {
                controller: "https://c:8444".into(),
                controller_cert: "/c.pem".into(),
                host_dir: "/h".into(),
                ca: "https://ca:8443".into(),
                incoming: false,
                pipe_timeout: Duration::from_secs(30),
            })
        );
        let mut incoming = all.to_vec();
        incoming.push("--migration-incoming");
        assert!(with(&incoming).unwrap().migration.unwrap().incoming);
        let mut quick = all.to_vec();
        quick.extend(["--migration-pipe-timeout", "2"]);
        assert_eq!(
            with(&quick).unwrap().migration.unwrap().pipe_timeout,
            Duration::from_secs(2)
        );
        for bad in ["0", "3601"] {
            let mut args = all.to_vec();
            args.extend(["--migration-pipe-timeout", bad]);
            assert_eq!(
                with(&args),
                Err(ConfigError::PipeTimeout(bad.parse().unwrap()))
            );
        }
        assert_eq!(
            with(&all[..6]),
            Err(ConfigError::MigrationIncomplete("host-dir"))
        );
        assert_eq!(
            with(&["--migration-incoming"]),
            Err(ConfigError::MigrationIncomplete("migration-controller"))
        );
        assert_eq!(
            parse_with(&SWTPM, &all),
            Err(ConfigError::MigrationWithSwtpm)
        );
    }
}
