//! What one sandbox's guest, its host ends and its imports share
//! ([`SandboxShared`]): made once from the sandbox's options, its fields
//! private, read through the methods below.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shmrt_primitives::segment_header::FEATURE_DOORBELLS;
use shmrt_primitives::{PeerEntry, PeerId, PeerState, ProtocolError};

use super::options::{Execution, SandboxOptions, SpinBudget};
use super::wake_slot::WakeSlot;
use super::wake_timer::{self, Side, TimerKey};
use crate::segment::doorbell_futex;
use crate::segment::file::SegmentFile;
use crate::segment::memory_window::NOT_PLACED;

/// How long past its deadline, or past a stop, a guest's thread is waited
/// for before it is left behind (see [`crate::SandboxHandle::join`]).
pub const ABANDON_AFTER: Duration = Duration::from_millis(100);

/// [`SandboxShared::call_started_ns`] of a callback call whose slice has
/// not started yet.
const CALL_NOT_TIMED: u64 = u64::MAX;

/// Whose guest a [`SandboxShared`] is, and which peer entry it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GuestKind {
    /// Spawned by this runtime in a segment of its own (entry 0), run as
    /// its options say.
    Spawned,
    /// Run here on a thread, as guest `index` of a segment another
    /// program made.
    Attached {
        /// The guest's peer entry.
        index: u32,
    },
    /// Run in another process, as guest `index` of a segment this
    /// process made ([`crate::HostSegment`]): this side is only its host,
    /// and the guest has ended when its entry says Goodbye.
    External {
        /// The guest's peer entry.
        index: u32,
    },
}

/// State shared by the guest (its thread, its fiber or its calls), the
/// host ends and the imports.
pub(crate) struct SandboxShared {
    name: String,
    segment_file: Arc<SegmentFile>,
    /// The guest runs in another process (this side is only the host):
    /// it has ended when its peer entry says Goodbye.
    external_guest: bool,
    /// The segment carries live doorbell words; without them (a vox
    /// segment), waits poll with backoff.
    doorbells: bool,
    placed_at: Arc<AtomicUsize>,
    guest_index: u32,
    started: Instant,
    /// The host asked the guest to stop.
    stop: AtomicBool,
    /// The guest's entry point has returned (or trapped). Release after
    /// its last commit (SYNC POINT "guest_done").
    guest_done: AtomicBool,
    spin: SpinBudget,
    /// The last error-level log line of the guest (a panic message), to
    /// explain a trap.
    last_error_log: Mutex<Option<String>>,
    /// The memory limit refused a `memory.grow`.
    memory_refused: AtomicBool,
    /// The first protocol violation the host found: it is why the sandbox
    /// was stopped, so `join` reports it whatever the guest did next.
    violation: Mutex<Option<ProtocolError>>,
    /// The thread running the guest's code (the caller's during the
    /// instantiation, then the guest thread): a stop unparks it from a
    /// WASI sleep.
    guest_thread: Mutex<Option<std::thread::Thread>>,
    /// [`SandboxOptions::slot_wait`], for the host's sends.
    slot_wait: Option<Duration>,
    /// The guest's deadline and its timeout, once set (`join` gives up on
    /// a guest blocked past it).
    deadline: Mutex<Option<Instant>>,
    timeout: Option<Duration>,
    /// When the host first asked the guest to stop.
    stopped_at: Mutex<Option<Instant>>,
    /// Nanoseconds after `started` past which the guest counts as ended
    /// whether or not its thread returned ([`ABANDON_AFTER`] past its
    /// deadline or a stop); `u64::MAX` while neither is set. Relaxed: a
    /// hint read in wait loops, each of which also naps and re-checks.
    abandon_at_ns: AtomicU64,
    /// Where the guest runs its code.
    execution: Execution,
    /// The ticker's tick when a fiber guest was last resumed.
    resumed_at_tick: AtomicU64,
    /// A callback guest's call in progress: nanoseconds after `started`
    /// when its slice began (at least 1), [`CALL_NOT_TIMED`] while the call
    /// has not been looked at yet, 0 between calls.
    call_started_ns: AtomicU64,
    /// This sandbox's key with the wake timer.
    timer_id: u64,
    /// What each side has armed with the wake timer, so that an async
    /// host polling again and again takes the timer's lock once, not once
    /// per poll ([`Side`] is the index).
    timer_at: [Mutex<Option<(Instant, std::task::Waker)>>; 2],
    /// Something was armed with the wake timer (to forget at the drop).
    timer_used: AtomicBool,
    /// [`SandboxOptions::callback_slice`].
    callback_slice: Option<Duration>,
    /// A fiber guest suspended in the host: who to wake, and when its own
    /// timer (a `wait` timeout, a WASI sleep) or deadline runs out.
    fiber_wake: WakeSlot,
    /// The async host tasks waiting for the guest (one per host end):
    /// woken when a thread guest rings or ends, and, for a guest on the
    /// host's thread, when it moved (another end ran it) or the host
    /// sent, read, said goodbye or stopped it.
    host_task: WakeSlot,
    /// See [`Self::host_moved`].
    host_moves: AtomicU64,
    /// See [`Self::ends_apart`].
    ends_apart: AtomicBool,
}

impl SandboxShared {
    /// The state of a sandbox run with `options` (its execution already
    /// resolved) in `segment_file`. An attached or external guest runs on
    /// a thread, with no callback slice.
    pub(crate) fn new(
        options: &SandboxOptions,
        segment_file: Arc<SegmentFile>,
        kind: GuestKind,
    ) -> Self {
        let doorbells = segment_file.segment().layout().features & FEATURE_DOORBELLS != 0;
        let (guest_index, execution, callback_slice) = match kind {
            GuestKind::Spawned => (0, options.execution, options.callback_slice),
            GuestKind::Attached { index } | GuestKind::External { index } => {
                (index, Execution::Thread, None)
            }
        };
        SandboxShared {
            name: options.name.clone(),
            segment_file,
            external_guest: matches!(kind, GuestKind::External { .. }),
            doorbells,
            placed_at: Arc::new(AtomicUsize::new(NOT_PLACED)),
            guest_index,
            started: Instant::now(),
            stop: AtomicBool::new(false),
            guest_done: AtomicBool::new(false),
            spin: options.spin,
            last_error_log: Default::default(),
            memory_refused: AtomicBool::new(false),
            violation: Default::default(),
            guest_thread: Default::default(),
            slot_wait: options.slot_wait,
            deadline: Default::default(),
            timeout: options.timeout,
            stopped_at: Default::default(),
            abandon_at_ns: AtomicU64::new(u64::MAX),
            execution,
            resumed_at_tick: AtomicU64::new(0),
            call_started_ns: AtomicU64::new(0),
            timer_id: NEXT_TIMER_ID.fetch_add(1, Ordering::Relaxed),
            timer_at: Default::default(),
            timer_used: AtomicBool::new(false),
            callback_slice,
            fiber_wake: WakeSlot::default(),
            host_task: WakeSlot::default(),
            host_moves: AtomicU64::new(0),
            // A thread guest's wakes always fence (the guest waits too):
            // its ends start apart, and never pay for the barrier.
            ends_apart: AtomicBool::new(
                matches!(execution, Execution::Thread | Execution::Auto)
                    || !super::asymmetric_fence::available(),
            ),
        }
    }

    /// The sandbox's name, for messages and logs.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The segment and the host's view of it.
    pub(crate) fn segment_file(&self) -> &SegmentFile {
        &self.segment_file
    }

    /// The guest's peer entry's index.
    pub(crate) fn guest_index(&self) -> u32 {
        self.guest_index
    }

    /// Whether the segment carries live doorbell words (else waits poll).
    pub(crate) fn doorbells(&self) -> bool {
        self.doorbells
    }

    /// Where the guest's window was placed ([`NOT_PLACED`] until then),
    /// set by the memory that places it.
    pub(crate) fn placed_at(&self) -> &Arc<AtomicUsize> {
        &self.placed_at
    }

    /// When the sandbox's state was made: the guest's `now_ns` counts
    /// from here.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// Spin rounds before the host parks in a blocking call.
    pub(crate) fn spin(&self) -> SpinBudget {
        self.spin
    }

    /// [`SandboxOptions::slot_wait`].
    pub(crate) fn slot_wait(&self) -> Option<Duration> {
        self.slot_wait
    }

    /// [`SandboxOptions::timeout`].
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Where the guest runs its code.
    pub(crate) fn execution(&self) -> Execution {
        self.execution
    }

    /// [`SandboxOptions::callback_slice`] of a callback guest.
    pub(crate) fn callback_slice(&self) -> Option<Duration> {
        self.callback_slice
    }

    /// Who to wake when a fiber guest suspended in the host can go on.
    pub(crate) fn fiber_wake(&self) -> &WakeSlot {
        &self.fiber_wake
    }

    /// The async host tasks waiting for the guest.
    pub(crate) fn host_task(&self) -> &WakeSlot {
        &self.host_task
    }

    /// The last error-level log line of the guest (a panic message), kept
    /// to explain a trap that follows.
    pub(crate) fn last_error_log(&self) -> MutexGuard<'_, Option<String>> {
        self.last_error_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Records that the memory limit refused a growth.
    pub(crate) fn refuse_memory(&self) {
        self.memory_refused.store(true, Ordering::Release);
    }

    /// Whether the memory limit refused a growth.
    pub(crate) fn memory_refused(&self) -> bool {
        self.memory_refused.load(Ordering::Acquire)
    }

    /// Keeps `error` as why the sandbox is stopped, unless an earlier
    /// violation is.
    pub(crate) fn record_violation(&self, error: ProtocolError) {
        self.violation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(error);
    }

    /// The first protocol violation the host found, if any.
    pub(crate) fn violation(&self) -> Option<ProtocolError> {
        *self.violation.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the guest's deadline (`join` gives up on a guest blocked past
    /// it, by [`ABANDON_AFTER`]).
    pub(crate) fn set_deadline(&self, deadline: Option<Instant>) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
        if let Some(d) = deadline {
            self.abandon_after(d);
        }
    }

    /// The guest's deadline, once set.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the epoch tick at which a fiber guest was resumed.
    pub(crate) fn resumed_at(&self, tick: u64) {
        self.resumed_at_tick.store(tick, Ordering::Relaxed);
    }

    /// The epoch tick at which a fiber guest was last resumed.
    pub(crate) fn resumed_at_tick(&self) -> u64 {
        self.resumed_at_tick.load(Ordering::Relaxed)
    }

    /// Whether the guest's code has returned (or trapped), not counting a
    /// guest left behind ([`Self::guest_done`] does).
    pub(crate) fn guest_returned(&self) -> bool {
        self.guest_done.load(Ordering::Acquire)
    }

    /// The guest has ended, however: its entry says goodbye, and the
    /// host's ends, parked or async, see it done.
    pub(crate) fn mark_guest_done(&self) {
        let peer = self.peer();
        peer.set_goodbye();
        // Release: everything the guest committed is visible to a host that
        // sees `guest_done` (SYNC POINT "guest_done").
        self.guest_done.store(true, Ordering::Release);
        doorbell_futex::ring_and_wake_all(&peer.g2h_doorbell);
        self.host_task.wake();
    }

    /// Where the segment window starts in the guest's memory
    /// ([`NOT_PLACED`] before it is placed).
    pub(crate) fn window_base(&self) -> usize {
        self.placed_at.load(Ordering::Acquire)
    }

    /// The guest's peer id (its entry's index + 1).
    pub(crate) fn peer_id(&self) -> PeerId {
        PeerId::from_index(self.guest_index).expect("a guest index is below 255")
    }

    /// The guest's peer entry, through the host's view.
    pub(crate) fn peer(&self) -> &PeerEntry {
        self.segment_file
            .segment()
            .peer(self.guest_index)
            .expect("guest index in range")
    }

    /// Asks the guest to stop: its next epoch check traps, a `wait`
    /// returns goodbye at once, a WASI sleep ends with the stop.
    pub(crate) fn request_stop(&self) {
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

    /// Whether the host asked the guest to stop.
    pub(crate) fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Records that the guest's code runs on the current thread.
    pub(crate) fn runs_on_this_thread(&self) {
        *self.guest_thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::thread::current());
    }

    /// Whether the host said goodbye or asked the guest to stop.
    pub(crate) fn goodbye_or_stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire) || self.segment_file.segment().header().host_goodbye()
    }

    /// The host-to-guest ring's write cursor when the ring holds
    /// anything, `None` when it is empty (a hint: the guest can scribble
    /// the cursors, which only affects its own wait).
    pub(crate) fn h2g_pending_write(&self) -> Option<u32> {
        let c = self
            .segment_file
            .segment()
            .h2g_ring(self.guest_index)
            .expect("in range")
            .cursors();
        (c.write != c.read || c.watermark != 0).then_some(c.write)
    }

    /// Whether the guest has ended: returned, gone from its entry (an
    /// external guest), or left behind.
    pub(crate) fn guest_done(&self) -> bool {
        self.guest_done.load(Ordering::Acquire)
            || (self.external_guest && self.peer().state() == Some(PeerState::Goodbye))
            || self.abandoned()
    }

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
        let when = wake_timer::wake_at(key, at, waker);
        *armed = Some((when, waker.clone()));
    }

    /// Counts what the host did that lets a guest on its thread run
    /// again (a send, a drain, the goodbye, a stop): host memory, which the
    /// guest can not move, compared by an async task around its turn.
    pub(crate) fn host_moved(&self) {
        self.host_moves.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the host's two ends may run on two threads at once. Until
    /// they may, every wait of a host end and every wake of one are
    /// ordered by the caller's own order (one thread, or threads taking
    /// turns through a lock), and a guest on the host's thread waits on
    /// nothing but them: the wakes after a send or a receive skip their
    /// fence (`host::wait`). Set for good by `Sandbox::split`,
    /// `into_caller` and `ends`, before their ends can move (Relaxed:
    /// moving a value to another thread orders it), and by the first use
    /// of an end found away from its sandbox ([`Self::mark_ends_apart_now`]).
    /// Set from the start for a thread guest, and when the process has no
    /// asymmetric fence.
    ///
    /// A waker that skips its fence must fence the compiler between what
    /// it published and this load (see `asymmetric_fence`).
    pub(crate) fn ends_apart(&self) -> bool {
        self.ends_apart.load(Ordering::Relaxed)
    }

    /// See [`Self::ends_apart`]: for ends that can not run yet.
    pub(crate) fn set_ends_apart(&self) {
        if !self.ends_apart() {
            self.ends_apart.store(true, Ordering::Relaxed);
        }
    }

    /// See [`Self::ends_apart`]: an end runs away from its sandbox (moved
    /// out with `std::mem::swap`), maybe while the other end runs on its
    /// thread without fences. Its store, then a barrier on every thread:
    /// the other end's next wake either sees the flag and fences, or
    /// published before the barrier, so that this end's next look sees it.
    #[cold]
    pub(crate) fn mark_ends_apart_now(&self) {
        self.ends_apart.store(true, Ordering::SeqCst);
        super::asymmetric_fence::heavy();
    }

    /// See [`Self::host_moved`]. SeqCst: read after the task's
    /// suspension, as the wake slot's re-check is.
    pub(crate) fn host_moves(&self) -> u64 {
        self.host_moves.load(Ordering::SeqCst)
    }

    /// Past its deadline or a stop by [`ABANDON_AFTER`]: a guest still
    /// running then is blocked in a host call nothing interrupts, and is
    /// left behind rather than waited for.
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
}

/// Keys of sandboxes with the wake timer (unique: a counter).
static NEXT_TIMER_ID: AtomicU64 = AtomicU64::new(0);

impl Drop for SandboxShared {
    fn drop(&mut self) {
        if self.timer_used.load(Ordering::Relaxed) {
            wake_timer::forget(self.timer_id);
        }
    }
}
