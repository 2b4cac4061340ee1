use super::*;

fn parse(args: &[&str]) -> Result<Config, ConfigError> {
    let mut v = vec!["vhost-vtpm"];
    v.extend_from_slice(args);
    Config::try_from(Args::try_parse_from(v).unwrap())
}

#[test]
fn minimal_libtpms_config() {
    let c = parse(&[
        "--socket-path",
        "/tmp/s",
        "--state-dir",
        "/tmp/d",
        "--host-key-file",
        "/k",
    ])
    .unwrap();
    assert_eq!(c.listen, Listen::Path("/tmp/s".into()));
    assert_eq!(
        c.engine,
        EngineConfig::Libtpms {
            state_dir: "/tmp/d".into(),
            host_key: HostKey::File("/k".into()),
        }
    );
    assert!(c.busy_poll.is_zero());
}

#[test]
fn missing_pieces_are_named() {
    assert_eq!(parse(&["--state-dir", "/d"]), Err(ConfigError::NoListener));
    assert_eq!(
        parse(&["--socket-path", "/s"]),
        Err(ConfigError::NoStateDir)
    );
    assert_eq!(
        parse(&[
            "--socket-path",
            "/s",
            "--engine",
            "swtpm",
            "--swtpm-ctrl",
            "/c"
        ]),
        Err(ConfigError::NoSwtpmSockets)
    );
    assert_eq!(
        parse(&[
            "--socket-path",
            "/s",
            "--state-dir",
            "/d",
            "--swtpm-data",
            "/x"
        ]),
        Err(ConfigError::SwtpmOptionWithoutSwtpm("swtpm-data"))
    );
    assert_eq!(
        parse(&["--fd=-3", "--state-dir", "/d"]),
        Err(ConfigError::BadFd(-3))
    );
    assert_eq!(
        parse(&[
            "--socket-path",
            "/s",
            "--state-dir",
            "/d",
            "--host-key-file",
            "/k",
            "--busy-poll-us",
            "20000"
        ]),
        Err(ConfigError::BusyPollTooLong(20000))
    );
}

#[test]
fn state_is_always_encrypted_under_one_host_key() {
    let base = ["--socket-path", "/s", "--state-dir", "/d"];
    assert_eq!(parse(&base), Err(ConfigError::NoHostKey));
    let with = |extra: &[&str]| {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        parse(&v)
    };
    let c = with(&[
        "--host-tpm",
        "device:/dev/tpmrm0",
        "--host-tpm-pcrs",
        "7,0,7",
    ])
    .unwrap();
    assert_eq!(
        c.engine,
        EngineConfig::Libtpms {
            state_dir: "/d".into(),
            host_key: HostKey::Tpm {
                tcti: "device:/dev/tpmrm0".into(),
                pcrs: vec![0, 7],
            },
        }
    );
    assert_eq!(
        with(&["--host-tpm", "device:/dev/tpmrm0", "--host-tpm-pcrs", "24"]),
        Err(ConfigError::BadPcr(24))
    );
    // Both at once, or PCRs without a TPM, are usage errors.
    let mut v = vec!["x"];
    v.extend_from_slice(&base);
    let mut both = v.clone();
    both.extend(["--host-tpm", "device:/x", "--host-key-file", "/k"]);
    assert!(Args::try_parse_from(both).is_err());
    assert_eq!(
        with(&["--host-key-file", "/k", "--host-tpm-pcrs", "7"]),
        Err(ConfigError::PcrsWithoutHostTpm)
    );
    assert_eq!(
        parse(&[
            "--socket-path",
            "/s",
            "--engine",
            "swtpm",
            "--swtpm-ctrl",
            "/c",
            "--swtpm-data",
            "/d",
            "--host-key-file",
            "/k"
        ]),
        Err(ConfigError::HostKeyWithSwtpm)
    );
}

#[test]
fn socket_path_and_fd_conflict() {
    assert!(Args::try_parse_from(["x", "--socket-path", "/s", "--fd", "3"]).is_err());
}

#[test]
fn swtpm_config() {
    let c = parse(&[
        "--fd",
        "3",
        "--engine",
        "swtpm",
        "--swtpm-ctrl",
        "/c",
        "--swtpm-data",
        "/d",
        "--busy-poll-us",
        "50",
    ])
    .unwrap();
    assert_eq!(c.listen, Listen::Fd(3));
    assert_eq!(c.busy_poll, Duration::from_micros(50));
}
