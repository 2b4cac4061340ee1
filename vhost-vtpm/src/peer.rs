//! Who may drive the device: the peer credentials of a vhost-user frontend (issue 11, item 3).
//!
//! The frontend hands the daemon guest memory, runs TPM commands and carries the vTPM's
//! state in and out, so only the processes an operator named may be one. The kernel records
//! the credentials of a Unix socket's peer at connect time (`SO_PEERCRED`); the daemon reads
//! them from the accepted connection and admits the daemon's own user, root (which could
//! take over the daemon anyway) and the users given with `--frontend-uid`. Anyone else is
//! disconnected.
//!
//! vhost-user-backend accepts the connection and starts serving it on its own thread before
//! the daemon sees it, so every backend entry point that touches the device (features,
//! memory, reset, queues, DEVICE_STATE) first waits for [`Admission`]'s verdict; a refused
//! connection is shut down before the verdict is given, so not even the answer to
//! GET_FEATURES reaches it.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use nix::sys::socket::{getsockname, getsockopt, sockopt, UnixAddr, UnixCredentials};

/// How long a backend entry point waits for the verdict before refusing: the daemon gives it
/// right after the accept, so this only bounds a daemon thread that failed to give it.
const VERDICT_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("reading the listening socket's address: {0}")]
    ListenerAddress(nix::Error),
    #[error("listing /proc/self/fd: {0}")]
    Fds(std::io::Error),
    #[error("no connection accepted on the listening socket was found")]
    NotFound,
    #[error("reading the frontend's credentials (SO_PEERCRED): {0}")]
    Credentials(nix::Error),
}

/// The verdict on one connection, given once by the daemon's main thread and awaited by the
/// backend's entry points. Once given it is read without a lock: `handle_event` asks on
/// every queue kick.
#[derive(Debug, Default)]
pub struct Admission {
    /// [`UNDECIDED`], [`ADMITTED`] or [`REFUSED`].
    verdict: AtomicU8,
    lock: Mutex<()>,
    given: Condvar,
}

const UNDECIDED: u8 = 0;
const ADMITTED: u8 = 1;
const REFUSED: u8 = 2;

impl Admission {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the verdict and wakes every waiting entry point.
    pub fn decide(&self, admitted: bool) {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let verdict = if admitted { ADMITTED } else { REFUSED };
        self.verdict.store(verdict, Ordering::Release);
        self.given.notify_all();
    }

    /// Waits for the verdict: whether the frontend of this connection was admitted. No
    /// verdict within [`VERDICT_WAIT`] counts as a refusal.
    pub fn admitted(&self) -> bool {
        match self.verdict.load(Ordering::Acquire) {
            ADMITTED => return true,
            REFUSED => return false,
            _ => {}
        }
        let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let _guard = self
            .given
            .wait_timeout_while(guard, VERDICT_WAIT, |_| {
                self.verdict.load(Ordering::Acquire) == UNDECIDED
            })
            .unwrap_or_else(|p| p.into_inner());
        self.verdict.load(Ordering::Acquire) == ADMITTED
    }
}

/// Which frontends are admitted besides the daemon's own user and root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrontendPolicy {
    /// `--frontend-uid`.
    pub uids: Vec<u32>,
}

impl FrontendPolicy {
    pub fn admits(&self, peer: &UnixCredentials) -> bool {
        let uid = peer.uid();
        uid == 0 || uid == nix::unistd::geteuid().as_raw() || self.uids.contains(&uid)
    }
}

/// The credentials of the frontend connected through `listener`: the connected socket in
/// this process whose local address is the listener's (the listener accepts one frontend at
/// a time, and the connection is already accepted when this runs).
pub fn frontend_credentials(listener: &impl AsRawFd) -> Result<UnixCredentials, PeerError> {
    let listener_fd = listener.as_raw_fd();
    let address: UnixAddr = getsockname(listener_fd).map_err(PeerError::ListenerAddress)?;
    let fds = std::fs::read_dir("/proc/self/fd").map_err(PeerError::Fds)?;
    for entry in fds.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        if fd == listener_fd {
            continue;
        }
        // SAFETY: the descriptor is only borrowed for the queries below, never closed here;
        // one that another thread closed meanwhile makes them fail with EBADF.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        if !matches!(getsockopt(&borrowed, sockopt::AcceptConn), Ok(false)) {
            continue; // not a socket, or a listening one
        }
        match getsockname::<UnixAddr>(fd) {
            Ok(local) if local == address => {}
            _ => continue,
        }
        return getsockopt(&borrowed, sockopt::PeerCredentials).map_err(PeerError::Credentials);
    }
    Err(PeerError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn finds_the_accepted_connection_and_its_peer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        // A connection of another socket in the process is not the frontend.
        let other = dir.path().join("o");
        let _other_listener = UnixListener::bind(&other).unwrap();
        let _unrelated = UnixStream::connect(&other).unwrap();
        assert!(matches!(
            frontend_credentials(&listener),
            Err(PeerError::NotFound)
        ));
        let _client = UnixStream::connect(&path).unwrap();
        let (_accepted, _) = listener.accept().unwrap();
        let creds = frontend_credentials(&listener).unwrap();
        assert_eq!(creds.uid(), nix::unistd::geteuid().as_raw());
        assert_eq!(creds.pid(), std::process::id() as i32);
        assert!(FrontendPolicy::default().admits(&creds));
    }

    #[test]
    fn admission_waits_for_the_verdict() {
        let admission = std::sync::Arc::new(Admission::new());
        let waiter = {
            let a = admission.clone();
            std::thread::spawn(move || a.admitted())
        };
        std::thread::sleep(Duration::from_millis(50));
        admission.decide(true);
        assert!(waiter.join().unwrap());
        let refused = Admission::new();
        refused.decide(false);
        assert!(!refused.admitted());
    }
}
