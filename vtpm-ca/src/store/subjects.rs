//! Subject bindings: which endorsement key an enrolled subject (`aik/<kind>/<subject>`)
//! belongs to (`index/subjects/<kind>/<subject>.json`).

use std::fs;
use std::io::ErrorKind;

use serde::{Deserialize, Serialize};

use super::{io_err, Locked, Store, StoreError, INDEX, PUBLIC_FILE};
use crate::issue::Kind;
use crate::names;
use crate::util::now_unix;

const SUBJECTS: &str = "subjects";

/// What an enrolled subject (`aik/<kind>/<subject>`) is bound to: the endorsement key of the
/// TPM that enrolled it first. Only that key may enroll the subject again, until an
/// administrator releases it (`vtpm-ca release`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectBinding {
    /// SHA-256 (lower-case hex) of the DER SubjectPublicKeyInfo of the host EK (host) or
    /// the vEK (vTPM): a key, not a certificate, so that a re-issued EK/vEK certificate for
    /// the same key still matches.
    pub ek_public_key_sha256: String,
    /// Fingerprint of the EK/vEK certificate of the enrollment that made the binding.
    pub ek_certificate: String,
    /// Unix time of that enrollment.
    pub since: u64,
}

/// The outcome of [`Locked::bind_subject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bind {
    /// The subject was free and is now bound.
    New,
    /// Already bound to this key (a renewal).
    Same,
    /// Bound to another key: nothing changed.
    Taken(SubjectBinding),
}

/// The directory of the bindings of `kind`.
fn kind_dir(kind: Kind) -> String {
    format!("{INDEX}/{SUBJECTS}/{kind}")
}

/// The file of a subject's binding (the subject is checked here: it names a file).
fn subject_rel(kind: Kind, subject: &str) -> Result<String, StoreError> {
    if !names::is_subject(subject) {
        return Err(StoreError::BadSubject(subject.to_string()));
    }
    Ok(format!("{}/{subject}.json", kind_dir(kind)))
}

impl Store {
    /// The endorsement key `aik/<kind>/<subject>` is bound to, if it is.
    pub fn subject_binding(
        &self,
        kind: Kind,
        subject: &str,
    ) -> Result<Option<SubjectBinding>, StoreError> {
        self.read_json_optional(&subject_rel(kind, subject)?)
    }

    /// Every subject binding, sorted by kind and subject.
    pub fn subject_bindings(&self) -> Result<Vec<(Kind, String, SubjectBinding)>, StoreError> {
        let mut out = Vec::new();
        for kind in [Kind::Host, Kind::Vtpm] {
            let d = self.dir.join(kind_dir(kind));
            let entries = match fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&d)(e)),
            };
            let mut subjects: Vec<String> = entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| !n.starts_with('.'))
                .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
                .collect();
            subjects.sort();
            for s in subjects {
                if let Some(b) = self.subject_binding(kind, &s)? {
                    out.push((kind, s, b));
                }
            }
        }
        Ok(out)
    }
}

impl Locked<'_> {
    /// Binds `aik/<kind>/<subject>` to the endorsement key `ek_public_key_sha256` unless it
    /// is bound to another one (then nothing changes and the binding is returned as
    /// [`Bind::Taken`]). `ek_certificate` is the fingerprint of the certificate it came in.
    pub fn bind_subject(
        &self,
        kind: Kind,
        subject: &str,
        ek_public_key_sha256: &str,
        ek_certificate: &str,
    ) -> Result<Bind, StoreError> {
        let rel = subject_rel(kind, subject)?;
        if let Some(b) = self.read_json_optional::<SubjectBinding>(&rel)? {
            return Ok(if b.ek_public_key_sha256 == ek_public_key_sha256 {
                Bind::Same
            } else {
                Bind::Taken(b)
            });
        }
        self.mkdir(&kind_dir(kind))?;
        self.write_json(
            &rel,
            &SubjectBinding {
                ek_public_key_sha256: ek_public_key_sha256.to_string(),
                ek_certificate: ek_certificate.to_string(),
                since: now_unix(),
            },
            PUBLIC_FILE,
        )?;
        Ok(Bind::New)
    }

    /// Removes the binding of `aik/<kind>/<subject>` (so that any endorsement key may enroll
    /// it next); returns it, `None` if there was none.
    pub fn release_subject(
        &self,
        kind: Kind,
        subject: &str,
    ) -> Result<Option<SubjectBinding>, StoreError> {
        let rel = subject_rel(kind, subject)?;
        let Some(b) = self.read_json_optional::<SubjectBinding>(&rel)? else {
            return Ok(None);
        };
        self.remove(&rel)?;
        Ok(Some(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::tests::new_store;
    use crate::store::Config;

    #[test]
    fn subjects_bind_once_and_release() {
        let (_tmp, store, _) = new_store(Config::default());
        let store = store.lock().unwrap();
        let (k1, k2, c) = ("11".repeat(32), "22".repeat(32), "33".repeat(32));
        assert_eq!(store.subject_binding(Kind::Host, "h").unwrap(), None);
        assert_eq!(
            store.bind_subject(Kind::Host, "h", &k1, &c).unwrap(),
            Bind::New
        );
        assert_eq!(
            store.bind_subject(Kind::Host, "h", &k1, &c).unwrap(),
            Bind::Same
        );
        match store.bind_subject(Kind::Host, "h", &k2, &c).unwrap() {
            Bind::Taken(b) => assert_eq!(b.ek_public_key_sha256, k1),
            other => panic!("{other:?}"),
        }
        // Kinds are separate namespaces.
        assert_eq!(
            store.bind_subject(Kind::Vtpm, "h", &k2, &c).unwrap(),
            Bind::New
        );
        assert_eq!(store.subject_bindings().unwrap().len(), 2);
        assert!(store.release_subject(Kind::Host, "h").unwrap().is_some());
        assert!(store.release_subject(Kind::Host, "h").unwrap().is_none());
        assert_eq!(
            store.bind_subject(Kind::Host, "h", &k2, &c).unwrap(),
            Bind::New
        );
        // Subjects name files: anything else is refused.
        for bad in ["../x", "a/b", ".h", ""] {
            assert!(store.subject_binding(Kind::Host, bad).is_err(), "{bad}");
            assert!(store.release_subject(Kind::Host, bad).is_err(), "{bad}");
        }
    }
}
