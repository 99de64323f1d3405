//! The record a callback guest leaves its ring cursors in for the host to
//! publish, so that a callback call costs no sequentially consistent wasm
//! store per message ([`CallbackCursors`]). An agreement between shmrt's
//! host and its guest SDK, in the guest's own linear memory: the segment
//! format does not change, and a peer that knows nothing of it publishes
//! its cursors itself, as every peer of the format does.
//!
//! ```text
//! [0..4)   ack        ACK, written by the host when it agrees to publish
//!                     (the guest defers only then)
//! [4..8)   h2g_read   the guest's read cursor of its inbox
//! [8..12)  g2h_write  the guest's write cursor of its outbox
//! [12..16) pending    bit 0: h2g_read is to publish; bit 1: g2h_write;
//!                     the host clears the word once it has published
//! ```
//!
//! Why this is enough (SYNC POINT "callback cursors"). A callback runs
//! only while one host thread calls it, on that thread. What the guest
//! writes during the call (frames, payloads, this record) is in that
//! thread's program order before the host's Release store of a cursor
//! after the call; so an Acquire load of that cursor on any thread sees
//! the bytes it covers, on any architecture, with no order of the guest's
//! own (its plain stores to the record need none: the same thread reads
//! them). Meanwhile the host's other threads (the sender or receiver of a
//! split sandbox) see only the header's cursors, which move at the end of
//! the call: a little later than a guest storing them itself, never out
//! of order. A producer's wrap and a quarter of the inbox read are still
//! published by the guest at once, with wasm atomics: rare, and what
//! keeps a long call from holding the other side's room.
//!
//! A call that traps. The SDK leaves its cursors after each message it
//! answered, so that after a trap (or an interrupted call) the host
//! publishes what the messages before the failing one read and answered:
//! their answers reach the host, as from a guest that publishes its
//! cursors itself. Only a cursor the guest did not store itself during
//! the call: a producer's wrap or a quarter of the inbox read stores the
//! header's cursor, and the record's older value is then left alone (the
//! answers since are lost with the call).
//!
//! A hostile guest gains nothing: the host stores values the guest could
//! have stored itself into its own ring headers, and the host's ends
//! check every cursor they load, as always.

/// The record, as the guest's static and the host's reads see it.
#[repr(C, align(16))]
#[derive(Debug, Default)]
pub struct CallbackCursors {
    /// [`CallbackCursors::ACK`] once the host has agreed to publish.
    pub ack: u32,
    /// The guest's read cursor of the host-to-guest ring.
    pub h2g_read: u32,
    /// The guest's write cursor of the guest-to-host ring.
    pub g2h_write: u32,
    /// [`CallbackCursors::READ`] and [`CallbackCursors::WRITE`].
    pub pending: u32,
}

impl CallbackCursors {
    /// The export naming the record's address (a wasm global).
    pub const EXPORT: &'static str = "SHMRT_CALLBACK_CURSORS";
    /// What the host writes into `ack`: "CCUR" little-endian.
    pub const ACK: u32 = u32::from_le_bytes(*b"CCUR");
    /// `pending`: `h2g_read` is to publish.
    pub const READ: u32 = 1;
    /// `pending`: `g2h_write` is to publish.
    pub const WRITE: u32 = 2;
    /// The record's size in guest memory.
    pub const SIZE: u32 = 16;
    /// Byte offsets of the fields.
    pub const ACK_AT: u32 = 0;
    /// See [`Self::ACK_AT`].
    pub const H2G_READ_AT: u32 = 4;
    /// See [`Self::ACK_AT`].
    pub const G2H_WRITE_AT: u32 = 8;
    /// See [`Self::ACK_AT`].
    pub const PENDING_AT: u32 = 12;
}

const _: () = {
    assert!(core::mem::size_of::<CallbackCursors>() == CallbackCursors::SIZE as usize);
    assert!(core::mem::offset_of!(CallbackCursors, ack) == CallbackCursors::ACK_AT as usize);
    assert!(
        core::mem::offset_of!(CallbackCursors, h2g_read) == CallbackCursors::H2G_READ_AT as usize
    );
    assert!(
        core::mem::offset_of!(CallbackCursors, g2h_write) == CallbackCursors::G2H_WRITE_AT as usize
    );
    assert!(
        core::mem::offset_of!(CallbackCursors, pending) == CallbackCursors::PENDING_AT as usize
    );
};
