//! The var-slot pool: fixed-size slots in a few size classes, one
//! lock-free Treiber stack of free slots per class.
//!
//! ```text
//! class header, 64 B: slot_size u32, slot_count u32,
//!                     free_head u64 = slot index (low 32, u32::MAX = empty)
//!                                   | ABA tag (high 32)
//! slot meta, 16 B:    generation u32, state u32 (0 Free, 1 Allocated),
//!                     owner_peer u32, next_free u32
//! ```
//!
//! Allocation takes the smallest class whose slots fit, then larger ones.
//! The ABA defence is the tag in the head word: every successful pop and
//! push adds one to it, so a head that was popped and pushed back between
//! our load and our CAS no longer compares equal (heapless and crossbeam
//! use the same scheme). A slot's generation is bumped on every
//! allocation, so a stale [`SlotRef`] is told apart from the current one.
//!
//! Every value loaded from a meta or a head is checked before use, each
//! CAS loop is bounded, and each walk of a free list stops after
//! `slot_count` steps: a party that scribbles on the pool gets a
//! [`SlotError`], and we never index outside a class.

use core::mem::{offset_of, size_of};
use core::sync::atomic::Ordering;

use crate::error::SlotError;
use crate::frame::SlotRef;
use crate::layout::{MAX_SIZE_CLASSES, SLOT_LEN_PREFIX, SegmentLayout};
use crate::shared_bytes::SharedBytesMut;
use crate::sync::{AtomicU32, AtomicU64, store_u32};

/// End of a free list.
pub const EMPTY: u32 = u32::MAX;
/// Slot state: free.
pub const SLOT_FREE: u32 = 0;
/// Slot state: allocated.
pub const SLOT_ALLOCATED: u32 = 1;
/// How many times a CAS on a free-list head is retried before giving up.
/// Far beyond what honest contention between a host and one guest needs.
pub const MAX_CAS_RETRIES: u32 = 1 << 16;

/// A size-class header as it sits in shared memory.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct SizeClassHeader {
    /// Bytes per slot.
    pub slot_size: core::sync::atomic::AtomicU32,
    /// Slots in the class.
    pub slot_count: core::sync::atomic::AtomicU32,
    /// Packed Treiber head: index low, ABA tag high.
    pub free_head: AtomicU64,
    _pad: [u8; 48],
}

/// A slot meta as it sits in shared memory.
#[repr(C)]
#[derive(Debug)]
pub struct SlotMeta {
    /// Bumped on every allocation.
    pub generation: AtomicU32,
    /// [`SLOT_FREE`] or [`SLOT_ALLOCATED`].
    pub state: AtomicU32,
    /// Peer that allocated the slot (0 = host).
    pub owner_peer: AtomicU32,
    /// Next free slot, [`EMPTY`] at the end.
    pub next_free: AtomicU32,
}

#[cfg(not(loom))]
const _: () = {
    assert!(size_of::<SizeClassHeader>() == 64);
    assert!(offset_of!(SizeClassHeader, slot_size) == 0);
    assert!(offset_of!(SizeClassHeader, slot_count) == 4);
    assert!(offset_of!(SizeClassHeader, free_head) == 8);
    assert!(size_of::<SlotMeta>() == 16);
    assert!(offset_of!(SlotMeta, generation) == 0);
    assert!(offset_of!(SlotMeta, state) == 4);
    assert!(offset_of!(SlotMeta, owner_peer) == 8);
    assert!(offset_of!(SlotMeta, next_free) == 12);
};

/// Packs a head word (defined next to the CASes that use it).
#[inline]
fn pack(index: u32, tag: u32) -> u64 {
    (tag as u64) << 32 | index as u64
}

/// Unpacks a head word into (index, tag).
#[inline]
fn unpack(head: u64) -> (u32, u32) {
    (head as u32, (head >> 32) as u32)
}

/// One class: where its parts are, with sizes from our own layout.
#[derive(Clone, Copy)]
pub struct ClassView {
    header: *const SizeClassHeader,
    metas: *const SlotMeta,
    data: *mut u8,
    slot_size: u32,
    slot_count: u32,
}

impl core::fmt::Debug for ClassView {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClassView")
            .field("slot_size", &self.slot_size)
            .field("slot_count", &self.slot_count)
            .finish_non_exhaustive()
    }
}

impl ClassView {
    /// A class from the addresses of its parts.
    ///
    /// # Safety
    ///
    /// `header` must be valid for a `SizeClassHeader`, `metas` for
    /// `slot_count` `SlotMeta`s and `data` for `slot_size * slot_count`
    /// bytes, all suitably aligned and live while the view is used.
    pub unsafe fn from_raw(
        header: *mut SizeClassHeader,
        metas: *mut SlotMeta,
        data: *mut u8,
        slot_size: u32,
        slot_count: u32,
    ) -> Self {
        ClassView {
            header,
            metas,
            data,
            slot_size,
            slot_count,
        }
    }

    fn header(&self) -> &SizeClassHeader {
        // SAFETY: `from_raw`'s caller promised `header` valid for a
        // `SizeClassHeader` for as long as this view is used.
        unsafe { &*self.header }
    }

    /// The meta of `index`, which must be checked `< slot_count`.
    fn meta(&self, index: u32) -> &SlotMeta {
        assert!(index < self.slot_count);
        // SAFETY: `index < slot_count`, `from_raw`'s contract.
        unsafe { &*self.metas.add(index as usize) }
    }

    fn slot_ptr(&self, index: u32) -> *mut u8 {
        assert!(index < self.slot_count);
        // SAFETY: `index < slot_count`, so the slot lies within the data
        // region of `from_raw`.
        unsafe { self.data.add(index as usize * self.slot_size as usize) }
    }

    /// Bytes per slot.
    pub fn slot_size(&self) -> u32 {
        self.slot_size
    }

    /// Slots in the class.
    pub fn slot_count(&self) -> u32 {
        self.slot_count
    }

    /// Writes the header and metas: every slot free, linked 0 -> 1 -> ...
    fn init(&self) {
        let head = pack(0, 0);
        // SAFETY: the creator owns the memory exclusively before publishing
        // (SYNC POINT "magic"); `from_raw` makes the pointers valid.
        unsafe {
            core::ptr::write(
                self.header as *mut SizeClassHeader,
                SizeClassHeader {
                    slot_size: core::sync::atomic::AtomicU32::new(self.slot_size),
                    slot_count: core::sync::atomic::AtomicU32::new(self.slot_count),
                    free_head: AtomicU64::new(head),
                    _pad: [0; 48],
                },
            );
            for i in 0..self.slot_count {
                let next = if i + 1 < self.slot_count {
                    i + 1
                } else {
                    EMPTY
                };
                core::ptr::write(
                    self.metas.add(i as usize) as *mut SlotMeta,
                    SlotMeta {
                        generation: AtomicU32::new(0),
                        state: AtomicU32::new(SLOT_FREE),
                        owner_peer: AtomicU32::new(0),
                        next_free: AtomicU32::new(next),
                    },
                );
            }
        }
    }

    /// Pops a free slot; `Ok(None)` when the class is exhausted.
    fn pop(&self, class: u8, owner: u8) -> Result<Option<SlotRef>, SlotError> {
        let header = self.header();
        for _ in 0..MAX_CAS_RETRIES {
            // Acquire pairs with the AcqRel CAS of the push that put this
            // head there (SYNC POINT "free_head"): its `next_free` store is
            // visible.
            let head = header.free_head.load(Ordering::Acquire);
            let (index, tag) = unpack(head);
            if index == EMPTY {
                return Ok(None);
            }
            if index >= self.slot_count {
                return Err(SlotError::Link {
                    class,
                    field: "free_head",
                    value: index,
                    slot_count: self.slot_count,
                });
            }
            let next = self.meta(index).next_free.load(Ordering::Acquire);
            if next != EMPTY && next >= self.slot_count {
                return Err(SlotError::Link {
                    class,
                    field: "next_free",
                    value: next,
                    slot_count: self.slot_count,
                });
            }
            // ABA: the tag goes up by one on every successful CAS, so a
            // head popped and pushed back since our load fails here.
            if header
                .free_head
                .compare_exchange(
                    head,
                    pack(next, tag.wrapping_add(1)),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
            {
                continue;
            }
            let meta = self.meta(index);
            let generation = meta
                .generation
                .fetch_add(1, Ordering::AcqRel)
                .wrapping_add(1);
            store_u32(&meta.owner_peer, owner as u32, Ordering::Relaxed);
            // AcqRel: a slot on the free list must have been Free; anything
            // else means the list was corrupt (a cycle or a forged push).
            let prev = meta.state.swap(SLOT_ALLOCATED, Ordering::AcqRel);
            if prev != SLOT_FREE {
                return Err(SlotError::FreeListCorrupt {
                    class,
                    slot: index,
                    state: prev,
                });
            }
            return Ok(Some(SlotRef {
                class_idx: class,
                extent_idx: 0,
                slot_idx: index,
                generation,
            }));
        }
        Err(SlotError::Contended { class })
    }

    /// Pushes a slot whose state was already set Free.
    fn push(&self, class: u8, index: u32) -> Result<(), SlotError> {
        let header = self.header();
        let meta = self.meta(index);
        for _ in 0..MAX_CAS_RETRIES {
            let head = header.free_head.load(Ordering::Acquire);
            let (top, tag) = unpack(head);
            // Relaxed: published by the AcqRel CAS below (SYNC POINT
            // "free_head").
            store_u32(&meta.next_free, top, Ordering::Relaxed);
            // ABA: see `pop`.
            if header
                .free_head
                .compare_exchange(
                    head,
                    pack(index, tag.wrapping_add(1)),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(SlotError::Contended { class })
    }
}

/// Why a slot could not be allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// No class has slots large enough for this payload.
    TooLarge { len: u32, max: u32 },
    /// Every class that fits is exhausted for now.
    Exhausted,
    /// The pool is corrupt.
    Corrupt(SlotError),
}

impl core::fmt::Display for AllocError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooLarge { len, max } => write!(
                f,
                "payload of {len} bytes exceeds the largest slot payload {max}"
            ),
            Self::Exhausted => f.write_str("every slot class large enough is exhausted"),
            Self::Corrupt(e) => e.fmt(f),
        }
    }
}

impl core::error::Error for AllocError {}

/// Usage of one class, counted without trusting anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassUsage {
    pub slot_size: u32,
    pub slot_count: u32,
    /// Metas in the Allocated state.
    pub allocated: u32,
    /// Metas in the Free state.
    pub free: u32,
    /// Metas in neither state.
    pub invalid: u32,
    /// Length of the free list, or the error met walking it.
    pub free_list: Result<u32, SlotError>,
}

/// Who holds the slots of a class ([`SlotPool::holders`]). A slot counts
/// for the side that allocated it, also while the other side reads it or
/// answers with it in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassHolders {
    pub class: u8,
    /// Largest payload a slot of the class carries.
    pub slot_payload: u32,
    pub slot_count: u32,
    /// Allocated by the host (peer 0).
    pub by_host: u32,
    /// Allocated by guests.
    pub by_guests: u32,
}

/// The slot pool of a segment.
#[derive(Clone, Copy, Debug)]
pub struct SlotPool {
    classes: [Option<ClassView>; MAX_SIZE_CLASSES],
    len: usize,
}

// SAFETY: all shared state is reached through atomics and raw-pointer
// copies of slot bytes; the view itself is immutable.
unsafe impl Send for SlotPool {}
// SAFETY: `&SlotPool` gives only what `SlotPool` gives: the class views
// are never written after construction, and the slots and metas behind
// them are reached through atomics and raw-pointer copies (see `Send`).
unsafe impl Sync for SlotPool {}

impl SlotPool {
    /// The pool of a segment mapped at `base`, with offsets from `layout`.
    ///
    /// # Safety
    ///
    /// `base` must be 64-byte aligned and valid for reads and writes of
    /// `layout.total_size` bytes while the pool is used.
    pub unsafe fn new(base: *mut u8, layout: &SegmentLayout) -> Self {
        let mut pool = SlotPool {
            classes: [None; MAX_SIZE_CLASSES],
            len: 0,
        };
        for c in layout.classes() {
            // SAFETY: the layout places every part inside total_size, which
            // the caller vouches for.
            let view = unsafe {
                ClassView::from_raw(
                    base.add(c.header_offset as usize) as *mut SizeClassHeader,
                    base.add(c.meta_offset as usize) as *mut SlotMeta,
                    base.add(c.data_offset as usize),
                    c.slot_size,
                    c.slot_count,
                )
            };
            pool.classes[pool.len] = Some(view);
            pool.len += 1;
        }
        pool
    }

    /// A pool of the given classes (for tests and models).
    pub fn from_classes(classes: &[ClassView]) -> Self {
        let mut pool = SlotPool {
            classes: [None; MAX_SIZE_CLASSES],
            len: 0,
        };
        for c in classes.iter().take(MAX_SIZE_CLASSES) {
            pool.classes[pool.len] = Some(*c);
            pool.len += 1;
        }
        pool
    }

    fn class(&self, i: usize) -> Option<&ClassView> {
        self.classes.get(i).and_then(|c| c.as_ref())
    }

    fn iter(&self) -> impl Iterator<Item = (u8, &ClassView)> {
        self.classes[..self.len]
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Some((i as u8, c.as_ref()?)))
    }

    /// Number of classes.
    pub fn class_count(&self) -> usize {
        self.len
    }

    /// Writes every class header and meta. Only the creator, before
    /// publishing the segment.
    pub fn init(&self) {
        for (_, c) in self.iter() {
            c.init();
        }
    }

    /// Allocates a slot for a payload of `payload_len` bytes (the slot also
    /// holds the 4-byte length prefix): the smallest class that fits first,
    /// then larger ones.
    pub fn allocate(&self, payload_len: u32, owner: u8) -> Result<SlotRef, AllocError> {
        self.allocate_where(payload_len, owner, |_| true)
    }

    /// The classes a payload of `payload_len` bytes may go to, smallest
    /// first: those whose slots hold it and its length prefix and that
    /// `take` accepts. The one selection both allocating and asking
    /// whether an allocation could succeed go through.
    fn candidates<'a>(
        &'a self,
        payload_len: u32,
        take: impl Fn(&ClassView) -> bool + 'a,
    ) -> impl Iterator<Item = (u8, &'a ClassView)> + 'a {
        let needed = payload_len.checked_add(SLOT_LEN_PREFIX);
        self.iter()
            .filter(move |(_, c)| needed.is_some_and(|n| c.slot_size >= n) && take(c))
    }

    /// Pops from the first class that fits and that `take` accepts.
    fn allocate_where(
        &self,
        payload_len: u32,
        owner: u8,
        take: impl Fn(&ClassView) -> bool,
    ) -> Result<SlotRef, AllocError> {
        for (i, c) in self.candidates(payload_len, take) {
            if let Some(r) = c.pop(i, owner).map_err(AllocError::Corrupt)? {
                return Ok(r);
            }
        }
        if self.candidates(payload_len, |_| true).next().is_some() {
            Err(AllocError::Exhausted)
        } else {
            let max = self
                .iter()
                .map(|(_, c)| c.slot_size.saturating_sub(SLOT_LEN_PREFIX))
                .max()
                .unwrap_or(0);
            Err(AllocError::TooLarge {
                len: payload_len,
                max,
            })
        }
    }

    /// Whether [`Self::allocate_where`] with the same `take` would find a
    /// free slot now (a hint; changes nothing).
    fn could_allocate_where(&self, payload_len: u32, take: impl Fn(&ClassView) -> bool) -> bool {
        self.candidates(payload_len, take)
            .any(|(_, c)| unpack(c.header().free_head.load(Ordering::Acquire)).0 != EMPTY)
    }

    /// Whether some class that fits `payload_len` has a free slot now (a
    /// hint; changes nothing). A sender asks
    /// [`Self::could_allocate_fair_share`] instead, the test that matches
    /// its allocations.
    pub fn could_allocate(&self, payload_len: u32) -> bool {
        self.could_allocate_where(payload_len, |_| true)
    }

    /// The fair-share rule, decided here only: `owner` may take a slot of
    /// class `c` while it holds fewer than half of its slots (at least
    /// one). When both sides of a channel send slot messages, neither can
    /// then take every slot and leave the other unable to answer (a
    /// deadlock when each holds what it received while waiting to send).
    fn within_fair_share(&self, c: &ClassView, owner: u8) -> bool {
        let limit = (c.slot_count / 2).max(1);
        // Decided as soon as the scan settles it: `limit` slots held by
        // `owner` (no), or so many slots that are not its own that it holds
        // fewer than `limit` (yes): about half the metas, not all.
        let Some(enough_others) = (c.slot_count + 1).checked_sub(limit) else {
            return true;
        };
        let (mut mine, mut others) = (0, 0);
        for s in 0..c.slot_count {
            let m = c.meta(s);
            let owned = m.state.load(Ordering::Relaxed) == SLOT_ALLOCATED
                && m.owner_peer.load(Ordering::Relaxed) == owner as u32;
            if owned {
                mine += 1;
                if mine >= limit {
                    return false;
                }
            } else {
                others += 1;
                if others >= enough_others {
                    return true;
                }
            }
        }
        mine < limit
    }

    /// Like [`Self::allocate`], but only from classes where `owner` is
    /// within its fair share (see `within_fair_share`).
    pub fn allocate_fair_share(&self, payload_len: u32, owner: u8) -> Result<SlotRef, AllocError> {
        self.allocate_where(payload_len, owner, |c| self.within_fair_share(c, owner))
    }

    /// Whether [`Self::allocate_fair_share`] would find a slot now (a hint;
    /// changes nothing): the same classes under the same rule. A sender
    /// that waits for room must ask this, not [`Self::could_allocate`]:
    /// a free slot beyond its share would say "ready" while every
    /// allocation is refused, and the wait would spin.
    pub fn could_allocate_fair_share(&self, payload_len: u32, owner: u8) -> bool {
        self.could_allocate_where(payload_len, |c| self.within_fair_share(c, owner))
    }

    /// Allocated slots of class `c` owned by `owner` (a scan of its metas):
    /// what `within_fair_share` decides by, counted in full.
    #[cfg(test)]
    fn owned_in(&self, c: &ClassView, owner: u8) -> u32 {
        (0..c.slot_count)
            .filter(|&s| {
                let m = c.meta(s);
                m.state.load(Ordering::Relaxed) == SLOT_ALLOCATED
                    && m.owner_peer.load(Ordering::Relaxed) == owner as u32
            })
            .count() as u32
    }

    /// Checks a reference's class, extent and index; returns the class.
    fn resolve(&self, r: &SlotRef) -> Result<&ClassView, SlotError> {
        let class = self
            .class(r.class_idx as usize)
            .filter(|_| (r.class_idx as usize) < self.len)
            .ok_or(SlotError::Class {
                value: r.class_idx,
                classes: self.len as u32,
            })?;
        if r.extent_idx != 0 {
            return Err(SlotError::Extent {
                value: r.extent_idx,
            });
        }
        if r.slot_idx >= class.slot_count {
            return Err(SlotError::Index {
                class: r.class_idx,
                value: r.slot_idx,
                slot_count: class.slot_count,
            });
        }
        Ok(class)
    }

    /// Checks that `r` names an allocated slot of its generation.
    fn check_live(&self, r: &SlotRef) -> Result<&ClassView, SlotError> {
        let class = self.resolve(r)?;
        let meta = class.meta(r.slot_idx);
        let found = meta.generation.load(Ordering::Acquire);
        if found != r.generation {
            return Err(SlotError::Generation {
                class: r.class_idx,
                slot: r.slot_idx,
                expected: r.generation,
                found,
            });
        }
        let state = meta.state.load(Ordering::Acquire);
        if state != SLOT_ALLOCATED {
            return Err(SlotError::NotAllocated {
                class: r.class_idx,
                slot: r.slot_idx,
                state,
            });
        }
        Ok(class)
    }

    /// Frees a slot: checks the reference and the generation, marks it
    /// Free (a CAS, so that two frees of one slot can not both succeed)
    /// and pushes it.
    pub fn free(&self, r: SlotRef) -> Result<(), SlotError> {
        let class = self.check_live(&r)?;
        let meta = class.meta(r.slot_idx);
        meta.state
            .compare_exchange(
                SLOT_ALLOCATED,
                SLOT_FREE,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map_err(|state| SlotError::NotAllocated {
                class: r.class_idx,
                slot: r.slot_idx,
                state,
            })?;
        store_u32(&meta.owner_peer, 0, Ordering::Relaxed);
        class.push(r.class_idx, r.slot_idx)
    }

    /// The payload area of a slot (after the length prefix), for the
    /// party that allocated it to fill before sending it. A view, not a
    /// slice: a peer that breaks the protocol may write the slot too, and
    /// can then only garble what it will itself receive.
    pub fn payload_area(&self, r: &SlotRef) -> Result<SharedBytesMut<'_>, SlotError> {
        let class = self.resolve(r)?;
        let len = class.slot_size.saturating_sub(SLOT_LEN_PREFIX) as usize;
        // SAFETY: the slot is in bounds (resolve) and at least 4 bytes,
        // inside the memory `new`'s caller vouched for while the pool is
        // used; the allocator of `r` is the one filling it.
        Ok(unsafe {
            SharedBytesMut::from_raw_parts(
                class.slot_ptr(r.slot_idx).add(SLOT_LEN_PREFIX as usize),
                len,
            )
        })
    }

    /// Writes the length prefix of a slot about to be sent.
    pub fn set_payload_len(&self, r: &SlotRef, len: u32) -> Result<(), SlotError> {
        let class = self.resolve(r)?;
        let max = class.slot_size.saturating_sub(SLOT_LEN_PREFIX);
        if len > max {
            return Err(SlotError::PayloadLen {
                class: r.class_idx,
                slot: r.slot_idx,
                value: len,
                max,
            });
        }
        // SAFETY: slot data is 64-aligned (layout) and at least 4 bytes
        // (slot_size > 4); atomic so a racing reader is not UB.
        let w = unsafe {
            core::sync::atomic::AtomicU32::from_ptr(class.slot_ptr(r.slot_idx) as *mut u32)
        };
        w.store(len.to_le(), Ordering::Release);
        Ok(())
    }

    /// The payload of a received slot: checks the reference against the
    /// slot's meta, loads the length prefix once and bounds it. Returns a
    /// pointer to the payload and its length; the bytes may still be
    /// changed by the sender if it misbehaves.
    pub fn payload(&self, r: &SlotRef) -> Result<(*const u8, u32), SlotError> {
        let class = self.check_live(r)?;
        let ptr = class.slot_ptr(r.slot_idx);
        // SAFETY: `check_live` (through `resolve`) bounded `slot_idx` by the class's
        // `slot_count`, slot data is 64-aligned (layout) and at least 4
        // bytes (slot_size > 4, as in `set_payload_len`); atomic so a
        // racing writer is not UB. Acquire pairs with the Release in
        // `set_payload_len`.
        let len = u32::from_le(
            unsafe { core::sync::atomic::AtomicU32::from_ptr(ptr as *mut u32) }
                .load(Ordering::Acquire),
        );
        let max = class.slot_size.saturating_sub(SLOT_LEN_PREFIX);
        if len > max {
            return Err(SlotError::PayloadLen {
                class: r.class_idx,
                slot: r.slot_idx,
                value: len,
                max,
            });
        }
        // SAFETY: 4 + len <= slot_size, inside the slot.
        Ok((unsafe { ptr.add(SLOT_LEN_PREFIX as usize) }, len))
    }

    /// Frees every allocated slot owned by `peer` (recovery after the peer
    /// is gone). Returns how many were freed; stops at the first error.
    pub fn reclaim_owned_by(&self, peer: u8) -> Result<u32, SlotError> {
        let mut freed = 0;
        for (i, c) in self.iter() {
            for slot in 0..c.slot_count {
                let meta = c.meta(slot);
                if meta.owner_peer.load(Ordering::Acquire) != peer as u32
                    || meta.state.load(Ordering::Acquire) != SLOT_ALLOCATED
                {
                    continue;
                }
                let generation = meta.generation.load(Ordering::Acquire);
                match self.free(SlotRef {
                    class_idx: i,
                    extent_idx: 0,
                    slot_idx: slot,
                    generation,
                }) {
                    Ok(()) => freed += 1,
                    // Freed by someone else meanwhile: nothing to reclaim.
                    Err(SlotError::NotAllocated { .. } | SlotError::Generation { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(freed)
    }

    /// Counts a class's slots by state and walks its free list, at most
    /// `slot_count` steps.
    pub fn usage(&self, class: usize) -> Option<ClassUsage> {
        let c = self.class(class).filter(|_| class < self.len)?;
        let (mut allocated, mut free, mut invalid) = (0, 0, 0);
        for slot in 0..c.slot_count {
            match c.meta(slot).state.load(Ordering::Acquire) {
                SLOT_FREE => free += 1,
                SLOT_ALLOCATED => allocated += 1,
                _ => invalid += 1,
            }
        }
        Some(ClassUsage {
            slot_size: c.slot_size,
            slot_count: c.slot_count,
            allocated,
            free,
            invalid,
            free_list: self.free_list_len(class as u8, c),
        })
    }

    fn free_list_len(&self, class: u8, c: &ClassView) -> Result<u32, SlotError> {
        let (mut index, _) = unpack(c.header().free_head.load(Ordering::Acquire));
        let mut field = "free_head";
        let mut len = 0u32;
        while index != EMPTY {
            if index >= c.slot_count {
                return Err(SlotError::Link {
                    class,
                    field,
                    value: index,
                    slot_count: c.slot_count,
                });
            }
            len += 1;
            if len > c.slot_count {
                // More links than slots: the list loops.
                return Err(SlotError::FreeListCorrupt {
                    class,
                    slot: index,
                    state: SLOT_FREE,
                });
            }
            index = c.meta(index).next_free.load(Ordering::Acquire);
            field = "next_free";
        }
        Ok(len)
    }

    /// Who holds the slots a message of `payload_len` bytes could use
    /// (the smallest class that fits), to say why a send found none:
    /// `None` when no class fits. Counts Allocated metas by owner, as
    /// written in shared memory (a report, not a decision).
    pub fn holders(&self, payload_len: u32) -> Option<ClassHolders> {
        let (index, c) = self.candidates(payload_len, |_| true).next()?;
        let mut holders = ClassHolders {
            class: index,
            slot_payload: c.slot_size.saturating_sub(SLOT_LEN_PREFIX),
            slot_count: c.slot_count,
            by_host: 0,
            by_guests: 0,
        };
        for slot in 0..c.slot_count {
            let meta = c.meta(slot);
            if meta.state.load(Ordering::Acquire) == SLOT_ALLOCATED {
                if meta.owner_peer.load(Ordering::Relaxed) == 0 {
                    holders.by_host += 1;
                } else {
                    holders.by_guests += 1;
                }
            }
        }
        Some(holders)
    }

    /// The owner of each allocated slot of a class, for inspection.
    pub fn owners(&self, class: usize, mut each: impl FnMut(u32, u32)) {
        if let Some(c) = self.class(class).filter(|_| class < self.len) {
            for slot in 0..c.slot_count {
                let meta = c.meta(slot);
                if meta.state.load(Ordering::Acquire) == SLOT_ALLOCATED {
                    each(slot, meta.owner_peer.load(Ordering::Acquire));
                }
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::heap_region::HeapRegion;
    use crate::layout::SizeClass;
    use std::vec::Vec;

    fn pool(classes: &[SizeClass]) -> (HeapRegion, SlotPool, SegmentLayout) {
        let layout = SegmentLayout::canonical(1, 64, classes).unwrap();
        let region = HeapRegion::zeroed(layout.total_size as usize);
        // SAFETY: the region holds the whole layout and outlives the pool.
        let pool = unsafe { SlotPool::new(region.as_mut_ptr(), &layout) };
        pool.init();
        (region, pool, layout)
    }

    const CLASSES: [SizeClass; 2] = [
        SizeClass {
            slot_size: 64,
            slot_count: 3,
        },
        SizeClass {
            slot_size: 256,
            slot_count: 2,
        },
    ];

    /// The fair-share check stops scanning once it is settled; it must
    /// say what the full count says, for every mix of states and owners a
    /// class can hold (a guest writes them at will), at every class size.
    #[test]
    fn the_fair_share_scan_agrees_with_the_full_count() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for count in [1u32, 2, 3, 4, 5, 16, 64] {
            let (_r, p, _) = pool(&[SizeClass {
                slot_size: 64,
                slot_count: count,
            }]);
            let c = p.class(0).unwrap();
            for _ in 0..if cfg!(miri) { 40 } else { 2000 } {
                for s in 0..count {
                    let r = next();
                    let m = c.meta(s);
                    m.state.store((r % 3) as u32, Ordering::Relaxed);
                    m.owner_peer.store(((r >> 8) % 3) as u32, Ordering::Relaxed);
                }
                for owner in 0..3u8 {
                    let limit = (count / 2).max(1);
                    assert_eq!(
                        p.within_fair_share(c, owner),
                        p.owned_in(c, owner) < limit,
                        "{count} slots, owner {owner}"
                    );
                }
            }
        }
    }

    #[test]
    fn smallest_fit_first_then_larger() {
        let (_r, p, _) = pool(&CLASSES);
        let small: Vec<_> = (0..3).map(|_| p.allocate(60, 1).unwrap()).collect();
        assert!(small.iter().all(|r| r.class_idx == 0));
        assert_eq!(
            small[0],
            SlotRef {
                class_idx: 0,
                extent_idx: 0,
                slot_idx: 0,
                generation: 1
            }
        );
        let spill = p.allocate(60, 1).unwrap();
        assert_eq!(spill.class_idx, 1, "class 0 exhausted: the next larger one");
        assert_eq!(
            p.allocate(61, 1).unwrap().class_idx,
            1,
            "61 + 4 needs class 1"
        );
        assert_eq!(p.allocate(1, 1), Err(AllocError::Exhausted));
        assert_eq!(
            p.allocate(253, 1),
            Err(AllocError::TooLarge { len: 253, max: 252 })
        );
        p.free(small[1]).unwrap();
        let again = p.allocate(1, 2).unwrap();
        assert_eq!(
            (again.slot_idx, again.generation),
            (1, 2),
            "LIFO, next generation"
        );
    }

    #[test]
    fn bad_frees_are_refused_and_change_nothing() {
        let (_r, p, _) = pool(&CLASSES);
        let r = p.allocate(10, 1).unwrap();
        assert_eq!(
            p.free(SlotRef { class_idx: 5, ..r }),
            Err(SlotError::Class {
                value: 5,
                classes: 2
            })
        );
        assert_eq!(
            p.free(SlotRef { extent_idx: 1, ..r }),
            Err(SlotError::Extent { value: 1 })
        );
        assert_eq!(
            p.free(SlotRef { slot_idx: 3, ..r }),
            Err(SlotError::Index {
                class: 0,
                value: 3,
                slot_count: 3
            })
        );
        assert_eq!(
            p.free(SlotRef { generation: 9, ..r }),
            Err(SlotError::Generation {
                class: 0,
                slot: 0,
                expected: 9,
                found: 1
            })
        );
        p.free(r).unwrap();
        assert_eq!(
            p.free(r),
            Err(SlotError::NotAllocated {
                class: 0,
                slot: 0,
                state: SLOT_FREE
            })
        );
        assert_eq!(
            p.usage(0).unwrap().free_list,
            Ok(3),
            "the double free pushed nothing"
        );
    }

    #[test]
    fn payload_lengths_are_bounded() {
        let (mut region, p, l) = pool(&CLASSES);
        let r = p.allocate(10, 0).unwrap();
        assert!(matches!(
            p.set_payload_len(&r, 61),
            Err(SlotError::PayloadLen {
                value: 61,
                max: 60,
                ..
            })
        ));
        p.set_payload_len(&r, 60).unwrap();
        assert_eq!(p.payload(&r).unwrap().1, 60);
        // A sender that scribbles the prefix afterwards is caught on read.
        // Written through the region: a pointer derived from the payload
        // slice may not reach the 4 bytes before it (Miri: Stacked Borrows).
        let class = &l.classes()[r.class_idx as usize];
        let at = class.data_offset as usize + r.slot_idx as usize * class.slot_size as usize;
        region.bytes_mut()[at..at + 4].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(
            p.payload(&r),
            Err(SlotError::PayloadLen { value: 1000, .. })
        ));
    }

    fn meta_word<'a>(
        region: &'a mut HeapRegion,
        layout: &SegmentLayout,
        class: usize,
        slot: u32,
        word: usize,
    ) -> &'a mut [u8] {
        let at = layout.classes()[class].meta_offset as usize + slot as usize * 16 + word * 4;
        &mut region.bytes_mut()[at..at + 4]
    }

    #[test]
    fn out_of_range_links_are_reported() {
        let (mut r, p, l) = pool(&CLASSES);
        meta_word(&mut r, &l, 0, 0, 3).copy_from_slice(&77u32.to_le_bytes());
        assert_eq!(
            p.allocate(1, 0),
            Err(AllocError::Corrupt(SlotError::Link {
                class: 0,
                field: "next_free",
                value: 77,
                slot_count: 3
            }))
        );
        let head_at = l.classes()[1].header_offset as usize + 8;
        r.bytes_mut()[head_at..head_at + 4].copy_from_slice(&9u32.to_le_bytes());
        assert!(matches!(
            p.usage(1).unwrap().free_list,
            Err(SlotError::Link {
                field: "free_head",
                value: 9,
                ..
            })
        ));
    }

    #[test]
    fn cycles_are_caught_by_the_walk_and_by_allocation() {
        let (mut r, p, l) = pool(&CLASSES);
        // 0 -> 1 -> 0 -> ...
        meta_word(&mut r, &l, 0, 1, 3).copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            p.usage(0).unwrap().free_list,
            Err(SlotError::FreeListCorrupt { .. })
        ));
        p.allocate(1, 0).unwrap();
        p.allocate(1, 0).unwrap();
        assert_eq!(
            p.allocate(1, 0),
            Err(AllocError::Corrupt(SlotError::FreeListCorrupt {
                class: 0,
                slot: 0,
                state: SLOT_ALLOCATED
            }))
        );
    }

    #[test]
    fn reclaim_frees_only_the_owner_slots() {
        let (_r, p, _) = pool(&CLASSES);
        let mine: Vec<_> = (0..2).map(|_| p.allocate(1, 3).unwrap()).collect();
        let theirs = p.allocate(1, 4).unwrap();
        assert_eq!(p.reclaim_owned_by(3), Ok(2));
        assert_eq!(p.usage(0).unwrap().allocated, 1);
        assert!(p.free(mine[0]).is_err(), "reclaimed references are stale");
        p.free(theirs).unwrap();
        let mut owners = Vec::new();
        p.owners(0, |slot, owner| owners.push((slot, owner)));
        assert!(owners.is_empty());
    }
}
