//! The command-line options that choose what protects an instance's state key, shared by the
//! daemon (`vhost-vtpm`) and the operator tool (`vtpm-state`).

use std::path::PathBuf;

use crate::keys::HostKey;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostKeyArgError {
    #[error("--host-tpm-pcrs: PCR {0} is out of range 0..=23")]
    BadPcr(u8),
    #[error("--host-tpm-pcrs needs --host-tpm: PCRs bind the key to the host TPM")]
    PcrsWithoutHostTpm,
    #[error("--host-tpm-auth-file needs --host-tpm: it authorises unsealing from the host TPM")]
    AuthFileWithoutHostTpm,
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

    /// With --host-tpm: a key file (32 bytes or 64 hex digits, mode 0600; `vtpm-state
    /// gen-host-key` makes one) from which each new instance key's sealed object gets its own
    /// authValue, so that a copy of `instance.key` does not unseal for whoever else can use
    /// the host TPM but cannot read this file. Keep it outside the state directories.
    #[arg(long, value_name = "PATH")]
    pub host_tpm_auth_file: Option<PathBuf>,

    /// Without a host TPM: wrap the instance's state key with this key file (32 bytes or 64
    /// hex digits, readable only by the daemon's user; `vtpm-state gen-host-key` makes one).
    #[arg(long, value_name = "PATH")]
    pub host_key_file: Option<PathBuf>,
}

impl HostKeyArgs {
    pub fn is_set(&self) -> bool {
        self.host_tpm.is_some() || self.host_key_file.is_some()
    }

    /// The validated host key, `None` if neither option was given.
    pub fn host_key(&self) -> Result<Option<HostKey>, HostKeyArgError> {
        if !self.host_tpm_pcrs.is_empty() && self.host_tpm.is_none() {
            return Err(HostKeyArgError::PcrsWithoutHostTpm);
        }
        if self.host_tpm_auth_file.is_some() && self.host_tpm.is_none() {
            return Err(HostKeyArgError::AuthFileWithoutHostTpm);
        }
        if let Some(&pcr) = self.host_tpm_pcrs.iter().find(|&&p| p > 23) {
            return Err(HostKeyArgError::BadPcr(pcr));
        }
        let mut pcrs = self.host_tpm_pcrs.clone();
        pcrs.sort_unstable();
        pcrs.dedup();
        Ok(match (&self.host_tpm, &self.host_key_file) {
            (Some(tcti), None) => Some(HostKey::Tpm {
                tcti: tcti.clone(),
                pcrs,
                auth: self.host_tpm_auth_file.clone(),
            }),
            (None, Some(path)) => Some(HostKey::File(path.clone())),
            // clap rejects both at once.
            _ => None,
        })
    }
}
