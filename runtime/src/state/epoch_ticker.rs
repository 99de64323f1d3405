//! The epoch ticker: advances the engine's epoch every [`EPOCH_TICK`]
//! while some guest is running wasm code, which is what makes a deadline
//! or a stop reach a busy guest (wasmtime checks the epoch at function
//! entries and loop headers). While every guest waits in the host (in the
//! `wait` import, a WASI sleep, or not started), nothing needs the epoch,
//! and the ticker sleeps until a guest runs again: an idle process wakes
//! for nothing.
//!
//! Guests count themselves in ([`TickerState::enter`]) and out
//! ([`TickerState::leave`]). The ticker and an entering guest form a
//! Dekker pair: the ticker raises `idle` then re-checks `running`; a guest
//! raises `running` then checks `idle` and unparks the ticker. With both
//! sides `SeqCst`, at least one sees the other, so a guest never runs wasm
//! with the ticker asleep for more than one unpark.
//!
//! A guest on the host's thread (a callback or a fiber) enters and leaves
//! at every turn: two locked adds a callback round trip, each waiting for
//! the stores the guest left in flight. So where `membarrier` works
//! (`asymmetric_fence`), such a guest raises a flag of its own instead
//! ([`InWasm`], registered with the ticker), with a plain store and only
//! a compiler fence before its load of `idle`; the ticker, which goes idle
//! at most once a tick, pays for both with the heavy barrier between its
//! store of `idle` and its look at the flags. One side still sees the
//! other (the asymmetric Dekker pair of `asymmetric_fence`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use crossbeam_utils::CachePadded;

use wasmtime::Engine;

use super::asymmetric_fence;

/// How often the engine's epoch advances while a guest runs wasm: the
/// granularity of deadlines and stops for a guest that is running code.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// What the ticker and the guests share.
#[derive(Debug, Default)]
pub(crate) struct TickerState {
    /// Guests running wasm code now, of those that count themselves here
    /// (thread guests, instantiations; every guest where `membarrier` is
    /// refused).
    running: CachePadded<AtomicUsize>,
    /// The flags of guests on the host's thread (see [`InWasm`]); a flag
    /// only this list holds belongs to a guest that is gone.
    flags: Mutex<Flags>,
    /// The ticker is asleep (or about to be) for want of running guests.
    /// Read at every turn of every guest on the host's thread: a line of
    /// its own, which no guest writes.
    idle: CachePadded<AtomicBool>,
    /// Set when the runtime is dropped: the ticker ends once no sandbox
    /// holds this state either (a sandbox that outlives its runtime keeps
    /// its deadline, slice and stop).
    stopping: AtomicBool,
    /// Ticks so far: a fiber resumed at tick `t` yields at its first epoch
    /// check after `t`, not at once (its deadline was set when it last ran).
    ticks: std::sync::atomic::AtomicU64,
    thread: OnceLock<Thread>,
}

impl TickerState {
    /// A guest starts (or resumes) running wasm code.
    pub fn enter(&self) {
        // SYNC POINT "ticker idle": SeqCst with the ticker's store of
        // `idle` and load of `running` (module docs).
        self.running.fetch_add(1, Ordering::SeqCst);
        if self.idle.load(Ordering::SeqCst)
            && let Some(t) = self.thread.get()
        {
            t.unpark();
        }
    }

    /// Ticks so far.
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// A guest stops running wasm code (it waits in the host, or ended).
    pub fn leave(&self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
    }

    /// Counts the current thread's guest as running until the guard drops.
    pub fn running(self: &Arc<Self>) -> RunningWasm {
        self.enter();
        RunningWasm(self.clone())
    }

    /// Counts the current thread's guest as waiting in the host until the
    /// guard drops (then as it was before: running, unless it was not):
    /// by its flag, when it has one.
    pub fn waiting<'a>(&'a self, flag: Option<&'a InWasm>) -> WaitingInHost<'a> {
        let was_raised = match flag {
            // Only the thread running the guest writes its flag.
            Some(flag) => flag.0.swap(false, Ordering::Relaxed),
            None => {
                self.leave();
                true
            }
        };
        WaitingInHost {
            state: self,
            flag,
            was_raised,
        }
    }

    /// A flag for a guest on the host's thread, registered with the
    /// ticker; `None` where `membarrier` is refused (the guest counts
    /// itself in `running`, with locked adds).
    pub fn flag(&self) -> Option<Arc<InWasm>> {
        if !asymmetric_fence::available() {
            return None;
        }
        let flag = Arc::new(InWasm(CachePadded::new(AtomicBool::new(false))));
        let mut flags = self.flags.lock().unwrap_or_else(|e| e.into_inner());
        // The flags of guests that are gone go here too, not only when
        // the ticker looks (it does not while it sleeps): the list stays
        // within 64, or twice the guests alive at the last prune.
        if flags.list.len() >= flags.prune_at {
            flags.prune();
        }
        flags.list.push(flag.clone());
        Some(flag)
    }

    /// Counts a guest on the host's thread as running (by its flag, when
    /// it has one) until the guard drops.
    pub fn running_flagged<'a>(&'a self, flag: Option<&'a InWasm>) -> RunningFlagged<'a> {
        match flag {
            Some(flag) => self.raise(flag),
            None => self.enter(),
        }
        RunningFlagged(self, flag)
    }

    /// A guest with a flag starts (or resumes) running wasm code.
    fn raise(&self, flag: &InWasm) {
        // SYNC POINT "ticker idle", the frequent side: the flag's store,
        // then (a compiler fence: `membarrier` on the ticker's side stands
        // in for the rest) the load of `idle` (module docs).
        flag.0.store(true, Ordering::Relaxed);
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        if self.idle.load(Ordering::Relaxed)
            && let Some(t) = self.thread.get()
        {
            t.unpark();
        }
    }

    /// What the ticker's look sees: whether a guest runs wasm now, and
    /// whether any flag is handed out (forgets the flags of guests that
    /// are gone).
    fn look(&self) -> Look {
        let counted = self.running.load(Ordering::SeqCst) != 0;
        let mut flags = self.flags.lock().unwrap_or_else(|e| e.into_inner());
        let raised = |f: &Arc<InWasm>| f.0.load(Ordering::Relaxed);
        // Cheap answers first: a counted guest runs, or the flag found
        // raised last time still is (a guest that computes for long).
        if counted || flags.list.get(flags.hint).is_some_and(raised) {
            return Look {
                running: true,
                flags: flags.list.len(),
            };
        }
        flags.prune();
        let found = flags.list.iter().position(raised);
        if let Some(i) = found {
            flags.hint = i;
        }
        Look {
            running: found.is_some(),
            flags: flags.list.len(),
        }
    }
}

/// See [`TickerState::look`].
struct Look {
    running: bool,
    /// Flags handed out (of guests alive).
    flags: usize,
}

/// Flags the ticker reads at every tick at most: with more, it looks
/// every few ticks (each flag is a cache line of its own: reading 10,000
/// of them and their counts took it about 130 us a tick here), so that a
/// process with many sandboxes goes quiet a few ticks later.
const FLAGS_PER_LOOK: usize = 1024;

/// The flags handed out ([`TickerState::flag`]).
#[derive(Debug)]
struct Flags {
    list: Vec<Arc<InWasm>>,
    /// The length at which [`TickerState::flag`] prunes the list.
    prune_at: usize,
    /// Where the ticker last found a flag raised.
    hint: usize,
}

impl Default for Flags {
    fn default() -> Self {
        Flags {
            list: Vec::new(),
            prune_at: 64,
            hint: 0,
        }
    }
}

impl Flags {
    /// Forgets the flags only this list holds (their guests are gone).
    fn prune(&mut self) {
        self.list.retain(|f| Arc::strong_count(f) > 1);
        self.prune_at = (2 * self.list.len()).max(64);
        if self.list.capacity() > 4 * self.prune_at {
            self.list.shrink_to(self.prune_at);
        }
    }
}

/// Whether one guest on the host's thread (a callback or a fiber, run by
/// whichever host thread holds its driver) runs wasm code now. Written
/// only by the thread that runs the guest's turn, read by the ticker. On
/// a cache line of its own: the flags of two sandboxes driven by two
/// threads share nothing.
#[derive(Debug)]
pub(crate) struct InWasm(CachePadded<AtomicBool>);

impl InWasm {
    fn lower(&self) {
        // The ticker seeing it late ticks once more; nothing else.
        self.0.store(false, Ordering::Relaxed);
    }
}

/// See [`TickerState::running`].
#[derive(Debug)]
pub(crate) struct RunningWasm(Arc<TickerState>);

impl Drop for RunningWasm {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// See [`TickerState::running_flagged`].
#[derive(Debug)]
pub(crate) struct RunningFlagged<'a>(&'a TickerState, Option<&'a InWasm>);

impl Drop for RunningFlagged<'_> {
    fn drop(&mut self) {
        match self.1 {
            Some(flag) => flag.lower(),
            None => self.0.leave(),
        }
    }
}

/// See [`TickerState::waiting`].
#[derive(Debug)]
pub(crate) struct WaitingInHost<'a> {
    state: &'a TickerState,
    flag: Option<&'a InWasm>,
    was_raised: bool,
}

impl Drop for WaitingInHost<'_> {
    fn drop(&mut self) {
        match self.flag {
            Some(flag) if self.was_raised => self.state.raise(flag),
            Some(_) => {}
            None => self.state.enter(),
        }
    }
}

/// The ticker thread and its shared state.
#[derive(Debug)]
pub(crate) struct EpochTicker {
    pub state: Arc<TickerState>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub fn start(engine: Engine) -> std::io::Result<Self> {
        let state = Arc::new(TickerState::default());
        let s = state.clone();
        let thread = std::thread::Builder::new()
            .name("shmrt-epoch".into())
            .spawn(move || {
                // Ticks between two looks, and since the last one.
                let (mut every, mut since) = (1, 0);
                while !(s.stopping.load(Ordering::Relaxed) && Arc::strong_count(&s) == 1) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                    s.ticks.fetch_add(1, Ordering::Relaxed);
                    since += 1;
                    if since < every {
                        continue;
                    }
                    since = 0;
                    let first = s.look();
                    every = 1 + first.flags / FLAGS_PER_LOOK;
                    if !first.running {
                        // SYNC POINT "ticker idle" (see `enter` and
                        // `raise`): the flags' side has only a compiler
                        // fence, so the heavy barrier stands between this
                        // store and the second look. None is needed while
                        // no flag is handed out: a flag handed out later
                        // is pushed under the lock this look takes after
                        // the store, so its guest's first look at `idle`
                        // sees it.
                        s.idle.store(true, Ordering::SeqCst);
                        let mut look = s.look();
                        if look.flags > 0 && !look.running {
                            asymmetric_fence::heavy();
                            look = s.look();
                        }
                        if !look.running {
                            // Woken by a guest that runs again; the timeout
                            // only bounds a wake-up lost to a bug.
                            std::thread::park_timeout(Duration::from_secs(1));
                        }
                        s.idle.store(false, Ordering::SeqCst);
                    }
                }
            })?;
        // Set before any guest exists (they come with the runtime this
        // belongs to), so that a guest that sees `idle` finds the thread
        // to unpark: a set by the ticker itself would be ordered after its
        // store of `idle` only by a 10 ms sleep.
        let _ = state.thread.set(thread.thread().clone());
        Ok(EpochTicker {
            state,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::Relaxed);
        // Our reference goes first: the ticker counts the others.
        let state = std::mem::take(&mut self.state);
        let others = Arc::downgrade(&state);
        drop(state);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            // With sandboxes left it ends after the last (no new one can
            // be made without the runtime); else now.
            if others.strong_count() <= 1 {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flags of guests that are gone are forgotten as new ones are handed
    /// out, even while the ticker never looks (it sleeps): spawning and
    /// dropping sandboxes for ever keeps the list within 64, or twice the
    /// guests alive.
    #[test]
    fn the_flags_of_gone_guests_do_not_pile_up() {
        let state = TickerState::default();
        let Some(kept) = state.flag() else {
            eprintln!("SKIPPED: membarrier is refused here, so no flag is handed out");
            return;
        };
        state.enter();
        for _ in 0..100_000 {
            drop(state.flag().expect("available once"));
        }
        let flags = state.flags.lock().unwrap();
        assert!(flags.list.len() <= 64, "{} flags listed", flags.list.len());
        assert!(flags.list.iter().any(|f| Arc::ptr_eq(f, &kept)));
        assert!(flags.list.capacity() <= 4 * 64, "{}", flags.list.capacity());
        drop(flags);
        state.leave();
    }

    /// A wait inside a turn lowers the flag and raises it again after; a
    /// wait outside one (the flag down) leaves it down.
    #[test]
    fn a_wait_restores_the_flag_as_it_found_it() {
        let state = TickerState::default();
        let Some(flag) = state.flag() else {
            eprintln!("SKIPPED: membarrier is refused here, so no flag is handed out");
            return;
        };
        let raised = || flag.0.load(Ordering::Relaxed);
        {
            let _running = state.running_flagged(Some(&flag));
            assert!(raised());
            {
                let _waiting = state.waiting(Some(&flag));
                assert!(!raised());
            }
            assert!(raised());
        }
        assert!(!raised());
        drop(state.waiting(Some(&flag)));
        assert!(!raised());
    }
}
