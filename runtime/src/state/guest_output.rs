//! What a guest writes for people to read: its `shmrt.log` lines and its
//! WASI stdout and stderr ([`crate::GuestStdout::Log`]). Both reach the
//! host's log the same way: one event a line (target `shmrt::guest`, with
//! the sandbox's name), control characters and line breaks escaped (a
//! guest can not move the cursor, retitle the terminal, or start a line
//! that looks like one of shmrt's), under one rate limit per sandbox
//! ([`LogRate`]).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::escape::escape_line;
use super::options::{GuestStdout, SandboxOptions};
use super::shared::SandboxShared;

/// Longest log message passed on; longer ones are cut.
pub(crate) const MAX_LOG_BYTES: usize = 4096;

/// Gives the WASI context being built the guest's stdout and stderr, as
/// [`SandboxOptions::stdout`] says.
pub(crate) fn route(
    b: &mut WasiCtxBuilder,
    options: &SandboxOptions,
    rate: &LogRate,
    shared: &Arc<SandboxShared>,
) {
    let to_log = |stream| LogStream::new(stream, &options.name, rate.clone(), shared.clone());
    match options.stdout {
        GuestStdout::Log => {
            b.stdout(to_log(Stream::Stdout));
            b.stderr(to_log(Stream::Stderr));
        }
        GuestStdout::Null => {
            b.stderr(to_log(Stream::Stderr));
        }
        GuestStdout::RawStderr => {
            b.stdout(std::io::stderr());
            b.inherit_stderr();
        }
        GuestStdout::RawStdout => {
            b.inherit_stdout();
            b.inherit_stderr();
        }
    }
}

/// Which of the guest's WASI output streams.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// A WASI output stream of a guest that goes to the host's log, a line at
/// a time. Its copies (wasmtime-wasi makes one per descriptor) share the
/// unfinished line, which is said when the last copy goes.
#[derive(Clone)]
pub(crate) struct LogStream(Arc<Mutex<LineBuffer>>);

struct LineBuffer {
    stream: Stream,
    sandbox: String,
    rate: LogRate,
    /// The unfinished line, at most [`MAX_LOG_BYTES`].
    line: Vec<u8>,
    /// The unfinished line was cut: the rest of it is not kept.
    cut: bool,
    /// Where a panic said on stderr is kept for the sandbox's failure.
    shared: Arc<SandboxShared>,
    /// The last stderr line said a panic: the next one is its message.
    after_panic: bool,
}

impl LogStream {
    pub(crate) fn new(
        stream: Stream,
        sandbox: &str,
        rate: LogRate,
        shared: Arc<SandboxShared>,
    ) -> Self {
        LogStream(Arc::new(Mutex::new(LineBuffer {
            stream,
            sandbox: sandbox.to_owned(),
            rate,
            line: Vec::new(),
            cut: false,
            shared,
            after_panic: false,
        })))
    }

    fn write(&self, bytes: &[u8]) {
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|&c| c == b'\n') {
            b.take(&rest[..end]);
            b.say();
            rest = &rest[end + 1..];
        }
        b.take(rest);
    }
}

impl LineBuffer {
    /// Keeps what fits of `bytes` in the unfinished line.
    fn take(&mut self, bytes: &[u8]) {
        let room = MAX_LOG_BYTES - self.line.len();
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.cut |= bytes.len() > room;
    }

    /// Logs the unfinished line, if the rate allows.
    fn say(&mut self) {
        let line = std::mem::take(&mut self.line);
        let cut = if std::mem::take(&mut self.cut) {
            " [truncated]"
        } else {
            ""
        };
        if let Stream::Stderr = self.stream {
            self.note_panic(&line);
        }
        if !self.rate.admit(Instant::now()) {
            return;
        }
        let dropped = self.rate.take_dropped();
        let sandbox = self.sandbox.as_str();
        if dropped > 0 {
            tracing::warn!(
                target: "shmrt::guest",
                sandbox,
                "{dropped} log and output lines of this guest were dropped (more than {} a second)",
                LogRate::PER_SECOND
            );
        }
        let text = escape_line(&String::from_utf8_lossy(&line));
        match self.stream {
            Stream::Stdout => {
                tracing::info!(target: "shmrt::guest", sandbox, stream = "stdout", "{text}{cut}")
            }
            Stream::Stderr => {
                tracing::warn!(target: "shmrt::guest", sandbox, stream = "stderr", "{text}{cut}")
            }
        }
    }
}

impl LineBuffer {
    /// Keeps a panic the guest's standard library said on stderr (`thread
    /// '…' panicked at FILE:LINE:COL:`, then its message) as the reason of
    /// the sandbox's failure, as a `no_std` plugin's `shmrt.log` error is
    /// kept: the trap that follows says only "unreachable". Whatever the
    /// rate limit lets through.
    fn note_panic(&mut self, line: &[u8]) {
        let text = escape_line(&String::from_utf8_lossy(line));
        let mut last = self.shared.last_error_log();
        if let Some(at) = text.find("panicked at ") {
            *last = Some(text[at..].trim_end_matches(':').to_owned());
            self.after_panic = true;
        } else if std::mem::take(&mut self.after_panic)
            && !text.starts_with("note:")
            && let Some(panic) = last.as_mut()
        {
            panic.push_str(": ");
            panic.push_str(&text);
        }
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if !self.line.is_empty() || self.cut {
            self.say();
        }
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for LogStream {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        LogStream::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A token bucket over a guest's log lines and WASI output lines (one
/// bucket for both, shared by the copies of a sandbox's rate), so that a
/// guest cannot flood the host's stderr: a burst of [`Self::BURST`]
/// lines, then [`Self::PER_SECOND`] a second. What it drops is counted
/// and said with the next line let through (or when the sandbox ends).
#[derive(Clone, Debug)]
pub(crate) struct LogRate(Arc<Mutex<Bucket>>);

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    dropped: u64,
}

impl LogRate {
    /// Lines a second, sustained.
    pub const PER_SECOND: u32 = 200;
    /// Lines at once after a quiet spell.
    pub const BURST: u32 = 1000;

    pub fn new(now: Instant) -> Self {
        LogRate(Arc::new(Mutex::new(Bucket {
            tokens: f64::from(Self::BURST),
            refilled: now,
            dropped: 0,
        })))
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a line may go out now; counts it as dropped if not.
    pub fn admit(&self, now: Instant) -> bool {
        let mut b = self.bucket();
        let earned =
            now.saturating_duration_since(b.refilled).as_secs_f64() * f64::from(Self::PER_SECOND);
        b.tokens = (b.tokens + earned).min(f64::from(Self::BURST));
        b.refilled = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            b.dropped += 1;
            false
        }
    }

    /// Lines dropped since the last call.
    pub fn take_dropped(&self) -> u64 {
        std::mem::take(&mut self.bucket().dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn log_rate_lets_a_burst_through_then_the_sustained_rate() {
        let t0 = Instant::now();
        let rate = LogRate::new(t0);
        let burst = (0..LogRate::BURST * 2).filter(|_| rate.admit(t0)).count();
        assert_eq!(burst, LogRate::BURST as usize);
        assert_eq!(rate.take_dropped(), u64::from(LogRate::BURST));
        assert_eq!(rate.take_dropped(), 0, "the count restarts once said");
        // One second later, one second's worth comes back, not more.
        let t1 = t0 + Duration::from_secs(1);
        let later = (0..LogRate::BURST).filter(|_| rate.admit(t1)).count();
        assert_eq!(later, LogRate::PER_SECOND as usize);
    }
}
