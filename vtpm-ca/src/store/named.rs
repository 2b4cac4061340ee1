//! The files of the named certificate store: `certs/<name>.pem`, one PEM (a certificate or
//! a leaf and its chain) per name. Who may read and write which name is
//! [`crate::certstore`]'s.

use std::fs;

use super::{io_err, Locked, Store, StoreError, CERTS, PUBLIC_FILE};
use crate::names;

/// The file of `name` (checked here: it names a path below `certs/`).
fn named_rel(name: &str) -> Result<String, StoreError> {
    if !names::is_name(name) {
        return Err(StoreError::BadName(name.to_string()));
    }
    Ok(format!("{CERTS}/{name}.pem"))
}

impl Store {
    /// The PEM stored as `name`, if any.
    pub fn named(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_optional(&named_rel(name)?)
    }

    /// Names of the certificates in the named store, sorted.
    pub fn named_all(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let root = self.dir.join(CERTS);
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).map_err(io_err(&d))? {
                let e = e.map_err(io_err(&d))?;
                let p = e.path();
                // The entry's own type: a symlink is neither walked into nor listed.
                let ty = e.file_type().map_err(io_err(&p))?;
                if ty.is_dir() {
                    stack.push(p);
                } else if let Some(rel) = p
                    .strip_prefix(&root)
                    .ok()
                    .and_then(|r| r.to_str())
                    .and_then(|r| r.strip_suffix(".pem"))
                    .filter(|_| ty.is_file())
                {
                    if !rel.rsplit('/').next().is_some_and(|f| f.starts_with('.')) {
                        out.push(rel.to_string());
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

impl Locked<'_> {
    /// Stores `pem` as `name`; whether it replaced a certificate of that name.
    pub fn put_named(&self, name: &str, pem: &[u8]) -> Result<bool, StoreError> {
        let rel = named_rel(name)?;
        let replaced = self.read_optional(&rel)?.is_some();
        if let Some((parent, _)) = rel.rsplit_once('/') {
            self.mkdir(parent)?;
        }
        self.write(&rel, pem, PUBLIC_FILE)?;
        Ok(replaced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::tests::new_store;
    use crate::store::Config;

    #[test]
    fn names_map_to_files_below_certs() {
        let (_tmp, store, _) = new_store(Config::default());
        let locked = store.lock().unwrap();
        assert!(!locked.put_named("vek/rsa/vm-1", b"one").unwrap());
        assert!(locked.put_named("vek/rsa/vm-1", b"two").unwrap());
        locked.put_named("a", b"a").unwrap();
        assert_eq!(store.named("vek/rsa/vm-1").unwrap().unwrap(), b"two");
        assert_eq!(store.named("vek/rsa").unwrap(), None);
        assert_eq!(store.named_all().unwrap(), ["a", "vek/rsa/vm-1"]);
        for bad in ["../x", "/a", "a//b", "a/.b", ""] {
            assert!(matches!(
                locked.put_named(bad, b"x"),
                Err(StoreError::BadName(_))
            ));
            assert!(store.named(bad).is_err());
        }
    }
}
