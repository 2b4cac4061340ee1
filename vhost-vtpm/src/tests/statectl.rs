use super::*;

fn cmd(args: &[&str]) -> Result<String, StateCtlError> {
    let mut v = vec!["vtpm-state"];
    v.extend_from_slice(args);
    run(StateArgs::try_parse_from(v).unwrap())
}

#[test]
fn operator_flow_inspect_reset_accept() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("host.key");
    let dir = tmp.path().join("vm");
    let (k, d) = (key.to_str().unwrap(), dir.to_str().unwrap());
    assert!(cmd(&["gen-host-key", k]).unwrap().contains("mode 0600"));
    assert!(cmd(&["gen-host-key", k]).is_err(), "never overwrites a key");
    drop(EncryptedStore::open(&dir, &HostKey::File(key.clone()), "libtpms").unwrap());

    let header = cmd(&["inspect", "--state-dir", d]).unwrap();
    assert!(header.contains("generation 1"), "{header}");
    assert!(header.contains("not checked"), "{header}");
    let full = cmd(&["inspect", "--state-dir", d, "--host-key-file", k]).unwrap();
    assert!(
        full.contains("authenticated: yes (engine libtpms, generation record 1)"),
        "{full}"
    );

    assert!(matches!(
        cmd(&["accept-current", "--state-dir", d]),
        Err(StateCtlError::NoHostKey)
    ));
    assert!(
        cmd(&["accept-current", "--state-dir", d, "--host-key-file", k])
            .unwrap()
            .contains("generation 1")
    );

    assert!(matches!(
        cmd(&["reset", "--state-dir", d]),
        Err(StateCtlError::NotConfirmed)
    ));
    assert!(
        dir.join("state.vtpm").exists(),
        "unconfirmed reset changes nothing"
    );
    let out = cmd(&["reset", "--state-dir", d, "--yes"]).unwrap();
    assert!(out.contains("backup-"), "{out}");
    assert!(!dir.join("state.vtpm").exists());
    assert!(cmd(&["inspect", "--state-dir", d])
        .unwrap()
        .contains("no vTPM instance"));
}

#[test]
fn commands_on_a_missing_directory_fail_without_creating_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("absent");
    let d = dir.to_str().unwrap();
    assert!(cmd(&["reset", "--state-dir", d, "--yes"]).is_err());
    assert!(!dir.exists());
}
