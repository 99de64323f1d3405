//! One 64-byte peer table entry per guest.
//!
//! ```text
//! [0..4)   state (0 Empty, 1 Attached, 2 Goodbye, 3 Reserved)
//! [4..8)   epoch: bumped on every attach or reserve
//! [8..16)  last_heartbeat, monotonic ns
//! [16..24) ring_offset: this guest's G2H ring; H2G follows one stride later
//! [24..64) reserved in the format; shmrt keeps its doorbells here:
//!          [24..32) G2H doorbell (guest rings, host waits)
//!          [32..40) H2G doorbell (host rings, guest waits)
//!          [40..44) host flags: bit 0, the host runs this guest on its own
//!                   thread (a fiber or a callback), so polling the ring
//!                   before `wait` is wasted (nothing arrives meanwhile)
//! ```
//!
//! The guest id is `1 + index`; the host is peer 0.

use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::doorbell::Doorbell;

/// A guest's peer id: `1 + index` of its peer table entry, 1..=255 (the
/// host is peer 0 and has no entry). The one place where an id and an
/// index are converted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(u8);

impl PeerId {
    /// The id `id`, if it names a guest (1..=255).
    pub const fn new(id: u32) -> Option<Self> {
        if id >= 1 && id <= u8::MAX as u32 {
            Some(PeerId(id as u8))
        } else {
            None
        }
    }

    /// The id of the guest whose entry is at `index` (0..=254).
    pub const fn from_index(index: u32) -> Option<Self> {
        if index < u8::MAX as u32 {
            Some(PeerId(index as u8 + 1))
        } else {
            None
        }
    }

    /// The id as a number (what the `peer_id` import returns).
    pub const fn get(self) -> u32 {
        self.0 as u32
    }

    /// The id as the byte slot metas record as their owner.
    pub const fn owner_byte(self) -> u8 {
        self.0
    }

    /// The index of this guest's peer table entry.
    pub const fn index(self) -> u32 {
        self.0 as u32 - 1
    }
}

impl core::fmt::Display for PeerId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The states of a peer entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum PeerState {
    /// Free for a new guest.
    Empty = 0,
    /// A guest is attached.
    Attached = 1,
    /// The guest is leaving or has crashed.
    Goodbye = 2,
    /// The host reserved it for a guest about to attach.
    Reserved = 3,
}

impl PeerState {
    /// Decodes a state word; `None` for anything else.
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Empty,
            1 => Self::Attached,
            2 => Self::Goodbye,
            3 => Self::Reserved,
            _ => return None,
        })
    }

    /// The state's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Empty => "Empty",
            Self::Attached => "Attached",
            Self::Goodbye => "Goodbye",
            Self::Reserved => "Reserved",
        }
    }
}

/// A peer table entry as it sits in shared memory.
#[repr(C)]
#[derive(Debug)]
pub struct PeerEntry {
    /// A [`PeerState`] word.
    pub state: AtomicU32,
    /// Attach counter.
    pub epoch: AtomicU32,
    /// Last heartbeat, monotonic ns.
    pub last_heartbeat: AtomicU64,
    /// Offset of this guest's G2H ring.
    pub ring_offset: AtomicU64,
    /// Guest-to-host doorbell (format-reserved bytes).
    pub g2h_doorbell: Doorbell,
    /// Host-to-guest doorbell (format-reserved bytes).
    pub h2g_doorbell: Doorbell,
    /// shmrt's flags for this guest (format-reserved bytes, zero in a
    /// segment of another host): [`HOST_RUNS_GUEST`].
    pub host_flags: AtomicU32,
    reserved: [AtomicU32; 5],
}

/// [`PeerEntry::host_flags`]: the host runs this guest on its own thread
/// (a fiber or a callback), so a guest polling its ring before `wait`
/// holds the very thread that would write: it should wait at once.
pub const HOST_RUNS_GUEST: u32 = 1;

const _: () = {
    assert!(size_of::<PeerEntry>() == 64);
    assert!(offset_of!(PeerEntry, state) == 0);
    assert!(offset_of!(PeerEntry, epoch) == 4);
    assert!(offset_of!(PeerEntry, last_heartbeat) == 8);
    assert!(offset_of!(PeerEntry, ring_offset) == 16);
    assert!(offset_of!(PeerEntry, g2h_doorbell) == 24);
    assert!(offset_of!(PeerEntry, h2g_doorbell) == 32);
    assert!(offset_of!(PeerEntry, host_flags) == 40);
};

/// The state word held something other than what a transition needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateMismatch {
    /// The raw state word found.
    pub found: u32,
}

impl core::fmt::Display for StateMismatch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match PeerState::from_u32(self.found) {
            Some(s) => write!(f, "peer entry is {}", s.name()),
            None => write!(f, "peer entry state word is {} (not a state)", self.found),
        }
    }
}

impl core::error::Error for StateMismatch {}

impl PeerEntry {
    pub(crate) fn init(&self, ring_offset: u64) {
        // Relaxed: published by the header's magic (SYNC POINT "magic").
        self.state.store(PeerState::Empty as u32, Ordering::Relaxed);
        self.epoch.store(0, Ordering::Relaxed);
        self.last_heartbeat.store(0, Ordering::Relaxed);
        self.ring_offset.store(ring_offset, Ordering::Relaxed);
        for d in [&self.g2h_doorbell, &self.h2g_doorbell] {
            d.seq.store(0, Ordering::Relaxed);
            d.waiters.store(0, Ordering::Relaxed);
        }
        self.host_flags.store(0, Ordering::Relaxed);
        for w in &self.reserved {
            w.store(0, Ordering::Relaxed);
        }
    }

    /// Whether the host runs this guest on its own thread
    /// ([`HOST_RUNS_GUEST`]): a hint, which only tunes the guest's polling.
    pub fn host_runs_guest(&self) -> bool {
        self.host_flags.load(Ordering::Relaxed) & HOST_RUNS_GUEST != 0
    }

    /// The state, or `None` when the word holds no state.
    pub fn state(&self) -> Option<PeerState> {
        PeerState::from_u32(self.state.load(Ordering::Acquire))
    }

    /// The epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Acquire)
    }

    fn transition(&self, from: PeerState, to: PeerState) -> Result<(), StateMismatch> {
        // AcqRel: a successful transition publishes what was done before it
        // and sees what the previous owner did (SYNC POINT "peer state").
        self.state
            .compare_exchange(from as u32, to as u32, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(|found| StateMismatch { found })
    }

    /// Empty -> Reserved, bumping the epoch; returns the new epoch.
    pub fn try_reserve(&self) -> Result<u32, StateMismatch> {
        self.transition(PeerState::Empty, PeerState::Reserved)?;
        Ok(self.epoch.fetch_add(1, Ordering::AcqRel).wrapping_add(1))
    }

    /// Empty -> Attached, bumping the epoch; returns the new epoch.
    pub fn try_attach(&self) -> Result<u32, StateMismatch> {
        self.transition(PeerState::Empty, PeerState::Attached)?;
        Ok(self.epoch.fetch_add(1, Ordering::AcqRel).wrapping_add(1))
    }

    /// Reserved -> Attached (the reserved guest claims its entry).
    pub fn try_claim_reserved(&self) -> Result<(), StateMismatch> {
        self.transition(PeerState::Reserved, PeerState::Attached)
    }

    /// Reserved -> Empty (a spawn failed before the guest claimed it).
    pub fn release_reserved(&self) -> Result<(), StateMismatch> {
        self.transition(PeerState::Reserved, PeerState::Empty)
    }

    /// Marks the entry Goodbye.
    pub fn set_goodbye(&self) {
        self.state
            .store(PeerState::Goodbye as u32, Ordering::Release);
    }

    /// Back to Empty after recovery.
    pub fn reset(&self) {
        self.last_heartbeat.store(0, Ordering::Release);
        self.state.store(PeerState::Empty as u32, Ordering::Release);
    }

    /// Records a heartbeat.
    pub fn heartbeat(&self, now_ns: u64) {
        self.last_heartbeat.store(now_ns, Ordering::Release);
    }

    /// The last heartbeat.
    pub fn last_heartbeat(&self) -> u64 {
        self.last_heartbeat.load(Ordering::Acquire)
    }

    /// True when heartbeats are on and the last one is more than two
    /// intervals old.
    pub fn is_heartbeat_stale(&self, now_ns: u64, interval_ns: u64) -> bool {
        interval_ns != 0
            && now_ns.saturating_sub(self.last_heartbeat()) > interval_ns.saturating_mul(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> std::boxed::Box<PeerEntry> {
        // SAFETY: PeerEntry is all atomics, for which all-zero is valid.
        let e: std::boxed::Box<PeerEntry> = unsafe { std::boxed::Box::new(core::mem::zeroed()) };
        e.init(4096);
        e
    }

    #[test]
    fn peer_ids_and_indices() {
        assert_eq!(PeerId::new(0), None);
        assert_eq!(PeerId::new(256), None);
        assert_eq!(PeerId::new(1).map(PeerId::index), Some(0));
        assert_eq!(PeerId::new(255).map(PeerId::index), Some(254));
        assert_eq!(PeerId::from_index(0).map(PeerId::get), Some(1));
        assert_eq!(PeerId::from_index(254).map(PeerId::get), Some(255));
        assert_eq!(PeerId::from_index(255), None);
    }

    #[test]
    fn reserve_claim_goodbye_reset() {
        let e = entry();
        assert_eq!(e.state(), Some(PeerState::Empty));
        assert_eq!(e.try_reserve(), Ok(1));
        assert_eq!(e.try_attach(), Err(StateMismatch { found: 3 }));
        e.try_claim_reserved().unwrap();
        assert_eq!(e.state(), Some(PeerState::Attached));
        e.set_goodbye();
        assert_eq!(e.state(), Some(PeerState::Goodbye));
        e.reset();
        assert_eq!(e.try_attach(), Ok(2));
        assert_eq!(e.ring_offset.load(Ordering::Relaxed), 4096);
    }

    #[test]
    fn released_reservation_is_empty_again() {
        let e = entry();
        e.try_reserve().unwrap();
        e.release_reserved().unwrap();
        assert_eq!(e.state(), Some(PeerState::Empty));
        assert!(e.release_reserved().is_err());
    }

    #[test]
    fn heartbeat_staleness() {
        let e = entry();
        e.heartbeat(1_000);
        assert!(!e.is_heartbeat_stale(2_900, 1_000));
        assert!(e.is_heartbeat_stale(3_001, 1_000));
        assert!(
            !e.is_heartbeat_stale(u64::MAX, 0),
            "off when the interval is 0"
        );
    }

    #[test]
    fn garbage_state_is_reported_not_guessed() {
        let e = entry();
        e.state.store(77, Ordering::Relaxed);
        assert_eq!(e.state(), None);
        assert_eq!(e.try_reserve(), Err(StateMismatch { found: 77 }));
    }
}
