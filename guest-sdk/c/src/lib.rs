//! The C ABI of the shmrt guest SDK, declared by `include/shmrt_guest.h`:
//! plugins in C, C++ and Zig link this static library (built for wasm32
//! with atomics) and reach their host through the same Rust code as Rust
//! plugins do. Nothing of the protocol is written here: every function
//! wraps the SDK's public API (`Channel`, `Message`, `Outbox`,
//! `calls::dispatch`, `config`, `host_fn`, `log`).
//!
//! What C gets instead of Rust's borrows: handles ([`handles`]), checked
//! at every use, so that a message used after its release, a reservation
//! committed twice or a handle made up is an error code. Pointers given
//! by C are checked for NULL (a length of 0 accepts NULL).
//!
//! One plugin instance runs on one thread, one call at a time (the host
//! never enters an instance twice at once), so the state is one static
//! with `Cell`s; calls from C back into this library while it runs C code
//! (a transform callback, an exported function) find the outbox lent and
//! get [`codes::E_BUSY`] rather than a second `&mut`.
#![cfg_attr(target_family = "wasm", no_std)]

pub mod codes;
pub mod handles;
mod host;

pub use host::*;

use core::cell::{Cell, UnsafeCell};
use core::ffi::{CStr, c_char, c_void};

use shmrt_guest::calls::{self, Call};
use shmrt_guest::host_fn;
use shmrt_guest::primitives::Segment;
use shmrt_guest::{Channel, Inbox, Message, Outbox, Reservation, SendError};

use codes::*;
use handles::{KIND_CALL, KIND_MESSAGE, KIND_RESERVATION, Table};

/// A message handler: `int32_t handler(shmrt_msg msg)`.
pub type HandlerFn = unsafe extern "C" fn(msg: u32) -> i32;
/// An exported function: `int32_t f(shmrt_call call)`.
pub type ExportFn = unsafe extern "C" fn(call: u32) -> i32;
/// An in-place transform: `size_t f(uint8_t *bytes, size_t len, void *ctx)`.
pub type TransformFn = unsafe extern "C" fn(bytes: *mut u8, len: usize, ctx: *mut c_void) -> usize;

/// One entry of an export table (`shmrt_export`).
#[repr(C)]
#[derive(Debug)]
pub struct Export {
    pub name: *const c_char,
    pub func: Option<ExportFn>,
}

/// How the plugin reaches its channel: through a handler the library
/// calls, or through its own receive loop. Not both.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Closed,
    Handler,
    Loop,
}

/// The function a call handle stands for: the call and its export's name.
struct CallSlot {
    call: Call<'static>,
}

/// The plugin's state (see the crate docs for why `Cell`s suffice).
struct State {
    channel: UnsafeCell<Option<Channel>>,
    segment: Cell<Option<Segment>>,
    mode: Cell<Mode>,
    /// The inbox of a receive loop (null in handler mode).
    inbox: Cell<*mut Inbox>,
    /// The outbox usable now: a receive loop's, or the one a handler was
    /// called with (null outside the handler).
    outbox: Cell<*mut Outbox>,
    /// The outbox is lent to a running send (a transform runs C code).
    outbox_lent: Cell<bool>,
    in_handler: Cell<bool>,
    said_goodbye: Cell<bool>,
    /// A handler's non-zero status in callback mode: the call ends with it.
    stop: Cell<i32>,
    messages: Table<Message<'static>>,
    reservations: Table<Reservation<'static>>,
    calls: Table<CallSlot>,
    host_error: UnsafeCell<Option<(i32, host_fn::HostMessage)>>,
}

// SAFETY: a plugin instance is one thread (shmrt gives guests no threads)
// and the host calls it one call at a time, so no two threads ever reach
// the state. Only wasm builds use it; host builds compile it for tests of
// the parts that do not touch it.
unsafe impl Sync for State {}

static STATE: State = State {
    channel: UnsafeCell::new(None),
    segment: Cell::new(None),
    mode: Cell::new(Mode::Closed),
    inbox: Cell::new(core::ptr::null_mut()),
    outbox: Cell::new(core::ptr::null_mut()),
    outbox_lent: Cell::new(false),
    in_handler: Cell::new(false),
    said_goodbye: Cell::new(false),
    stop: Cell::new(0),
    messages: Table::new(KIND_MESSAGE),
    reservations: Table::new(KIND_RESERVATION),
    calls: Table::new(KIND_CALL),
    host_error: UnsafeCell::new(None),
};

/// Opens the channel for `mode` at the first use; it lives in the static
/// from then on (never moved, never dropped).
fn open(mode: Mode) -> Result<(), i32> {
    let s = &STATE;
    let now = s.mode.get();
    if now == mode {
        return Ok(());
    }
    if now != Mode::Closed {
        return Err(E_MODE);
    }
    let channel = Channel::open().map_err(|e| {
        shmrt_guest::error!("cannot open the shmrt channel: {}", e);
        E_OPEN
    })?;
    s.segment.set(Some(channel.segment()));
    let cell = s.channel.get();
    // SAFETY: closed until now, so nothing refers into the cell.
    unsafe { *cell = Some(channel) };
    s.mode.set(mode);
    if mode == Mode::Loop {
        // SAFETY: just stored; the two pointers are the only ways to the
        // channel from now on (a loop never takes it whole again).
        let channel = unsafe { (*cell).as_mut().expect("stored above") };
        let (inbox, outbox) = channel.split();
        s.inbox.set(inbox);
        s.outbox.set(outbox);
    }
    Ok(())
}

/// The channel of a handler plugin, opened at the first call.
fn handler_channel() -> Result<&'static mut Channel, i32> {
    open(Mode::Handler)?;
    // SAFETY: open and never moved; in handler mode only the entry point
    // running now refers to it (the host's calls do not overlap, and a
    // handler can not reach it but through the pointers this entry lends).
    Ok(unsafe { (*STATE.channel.get()).as_mut().expect("opened") })
}

/// Runs `f` with the outbox usable now: lent while `f` runs, so that C
/// code `f` calls finds it busy.
fn with_outbox<R>(f: impl FnOnce(&mut Outbox) -> R) -> Result<R, i32> {
    let s = &STATE;
    if s.said_goodbye.get() {
        return Err(E_GOODBYE);
    }
    if s.outbox_lent.get() || s.reservations.is_held() {
        return Err(E_BUSY);
    }
    if s.outbox.get().is_null() && s.mode.get() == Mode::Closed && !s.in_handler.get() {
        open(Mode::Loop)?;
    }
    let outbox = s.outbox.get();
    if outbox.is_null() {
        return Err(E_NO_CHANNEL);
    }
    s.outbox_lent.set(true);
    // SAFETY: the pointer is a loop's outbox (lives in the static) or the
    // one lent to the running handler (cleared before that call ends); no
    // other reference to it is alive: `outbox_lent` and the reservation
    // table say none is lent.
    let r = f(unsafe { &mut *outbox });
    s.outbox_lent.set(false);
    Ok(r)
}

/// Runs the C handler with `msg` lent to it, then takes back what it left
/// lent. The handler's status: 0 goes on; negative (an error code it
/// passed on) ends the plugin with 1, or 75 when no slot came free.
fn run_handler(handler: HandlerFn, msg: Message<'_>, outbox: &mut Outbox) -> i32 {
    let s = &STATE;
    // SAFETY: only the lifetime changes; the message is taken back out of
    // the table below, before the borrow it stands for ends.
    let msg: Message<'static> = unsafe { core::mem::transmute(msg) };
    let Ok(handle) = s.messages.put(msg) else {
        unreachable!("a handler's message table is empty between handlers")
    };
    s.outbox.set(outbox);
    s.in_handler.set(true);
    // SAFETY: a handler of the plugin's, given to SHMRT_HANDLER.
    let status = unsafe { handler(handle) };
    s.in_handler.set(false);
    drop(s.reservations.clear());
    drop(s.messages.clear());
    s.outbox.set(core::ptr::null_mut());
    ended(status)
}

fn ended(status: i32) -> i32 {
    if status < 0 {
        let text = codes::text(status);
        shmrt_guest::error!(
            "the handler failed: {} ({})",
            text.trim_end_matches('\0'),
            status
        );
        codes::exit_status(status)
    } else {
        status
    }
}

/// Thread and fiber mode of `SHMRT_HANDLER`: serves every message until
/// the host's goodbye; the plugin's exit status.
///
/// # Safety
///
/// `handler` is a function of the plugin's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_serve(handler: Option<HandlerFn>) -> i32 {
    let Some(handler) = handler else {
        return E_NULL;
    };
    serve(|msg, outbox| run_handler(handler, msg, outbox))
}

fn serve(mut each: impl FnMut(Message<'_>, &mut Outbox) -> i32) -> i32 {
    let channel = match handler_channel() {
        Ok(c) => c,
        Err(e) => return ended(e),
    };
    let (inbox, outbox) = channel.split();
    while let Some(msg) = inbox.recv() {
        let status = each(msg, outbox);
        if status != 0 {
            return status;
        }
    }
    0
}

/// Callback mode of `SHMRT_HANDLER`: answers the messages queued now.
///
/// # Safety
///
/// `handler` is a function of the plugin's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_answer_queued(handler: Option<HandlerFn>) -> i32 {
    let Some(handler) = handler else {
        return E_NULL;
    };
    answer(|msg, outbox| run_handler(handler, msg, outbox))
}

fn answer(mut each: impl FnMut(Message<'_>, &mut Outbox) -> i32) -> i32 {
    let channel = match handler_channel() {
        Ok(c) => c,
        Err(e) => return ended(e),
    };
    let s = &STATE;
    s.stop.set(0);
    let status = channel.answer_queued(|msg, outbox| {
        // After a handler ended the plugin, the rest of the batch is
        // dropped: the plugin ends when this call returns.
        if s.stop.get() == 0 {
            let status = each(msg, outbox);
            s.stop.set(status);
        }
        Ok(())
    });
    match s.stop.get() {
        0 => status,
        stop => stop,
    }
}

/// Thread and fiber mode of `SHMRT_EXPORTS`: answers calls by name.
///
/// # Safety
///
/// `exports` points to `count` entries whose names are NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_serve_exports(exports: *const Export, count: usize) -> i32 {
    // SAFETY: the caller's promise.
    let Some(exports) = (unsafe { export_table(exports, count) }) else {
        return E_NULL;
    };
    serve(|msg, outbox| route_calls(exports, msg, outbox))
}

/// Callback mode of `SHMRT_EXPORTS`.
///
/// # Safety
///
/// As [`shmrt_serve_exports`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_answer_exports(exports: *const Export, count: usize) -> i32 {
    // SAFETY: the caller's promise.
    let Some(exports) = (unsafe { export_table(exports, count) }) else {
        return E_NULL;
    };
    answer(|msg, outbox| route_calls(exports, msg, outbox))
}

/// # Safety
///
/// As [`shmrt_serve_exports`].
unsafe fn export_table<'a>(exports: *const Export, count: usize) -> Option<&'a [Export]> {
    if count == 0 {
        return Some(&[]);
    }
    if exports.is_null() {
        return None;
    }
    // SAFETY: the caller's promise: `count` entries at `exports`.
    Some(unsafe { core::slice::from_raw_parts(exports, count) })
}

/// Most export names a "no such export" failure lists.
const LISTED_EXPORTS: usize = 32;

fn export_name(e: &Export) -> &str {
    if e.name.is_null() {
        return "";
    }
    // SAFETY: the export table's names are NUL-terminated (the promise of
    // `shmrt_serve_exports`).
    let name = unsafe { CStr::from_ptr(e.name) };
    name.to_str().unwrap_or("")
}

fn route_calls(exports: &[Export], msg: Message<'_>, outbox: &mut Outbox) -> i32 {
    let sent = calls::dispatch(msg, outbox, |call, outbox| {
        let found = exports
            .iter()
            .find(|e| export_name(e) == call.name())
            .and_then(|e| e.func);
        match found {
            Some(func) => run_export(func, call, outbox),
            None => {
                let mut names = [""; LISTED_EXPORTS];
                let n = exports.len().min(LISTED_EXPORTS);
                for (slot, e) in names.iter_mut().zip(exports) {
                    *slot = export_name(e);
                }
                call.no_such_export(outbox, &names[..n])
            }
        }
    });
    match sent {
        Ok(()) => 0,
        Err(e) => {
            shmrt_guest::error!("could not answer a call: {}", e);
            e.exit_status()
        }
    }
}

/// Runs an exported C function with the call lent to it; a call it left
/// unanswered gets an empty reply (it returned 0) or fails with the code
/// it returned.
fn run_export(func: ExportFn, call: Call<'_>, outbox: &mut Outbox) -> Result<(), SendError> {
    let s = &STATE;
    // SAFETY: only the lifetime changes; the call is taken back out of the
    // table below, before the message it points into is released.
    let call: Call<'static> = unsafe { core::mem::transmute(call) };
    let Ok(handle) = s.calls.put(CallSlot { call }) else {
        unreachable!("calls do not overlap")
    };
    s.outbox.set(outbox);
    s.in_handler.set(true);
    // SAFETY: a function of the plugin's export table.
    let status = unsafe { func(handle) };
    s.in_handler.set(false);
    drop(s.reservations.clear());
    s.outbox.set(core::ptr::null_mut());
    let Some(CallSlot { call }) = s.calls.clear() else {
        return Ok(());
    };
    if status == 0 {
        call.reply(outbox, ())
    } else {
        call.fail(
            outbox,
            status,
            format_args!("`{}` failed with code {status}", call.name()),
        )
    }
}

/// `start..start + len` as C gave it: `SHMRT_E_BAD_ARG` when it wraps
/// around the address space or is longer than a slice may be (a length
/// computed with an overflow, `(size_t)-1`), which would make the slice
/// undefined behaviour.
fn range(start: usize, len: usize) -> Result<(), i32> {
    match start.checked_add(len) {
        Some(_) if len <= isize::MAX as usize => Ok(()),
        _ => Err(E_BAD_ARG),
    }
}

/// The bytes `ptr..ptr + len` given by C: NULL only with a length of 0.
///
/// # Safety
///
/// A non-NULL `ptr` is readable for `len` bytes for `'a`.
unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> Result<&'a [u8], i32> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(E_NULL);
    }
    range(ptr as usize, len)?;
    // SAFETY: the caller's promise.
    Ok(unsafe { core::slice::from_raw_parts(ptr, len) })
}

/// As [`bytes`], writable.
///
/// # Safety
///
/// A non-NULL `ptr` is writable for `len` bytes for `'a`, and nothing
/// else refers to them.
unsafe fn bytes_mut<'a>(ptr: *mut u8, len: usize) -> Result<&'a mut [u8], i32> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(E_NULL);
    }
    range(ptr as usize, len)?;
    // SAFETY: the caller's promise.
    Ok(unsafe { core::slice::from_raw_parts_mut(ptr, len) })
}

/// `*out = value` when `out` is not NULL.
///
/// # Safety
///
/// A non-NULL `out` is writable.
unsafe fn put<T>(out: *mut T, value: T) {
    if !out.is_null() {
        // SAFETY: the caller's promise.
        unsafe { out.write(value) };
    }
}

fn status(r: Result<(), i32>) -> i32 {
    r.err().unwrap_or(OK)
}

// ---- messages ---------------------------------------------------------

/// Waits for the next message (a receive loop, `SHMRT_MAIN`): 1 with
/// `*msg` set, 0 once the host said goodbye and everything is read.
///
/// # Safety
///
/// `msg` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_recv(msg: *mut u32) -> i32 {
    if msg.is_null() {
        return E_NULL;
    }
    let s = &STATE;
    if s.in_handler.get() {
        return E_IN_HANDLER;
    }
    if s.messages.is_held() {
        return E_BUSY;
    }
    if let Err(e) = open(Mode::Loop) {
        return e;
    }
    // SAFETY: a loop's inbox lives in the static; no message is lent (just
    // checked), so nothing else refers to it.
    let inbox = unsafe { &mut *s.inbox.get() };
    match inbox.recv() {
        None => 0,
        Some(m) => {
            let Ok(handle) = s.messages.put(m) else {
                unreachable!("checked empty above")
            };
            // SAFETY: checked non-NULL; the caller's promise.
            unsafe { msg.write(handle) };
            1
        }
    }
}

/// The payload of `msg`, in place: valid until the message is released.
///
/// # Safety
///
/// `data` and `len` are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_msg_data(msg: u32, data: *mut *const u8, len: *mut usize) -> i32 {
    if data.is_null() || len.is_null() {
        return E_NULL;
    }
    status(STATE.messages.with(msg, |m| {
        let b = m.as_bytes();
        // SAFETY: both checked non-NULL; the caller's promise.
        unsafe {
            data.write(b.as_ptr());
            len.write(b.len());
        }
    }))
}

/// 1 when `msg` came in a slot, 0 when inline in the ring.
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_msg_is_slot(msg: u32) -> i32 {
    match STATE.messages.with(msg, |m| m.is_slot()) {
        Ok(slot) => i32::from(slot),
        Err(e) => e,
    }
}

/// Gives `msg`'s ring bytes or slot back.
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_release(msg: u32) -> i32 {
    status(STATE.messages.take(msg).map(drop))
}

/// Answers `msg` with its own bytes transformed in place by `transform`,
/// which returns the reply's length (at most the message's); releases
/// `msg`.
///
/// # Safety
///
/// `transform` is a function of the plugin's; it gets `ctx`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_reply_in_place(
    msg: u32,
    transform: Option<TransformFn>,
    ctx: *mut c_void,
) -> i32 {
    let Some(transform) = transform else {
        return E_NULL;
    };
    let s = &STATE;
    if let Err(e) = s.messages.check(msg) {
        return e;
    }
    if s.said_goodbye.get() {
        return E_GOODBYE;
    }
    if s.outbox_lent.get() || s.reservations.is_held() {
        return E_BUSY;
    }
    let Ok(m) = s.messages.take(msg) else {
        unreachable!("checked above")
    };
    let sent = with_outbox(|outbox| {
        m.reply_in_place(outbox, |bytes| {
            // SAFETY: the plugin's function, given the bytes it may
            // rewrite, their length and its own context.
            unsafe { transform(bytes.as_mut_ptr(), bytes.len(), ctx) }
        })
    });
    match sent {
        Ok(Ok(())) => OK,
        Ok(Err(e)) => codes::of_send(&e),
        Err(e) => e,
    }
}

// ---- sending ----------------------------------------------------------

/// Sends a copy of `len` bytes at `data`.
///
/// # Safety
///
/// `data` is NULL (with `len` 0) or readable for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_send(data: *const u8, len: usize) -> i32 {
    // SAFETY: the caller's promise.
    let payload = match unsafe { bytes(data, len) } {
        Ok(p) => p,
        Err(e) => return e,
    };
    match with_outbox(|outbox| outbox.send(payload)) {
        Ok(Ok(())) => OK,
        Ok(Err(e)) => codes::of_send(&e),
        Err(e) => e,
    }
}

/// Reserves `len` bytes for a message, waiting for room: `*res` is its
/// handle, `*data` the bytes to fill in place.
///
/// # Safety
///
/// `res` and `data` are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_reserve(len: usize, res: *mut u32, data: *mut *mut u8) -> i32 {
    if res.is_null() || data.is_null() {
        return E_NULL;
    }
    let s = &STATE;
    // The reservation borrows the outbox until committed or abandoned:
    // `with_outbox`'s borrow is handed on to the table.
    let reserved = with_outbox(|outbox| {
        let outbox: *mut Outbox = outbox;
        // SAFETY: the outbox outlives the reservation: a loop's lives in
        // the static, a handler's reservation is cleared when the handler
        // returns; until then the table holding it makes every other use
        // of the outbox E_BUSY.
        let outbox = unsafe { &mut *outbox };
        outbox.reserve(len)
    });
    match reserved {
        Ok(Ok(mut r)) => {
            let ptr = r.as_mut_slice().as_mut_ptr();
            let Ok(handle) = s.reservations.put(r) else {
                unreachable!("with_outbox refuses while one is held")
            };
            // SAFETY: both checked non-NULL; the caller's promise.
            unsafe {
                res.write(handle);
                data.write(ptr);
            }
            OK
        }
        Ok(Err(e)) => codes::of_send(&e),
        Err(e) => e,
    }
}

/// Sends the first `len` bytes of reservation `res`; more than reserved
/// is `SHMRT_E_OVER_COMMIT` (the reservation stays held).
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_commit(res: u32, len: usize) -> i32 {
    let s = &STATE;
    match s.reservations.with(res, |r| r.len()) {
        Err(e) => e,
        Ok(reserved) if len > reserved => E_OVER_COMMIT,
        Ok(_) if s.said_goodbye.get() => E_GOODBYE,
        Ok(_) => {
            let Ok(r) = s.reservations.take(res) else {
                unreachable!("checked above")
            };
            r.commit(len);
            OK
        }
    }
}

/// Gives reservation `res` back unsent.
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_abandon(res: u32) -> i32 {
    status(STATE.reservations.take(res).map(drop))
}

/// Says the plugin sends nothing more: later sends, replies and commits
/// are `SHMRT_E_GOODBYE`. The host sees the plugin end when its entry
/// point returns.
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_goodbye() -> i32 {
    STATE.said_goodbye.set(true);
    OK
}

/// 1 when the host has said goodbye (it sends nothing more), else 0.
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_host_goodbye() -> i32 {
    let s = &STATE;
    if s.segment.get().is_none()
        && !s.in_handler.get()
        && let Err(e) = open(Mode::Loop)
    {
        return e;
    }
    match s.segment.get() {
        Some(segment) => i32::from(segment.header().host_goodbye()),
        None => E_NO_CHANNEL,
    }
}

// ---- calls by name ----------------------------------------------------

/// The input of `call`, in place in the request.
///
/// # Safety
///
/// `data` and `len` are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_call_input(call: u32, data: *mut *const u8, len: *mut usize) -> i32 {
    if data.is_null() || len.is_null() {
        return E_NULL;
    }
    status(STATE.calls.with(call, |c| {
        let input = c.call.input();
        // SAFETY: both checked non-NULL; the caller's promise.
        unsafe {
            data.write(input.as_ptr());
            len.write(input.len());
        }
    }))
}

/// Replies to `call` with a copy of `len` bytes at `data`; the call is
/// answered (its handle released).
///
/// # Safety
///
/// `data` is NULL (with `len` 0) or readable for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_call_reply(call: u32, data: *const u8, len: usize) -> i32 {
    // SAFETY: the caller's promise.
    let output = match unsafe { bytes(data, len) } {
        Ok(o) => o,
        Err(e) => return e,
    };
    answer_call(call, |c, outbox| c.reply(outbox, output))
}

/// Fails `call` with `code` (1 and up: the plugin's own) and a message of
/// `len` bytes of UTF-8; the call is answered.
///
/// # Safety
///
/// `message` is NULL (with `len` 0) or readable for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_call_fail(
    call: u32,
    code: i32,
    message: *const c_char,
    len: usize,
) -> i32 {
    // SAFETY: the caller's promise.
    let text = match unsafe { bytes(message.cast(), len) } {
        Ok(t) => t,
        Err(e) => return e,
    };
    let Ok(text) = core::str::from_utf8(text) else {
        return E_NOT_UTF8;
    };
    answer_call(call, |c, outbox| {
        c.fail(outbox, code, format_args!("{text}"))
    })
}

fn answer_call(
    call: u32,
    send: impl FnOnce(&Call<'static>, &mut Outbox) -> Result<(), SendError>,
) -> i32 {
    let s = &STATE;
    if let Err(e) = s.calls.check(call) {
        return e;
    }
    if s.said_goodbye.get() {
        return E_GOODBYE;
    }
    if s.outbox_lent.get() || s.reservations.is_held() {
        return E_BUSY;
    }
    let Ok(slot) = s.calls.take(call) else {
        unreachable!("checked above")
    };
    match with_outbox(|outbox| send(&slot.call, outbox)) {
        Ok(Ok(())) => OK,
        Ok(Err(e)) => codes::of_send(&e),
        Err(e) => e,
    }
}
