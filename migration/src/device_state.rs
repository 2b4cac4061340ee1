//! vhost-user DEVICE_STATE: moving the device state (a sealed migration package, never a
//! plain snapshot) through the pipe QEMU gives the daemon while the device is stopped, with
//! the limit a stream from the VMM is held to. Buffers wipe themselves when dropped (a
//! package holds no secret in clear, but the limit and the reader are shared with callers
//! that may).

use std::io::{self, Read, Write};

use zeroize::Zeroizing;

/// Largest device state accepted from a migration stream.
pub const MAX_DEVICE_STATE: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DeviceStateError {
    #[error("writing device state: {0}")]
    Write(#[source] std::io::Error),
    #[error("reading device state: {0}")]
    Read(#[source] std::io::Error),
    #[error("device state larger than {MAX_DEVICE_STATE} bytes")]
    TooLarge,
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
