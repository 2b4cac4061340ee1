//! What the two HTTPS services (vtpm-ca, vtpm-migrate's controller) and their blocking
//! clients have in common, so that both speak the same error dialect the same way.
//!
//! This crate owns the error body of every API error answer ([`ErrorBody`]) and the codes
//! both APIs give it ([`codes`]); the service side ([`server`]: the error answer, JSON
//! bodies, blocking work off the async workers, TLS set-up, the stop signal); and the
//! client side ([`client`]: TLS trusting one root only, reading an error answer back). Each
//! API keeps its routes, its own codes and its own error types.

pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};

/// Body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code (see each API's `codes`).
    pub error: String,
    /// Human-readable explanation.
    pub detail: String,
}

/// The `error` codes this crate answers with itself; each API re-exports them among its own.
pub mod codes {
    /// A body that is not the JSON the endpoint takes (400).
    pub const BAD_REQUEST: &str = "bad_request";
    /// A failure of the service itself (500), logged.
    pub const INTERNAL: &str = "internal";
}
