//! End-to-end tests of vhost-vtpm with real parts: our QEMU build with `vhost-user-tpm-pci`, a
//! Linux guest running the `tpm_virtio` driver and unmodified tpm2-tools, the daemon with
//! libtpms, and the certificate chain from a simulated host TPM through the local CA.
//! The tests are in `tests/`; the fixtures they use are the `testbed` crate's.
