//! Sealing a vTPM instance into a package for one destination, and checking and opening a
//! package at the destination (ADR 0010). OpenSSL does the cryptography:
//!
//! * encryption: ephemeral-static ECDH (P-256) between a fresh key of the source and the
//!   destination's migration key named in the ticket; HKDF-SHA-256 with the migration id as
//!   salt and `"vhost-vtpm migration package v1 key"` and SHA-256 of the header as info;
//!   AES-256-GCM under that key with the whole header as associated data. Nobody but the
//!   destination host, which unwraps its migration key with its host TPM, can decrypt: not
//!   the controller, not the VMMs, not the network.
//! * signature: the source's coprocessor key over the whole package (purpose
//!   [`Purpose::MigrationPackage`]), its certificate chain (coprocessor, host AIK) inside.
//!
//! [`verify`] does every check that needs no network and no key: form, ticket signature and
//! expiry, the ticket's agreement with the header, the destination binding, the epoch
//! against replay, the chain up to the CA root, the signature. Revocation and the claim at
//! the controller come after it ([`crate::destination`]); [`open`] decrypts last.

use coprocessor::EngineState;
use identity::{CoprocessorKey, MigrationKey, Purpose};
use openssl::bn::BigNumContext;
use openssl::derive::Deriver;
use openssl::ec::{EcGroup, EcKey, EcPoint};
use openssl::md::Md;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey};
use openssl::pkey_ctx::PkeyCtx;
use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};
use openssl::x509::X509;
use zeroize::Zeroizing;

use crate::package::{self, Header, Package, NONCE_LEN, TAG_LEN};
use crate::refusal::Refusal;
use crate::snapshot;
use crate::ticket::{self, MigrationId, SignedTicket, POINT_LEN};

const KEY_INFO: &[u8] = b"vhost-vtpm migration package v1 key";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cryptography: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
    #[error("the ticket's destination key is not a P-256 point")]
    BadDestinationKey,
    #[error(transparent)]
    Package(#[from] package::PackageError),
    #[error("signing the package: {0}")]
    Sign(#[from] identity::IdentityError),
}

fn p256() -> Result<EcGroup, openssl::error::ErrorStack> {
    EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)
}

/// The AES-256 key of a package: HKDF-SHA-256 of the ECDH secret.
fn package_key(
    shared: &[u8],
    migration: &MigrationId,
    header_bytes: &[u8],
) -> Result<Zeroizing<[u8; 32]>, openssl::error::ErrorStack> {
    let mut ctx = PkeyCtx::new_id(Id::HKDF)?;
    ctx.derive_init()?;
    ctx.set_hkdf_md(Md::sha256())?;
    ctx.set_hkdf_key(shared)?;
    ctx.set_hkdf_salt(&migration.0)?;
    ctx.add_hkdf_info(KEY_INFO)?;
    ctx.add_hkdf_info(&openssl::sha::sha256(header_bytes))?;
    let mut key = Zeroizing::new([0u8; 32]);
    ctx.derive(Some(&mut key[..]))?;
    Ok(key)
}

/// Seals `state` for the destination the ticket names: the package bytes. `chain` is the
/// source's coprocessor certificate (of `key`) and its issuers.
pub fn seal(
    ticket: &SignedTicket,
    state: &EngineState,
    key: &CoprocessorKey,
    chain: &[X509],
) -> Result<Vec<u8>, SealError> {
    let t = &ticket.ticket;
    let group = p256()?;
    let mut ctx = BigNumContext::new()?;
    let peer = EcPoint::from_bytes(&group, &t.destination_key, &mut ctx)
        .and_then(|p| EcKey::from_public_key(&group, &p))
        .and_then(PKey::from_ec_key)
        .map_err(|_| SealError::BadDestinationKey)?;
    let ephemeral = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let mut deriver = Deriver::new(&ephemeral)?;
    deriver.set_peer(&peer)?;
    let mut shared = Zeroizing::new(vec![0u8; deriver.len()?]);
    let n = deriver.derive(&mut shared)?;
    shared.truncate(n);
    let eph_ec = ephemeral.ec_key()?;
    let eph_point: [u8; POINT_LEN] = identity::key::public_point(&eph_ec)?
        .try_into()
        .map_err(|_| SealError::BadDestinationKey)?;
    let mut nonce = [0u8; NONCE_LEN];
    openssl::rand::rand_bytes(&mut nonce)?;
    let header = Header {
        migration: t.migration,
        instance: t.instance,
        vm: t.vm.clone(),
        source: t.source.clone(),
        destination: t.destination.clone(),
        epoch: t.epoch,
        ticket: ticket.bytes.clone(),
        ephemeral: eph_point,
        nonce,
    };
    let header_bytes = header.encode()?;
    let aes = package_key(&shared, &t.migration, &header_bytes)?;
    let plaintext = snapshot::encode(state);
    let mut tag = [0u8; TAG_LEN];
    let mut ciphertext = encrypt_aead(
        Cipher::aes_256_gcm(),
        &aes[..],
        Some(&nonce),
        &header_bytes,
        &plaintext,
        &mut tag,
    )?;
    ciphertext.extend_from_slice(&tag);
    let chain_der = chain
        .iter()
        .map(|c| c.to_der())
        .collect::<Result<Vec<_>, _>>()?;
    let signed = package::signed_part(&header_bytes, &ciphertext, &chain_der)?;
    let signature = key.sign_for(Purpose::MigrationPackage, &signed)?;
    Ok(package::finish(&signed, signature.to_der().as_bytes())?)
}

/// What the destination trusts.
#[derive(Debug, Clone)]
pub struct Trust {
    /// The local CA's root: the source's chain must end there.
    pub ca_root: X509,
    /// The migration controller's certificate: its key signs tickets.
    pub controller: X509,
}

/// Who the destination is.
#[derive(Debug, Clone)]
pub struct Recipient {
    /// This host's id (the CN of its host AIK certificate).
    pub host_id: String,
    /// This host's migration key, as an uncompressed point.
    pub migration_key: Vec<u8>,
}

/// A package whose form, ticket, binding, epoch, chain and signature were checked.
#[derive(Debug, Clone)]
pub struct Verified {
    pub package: Package,
    pub ticket: SignedTicket,
    /// The source's coprocessor certificate and its host AIK certificate.
    pub coprocessor_cert: X509,
    pub host_aik_cert: X509,
    /// SHA-256 of the whole package, what the source reported and the claim names.
    pub digest: [u8; 32],
}

/// The subject common name of a certificate.
pub fn common_name(cert: &X509) -> Option<String> {
    cert.subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
}

/// Verifies `chain` (leaf first) up to `root` at the current time (the CA's own path
/// validation, `vtpm_ca::chain::verify_chain`); the reason if not.
pub fn verify_chain(root: &X509, chain: &[X509]) -> Result<(), String> {
    let Some((leaf, rest)) = chain.split_first() else {
        return Err("empty chain".into());
    };
    vtpm_ca::chain::verify_chain(std::slice::from_ref(root), leaf, rest)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Every check of a package that needs neither the network nor a private key. `known_epoch`
/// is the newest epoch of this vTPM this host has seen (it refuses older packages).
pub fn verify(
    bytes: &[u8],
    trust: &Trust,
    me: &Recipient,
    now: u64,
    known_epoch: Option<u64>,
) -> Result<Verified, Refusal> {
    let package = package::decode(bytes)?;
    let h = &package.header;
    let signed = ticket::decode(&h.ticket)?;
    let controller = trust
        .controller
        .public_key()
        .map_err(|e| Refusal::Crypto(e.to_string()))?;
    signed
        .verify(&controller)
        .map_err(|_| Refusal::TicketSignature)?;
    let t = &signed.ticket;
    for (field, same) in [
        ("migration id", t.migration == h.migration),
        ("instance id", t.instance == h.instance),
        ("VM id", t.vm == h.vm),
        ("source host id", t.source == h.source),
        ("destination host id", t.destination == h.destination),
        ("epoch", t.epoch == h.epoch),
    ] {
        if !same {
            return Err(Refusal::TicketMismatch(field));
        }
    }
    if now >= t.expires_at {
        return Err(Refusal::TicketExpired {
            expired_at: t.expires_at,
            now,
        });
    }
    if t.destination != me.host_id {
        return Err(Refusal::WrongDestination {
            package_for: t.destination.clone(),
            this_host: me.host_id.clone(),
        });
    }
    if t.destination_key[..] != me.migration_key[..] {
        return Err(Refusal::WrongDestinationKey);
    }
    if let Some(known) = known_epoch {
        if t.epoch < known {
            return Err(Refusal::Replay {
                epoch: t.epoch,
                known,
            });
        }
    }
    let chain = package
        .chain
        .iter()
        .map(|der| X509::from_der(der))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Refusal::UntrustedChain(format!("unparseable certificate: {e}")))?;
    let [coprocessor_cert, host_aik_cert] = <[X509; 2]>::try_from(chain).map_err(|c| {
        Refusal::UntrustedChain(format!(
            "{} certificates where the coprocessor's and the host AIK's are expected",
            c.len()
        ))
    })?;
    verify_chain(
        &trust.ca_root,
        &[coprocessor_cert.clone(), host_aik_cert.clone()],
    )
    .map_err(Refusal::UntrustedChain)?;
    let host = common_name(&host_aik_cert).unwrap_or_default();
    let coprocessor_cn = common_name(&coprocessor_cert).unwrap_or_default();
    if host != t.source || coprocessor_cn != format!("vhost-vtpm coprocessor {host}") {
        return Err(Refusal::SourceMismatch {
            ticket_source: t.source.clone(),
            chain_host: host,
        });
    }
    let public = coprocessor_cert
        .public_key()
        .map_err(|e| Refusal::Crypto(e.to_string()))?;
    let ok = identity::verify_for(
        &public,
        Purpose::MigrationPackage,
        &package.signed,
        &package.signature,
    )
    .map_err(|e| Refusal::Crypto(e.to_string()))?;
    if !ok {
        return Err(Refusal::BadSignature);
    }
    Ok(Verified {
        digest: openssl::sha::sha256(bytes),
        package,
        ticket: signed,
        coprocessor_cert,
        host_aik_cert,
    })
}

/// Decrypts a verified package with this host's migration key: the instance it carries.
pub fn open(verified: &Verified, key: &MigrationKey) -> Result<EngineState, Refusal> {
    let p = &verified.package;
    let shared = key
        .agree(&p.header.ephemeral)
        .map_err(|_| Refusal::Decrypt)?;
    let aes = package_key(&shared, &p.header.migration, &p.header_bytes)
        .map_err(|e| Refusal::Crypto(e.to_string()))?;
    let (ct, tag) = p.ciphertext.split_at(p.ciphertext.len() - TAG_LEN);
    let plaintext = decrypt_aead(
        Cipher::aes_256_gcm(),
        &aes[..],
        Some(&p.header.nonce),
        &p.header_bytes,
        ct,
        tag,
    )
    .map(Zeroizing::new)
    .map_err(|_| Refusal::Decrypt)?;
    Ok(snapshot::decode(&plaintext)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ticket::Ticket;
    use openssl::pkey::Private;
    use testbed::certs::{coprocessor_chain, self_signed};
    use vtpm_state::keys::{HostKey, InstanceId};

    /// A CA, a controller, two hosts with coprocessor and migration keys, in a temp dir.
    pub(crate) struct World {
        _dir: tempfile::TempDir,
        pub ca_root: X509,
        ca_key: PKey<Private>,
        pub controller: X509,
        pub controller_key: PKey<Private>,
        pub src_key: CoprocessorKey,
        pub src_chain: Vec<X509>,
        pub dst_migration: MigrationKey,
        pub other_migration: MigrationKey,
    }

    impl World {
        pub(crate) fn new() -> World {
            let dir = tempfile::tempdir().unwrap();
            let hk = dir.path().join("host.key");
            vtpm_state::keys::generate_host_key_file(&hk).unwrap();
            let hk = HostKey::File(hk);
            let (ca_key, ca_root) = self_signed("test root");
            let (controller_key, controller) = self_signed("controller");
            let src_key = CoprocessorKey::create(&dir.path().join("a"), &hk).unwrap();
            let src_chain = coprocessor_chain("host-a", &ca_key, &ca_root, &src_key.public_key());
            let dst_migration = MigrationKey::create(&dir.path().join("b"), &hk).unwrap();
            let other_migration = MigrationKey::create(&dir.path().join("c"), &hk).unwrap();
            World {
                _dir: dir,
                ca_root,
                ca_key,
                controller,
                controller_key,
                src_key,
                src_chain,
                dst_migration,
                other_migration,
            }
        }

        pub(crate) fn ticket(&self, epoch: u64, expires_at: u64) -> SignedTicket {
            let t = Ticket {
                migration: MigrationId([0x11; 16]),
                instance: InstanceId([0x22; 16]),
                vm: "vm-1".into(),
                source: "host-a".into(),
                destination: "host-b".into(),
                destination_key: self
                    .dst_migration
                    .public_point()
                    .unwrap()
                    .try_into()
                    .unwrap(),
                epoch,
                issued_at: 100,
                expires_at,
            };
            ticket::sign(&t, &self.controller_key).unwrap()
        }

        pub(crate) fn trust(&self) -> Trust {
            Trust {
                ca_root: self.ca_root.clone(),
                controller: self.controller.clone(),
            }
        }

        pub(crate) fn me(&self) -> Recipient {
            Recipient {
                host_id: "host-b".into(),
                migration_key: self.dst_migration.public_point().unwrap(),
            }
        }
    }

    fn state() -> EngineState {
        EngineState {
            permanent: (0..3000u32).map(|i| (i * 7) as u8).collect(),
            volatile: b"volatile state with the marker SECRET-MARKER-1234".to_vec(),
        }
    }

    #[test]
    fn sealed_for_the_destination_opens_there_and_nowhere_else() {
        let w = World::new();
        let ticket = w.ticket(4, u64::MAX);
        let bytes = seal(&ticket, &state(), &w.src_key, &w.src_chain).unwrap();
        assert!(!bytes
            .windows(b"SECRET-MARKER".len())
            .any(|x| x == b"SECRET-MARKER"));
        let v = verify(&bytes, &w.trust(), &w.me(), 1000, Some(4)).unwrap();
        assert_eq!(open(&v, &w.dst_migration).unwrap(), state());
        assert_eq!(v.digest, openssl::sha::sha256(&bytes));
        // Another host's migration key cannot open it.
        assert!(matches!(
            open(&v, &w.other_migration),
            Err(Refusal::Decrypt)
        ));
    }

    #[test]
    fn every_check_has_its_named_refusal() {
        let w = World::new();
        let bytes = seal(&w.ticket(4, 2000), &state(), &w.src_key, &w.src_chain).unwrap();
        let check = |me: &Recipient, now, known| verify(&bytes, &w.trust(), me, now, known);
        assert!(matches!(
            check(&w.me(), 2000, None),
            Err(Refusal::TicketExpired { .. })
        ));
        let other = Recipient {
            host_id: "host-c".into(),
            ..w.me()
        };
        assert!(matches!(
            check(&other, 1000, None),
            Err(Refusal::WrongDestination { .. })
        ));
        let other_key = Recipient {
            migration_key: w.other_migration.public_point().unwrap(),
            ..w.me()
        };
        assert!(matches!(
            check(&other_key, 1000, None),
            Err(Refusal::WrongDestinationKey)
        ));
        assert!(matches!(
            check(&w.me(), 1000, Some(5)),
            Err(Refusal::Replay { epoch: 4, known: 5 })
        ));
        // Another CA, another controller.
        let mut trust = w.trust();
        trust.controller = w.ca_root.clone();
        assert!(matches!(
            verify(&bytes, &trust, &w.me(), 1000, None),
            Err(Refusal::TicketSignature)
        ));
        let mut trust = w.trust();
        trust.ca_root = self_signed("test root").1;
        assert!(matches!(
            verify(&bytes, &trust, &w.me(), 1000, None),
            Err(Refusal::UntrustedChain(_))
        ));
        // A chain of another host than the ticket's source.
        let chain = coprocessor_chain("host-x", &w.ca_key, &w.ca_root, &w.src_key.public_key());
        let wrong = seal(&w.ticket(4, 2000), &state(), &w.src_key, &chain).unwrap();
        assert!(matches!(
            verify(&wrong, &w.trust(), &w.me(), 1000, None),
            Err(Refusal::SourceMismatch { .. })
        ));
        let plain = snapshot::encode(&state());
        assert!(matches!(
            verify(&plain, &w.trust(), &w.me(), 1000, None),
            Err(Refusal::Format(package::PackageError::PlainSnapshot))
        ));
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let w = World::new();
        let small = EngineState {
            permanent: vec![1; 64],
            volatile: vec![2; 64],
        };
        let bytes = seal(&w.ticket(4, u64::MAX), &small, &w.src_key, &w.src_chain).unwrap();
        let trust = w.trust();
        let me = w.me();
        let accept =
            |b: &[u8]| verify(b, &trust, &me, 1000, None).and_then(|v| open(&v, &w.dst_migration));
        assert_eq!(accept(&bytes).unwrap(), small);
        for cut in 0..bytes.len() {
            assert!(accept(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01 << (i % 8);
            assert!(accept(&b).is_err(), "flipped byte {i} accepted");
        }
    }
}
