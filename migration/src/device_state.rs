//! vhost-user DEVICE_STATE: moving the device state (a sealed migration package, never a
//! plain snapshot) through the pipe QEMU gives the daemon while the device is stopped, with
//! the limit a stream from the VMM is held to. Buffers wipe themselves when dropped (a
//! package holds no secret in clear, but the limit and the reader are shared with callers
//! that may).

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use zeroize::Zeroizing;

/// Largest device state accepted from a migration stream.
pub const MAX_DEVICE_STATE: u64 = 16 << 20;

/// How long a transfer pipe may stay idle (no byte, no end) before the transfer fails. QEMU
/// writes the state it holds at once and closes the pipe; a VMM that leaves the pipe open
/// and silent must not hold the transfer thread, and the vhost-user thread that joins it,
/// for ever (issue 11, item 3).
pub const PIPE_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

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

/// [`send`] through a pipe the reader may leave full: fails with `TimedOut` once it has
/// accepted nothing for `idle`.
pub fn send_within<P: Write + AsFd>(
    bytes: &[u8],
    pipe: P,
    idle: Duration,
) -> Result<(), DeviceStateError> {
    send(bytes, IdleLimited { pipe, idle })
}

/// [`receive`] from a pipe the writer may leave open and silent: fails with `TimedOut` once
/// nothing has arrived for `idle`.
pub fn receive_within<P: Read + AsFd>(
    pipe: P,
    idle: Duration,
) -> Result<Zeroizing<Vec<u8>>, DeviceStateError> {
    receive(IdleLimited { pipe, idle })
}

/// The most written at once after poll said the pipe is writable (PIPE_BUF on Linux).
const PIPE_WRITE_CHUNK: usize = 4096;

/// A pipe whose every read or write waits at most `idle` for the pipe to become ready.
struct IdleLimited<P> {
    pipe: P,
    idle: Duration,
}

impl<P: AsFd> IdleLimited<P> {
    fn wait(&self, flags: PollFlags) -> io::Result<()> {
        let timeout = PollTimeout::try_from(self.idle).unwrap_or(PollTimeout::MAX);
        loop {
            let mut fds = [PollFd::new(self.pipe.as_fd(), flags)];
            match poll(&mut fds, timeout) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the transfer pipe stayed idle for {} s",
                            self.idle.as_secs_f64()
                        ),
                    ))
                }
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl<P: Read + AsFd> Read for IdleLimited<P> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.wait(PollFlags::POLLIN)?;
        self.pipe.read(buf)
    }
}

impl<P: Write + AsFd> Write for IdleLimited<P> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.wait(PollFlags::POLLOUT)?;
        // A blocking write larger than the room poll saw would block until the reader
        // drains it; one page at most fits in the room a writable pipe has.
        let n = buf.len().min(PIPE_WRITE_CHUNK);
        self.pipe.write(&buf[..n])
    }

    fn flush(&mut self) -> io::Result<()> {
        self.pipe.flush()
    }
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

    // Issue 11, item 3: a VMM that never closes the pipe (or never reads it) makes the
    // transfer fail after the idle limit instead of blocking it for ever; a writer that
    // finishes in time is read whole.
    #[test]
    fn a_pipe_left_open_and_silent_times_out() {
        use std::fs::File;
        use std::time::Instant;
        let idle = Duration::from_millis(200);

        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        let (read_end, mut write_end) = (File::from(read_end), File::from(write_end));
        write_end.write_all(b"part of a package").unwrap();
        let start = Instant::now();
        match receive_within(&read_end, idle) {
            Err(DeviceStateError::Read(e)) => assert_eq!(e.kind(), io::ErrorKind::TimedOut),
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(5));

        // A reader that never reads: the pipe fills, then the write times out.
        let big = vec![1u8; 1 << 20];
        match send_within(&big, &write_end, idle) {
            Err(DeviceStateError::Write(e)) => assert_eq!(e.kind(), io::ErrorKind::TimedOut),
            other => panic!("expected a timeout, got {other:?}"),
        }

        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        let (read_end, write_end) = (File::from(read_end), File::from(write_end));
        let writer = std::thread::spawn(move || send_within(&[9u8; 100_000], write_end, idle));
        assert_eq!(*receive_within(read_end, idle).unwrap(), vec![9u8; 100_000]);
        writer.join().unwrap().unwrap();
    }
}
