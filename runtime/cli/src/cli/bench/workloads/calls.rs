//! The plugin contract: a call by name against the bare callback round
//! trip it rides on, and host functions against a plain wasmtime import
//! that copies the guest's input in and its output back (the way a host
//! function of Extism or a component's canonical ABI hands data over).

use std::sync::Arc;
use std::time::Instant;

use shmrt::{Execution, HostFunctions, Runtime, Sandbox, SandboxError, SandboxOptions};
use shmrt_primitives::checksum::sum64;

use super::copy_call::baseline_error;
use super::guest_round_trip;
use crate::cli::bench::BenchPlan;
use crate::cli::bench::measure::{Measured, PerPhase, batches, median, median_ratio};

/// Host calls a sample makes (one guest call of `host_calls_64b`).
const HOST_CALLS_PER_SAMPLE: u32 = 2000;

/// Measures `call_64b` paired with a bare callback round trip,
/// `host_call_64b` paired with `copy_host_call_64b`, and `host_call_1mib`
/// paired with `copy_host_call_1mib`.
pub(super) fn record(
    runtime: &Runtime,
    guest: &[u8],
    plan: BenchPlan,
    measured: &mut Measured,
    step: &mut dyn FnMut(&str),
) -> Result<(), SandboxError> {
    step("call_64b");
    let (calls, bare) = call_pair(runtime, guest, plan)?;
    measured.paired.push((
        "call_64b_vs_callback_rtt",
        median_ratio(&calls, &bare, median),
    ));
    measured.latency("call_64b", calls.concat());

    step("host_call_64b, copy_host_call_64b");
    let (ours, copies) = host_call_pair(runtime, guest, plan, 64)?;
    measured.latency_pair(
        Some("host_call_64b_vs_copy"),
        ("copy_host_call_64b", copies),
        ("host_call_64b", ours),
    );
    step("host_call_1mib, copy_host_call_1mib");
    let (ours, copies) = host_call_pair(runtime, guest, plan, 1 << 20)?;
    measured.latency_pair(
        Some("host_call_1mib_vs_copy"),
        ("host_call_1mib", ours),
        ("copy_host_call_1mib", copies),
    );
    Ok(())
}

/// The bench guest in callback mode, its `calls` workload on, with the
/// host functions of [`host_functions`].
fn spawn_calls(runtime: &Runtime, guest: &[u8]) -> Result<Sandbox, SandboxError> {
    let options = SandboxOptions {
        name: "bench-calls".into(),
        execution: Execution::Callback,
        host_functions: Some(Arc::new(host_functions())),
        ..SandboxOptions::default()
    };
    let mut sb = runtime.spawn(guest, options)?;
    // Sets the workload; answered by nothing.
    sb.sender().send(b"calls")?;
    Ok(sb)
}

/// `echo64`: the 64 bytes back; `sum`: the word sum of the input, read in
/// place.
fn host_functions() -> HostFunctions {
    let mut functions = HostFunctions::new();
    functions.define("echo64", |input, out| {
        let mut copy = [0u8; 64];
        let n = input.len().min(64);
        input.get(..n).expect("cut").copy_to(&mut copy[..n]);
        out.write(&copy[..n]);
        Ok(())
    });
    functions.define("sum", |input, out| {
        // SAFETY: the guest is suspended in its host call while this runs,
        // and the bench guest's buffer lies outside the segment window, so
        // nothing writes these bytes while the slice lives.
        let sum = sum64(unsafe { input.as_slice() });
        out.write(&sum.to_le_bytes());
        Ok(())
    });
    functions
}

/// Named 64-byte calls of `echo` and bare 64-byte callback round trips,
/// in alternating phases: ns per call, per phase: (calls, bare).
fn call_pair(runtime: &Runtime, guest: &[u8], plan: BenchPlan) -> Result<PerPhase, SandboxError> {
    let mut calls = spawn_calls(runtime, guest)?;
    let mut bare = runtime.spawn(
        guest,
        SandboxOptions {
            name: "bench-callback".into(),
            execution: Execution::Callback,
            ..SandboxOptions::default()
        },
    )?;
    bare.sender().send(b"echo")?;
    drop(bare.receiver().recv()?);
    let msg = [7u8; 64];
    let phase = BenchPlan {
        batches: plan.batches.div_ceil(plan.phases).max(4),
        ..plan
    };
    let mut failure = None;
    let (mut named, mut unnamed) = (Vec::new(), Vec::new());
    for i in 0..plan.phases {
        for named_side in [i % 2 == 0, i % 2 == 1] {
            if named_side {
                named.push(batches(phase, || {
                    if failure.is_some() {
                        return;
                    }
                    let got = calls.call_with(
                        "echo",
                        msg.len(),
                        |mut b| b.copy_from(&msg),
                        None,
                        |out| out.len(),
                    );
                    match got {
                        Ok(64) => {}
                        Ok(n) => {
                            failure = Some(SandboxError::Trap {
                                sandbox: "bench-calls".into(),
                                message: format!("echo gave {n} bytes"),
                            })
                        }
                        Err(e) => {
                            failure = Some(SandboxError::Trap {
                                sandbox: "bench-calls".into(),
                                message: e.to_string(),
                            })
                        }
                    }
                }));
            } else {
                unnamed.push(batches(phase, || {
                    guest_round_trip(&mut bare, &msg, &mut failure)
                }));
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    calls.close(std::time::Duration::from_secs(10))?;
    bare.close(std::time::Duration::from_secs(10))?;
    Ok((named, unnamed))
}

/// Host calls of `len` bytes (64: `echo64` and its answer used; 1 MiB:
/// `sum` over the guest's buffer) through shmrt's `host-call`, and the same
/// through a plain wasmtime import that copies, in alternating phases: ns
/// per host call, per phase: (shmrt, copying).
fn host_call_pair(
    runtime: &Runtime,
    guest: &[u8],
    plan: BenchPlan,
    len: usize,
) -> Result<PerPhase, SandboxError> {
    let mut sb = spawn_calls(runtime, guest)?;
    let mut baseline = CopyingImport::new()?;
    let (export, per_sample) = if len == 64 {
        ("host_calls_64b", HOST_CALLS_PER_SAMPLE)
    } else {
        ("host_call_1mib", 4)
    };
    let samples = plan.batches.div_ceil(plan.phases).clamp(4, 50);
    let (mut ours, mut copies) = (Vec::new(), Vec::new());
    for i in 0..plan.phases {
        for our_side in [i % 2 == 0, i % 2 == 1] {
            let mut phase = Vec::with_capacity(samples);
            for _ in 0..samples {
                let t = Instant::now();
                if our_side {
                    sb.call(export, &per_sample.to_le_bytes())
                        .map_err(|e| SandboxError::Trap {
                            sandbox: "bench-calls".into(),
                            message: e.to_string(),
                        })?;
                } else {
                    baseline.run(len, per_sample)?;
                }
                phase.push(t.elapsed().as_nanos() as f64 / f64::from(per_sample));
            }
            if our_side {
                ours.push(phase);
            } else {
                copies.push(phase);
            }
        }
    }
    sb.close(std::time::Duration::from_secs(10))?;
    Ok((ours, copies))
}

/// The baseline of host calls: a module in plain wasmtime whose import
/// `copy_call(in, in_len, out, out_cap) -> len` copies the input out of
/// guest memory (as a host function of a copying runtime gets it), works
/// on the copy, and copies its output back in.
struct CopyingImport {
    store: wasmtime::Store<Option<wasmtime::Memory>>,
    run_64b: wasmtime::TypedFunc<u32, i64>,
    run_1mib: wasmtime::TypedFunc<u32, i64>,
}

/// The guest of [`CopyingImport`]: `run_64b(n)` calls the import `n` times
/// with 64 bytes and uses each 64-byte answer; `run_1mib(n)` hands it 1 MiB
/// `n` times and adds up the 8-byte sums.
const COPYING_GUEST: &str = r#"(module
  (import "bench" "copy_call" (func $copy (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 20)
  (func (export "run_64b") (param $n i32) (result i64)
    (local $acc i64)
    (block $done (loop $again
      (br_if $done (i32.eqz (local.get $n)))
      (i32.store8 (i32.const 0) (local.get $n))
      (drop (call $copy (i32.const 0) (i32.const 64) (i32.const 64) (i32.const 64)))
      (local.set $acc (i64.add (local.get $acc)
        (i64.extend_i32_u (i32.add (i32.load8_u (i32.const 64)) (i32.load8_u (i32.const 127))))))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br $again)))
    (local.get $acc))
  (func (export "run_1mib") (param $n i32) (result i64)
    (local $acc i64)
    (block $done (loop $again
      (br_if $done (i32.eqz (local.get $n)))
      (drop (call $copy (i32.const 65536) (i32.const 1048576) (i32.const 128) (i32.const 8)))
      (local.set $acc (i64.add (local.get $acc) (i64.load (i32.const 128))))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br $again)))
    (local.get $acc)))"#;

impl CopyingImport {
    fn new() -> Result<Self, SandboxError> {
        use wasmtime::{Caller, Config, Engine, Linker, Module, Store};
        let mut config = Config::new();
        // As the copy-call baseline: epoch checks on, as Extism runs plugins.
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(baseline_error)?;
        let wasm = wat::parse_str(COPYING_GUEST).map_err(|e| baseline_error(e.into()))?;
        let module = Module::new(&engine, wasm).map_err(baseline_error)?;
        let mut linker = Linker::<Option<wasmtime::Memory>>::new(&engine);
        linker
            .func_wrap(
                "bench",
                "copy_call",
                |mut c: Caller<'_, Option<wasmtime::Memory>>,
                 input: u32,
                 in_len: u32,
                 out: u32,
                 out_cap: u32|
                 -> wasmtime::Result<u32> {
                    let memory = c.data().expect("set after instantiation");
                    let mut copy = vec![0u8; in_len as usize];
                    memory.read(&c, input as usize, &mut copy)?;
                    let answer: Vec<u8> = if in_len == 64 {
                        copy
                    } else {
                        sum64(&copy).to_le_bytes().to_vec()
                    };
                    let n = answer.len().min(out_cap as usize);
                    memory.write(&mut c, out as usize, &answer[..n])?;
                    Ok(n as u32)
                },
            )
            .map_err(baseline_error)?;
        let mut store = Store::new(&engine, None);
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = linker
            .instantiate(&mut store, &module)
            .map_err(baseline_error)?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| baseline_error(wasmtime::Error::msg("no memory export")))?;
        *store.data_mut() = Some(memory);
        let run_64b = instance
            .get_typed_func(&mut store, "run_64b")
            .map_err(baseline_error)?;
        let run_1mib = instance
            .get_typed_func(&mut store, "run_1mib")
            .map_err(baseline_error)?;
        Ok(CopyingImport {
            store,
            run_64b,
            run_1mib,
        })
    }

    fn run(&mut self, len: usize, n: u32) -> Result<i64, SandboxError> {
        let f = if len == 64 {
            &self.run_64b
        } else {
            &self.run_1mib
        };
        f.call(&mut self.store, n).map_err(baseline_error)
    }
}
