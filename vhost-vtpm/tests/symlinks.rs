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
//! byte-identical afterwards. And under strace, every open of a name in the state directory
//! carries `O_NOFOLLOW`, and every open that may create one `O_EXCL`.

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
const STATE_FILES: [&str; 4] = ["instance.key", "state.vtpm", "state.b.vtpm", "state.gen"];

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

/// One `open`-family call of an strace log (`strace -f -y`) on a name inside `dir`: the name
/// and the flags it was opened with.
fn opens_inside(trace: &str, dir: &Path) -> Vec<(PathBuf, String)> {
    let mut opens = Vec::new();
    for line in trace.lines() {
        let Some(call) = ["openat(", "open(", "openat2(", "creat("]
            .iter()
            .find_map(|c| line.find(c).map(|i| &line[i..]))
        else {
            continue;
        };
        // openat(DIRFD</dir>, "name", FLAGS...; open("name", FLAGS...
        let (Some(q1), Some(paren)) = (call.find('"'), call.find('(')) else {
            continue;
        };
        let Some(q2) = call[q1 + 1..].find('"').map(|i| q1 + 1 + i) else {
            continue;
        };
        let name = Path::new(&call[q1 + 1..q2]);
        let base = call[paren + 1..q1]
            .split_once('<')
            .and_then(|(_, rest)| rest.split_once('>'))
            .map(|(p, _)| PathBuf::from(p));
        let path = match base {
            Some(base) if name.is_relative() => base.join(name),
            _ => name.to_path_buf(),
        };
        let flags: String = call[q2 + 1..]
            .trim_start_matches(", ")
            .chars()
            .take_while(|c| !matches!(c, ',' | ')' | ' '))
            .collect();
        if path.starts_with(dir) && path != dir {
            opens.push((path, flags));
        }
    }
    opens
}

// Issue 11: under strace, every file the daemon opens inside its state directory (creating the
// instance, durable NV writes, a clean stop, a restart, a SIGKILL and the recovery after it) is
// opened with O_NOFOLLOW, and every one it may create with O_CREAT also has O_EXCL.
#[test]
fn state_files_are_created_exclusively_and_never_opened_through_a_symlink() {
    let s = Setup::new();
    let trace = s.dir.join("trace");
    let wrapper = s.dir.join("traced-daemon");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec strace -f -qq -y -e trace=open,openat,openat2,creat -o {}.$$ -- {DAEMON} \"$@\"\n",
            trace.display()
        ),
    )
    .unwrap();
    fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    let mut d = DaemonProcess::start(&wrapper, &s.dir, &["--seccomp", "kill"]).unwrap();
    // The daemon is strace's child; strace itself holds fatal signals while it traces.
    let daemon_pid = |d: &DaemonProcess| -> i32 {
        let strace = d.pid().unwrap();
        let children =
            fs::read_to_string(format!("/proc/{strace}/task/{strace}/children")).unwrap();
        children.split_whitespace().next().unwrap().parse().unwrap()
    };
    let stop = |d: &mut DaemonProcess, sig: nix::sys::signal::Signal| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon_pid(d)), sig).unwrap();
        d.wait_exit().unwrap();
    };
    for (round, sig) in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGKILL,
        nix::sys::signal::Signal::SIGTERM,
    ]
    .into_iter()
    .enumerate()
    {
        let mut client = guest_driver::VtpmClient::connect(&d_socket(&s), Default::default())
            .unwrap_or_else(|e| panic!("connect: {e}\n{}", d.log_text()));
        if round == 0 {
            startup(&mut client);
        }
        for v in 0..3 {
            write_nv(&mut client, round as u64 * 10 + v);
        }
        assert_eq!(read_nv(&mut client), round as u64 * 10 + 2);
        drop(client);
        stop(&mut d, sig);
        d.restart().unwrap();
    }
    let client = guest_driver::VtpmClient::connect(&d_socket(&s), Default::default()).unwrap();
    drop(client);
    stop(&mut d, nix::sys::signal::Signal::SIGTERM);

    let mut log = String::new();
    for entry in fs::read_dir(&s.dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with("trace.") {
            log.push_str(&fs::read_to_string(entry.path()).unwrap());
        }
    }
    let opens = opens_inside(&log, &s.state);
    for file in STATE_FILES {
        assert!(
            opens.iter().any(|(p, _)| p.ends_with(file)),
            "strace saw no open of {file}:\n{log}"
        );
    }
    let bad: Vec<_> = opens
        .iter()
        .filter(|(_, flags)| {
            !flags.contains("O_NOFOLLOW")
                || (flags.contains("O_CREAT") && !flags.contains("O_EXCL"))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "opens in the state directory that may follow a symlink or reuse a name: {bad:#?}"
    );
}

fn d_socket(s: &Setup) -> PathBuf {
    s.dir.join("vtpm.sock")
}
