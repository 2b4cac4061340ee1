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

/// A vTPM engine served by an external swtpm.
pub struct SwtpmEngine {
    ctrl: UnixStream,
    data: UnixStream,
    resp: Vec<u8>,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::SwtpmIo { what, source }
}

impl SwtpmEngine {
    /// Connects to swtpm's control and data sockets and powers the TPM on (keeping any
    /// volatile state swtpm saved).
    pub fn connect(ctrl_path: &Path, data_path: &Path) -> Result<Self> {
        let connect = |p: &Path| {
            UnixStream::connect(p).map_err(|e| Error::Start {
                engine: "swtpm",
                path: PathBuf::from(p),
                reason: e.to_string(),
            })
        };
        let ctrl = connect(ctrl_path)?;
        let data = connect(data_path)?;
        // A wedged swtpm must not hang the device forever.
        for s in [&ctrl, &data] {
            s.set_read_timeout(Some(Duration::from_secs(120)))
                .map_err(io("set timeout"))?;
        }
        let mut engine = SwtpmEngine {
            ctrl,
            data,
            resp: Vec::with_capacity(MAX_RESPONSE),
        };
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
        let code = ctrl::command(&mut self.ctrl, cmd, payload)
            .map_err(|(what, source)| Error::SwtpmIo { what, source })?;
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
        self.data.write_all(command).map_err(io("data write"))?;
        let mut hdr = [0u8; HEADER_SIZE];
        self.data.read_exact(&mut hdr).map_err(io("data read"))?;
        let size = Header::parse(&hdr)
            .map_err(|e| Error::SwtpmProtocol(e.to_string()))?
            .size as usize;
        if !(HEADER_SIZE..=MAX_RESPONSE).contains(&size) {
            return Err(Error::SwtpmProtocol(format!(
                "response size {size} outside {HEADER_SIZE}..={MAX_RESPONSE}"
            )));
        }
        self.resp.clear();
        self.resp.extend_from_slice(&hdr);
        self.resp.resize(size, 0);
        self.data
            .read_exact(&mut self.resp[HEADER_SIZE..])
            .map_err(io("data read"))?;
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
