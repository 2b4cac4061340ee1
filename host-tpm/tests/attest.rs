//! PCR reads and quotes by the host attestation key against a real TPM (swtpm over TCP),
//! checked independently: the signature with OpenSSL over the bytes the TPM returned, the
//! PCR digest recomputed from values extended here.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use host_tpm::{HostTpm, HostTpmError, ObjectBlob};
use openssl::sha::sha256;
use testbed::openssl::ecdsa_p256_verifies;
use testbed::HostTpmSimulator;
use tpm_proto::attest::{pcr_digest_sha256, QuoteAttest, Signature};
use tpm_proto::public::{PublicParams, TpmPublic};

/// SHA-256(old || digest): what PCR_Extend does.
fn extended(old: &[u8; 32], digest: &[u8; 32]) -> [u8; 32] {
    sha256(&[old.as_slice(), digest].concat())
}

fn verify_ecdsa(aik: &ObjectBlob, message: &[u8], signature: &[u8]) -> bool {
    let public = TpmPublic::parse(&aik.public).unwrap();
    let PublicParams::Ecc { x, y, .. } = public.params else {
        panic!("the AIK is ECC")
    };
    let Signature::Ecdsa { r, s, .. } = Signature::parse(signature).unwrap() else {
        panic!("the AIK signs with ECDSA")
    };
    ecdsa_p256_verifies(&x, &y, &sha256(message), &r, &s)
}

#[test]
fn pcr_values_and_a_quote_of_them_verify_independently() {
    let dir = tempfile::tempdir().unwrap();
    let sim = HostTpmSimulator::start(&dir.path().join("tpm")).unwrap();
    let tcti = sim.tcti();
    // Each step on its own short-lived connection, as the daemon does.
    let mut expected = [[0u8; 32]; 8];
    {
        let mut host = HostTpm::connect(&tcti).unwrap();
        for (pcr, value) in expected.iter_mut().enumerate() {
            let digest = sha256(format!("host boot stage {pcr}").as_bytes());
            host.pcr_extend_sha256(pcr as u8, digest).unwrap();
            *value = extended(value, &digest);
        }
    }
    let aik = HostTpm::connect(&tcti).unwrap().create_aik().unwrap();
    let values = HostTpm::connect(&tcti)
        .unwrap()
        .read_pcrs_sha256(&[7, 0, 1, 2, 3, 4, 5, 6, 0])
        .unwrap();
    assert_eq!(values, expected, "PCRs 0-7, ascending, once each");
    // More than one PCR_Read's worth (8) is read in several commands.
    let many = HostTpm::connect(&tcti)
        .unwrap()
        .read_pcrs_sha256(&(0..12).collect::<Vec<u8>>())
        .unwrap();
    assert_eq!(&many[..8], &expected);
    assert_eq!(many[8..], [[0u8; 32]; 4]);

    let nonce = sha256(b"verifier's nonce");
    let q = HostTpm::connect(&tcti)
        .unwrap()
        .quote(&aik, &[0, 1, 2, 3, 4, 5, 6, 7], &nonce)
        .unwrap();
    assert_eq!(q.pcrs, (0..8).collect::<Vec<u8>>());
    assert_eq!(q.pcr_values, expected);
    assert!(
        verify_ecdsa(&aik, &q.attest, &q.signature),
        "quote signature"
    );
    let parsed = QuoteAttest::parse(&q.attest).unwrap();
    assert_eq!(parsed.extra_data, nonce);
    assert_eq!(parsed.quote.sha256_pcrs().unwrap(), q.pcrs);
    assert_eq!(parsed.quote.pcr_digest, pcr_digest_sha256(&expected));
    let aik_name = TpmPublic::parse(&aik.public).unwrap().name().unwrap();
    assert_eq!(parsed.qualified_signer.len(), aik_name.len());
    // A tampered message does not verify.
    let mut forged = q.attest.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert!(!verify_ecdsa(&aik, &forged, &q.signature));

    // After another extend the quote follows the PCR.
    let d = sha256(b"late");
    HostTpm::connect(&tcti)
        .unwrap()
        .pcr_extend_sha256(3, d)
        .unwrap();
    let q2 = HostTpm::connect(&tcti)
        .unwrap()
        .quote(&aik, &[3], &nonce)
        .unwrap();
    assert_eq!(q2.pcr_values, vec![extended(&expected[3], &d)]);
    assert!(verify_ecdsa(&aik, &q2.attest, &q2.signature));
}

#[test]
fn quotes_refuse_bad_pcrs_and_keys_that_are_not_attestation_keys() {
    let dir = tempfile::tempdir().unwrap();
    let sim = HostTpmSimulator::start(&dir.path().join("tpm")).unwrap();
    let mut host = HostTpm::connect(&sim.tcti()).unwrap();
    let aik = host.create_aik().unwrap();
    assert!(matches!(
        host.quote(&aik, &[0, 24], b"n"),
        Err(HostTpmError::BadPcr(24))
    ));
    assert!(matches!(
        host.read_pcrs_sha256(&[30]),
        Err(HostTpmError::BadPcr(30))
    ));
    let not_an_aik = ObjectBlob {
        public: HostTpm::srk_template().unwrap().marshall_for_test(),
        private: aik.private.clone(),
    };
    assert!(matches!(
        host.quote(&not_an_aik, &[0], b"n"),
        Err(HostTpmError::NotAnAttestationKey(_))
    ));
    // Qualifying data longer than a TPM2B_DATA holds is the TPM's refusal, not a panic.
    assert!(host.quote(&aik, &[0], &[0u8; 100]).is_err());
    // The connection still works afterwards (nothing was left loaded).
    assert_eq!(host.read_pcrs_sha256(&[0]).unwrap().len(), 1);
}

trait MarshallForTest {
    fn marshall_for_test(&self) -> Vec<u8>;
}

impl MarshallForTest for tss_esapi::structures::Public {
    fn marshall_for_test(&self) -> Vec<u8> {
        use tss_esapi::traits::Marshall;
        self.marshall().unwrap()
    }
}
