//! The HTTPS service (axum over OpenSSL, like vtpm-ca): the routes of
//! [`migration::api`], authentication of each request ([`crate::auth`]), the blocking
//! controller operations off the async workers, the recovery sweep, and the life cycle
//! (bind, print the address, graceful stop on SIGTERM/SIGINT).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path as UrlPath, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use axum_server::tls_openssl::OpenSSLAcceptor;
use axum_server::Handle;
use https_api::server::{blocking_json, json_body};
use migration::api::codes;
use migration::MigrationId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::auth::{authenticate, AuthError, Caller};
use crate::controller::{Controller, ControllerError};

/// How long a graceful stop waits for open connections.
pub const GRACE: Duration = Duration::from_secs(5);
/// How often unfinished migrations are driven on ([`Controller::recover`]).
pub const SWEEP: Duration = Duration::from_secs(2);

pub use https_api::server::{termination_signal, ApiError};

/// The HTTP status of each of [`codes`].
fn status_of(code: &str) -> StatusCode {
    match code {
        codes::BAD_REQUEST => StatusCode::BAD_REQUEST,
        codes::UNAUTHENTICATED => StatusCode::UNAUTHORIZED,
        codes::FORBIDDEN
        | codes::REVOKED
        | codes::UNTRUSTED_CHAIN
        | codes::QUOTE_INVALID
        | codes::NOT_OWNER => StatusCode::FORBIDDEN,
        codes::NOT_FOUND | codes::UNKNOWN_INSTANCE | codes::NO_TICKET => StatusCode::NOT_FOUND,
        codes::EXPIRED => StatusCode::GONE,
        codes::CA_UNAVAILABLE => StatusCode::SERVICE_UNAVAILABLE,
        codes::INTERNAL => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::CONFLICT,
    }
}

impl From<ControllerError> for ApiError {
    fn from(e: ControllerError) -> Self {
        let status = status_of(e.code);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            return ApiError::internal(e.detail);
        }
        ApiError::new(status, e.code, e.detail)
    }
}

fn api_error(code: &'static str, detail: impl Into<String>) -> ApiError {
    ControllerError::new(code, detail).into()
}

type Shared = Arc<Controller>;

fn migration_id(text: &str) -> Result<MigrationId, ApiError> {
    text.parse()
        .map_err(|e: migration::ticket::BadId| api_error(codes::BAD_REQUEST, e.to_string()))
}

/// What authenticates a request besides its body: its method, path and headers.
struct Signed {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl<S: Send + Sync> FromRequestParts<S> for Signed {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Signed {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
        })
    }
}

/// Who sent the request `signed` with `body`.
fn caller(c: &Controller, signed: &Signed, body: &[u8]) -> Result<Caller, ApiError> {
    let uri = &signed.uri;
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let s = c.settings();
    authenticate(
        |name| {
            signed
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        },
        signed.method.as_str(),
        path,
        body,
        &s.admin_token_sha256,
        &s.ca_root,
        now,
    )
    .map_err(|e| {
        let code = match e {
            AuthError::UntrustedChain(_) => codes::UNTRUSTED_CHAIN,
            _ => codes::UNAUTHENTICATED,
        };
        log::warn!("refused a request to {path}: {e}");
        api_error(code, e.to_string())
    })
}

/// An operation of the request's caller on its JSON body, answered as JSON.
async fn signed_json<Req, T>(
    c: Shared,
    signed: Signed,
    body: Bytes,
    f: fn(&Controller, &Caller, &Req) -> Result<T, ControllerError>,
) -> Result<Response, ApiError>
where
    Req: DeserializeOwned + Send + 'static,
    T: Serialize + Send + 'static,
{
    let who = caller(&c, &signed, &body)?;
    let req: Req = json_body(&body)?;
    blocking_json(&c, move |c| f(c, &who, &req)).await
}

/// The API's routes.
pub fn router(c: Arc<Controller>) -> Router {
    Router::new()
        .route(
            "/v1/instances",
            post(|State(c), s, body| signed_json(c, s, body, Controller::register)),
        )
        .route("/v1/instances/{instance}", get(instance))
        .route(
            "/v1/migrations",
            post(|State(c), s, body| signed_json(c, s, body, Controller::start)).get(list),
        )
        .route("/v1/migrations/{id}", get(show))
        .route("/v1/migrations/{id}/attest", post(attest))
        .route("/v1/migrations/{id}/{action}", post(step))
        .route(
            "/v1/tickets",
            post(|State(c), s, body| signed_json(c, s, body, Controller::ticket)),
        )
        .fallback(|| async { api_error(codes::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            api_error(codes::BAD_REQUEST, "method not allowed on this endpoint")
        })
        .with_state(c)
}

async fn instance(
    State(c): State<Shared>,
    UrlPath(instance): UrlPath<String>,
    signed: Signed,
) -> Result<Response, ApiError> {
    let who = caller(&c, &signed, &[])?;
    blocking_json(&c, move |c| c.instance(&who, &instance)).await
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    active: Option<bool>,
}

async fn list(
    State(c): State<Shared>,
    signed: Signed,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let who = caller(&c, &signed, &[])?;
    let active = query.ok().and_then(|Query(q)| q.active).unwrap_or(false);
    blocking_json(&c, move |c| c.list(&who, active)).await
}

async fn show(
    State(c): State<Shared>,
    UrlPath(id): UrlPath<String>,
    signed: Signed,
) -> Result<Response, ApiError> {
    let who = caller(&c, &signed, &[])?;
    let id = migration_id(&id)?;
    blocking_json(&c, move |c| c.get(&who, &id)).await
}

async fn attest(
    State(c): State<Shared>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    // Authenticated by the quote itself (the host AIK certificate and its signature).
    let id = migration_id(&id)?;
    let req = json_body(&body)?;
    blocking_json(&c, move |c| c.attest(&id, &req)).await
}

async fn step(
    State(c): State<Shared>,
    UrlPath((id, action)): UrlPath<(String, String)>,
    signed: Signed,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = caller(&c, &signed, &body)?;
    let id = migration_id(&id)?;
    match action.as_str() {
        "sealed" => {
            let req = json_body(&body)?;
            blocking_json(&c, move |c| c.sealed(&who, &id, &req)).await
        }
        "claim" => {
            let req = json_body(&body)?;
            blocking_json(&c, move |c| c.claim(&who, &id, &req)).await
        }
        "imported" => blocking_json(&c, move |c| c.imported(&who, &id)).await,
        "commit" => blocking_json(&c, move |c| c.commit(&who, &id)).await,
        "abort" => {
            let req: migration::api::AbortRequest = json_body(&body)?;
            blocking_json(&c, move |c| c.abort(&who, &id, &req.reason)).await
        }
        "source-deleted" => blocking_json(&c, move |c| c.source_deleted(&who, &id)).await,
        other => Err(api_error(codes::NOT_FOUND, format!("no step {other:?}"))),
    }
}

/// Serves `c` over HTTPS (`tls_cert`, `tls_key`) on `listener` until `shutdown` completes,
/// sweeping unfinished migrations every [`SWEEP`].
pub async fn serve(
    c: Arc<Controller>,
    listener: TcpListener,
    tls_cert: &std::path::Path,
    tls_key: &std::path::Path,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let config = https_api::server::tls_config(tls_cert, tls_key)?;
    listener.set_nonblocking(true)?;
    let handle = Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(Some(GRACE));
    });
    let sweeper = Arc::clone(&c);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP);
        loop {
            tick.tick().await;
            let c = Arc::clone(&sweeper);
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || c.recover()).await {
                log::warn!("recovery sweep: {e}");
            }
        }
    });
    axum_server::from_tcp(listener)
        .acceptor(OpenSSLAcceptor::new(config))
        .handle(handle)
        .serve(router(c).into_make_service())
        .await
}
