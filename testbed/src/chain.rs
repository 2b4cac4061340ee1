//! The host side of the certificate chain, set up with the project's binaries.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::run_tool;
use crate::{CaProcess, HostTpmSimulator, ManufacturerCa};

/// The whole host side of the certificate chain (ADR 0008), set up with the project's
/// binaries from `bin_dir`: a manufactured host TPM, the local CA trusting its manufacturer,
/// the host enrolled (`vtpm-host enroll` with an enrolment token from `vtpm-ca
/// enroll-token`) and its coprocessor certified and registered
/// (`vtpm-host certify-coprocessor`, with a CA principal allowed to write `coprocessor/`).
pub struct ChainSetup {
    bin_dir: PathBuf,
    pub host_tpm: HostTpmSimulator,
    pub manufacturer: ManufacturerCa,
    pub ca: CaProcess,
    /// `vtpm-host --dir`.
    pub host_dir: PathBuf,
    pub host_id: String,
}

impl ChainSetup {
    pub fn start(bin_dir: &Path, dir: &Path, host_id: &str) -> io::Result<ChainSetup> {
        Self::start_with(bin_dir, dir, host_id, &[])
    }

    /// Like [`ChainSetup::start`], with more `vtpm-ca init` arguments (`--validity-secs N`).
    pub fn start_with(
        bin_dir: &Path,
        dir: &Path,
        host_id: &str,
        ca_init: &[&str],
    ) -> io::Result<ChainSetup> {
        let setup = Self::enrolled(bin_dir, dir, host_id, ca_init)?;
        setup.certify_coprocessor().map_err(io::Error::other)?;
        Ok(setup)
    }

    /// The first half of [`ChainSetup::start_with`]: the host TPM, the CA, and the host
    /// enrolled; the coprocessor not certified yet ([`ChainSetup::certify_coprocessor`]).
    pub fn enrolled(
        bin_dir: &Path,
        dir: &Path,
        host_id: &str,
        ca_init: &[&str],
    ) -> io::Result<ChainSetup> {
        let (host_tpm, manufacturer) = HostTpmSimulator::manufacture(&dir.join("host-tpm"))?;
        let root = manufacturer.root.display().to_string();
        let issuer = manufacturer.issuer.display().to_string();
        let mut init = vec!["--ek-root", root.as_str(), "--ek-root", issuer.as_str()];
        init.extend_from_slice(ca_init);
        let ca = CaProcess::start(&bin_dir.join("vtpm-ca"), &dir.join("ca"), &init)?;
        let setup = ChainSetup {
            bin_dir: bin_dir.to_owned(),
            host_tpm,
            manufacturer,
            ca,
            host_dir: dir.join("host"),
            host_id: host_id.to_owned(),
        };
        let token_file = setup.enroll_token_file(dir, host_id)?;
        let token_file = token_file.display().to_string();
        let ca_args = setup.ca_args();
        let ca_args: Vec<&str> = ca_args.iter().map(String::as_str).collect();
        let mut enroll = vec!["enroll", "--host-id", host_id];
        enroll.extend(&ca_args);
        enroll.extend(["--enroll-token-file", &token_file]);
        setup.host(&enroll).map_err(io::Error::other)?;
        Ok(setup)
    }

    /// Has the CA issue an enrolment token for host `subject` (`vtpm-ca enroll-token`) and
    /// writes it to `DIR/<subject>.enroll-token`, for `vtpm-host enroll --enroll-token-file`.
    pub fn enroll_token_file(&self, dir: &Path, subject: &str) -> io::Result<PathBuf> {
        let token = self.ca.command(&["enroll-token", "--subject", subject])?;
        let path = dir.join(format!("{subject}.enroll-token"));
        std::fs::write(&path, token.lines().last().unwrap_or_default().trim())?;
        Ok(path)
    }

    /// Adds this host's CA principal (allowed to write `coprocessor/`; its token in
    /// [`ChainSetup::token_file`]) and runs `vtpm-host certify-coprocessor` with it.
    pub fn certify_coprocessor(&self) -> Result<String, String> {
        let token = self
            .ca
            .command(&[
                "acl",
                "add",
                "--name",
                &self.host_id,
                "--write-prefix",
                "coprocessor/",
            ])
            .map_err(|e| e.to_string())?;
        let token_file = self.token_file();
        std::fs::write(&token_file, token.lines().last().unwrap_or_default().trim())
            .map_err(|e| format!("{}: {e}", token_file.display()))?;
        let token_file = token_file.display().to_string();
        let ca_args = self.ca_args();
        let mut certify = vec!["certify-coprocessor", "--host-id", &self.host_id];
        certify.extend(ca_args.iter().map(String::as_str));
        certify.extend(["--token-file", &token_file]);
        self.host(&certify)
    }

    /// The file with the bearer token of this host's CA principal (may write `coprocessor/`).
    pub fn token_file(&self) -> PathBuf {
        self.host_dir.with_file_name("host.token")
    }

    /// `--ca URL --ca-cert PEM`.
    pub fn ca_args(&self) -> Vec<String> {
        vec![
            "--ca".into(),
            self.ca.url.clone(),
            "--ca-cert".into(),
            self.ca.ca_cert.display().to_string(),
        ]
    }

    /// Runs `vtpm-host --dir HOST_DIR --host-tpm TCTI ARGS...`: its output, or its output as
    /// the error when it fails.
    pub fn host(&self, args: &[&str]) -> Result<String, String> {
        run_tool(
            Command::new(self.bin_dir.join("vtpm-host"))
                .arg("--dir")
                .arg(&self.host_dir)
                .args(["--host-tpm", &self.host_tpm.tcti()])
                .args(args),
        )
    }

    /// Provisions the vEK certificates into the (new or stopped) instance in `state_dir`,
    /// whose state key the host TPM seals.
    pub fn provision(&self, state_dir: &Path) -> Result<String, String> {
        self.host(&["provision", "--state-dir", &state_dir.display().to_string()])
    }

    /// Enrols a vAIK for the stopped instance in `state_dir` (`vtpm-host enroll-vaik`: a
    /// restricted key made persistent at 0x81008001, certified by the CA as `subject`);
    /// returns its certificate's path (`state_dir/vaik.pem`).
    pub fn enroll_vaik(&self, state_dir: &Path, subject: &str) -> Result<PathBuf, String> {
        let state = state_dir.display().to_string();
        let ca_args = self.ca_args();
        let mut args = vec!["enroll-vaik", "--state-dir", &state, "--subject", subject];
        args.extend(ca_args.iter().map(String::as_str));
        self.host(&args)?;
        Ok(state_dir.join("vaik.pem"))
    }

    /// A PEM file of the host directory (`host-aik.pem`, `coprocessor.pem`, ...).
    pub fn host_pem(&self, name: &str) -> io::Result<String> {
        std::fs::read_to_string(self.host_dir.join(name))
    }

    /// The daemon arguments that mirror this host's PCRs and offer the deep quote.
    pub fn mirror_args(&self) -> MirrorArgs {
        MirrorArgs::new(&self.host_tpm.tcti(), &self.host_dir)
    }
}

/// `--host-tpm TCTI --mirror-pcrs 0-7 --host-dir DIR`: the daemon arguments of deep
/// attestation (the host's PCRs 0-7 mirrored, the host identity of `vtpm-host --dir DIR`),
/// kept as strings so that [`MirrorArgs::args`] can lend them to an argument list.
#[derive(Debug, Clone)]
pub struct MirrorArgs {
    tcti: String,
    host_dir: String,
}

impl MirrorArgs {
    pub fn new(tcti: &str, host_dir: &Path) -> MirrorArgs {
        MirrorArgs {
            tcti: tcti.to_owned(),
            host_dir: host_dir.display().to_string(),
        }
    }

    pub fn args(&self) -> [&str; 6] {
        [
            "--host-tpm",
            &self.tcti,
            "--mirror-pcrs",
            "0-7",
            "--host-dir",
            &self.host_dir,
        ]
    }
}

/// Another host enrolled with the CA of a [`ChainSetup`] (its own simulated TPM, from its
/// own manufacturer, whose roots the CA is told to trust), its coprocessor certified and
/// registered: the second host of a migration.
pub struct HostSetup {
    bin_dir: PathBuf,
    pub host_tpm: HostTpmSimulator,
    pub manufacturer: ManufacturerCa,
    /// `vtpm-host --dir`.
    pub host_dir: PathBuf,
    pub host_id: String,
}

impl ChainSetup {
    /// Enrols another host with this setup's CA, under `dir`.
    pub fn add_host(&self, dir: &Path, host_id: &str) -> io::Result<HostSetup> {
        let (host_tpm, manufacturer) = HostTpmSimulator::manufacture(&dir.join("host-tpm"))?;
        for root in [&manufacturer.root, &manufacturer.issuer] {
            self.ca
                .command(&["add-ek-root", &root.display().to_string()])?;
        }
        let host = HostSetup {
            bin_dir: self.bin_dir.clone(),
            host_tpm,
            manufacturer,
            host_dir: dir.join("host"),
            host_id: host_id.to_owned(),
        };
        let ca_args = self.ca_args();
        let ca_args: Vec<&str> = ca_args.iter().map(String::as_str).collect();
        // A new host id needs the enrolment token an administrator issued for it.
        let enroll_token = self.enroll_token_file(dir, host_id)?;
        let enroll_token = enroll_token.display().to_string();
        let mut enroll = vec!["enroll", "--host-id", host_id];
        enroll.extend(&ca_args);
        enroll.extend(["--enroll-token-file", &enroll_token]);
        host.host(&enroll).map_err(io::Error::other)?;
        let token = self.ca.command(&[
            "acl",
            "add",
            "--name",
            host_id,
            "--write-prefix",
            "coprocessor/",
        ])?;
        let token_file = dir.join("host.token");
        std::fs::write(&token_file, token.lines().last().unwrap_or_default().trim())?;
        let token_file = token_file.display().to_string();
        let mut certify = vec!["certify-coprocessor", "--host-id", host_id];
        certify.extend(&ca_args);
        certify.extend(["--token-file", &token_file]);
        host.host(&certify).map_err(io::Error::other)?;
        Ok(host)
    }

    /// This setup's own host, as a [`HostRef`].
    pub fn first_host(&self) -> HostRef<'_> {
        HostRef {
            bin_dir: &self.bin_dir,
            host_tpm: &self.host_tpm,
            host_dir: &self.host_dir,
            host_id: &self.host_id,
        }
    }
}

impl HostSetup {
    /// Runs `vtpm-host --dir HOST_DIR --host-tpm TCTI ARGS...`.
    pub fn host(&self, args: &[&str]) -> Result<String, String> {
        self.as_ref().host(args)
    }

    /// This host, as a [`HostRef`].
    pub fn as_ref(&self) -> HostRef<'_> {
        HostRef {
            bin_dir: &self.bin_dir,
            host_tpm: &self.host_tpm,
            host_dir: &self.host_dir,
            host_id: &self.host_id,
        }
    }
}

/// Either host of a migration test: what a test needs of it.
#[derive(Clone, Copy)]
pub struct HostRef<'a> {
    bin_dir: &'a Path,
    pub host_tpm: &'a HostTpmSimulator,
    pub host_dir: &'a Path,
    pub host_id: &'a str,
}

impl HostRef<'_> {
    /// Runs `vtpm-host --dir HOST_DIR --host-tpm TCTI ARGS...`.
    pub fn host(&self, args: &[&str]) -> Result<String, String> {
        run_tool(
            Command::new(self.bin_dir.join("vtpm-host"))
                .arg("--dir")
                .arg(self.host_dir)
                .args(["--host-tpm", &self.host_tpm.tcti()])
                .args(args),
        )
    }

    /// Provisions the vEK certificates into the instance in `state_dir` (its state key
    /// sealed by this host's TPM).
    pub fn provision(&self, state_dir: &Path) -> Result<String, String> {
        self.host(&["provision", "--state-dir", &state_dir.display().to_string()])
    }
}
