//! The top layer: the runtime, the wasmtime engine with shmrt's memory
//! window and host imports, the epoch ticker that drives deadlines and
//! stops, the cache of compiled modules, and the entry points that spawn
//! sandboxes from it (`spawn`, `attach`); plugins prepared once
//! (`plugin.rs`), a sandbox started from one (`start.rs`), and restarts
//! (`supervise.rs`).

pub(crate) mod plugin;
mod start;
pub(crate) mod supervise;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use shmrt_primitives::{PeerId, PeerState, SegmentConfig, SegmentLayout};
use wasmtime::{Config, Engine, Linker, Module, Store};

use self::plugin::Plugin;
use self::start::Claim;
use crate::error::SandboxError;
use crate::exec::handle::{Heartbeat, SandboxHandle};
use crate::exec::{host_imports, wasi_poll};
use crate::host::receiver::HostReceiver;
use crate::host::sandbox::Sandbox;
use crate::host::sender::HostSender;
use crate::module::bytes::read_module_file;
use crate::module::cache;
use crate::segment::file::SegmentFile;
use crate::segment::memory_window::{self, WindowMemoryCreator};
use crate::segment::monotonic_ns;
use crate::segment::template::{SegmentTemplate, SegmentTemplates};
use crate::state::epoch_ticker::EpochTicker;
use crate::state::guest_stack;
use crate::state::options::{Execution, SandboxOptions, SegmentSource};
use crate::state::shared::{GuestKind, SandboxShared};
use crate::state::store::SandboxState;

/// Prepared plugins keyed by (hash, length) of their bytes, with the bytes
/// to rule out a collision.
type ModuleCache = std::collections::HashMap<(u64, usize), (Vec<u8>, Plugin)>;

/// Engine-wide choices.
#[derive(Clone, Debug, Default)]
pub struct RuntimeConfig {
    /// Meter fuel, so that sandboxes can be given `SandboxOptions::fuel`
    /// (every guest then runs a little slower).
    pub fuel: bool,
    /// Keep compiled modules in this directory between runs (see
    /// [`RuntimeConfig::default_module_cache`]); `None` compiles every
    /// module once per `Runtime`. Its entries are machine code that is
    /// loaded and run: it must be the user's own directory.
    pub module_cache: Option<PathBuf>,
}

impl RuntimeConfig {
    /// The user's cache directory for compiled modules:
    /// `$XDG_CACHE_HOME/shmrt` or `~/.cache/shmrt` (what `shmrt run` uses
    /// unless `--no-cache`).
    pub fn default_module_cache() -> Option<PathBuf> {
        cache::ModuleCache::default_dir()
    }
}

/// The engine, the linker with the host imports, and the epoch ticker.
/// One per process is enough; sandboxes are spawned from it.
pub struct Runtime {
    pub(crate) fuel: bool,
    /// Compiled modules on disk, between runs.
    disk_cache: Option<cache::ModuleCache>,
    /// Compiled modules by (hash, length) of their bytes.
    modules: std::sync::Mutex<ModuleCache>,
    pub(crate) engine: Engine,
    pub(crate) linker: Arc<Linker<SandboxState>>,
    /// The linker of fiber guests: `wait` and WASI suspend the fiber.
    pub(crate) fiber_linker: Arc<Linker<SandboxState>>,

    /// Advances the epoch while some guest runs wasm (deadlines, stops).
    pub(crate) ticker: EpochTicker,
    /// Segments laid out once per configuration, mapped copy-on-write by
    /// in-process sandboxes (one descriptor each, none per sandbox).
    segment_templates: std::sync::Mutex<SegmentTemplates>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("fuel", &self.fuel)
            .field("disk_cache", &self.disk_cache.is_some())
            .field("ticker", &self.ticker)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// A runtime with wasm threads (atomics) on, the memory window, and
    /// epoch interruption for deadlines.
    pub fn new() -> Result<Self, SandboxError> {
        Self::with_config(RuntimeConfig::default())
    }

    /// A runtime with engine-wide choices.
    pub fn with_config(rc: RuntimeConfig) -> Result<Self, SandboxError> {
        let mut config = Config::new();
        config.consume_fuel(rc.fuel);
        config.wasm_threads(true);
        config.epoch_interruption(true);
        // Set against the stacks shmrt makes and checks (`guest_stack`).
        config.max_wasm_stack(guest_stack::MAX_WASM_STACK);
        config.async_stack_size(guest_stack::FIBER_STACK);
        config.with_host_memory(Arc::new(WindowMemoryCreator));
        // Said explicitly: an in-process sandbox's memory is reserved
        // before its instantiation, with these sizes (`GuestRegion`).
        config.memory_reservation(memory_window::RESERVATION_32 as u64);
        config.memory_guard_size(memory_window::GUARD_SIZE as u64);
        // Copy-on-write images need wasmtime's own mmap memories.
        config.memory_init_cow(false);
        let setup = |what: &'static str| {
            move |e: wasmtime::Error| SandboxError::EngineSetup {
                what,
                message: format!("{e:#}"),
            }
        };
        let engine = Engine::new(&config).map_err(setup("the engine configuration"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, SandboxState::wasi)
            .map_err(setup("the WASI imports"))?;
        wasi_poll::shadow_poll_oneoff(&mut linker).map_err(setup("the bounded poll_oneoff"))?;
        host_imports::add_to_linker(&mut linker, false).map_err(setup("the shmrt imports"))?;
        let mut fiber_linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut fiber_linker, SandboxState::wasi)
            .map_err(setup("the WASI imports of fibers"))?;
        wasi_poll::shadow_poll_oneoff_in_fiber(&mut fiber_linker)
            .map_err(setup("the bounded poll_oneoff of fibers"))?;
        host_imports::add_to_linker(&mut fiber_linker, true)
            .map_err(setup("the shmrt imports of fibers"))?;
        let ticker = EpochTicker::start(engine.clone())
            .map_err(|e| SandboxError::io("starting the epoch thread", e))?;
        Ok(Runtime {
            fuel: rc.fuel,
            disk_cache: rc.module_cache.map(cache::ModuleCache::new),
            modules: Default::default(),
            engine,
            linker: Arc::new(linker),
            fiber_linker: Arc::new(fiber_linker),
            ticker,
            segment_templates: Default::default(),
        })
    }

    /// The laid-out segment of `config` (its entry taken or not, see
    /// [`SegmentTemplate::new`]), made at its first use.
    fn segment_template(
        &self,
        config: &SegmentConfig,
        taken_for_host_thread: bool,
    ) -> Result<Arc<SegmentTemplate>, SandboxError> {
        let templates = || {
            self.segment_templates
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        };
        if let Some(t) = templates().find(config, taken_for_host_thread) {
            return Ok(t);
        }
        // Laid out without the lock: a large configuration takes a while,
        // and other spawns need not wait for it.
        let template = Arc::new(SegmentTemplate::new(config, taken_for_host_thread)?);
        Ok(templates().keep(template))
    }

    /// Reads `path` and spawns it.
    pub fn spawn_file(
        &self,
        path: &Path,
        mut options: SandboxOptions,
    ) -> Result<Sandbox, SandboxError> {
        let bytes = read_module_file(path)?;
        if options.name == SandboxOptions::default().name {
            options.name = path.display().to_string();
        }
        self.spawn(&bytes, options)
    }

    /// Checks, compiles and instantiates `wasm` with a fresh segment in its
    /// memory, and starts its entry point on a thread of its own.
    ///
    /// The instantiation runs on the caller's thread, and with it the
    /// module's start function, if it has one: under the sandbox's fuel,
    /// memory limit and timeout (which counts from here), so a start
    /// function that never returns blocks this call until the timeout,
    /// forever without one.
    pub fn spawn(&self, wasm: &[u8], options: SandboxOptions) -> Result<Sandbox, SandboxError> {
        let plugin = self.prepare_as(&options.name, wasm)?;
        self.spawn_plugin(&plugin, options)
    }

    /// Spawns a sandbox of a prepared plugin ([`Self::prepare`]): as
    /// [`Self::spawn`], without reading, hashing, compiling or checking
    /// the module again.
    pub fn spawn_plugin(
        &self,
        plugin: &Plugin,
        mut options: SandboxOptions,
    ) -> Result<Sandbox, SandboxError> {
        options.execution = plugin.execution(options.execution);
        let mut seg_config = options.segment;
        seg_config.max_guests = 1;
        let window_too_large = |window: u64| SandboxError::WindowTooLarge {
            sandbox: options.name.clone(),
            window,
            initial: plugin.initial_pages() << 16,
        };
        // A guest on the host's thread whose segment is pages of its own
        // memory finds its entry taken at birth (nothing to write at spawn).
        let born_taken = options.segment_source == SegmentSource::GuestMemory
            && options.execution != Execution::Thread;
        let file = match &options.segment_source {
            SegmentSource::GuestMemory => {
                // Refused from the layout, before anything is laid out.
                let window = SegmentLayout::compute(&seg_config)
                    .map_err(SandboxError::Config)?
                    .window_size()
                    .next_multiple_of(65536);
                if (plugin.initial_pages() << 16).saturating_add(window) > 1 << 32 {
                    return Err(window_too_large(window));
                }
                let template = self.segment_template(&seg_config, born_taken)?;
                SegmentFile::create_in_guest_memory(template, plugin.initial_pages())?.0
            }
            SegmentSource::Memfd => SegmentFile::create_memfd(&seg_config)?,
            SegmentSource::Named {
                path,
                keep,
                replace_stale,
            } => SegmentFile::create_named_with(path, &seg_config, *keep, *replace_stale)?,
        };
        let shared = Arc::new(SandboxShared::new(
            &options,
            Arc::new(file),
            GuestKind::Spawned,
        ));
        let claim = if born_taken { Claim::Taken } else { Claim::Own };
        let handle = self.start(plugin, &options, shared.clone(), claim)?;
        let driver = handle.run.driver();
        let segment = *shared.segment_file().segment();
        // We laid the segment out, and only we move the cursors the host's
        // ends start from (its H2G write, its G2H read): zero, not read
        // (each page read at a spawn is a fault).
        let (tx, rx) = segment.fresh_host_channel(shared.guest_index());
        Ok(Sandbox::new(
            HostSender::new(tx, shared.clone(), driver.clone()),
            HostReceiver::new(rx, shared, driver),
            handle,
        ))
    }

    /// Runs `wasm` as a guest of a segment file another program made (the
    /// host): the whole file is mapped into the guest's memory, validated
    /// first. With `peer`, claims that Reserved entry; without, the first
    /// Empty one. Keeps the guest's heartbeat when the segment asks for
    /// one; marks the entry Goodbye when the guest ends.
    pub fn attach(
        &self,
        wasm: &[u8],
        segment: &Path,
        peer: Option<u32>,
        mut options: SandboxOptions,
    ) -> Result<(SandboxHandle, u32), SandboxError> {
        if options.execution == Execution::Auto {
            options.execution = Execution::Thread;
        }
        if options.execution != Execution::Thread {
            return Err(SandboxError::Refused {
                sandbox: options.name.clone(),
                reason: format!(
                    "an attached guest runs on a thread of its own: its host is another process, \
                     which can not run it on its thread (--exec {} is for `shmrt run` without \
                     --attach, and for the library's `spawn`)",
                    options.execution.name()
                ),
            });
        }
        let file = SegmentFile::open_existing(segment)?;
        let layout = *file.segment().layout();
        let peer_err = |reason: String| SandboxError::Peer {
            path: segment.to_owned(),
            reason,
        };
        let (index, claim) = match peer {
            Some(id) => {
                let index = PeerId::new(id)
                    .map(PeerId::index)
                    .filter(|&i| i < layout.max_guests)
                    .ok_or_else(|| {
                        peer_err(format!(
                            "--peer {id} is not a guest of this segment (1..={})",
                            layout.max_guests
                        ))
                    })?;
                (index, Claim::Reserved)
            }
            None => {
                let index = (0..layout.max_guests)
                    .find(|&i| {
                        file.segment().peer(i).and_then(|p| p.state()) == Some(PeerState::Empty)
                    })
                    .ok_or_else(|| {
                        peer_err(
                            "no Empty peer entry to attach to; give --peer N for a reserved one"
                                .into(),
                        )
                    })?;
                (index, Claim::Empty)
            }
        };
        if layout.max_guests > 1 {
            tracing::warn!(
                "segment {} has {} guest entries: this guest's window holds the other guests' rings and slots; \
                 give each plugin its own segment (max_guests 1) to isolate plugins from each other",
                segment.display(),
                layout.max_guests
            );
        }
        let shared = Arc::new(SandboxShared::new(
            &options,
            Arc::new(file),
            GuestKind::Attached { index },
        ));
        let plugin = self.prepare_as(&options.name, wasm)?;
        let mut handle = self.start(&plugin, &options, shared.clone(), claim)?;
        if layout.heartbeat_interval_ns != 0 {
            handle.heartbeat = Some(
                Heartbeat::start(shared.clone(), layout.heartbeat_interval_ns, monotonic_ns)
                    .map_err(|e| SandboxError::io("starting the heartbeat thread", e))?,
            );
        }
        Ok((handle, shared.peer_id().get()))
    }

    /// Compiles `binary` (or loads it from the disk cache).
    pub(crate) fn compile(&self, binary: &[u8]) -> wasmtime::Result<Module> {
        match &self.disk_cache {
            Some(disk) => disk.get_or_compile(&self.engine, binary),
            None => cache::compile_and_log(&self.engine, binary, false),
        }
    }

    fn plugin_key(binary: &[u8]) -> (u64, usize) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        binary.hash(&mut h);
        (h.finish(), binary.len())
    }

    /// The plugin prepared from the same bytes before: spawning many
    /// sandboxes of one plugin by its bytes compiles and checks it once
    /// (and [`Runtime::spawn_plugin`] does not even hash them).
    pub(crate) fn cached_plugin(&self, binary: &[u8]) -> Option<Plugin> {
        let key = Self::plugin_key(binary);
        let cache = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(&key)
            .filter(|(bytes, _)| bytes.as_slice() == binary)
            .map(|(_, plugin)| plugin.clone())
    }

    pub(crate) fn cache_plugin(&self, binary: &[u8], plugin: &Plugin) {
        let key = Self::plugin_key(binary);
        let mut cache = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        // A few plugins per process is the common case; keep it bounded.
        if cache.len() >= 64 {
            cache.clear();
        }
        cache.insert(key, (binary.to_vec(), plugin.clone()));
    }

    /// The engine (for embedders that compile modules themselves).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The name and core signature of every `shmrt` import the linker
    /// defines, for checking them against `wit/shmrt.wit`.
    #[doc(hidden)]
    pub fn shmrt_import_signatures(
        &self,
    ) -> Result<Vec<host_imports::ImportSignature>, SandboxError> {
        let mut config = SegmentConfig::single_guest();
        config.ring_capacity = 4096;
        let file = Arc::new(SegmentFile::create_memfd(&config)?);
        let options = SandboxOptions {
            name: "signatures".into(),
            ..SandboxOptions::default()
        };
        let shared = Arc::new(SandboxShared::new(&options, file, GuestKind::Spawned));
        let state =
            SandboxState::new(&options, shared, self.ticker.state.clone(), true).map_err(|e| {
                SandboxError::Instantiate {
                    sandbox: "signatures".into(),
                    message: e,
                }
            })?;
        let mut store = Store::new(&self.engine, state);
        let defs: Vec<_> = self
            .linker
            .iter(&mut store)
            .filter(|(module, _, _)| *module == host_imports::MODULE)
            .map(|(_, name, ext)| (name.to_string(), ext))
            .collect();
        let mut out = Vec::new();
        for (name, ext) in defs {
            let Some(f) = ext.into_func() else { continue };
            let ty = f.ty(&store);
            let show = |t: wasmtime::ValType| t.to_string();
            out.push(host_imports::ImportSignature {
                name,
                params: ty.params().map(show).collect(),
                results: ty.results().map(show).collect(),
            });
        }
        Ok(out)
    }
}
