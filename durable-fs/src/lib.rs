//! Durable, symlink-safe file operations for directories that hold secrets or state.
//!
//! Whoever can write into a state directory must not be able to make the process that owns
//! it write, truncate or lock a file elsewhere. So nothing here follows a symlink at the
//! final path component:
//! - [`replace`] writes a temporary file under a fresh random name created with
//!   `O_CREAT | O_EXCL` (which refuses an existing name, a symlink included) and
//!   `O_NOFOLLOW`, fsyncs it, renames it over the target (a rename replaces a symlink
//!   itself, never what it points to) and fsyncs the directory;
//! - [`InPlaceFile`] rewrites a file in place (one `fdatasync` per version) through a
//!   descriptor opened with `O_NOFOLLOW` that must name a regular file with a single link;
//! - [`read_optional`], [`create_marker`] and the lock functions open with `O_NOFOLLOW`, so
//!   a symlink planted at those names is an error (`ELOOP`) instead of a redirection;
//! - [`remove`] and [`remove_stale_temporaries`] unlink names, which removes a symlink
//!   itself, never its target.
//!
//! A crash during [`replace`] can leave its temporary behind (`.NAME.<random>.tmp` beside
//! `NAME`); whoever owns a directory removes them with [`remove_stale_temporaries`] while it
//! holds the directory's lock. Every file is created with the caller's mode whatever the
//! umask.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// A lock file held with an exclusive `flock(2)`; released when dropped.
pub type LockFile = Flock<File>;

/// fsyncs and fdatasyncs this process made through this crate (files and directories), for metrics and the
/// benchmark's syncs-per-command.
static SYNCS: AtomicU64 = AtomicU64::new(0);

/// How many fsyncs (of files and directories) this process has made through this crate.
pub fn syncs_total() -> u64 {
    SYNCS.load(Ordering::Relaxed)
}

fn sync(file: &File) -> io::Result<()> {
    SYNCS.fetch_add(1, Ordering::Relaxed);
    file.sync_all()
}

/// What ends the name of every temporary file [`replace`] makes.
const TEMPORARY_SUFFIX: &str = ".tmp";

/// Replaces `path` with `data` atomically and durably: a crash at any instant leaves the old
/// or the new contents, never a torn file. With `sync_dir` the directory is fsynced after the
/// rename, so that the rename itself survives a power loss; a caller that makes several
/// replacements in one directory may sync it once after the last ([`sync_dir`]).
pub fn replace(path: &Path, data: &[u8], mode: u32, sync_dir: bool) -> io::Result<()> {
    let dir = parent(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let prefix = temporary_prefix(name.as_bytes());
    // A fresh random name (tempfile retries on a collision), created with O_CREAT | O_EXCL |
    // O_NOFOLLOW: an existing name, a planted symlink included, is never opened.
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(TEMPORARY_SUFFIX)
        .make_in(dir, |name| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc_o_nofollow())
                .open(name)
        })?;
    // The umask may have cleared bits of `mode`.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.write_all(data)?;
    sync(tmp.as_file())?;
    tmp.persist(path).map_err(|e| e.error)?;
    if sync_dir {
        self::sync_dir(dir)?;
    }
    Ok(())
}

/// A file rewritten in place rather than replaced: one `fdatasync` makes a new version
/// durable, where [`replace`] needs two syncs (the file, then the directory for the rename).
///
/// An in-place write can be torn by a crash, so a caller keeps two of these and writes the
/// one that does not hold its newest version (A/B slots): a torn slot is only ever the
/// unacknowledged write. The file is opened once, without following a symlink, and must be
/// a regular file with a single link, so a hard link planted at the name cannot make the
/// owner write a file elsewhere.
#[derive(Debug)]
pub struct InPlaceFile {
    file: File,
    path: PathBuf,
    /// The file's length after our last write (a shorter version truncates the rest).
    len: u64,
}

impl InPlaceFile {
    /// Opens the existing file `path` for in-place writes; `None` if it does not exist. A
    /// symlink, or anything but a regular file with one link, is an error naming it.
    pub fn open(path: &Path) -> io::Result<Option<Self>> {
        match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc_o_nofollow())
            .open(path)
        {
            Ok(file) => Self::checked(file, path).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(refused_link(path, e)),
        }
    }

    /// Creates `path` empty (`O_CREAT | O_EXCL | O_NOFOLLOW`, so nothing already there is
    /// opened) with `mode`. The new name is durable only after a [`sync_dir`] of its
    /// directory, which a caller creating several files makes once.
    pub fn create(path: &Path, mode: u32) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc_o_nofollow())
            .open(path)
            .map_err(|e| refused_link(path, e))?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        Self::checked(file, path)
    }

    fn checked(file: File, path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let md = file.metadata()?;
        if !md.file_type().is_file() || md.nlink() != 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: not a regular file with a single link; refusing to write it",
                    path.display()
                ),
            ));
        }
        Ok(InPlaceFile {
            file,
            path: path.to_owned(),
            len: md.len(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file as it is now.
    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let len = usize::try_from(self.file.metadata()?.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file too large"))?;
        let mut data = vec![0; len];
        let mut done = 0;
        while done < len {
            match self.file.read_at(&mut data[done..], done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        data.truncate(done);
        Ok(data)
    }

    /// Makes `data` the file's whole contents, durably: written at offset 0, the rest cut
    /// off, then one `fdatasync` (which also makes the new length durable).
    pub fn rewrite(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_at(0, data)?;
        let len = data.len() as u64;
        if self.len > len {
            self.file.set_len(len)?;
        }
        self.len = len;
        self.sync_data()
    }

    /// Writes `data` at `offset` without waiting for the disk: the kernel is asked to start
    /// writing it back at once (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which neither waits
    /// nor flushes the disk's cache), so after a power cut it is lost only if the cut came
    /// within moments. For records a reader tolerates lagging, such as a generation record.
    pub fn write_unsynced(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        self.write_at(offset, data)?;
        self.len = self.len.max(offset + data.len() as u64);
        let (start, count) = (offset as i64, data.len() as i64);
        // SAFETY: sync_file_range only reads its integer arguments; the descriptor is ours
        // and open for the duration of the call.
        let rc = unsafe {
            nix::libc::sync_file_range(
                self.file.as_raw_fd(),
                start,
                count,
                nix::libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        // Starting write-back early is an optimisation: a file system that cannot do it
        // (EINVAL, ENOSYS) still has the data in its cache, as after any plain write.
        if rc != 0 {
            let e = io::Error::last_os_error();
            if !matches!(
                e.raw_os_error(),
                Some(nix::libc::EINVAL | nix::libc::ENOSYS)
            ) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// `fdatasync`: makes every write so far durable.
    pub fn sync_data(&self) -> io::Result<()> {
        SYNCS.fetch_add(1, Ordering::Relaxed);
        self.file.sync_data()
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(data, offset)
    }
}

/// fsync of a directory: makes the renames, creations and removals in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    sync(
        &OpenOptions::new()
            .read(true)
            .custom_flags(libc_o_directory() | libc_o_nofollow())
            .open(dir)?,
    )
}

/// Creates the directory `path` (and its missing parents) and sets it to mode 0700 whatever
/// it had: a directory of secrets or state that only its owner may enter. The daemon, the
/// host tools and the verifier keep their directories this way.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// Reads a regular file, `None` if it does not exist; a symlink at `path` is an error.
pub fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc_o_nofollow())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(refused_link(path, e)),
    };
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    Ok(Some(data))
}

/// Whether something that is not a symlink exists at `path`; a symlink is an error naming
/// it, as the other functions here would report it.
pub fn exists_not_symlink(path: &Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_symlink() => Err(refused_link(path, Errno::ELOOP.into())),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Makes sure a marker file exists at `path`, a file whose existence is what counts: a new
/// one is created with `O_CREAT | O_EXCL | O_NOFOLLOW` holding `data` (written, not synced)
/// and its name made durable with one directory sync; one already there is left as it is.
/// A symlink at `path` is an error. Returns whether the file existed before.
pub fn create_marker(path: &Path, data: &[u8], mode: u32) -> io::Result<bool> {
    if exists_not_symlink(path)? {
        return Ok(true);
    }
    let mut marker = InPlaceFile::create(path, mode)?;
    marker.write_unsynced(0, data)?;
    sync_dir(parent(path))?;
    Ok(false)
}

/// Removes the name `path` (`unlink(2)`: a symlink is removed itself, never what it points
/// to); with `sync_dir` the removal is made durable. Returns whether there was a file.
pub fn remove(path: &Path, sync_dir: bool) -> io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    if sync_dir {
        self::sync_dir(parent(path))?;
    }
    Ok(true)
}

/// Removes the temporaries that an interrupted [`replace`] of one of `names` in `dir` left
/// behind: `.NAME.<random>.tmp`, and `.NAME.tmp`, the fixed name earlier builds of
/// vhost-vtpm used. Names are unlinked, never followed: a symlink planted at such a name is
/// removed itself. Directories are left alone. The removals are made durable; returns the
/// removed paths.
///
/// The caller must hold the lock that serialises writers of `dir`: the temporary of a
/// replacement in progress looks exactly like a stale one.
pub fn remove_stale_temporaries(dir: &Path, names: &[&str]) -> io::Result<Vec<PathBuf>> {
    let prefixes: Vec<OsString> = names
        .iter()
        .map(|n| temporary_prefix(n.as_bytes()))
        .collect();
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let stale = prefixes.iter().any(|p| {
            file_name
                .as_bytes()
                .strip_prefix(p.as_bytes())
                .is_some_and(is_temporary_tail)
        });
        // The entry's own type (lstat): a symlink is not a directory here.
        if !stale || entry.file_type()?.is_dir() {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed.push(entry.path()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// `.NAME.`: how the temporaries of `NAME` begin.
fn temporary_prefix(name: &[u8]) -> OsString {
    let mut prefix = OsString::from(".");
    prefix.push(std::ffi::OsStr::from_bytes(name));
    prefix.push(".");
    prefix
}

/// What follows [`temporary_prefix`] in a temporary's name: tempfile's random letters and
/// digits and [`TEMPORARY_SUFFIX`], or `tmp` alone (the fixed name of earlier builds).
fn is_temporary_tail(tail: &[u8]) -> bool {
    if tail == &TEMPORARY_SUFFIX.as_bytes()[1..] {
        return true;
    }
    tail.strip_suffix(TEMPORARY_SUFFIX.as_bytes())
        .is_some_and(|random| !random.is_empty() && random.iter().all(u8::is_ascii_alphanumeric))
}

/// Opens (creating it if needed) the lock file at `path` without following a symlink.
///
/// An existing lock file is opened without `O_CREAT`, a missing one is created with
/// `O_CREAT | O_EXCL`, so that no name in a state directory is ever created by an open that
/// could also have opened something already there; a lock file created by another process
/// between the two attempts is opened on the next round.
fn open_lock(path: &Path, mode: u32) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options
        .read(true)
        .write(true)
        .mode(mode)
        .custom_flags(libc_o_nofollow());
    let mut last = None;
    for _ in 0..4 {
        match options.create_new(false).open(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => return other.map_err(|e| refused_link(path, e)),
        }
        match options.create_new(true).open(path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            other => return other.map_err(|e| refused_link(path, e)),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("lock file keeps appearing and vanishing")))
}

/// Takes an exclusive lock on the lock file `path` if it is free: `None` when another
/// process (or another open file description in this one) holds it.
pub fn try_lock(path: &Path, mode: u32) -> io::Result<Option<LockFile>> {
    match Flock::lock(open_lock(path, mode)?, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(l)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e.into()),
    }
}

/// Takes an exclusive lock on the lock file `path`, waiting until it is free.
pub fn lock(path: &Path, mode: u32) -> io::Result<LockFile> {
    let mut file = open_lock(path, mode)?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusive) {
            Ok(l) => return Ok(l),
            Err((f, Errno::EINTR)) => file = f,
            Err((_, e)) => return Err(e.into()),
        }
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// `ELOOP` from an `O_NOFOLLOW` open says "this is a symlink": say so, with the path.
fn refused_link(path: &Path, e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(Errno::ELOOP as i32) {
        io::Error::new(
            e.kind(),
            format!(
                "{} is a symbolic link; refusing to follow it",
                path.display()
            ),
        )
    } else {
        e
    }
}

fn libc_o_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

fn libc_o_directory() -> i32 {
    nix::fcntl::OFlag::O_DIRECTORY.bits()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn replace_writes_the_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        replace(&path, b"one", 0o600, true).unwrap();
        replace(&path, b"two", 0o600, false).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state")]);
    }

    #[test]
    fn symlinks_are_replaced_or_refused_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(outside.path(), b"outside").unwrap();
        let link = |name: &str| {
            let p = dir.path().join(name);
            symlink(outside.path(), &p).unwrap();
            p
        };

        // A replaced file that is a symlink: the link is replaced, its target untouched.
        let state = link("state");
        replace(&state, b"new", 0o600, true).unwrap();
        assert!(!std::fs::symlink_metadata(&state)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&state).unwrap(), b"new");

        let read = link("read");
        let err = read_optional(&read).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let marker = link("marker");
        assert!(exists_not_symlink(&marker).is_err());
        assert!(create_marker(&marker, b"1", 0o600).is_err());
        let lock_path = link("lock");
        assert!(try_lock(&lock_path, 0o600).is_err());
        assert!(lock(&lock_path, 0o600).is_err());
        assert_eq!(std::fs::read(outside.path()).unwrap(), b"outside");
    }

    #[test]
    fn stale_temporaries_are_removed_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(outside.path(), b"outside").unwrap();
        let d = dir.path();
        let temporaries = [".state.ab12Cd.tmp", ".state.tmp", ".other.xyz123.tmp"];
        // Not of the pattern: another name's prefix, nothing random, a dot in the middle.
        let others = [".states.ab12Cd.tmp", ".state..tmp", ".state.a.b.tmp"];
        for name in temporaries.iter().chain(&others).chain(&["keep", "state"]) {
            std::fs::write(d.join(name), b"x").unwrap();
        }
        symlink(outside.path(), d.join(".state.link00.tmp")).unwrap();
        std::fs::create_dir(d.join(".state.dir000.tmp")).unwrap();
        let mut removed = remove_stale_temporaries(d, &["state", "other"]).unwrap();
        removed.sort();
        let expected: Vec<PathBuf> = [
            ".other.xyz123.tmp",
            ".state.ab12Cd.tmp",
            ".state.link00.tmp",
            ".state.tmp",
        ]
        .iter()
        .map(|n| d.join(n))
        .collect();
        assert_eq!(removed, expected);
        assert_eq!(std::fs::read(outside.path()).unwrap(), b"outside");
        let mut left: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".state..tmp",
                ".state.a.b.tmp",
                ".state.dir000.tmp",
                ".states.ab12Cd.tmp",
                "keep",
                "state"
            ]
        );
        // What `replace` leaves is what the cleaner takes.
        replace(&d.join("state"), b"new", 0o600, true).unwrap();
        assert!(remove_stale_temporaries(d, &["state"]).unwrap().is_empty());
    }

    #[test]
    fn remove_unlinks_a_symlink_itself() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(outside.path(), b"outside").unwrap();
        let link = dir.path().join("marker");
        symlink(outside.path(), &link).unwrap();
        assert!(remove(&link, true).unwrap());
        assert!(!remove(&link, true).unwrap());
        assert_eq!(std::fs::read(outside.path()).unwrap(), b"outside");
    }

    #[test]
    fn lock_excludes_a_second_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = try_lock(&path, 0o600).unwrap().unwrap();
        assert!(try_lock(&path, 0o600).unwrap().is_none());
        drop(held);
        assert!(lock(&path, 0o600).is_ok());
    }

    #[test]
    fn marker_reports_a_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("running");
        assert!(!create_marker(&path, b"1", 0o600).unwrap());
        assert!(create_marker(&path, b"2", 0o600).unwrap());
        // The first one stays: only its existence counts.
        assert_eq!(read_optional(&path).unwrap().unwrap(), b"1");
        assert!(exists_not_symlink(&path).unwrap());
        assert!(!exists_not_symlink(&dir.path().join("none")).unwrap());
        assert_eq!(read_optional(&dir.path().join("none")).unwrap(), None);
    }
}
