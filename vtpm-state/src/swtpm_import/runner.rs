//! Running swtpm on a private copy of the operator's state, and asking it for decrypted blobs.
//!
//! swtpm writes into the directory it serves, so it only ever runs on a [`Scratch`] copy: a
//! private directory (mode 0700) under the system's temporary directory, removed when
//! dropped. [`Swtpm`] is `swtpm socket` on that copy, connected to its control channel; the
//! key or passphrase reaches it through a pipe, never on disk nor on its command line, and
//! the process is killed and reaped whenever the value is dropped, on every error path.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use log::warn;
use zeroize::Zeroizing;

use coprocessor::swtpm::ctrl::{self, CMD_GET_STATEBLOB, CMD_SHUTDOWN};

use super::format::{parse_stateblob_answer, BlobKind, FormatError, MAX_FILE};
use super::key::SwtpmCipher;
use super::secret::Secret;

const SWTPM: &str = "swtpm";
const CTRL_SOCKET: &str = "ctrl.sock";
pub(super) const DATA_SOCKET: &str = "data.sock";
const SWTPM_LOG: &str = "swtpm.log";
const START_TIMEOUT: Duration = Duration::from_secs(10);
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

// CMD_GET_STATEBLOB's flags (swtpm_ioctls(3)).
const PTM_STATE_FLAG_DECRYPTED: u32 = 1;
const PTM_STATE_FLAG_ENCRYPTED: u32 = 2;

/// Why running swtpm, or what it answered, failed.
#[derive(Debug, thiserror::Error)]
pub enum SwtpmError {
    #[error("cannot create swtpm's log {}: {source}", path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot run {SWTPM} (scripts/setup.sh installs it): {source}")]
    Spawn {
        #[source]
        source: io::Error,
    },
    #[error("swtpm exited ({status}) before opening its control socket; swtpm said: {log}")]
    Exited { status: ExitStatus, log: String },
    #[error("swtpm did not open its control socket within {START_TIMEOUT:?}; swtpm said: {log}")]
    StartTimeout { log: String },
    #[error("swtpm control channel ({what}): {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("swtpm control command {cmd:#x} failed with TPM result {code:#x}; swtpm said: {log}")]
    Control { cmd: u32, code: u32, log: String },
    #[error("swtpm's decrypted {kind} state from {} is unusable: {problem}", file.display())]
    BadBlob {
        file: PathBuf,
        kind: BlobKind,
        #[source]
        problem: BlobAnswerError,
    },
}

/// What is wrong with swtpm's answer to `CMD_GET_STATEBLOB`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobAnswerError {
    #[error("swtpm left it encrypted")]
    LeftEncrypted,
    #[error("a chunk of {length} bytes of {total}")]
    Chunk { length: usize, total: usize },
    #[error("{total} bytes, more than {MAX_FILE}")]
    TooLarge { total: usize },
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// A private directory (mode 0700) under the system's temporary directory, removed on drop.
pub(super) struct Scratch(Option<tempfile::TempDir>);

impl Scratch {
    pub(super) fn new() -> io::Result<Scratch> {
        // A fresh random name, created with mkdir (which fails on anything already there, a
        // symlink included).
        tempfile::Builder::new()
            .prefix("vhost-vtpm-import-")
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir()
            .map(|d| Scratch(Some(d)))
    }

    pub(super) fn path(&self) -> &Path {
        self.0.as_ref().map_or(Path::new(""), |d| d.path())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let path = dir.path().to_owned();
            if let Err(e) = dir.close() {
                warn!("cannot remove {}: {e}", path.display());
            }
        }
    }
}

/// swtpm's `PTM_BLOB_TYPE_*` for a blob.
fn ptm_blob_type(kind: BlobKind) -> u32 {
    match kind {
        BlobKind::Permanent => 1,
        BlobKind::Volatile => 2,
    }
}

/// A swtpm child process; killed and reaped when dropped.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        // Fails only if it has exited already; `wait` then reaps it (or returns its status).
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `swtpm socket` serving a state directory, connected to its control channel.
pub(super) struct Swtpm {
    ctrl: UnixStream,
    log: PathBuf,
    // Last: dropped after the socket is closed.
    process: Reaper,
}

fn unixio(path: &Path) -> OsString {
    let mut arg = OsString::from("type=unixio,path=");
    arg.push(path);
    arg
}

impl Swtpm {
    /// Starts swtpm on `state` (an absolute path) with its sockets and log in `scratch`; the
    /// key or passphrase, if any, goes through a pipe so that it is never copied to disk nor
    /// shown on swtpm's command line.
    pub(super) fn start(
        state: &Path,
        key: Option<(SwtpmCipher, &Secret)>,
        scratch: &Path,
    ) -> Result<Swtpm, SwtpmError> {
        let ctrl_path = scratch.join(CTRL_SOCKET);
        let log = scratch.join(SWTPM_LOG);
        let log_file = File::create(&log).map_err(|source| SwtpmError::Log {
            path: log.clone(),
            source,
        })?;
        let mut tpmstate = OsString::from("dir=");
        tpmstate.push(state);
        let mut cmd = Command::new(SWTPM);
        cmd.args(["socket", "--tpm2", "--tpmstate"])
            .arg(tpmstate)
            .arg("--ctrl")
            .arg(unixio(&ctrl_path))
            .arg("--server")
            .arg(unixio(&scratch.join(DATA_SOCKET)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        if let Some((mode, secret)) = key {
            cmd.arg("--key")
                .arg(secret.swtpm_key_option(mode))
                .stdin(Stdio::piped());
        }
        let mut process = Reaper(cmd.spawn().map_err(|source| SwtpmError::Spawn { source })?);
        if let (Some((_, secret)), Some(mut pipe)) = (key, process.0.stdin.take()) {
            // One write of at most PIPE_BUF bytes: it lands in the pipe whole, and closing the
            // pipe (at the end of this block) ends a passphrase. A failure means swtpm exited,
            // reported below.
            if let Err(e) = pipe.write_all(secret.bytes()) {
                warn!("passing the key to swtpm: {e}");
            }
        }
        let deadline = Instant::now() + START_TIMEOUT;
        let ctrl = loop {
            let exited = process.0.try_wait().map_err(|source| SwtpmError::Io {
                what: "wait",
                source,
            })?;
            if let Some(status) = exited {
                return Err(SwtpmError::Exited {
                    status,
                    log: read_log(&log),
                });
            }
            match UnixStream::connect(&ctrl_path) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Err(_) => {
                    return Err(SwtpmError::StartTimeout {
                        log: read_log(&log),
                    })
                }
            }
        };
        let io = |source| SwtpmError::Io {
            what: "set timeout",
            source,
        };
        ctrl.set_read_timeout(Some(CONTROL_TIMEOUT)).map_err(io)?;
        ctrl.set_write_timeout(Some(CONTROL_TIMEOUT)).map_err(io)?;
        Ok(Swtpm { ctrl, log, process })
    }

    /// The swtpm process' id.
    #[cfg(test)]
    pub(super) fn pid(&self) -> u32 {
        self.process.0.id()
    }

    /// Sends a control command and returns the TPM result that starts every answer.
    pub(super) fn control(&mut self, cmd: u32, payload: &[u8]) -> Result<u32, SwtpmError> {
        ctrl::command(&mut self.ctrl, cmd, payload)
            .map_err(|(what, source)| SwtpmError::Io { what, source })
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), SwtpmError> {
        self.ctrl.read_exact(buf).map_err(|source| SwtpmError::Io {
            what: "control read",
            source,
        })
    }

    /// Fetches the decrypted `kind` blob (`CMD_GET_STATEBLOB`) of the state read from `file`,
    /// and unwraps it.
    pub(super) fn decrypted_blob(
        &mut self,
        file: &Path,
        kind: BlobKind,
    ) -> Result<Zeroizing<Vec<u8>>, SwtpmError> {
        let bad = |problem: BlobAnswerError| SwtpmError::BadBlob {
            file: file.to_owned(),
            kind,
            problem,
        };
        // From offset 0. Over a socket swtpm answers with the whole blob at once (the offset
        // only matters to its CUSE interface, whose answers are bounded): one request, whose
        // chunk must be the whole.
        let mut req = [0u8; 12];
        req[..4].copy_from_slice(&PTM_STATE_FLAG_DECRYPTED.to_be_bytes());
        req[4..8].copy_from_slice(&ptm_blob_type(kind).to_be_bytes());
        req[8..].copy_from_slice(&0u32.to_be_bytes());
        let code = self.control(CMD_GET_STATEBLOB, &req)?;
        if code != 0 {
            return Err(SwtpmError::Control {
                cmd: CMD_GET_STATEBLOB,
                code,
                log: self.log(),
            });
        }
        let mut head = [0u8; 12];
        self.read_exact(&mut head)?;
        let [f0, f1, f2, f3, t0, t1, t2, t3, l0, l1, l2, l3] = head;
        let flags = u32::from_be_bytes([f0, f1, f2, f3]);
        let total = u32::from_be_bytes([t0, t1, t2, t3]) as usize;
        let length = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
        if flags & PTM_STATE_FLAG_ENCRYPTED != 0 {
            return Err(bad(BlobAnswerError::LeftEncrypted));
        }
        if length != total {
            return Err(bad(BlobAnswerError::Chunk { length, total }));
        }
        if total > MAX_FILE {
            return Err(bad(BlobAnswerError::TooLarge { total }));
        }
        let mut answer = Zeroizing::new(vec![0u8; total]);
        self.read_exact(&mut answer)?;
        parse_stateblob_answer(&answer, kind).map_err(|e| bad(e.into()))
    }

    /// What swtpm wrote to its log so far, on one line.
    pub(super) fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Asks swtpm to exit and waits a little for it; dropping kills it if it did not.
    pub(super) fn shutdown(mut self) {
        match self.control(CMD_SHUTDOWN, &[]) {
            Ok(0) => {}
            Ok(code) => warn!("swtpm CMD_SHUTDOWN returned {code:#x}"),
            Err(e) => warn!("swtpm CMD_SHUTDOWN: {e}"),
        }
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while Instant::now() < deadline {
            match self.process.0.try_wait() {
                Ok(None) => thread::sleep(Duration::from_millis(10)),
                Ok(Some(_)) | Err(_) => return,
            }
        }
        warn!("swtpm did not exit within {EXIT_TIMEOUT:?} of CMD_SHUTDOWN; killing it");
    }
}

/// The last lines of swtpm's log, joined into one line for an error message.
fn read_log(path: &Path) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = lines
        .get(lines.len().saturating_sub(12)..)
        .unwrap_or_default();
    if tail.is_empty() {
        "nothing".to_owned()
    } else {
        tail.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_is_private_and_removed() {
        let scratch = Scratch::new().unwrap();
        let path = scratch.path().to_owned();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        fs::write(path.join("f"), b"x").unwrap();
        drop(scratch);
        assert!(!path.exists());
    }

    #[test]
    fn a_missing_swtpm_log_reads_as_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_log(&dir.path().join("none")), "nothing");
        let log = dir.path().join("log");
        let lines: Vec<String> = (0..20).map(|i| format!("line {i}\n\n")).collect();
        fs::write(&log, lines.concat()).unwrap();
        let tail = read_log(&log);
        assert!(tail.starts_with("line 8; line 9;"), "{tail}");
        assert!(tail.ends_with("line 19"), "{tail}");
    }
}
