//! Byte-level compatibility with shm-primitives 0.3.1, the reference crate,
//! laid out the way vox-shm 0.3.1 lays out a segment (vox-shm itself does
//! not build today; its layout and framing rules are restated here from its
//! source: src/segment.rs, src/peer_table.rs, src/framing.rs, src/lib.rs).
//!
//! Every test has one side be theirs and the other ours, on the same bytes.

use shm_primitives as theirs;

#[path = "support/vox_restated.rs"]
mod vox_restated;
use shmrt_primitives::channel::Location;
use shmrt_primitives::heap_region::HeapRegion;
use shmrt_primitives::layout::{SegmentConfig, SegmentLayout, SizeClass, SizeClasses};
use shmrt_primitives::{PeerState, Segment, SlotRef};
use vox_restated::{VoxFrame, VoxLayout, vox_read_frame, vox_write_inline, vox_write_slot_ref};

const MAX_GUESTS: u8 = 3;
const CAPACITY: u32 = 4096;
const CLASSES: [(u32, u32); 3] = [(1024, 8), (16384, 4), (65540, 2)];

fn their_classes() -> Vec<theirs::SizeClassConfig> {
    CLASSES
        .iter()
        .map(|&(slot_size, slot_count)| theirs::SizeClassConfig {
            slot_size,
            slot_count,
        })
        .collect()
}

fn our_config() -> SegmentConfig {
    let classes: Vec<SizeClass> = CLASSES
        .iter()
        .map(|&(slot_size, slot_count)| SizeClass {
            slot_size,
            slot_count,
        })
        .collect();
    SegmentConfig {
        max_guests: MAX_GUESTS as u32,
        ring_capacity: CAPACITY,
        max_payload_size: 65536,
        inline_threshold: 0,
        heartbeat_interval_ns: 1_000_000,
        size_classes: SizeClasses::new(&classes).unwrap(),
        features: 0,
    }
}

fn stride() -> usize {
    (theirs::BIPBUF_HEADER_SIZE + CAPACITY as usize + 63) & !63
}

/// vox-shm's `Segment::create`, restated on shm-primitives' pieces.
struct TheirSegment {
    region: theirs::HeapRegion,
    var_pool_offset: usize,
    ring_base: usize,
    total_size: usize,
}

impl TheirSegment {
    fn create() -> Self {
        let l = VoxLayout::new(MAX_GUESTS as usize, CAPACITY, &their_classes());
        let region = theirs::HeapRegion::new_zeroed(l.total_size);
        // SAFETY: fresh zeroed region of total_size bytes, exclusively ours.
        unsafe { l.init(region.region(), &their_classes(), 1_000_000) };
        TheirSegment {
            region,
            var_pool_offset: l.var_pool_offset,
            ring_base: l.ring_base,
            total_size: l.total_size,
        }
    }

    fn ours(&self) -> Segment {
        // SAFETY: the region outlives every use in a test.
        unsafe { Segment::open_validated(self.region.region().as_ptr(), self.total_size) }
            .expect("ours opens theirs")
    }

    fn pool(&self) -> theirs::VarSlotPool {
        // SAFETY: initialized above with these classes.
        unsafe {
            theirs::VarSlotPool::attach(
                self.region.region(),
                self.var_pool_offset,
                &their_classes(),
            )
        }
    }

    fn g2h(&self, index: usize) -> theirs::BipBuf {
        // SAFETY: initialized above.
        unsafe {
            theirs::BipBuf::attach(self.region.region(), self.ring_base + index * 2 * stride())
        }
    }

    fn h2g(&self, index: usize) -> theirs::BipBuf {
        // SAFETY: initialized above.
        unsafe {
            theirs::BipBuf::attach(
                self.region.region(),
                self.ring_base + index * 2 * stride() + stride(),
            )
        }
    }
}

/// Our segment, with their views of it.
struct OurSegment {
    region: HeapRegion,
    seg: Segment,
}

impl OurSegment {
    fn create() -> Self {
        let layout = SegmentLayout::compute(&our_config()).unwrap();
        let region = HeapRegion::zeroed(layout.total_size as usize);
        // SAFETY: fresh region of the layout's size.
        let seg =
            unsafe { Segment::create(region.as_mut_ptr(), region.len(), &our_config()) }.unwrap();
        OurSegment { region, seg }
    }

    fn region(&self) -> theirs::Region {
        // SAFETY: our region outlives the test.
        unsafe { theirs::Region::from_raw(self.region.as_mut_ptr(), self.region.len()) }
    }

    fn their_pool(&self) -> theirs::VarSlotPool {
        let off = self.seg.layout().var_pool_offset as usize;
        // SAFETY: our pool, same classes.
        unsafe { theirs::VarSlotPool::attach(self.region(), off, &their_classes()) }
    }

    fn their_ring(&self, offset: u64) -> theirs::BipBuf {
        // SAFETY: our ring, initialized.
        unsafe { theirs::BipBuf::attach(self.region(), offset as usize) }
    }
}

fn payload(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ seed) as u8)
        .collect()
}

#[test]
fn their_layout_is_our_layout() {
    let t = TheirSegment::create();
    let ours = t.ours();
    let l = ours.layout();
    assert_eq!(l.total_size as usize, t.total_size);
    assert_eq!(l.var_pool_offset as usize, t.var_pool_offset);
    assert_eq!(l.ring_base as usize, t.ring_base);
    assert_eq!(l.ring_stride as usize, stride());
    let computed = SegmentLayout::compute(&our_config()).unwrap();
    assert_eq!(computed.total_size, l.total_size);
    assert_eq!(computed.classes(), l.classes());
    let h = ours.header().snapshot();
    let region = t.region.region();
    // SAFETY: initialized header.
    let th = unsafe { region.get::<theirs::SegmentHeader>(0) };
    assert_eq!(h.magic, th.magic);
    assert_eq!(h.version, th.version);
    assert_eq!(h.total_size, th.total_size);
    assert_eq!(h.heartbeat_interval, th.heartbeat_interval);
    assert_eq!(h.num_var_slot_classes, th.num_var_slot_classes);
    assert_eq!(l.inline_threshold(), th.effective_inline_threshold());
    assert_eq!(h.features, 0, "a vox segment has no doorbell flag");
}

#[test]
fn our_layout_is_their_layout() {
    let o = OurSegment::create();
    let r = o.region();
    // SAFETY: our header.
    let th = unsafe { r.get::<theirs::SegmentHeader>(0) };
    th.validate().expect("theirs accepts ours");
    assert_eq!(th.total_size, o.seg.layout().total_size);
    assert_eq!(th.var_pool_offset, o.seg.layout().var_pool_offset);
    assert_eq!(th.current_size(), th.total_size);
    assert!(!th.host_goodbye());
    o.seg.header().say_goodbye();
    assert!(th.host_goodbye());
    // SAFETY: our pool's class headers.
    let configs = unsafe {
        theirs::VarSlotPool::discover_configs(
            r,
            th.var_pool_offset as usize,
            th.num_var_slot_classes,
        )
    }
    .unwrap();
    assert_eq!(configs, their_classes());
    for i in 0..MAX_GUESTS {
        // SAFETY: our peer table.
        let e = unsafe { r.get::<theirs::PeerEntry>(128 + 64 * i as usize) };
        assert_eq!(e.ring_offset, o.seg.layout().ring_pair_offset(i as u32));
        assert_eq!(e.state(), theirs::PeerState::Empty);
        let ring = o.their_ring(o.seg.layout().h2g_ring_offset(i as u32));
        assert_eq!(ring.capacity(), CAPACITY);
    }
}

#[test]
fn peer_states_and_epochs_agree() {
    let o = OurSegment::create();
    // SAFETY: our peer table.
    let region = o.region();
    // SAFETY: our peer table.
    let e = unsafe { region.get::<theirs::PeerEntry>(128 + 64) };
    assert_eq!(e.try_reserve(), Ok(1), "they reserve guest 2");
    let ours = o.seg.peer(1).unwrap();
    assert_eq!(ours.state(), Some(PeerState::Reserved));
    ours.try_claim_reserved().unwrap();
    assert_eq!(e.state(), theirs::PeerState::Attached);
    ours.heartbeat(42);
    assert_eq!(e.last_heartbeat(), 42);
    e.set_goodbye();
    assert_eq!(ours.state(), Some(PeerState::Goodbye));
    ours.reset();
    assert_eq!(e.try_attach(), Ok(2));
    assert_eq!(ours.epoch(), 2);
}

/// Sizes around the inline threshold and every slot class boundary.
fn sizes() -> Vec<usize> {
    let mut s = vec![0, 1, 2, 3, 4, 5, 100, 247, 248, 249];
    for &(slot, _) in &CLASSES {
        let max = slot as usize - 4;
        s.extend([max - 1, max]);
    }
    s
}

#[test]
#[cfg_attr(
    miri,
    ignore = "shm-primitives 0.3.1 keeps a pointer made from `&mut SizeClassHeader` (VarSlotPool::attach); our CAS on the same free list invalidates it (Stacked and Tree Borrows)"
)]
fn their_producer_our_receiver_inline_and_slots_with_wraparound() {
    let t = TheirSegment::create();
    let ours = t.ours();
    let (_, mut rx) = ours.host_channel(1).unwrap();
    let g2h = t.g2h(1);
    let (mut p, _) = g2h.split();
    let pool = t.pool();
    // Several rounds of every size: the ring wraps many times.
    for round in 0..40 {
        for (k, &len) in sizes().iter().enumerate() {
            let data = payload(round * 100 + k, len);
            if len <= 248 {
                assert!(vox_write_inline(&mut p, &data));
            } else {
                let r = pool.allocate(len as u32 + 4, 2).expect("their allocation");
                // SAFETY: just allocated by them.
                let slot = unsafe { pool.slot_data_mut(&r) };
                slot[..4].copy_from_slice(&(len as u32).to_le_bytes());
                slot[4..4 + len].copy_from_slice(&data);
                assert!(vox_write_slot_ref(&mut p, &r));
            }
            let msg = rx.try_recv().expect("valid frame").expect("a message");
            assert_eq!(msg.len(), len);
            assert!(msg.bytes().to_vec() == data, "round {round} len {len}");
            assert_eq!(matches!(msg.location(), Location::Slot(_)), len > 248);
            // Dropping frees the slot on our side.
        }
    }
    let mut allocated = 0;
    for c in 0..CLASSES.len() {
        allocated += ours.pool().usage(c).unwrap().allocated;
    }
    assert_eq!(allocated, 0, "every slot they allocated, we freed");
}

#[test]
#[cfg_attr(
    miri,
    ignore = "shm-primitives 0.3.1 keeps a pointer made from `&mut SizeClassHeader` (VarSlotPool::attach); our CAS on the same free list invalidates it (Stacked and Tree Borrows)"
)]
fn our_sender_their_consumer_inline_and_slots_with_wraparound() {
    let o = OurSegment::create();
    let (mut tx, _) = o.seg.host_channel(2).unwrap();
    let h2g = o.their_ring(o.seg.layout().h2g_ring_offset(2));
    let (_, mut c) = h2g.split();
    let pool = o.their_pool();
    for round in 0..40 {
        for (k, &len) in sizes().iter().enumerate() {
            let data = payload(round * 100 + k, len);
            tx.send(&data).unwrap();
            match vox_read_frame(&mut c).expect("a frame") {
                VoxFrame::Inline(bytes) => {
                    assert!(len <= 248);
                    // vox passes padding through when the length is 0.
                    assert_eq!(&bytes[..len], data.as_slice());
                }
                VoxFrame::Slot(r) => {
                    assert!(len > 248);
                    // SAFETY: a slot we allocated and sent to them.
                    let slot = unsafe { pool.slot_data(&r) };
                    let n = u32::from_le_bytes(slot[..4].try_into().unwrap()) as usize;
                    assert_eq!(n, len);
                    assert!(slot[4..4 + n] == data[..]);
                    pool.free(r).expect("they free what we allocated");
                }
            }
        }
    }
    for c in 0..CLASSES.len() {
        let u = o.seg.pool().usage(c).unwrap();
        assert_eq!(u.allocated, 0);
        assert_eq!(
            u.free_list,
            Ok(u.slot_count),
            "their pushes left our free list intact"
        );
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "shm-primitives 0.3.1 keeps a pointer made from `&mut SizeClassHeader` (VarSlotPool::attach); our CAS on the same free list invalidates it (Stacked and Tree Borrows)"
)]
fn slots_allocated_by_one_freed_by_the_other_interleaved() {
    let o = OurSegment::create();
    let ours = o.seg.pool();
    let theirs_pool = o.their_pool();
    let mut held_ours: Vec<SlotRef> = Vec::new();
    let mut held_theirs: Vec<theirs::SlotRef> = Vec::new();
    for i in 0..200u32 {
        if i % 3 == 0 {
            let r = theirs_pool.allocate(100 + i, 1).unwrap();
            held_ours.push(SlotRef {
                class_idx: r.class_idx,
                extent_idx: r.extent_idx,
                slot_idx: r.slot_idx,
                generation: r.generation,
            });
        } else {
            let r = ours.allocate(90 + i, 0).unwrap();
            held_theirs.push(theirs::SlotRef {
                class_idx: r.class_idx,
                extent_idx: r.extent_idx,
                slot_idx: r.slot_idx,
                generation: r.generation,
            });
        }
        if held_ours.len() > 3 {
            ours.free(held_ours.remove(0)).unwrap();
        }
        if held_theirs.len() > 3 {
            theirs_pool.free(held_theirs.remove(0)).unwrap();
        }
    }
    for r in held_ours {
        ours.free(r).unwrap();
    }
    for r in held_theirs {
        theirs_pool.free(r).unwrap();
    }
    for c in 0..CLASSES.len() {
        let u = ours.usage(c).unwrap();
        assert_eq!((u.allocated, u.free_list), (0, Ok(u.slot_count)));
    }
}

#[test]
fn their_crash_recovery_and_ours_agree() {
    let t = TheirSegment::create();
    let ours = t.ours();
    let (mut tx, _) = ours.host_channel(0).unwrap();
    tx.send(&[7; 5000]).unwrap();
    let g = t.pool().allocate(600, 1).unwrap();
    let report = ours.recover_guest(0);
    assert_eq!(
        (report.queued_slots_freed, report.owned_slots_freed),
        (1, 1)
    );
    assert!(t.pool().free(g).is_err(), "the guest's slot was reclaimed");
    assert!(t.h2g(0).inner().is_empty());
}

#[test]
fn concurrent_threads_their_producer_our_consumer_and_back() {
    // Under Miri, still enough for the 4 KiB ring to wrap a few times.
    const N: u32 = if cfg!(miri) { 1_000 } else { 20_000 };
    let t = std::sync::Arc::new(TheirSegment::create());
    let ours = t.ours();
    let (mut tx, mut rx) = ours.host_channel(0).unwrap();
    let peer = t.clone();
    // Their side echoes, as a vox guest would: G2H is theirs to produce.
    let guest = std::thread::spawn(move || {
        let (h2g, g2h) = (peer.h2g(0), peer.g2h(0));
        let (_, mut c) = h2g.split();
        let (mut p, _) = g2h.split();
        let mut got = 0;
        while got < N {
            match vox_read_frame(&mut c) {
                Some(VoxFrame::Inline(bytes)) => {
                    while !vox_write_inline(&mut p, &bytes[..4]) {
                        std::hint::spin_loop();
                    }
                    got += 1;
                }
                Some(VoxFrame::Slot(_)) => panic!("only inline messages are sent"),
                None => std::hint::spin_loop(),
            }
        }
    });
    let (mut sent, mut received) = (0u32, 0u32);
    while received < N {
        if sent < N {
            match tx.send(&sent.to_le_bytes()) {
                Ok(()) => sent += 1,
                Err(shmrt_primitives::SendError::Full) => {}
                Err(e) => panic!("{e}"),
            }
        }
        if let Some(m) = rx.try_recv().unwrap() {
            assert_eq!(
                m.bytes().to_vec(),
                received.to_le_bytes(),
                "in order, none lost"
            );
            received += 1;
        }
    }
    guest.join().unwrap();
}
