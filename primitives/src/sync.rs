//! The one place that chooses between `core` and `loom` atomics, and how
//! a wasm build stores to a shared word.
//!
//! Only the words of the lock-free protocols that loom models (ring
//! cursors, the Treiber free lists, and the doorbell's eventcount as
//! `LoomDoorbell`) go through this facade; configuration words and peer
//! entries always use `core` atomics.
//!
//! The models build with `--cfg loom`, which selects this code, and the
//! `loom` feature, which brings the crate: a feature rather than a
//! `cfg(loom)` target dependency, so that crates depending on this one
//! (every plugin) never resolve loom.

#[cfg(all(loom, not(feature = "loom")))]
compile_error!(
    "`--cfg loom` needs the loom crate: add `--features loom` (RUSTFLAGS=\"--cfg loom\" cargo test -p shmrt-primitives --features loom --test loom_models --release)"
);

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, fence};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicU32, AtomicU64};

use core::sync::atomic::Ordering;

/// Stores `value` with at least `order` (Release or Relaxed): how the
/// slot pool writes a meta word (`owner_peer`, `next_free`).
///
/// In wasm every atomic store is sequentially consistent, and Cranelift
/// emits one on x86-64 as a `mov` followed by an `mfence`, ~18 ns of the
/// storing thread's time on the machines we measure; an atomic swap
/// (`xchg`) orders at least as much and costs ~5 ns there. So wasm builds
/// store meta words with a swap and drop the old value (measured: a 4 KiB
/// slot hand-off to a guest 70 ns faster). Elsewhere it is a plain store
/// with `order`.
///
/// Ring cursors keep the plain store: a locked instruction waits for the
/// stores before it (a frame, a reply) to reach their cache lines before
/// it fetches its own, and measured, round trips with the cursors swapped
/// were 4-8% slower, and a lazy consumer that published faster polled the
/// producer's cursor line harder (a stream at half speed).
#[inline(always)]
pub(crate) fn store_u32(word: &AtomicU32, value: u32, order: Ordering) {
    #[cfg(target_arch = "wasm32")]
    {
        let _ = order;
        word.swap(value, Ordering::AcqRel);
    }
    #[cfg(not(target_arch = "wasm32"))]
    word.store(value, order);
}
