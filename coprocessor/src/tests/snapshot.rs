use super::*;

#[test]
fn round_trip_and_every_truncation_is_refused() {
    let s = Snapshot {
        permanent: vec![1, 2, 3],
        volatile: vec![9; 40],
    };
    let enc = s.encode();
    assert_eq!(Snapshot::decode(&enc).unwrap(), s);
    for cut in 0..enc.len() {
        assert!(Snapshot::decode(&enc[..cut]).is_err(), "cut at {cut}");
    }
    let mut extra = enc.clone();
    extra.push(0);
    assert_eq!(Snapshot::decode(&extra), Err(SnapshotError::Trailing(1)));
    let mut huge = MAGIC.to_vec();
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        Snapshot::decode(&huge),
        Err(SnapshotError::TooLarge(_))
    ));
}
