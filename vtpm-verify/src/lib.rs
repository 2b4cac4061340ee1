//! `vtpm-verify`: checks the deep-attestation evidence of a VM on vhost-vtpm (docs/adr/0011).
//!
//! A guest proves what it runs and what host it runs on, down to the host's boot, with one
//! bundle ([`evidence`]) collected for a nonce the verifier chose: its vTPM's quote by the
//! vAIK, the deep quote (a quote of the host TPM by the host AIK, bound to the same nonce
//! and to this vTPM's vEK, with the host PCR values and the host AIK and EK certificates)
//! and the vTPM's certificates from its NV. [`checks::verify`] runs every check, one line
//! each, naming exactly which fail; the bundle is accepted only if all pass.
//!
//! Modules: [`evidence`] (the bundle's format), [`nonce`] (nonces issued here, each accepted
//! once), [`policy`] (golden PCR values), [`revocation`] (the CA's status API or CRL),
//! [`x509`] (certificate paths, AIK profile, TPM signatures), [`checks`] (the verification),
//! [`cli`] (the `vtpm-verify` command).

pub mod checks;
pub mod cli;
pub mod evidence;
pub mod nonce;
pub mod policy;
pub mod revocation;
pub mod x509;

pub use checks::{verify, Check, Report, Trust};
pub use evidence::Evidence;
pub use nonce::{Freshness, NonceStore};
pub use policy::Policy;
pub use revocation::Revocation;
