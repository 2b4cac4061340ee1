//! What the controller keeps, behind [`ControllerStore`]: the registry of vTPMs (owner and
//! epoch of each) and the migrations with the log of their steps. Every change is one
//! transaction, durable when the call returns, and the steps that must not race are
//! compare-and-set: a migration moves only from the state the caller read, and the commit
//! moves the owner only from the (owner, epoch) the migration started from.
//!
//! The default implementation is SQLite ([`crate::sqlite::SqliteStore`]); a replicated
//! database can implement the same trait.

use migration::api::State;
use migration::MigrationId;
use vtpm_state::keys::InstanceId;

/// A registered vTPM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    pub instance: InstanceId,
    /// The host id that owns the live copy.
    pub owner: String,
    /// Incremented by every committed migration.
    pub epoch: u64,
}

/// A migration as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationRecord {
    pub id: MigrationId,
    pub instance: InstanceId,
    pub vm: String,
    pub source: String,
    pub destination: String,
    pub epoch: u64,
    pub state: State,
    pub source_nonce: [u8; 32],
    pub destination_nonce: [u8; 32],
    pub source_attested: bool,
    pub destination_attested: bool,
    /// The destination's attested migration key.
    pub destination_key: Option<Vec<u8>>,
    /// The signed ticket, once authorised.
    pub ticket: Option<Vec<u8>>,
    pub package_sha256: Option<[u8; 32]>,
    /// The destination's claim value (see `migration::api::ClaimRequest`).
    pub claim: Option<[u8; 16]>,
    /// Unix seconds.
    pub created_at: u64,
    pub expires_at: u64,
}

/// One step of a migration's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    pub step: String,
    /// Unix milliseconds.
    pub at_ms: u64,
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("instance {0} is already registered")]
    InstanceExists(InstanceId),
    #[error("instance {0} already has a migration in progress")]
    MigrationInProgress(InstanceId),
    #[error("store: {0}")]
    Backend(String),
    #[error("store holds a malformed record: {0}")]
    Corrupt(String),
}

/// The controller's durable state.
pub trait ControllerStore: Send {
    /// Registers a vTPM; refuses one already registered.
    fn register_instance(&mut self, record: &InstanceRecord) -> Result<(), StoreError>;
    fn instance(&self, instance: &InstanceId) -> Result<Option<InstanceRecord>, StoreError>;
    fn migration(&self, id: &MigrationId) -> Result<Option<MigrationRecord>, StoreError>;
    /// The migration of `instance` that is not final, if any (there is at most one).
    fn active_migration(
        &self,
        instance: &InstanceId,
    ) -> Result<Option<MigrationRecord>, StoreError>;
    /// Every migration (only those not final, with `active_only`), oldest first.
    fn migrations(&self, active_only: bool) -> Result<Vec<MigrationRecord>, StoreError>;
    fn steps(&self, id: &MigrationId) -> Result<Vec<StepRecord>, StoreError>;
    /// Records a new migration and its first step; refuses a second active migration of the
    /// same instance.
    fn insert_migration(
        &mut self,
        record: &MigrationRecord,
        step: &StepRecord,
    ) -> Result<(), StoreError>;
    /// Replaces the migration with `record` and appends `steps`, if the stored migration is
    /// still in state `expected` (compare-and-set); `false` (nothing written) if not.
    fn update_migration(
        &mut self,
        record: &MigrationRecord,
        expected: State,
        steps: &[StepRecord],
    ) -> Result<bool, StoreError>;
    /// The commit, in one transaction: the migration moves from `expected` to `record`'s
    /// state and the instance from (`record.source`, `record.epoch`) to
    /// (`record.destination`, `record.epoch + 1`), both compare-and-set; `false` (nothing
    /// written) if either moved meanwhile.
    fn commit(
        &mut self,
        record: &MigrationRecord,
        expected: State,
        step: &StepRecord,
    ) -> Result<bool, StoreError>;
}
