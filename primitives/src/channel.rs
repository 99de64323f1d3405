//! Messages over a ring pair: a [`Sender`] on one ring and a [`Receiver`]
//! on the other, sharing the segment's slot pool.
//!
//! A message of `len` bytes goes inline when `8 + len` is within the
//! inline threshold, otherwise into the smallest slot that holds
//! `4 + len` bytes (u32 LE length prefix, then the payload), announced by a
//! 20-byte slot-ref frame; the receiver frees the slot when done. This is
//! vox-shm 0.3.1's transport convention. A sender takes at most half of
//! each class's slots ([`SlotPool::allocate_fair_share`]), so that two
//! sides answering each other never starve each other.

use crate::error::ProtocolError;
use crate::frame::{self, Frame, SlotRef};
use crate::layout::SegmentLayout;
use crate::ring::{Consumer, Grant, Producer};
use crate::shared_bytes::{SharedBytes, SharedBytesMut};
use crate::slot_pool::{AllocError, SlotPool};

/// Why a message was not sent. Nothing was consumed: retry `Full` and
/// `Exhausted` later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The ring has no room for the frame now.
    Full,
    /// No slot large enough is free now.
    Exhausted,
    /// Larger than the largest slot can carry.
    TooLarge { len: usize, max: u32 },
    /// The other side broke the protocol.
    Protocol(ProtocolError),
}

impl core::fmt::Display for SendError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Full => f.write_str("ring full"),
            Self::Exhausted => f.write_str("no free slot large enough"),
            Self::TooLarge { len, max } => {
                write!(
                    f,
                    "message of {len} bytes exceeds the largest slot payload of {max} bytes"
                )
            }
            Self::Protocol(e) => e.fmt(f),
        }
    }
}

impl core::error::Error for SendError {}

impl From<ProtocolError> for SendError {
    fn from(e: ProtocolError) -> Self {
        Self::Protocol(e)
    }
}

/// The sending end of a channel.
#[derive(Debug)]
pub struct Sender {
    producer: Producer,
    pool: SlotPool,
    owner: u8,
    max_inline: u32,
    max_slot: u32,
}

impl Sender {
    /// A sender writing into `producer`'s ring, allocating slots in `pool`
    /// as peer `owner`, with limits from `layout`.
    pub fn new(producer: Producer, pool: SlotPool, owner: u8, layout: &SegmentLayout) -> Self {
        let max_inline = layout.max_inline_payload();
        Sender {
            producer,
            pool,
            owner,
            max_inline,
            max_slot: layout.max_slot_payload(),
        }
    }

    /// The pool this sender allocates from (to report who holds it).
    pub fn pool(&self) -> &SlotPool {
        &self.pool
    }

    /// Largest payload sent inline.
    pub fn max_inline(&self) -> u32 {
        self.max_inline
    }

    /// Deferred (`true`) or immediate (`false`, the default) publication
    /// of committed frames: see [`Producer::set_deferred`].
    pub fn set_deferred(&mut self, deferred: bool) {
        self.producer.set_deferred(deferred);
    }

    /// The write cursor left unpublished, for whoever publishes it: see
    /// [`Producer::take_unpublished`].
    pub fn take_unpublished(&mut self) -> Option<u32> {
        self.producer.take_unpublished()
    }

    /// Largest payload at all.
    pub fn max_payload(&self) -> u32 {
        self.max_slot.max(self.max_inline)
    }

    /// Sends a copy of `payload`.
    #[inline(always)]
    pub fn send(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.send_with(payload.len(), |mut buf| buf.copy_from(payload))
    }

    /// Sends `len` bytes written in place by `fill`, inline or in a slot:
    /// `fill` gets exactly `len` bytes of ring or slot memory, as a view
    /// of shared bytes (the peer can write them too). Not called when the
    /// message can not be sent now.
    #[inline(always)]
    pub fn send_with(
        &mut self,
        len: usize,
        fill: impl FnOnce(SharedBytesMut<'_>),
    ) -> Result<(), SendError> {
        let mut r = self.reserve(len)?;
        fill(r.bytes_mut());
        r.commit();
        Ok(())
    }

    /// Reserves room for a message of `len` bytes: ring bytes, and a slot
    /// when it does not go inline. Fill it, then commit; dropping it
    /// uncommitted gives everything back.
    #[inline(always)]
    pub fn reserve(&mut self, len: usize) -> Result<Reservation<'_>, SendError> {
        if len <= self.max_inline as usize {
            let total = frame::inline_frame_len(len as u32);
            let Some(grant) = self.producer.grant(total)? else {
                return Err(SendError::Full);
            };
            return Ok(Reservation {
                grant: Some(grant),
                pool: &self.pool,
                len,
                slot: None,
            });
        }
        let Ok(len32) = u32::try_from(len) else {
            return Err(SendError::TooLarge {
                len,
                max: self.max_slot,
            });
        };
        // Room in the ring first, so that a full ring never holds a slot.
        let Some(grant) = self.producer.grant(frame::SLOT_REF_FRAME_SIZE)? else {
            return Err(SendError::Full);
        };
        let slot = match self.pool.allocate_fair_share(len32, self.owner) {
            Ok(s) => s,
            Err(AllocError::Exhausted) => return Err(SendError::Exhausted),
            Err(AllocError::TooLarge { max, .. }) => return Err(SendError::TooLarge { len, max }),
            Err(AllocError::Corrupt(e)) => return Err(SendError::Protocol(e.into())),
        };
        Ok(Reservation {
            grant: Some(grant),
            pool: &self.pool,
            len,
            slot: Some(slot),
        })
    }

    /// Sends back a slot this side received and still holds (from
    /// [`Message::take_slot`]), its payload rewritten in place to `len`
    /// bytes: a slot-ref frame naming the same slot and generation, which
    /// the other side frees as any slot it receives (vox-shm's rule; the
    /// reference crate's `free` checks state and generation, both
    /// unchanged). No allocation and no copy. On an error the slot comes
    /// back, still held: `Full` when the ring has no room for the frame
    /// now (retry later), `Protocol` when the peer broke the ring.
    pub fn send_held_slot(
        &mut self,
        slot: HeldSlot,
        len: u32,
    ) -> Result<(), (SendError, HeldSlot)> {
        if let Err(e) = self.pool.set_payload_len(&slot.0, len) {
            return Err((SendError::Protocol(e.into()), slot));
        }
        let mut grant = match self.producer.grant(frame::SLOT_REF_FRAME_SIZE) {
            Ok(Some(grant)) => grant,
            Ok(None) => return Err((SendError::Full, slot)),
            Err(e) => return Err((SendError::Protocol(e), slot)),
        };
        for (i, w) in frame::slot_ref_words(&slot.0).into_iter().enumerate() {
            grant.put_word(4 * i as u32, w);
        }
        grant.commit(frame::SLOT_REF_FRAME_SIZE);
        Ok(())
    }

    /// Allocates a slot for a payload of up to `len` bytes, within this
    /// sender's fair share, and holds it: no ring room is taken, so it may
    /// be filled at leisure, then sent with [`Self::send_held_slot`] (the
    /// other side receives an ordinary slot-ref frame and frees the slot)
    /// or given back with [`Self::free_held_slot`]. Even a payload small
    /// enough to go inline gets a slot here. `Exhausted` when no slot of a
    /// class that fits is free within the share now (retry later),
    /// `TooLarge` when no class fits.
    pub fn allocate_slot(&mut self, len: usize) -> Result<HeldSlot, SendError> {
        let max = self.max_slot;
        let len32 = u32::try_from(len).map_err(|_| SendError::TooLarge { len, max })?;
        match self.pool.allocate_fair_share(len32, self.owner) {
            Ok(slot) => Ok(HeldSlot(slot)),
            Err(AllocError::Exhausted) => Err(SendError::Exhausted),
            Err(AllocError::TooLarge { max, .. }) => Err(SendError::TooLarge { len, max }),
            Err(AllocError::Corrupt(e)) => Err(SendError::Protocol(e.into())),
        }
    }

    /// Whether [`Self::allocate_slot`] would find a slot now (a hint, by
    /// the same fair-share rule; changes nothing). `true` for a length no
    /// class fits: the allocation then fails at once with `TooLarge`.
    pub fn could_allocate_slot(&self, len: usize) -> bool {
        let Ok(len32) = u32::try_from(len) else {
            return true;
        };
        if len32 > self.max_slot {
            return true;
        }
        self.pool.could_allocate_fair_share(len32, self.owner)
    }

    /// Whether the ring has room for a slot-ref frame now (what
    /// [`Self::send_held_slot`] needs).
    pub fn has_room_for_slot_ref(&self) -> Result<bool, ProtocolError> {
        self.producer.has_room(frame::SLOT_REF_FRAME_SIZE)
    }

    /// Frees a held slot this side will not send back after all.
    pub fn free_held_slot(&mut self, slot: HeldSlot) -> Result<(), ProtocolError> {
        self.pool.free(slot.0).map_err(Into::into)
    }

    /// The payload area of a held slot (after its length prefix), to
    /// rewrite in place before [`Self::send_held_slot`].
    pub fn held_slot_area(&self, slot: &HeldSlot) -> SharedBytesMut<'_> {
        match self.pool.payload_area(&slot.0) {
            Ok(area) => area,
            Err(_) => unreachable!("a received slot was resolved when it arrived"),
        }
    }

    /// Whether a message of `len` bytes would find room now (a hint: the
    /// peer may take the last slot meanwhile). Changes nothing. It applies
    /// the rules [`Self::reserve`] applies (ring room, then a slot within
    /// this sender's fair share), so that a sender waiting until this says
    /// yes is not told yes while every reservation is refused.
    pub fn could_send(&self, len: usize) -> Result<bool, ProtocolError> {
        if len <= self.max_inline as usize {
            return self.producer.has_room(frame::inline_frame_len(len as u32));
        }
        let Ok(len32) = u32::try_from(len) else {
            return Ok(true);
        };
        Ok(self.producer.has_room(frame::SLOT_REF_FRAME_SIZE)?
            && self.pool.could_allocate_fair_share(len32, self.owner))
    }
}

/// Room for one message, reserved by [`Sender::reserve`].
#[derive(Debug)]
pub struct Reservation<'a> {
    /// Taken by `commit`.
    grant: Option<Grant<'a>>,
    pool: &'a SlotPool,
    len: usize,
    slot: Option<SlotRef>,
}

impl Reservation<'_> {
    /// The `len` payload bytes to fill, in the ring or in the slot, as a
    /// view of shared bytes.
    #[inline(always)]
    pub fn bytes_mut(&mut self) -> SharedBytesMut<'_> {
        match &self.slot {
            None => {
                let start = frame::FRAME_HEADER_SIZE as usize;
                let grant = self.grant.as_mut().expect("present until commit");
                let mut area = grant.bytes_mut();
                let ptr = area.as_mut_ptr();
                debug_assert!(start + self.len <= area.len());
                // SAFETY: the grant holds the 8-byte header, then `len`
                // payload bytes (reserve asked for inline_frame_len(len)),
                // ours until commit; the borrow is tied to `self`.
                unsafe { SharedBytesMut::from_raw_parts(ptr.add(start), self.len) }
            }
            Some(slot) => match self.pool.payload_area(slot) {
                Ok(mut area) => {
                    let ptr = area.as_mut_ptr();
                    // SAFETY: the first `len` bytes of a slot we allocated
                    // (checked against its class at allocation) and have
                    // not sent; the borrow is tied to `self`.
                    unsafe { SharedBytesMut::from_raw_parts(ptr, self.len) }
                }
                Err(_) => unreachable!("a slot we allocated resolves"),
            },
        }
    }

    /// The `len` payload bytes as a plain slice.
    ///
    /// # Safety
    ///
    /// As [`SharedBytesMut::as_mut_slice`]: the other side must not touch
    /// the reserved bytes while the slice lives (it is trusted to follow
    /// the protocol, or stopped).
    #[inline(always)]
    pub unsafe fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `bytes_mut` covers exactly the reserved bytes; that the
        // other side leaves them alone while the slice lives is this
        // function's `# Safety` promise, the same `into_mut_slice` asks.
        unsafe { self.bytes_mut().into_mut_slice() }
    }

    /// Sends only the first `len` bytes (when fewer than reserved were
    /// filled, say by a read that came up short). The message stays where
    /// it was reserved: inline, or in its slot.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Whether the payload goes in a slot.
    pub fn is_slot(&self) -> bool {
        self.slot.is_some()
    }

    /// Publishes the message.
    #[inline(always)]
    pub fn commit(mut self) {
        let mut grant = self.grant.take().expect("present until commit");
        match self.slot.take() {
            None => {
                let [total, w1] = frame::inline_header_words(self.len as u16);
                grant.put_word(0, total);
                grant.put_word(4, w1);
                // At most 3 bytes of padding: a byte loop, not a
                // `memory.fill` call on wasm.
                let start = frame::FRAME_HEADER_SIZE as usize + self.len;
                for b in &mut grant.as_mut_slice()[start..total as usize] {
                    *b = 0;
                }
                grant.commit(total);
            }
            Some(slot) => {
                if self.pool.set_payload_len(&slot, self.len as u32).is_err() {
                    unreachable!("the length was checked against the class at allocation");
                }
                for (i, w) in frame::slot_ref_words(&slot).into_iter().enumerate() {
                    grant.put_word(4 * i as u32, w);
                }
                grant.commit(frame::SLOT_REF_FRAME_SIZE);
            }
        }
    }
}

impl Drop for Reservation<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            // Ours and never sent: freeing it can not fail unless the peer
            // scribbled the meta, and then there is nothing better to do.
            let _ = self.pool.free(slot);
        }
    }
}

/// The receiving end of a channel.
#[derive(Debug)]
pub struct Receiver {
    consumer: Consumer,
    pool: SlotPool,
    /// An error met while dropping a message, reported by the next call.
    deferred: Option<ProtocolError>,
}

/// A received slot kept instead of freed, to be sent back in place
/// ([`Sender::send_held_slot`]) or freed ([`Sender::free_held_slot`]).
/// Dropping it leaks the slot until the segment is recovered.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a held slot is sent back or freed"]
pub struct HeldSlot(SlotRef);

impl HeldSlot {
    /// The slot.
    pub fn slot_ref(&self) -> SlotRef {
        self.0
    }
}

/// Where a received message's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// In the ring; the frame takes `frame_len` ring bytes.
    Inline { frame_len: u32 },
    /// In a slot, freed when the message is dropped.
    Slot(SlotRef),
}

/// A received message, borrowed in place. Dropping it gives the ring bytes
/// or the slot back.
pub struct Message<'a> {
    receiver: &'a mut Receiver,
    location: Location,
    ptr: *const u8,
    len: u32,
}

impl Receiver {
    /// A receiver reading `consumer`'s ring and freeing slots of `pool`.
    pub fn new(consumer: Consumer, pool: SlotPool) -> Self {
        Receiver {
            consumer,
            pool,
            deferred: None,
        }
    }

    /// Lazy (`true`) or immediate (`false`, the default) publication of
    /// released ring bytes: see [`Consumer::set_lazy_release`]. A lazy
    /// receiver must [`Self::publish`] before waiting on anything but this
    /// ring.
    pub fn set_lazy_release(&mut self, lazy: bool) {
        self.consumer.set_lazy_release(lazy);
    }

    /// Publishes released ring bytes to the sender.
    pub fn publish(&mut self) {
        self.consumer.publish();
    }

    /// Deferred (`true`) or immediate (`false`, the default) publication
    /// of released ring bytes: see [`Consumer::set_deferred`].
    pub fn set_deferred(&mut self, deferred: bool) {
        self.consumer.set_deferred(deferred);
    }

    /// The read cursor left unpublished, for whoever publishes it: see
    /// [`Consumer::take_unpublished`].
    pub fn take_unpublished(&mut self) -> Option<u32> {
        self.consumer.take_unpublished()
    }

    /// The next message, or `None` when the ring is empty.
    #[inline(always)]
    pub fn try_recv(&mut self) -> Result<Option<Message<'_>>, ProtocolError> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        let Some(parsed) = self.consumer.peek_frame()? else {
            return Ok(None);
        };
        match parsed.frame {
            Frame::Inline { offset, len } => {
                let ptr = self.consumer.data_ptr(offset);
                Ok(Some(Message {
                    receiver: self,
                    location: Location::Inline {
                        frame_len: parsed.total_len,
                    },
                    ptr,
                    len,
                }))
            }
            Frame::SlotRef(slot) => {
                let (ptr, len) = self.pool.payload(&slot)?;
                // The reference is copied; the frame's ring bytes can go.
                self.consumer.release(parsed.total_len);
                Ok(Some(Message {
                    receiver: self,
                    location: Location::Slot(slot),
                    ptr,
                    len,
                }))
            }
            Frame::MmapRef(m) => Err(ProtocolError::MmapRefUnsupported {
                map_id: m.map_id,
                payload_len: m.payload_len,
            }),
        }
    }

    /// Whether nothing is waiting (reloads the sender's cursor).
    #[inline(always)]
    pub fn is_empty(&mut self) -> Result<bool, ProtocolError> {
        self.consumer.is_empty()
    }
}

impl Message<'_> {
    /// Payload length.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the payload is empty.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the bytes are.
    #[inline(always)]
    pub fn location(&self) -> Location {
        self.location
    }

    /// Whether the payload sits in a slot (else inline in the ring).
    #[inline(always)]
    pub fn is_slot(&self) -> bool {
        matches!(self.location, Location::Slot(_))
    }

    /// The payload, in place in shared memory. Its bounds were checked;
    /// its contents are whatever the sender wrote, and a sender that breaks
    /// the protocol may still be changing them: copy out or read words,
    /// and parse the copy.
    #[inline(always)]
    pub fn bytes(&self) -> SharedBytes<'_> {
        // SAFETY: `ptr..ptr+len` was bounds-checked against the ring or the
        // slot when the message was parsed, and stays reserved for us
        // until this message is dropped.
        unsafe { SharedBytes::from_raw_parts(self.ptr, self.len as usize) }
    }

    /// The payload as a plain slice, with no copy.
    ///
    /// # Safety
    ///
    /// As [`SharedBytes::as_slice`]: the sender must not write the payload
    /// while the slice lives (it is trusted to follow the protocol, or
    /// stopped).
    #[inline(always)]
    pub unsafe fn as_bytes(&self) -> &[u8] {
        // SAFETY: `bytes` covers exactly the payload, bounds-checked when
        // the message was parsed; that the sender does not write it while
        // the slice lives is this function's `# Safety` promise, the same
        // `as_slice` asks.
        unsafe { self.bytes().as_slice() }
    }

    /// Pointer to the payload.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// Keeps the slot of a slot message instead of freeing it, to answer
    /// in place; an inline message is given back (`Err`), untouched.
    pub fn take_slot(self) -> Result<(HeldSlot, u32), Self> {
        match self.location {
            Location::Slot(slot) => {
                let len = self.len;
                // Not dropped: the slot is not freed, and the frame's ring
                // bytes were released when it was parsed.
                core::mem::forget(self);
                Ok((HeldSlot(slot), len))
            }
            Location::Inline { .. } => Err(self),
        }
    }
}

impl core::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Message")
            .field("location", &self.location)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Drop for Message<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        match self.location {
            Location::Inline { frame_len } => self.receiver.consumer.release(frame_len),
            Location::Slot(slot) => self.receiver.free_slot(slot),
        }
    }
}

impl Receiver {
    /// Frees a received slot; an error waits for the next `try_recv`. Out
    /// of line, so that dropping an inline message stays small enough to
    /// inline into a receive loop.
    #[inline(never)]
    fn free_slot(&mut self, slot: SlotRef) {
        if let Err(e) = self.pool.free(slot) {
            self.deferred = Some(e.into());
        }
    }
}
