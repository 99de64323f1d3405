//! Feeding standard input to the guest: the stdin thread cuts it into
//! messages ([`Framing`]) and sends each to the current sandbox of the
//! run, waiting for the next one across a restart ([`Feeder`]); raw input
//! is read straight into ring or slot memory, lines in blocks sent as a
//! batch, packed many to a message for a plugin that reads packed lines.
//! Progress shows on stderr when it is a terminal.

use std::io::{self, BufRead};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use shmrt::primitives::call_header::{CALL_HEADER_SIZE, CALL_MAGIC, PACKED_LINES_HEADER};
use shmrt::primitives::layout::SegmentConfig;
use shmrt::{HostSender, ReadSend, SandboxError, SendReadError};

use super::framing::{Framing, read_len32};

/// The stdin side of a run, shared with the sandboxes it feeds in turn.
#[derive(Default)]
pub(super) struct Feeder {
    /// The current sandbox's sender; `None` between sandboxes.
    current: Mutex<Option<HostSender>>,
    changed: std::sync::Condvar,
    /// stdin has ended: every sender handed over gets goodbye at once.
    eof: std::sync::atomic::AtomicBool,
    /// Reading stdin or sending failed.
    pub(super) error: Mutex<Option<anyhow::Error>>,
    /// The largest message the segment carries.
    max_message: usize,
    /// Lines go packed, many to a message (the plugin reads packed lines).
    packed: bool,
}

/// The largest packed-lines message the stdin thread makes: a 64 KiB slot
/// of the default segment (at most 16 in flight, each answered in place).
const PACK: usize = 64 << 10;

/// The least room a packed message needs to be worth it: a header and a
/// few lines.
const PACK_MIN: usize = 64;

/// Sends `msg` to the sender under `batch` without waking the guest, or,
/// when it is full or gone, through the waiting path without the lock.
macro_rules! send_batched {
    ($self:ident, $batch:ident, $msg:expr) => {{
        let msg: &[u8] = $msg;
        let sent = match $batch.as_mut() {
            Some(tx) => tx.try_send_no_notify(msg).unwrap_or(false),
            None => false,
        };
        if !sent {
            // Full, or between sandboxes, or an error to report: the
            // waiting path, without the lock.
            if let Some(tx) = $batch.as_ref() {
                tx.notify();
            }
            drop($batch);
            $self.deliver(msg)?;
            $batch = $self.current.lock().unwrap_or_else(|e| e.into_inner());
        }
    }};
}

impl Feeder {
    /// Starts the one feeder of a run on a thread of its own: it cuts
    /// stdin into messages and sends each to the current sandbox's sender,
    /// waiting for the next one when a sandbox fails. It may stay blocked
    /// on stdin after the last guest ends; it is not joined.
    /// `packed`: lines go packed, many to a message.
    pub(super) fn start(
        segment: &SegmentConfig,
        framing: Framing,
        chunk: usize,
        packed: bool,
    ) -> anyhow::Result<Arc<Feeder>> {
        // The largest message the segment carries bounds what stdin may
        // make us buffer (a line or a len32 record).
        let max_message = super::framing::max_message(segment);
        let feeder = Arc::new(Feeder {
            max_message,
            packed: packed && max_message >= PACK_MIN,
            ..Feeder::default()
        });
        let f = feeder.clone();
        std::thread::Builder::new()
            .name("shmrt-stdin".into())
            // It may run a callback guest (a send calls it for room).
            .stack_size(shmrt::GUEST_THREAD_STACK)
            .spawn(move || f.run(io::stdin().lock(), framing, chunk))
            .context("starting the stdin thread")?;
        Ok(feeder)
    }
    /// Gives the feeder the next sandbox's sender.
    pub(super) fn hand_over(&self, mut tx: HostSender) {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if self.eof.load(std::sync::atomic::Ordering::Acquire) {
            tx.goodbye();
        }
        *cur = Some(tx);
        self.changed.notify_all();
    }

    /// Sends `msg` to the current sandbox, waiting for a new one when the
    /// current one has ended.
    fn deliver(&self, msg: &[u8]) -> Result<(), SandboxError> {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match cur.as_mut() {
                Some(tx) => match tx.send(msg) {
                    Ok(()) => return Ok(()),
                    // That guest is gone: the message goes to the next.
                    Err(SandboxError::Closed { .. }) => *cur = None,
                    Err(e) => return Err(e),
                },
                None => cur = self.changed.wait(cur).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    /// The stdin thread: feeds `input` until it ends or fails (a failure
    /// is kept in `error`), then says goodbye to the current sandbox and,
    /// through `eof`, to any handed over later.
    fn run(&self, input: impl BufRead, framing: Framing, chunk: usize) {
        let mut progress = Progress::new();
        let result = self.feed(input, framing, chunk, &mut progress);
        progress.done();
        if let Err(e) = result {
            *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        }
        self.eof.store(true, std::sync::atomic::Ordering::Release);
        if let Some(tx) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            tx.goodbye();
        }
    }

    /// Takes the current sandbox's sender out (waiting for one), so that
    /// a restart can hand over the next while this one is in use.
    fn take_current(&self) -> HostSender {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(tx) = cur.take() {
                return tx;
            }
            cur = self.changed.wait(cur).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Puts a sender taken out back, unless a newer one came meanwhile.
    fn put_back(&self, tx: HostSender) {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.is_none() {
            *cur = Some(tx);
        }
    }

    /// Raw input, read straight into the guest's ring or slot memory in
    /// messages of up to `chunk` bytes: no copy on the host.
    fn feed_raw(
        &self,
        input: std::os::fd::BorrowedFd<'_>,
        chunk: usize,
        progress: &mut Progress,
    ) -> anyhow::Result<()> {
        loop {
            let mut tx = self.take_current();
            match tx.send_from_reader(chunk, |buf| read_full_into(&input, buf)) {
                Ok(ReadSend::Sent(n)) => {
                    self.put_back(tx);
                    progress.add(n);
                }
                Ok(ReadSend::Eof) => {
                    self.put_back(tx);
                    return Ok(());
                }
                Ok(ReadSend::GuestGone(bytes)) => {
                    // Read for a guest that has ended: the next one gets it.
                    drop(tx);
                    self.deliver(&bytes)?;
                    progress.add(bytes.len());
                }
                // That guest is gone before anything was read: wait for the
                // next one.
                Err(SendReadError::Sandbox(SandboxError::Closed { .. })) => drop(tx),
                Err(SendReadError::Sandbox(e)) => {
                    self.put_back(tx);
                    return Err(e.into());
                }
                Err(SendReadError::Read(e)) => {
                    self.put_back(tx);
                    return Err(e.into());
                }
            }
        }
    }

    /// Lines, read in large blocks and sent as a batch per block: the
    /// lines of a block go into the ring without waking the guest, and
    /// one notification follows (no syscall or fence per line). Packed,
    /// the complete lines of each read go in packed-lines messages of up
    /// to [`PACK`] bytes: nothing waits for more input to fill one.
    fn feed_lines(
        &self,
        input: std::os::fd::BorrowedFd<'_>,
        progress: &mut Progress,
    ) -> anyhow::Result<()> {
        const BLOCK: usize = 1 << 18;
        // Packed, each message's header is written in the 16 bytes before
        // its first line (lines already sent, or this room at the front).
        let head = if self.packed { CALL_HEADER_SIZE } else { 0 };
        let mut buf = vec![0u8; 4 * BLOCK];
        let (mut start, mut end) = (head, head);
        loop {
            if end - start > self.max_message {
                anyhow::bail!(
                    "a line of more than {} bytes, the largest message the segment carries: \
                     give --slot-classes a larger class, or use --framing raw",
                    self.max_message
                );
            }
            // Room for a block (and a newline after a last line without
            // one): move the partial line to the front, or grow for a
            // line longer than the buffer.
            if buf.len() - end <= BLOCK {
                if start > head {
                    buf.copy_within(start..end, head);
                    end -= start - head;
                    start = head;
                } else {
                    buf.resize(buf.len() * 2, 0);
                }
            }
            let room = buf.len() - 1;
            let n = read_some(input, &mut buf[end..room])?;
            if n == 0 {
                if start < end {
                    if self.packed {
                        // The last line, without its newline: packed with
                        // one, the plugin sees the same line.
                        buf[end] = b'\n';
                        self.send_packs(&mut buf, start, end + 1, progress)?;
                    } else {
                        self.deliver(&buf[start..end])?;
                        progress.add(end - start);
                    }
                }
                return Ok(());
            }
            end += n;
            if self.packed {
                start = self.send_packs(&mut buf, start, end, progress)?;
                continue;
            }
            let mut batch = self.current.lock().unwrap_or_else(|e| e.into_inner());
            let base = start;
            for nl in memchr::memchr_iter(b'\n', &buf[base..end]) {
                let line = base + nl;
                send_batched!(self, batch, &buf[start..line]);
                progress.add(line - start);
                start = line + 1;
            }
            if let Some(tx) = batch.as_ref() {
                tx.notify();
            }
        }
    }

    /// Sends the complete lines of `buf[start..end]` packed, as a batch
    /// (one notification); where the partial line left starts. `start`
    /// is at least [`CALL_HEADER_SIZE`]: each message's header goes in the
    /// bytes before its first line. A line too long for a packed message
    /// of its own goes alone, plain, as without packing (unless it opens
    /// as a header would: refused, the plugin could not tell).
    fn send_packs(
        &self,
        buf: &mut [u8],
        mut start: usize,
        end: usize,
        progress: &mut Progress,
    ) -> anyhow::Result<usize> {
        let Some(last) = memchr::memrchr(b'\n', &buf[start..end]) else {
            return Ok(start);
        };
        let stop = start + last + 1;
        let body_max = PACK.min(self.max_message) - CALL_HEADER_SIZE;
        let mut batch = self.current.lock().unwrap_or_else(|e| e.into_inner());
        while start < stop {
            let cut = if stop - start <= body_max {
                stop
            } else {
                match memchr::memrchr(b'\n', &buf[start..start + body_max]) {
                    Some(i) => start + i + 1,
                    // One line longer than a pack: alone.
                    None => {
                        memchr::memchr(b'\n', &buf[start..stop]).map_or(stop, |i| start + i + 1)
                    }
                }
            };
            if cut - start + CALL_HEADER_SIZE <= self.max_message {
                buf[start - CALL_HEADER_SIZE..start].copy_from_slice(&PACKED_LINES_HEADER);
                send_batched!(self, batch, &buf[start - CALL_HEADER_SIZE..cut]);
            } else {
                let line = &buf[start..cut - 1];
                if line.starts_with(&CALL_MAGIC) {
                    anyhow::bail!(
                        "a line of {} bytes that opens with the bytes of a packed-lines header \
                         ({:02X?}), too long to go packed (the largest message the segment \
                         carries is {} bytes): give --slot-classes a larger class, or use \
                         --framing raw",
                        line.len(),
                        CALL_MAGIC,
                        self.max_message
                    );
                }
                send_batched!(self, batch, line);
            }
            progress.add(cut - start);
            start = cut;
        }
        if let Some(tx) = batch.as_ref() {
            tx.notify();
        }
        Ok(start)
    }

    /// Cuts `input` into messages and delivers them.
    fn feed(
        &self,
        input: impl BufRead,
        framing: Framing,
        chunk: usize,
        progress: &mut Progress,
    ) -> anyhow::Result<()> {
        // Nothing was read through `input`'s buffer yet: raw and line
        // input read the file descriptor themselves.
        let stdin = io::stdin();
        let fd = std::os::fd::AsFd::as_fd(&stdin);
        match framing {
            Framing::Raw => self.feed_raw(fd, chunk, progress),
            Framing::Lines => self.feed_lines(fd, progress),
            Framing::Len32 => self.feed_len32(input, progress),
        }
    }

    /// Records of a u32 little-endian length and that many bytes, each
    /// delivered as a message.
    fn feed_len32(&self, mut input: impl BufRead, progress: &mut Progress) -> anyhow::Result<()> {
        let mut buf = Vec::new();
        while read_len32(&mut input, &mut buf, self.max_message)? {
            self.deliver(&buf)?;
            progress.add(buf.len());
        }
        Ok(())
    }
}

/// Reads from `input` until `buf` is full or the input ends, straight
/// into the shared bytes (the kernel writes them; no slice of shared
/// memory is made); how many bytes it read.
fn read_full_into(
    input: &impl std::os::fd::AsFd,
    mut buf: shmrt::SharedBytesMut<'_>,
) -> io::Result<usize> {
    let fd = input.as_fd();
    let mut n = 0;
    while n < buf.len() {
        let at = buf.as_mut_ptr().wrapping_add(n);
        // SAFETY: `[at, at + len - n)` lies inside the view, which is
        // writable while borrowed; read(2) writes through the pointer and
        // makes no Rust reference.
        let got = unsafe {
            libc::read(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                at.cast(),
                buf.len() - n,
            )
        };
        match got {
            0 => break,
            k if k > 0 => n += k as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(n)
}

/// One `read(2)` of what is there (retried when interrupted).
fn read_some(input: std::os::fd::BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match rustix::io::read(input, &mut *buf) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Bytes sent so far, shown on stderr twice a second when it is a
/// terminal (never on stdout, which carries messages).
struct Progress {
    show: bool,
    bytes: u64,
    last: std::time::Instant,
    shown: bool,
}

impl Progress {
    fn new() -> Self {
        use std::io::IsTerminal;
        Progress {
            show: io::stderr().is_terminal(),
            bytes: 0,
            last: std::time::Instant::now(),
            shown: false,
        }
    }

    fn add(&mut self, n: usize) {
        self.bytes += n as u64;
        if self.show && self.last.elapsed() >= Duration::from_millis(500) {
            self.last = std::time::Instant::now();
            self.shown = true;
            eprint!(
                "\r\x1b[Kshmrt: sent {:.1} MiB",
                self.bytes as f64 / (1 << 20) as f64
            );
        }
    }

    fn done(&self) {
        if self.shown {
            eprint!("\r\x1b[K");
        }
    }
}
