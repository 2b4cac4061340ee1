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
//! - [`source`] and [`destination`]: the two flows, for the daemon and the offline CLI;
//!   [`pending`]: the state directory's record of a migration in progress; [`store`]: the
//!   engine's store shared with the migration control (scratch import, destruction);
//!   [`host`]: a host's material (keys, chain, CA root, epochs seen).
//! - [`snapshot`]: the instance's serialised form, the plaintext inside a package only.
//! - [`device_state`]: the DEVICE_STATE pipe: reading and writing, with its limit.
//! - `wire` (private): the length-prefixed fields both formats are made of.

pub mod api;
pub mod client;
pub mod destination;
pub mod device_state;
pub mod host;
pub mod package;
pub mod pending;
pub mod refusal;
pub mod seal;
pub mod snapshot;
pub mod source;
pub mod store;
pub mod ticket;
mod wire;

pub use device_state::{DeviceStateError, MAX_DEVICE_STATE};
pub use refusal::Refusal;
pub use snapshot::SnapshotError;
pub use ticket::{MigrationId, SignedTicket, Ticket};
pub use wire::{check_id, FieldError};
