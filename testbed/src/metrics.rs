//! Reading a daemon's `--metrics-socket`: each connection gets one snapshot in the
//! Prometheus text format, then EOF.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// One snapshot from the metrics socket at `socket`.
pub fn scrape(socket: &Path) -> io::Result<String> {
    let mut text = String::new();
    UnixStream::connect(socket)?.read_to_string(&mut text)?;
    Ok(text)
}

/// The value of the sample `name` (with its labels, if any, as the daemon writes them) in a
/// snapshot; `None` if it is not there or not a number.
pub fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))?
        .parse()
        .ok()
}
