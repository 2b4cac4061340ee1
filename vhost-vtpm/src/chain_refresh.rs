//! The certificate chain in a running instance's NV, refreshed on SIGHUP (ADR 0012).
//!
//! `vtpm-host renew` re-issues the host AIK and coprocessor certificates in the host
//! directory; a stopped instance gets them with `vtpm-host refresh`. A running one gets them
//! from its daemon: on SIGHUP it reads `coprocessor.pem` and `host-aik.pem` from `--host-dir`
//! and, holding the device between two guest commands, rewrites the chain indices from
//! 0x01c00100 with the platform hierarchy opened for it, so the chain a guest reads never
//! lapses while the VM runs. vEK certificates that need issuing again (another coprocessor
//! key) are left as they are and the refusal is logged: that takes the coprocessor key, which
//! the daemon does not hold, and `vtpm-host refresh` does it once the instance stops.

use std::path::Path;

use log::{info, warn};

use crate::backend::{lock, SharedDevice};
use crate::platform::{read_host_cert, PlatformError, COPROCESSOR_CERT, HOST_AIK_CERT};

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    HostFile(#[from] PlatformError),
    #[error("{0}")]
    Identity(#[from] identity::IdentityError),
}

/// Brings the chain in the instance's NV up to date with `host_dir`'s certificates; returns
/// whether it was rewritten.
pub fn refresh(device: &SharedDevice, host_dir: &Path) -> Result<bool, RefreshError> {
    let coprocessor = read_host_cert(host_dir, COPROCESSOR_CERT)?;
    let host_aik = read_host_cert(host_dir, HOST_AIK_CERT)?;
    let mut dev = lock(device);
    Ok(coprocessor::with_platform(dev.engine(), |engine| {
        identity::refresh_chain_of_running(engine, &coprocessor, std::slice::from_ref(&host_aik))
    })?)
}

/// What SIGHUP does: refreshes and logs the outcome.
pub fn on_sighup(device: &SharedDevice, host_dir: Option<&Path>) {
    let Some(host_dir) = host_dir else {
        warn!("SIGHUP: no certificate chain to refresh (that takes --host-dir and the libtpms engine)");
        return;
    };
    match refresh(device, host_dir) {
        Ok(true) => info!(
            "SIGHUP: certificate chain in NV refreshed from {}",
            host_dir.display()
        ),
        Ok(false) => info!("SIGHUP: certificate chain in NV already current"),
        Err(e) => warn!("SIGHUP: certificate chain not refreshed: {e}"),
    }
}
