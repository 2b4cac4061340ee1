//! Atomic, durable replacement of small files, and the directory lock.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

/// Replaces `dir/name` with `data`: write a temporary file, fsync it, rename it over the old
/// one and, if `sync_dir`, fsync the directory so the rename itself is durable.
pub fn replace(dir: &Path, name: &str, data: &[u8], sync_dir: bool) -> io::Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    if sync_dir {
        sync(dir)?;
    }
    Ok(())
}

/// fsync of a directory, making renames and removals in it durable.
pub fn sync(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads a file, `None` if it does not exist.
pub fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// An exclusive advisory lock on `dir/lock`, held for the life of the value. Two daemons
/// (or a daemon and an operator command) on one state directory would overwrite each other.
pub fn lock(dir: &Path) -> io::Result<Option<Flock<File>>> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join("lock"))?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e.into()),
    }
}
