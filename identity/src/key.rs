//! The host's coprocessor key: a software ECC P-256 key, one per host, that signs the vEK
//! certificates of every instance on the host (ADR 0008).
//!
//! It rests in the host identity directory as [`KEY_FILE`], a key record exactly like an
//! instance's `instance.key` ([`vtpm_state::keys`]): the 32-byte private scalar is wrapped by the
//! [`HostKey`] (sealed by the host TPM, or AES-256-GCM under the host key file) as if it
//! were an instance key. The record's id is the fixed [`RECORD_ID`] (`"vtpm-coprocessor"`)
//! rather than a random instance id: the id is authenticated with the key (associated data
//! for a key file, inside the sealed secret for the TPM), so opening checks that the record
//! really is a coprocessor key and not some instance's key record copied into place (both
//! hold 32 secret bytes; instance ids are random, so they cannot collide with it).
//!
//! The private key never leaves this type: there is no public `sign(bytes)`. It signs only
//! the certificates [`crate::ek_cert`] builds, through the crate-private `KeySigner`
//! (a [`signature::Signer`] of ECDSA P-256 / SHA-256 signatures). The private scalar's copies
//! made while creating or opening the key are wiped when dropped (`zeroize`, and OpenSSL's
//! `BN_clear` for its big numbers); the key itself lives in OpenSSL, which clears it when
//! freed.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey, EcPoint};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private, Public};
use p256::ecdsa::Signature;
use zeroize::Zeroizing;

use crate::IdentityError;
use vtpm_state::keys::{HostKey, InstanceId, SecretKey, KEY_LEN};

/// File name of the coprocessor key record in the host identity directory.
pub const KEY_FILE: &str = "coprocessor.key";

/// Record id of a coprocessor key record (16 bytes, in place of an instance id).
pub const RECORD_ID: InstanceId = InstanceId(*b"vtpm-coprocessor");

/// The host's coprocessor identity key.
pub struct CoprocessorKey {
    pkey: PKey<Private>,
    public: PKey<Public>,
    path: PathBuf,
}

impl fmt::Debug for CoprocessorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoprocessorKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

fn p256() -> Result<EcGroup, IdentityError> {
    Ok(EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?)
}

impl CoprocessorKey {
    /// Generates a new coprocessor key and stores it in `dir` (created with mode 0700 if
    /// missing) as [`KEY_FILE`], wrapped by `host_key`. Refuses to replace an existing key:
    /// every vEK certificate on the host chains to it.
    pub fn create(dir: &Path, host_key: &HostKey) -> Result<Self, IdentityError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let path = dir.join(KEY_FILE);
        if path.exists() {
            return Err(IdentityError::KeyExists { path });
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let group = p256()?;
        let ec = EcKey::generate(&group)?;
        let scalar = Zeroizing::new(ec.private_key().to_vec_padded(KEY_LEN as i32)?);
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(&scalar);
        let secret = SecretKey::from_bytes(*bytes);
        let record = host_key.wrap(&RECORD_ID, &secret, &path)?;

        // Write a private temporary file, then link it into place: the link fails if the
        // key appeared meanwhile, and the record is never seen half-written.
        let mut nonce = [0u8; 8];
        openssl::rand::rand_bytes(&mut nonce)?;
        let tmp = dir.join(format!(".{KEY_FILE}.{}.tmp", hex::encode(nonce)));
        let written = (|| -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&record)?;
            f.sync_all()?;
            fs::hard_link(&tmp, &path)
        })();
        let _ = fs::remove_file(&tmp);
        match written {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(IdentityError::KeyExists { path });
            }
            Err(e) => return Err(io_err(&path)(e)),
        }
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
        Self::from_ec(ec, path)
    }

    /// Opens the coprocessor key stored in `dir` with `host_key`.
    pub fn open(dir: &Path, host_key: &HostKey) -> Result<Self, IdentityError> {
        let path = dir.join(KEY_FILE);
        let record = fs::read(&path).map_err(io_err(&path))?;
        let (id, secret) = host_key.unwrap(&path, &record)?;
        if id != RECORD_ID {
            return Err(IdentityError::NotACoprocessorKey { path, id });
        }
        let group = p256()?;
        let scalar = SecretBigNum(BigNum::from_slice(secret.bytes())?);
        let mut ctx = BigNumContext::new()?;
        let mut point = EcPoint::new(&group)?;
        point.mul_generator2(&group, &scalar.0, &mut ctx)?;
        let ec = EcKey::from_private_components(&group, &scalar.0, &point)?;
        ec.check_key()
            .map_err(|_| IdentityError::NotACoprocessorKey {
                path: path.clone(),
                id,
            })?;
        Self::from_ec(ec, path)
    }

    fn from_ec(ec: EcKey<Private>, path: PathBuf) -> Result<Self, IdentityError> {
        let pkey = PKey::from_ec_key(ec)?;
        let public = PKey::public_key_from_der(&pkey.public_key_to_der()?)?;
        Ok(CoprocessorKey { pkey, public, path })
    }

    /// Where the key record is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The public key, for the coprocessor certificate the host TPM signs.
    pub fn public_key(&self) -> PKey<Public> {
        self.public.clone()
    }

    /// The signer of the certificates this crate builds, and of nothing else.
    pub(crate) fn signer(&self) -> KeySigner<'_> {
        KeySigner(self)
    }
}

/// A private big number that is cleared (`BN_clear`) when dropped: OpenSSL frees a plain
/// `BigNum` without wiping it.
struct SecretBigNum(BigNum);

impl Drop for SecretBigNum {
    fn drop(&mut self) {
        self.0.clear();
    }
}

/// The coprocessor key as a [`signature::Signer`]: ECDSA P-256 over the SHA-256 digest of
/// the message, made by OpenSSL.
pub(crate) struct KeySigner<'a>(&'a CoprocessorKey);

impl signature::Signer<Signature> for KeySigner<'_> {
    fn try_sign(&self, msg: &[u8]) -> Result<Signature, signature::Error> {
        let sign = || -> Result<(Vec<u8>, Vec<u8>), openssl::error::ErrorStack> {
            let ec = self.0.pkey.ec_key()?;
            let sig = EcdsaSig::sign(&openssl::sha::sha256(msg), &ec)?;
            Ok((sig.r().to_vec_padded(32)?, sig.s().to_vec_padded(32)?))
        };
        let (r, s) = sign().map_err(signature::Error::from_source)?;
        Signature::from_slice(&[r, s].concat())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signature::Signer;
    use vtpm_state::keys::generate_host_key_file;

    #[test]
    fn the_signer_makes_ecdsa_p256_sha256_signatures_of_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let host_key = generate_host_key_file(&dir.path().join("host.key")).unwrap();
        let key = CoprocessorKey::create(&dir.path().join("id"), &host_key).unwrap();
        let msg = b"a TBSCertificate";
        let sig: Signature = key.signer().try_sign(msg).unwrap();
        let ec = key.public_key().ec_key().unwrap();
        let der = EcdsaSig::from_der(sig.to_der().as_bytes()).unwrap();
        assert!(der.verify(&openssl::sha::sha256(msg), &ec).unwrap());
        assert!(!der.verify(&openssl::sha::sha256(b"other"), &ec).unwrap());
        // ECDSA is randomised: two signatures of one message differ.
        assert_ne!(sig, key.signer().try_sign(msg).unwrap());
    }
}
