//! A private libvirtd for the tests, and `virsh` against it.
//!
//! libvirtd run by root is always the privileged (`qemu:///system`) instance, whose
//! directories are compiled in (`/etc/libvirt`, `/run/libvirt`, `/var/lib/libvirt`, ...); a
//! session instance needs a user other than root. So the test's libvirtd is the system
//! instance in a mount namespace of its own (`unshare --mount`), with a directory of the
//! test bind-mounted over each of libvirt's directories: the host's libvirt configuration
//! and state are neither read nor changed, and paths are the ones a real host has (swtpm
//! state in `/var/lib/libvirt/swtpm/<uuid>/tpm2`, seen by the test at
//! [`Libvirtd::host_path`]). Its `qemu.conf` runs QEMU and swtpm as root without a
//! security driver, cgroups or a /dev namespace (a sandbox without systemd), and writes
//! QEMU's output to files instead of going through virtlogd. virsh connects with
//! `qemu:///system?socket=<the socket in the test's directory>`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::process::stop_child;

/// libvirt's directories and the subdirectory of the test's directory mounted over each.
const MOUNTS: &[(&str, &str)] = &[
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("log", "/var/log/libvirt"),
    // swtpm's logs (libvirt writes them to /var/log/swtpm/libvirt/qemu) and the local CA
    // swtpm_setup signs the EK certificates of libvirt's swtpm instances with.
    ("swtpm-log", "/var/log/swtpm"),
    ("swtpm-localca", "/var/lib/swtpm-localca"),
];

const LIBVIRTD_CONF: &str = r#"unix_sock_dir = "/run/libvirt"
auth_unix_ro = "none"
auth_unix_rw = "none"
"#;

const QEMU_CONF: &str = r#"user = "root"
group = "root"
swtpm_user = "root"
swtpm_group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
"#;

/// A libvirtd process in a mount namespace of its own; [`Drop`] destroys its running
/// domains, stops it and kills any QEMU or swtpm it left behind.
pub struct Libvirtd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The connection URI for `virsh -c`.
    pub uri: String,
    /// libvirtd's own log (its stderr).
    pub log: PathBuf,
}

/// `libvirtd`, if installed (PATH, then /usr/sbin: root's PATH may lack sbin).
pub fn find_libvirtd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join("libvirtd"))
        .find(|p| p.is_file())
}

impl Libvirtd {
    /// Starts `libvirtd` (see [`find_libvirtd`]) and waits until `virsh` gets an answer.
    pub fn start(libvirtd: &Path) -> Result<Libvirtd, String> {
        let dir = tempfile::Builder::new()
            .prefix("vtpm-libvirt-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let mut script = String::from("set -e\n");
        for (sub, target) in MOUNTS {
            let src = dir.path().join(sub);
            std::fs::create_dir_all(&src).map_err(|e| format!("{}: {e}", src.display()))?;
            // The mount point itself is created on the host if missing (an empty directory
            // the libvirt packages would create too); what is mounted stays private.
            script.push_str(&format!(
                "mkdir -p {target}\nmount --bind '{}' {target}\n",
                src.display()
            ));
        }
        script.push_str(&format!(
            "exec '{}' -f /etc/libvirt/libvirtd.conf\n",
            libvirtd.display()
        ));
        let etc = dir.path().join("etc");
        for (name, text) in [("libvirtd.conf", LIBVIRTD_CONF), ("qemu.conf", QEMU_CONF)] {
            std::fs::write(etc.join(name), text).map_err(|e| format!("{name}: {e}"))?;
        }
        let log = dir.path().join("libvirtd.log");
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("unshare (util-linux): {e}"))?;
        let socket = dir.path().join("run/libvirt-sock");
        let mut d = Libvirtd {
            child: Some(child),
            uri: format!("qemu:///system?socket={}", socket.display()),
            dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(child) = d.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    d.child = None;
                    return Err(format!("libvirtd exited ({status}):\n{}", d.log_text()));
                }
            }
            if socket.exists() && d.virsh(&["list", "--all"]).is_ok() {
                return Ok(d);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "libvirtd did not answer within 90 s:\n{}",
                    d.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What libvirtd logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Where a path of libvirt's inside the namespace (under one of its directories, e.g.
    /// `/var/lib/libvirt/swtpm/<uuid>/tpm2`) is for the test.
    pub fn host_path(&self, path: &Path) -> PathBuf {
        for (sub, target) in MOUNTS {
            if let Ok(rest) = path.strip_prefix(target) {
                return self.dir.path().join(sub).join(rest);
            }
        }
        path.to_path_buf()
    }

    /// QEMU's log of domain `name` (`/var/log/libvirt/qemu/<name>.log`).
    pub fn qemu_log(&self, name: &str) -> String {
        let p = self.host_path(&Path::new("/var/log/libvirt/qemu").join(format!("{name}.log")));
        std::fs::read_to_string(p).unwrap_or_default()
    }

    /// Runs `virsh -c <uri> args...` (at most 5 minutes); its stdout, or an error with its
    /// stderr.
    pub fn virsh(&self, args: &[&str]) -> Result<String, String> {
        let mut child = Command::new("virsh")
            .arg("-c")
            .arg(&self.uri)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("virsh: {e}"))?;
        // Both pipes are drained while virsh runs, so that neither can fill and stall it.
        let out_reader = child.stdout.take().map(read_to_end);
        let err_reader = child.stderr.take().map(read_to_end);
        let deadline = Instant::now() + Duration::from_secs(300);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let out = out_reader.and_then(|h| h.join().ok()).unwrap_or_default();
        let err = err_reader.and_then(|h| h.join().ok()).unwrap_or_default();
        match status {
            Some(s) if s.success() => Ok(out),
            Some(s) => Err(format!("virsh {args:?}: {s}: {}{}", err.trim(), out.trim())),
            None => Err(format!("virsh {args:?} did not finish within 5 minutes")),
        }
    }

    /// [`Libvirtd::virsh`] that must succeed.
    pub fn must(&self, args: &[&str]) -> String {
        self.virsh(args)
            .unwrap_or_else(|e| panic!("{e}\nlibvirtd log:\n{}", self.log_text()))
    }

    /// Defines a domain from `xml` (through a file, as an operator would).
    pub fn define(&self, xml: &str) -> Result<String, String> {
        let file = self.dir.path().join("domain.xml");
        std::fs::write(&file, xml).map_err(|e| format!("{}: {e}", file.display()))?;
        let path = file.to_string_lossy().into_owned();
        self.virsh(&["define", &path])
    }

    /// Kills every QEMU or swtpm whose pid file is under libvirt's run directory.
    fn kill_leftovers(&self) {
        let mut stack = vec![self.dir.path().join("run")];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "pid") {
                    let pid: Option<i32> = std::fs::read_to_string(&p)
                        .ok()
                        .and_then(|t| t.trim().parse().ok());
                    let Some(pid) = pid.filter(|&p| p > 1) else {
                        continue;
                    };
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    let cmdline = String::from_utf8_lossy(&cmdline);
                    if cmdline.contains("qemu") || cmdline.contains("swtpm") {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
            }
        }
    }
}

/// Reads `stream` to its end on a thread of its own; the text it read.
fn read_to_end(mut stream: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text
    })
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Ok(names) = self.virsh(&["list", "--name"]) {
                for name in names.lines().map(str::trim).filter(|n| !n.is_empty()) {
                    let _ = self.virsh(&["destroy", name]);
                }
            }
        }
        self.kill_leftovers();
        if let Some(mut child) = self.child.take() {
            if stop_child(&mut child, Signal::SIGTERM, Duration::from_secs(15)).is_err() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.kill_leftovers();
    }
}
