//! The swtpm state-file parser (`vtpm-state import-swtpm` reads files an operator points it
//! at): `parse_state_file` for both blob kinds and `parse_stateblob_answer`. No panic; a plain
//! result is a libtpms blob of the kind asked for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vtpm_state::swtpm_import::format::{
    has_libtpms_magic, parse_state_file, parse_stateblob_answer, Contents,
};
use vtpm_state::swtpm_import::BlobKind;

fuzz_target!(|data: &[u8]| {
    for kind in [BlobKind::Permanent, BlobKind::Volatile] {
        if let Ok(Contents::Plain(blob)) = parse_state_file(data, kind) {
            assert!(has_libtpms_magic(&blob, kind));
            assert!(blob.len() <= data.len());
        }
        if let Ok(blob) = parse_stateblob_answer(data, kind) {
            assert!(blob.len() <= data.len());
        }
    }
});
