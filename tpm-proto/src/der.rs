//! Just enough DER (ITU-T X.690) to assemble the parts of certificates OpenSSL's API does not
//! build for us, and to cut a certificate apart: definite lengths only (short and long form),
//! single-byte tags. The coprocessor assembles its certificates with it; the host TPM's
//! crate finds where a certificate ends in an NV index larger than it.

/// Why DER could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DerError {
    #[error("invalid object identifier {0:?}")]
    InvalidOid(String),
    #[error("DER truncated")]
    Truncated,
    #[error("multi-byte DER tags are not supported")]
    MultiByteTag,
    #[error("unsupported DER length form {0:#x}")]
    LengthForm(u8),
    #[error("DER element overruns its buffer")]
    Overrun,
    #[error("{what}: expected DER tag {expected:#04x}, found {found:#04x}")]
    UnexpectedTag {
        what: &'static str,
        expected: u8,
        found: u8,
    },
    #[error("subjectPublicKey is not a whole number of bytes")]
    PartialKeyBits,
}

pub const TAG_INTEGER: u8 = 0x02;
pub const TAG_BIT_STRING: u8 = 0x03;
pub const TAG_OCTET_STRING: u8 = 0x04;
pub const TAG_OID: u8 = 0x06;
pub const TAG_UTF8_STRING: u8 = 0x0C;
pub const TAG_SEQUENCE: u8 = 0x30;
pub const TAG_SET: u8 = 0x31;

/// `[n]` IMPLICIT, primitive (e.g. AuthorityKeyIdentifier's keyIdentifier).
pub const fn context_primitive(n: u8) -> u8 {
    0x80 | n
}

/// `[n]`, constructed (EXPLICIT tagging, or IMPLICIT of a constructed type).
pub const fn context_constructed(n: u8) -> u8 {
    0xA0 | n
}

/// The length octets of a definite-length encoding: short form below 128, otherwise long
/// form with the minimal number of length bytes.
pub fn length(len: usize) -> Vec<u8> {
    if len < 0x80 {
        return vec![len as u8];
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    let significant = &bytes[skip..];
    let mut out = Vec::with_capacity(1 + significant.len());
    out.push(0x80 | significant.len() as u8);
    out.extend_from_slice(significant);
    out
}

/// Tag, length, value.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&length(content.len()));
    out.extend_from_slice(content);
    out
}

/// A constructed value holding the concatenation of already-encoded `parts`.
pub fn constructed(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    tlv(tag, &parts.concat())
}

pub fn sequence(parts: &[&[u8]]) -> Vec<u8> {
    constructed(TAG_SEQUENCE, parts)
}

/// A SET of one or more already-encoded values. DER orders SET OF elements by their
/// encodings; the elements are sorted here so callers need not care.
pub fn set_of(parts: &[&[u8]]) -> Vec<u8> {
    let mut sorted = parts.to_vec();
    sorted.sort();
    constructed(TAG_SET, &sorted)
}

/// A non-negative INTEGER from its big-endian magnitude (leading zeros allowed): minimal
/// encoding, with a 0x00 prefix where the top bit would otherwise make it negative.
pub fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let skip = magnitude.iter().take_while(|b| **b == 0).count();
    let significant = &magnitude[skip..];
    let mut content = Vec::with_capacity(significant.len() + 1);
    match significant.first() {
        None => content.push(0),
        Some(b) if b & 0x80 != 0 => {
            content.push(0);
            content.extend_from_slice(significant);
        }
        Some(_) => content.extend_from_slice(significant),
    }
    tlv(TAG_INTEGER, &content)
}

pub fn integer_u64(v: u64) -> Vec<u8> {
    unsigned_integer(&v.to_be_bytes())
}

pub fn utf8_string(s: &str) -> Vec<u8> {
    tlv(TAG_UTF8_STRING, s.as_bytes())
}

pub fn octet_string(bytes: &[u8]) -> Vec<u8> {
    tlv(TAG_OCTET_STRING, bytes)
}

/// A BIT STRING of whole bytes (no unused bits).
pub fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(bytes.len() + 1);
    content.push(0);
    content.extend_from_slice(bytes);
    tlv(TAG_BIT_STRING, &content)
}

/// An OBJECT IDENTIFIER from its dotted form (arcs up to 128 bits, so `2.25.<uuid>` works).
pub fn oid(dotted: &str) -> Result<Vec<u8>, DerError> {
    let bad = || DerError::InvalidOid(dotted.to_owned());
    let arcs = dotted
        .split('.')
        .map(|a| a.parse::<u128>().map_err(|_| bad()))
        .collect::<Result<Vec<_>, _>>()?;
    let (first, second, rest) = match arcs.as_slice() {
        [first, second, rest @ ..] if *first <= 2 && (*first == 2 || *second < 40) => {
            (*first, *second, rest)
        }
        _ => return Err(bad()),
    };
    let head = first
        .checked_mul(40)
        .and_then(|v| v.checked_add(second))
        .ok_or_else(bad)?;
    let mut content = Vec::new();
    for arc in std::iter::once(head).chain(rest.iter().copied()) {
        let mut groups = vec![(arc & 0x7f) as u8];
        let mut v = arc >> 7;
        while v != 0 {
            groups.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        content.extend(groups.iter().rev());
    }
    Ok(tlv(TAG_OID, &content))
}

/// One decoded element: its tag, its contents, and its whole encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Element<'a> {
    pub tag: u8,
    pub content: &'a [u8],
    pub encoded: &'a [u8],
}

/// A cursor over a sequence of DER elements.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Whether every element has been read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn byte(&mut self) -> Result<u8, DerError> {
        let b = *self.buf.get(self.pos).ok_or(DerError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// Reads the next element.
    pub fn element(&mut self) -> Result<Element<'a>, DerError> {
        let start = self.pos;
        let tag = self.byte()?;
        if tag & 0x1f == 0x1f {
            return Err(DerError::MultiByteTag);
        }
        let first = self.byte()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return Err(DerError::LengthForm(first));
            }
            let mut len = 0usize;
            for _ in 0..n {
                len = (len << 8) | usize::from(self.byte()?);
            }
            len
        };
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.buf.len())
            .ok_or(DerError::Overrun)?;
        let content = &self.buf[self.pos..end];
        self.pos = end;
        Ok(Element {
            tag,
            content,
            encoded: &self.buf[start..end],
        })
    }

    /// Reads the next element and checks its tag.
    pub fn expect_tag(&mut self, tag: u8, what: &'static str) -> Result<Element<'a>, DerError> {
        let e = self.element()?;
        if e.tag != tag {
            return Err(DerError::UnexpectedTag {
                what,
                expected: tag,
                found: e.tag,
            });
        }
        Ok(e)
    }
}

/// The DER `tbsCertificate` inside a DER `Certificate`.
pub fn tbs_certificate(cert_der: &[u8]) -> Result<&[u8], DerError> {
    let cert = Reader::new(cert_der).expect_tag(TAG_SEQUENCE, "Certificate")?;
    let tbs = Reader::new(cert.content).expect_tag(TAG_SEQUENCE, "tbsCertificate")?;
    Ok(tbs.encoded)
}

/// The key bits (BIT STRING contents without the unused-bits octet) of a DER
/// SubjectPublicKeyInfo: what RFC 5280 §4.2.1.2 method 1 hashes into a key identifier.
pub fn spki_key_bits(spki_der: &[u8]) -> Result<&[u8], DerError> {
    let spki = Reader::new(spki_der).expect_tag(TAG_SEQUENCE, "SubjectPublicKeyInfo")?;
    let mut r = Reader::new(spki.content);
    r.expect_tag(TAG_SEQUENCE, "AlgorithmIdentifier")?;
    let bits = r.expect_tag(TAG_BIT_STRING, "subjectPublicKey")?;
    match bits.content.split_first() {
        Some((0, key)) => Ok(key),
        _ => Err(DerError::PartialKeyBits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_use_the_long_form_from_128() {
        assert_eq!(length(0), [0x00]);
        assert_eq!(length(127), [0x7f]);
        assert_eq!(length(128), [0x81, 0x80]);
        assert_eq!(length(255), [0x81, 0xff]);
        assert_eq!(length(256), [0x82, 0x01, 0x00]);
        assert_eq!(length(1016), [0x82, 0x03, 0xf8]);
        assert_eq!(length(0x01_0000), [0x83, 0x01, 0x00, 0x00]);
    }

    #[test]
    fn integers_are_minimal_and_positive() {
        assert_eq!(unsigned_integer(&[]), [0x02, 0x01, 0x00]);
        assert_eq!(unsigned_integer(&[0, 0, 0]), [0x02, 0x01, 0x00]);
        assert_eq!(unsigned_integer(&[0x7f]), [0x02, 0x01, 0x7f]);
        assert_eq!(unsigned_integer(&[0x80]), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(
            unsigned_integer(&[0, 0, 0x01, 0x00]),
            [0x02, 0x02, 0x01, 0x00]
        );
        assert_eq!(integer_u64(164), [0x02, 0x02, 0x00, 0xa4]);
    }

    #[test]
    fn oids_encode_like_the_standard_examples() {
        // ecdsa-with-SHA256
        assert_eq!(
            oid("1.2.840.10045.4.3.2").unwrap(),
            [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]
        );
        // tcg-at-tpmManufacturer
        assert_eq!(
            oid("2.23.133.2.1").unwrap(),
            [0x06, 0x05, 0x67, 0x81, 0x05, 0x02, 0x01]
        );
        // X.667's example UUID OID (bytes from `openssl asn1parse -genstr OID:...`)
        assert_eq!(
            oid("2.25.329800735698586629295641978511506172918").unwrap(),
            [
                0x06, 0x14, 0x69, 0x83, 0xf0, 0x9d, 0xa7, 0xeb, 0xcf, 0xde, 0xe0, 0xc7, 0xa1, 0xa7,
                0xb2, 0xc0, 0x94, 0x8c, 0xc8, 0xf9, 0xd7, 0x76
            ]
        );
        assert!(oid("3.1").is_err());
        assert!(oid("1.40").is_err());
        assert!(oid("1").is_err());
        assert!(oid("1.2.x").is_err());
    }

    #[test]
    fn reader_round_trips_long_elements() {
        let big = vec![0xab; 300];
        let enc = sequence(&[&octet_string(&big), &utf8_string("x")]);
        assert_eq!(&enc[..4], &[0x30, 0x82, 0x01, 0x33]);
        let outer = Reader::new(&enc).expect_tag(TAG_SEQUENCE, "outer").unwrap();
        assert_eq!(outer.encoded, &enc[..]);
        let mut r = Reader::new(outer.content);
        assert_eq!(
            r.expect_tag(TAG_OCTET_STRING, "a").unwrap().content,
            &big[..]
        );
        assert_eq!(r.expect_tag(TAG_UTF8_STRING, "b").unwrap().content, b"x");
        assert!(r.is_empty());
        assert!(Reader::new(&enc[..enc.len() - 1]).element().is_err());
    }

    #[test]
    fn element_length_covers_header_and_contents() {
        // What a certificate read from a larger NV index is cut to.
        let mut r = Reader::new(&[0x30, 0x03, 1, 2, 3, 0xff]);
        assert_eq!(r.element().unwrap().encoded, &[0x30, 0x03, 1, 2, 3]);
        assert!(!r.is_empty());
        let mut long = vec![0x30, 0x82, 0x01, 0x00];
        long.extend_from_slice(&[7; 256]);
        long.push(0xff);
        assert_eq!(Reader::new(&long).element().unwrap().encoded.len(), 260);
        for bad in [
            &[0x30, 0x82, 0x01, 0x00][..],
            &[0x30, 0x80],
            &[0x30],
            &[0x30, 0x82, 0x01],
            &[0x1f, 0x01, 0x00],
        ] {
            assert!(Reader::new(bad).element().is_err(), "{bad:02x?}");
        }
    }

    #[test]
    fn set_of_is_sorted() {
        let a = integer_u64(2);
        let b = integer_u64(1);
        assert_eq!(set_of(&[&a, &b]), [0x31, 0x06, 2, 1, 1, 2, 1, 2]);
    }
}
