//! The main job: boot a Linux guest whose TPM is our virtio device served by vhost-vtpm
//! (libtpms engine), run unmodified tpm2-tools in it, print what they returned, shut down.
//! The vTPM's state key is sealed by a host TPM (an swtpm stands in for the host's hardware
//! TPM, reached through tss-esapi exactly as /dev/tpmrm0 would be); at the end the demo shows
//! the encrypted state with `vtpm-state inspect`.
//!
//! `cargo run --release -p vtpm-e2e --bin vtpm-demo` after `scripts/setup.sh`
//! (`scripts/demo.sh` does both).

use guest_driver::testbed::HostTpmSimulator;
use nix::sys::signal::Signal;
use vtpm_e2e::{accel, start_daemon, Env, TpmFrontend, Vm};

fn main() {
    let env = Env::load();
    let dir = tempfile::tempdir().expect("temporary directory");
    let host_tpm =
        HostTpmSimulator::start(&dir.path().join("host-tpm")).expect("start the host TPM (swtpm)");
    let tcti = host_tpm.tcti();
    let mut daemon = start_daemon(&env, dir.path(), &["--host-tpm", &tcti]);
    println!(
        "vhost-vtpm daemon serving {}, state key sealed by the host TPM at {tcti}",
        daemon.socket.display()
    );
    println!("booting the guest under {:?} ...", accel(&env));
    let mut vm = Vm::boot(&env, &TpmFrontend::VhostUser(daemon.socket.clone()));
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
    let stopped = daemon.signal(Signal::SIGTERM).expect("stop the daemon");
    println!("\n--- daemon log ---\n{}", daemon.log_text());
    if !stopped.success() {
        println!("(daemon exit status {stopped})");
        failures += 1;
    }
    let inspect = std::process::Command::new(env.daemon.with_file_name("vtpm-state"))
        .args(["inspect", "--host-tpm", &tcti, "--state-dir"])
        .arg(&daemon.state)
        .output()
        .expect("run vtpm-state");
    println!(
        "\nhost# vtpm-state inspect --state-dir {} --host-tpm {tcti}\n{}{}",
        daemon.state.display(),
        String::from_utf8_lossy(&inspect.stdout),
        String::from_utf8_lossy(&inspect.stderr)
    );
    if !inspect.status.success() {
        failures += 1;
    }
    if failures > 0 {
        eprintln!("{failures} step(s) failed");
        std::process::exit(1);
    }
}
