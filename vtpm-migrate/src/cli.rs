//! Command line of `vtpm-migrate`: the controller (`init`, `serve`), the operator's commands
//! (`register`, `start`, `status`, `list`, `abort`, `commit`) and the host's (`attest`,
//! `export`, `import`, `settle`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use migration::api::{Role, StartMigration};
use migration::client::{Auth, Client};
use migration::MigrationId;
use vtpm_host::HostDir;
use vtpm_state::keys::HostKey;

use crate::controller::{CaRevocation, Controller, Settings};
use crate::setup::{self, Dir, InitOptions};
use crate::sqlite::SqliteStore;

/// vhost-vtpm's migration controller and the operator's and hosts' commands for it.
#[derive(Parser, Debug)]
#[command(name = "vtpm-migrate", version, about)]
pub struct Cli {
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "info", global = true)]
    pub log_level: log::LevelFilter,
    #[command(subcommand)]
    pub command: Command,
}

/// How to reach the controller.
#[derive(Args, Debug, Clone)]
pub struct ControllerArgs {
    /// The controller's base URL (`https://controller.example:8444`).
    #[arg(long, value_name = "URL")]
    pub controller: String,
    /// The controller's certificate (its directory's controller.pem): the only TLS root
    /// trusted.
    #[arg(long, value_name = "PEM")]
    pub controller_cert: PathBuf,
}

/// The operator's credentials.
#[derive(Args, Debug, Clone)]
pub struct OperatorArgs {
    #[command(flatten)]
    pub controller: ControllerArgs,
    /// File holding the operator's bearer token (the controller directory's admin.token).
    #[arg(long, value_name = "PATH")]
    pub token_file: PathBuf,
}

/// A host's side: its identity directory and TPM.
#[derive(Args, Debug, Clone)]
pub struct HostArgs {
    #[command(flatten)]
    pub controller: ControllerArgs,
    /// The host identity directory (the one `vtpm-host` keeps).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/vtpm/host")]
    pub host_dir: PathBuf,
    /// The host TPM (tpm2-tss TCTI), which holds the host AIK and wraps the host's keys.
    #[arg(long, value_name = "TCTI")]
    pub host_tpm: String,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleArg {
    Source,
    Destination,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the controller's directory: its signing key and certificate, the HTTPS
    /// certificate, the operator's token (printed once), the configuration.
    Init {
        /// The controller's directory to create (must not hold a controller yet).
        #[arg(long, value_name = "DIR")]
        store: PathBuf,
        /// The local CA's base URL (revocation status of host certificates).
        #[arg(long, value_name = "URL")]
        ca: String,
        /// The local CA's root certificate.
        #[arg(long, value_name = "PEM")]
        ca_cert: PathBuf,
        /// DNS name or IP address of the HTTPS certificate (repeatable).
        #[arg(long, value_name = "NAME", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
        tls_name: Vec<String>,
        /// How long a migration may take before it is aborted.
        #[arg(long, value_name = "SECONDS", default_value_t = 600)]
        lifetime_secs: u64,
    },
    /// Serve the controller over HTTPS until SIGTERM or SIGINT; prints
    /// `listening on https://ADDR` first.
    Serve {
        /// The controller's directory (`init --store`).
        #[arg(long, value_name = "DIR")]
        store: PathBuf,
        /// Address to listen on (port 0: any free port).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8444")]
        listen: SocketAddr,
    },
    /// Register a vTPM instance (its id, as `vtpm-state inspect` prints it) on its host.
    Register {
        #[command(flatten)]
        operator: OperatorArgs,
        /// The instance id (32 hex digits, as `vtpm-state inspect` prints it).
        #[arg(long, value_name = "HEX")]
        instance: String,
        /// The host it lives on: its host id (the id it enrolled with, `vtpm-host enroll`;
        /// the CN of its host AIK certificate).
        #[arg(long, value_name = "HOST")]
        owner: String,
    },
    /// Ask for a migration; prints its id. Both hosts must then `attest`.
    Start {
        #[command(flatten)]
        operator: OperatorArgs,
        /// The instance id (32 hex digits, as registered).
        #[arg(long, value_name = "HEX")]
        instance: String,
        /// The VM the ticket names: a destination daemon started for one VM (its VM id)
        /// takes in only a package for that VM.
        #[arg(long, value_name = "VM")]
        vm: String,
        /// Host id of the host the instance lives on now (its registered owner).
        #[arg(long, value_name = "HOST")]
        source: String,
        /// Host id of the host it moves to.
        #[arg(long, value_name = "HOST")]
        destination: String,
    },
    /// Show a migration and its steps (JSON).
    Status {
        #[command(flatten)]
        operator: OperatorArgs,
        /// The migration id (`start` printed it).
        #[arg(long, value_name = "ID")]
        migration: String,
    },
    /// List migrations (JSON); only unfinished ones with --active.
    List {
        #[command(flatten)]
        operator: OperatorArgs,
        /// Only migrations not in a final state (committed, source deleted, aborted).
        #[arg(long)]
        active: bool,
    },
    /// Abort a migration that is not committed: the source resumes.
    Abort {
        #[command(flatten)]
        operator: OperatorArgs,
        /// The migration id (`start` printed it).
        #[arg(long, value_name = "ID")]
        migration: String,
        /// Why, recorded with the abort.
        #[arg(long, value_name = "TEXT", default_value = "")]
        reason: String,
    },
    /// Commit an imported migration (normally automatic).
    Commit {
        #[command(flatten)]
        operator: OperatorArgs,
        /// The migration id (`start` printed it).
        #[arg(long, value_name = "ID")]
        migration: String,
    },
    /// Offline move, on the source host: seal the stopped instance in --state-dir into a
    /// package file for the authorised migration's destination; the instance is then held
    /// until the controller decides (`settle`, or a daemon started on it, acts on that).
    Export {
        #[command(flatten)]
        host: HostArgs,
        /// The stopped instance's state directory.
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
        /// Where to write the package file.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Offline move, on the destination host: import a package file into the empty
    /// --state-dir (every check of a live migration's LOAD), report it imported and wait for
    /// the commit.
    Import {
        #[command(flatten)]
        host: HostArgs,
        /// The empty state directory to import into.
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
        /// The package file `export` wrote on the source host.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        /// The local CA, asked for the revocation status of the source's certificates.
        #[arg(long, value_name = "URL")]
        ca: String,
        /// How long to wait for the commit.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        wait_secs: u64,
    },
    /// Wait for the controller's decision about the migration --state-dir is held for, and
    /// act on it: a committed source is destroyed (tombstone, key record, state), an
    /// aborted one released; a committed destination released, an aborted one destroyed.
    Settle {
        #[command(flatten)]
        host: HostArgs,
        /// The state directory held for a migration (`export`ed or `import`ed).
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
        /// How long to wait for the controller's decision.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        wait_secs: u64,
    },
    /// Attest this host for a migration: a quote of the host TPM over the controller's
    /// nonce and this host's migration key.
    Attest {
        #[command(flatten)]
        host: HostArgs,
        /// The migration id (`start` printed it).
        #[arg(long, value_name = "ID")]
        migration: String,
        /// This host's part in the migration.
        #[arg(long, value_enum)]
        role: RoleArg,
    },
}

/// A failed command: what to print, and the exit code.
#[derive(Debug)]
pub struct CliError(pub String);

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError(e.to_string())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError(format!("{}: {e}", path.display())))
}

fn operator_client(args: &OperatorArgs) -> Result<Client, CliError> {
    let token = String::from_utf8_lossy(&read(&args.token_file)?)
        .trim()
        .to_owned();
    Ok(Client::new(
        &args.controller.controller,
        &read(&args.controller.controller_cert)?,
        Auth::Operator(token),
    )?)
}

fn print_json(value: &impl serde::Serialize) -> Result<(), CliError> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn parse_migration(text: &str) -> Result<MigrationId, CliError> {
    Ok(text.parse()?)
}

/// The host key of a host whose keys its TPM wraps.
pub fn tpm_host_key(tcti: &str) -> HostKey {
    HostKey::Tpm {
        tcti: tcti.to_owned(),
        pcrs: Vec::new(),
        auth: None,
    }
}

/// Runs a command.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Init {
            store,
            ca,
            ca_cert,
            tls_name,
            lifetime_secs,
        } => {
            let token = setup::init(
                &store,
                &InitOptions {
                    ca_url: ca,
                    ca_pem: read(&ca_cert)?,
                    tls_names: tls_name,
                    lifetime_secs,
                },
            )?;
            println!("{token}");
            Ok(())
        }
        Command::Serve { store, listen } => serve(&store, listen),
        Command::Register {
            operator,
            instance,
            owner,
        } => print_json(&operator_client(&operator)?.register_instance(&instance, &owner)?),
        Command::Start {
            operator,
            instance,
            vm,
            source,
            destination,
        } => {
            let view = operator_client(&operator)?.start(&StartMigration {
                instance,
                vm,
                source,
                destination,
            })?;
            println!("{}", view.id);
            Ok(())
        }
        Command::Status {
            operator,
            migration,
        } => print_json(&operator_client(&operator)?.migration(&parse_migration(&migration)?)?),
        Command::List { operator, active } => {
            print_json(&operator_client(&operator)?.list(active)?)
        }
        Command::Abort {
            operator,
            migration,
            reason,
        } => {
            print_json(&operator_client(&operator)?.abort(&parse_migration(&migration)?, &reason)?)
        }
        Command::Commit {
            operator,
            migration,
        } => print_json(&operator_client(&operator)?.commit(&parse_migration(&migration)?)?),
        Command::Export {
            host,
            state_dir,
            out,
        } => {
            let id = offline(&host)?.export(&state_dir, &out)?;
            println!("{id}");
            Ok(())
        }
        Command::Import {
            host,
            state_dir,
            input,
            ca,
            wait_secs,
        } => {
            let o = offline(&host)?;
            let ca_pem = o.host.ca_root.to_pem()?;
            let ca = vtpm_ca::Client::new(&ca, &ca_pem, None)?;
            let decision = o.import(&state_dir, &input, &ca, Duration::from_secs(wait_secs))?;
            println!("{}", decision_text(decision));
            Ok(())
        }
        Command::Settle {
            host,
            state_dir,
            wait_secs,
        } => {
            let decision = offline(&host)?.settle(&state_dir, Duration::from_secs(wait_secs))?;
            println!("{}", decision_text(decision));
            Ok(())
        }
        Command::Attest {
            host,
            migration,
            role,
        } => {
            let dir = HostDir::open(&host.host_dir)?;
            let key = tpm_host_key(&host.host_tpm);
            let client = crate::host::client(
                &host.controller.controller,
                &read(&host.controller.controller_cert)?,
                &dir,
                &key,
            )?;
            let mut tpm = host_tpm::HostTpm::connect(&host.host_tpm)?;
            let role = match role {
                RoleArg::Source => Role::Source,
                RoleArg::Destination => Role::Destination,
            };
            let view =
                crate::host::attest(&client, &dir, &mut tpm, &parse_migration(&migration)?, role)?;
            println!(
                "host {} attested as the {} of migration {} (now {})",
                dir.host_id()?,
                role.as_str(),
                view.id,
                view.state.as_str()
            );
            Ok(())
        }
    }
}

fn offline(host: &HostArgs) -> Result<crate::offline::Offline, CliError> {
    Ok(crate::offline::Offline::new(
        &host.host_dir,
        tpm_host_key(&host.host_tpm),
        &host.controller.controller,
        &read(&host.controller.controller_cert)?,
    )?)
}

fn decision_text(d: migration::source::Decision) -> String {
    match d {
        migration::source::Decision::Committed => "committed".into(),
        migration::source::Decision::Aborted => "aborted".into(),
        migration::source::Decision::Undecided(s) => format!("undecided ({})", s.as_str()),
    }
}

fn serve(store: &Path, listen: SocketAddr) -> Result<(), CliError> {
    let dir = Dir::open(store)?;
    let ca_pem = dir.read(setup::CA_CERT)?;
    let ca = vtpm_ca::Client::new(&dir.config.ca_url, &ca_pem, None)?;
    let settings = Settings {
        key: dir.key()?,
        ca_root: dir.cert(setup::CA_CERT)?,
        revocation: Box::new(CaRevocation(ca)),
        admin_token_sha256: dir.admin_token_sha256()?,
        lifetime: Duration::from_secs(dir.config.lifetime_secs),
        crash_after: std::env::var("VTPM_MIGRATE_CRASH_AFTER").ok(),
    };
    let db = SqliteStore::open(&dir.file(setup::DATABASE))?;
    let controller = Arc::new(Controller::new(Box::new(db), settings));
    // Whatever a crash left unfinished is driven on before the first request.
    controller.recover()?;
    let listener = std::net::TcpListener::bind(listen)?;
    let addr = listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!("listening on https://{addr}");
    std::io::stdout().flush()?;
    log::info!("migration controller serving on https://{addr}");
    rt.block_on(crate::server::serve(
        controller,
        listener,
        &dir.file(setup::TLS_CERT),
        &dir.file(setup::TLS_KEY),
        crate::server::termination_signal(),
    ))?;
    Ok(())
}
