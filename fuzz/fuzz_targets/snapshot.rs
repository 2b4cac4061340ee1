//! The snapshot decoder (`migration::snapshot::decode`): the serialised instance that is the
//! plaintext inside a sealed package, and nothing else (ADR 0010: no plain snapshot is
//! loaded from a wire or a disk any more). No panic; a snapshot that decodes is canonical
//! (encoding the result gives the same bytes); and whatever a plain snapshot holds, the
//! package decoder refuses it by its own name. The sealed package itself is
//! `migration_package`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use migration::package::{self, PackageError};
use migration::snapshot::{decode, encode, MAGIC};

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = decode(data) {
        assert_eq!(&encode(&state)[..], data, "snapshot not canonical");
    }
    if data.starts_with(MAGIC) {
        assert_eq!(
            package::decode(data).map(|_| ()),
            Err(PackageError::PlainSnapshot),
            "a plain snapshot was not refused as one"
        );
    }
});
