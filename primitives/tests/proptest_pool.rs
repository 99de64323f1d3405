//! The slot pool against a model: a set of held slots. No slot is handed
//! out twice, every held slot frees, exhaustion happens only when every
//! class that fits is full, and after everything is freed each class's
//! free list holds all its slots again.

use std::collections::HashSet;

use proptest::prelude::*;
use shmrt_primitives::SlotRef;
use shmrt_primitives::heap_region::HeapRegion;
use shmrt_primitives::layout::{SegmentLayout, SizeClass};
use shmrt_primitives::slot_pool::{AllocError, SlotPool};

const CLASSES: [SizeClass; 3] = [
    SizeClass {
        slot_size: 64,
        slot_count: 5,
    },
    SizeClass {
        slot_size: 256,
        slot_count: 3,
    },
    SizeClass {
        slot_size: 1024,
        slot_count: 2,
    },
];

#[derive(Clone, Debug)]
enum Op {
    Alloc { len: u32, owner: u8 },
    Free { pick: usize },
    Reclaim { owner: u8 },
}

/// Ops per case; Miri interprets every step, so fewer there (still
/// enough to exhaust every class).
const MAX_OPS: usize = if cfg!(miri) { 50 } else { 200 };

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u32..1100, 0u8..3).prop_map(|(len, owner)| Op::Alloc { len, owner }),
        2 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        1 => (0u8..3).prop_map(|owner| Op::Reclaim { owner }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 8 } else { 512 },
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn pool_matches_a_set_of_held_slots(ops in prop::collection::vec(op(), 1..MAX_OPS)) {
        let layout = SegmentLayout::compute(&shmrt_primitives::SegmentConfig {
            max_guests: 1,
            ring_capacity: 64,
            max_payload_size: 0,
            inline_threshold: 0,
            heartbeat_interval_ns: 0,
            size_classes: shmrt_primitives::SizeClasses::new(&CLASSES).unwrap(),
            features: 0,
        }).unwrap();
        let region = HeapRegion::zeroed(layout.total_size as usize);
        // SAFETY: the region holds the layout and outlives the pool.
        let pool = unsafe { SlotPool::new(region.as_mut_ptr(), &layout) };
        pool.init();
        let mut held: Vec<(SlotRef, u8)> = Vec::new();
        for op in ops {
            match op {
                Op::Alloc { len, owner } => match pool.allocate(len, owner) {
                    Ok(r) => {
                        prop_assert!(CLASSES[r.class_idx as usize].slot_size >= len + 4);
                        prop_assert!(
                            !held.iter().any(|(h, _)| (h.class_idx, h.slot_idx) == (r.class_idx, r.slot_idx)),
                            "slot {:?} handed out twice", r
                        );
                        held.push((r, owner));
                    }
                    Err(AllocError::Exhausted) => {
                        for (i, c) in CLASSES.iter().enumerate() {
                            if c.slot_size >= len + 4 {
                                let n = held.iter().filter(|(h, _)| h.class_idx as usize == i).count();
                                prop_assert_eq!(n, c.slot_count as usize, "class {} had room", i);
                            }
                        }
                    }
                    Err(AllocError::TooLarge { .. }) => prop_assert!(len + 4 > 1024),
                    Err(e) => prop_assert!(false, "{}", e),
                },
                Op::Free { pick } => {
                    if !held.is_empty() {
                        let (r, _) = held.remove(pick % held.len());
                        pool.free(r).unwrap();
                        prop_assert!(pool.free(r).is_err(), "a second free is refused");
                    }
                }
                Op::Reclaim { owner } => {
                    let n = held.iter().filter(|(_, o)| *o == owner).count() as u32;
                    prop_assert_eq!(pool.reclaim_owned_by(owner), Ok(n));
                    held.retain(|(_, o)| *o != owner);
                }
            }
            let distinct: HashSet<_> = held.iter().map(|(h, _)| (h.class_idx, h.slot_idx)).collect();
            prop_assert_eq!(distinct.len(), held.len());
        }
        for (r, _) in held.drain(..) {
            pool.free(r).unwrap();
        }
        for (i, c) in CLASSES.iter().enumerate() {
            let u = pool.usage(i).unwrap();
            prop_assert_eq!(u.allocated, 0);
            prop_assert_eq!(u.free_list, Ok(c.slot_count), "nothing lost from class {}", i);
        }
    }
}
