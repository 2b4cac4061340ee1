//! Command line of `vtpm-host`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use host_tpm::HostTpm;
use identity::Validity;
use vtpm_ca::client::Client;
use vtpm_state::keys::HostKey;

use crate::{certify_coprocessor, enroll_host, provision_instance, renew, AgentError, HostDir};

const DAY: u64 = 86_400;

/// Host side of vhost-vtpm's certificate chain: enrol the host TPM with the local CA,
/// certify the coprocessor key, provision vEK certificates into vTPM instances.
#[derive(Parser, Debug)]
#[command(name = "vtpm-host", version, about)]
pub struct HostArgs {
    /// Host identity directory (created mode 0700).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/var/lib/vtpm/host",
        global = true
    )]
    pub dir: PathBuf,
    /// The host TPM (tpm2-tss TCTI: `device:/dev/tpmrm0`, `swtpm:host=...,port=...`).
    #[arg(long, value_name = "TCTI", global = true)]
    pub host_tpm: Option<String>,
    /// The host TPM auth file the daemons of this host are given (`--host-tpm-auth-file`):
    /// needed to open instances whose keys were sealed with it (`provision`), and used for
    /// the keys this tool seals in the host directory.
    #[arg(long, value_name = "PATH", global = true)]
    pub host_tpm_auth_file: Option<PathBuf>,
    /// Log level: error, warn, info, debug or trace. tss-esapi's own messages (a line per
    /// TPM context closed) show only from debug on; RUST_LOG, when set, replaces this filter.
    #[arg(long, value_name = "LEVEL", default_value = "info", global = true)]
    pub log_level: log::LevelFilter,
    #[command(subcommand)]
    pub command: HostCommand,
}

/// How to reach the local CA.
#[derive(Args, Debug, Clone)]
pub struct CaArgs {
    /// The CA's base URL (`https://ca.example:8443`).
    #[arg(long, value_name = "URL")]
    pub ca: String,
    /// The CA's root certificate (PEM): the only TLS root trusted, and the chain's anchor.
    #[arg(long, value_name = "PEM")]
    pub ca_cert: PathBuf,
    /// File holding a bearer token of a CA principal (needed to register certificates).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

fn read_token(path: &PathBuf) -> Result<String, AgentError> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|source| AgentError::Io {
            path: path.clone(),
            source,
        })
}

impl CaArgs {
    fn client(&self) -> Result<Client, AgentError> {
        let token = self.token_file.as_ref().map(read_token).transpose()?;
        self.client_with(token)
    }

    /// A client sending `token` as its bearer token.
    fn client_with(&self, token: Option<String>) -> Result<Client, AgentError> {
        let pem = std::fs::read(&self.ca_cert).map_err(|source| AgentError::Io {
            path: self.ca_cert.clone(),
            source,
        })?;
        Ok(Client::new(&self.ca, &pem, token)?)
    }
}

/// A vTPM instance that is not running, and the key its state key is wrapped by.
#[derive(Args, Debug, Clone)]
pub struct InstanceArgs {
    /// The instance's state directory (the daemon must not be running on it).
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// The instance's state key is wrapped by this host key file instead of the host TPM.
    #[arg(long, value_name = "PATH")]
    pub instance_host_key_file: Option<PathBuf>,
}

impl InstanceArgs {
    /// The key wrapping the instance's state key: `--instance-host-key-file`, or else the
    /// host's.
    fn key(&self, host_key: &HostKey) -> HostKey {
        match &self.instance_host_key_file {
            Some(p) => HostKey::File(p.clone()),
            None => host_key.clone(),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum HostCommand {
    /// Enrol the host TPM: its EK certificate and a new AIK go to the CA, the TPM activates
    /// the CA's credential, the CA issues the host AIK certificate.
    Enroll {
        #[command(flatten)]
        ca: CaArgs,
        /// This host's identifier, the CN of its host AIK certificate (default:
        /// /etc/machine-id).
        #[arg(long)]
        host_id: Option<String>,
        /// The manufacturer's intermediate CA certificate(s) that issued the host EK
        /// certificate (PEM file, repeatable), sent after it for a CA that trusts only the
        /// manufacturer's root; kept in the host directory, and sent again by `renew`.
        #[arg(long = "ek-intermediate", value_name = "PEM")]
        ek_intermediates: Vec<PathBuf>,
        /// File holding the enrolment token an administrator issued for this host id
        /// (`vtpm-ca enroll-token`); needed unless the host id is already enrolled with this
        /// TPM (then enrolling again is a renewal).
        #[arg(long, value_name = "PATH")]
        enroll_token_file: Option<PathBuf>,
    },
    /// Create (once) the coprocessor key, have the host TPM's AIK sign its certificate and
    /// register it with the CA (--token-file: a principal allowed to write coprocessor/...).
    /// All or nothing: if the CA does not register it, no key or certificate is kept.
    // Registering needs a principal's token: required here, optional for the other commands
    // that share `CaArgs`.
    #[command(mut_arg("token_file", |a| a.required(true)))]
    CertifyCoprocessor {
        /// This host's identifier, as given to `enroll` (default: /etc/machine-id): the CN
        /// of the coprocessor certificate.
        #[arg(long)]
        host_id: Option<String>,
        /// Lifetime of the coprocessor certificate, days; it ends no later than the host
        /// AIK certificate (30 days after enrolment by default).
        #[arg(long, default_value_t = 365)]
        validity_days: u64,
        #[command(flatten)]
        ca: CaArgs,
    },
    /// Provision (or re-issue) the vEK certificates and their chain into a vTPM instance
    /// that is not running.
    Provision {
        #[command(flatten)]
        instance: InstanceArgs,
        /// Lifetime of the vEK certificates, days; they end no later than the coprocessor
        /// certificate.
        #[arg(long, default_value_t = 3650)]
        validity_days: u64,
    },
    /// Enrol (or re-issue) the vAIK of a vTPM instance that is not running: a restricted
    /// ECC P-256 signing key created in the instance, certified by the CA after credential
    /// activation against the instance's vEK chain, made persistent at --aik-handle (what is
    /// there is replaced if it is an attestation key); the certificate goes to
    /// <state-dir>/vaik.pem.
    EnrollVaik {
        #[command(flatten)]
        instance: InstanceArgs,
        /// CN of the vAIK certificate (default: the instance id).
        #[arg(long, value_name = "NAME")]
        subject: Option<String>,
        /// Persistent handle of the vAIK in the instance (hex, owner range
        /// 0x81000000-0x817fffff).
        #[arg(long, value_name = "HEX", default_value = "0x81008001", value_parser = parse_handle)]
        aik_handle: u32,
        #[command(flatten)]
        ca: CaArgs,
    },
    /// Bring the identity in the NV of a vTPM instance that is not running up to date with
    /// the host directory (after `renew`): the chain becomes the current coprocessor and
    /// host AIK certificates; the vEK certificates are issued again only if they are due,
    /// would outlive the coprocessor certificate, or do not verify under it.
    Refresh {
        #[command(flatten)]
        instance: InstanceArgs,
        /// Lifetime of re-issued vEK certificates, days (capped at the coprocessor
        /// certificate's end).
        #[arg(long, default_value_t = 3650)]
        validity_days: u64,
    },
    /// Write the certificates in the NV of a vTPM instance that is not running, as PEM, to
    /// OUT: rsa-vek.pem, ecc-vek.pem, chain-0.pem (coprocessor), chain-1.pem (host AIK).
    Certificates {
        #[command(flatten)]
        instance: InstanceArgs,
        /// Directory to write the PEM files to (created if missing).
        #[arg(long, value_name = "OUT")]
        out: PathBuf,
    },
    /// Renew the host AIK and coprocessor certificates that have less than a third of their
    /// lifetime left.
    Renew {
        #[command(flatten)]
        ca: CaArgs,
        /// This host's identifier, as given to `enroll` (default: /etc/machine-id).
        #[arg(long)]
        host_id: Option<String>,
        /// Lifetime of a renewed coprocessor certificate, days (capped at the host AIK
        /// certificate's end).
        #[arg(long, default_value_t = 365)]
        validity_days: u64,
    },
}

fn host_id(given: &Option<String>) -> String {
    given.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/etc/machine-id")
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "host".to_owned())
    })
}

/// A handle in hex, with or without `0x`.
fn parse_handle(s: &str) -> Result<u32, String> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u32::from_str_radix(digits, 16).map_err(|e| format!("{s:?} is not a hex handle: {e}"))
}

fn days(n: u64) -> Duration {
    Duration::from_secs(n.saturating_mul(DAY))
}

/// Runs one command; returns what to print.
pub fn run(args: HostArgs) -> Result<String, AgentError> {
    let dir = HostDir::open(&args.dir)?;
    let tcti = args.host_tpm.ok_or_else(|| AgentError::Invalid {
        what: "--host-tpm".into(),
        reason: "every vtpm-host command needs the host TPM".into(),
    })?;
    let host_key = HostKey::Tpm {
        tcti: tcti.clone(),
        pcrs: Vec::new(),
        auth: args.host_tpm_auth_file.clone(),
    };
    match args.command {
        HostCommand::Enroll {
            ca,
            host_id: id,
            ek_intermediates,
            enroll_token_file,
        } => {
            let mut intermediates = Vec::new();
            for path in &ek_intermediates {
                let pem = std::fs::read(path).map_err(|source| AgentError::Io {
                    path: path.clone(),
                    source,
                })?;
                let certs = openssl::x509::X509::stack_from_pem(&pem)
                    .ok()
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| AgentError::Invalid {
                        what: path.display().to_string(),
                        reason: "no PEM certificate in it".into(),
                    })?;
                intermediates.extend(certs);
            }
            // The enrolment token is the bearer token of enroll/start; without one, a
            // principal's (--token-file; an admin's authorises too) or none (a renewal).
            let client = match &enroll_token_file {
                Some(p) => ca.client_with(Some(read_token(p)?))?,
                None => ca.client()?,
            };
            let mut tpm = HostTpm::connect(&tcti)?;
            let id = host_id(&id);
            let cert = enroll_host(&mut tpm, &dir, &client, &id, false, &intermediates)?;
            Ok(format!(
                "host {id} enrolled; host AIK certificate {} ({})",
                dir.file(crate::HOST_AIK_CERT).display(),
                subject(&cert)
            ))
        }
        HostCommand::CertifyCoprocessor {
            host_id: id,
            validity_days,
            ca,
        } => {
            // clap requires --token-file here; `certify_coprocessor` refuses a client
            // without a token too.
            let client = ca.client()?;
            let mut tpm = HostTpm::connect(&tcti)?;
            let cert = certify_coprocessor(
                &mut tpm,
                &dir,
                &host_key,
                &host_id(&id),
                Validity::starting_now(days(validity_days)),
                &client,
            )?;
            Ok(format!(
                "coprocessor certificate {} ({}), signed by the host TPM; registered with the CA",
                dir.file(crate::COPROCESSOR_CERT).display(),
                subject(&cert),
            ))
        }
        HostCommand::Provision {
            instance,
            validity_days,
        } => {
            let instance_key = instance.key(&host_key);
            let done = provision_instance(
                &instance.state_dir,
                &instance_key,
                &dir,
                &host_key,
                Validity::starting_now(days(validity_days)),
            )?;
            Ok(format!(
                "vEK certificates in NV 0x01c00002 (RSA) and 0x01c0000a (ECC), chain in {}",
                done.chain_indices
                    .iter()
                    .map(|i| format!("{i:#010x}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
        HostCommand::EnrollVaik {
            instance,
            subject: cn,
            aik_handle,
            ca,
        } => {
            let instance_key = instance.key(&host_key);
            let done = crate::vaik::enroll_vaik(
                &instance.state_dir,
                &instance_key,
                &ca.client()?,
                cn.as_deref(),
                aik_handle,
            )?;
            Ok(format!(
                "vAIK certificate {} ({}, {}); the vAIK is persistent at handle {:#010x}",
                instance.state_dir.join(crate::vaik::VAIK_CERT).display(),
                subject(&done.certificate),
                done.name,
                done.aik_handle
            ))
        }
        HostCommand::Refresh {
            instance,
            validity_days,
        } => {
            let instance_key = instance.key(&host_key);
            let done = crate::instance::refresh(
                &instance.state_dir,
                &instance_key,
                &dir,
                &host_key,
                Validity::starting_now(days(validity_days)),
            )?;
            Ok(format!(
                "vEK certificates {}; chain {}",
                if done.reissued { "re-issued" } else { "kept" },
                if done.chain_rewritten {
                    "rewritten"
                } else {
                    "unchanged"
                }
            ))
        }
        HostCommand::Certificates { instance, out } => {
            let instance_key = instance.key(&host_key);
            let certs = crate::instance::certificates(&instance.state_dir, &instance_key)?;
            let named = [
                ("rsa-vek.pem", certs.rsa_vek),
                ("ecc-vek.pem", certs.ecc_vek),
            ]
            .into_iter()
            .filter_map(|(n, c)| c.map(|c| (n.to_owned(), c)))
            .chain(
                certs
                    .chain
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| (format!("chain-{i}.pem"), c)),
            );
            std::fs::create_dir_all(&out).map_err(|source| AgentError::Io {
                path: out.clone(),
                source,
            })?;
            let mut written = Vec::new();
            for (name, cert) in named {
                let path = out.join(&name);
                std::fs::write(&path, cert.to_pem()?)
                    .map_err(|source| AgentError::Io { path, source })?;
                written.push(name);
            }
            Ok(format!("{}: {}", out.display(), written.join(", ")))
        }
        HostCommand::Renew {
            ca,
            host_id: id,
            validity_days,
        } => {
            let mut tpm = HostTpm::connect(&tcti)?;
            let renewed = renew(
                &mut tpm,
                &dir,
                &ca.client()?,
                &host_key,
                &host_id(&id),
                days(validity_days),
            )?;
            Ok(if renewed.is_empty() {
                "nothing due for renewal".to_owned()
            } else {
                format!("renewed: {}", renewed.join(", "))
            })
        }
    }
}

fn subject(cert: &openssl::x509::X509) -> String {
    cert.subject_name()
        .entries()
        .filter_map(|e| e.data().to_string().ok())
        .collect::<Vec<_>>()
        .join(", ")
}
