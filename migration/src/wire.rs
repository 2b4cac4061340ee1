//! The length-prefixed big-endian fields the ticket and the package are made of (pure).
//!
//! A [`Reader`] names the field it failed on, so a malformed ticket or package is refused
//! with the field and the reason; nothing here allocates more than the bounds the caller
//! gives for each field.

/// Why a field could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("truncated in field {0}")]
    Truncated(&'static str),
    #[error("field {field} of {len} bytes is larger than {max}")]
    TooLarge {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("field {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

/// Reads fields from the front of a buffer.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn bytes(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], FieldError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(FieldError::Truncated(field))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], FieldError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(field, N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, FieldError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, FieldError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, FieldError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, FieldError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A field prefixed by its length (`width` bytes: 1, 2 or 4), at most `max` bytes.
    pub(crate) fn prefixed(
        &mut self,
        field: &'static str,
        width: usize,
        max: usize,
    ) -> Result<&'a [u8], FieldError> {
        let len = match width {
            1 => usize::from(self.u8(field)?),
            2 => usize::from(self.u16(field)?),
            _ => self.u32(field)? as usize,
        };
        if len > max {
            return Err(FieldError::TooLarge { field, len, max });
        }
        self.bytes(field, len)
    }

    /// An identifier (host id, VM id) prefixed by its u8 length: see [`check_id`].
    pub(crate) fn id(&mut self, field: &'static str, max: usize) -> Result<String, FieldError> {
        let raw = self.prefixed(field, 1, max)?;
        let text = std::str::from_utf8(raw).map_err(|_| FieldError::Invalid {
            field,
            reason: "not UTF-8",
        })?;
        check_id(field, text, max)?;
        Ok(text.to_owned())
    }
}

/// Host ids and VM ids: 1 to `max` characters of `[A-Za-z0-9._:@-]`, not starting with a
/// dot (the CA's subject rule, so a host id is the CN of its host AIK certificate).
pub fn check_id(field: &'static str, id: &str, max: usize) -> Result<(), FieldError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._:@-".contains(c);
    if id.is_empty() || id.len() > max {
        return Err(FieldError::Invalid {
            field,
            reason: "empty or too long",
        });
    }
    if id.starts_with('.') || !id.chars().all(ok_char) {
        return Err(FieldError::Invalid {
            field,
            reason: "characters outside [A-Za-z0-9._:@-], or a leading dot",
        });
    }
    Ok(())
}

/// A P-256 public key field: the uncompressed point form (`04 || X || Y`) is the only one
/// the formats carry (its length is the field's).
pub(crate) fn check_point(field: &'static str, point: &[u8]) -> Result<(), FieldError> {
    if point.first() != Some(&4) {
        return Err(FieldError::Invalid {
            field,
            reason: "not an uncompressed point",
        });
    }
    Ok(())
}

/// Appends `data` prefixed by its length in `width` bytes; the caller has bounded it.
pub(crate) fn put_prefixed(out: &mut Vec<u8>, width: usize, data: &[u8]) {
    match width {
        1 => out.push(data.len() as u8),
        2 => out.extend_from_slice(&(data.len() as u16).to_be_bytes()),
        _ => out.extend_from_slice(&(data.len() as u32).to_be_bytes()),
    }
    out.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_subject_rule() {
        assert!(check_id("x", "host-1", 64).is_ok());
        assert!(check_id("x", "a.b:c@d_e-f", 64).is_ok());
        for bad in ["", ".hidden", "a/b", "a b", "é"] {
            assert!(check_id("x", bad, 64).is_err(), "{bad:?}");
        }
        assert!(check_id("x", &"a".repeat(65), 64).is_err());
    }

    #[test]
    fn reader_names_the_field_and_bounds_lengths() {
        let mut r = Reader::new(&[0, 3, b'a', b'b']);
        assert_eq!(r.prefixed("name", 2, 8), Err(FieldError::Truncated("name")));
        let mut r = Reader::new(&[0, 9, 0]);
        assert_eq!(
            r.prefixed("name", 2, 8),
            Err(FieldError::TooLarge {
                field: "name",
                len: 9,
                max: 8
            })
        );
        let mut out = Vec::new();
        put_prefixed(&mut out, 4, b"abc");
        let mut r = Reader::new(&out);
        assert_eq!(r.prefixed("v", 4, 3).unwrap(), b"abc");
        assert_eq!(r.remaining(), 0);
    }
}
