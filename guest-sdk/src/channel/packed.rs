//! Packed lines: a host that feeds the plugin text lines (`shmrt run
//! --framing lines`) may put many lines in one message, a packed-lines
//! message (`shmrt_primitives::call_header::packed_lines`), when the
//! plugin says it reads them (the export `shmrt_packed_lines_v1`, which
//! [`crate::handler!`] and [`crate::packed_lines_export!`] define) and the
//! host's configuration says it packs (`shmrt.lines=packed-v1`).
//!
//! [`each_line`] hands the handler such a message one line at a time, as
//! a [`Message`] of its own, while the outbox gathers every answer the
//! handler sends (any number per line, each one line of the packed
//! answer: its bytes, then a newline) into a buffer of the plugin. When
//! the lines are handled, the gathered answers go back as one packed
//! answer, in the request's own slot when it came in one and they fit
//! there (no allocation: in callback mode a send can not wait for a
//! slot). What the host writes is what it would have written for the
//! same answers sent one message a line.

use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, Ordering};

use shmrt_primitives::call_header::{
    CALL_HEADER_SIZE, PACKED_LINES_CONFIG_KEY, PACKED_LINES_CONFIG_VALUE, PACKED_LINES_HEADER,
    packed_lines,
};

use super::outbox::copy;
use super::{Inner, Message, Outbox, SendError, channel};

/// Bytes of answers gathered before they go out as a packed answer of
/// their own (a line's answers longer than this go alone, packed).
const GATHER: usize = 64 << 10;

/// The gathering state of the plugin's one outbox.
#[derive(Debug, Default)]
pub(crate) struct Gathering {
    /// Sends are gathered (a packed-lines message is being answered).
    pub(super) on: bool,
    /// Bytes gathered in [`STAGING`].
    len: usize,
    /// Most bytes gathered in one packed answer: [`GATHER`], or less when
    /// the segment's largest message is smaller.
    cap: usize,
    /// Answers are written over the lines, in the request's own slot: the
    /// body's first byte there (see [`each_line`]). `None` once an answer
    /// did not go in place (the answers go to [`STAGING`] from then on).
    place: Option<NonNull<u8>>,
    /// Bytes of answers written from `place` on: never past the start of
    /// the line being handled, so a line is read before it is written over.
    placed: usize,
}

/// Where answers are gathered. One per plugin: the channel opens once and
/// its outbox is the only user.
struct Staging(UnsafeCell<[u8; GATHER]>);

// SAFETY: a plugin instance is one thread, and only the one `Outbox` (the
// channel opens once) reaches the buffer, through `staging`, one borrow
// at a time.
unsafe impl Sync for Staging {}

static STAGING: Staging = Staging(UnsafeCell::new([0; GATHER]));

/// The gathering buffer.
///
/// # Safety
///
/// Called by the channel's one outbox only, and no two of the returned
/// borrows are alive at once.
#[allow(clippy::mut_from_ref)]
unsafe fn staging() -> &'static mut [u8; GATHER] {
    // SAFETY: the caller's promise.
    unsafe { &mut *STAGING.0.get() }
}

/// Whether the host packs lines: 0 not asked yet, 1 no, 2 yes.
static HOST_PACKS: AtomicU8 = AtomicU8::new(0);

/// Whether the host said it packs lines (asked once, through the
/// configuration).
fn host_packs() -> bool {
    match HOST_PACKS.load(Ordering::Relaxed) {
        0 => {
            let mut buf = [0u8; 16];
            let packs = matches!(
                crate::config::get(PACKED_LINES_CONFIG_KEY, &mut buf),
                Ok(Some(v)) if v == PACKED_LINES_CONFIG_VALUE
            );
            HOST_PACKS.store(if packs { 2 } else { 1 }, Ordering::Relaxed);
            packs
        }
        v => v == 2,
    }
}

/// Calls `handle` with `msg`, or, when `msg` is a packed-lines message
/// from a host that packs, with each of its lines in order, and answers
/// it with everything `handle` sent, packed (see the module's doc). What
/// [`crate::handler!`] runs each message through; a plugin with a loop of
/// its own does the same and exports the marker with
/// [`crate::packed_lines_export!`].
///
/// The first error of `handle` ends the lines: the answers gathered
/// before it are sent, and it is returned.
///
/// ```no_run
/// use shmrt_guest::{Message, Outbox, SendError};
///
/// fn upper(msg: Message<'_>, outbox: &mut Outbox) -> Result<(), SendError> {
///     msg.reply_in_place(outbox, |b| {
///         b.make_ascii_uppercase();
///         b.len()
///     })
/// }
///
/// fn run(mut channel: shmrt_guest::Channel) -> i32 {
///     let (inbox, outbox) = channel.split();
///     while let Some(msg) = inbox.recv() {
///         if shmrt_guest::lines::each_line(msg, outbox, upper).is_err() {
///             return 1;
///         }
///     }
///     0
/// }
/// shmrt_guest::entry!(run);
/// shmrt_guest::packed_lines_export!();
/// # fn main() {}
/// ```
#[inline(always)]
pub fn each_line(
    msg: Message<'_>,
    outbox: &mut Outbox,
    mut handle: impl FnMut(Message<'_>, &mut Outbox) -> Result<(), SendError>,
) -> Result<(), SendError> {
    if msg.as_bytes().first() != Some(&PACKED_LINES_HEADER[0]) {
        // Not even the magic's first byte: the one check plain messages
        // pay, inlined into the caller's loop (the message is not copied
        // into a call of its own).
        return handle(msg, outbox);
    }
    each_line_of_packed(msg, outbox, handle)
}

/// [`each_line`] of a message that may be packed.
#[inline(never)]
fn each_line_of_packed(
    msg: Message<'_>,
    outbox: &mut Outbox,
    mut handle: impl FnMut(Message<'_>, &mut Outbox) -> Result<(), SendError>,
) -> Result<(), SendError> {
    let bytes = msg.as_bytes();
    let body_len = match packed_lines(bytes) {
        Some(Ok(body)) if host_packs() => body.len(),
        // A plain message, or one that only looks packed: as it is.
        _ => return handle(msg, outbox),
    };
    if outbox.pack.on {
        // Gathering already (a packed message inside a handler's own
        // loop can not happen): as it is.
        return handle(msg, outbox);
    }
    let frame = match msg.inner {
        Inner::Frame(m) => m,
        // A line is handled as it is (it can only come from a handler's
        // own call, while gathering: see above).
        _ => return handle(msg, outbox),
    };
    let largest = (outbox.max_payload() as usize).saturating_sub(CALL_HEADER_SIZE);
    outbox.pack = Gathering {
        on: true,
        len: 0,
        cap: GATHER.min(largest),
        place: None,
        placed: 0,
    };
    let (slot, body) = match frame.take_slot() {
        Ok((slot, _)) => {
            // In a slot: the answers are written over the lines.
            let mut area = outbox.tx.held_slot_area(&slot);
            // SAFETY: the slot's payload holds the header and the body
            // (`packed_lines` read them there).
            let body = unsafe { area.as_mut_ptr().add(CALL_HEADER_SIZE) };
            outbox.pack.place = NonNull::new(body);
            (Some(slot), body)
        }
        Err(inline) => {
            // Inline in the ring: the answers are gathered. The ring bytes
            // stay ours until `inline` is dropped, after the lines.
            // SAFETY: as in `Message::as_bytes`.
            let body = unsafe { inline.as_bytes() }[CALL_HEADER_SIZE..].as_ptr();
            let result = each_line_in(body.cast_mut(), body_len, false, outbox, &mut handle);
            drop(inline);
            let sent = outbox.finish_packed(None);
            return result.and(sent);
        }
    };
    let result = each_line_in(body, body_len, true, outbox, &mut handle);
    let sent = outbox.finish_packed(slot);
    result.and(sent)
}

/// Hands `handle` each line of the `len` bytes of a packed body at `body`
/// (which end with a newline), as a [`Message`]: `Inner::Placed` when
/// `placed` (the body lies in a held slot, ours to write), else
/// `Inner::Line`. Stops at the first error, returned.
///
/// The newlines are found eight bytes at a time: each word gives the mask
/// of its newline bytes, and each line costs a count of trailing zeros
/// (a byte loop costs a bounds-checked load and a branch a byte in wasm).
#[inline(always)]
fn each_line_in(
    body: *mut u8,
    len: usize,
    placed: bool,
    outbox: &mut Outbox,
    handle: &mut impl FnMut(Message<'_>, &mut Outbox) -> Result<(), SendError>,
) -> Result<(), SendError> {
    let mut start = 0;
    let mut at = 0;
    while at < len {
        let word = if len - at >= 8 {
            // SAFETY: 8 bytes inside the body; a line before them may be
            // written over meanwhile, never a byte at or past `start`.
            u64::from_le(unsafe { body.add(at).cast::<u64>().read_unaligned() })
        } else {
            let mut w = [0u8; 8];
            for (i, b) in w[..len - at].iter_mut().enumerate() {
                // SAFETY: inside the body, as above.
                *b = unsafe { body.add(at + i).read() };
            }
            // Zero bytes past the end are no newlines.
            u64::from_le_bytes(w)
        };
        let mut newlines = newline_mask(word);
        while newlines != 0 {
            let end = at + (newlines.trailing_zeros() / 8) as usize;
            newlines &= newlines - 1;
            // SAFETY: `start..end` lies inside the body, lines do not
            // overlap, and answers are written only before `start` (see
            // `Gathering::placed`), or inside the line by its handler.
            let msg = unsafe {
                let line = body.add(start);
                Message {
                    inner: if placed {
                        Inner::Placed(core::slice::from_raw_parts_mut(line, end - start))
                    } else {
                        Inner::Line(core::slice::from_raw_parts(line, end - start))
                    },
                }
            };
            handle(msg, outbox)?;
            start = end + 1;
        }
        at += 8;
    }
    Ok(())
}

/// The high bit of each byte of `word` that is a newline, and no other
/// bit (exact: no borrow runs from one byte into the next).
#[inline(always)]
fn newline_mask(word: u64) -> u64 {
    const LOWS: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const NL: u64 = 0x0101_0101_0101_0101 * b'\n' as u64;
    let x = word ^ NL;
    // A byte's high bit is set when its low seven bits are not all zero,
    // or when its own high bit is set: when it is not zero.
    !(((x & LOWS).wrapping_add(LOWS)) | x | LOWS)
}

impl Outbox {
    /// A send while gathering: `len` bytes filled by `fill` (which says
    /// how many to keep) become one line of the packed answer.
    #[inline(always)]
    pub(super) fn gather(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<(), SendError> {
        if self.pack.place.is_some() {
            // An answer that does not go in place: from now on, all go to
            // the gathering buffer.
            self.leave_place()?;
        }
        if self.pack.len + len + 1 > self.pack.cap {
            self.flush_gathered()?;
            if len + 1 > self.pack.cap {
                return self.send_packed_alone(len, fill);
            }
        }
        // SAFETY: the outbox is the buffer's one user, and this borrow
        // ends here.
        let buf = unsafe { staging() };
        let at = self.pack.len;
        let n = fill(&mut buf[at..at + len]).min(len);
        buf[at + n] = b'\n';
        self.pack.len = at + n + 1;
        Ok(())
    }

    /// A line of a packed message answered in place
    /// (`Message::reply_in_place`): copied to where its answer goes and
    /// transformed there.
    #[inline(never)]
    pub(super) fn gather_line(
        &mut self,
        line: &[u8],
        transform: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<(), SendError> {
        self.send_cut(line.len(), true, |out| {
            copy(out, line);
            transform(out)
        })
    }

    /// A line of a packed message in a held slot answered in place
    /// (`Message::reply_in_place`): transformed where it is, and, while
    /// the answers go in place, its answer written right after the
    /// previous one (where it already is when every line so far was
    /// answered with itself: no copy at all).
    #[inline(always)]
    pub(super) fn place_line(
        &mut self,
        line: &mut [u8],
        transform: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<(), SendError> {
        let Some(place) = self.pack.place else {
            return self.gather_line(line, transform);
        };
        let len = line.len();
        let n = transform(line).min(len);
        let from = line.as_ptr();
        let placed = self.pack.placed;
        // SAFETY: `place..` is the body of the held slot, and answers so
        // far end at or before this line's start (`Gathering::placed`):
        // `to..to + n + 1` ends at or before the line's newline, inside
        // the body. `line` is not used past here.
        unsafe {
            let to = place.as_ptr().add(placed);
            if to.cast_const() != from || n != len {
                core::ptr::copy(from, to, n);
                to.add(n).write(b'\n');
            }
        }
        self.pack.placed = placed + n + 1;
        Ok(())
    }

    /// Stops writing answers in place: those written so far go to the
    /// gathering buffer (empty until now), or, when they do not fit
    /// there, as a packed answer of their own.
    #[cold]
    fn leave_place(&mut self) -> Result<(), SendError> {
        let Some(place) = self.pack.place.take() else {
            return Ok(());
        };
        let placed = core::mem::take(&mut self.pack.placed);
        // SAFETY: the first `placed` bytes of the body hold the answers
        // written in place; the slot stays held until the lines are done.
        let answers = unsafe { core::slice::from_raw_parts(place.as_ptr(), placed) };
        if placed <= self.pack.cap {
            // SAFETY: the outbox is the buffer's one user; this borrow
            // ends with the copy.
            (unsafe { staging() })[..placed].copy_from_slice(answers);
            self.pack.len = placed;
            return Ok(());
        }
        let on = core::mem::replace(&mut self.pack.on, false);
        let total = CALL_HEADER_SIZE + placed;
        let sent = self.send_cut_ring(total, true, |out| {
            out[..CALL_HEADER_SIZE].copy_from_slice(&PACKED_LINES_HEADER);
            out[CALL_HEADER_SIZE..].copy_from_slice(answers);
            total
        });
        self.pack.on = on;
        sent
    }

    /// Sends what is gathered as a packed answer, now: before a message
    /// that does not go through the gathering ([`Outbox::reserve`]), or
    /// when the buffer is full.
    pub(super) fn flush_gathered(&mut self) -> Result<(), SendError> {
        self.leave_place()?;
        let len = core::mem::take(&mut self.pack.len);
        if len == 0 {
            return Ok(());
        }
        let on = core::mem::replace(&mut self.pack.on, false);
        let total = CALL_HEADER_SIZE + len;
        let sent = self.send_cut_ring(total, true, |out| {
            out[..CALL_HEADER_SIZE].copy_from_slice(&PACKED_LINES_HEADER);
            // SAFETY: the outbox is the buffer's one user; this borrow
            // ends with the copy.
            out[CALL_HEADER_SIZE..].copy_from_slice(&unsafe { staging() }[..len]);
            total
        });
        self.pack.on = on;
        sent
    }

    /// One answer longer than the gathering buffer: a packed answer of
    /// its own (the host reads every answer to a packed message as one).
    #[cold]
    fn send_packed_alone(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<(), SendError> {
        let on = core::mem::replace(&mut self.pack.on, false);
        let sent = self.send_cut_ring(CALL_HEADER_SIZE + len + 1, true, |out| {
            out[..CALL_HEADER_SIZE].copy_from_slice(&PACKED_LINES_HEADER);
            let n = fill(&mut out[CALL_HEADER_SIZE..CALL_HEADER_SIZE + len]).min(len);
            out[CALL_HEADER_SIZE + n] = b'\n';
            CALL_HEADER_SIZE + n + 1
        });
        self.pack.on = on;
        sent
    }

    /// The lines of a request are handled: gathering stops, and the
    /// answers go back as one packed answer, in the request's slot (held
    /// in `slot`) when it came in one large enough, else in a message of
    /// its own (the slot given back first, so that it is free for it).
    /// Answers written in place are in the slot already.
    fn finish_packed(&mut self, slot: Option<channel::HeldSlot>) -> Result<(), SendError> {
        self.pack.on = false;
        let slot = match (self.pack.place.take(), slot) {
            (Some(place), Some(slot)) => {
                let placed = core::mem::take(&mut self.pack.placed);
                if placed == 0 {
                    return self.tx.free_held_slot(slot).map_err(SendError::Protocol);
                }
                // SAFETY: the header's 16 bytes lie before the body, in the
                // held slot.
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        PACKED_LINES_HEADER.as_ptr(),
                        place.as_ptr().sub(CALL_HEADER_SIZE),
                        CALL_HEADER_SIZE,
                    );
                }
                return self.send_held_slot(slot, (CALL_HEADER_SIZE + placed) as u32);
            }
            (_, slot) => slot,
        };
        let len = core::mem::take(&mut self.pack.len);
        if len == 0 {
            if let Some(slot) = slot {
                return self.tx.free_held_slot(slot).map_err(SendError::Protocol);
            }
            return Ok(());
        }
        let total = CALL_HEADER_SIZE + len;
        if let Some(slot) = slot {
            let fits = {
                let mut area = self.tx.held_slot_area(&slot);
                match area.get_mut(..total) {
                    Some(area) => {
                        // SAFETY: a slot the host sent is ours until we send
                        // or free it, and the host is trusted (see
                        // `Message::as_bytes`).
                        let out = unsafe { area.into_mut_slice() };
                        out[..CALL_HEADER_SIZE].copy_from_slice(&PACKED_LINES_HEADER);
                        // SAFETY: the outbox is the buffer's one user; this
                        // borrow ends with the copy.
                        out[CALL_HEADER_SIZE..].copy_from_slice(&unsafe { staging() }[..len]);
                        true
                    }
                    None => false,
                }
            };
            if fits {
                return self.send_held_slot(slot, total as u32);
            }
            // Too small for the answers: given back, the answer takes a
            // slot of its own.
            let _ = self.tx.free_held_slot(slot);
        }
        self.send_cut_ring(total, true, |out| {
            out[..CALL_HEADER_SIZE].copy_from_slice(&PACKED_LINES_HEADER);
            // SAFETY: the outbox is the buffer's one user; this borrow ends
            // with the copy.
            out[CALL_HEADER_SIZE..].copy_from_slice(&unsafe { staging() }[..len]);
            total
        })
    }
}

#[cfg(test)]
mod tests {
    use super::newline_mask;

    /// Where the newlines of `bytes` (at most 8) are, by the mask.
    fn newlines(bytes: &[u8]) -> alloc_free::Positions {
        let mut w = [0u8; 8];
        w[..bytes.len()].copy_from_slice(bytes);
        let mut m = newline_mask(u64::from_le_bytes(w));
        let mut found = alloc_free::Positions::default();
        while m != 0 {
            found.push((m.trailing_zeros() / 8) as usize);
            m &= m - 1;
        }
        found
    }

    mod alloc_free {
        /// Up to 8 positions, without an allocator.
        #[derive(Default, Debug, PartialEq)]
        pub(super) struct Positions {
            at: [usize; 8],
            len: usize,
        }
        impl Positions {
            pub(super) fn push(&mut self, at: usize) {
                self.at[self.len] = at;
                self.len += 1;
            }
            pub(super) fn as_slice(&self) -> &[usize] {
                &self.at[..self.len]
            }
        }
    }

    #[test]
    fn every_newline_and_nothing_else_is_flagged() {
        // Every pattern of newlines over 8 bytes, the other bytes chosen
        // to tempt a borrow (0x0b, 0x0a ^ 1, and 0x8a, 0x0a with the high
        // bit) or plain.
        for fill in [b'x', 0x0b, 0x8a, 0x00, 0xff, 0x09] {
            for pattern in 0u32..256 {
                let mut bytes = [fill; 8];
                let mut want = alloc_free::Positions::default();
                for (i, b) in bytes.iter_mut().enumerate() {
                    if pattern & (1 << i) != 0 {
                        *b = b'\n';
                        want.push(i);
                    }
                }
                assert_eq!(
                    newlines(&bytes).as_slice(),
                    want.as_slice(),
                    "fill {fill:#x}, pattern {pattern:#010b}"
                );
            }
        }
    }
}
