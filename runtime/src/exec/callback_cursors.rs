//! The host's side of a callback guest's cursor record
//! (`shmrt_primitives::callback_cursors`): found and acknowledged when the
//! guest starts, published after each call, so that the guest stores its
//! ring cursors with no wasm atomic (a locked instruction each) while it
//! answers.

use std::sync::atomic::{AtomicU32, Ordering};

use shmrt_primitives::callback_cursors::CallbackCursors;
use wasmtime::{AsContext, AsContextMut, Instance, Memory, Val};

use super::guest_driver::ring_positions;
use crate::state::shared::SandboxShared;

/// The index of the record's word at byte `offset`.
const fn word(offset: u32) -> usize {
    offset as usize / 4
}

/// Where a callback guest keeps its record: in its memory 0, at `at`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CursorRecord {
    memory: Memory,
    at: usize,
}

impl CursorRecord {
    /// The record the guest exports, acknowledged (the guest defers its
    /// cursors only once it reads the ack); `None` when it exports none,
    /// or one that is not a 4-aligned address of 16 bytes inside its
    /// exported memory (it then publishes its cursors itself, as any peer).
    pub(crate) fn acknowledge(
        instance: &Instance,
        mut store: impl AsContextMut,
    ) -> Option<CursorRecord> {
        let global = instance.get_global(&mut store, CallbackCursors::EXPORT)?;
        let Val::I32(at) = global.get(&mut store) else {
            return None;
        };
        let memory = instance.get_memory(&mut store, "memory")?;
        let at = at as u32 as usize;
        let size = memory.data_size(&store);
        if !at.is_multiple_of(4) || at.checked_add(CallbackCursors::SIZE as usize)? > size {
            return None;
        }
        let record = CursorRecord { memory, at };
        let words = record.words(&store)?;
        words[word(CallbackCursors::PENDING_AT)].store(0, Ordering::Relaxed);
        words[word(CallbackCursors::ACK_AT)].store(CallbackCursors::ACK, Ordering::Relaxed);
        Some(record)
    }

    /// The record's four words, if they are (still) inside memory.
    /// Atomics over guest memory: the guest could point the record into
    /// its segment window, which other threads write.
    #[inline]
    fn words<'a>(&self, store: &'a impl AsContext) -> Option<&'a [AtomicU32; 4]> {
        if self.at + CallbackCursors::SIZE as usize > self.memory.data_size(store) {
            return None;
        }
        // SAFETY: in bounds (checked just above; linear memory never
        // shrinks) and 4-aligned (`at` is, and so is the base of a linear
        // memory); the store is borrowed, so the memory is not freed or
        // moved meanwhile. Guest memory is only ever reached through
        // atomics or raw copies, never references to plain bytes.
        Some(unsafe {
            &*self
                .memory
                .data_ptr(store)
                .add(self.at)
                .cast::<[AtomicU32; 4]>()
        })
    }

    /// After a call that trapped (or was interrupted): publishes what the
    /// record holds of the messages the call finished before it failed
    /// (the SDK leaves its cursors after each message), so that their
    /// answers reach the host and they count as read, as with a guest
    /// that publishes for itself. A cursor the guest stored itself during
    /// the call (a producer's wrap, a quarter of the inbox read: see
    /// `before`, the [`ring_positions`] from before the call) may be newer
    /// than what the record holds, whose value is then left alone.
    pub(crate) fn publish_after_trap(
        &self,
        store: &impl AsContext,
        shared: &SandboxShared,
        before: Option<(u32, u32, u32)>,
    ) {
        let now = ring_positions(shared);
        let (Some(before), Some(now)) = (before, now) else {
            return;
        };
        let Some(words) = self.words(store) else {
            return;
        };
        let pending = &words[word(CallbackCursors::PENDING_AT)];
        let mut bits = pending.load(Ordering::Relaxed);
        if now.0 != before.0 {
            bits &= !CallbackCursors::READ;
        }
        if (now.1, now.2) != (before.1, before.2) {
            bits &= !CallbackCursors::WRITE;
        }
        pending.store(bits, Ordering::Relaxed);
        self.publish(store, shared);
    }

    /// After a call: stores into the ring headers the cursors the call
    /// left to publish, with Release (the frames and room they cover were
    /// written on this thread, before).
    #[inline]
    pub(crate) fn publish(&self, store: &impl AsContext, shared: &SandboxShared) {
        let Some(words) = self.words(store) else {
            return;
        };
        let pending = &words[word(CallbackCursors::PENDING_AT)];
        let bits = pending.load(Ordering::Relaxed);
        if bits == 0 {
            return;
        }
        pending.store(0, Ordering::Relaxed);
        let segment = shared.segment_file().segment();
        let index = shared.guest_index();
        let value = |at| words[word(at)].load(Ordering::Relaxed);
        if bits & CallbackCursors::READ != 0
            && let Some(ring) = segment.h2g_ring(index)
        {
            ring.publish_read_for_consumer(value(CallbackCursors::H2G_READ_AT));
        }
        if bits & CallbackCursors::WRITE != 0
            && let Some(ring) = segment.g2h_ring(index)
        {
            ring.publish_write_for_producer(value(CallbackCursors::G2H_WRITE_AT));
        }
    }
}
