//! A plugin prepared once to spawn many sandboxes from: its bytes read as
//! a binary or WAT, compiled (or taken from the caches), checked, and its
//! imports resolved against the runtime's linkers ([`InstancePre`]), so
//! that a spawn neither rehashes, revalidates nor relinks the module.

use std::sync::{Arc, OnceLock};

use wasmtime::{InstancePre, Module};

use super::Runtime;
use crate::error::SandboxError;
use crate::exec::guest_driver::CALLBACK_EXPORT;
use crate::exec::host_imports;
use crate::module::bytes::module_bytes;
use crate::module::check::{self, ModuleFacts};
use crate::state::guest_stack::{GUEST_ENTRY_STACK, GUEST_THREAD_STACK, stack_left};
use crate::state::options::Execution;
use crate::state::store::SandboxState;

/// A compiled and checked module, cheap to clone, from which
/// [`Runtime::spawn_plugin`] spawns sandboxes. Made by
/// [`Runtime::prepare`]; tied to that runtime.
#[derive(Clone)]
pub struct Plugin {
    pub(crate) inner: Arc<PluginInner>,
}

pub(crate) struct PluginInner {
    pub module: Module,
    pub facts: ModuleFacts,
    /// The module's imports resolved for thread and callback guests.
    pub pre: OnceLock<Result<InstancePre<SandboxState>, String>>,
    /// The same for fiber guests (whose `wait` is async).
    pub pre_fiber: OnceLock<Result<InstancePre<SandboxState>, String>>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("initial_pages", &self.initial_pages())
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// The module's initial linear memory, in 64 KiB pages.
    pub fn initial_pages(&self) -> u64 {
        self.inner.facts.memory.map_or(0, |(_, initial, _)| initial)
    }

    /// Whether the plugin can run as a callback ([`crate::Execution::Callback`]):
    /// it exports `shmrt_on_messages: () -> i32` (plugins made with the
    /// guest SDK's `handler!` do).
    pub fn has_callback(&self) -> bool {
        matches!(
            self.inner.module.get_export(CALLBACK_EXPORT),
            Some(wasmtime::ExternType::Func(f))
                if f.params().len() == 0
                    && f.results().len() == 1
                    && matches!(f.results().next(), Some(wasmtime::ValType::I32))
        )
    }

    /// Whether the module imports the shmrt interface (module `shmrt`):
    /// a plugin. A module that does not is a plain wasm program (a WASI
    /// command, say), which has no channel to the host.
    pub fn imports_shmrt(&self) -> bool {
        self.inner
            .module
            .imports()
            .any(|i| i.module() == host_imports::MODULE)
    }

    /// Where [`crate::Execution::Auto`] runs this plugin: as a callback
    /// when it exports one, else on a thread; any other mode as given.
    pub fn execution(&self, asked: Execution) -> Execution {
        match asked {
            Execution::Auto if self.has_callback() => Execution::Callback,
            Execution::Auto => Execution::Thread,
            other => other,
        }
    }

    /// The compiled module.
    pub fn module(&self) -> &Module {
        &self.inner.module
    }

    /// The module linked for thread and callback guests (`fiber: false`)
    /// or fiber guests: resolved once, at the first spawn of each kind.
    pub(crate) fn instance_pre(
        &self,
        runtime: &Runtime,
        fiber: bool,
    ) -> Result<&InstancePre<SandboxState>, String> {
        let (cell, linker) = if fiber {
            (&self.inner.pre_fiber, &runtime.fiber_linker)
        } else {
            (&self.inner.pre, &runtime.linker)
        };
        cell.get_or_init(|| {
            linker
                .instantiate_pre(&self.inner.module)
                .map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(Clone::clone)
    }
}

impl Runtime {
    /// Reads `wasm` (a binary module, or WAT text), compiles it (or takes
    /// it from the runtime's caches) and checks it once: a plugin to spawn
    /// many sandboxes from with [`Self::spawn_plugin`], each spawn then
    /// paying for the instantiation alone.
    pub fn prepare(&self, wasm: &[u8]) -> Result<Plugin, SandboxError> {
        self.prepare_as("plugin", wasm)
    }

    /// [`Self::prepare`], naming `sandbox` in its errors.
    pub(crate) fn prepare_as(&self, sandbox: &str, wasm: &[u8]) -> Result<Plugin, SandboxError> {
        // Parsing and compiling take stack of their own (Cranelift's): on
        // a thread with little left, they run on one with room.
        if stack_left().is_some_and(|left| left < GUEST_ENTRY_STACK) {
            return std::thread::scope(|scope| {
                std::thread::Builder::new()
                    .name("shmrt-compile".into())
                    .stack_size(GUEST_THREAD_STACK)
                    .spawn_scoped(scope, || self.prepare_here(sandbox, wasm))
                    .map_err(|e| SandboxError::io("starting a thread to compile on", e))?
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            });
        }
        self.prepare_here(sandbox, wasm)
    }

    fn prepare_here(&self, sandbox: &str, wasm: &[u8]) -> Result<Plugin, SandboxError> {
        let binary = module_bytes(wasm).map_err(|message| SandboxError::Compile {
            sandbox: sandbox.into(),
            message,
        })?;
        self.plugin_of(&binary).map_err(|e| match e {
            PrepareError::Compile(message) => SandboxError::Compile {
                sandbox: sandbox.into(),
                message,
            },
            PrepareError::Refused(reason) => SandboxError::Refused {
                sandbox: sandbox.into(),
                reason: reason.to_string(),
            },
        })
    }

    /// Compiles and checks `binary`, or takes the plugin made from the same
    /// bytes before.
    fn plugin_of(&self, binary: &[u8]) -> Result<Plugin, PrepareError> {
        if let Some(plugin) = self.cached_plugin(binary) {
            return Ok(plugin);
        }
        // The cheap checks first: a refused module is not compiled (nor
        // kept in the disk cache). One that does not even validate is
        // reported as such, not as what its facts looked like.
        let facts =
            check::check_module(binary).map_err(|refused| {
                match wasmtime::Module::validate(&self.engine, binary) {
                    Ok(()) => PrepareError::Refused(refused),
                    Err(e) => PrepareError::Compile(format!("{e:#}")),
                }
            })?;
        let module = self
            .compile(binary)
            .map_err(|e| PrepareError::Compile(format!("{e:#}")))?;
        let plugin = Plugin {
            inner: Arc::new(PluginInner {
                module,
                facts,
                pre: OnceLock::new(),
                pre_fiber: OnceLock::new(),
            }),
        };
        self.cache_plugin(binary, &plugin);
        Ok(plugin)
    }
}

/// Why a module could not be prepared.
enum PrepareError {
    Compile(String),
    Refused(check::RefusedModule),
}
