//! The sending end: sends that wait for room and for slots, answers told
//! to the host in batches, reservations filled in place.

use core::sync::atomic::Ordering;

use shmrt_primitives::Segment;
use shmrt_primitives::channel::{self, Sender};

use super::{
    IN_CALLBACK, Outbox, ROOM_WAIT_MAX_NS, ROOM_WAIT_NS, SPIN_ROUNDS, SendError, TELL_EVERY,
    notify_host,
};
use crate::host;

impl Outbox {
    /// Sends a copy of `payload`, waiting for room.
    #[inline(always)]
    pub fn send(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.send_with(payload.len(), |b| copy(b, payload))
    }

    /// Sends `len` bytes written in place by `fill`, inline or in a slot
    /// by size, waiting for room: ring room as long as it takes (the host
    /// drains), a slot for at most the slot wait ([`Self::set_slot_wait`],
    /// default 5 s), after which it is [`SendError::SlotsExhausted`].
    #[inline(always)]
    pub fn send_with(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<(), SendError> {
        self.send_cut(len, false, |out| {
            fill(out);
            len
        })
    }

    /// [`Self::send_with`] for an answer to a request: told to the host as
    /// answers are (`Message::reply_in_place`), in batches while more
    /// requests are queued, rather than one doorbell a message.
    pub(crate) fn answer_with(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), SendError> {
        self.send_cut(len, true, |out| {
            fill(out);
            len
        })
    }

    /// How long a send waits for a free slot before it gives up with
    /// [`SendError::SlotsExhausted`], in ns; negative waits forever. A
    /// peer of the format may hold every slot of a class (it owes us no
    /// fair share), and a zero-copy plugin holding a request while it
    /// waits for a reply slot would then wait forever.
    pub fn set_slot_wait(&mut self, ns: i64) {
        self.slot_wait_ns = ns;
    }

    /// Reserves room for a message of `len` bytes, inline or in a slot by
    /// size, waiting for it as [`Self::send_with`] does: fill the bytes in
    /// place ([`Reservation::as_mut_slice`]), then
    /// [`Reservation::commit`]; dropped uncommitted, the room is given
    /// back. For callers that can not hand over a closure (the C ABI).
    pub fn reserve(&mut self, len: usize) -> Result<Reservation<'_>, SendError> {
        // Answers gathered for a packed-lines message go first.
        self.flush_gathered()?;
        let mut room = RoomWait::new();
        let mut exhausted_since: Option<u64> = None;
        let tx: *mut Sender = &mut self.tx;
        loop {
            // SAFETY: `tx` points to `self.tx`, borrowed mutably through
            // `self` for the whole call, and nothing else reaches that
            // field meanwhile. The raw pointer only lets the borrow be
            // returned on `Ok` while the loop goes on after an `Err`
            // (which holds no borrow): what the borrow checker can not
            // see yet (NLL "problem case 3").
            let refused = match unsafe { &mut *tx }.reserve(len) {
                Ok(inner) => {
                    return Ok(Reservation {
                        inner,
                        len,
                        segment: self.segment,
                        index: self.index,
                        untold: &mut self.untold,
                    });
                }
                Err(e) => e,
            };
            self.wait_after(refused, len, &mut room, &mut exhausted_since)?;
        }
    }

    /// After the ring or the pool refused `len` bytes: waits for room (the
    /// host drains), or for a slot at most the slot wait (counted from
    /// `exhausted_since`, the first refusal of the pool); an error when
    /// waiting can not help.
    #[cold]
    fn wait_after(
        &mut self,
        refused: channel::SendError,
        len: usize,
        room: &mut RoomWait,
        exhausted_since: &mut Option<u64>,
    ) -> Result<(), SendError> {
        match refused {
            channel::SendError::Full => *exhausted_since = None,
            channel::SendError::Exhausted => {
                let now = host::now_ns();
                let since = *exhausted_since.get_or_insert(now);
                let waited = now.saturating_sub(since);
                if u64::try_from(self.slot_wait_ns).is_ok_and(|bound| waited > bound) {
                    return Err(self.exhausted(len, waited));
                }
            }
            channel::SendError::TooLarge { len, max } => {
                return Err(SendError::TooLarge { len, max });
            }
            channel::SendError::Protocol(e) => return Err(SendError::Protocol(e)),
        }
        self.tell_untold();
        room.once().map_err(|()| SendError::WouldBlock { len })
    }

    /// [`Self::send_with`] whose `fill` says how many of the `len` bytes
    /// to send (more is cut).
    #[inline(always)]
    pub(super) fn send_cut(
        &mut self,
        len: usize,
        answer: bool,
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<(), SendError> {
        if self.pack.on {
            // Answering a line of a packed-lines message (see `packed`).
            return self.gather(len, fill);
        }
        self.send_cut_ring(len, answer, fill)
    }

    /// [`Self::send_cut`] into the ring or a slot, gathering or not.
    #[inline(always)]
    pub(super) fn send_cut_ring(
        &mut self,
        len: usize,
        answer: bool,
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<(), SendError> {
        let mut room = RoomWait::new();
        // When the pool first said no, for the slot wait.
        let mut exhausted_since: Option<u64> = None;
        let mut fill = Some(fill);
        loop {
            let refused = match self.tx.reserve(len) {
                Ok(mut r) => {
                    let fill = fill.take().expect("called once: we return after");
                    // SAFETY: as in `Message::as_bytes`, the host is
                    // trusted; it never touches bytes we reserved.
                    let n = fill(unsafe { r.as_mut_slice() });
                    r.truncate(n);
                    r.commit();
                    None
                }
                Err(e) => Some(e),
            };
            let Some(refused) = refused else {
                self.sent(answer);
                return Ok(());
            };
            self.wait_after(refused, len, &mut room, &mut exhausted_since)?;
        }
    }

    #[cold]
    fn exhausted(&self, len: usize, waited_ns: u64) -> SendError {
        let holders = self.tx.pool().holders(len as u32);
        let h = holders.unwrap_or(shmrt_primitives::ClassHolders {
            class: 0,
            slot_payload: 0,
            slot_count: 0,
            by_host: 0,
            by_guests: 0,
        });
        SendError::SlotsExhausted {
            len,
            class: h.class,
            slot_payload: h.slot_payload,
            slot_count: h.slot_count,
            by_host: h.by_host,
            by_guests: h.by_guests,
            waited_ms: waited_ns / 1_000_000,
        }
    }

    /// Sends a held slot back (see [`Message::reply_in_place`]), waiting
    /// for ring room for its frame.
    pub(super) fn send_held_slot(
        &mut self,
        mut slot: channel::HeldSlot,
        len: u32,
    ) -> Result<(), SendError> {
        let mut room = RoomWait::new();
        loop {
            match self.tx.send_held_slot(slot, len) {
                Ok(()) => {
                    self.sent(true);
                    return Ok(());
                }
                Err((channel::SendError::Full, back)) => {
                    self.tell_untold();
                    if room.once().is_err() {
                        let _ = self.tx.free_held_slot(back);
                        return Err(SendError::WouldBlock { len: len as usize });
                    }
                    slot = back;
                }
                Err((e, back)) => {
                    let _ = self.tx.free_held_slot(back);
                    return Err(match e {
                        channel::SendError::Protocol(e) => SendError::Protocol(e),
                        _ => unreachable!("a held slot is neither allocated nor too large"),
                    });
                }
            }
        }
    }

    /// After a message is committed: tells a parked host. An answer
    /// ([`Message::reply_in_place`]) is left untold while more requests
    /// are queued in the inbox and fewer than [`TELL_EVERY`] answers went
    /// untold: the plugin is working through its inbox and comes back to
    /// it, and an inbox found empty rings a parked host, so the answers of
    /// a batch cost one wake-up, not one each (a million echoed lines made
    /// as many futex calls). Any other message is told at once: a plugin
    /// may send without coming back to its inbox.
    #[inline(always)]
    fn sent(&mut self, answer: bool) {
        if IN_CALLBACK.get() {
            // The host reads when the callback returns, which tells it
            // once (`Channel::answer_queued`).
            return;
        }
        if !answer {
            self.untold = 0;
            notify_host(&self.segment, self.index);
            return;
        }
        self.untold += 1;
        let more_queued = self.segment.h2g_ring(self.index).is_some_and(|r| {
            let c = r.cursors();
            c.write != c.read || c.watermark != 0
        });
        if !more_queued || self.untold >= TELL_EVERY {
            self.untold = 0;
            notify_host(&self.segment, self.index);
        }
    }

    /// Before waiting for room: the answers left untold (see
    /// [`Self::sent`]) may be what the host waits for before it reads,
    /// which is what frees the room.
    fn tell_untold(&mut self) {
        if self.untold > 0 {
            self.untold = 0;
            notify_host(&self.segment, self.index);
        }
    }

    /// Largest payload that can be sent.
    pub fn max_payload(&self) -> u32 {
        self.tx.max_payload()
    }

    /// Largest payload sent inline in the ring.
    pub fn max_inline(&self) -> u32 {
        self.tx.max_inline()
    }
}

/// Room for one message, reserved by [`Outbox::reserve`]: ring bytes, and
/// a slot when the message does not go inline. Dropping it uncommitted
/// gives everything back.
#[derive(Debug)]
pub struct Reservation<'a> {
    inner: channel::Reservation<'a>,
    len: usize,
    segment: Segment,
    index: u32,
    untold: &'a mut u32,
}

impl Reservation<'_> {
    /// The reserved payload bytes, in place in the ring or the slot.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `Message::as_bytes`, the host is trusted; it never
        // touches bytes we reserved.
        unsafe { self.inner.as_mut_slice() }
    }

    /// Bytes reserved.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no bytes are reserved.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sends the first `len` bytes (at most those reserved: more is cut)
    /// and tells the host, as [`Outbox::send`] does.
    pub fn commit(mut self, len: usize) {
        self.inner.truncate(len);
        self.inner.commit();
        if !IN_CALLBACK.get() {
            *self.untold = 0;
            notify_host(&self.segment, self.index);
        }
    }
}

/// Waiting for room to send: spins a while, then parks, longer each time
/// (see [`ROOM_WAIT_NS`]).
struct RoomWait {
    spins: u32,
    park_ns: i64,
}

impl RoomWait {
    fn new() -> Self {
        RoomWait {
            spins: 0,
            park_ns: ROOM_WAIT_NS,
        }
    }

    /// Waits a little; `Err` in a callback, which must not wait (nothing
    /// frees room until it returns).
    #[inline(always)]
    fn once(&mut self) -> Result<(), ()> {
        if IN_CALLBACK.get() {
            return Err(());
        }
        if self.spins < SPIN_ROUNDS.load(Ordering::Relaxed) {
            self.spins += 1;
            core::hint::spin_loop();
        } else {
            host::wait(self.park_ns);
            self.park_ns = (self.park_ns * 2).min(ROOM_WAIT_MAX_NS);
        }
        Ok(())
    }
}

/// Copies up to this many bytes word by word (see [`copy`]).
const SHORT_COPY: usize = 256;

/// `dst.copy_from_slice(src)`, without a call for short copies: in wasm a
/// copy of unknown length is `memory.copy`, which wasmtime runs as a call
/// into the runtime (measured: ~35 ns of a ~800 ns round trip).
#[inline(always)]
pub(super) fn copy(dst: &mut [u8], src: &[u8]) {
    if src.len() <= SHORT_COPY && dst.len() == src.len() {
        let mut d = dst.chunks_exact_mut(8);
        let mut s = src.chunks_exact(8);
        for (d, s) in (&mut d).zip(&mut s) {
            d.copy_from_slice(s);
        }
        for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
            *d = *s;
        }
    } else {
        dst.copy_from_slice(src);
    }
}
