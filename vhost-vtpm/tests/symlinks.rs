//! Symlinks planted in a state directory are never followed, through the real daemon binary:
//! whoever can write into a state directory cannot make the daemon write, truncate or lock a
//! file elsewhere.
//!
//! What the daemon does with each name (docs: vhost-vtpm/README.md, "State"):
//! - a temporary name (`.state.vtpm.tmp`, `.state.gen.tmp`, `.instance.key.tmp` of earlier
//!   builds; `.<file>.<random>.tmp` of this one, for the state files and the run marker) is
//!   never used: every temporary is a fresh random name created with `O_CREAT | O_EXCL |
//!   O_NOFOLLOW`, and what sits at such a name when the daemon opens the directory is
//!   removed (the link itself); the daemon works;
//! - the lock (`lock`) and the run marker (`daemon.running`): the daemon refuses to start,
//!   naming the file, before anything is written.
//!
//! In every case the file the symlinks point to, outside the state directory, is
//! byte-identical afterwards.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use common::*;
use testbed::DaemonProcess;
use tpm_proto::{commands as c, rc};

const NV_INDEX: u32 = 0x0150_0030;
const OUTSIDE: &[u8] = b"a file outside the state directory, which must never change\n";
const STATE_FILES: [&str; 3] = ["instance.key", "state.vtpm", "state.gen"];

/// Every temporary name that can be predicted: the fixed ones of earlier builds, and
/// instances of this build's pattern (its random part cannot be guessed).
fn temporary_names() -> Vec<String> {
    let mut names = Vec::new();
    for file in STATE_FILES.iter().chain(&["daemon.running"]) {
        names.push(format!(".{file}.tmp"));
        for random in ["000000", "AAAAAA", "zzzzzz", "tmp", "a1B2c3"] {
            names.push(format!(".{file}.{random}.tmp"));
        }
    }
    names
}

/// A test directory with the file outside the state directory that the links point to.
struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    state: PathBuf,
    outside: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let outside = dir.join("outside");
        fs::write(&outside, OUTSIDE).unwrap();
        let state = dir.join("state");
        Setup {
            _tmp: tmp,
            dir,
            state,
            outside,
        }
    }

    fn plant(&self, name: &str) {
        fs::create_dir_all(&self.state).unwrap();
        symlink(&self.outside, self.state.join(name)).unwrap();
    }

    fn assert_outside_untouched(&self) {
        assert_eq!(
            fs::read(&self.outside).unwrap(),
            OUTSIDE,
            "the file outside the state directory changed"
        );
    }

    /// The state files, each of which must be a regular file, never a link.
    fn state_files(&self) -> BTreeMap<&'static str, Vec<u8>> {
        STATE_FILES
            .iter()
            .filter(|f| {
                fs::symlink_metadata(self.state.join(f))
                    .map(|m| {
                        assert!(m.is_file(), "{f} is not a regular file");
                        true
                    })
                    .unwrap_or(false)
            })
            .map(|f| (*f, fs::read(self.state.join(f)).unwrap()))
            .collect()
    }

    /// Starts the daemon expecting a refusal that names `name` as a symbolic link; checks that
    /// the state files stayed byte-identical.
    fn refused(&self, name: &str) {
        let before = self.state_files();
        let err = match DaemonProcess::start(Path::new(DAEMON), &self.dir, &[]) {
            Ok(_) => panic!("the daemon started with a symlink at {name}"),
            Err(e) => e.to_string(),
        };
        let path = self.state.join(name).display().to_string();
        assert!(
            err.contains(&format!("{path} is a symbolic link; refusing to follow it")),
            "the refusal does not name {path} as a symlink:\n{err}"
        );
        assert_eq!(self.state_files(), before, "a refused start changed state");
        self.assert_outside_untouched();
    }
}

/// NV_Write of `value` (8 bytes) at the test index, defining it first if needed.
fn write_nv(client: &mut guest_driver::VtpmClient, value: u64) {
    if rc_of(&run(client, &c::nv_read(NV_INDEX, 8, 0))) != rc::SUCCESS {
        define_nv(client, NV_INDEX, 8, c::NV_ORDINARY_ATTRS);
    }
    assert_success(
        &run(client, &c::nv_write(NV_INDEX, 0, &value.to_be_bytes())),
        "NV_Write",
    );
}

fn read_nv(client: &mut guest_driver::VtpmClient) -> u64 {
    let bytes = c::parse_nv_read(&run(client, &c::nv_read(NV_INDEX, 8, 0))).expect("NV_Read");
    u64::from_be_bytes(bytes.try_into().expect("8 bytes"))
}

#[test]
fn symlinks_at_temporary_names_are_never_used() {
    let s = Setup::new();
    let temporaries = temporary_names();
    // Before the instance exists: its creation writes every state file.
    for name in &temporaries {
        s.plant(name);
    }
    let mut d = Daemon::start_in(&s.dir, &[]);
    for name in &temporaries {
        assert!(
            fs::symlink_metadata(s.state.join(name)).is_err(),
            "{name} was not removed when the directory was opened"
        );
    }
    // Planted again while the daemon runs: the writes of NV commands and of the clean stop
    // never use them.
    for name in &temporaries {
        s.plant(name);
    }
    {
        let mut client = d.connect();
        startup(&mut client);
        for value in 1..=20 {
            write_nv(&mut client, value);
        }
    }
    d.stop();
    s.assert_outside_untouched();
    assert_eq!(s.state_files().len(), STATE_FILES.len());
    for name in &temporaries {
        assert!(
            fs::symlink_metadata(s.state.join(name))
                .unwrap()
                .file_type()
                .is_symlink(),
            "{name} was replaced: a write used it"
        );
    }

    // The state is intact, and the next start clears the links away.
    d.respawn();
    {
        let mut client = d.connect();
        startup(&mut client);
        assert_eq!(read_nv(&mut client), 20);
    }
    d.stop();
    for name in &temporaries {
        assert!(fs::symlink_metadata(s.state.join(name)).is_err(), "{name}");
    }
    s.assert_outside_untouched();
}

#[test]
fn symlinks_at_the_lock_and_the_run_marker_are_refused_naming_them() {
    // At the lock of a new state directory: nothing is created.
    let s = Setup::new();
    s.plant("lock");
    s.refused("lock");
    assert!(s.state_files().is_empty());

    // At the lock and at the run marker of an existing instance.
    let s = Setup::new();
    let mut d = Daemon::start_in(&s.dir, &[]);
    {
        let mut client = d.connect();
        startup(&mut client);
        write_nv(&mut client, 7);
    }
    d.stop();
    for name in ["lock", "daemon.running"] {
        let _ = fs::remove_file(s.state.join("lock"));
        s.plant(name);
        s.refused(name);
        fs::remove_file(s.state.join(name)).unwrap();
    }

    // With the links gone the instance opens as it was left.
    d.respawn();
    {
        let mut client = d.connect();
        startup(&mut client);
        assert_eq!(read_nv(&mut client), 7);
    }
    d.stop();
    s.assert_outside_untouched();
}
