//! TPMT_PUBLIC and TPM2B_PUBLIC (`tpm_proto::public`): what the CA reads from an enrolment's
//! AIK and the host tools read from TPMs. No panic; a parsed area has a name of its name
//! algorithm's size, and the TPM2B form parses to the same area as its TPMT body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tpm_proto::public::TpmPublic;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = TpmPublic::parse(data) {
        let _ = p.aik_violations();
        if let Ok(name) = p.name() {
            assert!(name.len() >= 2);
            assert_eq!(u16::from_be_bytes([name[0], name[1]]), p.name_alg);
        }
        let mut tpm2b = (data.len() as u16).to_be_bytes().to_vec();
        tpm2b.extend_from_slice(data);
        if data.len() <= usize::from(u16::MAX) {
            assert_eq!(TpmPublic::parse_tpm2b(&tpm2b).ok(), Some(p));
        }
    }
    if let Ok(p) = TpmPublic::parse_tpm2b(data) {
        assert_eq!(TpmPublic::parse(&data[2..]).ok(), Some(p));
    }
});
