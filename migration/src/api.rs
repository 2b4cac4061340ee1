//! The migration controller's HTTPS API: JSON shapes, error codes, the host attestation's
//! qualifying data and the signed-request scheme, shared by the controller (`vtpm-migrate
//! serve`), its client ([`crate::client`]), the daemons and the operator CLI (ADR 0010).
//!
//! Binary fields are standard base64, ids and digests lower-case hex. Every error is an
//! [`ErrorBody`] `{error, detail}` with a matching HTTP status.
//!
//! | method and path | who | request | response |
//! |---|---|---|---|
//! | `POST /v1/instances` | operator | [`RegisterInstance`] | [`InstanceView`] |
//! | `GET /v1/instances/{instance}` | operator | - | [`InstanceView`] |
//! | `POST /v1/migrations` | operator | [`StartMigration`] | [`MigrationView`] |
//! | `GET /v1/migrations?active=BOOL` | operator | - | `[MigrationView]` |
//! | `GET /v1/migrations/{id}` | operator, source, destination | - | [`MigrationView`] |
//! | `POST /v1/migrations/{id}/attest` | the host (its quote) | [`AttestRequest`] | [`MigrationView`] |
//! | `POST /v1/tickets` | source | [`TicketRequest`] | [`TicketResponse`] |
//! | `POST /v1/migrations/{id}/sealed` | source | [`SealedRequest`] | [`MigrationView`] |
//! | `POST /v1/migrations/{id}/claim` | destination | [`ClaimRequest`] | [`MigrationView`] |
//! | `POST /v1/migrations/{id}/imported` | destination | `{}` | [`MigrationView`] |
//! | `POST /v1/migrations/{id}/commit` | operator | `{}` | [`MigrationView`] |
//! | `POST /v1/migrations/{id}/abort` | operator, source, destination | [`AbortRequest`] | [`MigrationView`] |
//! | `POST /v1/migrations/{id}/source-deleted` | source | `{}` | [`MigrationView`] |
//!
//! An operator sends `Authorization: Bearer TOKEN`. A daemon (source or destination) signs
//! its request with its host's coprocessor key ([`request_message`], purpose
//! `ControllerRequest`) and sends the signature and its chain in [`HEADER_SIGNATURE`],
//! [`HEADER_TIME`] and [`HEADER_CHAIN`]; the controller checks the chain up to the CA root
//! (and revocation, for the steps that move the vTPM), and takes the host id from the host
//! AIK certificate's common name.

use serde::{Deserialize, Serialize};

use crate::ticket::MigrationId;

/// `X-Vtpm-Signature`: base64 of the DER ECDSA signature of [`request_message`].
pub const HEADER_SIGNATURE: &str = "x-vtpm-signature";
/// `X-Vtpm-Time`: the Unix time the request was signed at.
pub const HEADER_TIME: &str = "x-vtpm-time";
/// `X-Vtpm-Chain`: base64 DER certificates, comma-separated: coprocessor, host AIK.
pub const HEADER_CHAIN: &str = "x-vtpm-chain";
/// How far a signed request's time may be from the controller's clock.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// What a daemon signs for a request: method, path (with query), time and the SHA-256 of
/// the body, one per line.
pub fn request_message(method: &str, path: &str, time: u64, body: &[u8]) -> Vec<u8> {
    format!(
        "{method}\n{path}\n{time}\n{}",
        hex::encode(openssl::sha::sha256(body))
    )
    .into_bytes()
}

/// The two hosts of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Source,
    Destination,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Destination => "destination",
        }
    }
}

/// The qualifying data of a host's quote for a migration: SHA-256 of a context string, the
/// migration id, the role, the controller's nonce for that role and the host's migration
/// key. The quote thereby proves that this host's TPM (its AIK) vouches for this migration
/// key, freshly.
pub fn attestation_data(
    migration: &MigrationId,
    role: Role,
    nonce: &[u8],
    migration_key: &[u8],
) -> [u8; 32] {
    let mut h = openssl::sha::Sha256::new();
    h.update(b"vhost-vtpm host attestation v1\0");
    h.update(&migration.0);
    h.update(role.as_str().as_bytes());
    h.update(&[0]);
    h.update(nonce);
    h.update(migration_key);
    h.finish()
}

/// The SHA-256 PCRs a host quotes.
pub const QUOTED_PCRS: [u8; 8] = [0, 1, 2, 3, 4, 5, 6, 7];

/// Where a migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Asked for; waiting for both hosts' attestation.
    Requested,
    /// Both hosts attested; the ticket is issued.
    Authorised,
    /// The source locked the vTPM and released the package (its SHA-256 recorded).
    Sealed,
    /// The destination claimed the package (once).
    Claimed,
    /// The destination holds the instance durably and waits for the commit.
    Imported,
    /// The destination owns the vTPM (epoch + 1); the source must delete its copy.
    Committed,
    /// The source reported its copy deleted.
    SourceDeleted,
    /// Abandoned before the commit: the source resumes, a destination copy is destroyed.
    Aborted,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Requested => "requested",
            State::Authorised => "authorised",
            State::Sealed => "sealed",
            State::Claimed => "claimed",
            State::Imported => "imported",
            State::Committed => "committed",
            State::SourceDeleted => "source_deleted",
            State::Aborted => "aborted",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        [
            State::Requested,
            State::Authorised,
            State::Sealed,
            State::Claimed,
            State::Imported,
            State::Committed,
            State::SourceDeleted,
            State::Aborted,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    /// Whether the migration is over (nothing more can change it but the source's deletion
    /// report after a commit).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Committed | State::SourceDeleted | State::Aborted
        )
    }

    /// Whether the destination owns the vTPM.
    pub fn is_committed(self) -> bool {
        matches!(self, State::Committed | State::SourceDeleted)
    }
}

/// `POST /v1/instances`: the vTPM `instance` (32 hex digits) lives on `owner`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterInstance {
    pub instance: String,
    pub owner: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceView {
    pub instance: String,
    pub owner: String,
    pub epoch: u64,
}

/// `POST /v1/migrations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartMigration {
    pub instance: String,
    pub vm: String,
    pub source: String,
    pub destination: String,
}

/// One recorded step of a migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepView {
    pub step: String,
    /// Unix milliseconds.
    pub at_ms: u64,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationView {
    pub id: String,
    pub instance: String,
    pub vm: String,
    pub source: String,
    pub destination: String,
    /// The vTPM's epoch the migration moves (the destination's is this + 1).
    pub epoch: u64,
    pub state: State,
    /// Hex nonces each host's quote must bind.
    pub source_nonce: String,
    pub destination_nonce: String,
    pub source_attested: bool,
    pub destination_attested: bool,
    /// The destination's attested migration key (hex point), once attested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_sha256: Option<String>,
    /// Unix seconds after which an unfinished migration is aborted.
    pub expires_at: u64,
    pub steps: Vec<StepView>,
}

/// `POST /v1/migrations/{id}/attest`: a host's quote for its role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestRequest {
    pub role: Role,
    /// The host AIK certificate (PEM).
    pub aik_cert: String,
    /// base64 of the marshalled `TPMS_ATTEST`, as the TPM returned it.
    pub attest: String,
    /// base64 of the marshalled `TPMT_SIGNATURE` (ECDSA P-256, SHA-256), as the TPM returned
    /// it.
    pub signature: String,
    /// The host's migration key (hex, uncompressed P-256 point).
    pub migration_key: String,
}

/// `POST /v1/tickets`: the ticket of the authorised migration of `instance` from the
/// calling host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketRequest {
    pub instance: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketResponse {
    pub migration: String,
    /// base64 of the signed ticket.
    pub ticket: String,
}

/// `POST /v1/migrations/{id}/sealed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedRequest {
    /// SHA-256 of the whole package, hex.
    pub package_sha256: String,
}

/// `POST /v1/migrations/{id}/claim`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequest {
    pub package_sha256: String,
    /// A random hex value per import attempt: repeating the same claim (an answer lost) is
    /// idempotent, another attempt with the same package is refused.
    pub claim: String,
}

/// `POST /v1/migrations/{id}/abort`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortRequest {
    #[serde(default)]
    pub reason: String,
}

pub use https_api::ErrorBody;

/// The `error` codes of [`ErrorBody`].
pub mod codes {
    pub use https_api::codes::{BAD_REQUEST, INTERNAL};
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    pub const FORBIDDEN: &str = "forbidden";
    pub const REVOKED: &str = "revoked";
    pub const UNTRUSTED_CHAIN: &str = "untrusted_chain";
    pub const QUOTE_INVALID: &str = "quote_invalid";
    pub const NOT_FOUND: &str = "not_found";
    pub const UNKNOWN_INSTANCE: &str = "unknown_instance";
    pub const INSTANCE_EXISTS: &str = "instance_exists";
    pub const NOT_OWNER: &str = "not_owner";
    pub const MIGRATION_IN_PROGRESS: &str = "migration_in_progress";
    pub const NO_TICKET: &str = "no_ticket";
    /// The migration is not in a state that allows the step.
    pub const WRONG_STATE: &str = "wrong_state";
    pub const PACKAGE_MISMATCH: &str = "package_mismatch";
    pub const ALREADY_CLAIMED: &str = "already_claimed";
    pub const ALREADY_COMMITTED: &str = "already_committed";
    pub const ABORTED: &str = "aborted";
    pub const EXPIRED: &str = "expired";
    pub const STALE_EPOCH: &str = "stale_epoch";
    pub const CA_UNAVAILABLE: &str = "ca_unavailable";
}
