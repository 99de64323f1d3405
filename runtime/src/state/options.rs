//! What a sandbox is spawned with: [`SandboxOptions`], where its segment
//! lives ([`SegmentSource`]) and where a WASI guest's output goes.

use std::path::PathBuf;
use std::time::Duration;

use shmrt_primitives::SegmentConfig;

#[cfg(doc)]
use crate::error::SandboxError;

/// Where a WASI guest's standard output and error go. shmrt's own stdout
/// carries messages in `shmrt run`, and a guest's bytes are not to be
/// trusted with a terminal, so by default they go to the host's log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GuestStdout {
    /// Into the host's log (`tracing`, target `shmrt::guest`, with the
    /// sandbox's name), a line an event: stdout at info, stderr at warn;
    /// control characters and line breaks escaped, and under the rate
    /// limit of the guest's `shmrt.log` lines (one budget for both). The
    /// embedder's subscriber is the sink: with none installed, the lines
    /// go nowhere, as shmrt's own events do.
    #[default]
    Log,
    /// Stdout discarded; stderr into the host's log as with `Log`.
    Null,
    /// Both, byte for byte and unlimited, to the host's stderr: for a
    /// guest you trust with your terminal.
    RawStderr,
    /// Stdout byte for byte to the host's stdout, stderr to its stderr,
    /// unlimited: for a guest you trust with both.
    RawStdout,
}

/// What a WASI guest's standard input reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GuestStdin {
    /// Nothing: end of file at once.
    #[default]
    Null,
    /// The host's stdin.
    Inherit,
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
    /// WASI stdout and stderr.
    pub stdout: GuestStdout,
    /// Spin rounds before the host parks in a blocking call.
    pub spin: SpinBudget,
    /// Where the segment lives.
    pub segment_source: SegmentSource,
    /// Fuel (roughly, wasm instructions) the guest may use; needs a runtime
    /// made with [`RuntimeConfig::fuel`](crate::RuntimeConfig::fuel).
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
    /// Where the guest's code runs: a thread of its own, a fiber or a
    /// callback on the thread that uses the host's ends. Default
    /// [`Execution::Auto`]: a callback when the plugin exports one, else a
    /// thread.
    pub execution: Execution,
    /// What a WASI guest reads from its stdin: nothing (the default), or
    /// the host's stdin (a plain WASI command run by `shmrt run`).
    pub stdin: GuestStdin,
    /// In [`Execution::Callback`], the longest one call of the guest's
    /// callback may run before it is ended as a failure: a callback runs
    /// on the host's thread, which it holds until it returns (a fiber
    /// yields instead). Default 1 s; `None`: as long as the timeout. A
    /// call's slice is counted from the first epoch tick (every 10 ms) or
    /// WASI sleep inside it, so a call may run up to one tick longer: no
    /// clock is read for a call that returns within a tick.
    pub callback_slice: Option<Duration>,
    /// Key/value configuration the plugin reads with
    /// `shmrt_guest::config::get` (no WASI needed): keys of 1 to 255
    /// bytes, at most [`crate::MAX_CONFIG_BYTES`] in all, checked at spawn.
    pub config: std::sync::Arc<std::collections::BTreeMap<String, String>>,
    /// The functions the plugin may call with `shmrt_guest::host_fn::call`
    /// (none by default: such a call gets `NoSuchFunction`).
    pub host_functions: Option<std::sync::Arc<super::contract::HostFunctions>>,
}

/// The default of [`SandboxOptions::callback_slice`].
pub const DEFAULT_CALLBACK_SLICE: Duration = Duration::from_secs(1);

/// Where a sandbox's guest runs its code.
///
/// The guest API is the same in every mode; the limits (timeout, fuel,
/// memory, stop) and the hostile-guest guarantees hold in each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Execution {
    /// Chosen at spawn, by measurement: [`Execution::Callback`] for a
    /// plugin that exports one (plugins made with `handler!`), else
    /// [`Execution::Thread`]. Under load a request answered by a callback
    /// took 1.1-2.1 us where a guest thread took 25-29 us (every hand-off
    /// crosses cores and waits for the scheduler); a plugin with only a
    /// blocking loop keeps a thread, which streams faster than a fiber.
    /// What `shmrt run` picks too.
    #[default]
    Auto,
    /// On a thread of its own: host and guest run at once, on two cores
    /// (streaming), and every hand-off crosses cores.
    Thread,
    /// As a fiber on the thread of whoever calls the host's `recv` or
    /// `send`: the guest's entry point runs until it waits for a message,
    /// then the host's call goes on, with no thread switch. A blocking
    /// `recv()` loop runs unchanged. A guest that computes long yields at
    /// every epoch tick, so guests sharing a thread can not starve each
    /// other.
    Fiber,
    /// As a callback: the guest exports `shmrt_on_messages`, which the
    /// host calls on its own thread with the messages queued in the ring,
    /// and which answers them and returns (no fiber, no stack switch).
    /// Plugins made with `shmrt_guest::handler!` export it; a plugin with
    /// only a blocking loop is refused in this mode.
    Callback,
}

impl Execution {
    /// The mode's name as `shmrt run --exec` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Execution::Auto => "auto",
            Execution::Thread => "thread",
            Execution::Fiber => "fiber",
            Execution::Callback => "callback",
        }
    }
}

impl std::str::FromStr for Execution {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Execution::Auto),
            "thread" => Ok(Execution::Thread),
            "fiber" => Ok(Execution::Fiber),
            "callback" => Ok(Execution::Callback),
            other => Err(format!(
                "unknown execution mode `{other}`: give auto, thread, fiber or callback"
            )),
        }
    }
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
            segment_source: SegmentSource::GuestMemory,
            fuel: None,
            max_memory: None,
            slot_wait: Some(DEFAULT_SLOT_WAIT),
            execution: Execution::default(),
            stdin: GuestStdin::default(),
            callback_slice: Some(DEFAULT_CALLBACK_SLICE),
            config: Default::default(),
            host_functions: None,
        }
    }
}

/// Where a sandbox's segment lives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SegmentSource {
    /// Pages of the guest's own linear memory (the default): host and
    /// guest share the address space, so the host reads the segment
    /// through the guest memory's window, which maps a segment the runtime
    /// laid out once per configuration (a sealed memfd: one descriptor per
    /// runtime, configuration in use and kind of guest, thread or on the
    /// host's thread, plus the two used last) copy-on-write. No descriptor of
    /// its own: what lets a process hold thousands of sandboxes. The
    /// module's start function (if any) may not grow its memory, which
    /// the window follows.
    #[default]
    GuestMemory,
    /// An anonymous sealed memfd, mapped into the guest's window and by
    /// the host (a descriptor per sandbox).
    Memfd,
    /// A named file, created exclusively with mode 0600, so that other
    /// processes and `shmrt inspect` can open it; removed when the sandbox
    /// is dropped unless `keep`. With `replace_stale`, a stale segment left
    /// at `path` by a shmrt that is gone is replaced (a live one never is;
    /// see [`crate::Owner`]).
    Named {
        /// The file to create.
        path: PathBuf,
        /// Leave the file when the sandbox is dropped.
        keep: bool,
        /// Replace a stale segment left at `path`.
        replace_stale: bool,
    },
}

/// How long to spin before parking, in rounds of `spin_loop` hints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpinBudget(pub u32);

impl Default for SpinBudget {
    fn default() -> Self {
        SpinBudget(2000)
    }
}
