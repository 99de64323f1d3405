//! The memory window: a wasmtime `MemoryCreator` whose linear memories can
//! map a segment file into themselves, so that guest and host share the
//! same pages.
//!
//! Each linear memory reserves its whole range (4 GiB plus the guard) as
//! `PROT_NONE`, makes the module's initial pages read-write, and grows by
//! making more pages read-write. A sandbox hands its segment to the memory
//! about to be created (through a thread-local, since instantiation runs on
//! the caller's thread); right after instantiation the runtime grows the
//! memory by the window's size, and that one growth maps the file there
//! `MAP_SHARED | MAP_FIXED` instead of anonymous pages. Later `memory.grow`
//! calls by the guest land after the window; accesses past the current
//! size stay `PROT_NONE` and trap.

use std::cell::RefCell;
use std::ffi::c_void;
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};
use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

/// 4 GiB: every 32-bit memory reserves its whole address range.
const RESERVATION_32: usize = 1 << 32;

/// A segment file to map as the next growth of the memory being created.
pub(crate) struct PendingWindow {
    pub file: Arc<File>,
    /// Bytes of the window (a multiple of 64 KiB).
    pub len: usize,
    /// Bytes of it mapped from the file (a multiple of the OS page, at most
    /// `len`); the rest is anonymous memory. A file another program made
    /// need not be a multiple of 64 KiB, and pages past its end must not
    /// be mapped from it.
    pub file_len: usize,
    /// Set once mapped: the window's offset in linear memory.
    pub placed_at: Arc<AtomicUsize>,
    /// Raised when a page of the file vanishes under the window (a
    /// file-backed segment truncated by someone else), when set.
    pub truncated: Option<Arc<std::sync::atomic::AtomicBool>>,
}

thread_local! {
    static PENDING: RefCell<Option<PendingWindow>> = const { RefCell::new(None) };
}

/// Makes `window` the window of the next linear memory created on this
/// thread, for the duration of `f` (the instantiation). The window is
/// cleared when `f` returns or unwinds, so that a panic inside it cannot
/// leave the window for an unrelated memory created later on this thread.
pub(crate) fn with_pending_window<R>(window: PendingWindow, f: impl FnOnce() -> R) -> R {
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            PENDING.with(|p| p.borrow_mut().take());
        }
    }
    PENDING.with(|p| *p.borrow_mut() = Some(window));
    let _clear = Clear;
    f()
}

/// Not placed yet.
pub(crate) const NOT_PLACED: usize = usize::MAX;

/// The engine's memory creator.
pub(crate) struct WindowMemoryCreator;

// SAFETY: the memories we return keep their base fixed for their lifetime
// (the whole range is reserved up front), are zero-filled (fresh anonymous
// pages; the window is the segment, which the runtime initialized), and
// keep `guard_size_in_bytes` unmapped after the reservation.
unsafe impl MemoryCreator for WindowMemoryCreator {
    fn new_memory(
        &self,
        ty: MemoryType,
        minimum: usize,
        maximum: Option<usize>,
        reserved_size_in_bytes: Option<usize>,
        guard_size_in_bytes: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        if ty.is_64() {
            return Err("64-bit memories (memory64) are not supported by shmrt".into());
        }
        let window = PENDING.with(|p| p.borrow_mut().take());
        let reservation = reserved_size_in_bytes
            .unwrap_or(RESERVATION_32)
            .max(minimum);
        let total = reservation
            .checked_add(guard_size_in_bytes)
            .ok_or("memory reservation overflows the address space")?;
        // SAFETY: a fresh anonymous reservation; nothing else refers to it.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                total,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }
        .map_err(|e| format!("could not reserve {total} bytes for linear memory: {e}"))?;
        let mut memory = WindowedMemory {
            base: base as *mut u8,
            total,
            reservation,
            size: 0,
            maximum: maximum.unwrap_or(reservation).min(reservation),
            window,
            _sigbus: None,
        };
        memory.make_accessible(minimum).map_err(|e| e.to_string())?;
        Ok(Box::new(memory))
    }
}

struct WindowedMemory {
    base: *mut u8,
    total: usize,
    reservation: usize,
    size: usize,
    maximum: usize,
    window: Option<PendingWindow>,
    _sigbus: Option<crate::sigbus::Guard>,
}

// SAFETY: the memory is plain address space owned by this value; wasmtime
// serializes access to it through its store.
unsafe impl Send for WindowedMemory {}
// SAFETY: through `&self` only the sizes and the base address are read
// (`byte_size`, `byte_capacity`, `as_ptr`); every change (`grow_to`, the
// window's placement) takes `&mut self`, and wasmtime serializes those
// through its store.
unsafe impl Sync for WindowedMemory {}

impl WindowedMemory {
    /// Makes `[size, new_size)` read-write with anonymous pages.
    fn make_accessible(&mut self, new_size: usize) -> std::io::Result<()> {
        if new_size > self.size {
            // SAFETY: the range is inside our reservation.
            unsafe {
                rustix::mm::mprotect(
                    self.base.add(self.size) as *mut c_void,
                    new_size - self.size,
                    MprotectFlags::READ | MprotectFlags::WRITE,
                )
            }?;
            self.size = new_size;
        }
        Ok(())
    }

    /// Maps the pending window's file at the current end.
    fn map_window(&mut self) -> std::io::Result<()> {
        let Some(w) = &self.window else { return Ok(()) };
        // SAFETY: `[size, size + len)` is inside our reservation (checked
        // by the caller) and only ours; MAP_FIXED replaces the PROT_NONE
        // pages with the shared file pages.
        unsafe {
            rustix::mm::mmap(
                self.base.add(self.size) as *mut c_void,
                w.file_len.min(w.len),
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::FIXED,
                &*w.file,
                0,
            )
        }?;
        let placed = self.size;
        self.size += w.file_len.min(w.len);
        let end = placed + w.len;
        w.placed_at.store(placed, Ordering::Release);
        if let Some(flag) = &w.truncated {
            // SAFETY: inside our reservation.
            let at = unsafe { self.base.add(placed) };
            self._sigbus = crate::sigbus::protect(at, w.file_len.min(w.len), flag);
        }
        // Anonymous pages for the rest of the window.
        self.make_accessible(end)
    }
}

// SAFETY: `as_ptr` stays fixed; `byte_size` bytes from it are accessible;
// growth never moves the base.
unsafe impl LinearMemory for WindowedMemory {
    fn byte_size(&self) -> usize {
        self.size
    }

    fn byte_capacity(&self) -> usize {
        self.reservation
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        if new_size > self.maximum {
            wasmtime::bail!(
                "memory can not grow to {new_size} bytes: the maximum is {}",
                self.maximum
            );
        }
        let unplaced = self
            .window
            .as_ref()
            .is_some_and(|w| w.placed_at.load(Ordering::Acquire) == NOT_PLACED);
        if unplaced && new_size >= self.size + self.window.as_ref().map_or(0, |w| w.len) {
            self.map_window()?;
        }
        self.make_accessible(new_size)?;
        Ok(())
    }

    fn as_ptr(&self) -> *mut u8 {
        self.base
    }
}

impl Drop for WindowedMemory {
    fn drop(&mut self) {
        // Unregister the window before unmapping it: once unmapped, the
        // address may be mapped again by anyone, and the SIGBUS handler
        // must not zero-fill that.
        drop(self._sigbus.take());
        // SAFETY: we own the whole reservation, window mapping included;
        // wasmtime drops the memory only when nothing uses it any more.
        if let Err(e) = unsafe { rustix::mm::munmap(self.base as *mut c_void, self.total) } {
            tracing::error!("unmapping a linear memory failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_the_instantiation_clears_the_pending_window() {
        let window = PendingWindow {
            file: Arc::new(File::open("/dev/null").expect("/dev/null opens")),
            len: 65536,
            file_len: 0,
            placed_at: Arc::new(AtomicUsize::new(NOT_PLACED)),
            truncated: None,
        };
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            with_pending_window(window, || panic!("instantiation panicked"))
        }));
        assert!(unwound.is_err());
        assert!(PENDING.with(|p| p.borrow().is_none()));
    }
}
