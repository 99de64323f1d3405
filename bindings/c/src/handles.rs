//! The table behind the C API's handles: every object a C caller holds is
//! a 64-bit id looked up here, never a pointer, so a handle released
//! twice, never made, or of another kind is an error code rather than a
//! use of freed memory. Ids are never reused (a counter from 1; 0 is "no
//! handle").

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use shmrt::{Plugin, Runtime, SandboxOptions, StopHandle};

use crate::errors::{Fail, SHMRT_ERR_BAD_HANDLE};
use crate::held::HeldSandbox;

/// A spawned sandbox, shared by its handle and its messages' handles.
#[derive(Debug)]
pub(crate) struct SandboxObj {
    pub name: String,
    /// Outside `state`: stops the sandbox while another thread blocks in
    /// it with the lock held.
    pub stop: StopHandle,
    /// `None` once the sandbox's handle was freed (its messages' handles
    /// may outlive it, and then say so).
    pub state: Mutex<Option<HeldSandbox>>,
}

/// A prepared plugin and the runtime it belongs to.
#[derive(Debug)]
pub(crate) struct PluginObj {
    pub runtime: Arc<Runtime>,
    pub plugin: Plugin,
}

/// What a handle names.
#[derive(Debug, Clone)]
pub(crate) enum Object {
    Runtime(Arc<Runtime>),
    Plugin(Arc<PluginObj>),
    Options(Arc<Mutex<SandboxOptions>>),
    Sandbox(Arc<SandboxObj>),
    /// A received message: its sandbox and its generation there.
    Message(Arc<SandboxObj>, u64),
    /// Bytes a call returned.
    Bytes(Arc<Vec<u8>>),
}

impl Object {
    fn kind(&self) -> &'static str {
        match self {
            Object::Runtime(_) => "runtime",
            Object::Plugin(_) => "plugin",
            Object::Options(_) => "options",
            Object::Sandbox(_) => "sandbox",
            Object::Message(..) => "message",
            Object::Bytes(_) => "bytes",
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Objects by id. An object removed from it is dropped after the lock is
/// released (the caller drops what `remove` returns): dropping a sandbox
/// stops and joins its guest, which must not hold up every other handle.
fn table() -> MutexGuard<'static, HashMap<u64, Object>> {
    static TABLE: LazyLock<Mutex<HashMap<u64, Object>>> = LazyLock::new(Default::default);
    TABLE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers `object`; its new id.
pub(crate) fn insert(object: Object) -> u64 {
    // Relaxed: the id only has to be unique; the table's lock orders the
    // insert with every later lookup.
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    table().insert(id, object);
    id
}

fn missing(id: u64, kind: &str) -> Fail {
    if id == 0 {
        Fail::new(
            SHMRT_ERR_BAD_HANDLE,
            format!("no {kind} handle given (id 0): make one first"),
        )
    } else {
        Fail::new(
            SHMRT_ERR_BAD_HANDLE,
            format!("{kind} handle {id} was released (or never made): make a new one"),
        )
    }
}

/// The object `id` names, which must be of `kind` (as `pick` says).
pub(crate) fn get<T>(
    id: u64,
    kind: &str,
    pick: impl FnOnce(&Object) -> Option<T>,
) -> Result<T, Fail> {
    let table = table();
    let object = table.get(&id).ok_or_else(|| missing(id, kind))?;
    pick(object).ok_or_else(|| {
        Fail::new(
            SHMRT_ERR_BAD_HANDLE,
            format!("handle {id} is a {}, not a {kind}", object.kind()),
        )
    })
}

/// Removes the object `id` names, which must be of `kind`.
pub(crate) fn remove(
    id: u64,
    kind: &str,
    is: impl FnOnce(&Object) -> bool,
) -> Result<Object, Fail> {
    let mut table = table();
    let object = table.get(&id).ok_or_else(|| missing(id, kind))?;
    if !is(object) {
        return Err(Fail::new(
            SHMRT_ERR_BAD_HANDLE,
            format!("handle {id} is a {}, not a {kind}", object.kind()),
        ));
    }
    Ok(table.remove(&id).expect("looked up under the same lock"))
}
