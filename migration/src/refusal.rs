//! Why a destination refuses a migration package: one named reason per check (ADR 0010).
//! The daemon logs it and fails the LOAD (QEMU's migration fails, the source resumes);
//! `vtpm-migrate import` prints it. [`Refusal::code`] is the short, stable name tests and
//! scripts match on.

use crate::package::PackageError;
use crate::snapshot::SnapshotError;
use crate::ticket::TicketError;

#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("malformed package: {0}")]
    Format(#[from] PackageError),
    #[error("malformed ticket: {0}")]
    Ticket(#[from] TicketError),
    #[error("the ticket is not signed by the migration controller this host trusts")]
    TicketSignature,
    #[error("the package's {0} differs from its ticket's")]
    TicketMismatch(&'static str),
    #[error("the ticket expired at {expired_at} (now {now})")]
    TicketExpired { expired_at: u64, now: u64 },
    #[error("the package is for host {package_for}, this is host {this_host}")]
    WrongDestination {
        package_for: String,
        this_host: String,
    },
    #[error(
        "the ticket moves VM {ticket_vm:?}'s vTPM, this daemon serves VM {this_vm:?} (--vm-id)"
    )]
    WrongVm { ticket_vm: String, this_vm: String },
    #[error("the package is sealed to another migration key than this host's")]
    WrongDestinationKey,
    #[error(
        "the package is of epoch {epoch}, older than epoch {known} this host already saw of \
         this vTPM (a replayed or older package)"
    )]
    Replay { epoch: u64, known: u64 },
    #[error("the source's certificate chain does not verify up to the CA root: {0}")]
    UntrustedChain(String),
    #[error("the ticket names source host {ticket_source}, the package's chain is host {chain_host:?}'s")]
    SourceMismatch {
        ticket_source: String,
        chain_host: String,
    },
    #[error("the package's signature does not verify with the source's coprocessor certificate")]
    BadSignature,
    #[error("the source's {certificate} certificate is {status} at the CA")]
    Revoked {
        certificate: &'static str,
        status: String,
    },
    #[error("cannot check revocation at the CA: {0}")]
    RevocationUnavailable(String),
    #[error("the migration controller refused the claim: {code}: {detail}")]
    ClaimRefused { code: String, detail: String },
    #[error("the migration controller is unreachable: {0}")]
    ControllerUnavailable(String),
    #[error("the package does not decrypt with this host's migration key")]
    Decrypt,
    #[error("the decrypted instance is malformed: {0}")]
    Snapshot(#[from] SnapshotError),
    #[error("the engine refused the instance: {0}")]
    Import(String),
    #[error("re-issuing the vEK certificates under this host's coprocessor failed: {0}")]
    Rechain(String),
    #[error("this daemon does not accept a migration: {0}")]
    NotIncoming(String),
    #[error("storing the imported instance: {0}")]
    Store(String),
    #[error("cryptography: {0}")]
    Crypto(String),
}

impl Refusal {
    /// The reason's short name.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Format(PackageError::PlainSnapshot) => "plain_snapshot",
            Refusal::Format(_) => "malformed_package",
            Refusal::Ticket(_) => "malformed_ticket",
            Refusal::TicketSignature => "ticket_signature",
            Refusal::TicketMismatch(_) => "ticket_mismatch",
            Refusal::TicketExpired { .. } => "ticket_expired",
            Refusal::WrongDestination { .. } => "wrong_destination",
            Refusal::WrongVm { .. } => "wrong_vm",
            Refusal::WrongDestinationKey => "wrong_destination_key",
            Refusal::Replay { .. } => "replay",
            Refusal::UntrustedChain(_) => "untrusted_chain",
            Refusal::SourceMismatch { .. } => "source_mismatch",
            Refusal::BadSignature => "bad_signature",
            Refusal::Revoked { .. } => "revoked",
            Refusal::RevocationUnavailable(_) => "revocation_unavailable",
            Refusal::ClaimRefused { .. } => "claim_refused",
            Refusal::ControllerUnavailable(_) => "controller_unavailable",
            Refusal::Decrypt => "decrypt",
            Refusal::Snapshot(_) => "malformed_instance",
            Refusal::Import(_) => "import",
            Refusal::Rechain(_) => "rechain",
            Refusal::NotIncoming(_) => "not_incoming",
            Refusal::Store(_) => "store",
            Refusal::Crypto(_) => "crypto",
        }
    }
}
