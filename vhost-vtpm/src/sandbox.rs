//! The daemon's sandbox: no new privileges, a seccomp allow-list of system calls, and the
//! file system confined by Landlock.
//!
//! The daemon runs libtpms on bytes a guest chooses and holds the unsealed state key, so a
//! bug there must not turn into a foothold on the host. Once it has opened what it needs at
//! start (the state directory, the engine, the listener), it sets `PR_SET_NO_NEW_PRIVS` and
//! installs a seccomp filter on every thread (new threads inherit it): the system calls a
//! vhost-user device, its state store, the host TPM (tss-esapi loads its TCTI library and
//! talks to `/dev/tpmrm0` or a socket) and a TLS client need are allowed; everything else
//! (running programs, tracing other processes, mounting, namespaces, module loading, BPF,
//! keyrings, io_uring, ...) kills the process with SIGSYS (`--seccomp kill`, the default),
//! is allowed and logged by the kernel (`--seccomp log`, for finding a missing entry), or
//! raises SIGSYS in the calling thread (`--seccomp trap`). `--seccomp none` installs no
//! filter; no-new-privileges is set in every mode.
//!
//! Thread and process creation are both `clone`/`clone3` and cannot be told apart by a filter
//! (clone3's flags are behind a pointer); `execve` is refused, so a process a compromised
//! daemon forks can only run the daemon's own code under the same filter.
//!
//! Landlock (`--sandbox landlock`, the default) confines what the daemon can reach in the file
//! system: it may write only beneath its own state directory and host directory and to the
//! TPM and random devices, and read the system's libraries and configuration (`/usr`, `/lib`,
//! `/etc`: the TCTI library, name resolution and OpenSSL load lazily) and `/proc`, `/sys`.
//! Another VM's state directory, the host's keys elsewhere and every other file are out of
//! reach, whatever the daemon's user could otherwise open. Landlock confines the calling
//! thread and the threads it starts, so it goes up before the daemon starts any thread that
//! serves. A kernel without Landlock serves unconfined, with a warning.
//!
//! Capabilities: a daemon started as root keeps only `CAP_DAC_OVERRIDE` and
//! `CAP_DAC_READ_SEARCH` (to open a TPM device or a state directory owned by another user);
//! every other capability leaves its effective, permitted, inheritable, ambient and bounding
//! sets, so a compromised daemon cannot administer the system, trace, load modules, bind
//! privileged ports or change owners, even where the filter would let a call through. An
//! unprivileged daemon has none to drop.

use std::collections::BTreeMap;
use std::path::Path;

use caps::{CapSet, Capability, CapsHashSet};
use clap::ValueEnum;
use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    ABI,
};
use log::{info, warn};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// What happens to a system call outside the allow-list (`--seccomp`).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// Kill the daemon with SIGSYS.
    #[default]
    Kill,
    /// Allow the call and have the kernel log it (audit log / kernel log).
    Log,
    /// Raise SIGSYS in the calling thread.
    Trap,
    /// No filter (no-new-privileges is still set).
    None,
}

/// Which file system confinement the daemon serves under (`--sandbox`).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsSandbox {
    /// Landlock: writes only beneath the state and host directories.
    #[default]
    Landlock,
    /// No file system confinement.
    None,
}

/// Read-only, beneath: what libraries, the TCTI loader, name resolution and OpenSSL read.
const READABLE: &[&str] = &["/usr", "/lib", "/lib64", "/etc", "/proc", "/sys"];
/// Devices read and written: the host TPM and the random sources.
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/urandom",
    "/dev/random",
    "/dev/tpm0",
    "/dev/tpmrm0",
];

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot drop capabilities: {0}")]
    Capabilities(#[from] caps::errors::CapsError),
    #[error("cannot confine the file system with Landlock: {0}")]
    Landlock(#[from] landlock::RulesetError),
    #[error("cannot set no-new-privileges: {0}")]
    NoNewPrivs(std::io::Error),
    #[error("cannot build the seccomp filter: {0}")]
    Build(String),
    #[error("cannot install the seccomp filter: {0}")]
    Install(String),
}

/// System calls every architecture has under these names.
const ALLOWED: &[libc::c_long] = &[
    // Memory and threads (std, glibc, libtpms, OpenSSL).
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_membarrier,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_get_robust_list,
    libc::SYS_set_tid_address,
    libc::SYS_rseq,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_tgkill,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_setaffinity,
    libc::SYS_prctl,
    libc::SYS_prlimit64,
    libc::SYS_getrlimit,
    libc::SYS_getrusage,
    libc::SYS_sysinfo,
    libc::SYS_uname,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_restart_syscall,
    // Signals (the signal thread's sigwait, SIGTERM handling, aborts).
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_sigaltstack,
    // Files: the state store (durable_fs: O_EXCL temporaries, fsync, rename, directory
    // fsync, flock; A/B slots rewritten in place with pwrite, ftruncate, fdatasync and
    // sync_file_range), the host key, TCTI libraries, /dev/tpmrm0.
    libc::SYS_openat,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_readlinkat,
    libc::SYS_getdents64,
    libc::SYS_getcwd,
    libc::SYS_fcntl,
    libc::SYS_flock,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_sync_file_range,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlinkat,
    libc::SYS_mkdirat,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_umask,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_ioctl,
    // Event loops: vhost-user-backend's epoll, eventfds, the vhost-user socket and the
    // guest memory it maps; the host TPM and TLS sockets.
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_ppoll,
    libc::SYS_pselect6,
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_shutdown,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
];

/// The x86_64 names that aarch64 has only as their `*at`/`p*` successors.
#[cfg(target_arch = "x86_64")]
const ALLOWED_ARCH: &[libc::c_long] = &[
    libc::SYS_arch_prctl,
    libc::SYS_open,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_access,
    libc::SYS_readlink,
    libc::SYS_rename,
    libc::SYS_unlink,
    libc::SYS_mkdir,
    libc::SYS_dup2,
    libc::SYS_pipe,
    libc::SYS_poll,
    libc::SYS_select,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_create,
    libc::SYS_eventfd,
    libc::SYS_getdents,
    libc::SYS_time,
];
#[cfg(not(target_arch = "x86_64"))]
const ALLOWED_ARCH: &[libc::c_long] = &[];

/// The syscalls the filter allows, for documentation and tests.
pub fn allowed_syscalls() -> impl Iterator<Item = libc::c_long> {
    ALLOWED.iter().chain(ALLOWED_ARCH).copied()
}

/// Compiles the filter for `mode`; `None` for [`SeccompMode::None`].
pub fn filter(mode: SeccompMode) -> Result<Option<BpfProgram>, SandboxError> {
    let mismatch = match mode {
        SeccompMode::Kill => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
        SeccompMode::Trap => SeccompAction::Trap,
        SeccompMode::None => return Ok(None),
    };
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        allowed_syscalls().map(|nr| (nr, Vec::new())).collect();
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| SandboxError::Build(e.to_string()))?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
        .map_err(|e| SandboxError::Build(e.to_string()))?;
    BpfProgram::try_from(filter)
        .map(Some)
        .map_err(|e| SandboxError::Build(e.to_string()))
}

/// Confines the calling thread (and the threads it starts) to `writable` for writes and to
/// the system's read-only paths; returns whether the kernel enforced it.
pub fn confine_fs(writable: &[&Path]) -> Result<RulesetStatus, SandboxError> {
    let abi = ABI::V5;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(READABLE, AccessFs::from_read(abi)))?
        .add_rules(path_beneath_rules(
            DEVICES,
            AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev,
        ))?
        .add_rules(path_beneath_rules(writable, AccessFs::from_all(abi)))?
        .restrict_self()?;
    Ok(status.ruleset)
}

/// The capabilities a daemon started as root keeps: file access only.
pub const KEPT_CAPABILITIES: [Capability; 2] = [
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
];

/// Drops every capability but [`KEPT_CAPABILITIES`] from the calling thread (and the threads
/// it starts): the bounding set first (that needs `CAP_SETPCAP`, which goes with the rest),
/// then the ambient, inheritable, permitted and effective sets.
pub fn drop_capabilities() -> Result<(), SandboxError> {
    let keep: CapsHashSet = KEPT_CAPABILITIES.into_iter().collect();
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for cap in caps::runtime::thread_all_supported() {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    let kept: CapsHashSet = caps::read(None, CapSet::Permitted)?
        .intersection(&keep)
        .copied()
        .collect();
    caps::set(None, CapSet::Effective, &kept)?;
    caps::set(None, CapSet::Permitted, &kept)?;
    Ok(())
}

/// Drops capabilities, sets no-new-privileges, confines the file system (`fs`: `writable` are
/// the directories the daemon writes) and installs `mode`'s filter on every thread.
pub fn enter(mode: SeccompMode, fs: FsSandbox, writable: &[&Path]) -> Result<(), SandboxError> {
    drop_capabilities()?;
    if fs == FsSandbox::Landlock {
        match confine_fs(writable)? {
            RulesetStatus::FullyEnforced => info!(
                "file system confined (Landlock): writes only beneath {}",
                writable
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            RulesetStatus::PartiallyEnforced => {
                warn!("file system confined (Landlock) only in part: the kernel's ABI is older")
            }
            RulesetStatus::NotEnforced => {
                warn!("file system NOT confined: this kernel has no Landlock (--sandbox landlock)")
            }
        }
    }
    let program = filter(mode)?;
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only and changes no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(SandboxError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    if let Some(program) = program {
        seccompiler::apply_filter_all_threads(&program)
            .map_err(|e| SandboxError::Install(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};

    /// Forks; the child enters the sandbox in `mode` and calls `f`, exiting 0 if it returns.
    /// The program is compiled before the fork so the child only makes system calls.
    fn in_sandboxed_child(mode: SeccompMode, f: fn()) -> WaitStatus {
        let program = filter(mode).unwrap();
        // SAFETY: the child only makes raw system calls (prctl, seccomp, the call under test,
        // _exit) and touches no lock another thread of the test harness may hold.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                // SAFETY: as above; integer arguments only.
                unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                if let Some(p) = &program {
                    if seccompiler::apply_filter(p).is_err() {
                        // SAFETY: _exit ends the child without running the parent's handlers.
                        unsafe { libc::_exit(3) };
                    }
                }
                f();
                // SAFETY: as above.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => waitpid(child, None).unwrap(),
        }
    }

    fn call_ptrace() {
        // SAFETY: PTRACE_TRACEME with null arguments; the filter stops it before the kernel
        // acts on it, and without the filter it only marks this short-lived child as traced.
        unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0) };
    }

    fn call_execve() {
        // SAFETY: execve with null pointers fails with EFAULT if the filter lets it through.
        unsafe { libc::syscall(libc::SYS_execve, 0, 0, 0) };
    }

    fn call_allowed() {
        let mut buf = [0u8; 8];
        // SAFETY: getrandom into a local buffer of the length given.
        unsafe { libc::syscall(libc::SYS_getrandom, buf.as_mut_ptr(), buf.len(), 0) };
        // SAFETY: getpid takes no arguments.
        unsafe { libc::syscall(libc::SYS_getpid) };
    }

    #[test]
    fn a_forbidden_call_kills_the_process() {
        for f in [call_ptrace as fn(), call_execve] {
            match in_sandboxed_child(SeccompMode::Kill, f) {
                WaitStatus::Signaled(_, Signal::SIGSYS, _) => {}
                other => panic!("expected death by SIGSYS, got {other:?}"),
            }
        }
    }

    #[test]
    fn allowed_calls_run_and_log_mode_does_not_kill() {
        assert!(matches!(
            in_sandboxed_child(SeccompMode::Kill, call_allowed),
            WaitStatus::Exited(_, 0)
        ));
        assert!(matches!(
            in_sandboxed_child(SeccompMode::Log, call_ptrace),
            WaitStatus::Exited(_, 0)
        ));
        assert!(matches!(
            in_sandboxed_child(SeccompMode::None, call_execve),
            WaitStatus::Exited(_, 0)
        ));
    }

    // Landlock: a confined child writes beneath its writable directory, reads the system's
    // files, and is refused writing or reading anywhere else (another VM's directory).
    #[test]
    fn landlock_confines_writes_to_the_writable_directories() {
        use std::os::unix::ffi::OsStrExt;
        let mine = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("state.vtpm"), b"another VM's").unwrap();
        let c_path =
            |p: std::path::PathBuf| std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        let mine_file = c_path(mine.path().join("new"));
        let other_new = c_path(other.path().join("new"));
        let other_state = c_path(other.path().join("state.vtpm"));
        let system = c_path("/etc/passwd".into());
        let mine_dir = mine.path().to_owned();
        // SAFETY: the child confines itself, makes raw open calls on paths prepared before
        // the fork and _exits. The landlock calls allocate: glibc's fork holds malloc's locks
        // across the fork, so the child's allocator is consistent.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let code = match confine_fs(&[&mine_dir]) {
                    Ok(RulesetStatus::FullyEnforced) => {
                        let open = |p: &std::ffi::CString, flags| {
                            // SAFETY: a NUL-terminated path; the fd is leaked to _exit.
                            unsafe { libc::open(p.as_ptr(), flags, 0o600) }
                        };
                        let create = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
                        let ok = open(&mine_file, create) >= 0
                            && open(&system, libc::O_RDONLY) >= 0
                            && open(&other_new, create) < 0
                            && open(&other_state, libc::O_RDONLY) < 0
                            && open(&other_state, libc::O_WRONLY) < 0;
                        if ok {
                            0
                        } else {
                            1
                        }
                    }
                    Ok(_) => 2,
                    Err(_) => 3,
                };
                // SAFETY: _exit ends the child without running the parent's handlers.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => match waitpid(child, None).unwrap() {
                WaitStatus::Exited(_, 0) => {}
                WaitStatus::Exited(_, 2) => panic!("this kernel does not enforce Landlock"),
                other => panic!("the confined child got {other:?} (1: a wrong access)"),
            },
        }
        assert!(mine.path().join("new").exists());
        assert!(!other.path().join("new").exists());
    }

    #[test]
    fn the_allow_list_has_no_dangerous_calls() {
        let allowed: Vec<_> = allowed_syscalls().collect();
        for nr in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_bpf,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_keyctl,
            libc::SYS_io_uring_setup,
            libc::SYS_process_vm_writev,
            libc::SYS_userfaultfd,
            libc::SYS_perf_event_open,
        ] {
            assert!(!allowed.contains(&nr), "syscall {nr} must not be allowed");
        }
    }
}
