//! The instance key record (`instance.key`, `vtpm_state::keys::HostKey::unwrap`) with a host
//! key file, and the host-TPM sealed blobs it may carry (`host_tpm::SealedBlob`,
//! `ObjectBlob`): whoever can write the state directory chooses these bytes. No panic; a
//! record that opens under the wrong host key is impossible.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vtpm_state::keys::HostKey;

/// The host key every seed record is wrapped under (make_seeds uses the same), in a file of a
/// private temporary directory made once per process.
pub const HOST_KEY: [u8; 32] = [0x42; 32];

fn host_key() -> &'static (tempfile::TempDir, HostKey) {
    static KEY: OnceLock<(tempfile::TempDir, HostKey)> = OnceLock::new();
    KEY.get_or_init(|| {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("host.key");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("host key file");
        std::io::Write::write_all(&mut f, &HOST_KEY).expect("host key");
        (dir, HostKey::File(path))
    })
}

fuzz_target!(|data: &[u8]| {
    let (_, host) = host_key();
    if let Ok((id, key)) = host.unwrap(Path::new("instance.key"), data) {
        // Only a record this host key wrapped opens: wrapping the same key again under the
        // same id gives a record that opens to the same key.
        let again = host
            .wrap(&id, &key, Path::new("instance.key"))
            .expect("wrap");
        let (id2, key2) = host
            .unwrap(Path::new("instance.key"), &again)
            .expect("unwrap");
        assert_eq!(id, id2);
        assert_eq!(key.bytes(), key2.bytes());
    }
    let _ = host_tpm::SealedBlob::from_bytes(data);
    let _ = host_tpm::ObjectBlob::from_bytes(data);
});
