//! The real `vtpm-ca` binary over real HTTPS, without a TPM: the certificate store's ACL,
//! revocation and the CRL, status answers, error shapes, graceful stop.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_api_error, vtpm_ca, vtpm_ca_ok, CaServer};
use openssl::x509::X509;
use testbed::openssl::crl_text;
use vtpm_ca::api::Status;

fn named_file(server: &CaServer, name: &str) -> Option<Vec<u8>> {
    std::fs::read(server.store.join("certs").join(format!("{name}.pem"))).ok()
}

/// `enroll/finish` of a session the CA never started: refused, whatever else refuses it
/// first.
fn finish_unknown_session(c: &vtpm_ca::client::Client) -> vtpm_ca::client::ClientError {
    c.enroll_finish(&vtpm_ca::api::EnrollFinishRequest {
        session: "nope".into(),
        secret: "AAAA".into(),
    })
    .unwrap_err()
}

/// The names of the files and directories at the top of the store (and of its parent).
fn store_root_files(server: &CaServer) -> Vec<String> {
    let mut out = Vec::new();
    for dir in [server.store.as_path(), server.tmp.path()] {
        for e in std::fs::read_dir(dir).unwrap() {
            out.push(e.unwrap().path().display().to_string());
        }
    }
    out.sort();
    out
}

#[test]
fn acl_refuses_unauthorised_writers_and_readers_and_changes_nothing() {
    let server = CaServer::start(3600, &[]);
    // Principals added with the CLI while the server runs: it reloads the ACL.
    let writer = server.add_principal(&["--name", "vek-writer", "--write-prefix", "vek/"]);
    let reader = server.add_principal(&["--name", "reader", "--read"]);
    let pem = String::from_utf8(server.ca_pem.clone()).unwrap();
    let other_pem = std::fs::read_to_string(server.store.join("tls.pem")).unwrap();

    // The authorised writer stores under its prefix.
    let w = server.client(Some(&writer));
    let put = w.put_cert("vek/rsa/vm-1", &pem).unwrap();
    assert_eq!(put.name, "vek/rsa/vm-1");
    assert!(!put.replaced);
    let before = named_file(&server, "vek/rsa/vm-1").unwrap();

    // Outside its prefix: refused, nothing written.
    let e = w.put_cert("aik/host/h1", &pem).unwrap_err();
    assert_api_error(&e, 403, "forbidden");
    assert!(named_file(&server, "aik/host/h1").is_none());

    // A reader may not write (and the existing certificate is unchanged).
    let r = server.client(Some(&reader));
    let e = r.put_cert("vek/rsa/vm-1", &other_pem).unwrap_err();
    assert_eq!(e.code(), Some("forbidden"), "{e}");
    assert_eq!(named_file(&server, "vek/rsa/vm-1").unwrap(), before);

    // No token / an unknown token: 401, nothing written.
    for c in [server.client(None), server.client(Some("not-a-token"))] {
        let e = c.put_cert("vek/rsa/vm-1", &other_pem).unwrap_err();
        assert_api_error(&e, 401, "unauthenticated");
        let e = c.get_cert("vek/rsa/vm-1").unwrap_err();
        assert_eq!(e.status(), Some(401), "{e}");
    }
    assert_eq!(named_file(&server, "vek/rsa/vm-1").unwrap(), before);

    // The writer has no read permission; the reader has.
    let e = w.get_cert("vek/rsa/vm-1").unwrap_err();
    assert_eq!(e.code(), Some("forbidden"), "{e}");
    let got = r.get_cert("vek/rsa/vm-1").unwrap();
    assert_eq!(
        X509::from_pem(got.as_bytes()).unwrap().to_der().unwrap(),
        X509::from_pem(pem.as_bytes()).unwrap().to_der().unwrap()
    );

    // Bad PEM and bad names are refused, nothing written.
    let e = w.put_cert("vek/rsa/vm-1", "not a certificate").unwrap_err();
    assert_api_error(&e, 400, "bad_pem");
    assert_eq!(named_file(&server, "vek/rsa/vm-1").unwrap(), before);
    let e = w.put_cert("vek/has space", &pem).unwrap_err();
    assert_api_error(&e, 400, "bad_name");
    // Dot segments never reach the store. The client's URL handling removes plain `..`
    // segments, so they are sent percent-encoded: the server decodes the name to
    // `vek/../../ca`, which name validation refuses.
    let root_files = store_root_files(&server);
    let ca_before = std::fs::read(server.store.join("ca.pem")).unwrap();
    for name in [
        "vek/..%2F..%2Fca",
        "vek%2F..%2F..%2Fca",
        "vek/x%2F..%2F..%2F..%2Fca",
    ] {
        let e = w.put_cert(name, &pem).unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (Some(400), Some("bad_name")),
            "{name}: {e}"
        );
    }
    // The same names through the CA's handler directly, without any URL in between.
    let ca = vtpm_ca::Ca::open(&server.store).unwrap();
    for name in ["vek/../../ca", "vek/../x", "../ca", "vek/./x"] {
        let e = ca.put_cert(name, &pem, Some(writer.as_str())).unwrap_err();
        assert!(
            matches!(e, vtpm_ca::certstore::CertStoreError::BadName(_)),
            "{name}: {e}"
        );
    }
    assert_eq!(store_root_files(&server), root_files);
    assert_eq!(
        std::fs::read(server.store.join("ca.pem")).unwrap(),
        ca_before
    );
    assert!(!server.tmp.path().join("ca.pem").exists());

    // Replacing is allowed for the writer and reported.
    assert!(w.put_cert("vek/rsa/vm-1", &other_pem).unwrap().replaced);
    let e = r.get_cert("vek/none").unwrap_err();
    assert_api_error(&e, 404, "not_found");

    // Only the admin revokes.
    let e = w.revoke_cert(&other_pem, Some("test")).unwrap_err();
    assert_eq!(e.code(), Some("forbidden"), "{e}");
}

#[test]
fn write_prefixes_match_whole_name_segments() {
    let server = CaServer::start(3600, &[]);
    let pem = String::from_utf8(server.ca_pem.clone()).unwrap();
    let vm1 = server.add_principal(&["--name", "vm-1", "--write-prefix", "vek/rsa/vm-1"]);
    let w = server.client(Some(&vm1));
    w.put_cert("vek/rsa/vm-1", &pem).unwrap();
    w.put_cert("vek/rsa/vm-1/chain", &pem).unwrap();
    // vm-1's prefix is no licence to write vm-10's certificate.
    for name in ["vek/rsa/vm-10", "vek/rsa/vm-1x/a", "vek/rsa/vm-1.old"] {
        let e = w.put_cert(name, &pem).unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (Some(403), Some("forbidden")),
            "{name}: {e}"
        );
        assert!(named_file(&server, name).is_none(), "{name}");
    }
    // A prefix ending in '/' covers everything below it; "" covers every name.
    let dir = server.add_principal(&["--name", "vek", "--write-prefix", "vek/"]);
    server
        .client(Some(&dir))
        .put_cert("vek/rsa/vm-10", &pem)
        .unwrap();
    let e = server
        .client(Some(&dir))
        .put_cert("vekx/a", &pem)
        .unwrap_err();
    assert_eq!(e.code(), Some("forbidden"), "{e}");
    let all = server.add_principal(&["--name", "all", "--write-prefix", ""]);
    server
        .client(Some(&all))
        .put_cert("misc/anything", &pem)
        .unwrap();
    // Prefixes that are not name-shaped are refused when the principal is added.
    for bad in ["../x", "vek//", "vek/../aik", "/vek", "a b"] {
        let out = vtpm_ca(
            &server.store,
            &["acl", "add", "--name", "bad", "--write-prefix", bad],
        );
        assert!(!out.status.success(), "{bad}: {out:?}");
    }
    let list = vtpm_ca_ok(&server.store, &["acl", "list"]);
    assert!(!list.contains("bad\t"), "{list}");
}

/// The CLI and the server revoke at the same time, on the same store: every revocation
/// must be in `revocations.json` afterwards (the read-modify-write is locked across
/// processes, not only inside the server).
#[test]
fn concurrent_revocations_from_the_cli_and_the_api_are_all_kept() {
    const EACH: usize = 12;
    let server = CaServer::start(3600, &[]);
    let dir = server.tmp.path().join("certs");
    std::fs::create_dir_all(&dir).unwrap();
    let certs: Vec<(std::path::PathBuf, String, String)> = (0..2 * EACH)
        .map(|i| {
            let key = vtpm_ca::issue::generate_key().unwrap();
            let c = vtpm_ca::issue::root_cert(&key, &format!("stranger {i}"), 3600).unwrap();
            let p = dir.join(format!("{i}.pem"));
            let pem = String::from_utf8(c.to_pem().unwrap()).unwrap();
            std::fs::write(&p, &pem).unwrap();
            (p, pem, vtpm_ca::fingerprint(&c).unwrap())
        })
        .collect();
    let barrier = std::sync::Barrier::new(2 * EACH);
    std::thread::scope(|s| {
        for (i, (path, pem, _)) in certs.iter().enumerate() {
            let (server, barrier) = (&server, &barrier);
            s.spawn(move || {
                barrier.wait();
                if i % 2 == 0 {
                    let out = vtpm_ca_ok(
                        &server.store,
                        &[
                            "revoke",
                            "--cert",
                            path.to_str().unwrap(),
                            "--reason",
                            "cli",
                        ],
                    );
                    assert!(out.starts_with("revoked"), "{out}");
                } else {
                    let r = server.admin().revoke_cert(pem, Some("api")).unwrap();
                    assert!(r.newly_revoked);
                }
            });
        }
    });
    let revs: vtpm_ca::revocation::Revocations =
        serde_json::from_slice(&std::fs::read(server.store.join("revocations.json")).unwrap())
            .unwrap();
    let admin = server.admin();
    let mut lost = Vec::new();
    for (i, (_, _, fp)) in certs.iter().enumerate() {
        if revs.fingerprint(fp).is_none() || admin.status(fp).unwrap().status != Status::Revoked {
            lost.push(i);
        }
    }
    assert!(lost.is_empty(), "revocations lost: {lost:?}");
    assert_eq!(revs.fingerprints.len(), 2 * EACH);
}

#[test]
fn revocation_crl_and_status_over_https() {
    let server = CaServer::start(3600, &[]);
    let admin = server.admin();
    assert_eq!(admin.ca().unwrap().as_bytes(), &server.ca_pem[..]);

    // Two CA-issued certificates exist after init: the root and the TLS certificate.
    let tls = X509::from_pem(&std::fs::read(server.store.join("tls.pem")).unwrap()).unwrap();
    let fp = vtpm_ca::fingerprint(&tls).unwrap();
    assert_eq!(admin.status(&fp).unwrap().status, Status::Good);
    assert_eq!(
        admin.status(&"00".repeat(32)).unwrap().status,
        Status::Unknown
    );
    let e = admin.status("xyz").unwrap_err();
    assert_api_error(&e, 400, "bad_fingerprint");

    let empty = admin.crl().unwrap();
    let crl = openssl::x509::X509Crl::from_der(&empty).unwrap();
    assert!(crl.get_revoked().is_none());

    let serial = tls
        .serial_number()
        .to_bn()
        .unwrap()
        .to_hex_str()
        .unwrap()
        .to_string();
    let r = admin
        .revoke_serial(&serial.to_lowercase(), Some("superseded"))
        .unwrap();
    assert!(r.newly_revoked);
    assert_eq!(r.serial.as_deref(), Some(serial.as_str()));
    let st = admin.status(&fp).unwrap();
    assert_eq!(st.status, Status::Revoked);
    assert_eq!(st.reason.as_deref(), Some("superseded"));

    let der = admin.crl().unwrap();
    let text = crl_text(&der).unwrap();
    assert!(text.contains(&format!("Serial Number: {serial}")), "{text}");
    assert!(text.contains("Next Update"), "{text}");
    let crl = openssl::x509::X509Crl::from_der(&der).unwrap();
    let root = X509::from_pem(&server.ca_pem).unwrap();
    assert!(crl.verify(&root.public_key().unwrap()).unwrap());

    // The CLI's CRL is the same list.
    let out = server.tmp.path().join("crl.der");
    vtpm_ca_ok(&server.store, &["crl", "--out", out.to_str().unwrap()]);
    assert!(crl_text(&std::fs::read(&out).unwrap())
        .unwrap()
        .contains(&serial));

    let e = admin.revoke_serial("abcdef", None).unwrap_err();
    assert_api_error(&e, 404, "unknown_serial");
    let e = admin
        .revoke(&vtpm_ca::api::RevokeRequest::default())
        .unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
}

#[test]
fn errors_are_json_and_tls_is_the_cas() {
    let server = CaServer::start(3600, &[]);
    let c = server.client(None);
    let e = finish_unknown_session(&c);
    assert_api_error(&e, 404, "unknown_session");

    // A client trusting another root does not get through TLS.
    let other = tempfile::tempdir().unwrap();
    vtpm_ca_ok(&other.path().join("ca"), &["init"]);
    let other_root = std::fs::read(other.path().join("ca/ca.pem")).unwrap();
    let stranger = vtpm_ca::Client::new(&server.url, &other_root, None).unwrap();
    assert!(matches!(
        stranger.ca().unwrap_err(),
        vtpm_ca::ClientError::Transport { .. }
    ));
}

#[test]
fn init_refuses_an_existing_store_and_serve_stops_on_sigterm() {
    let mut server = CaServer::start(3600, &[]);
    let out = vtpm_ca(&server.store, &["init"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"),
        "{out:?}"
    );
    assert!(server.admin().ca().is_ok());
    let status = server.stop();
    assert!(status.success(), "{status:?}");
    // The store survives a restart.
    server.serve();
    assert_eq!(server.admin().ca().unwrap().as_bytes(), &server.ca_pem[..]);
}

#[test]
fn in_process_server_for_other_crates_tests() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let init = vtpm_ca::setup::init(&dir, &vtpm_ca::setup::InitOptions::default()).unwrap();
    let ca_pem = init.store.ca_pem().unwrap();
    let server = vtpm_ca::server::RunningServer::start(
        vtpm_ca::Ca::open(&dir).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let client =
        vtpm_ca::Client::new(&server.url(), ca_pem.as_bytes(), Some(init.admin_token)).unwrap();
    assert_eq!(client.ca().unwrap(), ca_pem);
    client.put_cert("misc/root", &ca_pem).unwrap();
    assert!(client.get_cert("misc/root").is_ok());
    server.stop().unwrap();
    assert!(client.ca().is_err());
}

/// Enrollment requests are rate-limited per client address: a flood of `enroll/start`
/// requests from one client is answered `429 rate_limited` (with Retry-After) after its
/// burst, cheaply, and the client recovers at the configured rate.
#[test]
fn a_flood_of_enrollment_requests_is_rate_limited() {
    let server = CaServer::start(3600, &[]);
    let c = server.client(None);
    let junk = vtpm_ca::api::EnrollStartRequest {
        kind: vtpm_ca::api::Kind::Vtpm,
        subject: "vm-1".into(),
        ek_cert_chain: vec!["not a certificate".into()],
        aik_public: String::new(),
    };
    let burst = vtpm_ca::limits::Limits::default().enroll_burst_per_client;
    let mut codes = Vec::new();
    for _ in 0..burst + 10 {
        codes.push(c.enroll_start(&junk).unwrap_err());
    }
    let bad = codes
        .iter()
        .filter(|e| e.code() == Some("bad_ek_certificate"))
        .count();
    let limited: Vec<_> = codes
        .iter()
        .filter(|e| e.code() == Some("rate_limited"))
        .collect();
    assert!(bad >= burst as usize, "{codes:?}");
    assert!(!limited.is_empty(), "{codes:?}");
    assert_api_error(limited[0], 429, "rate_limited");
    // Finishing is limited by the same bucket.
    let e = finish_unknown_session(&c);
    assert_api_error(&e, 429, "rate_limited");
    // Two requests a second come back.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(
        c.enroll_start(&junk).unwrap_err().code(),
        Some("bad_ek_certificate")
    );
    // Everything else is served as before.
    assert!(c.ca().is_ok());
}

/// One client may hold only so many connections: beyond its share the server closes new
/// ones at once (before any TLS), and serves it again once it closed some.
#[test]
fn one_client_cannot_hold_every_connection() {
    use std::io::Read;
    let server = CaServer::start(3600, &[]);
    let addr = server.url.trim_start_matches("https://").to_string();
    let per_client = vtpm_ca::limits::Limits::default().connections_per_client as usize;
    let mut held = Vec::new();
    for _ in 0..per_client {
        held.push(std::net::TcpStream::connect(&addr).unwrap());
    }
    // Give the server time to accept them all.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut extra = std::net::TcpStream::connect(&addr).unwrap();
    extra
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    match extra.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the connection over the limit was not closed: {other:?}"),
    }
    // A held one is still open (the server waits for its TLS handshake).
    held[0]
        .set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    let e = held[0].read(&mut buf).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{e}"
    );
    drop(held);
    let c = server.client(None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match c.ca() {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => panic!("not served again after closing: {e}"),
        }
    }
}

/// Enrolment tokens over the API: only an admin issues them.
#[test]
fn enrolment_tokens_are_issued_by_admins() {
    let server = CaServer::start(3600, &[]);
    let t = server
        .admin()
        .create_enroll_token("host-1", Some(600))
        .unwrap();
    assert_eq!(t.subject, "host-1");
    assert_eq!(t.token.len(), 64);
    let writer = server.add_principal(&["--name", "w", "--write-prefix", ""]);
    let e = server
        .client(Some(&writer))
        .create_enroll_token("host-1", None)
        .unwrap_err();
    assert_api_error(&e, 403, "forbidden");
    let e = server
        .client(None)
        .create_enroll_token("host-1", None)
        .unwrap_err();
    assert_api_error(&e, 401, "unauthenticated");
    let e = server
        .admin()
        .create_enroll_token("../x", None)
        .unwrap_err();
    assert_api_error(&e, 400, "bad_subject");
    let text = vtpm_ca_ok(&server.store, &["list"]);
    assert!(text.contains("aik/host/host-1\topen"), "{text}");
    assert!(!text.contains(&t.token), "{text}");
}

#[test]
fn readme_options_match_the_command_line() {
    let commands: &[&[&str]] = &[
        &[],
        &["init"],
        &["serve"],
        &["acl", "add"],
        &["acl", "list"],
        &["revoke"],
        &["crl"],
        &["add-ek-root"],
        &["release"],
        &["enroll-token"],
        &["list"],
    ];
    let bin = std::path::Path::new(common::BIN);
    testbed::crate_readme_drift(env!("CARGO_MANIFEST_DIR"), bin, commands).unwrap();
}
