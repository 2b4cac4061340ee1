//! Hashing in the TPM (TPM2_Hash, hash sequences) with the tickets a restricted key needs,
//! and ECDSA signing.

use crate::public::alg;
use crate::{cc, tag, CommandBuilder, ResponseReader, WireError};

use super::{response_parameters, TPM_RH_NULL};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::tests::response;
    use crate::commands::TPM_RH_OWNER;

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
}
