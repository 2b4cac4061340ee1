//! The vAIK from the host (`vtpm-host enroll-vaik`): the host-side equivalent of what a guest
//! does with `tpm2_createek`, `tpm2_createak` and `tpm2_activatecredential` (ADR 0008), for
//! an instance that is not running, with plain TPM commands through its engine.
//!
//! 1. The instance is opened like [`crate::provision_instance`] does (its directory lock is
//!    taken: a running daemon makes this fail) and started if it is not (Startup(CLEAR);
//!    then Shutdown(CLEAR) and a power cycle at the end, leaving it waiting for the guest's
//!    Startup; a TPM that was running, a paused guest's, is left running).
//! 2. The vEK certificate (NV 0x01c00002, RSA) and its chain (0x01c00100, 0x01c00101, ...)
//!    are read from NV, as a guest would read them.
//! 3. The vAIK, an ECC P-256 restricted signing key
//!    ([`tpm_proto::commands::ecc_p256_aik_template`]), is created as a primary key of the
//!    owner hierarchy, and the RSA vEK as a primary of the endorsement hierarchy (the TCG
//!    template, so it is the key the vEK certificate certifies).
//! 4. The CA gets the vEK chain and the vAIK's public area (`enroll/start`), and answers
//!    with a credential for the vAIK's name encrypted to the vEK.
//! 5. The vTPM activates it: a policy session satisfied by PolicySecret(endorsement) for
//!    the vEK, an empty password for the vAIK.
//! 6. The CA checks the secret (`enroll/finish`) and issues the vAIK certificate.
//!
//! Only then is the vAIK made persistent at the requested handle (default
//! [`DEFAULT_AIK_HANDLE`]), where the guest finds the key its certificate is for, and the
//! certificate written to `<state_dir>/vaik.pem`. A refusal by the CA or the TPM changes
//! neither the persistent handle nor `vaik.pem`.
//!
//! # Re-issuing
//!
//! Running it again re-issues: a new certificate (new serial) and the key made persistent at
//! the handle again, replacing what was there. Being a primary key, the vAIK is derived from
//! the owner seed and its template, so it is the same key until the owner hierarchy is
//! cleared (TPM2_Clear): the guest's handle keeps working. What occupies the handle is only
//! evicted if it is an attestation key (restricted signing); anything else there (a guest's
//! EK or storage key) is refused, naming the handle.
//!
//! # Authorization
//!
//! Owner and endorsement hierarchies are used with their empty passwords, which a guest may
//! have changed (`tpm2_changeauth`): then this fails with the TPM's error, and the guest has
//! to enrol its vAIK itself.

use std::path::Path;

use coprocessor::libtpms::LibtpmsEngine;
use coprocessor::Coprocessor;
use identity::provision::{read_nv, run, startup_if_needed, EK_CHAIN_FIRST_INDEX, EK_CHAIN_MAX};
use identity::{read_ek_cert, EkKind, EkPublic};
use log::{info, warn};
use openssl::x509::X509;
use tpm_proto::commands as c;
use tpm_proto::public::TpmPublic;
use tpm_proto::rc::{self, fmt1};
use tpm_proto::WireError;
use vtpm_ca::api::{EnrollFinishRequest, EnrollStartRequest, Kind};
use vtpm_ca::client::Client;
use vtpm_state::keys::HostKey;
use vtpm_state::EncryptedStore;

use crate::{b64, tpm2b, unb64, AgentError};

/// Where the vAIK is made persistent unless told otherwise: in the owner (storage)
/// persistent range, clear of the handles the TCG Provisioning Guidance reserves (SRK
/// 0x81000001, EKs 0x81010001 RSA / 0x81010002 ECC) that guests' tools use.
pub const DEFAULT_AIK_HANDLE: u32 = 0x8100_8001;
/// The vAIK certificate, in the instance's state directory.
pub const VAIK_CERT: &str = "vaik.pem";
/// Persistent handles the owner hierarchy may use with TPM2_EvictControl.
pub const OWNER_PERSISTENT: std::ops::RangeInclusive<u32> = 0x8100_0000..=0x817F_FFFF;

/// A vAIK certificate issued by [`enroll_vaik`].
#[derive(Debug, Clone)]
pub struct VaikEnrolled {
    /// The vAIK certificate (also in `<state_dir>/vaik.pem`).
    pub certificate: X509,
    /// The persistent handle of the vAIK in the instance.
    pub aik_handle: u32,
    /// Its name in the CA's certificate store (`aik/vtpm/<subject>`).
    pub name: String,
}

/// Enrols (or re-issues) the vAIK of the instance in `state_dir`, whose state key
/// `instance_key` protects, with the CA `ca`: see the module documentation. `subject` is the
/// certificate's CN (default: the instance id); `aik_handle` the persistent handle (in
/// [`OWNER_PERSISTENT`]). The instance must not be running.
pub fn enroll_vaik(
    state_dir: &Path,
    instance_key: &HostKey,
    ca: &Client,
    subject: Option<&str>,
    aik_handle: u32,
) -> Result<VaikEnrolled, AgentError> {
    if !OWNER_PERSISTENT.contains(&aik_handle) {
        return Err(AgentError::Invalid {
            what: format!("vAIK handle {aik_handle:#010x}"),
            reason: format!(
                "not a persistent handle of the owner hierarchy ({:#010x}..={:#010x})",
                OWNER_PERSISTENT.start(),
                OWNER_PERSISTENT.end()
            ),
        });
    }
    // Opening a directory without an instance would create a new one: refuse it first.
    if EncryptedStore::inspect(state_dir)?.is_none() {
        return Err(AgentError::NotProvisioned {
            state_dir: state_dir.to_owned(),
        });
    }
    let (store, _) = EncryptedStore::open(state_dir, instance_key, "libtpms")?;
    let instance = store.instance();
    let subject = subject.map_or_else(|| instance.to_string(), str::to_owned);
    let mut engine = LibtpmsEngine::start(Box::new(store))?;
    let started_here = startup_if_needed(&mut engine)?;
    let mut result = enroll_started(&mut engine, state_dir, ca, &subject, aik_handle);
    if started_here {
        // Leave the TPM as found: shut down in order, then waiting for the guest's Startup.
        let restored = run(&mut engine, c::shutdown(c::TPM_SU_CLEAR))
            .map_err(AgentError::from)
            .and_then(|resp| check("Shutdown", &resp, |r| success(r).map(drop)))
            .and_then(|()| engine.power_cycle().map_err(AgentError::from));
        if let Err(e) = restored {
            result = result.and(Err(e));
        }
    }
    // Keep whatever volatile state the instance had (the engine consumed the saved one).
    if let Err(e) = engine.save() {
        result = result.and(Err(e.into()));
    }
    let done = result?;
    let path = state_dir.join(VAIK_CERT);
    write_private(&path, &done.certificate.to_pem()?)?;
    info!(
        "vAIK of instance {instance} enrolled as {} (persistent handle {:#010x}), certificate {}",
        done.name,
        done.aik_handle,
        path.display()
    );
    Ok(done)
}

fn enroll_started(
    engine: &mut dyn Coprocessor,
    state_dir: &Path,
    ca: &Client,
    subject: &str,
    aik_handle: u32,
) -> Result<VaikEnrolled, AgentError> {
    let vek = read_ek_cert(engine, EkKind::Rsa2048)?.ok_or_else(|| AgentError::NotProvisioned {
        state_dir: state_dir.to_owned(),
    })?;
    let mut chain = vec![pem(&vek)?];
    for i in 0..EK_CHAIN_MAX as u32 {
        let index = EK_CHAIN_FIRST_INDEX + i;
        match read_nv(engine, index, index)? {
            Some(der) => chain.push(pem(&X509::from_der(&der)?)?),
            None => break,
        }
    }
    // Everything loaded is flushed whatever happens: a running TPM keeps no leftovers.
    let mut loaded = Vec::new();
    let result = with_objects(engine, &mut loaded, &vek, chain, ca, subject, aik_handle);
    for handle in loaded.clone().into_iter().rev() {
        if let Err(e) = flush(engine, &mut loaded, handle) {
            warn!("flushing handle {handle:#010x} from the vTPM: {e}");
        }
    }
    result
}

/// FlushContext of `handle`, which leaves `loaded`.
fn flush(
    engine: &mut dyn Coprocessor,
    loaded: &mut Vec<u32>,
    handle: u32,
) -> Result<(), AgentError> {
    loaded.retain(|h| *h != handle);
    let resp = run(engine, c::flush_context(handle))?;
    check("FlushContext", &resp, |r| success(r).map(drop))
}

fn with_objects(
    engine: &mut dyn Coprocessor,
    loaded: &mut Vec<u32>,
    vek: &X509,
    chain: Vec<String>,
    ca: &Client,
    subject: &str,
    aik_handle: u32,
) -> Result<VaikEnrolled, AgentError> {
    // Before anything is loaded (libtpms has three object slots, and reading a persistent
    // object takes one) and before the CA issues anything: is the handle free, or the
    // vAIK's to replace?
    let occupied = persistent_aik_at(engine, aik_handle)?;

    const PRIMARY: &str = "CreatePrimary";
    let resp = run(
        engine,
        c::create_primary(c::TPM_RH_ENDORSEMENT, &EkKind::Rsa2048.template()),
    )?;
    let (ek, ek_public) = check(PRIMARY, &resp, c::parse_create_primary)?;
    loaded.push(ek);
    check_vek_cert(vek, &ek_public)?;

    let resp = run(
        engine,
        c::create_primary(c::TPM_RH_OWNER, &c::ecc_p256_aik_template()),
    )?;
    let (aik, aik_public) = check(PRIMARY, &resp, c::parse_create_primary)?;
    loaded.push(aik);

    let start = ca.enroll_start(&EnrollStartRequest {
        kind: Kind::Vtpm,
        subject: subject.to_owned(),
        ek_cert_chain: chain,
        aik_public: b64(&tpm2b(&aik_public)?),
    })?;

    const SESSION: &str = "StartAuthSession";
    let mut nonce = [0u8; 16];
    openssl::rand::rand_bytes(&mut nonce)?;
    let resp = run(engine, c::start_auth_session_policy(&nonce))?;
    let (session, _nonce_tpm) = check(SESSION, &resp, c::parse_start_auth_session)?;
    loaded.push(session);
    const POLICY: &str = "PolicySecret";
    let resp = run(engine, c::policy_secret(c::TPM_RH_ENDORSEMENT, session))?;
    check(POLICY, &resp, c::parse_policy_secret)?;
    let resp = run(
        engine,
        c::activate_credential(
            aik,
            ek,
            session,
            &unb64("credential blob", &start.credential_blob)?,
            &unb64("encrypted secret", &start.encrypted_secret)?,
        ),
    )?;
    let secret = c::parse_activate_credential(&resp).map_err(|e| match e {
        WireError::Tpm(code) => activation_failed(code),
        source => AgentError::Identity(identity::IdentityError::Wire {
            command: "ActivateCredential",
            source,
        }),
    })?;
    // The vEK and the session are done with: free their slots for EvictControl.
    flush(engine, loaded, session)?;
    flush(engine, loaded, ek)?;

    let done = ca.enroll_finish(&EnrollFinishRequest {
        session: start.session,
        secret: b64(&secret),
    })?;
    let certificate = X509::from_pem(done.certificate.as_bytes())?;
    let aik_key =
        vtpm_ca::aik::AikPublic::from_tpmt(&aik_public).map_err(|e| AgentError::Invalid {
            what: "the vAIK's public area".into(),
            reason: e.to_string(),
        })?;
    if !certificate.public_key()?.public_eq(aik_key.public_key()) {
        return Err(AgentError::Invalid {
            what: format!("the vAIK certificate the CA issued ({})", done.name),
            reason: "it is not for the vAIK's key".into(),
        });
    }

    const EVICT: &str = "EvictControl";
    if occupied {
        let resp = run(engine, c::evict_control(aik_handle, aik_handle))?;
        check(EVICT, &resp, |r| success(r).map(drop))?;
    }
    let resp = run(engine, c::evict_control(aik, aik_handle))?;
    check(EVICT, &resp, |r| success(r).map(drop))?;
    Ok(VaikEnrolled {
        certificate,
        aik_handle,
        name: done.name,
    })
}

/// Whether `handle` holds an attestation key (which is replaced); `false` if it is free; an
/// error if it holds anything else.
fn persistent_aik_at(engine: &mut dyn Coprocessor, handle: u32) -> Result<bool, AgentError> {
    const WHAT: &str = "ReadPublic";
    let resp = run(engine, c::read_public(handle))?;
    match c::parse_read_public(&resp) {
        Err(WireError::Tpm(code)) if rc::base(code) == rc::HANDLE => Ok(false),
        Err(e) => Err(wire(WHAT, e)),
        Ok((public, _)) => {
            let violations = TpmPublic::parse(&public)
                .map(|p| p.aik_violations())
                .unwrap_or_else(|e| vec![e.to_string()]);
            if violations.is_empty() {
                Ok(true)
            } else {
                Err(AgentError::Invalid {
                    what: format!("persistent handle {handle:#010x} of the vTPM"),
                    reason: format!(
                        "it holds an object that is not an attestation key ({}); it is not \
                         replaced: choose another --aik-handle, or evict it in the guest",
                        violations.join("; ")
                    ),
                })
            }
        }
    }
}

/// The vEK certificate must be for the EK the TPM derives now (a changed endorsement seed
/// would make activation fail obscurely).
fn check_vek_cert(vek: &X509, ek_public: &[u8]) -> Result<(), AgentError> {
    let matches = match EkPublic::from_tpmt_public(ek_public) {
        Ok(ek @ EkPublic::Rsa { .. }) => vek.public_key()?.public_eq(&*ek.to_pkey()?),
        _ => false,
    };
    if matches {
        Ok(())
    } else {
        Err(AgentError::Invalid {
            what: "the vEK certificate at NV 0x01c00002".into(),
            reason: "it does not certify the instance's RSA EK (was the endorsement seed \
                     changed?); run `vtpm-host provision` again"
                .into(),
        })
    }
}

fn activation_failed(code: u32) -> AgentError {
    let reason = match rc::base(code) {
        fmt1::INTEGRITY => {
            "the credential's integrity check failed: the CA made it for another vAIK or vEK"
        }
        fmt1::VALUE | fmt1::SIZE | fmt1::ECC_POINT | fmt1::INSUFFICIENT | rc::NO_RESULT => {
            "the encrypted secret does not decrypt with this instance's vEK"
        }
        fmt1::POLICY_FAIL | fmt1::AUTH_FAIL | fmt1::BAD_AUTH => {
            "the vEK's policy (PolicySecret with the endorsement hierarchy) or the vAIK's \
             authorization was not satisfied"
        }
        _ => "the TPM refused the credential",
    };
    AgentError::ActivationFailed {
        code,
        reason: reason.to_owned(),
    }
}

fn wire(command: &'static str, e: WireError) -> AgentError {
    match e {
        WireError::Tpm(code) => {
            let hint = match rc::base(code) {
                fmt1::BAD_AUTH | fmt1::AUTH_FAIL | fmt1::HIERARCHY => {
                    ": the owner or endorsement hierarchy is disabled or no longer has an \
                     empty password (changed by the guest?); the guest has to enrol its vAIK \
                     itself"
                }
                rc::OBJECT_MEMORY | rc::SESSION_MEMORY => {
                    ": the TPM has no free slot (the guest, paused, holds objects or sessions); \
                     power the guest off, or enrol the vAIK in the guest"
                }
                _ => "",
            };
            AgentError::Vtpm {
                command,
                code,
                hint: hint.to_owned(),
            }
        }
        source => AgentError::Identity(identity::IdentityError::Wire { command, source }),
    }
}

/// Parses a response with `parse`, naming `command` in the error.
fn check<T>(
    command: &'static str,
    resp: &[u8],
    parse: impl FnOnce(&[u8]) -> Result<T, WireError>,
) -> Result<T, AgentError> {
    parse(resp).map_err(|e| wire(command, e))
}

fn success(resp: &[u8]) -> Result<tpm_proto::ResponseReader<'_>, WireError> {
    tpm_proto::ResponseReader::success(resp)
}

fn pem(cert: &X509) -> Result<String, AgentError> {
    Ok(String::from_utf8_lossy(&cert.to_pem()?).into_owned())
}

/// Writes `data` to `path` atomically (temporary file, fsync, rename, directory fsync),
/// mode 0600.
fn write_private(path: &Path, data: &[u8]) -> Result<(), AgentError> {
    durable_fs::replace(path, data, 0o600, true).map_err(|source| AgentError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn activation_errors_explain_themselves() {
        // TPM_RC_INTEGRITY on parameter 1 (credentialBlob).
        let e = activation_failed(0x1df).to_string();
        assert!(e.contains("0x1df") && e.contains("integrity"), "{e}");
        let e = activation_failed(0x98e).to_string();
        assert!(e.contains("policy"), "{e}");
    }

    #[test]
    fn hierarchy_auth_errors_say_what_to_do() {
        let e = wire("CreatePrimary", WireError::Tpm(0x9a2)).to_string();
        assert!(
            e.contains("CreatePrimary") && e.contains("empty password"),
            "{e}"
        );
        let e = wire("ReadPublic", WireError::Tpm(0x902)).to_string();
        assert!(e.contains("no free slot"), "{e}");
        let e = wire("EvictControl", WireError::Tpm(0x14c)).to_string();
        assert!(e.contains("0x14c") && !e.contains("password"), "{e}");
    }

    #[test]
    fn vaik_is_written_private_and_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join(VAIK_CERT);
        write_private(&p, b"one").unwrap();
        write_private(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}
