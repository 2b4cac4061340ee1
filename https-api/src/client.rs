//! The client side: TLS that trusts one root only (no system roots), and an error answer
//! read back into its code and detail.

use std::sync::Arc;

use crate::ErrorBody;

/// Why no TLS connector could be made; each client names the root in its own error.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid root certificate: {0}")]
    BadRoot(native_tls::Error),
    #[error("TLS setup: {0}")]
    Tls(native_tls::Error),
}

/// A TLS connector that trusts `root_pem` (PEM) and nothing else: each service is reached
/// with the one certificate that issued its TLS certificate.
pub fn pinned_tls(root_pem: &[u8]) -> Result<Arc<native_tls::TlsConnector>, TlsError> {
    let root = native_tls::Certificate::from_pem(root_pem).map_err(TlsError::BadRoot)?;
    let tls = native_tls::TlsConnector::builder()
        .disable_built_in_roots(true)
        .add_root_certificate(root)
        .build()
        .map_err(TlsError::Tls)?;
    Ok(Arc::new(tls))
}

/// The `(code, detail)` of an error answer: its [`ErrorBody`], or `http` and the body's
/// text when it is not one (a proxy's page, an empty body).
pub fn error_answer(resp: ureq::Response) -> (String, String) {
    let text = resp.into_string().unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(b) => (b.error, b.detail),
        Err(_) => ("http".to_owned(), text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pem_root_is_trusted() {
        assert!(matches!(pinned_tls(b"not pem"), Err(TlsError::BadRoot(_))));
    }
}
