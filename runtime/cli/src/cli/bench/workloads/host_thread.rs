//! The guest on the host's thread, as a callback or a fiber: round trips
//! against the copy-call baseline (no core to cross on either side), and
//! payloads handed over in slots.

use shmrt::{Execution, Runtime, Sandbox, SandboxError, SandboxOptions};
use shmrt_primitives::checksum::sum64;

use super::copy_call::CopyCallGuest;
use super::slots::payload;
use super::{explain, finish, guest_round_trip};
use crate::cli::bench::BenchPlan;
use crate::cli::bench::cpus::Cpus;
use crate::cli::bench::measure::{
    Measured, PerPhase, batches, median, median_ratio, payload_samples,
};

/// Measures the family: `copy_call_64b` and `rtt_guest_callback` with
/// their ratio, the same round trips on every CPU at once, the batch,
/// `rtt_guest_fiber`, then the slot payloads of each size, callback and
/// fiber.
pub(super) fn record(
    runtime: &Runtime,
    guest: &[u8],
    plan: BenchPlan,
    cpus: &Cpus,
    measured: &mut Measured,
    step: &mut dyn FnMut(&str),
) -> Result<(), SandboxError> {
    step("rtt_guest_callback, copy_call_64b");
    let (callback, copies) = host_thread_rtt_pair(runtime, guest, plan, Execution::Callback)?;
    measured.latency_pair(
        Some("callback_rtt_vs_copy_call"),
        ("copy_call_64b", copies),
        ("rtt_guest_callback", callback),
    );
    step("rtt_guest_callback_parallel");
    measured.latency(
        "rtt_guest_callback_parallel",
        parallel_callback_rtt(runtime, guest, plan, cpus)?,
    );
    step("callback_batch_64b");
    let (batch, copies) = callback_batch_pair(runtime, guest, plan)?;
    measured.paired.push((
        "callback_batch_vs_copy_call",
        median_ratio(&batch, &copies, median),
    ));
    measured.latency("callback_batch_64b", batch.concat());
    step("rtt_guest_fiber");
    let (fiber, _) = host_thread_rtt_pair(runtime, guest, plan, Execution::Fiber)?;
    measured.latency("rtt_guest_fiber", fiber.concat());
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
            let samples = payload_on_host_thread(runtime, guest, plan, len, execution)?;
            measured.latency(name, samples);
        }
    }
    Ok(())
}

/// A bench guest on the host's thread (`execution`: fiber or callback),
/// sent `first` as its first message: `park` or `checksum` names the
/// loop entry's mode, and the callback entry echoes anything but
/// `checksum` (see examples/bench-guest).
pub(super) fn spawn_on_host_thread(
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

/// 64-byte round trips with echoing callback guests, one per host thread
/// and one thread per CPU (2 to 4, each pinned to its own), all at once: ns per round trip, each
/// thread's batches. Sandboxes driven by different threads share nothing
/// but the runtime (its engine and epoch ticker), so each thread's round
/// trip should cost what one alone costs (`rtt_guest_callback`).
fn parallel_callback_rtt(
    runtime: &Runtime,
    guest: &[u8],
    plan: BenchPlan,
    cpus: &Cpus,
) -> Result<Vec<f64>, SandboxError> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    let start = std::sync::Barrier::new(threads);
    let start = &start;
    let per_thread: Vec<Result<Vec<f64>, SandboxError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|i| {
                scope.spawn(move || {
                    // A CPU each (they start on the bench's one).
                    cpus.spread(i);
                    let sb = spawn_on_host_thread(runtime, guest, Execution::Callback, b"echo")
                        .and_then(|mut sb| {
                            drop(sb.receiver().recv()?);
                            Ok(sb)
                        });
                    // Every thread starts timing together, ready or not.
                    start.wait();
                    let mut sb = sb?;
                    let msg = [7u8; 64];
                    let mut failure = None;
                    // Every batch of the plan (not a phase's share): long
                    // enough that the threads overlap for all but the
                    // start, which a wake-up of each may stagger.
                    let samples = batches(plan, || guest_round_trip(&mut sb, &msg, &mut failure));
                    if let Some(e) = failure {
                        return Err(explain(sb, e));
                    }
                    finish(sb)?;
                    Ok(samples)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut samples = Vec::new();
    for r in per_thread {
        samples.extend(r?);
    }
    Ok(samples)
}

/// Requests in one batch of `callback_batch_64b`.
const BATCH: usize = 64;

/// 64 queued 64-byte requests answered by an echoing callback guest in
/// one call (sent as one batch, the answers read as one), against the
/// copy-call baseline, in alternating phases: ns per message, per phase:
/// (batch, copy-call).
fn callback_batch_pair(
    runtime: &Runtime,
    guest: &[u8],
    plan: BenchPlan,
) -> Result<PerPhase, SandboxError> {
    let mut sb = spawn_on_host_thread(runtime, guest, Execution::Callback, b"echo")?;
    drop(sb.receiver().recv()?);
    let mut baseline = CopyCallGuest::new(guest)?;
    let requests: Vec<[u8; 64]> = (0..BATCH).map(|i| [i as u8; 64]).collect();
    let mut out = [0u8; 64];
    // Samples of as many messages as the round trips' (a batch of 64 is
    // one op), against copy-calls timed as in the round trips' pair.
    let phase = BenchPlan {
        batches: plan.batches.div_ceil(plan.phases).max(4),
        ..plan
    };
    let batch_phase = BenchPlan {
        batch: plan.batch.div_ceil(BATCH).max(1),
        ..phase
    };
    let mut failure = None;
    let (mut batched, mut copies) = (Vec::new(), Vec::new());
    for i in 0..plan.phases {
        for guest_side in [i % 2 == 0, i % 2 == 1] {
            if guest_side {
                let per_batch = batches(batch_phase, || {
                    if failure.is_none()
                        && let Err(e) = batch_round_trip(&mut sb, &requests)
                    {
                        failure = Some(e);
                    }
                });
                batched.push(per_batch.iter().map(|ns| ns / BATCH as f64).collect());
            } else {
                copies.push(batches(phase, || {
                    if failure.is_none()
                        && let Err(e) = baseline.round_trip(&requests[0], &mut out)
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
    Ok((batched, copies))
}

/// One batch: every request sent as one, every answer read as they come
/// (in batches), each checked for its request's length and first byte.
fn batch_round_trip(sb: &mut Sandbox, requests: &[[u8; 64]]) -> Result<(), SandboxError> {
    sb.sender().send_batch(requests.iter().map(|r| &r[..]))?;
    let mut answered = 0;
    while answered < requests.len() {
        let mut wrong = None;
        sb.receiver().recv_batch(|m| {
            let want = requests.get(answered).map(|r| r[0]);
            if m.len() != 64 || m.bytes().u64_le(0).map(|w| w as u8) != want {
                wrong = Some(answered);
            }
            answered += 1;
        })?;
        if let Some(i) = wrong {
            return Err(SandboxError::Trap {
                sandbox: "bench-callback".into(),
                message: format!("answer {i} of a batch is not its request echoed"),
            });
        }
    }
    Ok(())
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
