//! The runtime object, sandboxes, and the host's ends of their channels.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shmrt_primitives::channel::{HeldSlot, Message, Receiver, Reservation, Sender};
use shmrt_primitives::segment_header::FEATURE_DOORBELLS;
use shmrt_primitives::{PeerEntry, PeerState, ProtocolError, Segment, SegmentConfig, SendError};
use shmrt_primitives::{SharedBytes, SharedBytesMut};
use wasmtime::{Config, Engine, Linker, Module, Store, TypedFunc, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::doorbell_futex::{self, SpinBudget};
use crate::error::SandboxError;
use crate::memory_window::{self, NOT_PLACED, PendingWindow, WindowMemoryCreator};
use crate::segment_file::SegmentFile;
use crate::{host_imports, module_check, wasi_poll};

/// How often the engine's epoch advances: the granularity of deadlines
/// and stops for a guest that is running wasm code.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Marker error: the guest's deadline passed.
#[derive(Debug)]
pub(crate) struct DeadlineExceeded;

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sandbox deadline exceeded")
    }
}

impl std::error::Error for DeadlineExceeded {}

/// Marker error: the host stopped the sandbox.
#[derive(Debug)]
pub(crate) struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sandbox stopped by the host")
    }
}

impl std::error::Error for Stopped {}

/// Where a WASI guest's standard output goes. shmrt's own stdout carries
/// messages in `shmrt run`, so the default is stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GuestStdout {
    /// To the host's stderr.
    #[default]
    Stderr,
    /// To the host's stdout.
    Stdout,
    /// Discarded.
    Null,
}

/// How to run one sandbox.
#[derive(Clone, Debug)]
pub struct SandboxOptions {
    /// A name for messages and logs (e.g. the plugin file name).
    pub name: String,
    /// The segment: ring capacity, size classes, inline threshold. The
    /// guest count is always 1 (one segment per sandbox).
    pub segment: SegmentConfig,
    /// Wall-clock limit from the start of the instantiation (a start
    /// function runs in it, inside `spawn`) to the guest's return.
    pub timeout: Option<Duration>,
    /// WASI arguments (the first is the program name).
    pub args: Vec<String>,
    /// WASI environment.
    pub env: Vec<(String, String)>,
    /// Host directories the guest may open: (host path, guest path).
    pub dirs: Vec<(PathBuf, String)>,
    /// WASI stdout.
    pub stdout: GuestStdout,
    /// Spin rounds before the host parks in a blocking call.
    pub spin: SpinBudget,
    /// Where the segment lives.
    pub segment_source: SegmentSource,
    /// Fuel (roughly, wasm instructions) the guest may use; needs a runtime
    /// made with [`RuntimeConfig::fuel`].
    pub fuel: Option<u64>,
    /// Bytes the guest may make the host allocate, one budget across all
    /// of its linear memories and tables (8 bytes a table element; the
    /// segment window not counted): a module declaring more initially is
    /// refused ([`SandboxError::Refused`]); a refused `memory.grow`
    /// returns -1 and a refused `table.grow` -1. Whatever the budget, an
    /// instance has at most 4 memories and 16 tables of at most 1,000,000
    /// elements each.
    pub max_memory: Option<usize>,
    /// How long a host send waits for a free slot while the guest frees
    /// none (it holds them: a pipelining peer, or a plugin that keeps
    /// what it received) before it fails with
    /// [`SandboxError::SlotsExhausted`]; `None` waits as long as the guest
    /// runs. Default 5 s. Waiting for ring room is not bounded by this.
    pub slot_wait: Option<Duration>,
}

/// The default of [`SandboxOptions::slot_wait`].
pub const DEFAULT_SLOT_WAIT: Duration = Duration::from_secs(5);

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            name: "sandbox".into(),
            segment: SegmentConfig::single_guest(),
            timeout: None,
            args: Vec::new(),
            env: Vec::new(),
            dirs: Vec::new(),
            stdout: GuestStdout::default(),
            spin: SpinBudget::default(),
            segment_source: SegmentSource::Memfd,
            fuel: None,
            max_memory: None,
            slot_wait: Some(DEFAULT_SLOT_WAIT),
        }
    }
}

/// State shared by the guest thread, the host ends and the imports.
pub(crate) struct SandboxShared {
    pub name: String,
    pub segment_file: Arc<SegmentFile>,
    /// The guest runs in another process (this side is only the host):
    /// it has ended when its peer entry says Goodbye.
    pub external_guest: bool,
    /// The segment carries live doorbell words; without them (a vox
    /// segment), waits poll with backoff.
    pub doorbells: bool,
    pub placed_at: Arc<AtomicUsize>,
    pub guest_index: u32,
    pub started: Instant,
    /// The host asked the guest to stop.
    pub stop: AtomicBool,
    /// The guest's entry point has returned (or trapped). Release after
    /// its last commit (SYNC POINT "guest_done").
    pub guest_done: AtomicBool,
    pub spin: SpinBudget,
    /// The last error-level log line of the guest (a panic message), to
    /// explain a trap.
    pub last_error_log: std::sync::Mutex<Option<String>>,
    /// The memory limit refused a `memory.grow`.
    pub memory_refused: AtomicBool,
    /// The first protocol violation the host found: it is why the sandbox
    /// was stopped, so `join` reports it whatever the guest did next.
    pub violation: std::sync::Mutex<Option<ProtocolError>>,
    /// The thread running the guest's code (the caller's during the
    /// instantiation, then the guest thread): a stop unparks it from a
    /// WASI sleep.
    pub guest_thread: std::sync::Mutex<Option<std::thread::Thread>>,
    /// [`SandboxOptions::slot_wait`], for the host's sends.
    pub slot_wait: Option<Duration>,
    /// The guest's deadline and its timeout, once set (`join` gives up on
    /// a guest blocked past it).
    pub deadline: std::sync::Mutex<Option<Instant>>,
    pub timeout: Option<Duration>,
    /// When the host first asked the guest to stop.
    pub stopped_at: std::sync::Mutex<Option<Instant>>,
    /// Nanoseconds after `started` past which the guest counts as ended
    /// whether or not its thread returned ([`ABANDON_AFTER`] past its
    /// deadline or a stop); `u64::MAX` while neither is set. Relaxed: a
    /// hint read in wait loops, each of which also naps and re-checks.
    pub abandon_at_ns: std::sync::atomic::AtomicU64,
}

impl SandboxShared {
    pub fn window_base(&self) -> usize {
        self.placed_at.load(Ordering::Acquire)
    }

    pub fn peer(&self) -> &PeerEntry {
        self.segment_file
            .segment()
            .peer(self.guest_index)
            .expect("guest index in range")
    }

    /// Asks the guest to stop: its next epoch check traps, a `wait`
    /// returns goodbye at once, a WASI sleep ends with the stop.
    pub fn request_stop(&self) {
        let now = *self
            .stopped_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(Instant::now);
        self.abandon_after(now);
        self.stop.store(true, Ordering::Release);
        doorbell_futex::wake_all(self.peer().h2g_doorbell.futex_word());
        if let Some(t) = self
            .guest_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            t.unpark();
        }
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Records that the guest's code runs on the current thread.
    fn runs_on_this_thread(&self) {
        *self.guest_thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::thread::current());
    }

    pub fn goodbye_or_stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire) || self.segment_file.segment().header().host_goodbye()
    }

    /// The host-to-guest ring's write cursor when the ring holds
    /// anything, `None` when it is empty (a hint: the guest can scribble
    /// the cursors, which only affects its own wait).
    pub fn h2g_pending_write(&self) -> Option<u32> {
        let c = self
            .segment_file
            .segment()
            .h2g_ring(self.guest_index)
            .expect("in range")
            .cursors();
        (c.write != c.read || c.watermark != 0).then_some(c.write)
    }

    fn guest_done(&self) -> bool {
        self.guest_done.load(Ordering::Acquire)
            || (self.external_guest && self.peer().state() == Some(PeerState::Goodbye))
            || self.abandoned()
    }

    /// Past its deadline or a stop by [`ABANDON_AFTER`]: a guest still
    /// running then is blocked in a host call nothing interrupts, and is
    /// left behind rather than waited for.
    fn abandoned(&self) -> bool {
        let at = self.abandon_at_ns.load(Ordering::Relaxed);
        at != u64::MAX && self.started.elapsed().as_nanos() as u64 >= at
    }

    /// Moves the abandon point to `limit + ABANDON_AFTER` if that is
    /// earlier.
    fn abandon_after(&self, limit: Instant) {
        let at = limit
            .saturating_duration_since(self.started)
            .saturating_add(ABANDON_AFTER)
            .as_nanos()
            .min(u64::MAX as u128 - 1) as u64;
        self.abandon_at_ns.fetch_min(at, Ordering::Relaxed);
    }

    pub(crate) fn new(
        name: String,
        segment_file: Arc<SegmentFile>,
        guest_index: u32,
        spin: SpinBudget,
    ) -> Self {
        let doorbells = segment_file.segment().layout().features & FEATURE_DOORBELLS != 0;
        SandboxShared {
            name,
            segment_file,
            external_guest: false,
            doorbells,
            placed_at: Arc::new(AtomicUsize::new(NOT_PLACED)),
            guest_index,
            started: Instant::now(),
            stop: AtomicBool::new(false),
            guest_done: AtomicBool::new(false),
            spin,
            last_error_log: Default::default(),
            memory_refused: AtomicBool::new(false),
            violation: Default::default(),
            guest_thread: Default::default(),
            slot_wait: Some(DEFAULT_SLOT_WAIT),
            deadline: Default::default(),
            timeout: None,
            stopped_at: Default::default(),
            abandon_at_ns: std::sync::atomic::AtomicU64::new(u64::MAX),
        }
    }
}

/// Where a sandbox's segment lives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SegmentSource {
    /// An anonymous sealed memfd (the default).
    #[default]
    Memfd,
    /// A named file, created exclusively with mode 0600, so that other
    /// processes and `shmrt inspect` can open it; removed when the sandbox
    /// is dropped unless `keep`. With `replace_stale`, a stale segment left
    /// at `path` by a shmrt that is gone is replaced (a live one never is;
    /// see [`crate::segment_file::Owner`]).
    Named {
        path: PathBuf,
        keep: bool,
        replace_stale: bool,
    },
}

/// How the guest takes its peer entry.
enum Claim {
    /// We created the segment: reserve, then the guest thread claims.
    Own,
    /// Another program reserved the entry: claim it now.
    Reserved,
    /// A walk-in guest on the first Empty entry.
    Empty,
}

/// The store data of a sandbox.
pub(crate) struct SandboxState {
    pub wasi: WasiP1Ctx,
    pub shared: Arc<SandboxShared>,
    pub deadline: Option<Instant>,
    pub memory_limit: MemoryLimit,
    /// Where the guest's WASI monotonic clock counts from.
    pub clock_origin: Instant,
    pub log_rate: host_imports::LogRate,
    /// The host-to-guest write cursor the last `wait` returned for: data
    /// the guest was told of and left queued (it waits for room to send,
    /// not for data) does not end its next `wait` again.
    pub wait_seen_write: Option<u32>,
    /// The next sleep of a `wait` polling a segment without doorbells:
    /// doubles up to a few ms while nothing happens.
    pub poll_backoff: Duration,
}

impl SandboxState {
    fn new(options: &SandboxOptions, shared: Arc<SandboxShared>) -> Result<Self, String> {
        let clock_origin = Instant::now();
        Ok(SandboxState {
            wasi: build_wasi(options, clock_origin)?,
            memory_limit: MemoryLimit::new(options.max_memory, shared.clone()),
            shared,
            deadline: None,
            clock_origin,
            log_rate: host_imports::LogRate::new(clock_origin),
            wait_seen_write: None,
            poll_backoff: host_imports::MIN_POLL_NAP,
        })
    }
}

/// The store limiter: one budget for everything the guest makes the host
/// allocate, across every linear memory and table of the instance (the
/// segment window does not count). A refused `memory.grow` returns -1 to
/// the guest, as wasm says; the refusal is remembered to explain a trap
/// that follows.
pub(crate) struct MemoryLimit {
    pub max: Option<usize>,
    /// Raised by the runtime around its own growth that maps the window.
    pub window_growth: bool,
    /// Bytes granted so far: memories' pages and tables' elements.
    used: usize,
    /// The last grant, taken back if the growth then failed.
    last_grant: usize,
    /// Told when a request goes over the budget.
    shared: Arc<SandboxShared>,
}

/// What a table element costs the host (wasmtime keeps a pointer each).
const TABLE_ELEMENT_BYTES: usize = 8;
/// Elements a table may have whatever the budget (without a budget, the
/// only bound on tables).
const MAX_TABLE_ELEMENTS: usize = 1_000_000;
/// Linear memories an instance may have: each reserves 4 GiB of address
/// space; shmrt's window needs one.
pub(crate) const MAX_MEMORIES: usize = 4;
/// Tables an instance may have.
pub(crate) const MAX_TABLES: usize = 16;

impl MemoryLimit {
    fn new(max: Option<usize>, shared: Arc<SandboxShared>) -> Self {
        MemoryLimit {
            max,
            window_growth: false,
            used: 0,
            last_grant: 0,
            shared,
        }
    }

    /// Grants `bytes` more if the budget has them.
    fn grant(&mut self, bytes: usize) -> bool {
        let total = self.used.saturating_add(bytes);
        if self.max.is_some_and(|max| total > max) {
            self.shared.memory_refused.store(true, Ordering::Release);
            self.last_grant = 0;
            return false;
        }
        self.used = total;
        self.last_grant = bytes;
        true
    }

    fn take_back(&mut self) {
        self.used -= std::mem::take(&mut self.last_grant);
    }
}

impl wasmtime::ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // The runtime's own growth that maps the window is never refused
        // and never counted.
        if self.window_growth {
            self.last_grant = 0;
            return Ok(true);
        }
        // Everything else counts: each memory's initial size (its creation
        // is a growth from 0), growth by a start function, and the guest's
        // `memory.grow` calls, on every memory the module has.
        Ok(self.grant(desired.saturating_sub(current)))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.take_back();
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        let added = desired.saturating_sub(current);
        Ok(self.grant(added.saturating_mul(TABLE_ELEMENT_BYTES)))
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.take_back();
        Ok(())
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn instances(&self) -> usize {
        1
    }
}

/// Compiled modules keyed by (hash, length) of their bytes, with the bytes
/// to rule out a collision.
type ModuleCache = std::collections::HashMap<(u64, usize), (Vec<u8>, Module)>;

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
        crate::module_cache::ModuleCache::default_dir()
    }
}

/// The engine, the linker with the host imports, and the epoch ticker.
/// One per process is enough; sandboxes are spawned from it.
pub struct Runtime {
    fuel: bool,
    /// Compiled modules on disk, between runs.
    disk_cache: Option<crate::module_cache::ModuleCache>,
    /// Compiled modules by (hash, length) of their bytes.
    modules: std::sync::Mutex<ModuleCache>,
    engine: Engine,
    linker: Arc<Linker<SandboxState>>,

    ticker: Option<JoinHandle<()>>,
    ticking: Arc<AtomicBool>,
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
        config.with_host_memory(Arc::new(WindowMemoryCreator));
        // Copy-on-write images need wasmtime's own mmap memories.
        config.memory_init_cow(false);
        let engine = Engine::new(&config).map_err(|e| SandboxError::Compile {
            sandbox: "-".into(),
            message: format!("engine configuration: {e}"),
        })?;
        let mut linker = Linker::new(&engine);
        let setup = |e: wasmtime::Error| SandboxError::Compile {
            sandbox: "-".into(),
            message: e.to_string(),
        };
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut SandboxState| &mut s.wasi)
            .map_err(setup)?;
        wasi_poll::shadow_poll_oneoff(&mut linker).map_err(setup)?;
        host_imports::add_to_linker(&mut linker).map_err(setup)?;
        let ticking = Arc::new(AtomicBool::new(true));
        let ticker = {
            let (engine, ticking) = (engine.clone(), ticking.clone());
            std::thread::Builder::new()
                .name("shmrt-epoch".into())
                .spawn(move || {
                    while ticking.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| SandboxError::io("starting the epoch thread", e))?
        };
        Ok(Runtime {
            fuel: rc.fuel,
            disk_cache: rc.module_cache.map(crate::module_cache::ModuleCache::new),
            modules: Default::default(),
            engine,
            linker: Arc::new(linker),
            ticker: Some(ticker),
            ticking,
        })
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
        let mut seg_config = options.segment;
        seg_config.max_guests = 1;
        let file = match &options.segment_source {
            SegmentSource::Memfd => SegmentFile::create_memfd(&seg_config)?,
            SegmentSource::Named {
                path,
                keep,
                replace_stale,
            } => SegmentFile::create_named_with(path, &seg_config, *keep, *replace_stale)?,
        };
        let mut shared = SandboxShared::new(options.name.clone(), Arc::new(file), 0, options.spin);
        shared.slot_wait = options.slot_wait;
        shared.timeout = options.timeout;
        let shared = Arc::new(shared);
        let handle = self.start(wasm, &options, shared.clone(), Claim::Own)?;
        let segment = *shared.segment_file.segment();
        let (tx, rx) =
            segment
                .host_channel(shared.guest_index)
                .map_err(|error| SandboxError::Protocol {
                    sandbox: shared.name.clone(),
                    error,
                })?;
        Ok(Sandbox {
            sender: HostSender::new(tx, shared.clone()),
            receiver: HostReceiver::new(rx, shared),
            handle,
        })
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
        options: SandboxOptions,
    ) -> Result<(SandboxHandle, u32), SandboxError> {
        let file = SegmentFile::open_existing(segment)?;
        let layout = *file.segment().layout();
        let peer_err = |reason: String| SandboxError::Peer {
            path: segment.to_owned(),
            reason,
        };
        let (index, claim) = match peer {
            Some(id) => {
                let index = id
                    .checked_sub(1)
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
        let mut shared =
            SandboxShared::new(options.name.clone(), Arc::new(file), index, options.spin);
        shared.timeout = options.timeout;
        let shared = Arc::new(shared);
        let handle = self.start(wasm, &options, shared.clone(), claim)?;
        if layout.heartbeat_interval_ns != 0 {
            let beat = Duration::from_nanos(layout.heartbeat_interval_ns / 2)
                .max(Duration::from_millis(1));
            let s = shared.clone();
            std::thread::Builder::new()
                .name("shmrt-heartbeat".into())
                .spawn(move || {
                    while !s.guest_done.load(Ordering::Acquire) {
                        s.peer().heartbeat(monotonic_ns());
                        std::thread::sleep(beat);
                    }
                })
                .map_err(|e| SandboxError::io("starting the heartbeat thread", e))?;
        }
        Ok((handle, index + 1))
    }

    /// Compiles, checks, instantiates with the window, takes the peer entry
    /// and starts the guest thread.
    fn start(
        &self,
        wasm: &[u8],
        options: &SandboxOptions,
        shared: Arc<SandboxShared>,
        claim: Claim,
    ) -> Result<SandboxHandle, SandboxError> {
        let name = shared.name.clone();
        let window_len = shared.segment_file.window_len();
        let window_pages = window_len as u64 / 65536;
        let binary = module_bytes(wasm).map_err(|message| SandboxError::Compile {
            sandbox: name.clone(),
            message,
        })?;
        let module = self.compile(&binary).map_err(|e| SandboxError::Compile {
            sandbox: name.clone(),
            message: format!("{e:#}"),
        })?;
        module_check::check(&binary, window_pages).map_err(|reason| SandboxError::Refused {
            sandbox: name.clone(),
            reason,
        })?;
        let initial_pages = module_check::facts(&binary).memory.map_or(0, |(_, i, _)| i);
        if initial_pages + window_pages > 1 << 16 {
            return Err(SandboxError::WindowTooLarge {
                sandbox: name,
                window: window_len as u64,
                initial: initial_pages << 16,
            });
        }

        let state =
            SandboxState::new(options, shared.clone()).map_err(|e| SandboxError::Instantiate {
                sandbox: name.clone(),
                message: e,
            })?;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.memory_limit);

        match (options.fuel, self.fuel) {
            (Some(fuel), true) => store.set_fuel(fuel),
            (None, true) => store.set_fuel(u64::MAX),
            (Some(_), false) => {
                return Err(SandboxError::Refused {
                    sandbox: name,
                    reason: "a fuel limit needs a runtime made with RuntimeConfig { fuel: true }"
                        .into(),
                });
            }
            (None, false) => Ok(()),
        }
        .map_err(|e| SandboxError::Instantiate {
            sandbox: name.clone(),
            message: e.to_string(),
        })?;
        // Instantiation runs guest code (a start function) and creates the
        // memory under the limiter: a limit, a trap, the deadline or a
        // stop there is the guest's failure, not a refused module.
        let instantiate_err = |e: wasmtime::Error| {
            // A trap with wasm frames came from a start function; one
            // without (a data segment past the memory) is the module's.
            let in_guest_code = e
                .downcast_ref::<wasmtime::WasmBacktrace>()
                .is_some_and(|b| !b.frames().is_empty());
            let guest_ran = (e.downcast_ref::<wasmtime::Trap>().is_some() && in_guest_code)
                || e.downcast_ref::<DeadlineExceeded>().is_some()
                || e.downcast_ref::<Stopped>().is_some();
            if guest_ran {
                return match exit_status(e, &shared, options.timeout) {
                    Err(error) => error,
                    Ok(code) => SandboxError::Instantiate {
                        sandbox: name.clone(),
                        message: format!("the start function exited with {code}"),
                    },
                };
            }
            // Before any guest code: the module itself is too large for the
            // limit, on every attempt (so not a failure to restart).
            if shared.memory_refused.load(Ordering::Acquire) {
                return SandboxError::Refused {
                    sandbox: name.clone(),
                    reason: format!(
                        "its initial linear memories and tables together are larger than the memory \
                         limit of {} bytes ({e:#}); raise the limit or declare less memory",
                        options.max_memory.unwrap_or(0)
                    ),
                };
            }
            SandboxError::Instantiate {
                sandbox: name.clone(),
                message: format!("{e:#}"),
            }
        };
        // The deadline and the stop flag hold from here: a start function
        // runs during instantiation, on the caller's thread.
        let deadline = options.timeout.and_then(deadline_after);
        watch_deadline(&mut store, &shared, deadline);
        shared.runs_on_this_thread();
        let window = PendingWindow {
            file: shared.segment_file.file().clone(),
            len: window_len,
            file_len: shared.segment_file.file_map_len(),
            placed_at: shared.placed_at.clone(),
            truncated: shared
                .segment_file
                .path()
                .map(|_| shared.segment_file.truncated_flag().clone()),
        };
        let instance = memory_window::with_pending_window(window, || {
            self.linker.instantiate(&mut store, &module)
        })
        .map_err(instantiate_err)?;
        let memory =
            instance
                .get_memory(&mut store, "memory")
                .ok_or_else(|| SandboxError::Refused {
                    sandbox: name.clone(),
                    reason: "module does not export its linear memory as `memory`".into(),
                })?;
        store.data_mut().memory_limit.window_growth = true;
        let grown = memory.grow(&mut store, window_pages);
        store.data_mut().memory_limit.window_growth = false;
        grown.map_err(instantiate_err)?;
        let base = shared.window_base();
        if base == NOT_PLACED
            || memory.data(&store).get(base..base + 8)
                != Some(&shmrt_primitives::segment_header::MAGIC[..])
        {
            return Err(SandboxError::Instantiate {
                sandbox: name,
                message: "the segment window could not be placed in linear memory".into(),
            });
        }
        let entry = Entry::find(&instance, &mut store).ok_or_else(|| SandboxError::Refused {
            sandbox: name.clone(),
            reason: "module exports neither `shmrt_main: () -> i32` nor `_start: () -> ()`; build it with \
                     the guest SDK's entry macro, or as a WASI command"
                .into(),
        })?;
        let initialize = instance
            .get_typed_func::<(), ()>(&mut store, "_initialize")
            .ok();

        let peer = shared.peer();
        let taken = match claim {
            Claim::Own => peer.try_reserve().map(|_| ()),
            Claim::Reserved => peer.try_claim_reserved(),
            Claim::Empty => peer.try_attach().map(|_| ()),
        };
        taken.map_err(|e| SandboxError::Peer {
            path: shared
                .segment_file
                .path()
                .map(Path::to_owned)
                .unwrap_or_default(),
            reason: format!(
                "cannot take the entry of peer {}: {e}",
                shared.guest_index + 1
            ),
        })?;
        let claim_in_thread = matches!(claim, Claim::Own);

        let timeout = options.timeout;
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("shmrt-guest {name}"))
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
        Ok(SandboxHandle {
            shared,
            thread: Some(thread),
        })
    }

    /// Compiles `binary`, or takes the module compiled from the same bytes
    /// before: spawning many sandboxes of one plugin compiles it once.
    fn compile(&self, binary: &[u8]) -> wasmtime::Result<Module> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        binary.hash(&mut h);
        let key = (h.finish(), binary.len());
        let mut cache = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((bytes, module)) = cache.get(&key)
            && bytes.as_slice() == binary
        {
            return Ok(module.clone());
        }
        let module = match &self.disk_cache {
            Some(disk) => disk.get_or_compile(&self.engine, binary)?,
            None => Module::from_binary(&self.engine, binary)?,
        };
        // A few plugins per process is the common case; keep it bounded.
        if cache.len() >= 64 {
            cache.clear();
        }
        cache.insert(key, (binary.to_vec(), module.clone()));
        Ok(module)
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
        let shared = Arc::new(SandboxShared::new(
            "signatures".into(),
            file,
            0,
            SpinBudget::default(),
        ));
        let state = SandboxState::new(&SandboxOptions::default(), shared).map_err(|e| {
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

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticking.store(false, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

fn build_wasi(options: &SandboxOptions, clock_origin: Instant) -> Result<WasiP1Ctx, String> {
    let mut b = WasiCtxBuilder::new();
    b.args(&options.args).envs(&options.env).inherit_stderr();
    b.monotonic_clock(wasi_poll::GuestMonotonicClock {
        origin: clock_origin,
    });
    match options.stdout {
        GuestStdout::Stderr => {
            b.stdout(std::io::stderr());
        }
        GuestStdout::Stdout => {
            b.inherit_stdout();
        }
        GuestStdout::Null => {}
    }
    for (host, guest) in &options.dirs {
        b.preopened_dir(host, guest, FsPerms::ReadWrite)
            .map_err(|e| format!("cannot give the guest directory {}: {e}", host.display()))?;
    }
    Ok(b.build_p1())
}

/// The most bytes read as a module: a larger file (or `/dev/zero`) is
/// refused before it fills the host's memory.
pub const MAX_MODULE_BYTES: u64 = 256 << 20;

/// Reads a module file, at most [`MAX_MODULE_BYTES`].
pub fn read_module_file(path: &Path) -> Result<Vec<u8>, SandboxError> {
    use std::io::Read;
    let read_err = |source| SandboxError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_MODULE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_MODULE_BYTES {
        return Err(read_err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "it is larger than {} MiB, the most shmrt reads as a module",
                MAX_MODULE_BYTES >> 20
            ),
        )));
    }
    Ok(bytes)
}

/// The binary of a module given as a binary (by its magic) or as WAT
/// text; anything else is said to be neither, not parsed as WAT.
fn module_bytes(wasm: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    if wasm.starts_with(b"\0asm") {
        return Ok(std::borrow::Cow::Borrowed(wasm));
    }
    let Ok(text) = std::str::from_utf8(wasm) else {
        return Err(
            "not a WebAssembly module: it starts with neither the binary magic \\0asm nor is it WAT text"
                .into(),
        );
    };
    if !text.trim_start().starts_with('(') && !text.trim_start().starts_with(";;") {
        return Err(
            "not a WebAssembly module: it starts with neither the binary magic \\0asm nor `(` of WAT text"
                .into(),
        );
    }
    wat::parse_str(text)
        .map(std::borrow::Cow::Owned)
        .map_err(|e| format!("invalid WAT text: {e}"))
}

enum Entry {
    Main(TypedFunc<(), i32>),
    Start(TypedFunc<(), ()>),
}

impl Entry {
    fn find(instance: &wasmtime::Instance, store: &mut Store<SandboxState>) -> Option<Self> {
        if let Ok(f) = instance.get_typed_func::<(), i32>(&mut *store, "shmrt_main") {
            return Some(Entry::Main(f));
        }
        instance
            .get_typed_func::<(), ()>(store, "_start")
            .ok()
            .map(Entry::Start)
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock heartbeats are read with by
/// every process on the machine.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Sets `guest_done` and wakes the host however the guest thread ends.
struct DoneGuard(Arc<SandboxShared>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        let peer = self.0.peer();
        peer.set_goodbye();
        // Release: everything the guest committed is visible to a host that
        // sees `guest_done` (SYNC POINT "guest_done").
        self.0.guest_done.store(true, Ordering::Release);
        doorbell_futex::ring(&peer.g2h_doorbell);
        doorbell_futex::wake_all(peer.g2h_doorbell.futex_word());
    }
}

fn run_guest(
    mut store: Store<SandboxState>,
    entry: Entry,
    initialize: Option<TypedFunc<(), ()>>,
    timeout: Option<Duration>,
    shared: Arc<SandboxShared>,
    claim: bool,
) -> Result<i32, SandboxError> {
    let _done = DoneGuard(shared.clone());
    shared.runs_on_this_thread();
    if claim && let Err(e) = shared.peer().try_claim_reserved() {
        return Err(SandboxError::Instantiate {
            sandbox: shared.name.clone(),
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
    if dropped > 0 {
        tracing::warn!(
            target: "shmrt::guest",
            sandbox = shared.name.as_str(),
            "{dropped} more log lines of this guest were dropped (more than {} a second)",
            host_imports::LogRate::PER_SECOND
        );
    }
    result.or_else(|e| exit_status(e, &shared, timeout))
}

/// From now on, every epoch tick of guest code checks the stop flag, the
/// segment file and `deadline` (also what a `wait` is bounded by).
fn watch_deadline(
    store: &mut Store<SandboxState>,
    shared: &Arc<SandboxShared>,
    deadline: Option<Instant>,
) {
    store.data_mut().deadline = deadline;
    *shared.deadline.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
    if let Some(d) = deadline {
        shared.abandon_after(d);
    }
    store.set_epoch_deadline(1);
    let cb_shared = shared.clone();
    store.epoch_deadline_callback(move |_ctx| {
        if cb_shared.stop.load(Ordering::Acquire) {
            return Err(wasmtime::Error::new(Stopped));
        }
        if cb_shared.segment_file.was_truncated() {
            return Err(wasmtime::Error::msg(
                "the segment file was truncated under the sandbox (pages of it vanished)",
            ));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(wasmtime::Error::new(DeadlineExceeded));
        }
        Ok(UpdateDeadline::Continue(1))
    });
}

/// Maps how a guest call failed to an exit status or an error.
fn exit_status(
    e: wasmtime::Error,
    shared: &SandboxShared,
    timeout: Option<Duration>,
) -> Result<i32, SandboxError> {
    let sandbox = shared.name.as_str();
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Ok(exit.0);
    }
    if e.downcast_ref::<DeadlineExceeded>().is_some() {
        return Err(SandboxError::Timeout {
            sandbox: sandbox.into(),
            after: timeout.unwrap_or_default(),
        });
    }
    if e.downcast_ref::<Stopped>().is_some() {
        return Err(SandboxError::Stopped {
            sandbox: sandbox.into(),
        });
    }
    tracing::debug!(sandbox, "guest failed: {e:?}");
    if let Some(wasmtime::Trap::OutOfFuel) = e.downcast_ref::<wasmtime::Trap>() {
        return Err(SandboxError::OutOfFuel {
            sandbox: sandbox.into(),
        });
    }
    // The trap itself, without the wasm backtrace (logged at debug).
    let mut message = match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => e.root_cause().to_string(),
    };
    if let Some(last) = shared.last_error_log.lock().ok().and_then(|mut l| l.take()) {
        message = format!("{last} ({message})");
    }
    if shared.memory_refused.load(Ordering::Acquire) {
        return Err(SandboxError::MemoryLimit {
            sandbox: sandbox.into(),
            message: format!("a memory.grow was refused, then the guest trapped: {message}"),
        });
    }
    Err(SandboxError::Trap {
        sandbox: sandbox.into(),
        message,
    })
}

/// A running sandbox: the host's ends of its channel and its thread.
pub struct Sandbox {
    sender: HostSender,
    receiver: HostReceiver,
    handle: SandboxHandle,
}

impl Sandbox {
    /// The sandbox's name.
    pub fn name(&self) -> &str {
        &self.handle.shared.name
    }

    /// The segment through the host's own mapping (for inspection; the
    /// guest may write any of it at any time).
    pub fn segment(&self) -> &Segment {
        self.handle.shared.segment_file.segment()
    }

    /// Where the segment window starts in the guest's linear memory.
    pub fn window_base(&self) -> usize {
        self.handle.shared.window_base()
    }

    /// The sending end (host to guest).
    pub fn sender(&mut self) -> &mut HostSender {
        &mut self.sender
    }

    /// The receiving end (guest to host).
    pub fn receiver(&mut self) -> &mut HostReceiver {
        &mut self.receiver
    }

    /// Splits into ends that can move to other threads, and the handle
    /// that joins the guest.
    pub fn split(self) -> (HostSender, HostReceiver, SandboxHandle) {
        (self.sender, self.receiver, self.handle)
    }

    /// Says goodbye, drains nothing, waits for the guest to return.
    pub fn join(self) -> Result<i32, SandboxError> {
        self.handle.join()
    }
}

/// Stops a sandbox from another thread; see [`SandboxHandle::stop`].
#[derive(Clone)]
pub struct StopHandle(Arc<SandboxShared>);

impl StopHandle {
    /// Asks the guest to stop, as [`SandboxHandle::stop`].
    pub fn stop(&self) {
        self.0.request_stop();
    }
}

impl std::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StopHandle").field(&self.0.name).finish()
    }
}

/// Joins a sandbox's guest thread.
pub struct SandboxHandle {
    shared: Arc<SandboxShared>,
    thread: Option<JoinHandle<Result<i32, SandboxError>>>,
}

impl SandboxHandle {
    /// Asks the guest to stop: its next epoch check traps, a `wait`
    /// returns goodbye at once, a WASI sleep ends. `join` then reports
    /// [`SandboxError::Stopped`] (or the guest's own status, if it
    /// returned first).
    pub fn stop(&self) {
        self.shared.request_stop();
    }

    /// A handle that stops this sandbox from anywhere (a signal handler's
    /// thread, a watchdog) while another thread is in [`Self::join`].
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.shared.clone())
    }

    /// [`Self::join`], then how many messages the host sent that the
    /// guest never took (still queued in its ring when it ended): what a
    /// restart loses. `None` when that can not be told (the guest left its
    /// ring inconsistent).
    pub fn join_counting_unread(self) -> (Result<i32, SandboxError>, Option<usize>) {
        let shared = self.shared.clone();
        let status = self.join();
        (status, unread_messages(&shared))
    }

    /// Whether the guest's entry point has returned.
    pub fn is_finished(&self) -> bool {
        self.shared.guest_done()
    }

    /// Waits for the guest to return; its exit status (the value of
    /// `shmrt_main`, or the WASI exit code) or how it failed. A sandbox
    /// the host stopped for a protocol violation reports the violation,
    /// however the guest ended after it (trapped at the stop, or returned
    /// when its `wait` said goodbye).
    ///
    /// A guest blocked in a host call nothing can interrupt (a WASI open or
    /// read of a FIFO an operator put in a `--dir`) is not waited for past
    /// its deadline or a stop: [`ABANDON_AFTER`] later, `join` returns
    /// the timeout (or the stop) and leaves the guest's thread behind,
    /// with its memory, until the call returns.
    pub fn join(mut self) -> Result<i32, SandboxError> {
        let thread = self.thread.take().expect("joined once");
        let status = match wait_for_guest(thread, &self.shared) {
            Some(status) => status,
            None => Err(abandoned(&self.shared)),
        };
        let violation = *self
            .shared
            .violation
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match violation {
            Some(error) => Err(SandboxError::Protocol {
                sandbox: self.shared.name.clone(),
                error,
            }),
            None => status,
        }
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop();
            let _ = wait_for_guest(t, &self.shared);
        }
    }
}

/// How long past its deadline, or past a stop, a guest's thread is waited
/// for before it is left behind (see [`SandboxHandle::join`]).
pub const ABANDON_AFTER: Duration = Duration::from_millis(100);

/// Joins the guest's thread, unless it is still running [`ABANDON_AFTER`]
/// past the sandbox's deadline or a stop (`None`: left behind, detached).
fn wait_for_guest(
    thread: JoinHandle<Result<i32, SandboxError>>,
    shared: &SandboxShared,
) -> Option<Result<i32, SandboxError>> {
    let bell = &shared.peer().g2h_doorbell;
    loop {
        // The guest's last act is to raise `guest_done` and ring.
        if thread.is_finished() || shared.guest_done.load(Ordering::Acquire) {
            return Some(thread.join().unwrap_or_else(|_| {
                Err(SandboxError::Trap {
                    sandbox: shared.name.clone(),
                    message: "the guest thread panicked".into(),
                })
            }));
        }
        if shared.abandoned() {
            tracing::warn!(
                sandbox = shared.name.as_str(),
                "the guest is blocked in a host call that can not be interrupted; \
                 its thread is left behind"
            );
            return None;
        }
        let seq = bell.sequence();
        if shared.guest_done.load(Ordering::Acquire) {
            continue;
        }
        doorbell_futex::park(bell.futex_word(), seq, Some(Duration::from_millis(20)));
    }
}

/// What `join` says of a guest it left behind.
fn abandoned(shared: &SandboxShared) -> SandboxError {
    let deadline = *shared.deadline.lock().unwrap_or_else(|e| e.into_inner());
    if deadline.is_some_and(|d| Instant::now() >= d) {
        SandboxError::Timeout {
            sandbox: shared.name.clone(),
            after: shared.timeout.unwrap_or_default(),
        }
    } else {
        SandboxError::Stopped {
            sandbox: shared.name.clone(),
        }
    }
}

/// Messages left in the host-to-guest ring of a guest that has ended,
/// taken as the guest would take them (slots freed): bounded by the
/// ring's size.
fn unread_messages(shared: &SandboxShared) -> Option<usize> {
    let segment = shared.segment_file.segment();
    let (_, mut rx) = segment.guest_channel(shared.guest_index).ok()?;
    let most = segment.layout().ring_capacity as usize / 8 + 1;
    for n in 0..most {
        match rx.try_recv() {
            Ok(Some(_)) => {}
            Ok(None) => return Some(n),
            Err(_) => return None,
        }
    }
    None
}

fn protocol(shared: &SandboxShared, error: ProtocolError) -> SandboxError {
    // A violation stops this sandbox only; the first one is why.
    shared
        .violation
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert(error);
    shared.request_stop();
    SandboxError::Protocol {
        sandbox: shared.name.clone(),
        error,
    }
}

/// Spins `budget` rounds, then parks on the guest-to-host doorbell until
/// `ready` holds, the guest ends, or `deadline` passes. Returns whether
/// `ready` held.
///
/// `distrust` is for a caller whose reservation failed right after
/// `ready` said yes (a race with the guest, or a guest making them
/// disagree): no spin, and one nap (until the guest rings, at most
/// [`DISTRUST_NAP`]) before `ready` is asked again, so that a readiness
/// test the reservation contradicts makes a send wait, never spin.
fn block_on_guest(
    shared: &SandboxShared,
    (spin, deadline, distrust): (u32, Option<Instant>, bool),
    mut ready: impl FnMut() -> Result<bool, SandboxError>,
) -> Result<bool, SandboxError> {
    let spin = if distrust { 0 } else { spin };
    for i in 0..spin {
        if ready()? {
            return Ok(true);
        }
        // A long spin still notices the guest ending and the deadline.
        if i % 1024 == 1023
            && (shared.guest_done() || deadline.is_some_and(|d| Instant::now() >= d))
        {
            break;
        }
        std::hint::spin_loop();
    }
    let bell = &shared.peer().g2h_doorbell;
    let mut distrust = distrust;
    loop {
        let seq = bell.prepare_wait();
        let r = if distrust { Ok(false) } else { ready() };
        if !matches!(r, Ok(false)) || shared.guest_done() {
            bell.finish_wait();
            return r;
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            bell.finish_wait();
            return Ok(false);
        }
        // Bounded naps: a guest that zeroes the waiter count can at worst
        // delay us by one nap.
        let most = if distrust {
            DISTRUST_NAP
        } else {
            Duration::from_millis(100)
        };
        distrust = false;
        let nap = deadline.map_or(most, |d| (d - now).min(most));
        doorbell_futex::park(bell.futex_word(), seq, Some(nap));
        bell.finish_wait();
    }
}

/// The longest nap of a send whose reservation failed after it was told
/// there was room: short, since in an honest race the room may be back
/// already without a ring; long enough that a guest making the two
/// disagree on purpose costs the host next to no CPU.
const DISTRUST_NAP: Duration = Duration::from_millis(1);

/// `now + after`, or `None` (no deadline) when that is past what an
/// `Instant` can hold: `Duration::MAX` is a common way to say "forever".
fn deadline_after(after: Duration) -> Option<Instant> {
    Instant::now().checked_add(after)
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What a reservation found.
enum Room<'a> {
    Reserved(Reservation<'a>),
    /// No ring room now: the guest reads slowly (plain back-pressure).
    RingFull,
    /// No slot now: the guest holds them, or this side's fair share is
    /// in flight.
    NoSlot,
}

/// Reserves room for `len` bytes now. Inlined into each send, as
/// `Sender::send` is: called out of line, it made a spinning round trip
/// with a guest 30-50 ns slower here (measured within one run against the
/// inlined path).
#[inline(always)]
fn reserve_now<'a>(
    tx: &'a mut Sender,
    shared: &SandboxShared,
    len: usize,
) -> Result<Room<'a>, SandboxError> {
    match tx.reserve(len) {
        Ok(r) => Ok(Room::Reserved(r)),
        Err(SendError::Full) => Ok(Room::RingFull),
        Err(SendError::Exhausted) => Ok(Room::NoSlot),
        Err(e) => Err(send_error(shared, e)),
    }
}

/// How long a send has found no slot while the guest freed none of the
/// class: past the sandbox's slot wait it is an error naming the class
/// and its holders, not a silent deadlock (a peer of the format may hold
/// every slot; a zero-copy plugin may hold what it received).
#[derive(Default)]
struct SlotStall {
    /// Since when, and how many slots of the class the host held then.
    since: Option<(Instant, u32)>,
}

impl SlotStall {
    /// When the slot wait runs out, if a stall is being timed.
    fn deadline(&self, shared: &SandboxShared) -> Option<Instant> {
        let (since, _) = self.since?;
        since.checked_add(shared.slot_wait?)
    }

    #[cold]
    fn check(
        &mut self,
        shared: &SandboxShared,
        tx: &Sender,
        len: usize,
    ) -> Result<(), SandboxError> {
        let Some(limit) = shared.slot_wait else {
            return Ok(());
        };
        let Some(holders) = tx.pool().holders(len as u32) else {
            return Ok(());
        };
        let now = Instant::now();
        match self.since {
            // The guest freed a slot of ours since: progress, start over.
            Some((_, held)) if holders.by_host < held => self.since = Some((now, holders.by_host)),
            Some((since, _)) if now - since >= limit => {
                return Err(SandboxError::SlotsExhausted {
                    sandbox: shared.name.clone(),
                    len,
                    class: holders.class,
                    slot_payload: holders.slot_payload,
                    slot_count: holders.slot_count,
                    by_host: holders.by_host,
                    by_guest: holders.by_guests,
                    waited: now - since,
                });
            }
            Some(_) => {}
            None => self.since = Some((now, holders.by_host)),
        }
        Ok(())
    }
}

/// A send that can not succeed by waiting.
#[cold]
fn send_error(shared: &SandboxShared, e: SendError) -> SandboxError {
    match e {
        SendError::TooLarge { len, max } => SandboxError::TooLarge {
            sandbox: shared.name.clone(),
            len,
            max,
        },
        SendError::Protocol(e) => protocol(shared, e),
        SendError::Full | SendError::Exhausted => SandboxError::WouldBlock {
            sandbox: shared.name.clone(),
            what: "send",
            after: Duration::ZERO,
        },
    }
}

/// The host's sending end: host to guest.
pub struct HostSender {
    tx: Sender,
    shared: Arc<SandboxShared>,
    /// Rounds a wait for room spins before it parks.
    spin: u32,
}

impl HostSender {
    /// Rounds a wait for room spins before it parks on the doorbell (the
    /// sandbox's spin budget by default). A producer much faster than its
    /// guest (a bulk feed) does better parking at once: its spinning takes
    /// a core the guest could use.
    pub fn set_spin(&mut self, rounds: u32) {
        self.spin = rounds;
    }

    pub(crate) fn new(tx: Sender, shared: Arc<SandboxShared>) -> Self {
        let spin = shared.spin.0;
        HostSender { tx, shared, spin }
    }

    /// Largest payload that fits a slot.
    pub fn max_payload(&self) -> u32 {
        self.tx.max_payload()
    }

    /// Sends `payload` if there is room now; `Ok(false)` when the ring or
    /// the pool is full.
    pub fn try_send(&mut self, payload: &[u8]) -> Result<bool, SandboxError> {
        let sent = self.try_send_no_notify(payload)?;
        if sent {
            self.notify();
        }
        Ok(sent)
    }

    /// Sends `payload`, waiting for room as long as the guest runs.
    pub fn send(&mut self, payload: &[u8]) -> Result<(), SandboxError> {
        self.send_with(payload.len(), |mut b| b.copy_from(payload))
    }

    /// Sends `len` bytes written in place by `fill` (ring or slot memory,
    /// never copied again), waiting for room as long as the guest runs.
    /// Errs with `Closed` once the guest has ended.
    ///
    /// `fill` gets the reserved bytes as a [`SharedBytesMut`]: they are in
    /// the guest's window, which a hostile guest may write at any moment,
    /// so they are written through the view (`copy_from`, `write_at`,
    /// `read_from`), never borrowed as a plain slice.
    pub fn send_with(
        &mut self,
        len: usize,
        fill: impl FnOnce(SharedBytesMut<'_>),
    ) -> Result<(), SandboxError> {
        self.send_with_timeout(len, fill, None)
    }

    /// [`Self::send_with`] with a limit on the wait.
    pub fn send_with_timeout(
        &mut self,
        len: usize,
        fill: impl FnOnce(SharedBytesMut<'_>),
        timeout: Option<Duration>,
    ) -> Result<(), SandboxError> {
        self.send_cut(
            len,
            |b| {
                fill(b);
                len
            },
            timeout,
        )
    }

    /// The send loop: `fill` says how many of the `len` reserved bytes to
    /// send. Waits for ring room as long as the guest runs (or `timeout`),
    /// for a slot as long as the guest frees some (or the slot wait).
    fn send_cut(
        &mut self,
        len: usize,
        fill: impl FnOnce(SharedBytesMut<'_>) -> usize,
        timeout: Option<Duration>,
    ) -> Result<(), SandboxError> {
        let deadline = timeout.and_then(deadline_after);
        let Self { tx, shared, spin } = self;
        let spin = *spin;
        let shared: &SandboxShared = shared;
        // The last wait said "ready": a reservation failing now parks.
        let mut was_ready = false;
        let mut stall = SlotStall::default();
        loop {
            if shared.guest_done() || shared.stop.load(Ordering::Acquire) {
                return Err(SandboxError::Closed {
                    sandbox: shared.name.clone(),
                });
            }
            let no_slot = match reserve_now(tx, shared, len)? {
                Room::Reserved(mut r) => {
                    let n = fill(r.bytes_mut());
                    r.truncate(n);
                    r.commit();
                    notify(shared, &shared.peer().h2g_doorbell);
                    return Ok(());
                }
                Room::RingFull => false,
                Room::NoSlot => true,
            };
            if no_slot {
                stall.check(shared, tx, len)?;
            } else {
                stall = SlotStall::default();
            }
            // Waiting for a slot ends at the slot wait too, to say so.
            let until = earliest(deadline, stall.deadline(shared));
            let ready = block_on_guest(shared, (spin, until, was_ready), || {
                tx.could_send(len).map_err(|e| protocol(shared, e))
            })?;
            was_ready = ready;
            if !ready && deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(SandboxError::WouldBlock {
                    sandbox: shared.name.clone(),
                    what: "send",
                    after: timeout.unwrap_or_default(),
                });
            }
        }
    }

    /// Sends back a slot the guest sent (see
    /// [`HostMessage::reply_in_place`]), waiting for ring room for its
    /// frame as long as the guest runs.
    fn send_held_slot(&mut self, mut slot: HeldSlot, len: u32) -> Result<(), SandboxError> {
        let Self { tx, shared, spin } = self;
        let spin = *spin;
        let shared: &SandboxShared = shared;
        loop {
            if shared.guest_done() || shared.stop.load(Ordering::Acquire) {
                let _ = tx.free_held_slot(slot);
                return Err(SandboxError::Closed {
                    sandbox: shared.name.clone(),
                });
            }
            match tx.send_held_slot(slot, len) {
                Ok(()) => {
                    notify(shared, &shared.peer().h2g_doorbell);
                    return Ok(());
                }
                Err((SendError::Full, back)) => slot = back,
                Err((e, back)) => {
                    let _ = tx.free_held_slot(back);
                    return Err(send_error(shared, e));
                }
            }
            block_on_guest(shared, (spin, None, false), || {
                tx.has_room_for_slot_ref().map_err(|e| protocol(shared, e))
            })?;
        }
    }

    /// Reads a message of up to `max` bytes straight into ring or slot
    /// memory: waits for room, then lets `read` fill the reserved bytes and
    /// say how many it filled. Nothing is sent when it fills none. If the
    /// guest ended while `read` ran, the bytes come back as
    /// [`ReadSend::GuestGone`] so that they can go elsewhere (a restarted
    /// sandbox). `read`'s error is returned as is, and nothing is sent.
    /// The bytes are a [`SharedBytesMut`], as in [`Self::send_with`].
    pub fn send_read(
        &mut self,
        max: usize,
        read: impl FnOnce(SharedBytesMut<'_>) -> io::Result<usize>,
    ) -> Result<ReadSend, SendReadError> {
        let Self { tx, shared, spin } = self;
        let spin = *spin;
        let shared: &SandboxShared = shared;
        // As in `send_cut`.
        let mut was_ready = false;
        let mut stall = SlotStall::default();
        loop {
            if shared.guest_done() || shared.stop.load(Ordering::Acquire) {
                return Err(SendReadError::Sandbox(SandboxError::Closed {
                    sandbox: shared.name.clone(),
                }));
            }
            let no_slot = match reserve_now(tx, shared, max)? {
                Room::Reserved(mut r) => {
                    let n = read(r.bytes_mut()).map_err(SendReadError::Read)?.min(max);
                    if n == 0 {
                        return Ok(ReadSend::Nothing);
                    }
                    r.truncate(n);
                    if shared.guest_done() {
                        return Ok(ReadSend::GuestGone(r.bytes_mut().as_shared().to_vec()));
                    }
                    r.commit();
                    notify(shared, &shared.peer().h2g_doorbell);
                    return Ok(ReadSend::Sent(n));
                }
                Room::RingFull => false,
                Room::NoSlot => true,
            };
            if no_slot {
                stall.check(shared, tx, max)?;
            } else {
                stall = SlotStall::default();
            }
            was_ready = block_on_guest(shared, (spin, stall.deadline(shared), was_ready), || {
                tx.could_send(max).map_err(|e| protocol(shared, e))
            })?;
        }
    }

    /// Sends `payload` if there is room now, without telling a parked
    /// guest: for batches, followed by [`Self::notify`].
    #[inline]
    pub fn try_send_no_notify(&mut self, payload: &[u8]) -> Result<bool, SandboxError> {
        match self.tx.send(payload) {
            Ok(()) => Ok(true),
            Err(SendError::Full | SendError::Exhausted) => Ok(false),
            Err(e) => Err(send_error(&self.shared, e)),
        }
    }

    /// Wakes the guest if it is parked (after a batch).
    pub fn notify(&self) {
        notify(&self.shared, &self.shared.peer().h2g_doorbell);
    }

    /// Raises host goodbye: the guest drains what is queued and returns.
    pub fn goodbye(&mut self) {
        let shared = &self.shared;
        shared.segment_file.segment().header().say_goodbye();
        let bell = &shared.peer().h2g_doorbell;
        bell.ring();
        doorbell_futex::wake_all(bell.futex_word());
    }
}

/// What [`HostSender::send_read`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadSend {
    /// A message of this many bytes was sent.
    Sent(usize),
    /// The reader filled nothing (end of input): nothing was sent.
    Nothing,
    /// The guest ended while the reader ran: these bytes were not sent.
    GuestGone(Vec<u8>),
}

/// Why [`HostSender::send_read`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SendReadError {
    /// The sandbox could not take the message.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The reader failed; nothing was sent.
    #[error("reading the message: {0}")]
    Read(io::Error),
}

/// The host's receiving end: guest to host.
pub struct HostReceiver {
    rx: Receiver,
    shared: Arc<SandboxShared>,
    /// Rounds a wait for a message spins before it parks.
    spin: u32,
}

/// A message from the guest, in place in the segment. Dropping it releases
/// its ring bytes or frees its slot.
pub struct HostMessage<'a> {
    inner: Message<'a>,
}

impl HostMessage<'_> {
    /// The payload, in place in shared memory, as a view: its bounds were
    /// checked, but the guest may still rewrite its bytes at any moment,
    /// so they are read through the view (copied out, read as words, or
    /// written to a file descriptor), never borrowed as a `&[u8]`.
    pub fn bytes(&self) -> SharedBytes<'_> {
        self.inner.bytes()
    }

    /// The payload copied out (one `memcpy`): a snapshot to parse.
    pub fn to_vec(&self) -> Vec<u8> {
        self.inner.bytes().to_vec()
    }

    /// Answers this message with its own bytes, transformed in place, and
    /// gives it to `to` (the same sandbox's sender): `transform` rewrites
    /// the payload where it is and returns the reply's length (at most the
    /// request's; more is cut). A message that came in a slot goes back in
    /// that same slot, which the guest then frees: no allocation, no copy.
    /// An inline one is copied into the reply's ring bytes.
    pub fn reply_in_place(
        self,
        to: &mut HostSender,
        transform: impl FnOnce(SharedBytesMut<'_>) -> usize,
    ) -> Result<(), SandboxError> {
        match self.inner.take_slot() {
            Ok((slot, len)) => {
                let n = {
                    let mut area = to.tx.held_slot_area(&slot);
                    let area = area
                        .get_mut(..len as usize)
                        .expect("the payload fits its slot");
                    transform(area).min(len as usize)
                };
                to.send_held_slot(slot, n as u32)
            }
            Err(inner) => {
                // Inline, so short: a copy out, then the reply's bytes.
                let request = inner.bytes().to_vec();
                drop(inner);
                to.send_cut(
                    request.len(),
                    |mut out| {
                        out.copy_from(&request);
                        transform(out).min(request.len())
                    },
                    None,
                )
            }
        }
    }

    /// The payload as a plain slice, with no copy.
    ///
    /// # Safety
    ///
    /// The guest must not write these bytes while the slice lives: it is
    /// trusted (your own plugin, in a test), or it is stopped. A hostile
    /// guest may rewrite them at any moment, and code that assumes a
    /// slice does not change under it (UTF-8 decoding, a parser) may then
    /// go wrong in ways Rust does not protect against.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the caller's promise, as documented.
        unsafe { self.inner.as_bytes() }
    }

    /// Payload length.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Whether it came in a slot (else inline in the ring).
    pub fn is_slot(&self) -> bool {
        self.inner.is_slot()
    }
}

/// After draining the guest's ring: wakes a guest parked for room, with
/// no fence (the guest's waits for room are bounded and re-check).
fn room_freed(shared: &SandboxShared) {
    let bell = &shared.peer().h2g_doorbell;
    if shared.doorbells && bell.has_waiters() {
        doorbell_futex::ring(bell);
    }
}

/// Rings `bell` only if its owner is parked: a fence and a load otherwise
/// (the eventcount's publisher path), no syscall.
fn notify(shared: &SandboxShared, bell: &shmrt_primitives::Doorbell) {
    if shared.doorbells && bell.should_ring() {
        doorbell_futex::ring(bell);
    }
}

impl HostReceiver {
    /// Rounds a wait for a message spins before it parks on the doorbell
    /// (the sandbox's spin budget by default).
    pub fn set_spin(&mut self, rounds: u32) {
        self.spin = rounds;
    }

    pub(crate) fn new(rx: Receiver, shared: Arc<SandboxShared>) -> Self {
        let spin = shared.spin.0;
        HostReceiver { rx, shared, spin }
    }

    /// The next message if one is there.
    pub fn try_recv(&mut self) -> Result<Option<HostMessage<'_>>, SandboxError> {
        let shared = &*self.shared;
        match self.rx.try_recv() {
            Ok(Some(inner)) => Ok(Some(HostMessage { inner })),
            Ok(None) => {
                room_freed(shared);
                Ok(None)
            }
            Err(e) => Err(protocol(shared, e)),
        }
    }

    /// Whether nothing is queued now. Finding the ring drained, tells a
    /// guest parked for room (once per drained ring, not per message).
    pub fn is_empty(&mut self) -> Result<bool, SandboxError> {
        let empty = self.rx.is_empty().map_err(|e| protocol(&self.shared, e))?;
        if empty {
            room_freed(&self.shared);
        }
        Ok(empty)
    }

    /// Waits for the next message: `Ok(None)` when `timeout` passes,
    /// `Err(Closed)` once the guest has ended and everything it sent has
    /// been read.
    pub fn recv_timeout(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<HostMessage<'_>>, SandboxError> {
        let deadline = timeout.and_then(deadline_after);
        if self.is_empty()? {
            let Self { rx, shared, spin } = &mut *self;
            let spin = *spin;
            let shared: &SandboxShared = shared;
            let has_data = block_on_guest(shared, (spin, deadline, false), || {
                rx.is_empty().map(|e| !e).map_err(|e| protocol(shared, e))
            })?;
            if !has_data {
                if shared.guest_done() && rx.is_empty().map_err(|e| protocol(shared, e))? {
                    return Err(SandboxError::Closed {
                        sandbox: shared.name.clone(),
                    });
                }
                return Ok(None);
            }
        }
        self.try_recv()
    }

    /// Waits as long as it takes; `Err(Closed)` once the guest has ended
    /// and everything it sent has been read.
    pub fn recv(&mut self) -> Result<HostMessage<'_>, SandboxError> {
        while self.is_empty()? {
            if self.shared.guest_done() {
                // Everything committed before the end is visible now.
                if self.is_empty()? {
                    return Err(SandboxError::Closed {
                        sandbox: self.shared.name.clone(),
                    });
                }
                break;
            }
            let Self { rx, shared, spin } = &mut *self;
            let spin = *spin;
            let shared: &SandboxShared = shared;
            if block_on_guest(shared, (spin, None, false), || {
                rx.is_empty().map(|e| !e).map_err(|e| protocol(shared, e))
            })? {
                // A message is there: take it without looking again.
                break;
            }
        }
        let Self { rx, shared, .. } = self;
        match rx.try_recv() {
            Ok(Some(inner)) => Ok(HostMessage { inner }),
            Ok(None) => Err(SandboxError::Closed {
                sandbox: shared.name.clone(),
            }),
            Err(e) => Err(protocol(shared, e)),
        }
    }
}
