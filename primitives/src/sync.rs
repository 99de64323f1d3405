//! The one place that chooses between `core` and `loom` atomics, and how
//! a wasm build stores to a shared word.
//!
//! Only the words of the two lock-free protocols that loom models (ring
//! cursors, the Treiber free lists) go through this facade; configuration
//! words and peer entries always use `core` atomics.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicU32, AtomicU64};

use core::sync::atomic::Ordering;

/// Stores `value` with at least `order` (Release or Relaxed), for the
/// stores on a message's way: the producer's cursors, an eager consumer's
/// `read`, and the slot pool's metas.
///
/// In wasm every atomic store is sequentially consistent, and Cranelift
/// emits one on x86-64 as a `mov` followed by an `mfence`, which costs
/// ~18 ns on the machines we measure. An atomic swap (`xchg`, a locked
/// instruction) orders at least as much and costs ~5 ns there, so wasm
/// builds store with a swap and drop the old value. Elsewhere it is a plain
/// store with `order`.
///
/// A lazy consumer's `read` keeps the plain store (see
/// `Consumer::publish`).
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
