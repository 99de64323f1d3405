//! Running guest code, above the sandbox's state: the imports a guest
//! calls (`host_imports.rs`, mirroring `wit/shmrt.wit`, and WASI's bounded
//! `poll_oneoff`, `wasi_poll.rs`), a guest on a thread of its own
//! (`guest_thread.rs`) or on the host's thread as a fiber or a callback
//! (`guest_driver.rs`), how any of them ends (`guest_end.rs`), and the
//! handle that joins or stops it (`handle.rs`).

pub(crate) mod callback_cursors;
pub(crate) mod guest_driver;
pub(crate) mod guest_end;
pub(crate) mod guest_thread;
pub(crate) mod handle;
pub(crate) mod host_functions;
pub mod host_imports;
pub(crate) mod wasi_poll;
