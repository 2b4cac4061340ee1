//! Moving a vTPM instance between daemons, sealed and signed, under a migration controller
//! (ADR 0010).
//!
//! A vTPM leaves its source only as a sealed package (`VTPMMIG1`): encrypted to the
//! destination host's attested migration key, signed by the source's coprocessor key,
//! bound to the controller's ticket for this one move. It travels inside QEMU's live
//! migration (vhost-user DEVICE_STATE, SAVE on the source and LOAD on the destination) or as
//! a file for offline moves (`vtpm-migrate export`/`import`).
//!
//! - [`ticket`]: the controller's signed ticket (pure encoding; signing and checking).
//! - [`package`]: the package's bytes (pure, bounded, every malformed package named).
//! - [`seal`]: sealing an instance for a ticket; verifying and opening a package.
//! - [`refusal`]: the named reasons a destination refuses a package.
//! - [`api`]: the migration controller's API (JSON shapes, attestation data, signed
//!   requests); [`client`]: its blocking HTTPS client.
//! - [`snapshot`]: the instance's serialised form, the plaintext inside a package only.
//! - [`device_state`]: the DEVICE_STATE pipe: reading and writing, with its limit.
//! - `wire` (private): the length-prefixed fields both formats are made of.

pub mod api;
pub mod client;
pub mod device_state;
pub mod package;
pub mod refusal;
pub mod seal;
pub mod snapshot;
pub mod ticket;
mod wire;

// The plain save/load go with the sealed DEVICE_STATE path of the daemon (stage 4).
pub use device_state::{load, save, DeviceStateError, MAX_DEVICE_STATE};
pub use refusal::Refusal;
pub use snapshot::SnapshotError;
pub use ticket::{MigrationId, SignedTicket, Ticket};
pub use wire::{check_id, FieldError};
