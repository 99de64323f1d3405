//! The validated readers on arbitrary bytes: whatever a guest writes into
//! its window, the host-side readers return values or typed errors and
//! never panic, hang or reach outside the segment.

use proptest::prelude::*;
use shmrt_primitives::Segment;
use shmrt_primitives::frame;
use shmrt_primitives::heap_region::HeapRegion;
use shmrt_primitives::layout::{SegmentConfig, SegmentLayout, SizeClass, SizeClasses};

fn config() -> SegmentConfig {
    SegmentConfig {
        max_guests: 2,
        ring_capacity: 256,
        max_payload_size: 4096,
        inline_threshold: 64,
        heartbeat_interval_ns: 0,
        size_classes: SizeClasses::new(&[
            SizeClass {
                slot_size: 128,
                slot_count: 4,
            },
            SizeClass {
                slot_size: 512,
                slot_count: 2,
            },
        ])
        .unwrap(),
        features: shmrt_primitives::segment_header::FEATURE_DOORBELLS,
    }
}

/// What a host does with a guest's segment: receive everything, send a
/// little, allocate and free, count usage, recover. Bounded loops only.
fn host_workload(seg: &Segment) {
    for g in 0..seg.layout().max_guests {
        if let Ok((mut tx, mut rx)) = seg.host_channel(g) {
            for _ in 0..64 {
                match rx.try_recv() {
                    Ok(Some(m)) => {
                        let _ = m.bytes().iter().fold(0u8, |a, b| a ^ b);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            for len in [0usize, 10, 100, 300] {
                // Any outcome but a panic is acceptable here.
                let _ = tx.send(&vec![1; len]);
            }
        }
        let pool = seg.pool();
        for c in 0..pool.class_count() {
            let _ = pool.usage(c);
        }
        if let Ok(r) = pool.allocate(50, 0) {
            let _ = pool.free(r);
        }
        let _ = seg.recover_guest(g);
    }
}

fn segment() -> (HeapRegion, Segment) {
    let layout = SegmentLayout::compute(&config()).unwrap();
    let region = HeapRegion::zeroed(layout.total_size as usize);
    // SAFETY: fresh region of the right size.
    let seg = unsafe { Segment::create(region.as_mut_ptr(), region.len(), &config()) }.unwrap();
    (region, seg)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1024,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    /// A guest scribbles anywhere; the host keeps its own layout.
    #[test]
    fn scribbled_segment_with_the_hosts_own_layout(writes in prop::collection::vec((any::<u32>(), any::<u8>()), 1..64)) {
        let (mut region, seg) = segment();
        // Put some traffic in flight first.
        let (mut gtx, _) = seg.guest_channel(0).unwrap();
        for len in [3usize, 60, 100, 400] {
            let _ = gtx.send(&vec![7; len]);
        }
        let len = region.len();
        for (at, b) in writes {
            region.bytes_mut()[at as usize % len] = b;
        }
        host_workload(&seg);
    }

    /// The same, aimed at the rings and pool metadata where it hurts most.
    #[test]
    fn scribbled_words_in_rings_and_metas(writes in prop::collection::vec((0usize..4, any::<u32>(), any::<u32>()), 1..16)) {
        let (mut region, seg) = segment();
        let (mut gtx, _) = seg.guest_channel(1).unwrap();
        for len in [3usize, 60, 100, 400, 12] {
            let _ = gtx.send(&vec![7; len]);
        }
        let l = *seg.layout();
        let targets = [
            (l.g2h_ring_offset(1), 192u64),
            (l.h2g_ring_offset(1), 192),
            (l.classes()[0].header_offset, 64),
            (l.classes()[0].meta_offset, 64),
        ];
        for (t, at, w) in writes {
            let (base, span) = targets[t];
            let off = (base + (at as u64 % span) / 4 * 4) as usize;
            region.bytes_mut()[off..off + 4].copy_from_slice(&w.to_le_bytes());
        }
        host_workload(&seg);
    }

    /// An attacher that reads the header: arbitrary bytes never panic.
    #[test]
    fn arbitrary_bytes_opened_validated(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let mut region = HeapRegion::zeroed(bytes.len().max(1));
        region.bytes_mut()[..bytes.len()].copy_from_slice(&bytes);
        // SAFETY: the region is live for the call.
        if let Ok(seg) = unsafe { Segment::open_validated(region.as_mut_ptr(), bytes.len()) } {
            host_workload(&seg);
        }
    }

    /// A valid segment with a few header bytes changed: refused with an
    /// error or opened and usable, never a panic.
    #[test]
    fn mutated_headers_opened_validated(writes in prop::collection::vec((0usize..1024, any::<u8>()), 1..8)) {
        let (mut region, _seg) = segment();
        for (at, b) in writes {
            region.bytes_mut()[at] = b;
        }
        // SAFETY: the region is live for the call.
        if let Ok(seg) = unsafe { Segment::open_validated(region.as_mut_ptr(), region.len()) } {
            host_workload(&seg);
        }
    }

    /// The frame parser on arbitrary words.
    #[test]
    fn frames_from_arbitrary_words(words in prop::collection::vec(any::<u32>(), 0..16), offset in 0u32..1024) {
        let avail = (words.len() * 4) as u32;
        if let Ok(f) = frame::parse(offset, avail, |i| words[i as usize]) {
            prop_assert!(f.total_len <= avail && f.total_len >= 8 && f.total_len % 4 == 0);
            if let frame::Frame::Inline { offset: o, len } = f.frame {
                prop_assert!(o - offset + len <= f.total_len);
            }
        }
    }
}
