//! The platform firmware a virtio TPM has none of (docs/adr/0011).
//!
//! On bare metal, and with QEMU's tpm-crb under SeaBIOS or OVMF, firmware starts the TPM and
//! closes its platform hierarchy before the OS runs. Nothing does that for our device, so
//! [`Firmware`] does it: it wraps the instance's engine and is itself a [`Coprocessor`], so
//! the device path (request.rs, backend.rs) hands it every command unchanged. It owns:
//!
//! - **the Startup hook**: after every successful `TPM2_Startup(CLEAR)`, whoever sent it (the
//!   guest's kernel, or the daemon after a crash), before the response goes back, it mirrors
//!   the host TPM's SHA-256 PCRs into the vTPM (`vPCR[i] = SHA-256(0^32 || hostPCR[i])`: one
//!   extend of a PCR that Startup has just zeroed, so a verifier recomputes it from a host
//!   quote) and then locks the platform hierarchy;
//! - **the platform lock**: a random platform authorization (`TPM2_HierarchyChangeAuth`)
//!   that only this process knows. Every state the daemon hands out (the clean-stop save,
//!   a migration export) has the platform hierarchy unlocked again, and every state it takes
//!   in (a resumed start, an import, a `TPM2_Startup(STATE)`) is locked before the guest's
//!   next command: so the authorization is never stored, yet the host's own tools
//!   (`vtpm-host provision` on a stopped instance) and a migration destination can use the
//!   platform hierarchy, and `coprocessor::with_platform` opens it for the daemon's own
//!   platform commands;
//! - **the PCR guard**: a guest command that would change a mirrored PCR (PCR_Extend,
//!   PCR_Event, PCR_Reset, PCR_SetAuthValue, EventSequenceComplete naming it in its handle
//!   area, PCR_SetAuthPolicy naming it in its parameters) is answered `TPM_RC_LOCALITY`, as a
//!   real TPM answers locality 0 for a PCR it may not touch, and never reaches the engine;
//! - **the deep quote** (`tpm_proto::vendor`): answered here, with a quote of the host TPM by
//!   the host AIK over the mirrored PCRs, bound to this vTPM's vEK; advertised in
//!   `TPM2_GetCapability` (`TPM_CAP_COMMANDS`, `TPM_PT_TOTAL_COMMANDS`,
//!   `TPM_PT_VENDOR_COMMANDS`) so that the guest kernel's resource manager passes it.
//!
//! The host TPM is opened for each use and closed again: some TCTIs (swtpm's TCP server,
//! `/dev/tpm0`) serve one client at a time. A guest gets a few deep quotes at once and two
//! per second after that (TPM_RC_RETRY beyond): the host TPM is shared by every VM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use coprocessor::{Coprocessor, EngineState};
use host_tpm::{HostTpm, ObjectBlob};
use identity::{read_ek_cert, EkKind, EkPublic, IdentityError};
use log::{debug, error, info, warn};
use tpm_proto::commands::{self as c, pt, TPM_CAP_COMMANDS, TPM_CAP_TPM_PROPERTIES};
use tpm_proto::public::{alg, TpmPublic};
use tpm_proto::vendor::{
    qualifying_data, DeepQuoteRequest, DeepQuoteResponse, CC_DEEP_QUOTE, DEEP_QUOTE_TPMA_CC,
    TPM_CC_VENDOR,
};
use tpm_proto::{cc, error_response, rc, response_code, ResponseReader, HEADER_SIZE};
use zeroize::Zeroizing;

/// Files of vtpm-host's host identity directory the deep quote needs (vtpm-host writes them:
/// `vtpm-host enroll`).
pub const HOST_AIK_BLOB: &str = "host-aik.blob";
pub const HOST_AIK_CERT: &str = "host-aik.pem";
pub const HOST_EK_CERT: &str = "host-ek.pem";
/// The coprocessor certificate (`vtpm-host certify-coprocessor`), the chain's first link
/// above the vEK certificates ([`crate::chain_refresh`]).
pub const COPROCESSOR_CERT: &str = "coprocessor.pem";

/// Size of the random platform authorization (the SHA-256 digest size, which every TPM
/// accepts for a hierarchy's authValue).
const PLATFORM_AUTH_LEN: usize = 32;
/// Attempts at reading the host PCRs at a Startup before giving up on mirroring.
const MIRROR_ATTEMPTS: u32 = 3;
/// Deep quotes a guest may ask for at once, and how many more per second: the host TPM is
/// shared by every VM of the host and a quote costs it a signature, so one guest must not
/// keep it busy. Beyond, the guest gets TPM_RC_RETRY (its kernel retries after a delay).
const DEEP_QUOTE_BURST: f64 = 5.0;
const DEEP_QUOTE_PER_SECOND: f64 = 2.0;

/// A token bucket: [`DEEP_QUOTE_BURST`] at once, [`DEEP_QUOTE_PER_SECOND`] refilled.
#[derive(Debug)]
struct RateLimit {
    tokens: f64,
    at: std::time::Instant,
}

impl RateLimit {
    fn new() -> Self {
        RateLimit {
            tokens: DEEP_QUOTE_BURST,
            at: std::time::Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = std::time::Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * DEEP_QUOTE_PER_SECOND;
        self.tokens = (self.tokens + refill).min(DEEP_QUOTE_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("--mirror-pcrs needs the host TPM: it is given with --host-tpm")]
    NoHostTpm,
    #[error(
        "host identity directory: cannot read {path}: {source} (run `vtpm-host enroll` first)"
    )]
    HostFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("host identity directory: {path}: {reason}")]
    HostFileInvalid { path: PathBuf, reason: String },
    #[error("cannot generate the platform authorization: {0}")]
    Random(#[from] openssl::error::ErrorStack),
    #[error("the TPM refused to lock its platform hierarchy (TPM_RC {0:#x})")]
    Lock(u32),
}

/// Which host PCRs are mirrored, read through which TCTI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub tcti: String,
    /// Ascending, each below 24, at least one.
    pub pcrs: Vec<u8>,
}

/// What the deep quote needs from vtpm-host's host identity directory.
#[derive(Debug, Clone)]
pub struct HostIdentity {
    pub aik: ObjectBlob,
    /// DER.
    pub aik_cert: Vec<u8>,
    /// DER.
    pub ek_cert: Vec<u8>,
}

fn read_host_file(dir: &Path, name: &str) -> Result<Vec<u8>, PlatformError> {
    let path = dir.join(name);
    std::fs::read(&path).map_err(|source| PlatformError::HostFile { path, source })
}

fn invalid_host_file(dir: &Path, name: &str, reason: impl ToString) -> PlatformError {
    PlatformError::HostFileInvalid {
        path: dir.join(name),
        reason: reason.to_string(),
    }
}

/// Reads the PEM certificate `name` (e.g. [`HOST_AIK_CERT`]) of the host directory `dir`.
pub fn read_host_cert(dir: &Path, name: &str) -> Result<openssl::x509::X509, PlatformError> {
    openssl::x509::X509::from_pem(&read_host_file(dir, name)?)
        .map_err(|e| invalid_host_file(dir, name, e))
}

impl HostIdentity {
    /// Reads `host-aik.blob`, `host-aik.pem` and `host-ek.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, PlatformError> {
        let aik = ObjectBlob::from_bytes(&read_host_file(dir, HOST_AIK_BLOB)?)
            .map_err(|e| invalid_host_file(dir, HOST_AIK_BLOB, e))?;
        let der = |name: &str| -> Result<Vec<u8>, PlatformError> {
            read_host_cert(dir, name)?
                .to_der()
                .map_err(|e| invalid_host_file(dir, name, e))
        };
        Ok(HostIdentity {
            aik,
            aik_cert: der(HOST_AIK_CERT)?,
            ek_cert: der(HOST_EK_CERT)?,
        })
    }
}

/// What the platform firmware does for one instance.
#[derive(Debug, Clone, Default)]
pub struct PlatformConfig {
    pub mirror: Option<Mirror>,
    /// With [`PlatformConfig::mirror`]: the deep quote is answered.
    pub host: Option<HostIdentity>,
}

/// What the daemon knows about the TPM's platform hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Platform {
    /// The TPM awaits TPM2_Startup: the hook will lock it.
    NotStarted,
    /// Locked with this process' authorization.
    Locked,
    /// Usable with the empty password (only inside the daemon's own operations).
    Open,
    /// Disabled (phEnable cleared) as the fallback lock: nobody can use it until the next
    /// TPM2_Startup(CLEAR).
    Disabled,
    /// Locked with an authorization this process does not know (see [`Firmware::new`]).
    Unknown,
}

/// How a command is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// The engine executes it as it is.
    Engine,
    /// Answered with this response code; the engine never sees it.
    Refuse(u32),
    /// TPM2_Startup with this TPM_SU (the hook runs after a successful one).
    Startup(u16),
    /// TPM2_GetCapability: executed, then the deep quote is added to what it reports.
    Capability,
    /// The deep quote, answered here.
    DeepQuote,
}

/// Commands whose first handle is a PCR they change.
const PCR_HANDLE_COMMANDS: [u32; 5] = [
    cc::PCR_EXTEND,
    cc::PCR_EVENT,
    cc::PCR_RESET,
    cc::PCR_SET_AUTH_VALUE,
    cc::EVENT_SEQUENCE_COMPLETE,
];

/// The bit of `pcr` in a mirrored-PCR mask, if it is a PCR handle (TPM_HT_PCR, 0..31).
fn pcr_bit(handle: u32) -> u32 {
    if handle < 32 {
        1 << handle
    } else {
        0
    }
}

/// Classifies a guest command. Everything here is guest-controlled: short or malformed
/// commands are never a panic, and a command that could change a mirrored PCR but cannot be
/// read far enough to tell is refused.
fn classify(cmd: &[u8], mirrored: u32, deep_quote: bool) -> Class {
    let mut r = ResponseReader::new(cmd);
    let (Ok(_tag), Ok(_size), Ok(code)) = (r.u16(), r.u32(), r.u32()) else {
        // No command code: the engine answers it (it cannot name any PCR).
        return Class::Engine;
    };
    if code & TPM_CC_VENDOR != 0 {
        return if deep_quote && code == CC_DEEP_QUOTE {
            Class::DeepQuote
        } else {
            Class::Engine
        };
    }
    let index = code & 0xFFFF;
    if mirrored != 0 && (PCR_HANDLE_COMMANDS.contains(&index) || index == cc::PCR_SET_AUTH_POLICY) {
        if code != index {
            // Reserved bits set: no TPM runs it; make sure the engine does not either.
            return Class::Refuse(rc::COMMAND_CODE);
        }
        let pcr = if index == cc::PCR_SET_AUTH_POLICY {
            set_auth_policy_pcr(&mut r)
        } else {
            r.u32().ok()
        };
        return match pcr {
            None => Class::Refuse(rc::COMMAND_SIZE),
            Some(pcr) if pcr_bit(pcr) & mirrored != 0 => Class::Refuse(rc::LOCALITY),
            Some(_) => Class::Engine,
        };
    }
    match code {
        cc::STARTUP => r.u16().map_or(Class::Engine, Class::Startup),
        cc::GET_CAPABILITY if deep_quote => Class::Capability,
        _ => Class::Engine,
    }
}

/// The `pcrNum` of a PCR_SetAuthPolicy (after authHandle, the authorization area,
/// TPM2B_DIGEST authPolicy and TPMI_ALG_HASH hashAlg).
fn set_auth_policy_pcr(r: &mut ResponseReader<'_>) -> Option<u32> {
    let _auth_handle = r.u32().ok()?;
    let auth_size = r.u32().ok()?;
    r.skip(usize::try_from(auth_size).ok()?).ok()?;
    let _policy = r.tpm2b().ok()?;
    let _hash = r.u16().ok()?;
    r.u32().ok()
}

/// The parameters of a TPM2_GetCapability command: capability, property, count.
fn capability_request(cmd: &[u8]) -> Option<(u32, u32, u32)> {
    let mut r = ResponseReader::new(cmd.get(HEADER_SIZE..)?);
    Some((r.u32().ok()?, r.u32().ok()?, r.u32().ok()?))
}

/// The TPM_CC a TPMA_CC stands for (commandIndex and the vendor bit, as Linux compares them).
fn cc_of(tpma_cc: u32) -> u32 {
    tpma_cc & (0xFFFF | TPM_CC_VENDOR)
}

/// `response` to `request` (a TPM2_GetCapability) with the deep quote added: its TPMA_CC in
/// TPM_CAP_COMMANDS (in command-code order, within the count asked for, `moreData` kept
/// true to the list), and one more command in TPM_PT_TOTAL_COMMANDS and
/// TPM_PT_VENDOR_COMMANDS. `None` leaves the engine's response as it is (an error, another
/// capability, or nothing to add).
fn patch_capability(request: &[u8], response: &[u8]) -> Option<Vec<u8>> {
    let (capability, property, count) = capability_request(request)?;
    if tpm_proto::Header::parse(response).ok()?.tag != tpm_proto::tag::NO_SESSIONS {
        return None;
    }
    let mut r = ResponseReader::success(response).ok()?;
    let mut more = r.u8().ok()? != 0;
    if r.u32().ok()? != capability {
        return None;
    }
    let n = r.u32().ok()?;
    let body = match capability {
        TPM_CAP_COMMANDS => {
            if CC_DEEP_QUOTE < property {
                return None;
            }
            let mut attrs = (0..n).map(|_| r.u32().ok()).collect::<Option<Vec<u32>>>()?;
            if r.remaining() != 0 || attrs.iter().any(|a| cc_of(*a) == CC_DEEP_QUOTE) {
                return None;
            }
            match attrs.iter().position(|a| cc_of(*a) > CC_DEEP_QUOTE) {
                Some(i) => attrs.insert(i, DEEP_QUOTE_TPMA_CC),
                // The engine has more after the last one it listed: ours comes in a later
                // answer, when it is next in order.
                None if more => return None,
                None => attrs.push(DEEP_QUOTE_TPMA_CC),
            }
            if attrs.len() > count as usize {
                attrs.truncate(count as usize);
                more = true;
            }
            let mut body = (attrs.len() as u32).to_be_bytes().to_vec();
            for a in attrs {
                body.extend_from_slice(&a.to_be_bytes());
            }
            body
        }
        TPM_CAP_TPM_PROPERTIES => {
            let mut body = n.to_be_bytes().to_vec();
            for _ in 0..n {
                let (p, v) = (r.u32().ok()?, r.u32().ok()?);
                let v = match p {
                    pt::TOTAL_COMMANDS | pt::VENDOR_COMMANDS => v.saturating_add(1),
                    _ => v,
                };
                body.extend_from_slice(&p.to_be_bytes());
                body.extend_from_slice(&v.to_be_bytes());
            }
            if r.remaining() != 0 {
                return None;
            }
            body
        }
        _ => return None,
    };
    let mut out = response[..HEADER_SIZE].to_vec();
    out.push(u8::from(more));
    out.extend_from_slice(&capability.to_be_bytes());
    out.extend_from_slice(&body);
    let size = u32::try_from(out.len()).ok()?;
    out[2..6].copy_from_slice(&size.to_be_bytes());
    Some(out)
}

/// The platform firmware for the daemon's `config` around `engine` (what the daemon runs).
pub fn wrap(
    engine: Box<dyn Coprocessor>,
    config: &crate::config::Config,
) -> Result<Box<dyn Coprocessor>, PlatformError> {
    let mirror = if config.mirror_pcrs.is_empty() {
        None
    } else {
        match &config.engine {
            crate::config::EngineConfig::Libtpms {
                host_key: vtpm_state::keys::HostKey::Tpm { tcti, .. },
                ..
            } => Some(Mirror {
                tcti: tcti.clone(),
                pcrs: config.mirror_pcrs.clone(),
            }),
            _ => return Err(PlatformError::NoHostTpm),
        }
    };
    let host = match (&mirror, &config.host_dir) {
        (Some(_), Some(dir)) => Some(HostIdentity::load(dir)?),
        // --host-dir also serves sealed migration; only say why it does nothing here.
        (None, Some(_)) if config.migration.is_none() => {
            info!("no PCRs are mirrored (--mirror-pcrs): the deep quote is not offered");
            None
        }
        _ => None,
    };
    Ok(Box::new(Firmware::new(
        engine,
        PlatformConfig { mirror, host },
    )?))
}

/// The instance's engine with the platform firmware around it (see the module docs).
pub struct Firmware {
    engine: Box<dyn Coprocessor>,
    mirror: Option<Mirror>,
    /// Bit i set: PCR i is mirrored.
    mirrored: u32,
    host: Option<HostIdentity>,
    /// The platform authorization of this process.
    auth: Zeroizing<Vec<u8>>,
    platform: Platform,
    /// Responses made here (refusals, deep quotes, patched capabilities, Startup).
    response: Vec<u8>,
    /// Guest commands refused by the PCR guard.
    refused: u64,
    /// Deep quotes the host TPM may still be asked for.
    deep_quotes: RateLimit,
}

impl Firmware {
    /// Wraps `engine` and locks the platform hierarchy of a TPM that is already running (a
    /// resumed state). A TPM that awaits TPM2_Startup is locked by the Startup hook.
    pub fn new(
        engine: Box<dyn Coprocessor>,
        config: PlatformConfig,
    ) -> Result<Self, PlatformError> {
        let mut auth = Zeroizing::new(vec![0u8; PLATFORM_AUTH_LEN]);
        openssl::rand::rand_bytes(&mut auth)?;
        let mirrored = config.mirror.as_ref().map_or(0, |m| {
            m.pcrs.iter().fold(0, |acc, &p| acc | pcr_bit(u32::from(p)))
        });
        // The deep quote covers the mirrored PCRs: without them it is not offered.
        let host = config.host.filter(|_| config.mirror.is_some());
        let mut fw = Firmware {
            engine,
            mirror: config.mirror,
            mirrored,
            host,
            auth,
            platform: Platform::NotStarted,
            response: Vec::new(),
            refused: 0,
            deep_quotes: RateLimit::new(),
        };
        match (&fw.mirror, &fw.host) {
            (Some(m), Some(_)) => info!(
                "platform: host PCRs {:?} mirrored at every TPM2_Startup(CLEAR); deep quote \
                 offered (TPM_CC {CC_DEEP_QUOTE:#010x})",
                m.pcrs
            ),
            (Some(m), None) => info!(
                "platform: host PCRs {:?} mirrored at every TPM2_Startup(CLEAR); no \
                 --host-dir, so the deep quote is not offered",
                m.pcrs
            ),
            _ => {}
        }
        fw.ensure_locked();
        Ok(fw)
    }

    /// Guest commands the PCR guard refused so far.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Sends one command to the engine and returns its response code (0 if it has none).
    fn run(&mut self, mut command: Vec<u8>) -> coprocessor::Result<u32> {
        let resp = self.engine.execute(&mut command)?;
        Ok(response_code(resp).unwrap_or(rc::FAILURE))
    }

    /// TPM2_HierarchyChangeAuth of the platform hierarchy; its response code.
    fn change_platform_auth(&mut self, current: &[u8], new: &[u8]) -> u32 {
        let cmd = c::hierarchy_change_auth(c::TPM_RH_PLATFORM, current, new);
        self.run(cmd).unwrap_or(rc::FAILURE)
    }

    /// Locks a platform hierarchy that TPM2_Startup(CLEAR) has just opened: with this
    /// process' authorization, or, should the TPM refuse that, by disabling it.
    fn lock_after_startup(&mut self) -> Result<(), PlatformError> {
        let auth = self.auth.clone();
        let code = self.change_platform_auth(&[], &auth);
        // Startup(CLEAR) empties platformAuth; should it still hold ours, it is locked.
        if code == rc::SUCCESS || self.change_platform_auth(&auth, &auth) == rc::SUCCESS {
            self.platform = Platform::Locked;
            return Ok(());
        }
        error!("TPM2_HierarchyChangeAuth(platform) failed ({code:#x}); disabling the platform hierarchy instead");
        let disable = c::hierarchy_control(c::TPM_RH_PLATFORM, &[], c::TPM_RH_PLATFORM, false);
        match self.run(disable).unwrap_or(rc::FAILURE) {
            rc::SUCCESS => {
                self.platform = Platform::Disabled;
                Ok(())
            }
            code => Err(PlatformError::Lock(code)),
        }
    }

    /// Makes sure a running TPM's platform hierarchy is locked with this process'
    /// authorization: a state taken in (resumed at start, imported, or resumed by
    /// TPM2_Startup(STATE)) had it open, as the daemon hands states out.
    fn ensure_locked(&mut self) {
        let auth = self.auth.clone();
        match self.change_platform_auth(&auth, &auth) {
            rc::SUCCESS => self.platform = Platform::Locked,
            rc::INITIALIZE => self.platform = Platform::NotStarted,
            _ => match self.change_platform_auth(&[], &auth) {
                rc::SUCCESS => {
                    info!("platform hierarchy of the running TPM locked");
                    self.platform = Platform::Locked;
                }
                code => {
                    warn!(
                        "the running TPM's platform hierarchy is locked or disabled by an \
                         authorization this daemon does not know (TPM_RC {code:#x}); it stays \
                         closed to the guest and to the host until the next TPM2_Startup(CLEAR)"
                    );
                    self.platform = Platform::Unknown;
                }
            },
        }
    }

    /// Opens the platform hierarchy before a state leaves the daemon (see the module docs).
    fn unlock(&mut self) {
        if self.platform != Platform::Locked {
            return;
        }
        let auth = self.auth.clone();
        match self.change_platform_auth(&auth, &[]) {
            rc::SUCCESS => self.platform = Platform::Open,
            code => warn!("cannot open the platform hierarchy (TPM_RC {code:#x})"),
        }
    }

    /// The Startup hook (see the module docs). `resp` is the successful Startup response;
    /// it becomes TPM_RC_FAILURE if the platform hierarchy could not be closed.
    fn after_startup(&mut self, su: u16, resp: &mut Vec<u8>) {
        if su != c::TPM_SU_CLEAR {
            // TPM Resume: PCRs, and the platform authorization, are as they were saved.
            self.ensure_locked();
            return;
        }
        self.platform = Platform::Open;
        let start = std::time::Instant::now();
        let mirrored = self.mirror_host_pcrs();
        let mirror_us = start.elapsed().as_micros();
        let start = std::time::Instant::now();
        if let Err(e) = self.lock_after_startup() {
            error!("{e}: answering TPM2_Startup with TPM_RC_FAILURE");
            *resp = error_response(rc::FAILURE).to_vec();
            return;
        }
        let lock_us = start.elapsed().as_micros();
        match (mirrored, &self.mirror) {
            (true, Some(m)) => info!(
                "TPM2_Startup(CLEAR): host PCRs {:?} mirrored into the vTPM in {mirror_us} µs; \
                 platform hierarchy locked in {lock_us} µs",
                m.pcrs
            ),
            _ => info!("TPM2_Startup(CLEAR): platform hierarchy locked in {lock_us} µs"),
        }
    }

    /// Extends each mirrored vPCR (zero after Startup(CLEAR)) with the host's value;
    /// whether it did.
    fn mirror_host_pcrs(&mut self) -> bool {
        let Some(mirror) = self.mirror.clone() else {
            return false;
        };
        let mut attempt = 0;
        let values = loop {
            attempt += 1;
            match HostTpm::connect(&mirror.tcti).and_then(|mut t| t.read_pcrs_sha256(&mirror.pcrs))
            {
                Ok(v) => break v,
                Err(e) if attempt < MIRROR_ATTEMPTS => {
                    warn!("reading the host PCRs failed ({e}); trying again");
                    std::thread::sleep(Duration::from_millis(100 * u64::from(attempt)));
                }
                Err(e) => {
                    error!(
                        "cannot read the host PCRs {:?} ({e}): the mirrored vPCRs stay zero, \
                         which no host quote matches, until the next TPM2_Startup(CLEAR)",
                        mirror.pcrs
                    );
                    return false;
                }
            }
        };
        for (&pcr, value) in mirror.pcrs.iter().zip(&values) {
            match self.run(c::pcr_extend_sha256(u32::from(pcr), value)) {
                Ok(rc::SUCCESS) => {}
                other => {
                    error!("mirroring host PCR {pcr} into the vTPM failed: {other:?}");
                    return false;
                }
            }
        }
        true
    }

    /// Answers a deep quote (see `tpm_proto::vendor`).
    fn deep_quote(&mut self, cmd: &[u8]) -> Vec<u8> {
        let request = match DeepQuoteRequest::parse(cmd) {
            Ok(r) => r,
            Err(code) => return error_response(code).to_vec(),
        };
        match self.make_deep_quote(&request) {
            Ok(resp) => resp,
            Err(code) => error_response(code).to_vec(),
        }
    }

    fn make_deep_quote(&mut self, request: &DeepQuoteRequest) -> Result<Vec<u8>, u32> {
        let (Some(mirror), Some(host)) = (self.mirror.clone(), self.host.clone()) else {
            return Err(rc::COMMAND_CODE);
        };
        let kind = if request.vek_type == alg::RSA {
            EkKind::Rsa2048
        } else {
            EkKind::EccP256
        };
        // The vEK as its certificate in NV names it (platform-written, so the guest cannot
        // change it; readable with the index's own empty password, which nobody can change).
        let cert = match read_ek_cert(self.engine.as_mut(), kind) {
            Ok(Some(cert)) => cert,
            Ok(None) => return Err(rc::NV_UNINITIALIZED),
            Err(IdentityError::Tpm { code, .. }) => return Err(code),
            Err(e) => {
                error!(
                    "deep quote: cannot read the {} vEK certificate: {e}",
                    kind.name()
                );
                return Err(rc::NO_RESULT);
            }
        };
        let vek_public = EkPublic::from_certificate(&cert)
            .and_then(|k| k.tpmt_public())
            .map_err(|e| {
                error!("deep quote: the {} vEK certificate: {e}", kind.name());
                rc::NO_RESULT
            })?;
        let name = TpmPublic::parse(&vek_public)
            .and_then(|p| p.name())
            .map_err(|_| rc::NO_RESULT)?;
        let qualifying = qualifying_data(&request.nonce, &name);
        if !self.deep_quotes.take() {
            debug!("deep quote: over the rate limit; TPM_RC_RETRY");
            return Err(rc::RETRY);
        }
        let quote = HostTpm::connect(&mirror.tcti)
            .and_then(|mut t| t.quote(&host.aik, &mirror.pcrs, &qualifying))
            .map_err(|e| {
                error!("deep quote: the host TPM did not quote: {e}");
                rc::NO_RESULT
            })?;
        let resp = DeepQuoteResponse {
            vek_public,
            host_attest: quote.attest,
            host_signature: quote.signature,
            host_pcr_values: quote.pcr_values,
            host_certificates: vec![host.aik_cert, host.ek_cert],
        }
        .encode()
        .map_err(|_| rc::SIZE)?;
        if resp.len() > tpm_proto::MAX_BUFFER_SIZE {
            error!(
                "deep quote: the answer of {} bytes exceeds the device's buffer",
                resp.len()
            );
            return Err(rc::SIZE);
        }
        debug!("deep quote answered ({} bytes)", resp.len());
        Ok(resp)
    }
}

impl Coprocessor for Firmware {
    fn driver_name(&self) -> &'static str {
        self.engine.driver_name()
    }

    fn execute(&mut self, command: &mut [u8]) -> coprocessor::Result<&[u8]> {
        match classify(command, self.mirrored, self.host.is_some()) {
            Class::Engine => self.engine.execute(command),
            Class::Refuse(code) => {
                self.refused += 1;
                if self.refused <= 16 || self.refused.is_multiple_of(1000) {
                    warn!(
                        "refused a guest command touching a mirrored PCR or unreadable \
                         ({} refused so far): TPM_RC {code:#x}",
                        self.refused
                    );
                }
                self.response = error_response(code).to_vec();
                Ok(&self.response)
            }
            Class::Startup(su) => {
                let mut resp = self.engine.execute(command)?.to_vec();
                if response_code(&resp) == Ok(rc::SUCCESS) {
                    self.after_startup(su, &mut resp);
                }
                self.response = resp;
                Ok(&self.response)
            }
            Class::Capability => {
                let request = command.to_vec();
                let resp = self.engine.execute(command)?;
                self.response = match patch_capability(&request, resp) {
                    Some(patched) => patched,
                    None => resp.to_vec(),
                };
                Ok(&self.response)
            }
            Class::DeepQuote => {
                let request = command.to_vec();
                self.response = self.deep_quote(&request);
                Ok(&self.response)
            }
        }
    }

    fn power_cycle(&mut self) -> coprocessor::Result<()> {
        self.engine.power_cycle()?;
        self.platform = Platform::NotStarted;
        Ok(())
    }

    fn save(&mut self) -> coprocessor::Result<()> {
        self.unlock();
        self.engine.save()
    }

    fn export_state(&mut self) -> coprocessor::Result<EngineState> {
        let was_locked = self.platform == Platform::Locked;
        self.unlock();
        let state = self.engine.export_state();
        if was_locked {
            self.ensure_locked();
        }
        state
    }

    fn import_state(&mut self, state: &EngineState) -> coprocessor::Result<()> {
        let imported = self.engine.import_state(state);
        // Imported or restored: either way a running TPM gets locked again.
        self.ensure_locked();
        imported
    }

    /// For the daemon's own platform commands (`coprocessor::with_platform`, e.g.
    /// `identity::provision_ek` re-issuing the vEK certificates after a migration).
    fn open_platform(&mut self) -> bool {
        if self.platform != Platform::Locked {
            return false;
        }
        self.unlock();
        self.platform == Platform::Open
    }

    fn close_platform(&mut self) {
        // Whatever happened meanwhile (a Startup, a power cycle), the lock is taken again.
        self.ensure_locked();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tpm_proto::CommandBuilder;

    const MIRRORED: u32 = 0xFF; // PCRs 0-7

    fn pcr_command(code: u32, pcr: u32) -> Vec<u8> {
        CommandBuilder::with_sessions(code)
            .u32(pcr)
            .password_auth(&[])
            .u32(1)
            .finish()
    }

    #[test]
    fn commands_changing_a_mirrored_pcr_are_refused() {
        for code in PCR_HANDLE_COMMANDS {
            for pcr in 0..8 {
                assert_eq!(
                    classify(&pcr_command(code, pcr), MIRRORED, false),
                    Class::Refuse(rc::LOCALITY),
                    "{code:#x} on PCR {pcr}"
                );
            }
            for pcr in [8, 16, 23, 0x4000_0007] {
                assert_eq!(
                    classify(&pcr_command(code, pcr), MIRRORED, false),
                    Class::Engine
                );
            }
            // Nothing mirrored: every PCR behaves as on bare metal.
            assert_eq!(classify(&pcr_command(code, 0), 0, false), Class::Engine);
        }
        assert_eq!(
            classify(&c::pcr_extend_sha256(3, &[0; 32]), MIRRORED, false),
            Class::Refuse(rc::LOCALITY)
        );
        assert_eq!(
            classify(&c::pcr_reset(7), MIRRORED, false),
            Class::Refuse(rc::LOCALITY)
        );
        assert_eq!(
            classify(&c::pcr_event(0, b"x"), MIRRORED, false),
            Class::Refuse(rc::LOCALITY)
        );
        // Whatever the tag says: the handle area decides.
        let mut no_sessions = c::pcr_extend_sha256(1, &[0; 32]);
        no_sessions[1] = 0x01;
        assert_eq!(
            classify(&no_sessions, MIRRORED, false),
            Class::Refuse(rc::LOCALITY)
        );
    }

    #[test]
    fn pcr_set_auth_policy_is_read_past_its_authorization_area() {
        let policy = |pcr: u32, auth: &[u8]| {
            CommandBuilder::with_sessions(cc::PCR_SET_AUTH_POLICY)
                .u32(c::TPM_RH_PLATFORM)
                .password_auth(auth)
                .tpm2b(&[9; 32])
                .u16(alg::SHA256)
                .u32(pcr)
                .finish()
        };
        assert_eq!(
            classify(&policy(4, b"long password"), MIRRORED, false),
            Class::Refuse(rc::LOCALITY)
        );
        assert_eq!(classify(&policy(16, &[]), MIRRORED, false), Class::Engine);
    }

    #[test]
    fn hostile_shapes_are_never_passed_when_they_could_touch_a_mirrored_pcr() {
        let full = c::pcr_extend_sha256(16, &[0; 32]);
        // Cut anywhere: up to the end of the handle it cannot be told apart, so it is
        // refused; with the handle (16) it goes to the engine, which refuses what is left.
        for cut in 0..full.len() {
            let class = classify(&full[..cut], MIRRORED, true);
            match cut {
                0..=9 => assert_eq!(class, Class::Engine, "cut {cut}"),
                10..=13 => assert_eq!(class, Class::Refuse(rc::COMMAND_SIZE), "cut {cut}"),
                _ => assert_eq!(class, Class::Engine, "cut {cut}"),
            }
        }
        // Reserved bits in the command code.
        let mut odd = c::pcr_extend_sha256(16, &[0; 32]);
        odd[6] = 0x01;
        assert_eq!(
            classify(&odd, MIRRORED, false),
            Class::Refuse(rc::COMMAND_CODE)
        );
        // A PCR_SetAuthPolicy whose authorization size runs past the end.
        let mut policy = CommandBuilder::with_sessions(cc::PCR_SET_AUTH_POLICY)
            .u32(c::TPM_RH_PLATFORM)
            .password_auth(&[])
            .finish();
        policy[14..18].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            classify(&policy, MIRRORED, false),
            Class::Refuse(rc::COMMAND_SIZE)
        );
        // Arbitrary bytes never panic.
        let mut x: u32 = 0x1234_5678;
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = classify(&bytes, MIRRORED, true);
            let _ = patch_capability(&bytes, &bytes);
        }
    }

    /// A TPM reduced to what the platform lock touches: started or not, and platformAuth.
    /// HierarchyChangeAuth(platform) checks the password and sets the new value; Startup
    /// (CLEAR) empties it; everything else succeeds once started.
    #[derive(Default)]
    struct PlatformTpm {
        started: bool,
        platform_auth: Vec<u8>,
        resp: Vec<u8>,
    }

    impl PlatformTpm {
        fn answer(&mut self, code: u32) -> coprocessor::Result<&[u8]> {
            self.resp = error_response(code).to_vec();
            Ok(&self.resp)
        }
    }

    impl Coprocessor for PlatformTpm {
        fn driver_name(&self) -> &'static str {
            "platform-model"
        }
        fn execute(&mut self, command: &mut [u8]) -> coprocessor::Result<&[u8]> {
            let mut r = ResponseReader::new(command);
            let (_, _, code) = (r.u16().ok(), r.u32().ok(), r.u32().unwrap_or(0));
            match code {
                cc::STARTUP => {
                    if self.started {
                        return self.answer(rc::INITIALIZE);
                    }
                    self.started = true;
                    if r.u16().ok() == Some(c::TPM_SU_CLEAR) {
                        self.platform_auth.clear();
                    }
                    self.answer(rc::SUCCESS)
                }
                _ if !self.started => self.answer(rc::INITIALIZE),
                cc::HIERARCHY_CHANGE_AUTH => {
                    let _handle = r.u32().unwrap();
                    let _area = r.u32().unwrap();
                    let _session = r.u32().unwrap();
                    let _nonce = r.tpm2b().unwrap();
                    let _attrs = r.u8().unwrap();
                    let password = r.tpm2b().unwrap().to_vec();
                    let new = r.tpm2b().unwrap().to_vec();
                    if password != self.platform_auth {
                        return self.answer(0x9a2);
                    }
                    self.platform_auth = new;
                    self.answer(rc::SUCCESS)
                }
                _ => self.answer(rc::SUCCESS),
            }
        }
        fn power_cycle(&mut self) -> coprocessor::Result<()> {
            self.started = false;
            Ok(())
        }
        fn save(&mut self) -> coprocessor::Result<()> {
            Ok(())
        }
        fn export_state(&mut self) -> coprocessor::Result<EngineState> {
            Ok(EngineState {
                permanent: vec![],
                volatile: self.platform_auth.clone(),
            })
        }
        fn import_state(&mut self, state: &EngineState) -> coprocessor::Result<()> {
            self.started = true;
            self.platform_auth = state.volatile.clone();
            Ok(())
        }
    }

    /// The model's platform authorization, through the firmware.
    fn model_auth(fw: &mut Firmware) -> Vec<u8> {
        let mut auth = Vec::new();
        coprocessor::with_platform(fw, |e| {
            let mut cmd = c::hierarchy_change_auth(c::TPM_RH_PLATFORM, &[], &[]);
            auth.push(response_code(e.execute(&mut cmd).unwrap()).unwrap() as u8);
        });
        auth
    }

    fn startup_clear(fw: &mut Firmware) -> u32 {
        response_code(fw.execute(&mut c::startup(c::TPM_SU_CLEAR)).unwrap()).unwrap()
    }

    fn guest_can_use_platform(fw: &mut Firmware) -> bool {
        let mut cmd = c::hierarchy_change_auth(c::TPM_RH_PLATFORM, &[], &[]);
        let ok = response_code(fw.execute(&mut cmd).unwrap()) == Ok(rc::SUCCESS);
        if ok {
            // Put the lock back as it was for the next assertion.
            fw.platform = Platform::Open;
            fw.ensure_locked();
        }
        ok
    }

    #[test]
    fn states_leave_open_and_come_in_locked() {
        let mut fw =
            Firmware::new(Box::new(PlatformTpm::default()), PlatformConfig::default()).unwrap();
        assert_eq!(fw.platform, Platform::NotStarted);
        assert_eq!(startup_clear(&mut fw), rc::SUCCESS);
        assert_eq!(fw.platform, Platform::Locked);
        assert!(
            !guest_can_use_platform(&mut fw),
            "closed after Startup(CLEAR)"
        );
        // The daemon's own platform commands: opened, then closed again.
        assert_eq!(model_auth(&mut fw), vec![0], "open inside with_platform");
        assert_eq!(fw.platform, Platform::Locked);
        assert!(!guest_can_use_platform(&mut fw));

        // A migration export carries the hierarchy open; the exporter stays locked.
        let exported = fw.export_state().unwrap();
        assert!(
            exported.volatile.is_empty(),
            "exported with an empty platformAuth"
        );
        assert!(!guest_can_use_platform(&mut fw));
        // The destination locks what it imports (with its own value).
        let mut dest =
            Firmware::new(Box::new(PlatformTpm::default()), PlatformConfig::default()).unwrap();
        dest.import_state(&exported).unwrap();
        assert_eq!(dest.platform, Platform::Locked);
        assert!(!guest_can_use_platform(&mut dest));
        assert_ne!(dest.auth, fw.auth);

        // A clean stop saves it open, so the host's tools can provision a stopped instance;
        // a new daemon on the resumed state locks it at once.
        fw.save().unwrap();
        assert_eq!(fw.platform, Platform::Open);
        let mut empty = c::hierarchy_change_auth(c::TPM_RH_PLATFORM, &[], &[]);
        assert_eq!(
            response_code(fw.engine.execute(&mut empty).unwrap()),
            Ok(rc::SUCCESS),
            "saved with an empty platformAuth"
        );
        let resumed = PlatformTpm {
            started: true,
            ..Default::default()
        };
        let mut fw = Firmware::new(Box::new(resumed), PlatformConfig::default()).unwrap();
        assert_eq!(fw.platform, Platform::Locked, "locked at start");
        assert!(!guest_can_use_platform(&mut fw));

        // A state locked by another process' value stays closed to everybody.
        let foreign = PlatformTpm {
            started: true,
            platform_auth: vec![9; 32],
            ..Default::default()
        };
        let mut fw = Firmware::new(Box::new(foreign), PlatformConfig::default()).unwrap();
        assert_eq!(fw.platform, Platform::Unknown);
        assert!(!guest_can_use_platform(&mut fw));
        // ... until the next Startup(CLEAR), which the hook locks with its own.
        fw.power_cycle().unwrap();
        assert_eq!(startup_clear(&mut fw), rc::SUCCESS);
        assert_eq!(fw.platform, Platform::Locked);
        assert_eq!(model_auth(&mut fw), vec![0]);
    }

    #[test]
    fn deep_quotes_are_rate_limited() {
        let mut limit = RateLimit::new();
        for _ in 0..5 {
            assert!(limit.take());
        }
        assert!(!limit.take(), "the burst is spent");
        limit.at -= Duration::from_millis(600);
        assert!(limit.take(), "refilled after half a second");
        assert!(!limit.take());
        limit.at -= Duration::from_secs(3600);
        for _ in 0..5 {
            assert!(limit.take());
        }
        assert!(!limit.take(), "never more than the burst");
    }

    #[test]
    fn startup_capability_and_the_vendor_command() {
        assert_eq!(
            classify(&c::startup(c::TPM_SU_CLEAR), 0, false),
            Class::Startup(c::TPM_SU_CLEAR)
        );
        assert_eq!(
            classify(&c::startup(c::TPM_SU_STATE), MIRRORED, true),
            Class::Startup(c::TPM_SU_STATE)
        );
        let cap = c::get_capability(TPM_CAP_COMMANDS, 0x11f, 200);
        assert_eq!(classify(&cap, MIRRORED, true), Class::Capability);
        assert_eq!(classify(&cap, MIRRORED, false), Class::Engine);
        let dq = DeepQuoteRequest {
            nonce: vec![1; 20],
            vek_type: alg::RSA,
        }
        .build();
        assert_eq!(classify(&dq, MIRRORED, true), Class::DeepQuote);
        // Not offered: the engine answers (TPM_RC_COMMAND_CODE).
        assert_eq!(classify(&dq, MIRRORED, false), Class::Engine);
        let mut other_vendor = dq.clone();
        other_vendor[9] = 0x02;
        assert_eq!(classify(&other_vendor, MIRRORED, true), Class::Engine);
    }

    /// A GetCapability response as libtpms gives it.
    fn cap_response(more: bool, capability: u32, words: &[u32]) -> Vec<u8> {
        let mut b = CommandBuilder::new(tpm_proto::tag::NO_SESSIONS, rc::SUCCESS)
            .u8(u8::from(more))
            .u32(capability);
        for w in words {
            b = b.u32(*w);
        }
        b.finish()
    }

    fn listed(resp: &[u8]) -> (bool, Vec<u32>) {
        let mut r = ResponseReader::success(resp).unwrap();
        let more = r.u8().unwrap() != 0;
        assert_eq!(r.u32().unwrap(), TPM_CAP_COMMANDS);
        let n = r.u32().unwrap();
        let v = (0..n).map(|_| r.u32().unwrap()).collect();
        assert_eq!(r.remaining(), 0);
        assert_eq!(tpm_proto::response_code(resp), Ok(rc::SUCCESS));
        (more, v)
    }

    #[test]
    fn the_deep_quote_is_listed_in_order_within_the_count() {
        // Two library commands with handles (attributes in the upper bits), all of them.
        let lib = [0x0200_011f_u32, 0x0400_0120];
        let req = c::get_capability(TPM_CAP_COMMANDS, 0x11f, 10);
        let resp = cap_response(false, TPM_CAP_COMMANDS, &[2, lib[0], lib[1]]);
        let patched = patch_capability(&req, &resp).unwrap();
        assert_eq!(
            listed(&patched),
            (false, vec![lib[0], lib[1], DEEP_QUOTE_TPMA_CC])
        );
        // Exactly as many asked for as the engine has: ours does not fit, moreData says so,
        // and the next page (from the last code + 1) brings it.
        let req = c::get_capability(TPM_CAP_COMMANDS, 0x11f, 2);
        let (more, v) = listed(&patch_capability(&req, &resp).unwrap());
        assert_eq!((more, v), (true, lib.to_vec()));
        let req = c::get_capability(TPM_CAP_COMMANDS, 0x121, 2);
        let empty = cap_response(false, TPM_CAP_COMMANDS, &[0]);
        assert_eq!(
            listed(&patch_capability(&req, &empty).unwrap()),
            (false, vec![DEEP_QUOTE_TPMA_CC])
        );
        // The engine has more beyond its page: ours waits for its turn.
        let req = c::get_capability(TPM_CAP_COMMANDS, 0x11f, 2);
        let paged = cap_response(true, TPM_CAP_COMMANDS, &[2, lib[0], lib[1]]);
        assert_eq!(patch_capability(&req, &paged), None);
        // A vendor command of the engine's own after ours keeps the order.
        let theirs = TPM_CC_VENDOR | 0x0005;
        let req = c::get_capability(TPM_CAP_COMMANDS, 0x11f, 10);
        let resp = cap_response(false, TPM_CAP_COMMANDS, &[2, lib[0], theirs]);
        assert_eq!(
            listed(&patch_capability(&req, &resp).unwrap()).1,
            vec![lib[0], DEEP_QUOTE_TPMA_CC, theirs]
        );
        // Asked from past ours: nothing to add.
        let req = c::get_capability(TPM_CAP_COMMANDS, CC_DEEP_QUOTE + 1, 10);
        assert_eq!(patch_capability(&req, &empty), None);
        // An error response is left alone.
        assert_eq!(
            patch_capability(&req, &error_response(rc::INITIALIZE)),
            None
        );
    }

    #[test]
    fn command_counts_include_the_deep_quote() {
        let req = c::get_capability(TPM_CAP_TPM_PROPERTIES, pt::TOTAL_COMMANDS, 3);
        let resp = cap_response(
            false,
            TPM_CAP_TPM_PROPERTIES,
            &[
                3,
                pt::TOTAL_COMMANDS,
                110,
                pt::LIBRARY_COMMANDS,
                110,
                pt::VENDOR_COMMANDS,
                0,
            ],
        );
        let patched = patch_capability(&req, &resp).unwrap();
        assert_eq!(
            c::parse_tpm_properties(&patched).unwrap(),
            vec![
                (pt::TOTAL_COMMANDS, 111),
                (pt::LIBRARY_COMMANDS, 110),
                (pt::VENDOR_COMMANDS, 1)
            ]
        );
        let req = c::get_capability(TPM_CAP_TPM_PROPERTIES, pt::MANUFACTURER, 1);
        let resp = cap_response(false, TPM_CAP_TPM_PROPERTIES, &[1, pt::MANUFACTURER, 7]);
        assert_eq!(patch_capability(&req, &resp), Some(resp));
    }
}
