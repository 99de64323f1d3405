//! The host imports of module `shmrt`, the one place that defines them.
//! This mirrors `wit/shmrt.wit`; a test parses the WIT and checks that the
//! linker defines exactly these names with the matching core signatures.

use std::time::{Duration, Instant};

use shmrt_primitives::WaitOutcome;
use wasmtime::{Caller, Linker};

use crate::segment::doorbell_futex;
use crate::segment::memory_window::NOT_PLACED;
use crate::state::escape::escape_line;
use crate::state::guest_output::{LogRate, MAX_LOG_BYTES};
use crate::state::interrupts::Interrupt;
use crate::state::options::Execution;
use crate::state::shared::SandboxShared;
use crate::state::store::{MIN_POLL_NAP, SandboxState};

/// The core import module name.
pub const MODULE: &str = "shmrt";

/// `wait`: the host rang ([`WaitOutcome::Rang`]).
pub const WAIT_RANG: i32 = WaitOutcome::Rang.code();
/// `wait`: the timeout passed ([`WaitOutcome::Timeout`]).
pub const WAIT_TIMEOUT: i32 = WaitOutcome::Timeout.code();
/// `wait`: the host said goodbye, or is stopping the sandbox
/// ([`WaitOutcome::Goodbye`]).
pub const WAIT_GOODBYE: i32 = WaitOutcome::Goodbye.code();

/// Longest single park inside `wait`, so that a stop or a deadline is
/// noticed even if a wake-up is lost to a scribbled waiter count.
const MAX_PARK: Duration = Duration::from_millis(50);

/// A defined import's name and core signature (value types as text,
/// e.g. `i32`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportSignature {
    /// The import's name in module [`MODULE`].
    pub name: String,
    /// Its parameters' value types.
    pub params: Vec<String>,
    /// Its results' value types.
    pub results: Vec<String>,
}

/// Defines every import of [`MODULE`]. With `fiber`, `wait` suspends the
/// guest's fiber (the linker of [`crate::Execution::Fiber`] sandboxes)
/// instead of parking its thread.
pub(crate) fn add_to_linker(
    linker: &mut Linker<SandboxState>,
    fiber: bool,
) -> wasmtime::Result<()> {
    linker.func_wrap(
        MODULE,
        "segment_base",
        |c: Caller<'_, SandboxState>| -> u32 { c.data().shared.window_base() as u32 },
    )?;
    linker.func_wrap(
        MODULE,
        "segment_size",
        |c: Caller<'_, SandboxState>| -> u32 { c.data().shared.segment_file().len() as u32 },
    )?;
    linker.func_wrap(MODULE, "peer_id", |c: Caller<'_, SandboxState>| -> u32 {
        c.data().shared.peer_id().get()
    })?;
    linker.func_wrap(MODULE, "ring", |c: Caller<'_, SandboxState>| {
        let shared = &c.data().shared;
        not_before_placement(shared, "ring")?;
        // Without the doorbell flag the words are not live (a vox segment):
        // its host polls.
        if shared.doorbells() {
            doorbell_futex::ring(&shared.peer().g2h_doorbell);
        }
        // An async host task waiting for this guest.
        shared.host_task().wake();
        Ok(())
    })?;
    if fiber {
        linker.func_wrap_async(
            MODULE,
            "wait",
            |c: Caller<'_, SandboxState>, (timeout_ns,): (i64,)| {
                Box::new(wait_in_fiber(c, timeout_ns))
            },
        )?;
    } else {
        linker.func_wrap(
            MODULE,
            "wait",
            |c: Caller<'_, SandboxState>, timeout_ns: i64| {
                wait(c, timeout_ns).map(WaitOutcome::code)
            },
        )?;
    }
    linker.func_wrap(MODULE, "log", log)?;
    linker.func_wrap(MODULE, "now_ns", |c: Caller<'_, SandboxState>| -> u64 {
        c.data().shared.started().elapsed().as_nanos() as u64
    })?;
    linker.func_wrap(MODULE, "config_get", super::host_functions::config_get)?;
    linker.func_wrap(
        MODULE,
        "host_call",
        |c: Caller<'_, SandboxState>, a, b, cc, d, e, f| {
            super::host_functions::host_call(c, (a, b, cc, d, e, f))
        },
    )?;
    linker.func_wrap(MODULE, "host_result", super::host_functions::host_result)?;
    Ok(())
}

/// Longest sleep between two polls of a segment without doorbells: an
/// idle guest of a vox host wakes 200 times a second (well under 1% of a
/// CPU) and answers within this when traffic resumes.
const MAX_POLL_NAP: Duration = Duration::from_millis(5);

/// `ring` and `wait` use the segment: a start function calling them runs
/// before the window is placed, when there is none to use.
fn not_before_placement(shared: &SandboxShared, import: &str) -> wasmtime::Result<()> {
    if shared.window_base() == NOT_PLACED {
        wasmtime::bail!(
            "shmrt.{import} was called before the segment window is placed (from the module's \
             start function): call it from the entry point"
        );
    }
    Ok(())
}

/// When a `wait` with `timeout_ns` (negative: none) gives up.
fn wait_until(timeout_ns: i64) -> Option<Instant> {
    u64::try_from(timeout_ns)
        .ok()
        .and_then(|ns| Instant::now().checked_add(Duration::from_nanos(ns)))
}

/// One look at what ends a `wait`: `Some` when it ends now, `None` when
/// it would sleep. The rules of the thread's `wait` below. The
/// interrupts are the host's first (a stop is a goodbye here: the guest
/// drains and returns), then what the host sent, then the deadline; a
/// callback's slice is left to the epoch (looking at it would start it).
fn wait_step(
    state: &mut SandboxState,
    until: Option<Instant>,
) -> wasmtime::Result<Option<WaitOutcome>> {
    let shared = &state.shared;
    not_before_placement(shared, "wait")?;
    match Interrupt::from_host(shared) {
        Some(Interrupt::Stopped) => return Ok(Some(WaitOutcome::Goodbye)),
        Some(interrupt) => return Err(interrupt.into_error()),
        None => {}
    }
    if shared.goodbye_or_stopped() {
        return Ok(Some(WaitOutcome::Goodbye));
    }
    let pending = shared.h2g_pending_write();
    if pending.is_some() && pending != state.wait_seen_write {
        state.wait_seen_write = pending;
        return Ok(Some(WaitOutcome::Rang));
    }
    if let Some(interrupt) = Interrupt::past(state.deadline) {
        return Err(interrupt.into_error());
    }
    if until.is_some_and(|u| Instant::now() >= u) {
        return Ok(Some(WaitOutcome::Timeout));
    }
    Ok(None)
}

/// `wait` of a fiber guest: suspends the fiber (the host's `recv` or
/// `send` that drives it goes on) until the host sends, says goodbye or
/// stops it, or the timeout or the deadline passes.
async fn wait_in_fiber(mut c: Caller<'_, SandboxState>, timeout_ns: i64) -> wasmtime::Result<i32> {
    let until = wait_until(timeout_ns);
    std::future::poll_fn(|cx| {
        let state = c.data_mut();
        if let Some(outcome) = wait_step(state, until).transpose() {
            return std::task::Poll::Ready(outcome.map(WaitOutcome::code));
        }
        let wake_at = match (until, state.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        state.shared.fiber_wake().suspend(cx.waker(), wake_at);
        // Looked at again once the waker is stored: a send in between
        // found no waker to wake.
        match wait_step(state, until).transpose() {
            Some(outcome) => std::task::Poll::Ready(outcome.map(WaitOutcome::code)),
            None => std::task::Poll::Pending,
        }
    })
    .await
}

fn wait(mut c: Caller<'_, SandboxState>, timeout_ns: i64) -> wasmtime::Result<WaitOutcome> {
    if c.data().shared.execution() == Execution::Callback {
        // A callback runs on the host's thread, which drains the guest's
        // ring only once it returns: nothing comes while it waits, so the
        // wait ends at once (the guest SDK returns instead of waiting).
        let until = wait_until(timeout_ns);
        return Ok(wait_step(c.data_mut(), until)?.unwrap_or(WaitOutcome::Timeout));
    }
    not_before_placement(&c.data().shared, "wait")?;
    // Waiting in the host: the epoch need not tick for this guest.
    let (ticker, in_wasm) = (c.data().ticker.clone(), c.data().in_wasm.clone());
    let _waiting = ticker.waiting(in_wasm.as_deref());
    let state = c.data_mut();
    let shared = state.shared.clone();
    let bell = &shared.peer().h2g_doorbell;
    let until = wait_until(timeout_ns);
    loop {
        // Register, then check, then sleep on the sequence seen at
        // registration (the eventcount protocol of the doorbell module).
        let seq = if shared.doorbells() {
            Some(bell.prepare_wait())
        } else {
            None
        };
        let finish = || {
            if seq.is_some() {
                bell.finish_wait();
            }
        };
        // The checks of every `wait`, once registered.
        match wait_step(state, until) {
            Ok(None) => {}
            done => {
                finish();
                if matches!(done, Ok(Some(WaitOutcome::Rang))) {
                    state.poll_backoff = MIN_POLL_NAP;
                }
                return done.map(|outcome| outcome.expect("a wait that ended says how"));
            }
        }
        let now = Instant::now();
        let mut nap = MAX_PARK;
        for limit in [until, state.deadline].into_iter().flatten() {
            nap = nap.min(limit.saturating_duration_since(now));
        }
        let Some(seq) = seq else {
            // Kept across calls: a guest waiting in a loop of short waits
            // (for room to send) sleeps as long as an idle one.
            std::thread::sleep(nap.min(state.poll_backoff));
            state.poll_backoff = (state.poll_backoff * 2).min(MAX_POLL_NAP);
            continue;
        };
        doorbell_futex::park(bell.futex_word(), seq, Some(nap));
        bell.finish_wait();
        if bell.sequence() != seq {
            // The host rang: new data, or room it freed.
            state.wait_seen_write = shared.h2g_pending_write();
            return Ok(if shared.goodbye_or_stopped() {
                WaitOutcome::Goodbye
            } else {
                WaitOutcome::Rang
            });
        }
    }
}

fn log(mut c: Caller<'_, SandboxState>, level: i32, ptr: u32, len: u32) -> wasmtime::Result<()> {
    let Some(memory) = c.get_export("memory").and_then(|e| e.into_memory()) else {
        wasmtime::bail!("shmrt.log called but the module exports no `memory`");
    };
    let size = memory.data_size(&c);
    let (start, n) = (ptr as usize, len as usize);
    if start.checked_add(n).is_none_or(|end| end > size) {
        wasmtime::bail!(
            "shmrt.log called with ptr {ptr} and len {len}, outside linear memory ({size} bytes)"
        );
    }
    if !c.data().log_rate.admit(Instant::now()) {
        return Ok(());
    }
    // Copied out before it is decoded: the guest (or, in its window, the
    // host's own ring traffic) may rewrite these bytes at any moment, and
    // a decoder reading them in place could run past the end of a string
    // that changed under it.
    let mut copy = vec![0u8; n.min(MAX_LOG_BYTES)];
    memory.read(&c, start, &mut copy)?;
    // One line, plain: a guest's text can not forge a log line of the
    // host's, nor drive the terminal.
    let text = escape_line(&String::from_utf8_lossy(&copy));
    let truncated = if n > MAX_LOG_BYTES {
        " [truncated]"
    } else {
        ""
    };
    let state = c.data_mut();
    let dropped = state.log_rate.take_dropped();
    let shared = &state.shared;
    let (sandbox, peer) = (shared.name(), shared.peer_id().get());
    if dropped > 0 {
        tracing::warn!(
            target: "shmrt::guest",
            sandbox,
            peer,
            "{dropped} log lines of this guest were dropped (more than {} a second)",
            LogRate::PER_SECOND
        );
    }
    match level {
        i32::MIN..=0 => tracing::trace!(target: "shmrt::guest", sandbox, peer, "{text}{truncated}"),
        1 => tracing::debug!(target: "shmrt::guest", sandbox, peer, "{text}{truncated}"),
        2 => tracing::info!(target: "shmrt::guest", sandbox, peer, "{text}{truncated}"),
        3 => tracing::warn!(target: "shmrt::guest", sandbox, peer, "{text}{truncated}"),
        _ => {
            tracing::error!(target: "shmrt::guest", sandbox, peer, "{text}{truncated}");
            *shared.last_error_log() = Some(text);
        }
    }
    Ok(())
}
