//! A zeroed, 64-byte aligned heap allocation to hold a segment in one
//! process (native-to-native channels, tests, benchmarks).

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;

/// Zeroed heap memory aligned to 64 bytes, freed on drop.
pub struct HeapRegion {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the region is plain memory owned by this value; sharing it across
// threads is what it is for, and all shared access goes through atomics.
unsafe impl Send for HeapRegion {}
// SAFETY: `&HeapRegion` hands out only the base pointer and length (never
// a reference into the bytes); what is done through the pointer is the
// user's, with atomics for anything shared, as for `Send` above.
unsafe impl Sync for HeapRegion {}

impl std::fmt::Debug for HeapRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeapRegion")
            .field("ptr", &self.ptr)
            .field("len", &self.layout.size())
            .finish()
    }
}

impl HeapRegion {
    /// Allocates `len` zeroed bytes (at least 1). Aborts like `Vec` when
    /// memory is exhausted.
    pub fn zeroed(len: usize) -> Self {
        let layout = Layout::from_size_align(len.max(1), 64).expect("region size overflows isize");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        HeapRegion { ptr, layout }
    }

    /// Base address.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Never true.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The bytes, for tests that scribble on a segment.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: we own `len` initialized (zeroed) bytes exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for HeapRegion {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}
