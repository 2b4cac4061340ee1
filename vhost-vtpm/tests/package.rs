//! The Debian package of the host side (packaging/): `packaging/deb/build.sh` builds it, and
//! this test checks what an operator gets: the control fields and file list, an installation
//! into a scratch root (maintainer scripts included), man pages that name every option of
//! every binary, units whose daemon options exist, and the daemon started exactly as
//! `vhost-vtpm@vm1.service` starts it (the socket unit's listener as fd 3) serving a TPM
//! command, a reconnect, and a restart on the same listener; then a purge that keeps the host
//! key while vTPM state is left.
//!
//! build.sh makes the release build scripts/setup.sh makes (a no-op after it); outside the
//! full test run, `VTPM_DEB_CARGO_ARGS="-p vhost-vtpm -p vtpm-state ..."` builds less.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{get_random, startup};
use guest_driver::{ClientOptions, VtpmClient};
use nix::sys::signal::Signal;

/// The binaries the package ships, each in /usr/bin with a man page.
const BINARIES: [&str; 6] = [
    "vhost-vtpm",
    "vtpm-state",
    "vtpm-host",
    "vtpm-ca",
    "vtpm-migrate",
    "vtpm-verify",
];
/// The VM the units are instantiated for.
const VM: &str = "vm1";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `--options` a text names (words of letters, digits and dashes after `--`).
fn options(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2 && !w.ends_with('-'))
        .map(str::to_owned)
        .collect()
}

/// A binary's `--help` and that of each of its subcommands (the `Commands:` lists, all the
/// way down: `vtpm-ca acl add`).
fn all_help(bin: &Path) -> String {
    fn walk(bin: &Path, path: &mut Vec<String>, text: &mut String) {
        let help = output(Command::new(bin).args(path.iter()).arg("--help"));
        text.push_str(&help);
        let mut in_commands = false;
        for line in help.lines() {
            if line.starts_with("Commands:") {
                in_commands = true;
                continue;
            }
            if in_commands && !line.starts_with(' ') {
                in_commands = false;
            }
            if let Some(sub) = line.split_whitespace().next().filter(|_| in_commands) {
                if sub != "help" {
                    path.push(sub.to_owned());
                    walk(bin, path, text);
                    path.pop();
                }
            }
        }
    }
    let mut text = String::new();
    walk(bin, &mut Vec::new(), &mut text);
    text
}

/// A unit file's `Key=value` settings, in order (continuation lines are not used).
fn settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .filter(|l| !l.starts_with(['#', ';', '[']))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn setting<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// `Environment=` assignments, split as systemd does: whitespace separates them, double
/// quotes keep one together.
fn environment(value: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let (mut word, mut quoted) = (String::new(), false);
    for c in value.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => words.extend(Some(std::mem::take(&mut word))),
            c => word.push(c),
        }
    }
    words.push(word);
    words
        .into_iter()
        .filter(|w| !w.is_empty())
        .filter_map(|w| w.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

/// ExecStart as systemd runs it for instance [`VM`]: `%i` replaced, each unbraced `$VAR`
/// replaced by its value split at whitespace, then every absolute path moved under `root`.
fn exec_start(execstart: &str, env: &BTreeMap<String, String>, root: &Path) -> Vec<String> {
    execstart
        .replace("%i", VM)
        .split_whitespace()
        .flat_map(|w| match w.strip_prefix('$') {
            Some(var) => env
                .get(var)
                .map(|v| v.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
            None => vec![w.to_owned()],
        })
        .map(|w| match w.strip_prefix('/') {
            Some(rel) => root.join(rel).to_string_lossy().into_owned(),
            None => w,
        })
        .collect()
}

/// Starts `argv` with `listener` as its fd 3, as systemd hands a socket unit's listener to
/// its service (with LISTEN_FDS=1; the daemon is told the fd by `--fd 3`).
fn spawn_with_fd3(argv: &[String], listener: &UnixListener, log: &Path) -> Child {
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", format!("vhost-vtpm@{VM}.socket"))
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        );
    // SAFETY: only async-signal-safe dup2 and fcntl between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto another fd clears FD_CLOEXEC; onto itself it does not.
            let ok = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0) >= 0
            } else {
                libc::dup2(fd, 3) == 3
            };
            if !ok {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

fn stop(child: &mut Child, log: &Path) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "the daemon exited {status} on SIGTERM\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn connect(socket: &Path, log: &Path) -> VtpmClient {
    VtpmClient::connect(socket, ClientOptions::default()).unwrap_or_else(|e| {
        panic!(
            "connect: {e}\n--- daemon log ---\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    })
}

#[test]
fn debian_package_installs_and_its_units_serve_a_vtpm() {
    let ws = workspace();
    // 1. Build (a no-op cargo build after scripts/setup.sh; the .deb is reused if unchanged).
    let stdout = output(Command::new("bash").arg(ws.join("packaging/deb/build.sh")));
    let deb = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("build.sh printed the .deb path"),
    );
    assert!(deb.is_file(), "{} is not a file", deb.display());

    // 2. The control file.
    let arch = output(Command::new("dpkg").arg("--print-architecture"));
    let field = |name: &str| {
        output(
            Command::new("dpkg-deb")
                .args(["--field"])
                .arg(&deb)
                .arg(name),
        )
        .trim()
        .to_owned()
    };
    assert_eq!(field("Package"), "vhost-vtpm");
    assert_eq!(
        field("Version"),
        format!("{}-1", env!("CARGO_PKG_VERSION")),
        "the workspace version, Debian revision 1"
    );
    assert_eq!(field("Architecture"), arch.trim());
    assert_eq!(field("Section"), "admin");
    assert!(field("Maintainer").contains('@'));
    assert!(!field("Description").is_empty());
    let depends = field("Depends");
    for lib in ["libc6", "libtpms0", "libssl3", "libtss2-esys", "libsqlite3"] {
        assert!(
            depends.contains(lib),
            "Depends lacks {lib} (dpkg-shlibdeps): {depends}"
        );
    }
    let info = output(Command::new("dpkg-deb").arg("--info").arg(&deb));
    for part in ["control", "md5sums", "conffiles", "postinst", "postrm"] {
        assert!(info.contains(part), "no {part} in the package:\n{info}");
    }

    // 3. The file list: every file owned by root, where Debian expects it.
    let contents = output(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let mut expected: Vec<String> = BINARIES
        .iter()
        .flat_map(|b| {
            [
                format!("./usr/bin/{b}"),
                format!("./usr/share/man/man1/{b}.1.gz"),
            ]
        })
        .collect();
    expected.extend(
        [
            "./lib/systemd/system/vhost-vtpm@.socket",
            "./lib/systemd/system/vhost-vtpm@.service",
            "./etc/vhost-vtpm/vhost-vtpm.conf",
            "./usr/share/doc/vhost-vtpm/README.md",
            "./usr/share/doc/vhost-vtpm/README.Debian",
            "./usr/share/doc/vhost-vtpm/copyright",
            "./usr/share/doc/vhost-vtpm/changelog.Debian.gz",
        ]
        .map(str::to_owned),
    );
    for path in &expected {
        assert!(
            contents.lines().any(|l| l.ends_with(&format!(" {path}"))),
            "{path} is not in the package:\n{contents}"
        );
    }
    for line in contents.lines() {
        assert!(line.contains(" root/root "), "not owned by root: {line}");
    }

    // 4. Installed into a scratch root by dpkg itself, maintainer scripts run outside a chroot
    // (DPKG_ROOT set): the postinst makes the host key the units use.
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("root");
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    output(
        Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args([
                "--force-script-chrootless",
                "--force-depends",
                "--force-not-root",
                "--log=/dev/null",
                "-i",
            ])
            .arg(&deb),
    );
    let status = std::fs::read_to_string(root.join("var/lib/dpkg/status")).unwrap();
    assert!(
        status.contains("Package: vhost-vtpm") && status.contains("Status: install ok installed"),
        "dpkg did not record the installation:\n{status}"
    );
    let host_key = root.join("etc/vhost-vtpm/host.key");
    let mode = std::fs::metadata(&host_key)
        .expect("the postinst creates /etc/vhost-vtpm/host.key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "host.key mode {mode:o}");
    let key_before = std::fs::read(&host_key).unwrap();
    // Configured again (an upgrade): the key is kept, never replaced.
    output(
        Command::new("sh")
            .arg(root.join("var/lib/dpkg/info/vhost-vtpm.postinst"))
            .args(["configure", "0.0.1-1"])
            .env("DPKG_ROOT", &root),
    );
    assert_eq!(std::fs::read(&host_key).unwrap(), key_before);

    // 5. Every binary runs, and its man page names every option its --help lists.
    for b in BINARIES {
        let bin = root.join("usr/bin").join(b);
        let help = all_help(&bin);
        let man_gz = root.join(format!("usr/share/man/man1/{b}.1.gz"));
        let man = output(Command::new("gzip").arg("-dc").arg(&man_gz))
            .replace("\\-", "-")
            .replace("\\fB", "")
            .replace("\\fR", "")
            .replace("\\fI", "")
            .replace("\\fP", "");
        assert!(man.contains(".TH"), "{b}.1 is not a man page");
        let missing: Vec<_> = options(&help)
            .into_iter()
            .filter(|o| !man.contains(o.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "{b}.1 does not name {missing:?} that {b} --help lists"
        );
    }

    // 6. The units: the socket is /run/vhost-vtpm/%i.sock, the service runs the packaged
    // daemon on fd 3 with its state in its StateDirectory, and every option it passes (in
    // ExecStart, the unit's defaults and the configuration file's examples) exists.
    let units = root.join("lib/systemd/system");
    let socket_unit = settings(&std::fs::read_to_string(units.join("vhost-vtpm@.socket")).unwrap());
    assert_eq!(
        setting(&socket_unit, "ListenStream"),
        ["/run/vhost-vtpm/%i.sock"]
    );
    assert_eq!(setting(&socket_unit, "SocketMode"), ["0660"]);
    let service_text = std::fs::read_to_string(units.join("vhost-vtpm@.service")).unwrap();
    let service = settings(&service_text);
    let execstart = setting(&service, "ExecStart");
    assert_eq!(execstart.len(), 1, "one ExecStart");
    let execstart = execstart[0];
    assert!(
        execstart.starts_with("/usr/bin/vhost-vtpm --fd 3 "),
        "{execstart}"
    );
    assert!(execstart.contains("--state-dir /var/lib/vhost-vtpm/%i "));
    assert_eq!(setting(&service, "StateDirectory"), ["vhost-vtpm/%i"]);
    let daemon = root.join("usr/bin/vhost-vtpm");
    let daemon_options = options(&all_help(&daemon));
    let mut env = BTreeMap::new();
    for value in setting(&service, "Environment") {
        env.extend(environment(value));
    }
    let conf = std::fs::read_to_string(root.join("etc/vhost-vtpm/vhost-vtpm.conf")).unwrap();
    let mut used = options(execstart);
    used.extend(env.values().flat_map(|v| options(v)));
    used.extend(options(&conf));
    let unknown: Vec<_> = used.difference(&daemon_options).collect();
    assert!(
        unknown.is_empty(),
        "the units or vhost-vtpm.conf pass {unknown:?}, which vhost-vtpm --help lacks"
    );
    // systemd's own check (scripts/setup.sh installs systemd; PID 1 need not be it): under
    // --root it wants the targets and slices the units hang on, so the host's are copied in.
    let host_units = Path::new("/lib/systemd/system");
    assert!(
        host_units.is_dir(),
        "no {}: run scripts/setup.sh (it installs systemd, for systemd-analyze)",
        host_units.display()
    );
    for e in std::fs::read_dir(host_units).unwrap().flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if (name.ends_with(".target") || name.ends_with(".slice")) && e.path().is_file() {
            std::fs::copy(e.path(), units.join(&*name)).unwrap();
        }
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.display()))
        .arg(units.join("vhost-vtpm@.socket"))
        .arg(units.join("vhost-vtpm@.service"))
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze: {e}: run scripts/setup.sh (it installs systemd)")
        });
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify: {}\n{text}",
        out.status
    );

    // 7. The daemon as vhost-vtpm@vm1.service runs it: the same arguments (paths under the
    // scratch root), the socket unit's listener as fd 3, a state directory made 0700 as
    // StateDirectoryMode makes it.
    let argv = exec_start(execstart, &env, &root);
    let state = root.join(format!("var/lib/vhost-vtpm/{VM}"));
    durable_fs::create_private_dir(&state).unwrap();
    let run = root.join("run/vhost-vtpm");
    std::fs::create_dir_all(&run).unwrap();
    let socket = run.join(format!("{VM}.sock"));
    // The socket unit's listener: held here, as systemd holds it, for the whole test.
    let listener = UnixListener::bind(&socket).unwrap();
    let log = scratch.path().join("daemon.log");
    let mut child = spawn_with_fd3(&argv, &listener, &log);
    answers_one_connection(&socket, &log);
    // QEMU's reconnect-ms: the same daemon serves the next connection.
    answers_one_connection(&socket, &log);
    // systemctl stop: SIGTERM, the state is saved, exit 0.
    stop(&mut child, &log);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("vTPM state saved, exiting"), "{logged}");
    assert!(
        state.join("instance.key").is_file(),
        "the state is in the StateDirectory"
    );

    // The listener is the socket unit's, not the daemon's: after the daemon exits it must
    // still take connections, and the next one starts the service again on it.
    let early = UnixStream::connect(&socket)
        .expect("the socket unit's listener still accepts connections after the daemon stopped");
    drop(early);
    let mut child = spawn_with_fd3(&argv, &listener, &log);
    answers_one_connection(&socket, &log);
    stop(&mut child, &log);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains(&format!("belongs to VM {VM}")),
        "--vm-id %i bound the instance to its VM:\n{logged}"
    );

    // 8. Purged while vTPM state is left: the files go, the host key protecting that state
    // stays (the postrm says so).
    let out = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args([
            "--force-script-chrootless",
            "--force-not-root",
            "--log=/dev/null",
            "--purge",
            "vhost-vtpm",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dpkg --purge: {}\n{text}", out.status);
    assert!(!root.join("usr/bin/vhost-vtpm").exists());
    assert!(!root.join("etc/vhost-vtpm/vhost-vtpm.conf").exists());
    assert_eq!(std::fs::read(&host_key).unwrap(), key_before, "{text}");
    assert!(text.contains("keeping"), "the postrm says why: {text}");
}

/// One frontend connection: TPM2_Startup and GetRandom answered, then the connection closed
/// (as QEMU's would be).
fn answers_one_connection(socket: &Path, log: &Path) {
    let mut client = connect(socket, log);
    startup(&mut client);
    assert_eq!(get_random(&mut client, 16).len(), 16);
}
