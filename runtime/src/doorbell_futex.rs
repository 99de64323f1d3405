//! Parking and waking on the doorbell words with futexes.
//!
//! The words live in a `MAP_SHARED` mapping, so these are shared (not
//! process-private) futexes: they work between the host's mapping and the
//! guest's window of the same file, and between processes.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::thread::futex;
use shmrt_primitives::Doorbell;

/// Rings `bell`: bumps its sequence and wakes every parked waiter, with no
/// syscall when nobody is parked.
pub fn ring(bell: &Doorbell) {
    if bell.ring() {
        wake_all(bell.futex_word());
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

/// How long to spin before parking, in rounds of `spin_loop` hints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpinBudget(pub u32);

impl Default for SpinBudget {
    fn default() -> Self {
        SpinBudget(2000)
    }
}
