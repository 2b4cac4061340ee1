//! Child processes of the tests: stopping them, waiting for what they create, running a
//! command-line tool to completion.

use std::io;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How often the testbed looks for a socket or an exit: fine enough that start-up times
/// measured through it (the cold-start benchmark) are not rounded up noticeably.
pub(crate) const POLL: Duration = Duration::from_micros(200);

/// Sends `sig` to `child` and waits at most `timeout` for it to exit.
pub fn stop_child(child: &mut Child, sig: Signal, timeout: Duration) -> io::Result<ExitStatus> {
    kill(Pid::from_raw(child.id() as i32), sig).map_err(io::Error::from)?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{:?} did not exit on {sig} within {timeout:?}", child.id()),
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until a Unix socket at `path` accepts connections: swtpm binds its socket (the
/// file appears) a moment before it listens, and a client in that gap is refused.
pub fn wait_for_listener(path: &Path, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    wait_for_path(path, timeout)?;
    loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Waits until `path` exists.
pub fn wait_for_path(path: &Path, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} did not appear within {timeout:?}", path.display()),
            ));
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// Runs a command-line tool to completion: what it printed (stdout, then stderr), as the
/// error when it failed.
pub fn run_tool(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}
