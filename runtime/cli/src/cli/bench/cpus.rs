//! The two CPUs of a bench run, the bench's thread pinned to one and its
//! peers started on the other ([`Cpus`]).

/// The two CPUs a bench run uses: this thread stays on the host CPU, and
/// every peer (an echo thread, a guest's thread) starts on the peer CPU,
/// so that each pair runs across two CPUs, as a sandbox on a core of its
/// own does. Unpinned, a parked pair sometimes shares a CPU (a wake-up is
/// then a context switch, ~4 us here) and sometimes not (an idle CPU wakes,
/// ~40 us in this VM), and which one a workload gets flips from run to
/// run. Restores this thread's CPUs when dropped. Pins nothing with fewer
/// than two CPUs.
pub(super) struct Cpus {
    pinned: Option<(rustix::thread::CpuSet, rustix::thread::CpuSet)>,
    before: Option<rustix::thread::CpuSet>,
}

impl Cpus {
    pub(super) fn pin() -> Self {
        use rustix::thread::{sched_getaffinity, sched_setaffinity};
        let before = sched_getaffinity(None).ok();
        let pinned = before.as_ref().and_then(|all| {
            let mut usable = usable(all);
            let (host, peer) = (usable.next()?, usable.next()?);
            let pinned = (only(host), only(peer));
            sched_setaffinity(None, &pinned.0).ok()?;
            Some(pinned)
        });
        Cpus { pinned, before }
    }

    /// Runs `start` on the peer CPU: the threads it starts run there. This
    /// thread goes back to the host CPU afterwards.
    pub(super) fn on_peer<T>(&self, start: impl FnOnce() -> T) -> T {
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

    /// Pins this thread to the `i`-th CPU this run may use (counting
    /// round), so that threads started from the pinned bench thread spread
    /// over every CPU instead of sharing the host's. Pins nothing when the
    /// run pins nothing.
    pub(super) fn spread(&self, i: usize) {
        let (Some(all), Some(_)) = (&self.before, &self.pinned) else {
            return;
        };
        let count = usable(all).count();
        if let Some(cpu) = usable(all).nth(i % count.max(1)) {
            // Failing leaves it on the host CPU: slower, never wrong.
            let _ = rustix::thread::sched_setaffinity(None, &only(cpu));
        }
    }
}

/// The CPUs of `all`, in order.
fn usable(all: &rustix::thread::CpuSet) -> impl Iterator<Item = usize> + '_ {
    (0..rustix::thread::CpuSet::MAX_CPU).filter(|&c| all.is_set(c))
}

/// The set of CPU `cpu` alone.
fn only(cpu: usize) -> rustix::thread::CpuSet {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    set
}

impl Drop for Cpus {
    fn drop(&mut self) {
        if let (Some(_), Some(before)) = (&self.pinned, &self.before) {
            let _ = rustix::thread::sched_setaffinity(None, before);
        }
    }
}
