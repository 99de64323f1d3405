//! The host's sending end of a sandbox's channel: [`HostSender`] (host to
//! guest), writing in place into ring or slot memory, with its waits for
//! room and the slot wait that turns a pool held by the guest into an
//! error naming the holders.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shmrt_primitives::SendError;
use shmrt_primitives::SharedBytesMut;
use shmrt_primitives::channel::{HeldSlot, Reservation, Sender};

use super::reserved::ReservedSlot;
use super::wait::{AsyncWaiter, Home, block_on_guest, earliest, notify, poll_guest, protocol};
use crate::error::{BatchError, SandboxError};
use crate::exec::guest_driver::GuestDriver;
use crate::segment::doorbell_futex;
use crate::state::interrupts::deadline_after;
use crate::state::shared::SandboxShared;
use crate::state::wake_timer::Side;

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
pub(crate) struct SlotStall {
    /// Since when, and how many slots of the class the host held then.
    since: Option<(Instant, u32)>,
}

impl SlotStall {
    /// When the slot wait runs out, if a stall is being timed.
    fn deadline(&self, shared: &SandboxShared) -> Option<Instant> {
        let (since, _) = self.since?;
        since.checked_add(shared.slot_wait()?)
    }

    #[cold]
    fn check(
        &mut self,
        shared: &SandboxShared,
        tx: &Sender,
        len: usize,
    ) -> Result<(), SandboxError> {
        let Some(limit) = shared.slot_wait() else {
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
                    sandbox: shared.name().to_owned(),
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
            sandbox: shared.name().to_owned(),
            len,
            max,
        },
        SendError::Protocol(e) => protocol(shared, e),
        SendError::Full | SendError::Exhausted => SandboxError::WouldBlock {
            sandbox: shared.name().to_owned(),
            what: "send",
            after: Duration::ZERO,
        },
    }
}

/// The host's sending end: host to guest.
pub struct HostSender {
    pub(super) tx: Sender,
    shared: Arc<SandboxShared>,
    /// Rounds a wait for room spins before it parks.
    spin: u32,
    /// Runs a guest on the host's thread, when it is one.
    driver: Option<Arc<Mutex<GuestDriver>>>,
    /// Where this end lives in its [`crate::Sandbox`].
    pub(super) home: Home,
}

impl std::fmt::Debug for HostSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSender")
            .field("sandbox", &self.shared.name())
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
        let spin = shared.spin().0;
        HostSender {
            tx,
            shared,
            spin,
            driver,
            home: Home::default(),
        }
    }

    /// Called first by everything that sends, waits or wakes (see
    /// [`Home`]).
    #[inline(always)]
    fn check_home(&self) {
        self.home.check(self, &self.shared);
    }

    /// Largest payload that fits a slot.
    pub fn max_payload(&self) -> u32 {
        self.tx.max_payload()
    }

    /// Sends `payload` if there is room now; `Ok(false)` when the ring or
    /// the pool is full.
    pub fn try_send(&mut self, payload: &[u8]) -> Result<bool, SandboxError> {
        self.check_home();
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
    pub(super) fn send_cut(
        &mut self,
        len: usize,
        fill: impl FnOnce(SharedBytesMut<'_>) -> usize,
        timeout: Option<Duration>,
    ) -> Result<(), SandboxError> {
        self.send_cut_timed(len, fill, timeout, &mut SlotStall::default())
    }

    /// [`Self::send_cut`] whose slot stall is timed across calls: a
    /// sender that gives up after `timeout` to do something else (read
    /// replies) and tries again still gets the slot wait's error.
    pub(super) fn send_cut_timed(
        &mut self,
        len: usize,
        fill: impl FnOnce(SharedBytesMut<'_>) -> usize,
        timeout: Option<Duration>,
        stall: &mut SlotStall,
    ) -> Result<(), SandboxError> {
        self.check_home();
        let deadline = timeout.and_then(deadline_after);
        let Self {
            tx,
            shared,
            spin,
            driver,
            ..
        } = self;
        let driver = driver.as_deref();
        let spin = *spin;
        let shared: &SandboxShared = shared;
        // The last wait said "ready": a reservation failing now parks.
        let mut was_ready = false;
        loop {
            if shared.guest_done() || shared.stop_requested() {
                return Err(SandboxError::Closed {
                    sandbox: shared.name().to_owned(),
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
                *stall = SlotStall::default();
            }
            // Waiting for a slot ends at the slot wait too, to say so.
            let until = earliest(deadline, stall.deadline(shared));
            let ready = block_on_guest(shared, driver, (spin, until, was_ready), || {
                tx.could_send(len).map_err(|e| protocol(shared, e))
            })?;
            was_ready = ready;
            if !ready && deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(SandboxError::WouldBlock {
                    sandbox: shared.name().to_owned(),
                    what: "send",
                    after: timeout.unwrap_or_default(),
                });
            }
        }
    }

    /// Sends back a slot the guest sent (see
    /// [`HostMessage::reply_in_place`]), waiting for ring room for its
    /// frame as long as the guest runs.
    pub(super) fn send_held_slot(
        &mut self,
        mut slot: HeldSlot,
        len: u32,
    ) -> Result<(), SandboxError> {
        self.check_home();
        let Self {
            tx,
            shared,
            spin,
            driver,
            ..
        } = self;
        let driver = driver.as_deref();
        let spin = *spin;
        let shared: &SandboxShared = shared;
        loop {
            if shared.guest_done() || shared.stop_requested() {
                let _ = tx.free_held_slot(slot);
                return Err(SandboxError::Closed {
                    sandbox: shared.name().to_owned(),
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

    /// Reserves a slot for a message of up to `len` bytes, owned by the
    /// caller until it is sent ([`Self::send_reserved`]) or dropped (given
    /// back): the object form of [`Self::send_with`], for a caller that
    /// fills the bytes across calls of its own (a binding's buffer object).
    /// It borrows nothing, and never leaks the slot (see
    /// [`ReservedSlot`]). A payload small enough to go inline in the ring
    /// still gets a slot here.
    ///
    /// Waits for a slot as a send does: as long as the guest frees some,
    /// ending with `SlotsExhausted` (naming the class and who holds it)
    /// once the guest freed none for the sandbox's slot wait, and with
    /// `WouldBlock` when `timeout` passes first. `Closed` once the guest
    /// has ended; `TooLarge` (with the sizes) when no slot class holds
    /// `len` bytes.
    pub fn reserve_slot(
        &mut self,
        len: usize,
        timeout: Option<Duration>,
    ) -> Result<ReservedSlot, SandboxError> {
        self.check_home();
        let deadline = timeout.and_then(deadline_after);
        let Self {
            tx,
            shared,
            spin,
            driver,
            ..
        } = self;
        let driver = driver.as_deref();
        let spin = *spin;
        let shared_arc = &*shared;
        let shared: &SandboxShared = shared;
        let mut stall = SlotStall::default();
        // As in `send_cut_timed`.
        let mut was_ready = false;
        loop {
            if shared.guest_done() || shared.stop_requested() {
                return Err(SandboxError::Closed {
                    sandbox: shared.name().to_owned(),
                });
            }
            match tx.allocate_slot(len) {
                Ok(slot) => {
                    return Ok(ReservedSlot::new(
                        slot,
                        len,
                        *tx.pool(),
                        Arc::clone(shared_arc),
                    ));
                }
                Err(SendError::Exhausted | SendError::Full) => {}
                Err(e) => return Err(send_error(shared, e)),
            }
            stall.check(shared, tx, len)?;
            let until = earliest(deadline, stall.deadline(shared));
            let ready = block_on_guest(shared, driver, (spin, until, was_ready), || {
                Ok(tx.could_allocate_slot(len))
            })?;
            was_ready = ready;
            if !ready && deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(SandboxError::WouldBlock {
                    sandbox: shared.name().to_owned(),
                    what: "reserving a slot",
                    after: timeout.unwrap_or_default(),
                });
            }
        }
    }

    /// Sends a slot reserved by [`Self::reserve_slot`] with its first
    /// `slot.len()` bytes, waiting for ring room for its frame as long as
    /// the guest runs: the guest receives an ordinary slot message. On an
    /// error nothing is sent and the slot is given back: `Closed` once the
    /// guest has ended, `ForeignSlot` for a slot of another sandbox.
    pub fn send_reserved(&mut self, mut slot: ReservedSlot) -> Result<(), SandboxError> {
        if !Arc::ptr_eq(&slot.shared, &self.shared) {
            return Err(SandboxError::ForeignSlot {
                sandbox: self.shared.name().to_owned(),
                reserved_in: slot.sandbox().to_owned(),
            });
        }
        let len = slot.len() as u32;
        let held = slot.take();
        // Frees the slot on every error.
        self.send_held_slot(held, len)
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
        self.check_home();
        let Self {
            tx,
            shared,
            spin,
            driver,
            ..
        } = self;
        let driver = driver.as_deref();
        let spin = *spin;
        let shared: &SandboxShared = shared;
        // As in `send_cut`.
        let mut was_ready = false;
        let mut stall = SlotStall::default();
        loop {
            if shared.guest_done() || shared.stop_requested() {
                return Err(SendReadError::Sandbox(SandboxError::Closed {
                    sandbox: shared.name().to_owned(),
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
        self.check_home();
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
            if shared.guest_done() || shared.stop_requested() {
                return Err(SandboxError::Closed {
                    sandbox: shared.name().to_owned(),
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
        self.check_home();
        match self.tx.send(payload) {
            Ok(()) => Ok(true),
            Err(SendError::Full | SendError::Exhausted) => Ok(false),
            Err(e) => Err(send_error(&self.shared, e)),
        }
    }

    /// Sends every payload of `batch`, in order, waiting for room as
    /// [`Self::send`] does, and publishes them as one: the ring's write
    /// cursor is stored and the guest (or whoever runs it) told once for
    /// all that fit, not once each. A callback guest then answers them
    /// all in one call. When the ring fills, what is written is published
    /// and the rest waits for room as a send does. Returns how many were
    /// sent. On an error, [`BatchError::sent`] says how many went out
    /// before it (they are published: go on from there); `Closed` once
    /// the guest has ended, as a send. What was written is published
    /// even when the batch's iterator panics.
    pub fn send_batch<'p>(
        &mut self,
        batch: impl IntoIterator<Item = &'p [u8]>,
    ) -> Result<usize, BatchError> {
        self.check_home();
        let mut out = BatchOut {
            sender: self,
            unpublished: false,
        };
        let mut sent = 0;
        for payload in batch {
            out.send(payload)
                .map_err(|error| BatchError { sent, error })?;
            sent += 1;
        }
        Ok(sent)
    }

    /// Wakes the guest if it is parked (after a batch).
    pub fn notify(&self) {
        self.check_home();
        notify(&self.shared, &self.shared.peer().h2g_doorbell);
    }

    /// Raises host goodbye: the guest drains what is queued and returns.
    pub fn goodbye(&mut self) {
        self.check_home();
        let index = self.shared.guest_index();
        doorbell_futex::say_goodbye(self.shared.segment_file().segment(), index..index + 1);
        // A guest on the host's thread runs once more (it may end).
        self.shared.host_moved();
        self.shared.fiber_wake().wake();
        self.shared.host_task().wake();
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

/// A batch being sent ([`HostSender::send_batch`]): its commits are
/// deferred, and published (the guest told) when the ring fills and when
/// this is dropped, also by a panic of the batch's iterator: a sender
/// left deferring would commit every later send unseen.
struct BatchOut<'s> {
    sender: &'s mut HostSender,
    /// Commits not yet published.
    unpublished: bool,
}

impl BatchOut<'_> {
    fn send(&mut self, payload: &[u8]) -> Result<(), SandboxError> {
        let s = &mut *self.sender;
        if s.shared.guest_done() || s.shared.stop_requested() {
            return Err(SandboxError::Closed {
                sandbox: s.shared.name().to_owned(),
            });
        }
        s.tx.set_deferred(true);
        match s.tx.send(payload) {
            Ok(()) => {
                self.unpublished = true;
                Ok(())
            }
            Err(SendError::Full | SendError::Exhausted) => {
                // Out of room: what is written goes out, and this one
                // waits as a send does (running a guest on this thread,
                // which reads what was published).
                self.publish();
                self.sender.send(payload)
            }
            Err(e) => Err(send_error(&s.shared, e)),
        }
    }

    /// Stores the write cursor and tells the guest, if anything is new.
    fn publish(&mut self) {
        self.sender.tx.set_deferred(false);
        if std::mem::take(&mut self.unpublished) {
            self.sender.notify();
        }
    }
}

impl Drop for BatchOut<'_> {
    fn drop(&mut self) {
        self.publish();
    }
}
