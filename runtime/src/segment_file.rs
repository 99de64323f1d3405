//! The file behind a sandbox's segment and the host's own mapping of it.
//!
//! By default a segment is an anonymous memfd, sized to whole 64 KiB pages
//! and sealed against shrinking and growing, so neither side can pull pages
//! out from under the other. The host maps it with memmap2; the guest gets
//! the same pages through the memory window.

use std::fs::File;
use std::sync::Arc;

use memmap2::{MmapMut, MmapOptions};
use rustix::fs::{MemfdFlags, SealFlags};
use shmrt_primitives::{Segment, SegmentConfig, SegmentLayout};

use crate::error::SandboxError;

/// A segment file and the host's mapping of it.
pub struct SegmentFile {
    file: Arc<File>,
    mmap: MmapMut,
    segment: Segment,
}

impl SegmentFile {
    /// Creates and initializes a sealed memfd segment for `config`.
    pub fn create_memfd(config: &SegmentConfig) -> Result<Self, SandboxError> {
        let layout = SegmentLayout::compute(config).map_err(SandboxError::Config)?;
        let size = layout.window_size();
        let fd = rustix::fs::memfd_create(
            "shmrt-segment",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(|e| SandboxError::io("creating the segment memfd", e.into()))?;
        rustix::fs::ftruncate(&fd, size)
            .map_err(|e| SandboxError::io("sizing the segment memfd", e.into()))?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .map_err(|e| SandboxError::io("sealing the segment memfd", e.into()))?;
        let file = File::from(fd);
        Self::init(file, size, config)
    }

    /// Maps `file` (already `size` bytes, zero-filled) and lays out a fresh
    /// segment in it.
    pub(crate) fn init(
        file: File,
        size: u64,
        config: &SegmentConfig,
    ) -> Result<Self, SandboxError> {
        let len = usize::try_from(size)
            .map_err(|_| SandboxError::Config(shmrt_primitives::LayoutError::Overflow))?;
        // SAFETY: the file is ours and sized; other mappings of it are the
        // guest's window, which by design shares these pages.
        let mut mmap = unsafe { MmapOptions::new().len(len).map_mut(&file) }
            .map_err(|e| SandboxError::io("mapping the segment", e))?;
        // SAFETY: the mapping is page-aligned, `len` bytes, zero-filled and
        // not yet visible to anyone else.
        let segment = unsafe { Segment::create(mmap.as_mut_ptr(), len, config) }
            .map_err(SandboxError::Config)?;
        Ok(SegmentFile {
            file: Arc::new(file),
            mmap,
            segment,
        })
    }

    /// The segment, through the host's mapping.
    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    /// The file, for the guest's window.
    pub(crate) fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Bytes mapped (whole 64 KiB pages).
    pub fn len(&self) -> usize {
        self.mmap.len()
    }

    /// Never true.
    pub fn is_empty(&self) -> bool {
        self.mmap.is_empty()
    }
}
