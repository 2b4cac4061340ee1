//! Moving a vTPM instance between daemons.
//!
//! Today a vTPM migrates inside QEMU's live migration: QEMU asks the source daemon for its
//! device state (vhost-user DEVICE_STATE, SAVE) and hands it to the destination daemon (LOAD).
//! This crate owns what crosses that channel and how an engine produces and accepts it:
//! - [`snapshot`]: the serialised instance (pure: encode, decode);
//! - [`device_state`]: SAVE and LOAD against a running engine, with the limits a stream
//!   from the VMM is held to.

pub mod device_state;
pub mod snapshot;

pub use device_state::{load, save, DeviceStateError, MAX_DEVICE_STATE};
pub use snapshot::SnapshotError;
