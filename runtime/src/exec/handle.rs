//! What the host holds of a running guest: [`SandboxHandle`], which joins
//! it (its thread, or a guest on the host's thread run to its end) or
//! stops it, [`StopHandle`], and the heartbeat of an attached guest.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::guest_driver::GuestDriver;
use super::guest_end::unread_messages;
use crate::error::SandboxError;
use crate::segment::doorbell_futex;
use crate::state::options::Execution;
use crate::state::shared::SandboxShared;

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
        f.debug_tuple("StopHandle").field(&self.0.name()).finish()
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
            .field("sandbox", &self.shared.name())
            .field("execution", &self.shared.execution())
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
    pub fn execution(&self) -> Execution {
        self.shared.execution()
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
    /// its deadline or a stop: [`ABANDON_AFTER`](crate::ABANDON_AFTER) later, `join` returns
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
        match self.shared.violation() {
            Some(error) => Err(SandboxError::Protocol {
                sandbox: self.shared.name().to_owned(),
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

/// Joins the guest's thread, unless it is still running [`ABANDON_AFTER`](crate::ABANDON_AFTER)
/// past the sandbox's deadline or a stop (`None`: left behind, detached).
fn wait_for_guest(
    thread: JoinHandle<Result<i32, SandboxError>>,
    shared: &SandboxShared,
) -> Option<Result<i32, SandboxError>> {
    let bell = &shared.peer().g2h_doorbell;
    loop {
        // The guest's last act is to raise `guest_done` and ring.
        if thread.is_finished() || shared.guest_returned() {
            return Some(thread.join().unwrap_or_else(|_| {
                Err(SandboxError::Trap {
                    sandbox: shared.name().to_owned(),
                    message: "the guest thread panicked".into(),
                })
            }));
        }
        if shared.abandoned() {
            tracing::warn!(
                sandbox = shared.name(),
                "the guest is blocked in a host call that can not be interrupted; \
                 its thread is left behind"
            );
            return None;
        }
        let seq = bell.sequence();
        if shared.guest_returned() {
            continue;
        }
        doorbell_futex::park(bell.futex_word(), seq, Some(Duration::from_millis(20)));
    }
}

/// What `join` says of a guest it left behind.
fn abandoned(shared: &SandboxShared) -> SandboxError {
    let deadline = shared.deadline();
    if deadline.is_some_and(|d| Instant::now() >= d) {
        SandboxError::Timeout {
            sandbox: shared.name().to_owned(),
            after: shared.timeout().unwrap_or_default(),
        }
    } else {
        SandboxError::Stopped {
            sandbox: shared.name().to_owned(),
        }
    }
}
