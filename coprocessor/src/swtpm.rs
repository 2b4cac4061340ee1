//! Driver for an existing swtpm process (`swtpm socket --tpm2 --server ... --ctrl ...`).
//!
//! The data channel carries raw TPM commands and responses; the control channel carries
//! swtpm's ioctl-style commands (a 4-byte big-endian code, then a request structure; see
//! swtpm_ioctls(3)). swtpm owns its state directory: it persists NV itself, and
//! `CMD_STORE_VOLATILE` asks it to save the volatile state.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::info;
use tpm_proto::{Header, HEADER_SIZE, MAX_BUFFER_SIZE};
use zeroize::Zeroize;

use self::ctrl::{CMD_INIT, CMD_STORE_VOLATILE, PTM_INIT_FLAG_DELETE_VOLATILE};
use crate::{Coprocessor, EngineState, Error, Result};

/// swtpm's control channel (swtpm_ioctls(3)), as this engine and the import of swtpm state
/// (`vtpm_state::swtpm_import`) use it.
pub mod ctrl {
    use std::io::{self, Read, Write};

    pub const CMD_INIT: u32 = 0x02;
    pub const CMD_SHUTDOWN: u32 = 0x03;
    pub const CMD_STORE_VOLATILE: u32 = 0x0a;
    pub const CMD_GET_STATEBLOB: u32 = 0x0c;
    /// CMD_INIT flag: drop the volatile state swtpm saved (a power cycle).
    pub const PTM_INIT_FLAG_DELETE_VOLATILE: u32 = 1;

    /// Sends control command `cmd` with `payload` in one write (swtpm reads each command with
    /// one `read`) and returns the TPM result that starts every answer; whatever else the
    /// answer holds is left in `stream`. An I/O error comes with the half of the exchange
    /// that failed: "control write" or "control read".
    pub fn command(
        stream: &mut (impl Read + Write),
        cmd: u32,
        payload: &[u8],
    ) -> Result<u32, (&'static str, io::Error)> {
        let mut req = Vec::with_capacity(4 + payload.len());
        req.extend_from_slice(&cmd.to_be_bytes());
        req.extend_from_slice(payload);
        stream.write_all(&req).map_err(|e| ("control write", e))?;
        let mut res = [0u8; 4];
        stream
            .read_exact(&mut res)
            .map_err(|e| ("control read", e))?;
        Ok(u32::from_be_bytes(res))
    }
}

/// Largest response accepted from swtpm (its own default buffer is 4096 as well).
const MAX_RESPONSE: usize = MAX_BUFFER_SIZE;

/// How long a command or a control request may take before the engine gives up on it: a
/// wedged swtpm must not hang the device forever.
const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// A vTPM engine served by an external swtpm.
///
/// Each channel is a byte stream on which answers are matched to requests by order only. Once
/// an exchange fails half-way (a timeout, a short read, a response too large to take in), the
/// stream may still hold the rest of that answer, or receive it later, and the next request
/// would be paired with it. So a failed exchange closes its channel, and the next request
/// opens a new connection: swtpm finishes the abandoned command, fails to deliver it to the
/// closed connection, and only then accepts the new one.
pub struct SwtpmEngine {
    ctrl: Channel,
    data: Channel,
    resp: Vec<u8>,
}

/// One of swtpm's two sockets: connected on demand, dropped after a failed exchange.
struct Channel {
    path: PathBuf,
    stream: Option<UnixStream>,
    timeout: Duration,
}

impl Channel {
    fn new(path: &Path, timeout: Duration) -> Self {
        Channel {
            path: path.to_path_buf(),
            stream: None,
            timeout,
        }
    }

    /// The connected stream, connecting first if the last exchange failed (or none ran).
    fn stream(&mut self) -> Result<&mut UnixStream> {
        if self.stream.is_none() {
            let stream = UnixStream::connect(&self.path).map_err(|e| Error::Start {
                engine: "swtpm",
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
            stream
                .set_read_timeout(Some(self.timeout))
                .map_err(io("set timeout"))?;
            stream
                .set_write_timeout(Some(self.timeout))
                .map_err(io("set timeout"))?;
            self.stream = Some(stream);
        }
        match self.stream.as_mut() {
            Some(stream) => Ok(stream),
            None => Err(Error::SwtpmProtocol("no connection".into())),
        }
    }

    /// Runs one request/answer exchange; if it fails, the connection is closed so that
    /// whatever is left of this answer can never be read as the answer to a later request.
    fn exchange<T>(&mut self, f: impl FnOnce(&mut UnixStream) -> Result<T>) -> Result<T> {
        let result = f(self.stream()?);
        if result.is_err() {
            self.stream = None;
        }
        result
    }
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::SwtpmIo { what, source }
}

impl SwtpmEngine {
    /// Connects to swtpm's control and data sockets and powers the TPM on (keeping any
    /// volatile state swtpm saved).
    pub fn connect(ctrl_path: &Path, data_path: &Path) -> Result<Self> {
        Self::connect_with_timeout(ctrl_path, data_path, IO_TIMEOUT)
    }

    fn connect_with_timeout(ctrl_path: &Path, data_path: &Path, timeout: Duration) -> Result<Self> {
        let mut engine = SwtpmEngine {
            ctrl: Channel::new(ctrl_path, timeout),
            data: Channel::new(data_path, timeout),
            resp: Vec::with_capacity(MAX_RESPONSE),
        };
        // Both sockets are connected now, so that a wrong path fails the start.
        engine.ctrl.stream()?;
        engine.data.stream()?;
        engine.control(CMD_INIT, &0u32.to_be_bytes())?;
        info!(
            "swtpm engine connected (ctrl {}, data {})",
            ctrl_path.display(),
            data_path.display()
        );
        Ok(engine)
    }

    /// Sends a control command and checks the 4-byte result that starts every answer.
    fn control(&mut self, cmd: u32, payload: &[u8]) -> Result<()> {
        let code = self.ctrl.exchange(|stream| {
            ctrl::command(stream, cmd, payload)
                .map_err(|(what, source)| Error::SwtpmIo { what, source })
        })?;
        if code != 0 {
            return Err(Error::SwtpmControl { cmd, code });
        }
        Ok(())
    }
}

impl Coprocessor for SwtpmEngine {
    fn driver_name(&self) -> &'static str {
        "swtpm"
    }

    fn execute(&mut self, command: &mut [u8]) -> Result<&[u8]> {
        let resp = &mut self.resp;
        self.data.exchange(|data| {
            data.write_all(command).map_err(io("data write"))?;
            let mut hdr = [0u8; HEADER_SIZE];
            data.read_exact(&mut hdr).map_err(io("data read"))?;
            let size = Header::parse(&hdr)
                .map_err(|e| Error::SwtpmProtocol(e.to_string()))?
                .size as usize;
            if !(HEADER_SIZE..=MAX_RESPONSE).contains(&size) {
                return Err(Error::SwtpmProtocol(format!(
                    "response size {size} outside {HEADER_SIZE}..={MAX_RESPONSE}"
                )));
            }
            resp.clear();
            resp.extend_from_slice(&hdr);
            resp.resize(size, 0);
            data.read_exact(&mut resp[HEADER_SIZE..])
                .map_err(io("data read"))
        })?;
        Ok(&self.resp)
    }

    fn wipe_response(&mut self) {
        // Zeroes the whole capacity (one allocation of MAX_RESPONSE, never regrown).
        self.resp.zeroize();
    }

    fn power_cycle(&mut self) -> Result<()> {
        self.control(CMD_INIT, &PTM_INIT_FLAG_DELETE_VOLATILE.to_be_bytes())
    }

    fn save(&mut self) -> Result<()> {
        self.control(CMD_STORE_VOLATILE, &[])
    }

    fn export_state(&mut self) -> Result<EngineState> {
        Err(Error::Unsupported(
            "live migration of the device state (swtpm engine)",
        ))
    }

    fn import_state(&mut self, _state: &EngineState) -> Result<()> {
        Err(Error::Unsupported(
            "live migration of the device state (swtpm engine)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::thread;
    use std::time::Duration;

    use super::*;

    /// A response with tag TPM_ST_NO_SESSIONS, its size, TPM_RC_SUCCESS and `marker`.
    fn response(marker: u8) -> Vec<u8> {
        let mut r = vec![0x80, 0x01, 0, 0, 0, 11, 0, 0, 0, 0];
        r.push(marker);
        r
    }

    /// A command (TPM2_GetRandom's header) whose last byte is `marker`.
    fn command(marker: u8) -> Vec<u8> {
        vec![0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, marker]
    }

    /// Reads one 12-byte command; None once the client has gone.
    fn read_command(conn: &mut UnixStream) -> Option<u8> {
        let mut c = [0u8; 12];
        conn.read_exact(&mut c).ok().map(|_| c[11])
    }

    /// A stand-in swtpm: its control socket acknowledges everything; its data socket serves
    /// one connection at a time, as swtpm does, and answers each command through `answer`.
    fn fake_swtpm(
        dir: &Path,
        answer: impl Fn(&mut UnixStream, u8) + Send + 'static,
    ) -> (PathBuf, PathBuf) {
        let ctrl_path = dir.join("ctrl");
        let data_path = dir.join("data");
        let ctrl = UnixListener::bind(&ctrl_path).unwrap();
        let data = UnixListener::bind(&data_path).unwrap();
        thread::spawn(move || {
            for mut conn in ctrl.incoming().flatten() {
                let mut req = [0u8; 8];
                while conn.read(&mut req).map(|n| n > 0).unwrap_or(false) {
                    if conn.write_all(&[0; 4]).is_err() {
                        break;
                    }
                }
            }
        });
        thread::spawn(move || {
            for mut conn in data.incoming().flatten() {
                while let Some(marker) = read_command(&mut conn) {
                    answer(&mut conn, marker);
                }
            }
        });
        (ctrl_path, data_path)
    }

    fn engine_with(
        answer: impl Fn(&mut UnixStream, u8) + Send + 'static,
    ) -> (SwtpmEngine, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (ctrl, data) = fake_swtpm(dir.path(), answer);
        let engine =
            SwtpmEngine::connect_with_timeout(&ctrl, &data, Duration::from_millis(500)).unwrap();
        (engine, dir)
    }

    // Issue 11, item 4: the answer to a command that timed out arrives later; it must not be
    // taken for the answer to the next command.
    #[test]
    fn a_late_answer_is_never_paired_with_the_next_command() {
        let (mut engine, _dir) = engine_with(|conn, marker| {
            if marker == 1 {
                thread::sleep(Duration::from_millis(800));
            }
            let _ = conn.write_all(&response(marker));
        });
        assert!(matches!(
            engine.execute(&mut command(1)),
            Err(Error::SwtpmIo {
                what: "data read",
                ..
            })
        ));
        for marker in 2..5 {
            assert_eq!(
                engine.execute(&mut command(marker)).unwrap(),
                response(marker)
            );
        }
    }

    // A short answer (the header promises more than comes) and one too large to take in both
    // leave bytes behind; the next command still gets its own answer.
    #[test]
    fn short_and_oversized_answers_do_not_shift_later_answers() {
        let (mut engine, _dir) = engine_with(|conn, marker| match marker {
            1 => {
                // Promises 20 bytes, sends 11 now and the rest late.
                let mut r = response(marker);
                r[5] = 20;
                let _ = conn.write_all(&r);
                thread::sleep(Duration::from_millis(800));
                let _ = conn.write_all(&[0xee; 9]);
            }
            2 => {
                let mut r = vec![0x80, 0x01, 0, 1, 0, 0, 0, 0, 0, 0];
                r.extend_from_slice(&[0xdd; 64]);
                let _ = conn.write_all(&r);
            }
            _ => {
                let _ = conn.write_all(&response(marker));
            }
        });
        assert!(engine.execute(&mut command(1)).is_err());
        assert_eq!(engine.execute(&mut command(3)).unwrap(), response(3));
        assert!(matches!(
            engine.execute(&mut command(2)),
            Err(Error::SwtpmProtocol(_))
        ));
        assert_eq!(engine.execute(&mut command(4)).unwrap(), response(4));
    }
}
