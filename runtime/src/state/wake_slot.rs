//! [`WakeSlot`]: who to wake when a guest on the host's thread, or an
//! async host task waiting for a guest, can go on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Who to wake, and when at the latest. For a fiber guest suspended in a
/// host import: the waker of the poll that suspended it (woken when the
/// host sends, says goodbye or stops it) and the instant its own timer
/// runs out. For the host's async tasks: each task waiting (the sender's
/// and the receiver's of a split sandbox wait at once), all woken.
#[derive(Debug, Default)]
pub(crate) struct WakeSlot {
    /// A waker is stored: the fast path of [`Self::wake`] reads only this.
    armed: AtomicBool,
    wakers: std::sync::Mutex<Vec<std::task::Waker>>,
    wake_at: std::sync::Mutex<Option<Instant>>,
}

/// Wakers a [`WakeSlot`] keeps: one per host end and the fiber, with room
/// for tasks that were dropped while registered (the oldest is woken, a
/// spurious wake-up, to make room).
const MAX_WAKERS: usize = 4;

impl WakeSlot {
    /// Records who to wake, and when at the latest (`None`: only when
    /// woken). The caller looks at its condition again afterwards: a wake
    /// that came before this found nothing to wake.
    pub(crate) fn suspend(&self, waker: &std::task::Waker, at: Option<Instant>) {
        let mut w = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        let mut evicted = None;
        if !w.iter().any(|old| old.will_wake(waker)) {
            if w.len() >= MAX_WAKERS {
                evicted = Some(w.remove(0));
            }
            w.push(waker.clone());
        }
        drop(w);
        *self.wake_at.lock().unwrap_or_else(|e| e.into_inner()) = at;
        // SYNC POINT "wake slot": SeqCst, then the caller's re-check; the
        // waking side publishes, fences, then reads `armed` (Dekker: one
        // of the two sees the other).
        self.armed.store(true, Ordering::SeqCst);
        if let Some(w) = evicted {
            w.wake();
        }
    }

    /// Wakes every suspended waiter, if any, after what the caller
    /// published: a fence and a load when nobody is suspended.
    pub(crate) fn wake(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        self.wake_fenced();
    }

    /// [`Self::wake`] for a caller that has just fenced (SeqCst) itself.
    /// The wakers are woken outside the lock (one may poll its task at
    /// once, and suspend again).
    pub(crate) fn wake_fenced(&self) {
        if !self.armed.load(Ordering::Relaxed) {
            return;
        }
        self.armed.store(false, Ordering::Relaxed);
        let woken = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|e| e.into_inner()));
        woken.into_iter().for_each(std::task::Waker::wake);
    }

    /// When the suspended guest's timer runs out (taken: each suspension
    /// says it again).
    pub(crate) fn take_wake_at(&self) -> Option<Instant> {
        self.wake_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}
