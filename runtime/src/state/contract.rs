//! What the embedder gives a plugin besides messages: host functions
//! ([`HostFunctions`], with [`HostOutput`] and [`HostFnError`]) and
//! configuration, kept in the sandbox's store ([`ContractState`]) for the
//! imports that reach them (`exec/host_functions.rs`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use shmrt_primitives::{SharedBytes, SharedBytesMut};
use wasmtime::Memory;

use super::escape::escape_line;

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

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<HostFn>> {
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
    pub(crate) guest: SharedBytesMut<'a>,
    pub(crate) len: usize,
    /// Everything written, once it outgrew the guest's buffer.
    pub(crate) spilled: Option<Vec<u8>>,
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
    pub(crate) functions: Option<Arc<HostFunctions>>,
    pub(crate) config: Arc<BTreeMap<String, String>>,
    /// The pending result of the last host call.
    pub(crate) pending: Option<Vec<u8>>,
    /// The guest's `memory`, once looked up.
    pub(crate) memory: Option<Memory>,
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
                escape_line(key)
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
