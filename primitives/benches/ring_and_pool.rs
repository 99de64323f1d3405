//! criterion benches of the primitives, single-threaded: the cost of the
//! operations themselves, without cross-core traffic (`shmrt bench`
//! measures that).
//!
//! Run: `cargo bench -p shmrt-primitives`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use shmrt_primitives::heap_region::HeapRegion;
use shmrt_primitives::ring::{Consumer, Producer, RingRef};
use shmrt_primitives::{Segment, SegmentConfig, SegmentLayout};

fn ring(c: &mut Criterion) {
    let region = HeapRegion::zeroed(128 + 65536);
    // SAFETY: the region holds header and data and outlives the ring.
    let r = unsafe { RingRef::new(region.as_mut_ptr(), 65536) };
    r.init();
    let mut p = Producer::new(r).unwrap();
    let mut q = Consumer::new(r).unwrap();
    c.bench_function("ring grant+commit+read+release 64 B", |b| {
        b.iter(|| {
            let mut g = p.grant(64).unwrap().unwrap();
            g.as_mut_slice()[0] = 1;
            g.commit(64);
            let rd = q.readable().unwrap().unwrap();
            q.release(black_box(rd.len.min(64)));
        })
    });
}

fn channel_and_pool(c: &mut Criterion) {
    let config = SegmentConfig::single_guest();
    let layout = SegmentLayout::compute(&config).unwrap();
    let region = HeapRegion::zeroed(layout.total_size as usize);
    // SAFETY: a fresh region of the layout's size.
    let seg = unsafe { Segment::create(region.as_mut_ptr(), region.len(), &config) }.unwrap();
    let pool = seg.pool();
    c.bench_function("pool allocate+free 4 KiB", |b| {
        b.iter(|| {
            let s = pool.allocate(black_box(4000), 1).unwrap();
            pool.free(s).unwrap();
        })
    });
    let (mut tx, _) = seg.host_channel(0).unwrap();
    let (_, mut rx) = seg.guest_channel(0).unwrap();
    let msg = [7u8; 64];
    c.bench_function("channel send+recv 64 B inline", |b| {
        b.iter(|| {
            tx.send(black_box(&msg)).unwrap();
            let m = rx.try_recv().unwrap().unwrap();
            black_box(m.bytes().byte(0));
        })
    });
    rx.set_lazy_release(true);
    c.bench_function("channel send+recv 64 B inline, lazy release", |b| {
        b.iter(|| {
            tx.send(black_box(&msg)).unwrap();
            let m = rx.try_recv().unwrap().unwrap();
            black_box(m.bytes().byte(0));
        })
    });
    rx.set_lazy_release(false);
    let big = vec![3u8; 60_000];
    c.bench_function("channel send+recv 60 KB slot", |b| {
        b.iter(|| {
            tx.send(black_box(&big)).unwrap();
            let m = rx.try_recv().unwrap().unwrap();
            black_box(m.bytes().byte(0));
        })
    });
}

criterion_group!(benches, ring, channel_and_pool);
criterion_main!(benches);
