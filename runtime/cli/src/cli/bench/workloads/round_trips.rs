//! Round trips across two cores: the cache-line floor, then native
//! against guest with both sides spinning, and with both sides parked on
//! futexes between messages.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use shmrt::SpinBudget;
use shmrt::doorbell_futex;
use shmrt::{Runtime, SandboxError};
use shmrt_primitives::SendError;

use super::{NativePeer, explain, finish, guest_round_trip, heap_segment, spawn_bench};
use crate::cli::bench::BenchPlan;
use crate::cli::bench::cpus::Cpus;
use crate::cli::bench::measure::{Measured, PerPhase, batches};

/// Measures the family: `floor_cacheline_rtt`, then the spinning and the
/// parked pairs with their ratios.
pub(super) fn record(
    runtime: &Runtime,
    guest: &[u8],
    plan: BenchPlan,
    cpus: &Cpus,
    measured: &mut Measured,
    step: &mut dyn FnMut(&str),
) -> Result<(), SandboxError> {
    step("floor_cacheline_rtt");
    measured.latency("floor_cacheline_rtt", cacheline_rtt(plan, cpus));
    step("rtt_native, rtt_guest_spin");
    let (native, in_guest) = spin_rtt_pair(runtime, guest, plan, cpus)?;
    measured.latency_pair(
        Some("guest_rtt_vs_native"),
        ("rtt_native", native),
        ("rtt_guest_spin", in_guest),
    );
    step("rtt_native_futex, rtt_guest_parked");
    let (native, in_guest) = parked_rtt_pair(runtime, guest, plan, cpus)?;
    measured.latency_pair(
        Some("parked_rtt_vs_native_futex"),
        ("rtt_native_futex", native),
        ("rtt_guest_parked", in_guest),
    );
    Ok(())
}

/// A counter bounced between this thread and an echo thread on the peer
/// CPU through one atomic word: the floor under every round trip.
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
