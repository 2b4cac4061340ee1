//! Sealing against a real TPM: swtpm stands in for the host's hardware TPM and is reached
//! through tpm2-tss' swtpm TCTI, exactly as `device:/dev/tpmrm0` would be in production.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use host_tpm::{HostTpm, HostTpmError, SealedBlob};
use testbed::HostTpmSimulator;

/// The host TPM of these tests: swtpm over TCP (see `testbed::host_tpm`).
struct Swtpm(HostTpmSimulator);

impl Swtpm {
    fn start(state: &Path) -> Swtpm {
        Swtpm(HostTpmSimulator::start(state).expect("start the host TPM simulator"))
    }

    fn tcti(&self) -> String {
        self.0.tcti()
    }
}

#[test]
fn seal_survives_a_tpm_restart_and_unseals() {
    let dir = tempfile::tempdir().unwrap();
    let secret = b"per-instance state key: 32 bytes";
    let blob = {
        let tpm = Swtpm::start(&dir.path().join("host-tpm"));
        let mut host = HostTpm::connect(&tpm.tcti()).unwrap();
        let blob = host.seal(secret, &[]).unwrap();
        assert_eq!(*host.unseal(&blob).unwrap(), secret);
        blob.to_bytes()
    };
    // A new swtpm process on the same state: the host rebooted, the daemon restarted.
    let tpm = Swtpm::start(&dir.path().join("host-tpm"));
    let mut host = HostTpm::connect(&tpm.tcti()).unwrap();
    let blob = SealedBlob::from_bytes(&blob).unwrap();
    assert_eq!(*host.unseal(&blob).unwrap(), secret);
}

#[test]
fn pcr_bound_seal_fails_clearly_after_the_pcr_changes() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start(&dir.path().join("host-tpm"));
    let mut host = HostTpm::connect(&tpm.tcti()).unwrap();
    let blob = host.seal(b"only while PCR 16 is unchanged", &[16]).unwrap();
    assert_eq!(
        *host.unseal(&blob).unwrap(),
        b"only while PCR 16 is unchanged"
    );
    host.pcr_extend_sha256(16, [0x42; 32]).unwrap();
    match host.unseal(&blob) {
        Err(e @ HostTpmError::PcrPolicyMismatch { .. }) => {
            assert!(e.to_string().contains("PCRs [16] no longer match"), "{e}");
        }
        other => panic!("expected a PCR policy mismatch, got {other:?}"),
    }
}

#[test]
fn a_blob_from_another_tpm_does_not_unseal() {
    let dir = tempfile::tempdir().unwrap();
    let a = Swtpm::start(&dir.path().join("a"));
    let b = Swtpm::start(&dir.path().join("b"));
    let blob = HostTpm::connect(&a.tcti())
        .unwrap()
        .seal(b"for TPM a only", &[])
        .unwrap();
    let err = HostTpm::connect(&b.tcti())
        .unwrap()
        .unseal(&blob)
        .unwrap_err();
    assert!(
        matches!(
            err,
            HostTpmError::Tpm {
                operation: "Load (sealed object)",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn unreachable_tpm_and_bad_tcti_are_clear_errors() {
    let err = HostTpm::connect("swtpm:host=127.0.0.1,port=1").unwrap_err();
    assert!(matches!(err, HostTpmError::Connect { .. }), "{err}");
    let err = HostTpm::connect("no-such-tcti-kind").unwrap_err();
    assert!(err.to_string().contains("no-such-tcti-kind"), "{err}");
}

// Issue 11, item 6: a blob sealed with an authValue does not unseal through a nullauth
// session, nor with a wrong value; with and without a PCR policy.
#[test]
fn a_blob_sealed_with_an_auth_value_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start(&dir.path().join("host-tpm"));
    let mut host = HostTpm::connect(&tpm.tcti()).unwrap();
    let auth = [0x5a; 32];
    for pcrs in [&[][..], &[16][..]] {
        let blob = host.seal_with_auth(b"instance key", pcrs, &auth).unwrap();
        assert_eq!(
            *host.unseal_with_auth(&blob, &auth).unwrap(),
            b"instance key"
        );
        // Through a nullauth session: refused (with PCRs, the session lacks PolicyPassword,
        // so the policy itself fails).
        match host.unseal_with_auth(&blob, &[]) {
            Err(HostTpmError::AuthFailed) if pcrs.is_empty() => {}
            Err(HostTpmError::PcrPolicyMismatch { .. }) if !pcrs.is_empty() => {}
            other => panic!("PCRs {pcrs:?}: nullauth unsealed or failed oddly: {other:?}"),
        }
        match host.unseal_with_auth(&blob, &[0x5b; 32]) {
            Err(HostTpmError::AuthFailed) => {}
            other => panic!("PCRs {pcrs:?}: expected an authorization failure, got {other:?}"),
        }
        // The TPM still works for the right value afterwards (noDA: no lockout).
        assert_eq!(
            *host.unseal_with_auth(&blob, &auth).unwrap(),
            b"instance key"
        );
    }
}
