//! An asymmetric fence: one side of a Dekker pair that runs often keeps
//! only a compiler fence, and the side that runs rarely pays for both with
//! `membarrier(2)`, which makes every running thread of the process
//! execute a full memory barrier before it returns (a thread not running
//! passes one in the scheduler). So when the rare side stores, calls
//! [`heavy`], then loads, and the frequent side stores, fences the
//! compiler, then loads, one of the two loads sees the other side's
//! store, as with a SeqCst fence on each side.
//!
//! Used twice:
//! - for the wakes of a sandbox whose two host ends take turns on one
//!   thread (`SandboxShared::ends_apart`): the frequent side is every send
//!   and receive, the rare side the first use of an end found away from
//!   its sandbox;
//! - for the epoch ticker (`epoch_ticker`): the frequent side is every turn
//!   of a guest on the host's thread (it raises its flag, then looks
//!   whether the ticker sleeps), the rare side the ticker going to sleep.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::thread::{MembarrierCommand, membarrier};

/// Whether this process can use [`heavy`]: the private expedited command
/// registered and tried once (Linux 4.14; a seccomp filter may refuse it,
/// and then every sandbox keeps its fences).
pub(crate) fn available() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        membarrier(MembarrierCommand::RegisterPrivateExpedited).is_ok()
            && membarrier(MembarrierCommand::PrivateExpedited).is_ok()
    }) && !REFUSED.load(Ordering::Relaxed)
}

/// Set when [`heavy`] was refused after [`available`] said yes: from then
/// on nothing new relies on it (sandboxes and guests made later fence
/// both sides), and the refusal is logged once.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// The rare side's barrier: a full memory barrier on every thread of the
/// process that runs now. Only called once [`available`] said yes; should
/// the kernel refuse it after all, the global command (slower, and needing
/// no registration) does the same. Should that be refused too (a kernel
/// with `nohz_full` CPUs, after the command worked once), a wake that
/// races it may be late: a blocking wait looks again after a nap of at
/// most 50 ms, an async one at its next wake, and the ticker wakes within
/// its longest nap (1 s). That holds for every later race of what was
/// made before the refusal (a sandbox whose ends were parted once, a
/// guest's ticker flag), each time; what is made after it fences both
/// sides. It is logged once.
pub(crate) fn heavy() {
    if membarrier(MembarrierCommand::PrivateExpedited).is_ok()
        || membarrier(MembarrierCommand::Global).is_ok()
    {
        return;
    }
    std::sync::atomic::fence(Ordering::SeqCst);
    if !REFUSED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "membarrier refused after it was registered: a wake-up (of a sandbox whose ends \
             were parted, or of the epoch ticker) may come late (at most one nap); sandboxes \
             made from now on fence both sides"
        );
    }
}
