//! The C API of shmrt (`include/shmrt.h`, generated from this crate by
//! cbindgen; a test keeps it in step): a runtime, plugins prepared once,
//! sandboxes spawned with options, messages sent (copied, or written in
//! place by a callback) and received as borrowed views into the segment,
//! answered in place, calls by name, configuration and host functions as C
//! function pointers.
//!
//! Every object is a handle (a 64-bit id, 0 for none) looked up in one
//! table, so a handle that was released, never made or is of another kind
//! gives `SHMRT_ERR_BAD_HANDLE`, and a sandbox used after its join gives
//! `SHMRT_ERR_JOINED`: never a use of freed memory. Every function returns
//! a status (`SHMRT_OK`, `SHMRT_EMPTY` or a negative `SHMRT_ERR_*`); after
//! a failure `shmrt_last_error()` says what happened, naming the sandbox
//! and what to do. Panics are caught at the boundary.
//!
//! This crate's Rust side ([`held`]) is also what the Python package
//! builds on.

use std::collections::BTreeMap;
use std::ffi::{CStr, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shmrt::primitives::{SizeClass, SizeClasses};
use shmrt::{
    Execution, HostFnError, HostFunctions, HostOutput, Runtime, RuntimeConfig, SandboxOptions,
};

pub mod errors;
mod handles;
pub mod held;
mod options;

pub use errors::*;
use handles::{Object, PluginObj, SandboxObj};
use held::HeldSandbox;
pub use options::*;

/// A runtime (an engine and its linker): one per process is enough.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ShmrtRuntime {
    /// The handle's id (0: none).
    pub id: u64,
}

/// A plugin prepared once (compiled and checked) to spawn sandboxes from.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ShmrtPlugin {
    /// The handle's id (0: none).
    pub id: u64,
}

/// Options for spawning a sandbox, filled with `shmrt_options_set_*`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ShmrtOptions {
    /// The handle's id (0: none, the defaults where options are taken).
    pub id: u64,
}

/// A running sandbox.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ShmrtSandbox {
    /// The handle's id (0: none).
    pub id: u64,
}

/// A message received from a sandbox, in place in its segment until
/// released.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ShmrtMessage {
    /// The handle's id (0: none).
    pub id: u64,
}

/// Bytes a call returned, owned by shmrt until `shmrt_bytes_free`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ShmrtBytes {
    /// The handle's id (0: none).
    pub id: u64,
}

/// Meter fuel (`shmrt_runtime_new` flag), so that sandboxes can be given
/// `shmrt_options_set_fuel`.
pub const SHMRT_RUNTIME_FUEL: u32 = 1;

/// Execution mode: a callback if the plugin exports one, else a thread.
pub const SHMRT_EXEC_AUTO: i32 = 0;
/// Execution mode: the guest on a thread of its own.
pub const SHMRT_EXEC_THREAD: i32 = 1;
/// Execution mode: the guest as a fiber on the caller's thread.
pub const SHMRT_EXEC_FIBER: i32 = 2;
/// Execution mode: the guest's callback, called on the caller's thread.
pub const SHMRT_EXEC_CALLBACK: i32 = 3;

/// Fills `len` bytes at `data` in place (`shmrt_send_with`); nonzero:
/// send nothing.
pub type ShmrtFillFn =
    Option<unsafe extern "C" fn(user: *mut c_void, data: *mut u8, len: usize) -> i32>;

/// Rewrites a message in place (`shmrt_message_reply_in_place`) and
/// returns the reply's length (at most `len`).
pub type ShmrtTransformFn =
    Option<unsafe extern "C" fn(user: *mut c_void, data: *mut u8, len: usize) -> usize>;

/// A host function: reads `input` (guest memory, valid for this call
/// only), writes its output with `shmrt_host_output_write`, returns 0, or
/// an error code for the guest (with `shmrt_host_output_error` for its
/// message). Runs on the thread that runs the guest.
pub type ShmrtHostFn = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        input: *const u8,
        input_len: usize,
        out: *mut ShmrtHostOutput,
    ) -> i32,
>;

/// Where a host function writes its output; valid during its call only.
#[derive(Debug)]
pub struct ShmrtHostOutput {
    /// A `&mut HostOutput` for the call's duration, lifetimes erased.
    output: *mut c_void,
    message: Option<String>,
}

/// Runs `f`, turning its failure (or a panic) into a status and the
/// thread's last error.
fn guard(f: impl FnOnce() -> Result<i32, Fail>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(code)) => code,
        Ok(Err(fail)) => fail.report(),
        Err(_) => Fail::new(
            SHMRT_ERR_OTHER,
            "a panic inside shmrt (a bug in shmrt: please report it with what led to it)",
        )
        .report(),
    }
}

fn null(what: &str) -> Fail {
    Fail::new(
        SHMRT_ERR_NULL,
        format!("`{what}` is a null pointer: pass a valid one"),
    )
}

/// `*p`, or an error naming `what` when `p` is null.
///
/// # Safety
///
/// `p` is null or valid for writes of a `T`.
unsafe fn out_ref<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T, Fail> {
    // SAFETY: not null (checked by `as_mut`), and valid by the caller's
    // promise.
    unsafe { p.as_mut() }.ok_or_else(|| null(what))
}

/// `len` bytes at `data` (which may be null when `len` is 0).
///
/// # Safety
///
/// `data` is null or valid for reads of `len` bytes for `'a`.
unsafe fn in_bytes<'a>(data: *const u8, len: usize, what: &str) -> Result<&'a [u8], Fail> {
    if len == 0 {
        return Ok(&[]);
    }
    if data.is_null() {
        return Err(null(what));
    }
    if len > isize::MAX as usize {
        return Err(Fail::new(
            SHMRT_ERR_INVALID,
            format!("`{what}`: length {len} is not a length"),
        ));
    }
    // SAFETY: not null, `len` in range; readable by the caller's promise.
    Ok(unsafe { std::slice::from_raw_parts(data, len) })
}

/// The UTF-8 string at `s`.
///
/// # Safety
///
/// `s` is null or a NUL-terminated string readable for `'a`.
unsafe fn in_str<'a>(s: *const c_char, what: &str) -> Result<&'a str, Fail> {
    if s.is_null() {
        return Err(null(what));
    }
    // SAFETY: not null, and NUL-terminated by the caller's promise.
    let c = unsafe { CStr::from_ptr(s) };
    c.to_str()
        .map_err(|_| Fail::new(SHMRT_ERR_INVALID, format!("`{what}` is not UTF-8")))
}

/// A timeout in milliseconds: negative means none.
fn timeout_of(ms: i64) -> Option<Duration> {
    u64::try_from(ms).ok().map(Duration::from_millis)
}

fn runtime_of(h: ShmrtRuntime) -> Result<Arc<Runtime>, Fail> {
    handles::get(h.id, "runtime", |o| match o {
        Object::Runtime(r) => Some(r.clone()),
        _ => None,
    })
}

fn plugin_of(h: ShmrtPlugin) -> Result<Arc<PluginObj>, Fail> {
    handles::get(h.id, "plugin", |o| match o {
        Object::Plugin(p) => Some(p.clone()),
        _ => None,
    })
}

fn options_of(h: ShmrtOptions) -> Result<Arc<Mutex<SandboxOptions>>, Fail> {
    handles::get(h.id, "options", |o| match o {
        Object::Options(p) => Some(p.clone()),
        _ => None,
    })
}

fn sandbox_of(h: ShmrtSandbox) -> Result<Arc<SandboxObj>, Fail> {
    handles::get(h.id, "sandbox", |o| match o {
        Object::Sandbox(s) => Some(s.clone()),
        _ => None,
    })
}

fn freed(name: &str) -> Fail {
    Fail::new(
        SHMRT_ERR_BAD_HANDLE,
        format!("sandbox {name}: its handle was freed; release this message's handle too"),
    )
}

/// Runs `f` on the sandbox, with its lock held.
fn with_sandbox<R>(
    obj: &Arc<SandboxObj>,
    f: impl FnOnce(&mut HeldSandbox) -> Result<R, Fail>,
) -> Result<R, Fail> {
    let mut state = obj.state.lock().unwrap_or_else(|e| e.into_inner());
    let held = state.as_mut().ok_or_else(|| freed(&obj.name))?;
    f(held)
}

fn with_options(h: ShmrtOptions, f: impl FnOnce(&mut SandboxOptions) -> Result<(), Fail>) -> i32 {
    guard(|| {
        let options = options_of(h)?;
        let mut options = options.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut options)?;
        Ok(SHMRT_OK)
    })
}

/// The message of the last failure on this thread, NUL-terminated (empty
/// if none): valid until the next failing call on this thread.
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_last_error() -> *const c_char {
    errors::last_error()
}

/// The plugin's code of the last `SHMRT_ERR_PLUGIN` on this thread.
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_last_plugin_code() -> i32 {
    errors::last_plugin_code()
}

/// Makes a runtime (`flags`: 0 or `SHMRT_RUNTIME_FUEL`).
///
/// # Safety
///
/// `out` is null or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_runtime_new(flags: u32, out: *mut ShmrtRuntime) -> i32 {
    guard(|| {
        // SAFETY: the caller's promise.
        let out = unsafe { out_ref(out, "out") }?;
        if flags & !SHMRT_RUNTIME_FUEL != 0 {
            return Err(Fail::new(
                SHMRT_ERR_INVALID,
                format!("unknown runtime flags {flags:#x}"),
            ));
        }
        let runtime = Runtime::with_config(RuntimeConfig {
            fuel: flags & SHMRT_RUNTIME_FUEL != 0,
            ..RuntimeConfig::default()
        })?;
        out.id = handles::insert(Object::Runtime(Arc::new(runtime)));
        Ok(SHMRT_OK)
    })
}

/// Releases a runtime handle (plugins and sandboxes made from it keep it
/// alive as long as they live).
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_runtime_free(runtime: ShmrtRuntime) -> i32 {
    guard(|| {
        drop(handles::remove(runtime.id, "runtime", |o| {
            matches!(o, Object::Runtime(_))
        })?);
        Ok(SHMRT_OK)
    })
}

fn prepare(runtime: ShmrtRuntime, wasm: &[u8], out: &mut ShmrtPlugin) -> Result<i32, Fail> {
    let runtime = runtime_of(runtime)?;
    let plugin = runtime.prepare(wasm)?;
    out.id = handles::insert(Object::Plugin(Arc::new(PluginObj { runtime, plugin })));
    Ok(SHMRT_OK)
}

/// Prepares a plugin from `len` bytes of wasm (binary or WAT text).
///
/// # Safety
///
/// `wasm` is valid for reads of `len` bytes; `out` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_plugin_new(
    runtime: ShmrtRuntime,
    wasm: *const u8,
    len: usize,
    out: *mut ShmrtPlugin,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's promises.
        let (wasm, out) = unsafe { (in_bytes(wasm, len, "wasm")?, out_ref(out, "out")?) };
        prepare(runtime, wasm, out)
    })
}

/// Prepares a plugin from the file at `path`.
///
/// # Safety
///
/// `path` is a NUL-terminated string; `out` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_plugin_from_file(
    runtime: ShmrtRuntime,
    path: *const c_char,
    out: *mut ShmrtPlugin,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's promises.
        let (path, out) = unsafe { (in_str(path, "path")?, out_ref(out, "out")?) };
        let wasm = shmrt::read_module_file(path.as_ref())?;
        prepare(runtime, &wasm, out)
    })
}

/// Releases a plugin handle (its sandboxes keep what they need).
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_plugin_free(plugin: ShmrtPlugin) -> i32 {
    guard(|| {
        drop(handles::remove(plugin.id, "plugin", |o| {
            matches!(o, Object::Plugin(_))
        })?);
        Ok(SHMRT_OK)
    })
}

/// Spawns a sandbox of `plugin` with `options` (id 0: the defaults).
///
/// # Safety
///
/// `out` is null or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_spawn(
    plugin: ShmrtPlugin,
    options: ShmrtOptions,
    out: *mut ShmrtSandbox,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's promise.
        let out = unsafe { out_ref(out, "out") }?;
        let plugin = plugin_of(plugin)?;
        let options = match options.id {
            0 => SandboxOptions::default(),
            _ => options_of(options)?
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        };
        let sandbox = plugin.runtime.spawn_plugin(&plugin.plugin, options)?;
        let held = HeldSandbox::new(sandbox);
        out.id = handles::insert(Object::Sandbox(Arc::new(SandboxObj {
            name: held.name().to_owned(),
            stop: held.stop_handle().clone(),
            state: Mutex::new(Some(held)),
        })));
        Ok(SHMRT_OK)
    })
}

/// Releases a sandbox handle: a sandbox not joined is stopped and joined
/// now; handles of its messages then only say so (and can be released).
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_sandbox_free(sandbox: ShmrtSandbox) -> i32 {
    guard(|| {
        let Object::Sandbox(obj) =
            handles::remove(sandbox.id, "sandbox", |o| matches!(o, Object::Sandbox(_)))?
        else {
            unreachable!("checked by remove");
        };
        obj.stop.stop();
        let held = obj.state.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(held);
        Ok(SHMRT_OK)
    })
}

/// Asks the guest to stop. Callable from any thread, also while another
/// thread blocks in this sandbox (it does not wait for that thread).
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_stop(sandbox: ShmrtSandbox) -> i32 {
    guard(|| {
        sandbox_of(sandbox)?.stop.stop();
        Ok(SHMRT_OK)
    })
}

/// The host address and length of the sandbox's segment window: every
/// message received and every payload written in place lies inside it.
///
/// # Safety
///
/// `base` and `len` are null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_sandbox_window(
    sandbox: ShmrtSandbox,
    base: *mut *const u8,
    len: *mut usize,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's promises.
        let (base, len) = unsafe { (out_ref(base, "base")?, out_ref(len, "len")?) };
        let obj = sandbox_of(sandbox)?;
        let (b, l) = with_sandbox(&obj, |h| Ok(h.window()))?;
        *base = b as *const u8;
        *len = l;
        Ok(SHMRT_OK)
    })
}

/// Sends a copy of `len` bytes, waiting for room as long as the guest
/// runs.
///
/// # Safety
///
/// `data` is valid for reads of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_send(sandbox: ShmrtSandbox, data: *const u8, len: usize) -> i32 {
    guard(|| {
        // SAFETY: the caller's promise.
        let data = unsafe { in_bytes(data, len, "data") }?;
        with_sandbox(&sandbox_of(sandbox)?, |h| Ok(h.send(data)?))?;
        Ok(SHMRT_OK)
    })
}

/// Sends a copy of `len` bytes if there is room now; `SHMRT_EMPTY` if not.
///
/// # Safety
///
/// `data` is valid for reads of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_try_send(sandbox: ShmrtSandbox, data: *const u8, len: usize) -> i32 {
    guard(|| {
        // SAFETY: the caller's promise.
        let data = unsafe { in_bytes(data, len, "data") }?;
        let sent = with_sandbox(&sandbox_of(sandbox)?, |h| Ok(h.try_send(data)?))?;
        Ok(if sent { SHMRT_OK } else { SHMRT_EMPTY })
    })
}

/// Reserves `len` bytes in the ring or a slot, lets `fill(user, data,
/// len)` write the payload there in place, and commits it when `fill`
/// returns 0 (nothing is sent otherwise). `data` is valid during `fill`
/// only; the guest's memory is on the other side, so write it, don't
/// keep it.
///
/// # Safety
///
/// `fill` is callable with `user`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_send_with(
    sandbox: ShmrtSandbox,
    len: usize,
    fill: ShmrtFillFn,
    user: *mut c_void,
) -> i32 {
    guard(|| {
        let fill = fill.ok_or_else(|| null("fill"))?;
        with_sandbox(&sandbox_of(sandbox)?, |h| {
            Ok(h.send_with(len, |mut bytes| {
                // SAFETY: `fill` is callable by the caller's promise; the
                // pointer covers the `len` reserved bytes, ours until the
                // commit that follows its return.
                match unsafe { fill(user, bytes.as_mut_ptr(), bytes.len()) } {
                    0 => Ok(()),
                    code => Err(format!("the fill callback returned {code}")),
                }
            })?)
        })?;
        Ok(SHMRT_OK)
    })
}

/// Raises host goodbye: the guest drains what is queued and returns.
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_goodbye(sandbox: ShmrtSandbox) -> i32 {
    guard(|| {
        with_sandbox(&sandbox_of(sandbox)?, |h| Ok(h.goodbye()?))?;
        Ok(SHMRT_OK)
    })
}

/// Waits up to `timeout_ms` (negative: as long as it takes; 0: only what
/// is there) for a message. On `SHMRT_OK`, `*out` is its handle and
/// `*data`/`*len` (each may be null) its bytes in place in the segment,
/// valid until `shmrt_message_release` (the guest may still write them:
/// copy what must not change). `SHMRT_EMPTY`: none came. One message is
/// held at a time per sandbox (`SHMRT_ERR_BUSY` otherwise).
///
/// # Safety
///
/// `out` is writable; `data` and `len` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_recv(
    sandbox: ShmrtSandbox,
    timeout_ms: i64,
    out: *mut ShmrtMessage,
    data: *mut *const u8,
    len: *mut usize,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's promises.
        let (out, data, len) = unsafe { (out_ref(out, "out")?, data.as_mut(), len.as_mut()) };
        let obj = sandbox_of(sandbox)?;
        let got = with_sandbox(&obj, |h| {
            let Some(generation) = h.recv(timeout_of(timeout_ms))? else {
                return Ok(None);
            };
            let bytes = h.bytes(generation)?;
            Ok(Some((generation, bytes.as_ptr(), bytes.len())))
        })?;
        let Some((generation, ptr, n)) = got else {
            return Ok(SHMRT_EMPTY);
        };
        out.id = handles::insert(Object::Message(obj, generation));
        if let Some(data) = data {
            *data = ptr;
        }
        if let Some(len) = len {
            *len = n;
        }
        Ok(SHMRT_OK)
    })
}

fn message_of(h: ShmrtMessage) -> Result<(Arc<SandboxObj>, u64), Fail> {
    handles::get(h.id, "message", |o| match o {
        Object::Message(s, g) => Some((s.clone(), *g)),
        _ => None,
    })
}

/// The bytes of a message not yet released, in place.
///
/// # Safety
///
/// `data` and `len` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_message_data(
    message: ShmrtMessage,
    data: *mut *const u8,
    len: *mut usize,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's promises.
        let (data, len) = unsafe { (out_ref(data, "data")?, out_ref(len, "len")?) };
        let (obj, generation) = message_of(message)?;
        let (p, n) = with_sandbox(&obj, |h| {
            let b = h.bytes(generation)?;
            Ok((b.as_ptr(), b.len()))
        })?;
        *data = p;
        *len = n;
        Ok(SHMRT_OK)
    })
}

/// Releases a message: its slot or ring bytes go back to the guest and
/// its pointer must not be used again.
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_message_release(message: ShmrtMessage) -> i32 {
    guard(|| {
        let Object::Message(obj, generation) =
            handles::remove(message.id, "message", |o| matches!(o, Object::Message(..)))?
        else {
            unreachable!("checked by remove");
        };
        let mut state = obj.state.lock().unwrap_or_else(|e| e.into_inner());
        // Already gone with a join or the sandbox's free: nothing to give back.
        if let Some(h) = state.as_mut()
            && h.held_generation() == Some(generation)
        {
            h.release(generation)?;
        }
        Ok(SHMRT_OK)
    })
}

/// Answers a message with its own bytes: `transform(user, data, len)`
/// rewrites them in place and returns the reply's length (at most `len`).
/// A message in a slot goes back in that slot (no copy). The message is
/// released, answered or not.
///
/// # Safety
///
/// `transform` is callable with `user`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_message_reply_in_place(
    message: ShmrtMessage,
    transform: ShmrtTransformFn,
    user: *mut c_void,
) -> i32 {
    guard(|| {
        let transform = transform.ok_or_else(|| null("transform"))?;
        let Object::Message(obj, generation) =
            handles::remove(message.id, "message", |o| matches!(o, Object::Message(..)))?
        else {
            unreachable!("checked by remove");
        };
        with_sandbox(&obj, |h| {
            Ok(h.reply_in_place(generation, |mut bytes| {
                // SAFETY: callable by the caller's promise; the pointer
                // covers the payload, ours until the reply is sent.
                unsafe { transform(user, bytes.as_mut_ptr(), bytes.len()) }
            })?)
        })?;
        Ok(SHMRT_OK)
    })
}

/// Calls the plugin's exported function `function` with `input` and waits
/// up to `timeout_ms` (negative: the sandbox's own limits) for its output,
/// given as a bytes handle. `SHMRT_ERR_PLUGIN`: the function returned an
/// error (`shmrt_last_plugin_code`, `shmrt_last_error`).
///
/// # Safety
///
/// `function` is a NUL-terminated string, `input` readable for
/// `input_len` bytes, `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_call(
    sandbox: ShmrtSandbox,
    function: *const c_char,
    input: *const u8,
    input_len: usize,
    timeout_ms: i64,
    out: *mut ShmrtBytes,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's promises.
        let (function, input, out) = unsafe {
            (
                in_str(function, "function")?,
                in_bytes(input, input_len, "input")?,
                out_ref(out, "out")?,
            )
        };
        let output = with_sandbox(&sandbox_of(sandbox)?, |h| {
            Ok(h.call(function, input, timeout_of(timeout_ms))?)
        })?;
        out.id = handles::insert(Object::Bytes(Arc::new(output)));
        Ok(SHMRT_OK)
    })
}

/// The bytes behind a bytes handle (valid until `shmrt_bytes_free`).
///
/// # Safety
///
/// `data` and `len` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_bytes_data(
    bytes: ShmrtBytes,
    data: *mut *const u8,
    len: *mut usize,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's promises.
        let (data, len) = unsafe { (out_ref(data, "data")?, out_ref(len, "len")?) };
        let b = handles::get(bytes.id, "bytes", |o| match o {
            Object::Bytes(b) => Some(b.clone()),
            _ => None,
        })?;
        // The table keeps the `Arc` (and so the bytes) until freed.
        *data = b.as_ptr();
        *len = b.len();
        Ok(SHMRT_OK)
    })
}

/// Frees a bytes handle.
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_bytes_free(bytes: ShmrtBytes) -> i32 {
    guard(|| {
        drop(handles::remove(bytes.id, "bytes", |o| {
            matches!(o, Object::Bytes(_))
        })?);
        Ok(SHMRT_OK)
    })
}

/// Waits for the guest to return (say goodbye first, or it may wait for
/// messages forever): `SHMRT_OK` with its exit status in `*status`, or
/// how it failed. A held message is released first. The handle then only
/// answers `SHMRT_ERR_JOINED` until `shmrt_sandbox_free`.
///
/// # Safety
///
/// `status` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_join(sandbox: ShmrtSandbox, status: *mut i32) -> i32 {
    guard(|| {
        // SAFETY: the caller's promise.
        let status = unsafe { status.as_mut() };
        let code = with_sandbox(&sandbox_of(sandbox)?, |h| Ok(h.join()?))?;
        if let Some(status) = status {
            *status = code;
        }
        Ok(SHMRT_OK)
    })
}

/// Says goodbye, drops what the guest still sends and joins it, stopping
/// it after `timeout_ms` (negative: no limit). As `shmrt_join` after.
///
/// # Safety
///
/// `status` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_close(
    sandbox: ShmrtSandbox,
    timeout_ms: i64,
    status: *mut i32,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's promise.
        let status = unsafe { status.as_mut() };
        let limit = timeout_of(timeout_ms).unwrap_or(Duration::MAX);
        let code = with_sandbox(&sandbox_of(sandbox)?, |h| Ok(h.close(limit)?))?;
        if let Some(status) = status {
            *status = code;
        }
        Ok(SHMRT_OK)
    })
}
