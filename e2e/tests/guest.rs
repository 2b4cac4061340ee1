//! A real Linux guest (tpm_virtio driver, unmodified tpm2-tools) in QEMU with our
//! vhost-user-tpm-pci device, served by the vhost-vtpm daemon with libtpms.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nix::sys::signal::Signal;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sha::sha256;
use openssl::sign::Verifier;
use testbed::{start_daemon, DaemonProcess, Env, TpmFrontend, Vm};

fn start() -> (Env, tempfile::TempDir, DaemonProcess) {
    let env = Env::load();
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_daemon(&env, dir.path(), &[]);
    (env, dir, daemon)
}

#[test]
fn tpm2_tools_random_pcrs_and_signature_verified_on_the_host() {
    let (env, _dir, daemon) = start();
    let mut vm = Vm::boot(&env, &TpmFrontend::VhostUser(daemon.socket.clone()));
    assert!(vm.must("ls /dev/tpm0 /dev/tpmrm0").contains("/dev/tpmrm0"));

    let rnd = vm.must("tpm2_getrandom --hex 16");
    assert_eq!(rnd.trim().len(), 32, "tpm2_getrandom: {rnd}");
    assert_ne!(rnd.trim(), vm.must("tpm2_getrandom --hex 16").trim());

    let before = vm.pcr_sha256(16);
    assert_eq!(before, "0".repeat(64));
    let digest = sha256(b"measured by the guest");
    vm.must(&format!("tpm2_pcrextend 16:sha256={}", hex::encode(digest)));
    let after = vm.pcr_sha256(16);
    let expected = sha256(&[[0u8; 32].as_slice(), &digest].concat());
    assert_eq!(
        after,
        hex::encode(expected),
        "PCR16 differs from the host's computation"
    );

    vm.must("tpm2_createprimary -Q -C o -c p.ctx");
    vm.must("tpm2_create -Q -C p.ctx -G ecc256 -u k.pub -r k.priv");
    vm.must("tpm2_load -Q -C p.ctx -u k.pub -r k.priv -c k.ctx");
    vm.must("echo -n 'signed inside the guest' > msg");
    vm.must("tpm2_sign -Q -c k.ctx -g sha256 -f plain -o sig.der msg");
    vm.must("tpm2_readpublic -Q -c k.ctx -f pem -o k.pem");
    let sig = vm.read_file("sig.der");
    let pem = vm.read_file("k.pem");
    let key = PKey::public_key_from_pem(&pem).expect("public key PEM from the guest");
    let mut v = Verifier::new(MessageDigest::sha256(), &key).unwrap();
    v.update(b"signed inside the guest").unwrap();
    assert!(
        v.verify(&sig).unwrap(),
        "guest signature does not verify on the host"
    );
    let mut v = Verifier::new(MessageDigest::sha256(), &key).unwrap();
    v.update(b"something else").unwrap();
    assert!(!v.verify(&sig).unwrap());
    // The monitor finds the started device's vhost_dev (vhost-user-base's get_vhost hook,
    // qemu/patches/0001) and decodes an ID without a feature map (0007).
    let dev = "/machine/peripheral/vtpm/virtio-backend";
    let status = vm.hmp(&format!("info virtio-status {dev}"));
    for want in [
        "device_name:             vhost-user-tpm (vhost)",
        "device_id:               62",
        "vhost_started:           true",
        "VHost:",
        "nvqs:           1",
    ] {
        assert!(
            status.contains(want),
            "info virtio-status lacks {want:?}:\n{status}"
        );
    }
    let queue = vm.hmp(&format!("info virtio-queue-status {dev} 0"));
    assert!(
        queue.contains("last_avail_idx:"),
        "info virtio-queue-status:\n{queue}"
    );
    let vhost_queue = vm.hmp(&format!("info virtio-vhost-queue-status {dev} 0"));
    assert!(
        vhost_queue.contains("(vhost)"),
        "info virtio-vhost-queue-status:\n{vhost_queue}"
    );
    vm.shutdown();
    assert!(daemon.log_text().contains("frontend connected"));
}

/// A reset the guest driver does (status 0 on remove and probe) is not a platform reset: the
/// TPM keeps its PCRs and QEMU sends no VHOST_USER_RESET_DEVICE. With the get_vhost hook,
/// generic virtio_reset() would send one; vhost-user-tpm opts out (qemu/patches/0008).
#[test]
fn a_driver_reload_does_not_power_cycle_the_tpm() {
    let (env, _dir, daemon) = start();
    let mut vm = Vm::boot_opts(&env, &TpmFrontend::VhostUser(daemon.socket.clone()), true);
    let digest = sha256(b"measured before the driver reload");
    vm.must(&format!("tpm2_pcrextend 16:sha256={}", hex::encode(digest)));
    let extended = vm.pcr_sha256(16);
    assert_ne!(extended, "0".repeat(64));
    let power_cycles = || {
        daemon
            .log_text()
            .matches("device reset: TPM power-cycled")
            .count()
    };
    let before = power_cycles();

    // Unbind and bind the driver: remove and probe both reset the device (status 0).
    vm.must(
        "dev=$(readlink -f /sys/class/tpm/tpm0/device); drv=$(readlink -f $dev/driver); \
         n=$(basename $dev); echo $n > $drv/unbind && echo $n > $drv/bind",
    );
    vm.must("for i in $(seq 100); do [ -e /dev/tpmrm0 ] && break; sleep 0.1; done; ls /dev/tpmrm0");
    assert_eq!(vm.pcr_sha256(16), extended, "the driver reload reset PCR16");
    assert_eq!(
        power_cycles(),
        before,
        "the driver reload power-cycled the TPM"
    );
    // A platform reset does power-cycle it, and shows in the count: the count above can
    // tell one from the other.
    vm.reboot();
    assert!(
        power_cycles() > before,
        "a guest reboot left no power cycle in the daemon's log:\n{}",
        daemon.log_text()
    );
    assert_eq!(vm.pcr_sha256(16), "0".repeat(64), "PCR16 after the reboot");
    vm.shutdown();
}

#[test]
fn nv_index_survives_guest_reboot_and_pcrs_reset() {
    let (env, _dir, daemon) = start();
    let mut vm = Vm::boot_opts(&env, &TpmFrontend::VhostUser(daemon.socket.clone()), true);
    let data = "persist me across reboot 1234567";
    vm.must("tpm2_nvdefine 0x1500016 -C o -s 32 -a 'ownerread|ownerwrite|authread|authwrite'");
    vm.must(&format!(
        "echo -n '{data}' > d && tpm2_nvwrite 0x1500016 -C o -i d"
    ));
    vm.must(&format!(
        "tpm2_pcrextend 16:sha256={}",
        hex::encode(sha256(b"x"))
    ));
    vm.reboot();
    vm.must("tpm2_nvread 0x1500016 -C o -s 32 -o back");
    assert_eq!(vm.read_file("back"), data.as_bytes());
    let pcr = vm.pcr_sha256(16);
    assert_eq!(pcr, "0".repeat(64), "a guest reboot power-cycles the TPM");
    vm.shutdown();
}

#[test]
fn daemon_killed_and_restarted_while_the_guest_waits() {
    let (env, _dir, mut daemon) = start();
    let mut vm = Vm::boot(&env, &TpmFrontend::VhostUser(daemon.socket.clone()));
    vm.must("tpm2_nvdefine 0x1500017 -C o -s 8 -a 'ownerread|ownerwrite|authread|authwrite'");
    vm.must("echo -n 'acked!!!' > d && tpm2_nvwrite 0x1500017 -C o -i d");
    assert!(!daemon.signal(Signal::SIGKILL).unwrap().success());
    std::thread::sleep(Duration::from_millis(500));
    daemon.restart().unwrap();
    // QEMU reconnects on its own (reconnect-ms); then the guest's commands work again.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while daemon.log_text().matches("frontend connected").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "QEMU did not reconnect:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let rnd = vm.must("tpm2_getrandom --hex 8");
    assert_eq!(
        rnd.trim().len(),
        16,
        "tpm2_getrandom after the restart: {rnd}\n{}",
        daemon.log_text()
    );
    vm.must("tpm2_nvread 0x1500017 -C o -s 8 -o back");
    assert_eq!(
        vm.read_file("back"),
        b"acked!!!",
        "acknowledged NV write lost"
    );
    vm.shutdown();
}

/// The driver's completion counters, from the virtio device's sysfs directory.
fn completions(vm: &mut Vm) -> (u64, u64) {
    let read = |vm: &mut Vm, name: &str| -> u64 {
        let out = vm.must(&format!(
            "cat /sys/bus/virtio/drivers/tpm_virtio/virtio*/{name}"
        ));
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}: {out}"))
    };
    (
        read(vm, "polled_completions"),
        read(vm, "slept_completions"),
    )
}

// Issue 12: the driver polls the used ring for a short adaptive window (interrupts suppressed)
// before it sleeps on the interrupt. Commands complete on the polled path; with poll_us=0 they
// all sleep; a command that the stopped daemon does not answer times out after its window and
// is left to the device, whose late answer is discarded; a device reset (PCI remove and
// rescan) while a loop of commands keeps the driver polling leaves a working TPM.
#[test]
fn the_driver_polls_for_completions_and_survives_a_timeout_and_a_reset() {
    let (env, _dir, daemon) = start();
    let mut vm = Vm::boot(&env, &TpmFrontend::VhostUser(daemon.socket.clone()));
    let twenty = "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do \
                  tpm2_getrandom --hex 8 > /dev/null || exit 1; done";

    let (polled0, slept0) = completions(&mut vm);
    vm.must(twenty);
    let (polled1, slept1) = completions(&mut vm);
    eprintln!(
        "20 x tpm2_getrandom: {} completions polled, {} slept",
        polled1 - polled0,
        slept1 - slept0
    );
    assert!(
        polled1 > polled0,
        "no completion was polled ({polled0} -> {polled1}, slept {slept0} -> {slept1})"
    );

    // Polling off: every completion sleeps on the interrupt. The counts are taken after the
    // switch: the kernel's own TPM users (the hwrng thread drawing entropy) may have had a
    // command polled in between.
    vm.must("echo 0 > /sys/module/tpm_virtio/parameters/poll_us");
    let (polled1, slept1) = completions(&mut vm);
    vm.must(twenty);
    let (polled2, slept2) = completions(&mut vm);
    assert_eq!(polled2, polled1, "poll_us=0 still polled");
    assert!(slept2 >= slept1 + 20, "{slept1} -> {slept2}");
    vm.must("echo 200 > /sys/module/tpm_virtio/parameters/poll_us");

    // A command the daemon does not answer: polled, then slept on, then timed out (the
    // floor of 0 leaves GetRandom's own duration class) and stranded.
    vm.must("echo 0 > /sys/module/tpm_virtio/parameters/min_timeout_ms");
    let pid = nix::unistd::Pid::from_raw(daemon.pid().unwrap());
    nix::sys::signal::kill(pid, Signal::SIGSTOP).unwrap();
    let (code, out) = vm.run_timeout("tpm2_getrandom --hex 8", Duration::from_secs(60));
    nix::sys::signal::kill(pid, Signal::SIGCONT).unwrap();
    assert_ne!(code, 0, "answered by a stopped daemon: {out}");
    assert!(
        vm.must("dmesg").contains("no response within"),
        "{}",
        vm.must("dmesg")
    );
    // The late answer to the stranded command is discarded; the next ones poll again.
    vm.must("echo 2000 > /sys/module/tpm_virtio/parameters/min_timeout_ms");
    vm.must(twenty);
    assert!(
        vm.must("dmesg")
            .contains("late response to an abandoned command discarded"),
        "{}",
        vm.must("dmesg")
    );
    let (polled3, _) = completions(&mut vm);
    assert!(
        polled3 > polled2,
        "polling did not resume after the timeout"
    );

    // A device reset while a loop of commands keeps the driver polling.
    vm.must(
        "(while :; do tpm2_getrandom --hex 8 > /dev/null 2>&1; done) > /dev/null 2>&1 & \
         echo $! > hammer",
    );
    vm.must(
        "sleep 1; dev=$(readlink -f /sys/bus/virtio/drivers/tpm_virtio/virtio*/..); \
         echo 1 > $dev/remove; sleep 1; echo 1 > /sys/bus/pci/rescan; sleep 1",
    );
    vm.must("kill $(cat hammer); wait 2> /dev/null; true");
    // (The shell may report the loop's end first.)
    let rnd = vm.must("tpm2_getrandom --hex 8");
    let rnd = rnd.trim().lines().last().unwrap_or_default();
    assert_eq!(rnd.len(), 16, "after the reset: {rnd}");
    let dmesg = vm.must("dmesg");
    assert_eq!(
        dmesg.matches("virtio TPM 2.0").count(),
        2,
        "the device was not registered again after the rescan:\n{dmesg}"
    );

    // Unloading and loading the module again: remove() and the device-managed chip and
    // state are released without kernel warnings, and the TPM comes back.
    vm.must("rmmod tpm_virtio");
    assert!(
        !vm.must("ls /dev").contains("tpmrm0"),
        "/dev/tpmrm0 left after rmmod"
    );
    vm.must("modprobe tpm_virtio");
    let rnd = vm.must("tpm2_getrandom --hex 8");
    assert_eq!(rnd.trim().len(), 16, "after rmmod/modprobe: {rnd}");
    let dmesg = vm.must("dmesg");
    assert_eq!(
        dmesg.matches("virtio TPM 2.0").count(),
        3,
        "the device was not registered again after modprobe:\n{dmesg}"
    );
    for bad in ["WARNING:", "BUG:", "refcount_t:", "general protection"] {
        assert!(!dmesg.contains(bad), "kernel reported {bad}:\n{dmesg}");
    }
    vm.shutdown();
}
