use super::*;

#[test]
fn config_space_reads_are_bounded() {
    let c = VirtioTpmConfig::default();
    assert_eq!(c.read(0, 4), 4096u32.to_le_bytes().to_vec());
    assert_eq!(c.read(1, 2), vec![0x10, 0x00]);
    assert!(c.read(2, 4).is_empty());
    assert!(c.read(u32::MAX, 2).is_empty());
}

#[test]
fn features_include_the_specified_bits() {
    let f = device_features();
    assert_ne!(f & (1 << 32), 0, "VERSION_1");
    assert_ne!(f & (1 << 29), 0, "EVENT_IDX");
    assert_ne!(f & (1 << 28), 0, "INDIRECT_DESC");
    assert!(protocol_features().contains(VhostUserProtocolFeatures::CONFIG));
}
