//! Blocking HTTPS client of the migration controller, for the daemons and the operator CLI.
//!
//! TLS through native-tls trusting only the controller's certificate (no system roots).
//! An operator authenticates with a bearer token; a host signs each request with its
//! coprocessor key and sends its chain ([`crate::api`]). API errors come back as
//! [`ClientError::Api`] with the controller's code; an unreachable controller as
//! [`ClientError::Transport`] (what a daemon retries on).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use https_api::client::{error_answer, pinned_tls, TlsError};
use identity::{CoprocessorKey, Purpose};
use openssl::x509::X509;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{
    AbortRequest, AttestRequest, ClaimRequest, InstanceView, MigrationView, RegisterInstance,
    SealedRequest, StartMigration, TicketRequest, TicketResponse, HEADER_CHAIN, HEADER_SIGNATURE,
    HEADER_TIME,
};
use crate::ticket::MigrationId;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the migration controller answered {status}: {code}: {detail}")]
    Api {
        status: u16,
        code: String,
        detail: String,
    },
    #[error("invalid migration controller certificate: {0}")]
    BadRoot(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot reach the migration controller at {url}: {detail}")]
    Transport { url: String, detail: String },
    #[error("unexpected response from {url}: {detail}")]
    BadResponse { url: String, detail: String },
    #[error("signing the request: {0}")]
    Sign(String),
}

impl ClientError {
    /// The controller's error code, if it answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the controller could not be reached (worth retrying).
    pub fn is_transport(&self) -> bool {
        matches!(self, ClientError::Transport { .. })
    }
}

/// A host's identity towards the controller: its coprocessor key and chain.
pub struct HostCredentials {
    pub key: CoprocessorKey,
    /// The coprocessor certificate, then the host AIK certificate.
    pub chain: Vec<X509>,
}

impl HostCredentials {
    /// A host's credentials from its identity directory: the coprocessor key (unwrapped
    /// with `host_key`) and its chain. Generic over the error, so each caller keeps the
    /// messages of its own error type.
    pub fn load<E>(
        dir: &vtpm_host::HostDir,
        host_key: &vtpm_state::keys::HostKey,
    ) -> Result<Self, E>
    where
        E: From<vtpm_host::AgentError> + From<identity::IdentityError>,
    {
        Ok(HostCredentials {
            key: CoprocessorKey::open(dir.path(), host_key)?,
            chain: vec![dir.coprocessor_cert()?, dir.host_aik_cert()?],
        })
    }
}

impl std::fmt::Debug for HostCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCredentials").finish_non_exhaustive()
    }
}

/// How requests are authenticated.
#[derive(Debug, Clone)]
pub enum Auth {
    None,
    Operator(String),
    Host(Arc<HostCredentials>),
}

/// A client of one controller.
#[derive(Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
    auth: Auth,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

impl Client {
    /// A client of the controller at `base_url` (`https://host:port`), trusting only
    /// `controller_pem` (the controller's certificate, which issued its TLS certificate).
    pub fn new(base_url: &str, controller_pem: &[u8], auth: Auth) -> Result<Client, ClientError> {
        let tls = pinned_tls(controller_pem).map_err(|e| match e {
            TlsError::BadRoot(e) => ClientError::BadRoot(e.to_string()),
            TlsError::Tls(e) => ClientError::Tls(e.to_string()),
        })?;
        let agent = ureq::AgentBuilder::new()
            .tls_connector(tls)
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build();
        Ok(Client {
            base: base_url.trim_end_matches('/').to_owned(),
            agent,
            auth,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.request(method, &url);
        match &self.auth {
            Auth::None => {}
            Auth::Operator(token) => req = req.set("Authorization", &format!("Bearer {token}")),
            Auth::Host(creds) => {
                let time = now_secs();
                let msg = crate::api::request_message(method, path, time, body.unwrap_or(&[]));
                let sig = creds
                    .key
                    .sign_for(Purpose::ControllerRequest, &msg)
                    .map_err(|e| ClientError::Sign(e.to_string()))?;
                let chain = creds
                    .chain
                    .iter()
                    .map(|c| c.to_der().map(|d| b64(&d)))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| ClientError::Sign(e.to_string()))?
                    .join(",");
                req = req
                    .set(HEADER_SIGNATURE, &b64(sig.to_der().as_bytes()))
                    .set(HEADER_TIME, &time.to_string())
                    .set(HEADER_CHAIN, &chain);
            }
        }
        let result = match body {
            Some(b) => req.set("Content-Type", "application/json").send_bytes(b),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(status, resp)) => {
                let (code, detail) = error_answer(resp);
                return Err(ClientError::Api {
                    status,
                    code,
                    detail,
                });
            }
            Err(e) => {
                return Err(ClientError::Transport {
                    url,
                    detail: e.to_string(),
                })
            }
        };
        resp.into_json().map_err(|e| ClientError::BadResponse {
            url,
            detail: e.to_string(),
        })
    }

    fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Sign(e.to_string()))?;
        self.call("POST", path, Some(&bytes))
    }

    /// `POST /v1/instances`.
    pub fn register_instance(
        &self,
        instance: &str,
        owner: &str,
    ) -> Result<InstanceView, ClientError> {
        self.post(
            "/v1/instances",
            &RegisterInstance {
                instance: instance.to_owned(),
                owner: owner.to_owned(),
            },
        )
    }

    /// `GET /v1/instances/{instance}`.
    pub fn instance(&self, instance: &str) -> Result<InstanceView, ClientError> {
        self.call("GET", &format!("/v1/instances/{instance}"), None)
    }

    /// `POST /v1/migrations`.
    pub fn start(&self, req: &StartMigration) -> Result<MigrationView, ClientError> {
        self.post("/v1/migrations", req)
    }

    /// `GET /v1/migrations?active=`.
    pub fn list(&self, active_only: bool) -> Result<Vec<MigrationView>, ClientError> {
        self.call("GET", &format!("/v1/migrations?active={active_only}"), None)
    }

    /// `GET /v1/migrations/{id}`.
    pub fn migration(&self, id: &MigrationId) -> Result<MigrationView, ClientError> {
        self.call("GET", &format!("/v1/migrations/{id}"), None)
    }

    /// `POST /v1/migrations/{id}/attest`.
    pub fn attest(
        &self,
        id: &MigrationId,
        req: &AttestRequest,
    ) -> Result<MigrationView, ClientError> {
        self.post(&format!("/v1/migrations/{id}/attest"), req)
    }

    /// `POST /v1/tickets`.
    pub fn ticket(&self, instance: &str) -> Result<TicketResponse, ClientError> {
        self.post(
            "/v1/tickets",
            &TicketRequest {
                instance: instance.to_owned(),
            },
        )
    }

    /// `POST /v1/migrations/{id}/sealed`.
    pub fn sealed(
        &self,
        id: &MigrationId,
        digest: &[u8; 32],
    ) -> Result<MigrationView, ClientError> {
        self.post(
            &format!("/v1/migrations/{id}/sealed"),
            &SealedRequest {
                package_sha256: hex::encode(digest),
            },
        )
    }

    /// `POST /v1/migrations/{id}/claim`.
    pub fn claim(
        &self,
        id: &MigrationId,
        digest: &[u8; 32],
        claim: &[u8; 16],
    ) -> Result<MigrationView, ClientError> {
        self.post(
            &format!("/v1/migrations/{id}/claim"),
            &ClaimRequest {
                package_sha256: hex::encode(digest),
                claim: hex::encode(claim),
            },
        )
    }

    /// `POST /v1/migrations/{id}/imported`.
    pub fn imported(&self, id: &MigrationId) -> Result<MigrationView, ClientError> {
        self.post(
            &format!("/v1/migrations/{id}/imported"),
            &serde_json::json!({}),
        )
    }

    /// `POST /v1/migrations/{id}/commit`.
    pub fn commit(&self, id: &MigrationId) -> Result<MigrationView, ClientError> {
        self.post(
            &format!("/v1/migrations/{id}/commit"),
            &serde_json::json!({}),
        )
    }

    /// `POST /v1/migrations/{id}/abort`.
    pub fn abort(&self, id: &MigrationId, reason: &str) -> Result<MigrationView, ClientError> {
        self.post(
            &format!("/v1/migrations/{id}/abort"),
            &AbortRequest {
                reason: reason.to_owned(),
            },
        )
    }

    /// `POST /v1/migrations/{id}/source-deleted`.
    pub fn source_deleted(&self, id: &MigrationId) -> Result<MigrationView, ClientError> {
        self.post(
            &format!("/v1/migrations/{id}/source-deleted"),
            &serde_json::json!({}),
        )
    }
}

/// Runs `f` until it succeeds or fails with an answer of the controller, retrying while the
/// controller cannot be reached, for at most `patience` (a restarting controller is back
/// within seconds; every step is idempotent, so repeating a request whose answer was lost
/// is safe).
pub fn retry<T>(
    patience: Duration,
    mut f: impl FnMut() -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let deadline = Instant::now() + patience;
    let mut pause = Duration::from_millis(50);
    loop {
        match f() {
            Err(e) if e.is_transport() && Instant::now() < deadline => {
                log::debug!("migration controller unreachable ({e}); retrying");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}
