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
    vm.shutdown();
    assert!(daemon.log_text().contains("frontend connected"));
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
