//! The host's long-term keys, each a software ECC P-256 key wrapped by the host key: the
//! coprocessor key, one per host, that signs the vEK certificates of every instance on the
//! host (ADR 0008), and the migration key ([`MigrationKey`], ADR 0010) that migration packages
//! for this host are sealed to.
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
//! The private key never leaves this type: there is no public `sign(bytes)`. It signs the
//! certificates [`crate::ek_cert`] builds, through the crate-private `KeySigner`
//! (a [`signature::Signer`] of ECDSA P-256 / SHA-256 signatures), and, with a context string
//! per [`Purpose`] so that no such signature doubles as another, migration packages and
//! requests to the migration controller ([`CoprocessorKey::sign_for`]). The migration key
//! (record id `"vtpm-migrate-key"`, file [`MIGRATION_KEY_FILE`]) only agrees on keys (ECDH). The private scalar's copies
//! made while creating or opening the key are wiped when dropped (`zeroize`, and OpenSSL's
//! `BN_clear` for its big numbers); the key itself lives in OpenSSL, which clears it when
//! freed.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey, EcKeyRef, EcPoint, PointConversionForm};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;
use openssl::pkey::{HasPublic, PKey, PKeyRef, Private, Public};
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
        let path = dir.join(KEY_FILE);
        let ec = create_record(dir, &path, &RECORD_ID, host_key)?;
        Self::from_ec(ec, path)
    }

    /// Opens the coprocessor key stored in `dir` with `host_key`.
    pub fn open(dir: &Path, host_key: &HostKey) -> Result<Self, IdentityError> {
        let path = dir.join(KEY_FILE);
        let ec = open_record(&path, &RECORD_ID, host_key, |path, id| {
            IdentityError::NotACoprocessorKey { path, id }
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

    /// Signs `msg` for `purpose` (ECDSA P-256 over SHA-256 of the purpose's context string
    /// followed by `msg`): a migration package, or a request to the migration controller.
    /// The context strings start with `v` and a TBSCertificate with `0x30`, so no such
    /// signature is also a certificate's, nor one purpose's another's.
    pub fn sign_for(&self, purpose: Purpose, msg: &[u8]) -> Result<Signature, IdentityError> {
        let mut data = Vec::with_capacity(purpose.context().len() + msg.len());
        data.extend_from_slice(purpose.context());
        data.extend_from_slice(msg);
        signature::Signer::try_sign(&self.signer(), &data)
            .map_err(|e| IdentityError::Signer(Box::new(e)))
    }
}

/// What a coprocessor signature outside the certificates is for (see
/// [`CoprocessorKey::sign_for`] and [`verify_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A sealed migration package (the source's signature over all of it).
    MigrationPackage,
    /// A request of a daemon to the migration controller.
    ControllerRequest,
}

impl Purpose {
    /// The context string prefixed to the signed message.
    pub fn context(self) -> &'static [u8] {
        match self {
            Purpose::MigrationPackage => b"vhost-vtpm migration package v1\0",
            Purpose::ControllerRequest => b"vhost-vtpm controller request v1\0",
        }
    }
}

/// Whether `signature` (DER ECDSA) is `public`'s signature of `msg` for `purpose`, as
/// [`CoprocessorKey::sign_for`] makes them. A malformed signature does not verify.
pub fn verify_for<T: HasPublic>(
    public: &PKeyRef<T>,
    purpose: Purpose,
    msg: &[u8],
    signature: &[u8],
) -> Result<bool, IdentityError> {
    let Ok(sig) = EcdsaSig::from_der(signature) else {
        return Ok(false);
    };
    let mut hasher = openssl::sha::Sha256::new();
    hasher.update(purpose.context());
    hasher.update(msg);
    let ec = public.ec_key()?;
    Ok(sig.verify(&hasher.finish(), &ec).unwrap_or(false))
}

/// Generates a P-256 key, wraps its scalar by `host_key` under `id` and stores the record at
/// `path` in `dir` (created with mode 0700 if missing). Refuses to replace an existing record.
fn create_record(
    dir: &Path,
    path: &Path,
    id: &InstanceId,
    host_key: &HostKey,
) -> Result<EcKey<Private>, IdentityError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if path.exists() {
        return Err(IdentityError::KeyExists {
            path: path.to_owned(),
        });
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
    let record = host_key.wrap(id, &secret, path)?;

    // Write a private temporary file, then link it into place: the link fails if the
    // key appeared meanwhile, and the record is never seen half-written.
    let mut nonce = [0u8; 8];
    openssl::rand::rand_bytes(&mut nonce)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", hex::encode(nonce)));
    let written = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&record)?;
        f.sync_all()?;
        fs::hard_link(&tmp, path)
    })();
    let _ = fs::remove_file(&tmp);
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(IdentityError::KeyExists {
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(io_err(path)(e)),
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(ec)
}

/// Opens the P-256 key record at `path`, which must carry `expected`, with `host_key`;
/// `wrong` is the error for a record of something else.
fn open_record(
    path: &Path,
    expected: &InstanceId,
    host_key: &HostKey,
    wrong: fn(PathBuf, InstanceId) -> IdentityError,
) -> Result<EcKey<Private>, IdentityError> {
    let record = fs::read(path).map_err(io_err(path))?;
    let (id, secret) = host_key.unwrap(path, &record)?;
    if id != *expected {
        return Err(wrong(path.to_owned(), id));
    }
    let group = p256()?;
    let scalar = SecretBigNum(BigNum::from_slice(secret.bytes())?);
    let mut ctx = BigNumContext::new()?;
    let mut point = EcPoint::new(&group)?;
    point.mul_generator2(&group, &scalar.0, &mut ctx)?;
    let ec = EcKey::from_private_components(&group, &scalar.0, &point)?;
    ec.check_key().map_err(|_| wrong(path.to_owned(), id))?;
    Ok(ec)
}

/// File name of the migration key record in the host identity directory.
pub const MIGRATION_KEY_FILE: &str = "migration.key";
/// File name of the migration key's public part (PEM SubjectPublicKeyInfo), beside it.
pub const MIGRATION_PUBLIC_FILE: &str = "migration.pub";

/// Record id of a migration key record.
pub const MIGRATION_RECORD_ID: InstanceId = InstanceId(*b"vtpm-migrate-key");

/// The host's migration key: a long-term ECC P-256 key-agreement key, one per host, wrapped
/// by the host key like the coprocessor key. A source seals a migration package to its
/// public part (ephemeral-static ECDH) after the migration controller saw it attested by
/// this host's TPM; only this host, which can unwrap the private part, opens the package.
///
/// The private key does nothing but the key agreement ([`MigrationKey::agree`]).
pub struct MigrationKey {
    pkey: PKey<Private>,
    path: PathBuf,
}

impl fmt::Debug for MigrationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MigrationKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl MigrationKey {
    /// Generates the host's migration key in `dir` ([`MIGRATION_KEY_FILE`], wrapped by
    /// `host_key`) and writes its public part ([`MIGRATION_PUBLIC_FILE`]). Refuses to replace
    /// an existing key.
    pub fn create(dir: &Path, host_key: &HostKey) -> Result<Self, IdentityError> {
        let path = dir.join(MIGRATION_KEY_FILE);
        let ec = create_record(dir, &path, &MIGRATION_RECORD_ID, host_key)?;
        let key = MigrationKey {
            pkey: PKey::from_ec_key(ec)?,
            path,
        };
        let public = dir.join(MIGRATION_PUBLIC_FILE);
        let pem = key.pkey.public_key_to_pem()?;
        durable_fs::replace(&public, &pem, 0o644, true).map_err(io_err(&public))?;
        Ok(key)
    }

    /// Opens the migration key in `dir` with `host_key`.
    pub fn open(dir: &Path, host_key: &HostKey) -> Result<Self, IdentityError> {
        let path = dir.join(MIGRATION_KEY_FILE);
        let ec = open_record(&path, &MIGRATION_RECORD_ID, host_key, |path, id| {
            IdentityError::NotAMigrationKey { path, id }
        })?;
        Ok(MigrationKey {
            pkey: PKey::from_ec_key(ec)?,
            path,
        })
    }

    /// Where the key record is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The public key as an uncompressed SEC1 point (65 bytes: `04 | X | Y`), the form a
    /// migration ticket names it in.
    pub fn public_point(&self) -> Result<Vec<u8>, IdentityError> {
        let ec = self.pkey.ec_key()?;
        public_point(&ec)
    }

    /// ECDH with `peer` (an uncompressed SEC1 P-256 point): the 32-byte shared secret
    /// (the x coordinate), wiped when dropped. A point that is not on the curve is refused.
    pub fn agree(&self, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, IdentityError> {
        let group = p256()?;
        let mut ctx = BigNumContext::new()?;
        let point = EcPoint::from_bytes(&group, peer, &mut ctx)
            .map_err(|_| IdentityError::Refused("not a P-256 public key".into()))?;
        let peer = PKey::from_ec_key(EcKey::from_public_key(&group, &point)?)?;
        let mut deriver = openssl::derive::Deriver::new(&self.pkey)?;
        deriver.set_peer(&peer)?;
        let mut secret = Zeroizing::new(vec![0u8; deriver.len()?]);
        let n = deriver.derive(&mut secret)?;
        secret.truncate(n);
        Ok(secret)
    }
}

/// The uncompressed SEC1 encoding of an EC key's public point.
pub fn public_point<T: HasPublic>(ec: &EcKeyRef<T>) -> Result<Vec<u8>, IdentityError> {
    let mut ctx = BigNumContext::new()?;
    Ok(ec
        .public_key()
        .to_bytes(ec.group(), PointConversionForm::UNCOMPRESSED, &mut ctx)?)
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

    #[test]
    fn purpose_signatures_verify_only_for_their_purpose_and_message() {
        let dir = tempfile::tempdir().unwrap();
        let host_key = dir.path().join("host.key");
        vtpm_state::keys::generate_host_key_file(&host_key).unwrap();
        let key = CoprocessorKey::create(&dir.path().join("id"), &HostKey::File(host_key)).unwrap();
        let sig = key.sign_for(Purpose::MigrationPackage, b"package").unwrap();
        let der = sig.to_der();
        let public = key.public_key();
        assert!(verify_for(
            &public,
            Purpose::MigrationPackage,
            b"package",
            der.as_bytes()
        )
        .unwrap());
        assert!(!verify_for(
            &public,
            Purpose::ControllerRequest,
            b"package",
            der.as_bytes()
        )
        .unwrap());
        assert!(!verify_for(
            &public,
            Purpose::MigrationPackage,
            b"packagf",
            der.as_bytes()
        )
        .unwrap());
        assert!(!verify_for(&public, Purpose::MigrationPackage, b"package", b"\x30\x00").unwrap());
        // Not a plain signature of the message either (what a certificate signature is).
        let plain = EcdsaSig::from_der(der.as_bytes()).unwrap();
        let ec = public.ec_key().unwrap();
        assert!(!plain
            .verify(&openssl::sha::sha256(b"package"), &ec)
            .unwrap());
    }

    #[test]
    fn migration_keys_agree_with_an_ephemeral_key_and_are_their_own_records() {
        let dir = tempfile::tempdir().unwrap();
        let host_key = dir.path().join("host.key");
        vtpm_state::keys::generate_host_key_file(&host_key).unwrap();
        let host_key = HostKey::File(host_key);
        let id = dir.path().join("id");
        let key = MigrationKey::create(&id, &host_key).unwrap();
        assert!(matches!(
            MigrationKey::create(&id, &host_key),
            Err(IdentityError::KeyExists { .. })
        ));
        let public = key.public_point().unwrap();
        assert_eq!((public.len(), public[0]), (65, 4));
        let pem = fs::read(id.join(MIGRATION_PUBLIC_FILE)).unwrap();
        let from_file = PKey::public_key_from_pem(&pem).unwrap();
        assert_eq!(public_point(&from_file.ec_key().unwrap()).unwrap(), public);

        // The other side: an ephemeral key and the public point.
        let group = p256().unwrap();
        let eph = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut ctx = BigNumContext::new().unwrap();
        let point = EcPoint::from_bytes(&group, &public, &mut ctx).unwrap();
        let peer = PKey::from_ec_key(EcKey::from_public_key(&group, &point).unwrap()).unwrap();
        let mut d = openssl::derive::Deriver::new(&eph).unwrap();
        d.set_peer(&peer).unwrap();
        let theirs = d.derive_to_vec().unwrap();
        let reopened = MigrationKey::open(&id, &host_key).unwrap();
        let eph_point = public_point(&eph.ec_key().unwrap()).unwrap();
        assert_eq!(*reopened.agree(&eph_point).unwrap(), theirs);
        assert_eq!(theirs.len(), 32);
        let mut off_curve = eph_point.clone();
        off_curve[64] ^= 1;
        assert!(reopened.agree(&off_curve).is_err());

        // A coprocessor key record is not a migration key, and the other way round.
        CoprocessorKey::create(&id, &host_key).unwrap();
        fs::copy(id.join(KEY_FILE), id.join("x.key")).unwrap();
        fs::rename(id.join("x.key"), id.join(MIGRATION_KEY_FILE)).unwrap();
        assert!(matches!(
            MigrationKey::open(&id, &host_key),
            Err(IdentityError::NotAMigrationKey { .. })
        ));
    }
}
