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
fn set_of_is_sorted() {
    let a = integer_u64(2);
    let b = integer_u64(1);
    assert_eq!(set_of(&[&a, &b]), [0x31, 0x06, 2, 1, 1, 2, 1, 2]);
}
