//! Logging through the host: each call becomes a tracing event on the host
//! with the sandbox and peer as fields. Formatting goes into a stack buffer
//! (no allocator); longer messages are cut.

use core::fmt::{self, Write};

/// Bytes of one formatted log message; the rest is cut.
pub const LOG_BUFFER: usize = 512;

/// Log levels, as the host's `log` import numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// The finest detail.
    Trace = 0,
    /// What a developer debugging the plugin wants.
    Debug = 1,
    /// What went on.
    Info = 2,
    /// Something unexpected the plugin got over.
    Warn = 3,
    /// A failure: the host keeps the last one to explain a trap.
    Error = 4,
}

struct StackBuf {
    buf: [u8; LOG_BUFFER],
    len: usize,
}

impl Write for StackBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = LOG_BUFFER - self.len;
        let mut n = s.len().min(room);
        // Cut on a character boundary so the host gets valid UTF-8.
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Formats `args` and sends them to the host at `level`.
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    let mut b = StackBuf {
        buf: [0; LOG_BUFFER],
        len: 0,
    };
    let _ = b.write_fmt(args);
    crate::host::log(level as i32, &b.buf[..b.len]);
}

/// Logs at a given [`Level`]: `shmrt_guest::log!(Level::Info, "x = {}", x)`.
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)+) => { $crate::log::write($level, format_args!($($arg)+)) };
}

/// Logs at error level.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Error, $($arg)+) };
}

/// Logs at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Warn, $($arg)+) };
}

/// Logs at info level.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Info, $($arg)+) };
}

/// Logs at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Debug, $($arg)+) };
}

/// Logs at trace level.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Trace, $($arg)+) };
}
