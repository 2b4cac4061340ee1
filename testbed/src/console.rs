//! The test guest's serial console as a line-oriented shell session, over any byte stream:
//! QEMU's stdio ([`crate::Vm`]) or a unix socket QEMU connects to (a libvirt domain's
//! `<serial type='unix'>`, [`ConsoleListener`]).
//!
//! The guest (guest-driver/image/init) prints `VTPM-GUEST-READY tpm=yes|no` and then a busybox
//! shell with the prompt `vtpm-guest# `; commands are typed and their exit status is read back
//! through a marker.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) const READY_TPM: &str = "VTPM-GUEST-READY tpm=";
pub(crate) const PROMPT: &str = "vtpm-guest# ";

/// A guest's serial console: what the guest printed (cleaned of `\r` and terminal escapes)
/// and a writer for what is typed.
pub struct GuestConsole {
    input: Box<dyn Write + Send>,
    text: Arc<Mutex<String>>,
    /// Set when the output stream ended (QEMU exited or closed the socket).
    closed: Arc<AtomicBool>,
    cursor: usize,
}

impl GuestConsole {
    /// A console reading the guest's output from `output` (on a thread of its own) and typing
    /// into `input`.
    pub fn new(input: Box<dyn Write + Send>, output: Box<dyn Read + Send>) -> GuestConsole {
        let text = Arc::new(Mutex::new(String::new()));
        let closed = Arc::new(AtomicBool::new(false));
        let (sink, flag) = (text.clone(), closed.clone());
        std::thread::spawn(move || {
            pump(output, sink);
            flag.store(true, Ordering::SeqCst);
        });
        GuestConsole {
            input,
            text,
            closed,
            cursor: 0,
        }
    }

    /// A console over a connected unix stream (a QEMU `socket` chardev).
    pub fn over_unix_stream(stream: UnixStream) -> std::io::Result<GuestConsole> {
        let reader = stream.try_clone()?;
        Ok(GuestConsole::new(Box::new(stream), Box::new(reader)))
    }

    /// Everything the guest printed so far.
    pub fn console_text(&self) -> String {
        self.text.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Whether the guest's output ended (QEMU exited or dropped the connection).
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Types `line` and a newline.
    pub fn raw_line(&mut self, line: &str) -> Result<(), String> {
        self.input
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| self.input.flush())
            .map_err(|e| format!("console write: {e}"))
    }

    /// Waits for `needle` after the cursor; moves the cursor past it and returns the text
    /// before it.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            // Read the flag before the text: output that arrived before the end is seen.
            let closed = self.closed();
            let text = self.console_text();
            if let Some(pos) = text.get(self.cursor..).and_then(|t| t.find(needle)) {
                let start = self.cursor;
                self.cursor += pos + needle.len();
                return Ok(text[start..start + pos].to_string());
            }
            if closed {
                return Err(format!(
                    "the console closed (QEMU exited?) before {needle:?}:\n{text}"
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("no {needle:?} within {timeout:?}:\n{text}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the guest's ready marker and its prompt, and turns the shell's echo off;
    /// returns whether the guest has a TPM.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<bool, String> {
        self.wait_for(READY_TPM, timeout)?;
        let tpm = self.wait_for("\n", Duration::from_secs(5))?.trim() == "yes";
        self.wait_for(PROMPT, Duration::from_secs(30))?;
        self.raw_line("stty -echo")?;
        self.wait_for(PROMPT, Duration::from_secs(30))?;
        Ok(tpm)
    }

    /// Runs a shell command in the guest; returns (exit status, output).
    ///
    /// The marker is split in the command (`@@R""C=`) so that the shell's echo of the typed
    /// line never looks like the marker itself.
    pub fn run_timeout(&mut self, command: &str, timeout: Duration) -> (i32, String) {
        self.raw_line(&format!("{command}; echo \"@@R\"\"C=$?@@\""))
            .unwrap_or_else(|e| panic!("{e}"));
        let body = self
            .wait_for("@@RC=", timeout)
            .unwrap_or_else(|e| panic!("guest command {command:?}: {e}"));
        let rc = self
            .wait_for("@@", Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("guest command {command:?}: {e}"));
        let rc: i32 = rc.trim().parse().unwrap_or(-1);
        let body = body.replace(PROMPT, "");
        // Drop the echo of the typed line, if the shell echoed it.
        let body = match body.split_once('\n') {
            Some((first, rest)) if first.contains("@@R\"\"C=") => rest,
            _ => body.as_str(),
        };
        (rc, body.trim_matches('\n').to_string())
    }

    pub fn run(&mut self, command: &str) -> (i32, String) {
        self.run_timeout(command, Duration::from_secs(120))
    }

    /// Runs a command that must succeed; returns its output.
    pub fn must(&mut self, command: &str) -> String {
        let (rc, out) = self.run(command);
        assert_eq!(rc, 0, "guest command failed: {command}\n{out}");
        out
    }

    /// The guest's SHA-256 PCR `pcr` (`tpm2_pcrread`), lower-case hex.
    pub fn pcr_sha256(&mut self, pcr: u8) -> String {
        let out = self.must(&format!("tpm2_pcrread sha256:{pcr}"));
        pcr_values(&out)
            .into_iter()
            .find_map(|(p, value)| (p == pcr).then_some(value))
            .unwrap_or_else(|| panic!("no PCR {pcr} in:\n{out}"))
    }

    /// In /tmp (left as the working directory): the vEK certificates as every attestation
    /// client reads them (`tpm2_getekcertificate`) and the chain range (NV 0x01c00100 and
    /// 0x01c00101), each as `rsa`, `ecc`, `chain0`, `chain1` `.der` and `.pem`, and `ca_pem`
    /// as ca.pem; then the guest's `openssl verify` of both vEK certificates through the chain
    /// under that root, which must pass.
    pub fn verify_vek_chain(&mut self, ca_pem: &[u8]) {
        self.must("cd /tmp");
        self.must("tpm2_getekcertificate -o rsa.der -o ecc.der");
        self.must(
            "tpm2_nvread 0x01c00100 -C o -o chain0.der && tpm2_nvread 0x01c00101 -C o -o chain1.der",
        );
        for f in ["rsa", "ecc", "chain0", "chain1"] {
            self.must(&format!(
                "openssl x509 -inform DER -in {f}.der -out {f}.pem"
            ));
        }
        self.write_file("/tmp/ca.pem", ca_pem);
        let out = self.must(
            "openssl verify -CAfile ca.pem -untrusted chain0.pem -untrusted chain1.pem rsa.pem ecc.pem",
        );
        assert!(
            out.contains("rsa.pem: OK") && out.contains("ecc.pem: OK"),
            "in-guest openssl verify: {out}"
        );
    }

    /// Reads a guest file as bytes (base64 over the console).
    pub fn read_file(&mut self, path: &str) -> Vec<u8> {
        let b64 = self.must(&format!("base64 {path}"));
        decode_base64(&b64)
    }

    /// Writes `data` to a guest file (base64 over the console, in chunks short enough for
    /// the guest's line discipline).
    pub fn write_file(&mut self, path: &str, data: &[u8]) {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(data);
        self.must(&format!(": > {path}.b64"));
        for chunk in b64.as_bytes().chunks(768) {
            let chunk = std::str::from_utf8(chunk).unwrap_or_default();
            self.must(&format!("echo {chunk} >> {path}.b64"));
        }
        self.must(&format!("base64 -d {path}.b64 > {path} && rm {path}.b64"));
    }
}

/// A unix socket the test listens on for a QEMU `socket` chardev in client mode (libvirt's
/// `<serial type='unix'><source mode='connect' path=.../>`): QEMU connects when it starts,
/// so nothing the guest prints is lost, and again at every start of the domain.
pub struct ConsoleListener {
    listener: UnixListener,
    pub path: PathBuf,
}

impl ConsoleListener {
    pub fn bind(path: &Path) -> std::io::Result<ConsoleListener> {
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(ConsoleListener {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Waits up to `timeout` for QEMU to connect; the console of that connection.
    pub fn accept(&self, timeout: Duration) -> Result<GuestConsole, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream
                        .set_nonblocking(false)
                        .map_err(|e| format!("console socket: {e}"))?;
                    return GuestConsole::over_unix_stream(stream)
                        .map_err(|e| format!("console socket: {e}"));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("accept on {}: {e}", self.path.display())),
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "QEMU did not connect to the console socket {} within {timeout:?}",
                    self.path.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn pump(mut from: Box<dyn Read + Send>, to: Arc<Mutex<String>>) {
    let mut buf = [0u8; 4096];
    // Bytes of an escape sequence (or UTF-8 character) cut by the end of a read.
    let mut pending: Vec<u8> = Vec::new();
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                let keep_from = incomplete_tail(&pending);
                let text = String::from_utf8_lossy(&pending[..keep_from]).into_owned();
                pending.drain(..keep_from);
                if let Ok(mut s) = to.lock() {
                    s.push_str(&clean_console(&text));
                }
            }
        }
    }
}

/// Where a trailing, unfinished escape sequence or UTF-8 character starts (or the length).
fn incomplete_tail(bytes: &[u8]) -> usize {
    let tail_start = bytes.len().saturating_sub(16);
    if let Some(esc) = bytes[tail_start..].iter().rposition(|&b| b == 0x1b) {
        let esc = tail_start + esc;
        let finished = bytes[esc..]
            .iter()
            .skip(2)
            .any(|b| (b'@'..=b'~').contains(b));
        if !finished {
            return esc;
        }
    }
    match std::str::from_utf8(&bytes[tail_start..]) {
        Err(e) if e.error_len().is_none() => tail_start + e.valid_up_to(),
        _ => bytes.len(),
    }
}

/// Serial console text without \r and without terminal escape sequences (busybox's line
/// editor asks for the cursor position, `ESC [ 6 n`, after every prompt).
pub(crate) fn clean_console(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // CSI: parameters, then one final byte in @..~
                    while let Some(&p) = chars.peek() {
                        chars.next();
                        if ('@'..='~').contains(&p) {
                            break;
                        }
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// The values of `tpm2_pcrread sha256:...` output, by PCR (lower-case hex).
pub fn pcr_values(out: &str) -> Vec<(u8, String)> {
    out.lines()
        .filter_map(|l| {
            let (pcr, value) = l.trim().split_once(": 0x")?;
            Some((pcr.trim().parse().ok()?, value.trim().to_lowercase()))
        })
        .collect()
}

/// Decodes standard base64, ignoring whitespace (line breaks of `base64` in the guest).
pub fn decode_base64(text: &str) -> Vec<u8> {
    use base64::Engine;
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .unwrap_or_else(|e| panic!("guest sent invalid base64 ({e}): {text:?}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn console_cleaning_drops_cr_and_escapes() {
        assert_eq!(
            super::clean_console("vtpm-guest# \u{1b}[6nls\r\nx\u{1b}[0;1my"),
            "vtpm-guest# ls\nxy"
        );
    }

    #[test]
    fn escape_cut_by_a_read_is_held_back() {
        let b = b"abc\x1b[6";
        assert_eq!(super::incomplete_tail(b), 3);
        assert_eq!(super::incomplete_tail(b"abc\x1b[6n"), 7);
        assert_eq!(super::incomplete_tail("x\u{e9}".as_bytes()), 3);
        assert_eq!(super::incomplete_tail(&"x\u{e9}".as_bytes()[..2]), 1);
    }

    #[test]
    fn base64_decodes() {
        assert_eq!(super::decode_base64("aGVsbG8g\nd29ybGQ=\n"), b"hello world");
    }

    #[test]
    fn a_command_over_a_socket_pair_returns_its_output_and_status() {
        use std::io::{BufRead, BufReader, Write};
        let (ours, mut guest) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut console = super::GuestConsole::over_unix_stream(ours).unwrap();
        // A fake guest: answers each typed command with its output, then the marker.
        let reader = BufReader::new(guest.try_clone().unwrap());
        std::thread::spawn(move || {
            guest
                .write_all(b"VTPM-GUEST-READY tpm=yes\r\nvtpm-guest# ")
                .unwrap();
            for line in reader.lines() {
                let line = line.unwrap();
                let reply = if line == "stty -echo" {
                    "vtpm-guest# ".to_string()
                } else {
                    "hello\r\n@@RC=3@@\r\nvtpm-guest# ".to_string()
                };
                guest.write_all(reply.as_bytes()).unwrap();
            }
        });
        assert!(console
            .wait_ready(std::time::Duration::from_secs(5))
            .unwrap());
        assert_eq!(console.run("echo hello; false"), (3, "hello".to_string()));
    }
}
