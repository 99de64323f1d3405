//! The raw host imports (module `shmrt`, see `wit/shmrt.wit`). On targets
//! other than wasm they are absent and calling them panics, so that the
//! crate still builds (and documents) on the host.

pub use shmrt_primitives::WaitOutcome;

/// `wait` result: the host rang ([`WaitOutcome::Rang`]).
pub const WAIT_RANG: i32 = WaitOutcome::Rang.code();
/// `wait` result: the timeout passed ([`WaitOutcome::Timeout`]).
pub const WAIT_TIMEOUT: i32 = WaitOutcome::Timeout.code();
/// `wait` result: the host said goodbye ([`WaitOutcome::Goodbye`]).
pub const WAIT_GOODBYE: i32 = WaitOutcome::Goodbye.code();

#[cfg(target_family = "wasm")]
mod imports {
    #[link(wasm_import_module = "shmrt")]
    unsafe extern "C" {
        pub fn segment_base() -> u32;
        pub fn segment_size() -> u32;
        pub fn peer_id() -> u32;
        pub fn ring();
        pub fn wait(timeout_ns: i64) -> i32;
        pub fn log(level: i32, ptr: u32, len: u32);
        pub fn now_ns() -> u64;
    }
}

#[cfg(not(target_family = "wasm"))]
mod imports {
    fn absent() -> ! {
        panic!("shmrt host imports exist only inside a wasm sandbox")
    }
    pub unsafe fn segment_base() -> u32 {
        absent()
    }
    pub unsafe fn segment_size() -> u32 {
        absent()
    }
    pub unsafe fn peer_id() -> u32 {
        absent()
    }
    pub unsafe fn ring() {
        absent()
    }
    pub unsafe fn wait(_: i64) -> i32 {
        absent()
    }
    pub unsafe fn log(_: i32, _: u32, _: u32) {
        absent()
    }
    pub unsafe fn now_ns() -> u64 {
        absent()
    }
}

/// Guest address of the segment window.
pub fn segment_base() -> usize {
    // SAFETY: a host import without preconditions.
    unsafe { imports::segment_base() as usize }
}

/// Length of the window in bytes.
pub fn segment_size() -> usize {
    // SAFETY: `segment_size` takes no argument and touches none of our
    // memory: no precondition (like `segment_base` above).
    unsafe { imports::segment_size() as usize }
}

/// This guest's peer id (1..=255).
pub fn peer_id() -> u32 {
    // SAFETY: `peer_id` takes no argument and touches none of our memory:
    // no precondition.
    unsafe { imports::peer_id() }
}

/// Rings the guest-to-host doorbell.
pub fn ring() {
    // SAFETY: `ring` takes no argument and touches none of our memory (it
    // bumps the doorbell in the segment, which the host owns): no
    // precondition.
    unsafe { imports::ring() }
}

/// Blocks until the host rings, `timeout_ns` passes (negative: no
/// timeout) or the host says goodbye: a [`WaitOutcome`]'s code
/// ([`WaitOutcome::from_code`]), negative on an error.
pub fn wait(timeout_ns: i64) -> i32 {
    // SAFETY: `wait` takes a plain integer and touches none of our memory;
    // any value is valid (negative: no timeout): no precondition.
    unsafe { imports::wait(timeout_ns) }
}

/// Logs UTF-8 `text` at `level` (0 trace .. 4 error).
pub fn log(level: i32, text: &[u8]) {
    // SAFETY: the pointer and length describe a live slice of our memory.
    unsafe { imports::log(level, text.as_ptr() as usize as u32, text.len() as u32) }
}

/// The host's monotonic clock, nanoseconds.
pub fn now_ns() -> u64 {
    // SAFETY: `now_ns` takes no argument and touches none of our memory: no
    // precondition.
    unsafe { imports::now_ns() }
}
