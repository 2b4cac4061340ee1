//! TPM 2.0 wire format, as much of it as vhost-vtpm needs.
//!
//! This crate owns the byte-level framing of TPM 2.0 commands and responses (TCG TPM 2.0
//! Library, Part 1 §18 and Part 3): the 10-byte header, response codes, a builder for
//! commands and a cursor for responses. The device uses it to classify commands and to
//! synthesise error responses for malformed requests; the driver-side harness, the
//! integration tests and the benchmarks use the command builders in [`commands`]; the
//! certificate chain parses public areas and computes TPM names with [`public`]; a verifier
//! reads quotes, PCR selections and the structures it checks with [`attest`]; the
//! project's vendor command (the deep quote) is [`vendor`].
//!
//! It is deliberately not a TSS: there is no session HMAC, no parameter encryption and no
//! object model. Anything richer belongs to tpm2-tss/tss-esapi in a real guest.

pub mod attest;
pub mod commands;
pub mod public;
pub mod vendor;
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
///
/// A format-one code (bit 7, [`rc::FMT1`], set) also names the handle, parameter or session
/// it concerns; [`rc::base`] strips that, and the result compares with [`rc::fmt1`]'s
/// constants. Format-zero codes (and warnings) are compared as they are.
pub mod rc {
    pub const SUCCESS: u32 = 0x000;
    pub const INITIALIZE: u32 = 0x100;
    pub const FAILURE: u32 = 0x101;
    pub const COMMAND_SIZE: u32 = 0x142;
    pub const COMMAND_CODE: u32 = 0x143;
    /// TPM_RC_LOCALITY: the command is not allowed at the locality it came from.
    pub const LOCALITY: u32 = 0x107;
    pub const NV_UNINITIALIZED: u32 = 0x14A;
    pub const NV_DEFINED: u32 = 0x14C;
    pub const NO_RESULT: u32 = 0x154;
    /// TPM_RC_SIZE on an (unnumbered) parameter: [`fmt1::SIZE`] | [`P`].
    pub const SIZE: u32 = fmt1::SIZE | P;
    /// Warnings: the TPM has no slot free for another object or session.
    pub const OBJECT_MEMORY: u32 = 0x902;
    pub const SESSION_MEMORY: u32 = 0x903;
    /// Warnings after which the TPM asks for the same command again.
    pub const YIELDED: u32 = 0x908;
    pub const TESTING: u32 = 0x90A;
    pub const RETRY: u32 = 0x922;
    /// Format-one error on a handle, with the handle number stripped (as [`base`] returns
    /// it).
    pub use fmt1::HANDLE;

    /// The bit that makes a response code format-one.
    pub const FMT1: u32 = 0x080;
    /// TPM_RC_P: in a format-one code, the number in bits 8..11 is a parameter's.
    pub const P: u32 = 0x040;

    /// Format-one response codes without their handle, parameter or session number: what
    /// [`base`] returns.
    pub mod fmt1 {
        pub const VALUE: u32 = 0x084;
        pub const HIERARCHY: u32 = 0x085;
        pub const HANDLE: u32 = 0x08B;
        pub const AUTH_FAIL: u32 = 0x08E;
        pub const SIZE: u32 = 0x095;
        pub const INSUFFICIENT: u32 = 0x09A;
        pub const POLICY_FAIL: u32 = 0x09D;
        pub const INTEGRITY: u32 = 0x09F;
        pub const BAD_AUTH: u32 = 0x0A2;
        pub const ECC_POINT: u32 = 0x0A7;
    }

    /// `code` without the handle, parameter or session it names if it is a format-one code
    /// (compare with [`fmt1`]); any other code as it is.
    pub const fn base(code: u32) -> u32 {
        if code & FMT1 != 0 {
            code & (FMT1 | 0x3F)
        } else {
            code
        }
    }
}

/// Command codes used by this project.
pub mod cc {
    pub const EVICT_CONTROL: u32 = 0x120;
    pub const HIERARCHY_CONTROL: u32 = 0x121;
    pub const HIERARCHY_CHANGE_AUTH: u32 = 0x129;
    pub const PCR_SET_AUTH_POLICY: u32 = 0x12C;
    pub const PCR_EVENT: u32 = 0x13C;
    pub const PCR_RESET: u32 = 0x13D;
    pub const NV_UNDEFINE_SPACE: u32 = 0x122;
    pub const NV_DEFINE_SPACE: u32 = 0x12A;
    pub const CREATE_PRIMARY: u32 = 0x131;
    pub const NV_INCREMENT: u32 = 0x134;
    pub const NV_WRITE: u32 = 0x137;
    pub const SEQUENCE_COMPLETE: u32 = 0x13E;
    pub const STARTUP: u32 = 0x144;
    pub const SHUTDOWN: u32 = 0x145;
    pub const ACTIVATE_CREDENTIAL: u32 = 0x147;
    pub const NV_READ: u32 = 0x14E;
    pub const POLICY_SECRET: u32 = 0x151;
    pub const LOAD: u32 = 0x157;
    pub const QUOTE: u32 = 0x158;
    pub const SEQUENCE_UPDATE: u32 = 0x15C;
    pub const SIGN: u32 = 0x15D;
    pub const FLUSH_CONTEXT: u32 = 0x165;
    pub const NV_READ_PUBLIC: u32 = 0x169;
    pub const READ_PUBLIC: u32 = 0x173;
    pub const START_AUTH_SESSION: u32 = 0x176;
    pub const GET_CAPABILITY: u32 = 0x17A;
    pub const GET_RANDOM: u32 = 0x17B;
    pub const HASH: u32 = 0x17D;
    pub const PCR_READ: u32 = 0x17E;
    pub const PCR_EXTEND: u32 = 0x182;
    pub const PCR_SET_AUTH_VALUE: u32 = 0x183;
    pub const EVENT_SEQUENCE_COMPLETE: u32 = 0x185;
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
    fn base_strips_what_a_format_one_code_names() {
        // TPM_RC_BAD_AUTH on session 1, TPM_RC_INTEGRITY on parameter 1, TPM_RC_HANDLE on
        // handle 1.
        assert_eq!(rc::base(0x9a2), rc::fmt1::BAD_AUTH);
        assert_eq!(rc::base(0x1df), rc::fmt1::INTEGRITY);
        assert_eq!(rc::base(0x18b), rc::HANDLE);
        assert_eq!(rc::base(rc::SIZE), rc::fmt1::SIZE);
        // Format zero and warnings are left alone.
        for code in [
            rc::SUCCESS,
            rc::INITIALIZE,
            rc::NV_DEFINED,
            rc::RETRY,
            0x902,
        ] {
            assert_eq!(rc::base(code), code);
        }
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
