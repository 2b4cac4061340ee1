use super::*;

#[test]
fn validity_saturates_at_no_expiry() {
    let v = Validity::starting_now(Duration::MAX);
    assert_eq!(v.not_after, Validity::NO_EXPIRY);
    let (_, not_after) = v.asn1().unwrap();
    assert_eq!(not_after.to_string(), "Dec 31 23:59:59 9999 GMT");
    let day = Validity::starting_now(Duration::from_secs(86_400));
    assert_eq!(day.not_after - day.not_before, 86_400 + 300);
    assert!(Validity {
        not_before: 10,
        not_after: 10
    }
    .asn1()
    .is_err());
}

#[test]
fn serials_are_positive_and_16_bytes() {
    for _ in 0..32 {
        let serial = random_serial().unwrap().to_bn().unwrap();
        assert_eq!(serial.num_bytes(), 16);
        assert!(!serial.is_negative());
    }
}
