//! A whole segment in memory: creation, the two ways of opening it, views
//! of its parts, the ends of each guest's channels, and recovery.

use core::sync::atomic::Ordering;

use crate::channel::{Receiver, Sender};
use crate::error::{LayoutError, ProtocolError};
use crate::frame::Frame;
use crate::layout::{
    CLASS_HEADER_SIZE, SLOT_ALIGN, SLOT_LEN_PREFIX, SegmentConfig, SegmentLayout, SizeClass,
    SizeClasses,
};
use crate::peer_entry::{PeerEntry, PeerId};
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
// SAFETY: `&Segment` gives only what `Segment` gives: its fields are
// never written after construction, and the memory behind `base` is
// reached through atomics or raw-pointer copies (see `Send` just above).
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

/// A class header whose slot size would misalign the slots' length
/// prefixes (see [`SLOT_ALIGN`]).
fn misaligned_slot_size(index: u32, slot_size: u32) -> HeaderError {
    HeaderError::Class {
        index,
        field: "slot_size",
        value: slot_size as u64,
        rule: "must be a multiple of 4, so that the u32 length prefix of every slot is aligned",
    }
}

/// The first `count` (at most [`crate::layout::MAX_SIZE_CLASSES`]) size
/// class headers at `var_pool_offset`, as written; the rest of the array
/// is zero. Relaxed loads: the header's magic published them (SYNC POINT
/// "magic"), and a reader that does not trust them validates the copy.
///
/// # Safety
///
/// `base + var_pool_offset` must be 64-byte aligned and valid for reads of
/// `count` class headers of 64 bytes each.
unsafe fn read_class_headers(
    base: *mut u8,
    var_pool_offset: u64,
    count: u32,
) -> [SizeClass; crate::layout::MAX_SIZE_CLASSES] {
    let mut classes = [SizeClass {
        slot_size: 0,
        slot_count: 0,
    }; crate::layout::MAX_SIZE_CLASSES];
    for (i, class) in classes.iter_mut().enumerate().take(count as usize) {
        let off = var_pool_offset + i as u64 * CLASS_HEADER_SIZE;
        // SAFETY: header `i < count` is within the readable, aligned range
        // the caller vouches for (this function's contract).
        let h = unsafe { &*(base.add(off as usize) as *const SizeClassHeader) };
        *class = SizeClass {
            slot_size: h.slot_size.load(Ordering::Relaxed),
            slot_count: h.slot_count.load(Ordering::Relaxed),
        };
    }
    classes
}

impl core::fmt::Debug for Segment {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Segment")
            .field("base", &self.base)
            .field("len", &self.len)
            .field("layout", &self.layout)
            .finish()
    }
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
        // SAFETY: `from_layout` asks what our caller promised (this
        // function's `# Safety`): `base` 64-aligned and valid for `len`
        // bytes; its own length check runs before any access.
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
        debug_assert!((base as usize).is_multiple_of(64));
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
        // SAFETY: the headers end at `headers_end`, checked above to be
        // within the `len` mapped bytes the caller vouches for; the pool
        // offset is the canonical one (checked above), a multiple of 64.
        let classes =
            unsafe { read_class_headers(base, snap.var_pool_offset, snap.num_var_slot_classes) };
        for (
            i,
            &SizeClass {
                slot_size,
                slot_count,
            },
        ) in classes
            .iter()
            .enumerate()
            .take(snap.num_var_slot_classes as usize)
        {
            if slot_size <= SLOT_LEN_PREFIX {
                return Err(HeaderError::Class {
                    index: i as u32,
                    field: "slot_size",
                    value: slot_size as u64,
                    rule: "must be larger than the 4-byte length prefix",
                });
            }
            if !slot_size.is_multiple_of(SLOT_ALIGN) {
                return Err(misaligned_slot_size(i as u32, slot_size));
            }
            if slot_count == 0 || slot_count == u32::MAX {
                return Err(HeaderError::Class {
                    index: i as u32,
                    field: "slot_count",
                    value: slot_count as u64,
                    rule: "must be 1..u32::MAX",
                });
            }
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
        // SAFETY: the caller vouches for an initialized segment at `base`,
        // class headers included (this function's contract).
        let classes =
            unsafe { read_class_headers(base, snap.var_pool_offset, snap.num_var_slot_classes) };
        let n = (snap.num_var_slot_classes as usize).min(classes.len());
        let layout = SegmentLayout::canonical(snap.max_guests, snap.bipbuf_capacity, &classes[..n])
            .map_err(|e| match e {
                LayoutError::SlotSizeAlignment { index, slot_size } => {
                    misaligned_slot_size(index, slot_size)
                }
                _ => HeaderError::Field {
                    field: "size classes",
                    value: n as u64,
                    rule: "the pool size overflows 64-bit offsets",
                },
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

    /// [`Self::host_channel`] of a segment its caller has just laid out
    /// (or mapped from a freshly laid-out template), before anyone used
    /// its rings: the cursors are taken as zero, not read, so that no page
    /// of the segment is touched until the first message.
    pub fn fresh_host_channel(&self, index: u32) -> (Sender, Receiver) {
        let (h2g, g2h) = self.rings(index);
        let tx = Sender::new(Producer::fresh(h2g), self.pool(), 0, &self.layout);
        let rx = Receiver::new(Consumer::fresh(g2h), self.pool());
        (tx, rx)
    }

    /// Guest `index`'s ends: a sender on G2H, a receiver on H2G. Slots are
    /// allocated as the guest's [`PeerId`].
    pub fn guest_channel(&self, index: u32) -> Result<(Sender, Receiver), ProtocolError> {
        let (h2g, g2h) = self.rings(index);
        let id = PeerId::from_index(index).expect("a guest index is below 255");
        let tx = Sender::new(
            Producer::new(g2h)?,
            self.pool(),
            id.owner_byte(),
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
        let id = PeerId::from_index(index).expect("a guest index is below 255");
        match pool.reclaim_owned_by(id.owner_byte()) {
            Ok(n) => report.owned_slots_freed = n,
            Err(e) => report.scan_error = report.scan_error.or(Some(e.into())),
        }
        entry.reset();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::Location;
    use crate::frame::SlotRef;
    use crate::heap_region::HeapRegion;
    use crate::layout::SizeClasses;
    use crate::segment_header::MAGIC;
    use std::vec::Vec;

    fn config() -> SegmentConfig {
        SegmentConfig {
            max_guests: 2,
            ring_capacity: 4096,
            max_payload_size: 1 << 16,
            inline_threshold: 0,
            heartbeat_interval_ns: 0,
            size_classes: SizeClasses::new(&[
                SizeClass {
                    slot_size: 1024,
                    slot_count: 4,
                },
                SizeClass {
                    slot_size: 16384,
                    slot_count: 2,
                },
            ])
            .unwrap(),
            features: crate::segment_header::FEATURE_DOORBELLS,
        }
    }

    fn create() -> (HeapRegion, Segment) {
        let layout = SegmentLayout::compute(&config()).unwrap();
        let region = HeapRegion::zeroed(layout.total_size as usize);
        // SAFETY: fresh region of the right size.
        let seg = unsafe { Segment::create(region.as_mut_ptr(), region.len(), &config()) }.unwrap();
        (region, seg)
    }

    fn reopen(region: &HeapRegion) -> Result<Segment, HeaderError> {
        // SAFETY: the region outlives the view in each test.
        unsafe { Segment::open_validated(region.as_mut_ptr(), region.len()) }
    }

    #[test]
    fn validated_and_trusting_opens_agree_with_the_creator() {
        let (region, seg) = create();
        let opened = reopen(&region).unwrap();
        assert_eq!(opened.layout(), seg.layout());
        // SAFETY: the region holds a segment we created.
        let trusted = unsafe { Segment::open_trusting(region.as_mut_ptr()) }.unwrap();
        assert_eq!(trusted.layout(), seg.layout());
        assert_eq!(seg.header().snapshot().magic, MAGIC);
    }

    fn corrupt(at: usize, bytes: &[u8]) -> HeaderError {
        let (mut region, _seg) = create();
        region.bytes_mut()[at..at + bytes.len()].copy_from_slice(bytes);
        match reopen(&region) {
            Ok(_) => panic!("corruption at {at} was accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn each_header_field_is_checked() {
        assert_eq!(corrupt(0, &[0; 8]), HeaderError::NotInitialized);
        assert!(matches!(
            corrupt(0, b"TELXHUB\x06"),
            HeaderError::BadMagic { .. }
        ));
        assert_eq!(
            corrupt(8, &8u32.to_le_bytes()),
            HeaderError::Version { found: 8 }
        );
        assert!(matches!(
            corrupt(12, &64u32.to_le_bytes()),
            HeaderError::Field {
                field: "header_size",
                ..
            }
        ));
        assert!(matches!(
            corrupt(16, &u64::MAX.to_le_bytes()),
            HeaderError::Truncated {
                field: "total_size",
                ..
            }
        ));
        assert!(matches!(
            corrupt(32, &0u32.to_le_bytes()),
            HeaderError::Field {
                field: "max_guests",
                ..
            }
        ));
        assert!(matches!(
            corrupt(32, &3u32.to_le_bytes()),
            HeaderError::Layout {
                field: "var_pool_offset",
                ..
            }
        ));
        assert!(matches!(
            corrupt(40, &256u64.to_le_bytes()),
            HeaderError::Layout {
                field: "peer_table_offset",
                ..
            }
        ));
        assert!(matches!(
            corrupt(48, &64u64.to_le_bytes()),
            HeaderError::Layout {
                field: "var_pool_offset",
                ..
            }
        ));
        assert!(matches!(
            corrupt(68, &0u32.to_le_bytes()),
            HeaderError::Field {
                field: "num_var_slot_classes",
                ..
            }
        ));
        assert!(matches!(
            corrupt(68, &17u32.to_le_bytes()),
            HeaderError::Field {
                field: "num_var_slot_classes",
                ..
            }
        ));
        assert!(matches!(
            corrupt(80, &0x80u32.to_le_bytes()),
            HeaderError::Field {
                field: "features",
                ..
            }
        ));
    }

    #[test]
    fn peers_rings_and_classes_are_checked() {
        let (_r, seg) = create();
        let l = *seg.layout();
        let peer1 = l.peer_entry_offset(1) as usize + 16;
        assert_eq!(
            corrupt(peer1, &8u64.to_le_bytes()),
            HeaderError::Peer {
                index: 1,
                field: "ring_offset",
                value: 8,
                expected: l.ring_pair_offset(1)
            }
        );
        let cap = l.h2g_ring_offset(0) as usize + 8;
        assert!(matches!(
            corrupt(cap, &1u32.to_le_bytes()),
            HeaderError::Peer {
                index: 0,
                field: "H2G ring capacity",
                ..
            }
        ));
        let class1 = l.classes()[1].header_offset as usize;
        assert!(matches!(
            corrupt(class1, &4u32.to_le_bytes()),
            HeaderError::Class {
                index: 1,
                field: "slot_size",
                ..
            }
        ));
        // A bigger class means a bigger pool than the header's total_size.
        assert!(matches!(
            corrupt(class1 + 4, &3u32.to_le_bytes()),
            HeaderError::Truncated { .. }
                | HeaderError::Layout {
                    field: "total_size",
                    ..
                }
        ));
    }

    #[test]
    fn a_foreign_header_with_a_misaligned_slot_size_is_refused() {
        let (_r, seg) = create();
        let class1 = seg.layout().classes()[1].header_offset as usize;
        let want = HeaderError::Class {
            index: 1,
            field: "slot_size",
            value: 301,
            rule: "must be a multiple of 4, so that the u32 length prefix of every slot is aligned",
        };
        assert_eq!(corrupt(class1, &301u32.to_le_bytes()), want);
        assert!(std::string::ToString::to_string(&want).contains("size class 1: slot_size = 301"));
        // The trusting open (a guest in its window) refuses it too rather
        // than trap later on a misaligned atomic.
        let (mut region, _seg) = create();
        region.bytes_mut()[class1..class1 + 4].copy_from_slice(&301u32.to_le_bytes());
        // SAFETY: the region holds a segment we created, but for one word.
        let err = unsafe { Segment::open_trusting(region.as_mut_ptr()) }.err();
        assert_eq!(err, Some(want));
    }

    #[test]
    fn a_truncated_mapping_is_refused() {
        let (region, seg) = create();
        let short = seg.layout().total_size as usize - 1;
        // SAFETY: a prefix of a live region.
        let err = unsafe { Segment::open_validated(region.as_mut_ptr(), short) }
            .err()
            .unwrap();
        assert!(matches!(err, HeaderError::Truncated { .. }));
        // SAFETY: a 100-byte prefix of the live region from `create()`.
        let err = unsafe { Segment::open_validated(region.as_mut_ptr(), 100) }
            .err()
            .unwrap();
        assert_eq!(err, HeaderError::TooShort { len: 100 });
    }

    fn roundtrip(tx: &mut Sender, rx: &mut Receiver, payload: &[u8]) -> Location {
        tx.send(payload).unwrap();
        let msg = rx.try_recv().unwrap().expect("a message");
        assert_eq!(
            msg.bytes().to_vec(),
            payload,
            "payload of {} bytes",
            payload.len()
        );
        msg.location()
    }

    #[test]
    fn messages_go_inline_or_in_slots_by_size() {
        let (_r, seg) = create();
        let (mut htx, mut hrx) = seg.host_channel(0).unwrap();
        let (mut gtx, mut grx) = seg.guest_channel(0).unwrap();
        let max_slot = 16384 - 4;
        for len in [0usize, 1, 3, 247, 248, 249, 1019, 1020, 1021, max_slot] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let inline = len <= 248;
            let loc = roundtrip(&mut htx, &mut grx, &payload);
            assert_eq!(matches!(loc, Location::Inline { .. }), inline, "H2G {len}");
            let loc = roundtrip(&mut gtx, &mut hrx, &payload);
            assert_eq!(matches!(loc, Location::Inline { .. }), inline, "G2H {len}");
            if len == 1021 {
                assert!(matches!(loc, Location::Slot(SlotRef { class_idx: 1, .. })));
            }
        }
        assert_eq!(
            htx.send(&std::vec![0; max_slot + 1]),
            Err(crate::SendError::TooLarge {
                len: max_slot + 1,
                max: max_slot as u32
            })
        );
        for c in 0..2 {
            let u = seg.pool().usage(c).unwrap();
            assert_eq!(u.allocated, 0, "every slot came back");
            assert_eq!(u.free_list, Ok(u.slot_count));
        }
    }

    #[test]
    fn a_full_ring_or_pool_is_reported_and_nothing_is_lost() {
        let (_r, seg) = create();
        let (mut tx, _) = seg.host_channel(1).unwrap();
        let (_, mut rx) = seg.guest_channel(1).unwrap();
        let mut sent = 0u32;
        loop {
            match tx.send(&sent.to_le_bytes()) {
                Ok(()) => sent += 1,
                Err(crate::SendError::Full) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(sent, 4096 / 12, "12-byte frames fill the ring");
        for want in 0..sent {
            let m = rx.try_recv().unwrap().unwrap();
            assert_eq!(m.bytes().u32_le(0), Some(want));
        }
        assert!(rx.try_recv().unwrap().is_none());
        // A sender takes half of each class: 2 of 4, then 1 of 2.
        let big = std::vec![9u8; 1000];
        for _ in 0..3 {
            tx.send(&big).unwrap();
        }
        assert_eq!(tx.send(&big), Err(crate::SendError::Exhausted));
        drop(rx.try_recv().unwrap().unwrap());
        tx.send(&big).unwrap();
    }

    /// `could_send` and `reserve` apply one rule: a host waiting until
    /// `could_send` says yes must then be able to reserve, or its wait
    /// spins (free slots beyond its fair share once said yes).
    #[test]
    fn could_send_says_yes_exactly_when_reserve_succeeds() {
        let (_r, seg) = create();
        let (mut tx, _) = seg.host_channel(0).unwrap();
        let (_, mut rx) = seg.guest_channel(0).unwrap();
        let (mut gtx, _) = seg.guest_channel(0).unwrap();
        // The guest holds one slot of each class: the host's share is
        // counted on its own slots only.
        gtx.send(&[5; 1000]).unwrap();
        gtx.send(&[6; 5000]).unwrap();
        let mut sent = 0;
        for len in [1000usize, 5000, 1000, 5000, 1000, 10, 5000, 1000] {
            let could = tx.could_send(len).unwrap();
            let did = tx.send(&std::vec![1; len]);
            assert_eq!(could, did.is_ok(), "message {sent} of {len} bytes: {did:?}");
            sent += did.is_ok() as u32;
        }
        assert!(
            !tx.could_send(1000).unwrap(),
            "both classes at the host's share"
        );
        assert_eq!(
            seg.pool().usage(0).unwrap().free,
            1,
            "a free slot beyond the share"
        );
        drop(rx.try_recv().unwrap().unwrap());
        assert!(tx.could_send(1000).unwrap());
        tx.send(&[2; 1000]).unwrap();
    }

    #[test]
    fn recovery_frees_queued_and_owned_slots_and_empties_the_entry() {
        let (_r, seg) = create();
        let entry = seg.peer(0).unwrap();
        entry.try_reserve().unwrap();
        entry.try_claim_reserved().unwrap();
        let (mut htx, _hrx) = seg.host_channel(0).unwrap();
        let (mut gtx, _grx) = seg.guest_channel(0).unwrap();
        htx.send(&[1; 2000]).unwrap();
        htx.send(&[2; 10]).unwrap();
        gtx.send(&[3; 900]).unwrap();
        gtx.send(&[4; 900]).unwrap();
        let report = seg.recover_guest(0);
        assert_eq!(
            report,
            Recovery {
                queued_slots_freed: 1,
                owned_slots_freed: 2,
                scan_error: None
            }
        );
        assert_eq!(entry.state(), Some(crate::PeerState::Empty));
        for c in 0..2 {
            assert_eq!(seg.pool().usage(c).unwrap().allocated, 0);
        }
        assert_eq!(seg.h2g_ring(0).unwrap().cursors().write, 0);
    }

    #[test]
    fn recovery_survives_a_scribbled_ring() {
        let (mut region, seg) = create();
        let (mut htx, _hrx) = seg.host_channel(0).unwrap();
        htx.send(&[1; 2000]).unwrap();
        let frame_at = seg.layout().h2g_ring_offset(0) as usize + 128;
        region.bytes_mut()[frame_at..frame_at + 4].copy_from_slice(&7u32.to_le_bytes());
        let report = seg.recover_guest(0);
        assert!(matches!(report.scan_error, Some(ProtocolError::Frame(_))));
        assert_eq!(seg.peer(0).unwrap().state(), Some(crate::PeerState::Empty));
    }

    #[test]
    fn a_truncated_reservation_sends_only_what_was_filled() {
        let (_r, seg) = create();
        let (mut tx, _) = seg.host_channel(0).unwrap();
        let (_, mut rx) = seg.guest_channel(0).unwrap();
        // Inline, then in a slot: each keeps where it was reserved.
        for (reserved, filled) in [(40usize, 3usize), (5000, 10)] {
            let mut r = tx.reserve(reserved).unwrap();
            let slot = r.is_slot();
            r.bytes_mut().get_mut(..filled).unwrap().fill(7);
            r.truncate(filled);
            r.commit();
            let m = rx.try_recv().unwrap().unwrap();
            assert_eq!(m.bytes().to_vec(), std::vec![7u8; filled]);
            assert_eq!(
                matches!(m.location(), crate::channel::Location::Slot(_)),
                slot
            );
        }
        assert!(rx.try_recv().unwrap().is_none());
    }
}
