//! Generation-checked handles: what C holds instead of a pointer, so that
//! a handle used after its release, released twice, or made up is an
//! error code, never a dangling access.
//!
//! A handle is a `u32`: the kind in the top 4 bits, the generation of its
//! table in the low 28. A table holds one value at a time (the SDK lends
//! one received message and one reservation at a time: each borrows the
//! inbox or the outbox); its generation moves on at every release, so an
//! old handle never matches again (until 2^28 releases later). 0 is never
//! a handle.

use core::cell::{Cell, UnsafeCell};

use crate::codes::{E_HANDLE, E_RELEASED};

/// Bits of a handle that hold the generation.
const GENERATION_BITS: u32 = 28;
const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;

/// Handle kinds (the top 4 bits).
pub const KIND_MESSAGE: u32 = 1;
pub const KIND_RESERVATION: u32 = 2;
pub const KIND_CALL: u32 = 3;

/// One value lent to C, found again by its handle.
pub struct Table<T> {
    kind: u32,
    value: UnsafeCell<Option<T>>,
    /// The generation of the value held now, or of the next one.
    generation: Cell<u32>,
}

impl<T> core::fmt::Debug for Table<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Table")
            .field("kind", &self.kind)
            .field("generation", &self.generation.get())
            .field("held", &self.is_held())
            .finish()
    }
}

impl<T> Table<T> {
    pub const fn new(kind: u32) -> Self {
        Table {
            kind,
            value: UnsafeCell::new(None),
            generation: Cell::new(1),
        }
    }

    fn handle(&self) -> u32 {
        (self.kind << GENERATION_BITS) | self.generation.get()
    }

    /// Whether a value is lent now.
    pub fn is_held(&self) -> bool {
        // SAFETY: no reference into the cell outlives a method of this
        // table (`with` ends before it returns), and the table is used by
        // one thread (see `State`'s `Sync`).
        unsafe { (*self.value.get()).is_some() }
    }

    /// Lends `value`: its handle, or the value back when one is lent
    /// already.
    pub fn put(&self, value: T) -> Result<u32, T> {
        if self.is_held() {
            return Err(value);
        }
        // SAFETY: as in `is_held`: no other reference into the cell.
        unsafe { *self.value.get() = Some(value) };
        Ok(self.handle())
    }

    /// Checks `handle`: `Ok` when it is the value lent now.
    pub fn check(&self, handle: u32) -> Result<(), i32> {
        if handle >> GENERATION_BITS != self.kind || handle == 0 {
            return Err(E_HANDLE);
        }
        let generation = handle & GENERATION_MASK;
        let now = self.generation.get();
        if generation == now && self.is_held() {
            Ok(())
        } else if generation != 0 && generation < now {
            Err(E_RELEASED)
        } else {
            Err(E_HANDLE)
        }
    }

    /// Takes the value of `handle` back (its release): the handle is
    /// stale from now on.
    pub fn take(&self, handle: u32) -> Result<T, i32> {
        self.check(handle)?;
        Ok(self.clear().expect("checked: held"))
    }

    /// Takes whatever is lent (the end of a handler); stale handles after.
    pub fn clear(&self) -> Option<T> {
        // SAFETY: as in `is_held`: no other reference into the cell.
        let value = unsafe { (*self.value.get()).take() };
        if value.is_some() {
            let next = (self.generation.get() + 1) & GENERATION_MASK;
            self.generation.set(next.max(1));
        }
        value
    }

    /// Runs `f` with the value of `handle`. `f` must not reach this table
    /// again (it runs no C code).
    pub fn with<R>(&self, handle: u32, f: impl FnOnce(&mut T) -> R) -> Result<R, i32> {
        self.check(handle)?;
        // SAFETY: as in `is_held`; the reference ends with `f`, which does
        // not reach this table (this function's contract).
        let value = unsafe { (*self.value.get()).as_mut() };
        Ok(f(value.expect("checked: held")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_is_valid_until_released_then_stale() {
        let t = Table::new(KIND_MESSAGE);
        let h = t.put(7u32).unwrap();
        assert_ne!(h, 0);
        assert_eq!(t.with(h, |v| *v), Ok(7));
        assert_eq!(t.take(h), Ok(7));
        assert_eq!(t.take(h), Err(E_RELEASED), "released twice");
        assert_eq!(t.with(h, |v| *v), Err(E_RELEASED), "used after release");
        let h2 = t.put(8).unwrap();
        assert_ne!(h, h2, "a new value gets a new handle");
        assert_eq!(t.check(h), Err(E_RELEASED));
        assert_eq!(t.check(h2), Ok(()));
    }

    #[test]
    fn one_value_at_a_time_and_made_up_handles_are_refused() {
        let t = Table::new(KIND_RESERVATION);
        let h = t.put(1u8).unwrap();
        assert_eq!(t.put(2), Err(2));
        assert_eq!(t.check(0), Err(E_HANDLE));
        assert_eq!(t.check(h + 1), Err(E_HANDLE), "a generation not given yet");
        let other = Table::<u8>::new(KIND_MESSAGE);
        assert_eq!(other.check(h), Err(E_HANDLE), "a handle of another kind");
        assert_eq!(t.clear(), Some(1));
        assert_eq!(t.clear(), None);
        assert_eq!(t.check(h), Err(E_RELEASED));
    }
}
