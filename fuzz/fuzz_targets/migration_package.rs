//! The sealed migration package (`migration::package::decode`, `migration::seal::verify`,
//! ADR 0010) against a hostile sender: the package a destination reads from QEMU's
//! DEVICE_STATE pipe or from an offline file is the attacker's.
//!
//! A real package is sealed once per process (a CA, a controller, a source host with its
//! coprocessor key and chain, a destination with its migration key, all made here with
//! testbed's throwaway certificates). The
//! first input byte chooses what is checked: even, the rest is a package as it is; odd, the
//! rest edits the real package (3 bytes per edit: a big-endian position and a byte to XOR
//! in, or with 0xFF as the XOR value, a cut at that position), so the fuzzer starts from a
//! package that passes every check and breaks it one field at a time. Checked:
//!
//! - no panic, whatever the bytes;
//! - a package that decodes is canonical: encoding what was decoded gives the same bytes;
//! - a plain snapshot (`VTPMSNP1`) is refused as one;
//! - a package that verifies has every signed byte of the real one (header, ticket,
//!   ciphertext, chain): a change anywhere is refused (only the signature's own encoding may
//!   differ, which ECDSA allows) and it decrypts to the sealed state.
#![no_main]

use std::sync::OnceLock;

use coprocessor::EngineState;
use identity::{CoprocessorKey, MigrationKey};
use libfuzzer_sys::fuzz_target;
use migration::package::{self, PackageError};
use migration::seal::{self, Recipient, Trust};
use migration::ticket::{self, MigrationId, Ticket};
use testbed::certs::{coprocessor_chain, self_signed};
use vtpm_state::keys::InstanceId;

/// The verifier's clock: inside the ticket's validity.
const NOW: u64 = 1_000;

struct World {
    _dir: tempfile::TempDir,
    trust: Trust,
    me: Recipient,
    key: MigrationKey,
    state: EngineState,
    package: Vec<u8>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let host_key =
            vtpm_state::keys::generate_host_key_file(&dir.path().join("host.key")).unwrap();
        let (ca_key, ca_root) = self_signed("fuzz root");
        let (controller_key, controller) = self_signed("controller");
        let source_key = CoprocessorKey::create(&dir.path().join("a"), &host_key).unwrap();
        let chain = coprocessor_chain("host-a", &ca_key, &ca_root, &source_key.public_key());
        let key = MigrationKey::create(&dir.path().join("b"), &host_key).unwrap();
        let point = key.public_point().unwrap();
        let t = Ticket {
            migration: MigrationId([0x11; 16]),
            instance: InstanceId([0x22; 16]),
            vm: "vm-1".into(),
            source: "host-a".into(),
            destination: "host-b".into(),
            destination_key: point.clone().try_into().unwrap(),
            epoch: 3,
            issued_at: NOW - 10,
            expires_at: NOW + 600,
        };
        let signed = ticket::sign(&t, &controller_key).unwrap();
        let state = EngineState {
            permanent: (0..512u32).map(|i| (i * 7) as u8).collect(),
            volatile: b"volatile state".to_vec(),
        };
        let package = seal::seal(&signed, &state, &source_key, &chain).unwrap();
        let w = World {
            _dir: dir,
            trust: Trust {
                ca_root,
                controller,
            },
            me: Recipient {
                host_id: "host-b".into(),
                migration_key: point,
            },
            key,
            state,
            package,
        };
        // The starting point passes every check: each edit is then refused by one of them.
        assert!(seal::verify(&w.package, &w.trust, &w.me, NOW, None).is_ok());
        w
    })
}

/// The real package with `edits` applied.
fn edited(real: &[u8], edits: &[u8]) -> Vec<u8> {
    let mut out = real.to_vec();
    for e in edits.chunks_exact(3) {
        if out.is_empty() {
            break;
        }
        let at = usize::from(u16::from_be_bytes([e[0], e[1]])) % out.len();
        match e[2] {
            0xFF => out.truncate(at),
            x => out[at] ^= x,
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let w = world();
    let bytes = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        edited(&w.package, rest)
    };
    match package::decode(&bytes) {
        Ok(p) => {
            let header = p.header.encode().unwrap();
            assert_eq!(header, p.header_bytes, "header not canonical");
            let signed = package::signed_part(&header, &p.ciphertext, &p.chain).unwrap();
            assert_eq!(signed, p.signed, "signed part not canonical");
            let again = package::finish(&signed, &p.signature).unwrap();
            assert_eq!(again, bytes, "package not canonical");
        }
        Err(e) => {
            if bytes.starts_with(migration::snapshot::MAGIC) {
                assert_eq!(e, PackageError::PlainSnapshot);
            }
        }
    }
    if let Ok(v) = seal::verify(&bytes, &w.trust, &w.me, NOW, None) {
        let real = package::decode(&w.package).unwrap();
        assert_eq!(v.package.signed, real.signed, "a changed package verified");
        let state = seal::open(&v, &w.key).expect("a verified package opens");
        assert_eq!(state, w.state);
    }
});
