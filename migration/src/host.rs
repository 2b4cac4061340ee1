//! A host's material for migrations, from its identity directory (`vtpm-host --dir`,
//! `vhost-vtpm --host-dir`): its id, the CA root, its coprocessor key and chain (which sign
//! packages and requests to the controller), its migration key (which opens packages sealed
//! to this host), and the newest epoch it has seen of each vTPM (against replayed packages).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use identity::MigrationKey;
use openssl::x509::X509;
use vtpm_host::HostDir;
use vtpm_state::keys::{HostKey, InstanceId};

use crate::client::HostCredentials;
use crate::seal::Recipient;

/// Directory of the epoch records, in the host directory.
pub const EPOCHS_DIR: &str = "migration-epochs";

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("host directory: {0}")]
    Dir(#[from] vtpm_host::AgentError),
    #[error("host key: {0}")]
    Key(#[from] identity::IdentityError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a host migrates with.
pub struct HostMaterial {
    pub dir: HostDir,
    pub host_id: String,
    pub ca_root: X509,
    /// The coprocessor key and chain (coprocessor certificate, host AIK certificate).
    pub credentials: Arc<HostCredentials>,
    pub migration_key: MigrationKey,
}

impl std::fmt::Debug for HostMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostMaterial")
            .field("dir", &self.dir)
            .field("host_id", &self.host_id)
            .finish_non_exhaustive()
    }
}

impl HostMaterial {
    /// Loads the material in `dir`, unwrapping the keys with `host_key`.
    pub fn load(dir: &Path, host_key: &HostKey) -> Result<Self, HostError> {
        let dir = HostDir::open(dir)?;
        let credentials = Arc::new(HostCredentials::load::<HostError>(&dir, host_key)?);
        Ok(HostMaterial {
            host_id: dir.host_id()?,
            ca_root: dir.ca_cert()?,
            migration_key: MigrationKey::open(dir.path(), host_key)?,
            credentials,
            dir,
        })
    }

    /// This host as a package's recipient.
    pub fn recipient(&self) -> Result<Recipient, HostError> {
        Ok(Recipient {
            host_id: self.host_id.clone(),
            migration_key: self.migration_key.public_point()?,
        })
    }

    fn epoch_path(&self, instance: &InstanceId) -> PathBuf {
        self.dir.path().join(EPOCHS_DIR).join(instance.to_string())
    }

    /// The newest epoch of `instance` this host has seen (it owned it, or moved it away).
    pub fn known_epoch(&self, instance: &InstanceId) -> Result<Option<u64>, HostError> {
        let path = self.epoch_path(instance);
        let bytes = durable_fs::read_optional(&path).map_err(|source| HostError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(bytes.and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok()))
    }

    /// Records that `instance` reached `epoch` here (never lowers the record).
    pub fn record_epoch(&self, instance: &InstanceId, epoch: u64) -> Result<(), HostError> {
        if self
            .known_epoch(instance)?
            .is_some_and(|known| known >= epoch)
        {
            return Ok(());
        }
        let dir = self.dir.path().join(EPOCHS_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| HostError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = self.epoch_path(instance);
        durable_fs::replace(&path, epoch.to_string().as_bytes(), 0o600, true)
            .map_err(|source| HostError::Io { path, source })
    }
}
