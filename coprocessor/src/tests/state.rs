use super::*;

#[test]
fn store_load_delete_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let s = DirStore::open(dir.path().join("vm1")).unwrap();
    assert_eq!(s.load("permall").unwrap(), None);
    s.store("permall", b"one").unwrap();
    s.store("permall", b"two").unwrap();
    assert_eq!(s.load("permall").unwrap().as_deref(), Some(&b"two"[..]));
    assert!(!s.dir().join("tpm2-permall.tmp").exists());
    s.delete("permall").unwrap();
    s.delete("permall").unwrap();
    assert_eq!(s.load("permall").unwrap(), None);
}

#[test]
fn names_cannot_escape_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let s = DirStore::open(dir.path()).unwrap();
    assert!(matches!(s.store("../x", b""), Err(StateError::BadName(_))));
    assert!(matches!(s.load(""), Err(StateError::BadName(_))));
}

#[test]
fn files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let s = DirStore::open(dir.path()).unwrap();
    s.store("permall", b"secret").unwrap();
    let mode = fs::metadata(dir.path().join("tpm2-permall.bin"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
