//! Revocation of the certificates in a bundle: the CA's status API (complete: certificates
//! the CA issued, by serial, and coprocessor certificates it registered, by fingerprint), or
//! its CRL (offline; an indirect CRL, ADR 0012: what the CA issued, host AIK and vAIK
//! certificates, and the revoked certificates others signed, coprocessor and vEK
//! certificates, each entry naming its issuer).

use openssl::x509::{CrlStatus, X509Crl, X509};

/// How a certificate must stand with the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// Issued or registered by the CA: it must say "good".
    Required,
    /// Issued by someone the CA knows (a vEK certificate, by a coprocessor): not revoked.
    Optional,
}

/// Where revocation is looked up.
pub enum Revocation {
    /// `GET /v1/status?fingerprint=...` of the CA.
    StatusApi(vtpm_ca::Client),
    /// The CA's CRL, its signature checked against the CA root.
    Crl(X509Crl),
}

impl std::fmt::Debug for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Revocation::StatusApi(c) => write!(f, "StatusApi({})", c.base_url()),
            Revocation::Crl(_) => f.write_str("Crl"),
        }
    }
}

impl Revocation {
    /// A CRL (DER or PEM) that must be signed by `ca_root` and not past its nextUpdate.
    pub fn crl(bytes: &[u8], ca_root: &X509) -> Result<Self, String> {
        let crl = X509Crl::from_der(bytes)
            .or_else(|_| X509Crl::from_pem(bytes))
            .map_err(|e| format!("not a CRL: {e}"))?;
        let key = ca_root.public_key().map_err(|e| e.to_string())?;
        if !crl.verify(&key).map_err(|e| e.to_string())? {
            return Err("the CRL is not signed by the CA root".into());
        }
        if let Some(next) = crl.next_update() {
            let now = openssl::asn1::Asn1Time::days_from_now(0).map_err(|e| e.to_string())?;
            if next < now {
                return Err(format!("the CRL is stale (next update was {next})"));
            }
        }
        Ok(Revocation::Crl(crl))
    }

    /// Checks every `(role, certificate, known)`; a summary, or what is revoked.
    pub fn check(&self, certs: &[(&str, &X509, Known)]) -> Result<String, String> {
        match self {
            Revocation::StatusApi(ca) => {
                for (role, cert, known) in certs {
                    let fp = vtpm_ca::fingerprint(cert).map_err(|e| e.to_string())?;
                    let status = ca
                        .status(&fp)
                        .map_err(|e| format!("the CA's status API: {e}"))?;
                    use vtpm_ca::api::Status;
                    match (status.status, known) {
                        (Status::Good, _) | (Status::Unknown, Known::Optional) => {}
                        (Status::Revoked, _) => {
                            return Err(format!(
                                "the {role} certificate ({}) is revoked: {}",
                                crate::x509::subject(cert),
                                status.reason.unwrap_or_default()
                            ))
                        }
                        (other, _) => {
                            return Err(format!(
                                "the {role} certificate ({}) is {other:?} at the CA",
                                crate::x509::subject(cert)
                            ))
                        }
                    }
                }
                Ok(format!(
                    "none of {} certificates revoked (CA status API)",
                    certs.len()
                ))
            }
            Revocation::Crl(crl) => {
                for (role, cert, _) in certs {
                    // By serial and issuer (serials are only unique per issuer): the CA's
                    // own entries, and the indirect ones by their certificateIssuer.
                    if let CrlStatus::Revoked(_) = crl.get_by_cert(cert) {
                        return Err(format!(
                            "the {role} certificate ({}) is on the CA's CRL",
                            crate::x509::subject(cert)
                        ));
                    }
                }
                Ok(format!(
                    "none of {} certificates on the CA's CRL",
                    certs.len()
                ))
            }
        }
    }
}
