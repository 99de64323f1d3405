//! Spawn cost and density: `plan.sandboxes` sandboxes of the bench guest
//! as callbacks on this thread, spawned from one prepared plugin and kept
//! alive, each answering a message; against as many plain wasmtime
//! instantiations of the same module (same engine settings where they
//! matter: threads, epochs, a 4 GiB reservation and a 32 MiB guard per
//! memory; dummy imports). Also what each costs in memory and mappings,
//! and a first reply after idling.

use std::time::{Duration, Instant};

use shmrt::{Execution, Runtime, Sandbox, SandboxError, SandboxOptions};

use super::copy_call::baseline_error;
use crate::cli::bench::BenchPlan;
use crate::cli::bench::measure::{Measured, median};
use crate::cli::bench::report::Workload;

/// Phases of the spawn workloads (see [`spawn_cost`]).
const SPAWN_PHASES: usize = 20;

/// Measures the family: `spawn_sandbox` and `spawn_plain_wasmtime` with
/// their ratio (a median over phases), `density_live`, the memory and
/// mappings per sandbox and `first_reply_after_idle`. Returns the notes
/// of the run.
pub(super) fn record(
    runtime: &Runtime,
    guest: &[u8],
    plan: BenchPlan,
    measured: &mut Measured,
) -> Result<Vec<String>, SandboxError> {
    let n = plan.sandboxes;
    let plugin = runtime.prepare(guest)?;
    let spawn = |i: usize| {
        let options = SandboxOptions {
            name: format!("density-{i}"),
            execution: Execution::Callback,
            ..SandboxOptions::default()
        };
        runtime.spawn_plugin(&plugin, options)
    };
    let mut spawn_error = None;
    let cost = spawn_cost(guest, n, &spawn, &mut spawn_error)?;
    let live = live_density(n, &spawn, &mut spawn_error);
    let single = |name, unit, median| Workload {
        name,
        unit,
        median,
        p99: None,
    };
    let w = &mut measured.workloads;
    if !cost.ratio.is_empty() {
        w.push(single("spawn_sandbox", "us", median(&cost.sandbox)));
        w.push(single("spawn_plain_wasmtime", "us", median(&cost.plain)));
        measured
            .paired
            .push(("spawn_vs_plain_wasmtime", median(&cost.ratio)));
    }
    w.push(single("density_live", "sandboxes", live.answering as f64));
    if let Some(rss) = live.rss {
        w.push(single("idle_rss_per_sandbox", "KiB", rss));
    }
    if let Some(vmrss) = live.vmrss {
        w.push(single("idle_vmrss_per_sandbox", "KiB", vmrss));
    }
    if let Some(maps) = live.maps {
        w.push(single("maps_per_sandbox", "maps", maps));
    }
    if !live.first.is_empty() {
        let mut l = Workload::latency("first_reply_after_idle", live.first);
        l.unit = "us";
        w.push(l);
    }
    let mut notes = vec![format!(
        "density: {n} callback sandboxes of the bench guest on one thread{}",
        if n < 10_000 {
            " (--quick; the full run: 10,000)"
        } else {
            ""
        }
    )];
    if let Some(e) = spawn_error {
        notes.push(format!(
            "density: spawning stopped after {} sandboxes: {e}",
            live.answering
        ));
    }
    Ok(notes)
}

/// Per phase of the spawn workloads: us per sandbox spawned, us per plain
/// instantiation, and their ratio.
#[derive(Default)]
struct SpawnCost {
    sandbox: Vec<f64>,
    plain: Vec<f64>,
    ratio: Vec<f64>,
}

/// The spawn cost, in phases: a batch of plain instantiations (dropped at
/// the phase's end) and then a batch of sandboxes (kept until all are
/// spawned), so that both sides see the same process, as full of
/// reservations as the sandboxes make it, and the same moment of a noisy
/// machine. A failed spawn ends the phases and goes to `spawn_error`.
fn spawn_cost(
    guest: &[u8],
    n: usize,
    spawn: &impl Fn(usize) -> Result<Sandbox, SandboxError>,
    spawn_error: &mut Option<SandboxError>,
) -> Result<SpawnCost, SandboxError> {
    let mut baseline = PlainInstances::new(guest)?;
    let phases = SPAWN_PHASES.min(n.max(1));
    let mut cost = SpawnCost::default();
    let mut kept = Vec::with_capacity(n);
    'phases: for phase in 0..phases {
        let k = n / phases + usize::from(phase < n % phases);
        let t = Instant::now();
        for _ in 0..k {
            baseline.instantiate()?;
        }
        let plain = t.elapsed().as_secs_f64() * 1e6 / k.max(1) as f64;
        baseline.kept.clear();
        let t = Instant::now();
        for _ in 0..k {
            match spawn(kept.len()) {
                Ok(sb) => kept.push(sb),
                Err(e) => {
                    *spawn_error = Some(e);
                    break 'phases;
                }
            }
        }
        let spawned = t.elapsed().as_secs_f64() * 1e6 / k.max(1) as f64;
        cost.sandbox.push(spawned);
        cost.plain.push(plain);
        cost.ratio.push(spawned / plain);
    }
    drop(kept);
    drop(baseline);
    Ok(cost)
}

/// What `n` live sandboxes cost and how they answer.
struct LiveDensity {
    /// Sandboxes that answered their first message.
    answering: usize,
    /// KiB of proportional set size per sandbox.
    rss: Option<f64>,
    /// KiB of `VmRSS` per sandbox.
    vmrss: Option<f64>,
    /// Memory mappings per sandbox.
    maps: Option<f64>,
    /// us to each sandbox's reply after idling.
    first: Vec<f64>,
}

/// Density: `n` sandboxes alive, each answering, with what they cost the
/// process. A failed spawn stops spawning and goes to `spawn_error`
/// unless an earlier one is there.
fn live_density(
    n: usize,
    spawn: &impl Fn(usize) -> Result<Sandbox, SandboxError>,
    spawn_error: &mut Option<SandboxError>,
) -> LiveDensity {
    let (rss0, maps0) = (proportional_set_kib(), mappings());
    let vmrss0 = vm_rss_kib();
    let mut live = Vec::with_capacity(n);
    for i in 0..n {
        match spawn(i) {
            Ok(sb) => live.push(sb),
            Err(e) => {
                spawn_error.get_or_insert(e);
                break;
            }
        }
    }
    // Each answers one message (the bench guest's callback echoes).
    let mut answering = 0usize;
    for sb in &mut live {
        if sb.sender().send(b"echo").is_ok()
            && sb
                .receiver()
                .recv()
                .is_ok_and(|m| m.bytes().to_vec() == b"echo")
        {
            answering += 1;
        }
    }
    let count = live.len().max(1) as f64;
    let per_sandbox =
        |after: Option<f64>, before: Option<f64>| after.zip(before).map(|(a, b)| (a - b) / count);
    let rss = per_sandbox(proportional_set_kib(), rss0);
    let vmrss = per_sandbox(vm_rss_kib(), vmrss0);
    let maps = per_sandbox(mappings(), maps0);
    // Idle a moment, then wake each once.
    std::thread::sleep(Duration::from_millis(200));
    let mut first = Vec::with_capacity(live.len());
    for sb in &mut live {
        let t = Instant::now();
        if sb.sender().send(b"again").is_ok() && sb.receiver().recv().is_ok() {
            first.push(t.elapsed().as_nanos() as f64 / 1000.0);
        }
    }
    for sb in &mut live {
        sb.sender().goodbye();
    }
    for sb in live {
        let _ = sb.join();
    }
    LiveDensity {
        answering,
        rss,
        vmrss,
        maps,
        first,
    }
}

/// The process's proportional set size (`Pss` of
/// `/proc/self/smaps_rollup`), in KiB: its resident pages, each shared one
/// divided among its mappings. A page of a segment template that a
/// thousand windows map counts once, where `VmRSS` counts it a thousand
/// times (a window's first read maps up to 16 of the template's pages at
/// once: the kernel's fault-around).
fn proportional_set_kib() -> Option<f64> {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    let line = rollup.lines().find(|l| l.starts_with("Pss:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The process's `VmRSS` (`/proc/self/status`), in KiB: every page mapped,
/// a shared one once per mapping.
fn vm_rss_kib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Memory mappings of this process now.
fn mappings() -> Option<f64> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    Some(maps.lines().count() as f64)
}

/// The spawn baseline: plain wasmtime instances of the bench guest, kept.
struct PlainInstances {
    store_engine: wasmtime::Engine,
    pre: wasmtime::InstancePre<()>,
    kept: Vec<(wasmtime::Store<()>, wasmtime::Instance)>,
}

impl PlainInstances {
    fn new(guest: &[u8]) -> Result<Self, SandboxError> {
        use wasmtime::{Config, Engine, Linker, Module};
        let mut config = Config::new();
        config.wasm_threads(true);
        config.epoch_interruption(true);
        config.memory_reservation(1 << 32);
        config.memory_guard_size(32 << 20);
        let engine = Engine::new(&config).map_err(baseline_error)?;
        let module = Module::new(&engine, guest).map_err(baseline_error)?;
        let mut linker = Linker::<()>::new(&engine);
        // Dummy imports, from the module's own import table.
        linker
            .define_unknown_imports_as_traps(&module)
            .map_err(baseline_error)?;
        let pre = linker.instantiate_pre(&module).map_err(baseline_error)?;
        Ok(PlainInstances {
            store_engine: engine,
            pre,
            kept: Vec::new(),
        })
    }

    fn instantiate(&mut self) -> Result<(), SandboxError> {
        let mut store = wasmtime::Store::new(&self.store_engine, ());
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = self.pre.instantiate(&mut store).map_err(baseline_error)?;
        self.kept.push((store, instance));
        Ok(())
    }
}
