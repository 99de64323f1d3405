//! The host's ends of a sandbox's channel: [`HostSender`] (host to guest)
//! and [`HostReceiver`] (guest to host, yielding [`HostMessage`]s in
//! place), with the blocking policy they share: spin, then park on the
//! guest-to-host doorbell; a protocol violation stops the sandbox.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use shmrt_primitives::channel::{HeldSlot, Message, Receiver, Reservation, Sender};
use shmrt_primitives::{ProtocolError, SendError};
use shmrt_primitives::{SharedBytes, SharedBytesMut};

use crate::doorbell_futex;
use crate::error::SandboxError;
use crate::guest_driver::{GuestDriver, Turn};
use crate::interrupts::deadline_after;
use crate::options::Execution;
use crate::sandbox_state::SandboxShared;
use crate::wake_timer::Side;
use std::sync::Mutex;

fn protocol(shared: &SandboxShared, error: ProtocolError) -> SandboxError {
    // A violation stops this sandbox only; the first one is why.
    shared
        .violation
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert(error);
    shared.request_stop();
    SandboxError::Protocol {
        sandbox: shared.name.clone(),
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
fn block_on_guest(
    shared: &SandboxShared,
    driver: Option<&Mutex<GuestDriver>>,
    (spin, deadline, distrust): (u32, Option<Instant>, bool),
    mut ready: impl FnMut() -> Result<bool, SandboxError>,
) -> Result<bool, SandboxError> {
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
fn drive_guest(
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
        if shared.execution == Execution::Callback {
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
struct AsyncWaiter<'a> {
    shared: &'a SandboxShared,
    registered: bool,
}

impl<'a> AsyncWaiter<'a> {
    fn new(shared: &'a SandboxShared) -> Self {
        AsyncWaiter {
            shared,
            registered: false,
        }
    }

    fn register(&mut self) {
        if !self.registered {
            self.shared.peer().g2h_doorbell.prepare_wait();
            self.registered = true;
        }
    }
}

impl Drop for AsyncWaiter<'_> {
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
fn poll_guest(
    shared: &SandboxShared,
    driver: Option<&Mutex<GuestDriver>>,
    (waiter, side): (&mut AsyncWaiter<'_>, Side),
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
            shared.host_task.suspend(cx.waker(), None);
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
                shared.host_task.suspend(cx.waker(), None);
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
            Turn::Ran if shared.execution == Execution::Callback && d.ticks() == tick => continue,
            Turn::Ran if shared.execution == Execution::Callback => break,
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
                shared.host_task.suspend(cx.waker(), None);
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
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What a reservation found.
enum Room<'a> {
    Reserved(Reservation<'a>),
    /// No ring room now: the guest reads slowly (plain back-pressure).
    RingFull,
    /// No slot now: the guest holds them, or this side's fair share is
    /// in flight.
    NoSlot,
}

/// Reserves room for `len` bytes now. Inlined into each send, as
/// `Sender::send` is: called out of line, it made a spinning round trip
/// with a guest 30-50 ns slower here (measured within one run against the
/// inlined path).
#[inline(always)]
fn reserve_now<'a>(
    tx: &'a mut Sender,
    shared: &SandboxShared,
    len: usize,
) -> Result<Room<'a>, SandboxError> {
    match tx.reserve(len) {
        Ok(r) => Ok(Room::Reserved(r)),
        Err(SendError::Full) => Ok(Room::RingFull),
        Err(SendError::Exhausted) => Ok(Room::NoSlot),
        Err(e) => Err(send_error(shared, e)),
    }
}

/// How long a send has found no slot while the guest freed none of the
/// class: past the sandbox's slot wait it is an error naming the class
/// and its holders, not a silent deadlock (a peer of the format may hold
/// every slot; a zero-copy plugin may hold what it received).
#[derive(Default)]
struct SlotStall {
    /// Since when, and how many slots of the class the host held then.
    since: Option<(Instant, u32)>,
}

impl SlotStall {
    /// When the slot wait runs out, if a stall is being timed.
    fn deadline(&self, shared: &SandboxShared) -> Option<Instant> {
        let (since, _) = self.since?;
        since.checked_add(shared.slot_wait?)
    }

    #[cold]
    fn check(
        &mut self,
        shared: &SandboxShared,
        tx: &Sender,
        len: usize,
    ) -> Result<(), SandboxError> {
        let Some(limit) = shared.slot_wait else {
            return Ok(());
        };
        let Some(holders) = tx.pool().holders(len as u32) else {
            return Ok(());
        };
        let now = Instant::now();
        match self.since {
            // The guest freed a slot of ours since: progress, start over.
            Some((_, held)) if holders.by_host < held => self.since = Some((now, holders.by_host)),
            Some((since, _)) if now - since >= limit => {
                return Err(SandboxError::SlotsExhausted {
                    sandbox: shared.name.clone(),
                    len,
                    class: holders.class,
                    slot_payload: holders.slot_payload,
                    slot_count: holders.slot_count,
                    by_host: holders.by_host,
                    by_guest: holders.by_guests,
                    waited: now - since,
                });
            }
            Some(_) => {}
            None => self.since = Some((now, holders.by_host)),
        }
        Ok(())
    }
}

/// A send that can not succeed by waiting.
#[cold]
fn send_error(shared: &SandboxShared, e: SendError) -> SandboxError {
    match e {
        SendError::TooLarge { len, max } => SandboxError::TooLarge {
            sandbox: shared.name.clone(),
            len,
            max,
        },
        SendError::Protocol(e) => protocol(shared, e),
        SendError::Full | SendError::Exhausted => SandboxError::WouldBlock {
            sandbox: shared.name.clone(),
            what: "send",
            after: Duration::ZERO,
        },
    }
}

/// The host's sending end: host to guest.
pub struct HostSender {
    tx: Sender,
    shared: Arc<SandboxShared>,
    /// Rounds a wait for room spins before it parks.
    spin: u32,
    /// Runs a guest on the host's thread, when it is one.
    driver: Option<Arc<Mutex<GuestDriver>>>,
}

impl std::fmt::Debug for HostSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSender")
            .field("sandbox", &self.shared.name)
            .field("tx", &self.tx)
            .field("spin", &self.spin)
            .finish()
    }
}

impl HostSender {
    /// Rounds a wait for room spins before it parks on the doorbell (the
    /// sandbox's spin budget by default). A producer much faster than its
    /// guest (a bulk feed) does better parking at once: its spinning takes
    /// a core the guest could use.
    pub fn set_spin(&mut self, rounds: u32) {
        self.spin = rounds;
    }

    pub(crate) fn new(
        tx: Sender,
        shared: Arc<SandboxShared>,
        driver: Option<Arc<Mutex<GuestDriver>>>,
    ) -> Self {
        let spin = shared.spin.0;
        HostSender {
            tx,
            shared,
            spin,
            driver,
        }
    }

    /// Largest payload that fits a slot.
    pub fn max_payload(&self) -> u32 {
        self.tx.max_payload()
    }

    /// Sends `payload` if there is room now; `Ok(false)` when the ring or
    /// the pool is full.
    pub fn try_send(&mut self, payload: &[u8]) -> Result<bool, SandboxError> {
        let sent = self.try_send_no_notify(payload)?;
        if sent {
            self.notify();
        }
        Ok(sent)
    }

    /// Sends `payload`, waiting for room as long as the guest runs.
    pub fn send(&mut self, payload: &[u8]) -> Result<(), SandboxError> {
        self.send_with(payload.len(), |mut b| b.copy_from(payload))
    }

    /// Sends `len` bytes written in place by `fill` (ring or slot memory,
    /// never copied again), waiting for room as long as the guest runs.
    /// Errs with `Closed` once the guest has ended.
    ///
    /// `fill` gets the reserved bytes as a [`SharedBytesMut`]: they are in
    /// the guest's window, which a hostile guest may write at any moment,
    /// so they are written through the view (`copy_from`, `write_at`,
    /// `read_from`), never borrowed as a plain slice.
    pub fn send_with(
        &mut self,
        len: usize,
        fill: impl FnOnce(SharedBytesMut<'_>),
    ) -> Result<(), SandboxError> {
        self.send_with_timeout(len, fill, None)
    }

    /// [`Self::send_with`] with a limit on the wait.
    pub fn send_with_timeout(
        &mut self,
        len: usize,
        fill: impl FnOnce(SharedBytesMut<'_>),
        timeout: Option<Duration>,
    ) -> Result<(), SandboxError> {
        self.send_cut(
            len,
            |b| {
                fill(b);
                len
            },
            timeout,
        )
    }

    /// The send loop: `fill` says how many of the `len` reserved bytes to
    /// send. Waits for ring room as long as the guest runs (or `timeout`),
    /// for a slot as long as the guest frees some (or the slot wait).
    fn send_cut(
        &mut self,
        len: usize,
        fill: impl FnOnce(SharedBytesMut<'_>) -> usize,
        timeout: Option<Duration>,
    ) -> Result<(), SandboxError> {
        let deadline = timeout.and_then(deadline_after);
        let Self {
            tx,
            shared,
            spin,
            driver,
        } = self;
        let driver = driver.as_deref();
        let spin = *spin;
        let shared: &SandboxShared = shared;
        // The last wait said "ready": a reservation failing now parks.
        let mut was_ready = false;
        let mut stall = SlotStall::default();
        loop {
            if shared.guest_done() || shared.stop.load(Ordering::Acquire) {
                return Err(SandboxError::Closed {
                    sandbox: shared.name.clone(),
                });
            }
            let no_slot = match reserve_now(tx, shared, len)? {
                Room::Reserved(mut r) => {
                    let n = fill(r.bytes_mut());
                    r.truncate(n);
                    r.commit();
                    notify(shared, &shared.peer().h2g_doorbell);
                    return Ok(());
                }
                Room::RingFull => false,
                Room::NoSlot => true,
            };
            if no_slot {
                stall.check(shared, tx, len)?;
            } else {
                stall = SlotStall::default();
            }
            // Waiting for a slot ends at the slot wait too, to say so.
            let until = earliest(deadline, stall.deadline(shared));
            let ready = block_on_guest(shared, driver, (spin, until, was_ready), || {
                tx.could_send(len).map_err(|e| protocol(shared, e))
            })?;
            was_ready = ready;
            if !ready && deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(SandboxError::WouldBlock {
                    sandbox: shared.name.clone(),
                    what: "send",
                    after: timeout.unwrap_or_default(),
                });
            }
        }
    }

    /// Sends back a slot the guest sent (see
    /// [`HostMessage::reply_in_place`]), waiting for ring room for its
    /// frame as long as the guest runs.
    fn send_held_slot(&mut self, mut slot: HeldSlot, len: u32) -> Result<(), SandboxError> {
        let Self {
            tx,
            shared,
            spin,
            driver,
        } = self;
        let driver = driver.as_deref();
        let spin = *spin;
        let shared: &SandboxShared = shared;
        loop {
            if shared.guest_done() || shared.stop.load(Ordering::Acquire) {
                let _ = tx.free_held_slot(slot);
                return Err(SandboxError::Closed {
                    sandbox: shared.name.clone(),
                });
            }
            match tx.send_held_slot(slot, len) {
                Ok(()) => {
                    notify(shared, &shared.peer().h2g_doorbell);
                    return Ok(());
                }
                Err((SendError::Full, back)) => slot = back,
                Err((e, back)) => {
                    let _ = tx.free_held_slot(back);
                    return Err(send_error(shared, e));
                }
            }
            block_on_guest(shared, driver, (spin, None, false), || {
                tx.has_room_for_slot_ref().map_err(|e| protocol(shared, e))
            })?;
        }
    }

    /// Reads a message of up to `max` bytes straight into ring or slot
    /// memory: waits for room, then lets `read` fill the reserved bytes and
    /// say how many it filled. Nothing is sent when it fills none. If the
    /// guest ended while `read` ran, the bytes come back as
    /// [`ReadSend::GuestGone`] so that they can go elsewhere (a restarted
    /// sandbox). `read`'s error is returned as is, and nothing is sent.
    /// The bytes are a [`SharedBytesMut`], as in [`Self::send_with`].
    pub fn send_from_reader(
        &mut self,
        max: usize,
        read: impl FnOnce(SharedBytesMut<'_>) -> io::Result<usize>,
    ) -> Result<ReadSend, SendReadError> {
        let Self {
            tx,
            shared,
            spin,
            driver,
        } = self;
        let driver = driver.as_deref();
        let spin = *spin;
        let shared: &SandboxShared = shared;
        // As in `send_cut`.
        let mut was_ready = false;
        let mut stall = SlotStall::default();
        loop {
            if shared.guest_done() || shared.stop.load(Ordering::Acquire) {
                return Err(SendReadError::Sandbox(SandboxError::Closed {
                    sandbox: shared.name.clone(),
                }));
            }
            let no_slot = match reserve_now(tx, shared, max)? {
                Room::Reserved(mut r) => {
                    let n = read(r.bytes_mut()).map_err(SendReadError::Read)?.min(max);
                    if n == 0 {
                        return Ok(ReadSend::Eof);
                    }
                    r.truncate(n);
                    if shared.guest_done() {
                        return Ok(ReadSend::GuestGone(r.bytes_mut().as_shared().to_vec()));
                    }
                    r.commit();
                    notify(shared, &shared.peer().h2g_doorbell);
                    return Ok(ReadSend::Sent(n));
                }
                Room::RingFull => false,
                Room::NoSlot => true,
            };
            if no_slot {
                stall.check(shared, tx, max)?;
            } else {
                stall = SlotStall::default();
            }
            was_ready = block_on_guest(
                shared,
                driver,
                (spin, stall.deadline(shared), was_ready),
                || tx.could_send(max).map_err(|e| protocol(shared, e)),
            )?;
        }
    }

    /// Sends `payload` without blocking the thread: the async variant of
    /// [`Self::send`], for any executor. A guest on the host's thread
    /// (fiber, callback) runs inside the poll, in bounded batches, when
    /// there is no room; a thread guest wakes the task when it rings.
    pub async fn send_async(&mut self, payload: &[u8]) -> Result<(), SandboxError> {
        let len = payload.len();
        let Self {
            tx, shared, driver, ..
        } = self;
        let shared: &SandboxShared = shared;
        let driver = driver.as_deref();
        let mut waiter = AsyncWaiter::new(shared);
        let mut stall = SlotStall::default();
        // The last wait said "ready": a reservation failing now yields.
        let mut was_ready = false;
        loop {
            if shared.guest_done() || shared.stop.load(Ordering::Acquire) {
                return Err(SandboxError::Closed {
                    sandbox: shared.name.clone(),
                });
            }
            let no_slot = match reserve_now(tx, shared, len)? {
                Room::Reserved(mut r) => {
                    r.bytes_mut().copy_from(payload);
                    r.commit();
                    notify(shared, &shared.peer().h2g_doorbell);
                    return Ok(());
                }
                Room::RingFull => false,
                Room::NoSlot => true,
            };
            if no_slot {
                stall.check(shared, tx, len)?;
            } else {
                stall = SlotStall::default();
            }
            if was_ready {
                // Told there was room, found none (a race, or a guest
                // making them disagree): once through the executor.
                let mut yielded = false;
                std::future::poll_fn(|cx| {
                    if std::mem::replace(&mut yielded, true) {
                        std::task::Poll::Ready(())
                    } else {
                        cx.waker().wake_by_ref();
                        std::task::Poll::Pending
                    }
                })
                .await;
            }
            // Waiting for a slot ends at the slot wait too, to say so.
            let slot_deadline = stall.deadline(shared);
            let mut ready = || tx.could_send(len).map_err(|e| protocol(shared, e));
            was_ready = std::future::poll_fn(|cx| {
                // Past the slot wait: back to the loop, which says so.
                if slot_deadline.is_some_and(|d| Instant::now() >= d) {
                    return std::task::Poll::Ready(Ok(false));
                }
                let polled = poll_guest(shared, driver, (&mut waiter, Side::Send), cx, &mut ready);
                if polled.is_pending()
                    && let Some(at) = slot_deadline
                {
                    shared.wake_task_at(Side::Send, at, cx.waker());
                }
                polled
            })
            .await?;
        }
    }

    /// Sends `payload` if there is room now, without telling a parked
    /// guest: for batches, followed by [`Self::notify`].
    #[inline]
    pub fn try_send_no_notify(&mut self, payload: &[u8]) -> Result<bool, SandboxError> {
        match self.tx.send(payload) {
            Ok(()) => Ok(true),
            Err(SendError::Full | SendError::Exhausted) => Ok(false),
            Err(e) => Err(send_error(&self.shared, e)),
        }
    }

    /// Wakes the guest if it is parked (after a batch).
    pub fn notify(&self) {
        notify(&self.shared, &self.shared.peer().h2g_doorbell);
    }

    /// Raises host goodbye: the guest drains what is queued and returns.
    pub fn goodbye(&mut self) {
        let index = self.shared.guest_index;
        doorbell_futex::say_goodbye(self.shared.segment_file.segment(), index..index + 1);
        // A guest on the host's thread runs once more (it may end).
        self.shared.host_moved();
        self.shared.fiber_wake.wake();
        self.shared.host_task.wake();
    }
}

/// What [`HostSender::send_from_reader`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadSend {
    /// A message of this many bytes was sent.
    Sent(usize),
    /// The reader filled nothing (end of input): nothing was sent.
    Eof,
    /// The guest ended while the reader ran: these bytes were not sent.
    GuestGone(Vec<u8>),
}

/// Why [`HostSender::send_from_reader`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SendReadError {
    /// The sandbox could not take the message.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The reader failed; nothing was sent.
    #[error("reading the message: {0}")]
    Read(io::Error),
}

/// The host's receiving end: guest to host.
pub struct HostReceiver {
    rx: Receiver,
    shared: Arc<SandboxShared>,
    /// Rounds a wait for a message spins before it parks.
    spin: u32,
    /// Runs a guest on the host's thread, when it is one.
    driver: Option<Arc<Mutex<GuestDriver>>>,
}

/// A message from the guest, in place in the segment. Dropping it releases
/// its ring bytes or frees its slot.
#[derive(Debug)]
pub struct HostMessage<'a> {
    inner: Message<'a>,
}

impl HostMessage<'_> {
    /// The payload, in place in shared memory, as a view: its bounds were
    /// checked, but the guest may still rewrite its bytes at any moment,
    /// so they are read through the view (copied out, read as words, or
    /// written to a file descriptor), never borrowed as a `&[u8]`.
    pub fn bytes(&self) -> SharedBytes<'_> {
        self.inner.bytes()
    }

    /// The payload copied out (one `memcpy`): a snapshot to parse.
    pub fn to_vec(&self) -> Vec<u8> {
        self.inner.bytes().to_vec()
    }

    /// Answers this message with its own bytes, transformed in place, and
    /// gives it to `to` (the same sandbox's sender): `transform` rewrites
    /// the payload where it is and returns the reply's length (at most the
    /// request's; more is cut). A message that came in a slot goes back in
    /// that same slot, which the guest then frees: no allocation, no copy.
    /// An inline one is copied into the reply's ring bytes.
    pub fn reply_in_place(
        self,
        to: &mut HostSender,
        transform: impl FnOnce(SharedBytesMut<'_>) -> usize,
    ) -> Result<(), SandboxError> {
        match self.inner.take_slot() {
            Ok((slot, len)) => {
                let n = {
                    let mut area = to.tx.held_slot_area(&slot);
                    let area = area
                        .get_mut(..len as usize)
                        .expect("the payload fits its slot");
                    transform(area).min(len as usize)
                };
                to.send_held_slot(slot, n as u32)
            }
            Err(inner) => {
                // Inline, so short: a copy out, then the reply's bytes.
                let request = inner.bytes().to_vec();
                drop(inner);
                to.send_cut(
                    request.len(),
                    |mut out| {
                        out.copy_from(&request);
                        transform(out).min(request.len())
                    },
                    None,
                )
            }
        }
    }

    /// The payload as a plain slice, with no copy.
    ///
    /// # Safety
    ///
    /// The guest must not write these bytes while the slice lives: it is
    /// trusted (your own plugin, in a test), or it is stopped. A hostile
    /// guest may rewrite them at any moment, and code that assumes a
    /// slice does not change under it (UTF-8 decoding, a parser) may then
    /// go wrong in ways Rust does not protect against.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the caller's promise, as documented.
        unsafe { self.inner.as_bytes() }
    }

    /// Payload length.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Whether it came in a slot (else inline in the ring).
    pub fn is_slot(&self) -> bool {
        self.inner.is_slot()
    }
}

/// After draining the guest's ring: wakes a guest parked for room, with
/// no fence (the guest's waits for room are bounded and re-check).
fn room_freed(shared: &SandboxShared) {
    match shared.execution {
        // Auto is resolved by the spawn (`Plugin::execution`).
        Execution::Thread | Execution::Auto => {
            let bell = &shared.peer().h2g_doorbell;
            if shared.doorbells && bell.has_waiters() {
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
fn notify(shared: &SandboxShared, bell: &shmrt_primitives::Doorbell) {
    match shared.execution {
        // Auto is resolved by the spawn (`Plugin::execution`).
        Execution::Thread | Execution::Auto => {
            if shared.doorbells && bell.should_ring() {
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
    shared.host_moved();
    std::sync::atomic::fence(Ordering::SeqCst);
    shared.fiber_wake.wake_fenced();
    shared.host_task.wake_fenced();
    if shared.execution == Execution::Callback && shared.doorbells && bell.has_waiters() {
        doorbell_futex::ring(bell);
    }
}

impl std::fmt::Debug for HostReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostReceiver")
            .field("sandbox", &self.shared.name)
            .field("rx", &self.rx)
            .field("spin", &self.spin)
            .finish()
    }
}

impl HostReceiver {
    /// Rounds a wait for a message spins before it parks on the doorbell
    /// (the sandbox's spin budget by default).
    pub fn set_spin(&mut self, rounds: u32) {
        self.spin = rounds;
    }

    pub(crate) fn new(
        rx: Receiver,
        shared: Arc<SandboxShared>,
        driver: Option<Arc<Mutex<GuestDriver>>>,
    ) -> Self {
        let spin = shared.spin.0;
        HostReceiver {
            rx,
            shared,
            spin,
            driver,
        }
    }

    /// The next message if one is there.
    pub fn try_recv(&mut self) -> Result<Option<HostMessage<'_>>, SandboxError> {
        let shared = &*self.shared;
        match self.rx.try_recv() {
            Ok(Some(inner)) => Ok(Some(HostMessage { inner })),
            Ok(None) => {
                room_freed(shared);
                Ok(None)
            }
            Err(e) => Err(protocol(shared, e)),
        }
    }

    /// Whether nothing is queued now. Finding the ring drained, tells a
    /// guest parked for room (once per drained ring, not per message).
    pub fn is_empty(&mut self) -> Result<bool, SandboxError> {
        let empty = self.rx.is_empty().map_err(|e| protocol(&self.shared, e))?;
        if empty {
            room_freed(&self.shared);
        }
        Ok(empty)
    }

    /// Waits for the next message: `Ok(None)` when `timeout` passes,
    /// `Err(Closed)` once the guest has ended and everything it sent has
    /// been read.
    pub fn recv_timeout(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<HostMessage<'_>>, SandboxError> {
        let deadline = timeout.and_then(deadline_after);
        if self.is_empty()? {
            let Self {
                rx,
                shared,
                spin,
                driver,
            } = &mut *self;
            let driver = driver.as_deref();
            let spin = *spin;
            let shared: &SandboxShared = shared;
            let has_data = block_on_guest(shared, driver, (spin, deadline, false), || {
                rx.is_empty().map(|e| !e).map_err(|e| protocol(shared, e))
            })?;
            if !has_data {
                if shared.guest_done() && rx.is_empty().map_err(|e| protocol(shared, e))? {
                    return Err(SandboxError::Closed {
                        sandbox: shared.name.clone(),
                    });
                }
                return Ok(None);
            }
        }
        self.try_recv()
    }

    /// Waits for the next message without blocking the thread: the async
    /// variant of [`Self::recv`], for any executor (one thread can serve
    /// many sandboxes). A guest on the host's thread (fiber, callback)
    /// runs inside the poll, in bounded batches; a thread guest wakes the
    /// task when it rings or ends. `Err(Closed)` once the guest has ended
    /// and everything it sent has been read.
    pub async fn recv_async(&mut self) -> Result<HostMessage<'_>, SandboxError> {
        let has_message = {
            let Self {
                rx, shared, driver, ..
            } = &mut *self;
            let shared: &SandboxShared = shared;
            let driver = driver.as_deref();
            let mut waiter = AsyncWaiter::new(shared);
            let mut ready = || {
                let empty = rx.is_empty().map_err(|e| protocol(shared, e))?;
                // As `is_empty`, a thread guest waiting for room is told
                // (a guest on this thread is run by this poll; waking
                // the waiting tasks would wake this one).
                if empty && shared.execution == Execution::Thread {
                    room_freed(shared);
                }
                Ok(!empty)
            };
            std::future::poll_fn(|cx| {
                poll_guest(shared, driver, (&mut waiter, Side::Recv), cx, &mut ready)
            })
            .await?
        };
        let Self { rx, shared, .. } = self;
        match rx.try_recv() {
            Ok(Some(inner)) if has_message => Ok(HostMessage { inner }),
            Ok(_) => Err(SandboxError::Closed {
                sandbox: shared.name.clone(),
            }),
            Err(e) => Err(protocol(shared, e)),
        }
    }

    /// Waits as long as it takes; `Err(Closed)` once the guest has ended
    /// and everything it sent has been read.
    pub fn recv(&mut self) -> Result<HostMessage<'_>, SandboxError> {
        while self.is_empty()? {
            if self.shared.guest_done() {
                // Everything committed before the end is visible now.
                if self.is_empty()? {
                    return Err(SandboxError::Closed {
                        sandbox: self.shared.name.clone(),
                    });
                }
                break;
            }
            let Self {
                rx,
                shared,
                spin,
                driver,
            } = &mut *self;
            let driver = driver.as_deref();
            let spin = *spin;
            let shared: &SandboxShared = shared;
            if block_on_guest(shared, driver, (spin, None, false), || {
                rx.is_empty().map(|e| !e).map_err(|e| protocol(shared, e))
            })? {
                // A message is there: take it without looking again.
                break;
            }
        }
        let Self { rx, shared, .. } = self;
        match rx.try_recv() {
            Ok(Some(inner)) => Ok(HostMessage { inner }),
            Ok(None) => Err(SandboxError::Closed {
                sandbox: shared.name.clone(),
            }),
            Err(e) => Err(protocol(shared, e)),
        }
    }
}
