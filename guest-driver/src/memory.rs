//! memfd-backed guest memory that can be shared with a vhost-user backend.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::memfd::{memfd_create, MFdFlags};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::client::HarnessError;

/// Guest memory: one region at guest physical address 0, backed by a memfd.
pub struct SharedMemory {
    pub mem: GuestMemoryMmap,
    file: File,
    pub size: u64,
}

impl SharedMemory {
    pub fn new(size: usize) -> Result<Self, HarnessError> {
        let fd = memfd_create(c"vtpm-guest", MFdFlags::MFD_CLOEXEC)
            .map_err(|e| HarnessError::Setup(format!("memfd_create: {e}")))?;
        let file = File::from(fd);
        file.set_len(size as u64)
            .map_err(|e| HarnessError::Setup(format!("memfd size: {e}")))?;
        let shared = file
            .try_clone()
            .map_err(|e| HarnessError::Setup(format!("memfd dup: {e}")))?;
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(0),
            size,
            Some(FileOffset::new(shared, 0)),
        )])
        .map_err(|e| HarnessError::Setup(format!("mmap guest memory: {e}")))?;
        Ok(SharedMemory {
            mem,
            file,
            size: size as u64,
        })
    }

    /// The frontend's (this process's) virtual address of guest physical address 0.
    pub fn host_base(&self) -> Result<u64, HarnessError> {
        self.mem
            .get_host_address(GuestAddress(0))
            .map(|p| p as u64)
            .map_err(|e| HarnessError::Setup(format!("host address: {e}")))
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
