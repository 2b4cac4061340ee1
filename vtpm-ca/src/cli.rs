//! The `vtpm-ca` command line: clap arguments ([`Args`]) validated into a [`Command`]
//! (`TryFrom<Args>`), and [`run`], which carries one out.
//!
//! ```text
//! vtpm-ca [--store DIR] init [--tls-name NAME]... [--validity-secs N] [--ek-root PEM]... [--crl-url URL]
//! vtpm-ca [--store DIR] serve [--listen ADDR]
//! vtpm-ca [--store DIR] acl add --name N [--read] [--write-prefix P]... [--admin] [--token-file PATH]
//! vtpm-ca [--store DIR] acl list
//! vtpm-ca [--store DIR] revoke (--serial HEX | --cert PEM) [--reason TEXT]
//! vtpm-ca [--store DIR] crl [--out FILE]
//! vtpm-ca [--store DIR] add-ek-root PEM
//! vtpm-ca [--store DIR] enroll-token --subject S [--validity-secs N] [--token-file PATH]
//! vtpm-ca [--store DIR] release --kind host|vtpm --subject S
//! vtpm-ca [--store DIR] list
//! ```

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use openssl::x509::X509;

use crate::ca::Ca;
use crate::certstore::{Acl, CertStoreError};
use crate::issue::Kind;
use crate::revocation::{self, RevocationError, Revocations};
use crate::setup::{self, InitError, InitOptions};
use crate::store::{self, Config, Store, StoreError};
use crate::util::{expired, fingerprint, now_unix, subject_text};

/// vhost-vtpm's local CA: enrolls host TPMs and vTPMs, issues AIK certificates, keeps an
/// access-controlled certificate store and a CRL.
#[derive(Parser, Debug, Clone)]
#[command(name = "vtpm-ca", version, about)]
pub struct Args {
    /// The CA's store directory.
    #[arg(long, global = true, value_name = "DIR", default_value = crate::DEFAULT_STORE)]
    pub store: PathBuf,

    /// Log level: error, warn, info, debug or trace.
    #[arg(long, global = true, value_name = "LEVEL", default_value = "info")]
    pub log_level: log::LevelFilter,

    #[command(subcommand)]
    pub command: CommandArgs,
}

#[derive(Subcommand, Debug, Clone)]
pub enum CommandArgs {
    /// Create a new store: CA key and root, TLS certificate, config, admin token.
    Init {
        /// DNS name or IP address of the HTTPS server certificate (repeatable; default:
        /// localhost, 127.0.0.1, ::1).
        #[arg(long = "tls-name", value_name = "NAME")]
        tls_names: Vec<String>,
        /// Lifetime of issued (AIK) certificates, seconds.
        #[arg(long, value_name = "N", default_value_t = Config::default().validity_secs)]
        validity_secs: u64,
        /// Lifetime of the HTTPS server certificate, seconds.
        #[arg(long, value_name = "N", default_value_t = 365 * 86_400)]
        tls_validity_secs: u64,
        /// Time between a CRL's thisUpdate and nextUpdate, seconds.
        #[arg(long, value_name = "N", default_value_t = Config::default().crl_validity_secs)]
        crl_validity_secs: u64,
        /// How long an enrollment session waits for its finish, seconds.
        #[arg(long, value_name = "N", default_value_t = Config::default().session_ttl_secs)]
        session_ttl_secs: u64,
        /// Trusted EK root (PEM file, repeatable); more with `add-ek-root`.
        #[arg(long = "ek-root", value_name = "PEM")]
        ek_roots: Vec<PathBuf>,
        /// Let vTPMs enroll through coprocessor certificates that were never registered.
        #[arg(long)]
        allow_unregistered_coprocessor: bool,
        /// Common name of the root certificate.
        #[arg(long, value_name = "CN", default_value = "vhost-vtpm local CA")]
        root_name: String,
        /// URL of the CRL that issued certificates name as their CRL distribution point
        /// (default: `https://<serve address>/v1/crl`).
        #[arg(long, value_name = "URL")]
        crl_url: Option<String>,
    },
    /// Serve the HTTPS API; prints `listening on https://ADDR` first.
    Serve {
        /// Address to listen on (port 0: any free port).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
    },
    /// Manage the principals of the certificate store.
    Acl {
        #[command(subcommand)]
        command: AclArgs,
    },
    /// Revoke a certificate.
    Revoke {
        /// Serial (hex) of a certificate the CA issued.
        #[arg(long, value_name = "HEX")]
        serial: Option<String>,
        /// Any certificate (PEM file): by serial if the CA issued it, else by fingerprint.
        #[arg(long, value_name = "PEM")]
        cert: Option<PathBuf>,
        /// Why.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Write the current CRL (DER).
    Crl {
        /// Output file (default: standard output).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Trust an EK root (PEM file, one or more certificates) for host enrollment.
    AddEkRoot {
        /// PEM file with the certificates to trust (a TPM manufacturer's root CA, or its
        /// intermediate that issued the EK certificates, or both); a single DER certificate
        /// works too.
        #[arg(value_name = "PEM")]
        pem: PathBuf,
    },
    /// Issue a host enrolment token: it lets one host TPM enroll the host subject S, once,
    /// within its lifetime (prints the token; the CA keeps only its hash).
    EnrollToken {
        /// The host subject (host id) it is for.
        #[arg(long, value_name = "S")]
        subject: String,
        /// Lifetime of the token, seconds (at most 30 days).
        #[arg(long, value_name = "N", default_value_t = crate::tokens::DEFAULT_TOKEN_VALIDITY_SECS)]
        validity_secs: u64,
        /// Write the token to this new file (created mode 0600; an existing file is never
        /// replaced) instead of printing it.
        #[arg(long, value_name = "PATH")]
        token_file: Option<PathBuf>,
    },
    /// Release an enrolled subject from the endorsement key it is bound to, so that another
    /// TPM may enroll it (the certificates issued for it stay valid: revoke them apart).
    Release {
        /// host or vtpm.
        #[arg(long, value_name = "KIND")]
        kind: Kind,
        /// The subject (host id or vTPM instance id).
        #[arg(long, value_name = "S")]
        subject: String,
    },
    /// List issued, registered and named certificates, subject bindings and the EK roots.
    List,
}

#[derive(Subcommand, Debug, Clone)]
pub enum AclArgs {
    /// Add a principal; prints its bearer token (shown once).
    Add(NewPrincipal),
    /// List the principals.
    List,
}

// `vtpm-ca acl add`: the principal to add, as given and, checked, as the command carries it.
// (A doc comment here would become the subcommand's help text.)
#[derive(clap::Args, Debug, Clone)]
pub struct NewPrincipal {
    /// The principal's name (unique; e.g. the host id of the host that will use it).
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// May read every certificate.
    #[arg(long)]
    pub read: bool,
    /// May store certificates whose names start with this (repeatable; "" = all).
    #[arg(long = "write-prefix", value_name = "PREFIX")]
    pub write_prefixes: Vec<String>,
    /// May revoke.
    #[arg(long)]
    pub admin: bool,
    /// Write the bearer token to this new file (created mode 0600; an existing file is never
    /// replaced) instead of printing it: a token redirected with `>` would get the umask's
    /// mode, usually world-readable.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    Serial(String),
    Cert(PathBuf),
}

/// A validated command.
#[derive(Debug, Clone)]
pub enum Command {
    Init {
        store: PathBuf,
        options: Box<InitOptions>,
    },
    Serve {
        store: PathBuf,
        listen: SocketAddr,
    },
    AclAdd {
        store: PathBuf,
        principal: NewPrincipal,
    },
    AclList {
        store: PathBuf,
    },
    Revoke {
        store: PathBuf,
        target: RevokeTarget,
        reason: Option<String>,
    },
    Crl {
        store: PathBuf,
        out: Option<PathBuf>,
    },
    AddEkRoot {
        store: PathBuf,
        pem: PathBuf,
    },
    Release {
        store: PathBuf,
        kind: Kind,
        subject: String,
    },
    EnrollToken {
        store: PathBuf,
        subject: String,
        validity_secs: u64,
        token_file: Option<PathBuf>,
    },
    List {
        store: PathBuf,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no PEM certificate in it")]
    NoCertificate(PathBuf),
    #[error(transparent)]
    Init(#[from] InitError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    CertStore(#[from] CertStoreError),
    #[error(transparent)]
    Revocation(#[from] RevocationError),
    #[error(transparent)]
    Token(#[from] crate::tokens::TokenError),
    #[error("server: {0}")]
    Server(std::io::Error),
    #[error("OpenSSL: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
}

impl TryFrom<Args> for Command {
    type Error = CliError;

    fn try_from(args: Args) -> Result<Self, Self::Error> {
        let store = args.store;
        if store.as_os_str().is_empty() {
            return Err(CliError::Usage("--store must not be empty".into()));
        }
        Ok(match args.command {
            CommandArgs::Init {
                tls_names,
                validity_secs,
                tls_validity_secs,
                crl_validity_secs,
                session_ttl_secs,
                ek_roots,
                allow_unregistered_coprocessor,
                root_name,
                crl_url,
            } => {
                if let Some(url) = &crl_url {
                    crate::issue::crl_distribution_points(url)
                        .map_err(|e| CliError::Usage(format!("--crl-url: {e}")))?;
                }
                for (what, v) in [
                    ("--validity-secs", validity_secs),
                    ("--tls-validity-secs", tls_validity_secs),
                    ("--crl-validity-secs", crl_validity_secs),
                    ("--session-ttl-secs", session_ttl_secs),
                ] {
                    if v == 0 || v > 100 * 365 * 86_400 {
                        return Err(CliError::Usage(format!(
                            "{what} {v} is out of range (1 second to 100 years)"
                        )));
                    }
                }
                if root_name.trim().is_empty() || root_name.len() > 64 {
                    return Err(CliError::Usage(
                        "--root-name must be 1 to 64 characters".into(),
                    ));
                }
                let mut roots = Vec::new();
                for p in &ek_roots {
                    roots.extend(read_certs(p)?);
                }
                let defaults = InitOptions::default();
                Command::Init {
                    store,
                    options: Box::new(InitOptions {
                        tls_names: if tls_names.is_empty() {
                            defaults.tls_names
                        } else {
                            tls_names
                        },
                        tls_validity_secs,
                        root_validity_secs: defaults.root_validity_secs,
                        root_name,
                        ek_roots: roots,
                        config: Config {
                            validity_secs,
                            crl_validity_secs,
                            session_ttl_secs,
                            require_registered_coprocessor: !allow_unregistered_coprocessor,
                            crl_url,
                            ..Config::default()
                        },
                    }),
                }
            }
            CommandArgs::Serve { listen } => Command::Serve { store, listen },
            CommandArgs::Acl {
                command: AclArgs::Add(principal),
            } => {
                if !principal.read && principal.write_prefixes.is_empty() && !principal.admin {
                    return Err(CliError::Usage(
                        "a principal needs --read, --write-prefix or --admin".into(),
                    ));
                }
                Command::AclAdd { store, principal }
            }
            CommandArgs::Acl {
                command: AclArgs::List,
            } => Command::AclList { store },
            CommandArgs::Revoke {
                serial,
                cert,
                reason,
            } => {
                let target = match (serial, cert) {
                    (Some(s), None) => RevokeTarget::Serial(
                        store::normalize_serial(&s).map_err(|e| CliError::Usage(e.to_string()))?,
                    ),
                    (None, Some(p)) => RevokeTarget::Cert(p),
                    _ => {
                        return Err(CliError::Usage(
                            "give exactly one of --serial and --cert".into(),
                        ))
                    }
                };
                Command::Revoke {
                    store,
                    target,
                    reason,
                }
            }
            CommandArgs::Crl { out } => Command::Crl { store, out },
            CommandArgs::AddEkRoot { pem } => Command::AddEkRoot { store, pem },
            CommandArgs::Release { kind, subject } => {
                crate::enroll::validate_subject(&subject)
                    .map_err(|e| CliError::Usage(e.to_string()))?;
                Command::Release {
                    store,
                    kind,
                    subject,
                }
            }
            CommandArgs::EnrollToken {
                subject,
                validity_secs,
                token_file,
            } => {
                crate::enroll::validate_subject(&subject)
                    .map_err(|e| CliError::Usage(e.to_string()))?;
                if validity_secs == 0 || validity_secs > crate::tokens::MAX_TOKEN_VALIDITY_SECS {
                    return Err(CliError::Usage(format!(
                        "--validity-secs {validity_secs} is out of range (1 second to 30 days)"
                    )));
                }
                Command::EnrollToken {
                    store,
                    subject,
                    validity_secs,
                    token_file,
                }
            }
            CommandArgs::List => Command::List { store },
        })
    }
}

/// Certificates from a PEM file (or a single DER certificate).
fn read_certs(path: &PathBuf) -> Result<Vec<X509>, CliError> {
    let bytes = std::fs::read(path).map_err(|source| CliError::Io {
        path: path.clone(),
        source,
    })?;
    let certs = match X509::stack_from_pem(&bytes) {
        Ok(c) if !c.is_empty() => c,
        _ => X509::from_der(&bytes)
            .map(|c| vec![c])
            .map_err(|_| CliError::NoCertificate(path.clone()))?,
    };
    Ok(certs)
}

fn write_out(out: &mut dyn Write, text: std::fmt::Arguments<'_>) -> Result<(), CliError> {
    out.write_fmt(text)
        .and_then(|_| out.flush())
        .map_err(|source| CliError::Io {
            path: PathBuf::from("<stdout>"),
            source,
        })
}

/// Carries out `cmd`, writing what it reports to `out`.
pub fn run(cmd: Command, out: &mut dyn Write) -> Result<(), CliError> {
    match cmd {
        Command::Init { store, options } => {
            let init = setup::init(&store, &options)?;
            let s = &init.store;
            write_out(
                out,
                format_args!(
                    "created CA store {}\nroot certificate: {}\nadmin token (shown once; also in {}, mode 0600): {}\n",
                    s.dir().display(),
                    s.ca_cert_path().display(),
                    s.admin_token_path().display(),
                    init.admin_token
                ),
            )
        }
        Command::Serve { store, listen } => serve(&store, listen, out),
        Command::AclAdd { store, principal } => {
            let s = Store::open(&store)?;
            let NewPrincipal {
                name,
                read,
                write_prefixes,
                admin,
                token_file,
            } = principal;
            let what = format!("bearer token of principal {name}");
            write_token(token_file, &what, out, || {
                Ok(Acl::add(&s, &name, read, write_prefixes, admin)?)
            })
        }
        Command::AclList { store } => {
            let s = Store::open(&store)?;
            for p in Acl::load(&s)?.principals {
                write_out(
                    out,
                    format_args!(
                        "{}\tread={}\tadmin={}\twrite={:?}\n",
                        p.name, p.read, p.admin, p.write
                    ),
                )?;
            }
            Ok(())
        }
        Command::Revoke {
            store,
            target,
            reason,
        } => {
            let s = Store::open(&store)?;
            let r = match target {
                RevokeTarget::Serial(serial) => {
                    revocation::revoke_serial(&s, &serial, reason.as_deref())?
                }
                RevokeTarget::Cert(p) => {
                    let certs = read_certs(&p)?;
                    let c = certs.first().ok_or(CliError::NoCertificate(p.clone()))?;
                    revocation::revoke_cert(&s, c, reason.as_deref())?
                }
            };
            write_out(
                out,
                format_args!(
                    "{} serial={} fingerprint={}\n",
                    if r.newly_revoked {
                        "revoked"
                    } else {
                        "already revoked"
                    },
                    r.serial.as_deref().unwrap_or("-"),
                    r.fingerprint.as_deref().unwrap_or("-")
                ),
            )
        }
        Command::Crl { store, out: file } => {
            let s = Store::open(&store)?;
            let der = revocation::crl(&s)?;
            match file {
                Some(p) => durable_fs::replace(&p, &der, store::PUBLIC_FILE, true)
                    .map_err(|source| CliError::Io { path: p, source }),
                None => out.write_all(&der).map_err(|source| CliError::Io {
                    path: PathBuf::from("<stdout>"),
                    source,
                }),
            }
        }
        Command::AddEkRoot { store, pem } => {
            let s = Store::open(&store)?;
            let s = s.lock()?;
            for c in read_certs(&pem)? {
                let fp = s.add_ek_root(&c)?;
                write_out(
                    out,
                    format_args!("trusted EK root {fp} {}\n", subject_text(&c)),
                )?;
            }
            Ok(())
        }
        Command::Release {
            store,
            kind,
            subject,
        } => {
            let s = Store::open(&store)?;
            let released = s.lock()?.release_subject(kind, &subject)?;
            match released {
                Some(b) => {
                    log::info!(
                        "released aik/{kind}/{subject} from endorsement key {}",
                        b.ek_public_key_sha256
                    );
                    write_out(
                        out,
                        format_args!(
                            "released aik/{kind}/{subject} (was bound to endorsement key {})\n",
                            b.ek_public_key_sha256
                        ),
                    )
                }
                None => write_out(
                    out,
                    format_args!(
                        "aik/{kind}/{subject} is not bound to an endorsement key: nothing to release\n"
                    ),
                ),
            }
        }
        Command::EnrollToken {
            store,
            subject,
            validity_secs,
            token_file,
        } => {
            let s = Store::open(&store)?;
            let what = format!("enrolment token for host {subject}");
            write_token(token_file, &what, out, || {
                Ok(crate::tokens::issue(&s, &subject, validity_secs, "cli")?.token)
            })
        }
        Command::List { store } => list(&Store::open(&store)?, out),
    }
}

/// Makes a secret token with `make` and prints it, or, with `file`, writes it to that new
/// file instead. The file is created before the token is made (O_CREAT|O_EXCL: mode 0600
/// from the start, and never through a symlink, which O_EXCL refuses too), so that a path that is taken or unwritable
/// fails before the CA records a token nobody will ever see, and the token is never readable
/// by others, whatever the umask; if making the token fails, the empty file is removed.
fn write_token(
    file: Option<PathBuf>,
    what: &str,
    out: &mut dyn Write,
    make: impl FnOnce() -> Result<String, CliError>,
) -> Result<(), CliError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let Some(path) = file else {
        let token = make()?;
        return write_out(out, format_args!("{token}\n"));
    };
    let io = |source| CliError::Io {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    let token = match make() {
        Ok(t) => t,
        Err(e) => {
            drop(f);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    };
    f.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io)?;
    write_out(
        out,
        format_args!("{what} written to {} (mode 0600)\n", path.display()),
    )
}

fn list(s: &Store, out: &mut dyn Write) -> Result<(), CliError> {
    let revs = Revocations::load(s)?;
    write_out(out, format_args!("issued:\n"))?;
    for c in s.issued_all()? {
        let serial = store::serial_of(&c)?;
        let state = if revs.serial(&serial).is_some() {
            "revoked"
        } else if expired(&c, now_unix())? {
            "expired"
        } else {
            "good"
        };
        write_out(
            out,
            format_args!(
                "  {serial}\t{state}\tnot_after={}\t{}\t{}\n",
                c.not_after(),
                fingerprint(&c)?,
                subject_text(&c)
            ),
        )?;
    }
    write_out(out, format_args!("registered:\n"))?;
    for c in s.registered_all()? {
        let fp = fingerprint(&c)?;
        let state = if revs.fingerprint(&fp).is_some() {
            "revoked"
        } else {
            "good"
        };
        write_out(out, format_args!("  {fp}\t{state}\t{}\n", subject_text(&c)))?;
    }
    write_out(out, format_args!("named:\n"))?;
    for n in s.named_all()? {
        write_out(out, format_args!("  {n}\n"))?;
    }
    write_out(out, format_args!("subjects:\n"))?;
    for (kind, subject, b) in s.subject_bindings()? {
        write_out(
            out,
            format_args!(
                "  aik/{kind}/{subject}\tek_key={}\tsince={}\n",
                b.ek_public_key_sha256, b.since
            ),
        )?;
    }
    write_out(out, format_args!("enrolment tokens:\n"))?;
    let now = now_unix();
    for t in crate::tokens::EnrollTokens::load(s)?.tokens {
        let state = match &t.used {
            Some(u) => format!("used={} serial={}", u.time, u.serial),
            None if t.expires <= now => "expired".to_string(),
            None => "open".to_string(),
        };
        write_out(
            out,
            format_args!(
                "  aik/host/{}\t{state}\texpires={}\tissued_by={}\n",
                t.subject, t.expires, t.issued_by
            ),
        )?;
    }
    write_out(out, format_args!("ek roots:\n"))?;
    for c in s.ek_roots()? {
        write_out(
            out,
            format_args!("  {}\t{}\n", fingerprint(&c)?, subject_text(&c)),
        )?;
    }
    Ok(())
}

fn serve(store: &std::path::Path, listen: SocketAddr, out: &mut dyn Write) -> Result<(), CliError> {
    let ca = Arc::new(Ca::open(store)?);
    let listener = std::net::TcpListener::bind(listen).map_err(CliError::Server)?;
    let addr = listener.local_addr().map_err(CliError::Server)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Server)?;
    rt.block_on(async move {
        // The TLS files are checked before announcing the address.
        crate::server::tls_config(&ca).map_err(CliError::Server)?;
        write_out(out, format_args!("listening on https://{addr}\n"))?;
        log::info!("serving {} on https://{addr}", ca.store().dir().display());
        crate::server::serve(ca, listener, crate::server::termination_signal())
            .await
            .map_err(CliError::Server)
    })?;
    log::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, CliError> {
        let mut v = vec!["vtpm-ca"];
        v.extend_from_slice(args);
        Command::try_from(Args::try_parse_from(v).unwrap())
    }

    /// Runs `vtpm-ca --store STORE ARGS...`: what it printed.
    fn run_on(store: &str, args: &[&str]) -> Result<String, CliError> {
        let mut out = Vec::new();
        run(parse(&[&["--store", store][..], args].concat())?, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    /// A temporary directory with a store initialised in its `ca`, and that store's path.
    fn initialised() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        run_on(dir.to_str().unwrap(), &["init"]).unwrap();
        (tmp, dir)
    }

    #[test]
    fn validates_arguments() {
        assert!(matches!(
            parse(&["--store", "/x", "init", "--validity-secs", "0"]),
            Err(CliError::Usage(_))
        ));
        match parse(&[
            "--store",
            "/x",
            "init",
            "--validity-secs",
            "2",
            "--tls-name",
            "h",
        ])
        .unwrap()
        {
            Command::Init { options, .. } => {
                assert_eq!(options.config.validity_secs, 2);
                assert_eq!(options.tls_names, vec!["h".to_string()]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(&["revoke"]), Err(CliError::Usage(_))));
        assert!(matches!(
            parse(&["revoke", "--serial", "zz"]),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(
            parse(&["revoke", "--serial", "0a", "--cert", "x.pem"]),
            Err(CliError::Usage(_))
        ));
        match parse(&["revoke", "--serial", "0a"]).unwrap() {
            Command::Revoke { store, target, .. } => {
                assert_eq!(store, PathBuf::from(crate::DEFAULT_STORE));
                assert_eq!(target, RevokeTarget::Serial("0A".into()));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["acl", "add", "--name", "n"]),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(
            parse(&["init", "--ek-root", "/nonexistent.pem"]),
            Err(CliError::Io { .. })
        ));
        match parse(&["release", "--kind", "vtpm", "--subject", "vm-1"]).unwrap() {
            Command::Release { kind, subject, .. } => {
                assert_eq!((kind, subject.as_str()), (Kind::Vtpm, "vm-1"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["release", "--kind", "host", "--subject", "../x"]),
            Err(CliError::Usage(_))
        ));
        let mut v = vec!["vtpm-ca", "release", "--kind", "guest", "--subject", "x"];
        assert!(Args::try_parse_from(&v).is_err());
        v.truncate(4);
        assert!(Args::try_parse_from(&v).is_err());
    }

    #[test]
    fn release_frees_a_bound_subject_and_list_shows_bindings() {
        let (_tmp, dir) = initialised();
        let d = dir.to_str().unwrap();
        let s = Store::open(&dir).unwrap();
        let key = "ab".repeat(32);
        s.lock()
            .unwrap()
            .bind_subject(Kind::Host, "host-1", &key, &"cd".repeat(32))
            .unwrap();
        let text = run_on(d, &["list"]).unwrap();
        assert!(
            text.contains(&format!("aik/host/host-1\tek_key={key}")),
            "{text}"
        );
        // Releasing the vTPM subject of that name changes nothing: kinds are apart.
        let release =
            |kind: &str| run_on(d, &["release", "--kind", kind, "--subject", "host-1"]).unwrap();
        assert!(release("vtpm").contains("not bound"));
        assert!(s.subject_binding(Kind::Host, "host-1").unwrap().is_some());
        assert!(release("host").starts_with("released aik/host/host-1"));
        assert!(s.subject_binding(Kind::Host, "host-1").unwrap().is_none());
        assert!(release("host").contains("not bound"));
    }

    #[test]
    fn token_files_are_new_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let (tmp, dir) = initialised();
        let d = dir.to_str().unwrap();
        let file = tmp.path().join("host.token");
        let f = file.to_str().unwrap();
        let acl_add = |name: &str| {
            run_on(
                d,
                &["acl", "add", "--name", name, "--read", "--token-file", f],
            )
        };
        let text = acl_add("h").unwrap();
        assert!(text.contains("written to"), "{text}");
        let token = std::fs::read_to_string(&file).unwrap();
        assert_eq!(token.trim().len(), 64);
        assert!(
            !text.contains(token.trim()),
            "the token must not be printed: {text}"
        );
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // An existing file is never replaced, and no principal is added for it.
        assert!(matches!(acl_add("h2"), Err(CliError::Io { .. })));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), token);
        assert!(!run_on(d, &["acl", "list"]).unwrap().contains("h2\t"));
        // A refused principal leaves no file behind.
        std::fs::remove_file(&file).unwrap();
        assert!(acl_add("h").is_err());
        assert!(!file.exists());
        // Enrolment tokens likewise.
        let e = tmp.path().join("h.enroll-token");
        run_on(
            d,
            &[
                "enroll-token",
                "--subject",
                "h",
                "--token-file",
                e.to_str().unwrap(),
            ],
        )
        .unwrap();
        let mode = std::fs::metadata(&e).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&e).unwrap().trim().len(), 64);
    }

    #[test]
    fn init_list_acl_revoke_crl() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let d = dir.to_str().unwrap();
        let text = run_on(d, &["init"]).unwrap();
        assert!(text.contains("admin token"), "{text}");
        assert!(matches!(
            run_on(d, &["init"]),
            Err(CliError::Init(InitError::Exists(_)))
        ));
        let token = run_on(d, &["acl", "add", "--name", "w", "--write-prefix", "vek/"]).unwrap();
        assert_eq!(token.trim().len(), 64);
        let text = run_on(d, &["acl", "list"]).unwrap();
        assert!(text.contains("admin\tread=true\tadmin=true"), "{text}");
        assert!(
            text.contains("w\tread=false\tadmin=false\twrite=[\"vek/\"]"),
            "{text}"
        );

        // Revoke the TLS certificate by file, then see it in the CRL and the listing.
        let s = Store::open(&dir).unwrap();
        let tls = s.tls_cert_path();
        assert!(run_on(d, &["revoke", "--cert", tls.to_str().unwrap()])
            .unwrap()
            .starts_with("revoked serial="));
        let crl_path = tmp.path().join("crl.der");
        run_on(d, &["crl", "--out", crl_path.to_str().unwrap()]).unwrap();
        let crl = openssl::x509::X509Crl::from_der(&std::fs::read(&crl_path).unwrap()).unwrap();
        assert_eq!(crl.get_revoked().map(|r| r.len()), Some(1));
        let text = run_on(d, &["list"]).unwrap();
        assert!(text.contains("\trevoked\t"), "{text}");

        run_on(d, &["add-ek-root", s.ca_cert_path().to_str().unwrap()]).unwrap();
        assert_eq!(s.ek_roots().unwrap().len(), 1);
    }
}
