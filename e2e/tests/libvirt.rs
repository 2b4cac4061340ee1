//! libvirt for real: a libvirtd from Debian (a private system instance, testbed's
//! [`Libvirtd`]) drives our QEMU build through `<emulator>`, the device through
//! `<qemu:commandline>`, exactly as qemu/README.md says: the README's XML itself is defined
//! (its documented placeholders substituted, plus a kernel, an initrd and a serial console
//! for the test guest) and started with `virsh start`. Then a VM with libvirt's own tpm-crb +
//! swtpm is switched to vhost-vtpm by the README's import command and XML change, keeping
//! its NV and its persistent key.
//!
//! scripts/setup.sh installs libvirt; without it the tests fail with that fix, as every
//! end-to-end test does without its set-up.

// Integration tests: a failed step panics with its reason (clippy.toml covers #[test] fns
// only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use testbed::{
    ensure_host_key, find_libvirtd, readme_blocks, run_tool, start_daemon, workspace_bin,
    ConsoleListener, Env, GuestConsole, Libvirtd, GUEST_CMDLINE,
};

/// One guest at a time: TCG guests on a small machine are slow enough one by one.
static SERIAL: Mutex<()> = Mutex::new(());

const LIBVIRT: &str = "## libvirt";
const SWITCH: &str = "## Switching an existing libvirt VM from tpm-crb + swtpm to vhost-vtpm";
const NV_INDEX: &str = "0x1500020";
const PERSISTENT: &str = "0x81000010";

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu/README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first ```LANG block under `heading` of qemu/README.md.
fn block(readme: &str, heading: &str, lang: &str) -> String {
    readme_blocks(readme, heading, lang)
        .unwrap()
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no ```{lang} block under {heading:?} in qemu/README.md"))
}

/// `text` with `from` (which must occur exactly once: the README must still say it)
/// replaced by `to`.
fn substitute(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "qemu/README.md's XML should contain {from:?} once:\n{text}"
    );
    text.replacen(from, to, 1)
}

/// `xml` without the lines from the one that is `open` (trimmed) to the one that is `close`.
fn cut_block(xml: &str, open: &str, close: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    let mut found = false;
    for line in xml.lines() {
        if line.trim() == open {
            inside = true;
            found = true;
        }
        if !inside {
            out.push_str(line);
            out.push('\n');
        }
        if inside && line.trim() == close {
            inside = false;
        }
    }
    assert!(found && !inside, "no {open} ... {close} in:\n{xml}");
    out
}

/// The README's domain for the test: the placeholders it documents (domain type, name,
/// memory, emulator, socket) substituted, and what the test guest needs added (direct kernel
/// boot, a serial console on a unix socket the test listens on).
fn for_test(
    readme_xml: &str,
    env: &Env,
    name: &str,
    socket: Option<&Path>,
    console: &Path,
) -> String {
    let mut xml = readme_xml.to_string();
    // No KVM for the test's guests (nested KVM hangs on CI machines): TCG.
    xml = substitute(&xml, "<domain type='kvm'", "<domain type='qemu'");
    xml = substitute(&xml, "<name>vm1</name>", &format!("<name>{name}</name>"));
    xml = substitute(
        &xml,
        "<memory unit='GiB'>2</memory>",
        "<memory unit='MiB'>512</memory>",
    );
    xml = substitute(
        &xml,
        "/root/.cache/vhost-vtpm/qemu-10.0.2-HASH/install/bin/qemu-system-x86_64",
        &env.qemu.to_string_lossy(),
    );
    if let Some(socket) = socket {
        xml = substitute(&xml, "/run/vtpm/vm1.sock", &socket.to_string_lossy());
    }
    xml = substitute(
        &xml,
        "hvm</type>\n",
        &format!(
            "hvm</type>\n    <kernel>{}</kernel>\n    <initrd>{}</initrd>\n    <cmdline>{GUEST_CMDLINE}</cmdline>\n",
            env.kernel.display(),
            env.initrd.display()
        ),
    );
    substitute(
        &xml,
        "<!-- ... disks, network ... -->",
        &format!(
            "<serial type='unix'>\n      <source mode='connect' path='{}'/>\n      <target port='0'/>\n    </serial>",
            console.display()
        ),
    )
}

/// The README's vhost-vtpm domain turned back into the VM it switches from: without the
/// qemu namespace, the shared memory and the `qemu:commandline`, with the README's
/// `<tpm model='tpm-crb'>` element.
fn crb_readme_xml(readme: &str, vtpm_xml: &str) -> String {
    let tpm = block(readme, SWITCH, "xml");
    assert!(tpm.contains("<tpm model='tpm-crb'>"), "{tpm}");
    let xml = substitute(
        vtpm_xml,
        " xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'",
        "",
    );
    let xml = cut_block(&xml, "<memoryBacking>", "</memoryBacking>");
    let xml = cut_block(&xml, "<qemu:commandline>", "</qemu:commandline>");
    let tpm: String = tpm.lines().map(|l| format!("    {l}\n")).collect();
    substitute(&xml, "  </devices>\n", &format!("{tpm}  </devices>\n"))
}

/// The README's XML diff, checked against the two documents: the crb domain's lines less
/// the `-` lines plus the `+` lines are the vhost-vtpm domain's lines (comments and blank
/// lines aside), and every context line is in both.
fn check_readme_diff(readme: &str, crb: &str, vtpm: &str) {
    let lines = |xml: &str| -> Vec<String> {
        xml.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("<!--"))
            .map(str::to_owned)
            .collect()
    };
    let diff = block(readme, SWITCH, "diff");
    let mut result = lines(crb);
    let mut added = Vec::new();
    for line in diff.lines() {
        let (mark, rest) = line.split_at(line.len().min(1));
        let rest = rest.trim();
        match mark {
            "-" => {
                let at = result
                    .iter()
                    .position(|l| l == rest)
                    .unwrap_or_else(|| panic!("README diff removes {rest:?}, not in:\n{crb}"));
                result.remove(at);
            }
            "+" => added.push(rest.to_string()),
            _ if rest == "..." || rest.is_empty() => {}
            _ => assert!(
                lines(crb).contains(&rest.to_string()) && lines(vtpm).contains(&rest.to_string()),
                "README diff context {rest:?} is not in both documents"
            ),
        }
    }
    result.extend(added);
    let mut want = lines(vtpm);
    result.sort();
    want.sort();
    assert_eq!(
        result, want,
        "qemu/README.md's diff does not turn the tpm-crb domain into the vhost-vtpm one"
    );
}

/// What each test starts from: one guest at a time, the test's own libvirtd, the set-up's
/// paths, a scratch directory with the guest's console socket, and qemu/README.md.
struct Bed {
    lv: Libvirtd,
    env: Env,
    dir: tempfile::TempDir,
    listener: ConsoleListener,
    readme: String,
    /// Last, so dropped last: the next test starts once this one's libvirtd is gone.
    _one: std::sync::MutexGuard<'static, ()>,
}

impl Bed {
    fn new() -> Bed {
        let one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        // A failure with the fix when libvirt is not installed, rather than a pass having
        // done nothing.
        let bin = find_libvirtd().unwrap_or_else(|| {
            panic!(
                "libvirtd is not installed: run scripts/setup.sh (it installs libvirt-daemon-system)"
            )
        });
        let lv = Libvirtd::start(&bin).unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().unwrap();
        let listener = ConsoleListener::bind(&dir.path().join("console.sock")).unwrap();
        Bed {
            lv,
            env: Env::load(),
            dir,
            listener,
            readme: readme(),
            _one: one,
        }
    }
}

/// A defined domain; undefined (after `virsh destroy`) on drop, also when the test fails.
struct Domain<'a> {
    lv: &'a Libvirtd,
    name: String,
}

impl<'a> Domain<'a> {
    fn define(lv: &'a Libvirtd, name: &str, xml: &str) -> Domain<'a> {
        lv.define(xml)
            .unwrap_or_else(|e| panic!("virsh define: {e}\n{xml}\n{}", lv.log_text()));
        Domain {
            lv,
            name: name.to_string(),
        }
    }

    /// `virsh start`, then the guest's console once its shell is ready with a TPM.
    fn start(&self, listener: &ConsoleListener) -> GuestConsole {
        let t = Instant::now();
        self.lv.must(&["start", &self.name]);
        let mut console = listener
            .accept(Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{e}\n{}", self.lv.qemu_log(&self.name)));
        let tpm = console
            .wait_ready(Duration::from_secs(300))
            .unwrap_or_else(|e| {
                panic!(
                    "guest of {} did not boot: {e}\nQEMU log:\n{}",
                    self.name,
                    self.lv.qemu_log(&self.name)
                )
            });
        assert!(tpm, "guest has no TPM:\n{}", console.console_text());
        eprintln!("{}: virsh start to shell in {:?}", self.name, t.elapsed());
        console
    }

    /// `virsh destroy`, and waits until the console connection is gone.
    fn destroy(&self, console: GuestConsole) {
        self.lv.must(&["destroy", &self.name]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !console.closed() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn uuid(&self) -> String {
        self.lv.must(&["domuuid", &self.name]).trim().to_string()
    }
}

impl Drop for Domain<'_> {
    fn drop(&mut self) {
        let _ = self.lv.virsh(&["destroy", &self.name]);
        let _ = self.lv.virsh(&["undefine", &self.name]);
    }
}

/// The driver that serves the guest's /dev/tpm0 (`virtio:...` for tpm_virtio,
/// `acpi:MSFT0101:` for tpm-crb).
fn tpm_modalias(console: &mut GuestConsole) -> String {
    console
        .must("cat /sys/class/tpm/tpm0/device/modalias")
        .trim()
        .to_string()
}

fn write_nv(console: &mut GuestConsole, value: &str) {
    console.must(&format!(
        "tpm2_nvdefine {NV_INDEX} -C o -s {} -a 'ownerread|ownerwrite|authread|authwrite'",
        value.len()
    ));
    console.must(&format!(
        "echo -n '{value}' > /tmp/nv && tpm2_nvwrite {NV_INDEX} -C o -i /tmp/nv"
    ));
}

fn read_nv(console: &mut GuestConsole, len: usize) -> String {
    console.must(&format!(
        "tpm2_nvread {NV_INDEX} -C o -s {len} -o /tmp/back && cat /tmp/back; echo"
    ))
}

#[test]
fn readme_domain_runs_tpm2_tools_and_keeps_nv_across_destroy_and_start() {
    let bed = Bed::new();
    let daemon = start_daemon(&bed.env, bed.dir.path(), &[]);
    let xml = for_test(
        &block(&bed.readme, LIBVIRT, "xml"),
        &bed.env,
        "vtpm-readme",
        Some(&daemon.socket),
        &bed.listener.path,
    );
    let domain = Domain::define(&bed.lv, "vtpm-readme", &xml);

    let mut console = domain.start(&bed.listener);
    let alias = tpm_modalias(&mut console);
    assert!(alias.starts_with("virtio:"), "the guest's TPM is {alias}");
    let rnd = console.must("tpm2_getrandom --hex 16");
    assert_eq!(rnd.trim().len(), 32, "tpm2_getrandom: {rnd}");
    let value = "kept by vhost-vtpm under libvirt";
    write_nv(&mut console, value);
    assert_eq!(read_nv(&mut console, value.len()).trim(), value);
    domain.destroy(console);

    let mut console = domain.start(&bed.listener);
    assert!(tpm_modalias(&mut console).starts_with("virtio:"));
    assert_eq!(
        read_nv(&mut console, value.len()).trim(),
        value,
        "the NV value did not survive virsh destroy + virsh start"
    );
    domain.destroy(console);
    let log = daemon.log_text();
    assert!(
        log.matches("frontend connected").count() >= 2,
        "the daemon saw fewer than two QEMU connections:\n{log}"
    );
}

/// The README's `vtpm-state import-swtpm` command (its first ```sh block under the switching
/// heading, continuation lines joined), with the test's paths: the state directory, the
/// swtpm directory libvirt used (`$UUID` filled in, seen through the test's libvirtd) and a
/// host key file instead of the host TPM.
fn readme_import_command(
    readme: &str,
    lv: &Libvirtd,
    uuid: &str,
    state: &Path,
    host_key: &Path,
) -> Command {
    let script = block(readme, SWITCH, "sh").replace("\\\n", " ");
    let line = script
        .lines()
        .find(|l| l.trim_start().starts_with("vtpm-state import-swtpm"))
        .unwrap_or_else(|| panic!("no vtpm-state import-swtpm in:\n{script}"));
    let daemon_line = script
        .lines()
        .find(|l| l.trim_start().starts_with("vhost-vtpm "))
        .unwrap_or_else(|| panic!("no vhost-vtpm command in:\n{script}"));
    assert!(daemon_line.contains("--vm-id $UUID"), "{daemon_line}");
    let mut words = line.split_whitespace().skip(1).peekable();
    let mut cmd = Command::new(workspace_bin("vtpm-state"));
    while let Some(w) = words.next() {
        let arg: PathBuf = match w {
            "/var/lib/vtpm/vm1" => state.to_path_buf(),
            w if w.starts_with("/var/lib/libvirt/") => {
                lv.host_path(Path::new(&w.replace("$UUID", uuid)))
            }
            "--host-tpm" => {
                let t = words.next();
                assert_eq!(t, Some("device:/dev/tpmrm0"));
                cmd.arg("--host-key-file");
                host_key.to_path_buf()
            }
            w => PathBuf::from(w),
        };
        cmd.arg(arg);
    }
    cmd
}

#[test]
fn swtpm_vm_switched_to_vhost_vtpm_keeps_nv_and_persistent_key() {
    let bed = Bed::new();
    let vtpm_readme = block(&bed.readme, LIBVIRT, "xml");
    let crb_readme = crb_readme_xml(&bed.readme, &vtpm_readme);
    check_readme_diff(&bed.readme, &crb_readme, &vtpm_readme);

    // Before: libvirt's tpm-crb, libvirt's swtpm.
    let name = "vtpm-switch";
    let crb_xml = for_test(&crb_readme, &bed.env, name, None, &bed.listener.path);
    let domain = Domain::define(&bed.lv, name, &crb_xml);
    let uuid = domain.uuid();
    let mut console = domain.start(&bed.listener);
    let alias = tpm_modalias(&mut console);
    assert!(
        alias.starts_with("acpi:MSFT0101"),
        "the guest's TPM is {alias}"
    );
    let value = "written under swtpm";
    write_nv(&mut console, value);
    console.must("cd /tmp && tpm2_createprimary -Q -C o -g sha256 -G ecc256 -c primary.ctx");
    console.must(&format!(
        "tpm2_evictcontrol -Q -C o -c primary.ctx {PERSISTENT}"
    ));
    let key_before = console.must(&format!("tpm2_readpublic -c {PERSISTENT} | grep '^name:'"));
    domain.destroy(console);

    // The switch: the README's import on the directory libvirt used, the daemon, the XML.
    let swtpm_dir = bed
        .lv
        .host_path(Path::new(&format!("/var/lib/libvirt/swtpm/{uuid}/tpm2")));
    assert!(
        swtpm_dir.join("tpm2-00.permall").exists(),
        "libvirt's swtpm state is not in {}",
        swtpm_dir.display()
    );
    let host_key = bed.dir.path().join("host.key");
    ensure_host_key(&host_key).unwrap();
    let state = bed.dir.path().join("state");
    let mut import = readme_import_command(&bed.readme, &bed.lv, &uuid, &state, &host_key);
    run_tool(&mut import).unwrap_or_else(|e| panic!("{import:?}: {e}"));
    assert!(
        swtpm_dir.join("tpm2-00.permall").exists(),
        "the import changed the swtpm directory"
    );
    let daemon = start_daemon(&bed.env, bed.dir.path(), &["--vm-id", &uuid]);
    assert_eq!(daemon.state, state);
    // `virsh edit` keeps the domain's UUID; a definition without one would be refused.
    let vtpm_xml = for_test(
        &vtpm_readme,
        &bed.env,
        name,
        Some(&daemon.socket),
        &bed.listener.path,
    );
    let vtpm_xml = substitute(
        &vtpm_xml,
        &format!("<name>{name}</name>"),
        &format!("<name>{name}</name>\n  <uuid>{uuid}</uuid>"),
    );
    let domain = Domain::define(&bed.lv, name, &vtpm_xml);

    // After: the same TPM through vhost-vtpm.
    let mut console = domain.start(&bed.listener);
    let alias = tpm_modalias(&mut console);
    assert!(alias.starts_with("virtio:"), "the guest's TPM is {alias}");
    assert_eq!(
        read_nv(&mut console, value.len()).trim(),
        value,
        "the NV value written under swtpm"
    );
    let key_after = console.must(&format!("tpm2_readpublic -c {PERSISTENT} | grep '^name:'"));
    assert_eq!(key_after, key_before, "the persistent key made under swtpm");
    domain.destroy(console);
}
