//! The ring against a model: a byte stream. Whatever sequence of grants,
//! partial commits, reads and partial releases happens, the consumer reads
//! exactly the committed bytes, in order, and the ring never holds more
//! than its capacity; with lazy releases too (published when the consumer
//! runs dry, at a quarter ring, or when asked), no room is lost.

use proptest::prelude::*;
use shmrt_primitives::heap_region::HeapRegion;
use shmrt_primitives::ring::{Consumer, Producer, RingRef};

#[derive(Clone, Debug)]
enum Op {
    /// Grant `len`, commit `commit` of it (clamped).
    Produce { len: u32, commit: u32 },
    /// Read and release up to `max` bytes.
    Consume { max: u32 },
    /// Publish lazily released bytes.
    Publish,
}

/// Ops per case; Miri interprets every step, so fewer there (rings of 64
/// to 256 bytes still wrap several times).
const MAX_OPS: usize = if cfg!(miri) { 60 } else { 300 };

fn op(cap: u32) -> impl Strategy<Value = Op> {
    prop_oneof![
        (1..=cap, 0..=cap).prop_map(|(len, commit)| Op::Produce { len, commit }),
        (1..=cap).prop_map(|max| Op::Consume { max }),
        Just(Op::Publish),
    ]
}

fn ring(cap: u32) -> (HeapRegion, RingRef) {
    let region = HeapRegion::zeroed(128 + cap as usize);
    // SAFETY: the region holds header and data and outlives the ring.
    let r = unsafe { RingRef::new(region.as_mut_ptr(), cap) };
    r.init();
    (region, r)
}

fn run(cap: u32, ops: &[Op]) {
    run_with(cap, ops, false);
}

fn run_with(cap: u32, ops: &[Op], lazy: bool) {
    let (_region, r) = ring(cap);
    let mut p = Producer::new(r).unwrap();
    let mut c = Consumer::new(r).unwrap();
    c.set_lazy_release(lazy);
    let (mut next_write, mut next_read) = (0u64, 0u64);
    let byte = |i: u64| (i % 251) as u8;
    for op in ops {
        match *op {
            Op::Produce { len, commit } => {
                if let Some(mut g) = p.grant(len).unwrap() {
                    let n = commit.min(len);
                    for (k, b) in g.as_mut_slice()[..n as usize].iter_mut().enumerate() {
                        *b = byte(next_write + k as u64);
                    }
                    g.commit(n);
                    next_write += n as u64;
                }
            }
            Op::Consume { max } => {
                if let Some(rd) = c.readable().unwrap() {
                    let n = rd.len.min(max);
                    // SAFETY: inside the readable range of the ring data.
                    let got =
                        unsafe { std::slice::from_raw_parts(c.data_ptr(rd.offset), n as usize) };
                    for (k, b) in got.iter().enumerate() {
                        assert_eq!(
                            *b,
                            byte(next_read + k as u64),
                            "byte {} of the stream",
                            next_read + k as u64
                        );
                    }
                    c.release(n);
                    next_read += n as u64;
                }
            }
            Op::Publish => c.publish(),
        }
        assert!(
            next_write - next_read <= cap as u64,
            "more in flight than the capacity"
        );
        let occ = r.cursors().occupancy(cap).expect("cursors stay consistent");
        assert!(occ <= cap);
    }
    // Drain, then a grant of half the ring must succeed: no space is lost.
    while let Some(rd) = c.readable().unwrap() {
        c.release(rd.len);
        next_read += rd.len as u64;
    }
    assert_eq!(next_read, next_write, "everything committed was read");
    let half = cap / 2;
    let ok = p.grant(half).unwrap().is_some() || {
        assert!(c.readable().unwrap().is_none());
        p.grant(half).unwrap().is_some()
    };
    assert!(ok, "an empty ring grants half its capacity");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 8 } else { 512 },
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn ring_matches_a_byte_stream(cap in prop_oneof![Just(64u32), Just(100), Just(256)], ops in prop::collection::vec(op(256), 1..MAX_OPS), lazy in any::<bool>()) {
        let ops: Vec<Op> = ops.into_iter().map(|o| match o {
            Op::Produce { len, commit } => Op::Produce { len: 1 + (len - 1) % cap, commit },
            o => o,
        }).collect();
        run_with(cap, &ops, lazy);
    }
}

/// A named case: wrapping with `read` exactly at
/// `write` (an empty ring past the middle) must not lose the front.
#[test]
fn regression_wrap_when_empty_past_the_middle() {
    run(
        64,
        &[
            Op::Produce {
                len: 40,
                commit: 40,
            },
            Op::Consume { max: 40 },
            Op::Produce {
                len: 40,
                commit: 40,
            },
            Op::Consume { max: 64 },
            Op::Produce {
                len: 30,
                commit: 30,
            },
            Op::Consume { max: 64 },
        ],
    );
}
