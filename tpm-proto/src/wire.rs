//! Big-endian marshalling: a command builder that patches the size field and a bounded
//! response cursor that never reads past its buffer.

use crate::{tag, HEADER_SIZE};

/// Errors from parsing TPM structures.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("TPM structure truncated: needed {needed} more bytes at offset {offset}")]
    Truncated { offset: usize, needed: usize },
    #[error("TPM header says {header} bytes but the buffer holds {actual}")]
    SizeMismatch { header: u32, actual: usize },
    #[error("TPM returned response code {0:#x}")]
    Tpm(u32),
    #[error("unexpected value in TPM structure: {0}")]
    Unexpected(&'static str),
}

/// Builds one TPM 2.0 command. Handles and the authorization area are written in order by
/// the caller; [`CommandBuilder::finish`] fixes up the size field.
#[derive(Debug, Clone)]
pub struct CommandBuilder {
    buf: Vec<u8>,
    /// Where the size of the authorization area opened by [`CommandBuilder::auth_session`]
    /// is.
    sessions_at: Option<usize>,
}

impl CommandBuilder {
    /// Starts a command with `tag` and command code `cc`.
    pub fn new(tag: u16, cc: u32) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&tag.to_be_bytes());
        buf.extend_from_slice(&0u32.to_be_bytes());
        buf.extend_from_slice(&cc.to_be_bytes());
        CommandBuilder {
            buf,
            sessions_at: None,
        }
    }

    /// A command without an authorization area.
    pub fn no_sessions(cc: u32) -> Self {
        Self::new(tag::NO_SESSIONS, cc)
    }

    /// A command with an authorization area; handles must be pushed before
    /// [`CommandBuilder::password_auth`] or [`CommandBuilder::auth_session`].
    pub fn with_sessions(cc: u32) -> Self {
        Self::new(tag::SESSIONS, cc)
    }

    pub fn u8(mut self, v: u8) -> Self {
        self.buf.push(v);
        self
    }

    pub fn u16(mut self, v: u16) -> Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u32(mut self, v: u32) -> Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn bytes(mut self, v: &[u8]) -> Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// A TPM2B: u16 length followed by the bytes.
    pub fn tpm2b(self, v: &[u8]) -> Self {
        let len = u16::try_from(v.len()).unwrap_or(u16::MAX);
        self.u16(len).bytes(&v[..usize::from(len)])
    }

    /// Appends a password session (TPM_RS_PW, no nonce, no attributes) with `auth` to the
    /// authorization area: [`CommandBuilder::auth_session`] of the password session.
    pub fn password_auth(self, auth: &[u8]) -> Self {
        self.auth_session(crate::commands::TPM_RS_PW, &[], 0, auth)
    }

    /// Appends one session (a TPMS_AUTH_COMMAND: session handle, nonceCaller, attributes,
    /// hmac) to the authorization area, which the first call opens: several calls make an
    /// area with several sessions, in the order of the handles they authorise. The area's
    /// size is kept up to date, so the parameters follow directly. Handles must be pushed
    /// before.
    pub fn auth_session(mut self, session: u32, nonce: &[u8], attributes: u8, hmac: &[u8]) -> Self {
        let at = match self.sessions_at {
            Some(at) => at,
            None => {
                let at = self.buf.len();
                self.buf.extend_from_slice(&0u32.to_be_bytes());
                self.sessions_at = Some(at);
                at
            }
        };
        let mut b = self.u32(session).tpm2b(nonce).u8(attributes).tpm2b(hmac);
        let size = (b.buf.len() - at - 4) as u32;
        b.buf[at..at + 4].copy_from_slice(&size.to_be_bytes());
        b
    }

    /// Writes the final size into the header and returns the command bytes.
    pub fn finish(mut self) -> Vec<u8> {
        let size = self.buf.len() as u32;
        self.buf[2..6].copy_from_slice(&size.to_be_bytes());
        self.buf
    }
}

/// A bounds-checked cursor over a TPM response (or any TPM structure).
#[derive(Debug, Clone)]
pub struct ResponseReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> ResponseReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        ResponseReader { buf, pos: 0 }
    }

    /// Checks the header of a complete response: size must match and the response code must
    /// be success. Returns a reader positioned after the header.
    pub fn success(buf: &'a [u8]) -> Result<Self, WireError> {
        let rc = crate::response_code(buf)?;
        if rc != crate::rc::SUCCESS {
            return Err(WireError::Tpm(rc));
        }
        let mut r = Self::new(buf);
        r.skip(HEADER_SIZE)?;
        Ok(r)
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Checks that a structure that must fill its buffer did: [`WireError::Unexpected`] with
    /// `trailing` (which names the structure) if bytes are left.
    pub fn expect_end(&self, trailing: &'static str) -> Result<(), WireError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(WireError::Unexpected(trailing))
        }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.remaining() < n {
            return Err(WireError::Truncated {
                offset: self.pos,
                needed: n - self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn skip(&mut self, n: usize) -> Result<(), WireError> {
        self.take(n).map(|_| ())
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a TPM2B (u16 length + bytes).
    pub fn tpm2b(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_patches_size_and_auth() {
        let cmd = CommandBuilder::with_sessions(0x137)
            .u32(0x0150_0000)
            .password_auth(b"pw")
            .finish();
        let h = crate::Header::parse(&cmd).unwrap();
        assert_eq!(h.size as usize, cmd.len());
        // auth area size: handle 4 + nonce 2 + attrs 1 + hmac 2+2 = 11
        assert_eq!(&cmd[14..18], &11u32.to_be_bytes());
    }

    #[test]
    fn auth_sessions_make_one_area() {
        let cmd = CommandBuilder::with_sessions(0x147)
            .u32(0x8000_0000)
            .u32(0x8000_0001)
            .auth_session(0x4000_0009, &[], 0, &[])
            .auth_session(0x0300_0000, &[7; 3], 1, &[])
            .u16(0xabcd)
            .finish();
        let h = crate::Header::parse(&cmd).unwrap();
        assert_eq!(h.size as usize, cmd.len());
        // Two sessions: (4 + 2 + 1 + 2) + (4 + 2 + 3 + 1 + 2) = 21 bytes.
        assert_eq!(&cmd[18..22], &21u32.to_be_bytes());
        assert_eq!(&cmd[22..26], &0x4000_0009u32.to_be_bytes());
        assert_eq!(&cmd[31..35], &0x0300_0000u32.to_be_bytes());
        assert_eq!(&cmd[35..40], &[0, 3, 7, 7, 7]);
        assert_eq!(cmd[40], 1);
        assert_eq!(&cmd[43..], &[0xab, 0xcd]);
        // One session written this way is the same as password_auth.
        let a = CommandBuilder::with_sessions(0x137)
            .u32(1)
            .auth_session(0x4000_0009, &[], 0, b"pw")
            .u8(9)
            .finish();
        let b = CommandBuilder::with_sessions(0x137)
            .u32(1)
            .password_auth(b"pw")
            .u8(9)
            .finish();
        assert_eq!(a, b);
    }

    #[test]
    fn expect_end_names_trailing_bytes() {
        let mut r = ResponseReader::new(&[1, 2, 3]);
        r.u16().unwrap();
        assert_eq!(
            r.expect_end("trailing"),
            Err(WireError::Unexpected("trailing"))
        );
        r.u8().unwrap();
        assert_eq!(r.expect_end("trailing"), Ok(()));
    }

    #[test]
    fn reader_refuses_to_overrun() {
        let mut r = ResponseReader::new(&[0, 5, 1, 2]);
        assert_eq!(
            r.tpm2b(),
            Err(WireError::Truncated {
                offset: 2,
                needed: 3
            })
        );
    }
}
