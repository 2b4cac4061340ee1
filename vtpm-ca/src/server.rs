//! The HTTPS service: axum over OpenSSL (axum-server), with the TLS certificate `init`
//! issued from the CA key.
//!
//! This module owns the routes, the mapping of every module error to an HTTP status and a
//! JSON `{error, detail}` body ([`ApiError`]), bearer-token extraction, running the blocking
//! CA operations off the async workers, the connection limits ([`LimitedAcceptor`]: a
//! client over its share of open connections is closed before the TLS handshake, which
//! itself must finish within [`HANDSHAKE_TIMEOUT`]), and the server's life cycle (bind,
//! print the address, graceful stop on SIGTERM/SIGINT). The routes are listed in
//! [`crate::api`].

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use axum_server::accept::Accept;
use axum_server::tls_openssl::{OpenSSLAcceptor, OpenSSLConfig};
use axum_server::Handle;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use https_api::server::{blocking, blocking_json, json_body};

use crate::api::{codes, GetCertResponse, PutCertRequest};
use crate::ca::Ca;
use crate::certstore::CertStoreError;
use crate::coprocessor::RegistrationError;
use crate::enroll::{Caller, EnrollError};
use crate::limits::{ConnectionLimiter, ConnectionPermit};
use crate::revocation::RevocationError;
use crate::store::StoreError;
use crate::tokens::TokenError;

/// How long a graceful stop waits for open connections.
pub const GRACE: Duration = Duration::from_secs(5);
/// How long a client has for the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub use https_api::server::{termination_signal, ApiError};

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::BadSerial(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, e.to_string())
            }
            StoreError::BadFingerprint(_) => ApiError::new(
                StatusCode::BAD_REQUEST,
                codes::BAD_FINGERPRINT,
                e.to_string(),
            ),
            other => ApiError::internal(other),
        }
    }
}

impl From<CertStoreError> for ApiError {
    fn from(e: CertStoreError) -> Self {
        use CertStoreError as E;
        let (status, code) = match &e {
            E::Unauthenticated => (StatusCode::UNAUTHORIZED, codes::UNAUTHENTICATED),
            E::Forbidden { .. } => (StatusCode::FORBIDDEN, codes::FORBIDDEN),
            E::BadName(_) => (StatusCode::BAD_REQUEST, codes::BAD_NAME),
            E::BadPem(_) => (StatusCode::BAD_REQUEST, codes::BAD_PEM),
            E::NotFound(_) => (StatusCode::NOT_FOUND, codes::NOT_FOUND),
            E::PrincipalExists(_) | E::BadPrincipal(_) | E::BadPrefix(_) => {
                (StatusCode::BAD_REQUEST, codes::BAD_REQUEST)
            }
            E::Store(_) | E::Crypto(_) => return ApiError::internal(e),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<RevocationError> for ApiError {
    fn from(e: RevocationError) -> Self {
        use RevocationError as E;
        let (status, code) = match e {
            E::UnknownSerial(_) => (StatusCode::NOT_FOUND, codes::UNKNOWN_SERIAL),
            // A root without a key identifier (no store makes one) is answered as it was
            // when OpenSSL built the CRL.
            E::RevokeRoot
            | E::BadPem(_)
            | E::BadTarget
            | E::BadValidity(_)
            | E::Unlistable(_)
            | E::NoKeyIdentifier => (StatusCode::BAD_REQUEST, codes::BAD_REQUEST),
            E::Access(e) => return e.into(),
            E::Store(e) => return e.into(),
            E::UnsupportedCaKey | E::Crypto(_) | E::Der(_) => return ApiError::internal(e),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<RegistrationError> for ApiError {
    fn from(e: RegistrationError) -> Self {
        use RegistrationError as E;
        let (status, code) = match e {
            E::Untrusted(_) => (StatusCode::FORBIDDEN, codes::UNTRUSTED_CHAIN),
            E::Revoked { .. } => (StatusCode::FORBIDDEN, codes::REVOKED),
            E::EmptyChain | E::BadPem { .. } => (StatusCode::BAD_REQUEST, codes::BAD_REQUEST),
            E::Access(e) => return e.into(),
            E::Store(e) => return e.into(),
            E::Crypto(_) => return ApiError::internal(e),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<EnrollError> for ApiError {
    fn from(e: EnrollError) -> Self {
        use EnrollError as E;
        let (status, code) = match e {
            E::BadBase64 { .. } => (StatusCode::BAD_REQUEST, codes::BAD_REQUEST),
            E::BadSubject(_) => (StatusCode::BAD_REQUEST, codes::BAD_SUBJECT),
            E::BadEkCertificate(_) => (StatusCode::BAD_REQUEST, codes::BAD_EK_CERTIFICATE),
            E::BadAikPublic(_) => (StatusCode::BAD_REQUEST, codes::BAD_AIK_PUBLIC),
            E::AikNotRestrictedSigning(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                codes::AIK_NOT_RESTRICTED_SIGNING,
            ),
            E::UnsupportedEk(_) => (StatusCode::UNPROCESSABLE_ENTITY, codes::UNSUPPORTED_EK),
            E::UntrustedEk(_) => (StatusCode::FORBIDDEN, codes::UNTRUSTED_EK),
            E::UntrustedVekChain(_) => (StatusCode::FORBIDDEN, codes::UNTRUSTED_VEK_CHAIN),
            E::Revoked { .. } => (StatusCode::FORBIDDEN, codes::REVOKED),
            E::UnregisteredCoprocessor { .. } => {
                (StatusCode::FORBIDDEN, codes::UNREGISTERED_COPROCESSOR)
            }
            E::UnknownSession(_) => (StatusCode::NOT_FOUND, codes::UNKNOWN_SESSION),
            E::SessionExpired(_) => (StatusCode::GONE, codes::SESSION_EXPIRED),
            E::ActivationFailed => (StatusCode::FORBIDDEN, codes::ACTIVATION_FAILED),
            E::SubjectTaken { .. } => (StatusCode::FORBIDDEN, codes::SUBJECT_TAKEN),
            E::EnrollTokenRequired { .. } => {
                (StatusCode::UNAUTHORIZED, codes::ENROLLMENT_TOKEN_REQUIRED)
            }
            E::EnrollTokenRefused(_) => (StatusCode::FORBIDDEN, codes::ENROLLMENT_TOKEN_INVALID),
            E::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, codes::RATE_LIMITED),
            E::TooManySessions { .. } => (StatusCode::TOO_MANY_REQUESTS, codes::TOO_MANY_SESSIONS),
            E::Store(e) => return e.into(),
            E::CertStore(e) => return e.into(),
            E::Issue(_) | E::Crypto(_) => return ApiError::internal(e),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        use TokenError as E;
        let (status, code) = match e {
            E::BadSubject(_) => (StatusCode::BAD_REQUEST, codes::BAD_SUBJECT),
            E::BadValidity(_) => (StatusCode::BAD_REQUEST, codes::BAD_REQUEST),
            E::Access(e) => return e.into(),
            E::Store(e) => return e.into(),
            E::Crypto(_) => return ApiError::internal(e),
        };
        ApiError::new(status, code, e.to_string())
    }
}

type Shared = Arc<Ca>;

/// An operation on a JSON body with the request's bearer token, answered as JSON.
async fn authorized_json<Req, T, E>(
    ca: Shared,
    headers: HeaderMap,
    body: Bytes,
    f: fn(&Ca, &Req, Option<&str>) -> Result<T, E>,
) -> Result<Response, ApiError>
where
    Req: DeserializeOwned + Send + 'static,
    T: Serialize + Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    let token = bearer(&headers);
    let req: Req = json_body(&body)?;
    blocking_json(&ca, move |ca| f(ca, &req, token.as_deref())).await
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// The API's routes.
pub fn router(ca: Arc<Ca>) -> Router {
    Router::new()
        .route("/v1/ca", get(get_ca))
        .route(
            "/v1/enroll/start",
            post(|State(ca), addr, headers, body| {
                enroll_json(ca, addr, headers, body, Ca::enroll_start_as)
            }),
        )
        .route(
            "/v1/enroll/finish",
            post(|State(ca), addr, headers, body| {
                enroll_json(ca, addr, headers, body, Ca::enroll_finish_as)
            }),
        )
        .route("/v1/certs/{*name}", get(get_cert).put(put_cert))
        .route(
            "/v1/revoke",
            post(|State(ca), headers, body| authorized_json(ca, headers, body, Ca::revoke)),
        )
        .route("/v1/crl", get(crl))
        .route("/v1/status", get(status))
        .route(
            "/v1/coprocessor",
            post(|State(ca), headers, body| {
                authorized_json(ca, headers, body, Ca::register_coprocessor)
            }),
        )
        .route(
            "/v1/enroll-tokens",
            post(|State(ca), headers, body| {
                authorized_json(ca, headers, body, Ca::create_enroll_token)
            }),
        )
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                codes::BAD_REQUEST,
                "method not allowed on this endpoint",
            )
        })
        .with_state(ca)
}

async fn get_ca(State(ca): State<Shared>) -> Result<Response, ApiError> {
    let pem = blocking(&ca, |ca| ca.ca_pem()).await?;
    Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response())
}

/// The enrollment caller of a request: its address (absent when the router is used without
/// connection information) and its bearer token.
fn caller(addr: Option<axum::Extension<ConnectInfo<SocketAddr>>>, headers: &HeaderMap) -> Caller {
    Caller {
        addr: addr.map(|axum::Extension(ConnectInfo(a))| a.ip()),
        token: bearer(headers),
    }
}

/// An enrollment step on a JSON body by the request's [`caller`], answered as JSON.
async fn enroll_json<Req, T>(
    ca: Shared,
    addr: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
    f: fn(&Ca, &Req, &Caller) -> Result<T, EnrollError>,
) -> Result<Response, ApiError>
where
    Req: DeserializeOwned + Send + 'static,
    T: Serialize + Send + 'static,
{
    let caller = caller(addr, &headers);
    let req: Req = json_body(&body)?;
    blocking_json(&ca, move |ca| f(ca, &req, &caller)).await
}

async fn put_cert(
    State(ca): State<Shared>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let token = bearer(&headers);
    let req: PutCertRequest = match json_body(&body) {
        Ok(r) => r,
        Err(e) => {
            log::warn!("certstore: refused to store {name:?}: {}", e.detail);
            return Err(e);
        }
    };
    blocking_json(&ca, move |ca| {
        ca.put_cert(&name, &req.pem, token.as_deref())
    })
    .await
}

async fn get_cert(
    State(ca): State<Shared>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = bearer(&headers);
    blocking_json(&ca, move |ca| {
        ca.get_cert(&name, token.as_deref())
            .map(|pem| GetCertResponse { name, pem })
    })
    .await
}

async fn crl(State(ca): State<Shared>) -> Result<Response, ApiError> {
    let der = blocking(&ca, |ca| ca.crl()).await?;
    Ok(([(header::CONTENT_TYPE, "application/pkix-crl")], der).into_response())
}

#[derive(Debug, Deserialize)]
struct StatusQuery {
    fingerprint: Option<String>,
}

async fn status(
    State(ca): State<Shared>,
    query: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let fp = query
        .ok()
        .and_then(|Query(q)| q.fingerprint)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                codes::BAD_FINGERPRINT,
                "query parameter fingerprint=<sha256 hex> is required",
            )
        })?;
    blocking_json(&ca, move |ca| ca.status(&fp)).await
}

/// The TLS configuration from the store's `tls.pem`/`tls.key`.
pub fn tls_config(ca: &Ca) -> io::Result<OpenSSLConfig> {
    let store = ca.store();
    https_api::server::tls_config(&store.tls_cert_path(), &store.tls_key_path())
}

/// Serves `ca` over HTTPS on `listener` until `shutdown` completes, then stops gracefully.
pub async fn serve(
    ca: Arc<Ca>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let handle = Handle::new();
    serve_with_handle(ca, listener, handle.clone(), async move {
        shutdown.await;
        handle.graceful_shutdown(Some(GRACE));
    })
    .await
}

async fn serve_with_handle(
    ca: Arc<Ca>,
    listener: TcpListener,
    handle: Handle,
    stopper: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let config = tls_config(&ca)?;
    let limits = ca
        .store()
        .config()
        .map_err(|e| io::Error::other(e.to_string()))?
        .limits;
    ca.set_served_crl_url(format!(
        "{}/v1/crl",
        public_base(&ca, listener.local_addr()?)
    ));
    listener.set_nonblocking(true)?;
    tokio::spawn(stopper);
    let acceptor = OpenSSLAcceptor::new(config)
        .handshake_timeout(HANDSHAKE_TIMEOUT)
        .acceptor(LimitedAcceptor {
            limiter: ConnectionLimiter::new(&limits),
        });
    axum_server::from_tcp(listener)
        .acceptor(acceptor)
        .handle(handle)
        .serve(router(ca).into_make_service_with_connect_info::<SocketAddr>())
        .await
}

/// `https://HOST:PORT` of a server listening on `addr`: its address, or for an unspecified
/// one (`0.0.0.0`, `::`) the first name of its TLS certificate.
fn public_base(ca: &Ca, addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() {
        std::fs::read(ca.store().tls_cert_path())
            .ok()
            .and_then(|pem| openssl::x509::X509::from_pem(&pem).ok())
            .and_then(|c| {
                c.subject_name()
                    .entries_by_nid(openssl::nid::Nid::COMMONNAME)
                    .next()
                    .and_then(|e| e.data().to_string().ok())
                    .map(|s| s.to_string())
            })
            .unwrap_or_else(|| "localhost".to_string())
    } else {
        addr.ip().to_string()
    };
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("https://[{host}]:{}", addr.port())
    } else {
        format!("https://{host}:{}", addr.port())
    }
}

/// Takes a [`ConnectionPermit`] for every accepted connection, before the TLS handshake; a
/// client over its share (or a server at its total) is closed at once.
#[derive(Debug, Clone)]
pub struct LimitedAcceptor {
    limiter: Arc<ConnectionLimiter>,
}

impl<S> Accept<TcpStream, S> for LimitedAcceptor {
    type Stream = Limited<TcpStream>;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Self::Stream, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let permit = stream
            .peer_addr()
            .ok()
            .and_then(|peer| self.limiter.try_acquire(peer.ip()));
        std::future::ready(match permit {
            Some(permit) => Ok((
                Limited {
                    inner: stream,
                    _permit: permit,
                },
                service,
            )),
            None => {
                log::debug!("connection refused: connection limit reached");
                Err(io::Error::other("connection limit reached"))
            }
        })
    }
}

/// A stream that holds its connection's [`ConnectionPermit`] until it is dropped.
#[derive(Debug)]
pub struct Limited<T> {
    inner: T,
    _permit: ConnectionPermit,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Limited<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Limited<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A server running on its own thread and runtime, for tests and embedding.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    handle: Handle,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl RunningServer {
    /// Binds `listen` (e.g. `127.0.0.1:0`) and serves `ca` in the background.
    pub fn start(ca: Ca, listen: SocketAddr) -> io::Result<RunningServer> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let ca = Arc::new(ca);
        // Fail here, not in the thread, if the TLS files are unusable.
        tls_config(&ca)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let handle = Handle::new();
        let h = handle.clone();
        let thread = std::thread::Builder::new()
            .name("vtpm-ca-server".into())
            .spawn(move || {
                rt.block_on(serve_with_handle(ca, listener, h, std::future::ready(())))
            })?;
        Ok(RunningServer {
            addr,
            handle,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://ADDR`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Stops gracefully and waits for the thread.
    pub fn stop(mut self) -> io::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> io::Result<()> {
        self.handle.graceful_shutdown(Some(GRACE));
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| io::Error::other("server thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}
