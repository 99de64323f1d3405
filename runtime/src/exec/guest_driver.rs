//! A guest that runs on the host's thread ([`Execution::Fiber`] and
//! [`Execution::Callback`]): the driver that runs it for one turn when a
//! host end needs it to move (a `recv` finding nothing, a `send` finding
//! no room, `join`), and how a turn ended.
//!
//! A fiber guest is the future of its entry point's `call_async`: a turn
//! polls it until it suspends (in `wait`, a WASI sleep, or an epoch yield)
//! or returns. A callback guest is its exported `shmrt_on_messages`: a
//! turn calls it, synchronously, when messages are queued for it (or once
//! more after the host's goodbye), and it answers them and returns.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use wasmtime::{Store, TypedFunc};

use super::callback_cursors::CursorRecord;
use super::guest_end::{self, exit_status, report_dropped, unread_messages};
use super::guest_thread::Entry;
use crate::error::SandboxError;
use crate::segment::doorbell_futex;
use crate::state::epoch_ticker::{InWasm, TickerState};
use crate::state::options::Execution;
use crate::state::shared::SandboxShared;
use crate::state::store::SandboxState;

/// The export a callback guest answers its queued messages with: returns
/// 0 to be called again, anything else to end with that status.
pub const CALLBACK_EXPORT: &str = "shmrt_on_messages";

/// The running entry point of a fiber guest, with the log-drop count
/// taken when it ends.
type FiberRun = Pin<Box<dyn Future<Output = (wasmtime::Result<i32>, u64)> + Send>>;

/// What runs the guest.
enum Driven {
    Fiber(FiberRun),
    Callback {
        store: Box<Store<SandboxState>>,
        handler: TypedFunc<(), i32>,
        /// The guest's cursor record, published after each call.
        cursors: Option<CursorRecord>,
        /// Calls made since the host's goodbye (see
        /// [`MAX_CALLS_AFTER_GOODBYE`]).
        calls_after_goodbye: u32,
    },
    /// The guest ended; its store is gone.
    Ended,
}

/// Calls of a callback guest after the host's goodbye that may leave its
/// inbox not empty: far more than a ring's worth of messages needs (each
/// call answers what fits), and what ends a guest that keeps its inbox
/// looking full while answering nothing.
const MAX_CALLS_AFTER_GOODBYE: u32 = 100_000;

/// What a turn came to: a [`Turn`], or the guest's end with its status.
enum Step {
    Turn(Turn),
    End(Result<i32, SandboxError>),
}

/// How one turn of the guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// It ran and may run again at once (an epoch yield, or a callback
    /// that answered).
    Ran,
    /// It waits: for the host (a message, room, the goodbye) or its own
    /// timer, which runs out at `wake_at`.
    Idle { wake_at: Option<Instant> },
    /// It ended (its status is kept for `join`).
    Ended,
}

/// The waker a fiber guest is polled with: says that it was woken (an
/// epoch yield wakes it at once, so the guest can run again), and wakes
/// whoever drives it: a thread blocked in a host call, or an async task.
#[derive(Debug)]
struct TurnWaker {
    woken: AtomicBool,
    target: Mutex<WakeTarget>,
}

#[derive(Debug)]
enum WakeTarget {
    Thread(Thread),
    Task(Waker),
}

impl Wake for TurnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        match &*self.target.lock().unwrap_or_else(|e| e.into_inner()) {
            WakeTarget::Thread(t) => t.unpark(),
            WakeTarget::Task(w) => w.wake_by_ref(),
        }
    }
}

/// Runs a guest on the thread of whoever calls it; see the module docs.
pub(crate) struct GuestDriver {
    shared: Arc<SandboxShared>,
    guest: Driven,
    waker: Arc<TurnWaker>,
    /// The thread `waker` wakes, when it wakes a thread.
    waker_thread: Option<std::thread::ThreadId>,
    /// Told while the guest runs wasm (the epoch must tick for its
    /// deadline and its yields), by `in_wasm` when it has one.
    ticker: Arc<TickerState>,
    in_wasm: Option<Arc<InWasm>>,
    timeout: Option<Duration>,
    /// The guest's deadline (set before the instantiation).
    deadline: Option<Instant>,
    /// How the guest ended, once it has (taken by `join`).
    status: Option<Result<i32, SandboxError>>,
}

impl std::fmt::Debug for GuestDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestDriver")
            .field("sandbox", &self.shared.name())
            .field("execution", &self.shared.execution())
            .field("ended", &matches!(self.guest, Driven::Ended))
            .finish()
    }
}

impl GuestDriver {
    /// A fiber guest: `initialize` (if any), then its entry point, as one
    /// future that owns the store.
    pub fn fiber(
        mut store: Store<SandboxState>,
        entry: Entry,
        initialize: Option<TypedFunc<(), ()>>,
        timeout: Option<Duration>,
        shared: Arc<SandboxShared>,
    ) -> Self {
        let ticker = store.data().ticker.clone();
        let in_wasm = ticker.flag();
        store.data_mut().in_wasm = in_wasm.clone();
        let run = async move {
            let result = async {
                if let Some(init) = initialize {
                    init.call_async(&mut store, ()).await?;
                }
                match entry {
                    Entry::Main(f) => f.call_async(&mut store, ()).await,
                    Entry::Start(f) => f.call_async(&mut store, ()).await.map(|()| 0),
                }
            }
            .await;
            (result, store.data_mut().log_rate.take_dropped())
        };
        Self::new(
            Driven::Fiber(Box::pin(run)),
            (ticker, in_wasm),
            timeout,
            shared,
        )
    }

    /// A callback guest, instantiated and initialized.
    pub fn callback(
        mut store: Store<SandboxState>,
        (handler, cursors): (TypedFunc<(), i32>, Option<CursorRecord>),
        timeout: Option<Duration>,
        shared: Arc<SandboxShared>,
    ) -> Self {
        let ticker = store.data().ticker.clone();
        let in_wasm = ticker.flag();
        store.data_mut().in_wasm = in_wasm.clone();
        let guest = Driven::Callback {
            store: Box::new(store),
            handler,
            cursors,
            calls_after_goodbye: 0,
        };
        Self::new(guest, (ticker, in_wasm), timeout, shared)
    }

    fn new(
        guest: Driven,
        (ticker, in_wasm): (Arc<TickerState>, Option<Arc<InWasm>>),
        timeout: Option<Duration>,
        shared: Arc<SandboxShared>,
    ) -> Self {
        let deadline = shared.deadline();
        GuestDriver {
            shared,
            guest,
            waker: Arc::new(TurnWaker {
                woken: AtomicBool::new(false),
                target: Mutex::new(WakeTarget::Thread(std::thread::current())),
            }),
            waker_thread: Some(std::thread::current().id()),
            ticker,
            in_wasm,
            timeout,
            deadline,
            status: None,
        }
    }

    /// Epoch ticks so far (they advance while guests run wasm).
    pub fn ticks(&self) -> u64 {
        self.ticker.ticks()
    }

    /// Whether the guest has ended.
    pub fn ended(&self) -> bool {
        matches!(self.guest, Driven::Ended)
    }

    /// How the guest ended, taken (once).
    pub fn take_status(&mut self) -> Option<Result<i32, SandboxError>> {
        self.status.take()
    }

    /// Runs the guest for one turn on this thread, which a wake-up of the
    /// guest unparks.
    pub fn turn(&mut self) -> Turn {
        thread_local! {
            // This thread's id, without `thread::current()`'s reference
            // count per turn.
            static THIS_THREAD: std::thread::ThreadId = std::thread::current().id();
        }
        let me = THIS_THREAD.with(|id| *id);
        if self.waker_thread != Some(me) {
            self.waker_thread = Some(me);
            *self.waker.target.lock().unwrap_or_else(|e| e.into_inner()) =
                WakeTarget::Thread(std::thread::current());
            self.shared.runs_on_this_thread();
        }
        self.turn_once()
    }

    /// Runs the guest for one turn for an async task, which a wake-up of
    /// the guest wakes (`task`).
    pub fn turn_for_task(&mut self, task: &Waker) -> Turn {
        {
            let mut target = self.waker.target.lock().unwrap_or_else(|e| e.into_inner());
            match &*target {
                WakeTarget::Task(w) if w.will_wake(task) => {}
                _ => *target = WakeTarget::Task(task.clone()),
            }
        }
        self.waker_thread = None;
        self.turn_once()
    }

    fn turn_once(&mut self) -> Turn {
        let mut moved = false;
        match self.step(&mut moved) {
            Step::Turn(turn) => {
                // The other host end may wait for what the guest did: a
                // task, or a thread parked on the guest-to-host doorbell
                // while this one ran the guest (a callback that leaves its
                // cursors to the host does not ring it itself).
                if moved {
                    std::sync::atomic::compiler_fence(Ordering::SeqCst);
                    if !self.shared.ends_apart() {
                        // One thread holds both ends: nothing to fence
                        // against (see `wake_who_runs_the_guest`).
                        self.shared.host_task().wake_fenced();
                        return turn;
                    }
                    self.shared.host_task().wake();
                    let bell = &self.shared.peer().g2h_doorbell;
                    if bell.has_waiters() {
                        doorbell_futex::ring(bell);
                    }
                }
                turn
            }
            Step::End(status) => {
                self.end(status);
                Turn::Ended
            }
        }
    }

    /// One turn; how it ended (the caller ends the guest if it did).
    /// `moved`: whether the guest moved its cursors (read from its inbox
    /// or wrote to its outbox) in the turn, which only a turn that runs it
    /// can do (the host's receiver on another thread clearing the G2H
    /// watermark meanwhile reads as a move too: one needless wake-up).
    fn step(&mut self, moved: &mut bool) -> Step {
        let GuestDriver {
            shared,
            guest,
            waker,
            ticker,
            in_wasm,
            timeout,
            deadline,
            ..
        } = self;
        let ticker = (&**ticker, in_wasm.as_deref());
        let shared: &SandboxShared = shared;
        if matches!(guest, Driven::Ended) {
            return Step::Turn(Turn::Ended);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            // Between turns nothing of the guest runs to notice.
            return Step::End(Err(SandboxError::Timeout {
                sandbox: shared.name().to_owned(),
                after: timeout.unwrap_or_default(),
            }));
        }
        match guest {
            Driven::Ended => Step::Turn(Turn::Ended),
            // A stop reaches a fiber in wasm at its next epoch check and
            // one in `wait` at once; one suspended in a WASI call that
            // does not end (a FIFO read) is dropped after the stop, as a
            // thread guest is left behind.
            Driven::Fiber(_) if shared.stop_requested() && shared.abandoned() => {
                Step::End(Err(SandboxError::Stopped {
                    sandbox: shared.name().to_owned(),
                }))
            }
            Driven::Fiber(run) => {
                waker.woken.store(false, Ordering::Relaxed);
                shared.resumed_at(ticker.0.ticks());
                let task = Waker::from(waker.clone());
                let mut cx = Context::from_waker(&task);
                let before = ring_positions(shared);
                let polled = {
                    let _running = ticker.0.running_flagged(ticker.1);
                    run.as_mut().poll(&mut cx)
                };
                *moved = ring_positions(shared) != before;
                match polled {
                    Poll::Ready((result, dropped)) => {
                        Step::End(guest_end::status(result, dropped, shared, *timeout))
                    }
                    // An epoch yield wakes its own waker: run again.
                    Poll::Pending if waker.woken.load(Ordering::Acquire) => Step::Turn(Turn::Ran),
                    Poll::Pending => Step::Turn(Turn::Idle {
                        wake_at: shared.fiber_wake().take_wake_at(),
                    }),
                }
            }
            Driven::Callback {
                store,
                handler,
                cursors,
                calls_after_goodbye,
            } => call_back(
                shared,
                ticker,
                *timeout,
                (store, handler, calls_after_goodbye),
                cursors.as_ref(),
                moved,
            ),
        }
    }

    /// The guest ended with `status`: its store is dropped (its memory
    /// freed), its entry says goodbye, and the host's ends see it done.
    fn end(&mut self, status: Result<i32, SandboxError>) {
        self.guest = Driven::Ended;
        self.status = Some(status);
        self.shared.mark_guest_done();
    }

    /// Ends a guest that has not ended (its handle is dropped): stopped.
    pub fn stop_now(&mut self) {
        if !self.ended() {
            self.end(Err(SandboxError::Stopped {
                sandbox: self.shared.name().to_owned(),
            }));
        }
    }

    /// Runs the guest until it ends: `join`. A fiber guest waiting for the
    /// host waits on (until its timer, its deadline or a stop); a callback
    /// guest, which has no life between calls, is given the goodbye first.
    pub fn run_to_end(&mut self) -> Result<i32, SandboxError> {
        loop {
            if let Some(status) = self.take_status() {
                return status;
            }
            if self.ended() {
                // Taken before: `join` is called once.
                return Err(SandboxError::Closed {
                    sandbox: self.shared.name().to_owned(),
                });
            }
            match self.turn() {
                Turn::Ran | Turn::Ended => {}
                Turn::Idle { wake_at } => match self.shared.execution() {
                    // Idle with nothing queued: the goodbye makes it end
                    // (after the goodbye a call that moves nothing ends it).
                    Execution::Callback => {
                        let index = self.shared.guest_index();
                        doorbell_futex::say_goodbye(
                            self.shared.segment_file().segment(),
                            index..index + 1,
                        );
                    }
                    _ => self.idle_until(wake_at, None),
                },
            }
        }
    }

    /// Sleeps while the guest is idle: until it is woken (the host of
    /// another thread sent, or stopped it), its timer `wake_at`, its
    /// deadline, or `until`; at most 50 ms at once.
    pub fn idle_until(&self, wake_at: Option<Instant>, until: Option<Instant>) {
        if self.waker_thread != Some(std::thread::current().id()) {
            // Woken only by its timer.
            std::thread::sleep(Duration::from_millis(1));
            return;
        }
        let deadline = self.shared.deadline();
        let now = Instant::now();
        let mut nap = Duration::from_millis(50);
        for limit in [wake_at, deadline, until].into_iter().flatten() {
            nap = nap.min(limit.saturating_duration_since(now));
        }
        if !self.waker.woken.load(Ordering::Acquire) && !self.shared.stop_requested() {
            std::thread::park_timeout(nap);
        }
    }
}

/// Runs one call of a guest on the host's thread. A WASI guest called
/// from inside a tokio runtime is run on a thread of its own for the
/// call: wasmtime-wasi's synchronous imports (and `wasi_poll`'s) run
/// their futures with tokio's `block_on`, which panics inside a runtime.
pub(crate) fn off_async_runtime<R: Send>(
    shared: &SandboxShared,
    wasi: bool,
    call: impl FnOnce() -> R + Send,
) -> R {
    if !wasi || tokio::runtime::Handle::try_current().is_err() {
        return call();
    }
    let mut call = Some(call);
    let slot = &mut call;
    let done = std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("shmrt-wasi-call".into())
            // As a guest thread's: `max_wasm_stack` and the host's frames.
            .stack_size(crate::state::guest_stack::GUEST_THREAD_STACK)
            .spawn_scoped(scope, move || {
                // A stop unparks the thread running the guest.
                shared.runs_on_this_thread();
                (slot.take().expect("called once"))()
            });
        let result = spawned
            .ok()?
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        shared.runs_on_this_thread();
        Some(result)
    });
    // No thread to be had: called here, as before (a WASI call panics).
    done.unwrap_or_else(|| (call.take().expect("not called"))())
}

/// One turn of a callback guest: a call of its handler when messages are
/// queued for it (or after the host's goodbye), and what it came to.
fn call_back(
    shared: &SandboxShared,
    ticker: (&TickerState, Option<&InWasm>),
    timeout: Option<Duration>,
    (store, handler, calls_after_goodbye): (
        &mut Box<Store<SandboxState>>,
        &TypedFunc<(), i32>,
        &mut u32,
    ),
    cursors: Option<&CursorRecord>,
    moved: &mut bool,
) -> Step {
    if shared.stop_requested() {
        return Step::End(Err(SandboxError::Stopped {
            sandbox: shared.name().to_owned(),
        }));
    }
    let goodbye = shared.goodbye_or_stopped();
    if shared.h2g_pending_write().is_none() && !goodbye {
        return Step::Turn(Turn::Idle { wake_at: None });
    }
    if goodbye {
        *calls_after_goodbye += 1;
        if *calls_after_goodbye > MAX_CALLS_AFTER_GOODBYE {
            return Step::End(Err(SandboxError::Trap {
                sandbox: shared.name().to_owned(),
                message: format!(
                    "the callback was called {MAX_CALLS_AFTER_GOODBYE} times after the \
                         host's goodbye and still left messages queued (it moves its \
                         cursors without answering)"
                ),
            }));
        }
    }
    if let Err(e) = crate::state::guest_stack::check_room(shared.name()) {
        return Step::End(Err(e));
    }
    let before = ring_positions(shared);
    let called = {
        let _running = ticker.0.running_flagged(ticker.1);
        shared.callback_call(true);
        let called = off_async_runtime(shared, store.data().wasi.is_some(), || {
            handler.call(&mut **store, ())
        });
        shared.callback_call(false);
        called
    };
    if let Some(cursors) = cursors {
        match &called {
            Ok(_) => cursors.publish(&**store, shared),
            // What the messages before the failing one read and answered
            // still reaches the host (see `publish_after_trap`).
            Err(_) => cursors.publish_after_trap(&**store, shared, before),
        }
    }
    // Once a call: the cursors the host published for it included.
    *moved = ring_positions(shared) != before;
    match called {
        // After the goodbye, the call that leaves nothing
        // queued is the last.
        Ok(0) if goodbye && shared.h2g_pending_write().is_none() => {
            let dropped = store.data_mut().log_rate.take_dropped();
            report_dropped(shared, dropped);
            Step::End(Ok(0))
        }
        // A call that read and wrote nothing (its answers do
        // not fit, or it ignores its ring) waits for the host;
        // after the goodbye it can do no more, and ends with
        // what it left counted (the one rule of `join`, `recv`
        // and `recv_async`).
        Ok(0) if !*moved => {
            if !goodbye {
                return Step::Turn(Turn::Idle { wake_at: None });
            }
            let dropped = store.data_mut().log_rate.take_dropped();
            report_dropped(shared, dropped);
            match unread_messages(shared) {
                Some(0) => Step::End(Ok(0)),
                unread => Step::End(Err(SandboxError::Unanswered {
                    sandbox: shared.name().to_owned(),
                    unread: unread.unwrap_or(0),
                })),
            }
        }
        Ok(0) => Step::Turn(Turn::Ran),
        Ok(status) => Step::End(Ok(status)),
        Err(e) => Step::End(exit_status(e, shared, timeout)),
    }
}

/// Where the guest's reading of its inbox and writing of its outbox
/// stand: a callback that moved neither did nothing.
pub(super) fn ring_positions(shared: &SandboxShared) -> Option<(u32, u32, u32)> {
    let segment = shared.segment_file().segment();
    let h2g = segment.h2g_ring(shared.guest_index())?.cursors();
    let g2h = segment.g2h_ring(shared.guest_index())?.cursors();
    Some((h2g.read, g2h.write, g2h.watermark))
}
