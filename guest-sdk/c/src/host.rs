//! The host: logging, the peer id and clock, error texts, configuration
//! and host function calls.

use core::ffi::c_char;

use shmrt_guest::host_fn::{self, HostCallError};

use crate::codes::{self, *};
use crate::{STATE, bytes, bytes_mut, put};

/// Logs `len` bytes of UTF-8 at `level` (0 trace, 1 debug, 2 info,
/// 3 warn, 4 error).
///
/// # Safety
///
/// `text` is NULL (with `len` 0) or readable for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_log(level: i32, text: *const c_char, len: usize) -> i32 {
    if !(0..=4).contains(&level) {
        return E_BAD_ARG;
    }
    // SAFETY: the caller's promise.
    let text = match unsafe { bytes(text.cast(), len) } {
        Ok(t) => t,
        Err(e) => return e,
    };
    if core::str::from_utf8(text).is_err() {
        return E_NOT_UTF8;
    }
    shmrt_guest::host::log(level, text);
    OK
}

/// This guest's peer id (1..=255).
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_peer_id() -> u32 {
    shmrt_guest::host::peer_id()
}

/// The host's monotonic clock, in nanoseconds.
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_now_ns() -> u64 {
    shmrt_guest::host::now_ns()
}

/// The text of an error code (NUL-terminated, static).
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_strerror(code: i32) -> *const c_char {
    codes::text(code).as_ptr().cast()
}

/// # Safety
///
/// `text` is NULL (with `len` 0) or readable for `len` bytes.
unsafe fn utf8<'a>(text: *const c_char, len: usize) -> Result<&'a str, i32> {
    // SAFETY: the caller's promise.
    let b = unsafe { bytes(text.cast(), len) }?;
    core::str::from_utf8(b).map_err(|_| E_NOT_UTF8)
}

/// Reads the configuration value of `key` into `out`: `*len` is its
/// length. `SHMRT_E_NOT_FOUND` when the host gave no such key,
/// `SHMRT_E_TOO_SHORT` (with `*len` the length needed) when it does not
/// fit `cap` bytes. `SHMRT_E_BAD_ARG`: `out` overlaps `key`.
///
/// # Safety
///
/// `key` is readable for `key_len` bytes, `out` writable for `cap`, `len`
/// writable (each may be NULL with a length of 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_config_get(
    key: *const c_char,
    key_len: usize,
    out: *mut u8,
    cap: usize,
    len: *mut usize,
) -> i32 {
    if len.is_null() {
        return E_NULL;
    }
    // SAFETY: the caller's promises.
    let (key, buf) = match unsafe { (utf8(key, key_len), bytes_mut(out, cap)) } {
        (Ok(k), Ok(b)) => (k, b),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    if overlaps(buf, key.as_bytes()) {
        return E_BAD_ARG;
    }
    let (code, n) = match shmrt_guest::config::get_bytes(key, buf) {
        Ok(Some(v)) => (OK, v.len()),
        Ok(None) => (E_NOT_FOUND, 0),
        Err(shmrt_guest::config::ConfigError::TooLong { len }) => (E_TOO_SHORT, len),
        Err(_) => (E_REFUSED, 0),
    };
    // SAFETY: checked non-NULL; the caller's promise.
    unsafe { len.write(n) };
    code
}

/// Calls the host function `name` with `input` (read in place) and writes
/// its output into `out`: `*out_len` is its length. `SHMRT_E_TOO_SHORT`
/// (with `*out_len` the length) when it does not fit: take it with
/// `shmrt_host_output`. `SHMRT_E_NOT_FOUND`: no such function.
/// `SHMRT_E_HOST_FAILED` / `SHMRT_E_HOST_PANICKED`: see
/// `shmrt_host_error`. `SHMRT_E_BAD_ARG`: `out` overlaps `input` or
/// `name`.
///
/// # Safety
///
/// Each pointer is readable (`name`, `input`) or writable (`out`,
/// `out_len`) for its length; NULL only with a length of 0.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_host_call(
    name: *const c_char,
    name_len: usize,
    input: *const u8,
    input_len: usize,
    out: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> i32 {
    if out_len.is_null() {
        return E_NULL;
    }
    // SAFETY: the caller's promises.
    let args = unsafe {
        (
            utf8(name, name_len),
            bytes(input, input_len),
            bytes_mut(out, cap),
        )
    };
    let (name, input, buf) = match args {
        (Ok(n), Ok(i), Ok(b)) => (n, i, b),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e,
    };
    // The output buffer may not overlap the input or the name: the slices
    // would alias (and the host would write the output over its input).
    if overlaps(buf, input) || overlaps(buf, name.as_bytes()) {
        return E_BAD_ARG;
    }
    let (code, n) = match host_fn::call(name, input, buf) {
        Ok(output) => (OK, output.len()),
        Err(HostCallError::OutputTooLarge { len }) => (E_TOO_SHORT, len),
        Err(e) => (host_failure(e), 0),
    };
    // SAFETY: checked non-NULL; the caller's promise.
    unsafe { out_len.write(n) };
    code
}

/// Whether two non-empty buffers share a byte.
fn overlaps(a: &[u8], b: &[u8]) -> bool {
    let (a0, b0) = (a.as_ptr() as usize, b.as_ptr() as usize);
    !a.is_empty() && !b.is_empty() && a0 < b0 + b.len() && b0 < a0 + a.len()
}

fn host_failure(e: HostCallError) -> i32 {
    let keep = |code, message| {
        // SAFETY: no reference into the cell outlives this statement; one
        // thread (see `State`).
        unsafe { *STATE.host_error.get() = Some((code, message)) };
    };
    match e {
        HostCallError::NoSuchFunction => E_NOT_FOUND,
        HostCallError::Failed { code, message } => {
            keep(code, message);
            E_HOST_FAILED
        }
        HostCallError::Panicked { message } => {
            keep(0, message);
            E_HOST_PANICKED
        }
        HostCallError::OutputTooLarge { .. } => E_TOO_SHORT,
        _ => E_REFUSED,
    }
}

/// Takes the output the last host call kept (`SHMRT_E_TOO_SHORT`) into
/// `out`: `*len` is its length; `SHMRT_E_TOO_SHORT` again while `cap` is
/// short, `SHMRT_E_NOT_FOUND` when none is kept.
///
/// # Safety
///
/// `out` is writable for `cap` bytes (NULL with 0); `len` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_host_output(out: *mut u8, cap: usize, len: *mut usize) -> i32 {
    if len.is_null() {
        return E_NULL;
    }
    // SAFETY: the caller's promise.
    let buf = match unsafe { bytes_mut(out, cap) } {
        Ok(b) => b,
        Err(e) => return e,
    };
    let n = shmrt_guest::host::host_result(buf);
    let Ok(n) = usize::try_from(n) else {
        return E_NOT_FOUND;
    };
    // SAFETY: checked non-NULL; the caller's promise.
    unsafe { len.write(n) };
    if n > cap { E_TOO_SHORT } else { OK }
}

/// The code and message of the last failed host call
/// (`SHMRT_E_HOST_FAILED`, `SHMRT_E_HOST_PANICKED`): the message's bytes
/// that fit `cap` go to `message`, `*len` is its whole length.
/// `SHMRT_E_NOT_FOUND` when no host call failed.
///
/// # Safety
///
/// `code` and `len` are writable; `message` is writable for `cap` bytes
/// (NULL with 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_host_error(
    code: *mut i32,
    message: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> i32 {
    if code.is_null() || len.is_null() {
        return E_NULL;
    }
    // SAFETY: the caller's promise.
    let buf = match unsafe { bytes_mut(message.cast(), cap) } {
        Ok(b) => b,
        Err(e) => return e,
    };
    // SAFETY: one thread, and no other reference into the cell is alive.
    let kept = unsafe { &*STATE.host_error.get() };
    let Some((c, m)) = kept else {
        return E_NOT_FOUND;
    };
    let text = m.as_str().as_bytes();
    let n = text.len().min(buf.len());
    buf[..n].copy_from_slice(&text[..n]);
    // SAFETY: checked non-NULL; the caller's promise.
    unsafe {
        put(code, *c);
        put(len, text.len());
    }
    OK
}
