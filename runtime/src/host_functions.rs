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

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use shmrt_primitives::call_header::import_codes;
use shmrt_primitives::{SharedBytes, SharedBytesMut};
use wasmtime::{Caller, Memory};

use crate::calls::InHostFunction;
use crate::sandbox_state::SandboxState;

/// Most bytes of configuration (keys and values together) a sandbox takes.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;
/// Longest message of a host function's error passed to the guest.
pub const MAX_HOST_ERROR_MESSAGE: usize = 4096;

/// A host function: reads its input in place in guest memory and writes
/// its output (see [`HostFunctions::define`]).
type HostFn = dyn Fn(SharedBytes<'_>, &mut HostOutput<'_>) -> Result<(), HostFnError> + Send + Sync;

/// The functions a guest may call by name with
/// `shmrt_guest::host_fn::call`. Give them to a sandbox with
/// [`crate::SandboxOptions::host_functions`]; one set can serve many
/// sandboxes (it is an `Arc` inside).
///
/// ```
/// use shmrt::{HostFnError, HostFunctions};
///
/// let mut functions = HostFunctions::new();
/// functions.define("kv_get", |key, out| {
///     match key.to_vec().as_slice() {
///         b"user:42" => out.write(b"Ada"),
///         _ => return Err(HostFnError::new(404, "no such key")),
///     }
///     Ok(())
/// });
/// ```
#[derive(Clone, Default)]
pub struct HostFunctions {
    functions: HashMap<String, Arc<HostFn>>,
}

impl fmt::Debug for HostFunctions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.functions.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("HostFunctions")
            .field("names", &names)
            .finish()
    }
}

impl HostFunctions {
    /// No functions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Defines (or replaces) the function `name`. It gets the guest's
    /// input as a view of guest memory (bounds checked; the guest cannot
    /// write it while the function runs, but copy what you keep) and a
    /// [`HostOutput`] for its output; its `Err` reaches the guest as
    /// `HostCallError::Failed { code, message }`. It runs on the thread
    /// that runs the guest, while the guest waits: keep it short, as the
    /// sandbox's deadline keeps counting.
    pub fn define(
        &mut self,
        name: impl Into<String>,
        f: impl Fn(SharedBytes<'_>, &mut HostOutput<'_>) -> Result<(), HostFnError>
        + Send
        + Sync
        + 'static,
    ) -> &mut Self {
        self.functions.insert(name.into(), Arc::new(f));
        self
    }

    /// Whether `name` is defined.
    pub fn contains(&self, name: &str) -> bool {
        self.functions.contains_key(name)
    }

    fn get(&self, name: &str) -> Option<&Arc<HostFn>> {
        self.functions.get(name)
    }
}

/// A host function's error, given to the guest: a code and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFnError {
    /// The code the guest gets.
    pub code: i32,
    /// The message the guest gets (cut at [`MAX_HOST_ERROR_MESSAGE`]).
    pub message: String,
}

impl HostFnError {
    /// An error with `code` and `message`.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        HostFnError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for HostFnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for HostFnError {}

/// Where a host function writes its output: into the guest's buffer in
/// place while it fits, then into a host buffer that the guest reads with
/// `host-result`.
pub struct HostOutput<'a> {
    guest: SharedBytesMut<'a>,
    len: usize,
    /// Everything written, once it outgrew the guest's buffer.
    spilled: Option<Vec<u8>>,
}

impl fmt::Debug for HostOutput<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostOutput")
            .field("len", &self.len)
            .field("in_place_capacity", &self.guest.len())
            .finish()
    }
}

impl HostOutput<'_> {
    /// Appends `bytes` to the output.
    pub fn write(&mut self, bytes: &[u8]) {
        let end = self.len.saturating_add(bytes.len());
        if self.spilled.is_none() && end <= self.guest.len() {
            self.guest.write_at(self.len, bytes);
        } else {
            let spilled = self.spilled.get_or_insert_with(|| {
                let mut v = vec![0u8; self.len];
                self.guest
                    .as_shared()
                    .get(..self.len)
                    .expect("written before")
                    .copy_to(&mut v);
                v
            });
            spilled.extend_from_slice(bytes);
        }
        self.len = end;
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room for output in place in the guest's buffer: `len` bytes after
    /// what is written, when the guest's buffer holds them (`None`
    /// otherwise: use [`Self::write`]). Mark them written with
    /// [`Self::advance`].
    pub fn in_place(&mut self, len: usize) -> Option<SharedBytesMut<'_>> {
        if self.spilled.is_some() {
            return None;
        }
        let end = self.len.checked_add(len)?;
        self.guest.get_mut(self.len..end)
    }

    /// Counts `n` bytes written through [`Self::in_place`] (at most the
    /// room there is).
    pub fn advance(&mut self, n: usize) {
        if self.spilled.is_none() {
            self.len = self.len.saturating_add(n).min(self.guest.len());
        }
    }
}

/// What a sandbox's store keeps for these imports.
#[derive(Debug, Default)]
pub(crate) struct ContractState {
    functions: Option<Arc<HostFunctions>>,
    config: Arc<BTreeMap<String, String>>,
    /// The pending result of the last host call.
    pending: Option<Vec<u8>>,
    /// The guest's `memory`, once looked up.
    memory: Option<Memory>,
}

impl ContractState {
    /// The state of a sandbox given `config` and `functions`; an error
    /// that says which limit the configuration broke.
    pub(crate) fn new(
        config: &Arc<BTreeMap<String, String>>,
        functions: Option<&Arc<HostFunctions>>,
    ) -> Result<Self, String> {
        check_config(config)?;
        Ok(ContractState {
            functions: functions.cloned(),
            config: Arc::clone(config),
            pending: None,
            memory: None,
        })
    }
}

/// The configuration's limits: keys of 1 to 255 bytes, at most
/// [`MAX_CONFIG_BYTES`] in all.
pub(crate) fn check_config(config: &BTreeMap<String, String>) -> Result<(), String> {
    let mut total = 0usize;
    for (key, value) in config {
        if key.is_empty() || key.len() > 255 {
            return Err(format!(
                "config key `{}` must be 1 to 255 bytes long",
                crate::guest_output::escape_line(key)
            ));
        }
        total = total.saturating_add(key.len() + value.len());
    }
    if total > MAX_CONFIG_BYTES {
        return Err(format!(
            "config is {total} bytes (keys and values), more than the {MAX_CONFIG_BYTES} a \
             sandbox takes: pass large data as a message or a file"
        ));
    }
    Ok(())
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
    if shared.stop.load(std::sync::atomic::Ordering::Acquire) {
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
                sandbox = shared.name,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_goes_in_place_while_it_fits_then_spills_whole() {
        let mut guest = [0u8; 8];
        let mut out = HostOutput {
            guest: SharedBytesMut::from_mut_slice(&mut guest),
            len: 0,
            spilled: None,
        };
        out.write(b"abcd");
        let mut room = out.in_place(2).expect("room");
        room.copy_from(b"ef");
        out.advance(2);
        assert_eq!(out.len(), 6);
        assert!(out.spilled.is_none());
        out.write(b"ghij");
        assert_eq!(out.spilled.as_deref(), Some(&b"abcdefghij"[..]));
        assert!(out.in_place(1).is_none());
        assert_eq!(&guest[..6], b"abcdef");
    }

    #[test]
    fn config_limits_name_the_key_and_the_size() {
        let mut config = BTreeMap::new();
        config.insert(String::new(), "x".to_string());
        assert!(check_config(&config).unwrap_err().contains("1 to 255"));
        config.clear();
        config.insert("k".to_string(), "v".repeat(MAX_CONFIG_BYTES));
        assert!(
            check_config(&config)
                .unwrap_err()
                .contains("more than the 65536")
        );
    }
}
