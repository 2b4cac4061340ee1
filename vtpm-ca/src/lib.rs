//! `vtpm-ca`, vhost-vtpm's local certificate authority (ADR 0008).
//!
//! The CA enrolls TPMs by credential activation and issues X.509 AIK certificates:
//!
//! * a **host** TPM proves that its AIK lives next to an EK whose certificate chains to a
//!   configured manufacturer root, and the administrator's consent with an enrolment token
//!   for the subject ([`tokens`]; renewals by the same EK need none); it gets a
//!   `CA:TRUE, pathlen:1` AIK certificate that binds the SHA-256 of the EK certificate
//!   ([`issue::HOST_EK_CERT_HASH_OID`]);
//! * either way the subject (`aik/<kind>/<subject>`) is bound, on its first enrollment, to
//!   the endorsement key (EK or vEK public key) that enrolled it: another TPM asking for it
//!   is refused (`subject_taken`) until an administrator releases it;
//! * a **vTPM** proves the same against its vEK, whose certificate must chain up to this CA's
//!   root through a registered coprocessor certificate and the host AIK certificate, with
//!   nothing in the chain revoked; it gets a `CA:FALSE` AIK certificate that binds the
//!   SHA-256 of the vEK's public key ([`issue::VTPM_EK_KEY_HASH_OID`]), so a verifier knows
//!   which vEK the vAIK lives next to.
//!
//! It also keeps an access-controlled store of named certificates ([`certstore`]), a
//! revocation list published as an X.509 CRL ([`revocation`]) and answers status queries.
//! Everything persists in one directory ([`store`], created by [`setup`]); the HTTPS API
//! ([`server`]) and the blocking client ([`client`]) share the JSON shapes of [`api`].
//!
//! Module map:
//!
//! | module | owns |
//! |---|---|
//! | [`ca`] | the CA as one object: store, sessions, token authentication |
//! | [`setup`] | creating a CA: keys, certificates and a new store (`vtpm-ca init`) |
//! | [`store`] | the on-disk layout, the store lock and the only way to write ([`store::Locked`]), CA key/root, config; its files per repository: `certs` (issued and registered certificates, the fingerprint index), `subjects` (subject bindings), `named` (named certificate files), `ek_roots` |
//! | [`names`] | the syntax of subjects and certificate names (they become file names) |
//! | [`issue`] | building and signing certificates (root, TLS, AIK), reading the host EK hash back |
//! | [`credential`] | software `TPM2_MakeCredential` for RSA EKs, KDFa, tpm2-tools' credential file |
//! | [`aik`] | reading a `TPM2B_PUBLIC` AIK: its name, its key, what is wrong with it |
//! | [`chain`] | verifying the chains the CA relies on, and the policy of each (host EK, vEK, coprocessor) |
//! | [`enroll`] | the two-step enrollment protocol, its authorization and its sessions |
//! | [`tokens`] | host enrolment tokens: issued by an administrator for one subject, used once |
//! | [`limits`] | rate limits of enrollment requests and connection limits, per client and in all |
//! | [`certstore`] | named certificates and the ACL of bearer-token principals |
//! | [`revocation`] | revocations, the CRL, status answers |
//! | [`coprocessor`] | coprocessor registration |
//! | [`api`] | request/response JSON shapes and error codes |
//! | [`server`] | the axum HTTPS service |
//! | [`client`] | the blocking HTTPS client |
//! | [`cli`] | the `vtpm-ca` command line |

pub mod aik;
pub mod api;
pub mod ca;
pub mod certstore;
pub mod chain;
pub mod cli;
pub mod client;
pub mod coprocessor;
pub mod credential;
pub mod enroll;
pub mod issue;
pub mod limits;
pub mod names;
pub mod revocation;
pub mod server;
pub mod setup;
pub mod store;
pub mod tokens;
mod util;

pub use util::subject_text;

pub use ca::Ca;
pub use client::{Client, ClientError};
pub use credential::tpm2_tools_credential_file;
pub use store::Store;
pub use util::{fingerprint, public_key_fingerprint};

/// The store directory used when `--store` is not given.
pub const DEFAULT_STORE: &str = "/var/lib/vtpm-ca";
