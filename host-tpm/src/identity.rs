//! The host TPM's identity, as the certificate chain (ADR 0008) uses it:
//!
//! * the manufacturer's EK certificate in NV ([`HostTpm::read_nv_certificate`]) and the
//!   public area of the standard RSA-2048 EK it certifies ([`HostTpm::ek_public_rsa`]);
//! * the host attestation key (AIK): a restricted ECC P-256 signing key under the storage
//!   root key ([`HostTpm::create_aik`]), enrolled with the local CA by credential activation
//!   against the EK ([`HostTpm::activate_credential`]);
//! * signing with the AIK ([`HostTpm::sign_restricted`], or as a [`signature::Signer`]:
//!   [`HostTpm::aik_signer`]): a restricted key signs only digests the TPM computed itself
//!   (with a hash-check ticket), which is how the coprocessor's TBSCertificate gets signed.
//!   tss-esapi 7.7 does not wrap the hash-sequence commands long data takes, so signing is
//!   done with raw commands.
//!
//! Public areas are tss-esapi's [`Public`] (unmarshalled from an [`ObjectBlob`]), checked
//! by [`aik_violations`]; nothing here parses a TPMT_PUBLIC by hand.
//!
//! Everything transient (SRK, EK, AIK, sessions, hash sequences) is flushed before a call
//! returns, on success and on failure.

use std::cell::RefCell;

use der::{Header, Reader, SliceReader, Tag};
use log::debug;
use p256::ecdsa::Signature;
use tpm_proto::commands as cmd;
use tpm_proto::WireError;
use tss_esapi::abstraction::{ek, AsymmetricAlgorithmSelection};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::tss::TPM2_ALG_SHA256;
use tss_esapi::constants::{
    CapabilityType, PropertyTag, SessionType, Tss2ResponseCode, Tss2ResponseCodeKind,
};
use tss_esapi::handles::{
    AuthHandle, KeyHandle, NvIndexHandle, NvIndexTpmHandle, ObjectHandle, SessionHandle, TpmHandle,
};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::{Hierarchy, NvAuth};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    CapabilityData, Digest, EccPoint, EccScheme, EncryptedSecret, HashScheme, IdObject,
    KeyDerivationFunctionScheme, MaxNvBuffer, Nonce, Private, Public, PublicBuilder,
    PublicEccParametersBuilder, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::Context;
use zeroize::Zeroizing;

use crate::raw::RawTcti;
use crate::{tpm, HostTpm, HostTpmError, ObjectBlob, Result};

pub use tpm_proto::commands::{ECC_EK_CERT_INDEX, RSA_EK_CERT_INDEX};

fn is_kind(e: &tss_esapi::Error, kind: Tss2ResponseCodeKind) -> bool {
    matches!(e, tss_esapi::Error::Tss2Error(rc) if rc.kind() == Some(kind))
}

fn wrong_value(operation: &'static str) -> HostTpmError {
    HostTpmError::Tpm {
        operation,
        source: tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm),
    }
}

/// The response codes ActivateCredential gives for a credential that does not open with
/// this EK and this key: an integrity failure (made for another name, or tampered with), or
/// a seed that does not decrypt or has the wrong size (encrypted to another EK).
fn is_activation_failure(e: &tss_esapi::Error) -> bool {
    [
        Tss2ResponseCodeKind::Integrity,
        Tss2ResponseCodeKind::Value,
        Tss2ResponseCodeKind::Size,
        Tss2ResponseCodeKind::Scheme,
        Tss2ResponseCodeKind::EccPoint,
        Tss2ResponseCodeKind::KeySize,
    ]
    .into_iter()
    .any(|k| is_kind(e, k))
}

/// Maps a `tpm-proto` parse error of a raw command: TPM response codes become
/// [`HostTpmError::Tpm`] like ESAPI's, anything else is a malformed response.
pub(crate) fn parsed<T>(
    operation: &'static str,
    r: std::result::Result<T, WireError>,
) -> Result<T> {
    r.map_err(|e| match e {
        WireError::Tpm(rc) => HostTpmError::Tpm {
            operation,
            source: tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(rc)),
        },
        source => HostTpmError::Malformed { operation, source },
    })
}

/// What keeps `public` from being an attestation key this crate signs with (empty: it is
/// one): a restricted signing-only key (restricted, sign, fixedTPM, fixedParent,
/// sensitiveDataOrigin; not decrypt) with a SHA-256 name, on NIST P-256 with the ECDSA /
/// SHA-256 scheme.
pub fn aik_violations(public: &Public) -> Vec<String> {
    let mut violations = Vec::new();
    let attributes = public.object_attributes();
    for (set, name) in [
        (attributes.restricted(), "restricted"),
        (attributes.sign_encrypt(), "sign"),
        (attributes.fixed_tpm(), "fixedTPM"),
        (attributes.fixed_parent(), "fixedParent"),
        (attributes.sensitive_data_origin(), "sensitiveDataOrigin"),
    ] {
        if !set {
            violations.push(format!("attribute {name} is not set"));
        }
    }
    if attributes.decrypt() {
        violations.push("attribute decrypt is set (an attestation key only signs)".into());
    }
    if public.name_hashing_algorithm() != HashingAlgorithm::Sha256 {
        violations.push(format!(
            "name algorithm is {:?}, not SHA-256",
            public.name_hashing_algorithm()
        ));
    }
    match public {
        Public::Ecc { parameters, .. } => {
            if parameters.ecc_curve() != EccCurve::NistP256 {
                violations.push(format!(
                    "ECC curve {:?} is not NIST P-256",
                    parameters.ecc_curve()
                ));
            }
            match parameters.ecc_scheme() {
                EccScheme::EcDsa(hash) if hash.hashing_algorithm() == HashingAlgorithm::Sha256 => {}
                scheme => violations.push(format!(
                    "ECC signing scheme {scheme:?} is not ECDSA with SHA-256"
                )),
            }
        }
        _ => violations.push("only ECDSA attestation keys sign here".into()),
    }
    violations
}

/// The blob's public area, if it is an attestation key this crate signs with.
pub(crate) fn attestation_key(aik: &ObjectBlob) -> Result<Public> {
    let unparseable = |why: String| {
        HostTpmError::NotAnAttestationKey(vec![format!("unparseable public area: {why}")])
    };
    let public = Public::unmarshall(&aik.public).map_err(|e| unparseable(e.to_string()))?;
    // Exactly one structure: the unmarshaller ignores trailing bytes.
    if public.marshall().ok().as_deref() != Some(aik.public.as_slice()) {
        return Err(unparseable("not exactly one TPMT_PUBLIC".into()));
    }
    let violations = aik_violations(&public);
    if !violations.is_empty() {
        return Err(HostTpmError::NotAnAttestationKey(violations));
    }
    Ok(public)
}

/// An ECDSA P-256 signature from the TPM's big-endian `r` and `s` (fixed-width, but any
/// width is taken: leading zeros are ignored). Zero or out-of-range values are refused.
fn ecdsa_signature(r: &[u8], s: &[u8]) -> Result<Signature> {
    let fixed = |v: &[u8]| -> Option<[u8; 32]> {
        let start = v.iter().position(|b| *b != 0).unwrap_or(v.len());
        let significant = &v[start..];
        let mut out = [0u8; 32];
        let offset = out.len().checked_sub(significant.len())?;
        out[offset..].copy_from_slice(significant);
        Some(out)
    };
    fixed(r)
        .zip(fixed(s))
        .and_then(|(r, s)| Signature::from_scalars(r, s).ok())
        .ok_or_else(|| wrong_value("Sign (AIK)"))
}

pub(crate) fn raw_run(
    raw: &mut RawTcti,
    operation: &'static str,
    command: &[u8],
) -> Result<Vec<u8>> {
    raw.execute(command).map_err(tpm(operation))
}

/// Loads `aik` under the SRK made from `srk_template` over a raw connection: the AIK's
/// handle; `loaded` collects the handles to flush (the SRK's and the AIK's).
pub(crate) fn raw_load_aik(
    raw: &mut RawTcti,
    loaded: &mut Vec<u32>,
    srk_template: &[u8],
    aik: &ObjectBlob,
) -> Result<u32> {
    const OP_SRK: &str = "CreatePrimary (SRK)";
    let resp = raw_run(
        raw,
        OP_SRK,
        &cmd::create_primary(cmd::TPM_RH_OWNER, srk_template),
    )?;
    let (srk, _) = parsed(OP_SRK, cmd::parse_create_primary(&resp))?;
    loaded.push(srk);
    const OP_LOAD: &str = "Load (AIK)";
    let resp = raw_run(raw, OP_LOAD, &cmd::load(srk, &aik.private, &aik.public))?;
    let (key, _name) = parsed(OP_LOAD, cmd::parse_load(&resp))?;
    loaded.push(key);
    Ok(key)
}

/// Restricted signing over a raw connection; `loaded` collects the handles to flush.
fn raw_sign(
    raw: &mut RawTcti,
    loaded: &mut Vec<u32>,
    srk_template: &[u8],
    aik: &ObjectBlob,
    data: &[u8],
) -> Result<(Vec<u8>, Vec<u8>)> {
    let key = raw_load_aik(raw, loaded, srk_template, aik)?;
    let (digest, ticket) = if data.len() <= cmd::MAX_DIGEST_BUFFER {
        // One command. It is also the only way to a ticket for data shorter than
        // TPM_GENERATED_VALUE: a hash sequence tickets no first block of under 4 bytes.
        const OP_HASH: &str = "Hash";
        let resp = raw_run(
            raw,
            OP_HASH,
            &cmd::hash(data, TPM2_ALG_SHA256, cmd::TPM_RH_OWNER),
        )?;
        parsed(OP_HASH, cmd::parse_hash(&resp))?
    } else {
        raw_hash_sequence(raw, loaded, data)?
    };
    const OP_SIGN: &str = "Sign (AIK)";
    let resp = raw_run(
        raw,
        OP_SIGN,
        &cmd::sign_ecdsa_sha256_with_ticket(key, &digest, &ticket),
    )?;
    parsed(OP_SIGN, cmd::parse_sign_ecdsa(&resp))
}

/// The SHA-256 digest of `data` (longer than [`cmd::MAX_DIGEST_BUFFER`]) and its hash-check
/// ticket in the owner hierarchy, from the hash-sequence commands.
fn raw_hash_sequence(
    raw: &mut RawTcti,
    loaded: &mut Vec<u32>,
    data: &[u8],
) -> Result<(Vec<u8>, cmd::HashCheckTicket)> {
    const OP_START: &str = "HashSequenceStart";
    let resp = raw_run(raw, OP_START, &cmd::hash_sequence_start(TPM2_ALG_SHA256))?;
    let sequence = parsed(OP_START, cmd::parse_hash_sequence_start(&resp))?;
    loaded.push(sequence);
    let mut chunks: Vec<&[u8]> = data.chunks(cmd::MAX_DIGEST_BUFFER).collect();
    let last = chunks.pop().unwrap_or(&[]);
    for chunk in chunks {
        const OP_UPDATE: &str = "SequenceUpdate";
        let resp = raw_run(raw, OP_UPDATE, &cmd::sequence_update(sequence, chunk))?;
        parsed(OP_UPDATE, tpm_proto::ResponseReader::success(&resp))?;
    }
    const OP_COMPLETE: &str = "SequenceComplete";
    let resp = raw_run(
        raw,
        OP_COMPLETE,
        &cmd::sequence_complete(sequence, last, cmd::TPM_RH_OWNER),
    )?;
    let digest_and_ticket = parsed(OP_COMPLETE, cmd::parse_sequence_complete(&resp))?;
    // A completed sequence object is gone.
    loaded.retain(|&h| h != sequence);
    Ok(digest_and_ticket)
}

/// The length of the DER `SEQUENCE` at the start of `data` (header included); `None` if
/// `data` does not start with a whole one.
fn der_sequence_len(data: &[u8]) -> Option<usize> {
    let mut reader = SliceReader::new(data).ok()?;
    if Header::peek(&reader).ok()?.tag() != Tag::Sequence {
        return None;
    }
    reader.tlv_bytes().ok().map(<[u8]>::len)
}

impl HostTpm {
    /// The certificate (DER) stored in NV at `index` ([`RSA_EK_CERT_INDEX`],
    /// [`ECC_EK_CERT_INDEX`], ...), or None if the index is not defined or was never
    /// written. It is read in chunks of the TPM's NV buffer size, authorised by the index's
    /// own empty password when it allows AUTHREAD (as EK certificate indices do), else by
    /// the owner hierarchy (OWNERREAD). Bytes past the end of the DER certificate (padding
    /// in an index larger than its contents) are dropped.
    pub fn read_nv_certificate(&mut self, index: u32) -> Result<Option<Vec<u8>>> {
        let nv = NvIndexTpmHandle::new(index).map_err(|_| HostTpmError::BadNvIndex(index))?;
        let ctx = self.ctx()?;
        // Ask first whether the index exists, so that an absent certificate (the usual case
        // on a TPM without one) does not make ESAPI log errors.
        let (handles, _more) = ctx
            .execute_without_session(|c| c.get_capability(CapabilityType::Handles, index, 1))
            .map_err(tpm("GetCapability (NV indices)"))?;
        let defined = matches!(
            &handles,
            CapabilityData::Handles(list) if list.iter().any(|&h| u32::from(h) == index)
        );
        if !defined {
            return Ok(None);
        }
        let mut object =
            match ctx.execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(nv))) {
                Ok(object) => object,
                Err(e) if is_kind(&e, Tss2ResponseCodeKind::Handle) => return Ok(None),
                Err(e) => return Err(tpm("NV_ReadPublic")(e)),
            };
        let result = Self::read_nv(ctx, index, NvIndexHandle::from(object));
        if let Err(e) = ctx.tr_close(&mut object) {
            debug!("TR_Close of NV index {index:#x}: {e}");
        }
        let mut data = match result? {
            Some(data) => data,
            None => return Ok(None),
        };
        // NV indices may be larger than the certificate they hold: keep the DER element.
        if let Some(len) = der_sequence_len(&data) {
            data.truncate(len);
        }
        Ok(Some(data))
    }

    fn read_nv(ctx: &mut Context, index: u32, nv: NvIndexHandle) -> Result<Option<Vec<u8>>> {
        let (public, _name) = ctx
            .execute_without_session(|c| c.nv_read_public(nv))
            .map_err(tpm("NV_ReadPublic"))?;
        let attributes = public.attributes();
        if !attributes.written() {
            return Ok(None);
        }
        let auth = if attributes.auth_read() {
            NvAuth::NvIndex(nv)
        } else if attributes.owner_read() {
            NvAuth::Owner
        } else {
            return Err(HostTpmError::NvNotReadable(index));
        };
        let chunk = ctx
            .get_tpm_property(PropertyTag::NvBufferMax)
            .ok()
            .flatten()
            .and_then(|v| usize::try_from(v).ok())
            .unwrap_or(cmd::MAX_NV_BUFFER)
            .clamp(1, MaxNvBuffer::MAX_SIZE);
        let size = public.data_size();
        let mut out = Vec::with_capacity(size);
        while out.len() < size {
            let offset = u16::try_from(out.len()).map_err(|_| wrong_value("NV_Read"))?;
            let n =
                u16::try_from(chunk.min(size - out.len())).map_err(|_| wrong_value("NV_Read"))?;
            let data = ctx
                .execute_with_nullauth_session(|c| c.nv_read(auth, nv, n, offset))
                .map_err(tpm("NV_Read"))?;
            if data.is_empty() {
                return Err(wrong_value("NV_Read"));
            }
            out.extend_from_slice(&data);
        }
        out.truncate(size);
        Ok(Some(out))
    }

    /// Creates the standard RSA-2048 EK (TCG EK Credential Profile template L-1) as a
    /// primary key in the endorsement hierarchy; the caller flushes it.
    fn create_ek_rsa(&mut self) -> Result<(KeyHandle, Public)> {
        let template = ek::create_ek_public_from_default_template_2(
            AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
            None,
        )
        .map_err(tpm("EK template"))?;
        let created = self
            .ctx()?
            .execute_with_nullauth_session(|c| {
                c.create_primary(Hierarchy::Endorsement, template, None, None, None, None)
            })
            .map_err(tpm("CreatePrimary (EK)"))?;
        Ok((created.key_handle, created.out_public))
    }

    /// The marshalled TPMT_PUBLIC of the standard RSA-2048 EK (template L-1: the key a
    /// manufacturer's, or swtpm_setup's, EK certificate at [`RSA_EK_CERT_INDEX`] certifies).
    /// The key is derived again from the endorsement seed and flushed.
    pub fn ek_public_rsa(&mut self) -> Result<Vec<u8>> {
        let (handle, public) = self.create_ek_rsa()?;
        self.flush(handle);
        public.marshall().map_err(tpm("marshal EK public"))
    }

    /// Creates a new attestation key: a restricted ECC NIST P-256 ECDSA/SHA-256 signing key
    /// under the storage root key (fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth
    /// with an empty password, restricted, sign, noDA), returned for later loading.
    pub fn create_aik(&mut self) -> Result<ObjectBlob> {
        let attributes = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_restricted(true)
            .with_sign_encrypt(true)
            .with_no_da(true)
            .build()
            .map_err(tpm("AIK attributes"))?;
        let parameters = PublicEccParametersBuilder::new()
            .with_symmetric(SymmetricDefinitionObject::Null)
            .with_ecc_scheme(EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)))
            .with_curve(EccCurve::NistP256)
            .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
            .with_is_signing_key(true)
            .with_is_decryption_key(false)
            .with_restricted(true)
            .build()
            .map_err(tpm("AIK parameters"))?;
        let template = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attributes)
            .with_ecc_parameters(parameters)
            .with_ecc_unique_identifier(EccPoint::default())
            .build()
            .map_err(tpm("AIK template"))?;
        let srk = self.storage_root()?;
        let created = self.ctx().and_then(|ctx| {
            ctx.execute_with_nullauth_session(|c| c.create(srk, template, None, None, None, None))
                .map_err(tpm("Create (AIK)"))
        });
        self.flush(srk);
        let created = created?;
        let public = created
            .out_public
            .marshall()
            .map_err(tpm("marshal AIK public"))?;
        debug!("created an attestation key");
        Ok(ObjectBlob {
            public,
            private: created.out_private.value().to_vec(),
        })
    }

    /// Loads an object blob under the storage root key (flushed again at once).
    fn load_object(&mut self, blob: &ObjectBlob, operation: &'static str) -> Result<KeyHandle> {
        let public = Public::unmarshall(&blob.public).map_err(tpm(operation))?;
        let private = Private::try_from(blob.private.clone()).map_err(tpm(operation))?;
        let srk = self.storage_root()?;
        let loaded = self.ctx().and_then(|ctx| {
            ctx.execute_with_nullauth_session(|c| c.load(srk, private, public))
                .map_err(tpm(operation))
        });
        self.flush(srk);
        loaded
    }

    /// TPM2_ActivateCredential: recovers the secret the CA bound, with TPM2_MakeCredential
    /// or its software equivalent, to the name of the attestation key `aik` and to this
    /// TPM's RSA-2048 EK. `credential_blob` is the TPM2B_ID_OBJECT and `encrypted_secret`
    /// the TPM2B_ENCRYPTED_SECRET contents, both without their u16 size. The EK is derived
    /// again from its template and authorised by PolicySecret(TPM_RH_ENDORSEMENT), the
    /// template's policy. A credential made for another key or another EK, or corrupted,
    /// fails with [`HostTpmError::ActivationFailed`].
    pub fn activate_credential(
        &mut self,
        aik: &ObjectBlob,
        credential_blob: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let id_object =
            IdObject::try_from(credential_blob.to_vec()).map_err(HostTpmError::ActivationFailed)?;
        let secret = EncryptedSecret::try_from(encrypted_secret.to_vec())
            .map_err(HostTpmError::ActivationFailed)?;
        let mut loaded = Vec::new();
        let result = self.activate_inner(&mut loaded, aik, id_object, secret);
        for handle in loaded.into_iter().rev() {
            self.flush(handle);
        }
        result
    }

    fn activate_inner(
        &mut self,
        loaded: &mut Vec<ObjectHandle>,
        aik: &ObjectBlob,
        id_object: IdObject,
        secret: EncryptedSecret,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let key = self.load_object(aik, "Load (AIK)")?;
        loaded.push(key.into());
        let (ek, _) = self.create_ek_rsa()?;
        loaded.push(ek.into());
        let ctx = self.ctx()?;
        let session = ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(tpm("StartAuthSession"))?
            .ok_or_else(|| wrong_value("StartAuthSession"))?;
        loaded.push(SessionHandle::from(session).into());
        let policy = PolicySession::try_from(session).map_err(tpm("policy session"))?;
        ctx.execute_with_nullauth_session(|c| {
            c.policy_secret(
                policy,
                AuthHandle::Endorsement,
                Nonce::default(),
                Digest::default(),
                Nonce::default(),
                None,
            )
        })
        .map_err(tpm("PolicySecret (endorsement)"))?;
        let secret = ctx
            .execute_with_sessions((Some(AuthSession::Password), Some(session), None), |c| {
                c.activate_credential(key, ek, id_object, secret)
            })
            .map_err(|e| {
                // libtpms (swtpm) answers TPM_RC_FAILURE, not TPM_RC_VALUE, when the seed does
                // not decrypt with the EK (OAEP padding error), and stays operational: that is
                // a wrong credential too, unless the TPM really went into failure mode.
                if is_activation_failure(&e)
                    || (is_kind(&e, Tss2ResponseCodeKind::Failure) && ctx.get_random(8).is_ok())
                {
                    HostTpmError::ActivationFailed(e)
                } else {
                    HostTpmError::Tpm {
                        operation: "ActivateCredential",
                        source: e,
                    }
                }
            })?;
        debug!("activated a credential for the attestation key");
        Ok(Zeroizing::new(secret.value().to_vec()))
    }

    /// Signs `data` with a restricted ECDSA P-256 attestation key (from
    /// [`HostTpm::create_aik`]): the TPM hashes the data with SHA-256 in the owner hierarchy
    /// (TPM2_Hash for up to 1024 bytes, the hash-sequence commands beyond), giving the digest
    /// and the hash-check ticket a restricted key requires, then signs it with ECDSA/SHA-256.
    /// The TPM refuses data that starts with TPM_GENERATED_VALUE (0xff 'T' 'C' 'G'), so a
    /// key used this way cannot forge a quote; a DER TBSCertificate starts with 0x30.
    pub fn sign_restricted(&mut self, aik: &ObjectBlob, data: &[u8]) -> Result<Signature> {
        attestation_key(aik)?;
        // tss-esapi 7.7 does not wrap the hash-sequence commands: the whole signature is made
        // with raw commands, whatever the length.
        let srk_template = Self::srk_template()?
            .marshall()
            .map_err(tpm("marshal SRK template"))?;
        let mut raw = self.raw_connection()?;
        let mut loaded = Vec::new();
        let result = raw_sign(&mut raw, &mut loaded, &srk_template, aik, data)
            .and_then(|(r, s)| ecdsa_signature(&r, &s));
        for handle in loaded.into_iter().rev() {
            if let Err(e) = raw
                .execute(&cmd::flush_context(handle))
                .map_err(|e| e.to_string())
                .and_then(|r| tpm_proto::response_code(&r).map_err(|e| e.to_string()))
                .and_then(|rc| {
                    if rc == tpm_proto::rc::SUCCESS {
                        Ok(())
                    } else {
                        Err(format!("response code {rc:#x}"))
                    }
                })
            {
                debug!("FlushContext {handle:#x}: {e}");
            }
        }
        result
    }

    /// The attestation key `aik` (checked here: see [`aik_violations`]) as a
    /// [`signature::Signer`] of ECDSA P-256 / SHA-256 signatures, each made by
    /// [`HostTpm::sign_restricted`] on this connection.
    pub fn aik_signer<'a>(&'a mut self, aik: &'a ObjectBlob) -> Result<AikSigner<'a>> {
        attestation_key(aik)?;
        Ok(AikSigner {
            tpm: RefCell::new(self),
            aik,
        })
    }
}

/// The host TPM's attestation key as a [`signature::Signer`] (from [`HostTpm::aik_signer`]):
/// what signs the coprocessor certificate. A TPM failure is the signature error's source.
pub struct AikSigner<'a> {
    /// `Signer::try_sign` takes `&self`, a TPM conversation `&mut`.
    tpm: RefCell<&'a mut HostTpm>,
    aik: &'a ObjectBlob,
}

impl std::fmt::Debug for AikSigner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AikSigner").finish_non_exhaustive()
    }
}

impl signature::Signer<Signature> for AikSigner<'_> {
    fn try_sign(&self, msg: &[u8]) -> std::result::Result<Signature, signature::Error> {
        let mut tpm = self
            .tpm
            .try_borrow_mut()
            .map_err(signature::Error::from_source)?;
        tpm.sign_restricted(self.aik, msg)
            .map_err(signature::Error::from_source)
    }
}
