//! vhost-user DEVICE_STATE: the device state a daemon sends (SAVE) and accepts (LOAD) through
//! the pipe QEMU gives it while the device is stopped.

use std::io::{Read, Write};

use coprocessor::Coprocessor;
use log::info;

use crate::snapshot::{self, SnapshotError};

/// Largest device state accepted from a migration stream.
pub const MAX_DEVICE_STATE: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DeviceStateError {
    #[error("exporting the engine's state: {0}")]
    Export(#[source] coprocessor::Error),
    #[error("writing device state: {0}")]
    Write(#[source] std::io::Error),
    #[error("reading device state: {0}")]
    Read(#[source] std::io::Error),
    #[error("device state larger than {MAX_DEVICE_STATE} bytes")]
    TooLarge,
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("importing the device state: {0}")]
    Import(#[source] coprocessor::Error),
}

/// The device state of `engine` as it is now. The caller holds the device stopped.
pub fn save(engine: &mut dyn Coprocessor) -> Result<Vec<u8>, DeviceStateError> {
    let state = engine.export_state().map_err(DeviceStateError::Export)?;
    Ok(snapshot::encode(&state))
}

/// Writes saved device state into the transfer pipe.
pub fn send(bytes: &[u8], mut pipe: impl Write) -> Result<(), DeviceStateError> {
    pipe.write_all(bytes).map_err(DeviceStateError::Write)
}

/// Reads device state from the transfer pipe, at most [`MAX_DEVICE_STATE`] bytes.
pub fn receive(pipe: impl Read) -> Result<Vec<u8>, DeviceStateError> {
    let mut bytes = Vec::new();
    pipe.take(MAX_DEVICE_STATE + 1)
        .read_to_end(&mut bytes)
        .map_err(DeviceStateError::Read)?;
    if bytes.len() as u64 > MAX_DEVICE_STATE {
        return Err(DeviceStateError::TooLarge);
    }
    Ok(bytes)
}

/// Makes `engine` the instance `bytes` hold. On failure the engine keeps running the instance
/// it had.
pub fn load(engine: &mut dyn Coprocessor, bytes: &[u8]) -> Result<(), DeviceStateError> {
    let state = snapshot::decode(bytes)?;
    engine
        .import_state(&state)
        .map_err(DeviceStateError::Import)?;
    info!("migration: device state loaded ({} bytes)", bytes.len());
    Ok(())
}
