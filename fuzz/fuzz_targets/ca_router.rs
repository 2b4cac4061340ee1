//! The CA's HTTP API through its axum router in process (`tower::ServiceExt::oneshot`, no
//! socket), on a store initialised once per process in a temporary directory. No panic, and
//! no request makes the CA fail with 500: whatever a client sends is its fault (4xx) or served.
//!
//! Input, hand-writable: `METHOD PATH`, then header lines `Name: value`, an empty line, the
//! body. `ADMIN` in a header value stands for the store's admin token. The enrolment rate
//! and session limits are lifted (one client sends everything); the limits themselves are
//! tested in vtpm-ca.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct Ca {
    _dir: tempfile::TempDir,
    router: Router,
    admin: String,
    rt: tokio::runtime::Runtime,
}

fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| {
        // On tmpfs where there is one: the store fsyncs every write.
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("tempdir");
        let store = dir.path().join("ca");
        // Every request comes from the same (unknown) client address: without room in the
        // enrolment rate and session limits, all but the first few enrolments would stop
        // at `rate_limited` and the fuzzer would never reach the handlers behind it.
        let unlimited = vtpm_ca::limits::Limits {
            enroll_burst_per_client: u32::MAX,
            enroll_per_minute_per_client: u32::MAX,
            enroll_burst: u32::MAX,
            enroll_per_minute: u32::MAX,
            sessions_per_client: u32::MAX,
            ..vtpm_ca::limits::Limits::default()
        };
        let options = vtpm_ca::setup::InitOptions {
            config: vtpm_ca::store::Config {
                limits: unlimited,
                ..vtpm_ca::store::Config::default()
            },
            ..vtpm_ca::setup::InitOptions::default()
        };
        let init = vtpm_ca::setup::init(&store, &options).expect("init the CA store");
        let router = vtpm_ca::server::router(Arc::new(vtpm_ca::Ca::new(init.store)));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Ca {
            _dir: dir,
            router,
            admin: init.admin_token,
            rt,
        }
    })
}

fn request(data: &[u8], admin: &str) -> Option<Request<Body>> {
    let split = data.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match split {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.lines();
    let (method, path) = lines.next()?.split_once(' ')?;
    let mut builder = Request::builder().method(method).uri(path);
    for line in lines {
        let (name, value) = line.split_once(": ")?;
        builder = builder.header(name, value.replace("ADMIN", admin));
    }
    builder.body(Body::from(body.to_vec())).ok()
}

fuzz_target!(|data: &[u8]| {
    let ca = ca();
    let Some(req) = request(data, &ca.admin) else {
        return;
    };
    let response = ca
        .rt
        .block_on(ca.router.clone().oneshot(req))
        .expect("the router is infallible");
    let status = response.status();
    let body = ca
        .rt
        .block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
        .expect("response body");
    assert_ne!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "500 for a client's request: {}",
        String::from_utf8_lossy(&body)
    );
});
