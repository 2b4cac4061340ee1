//! The secret that opens swtpm's encrypted state: reading and checking the operator's key or
//! passphrase file, and how it is handed to swtpm. Every buffer that holds key material wipes
//! itself when dropped, and no error quotes it.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::key::{KeyKind, SwtpmCipher, SwtpmKdf, SwtpmKey, SwtpmKeyFormat, SwtpmKeySource};

/// Largest key file read: a 256-bit hex key with a `0x` prefix and generous whitespace.
const MAX_KEY_FILE: u64 = 4096;
/// Largest passphrase passed on: swtpm reads its passphrase until a read comes back short, so
/// it must reach the pipe in one write, which POSIX makes atomic up to `PIPE_BUF` (4096 on
/// Linux) bytes.
pub const MAX_PASSPHRASE: usize = 4096;

/// Why a key or passphrase file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{kind} {}: {source}", file.display())]
    KeyRead {
        file: PathBuf,
        kind: KeyKind,
        #[source]
        source: io::Error,
    },
    #[error(
        "passphrase file {} has more than {max} bytes; swtpm is given at most that many",
        file.display()
    )]
    PassphraseTooLong { file: PathBuf, max: usize },
    #[error("key file {}: {source}", file.display())]
    KeyFormat {
        file: PathBuf,
        #[source]
        source: HexKeyError,
    },
    #[error(
        "key file {}: holds a {actual}-byte {format} key, {mode} needs {expected} bytes",
        file.display()
    )]
    KeyLength {
        file: PathBuf,
        format: SwtpmKeyFormat,
        mode: SwtpmCipher,
        expected: usize,
        actual: usize,
    },
}

/// Why a hex key file is not in swtpm's syntax. Says where, never what (it is a key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HexKeyError {
    #[error("more than one word: only hex digits and a trailing newline are allowed")]
    MoreThanOneWord,
    #[error("no hex digits")]
    NoDigits,
    #[error("character {position} is not a hex digit")]
    NotHex {
        /// 1-based position among the digits (after a `0x` prefix).
        position: usize,
    },
    #[error("odd number of hex digits ({0})")]
    OddLength(usize),
}

/// What swtpm is given through its stdin: the key, or the passphrase it derives the key from.
/// Wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum Secret {
    Key(Zeroizing<Vec<u8>>),
    Passphrase {
        bytes: Zeroizing<Vec<u8>>,
        kdf: SwtpmKdf,
    },
}

impl Secret {
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Secret::Key(bytes) | Secret::Passphrase { bytes, .. } => bytes,
        }
    }

    /// swtpm's `--key` option reading this secret from descriptor 0.
    pub(super) fn swtpm_key_option(&self, mode: SwtpmCipher) -> String {
        match self {
            Secret::Key(_) => format!("fd=0,mode={},format=binary", mode.swtpm_mode()),
            Secret::Passphrase { kdf, .. } => {
                format!("pwdfd=0,mode={},kdf={kdf}", mode.swtpm_mode())
            }
        }
    }
}

impl fmt::Debug for Secret {
    /// Lengths only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Key(bytes) => write!(f, "Key({} bytes)", bytes.len()),
            Secret::Passphrase { bytes, kdf } => {
                write!(f, "Passphrase({} bytes, {kdf})", bytes.len())
            }
        }
    }
}

/// Loads and checks the key or passphrase file.
pub(super) fn load_secret(key: &SwtpmKey) -> Result<Secret, SecretError> {
    Ok(match &key.source {
        SwtpmKeySource::File { file, format } => {
            Secret::Key(load_raw_key(file, *format, key.mode)?)
        }
        SwtpmKeySource::Passphrase { file, kdf } => Secret::Passphrase {
            bytes: load_passphrase(file)?,
            kdf: *kdf,
        },
    })
}

/// Reads at most `max` bytes of `file` and one more, into a buffer with room for all of them
/// (so that no reallocation leaves a copy behind).
fn read_secret_file(
    file: &Path,
    kind: KeyKind,
    max: u64,
) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    let mut bytes = Zeroizing::new(Vec::with_capacity(max as usize + 2));
    File::open(file)
        .and_then(|f| f.take(max + 1).read_to_end(&mut bytes))
        .map_err(|source| SecretError::KeyRead {
            file: file.to_owned(),
            kind,
            source,
        })?;
    Ok(bytes)
}

/// Loads and checks a key file; returns the raw key bytes.
fn load_raw_key(
    file: &Path,
    format: SwtpmKeyFormat,
    mode: SwtpmCipher,
) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    let raw = read_secret_file(file, KeyKind::Key, MAX_KEY_FILE)?;
    let bytes = match format {
        SwtpmKeyFormat::Binary => raw,
        SwtpmKeyFormat::Hex => parse_hex_key(&raw).map_err(|source| SecretError::KeyFormat {
            file: file.to_owned(),
            source,
        })?,
    };
    if bytes.len() != mode.key_len() {
        return Err(SecretError::KeyLength {
            file: file.to_owned(),
            format,
            mode,
            expected: mode.key_len(),
            actual: bytes.len(),
        });
    }
    Ok(bytes)
}

/// Reads a passphrase file as swtpm does: every byte, a trailing newline included.
fn load_passphrase(file: &Path) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    let bytes = read_secret_file(file, KeyKind::Passphrase, MAX_PASSPHRASE as u64)?;
    if bytes.len() > MAX_PASSPHRASE {
        return Err(SecretError::PassphraseTooLong {
            file: file.to_owned(),
            max: MAX_PASSPHRASE,
        });
    }
    Ok(bytes)
}

/// swtpm's hex key syntax: optional `0x`, hex digits, then nothing but whitespace.
fn parse_hex_key(text: &[u8]) -> Result<Zeroizing<Vec<u8>>, HexKeyError> {
    let text = text.strip_prefix(b"0x").unwrap_or(text);
    let end = text
        .iter()
        .position(u8::is_ascii_whitespace)
        .unwrap_or(text.len());
    let (digits, rest) = text.split_at(end);
    if !rest.iter().all(u8::is_ascii_whitespace) {
        return Err(HexKeyError::MoreThanOneWord);
    }
    if digits.is_empty() {
        return Err(HexKeyError::NoDigits);
    }
    if let Some(at) = digits.iter().position(|b| !b.is_ascii_hexdigit()) {
        return Err(HexKeyError::NotHex { position: at + 1 });
    }
    if digits.len() % 2 != 0 {
        return Err(HexKeyError::OddLength(digits.len()));
    }
    // Decoded in place into a buffer of the final size, wiped on every path.
    let mut key = Zeroizing::new(vec![0u8; digits.len() / 2]);
    hex::decode_to_slice(digits, &mut key).map_err(|_| HexKeyError::OddLength(digits.len()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_256: &str = "00112233445566778899aabbccddeeff0123456789abcdef0f1e2d3c4b5a6978";
    const KEY_128: &str = "00112233445566778899aabbccddeeff";
    const PASSPHRASE: &[u8] = b"correct horse battery staple\n";

    #[test]
    fn key_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8], mode, format| {
            let file = dir.path().join(name);
            std::fs::write(&file, bytes).unwrap();
            load_raw_key(&file, format, mode)
        };
        use SwtpmCipher::*;
        use SwtpmKeyFormat::*;

        let key = hex::decode(KEY_256).unwrap();
        assert_eq!(
            *write("a", KEY_256.as_bytes(), Aes256Cbc, Hex).unwrap(),
            key
        );
        let prefixed = format!("0x{}\r\n", KEY_256.to_uppercase());
        assert_eq!(
            *write("b", prefixed.as_bytes(), Aes256Cbc, Hex).unwrap(),
            key
        );
        assert_eq!(*write("c", &key, Aes256Cbc, Binary).unwrap(), key);
        assert_eq!(
            *write("d", &key[..16], Aes128Cbc, Binary).unwrap(),
            key[..16]
        );

        let refused = |name: &str, bytes: &[u8], mode, format| {
            let err = write(name, bytes, mode, format).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(name), "{msg}");
            assert!(!msg.contains(&KEY_256[8..24]), "the key leaks: {msg}");
            err
        };
        for (bad, why) in [
            (
                format!("{}zz\n", &KEY_256[..62]),
                HexKeyError::NotHex { position: 63 },
            ),
            (format!("{}\n", &KEY_256[..63]), HexKeyError::OddLength(63)),
            (
                format!("{KEY_256} {KEY_256}\n"),
                HexKeyError::MoreThanOneWord,
            ),
            ("\n".to_owned(), HexKeyError::NoDigits),
        ] {
            let err = refused("bad.hex", bad.as_bytes(), Aes256Cbc, Hex);
            assert!(
                matches!(err, SecretError::KeyFormat { source, .. } if source == why),
                "{err:?}"
            );
        }
        let err = refused("half.hex", KEY_128.as_bytes(), Aes256Cbc, Hex);
        assert!(
            matches!(
                err,
                SecretError::KeyLength {
                    expected: 32,
                    actual: 16,
                    ..
                }
            ),
            "{err:?}"
        );
        let mut long = key.clone();
        long.push(b'\n');
        let err = refused("long.bin", &long, Aes256Cbc, Binary);
        assert!(
            matches!(
                err,
                SecretError::KeyLength {
                    expected: 32,
                    actual: 33,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn secrets_reach_swtpm_as_its_key_option_says() {
        let key = Secret::Key(Zeroizing::new(hex::decode(KEY_256).unwrap()));
        assert_eq!(
            key.swtpm_key_option(SwtpmCipher::Aes256Cbc),
            "fd=0,mode=aes-256-cbc,format=binary"
        );
        let pw = Secret::Passphrase {
            bytes: Zeroizing::new(PASSPHRASE.to_vec()),
            kdf: SwtpmKdf::Sha512,
        };
        assert_eq!(
            pw.swtpm_key_option(SwtpmCipher::Aes128Cbc),
            "pwdfd=0,mode=aes-cbc,kdf=sha512"
        );
        assert_eq!(pw.bytes(), PASSPHRASE);
        // Debug shows lengths only.
        assert_eq!(
            format!("{key:?} {pw:?}"),
            "Key(32 bytes) Passphrase(29 bytes, sha512)"
        );
    }
}
