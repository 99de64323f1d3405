//! The raw host imports (module `shmrt`, see `wit/shmrt.wit`). On targets
//! other than wasm they are absent and calling them panics, so that the
//! crate still builds (and documents) on the host.

pub use shmrt_primitives::WaitOutcome;
pub use shmrt_primitives::call_header::import_codes;

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
        pub fn config_get(key_ptr: u32, key_len: u32, out_ptr: u32, out_cap: u32) -> i64;
        pub fn host_call(
            name_ptr: u32,
            name_len: u32,
            in_ptr: u32,
            in_len: u32,
            out_ptr: u32,
            out_cap: u32,
        ) -> i64;
        pub fn host_result(out_ptr: u32, out_cap: u32) -> i64;
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
    pub unsafe fn config_get(_: u32, _: u32, _: u32, _: u32) -> i64 {
        absent()
    }
    pub unsafe fn host_call(_: u32, _: u32, _: u32, _: u32, _: u32, _: u32) -> i64 {
        absent()
    }
    pub unsafe fn host_result(_: u32, _: u32) -> i64 {
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

/// Reads the configuration value of `key` into `out`: its length (written
/// only when it fits `out`), or an [`import_codes`] value (`NOT_FOUND`
/// when the host gave no such key). See [`crate::config`].
pub fn config_get(key: &[u8], out: &mut [u8]) -> i64 {
    // SAFETY: both pointer and length pairs describe live slices of our
    // memory; the host writes at most `out.len()` bytes into `out`.
    unsafe {
        imports::config_get(
            key.as_ptr() as usize as u32,
            key.len() as u32,
            out.as_mut_ptr() as usize as u32,
            out.len() as u32,
        )
    }
}

/// Calls the host function `name` with `input`: the output's length
/// (written into `out` only when it fits; else it is kept as the pending
/// result, see [`host_result`]), or an [`import_codes`] value. See
/// [`crate::host_fn`] for the typed form.
pub fn host_call(name: &[u8], input: &[u8], out: &mut [u8]) -> i64 {
    // SAFETY: each pointer and length pair describes a live slice of our
    // memory; the host writes at most `out.len()` bytes into `out`.
    unsafe {
        imports::host_call(
            name.as_ptr() as usize as u32,
            name.len() as u32,
            input.as_ptr() as usize as u32,
            input.len() as u32,
            out.as_mut_ptr() as usize as u32,
            out.len() as u32,
        )
    }
}

/// Copies the pending result of the last [`host_call`] (an output that did
/// not fit, or a failure's code and message) into `out`, as much as fits,
/// and gives its whole length; it is forgotten once it fit whole.
/// `NOT_FOUND` when none is pending.
pub fn host_result(out: &mut [u8]) -> i64 {
    // SAFETY: the pointer and length describe a live slice of our memory;
    // the host writes at most `out.len()` bytes into it.
    unsafe { imports::host_result(out.as_mut_ptr() as usize as u32, out.len() as u32) }
}
