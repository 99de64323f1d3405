//! The BipBuffer ring: a single-producer single-consumer byte ring whose
//! grants are contiguous, byte-compatible with shm-primitives 0.3.1.
//!
//! Header (128 bytes, two cache lines):
//!
//! ```text
//! [0..4)    write      producer's cursor
//! [4..8)    watermark  where the producer wrapped; 0 = no wrap pending
//! [8..12)   capacity   data bytes (set at creation)
//! [64..68)  read       consumer's cursor
//! ```
//!
//! Protocol (Simon Cooke's bip-buffer, as shm-primitives specifies it):
//!
//! * grant(n) with `write >= read`: take `[write, write+n)` if it fits
//!   before the end; otherwise, if `read > 0`, wrap (`watermark` = the old
//!   `write`, `write = 0`) and take `[0, n)` if `n < read`.
//!   With `write < read` (wrapped): take `[write, write+n)` if
//!   `write + n < read`. The strict `<` keeps a full ring from looking
//!   empty.
//! * commit(n): `write += n`, Release (SYNC POINT "write").
//! * read: with a watermark, drain `[read, watermark)`, then store
//!   `read = 0`, `watermark = 0` and go on from the front; otherwise
//!   `[read, write)`.
//! * release(n): `read += n`, Release (SYNC POINT "read"); reaching the
//!   watermark wraps as above.
//!
//! Departures that keep the bytes and the protocol unchanged:
//!
//! * Each side keeps its own cursor privately and never re-reads it from
//!   shared memory, so a peer scribbling on it cannot mislead us.
//! * Each side caches the other side's cursor and reloads it only when the
//!   cache says full (producer) or empty (consumer). A stale `read` is
//!   always conservative for the producer, a stale `write` for the
//!   consumer, so the cache is safe and cuts cache-line traffic.
//! * A consumer may publish `read` lazily ([`Consumer::set_lazy_release`]):
//!   when it has read everything its cached `write` showed (before it
//!   reloads `write`), when a quarter of the ring is unpublished, when it
//!   wraps, or when asked ([`Consumer::publish`]). A late `read` only makes
//!   the producer see less room for a while; in wasm each publication is
//!   an atomic store, which wasmtime emits with a full fence.
//! * Every loaded peer value is checked against our own capacity: a bad
//!   value is a [`ProtocolError`], never an out-of-bounds access.

use crate::shared_bytes::SharedBytesMut;
use core::mem::{offset_of, size_of};
use core::sync::atomic::Ordering;

use crate::error::{CursorField, ProtocolError};
use crate::frame::{self, ParsedFrame};
use crate::sync::AtomicU32;

/// A ring header as it sits in shared memory.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct RingHeader {
    /// Producer's cursor.
    pub write: AtomicU32,
    /// Wrap boundary, 0 = none.
    pub watermark: AtomicU32,
    /// Data bytes; written at creation, never trusted afterwards.
    pub capacity: core::sync::atomic::AtomicU32,
    _pad0: [u8; 52],
    /// Consumer's cursor.
    pub read: AtomicU32,
    _pad1: [u8; 60],
}

#[cfg(not(loom))]
const _: () = {
    assert!(size_of::<RingHeader>() == 128);
    assert!(offset_of!(RingHeader, write) == 0);
    assert!(offset_of!(RingHeader, watermark) == 4);
    assert!(offset_of!(RingHeader, capacity) == 8);
    assert!(offset_of!(RingHeader, read) == 64);
};

/// Where a ring lives, with the capacity from our own layout.
#[derive(Clone, Copy, Debug)]
pub struct RingRef {
    header: *const RingHeader,
    data: *mut u8,
    capacity: u32,
}

// SAFETY: a RingRef is an address into shared memory that is accessed only
// through atomics and raw-pointer copies; which thread holds it does not
// matter (the producer/consumer roles are enforced by `Producer` and
// `Consumer` not being Clone).
unsafe impl Send for RingRef {}
// SAFETY: a `&RingRef` only reads the immutable address and capacity;
// the ring memory behind them is reached through atomics and raw-pointer
// copies, whichever thread does it (see `Send` just above).
unsafe impl Sync for RingRef {}

impl RingRef {
    /// A ring whose 128-byte header is at `header` and whose `capacity`
    /// data bytes follow it.
    ///
    /// # Safety
    ///
    /// `header` must be 64-byte aligned and valid for reads and writes of
    /// `128 + capacity` bytes for as long as this value and every
    /// `Producer`/`Consumer` made from it are used.
    pub unsafe fn new(header: *mut u8, capacity: u32) -> Self {
        debug_assert!((header as usize).is_multiple_of(64));
        RingRef {
            header: header as *const RingHeader,
            // SAFETY: within the region the caller vouches for.
            data: unsafe { header.add(size_of::<RingHeader>()) },
            capacity,
        }
    }

    #[inline(always)]
    fn header(&self) -> &RingHeader {
        // SAFETY: `new`'s contract: valid and aligned for the lifetime.
        unsafe { &*self.header }
    }

    /// Data bytes, from our own layout.
    #[inline(always)]
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Writes a fresh, empty header. Only the creator, before publishing
    /// the segment (SYNC POINT "magic"), with no other party attached.
    pub fn init(&self) {
        // SAFETY: `new`'s contract makes the header valid for writes; the
        // creator is the only party touching it now.
        unsafe {
            core::ptr::write(
                self.header as *mut RingHeader,
                RingHeader {
                    write: AtomicU32::new(0),
                    watermark: AtomicU32::new(0),
                    capacity: core::sync::atomic::AtomicU32::new(self.capacity),
                    _pad0: [0; 52],
                    read: AtomicU32::new(0),
                    _pad1: [0; 60],
                },
            )
        };
    }

    /// Empties the ring (recovery, after the peer is gone).
    pub fn reset(&self) {
        self.header().write.store(0, Ordering::Release);
        self.header().watermark.store(0, Ordering::Release);
        self.header().read.store(0, Ordering::Release);
    }

    /// Stores the consumer's `read` for a consumer that left it to us to
    /// publish (a callback guest: see `callback_cursors`), with Release:
    /// what the consumer did before, on this thread, happens-before the
    /// producer's Acquire load (SYNC POINT "callback cursors").
    pub fn publish_read_for_consumer(&self, read: u32) {
        self.header().read.store(read, Ordering::Release);
    }

    /// Stores the producer's `write` for a producer that left it to us to
    /// publish (see [`Self::publish_read_for_consumer`]): the frames it
    /// wrote on this thread happen-before a consumer's Acquire load of
    /// `write` (SYNC POINT "callback cursors").
    pub fn publish_write_for_producer(&self, write: u32) {
        self.header().write.store(write, Ordering::Release);
    }

    /// Loads the three cursors once, for inspection (not for I/O).
    pub fn cursors(&self) -> RingCursors {
        RingCursors {
            write: self.header().write.load(Ordering::Acquire),
            watermark: self.header().watermark.load(Ordering::Acquire),
            read: self.header().read.load(Ordering::Acquire),
            capacity_field: self.header().capacity.load(Ordering::Relaxed),
        }
    }

    /// Loads the little-endian u32 at data offset `off` (4-aligned, in
    /// bounds: callers check).
    #[inline(always)]
    fn load_word(&self, off: u32) -> u32 {
        debug_assert!(off.is_multiple_of(4) && off + 4 <= self.capacity);
        // SAFETY: `off + 4 <= capacity` and 4-aligned (data is 64-aligned,
        // frames start at multiples of 4), checked by the caller; an
        // atomic load makes a concurrent hostile write a plain race on
        // the value, not undefined behaviour.
        let w = unsafe {
            core::sync::atomic::AtomicU32::from_ptr(self.data.add(off as usize) as *mut u32)
        };
        u32::from_le(w.load(Ordering::Relaxed))
    }

    #[inline(always)]
    fn store_word(&self, off: u32, value: u32) {
        debug_assert!(off.is_multiple_of(4) && off + 4 <= self.capacity);
        // SAFETY: in bounds and 4-aligned as in `load_word`. A plain store:
        // the bytes are the producer's own until the Release store of
        // `write` publishes them (SYNC POINT "write"), and on wasm an
        // atomic store is sequentially consistent (`mov` and `mfence`).
        unsafe { core::ptr::write(self.data.add(off as usize) as *mut u32, value.to_le()) };
    }

    /// Pointer to data offset `off`.
    #[inline(always)]
    pub fn data_ptr(&self, off: u32) -> *mut u8 {
        debug_assert!(off <= self.capacity);
        // SAFETY: `off <= capacity`, within the region of `new`.
        unsafe { self.data.add(off as usize) }
    }
}

/// The cursors of a ring, loaded once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingCursors {
    pub write: u32,
    pub watermark: u32,
    pub read: u32,
    /// The header's capacity word as found (may have been scribbled).
    pub capacity_field: u32,
}

impl RingCursors {
    /// Bytes waiting to be read, if the cursors are consistent with
    /// `capacity`.
    pub fn occupancy(&self, capacity: u32) -> Option<u32> {
        if self.write > capacity || self.read > capacity || self.watermark > capacity {
            return None;
        }
        if self.watermark != 0 {
            if self.read > self.watermark {
                return None;
            }
            Some(self.watermark - self.read + self.write)
        } else if self.write >= self.read {
            Some(self.write - self.read)
        } else {
            None
        }
    }
}

/// The producing end of a ring.
#[derive(Debug)]
pub struct Producer {
    ring: RingRef,
    write: u32,
    cached_read: u32,
    /// The last `write` stored in the header.
    published: u32,
    /// Whether commits leave `write` for [`Producer::take_unpublished`]
    /// (see [`Producer::set_deferred`]).
    deferred: bool,
}

impl Producer {
    /// Takes the producing end of a ring, loading both cursors once.
    pub fn new(ring: RingRef) -> Result<Self, ProtocolError> {
        let write = ring.header().write.load(Ordering::Acquire);
        let read = ring.header().read.load(Ordering::Acquire);
        check_cursor(CursorField::Write, write, ring.capacity)?;
        check_cursor(CursorField::Read, read, ring.capacity)?;
        if !write.is_multiple_of(4) {
            return Err(ProtocolError::Cursor {
                field: CursorField::Write,
                value: write,
                capacity: ring.capacity,
            });
        }
        Ok(Producer {
            ring,
            write,
            cached_read: read,
            published: write,
            deferred: false,
        })
    }

    /// Takes the producing end of a ring its caller has just laid out
    /// (both cursors at zero) without reading its header, so that a fresh
    /// segment's pages are not touched before the ring is used. A ring
    /// whose cursors moved since is caught at the first use: every later
    /// load of the consumer's cursor is checked as [`Self::new`] checks it.
    pub fn fresh(ring: RingRef) -> Self {
        Producer {
            ring,
            write: 0,
            cached_read: 0,
            published: 0,
            deferred: false,
        }
    }

    /// Makes commits deferred (`true`): `write` is not stored in the
    /// header, and [`Self::take_unpublished`] hands it to whoever
    /// publishes it for us (the host, after a callback call: see
    /// `peer_entry::CallbackCursors`). `false` (the default) stores what
    /// is pending and each later commit at once.
    pub fn set_deferred(&mut self, deferred: bool) {
        self.deferred = deferred;
        if !deferred {
            self.publish();
        }
    }

    /// Stores `write` in the header if commits are unpublished.
    #[inline(always)]
    pub fn publish(&mut self) {
        if self.write != self.published {
            // Release: the committed bytes happen-before a consumer's
            // Acquire load of `write` (SYNC POINT "write").
            self.ring
                .header()
                .write
                .store(self.write, Ordering::Release);
            self.published = self.write;
        }
    }

    /// The `write` cursor that commits left unpublished, if any; counted
    /// as published from now on: the caller stores it (with Release, or
    /// after what orders the committed bytes before it).
    #[inline(always)]
    pub fn take_unpublished(&mut self) -> Option<u32> {
        (self.write != self.published).then(|| {
            self.published = self.write;
            self.write
        })
    }

    /// The ring.
    pub fn ring(&self) -> &RingRef {
        &self.ring
    }

    #[inline(always)]
    fn fits(&self, len: u32, read: u32) -> Option<u32> {
        let (write, cap) = (self.write, self.ring.capacity);
        if write >= read {
            (cap - write >= len).then_some(write)
        } else {
            (write + len < read).then_some(write)
        }
    }

    /// Whether `len` bytes could be granted now (reloads `read`; changes
    /// nothing).
    #[inline(always)]
    pub fn has_room(&self, len: u32) -> Result<bool, ProtocolError> {
        if len == 0 || len > self.ring.capacity {
            return Ok(false);
        }
        // Acquire: SYNC POINT "read".
        let read = self.ring.header().read.load(Ordering::Acquire);
        check_cursor(CursorField::Read, read, self.ring.capacity)?;
        Ok(self.fits(len, read).is_some() || (self.write >= read && len < read))
    }

    /// Reserves `len` contiguous bytes. `Ok(None)` when the ring is full
    /// for now; a `len` of 0 or past the capacity never fits.
    #[inline(always)]
    pub fn grant(&mut self, len: u32) -> Result<Option<Grant<'_>>, ProtocolError> {
        if len == 0 || len > self.ring.capacity {
            return Ok(None);
        }
        if let Some(offset) = self.fits(len, self.cached_read) {
            return Ok(Some(Grant {
                producer: self,
                offset,
                len,
            }));
        }
        // The cache says full: reload `read`. Acquire pairs with the
        // consumer's Release of `read` (SYNC POINT "read"): bytes it has
        // released are no longer being read.
        let read = self.ring.header().read.load(Ordering::Acquire);
        check_cursor(CursorField::Read, read, self.ring.capacity)?;
        self.cached_read = read;
        if let Some(offset) = self.fits(len, read) {
            return Ok(Some(Grant {
                producer: self,
                offset,
                len,
            }));
        }
        if self.write >= read && read > 0 {
            // Wrap: `write = 0` first, then the watermark, both Release
            // (SYNC POINT "wrap"). A consumer that sees the watermark
            // (Acquire) then sees `write` at 0 or later, so it can not take
            // the pre-wrap `write` for the extent of the front. (Storing the
            // watermark first, as shm-primitives does, leaves that open
            // under the C++ memory model; loom found it. Consumers of either
            // order read this order correctly: until the watermark shows,
            // `write < read` just looks empty.)
            //
            // Commits left unpublished before the wrap are published by
            // the watermark (the consumer drains up to it), and their
            // bytes were written before these Release stores.
            self.ring.header().write.store(0, Ordering::Release);
            self.ring
                .header()
                .watermark
                .store(self.write, Ordering::Release);
            self.write = 0;
            self.published = 0;
            if len < read {
                return Ok(Some(Grant {
                    producer: self,
                    offset: 0,
                    len,
                }));
            }
        }
        Ok(None)
    }
}

/// Bytes reserved in a ring, to fill and commit.
#[derive(Debug)]
pub struct Grant<'a> {
    producer: &'a mut Producer,
    offset: u32,
    len: u32,
}

impl Grant<'_> {
    /// Offset of the grant within the ring data.
    pub fn offset(&self) -> u32 {
        self.offset
    }

    /// Granted bytes.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Never true: grants are at least one byte.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The granted bytes. Until commit they belong to the producer by the
    /// protocol; a hostile consumer writing into them can only garble
    /// what it will itself receive.
    #[inline(always)]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: [offset, offset+len) is inside the ring data (checked in
        // `grant`) and not readable by the consumer until commit.
        unsafe {
            core::slice::from_raw_parts_mut(
                self.producer.ring.data_ptr(self.offset),
                self.len as usize,
            )
        }
    }

    /// The granted bytes as a view of shared bytes (no reference over
    /// ring memory is made).
    #[inline(always)]
    pub fn bytes_mut(&mut self) -> SharedBytesMut<'_> {
        // SAFETY: [offset, offset+len) is inside the ring data (checked in
        // `grant`) and not readable by the consumer until commit; the view
        // borrows `self`, so it ends before `commit` can run.
        unsafe {
            SharedBytesMut::from_raw_parts(
                self.producer.ring.data_ptr(self.offset),
                self.len as usize,
            )
        }
    }

    /// Stores a little-endian word at byte `at` of the grant (4-aligned).
    #[inline(always)]
    pub fn put_word(&mut self, at: u32, value: u32) {
        assert!(
            at.is_multiple_of(4) && at + 4 <= self.len,
            "word outside the grant"
        );
        self.producer.ring.store_word(self.offset + at, value);
    }

    /// Publishes the first `len` granted bytes (all of them for a frame).
    #[inline(always)]
    pub fn commit(self, len: u32) {
        assert!(len <= self.len, "commit past the grant");
        let p = self.producer;
        p.write = self.offset + len;
        if !p.deferred {
            // Release: the bytes written into the grant happen-before a
            // consumer's Acquire load of `write` (SYNC POINT "write").
            p.ring.header().write.store(p.write, Ordering::Release);
            p.published = p.write;
        }
    }
}

/// Readable contiguous bytes of a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readable {
    /// Offset within the ring data.
    pub offset: u32,
    /// Contiguous bytes from there.
    pub len: u32,
}

/// The consuming end of a ring.
#[derive(Debug)]
pub struct Consumer {
    ring: RingRef,
    read: u32,
    /// The last `read` stored in the header.
    published: u32,
    /// Whether releases wait for [`Consumer::publish`] (see the module
    /// documentation).
    lazy: bool,
    /// Whether even an empty ring does not publish `read` (see
    /// [`Consumer::set_deferred`]).
    deferred: bool,
    cached_write: u32,
    /// The producer's watermark while we drain the tail; 0 = none.
    wrap_end: u32,
}

#[inline(always)]
fn check_cursor(field: CursorField, value: u32, capacity: u32) -> Result<(), ProtocolError> {
    if value > capacity {
        Err(ProtocolError::Cursor {
            field,
            value,
            capacity,
        })
    } else {
        Ok(())
    }
}

impl Consumer {
    /// Takes the consuming end of a ring, loading `read` once.
    pub fn new(ring: RingRef) -> Result<Self, ProtocolError> {
        let read = ring.header().read.load(Ordering::Acquire);
        check_cursor(CursorField::Read, read, ring.capacity)?;
        if !read.is_multiple_of(4) {
            return Err(ProtocolError::Cursor {
                field: CursorField::Read,
                value: read,
                capacity: ring.capacity,
            });
        }
        Ok(Consumer {
            ring,
            read,
            published: read,
            lazy: false,
            deferred: false,
            cached_write: read,
            wrap_end: 0,
        })
    }

    /// Takes the consuming end of a ring its caller has just laid out
    /// (`read` at zero) without reading its header; see
    /// [`Producer::fresh`].
    pub fn fresh(ring: RingRef) -> Self {
        Consumer {
            ring,
            read: 0,
            published: 0,
            lazy: false,
            deferred: false,
            cached_write: 0,
            wrap_end: 0,
        }
    }

    /// The ring.
    pub fn ring(&self) -> &RingRef {
        &self.ring
    }

    #[inline(always)]
    fn wrap_to_front(&mut self) {
        // Release: the tail we drained may be overwritten once the producer
        // sees `read` at 0 (SYNC POINT "read"). The watermark is cleared
        // after `read`, as shm-primitives' consumer does; the producer can
        // not wrap again before it sees a non-zero `read`.
        self.ring.header().read.store(0, Ordering::Release);
        self.ring.header().watermark.store(0, Ordering::Release);
        self.read = 0;
        self.published = 0;
        self.wrap_end = 0;
        self.cached_write = 0;
    }

    /// Stores `read` in the header if released bytes are unpublished, so
    /// that the producer sees the room. Called before reloading `write`.
    /// A lazy consumer must call it before it waits on anything else (its
    /// own sends, say): the peer may be waiting for this room.
    #[inline(always)]
    pub fn publish(&mut self) {
        if self.read != self.published {
            // Release: we are done with these bytes (SYNC POINT "read").
            self.ring.header().read.store(self.read, Ordering::Release);
            self.published = self.read;
        }
    }

    /// Makes releases lazy (`true`) or immediate (`false`, the default,
    /// which publishes what is pending).
    pub fn set_lazy_release(&mut self, lazy: bool) {
        self.lazy = lazy;
        if !lazy {
            self.publish();
        }
    }

    /// Makes releases deferred (`true`): lazy, and not published when the
    /// ring is found empty either, but left for
    /// [`Self::take_unpublished`] (the host publishes them after a
    /// callback call: see `peer_entry::CallbackCursors`). A quarter of the
    /// ring read and the wrap still publish, as a lazy consumer does.
    /// `false` publishes what is pending and makes releases immediate.
    pub fn set_deferred(&mut self, deferred: bool) {
        self.deferred = deferred;
        self.set_lazy_release(deferred);
    }

    /// The `read` cursor that releases left unpublished, if any; counted
    /// as published from now on: the caller stores it.
    #[inline(always)]
    pub fn take_unpublished(&mut self) -> Option<u32> {
        (self.read != self.published).then(|| {
            self.published = self.read;
            self.read
        })
    }

    /// The contiguous readable bytes, or `None` when the ring is empty.
    #[inline(always)]
    pub fn readable(&mut self) -> Result<Option<Readable>, ProtocolError> {
        // At most: tail, wrap, refresh, front. Bounded so that no value a
        // peer writes can keep us looping.
        for _ in 0..4 {
            if self.wrap_end != 0 {
                if self.read < self.wrap_end {
                    return Ok(Some(Readable {
                        offset: self.read,
                        len: self.wrap_end - self.read,
                    }));
                }
                self.wrap_to_front();
                continue;
            }
            if self.read < self.cached_write {
                return Ok(Some(Readable {
                    offset: self.read,
                    len: self.cached_write - self.read,
                }));
            }
            // The cache says empty: give the producer its room, then
            // reload. `write` first, with Acquire
            // (SYNC POINT "write" and "wrap"): if it shows the wrap, the
            // watermark load below sees the watermark. Deferred: the room
            // is given back after the call, by the host.
            if !self.deferred {
                self.publish();
            }
            let cap = self.ring.capacity;
            let write = self.ring.header().write.load(Ordering::Acquire);
            let watermark = self.ring.header().watermark.load(Ordering::Acquire);
            check_cursor(CursorField::Write, write, cap)?;
            check_cursor(CursorField::Watermark, watermark, cap)?;
            if watermark != 0 {
                if watermark < self.read {
                    return Err(ProtocolError::CursorOrder {
                        field: CursorField::Watermark,
                        value: watermark,
                        read: self.read,
                    });
                }
                self.wrap_end = watermark;
                continue;
            }
            if write < self.read {
                // The producer has wrapped (`write = 0`) and its watermark
                // is not visible yet: nothing to read for now. A producer
                // that leaves it so only stalls its own channel.
                return Ok(None);
            }
            if write == self.read {
                return Ok(None);
            }
            self.cached_write = write;
        }
        Ok(None)
    }

    /// Parses the next frame without consuming it.
    #[inline(always)]
    pub fn peek_frame(&mut self) -> Result<Option<ParsedFrame>, ProtocolError> {
        let Some(r) = self.readable()? else {
            return Ok(None);
        };
        let ring = self.ring;
        let parsed = frame::parse(r.offset, r.len, |i| ring.load_word(r.offset + 4 * i))?;
        Ok(Some(parsed))
    }

    /// Releases `len` bytes at the front of what [`Self::readable`]
    /// returned. A lazy consumer publishes them later (see
    /// [`Self::publish`]).
    #[inline(always)]
    pub fn release(&mut self, len: u32) {
        let end = if self.wrap_end != 0 {
            self.wrap_end
        } else {
            self.cached_write
        };
        assert!(len <= end - self.read, "release past the readable bytes");
        self.read += len;
        if self.wrap_end != 0 && self.read == self.wrap_end {
            self.wrap_to_front();
        } else if !self.lazy || self.read - self.published >= self.ring.capacity / 4 {
            self.publish();
        }
    }

    /// Whether the ring holds nothing (reloads the producer's cursor).
    #[inline(always)]
    pub fn is_empty(&mut self) -> Result<bool, ProtocolError> {
        Ok(self.readable()?.is_none())
    }

    /// Pointer to data offset `offset` (nothing is read), e.g. to the
    /// inline payload that [`Self::peek_frame`] returned.
    #[inline(always)]
    pub fn data_ptr(&self, offset: u32) -> *mut u8 {
        self.ring.data_ptr(offset)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::vec::Vec;

    pub(crate) struct TestRing {
        mem: Vec<u64>,
        cap: u32,
    }

    impl TestRing {
        pub(crate) fn new(cap: u32) -> Self {
            let words = (128 + cap as usize).div_ceil(8) + 8;
            let mut t = TestRing {
                mem: std::vec![0u64; words],
                cap,
            };
            t.ring().init();
            t
        }
        pub(crate) fn ring(&mut self) -> RingRef {
            let base = self.mem.as_mut_ptr() as *mut u8;
            let pad = base.align_offset(64);
            // SAFETY: the Vec holds 64 spare bytes for the alignment pad
            // plus header and capacity, and outlives every use in a test.
            unsafe { RingRef::new(base.add(pad), self.cap) }
        }
    }

    fn push(p: &mut Producer, bytes: &[u8]) -> bool {
        match p.grant(bytes.len() as u32).unwrap() {
            Some(mut g) => {
                g.as_mut_slice().copy_from_slice(bytes);
                g.commit(bytes.len() as u32);
                true
            }
            None => false,
        }
    }

    #[test]
    fn deferred_commits_are_left_for_whoever_publishes_them() {
        // 256 bytes: a quarter (64) is more than the 32 released below.
        let mut t = TestRing::new(256);
        let ring = t.ring();
        let mut p = Producer::new(ring).unwrap();
        let mut c = Consumer::new(ring).unwrap();
        p.set_deferred(true);
        assert!(push(&mut p, &[1; 16]));
        assert!(push(&mut p, &[2; 16]));
        // Nothing published: the consumer sees an empty ring.
        assert_eq!(ring.header().write.load(Ordering::Relaxed), 0);
        assert!(c.readable().unwrap().is_none());
        let write = p.take_unpublished().expect("two commits pending");
        assert_eq!(write, 32);
        assert_eq!(p.take_unpublished(), None, "taken once");
        ring.publish_write_for_producer(write);
        assert_eq!(c.readable().unwrap().map(|r| r.len), Some(32));
        // The consumer defers too: even an empty ring publishes nothing.
        c.set_deferred(true);
        c.release(16);
        c.release(16);
        assert!(c.readable().unwrap().is_none());
        assert_eq!(ring.header().read.load(Ordering::Relaxed), 0);
        let read = c.take_unpublished().expect("two releases pending");
        ring.publish_read_for_consumer(read);
        assert_eq!(ring.header().read.load(Ordering::Relaxed), 32);
        // Turning deferral off with nothing pending stores nothing new.
        c.set_deferred(false);
        p.set_deferred(false);
        assert!(push(&mut p, &[3; 16]));
        assert_eq!(ring.header().write.load(Ordering::Relaxed), 48);
    }

    #[test]
    fn a_deferred_producer_wrapping_publishes_through_the_watermark() {
        let mut t = TestRing::new(64);
        let ring = t.ring();
        let mut p = Producer::new(ring).unwrap();
        let mut c = Consumer::new(ring).unwrap();
        assert!(push(&mut p, &[1; 32]));
        assert_eq!(c.readable().unwrap().map(|r| r.len), Some(32));
        c.release(32);
        p.set_deferred(true);
        assert!(push(&mut p, &[2; 16]));
        // 16 left at the end: the next 24 bytes wrap to the front.
        assert!(push(&mut p, &[3; 24]));
        // The watermark covers the deferred frame before the wrap.
        let r = c
            .readable()
            .unwrap()
            .expect("the tail is published by the wrap");
        assert_eq!((r.offset, r.len), (32, 16));
        c.release(16);
        assert!(
            c.readable().unwrap().is_none(),
            "the front is not published yet"
        );
        let write = p.take_unpublished().expect("the front is pending");
        ring.publish_write_for_producer(write);
        assert_eq!(
            c.readable().unwrap().map(|r| (r.offset, r.len)),
            Some((0, 24))
        );
    }

    #[test]
    fn lazy_release_publishes_when_caught_up_or_a_quarter_is_read() {
        let mut t = TestRing::new(256);
        let ring = t.ring();
        let mut p = Producer::new(ring).unwrap();
        let mut c = Consumer::new(ring).unwrap();
        c.set_lazy_release(true);
        for i in 0..6u8 {
            assert!(push(&mut p, &[i; 16]));
        }
        // Three of six visible records read: nothing published yet.
        for _ in 0..3 {
            assert!(c.readable().unwrap().is_some());
            c.release(16);
        }
        assert_eq!(ring.header().read.load(Ordering::Relaxed), 0);
        // A quarter of the ring (64 bytes) read: published.
        assert!(c.readable().unwrap().is_some());
        c.release(16);
        assert_eq!(ring.header().read.load(Ordering::Relaxed), 64);
        c.release(16);
        c.release(16);
        assert_eq!(ring.header().read.load(Ordering::Relaxed), 64);
        // Looking for more finds the cache drained: published before the
        // reload, so a producer waiting for room sees it.
        assert!(c.readable().unwrap().is_none());
        assert_eq!(ring.header().read.load(Ordering::Relaxed), 96);
        // Back to immediate: every release is published at once.
        assert!(push(&mut p, &[9; 16]));
        c.set_lazy_release(false);
        assert!(c.readable().unwrap().is_some());
        c.release(16);
        assert_eq!(ring.header().read.load(Ordering::Relaxed), 112);
    }

    #[test]
    fn lazy_release_still_fills_and_drains_a_ring_many_times() {
        let mut t = TestRing::new(512);
        let ring = t.ring();
        let mut p = Producer::new(ring).unwrap();
        let mut c = Consumer::new(ring).unwrap();
        c.set_lazy_release(true);
        let (mut sent, mut got) = (0u32, 0u32);
        while got < 2000 {
            // Fill until full, then drain everything visible.
            while sent < 2000 && push(&mut p, &(sent as u64 * 3).to_le_bytes().repeat(3)) {
                sent += 1;
            }
            while let Some(r) = c.readable().unwrap() {
                let mut word = [0u8; 8];
                // SAFETY: a 24-byte record starts at `r.offset`.
                unsafe {
                    core::ptr::copy_nonoverlapping(c.data_ptr(r.offset), word.as_mut_ptr(), 8)
                };
                assert_eq!(u64::from_le_bytes(word), got as u64 * 3, "record {got}");
                c.release(24);
                got += 1;
            }
        }
        assert_eq!(sent, 2000);
    }

    #[test]
    fn wraps_when_the_end_is_too_short() {
        let mut t = TestRing::new(64);
        let ring = t.ring();
        let mut p = Producer::new(ring).unwrap();
        let mut c = Consumer::new(ring).unwrap();
        assert!(push(&mut p, &[1; 40]));
        assert!(
            !push(&mut p, &[2; 32]),
            "24 left at the end, read is 0: no wrap"
        );
        let r = c.readable().unwrap().unwrap();
        assert_eq!(r, Readable { offset: 0, len: 40 });
        c.release(40);
        assert!(
            push(&mut p, &[3; 32]),
            "wraps to the front now that read > 0"
        );
        assert_eq!(ring.cursors().watermark, 40);
        let r = c.readable().unwrap().unwrap();
        assert_eq!(r, Readable { offset: 0, len: 32 });
        assert_eq!(
            ring.cursors().watermark,
            0,
            "consumer cleared the watermark"
        );
        // SAFETY: 32 bytes at offset 0, inside the ring data: `readable`
        // just returned them (offset 0, len 32) and they are not released.
        let got = unsafe { core::slice::from_raw_parts(c.data_ptr(0), 32) };
        assert_eq!(got, &[3; 32]);
        c.release(32);
        assert!(c.readable().unwrap().is_none());
    }

    #[test]
    fn full_ring_never_looks_empty() {
        let mut t = TestRing::new(64);
        let ring = t.ring();
        let mut p = Producer::new(ring).unwrap();
        let mut c = Consumer::new(ring).unwrap();
        assert!(push(&mut p, &[1; 32]));
        c.readable().unwrap();
        c.release(32);
        assert!(push(&mut p, &[2; 28]), "fits at the end");
        // write = 60, read = 32: 4 left at the end; wrap needs n < 32.
        assert!(push(&mut p, &[3; 28]));
        assert!(!push(&mut p, &[4; 4]), "write + 4 == read would look empty");
        let mut total = 0;
        while let Some(r) = c.readable().unwrap() {
            total += r.len;
            c.release(r.len);
        }
        assert_eq!(total, 56);
    }

    #[test]
    fn cursors_past_capacity_are_protocol_errors() {
        let mut t = TestRing::new(64);
        let ring = t.ring();
        let mut c = Consumer::new(ring).unwrap();
        ring.header().write.store(1000, Ordering::Relaxed);
        assert_eq!(
            c.readable(),
            Err(ProtocolError::Cursor {
                field: CursorField::Write,
                value: 1000,
                capacity: 64
            })
        );
        ring.header().write.store(8, Ordering::Relaxed);
        ring.header().watermark.store(65, Ordering::Relaxed);
        assert!(matches!(
            c.readable(),
            Err(ProtocolError::Cursor {
                field: CursorField::Watermark,
                ..
            })
        ));
        let mut p = Producer::new(ring).unwrap();
        ring.header().read.store(u32::MAX, Ordering::Relaxed);
        assert!(push(&mut p, &[0; 8]), "the cached read still allows this");
        for _ in 0..10 {
            match p.grant(8) {
                Ok(Some(g)) => g.commit(8),
                Ok(None) => panic!("no error reported"),
                Err(e) => {
                    assert_eq!(
                        e,
                        ProtocolError::Cursor {
                            field: CursorField::Read,
                            value: u32::MAX,
                            capacity: 64
                        }
                    );
                    return;
                }
            }
        }
        panic!("the bad read cursor was never reported");
    }

    #[test]
    fn a_wrap_whose_watermark_is_not_visible_yet_reads_as_empty() {
        let mut t = TestRing::new(64);
        let ring = t.ring();
        let mut p = Producer::new(ring).unwrap();
        let mut c = Consumer::new(ring).unwrap();
        assert!(push(&mut p, &[1; 16]));
        c.readable().unwrap();
        c.release(16);
        ring.header().write.store(0, Ordering::Relaxed);
        assert_eq!(c.readable(), Ok(None));
        ring.header().watermark.store(16, Ordering::Relaxed);
        ring.header().write.store(8, Ordering::Relaxed);
        assert_eq!(
            c.readable(),
            Ok(Some(Readable { offset: 0, len: 8 })),
            "then the front"
        );
    }

    #[test]
    fn occupancy_counts_tail_and_front() {
        let c = RingCursors {
            write: 8,
            watermark: 60,
            read: 40,
            capacity_field: 64,
        };
        assert_eq!(c.occupancy(64), Some(28));
        let c = RingCursors {
            write: 8,
            watermark: 0,
            read: 40,
            capacity_field: 64,
        };
        assert_eq!(c.occupancy(64), None);
    }
}
