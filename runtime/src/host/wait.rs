//! How the host's ends wait for a guest, and wake it: spin then park on
//! the guest-to-host doorbell (a thread guest), run it turn by turn (a
//! guest on the host's thread: `drive_guest`, and `poll_guest` for the
//! async API), and ring or wake whoever runs it after a send or a drain.
//! A protocol violation found on the way stops the sandbox.

use std::ops::Deref;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use shmrt_primitives::ProtocolError;

use crate::error::SandboxError;
use crate::exec::guest_driver::{GuestDriver, Turn};
use crate::segment::doorbell_futex;
use crate::state::options::Execution;
use crate::state::shared::SandboxShared;
use crate::state::wake_timer::Side;

/// Where a host end lives: the address of its box in its
/// [`crate::Sandbox`], 0 outside one. An end that sends, receives, waits
/// or wakes away from it (moved out with `std::mem::swap` on
/// `Sandbox::sender`) may run on another thread than the other end, which
/// skips its fences while the ends are not marked apart: [`Self::check`]
/// marks them, once (see `SandboxShared::ends_apart`).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Home(usize);

impl Home {
    /// The home of `end`, where it is now.
    pub(super) fn of<T>(end: &T) -> Self {
        Home(std::ptr::from_ref(end) as usize)
    }

    /// Called first by every operation of `end` that sends, receives,
    /// waits or wakes.
    #[inline(always)]
    pub(super) fn check<T>(self, end: &T, shared: &SandboxShared) {
        if self.0 != std::ptr::from_ref(end) as usize && !shared.ends_apart() {
            shared.mark_ends_apart_now();
        }
    }
}

/// The error of a protocol violation, which stops this sandbox only; the
/// first one is why.
pub(super) fn protocol(shared: &SandboxShared, error: ProtocolError) -> SandboxError {
    shared.record_violation(error);
    shared.request_stop();
    SandboxError::Protocol {
        sandbox: shared.name().to_owned(),
        error,
    }
}

/// Spins `budget` rounds, then parks on the guest-to-host doorbell until
/// `ready` holds, the guest ends, or `deadline` passes. Returns whether
/// `ready` held.
///
/// `distrust` is for a caller whose reservation failed right after
/// `ready` said yes (a race with the guest, or a guest making them
/// disagree): no spin, and one nap (until the guest rings, at most
/// [`DISTRUST_NAP`]) before `ready` is asked again, so that a readiness
/// test the reservation contradicts makes a send wait, never spin.
/// A host function of `shared`'s own sandbox may not wait on its channel:
/// the guest waits for the host function (on a thread of its own, it would
/// never answer; on this thread, its driver is held by this very call).
fn refuse_reentry(shared: &SandboxShared) -> Result<(), SandboxError> {
    if crate::exec::host_functions::in_host_function_of(std::ptr::from_ref(shared) as usize) {
        return Err(SandboxError::Reentrant {
            sandbox: shared.name().to_string(),
        });
    }
    Ok(())
}

pub(super) fn block_on_guest(
    shared: &SandboxShared,
    driver: Option<&Mutex<GuestDriver>>,
    (spin, deadline, distrust): (u32, Option<Instant>, bool),
    mut ready: impl FnMut() -> Result<bool, SandboxError>,
) -> Result<bool, SandboxError> {
    refuse_reentry(shared)?;
    if let Some(driver) = driver {
        return drive_guest(shared, driver, deadline, ready);
    }
    let spin = if distrust { 0 } else { spin };
    for i in 0..spin {
        if ready()? {
            return Ok(true);
        }
        // A long spin still notices the guest ending and the deadline.
        if i % 1024 == 1023
            && (shared.guest_done() || deadline.is_some_and(|d| Instant::now() >= d))
        {
            break;
        }
        std::hint::spin_loop();
    }
    let bell = &shared.peer().g2h_doorbell;
    let mut distrust = distrust;
    loop {
        let seq = bell.prepare_wait();
        let r = if distrust { Ok(false) } else { ready() };
        if !matches!(r, Ok(false)) || shared.guest_done() {
            bell.finish_wait();
            return r;
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            bell.finish_wait();
            return Ok(false);
        }
        // Bounded naps: a guest that zeroes the waiter count can at worst
        // delay us by one nap.
        let most = if distrust {
            DISTRUST_NAP
        } else {
            Duration::from_millis(100)
        };
        distrust = false;
        let nap = deadline.map_or(most, |d| (d - now).min(most));
        doorbell_futex::park(bell.futex_word(), seq, Some(nap));
        bell.finish_wait();
    }
}

/// [`block_on_guest`] for a guest on the host's thread: runs it, turn by
/// turn, until `ready` holds, it ends, or `deadline` passes. While it
/// waits on its own timer, or for the host (a fiber in `wait`; a callback
/// with nothing queued, or whose answers fill the ring), this thread
/// sleeps until the timer, or until another thread's send or receive
/// wakes it.
pub(super) fn drive_guest(
    shared: &SandboxShared,
    driver: &Mutex<GuestDriver>,
    deadline: Option<Instant>,
    mut ready: impl FnMut() -> Result<bool, SandboxError>,
) -> Result<bool, SandboxError> {
    loop {
        if ready()? {
            return Ok(true);
        }
        if shared.guest_done() {
            return ready();
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
        let mut d = match driver.try_lock() {
            Ok(d) => d,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                // Another thread runs the guest (the other end of a split
                // sandbox): it rings when the guest moved.
                let bell = &shared.peer().g2h_doorbell;
                let seq = bell.prepare_wait();
                if !ready()? && !shared.guest_done() {
                    doorbell_futex::park(bell.futex_word(), seq, Some(Duration::from_millis(1)));
                }
                bell.finish_wait();
                continue;
            }
        };
        let turn = d.turn();
        if turn == Turn::Ran || turn == Turn::Ended {
            continue;
        }
        if ready()? {
            return Ok(true);
        }
        if shared.execution() == Execution::Callback {
            drop(d);
            // It runs again when the host sends or reads: on another
            // thread, which rings the host-to-guest doorbell (no guest
            // waits on it in this mode).
            let bell = &shared.peer().h2g_doorbell;
            let seq = bell.prepare_wait();
            let before = shared.h2g_pending_write();
            if !ready()? && !shared.guest_done() && shared.h2g_pending_write() == before {
                let nap = deadline.map_or(IDLE_NAP, |d| {
                    d.saturating_duration_since(Instant::now()).min(IDLE_NAP)
                });
                doorbell_futex::park(bell.futex_word(), seq, Some(nap));
            }
            bell.finish_wait();
        } else if let Turn::Idle { wake_at } = turn {
            d.idle_until(wake_at, deadline);
        }
    }
}

/// Turns a guest runs in one poll of an async host call before the task
/// yields to its executor: a callback that answered may be called again
/// at once, unless a call ran past an epoch tick (one long call a poll,
/// not four slices), and a fiber back from an epoch yield (10 ms of
/// computing) gives the thread to the other tasks first.
const POLL_BATCH: usize = 4;

/// The longest an async host call waits for a thread guest without
/// looking again (the nap of [`block_on_guest`]).
const THREAD_GUEST_NAP: Duration = Duration::from_millis(100);

/// How soon an async host call looks again at a guest another thread is
/// running (whose driver it could not take).
const BUSY_DRIVER_RETRY: Duration = Duration::from_millis(1);

/// Stays registered as a waiter on the guest-to-host doorbell while an
/// async host call waits for a thread guest (so that the guest rings, and
/// its `ring` wakes the task); unregisters when the call ends or is
/// dropped.
/// `S` is `&SandboxShared` for a call's own future, or an
/// `Arc<SandboxShared>` for a registration kept across polls by its owner
/// ([`super::receiver::RecvWait`]).
pub(super) struct AsyncWaiter<S: Deref<Target = SandboxShared>> {
    shared: S,
    registered: bool,
}

impl<S: Deref<Target = SandboxShared>> AsyncWaiter<S> {
    pub(super) fn new(shared: S) -> Self {
        AsyncWaiter {
            shared,
            registered: false,
        }
    }

    /// The sandbox it waits on.
    pub(super) fn shared(&self) -> &SandboxShared {
        &self.shared
    }

    pub(super) fn register(&mut self) {
        if !self.registered {
            self.shared.peer().g2h_doorbell.prepare_wait();
            self.registered = true;
        }
    }
}

impl<S: Deref<Target = SandboxShared>> Drop for AsyncWaiter<S> {
    fn drop(&mut self) {
        if self.registered {
            self.shared.peer().g2h_doorbell.finish_wait();
        }
    }
}

/// One poll of an async host call: `Ready(Ok(true))` once `ready` holds,
/// `Ready(Ok(false))` once the guest has ended and it does not. A guest on
/// the host's thread runs here, at most [`POLL_BATCH`] turns (one for a
/// fiber that computes); a thread guest wakes the task when it rings or
/// ends. A task that waits is one of the sandbox's `host_task` waiters
/// (the other end's task may wait at once), and arms the wake timer as
/// `side`.
pub(super) fn poll_guest(
    shared: &SandboxShared,
    driver: Option<&Mutex<GuestDriver>>,
    (waiter, side): (&mut AsyncWaiter<impl Deref<Target = SandboxShared>>, Side),
    cx: &mut std::task::Context<'_>,
    ready: &mut impl FnMut() -> Result<bool, SandboxError>,
) -> std::task::Poll<Result<bool, SandboxError>> {
    use std::task::Poll;
    // The epoch tick when this poll first ran the guest.
    let mut first_tick = None;
    for _ in 0..POLL_BATCH {
        if ready()? {
            return Poll::Ready(Ok(true));
        }
        if shared.guest_done() {
            return Poll::Ready(ready());
        }
        let Some(driver) = driver else {
            // Registered, then looked at again: a ring in between found
            // the waker stored. Looked at again after a nap too, as a
            // blocking call does: a guest need not ring (a foreign one,
            // or one that zeroes the waiter count).
            waiter.register();
            shared.host_task().suspend(cx.waker(), None);
            shared.wake_task_at(side, Instant::now() + THREAD_GUEST_NAP, cx.waker());
            if ready()? {
                return Poll::Ready(Ok(true));
            }
            if shared.guest_done() {
                return Poll::Ready(ready());
            }
            return Poll::Pending;
        };
        // A change from here to the suspension below means the guest has
        // something to do that the turn did not see.
        let seen = shared.host_moves();
        let mut d = match driver.try_lock() {
            Ok(d) => d,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                // Another task or thread runs the guest now (it may be
                // parked there): its turns wake us when the guest moves;
                // look again in a moment too, not at once.
                shared.host_task().suspend(cx.waker(), None);
                shared.wake_task_at(side, Instant::now() + BUSY_DRIVER_RETRY, cx.waker());
                return if ready()? {
                    Poll::Ready(Ok(true))
                } else {
                    Poll::Pending
                };
            }
        };
        let tick = *first_tick.get_or_insert_with(|| d.ticks());
        match d.turn_for_task(cx.waker()) {
            Turn::Ended => continue,
            Turn::Ran if shared.execution() == Execution::Callback && d.ticks() == tick => continue,
            Turn::Ran if shared.execution() == Execution::Callback => break,
            Turn::Ran => {
                // The epoch yield woke the task: others go first.
                drop(d);
                return if ready()? {
                    Poll::Ready(Ok(true))
                } else {
                    Poll::Pending
                };
            }
            Turn::Idle { wake_at } => {
                drop(d);
                shared.host_task().suspend(cx.waker(), None);
                if shared.host_moves() != seen {
                    continue;
                }
                if let Some(at) = wake_at {
                    shared.wake_task_at(side, at, cx.waker());
                }
                if ready()? {
                    return Poll::Ready(Ok(true));
                }
                return Poll::Pending;
            }
        }
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// Longest sleep of a host waiting for a guest on its thread that waits
/// for the host: a wake-up lost to a scribbled waiter count costs this.
const IDLE_NAP: Duration = Duration::from_millis(50);

/// The longest nap of a send whose reservation failed after it was told
/// there was room: short, since in an honest race the room may be back
/// already without a ring; long enough that a guest making the two
/// disagree on purpose costs the host next to no CPU.
const DISTRUST_NAP: Duration = Duration::from_millis(1);

/// The earlier of two optional deadlines.
pub(super) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// After draining the guest's ring: wakes a guest parked for room, with
/// no fence (the guest's waits for room are bounded and re-check).
pub(super) fn room_freed(shared: &SandboxShared) {
    match shared.execution() {
        // Auto is resolved by the spawn (`Plugin::execution`).
        Execution::Thread | Execution::Auto => {
            let bell = &shared.peer().h2g_doorbell;
            if shared.doorbells() && bell.has_waiters() {
                doorbell_futex::ring(bell);
            }
        }
        // A guest on the host's thread that waits for room runs again
        // when a host end runs it: a fiber's poller, or a task waiting.
        Execution::Fiber | Execution::Callback => {
            wake_who_runs_the_guest(shared, &shared.peer().h2g_doorbell)
        }
    }
}

/// Rings `bell` only if its owner is parked: a fence and a load otherwise
/// (the eventcount's publisher path), no syscall.
pub(super) fn notify(shared: &SandboxShared, bell: &shmrt_primitives::Doorbell) {
    match shared.execution() {
        // Auto is resolved by the spawn (`Plugin::execution`).
        Execution::Thread | Execution::Auto => {
            if shared.doorbells() && bell.should_ring() {
                doorbell_futex::ring(bell);
            }
        }
        Execution::Fiber | Execution::Callback => wake_who_runs_the_guest(shared, bell),
    }
}

/// A guest on the host's thread: wakes whoever runs it next, a fiber's
/// poller, a task waiting (the other end's, maybe), or a host thread
/// parked on `bell`. One fence for all (the eventcount's and the wake
/// slots').
fn wake_who_runs_the_guest(shared: &SandboxShared, bell: &shmrt_primitives::Doorbell) {
    // What the caller published stays before the flag's load (the
    // frequent side of `asymmetric_fence`).
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
    if !shared.ends_apart() {
        // The ends take turns on one thread (or through a lock): a waiter
        // registered before this call did so earlier in that order and
        // sees what the caller published at its next look; no other
        // thread parks on `bell` (only the other end of a split sandbox
        // does) and no turn runs meanwhile (`host_moved` is for that).
        // Two fences a round trip fewer (see `SandboxShared::ends_apart`).
        shared.fiber_wake().wake_fenced();
        shared.host_task().wake_fenced();
        return;
    }
    shared.host_moved();
    std::sync::atomic::fence(Ordering::SeqCst);
    shared.fiber_wake().wake_fenced();
    shared.host_task().wake_fenced();
    if shared.execution() == Execution::Callback && shared.doorbells() && bell.has_waiters() {
        doorbell_futex::ring(bell);
    }
}
