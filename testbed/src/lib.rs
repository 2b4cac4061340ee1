//! Test fixtures of the vhost-vtpm workspace (dev-only, not published): the processes the
//! tests, the benchmarks and the demo run against, one file per fixture.
//!
//! - [`process`]: stopping children, waiting for sockets and paths, running tools.
//! - [`daemon`]: a `vhost-vtpm` daemon process ([`DaemonProcess`]).
//! - [`swtpm`]: an `swtpm` process ([`SwtpmProcess`]).
//! - [`host_tpm`]: a simulated host TPM ([`HostTpmSimulator`]), optionally manufactured with an
//!   EK certificate.
//! - [`ca`]: the local CA, `vtpm-ca`, as a process ([`CaProcess`]).
//! - [`chain`]: the host side of the certificate chain ([`ChainSetup`]).
//! - [`evidence`]: a deep-attestation evidence bundle collected through the harness.
//! - [`readme`]: README option drift against `--help`.
//! - [`openssl`]: the `openssl` command line's view of a CRL.
//! - [`env`]: where `scripts/setup.sh` put QEMU, the guest and the binaries ([`Env`]).
//! - [`vm`]: a QEMU guest driven over its serial console ([`Vm`]).

// Fixtures, benchmarks and the demo are test code: a failed set-up panics with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod ca;
pub mod chain;
pub mod daemon;
pub mod env;
pub mod evidence;
pub mod host_tpm;
pub mod openssl;
pub mod process;
pub mod readme;
pub mod swtpm;
pub mod vm;

pub use ca::CaProcess;
pub use chain::ChainSetup;
pub use daemon::{ensure_host_key, DaemonProcess};
pub use env::{workspace_bin, Env};
pub use host_tpm::{HostTpmSimulator, ManufacturerCa};
pub use process::{run_tool, stop_child, wait_for_listener, wait_for_path};
pub use readme::{crate_readme_drift, readme_drift};
pub use swtpm::SwtpmProcess;
pub use vm::{accel, decode_base64, start_daemon, Accel, TpmFrontend, Vm};
