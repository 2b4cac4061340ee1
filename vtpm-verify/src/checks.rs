//! The verification of one evidence bundle: every check runs and reports one line, a check
//! that depends on a failed one fails naming it, and the bundle is accepted only when all
//! pass.
//!
//! | check | what it establishes |
//! |---|---|
//! | `evidence` | the bundle parses (format version 1) |
//! | `nonce` | the nonce was issued by this verifier, is unexpired, and was not used before (it is used now) |
//! | `vaik_certificate` | the vAIK certificate is issued by the CA root, valid, an AIK (EKU 2.23.133.8.3, CA:FALSE), and names its vEK |
//! | `vtpm_quote_signature` | the vTPM's quote is a TPM-made quote signed by the vAIK |
//! | `vtpm_quote_nonce` | the vTPM's quote carries the nonce |
//! | `vtpm_quote_pcrs` | the vTPM PCR values in the bundle are the ones the quote's digest covers |
//! | `vek_certificate` | the vEK the vAIK names has its certificate in the bundle, chaining through the coprocessor and host AIK certificates (from NV) to the CA root |
//! | `host_aik_certificate` | the certificate of the key that made the host quote is the CA's, valid, a host AIK (CA:TRUE) |
//! | `host_ek_certificate` | the host's EK certificate chains to a manufacturer root, and is the one the host AIK certificate names |
//! | `host_quote_signature` | the host quote is a TPM-made quote signed by the host AIK |
//! | `host_quote_pcrs` | the host PCR values in the bundle are the ones the host quote's digest covers |
//! | `deep_quote_binding` | the host quote's qualifying data is SHA-256(nonce ‖ name of the vEK), and that vEK is the certified one: the host quote was made for this nonce and this vTPM (no relay) |
//! | `same_host` | the host AIK that quoted is the one that certified this vTPM's coprocessor |
//! | `revocation` | no certificate in either chain is revoked |
//! | `mirror` | each mirrored vPCR equals SHA-256(0^32 ‖ host PCR) from the host quote |
//! | `policy_host_pcrs` | the host PCRs hold golden values |
//! | `policy_vtpm_pcrs` | the vTPM PCRs hold golden values |

use openssl::x509::X509;
use tpm_proto::attest::{pcr_digest_sha256, QuoteAttest, Signature};
use tpm_proto::public::TpmPublic;
use tpm_proto::vendor::{qualifying_data, DeepQuoteError, DeepQuoteResponse};
use tpm_proto::WireError;

use crate::evidence::Evidence;
use crate::nonce::{Freshness, NonceStore};
use crate::policy::{self, Policy};
use crate::revocation::{Known, Revocation};
use crate::x509;

/// The names of the checks, in the order they are reported.
pub mod names {
    pub const EVIDENCE: &str = "evidence";
    pub const NONCE: &str = "nonce";
    pub const VAIK_CERTIFICATE: &str = "vaik_certificate";
    pub const VTPM_QUOTE_SIGNATURE: &str = "vtpm_quote_signature";
    pub const VTPM_QUOTE_NONCE: &str = "vtpm_quote_nonce";
    pub const VTPM_QUOTE_PCRS: &str = "vtpm_quote_pcrs";
    pub const VEK_CERTIFICATE: &str = "vek_certificate";
    pub const HOST_AIK_CERTIFICATE: &str = "host_aik_certificate";
    pub const HOST_EK_CERTIFICATE: &str = "host_ek_certificate";
    pub const HOST_QUOTE_SIGNATURE: &str = "host_quote_signature";
    pub const HOST_QUOTE_PCRS: &str = "host_quote_pcrs";
    pub const DEEP_QUOTE_BINDING: &str = "deep_quote_binding";
    pub const SAME_HOST: &str = "same_host";
    pub const REVOCATION: &str = "revocation";
    pub const MIRROR: &str = "mirror";
    pub const POLICY_HOST_PCRS: &str = "policy_host_pcrs";
    pub const POLICY_VTPM_PCRS: &str = "policy_vtpm_pcrs";

    pub const ALL: [&str; 17] = [
        EVIDENCE,
        NONCE,
        VAIK_CERTIFICATE,
        VTPM_QUOTE_SIGNATURE,
        VTPM_QUOTE_NONCE,
        VTPM_QUOTE_PCRS,
        VEK_CERTIFICATE,
        HOST_AIK_CERTIFICATE,
        HOST_EK_CERTIFICATE,
        HOST_QUOTE_SIGNATURE,
        HOST_QUOTE_PCRS,
        DEEP_QUOTE_BINDING,
        SAME_HOST,
        REVOCATION,
        MIRROR,
        POLICY_HOST_PCRS,
        POLICY_VTPM_PCRS,
    ];
}

use names::*;

/// SHA-256 PCR values of a quote: (PCR, value), ascending.
pub type PcrValues = Vec<(u8, [u8; 32])>;

/// What the verifier trusts.
#[derive(Debug, Clone)]
pub struct Trust {
    /// The local CA's root (`vtpm-ca`'s `ca.pem`).
    pub ca_root: X509,
    /// Manufacturer roots (and intermediates) of host EK certificates.
    pub ek_roots: Vec<X509>,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        write!(f, "{verdict} {}: {}", self.name, self.detail)
    }
}

/// Every check of one bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    fn record<T>(&mut self, name: &'static str, result: Result<(T, String), String>) -> Option<T> {
        let (value, passed, detail) = match result {
            Ok((v, detail)) => (Some(v), true, detail),
            Err(detail) => (None, false, detail),
        };
        self.checks.push(Check {
            name,
            passed,
            detail,
        });
        value
    }

    /// Whether every check passed.
    pub fn accepted(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }

    /// The names of the checks that failed.
    pub fn failed(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// `Ok` only if every dependency is there.
fn needs<T>(dependency: &'static str, value: Option<T>) -> Result<T, String> {
    value.ok_or_else(|| format!("not checked: {dependency} failed"))
}

fn wire(what: &str, e: WireError) -> String {
    format!("{what}: {e}")
}

/// The (PCR, value) pairs of a quote whose values were given separately.
fn quoted_values(
    attest: &QuoteAttest,
    values: &[[u8; 32]],
    what: &str,
) -> Result<(PcrValues, String), String> {
    let pcrs = attest
        .quote
        .sha256_pcrs()
        .map_err(|e| wire("the quote's PCR selection", e))?;
    if pcrs.len() != values.len() {
        return Err(format!(
            "the quote covers {} PCRs, the bundle has {} {what} values",
            pcrs.len(),
            values.len()
        ));
    }
    if attest.quote.pcr_digest != pcr_digest_sha256(values) {
        return Err(format!(
            "the {what} PCR values are not the ones the quote's digest covers"
        ));
    }
    Ok((
        pcrs.iter().copied().zip(values.iter().copied()).collect(),
        format!("{what} PCRs {pcrs:?} match the quote's digest"),
    ))
}

/// Verifies one bundle (JSON) with what the verifier trusts; consumes its nonce.
pub fn verify(
    json: &[u8],
    trust: &Trust,
    revocation: &Revocation,
    policy: &Policy,
    nonces: &NonceStore,
    now: u64,
) -> Report {
    let mut report = Report::default();
    let evidence = match Evidence::parse(json) {
        Ok(e) => e,
        Err(e) => {
            report.record::<()>(EVIDENCE, Err(e.to_string()));
            for name in &ALL[1..] {
                report.record::<()>(name, Err("not checked: evidence failed".into()));
            }
            return report;
        }
    };
    report.record(EVIDENCE, Ok(((), "format version 1".to_string())));
    let nonce = evidence.nonce_bytes().unwrap_or_default();

    // --- nonce ---
    report.record(
        NONCE,
        match nonces.consume(&evidence.nonce, now) {
            Ok(Freshness::Fresh { issued_at }) => Ok((
                (),
                format!(
                    "issued by this verifier {} s ago; now used",
                    now.saturating_sub(issued_at)
                ),
            )),
            Ok(Freshness::Replayed { used_at }) => Err(format!(
                "replayed: this nonce was already used {} s ago",
                now.saturating_sub(used_at)
            )),
            Ok(Freshness::Expired { expires_at }) => Err(format!(
                "expired {} s before it was presented",
                now.saturating_sub(expires_at)
            )),
            Ok(Freshness::Unknown) => {
                Err("not issued by this verifier (or expired and forgotten)".into())
            }
            Err(e) => Err(e.to_string()),
        },
    );

    // --- the vAIK and the vTPM quote ---
    let vaik = report.record(
        VAIK_CERTIFICATE,
        (|| {
            let cert = x509::ca_issued_aik(&evidence.vaik_certificate.0, &trust.ca_root, false)?;
            let vek_hash = vtpm_ca::issue::vtpm_ek_key_hash(&cert).ok_or(
                "the vAIK certificate names no vEK (no vEK key hash extension: issued before \
                 deep attestation?)",
            )?;
            let detail = format!("{} (issued by the CA root)", x509::subject(&cert));
            Ok(((cert, vek_hash), detail))
        })(),
    );
    let vtpm_attest = QuoteAttest::parse(&evidence.vtpm_quote.attest.0);
    let vtpm_signature = Signature::parse(&evidence.vtpm_quote.signature.0);
    report.record(
        VTPM_QUOTE_SIGNATURE,
        (|| {
            let (cert, _) = needs(VAIK_CERTIFICATE, vaik.as_ref())?;
            vtpm_attest
                .as_ref()
                .map_err(|e| wire("the vTPM quote", e.clone()))?;
            let sig = vtpm_signature
                .as_ref()
                .map_err(|e| wire("the vTPM quote's signature", e.clone()))?;
            let key = cert.public_key().map_err(|e| e.to_string())?;
            x509::verify_tpm_signature(&key, &evidence.vtpm_quote.attest.0, sig)
                .map_err(|e| format!("not signed by the vAIK: {e}"))?;
            Ok(((), "a TPM quote signed by the vAIK".to_string()))
        })(),
    );
    report.record(
        VTPM_QUOTE_NONCE,
        match &vtpm_attest {
            Ok(a) if a.extra_data == nonce => Ok(((), "the quote carries the nonce".into())),
            Ok(a) => Err(format!(
                "the quote carries {} instead of the nonce",
                hex::encode(&a.extra_data)
            )),
            Err(e) => Err(wire("the vTPM quote", e.clone())),
        },
    );
    let vtpm_pcrs = report.record(
        VTPM_QUOTE_PCRS,
        (|| {
            let attest = vtpm_attest
                .as_ref()
                .map_err(|e| wire("the vTPM quote", e.clone()))?;
            let raw = &evidence.vtpm_quote.pcr_values.0;
            if raw.len() % 32 != 0 {
                return Err(format!(
                    "{} bytes of vTPM PCR values are not whole SHA-256 values",
                    raw.len()
                ));
            }
            let values: Vec<[u8; 32]> = raw
                .chunks_exact(32)
                .filter_map(|c| <[u8; 32]>::try_from(c).ok())
                .collect();
            quoted_values(attest, &values, "vTPM")
        })(),
    );

    // --- the vEK and its chain (from NV) ---
    let vek_chain = report.record(
        VEK_CERTIFICATE,
        (|| {
            let (_, vek_hash) = needs(VAIK_CERTIFICATE, vaik.as_ref())?;
            let mut found = None;
            for bytes in &evidence.vek_certificates {
                let cert = x509::parse(&bytes.0)?;
                if &x509::key_sha256(&cert)? == vek_hash {
                    found = Some(cert);
                }
            }
            let vek = found.ok_or(
                "none of the bundle's vEK certificates is for the vEK the vAIK certificate names",
            )?;
            let chain = evidence
                .vek_chain
                .iter()
                .map(|b| x509::parse(&b.0))
                .collect::<Result<Vec<_>, _>>()?;
            let verified = x509::verify_chain(
                "the CA root",
                std::slice::from_ref(&trust.ca_root),
                &vek,
                &chain,
            )?;
            let detail = format!(
                "the vAIK's vEK, certified through {} to the CA root",
                verified
                    .iter()
                    .skip(1)
                    .map(x509::subject)
                    .collect::<Vec<_>>()
                    .join(" <- ")
            );
            Ok(((vek, verified), detail))
        })(),
    );

    // --- the deep quote: host AIK, host EK, host quote ---
    let deep = DeepQuoteResponse::parse(&evidence.deep_quote.0).map_err(|e| match e {
        DeepQuoteError::Wire(WireError::Tpm(code)) => {
            format!("the deep quote failed in the vTPM with TPM_RC {code:#x}")
        }
        e => format!("the deep quote: {e}"),
    });
    let host_aik = report.record(
        HOST_AIK_CERTIFICATE,
        (|| {
            let dq = deep.as_ref().map_err(Clone::clone)?;
            let der = dq
                .host_certificates
                .first()
                .ok_or("the deep quote has no host AIK certificate")?;
            let cert = x509::ca_issued_aik(der, &trust.ca_root, true)?;
            let detail = format!("{} (issued by the CA root)", x509::subject(&cert));
            Ok((cert, detail))
        })(),
    );
    report.record(
        HOST_EK_CERTIFICATE,
        (|| {
            let dq = deep.as_ref().map_err(Clone::clone)?;
            let aik = needs(HOST_AIK_CERTIFICATE, host_aik.as_ref())?;
            let der = dq
                .host_certificates
                .get(1)
                .ok_or("the deep quote has no host EK certificate")?;
            let cert = x509::parse(der)?;
            x509::verify_chain(
                "a manufacturer root",
                &trust.ek_roots,
                &cert,
                &trust.ek_roots,
            )?;
            let named = vtpm_ca::issue::host_ek_cert_hash(aik)
                .ok_or("the host AIK certificate names no EK certificate")?;
            if named != openssl::sha::sha256(der) {
                return Err("not the EK certificate the host AIK certificate names".into());
            }
            Ok((
                (),
                format!(
                    "{} (manufacturer root; named by the host AIK)",
                    x509::subject(&cert)
                ),
            ))
        })(),
    );
    let host_attest = deep
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|dq| QuoteAttest::parse(&dq.host_attest).map_err(|e| wire("the host quote", e)));
    report.record(
        HOST_QUOTE_SIGNATURE,
        (|| {
            let dq = deep.as_ref().map_err(Clone::clone)?;
            let aik = needs(HOST_AIK_CERTIFICATE, host_aik.as_ref())?;
            host_attest.as_ref().map_err(Clone::clone)?;
            let sig = Signature::parse(&dq.host_signature)
                .map_err(|e| wire("the host quote's signature", e))?;
            let key = aik.public_key().map_err(|e| e.to_string())?;
            x509::verify_tpm_signature(&key, &dq.host_attest, &sig)
                .map_err(|e| format!("not signed by the host AIK: {e}"))?;
            Ok(((), "a TPM quote signed by the host AIK".to_string()))
        })(),
    );
    let host_pcrs = report.record(
        HOST_QUOTE_PCRS,
        (|| {
            let dq = deep.as_ref().map_err(Clone::clone)?;
            let attest = host_attest.as_ref().map_err(Clone::clone)?;
            quoted_values(attest, &dq.host_pcr_values, "host")
        })(),
    );
    report.record(
        DEEP_QUOTE_BINDING,
        (|| {
            let dq = deep.as_ref().map_err(Clone::clone)?;
            let attest = host_attest.as_ref().map_err(Clone::clone)?;
            let (vek, _) = needs(VEK_CERTIFICATE, vek_chain.as_ref())?;
            let public =
                TpmPublic::parse(&dq.vek_public).map_err(|e| wire("the deep quote's vEK", e))?;
            let key = x509::tpm_public_key(&public)?;
            let cert_key = vek.public_key().map_err(|e| e.to_string())?;
            if !key.public_eq(&cert_key) {
                return Err("the host quote was made for another vTPM's vEK (relayed)".to_string());
            }
            let name = public.name().map_err(|e| wire("the vEK's name", e))?;
            if attest.extra_data != qualifying_data(&nonce, &name) {
                return Err(
                    "the host quote's qualifying data is not SHA-256(nonce || vEK name): made \
                     for another nonce or another vTPM (relayed)"
                        .to_string(),
                );
            }
            Ok((
                (),
                "the host quote binds this nonce to this vTPM's vEK".to_string(),
            ))
        })(),
    );
    report.record(
        SAME_HOST,
        (|| {
            let aik = needs(HOST_AIK_CERTIFICATE, host_aik.as_ref())?;
            let (_, chain) = needs(VEK_CERTIFICATE, vek_chain.as_ref())?;
            let key = aik.public_key().map_err(|e| e.to_string())?;
            let certified_by = chain
                .iter()
                .skip(1)
                .any(|c| c.public_key().map(|k| k.public_eq(&key)).unwrap_or(false));
            if certified_by {
                Ok(((), "the quoting host certified this vTPM".to_string()))
            } else {
                Err(
                    "the host AIK that quoted is not the one in this vTPM's certificate chain"
                        .to_string(),
                )
            }
        })(),
    );

    // --- revocation ---
    report.record(
        REVOCATION,
        (|| {
            let (vaik, _) = needs(VAIK_CERTIFICATE, vaik.as_ref())?;
            let (_, chain) = needs(VEK_CERTIFICATE, vek_chain.as_ref())?;
            let aik = needs(HOST_AIK_CERTIFICATE, host_aik.as_ref())?;
            let mut certs: Vec<(&str, &X509, Known)> = vec![
                ("vAIK", vaik, Known::Required),
                ("host AIK", aik, Known::Required),
            ];
            // The chain as verified: vEK, coprocessor, host AIK, ..., root (not checked).
            let n = chain.len();
            for (i, c) in chain.iter().enumerate().take(n.saturating_sub(1)) {
                let role = match i {
                    0 => "vEK",
                    1 => "coprocessor",
                    _ => "vEK chain",
                };
                let known = if i == 0 {
                    Known::Optional
                } else {
                    Known::Required
                };
                certs.push((role, c, known));
            }
            revocation.check(&certs).map(|d| ((), d))
        })(),
    );

    // --- the mirror and the golden values ---
    report.record(
        MIRROR,
        (|| {
            let host = needs(HOST_QUOTE_PCRS, host_pcrs.as_ref())?;
            let vtpm = needs(VTPM_QUOTE_PCRS, vtpm_pcrs.as_ref())?;
            if host.is_empty() {
                return Err("the host quote covers no PCR".into());
            }
            for (pcr, host_value) in host {
                let expected = openssl::sha::sha256(&[[0u8; 32], *host_value].concat());
                match vtpm.iter().find(|(p, _)| p == pcr) {
                    None => return Err(format!("mirrored PCR {pcr} is not in the vTPM quote")),
                    Some((_, v)) if *v == expected => {}
                    Some((_, v)) => {
                        return Err(format!(
                            "vPCR {pcr} = {} but SHA-256(0^32 || host PCR {pcr}) = {}: the host \
                             PCR changed after the vTPM started, or the vTPM did not start on \
                             this host",
                            hex::encode(v),
                            hex::encode(expected)
                        ))
                    }
                }
            }
            Ok((
                (),
                format!(
                    "vPCRs {:?} mirror the quoted host PCRs",
                    host.iter().map(|(p, _)| p).collect::<Vec<_>>()
                ),
            ))
        })(),
    );
    report.record(
        POLICY_HOST_PCRS,
        needs(HOST_QUOTE_PCRS, host_pcrs.as_ref())
            .and_then(|host| policy::check("host", &policy.host_pcrs, host))
            .map(|d| ((), d)),
    );
    report.record(
        POLICY_VTPM_PCRS,
        needs(VTPM_QUOTE_PCRS, vtpm_pcrs.as_ref())
            .and_then(|vtpm| policy::check("vTPM", &policy.vtpm_pcrs, vtpm))
            .map(|d| ((), d)),
    );
    report
}

/// The PCR values of a bundle, unverified, host's then vTPM's: what `vtpm-verify golden`
/// turns into a policy.
pub fn quoted_pcrs(evidence: &Evidence) -> Result<(PcrValues, PcrValues), String> {
    let vtpm =
        QuoteAttest::parse(&evidence.vtpm_quote.attest.0).map_err(|e| wire("the vTPM quote", e))?;
    let values: Vec<[u8; 32]> = evidence
        .vtpm_quote
        .pcr_values
        .0
        .chunks_exact(32)
        .filter_map(|c| <[u8; 32]>::try_from(c).ok())
        .collect();
    let (vtpm, _) = quoted_values(&vtpm, &values, "vTPM")?;
    let dq = DeepQuoteResponse::parse(&evidence.deep_quote.0).map_err(|e| e.to_string())?;
    let host = QuoteAttest::parse(&dq.host_attest).map_err(|e| wire("the host quote", e))?;
    let (host, _) = quoted_values(&host, &dq.host_pcr_values, "host")?;
    Ok((host, vtpm))
}
