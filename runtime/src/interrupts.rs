//! Why a guest's call was cut short: the marker errors that the host
//! imports, the WASI layer, the drivers and the spawn raise inside a
//! wasmtime call, and that the code classifying a guest's end looks for
//! (`guest_thread::exit_status`). Below every layer that raises them.

use std::time::{Duration, Instant};

/// `now + after`, or `None` (no deadline) when that is past what an
/// `Instant` can hold: `Duration::MAX` is a common way to say "forever".
pub(crate) fn deadline_after(after: Duration) -> Option<Instant> {
    Instant::now().checked_add(after)
}

/// Marker error: the guest's deadline passed.
#[derive(Debug)]
pub(crate) struct DeadlineExceeded;

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sandbox deadline exceeded")
    }
}

impl std::error::Error for DeadlineExceeded {}

/// Marker error: the host stopped the sandbox.
#[derive(Debug)]
pub(crate) struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sandbox stopped by the host")
    }
}

impl std::error::Error for Stopped {}

/// Marker error: one call of a callback guest ran past its slice.
#[derive(Debug)]
pub(crate) struct CallbackOverran(pub std::time::Duration);

impl std::fmt::Display for CallbackOverran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the callback ran for more than {:?} without returning: a callback must answer its \
             queued messages and return, since it holds the host's thread (run a long computation \
             in fiber or thread mode, or raise SandboxOptions::callback_slice, `shmrt run --callback-slice`)",
            self.0
        )
    }
}

impl std::error::Error for CallbackOverran {}

/// Marker error: pages of the segment file vanished under the sandbox
/// (someone truncated a named or foreign file).
#[derive(Debug)]
pub(crate) struct SegmentTruncated;

impl std::fmt::Display for SegmentTruncated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the segment file was truncated under the sandbox (pages of it vanished)")
    }
}

impl std::error::Error for SegmentTruncated {}
