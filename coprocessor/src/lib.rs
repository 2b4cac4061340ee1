//! The crypto coprocessor: where a vTPM's commands execute.
//!
//! This crate owns the driver interface ([`Coprocessor`]) that the vhost-user device hands
//! each TPM command to, and its drivers:
//! - [`libtpms::LibtpmsEngine`] (the embedded default): libtpms linked into this process.
//!   libtpms keeps global state, so there is exactly one engine per process and therefore one
//!   daemon process per VM.
//! - [`swtpm::SwtpmEngine`]: an existing swtpm process reached over its control and data
//!   sockets, for operators who run swtpm today and as a benchmark baseline.
//!
//! An engine reaches durable storage only through the [`StateStore`] seam; the encrypted state
//! directory behind it lives in the `vtpm-state` crate, how a whole instance travels between
//! daemons ([`EngineState`] serialised) in `migration`, and the instance's certificates in
//! `identity`.

pub mod libtpms;
pub mod store;
pub mod swtpm;

pub use store::{StateStore, StoreError};

use std::path::PathBuf;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// Errors of the coprocessor drivers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("libtpms {call} failed with TPM result {code:#x}")]
    Libtpms { call: &'static str, code: u32 },
    #[error(
        "libtpms is already in use by another engine in this process (one engine per process)"
    )]
    EngineInUse,
    #[error("command of {0} bytes exceeds the engine's limit")]
    CommandTooLarge(usize),
    #[error("state store: {0}")]
    Store(#[source] StoreError),
    #[error("swtpm {what}: {source}")]
    SwtpmIo {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("swtpm control command {cmd:#x} failed with result {code:#x}")]
    SwtpmControl { cmd: u32, code: u32 },
    #[error("swtpm returned a malformed response: {0}")]
    SwtpmProtocol(String),
    #[error("{0} is not supported by this engine")]
    Unsupported(&'static str),
    #[error("cannot start engine {engine} at {path}: {reason}")]
    Start {
        engine: &'static str,
        path: PathBuf,
        reason: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Upper bound for one state blob; libtpms' permanent state is tens of KiB.
pub const MAX_STATE_BLOB: usize = 4 << 20;

/// A whole instance as an engine exports and imports it: the permanent (NV) state and the
/// volatile state of the running TPM (loaded objects, sessions, PCRs). How it is serialised
/// and protected on its way to another daemon is the `migration` crate's business.
///
/// Both blobs hold the TPM's secrets (seeds, keys): they are wiped when the value is dropped,
/// and its `Debug` shows their sizes only.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct EngineState {
    pub permanent: Vec<u8>,
    pub volatile: Vec<u8>,
}

impl std::fmt::Debug for EngineState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineState")
            .field("permanent_len", &self.permanent.len())
            .field("volatile_len", &self.volatile.len())
            .finish()
    }
}

/// One vTPM instance's engine, as the device sees it.
///
/// Implementations execute one command at a time; the caller serialises access.
pub trait Coprocessor: Send {
    /// Short name of the driver, for logs (`libtpms`, `swtpm`).
    fn driver_name(&self) -> &'static str;

    /// Executes one complete TPM 2.0 command and returns the complete response.
    ///
    /// The engine may modify `command` in place (libtpms decrypts parameters there).
    /// The response borrows the engine's buffer and stays valid until the next call. A TPM
    /// that rejects the command still returns `Ok` with its error response; `Err` means the
    /// engine itself failed and the caller must answer the guest with `TPM_RC_FAILURE`.
    fn execute(&mut self, command: &mut [u8]) -> Result<&[u8]>;

    /// Wipes the last response from the engine's buffer once the caller has delivered it: a
    /// response may carry secrets (unsealed data, random bytes, decrypted parameters) that
    /// must not linger in the daemon's memory until the next command overwrites them.
    fn wipe_response(&mut self) {}

    /// Power-cycles the TPM (`_TPM_Init`): volatile state is lost, the guest must send
    /// TPM2_Startup again. Used when the device is reset.
    fn power_cycle(&mut self) -> Result<()>;

    /// Makes the current state durable so that a later start resumes where this one stopped,
    /// including volatile state (loaded sessions and objects, PCR values). Called on clean
    /// shutdown.
    fn save(&mut self) -> Result<()>;

    /// Serialises the whole instance (permanent and volatile state) for live migration.
    /// The caller guarantees no command runs meanwhile.
    fn export_state(&mut self) -> Result<EngineState>;

    /// Replaces this instance with an exported one: the TPM continues exactly where the
    /// exporter stopped. On failure the previous instance is restored and keeps running.
    fn import_state(&mut self, state: &EngineState) -> Result<()>;

    /// Opens the platform hierarchy to its empty password for the host's own platform
    /// commands on a running instance (re-issuing vEK certificates after a migration);
    /// `true` if it was closed and [`Coprocessor::close_platform`] must close it again. A
    /// bare engine has nothing in front of it (`false`); the daemon's platform firmware
    /// keeps the hierarchy closed to the guest (docs/adr/0011). Use [`with_platform`].
    fn open_platform(&mut self) -> bool {
        false
    }

    /// Closes what [`Coprocessor::open_platform`] opened.
    fn close_platform(&mut self) {}
}

/// Runs `f` on `engine` with the platform hierarchy usable with its empty password (see
/// [`Coprocessor::open_platform`]), and closes it again afterwards. The caller holds the
/// engine, so no guest command runs meanwhile.
pub fn with_platform<T>(
    engine: &mut dyn Coprocessor,
    f: impl FnOnce(&mut dyn Coprocessor) -> T,
) -> T {
    let opened = engine.open_platform();
    let result = f(&mut *engine);
    if opened {
        engine.close_platform();
    }
    result
}
