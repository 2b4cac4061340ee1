use super::*;

fn key_file(dir: &Path, contents: &[u8], mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("k");
    fs::write(&p, contents).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    p
}

#[test]
fn host_key_files_in_hex_or_raw() {
    let dir = tempfile::tempdir().unwrap();
    let raw = [7u8; KEY_LEN];
    let a = load_host_key_file(&key_file(dir.path(), &raw, 0o600)).unwrap();
    let b = load_host_key_file(&key_file(
        dir.path(),
        format!("{}\n", hex(&raw)).as_bytes(),
        0o400,
    ))
    .unwrap();
    assert_eq!(a.bytes(), b.bytes());
    // Not hex, too short, and 64 bytes that are not ASCII (no panic on a char boundary).
    let multibyte = format!("a{}b", "é".repeat(31));
    for bad in [&b"short"[..], &[b'z'; 64][..], multibyte.as_bytes()] {
        let err = load_host_key_file(&key_file(dir.path(), bad, 0o600)).unwrap_err();
        assert!(matches!(err, KeyError::HostKeyFile { .. }), "{err}");
    }
}

#[test]
fn generated_key_file_is_private_and_not_overwritten() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("host.key");
    generate_host_key_file(&p).unwrap();
    assert_eq!(
        fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let first = fs::read(&p).unwrap();
    assert!(generate_host_key_file(&p).is_err());
    assert_eq!(fs::read(&p).unwrap(), first);
    load_host_key_file(&p).unwrap();
}

#[test]
fn key_record_round_trip_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("host.key");
    generate_host_key_file(&p).unwrap();
    let host = HostKey::File(p);
    let id = InstanceId::random().unwrap();
    let key = SecretKey::random().unwrap();
    let record_path = dir.path().join("instance.key");
    let record = host.wrap(&id, &key, &record_path).unwrap();
    let (id2, key2) = host.unwrap(&record_path, &record).unwrap();
    assert_eq!(id2, id);
    assert_eq!(key2.bytes(), key.bytes());
    // A changed instance id (authenticated) or wrapped key fails.
    for at in [14, record.len() - 3] {
        let mut bad = record.clone();
        bad[at] ^= 1;
        let err = host.unwrap(&record_path, &bad).unwrap_err();
        assert!(matches!(err, KeyError::RecordCorrupt { .. }), "{err}");
    }
    // A record for the host TPM is not opened with a key file.
    let tpm = HostKey::Tpm {
        tcti: "device:/nonexistent".into(),
        pcrs: vec![],
    };
    let err = tpm.unwrap(&record_path, &record).unwrap_err();
    assert!(matches!(err, KeyError::ProtectionMismatch { .. }), "{err}");
}

#[test]
fn aead_rejects_other_keys_and_associated_data() {
    let a = SecretKey::random().unwrap();
    let b = SecretKey::random().unwrap();
    let sealed = a.seal(b"aad", b"secret").unwrap();
    assert_eq!(a.open(b"aad", &sealed).unwrap(), b"secret");
    assert!(b.open(b"aad", &sealed).is_none());
    assert!(a.open(b"other", &sealed).is_none());
    assert!(a.open(b"aad", &sealed[..10]).is_none());
}
