//! The main job: boot a Linux guest whose TPM is our virtio device served by vhost-vtpm
//! (libtpms engine), run unmodified tpm2-tools in it, print what they returned, shut down.
//! The host side is the real chain of ADR 0008: an swtpm stands in for the host's hardware
//! TPM (manufactured with an EK certificate, reached through tss-esapi exactly as
//! /dev/tpmrm0 would be), the local CA (`vtpm-ca`) enrols it, the host TPM certifies the
//! coprocessor, and the vTPM is provisioned with its vEK certificates before the guest boots;
//! the vTPM's state key is sealed by the host TPM with its own authValue (a host file made by
//! `vtpm-state gen-host-key`, `--host-tpm-auth-file`) and the instance is bound to its VM
//! (`--vm-id`), as an operator should run it. In the guest, the vEK certificate is read
//! and its chain verified with openssl; at the end the demo shows the encrypted state with
//! `vtpm-state inspect`.
//!
//! `cargo run --release -p vtpm-demo` after `scripts/setup.sh`
//! (`scripts/demo.sh` does both).

use std::process::{Command, ExitCode};

use anyhow::Context;
use nix::sys::signal::Signal;
use testbed::{accel, run_tool, start_daemon, ChainSetup, Env, TpmFrontend, Vm};

fn main() -> ExitCode {
    match run() {
        Ok(0) => ExitCode::SUCCESS,
        Ok(failures) => {
            eprintln!("{failures} step(s) failed");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("vtpm-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the demo; the number of steps that failed, or why it could not run.
fn run() -> anyhow::Result<usize> {
    let env = Env::load();
    let dir = tempfile::tempdir().context("temporary directory")?;
    let bin_dir = env
        .daemon
        .parent()
        .context("the daemon's path has no directory")?
        .to_owned();
    println!("host: enrolling the host TPM with the local CA, certifying the coprocessor ...");
    let chain = ChainSetup::start(&bin_dir, &dir.path().join("host"), "demo-host")
        .context("host set-up")?;
    // As an operator should: the sealed state key gets its own authValue from a host file
    // kept outside the state directories, and the instance is bound to its VM.
    let auth_file = dir.path().join("host").join("tpm-auth.key");
    let auth = auth_file.display().to_string();
    run_tool(Command::new(env.daemon.with_file_name("vtpm-state")).args(["gen-host-key", &auth]))
        .map_err(anyhow::Error::msg)
        .context("vtpm-state gen-host-key")?;
    let vm_dir = dir.path().join("vm");
    let state = vm_dir.join("state").display().to_string();
    let provisioned = chain
        .host(&[
            "--host-tpm-auth-file",
            &auth,
            "provision",
            "--state-dir",
            &state,
        ])
        .map_err(anyhow::Error::msg)
        .context("vtpm-host provision")?;
    println!("host# vtpm-host provision\n{}", provisioned.trim());
    let tcti = chain.host_tpm.tcti();
    let mut daemon = start_daemon(
        &env,
        &vm_dir,
        &[
            "--host-tpm",
            &tcti,
            "--host-tpm-auth-file",
            &auth,
            "--vm-id",
            "demo-vm",
        ],
    );
    println!(
        "vhost-vtpm daemon serving {} for VM demo-vm, state key sealed by the host TPM at {tcti}",
        daemon.socket.display()
    );
    println!("booting the guest under {:?} ...", accel(&env));
    let mut vm = Vm::boot(&env, &TpmFrontend::VhostUser(daemon.socket.clone()));
    let ca_pem = std::fs::read(&chain.ca.ca_cert)
        .with_context(|| format!("read the CA root {}", chain.ca.ca_cert.display()))?;
    vm.write_file("/tmp/ca.pem", &ca_pem);
    let steps = [
        "uname -r",
        "dmesg | grep -i tpm_virtio",
        "ls -l /dev/tpm0 /dev/tpmrm0",
        "tpm2_getcap properties-fixed | grep -A1 -E 'TPM2_PT_(MANUFACTURER|FAMILY_INDICATOR)'",
        "tpm2_getrandom --hex 16",
        "tpm2_pcrextend 16:sha256=$(echo -n demo | sha256sum | cut -d' ' -f1)",
        "tpm2_pcrread sha256:0,16",
        "tpm2_createprimary -Q -C o -c primary.ctx",
        "tpm2_create -Q -C primary.ctx -G ecc256 -u key.pub -r key.priv",
        "tpm2_load -Q -C primary.ctx -u key.pub -r key.priv -c key.ctx",
        "echo -n 'hello from the guest' > msg && tpm2_sign -c key.ctx -g sha256 -o sig msg",
        "tpm2_verifysignature -c key.ctx -g sha256 -m msg -s sig && echo signature verified",
        "tpm2_nvdefine 0x1500001 -C o -s 12 -a 'ownerread|ownerwrite' && echo -n 'hello nvram!' > d && tpm2_nvwrite 0x1500001 -C o -i d",
        "tpm2_nvread 0x1500001 -C o -s 12; echo",
        "tpm2_nvundefine 0x1500001 -C o",
        "cd /tmp && tpm2_getekcertificate -o ek.der -o ecc.der && openssl x509 -inform DER -in ek.der -noout -issuer -ext subjectAltName,extendedKeyUsage",
        "cd /tmp && tpm2_nvread 0x01c00100 -C o -o c0.der && tpm2_nvread 0x01c00101 -C o -o c1.der && for f in ek c0 c1; do openssl x509 -inform DER -in $f.der -out $f.pem; done && openssl x509 -in c1.pem -noout -subject -issuer",
        "cd /tmp && openssl verify -CAfile ca.pem -untrusted c0.pem -untrusted c1.pem ek.pem",
    ];
    let mut failures = 0;
    for step in steps {
        let (rc, out) = vm.run(step);
        println!("\nguest# {step}\n{out}");
        if rc != 0 {
            println!("(exit status {rc})");
            failures += 1;
        }
    }
    vm.shutdown();
    let stopped = daemon.signal(Signal::SIGTERM).context("stop the daemon")?;
    println!("\n--- daemon log ---\n{}", daemon.log_text());
    if !stopped.success() {
        println!("(daemon exit status {stopped})");
        failures += 1;
    }
    // Shown whether it succeeded or not: stdout, then stderr.
    let inspect = run_tool(
        Command::new(env.daemon.with_file_name("vtpm-state"))
            .args([
                "inspect",
                "--host-tpm",
                &tcti,
                "--host-tpm-auth-file",
                &auth,
            ])
            .arg("--state-dir")
            .arg(&daemon.state),
    );
    println!(
        "\nhost# vtpm-state inspect --state-dir {} --host-tpm {tcti} --host-tpm-auth-file {auth}\n{}",
        daemon.state.display(),
        inspect.as_ref().unwrap_or_else(|text| text)
    );
    if inspect.is_err() {
        failures += 1;
    }
    Ok(failures)
}
