//! Why a guest's call is cut short: the one check of what interrupts
//! guest code ([`Interrupt::check`]: the host's stop, a truncated segment
//! file, the deadline, a callback's slice), made at every epoch tick
//! ([`watch_deadline`]), in WASI sleeps and in `wait`; and the marker
//! errors it raises inside a wasmtime call, which the code classifying a
//! guest's end looks for (`exec/guest_end.rs`). Below every layer that
//! raises them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Store, UpdateDeadline};

use super::shared::SandboxShared;
use super::store::SandboxState;

/// What cuts a guest's call short, in the order [`Self::check`] looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interrupt {
    /// The host stopped the sandbox.
    Stopped,
    /// Pages of the segment file vanished under the sandbox.
    Truncated,
    /// The guest's deadline passed.
    Deadline,
    /// A callback call ran past its slice (this long).
    Overran(Duration),
}

impl Interrupt {
    /// What the host did: a stop, then a truncated segment file.
    pub(crate) fn from_host(shared: &SandboxShared) -> Option<Self> {
        if shared.stop_requested() {
            return Some(Interrupt::Stopped);
        }
        if shared.segment_file().was_truncated() {
            return Some(Interrupt::Truncated);
        }
        None
    }

    /// Whether `deadline` has passed.
    pub(crate) fn past(deadline: Option<Instant>) -> Option<Self> {
        deadline
            .is_some_and(|d| Instant::now() >= d)
            .then_some(Interrupt::Deadline)
    }

    /// Everything that interrupts guest code, in one order for every path
    /// (epoch ticks, WASI sleeps): [`Self::from_host`], then `deadline`,
    /// then a callback call's slice. Looking at the slice starts it (see
    /// [`SandboxShared::callback_slice_end`]), so a path that must not
    /// (`wait`) uses the first two alone.
    pub(crate) fn check(shared: &SandboxShared, deadline: Option<Instant>) -> Option<Self> {
        Self::from_host(shared)
            .or_else(|| Self::past(deadline))
            .or_else(|| {
                shared
                    .callback_overran()
                    .then(|| Interrupt::Overran(shared.callback_slice().unwrap_or_default()))
            })
    }

    /// The marker error that carries this interrupt out of a wasmtime
    /// call.
    pub(crate) fn into_error(self) -> wasmtime::Error {
        match self {
            Interrupt::Stopped => wasmtime::Error::new(Stopped),
            Interrupt::Truncated => wasmtime::Error::new(SegmentTruncated),
            Interrupt::Deadline => wasmtime::Error::new(DeadlineExceeded),
            Interrupt::Overran(slice) => wasmtime::Error::new(CallbackOverran(slice)),
        }
    }
}

/// From now on, every epoch tick of guest code makes [`Interrupt::check`]
/// with `deadline` (also what a `wait` is bounded by).
///
/// A fiber guest (`yield_to_host`) also yields to whoever polls it at
/// every tick, so that guests sharing a thread can not starve each other.
pub(crate) fn watch_deadline(
    store: &mut Store<SandboxState>,
    shared: &Arc<SandboxShared>,
    deadline: Option<Instant>,
    yield_to_host: bool,
) {
    store.data_mut().deadline = deadline;
    shared.set_deadline(deadline);
    store.set_epoch_deadline(1);
    let cb_shared = shared.clone();
    store.epoch_deadline_callback(move |ctx| {
        if let Some(interrupt) = Interrupt::check(&cb_shared, deadline) {
            return Err(interrupt.into_error());
        }
        // A fiber yields once it has run for a tick since it was resumed:
        // the epoch may have moved on while it was suspended (other guests
        // ran), and yielding at its first check then would send every
        // resumed fiber back through its executor before it answers.
        let ran_a_tick = || ctx.data().ticker.ticks() > cb_shared.resumed_at_tick();
        Ok(if yield_to_host && ran_a_tick() {
            UpdateDeadline::Yield(1)
        } else {
            UpdateDeadline::Continue(1)
        })
    });
}

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
