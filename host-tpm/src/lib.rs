//! The host's TPM ("hardware security device"), as the rest of vhost-vtpm uses it.
//!
//! This crate owns every conversation with the host TPM, through tss-esapi and any TCTI:
//! `device:/dev/tpmrm0` in production, `swtpm:host=127.0.0.1,port=N` in tests. It seals and
//! unseals small secrets (the per-instance state keys are wrapped this way), optionally
//! bound to PCR values, and provides the host's identity for the certificate chain
//! (ADR 0008, module [`identity`]): the EK certificate and public key, an attestation key,
//! credential activation and restricted signing. It also reads the host's PCRs and quotes
//! them with the attestation key (module [`attest`]: PCR mirroring and the deep quote). The
//! few commands tss-esapi 7.7 does not wrap (hash sequences), and those whose exact output
//! bytes matter (quotes), are sent as raw bytes built by `tpm-proto`.
//!
//! Sealed objects live under the owner hierarchy's storage root key, which is re-derived
//! from the TPM's persistent seed on every connection (the ECC P-256 SRK template), so
//! a sealed blob stays usable across daemon and host restarts without anything made
//! persistent in the TPM.

pub mod attest;
mod blob;
pub mod identity;
mod raw;

pub use attest::HostQuote;
pub use blob::{BlobError, ObjectBlob, SealedBlob};
pub use identity::{aik_violations, AikSigner, ECC_EK_CERT_INDEX, RSA_EK_CERT_INDEX};

use std::str::FromStr;

use log::debug;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::{SessionType, Tss2ResponseCodeKind};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PcrHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::PolicySession;
use tss_esapi::structures::{
    Digest, DigestValues, EccPoint, KeyedHashScheme, PcrSelectionList, PcrSelectionListBuilder,
    PcrSlot, Private, Public, PublicBuilder, PublicEccParametersBuilder, PublicKeyedHashParameters,
    SensitiveData, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::Context;
use zeroize::Zeroizing;

/// Errors talking to the host TPM.
#[derive(Debug, thiserror::Error)]
pub enum HostTpmError {
    #[error("invalid TCTI {tcti:?}: {reason}")]
    BadTcti { tcti: String, reason: String },
    #[error("cannot open the host TPM through {tcti}: {source}")]
    Connect {
        tcti: String,
        #[source]
        source: tss_esapi::Error,
    },
    #[error("host TPM {operation} failed: {source}")]
    Tpm {
        operation: &'static str,
        #[source]
        source: tss_esapi::Error,
    },
    #[error("the host TPM's PCRs {pcrs:?} no longer match the values the secret was sealed to")]
    PcrPolicyMismatch { pcrs: Vec<u8> },
    #[error("PCR index {0} is out of range 0..=23")]
    BadPcr(u8),
    #[error("secret of {0} bytes is too large to seal (at most 128)")]
    SecretTooLarge(usize),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("{0:#010x} is not an NV index handle")]
    BadNvIndex(u32),
    #[error(
        "NV index {0:#010x} allows reading neither with its own authorization nor the owner's"
    )]
    NvNotReadable(u32),
    #[error("not an attestation key this host TPM signs with: {}", .0.join("; "))]
    NotAnAttestationKey(Vec<String>),
    /// The credential does not open with this TPM's EK and the given key: it was made for
    /// another key's name or another EK, or is corrupt.
    #[error(
        "credential activation failed: the credential was not made for this TPM's EK and \
         this attestation key, or is corrupt ({0})"
    )]
    ActivationFailed(#[source] tss_esapi::Error),
    #[error("host TPM {operation}: malformed response: {source}")]
    Malformed {
        operation: &'static str,
        #[source]
        source: tpm_proto::WireError,
    },
}

pub type Result<T> = std::result::Result<T, HostTpmError>;

fn tpm(operation: &'static str) -> impl FnOnce(tss_esapi::Error) -> HostTpmError {
    move |source| HostTpmError::Tpm { operation, source }
}

/// Format-one response code TPM_RC_POLICY_FAIL, whatever session or parameter it names.
fn is_policy_failure(e: &tss_esapi::Error) -> bool {
    matches!(
        e,
        tss_esapi::Error::Tss2Error(rc) if rc.kind() == Some(Tss2ResponseCodeKind::PolicyFail)
    )
}

/// A connection to the host TPM.
pub struct HostTpm {
    /// The ESAPI connection; `None` while it is closed for raw commands (see
    /// [`HostTpm::raw_connection`]), reopened on the next use.
    ctx: Option<Context>,
    tcti: String,
}

impl std::fmt::Debug for HostTpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostTpm").field("tcti", &self.tcti).finish()
    }
}

impl HostTpm {
    /// Opens the host TPM through `tcti` (tpm2-tss syntax, e.g. `device:/dev/tpmrm0`).
    pub fn connect(tcti: &str) -> Result<Self> {
        let ctx = Self::open(tcti)?;
        Ok(HostTpm {
            ctx: Some(ctx),
            tcti: tcti.to_owned(),
        })
    }

    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    fn tcti_conf(tcti: &str) -> Result<TctiNameConf> {
        TctiNameConf::from_str(tcti).map_err(|e| HostTpmError::BadTcti {
            tcti: tcti.to_owned(),
            reason: e.to_string(),
        })
    }

    fn open(tcti: &str) -> Result<Context> {
        Context::new(Self::tcti_conf(tcti)?).map_err(|source| HostTpmError::Connect {
            tcti: tcti.to_owned(),
            source,
        })
    }

    /// The ESAPI context, reconnecting if a raw command sequence closed it.
    fn ctx(&mut self) -> Result<&mut Context> {
        if let Some(ctx) = self.ctx.take() {
            return Ok(self.ctx.insert(ctx));
        }
        let ctx = Self::open(&self.tcti)?;
        Ok(self.ctx.insert(ctx))
    }

    /// Closes the ESAPI connection and opens a raw one on the same TCTI, for the commands
    /// tss-esapi does not wrap. Many TCTIs (swtpm, mssim, `/dev/tpm0`) serve one connection
    /// at a time, so the two never coexist; with `/dev/tpmrm0` each connection has its own
    /// resource-manager space, so objects used raw are loaded through the raw connection.
    /// Nothing transient outlives a [`HostTpm`] call, so nothing is lost by closing.
    fn raw_connection(&mut self) -> Result<raw::RawTcti> {
        self.ctx = None;
        let conf = Self::tcti_conf(&self.tcti)?;
        raw::RawTcti::open(conf).map_err(|source| HostTpmError::Connect {
            tcti: self.tcti.clone(),
            source,
        })
    }

    /// The owner-hierarchy storage root key, derived again from the persistent seed.
    fn storage_root(&mut self) -> Result<KeyHandle> {
        let public = Self::srk_template()?;
        let srk = self
            .ctx()?
            .execute_with_nullauth_session(|ctx| {
                ctx.create_primary(Hierarchy::Owner, public, None, None, None, None)
            })
            .map_err(tpm("CreatePrimary (SRK)"))?;
        Ok(srk.key_handle)
    }

    /// The standard RSA-2048 storage root key template (restricted decryption, AES-128-CFB).
    /// The storage root key: an ECC NIST P-256 restricted decryption key (the TCG SRK
    /// template's ECC form). ECC rather than RSA-2048 because it is re-derived on every
    /// connection, and deriving an RSA primary costs tens of milliseconds (far more on a
    /// hardware TPM) where an ECC primary costs about one.
    pub fn srk_template() -> Result<Public> {
        let attributes = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_no_da(true)
            .with_restricted(true)
            .with_decrypt(true)
            .build()
            .map_err(tpm("SRK attributes"))?;
        let parameters = PublicEccParametersBuilder::new_restricted_decryption_key(
            SymmetricDefinitionObject::AES_128_CFB,
            EccCurve::NistP256,
        )
        .build()
        .map_err(tpm("SRK parameters"))?;
        PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attributes)
            .with_ecc_parameters(parameters)
            .with_ecc_unique_identifier(EccPoint::default())
            .build()
            .map_err(tpm("SRK template"))
    }

    fn pcr_selection(pcrs: &[u8]) -> Result<PcrSelectionList> {
        let slots = pcrs
            .iter()
            .map(|&p| {
                if p > 23 {
                    return Err(HostTpmError::BadPcr(p));
                }
                PcrSlot::try_from(1u32 << p).map_err(tpm("PCR slot"))
            })
            .collect::<Result<Vec<_>>>()?;
        PcrSelectionListBuilder::new()
            .with_selection(HashingAlgorithm::Sha256, &slots)
            .build()
            .map_err(tpm("PCR selection"))
    }

    /// Starts a policy (or trial) session and applies PolicyPCR over the current values of
    /// `pcrs`; returns the session.
    fn pcr_policy_session(&mut self, pcrs: &[u8], kind: SessionType) -> Result<PolicySession> {
        let selection = Self::pcr_selection(pcrs)?;
        let session = self
            .ctx()?
            .start_auth_session(
                None,
                None,
                None,
                kind,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(tpm("StartAuthSession"))?
            .ok_or(HostTpmError::Tpm {
                operation: "StartAuthSession",
                source: tss_esapi::Error::WrapperError(
                    tss_esapi::WrapperErrorKind::WrongValueFromTpm,
                ),
            })?;
        let policy = PolicySession::try_from(session).map_err(tpm("policy session"))?;
        self.ctx()?
            .policy_pcr(policy, Digest::default(), selection)
            .map_err(tpm("PolicyPCR"))?;
        Ok(policy)
    }

    /// Seals `secret` (at most 128 bytes) under the host TPM. With `pcrs` non-empty, the
    /// secret unseals only while those SHA-256 PCRs hold the values they hold now.
    pub fn seal(&mut self, secret: &[u8], pcrs: &[u8]) -> Result<SealedBlob> {
        if secret.len() > 128 {
            return Err(HostTpmError::SecretTooLarge(secret.len()));
        }
        let policy_digest = if pcrs.is_empty() {
            Digest::default()
        } else {
            let trial = self.pcr_policy_session(pcrs, SessionType::Trial)?;
            let digest = self
                .ctx()?
                .policy_get_digest(trial)
                .map_err(tpm("PolicyGetDigest"))?;
            self.ctx()?
                .flush_context(SessionHandle::from(trial).into())
                .map_err(tpm("FlushContext"))?;
            digest
        };
        let attributes = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_no_da(true)
            // Without a PCR policy the (empty) password authorises unsealing; with one, only
            // the policy does.
            .with_user_with_auth(pcrs.is_empty())
            .build()
            .map_err(tpm("object attributes"))?;
        let public = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::KeyedHash)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attributes)
            .with_auth_policy(policy_digest)
            .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
            .with_keyed_hash_unique_identifier(Digest::default())
            .build()
            .map_err(tpm("sealed object template"))?;
        let data = SensitiveData::try_from(secret.to_vec()).map_err(tpm("sensitive data"))?;
        let srk = self.storage_root()?;
        let created = self.ctx()?.execute_with_nullauth_session(|ctx| {
            ctx.create(srk, public, None, Some(data), None, None)
        });
        self.flush(srk);
        let created = created.map_err(tpm("Create (seal)"))?;
        let public = created
            .out_public
            .marshall()
            .map_err(tpm("marshal public"))?;
        debug!("sealed {} bytes to PCRs {pcrs:?}", secret.len());
        Ok(SealedBlob {
            pcrs: pcrs.to_vec(),
            public,
            private: created.out_private.value().to_vec(),
        })
    }

    /// Unseals a blob made by [`HostTpm::seal`] on this TPM; the secret is wiped when dropped.
    pub fn unseal(&mut self, blob: &SealedBlob) -> Result<Zeroizing<Vec<u8>>> {
        let public = Public::unmarshall(&blob.public).map_err(tpm("unmarshal public"))?;
        let private = Private::try_from(blob.private.clone()).map_err(tpm("private blob"))?;
        let srk = self.storage_root()?;
        let loaded = self
            .ctx()?
            .execute_with_nullauth_session(|ctx| ctx.load(srk, private, public));
        self.flush(srk);
        let object = loaded.map_err(tpm("Load (sealed object)"))?;
        let result = if blob.pcrs.is_empty() {
            self.ctx()?
                .execute_with_nullauth_session(|ctx| ctx.unseal(object.into()))
                .map_err(tpm("Unseal"))
        } else {
            match self.pcr_policy_session(&blob.pcrs, SessionType::Policy) {
                Ok(policy) => {
                    let r = self.ctx().and_then(|ctx| {
                        ctx.execute_with_session(Some(policy.into()), |ctx| {
                            ctx.unseal(object.into())
                        })
                        .map_err(|e| {
                            if is_policy_failure(&e) {
                                HostTpmError::PcrPolicyMismatch {
                                    pcrs: blob.pcrs.clone(),
                                }
                            } else {
                                HostTpmError::Tpm {
                                    operation: "Unseal",
                                    source: e,
                                }
                            }
                        })
                    });
                    self.flush(SessionHandle::from(policy));
                    r
                }
                Err(e) => Err(e),
            }
        };
        self.flush(object);
        Ok(Zeroizing::new(result?.value().to_vec()))
    }

    /// Extends a SHA-256 PCR (tests and measurement helpers).
    pub fn pcr_extend_sha256(&mut self, pcr: u8, digest: [u8; 32]) -> Result<()> {
        let handle = PcrHandle::try_from(u32::from(pcr)).map_err(|_| HostTpmError::BadPcr(pcr))?;
        let mut values = DigestValues::new();
        values.set(
            HashingAlgorithm::Sha256,
            Digest::try_from(digest.to_vec()).map_err(tpm("digest"))?,
        );
        self.ctx()?
            .execute_with_nullauth_session(|ctx| ctx.pcr_extend(handle, values))
            .map_err(tpm("PCR_Extend"))
    }

    /// Flushes a transient object or session, logging (not returning) a failure: used on
    /// clean-up paths, where the operation's own result matters more.
    fn flush(&mut self, handle: impl Into<ObjectHandle>) {
        if let Some(ctx) = self.ctx.as_mut() {
            if let Err(e) = ctx.flush_context(handle.into()) {
                debug!("FlushContext: {e}");
            }
        }
    }
}
