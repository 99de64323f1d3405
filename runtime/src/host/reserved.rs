//! A slot reserved by the host and owned by the caller
//! ([`ReservedSlot`]): filled at leisure, then sent by
//! [`HostSender::send_reserved`] or given back by dropping it. It borrows
//! no sender, so a binding can keep it across calls (a Python object, a
//! C handle).

use std::sync::Arc;

use shmrt_primitives::SharedBytesMut;
use shmrt_primitives::channel::HeldSlot;
use shmrt_primitives::slot_pool::SlotPool;

use crate::state::shared::SandboxShared;

#[cfg(doc)]
use super::sender::HostSender;

/// A slot of a sandbox's segment, allocated by the host and not yet sent:
/// made by [`HostSender::reserve_slot`], written through
/// [`Self::bytes_mut`], sent by [`HostSender::send_reserved`] (the guest
/// receives an ordinary slot message) or given back by dropping it (or
/// [`Self::abandon`]). It never leaks its slot: whatever happens to the
/// sandbox meanwhile, dropping it frees the slot, and it keeps the
/// segment's memory mapped as long as it lives, so its bytes stay valid
/// even after the sandbox is joined (they are then no one's).
///
/// It is always a slot, also for a payload small enough to go inline in
/// the ring: the bytes must stay put while the caller holds them, and
/// ring room held that long would stall every other send.
pub struct ReservedSlot {
    /// `None` once sent or freed.
    slot: Option<HeldSlot>,
    /// Bytes to send (at most `reserved`).
    len: usize,
    /// Bytes reserved.
    reserved: usize,
    /// A copy of the pool's view, to free the slot on drop.
    pool: SlotPool,
    /// Keeps the segment mapped, and says which sandbox it is of.
    pub(super) shared: Arc<SandboxShared>,
}

impl std::fmt::Debug for ReservedSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReservedSlot")
            .field("sandbox", &self.shared.name())
            .field("slot", &self.slot.as_ref().map(HeldSlot::slot_ref))
            .field("len", &self.len)
            .field("reserved", &self.reserved)
            .finish()
    }
}

impl ReservedSlot {
    pub(super) fn new(
        slot: HeldSlot,
        len: usize,
        pool: SlotPool,
        shared: Arc<SandboxShared>,
    ) -> Self {
        ReservedSlot {
            slot: Some(slot),
            len,
            reserved: len,
            pool,
            shared,
        }
    }

    /// The name of the sandbox whose segment holds the slot.
    pub fn sandbox(&self) -> &str {
        self.shared.name()
    }

    /// Bytes that will be sent (those reserved, unless truncated).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing will be sent but an empty message.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The payload bytes to fill, in place in the slot. A view, not a
    /// slice: the slot is in the guest's window, which a hostile guest may
    /// write at any moment (it can only garble what it will receive).
    pub fn bytes_mut(&mut self) -> SharedBytesMut<'_> {
        let slot = self.slot.as_ref().expect("present until sent or freed");
        match self.pool.payload_area(&slot.slot_ref()) {
            Ok(mut area) => {
                let ptr = area.as_mut_ptr();
                debug_assert!(self.len <= area.len());
                // SAFETY: the first `len` bytes of a slot we allocated for
                // `reserved` >= `len` bytes (its class was chosen for them)
                // and have not sent; the segment stays mapped while `self`
                // holds `shared`; the borrow is tied to `self`.
                unsafe { SharedBytesMut::from_raw_parts(ptr, self.len) }
            }
            // The reference is ours, resolved against our own copy of the
            // layout: it can not fail.
            Err(_) => unreachable!("a slot we allocated resolves"),
        }
    }

    /// Sends only the first `len` bytes (fewer than reserved were
    /// filled); more than reserved is cut to what was reserved.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Gives the slot back unsent (what dropping it does).
    pub fn abandon(self) {}

    /// The slot, to send (the caller sends or frees it).
    pub(super) fn take(&mut self) -> HeldSlot {
        self.slot.take().expect("present until sent or freed")
    }
}

impl Drop for ReservedSlot {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            // Ours and never sent. Freeing fails only if the guest
            // scribbled the slot's meta (or the segment was set up
            // again): nothing better to do than leave it.
            let _ = self.pool.free(slot.slot_ref());
        }
    }
}
