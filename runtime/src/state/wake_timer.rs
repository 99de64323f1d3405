//! Wakes async tasks at an instant: the timer of a fiber guest that waits
//! with a timeout (or sleeps) while an async task drives it, so that the
//! async API needs no particular executor's timer. One thread for the
//! process, started at the first use, asleep while nothing is due.
//!
//! A registration is keyed by the sandbox and the side of it that waits
//! ([`TimerKey`]), and a key holds one entry: registering again moves it
//! (for the same task, to the earlier of the two instants), and a
//! sandbox's drop removes its entries. So entries do not pile up until
//! they are due, and none is ever refused: the count is bounded by the
//! live sandboxes, not by a cap. Wakers are woken after the lock is
//! released, so an executor that polls inside `wake` may register again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Condvar, Mutex, OnceLock};
use std::task::Waker;
use std::time::Instant;

/// Which host end of a sandbox waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Side {
    Send,
    Recv,
}

impl Side {
    pub const ALL: [Side; 2] = [Side::Send, Side::Recv];
}

/// Who a registration is for: a sandbox (its id) and a side of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TimerKey {
    pub sandbox: u64,
    pub side: Side,
}

/// The entries, by instant and by key (one each).
#[derive(Default)]
struct Entries {
    by_time: BTreeMap<(Instant, TimerKey), Waker>,
    by_key: HashMap<TimerKey, Instant>,
}

impl Entries {
    /// Arms `key` at `at` (kept at its earlier instant for the same
    /// task); returns the instant armed and whether it is now the first.
    fn set(&mut self, key: TimerKey, at: Instant, waker: &Waker) -> (Instant, bool) {
        if let Some(&old) = self.by_key.get(&key) {
            let same = self
                .by_time
                .get(&(old, key))
                .is_some_and(|w| w.will_wake(waker));
            if same && old <= at {
                return (old, false);
            }
            self.by_time.remove(&(old, key));
        }
        let first = self
            .by_time
            .first_key_value()
            .is_none_or(|((t, _), _)| at < *t);
        self.by_time.insert((at, key), waker.clone());
        self.by_key.insert(key, at);
        (at, first)
    }

    fn remove(&mut self, key: TimerKey) {
        if let Some(at) = self.by_key.remove(&key) {
            self.by_time.remove(&(at, key));
        }
    }

    /// Takes the entries due at `now`.
    fn take_due(&mut self, now: Instant) -> Vec<Waker> {
        let mut due = Vec::new();
        while let Some(entry) = self.by_time.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, key), waker) = entry.remove_entry();
            self.by_key.remove(&key);
            due.push(waker);
        }
        due
    }
}

struct Timer {
    entries: Mutex<Entries>,
    changed: Condvar,
}

fn timer() -> Option<&'static Timer> {
    static TIMER: OnceLock<Option<&'static Timer>> = OnceLock::new();
    *TIMER.get_or_init(|| {
        let timer: &'static Timer = Box::leak(Box::new(Timer {
            entries: Mutex::new(Entries::default()),
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
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let due = entries.take_due(Instant::now());
            if !due.is_empty() {
                // Woken without the lock: a waker may poll its task here,
                // which may register again.
                drop(entries);
                due.into_iter().for_each(Waker::wake);
                entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let next = entries.by_time.first_key_value().map(|((at, _), _)| *at);
            entries = match next {
                Some(at) => {
                    let wait = at.saturating_duration_since(Instant::now());
                    self.changed
                        .wait_timeout(entries, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self
                    .changed
                    .wait(entries)
                    .unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

/// Wakes `waker` at `at` for `key` (see the module docs); returns the
/// instant `key` is armed at. Without a timer thread (it could not be
/// started) the task is woken at once and polls again.
pub(crate) fn wake_at(key: TimerKey, at: Instant, waker: &Waker) -> Instant {
    let Some(timer) = timer() else {
        waker.wake_by_ref();
        return Instant::now();
    };
    let mut entries = timer.entries.lock().unwrap_or_else(|e| e.into_inner());
    let (armed, first) = entries.set(key, at, waker);
    drop(entries);
    if first {
        timer.changed.notify_one();
    }
    armed
}

/// Removes the entries of `sandbox` (it is gone).
pub(crate) fn forget(sandbox: u64) {
    let Some(timer) = timer() else { return };
    let mut entries = timer.entries.lock().unwrap_or_else(|e| e.into_inner());
    for side in Side::ALL {
        entries.remove(TimerKey { sandbox, side });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    struct Count(AtomicUsize);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn key(sandbox: u64) -> TimerKey {
        TimerKey {
            sandbox,
            side: Side::Recv,
        }
    }

    #[test]
    fn one_entry_per_key_and_none_refused() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut e = Entries::default();
        let now = Instant::now();
        // A key registered again and again keeps one entry.
        for i in 0..100_000u64 {
            e.set(key(1), now + Duration::from_secs(3600 - i % 3000), &waker);
        }
        assert_eq!(e.by_time.len(), 1);
        // Many keys: every one is kept, none woken early.
        for s in 2..100_002u64 {
            e.set(key(s), now + Duration::from_secs(3600), &waker);
        }
        assert_eq!(e.by_time.len(), 100_001);
        e.set(key(0), now + Duration::from_millis(1), &waker);
        assert_eq!(e.take_due(now).len(), 0);
        assert_eq!(e.take_due(now + Duration::from_millis(1)).len(), 1);
        e.remove(key(5));
        assert_eq!((e.by_time.len(), e.by_key.len()), (100_000, 100_000));
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
    }
}
