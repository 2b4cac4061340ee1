//! A TCP relay between a migration source and its destination on loopback: it keeps a copy
//! of the migration stream (to look inside it), and can cut the connection just before a
//! given byte string passes (the network, or the destination, gone mid-transfer).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

struct Shared {
    captured: Mutex<Vec<u8>>,
    cut: AtomicBool,
    sever: AtomicBool,
}

/// A one-connection relay from `port` (the source migrates to it) to the destination.
pub struct Relay {
    /// Where the source connects: `tcp:127.0.0.1:PORT`.
    pub port: u16,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

fn pump_back(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

impl Relay {
    /// Forwards the first connection to `127.0.0.1:to_port`. With `cut_before`, forwarding
    /// stops just before those bytes first appear in the stream: [`Relay::cut`] turns true
    /// and both connections are held until [`Relay::sever`] closes them.
    pub fn start(to_port: u16, cut_before: Option<Vec<u8>>) -> io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            captured: Mutex::new(Vec::new()),
            cut: AtomicBool::new(false),
            sever: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::spawn(move || -> io::Result<()> {
            let (mut src, _) = listener.accept()?;
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut dst = loop {
                match TcpStream::connect(("127.0.0.1", to_port)) {
                    Ok(d) => break d,
                    Err(e) if Instant::now() > deadline => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            };
            let (back_from, back_to) = (dst.try_clone()?, src.try_clone()?);
            std::thread::spawn(move || pump_back(back_from, back_to));
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match src.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                let forward = {
                    let mut captured = s.captured.lock().unwrap_or_else(|p| p.into_inner());
                    let before = captured.len();
                    captured.extend_from_slice(&buf[..n]);
                    match &cut_before {
                        Some(needle) => {
                            let from = before.saturating_sub(needle.len());
                            captured[from..]
                                .windows(needle.len())
                                .position(|w| w == needle.as_slice())
                                .map(|at| (from + at).saturating_sub(before))
                        }
                        None => None,
                    }
                };
                match forward {
                    Some(upto) => {
                        dst.write_all(&buf[..upto])?;
                        s.cut.store(true, Ordering::SeqCst);
                        while !s.sever.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        let _ = dst.shutdown(Shutdown::Both);
                        let _ = src.shutdown(Shutdown::Both);
                        return Ok(());
                    }
                    None => dst.write_all(&buf[..n])?,
                }
            }
            let _ = dst.shutdown(Shutdown::Write);
            Ok(())
        });
        Ok(Relay {
            port,
            shared,
            thread: Some(thread),
        })
    }

    /// Whether the stream was cut (the bytes to cut before arrived).
    pub fn cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// Waits for the cut, at most `timeout`.
    pub fn wait_cut(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.cut() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Closes both connections of a cut relay.
    pub fn sever(&self) {
        self.shared.sever.store(true, Ordering::SeqCst);
    }

    /// Everything the source sent so far.
    pub fn captured(&self) -> Vec<u8> {
        self.shared
            .captured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits for the relay to finish (the stream ended or was severed); the whole stream.
    pub fn finish(mut self) -> io::Result<Vec<u8>> {
        self.sever();
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| io::Error::other("relay thread panicked"))??;
        }
        Ok(self.captured())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.sever();
    }
}

/// A free loopback TCP port (for a destination's `-incoming tcp:127.0.0.1:PORT`).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
