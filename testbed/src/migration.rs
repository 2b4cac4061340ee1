//! Everything a sealed migration needs, with the project's binaries: two hosts (simulated
//! host TPMs from two manufacturers) enrolled with one local CA, their coprocessors
//! certified, and the migration controller trusting that CA.

use std::io;
use std::path::{Path, PathBuf};

use crate::{ChainSetup, ControllerProcess, HostRef, HostSetup};

/// Two hosts, one CA, the controller.
pub struct MigrationBed {
    /// The CA and the first host (`host-a`).
    pub chain: ChainSetup,
    /// The second host (`host-b`).
    pub b: HostSetup,
    pub controller: ControllerProcess,
}

impl MigrationBed {
    /// Sets it all up under `dir` with the binaries in `bin_dir` (vtpm-ca, vtpm-host,
    /// vtpm-migrate).
    pub fn start(bin_dir: &Path, dir: &Path) -> io::Result<Self> {
        let chain = ChainSetup::start(bin_dir, &dir.join("host-a"), "host-a")?;
        let b = chain.add_host(&dir.join("host-b"), "host-b")?;
        let controller = ControllerProcess::start(
            &bin_dir.join("vtpm-migrate"),
            &dir.join("controller"),
            &chain.ca.url,
            &chain.ca.ca_cert,
            &[],
        )?;
        Ok(MigrationBed {
            chain,
            b,
            controller,
        })
    }

    pub fn a(&self) -> HostRef<'_> {
        self.chain.first_host()
    }

    pub fn b(&self) -> HostRef<'_> {
        self.b.as_ref()
    }

    /// The daemon options of a host with sealed migration (its host TPM wraps the state
    /// keys); with `incoming`, as a migration's destination.
    pub fn daemon_args(&self, host: HostRef<'_>, incoming: bool) -> Vec<String> {
        let mut args = vec![
            "--host-tpm".to_owned(),
            host.host_tpm.tcti(),
            "--host-dir".into(),
            host.host_dir.display().to_string(),
            "--migration-controller".into(),
            self.controller.url.clone(),
            "--migration-controller-cert".into(),
            self.controller.cert.display().to_string(),
            "--migration-ca".into(),
            self.chain.ca.url.clone(),
        ];
        if incoming {
            args.push("--migration-incoming".into());
        }
        args
    }

    /// The instance id of the state directory (read from its clear-text header).
    pub fn instance(state_dir: &Path) -> io::Result<String> {
        let info = vtpm_state::EncryptedStore::inspect(state_dir)
            .map_err(io::Error::other)?
            .ok_or_else(|| io::Error::other(format!("no instance in {}", state_dir.display())))?;
        Ok(info.instance.to_string())
    }

    /// Registers the instance in `state_dir` with the controller as living on `owner`.
    pub fn register(&self, state_dir: &Path, owner: HostRef<'_>) -> io::Result<String> {
        let instance = Self::instance(state_dir)?;
        self.controller
            .operator(
                "register",
                &["--instance", &instance, "--owner", owner.host_id],
            )
            .map_err(io::Error::other)?;
        Ok(instance)
    }

    /// Starts a migration of `instance` and has both hosts attest: returns its id, with the
    /// ticket issued.
    pub fn authorise(
        &self,
        instance: &str,
        vm: &str,
        from: HostRef<'_>,
        to: HostRef<'_>,
    ) -> Result<String, String> {
        let id = self.start_migration(instance, vm, from, to)?;
        self.controller
            .attest(to.host_dir, &to.host_tpm.tcti(), &id, "destination")?;
        self.controller
            .attest(from.host_dir, &from.host_tpm.tcti(), &id, "source")?;
        Ok(id)
    }

    /// `vtpm-migrate start`: the migration's id.
    pub fn start_migration(
        &self,
        instance: &str,
        vm: &str,
        from: HostRef<'_>,
        to: HostRef<'_>,
    ) -> Result<String, String> {
        self.controller
            .operator(
                "start",
                &[
                    "--instance",
                    instance,
                    "--vm",
                    vm,
                    "--source",
                    from.host_id,
                    "--destination",
                    to.host_id,
                ],
            )
            .map(|out| out.lines().next().unwrap_or_default().trim().to_owned())
    }

    /// `vtpm-migrate status`: the JSON text.
    pub fn status(&self, id: &str) -> Result<String, String> {
        self.controller.operator("status", &["--migration", id])
    }

    /// Waits until the migration's status contains `"state": "<state>"`.
    pub fn wait_state(&self, id: &str, state: &str, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let needle = format!("\"state\": \"{state}\"");
        while std::time::Instant::now() < deadline {
            if self.status(id).is_ok_and(|s| s.contains(&needle)) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    }

    /// Runs a host's `vtpm-migrate` command (`export`, `import`, `settle`, `attest`) with
    /// the controller's and the host's options: its output, or its output as the error.
    pub fn host_cli(&self, cmd: &str, host: HostRef<'_>, args: &[&str]) -> Result<String, String> {
        crate::run_tool(
            std::process::Command::new(&self.controller.bin)
                .arg(cmd)
                .args(["--controller", &self.controller.url])
                .arg("--controller-cert")
                .arg(&self.controller.cert)
                .arg("--host-dir")
                .arg(host.host_dir)
                .args(["--host-tpm", &host.host_tpm.tcti()])
                .args(args),
        )
    }

    /// The host directory's coprocessor certificate (PEM file).
    pub fn coprocessor_pem(host: HostRef<'_>) -> PathBuf {
        host.host_dir.join("coprocessor.pem")
    }
}
