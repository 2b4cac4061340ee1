//! How swtpm's state files are protected, as an operator names it: the key or passphrase
//! file and swtpm's cipher, key format and key derivation, and swtpm's own `--key` option
//! syntax for them. Pure: nothing here reads a file (see `secret` for that).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The cipher swtpm encrypted its state files with (`--key ...,mode=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwtpmCipher {
    /// `mode=aes-cbc` or `mode=aes-128-cbc` (swtpm's default): a 16-byte key.
    Aes128Cbc,
    /// `mode=aes-256-cbc`: a 32-byte key.
    Aes256Cbc,
}

impl SwtpmCipher {
    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            SwtpmCipher::Aes128Cbc => 16,
            SwtpmCipher::Aes256Cbc => 32,
        }
    }

    /// The spelling every swtpm version with this cipher accepts.
    pub(super) fn swtpm_mode(self) -> &'static str {
        match self {
            SwtpmCipher::Aes128Cbc => "aes-cbc",
            SwtpmCipher::Aes256Cbc => "aes-256-cbc",
        }
    }
}

impl fmt::Display for SwtpmCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SwtpmCipher::Aes128Cbc => "aes-128-cbc",
            SwtpmCipher::Aes256Cbc => "aes-256-cbc",
        })
    }
}

impl FromStr for SwtpmCipher {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, UnknownValue> {
        match s {
            "aes-cbc" | "aes-128-cbc" => Ok(SwtpmCipher::Aes128Cbc),
            "aes-256-cbc" => Ok(SwtpmCipher::Aes256Cbc),
            _ => Err(UnknownValue {
                what: "cipher mode",
                value: s.to_owned(),
                expected: "aes-cbc, aes-128-cbc or aes-256-cbc",
            }),
        }
    }
}

/// How the key file is written (`--key ...,format=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwtpmKeyFormat {
    /// Hex digits, optionally prefixed with `0x` and followed by whitespace (swtpm's default).
    Hex,
    /// The raw key bytes, nothing else.
    Binary,
}

impl fmt::Display for SwtpmKeyFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SwtpmKeyFormat::Hex => "hex",
            SwtpmKeyFormat::Binary => "binary",
        })
    }
}

impl FromStr for SwtpmKeyFormat {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, UnknownValue> {
        match s {
            "hex" => Ok(SwtpmKeyFormat::Hex),
            "binary" => Ok(SwtpmKeyFormat::Binary),
            _ => Err(UnknownValue {
                what: "key format",
                value: s.to_owned(),
                expected: "hex or binary",
            }),
        }
    }
}

/// How swtpm derives the key from a passphrase (`--key pwdfile=...,kdf=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SwtpmKdf {
    /// PBKDF2-HMAC-SHA512 (swtpm's default, and what swtpm_setup and libvirt use).
    #[default]
    Pbkdf2,
    /// The first bytes of one SHA-512 of the passphrase.
    Sha512,
}

impl fmt::Display for SwtpmKdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SwtpmKdf::Pbkdf2 => "pbkdf2",
            SwtpmKdf::Sha512 => "sha512",
        })
    }
}

impl FromStr for SwtpmKdf {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, UnknownValue> {
        match s {
            "pbkdf2" => Ok(SwtpmKdf::Pbkdf2),
            "sha512" => Ok(SwtpmKdf::Sha512),
            _ => Err(UnknownValue {
                what: "kdf",
                value: s.to_owned(),
                expected: "pbkdf2 or sha512",
            }),
        }
    }
}

/// A value that is not one of an option's spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?} ({expected})")]
pub struct UnknownValue {
    /// What the option sets (`cipher mode`).
    pub what: &'static str,
    pub value: String,
    /// The spellings accepted.
    pub expected: &'static str,
}

/// How swtpm's state files are protected: swtpm's `--key file=...,mode=...,format=...` or
/// `--key pwdfile=...,mode=...,kdf=...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwtpmKey {
    pub source: SwtpmKeySource,
    pub mode: SwtpmCipher,
}

/// Where the key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwtpmKeySource {
    /// `file=`: a file holding the key itself.
    File {
        file: PathBuf,
        format: SwtpmKeyFormat,
    },
    /// `pwdfile=`: a file holding a passphrase, from which swtpm derives the key.
    Passphrase { file: PathBuf, kdf: SwtpmKdf },
}

/// Which kind of file protects the state, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A key file (`file=`).
    Key,
    /// A passphrase file (`pwdfile=`).
    Passphrase,
}

impl KeyKind {
    /// What a failure to decrypt can be blamed on, besides damaged state.
    pub(super) fn suspects(self) -> &'static str {
        match self {
            KeyKind::Key => "wrong key",
            KeyKind::Passphrase => "wrong passphrase, cipher mode or kdf",
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::Key => "key file",
            KeyKind::Passphrase => "passphrase file",
        })
    }
}

impl SwtpmKey {
    /// swtpm's `--key file=<file>,mode=<mode>,format=<format>`.
    pub fn key_file(file: impl Into<PathBuf>, mode: SwtpmCipher, format: SwtpmKeyFormat) -> Self {
        SwtpmKey {
            source: SwtpmKeySource::File {
                file: file.into(),
                format,
            },
            mode,
        }
    }

    /// swtpm's `--key pwdfile=<file>,mode=<mode>,kdf=<kdf>`.
    pub fn passphrase_file(file: impl Into<PathBuf>, mode: SwtpmCipher, kdf: SwtpmKdf) -> Self {
        SwtpmKey {
            source: SwtpmKeySource::Passphrase {
                file: file.into(),
                kdf,
            },
            mode,
        }
    }

    /// The key or passphrase file.
    pub fn file(&self) -> &Path {
        match &self.source {
            SwtpmKeySource::File { file, .. } | SwtpmKeySource::Passphrase { file, .. } => file,
        }
    }

    /// Whether [`SwtpmKey::file`] holds a key or a passphrase.
    pub fn kind(&self) -> KeyKind {
        match self.source {
            SwtpmKeySource::File { .. } => KeyKind::Key,
            SwtpmKeySource::Passphrase { .. } => KeyKind::Passphrase,
        }
    }
}

/// Why a value of swtpm's `--key` option is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid swtpm key option {spec:?}: {reason}")]
pub struct KeySpecError {
    pub spec: String,
    pub reason: KeySpecReason,
}

/// What is wrong with a `--key` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySpecReason {
    #[error("{0:?} is not name=value")]
    NotNameValue(String),
    #[error(transparent)]
    UnknownValue(#[from] UnknownValue),
    #[error(
        "descriptors are not supported: {name}= is a descriptor of the process that started \
         swtpm; put the same bytes in a file and use {instead}="
    )]
    Descriptor {
        name: &'static str,
        instead: &'static str,
    },
    #[error("unknown or empty option {0:?}")]
    UnknownOption(String),
    #[error("file= and pwdfile= exclude each other")]
    FileAndPwdfile,
    #[error("kdf= applies to pwdfile= only")]
    KdfWithFile,
    #[error("format= applies to file= only; a passphrase is used as it is")]
    FormatWithPwdfile,
    #[error("no file=<path> or pwdfile=<path>")]
    NoFile,
}

/// Parses the value of swtpm's own `--key` option, so that an operator can copy it from the
/// swtpm command line: `file=<path>[,mode=aes-cbc|aes-128-cbc|aes-256-cbc][,format=hex|binary]`
/// or `pwdfile=<path>[,mode=...][,kdf=pbkdf2|sha512]`, with swtpm's defaults (`aes-cbc`, `hex`,
/// `pbkdf2`). `remove=` is accepted and ignored: the import never deletes the file. Descriptor
/// keys (`fd=`, `pwdfd=`, as libvirt passes them) are refused: the descriptor belongs to the
/// process that launched swtpm; give the same bytes in a file. Options that swtpm would
/// ignore (`file=` with `pwdfile=`, `format=` with `pwdfile=`, `kdf=` with `file=`) are refused
/// as contradictory.
impl FromStr for SwtpmKey {
    type Err = KeySpecError;

    fn from_str(spec: &str) -> Result<Self, KeySpecError> {
        let bad = |reason: KeySpecReason| KeySpecError {
            spec: spec.to_owned(),
            reason,
        };
        let unknown = |e: UnknownValue| bad(e.into());
        let mut file = None;
        let mut pwdfile = None;
        let mut mode = SwtpmCipher::Aes128Cbc;
        let mut format = None;
        let mut kdf = None;
        for part in spec.split(',') {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| bad(KeySpecReason::NotNameValue(part.to_owned())))?;
            match name {
                "file" if !value.is_empty() => file = Some(PathBuf::from(value)),
                "pwdfile" if !value.is_empty() => pwdfile = Some(PathBuf::from(value)),
                "mode" => mode = value.parse().map_err(unknown)?,
                "format" => format = Some(value.parse().map_err(unknown)?),
                "kdf" => kdf = Some(value.parse().map_err(unknown)?),
                "remove" => {}
                "fd" => {
                    return Err(bad(KeySpecReason::Descriptor {
                        name: "fd",
                        instead: "file",
                    }))
                }
                "pwdfd" => {
                    return Err(bad(KeySpecReason::Descriptor {
                        name: "pwdfd",
                        instead: "pwdfile",
                    }))
                }
                _ => return Err(bad(KeySpecReason::UnknownOption(part.to_owned()))),
            }
        }
        match (file, pwdfile) {
            (Some(_), Some(_)) => Err(bad(KeySpecReason::FileAndPwdfile)),
            (Some(file), None) => match kdf {
                Some(_) => Err(bad(KeySpecReason::KdfWithFile)),
                None => Ok(SwtpmKey::key_file(
                    file,
                    mode,
                    format.unwrap_or(SwtpmKeyFormat::Hex),
                )),
            },
            (None, Some(file)) => match format {
                Some(_) => Err(bad(KeySpecReason::FormatWithPwdfile)),
                None => Ok(SwtpmKey::passphrase_file(
                    file,
                    mode,
                    kdf.unwrap_or_default(),
                )),
            },
            (None, None) => Err(bad(KeySpecReason::NoFile)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_option_reads_swtpm_syntax() {
        assert_eq!(
            "file=/k,mode=aes-256-cbc,format=binary,remove=true"
                .parse::<SwtpmKey>()
                .unwrap(),
            SwtpmKey::key_file("/k", SwtpmCipher::Aes256Cbc, SwtpmKeyFormat::Binary)
        );
        assert_eq!(
            "file=/k".parse::<SwtpmKey>().unwrap(),
            SwtpmKey::key_file("/k", SwtpmCipher::Aes128Cbc, SwtpmKeyFormat::Hex)
        );
        assert_eq!(
            "mode=aes-128-cbc,file=k".parse::<SwtpmKey>().unwrap().mode,
            SwtpmCipher::Aes128Cbc
        );
        // Passphrases, with swtpm's defaults (aes-128-cbc, pbkdf2).
        assert_eq!(
            "pwdfile=/p".parse::<SwtpmKey>().unwrap(),
            SwtpmKey::passphrase_file("/p", SwtpmCipher::Aes128Cbc, SwtpmKdf::Pbkdf2)
        );
        let key = "pwdfile=/p,mode=aes-256-cbc,kdf=sha512,remove=true"
            .parse::<SwtpmKey>()
            .unwrap();
        assert_eq!(
            key,
            SwtpmKey::passphrase_file("/p", SwtpmCipher::Aes256Cbc, SwtpmKdf::Sha512)
        );
        assert_eq!(key.file(), Path::new("/p"));
        assert_eq!(key.kind(), KeyKind::Passphrase);
        assert_eq!(
            "kdf=pbkdf2,pwdfile=/p".parse::<SwtpmKey>().unwrap(),
            SwtpmKey::passphrase_file("/p", SwtpmCipher::Aes128Cbc, SwtpmKdf::Pbkdf2)
        );
        for bad in [
            "file=/k,mode=aes-512-cbc",
            "file=/k,format=base64",
            "mode=aes-cbc",
            "file=",
            "pwdfile=",
            "file=/k,bogus",
            "pwdfile=/p,kdf=md5",
            "file=/k,pwdfile=/p",
            "file=/k,kdf=sha512",
            "pwdfile=/p,format=hex",
        ] {
            let err = bad.parse::<SwtpmKey>().unwrap_err();
            assert_eq!(err.spec, bad, "{bad}: {err:?}");
            assert!(
                err.to_string().starts_with("invalid swtpm key option"),
                "{err}"
            );
        }
        // Descriptors (libvirt passes its passphrase as pwdfd=) belong to swtpm's launcher.
        for (bad, instead) in [("pwdfd=3,mode=aes-256-cbc", "pwdfile="), ("fd=3", "file=")] {
            let err = bad.parse::<SwtpmKey>().unwrap_err();
            assert!(
                matches!(err.reason, KeySpecReason::Descriptor { .. }),
                "{bad}: {err:?}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains("descriptors are not supported") && msg.contains(instead),
                "{msg}"
            );
        }
        // The unknown value is named with what it would have set.
        let err = "file=/k,mode=aes-512-cbc".parse::<SwtpmKey>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid swtpm key option \"file=/k,mode=aes-512-cbc\": unknown cipher mode \
             \"aes-512-cbc\" (aes-cbc, aes-128-cbc or aes-256-cbc)"
        );
    }
}
