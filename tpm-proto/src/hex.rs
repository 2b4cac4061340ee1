//! Hexadecimal with errors that say where a text is wrong, never what it holds (it may be a
//! key), over the `hex` crate.
//!
//! Kept for the crates that still call `tpm_proto::hex` (identity, vtpm-state); new code
//! uses `hex` directly. [`decode`] works on bytes, so text that is not ASCII is an error at
//! the offending byte, never a panic on a UTF-8 character boundary.

/// Why a text is not hexadecimal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    #[error("odd number of hex digits ({0})")]
    OddLength(usize),
    #[error("character {position} is not a hex digit")]
    NotHex {
        /// 1-based byte position in the text.
        position: usize,
    },
}

/// `bytes` as lower-case hex digits, two per byte.
pub fn encode(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// The bytes that `text` spells, two hex digits (either case) per byte and nothing else: no
/// prefix, separators or whitespace.
pub fn decode(text: &str) -> Result<Vec<u8>, HexError> {
    decode_bytes(text.as_bytes())
}

/// [`decode`] of text given as bytes (a file's contents, say), which need not be UTF-8.
pub fn decode_bytes(text: &[u8]) -> Result<Vec<u8>, HexError> {
    // The first stray byte is reported before the length: `hex`'s own error would name the
    // character itself.
    if let Some(at) = text.iter().position(|b| !b.is_ascii_hexdigit()) {
        return Err(HexError::NotHex { position: at + 1 });
    }
    hex::decode(text).map_err(|_| HexError::OddLength(text.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        let text = encode(&all);
        assert_eq!(text.len(), 512);
        assert!(text.starts_with("000102") && text.ends_with("fdfeff"));
        assert_eq!(decode(&text).unwrap(), all);
        assert_eq!(decode(&text.to_uppercase()).unwrap(), all);
        assert_eq!(decode("").unwrap(), Vec::<u8>::new());
        assert_eq!(encode(&[]), "");
    }

    #[test]
    fn refuses_what_is_not_hex_without_panicking() {
        assert_eq!(decode("abc"), Err(HexError::OddLength(3)));
        assert_eq!(decode("0g"), Err(HexError::NotHex { position: 2 }));
        assert_eq!(decode("0x00"), Err(HexError::NotHex { position: 2 }));
        assert_eq!(decode("00 "), Err(HexError::NotHex { position: 3 }));
        // Multi-byte characters: reported at their first byte, never sliced.
        assert_eq!(decode("é0"), Err(HexError::NotHex { position: 1 }));
        assert_eq!(decode("0é"), Err(HexError::NotHex { position: 2 }));
        assert_eq!(decode("00€"), Err(HexError::NotHex { position: 3 }));
        assert_eq!(
            decode_bytes(&[b'a', 0xff]),
            Err(HexError::NotHex { position: 2 })
        );
        // The message says where, not what.
        assert_eq!(
            decode("s3cr3t").unwrap_err().to_string(),
            "character 1 is not a hex digit"
        );
    }
}
