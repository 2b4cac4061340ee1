//! What a host does for a migration that needs its TPM: the quote that attests it for one
//! role of one migration (`vtpm-migrate attest`), and its credentials towards the controller.

use std::sync::Arc;

use base64::Engine as _;
use host_tpm::HostTpm;
use migration::api::{attestation_data, AttestRequest, MigrationView, Role, QUOTED_PCRS};
use migration::client::{Auth, Client, HostCredentials};
use migration::MigrationId;
use vtpm_host::HostDir;
use vtpm_state::keys::HostKey;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("host directory: {0}")]
    Dir(#[from] vtpm_host::AgentError),
    #[error("host TPM: {0}")]
    Tpm(#[from] host_tpm::HostTpmError),
    #[error("coprocessor key: {0}")]
    Key(#[from] identity::IdentityError),
    #[error(transparent)]
    Controller(#[from] migration::client::ClientError),
    #[error("the controller sent a malformed nonce")]
    BadNonce,
    #[error("cryptography: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
}

/// The host's credentials towards the controller: its coprocessor key (unwrapped with
/// `host_key`) and chain.
pub fn credentials(dir: &HostDir, host_key: &HostKey) -> Result<Arc<HostCredentials>, HostError> {
    Ok(Arc::new(HostCredentials::load::<HostError>(dir, host_key)?))
}

/// A controller client that signs as this host.
pub fn client(
    url: &str,
    controller_pem: &[u8],
    dir: &HostDir,
    host_key: &HostKey,
) -> Result<Client, HostError> {
    Ok(Client::new(
        url,
        controller_pem,
        Auth::Host(credentials(dir, host_key)?),
    )?)
}

/// Attests this host for `role` in migration `id`: a quote by the host AIK of SHA-256 PCRs
/// 0-7 binding the controller's nonce and this host's migration key.
pub fn attest(
    client: &Client,
    dir: &HostDir,
    tpm: &mut HostTpm,
    id: &MigrationId,
    role: Role,
) -> Result<MigrationView, HostError> {
    let view = client.migration(id)?;
    let nonce = hex::decode(match role {
        Role::Source => &view.source_nonce,
        Role::Destination => &view.destination_nonce,
    })
    .map_err(|_| HostError::BadNonce)?;
    let key = dir.migration_public()?;
    let data = attestation_data(id, role, &nonce, &key);
    let quote = tpm.quote(&dir.aik()?, &QUOTED_PCRS, &data)?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let req = AttestRequest {
        role,
        aik_cert: String::from_utf8_lossy(&dir.host_aik_cert()?.to_pem()?).into_owned(),
        attest: b64.encode(&quote.attest),
        signature: b64.encode(&quote.signature),
        migration_key: hex::encode(&key),
    };
    Ok(client.attest(id, &req)?)
}
