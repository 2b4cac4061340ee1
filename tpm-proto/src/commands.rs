//! Builders for the commands the tests and benchmarks send, and parsers for their responses.
//!
//! All authorizations are empty password sessions (TPM_RS_PW), except the policy session
//! [`activate_credential`] uses for the EK (started with [`start_auth_session_policy`] and
//! satisfied with [`policy_secret`]). Objects and NV indices are created in the owner
//! hierarchy unless a builder takes the hierarchy or authorization handle (`*_with_auth`,
//! [`create_primary`]): the vTPM's EK certificates, for instance, are platform-created
//! indices.

use crate::{cc, tag, CommandBuilder, ResponseReader, WireError};

pub const TPM_SU_CLEAR: u16 = 0x0000;
pub const TPM_SU_STATE: u16 = 0x0001;
pub const TPM_RH_OWNER: u32 = 0x4000_0001;
pub const TPM_RH_NULL: u32 = 0x4000_0007;
pub const TPM_RH_ENDORSEMENT: u32 = 0x4000_000B;
pub const TPM_RH_PLATFORM: u32 = 0x4000_000C;
pub const TPM_ALG_SHA256: u16 = 0x000B;
pub const TPM_ALG_NULL: u16 = 0x0010;
pub const TPM_ALG_ECDSA: u16 = 0x0018;
pub const TPM_ALG_ECC: u16 = 0x0023;
pub const TPM_ECC_NIST_P256: u16 = 0x0003;
/// The password session handle.
pub const TPM_RS_PW: u32 = 0x4000_0009;
/// TPM_SE_POLICY, the session type of [`start_auth_session_policy`].
pub const TPM_SE_POLICY: u8 = 0x01;
/// TPMA_SESSION continueSession: the session stays loaded after the command.
pub const TPMA_SESSION_CONTINUE: u8 = 0x01;

/// Command codes of builders here that [`crate::cc`] does not list.
pub const CC_ACTIVATE_CREDENTIAL: u32 = 0x147;
pub const CC_POLICY_SECRET: u32 = 0x151;
pub const CC_START_AUTH_SESSION: u32 = 0x176;

/// Attributes of an attestation key (what `tpm2_createak` gives): fixedTPM | fixedParent |
/// sensitiveDataOrigin | userWithAuth | restricted | sign.
pub const AIK_ATTRS: u32 =
    0x0000_0002 | 0x0000_0010 | 0x0000_0020 | 0x0000_0040 | 0x0001_0000 | 0x0004_0000;

/// NV attributes: owner/auth read and write, no dictionary-attack protection.
pub const NV_ORDINARY_ATTRS: u32 =
    0x0000_0002 | 0x0000_0004 | 0x0002_0000 | 0x0004_0000 | 0x0200_0000;
/// Same, as a monotonic counter (TPM_NT_COUNTER in bits 4..7).
pub const NV_COUNTER_ATTRS: u32 = NV_ORDINARY_ATTRS | (1 << 4);
/// NV attributes of an EK certificate index as swtpm_setup defines them (and as the TCG EK
/// Credential Profile describes real TPMs'): PPWRITE | WRITEDEFINE | PPREAD | OWNERREAD |
/// AUTHREAD | NO_DA | PLATFORMCREATE, defined with [`nv_define_space_with_auth`] and
/// [`TPM_RH_PLATFORM`] and written with [`nv_write_with_auth`] under platform authorization.
pub const NV_EK_CERT_ATTRS: u32 =
    0x0000_0001 | 0x0000_2000 | 0x0001_0000 | 0x0002_0000 | 0x0004_0000 | 0x0200_0000 | 0x4000_0000;

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
        .u16(TPM_ALG_SHA256)
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
        .u16(TPM_ALG_SHA256)
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
    let mut r = ResponseReader::success(resp)?;
    let handle = r.u32()?;
    let _param_size = r.u32()?;
    let public = r.tpm2b()?;
    if public.is_empty() {
        return Err(WireError::Unexpected(
            "CreatePrimary returned an empty public area",
        ));
    }
    Ok((handle, public.to_vec()))
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
    let mut r = ResponseReader::success(resp)?;
    let handle = r.u32()?;
    let _param_size = r.u32()?;
    Ok((handle, r.tpm2b()?.to_vec()))
}

/// A TPMT_TK_HASHCHECK: the TPM's proof that it computed a digest itself over data that does
/// not start with TPM_GENERATED_VALUE, which a restricted signing key requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashCheckTicket {
    pub tag: u16,
    pub hierarchy: u32,
    pub digest: Vec<u8>,
}

impl HashCheckTicket {
    /// The NULL ticket (TPM_RH_NULL, empty digest) an unrestricted key accepts.
    pub fn null() -> Self {
        HashCheckTicket {
            tag: tag::HASHCHECK,
            hierarchy: TPM_RH_NULL,
            digest: Vec::new(),
        }
    }

    fn read(r: &mut ResponseReader<'_>) -> Result<Self, WireError> {
        let tag = r.u16()?;
        if tag != tag::HASHCHECK {
            return Err(WireError::Unexpected("ticket is not a TPMT_TK_HASHCHECK"));
        }
        Ok(HashCheckTicket {
            tag,
            hierarchy: r.u32()?,
            digest: r.tpm2b()?.to_vec(),
        })
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
    let mut r = ResponseReader::success(resp)?;
    let _param_size = r.u32()?;
    let digest = r.tpm2b()?.to_vec();
    Ok((digest, HashCheckTicket::read(&mut r)?))
}

/// TPM2_Sign of a SHA-256 `digest` with an ECDSA/SHA-256 key and the hash-check `ticket`
/// (from [`parse_hash`] or [`parse_sequence_complete`] for a restricted key).
pub fn sign_ecdsa_sha256_with_ticket(key: u32, digest: &[u8], ticket: &HashCheckTicket) -> Vec<u8> {
    CommandBuilder::with_sessions(cc::SIGN)
        .u32(key)
        .password_auth(&[])
        .tpm2b(digest)
        .u16(TPM_ALG_ECDSA)
        .u16(TPM_ALG_SHA256)
        .u16(ticket.tag)
        .u32(ticket.hierarchy)
        .tpm2b(&ticket.digest)
        .finish()
}

/// CreatePrimary of an ECC NIST P-256 ECDSA/SHA-256 signing key under the owner hierarchy.
pub fn create_primary_ecc_signing() -> Vec<u8> {
    // fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | sign
    const ATTRS: u32 = 0x0000_0002 | 0x0000_0010 | 0x0000_0020 | 0x0000_0040 | 0x0004_0000;
    let public = CommandBuilder::new(0, 0) // scratch buffer for the TPMT_PUBLIC body
        .u16(TPM_ALG_ECC)
        .u16(TPM_ALG_SHA256)
        .u32(ATTRS)
        .tpm2b(&[])
        .u16(TPM_ALG_NULL) // symmetric
        .u16(TPM_ALG_ECDSA)
        .u16(TPM_ALG_SHA256)
        .u16(TPM_ECC_NIST_P256)
        .u16(TPM_ALG_NULL) // kdf
        .tpm2b(&[]) // unique.x
        .tpm2b(&[]) // unique.y
        .finish();
    let public = &public[crate::HEADER_SIZE..];
    CommandBuilder::with_sessions(cc::CREATE_PRIMARY)
        .u32(TPM_RH_OWNER)
        .password_auth(&[])
        .u16(4) // TPM2B_SENSITIVE_CREATE: empty userAuth + empty data
        .tpm2b(&[])
        .tpm2b(&[])
        .tpm2b(public)
        .tpm2b(&[]) // outsideInfo
        .u32(0) // creationPCR: empty selection
        .finish()
}

/// The loaded key's handle and public point from a CreatePrimary response of
/// [`create_primary_ecc_signing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EccPrimary {
    pub handle: u32,
    pub x: Vec<u8>,
    pub y: Vec<u8>,
}

pub fn parse_create_primary_ecc(resp: &[u8]) -> Result<EccPrimary, WireError> {
    let mut r = ResponseReader::success(resp)?;
    let handle = r.u32()?;
    let _param_size = r.u32()?;
    let public = r.tpm2b()?;
    let mut p = ResponseReader::new(public);
    if p.u16()? != TPM_ALG_ECC {
        return Err(WireError::Unexpected(
            "CreatePrimary did not return an ECC key",
        ));
    }
    let _name_alg = p.u16()?;
    let _attrs = p.u32()?;
    let _policy = p.tpm2b()?;
    if p.u16()? != TPM_ALG_NULL {
        return Err(WireError::Unexpected(
            "signing key with a symmetric algorithm",
        ));
    }
    if p.u16()? != TPM_ALG_NULL {
        let _scheme_hash = p.u16()?;
    }
    let _curve = p.u16()?;
    if p.u16()? != TPM_ALG_NULL {
        let _kdf_hash = p.u16()?;
    }
    let x = p.tpm2b()?.to_vec();
    let y = p.tpm2b()?.to_vec();
    Ok(EccPrimary { handle, x, y })
}

/// Sign a SHA-256 `digest` with an ECDSA key (the key's own scheme; a NULL hash check
/// ticket, which an unrestricted key accepts).
pub fn sign_ecdsa_sha256(key: u32, digest: &[u8; 32]) -> Vec<u8> {
    sign_ecdsa_sha256_with_ticket(key, digest, &HashCheckTicket::null())
}

/// (r, s) of an ECDSA signature response.
pub fn parse_sign_ecdsa(resp: &[u8]) -> Result<(Vec<u8>, Vec<u8>), WireError> {
    let mut r = ResponseReader::success(resp)?;
    let _param_size = r.u32()?;
    if r.u16()? != TPM_ALG_ECDSA {
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

/// A reader at the parameters of a successful response that has `handles` handles (returned
/// too): after the header, the handles and, in a response with sessions (tag
/// TPM_ST_SESSIONS), the parameterSize, which must fit the response.
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
    }
    Ok((handles, r))
}

/// The TPMT_PUBLIC of an attestation key: ECC NIST P-256, ECDSA with SHA-256, SHA-256
/// names, [`AIK_ATTRS`], no policy (the template `tpm2_createak -G ecc -g sha256 -s ecdsa`
/// uses, for [`create_primary`]).
pub fn ecc_p256_aik_template() -> Vec<u8> {
    let public = CommandBuilder::new(0, 0) // scratch buffer for the TPMT_PUBLIC body
        .u16(TPM_ALG_ECC)
        .u16(TPM_ALG_SHA256)
        .u32(AIK_ATTRS)
        .tpm2b(&[]) // authPolicy
        .u16(TPM_ALG_NULL) // symmetric
        .u16(TPM_ALG_ECDSA)
        .u16(TPM_ALG_SHA256)
        .u16(TPM_ECC_NIST_P256)
        .u16(TPM_ALG_NULL) // kdf
        .tpm2b(&[]) // unique.x
        .tpm2b(&[]) // unique.y
        .finish();
    public[crate::HEADER_SIZE..].to_vec()
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
    CommandBuilder::no_sessions(CC_START_AUTH_SESSION)
        .u32(TPM_RH_NULL) // tpmKey
        .u32(TPM_RH_NULL) // bind
        .tpm2b(nonce_caller)
        .tpm2b(&[]) // encryptedSalt
        .u8(TPM_SE_POLICY)
        .u16(TPM_ALG_NULL) // symmetric
        .u16(TPM_ALG_SHA256) // authHash
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
    CommandBuilder::with_sessions(CC_POLICY_SECRET)
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
    CommandBuilder::with_sessions(CC_ACTIVATE_CREDENTIAL)
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
        .u16(TPM_ALG_SHA256)
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
/// (OWNERWRITE) or TPM_RH_PLATFORM (PPWRITE). `data` is at most the TPM's NV buffer size
/// (1024 bytes on the TPMs this project targets); larger contents take several writes.
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
    CommandBuilder::with_sessions(cc::NV_READ)
        .u32(index)
        .u32(index)
        .password_auth(&[])
        .u16(size)
        .u16(offset)
        .finish()
}

pub fn parse_nv_read(resp: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut r = ResponseReader::success(resp)?;
    let _param_size = r.u32()?;
    Ok(r.tpm2b()?.to_vec())
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
            hash(b"abc", TPM_ALG_SHA256, TPM_RH_OWNER),
            hash_sequence_start(TPM_ALG_SHA256),
            sequence_update(0x8000_0001, &[3; 1024]),
            sequence_complete(0x8000_0001, b"", TPM_RH_OWNER),
            nv_define_space_with_auth(TPM_RH_PLATFORM, 0x01c0_0002, 1200, 0),
            nv_write_with_auth(TPM_RH_PLATFORM, 0x01c0_0002, 1024, &[4; 176]),
            nv_undefine_space_with_auth(TPM_RH_PLATFORM, 0x01c0_0002),
            create_primary(TPM_RH_OWNER, &ecc_p256_aik_template()),
            start_auth_session_policy(&[5; 16]),
            policy_secret(TPM_RH_ENDORSEMENT, 0x0300_0000),
            activate_credential(0x8000_0001, 0x8000_0000, 0x0300_0000, &[1; 68], &[2; 256]),
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
        assert_eq!((h.tag, h.code), (tag::NO_SESSIONS, CC_START_AUTH_SESSION));
        let mut r = ResponseReader::new(&cmd[crate::HEADER_SIZE..]);
        assert_eq!(r.u32().unwrap(), TPM_RH_NULL);
        assert_eq!(r.u32().unwrap(), TPM_RH_NULL);
        assert_eq!(r.tpm2b().unwrap(), &[5; 16]);
        assert_eq!(r.tpm2b().unwrap(), &[] as &[u8]);
        assert_eq!(r.u8().unwrap(), TPM_SE_POLICY);
        assert_eq!(r.u16().unwrap(), TPM_ALG_NULL);
        assert_eq!(r.u16().unwrap(), TPM_ALG_SHA256);
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
        assert_eq!((h.tag, h.code), (tag::SESSIONS, CC_ACTIVATE_CREDENTIAL));
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
                tag: tag::HASHCHECK,
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
}
