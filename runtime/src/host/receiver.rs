//! The host's receiving end of a sandbox's channel: [`HostReceiver`]
//! (guest to host), yielding [`HostMessage`]s in place in the segment,
//! which the guest may rewrite: read through views, or answered in place.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use shmrt_primitives::channel::{Message, Receiver};
use shmrt_primitives::{SharedBytes, SharedBytesMut};

use super::sender::HostSender;
use super::wait::{AsyncWaiter, Home, block_on_guest, poll_guest, protocol, room_freed};
use crate::error::SandboxError;
use crate::exec::guest_driver::GuestDriver;
use crate::state::interrupts::deadline_after;
use crate::state::options::Execution;
use crate::state::shared::SandboxShared;
use crate::state::wake_timer::Side;

/// A task's registration as a waiter for a sandbox's messages, owned by
/// the caller of [`HostReceiver::poll_recv`] across polls: while it lives,
/// a thread guest that sends rings the doorbell (and so wakes the task).
/// Dropping it unregisters.
pub struct RecvWait {
    waiter: AsyncWaiter<Arc<SandboxShared>>,
}

impl std::fmt::Debug for RecvWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvWait")
            .field("sandbox", &self.waiter.shared().name())
            .finish_non_exhaustive()
    }
}

/// The host's receiving end: guest to host.
pub struct HostReceiver {
    rx: Receiver,
    shared: Arc<SandboxShared>,
    /// Rounds a wait for a message spins before it parks.
    spin: u32,
    /// Runs a guest on the host's thread, when it is one.
    driver: Option<Arc<Mutex<GuestDriver>>>,
    /// Where this end lives in its [`crate::Sandbox`].
    pub(super) home: Home,
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

impl std::fmt::Debug for HostReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostReceiver")
            .field("sandbox", &self.shared.name())
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
        let spin = shared.spin().0;
        HostReceiver {
            rx,
            shared,
            spin,
            driver,
            home: Home::default(),
        }
    }

    /// Called first by everything that receives, waits or wakes (see
    /// [`Home`]).
    #[inline(always)]
    fn check_home(&self) {
        self.home.check(self, &self.shared);
    }

    /// The next message if one is there.
    pub fn try_recv(&mut self) -> Result<Option<HostMessage<'_>>, SandboxError> {
        self.check_home();
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
        self.check_home();
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
        self.check_home();
        let deadline = timeout.and_then(deadline_after);
        if self.is_empty()? {
            let Self {
                rx,
                shared,
                spin,
                driver,
                ..
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
                        sandbox: shared.name().to_owned(),
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
        self.check_home();
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
                if empty && shared.execution() == Execution::Thread {
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
                sandbox: shared.name().to_owned(),
            }),
            Err(e) => Err(protocol(shared, e)),
        }
    }

    /// Waits for a message as [`Self::recv`] does, then hands it and every
    /// other message queued now to `each`, in order, and gives their ring
    /// room back as one: the ring's read cursor is stored, and a guest
    /// waiting for room told, once for the batch, not once each. Returns
    /// how many `each` got. `Err(Closed)` once the guest has ended and
    /// everything it sent has been read.
    pub fn recv_batch(
        &mut self,
        mut each: impl FnMut(HostMessage<'_>),
    ) -> Result<usize, SandboxError> {
        self.check_home();
        each(self.recv()?);
        let batch = LazyBatch(self);
        batch.0.rx.set_lazy_release(true);
        let mut got = 1;
        loop {
            match batch.0.rx.try_recv() {
                Ok(Some(inner)) => {
                    each(HostMessage { inner });
                    got += 1;
                }
                Ok(None) => break Ok(got),
                Err(e) => break Err(protocol(&batch.0.shared, e)),
            }
        }
        // Dropping `batch` publishes its room at once.
    }

    /// A registration for [`Self::poll_recv`], kept by the caller across
    /// polls.
    pub fn recv_wait(&self) -> RecvWait {
        self.check_home();
        RecvWait {
            waiter: AsyncWaiter::new(Arc::clone(&self.shared)),
        }
    }

    /// One poll of a receive that borrows nothing between polls: the
    /// building block of [`Self::recv_async`] for a caller that can not
    /// keep a future borrowing the receiver (a binding to another
    /// language's event loop). `Ready(Ok(message))` when one is there;
    /// `Ready(Err(Closed))` once the guest has ended and everything it
    /// sent has been read; `Pending` when `cx`'s waker will be woken (a
    /// thread guest rings, the sandbox's wake timer runs out, or a guest
    /// on the host's thread, which this poll runs in bounded batches, can
    /// go on), after which the caller polls again with the same `wait`.
    /// The waker may be woken on any thread (the guest's own, or the
    /// runtime's wake-timer thread): it should only schedule the next
    /// poll. A message is taken only by a poll that returns it, so a
    /// caller that stops polling (a cancelled task) loses nothing.
    ///
    /// `wait` keeps this task counted as a waiter of the guest's doorbell
    /// until it is dropped: drop it once the receive is over. A `wait`
    /// made by another sandbox's receiver is replaced by one of this
    /// sandbox.
    pub fn poll_recv(
        &mut self,
        wait: &mut RecvWait,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<HostMessage<'_>, SandboxError>> {
        self.check_home();
        use std::task::Poll;
        let Self {
            rx, shared, driver, ..
        } = self;
        if !std::ptr::eq(wait.waiter.shared(), &**shared) {
            *wait = RecvWait {
                waiter: AsyncWaiter::new(Arc::clone(shared)),
            };
        }
        let shared: &SandboxShared = shared;
        let driver = driver.as_deref();
        let mut ready = || {
            let empty = rx.is_empty().map_err(|e| protocol(shared, e))?;
            // As in `recv_async`.
            if empty && shared.execution() == Execution::Thread {
                room_freed(shared);
            }
            Ok(!empty)
        };
        match poll_guest(
            shared,
            driver,
            (&mut wait.waiter, Side::Recv),
            cx,
            &mut ready,
        ) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(_)) => Poll::Ready(match rx.try_recv() {
                Ok(Some(inner)) => Ok(HostMessage { inner }),
                Ok(None) => Err(SandboxError::Closed {
                    sandbox: shared.name().to_owned(),
                }),
                Err(e) => Err(protocol(shared, e)),
            }),
        }
    }

    /// Waits as long as it takes; `Err(Closed)` once the guest has ended
    /// and everything it sent has been read.
    pub fn recv(&mut self) -> Result<HostMessage<'_>, SandboxError> {
        self.check_home();
        while self.is_empty()? {
            if self.shared.guest_done() {
                // Everything committed before the end is visible now.
                if self.is_empty()? {
                    return Err(SandboxError::Closed {
                        sandbox: self.shared.name().to_owned(),
                    });
                }
                break;
            }
            let Self {
                rx,
                shared,
                spin,
                driver,
                ..
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
                sandbox: shared.name().to_owned(),
            }),
            Err(e) => Err(protocol(shared, e)),
        }
    }
}

/// A batch being received ([`HostReceiver::recv_batch`]) with lazy
/// releases: dropped, also by a panic of `each`, it gives the batch's
/// room back at once and makes releases immediate again.
struct LazyBatch<'r>(&'r mut HostReceiver);

impl Drop for LazyBatch<'_> {
    fn drop(&mut self) {
        self.0.rx.set_lazy_release(false);
        room_freed(&self.0.shared);
    }
}
