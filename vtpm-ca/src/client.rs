//! Blocking HTTPS client of the CA, for host-side tools and tests.
//!
//! This module owns talking to the service: TLS through native-tls trusting only the CA
//! root given (no system roots), the optional bearer token, one method per endpoint, and
//! turning `{error, detail}` responses back into [`ClientError::Api`].

use std::io::Read;
use std::time::Duration;

use https_api::client::{error_answer, pinned_tls, TlsError};

use crate::api::{
    CertStatus, CoprocessorRequest, CoprocessorResponse, EnrollFinishRequest, EnrollFinishResponse,
    EnrollStartRequest, EnrollStartResponse, EnrollTokenRequest, EnrollTokenResponse,
    GetCertResponse, PutCertRequest, PutCertResponse, RevokeRequest, RevokeResponse,
};

/// Largest response body read (certificates, CRLs).
const MAX_BODY: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the CA answered {status}: {code}: {detail}")]
    Api {
        status: u16,
        /// The `error` code (see [`crate::api::codes`]).
        code: String,
        detail: String,
    },
    #[error("invalid CA root certificate: {0}")]
    BadRoot(native_tls::Error),
    #[error("TLS setup: {0}")]
    Tls(native_tls::Error),
    #[error("cannot reach the CA at {url}: {source}")]
    Transport {
        url: String,
        source: Box<ureq::Transport>,
    },
    #[error("unexpected response from {url}: {source}")]
    BadResponse { url: String, source: std::io::Error },
}

impl ClientError {
    /// The API error code, if the CA answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, if the CA answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client of one CA.
#[derive(Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Client {
    /// A client of the CA at `base_url` (`https://127.0.0.1:PORT`), trusting `ca_pem` only.
    pub fn new(
        base_url: &str,
        ca_pem: &[u8],
        token: Option<String>,
    ) -> Result<Client, ClientError> {
        let tls = pinned_tls(ca_pem).map_err(|e| match e {
            TlsError::BadRoot(e) => ClientError::BadRoot(e),
            TlsError::Tls(e) => ClientError::Tls(e),
        })?;
        let agent = ureq::AgentBuilder::new()
            .tls_connector(tls)
            .timeout(Duration::from_secs(60))
            .build();
        Ok(Client {
            base: base_url.trim_end_matches('/').to_string(),
            agent,
            token,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Whether requests carry a bearer token.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    fn request(&self, method: &str, path: &str) -> (String, ureq::Request) {
        let url = format!("{}{path}", self.base);
        let mut r = self.agent.request(method, &url);
        if let Some(t) = &self.token {
            r = r.set("Authorization", &format!("Bearer {t}"));
        }
        (url, r)
    }

    fn handle(
        url: &str,
        result: Result<ureq::Response, ureq::Error>,
    ) -> Result<ureq::Response, ClientError> {
        match result {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(status, resp)) => {
                let (code, detail) = error_answer(resp);
                Err(ClientError::Api {
                    status,
                    code,
                    detail,
                })
            }
            Err(ureq::Error::Transport(t)) => Err(ClientError::Transport {
                url: url.to_string(),
                source: Box::new(t),
            }),
        }
    }

    fn json<T: serde::de::DeserializeOwned>(
        url: &str,
        r: ureq::Response,
    ) -> Result<T, ClientError> {
        r.into_json().map_err(|source| ClientError::BadResponse {
            url: url.to_string(),
            source,
        })
    }

    fn bytes(url: &str, r: ureq::Response) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        r.into_reader()
            .take(MAX_BODY)
            .read_to_end(&mut out)
            .map_err(|source| ClientError::BadResponse {
                url: url.to_string(),
                source,
            })?;
        Ok(out)
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (url, r) = self.request("GET", path);
        Self::json(&url, Self::handle(&url, r.call())?)
    }

    fn send_json<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let (url, r) = self.request(method, path);
        Self::json(&url, Self::handle(&url, r.send_json(body))?)
    }

    /// `GET /v1/ca`: the root certificate, PEM.
    pub fn ca(&self) -> Result<String, ClientError> {
        let (url, r) = self.request("GET", "/v1/ca");
        let b = Self::bytes(&url, Self::handle(&url, r.call())?)?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    /// `POST /v1/enroll/start`. A host subject enrolled for the first time needs an
    /// enrolment token as this client's token ([`Client::create_enroll_token`]).
    pub fn enroll_start(
        &self,
        req: &EnrollStartRequest,
    ) -> Result<EnrollStartResponse, ClientError> {
        self.send_json("POST", "/v1/enroll/start", req)
    }

    /// `POST /v1/enroll/finish`.
    pub fn enroll_finish(
        &self,
        req: &EnrollFinishRequest,
    ) -> Result<EnrollFinishResponse, ClientError> {
        self.send_json("POST", "/v1/enroll/finish", req)
    }

    /// `PUT /v1/certs/{name}` (needs a token with write permission on `name`).
    pub fn put_cert(&self, name: &str, pem: &str) -> Result<PutCertResponse, ClientError> {
        self.send_json(
            "PUT",
            &format!("/v1/certs/{name}"),
            &PutCertRequest {
                pem: pem.to_string(),
            },
        )
    }

    /// `GET /v1/certs/{name}` (needs a token with read permission): the PEM.
    pub fn get_cert(&self, name: &str) -> Result<String, ClientError> {
        let r: GetCertResponse = self.get_json(&format!("/v1/certs/{name}"))?;
        Ok(r.pem)
    }

    /// `POST /v1/revoke` (needs an admin token).
    pub fn revoke(&self, req: &RevokeRequest) -> Result<RevokeResponse, ClientError> {
        self.send_json("POST", "/v1/revoke", req)
    }

    /// Revokes a CA-issued certificate by serial.
    pub fn revoke_serial(
        &self,
        serial: &str,
        reason: Option<&str>,
    ) -> Result<RevokeResponse, ClientError> {
        self.revoke(&RevokeRequest {
            serial: Some(serial.to_string()),
            certificate: None,
            reason: reason.map(str::to_string),
        })
    }

    /// Revokes any certificate (by serial if the CA issued it, by fingerprint otherwise).
    pub fn revoke_cert(
        &self,
        pem: &str,
        reason: Option<&str>,
    ) -> Result<RevokeResponse, ClientError> {
        self.revoke(&RevokeRequest {
            serial: None,
            certificate: Some(pem.to_string()),
            reason: reason.map(str::to_string),
        })
    }

    /// `GET /v1/crl`: the DER CRL.
    pub fn crl(&self) -> Result<Vec<u8>, ClientError> {
        let (url, r) = self.request("GET", "/v1/crl");
        Self::bytes(&url, Self::handle(&url, r.call())?)
    }

    /// `GET /v1/status?fingerprint=`.
    pub fn status(&self, fingerprint: &str) -> Result<CertStatus, ClientError> {
        let (url, r) = self.request("GET", "/v1/status");
        let r = r.query("fingerprint", fingerprint);
        Self::json(&url, Self::handle(&url, r.call())?)
    }

    /// `POST /v1/enroll-tokens` (needs an admin token): a token that lets host `subject`
    /// enroll once, within `validity_secs` (default a day).
    pub fn create_enroll_token(
        &self,
        subject: &str,
        validity_secs: Option<u64>,
    ) -> Result<EnrollTokenResponse, ClientError> {
        self.send_json(
            "POST",
            "/v1/enroll-tokens",
            &EnrollTokenRequest {
                subject: subject.to_string(),
                validity_secs,
            },
        )
    }

    /// `POST /v1/coprocessor`: registers `[coprocessor, host AIK]` (needs write permission on
    /// `coprocessor/<fingerprint>`).
    pub fn register_coprocessor(
        &self,
        chain: &[String],
    ) -> Result<CoprocessorResponse, ClientError> {
        self.send_json(
            "POST",
            "/v1/coprocessor",
            &CoprocessorRequest {
                chain: chain.to_vec(),
            },
        )
    }
}

/// Whether `cert` is due for renewal at `now` (Unix seconds): ADR 0008's rule is to renew
/// when a third of the lifetime or less is left (and an expired certificate is due too).
pub fn renewal_due(
    cert: &openssl::x509::X509Ref,
    now: i64,
) -> Result<bool, openssl::error::ErrorStack> {
    let from = crate::util::asn1_to_unix(cert.not_before())?;
    let to = crate::util::asn1_to_unix(cert.not_after())?;
    let lifetime = (to - from).max(0);
    Ok(to - now <= lifetime / 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_in_the_last_third() {
        let key = crate::issue::generate_key().unwrap();
        let cert = crate::issue::root_cert(&key, "r", 3000).unwrap();
        // Lifetime 3000 s plus the backdating.
        let start = crate::util::asn1_to_unix(cert.not_before()).unwrap();
        let lifetime = 3000 + crate::issue::BACKDATE_SECS;
        let due_at = start + lifetime - lifetime / 3;
        assert!(!renewal_due(&cert, start).unwrap());
        assert!(!renewal_due(&cert, due_at - 1).unwrap());
        assert!(renewal_due(&cert, due_at).unwrap());
        assert!(renewal_due(&cert, start + lifetime + 10).unwrap());
    }

    #[test]
    fn api_errors_carry_status_and_code() {
        let e = ClientError::Api {
            status: 403,
            code: "activation_failed".into(),
            detail: "x".into(),
        };
        assert_eq!(
            (e.status(), e.code()),
            (Some(403), Some("activation_failed"))
        );
        assert!(Client::new("https://127.0.0.1:1", b"not pem", None).is_err());
    }
}
