//! vhost-vtpm: the device side of a virtio TPM 2.0, as a vhost-user backend.
//!
//! The guest's TPM driver puts each command in a descriptor chain on the device's single
//! request queue; this crate pops the chain, hands the command to the VM's coprocessor engine
//! (see the `coprocessor` crate), writes the response into the chain's writable part and
//! interrupts the guest through the call eventfd. The device is specified in
//! `docs/virtio-tpm.md`.
//!
//! Modules:
//! - [`virtio_tpm`]: the device definition (ID, queue, features, config space).
//! - [`request`]: turning one descriptor chain into one command and one response, refusing
//!   every malformed chain without disturbing the others.
//! - [`backend`]: the `VhostUserBackend` implementation: queue draining, EVENT_IDX, batched
//!   interrupts, the optional busy-poll window.
//! - [`platform`]: the platform firmware around the engine: the TPM2_Startup hook (host PCR
//!   mirroring, platform hierarchy lock), the mirrored-PCR guard, the deep quote.
//! - [`chain_refresh`]: the certificate chain in a running instance's NV, refreshed from the
//!   host directory on SIGHUP.
//! - [`config`]: command-line arguments and their validation.
//! - [`daemon`]: the process: listener, reconnect loop, signals, clean shutdown.
//! - [`metrics`]: the operator's view of a running daemon (`--metrics-socket`): counters and
//!   a latency histogram in the Prometheus text format.
//! - [`peer`]: which frontends may connect (their socket credentials) and the verdict the
//!   backend waits for.
//! - [`sandbox`]: the seccomp filter and no-new-privileges the daemon serves under.
//! - [`migration_control`]: sealed migration (ADR 0010): the serving gate, DEVICE_STATE
//!   SAVE and LOAD of sealed packages, acting on the migration controller's decision.

pub mod backend;
pub mod chain_refresh;
pub mod config;
pub mod daemon;
pub mod metrics;
pub mod migration_control;
pub mod peer;
pub mod platform;
pub mod request;
pub mod sandbox;
pub mod virtio_tpm;
