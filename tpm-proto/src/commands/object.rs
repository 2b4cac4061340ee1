//! Objects: creating a primary key (and its templates), loading, reading, persisting and
//! flushing one, and activating a credential made for one.

use crate::public::{alg, attr, curve, PublicParams, TpmPublic};
use crate::{cc, CommandBuilder, WireError};

use super::{
    response_parameters, single_tpm2b_parameter, TPMA_SESSION_CONTINUE, TPM_RH_OWNER, TPM_RS_PW,
};

/// Attributes of an attestation key (what `tpm2_createak` gives): fixedTPM | fixedParent |
/// sensitiveDataOrigin | userWithAuth | restricted | sign.
pub const AIK_ATTRS: u32 = attr::FIXED_TPM
    | attr::FIXED_PARENT
    | attr::SENSITIVE_DATA_ORIGIN
    | attr::USER_WITH_AUTH
    | attr::RESTRICTED
    | attr::SIGN;

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
    single_tpm2b_parameter(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::tests::response;
    use crate::{tag, Header, ResponseReader};

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
}
