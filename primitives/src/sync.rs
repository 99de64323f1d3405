//! The one place that chooses between `core` and `loom` atomics.
//!
//! Only the words of the two lock-free protocols that loom models (ring
//! cursors, the Treiber free lists) go through this facade; configuration
//! words and peer entries always use `core` atomics.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicU32, AtomicU64};
