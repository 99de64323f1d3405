//! What a sandbox is spawned with: [`SandboxOptions`], where its segment
//! lives ([`SegmentSource`]) and where a WASI guest's stdout goes.

use std::path::PathBuf;
use std::time::Duration;

use shmrt_primitives::SegmentConfig;

use crate::doorbell_futex::SpinBudget;
#[cfg(doc)]
use crate::error::SandboxError;
#[cfg(doc)]
use crate::runtime::RuntimeConfig;

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
