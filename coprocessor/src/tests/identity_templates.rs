use super::*;

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    tpm_proto::hex::decode(&s).unwrap()
}

/// The profile's tables, field by field, written out independently of the builder.
const HEAD: &str = "000b 000300b2 0020
    837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa
    0006 0080 0043 0010";

#[test]
fn rsa_template_is_l1() {
    let mut expected = unhex(&format!("0001 {HEAD} 0800 00000000 0100"));
    expected.extend_from_slice(&[0u8; 256]);
    assert_eq!(EkKind::Rsa2048.template(), expected);
    assert_eq!(expected.len(), 2 + 2 + 4 + 34 + 6 + 2 + 2 + 4 + 258);
}

#[test]
fn ecc_template_is_l2() {
    let mut expected = unhex(&format!("0023 {HEAD} 0003 0010 0020"));
    expected.extend_from_slice(&[0u8; 32]);
    expected.extend_from_slice(&[0x00, 0x20]);
    expected.extend_from_slice(&[0u8; 32]);
    assert_eq!(EkKind::EccP256.template(), expected);
}

#[test]
fn attributes_and_policy() {
    assert_eq!(EK_OBJECT_ATTRIBUTES, 0x0003_00B2);
    // PolicySecret(TPM_RH_ENDORSEMENT) from a zero digest, empty policyRef:
    // H(H(0^32 || TPM_CC_PolicySecret || name(TPM_RH_ENDORSEMENT)) || "")
    let mut data = vec![0u8; 32];
    data.extend_from_slice(&0x0000_0151u32.to_be_bytes());
    data.extend_from_slice(&0x4000_000Bu32.to_be_bytes());
    let step = openssl::sha::sha256(&data);
    assert_eq!(openssl::sha::sha256(&step), EK_AUTH_POLICY);
}
