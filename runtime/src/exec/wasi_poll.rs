//! WASI's `poll_oneoff`, bounded by the sandbox's interrupts (its stop, its
//! deadline, a callback's slice).
//!
//! wasmtime-wasi sleeps on a clock subscription without looking back
//! (`std::thread::sleep`, or a timer awaited to the end): a guest that
//! sleeps for an hour outlived `--timeout`, `stop()` and its host. This
//! module shadows `wasi_snapshot_preview1::poll_oneoff`. A set of clock
//! subscriptions only (what `std::thread::sleep` and wasi-libc's `sleep`
//! make) is served here: the subscriptions are copied out of linear memory
//! and checked once, then the guest thread naps in bounded steps, checking
//! the stop flag and the deadline at each, and is unparked by a stop. A
//! set with file descriptors goes to wasmtime-wasi's own implementation
//! (through its WASI trait), run on a scratch copy of the subscriptions as
//! they were checked, never on the guest's memory: a guest (or a host
//! writing the window the subscriptions may lie in) could otherwise turn a
//! checked descriptor into an unbounded clock between the check and
//! wasmtime-wasi's second read. The events come back through the copy. The
//! descriptors a
//! sandbox has are ready at once (stdin is empty, stdout and stderr are
//! the host's, preopened directories hold files). A FIFO or a device an
//! operator put in a `--dir` can still block there; `join` then gives up
//! on the guest's thread at the deadline (see `SandboxHandle::join`).
//!
//! Layouts (witx `wasi_snapshot_preview1`): a subscription is 48 bytes,
//! userdata u64 at 0, tag u8 at 8 (0 clock, 1 fd_read, 2 fd_write), then
//! for a clock: id u32 at 16, timeout u64 at 24, precision u64 at 32,
//! flags u16 at 40 (bit 0: absolute time). An event is 32 bytes: userdata
//! u64 at 0, errno u16 at 8, type u8 at 10, nbytes u64 at 16, flags u16
//! at 24.

use std::time::{Duration, Instant, SystemTime};

use wasmtime::{Caller, Linker};
use wasmtime_wasi::p1::wasi_snapshot_preview1::WasiSnapshotPreview1;

use crate::state::interrupts::Interrupt;
use crate::state::store::SandboxState;

const SUBSCRIPTION_SIZE: usize = 48;
const EVENT_SIZE: usize = 32;
const TAG_CLOCK: u8 = 0;
const CLOCK_REALTIME: u32 = 0;
const CLOCK_MONOTONIC: u32 = 1;
const SUBSCRIPTION_CLOCK_ABSTIME: u16 = 1;

/// Most subscriptions one call may have (a 3 MiB copy on the host).
const MAX_SUBSCRIPTIONS: u32 = 65_536;

const ERRNO_SUCCESS: i32 = 0;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;

/// Longest single nap: a stop unparks the thread at once, this only
/// bounds what a lost unpark could cost.
const MAX_NAP: Duration = Duration::from_millis(50);

/// Replaces wasmtime-wasi's `poll_oneoff` in `linker` with the bounded one.
pub(crate) fn shadow_poll_oneoff(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let defined = linker
        .func_wrap("wasi_snapshot_preview1", "poll_oneoff", poll_oneoff)
        .map(|_| ());
    linker.allow_shadowing(false);
    defined
}

/// One clock subscription, read once.
struct ClockWait {
    userdata: u64,
    until: Instant,
}

/// What a `poll_oneoff` call asks for, read once from the guest's memory.
enum PollRequest {
    /// Answered at once with this errno.
    Errno(i32),
    /// A set with file descriptors: wasmtime-wasi's implementation, on a
    /// copy of these subscriptions (as read and checked, `count` of them).
    Descriptors(wasmtime::Memory, Scratch),
    /// Clock subscriptions only: served here.
    Clocks(wasmtime::Memory, Vec<ClockWait>),
}

fn read_request(
    caller: &mut Caller<'_, SandboxState>,
    subs: u32,
    events: u32,
    count: u32,
    result: u32,
) -> wasmtime::Result<PollRequest> {
    let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
        wasmtime::bail!("poll_oneoff called but the module exports no `memory`");
    };
    if count == 0 {
        // An indefinite sleep, which WASI preview 1 does not allow.
        return Ok(PollRequest::Errno(ERRNO_INVAL));
    }
    if count > MAX_SUBSCRIPTIONS {
        // What the host copies is bounded, whatever the guest's memory.
        return Ok(PollRequest::Errno(ERRNO_INVAL));
    }
    let count = count as usize;
    let Some(subs_len) = count.checked_mul(SUBSCRIPTION_SIZE) else {
        return Ok(PollRequest::Errno(ERRNO_FAULT));
    };
    let Some(events_len) = count.checked_mul(EVENT_SIZE) else {
        return Ok(PollRequest::Errno(ERRNO_FAULT));
    };
    if !subs.is_multiple_of(8) || !events.is_multiple_of(8) || !result.is_multiple_of(4) {
        return Ok(PollRequest::Errno(ERRNO_INVAL));
    }
    let size = memory.data_size(&*caller);
    let fits = |at: u32, len: usize| (at as usize).checked_add(len).is_some_and(|e| e <= size);
    if !fits(subs, subs_len) || !fits(events, events_len) || !fits(result, 4) {
        return Ok(PollRequest::Errno(ERRNO_FAULT));
    }
    // Copied out once: the guest's memory is read nowhere else below.
    let mut raw = vec![0u8; subs_len];
    memory.read(&*caller, subs as usize, &mut raw)?;
    if raw
        .chunks_exact(SUBSCRIPTION_SIZE)
        .any(|sub| sub[8] != TAG_CLOCK)
    {
        // A file descriptor: wasmtime-wasi's implementation, whose
        // descriptors here never block, on the bytes checked here.
        return Ok(PollRequest::Descriptors(memory, Scratch::new(&raw, count)));
    }
    let mut clocks = Vec::with_capacity(count);
    for sub in raw.chunks_exact(SUBSCRIPTION_SIZE) {
        let word = |at: usize| u64::from_le_bytes(sub[at..at + 8].try_into().expect("8 bytes"));
        let id = u32::from_le_bytes(sub[16..20].try_into().expect("4 bytes"));
        let timeout = word(24);
        let absolute = u16::from_le_bytes([sub[40], sub[41]]) & SUBSCRIPTION_CLOCK_ABSTIME != 0;
        let Some(until) = clock_deadline(caller.data(), id, timeout, absolute) else {
            return Ok(PollRequest::Errno(ERRNO_INVAL));
        };
        clocks.push(ClockWait {
            userdata: word(0),
            until,
        });
    }
    Ok(PollRequest::Clocks(memory, clocks))
}

/// Writes the events of the clocks that fired by now and their count.
fn write_fired(
    caller: &mut Caller<'_, SandboxState>,
    memory: wasmtime::Memory,
    clocks: &[ClockWait],
    events: u32,
    result: u32,
) -> wasmtime::Result<i32> {
    let now = Instant::now();
    let mut fired = 0u32;
    for c in clocks.iter().filter(|c| c.until <= now) {
        let mut event = [0u8; EVENT_SIZE];
        event[..8].copy_from_slice(&c.userdata.to_le_bytes());
        event[10] = TAG_CLOCK;
        let at = events as usize + fired as usize * EVENT_SIZE;
        memory.write(&mut *caller, at, &event)?;
        fired += 1;
    }
    memory.write(&mut *caller, result as usize, &fired.to_le_bytes())?;
    Ok(ERRNO_SUCCESS)
}

fn poll_oneoff(
    mut caller: Caller<'_, SandboxState>,
    subs: u32,
    events: u32,
    count: u32,
    result: u32,
) -> wasmtime::Result<i32> {
    match read_request(&mut caller, subs, events, count, result)? {
        PollRequest::Errno(errno) => Ok(errno),
        PollRequest::Descriptors(memory, scratch) => {
            delegate(&mut caller, memory, scratch, events, result)
        }
        PollRequest::Clocks(memory, clocks) => {
            let first = clocks.iter().map(|c| c.until).min().expect("count > 0");
            sleep_until(caller.data(), first)?;
            write_fired(&mut caller, memory, &clocks, events, result)
        }
    }
}

/// Replaces `poll_oneoff` in the linker of fiber guests: a sleep suspends
/// the fiber (the host's thread goes on) rather than the thread.
pub(crate) fn shadow_poll_oneoff_in_fiber(
    linker: &mut Linker<SandboxState>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let defined = linker
        .func_wrap_async(
            "wasi_snapshot_preview1",
            "poll_oneoff",
            |caller: Caller<'_, SandboxState>,
             (subs, events, count, result): (u32, u32, u32, u32)| {
                Box::new(poll_oneoff_in_fiber(caller, subs, events, count, result))
            },
        )
        .map(|_| ());
    linker.allow_shadowing(false);
    defined
}

async fn poll_oneoff_in_fiber(
    mut caller: Caller<'_, SandboxState>,
    subs: u32,
    events: u32,
    count: u32,
    result: u32,
) -> wasmtime::Result<i32> {
    match read_request(&mut caller, subs, events, count, result)? {
        PollRequest::Errno(errno) => Ok(errno),
        PollRequest::Descriptors(memory, mut scratch) => {
            // wasmtime-wasi's poll borrows its context across awaits in a
            // way that is not `Send`; the descriptors a sandbox has are
            // ready at once (see the module's docs), so it is run to
            // completion here, and one that would block fails the call
            // rather than the host's thread.
            // Its clocks are tokio timers: run as the thread path's is, on
            // a thread of its own when the fiber runs inside a tokio
            // runtime (whose `block_on` panics there).
            let fuel = wasmtime::AsContextMut::as_context_mut(&mut caller).hostcall_fuel();
            let shared = caller.data().shared.clone();
            let polled = {
                let wasi = caller.data_mut().wasi();
                wasi.set_hostcall_fuel(fuel);
                super::guest_driver::off_async_runtime(&shared, true, || {
                    poll_on_copy(wasi, &mut scratch)
                })
            };
            finish_delegated(&mut caller, memory, &scratch, events, result, polled)
        }
        PollRequest::Clocks(memory, clocks) => {
            let first = clocks.iter().map(|c| c.until).min().expect("count > 0");
            // Through `&mut`: a shared borrow of the caller is not `Send`.
            let sleeper = &mut caller;
            std::future::poll_fn(move |cx| {
                let state = sleeper.data();
                if let Some(done) = sleep_step(state, first) {
                    return std::task::Poll::Ready(done);
                }
                let wake_at = state.deadline.map_or(first, |d| d.min(first));
                state.shared.fiber_wake().suspend(cx.waker(), Some(wake_at));
                match sleep_step(state, first) {
                    Some(done) => std::task::Poll::Ready(done),
                    None => std::task::Poll::Pending,
                }
            })
            .await?;
            write_fired(&mut caller, memory, &clocks, events, result)
        }
    }
}

/// The subscriptions of a `poll_oneoff` with descriptors, as they were
/// read and checked, followed by room for their events: the memory
/// wasmtime-wasi's implementation runs on. In 8-byte words, so that its
/// structures are as aligned on the host as the guest's were.
pub(crate) struct Scratch {
    words: Vec<u64>,
    count: usize,
}

impl Scratch {
    fn new(subscriptions: &[u8], count: usize) -> Self {
        let len = subscriptions.len() + count * EVENT_SIZE;
        let mut scratch = Scratch {
            words: vec![0; len.div_ceil(8)],
            count,
        };
        scratch.bytes_mut()[..subscriptions.len()].copy_from_slice(subscriptions);
        scratch
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `words` owns `len() * 8` initialized bytes, a u64 has no
        // padding, and the shared borrow of `self` covers the slice's life.
        unsafe {
            std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.words.len() * 8)
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, with the exclusive borrow of `self`; any
        // byte pattern is a valid u64.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.words.as_mut_ptr().cast::<u8>(),
                self.words.len() * 8,
            )
        }
    }

    /// Where the subscriptions and the events lie in the copy, and how
    /// many there are.
    fn pointers<S, E>(&self) -> (wiggle::GuestPtr<S>, wiggle::GuestPtr<E>, u32) {
        let events_at = self.count * SUBSCRIPTION_SIZE;
        // At most MAX_SUBSCRIPTIONS * 80 bytes: well within u32.
        (
            wiggle::GuestPtr::new(0),
            wiggle::GuestPtr::new(events_at as u32),
            self.count as u32,
        )
    }

    /// The first `fired` events written into the copy, if there are that
    /// many.
    fn events(&self, fired: u32) -> Option<&[u8]> {
        let fired = usize::try_from(fired).ok().filter(|&f| f <= self.count)?;
        let at = self.count * SUBSCRIPTION_SIZE;
        self.bytes().get(at..at + fired * EVENT_SIZE)
    }
}

/// What wasmtime-wasi's `poll_oneoff` returned, as the import's result:
/// the events it wrote into `scratch` copied to the guest's `events`.
fn finish_delegated(
    caller: &mut Caller<'_, SandboxState>,
    memory: wasmtime::Memory,
    scratch: &Scratch,
    events: u32,
    result: u32,
    polled: Result<u32, wasmtime_wasi::p1::types::Error>,
) -> wasmtime::Result<i32> {
    match polled {
        Ok(fired) => {
            let Some(fired_events) = scratch.events(fired) else {
                wasmtime::bail!(
                    "wasmtime-wasi's poll_oneoff reported {fired} events for {} subscriptions",
                    scratch.count
                );
            };
            memory.write(&mut *caller, events as usize, fired_events)?;
            memory.write(caller, result as usize, &fired.to_le_bytes())?;
            Ok(ERRNO_SUCCESS)
        }
        Err(e) => match e.downcast() {
            Ok(errno) => Ok(errno as i32),
            Err(trap) => Err(trap),
        },
    }
}

fn delegate(
    caller: &mut Caller<'_, SandboxState>,
    memory: wasmtime::Memory,
    mut scratch: Scratch,
    events: u32,
    result: u32,
) -> wasmtime::Result<i32> {
    // What wasmtime-wasi's own glue does before each call: the bound on
    // what the call may copy on the host.
    let fuel = wasmtime::AsContextMut::as_context_mut(&mut *caller).hostcall_fuel();
    let wasi = caller.data_mut().wasi();
    wasi.set_hostcall_fuel(fuel);
    let polled = poll_on_copy(wasi, &mut scratch);
    finish_delegated(caller, memory, &scratch, events, result, polled)
}

/// wasmtime-wasi's `poll_oneoff` on the scratch copy, run to its end (its
/// clocks are tokio timers: on wasmtime-wasi's own runtime outside one).
fn poll_on_copy(
    wasi: &mut wasmtime_wasi::p1::WasiP1Ctx,
    scratch: &mut Scratch,
) -> Result<u32, wasmtime_wasi::p1::types::Error> {
    let (subs_at, events_at, count) = scratch.pointers();
    let mut copy = wiggle::GuestMemory::Unshared(scratch.bytes_mut());
    wasmtime_wasi::runtime::in_tokio(wasi.poll_oneoff(&mut copy, subs_at, events_at, count))
}

/// When a clock subscription fires, as an `Instant`; `None` for a clock
/// WASI does not let one wait on.
fn clock_deadline(state: &SandboxState, id: u32, timeout: u64, absolute: bool) -> Option<Instant> {
    let now = Instant::now();
    let after = match (id, absolute) {
        (CLOCK_REALTIME | CLOCK_MONOTONIC, false) => Duration::from_nanos(timeout),
        // The guest's monotonic clock counts from the sandbox's clock
        // origin (see `GuestMonotonicClock` in `state/store.rs`).
        (CLOCK_MONOTONIC, true) => {
            let at = Duration::from_nanos(timeout);
            (state.clock_origin + at).saturating_duration_since(now)
        }
        (CLOCK_REALTIME, true) => {
            let at = SystemTime::UNIX_EPOCH + Duration::from_nanos(timeout);
            at.duration_since(SystemTime::now()).unwrap_or_default()
        }
        _ => return None,
    };
    // A timeout of centuries is a sleep until the deadline or a stop.
    Some(
        now.checked_add(after)
            .unwrap_or(now + Duration::from_secs(1 << 32)),
    )
}

/// Naps until `until`, ending early with the sandbox's own errors when
/// an interrupt holds (the host stops it, its segment file is truncated,
/// its deadline passes, a callback's slice runs out); a stop unparks the
/// thread.
pub(crate) fn sleep_until(state: &SandboxState, until: Instant) -> wasmtime::Result<()> {
    // Sleeping in the host: the epoch need not tick for this guest.
    let _waiting = state.ticker.waiting(state.in_wasm.as_deref());
    loop {
        if let Some(done) = sleep_step(state, until) {
            return done;
        }
        let now = Instant::now();
        let mut nap = (until - now).min(MAX_NAP);
        if let Some(d) = state.deadline {
            nap = nap.min(d - now);
        }
        // A callback sleeping holds the host's thread: its slice bounds it.
        if let Some(end) = state.shared.callback_slice_end() {
            nap = nap.min(end.saturating_duration_since(now));
        }
        std::thread::park_timeout(nap);
    }
}

/// One look at what ends a sleep until `until`: an interrupt (the stop,
/// a truncated segment, the deadline, a callback's slice), or `until`
/// itself; `None` while it goes on.
fn sleep_step(state: &SandboxState, until: Instant) -> Option<wasmtime::Result<()>> {
    if let Some(interrupt) = Interrupt::check(&state.shared, state.deadline) {
        return Some(Err(interrupt.into_error()));
    }
    (Instant::now() >= until).then_some(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// wasmtime-wasi runs on the copy: the subscriptions as checked, then
    /// the events; what it reports is copied back only if it fits the
    /// events the guest made room for.
    #[test]
    fn the_scratch_copy_holds_the_checked_subscriptions_then_the_events() {
        let mut subscriptions = vec![0u8; 2 * SUBSCRIPTION_SIZE];
        subscriptions[8] = 1;
        subscriptions[SUBSCRIPTION_SIZE + 8] = TAG_CLOCK;
        let mut scratch = Scratch::new(&subscriptions, 2);
        assert_eq!(scratch.words.as_ptr() as usize % 8, 0);
        assert_eq!(&scratch.bytes()[..subscriptions.len()], &subscriptions[..]);
        let (subs_at, events_at, count): (wiggle::GuestPtr<u8>, wiggle::GuestPtr<u8>, u32) =
            scratch.pointers();
        assert_eq!((subs_at.offset(), events_at.offset(), count), (0, 96, 2));
        scratch.bytes_mut()[96] = 0xAB;
        assert_eq!(
            scratch.events(1).map(|e| (e.len(), e[0])),
            Some((EVENT_SIZE, 0xAB))
        );
        assert_eq!(scratch.events(2).map(<[u8]>::len), Some(2 * EVENT_SIZE));
        assert!(
            scratch.events(3).is_none(),
            "more events than subscriptions"
        );
        assert!(scratch.events(u32::MAX).is_none());
    }
}
