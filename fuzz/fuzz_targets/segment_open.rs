//! Attach-time header validation: an `--attach` of a hostile or corrupt
//! file. Two kinds of input, chosen by the first byte:
//! - even: the bytes themselves are the file (the dictionary gets the
//!   fuzzer past the magic);
//! - odd: a valid segment our creator made from a small configuration the
//!   next bytes choose, with the rest of the input applied as byte patches
//!   (mostly over the header and peer table), and the file cut or kept at
//!   a length the input chooses: near-valid files that reach the checks
//!   past the first ones.
//!
//! If the bytes open, everything reachable from the validated layout is
//! exercised too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmrt_primitives::Segment;
use shmrt_primitives::heap_region::HeapRegion;
use shmrt_primitives::layout::{SegmentConfig, SegmentLayout, SizeClass, SizeClasses};

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 1 => near_valid(rest),
        _ => open_and_exercise(data),
    }
});

/// A valid small segment, then patched and possibly cut.
fn near_valid(data: &[u8]) {
    let Some((choice, patches)) = data.split_first_chunk::<4>() else {
        return;
    };
    let config = SegmentConfig {
        max_guests: 1 + (choice[0] % 3) as u32,
        ring_capacity: 64 << (choice[1] % 4),
        max_payload_size: 2048,
        inline_threshold: [0, 64, 128][(choice[2] % 3) as usize],
        heartbeat_interval_ns: 0,
        size_classes: SizeClasses::new(&[
            SizeClass {
                slot_size: 68,
                slot_count: 1 + (choice[3] % 4) as u32,
            },
            SizeClass {
                slot_size: 516,
                slot_count: 2,
            },
        ])
        .expect("valid classes"),
        features: (choice[2] >> 4) as u32 & 1,
    };
    let layout = SegmentLayout::compute(&config).expect("a valid configuration");
    let total = layout.total_size as usize;
    let mut region = HeapRegion::zeroed(total);
    // SAFETY: a fresh region of the layout's size, live for the call.
    if unsafe { Segment::create(region.as_mut_ptr(), total, &config) }.is_err() {
        return;
    }
    let mut len = total;
    for p in patches.chunks_exact(3) {
        let at = u16::from_le_bytes([p[0], p[1]]) as usize;
        match at >> 14 {
            // A cut: the file is shorter than its header says.
            3 => len = len.min(at & 0x3fff),
            // Most patches land in the header and peer table.
            0 | 1 => region.bytes_mut()[at % total.min(512)] = p[2],
            _ => region.bytes_mut()[at % total] = p[2],
        }
    }
    open_and_exercise(&region.bytes_mut()[..len]);
}

fn open_and_exercise(data: &[u8]) {
    let mut region = HeapRegion::zeroed(data.len().max(1));
    region.bytes_mut()[..data.len()].copy_from_slice(data);
    // SAFETY: the region is live for the whole call.
    if let Ok(seg) = unsafe { Segment::open_validated(region.as_mut_ptr(), data.len()) } {
        for g in 0..seg.layout().max_guests.min(4) {
            if let Ok((mut tx, mut rx)) = seg.host_channel(g) {
                for _ in 0..16 {
                    match rx.try_recv() {
                        Ok(Some(m)) => {
                            std::hint::black_box(m.bytes().byte(0));
                        }
                        _ => break,
                    }
                }
                let _ = tx.send(&[1; 300]);
            }
            let _ = seg.recover_guest(g);
        }
        let pool = seg.pool();
        for c in 0..pool.class_count() {
            let _ = pool.usage(c);
        }
    }
}
