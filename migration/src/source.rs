//! The source's side of a migration (ADR 0010), shared by the daemon (DEVICE_STATE SAVE)
//! and `vtpm-migrate export` (a stopped instance):
//!
//! 1. [`release`]: fetch the ticket for this instance from the controller and check it;
//!    seal the instance for the ticket's destination; write the pending record
//!    (`migration.pending`, from then on the instance is held); report "sealed" with the
//!    package's digest. The caller then hands the package out.
//! 2. [`decision`]: ask the controller until the migration is decided.
//! 3. [`destroy`] after a commit: the tombstone, the instance key record, the state; the
//!    new epoch recorded; "source deleted" reported. After an abort the caller removes the
//!    pending record and serves again.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use coprocessor::EngineState;
use log::{info, warn};
use vtpm_state::keys::InstanceId;
use vtpm_state::EncryptedStore;

use crate::api::{Role, State};
use crate::client::{retry, Client, ClientError};
use crate::host::HostMaterial;
use crate::pending::{self, Pending};
use crate::seal::{self, Trust};
use crate::ticket::{self, MigrationId, SignedTicket};

/// How long a party keeps retrying a controller that cannot be reached.
pub const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("no ticket for instance {instance}: {source}")]
    NoTicket {
        instance: InstanceId,
        #[source]
        source: ClientError,
    },
    #[error("the controller's ticket is unusable: {0}")]
    BadTicket(String),
    #[error("sealing the package: {0}")]
    Seal(#[from] seal::SealError),
    #[error("migration record: {0}")]
    Record(#[from] pending::PendingError),
    #[error("reporting the package sealed to the controller: {0}")]
    Report(#[source] ClientError),
    #[error("destroying the source's copy: {0}")]
    Destroy(#[from] vtpm_state::StateError),
    #[error("host directory: {0}")]
    Host(#[from] crate::host::HostError),
}

/// A package released for a migration.
#[derive(Debug)]
pub struct Released {
    pub migration: MigrationId,
    pub epoch: u64,
    pub destination: String,
    pub package: Vec<u8>,
}

/// The ticket of the migration of `instance` from this host, checked: signed by the
/// controller, for this instance, from this host, not expired.
pub fn fetch_ticket(
    client: &Client,
    trust: &Trust,
    host: &HostMaterial,
    instance: &InstanceId,
    vm: Option<&str>,
    now: u64,
) -> Result<SignedTicket, SourceError> {
    let resp = retry(PATIENCE, || client.ticket(&instance.to_string())).map_err(|source| {
        SourceError::NoTicket {
            instance: *instance,
            source,
        }
    })?;
    let bad = |why: String| SourceError::BadTicket(why);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&resp.ticket)
        .map_err(|e| bad(e.to_string()))?;
    let signed = ticket::decode(&bytes).map_err(|e| bad(e.to_string()))?;
    let key = trust
        .controller
        .public_key()
        .map_err(|e| bad(e.to_string()))?;
    signed.verify(&key).map_err(|e| bad(e.to_string()))?;
    let t = &signed.ticket;
    if t.instance != *instance || t.source != host.host_id || now >= t.expires_at {
        return Err(bad(format!(
            "the ticket is for instance {} from host {} until {}, not for instance {instance} \
             from this host {} now",
            t.instance, t.source, t.expires_at, host.host_id
        )));
    }
    // The vTPM of a daemon launched for one VM leaves only as that VM's.
    if let Some(vm) = vm {
        if t.vm != vm {
            return Err(bad(format!(
                "the ticket moves VM {:?}'s vTPM, this daemon serves VM {vm:?} (--vm-id)",
                t.vm
            )));
        }
    }
    Ok(signed)
}

/// The instance a source releases: which one, the VM it is bound to, where it lives.
#[derive(Debug, Clone, Copy)]
pub struct Releasing<'a> {
    pub instance: &'a InstanceId,
    /// The VM the instance is bound to (`--vm-id`): the ticket must name it.
    pub vm: Option<&'a str>,
    pub state_dir: &'a Path,
}

/// Releases `state` (the instance `what`) for the migration the controller authorised. On
/// `Err((e, false))` nothing changed and the instance may serve on; on `Err((e, true))` the
/// pending record is written: the instance is held until the controller decides.
pub fn release(
    state: &EngineState,
    what: Releasing<'_>,
    host: &HostMaterial,
    client: &Client,
    trust: &Trust,
    now: u64,
) -> Result<Released, (SourceError, bool)> {
    let Releasing {
        instance,
        vm,
        state_dir,
    } = what;
    let signed = fetch_ticket(client, trust, host, instance, vm, now).map_err(|e| (e, false))?;
    let package = seal::seal(
        &signed,
        state,
        &host.credentials.key,
        &host.credentials.chain,
    )
    .map_err(|e| (e.into(), false))?;
    let t = &signed.ticket;
    pending::write(
        state_dir,
        &Pending {
            role: Role::Source,
            migration: t.migration.to_string(),
            instance: instance.to_string(),
            epoch: t.epoch,
            peer: t.destination.clone(),
        },
    )
    .map_err(|e| (e.into(), false))?;
    let digest = openssl::sha::sha256(&package);
    retry(PATIENCE, || client.sealed(&t.migration, &digest))
        .map_err(|e| (SourceError::Report(e), true))?;
    info!(
        "migration {}: package of {} bytes released for host {} (epoch {})",
        t.migration,
        package.len(),
        t.destination,
        t.epoch
    );
    Ok(Released {
        migration: t.migration,
        epoch: t.epoch,
        destination: t.destination.clone(),
        package,
    })
}

/// Where a migration stands, as far as a party must act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Undecided(State),
    Committed,
    Aborted,
}

/// Asks the controller once.
pub fn decision(client: &Client, id: &MigrationId) -> Result<Decision, ClientError> {
    let view = client.migration(id)?;
    Ok(match view.state {
        s if s.is_committed() => Decision::Committed,
        State::Aborted => Decision::Aborted,
        s => Decision::Undecided(s),
    })
}

/// After a commit: destroys the source's copy (tombstone naming the migration, then the key
/// record, then the state), records the new epoch, removes the pending record and reports
/// "source deleted" (best effort: the commit is what decides).
pub fn destroy(
    store: EncryptedStore,
    record: &Pending,
    host: &HostMaterial,
    client: &Client,
) -> Result<(), SourceError> {
    let instance = store.instance();
    let dir = store.dir().to_owned();
    store.destroy(&format!(
        "migrated to host {} by migration {} (epoch {} -> {})",
        record.peer,
        record.migration,
        record.epoch,
        record.epoch + 1
    ))?;
    host.record_epoch(&instance, record.epoch + 1)?;
    pending::remove(&dir)?;
    if let Ok(id) = record.migration.parse::<MigrationId>() {
        if let Err(e) = retry(PATIENCE, || client.source_deleted(&id)) {
            warn!("migration {id}: cannot report the source deleted: {e}");
        }
    }
    info!("migration {}: source deleted", record.migration);
    Ok(())
}
