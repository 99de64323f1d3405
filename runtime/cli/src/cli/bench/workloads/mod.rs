//! The in-process ladder of workloads ([`run`]), one file per family:
//! round trips across two cores ([`round_trips`]), streams and payloads
//! in slots ([`slots`]), the guest on the host's thread ([`host_thread`]),
//! the C guest against the Rust one ([`c_guest`]), calls by name and host
//! functions ([`calls`]), spawn cost and density ([`density`]); the
//! copy-call baseline ([`copy_call`]); and what the families share:
//! spawning and ending a bench guest, a heap segment between two native
//! threads, a native peer.

mod c_guest;
mod calls;
mod copy_call;
mod density;
mod host_thread;
mod round_trips;
mod slots;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shmrt::SpinBudget;
use shmrt::{Execution, Runtime, Sandbox, SandboxError, SandboxOptions};
use shmrt_primitives::heap_region::HeapRegion;
use shmrt_primitives::{Segment, SegmentConfig, SegmentLayout};

use super::BenchPlan;
use super::cpus::Cpus;
use super::measure::Measured;
use super::report::{BenchReport, machine};

/// Runs every workload of the ladder, family by family. `guest` is the
/// bench guest module (`examples/bench-guest`); `progress` hears each
/// workload's name.
pub(super) fn run(
    guest: &[u8],
    plan: BenchPlan,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, SandboxError> {
    let runtime = Runtime::new()?;
    // Before pinning: the CPUs this process may use.
    let machine = machine();
    let cpus = Cpus::pin();
    let mut measured = Measured::default();
    let step: &mut dyn FnMut(&str) = &mut progress;
    round_trips::record(&runtime, guest, plan, &cpus, &mut measured, step)?;
    slots::record(&runtime, guest, plan, &cpus, &mut measured, step)?;
    // The guest on the host's thread: no core to cross.
    host_thread::record(&runtime, guest, plan, &cpus, &mut measured, step)?;
    // The same, from C through the guest SDK's C ABI, when it can be built.
    let mut not_measured = Vec::new();
    if let Some(why) = c_guest::record(&runtime, guest, plan, &mut measured, step)? {
        not_measured.extend(c_guest::RATIO_KEYS.map(|key| (key, why.clone())));
    }
    // The plugin contract: calls by name, host functions.
    calls::record(&runtime, guest, plan, &mut measured, step)?;
    step(&format!("density: {} sandboxes", plan.sandboxes));
    let notes = density::record(&runtime, guest, plan, &mut measured)?;
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
        workloads: measured.workloads,
        paired: measured.paired,
        notes,
        not_measured,
    })
}

/// A bench guest on a thread of its own, started on the peer CPU, sent
/// `mode` as its first message (see examples/bench-guest).
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

/// Says goodbye to the guest, reads what it still sends (giving up after
/// 10 s of silence) and joins it.
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
