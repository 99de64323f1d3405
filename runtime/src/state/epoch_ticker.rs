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

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use wasmtime::Engine;

/// How often the engine's epoch advances while a guest runs wasm: the
/// granularity of deadlines and stops for a guest that is running code.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// What the ticker and the guests share.
#[derive(Debug, Default)]
pub(crate) struct TickerState {
    /// Guests running wasm code now.
    running: AtomicUsize,
    /// The ticker is asleep (or about to be) for want of running guests.
    idle: AtomicBool,
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

    /// [`Self::running`] for a borrowed state (no reference count to take:
    /// a callback call makes one a time).
    pub fn running_here(&self) -> RunningHere<'_> {
        self.enter();
        RunningHere(self)
    }

    /// Counts the current thread's guest as waiting in the host until the
    /// guard drops (then running again).
    pub fn waiting(&self) -> WaitingInHost<'_> {
        self.leave();
        WaitingInHost(self)
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

/// See [`TickerState::running_here`].
#[derive(Debug)]
pub(crate) struct RunningHere<'a>(&'a TickerState);

impl Drop for RunningHere<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// See [`TickerState::waiting`].
#[derive(Debug)]
pub(crate) struct WaitingInHost<'a>(&'a TickerState);

impl Drop for WaitingInHost<'_> {
    fn drop(&mut self) {
        self.0.enter();
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
                let _ = s.thread.set(std::thread::current());
                while !(s.stopping.load(Ordering::Relaxed) && Arc::strong_count(&s) == 1) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                    s.ticks.fetch_add(1, Ordering::Relaxed);
                    if s.running.load(Ordering::SeqCst) == 0 {
                        // SYNC POINT "ticker idle" (see `enter`).
                        s.idle.store(true, Ordering::SeqCst);
                        if s.running.load(Ordering::SeqCst) == 0 {
                            // Woken by a guest that runs again; the timeout
                            // only bounds a wake-up lost to a bug.
                            std::thread::park_timeout(Duration::from_secs(1));
                        }
                        s.idle.store(false, Ordering::SeqCst);
                    }
                }
            })?;
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
