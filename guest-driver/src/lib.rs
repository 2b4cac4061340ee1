//! The driver side of the virtio TPM device, in Rust, for tests and benchmarks.
//!
//! [`VtpmClient`] plays both the VMM and the guest driver against a vhost-vtpm daemon: it
//! connects to the daemon's vhost-user socket as the frontend, shares memfd-backed "guest"
//! memory, sets up one split virtqueue with kick and call eventfds, and then drives the queue
//! exactly as a guest driver would (descriptor chains, avail ring, EVENT_IDX, waiting on the
//! interrupt). Nothing in the daemon can tell it from QEMU plus a guest kernel, which makes it
//! the fastest honest way to test and measure the daemon without a VM.
//!
//! The Linux kernel driver (`tpm_virtio`) lives in `linux/` beside this crate, and the test
//! guest that carries it in `image/`; the processes the harness talks to (the daemon, swtpm)
//! are the `testbed` crate's fixtures.

mod client;
mod memory;
mod split_ring;

pub use client::{ClientOptions, HarnessError, VtpmClient};
pub use split_ring::{Desc, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
