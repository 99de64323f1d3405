//! The state of one sandbox: what the guest thread, the host's channel
//! ends and the host imports share ([`SandboxShared`]), and the data of
//! the guest's wasmtime store ([`SandboxState`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use shmrt_primitives::segment_header::FEATURE_DOORBELLS;
use shmrt_primitives::{PeerEntry, PeerId, PeerState, ProtocolError};
use wasmtime_wasi::p1::WasiP1Ctx;

use crate::doorbell_futex::{self, SpinBudget};
use crate::guest_thread::ABANDON_AFTER;
use crate::host_imports;
use crate::instantiate::build_wasi;
use crate::memory_limit::MemoryLimit;
use crate::memory_window::NOT_PLACED;
use crate::options::{DEFAULT_SLOT_WAIT, Execution, SandboxOptions};
use crate::segment_file::SegmentFile;
use crate::wake_timer::{Side, TimerKey};

/// [`SandboxShared::call_started_ns`] of a callback call whose slice has
/// not started yet.
pub(crate) const CALL_NOT_TIMED: u64 = u64::MAX;

/// State shared by the guest thread, the host ends and the imports.
pub(crate) struct SandboxShared {
    pub name: String,
    pub segment_file: Arc<SegmentFile>,
    /// The guest runs in another process (this side is only the host):
    /// it has ended when its peer entry says Goodbye.
    pub external_guest: bool,
    /// The segment carries live doorbell words; without them (a vox
    /// segment), waits poll with backoff.
    pub doorbells: bool,
    pub placed_at: Arc<AtomicUsize>,
    pub guest_index: u32,
    pub started: Instant,
    /// The host asked the guest to stop.
    pub stop: AtomicBool,
    /// The guest's entry point has returned (or trapped). Release after
    /// its last commit (SYNC POINT "guest_done").
    pub guest_done: AtomicBool,
    pub spin: SpinBudget,
    /// The last error-level log line of the guest (a panic message), to
    /// explain a trap.
    pub last_error_log: std::sync::Mutex<Option<String>>,
    /// The memory limit refused a `memory.grow`.
    pub memory_refused: AtomicBool,
    /// The first protocol violation the host found: it is why the sandbox
    /// was stopped, so `join` reports it whatever the guest did next.
    pub violation: std::sync::Mutex<Option<ProtocolError>>,
    /// The thread running the guest's code (the caller's during the
    /// instantiation, then the guest thread): a stop unparks it from a
    /// WASI sleep.
    pub guest_thread: std::sync::Mutex<Option<std::thread::Thread>>,
    /// [`SandboxOptions::slot_wait`], for the host's sends.
    pub slot_wait: Option<Duration>,
    /// The guest's deadline and its timeout, once set (`join` gives up on
    /// a guest blocked past it).
    pub deadline: std::sync::Mutex<Option<Instant>>,
    pub timeout: Option<Duration>,
    /// When the host first asked the guest to stop.
    pub stopped_at: std::sync::Mutex<Option<Instant>>,
    /// Nanoseconds after `started` past which the guest counts as ended
    /// whether or not its thread returned ([`ABANDON_AFTER`] past its
    /// deadline or a stop); `u64::MAX` while neither is set. Relaxed: a
    /// hint read in wait loops, each of which also naps and re-checks.
    pub abandon_at_ns: std::sync::atomic::AtomicU64,
    /// Where the guest runs its code.
    pub execution: Execution,
    /// The ticker's tick when a fiber guest was last resumed.
    pub resumed_at_tick: std::sync::atomic::AtomicU64,
    /// A callback guest's call in progress: nanoseconds after `started`
    /// when its slice began (at least 1), [`CALL_NOT_TIMED`] while the call
    /// has not been looked at yet, 0 between calls.
    pub call_started_ns: std::sync::atomic::AtomicU64,
    /// This sandbox's key with the wake timer.
    pub timer_id: u64,
    /// What each side has armed with the wake timer, so that an async
    /// host polling again and again takes the timer's lock once, not once
    /// per poll ([`Side`] is the index).
    pub timer_at: [std::sync::Mutex<Option<(Instant, std::task::Waker)>>; 2],
    /// Something was armed with the wake timer (to forget at the drop).
    pub timer_used: AtomicBool,
    /// [`SandboxOptions::callback_slice`].
    pub callback_slice: Option<Duration>,
    /// A fiber guest suspended in the host: who to wake, and when its own
    /// timer (a `wait` timeout, a WASI sleep) or deadline runs out.
    pub fiber_wake: WakeSlot,
    /// The async host tasks waiting for the guest (one per host end):
    /// woken when a thread guest rings or ends, and, for a guest on the
    /// host's thread, when it moved (another end ran it) or the host
    /// sent, read, said goodbye or stopped it.
    pub host_task: WakeSlot,
    /// See [`Self::host_moved`].
    pub host_moves: std::sync::atomic::AtomicU64,
}

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
    pub fn suspend(&self, waker: &std::task::Waker, at: Option<Instant>) {
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
    pub fn wake(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        self.wake_fenced();
    }

    /// [`Self::wake`] for a caller that has just fenced (SeqCst) itself.
    /// The wakers are woken outside the lock (one may poll its task at
    /// once, and suspend again).
    pub fn wake_fenced(&self) {
        if !self.armed.load(Ordering::Relaxed) {
            return;
        }
        self.armed.store(false, Ordering::Relaxed);
        let woken = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|e| e.into_inner()));
        woken.into_iter().for_each(std::task::Waker::wake);
    }

    /// When the suspended guest's timer runs out (taken: each suspension
    /// says it again).
    pub fn take_wake_at(&self) -> Option<Instant> {
        self.wake_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

impl SandboxShared {
    pub fn window_base(&self) -> usize {
        self.placed_at.load(Ordering::Acquire)
    }

    /// The guest's peer id (its entry's index + 1).
    pub fn peer_id(&self) -> PeerId {
        PeerId::from_index(self.guest_index).expect("a guest index is below 255")
    }

    pub fn peer(&self) -> &PeerEntry {
        self.segment_file
            .segment()
            .peer(self.guest_index)
            .expect("guest index in range")
    }

    /// Asks the guest to stop: its next epoch check traps, a `wait`
    /// returns goodbye at once, a WASI sleep ends with the stop.
    pub fn request_stop(&self) {
        let placed = self.window_base() != NOT_PLACED;
        let now = *self
            .stopped_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(Instant::now);
        self.abandon_after(now);
        self.stop.store(true, Ordering::Release);
        // An in-process segment is not accessible before it is placed.
        if placed || self.segment_file.region().is_none() {
            doorbell_futex::wake_all(self.peer().h2g_doorbell.futex_word());
        }
        self.host_moved();
        self.fiber_wake.wake();
        self.host_task.wake();
        if let Some(t) = self
            .guest_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            t.unpark();
        }
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Records that the guest's code runs on the current thread.
    pub(crate) fn runs_on_this_thread(&self) {
        *self.guest_thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::thread::current());
    }

    pub fn goodbye_or_stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire) || self.segment_file.segment().header().host_goodbye()
    }

    /// The host-to-guest ring's write cursor when the ring holds
    /// anything, `None` when it is empty (a hint: the guest can scribble
    /// the cursors, which only affects its own wait).
    pub fn h2g_pending_write(&self) -> Option<u32> {
        let c = self
            .segment_file
            .segment()
            .h2g_ring(self.guest_index)
            .expect("in range")
            .cursors();
        (c.write != c.read || c.watermark != 0).then_some(c.write)
    }

    pub(crate) fn guest_done(&self) -> bool {
        self.guest_done.load(Ordering::Acquire)
            || (self.external_guest && self.peer().state() == Some(PeerState::Goodbye))
            || self.abandoned()
    }

    /// Past its deadline or a stop by [`ABANDON_AFTER`]: a guest still
    /// running then is blocked in a host call nothing interrupts, and is
    /// left behind rather than waited for.
    /// Marks the start (`true`) or the end of a callback call.
    pub(crate) fn callback_call(&self, starts: bool) {
        // No clock read per call: most calls return within a tick, and the
        // slice is counted from the first look inside the call.
        let at = if starts { CALL_NOT_TIMED } else { 0 };
        self.call_started_ns.store(at, Ordering::Relaxed);
    }

    /// When the callback call in progress runs out of its slice, if one
    /// is. The first look inside a call starts its slice (an epoch tick or
    /// a WASI sleep, both on the guest's thread).
    pub(crate) fn callback_slice_end(&self) -> Option<Instant> {
        let mut started = self.call_started_ns.load(Ordering::Relaxed);
        if started == 0 {
            return None;
        }
        let slice = self.callback_slice?;
        if started == CALL_NOT_TIMED {
            started = (self.started.elapsed().as_nanos() as u64).clamp(1, CALL_NOT_TIMED - 1);
            self.call_started_ns.store(started, Ordering::Relaxed);
        }
        self.started
            .checked_add(Duration::from_nanos(started))?
            .checked_add(slice)
    }

    /// Whether a callback call has run past its slice (checked at epoch
    /// ticks, and by the host calls that can wait: WASI sleeps).
    pub(crate) fn callback_overran(&self) -> bool {
        self.callback_slice_end()
            .is_some_and(|end| Instant::now() >= end)
    }

    /// Registers `waker` of the host end `side` with the wake timer at
    /// `at`, unless it has a registration at or before `at` that has not
    /// come yet.
    pub(crate) fn wake_task_at(&self, side: Side, at: Instant, waker: &std::task::Waker) {
        let mut armed = self.timer_at[side as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((when, w)) = &*armed
            && *when > Instant::now()
            && *when <= at
            && w.will_wake(waker)
        {
            return;
        }
        self.timer_used.store(true, Ordering::Relaxed);
        let key = TimerKey {
            sandbox: self.timer_id,
            side,
        };
        // What the timer holds for the key, which may be earlier.
        let when = crate::wake_timer::wake_at(key, at, waker);
        *armed = Some((when, waker.clone()));
    }

    /// Counts what the host did that lets a guest on its thread run
    /// again (a send, a drain, the goodbye, a stop): host memory, which the
    /// guest can not move, compared by an async task around its turn.
    pub(crate) fn host_moved(&self) {
        self.host_moves.fetch_add(1, Ordering::Relaxed);
    }

    /// See [`Self::host_moved`]. SeqCst: read after the task's
    /// suspension, as the wake slot's re-check is.
    pub(crate) fn host_moves(&self) -> u64 {
        self.host_moves.load(Ordering::SeqCst)
    }

    pub(crate) fn abandoned(&self) -> bool {
        let at = self.abandon_at_ns.load(Ordering::Relaxed);
        at != u64::MAX && self.started.elapsed().as_nanos() as u64 >= at
    }

    /// Moves the abandon point to `limit + ABANDON_AFTER` if that is
    /// earlier.
    pub(crate) fn abandon_after(&self, limit: Instant) {
        let at = limit
            .saturating_duration_since(self.started)
            .saturating_add(ABANDON_AFTER)
            .as_nanos()
            .min(u64::MAX as u128 - 1) as u64;
        self.abandon_at_ns.fetch_min(at, Ordering::Relaxed);
    }

    pub(crate) fn new(
        name: String,
        segment_file: Arc<SegmentFile>,
        guest_index: u32,
        spin: SpinBudget,
    ) -> Self {
        let doorbells = segment_file.segment().layout().features & FEATURE_DOORBELLS != 0;
        SandboxShared {
            name,
            segment_file,
            external_guest: false,
            doorbells,
            placed_at: Arc::new(AtomicUsize::new(NOT_PLACED)),
            guest_index,
            started: Instant::now(),
            stop: AtomicBool::new(false),
            guest_done: AtomicBool::new(false),
            spin,
            last_error_log: Default::default(),
            memory_refused: AtomicBool::new(false),
            violation: Default::default(),
            guest_thread: Default::default(),
            slot_wait: Some(DEFAULT_SLOT_WAIT),
            deadline: Default::default(),
            timeout: None,
            stopped_at: Default::default(),
            abandon_at_ns: std::sync::atomic::AtomicU64::new(u64::MAX),
            execution: Execution::Thread,
            resumed_at_tick: std::sync::atomic::AtomicU64::new(0),
            call_started_ns: std::sync::atomic::AtomicU64::new(0),
            timer_id: NEXT_TIMER_ID.fetch_add(1, Ordering::Relaxed),
            timer_at: Default::default(),
            timer_used: AtomicBool::new(false),
            callback_slice: None,
            fiber_wake: WakeSlot::default(),
            host_task: WakeSlot::default(),
            host_moves: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// Keys of sandboxes with the wake timer (unique: a counter).
static NEXT_TIMER_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Drop for SandboxShared {
    fn drop(&mut self) {
        if self.timer_used.load(Ordering::Relaxed) {
            crate::wake_timer::forget(self.timer_id);
        }
    }
}

/// The store data of a sandbox.
pub(crate) struct SandboxState {
    /// The WASI context, for a module that imports WASI (`None`: none is
    /// built, and nothing can ask for it).
    pub wasi: Option<WasiP1Ctx>,
    pub shared: Arc<SandboxShared>,
    pub deadline: Option<Instant>,
    pub memory_limit: MemoryLimit,
    /// Where the guest's WASI monotonic clock counts from.
    pub clock_origin: Instant,
    pub log_rate: host_imports::LogRate,
    /// The host-to-guest write cursor the last `wait` returned for: data
    /// the guest was told of and left queued (it waits for room to send,
    /// not for data) does not end its next `wait` again.
    pub wait_seen_write: Option<u32>,
    /// The next sleep of a `wait` polling a segment without doorbells:
    /// doubles up to a few ms while nothing happens.
    pub poll_backoff: Duration,
    /// The runtime's epoch ticker, told when this guest waits in the host.
    pub ticker: Arc<crate::epoch_ticker::TickerState>,
    /// Host functions, configuration and the pending host-call result.
    pub contract: crate::host_functions::ContractState,
}

impl SandboxState {
    /// The WASI context, made empty if the module was thought not to need
    /// one (the linker asks only when a WASI import is called).
    pub(crate) fn wasi(&mut self) -> &mut WasiP1Ctx {
        self.wasi
            .get_or_insert_with(|| wasmtime_wasi::WasiCtxBuilder::new().build_p1())
    }

    pub(crate) fn new(
        options: &SandboxOptions,
        shared: Arc<SandboxShared>,
        ticker: Arc<crate::epoch_ticker::TickerState>,
        wasi: bool,
    ) -> Result<Self, String> {
        let clock_origin = Instant::now();
        let log_rate = host_imports::LogRate::new(clock_origin);
        let contract = crate::host_functions::ContractState::new(
            &options.config,
            options.host_functions.as_ref(),
        )?;
        Ok(SandboxState {
            contract,
            wasi: if wasi {
                Some(build_wasi(options, &log_rate, &shared, clock_origin)?)
            } else {
                None
            },
            memory_limit: MemoryLimit::new(options.max_memory, shared.clone()),
            shared,
            deadline: None,
            clock_origin,
            log_rate,
            wait_seen_write: None,
            poll_backoff: host_imports::MIN_POLL_NAP,
            ticker,
        })
    }
}
