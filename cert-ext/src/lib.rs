//! Reading the extensions of a DER X.509 certificate.
//!
//! This crate owns walking RFC 5280 §4.1's certificate as far as its extensions, decoded by
//! `der`'s generic types. `x509-cert`'s own types cannot be used for it: they hold OIDs as
//! `const-oid` values, whose arcs are 32-bit, and a host AIK certificate carries an
//! extension in the UUID arc (2.25), whose 128-bit arc is larger, so it does not decode with
//! them. It is its own crate so that the CA and the identity crate share it without the CA
//! linking what the identity crate links (libtpms through the coprocessor).

use der::asn1::{AnyRef, BitStringRef};
use der::{Decode, Sequence, Tag, Tagged};

/// One certificate extension, as encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extension<'a> {
    /// The contents of `extnID` (the OID's encoding without tag and length).
    pub oid: &'a [u8],
    pub critical: bool,
    /// The contents of `extnValue`: the DER of the extension's value.
    pub value: &'a [u8],
}

/// The extensions of a DER certificate, in order: `None` for an extension whose `extnID`
/// is not an OBJECT IDENTIFIER or whose `extnValue` is not an OCTET STRING (callers differ
/// on whether that spoils the certificate or only that extension).
pub fn extensions(cert_der: &[u8]) -> Result<Vec<Option<Extension<'_>>>, der::Error> {
    let cert = rfc5280::Certificate::from_der(cert_der)?;
    Ok(cert
        .tbs_certificate
        .extensions
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            (e.extn_id.tag() == Tag::ObjectIdentifier && e.extn_value.tag() == Tag::OctetString)
                .then_some(Extension {
                    oid: e.extn_id.value(),
                    critical: e.critical,
                    value: e.extn_value.value(),
                })
        })
        .collect())
}

/// RFC 5280 §4.1's certificate, as much of it as reading the extensions takes.
mod rfc5280 {
    use super::{AnyRef, BitStringRef, Sequence};

    /// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }`.
    #[derive(Sequence)]
    pub(super) struct Certificate<'a> {
        pub tbs_certificate: TbsCertificate<'a>,
        pub signature_algorithm: AnyRef<'a>,
        pub signature_value: BitStringRef<'a>,
    }

    /// `TBSCertificate`, its fields other than the extensions left encoded.
    #[derive(Sequence)]
    pub(super) struct TbsCertificate<'a> {
        #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
        pub version: Option<AnyRef<'a>>,
        pub serial_number: AnyRef<'a>,
        pub signature: AnyRef<'a>,
        pub issuer: AnyRef<'a>,
        pub validity: AnyRef<'a>,
        pub subject: AnyRef<'a>,
        pub subject_public_key_info: AnyRef<'a>,
        #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
        pub issuer_unique_id: Option<BitStringRef<'a>>,
        #[asn1(context_specific = "2", tag_mode = "IMPLICIT", optional = "true")]
        pub subject_unique_id: Option<BitStringRef<'a>>,
        #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
        pub extensions: Option<Vec<Extension<'a>>>,
    }

    /// `Extension ::= SEQUENCE { extnID OBJECT IDENTIFIER, critical BOOLEAN DEFAULT FALSE,
    /// extnValue OCTET STRING }`, the OID and the value left encoded (their tags are checked
    /// by [`super::extensions`]).
    #[derive(Sequence)]
    pub(super) struct Extension<'a> {
        pub extn_id: AnyRef<'a>,
        #[asn1(default = "Default::default")]
        pub critical: bool,
        pub extn_value: AnyRef<'a>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_no_certificate() {
        assert!(extensions(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(extensions(&[]).is_err());
    }
}
