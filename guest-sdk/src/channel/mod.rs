//! The guest's channel to its host.

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use shmrt_primitives::callback_cursors::CallbackCursors;
use shmrt_primitives::channel::{self, Receiver, Sender};
use shmrt_primitives::{HeaderError, PeerId, ProtocolError, Segment};

use crate::host;

mod outbox;
pub(crate) mod packed;

pub use outbox::Reservation;
use outbox::copy;

/// Spin rounds before parking in `wait`.
const SPIN: u32 = 1000;
/// How long the first park lasts while waiting for room to send, in ns;
/// each next one twice as long, up to [`ROOM_WAIT_MAX_NS`]. The host rings
/// when it frees room and sees us parked; the bound covers a ring that
/// raced with our registration, and a host without doorbells (a vox
/// segment), which never rings: a send stalled on one costs a wake-up
/// every 10 ms, not a spinning core.
const ROOM_WAIT_NS: i64 = 200_000;
const ROOM_WAIT_MAX_NS: i64 = 10_000_000;

static OPENED: AtomicBool = AtomicBool::new(false);

/// Spin rounds before parking: [`SPIN`], or 0 when the host runs this
/// guest on its own thread (the peer entry's `HOST_RUNS_GUEST` flag, read
/// at open), where a spinning guest holds the very thread that would
/// write. Also the most any `Inbox::set_spin` gets then.
static SPIN_ROUNDS: AtomicU32 = AtomicU32::new(SPIN);

/// The most rounds any wait may spin, whatever `Inbox::set_spin` asks.
static SPIN_MAX: AtomicU32 = AtomicU32::new(u32::MAX);

/// The plugin runs as a callback now (inside `shmrt_on_messages`): a send
/// that would wait for room fails instead.
static IN_CALLBACK: CallbackFlag = CallbackFlag::new();

/// A flag of the plugin instance. In wasm a plain byte: an instance runs
/// one call at a time on one thread, and every wasm atomic store or swap
/// is a locked instruction (four per callback call, for this flag alone).
/// Elsewhere (the SDK's own tests) an atomic.
struct CallbackFlag {
    #[cfg(target_family = "wasm")]
    set: core::cell::Cell<bool>,
    #[cfg(not(target_family = "wasm"))]
    set: AtomicBool,
}

// SAFETY: in wasm, a plugin instance is one thread (shmrt gives guests no
// threads, and calls an instance from one thread at a time); elsewhere the
// flag is an atomic.
unsafe impl Sync for CallbackFlag {}

impl CallbackFlag {
    const fn new() -> Self {
        CallbackFlag {
            #[cfg(target_family = "wasm")]
            set: core::cell::Cell::new(false),
            #[cfg(not(target_family = "wasm"))]
            set: AtomicBool::new(false),
        }
    }

    #[inline(always)]
    fn get(&self) -> bool {
        #[cfg(target_family = "wasm")]
        return self.set.get();
        #[cfg(not(target_family = "wasm"))]
        return self.set.load(Ordering::Relaxed);
    }

    #[inline(always)]
    fn replace(&self, value: bool) -> bool {
        #[cfg(target_family = "wasm")]
        return self.set.replace(value);
        #[cfg(not(target_family = "wasm"))]
        return self.set.swap(value, Ordering::Relaxed);
    }
}

/// Marks a callback call ([`IN_CALLBACK`]) until dropped; nests.
pub(crate) struct Answering(bool);

impl Answering {
    pub(crate) fn start() -> Self {
        Answering(IN_CALLBACK.replace(true))
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        IN_CALLBACK.replace(self.0);
    }
}

/// At most this many answers of a batch go untold before the host is told
/// (see `Outbox::sent`).
const TELL_EVERY: u32 = 64;

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

/// How long a send waits for a free slot by default before it gives up
/// with [`SendError::SlotsExhausted`]: 5 s.
pub const DEFAULT_SLOT_WAIT_NS: i64 = 5_000_000_000;

/// The exit status [`Channel::serve`] returns when a reply found no slot
/// ([`SendError::SlotsExhausted`]): EX_TEMPFAIL.
pub const EXIT_SLOTS_EXHAUSTED: i32 = 75;

/// Why a message was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// Larger than the largest slot can carry.
    TooLarge {
        /// The message's length.
        len: usize,
        /// The largest payload a slot carries.
        max: u32,
    },
    /// The host broke the protocol.
    Protocol(ProtocolError),
    /// No room for the message while the plugin runs as a callback
    /// (`shmrt_on_messages`): the host reads answers only once the
    /// callback returns, so a send that would wait fails instead.
    WouldBlock {
        /// The message's length.
        len: usize,
    },
    /// No slot of the class the message needs came free within the wait
    /// bound ([`Outbox::set_slot_wait`]): the other side holds them.
    SlotsExhausted {
        /// The message's length.
        len: usize,
        /// The class it needed: its index.
        class: u8,
        /// The class's largest payload.
        slot_payload: u32,
        /// The class's slots.
        slot_count: u32,
        /// Slots of the class allocated by the host.
        by_host: u32,
        /// Slots of the class allocated by guests.
        by_guests: u32,
        /// How long the send waited, in ms.
        waited_ms: u64,
    },
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { len, max } => write!(
                f,
                "message of {len} bytes exceeds the largest slot payload {max}"
            ),
            Self::Protocol(e) => e.fmt(f),
            Self::WouldBlock { len } => write!(
                f,
                "no room for a {len}-byte message while answering as a callback (the host reads \
                 answers when the callback returns): answer fewer or smaller messages per call, or \
                 run the plugin in thread or fiber mode"
            ),
            Self::SlotsExhausted {
                len,
                class,
                slot_payload,
                slot_count,
                by_host,
                by_guests,
                waited_ms,
            } => write!(
                f,
                "no slot for a {len}-byte message after {waited_ms} ms: class {class} \
                 ({slot_payload}-byte payloads) has {slot_count} slots: {by_host} allocated by the \
                 host (held by the host, or by this plugin until it frees what it received) and \
                 {by_guests} by guests; answer in place (Message::reply_in_place), free received \
                 messages sooner, or give the segment more slots of this class"
            ),
        }
    }
}

impl core::error::Error for SendError {}

impl SendError {
    /// The exit status a plugin ends with for this error:
    /// [`EXIT_SLOTS_EXHAUSTED`] (75) when no slot came free, else 1.
    pub fn exit_status(&self) -> i32 {
        match self {
            Self::SlotsExhausted { .. } => EXIT_SLOTS_EXHAUSTED,
            _ => 1,
        }
    }
}

/// The plugin's channel: an [`Inbox`] for what the host sends and an
/// [`Outbox`] for replies. [`Channel::split`] gives both at once, so that
/// a received message (borrowed in place) can be answered while held.
#[derive(Debug)]
pub struct Channel {
    inbox: Inbox,
    outbox: Outbox,
    /// The last callback call answered more than one message: the next
    /// one times its batch ([`Channel::answer_queued`]).
    batching: bool,
    /// The host publishes the cursors a callback call leaves in
    /// [`SHMRT_CALLBACK_CURSORS`] (it acknowledged the record).
    host_publishes: bool,
}

/// The record a callback call leaves its cursors in for the host to
/// publish (`shmrt_primitives::callback_cursors`): plain memory of this
/// plugin instance, exported by address, written by the guest only while
/// the host calls it and read by the host only after a call returned.
#[repr(transparent)]
pub struct CursorRecord(core::cell::UnsafeCell<CallbackCursors>);

// SAFETY: a plugin instance runs one call at a time on one thread (shmrt
// gives guests no threads); the host reads the record between calls.
unsafe impl Sync for CursorRecord {}

/// The record itself, exported so that the host finds its address (the
/// wasm global `SHMRT_CALLBACK_CURSORS`).
#[unsafe(no_mangle)]
pub static SHMRT_CALLBACK_CURSORS: CursorRecord =
    CursorRecord(core::cell::UnsafeCell::new(CallbackCursors {
        ack: 0,
        h2g_read: 0,
        g2h_write: 0,
        pending: 0,
    }));

impl core::fmt::Debug for CursorRecord {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("CursorRecord")
    }
}

impl CursorRecord {
    /// Whether the host has agreed to publish what the record holds (it
    /// wrote the ack before the first call).
    fn acknowledged(&self) -> bool {
        // SAFETY: see `Sync` above; the host wrote it before any call.
        let ack = unsafe { core::ptr::addr_of!((*self.0.get()).ack).read_volatile() };
        ack == CallbackCursors::ACK
    }

    /// Leaves `read` and `write` (those that are `Some`) for the host.
    /// Plain stores: the host reads them on this very thread once the
    /// call returns (volatile only so that they are not elided).
    fn leave(&self, read: Option<u32>, write: Option<u32>) {
        use CallbackCursors as C;
        let record = self.0.get();
        let mut pending = 0;
        // SAFETY: see `Sync` above: nothing else reaches the record while
        // this call runs.
        unsafe {
            if let Some(read) = read {
                core::ptr::addr_of_mut!((*record).h2g_read).write_volatile(read);
                pending |= C::READ;
            }
            if let Some(write) = write {
                core::ptr::addr_of_mut!((*record).g2h_write).write_volatile(write);
                pending |= C::WRITE;
            }
            if pending != 0 {
                let at = core::ptr::addr_of_mut!((*record).pending);
                at.write_volatile(at.read_volatile() | pending);
            }
        }
    }
}

/// Receives what the host sends.
#[derive(Debug)]
pub struct Inbox {
    rx: Receiver,
    segment: Segment,
    index: u32,
    spin: u32,
}

/// Sends to the host.
#[derive(Debug)]
pub struct Outbox {
    tx: Sender,
    segment: Segment,
    index: u32,
    /// How long a send waits for a slot, in ns; negative: forever.
    slot_wait_ns: i64,
    /// Messages sent since the host was last told.
    untold: u32,
    /// Answers gathered into one packed answer (see `packed`).
    pack: packed::Gathering,
}

/// A message from the host, read in place in the segment. Dropping it
/// gives its ring bytes or its slot back.
#[derive(Debug)]
pub struct Message<'a> {
    inner: Inner<'a>,
}

/// What a [`Message`] is: a message of the ring, or one line of a
/// packed-lines message (see `packed`).
#[derive(Debug)]
enum Inner<'a> {
    Frame(channel::Message<'a>),
    Line(&'a [u8]),
    /// A line of a packed-lines message whose answers are written over
    /// its lines, in the request's own slot (see `packed`).
    Placed(&'a mut [u8]),
}

impl Message<'_> {
    /// The payload, in place.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.inner {
            // SAFETY: the only other party is our host, which a guest
            // trusts: it can rewrite all of our memory anyway, so a plain
            // slice here protects nothing a copy would (and costs no
            // copy). The shmrt host writes a message's bytes only before
            // sending it.
            Inner::Frame(m) => unsafe { m.as_bytes() },
            Inner::Line(line) => line,
            Inner::Placed(line) => line,
        }
    }

    /// Payload length.
    pub fn len(&self) -> usize {
        match &self.inner {
            Inner::Frame(m) => m.len(),
            Inner::Line(line) => line.len(),
            Inner::Placed(line) => line.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the payload sits in a slot (else inline in the ring, or a
    /// line of a packed-lines message).
    pub fn is_slot(&self) -> bool {
        matches!(&self.inner, Inner::Frame(m) if m.is_slot())
    }

    /// Answers this message with its own bytes, transformed in place:
    /// `transform` rewrites the payload where it is and returns the
    /// reply's length (at most the request's; more is cut). A message
    /// that came in a slot goes back in that same slot, so the answer
    /// needs no allocation and no copy, and the host frees it as any slot
    /// it receives; an inline message is copied into the reply's ring
    /// bytes and transformed there. Waits for ring room as
    /// [`Outbox::send`] does.
    ///
    /// ```no_run
    /// fn run(mut channel: shmrt_guest::Channel) -> i32 {
    ///     let (inbox, outbox) = channel.split();
    ///     while let Some(msg) = inbox.recv() {
    ///         let sent = msg.reply_in_place(outbox, |bytes| {
    ///             bytes.make_ascii_uppercase();
    ///             bytes.len()
    ///         });
    ///         if sent.is_err() {
    ///             return 1;
    ///         }
    ///     }
    ///     0
    /// }
    /// shmrt_guest::entry!(run);
    /// ```
    #[inline(always)]
    pub fn reply_in_place(
        self,
        outbox: &mut Outbox,
        transform: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<(), SendError> {
        // Small, so that a handler of packed lines inlines into the loop
        // over them (`packed::each_line`): the other cases are calls.
        match self.inner {
            Inner::Placed(line) => outbox.place_line(line, transform),
            Inner::Line(line) => outbox.gather_line(line, transform),
            Inner::Frame(inner) => reply_frame_in_place(inner, outbox, transform),
        }
    }
}

/// [`Message::reply_in_place`] of a message of the ring.
#[inline(never)]
fn reply_frame_in_place(
    inner: channel::Message<'_>,
    outbox: &mut Outbox,
    transform: impl FnOnce(&mut [u8]) -> usize,
) -> Result<(), SendError> {
    {
        match inner.take_slot() {
            Ok((slot, len)) => {
                let mut area = outbox.tx.held_slot_area(&slot);
                let area = area
                    .get_mut(..len as usize)
                    .expect("the payload fits its slot");
                // SAFETY: as in `as_bytes`: the host is trusted, and a slot
                // it sent is ours until we send or free it.
                let n = transform(unsafe { area.into_mut_slice() }).min(len as usize);
                outbox.send_held_slot(slot, n as u32)
            }
            Err(inner) => {
                let len = inner.len();
                // Inline, and the reply is no longer: inline too. Each
                // path gets a closure of its own, used once, so that the
                // ring's (every answer's) inlines into the send.
                if outbox.pack.on {
                    return outbox.send_cut(len, true, |out| {
                        // SAFETY: as below.
                        copy(out, unsafe { inner.as_bytes() });
                        drop(inner);
                        transform(out)
                    });
                }
                outbox.send_cut_ring(len, true, |out| {
                    // SAFETY: the host is trusted and writes a message's
                    // bytes only before sending it (see `as_bytes`); the
                    // slice is gone once copied, before `inner` is dropped.
                    copy(out, unsafe { inner.as_bytes() });
                    drop(inner);
                    transform(out)
                })
            }
        }
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

/// How long one callback call handles queued messages while more are
/// there, before it returns so that the host reads the answers and calls
/// again (a fresh slice): well under the host's default slice of 1 s.
pub const BATCH_BUDGET_NS: u64 = 20_000_000;

/// The clock of one callback call's batch ([`Channel::answer_queued`]).
struct BatchBudget {
    /// When timing started (`now_ns`), 0 until it has.
    started: u64,
    handled: u32,
    /// The message count at which the clock is read next.
    next_check: u32,
    /// Messages between two reads, doubled while messages are fast.
    interval: u32,
}

impl BatchBudget {
    /// Timed from the start when the last call saw a batch; else from the
    /// second message (a lone request never reads the clock).
    fn new(timed: bool) -> Self {
        BatchBudget {
            started: if timed { host::now_ns().max(1) } else { 0 },
            handled: 0,
            next_check: 1,
            interval: 1,
        }
    }

    /// Counts a handled message; whether the batch has had its time.
    fn spent_after_one_more(&mut self) -> bool {
        self.handled += 1;
        if self.started == 0 {
            if self.handled == 1 {
                // Timing starts once a second message is there to handle.
                self.next_check = 2;
                return false;
            }
            if self.handled == 2 {
                self.started = host::now_ns().max(1);
                self.next_check = 3;
                return false;
            }
        }
        if self.handled < self.next_check {
            return false;
        }
        let elapsed = host::now_ns().saturating_sub(self.started);
        if elapsed >= BATCH_BUDGET_NS {
            return true;
        }
        if elapsed < BATCH_BUDGET_NS / 4 {
            self.interval = (self.interval * 2).min(64);
        }
        self.next_check = self.handled + self.interval;
        false
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
        let index = PeerId::new(peer)
            .map(PeerId::index)
            .filter(|&i| segment.peer(i).is_some())
            .ok_or(OpenError::Peer(peer))?;
        let (tx, rx) = segment.guest_channel(index).map_err(OpenError::Protocol)?;
        let on_host_thread = segment.peer(index).is_some_and(|p| p.host_runs_guest());
        // A callback's cursors are published by the host after each call
        // when it has said so (it writes the ack before the first call).
        let host_publishes = SHMRT_CALLBACK_CURSORS.acknowledged();
        let (spin, most) = if on_host_thread {
            (0, 0)
        } else {
            (SPIN, u32::MAX)
        };
        SPIN_ROUNDS.store(spin, Ordering::Relaxed);
        SPIN_MAX.store(most, Ordering::Relaxed);
        Ok(Channel {
            inbox: Inbox {
                rx,
                segment,
                index,
                spin,
            },
            outbox: Outbox {
                tx,
                segment,
                index,
                slot_wait_ns: DEFAULT_SLOT_WAIT_NS,
                untold: 0,
                pack: packed::Gathering::default(),
            },
            batching: false,
            host_publishes,
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

    /// The segment this channel works in, a copy of its view: to read the
    /// header (`segment().header().host_goodbye()`) while the inbox and
    /// the outbox are borrowed (the C ABI of this SDK keeps one).
    pub fn segment(&self) -> Segment {
        self.inbox.segment
    }

    /// The request/response shape: calls `handler` with each message's
    /// payload (in place) and the outbox to answer with, until the host
    /// says goodbye and everything is read. Returns the exit status: 0, or
    /// that of the first send error, logged ([`SendError::exit_status`]:
    /// 75 when no slot came free).
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
                return e.exit_status();
            }
        }
        0
    }

    /// The handler shape, as [`crate::handler!`] runs it in thread and
    /// fiber mode: calls `handle` with each message (in place) and the
    /// outbox, until the host says goodbye and everything is read. Returns
    /// the exit status: 0, or that of the first error (logged).
    pub fn serve_messages(
        mut self,
        mut handle: impl FnMut(Message<'_>, &mut Outbox) -> Result<(), SendError>,
    ) -> i32 {
        let (inbox, outbox) = self.split();
        while let Some(msg) = inbox.recv() {
            let len = msg.len();
            if let Err(e) = handle(msg, outbox) {
                crate::error!("could not answer a {}-byte message: {}", len, e);
                return e.exit_status();
            }
        }
        0
    }

    /// One call of a callback plugin ([`crate::handler!`]'s
    /// `shmrt_on_messages`): calls `handle` with the messages queued now,
    /// while the outbox has room for an answer as long as the message
    /// (the host reads answers once this returns, and calls again for
    /// what is left), for at most [`BATCH_BUDGET_NS`] of handling. Returns
    /// 0, or the exit status of the first error (logged).
    ///
    /// The host bounds each call by its slice (1 s by default): the budget
    /// makes that a bound on one message's handling, not on a whole batch
    /// of them. The clock is read only by calls that follow a batch (a
    /// call answering one message at a time pays nothing), and less often
    /// while messages are fast.
    pub fn answer_queued(
        &mut self,
        mut handle: impl FnMut(Message<'_>, &mut Outbox) -> Result<(), SendError>,
    ) -> i32 {
        let _answering = Answering::start();
        let mut budget = BatchBudget::new(self.batching);
        let defer = self.host_publishes;
        let (inbox, outbox) = (&mut self.inbox, &mut self.outbox);
        // The ring room of what is read is given back once, at the end
        // (in wasm each give-back is an atomic store with a full fence);
        // when the host publishes for us, the answers' cursor too, and
        // both by the host after the call (`CallbackCursors`).
        if defer {
            inbox.rx.set_deferred(true);
            outbox.tx.set_deferred(true);
        } else {
            inbox.rx.set_lazy_release(true);
        }
        let status = loop {
            // Room for an answer as long as the largest inline message: a
            // slot goes back as a short reference frame.
            let room = outbox.tx.could_send(outbox.tx.max_inline() as usize);
            if !room.unwrap_or_else(|e| protocol_panic(e)) {
                break 0;
            }
            let Some(msg) = inbox.try_recv().unwrap_or_else(|e| protocol_panic(e)) else {
                break 0;
            };
            let len = msg.len();
            if let Err(e) = handle(msg, outbox) {
                crate::error!("could not answer a {}-byte message: {}", len, e);
                break e.exit_status();
            }
            if defer {
                // Left after each message (plain stores): should a later
                // one trap, the host still publishes what this one read
                // and answered (`CallbackCursors`, "a call that traps").
                SHMRT_CALLBACK_CURSORS
                    .leave(inbox.rx.take_unpublished(), outbox.tx.take_unpublished());
            }
            if budget.spent_after_one_more() {
                break 0;
            }
        };
        self.batching = budget.handled > 1;
        let (inbox, outbox) = (&mut self.inbox, &mut self.outbox);
        if defer {
            SHMRT_CALLBACK_CURSORS.leave(inbox.rx.take_unpublished(), outbox.tx.take_unpublished());
            // Nothing is left pending: these store nothing.
            inbox.rx.set_deferred(false);
            outbox.tx.set_deferred(false);
            // The host publishes, then wakes whoever waits for it.
            return status;
        }
        inbox.rx.set_lazy_release(false);
        // Answers left untold (`Outbox::sent`) are read by the host when
        // the call returns; a host on another thread is rung.
        notify_host(&self.outbox.segment, self.outbox.index);
        status
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
        // On the host's thread the host advises 0: nothing arrives while
        // the guest spins there.
        self.spin = rounds.min(SPIN_MAX.load(Ordering::Relaxed));
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
        Ok(self.rx.try_recv()?.map(|m| Message {
            inner: Inner::Frame(m),
        }))
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
                // Out of messages: the answers an `Outbox` left untold
                // (see `Outbox::sent`), and the ring space and slots we
                // released, may be what a parked host waits for. Told once
                // per empty ring, as the eventcount asks (a fence, then the
                // waiter count).
                notify_host(&self.segment, self.index);
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

fn protocol_panic(e: ProtocolError) -> ! {
    panic!("the host broke the shmrt protocol: {e}")
}
