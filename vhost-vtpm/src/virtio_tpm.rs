//! The virtio TPM device as this project defines it (normative text: docs/virtio-tpm.md).

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// Default virtio device ID (the non-standard ID crosvm's virtio-tpm uses). The ID lives in
/// the front-end (QEMU device property) and the guest driver (module parameter); the
/// vhost-user protocol does not carry it.
pub const DEFAULT_DEVICE_ID: u16 = 62;

/// The device has exactly one queue: the request queue.
pub const NUM_QUEUES: usize = 1;
pub const REQUEST_QUEUE: u16 = 0;

/// Largest queue the driver may configure.
pub const MAX_QUEUE_SIZE: usize = 256;

/// Largest command, and largest response, carried by the device (Linux `TPM_BUFSIZE`).
pub const MAX_BUFFER_SIZE: u32 = tpm_proto::MAX_BUFFER_SIZE as u32;

/// Most descriptors one chain may visit, counting the one that refers to an indirect table and
/// the table's entries: the device reads no more than this many per chain, whatever the
/// guest's tables say. It equals [`MAX_QUEUE_SIZE`], so no direct chain the queue can hold is
/// refused for its length.
pub const MAX_CHAIN_DESCRIPTORS: usize = MAX_QUEUE_SIZE;

/// Virtio feature bits the device offers (LOG_ALL: dirty-page logging for live migration).
pub fn device_features() -> u64 {
    (1u64 << VIRTIO_F_VERSION_1)
        | (1u64 << VIRTIO_RING_F_EVENT_IDX)
        | (1u64 << VIRTIO_RING_F_INDIRECT_DESC)
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
        | VhostUserVirtioFeatures::LOG_ALL.bits()
}

/// vhost-user protocol features the backend offers.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::RESET_DEVICE
        | VhostUserProtocolFeatures::DEVICE_STATE
        | VhostUserProtocolFeatures::LOG_SHMFD
}

/// Device configuration space: one little-endian u32, the largest command or response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioTpmConfig {
    pub max_buffer_size: u32,
}

impl VirtioTpmConfig {
    pub const SIZE: usize = 4;

    pub fn to_bytes(self) -> [u8; Self::SIZE] {
        self.max_buffer_size.to_le_bytes()
    }

    /// Returns `size` bytes of the config space from `offset`, or an empty vector if the range
    /// is not inside it (the vhost-user GET_CONFIG convention for "refused").
    pub fn read(self, offset: u32, size: u32) -> Vec<u8> {
        let bytes = self.to_bytes();
        let (Ok(start), Ok(len)) = (usize::try_from(offset), usize::try_from(size)) else {
            return Vec::new();
        };
        match start.checked_add(len) {
            Some(end) if end <= bytes.len() => bytes[start..end].to_vec(),
            _ => Vec::new(),
        }
    }
}

impl Default for VirtioTpmConfig {
    fn default() -> Self {
        VirtioTpmConfig {
            max_buffer_size: MAX_BUFFER_SIZE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_reads_are_bounded() {
        let c = VirtioTpmConfig::default();
        assert_eq!(c.read(0, 4), 4096u32.to_le_bytes().to_vec());
        assert_eq!(c.read(1, 2), vec![0x10, 0x00]);
        assert!(c.read(2, 4).is_empty());
        assert!(c.read(u32::MAX, 2).is_empty());
    }

    #[test]
    fn features_include_the_specified_bits() {
        let f = device_features();
        assert_ne!(f & (1 << 32), 0, "VERSION_1");
        assert_ne!(f & (1 << 29), 0, "EVENT_IDX");
        assert_ne!(f & (1 << 28), 0, "INDIRECT_DESC");
        assert!(protocol_features().contains(VhostUserProtocolFeatures::CONFIG));
    }
}
