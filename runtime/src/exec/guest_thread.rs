//! A guest on a thread of its own ([`crate::Execution::Thread`], and every
//! attached guest): finding its entry point, and running it there under
//! the deadline and the stop flag to its end.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Store, TypedFunc};

use super::guest_end;
use crate::error::SandboxError;
use crate::state::shared::SandboxShared;
use crate::state::store::SandboxState;

/// A guest's entry point: `shmrt_main`, or a WASI command's `_start`.
pub(crate) enum Entry {
    Main(TypedFunc<(), i32>),
    Start(TypedFunc<(), ()>),
}

impl Entry {
    pub(crate) fn find(
        instance: &wasmtime::Instance,
        store: &mut Store<SandboxState>,
    ) -> Option<Self> {
        if let Ok(f) = instance.get_typed_func::<(), i32>(&mut *store, "shmrt_main") {
            return Some(Entry::Main(f));
        }
        instance
            .get_typed_func::<(), ()>(store, "_start")
            .ok()
            .map(Entry::Start)
    }
}

/// Marks the guest done (and wakes the host) however its thread ends.
struct DoneGuard(Arc<SandboxShared>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.0.mark_guest_done();
    }
}

/// Runs a thread guest's `initialize` (if any) and entry point on this
/// thread, then its end (`guest_end.rs`). With `claim`, takes its
/// reserved peer entry first.
pub(crate) fn run_guest(
    mut store: Store<SandboxState>,
    entry: Entry,
    initialize: Option<TypedFunc<(), ()>>,
    timeout: Option<Duration>,
    shared: Arc<SandboxShared>,
    claim: bool,
) -> Result<i32, SandboxError> {
    let _done = DoneGuard(shared.clone());
    shared.runs_on_this_thread();
    let ticker = store.data().ticker.clone();
    let _running = ticker.running();
    if claim && let Err(e) = shared.peer().try_claim_reserved() {
        return Err(SandboxError::Instantiate {
            sandbox: shared.name().to_owned(),
            message: format!("claiming the peer entry: {e}"),
        });
    }
    // The deadline and the stop flag were set to be checked before the
    // instantiation (`watch_deadline`).
    let result = (|| {
        if let Some(init) = initialize {
            init.call(&mut store, ())?;
        }
        match entry {
            Entry::Main(f) => f.call(&mut store, ()),
            Entry::Start(f) => f.call(&mut store, ()).map(|()| 0),
        }
    })();
    let dropped = store.data_mut().log_rate.take_dropped();
    guest_end::status(result, dropped, &shared, timeout)
}
