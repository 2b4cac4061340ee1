//! Encrypted state through the real daemon binary: tampering, host keys (a real swtpm as the
//! host TPM through tss-esapi), and import of an swtpm state directory.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use coprocessor::swtpm::SwtpmEngine;
use coprocessor::Coprocessor;
use testbed::openssl::ecdsa_p256_verifies;
use testbed::{run_tool, DaemonProcess, HostTpmSimulator, SwtpmProcess};
use tpm_proto::commands as c;
use tpm_proto::rc;

const NV_INDEX: u32 = 0x0150_0030;
const PERSISTENT: u32 = 0x8100_0077;
const STATE_FILES: [&str; 4] = ["instance.key", "state.vtpm", "state.b.vtpm", "state.gen"];
const STATE_SLOTS: [&str; 2] = ["state.vtpm", "state.b.vtpm"];

/// The state slot that holds the newest generation (by its clear header): the one whose
/// tampering the daemon must notice. Changing the other, stale slot changes nothing the
/// instance depends on: the next durable command rewrites it.
fn newest_slot(state: &Path) -> PathBuf {
    vtpm_state::EncryptedStore::newest_state_file(state)
        .unwrap()
        .unwrap()
}

/// Puts `slots` (as [`files`] returned them) back into `state`.
fn put_back(state: &Path, slots: &BTreeMap<&'static str, Vec<u8>>) {
    for f in STATE_SLOTS {
        fs::write(state.join(f), &slots[f]).unwrap();
    }
}

fn files(state: &Path) -> BTreeMap<&'static str, Vec<u8>> {
    STATE_FILES
        .iter()
        .filter_map(|f| fs::read(state.join(f)).ok().map(|d| (*f, d)))
        .collect()
}

/// Starts the daemon, defines the test NV index if needed, writes `value` (8 bytes), stops.
fn write_nv(dir: &Path, extra: &[&str], value: &[u8; 8]) {
    let mut d = Daemon::start_in(dir, extra);
    {
        let mut client = d.connect();
        startup(&mut client);
        let read = run(&mut client, &c::nv_read(NV_INDEX, 8, 0));
        if rc_of(&read) != rc::SUCCESS {
            define_nv(&mut client, NV_INDEX, 8, c::NV_ORDINARY_ATTRS);
        }
        assert_success(
            &run(&mut client, &c::nv_write(NV_INDEX, 0, value)),
            "NV_Write",
        );
    }
    d.stop();
}

fn read_nv(dir: &Path, extra: &[&str]) -> Vec<u8> {
    let mut d = Daemon::start_in(dir, extra);
    let value = {
        let mut client = d.connect();
        startup(&mut client);
        c::parse_nv_read(&run(&mut client, &c::nv_read(NV_INDEX, 8, 0))).expect("NV_Read")
    };
    d.stop();
    value
}

/// Starts the daemon expecting it to refuse: returns what it said; checks it left every
/// state file byte-identical.
fn refused(dir: &Path, extra: &[&str]) -> String {
    let state = dir.join("state");
    let before = files(&state);
    let mut args = vec!["--log-level", "debug"];
    args.extend_from_slice(extra);
    let err = match DaemonProcess::start(Path::new(DAEMON), dir, &args) {
        Ok(_) => panic!("the daemon accepted state it must refuse"),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        files(&state),
        before,
        "a refused start changed state files: {err}"
    );
    err
}

#[test]
fn tampered_state_is_refused_with_its_own_error_and_left_byte_identical() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    write_nv(a, &[], b"value-01");
    let older = files(&a.join("state"));
    write_nv(a, &[], b"value-02");
    write_nv(b, &[], b"other-vm");
    let good_slots = files(&a.join("state"));
    let state = newest_slot(&a.join("state"));
    let good = fs::read(&state).unwrap();
    let mut cases = 0;

    // A flipped byte in the encrypted part.
    let mut flipped = good.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x20;
    fs::write(&state, &flipped).unwrap();
    let err = refused(a, &[]);
    assert!(err.contains("authentication failed"), "{err}");
    assert!(
        err.contains(&state.display().to_string()),
        "names the file: {err}"
    );
    cases += 1;

    // Truncated.
    fs::write(&state, &good[..good.len() - 7]).unwrap();
    let err = refused(a, &[]);
    assert!(err.contains("truncated"), "{err}");
    cases += 1;

    // Swapped with another instance's state file.
    fs::write(&state, fs::read(newest_slot(&b.join("state"))).unwrap()).unwrap();
    let err = refused(a, &[]);
    assert!(err.contains("belongs to instance"), "{err}");
    cases += 1;

    // Older state files of the same instance put back (both slots: with only the newest
    // put back, the other slot would still hold the older generation, which is the same
    // rollback).
    put_back(&a.join("state"), &older);
    let err = refused(a, &[]);
    assert!(err.contains("older than generation"), "{err}");
    cases += 1;

    // The right files with the wrong host key (another host's key file).
    put_back(&a.join("state"), &good_slots);
    let other_key = b.join("host.key");
    let err = refused(a, &["--host-key-file", other_key.to_str().unwrap()]);
    assert!(err.contains("wrong host key"), "{err}");
    cases += 1;

    // Nothing was lost: the untouched file still opens with the right key.
    assert_eq!(read_nv(a, &[]), b"value-02");
    assert_eq!(read_nv(b, &[]), b"other-vm");
    println!("tamper cases refused with distinct errors: {cases}");
}

#[test]
fn one_instances_state_does_not_open_with_anothers_key() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    // Same host key file for both, as on one host: only the instance keys differ.
    let host_key = a.join("host.key");
    let key_arg = ["--host-key-file", host_key.to_str().unwrap()];
    write_nv(a, &[], b"secret-a");
    write_nv(b, &key_arg, b"secret-b");
    let (a_newest, b_newest) = (newest_slot(&a.join("state")), newest_slot(&b.join("state")));
    let a_state = fs::read(&a_newest).unwrap();
    let b_state = fs::read(&b_newest).unwrap();
    // A's file relabelled with B's instance id fails authentication under B's key.
    let mut forged = a_state.clone();
    forged[12..28].copy_from_slice(&b_state[12..28]);
    fs::write(&b_newest, &forged).unwrap();
    let err = refused(b, &key_arg);
    assert!(err.contains("authentication failed"), "{err}");
    // B's key record cannot be used to open A's directory either.
    fs::write(&b_newest, &b_state).unwrap();
    let a_record = fs::read(a.join("state/instance.key")).unwrap();
    fs::write(
        a.join("state/instance.key"),
        fs::read(b.join("state/instance.key")).unwrap(),
    )
    .unwrap();
    let err = refused(a, &[]);
    assert!(err.contains("belongs to instance"), "{err}");
    fs::write(a.join("state/instance.key"), &a_record).unwrap();
    assert_eq!(read_nv(a, &[]), b"secret-a");
    assert_eq!(read_nv(b, &key_arg), b"secret-b");
}

// Issue 11, item 7: a state directory copied from VM A's into VM B's (key record included,
// under the same host key) is refused by VM B's daemon, which names both VMs and writes
// nothing; VM A's own daemon still serves it; an unbound instance is bound to the first
// --vm-id it is served with.
#[test]
fn a_copy_of_another_vms_state_directory_is_refused() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    let host_key = a.join("host.key");
    let key = host_key.to_str().unwrap();
    // A's daemon makes the host key file in A's directory; B and C use the same one.
    let vm_a = ["--vm-id", "vm-a"];
    let vm_b = ["--vm-id", "vm-b", "--host-key-file", key];
    write_nv(a, &vm_a, b"secret-a");
    fs::create_dir_all(b.join("state")).unwrap();
    for f in STATE_FILES {
        fs::copy(a.join("state").join(f), b.join("state").join(f)).unwrap();
    }
    let err = refused(b, &vm_b);
    assert!(
        err.contains("belongs to VM vm-a, not vm-b")
            && err.contains("refusing to serve another VM's TPM"),
        "{err}"
    );
    // Without --vm-id the bound instance is refused too.
    let err = refused(b, &["--host-key-file", key]);
    assert!(
        err.contains("belongs to VM vm-a, not a VM without --vm-id"),
        "{err}"
    );
    assert_eq!(read_nv(a, &vm_a), b"secret-a");

    // An instance made without --vm-id is bound by its first --vm-id, then holds to it.
    let c = tempfile::tempdir().unwrap();
    let c = c.path();
    let key_only = ["--host-key-file", key];
    write_nv(c, &key_only, b"secret-c");
    assert_eq!(
        read_nv(c, &["--vm-id", "vm-c", "--host-key-file", key]),
        b"secret-c"
    );
    let err = refused(c, &vm_b);
    assert!(err.contains("belongs to VM vm-c, not vm-b"), "{err}");
    assert!(refused(c, &["--vm-id=.x", "--host-key-file", key]).contains("is not a VM id"));
}

#[test]
fn state_key_sealed_by_the_host_tpm_survives_a_host_reboot() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let host_state = dir.join("host-tpm");
    let tpm = HostTpmSimulator::start(&host_state).unwrap();
    let tcti = tpm.tcti();
    write_nv(dir, &["--host-tpm", &tcti], b"sealed!!");
    assert!(
        fs::read(dir.join("state/instance.key"))
            .unwrap()
            .windows(8)
            .any(|w| w == b"VTPMSEAL"),
        "the key record holds a host TPM sealed blob"
    );
    // The host reboots: a new TPM process on the same TPM state.
    drop(tpm);
    let tpm = HostTpmSimulator::start(&host_state).unwrap();
    let tcti = tpm.tcti();
    assert_eq!(read_nv(dir, &["--host-tpm", &tcti]), b"sealed!!");

    // Another machine's TPM cannot unseal it.
    let other = HostTpmSimulator::start(&dir.join("other-host-tpm")).unwrap();
    let err = refused(dir, &["--host-tpm", &other.tcti()]);
    assert!(err.contains("host TPM"), "{err}");
    // Nor can a key file stand in for the TPM.
    let key = dir.join("some.key");
    testbed::ensure_host_key(&key).unwrap();
    let err = refused(dir, &["--host-key-file", key.to_str().unwrap()]);
    assert!(err.contains("protected by the host TPM"), "{err}");
    assert_eq!(read_nv(dir, &["--host-tpm", &tcti]), b"sealed!!");
}

// Issue 11, item 6: with --host-tpm-auth-file, a process that can use the host TPM and holds
// a copy of instance.key cannot unseal the instance key: the TPM itself refuses a nullauth
// unseal of the blob; the daemon without the file, or with another one, is refused with its
// own error and writes nothing; with the file the state opens.
#[test]
fn a_state_key_sealed_with_an_auth_file_does_not_unseal_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let tpm = HostTpmSimulator::start(&dir.join("host-tpm")).unwrap();
    let tcti = tpm.tcti();
    let (auth, other) = (dir.join("tpm-auth.key"), dir.join("other-auth.key"));
    testbed::ensure_host_key(&auth).unwrap();
    testbed::ensure_host_key(&other).unwrap();
    let with = |file: &Path| -> Vec<String> {
        [
            "--host-tpm",
            &tcti,
            "--host-tpm-auth-file",
            file.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let args = with(&auth);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    write_nv(dir, &args, b"authed!!");

    // The record's body is the sealed blob (after the 32-byte record header).
    let record = fs::read(dir.join("state/instance.key")).unwrap();
    let blob = host_tpm::SealedBlob::from_bytes(&record[32..]).unwrap();
    let mut host = host_tpm::HostTpm::connect(&tcti).unwrap();
    match host.unseal(&blob) {
        Err(host_tpm::HostTpmError::AuthFailed) => {}
        other => panic!(
            "a nullauth unseal of the copied record must fail: {:?}",
            other.map(|_| ())
        ),
    }
    drop(host);

    let err = refused(dir, &["--host-tpm", &tcti]);
    assert!(err.contains("--host-tpm-auth-file"), "{err}");
    let other_args = with(&other);
    let other_args: Vec<&str> = other_args.iter().map(String::as_str).collect();
    let err = refused(dir, &other_args);
    assert!(
        err.contains("refused the sealed object's authorization"),
        "{err}"
    );
    assert_eq!(read_nv(dir, &args), b"authed!!");

    // Without an auth file the daemon says what it risks.
    let plain = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(plain.path(), &["--host-tpm", &tcti]);
    d.stop();
    assert!(d.log_text().contains("empty authValue"), "{}", d.log_text());
}

#[test]
fn pcr_bound_state_key_is_refused_after_the_host_pcr_changes() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let tpm = HostTpmSimulator::start(&dir.join("host-tpm")).unwrap();
    let tcti = tpm.tcti();
    let args = ["--host-tpm", tcti.as_str(), "--host-tpm-pcrs", "16"];
    write_nv(dir, &args, b"pcrbound");
    assert_eq!(read_nv(dir, &args), b"pcrbound");
    host_tpm::HostTpm::connect(&tcti)
        .unwrap()
        .pcr_extend_sha256(16, [0x5a; 32])
        .unwrap();
    let err = refused(dir, &args);
    assert!(err.contains("PCRs [16] no longer match"), "{err}");
}

fn exec(engine: &mut SwtpmEngine, cmd: &[u8]) -> Vec<u8> {
    let mut cmd = cmd.to_vec();
    engine.execute(&mut cmd).expect("swtpm").to_vec()
}

/// How the swtpm state of an import case is protected (always aes-256-cbc when it is).
#[derive(Clone, Copy)]
enum SwtpmProtection<'a> {
    Plain,
    /// swtpm's `--key file=...,format=hex`; `args` are vtpm-state's besides `--swtpm-key`.
    Key {
        hex: &'a str,
        args: &'a [&'a str],
    },
    /// swtpm's `--key pwdfile=...` (libvirt's way, with swtpm's default kdf); `args` are
    /// vtpm-state's besides `--swtpm-passphrase-file`.
    Passphrase {
        bytes: &'a [u8],
        args: &'a [&'a str],
    },
}

/// What the guest sees of the imported TPM: the persistent key's public area, a signature
/// by it, and the NV index.
fn import_case(protection: SwtpmProtection) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let swtpm_state = dir.join("swtpm-state");
    fs::create_dir_all(&swtpm_state).unwrap();
    let mut setup = Command::new("swtpm_setup");
    setup
        .args(["--tpm2", "--createek", "--overwrite", "--tpmstate"])
        .arg(&swtpm_state);
    // swtpm_setup's option, swtpm's --key option, vtpm-state's option and its other arguments.
    let secret_file = dir.join("swtpm.secret");
    let secret = match protection {
        SwtpmProtection::Plain => None,
        SwtpmProtection::Key { hex, args } => {
            fs::write(&secret_file, hex).unwrap();
            Some((
                "--keyfile",
                format!("file={},mode=aes-256-cbc,format=hex", secret_file.display()),
                "--swtpm-key",
                args,
            ))
        }
        SwtpmProtection::Passphrase { bytes, args } => {
            fs::write(&secret_file, bytes).unwrap();
            Some((
                "--pwdfile",
                format!("pwdfile={},mode=aes-256-cbc", secret_file.display()),
                "--swtpm-passphrase-file",
                args,
            ))
        }
    };
    if let Some((setup_option, ..)) = &secret {
        setup
            .arg(setup_option)
            .arg(&secret_file)
            .args(["--cipher", "aes-256-cbc"]);
    }
    run_tool(&mut setup)
        .unwrap_or_else(|e| panic!("swtpm_setup (scripts/setup.sh installs it): {e}"));

    // Use it through swtpm as QEMU would: a persistent key and an NV index.
    let (public, nv, key) = {
        let key_args: Vec<&str> = match &secret {
            Some((_, key_option, ..)) => vec!["--key", key_option.as_str()],
            None => Vec::new(),
        };
        let sw = SwtpmProcess::start_with(dir, &swtpm_state, true, &key_args).unwrap();
        let mut e = SwtpmEngine::connect(&sw.ctrl, sw.data.as_deref().unwrap()).unwrap();
        let code = rc_of(&exec(&mut e, &c::startup(c::TPM_SU_CLEAR)));
        assert!(code == rc::SUCCESS || code == rc::INITIALIZE, "{code:#x}");
        let key =
            c::parse_create_primary_ecc(&exec(&mut e, &c::create_primary_ecc_signing())).unwrap();
        assert_success(
            &exec(&mut e, &c::evict_control(key.handle, PERSISTENT)),
            "EvictControl",
        );
        assert_success(
            &exec(
                &mut e,
                &c::nv_define_space(NV_INDEX, 16, c::NV_ORDINARY_ATTRS),
            ),
            "NV_DefineSpace",
        );
        assert_success(
            &exec(&mut e, &c::nv_write(NV_INDEX, 0, b"from swtpm 0.7!!")),
            "NV_Write",
        );
        let public = exec(&mut e, &c::read_public(PERSISTENT));
        assert_success(&public, "ReadPublic");
        let nv = c::parse_nv_read(&exec(&mut e, &c::nv_read(NV_INDEX, 16, 0))).unwrap();
        (public, nv, key)
    };
    let before: Vec<_> = fs::read_dir(&swtpm_state)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (p.clone(), fs::read(&p).unwrap())
        })
        .collect();

    // Import with the operator command, then serve it with our daemon.
    let host_key = dir.join("host.key");
    testbed::ensure_host_key(&host_key).unwrap();
    let mut import = Command::new(testbed::workspace_bin("vtpm-state"));
    import
        .args(["import-swtpm", "--state-dir"])
        .arg(dir.join("state"))
        .arg("--from")
        .arg(&swtpm_state)
        .arg("--host-key-file")
        .arg(&host_key);
    if let Some((_, _, import_option, args)) = &secret {
        import.arg(import_option).arg(&secret_file).args(*args);
    }
    run_tool(&mut import).unwrap_or_else(|e| panic!("import: {e}"));
    for (p, data) in &before {
        assert_eq!(
            &fs::read(p).unwrap(),
            data,
            "import changed {}",
            p.display()
        );
    }

    let mut d = Daemon::start_in(dir, &[]);
    {
        let mut client = d.connect();
        startup(&mut client);
        assert_eq!(run(&mut client, &c::read_public(PERSISTENT)), public);
        assert_eq!(
            c::parse_nv_read(&run(&mut client, &c::nv_read(NV_INDEX, 16, 0))).unwrap(),
            nv
        );
        // The private key came along: it signs, and swtpm's public key verifies it.
        let digest: [u8; 32] = openssl::sha::sha256(b"imported key signs");
        let (r, s) = c::parse_sign_ecdsa(&run(
            &mut client,
            &c::sign_ecdsa_sha256(PERSISTENT, &digest),
        ))
        .expect("Sign with the imported persistent key");
        assert!(ecdsa_p256_verifies(&key.x, &key.y, &digest, &r, &s));
    }
    d.stop();

    // Importing again over an existing instance is refused.
    let again = run_tool(&mut import).unwrap_err();
    assert!(again.contains("already holds an instance"), "{again}");
}

#[test]
fn swtpm_state_is_imported_with_its_keys_and_nv() {
    import_case(SwtpmProtection::Plain);
}

#[test]
fn swtpm_state_encrypted_with_its_key_is_imported() {
    import_case(SwtpmProtection::Key {
        hex: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
        args: &["--swtpm-cipher", "aes-256-cbc", "--swtpm-key-format", "hex"],
    });
}

#[test]
fn swtpm_state_encrypted_with_a_passphrase_is_imported() {
    // As libvirt has it: aes-256-cbc, swtpm's default kdf; the newline is part of it.
    import_case(SwtpmProtection::Passphrase {
        bytes: b"libvirt secret value\n",
        args: &["--swtpm-cipher", "aes-256-cbc"],
    });
}

#[test]
fn reset_command_keeps_a_backup_and_the_daemon_starts_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    write_nv(dir, &[], b"old-data");
    let state = dir.join("state");
    let before = files(&state);
    // Corrupt it: the daemon refuses, the operator decides to reset.
    let newest = newest_slot(&state);
    let newest_name = newest.file_name().unwrap().to_str().unwrap().to_owned();
    let mut bytes = fs::read(&newest).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    fs::write(&newest, &bytes).unwrap();
    refused(dir, &[]);
    run_tool(
        Command::new(testbed::workspace_bin("vtpm-state"))
            .args(["reset", "--yes", "--state-dir"])
            .arg(&state),
    )
    .unwrap();
    let backup = fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("backup-")
        })
        .expect("backup directory");
    let kept = files(&backup);
    assert_eq!(kept["instance.key"], before["instance.key"]);
    assert_eq!(
        kept[newest_name.as_str()],
        bytes,
        "the refused file is kept as it was"
    );
    let mut d = Daemon::start_in(dir, &[]);
    {
        let mut client = d.connect();
        startup(&mut client);
        let code = rc_of(&run(&mut client, &c::nv_read(NV_INDEX, 8, 0)));
        assert_eq!(
            code & 0xBF,
            rc::HANDLE,
            "a fresh TPM has no NV index ({code:#x})"
        );
    }
    d.stop();
}
