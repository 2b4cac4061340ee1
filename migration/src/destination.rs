//! The destination's side of a migration (ADR 0010), shared by the daemon (DEVICE_STATE
//! LOAD) and `vtpm-migrate import` (a stopped instance):
//!
//! 1. [`accept`]: every check of the package ([`crate::seal::verify`]: form, ticket,
//!    destination binding, epoch, chain, signature), the revocation of the source's two
//!    certificates at the CA, the claim at the controller (once per package), decryption.
//!    Nothing is written before all of it passed.
//! 2. [`install`]: the instance goes into a scratch engine (on an in-memory store) first;
//!    once libtpms accepted it, its vEK certificates are re-issued under this host's
//!    coprocessor certificate, the pending record is written and only then the instance is
//!    created in the state directory (with the id it had) and the engine switched to it.
//! 3. The caller reports "imported"; the instance serves once the controller committed it
//!    ([`crate::source::decision`]); if the migration was aborted it is destroyed.

use std::path::Path;
use std::time::Duration;

use coprocessor::{Coprocessor, EngineState};
use identity::provision::provision_ek;
use identity::Validity;
use log::{info, warn};
use vtpm_state::keys::HostKey;
use vtpm_state::Reserved;

use crate::api::Role;
use crate::client::{retry, Client, ClientError};
use crate::host::HostMaterial;
use crate::pending::{self, Pending};
use crate::refusal::Refusal;
use crate::seal::{self, Trust, Verified};
use crate::source::PATIENCE;
use crate::store::SharedStore;

/// Lifetime of the re-issued vEK certificates (as `vtpm-host provision`'s default).
pub const VEK_VALIDITY: Duration = Duration::from_secs(3650 * 86_400);

/// A package that passed every check, claimed, decrypted.
#[derive(Debug)]
pub struct Accepted {
    pub verified: Verified,
    pub state: EngineState,
}

/// Checks a certificate's revocation at the CA.
fn revocation(
    ca: &vtpm_ca::Client,
    which: &'static str,
    cert: &openssl::x509::X509,
) -> Result<(), Refusal> {
    let fingerprint = vtpm_ca::fingerprint(cert).map_err(|e| Refusal::Crypto(e.to_string()))?;
    let status = ca
        .status(&fingerprint)
        .map_err(|e| Refusal::RevocationUnavailable(e.to_string()))?;
    match status.status {
        vtpm_ca::api::Status::Good => Ok(()),
        other => Err(Refusal::Revoked {
            certificate: which,
            status: format!("{other:?}").to_lowercase(),
        }),
    }
}

fn claim_refused(e: ClientError) -> Refusal {
    match e {
        ClientError::Api { code, detail, .. } => Refusal::ClaimRefused { code, detail },
        other => Refusal::ControllerUnavailable(other.to_string()),
    }
}

/// Checks, claims and decrypts a package for this host.
pub fn accept(
    bytes: &[u8],
    host: &HostMaterial,
    trust: &Trust,
    client: &Client,
    ca: &vtpm_ca::Client,
    vm: Option<&str>,
    now: u64,
) -> Result<Accepted, Refusal> {
    // The epoch this host knows of the package's vTPM (the header is checked in `verify`).
    let known = match crate::package::decode(bytes) {
        Ok(p) => host
            .known_epoch(&p.header.instance)
            .map_err(|e| Refusal::Store(e.to_string()))?,
        Err(_) => None,
    };
    let me = host
        .recipient()
        .map_err(|e| Refusal::Crypto(e.to_string()))?;
    let verified = seal::verify(bytes, trust, &me, now, known)?;
    // A daemon launched for one VM takes in only that VM's vTPM (issue 11, item 7): the
    // ticket names the VM, signed by the controller; refused before anything is claimed.
    if let Some(this_vm) = vm {
        if verified.ticket.ticket.vm != this_vm {
            return Err(Refusal::WrongVm {
                ticket_vm: verified.ticket.ticket.vm.clone(),
                this_vm: this_vm.to_owned(),
            });
        }
    }
    revocation(ca, "coprocessor", &verified.coprocessor_cert)?;
    revocation(ca, "host AIK", &verified.host_aik_cert)?;
    let mut claim = [0u8; 16];
    openssl::rand::rand_bytes(&mut claim).map_err(|e| Refusal::Crypto(e.to_string()))?;
    let id = verified.ticket.ticket.migration;
    retry(PATIENCE, || client.claim(&id, &verified.digest, &claim)).map_err(claim_refused)?;
    info!("migration {id}: package claimed");
    match seal::open(&verified, &host.migration_key) {
        Ok(state) => Ok(Accepted { verified, state }),
        Err(e) => {
            abort_after_claim(client, &verified, &e);
            Err(e)
        }
    }
}

/// A package that was claimed but cannot be imported: the migration is aborted at once
/// (best effort) so that the source resumes without waiting for the migration to expire.
pub fn abort_after_claim(client: &Client, verified: &Verified, why: &Refusal) {
    let id = verified.ticket.ticket.migration;
    if let Err(e) = retry(PATIENCE, || {
        client.abort(&id, &format!("the destination could not import: {why}"))
    }) {
        warn!("migration {id}: cannot abort after a failed import: {e}");
    }
}

/// Imports an accepted instance: into `engine` (running on `store`, in memory), re-chained,
/// then made durable in the reserved state directory, the pending record first. On failure
/// nothing is durable; the reservation comes back unless the failure was creating the
/// instance in it.
pub fn install(
    engine: &mut dyn Coprocessor,
    store: &SharedStore,
    reserved: Reserved,
    accepted: &Accepted,
    host: &HostMaterial,
    host_key: &HostKey,
) -> Result<(), (Refusal, Option<Reserved>)> {
    let t = &accepted.verified.ticket.ticket;
    if let Err(e) = engine.import_state(&accepted.state) {
        return Err((Refusal::Import(e.to_string()), Some(reserved)));
    }
    let chain = &host.credentials.chain;
    let validity = Validity::starting_now(VEK_VALIDITY);
    // The platform hierarchy of a daemon's engine is locked (its platform firmware locks
    // every state it takes in, ADR 0011): the vEK indices are written with it opened.
    if let Err(e) = coprocessor::with_platform(engine, |engine| {
        provision_ek(
            engine,
            &host.credentials.key,
            &chain[0],
            &chain[1..],
            &validity,
        )
    }) {
        return Err((Refusal::Rechain(e.to_string()), Some(reserved)));
    }
    let mut exported = match engine.export_state() {
        Ok(s) => s,
        Err(e) => return Err((Refusal::Import(e.to_string()), Some(reserved))),
    };
    let dir = reserved.dir().to_owned();
    let record = Pending {
        role: Role::Destination,
        migration: t.migration.to_string(),
        instance: t.instance.to_string(),
        epoch: t.epoch,
        peer: t.source.clone(),
    };
    if let Err(e) = pending::write(&dir, &record) {
        return Err((Refusal::Store(e.to_string()), Some(reserved)));
    }
    // Only the permanent state: the volatile state lives in the running engine, and a
    // clean stop saves it like any other.
    let blobs = [(
        coprocessor::libtpms::PERMANENT_BLOB.to_owned(),
        std::mem::take(&mut exported.permanent),
    )]
    .into();
    match reserved.create(host_key, "libtpms", t.instance, blobs) {
        Ok(durable) => {
            store.install(durable);
            info!(
                "migration {}: instance {} imported from host {} and made durable in {}",
                t.migration,
                t.instance,
                t.source,
                dir.display()
            );
            Ok(())
        }
        Err(e) => {
            let _ = pending::remove(&dir);
            Err((Refusal::Store(e.to_string()), None))
        }
    }
}

/// The pending record of an imported instance waiting for its commit.
pub fn is_waiting(state_dir: &Path) -> Result<bool, pending::PendingError> {
    Ok(pending::read(state_dir)?.is_some_and(|p| p.role == Role::Destination))
}
