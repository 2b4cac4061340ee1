//! Putting the vEKs' certificates into an instance, with plain TPM commands through its
//! engine.
//!
//! [`provision_ek`] creates both standard EKs (CreatePrimary under the endorsement
//! hierarchy with the templates of [`crate::templates`]; the TPM derives them from its
//! endorsement seed, so they are the EKs the guest's `tpm2_createek` will find), has the
//! coprocessor key certify them, and stores each certificate in its NV index, replacing
//! whatever was there: re-issuing is the same call, which is what migration uses.
//!
//! # NV index attributes
//!
//! [`NV_EK_CERT_ATTRS`] = PPWRITE | WRITEDEFINE | PPREAD | OWNERREAD | AUTHREAD | NO_DA |
//! PLATFORMCREATE (0x42072001), exactly what `swtpm_setup --create-ek-cert` gives these
//! indices (checked with `tpm2_nvreadpublic`: it shows 0x62072001, the same plus WRITTEN)
//! and what hardware TPMs use: defined and written by the platform only, readable by anyone
//! (owner, platform, or the index's empty auth), never subject to dictionary-attack lockout.
//! WRITEDEFINE only takes effect if someone issues `TPM2_NV_WriteLock` (this module does not):
//! it would then make the contents immutable until the index is deleted. Re-issuing does
//! not depend on it either way: it deletes the index with platform authorization
//! (`TPM2_NV_UndefineSpace` ignores write locks) and defines it anew.
//!
//! # Platform authorization
//!
//! Defining, writing and deleting these indices needs the platform hierarchy with its
//! (empty) password, which a TPM has after `TPM2_Startup(CLEAR)` until the guest's firmware
//! disables it or changes its password. So provision an instance before its guest runs: on
//! a fresh or power-cycled engine this function sends the Startup itself and, when done,
//! shuts the TPM down and power-cycles it again, leaving it as the guest expects to find it
//! (waiting for Startup). On a TPM that is already running it sends no Startup and leaves it
//! running; if the guest has locked the platform hierarchy, the result is
//! [`IdentityError::PlatformUnavailable`].

use openssl::x509::{X509Ref, X509};
use tpm_proto::commands::{
    self as c, nv_attr, pt, NvPublic, MAX_NV_BUFFER, NV_EK_CERT_ATTRS, TPM_RH_ENDORSEMENT,
    TPM_RH_OWNER, TPM_RH_PLATFORM,
};
use tpm_proto::rc::{self, fmt1};
use tpm_proto::{ResponseReader, WireError};

use crate::ek_cert::{check_coprocessor_cert, issue_ek_cert, EkPublic, TpmInfo};
use crate::templates::EkKind;
use crate::{CoprocessorKey, IdentityError, Validity};
use coprocessor::Coprocessor;

/// How often [`run`] sends a command again that the TPM answered with TPM_RC_RETRY.
const RETRIES: usize = 8;

/// First NV index of the EK certificate chain range (TCG EK Credential Profile: intermediate
/// certificates at 0x01c00100..=0x01c001ff, the one nearest the EK certificate first).
pub const EK_CHAIN_FIRST_INDEX: u32 = 0x01c0_0100;
/// How many chain certificates this module stores at most.
pub const EK_CHAIN_MAX: usize = 16;

/// The certificates [`provision_ek`] stored.
#[derive(Debug, Clone)]
pub struct ProvisionedEk {
    /// At NV index 0x01c00002.
    pub rsa_cert: X509,
    /// At NV index 0x01c0000a.
    pub ecc_cert: X509,
    /// The NV indices of the chain (coprocessor certificate first, then its issuers).
    pub chain_indices: Vec<u32>,
}

/// Creates the instance's standard EKs, issues their certificates under the coprocessor
/// certificate (signed by `key`, valid for `validity`) and stores them at 0x01c00002 (RSA)
/// and 0x01c0000a (ECC), replacing existing indices. Refuses a coprocessor certificate that
/// is not `key`'s. Idempotent: running it again re-issues both certificates.
///
/// Both certificates are built before NV is touched. An interruption while writing can leave
/// an index missing or partly written; running this again repairs it.
///
/// `issuers` (the host AIK certificate, and above it whatever the verifier may lack, never
/// the root) are stored with the coprocessor certificate in the EK certificate chain range
/// from [`EK_CHAIN_FIRST_INDEX`], so a guest can read the whole chain from its own TPM.
pub fn provision_ek(
    engine: &mut dyn Coprocessor,
    key: &CoprocessorKey,
    coprocessor_cert: &X509Ref,
    issuers: &[X509],
    validity: &Validity,
) -> Result<ProvisionedEk, IdentityError> {
    check_coprocessor_cert(key, coprocessor_cert)?;
    if issuers.len() + 1 > EK_CHAIN_MAX {
        return Err(IdentityError::Refused(format!(
            "a chain of {} certificates is longer than the {EK_CHAIN_MAX} stored",
            issuers.len() + 1
        )));
    }
    with_started(engine, |engine| {
        issue_ek_certs(engine, key, coprocessor_cert, validity)
            .and_then(|certs| store_ek_certs(engine, certs, coprocessor_cert, issuers))
    })
}

/// Runs `f` on the started TPM: started here first if it was not running, and then left as
/// found (shut down in order, then waiting for the guest's Startup). `f`'s error is the one
/// reported when both fail.
fn with_started<T>(
    engine: &mut dyn Coprocessor,
    f: impl FnOnce(&mut dyn Coprocessor) -> Result<T, IdentityError>,
) -> Result<T, IdentityError> {
    let started_here = startup_if_needed(engine)?;
    let result = f(engine);
    if started_here {
        let restored = run(engine, c::shutdown(c::TPM_SU_CLEAR))
            .and_then(|resp| success("Shutdown", &resp).map(drop))
            .and_then(|()| engine.power_cycle().map_err(IdentityError::from));
        if let Err(e) = restored {
            return Err(result.err().unwrap_or(e));
        }
    }
    result
}

/// Creates the instance's EKs (RSA, then ECC) in the started TPM and issues their
/// certificates; writes nothing to NV.
fn issue_ek_certs(
    engine: &mut dyn Coprocessor,
    key: &CoprocessorKey,
    coprocessor_cert: &X509Ref,
    validity: &Validity,
) -> Result<Vec<(EkKind, X509)>, IdentityError> {
    let info = tpm_info(engine)?;
    let mut certs = Vec::with_capacity(2);
    for kind in EkKind::ALL {
        let ek = create_ek(engine, kind)?;
        let cert = issue_ek_cert(key, coprocessor_cert, &ek.public, &info, validity)?;
        certs.push((kind, cert));
    }
    Ok(certs)
}

/// Stores the EK certificates `certs` at their indices and the chain above them (the
/// coprocessor certificate, then `issuers`) from [`EK_CHAIN_FIRST_INDEX`], reading each
/// back, and removes what is left of a longer old chain.
fn store_ek_certs(
    engine: &mut dyn Coprocessor,
    certs: Vec<(EkKind, X509)>,
    coprocessor_cert: &X509Ref,
    issuers: &[X509],
) -> Result<ProvisionedEk, IdentityError> {
    for (kind, cert) in &certs {
        let der = cert.to_der()?;
        store_nv(engine, kind.cert_nv_index(), &der)?;
        let stored = read_nv(engine, kind.cert_nv_index(), TPM_RH_PLATFORM)?;
        if stored.as_deref() != Some(der.as_slice()) {
            return Err(IdentityError::Refused(format!(
                "NV index {:#010x} does not read back the {} EK certificate just written",
                kind.cert_nv_index(),
                kind.name()
            )));
        }
    }
    let chain_indices = store_chain(engine, coprocessor_cert, issuers)?;
    let mut certs = certs.into_iter().map(|(_, cert)| cert);
    match (certs.next(), certs.next()) {
        (Some(rsa_cert), Some(ecc_cert)) => Ok(ProvisionedEk {
            rsa_cert,
            ecc_cert,
            chain_indices,
        }),
        _ => Err(IdentityError::Refused("EK certificates missing".into())),
    }
}

/// Stores the chain above the EK certificates (the coprocessor certificate, then `issuers`)
/// from [`EK_CHAIN_FIRST_INDEX`], reading each back, and removes what is left of a longer
/// old chain. Returns the indices used.
fn store_chain(
    engine: &mut dyn Coprocessor,
    coprocessor_cert: &X509Ref,
    issuers: &[X509],
) -> Result<Vec<u32>, IdentityError> {
    let mut chain_indices = Vec::new();
    let chain = std::iter::once(coprocessor_cert).chain(issuers.iter().map(|c| c.as_ref()));
    for (i, cert) in chain.enumerate() {
        let index = EK_CHAIN_FIRST_INDEX + i as u32;
        let der = cert.to_der()?;
        store_nv(engine, index, &der)?;
        if read_nv(engine, index, TPM_RH_PLATFORM)?.as_deref() != Some(der.as_slice()) {
            return Err(IdentityError::Refused(format!(
                "NV index {index:#010x} does not read back the chain certificate just written"
            )));
        }
        chain_indices.push(index);
    }
    // A shorter chain than last time: remove what is left of the old one.
    for i in chain_indices.len()..EK_CHAIN_MAX {
        remove_nv_if_defined(engine, EK_CHAIN_FIRST_INDEX + i as u32)?;
    }
    Ok(chain_indices)
}

/// The chain stored from [`EK_CHAIN_FIRST_INDEX`] (DER each, nearest the EK first).
pub fn read_chain(engine: &mut dyn Coprocessor) -> Result<Vec<Vec<u8>>, IdentityError> {
    let mut chain = Vec::new();
    for i in 0..EK_CHAIN_MAX as u32 {
        let index = EK_CHAIN_FIRST_INDEX + i;
        match read_nv(engine, index, index)? {
            Some(der) => chain.push(der),
            None => break,
        }
    }
    Ok(chain)
}

/// What [`refresh_ek_chain`] did.
#[derive(Debug, Clone)]
pub struct Refreshed {
    /// The vEK certificates were issued again (see [`refresh_ek_chain`] for when).
    pub reissued: bool,
    /// The chain in NV was rewritten (it was not the coprocessor certificate and `issuers`).
    pub chain_rewritten: bool,
    /// The vEK certificates now in NV.
    pub rsa_cert: X509,
    pub ecc_cert: X509,
}

/// Brings the identity in an instance's NV up to date with the host's current certificates
/// (after `vtpm-host renew`, or a re-certified coprocessor), changing only what must change:
///
/// - the vEK certificates are issued again (as [`provision_ek`] does) if one is missing
///   ([`IdentityError::Refused`]: provision first), is `due` (for renewal), would outlive
///   `coprocessor_cert`, or does not verify under it (another coprocessor key or name);
/// - otherwise, the chain from [`EK_CHAIN_FIRST_INDEX`] is rewritten if it is not
///   `coprocessor_cert` followed by `issuers`: the vEK certificates stay, since they verify
///   under the renewed coprocessor certificate (same key, same name).
///
/// The TPM is handled as [`provision_ek`] handles it (started and left waiting for Startup
/// if it was not running; the platform hierarchy must be usable).
pub fn refresh_ek_chain(
    engine: &mut dyn Coprocessor,
    key: &CoprocessorKey,
    coprocessor_cert: &X509Ref,
    issuers: &[X509],
    validity: &Validity,
    due: &dyn Fn(&X509Ref) -> bool,
) -> Result<Refreshed, IdentityError> {
    check_coprocessor_cert(key, coprocessor_cert)?;
    with_started(engine, |engine| {
        let mut current = Vec::new();
        for kind in EkKind::ALL {
            current.push(provisioned_ek_cert(engine, kind)?);
        }
        let issuer_end = coprocessor_cert.not_after();
        let mut reissue = false;
        for cert in &current {
            reissue |=
                !issued_by(cert, coprocessor_cert)? || due(cert) || cert.not_after() > issuer_end;
        }
        if reissue {
            let certs = issue_ek_certs(engine, key, coprocessor_cert, validity)?;
            let done = store_ek_certs(engine, certs, coprocessor_cert, issuers)?;
            return Ok(Refreshed {
                reissued: true,
                chain_rewritten: true,
                rsa_cert: done.rsa_cert,
                ecc_cert: done.ecc_cert,
            });
        }
        let chain_rewritten = update_chain(engine, coprocessor_cert, issuers)?;
        let mut current = current.into_iter();
        match (current.next(), current.next()) {
            (Some(rsa_cert), Some(ecc_cert)) => Ok(Refreshed {
                reissued: false,
                chain_rewritten,
                rsa_cert,
                ecc_cert,
            }),
            _ => Err(IdentityError::Refused("EK certificates missing".into())),
        }
    })
}

/// Whether `cert` verifies under `issuer`'s key and names it as its issuer.
fn issued_by(cert: &X509Ref, issuer: &X509Ref) -> Result<bool, IdentityError> {
    let key = issuer.public_key()?;
    Ok(cert.verify(&key)?
        && cert
            .issuer_name()
            .try_cmp(issuer.subject_name())
            .map(|o| o == std::cmp::Ordering::Equal)?)
}

/// The chain-only part of [`refresh_ek_chain`], for an instance that is running (its daemon
/// owns it, ADR 0012): the TPM must be started and its platform hierarchy usable. Rewrites
/// the chain from [`EK_CHAIN_FIRST_INDEX`] to `coprocessor_cert` followed by `issuers` if it
/// differs and both vEK certificates verify under `coprocessor_cert`; returns whether it
/// rewrote it. vEK certificates that do not (another coprocessor key) are refused: issuing
/// new ones takes the coprocessor key, which the daemon does not hold
/// (`vtpm-host refresh` on the stopped instance does it).
pub fn refresh_chain_of_running(
    engine: &mut dyn Coprocessor,
    coprocessor_cert: &X509Ref,
    issuers: &[X509],
) -> Result<bool, IdentityError> {
    for kind in EkKind::ALL {
        let cert = provisioned_ek_cert(engine, kind)?;
        if !issued_by(&cert, coprocessor_cert)? {
            return Err(IdentityError::Refused(format!(
                "the {} vEK certificate does not verify under the host's current coprocessor \
                 certificate (another coprocessor key): run `vtpm-host refresh` on the stopped \
                 instance",
                kind.name()
            )));
        }
    }
    update_chain(engine, coprocessor_cert, issuers)
}

/// The instance's `kind` vEK certificate, which a refresh needs there: refused if missing.
fn provisioned_ek_cert(engine: &mut dyn Coprocessor, kind: EkKind) -> Result<X509, IdentityError> {
    read_ek_cert(engine, kind)?.ok_or_else(|| {
        IdentityError::Refused(format!(
            "the instance has no {} vEK certificate: provision it first",
            kind.name()
        ))
    })
}

/// Rewrites the chain from [`EK_CHAIN_FIRST_INDEX`] to `coprocessor_cert` followed by
/// `issuers` unless it is that already; returns whether it rewrote it.
fn update_chain(
    engine: &mut dyn Coprocessor,
    coprocessor_cert: &X509Ref,
    issuers: &[X509],
) -> Result<bool, IdentityError> {
    let wanted = std::iter::once(coprocessor_cert.to_der())
        .chain(issuers.iter().map(|c| c.to_der()))
        .collect::<Result<Vec<_>, _>>()?;
    if read_chain(engine)? == wanted {
        return Ok(false);
    }
    store_chain(engine, coprocessor_cert, issuers)?;
    Ok(true)
}

/// An EK as CreatePrimary returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedEk {
    pub public: EkPublic,
    /// The marshalled `TPMT_PUBLIC` (what `tpm2_createek -u` writes, after its size field).
    pub public_area: Vec<u8>,
}

/// Creates the `kind` EK (CreatePrimary in the endorsement hierarchy with the standard
/// template), flushes it, and returns its public key and its whole `TPMT_PUBLIC`.
/// The TPM must be started.
pub fn create_ek(engine: &mut dyn Coprocessor, kind: EkKind) -> Result<CreatedEk, IdentityError> {
    const WHAT: &str = "CreatePrimary";
    let resp = run(
        engine,
        c::create_primary(TPM_RH_ENDORSEMENT, &kind.template()),
    )?;
    let (handle, public) = c::parse_create_primary(&resp).map_err(|e| wire(WHAT, e))?;
    let resp = run(engine, c::flush_context(handle))?;
    success("FlushContext", &resp)?;
    let ek = EkPublic::from_tpmt_public(&public).map_err(|e| wire(WHAT, e))?;
    if ek.kind() != kind {
        return Err(wire(
            WHAT,
            WireError::Unexpected("the EK has another type than its template"),
        ));
    }
    Ok(CreatedEk {
        public: ek,
        public_area: public,
    })
}

/// Reads the `kind` EK certificate from NV as the guest would (authorised by the index's
/// empty password); `None` if the index is not defined.
pub fn read_ek_cert(
    engine: &mut dyn Coprocessor,
    kind: EkKind,
) -> Result<Option<X509>, IdentityError> {
    let index = kind.cert_nv_index();
    match read_nv(engine, index, index)? {
        None => Ok(None),
        Some(der) => Ok(Some(X509::from_der(&der)?)),
    }
}

/// Sends Startup(CLEAR); `true` if it started the TPM, `false` if it was already running.
/// Whoever gets `true` should leave the TPM as found: Shutdown(CLEAR), then
/// [`Coprocessor::power_cycle`] (what [`provision_ek`] does).
pub fn startup_if_needed(engine: &mut dyn Coprocessor) -> Result<bool, IdentityError> {
    let resp = run(engine, c::startup(c::TPM_SU_CLEAR))?;
    match tpm_proto::response_code(&resp).map_err(|e| wire("Startup", e))? {
        rc::SUCCESS => Ok(true),
        rc::INITIALIZE => Ok(false),
        code => Err(IdentityError::Tpm {
            command: "Startup",
            code,
        }),
    }
}

/// Executes one raw command and returns the response (a TPM error is an `Ok` response).
/// While the TPM answers TPM_RC_RETRY, the command is sent again, up to a few times.
pub fn run(engine: &mut dyn Coprocessor, cmd: Vec<u8>) -> Result<Vec<u8>, IdentityError> {
    let mut attempt = 0;
    loop {
        // The engine may modify the command in place (libtpms decrypts parameters there):
        // every attempt gets the original.
        let mut sent = cmd.clone();
        let resp = engine.execute(&mut sent)?.to_vec();
        attempt += 1;
        if attempt > RETRIES || tpm_proto::response_code(&resp) != Ok(rc::RETRY) {
            return Ok(resp);
        }
    }
}

fn tpm_error(command: &'static str, code: u32) -> IdentityError {
    IdentityError::Tpm { command, code }
}

fn wire(command: &'static str, e: WireError) -> IdentityError {
    match e {
        WireError::Tpm(code) => tpm_error(command, code),
        source => IdentityError::Wire { command, source },
    }
}

/// Checks a response for success and returns a reader after its header.
fn success<'a>(command: &'static str, resp: &'a [u8]) -> Result<ResponseReader<'a>, IdentityError> {
    ResponseReader::success(resp).map_err(|e| wire(command, e))
}

/// Like [`success`] for commands authorised by the platform hierarchy.
fn platform_success<'a>(
    command: &'static str,
    resp: &'a [u8],
) -> Result<ResponseReader<'a>, IdentityError> {
    ResponseReader::success(resp).map_err(|e| match e {
        WireError::Tpm(code)
            if matches!(
                rc::base(code),
                fmt1::HIERARCHY | fmt1::AUTH_FAIL | fmt1::BAD_AUTH
            ) =>
        {
            IdentityError::PlatformUnavailable { command, code }
        }
        e => wire(command, e),
    })
}

/// What the running TPM says about itself (TPM2_GetCapability of its fixed properties), as
/// the vEK certificates record it.
pub fn tpm_info(engine: &mut dyn Coprocessor) -> Result<TpmInfo, IdentityError> {
    const WHAT: &str = "GetCapability";
    let cmd = c::get_capability(
        c::TPM_CAP_TPM_PROPERTIES,
        pt::FAMILY_INDICATOR,
        pt::FIRMWARE_VERSION_1 - pt::FAMILY_INDICATOR + 1,
    );
    let resp = run(engine, cmd)?;
    let props: std::collections::BTreeMap<u32, u32> = c::parse_tpm_properties(&resp)
        .map_err(|e| wire(WHAT, e))?
        .into_iter()
        .collect();
    let get = |p: u32| {
        props.get(&p).copied().ok_or_else(|| {
            IdentityError::Refused(format!("the TPM does not report property {p:#x}"))
        })
    };
    let text = |words: &[u32]| {
        let bytes: Vec<u8> = words
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .filter(|b| *b != 0)
            .collect();
        String::from_utf8_lossy(&bytes).trim().to_owned()
    };
    let vendor = (0..4)
        .map(|i| props.get(&(pt::VENDOR_STRING_1 + i)).copied().unwrap_or(0))
        .collect::<Vec<_>>();
    Ok(TpmInfo {
        manufacturer: get(pt::MANUFACTURER)?,
        model: text(&vendor),
        firmware_version: get(pt::FIRMWARE_VERSION_1)?,
        family: text(&[get(pt::FAMILY_INDICATOR)?]),
        level: get(pt::LEVEL)?,
        revision: get(pt::REVISION)?,
    })
}

/// NV_ReadPublic: the index's public area, `None` if it is not defined.
fn nv_read_public(
    engine: &mut dyn Coprocessor,
    index: u32,
) -> Result<Option<NvPublic>, IdentityError> {
    const WHAT: &str = "NV_ReadPublic";
    let resp = run(engine, c::nv_read_public(index))?;
    let public = match c::parse_nv_read_public(&resp) {
        Err(WireError::Tpm(code)) if rc::base(code) == rc::HANDLE => return Ok(None),
        other => other.map_err(|e| wire(WHAT, e))?,
    };
    if public.index != index {
        return Err(wire(
            WHAT,
            WireError::Unexpected("NV_ReadPublic answered for another index"),
        ));
    }
    Ok(Some(public))
}

/// Deletes NV index `index` if it exists (platform or owner authorisation, by who made it).
fn remove_nv_if_defined(engine: &mut dyn Coprocessor, index: u32) -> Result<(), IdentityError> {
    if let Some(NvPublic { attributes, .. }) = nv_read_public(engine, index)? {
        if attributes & nv_attr::POLICY_DELETE != 0 {
            return Err(IdentityError::Refused(format!(
                "NV index {index:#010x} can only be deleted through its policy"
            )));
        }
        let auth = if attributes & nv_attr::PLATFORMCREATE != 0 {
            TPM_RH_PLATFORM
        } else {
            TPM_RH_OWNER
        };
        let resp = run(engine, c::nv_undefine_space_with_auth(auth, index))?;
        platform_success("NV_UndefineSpace", &resp)?;
    }
    Ok(())
}

/// Replaces NV index `index` with one holding `data`.
fn store_nv(engine: &mut dyn Coprocessor, index: u32, data: &[u8]) -> Result<(), IdentityError> {
    let size = u16::try_from(data.len()).map_err(|_| {
        IdentityError::Refused(format!("{} bytes do not fit an NV index", data.len()))
    })?;
    remove_nv_if_defined(engine, index)?;
    const DEFINE: &str = "NV_DefineSpace";
    let resp = run(
        engine,
        c::nv_define_space_with_auth(TPM_RH_PLATFORM, index, size, NV_EK_CERT_ATTRS),
    )?;
    platform_success(DEFINE, &resp)?;
    for (i, chunk) in data.chunks(MAX_NV_BUFFER).enumerate() {
        const WRITE: &str = "NV_Write";
        // `size` fits u16, so every offset does.
        let offset = (i * MAX_NV_BUFFER) as u16;
        let resp = run(
            engine,
            c::nv_write_with_auth(TPM_RH_PLATFORM, index, offset, chunk),
        )?;
        platform_success(WRITE, &resp)?;
    }
    Ok(())
}

/// Reads the whole of NV index `index` authorised by `auth` (the index itself, owner or
/// platform); `None` if it is not defined.
pub fn read_nv(
    engine: &mut dyn Coprocessor,
    index: u32,
    auth: u32,
) -> Result<Option<Vec<u8>>, IdentityError> {
    const WHAT: &str = "NV_Read";
    let Some(NvPublic {
        attributes,
        data_size: size,
        ..
    }) = nv_read_public(engine, index)?
    else {
        return Ok(None);
    };
    if attributes & nv_attr::WRITTEN == 0 {
        return Err(IdentityError::Refused(format!(
            "NV index {index:#010x} is defined but was never written"
        )));
    }
    let mut data = Vec::with_capacity(usize::from(size));
    while data.len() < usize::from(size) {
        let offset = data.len() as u16;
        let n = (usize::from(size) - data.len()).min(MAX_NV_BUFFER) as u16;
        let resp = run(engine, c::nv_read_with_auth(auth, index, n, offset))?;
        let chunk = c::parse_nv_read(&resp).map_err(|e| wire(WHAT, e))?;
        if chunk.is_empty() || chunk.len() > usize::from(n) {
            return Err(IdentityError::Wire {
                command: WHAT,
                source: WireError::Unexpected("NV_Read returned the wrong amount of data"),
            });
        }
        data.extend_from_slice(&chunk);
    }
    Ok(Some(data))
}
