//! loom models of the lock-free protocols: the ring (one producer, one
//! consumer, across a wrap; and with a callback guest's cursors published
//! for it after each call, on either side), the Treiber free lists of the
//! slot pool, and the doorbell's eventcount (no lost wake-up).
//!
//! Run with: `RUSTFLAGS="--cfg loom" cargo test -p shmrt-primitives --features loom --test loom_models --release`
#![cfg(loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicU32, Ordering};
use loom::sync::{Condvar, Mutex};
use loom::thread;
use shmrt_primitives::doorbell::LoomDoorbell;
use shmrt_primitives::heap_region::HeapRegion;
use shmrt_primitives::ring::{Consumer, Producer, RingHeader, RingRef};
use shmrt_primitives::slot_pool::{AllocError, ClassView, SizeClassHeader, SlotMeta, SlotPool};

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

/// 4 messages of 12 bytes through a 32-byte ring: the producer must wrap,
/// the consumer must drain the tail before the front, and every message
/// arrives once, in order, with its bytes.
#[test]
fn ring_spsc_across_a_wrap() {
    model(|| {
        const CAP: u32 = 32;
        let region = Arc::new(HeapRegion::zeroed(size_of::<RingHeader>() + CAP as usize));
        // SAFETY: the region holds a loom-sized header and the data, and
        // both threads keep it alive through the Arc.
        let ring = unsafe { RingRef::new(region.as_mut_ptr(), CAP) };
        ring.init();
        let keep = region.clone();
        let producer = thread::spawn(move || {
            let _keep = keep;
            let mut p = Producer::new(ring).unwrap();
            for m in 0..4u8 {
                loop {
                    if let Some(mut g) = p.grant(12).unwrap() {
                        g.as_mut_slice().fill(m + 1);
                        g.commit(12);
                        break;
                    }
                    thread::yield_now();
                }
            }
        });
        let mut c = Consumer::new(ring).unwrap();
        let mut next = 1u8;
        while next <= 4 {
            match c.readable().unwrap() {
                Some(r) => {
                    assert!(r.len >= 12 && r.len % 12 == 0, "whole messages only: {r:?}");
                    // SAFETY: inside the readable range.
                    let bytes = unsafe { std::slice::from_raw_parts(c.data_ptr(r.offset), 12) };
                    assert!(
                        bytes.iter().all(|&b| b == next),
                        "message {next} got {bytes:?}"
                    );
                    c.release(12);
                    next += 1;
                }
                None => thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert!(c.readable().unwrap().is_none());
    });
}

/// A callback guest's outbox (`callback_cursors`): the producer's commits
/// are deferred during a "call" of two messages, and the host publishes
/// its `write` after the call (`take_unpublished`, then a Release store),
/// on the producer's thread, as the driver does, while a consumer on
/// another thread (the receiver of a split sandbox) reads. 6 messages of
/// 12 bytes through a 32-byte ring: calls span a wrap, whose watermark
/// the guest still publishes itself. Every message arrives once, in
/// order, with its bytes, and only once published.
#[test]
fn ring_deferred_producer_published_after_each_call() {
    model(|| {
        const CAP: u32 = 32;
        let region = Arc::new(HeapRegion::zeroed(size_of::<RingHeader>() + CAP as usize));
        // SAFETY: as in `ring_spsc_across_a_wrap`.
        let ring = unsafe { RingRef::new(region.as_mut_ptr(), CAP) };
        ring.init();
        let keep = region.clone();
        let producer = thread::spawn(move || {
            let _keep = keep;
            let mut p = Producer::new(ring).unwrap();
            for call in 0..3u8 {
                p.set_deferred(true);
                for m in 0..2u8 {
                    let n = call * 2 + m + 1;
                    loop {
                        if let Some(mut g) = p.grant(12).unwrap() {
                            g.as_mut_slice().fill(n);
                            g.commit(12);
                            break;
                        }
                        // A callback can not wait: the call ends here,
                        // and the host publishes what it wrote.
                        if let Some(write) = p.take_unpublished() {
                            ring.publish_write_for_producer(write);
                        }
                        thread::yield_now();
                    }
                }
                if let Some(write) = p.take_unpublished() {
                    ring.publish_write_for_producer(write);
                }
                p.set_deferred(false);
            }
        });
        let mut c = Consumer::new(ring).unwrap();
        let mut next = 1u8;
        while next <= 6 {
            match c.readable().unwrap() {
                Some(r) => {
                    assert!(r.len >= 12 && r.len % 12 == 0, "whole messages only: {r:?}");
                    // SAFETY: inside the readable range.
                    let bytes = unsafe { std::slice::from_raw_parts(c.data_ptr(r.offset), 12) };
                    assert!(
                        bytes.iter().all(|&b| b == next),
                        "message {next} got {bytes:?}"
                    );
                    c.release(12);
                    next += 1;
                }
                None => thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert!(c.readable().unwrap().is_none());
    });
}

/// A callback guest's inbox: the consumer's releases are deferred during
/// a call and its `read` published after it by the host (on its thread),
/// while the host's sender on another thread waits for room. 4 messages
/// of 12 bytes through a 32-byte ring (across its wrap): the sender only ever reuses bytes
/// the consumer has released and the host has published, so every
/// message arrives once, in order, with its bytes.
#[test]
fn ring_deferred_consumer_published_after_each_call() {
    model(|| {
        const CAP: u32 = 32;
        let region = Arc::new(HeapRegion::zeroed(size_of::<RingHeader>() + CAP as usize));
        // SAFETY: as in `ring_spsc_across_a_wrap`.
        let ring = unsafe { RingRef::new(region.as_mut_ptr(), CAP) };
        ring.init();
        let keep = region.clone();
        let producer = thread::spawn(move || {
            let _keep = keep;
            let mut p = Producer::new(ring).unwrap();
            for n in 1..=4u8 {
                loop {
                    if let Some(mut g) = p.grant(12).unwrap() {
                        g.as_mut_slice().fill(n);
                        g.commit(12);
                        break;
                    }
                    thread::yield_now();
                }
            }
        });
        let mut c = Consumer::new(ring).unwrap();
        let mut next = 1u8;
        while next <= 4 {
            // One call: what is readable now, released lazily.
            c.set_deferred(true);
            while let Some(r) = c.readable().unwrap() {
                assert!(r.len >= 12 && r.len % 12 == 0, "whole messages only: {r:?}");
                // SAFETY: inside the readable range.
                let bytes = unsafe { std::slice::from_raw_parts(c.data_ptr(r.offset), 12) };
                assert!(
                    bytes.iter().all(|&b| b == next),
                    "message {next} got {bytes:?}"
                );
                c.release(12);
                next += 1;
            }
            if let Some(read) = c.take_unpublished() {
                ring.publish_read_for_consumer(read);
            }
            c.set_deferred(false);
            thread::yield_now();
        }
        producer.join().unwrap();
        assert!(c.readable().unwrap().is_none());
    });
}

struct Class {
    _header: Box<std::mem::MaybeUninit<SizeClassHeader>>,
    _metas: Box<[std::mem::MaybeUninit<SlotMeta>]>,
    _data: Box<[u8]>,
    view: ClassView,
}

fn class(slots: u32) -> Class {
    let mut header = Box::new(std::mem::MaybeUninit::<SizeClassHeader>::uninit());
    let mut metas: Box<[_]> = (0..slots)
        .map(|_| std::mem::MaybeUninit::<SlotMeta>::uninit())
        .collect();
    let mut data = vec![0u8; 8 * slots as usize].into_boxed_slice();
    // SAFETY: the boxes outlive the view (kept in `Class`); `init` writes
    // them before any read.
    let view = unsafe {
        ClassView::from_raw(
            header.as_mut_ptr(),
            metas.as_mut_ptr() as *mut SlotMeta,
            data.as_mut_ptr(),
            8,
            slots,
        )
    };
    Class {
        _header: header,
        _metas: metas,
        _data: data,
        view,
    }
}

/// Two threads allocate and free concurrently from a 2-slot class: no slot
/// is held twice, and at the end the free list holds both slots.
#[test]
fn treiber_stack_alloc_free_race() {
    model(|| {
        let c = Arc::new(class(2));
        let pool = SlotPool::from_classes(&[c.view]);
        pool.init();
        let held = Arc::new(loom::sync::atomic::AtomicU32::new(0));
        let worker = |owner: u8| {
            let (c, held) = (c.clone(), held.clone());
            thread::spawn(move || {
                let _keep = c;
                for _ in 0..2 {
                    match pool.allocate(1, owner) {
                        Ok(r) => {
                            let before = held
                                .fetch_or(1 << r.slot_idx, loom::sync::atomic::Ordering::SeqCst);
                            assert_eq!(
                                before & (1 << r.slot_idx),
                                0,
                                "slot {} held twice",
                                r.slot_idx
                            );
                            held.fetch_and(
                                !(1 << r.slot_idx),
                                loom::sync::atomic::Ordering::SeqCst,
                            );
                            pool.free(r).unwrap();
                        }
                        Err(AllocError::Exhausted) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        };
        let a = worker(1);
        let b = worker(2);
        a.join().unwrap();
        b.join().unwrap();
        let u = pool.usage(0).unwrap();
        assert_eq!((u.allocated, u.free_list), (0, Ok(2)));
    });
}

/// A futex on one word, as the kernel keeps it: a wait re-reads the word
/// under the bucket lock and sleeps only if it still holds the value the
/// caller saw; a wake takes the same lock. Waits have no timeout here, so a
/// lost wake-up is a sleep forever, which loom reports as a deadlock.
#[derive(Default)]
struct Futex {
    bucket: Mutex<()>,
    sleepers: Condvar,
}

impl Futex {
    fn wait(&self, word: &AtomicU32, seen: u32) {
        let bucket = self.bucket.lock().unwrap();
        if word.load(Ordering::SeqCst) == seen {
            drop(self.sleepers.wait(bucket).unwrap());
        }
    }

    fn wake_all(&self) {
        let _bucket = self.bucket.lock().unwrap();
        self.sleepers.notify_all();
    }
}

/// The eventcount, as the host and the guest use it: the publisher stores a
/// message (Release, as a ring commit) and rings only if `should_ring`
/// says someone is registered; the waiter registers, re-checks, and parks
/// on the sequence it saw. Whatever the interleaving, the waiter sees the
/// message: it never sleeps through the publication.
#[test]
fn doorbell_no_lost_wakeup() {
    model(|| {
        let bell = Arc::new(LoomDoorbell {
            seq: AtomicU32::new(0),
            waiters: AtomicU32::new(0),
        });
        let futex = Arc::new(Futex::default());
        let message = Arc::new(AtomicU32::new(0));
        let publisher = {
            let (bell, futex, message) = (bell.clone(), futex.clone(), message.clone());
            thread::spawn(move || {
                message.store(1, Ordering::Release);
                if bell.should_ring() && bell.ring() {
                    futex.wake_all();
                }
            })
        };
        loop {
            let seq = bell.prepare_wait();
            if message.load(Ordering::Acquire) == 1 {
                bell.finish_wait();
                break;
            }
            futex.wait(&bell.seq, seq);
            bell.finish_wait();
        }
        publisher.join().unwrap();
    });
}
