//! The HTTPS service (axum over OpenSSL, like vtpm-ca): the routes of
//! [`migration::api`], authentication of each request ([`crate::auth`]), the blocking
//! controller operations off the async workers, the recovery sweep, and the life cycle
//! (bind, print the address, graceful stop on SIGTERM/SIGINT).

use std::future::Future;
use std::io;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use axum_server::tls_openssl::{OpenSSLAcceptor, OpenSSLConfig};
use axum_server::Handle;
use migration::api::{codes, ErrorBody};
use migration::MigrationId;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::auth::{authenticate, AuthError, Caller};
use crate::controller::{Controller, ControllerError};

/// How long a graceful stop waits for open connections.
pub const GRACE: Duration = Duration::from_secs(5);
/// How often unfinished migrations are driven on ([`Controller::recover`]).
pub const SWEEP: Duration = Duration::from_secs(2);

/// An error as the API reports it.
#[derive(Debug)]
pub struct ApiError(ControllerError);

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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(self.0.code);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            log::error!("internal error: {}", self.0.detail);
        }
        let body = ErrorBody {
            error: self.0.code.to_owned(),
            detail: self.0.detail,
        };
        (status, Json(body)).into_response()
    }
}

impl From<ControllerError> for ApiError {
    fn from(e: ControllerError) -> Self {
        ApiError(e)
    }
}

fn api_error(code: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError(ControllerError::new(code, detail))
}

type Shared = Arc<Controller>;

/// Runs a blocking controller operation on tokio's blocking pool.
async fn blocking<T, F>(c: &Shared, f: F) -> Result<T, ApiError>
where
    F: FnOnce(&Controller) -> Result<T, ControllerError> + Send + 'static,
    T: Send + 'static,
{
    let c = Arc::clone(c);
    match tokio::task::spawn_blocking(move || f(&c)).await {
        Ok(r) => r.map_err(ApiError),
        Err(e) => Err(api_error(codes::INTERNAL, format!("worker failed: {e}"))),
    }
}

fn json_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| api_error(codes::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

fn migration_id(text: &str) -> Result<MigrationId, ApiError> {
    text.parse()
        .map_err(|e: migration::ticket::BadId| api_error(codes::BAD_REQUEST, e.to_string()))
}

/// Who sent the request.
fn caller(
    c: &Controller,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Caller, ApiError> {
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let s = c.settings();
    authenticate(
        |name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        },
        method.as_str(),
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

/// The API's routes.
pub fn router(c: Arc<Controller>) -> Router {
    Router::new()
        .route("/v1/instances", post(register))
        .route("/v1/instances/{instance}", get(instance))
        .route("/v1/migrations", post(start).get(list))
        .route("/v1/migrations/{id}", get(show))
        .route("/v1/migrations/{id}/attest", post(attest))
        .route("/v1/migrations/{id}/{action}", post(step))
        .route("/v1/tickets", post(ticket))
        .fallback(|| async { api_error(codes::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            api_error(codes::BAD_REQUEST, "method not allowed on this endpoint")
        })
        .with_state(c)
}

async fn register(
    State(c): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = caller(&c, &method, &uri, &headers, &body)?;
    let req = json_body(&body)?;
    Ok(Json(blocking(&c, move |c| c.register(&who, &req)).await?).into_response())
}

async fn instance(
    State(c): State<Shared>,
    UrlPath(instance): UrlPath<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = caller(&c, &method, &uri, &headers, &[])?;
    Ok(Json(blocking(&c, move |c| c.instance(&who, &instance)).await?).into_response())
}

async fn start(
    State(c): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = caller(&c, &method, &uri, &headers, &body)?;
    let req = json_body(&body)?;
    Ok(Json(blocking(&c, move |c| c.start(&who, &req)).await?).into_response())
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    active: Option<bool>,
}

async fn list(
    State(c): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let who = caller(&c, &method, &uri, &headers, &[])?;
    let active = query.ok().and_then(|Query(q)| q.active).unwrap_or(false);
    Ok(Json(blocking(&c, move |c| c.list(&who, active)).await?).into_response())
}

async fn show(
    State(c): State<Shared>,
    UrlPath(id): UrlPath<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = caller(&c, &method, &uri, &headers, &[])?;
    let id = migration_id(&id)?;
    Ok(Json(blocking(&c, move |c| c.get(&who, &id)).await?).into_response())
}

async fn attest(
    State(c): State<Shared>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    // Authenticated by the quote itself (the host AIK certificate and its signature).
    let id = migration_id(&id)?;
    let req = json_body(&body)?;
    Ok(Json(blocking(&c, move |c| c.attest(&id, &req)).await?).into_response())
}

async fn ticket(
    State(c): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = caller(&c, &method, &uri, &headers, &body)?;
    let req = json_body(&body)?;
    Ok(Json(blocking(&c, move |c| c.ticket(&who, &req)).await?).into_response())
}

async fn step(
    State(c): State<Shared>,
    UrlPath((id, action)): UrlPath<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = caller(&c, &method, &uri, &headers, &body)?;
    let id = migration_id(&id)?;
    let view = match action.as_str() {
        "sealed" => {
            let req = json_body(&body)?;
            blocking(&c, move |c| c.sealed(&who, &id, &req)).await?
        }
        "claim" => {
            let req = json_body(&body)?;
            blocking(&c, move |c| c.claim(&who, &id, &req)).await?
        }
        "imported" => blocking(&c, move |c| c.imported(&who, &id)).await?,
        "commit" => blocking(&c, move |c| c.commit(&who, &id)).await?,
        "abort" => {
            let req: migration::api::AbortRequest = json_body(&body)?;
            blocking(&c, move |c| c.abort(&who, &id, &req.reason)).await?
        }
        "source-deleted" => blocking(&c, move |c| c.source_deleted(&who, &id)).await?,
        other => return Err(api_error(codes::NOT_FOUND, format!("no step {other:?}"))),
    };
    Ok(Json(view).into_response())
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
    let config = OpenSSLConfig::from_pem_file(tls_cert, tls_key)
        .map_err(|e| io::Error::other(format!("TLS configuration: {e}")))?;
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

/// Completes on SIGTERM or SIGINT.
pub async fn termination_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => log::info!("SIGTERM: stopping"),
                _ = i.recv() => log::info!("SIGINT: stopping"),
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            log::error!("cannot wait for signals ({e}); stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}
