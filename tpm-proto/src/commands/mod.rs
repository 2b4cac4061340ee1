//! Builders for the commands the tests, the benchmarks and the identity code send, and parsers
//! for their responses, one file per command family:
//!
//! | module | commands |
//! |---|---|
//! | `startup` | Startup, Shutdown, GetRandom, GetCapability (TPM properties) |
//! | `pcr` | PCR_Extend, PCR_Read |
//! | `object` | CreatePrimary, Load, ReadPublic, EvictControl, FlushContext, ActivateCredential, key templates |
//! | `sign` | Hash, the hash sequence (HashSequenceStart, SequenceUpdate, SequenceComplete), Sign |
//! | `session` | StartAuthSession (policy), PolicySecret |
//! | `nv` | NV_DefineSpace, NV_UndefineSpace, NV_Write, NV_Increment, NV_Read, NV_ReadPublic |
//!
//! Everything is re-exported here: callers name `tpm_proto::commands::X` whatever the family.
//!
//! All authorizations are empty password sessions (TPM_RS_PW), except the policy session
//! [`activate_credential`] uses for the EK (started with [`start_auth_session_policy`] and
//! satisfied with [`policy_secret`]). Objects and NV indices are created in the owner
//! hierarchy unless a builder takes the hierarchy or authorization handle (`*_with_auth`,
//! [`create_primary`]): the vTPM's EK certificates, for instance, are platform-created
//! indices.

mod nv;
mod object;
mod pcr;
mod session;
mod sign;
mod startup;

pub use nv::*;
pub use object::*;
pub use pcr::*;
pub use session::*;
pub use sign::*;
pub use startup::*;

use crate::{tag, ResponseReader, WireError};

pub const TPM_RH_OWNER: u32 = 0x4000_0001;
pub const TPM_RH_NULL: u32 = 0x4000_0007;
pub const TPM_RH_ENDORSEMENT: u32 = 0x4000_000B;
pub const TPM_RH_PLATFORM: u32 = 0x4000_000C;
/// The password session handle.
pub const TPM_RS_PW: u32 = 0x4000_0009;

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

/// The one parameter, a TPM2B, of a successful response without handles: its contents.
fn single_tpm2b_parameter(resp: &[u8]) -> Result<Vec<u8>, WireError> {
    let (_, mut r) = response_parameters(resp, 0)?;
    Ok(r.tpm2b()?.to_vec())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::public::alg;
    use crate::{CommandBuilder, Header};

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

    /// A successful response with `handle` (if any) and `params`, with a password session
    /// answer after them if `sessions`.
    pub(super) fn response(handle: Option<u32>, params: &[u8], sessions: bool) -> Vec<u8> {
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
}
