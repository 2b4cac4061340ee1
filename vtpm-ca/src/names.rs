//! The syntax of what callers name: enrolled subjects and certificate-store names.
//!
//! Both end up as file names in the store (`index/subjects/<kind>/<subject>.json`,
//! `certs/<name>.pem`), so this module is below the store, which refuses a path from a name
//! that does not pass here; [`crate::enroll`] and [`crate::certstore`] check the same rules
//! first and report them in their own errors.

/// Longest certificate name.
pub const MAX_NAME: usize = 255;
/// Longest subject.
pub const MAX_SUBJECT: usize = 64;

/// A character of a subject or of a name segment: `[A-Za-z0-9._:@-]`.
fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._:@-".contains(&b)
}

/// A subject (host id or vTPM instance id): 1 to 64 characters of `[A-Za-z0-9._:@-]`, not
/// starting with a dot.
pub fn is_subject(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_SUBJECT && !s.starts_with('.') && s.bytes().all(allowed)
}

/// A certificate name: `/`-separated segments of `[A-Za-z0-9._:@-]`, none empty or starting
/// with a dot, at most [`MAX_NAME`] bytes in all.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .split('/')
            .all(|seg| !seg.is_empty() && !seg.starts_with('.') && seg.bytes().all(allowed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_name_one_file() {
        for ok in ["h", "host-1", "vm:1@x_y.z", &"a".repeat(64)] {
            assert!(is_subject(ok), "{ok}");
        }
        for bad in ["", ".h", "../x", "a/b", "a b", &"a".repeat(65)] {
            assert!(!is_subject(bad), "{bad}");
        }
    }
}
