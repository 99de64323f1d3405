//! A freshly laid-out segment, kept once per configuration, that an
//! in-process sandbox's window maps copy-on-write.
//!
//! Laying a segment out writes its header, peer table, ring headers and
//! slot metadata: five pages of the window, each a page fault in a fresh
//! reservation, a third of what a spawn cost. Instead the runtime lays the
//! segment out once per [`SegmentConfig`] into a sealed memfd, and each
//! window maps that file private (`MAP_PRIVATE`): the guest and the host
//! read the laid-out pages in place, and the first write to a page copies
//! it for that sandbox alone (plain wasmtime maps a module's data the same
//! way). A page is paid for when it is first used, not at the spawn. The
//! file is sealed against writes, shrinking and growing: no sandbox can
//! change it, and no mapping of it can lose its pages.
//!
//! One descriptor per runtime and configuration, none per sandbox.

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use rustix::fs::{MemfdFlags, SealFlags};
use shmrt_primitives::layout::WASM_PAGE_SIZE;
use shmrt_primitives::{Segment, SegmentConfig, SegmentLayout};

use crate::error::SandboxError;

/// A laid-out segment in a sealed memfd, `window_len` bytes long.
#[derive(Debug)]
pub(crate) struct SegmentTemplate {
    pub file: File,
    pub config: SegmentConfig,
    /// Whether its guest's entry is taken already, with the host's flag
    /// that it runs the guest on its thread (see [`Self::new`]).
    pub taken_for_host_thread: bool,
    pub layout: SegmentLayout,
    /// The segment's bytes.
    pub size: usize,
    /// The file's length: the segment rounded up to whole wasm pages.
    pub window_len: usize,
}

impl SegmentTemplate {
    /// Lays out a segment of `config` in a sealed memfd. With
    /// `taken_for_host_thread`, its only guest's entry is born as the
    /// spawn of a fiber or callback guest leaves it (reserved and claimed,
    /// `HOST_RUNS_GUEST` set), so that such a spawn writes nothing to the
    /// segment: every page stays the template's until the guest or the
    /// host first writes to it.
    pub fn new(config: &SegmentConfig, taken_for_host_thread: bool) -> Result<Self, SandboxError> {
        let layout = SegmentLayout::compute(config).map_err(SandboxError::Config)?;
        let overflow = || SandboxError::Config(shmrt_primitives::LayoutError::Overflow);
        let size = usize::try_from(layout.window_size()).map_err(|_| overflow())?;
        let window_len = size
            .checked_next_multiple_of(WASM_PAGE_SIZE as usize)
            .ok_or_else(overflow)?;
        let io = |what: &'static str, e: std::io::Error| SandboxError::io(what, e);
        let fd = rustix::fs::memfd_create(
            "shmrt-segment-template",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(|e| io("creating the segment template memfd", e.into()))?;
        let file = File::from(fd);
        file.set_len(window_len as u64)
            .map_err(|e| io("sizing the segment template", e))?;
        {
            // Laid out through a shared mapping: only the pages the layout
            // writes get memory; the rest of the file stays holes (zeros).
            // SAFETY: a memfd of ours that nobody else has; the mapping is
            // dropped before the file is sealed.
            let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }
                .map_err(|e| io("mapping the segment template", e))?;
            // SAFETY: the mapping is page-aligned, `window_len >= size`
            // bytes long, zero-filled and ours alone.
            let segment = unsafe { Segment::create(map.as_mut_ptr(), size, config) }
                .map_err(SandboxError::Config)?;
            if taken_for_host_thread {
                let peer = segment.peer(0).ok_or_else(|| {
                    io(
                        "taking the template's guest entry",
                        std::io::Error::other("no guest entry"),
                    )
                })?;
                peer.host_flags.fetch_or(
                    shmrt_primitives::peer_entry::HOST_RUNS_GUEST,
                    Ordering::Relaxed,
                );
                let taken = peer
                    .try_reserve()
                    .map(|_| ())
                    .and_then(|()| peer.try_claim_reserved());
                taken.map_err(|e| {
                    io(
                        "taking the template's guest entry",
                        std::io::Error::other(e.to_string()),
                    )
                })?;
            }
        }
        rustix::fs::fcntl_add_seals(
            &file,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
        )
        .map_err(|e| io("sealing the segment template", e.into()))?;
        Ok(SegmentTemplate {
            file,
            config: *config,
            taken_for_host_thread,
            layout,
            size,
            window_len,
        })
    }
}

/// Templates kept idle: the ones used last, so that spawning, ending and
/// spawning again does not lay the segment out again each time.
const KEPT_IDLE: usize = 2;

/// A runtime's templates: each found while a sandbox maps it (held
/// weakly), and the [`KEPT_IDLE`] used last held even when none does. A
/// runtime spawning sandboxes of ever new configurations holds at most
/// that many descriptors beyond those its live sandboxes use.
#[derive(Debug, Default)]
pub(crate) struct SegmentTemplates {
    all: Vec<Weak<SegmentTemplate>>,
    recent: Vec<Arc<SegmentTemplate>>,
}

impl SegmentTemplates {
    /// The template of `config` (entry taken or not), if one is alive.
    pub fn find(&mut self, config: &SegmentConfig, taken: bool) -> Option<Arc<SegmentTemplate>> {
        self.all.retain(|t| t.strong_count() > 0);
        let found = self
            .all
            .iter()
            .filter_map(Weak::upgrade)
            .find(|t| t.config == *config && t.taken_for_host_thread == taken)?;
        self.used(&found);
        Some(found)
    }

    /// Keeps `template`, or the equal one another spawn made meanwhile.
    pub fn keep(&mut self, template: Arc<SegmentTemplate>) -> Arc<SegmentTemplate> {
        if let Some(t) = self.find(&template.config, template.taken_for_host_thread) {
            return t;
        }
        self.all.push(Arc::downgrade(&template));
        self.used(&template);
        template
    }

    fn used(&mut self, template: &Arc<SegmentTemplate>) {
        self.recent.retain(|t| !Arc::ptr_eq(t, template));
        self.recent.insert(0, template.clone());
        self.recent.truncate(KEPT_IDLE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn the_template_holds_a_published_segment_and_refuses_writes() {
        let config = SegmentConfig::single_guest();
        let t = SegmentTemplate::new(&config, false).unwrap();
        assert_eq!(t.window_len % WASM_PAGE_SIZE as usize, 0);
        assert_eq!(t.file.metadata().unwrap().len(), t.window_len as u64);
        let mut magic = [0u8; 8];
        t.file.read_exact_at(&mut magic, 0).unwrap();
        assert_eq!(&magic, &shmrt_primitives::segment_header::MAGIC[..]);
        // Sealed: neither a write nor a resize gets through.
        assert!(t.file.write_all_at(b"x", 0).is_err());
        assert!(t.file.set_len(0).is_err());
    }
}
