//! The seam between an engine and durable storage.
//!
//! An engine keeps named blobs (`permall` for the permanent NV state, `volatilestate` for what
//! a clean shutdown saves). It stores and loads them through a [`StateStore`]; which store
//! (the encrypted state directory of `vtpm-state`, or an in-memory one in a test) is the
//! caller's choice.

/// Why a store could not load, store or delete a blob. The store's own error type travels
/// inside; the engine only reports it.
pub type StoreError = Box<dyn std::error::Error + Send + Sync>;

/// Durable storage of an instance's named state blobs.
pub trait StateStore: Send {
    /// Returns the blob, or `None` if it was never stored (a new instance).
    fn load(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores the blob durably: when this returns `Ok`, a crash does not lose it.
    fn store(&self, name: &str, data: &[u8]) -> Result<(), StoreError>;
    /// Removes the blob if present; durable when it returns.
    fn delete(&self, name: &str) -> Result<(), StoreError>;
}
