//! The migration controller's decisions (ADR 0010): who owns each vTPM, which move is
//! authorised, and the order of the steps. Each operation is one store transaction,
//! committed before it is acknowledged; the steps that must not race are compare-and-set.
//!
//! ```text
//! requested --(both hosts attested: ticket)--> authorised --(source: sealed, package digest)-->
//! sealed --(destination: claim, once)--> claimed --(destination: imported)--> imported
//! --(commit: owner := destination, epoch + 1)--> committed --(source: deleted)--> source_deleted
//! any state before committed --(abort)--> aborted
//! ```
//!
//! Abort is allowed only before the commit and commit only after the import; both are
//! idempotent, as is every step repeated by the party that made it (a lost answer). After a
//! crash nothing is lost: [`Controller::recover`] (at start and then periodically) commits
//! what was imported and aborts what expired, so every migration ends committed or aborted,
//! and the destination serves only once committed while the source serves again only once
//! aborted: never two live copies, never none.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use log::{info, warn};
use migration::api::{
    codes, AttestRequest, ClaimRequest, InstanceView, MigrationView, RegisterInstance, Role,
    SealedRequest, StartMigration, State, StepView, TicketRequest, TicketResponse,
};
use migration::ticket::{self, parse_instance, Ticket, POINT_LEN};
use migration::{check_id, MigrationId};
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use vtpm_state::keys::InstanceId;

use crate::attest::{verify_quote, AttestError};
use crate::auth::{Caller, HostCaller};
use crate::store::{ControllerStore, InstanceRecord, MigrationRecord, StepRecord, StoreError};

/// A refused or failed operation: the API's error code and an explanation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ControllerError {
    pub code: &'static str,
    pub detail: String,
}

impl ControllerError {
    pub fn new(code: &'static str, detail: impl Into<String>) -> Self {
        ControllerError {
            code,
            detail: detail.into(),
        }
    }
}

impl From<StoreError> for ControllerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InstanceExists(_) => {
                ControllerError::new(codes::INSTANCE_EXISTS, e.to_string())
            }
            StoreError::MigrationInProgress(_) => {
                ControllerError::new(codes::MIGRATION_IN_PROGRESS, e.to_string())
            }
            other => ControllerError::new(codes::INTERNAL, other.to_string()),
        }
    }
}

type Result<T> = std::result::Result<T, ControllerError>;

/// How a certificate's revocation is checked (the CA's status API in production).
pub trait Revocation: Send + Sync {
    /// `Ok(())` if `cert` is good; otherwise why not.
    fn check(&self, cert: &X509) -> Result<()>;
}

/// Revocation through the local CA's `GET /v1/status`.
pub struct CaRevocation(pub vtpm_ca::Client);

impl Revocation for CaRevocation {
    fn check(&self, cert: &X509) -> Result<()> {
        let fingerprint = vtpm_ca::fingerprint(cert)
            .map_err(|e| ControllerError::new(codes::INTERNAL, e.to_string()))?;
        let status = self.0.status(&fingerprint).map_err(|e| {
            ControllerError::new(codes::CA_UNAVAILABLE, format!("revocation status: {e}"))
        })?;
        match status.status {
            vtpm_ca::api::Status::Good => Ok(()),
            other => Err(ControllerError::new(
                codes::REVOKED,
                format!(
                    "certificate {:?} is {other:?} at the CA",
                    migration::seal::common_name(cert).unwrap_or_default()
                ),
            )),
        }
    }
}

/// What the controller is configured with.
pub struct Settings {
    /// Signs the tickets.
    pub key: PKey<Private>,
    /// The local CA's root: host AIK and coprocessor chains end there.
    pub ca_root: X509,
    pub revocation: Box<dyn Revocation>,
    /// SHA-256 of the operator's bearer token.
    pub admin_token_sha256: [u8; 32],
    /// How long a migration may take from its start until it is aborted.
    pub lifetime: Duration,
    /// Test hook: kill this process (SIGKILL) right after the step of this name is stored
    /// (`VTPM_MIGRATE_CRASH_AFTER`), to prove recovery from a crash at that step.
    pub crash_after: Option<String>,
}

/// The controller.
pub struct Controller {
    store: Mutex<Box<dyn ControllerStore>>,
    settings: Settings,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn step(name: &str, detail: impl Into<String>) -> StepRecord {
    StepRecord {
        step: name.to_owned(),
        at_ms: now_ms(),
        detail: detail.into(),
    }
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    openssl::rand::rand_bytes(&mut b)
        .map_err(|e| ControllerError::new(codes::INTERNAL, e.to_string()))?;
    Ok(b)
}

fn bad_request(detail: impl Into<String>) -> ControllerError {
    ControllerError::new(codes::BAD_REQUEST, detail)
}

fn instance_id(text: &str) -> Result<InstanceId> {
    parse_instance(text).map_err(|e| bad_request(e.to_string()))
}

fn digest(text: &str) -> Result<[u8; 32]> {
    let mut d = [0u8; 32];
    hex::decode_to_slice(text, &mut d).map_err(|_| bad_request("not a hex SHA-256 digest"))?;
    Ok(d)
}

fn forbidden(detail: impl Into<String>) -> ControllerError {
    ControllerError::new(codes::FORBIDDEN, detail)
}

fn operator_only(caller: &Caller) -> Result<()> {
    match caller {
        Caller::Operator => Ok(()),
        Caller::Host(h) => Err(forbidden(format!(
            "host {} may not do this; the operator's token is required",
            h.host_id
        ))),
    }
}

/// The host of `role` in `m`, or forbidden.
fn as_party<'a>(caller: &'a Caller, m: &MigrationRecord, role: Role) -> Result<&'a HostCaller> {
    let expected = match role {
        Role::Source => &m.source,
        Role::Destination => &m.destination,
    };
    match caller {
        Caller::Host(h) if &h.host_id == expected => Ok(h),
        Caller::Host(h) => Err(forbidden(format!(
            "host {} is not the {} ({expected}) of migration {}",
            h.host_id,
            role.as_str(),
            m.id
        ))),
        Caller::Operator => Err(forbidden(format!(
            "only the {} host reports this step",
            role.as_str()
        ))),
    }
}

fn wrong_state(m: &MigrationRecord, step: &str) -> ControllerError {
    let code = match m.state {
        State::Aborted => codes::ABORTED,
        State::Committed | State::SourceDeleted => codes::ALREADY_COMMITTED,
        _ => codes::WRONG_STATE,
    };
    ControllerError::new(
        code,
        format!("migration {} is {}: cannot {step}", m.id, m.state.as_str()),
    )
}

impl Controller {
    pub fn new(store: Box<dyn ControllerStore>, settings: Settings) -> Self {
        Controller {
            store: Mutex::new(store),
            settings,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn store(&self) -> MutexGuard<'_, Box<dyn ControllerStore>> {
        // A panic while holding the lock leaves the database consistent (transactions).
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The crash test hook, after `name` is stored.
    fn stored(&self, m: &MigrationRecord, name: &str) {
        info!("migration {}: {name}", m.id);
        if self.settings.crash_after.as_deref() == Some(name) {
            warn!("VTPM_MIGRATE_CRASH_AFTER={name}: killing the controller now");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }

    fn load(&self, store: &dyn ControllerStore, id: &MigrationId) -> Result<MigrationRecord> {
        store
            .migration(id)?
            .ok_or_else(|| ControllerError::new(codes::NOT_FOUND, format!("no migration {id}")))
    }

    fn view(&self, store: &dyn ControllerStore, m: &MigrationRecord) -> Result<MigrationView> {
        let steps = store
            .steps(&m.id)?
            .into_iter()
            .map(|s| StepView {
                step: s.step,
                at_ms: s.at_ms,
                detail: s.detail,
            })
            .collect();
        Ok(MigrationView {
            id: m.id.to_string(),
            instance: m.instance.to_string(),
            vm: m.vm.clone(),
            source: m.source.clone(),
            destination: m.destination.clone(),
            epoch: m.epoch,
            state: m.state,
            source_nonce: hex::encode(m.source_nonce),
            destination_nonce: hex::encode(m.destination_nonce),
            source_attested: m.source_attested,
            destination_attested: m.destination_attested,
            destination_key: m.destination_key.as_ref().map(hex::encode),
            package_sha256: m.package_sha256.map(hex::encode),
            expires_at: m.expires_at,
            steps,
        })
    }

    /// Writes `m` if still in `expected`; a lost race is reported as the state found.
    fn update(
        &self,
        store: &mut dyn ControllerStore,
        m: &MigrationRecord,
        expected: State,
        steps: &[StepRecord],
    ) -> Result<()> {
        if store.update_migration(m, expected, steps)? {
            for s in steps {
                self.stored(m, &s.step);
            }
            Ok(())
        } else {
            let now = self.load(store, &m.id)?;
            Err(wrong_state(
                &now,
                steps.first().map_or("change", |s| &s.step),
            ))
        }
    }

    /// `POST /v1/instances`.
    pub fn register(&self, caller: &Caller, req: &RegisterInstance) -> Result<InstanceView> {
        operator_only(caller)?;
        let instance = instance_id(&req.instance)?;
        check_id("owner", &req.owner, ticket::MAX_HOST_ID)
            .map_err(|e| bad_request(e.to_string()))?;
        let record = InstanceRecord {
            instance,
            owner: req.owner.clone(),
            epoch: 0,
        };
        self.store().register_instance(&record)?;
        info!("instance {instance} registered on host {}", req.owner);
        Ok(InstanceView {
            instance: instance.to_string(),
            owner: record.owner,
            epoch: 0,
        })
    }

    /// `GET /v1/instances/{instance}`.
    pub fn instance(&self, caller: &Caller, instance: &str) -> Result<InstanceView> {
        operator_only(caller)?;
        let id = instance_id(instance)?;
        let r = self.store().instance(&id)?.ok_or_else(|| {
            ControllerError::new(
                codes::UNKNOWN_INSTANCE,
                format!("instance {id} is not registered"),
            )
        })?;
        Ok(InstanceView {
            instance: id.to_string(),
            owner: r.owner,
            epoch: r.epoch,
        })
    }

    /// `POST /v1/migrations`: the operator asks for a move; both hosts must then attest.
    pub fn start(&self, caller: &Caller, req: &StartMigration) -> Result<MigrationView> {
        operator_only(caller)?;
        let instance = instance_id(&req.instance)?;
        for (field, id, max) in [
            ("VM id", &req.vm, ticket::MAX_VM_ID),
            ("source host id", &req.source, ticket::MAX_HOST_ID),
            ("destination host id", &req.destination, ticket::MAX_HOST_ID),
        ] {
            check_id(field, id, max).map_err(|e| bad_request(e.to_string()))?;
        }
        if req.source == req.destination {
            return Err(bad_request("source and destination are the same host"));
        }
        let mut store = self.store();
        let owner = store.instance(&instance)?.ok_or_else(|| {
            ControllerError::new(
                codes::UNKNOWN_INSTANCE,
                format!("instance {instance} is not registered (vtpm-migrate register)"),
            )
        })?;
        if owner.owner != req.source {
            return Err(ControllerError::new(
                codes::NOT_OWNER,
                format!(
                    "instance {instance} lives on host {}, not on {}",
                    owner.owner, req.source
                ),
            ));
        }
        if let Some(active) = store.active_migration(&instance)? {
            // The same request again (its answer was lost): the same migration.
            if active.state == State::Requested
                && (&active.vm, &active.source, &active.destination)
                    == (&req.vm, &req.source, &req.destination)
            {
                return self.view(&**store, &active);
            }
            return Err(ControllerError::new(
                codes::MIGRATION_IN_PROGRESS,
                format!(
                    "instance {instance} is being moved by migration {}",
                    active.id
                ),
            ));
        }
        let now = now_ms() / 1000;
        let m = MigrationRecord {
            id: MigrationId::random()
                .map_err(|e| ControllerError::new(codes::INTERNAL, e.to_string()))?,
            instance,
            vm: req.vm.clone(),
            source: req.source.clone(),
            destination: req.destination.clone(),
            epoch: owner.epoch,
            state: State::Requested,
            source_nonce: random()?,
            destination_nonce: random()?,
            source_attested: false,
            destination_attested: false,
            destination_key: None,
            ticket: None,
            package_sha256: None,
            claim: None,
            created_at: now,
            expires_at: now + self.settings.lifetime.as_secs(),
        };
        store.insert_migration(
            &m,
            &step(
                "requested",
                format!(
                    "{} -> {} (VM {}, epoch {})",
                    m.source, m.destination, m.vm, m.epoch
                ),
            ),
        )?;
        self.stored(&m, "requested");
        self.view(&**store, &m)
    }

    /// `GET /v1/migrations`.
    pub fn list(&self, caller: &Caller, active_only: bool) -> Result<Vec<MigrationView>> {
        operator_only(caller)?;
        let store = self.store();
        store
            .migrations(active_only)?
            .iter()
            .map(|m| self.view(&**store, m))
            .collect()
    }

    /// `GET /v1/migrations/{id}`: for the operator and the two hosts.
    pub fn get(&self, caller: &Caller, id: &MigrationId) -> Result<MigrationView> {
        let store = self.store();
        let m = self.load(&**store, id)?;
        if let Caller::Host(h) = caller {
            if h.host_id != m.source && h.host_id != m.destination {
                return Err(forbidden(format!(
                    "host {} is not a party of migration {id}",
                    h.host_id
                )));
            }
        }
        self.view(&**store, &m)
    }

    /// `POST /v1/migrations/{id}/attest`: a host's quote; with both, the ticket is issued.
    pub fn attest(&self, id: &MigrationId, req: &AttestRequest) -> Result<MigrationView> {
        let m = self.load(&**self.store(), id)?;
        let (host, nonce) = match req.role {
            Role::Source => (&m.source, &m.source_nonce),
            Role::Destination => (&m.destination, &m.destination_nonce),
        };
        let attested = verify_quote(req, id, host, nonce, &self.settings.ca_root).map_err(|e| {
            let code = match e {
                AttestError::UntrustedAik(_) => codes::UNTRUSTED_CHAIN,
                AttestError::WrongHost { .. } => codes::FORBIDDEN,
                AttestError::Invalid(_) => codes::QUOTE_INVALID,
            };
            warn!(
                "migration {id}: {} attestation refused: {e}",
                req.role.as_str()
            );
            ControllerError::new(code, e.to_string())
        })?;
        // Outside the store lock: the CA answers over the network.
        self.settings.revocation.check(&attested.aik_cert)?;
        let mut store = self.store();
        let mut m = self.load(&**store, id)?;
        let already = match req.role {
            Role::Source => m.source_attested,
            Role::Destination => m.destination_attested,
        };
        if already {
            // A repeated attestation (its answer lost) changes nothing, if it is the same key.
            let same_key = req.role == Role::Source
                || m.destination_key.as_deref() == Some(&attested.migration_key[..]);
            if !m.state.is_final() && same_key {
                return self.view(&**store, &m);
            }
        }
        if m.state != State::Requested {
            return Err(wrong_state(&m, "attest"));
        }
        let expected = m.state;
        let name = match req.role {
            Role::Source => {
                m.source_attested = true;
                "source_attested"
            }
            Role::Destination => {
                m.destination_attested = true;
                m.destination_key = Some(attested.migration_key.clone());
                "destination_attested"
            }
        };
        let mut steps = vec![step(
            name,
            format!(
                "host {} quoted PCRs 0-7 (digest {})",
                attested.host_id,
                hex::encode(&attested.pcr_digest)
            ),
        )];
        if m.source_attested && m.destination_attested {
            let key: [u8; POINT_LEN] = m
                .destination_key
                .clone()
                .and_then(|k| k.try_into().ok())
                .ok_or_else(|| ControllerError::new(codes::INTERNAL, "destination key lost"))?;
            let t = Ticket {
                migration: m.id,
                instance: m.instance,
                vm: m.vm.clone(),
                source: m.source.clone(),
                destination: m.destination.clone(),
                destination_key: key,
                epoch: m.epoch,
                issued_at: now_ms() / 1000,
                expires_at: m.expires_at,
            };
            let signed = ticket::sign(&t, &self.settings.key)
                .map_err(|e| ControllerError::new(codes::INTERNAL, e.to_string()))?;
            m.ticket = Some(signed.bytes);
            m.state = State::Authorised;
            steps.push(step("authorised", "ticket issued"));
        }
        self.update(&mut **store, &m, expected, &steps)?;
        self.view(&**store, &m)
    }

    /// `POST /v1/tickets`: the source daemon fetches its ticket when QEMU asks it for the
    /// device state.
    pub fn ticket(&self, caller: &Caller, req: &TicketRequest) -> Result<TicketResponse> {
        let instance = instance_id(&req.instance)?;
        let m = self.store().active_migration(&instance)?.ok_or_else(|| {
            ControllerError::new(
                codes::NO_TICKET,
                format!("no migration of instance {instance} is in progress"),
            )
        })?;
        let host = as_party(caller, &m, Role::Source)?;
        if !matches!(m.state, State::Authorised | State::Sealed) {
            return Err(ControllerError::new(
                codes::NO_TICKET,
                format!(
                    "migration {} of instance {instance} is {}, not authorised (have both hosts attested?)",
                    m.id,
                    m.state.as_str()
                ),
            ));
        }
        self.check_live(&m)?;
        self.check_host(host)?;
        let t = m
            .ticket
            .as_ref()
            .ok_or_else(|| ControllerError::new(codes::INTERNAL, "ticket lost"))?;
        Ok(TicketResponse {
            migration: m.id.to_string(),
            ticket: base64::engine::general_purpose::STANDARD.encode(t),
        })
    }

    fn check_live(&self, m: &MigrationRecord) -> Result<()> {
        if now_ms() / 1000 >= m.expires_at {
            return Err(ControllerError::new(
                codes::EXPIRED,
                format!("migration {} expired at {}", m.id, m.expires_at),
            ));
        }
        Ok(())
    }

    /// Revocation of a host's chain, for the steps that move the vTPM.
    fn check_host(&self, host: &HostCaller) -> Result<()> {
        self.settings.revocation.check(&host.coprocessor_cert)?;
        self.settings.revocation.check(&host.aik_cert)
    }

    /// `POST /v1/migrations/{id}/sealed`: the source locked the vTPM and releases the
    /// package whose digest it reports.
    pub fn sealed(
        &self,
        caller: &Caller,
        id: &MigrationId,
        req: &SealedRequest,
    ) -> Result<MigrationView> {
        let package = digest(&req.package_sha256)?;
        let m = self.load(&**self.store(), id)?;
        let host = as_party(caller, &m, Role::Source)?;
        self.check_host(host)?;
        let mut store = self.store();
        let mut m = self.load(&**store, id)?;
        if m.state == State::Sealed && m.package_sha256 == Some(package) {
            return self.view(&**store, &m);
        }
        if m.state != State::Authorised {
            return Err(wrong_state(&m, "seal"));
        }
        self.check_live(&m)?;
        m.state = State::Sealed;
        m.package_sha256 = Some(package);
        self.update(
            &mut **store,
            &m,
            State::Authorised,
            &[step(
                "sealed",
                format!("source locked; package sha256 {}", req.package_sha256),
            )],
        )?;
        self.view(&**store, &m)
    }

    /// `POST /v1/migrations/{id}/claim`: the destination takes the package, once.
    pub fn claim(
        &self,
        caller: &Caller,
        id: &MigrationId,
        req: &ClaimRequest,
    ) -> Result<MigrationView> {
        let package = digest(&req.package_sha256)?;
        let mut claim = [0u8; 16];
        hex::decode_to_slice(&req.claim, &mut claim)
            .map_err(|_| bad_request("claim is not 32 hex digits"))?;
        let m = self.load(&**self.store(), id)?;
        let host = as_party(caller, &m, Role::Destination)?;
        self.check_host(host)?;
        let mut store = self.store();
        let mut m = self.load(&**store, id)?;
        if m.package_sha256.is_some() && m.package_sha256 != Some(package) {
            return Err(ControllerError::new(
                codes::PACKAGE_MISMATCH,
                format!("this is not the package the source of migration {id} released"),
            ));
        }
        match m.state {
            State::Claimed | State::Imported | State::Committed | State::SourceDeleted
                if m.claim == Some(claim) =>
            {
                return self.view(&**store, &m)
            }
            State::Claimed | State::Imported | State::Committed | State::SourceDeleted => {
                return Err(ControllerError::new(
                    codes::ALREADY_CLAIMED,
                    format!("the package of migration {id} was already claimed: it imports once"),
                ))
            }
            State::Sealed => {}
            _ => return Err(wrong_state(&m, "claim")),
        }
        self.check_live(&m)?;
        let current = store.instance(&m.instance)?;
        if current.as_ref().map(|i| (&i.owner, i.epoch)) != Some((&m.source, m.epoch)) {
            return Err(ControllerError::new(
                codes::STALE_EPOCH,
                format!(
                    "instance {} moved since migration {id} started (epoch {})",
                    m.instance, m.epoch
                ),
            ));
        }
        m.state = State::Claimed;
        m.claim = Some(claim);
        self.update(
            &mut **store,
            &m,
            State::Sealed,
            &[step("claimed", "by the destination")],
        )?;
        self.view(&**store, &m)
    }

    /// `POST /v1/migrations/{id}/imported`: the destination holds the instance durably;
    /// the controller commits it as the owner.
    pub fn imported(&self, caller: &Caller, id: &MigrationId) -> Result<MigrationView> {
        let m = self.load(&**self.store(), id)?;
        let host = as_party(caller, &m, Role::Destination)?;
        self.check_host(host)?;
        {
            let mut store = self.store();
            let mut m = self.load(&**store, id)?;
            match m.state {
                State::Imported | State::Committed | State::SourceDeleted => {}
                State::Claimed => {
                    m.state = State::Imported;
                    self.update(
                        &mut **store,
                        &m,
                        State::Claimed,
                        &[step(
                            "imported",
                            "the destination holds the instance durably",
                        )],
                    )?;
                }
                _ => return Err(wrong_state(&m, "report the import")),
            }
        }
        self.commit_imported(id)
    }

    /// `POST /v1/migrations/{id}/commit` (the operator; normally automatic).
    pub fn commit(&self, caller: &Caller, id: &MigrationId) -> Result<MigrationView> {
        operator_only(caller)?;
        self.commit_imported(id)
    }

    fn commit_imported(&self, id: &MigrationId) -> Result<MigrationView> {
        let mut store = self.store();
        let mut m = self.load(&**store, id)?;
        match m.state {
            State::Committed | State::SourceDeleted => return self.view(&**store, &m),
            State::Imported => {}
            _ => {
                return Err(wrong_state(
                    &m,
                    "commit (only an imported migration commits)",
                ))
            }
        }
        m.state = State::Committed;
        let s = step(
            "committed",
            format!(
                "owner {} -> {}, epoch {} -> {}",
                m.source,
                m.destination,
                m.epoch,
                m.epoch + 1
            ),
        );
        if !store.commit(&m, State::Imported, &s)? {
            let now = self.load(&**store, id)?;
            return Err(if now.state == State::Imported {
                ControllerError::new(
                    codes::STALE_EPOCH,
                    format!(
                        "instance {} is no longer at epoch {} on {}",
                        m.instance, m.epoch, m.source
                    ),
                )
            } else {
                wrong_state(&now, "commit")
            });
        }
        self.stored(&m, "committed");
        self.view(&**store, &m)
    }

    /// `POST /v1/migrations/{id}/abort`: the operator or either host, before the commit.
    pub fn abort(&self, caller: &Caller, id: &MigrationId, reason: &str) -> Result<MigrationView> {
        let mut store = self.store();
        let m = self.load(&**store, id)?;
        let by = match caller {
            Caller::Operator => "the operator".to_owned(),
            Caller::Host(h) if h.host_id == m.source || h.host_id == m.destination => {
                format!("host {}", h.host_id)
            }
            Caller::Host(h) => {
                return Err(forbidden(format!(
                    "host {} is not a party of migration {id}",
                    h.host_id
                )))
            }
        };
        self.abort_locked(&mut **store, m, &format!("by {by}: {reason}"))
    }

    fn abort_locked(
        &self,
        store: &mut dyn ControllerStore,
        mut m: MigrationRecord,
        why: &str,
    ) -> Result<MigrationView> {
        match m.state {
            State::Aborted => return self.view(store, &m),
            State::Committed | State::SourceDeleted => return Err(wrong_state(&m, "abort")),
            _ => {}
        }
        let expected = m.state;
        m.state = State::Aborted;
        self.update(store, &m, expected, &[step("aborted", why)])?;
        self.view(store, &m)
    }

    /// `POST /v1/migrations/{id}/source-deleted`.
    pub fn source_deleted(&self, caller: &Caller, id: &MigrationId) -> Result<MigrationView> {
        let mut store = self.store();
        let mut m = self.load(&**store, id)?;
        as_party(caller, &m, Role::Source)?;
        match m.state {
            State::SourceDeleted => return self.view(&**store, &m),
            State::Committed => {}
            _ => return Err(wrong_state(&m, "report the source deleted")),
        }
        m.state = State::SourceDeleted;
        self.update(
            &mut **store,
            &m,
            State::Committed,
            &[step("source_deleted", "the source destroyed its copy")],
        )?;
        self.view(&**store, &m)
    }

    /// Drives every unfinished migration on: an imported one is committed, one past its
    /// lifetime is aborted. Run at start (after a crash) and periodically.
    pub fn recover(&self) -> Result<()> {
        let active = self.store().migrations(true)?;
        let now = now_ms() / 1000;
        for m in active {
            let outcome = match m.state {
                State::Imported => self.commit_imported(&m.id).map(drop),
                _ if now >= m.expires_at => {
                    let mut store = self.store();
                    let current = self.load(&**store, &m.id)?;
                    self.abort_locked(&mut **store, current, "expired")
                        .map(drop)
                }
                _ => Ok(()),
            };
            if let Err(e) = outcome {
                warn!("recovering migration {}: {e}", m.id);
            }
        }
        Ok(())
    }
}
