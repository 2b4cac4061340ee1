//! The migration controller as a real process over HTTPS, with two hosts (simulated host
//! TPMs, swtpm) enrolled with the real local CA: every step of a migration, every refusal
//! with its code, and the controller killed (SIGKILL) right after each step is stored, then
//! restarted: each migration still ends committed or aborted.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use migration::api::{attestation_data, AttestRequest, Role, State, QUOTED_PCRS};
use migration::client::{Auth, Client, ClientError};
use migration::MigrationId;
use openssl::x509::X509;
use testbed::{ChainSetup, ControllerProcess, HostRef};
use vtpm_host::HostDir;

const MIGRATE: &str = env!("CARGO_BIN_EXE_vtpm-migrate");

fn bin_dir() -> &'static Path {
    Path::new(MIGRATE).parent().unwrap()
}

fn random_instance() -> String {
    let mut b = [0u8; 16];
    openssl::rand::rand_bytes(&mut b).unwrap();
    hex::encode(b)
}

struct Bed {
    _tmp: tempfile::TempDir,
    chain: ChainSetup,
    b: testbed::HostSetup,
    ctl: ControllerProcess,
}

impl Bed {
    fn start() -> Bed {
        let tmp = tempfile::tempdir().unwrap();
        let chain = ChainSetup::start(bin_dir(), &tmp.path().join("a"), "host-a").unwrap();
        let b = chain.add_host(&tmp.path().join("b"), "host-b").unwrap();
        let ctl = ControllerProcess::start(
            Path::new(MIGRATE),
            &tmp.path().join("controller"),
            &chain.ca.url,
            &chain.ca.ca_cert,
            &[],
        )
        .unwrap();
        Bed {
            _tmp: tmp,
            chain,
            b,
            ctl,
        }
    }

    fn a(&self) -> HostRef<'_> {
        self.chain.first_host()
    }

    fn host_client(&self, host: HostRef<'_>) -> Client {
        let ctl = &self.ctl;
        vtpm_migrate::host::client(
            &ctl.url,
            &std::fs::read(&ctl.cert).unwrap(),
            &HostDir::open(host.host_dir).unwrap(),
            &vtpm_migrate::cli::tpm_host_key(&host.host_tpm.tcti()),
        )
        .unwrap()
    }

    fn operator(&self) -> Client {
        let ctl = &self.ctl;
        Client::new(
            &ctl.url,
            &std::fs::read(&ctl.cert).unwrap(),
            Auth::Operator(ctl.token().unwrap()),
        )
        .unwrap()
    }

    fn anonymous(&self) -> Client {
        let ctl = &self.ctl;
        Client::new(&ctl.url, &std::fs::read(&ctl.cert).unwrap(), Auth::None).unwrap()
    }

    fn attest(&self, host: HostRef<'_>, id: &str, role: &str) -> Result<String, String> {
        self.ctl
            .attest(host.host_dir, &host.host_tpm.tcti(), id, role)
    }

    fn cli(&self, cmd: &str, args: &[&str]) -> Result<String, String> {
        self.ctl.operator(cmd, args)
    }

    fn register(&self, instance: &str) {
        self.ctl
            .operator("register", &["--instance", instance, "--owner", "host-a"])
            .unwrap();
    }

    fn start_migration(&self, instance: &str) -> Result<String, String> {
        self.ctl
            .operator(
                "start",
                &[
                    "--instance",
                    instance,
                    "--vm",
                    "vm-1",
                    "--source",
                    "host-a",
                    "--destination",
                    "host-b",
                ],
            )
            .map(|out| out.trim().to_owned())
    }
}

fn code(r: Result<impl std::fmt::Debug, ClientError>) -> String {
    match r {
        Err(e) => e.code().unwrap_or("transport").to_owned(),
        Ok(v) => panic!("expected a refusal, got {v:?}"),
    }
}

#[test]
fn a_migration_step_by_step_and_every_refusal_named() {
    let bed = Bed::start();
    let instance = random_instance();
    bed.register(&instance);
    let err = bed
        .cli("register", &["--instance", &instance, "--owner", "host-b"])
        .unwrap_err();
    assert!(err.contains("instance_exists"), "{err}");
    let unknown = bed.start_migration(&random_instance()).unwrap_err();
    assert!(unknown.contains("unknown_instance"), "{unknown}");
    let id = bed.start_migration(&instance).unwrap();
    // The same request again is the same migration; another one is refused.
    assert_eq!(bed.start_migration(&instance).unwrap(), id);
    let busy = bed
        .cli(
            "start",
            &[
                "--instance",
                &instance,
                "--vm",
                "vm-1",
                "--source",
                "host-a",
                "--destination",
                "host-x",
            ],
        )
        .unwrap_err();
    assert!(busy.contains("migration_in_progress"), "{busy}");
    let mid: MigrationId = id.parse().unwrap();

    let a = bed.host_client(bed.a());
    let b = bed.host_client(bed.b.as_ref());
    // No ticket before both hosts attested.
    assert_eq!(code(a.ticket(&instance)), "no_ticket");

    // A host attesting in the other's role; a quote over another nonce.
    let wrong = bed.attest(bed.a(), &id, "destination").unwrap_err();
    assert!(wrong.contains("forbidden"), "{wrong}");
    let dir = HostDir::open(bed.a().host_dir).unwrap();
    let mut tpm = host_tpm::HostTpm::connect(&bed.a().host_tpm.tcti()).unwrap();
    let key = dir.migration_public().unwrap();
    let stale = attestation_data(&mid, Role::Source, &[0u8; 32], &key);
    let quote = tpm
        .quote(&dir.aik().unwrap(), &QUOTED_PCRS, &stale)
        .unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut req = AttestRequest {
        role: Role::Source,
        aik_cert: String::from_utf8(dir.host_aik_cert().unwrap().to_pem().unwrap()).unwrap(),
        attest: b64.encode(&quote.attest),
        signature: b64.encode(&quote.signature),
        migration_key: hex::encode(&key),
    };
    assert_eq!(code(a.attest(&mid, &req)), "quote_invalid");
    // A genuine quote with a flipped byte.
    let fresh = a.migration(&mid).unwrap();
    let data = attestation_data(
        &mid,
        Role::Source,
        &hex::decode(&fresh.source_nonce).unwrap(),
        &key,
    );
    let quote = tpm.quote(&dir.aik().unwrap(), &QUOTED_PCRS, &data).unwrap();
    let mut flipped = quote.attest.clone();
    let at = flipped.len() - 3;
    flipped[at] ^= 1;
    req.attest = b64.encode(&flipped);
    assert_eq!(code(a.attest(&mid, &req)), "quote_invalid");
    drop(tpm);
    assert_eq!(a.migration(&mid).unwrap().state, State::Requested);

    bed.attest(bed.b.as_ref(), &id, "destination").unwrap();
    let out = bed.attest(bed.a(), &id, "source").unwrap();
    assert!(out.contains("now authorised"), "{out}");
    // Attesting again (an answer lost) changes nothing.
    bed.attest(bed.a(), &id, "source").unwrap();

    // Only the source gets the ticket; it names the destination's attested migration key.
    assert_eq!(code(b.ticket(&instance)), "forbidden");
    let t = a.ticket(&instance).unwrap();
    assert_eq!(t.migration, id);
    let ticket = migration::ticket::decode(&b64.decode(&t.ticket).unwrap()).unwrap();
    let controller = X509::from_pem(&std::fs::read(&bed.ctl.cert).unwrap()).unwrap();
    ticket.verify(&controller.public_key().unwrap()).unwrap();
    let b_key = HostDir::open(bed.b.host_dir.as_path())
        .unwrap()
        .migration_public()
        .unwrap();
    assert_eq!(ticket.ticket.destination_key.to_vec(), b_key);
    assert_eq!(
        (
            ticket.ticket.source.as_str(),
            ticket.ticket.destination.as_str()
        ),
        ("host-a", "host-b")
    );

    let digest = [7u8; 32];
    assert_eq!(code(b.sealed(&mid, &digest)), "forbidden");
    a.sealed(&mid, &digest).unwrap();
    a.sealed(&mid, &digest).unwrap();
    assert_eq!(code(a.sealed(&mid, &[8; 32])), "wrong_state");
    assert_eq!(code(b.claim(&mid, &[8; 32], &[1; 16])), "package_mismatch");
    assert_eq!(code(a.claim(&mid, &digest, &[1; 16])), "forbidden");
    b.claim(&mid, &digest, &[1; 16]).unwrap();
    b.claim(&mid, &digest, &[1; 16]).unwrap();
    assert_eq!(code(b.claim(&mid, &digest, &[2; 16])), "already_claimed");
    assert_eq!(code(bed.operator().commit(&mid)), "wrong_state");
    // Nobody is authenticated without credentials.
    assert_eq!(code(bed.anonymous().migration(&mid)), "unauthenticated");

    let done = b.imported(&mid).unwrap();
    assert_eq!(done.state, State::Committed);
    let owner = bed.operator().instance(&instance).unwrap();
    assert_eq!((owner.owner.as_str(), owner.epoch), ("host-b", 1));
    assert_eq!(
        code(bed.operator().abort(&mid, "too late")),
        "already_committed"
    );
    assert_eq!(code(b.source_deleted(&mid)), "forbidden");
    assert_eq!(a.source_deleted(&mid).unwrap().state, State::SourceDeleted);
    let steps: Vec<String> = bed
        .operator()
        .migration(&mid)
        .unwrap()
        .steps
        .into_iter()
        .map(|s| s.step)
        .collect();
    assert_eq!(steps, COMPLETED_STEPS);
    // The vTPM is host-b's now: host-a cannot move it again.
    let again = bed.start_migration(&instance).unwrap_err();
    assert!(again.contains("not_owner"), "{again}");
}

/// The step log of a migration that went all the way, in order.
const COMPLETED_STEPS: [&str; 9] = [
    "requested",
    "destination_attested",
    "source_attested",
    "authorised",
    "sealed",
    "claimed",
    "imported",
    "committed",
    "source_deleted",
];

/// Runs `call`; if the controller died (the crash hook) it is restarted without the hook
/// and the same call repeated: every step is idempotent for the party that made it.
fn through_crash<T>(
    ctl: &ControllerProcess,
    crashed: &mut bool,
    mut call: impl FnMut() -> Result<T, String>,
) -> T {
    let first = call();
    let died = match &first {
        Ok(_) => ctl.exited().is_some(),
        Err(e) => {
            let died = ctl.wait_exit(Duration::from_secs(10)).is_some();
            assert!(died, "refused without a crash: {e}");
            true
        }
    };
    if !died {
        return first.unwrap_or_else(|_| unreachable!());
    }
    *crashed = true;
    ctl.serve(&[]).unwrap();
    match first {
        Ok(v) => v,
        Err(_) => call().unwrap_or_else(|e| panic!("after the restart: {e}\n{}", ctl.log_text())),
    }
}

#[test]
fn the_controller_killed_after_every_step_recovers_each_migration() {
    let bed = Bed::start();
    let steps = COMPLETED_STEPS.into_iter().chain(["aborted"]);
    let (a, b) = (bed.host_client(bed.a()), bed.host_client(bed.b.as_ref()));
    let s = |r: Result<migration::api::MigrationView, ClientError>| r.map_err(|e| e.to_string());
    for crash in steps {
        let instance = random_instance();
        bed.register(&instance);
        {
            let ctl = &bed.ctl;
            ctl.kill();
            ctl.serve(&[("VTPM_MIGRATE_CRASH_AFTER", crash)]).unwrap();
        }
        let mut crashed = false;
        let c = &bed.ctl;
        let id = through_crash(c, &mut crashed, || bed.start_migration(&instance));
        let mid: MigrationId = id.parse().unwrap();
        through_crash(c, &mut crashed, || {
            bed.attest(bed.b.as_ref(), &id, "destination")
        });
        through_crash(c, &mut crashed, || bed.attest(bed.a(), &id, "source"));
        through_crash(c, &mut crashed, || {
            a.ticket(&instance).map_err(|e| e.to_string())
        });
        let digest = [3u8; 32];
        through_crash(c, &mut crashed, || s(a.sealed(&mid, &digest)));
        let final_state = if crash == "aborted" {
            // The operator gives up on this one after the package was released.
            through_crash(c, &mut crashed, || s(bed.operator().abort(&mid, "test"))).state
        } else {
            through_crash(c, &mut crashed, || s(b.claim(&mid, &digest, &[4; 16])));
            through_crash(c, &mut crashed, || s(b.imported(&mid)));
            through_crash(c, &mut crashed, || s(a.source_deleted(&mid))).state
        };
        assert!(crashed, "the controller never crashed at {crash}");
        let owner = bed.operator().instance(&instance).unwrap();
        if crash == "aborted" {
            assert_eq!(final_state, State::Aborted);
            assert_eq!(
                (owner.owner.as_str(), owner.epoch),
                ("host-a", 0),
                "at {crash}"
            );
        } else {
            assert_eq!(final_state, State::SourceDeleted, "at {crash}");
            assert_eq!(
                (owner.owner.as_str(), owner.epoch),
                ("host-b", 1),
                "at {crash}"
            );
        }
        assert!(
            bed.operator().list(true).unwrap().is_empty(),
            "a migration is left unfinished after a crash at {crash}"
        );
    }

    // Killed right after the import was stored, and nobody asks again: the restarted
    // controller commits it by itself.
    let instance = random_instance();
    bed.register(&instance);
    let id = bed.start_migration(&instance).unwrap();
    let mid: MigrationId = id.parse().unwrap();
    bed.attest(bed.b.as_ref(), &id, "destination").unwrap();
    bed.attest(bed.a(), &id, "source").unwrap();
    a.ticket(&instance).unwrap();
    a.sealed(&mid, &[5; 32]).unwrap();
    b.claim(&mid, &[5; 32], &[6; 16]).unwrap();
    {
        let ctl = &bed.ctl;
        ctl.kill();
        ctl.serve(&[("VTPM_MIGRATE_CRASH_AFTER", "imported")])
            .unwrap();
    }
    assert!(b.imported(&mid).is_err());
    assert!(bed.ctl.wait_exit(Duration::from_secs(10)).is_some());
    bed.ctl.serve(&[]).unwrap();
    assert_eq!(
        bed.operator().migration(&mid).unwrap().state,
        State::Committed
    );
}

#[test]
fn readme_options_match_the_command_line() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let commands: &[&[&str]] = &[
        &[],
        &["init"],
        &["serve"],
        &["register"],
        &["start"],
        &["status"],
        &["list"],
        &["abort"],
        &["commit"],
        &["attest"],
        &["export"],
        &["import"],
        &["settle"],
    ];
    testbed::readme_drift(&readme, &[(Path::new(MIGRATE), commands)]).unwrap();
}
