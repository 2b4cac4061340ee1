//! The libtpms engine on the encrypted state directory: durability during the command, clean
//! save and resume, power cycle, export and import. libtpms is a process singleton, so
//! everything runs in one test, sequentially.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coprocessor::libtpms::{LibtpmsEngine, VOLATILE_BLOB};
use coprocessor::{Coprocessor, EngineState, Error};
use tpm_proto::commands as c;
use vtpm_state::keys::generate_host_key_file;
use vtpm_state::{EncryptedStore, StateError};

fn run(e: &mut LibtpmsEngine, cmd: &[u8]) -> Vec<u8> {
    let mut cmd = cmd.to_vec();
    e.execute(&mut cmd).unwrap().to_vec()
}

#[test]
fn engine_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let host_key = generate_host_key_file(&dir.path().join("host.key")).unwrap();
    let state = dir.path().join("vm");
    let store =
        |d: &std::path::Path| Box::new(EncryptedStore::open(d, &host_key, "libtpms").unwrap().0);
    let mut e = LibtpmsEngine::start(store(&state)).unwrap();
    assert!(matches!(
        LibtpmsEngine::start(store(&dir.path().join("other"))),
        Err(Error::EngineInUse)
    ));
    assert_eq!(
        tpm_proto::response_code(&run(&mut e, &c::startup(c::TPM_SU_CLEAR))).unwrap(),
        0
    );
    let rnd = c::parse_get_random(&run(&mut e, &c::get_random(32))).unwrap();
    assert_eq!(rnd.len(), 32);
    // NV written now is durable before the response.
    let idx = 0x0150_0010;
    assert_eq!(
        tpm_proto::response_code(&run(
            &mut e,
            &c::nv_define_space(idx, 8, c::NV_ORDINARY_ATTRS)
        ))
        .unwrap(),
        0
    );
    assert_eq!(
        tpm_proto::response_code(&run(&mut e, &c::nv_write(idx, 0, b"durable!"))).unwrap(),
        0
    );
    // (The engine holds the directory lock; the clear header shows the writes.)
    let generation = EncryptedStore::inspect(&state).unwrap().unwrap().generation;
    assert!(
        generation > 1,
        "permanent state written during the commands"
    );
    // A durable command costs one state write and one sync (the slot's fdatasync): no
    // directory sync, no synced generation record.
    let (writes, syncs) = (
        vtpm_state::encrypted::durable_writes_total(),
        durable_fs::syncs_total(),
    );
    // (Different data each time, the last as before: libtpms writes nothing for an NV
    // write that changes nothing.)
    for round in 0..5u8 {
        let data = if round == 4 {
            *b"durable!"
        } else {
            [b'0' + round; 8]
        };
        assert_eq!(
            tpm_proto::response_code(&run(&mut e, &c::nv_write(idx, 0, &data))).unwrap(),
            0
        );
    }
    assert_eq!(vtpm_state::encrypted::durable_writes_total() - writes, 5);
    assert_eq!(durable_fs::syncs_total() - syncs, 5);
    let generation = EncryptedStore::inspect(&state).unwrap().unwrap().generation;

    // Clean save + restart resumes without a new Startup.
    e.save().unwrap();
    drop(e);
    let s = store(&state);
    assert!(s.load(VOLATILE_BLOB).unwrap().is_some());
    assert!(s.generation() > generation);
    let mut e = LibtpmsEngine::start(s).unwrap();
    assert!(
        matches!(
            EncryptedStore::verify(&state, &host_key),
            Err(StateError::Locked { .. })
        ),
        "the running engine's store holds the directory lock"
    );
    let data = c::parse_nv_read(&run(&mut e, &c::nv_read(idx, 8, 0))).unwrap();
    assert_eq!(data, b"durable!");

    // Power cycle: Startup is required again and NV survives.
    e.power_cycle().unwrap();
    assert_eq!(
        tpm_proto::response_code(&run(&mut e, &c::get_random(8))).unwrap(),
        tpm_proto::rc::INITIALIZE
    );
    run(&mut e, &c::startup(c::TPM_SU_CLEAR));
    let data = c::parse_nv_read(&run(&mut e, &c::nv_read(idx, 8, 0))).unwrap();
    assert_eq!(data, b"durable!");

    // Export, change the TPM, import: it is back where the export was taken, running.
    run(&mut e, &c::pcr_extend_sha256(16, &[1; 32]));
    let pcr = c::parse_pcr_read_single(&run(&mut e, &c::pcr_read_sha256(16))).unwrap();
    let snap = e.export_state().unwrap();
    run(&mut e, &c::pcr_extend_sha256(16, &[2; 32]));
    run(&mut e, &c::nv_write(idx, 0, b"changed!"));
    e.import_state(&snap).unwrap();
    assert_eq!(
        c::parse_pcr_read_single(&run(&mut e, &c::pcr_read_sha256(16))).unwrap(),
        pcr
    );
    assert_eq!(
        c::parse_nv_read(&run(&mut e, &c::nv_read(idx, 8, 0))).unwrap(),
        b"durable!"
    );

    // A corrupt snapshot is refused and the running instance survives.
    let bad = EngineState {
        permanent: vec![0xde; 64],
        volatile: vec![0xad; 64],
    };
    assert!(e.import_state(&bad).is_err());
    assert_eq!(
        c::parse_nv_read(&run(&mut e, &c::nv_read(idx, 8, 0))).unwrap(),
        b"durable!"
    );
}
