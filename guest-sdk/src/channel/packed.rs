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
use core::sync::atomic::{AtomicU8, Ordering};

use shmrt_primitives::call_header::{
    CALL_HEADER_SIZE, PACKED_LINES_CONFIG_KEY, PACKED_LINES_CONFIG_VALUE, PACKED_LINES_HEADER,
    packed_lines,
};

use super::outbox::copy;
use super::{Inner, Message, Outbox, SendError};

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
#[inline]
pub fn each_line(
    msg: Message<'_>,
    outbox: &mut Outbox,
    mut handle: impl FnMut(Message<'_>, &mut Outbox) -> Result<(), SendError>,
) -> Result<(), SendError> {
    let bytes = msg.as_bytes();
    if bytes.first() != Some(&PACKED_LINES_HEADER[0]) {
        // Not even the magic's first byte: the one check plain messages pay.
        return handle(msg, outbox);
    }
    let body = match packed_lines(bytes) {
        Some(Ok(body)) if host_packs() => body,
        // A plain message, or one that only looks packed: as it is.
        _ => return handle(msg, outbox),
    };
    if outbox.pack.on {
        // Gathering already (a packed message inside a handler's own
        // loop can not happen): as it is.
        return handle(msg, outbox);
    }
    let largest = (outbox.max_payload() as usize).saturating_sub(CALL_HEADER_SIZE);
    outbox.pack = Gathering {
        on: true,
        len: 0,
        cap: GATHER.min(largest),
    };
    let mut result = Ok(());
    let mut rest = body;
    while !rest.is_empty() {
        let end = find_newline(rest).unwrap_or(rest.len());
        let line = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or(&[]);
        let msg = Message {
            inner: Inner::Line(line),
        };
        if let Err(e) = handle(msg, outbox) {
            result = Err(e);
            break;
        }
    }
    let sent = outbox.finish_packed(msg);
    result.and(sent)
}

/// Where the first newline of `bytes` is: eight bytes at a time (a byte
/// loop costs a bounds-checked load and a branch a byte in wasm).
#[inline(always)]
fn find_newline(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const NL: u64 = ONES * b'\n' as u64;
    let mut at = 0;
    while let Some(word) = bytes.get(at..at + 8) {
        let w = u64::from_le_bytes(word.try_into().expect("8 bytes")) ^ NL;
        let zero = w.wrapping_sub(ONES) & !w & HIGHS;
        if zero != 0 {
            // The lowest flagged byte is the first newline (borrows only
            // flag bytes above a true zero).
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    bytes[at..].iter().position(|&b| b == b'\n').map(|i| at + i)
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
    #[inline(always)]
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

    /// Sends what is gathered as a packed answer, now: before a message
    /// that does not go through the gathering ([`Outbox::reserve`]), or
    /// when the buffer is full.
    pub(super) fn flush_gathered(&mut self) -> Result<(), SendError> {
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

    /// The lines of `request` are handled: gathering stops, and what was
    /// gathered goes back as one packed answer, in the request's slot when
    /// it came in one large enough, else in a message of its own (the
    /// request given back first, so that its slot is free for it).
    fn finish_packed(&mut self, request: Message<'_>) -> Result<(), SendError> {
        self.pack.on = false;
        let len = core::mem::take(&mut self.pack.len);
        if len == 0 {
            return Ok(());
        }
        let total = CALL_HEADER_SIZE + len;
        if let Inner::Frame(m) = request.inner {
            match m.take_slot() {
                Ok((slot, _)) => {
                    let fits = {
                        let mut area = self.tx.held_slot_area(&slot);
                        match area.get_mut(..total) {
                            Some(area) => {
                                // SAFETY: a slot the host sent is ours until
                                // we send or free it, and the host is trusted
                                // (see `Message::as_bytes`).
                                let out = unsafe { area.into_mut_slice() };
                                out[..CALL_HEADER_SIZE].copy_from_slice(&PACKED_LINES_HEADER);
                                // SAFETY: the outbox is the buffer's one
                                // user; this borrow ends with the copy.
                                out[CALL_HEADER_SIZE..]
                                    .copy_from_slice(&unsafe { staging() }[..len]);
                                true
                            }
                            None => false,
                        }
                    };
                    if fits {
                        return self.send_held_slot(slot, total as u32);
                    }
                    // Too small for the answers: given back, the answer
                    // takes a slot of its own.
                    let _ = self.tx.free_held_slot(slot);
                }
                Err(m) => drop(m),
            }
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
    use super::find_newline;

    #[test]
    fn newlines_are_found_at_every_offset() {
        for len in 0..40 {
            for at in 0..=len {
                let mut b = [b'x'; 40];
                let bytes = &mut b[..len];
                if at < len {
                    bytes[at] = b'\n';
                    // Bytes that borrow in the word trick after it.
                    if at + 1 < len {
                        bytes[at + 1] = 0x0b;
                    }
                }
                let want = (at < len).then_some(at);
                assert_eq!(find_newline(bytes), want, "len {len}, newline at {at}");
            }
        }
        assert_eq!(find_newline(b"\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\n"), Some(8));
    }
}
