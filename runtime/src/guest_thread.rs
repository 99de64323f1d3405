//! The guest's thread: running its entry point under the deadline and
//! the stop flag, classifying how it ended (status, trap, timeout, fuel,
//! memory, stop), and joining it (or leaving behind a guest blocked in a
//! host call nothing interrupts).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::{Store, TypedFunc, UpdateDeadline};

use crate::doorbell_futex;
use crate::error::SandboxError;
use crate::guest_driver::GuestDriver;
use crate::host_imports;
use crate::interrupts::{CallbackOverran, DeadlineExceeded, SegmentTruncated, Stopped};
use crate::sandbox_state::{SandboxShared, SandboxState};

pub(crate) enum Entry {
    Main(TypedFunc<(), i32>),
    Start(TypedFunc<(), ()>),
}

impl Entry {
    pub(crate) fn find(
        instance: &wasmtime::Instance,
        store: &mut Store<SandboxState>,
    ) -> Option<Self> {
        if let Ok(f) = instance.get_typed_func::<(), i32>(&mut *store, "shmrt_main") {
            return Some(Entry::Main(f));
        }
        instance
            .get_typed_func::<(), ()>(store, "_start")
            .ok()
            .map(Entry::Start)
    }
}

/// Sets `guest_done` and wakes the host however the guest thread ends.
struct DoneGuard(Arc<SandboxShared>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        let peer = self.0.peer();
        peer.set_goodbye();
        // Release: everything the guest committed is visible to a host that
        // sees `guest_done` (SYNC POINT "guest_done").
        self.0.guest_done.store(true, Ordering::Release);
        doorbell_futex::ring_and_wake_all(&peer.g2h_doorbell);
        self.0.host_task.wake();
    }
}

pub(crate) fn run_guest(
    mut store: Store<SandboxState>,
    entry: Entry,
    initialize: Option<TypedFunc<(), ()>>,
    timeout: Option<Duration>,
    shared: Arc<SandboxShared>,
    claim: bool,
) -> Result<i32, SandboxError> {
    let _done = DoneGuard(shared.clone());
    shared.runs_on_this_thread();
    let ticker = store.data().ticker.clone();
    let _running = ticker.running();
    if claim && let Err(e) = shared.peer().try_claim_reserved() {
        return Err(SandboxError::Instantiate {
            sandbox: shared.name.clone(),
            message: format!("claiming the peer entry: {e}"),
        });
    }
    // The deadline and the stop flag were set to be checked before the
    // instantiation (`watch_deadline`).
    let result = (|| {
        if let Some(init) = initialize {
            init.call(&mut store, ())?;
        }
        match entry {
            Entry::Main(f) => f.call(&mut store, ()),
            Entry::Start(f) => f.call(&mut store, ()).map(|()| 0),
        }
    })();
    let dropped = store.data_mut().log_rate.take_dropped();
    if dropped > 0 {
        tracing::warn!(
            target: "shmrt::guest",
            sandbox = shared.name.as_str(),
            "{dropped} more log lines of this guest were dropped (more than {} a second)",
            host_imports::LogRate::PER_SECOND
        );
    }
    result.or_else(|e| exit_status(e, &shared, timeout))
}

/// From now on, every epoch tick of guest code checks the stop flag, the
/// segment file and `deadline` (also what a `wait` is bounded by).
///
/// A fiber guest (`yield_to_host`) also yields to whoever polls it at
/// every tick, so that guests sharing a thread can not starve each other.
pub(crate) fn watch_deadline(
    store: &mut Store<SandboxState>,
    shared: &Arc<SandboxShared>,
    deadline: Option<Instant>,
    yield_to_host: bool,
) {
    store.data_mut().deadline = deadline;
    *shared.deadline.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
    if let Some(d) = deadline {
        shared.abandon_after(d);
    }
    store.set_epoch_deadline(1);
    let cb_shared = shared.clone();
    store.epoch_deadline_callback(move |ctx| {
        if cb_shared.stop.load(Ordering::Acquire) {
            return Err(wasmtime::Error::new(Stopped));
        }
        if cb_shared.segment_file.was_truncated() {
            return Err(wasmtime::Error::new(SegmentTruncated));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(wasmtime::Error::new(DeadlineExceeded));
        }
        if cb_shared.callback_overran() {
            return Err(wasmtime::Error::new(CallbackOverran(
                cb_shared.callback_slice.unwrap_or_default(),
            )));
        }
        // A fiber yields once it has run for a tick since it was resumed:
        // the epoch may have moved on while it was suspended (other guests
        // ran), and yielding at its first check then would send every
        // resumed fiber back through its executor before it answers.
        let ran_a_tick =
            || ctx.data().ticker.ticks() > cb_shared.resumed_at_tick.load(Ordering::Relaxed);
        Ok(if yield_to_host && ran_a_tick() {
            UpdateDeadline::Yield(1)
        } else {
            UpdateDeadline::Continue(1)
        })
    });
}

/// Maps how a guest call failed to an exit status or an error.
pub(crate) fn exit_status(
    e: wasmtime::Error,
    shared: &SandboxShared,
    timeout: Option<Duration>,
) -> Result<i32, SandboxError> {
    let sandbox = shared.name.as_str();
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Ok(exit.0);
    }
    if e.downcast_ref::<DeadlineExceeded>().is_some() {
        return Err(SandboxError::Timeout {
            sandbox: sandbox.into(),
            after: timeout.unwrap_or_default(),
        });
    }
    if e.downcast_ref::<Stopped>().is_some() {
        return Err(SandboxError::Stopped {
            sandbox: sandbox.into(),
        });
    }
    // The backtrace names functions from the module's name section.
    let failure = crate::guest_output::escape_line(&format!("{e:?}"));
    tracing::debug!(sandbox, "guest failed: {failure}");
    if let Some(wasmtime::Trap::OutOfFuel) = e.downcast_ref::<wasmtime::Trap>() {
        return Err(SandboxError::OutOfFuel {
            sandbox: sandbox.into(),
        });
    }
    // The trap itself, without the wasm backtrace (logged at debug).
    let mut message = match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => e.root_cause().to_string(),
    };
    if let Some(last) = shared.last_error_log.lock().ok().and_then(|mut l| l.take()) {
        message = format!("{last} ({message})");
    }
    if shared.memory_refused.load(Ordering::Acquire) {
        return Err(SandboxError::MemoryLimit {
            sandbox: sandbox.into(),
            message: format!("a memory.grow was refused, then the guest trapped: {message}"),
        });
    }
    Err(SandboxError::Trap {
        sandbox: sandbox.into(),
        message,
    })
}

/// Stops a sandbox from another thread; see [`SandboxHandle::stop`].
#[derive(Clone)]
pub struct StopHandle(Arc<SandboxShared>);

impl StopHandle {
    /// Asks the guest to stop, as [`SandboxHandle::stop`].
    pub fn stop(&self) {
        self.0.request_stop();
    }
}

impl std::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StopHandle").field(&self.0.name).finish()
    }
}

/// Joins a sandbox's guest: its thread, or (a guest on the host's
/// thread) runs it to its end.
pub struct SandboxHandle {
    pub(crate) shared: Arc<SandboxShared>,
    pub(crate) run: GuestRun,
    /// An attached guest's heartbeat, ended (and joined) with the handle.
    pub(crate) heartbeat: Option<Heartbeat>,
}

/// The heartbeat of an attached guest: its peer entry's `last_heartbeat`
/// stamped every half interval of the segment's header, from a thread of
/// its own, until the guest ends or its handle goes.
pub(crate) struct Heartbeat {
    stop: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// The longest nap between two beats, whatever interval the (foreign)
    /// header asks for: also how late a heartbeat notices a guest that
    /// ended without its handle being dropped.
    pub(crate) const MAX_PERIOD: Duration = Duration::from_millis(500);

    pub(crate) fn start(
        shared: Arc<SandboxShared>,
        interval_ns: u64,
        now_ns: fn() -> u64,
    ) -> std::io::Result<Self> {
        let period =
            Duration::from_nanos(interval_ns / 2).clamp(Duration::from_millis(1), Self::MAX_PERIOD);
        let stop = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("shmrt-heartbeat".into())
            .stack_size(64 << 10)
            .spawn(move || {
                let (stopped, wake) = &*thread_stop;
                let mut stopped = stopped.lock().unwrap_or_else(|e| e.into_inner());
                while !*stopped && !shared.guest_done() {
                    shared.peer().heartbeat(now_ns());
                    stopped = wake
                        .wait_timeout(stopped, period)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            })?;
        Ok(Heartbeat {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        let (stopped, wake) = &*self.stop;
        *stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where a guest's code runs.
pub(crate) enum GuestRun {
    /// On its own thread (`None` once joined).
    Thread(Option<JoinHandle<Result<i32, SandboxError>>>),
    /// On the thread of whoever drives it (shared with the host's ends).
    Driven(Arc<std::sync::Mutex<GuestDriver>>),
}

impl GuestRun {
    /// The driver of a guest on the host's thread.
    pub(crate) fn driver(&self) -> Option<Arc<std::sync::Mutex<GuestDriver>>> {
        match self {
            GuestRun::Thread(_) => None,
            GuestRun::Driven(d) => Some(d.clone()),
        }
    }
}

/// Locks a driver, whatever a panic left in it.
pub(crate) fn lock_driver(
    driver: &std::sync::Mutex<GuestDriver>,
) -> std::sync::MutexGuard<'_, GuestDriver> {
    driver.lock().unwrap_or_else(|e| e.into_inner())
}

impl std::fmt::Debug for SandboxHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxHandle")
            .field("sandbox", &self.shared.name)
            .field("execution", &self.shared.execution)
            .field("joined", &matches!(self.run, GuestRun::Thread(None)))
            .finish()
    }
}

impl SandboxHandle {
    /// Asks the guest to stop: its next epoch check traps, a `wait`
    /// returns goodbye at once, a WASI sleep ends. `join` then reports
    /// [`SandboxError::Stopped`] (or the guest's own status, if it
    /// returned first).
    pub fn stop(&self) {
        self.shared.request_stop();
    }

    /// A handle that stops this sandbox from anywhere (a signal handler's
    /// thread, a watchdog) while another thread is in [`Self::join`].
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.shared.clone())
    }

    /// [`Self::join`], then how many messages the host sent that the
    /// guest never took (still queued in its ring when it ended): what a
    /// restart loses. `None` when that can not be told (the guest left its
    /// ring inconsistent).
    pub fn join_counting_unread(self) -> (Result<i32, SandboxError>, Option<usize>) {
        let shared = self.shared.clone();
        let status = self.join();
        // A callback ended after the goodbye has had its unread taken.
        let taken = match &status {
            Err(SandboxError::Unanswered { unread, .. }) => *unread,
            _ => 0,
        };
        (status, unread_messages(&shared).map(|n| n + taken))
    }

    /// Where the guest runs ([`crate::Execution::Auto`] resolved).
    pub fn execution(&self) -> crate::Execution {
        self.shared.execution
    }

    /// Whether the guest's entry point has returned.
    pub fn is_finished(&self) -> bool {
        self.shared.guest_done()
    }

    /// Waits for the guest to return; its exit status (the value of
    /// `shmrt_main`, or the WASI exit code) or how it failed. A sandbox
    /// the host stopped for a protocol violation reports the violation,
    /// however the guest ended after it (trapped at the stop, or returned
    /// when its `wait` said goodbye).
    ///
    /// A guest blocked in a host call nothing can interrupt (a WASI open or
    /// read of a FIFO an operator put in a `--dir`) is not waited for past
    /// its deadline or a stop: [`ABANDON_AFTER`] later, `join` returns
    /// the timeout (or the stop) and leaves the guest's thread behind,
    /// with its memory, until the call returns.
    ///
    /// A guest on the host's thread is run here until it returns: a fiber
    /// guest waiting for messages waits on (call
    /// [`crate::HostSender::goodbye`] first); a callback guest, which has
    /// no life between calls, is given the goodbye, answers what is
    /// queued, and ends with 0 (or the status its last call returned).
    pub fn join(mut self) -> Result<i32, SandboxError> {
        let status = match &mut self.run {
            GuestRun::Thread(thread) => {
                let thread = thread.take().expect("joined once");
                match wait_for_guest(thread, &self.shared) {
                    Some(status) => status,
                    None => Err(abandoned(&self.shared)),
                }
            }
            GuestRun::Driven(driver) => lock_driver(driver).run_to_end(),
        };
        let violation = *self
            .shared
            .violation
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match violation {
            Some(error) => Err(SandboxError::Protocol {
                sandbox: self.shared.name.clone(),
                error,
            }),
            None => status,
        }
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        match &mut self.run {
            GuestRun::Thread(thread) => {
                if let Some(t) = thread.take() {
                    self.shared.request_stop();
                    let _ = wait_for_guest(t, &self.shared);
                }
            }
            GuestRun::Driven(driver) => {
                self.shared.request_stop();
                // Its store (and memory) go now, not with the last host end.
                lock_driver(driver).stop_now();
            }
        }
    }
}

/// How long past its deadline, or past a stop, a guest's thread is waited
/// for before it is left behind (see [`SandboxHandle::join`]).
pub const ABANDON_AFTER: Duration = Duration::from_millis(100);

/// Joins the guest's thread, unless it is still running [`ABANDON_AFTER`]
/// past the sandbox's deadline or a stop (`None`: left behind, detached).
fn wait_for_guest(
    thread: JoinHandle<Result<i32, SandboxError>>,
    shared: &SandboxShared,
) -> Option<Result<i32, SandboxError>> {
    let bell = &shared.peer().g2h_doorbell;
    loop {
        // The guest's last act is to raise `guest_done` and ring.
        if thread.is_finished() || shared.guest_done.load(Ordering::Acquire) {
            return Some(thread.join().unwrap_or_else(|_| {
                Err(SandboxError::Trap {
                    sandbox: shared.name.clone(),
                    message: "the guest thread panicked".into(),
                })
            }));
        }
        if shared.abandoned() {
            tracing::warn!(
                sandbox = shared.name.as_str(),
                "the guest is blocked in a host call that can not be interrupted; \
                 its thread is left behind"
            );
            return None;
        }
        let seq = bell.sequence();
        if shared.guest_done.load(Ordering::Acquire) {
            continue;
        }
        doorbell_futex::park(bell.futex_word(), seq, Some(Duration::from_millis(20)));
    }
}

/// What `join` says of a guest it left behind.
fn abandoned(shared: &SandboxShared) -> SandboxError {
    let deadline = *shared.deadline.lock().unwrap_or_else(|e| e.into_inner());
    if deadline.is_some_and(|d| Instant::now() >= d) {
        SandboxError::Timeout {
            sandbox: shared.name.clone(),
            after: shared.timeout.unwrap_or_default(),
        }
    } else {
        SandboxError::Stopped {
            sandbox: shared.name.clone(),
        }
    }
}

/// Messages left in the host-to-guest ring of a guest that has ended,
/// taken as the guest would take them (slots freed): bounded by the
/// ring's size.
pub(crate) fn unread_messages(shared: &SandboxShared) -> Option<usize> {
    let segment = shared.segment_file.segment();
    let (_, mut rx) = segment.guest_channel(shared.guest_index).ok()?;
    let most = segment.layout().ring_capacity as usize / 8 + 1;
    for n in 0..most {
        match rx.try_recv() {
            Ok(Some(_)) => {}
            Ok(None) => return Some(n),
            Err(_) => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doorbell_futex::SpinBudget;
    use crate::segment_file::SegmentFile;

    fn shared() -> SandboxShared {
        let mut config = shmrt_primitives::SegmentConfig::single_guest();
        config.ring_capacity = 4096;
        let file = SegmentFile::create_memfd(&config).expect("a memfd segment");
        SandboxShared::new("t".into(), Arc::new(file), 0, SpinBudget::default())
    }

    fn status(e: wasmtime::Error, shared: &SandboxShared) -> Result<i32, SandboxError> {
        exit_status(e, shared, Some(Duration::from_secs(2)))
    }

    #[test]
    fn exit_classification() {
        let s = shared();
        assert_eq!(
            status(wasmtime::Error::new(wasmtime_wasi::I32Exit(7)), &s).ok(),
            Some(7)
        );
        assert!(matches!(
            status(wasmtime::Error::new(DeadlineExceeded), &s),
            Err(SandboxError::Timeout { after, .. }) if after == Duration::from_secs(2)
        ));
        assert!(matches!(
            status(wasmtime::Error::new(Stopped), &s),
            Err(SandboxError::Stopped { .. })
        ));
        assert!(matches!(
            status(wasmtime::Error::new(wasmtime::Trap::OutOfFuel), &s),
            Err(SandboxError::OutOfFuel { .. })
        ));
        match status(wasmtime::Error::new(SegmentTruncated), &s) {
            Err(SandboxError::Trap { message, .. }) => {
                assert_eq!(message, SegmentTruncated.to_string())
            }
            other => panic!("{other:?}"),
        }
        // The guest's last error log explains the trap that follows.
        *s.last_error_log.lock().unwrap() = Some("panicked at lib.rs".into());
        match status(
            wasmtime::Error::new(wasmtime::Trap::UnreachableCodeReached),
            &s,
        ) {
            Err(SandboxError::Trap { message, .. }) => {
                assert!(message.starts_with("panicked at lib.rs ("), "{message}")
            }
            other => panic!("{other:?}"),
        }
        // A refused memory.grow turns a later trap into a memory limit.
        s.memory_refused.store(true, Ordering::Release);
        assert!(matches!(
            status(
                wasmtime::Error::new(wasmtime::Trap::UnreachableCodeReached),
                &s
            ),
            Err(SandboxError::MemoryLimit { .. })
        ));
    }
}
