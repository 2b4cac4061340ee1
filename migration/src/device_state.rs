//! vhost-user DEVICE_STATE: the device state a daemon sends (SAVE) and accepts (LOAD) through
//! the pipe QEMU gives it while the device is stopped. The device state holds the TPM's
//! secrets: every buffer of it here wipes itself when dropped.

use std::io::{self, Read, Write};

use coprocessor::Coprocessor;
use log::info;
use zeroize::Zeroizing;

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
pub fn save(engine: &mut dyn Coprocessor) -> Result<Zeroizing<Vec<u8>>, DeviceStateError> {
    let state = engine.export_state().map_err(DeviceStateError::Export)?;
    Ok(snapshot::encode(&state))
}

/// Writes saved device state into the transfer pipe.
pub fn send(bytes: &[u8], mut pipe: impl Write) -> Result<(), DeviceStateError> {
    pipe.write_all(bytes).map_err(DeviceStateError::Write)
}

/// Reads device state from the transfer pipe, at most [`MAX_DEVICE_STATE`] bytes.
pub fn receive(pipe: impl Read) -> Result<Zeroizing<Vec<u8>>, DeviceStateError> {
    let bytes = read_wiped(pipe.take(MAX_DEVICE_STATE + 1)).map_err(DeviceStateError::Read)?;
    if bytes.len() as u64 > MAX_DEVICE_STATE {
        return Err(DeviceStateError::TooLarge);
    }
    Ok(bytes)
}

/// Reads `r` to its end into a buffer that leaves no copy behind: when it must grow, the
/// bytes move into a larger one and the old one is wiped (`read_to_end` would reallocate and
/// free the old buffer as it is).
fn read_wiped(mut r: impl Read) -> io::Result<Zeroizing<Vec<u8>>> {
    let mut bytes = Zeroizing::new(Vec::with_capacity(64 << 10));
    let mut chunk = Zeroizing::new([0u8; 16 << 10]);
    loop {
        let n = match r.read(&mut chunk[..]) {
            Ok(0) => return Ok(bytes),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if bytes.capacity() - bytes.len() < n {
            let mut larger = Zeroizing::new(Vec::with_capacity(2 * (bytes.len() + n)));
            larger.extend_from_slice(&bytes);
            bytes = larger;
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_reads_the_whole_stream_and_refuses_more_than_the_limit() {
        // Larger than the first buffer and than one chunk, not a multiple of either.
        let state: Vec<u8> = (0..300_001u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(*receive(&state[..]).unwrap(), state);
        assert!(receive(&[][..]).unwrap().is_empty());
        let huge = std::io::repeat(7).take(MAX_DEVICE_STATE + 1);
        assert!(matches!(receive(huge), Err(DeviceStateError::TooLarge)));
        let exact = std::io::repeat(7).take(MAX_DEVICE_STATE);
        assert_eq!(receive(exact).unwrap().len() as u64, MAX_DEVICE_STATE);
    }
}
