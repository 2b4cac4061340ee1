//! Builders for the commands the tests, the benchmarks and the identity code send, and parsers
//! for their responses.
//!
//! All authorizations are empty password sessions (TPM_RS_PW), except the policy session
//! [`activate_credential`] uses for the EK (started with [`start_auth_session_policy`] and
//! satisfied with [`policy_secret`]). Objects and NV indices are created in the owner
//! hierarchy unless a builder takes the hierarchy or authorization handle (`*_with_auth`,
//! [`create_primary`]): the vTPM's EK certificates, for instance, are platform-created
//! indices.

use crate::public::{alg, attr, curve, PublicParams, TpmPublic};
use crate::{cc, tag, CommandBuilder, ResponseReader, WireError};

pub const TPM_SU_CLEAR: u16 = 0x0000;
pub const TPM_SU_STATE: u16 = 0x0001;
pub const TPM_RH_OWNER: u32 = 0x4000_0001;
pub const TPM_RH_NULL: u32 = 0x4000_0007;
pub const TPM_RH_ENDORSEMENT: u32 = 0x4000_000B;
pub const TPM_RH_PLATFORM: u32 = 0x4000_000C;
/// The password session handle.
pub const TPM_RS_PW: u32 = 0x4000_0009;
/// TPM_SE_POLICY, the session type of [`start_auth_session_policy`].
pub const TPM_SE_POLICY: u8 = 0x01;
/// TPMA_SESSION continueSession: the session stays loaded after the command.
pub const TPMA_SESSION_CONTINUE: u8 = 0x01;

/// Attributes of an attestation key (what `tpm2_createak` gives): fixedTPM | fixedParent |
/// sensitiveDataOrigin | userWithAuth | restricted | sign.
pub const AIK_ATTRS: u32 = attr::FIXED_TPM
    | attr::FIXED_PARENT
    | attr::SENSITIVE_DATA_ORIGIN
    | attr::USER_WITH_AUTH
    | attr::RESTRICTED
    | attr::SIGN;

/// TPMA_NV bits (TCG TPM 2.0 Library, Part 2 §13.4).
pub mod nv_attr {
    pub const PPWRITE: u32 = 1 << 0;
    pub const OWNERWRITE: u32 = 1 << 1;
    pub const AUTHWRITE: u32 = 1 << 2;
    /// TPM_NT_COUNTER in the index type field (bits 4..7).
    pub const TYPE_COUNTER: u32 = 1 << 4;
    pub const POLICY_DELETE: u32 = 1 << 10;
    pub const WRITEDEFINE: u32 = 1 << 13;
    pub const PPREAD: u32 = 1 << 16;
    pub const OWNERREAD: u32 = 1 << 17;
    pub const AUTHREAD: u32 = 1 << 18;
    pub const NO_DA: u32 = 1 << 25;
    /// Set by the TPM once the index has been written.
    pub const WRITTEN: u32 = 1 << 29;
    pub const PLATFORMCREATE: u32 = 1 << 30;
}

/// NV attributes: owner/auth read and write, no dictionary-attack protection.
pub const NV_ORDINARY_ATTRS: u32 = nv_attr::OWNERWRITE
    | nv_attr::AUTHWRITE
    | nv_attr::OWNERREAD
    | nv_attr::AUTHREAD
    | nv_attr::NO_DA;
/// Same, as a monotonic counter.
pub const NV_COUNTER_ATTRS: u32 = NV_ORDINARY_ATTRS | nv_attr::TYPE_COUNTER;
/// NV attributes of an EK certificate index as swtpm_setup defines them (and as the TCG EK
/// Credential Profile describes real TPMs'): PPWRITE | WRITEDEFINE | PPREAD | OWNERREAD |
/// AUTHREAD | NO_DA | PLATFORMCREATE, defined with [`nv_define_space_with_auth`] and
/// [`TPM_RH_PLATFORM`] and written with [`nv_write_with_auth`] under platform authorization.
pub const NV_EK_CERT_ATTRS: u32 = nv_attr::PPWRITE
    | nv_attr::WRITEDEFINE
    | nv_attr::PPREAD
    | nv_attr::OWNERREAD
    | nv_attr::AUTHREAD
    | nv_attr::NO_DA
    | nv_attr::PLATFORMCREATE;

/// NV index of the RSA 2048 EK certificate (TCG EK Credential Profile, section 2.2.1.4, low
/// range).
pub const RSA_EK_CERT_INDEX: u32 = 0x01C0_0002;
/// NV index of the ECC NIST P-256 EK certificate (low range).
pub const ECC_EK_CERT_INDEX: u32 = 0x01C0_000A;

/// Largest NV_Write / NV_Read payload (MAX_NV_BUFFER_SIZE of libtpms, and the PC Client
/// profile's minimum): larger contents take several commands.
pub const MAX_NV_BUFFER: usize = 1024;

/// TPM_CAP_TPM_PROPERTIES, the capability [`get_capability`] reads with [`pt`] properties.
pub const TPM_CAP_TPM_PROPERTIES: u32 = 6;
/// TPM_CAP_COMMANDS: the TPMA_CC of each implemented command.
pub const TPM_CAP_COMMANDS: u32 = 2;
/// First handle of the PCRs (TPM_HT_PCR << 24): PCR `i` is handle `i`.
pub const HR_PCR: u32 = 0x0000_0000;

/// TPM_PT values (Part 2 §6.13): fixed properties of the TPM.
pub mod pt {
    pub const FAMILY_INDICATOR: u32 = 0x100;
    pub const LEVEL: u32 = 0x101;
    pub const REVISION: u32 = 0x102;
    pub const MANUFACTURER: u32 = 0x105;
    pub const VENDOR_STRING_1: u32 = 0x106;
    pub const FIRMWARE_VERSION_1: u32 = 0x10B;
    /// Commands implemented, library and vendor ones together.
    pub const TOTAL_COMMANDS: u32 = 0x129;
    pub const LIBRARY_COMMANDS: u32 = 0x12A;
    /// Vendor-specific commands implemented.
    pub const VENDOR_COMMANDS: u32 = 0x12B;
}

pub fn startup(su: u16) -> Vec<u8> {
    CommandBuilder::no_sessions(cc::STARTUP).u16(su).finish()
}

pub fn shutdown(su: u16) -> Vec<u8> {
    CommandBuilder::no_sessions(cc::SHUTDOWN).u16(su).finish()
}

pub fn get_random(bytes: u16) -> Vec<u8> {
    CommandBuilder::no_sessions(cc::GET_RANDOM)
        .u16(bytes)
        .finish()
}

/// HierarchyChangeAuth: sets the authorization value of `hierarchy` (TPM_RH_PLATFORM,
/// TPM_RH_OWNER, ...) to `new_auth`, authorised by its current value `current`.
pub fn hierarchy_change_auth(hierarchy: u32, current: &[u8], new_auth: &[u8]) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::HIERARCHY_CHANGE_AUTH)
        .u32(hierarchy)
        .password_auth(current)
        .tpm2b(new_auth)
        .finish()
}

/// HierarchyControl: `auth_handle` (authorised with `auth`) sets hierarchy `enable` on or off.
pub fn hierarchy_control(auth_handle: u32, auth: &[u8], enable: u32, state: bool) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::HIERARCHY_CONTROL)
        .u32(auth_handle)
        .password_auth(auth)
        .u32(enable)
        .u8(u8::from(state))
        .finish()
}

/// PCR_Reset of `pcr` (empty password).
pub fn pcr_reset(pcr: u32) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::PCR_RESET)
        .u32(pcr)
        .password_auth(&[])
        .finish()
}

/// PCR_Event of `data` (at most 1024 bytes) into `pcr` (empty password).
pub fn pcr_event(pcr: u32, data: &[u8]) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::PCR_EVENT)
        .u32(pcr)
        .password_auth(&[])
        .tpm2b(data)
        .finish()
}

/// Parses a GetRandom response into the random bytes.
pub fn parse_get_random(resp: &[u8]) -> Result<Vec<u8>, WireError> {
    Ok(ResponseReader::success(resp)?.tpm2b()?.to_vec())
}

/// PCR_Extend of one SHA-256 digest into `pcr`.
pub fn pcr_extend_sha256(pcr: u32, digest: &[u8; 32]) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::PCR_EXTEND)
        .u32(pcr)
        .password_auth(&[])
        .u32(1)
        .u16(alg::SHA256)
        .bytes(digest)
        .finish()
}

/// PCR_Read of one PCR in the SHA-256 bank.
pub fn pcr_read_sha256(pcr: u32) -> Vec<u8> {
    let mut select = [0u8; 3];
    if let Some(byte) = select.get_mut((pcr / 8) as usize) {
        *byte = 1 << (pcr % 8);
    }
    CommandBuilder::no_sessions(cc::PCR_READ)
        .u32(1)
        .u16(alg::SHA256)
        .u8(3)
        .bytes(&select)
        .finish()
}

/// Parses a PCR_Read response for a single selected PCR into its digest.
pub fn parse_pcr_read_single(resp: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut r = ResponseReader::success(resp)?;
    let _update_counter = r.u32()?;
    let selections = r.u32()?;
    for _ in 0..selections {
        let _hash = r.u16()?;
        let n = r.u8()?;
        r.skip(usize::from(n))?;
    }
    let digests = r.u32()?;
    if digests != 1 {
        return Err(WireError::Unexpected(
            "PCR_Read returned other than one digest",
        ));
    }
    Ok(r.tpm2b()?.to_vec())
}

/// CreatePrimary in `hierarchy` (TPM_RH_OWNER, TPM_RH_ENDORSEMENT, TPM_RH_PLATFORM or
/// TPM_RH_NULL) from a marshalled TPMT_PUBLIC template, with empty userAuth and sensitive
/// data, no outsideInfo and no creation PCRs.
pub fn create_primary(hierarchy: u32, template_tpmt_public: &[u8]) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::CREATE_PRIMARY)
        .u32(hierarchy)
        .password_auth(&[])
        .u16(4) // TPM2B_SENSITIVE_CREATE: empty userAuth + empty data
        .tpm2b(&[])
        .tpm2b(&[])
        .tpm2b(template_tpmt_public)
        .tpm2b(&[]) // outsideInfo
        .u32(0) // creationPCR: empty selection
        .finish()
}

/// The object handle and the created key's TPMT_PUBLIC (without its TPM2B size) from a
/// CreatePrimary response.
pub fn parse_create_primary(resp: &[u8]) -> Result<(u32, Vec<u8>), WireError> {
    let (handles, mut r) = response_parameters(resp, 1)?;
    let public = r.tpm2b()?;
    if public.is_empty() {
        return Err(WireError::Unexpected(
            "CreatePrimary returned an empty public area",
        ));
    }
    Ok((handles[0], public.to_vec()))
}

/// Load of an object under `parent` (authorised by an empty password): `private` is the
/// TPM2B_PRIVATE buffer without its size, `tpmt_public` the marshalled TPMT_PUBLIC.
pub fn load(parent: u32, private: &[u8], tpmt_public: &[u8]) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::LOAD)
        .u32(parent)
        .password_auth(&[])
        .tpm2b(private)
        .tpm2b(tpmt_public)
        .finish()
}

/// The loaded object's handle and name from a Load response.
pub fn parse_load(resp: &[u8]) -> Result<(u32, Vec<u8>), WireError> {
    let (handles, mut r) = response_parameters(resp, 1)?;
    Ok((handles[0], r.tpm2b()?.to_vec()))
}

/// A TPMT_TK_HASHCHECK (its tag is always TPM_ST_HASHCHECK): the TPM's proof that it
/// computed a digest itself over data that does not start with TPM_GENERATED_VALUE, which a
/// restricted signing key requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashCheckTicket {
    pub hierarchy: u32,
    pub digest: Vec<u8>,
}

impl HashCheckTicket {
    /// The NULL ticket (TPM_RH_NULL, empty digest) an unrestricted key accepts.
    pub fn null() -> Self {
        HashCheckTicket {
            hierarchy: TPM_RH_NULL,
            digest: Vec::new(),
        }
    }

    fn read(r: &mut ResponseReader<'_>) -> Result<Self, WireError> {
        if r.u16()? != tag::HASHCHECK {
            return Err(WireError::Unexpected("ticket is not a TPMT_TK_HASHCHECK"));
        }
        Ok(HashCheckTicket {
            hierarchy: r.u32()?,
            digest: r.tpm2b()?.to_vec(),
        })
    }

    fn write(&self, b: CommandBuilder) -> CommandBuilder {
        b.u16(tag::HASHCHECK)
            .u32(self.hierarchy)
            .tpm2b(&self.digest)
    }
}

/// Largest buffer TPM2_Hash and TPM2_SequenceUpdate take (MAX_DIGEST_BUFFER on every TPM
/// this project targets).
pub const MAX_DIGEST_BUFFER: usize = 1024;

/// TPM2_Hash of `data` (at most [`MAX_DIGEST_BUFFER`] bytes) with `hash_alg`; with a
/// hierarchy other than TPM_RH_NULL the TPM returns a ticket for it.
pub fn hash(data: &[u8], hash_alg: u16, hierarchy: u32) -> Vec<u8> {
    CommandBuilder::no_sessions(cc::HASH)
        .tpm2b(data)
        .u16(hash_alg)
        .u32(hierarchy)
        .finish()
}

/// The digest and ticket from a TPM2_Hash response.
pub fn parse_hash(resp: &[u8]) -> Result<(Vec<u8>, HashCheckTicket), WireError> {
    let mut r = ResponseReader::success(resp)?;
    let digest = r.tpm2b()?.to_vec();
    Ok((digest, HashCheckTicket::read(&mut r)?))
}

/// TPM2_HashSequenceStart with an empty sequence password.
pub fn hash_sequence_start(hash_alg: u16) -> Vec<u8> {
    CommandBuilder::no_sessions(cc::HASH_SEQUENCE_START)
        .tpm2b(&[])
        .u16(hash_alg)
        .finish()
}

/// The sequence handle from a HashSequenceStart response.
pub fn parse_hash_sequence_start(resp: &[u8]) -> Result<u32, WireError> {
    ResponseReader::success(resp)?.u32()
}

/// TPM2_SequenceUpdate with `data` (at most [`MAX_DIGEST_BUFFER`] bytes).
pub fn sequence_update(sequence: u32, data: &[u8]) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::SEQUENCE_UPDATE)
        .u32(sequence)
        .password_auth(&[])
        .tpm2b(data)
        .finish()
}

/// TPM2_SequenceComplete with the last `data` (at most [`MAX_DIGEST_BUFFER`] bytes); with a
/// hierarchy other than TPM_RH_NULL the TPM returns a ticket for the digest.
pub fn sequence_complete(sequence: u32, data: &[u8], hierarchy: u32) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::SEQUENCE_COMPLETE)
        .u32(sequence)
        .password_auth(&[])
        .tpm2b(data)
        .u32(hierarchy)
        .finish()
}

/// The digest and ticket from a SequenceComplete response.
pub fn parse_sequence_complete(resp: &[u8]) -> Result<(Vec<u8>, HashCheckTicket), WireError> {
    let (_, mut r) = response_parameters(resp, 0)?;
    let digest = r.tpm2b()?.to_vec();
    Ok((digest, HashCheckTicket::read(&mut r)?))
}

/// TPM2_Sign of a SHA-256 `digest` with an ECDSA/SHA-256 key and the hash-check `ticket`
/// (from [`parse_hash`] or [`parse_sequence_complete`] for a restricted key).
pub fn sign_ecdsa_sha256_with_ticket(key: u32, digest: &[u8], ticket: &HashCheckTicket) -> Vec<u8> {
    let b = CommandBuilder::with_sessions(cc::SIGN)
        .u32(key)
        .password_auth(&[])
        .tpm2b(digest)
        .u16(alg::ECDSA)
        .u16(alg::SHA256);
    ticket.write(b).finish()
}

/// CreatePrimary of an ECC NIST P-256 ECDSA/SHA-256 signing key under the owner hierarchy:
/// the template of [`ecc_p256_aik_template`] without `restricted`, so it signs any digest.
pub fn create_primary_ecc_signing() -> Vec<u8> {
    create_primary(
        TPM_RH_OWNER,
        &ecc_p256_ecdsa_template(AIK_ATTRS & !attr::RESTRICTED),
    )
}

/// The loaded key's handle and public point from a CreatePrimary response of
/// [`create_primary_ecc_signing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EccPrimary {
    pub handle: u32,
    pub x: Vec<u8>,
    pub y: Vec<u8>,
}

/// The handle and public point of the key [`create_primary_ecc_signing`] created: an ECC key
/// without a symmetric algorithm.
pub fn parse_create_primary_ecc(resp: &[u8]) -> Result<EccPrimary, WireError> {
    let (handle, public) = parse_create_primary(resp)?;
    match TpmPublic::parse(&public)?.params {
        PublicParams::Ecc {
            symmetric: None,
            x,
            y,
            ..
        } => Ok(EccPrimary { handle, x, y }),
        PublicParams::Ecc { .. } => Err(WireError::Unexpected(
            "signing key with a symmetric algorithm",
        )),
        _ => Err(WireError::Unexpected(
            "CreatePrimary did not return an ECC key",
        )),
    }
}

/// Sign a SHA-256 `digest` with an ECDSA key (the key's own scheme; a NULL hash check
/// ticket, which an unrestricted key accepts).
pub fn sign_ecdsa_sha256(key: u32, digest: &[u8; 32]) -> Vec<u8> {
    sign_ecdsa_sha256_with_ticket(key, digest, &HashCheckTicket::null())
}

/// (r, s) of an ECDSA signature response.
pub fn parse_sign_ecdsa(resp: &[u8]) -> Result<(Vec<u8>, Vec<u8>), WireError> {
    let (_, mut r) = response_parameters(resp, 0)?;
    if r.u16()? != alg::ECDSA {
        return Err(WireError::Unexpected("signature is not ECDSA"));
    }
    let _hash = r.u16()?;
    let sig_r = r.tpm2b()?.to_vec();
    let sig_s = r.tpm2b()?.to_vec();
    Ok((sig_r, sig_s))
}

/// EvictControl in the owner hierarchy: makes `object` persistent at `persistent` (or, with
/// a persistent `object`, evicts it).
pub fn evict_control(object: u32, persistent: u32) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::EVICT_CONTROL)
        .u32(TPM_RH_OWNER)
        .u32(object)
        .password_auth(&[])
        .u32(persistent)
        .finish()
}

/// ReadPublic of an object (answers TPM_RC_HANDLE for one that does not exist).
pub fn read_public(object: u32) -> Vec<u8> {
    CommandBuilder::no_sessions(cc::READ_PUBLIC)
        .u32(object)
        .finish()
}

pub fn flush_context(handle: u32) -> Vec<u8> {
    CommandBuilder::no_sessions(cc::FLUSH_CONTEXT)
        .u32(handle)
        .finish()
}

/// A reader over the parameters of a successful response that has `handles` handles
/// (returned too): after the header and the handles; in a response with sessions (tag
/// TPM_ST_SESSIONS) the parameterSize follows, which must fit the response, and the reader
/// ends there (the sessions' answers are not parameters).
fn response_parameters(
    resp: &[u8],
    handles: usize,
) -> Result<(Vec<u32>, ResponseReader<'_>), WireError> {
    let sessions = crate::Header::parse(resp)?.tag == tag::SESSIONS;
    let mut r = ResponseReader::success(resp)?;
    let handles = (0..handles)
        .map(|_| r.u32())
        .collect::<Result<Vec<_>, _>>()?;
    if sessions {
        let size = r.u32()? as usize;
        if size > r.remaining() {
            return Err(WireError::Unexpected(
                "parameterSize is larger than the response",
            ));
        }
        return Ok((handles, ResponseReader::new(r.take(size)?)));
    }
    Ok((handles, r))
}

/// The TPMT_PUBLIC of an ECC NIST P-256 key with `attributes`, ECDSA with SHA-256, SHA-256
/// names and no policy.
fn ecc_p256_ecdsa_template(attributes: u32) -> Vec<u8> {
    let public = CommandBuilder::new(0, 0) // scratch buffer for the TPMT_PUBLIC body
        .u16(alg::ECC)
        .u16(alg::SHA256)
        .u32(attributes)
        .tpm2b(&[]) // authPolicy
        .u16(alg::NULL) // symmetric
        .u16(alg::ECDSA)
        .u16(alg::SHA256)
        .u16(curve::NIST_P256)
        .u16(alg::NULL) // kdf
        .tpm2b(&[]) // unique.x
        .tpm2b(&[]) // unique.y
        .finish();
    public[crate::HEADER_SIZE..].to_vec()
}

/// The TPMT_PUBLIC of an attestation key: ECC NIST P-256, ECDSA with SHA-256, SHA-256
/// names, [`AIK_ATTRS`], no policy (the template `tpm2_createak -G ecc -g sha256 -s ecdsa`
/// uses, for [`create_primary`]).
pub fn ecc_p256_aik_template() -> Vec<u8> {
    ecc_p256_ecdsa_template(AIK_ATTRS)
}

/// ReadPublic's answer: the object's TPMT_PUBLIC (without its size) and its name.
pub fn parse_read_public(resp: &[u8]) -> Result<(Vec<u8>, Vec<u8>), WireError> {
    let (_, mut r) = response_parameters(resp, 0)?;
    let public = r.tpm2b()?.to_vec();
    let name = r.tpm2b()?.to_vec();
    let _qualified_name = r.tpm2b()?;
    if public.is_empty() {
        return Err(WireError::Unexpected(
            "ReadPublic returned an empty public area",
        ));
    }
    Ok((public, name))
}

/// TPM2_StartAuthSession of an unbound, unsalted policy session (tpmKey and bind
/// TPM_RH_NULL, no parameter encryption, SHA-256). `nonce_caller` is 16 to 32 bytes.
pub fn start_auth_session_policy(nonce_caller: &[u8]) -> Vec<u8> {
    CommandBuilder::no_sessions(cc::START_AUTH_SESSION)
        .u32(TPM_RH_NULL) // tpmKey
        .u32(TPM_RH_NULL) // bind
        .tpm2b(nonce_caller)
        .tpm2b(&[]) // encryptedSalt
        .u8(TPM_SE_POLICY)
        .u16(alg::NULL) // symmetric
        .u16(alg::SHA256) // authHash
        .finish()
}

/// The session handle and nonceTPM from a StartAuthSession response.
pub fn parse_start_auth_session(resp: &[u8]) -> Result<(u32, Vec<u8>), WireError> {
    let (handles, mut r) = response_parameters(resp, 1)?;
    let nonce_tpm = r.tpm2b()?.to_vec();
    Ok((handles[0], nonce_tpm))
}

/// TPM2_PolicySecret: adds "`auth_handle`'s authorization was given" to `policy_session`'s
/// digest, `auth_handle` (TPM_RH_ENDORSEMENT for the EK policy of the TCG EK templates)
/// being authorised by an empty password. nonceTPM, cpHashA and policyRef are empty and
/// expiration is 0: no time limit and no ticket.
pub fn policy_secret(auth_handle: u32, policy_session: u32) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::POLICY_SECRET)
        .u32(auth_handle)
        .u32(policy_session)
        .password_auth(&[])
        .tpm2b(&[]) // nonceTPM
        .tpm2b(&[]) // cpHashA
        .tpm2b(&[]) // policyRef
        .u32(0) // expiration
        .finish()
}

/// Checks a PolicySecret response (its timeout and ticket, empty with expiration 0, are
/// parsed and dropped).
pub fn parse_policy_secret(resp: &[u8]) -> Result<(), WireError> {
    let (_, mut r) = response_parameters(resp, 0)?;
    let _timeout = r.tpm2b()?;
    let _ticket_tag = r.u16()?;
    let _ticket_hierarchy = r.u32()?;
    let _ticket_digest = r.tpm2b()?;
    Ok(())
}

/// TPM2_ActivateCredential: `key_handle` (the EK) decrypts the seed in `encrypted_secret`
/// (a TPM2B_ENCRYPTED_SECRET buffer, without its size) and recovers the secret from
/// `credential_blob` (a TPM2B_ID_OBJECT buffer, without its size) if it was made for
/// `activate_handle`'s name (the AIK). Two sessions: an empty password for the AIK (ADMIN
/// role, which a key without adminWithPolicy grants to its auth value), then
/// `policy_session` for the EK, whose policy it must satisfy (PolicySecret(endorsement) for
/// the TCG templates); a policy session without PolicyAuthValue/PolicyPassword needs no
/// HMAC. The policy session has continueSession set, so it stays loaded: flush it.
pub fn activate_credential(
    activate_handle: u32,
    key_handle: u32,
    policy_session: u32,
    credential_blob: &[u8],
    encrypted_secret: &[u8],
) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::ACTIVATE_CREDENTIAL)
        .u32(activate_handle)
        .u32(key_handle)
        .auth_session(TPM_RS_PW, &[], 0, &[])
        .auth_session(policy_session, &[], TPMA_SESSION_CONTINUE, &[])
        .tpm2b(credential_blob)
        .tpm2b(encrypted_secret)
        .finish()
}

/// The recovered secret (certInfo, a TPM2B_DIGEST) from an ActivateCredential response.
pub fn parse_activate_credential(resp: &[u8]) -> Result<Vec<u8>, WireError> {
    let (_, mut r) = response_parameters(resp, 0)?;
    Ok(r.tpm2b()?.to_vec())
}

/// NV_DefineSpace in the owner hierarchy with an empty index password.
pub fn nv_define_space(index: u32, size: u16, attributes: u32) -> Vec<u8> {
    nv_define_space_with_auth(TPM_RH_OWNER, index, size, attributes)
}

/// NV_DefineSpace authorised by `auth_handle` (TPM_RH_OWNER, or TPM_RH_PLATFORM for a
/// platform-created index such as an EK certificate's, whose attributes must then include
/// TPMA_NV_PLATFORMCREATE), with an empty index password and SHA-256 name.
pub fn nv_define_space_with_auth(
    auth_handle: u32,
    index: u32,
    size: u16,
    attributes: u32,
) -> Vec<u8> {
    let public = CommandBuilder::new(0, 0)
        .u32(index)
        .u16(alg::SHA256)
        .u32(attributes)
        .tpm2b(&[])
        .u16(size)
        .finish();
    CommandBuilder::with_sessions(cc::NV_DEFINE_SPACE)
        .u32(auth_handle)
        .password_auth(&[])
        .tpm2b(&[])
        .tpm2b(&public[crate::HEADER_SIZE..])
        .finish()
}

pub fn nv_undefine_space(index: u32) -> Vec<u8> {
    nv_undefine_space_with_auth(TPM_RH_OWNER, index)
}

/// NV_UndefineSpace authorised by `auth_handle` (TPM_RH_PLATFORM for a platform-created
/// index).
pub fn nv_undefine_space_with_auth(auth_handle: u32, index: u32) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::NV_UNDEFINE_SPACE)
        .u32(auth_handle)
        .u32(index)
        .password_auth(&[])
        .finish()
}

/// NV_Write authorised by the index itself.
pub fn nv_write(index: u32, offset: u16, data: &[u8]) -> Vec<u8> {
    nv_write_with_auth(index, index, offset, data)
}

/// NV_Write authorised by `auth_handle`: the index itself (TPMA_NV_AUTHWRITE), TPM_RH_OWNER
/// (OWNERWRITE) or TPM_RH_PLATFORM (PPWRITE). `data` is at most [`MAX_NV_BUFFER`] bytes;
/// larger contents take several writes.
pub fn nv_write_with_auth(auth_handle: u32, index: u32, offset: u16, data: &[u8]) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::NV_WRITE)
        .u32(auth_handle)
        .u32(index)
        .password_auth(&[])
        .tpm2b(data)
        .u16(offset)
        .finish()
}

/// NV_Increment of a counter index, authorised by the index itself.
pub fn nv_increment(index: u32) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::NV_INCREMENT)
        .u32(index)
        .u32(index)
        .password_auth(&[])
        .finish()
}

/// NV_Read authorised by the index itself.
pub fn nv_read(index: u32, size: u16, offset: u16) -> Vec<u8> {
    nv_read_with_auth(index, index, size, offset)
}

/// NV_Read of `size` bytes (at most [`MAX_NV_BUFFER`]) from `offset`, authorised by
/// `auth_handle` with an empty password: the index itself (TPMA_NV_AUTHREAD), TPM_RH_OWNER
/// (OWNERREAD) or TPM_RH_PLATFORM (PPREAD).
pub fn nv_read_with_auth(auth_handle: u32, index: u32, size: u16, offset: u16) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::NV_READ)
        .u32(auth_handle)
        .u32(index)
        .password_auth(&[])
        .u16(size)
        .u16(offset)
        .finish()
}

/// The data from an NV_Read response.
pub fn parse_nv_read(resp: &[u8]) -> Result<Vec<u8>, WireError> {
    let (_, mut r) = response_parameters(resp, 0)?;
    Ok(r.tpm2b()?.to_vec())
}

/// NV_ReadPublic of `index` (answers TPM_RC_HANDLE for an index that is not defined).
pub fn nv_read_public(index: u32) -> Vec<u8> {
    CommandBuilder::no_sessions(cc::NV_READ_PUBLIC)
        .u32(index)
        .finish()
}

/// An NV index's public area (TPMS_NV_PUBLIC), as NV_ReadPublic answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvPublic {
    pub index: u32,
    pub name_alg: u16,
    /// TPMA_NV (see [`nv_attr`]).
    pub attributes: u32,
    pub auth_policy: Vec<u8>,
    /// The size of the index's data.
    pub data_size: u16,
}

/// The public area from an NV_ReadPublic response (its name is checked for size and
/// dropped).
pub fn parse_nv_read_public(resp: &[u8]) -> Result<NvPublic, WireError> {
    let (_, mut r) = response_parameters(resp, 0)?;
    let mut p = ResponseReader::new(r.tpm2b()?);
    let _name = r.tpm2b()?;
    let public = NvPublic {
        index: p.u32()?,
        name_alg: p.u16()?,
        attributes: p.u32()?,
        auth_policy: p.tpm2b()?.to_vec(),
        data_size: p.u16()?,
    };
    if p.remaining() != 0 {
        return Err(WireError::Unexpected(
            "trailing bytes after a TPMS_NV_PUBLIC",
        ));
    }
    Ok(public)
}

/// GetCapability of `count` values of `capability` from `property` on (for
/// [`TPM_CAP_TPM_PROPERTIES`], [`pt`] values; parsed by [`parse_tpm_properties`]).
pub fn get_capability(capability: u32, property: u32, count: u32) -> Vec<u8> {
    CommandBuilder::no_sessions(cc::GET_CAPABILITY)
        .u32(capability)
        .u32(property)
        .u32(count)
        .finish()
}

/// The (property, value) pairs of a GetCapability response for [`TPM_CAP_TPM_PROPERTIES`]
/// (the TPM may answer fewer than asked for).
pub fn parse_tpm_properties(resp: &[u8]) -> Result<Vec<(u32, u32)>, WireError> {
    let (_, mut r) = response_parameters(resp, 0)?;
    let _more_data = r.u8()?;
    if r.u32()? != TPM_CAP_TPM_PROPERTIES {
        return Err(WireError::Unexpected(
            "GetCapability answered another capability",
        ));
    }
    let count = r.u32()?;
    // Each pair takes 8 bytes: a count the response cannot hold is refused before anything
    // is allocated for it.
    if count as usize > r.remaining() / 8 {
        return Err(WireError::Unexpected(
            "GetCapability counts more properties than it holds",
        ));
    }
    (0..count).map(|_| Ok((r.u32()?, r.u32()?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Header;

    #[test]
    fn every_builder_produces_a_consistent_header() {
        for cmd in [
            startup(TPM_SU_CLEAR),
            get_random(32),
            pcr_extend_sha256(16, &[0xaa; 32]),
            pcr_read_sha256(16),
            create_primary_ecc_signing(),
            sign_ecdsa_sha256(0x8000_0000, &[1; 32]),
            nv_define_space(0x0150_0001, 64, NV_ORDINARY_ATTRS),
            nv_write(0x0150_0001, 0, b"hello"),
            nv_read(0x0150_0001, 5, 0),
            nv_increment(0x0150_0002),
            flush_context(0x8000_0000),
            evict_control(0x8000_0000, 0x8100_0001),
            read_public(0x8100_0001),
            create_primary(TPM_RH_ENDORSEMENT, &[0, 1, 0, 0x0b]),
            load(0x8000_0000, &[1; 40], &[2; 50]),
            hash(b"abc", alg::SHA256, TPM_RH_OWNER),
            hash_sequence_start(alg::SHA256),
            sequence_update(0x8000_0001, &[3; 1024]),
            sequence_complete(0x8000_0001, b"", TPM_RH_OWNER),
            nv_define_space_with_auth(TPM_RH_PLATFORM, 0x01c0_0002, 1200, 0),
            nv_write_with_auth(TPM_RH_PLATFORM, 0x01c0_0002, 1024, &[4; 176]),
            nv_undefine_space_with_auth(TPM_RH_PLATFORM, 0x01c0_0002),
            create_primary(TPM_RH_OWNER, &ecc_p256_aik_template()),
            start_auth_session_policy(&[5; 16]),
            policy_secret(TPM_RH_ENDORSEMENT, 0x0300_0000),
            activate_credential(0x8000_0001, 0x8000_0000, 0x0300_0000, &[1; 68], &[2; 256]),
            nv_read_with_auth(TPM_RH_PLATFORM, 0x01c0_0002, 1024, 0),
            nv_read_public(0x01c0_0002),
            get_capability(TPM_CAP_TPM_PROPERTIES, pt::FAMILY_INDICATOR, 12),
        ] {
            let h = Header::parse(&cmd).unwrap();
            assert_eq!(h.size as usize, cmd.len());
            assert!(h.tag == tag::NO_SESSIONS || h.tag == tag::SESSIONS);
        }
    }

    #[test]
    fn pcr_read_selects_the_right_bit() {
        let cmd = pcr_read_sha256(16);
        assert_eq!(&cmd[cmd.len() - 3..], &[0, 0, 1]);
    }

    #[test]
    fn tpm_error_is_surfaced() {
        let resp = crate::error_response(crate::rc::FAILURE);
        assert_eq!(
            parse_get_random(&resp),
            Err(WireError::Tpm(crate::rc::FAILURE))
        );
    }

    #[test]
    fn ek_cert_attributes_match_swtpm_setup() {
        // tpm2_nvreadpublic on swtpm_setup's 0x01c00002 shows 0x62072001 once written.
        assert_eq!(NV_EK_CERT_ATTRS | 0x2000_0000, 0x6207_2001);
        assert_eq!(NV_EK_CERT_ATTRS | nv_attr::WRITTEN, 0x6207_2001);
        assert_eq!(
            (NV_ORDINARY_ATTRS, NV_COUNTER_ATTRS),
            (0x0206_0006, 0x0206_0016)
        );
        assert_eq!(AIK_ATTRS, 0x0005_0072);
    }

    #[test]
    fn with_auth_builders_put_the_auth_handle_first() {
        let define = nv_define_space_with_auth(TPM_RH_PLATFORM, 0x01c0_0002, 1200, 0);
        assert_eq!(&define[10..14], &TPM_RH_PLATFORM.to_be_bytes());
        assert_eq!(
            nv_define_space(0x0150_0001, 64, 0)[10..14],
            TPM_RH_OWNER.to_be_bytes()
        );
        let write = nv_write_with_auth(TPM_RH_PLATFORM, 0x01c0_0002, 7, b"x");
        assert_eq!(&write[10..14], &TPM_RH_PLATFORM.to_be_bytes());
        assert_eq!(&write[14..18], &0x01c0_0002u32.to_be_bytes());
        // ... data TPM2B then the offset.
        assert_eq!(&write[write.len() - 5..], &[0, 1, b'x', 0, 7]);
        assert_eq!(
            nv_write(0x0150_0001, 0, b"x")[10..14],
            0x0150_0001u32.to_be_bytes()
        );
        let undefine = nv_undefine_space_with_auth(TPM_RH_PLATFORM, 0x01c0_0002);
        assert_eq!(&undefine[10..18], &[0x40, 0, 0, 0x0c, 0x01, 0xc0, 0, 0x02]);
    }

    fn response(handle: Option<u32>, params: &[u8], sessions: bool) -> Vec<u8> {
        let mut b = CommandBuilder::new(
            if sessions {
                tag::SESSIONS
            } else {
                tag::NO_SESSIONS
            },
            crate::rc::SUCCESS,
        );
        if let Some(h) = handle {
            b = b.u32(h);
        }
        if sessions {
            b = b.u32(params.len() as u32);
        }
        b = b.bytes(params);
        if sessions {
            b = b.bytes(&[0, 0, 0, 0, 0]); // one password session: nonce, attrs, hmac
        }
        b.finish()
    }

    #[test]
    fn create_primary_response_gives_handle_and_public() {
        let public = [0u8, 0x23, 0, 0x0b, 1, 2, 3, 4];
        let mut params = (public.len() as u16).to_be_bytes().to_vec();
        params.extend_from_slice(&public);
        params.extend_from_slice(&[0; 12]); // creation data etc. (ignored)
        let resp = response(Some(0x8000_0000), &params, true);
        assert_eq!(
            parse_create_primary(&resp).unwrap(),
            (0x8000_0000, public.to_vec())
        );
        for cut in 10..19 {
            let mut short = resp[..cut].to_vec();
            short[2..6].copy_from_slice(&(cut as u32).to_be_bytes());
            assert!(parse_create_primary(&short).is_err(), "cut at {cut}");
        }
        let empty = response(Some(0x8000_0000), &[0, 0], true);
        assert!(parse_create_primary(&empty).is_err());
    }

    #[test]
    fn aik_template_is_an_attestation_key() {
        let t = crate::public::TpmPublic::parse(&ecc_p256_aik_template()).unwrap();
        assert_eq!(t.attributes, 0x0005_0072);
        assert!(t.aik_violations().is_empty(), "{:?}", t.aik_violations());
        assert!(!t.has(crate::public::attr::DECRYPT));
    }

    #[test]
    fn start_auth_session_is_a_policy_session_without_salt_or_bind() {
        let cmd = start_auth_session_policy(&[5; 16]);
        let h = Header::parse(&cmd).unwrap();
        assert_eq!((h.tag, h.code), (tag::NO_SESSIONS, cc::START_AUTH_SESSION));
        let mut r = ResponseReader::new(&cmd[crate::HEADER_SIZE..]);
        assert_eq!(r.u32().unwrap(), TPM_RH_NULL);
        assert_eq!(r.u32().unwrap(), TPM_RH_NULL);
        assert_eq!(r.tpm2b().unwrap(), &[5; 16]);
        assert_eq!(r.tpm2b().unwrap(), &[] as &[u8]);
        assert_eq!(r.u8().unwrap(), TPM_SE_POLICY);
        assert_eq!(r.u16().unwrap(), alg::NULL);
        assert_eq!(r.u16().unwrap(), alg::SHA256);
        assert_eq!(r.remaining(), 0);

        // Response: the session handle, then nonceTPM (no parameterSize without sessions).
        let mut params = vec![0, 16];
        params.extend_from_slice(&[9; 16]);
        let resp = response(Some(0x0300_0000), &params, false);
        assert_eq!(
            parse_start_auth_session(&resp).unwrap(),
            (0x0300_0000, vec![9; 16])
        );
        let short = &resp[..resp.len() - 1];
        let mut short = short.to_vec();
        let len = short.len() as u32;
        short[2..6].copy_from_slice(&len.to_be_bytes());
        assert!(parse_start_auth_session(&short).is_err());
    }

    #[test]
    fn policy_secret_is_authorised_by_an_empty_password() {
        let cmd = policy_secret(TPM_RH_ENDORSEMENT, 0x0300_0001);
        assert_eq!(&cmd[10..14], &TPM_RH_ENDORSEMENT.to_be_bytes());
        assert_eq!(&cmd[14..18], &0x0300_0001u32.to_be_bytes());
        // Auth area: size 9, TPM_RS_PW, empty nonce, attributes 0, empty hmac.
        assert_eq!(&cmd[18..22], &9u32.to_be_bytes());
        assert_eq!(&cmd[22..26], &TPM_RS_PW.to_be_bytes());
        // nonceTPM, cpHashA, policyRef empty; expiration 0.
        assert_eq!(&cmd[31..], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        // Response: timeout (empty) and a NULL ticket.
        let params = [0, 0, 0x80, 0x25, 0x40, 0, 0, 7, 0, 0];
        parse_policy_secret(&response(None, &params, true)).unwrap();
        assert!(parse_policy_secret(&response(None, &params[..4], true)).is_err());
        assert_eq!(
            parse_policy_secret(&crate::error_response(0x9a2)),
            Err(WireError::Tpm(0x9a2))
        );
    }

    #[test]
    fn activate_credential_has_a_password_then_a_policy_session() {
        let cmd = activate_credential(0x8000_0001, 0x8000_0000, 0x0300_0000, &[1; 3], &[2; 4]);
        let h = Header::parse(&cmd).unwrap();
        assert_eq!((h.tag, h.code), (tag::SESSIONS, cc::ACTIVATE_CREDENTIAL));
        let mut r = ResponseReader::new(&cmd[crate::HEADER_SIZE..]);
        assert_eq!(
            r.u32().unwrap(),
            0x8000_0001,
            "activateHandle (the AIK) first"
        );
        assert_eq!(r.u32().unwrap(), 0x8000_0000, "then keyHandle (the EK)");
        assert_eq!(r.u32().unwrap(), 18, "two sessions of 9 bytes");
        assert_eq!(r.u32().unwrap(), TPM_RS_PW);
        assert_eq!(r.tpm2b().unwrap(), &[] as &[u8]);
        assert_eq!(r.u8().unwrap(), 0);
        assert_eq!(r.tpm2b().unwrap(), &[] as &[u8]);
        assert_eq!(r.u32().unwrap(), 0x0300_0000);
        assert_eq!(r.tpm2b().unwrap(), &[] as &[u8]);
        assert_eq!(r.u8().unwrap(), TPMA_SESSION_CONTINUE);
        assert_eq!(r.tpm2b().unwrap(), &[] as &[u8]);
        assert_eq!(r.tpm2b().unwrap(), &[1; 3], "credentialBlob");
        assert_eq!(r.tpm2b().unwrap(), &[2; 4], "secret");
        assert_eq!(r.remaining(), 0);

        // Response: parameterSize, certInfo; then the two sessions' answers.
        let mut resp = response(None, &[0, 3, 0xaa, 0xbb, 0xcc], true);
        resp.extend_from_slice(&[0, 0, 1, 0, 0]);
        let len = resp.len() as u32;
        resp[2..6].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            parse_activate_credential(&resp).unwrap(),
            vec![0xaa, 0xbb, 0xcc]
        );
        // A parameterSize beyond the response is refused.
        let mut bad = resp.clone();
        bad[10..14].copy_from_slice(&100u32.to_be_bytes());
        assert!(parse_activate_credential(&bad).is_err());
        // TPM_RC_INTEGRITY on parameter 1 is surfaced as the TPM's code.
        assert_eq!(
            parse_activate_credential(&crate::error_response(0x19f)),
            Err(WireError::Tpm(0x19f))
        );
    }

    #[test]
    fn read_public_gives_public_area_and_name() {
        let public = ecc_p256_aik_template();
        let mut params = (public.len() as u16).to_be_bytes().to_vec();
        params.extend_from_slice(&public);
        params.extend_from_slice(&[0, 2, 0, 0x0b, 0, 1, 0x40]);
        let (p, name) = parse_read_public(&response(None, &params, false)).unwrap();
        assert_eq!((p, name), (public, vec![0, 0x0b]));
        assert!(parse_read_public(&response(None, &params[..10], false)).is_err());
    }

    #[test]
    fn tickets_are_parsed_and_passed_to_sign() {
        let mut params = vec![0, 2, 0xaa, 0xbb]; // digest
        params.extend_from_slice(&[0x80, 0x24, 0x40, 0, 0, 1, 0, 1, 0xcc]);
        let (digest, ticket) = parse_hash(&response(None, &params, false)).unwrap();
        assert_eq!(digest, [0xaa, 0xbb]);
        assert_eq!(
            ticket,
            HashCheckTicket {
                hierarchy: TPM_RH_OWNER,
                digest: vec![0xcc]
            }
        );
        let (d2, t2) = parse_sequence_complete(&response(None, &params, true)).unwrap();
        assert_eq!((d2, t2.clone()), (digest.clone(), ticket.clone()));
        let sign = sign_ecdsa_sha256_with_ticket(0x8000_0002, &digest, &ticket);
        assert_eq!(&sign[sign.len() - 9..], &params[4..]);
        // A ticket of another kind is refused.
        params[4] = 0x80;
        params[5] = 0x21;
        assert!(parse_hash(&response(None, &params, false)).is_err());
        assert_eq!(
            parse_hash_sequence_start(&response(Some(0x8000_0003), &[], false)).unwrap(),
            0x8000_0003
        );
    }

    #[test]
    fn the_ecc_signing_key_is_the_attestation_key_unrestricted() {
        let aik = ecc_p256_aik_template();
        let signing = create_primary_ecc_signing();
        assert_eq!(
            signing,
            create_primary(TPM_RH_OWNER, &{
                let mut t = aik.clone();
                t[4..8].copy_from_slice(&(AIK_ATTRS & !attr::RESTRICTED).to_be_bytes());
                t
            })
        );
        let t = TpmPublic::parse(&aik).unwrap();
        assert_eq!(t.attributes & !attr::RESTRICTED, 0x0004_0072);

        // The response: handle, then the public area with the point.
        let mut public = aik.clone();
        public.truncate(public.len() - 4);
        public.extend_from_slice(&[0, 2, 0xaa, 0xbb, 0, 1, 0xcc]);
        let mut params = (public.len() as u16).to_be_bytes().to_vec();
        params.extend_from_slice(&public);
        let resp = response(Some(0x8000_0000), &params, true);
        assert_eq!(
            parse_create_primary_ecc(&resp).unwrap(),
            EccPrimary {
                handle: 0x8000_0000,
                x: vec![0xaa, 0xbb],
                y: vec![0xcc]
            }
        );
        // An RSA key (the EK template of swtpm's tests) is refused.
        let mut rsa = vec![
            0, 1, 0, 0x0b, 0, 0, 0, 0x72, 0, 0, 0, 0x10, 0, 0x14, 0, 0x0b,
        ];
        rsa.extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, 1, 0x99]);
        let mut params = (rsa.len() as u16).to_be_bytes().to_vec();
        params.extend_from_slice(&rsa);
        assert_eq!(
            parse_create_primary_ecc(&response(Some(0x8000_0000), &params, true)),
            Err(WireError::Unexpected(
                "CreatePrimary did not return an ECC key"
            ))
        );
    }

    #[test]
    fn parameters_end_at_the_parameter_size() {
        // NV_Read: the data, then a session answer that must not be read as parameters.
        let resp = response(None, &[0, 2, 7, 8], true);
        assert_eq!(parse_nv_read(&resp).unwrap(), [7, 8]);
        let mut short = resp.clone();
        short[10..14].copy_from_slice(&3u32.to_be_bytes());
        assert!(parse_nv_read(&short).is_err());
        let mut long = resp;
        long[10..14].copy_from_slice(&100u32.to_be_bytes());
        assert!(parse_nv_read(&long).is_err());
        // Load: the handle, the name.
        let resp = response(Some(0x8000_0001), &[0, 2, 0, 0x0b], true);
        assert_eq!(parse_load(&resp).unwrap(), (0x8000_0001, vec![0, 0x0b]));
        // Sign: ECDSA, SHA-256, r, s.
        let resp = response(None, &[0, 0x18, 0, 0x0b, 0, 1, 1, 0, 1, 2], true);
        assert_eq!(parse_sign_ecdsa(&resp).unwrap(), (vec![1], vec![2]));
        let resp = response(None, &[0, 0x14, 0, 0x0b, 0, 1, 1, 0, 1, 2], true);
        assert!(parse_sign_ecdsa(&resp).is_err());
    }

    #[test]
    fn nv_read_builders_and_the_public_area() {
        let read = nv_read_with_auth(TPM_RH_PLATFORM, 0x01c0_0002, 512, 1024);
        assert_eq!(&read[10..18], &[0x40, 0, 0, 0x0c, 0x01, 0xc0, 0, 0x02]);
        assert_eq!(&read[read.len() - 4..], &[2, 0, 4, 0]);
        let own = nv_read(0x0150_0001, 5, 0);
        assert_eq!(&own[10..18], &[1, 0x50, 0, 1, 1, 0x50, 0, 1]);

        let cmd = nv_read_public(0x01c0_000a);
        assert_eq!(
            Header::parse(&cmd).unwrap(),
            Header {
                tag: tag::NO_SESSIONS,
                size: 14,
                code: cc::NV_READ_PUBLIC
            }
        );
        assert_eq!(&cmd[10..], &ECC_EK_CERT_INDEX.to_be_bytes());
        // TPM2B_NV_PUBLIC (index, nameAlg, attributes, authPolicy, dataSize), then the name.
        let mut public = ECC_EK_CERT_INDEX.to_be_bytes().to_vec();
        public.extend_from_slice(&[0, 0x0b]);
        public.extend_from_slice(&(NV_EK_CERT_ATTRS | nv_attr::WRITTEN).to_be_bytes());
        public.extend_from_slice(&[0, 1, 0x55, 0x02, 0x9c]);
        let mut params = (public.len() as u16).to_be_bytes().to_vec();
        params.extend_from_slice(&public);
        params.extend_from_slice(&[0, 2, 0, 0x0b]);
        let resp = response(None, &params, false);
        assert_eq!(
            parse_nv_read_public(&resp).unwrap(),
            NvPublic {
                index: ECC_EK_CERT_INDEX,
                name_alg: alg::SHA256,
                attributes: 0x6207_2001,
                auth_policy: vec![0x55],
                data_size: 668,
            }
        );
        for cut in 10..resp.len() {
            let mut short = resp[..cut].to_vec();
            short[2..6].copy_from_slice(&(cut as u32).to_be_bytes());
            assert!(parse_nv_read_public(&short).is_err(), "cut at {cut}");
        }
        assert_eq!(
            parse_nv_read_public(&crate::error_response(0x18b)),
            Err(WireError::Tpm(0x18b))
        );
    }

    #[test]
    fn tpm_properties_are_listed() {
        let cmd = get_capability(TPM_CAP_TPM_PROPERTIES, pt::FAMILY_INDICATOR, 12);
        assert_eq!(&cmd[10..], &[0, 0, 0, 6, 0, 0, 1, 0, 0, 0, 0, 12]);
        let mut params = vec![1, 0, 0, 0, 6, 0, 0, 0, 2];
        params.extend_from_slice(&[0, 0, 1, 0, 0x32, 0x2e, 0x30, 0]);
        params.extend_from_slice(&[0, 0, 1, 5, 0x49, 0x42, 0x4d, 0]);
        let resp = response(None, &params, false);
        assert_eq!(
            parse_tpm_properties(&resp).unwrap(),
            [
                (pt::FAMILY_INDICATOR, 0x322e_3000),
                (pt::MANUFACTURER, 0x4942_4d00)
            ]
        );
        // Another capability, or a count the response does not hold, is refused.
        let mut other = params.clone();
        other[4] = 5;
        assert!(parse_tpm_properties(&response(None, &other, false)).is_err());
        let mut many = params;
        many[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_tpm_properties(&response(None, &many, false)).is_err());
    }
}
