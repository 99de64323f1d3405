//! The doorbell words: an eventcount per direction, kept in a peer entry's
//! reserved bytes (shmrt's one extension of the format).
//!
//! The protocol (after Vyukov's eventcount):
//!
//! * ring: make the condition true (commit a frame, Release), then
//!   [`Doorbell::ring`] bumps `seq`; only if a waiter is registered does the
//!   caller issue a wake (a futex wake on `seq`, or the host import). A peer
//!   that is not parked costs no syscall.
//! * wait: [`Doorbell::prepare_wait`] registers and returns the sequence;
//!   the caller re-checks its condition; if still false it sleeps while
//!   `seq` equals that value (futex wait, with a timeout), then calls
//!   [`Doorbell::finish_wait`].
//!
//! Both `ring` and `prepare_wait` are SeqCst read-modify-writes followed by
//! SeqCst loads (SYNC POINT "doorbell"): in the single total order either
//! the ringer sees the registered waiter, or the waiter's sequence load sees
//! the bump (and through it the condition), so no wake-up is lost. The
//! publisher's cheap path, [`Doorbell::should_ring`], is a SeqCst fence and
//! a load; it pairs with the fence in `prepare_wait`. The loom model
//! `doorbell_no_lost_wakeup` (tests/loom_models.rs, on `LoomDoorbell`)
//! checks that pairing.
//!
//! The words are hints to the party that reads them: a hostile peer can at
//! worst cause spurious wake-ups or make its own waits time out, so the
//! host always waits with a timeout.
//!
//! This module has no syscalls: parking is the runtime's or the SDK's.

use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicU32, Ordering};

/// What the `wait` host import returns (`wit/shmrt.wit`): why a guest
/// parked on its host-to-guest doorbell woke up. Negative values are
/// errors and have no variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum WaitOutcome {
    /// The host rang: data or room may be there.
    Rang = 0,
    /// The timeout passed.
    Timeout = 1,
    /// The host said goodbye (or is stopping the sandbox).
    Goodbye = 2,
}

impl WaitOutcome {
    /// The value the import returns.
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// The outcome a returned value stands for; `None` for an error.
    pub const fn from_code(code: i32) -> Option<Self> {
        match code {
            0 => Some(Self::Rang),
            1 => Some(Self::Timeout),
            2 => Some(Self::Goodbye),
            _ => None,
        }
    }
}

/// One direction's eventcount: 8 bytes.
#[repr(C)]
#[derive(Debug)]
pub struct Doorbell {
    /// Bumped on every ring; the futex word.
    pub seq: AtomicU32,
    /// Number of parties between `prepare_wait` and `finish_wait`.
    pub waiters: AtomicU32,
}

const _: () = {
    assert!(size_of::<Doorbell>() == 8);
    assert!(offset_of!(Doorbell, seq) == 0);
    assert!(offset_of!(Doorbell, waiters) == 4);
};

/// The eventcount's steps, written once for [`Doorbell`] and, in loom
/// builds, for `LoomDoorbell`: `$fence` is the SeqCst fence of SYNC
/// POINT "doorbell".
macro_rules! eventcount {
    ($bell:ident, $fence:ident) => {
        impl $bell {
            /// Bumps the sequence; returns whether a waiter is registered
            /// and a wake is needed.
            #[inline]
            pub fn ring(&self) -> bool {
                self.seq.fetch_add(1, Ordering::SeqCst);
                self.waiters.load(Ordering::SeqCst) != 0
            }

            /// Registers a waiter and returns the sequence to sleep on. The
            /// caller must re-check its condition after this and call
            /// [`Self::finish_wait`] whatever happens next.
            #[inline]
            pub fn prepare_wait(&self) -> u32 {
                self.waiters.fetch_add(1, Ordering::SeqCst);
                // SeqCst fence: pairs with the one in `should_ring` (SYNC
                // POINT "doorbell"), so a waiter's check of its condition
                // and a publisher's check of `waiters` can not both miss.
                $fence();
                self.seq.load(Ordering::SeqCst)
            }

            /// The cheap publisher path: after publishing (a commit or a
            /// release), returns whether anyone is registered, so that the
            /// caller rings only then. Either this returns true, or the
            /// waiter's re-check after [`Self::prepare_wait`] sees what was
            /// published.
            #[inline]
            pub fn should_ring(&self) -> bool {
                // SYNC POINT "doorbell", the publisher's side; Relaxed load:
                // the fence orders it after the publication.
                $fence();
                self.waiters.load(Ordering::Relaxed) != 0
            }

            /// The cheap check after releasing room (not after publishing a
            /// message): no fence. A waiter for room that races with it is
            /// not lost for good: waits for room are bounded and re-check.
            #[inline]
            pub fn has_waiters(&self) -> bool {
                self.waiters.load(Ordering::Relaxed) != 0
            }

            /// Deregisters a waiter.
            #[inline]
            pub fn finish_wait(&self) {
                // A hostile peer may have zeroed the count; never wrap below
                // zero.
                let _ = self
                    .waiters
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| w.checked_sub(1));
            }

            /// The current sequence.
            #[inline]
            pub fn sequence(&self) -> u32 {
                self.seq.load(Ordering::Acquire)
            }
        }
    };
}

eventcount!(Doorbell, seqcst_fence);

impl Doorbell {
    /// Pointer to the futex word.
    #[inline]
    pub fn futex_word(&self) -> &AtomicU32 {
        &self.seq
    }
}

/// The same eventcount over loom's atomics, for the model in
/// `tests/loom_models.rs`. [`Doorbell`] keeps `core`'s words in every
/// build: it sits inside [`crate::peer_entry::PeerEntry`], whose layout is
/// asserted everywhere, and loom's atomics are larger.
#[cfg(loom)]
#[derive(Debug)]
pub struct LoomDoorbell {
    /// Bumped on every ring; the futex word.
    pub seq: crate::sync::AtomicU32,
    /// Number of parties between `prepare_wait` and `finish_wait`.
    pub waiters: crate::sync::AtomicU32,
}

#[cfg(loom)]
eventcount!(LoomDoorbell, loom_fence);

/// The SeqCst fence as loom sees it.
#[cfg(loom)]
fn loom_fence() {
    crate::sync::fence(Ordering::SeqCst);
}

/// A SeqCst fence. On wasm every atomic access is sequentially consistent
/// (the threads proposal's memory model), so the publisher's atomic store
/// and its later atomic load are already ordered by the hardware; only the
/// compiler must not swap them, and `atomic.fence` would add an `mfence`
/// for nothing.
#[inline]
fn seqcst_fence() {
    #[cfg(target_family = "wasm")]
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
    #[cfg(not(target_family = "wasm"))]
    core::sync::atomic::fence(Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_outcomes_round_trip_their_codes() {
        for o in [
            WaitOutcome::Rang,
            WaitOutcome::Timeout,
            WaitOutcome::Goodbye,
        ] {
            assert_eq!(WaitOutcome::from_code(o.code()), Some(o));
        }
        assert_eq!(WaitOutcome::from_code(-1), None);
        assert_eq!(WaitOutcome::from_code(3), None);
    }

    #[test]
    fn ring_reports_waiters_only_when_registered() {
        let d = Doorbell {
            seq: AtomicU32::new(0),
            waiters: AtomicU32::new(0),
        };
        assert!(!d.ring());
        let seq = d.prepare_wait();
        assert_eq!(seq, 1);
        assert!(d.ring());
        assert_ne!(
            d.sequence(),
            seq,
            "a ring after prepare_wait changes the sequence"
        );
        d.finish_wait();
        assert!(!d.ring());
        d.finish_wait();
        assert_eq!(
            d.waiters.load(Ordering::Relaxed),
            0,
            "never wraps below zero"
        );
    }
}
