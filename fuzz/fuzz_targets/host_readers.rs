//! The host-side ring, frame and slot readers against a guest that
//! scribbles: a valid segment with traffic in flight, then the fuzz input
//! applied as (offset, word) writes over the rings and the pool, then the
//! host receives, allocates, sends and recovers with its own layout.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmrt_primitives::Segment;
use shmrt_primitives::heap_region::HeapRegion;
use shmrt_primitives::layout::{SegmentConfig, SegmentLayout, SizeClass, SizeClasses};

fuzz_target!(|data: &[u8]| {
    let config = SegmentConfig {
        max_guests: 1,
        ring_capacity: 512,
        max_payload_size: 4096,
        inline_threshold: 64,
        heartbeat_interval_ns: 0,
        size_classes: SizeClasses::new(&[
            SizeClass {
                slot_size: 132,
                slot_count: 4,
            },
            SizeClass {
                slot_size: 1028,
                slot_count: 2,
            },
        ])
        .unwrap(),
        features: 1,
    };
    let layout = SegmentLayout::compute(&config).unwrap();
    let mut region = HeapRegion::zeroed(layout.total_size as usize);
    // SAFETY: a fresh region of the layout's size.
    let seg = unsafe { Segment::create(region.as_mut_ptr(), region.len(), &config) }.unwrap();
    let (mut gtx, _) = seg.guest_channel(0).unwrap();
    for len in [5usize, 60, 100, 900, 20] {
        let _ = gtx.send(&vec![3; len]);
    }
    let start = layout.g2h_ring_offset(0) as usize;
    let span = layout.total_size as usize - start;
    for w in data.chunks_exact(6) {
        let at = start + (u16::from_le_bytes([w[0], w[1]]) as usize * 4) % (span - 4);
        region.bytes_mut()[at..at + 4].copy_from_slice(&w[2..6]);
    }
    let (mut tx, mut rx) = match seg.host_channel(0) {
        Ok(c) => c,
        Err(_) => return,
    };
    for _ in 0..32 {
        match rx.try_recv() {
            Ok(Some(m)) => {
                std::hint::black_box(m.bytes().byte(m.len().wrapping_sub(1)));
            }
            _ => break,
        }
    }
    for len in [0usize, 40, 120, 1000] {
        let _ = tx.send(&vec![1; len]);
    }
    let pool = seg.pool();
    if let Ok(r) = pool.allocate(100, 0) {
        let _ = pool.free(r);
    }
    let _ = seg.recover_guest(0);
});
