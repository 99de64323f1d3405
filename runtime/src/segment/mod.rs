//! The bottom layer: the segment and the memory it lives in. The file
//! behind a segment and the host's mapping of it (`file.rs`), who serves a
//! named one (`owner.rs`), the laid-out template an in-process window
//! maps (`template.rs`), the window inside a guest's linear memory
//! (`memory_window.rs`), surviving a file truncated under its mappings
//! (`sigbus.rs`), the futex doorbells (`doorbell_futex.rs`), and reading
//! a segment file for `shmrt inspect` (`inspect.rs`). Nothing here knows
//! of sandboxes, guests or wasmtime stores.

pub mod doorbell_futex;
pub(crate) mod file;
pub mod inspect;
pub(crate) mod memory_window;
pub(crate) mod owner;
pub(crate) mod sigbus;
pub(crate) mod template;

/// CLOCK_MONOTONIC in nanoseconds: the clock heartbeats are read with by
/// every process on the machine.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}
