//! The data of a guest's wasmtime store ([`SandboxState`]): the shared
//! state, the limits and the WASI context the imports and the WASI layer
//! reach through their `Caller`, and how that WASI context is built.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::contract::ContractState;
use super::epoch_ticker::{InWasm, TickerState};
use super::guest_output::{self, LogRate};
use super::memory_limit::MemoryLimit;
use super::options::{GuestStdin, SandboxOptions};
use super::shared::SandboxShared;

/// The first sleep of a `wait` polling a segment without doorbells, after
/// activity (see [`SandboxState::poll_backoff`]).
pub(crate) const MIN_POLL_NAP: Duration = Duration::from_micros(20);

/// The store data of a sandbox.
pub(crate) struct SandboxState {
    /// The WASI context, for a module that imports WASI (`None`: none is
    /// built, and nothing can ask for it).
    pub wasi: Option<WasiP1Ctx>,
    pub shared: Arc<SandboxShared>,
    pub deadline: Option<Instant>,
    pub memory_limit: MemoryLimit,
    /// Where the guest's WASI monotonic clock counts from.
    pub clock_origin: Instant,
    pub log_rate: LogRate,
    /// The host-to-guest write cursor the last `wait` returned for: data
    /// the guest was told of and left queued (it waits for room to send,
    /// not for data) does not end its next `wait` again.
    pub wait_seen_write: Option<u32>,
    /// The next sleep of a `wait` polling a segment without doorbells:
    /// doubles up to a few ms while nothing happens.
    pub poll_backoff: Duration,
    /// The runtime's epoch ticker, told when this guest waits in the host.
    pub ticker: Arc<TickerState>,
    /// The flag a guest on the host's thread raises for the ticker while
    /// it runs wasm (set by its driver), if it has one.
    pub in_wasm: Option<Arc<InWasm>>,
    /// Host functions, configuration and the pending host-call result.
    pub contract: ContractState,
}

impl SandboxState {
    /// The WASI context, made empty if the module was thought not to need
    /// one (the linker asks only when a WASI import is called).
    pub(crate) fn wasi(&mut self) -> &mut WasiP1Ctx {
        self.wasi
            .get_or_insert_with(|| WasiCtxBuilder::new().build_p1())
    }

    pub(crate) fn new(
        options: &SandboxOptions,
        shared: Arc<SandboxShared>,
        ticker: Arc<TickerState>,
        wasi: bool,
    ) -> Result<Self, String> {
        let clock_origin = Instant::now();
        let log_rate = LogRate::new(clock_origin);
        let contract = ContractState::new(&options.config, options.host_functions.as_ref())?;
        Ok(SandboxState {
            contract,
            wasi: if wasi {
                Some(build_wasi(options, &log_rate, &shared, clock_origin)?)
            } else {
                None
            },
            memory_limit: MemoryLimit::new(options.max_memory, shared.clone()),
            shared,
            deadline: None,
            clock_origin,
            log_rate,
            wait_seen_write: None,
            poll_backoff: MIN_POLL_NAP,
            ticker,
            in_wasm: None,
        })
    }
}

/// The WASI context of a guest: its arguments, environment, clock,
/// output (routed as [`SandboxOptions::stdout`] says), stdin and
/// preopened directories.
fn build_wasi(
    options: &SandboxOptions,
    log_rate: &LogRate,
    shared: &Arc<SandboxShared>,
    clock_origin: Instant,
) -> Result<WasiP1Ctx, String> {
    let mut b = WasiCtxBuilder::new();
    b.args(&options.args).envs(&options.env);
    b.monotonic_clock(GuestMonotonicClock {
        origin: clock_origin,
    });
    guest_output::route(&mut b, options, log_rate, shared);
    if options.stdin == GuestStdin::Inherit {
        b.inherit_stdin();
    }
    for (host, guest) in &options.dirs {
        b.preopened_dir(host, guest, FsPerms::ReadWrite)
            .map_err(|e| format!("cannot give the guest directory {}: {e}", host.display()))?;
    }
    Ok(b.build_p1())
}

/// The guest's WASI monotonic clock: nanoseconds since the sandbox's
/// clock origin, so that an absolute-time subscription can be turned into
/// an `Instant` (`wasi_poll.rs`).
struct GuestMonotonicClock {
    origin: Instant,
}

impl wasmtime_wasi::HostMonotonicClock for GuestMonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}
