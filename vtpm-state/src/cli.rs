//! `vtpm-state`: the operator's commands on a vTPM state directory.
//!
//! The daemon never resets, replaces or "repairs" state on its own; these commands are the
//! explicit, logged ways to do so. Each one that changes a directory, and `inspect` with a
//! key, takes the state directory's lock, so it cannot run against a directory a daemon is
//! using; `inspect` without a key reads only the clear-text header.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use coprocessor::libtpms::{PERMANENT_BLOB, VOLATILE_BLOB};

use crate::host_key_args::{HostKeyArgError, HostKeyArgs};
use crate::keys::{self, HostKey};
use crate::swtpm_import::{self, SwtpmCipher, SwtpmKdf, SwtpmKey, SwtpmKeyFormat};
use crate::{EncryptedStore, StateError};

/// Operator commands for vhost-vtpm state directories.
#[derive(Parser, Debug)]
#[command(name = "vtpm-state", version, about)]
pub struct StateArgs {
    #[command(subcommand)]
    pub command: StateCommand,
}

#[derive(Subcommand, Debug)]
pub enum StateCommand {
    /// Create a new host key file (64 hex digits, mode 0600) for hosts without a TPM.
    GenHostKey {
        /// Where to write it; an existing file is never overwritten.
        path: PathBuf,
    },
    /// Show an instance: id, format version, generation; with a host key, also verify that
    /// everything authenticates and list the blobs.
    Inspect {
        /// The instance's state directory (the daemon's `--state-dir`).
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
        #[command(flatten)]
        host_key: HostKeyArgs,
    },
    /// Reset the vTPM to a fresh TPM. The current files are moved into a backup directory
    /// inside the state directory, not deleted. Works without the key (e.g. when it is lost).
    Reset {
        /// The instance's state directory; the daemon must not be running on it.
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
        /// Confirm: the guest loses every key and NV index of this vTPM.
        #[arg(long)]
        yes: bool,
    },
    /// Accept the current state file as the newest one (after restoring an older file on
    /// purpose, or when its generation record was lost). The file must still authenticate.
    AcceptCurrent {
        /// The instance's state directory; the daemon must not be running on it.
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
        #[command(flatten)]
        host_key: HostKeyArgs,
    },
    /// Create an instance from an existing swtpm TPM 2.0 state directory (as QEMU + swtpm
    /// left it), keeping every key and NV index. The swtpm directory is not modified.
    ImportSwtpm {
        /// The new instance's state directory (must not hold an instance yet).
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
        /// swtpm's state directory (`--tpmstate dir=...`).
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// swtpm's state key file, if swtpm ran with `--key file=...`.
        #[arg(long, value_name = "PATH", group = "swtpm_secret")]
        swtpm_key: Option<PathBuf>,
        /// swtpm's passphrase file, if swtpm ran with `--key pwdfile=...` (or `pwdfd=`, as
        /// libvirt runs it: then a file with the same bytes). Every byte counts, a trailing
        /// newline too, as in swtpm.
        #[arg(long, value_name = "PATH", group = "swtpm_secret")]
        swtpm_passphrase_file: Option<PathBuf>,
        /// Cipher of swtpm's `--key ...,mode=` (libvirt uses aes-256-cbc).
        #[arg(
            long,
            value_enum,
            default_value_t = Cipher::Aes128Cbc,
            requires = "swtpm_secret"
        )]
        swtpm_cipher: Cipher,
        /// Format of swtpm's key file (`--key ...,format=`).
        #[arg(
            long,
            value_enum,
            default_value_t = KeyFormat::Hex,
            requires = "swtpm_key",
            conflicts_with = "swtpm_passphrase_file"
        )]
        swtpm_key_format: KeyFormat,
        /// How swtpm derived the key from the passphrase (`--key ...,kdf=`).
        #[arg(
            long,
            value_enum,
            default_value_t = Kdf::Pbkdf2,
            requires = "swtpm_passphrase_file",
            conflicts_with = "swtpm_key"
        )]
        swtpm_kdf: Kdf,
        #[command(flatten)]
        host_key: HostKeyArgs,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    #[value(name = "aes-128-cbc")]
    Aes128Cbc,
    #[value(name = "aes-256-cbc")]
    Aes256Cbc,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormat {
    Hex,
    Binary,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kdf {
    Pbkdf2,
    Sha512,
}

#[derive(Debug, thiserror::Error)]
pub enum StateCtlError {
    #[error(transparent)]
    HostKeyArgs(#[from] HostKeyArgError),
    #[error("--host-tpm or --host-key-file is required for this command")]
    NoHostKey,
    #[error(
        "reset destroys the vTPM's keys and NV data for the guest; repeat with --yes to confirm"
    )]
    NotConfirmed,
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error(transparent)]
    Import(#[from] swtpm_import::ImportError),
}

fn required(args: &HostKeyArgs) -> Result<HostKey, StateCtlError> {
    args.host_key()?.ok_or(StateCtlError::NoHostKey)
}

/// Runs one command; returns what to print.
pub fn run(args: StateArgs) -> Result<String, StateCtlError> {
    match args.command {
        StateCommand::GenHostKey { path } => {
            keys::generate_host_key_file(&path)?;
            Ok(format!(
                "host key written to {} (mode 0600); keep a copy: without it no state it \
                 protects can be opened",
                path.display()
            ))
        }
        StateCommand::Inspect {
            state_dir,
            host_key,
        } => {
            let verified = match host_key.host_key()? {
                Some(key) => EncryptedStore::verify(&state_dir, &key)?,
                None => EncryptedStore::inspect(&state_dir)?,
            };
            let Some(info) = verified else {
                return Ok(format!("{}: no vTPM instance", state_dir.display()));
            };
            let mut out = format!(
                "instance {}\nformat version {}\ngeneration {}\n",
                info.instance, info.format_version, info.generation
            );
            match (&info.engine, info.recorded_generation) {
                (Some(engine), recorded) => {
                    out.push_str(&format!(
                        "authenticated: yes (engine {engine}, generation record {})\n",
                        recorded.map_or("missing".into(), |g| g.to_string())
                    ));
                    for (name, len) in &info.blobs {
                        out.push_str(&format!("blob {name}: {len} bytes\n"));
                    }
                }
                (None, _) => out.push_str("authenticated: not checked (no host key given)\n"),
            }
            Ok(out)
        }
        StateCommand::Reset { state_dir, yes } => {
            if !yes {
                return Err(StateCtlError::NotConfirmed);
            }
            Ok(match EncryptedStore::reset(&state_dir)? {
                Some(backup) => format!(
                    "reset {}: previous state kept in {}; the next start creates a fresh TPM",
                    state_dir.display(),
                    backup.display()
                ),
                None => format!("{}: nothing to reset", state_dir.display()),
            })
        }
        StateCommand::AcceptCurrent {
            state_dir,
            host_key,
        } => {
            let generation = EncryptedStore::accept_current(&state_dir, &required(&host_key)?)?;
            Ok(format!(
                "accepted {} at generation {generation}",
                state_dir.display()
            ))
        }
        StateCommand::ImportSwtpm {
            state_dir,
            from,
            swtpm_key,
            swtpm_passphrase_file,
            swtpm_cipher,
            swtpm_key_format,
            swtpm_kdf,
            host_key,
        } => {
            let host_key = required(&host_key)?;
            host_key.check()?;
            let mode = match swtpm_cipher {
                Cipher::Aes128Cbc => SwtpmCipher::Aes128Cbc,
                Cipher::Aes256Cbc => SwtpmCipher::Aes256Cbc,
            };
            // clap lets at most one of the two through.
            let key = match (swtpm_key, swtpm_passphrase_file) {
                (Some(file), _) => Some(SwtpmKey::key_file(
                    file,
                    mode,
                    match swtpm_key_format {
                        KeyFormat::Hex => SwtpmKeyFormat::Hex,
                        KeyFormat::Binary => SwtpmKeyFormat::Binary,
                    },
                )),
                (None, Some(file)) => Some(SwtpmKey::passphrase_file(
                    file,
                    mode,
                    match swtpm_kdf {
                        Kdf::Pbkdf2 => SwtpmKdf::Pbkdf2,
                        Kdf::Sha512 => SwtpmKdf::Sha512,
                    },
                )),
                (None, None) => None,
            };
            let mut blobs = swtpm_import::read_swtpm_state(&from, key.as_ref())?;
            // Moved, not copied: the store wipes them as `blobs` would have.
            let mut map = BTreeMap::new();
            map.insert(
                PERMANENT_BLOB.to_owned(),
                std::mem::take(&mut blobs.permanent),
            );
            let resumes = blobs.volatile.is_some();
            if let Some(v) = blobs.volatile.take() {
                map.insert(VOLATILE_BLOB.to_owned(), v);
            }
            let store = EncryptedStore::create(&state_dir, &host_key, "libtpms", map)?;
            Ok(format!(
                "imported {} into {} as instance {} (state key {}){}",
                from.display(),
                state_dir.display(),
                store.instance(),
                host_key.describe(),
                if resumes {
                    "; the TPM resumes swtpm's saved volatile state"
                } else {
                    ""
                }
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> Result<String, StateCtlError> {
        let mut v = vec!["vtpm-state"];
        v.extend_from_slice(args);
        run(StateArgs::try_parse_from(v).unwrap())
    }

    #[test]
    fn operator_flow_inspect_reset_accept() {
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("host.key");
        let dir = tmp.path().join("vm");
        let (k, d) = (key.to_str().unwrap(), dir.to_str().unwrap());
        assert!(cmd(&["gen-host-key", k]).unwrap().contains("mode 0600"));
        assert!(cmd(&["gen-host-key", k]).is_err(), "never overwrites a key");
        drop(EncryptedStore::open(&dir, &HostKey::File(key.clone()), "libtpms").unwrap());

        let header = cmd(&["inspect", "--state-dir", d]).unwrap();
        assert!(header.contains("generation 1"), "{header}");
        assert!(header.contains("not checked"), "{header}");
        let full = cmd(&["inspect", "--state-dir", d, "--host-key-file", k]).unwrap();
        assert!(
            full.contains("authenticated: yes (engine libtpms, generation record 1)"),
            "{full}"
        );

        assert!(matches!(
            cmd(&["accept-current", "--state-dir", d]),
            Err(StateCtlError::NoHostKey)
        ));
        assert!(
            cmd(&["accept-current", "--state-dir", d, "--host-key-file", k])
                .unwrap()
                .contains("generation 1")
        );

        assert!(matches!(
            cmd(&["reset", "--state-dir", d]),
            Err(StateCtlError::NotConfirmed)
        ));
        assert!(
            dir.join("state.vtpm").exists(),
            "unconfirmed reset changes nothing"
        );
        let out = cmd(&["reset", "--state-dir", d, "--yes"]).unwrap();
        assert!(out.contains("backup-"), "{out}");
        assert!(!dir.join("state.vtpm").exists());
        assert!(cmd(&["inspect", "--state-dir", d])
            .unwrap()
            .contains("no vTPM instance"));
    }

    #[test]
    fn commands_on_a_missing_directory_fail_without_creating_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("absent");
        let d = dir.to_str().unwrap();
        assert!(cmd(&["reset", "--state-dir", d, "--yes"]).is_err());
        assert!(!dir.exists());
    }
}
