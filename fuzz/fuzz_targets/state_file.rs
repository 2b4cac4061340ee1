//! The state-file format (`vtpm_state::format`): the clear header of any bytes, and the
//! authenticated contents of a file sealed under a key the target knows, so the contents
//! parser is reached with any plaintext; and the generation record file (one or two copies).
//! No panic; contents that parse survive an encode/decode round trip; a record file is
//! accepted only if one of its copies is, and then names the newest generation of those.
//!
//! Input: a mode byte, then 0: a state file as found on disk; 1: 16 bytes of instance id,
//! 8 of generation, then the plaintext to seal; 2: a generation record file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vtpm_state::format::{
    decode, decode_anchor, decode_anchor_file, encode, parse_header, ANCHOR_LEN, FORMAT_VERSION,
    HEADER_LEN, STATE_MAGIC,
};
use vtpm_state::keys::{InstanceId, SecretKey, SEAL_OVERHEAD};

/// The key every sealed case is sealed under (make_seeds uses the same).
pub const KEY: [u8; 32] = [7u8; 32];

fn sealed(key: &SecretKey, instance: &[u8; 16], generation: u64, plaintext: &[u8]) -> Vec<u8> {
    let payload_len = (plaintext.len() + SEAL_OVERHEAD) as u32;
    let mut file = Vec::with_capacity(HEADER_LEN + payload_len as usize);
    file.extend_from_slice(STATE_MAGIC);
    file.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    file.extend_from_slice(&0u16.to_be_bytes());
    file.extend_from_slice(instance);
    file.extend_from_slice(&generation.to_be_bytes());
    file.extend_from_slice(&payload_len.to_be_bytes());
    let tag = key.seal(&file, plaintext).expect("seal");
    file.extend_from_slice(&tag);
    file
}

fuzz_target!(|data: &[u8]| {
    let key = SecretKey::from_bytes(KEY);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let header = parse_header(rest);
            let decoded = decode(&key, rest);
            assert!(header.is_ok() || decoded.is_err());
        }
        1 if rest.len() >= 24 => {
            let instance: [u8; 16] = rest[..16].try_into().expect("16 bytes");
            let generation = u64::from_be_bytes(rest[16..24].try_into().expect("8 bytes"));
            let file = sealed(&key, &instance, generation, &rest[24..]);
            if let Ok((header, contents)) = decode(&key, &file) {
                assert_eq!(header.generation, generation);
                let again = encode(
                    &key,
                    &InstanceId(instance),
                    generation,
                    &contents.engine,
                    &contents.blobs,
                )
                .expect("contents that parsed encode again");
                let (_, back) = decode(&key, &again).expect("round trip");
                assert_eq!(back, contents);
            }
        }
        _ => {
            let copies: Vec<_> = rest
                .chunks(ANCHOR_LEN)
                .map(|copy| decode_anchor(&key, copy).ok())
                .collect();
            match decode_anchor_file(&key, rest) {
                Ok((_, generation)) => {
                    let newest = copies.iter().flatten().map(|(_, g)| *g).max();
                    assert_eq!(newest, Some(generation));
                }
                Err(_) => assert!(
                    copies.iter().all(Option::is_none)
                        || (rest.len() != ANCHOR_LEN && rest.len() != 2 * ANCHOR_LEN)
                        || {
                            let ids: Vec<_> = copies.iter().flatten().map(|(i, _)| *i).collect();
                            ids.windows(2).any(|w| w[0] != w[1])
                        }
                ),
            }
        }
    }
});
