//! Host functions and configuration: what the embedder gives a plugin
//! besides messages, reached through three imports of module `shmrt`
//! (`wit/shmrt.wit`):
//!
//! - `host-call(name, input, out) -> s64` runs a named function of the
//!   embedder's ([`HostFunctions`]) synchronously, on the thread running
//!   the guest, in every execution mode (in callback mode that is the
//!   host's own thread, where a message round trip could not complete).
//!   The input is a view of guest memory, read in place; the output is
//!   written in place into the guest's buffer when it fits, else kept as
//!   the pending result.
//! - `host-result(out) -> s64` copies the pending result (an output too
//!   large for the call's buffer, a failure's code and message).
//! - `config-get(key, out) -> s64` reads the sandbox's configuration
//!   ([`crate::SandboxOptions::config`]).
//!
//! Every pointer and length the guest passes is checked against its
//! linear memory before anything is read or written: a bad one is refused
//! with `BAD_ARGUMENT`. A host function's panic becomes `PANICKED` for
//! the guest (logged with the sandbox's name), never a host crash. A host
//! function cannot call into its own guest (`CallError::Reentrant`).

use std::cell::RefCell;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use shmrt_primitives::call_header::import_codes;
use shmrt_primitives::{SharedBytes, SharedBytesMut};
use wasmtime::{Caller, Memory};

use crate::state::contract::{HostOutput, MAX_HOST_ERROR_MESSAGE};
use crate::state::shared::SandboxShared;
use crate::state::store::SandboxState;

thread_local! {
    /// The sandboxes whose host functions this thread is running, outer
    /// first (their shared states' addresses): a host function of A may
    /// call sandbox B on this thread (fiber, callback), whose host
    /// function is then running too, and A's guest is still suspended.
    static IN_HOST_FUNCTIONS_OF: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Marks this thread as running a host function of `shared` until the
/// guard drops.
pub(crate) struct InHostFunction(());

impl InHostFunction {
    pub(crate) fn enter(shared: &Arc<SandboxShared>) -> Self {
        IN_HOST_FUNCTIONS_OF.with(|c| c.borrow_mut().push(Arc::as_ptr(shared) as usize));
        InHostFunction(())
    }
}

impl Drop for InHostFunction {
    fn drop(&mut self) {
        IN_HOST_FUNCTIONS_OF.with(|c| c.borrow_mut().pop());
    }
}

/// Whether this thread is running a host function of the sandbox whose
/// shared state is at `sandbox`, directly or further out (a host function
/// that called another sandbox, whose host function runs now): a call
/// into that sandbox from here would wait for itself.
pub(crate) fn in_host_function_of(sandbox: usize) -> bool {
    IN_HOST_FUNCTIONS_OF.with(|c| c.borrow().contains(&sandbox))
}

/// The guest's linear memory, and its range `ptr..ptr+len` if it lies
/// inside.
fn guest_range(
    memory: &Memory,
    c: &Caller<'_, SandboxState>,
    ptr: u32,
    len: u32,
) -> Option<(usize, usize)> {
    let size = memory.data_size(c);
    let start = ptr as usize;
    let end = start.checked_add(len as usize)?;
    (end <= size).then_some((start, len as usize))
}

/// The guest's exported `memory`, looked up once per sandbox.
fn memory_of(c: &mut Caller<'_, SandboxState>) -> Option<Memory> {
    if let Some(memory) = c.data().contract.memory {
        return Some(memory);
    }
    let memory = c.get_export("memory").and_then(|e| e.into_memory())?;
    c.data_mut().contract.memory = Some(memory);
    Some(memory)
}

/// The `config-get` import.
pub(crate) fn config_get(
    mut c: Caller<'_, SandboxState>,
    key_ptr: u32,
    key_len: u32,
    out_ptr: u32,
    out_cap: u32,
) -> i64 {
    let Some(memory) = memory_of(&mut c) else {
        return import_codes::BAD_ARGUMENT;
    };
    let (Some(key), Some(out)) = (
        guest_range(&memory, &c, key_ptr, key_len),
        guest_range(&memory, &c, out_ptr, out_cap),
    ) else {
        return import_codes::BAD_ARGUMENT;
    };
    if key.1 > 255 {
        return import_codes::NOT_FOUND;
    }
    let mut name = vec![0u8; key.1];
    if memory.read(&c, key.0, &mut name).is_err() {
        return import_codes::BAD_ARGUMENT;
    }
    let Ok(name) = String::from_utf8(name) else {
        return import_codes::NOT_FOUND;
    };
    let config = Arc::clone(&c.data().contract.config);
    let Some(value) = config.get(&name) else {
        return import_codes::NOT_FOUND;
    };
    if value.len() <= out.1 && memory.write(&mut c, out.0, value.as_bytes()).is_err() {
        return import_codes::BAD_ARGUMENT;
    }
    value.len() as i64
}

/// The `host-call` import.
pub(crate) fn host_call(
    mut c: Caller<'_, SandboxState>,
    (name_ptr, name_len, in_ptr, in_len, out_ptr, out_cap): (u32, u32, u32, u32, u32, u32),
) -> i64 {
    c.data_mut().contract.pending = None;
    let Some(memory) = memory_of(&mut c) else {
        return import_codes::BAD_ARGUMENT;
    };
    let ranges = (
        guest_range(&memory, &c, name_ptr, name_len),
        guest_range(&memory, &c, in_ptr, in_len),
        guest_range(&memory, &c, out_ptr, out_cap),
    );
    let (Some(name), Some(input), Some(out)) = ranges else {
        return import_codes::BAD_ARGUMENT;
    };
    let mut name_buf = [0u8; 255];
    let Some(name_bytes) = name_buf.get_mut(..name.1) else {
        return import_codes::BAD_ARGUMENT;
    };
    if memory.read(&c, name.0, name_bytes).is_err() {
        return import_codes::BAD_ARGUMENT;
    }
    let Ok(name) = std::str::from_utf8(name_bytes) else {
        return import_codes::BAD_ARGUMENT;
    };
    let base = memory.data_ptr(&c);
    let state = c.data();
    let shared = &state.shared;
    if shared.stop_requested() {
        return import_codes::REFUSED;
    }
    let Some(f) = state
        .contract
        .functions
        .as_ref()
        .and_then(|fs| fs.get(name))
    else {
        return import_codes::NOT_FOUND;
    };
    // SAFETY: both ranges were checked to lie inside the guest's linear
    // memory, which stays mapped and does not grow while the host function
    // runs: the guest is suspended in this import, only it can grow its
    // memory, and the closure gets no access to the store. The views may
    // overlap each other and the segment window: `SharedBytes` reads and
    // writes through raw pointers and never makes a Rust reference.
    let (input, guest_out) = unsafe {
        (
            SharedBytes::from_raw_parts(base.add(input.0), input.1),
            SharedBytesMut::from_raw_parts(base.add(out.0), out.1),
        )
    };
    let mut output = HostOutput {
        guest: guest_out,
        len: 0,
        spilled: None,
    };
    let ran = {
        let _inside = InHostFunction::enter(shared);
        catch_unwind(AssertUnwindSafe(|| f(input, &mut output)))
    };
    let (len, spilled) = (output.len, output.spilled);
    let result = match ran {
        Ok(Ok(())) => return finish(&mut c, spilled, len as i64),
        Ok(Err(e)) => {
            let mut result = e.code.to_le_bytes().to_vec();
            let cut = e.message.len().min(MAX_HOST_ERROR_MESSAGE);
            let cut = (0..=cut)
                .rev()
                .find(|&i| e.message.is_char_boundary(i))
                .unwrap_or(0);
            result.extend_from_slice(&e.message.as_bytes()[..cut]);
            (result, import_codes::FAILED)
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_string());
            tracing::error!(
                sandbox = shared.name(),
                "host function `{name}` panicked: {message}"
            );
            let mut result = 0i32.to_le_bytes().to_vec();
            result.extend_from_slice(message.as_bytes());
            (result, import_codes::PANICKED)
        }
    };
    finish(&mut c, Some(result.0), result.1)
}

/// Keeps `pending` for `host-result` and gives `code`.
fn finish(c: &mut Caller<'_, SandboxState>, pending: Option<Vec<u8>>, code: i64) -> i64 {
    c.data_mut().contract.pending = pending;
    code
}

/// The `host-result` import.
pub(crate) fn host_result(mut c: Caller<'_, SandboxState>, out_ptr: u32, out_cap: u32) -> i64 {
    let Some(memory) = memory_of(&mut c) else {
        return import_codes::BAD_ARGUMENT;
    };
    let Some(out) = guest_range(&memory, &c, out_ptr, out_cap) else {
        return import_codes::BAD_ARGUMENT;
    };
    let Some(pending) = c.data_mut().contract.pending.take() else {
        return import_codes::NOT_FOUND;
    };
    let n = pending.len().min(out.1);
    if memory.write(&mut c, out.0, &pending[..n]).is_err() {
        return import_codes::BAD_ARGUMENT;
    }
    let len = pending.len();
    if len > out.1 {
        // Not all of it fit: kept for a larger buffer.
        c.data_mut().contract.pending = Some(pending);
    }
    len as i64
}
