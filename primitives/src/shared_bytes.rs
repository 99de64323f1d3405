//! Views of payload bytes in shared memory that the other side may write
//! at any moment: [`SharedBytes`] to read, [`SharedBytesMut`] to fill.
//!
//! A `&[u8]` tells the compiler the bytes do not change while it lives,
//! so it may load a byte twice (once to check it, once to use it) or keep
//! a value it checked in place of a fresh load. Over memory a guest or
//! another process writes, that assumption is false, and a check can be
//! undone after it passed. These views hold a raw pointer and a length
//! (as wasmtime's `SharedMemory::data` hands out `&[UnsafeCell<u8>]`);
//! every read is one load through the raw pointer into a value the caller
//! owns, and no reference over the bytes is ever made by the safe methods.
//!
//! What a view promises: the range is in bounds and stays mapped for the
//! view's lifetime `'a`. What it does not: the contents. If the other side
//! writes while we read, we get some mix of old and new bytes (each byte
//! one or the other), never an out-of-bounds access. So copy out, or read
//! words at offsets, then validate the copy: parse the local, never the
//! shared bytes. Such a racing write is outside what the Rust memory model
//! describes (the other party is a process or a wasm guest, not Rust code
//! in this one); these accesses are what a `memcpy` or a `read(2)` into
//! shared memory does, and the bytes are treated as untrusted input.
//!
//! The `unsafe` accessors [`SharedBytes::as_slice`] and
//! [`SharedBytesMut::as_mut_slice`] are for a side that trusts its peer not
//! to write meanwhile (a guest trusts its host, which can rewrite its
//! whole memory anyway).

use core::marker::PhantomData;
use core::ops::{Bound, RangeBounds};

/// Bytes in shared memory, readable through copies. See the module docs.
#[derive(Clone, Copy)]
pub struct SharedBytes<'a> {
    ptr: *const u8,
    len: usize,
    _bytes: PhantomData<&'a [core::cell::UnsafeCell<u8>]>,
}

// SAFETY: the view only reads through raw pointers; the memory is shared
// by design and another thread reading it is no different from the peer.
unsafe impl Send for SharedBytes<'_> {}
// SAFETY: `&SharedBytes` gives only copies out through the same raw
// pointer; the bytes are shared by design, so readers on several threads
// are no different from the peer (see `Send` just above).
unsafe impl Sync for SharedBytes<'_> {}

/// Bytes in shared memory reserved for us to fill. See the module docs.
pub struct SharedBytesMut<'a> {
    ptr: *mut u8,
    len: usize,
    _bytes: PhantomData<&'a mut [core::cell::UnsafeCell<u8>]>,
}

// SAFETY: the view writes and reads only through its raw pointer, into
// bytes shared by design, so the thread that does it does not matter (as
// for `SharedBytes`); it is unique (not `Clone`), so moving it moves the
// only writer.
unsafe impl Send for SharedBytesMut<'_> {}

/// `start..end` of `range` within `len`, or `None` if out of bounds.
fn bounds(range: impl RangeBounds<usize>, len: usize) -> Option<(usize, usize)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.checked_add(1)?,
        Bound::Excluded(&e) => e,
        Bound::Unbounded => len,
    };
    (start <= end && end <= len).then_some((start, end))
}

impl<'a> SharedBytes<'a> {
    /// A view of `len` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr..ptr + len` must be readable (mapped, and inside one
    /// allocation or mapping) for all of `'a`. Its contents may change at
    /// any time.
    #[inline(always)]
    pub unsafe fn from_raw_parts(ptr: *const u8, len: usize) -> Self {
        SharedBytes {
            ptr,
            len,
            _bytes: PhantomData,
        }
    }

    /// A view of bytes nobody else writes (for tests and for data that
    /// is ours).
    #[inline(always)]
    pub fn from_slice(bytes: &'a [u8]) -> Self {
        // SAFETY: a live slice is readable for 'a.
        unsafe { Self::from_raw_parts(bytes.as_ptr(), bytes.len()) }
    }

    /// Number of bytes.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of the first byte.
    #[inline(always)]
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// Copies the bytes into `dst` with one `memcpy`.
    ///
    /// # Panics
    ///
    /// If `dst.len()` differs from [`Self::len`] (as
    /// `<[u8]>::copy_from_slice`); take a sub-view with [`Self::get`]
    /// first to copy part.
    #[inline(always)]
    pub fn copy_to(&self, dst: &mut [u8]) {
        assert_eq!(
            dst.len(),
            self.len,
            "copy_to: destination length differs from the view's"
        );
        // SAFETY: the source is readable for len bytes (constructor), the
        // destination is a unique slice of len bytes, and they do not
        // overlap (a `&mut [u8]` can not point into bytes another party
        // writes without breaking its own contract).
        unsafe { core::ptr::copy_nonoverlapping(self.ptr, dst.as_mut_ptr(), self.len) }
    }

    /// The bytes of `range`, or `None` if it is out of bounds.
    #[inline(always)]
    pub fn get(&self, range: impl RangeBounds<usize>) -> Option<SharedBytes<'a>> {
        let (start, end) = bounds(range, self.len)?;
        // SAFETY: start..end lies inside this view.
        Some(unsafe { Self::from_raw_parts(self.ptr.add(start), end - start) })
    }

    /// The byte at `index`, loaded once.
    #[inline(always)]
    pub fn byte(&self, index: usize) -> Option<u8> {
        // SAFETY: index < len, inside the view.
        (index < self.len).then(|| unsafe { self.ptr.add(index).read() })
    }

    /// `N` bytes at `offset`, loaded once (any alignment).
    #[inline(always)]
    pub fn array<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        // SAFETY: offset + N <= len, inside the view; read_unaligned has no
        // alignment requirement and makes no reference.
        (end <= self.len)
            .then(|| unsafe { (self.ptr.add(offset) as *const [u8; N]).read_unaligned() })
    }

    /// The little-endian u32 at `offset` (any alignment), loaded once.
    #[inline(always)]
    pub fn u32_le(&self, offset: usize) -> Option<u32> {
        self.array(offset).map(u32::from_le_bytes)
    }

    /// The little-endian u64 at `offset` (any alignment), loaded once.
    #[inline(always)]
    pub fn u64_le(&self, offset: usize) -> Option<u64> {
        self.array(offset).map(u64::from_le_bytes)
    }

    /// The bytes one by one, each loaded once as the iterator reaches it.
    #[inline(always)]
    pub fn iter(&self) -> impl Iterator<Item = u8> + 'a {
        let view = *self;
        (0..view.len).map(move |i| {
            // SAFETY: i < len, inside the view.
            unsafe { view.ptr.add(i).read() }
        })
    }

    /// A copy of the bytes (one `memcpy`).
    #[cfg(any(feature = "std", test))]
    pub fn to_vec(&self) -> std::vec::Vec<u8> {
        let mut out = std::vec![0u8; self.len];
        self.copy_to(&mut out);
        out
    }

    /// Writes the bytes to `w`, copied out in blocks through a buffer on
    /// the stack, so that `w` never sees a slice of shared memory.
    #[cfg(any(feature = "std", test))]
    pub fn write_to(&self, mut w: impl std::io::Write) -> std::io::Result<()> {
        const BLOCK: usize = 16 * 1024;
        let mut buf = [0u8; BLOCK];
        let mut at = 0;
        while at < self.len {
            let n = (self.len - at).min(BLOCK);
            let part = self.get(at..at + n).expect("inside the view");
            part.copy_to(&mut buf[..n]);
            w.write_all(&buf[..n])?;
            at += n;
        }
        Ok(())
    }

    /// The bytes as a plain slice, with no copy.
    ///
    /// # Safety
    ///
    /// Nobody may write these bytes while the slice lives: the other side
    /// is trusted to follow the protocol (a guest reading what its host
    /// sent), or it is stopped. A write under a live `&[u8]` is undefined
    /// behaviour, and code handed the slice may rely on bytes it has
    /// checked staying as they were.
    #[inline(always)]
    pub unsafe fn as_slice(&self) -> &'a [u8] {
        // SAFETY: readable for 'a (constructor); stability is the caller's
        // promise.
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl core::fmt::Debug for SharedBytes<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SharedBytes")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

impl<'a> SharedBytesMut<'a> {
    /// A view of `len` writable bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr..ptr + len` must be readable and writable (mapped, inside one
    /// allocation or mapping) for all of `'a`, and reserved for the view's
    /// holder by the protocol (a grant or a slot it allocated): no other
    /// view of this side writes them meanwhile.
    #[inline(always)]
    pub unsafe fn from_raw_parts(ptr: *mut u8, len: usize) -> Self {
        SharedBytesMut {
            ptr,
            len,
            _bytes: PhantomData,
        }
    }

    /// A view of bytes that are ours alone (for tests and local buffers).
    #[inline(always)]
    pub fn from_mut_slice(bytes: &'a mut [u8]) -> Self {
        // SAFETY: a unique live slice is readable and writable for 'a.
        unsafe { Self::from_raw_parts(bytes.as_mut_ptr(), bytes.len()) }
    }

    /// Number of bytes.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of the first byte.
    #[inline(always)]
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }

    /// A shorter-lived view of the same bytes (to pass on and keep this).
    #[inline(always)]
    pub fn reborrow(&mut self) -> SharedBytesMut<'_> {
        // SAFETY: the same range, for a lifetime within ours; `&mut self`
        // keeps this view unused meanwhile.
        unsafe { SharedBytesMut::from_raw_parts(self.ptr, self.len) }
    }

    /// A read view of the same bytes (what we wrote, unless the other
    /// side wrote too).
    #[inline(always)]
    pub fn as_shared(&self) -> SharedBytes<'_> {
        // SAFETY: readable for as long as `self` is borrowed.
        unsafe { SharedBytes::from_raw_parts(self.ptr, self.len) }
    }

    /// Copies `src` in with one `memcpy`.
    ///
    /// # Panics
    ///
    /// If `src.len()` differs from [`Self::len`] (as
    /// `<[u8]>::copy_from_slice`); take a sub-view with [`Self::get_mut`]
    /// first to fill part.
    #[inline(always)]
    pub fn copy_from(&mut self, src: &[u8]) {
        assert_eq!(
            src.len(),
            self.len,
            "copy_from: source length differs from the view's"
        );
        // SAFETY: the destination is writable for len bytes (constructor),
        // the source is a live slice of len bytes, and they do not overlap
        // (a `&[u8]` over these bytes would break the constructor's
        // reservation).
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr, self.len) }
    }

    /// Sets every byte to `value`.
    #[inline(always)]
    pub fn fill(&mut self, value: u8) {
        // SAFETY: writable for len bytes (constructor).
        unsafe { core::ptr::write_bytes(self.ptr, value, self.len) }
    }

    /// Writes `bytes` at `offset`; `false` (and nothing written) if they
    /// do not fit.
    #[inline(always)]
    pub fn write_at(&mut self, offset: usize, bytes: &[u8]) -> bool {
        match offset
            .checked_add(bytes.len())
            .and_then(|end| self.get_mut(offset..end))
        {
            Some(mut part) => {
                part.copy_from(bytes);
                true
            }
            None => false,
        }
    }

    /// The bytes of `range`, or `None` if it is out of bounds.
    #[inline(always)]
    pub fn get_mut(&mut self, range: impl RangeBounds<usize>) -> Option<SharedBytesMut<'_>> {
        let (start, end) = bounds(range, self.len)?;
        // SAFETY: start..end lies inside this view, borrowed mutably.
        Some(unsafe { SharedBytesMut::from_raw_parts(self.ptr.add(start), end - start) })
    }

    /// Fills the view from `r` (one read call, straight into the shared
    /// bytes through a stack buffer): returns how many bytes were filled.
    #[cfg(any(feature = "std", test))]
    pub fn read_from(&mut self, mut r: impl std::io::Read) -> std::io::Result<usize> {
        const BLOCK: usize = 16 * 1024;
        let mut buf = [0u8; BLOCK];
        let want = self.len.min(BLOCK);
        let n = r.read(&mut buf[..want])?.min(want);
        let mut part = self.get_mut(..n).expect("n <= len");
        part.copy_from(&buf[..n]);
        Ok(n)
    }

    /// The bytes as a plain mutable slice, with no copy.
    ///
    /// # Safety
    ///
    /// Nobody else may read or write these bytes while the slice lives:
    /// the other side is trusted to leave a reservation alone (a guest
    /// filling a message for its host), or it is stopped.
    #[inline(always)]
    pub unsafe fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: readable and writable while `self` is borrowed
        // (constructor); exclusivity is the caller's promise.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// [`Self::as_mut_slice`] for the view's whole lifetime.
    ///
    /// # Safety
    ///
    /// As [`Self::as_mut_slice`], for all of `'a`.
    #[inline(always)]
    pub unsafe fn into_mut_slice(self) -> &'a mut [u8] {
        // SAFETY: readable and writable for 'a (constructor); the view is
        // consumed, so nothing else of ours reaches the bytes, and the
        // other side's exclusivity for 'a is the caller's promise.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl core::fmt::Debug for SharedBytesMut<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SharedBytesMut")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn reads_copies_and_sub_views_stay_in_bounds() {
        let data: Vec<u8> = (0..40u8).collect();
        let v = SharedBytes::from_slice(&data);
        assert_eq!(v.len(), 40);
        assert_eq!(v.to_vec(), data);
        assert_eq!(v.byte(39), Some(39));
        assert_eq!(v.byte(40), None);
        assert_eq!(v.u32_le(1), Some(u32::from_le_bytes([1, 2, 3, 4])));
        assert_eq!(v.u32_le(37), None);
        assert_eq!(
            v.u64_le(32),
            Some(u64::from_le_bytes([32, 33, 34, 35, 36, 37, 38, 39]))
        );
        assert_eq!(v.u64_le(usize::MAX), None, "no overflow");
        let part = v.get(10..=12).unwrap();
        assert_eq!(part.iter().collect::<Vec<_>>(), [10, 11, 12]);
        assert!(v.get(30..41).is_none());
        let (start, end) = (5, 4);
        assert!(v.get(start..end).is_none(), "reversed");
        assert!(v.get(..).unwrap().len() == 40);
        let mut out = std::vec![0u8; 3];
        part.copy_to(&mut out);
        assert_eq!(out, [10, 11, 12]);
        let mut sink = Vec::new();
        v.write_to(&mut sink).unwrap();
        assert_eq!(sink, data);
    }

    #[test]
    fn writes_fill_exactly_their_range() {
        let mut data = [0u8; 16];
        let mut v = SharedBytesMut::from_mut_slice(&mut data);
        v.fill(1);
        assert!(v.write_at(12, &[9, 9, 9, 9]));
        assert!(!v.write_at(13, &[7, 7, 7, 7]), "past the end: nothing");
        v.get_mut(..2).unwrap().copy_from(&[5, 6]);
        let n = v.get_mut(2..).unwrap().read_from(&b"abc"[..]).unwrap();
        assert_eq!(n, 3);
        assert_eq!(v.as_shared().byte(4), Some(b'c'));
        assert_eq!(
            data,
            [5, 6, b'a', b'b', b'c', 1, 1, 1, 1, 1, 1, 1, 9, 9, 9, 9]
        );
    }

    #[test]
    #[should_panic(expected = "length differs")]
    fn a_copy_of_the_wrong_length_panics() {
        let data = [0u8; 4];
        SharedBytes::from_slice(&data).copy_to(&mut [0u8; 3]);
    }
}
