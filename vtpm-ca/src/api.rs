//! The JSON shapes of the HTTPS API, shared by [`crate::server`] and [`crate::client`].
//!
//! Binary fields are standard base64; certificates are PEM strings; fingerprints are the
//! lower-case hex SHA-256 of the DER certificate; serials are upper-case hex. Every error
//! response is an [`ErrorBody`] `{error, detail}` with a matching HTTP status.
//!
//! | method and path | request | response |
//! |---|---|---|
//! | `GET /v1/ca` | - | root certificate, PEM text |
//! | `POST /v1/enroll/start` (bearer: enrolment token for a new host subject) | [`EnrollStartRequest`] | [`EnrollStartResponse`] |
//! | `POST /v1/enroll/finish` | [`EnrollFinishRequest`] | [`EnrollFinishResponse`] |
//! | `PUT /v1/certs/{name}` (bearer, write) | [`PutCertRequest`] | [`PutCertResponse`] |
//! | `GET /v1/certs/{name}` (bearer, read) | - | [`GetCertResponse`] |
//! | `POST /v1/revoke` (bearer, admin) | [`RevokeRequest`] | [`RevokeResponse`] |
//! | `GET /v1/crl` | - | DER X.509 CRL (`application/pkix-crl`) |
//! | `GET /v1/status?fingerprint=HEX` | - | [`CertStatus`] |
//! | `POST /v1/coprocessor` (bearer, write on `coprocessor/<fp>`) | [`CoprocessorRequest`] | [`CoprocessorResponse`] |
//! | `POST /v1/enroll-tokens` (bearer, admin) | [`EnrollTokenRequest`] | [`EnrollTokenResponse`] |

use serde::{Deserialize, Serialize};

pub use crate::issue::Kind;

pub use https_api::ErrorBody;

/// The `error` codes of [`ErrorBody`].
pub mod codes {
    pub use https_api::codes::{BAD_REQUEST, INTERNAL};
    pub const BAD_SUBJECT: &str = "bad_subject";
    pub const BAD_EK_CERTIFICATE: &str = "bad_ek_certificate";
    pub const BAD_AIK_PUBLIC: &str = "bad_aik_public";
    pub const AIK_NOT_RESTRICTED_SIGNING: &str = "aik_not_restricted_signing";
    pub const UNSUPPORTED_EK: &str = "unsupported_ek";
    pub const UNTRUSTED_EK: &str = "untrusted_ek";
    pub const UNTRUSTED_VEK_CHAIN: &str = "untrusted_vek_chain";
    pub const REVOKED: &str = "revoked";
    pub const UNREGISTERED_COPROCESSOR: &str = "unregistered_coprocessor";
    pub const UNKNOWN_SESSION: &str = "unknown_session";
    pub const SESSION_EXPIRED: &str = "session_expired";
    pub const ACTIVATION_FAILED: &str = "activation_failed";
    /// The subject is bound to another endorsement key (`vtpm-ca release` frees it).
    pub const SUBJECT_TAKEN: &str = "subject_taken";
    /// A new host subject needs an enrolment token (401).
    pub const ENROLLMENT_TOKEN_REQUIRED: &str = "enrollment_token_required";
    /// The enrolment token is unknown, expired, used, or for another subject (403).
    pub const ENROLLMENT_TOKEN_INVALID: &str = "enrollment_token_invalid";
    /// Too many requests from this client, or without a token (429).
    pub const RATE_LIMITED: &str = "rate_limited";
    /// Too many open enrollment sessions from this client, or without a token (429).
    pub const TOO_MANY_SESSIONS: &str = "too_many_sessions";
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    pub const FORBIDDEN: &str = "forbidden";
    pub const BAD_NAME: &str = "bad_name";
    pub const BAD_PEM: &str = "bad_pem";
    pub const NOT_FOUND: &str = "not_found";
    pub const UNKNOWN_SERIAL: &str = "unknown_serial";
    pub const UNTRUSTED_CHAIN: &str = "untrusted_chain";
    pub const BAD_FINGERPRINT: &str = "bad_fingerprint";
}

/// `POST /v1/enroll/start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollStartRequest {
    pub kind: Kind,
    /// Host id or vTPM instance id: the CN of the AIK certificate and the last segment of
    /// its name in the certificate store (`aik/<kind>/<subject>`). 1 to 64 characters of
    /// `[A-Za-z0-9._:@-]`, not starting with a dot. Bound on its first enrollment to the
    /// EK's (vEK's) public key: another key gets `subject_taken`.
    pub subject: String,
    /// The EK certificate first, then intermediates (PEM each). For a vTPM: vEK,
    /// coprocessor, host AIK.
    pub ek_cert_chain: Vec<String>,
    /// base64 of the AIK's `TPM2B_PUBLIC` (what `tpm2_createak -u` writes).
    pub aik_public: String,
}

/// Answer to [`EnrollStartRequest`]: the TPM2_MakeCredential output for the AIK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollStartResponse {
    pub session: String,
    /// base64 of the `TPM2B_ID_OBJECT` buffer (no outer size).
    pub credential_blob: String,
    /// base64 of the `TPM2B_ENCRYPTED_SECRET` buffer (no outer size).
    pub encrypted_secret: String,
    /// The AIK's name as the CA computed it, hex.
    pub aik_name: String,
    /// Unix time after which the session is gone.
    pub expires_at: u64,
}

/// `POST /v1/enroll/finish`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollFinishRequest {
    pub session: String,
    /// base64 of what `TPM2_ActivateCredential` returned.
    pub secret: String,
}

/// Answer to [`EnrollFinishRequest`]: the AIK certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollFinishResponse {
    /// The AIK certificate, PEM.
    pub certificate: String,
    /// The CA root, PEM.
    pub ca_certificate: String,
    pub serial: String,
    pub fingerprint: String,
    /// Its name in the certificate store: `aik/<kind>/<subject>`.
    pub name: String,
    /// Validity, Unix times.
    pub not_before: i64,
    pub not_after: i64,
}

/// `PUT /v1/certs/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutCertRequest {
    /// One certificate, or a leaf followed by its chain.
    pub pem: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutCertResponse {
    pub name: String,
    pub fingerprint: String,
    pub replaced: bool,
}

/// `GET /v1/certs/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetCertResponse {
    pub name: String,
    pub pem: String,
}

/// `POST /v1/revoke`: exactly one of `serial` and `certificate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeRequest {
    /// Serial of a CA-issued certificate (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Any certificate, PEM (revoked by serial if the CA issued it, by fingerprint if not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

pub type RevokeResponse = crate::revocation::Revoked;

/// A certificate's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Good,
    Revoked,
    Expired,
    /// Neither issued nor registered here.
    Unknown,
}

/// `GET /v1/status?fingerprint=HEX`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertStatus {
    pub fingerprint: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/coprocessor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoprocessorRequest {
    /// The coprocessor certificate first, then the host AIK certificate (PEM each).
    pub chain: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoprocessorResponse {
    pub fingerprint: String,
    /// `coprocessor/<fingerprint>` in the certificate store.
    pub name: String,
}

/// `POST /v1/enroll-tokens`: a host enrolment token for `subject`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollTokenRequest {
    /// The host subject it lets enroll (`aik/host/<subject>`).
    pub subject: String,
    /// Lifetime in seconds (default a day, at most 30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollTokenResponse {
    /// The token (shown once; the CA keeps its SHA-256): the bearer token of the host's
    /// `enroll/start`.
    pub token: String,
    pub subject: String,
    /// Unix time after which it is refused.
    pub expires_at: u64,
}
