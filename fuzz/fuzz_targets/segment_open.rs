//! Attach-time header validation on arbitrary bytes: an `--attach` of a
//! hostile or corrupt file. If the bytes open, everything reachable from
//! the validated layout is exercised too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmrt_primitives::Segment;
use shmrt_primitives::heap_region::HeapRegion;

fuzz_target!(|data: &[u8]| {
    let mut region = HeapRegion::zeroed(data.len().max(1));
    region.bytes_mut()[..data.len()].copy_from_slice(data);
    // SAFETY: the region is live for the whole call.
    if let Ok(seg) = unsafe { Segment::open_validated(region.as_mut_ptr(), data.len()) } {
        for g in 0..seg.layout().max_guests.min(4) {
            if let Ok((mut tx, mut rx)) = seg.host_channel(g) {
                for _ in 0..16 {
                    match rx.try_recv() {
                        Ok(Some(m)) => {
                            std::hint::black_box(m.as_bytes().first());
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
});
