//! `shmrt bench`: a ladder of workloads measured in one process and one
//! run, so that their ratios are comparable on a noisy machine.
//!
//! Latencies are measured in batches of round trips (the clock read costs
//! about as much as a cache-line transfer), and reported per round trip:
//! the median and the 99th percentile over the batches.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shmrt_primitives::checksum::sum64;
use shmrt_primitives::heap_region::HeapRegion;
use shmrt_primitives::{Segment, SegmentConfig, SegmentLayout, SendError};

use crate::doorbell_futex::{self, SpinBudget};
use crate::error::SandboxError;
use crate::{Runtime, Sandbox, SandboxOptions};

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
}

impl BenchPlan {
    /// Well under a minute on a small machine.
    pub fn quick() -> Self {
        BenchPlan {
            batches: 300,
            batch: 20,
            stream: 300_000,
            payloads: 60,
        }
    }

    /// The full run.
    pub fn full() -> Self {
        BenchPlan {
            batches: 2000,
            batch: 50,
            stream: 3_000_000,
            payloads: 400,
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
pub struct BenchReport {
    pub machine: String,
    pub workloads: Vec<Workload>,
}

/// Ratio keys, their definitions and targets.
pub const RATIOS: [(&str, &str, &str, bool, f64); 4] = [
    (
        "guest_rtt_vs_native",
        "rtt_guest_spin",
        "rtt_native",
        false,
        1.2,
    ),
    (
        "guest_stream_vs_native",
        "stream_guest",
        "stream_native",
        true,
        0.8,
    ),
    (
        "slot_1mib_vs_copy_call",
        "copy_call_1mib",
        "slot_1mib",
        true,
        2.5,
    ),
    (
        "parked_rtt_vs_native_futex",
        "rtt_guest_parked",
        "rtt_native_futex",
        false,
        1.5,
    ),
];

impl BenchReport {
    fn median(&self, name: &str) -> Option<f64> {
        self.workloads
            .iter()
            .find(|w| w.name == name)
            .map(|w| w.median)
    }

    /// (key, value, target, met) for each ratio.
    pub fn ratios(&self) -> Vec<(&'static str, f64, String, bool)> {
        RATIOS
            .iter()
            .filter_map(|&(key, a, b, at_least, target)| {
                let v = self.median(a)? / self.median(b)?;
                let met = if at_least { v >= target } else { v <= target };
                Some((
                    key,
                    v,
                    format!("{} {target}", if at_least { ">=" } else { "<=" }),
                    met,
                ))
            })
            .collect()
    }

    /// The `--json` document.
    pub fn json(&self) -> Value {
        let ratios: serde_json::Map<String, Value> = self
            .ratios()
            .into_iter()
            .map(|(k, v, _, _)| (k.to_string(), json!((v * 1000.0).round() / 1000.0)))
            .collect();
        let targets: serde_json::Map<String, Value> = self
            .ratios()
            .into_iter()
            .map(|(k, _, t, met)| (k.to_string(), json!({ "target": t, "met": met })))
            .collect();
        json!({
            "machine": self.machine,
            "workloads": self.workloads.iter().map(|w| {
                let mut o = json!({ "name": w.name, "unit": w.unit, "median": (w.median * 10.0).round() / 10.0 });
                if let Some(p) = w.p99 { o["p99"] = json!((p * 10.0).round() / 10.0); }
                o
            }).collect::<Vec<_>>(),
            "ratios": ratios,
            "targets": targets,
        })
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
        let _ = writeln!(s, "\n{:<28} {:>8} {:>10}  met", "ratio", "value", "target");
        for (k, v, t, met) in self.ratios() {
            let _ = writeln!(
                s,
                "{k:<28} {v:>8.3} {t:>10}  {}",
                if met { "yes" } else { "NO" }
            );
        }
        s
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
    let mut w = Vec::new();
    let mut step = |name: &str| progress(name);

    step("floor_cacheline_rtt");
    w.push(Workload::latency(
        "floor_cacheline_rtt",
        cacheline_rtt(plan),
    ));
    step("rtt_native");
    w.push(Workload::latency("rtt_native", native_rtt(plan)));
    step("rtt_guest_spin");
    w.push(Workload::latency(
        "rtt_guest_spin",
        guest_rtt(&runtime, guest, plan, "spin", SpinBudget(u32::MAX))?,
    ));
    step("rtt_native_futex");
    w.push(Workload::latency("rtt_native_futex", futex_rtt(plan)));
    step("rtt_guest_parked");
    w.push(Workload::latency(
        "rtt_guest_parked",
        guest_rtt(&runtime, guest, plan, "park", SpinBudget(0))?,
    ));
    // Streams are the noisiest on a small machine: alternate the two,
    // five runs each, and keep the medians.
    step("stream_native, stream_guest");
    let (mut native, mut in_guest) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        native.push(native_stream(plan));
        in_guest.push(guest_stream(&runtime, guest, plan)?);
    }
    for (name, mut runs) in [("stream_native", native), ("stream_guest", in_guest)] {
        runs.sort_by(f64::total_cmp);
        w.push(Workload {
            name,
            unit: "msg/s",
            median: runs[runs.len() / 2],
            p99: None,
        });
    }
    for (slot, copy, len) in [
        ("slot_4kib", "copy_call_4kib", 4096),
        ("slot_64kib", "copy_call_64kib", 65536),
        ("slot_1mib", "copy_call_1mib", 1 << 20),
    ] {
        step(slot);
        w.push(Workload::latency(
            slot,
            slot_handoff(&runtime, guest, plan, len)?,
        ));
        step(copy);
        w.push(Workload::latency(copy, copy_call(guest, plan, len)?));
    }
    Ok(BenchReport {
        machine: machine(),
        workloads: w,
    })
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

fn cacheline_rtt(plan: BenchPlan) -> Vec<f64> {
    let ball = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (b, s) = (ball.clone(), stop.clone());
    let echo = std::thread::spawn(move || {
        let mut want = 1;
        while !s.load(Ordering::Relaxed) {
            if b.load(Ordering::Acquire) == want {
                b.store(want + 1, Ordering::Release);
                want += 2;
            }
            std::hint::spin_loop();
        }
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

/// A two-guest segment on the heap: index 0 for A to B, in both directions.
fn heap_segment() -> (HeapRegion, Segment) {
    let config = SegmentConfig::single_guest();
    let layout = SegmentLayout::compute(&config).expect("the default configuration is valid");
    let region = HeapRegion::zeroed(layout.total_size as usize);
    // SAFETY: a fresh region of the layout's size, kept alive by the caller
    // for as long as the segment is used.
    let seg = unsafe { Segment::create(region.as_mut_ptr(), region.len(), &config) }.expect("fits");
    (region, seg)
}

fn native_rtt(plan: BenchPlan) -> Vec<f64> {
    let (_region, seg) = heap_segment();
    let (mut tx, mut rx) = seg.host_channel(0).expect("fresh rings");
    let (mut gtx, mut grx) = seg.guest_channel(0).expect("fresh rings");
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !s.load(Ordering::Relaxed) {
            let got = match grx.try_recv() {
                Ok(Some(m)) => {
                    buf.copy_from_slice(m.as_bytes());
                    true
                }
                _ => false,
            };
            if got {
                while gtx.send(&buf) == Err(SendError::Full) {}
            } else {
                std::hint::spin_loop();
            }
        }
    });
    let msg = [7u8; 64];
    let r = batches(plan, || {
        tx.send(&msg).expect("room");
        loop {
            if let Ok(Some(m)) = rx.try_recv() {
                assert_eq!(m.len(), 64);
                break;
            }
            std::hint::spin_loop();
        }
    });
    stop.store(true, Ordering::Relaxed);
    echo.join().expect("echo thread");
    r
}

fn futex_rtt(plan: BenchPlan) -> Vec<f64> {
    let words = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
    let stop = Arc::new(AtomicBool::new(false));
    let (w, s) = (words.clone(), stop.clone());
    let echo = std::thread::spawn(move || {
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
    });
    let mut n = 0u32;
    let r = batches(plan, || {
        n += 1;
        words[0].store(n, Ordering::Release);
        doorbell_futex::wake_all(&words[0]);
        while words[1].load(Ordering::Acquire) != n {
            doorbell_futex::park(&words[1], n - 1, None);
        }
    });
    stop.store(true, Ordering::Relaxed);
    doorbell_futex::wake_all(&words[0]);
    echo.join().expect("echo thread");
    r
}

fn spawn_bench(
    runtime: &Runtime,
    guest: &[u8],
    mode: &str,
    spin: SpinBudget,
) -> Result<Sandbox, SandboxError> {
    let options = SandboxOptions {
        name: format!("bench-{mode}"),
        spin,
        ..SandboxOptions::default()
    };
    let mut sb = runtime.spawn(guest, options)?;
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

fn guest_rtt(
    runtime: &Runtime,
    guest: &[u8],
    plan: BenchPlan,
    mode: &str,
    spin: SpinBudget,
) -> Result<Vec<f64>, SandboxError> {
    let mut sb = spawn_bench(runtime, guest, mode, spin)?;
    let msg = [7u8; 64];
    let mut failure = None;
    let r = batches(plan, || {
        if failure.is_some() {
            return;
        }
        if let Err(e) = sb
            .sender()
            .send(&msg)
            .and_then(|()| sb.receiver().recv().map(|m| assert_eq!(m.len(), 64)))
        {
            failure = Some(e);
        }
    });
    if let Some(e) = failure {
        return Err(explain(sb, e));
    }
    finish(sb)?;
    Ok(r)
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

fn native_stream(plan: BenchPlan) -> f64 {
    let (_region, seg) = heap_segment();
    let (mut tx, _) = seg.host_channel(0).expect("fresh rings");
    let (_, mut rx) = seg.guest_channel(0).expect("fresh rings");
    let n = plan.stream;
    let counter = std::thread::spawn(move || {
        let mut count = 0;
        while count < n {
            match rx.try_recv() {
                Ok(Some(_)) => count += 1,
                _ => std::hint::spin_loop(),
            }
        }
    });
    let msg = [5u8; 64];
    let t = Instant::now();
    let mut sent = 0;
    while sent < n {
        match tx.send(&msg) {
            Ok(()) => sent += 1,
            Err(_) => std::hint::spin_loop(),
        }
    }
    counter.join().expect("counter thread");
    n as f64 / t.elapsed().as_secs_f64()
}

fn guest_stream(runtime: &Runtime, guest: &[u8], plan: BenchPlan) -> Result<f64, SandboxError> {
    let mut sb = spawn_bench(runtime, guest, "stream", SpinBudget(u32::MAX))?;
    let msg = [5u8; 64];
    let t = Instant::now();
    let mut sent = 0;
    while sent < plan.stream {
        if sb.sender().try_send_no_notify(&msg)? {
            sent += 1;
        } else {
            sb.sender().notify();
            std::hint::spin_loop();
        }
    }
    sb.sender().goodbye();
    let count = {
        let m = sb.receiver().recv()?;
        u64::from_le_bytes(m.as_bytes().try_into().unwrap_or([0; 8]))
    };
    let rate = plan.stream as f64 / t.elapsed().as_secs_f64();
    if count != plan.stream as u64 {
        return Err(SandboxError::Trap {
            sandbox: "bench-stream".into(),
            message: format!("counted {count} of {}", plan.stream),
        });
    }
    sb.join()?;
    Ok(rate)
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 + 7) as u8).collect()
}

fn slot_handoff(
    runtime: &Runtime,
    guest: &[u8],
    plan: BenchPlan,
    len: usize,
) -> Result<Vec<f64>, SandboxError> {
    let mut sb = spawn_bench(runtime, guest, "checksum", SpinBudget(u32::MAX))?;
    let data = payload(len);
    let want = sum64(&data);
    let mut filled = false;
    let r = payload_samples(plan, "bench-checksum", want, || {
        // The producer writes its data in place once: the slot that comes
        // back from the free list is the same one, its bytes untouched (the
        // guest's checksum of every hand-off proves it).
        sb.sender().send_with(len, |buf| {
            if !filled {
                buf.copy_from_slice(&data);
                filled = true;
            }
        })?;
        let reply = sb.receiver().recv()?;
        Ok(u64::from_le_bytes(
            reply.as_bytes().try_into().unwrap_or([0; 8]),
        ))
    })?;
    finish(sb)?;
    Ok(r)
}

fn copy_call(guest: &[u8], plan: BenchPlan, len: usize) -> Result<Vec<f64>, SandboxError> {
    use wasmtime::{Config, Engine, Instance, Linker, Module, Store};
    let err = |e: wasmtime::Error| SandboxError::Instantiate {
        sandbox: "copy-call".into(),
        message: format!("{e:#}"),
    };
    let mut config = Config::new();
    config.wasm_threads(true);
    let engine = Engine::new(&config).map_err(err)?;
    let module = Module::new(&engine, guest).map_err(err)?;
    let mut linker = Linker::<()>::new(&engine);
    // Plain wasmtime: the shmrt imports exist but are never called.
    linker
        .func_wrap("shmrt", "segment_base", || 0u32)
        .map_err(err)?;
    linker
        .func_wrap("shmrt", "segment_size", || 0u32)
        .map_err(err)?;
    linker.func_wrap("shmrt", "peer_id", || 1u32).map_err(err)?;
    linker.func_wrap("shmrt", "ring", || {}).map_err(err)?;
    linker
        .func_wrap("shmrt", "wait", |_: i64| 1i32)
        .map_err(err)?;
    linker
        .func_wrap("shmrt", "log", |_: i32, _: u32, _: u32| {})
        .map_err(err)?;
    linker.func_wrap("shmrt", "now_ns", || 0u64).map_err(err)?;
    let mut store = Store::new(&engine, ());
    let instance: Instance = linker.instantiate(&mut store, &module).map_err(err)?;
    let memory = instance
        .get_memory(&mut store, "memory")
        .expect("the bench guest exports memory");
    let buffer = instance
        .get_typed_func::<(), u32>(&mut store, "bench_buffer")
        .map_err(err)?;
    let checksum = instance
        .get_typed_func::<(u32, u32), u64>(&mut store, "bench_checksum")
        .map_err(err)?;
    let ptr = buffer.call(&mut store, ()).map_err(err)?;
    let data = payload(len);
    let want = sum64(&data);
    payload_samples(plan, "copy-call", want, || {
        memory
            .write(&mut store, ptr as usize, &data)
            .map_err(|e| wasmtime::Error::msg(e.to_string()))
            .and_then(|()| checksum.call(&mut store, (ptr, len as u32)))
            .map_err(err)
    })
}
