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

use super::template::SegmentTemplate;

/// 4 GiB: every 32-bit memory reserves its whole address range.
pub(crate) const RESERVATION_32: usize = 1 << 32;

/// The guard after every linear memory's reservation, set explicitly on
/// the engine (`Config::memory_guard_size`, wasmtime's default) so that a
/// reservation made before the instantiation ([`GuestRegion`]) has the
/// size the engine asks for.
pub(crate) const GUARD_SIZE: usize = 32 << 20;

/// The address range of an in-process sandbox's linear memory, reserved
/// before its instantiation: its segment window is pages of the guest's
/// own memory, mapped copy-on-write from the runtime's laid-out template
/// of the segment ([`SegmentTemplate`]) when the memory grows into it (no
/// descriptor of its own), and the host reaches it through the same
/// pages. Shared by the linear memory and the host's view of the segment;
/// unmapped when both are gone.
pub(crate) struct GuestRegion {
    base: *mut u8,
    total: usize,
    /// Where the window starts: after the module's initial pages.
    window_at: usize,
    /// The segment laid out, mapped at the window when it is placed.
    template: Arc<SegmentTemplate>,
}

// SAFETY: plain address space owned by this value; what is in it is read
// and written through atomics and the segment's validated readers.
unsafe impl Send for GuestRegion {}
// SAFETY: `&self` gives out only the base address and sizes.
unsafe impl Sync for GuestRegion {}

impl std::fmt::Debug for GuestRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestRegion")
            .field("window_at", &self.window_at)
            .field("window_len", &self.template.window_len)
            .finish_non_exhaustive()
    }
}

impl GuestRegion {
    /// Reserves a 32-bit memory's range plus its guard, all `PROT_NONE`:
    /// the window at `window_at` is mapped from `template` when the memory
    /// grows into it ([`WindowedMemory::map_window`]). Until then nothing
    /// there is accessible: wasmtime relies on protected pages past a
    /// memory's size to trap (it elides bounds checks in a 4 GiB
    /// reservation), so a start function can neither read nor write it.
    pub fn reserve(window_at: usize, template: Arc<SegmentTemplate>) -> std::io::Result<Arc<Self>> {
        let total = RESERVATION_32 + GUARD_SIZE;
        if window_at
            .checked_add(template.window_len)
            .is_none_or(|end| end > RESERVATION_32)
        {
            return Err(std::io::Error::other(
                "the segment window does not fit a 32-bit memory after the initial pages",
            ));
        }
        // SAFETY: a fresh anonymous reservation; nothing else refers to it.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                total,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }? as *mut u8;
        Ok(Arc::new(GuestRegion {
            base,
            total,
            window_at,
            template,
        }))
    }

    /// Maps the template at the window, read-write and private: the
    /// segment laid out, each page copied for this sandbox at its first
    /// write.
    fn map_template(&self) -> std::io::Result<()> {
        // SAFETY: the window is inside our reservation and not yet in use
        // (the memory grows into it now); MAP_FIXED replaces its PROT_NONE
        // pages. The file is sealed: its pages can not go away.
        unsafe {
            rustix::mm::mmap(
                self.window_ptr() as *mut c_void,
                self.template.window_len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::FIXED,
                &self.template.file,
                0,
            )
        }?;
        Ok(())
    }

    /// The window's first byte.
    pub fn window_ptr(&self) -> *mut u8 {
        // SAFETY: `window_at` is inside the reservation (checked above).
        unsafe { self.base.add(self.window_at) }
    }

    /// The window's length.
    pub fn window_len(&self) -> usize {
        self.template.window_len
    }
}

impl Drop for GuestRegion {
    fn drop(&mut self) {
        // SAFETY: the reservation is ours, and nothing uses it any more:
        // the linear memory and the host's view each hold an `Arc`.
        if let Err(e) = unsafe { rustix::mm::munmap(self.base as *mut c_void, self.total) } {
            tracing::error!("unmapping a linear memory failed: {e}");
        }
    }
}

/// A segment to make the next growth of the memory being created: a file
/// to map there, or (`region`) the memory's own pages, reserved and laid
/// out before the instantiation.
pub(crate) struct PendingWindow {
    pub file: Option<Arc<File>>,
    /// The reservation the memory is to adopt, its window already laid
    /// out (an in-process sandbox).
    pub region: Option<Arc<GuestRegion>>,
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
    /// Raised by the runtime around its own growth that places a window.
    static PLACING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (the runtime's growth of a memory by its window) as the one
/// growth that may place the window: a start function's growth never
/// does, whatever its size.
pub(crate) fn placing_window<R>(f: impl FnOnce() -> R) -> R {
    struct Lower;
    impl Drop for Lower {
        fn drop(&mut self) {
            PLACING.with(|p| p.set(false));
        }
    }
    PLACING.with(|p| p.set(true));
    let _lower = Lower;
    f()
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
        if let Some(region) = window.as_ref().and_then(|w| w.region.clone()) {
            // The reservation made before the instantiation, with the
            // segment laid out at its window.
            if reservation > RESERVATION_32 || guard_size_in_bytes > GUARD_SIZE {
                return Err(format!(
                    "the engine asks for a {reservation}-byte reservation and a \
                     {guard_size_in_bytes}-byte guard, more than the region reserved for it"
                ));
            }
            if minimum > region.window_at {
                return Err("the module's initial memory overlaps its segment window".into());
            }
            let mut memory = WindowedMemory {
                base: region.base,
                total: region.total,
                reservation: RESERVATION_32,
                size: 0,
                maximum: maximum.unwrap_or(RESERVATION_32).min(RESERVATION_32),
                window,
                _sigbus: None,
                region: Some(region),
            };
            memory.make_accessible(minimum).map_err(|e| e.to_string())?;
            return Ok(Box::new(memory));
        }
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
            region: None,
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
    _sigbus: Option<super::sigbus::Guard>,
    /// The adopted reservation, when it was made before the instantiation
    /// (unmapped by its last holder, not by this memory).
    region: Option<Arc<GuestRegion>>,
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

    /// Maps the pending window's file at the current end (or, in an
    /// adopted region, takes the pages laid out there).
    fn map_window(&mut self) -> std::io::Result<()> {
        let Some(w) = &self.window else { return Ok(()) };
        if let Some(region) = &self.region {
            if self.size != region.window_at {
                return Err(std::io::Error::other(
                    "the memory grew before its segment window was placed",
                ));
            }
            region.map_template()?;
            w.placed_at.store(self.size, Ordering::Release);
            self.size += region.window_len();
            return Ok(());
        }
        let Some(file) = &w.file else {
            return Err(std::io::Error::other(
                "a segment window with neither file nor region",
            ));
        };
        // SAFETY: `[size, size + len)` is inside our reservation (checked
        // by the caller) and only ours; MAP_FIXED replaces the PROT_NONE
        // pages with the shared file pages.
        unsafe {
            rustix::mm::mmap(
                self.base.add(self.size) as *mut c_void,
                w.file_len.min(w.len),
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::FIXED,
                &**file,
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
            self._sigbus = super::sigbus::protect(at, w.file_len.min(w.len), flag);
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
        if unplaced
            && PLACING.with(|p| p.get())
            && new_size >= self.size + self.window.as_ref().map_or(0, |w| w.len)
        {
            self.map_window()?;
        } else if unplaced
            && let Some(region) = &self.region
            && new_size > region.window_at
        {
            // A start function growing memory 0 into the laid-out window.
            wasmtime::bail!(
                "memory can not grow to {new_size} bytes before the segment window is placed \
                 at {} (a start function may not grow this memory)",
                region.window_at
            );
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
        if self.region.is_some() {
            // Unmapped by the region's last holder (the host's view of
            // the segment may outlive this memory).
            return;
        }
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
            file: Some(Arc::new(File::open("/dev/null").expect("/dev/null opens"))),
            region: None,
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
