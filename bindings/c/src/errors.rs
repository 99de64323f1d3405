//! Status codes and the per-thread message of the last failure
//! (`shmrt_last_error`): a C caller gets a code it can switch on and a
//! sentence that names the sandbox and what to do.

use std::cell::{Cell, RefCell};
use std::ffi::CString;

use shmrt::{CallError, SandboxError};

use crate::held::HeldError;

/// Success.
pub const SHMRT_OK: i32 = 0;
/// Nothing now: no message within the timeout (`shmrt_recv`), no room
/// now (`shmrt_try_send`). Not a failure: `shmrt_last_error` is unchanged.
pub const SHMRT_EMPTY: i32 = 1;
/// A pointer argument that must not be null was null.
pub const SHMRT_ERR_NULL: i32 = -1;
/// A handle that is not (or no longer) one of this kind: released, never
/// made, or of another kind.
pub const SHMRT_ERR_BAD_HANDLE: i32 = -2;
/// An argument out of range or not UTF-8.
pub const SHMRT_ERR_INVALID: i32 = -3;
/// The operation ran out of its own timeout (a send, a call).
pub const SHMRT_ERR_TIMEOUT: i32 = -4;
/// The guest has ended and everything it sent has been read.
pub const SHMRT_ERR_CLOSED: i32 = -5;
/// The guest trapped.
pub const SHMRT_ERR_TRAP: i32 = -6;
/// The guest used up its fuel.
pub const SHMRT_ERR_OUT_OF_FUEL: i32 = -7;
/// The guest hit its memory budget.
pub const SHMRT_ERR_MEMORY_LIMIT: i32 = -8;
/// The guest ran past its deadline (the sandbox's timeout).
pub const SHMRT_ERR_DEADLINE: i32 = -9;
/// The host stopped the sandbox.
pub const SHMRT_ERR_STOPPED: i32 = -10;
/// A message larger than the largest slot.
pub const SHMRT_ERR_TOO_LARGE: i32 = -11;
/// No free slot while the guest freed none (it holds them).
pub const SHMRT_ERR_SLOTS_EXHAUSTED: i32 = -12;
/// The module is invalid, refused, or failed to instantiate.
pub const SHMRT_ERR_REFUSED: i32 = -13;
/// The guest broke the shared-memory protocol.
pub const SHMRT_ERR_PROTOCOL: i32 = -14;
/// A called function returned an error: `shmrt_last_plugin_code` has
/// its code.
pub const SHMRT_ERR_PLUGIN: i32 = -15;
/// A received message is still held: release it first.
pub const SHMRT_ERR_BUSY: i32 = -16;
/// The sandbox was joined: only `shmrt_sandbox_free` is left.
pub const SHMRT_ERR_JOINED: i32 = -17;
/// Anything else (an OS error, a panic caught at the boundary).
pub const SHMRT_ERR_OTHER: i32 = -99;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    static LAST_PLUGIN_CODE: Cell<i32> = const { Cell::new(0) };
}

/// A failure to report: a code and its message.
#[derive(Debug)]
pub(crate) struct Fail {
    pub code: i32,
    pub message: String,
}

impl Fail {
    pub(crate) fn new(code: i32, message: impl Into<String>) -> Self {
        Fail {
            code,
            message: message.into(),
        }
    }

    /// Keeps the message for `shmrt_last_error` and gives the code.
    pub(crate) fn report(self) -> i32 {
        let text = CString::new(self.message.replace('\0', "\\0")).unwrap_or_default();
        LAST_ERROR.with(|e| *e.borrow_mut() = text);
        self.code
    }
}

/// The message of the last failure on this thread (empty if none).
pub(crate) fn last_error() -> *const std::ffi::c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The plugin code of the last `SHMRT_ERR_PLUGIN` on this thread.
pub(crate) fn last_plugin_code() -> i32 {
    LAST_PLUGIN_CODE.with(Cell::get)
}

/// The code of a runtime error.
pub(crate) fn sandbox_code(e: &SandboxError) -> i32 {
    match e {
        SandboxError::Trap { .. } => SHMRT_ERR_TRAP,
        SandboxError::OutOfFuel { .. } => SHMRT_ERR_OUT_OF_FUEL,
        SandboxError::MemoryLimit { .. } => SHMRT_ERR_MEMORY_LIMIT,
        SandboxError::Timeout { .. } => SHMRT_ERR_DEADLINE,
        SandboxError::Stopped { .. } => SHMRT_ERR_STOPPED,
        SandboxError::Closed { .. } | SandboxError::Unanswered { .. } => SHMRT_ERR_CLOSED,
        SandboxError::TooLarge { .. } => SHMRT_ERR_TOO_LARGE,
        SandboxError::SlotsExhausted { .. } => SHMRT_ERR_SLOTS_EXHAUSTED,
        SandboxError::Compile { .. }
        | SandboxError::Refused { .. }
        | SandboxError::Instantiate { .. }
        | SandboxError::WindowTooLarge { .. } => SHMRT_ERR_REFUSED,
        SandboxError::Protocol { .. } => SHMRT_ERR_PROTOCOL,
        SandboxError::WouldBlock { .. } => SHMRT_ERR_TIMEOUT,
        SandboxError::Config(_) => SHMRT_ERR_INVALID,
        _ => SHMRT_ERR_OTHER,
    }
}

impl From<SandboxError> for Fail {
    fn from(e: SandboxError) -> Self {
        Fail::new(sandbox_code(&e), format!("{e}"))
    }
}

impl From<CallError> for Fail {
    fn from(e: CallError) -> Self {
        let code = match &e {
            CallError::Plugin { code, .. } => {
                LAST_PLUGIN_CODE.with(|c| c.set(*code));
                SHMRT_ERR_PLUGIN
            }
            CallError::Timeout { .. } => SHMRT_ERR_TIMEOUT,
            CallError::BadName { .. } | CallError::Reentrant { .. } => SHMRT_ERR_INVALID,
            CallError::BadReply { .. } => SHMRT_ERR_PROTOCOL,
            CallError::Sandbox(s) => sandbox_code(s),
            _ => SHMRT_ERR_OTHER,
        };
        Fail::new(code, format!("{e}"))
    }
}

impl From<HeldError> for Fail {
    fn from(e: HeldError) -> Self {
        match e {
            HeldError::Sandbox(s) => s.into(),
            HeldError::Call(c) => c.into(),
            HeldError::Joined { .. } => Fail::new(SHMRT_ERR_JOINED, e.to_string()),
            HeldError::Busy { .. } => Fail::new(SHMRT_ERR_BUSY, e.to_string()),
            HeldError::Released { .. } => Fail::new(SHMRT_ERR_BAD_HANDLE, e.to_string()),
            HeldError::NotSent { .. } => Fail::new(SHMRT_ERR_INVALID, e.to_string()),
        }
    }
}
