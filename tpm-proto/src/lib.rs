//! TPM 2.0 wire format, as much of it as vhost-vtpm needs.
//!
//! This crate owns the byte-level framing of TPM 2.0 commands and responses (TCG TPM 2.0
//! Library, Part 1 §18 and Part 3): the 10-byte header, response codes, a builder for
//! commands and a cursor for responses. The device uses it to classify commands and to
//! synthesise error responses for malformed requests; the driver-side harness, the
//! integration tests and the benchmarks use the command builders in [`commands`]; the
//! certificate chain parses public areas and computes TPM names with [`public`].
//!
//! It is deliberately not a TSS: there is no session HMAC, no parameter encryption and no
//! object model. Anything richer belongs to tpm2-tss/tss-esapi in a real guest.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod commands;
pub mod public;
mod wire;

pub use wire::{CommandBuilder, ResponseReader, WireError};

/// Size of the TPM 2.0 command/response header (tag u16, size u32, code u32).
pub const HEADER_SIZE: usize = 10;

/// Largest command or response the virtio TPM device carries (Linux `TPM_BUFSIZE`).
pub const MAX_BUFFER_SIZE: usize = 4096;

/// Structure tags.
pub mod tag {
    pub const NO_SESSIONS: u16 = 0x8001;
    pub const SESSIONS: u16 = 0x8002;
    pub const HASHCHECK: u16 = 0x8024;
}

/// Response codes used by this project.
pub mod rc {
    pub const SUCCESS: u32 = 0x000;
    pub const INITIALIZE: u32 = 0x100;
    pub const FAILURE: u32 = 0x101;
    pub const COMMAND_SIZE: u32 = 0x142;
    pub const COMMAND_CODE: u32 = 0x143;
    pub const NV_UNINITIALIZED: u32 = 0x14A;
    pub const SIZE: u32 = 0x0D5;
    pub const RETRY: u32 = 0x922;
    /// Format-one error on a handle: `rc & HANDLE_MASK` with the handle number stripped.
    pub const HANDLE: u32 = 0x08B;
    pub const NV_DEFINED: u32 = 0x14C;
}

/// Command codes used by this project.
pub mod cc {
    pub const NV_UNDEFINE_SPACE: u32 = 0x122;
    pub const EVICT_CONTROL: u32 = 0x120;
    pub const NV_DEFINE_SPACE: u32 = 0x12A;
    pub const CREATE_PRIMARY: u32 = 0x131;
    pub const NV_INCREMENT: u32 = 0x134;
    pub const NV_WRITE: u32 = 0x137;
    pub const SEQUENCE_COMPLETE: u32 = 0x13E;
    pub const STARTUP: u32 = 0x144;
    pub const SHUTDOWN: u32 = 0x145;
    pub const NV_READ: u32 = 0x14E;
    pub const LOAD: u32 = 0x157;
    pub const SEQUENCE_UPDATE: u32 = 0x15C;
    pub const SIGN: u32 = 0x15D;
    pub const FLUSH_CONTEXT: u32 = 0x165;
    pub const GET_CAPABILITY: u32 = 0x17A;
    pub const GET_RANDOM: u32 = 0x17B;
    pub const PCR_READ: u32 = 0x17E;
    pub const PCR_EXTEND: u32 = 0x182;
    pub const READ_PUBLIC: u32 = 0x173;
    pub const HASH: u32 = 0x17D;
    pub const HASH_SEQUENCE_START: u32 = 0x186;
}

/// Parsed TPM 2.0 header of a command or a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u16,
    pub size: u32,
    /// Command code in a command, response code in a response.
    pub code: u32,
}

impl Header {
    /// Parses the first [`HEADER_SIZE`] bytes of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        let mut r = ResponseReader::new(buf);
        Ok(Header {
            tag: r.u16()?,
            size: r.u32()?,
            code: r.u32()?,
        })
    }
}

/// A 10-byte response carrying only `rc`, as a TPM answers a command it could not run.
pub fn error_response(rc: u32) -> [u8; HEADER_SIZE] {
    let mut out = [0u8; HEADER_SIZE];
    out[0..2].copy_from_slice(&tag::NO_SESSIONS.to_be_bytes());
    out[2..6].copy_from_slice(&(HEADER_SIZE as u32).to_be_bytes());
    out[6..10].copy_from_slice(&rc.to_be_bytes());
    out
}

/// Returns the response code of a response buffer, or an error if it is not a response.
pub fn response_code(resp: &[u8]) -> Result<u32, WireError> {
    let h = Header::parse(resp)?;
    if h.size as usize != resp.len() {
        return Err(WireError::SizeMismatch {
            header: h.size,
            actual: resp.len(),
        });
    }
    Ok(h.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_round_trips() {
        let r = error_response(rc::COMMAND_SIZE);
        assert_eq!(response_code(&r).unwrap(), rc::COMMAND_SIZE);
        assert_eq!(Header::parse(&r).unwrap().tag, tag::NO_SESSIONS);
    }

    #[test]
    fn short_header_is_an_error() {
        assert!(Header::parse(&[0x80, 0x01, 0, 0]).is_err());
    }

    #[test]
    fn size_mismatch_is_reported() {
        let mut r = error_response(0).to_vec();
        r.push(0);
        assert!(matches!(
            response_code(&r),
            Err(WireError::SizeMismatch {
                header: 10,
                actual: 11
            })
        ));
    }
}
