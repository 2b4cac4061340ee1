//! Policy sessions: starting one and satisfying PolicySecret (what the TCG EK templates'
//! policy asks for).

use crate::public::alg;
use crate::{cc, CommandBuilder, WireError};

use super::{response_parameters, TPM_RH_NULL};

/// TPM_SE_POLICY, the session type of [`start_auth_session_policy`].
pub const TPM_SE_POLICY: u8 = 0x01;
/// TPMA_SESSION continueSession: the session stays loaded after the command.
pub const TPMA_SESSION_CONTINUE: u8 = 0x01;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::tests::response;
    use crate::commands::{TPM_RH_ENDORSEMENT, TPM_RS_PW};
    use crate::{tag, Header, ResponseReader};

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
}
