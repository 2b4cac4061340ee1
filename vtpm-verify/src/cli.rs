//! The `vtpm-verify` command line.
//!
//! ```text
//! vtpm-verify nonce --state DIR [--ttl-secs N]
//! vtpm-verify check --state DIR --ca-cert PEM --ek-root PEM... (--ca URL | --crl FILE)
//!                   --policy FILE EVIDENCE
//! vtpm-verify golden EVIDENCE
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use openssl::x509::X509;

use crate::checks::{verify, Trust};
use crate::evidence::Evidence;
use crate::nonce::NonceStore;
use crate::policy::Policy;
use crate::revocation::Revocation;

/// Checks a VM's deep-attestation evidence: its vTPM's quote and the host TPM's quote bound
/// to it, their certificate chains, revocation, the nonce, the mirrored PCRs and golden values.
#[derive(Parser, Debug)]
#[command(name = "vtpm-verify", version, about)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Issues a fresh nonce (hex on stdout) for a guest to collect evidence with.
    Nonce {
        /// The verifier's nonce directory (created, mode 0700).
        #[arg(long, value_name = "DIR")]
        state: PathBuf,
        /// How long the nonce may be used.
        #[arg(long, value_name = "SECONDS", default_value_t = 300)]
        ttl_secs: u64,
    },
    /// Verifies an evidence bundle: one line per check; exit 0 only if all pass.
    Check {
        /// The verifier's nonce directory: the bundle's nonce must have been issued there,
        /// unused and unexpired (it is used up now).
        #[arg(long, value_name = "DIR")]
        state: PathBuf,
        /// The local CA's root certificate (PEM): anchors the vAIK, vEK and host AIK chains.
        #[arg(long, value_name = "PEM")]
        ca_cert: PathBuf,
        /// A manufacturer root (or intermediate) for host EK certificates (PEM; repeat).
        #[arg(long, value_name = "PEM", required = true)]
        ek_root: Vec<PathBuf>,
        /// The CA's URL: revocation through its status API (complete).
        #[arg(
            long,
            value_name = "URL",
            conflicts_with = "crl",
            required_unless_present = "crl"
        )]
        ca: Option<String>,
        /// The CA's CRL (DER or PEM): revocation offline (CA-issued certificates only).
        #[arg(long, value_name = "FILE")]
        crl: Option<PathBuf>,
        /// Golden PCR values (JSON; `{}` accepts any).
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// The evidence bundle (JSON; `-` for stdin).
        evidence: PathBuf,
    },
    /// Prints the PCR values of a bundle as a policy (unverified: review before use).
    Golden {
        /// The evidence bundle (JSON; `-` for stdin).
        evidence: PathBuf,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(transparent)]
    Nonce(#[from] crate::nonce::NonceError),
    #[error("the CA: {0}")]
    Ca(#[from] vtpm_ca::ClientError),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, CliError> {
    let r = if path == Path::new("-") {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut v).map(|_| v)
    } else {
        std::fs::read(path)
    };
    r.map_err(|source| CliError::Read {
        path: path.to_owned(),
        source,
    })
}

fn invalid(path: &Path, reason: impl ToString) -> CliError {
    CliError::Invalid {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn certs(path: &Path) -> Result<Vec<X509>, CliError> {
    X509::stack_from_pem(&read(path)?).map_err(|e| invalid(path, e))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs one command, writing to `out`; `Ok(false)` when evidence was refused.
pub fn run(args: Args, out: &mut dyn Write) -> Result<bool, CliError> {
    match args.command {
        Command::Nonce { state, ttl_secs } => {
            let nonce = NonceStore::open(state)?.issue(now(), ttl_secs)?;
            writeln!(out, "{nonce}")?;
            Ok(true)
        }
        Command::Golden { evidence } => {
            let e = Evidence::parse(&read(&evidence)?).map_err(|e| invalid(&evidence, e))?;
            let (host, vtpm) = crate::checks::quoted_pcrs(&e).map_err(|r| invalid(&evidence, r))?;
            writeln!(out, "{}", Policy::from_values(&host, &vtpm).to_json())?;
            Ok(true)
        }
        Command::Check {
            state,
            ca_cert,
            ek_root,
            ca,
            crl,
            policy,
            evidence,
        } => {
            let ca_pem = read(&ca_cert)?;
            let ca_root = X509::from_pem(&ca_pem).map_err(|e| invalid(&ca_cert, e))?;
            let mut ek_roots = Vec::new();
            for p in &ek_root {
                ek_roots.extend(certs(p)?);
            }
            let revocation = match (ca, crl) {
                (Some(url), _) => Revocation::StatusApi(vtpm_ca::Client::new(&url, &ca_pem, None)?),
                (None, Some(path)) => {
                    Revocation::crl(&read(&path)?, &ca_root).map_err(|r| invalid(&path, r))?
                }
                // clap requires one of them.
                (None, None) => {
                    return Err(invalid(Path::new("--ca/--crl"), "one of them is required"))
                }
            };
            let policy_doc = Policy::parse(&read(&policy)?).map_err(|e| invalid(&policy, e))?;
            let nonces = NonceStore::open(state)?;
            let report = verify(
                &read(&evidence)?,
                &Trust { ca_root, ek_roots },
                &revocation,
                &policy_doc,
                &nonces,
                now(),
            );
            for check in &report.checks {
                writeln!(out, "{check}")?;
            }
            if report.accepted() {
                writeln!(out, "ACCEPTED: all {} checks passed", report.checks.len())?;
            } else {
                let failed = report.failed();
                writeln!(
                    out,
                    "REFUSED: {} of {} checks failed: {}",
                    failed.len(),
                    report.checks.len(),
                    failed.join(", ")
                )?;
            }
            Ok(report.accepted())
        }
    }
}
