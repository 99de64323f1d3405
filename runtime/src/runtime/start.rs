//! Starting a sandbox from a prepared plugin: its store with the limits
//! (fuel, memory, deadline) and the WASI context, the instantiation (a
//! start function runs in it), the placement of the segment window in
//! its linear memory, taking the peer entry, and handing the instance to
//! whatever runs its guest (a thread, a fiber, a callback).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use wasmtime::{Instance, InstancePre, Store, TypedFunc};

use super::Runtime;
use super::plugin::Plugin;
use crate::error::SandboxError;
use crate::exec::callback_cursors::CursorRecord;
use crate::exec::guest_driver::{CALLBACK_EXPORT, GuestDriver, off_async_runtime};
use crate::exec::guest_end::exit_status;
use crate::exec::guest_thread::{Entry, run_guest};
use crate::exec::handle::{GuestRun, SandboxHandle};
use crate::module::check;
use crate::segment::memory_window::{self, NOT_PLACED, PendingWindow};
use crate::state::guest_stack;
use crate::state::interrupts::{
    CallbackOverran, DeadlineExceeded, Stopped, deadline_after, watch_deadline,
};
use crate::state::options::{Execution, SandboxOptions};
use crate::state::shared::SandboxShared;
use crate::state::store::SandboxState;

/// How the guest takes its peer entry.
pub(crate) enum Claim {
    /// We created the segment: reserve, then the guest thread claims.
    Own,
    /// Another program reserved the entry: claim it now.
    Reserved,
    /// A walk-in guest on the first Empty entry.
    Empty,
    /// We created the segment from a template whose entry is taken for a
    /// guest on the host's thread (see `SegmentTemplate::new`): nothing to
    /// write.
    Taken,
}

impl Runtime {
    /// Checks the plugin against the window, instantiates it with the
    /// window placed, takes the peer entry, and starts its guest.
    pub(crate) fn start(
        &self,
        plugin: &Plugin,
        options: &SandboxOptions,
        shared: Arc<SandboxShared>,
        claim: Claim,
    ) -> Result<SandboxHandle, SandboxError> {
        let (pre, window_pages) = self.link(plugin, options, &shared)?;
        let mut store = self.new_store(plugin, options, &shared)?;
        let instance = self.instantiate(pre, &mut store, options, &shared)?;
        place_window(&instance, &mut store, options, &shared, window_pages)?;
        // A callback guest needs no entry point of its own.
        let entry = Entry::find(&instance, &mut store);
        let initialize = instance
            .get_typed_func::<(), ()>(&mut store, "_initialize")
            .ok();
        take_entry(&shared, &claim, options.execution)?;
        let no_entry = || SandboxError::Refused {
            sandbox: shared.name().to_owned(),
            reason:
                "module exports neither `shmrt_main: () -> i32` nor `_start: () -> ()`; build it \
                     with the guest SDK's entry macro, or as a WASI command"
                    .into(),
        };
        let timeout = options.timeout;
        let run = match options.execution {
            // Auto is resolved by the spawn (`Plugin::execution`).
            Execution::Thread | Execution::Auto => {
                let entry = entry.ok_or_else(no_entry)?;
                let claim_in_thread = matches!(claim, Claim::Own);
                let thread_shared = shared.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("shmrt-guest {}", shared.name()))
                    .stack_size(guest_stack::GUEST_THREAD_STACK)
                    .spawn(move || {
                        run_guest(
                            store,
                            entry,
                            initialize,
                            timeout,
                            thread_shared,
                            claim_in_thread,
                        )
                    })
                    .map_err(|e| SandboxError::io("starting the guest thread", e))?;
                GuestRun::Thread(Some(thread))
            }
            Execution::Fiber => {
                let entry = entry.ok_or_else(no_entry)?;
                claim_now(&shared, &claim)?;
                let driver = GuestDriver::fiber(store, entry, initialize, timeout, shared.clone());
                GuestRun::Driven(Arc::new(std::sync::Mutex::new(driver)))
            }
            Execution::Callback => {
                self.start_callback(instance, store, initialize, options, &shared, &claim)?
            }
        };
        Ok(SandboxHandle {
            shared,
            run,
            heartbeat: None,
        })
    }

    /// The plugin checked against the sandbox's window and linked for its
    /// mode; the window's size in wasm pages.
    fn link<'p>(
        &self,
        plugin: &'p Plugin,
        options: &SandboxOptions,
        shared: &SandboxShared,
    ) -> Result<(&'p InstancePre<SandboxState>, u64), SandboxError> {
        let name = shared.name();
        let window_len = shared.segment_file().window_len();
        let window_pages = window_len as u64 / 65536;
        check::check_window(&plugin.inner.facts, window_pages).map_err(|reason| {
            SandboxError::Refused {
                sandbox: name.to_owned(),
                reason: reason.to_string(),
            }
        })?;
        let fiber = options.execution == Execution::Fiber;
        // Guest code on this thread: a start function, a callback's
        // `_initialize` (a fiber's run on its own stack).
        if !fiber && (plugin.inner.facts.has_start || options.execution == Execution::Callback) {
            guest_stack::check_room(name)?;
        }
        let pre =
            plugin
                .instance_pre(self, fiber)
                .map_err(|message| SandboxError::Instantiate {
                    sandbox: name.to_owned(),
                    message,
                })?;
        let initial_pages = plugin.initial_pages();
        if initial_pages + window_pages > 1 << 16 {
            return Err(SandboxError::WindowTooLarge {
                sandbox: name.to_owned(),
                window: window_len as u64,
                initial: initial_pages << 16,
            });
        }
        Ok((pre, window_pages))
    }

    /// The guest's store, with its memory limit and its fuel.
    fn new_store(
        &self,
        plugin: &Plugin,
        options: &SandboxOptions,
        shared: &Arc<SandboxShared>,
    ) -> Result<Store<SandboxState>, SandboxError> {
        let name = shared.name();
        let state = SandboxState::new(
            options,
            shared.clone(),
            self.ticker.state.clone(),
            plugin.inner.facts.imports_wasi,
        )
        .map_err(|e| SandboxError::Instantiate {
            sandbox: name.to_owned(),
            message: e,
        })?;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.memory_limit);
        match (options.fuel, self.fuel) {
            (Some(fuel), true) => store.set_fuel(fuel),
            (None, true) => store.set_fuel(u64::MAX),
            (Some(_), false) => {
                return Err(SandboxError::Refused {
                    sandbox: name.to_owned(),
                    reason: "a fuel limit needs a runtime made with RuntimeConfig { fuel: true }"
                        .into(),
                });
            }
            (None, false) => Ok(()),
        }
        .map_err(|e| SandboxError::Instantiate {
            sandbox: name.to_owned(),
            message: e.to_string(),
        })?;
        Ok(store)
    }

    /// Instantiates the module under the deadline and the stop flag, with
    /// the segment window pending for its memory: a start function runs
    /// here, on the caller's thread.
    fn instantiate(
        &self,
        pre: &InstancePre<SandboxState>,
        store: &mut Store<SandboxState>,
        options: &SandboxOptions,
        shared: &Arc<SandboxShared>,
    ) -> Result<Instance, SandboxError> {
        let fiber = options.execution == Execution::Fiber;
        // The deadline and the stop flag hold from here: a start function
        // runs during instantiation, on the caller's thread.
        let deadline = options.timeout.and_then(deadline_after);
        watch_deadline(store, shared, deadline, fiber);
        shared.runs_on_this_thread();
        let file = shared.segment_file();
        let window = PendingWindow {
            file: file.file().cloned(),
            region: file.region().cloned(),
            len: file.window_len(),
            file_len: file.file_map_len(),
            placed_at: shared.placed_at().clone(),
            truncated: file.path().map(|_| file.truncated_flag().clone()),
        };
        // A start function runs guest code: the epoch must tick for it.
        // It runs on the caller's thread, inside `spawn`, which it holds as
        // a callback holds the host's thread: bounded by the same slice,
        // in every mode (there is no handle yet to stop it with).
        let running = self.ticker.state.running();
        let wasi = store.data().wasi.is_some();
        shared.callback_call(true);
        let instance = if fiber {
            // A start function runs on a fiber too, which polls nothing of
            // tokio's from here.
            memory_window::with_pending_window(window, || {
                block_on(pre.instantiate_async(&mut *store))
            })
        } else {
            // A start function calling WASI inside a tokio runtime needs a
            // thread of its own, as a callback call does; the pending
            // window is that thread's to place.
            off_async_runtime(shared, wasi, || {
                memory_window::with_pending_window(window, || pre.instantiate(&mut *store))
            })
        };
        shared.callback_call(false);
        drop(running);
        instance.map_err(|e| instantiation_error(e, shared, options))
    }

    /// A callback guest: its handler found, its entry claimed, and its
    /// `_initialize` run here, bounded as each call of the handler is.
    fn start_callback(
        &self,
        instance: Instance,
        mut store: Store<SandboxState>,
        initialize: Option<TypedFunc<(), ()>>,
        options: &SandboxOptions,
        shared: &Arc<SandboxShared>,
        claim: &Claim,
    ) -> Result<GuestRun, SandboxError> {
        let handler = instance
            .get_typed_func::<(), i32>(&mut store, CALLBACK_EXPORT)
            .map_err(|_| SandboxError::Refused {
                sandbox: shared.name().to_owned(),
                reason: format!(
                    "module exports no `{CALLBACK_EXPORT}: () -> i32`, so it can not run as a \
                     callback (it has only a blocking loop): run it with --exec thread or \
                     fiber (Execution::Thread, Execution::Fiber), or build it with the guest \
                     SDK's `handler!` macro"
                ),
            })?;
        claim_now(shared, claim)?;
        let cursors = CursorRecord::acknowledge(&instance, &mut store);
        if let Some(init) = initialize {
            let running = self.ticker.state.running();
            // Bounded as each call of the callback is: its slice.
            shared.callback_call(true);
            let wasi = store.data().wasi.is_some();
            let initialized = off_async_runtime(shared, wasi, || init.call(&mut store, ()));
            shared.callback_call(false);
            drop(running);
            initialized.map_err(|e| instantiation_error(e, shared, options))?;
            if let Some(cursors) = &cursors {
                cursors.publish(&store, shared);
            }
        }
        let driver =
            GuestDriver::callback(store, (handler, cursors), options.timeout, shared.clone());
        Ok(GuestRun::Driven(Arc::new(std::sync::Mutex::new(driver))))
    }
}

/// What an instantiation (or a callback's `_initialize`) that failed
/// says. It runs guest code (a start function) and creates the memory
/// under the limiter: a limit, a trap, the deadline or a stop there is the
/// guest's failure, not a refused module.
fn instantiation_error(
    e: wasmtime::Error,
    shared: &SandboxShared,
    options: &SandboxOptions,
) -> SandboxError {
    let name = shared.name();
    // A trap with wasm frames came from a start function; one
    // without (a data segment past the memory) is the module's.
    let in_guest_code = e
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .is_some_and(|b| !b.frames().is_empty());
    // Fuel is only burnt by guest code, whatever the backtrace says.
    let out_of_fuel = e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::OutOfFuel);
    let guest_ran = (e.downcast_ref::<wasmtime::Trap>().is_some() && in_guest_code)
        || out_of_fuel
        || e.downcast_ref::<DeadlineExceeded>().is_some()
        || e.downcast_ref::<Stopped>().is_some()
        || e.downcast_ref::<CallbackOverran>().is_some();
    if guest_ran {
        return match exit_status(e, shared, options.timeout) {
            Err(error) => error,
            Ok(code) => SandboxError::Instantiate {
                sandbox: name.to_owned(),
                message: format!("the start function exited with {code}"),
            },
        };
    }
    // Before any guest code: the module itself is too large for the
    // limit, on every attempt (so not a failure to restart).
    if shared.memory_refused() {
        return SandboxError::Refused {
            sandbox: name.to_owned(),
            reason: format!(
                "its initial linear memories and tables together are larger than the memory \
                 limit of {} bytes ({e:#}); raise the limit or declare less memory",
                options.max_memory.unwrap_or(0)
            ),
        };
    }
    SandboxError::Instantiate {
        sandbox: name.to_owned(),
        message: format!("{e:#}"),
    }
}

/// Grows the instance's memory by the window's pages, which places the
/// segment there, and checks that it was placed.
fn place_window(
    instance: &Instance,
    store: &mut Store<SandboxState>,
    options: &SandboxOptions,
    shared: &SandboxShared,
    window_pages: u64,
) -> Result<(), SandboxError> {
    let name = shared.name();
    let memory =
        instance
            .get_memory(&mut *store, "memory")
            .ok_or_else(|| SandboxError::Refused {
                sandbox: name.to_owned(),
                reason: "module does not export its linear memory as `memory`".into(),
            })?;
    let pages_before = memory.size(&*store);
    store.data_mut().memory_limit.window_growth = true;
    let grown = memory_window::placing_window(|| memory.grow(&mut *store, window_pages));
    store.data_mut().memory_limit.window_growth = false;
    if let Err(e) = grown {
        let maximum = memory.ty(&*store).maximum();
        if maximum.is_some_and(|max| pages_before + window_pages > max) {
            return Err(SandboxError::Refused {
                sandbox: name.to_owned(),
                reason: format!(
                    "its memory `memory` has {pages_before} pages after instantiation and a \
                     declared maximum of {} pages: the segment window's {window_pages} pages do \
                     not fit after them (declare a larger maximum, or do not grow memory in a \
                     start function)",
                    maximum.unwrap_or_default()
                ),
            });
        }
        return Err(instantiation_error(e, shared, options));
    }
    let base = shared.window_base();
    // A window mapped from a file another party may have written must
    // hold a segment; one mapped from the runtime's template does, and
    // is not read here (each page read is a fault, paid at first use).
    let placed = base != NOT_PLACED
        && (shared.segment_file().region().is_some()
            || memory.data(&*store).get(base..base + 8)
                == Some(&shmrt_primitives::segment_header::MAGIC[..]));
    if !placed {
        return Err(SandboxError::Instantiate {
            sandbox: name.to_owned(),
            message: "the segment window could not be placed in linear memory: it is placed in \
                      the module's first memory (memory 0), which must be the one exported as \
                      `memory`"
                .into(),
        });
    }
    Ok(())
}

/// Takes the guest's peer entry as `claim` says, after flagging that the
/// host runs a guest on its thread (before the guest opens its channel,
/// in its entry point).
fn take_entry(
    shared: &SandboxShared,
    claim: &Claim,
    execution: Execution,
) -> Result<(), SandboxError> {
    let peer = shared.peer();
    if execution != Execution::Thread && !matches!(claim, Claim::Taken) {
        peer.host_flags.fetch_or(
            shmrt_primitives::peer_entry::HOST_RUNS_GUEST,
            Ordering::Relaxed,
        );
    }
    let taken = match claim {
        Claim::Own => peer.try_reserve().map(|_| ()),
        Claim::Reserved => peer.try_claim_reserved(),
        Claim::Empty => peer.try_attach().map(|_| ()),
        Claim::Taken => Ok(()),
    };
    taken.map_err(|e| SandboxError::Peer {
        path: shared
            .segment_file()
            .path()
            .map(std::path::Path::to_owned)
            .unwrap_or_default(),
        reason: format!("cannot take the entry of peer {}: {e}", shared.peer_id()),
    })
}

/// A guest on the host's thread claims its reserved entry at once (a
/// thread guest claims it on its thread).
fn claim_now(shared: &SandboxShared, claim: &Claim) -> Result<(), SandboxError> {
    if matches!(claim, Claim::Own)
        && let Err(e) = shared.peer().try_claim_reserved()
    {
        return Err(SandboxError::Instantiate {
            sandbox: shared.name().to_owned(),
            message: format!("claiming the peer entry: {e}"),
        });
    }
    Ok(())
}

/// Polls `future` to its end on this thread, sleeping while it waits (an
/// instantiation whose start function runs on a fiber).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        // Woken by an epoch yield at once; by nothing else: the start
        // function's own waits are bounded by its deadline and a stop.
        std::thread::park_timeout(std::time::Duration::from_millis(10));
    }
}
