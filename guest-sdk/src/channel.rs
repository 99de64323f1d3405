//! The guest's channel to its host.

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use shmrt_primitives::channel::{self, Receiver, Sender};
use shmrt_primitives::{HeaderError, ProtocolError, Segment};

use crate::host;

/// Spin rounds before parking in `wait`.
const SPIN: u32 = 1000;
/// How long one park lasts while waiting for room to send, in ns. The
/// host rings when it frees room and sees us parked; the bound only covers
/// a ring that raced with our registration.
const ROOM_WAIT_NS: i64 = 200_000;

static OPENED: AtomicBool = AtomicBool::new(false);

/// Why the channel could not be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// `Channel::open` was already called.
    AlreadyOpen,
    /// The segment header in the window is not valid.
    Header(HeaderError),
    /// The host gave a peer id with no entry in the segment.
    Peer(u32),
    /// A ring cursor was invalid at open.
    Protocol(ProtocolError),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyOpen => f.write_str("the channel is already open; open it once"),
            Self::Header(e) => write!(f, "segment header: {e}"),
            Self::Peer(id) => write!(f, "peer id {id} has no entry in the segment"),
            Self::Protocol(e) => e.fmt(f),
        }
    }
}

impl core::error::Error for OpenError {}

/// Why a message was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// Larger than the largest slot can carry.
    TooLarge { len: usize, max: u32 },
    /// The host broke the protocol.
    Protocol(ProtocolError),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { len, max } => write!(
                f,
                "message of {len} bytes exceeds the largest slot payload {max}"
            ),
            Self::Protocol(e) => e.fmt(f),
        }
    }
}

impl core::error::Error for SendError {}

/// The plugin's channel: an [`Inbox`] for what the host sends and an
/// [`Outbox`] for replies. [`Channel::split`] gives both at once, so that
/// a received message (borrowed in place) can be answered while held.
pub struct Channel {
    inbox: Inbox,
    outbox: Outbox,
}

/// Receives what the host sends.
pub struct Inbox {
    rx: Receiver,
    segment: Segment,
    index: u32,
    spin: u32,
}

/// Sends to the host.
pub struct Outbox {
    tx: Sender,
    segment: Segment,
    index: u32,
}

/// A message from the host, read in place in the segment. Dropping it
/// gives its ring bytes or its slot back.
pub struct Message<'a> {
    inner: channel::Message<'a>,
}

impl Message<'_> {
    /// The payload, in place.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: the only other party is our host, which a guest trusts:
        // it can rewrite all of our memory anyway, so a plain slice here
        // protects nothing a copy would (and costs no copy). The shmrt
        // host writes a message's bytes only before sending it.
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

    /// Whether the payload sits in a slot (else inline in the ring).
    pub fn is_slot(&self) -> bool {
        self.inner.is_slot()
    }
}

/// Rings the host only if it is parked (a fence and a load otherwise).
fn notify_host(segment: &Segment, index: u32) {
    if let Some(peer) = segment.peer(index)
        && peer.g2h_doorbell.should_ring()
    {
        host::ring();
    }
}

impl Channel {
    /// Opens the channel to the host. Once per plugin.
    pub fn open() -> Result<Channel, OpenError> {
        if OPENED.swap(true, Ordering::AcqRel) {
            return Err(OpenError::AlreadyOpen);
        }
        let base = host::segment_base() as *mut u8;
        // SAFETY: the host placed an initialized segment at `base` in our
        // memory; we trust the header our host wrote (a bad one could only
        // make us trap).
        let segment = unsafe { Segment::open_trusting(base) }.map_err(OpenError::Header)?;
        let peer = host::peer_id();
        let index = peer.wrapping_sub(1);
        if segment.peer(index).is_none() {
            return Err(OpenError::Peer(peer));
        }
        let (tx, rx) = segment.guest_channel(index).map_err(OpenError::Protocol)?;
        Ok(Channel {
            inbox: Inbox {
                rx,
                segment,
                index,
                spin: SPIN,
            },
            outbox: Outbox { tx, segment, index },
        })
    }

    /// Both ends, to answer a message while holding it.
    pub fn split(&mut self) -> (&mut Inbox, &mut Outbox) {
        (&mut self.inbox, &mut self.outbox)
    }

    /// See [`Inbox::recv`].
    pub fn recv(&mut self) -> Option<Message<'_>> {
        self.inbox.recv()
    }

    /// See [`Outbox::send`].
    pub fn send(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.outbox.send(payload)
    }

    /// See [`Outbox::send_with`].
    pub fn send_with(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<(), SendError> {
        self.outbox.send_with(len, fill)
    }

    /// Whether the host has said goodbye (it sends nothing more).
    pub fn host_goodbye(&self) -> bool {
        self.inbox.host_goodbye()
    }

    /// The request/response shape: calls `handler` with each message's
    /// payload (in place) and the outbox to answer with, until the host
    /// says goodbye and everything is read. Returns the exit status: 0, or
    /// 1 after logging the first send error.
    ///
    /// ```no_run
    /// fn run(channel: shmrt_guest::Channel) -> i32 {
    ///     channel.serve(|request, outbox| {
    ///         outbox.send_with(request.len(), |out| {
    ///             for (o, i) in out.iter_mut().zip(request.iter().rev()) {
    ///                 *o = *i;
    ///             }
    ///         })
    ///     })
    /// }
    /// shmrt_guest::entry!(run);
    /// ```
    pub fn serve(
        mut self,
        mut handler: impl FnMut(&[u8], &mut Outbox) -> Result<(), SendError>,
    ) -> i32 {
        let (inbox, outbox) = self.split();
        while let Some(msg) = inbox.recv() {
            if let Err(e) = handler(msg.as_bytes(), outbox) {
                crate::error!("could not answer a {}-byte request: {}", msg.len(), e);
                return 1;
            }
        }
        0
    }

    /// The streaming shape: calls `each` with every message (in place)
    /// until the host says goodbye and everything is read, then returns the
    /// outbox for a final answer.
    ///
    /// ```no_run
    /// fn run(mut channel: shmrt_guest::Channel) -> i32 {
    ///     let mut total = 0u64;
    ///     let outbox = channel.for_each(|msg| total += msg.len() as u64);
    ///     outbox.send(&total.to_le_bytes()).map_or(1, |()| 0)
    /// }
    /// ```
    ///
    /// Nothing is sent during the loop, so the ring room of read messages
    /// is given back lazily (when the ring runs dry, or a quarter of it is
    /// read): in wasm each give-back is an atomic store with a full fence.
    pub fn for_each(&mut self, mut each: impl FnMut(&Message<'_>)) -> &mut Outbox {
        let (inbox, outbox) = self.split();
        inbox.rx.set_lazy_release(true);
        while inbox.wait() {
            while let Some(msg) = inbox.try_recv().unwrap_or_else(|e| protocol_panic(e)) {
                each(&msg);
            }
        }
        inbox.rx.set_lazy_release(false);
        outbox
    }
}

impl Inbox {
    /// Spin rounds in [`Self::recv`] before parking in the host's `wait`
    /// (default 1000; 0 parks at once).
    pub fn set_spin(&mut self, rounds: u32) {
        self.spin = rounds;
    }

    /// Whether the host has said goodbye (it sends nothing more).
    pub fn host_goodbye(&self) -> bool {
        self.segment.header().host_goodbye()
    }

    /// Gives back the ring room of read messages lazily (`true`: when the
    /// ring runs dry, when a quarter of it is read, or at
    /// [`Self::publish`]) or at once (`false`, the default). In wasm each
    /// give-back is an atomic store with a full fence, so a pure consumer
    /// gains from lazy mode; a plugin that sends while it reads must
    /// [`Self::publish`] before a send that may wait, since the host may
    /// wait for this room.
    pub fn set_lazy_release(&mut self, lazy: bool) {
        self.rx.set_lazy_release(lazy);
    }

    /// Gives back the ring room of every message read so far.
    pub fn publish(&mut self) {
        self.rx.publish();
    }

    /// The next message if one is there.
    #[inline(always)]
    pub fn try_recv(&mut self) -> Result<Option<Message<'_>>, ProtocolError> {
        Ok(self.rx.try_recv()?.map(|inner| Message { inner }))
    }

    /// Waits for the next message: spins briefly, then parks until the
    /// host rings. `None` once the host has said goodbye and everything it
    /// sent has been read.
    ///
    /// # Panics
    ///
    /// If the host breaks the protocol (the shmrt host never does).
    pub fn recv(&mut self) -> Option<Message<'_>> {
        if !self.wait() {
            return None;
        }
        self.try_recv().unwrap_or_else(|e| protocol_panic(e))
    }

    /// Waits until a message is there (`true`), spinning briefly, then
    /// parking until the host rings; `false` once the host has said goodbye
    /// and everything it sent has been read. To take every message that is
    /// there at once, follow it with [`Self::try_recv`] in a loop (what
    /// [`Channel::for_each`] does): the loop inlines, a call per message
    /// does not.
    ///
    /// # Panics
    ///
    /// If the host breaks the protocol (the shmrt host never does).
    pub fn wait(&mut self) -> bool {
        let mut spins = 0;
        loop {
            if !self.rx.is_empty().unwrap_or_else(|e| protocol_panic(e)) {
                return true;
            }
            if spins == 0 {
                // Out of messages: the ring space and slots we released may
                // be what a parked host waits for. Told once per empty
                // ring, with no fence (its waits for room are bounded).
                if let Some(peer) = self.segment.peer(self.index)
                    && peer.g2h_doorbell.has_waiters()
                {
                    host::ring();
                }
            }
            if self.host_goodbye() {
                // Messages sent before the goodbye are visible now.
                return !self.rx.is_empty().unwrap_or_else(|e| protocol_panic(e));
            }
            if spins < self.spin {
                spins += 1;
                core::hint::spin_loop();
            } else {
                spins = self.spin.max(1);
                host::wait(-1);
            }
        }
    }
}

impl Outbox {
    /// Sends a copy of `payload`, waiting for room.
    #[inline(always)]
    pub fn send(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.send_with(payload.len(), |b| copy(b, payload))
    }

    /// Sends `len` bytes written in place by `fill`, inline or in a slot
    /// by size, waiting for room.
    #[inline(always)]
    pub fn send_with(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<(), SendError> {
        let mut spins = 0;
        loop {
            match self.tx.reserve(len) {
                Ok(mut r) => {
                    // SAFETY: as in `Message::as_bytes`, the host is
                    // trusted; it never touches bytes we reserved.
                    fill(unsafe { r.as_mut_slice() });
                    r.commit();
                    notify_host(&self.segment, self.index);
                    return Ok(());
                }
                Err(channel::SendError::Full | channel::SendError::Exhausted) => {
                    if spins < SPIN {
                        spins += 1;
                        core::hint::spin_loop();
                    } else {
                        host::wait(ROOM_WAIT_NS);
                    }
                }
                Err(channel::SendError::TooLarge { len, max }) => {
                    return Err(SendError::TooLarge { len, max });
                }
                Err(channel::SendError::Protocol(e)) => return Err(SendError::Protocol(e)),
            }
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

/// Copies up to this many bytes word by word (see [`copy`]).
const SHORT_COPY: usize = 256;

/// `dst.copy_from_slice(src)`, without a call for short copies: in wasm a
/// copy of unknown length is `memory.copy`, which wasmtime runs as a call
/// into the runtime (measured: ~35 ns of a ~800 ns round trip).
#[inline(always)]
fn copy(dst: &mut [u8], src: &[u8]) {
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

fn protocol_panic(e: ProtocolError) -> ! {
    panic!("the host broke the shmrt protocol: {e}")
}
