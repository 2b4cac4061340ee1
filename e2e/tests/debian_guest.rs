//! A distribution guest: Debian bookworm booting systemd (guest-driver/debian/build.sh), with
//! our driver installed from its .deb, served by the vhost-vtpm daemon. What a guest owner
//! runs on it: systemd-cryptenroll and a LUKS2 volume unlocked by the TPM at boot, clevis,
//! and the tpm2-openssl provider, across a reboot, a daemon restart and a sealed live
//! migration to a second host (testbed's MigrationBed: two simulated host TPMs, the local CA
//! and the migration controller).
//!
//! The same guest, booting systemd, is also where the host package (packaging/) is installed
//! and its units run: this machine's own PID 1 is not systemd.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Verifier;
use testbed::{free_port, start_daemon, DebianDisks, Env, MigrationBed, TpmFrontend, Vm};

/// The passphrase the volume is made with; the TPM must make it unnecessary.
const PASSPHRASE: &str = "correct horse battery staple";
const MESSAGE: &[u8] = b"signed by tpm2-openssl in a Debian guest";

/// Checks a signature made in the guest with the public key it exported, on the host.
fn verifies_on_host(pub_pem: &[u8], sig: &[u8]) -> bool {
    let key = PKey::public_key_from_pem(pub_pem).expect("public key PEM from the guest");
    let mut v = Verifier::new(MessageDigest::sha256(), &key).unwrap();
    v.update(MESSAGE).unwrap();
    v.verify(sig).unwrap_or(false)
}

/// Runs a command that must succeed and may take long under emulation (key generation,
/// LUKS key derivation); returns its output.
fn must_slow(vm: &mut Vm, command: &str) -> String {
    let (rc, out) = vm.run_timeout(&format!("{{ {command}; }} 2>&1"), Duration::from_secs(300));
    assert_eq!(rc, 0, "guest command failed: {command}\n{out}");
    out
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// Runs, in /root of the guest, each command of the ```sh blocks under `heading` in
/// guest-driver/debian/README.md, as written there.
fn run_readme_block(vm: &mut Vm, heading: &str) {
    let readme_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../guest-driver/debian/README.md"
    );
    let readme = std::fs::read_to_string(readme_path).unwrap();
    let blocks = testbed::readme_shell_blocks(&readme, heading).unwrap();
    assert!(!blocks.is_empty(), "no commands under {heading:?}");
    vm.must("cd /root");
    for block in blocks {
        let commands = block.lines().map(str::trim);
        for command in commands.filter(|l| !l.is_empty() && !l.starts_with('#')) {
            must_slow(vm, command);
        }
    }
}

/// Signs MESSAGE with the TPM key `key.pem` through the tpm2-openssl provider, and checks
/// the signature on the host with the key's public half `pub_pem`.
fn assert_guest_signs(vm: &mut Vm, pub_pem: &[u8], when: &str) {
    vm.must("rm -f msg.sig");
    vm.must(
        "openssl pkeyutl -provider tpm2 -provider default -sign -inkey key.pem \
         -rawin -digest sha256 -in msg -out msg.sig",
    );
    let sig = vm.read_file("msg.sig");
    assert!(
        verifies_on_host(pub_pem, &sig),
        "{when}: the tpm2-openssl signature does not verify"
    );
}

#[test]
fn a_debian_guest_unlocks_luks_with_systemd_cryptenroll_and_uses_clevis_and_tpm2_openssl() {
    let env = Env::load();
    let image = env.debian().clone();
    let tmp = tempfile::tempdir().unwrap();
    let bed = MigrationBed::start(env.daemon.parent().unwrap(), tmp.path()).unwrap();
    let a_dir = tmp.path().join("vm-a");
    std::fs::create_dir_all(&a_dir).unwrap();
    bed.a().provision(&a_dir.join("state")).unwrap();
    let instance = bed.register(&a_dir.join("state"), bed.a()).unwrap();
    let args = bed.daemon_args(bed.a(), false);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon = start_daemon(&env, &a_dir, &args);
    let disks = DebianDisks::new(&env, 64);
    let frontend = TpmFrontend::VhostUser(daemon.socket.clone());
    let mut vm = Vm::boot_debian(&env, &frontend, &disks);

    // The driver came from its package and udev loaded it at boot.
    let pkg = format!("tpm-virtio-modules-{}", image.kver);
    assert!(vm
        .must(&format!("dpkg-query -W -f='${{Status}}' {pkg}"))
        .contains("install ok installed"));
    assert!(vm.must("cat /proc/modules").contains("tpm_virtio"));
    assert_eq!(
        vm.must("basename $(readlink /sys/class/tpm/tpm0/device/driver)")
            .trim(),
        "tpm_virtio"
    );
    // The README's installation commands, on the package copied into the guest.
    vm.write_file(
        &format!("/root/{}", file_name(&image.module_deb)),
        &std::fs::read(&image.module_deb).unwrap(),
    );
    run_readme_block(&mut vm, "## Installing the driver in your own guest");
    assert!(vm
        .must("modinfo -n tpm_virtio")
        .contains("/updates/tpm_virtio.ko"));

    let state = vm.must("systemctl is-system-running || true");
    assert_eq!(
        state.trim(),
        "running",
        "failed units: {}",
        vm.must("systemctl --failed --no-legend --no-pager")
    );

    // --- A LUKS2 volume enrolled with systemd-cryptenroll, bound to PCR 7. PBKDF2 with few
    // iterations: the guest runs emulated, and the passphrase's strength is not under test.
    vm.must(&format!("printf %s '{PASSPHRASE}' > pass"));
    must_slow(
        &mut vm,
        "cryptsetup luksFormat --batch-mode --type luks2 --pbkdf pbkdf2 \
         --pbkdf-force-iterations 1000 /dev/vdb pass",
    );
    vm.must("cryptsetup luksDump /dev/vdb | grep -q 'Version:.*2'");
    must_slow(
        &mut vm,
        "PASSWORD=$(cat pass) systemd-cryptenroll --tpm2-device=auto --tpm2-pcrs=7 /dev/vdb",
    );
    assert!(vm
        .must("cryptsetup luksDump /dev/vdb")
        .contains("systemd-tpm2"));
    vm.must("cryptsetup open --key-file pass /dev/vdb data");
    vm.must("mkfs.ext4 -q /dev/mapper/data && mkdir -p /mnt/data");
    vm.must("mount /dev/mapper/data /mnt/data && echo unlocked-by-the-tpm > /mnt/data/proof");
    vm.must("umount /mnt/data && cryptsetup close data");
    // Unlocked at boot by systemd-cryptsetup from the TPM, with no passphrase, set up as
    // guest-driver/debian/README.md tells a guest owner.
    run_readme_block(&mut vm, "### Unlocking a volume at boot");
    vm.must("echo '/dev/mapper/data /mnt/data ext4 defaults,nofail 0 2' >> /etc/fstab");

    // --- clevis, bound to PCR 7 too.
    must_slow(
        &mut vm,
        "echo -n sealed-by-clevis | clevis encrypt tpm2 '{\"pcr_bank\":\"sha256\",\"pcr_ids\":\"7\"}' \
         > secret.jwe",
    );
    assert_eq!(
        must_slow(&mut vm, "clevis decrypt < secret.jwe").trim(),
        "sealed-by-clevis"
    );

    // --- tpm2-openssl: a TPM-held P-256 key signs; the host verifies with its public key.
    must_slow(
        &mut vm,
        "openssl genpkey -provider tpm2 -provider default -algorithm EC \
         -pkeyopt group:P-256 -out key.pem",
    );
    assert!(vm.must("head -n1 key.pem").contains("TSS2 PRIVATE KEY"));
    vm.must(&format!(
        "printf %s '{}' > msg",
        String::from_utf8_lossy(MESSAGE)
    ));
    vm.must("openssl pkey -provider tpm2 -provider default -in key.pem -pubout -out pub.pem");
    let pub_pem = vm.read_file("pub.pem");
    assert_guest_signs(&mut vm, &pub_pem, "in the first boot");

    // --- A reboot: the volume is unlocked at boot from the TPM.
    vm.must("sync");
    vm.reboot();
    check_after_boot(&mut vm, &pub_pem, "after a reboot");

    // --- The daemon restarts (the VM powered off in between): the same TPM comes back.
    vm.must("sync");
    vm.shutdown();
    let stopped = daemon.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(stopped.success(), "the daemon's stop: {stopped}");
    daemon.restart().expect("restart the daemon");
    let mut vm = Vm::boot_debian(&env, &frontend, &disks);
    check_after_boot(&mut vm, &pub_pem, "after a daemon restart");

    // --- A sealed live migration to host B (storage shared, as on one host): the TPM the
    // guest finds there opens the volume, decrypts with clevis and signs with the key.
    bed.authorise(&instance, "debian-vm", bed.a(), bed.b())
        .unwrap();
    let b_dir = tmp.path().join("vm-b");
    std::fs::create_dir_all(&b_dir).unwrap();
    let args = bed.daemon_args(bed.b(), true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dst_daemon = start_daemon(&env, &b_dir, &args);
    let port = free_port().unwrap();
    let mut dst = Vm::incoming_tcp_debian(
        &env,
        &TpmFrontend::VhostUser(dst_daemon.socket.clone()),
        port,
        &disks,
    );
    vm.migrate_tcp(port, Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("migration failed: {e}\n{}", daemon.log_text()));
    dst.wait_migrated(Duration::from_secs(240)).unwrap();
    drop(vm);
    let mut vm = dst;
    assert!(dst_daemon
        .log_text()
        .contains("committed, this host owns the vTPM"));
    vm.must("umount /mnt/data && cryptsetup close data");
    must_slow(&mut vm, "cryptsetup open --token-only /dev/vdb data");
    vm.must("mount /dev/mapper/data /mnt/data");
    assert_eq!(vm.must("cat /mnt/data/proof").trim(), "unlocked-by-the-tpm");
    assert_eq!(
        must_slow(&mut vm, "clevis decrypt < secret.jwe").trim(),
        "sealed-by-clevis"
    );
    assert_guest_signs(&mut vm, &pub_pem, "after the migration");

    // --- A changed PCR 7: the TPM refuses, and the passphrase still opens the volume.
    vm.must("umount /mnt/data && cryptsetup close data");
    vm.must(
        "tpm2_pcrextend 7:sha256=0000000000000000000000000000000000000000000000000000000000000001",
    );
    let (rc, out) = vm.run_timeout(
        "cryptsetup open --token-only /dev/vdb data 2>&1",
        Duration::from_secs(300),
    );
    assert_ne!(
        rc, 0,
        "the TPM token opened the volume with a changed PCR 7: {out}"
    );
    assert!(!vm.must("ls /dev/mapper").contains("data"));
    let (rc, out) = vm.run_timeout("clevis decrypt < secret.jwe 2>&1", Duration::from_secs(300));
    assert!(
        rc != 0 && !out.contains("sealed-by-clevis"),
        "clevis decrypted with a changed PCR 7: {out}"
    );
    vm.must("cryptsetup open --key-file pass /dev/vdb data");
    vm.must("mount /dev/mapper/data /mnt/data");
    assert_eq!(vm.must("cat /mnt/data/proof").trim(), "unlocked-by-the-tpm");
    vm.must("umount /mnt/data && cryptsetup close data");
    vm.shutdown();
    assert!(dst_daemon.log_text().contains("frontend connected"));
}

/// After a boot: systemd-cryptsetup unlocked the volume from the TPM (no passphrase was
/// given), clevis decrypts, and the tpm2-openssl key still signs.
fn check_after_boot(vm: &mut Vm, pub_pem: &[u8], when: &str) {
    let unit = vm.must("systemctl show -p ActiveState,Result systemd-cryptsetup@data.service");
    assert!(
        unit.contains("ActiveState=active"),
        "{when}: systemd-cryptsetup@data: {unit}\n{}",
        vm.must("journalctl -b -u systemd-cryptsetup@data.service --no-pager | tail -n 20")
    );
    assert_eq!(
        vm.must("cat /mnt/data/proof").trim(),
        "unlocked-by-the-tpm",
        "{when}"
    );
    assert_eq!(
        must_slow(vm, "clevis decrypt < secret.jwe").trim(),
        "sealed-by-clevis",
        "{when}"
    );
    assert_guest_signs(vm, pub_pem, when);
}

/// The host package installed with dpkg on a systemd system (the Debian guest standing in for a
/// host), and `systemctl start vhost-vtpm@vm1.socket` as the one command an operator runs per
/// VM: the first connection starts the daemon by socket activation, it serves TPM commands
/// (the driver-side harness as the frontend), logs to the journal, keeps its state in
/// /var/lib/vhost-vtpm/vm1, stops cleanly and is started again by the next connection.
#[test]
fn the_host_package_installs_and_systemd_starts_an_instance_per_vm() {
    let env = Env::load();
    let deb = env
        .host_deb
        .clone()
        .expect("no HOST_DEB= in target/vtpm-env: run scripts/setup.sh");
    let frontend = env.daemon.parent().unwrap().join("examples/harness_demo");
    assert!(frontend.exists(), "{} is not built", frontend.display());
    let tmp = tempfile::tempdir().unwrap();
    let daemon = start_daemon(&env, tmp.path(), &[]);
    let disks = DebianDisks::with_files(&env, 16, &[&deb, &frontend]);
    let mut vm = Vm::boot_debian(&env, &TpmFrontend::VhostUser(daemon.socket.clone()), &disks);
    vm.must("mkdir -p /mnt/files && mount -o ro LABEL=vtpm-files /mnt/files");
    must_slow(&mut vm, &format!("dpkg -i /mnt/files/{}", file_name(&deb)));
    assert_eq!(vm.must("stat -c %a /etc/vhost-vtpm/host.key").trim(), "600");

    // The one command per VM.
    vm.must("systemctl start vhost-vtpm@vm1.socket");
    assert_eq!(
        vm.must("stat -c %F /run/vhost-vtpm/vm1.sock").trim(),
        "socket"
    );
    assert_eq!(
        vm.must("systemctl is-active vhost-vtpm@vm1.service || true")
            .trim(),
        "inactive",
        "the daemon runs before anyone connected"
    );
    for round in ["first start", "after a stop"] {
        let out = must_slow(&mut vm, "/mnt/files/harness_demo /run/vhost-vtpm/vm1.sock");
        assert!(out.contains("TPM2_GetRandom(16): "), "{round}: {out}");
        assert!(out.contains("ECDSA signature: r "), "{round}: {out}");
        assert_eq!(
            vm.must("systemctl is-active vhost-vtpm@vm1.service").trim(),
            "active",
            "{round}"
        );
        // A second connection to the same daemon (QEMU reconnecting).
        must_slow(&mut vm, "/mnt/files/harness_demo /run/vhost-vtpm/vm1.sock");
        vm.must("systemctl stop vhost-vtpm@vm1.service");
        let result = vm.must("systemctl show -p Result,ExecMainStatus vhost-vtpm@vm1.service");
        assert!(
            result.contains("Result=success") && result.contains("ExecMainStatus=0"),
            "{round}: the daemon's stop: {result}"
        );
        assert_eq!(
            vm.must("systemctl is-active vhost-vtpm@vm1.socket").trim(),
            "active",
            "{round}: the socket unit stays"
        );
    }
    let journal = vm.must("journalctl -b -u vhost-vtpm@vm1.service --no-pager -o cat");
    assert!(journal.contains("frontend connected"), "{journal}");
    let state = vm.must("ls /var/lib/vhost-vtpm/vm1");
    assert!(state.contains("state.vtpm"), "{state}");
    assert_eq!(vm.must("stat -c %a /var/lib/vhost-vtpm/vm1").trim(), "700");
    vm.must("systemctl stop vhost-vtpm@vm1.socket");
    vm.shutdown();
}
