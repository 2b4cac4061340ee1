//! The engine's store during a migration: [`SharedStore`], one handle the engine holds and
//! one the migration control keeps.
//!
//! A destination imports into a scratch engine: the engine runs on an in-memory store while
//! libtpms accepts the instance and its vEK certificates are re-issued, and only then is the
//! state made durable ([`SharedStore::install`] switches the engine to the encrypted state
//! directory, which from then on receives every NV write as usual). A source destroys its
//! copy after the commit: the control takes the encrypted store back from the engine
//! ([`SharedStore::take`]) to destroy it while it still holds the directory's lock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use coprocessor::{StateStore, StoreError};
use vtpm_state::EncryptedStore;
use zeroize::Zeroizing;

enum Inner {
    /// Blobs in memory, wiped when replaced or dropped.
    Memory(BTreeMap<String, Zeroizing<Vec<u8>>>),
    /// Boxed: the store with its open files is much larger than the other variants.
    Durable(Box<EncryptedStore>),
    /// Taken away: every access fails.
    Taken,
}

/// A state store shared between the engine and the migration control.
#[derive(Clone)]
pub struct SharedStore(Arc<Mutex<Inner>>);

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &*self.lock() {
            Inner::Memory(_) => "memory",
            Inner::Durable(_) => "durable",
            Inner::Taken => "taken",
        };
        f.debug_tuple("SharedStore").field(&kind).finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the state store was taken away from this engine (the instance was destroyed)")]
struct Taken;

impl SharedStore {
    /// A store in memory (a scratch engine's).
    pub fn memory() -> Self {
        SharedStore(Arc::new(Mutex::new(Inner::Memory(BTreeMap::new()))))
    }

    /// The encrypted state directory, shared.
    pub fn durable(store: EncryptedStore) -> Self {
        SharedStore(Arc::new(Mutex::new(Inner::Durable(Box::new(store)))))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the engine's writes are durable.
    pub fn is_durable(&self) -> bool {
        matches!(&*self.lock(), Inner::Durable(_))
    }

    /// Switches to the encrypted state directory (which the caller created holding what the
    /// memory held); the memory's blobs are wiped.
    pub fn install(&self, store: EncryptedStore) {
        *self.lock() = Inner::Durable(Box::new(store));
    }

    /// Takes the encrypted store away (to destroy it); the engine can no longer read or
    /// write anything.
    pub fn take(&self) -> Option<EncryptedStore> {
        match std::mem::replace(&mut *self.lock(), Inner::Taken) {
            Inner::Durable(s) => Some(*s),
            _ => None,
        }
    }

    /// The instance id of the durable store.
    pub fn instance(&self) -> Option<vtpm_state::keys::InstanceId> {
        match &*self.lock() {
            Inner::Durable(s) => Some(s.instance()),
            _ => None,
        }
    }
}

impl StateStore for SharedStore {
    fn load(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match &*self.lock() {
            Inner::Memory(m) => Ok(m.get(name).map(|b| b.to_vec())),
            Inner::Durable(s) => Ok(s.load(name)?),
            Inner::Taken => Err(Box::new(Taken)),
        }
    }

    fn store(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        match &mut *self.lock() {
            Inner::Memory(m) => {
                m.insert(name.to_owned(), Zeroizing::new(data.to_vec()));
                Ok(())
            }
            Inner::Durable(s) => Ok(s.store(name, data)?),
            Inner::Taken => Err(Box::new(Taken)),
        }
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        match &mut *self.lock() {
            Inner::Memory(m) => {
                m.remove(name);
                Ok(())
            }
            Inner::Durable(s) => Ok(s.delete(name)?),
            Inner::Taken => Err(Box::new(Taken)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_then_durable_then_taken() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("host.key");
        vtpm_state::keys::generate_host_key_file(&key).unwrap();
        let key = vtpm_state::keys::HostKey::File(key);
        let s = SharedStore::memory();
        let engine_side: Box<dyn StateStore> = Box::new(s.clone());
        engine_side.store("permall", b"scratch").unwrap();
        assert_eq!(engine_side.load("permall").unwrap().unwrap(), b"scratch");
        assert!(!s.is_durable());
        let reserved = EncryptedStore::reserve(&dir.path().join("vm")).unwrap();
        let durable = reserved
            .create(
                &key,
                "libtpms",
                vtpm_state::keys::InstanceId([1; 16]),
                [("permall".to_owned(), b"scratch".to_vec())].into(),
            )
            .unwrap();
        s.install(durable);
        engine_side.store("permall", b"durable").unwrap();
        assert_eq!(s.instance(), Some(vtpm_state::keys::InstanceId([1; 16])));
        let taken = s.take().unwrap();
        assert_eq!(taken.load("permall").unwrap().unwrap(), b"durable");
        assert!(engine_side.load("permall").is_err());
        assert!(engine_side.store("permall", b"x").is_err());
    }
}
