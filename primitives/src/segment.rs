//! A whole segment in memory: creation, the two ways of opening it, views
//! of its parts, the ends of each guest's channels, and recovery.

use core::sync::atomic::Ordering;

use crate::channel::{Receiver, Sender};
use crate::error::{LayoutError, ProtocolError};
use crate::frame::Frame;
use crate::layout::{
    CLASS_HEADER_SIZE, SLOT_LEN_PREFIX, SegmentConfig, SegmentLayout, SizeClass, SizeClasses,
};
use crate::peer_entry::PeerEntry;
use crate::ring::{Consumer, Producer, RingRef};
use crate::segment_header::{HeaderError, SegmentHeader};
use crate::slot_pool::{SizeClassHeader, SlotPool};

/// A segment mapped at some address, with its layout.
#[derive(Clone, Copy)]
pub struct Segment {
    base: *mut u8,
    len: usize,
    layout: SegmentLayout,
}

// SAFETY: every access to the memory goes through atomics or raw-pointer
// copies; the view itself is immutable.
unsafe impl Send for Segment {}
// SAFETY: as above.
unsafe impl Sync for Segment {}

/// What [`Segment::recover_guest`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Recovery {
    /// Slots named by frames still queued host-to-guest, now free.
    pub queued_slots_freed: u32,
    /// Slots the guest owned, now free.
    pub owned_slots_freed: u32,
    /// The queued frames could not all be read; the rest of the ring was
    /// dropped.
    pub scan_error: Option<ProtocolError>,
}

impl Segment {
    /// Lays out and initializes a segment in `len` bytes at `base`; the
    /// magic is written last.
    ///
    /// # Safety
    ///
    /// `base` must be 64-byte aligned, valid for reads and writes of `len`
    /// bytes for as long as the returned value is used, and not accessed by
    /// anyone else until this returns.
    pub unsafe fn create(
        base: *mut u8,
        len: usize,
        config: &SegmentConfig,
    ) -> Result<Self, LayoutError> {
        let layout = SegmentLayout::compute(config)?;
        // SAFETY: forwarded.
        let seg = unsafe { Self::from_layout(base, len, layout) }?;
        let header = seg.header();
        header.init_fields(&layout);
        for i in 0..layout.max_guests {
            seg.peer(i)
                .expect("index below max_guests")
                .init(layout.ring_pair_offset(i));
            seg.g2h_ring(i).expect("index below max_guests").init();
            seg.h2g_ring(i).expect("index below max_guests").init();
        }
        seg.pool().init();
        header.publish();
        Ok(seg)
    }

    /// A view of a segment with a layout the caller already holds (the
    /// creator's own copy); nothing is read from the header.
    ///
    /// # Safety
    ///
    /// `base` must be 64-byte aligned and valid for reads and writes of
    /// `len` bytes for as long as the returned value is used.
    pub unsafe fn from_layout(
        base: *mut u8,
        len: usize,
        layout: SegmentLayout,
    ) -> Result<Self, LayoutError> {
        if (len as u64) < layout.total_size {
            return Err(LayoutError::RegionTooSmall {
                needed: layout.total_size,
                available: len as u64,
            });
        }
        debug_assert!(base as usize % 64 == 0);
        Ok(Segment { base, len, layout })
    }

    /// Opens a segment another party wrote, checking everything first:
    /// magic, version, every size and offset against `len` and against the
    /// canonical layout, each class header, each peer's ring offset and
    /// each ring's capacity word.
    ///
    /// # Safety
    ///
    /// `base` must be 64-byte aligned and valid for reads and writes of
    /// `len` bytes for as long as the returned value is used. Its contents
    /// may be anything.
    pub unsafe fn open_validated(base: *mut u8, len: usize) -> Result<Self, HeaderError> {
        let mapped = len as u64;
        if mapped < 128 {
            return Err(HeaderError::TooShort { len: mapped });
        }
        // SAFETY: 128 bytes are mapped and `base` is aligned.
        let snap = unsafe { &*(base as *const SegmentHeader) }.snapshot();
        snap.check(mapped)?;
        // The pool offset depends only on guests and capacity; check it
        // before reading class headers from there.
        let skeleton = SegmentLayout::canonical(snap.max_guests, snap.bipbuf_capacity, &[])
            .map_err(|_| HeaderError::Field {
                field: "bipbuf_capacity",
                value: snap.bipbuf_capacity as u64,
                rule: "layout overflows",
            })?;
        if snap.var_pool_offset != skeleton.var_pool_offset {
            return Err(HeaderError::Layout {
                field: "var_pool_offset",
                value: snap.var_pool_offset,
                expected: skeleton.var_pool_offset,
            });
        }
        let headers_end =
            snap.var_pool_offset + snap.num_var_slot_classes as u64 * CLASS_HEADER_SIZE;
        if headers_end > mapped {
            return Err(HeaderError::Truncated {
                field: "size class headers",
                needed: headers_end,
                mapped,
            });
        }
        let mut classes = [SizeClass {
            slot_size: 0,
            slot_count: 0,
        }; crate::layout::MAX_SIZE_CLASSES];
        for (i, class) in classes
            .iter_mut()
            .enumerate()
            .take(snap.num_var_slot_classes as usize)
        {
            let off = snap.var_pool_offset + i as u64 * CLASS_HEADER_SIZE;
            // SAFETY: off + 64 <= headers_end <= mapped; 64-aligned.
            let h = unsafe { &*(base.add(off as usize) as *const SizeClassHeader) };
            let slot_size = h.slot_size.load(Ordering::Relaxed);
            let slot_count = h.slot_count.load(Ordering::Relaxed);
            if slot_size <= SLOT_LEN_PREFIX {
                return Err(HeaderError::Class {
                    index: i as u32,
                    field: "slot_size",
                    value: slot_size as u64,
                    rule: "must be larger than the 4-byte length prefix",
                });
            }
            if slot_count == 0 || slot_count == u32::MAX {
                return Err(HeaderError::Class {
                    index: i as u32,
                    field: "slot_count",
                    value: slot_count as u64,
                    rule: "must be 1..u32::MAX",
                });
            }
            *class = SizeClass {
                slot_size,
                slot_count,
            };
        }
        let classes =
            SizeClasses::new(&classes[..snap.num_var_slot_classes as usize]).map_err(|_| {
                HeaderError::Field {
                    field: "num_var_slot_classes",
                    value: snap.num_var_slot_classes as u64,
                    rule: "must be 1..=16",
                }
            })?;
        let layout =
            SegmentLayout::canonical(snap.max_guests, snap.bipbuf_capacity, classes.as_slice())
                .map_err(|_| HeaderError::Field {
                    field: "size classes",
                    value: snap.num_var_slot_classes as u64,
                    rule: "the pool size overflows 64-bit offsets",
                })?
                .with_header_values(
                    snap.inline_threshold,
                    snap.max_payload_size,
                    snap.heartbeat_interval,
                    snap.features,
                );
        if layout.total_size > mapped {
            return Err(HeaderError::Truncated {
                field: "slot pool",
                needed: layout.total_size,
                mapped,
            });
        }
        if snap.total_size < layout.total_size {
            return Err(HeaderError::Layout {
                field: "total_size",
                value: snap.total_size,
                expected: layout.total_size,
            });
        }
        let seg = Segment { base, len, layout };
        for i in 0..layout.max_guests {
            let entry = seg.peer(i).expect("index below max_guests");
            let ring_offset = entry.ring_offset.load(Ordering::Relaxed);
            if ring_offset != layout.ring_pair_offset(i) {
                return Err(HeaderError::Peer {
                    index: i,
                    field: "ring_offset",
                    value: ring_offset,
                    expected: layout.ring_pair_offset(i),
                });
            }
            for (field, ring) in [
                ("G2H ring capacity", seg.g2h_ring(i)),
                ("H2G ring capacity", seg.h2g_ring(i)),
            ] {
                let cap = ring
                    .expect("index below max_guests")
                    .cursors()
                    .capacity_field;
                if cap != layout.ring_capacity {
                    return Err(HeaderError::Peer {
                        index: i,
                        field,
                        value: cap as u64,
                        expected: layout.ring_capacity as u64,
                    });
                }
            }
        }
        Ok(seg)
    }

    /// Opens a segment whose header the caller trusts: the layout is taken
    /// from the header and the class headers as written, with no check
    /// against a mapping length. For a party inside memory it owns (a
    /// guest in its window, which a misbehaving host could only make trap).
    ///
    /// # Safety
    ///
    /// `base` must point at an initialized segment of this format, 64-byte
    /// aligned, valid for reads and writes of its `total_size` bytes for as
    /// long as the returned value is used.
    pub unsafe fn open_trusting(base: *mut u8) -> Result<Self, HeaderError> {
        // SAFETY: the caller vouches for a valid header.
        let snap = unsafe { &*(base as *const SegmentHeader) }.snapshot();
        snap.check(snap.total_size)?;
        let mut classes = [SizeClass {
            slot_size: 0,
            slot_count: 0,
        }; crate::layout::MAX_SIZE_CLASSES];
        for (i, class) in classes
            .iter_mut()
            .enumerate()
            .take(snap.num_var_slot_classes as usize)
        {
            let off = snap.var_pool_offset + i as u64 * CLASS_HEADER_SIZE;
            // SAFETY: the caller vouches for the pool's class headers.
            let h = unsafe { &*(base.add(off as usize) as *const SizeClassHeader) };
            *class = SizeClass {
                slot_size: h.slot_size.load(Ordering::Relaxed),
                slot_count: h.slot_count.load(Ordering::Relaxed),
            };
        }
        let n = snap.num_var_slot_classes as usize;
        let layout = SegmentLayout::canonical(snap.max_guests, snap.bipbuf_capacity, &classes[..n])
            .map_err(|_| HeaderError::Field {
                field: "size classes",
                value: n as u64,
                rule: "the pool size overflows 64-bit offsets",
            })?
            .with_header_values(
                snap.inline_threshold,
                snap.max_payload_size,
                snap.heartbeat_interval,
                snap.features,
            );
        Ok(Segment {
            base,
            len: snap.total_size as usize,
            layout,
        })
    }

    /// The layout this view uses (never re-read).
    pub fn layout(&self) -> &SegmentLayout {
        &self.layout
    }

    /// Base address.
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    /// Mapped length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a segment holds at least its header.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The header.
    pub fn header(&self) -> &SegmentHeader {
        // SAFETY: `len >= total_size >= 128`, aligned (constructors).
        unsafe { &*(self.base as *const SegmentHeader) }
    }

    /// Guest `index`'s (0-based) peer entry.
    pub fn peer(&self, index: u32) -> Option<&PeerEntry> {
        (index < self.layout.max_guests).then(|| {
            // SAFETY: the entry lies inside the layout, inside the mapping.
            unsafe {
                &*(self.base.add(self.layout.peer_entry_offset(index) as usize) as *const PeerEntry)
            }
        })
    }

    fn ring_at(&self, offset: u64) -> RingRef {
        // SAFETY: ring offsets come from our layout, inside the mapping,
        // and are 64-aligned.
        unsafe { RingRef::new(self.base.add(offset as usize), self.layout.ring_capacity) }
    }

    /// Guest `index`'s guest-to-host ring.
    pub fn g2h_ring(&self, index: u32) -> Option<RingRef> {
        (index < self.layout.max_guests).then(|| self.ring_at(self.layout.g2h_ring_offset(index)))
    }

    /// Guest `index`'s host-to-guest ring.
    pub fn h2g_ring(&self, index: u32) -> Option<RingRef> {
        (index < self.layout.max_guests).then(|| self.ring_at(self.layout.h2g_ring_offset(index)))
    }

    /// The slot pool.
    pub fn pool(&self) -> SlotPool {
        // SAFETY: the layout lies inside the mapping (constructors).
        unsafe { SlotPool::new(self.base, &self.layout) }
    }

    /// The host's ends for guest `index`: a sender on H2G, a receiver on
    /// G2H. Slots are allocated as peer 0.
    pub fn host_channel(&self, index: u32) -> Result<(Sender, Receiver), ProtocolError> {
        let (h2g, g2h) = self.rings(index);
        let tx = Sender::new(Producer::new(h2g)?, self.pool(), 0, &self.layout);
        let rx = Receiver::new(Consumer::new(g2h)?, self.pool());
        Ok((tx, rx))
    }

    /// Guest `index`'s ends: a sender on G2H, a receiver on H2G. Slots are
    /// allocated as peer `index + 1`.
    pub fn guest_channel(&self, index: u32) -> Result<(Sender, Receiver), ProtocolError> {
        let (h2g, g2h) = self.rings(index);
        let tx = Sender::new(
            Producer::new(g2h)?,
            self.pool(),
            (index + 1) as u8,
            &self.layout,
        );
        let rx = Receiver::new(Consumer::new(h2g)?, self.pool());
        Ok((tx, rx))
    }

    fn rings(&self, index: u32) -> (RingRef, RingRef) {
        assert!(
            index < self.layout.max_guests,
            "guest index {index} out of range"
        );
        (
            self.h2g_ring(index).expect("checked"),
            self.g2h_ring(index).expect("checked"),
        )
    }

    /// Recovers guest `index`'s resources after it is gone, in the order
    /// of the format: mark Goodbye; free the slots named by frames still
    /// queued host-to-guest; reset both rings; free the slots the guest
    /// owned; mark Empty. Reads of guest-written bytes are validated; a
    /// bad frame ends the scan and is reported.
    pub fn recover_guest(&self, index: u32) -> Recovery {
        let mut report = Recovery::default();
        let Some(entry) = self.peer(index) else {
            return report;
        };
        entry.set_goodbye();
        let (h2g, g2h) = self.rings(index);
        let pool = self.pool();
        match Consumer::new(h2g) {
            Ok(mut consumer) => {
                // Each frame is at least 8 bytes, so this bounds the scan.
                for _ in 0..=self.layout.ring_capacity / 8 {
                    match consumer.peek_frame() {
                        Ok(None) => break,
                        Ok(Some(f)) => {
                            if let Frame::SlotRef(r) = f.frame
                                && pool.free(r).is_ok()
                            {
                                report.queued_slots_freed += 1;
                            }
                            consumer.release(f.total_len);
                        }
                        Err(e) => {
                            report.scan_error = Some(e);
                            break;
                        }
                    }
                }
            }
            Err(e) => report.scan_error = Some(e),
        }
        h2g.reset();
        g2h.reset();
        match pool.reclaim_owned_by((index + 1) as u8) {
            Ok(n) => report.owned_slots_freed = n,
            Err(e) => report.scan_error = report.scan_error.or(Some(e.into())),
        }
        entry.reset();
        report
    }
}
