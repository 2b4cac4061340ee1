//! Test fixtures of the vhost-vtpm workspace (dev-only, not published): the processes the
//! tests, the benchmarks and the demo run against, one file per fixture.
//!
//! - [`process`]: stopping children, waiting for sockets and paths, running tools.
//! - [`daemon`]: a `vhost-vtpm` daemon process ([`DaemonProcess`]).
//! - [`swtpm`]: an `swtpm` process ([`SwtpmProcess`]).
//! - [`host_tpm`]: a simulated host TPM ([`HostTpmSimulator`]), optionally manufactured with an
//!   EK certificate.
//! - [`ca`]: the local CA, `vtpm-ca`, as a process ([`CaProcess`]).
//! - [`chain`]: the host side of the certificate chain ([`ChainSetup`]), and more hosts
//!   enrolled with the same CA ([`HostSetup`]).
//! - [`controller`]: the migration controller, `vtpm-migrate`, as a process
//!   ([`ControllerProcess`]).
//! - [`migration`]: two hosts, one CA and the migration controller ([`MigrationBed`]).
//! - [`evidence`]: a deep-attestation evidence bundle collected through the harness.
//! - [`readme`]: README option drift against `--help`.
//! - [`openssl`]: the `openssl` command line's view of a CRL.
//! - [`certs`]: throwaway P-256 keys and CA certificates for chains built without the CA.
//! - [`relay`]: a TCP relay for a migration stream that keeps a copy and can cut it
//!   ([`Relay`]).
//! - [`powerloss`]: a disk that keeps only what was synced, and its power cut
//!   ([`PowerLossDisk`]).
//! - [`env`]: where `scripts/setup.sh` put QEMU, the guest and the binaries ([`Env`]).
//! - [`console`]: the test guest's serial console as a shell session, over QEMU's stdio or a
//!   unix socket ([`GuestConsole`], [`ConsoleListener`]).
//! - [`vm`]: a QEMU guest driven over its serial console ([`Vm`]).
//! - [`libvirt`]: a private libvirtd (system instance in a mount namespace of its own) and
//!   `virsh` against it ([`Libvirtd`]).

// Fixtures, benchmarks and the demo are test code: a failed set-up panics with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod ca;
pub mod certs;
pub mod chain;
pub mod console;
pub mod controller;
pub mod daemon;
pub mod env;
pub mod evidence;
pub mod host_tpm;
pub mod libvirt;
pub mod metrics;
pub mod migration;
pub mod openssl;
pub mod powerloss;
pub mod process;
pub mod readme;
pub mod relay;
pub mod swtpm;
pub mod vm;

pub use ca::CaProcess;
pub use chain::{ChainSetup, HostRef, HostSetup, MirrorArgs};
pub use console::{decode_base64, pcr_values, ConsoleListener, GuestConsole};
pub use controller::ControllerProcess;
pub use daemon::{ensure_host_key, DaemonProcess};
pub use env::{workspace_bin, DebianImage, Env};
pub use host_tpm::{HostTpmSimulator, ManufacturerCa};
pub use libvirt::{find_libvirtd, Libvirtd};
pub use migration::MigrationBed;
pub use powerloss::PowerLossDisk;
pub use process::{run_tool, stop_child, wait_for_listener, wait_for_path};
pub use readme::{crate_readme_drift, readme_blocks, readme_drift, readme_shell_blocks};
pub use relay::{free_port, Relay};
pub use swtpm::SwtpmProcess;
pub use vm::{accel, start_daemon, Accel, DebianDisks, TpmFrontend, Vm, GUEST_CMDLINE};
