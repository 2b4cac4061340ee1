//! The service side: an API error as an HTTP answer, JSON request bodies, blocking
//! operations on tokio's blocking pool, the TLS configuration, and the stop signal.

use std::io;
use std::path::Path;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use axum_server::tls_openssl::OpenSSLConfig;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{codes, ErrorBody};

/// An error as the API reports it: an HTTP status and an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
        }
    }

    /// A failure of the service (500, [`codes::INTERNAL`]); logged here, since the client
    /// cannot do anything about it.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        log::error!("internal error: {e}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::INTERNAL,
            e.to_string(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let body = ErrorBody {
            error: self.code.to_owned(),
            detail: self.detail,
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

/// The JSON request `body`, or a 400 [`codes::BAD_REQUEST`] saying why not.
pub fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            codes::BAD_REQUEST,
            format!("invalid JSON body: {e}"),
        )
    })
}

/// Runs a blocking operation on the service's `state` on tokio's blocking pool (the
/// operations write files and databases; the async workers must not wait on them).
pub async fn blocking<S, T, E, F>(state: &Arc<S>, f: F) -> Result<T, ApiError>
where
    S: Send + Sync + 'static,
    F: FnOnce(&S) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    let state = Arc::clone(state);
    match tokio::task::spawn_blocking(move || f(&state)).await {
        Ok(r) => r.map_err(Into::into),
        Err(e) => Err(ApiError::internal(format!("worker failed: {e}"))),
    }
}

/// [`blocking`], answering the operation's result as JSON.
pub async fn blocking_json<S, T, E, F>(state: &Arc<S>, f: F) -> Result<Response, ApiError>
where
    S: Send + Sync + 'static,
    F: FnOnce(&S) -> Result<T, E> + Send + 'static,
    T: Serialize + Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    Ok(Json(blocking(state, f).await?).into_response())
}

/// The TLS configuration from a PEM certificate (chain) and its PEM key.
pub fn tls_config(cert: &Path, key: &Path) -> io::Result<OpenSSLConfig> {
    OpenSSLConfig::from_pem_file(cert, key)
        .map_err(|e| io::Error::other(format!("TLS configuration: {e}")))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_to_slow_down_says_when_to_retry() {
        let r = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "x").into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let r = ApiError::new(StatusCode::FORBIDDEN, "forbidden", "x").into_response();
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn a_bad_body_is_a_bad_request() {
        let e = json_body::<ErrorBody>(b"{").unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, codes::BAD_REQUEST)
        );
        assert!(e.detail.starts_with("invalid JSON body: "), "{}", e.detail);
    }
}
