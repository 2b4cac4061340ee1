//! A stopped vTPM instance's identity, read and refreshed offline (ADR 0012).
//!
//! [`certificates`] reads what a guest would read from NV: the vEK certificates (RSA
//! 0x01c00002, ECC 0x01c0000a) and the chain above them (0x01c00100...). [`refresh`] brings
//! that up to date with the host directory after `vtpm-host renew` or a re-certified
//! coprocessor, changing only what must change ([`identity::refresh_ek_chain`]).
//!
//! Both open the instance like `provision` does: its directory lock is taken, so a running
//! daemon makes them fail ([`AgentError::State`]). A running instance is refreshed by its
//! daemon (ADR 0012: the daemon calls the same [`identity::refresh_ek_chain`] with its
//! platform authorization); this module is the offline path.

use std::path::Path;

use coprocessor::libtpms::LibtpmsEngine;
use coprocessor::Coprocessor;
use identity::provision::{read_chain, run, startup_if_needed};
use identity::{read_ek_cert, refresh_ek_chain, CoprocessorKey, EkKind, Refreshed, Validity};
use log::info;
use openssl::x509::X509;
use tpm_proto::commands as c;
use vtpm_state::keys::HostKey;
use vtpm_state::EncryptedStore;

use crate::{AgentError, HostDir};

/// The certificates in a vTPM instance's NV.
#[derive(Debug, Clone)]
pub struct InstanceCertificates {
    pub rsa_vek: Option<X509>,
    pub ecc_vek: Option<X509>,
    /// From 0x01c00100: the coprocessor certificate, then the host AIK certificate.
    pub chain: Vec<X509>,
}

/// Runs `f` on the stopped instance in `state_dir`, started if it was not (and left
/// waiting for Startup again, as found), its volatile state kept.
fn with_stopped_instance<T>(
    state_dir: &Path,
    instance_key: &HostKey,
    f: impl FnOnce(&mut dyn Coprocessor) -> Result<T, AgentError>,
) -> Result<T, AgentError> {
    // Opening a directory without an instance would create a new one: refuse it first.
    if EncryptedStore::inspect(state_dir)?.is_none() {
        return Err(AgentError::NotProvisioned {
            state_dir: state_dir.to_owned(),
        });
    }
    let (store, _) = EncryptedStore::open(state_dir, instance_key, "libtpms")?;
    let mut engine = LibtpmsEngine::start(Box::new(store))?;
    let started_here = startup_if_needed(&mut engine)?;
    let mut result = f(&mut engine);
    if started_here {
        let restored = run(&mut engine, c::shutdown(c::TPM_SU_CLEAR))
            .map_err(AgentError::from)
            .and_then(|resp| match tpm_proto::response_code(&resp) {
                Ok(0) => Ok(()),
                Ok(code) => Err(AgentError::Vtpm {
                    command: "Shutdown",
                    code,
                    hint: String::new(),
                }),
                Err(e) => Err(AgentError::Invalid {
                    what: "Shutdown response".into(),
                    reason: e.to_string(),
                }),
            })
            .and_then(|()| engine.power_cycle().map_err(AgentError::from));
        if let Err(e) = restored {
            result = result.and(Err(e));
        }
    }
    // Keep whatever volatile state the instance had (the engine consumed the saved one).
    if let Err(e) = engine.save() {
        result = result.and(Err(e.into()));
    }
    result
}

/// Reads the vEK certificates and their chain from the NV of the stopped instance.
pub fn certificates(
    state_dir: &Path,
    instance_key: &HostKey,
) -> Result<InstanceCertificates, AgentError> {
    with_stopped_instance(state_dir, instance_key, |engine| {
        Ok(InstanceCertificates {
            rsa_vek: read_ek_cert(engine, EkKind::Rsa2048)?,
            ecc_vek: read_ek_cert(engine, EkKind::EccP256)?,
            chain: read_chain(engine)?
                .iter()
                .map(|der| X509::from_der(der))
                .collect::<Result<_, _>>()?,
        })
    })
}

/// Refreshes the identity in the NV of the stopped instance from the host directory: the
/// chain becomes the current coprocessor and host AIK certificates, and the vEK
/// certificates are issued again (for `validity`, capped at the coprocessor certificate's
/// end) if they are due for renewal (a third of their lifetime left), would outlive the
/// coprocessor certificate, or do not verify under it.
pub fn refresh(
    state_dir: &Path,
    instance_key: &HostKey,
    dir: &HostDir,
    coprocessor_key: &HostKey,
    validity: Validity,
) -> Result<Refreshed, AgentError> {
    let coprocessor_cert = dir.coprocessor_cert()?;
    let host_aik_cert = dir.host_aik_cert()?;
    let key = CoprocessorKey::open(dir.path(), coprocessor_key)?;
    let refreshed = with_stopped_instance(state_dir, instance_key, |engine| {
        Ok(refresh_ek_chain(
            engine,
            &key,
            &coprocessor_cert,
            std::slice::from_ref(&host_aik_cert),
            &validity,
            &|cert| crate::due(cert).unwrap_or(true),
        )?)
    })?;
    info!(
        "identity of {} refreshed: vEK certificates {}, chain {}",
        state_dir.display(),
        if refreshed.reissued {
            "re-issued"
        } else {
            "kept"
        },
        if refreshed.chain_rewritten {
            "rewritten"
        } else {
            "unchanged"
        }
    );
    Ok(refreshed)
}
