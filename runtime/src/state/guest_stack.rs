//! The stack guest code runs on. wasmtime bounds a guest's wasm frames at
//! [`MAX_WASM_STACK`] below the point where the host called it, on
//! whatever stack that is; the host's frames under the deepest wasm frame
//! (imports, WASI, trap handling) come on top. A thread with less room
//! than that overflows for real, and Rust aborts the process. So the
//! threads shmrt spawns for guests get [`GUEST_THREAD_STACK`] whatever
//! `RUST_MIN_STACK` says, fibers get [`FIBER_STACK`], and a call into a
//! guest on a thread shmrt did not make (a callback, a start function,
//! `_initialize`) is refused, before any guest code runs, when less than
//! [`GUEST_ENTRY_STACK`] is left where it is made.

use std::cell::Cell;

use crate::error::SandboxError;

/// The most stack a guest's wasm frames may take (wasmtime's
/// `max_wasm_stack`): recursion past it traps ("call stack exhausted")
/// and ends that sandbox only.
pub const MAX_WASM_STACK: usize = 512 << 10;

/// Room kept for host frames under the deepest wasm frame.
const HOST_FRAMES: usize = 1 << 20;

/// What must be left of a thread's stack where it calls into a guest on
/// the host's thread; a call with less is refused
/// ([`SandboxError::Refused`]).
pub const GUEST_ENTRY_STACK: usize = MAX_WASM_STACK + HOST_FRAMES;

/// The stack of the threads shmrt spawns to run guests, and what to give
/// a thread of yours that drives callback guests (sends, receives,
/// joins) or spawns a module with a start function: the entry stack and
/// room for the caller's own frames. Rust's default thread stack (2 MiB)
/// is enough unless `RUST_MIN_STACK` lowers it; only touched pages cost
/// memory.
pub const GUEST_THREAD_STACK: usize = GUEST_ENTRY_STACK + (512 << 10);

/// A fiber guest's stack (wasmtime's `async_stack_size`): its wasm frames
/// and the host's under them, as on a thread.
pub(crate) const FIBER_STACK: usize = GUEST_THREAD_STACK;

/// This thread's stack: (lowest usable address, highest address), cached.
fn stack_bounds() -> Option<(usize, usize)> {
    thread_local! {
        static BOUNDS: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
    }
    BOUNDS.with(|b| {
        if b.get().is_none() {
            b.set(query_stack_bounds());
        }
        b.get()
    })
}

fn query_stack_bounds() -> Option<(usize, usize)> {
    // SAFETY: `attr` is initialized by `pthread_getattr_np` before it is
    // read and destroyed once; the out-pointers are valid locals.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let (mut addr, mut size, mut guard) = (std::ptr::null_mut(), 0, 0);
        let ok = libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0
            && libc::pthread_attr_getguardsize(&attr, &mut guard) == 0;
        libc::pthread_attr_destroy(&mut attr);
        let low = addr as usize;
        ok.then(|| (low + guard, low + size))
    }
}

/// Bytes of stack left below this frame, `None` when that can not be
/// told (no bounds, or running on a stack that is not the thread's own,
/// such as a coroutine's).
pub(crate) fn stack_left() -> Option<usize> {
    let here = 0u8;
    let sp = std::hint::black_box(&here) as *const u8 as usize;
    let (low, high) = stack_bounds()?;
    (low..high).contains(&sp).then(|| sp - low)
}

/// Refuses to enter `sandbox`'s guest code on this thread when it has
/// less than [`GUEST_ENTRY_STACK`] left.
pub(crate) fn check_room(sandbox: &str) -> Result<(), SandboxError> {
    match stack_left() {
        Some(left) if left < GUEST_ENTRY_STACK => Err(SandboxError::Refused {
            sandbox: sandbox.to_owned(),
            reason: format!(
                "this thread has {} KiB of stack left, and guest code on it needs {} KiB (its \
                 wasm stack limit and the host's frames under it): call it from a thread with \
                 more stack (std::thread::Builder::stack_size(shmrt::GUEST_THREAD_STACK)), or \
                 run it in Execution::Thread or Execution::Fiber",
                left >> 10,
                GUEST_ENTRY_STACK >> 10
            ),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stack_left_is_told_and_shrinks_with_depth() {
        let top = stack_left().expect("a thread's stack has bounds");
        fn deeper() -> usize {
            let pad = std::hint::black_box([0u8; 4096]);
            stack_left().unwrap() + usize::from(pad[0])
        }
        assert!(deeper() < top);
        let small = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(|| (stack_left().unwrap(), check_room("small").is_err()))
            .unwrap()
            .join()
            .unwrap();
        assert!(small.0 < 256 << 10, "{}", small.0);
        assert!(small.1, "a 256 KiB thread is refused");
        let big = std::thread::Builder::new()
            .stack_size(GUEST_THREAD_STACK)
            .spawn(|| check_room("big").is_ok())
            .unwrap()
            .join()
            .unwrap();
        assert!(big, "a thread of GUEST_THREAD_STACK may enter guests");
    }
}
