//! The trusted EK roots for host enrollment: `ek-roots/<sha256>.pem`.

use openssl::x509::{X509Ref, X509};

use super::{Locked, Store, StoreError, EK_ROOTS};
use crate::util::fingerprint;

impl Store {
    /// The trusted EK roots.
    pub fn ek_roots(&self) -> Result<Vec<X509>, StoreError> {
        self.certs_in(EK_ROOTS)
    }
}

impl Locked<'_> {
    /// Trusts `root` for host enrollment; returns its fingerprint.
    pub fn add_ek_root(&self, root: &X509Ref) -> Result<String, StoreError> {
        let fp = fingerprint(root)?;
        self.write_cert(&format!("{EK_ROOTS}/{fp}.pem"), root)?;
        Ok(fp)
    }
}
