//! The migration snapshot decoder (`migration::snapshot::decode`) and the DEVICE_STATE load
//! behind it: no panic; a snapshot that decodes is canonical (encoding the result gives the
//! same bytes) and is what the engine imports; one that does not leaves the engine untouched.
//! The sealed migration package (another helper's, being written) gets its own target when it
//! lands (docs/FUZZING.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use migration::snapshot::{decode, encode};
use vtpm_fuzz::{EngineCase, MockEngine};

fuzz_target!(|data: &[u8]| {
    let mut engine = MockEngine::new(EngineCase {
        fail: false,
        resp_len: 10,
    });
    let loaded = migration::load(&mut engine, data);
    match decode(data) {
        Ok(state) => {
            assert_eq!(&encode(&state)[..], data, "snapshot not canonical");
            assert!(loaded.is_ok());
            assert_eq!(engine.imported.as_ref(), Some(&state));
        }
        Err(_) => {
            assert!(loaded.is_err());
            assert!(
                engine.imported.is_none(),
                "a refused snapshot reached the engine"
            );
        }
    }
});
