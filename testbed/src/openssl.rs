//! The `openssl` command line, as a verifier outside this workspace runs it on what the CA
//! and the tools write.

use std::process::Command;

use crate::process::run_tool;

/// `openssl crl -text` of a DER CRL: the CRL as OpenSSL reads it, or why it could not.
pub fn crl_text(der: &[u8]) -> Result<String, String> {
    let file = tempfile::NamedTempFile::new().map_err(|e| format!("temporary file: {e}"))?;
    std::fs::write(file.path(), der).map_err(|e| format!("{}: {e}", file.path().display()))?;
    run_tool(
        Command::new("openssl")
            .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
            .arg(file.path()),
    )
}
