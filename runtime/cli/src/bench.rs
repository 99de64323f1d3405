//! `shmrt bench`: a ladder of workloads measured in one process and one
//! run, so that their ratios are comparable on a noisy machine.
//!
//! Latencies are measured in batches of round trips (the clock read costs
//! about as much as a cache-line transfer), and reported per round trip:
//! the median and the 99th percentile over the batches.
//!
//! Each ratio compares a pair of workloads run in alternating phases, both
//! sides alive throughout, and is the median over phases of the ratio
//! within each phase: on shared hardware the speed between two cores
//! drifts within milliseconds, and both sides of a pair see the same
//! drift. This thread stays on one CPU and every peer starts on another
//! (see `Cpus`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Serialize, Serializer};
use shmrt_primitives::checksum::sum64;
use shmrt_primitives::heap_region::HeapRegion;
use shmrt_primitives::{Segment, SegmentConfig, SegmentLayout, SendError};

use shmrt::SpinBudget;
use shmrt::doorbell_futex;
use shmrt::{Execution, Runtime, Sandbox, SandboxError, SandboxOptions};

/// How long to measure.
#[derive(Clone, Copy, Debug)]
pub struct BenchPlan {
    /// Latency batches per workload.
    pub batches: usize,
    /// Round trips per batch.
    pub batch: usize,
    /// Messages per stream.
    pub stream: usize,
    /// Payload hand-offs per size.
    pub payloads: usize,
    /// Alternating phases of the native and the guest side of a pair of
    /// workloads (see [`run`]).
    pub phases: usize,
    /// Sandboxes kept alive at once by the density workloads.
    pub sandboxes: usize,
}

impl BenchPlan {
    /// Well under a minute on a small machine.
    pub fn quick() -> Self {
        BenchPlan {
            batches: 300,
            batch: 20,
            stream: 300_000,
            payloads: 60,
            phases: 30,
            sandboxes: 1000,
        }
    }

    /// The full run.
    pub fn full() -> Self {
        BenchPlan {
            batches: 2000,
            batch: 50,
            stream: 3_000_000,
            payloads: 400,
            phases: 120,
            sandboxes: 10_000,
        }
    }
}

/// One measured workload.
#[derive(Clone, Debug)]
pub struct Workload {
    pub name: &'static str,
    pub unit: &'static str,
    pub median: f64,
    pub p99: Option<f64>,
}

impl Workload {
    fn latency(name: &'static str, mut per_op_ns: Vec<f64>) -> Self {
        per_op_ns.sort_by(f64::total_cmp);
        let at = |q: f64| per_op_ns[((per_op_ns.len() - 1) as f64 * q).round() as usize];
        Workload {
            name,
            unit: "ns",
            median: at(0.5),
            p99: Some(at(0.99)),
        }
    }
}

/// What `shmrt bench` reports.
#[derive(Debug)]
pub struct BenchReport {
    pub machine: String,
    pub workloads: Vec<Workload>,
    /// Ratios measured pairwise: for a pair of workloads run in
    /// alternating phases, the median over phases of the ratio within each
    /// phase (keyed by ratio key). A ratio missing here divides the two
    /// workloads' medians.
    pub paired: Vec<(&'static str, f64)>,
    /// What the reader needs to know of a run (input sizes, a quick run).
    pub notes: Vec<String>,
    /// Targets this run can not judge by construction (a quick run spawns
    /// fewer sandboxes than the density target counts), with the reason.
    pub not_measured: Vec<(&'static str, String)>,
}

/// One ratio of the report: `numerator`'s median over `denominator`'s
/// (or the pair's phase-by-phase median, [`BenchReport::paired`]), and
/// its target.
#[derive(Clone, Copy, Debug)]
pub struct Ratio {
    pub key: &'static str,
    pub numerator: &'static str,
    /// A workload's name, or "one" for a count.
    pub denominator: &'static str,
    /// Met when the ratio is at least the target (else at most).
    pub at_least: bool,
    pub target: f64,
}

impl Ratio {
    const fn at_least(key: &'static str, num: &'static str, den: &'static str, t: f64) -> Self {
        Ratio::new(key, num, den, true, t)
    }

    const fn at_most(key: &'static str, num: &'static str, den: &'static str, t: f64) -> Self {
        Ratio::new(key, num, den, false, t)
    }

    const fn new(
        key: &'static str,
        numerator: &'static str,
        denominator: &'static str,
        at_least: bool,
        target: f64,
    ) -> Self {
        Ratio {
            key,
            numerator,
            denominator,
            at_least,
            target,
        }
    }

    /// `>= 2.5` or `<= 1.2`.
    fn target_text(&self) -> String {
        format!(
            "{} {}",
            if self.at_least { ">=" } else { "<=" },
            self.target
        )
    }

    fn met_by(&self, value: f64) -> bool {
        if self.at_least {
            value >= self.target
        } else {
            value <= self.target
        }
    }
}

/// A ratio as one run measured it.
#[derive(Clone, Debug)]
pub struct MeasuredRatio {
    pub key: &'static str,
    pub value: f64,
    /// `>= 2.5` or `<= 1.2`.
    pub target: String,
    /// `None`: this run can not judge it ([`BenchReport::not_measured`]).
    pub met: Option<bool>,
}

/// Ratio keys, their definitions and targets.
pub const RATIOS: [Ratio; 15] = [
    Ratio::at_most("guest_rtt_vs_native", "rtt_guest_spin", "rtt_native", 1.2),
    Ratio::at_least(
        "guest_stream_vs_native",
        "stream_guest",
        "stream_native",
        0.8,
    ),
    Ratio::at_least("slot_1mib_vs_copy_call", "copy_call_1mib", "slot_1mib", 2.0),
    Ratio::at_least(
        "slot_stream_1mib_vs_copy_call",
        "copy_call_1mib",
        "slot_stream_1mib",
        2.5,
    ),
    Ratio::at_most(
        "parked_rtt_vs_native_futex",
        "rtt_guest_parked",
        "rtt_native_futex",
        1.5,
    ),
    Ratio::at_most(
        "callback_rtt_vs_copy_call",
        "rtt_guest_callback",
        "copy_call_64b",
        1.2,
    ),
    Ratio::at_most(
        "fiber_rtt_vs_thread_parked",
        "rtt_guest_fiber",
        "rtt_guest_parked",
        0.1,
    ),
    Ratio::at_least(
        "slot_4kib_callback_vs_copy_call",
        "copy_call_4kib",
        "slot_4kib_callback",
        1.0,
    ),
    Ratio::at_least(
        "slot_64kib_callback_vs_copy_call",
        "copy_call_64kib",
        "slot_64kib_callback",
        1.5,
    ),
    Ratio::at_least(
        "slot_1mib_callback_vs_copy_call",
        "copy_call_1mib",
        "slot_1mib_callback",
        2.5,
    ),
    Ratio::at_most(
        "spawn_vs_plain_wasmtime",
        "spawn_sandbox",
        "spawn_plain_wasmtime",
        3.0,
    ),
    // Not ratios: absolute targets, against a workload of value 1.
    Ratio::at_least("density_live", "density_live", "one", 10_000.0),
    Ratio::at_most("idle_rss_per_sandbox", "idle_rss_per_sandbox", "one", 100.0),
    Ratio::at_most("cli_lines_vs_cat", "cli_lines", "cat_lines", 15.0),
    Ratio::at_most("cli_raw_vs_cat", "cli_raw", "cat_raw", 2.0),
];

impl BenchReport {
    fn median(&self, name: &str) -> Option<f64> {
        if name == "one" {
            return Some(1.0);
        }
        self.workloads
            .iter()
            .find(|w| w.name == name)
            .map(|w| w.median)
    }

    /// (key, value, target, met) for each ratio.
    /// Why this run does not judge the target of ratio `key`, if it does not.
    fn why_not_measured(&self, key: &str) -> Option<&str> {
        self.not_measured
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, why)| why.as_str())
    }

    /// Each ratio with its target and whether it was met (`None`: not
    /// measured by this run, see [`Self::not_measured`]).
    pub fn ratios(&self) -> Vec<MeasuredRatio> {
        RATIOS
            .iter()
            .filter_map(|r| {
                let value = match self.paired.iter().find(|(k, _)| *k == r.key) {
                    Some(&(_, v)) => v,
                    None => self.median(r.numerator)? / self.median(r.denominator)?,
                };
                let met = if self.why_not_measured(r.key).is_some() {
                    None
                } else {
                    Some(r.met_by(value))
                };
                Some(MeasuredRatio {
                    key: r.key,
                    value,
                    target: r.target_text(),
                    met,
                })
            })
            .collect()
    }

    /// The `--json` document: medians and 99th percentiles to 0.1,
    /// ratios to 0.001.
    pub fn json(&self) -> JsonReport<'_> {
        let ratios = self.ratios();
        JsonReport {
            machine: &self.machine,
            workloads: self
                .workloads
                .iter()
                .map(|w| JsonWorkload {
                    name: w.name,
                    unit: w.unit,
                    median: (w.median * 10.0).round() / 10.0,
                    p99: w.p99.map(|p| (p * 10.0).round() / 10.0),
                })
                .collect(),
            ratios: InOrder(
                ratios
                    .iter()
                    .map(|r| (r.key, (r.value * 1000.0).round() / 1000.0))
                    .collect(),
            ),
            targets: InOrder(
                ratios
                    .into_iter()
                    .map(|r| {
                        let not_measured = self.why_not_measured(r.key).map(str::to_owned);
                        (
                            r.key,
                            JsonTarget {
                                target: r.target,
                                met: r.met,
                                not_measured,
                            },
                        )
                    })
                    .collect(),
            ),
            notes: &self.notes,
        }
    }

    /// The table.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = format!(
            "machine: {}\n\n{:<22} {:>8} {:>14} {:>14}\n",
            self.machine, "workload", "unit", "median", "p99"
        );
        for w in &self.workloads {
            let p99 = w.p99.map_or("-".to_string(), |p| format!("{p:.0}"));
            let _ = writeln!(
                s,
                "{:<22} {:>8} {:>14.0} {:>14}",
                w.name, w.unit, w.median, p99
            );
        }
        for note in &self.notes {
            let _ = writeln!(s, "note: {note}");
        }
        let ratios = self.ratios();
        let width = ratios.iter().map(|r| r.key.len()).max().unwrap_or(0).max(5);
        let _ = writeln!(
            s,
            "\n{:<width$} {:>8} {:>10}  met",
            "ratio", "value", "target"
        );
        for r in ratios {
            let met = match r.met {
                Some(true) => "yes".to_string(),
                Some(false) => "NO".to_string(),
                None => format!(
                    "not measured: {}",
                    self.why_not_measured(r.key).unwrap_or_default()
                ),
            };
            let (k, v, t) = (r.key, r.value, &r.target);
            let _ = writeln!(s, "{k:<width$} {v:>8.3} {t:>10}  {met}");
        }
        s
    }
}

/// `shmrt bench --json`: `{"machine", "workloads", "ratios", "targets",
/// "notes"}`, ratios and targets keyed by ratio key in [`RATIOS`] order.
#[derive(Debug, Serialize)]
pub struct JsonReport<'a> {
    machine: &'a str,
    workloads: Vec<JsonWorkload>,
    ratios: InOrder<f64>,
    targets: InOrder<JsonTarget>,
    notes: &'a [String],
}

#[derive(Debug, Serialize)]
struct JsonWorkload {
    name: &'static str,
    unit: &'static str,
    median: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    p99: Option<f64>,
}

#[derive(Debug, Serialize)]
struct JsonTarget {
    /// `>= 2.5` or `<= 1.2`.
    target: String,
    /// `null` when the run can not judge it (`not_measured` says why).
    met: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_measured: Option<String>,
}

/// A JSON object whose keys keep this order.
#[derive(Debug)]
struct InOrder<V>(Vec<(&'static str, V)>);

impl<V: Serialize> Serialize for InOrder<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cpu}, {cores} cores, {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// Runs every workload. `guest` is the bench guest module
/// (`examples/bench-guest`); `progress` hears each workload's name.
pub fn run(
    guest: &[u8],
    plan: BenchPlan,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, SandboxError> {
    let runtime = Runtime::new()?;
    // Before pinning: the CPUs this process may use.
    let machine = machine();
    let cpus = Cpus::pin();
    let mut w = Vec::new();
    let mut step = |name: &str| progress(name);

    step("floor_cacheline_rtt");
    w.push(Workload::latency(
        "floor_cacheline_rtt",
        cacheline_rtt(plan, &cpus),
    ));
    step("rtt_native, rtt_guest_spin");
    let mut paired = Vec::new();
    let (native, in_guest) = spin_rtt_pair(&runtime, guest, plan, &cpus)?;
    record_latency_pair(
        (&mut w, &mut paired),
        Some("guest_rtt_vs_native"),
        ("rtt_native", native),
        ("rtt_guest_spin", in_guest),
    );
    step("rtt_native_futex, rtt_guest_parked");
    let (native, in_guest) = parked_rtt_pair(&runtime, guest, plan, &cpus)?;
    record_latency_pair(
        (&mut w, &mut paired),
        Some("parked_rtt_vs_native_futex"),
        ("rtt_native_futex", native),
        ("rtt_guest_parked", in_guest),
    );
    step("stream_native, stream_guest");
    let (native, in_guest) = stream_pair(&runtime, guest, plan, &cpus)?;
    paired.push((
        "guest_stream_vs_native",
        median_ratio(
            &in_guest.iter().map(|&r| vec![r]).collect::<Vec<_>>(),
            &native.iter().map(|&r| vec![r]).collect::<Vec<_>>(),
            |phase| phase[0],
        ),
    ));
    for (name, runs) in [("stream_native", native), ("stream_guest", in_guest)] {
        w.push(Workload {
            name,
            unit: "msg/s",
            median: median(&runs),
            p99: None,
        });
    }
    for (slot, copy, len) in [
        ("slot_4kib", "copy_call_4kib", 4096),
        ("slot_64kib", "copy_call_64kib", 65536),
        ("slot_1mib", "copy_call_1mib", 1 << 20),
    ] {
        step(&format!("{slot}, {copy}"));
        let (slots, copies) = payload_pair(&runtime, guest, plan, len, &cpus)?;
        record_latency_pair(
            (&mut w, &mut paired),
            (len == 1 << 20).then_some("slot_1mib_vs_copy_call"),
            (slot, slots),
            (copy, copies),
        );
    }
    step("slot_stream_1mib");
    w.push(Workload::latency(
        "slot_stream_1mib",
        slot_stream(&runtime, guest, plan, 1 << 20, &cpus)?,
    ));
    // The guest on the host's thread: no core to cross.
    step("rtt_guest_callback, copy_call_64b");
    let (callback, copies) = host_thread_rtt_pair(&runtime, guest, plan, Execution::Callback)?;
    record_latency_pair(
        (&mut w, &mut paired),
        Some("callback_rtt_vs_copy_call"),
        ("copy_call_64b", copies),
        ("rtt_guest_callback", callback),
    );
    step("rtt_guest_fiber");
    let (fiber, _) = host_thread_rtt_pair(&runtime, guest, plan, Execution::Fiber)?;
    w.push(Workload::latency("rtt_guest_fiber", fiber.concat()));
    for (execution, sizes) in [
        (
            Execution::Callback,
            [
                ("slot_4kib_callback", 4096),
                ("slot_64kib_callback", 65536),
                ("slot_1mib_callback", 1 << 20),
            ],
        ),
        (
            Execution::Fiber,
            [
                ("slot_4kib_fiber", 4096),
                ("slot_64kib_fiber", 65536),
                ("slot_1mib_fiber", 1 << 20),
            ],
        ),
    ] {
        for (name, len) in sizes {
            step(name);
            let samples = payload_on_host_thread(&runtime, guest, plan, len, execution)?;
            w.push(Workload::latency(name, samples));
        }
    }
    step(&format!("density: {} sandboxes", plan.sandboxes));
    let (density, notes) = density_workloads(&runtime, guest, plan, &mut paired)?;
    w.extend(density);
    let mut not_measured = Vec::new();
    if plan.sandboxes < 10_000 {
        not_measured.push((
            "density_live",
            format!(
                "this run spawns {}; the target counts the full run's 10,000",
                plan.sandboxes
            ),
        ));
    }
    Ok(BenchReport {
        machine,
        workloads: w,
        paired,
        notes,
        not_measured,
    })
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

/// `plan.sandboxes` sandboxes of the bench guest as callbacks on this
/// thread, spawned from one prepared plugin and kept alive, each answering
/// a message; against as many plain wasmtime instantiations of the same
/// module (same engine settings where they matter: threads, epochs, a
/// 4 GiB reservation and a 32 MiB guard per memory; dummy imports). Also
/// what each costs in memory and mappings, and a first reply after idling.
/// Phases of the spawn workloads (see `density_workloads`).
const SPAWN_PHASES: usize = 20;

/// The density workloads; the spawn ratio (a median over phases) goes to
/// `paired`.
fn density_workloads(
    runtime: &Runtime,
    guest: &[u8],
    plan: BenchPlan,
    paired: &mut Vec<(&'static str, f64)>,
) -> Result<(Vec<Workload>, Vec<String>), SandboxError> {
    let n = plan.sandboxes;
    let mut w = Vec::new();
    let plugin = runtime.prepare(guest)?;
    let spawn = |i: usize| {
        let options = SandboxOptions {
            name: format!("density-{i}"),
            execution: Execution::Callback,
            ..SandboxOptions::default()
        };
        runtime.spawn_plugin(&plugin, options)
    };
    // The spawn cost first, in phases: a batch of plain instantiations
    // (dropped at the phase's end) and then a batch of sandboxes (kept
    // until all are spawned), so that both sides see the same process, as
    // full of reservations as the sandboxes make it, and the same moment
    // of a noisy machine. Per phase, us each and their ratio.
    let mut baseline = PlainInstances::new(guest)?;
    let phases = SPAWN_PHASES.min(n.max(1));
    let (mut spawn_us, mut plain_us, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    let mut spawn_error = None;
    {
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
                        spawn_error = Some(e);
                        break 'phases;
                    }
                }
            }
            let spawned = t.elapsed().as_secs_f64() * 1e6 / k.max(1) as f64;
            spawn_us.push(spawned);
            plain_us.push(plain);
            ratio.push(spawned / plain);
        }
    }
    drop(baseline);
    // Then density: n sandboxes alive, each answering, with what they
    // cost the process.
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
    let rss = proportional_set_kib()
        .zip(rss0)
        .map(|(after, before)| (after - before) / count);
    let vmrss = vm_rss_kib()
        .zip(vmrss0)
        .map(|(after, before)| (after - before) / count);
    let maps = mappings()
        .zip(maps0)
        .map(|(after, before)| (after - before) / count);
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
    let single = |name, unit, median| Workload {
        name,
        unit,
        median,
        p99: None,
    };
    if !ratio.is_empty() {
        w.push(single("spawn_sandbox", "us", median(&spawn_us)));
        w.push(single("spawn_plain_wasmtime", "us", median(&plain_us)));
        paired.push(("spawn_vs_plain_wasmtime", median(&ratio)));
    }
    w.push(single("density_live", "sandboxes", answering as f64));
    if let Some(rss) = rss {
        w.push(single("idle_rss_per_sandbox", "KiB", rss));
    }
    if let Some(vmrss) = vmrss {
        w.push(single("idle_vmrss_per_sandbox", "KiB", vmrss));
    }
    if let Some(maps) = maps {
        w.push(single("maps_per_sandbox", "maps", maps));
    }
    if !first.is_empty() {
        let mut l = Workload::latency("first_reply_after_idle", first);
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
            answering
        ));
    }
    Ok((w, notes))
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

/// Records the two latency workloads of a pair (`base` first) and, under
/// `key`, the median over phases of the within-phase ratio `other` /
/// `base` (guest over native round trips; copy-call over slot payloads).
fn record_latency_pair(
    (w, paired): (&mut Vec<Workload>, &mut Vec<(&'static str, f64)>),
    key: Option<&'static str>,
    (base_name, base): (&'static str, Vec<Vec<f64>>),
    (other_name, other): (&'static str, Vec<Vec<f64>>),
) {
    if let Some(key) = key {
        paired.push((key, median_ratio(&other, &base, median)));
    }
    w.push(Workload::latency(base_name, base.concat()));
    w.push(Workload::latency(other_name, other.concat()));
}

/// The median of `samples` (the upper one of an even count); NaN for
/// none. The one median of the bench and its CLI workloads.
pub(crate) fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The median over phases of `summary(a[i]) / summary(b[i])`.
fn median_ratio(a: &[Vec<f64>], b: &[Vec<f64>], summary: impl Fn(&[f64]) -> f64) -> f64 {
    let r: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(a, b)| summary(a) / summary(b))
        .collect();
    median(&r)
}

/// Times `plan.batches` batches of `plan.batch` calls of `op`, after a
/// warm-up; returns ns per call for each batch.
fn batches(plan: BenchPlan, mut op: impl FnMut()) -> Vec<f64> {
    for _ in 0..plan.batch * 20 {
        op();
    }
    (0..plan.batches)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..plan.batch {
                op();
            }
            t.elapsed().as_nanos() as f64 / plan.batch as f64
        })
        .collect()
}

/// Times one payload hand-off per sample; `op` returns the sum the guest
/// computed, checked against `want`. Stops at the first failure.
fn payload_samples(
    plan: BenchPlan,
    sandbox: &str,
    want: u64,
    mut op: impl FnMut() -> Result<u64, SandboxError>,
) -> Result<Vec<f64>, SandboxError> {
    let mut failure = None;
    let per_batch = BenchPlan {
        batches: plan.payloads,
        batch: 1,
        ..plan
    };
    let r = batches(per_batch, || {
        if failure.is_some() {
            return;
        }
        match op() {
            Ok(sum) if sum == want => {}
            Ok(sum) => {
                failure = Some(SandboxError::Trap {
                    sandbox: sandbox.into(),
                    message: format!("checksum {sum:x}, want {want:x}"),
                })
            }
            Err(e) => failure = Some(e),
        }
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(r),
    }
}

fn cacheline_rtt(plan: BenchPlan, cpus: &Cpus) -> Vec<f64> {
    let ball = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (b, s) = (ball.clone(), stop.clone());
    let echo = cpus.on_peer(|| {
        std::thread::spawn(move || {
            let mut want = 1;
            while !s.load(Ordering::Relaxed) {
                if b.load(Ordering::Acquire) == want {
                    b.store(want + 1, Ordering::Release);
                    want += 2;
                }
                std::hint::spin_loop();
            }
        })
    });
    let mut next = 1;
    let r = batches(plan, || {
        ball.store(next, Ordering::Release);
        while ball.load(Ordering::Acquire) != next + 1 {
            std::hint::spin_loop();
        }
        next += 2;
    });
    stop.store(true, Ordering::Relaxed);
    echo.join().expect("echo thread");
    r
}

/// The two CPUs a bench run uses: this thread stays on the host CPU, and
/// every peer (an echo thread, a guest's thread) starts on the peer CPU,
/// so that each pair runs across two CPUs, as a sandbox on a core of its
/// own does. Unpinned, a parked pair sometimes shares a CPU (a wake-up is
/// then a context switch, ~4 us here) and sometimes not (an idle CPU wakes,
/// ~40 us in this VM), and which one a workload gets flips from run to
/// run. Restores this thread's CPUs when dropped. Pins nothing with fewer
/// than two CPUs.
struct Cpus {
    pinned: Option<(rustix::thread::CpuSet, rustix::thread::CpuSet)>,
    before: Option<rustix::thread::CpuSet>,
}

impl Cpus {
    fn pin() -> Self {
        use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
        let before = sched_getaffinity(None).ok();
        let pinned = before.as_ref().and_then(|all| {
            let mut usable = (0..CpuSet::MAX_CPU).filter(|&c| all.is_set(c));
            let (host, peer) = (usable.next()?, usable.next()?);
            let only = |cpu| {
                let mut set = CpuSet::new();
                set.set(cpu);
                set
            };
            let pinned = (only(host), only(peer));
            sched_setaffinity(None, &pinned.0).ok()?;
            Some(pinned)
        });
        Cpus { pinned, before }
    }

    /// Runs `start` on the peer CPU: the threads it starts run there. This
    /// thread goes back to the host CPU afterwards.
    fn on_peer<T>(&self, start: impl FnOnce() -> T) -> T {
        use rustix::thread::sched_setaffinity;
        let Some((host, peer)) = &self.pinned else {
            return start();
        };
        let moved = sched_setaffinity(None, peer).is_ok();
        let r = start();
        if moved {
            // Failing to move back leaves both sides on one CPU: slower,
            // never wrong.
            let _ = sched_setaffinity(None, host);
        }
        r
    }
}

impl Drop for Cpus {
    fn drop(&mut self) {
        if let (Some(_), Some(before)) = (&self.pinned, &self.before) {
            let _ = rustix::thread::sched_setaffinity(None, before);
        }
    }
}

/// A one-guest segment on the heap (`single_guest`) linking two native
/// threads: the host's ends of index 0 on one side, the guest's ends on
/// the other, one ring per direction.
fn heap_segment() -> (HeapRegion, Segment) {
    let config = SegmentConfig::single_guest();
    let layout = SegmentLayout::compute(&config).expect("the default configuration is valid");
    let region = HeapRegion::zeroed(layout.total_size as usize);
    // SAFETY: a fresh region of the layout's size, kept alive by the caller
    // for as long as the segment is used.
    let seg = unsafe { Segment::create(region.as_mut_ptr(), region.len(), &config) }.expect("fits");
    (region, seg)
}

/// A native thread that echoes a counter through a pair of futex words,
/// parking between round trips: the baseline of the parked round trip.
struct FutexEcho {
    words: Arc<[AtomicU32; 2]>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
    sent: u32,
}

impl FutexEcho {
    fn start(cpus: &Cpus) -> Self {
        let words = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
        let stop = Arc::new(AtomicBool::new(false));
        let (w, s) = (words.clone(), stop.clone());
        let thread = cpus.on_peer(|| {
            std::thread::spawn(move || {
                let mut seen = 0;
                loop {
                    while w[0].load(Ordering::Acquire) == seen {
                        if s.load(Ordering::Relaxed) {
                            return;
                        }
                        doorbell_futex::park(&w[0], seen, Some(Duration::from_millis(50)));
                    }
                    seen = w[0].load(Ordering::Acquire);
                    w[1].store(seen, Ordering::Release);
                    doorbell_futex::wake_all(&w[1]);
                }
            })
        });
        FutexEcho {
            words,
            stop,
            thread,
            sent: 0,
        }
    }

    /// Wakes the echo thread and parks until it answers.
    fn round_trip(&mut self) {
        self.sent += 1;
        let n = self.sent;
        self.words[0].store(n, Ordering::Release);
        doorbell_futex::wake_all(&self.words[0]);
        while self.words[1].load(Ordering::Acquire) != n {
            doorbell_futex::park(&self.words[1], n - 1, None);
        }
    }

    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        doorbell_futex::wake_all(&self.words[0]);
        self.thread.join().expect("futex echo thread");
    }
}

/// Round trips with both sides parked between messages: a native futex
/// ping-pong, and host to guest on the doorbells, in alternating phases.
/// How fast a parked thread wakes depends on how deeply its idle CPU
/// sleeps, which drifts on shared hardware; both sides see the same drift.
fn parked_rtt_pair(
    runtime: &Runtime,
    guest: &[u8],
    plan: BenchPlan,
    cpus: &Cpus,
) -> Result<PerPhase, SandboxError> {
    let mut echo = FutexEcho::start(cpus);
    let mut sb = match spawn_bench(runtime, guest, "park", SpinBudget(0), cpus) {
        Ok(sb) => sb,
        Err(e) => {
            echo.finish();
            return Err(e);
        }
    };
    let phase = BenchPlan {
        batches: plan.batches.div_ceil(plan.phases),
        ..plan
    };
    let msg = [7u8; 64];
    let mut failure = None;
    let (mut native, mut in_guest) = (Vec::new(), Vec::new());
    for i in 0..plan.phases {
        for guest_side in [i % 2 == 1, i % 2 == 0] {
            if guest_side {
                in_guest.push(batches(phase, || {
                    guest_round_trip(&mut sb, &msg, &mut failure)
                }));
                if let Some(e) = failure.take() {
                    echo.finish();
                    return Err(explain(sb, e));
                }
            } else {
                native.push(batches(phase, || echo.round_trip()));
            }
        }
    }
    echo.finish();
    finish(sb)?;
    Ok((native, in_guest))
}

fn spawn_bench(
    runtime: &Runtime,
    guest: &[u8],
    mode: &str,
    spin: SpinBudget,
    cpus: &Cpus,
) -> Result<Sandbox, SandboxError> {
    let options = SandboxOptions {
        name: format!("bench-{mode}"),
        spin,
        // A guest on a core of its own (the bench guest exports a callback).
        execution: Execution::Thread,
        ..SandboxOptions::default()
    };
    let mut sb = cpus.on_peer(|| runtime.spawn(guest, options))?;
    sb.sender().send(mode.as_bytes())?;
    Ok(sb)
}

fn finish(mut sb: Sandbox) -> Result<(), SandboxError> {
    sb.sender().goodbye();
    loop {
        match sb.receiver().recv_timeout(Some(Duration::from_secs(10))) {
            Ok(Some(_)) => {}
            Ok(None) | Err(SandboxError::Closed { .. }) => break,
            Err(e) => return Err(e),
        }
    }
    sb.join().map(|_| ())
}

/// One host-to-guest round trip of `msg` (the guest echoes it), skipped
/// once `failure` holds an error; the first error goes there.
#[inline(always)]
fn guest_round_trip(sb: &mut Sandbox, msg: &[u8], failure: &mut Option<SandboxError>) {
    if failure.is_some() {
        return;
    }
    if let Err(e) = sb
        .sender()
        .send(msg)
        .and_then(|()| sb.receiver().recv().map(|m| assert_eq!(m.len(), msg.len())))
    {
        *failure = Some(e);
    }
}

/// A failed workload: how the guest ended says more than the channel.
fn explain(sb: Sandbox, e: SandboxError) -> SandboxError {
    match (e, sb.join()) {
        (SandboxError::Closed { sandbox }, Ok(status)) => SandboxError::Trap {
            sandbox,
            message: format!("the bench guest returned {status} early"),
        },
        (SandboxError::Closed { .. }, Err(guest)) => guest,
        (e, _) => e,
    }
}

/// What a streaming producer does when the ring is full: wait a little
/// before looking at the consumer's cursor again, so as not to pull its
/// cache line away from the consumer with every look.
fn back_off() {
    for _ in 0..64 {
        std::hint::spin_loop();
    }
}

/// The native side of a pair: a thread echoing (or counting) on a heap
/// segment, which rests between its phases so that it does not spin while
/// the guest side is measured.
struct NativePeer {
    thread: std::thread::JoinHandle<()>,
    go: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl NativePeer {
    /// Starts `body(rest, stopping)`: `rest()` parks until the next phase
    /// and returns false when the pair is done; `stopping()` says whether
    /// it is, for the body's polling loops.
    fn start(
        cpus: &Cpus,
        body: impl FnOnce(&dyn Fn() -> bool, &dyn Fn() -> bool) + Send + 'static,
    ) -> Self {
        let go = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (go.clone(), stop.clone());
        let thread = cpus.on_peer(|| {
            std::thread::spawn(move || {
                let stopping = || s.load(Ordering::Relaxed);
                let rest = || {
                    while !g.swap(false, Ordering::AcqRel) {
                        if s.load(Ordering::Acquire) {
                            return false;
                        }
                        std::thread::park();
                    }
                    !s.load(Ordering::Acquire)
                };
                if rest() {
                    body(&rest, &stopping);
                }
            })
        });
        NativePeer { thread, go, stop }
    }

    /// Lets the peer run its next phase.
    fn wake(&self) {
        self.go.store(true, Ordering::Release);
        self.thread.thread().unpark();
    }

    fn finish(self) {
        self.stop.store(true, Ordering::Release);
        self.thread.thread().unpark();
        self.thread.join().expect("native peer thread");
    }
}

/// Native and guest samples, one vector per phase.
type PerPhase = (Vec<Vec<f64>>, Vec<Vec<f64>>);

/// Round trips of 64-byte messages with both sides spinning: native
/// thread to native thread, and host to guest, in alternating phases (the
/// machine's speed drifts between phases on shared hardware; both sides
/// see the same drift). An empty message ends a phase: the peer echoes it
/// and parks until the next.
fn spin_rtt_pair(
    runtime: &Runtime,
    guest: &[u8],
    plan: BenchPlan,
    cpus: &Cpus,
) -> Result<PerPhase, SandboxError> {
    let (_region, seg) = heap_segment();
    let (mut tx, mut rx) = seg.host_channel(0).expect("fresh rings");
    let (mut gtx, mut grx) = seg.guest_channel(0).expect("fresh rings");
    let peer = NativePeer::start(cpus, move |rest, stopping| {
        let mut buf = [0u8; 64];
        while !stopping() {
            let len = match grx.try_recv() {
                Ok(Some(m)) => {
                    let len = m.len().min(64);
                    m.bytes()
                        .get(..len)
                        .expect("len <= m.len()")
                        .copy_to(&mut buf[..len]);
                    len
                }
                _ => {
                    std::hint::spin_loop();
                    continue;
                }
            };
            while gtx.send(&buf[..len]) == Err(SendError::Full) {}
            if len == 0 && !rest() {
                return;
            }
        }
    });
    let mut sb = spawn_bench(runtime, guest, "spin", SpinBudget(u32::MAX), cpus)?;
    // Park the guest until its first phase.
    let mut failure = None;
    guest_round_trip(&mut sb, &[], &mut failure);
    if let Some(e) = failure {
        peer.finish();
        return Err(explain(sb, e));
    }
    let phase = BenchPlan {
        batches: plan.batches.div_ceil(plan.phases),
        ..plan
    };
    let msg = [7u8; 64];
    let (mut native, mut in_guest) = (Vec::new(), Vec::new());
    for i in 0..plan.phases {
        for guest_side in [i % 2 == 1, i % 2 == 0] {
            if guest_side {
                in_guest.push(batches(phase, || {
                    guest_round_trip(&mut sb, &msg, &mut failure)
                }));
                // An empty message ends the phase: the guest parks.
                guest_round_trip(&mut sb, &[], &mut failure);
                if let Some(e) = failure.take() {
                    peer.finish();
                    return Err(explain(sb, e));
                }
            } else {
                peer.wake();
                let mut round_trip = |m: &[u8]| {
                    tx.send(m).expect("room");
                    loop {
                        if let Ok(Some(r)) = rx.try_recv() {
                            assert_eq!(r.len(), m.len());
                            break;
                        }
                        std::hint::spin_loop();
                    }
                };
                native.push(batches(phase, || round_trip(&msg)));
                round_trip(&[]);
            }
        }
    }
    peer.finish();
    finish(sb)?;
    Ok((native, in_guest))
}

/// Streams of 64-byte messages one way, native to native and host to
/// guest, in alternating phases of `plan.stream / plan.phases` messages;
/// msg/s per phase. The consumer counts; a 1-byte message starts a phase
/// and an empty one ends it (the consumer answers both with its count and
/// parks after the end).
fn stream_pair(
    runtime: &Runtime,
    guest: &[u8],
    plan: BenchPlan,
    cpus: &Cpus,
) -> Result<(Vec<f64>, Vec<f64>), SandboxError> {
    let (_region, seg) = heap_segment();
    let (mut tx, mut rx) = seg.host_channel(0).expect("fresh rings");
    let (mut gtx, mut grx) = seg.guest_channel(0).expect("fresh rings");
    let peer = NativePeer::start(cpus, move |rest, stopping| {
        // A pure consumer, as the guest's is.
        grx.set_lazy_release(true);
        let mut count = 0u64;
        while !stopping() {
            let len = match grx.try_recv() {
                Ok(Some(m)) => m.len(),
                _ => {
                    std::hint::spin_loop();
                    continue;
                }
            };
            if len > 1 {
                count += len as u64 / 64;
                continue;
            }
            grx.publish();
            while gtx.send(&count.to_le_bytes()) == Err(SendError::Full) {}
            if len == 0 && !rest() {
                return;
            }
        }
    });
    let mut sb = spawn_bench(runtime, guest, "stream", SpinBudget(u32::MAX), cpus)?;
    let per_phase = plan.stream.div_ceil(plan.phases);
    let msg = [5u8; 64];
    let (mut native, mut in_guest) = (Vec::new(), Vec::new());
    let count_of = |m: &[u8]| u64::from_le_bytes(m.try_into().unwrap_or([0; 8]));
    for i in 0..plan.phases {
        let want = ((i + 1) * per_phase) as u64;
        for guest_side in [i % 2 == 1, i % 2 == 0] {
            if guest_side {
                let r: Result<f64, SandboxError> = (|| {
                    sb.sender().send(&[1])?;
                    sb.receiver().recv()?;
                    let t = Instant::now();
                    let mut sent = 0;
                    while sent < per_phase {
                        if sb.sender().try_send_no_notify(&msg)? {
                            sent += 1;
                        } else {
                            sb.sender().notify();
                            back_off();
                        }
                    }
                    sb.sender().send(&[])?;
                    let count = count_of(&sb.receiver().recv()?.to_vec());
                    let rate = per_phase as f64 / t.elapsed().as_secs_f64();
                    if count != want {
                        return Err(SandboxError::Trap {
                            sandbox: "bench-stream".into(),
                            message: format!("counted {count} of {want}"),
                        });
                    }
                    Ok(rate)
                })();
                match r {
                    Ok(rate) => in_guest.push(rate),
                    Err(e) => {
                        peer.finish();
                        return Err(explain(sb, e));
                    }
                }
            } else {
                peer.wake();
                let mut mark = |tx: &mut shmrt_primitives::Sender, m: &[u8]| {
                    tx.send(m).expect("room");
                    loop {
                        if let Ok(Some(r)) = rx.try_recv() {
                            // SAFETY: the peer is our own native thread,
                            // which follows the protocol: it does not write
                            // a message it has sent.
                            break count_of(unsafe { r.as_bytes() });
                        }
                        std::hint::spin_loop();
                    }
                };
                mark(&mut tx, &[1]);
                let t = Instant::now();
                let mut sent = 0;
                while sent < per_phase {
                    match tx.send(&msg) {
                        Ok(()) => sent += 1,
                        Err(_) => back_off(),
                    }
                }
                let count = mark(&mut tx, &[]);
                native.push(per_phase as f64 / t.elapsed().as_secs_f64());
                assert_eq!(count, want, "the native consumer's count");
            }
        }
    }
    peer.finish();
    sb.sender().goodbye();
    while sb.receiver().recv().is_ok() {}
    sb.join()?;
    Ok((native, in_guest))
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 + 7) as u8).collect()
}

/// Hand-offs of `len`-byte payloads, in alternating phases (both sides
/// see the same drift of the machine): in a slot to a spinning guest that
/// checksums it in place and answers the sum, and copied into a plain
/// wasmtime instance of the same guest whose export checksums it (the
/// baseline). ns per hand-off, per phase: (slot, copy-call).
fn payload_pair(
    runtime: &Runtime,
    guest: &[u8],
    plan: BenchPlan,
    len: usize,
    cpus: &Cpus,
) -> Result<PerPhase, SandboxError> {
    let mut sb = spawn_bench(runtime, guest, "checksum", SpinBudget(u32::MAX), cpus)?;
    let mut baseline = CopyCallGuest::new(guest)?;
    let data = payload(len);
    let want = sum64(&data);
    let phase = BenchPlan {
        payloads: plan.payloads.div_ceil(plan.phases).max(8),
        ..plan
    };
    let mut filled = false;
    let (mut slots, mut copies) = (Vec::new(), Vec::new());
    for i in 0..plan.phases {
        for slot_side in [i % 2 == 0, i % 2 == 1] {
            if !slot_side {
                copies.push(payload_samples(phase, "copy-call", want, || {
                    baseline.checksum(0, &data)
                })?);
                continue;
            }
            slots.push(payload_samples(phase, "bench-checksum", want, || {
                // The producer writes its data in place once: the slot that
                // comes back from the free list is the same one, its bytes
                // untouched (the guest's checksum of every hand-off proves
                // it).
                sb.sender().send_with(len, |mut buf| {
                    if !filled {
                        buf.copy_from(&data);
                        filled = true;
                    }
                })?;
                let reply = sb.receiver().recv()?;
                Ok(reply.bytes().u64_le(0).unwrap_or(0))
            })?);
        }
    }
    finish(sb)?;
    Ok((slots, copies))
}

/// A bench guest on the host's thread (`execution`: fiber or callback),
/// echoing: the first message names no mode, and is answered.
fn spawn_on_host_thread(
    runtime: &Runtime,
    guest: &[u8],
    execution: Execution,
    first: &[u8],
) -> Result<Sandbox, SandboxError> {
    let options = SandboxOptions {
        name: format!("bench-{}", execution.name()),
        execution,
        ..SandboxOptions::default()
    };
    let mut sb = runtime.spawn(guest, options)?;
    sb.sender().send(first)?;
    Ok(sb)
}

/// 64-byte round trips with an echoing guest on the host's thread, and
/// the same 64 bytes copied into plain wasmtime, an export called on them
/// and 64 bytes copied back out (the copy-call baseline), in alternating
/// phases: ns per round trip, per phase: (guest, copy-call).
fn host_thread_rtt_pair(
    runtime: &Runtime,
    guest: &[u8],
    plan: BenchPlan,
    execution: Execution,
) -> Result<PerPhase, SandboxError> {
    // The first message selects the echo (the callback entry answers it;
    // the loop entry takes `park` as its mode).
    let first: &[u8] = if execution == Execution::Callback {
        b"echo"
    } else {
        b"park"
    };
    let mut sb = spawn_on_host_thread(runtime, guest, execution, first)?;
    if execution == Execution::Callback {
        drop(sb.receiver().recv()?);
    }
    let mut baseline = CopyCallGuest::new(guest)?;
    let msg = [7u8; 64];
    let mut out = [0u8; 64];
    let phase = BenchPlan {
        batches: plan.batches.div_ceil(plan.phases).max(4),
        ..plan
    };
    let mut failure = None;
    let (mut in_guest, mut copies) = (Vec::new(), Vec::new());
    for i in 0..plan.phases {
        for guest_side in [i % 2 == 0, i % 2 == 1] {
            if guest_side {
                in_guest.push(batches(phase, || {
                    guest_round_trip(&mut sb, &msg, &mut failure)
                }));
            } else {
                copies.push(batches(phase, || {
                    if failure.is_none()
                        && let Err(e) = baseline.round_trip(&msg, &mut out)
                    {
                        failure = Some(e);
                    }
                }));
            }
        }
    }
    if let Some(e) = failure {
        return Err(explain(sb, e));
    }
    finish(sb)?;
    Ok((in_guest, copies))
}

/// `len`-byte payloads handed to a checksumming guest on the host's
/// thread in a slot (written in place once, as in [`payload_pair`]): ns
/// per hand-off.
fn payload_on_host_thread(
    runtime: &Runtime,
    guest: &[u8],
    plan: BenchPlan,
    len: usize,
    execution: Execution,
) -> Result<Vec<f64>, SandboxError> {
    let mut sb = spawn_on_host_thread(runtime, guest, execution, b"checksum")?;
    let data = payload(len);
    let want = sum64(&data);
    let mut filled = false;
    let r = payload_samples(plan, "bench-checksum", want, || {
        sb.sender().send_with(len, |mut buf| {
            if !filled {
                buf.copy_from(&data);
                filled = true;
            }
        })?;
        let reply = sb.receiver().recv()?;
        Ok(reply.bytes().u64_le(0).unwrap_or(0))
    });
    match r {
        Ok(r) => {
            finish(sb)?;
            Ok(r)
        }
        Err(e) => Err(explain(sb, e)),
    }
}

/// Payloads streamed through slots, `IN_FLIGHT` hand-offs outstanding:
/// the host sends the next payload as soon as a sum comes back, so the
/// guest's reading overlaps the hand-off's cache-line traffic. ns per
/// payload, per batch of `STREAM_BATCH`. The producer writes each slot the
/// pool gives it once (the guest's sums prove the bytes stay); which slots
/// those are, and so how their payloads are aligned, is the pool's choice.
fn slot_stream(
    runtime: &Runtime,
    guest: &[u8],
    plan: BenchPlan,
    len: usize,
    cpus: &Cpus,
) -> Result<Vec<f64>, SandboxError> {
    const IN_FLIGHT: usize = 2;
    const STREAM_BATCH: usize = 10;
    let mut sb = spawn_bench(runtime, guest, "checksum", SpinBudget(u32::MAX), cpus)?;
    let data = payload(len);
    let want = sum64(&data);
    let mut filled = std::collections::HashSet::new();
    let mut send = |sb: &mut Sandbox| {
        sb.sender().send_with(len, |mut buf| {
            if filled.insert(buf.as_mut_ptr() as usize) {
                buf.copy_from(&data);
            }
        })
    };
    let take = |sb: &mut Sandbox| -> Result<(), SandboxError> {
        let reply = sb.receiver().recv()?;
        let sum = reply.bytes().u64_le(0).unwrap_or(0);
        if sum != want {
            return Err(SandboxError::Trap {
                sandbox: "bench-checksum".into(),
                message: format!("checksum {sum:x}, want {want:x}"),
            });
        }
        Ok(())
    };
    for _ in 0..IN_FLIGHT {
        send(&mut sb)?;
    }
    let mut r = Vec::new();
    // The first batches fill the slots and warm up; they are not kept.
    for batch in 0..plan.payloads.div_ceil(STREAM_BATCH) + 4 {
        let t = Instant::now();
        for _ in 0..STREAM_BATCH {
            take(&mut sb)?;
            send(&mut sb)?;
        }
        if batch >= 4 {
            r.push(t.elapsed().as_nanos() as f64 / STREAM_BATCH as f64);
        }
    }
    for _ in 0..IN_FLIGHT {
        take(&mut sb)?;
    }
    finish(sb)?;
    Ok(r)
}

/// The baseline of the payload workloads: the bench guest in plain
/// wasmtime (no shmrt segment; epoch checks on, as Extism runs plugins),
/// handed each payload the way Extism and proxy-wasm do it: copied into
/// guest memory, then an export called on it.
pub struct CopyCallGuest {
    store: wasmtime::Store<()>,
    memory: wasmtime::Memory,
    buffer: u32,
    checksum: wasmtime::TypedFunc<(u32, u32), u64>,
}

impl std::fmt::Debug for CopyCallGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyCallGuest")
            .field("buffer", &self.buffer)
            .finish_non_exhaustive()
    }
}

impl CopyCallGuest {
    /// Instantiates the bench guest `guest` (its wasm bytes).
    pub fn new(guest: &[u8]) -> Result<Self, SandboxError> {
        use wasmtime::{Config, Engine, Linker, Module, Store};
        let mut config = Config::new();
        config.wasm_threads(true);
        // Extism turns epoch interruption on for every plugin (it is how it
        // enforces timeouts), as shmrt does: both sides run the same
        // compiled checksum.
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(baseline_error)?;
        let module = Module::new(&engine, guest).map_err(baseline_error)?;
        let mut linker = Linker::<()>::new(&engine);
        // Plain wasmtime: the module's imports (read from its own import
        // table) exist but are never called.
        linker
            .define_unknown_imports_as_traps(&module)
            .map_err(baseline_error)?;
        let mut store = Store::new(&engine, ());
        // Nothing advances this engine's epoch: the checks never fire.
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = linker
            .instantiate(&mut store, &module)
            .map_err(baseline_error)?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| baseline_error(wasmtime::Error::msg("no memory export")))?;
        let buffer = instance
            .get_typed_func::<(), u32>(&mut store, "bench_buffer")
            .and_then(|f| f.call(&mut store, ()))
            .map_err(baseline_error)?;
        let checksum = instance
            .get_typed_func::<(u32, u32), u64>(&mut store, "bench_checksum")
            .map_err(baseline_error)?;
        Ok(CopyCallGuest {
            store,
            memory,
            buffer,
            checksum,
        })
    }

    /// A request and its reply the copying way: `data` copied into the
    /// guest's buffer, the export called on it, and `out.len()` bytes of
    /// the buffer copied back out as the reply.
    pub fn round_trip(&mut self, data: &[u8], out: &mut [u8]) -> Result<u64, SandboxError> {
        let sum = self.checksum(0, data)?;
        self.memory
            .read(&self.store, self.buffer as usize, out)
            .map_err(|e| baseline_error(wasmtime::Error::msg(e.to_string())))?;
        Ok(sum)
    }

    /// Copies `data` into the guest's buffer, `offset` bytes in, and
    /// returns the word sum the guest computes of it there.
    pub fn checksum(&mut self, offset: usize, data: &[u8]) -> Result<u64, SandboxError> {
        let at = self.buffer as usize + offset;
        let fits = offset + data.len() <= BENCH_BUFFER;
        if !fits {
            return Err(baseline_error(wasmtime::Error::msg(format!(
                "{} bytes at offset {offset} do not fit the bench guest's buffer",
                data.len()
            ))));
        }
        self.memory
            .write(&mut self.store, at, data)
            .map_err(|e| baseline_error(wasmtime::Error::msg(e.to_string())))?;
        self.checksum
            .call(&mut self.store, (at as u32, data.len() as u32))
            .map_err(baseline_error)
    }
}

/// Bytes of the bench guest's buffer (`bench_buffer`).
pub const BENCH_BUFFER: usize = (1 << 20) + 64;

fn baseline_error(e: wasmtime::Error) -> SandboxError {
    SandboxError::Instantiate {
        sandbox: "copy-call".into(),
        message: format!("{e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes.
    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// The `--json` document's keys, their order and the rounding: a
    /// workload without a p99 has no `p99` key; a ratio whose workloads
    /// are missing is left out.
    #[test]
    fn the_json_report_keeps_its_shape() {
        let report = BenchReport {
            machine: "m".into(),
            workloads: vec![
                Workload {
                    name: "rtt_native",
                    unit: "ns",
                    median: 100.04,
                    p99: Some(150.06),
                },
                Workload {
                    name: "rtt_guest_spin",
                    unit: "ns",
                    median: 110.0,
                    p99: None,
                },
            ],
            paired: vec![("slot_1mib_vs_copy_call", 2.7184)],
            notes: vec!["n".into()],
            not_measured: vec![("slot_1mib_vs_copy_call", "why".into())],
        };
        let json = serde_json::to_string(&report.json()).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"machine":"m","workloads":["#,
                r#"{"name":"rtt_native","unit":"ns","median":100.0,"p99":150.1},"#,
                r#"{"name":"rtt_guest_spin","unit":"ns","median":110.0}],"#,
                r#""ratios":{"guest_rtt_vs_native":1.1,"slot_1mib_vs_copy_call":2.718},"#,
                r#""targets":{"guest_rtt_vs_native":{"target":"<= 1.2","met":true},"#,
                r#""slot_1mib_vs_copy_call":{"target":">= 2","met":null,"not_measured":"why"}},"#,
                r#""notes":["n"]}"#
            )
        );
    }

    /// The bench guest's checksum, called the way the copy-call baseline
    /// calls it, at every offset from a 16-byte boundary: each offset takes
    /// its own path (realigned, from the next boundary, plain), and each
    /// must give `sum64`.
    #[test]
    fn bench_guest_checksum_export_matches_sum64_at_every_offset() {
        let mut baseline = CopyCallGuest::new(crate::cli::BENCH_GUEST).unwrap();
        for offset in 0..16 {
            for (i, len) in [0, 3, 8, 12, 20, 1027, 1040, 2048, 2071, 3100, 8200, 70_001]
                .into_iter()
                .enumerate()
            {
                let data = bytes((offset * 100 + i) as u64, len);
                assert_eq!(
                    baseline.checksum(offset, &data).unwrap(),
                    sum64(&data),
                    "{len} bytes at offset {offset}"
                );
            }
        }
        let too_long = vec![0u8; BENCH_BUFFER];
        let e = baseline.checksum(1, &too_long).unwrap_err().to_string();
        assert!(e.contains("do not fit"), "{e}");
    }
}
