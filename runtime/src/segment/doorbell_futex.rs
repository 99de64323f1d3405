//! Parking and waking on the doorbell words with futexes.
//!
//! The words live in a `MAP_SHARED` mapping, so these are shared (not
//! process-private) futexes: they work between the host's mapping and the
//! guest's window of the same file, and between processes.

use std::ops::Range;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::thread::futex;
use shmrt_primitives::{Doorbell, Segment};

/// Rings `bell`: bumps its sequence and wakes every parked waiter, with no
/// syscall when nobody is parked.
pub fn ring(bell: &Doorbell) {
    if bell.ring() {
        wake_all(bell.futex_word());
    }
}

/// Rings `bell` for news that must never be missed (a goodbye, a guest's
/// end): bumps its sequence and wakes every waiter whatever the waiter
/// count says (the other side can scribble it).
pub fn ring_and_wake_all(bell: &Doorbell) {
    bell.ring();
    wake_all(bell.futex_word());
}

/// Raises host goodbye in `segment`'s header and wakes the guests at
/// `indices` (on their host-to-guest doorbells): each drains what is
/// queued and returns.
pub(crate) fn say_goodbye(segment: &Segment, indices: Range<u32>) {
    segment.header().say_goodbye();
    for i in indices {
        if let Some(p) = segment.peer(i) {
            ring_and_wake_all(&p.h2g_doorbell);
        }
    }
}

/// Wakes every waiter on `word` regardless of the waiter count (for a
/// goodbye or a stop, which must never be missed).
pub fn wake_all(word: &AtomicU32) {
    // A failure here (EFAULT cannot happen on a live mapping) leaves the
    // waiter to its timeout; nothing to recover.
    let _ = futex::wake(word, futex::Flags::empty(), i32::MAX as u32);
}

/// Sleeps while `word` holds `expected`, at most `timeout`. Returns on a
/// wake, a changed value, a signal or the timeout; callers re-check their
/// condition.
pub fn park(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| rustix::time::Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: t.subsec_nanos() as _,
    });
    let _ = futex::wait(word, futex::Flags::empty(), expected, ts.as_ref());
}
