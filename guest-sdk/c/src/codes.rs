//! The error codes of the C ABI, as `include/shmrt_guest.h` documents
//! them (a test compares the two lists), and the SDK's errors mapped onto
//! them.

use shmrt_guest::SendError;

pub const OK: i32 = 0;
pub const E_NULL: i32 = -1;
pub const E_HANDLE: i32 = -2;
pub const E_RELEASED: i32 = -3;
pub const E_BUSY: i32 = -4;
pub const E_OVER_COMMIT: i32 = -5;
pub const E_GOODBYE: i32 = -6;
pub const E_TOO_LARGE: i32 = -7;
pub const E_WOULD_BLOCK: i32 = -8;
pub const E_SLOTS_EXHAUSTED: i32 = -9;
pub const E_PROTOCOL: i32 = -10;
pub const E_OPEN: i32 = -11;
pub const E_NO_CHANNEL: i32 = -12;
pub const E_IN_HANDLER: i32 = -13;
pub const E_MODE: i32 = -14;
pub const E_NOT_UTF8: i32 = -15;
pub const E_BAD_ARG: i32 = -16;
pub const E_NOT_FOUND: i32 = -17;
pub const E_TOO_SHORT: i32 = -18;
pub const E_HOST_FAILED: i32 = -19;
pub const E_HOST_PANICKED: i32 = -20;
pub const E_REFUSED: i32 = -21;

/// Every code with its name and text (`shmrt_strerror`), NUL-terminated.
pub const ALL: [(i32, &str, &str); 22] = [
    (OK, "SHMRT_OK", "success\0"),
    (E_NULL, "SHMRT_E_NULL", "a required pointer is NULL\0"),
    (E_HANDLE, "SHMRT_E_HANDLE", "not a handle of this kind\0"),
    (
        E_RELEASED,
        "SHMRT_E_RELEASED",
        "the handle was released already\0",
    ),
    (
        E_BUSY,
        "SHMRT_E_BUSY",
        "a message or reservation is held: release or commit it first\0",
    ),
    (
        E_OVER_COMMIT,
        "SHMRT_E_OVER_COMMIT",
        "commit of more bytes than reserved\0",
    ),
    (
        E_GOODBYE,
        "SHMRT_E_GOODBYE",
        "the plugin said goodbye: it sends nothing more\0",
    ),
    (
        E_TOO_LARGE,
        "SHMRT_E_TOO_LARGE",
        "larger than the largest slot payload\0",
    ),
    (
        E_WOULD_BLOCK,
        "SHMRT_E_WOULD_BLOCK",
        "no room while running as a callback\0",
    ),
    (
        E_SLOTS_EXHAUSTED,
        "SHMRT_E_SLOTS_EXHAUSTED",
        "no slot came free within the slot wait\0",
    ),
    (
        E_PROTOCOL,
        "SHMRT_E_PROTOCOL",
        "the host broke the protocol\0",
    ),
    (
        E_OPEN,
        "SHMRT_E_OPEN",
        "the channel to the host could not be opened\0",
    ),
    (
        E_NO_CHANNEL,
        "SHMRT_E_NO_CHANNEL",
        "no channel here: send from a handler or a receive loop\0",
    ),
    (
        E_IN_HANDLER,
        "SHMRT_E_IN_HANDLER",
        "not allowed inside a handler\0",
    ),
    (
        E_MODE,
        "SHMRT_E_MODE",
        "handler and receive-loop entry points mixed\0",
    ),
    (E_NOT_UTF8, "SHMRT_E_NOT_UTF8", "text is not UTF-8\0"),
    (
        E_BAD_ARG,
        "SHMRT_E_BAD_ARG",
        "an argument is out of range\0",
    ),
    (
        E_NOT_FOUND,
        "SHMRT_E_NOT_FOUND",
        "no such key or function\0",
    ),
    (
        E_TOO_SHORT,
        "SHMRT_E_TOO_SHORT",
        "the buffer is too short: *len says how long it must be\0",
    ),
    (
        E_HOST_FAILED,
        "SHMRT_E_HOST_FAILED",
        "the host function failed: see shmrt_host_error\0",
    ),
    (
        E_HOST_PANICKED,
        "SHMRT_E_HOST_PANICKED",
        "the host function panicked: see shmrt_host_error\0",
    ),
    (
        E_REFUSED,
        "SHMRT_E_REFUSED",
        "the host refused the request\0",
    ),
];

/// The code of a send's error.
pub fn of_send(e: &SendError) -> i32 {
    match e {
        SendError::TooLarge { .. } => E_TOO_LARGE,
        SendError::Protocol(_) => E_PROTOCOL,
        SendError::WouldBlock { .. } => E_WOULD_BLOCK,
        SendError::SlotsExhausted { .. } => E_SLOTS_EXHAUSTED,
    }
}

/// The text of `code` (NUL-terminated).
pub fn text(code: i32) -> &'static str {
    ALL.iter()
        .find(|(c, _, _)| *c == code)
        .map_or("unknown shmrt error code\0", |(_, _, t)| t)
}

/// The exit status a handler's negative result ends the plugin with:
/// EX_TEMPFAIL (75) when no slot came free, as the Rust SDK's, else 1.
pub fn exit_status(code: i32) -> i32 {
    if code == E_SLOTS_EXHAUSTED { 75 } else { 1 }
}
