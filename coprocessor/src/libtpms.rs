//! The embedded engine: libtpms linked into this process.
//!
//! libtpms keeps all TPM state in globals and reaches storage through process-wide callbacks,
//! so this module enforces one [`LibtpmsEngine`] per process and routes the callbacks to the
//! engine's [`StateStore`]. libtpms writes its permanent state (`permall`) through the
//! `tpm_nvram_storedata` callback *during* the command that changed it, before the response
//! exists: with a store whose `store` is durable on return, every persistent effect the guest
//! sees acknowledged is already on disk.
//!
//! Every copy of the TPM's state this module makes (blobs loaded from the store, the
//! volatile state libtpms serialises, the previous instance kept during an import) and every
//! response is wiped once used (`zeroize`): they hold seeds, keys and unsealed data.

use std::ffi::{c_char, c_int, CStr};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use log::{error, info};
use zeroize::{Zeroize, Zeroizing};

use crate::store::{StateStore, StoreError};
use crate::{Coprocessor, EngineState, Error, Result};

type TpmResult = u32;
const TPM_SUCCESS: TpmResult = 0;
const TPM_FAIL: TpmResult = 9;
/// libtpms' "no such blob yet" answer from `tpm_nvram_loaddata`.
const TPM_RETRY: TpmResult = 0x800;
const TPMLIB_TPM_VERSION_2: c_int = 1;

/// Blob libtpms keeps its permanent (NV) state in.
pub const PERMANENT_BLOB: &str = "permall";
/// Blob a clean shutdown saves the volatile state in.
pub const VOLATILE_BLOB: &str = "volatilestate";

#[repr(C)]
struct LibtpmsCallbacks {
    size_of_struct: c_int,
    tpm_nvram_init: Option<extern "C" fn() -> TpmResult>,
    tpm_nvram_loaddata:
        Option<unsafe extern "C" fn(*mut *mut u8, *mut u32, u32, *const c_char) -> TpmResult>,
    tpm_nvram_storedata:
        Option<unsafe extern "C" fn(*const u8, u32, u32, *const c_char) -> TpmResult>,
    tpm_nvram_deletename: Option<unsafe extern "C" fn(u32, *const c_char, u8) -> TpmResult>,
    tpm_io_init: Option<extern "C" fn() -> TpmResult>,
    tpm_io_getlocality: Option<unsafe extern "C" fn(*mut u32, u32) -> TpmResult>,
    tpm_io_getphysicalpresence: Option<unsafe extern "C" fn(*mut u8, u32) -> TpmResult>,
}

extern "C" {
    fn TPMLIB_ChooseTPMVersion(ver: c_int) -> TpmResult;
    fn TPMLIB_RegisterCallbacks(cbs: *mut LibtpmsCallbacks) -> TpmResult;
    fn TPMLIB_MainInit() -> TpmResult;
    fn TPMLIB_Terminate();
    fn TPMLIB_Process(
        respbuffer: *mut *mut u8,
        resp_size: *mut u32,
        respbufsize: *mut u32,
        command: *mut u8,
        command_size: u32,
    ) -> TpmResult;
    fn TPMLIB_VolatileAll_Store(buffer: *mut *mut u8, buflen: *mut u32) -> TpmResult;
}

/// Set while an engine exists: libtpms has one TPM per process.
static ENGINE_IN_USE: AtomicBool = AtomicBool::new(false);
/// The store the libtpms callbacks read and write.
static STORE: Mutex<Option<Box<dyn StateStore>>> = Mutex::new(None);
/// Whether the last `storedata` callback failed; checked after every command.
static STORE_FAILED: AtomicBool = AtomicBool::new(false);

fn check(call: &'static str, code: TpmResult) -> Result<()> {
    if code == TPM_SUCCESS {
        Ok(())
    } else {
        Err(Error::Libtpms { call, code })
    }
}

/// # Safety
/// `name` must be a valid C string (libtpms passes string constants).
unsafe fn blob_name<'a>(name: *const c_char) -> Option<&'a str> {
    if name.is_null() {
        return None;
    }
    // SAFETY: libtpms passes a NUL-terminated constant; the caller guarantees validity.
    unsafe { CStr::from_ptr(name) }.to_str().ok()
}

extern "C" fn cb_ok() -> TpmResult {
    TPM_SUCCESS
}

unsafe extern "C" fn cb_loaddata(
    data: *mut *mut u8,
    length: *mut u32,
    _tpm_number: u32,
    name: *const c_char,
) -> TpmResult {
    // SAFETY: libtpms passes its blob-name constants.
    let Some(name) = (unsafe { blob_name(name) }) else {
        return TPM_FAIL;
    };
    let guard = match STORE.lock() {
        Ok(g) => g,
        Err(_) => return TPM_FAIL,
    };
    let Some(store) = guard.as_ref() else {
        return TPM_FAIL;
    };
    match store.load(name).map(|b| b.map(Zeroizing::new)) {
        Ok(None) => TPM_RETRY,
        Ok(Some(blob)) => {
            let Ok(len) = u32::try_from(blob.len()) else {
                return TPM_FAIL;
            };
            // SAFETY: plain allocation; libtpms takes ownership and releases it with free().
            let buf = unsafe { libc::malloc(blob.len().max(1)) } as *mut u8;
            if buf.is_null() {
                return TPM_FAIL;
            }
            // SAFETY: `buf` has room for `blob.len()` bytes and does not overlap `blob`;
            // `data` and `length` are valid out-pointers supplied by libtpms.
            unsafe {
                ptr::copy_nonoverlapping(blob.as_ptr(), buf, blob.len());
                *data = buf;
                *length = len;
            }
            TPM_SUCCESS
        }
        Err(e) => {
            error!("libtpms could not load state blob {name}: {e}");
            TPM_FAIL
        }
    }
}

unsafe extern "C" fn cb_storedata(
    data: *const u8,
    length: u32,
    _tpm_number: u32,
    name: *const c_char,
) -> TpmResult {
    // SAFETY: libtpms passes its blob-name constants.
    let Some(name) = (unsafe { blob_name(name) }) else {
        return TPM_FAIL;
    };
    let blob: &[u8] = if length == 0 || data.is_null() {
        &[]
    } else {
        // SAFETY: libtpms guarantees `data` points to `length` readable bytes for the call.
        unsafe { std::slice::from_raw_parts(data, length as usize) }
    };
    let result = match STORE.lock() {
        Ok(g) => match g.as_ref() {
            Some(store) => store.store(name, blob).map_err(|e| e.to_string()),
            None => Err("no state store registered".to_owned()),
        },
        Err(_) => Err("state store lock poisoned".to_owned()),
    };
    match result {
        Ok(()) => TPM_SUCCESS,
        Err(e) => {
            error!("libtpms could not store state blob {name}: {e}");
            STORE_FAILED.store(true, Ordering::SeqCst);
            TPM_FAIL
        }
    }
}

unsafe extern "C" fn cb_deletename(_tpm_number: u32, name: *const c_char, _must: u8) -> TpmResult {
    // SAFETY: libtpms passes its blob-name constants.
    let Some(name) = (unsafe { blob_name(name) }) else {
        return TPM_FAIL;
    };
    match STORE.lock().ok().as_ref().and_then(|g| g.as_ref()) {
        Some(store) => match store.delete(name) {
            Ok(()) => TPM_SUCCESS,
            Err(_) => TPM_FAIL,
        },
        None => TPM_FAIL,
    }
}

unsafe extern "C" fn cb_getlocality(locality: *mut u32, _tpm_number: u32) -> TpmResult {
    // SAFETY: libtpms passes a valid out-pointer.
    unsafe { *locality = 0 };
    TPM_SUCCESS
}

unsafe extern "C" fn cb_getphysicalpresence(pp: *mut u8, _tpm_number: u32) -> TpmResult {
    // SAFETY: libtpms passes a valid out-pointer.
    unsafe { *pp = 0 };
    TPM_SUCCESS
}

/// The libtpms engine of this process.
pub struct LibtpmsEngine {
    /// Response buffer owned by libtpms' allocator (grown with realloc inside TPMLIB_Process).
    resp: *mut u8,
    resp_len: u32,
    resp_cap: u32,
}

// SAFETY: the response buffer is a heap allocation owned exclusively by this engine and only
// touched through `&mut self`; libtpms' globals are only reached through this single engine.
unsafe impl Send for LibtpmsEngine {}

/// What [`LibtpmsEngine::start_with`] does with the volatile state a clean shutdown saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavedVolatile {
    /// Resume it and delete it at once (a durable write): a later crash, which leaves no
    /// newer one, must not resume it again.
    Consume,
    /// Resume it and leave it in the store: the caller can tell a crash from a clean stop
    /// at the next start (the daemon's run marker) and then starts with `Ignore`, so the
    /// start costs no write.
    Resume,
    /// The last run did not stop cleanly, so a saved volatile state is stale: it is deleted
    /// before the engine starts, which powers on.
    Ignore,
}

impl LibtpmsEngine {
    /// Starts the TPM 2.0 engine on `store`: loads the permanent state (a new instance starts
    /// manufactured-fresh) and resumes the volatile state a clean shutdown saved, if any,
    /// consuming it ([`SavedVolatile::Consume`]).
    pub fn start(store: Box<dyn StateStore>) -> Result<Self> {
        Self::start_with(store, SavedVolatile::Consume)
    }

    /// [`LibtpmsEngine::start`], with the caller's choice about the saved volatile state.
    pub fn start_with(store: Box<dyn StateStore>, saved: SavedVolatile) -> Result<Self> {
        if ENGINE_IN_USE.swap(true, Ordering::SeqCst) {
            return Err(Error::EngineInUse);
        }
        let prepared = match saved {
            // libtpms reads the blob through the store during init: it must be gone first.
            SavedVolatile::Ignore => store.delete(VOLATILE_BLOB).map(|()| false),
            SavedVolatile::Consume | SavedVolatile::Resume => store
                .load(VOLATILE_BLOB)
                .map(|v| v.map(Zeroizing::new).is_some()),
        };
        let resumed = match prepared {
            Ok(resumed) => resumed,
            Err(e) => {
                ENGINE_IN_USE.store(false, Ordering::SeqCst);
                return Err(Error::Store(e));
            }
        };
        if let Ok(mut g) = STORE.lock() {
            *g = Some(store);
        }
        let engine = LibtpmsEngine {
            resp: ptr::null_mut(),
            resp_len: 0,
            resp_cap: 0,
        };
        // From here on Drop releases the singleton.
        engine.init()?;
        if resumed {
            if saved == SavedVolatile::Consume {
                // After a later crash it would no longer match the permanent state, so a
                // restart after a crash is a power cycle instead.
                with_store(|s| s.delete(VOLATILE_BLOB))?;
            }
            info!("libtpms engine resumed from saved volatile state");
        } else {
            info!("libtpms engine powered on");
        }
        Ok(engine)
    }

    fn init(&self) -> Result<()> {
        let mut cbs = LibtpmsCallbacks {
            size_of_struct: std::mem::size_of::<LibtpmsCallbacks>() as c_int,
            tpm_nvram_init: Some(cb_ok),
            tpm_nvram_loaddata: Some(cb_loaddata),
            tpm_nvram_storedata: Some(cb_storedata),
            tpm_nvram_deletename: Some(cb_deletename),
            tpm_io_init: Some(cb_ok),
            tpm_io_getlocality: Some(cb_getlocality),
            tpm_io_getphysicalpresence: Some(cb_getphysicalpresence),
        };
        // SAFETY: plain calls into libtpms; the callbacks struct is valid for the call and
        // libtpms copies it. Only the single engine of this process makes these calls.
        unsafe {
            check(
                "ChooseTPMVersion",
                TPMLIB_ChooseTPMVersion(TPMLIB_TPM_VERSION_2),
            )?;
            check("RegisterCallbacks", TPMLIB_RegisterCallbacks(&mut cbs))?;
            check("MainInit", TPMLIB_MainInit())
        }
    }
}

/// Runs `f` on the engine's state store. A store that cannot be reached (its lock poisoned by
/// a panic while it was held, or none registered) is an engine failure, like a store the
/// libtpms callbacks cannot reach.
fn with_store<T>(
    f: impl FnOnce(&dyn StateStore) -> std::result::Result<T, StoreError>,
) -> Result<T> {
    let unavailable = |call| Error::Libtpms {
        call,
        code: TPM_FAIL,
    };
    let guard = STORE
        .lock()
        .map_err(|_| unavailable("state store access (lock poisoned by an earlier panic)"))?;
    match guard.as_deref() {
        Some(store) => f(store).map_err(Error::Store),
        None => Err(unavailable("state store access (no store registered)")),
    }
}

impl Coprocessor for LibtpmsEngine {
    fn driver_name(&self) -> &'static str {
        "libtpms"
    }

    fn wipe_response(&mut self) {
        if self.resp.is_null() {
            return;
        }
        // SAFETY: `resp` holds `resp_cap` bytes owned by this engine (libtpms' allocation),
        // not borrowed by anyone while we hold `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.resp, self.resp_cap as usize) }.zeroize();
    }

    fn execute(&mut self, command: &mut [u8]) -> Result<&[u8]> {
        let len =
            u32::try_from(command.len()).map_err(|_| Error::CommandTooLarge(command.len()))?;
        STORE_FAILED.store(false, Ordering::SeqCst);
        // SAFETY: `command` is valid for `len` bytes and exclusively borrowed (libtpms may
        // decrypt parameters in place); the response triple is owned by this engine and
        // libtpms reallocates it as needed.
        let code = unsafe {
            TPMLIB_Process(
                &mut self.resp,
                &mut self.resp_len,
                &mut self.resp_cap,
                command.as_mut_ptr(),
                len,
            )
        };
        check("Process", code)?;
        if STORE_FAILED.load(Ordering::SeqCst) {
            // The TPM believes its NV is committed but the store refused it: do not let the
            // guest see success for a change that is not durable.
            return Err(Error::Libtpms {
                call: "tpm_nvram_storedata",
                code: TPM_FAIL,
            });
        }
        if self.resp.is_null() || self.resp_len > self.resp_cap {
            return Err(Error::Libtpms {
                call: "Process (no response)",
                code: TPM_FAIL,
            });
        }
        // SAFETY: libtpms wrote `resp_len` bytes into `resp` (capacity `resp_cap`), and the
        // buffer is not touched again until the next `&mut self` call.
        Ok(unsafe { std::slice::from_raw_parts(self.resp, self.resp_len as usize) })
    }

    fn power_cycle(&mut self) -> Result<()> {
        // SAFETY: terminate the single engine; init re-registers and reloads from the store.
        unsafe { TPMLIB_Terminate() };
        self.init()?;
        info!("libtpms engine power-cycled");
        Ok(())
    }

    fn save(&mut self) -> Result<()> {
        let blob = volatile_state()?;
        with_store(|s| s.store(VOLATILE_BLOB, &blob))?;
        info!("libtpms volatile state saved ({} bytes)", blob.len());
        Ok(())
    }

    fn export_state(&mut self) -> Result<EngineState> {
        let mut volatile = volatile_state()?;
        let permanent = with_store(|s| s.load(PERMANENT_BLOB))?.ok_or(Error::Libtpms {
            call: "export (no permanent state stored)",
            code: TPM_FAIL,
        })?;
        // Moved, not copied: EngineState wipes them when it is dropped.
        Ok(EngineState {
            permanent,
            volatile: std::mem::take(&mut *volatile),
        })
    }

    fn import_state(&mut self, state: &EngineState) -> Result<()> {
        let previous = with_store(|s| s.load(PERMANENT_BLOB))?.map(Zeroizing::new);
        let previous_volatile = volatile_state()?;
        // SAFETY: stop the single engine; `init` below starts it again from the store.
        unsafe { TPMLIB_Terminate() };
        let installed = with_store(|s| {
            s.store(PERMANENT_BLOB, &state.permanent)?;
            s.store(VOLATILE_BLOB, &state.volatile)
        })
        .and_then(|()| self.init());
        // The volatile blob is consumed either way (see `start`).
        let consumed = with_store(|s| s.delete(VOLATILE_BLOB));
        match installed.and(consumed) {
            Ok(()) => {
                info!("libtpms engine now runs the imported instance");
                Ok(())
            }
            Err(e) => {
                error!("import failed ({e}); restoring the previous instance");
                // SAFETY: as above.
                unsafe { TPMLIB_Terminate() };
                with_store(|s| {
                    if let Some(prev) = &previous {
                        s.store(PERMANENT_BLOB, prev)?;
                    }
                    s.store(VOLATILE_BLOB, &previous_volatile)
                })?;
                self.init()?;
                with_store(|s| s.delete(VOLATILE_BLOB))?;
                Err(e)
            }
        }
    }
}

/// The running TPM's volatile state, as libtpms serialises it. libtpms' own copy is wiped
/// before it is freed.
fn volatile_state() -> Result<Zeroizing<Vec<u8>>> {
    let mut buf: *mut u8 = ptr::null_mut();
    let mut len: u32 = 0;
    // SAFETY: out-pointers are valid; libtpms allocates `buf` with malloc.
    check("VolatileAll_Store", unsafe {
        TPMLIB_VolatileAll_Store(&mut buf, &mut len)
    })?;
    if buf.is_null() {
        return Ok(Zeroizing::new(Vec::new()));
    }
    // SAFETY: libtpms returned `len` bytes at `buf`, ours until we free them below.
    let theirs = unsafe { std::slice::from_raw_parts_mut(buf, len as usize) };
    let v = Zeroizing::new(theirs.to_vec());
    theirs.zeroize();
    // SAFETY: `buf` came from libtpms' malloc and is not used after this.
    unsafe { libc::free(buf.cast()) };
    Ok(v)
}

impl Drop for LibtpmsEngine {
    fn drop(&mut self) {
        self.wipe_response();
        // SAFETY: the engine is the only user of libtpms; `resp` came from libtpms' realloc.
        unsafe {
            TPMLIB_Terminate();
            libc::free(self.resp.cast());
        }
        if let Ok(mut g) = STORE.lock() {
            *g = None;
        }
        ENGINE_IN_USE.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tpm_proto::commands as c;

    /// A state store in memory: this test is about what stays in the engine's buffers.
    #[derive(Default)]
    struct MemoryStore(Mutex<HashMap<String, Vec<u8>>>);

    impl StateStore for MemoryStore {
        fn load(&self, name: &str) -> std::result::Result<Option<Vec<u8>>, StoreError> {
            Ok(self.0.lock().unwrap().get(name).cloned())
        }
        fn store(&self, name: &str, data: &[u8]) -> std::result::Result<(), StoreError> {
            self.0.lock().unwrap().insert(name.into(), data.to_vec());
            Ok(())
        }
        fn delete(&self, name: &str) -> std::result::Result<(), StoreError> {
            self.0.lock().unwrap().remove(name);
            Ok(())
        }
    }

    // Issue 11, item 8: a response (here random bytes; as well unsealed data) does not linger
    // in the engine's buffer after the device delivered it. One test only: libtpms is one
    // engine per process.
    #[test]
    fn the_response_buffer_is_wiped_after_delivery() {
        let mut engine = LibtpmsEngine::start(Box::<MemoryStore>::default()).unwrap();
        engine.execute(&mut c::startup(c::TPM_SU_CLEAR)).unwrap();
        let random = c::parse_get_random(engine.execute(&mut c::get_random(32)).unwrap()).unwrap();
        assert_eq!(random.len(), 32);
        assert!(engine.resp_cap >= 44);
        engine.wipe_response();
        // SAFETY: the engine's response buffer, `resp_cap` bytes, not in use by libtpms now.
        let buffer = unsafe { std::slice::from_raw_parts(engine.resp, engine.resp_cap as usize) };
        assert!(
            buffer.iter().all(|b| *b == 0),
            "response left in the buffer"
        );
    }
}
