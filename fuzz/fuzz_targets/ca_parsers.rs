//! What the CA parses out of requests, called directly: certificate PEM (the store's
//! `put_cert`, a coprocessor chain), an AIK's TPM2B_PUBLIC / TPMT_PUBLIC, an EK certificate in
//! DER all the way to TPM2_MakeCredential, and x509-cert's DER decoder. No panic; what
//! x509-cert decodes re-encodes to a fixed point (the same certificate, the same bytes).
//!
//! Input: a mode byte, then the payload (0: PEM; 1: PEM entries separated by NUL; 2: TPM2B_PUBLIC;
//! 3: TPMT_PUBLIC; 4: an EK certificate in DER; 5: a certificate in DER for x509-cert).
#![no_main]

use der::{Decode, Encode};
use libfuzzer_sys::fuzz_target;
use openssl::x509::X509;
use vtpm_ca::aik::AikPublic;
use vtpm_ca::enroll::Endorsement;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    match mode % 6 {
        0 => {
            let _ = vtpm_ca::certstore::parse_pem(&String::from_utf8_lossy(payload));
        }
        1 => {
            let pems: Vec<String> = payload
                .split(|b| *b == 0)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            let _ = vtpm_ca::coprocessor::parse_chain(&pems);
        }
        2 | 3 => {
            let aik = if mode % 6 == 2 {
                AikPublic::from_tpm2b(payload)
            } else {
                AikPublic::from_tpmt(payload)
            };
            if let Ok(aik) = aik {
                let _ = aik.violations();
                assert!(aik.name().len() > 2);
            }
        }
        4 => {
            if let Ok(cert) = X509::from_der(payload) {
                let _ = Endorsement::of(&cert);
                if let Ok(made) =
                    vtpm_ca::credential::make_credential(&cert, &[0x00, 0x0b, 1, 2, 3], &[9; 32])
                {
                    assert!(!made.credential_blob.is_empty());
                }
            }
        }
        _ => {
            // x509-cert accepts a little more than DER (a version v1 encoded explicitly, which
            // DER omits as the DEFAULT) and re-encodes it canonically: its own encoding must be
            // a fixed point.
            if let Ok(cert) = x509_cert::Certificate::from_der(payload) {
                let der = cert.to_der().expect("a decoded certificate encodes");
                let again = x509_cert::Certificate::from_der(&der).expect("its encoding decodes");
                assert_eq!(again, cert, "re-encoding changed the certificate");
                assert_eq!(again.to_der().expect("encodes"), der, "encoding not stable");
            }
        }
    }
});
