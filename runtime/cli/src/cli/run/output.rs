//! The guest's messages written to standard output, framed
//! ([`Framing`]), gathered into few `write(2)`s and never borrowed as a
//! slice of shared memory; and how a run ends when writing fails.

use std::io;
use std::time::Duration;

use shmrt::{HostReceiver, SandboxError};

use super::framing::Framing;
use crate::cli::Failure;
use crate::cli::exit_codes::OUTPUT_FAILED;

/// What a failed write of the guest's messages is called.
pub(super) const OUTPUT: &str = "writing standard output";

/// What a malformed packed answer of the guest is called.
pub(super) const PACKED_ANSWER: &str = "the guest answered packed lines with a malformed \
    packed-lines message (a plugin that exports shmrt_packed_lines_v1 answers them as the \
    guest SDK's `lines::each_line` does)";

/// Writes the guest's messages until it has ended and all are read.
/// Everything queued is taken in one pass and written with one `write`
/// when the pass ends or the buffer fills (no syscall per message); a
/// large message goes straight from ring or slot memory to the file
/// descriptor. The guest may rewrite its bytes meanwhile: they are copied
/// or handed to the kernel through the view, never borrowed as a slice.
/// `packed`: lines go packed, and the guest's packed answers are written
/// as they are (their lines end with their newlines).
pub(super) fn drain(
    rx: &mut HostReceiver,
    framing: Framing,
    packed: bool,
) -> Result<(), SandboxError> {
    let mut out = Output::new(packed);
    loop {
        while let Some(msg) = rx.try_recv()? {
            out.message(framing, msg.bytes())?;
        }
        // Nothing queued: wait a moment for more before writing (a write
        // per message made a million lines 700,000 syscalls), then show
        // what we have before waiting for as long as it takes.
        let wait = if out.is_empty() {
            None
        } else {
            Some(OUTPUT_LINGER)
        };
        match rx.recv_timeout(wait) {
            Ok(Some(msg)) => out.message(framing, msg.bytes())?,
            Ok(None) => out.flush()?,
            Err(SandboxError::Closed { .. }) => break,
            Err(e) => return Err(e),
        }
    }
    out.flush()
}

/// How long output waits for more before it is written, when the guest
/// has nothing queued: short enough for a person at a terminal.
const OUTPUT_LINGER: Duration = Duration::from_millis(1);

/// Standard output, written with `write(2)` on file descriptor 1: small
/// messages are gathered in a buffer, large ones go straight from shared
/// memory to the kernel.
struct Output {
    buf: Vec<u8>,
    /// Packed-lines answers are written as they are.
    packed: bool,
}

impl Output {
    /// Flushed at this size; messages this large skip the buffer.
    const BUF: usize = 1 << 16;

    fn new(packed: bool) -> Self {
        Output {
            buf: Vec::with_capacity(Self::BUF),
            packed,
        }
    }

    fn err(source: io::Error) -> SandboxError {
        SandboxError::Io {
            what: OUTPUT,
            source,
        }
    }

    /// One guest message, framed for stdout.
    fn message(
        &mut self,
        framing: Framing,
        bytes: shmrt::SharedBytes<'_>,
    ) -> Result<(), SandboxError> {
        match framing {
            Framing::Lines => {
                if self.packed
                    && let Some(body) = packed_body(bytes)
                {
                    return self.put(body?);
                }
                self.put(bytes)?;
                self.extend(b"\n")
            }
            Framing::Raw => self.put(bytes),
            Framing::Len32 => {
                self.extend(&(bytes.len() as u32).to_le_bytes())?;
                self.put(bytes)
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn extend(&mut self, bytes: &[u8]) -> Result<(), SandboxError> {
        if self.buf.len() + bytes.len() > Self::BUF {
            self.flush()?;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Appends shared bytes: copied once into the buffer, or, when large,
    /// written from where they are.
    fn put(&mut self, bytes: shmrt::SharedBytes<'_>) -> Result<(), SandboxError> {
        let len = bytes.len();
        if len >= Self::BUF / 4 {
            self.flush()?;
            // SAFETY: `bytes` is readable for its length while borrowed;
            // write(2) reads it in the kernel, and no Rust reference is
            // made over memory the guest may write.
            return unsafe { write_all_raw(bytes.as_ptr(), len) }.map_err(Self::err);
        }
        if self.buf.len() + len > Self::BUF {
            self.flush()?;
        }
        let start = self.buf.len();
        self.buf.resize(start + len, 0);
        bytes.copy_to(&mut self.buf[start..]);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SandboxError> {
        if !self.buf.is_empty() {
            // SAFETY: our own buffer, initialized for its length.
            unsafe { write_all_raw(self.buf.as_ptr(), self.buf.len()) }.map_err(Self::err)?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// The lines of a packed-lines answer, each ending with its newline:
/// `None` when `bytes` is not one, an error when it opens as one but is
/// malformed. Reads the header and the last byte, never the whole.
fn packed_body(
    bytes: shmrt::SharedBytes<'_>,
) -> Option<Result<shmrt::SharedBytes<'_>, SandboxError>> {
    use shmrt::primitives::call_header::{CALL_HEADER_SIZE, packed_lines};
    // The header and the body's last byte, checked as the whole would be.
    let mut probe = [0u8; CALL_HEADER_SIZE + 1];
    let n = bytes.len().min(CALL_HEADER_SIZE);
    bytes.get(..n)?.copy_to(&mut probe[..n]);
    let mut len = n;
    if bytes.len() > CALL_HEADER_SIZE {
        probe[len] = bytes.byte(bytes.len() - 1)?;
        len += 1;
    }
    match packed_lines(&probe[..len])? {
        Ok(_) => Some(Ok(bytes.get(n..).unwrap_or(bytes))),
        Err(e) => Some(Err(SandboxError::Io {
            what: PACKED_ANSWER,
            source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
        })),
    }
}

/// Writes `len` bytes at `ptr` to standard output, all of them.
///
/// # Safety
///
/// `ptr..ptr + len` is readable for the duration of the call.
unsafe fn write_all_raw(mut ptr: *const u8, mut len: usize) -> io::Result<()> {
    while len > 0 {
        // SAFETY: the caller's promise; the kernel reads the bytes.
        let n = unsafe { libc::write(libc::STDOUT_FILENO, ptr.cast(), len) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        // SAFETY: `n <= len` bytes were written, so still inside the range.
        ptr = unsafe { ptr.add(n as usize) };
        len -= n as usize;
    }
    Ok(())
}

/// How a run ends when writing its output failed: by SIGPIPE when the
/// reader is gone, else with [`OUTPUT_FAILED`]. `None` for any other end.
pub(super) fn output_failure(end: &Result<i32, SandboxError>) -> Option<Failure> {
    let Err(SandboxError::Io { what, source }) = end else {
        return None;
    };
    if *what != OUTPUT {
        return None;
    }
    if source.kind() == io::ErrorKind::BrokenPipe {
        // Whoever read our output is gone: end as `cat` does.
        die_of_sigpipe();
    }
    Some(Failure {
        error: anyhow::anyhow!("{what}: {source}"),
        code: OUTPUT_FAILED,
    })
}

/// Ends the process by SIGPIPE, as a writer to a closed pipe does by
/// default (a shell reports status 141); Rust ignores SIGPIPE, so it is
/// restored and raised here once everything is cleaned up.
pub(super) fn die_of_sigpipe() -> ! {
    // SAFETY: plain libc calls; restoring the default action and raising
    // the signal ends the process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(128 + libc::SIGPIPE)
}
