//! Wakes async tasks at an instant: the timer of a fiber guest that waits
//! with a timeout (or sleeps) while an async task drives it, so that the
//! async API needs no particular executor's timer. One thread for the
//! process, started at the first use, asleep while nothing is due.

use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, OnceLock};
use std::task::Waker;
use std::time::Instant;

/// A waker due at an instant (ordered earliest first in the heap).
struct Due {
    at: Instant,
    waker: Waker,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: `BinaryHeap` is a max-heap.
        other.at.cmp(&self.at)
    }
}

struct Timer {
    due: Mutex<BinaryHeap<Due>>,
    changed: Condvar,
}

/// The most wakers kept at once: a task re-registers on every poll, so
/// past this the earliest are kept and a late one is woken at once (its
/// task polls again and registers again), which bounds the memory a flood
/// of timeouts can take.
const MAX_DUE: usize = 1 << 16;

fn timer() -> Option<&'static Timer> {
    static TIMER: OnceLock<Option<&'static Timer>> = OnceLock::new();
    *TIMER.get_or_init(|| {
        let timer: &'static Timer = Box::leak(Box::new(Timer {
            due: Mutex::new(BinaryHeap::new()),
            changed: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("shmrt-timer".into())
            .spawn(move || timer.run())
            .ok()
            .map(|_| timer)
    })
}

impl Timer {
    fn run(&self) {
        let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            while due.peek().is_some_and(|d| d.at <= now) {
                if let Some(d) = due.pop() {
                    d.waker.wake();
                }
            }
            due = match due.peek().map(|d| d.at - now) {
                Some(wait) => {
                    self.changed
                        .wait_timeout(due, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.changed.wait(due).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

/// Wakes `waker` at `at` (at once if the timer thread can not be started,
/// or too many are waiting: the task polls again).
pub(crate) fn wake_at(at: Instant, waker: &Waker) {
    let Some(timer) = timer() else {
        waker.wake_by_ref();
        return;
    };
    let mut due = timer.due.lock().unwrap_or_else(|e| e.into_inner());
    if due.len() >= MAX_DUE {
        drop(due);
        waker.wake_by_ref();
        return;
    }
    let earliest = due.peek().is_none_or(|d| at < d.at);
    due.push(Due {
        at,
        waker: waker.clone(),
    });
    drop(due);
    if earliest {
        timer.changed.notify_one();
    }
}
