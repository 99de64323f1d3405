//! The 128-byte segment header at offset 0.
//!
//! Byte map (all little-endian):
//!
//! ```text
//! [0..8)    magic "TELXHUB\x07"     written last by the creator
//! [8..12)   version = 7              [12..16)  header_size = 128
//! [16..24)  total_size               [24..28)  max_payload_size
//! [28..32)  inline_threshold (0=256) [32..36)  max_guests (<= 255)
//! [36..40)  bipbuf_capacity          [40..48)  peer_table_offset
//! [48..56)  var_pool_offset          [56..64)  heartbeat_interval ns
//! [64..68)  host_goodbye (atomic)    [68..72)  num_var_slot_classes
//! [72..80)  current_size (atomic)    [80..84)  shmrt features (reserved in the format)
//! [84..128) reserved, zero
//! ```
//!
//! Every word is an atomic so that reading a header another party may be
//! rewriting is never a data race; the creator's Release store of the magic
//! pairs with an opener's Acquire load (SYNC POINT "magic").

use core::fmt;
use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The magic bytes, "TELXHUB\x07".
pub const MAGIC: [u8; 8] = *b"TELXHUB\x07";
/// The format version this crate speaks.
pub const SEGMENT_VERSION: u32 = 7;
/// Feature bit: the peer entries carry live doorbell words (eventcounts).
/// Lives in the header's reserved bytes, which vox-shm zeroes, so a vox
/// segment reads as "no doorbells".
pub const FEATURE_DOORBELLS: u32 = 1;
/// Every feature bit this crate knows.
pub const KNOWN_FEATURES: u32 = FEATURE_DOORBELLS;

/// The segment header, as it sits in shared memory.
#[repr(C)]
#[derive(Debug)]
pub struct SegmentHeader {
    /// The magic bytes read as a little-endian u64.
    pub magic: AtomicU64,
    /// Format version.
    pub version: AtomicU32,
    /// Always 128.
    pub header_size: AtomicU32,
    /// Bytes of the segment.
    pub total_size: AtomicU64,
    /// Advisory largest payload.
    pub max_payload_size: AtomicU32,
    /// Inline threshold, 0 = 256.
    pub inline_threshold: AtomicU32,
    /// Guests in the peer table.
    pub max_guests: AtomicU32,
    /// Data bytes per ring.
    pub bipbuf_capacity: AtomicU32,
    /// Offset of the peer table (128).
    pub peer_table_offset: AtomicU64,
    /// Offset of the slot pool.
    pub var_pool_offset: AtomicU64,
    /// Heartbeat interval, ns, 0 = off.
    pub heartbeat_interval: AtomicU64,
    /// Non-zero once the host says goodbye.
    pub host_goodbye: AtomicU32,
    /// Classes in the slot pool.
    pub num_var_slot_classes: AtomicU32,
    /// Current segment size.
    pub current_size: AtomicU64,
    /// shmrt extension: feature bits (format-reserved bytes).
    pub features: AtomicU32,
    reserved: [AtomicU32; 11],
}

const _: () = {
    assert!(size_of::<SegmentHeader>() == 128);
    assert!(offset_of!(SegmentHeader, magic) == 0);
    assert!(offset_of!(SegmentHeader, version) == 8);
    assert!(offset_of!(SegmentHeader, header_size) == 12);
    assert!(offset_of!(SegmentHeader, total_size) == 16);
    assert!(offset_of!(SegmentHeader, max_payload_size) == 24);
    assert!(offset_of!(SegmentHeader, inline_threshold) == 28);
    assert!(offset_of!(SegmentHeader, max_guests) == 32);
    assert!(offset_of!(SegmentHeader, bipbuf_capacity) == 36);
    assert!(offset_of!(SegmentHeader, peer_table_offset) == 40);
    assert!(offset_of!(SegmentHeader, var_pool_offset) == 48);
    assert!(offset_of!(SegmentHeader, heartbeat_interval) == 56);
    assert!(offset_of!(SegmentHeader, host_goodbye) == 64);
    assert!(offset_of!(SegmentHeader, num_var_slot_classes) == 68);
    assert!(offset_of!(SegmentHeader, current_size) == 72);
    assert!(offset_of!(SegmentHeader, features) == 80);
};

/// The header's values, loaded once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderSnapshot {
    pub magic: [u8; 8],
    pub version: u32,
    pub header_size: u32,
    pub total_size: u64,
    pub max_payload_size: u32,
    pub inline_threshold: u32,
    pub max_guests: u32,
    pub bipbuf_capacity: u32,
    pub peer_table_offset: u64,
    pub var_pool_offset: u64,
    pub heartbeat_interval: u64,
    pub host_goodbye: u32,
    pub num_var_slot_classes: u32,
    pub current_size: u64,
    pub features: u32,
}

impl SegmentHeader {
    /// Loads every field once. The magic is loaded first with Acquire
    /// (SYNC POINT "magic"): if it is set, the fields the creator wrote
    /// before it are visible.
    pub fn snapshot(&self) -> HeaderSnapshot {
        let magic = self.magic.load(Ordering::Acquire).to_le_bytes();
        // Relaxed: ordered after the magic's Acquire above; later changes by
        // a hostile writer are caught by validation, not by ordering.
        HeaderSnapshot {
            magic,
            version: self.version.load(Ordering::Relaxed),
            header_size: self.header_size.load(Ordering::Relaxed),
            total_size: self.total_size.load(Ordering::Relaxed),
            max_payload_size: self.max_payload_size.load(Ordering::Relaxed),
            inline_threshold: self.inline_threshold.load(Ordering::Relaxed),
            max_guests: self.max_guests.load(Ordering::Relaxed),
            bipbuf_capacity: self.bipbuf_capacity.load(Ordering::Relaxed),
            peer_table_offset: self.peer_table_offset.load(Ordering::Relaxed),
            var_pool_offset: self.var_pool_offset.load(Ordering::Relaxed),
            heartbeat_interval: self.heartbeat_interval.load(Ordering::Relaxed),
            host_goodbye: self.host_goodbye.load(Ordering::Relaxed),
            num_var_slot_classes: self.num_var_slot_classes.load(Ordering::Relaxed),
            current_size: self.current_size.load(Ordering::Relaxed),
            features: self.features.load(Ordering::Relaxed),
        }
    }

    /// Whether the host has said goodbye. Acquire pairs with
    /// [`Self::say_goodbye`] (SYNC POINT "host_goodbye"), so messages
    /// sent before the goodbye are visible once it is seen.
    pub fn host_goodbye(&self) -> bool {
        self.host_goodbye.load(Ordering::Acquire) != 0
    }

    /// Raise the host goodbye flag.
    pub fn say_goodbye(&self) {
        self.host_goodbye.store(1, Ordering::Release);
    }

    /// Writes every field but the magic, zeroes the reserved words.
    /// [`Self::publish`] must follow once the rest of the segment is ready.
    pub(crate) fn init_fields(&self, layout: &crate::layout::SegmentLayout) {
        // Relaxed: published by the Release store of the magic.
        self.version.store(SEGMENT_VERSION, Ordering::Relaxed);
        self.header_size.store(128, Ordering::Relaxed);
        self.total_size.store(layout.total_size, Ordering::Relaxed);
        self.max_payload_size
            .store(layout.max_payload_size, Ordering::Relaxed);
        self.inline_threshold
            .store(layout.inline_threshold_raw, Ordering::Relaxed);
        self.max_guests.store(layout.max_guests, Ordering::Relaxed);
        self.bipbuf_capacity
            .store(layout.ring_capacity, Ordering::Relaxed);
        self.peer_table_offset
            .store(crate::layout::SEGMENT_HEADER_SIZE, Ordering::Relaxed);
        self.var_pool_offset
            .store(layout.var_pool_offset, Ordering::Relaxed);
        self.heartbeat_interval
            .store(layout.heartbeat_interval_ns, Ordering::Relaxed);
        self.host_goodbye.store(0, Ordering::Relaxed);
        self.num_var_slot_classes
            .store(layout.classes().len() as u32, Ordering::Relaxed);
        self.current_size
            .store(layout.total_size, Ordering::Relaxed);
        self.features.store(layout.features, Ordering::Relaxed);
        for w in &self.reserved {
            w.store(0, Ordering::Relaxed);
        }
    }

    /// Writes the magic last (SYNC POINT "magic"): until then, openers see
    /// "not initialized yet".
    pub(crate) fn publish(&self) {
        self.magic
            .store(u64::from_le_bytes(MAGIC), Ordering::Release);
    }
}

/// Why a segment header was refused. Each variant names the field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// The mapping is shorter than a header.
    TooShort { len: u64 },
    /// The magic is all zero: the creator has not finished yet.
    NotInitialized,
    /// The magic is not "TELXHUB\x07".
    BadMagic { found: [u8; 8] },
    /// A version other than 7.
    Version { found: u32 },
    /// A field whose value is out of range; `rule` says what was expected.
    Field {
        field: &'static str,
        value: u64,
        rule: &'static str,
    },
    /// A field that differs from the value the canonical layout gives.
    Layout {
        field: &'static str,
        value: u64,
        expected: u64,
    },
    /// A peer entry or ring header of guest `index` (0-based) that differs
    /// from the canonical layout.
    Peer {
        index: u32,
        field: &'static str,
        value: u64,
        expected: u64,
    },
    /// A size class header that can not be right.
    Class {
        index: u32,
        field: &'static str,
        value: u64,
        rule: &'static str,
    },
    /// The segment needs more bytes than are mapped.
    Truncated {
        field: &'static str,
        needed: u64,
        mapped: u64,
    },
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => {
                write!(f, "{len} bytes is shorter than the 128-byte segment header")
            }
            Self::NotInitialized => f.write_str(
                "segment not initialized yet (magic is zero): its creator has not finished; retry later",
            ),
            Self::BadMagic { found } => write!(
                f,
                "magic is {found:02x?}, not \"TELXHUB\\x07\": this is not a shm segment of this format"
            ),
            Self::Version { found } => {
                write!(f, "segment version {found} is not supported (this reader speaks version 7)")
            }
            Self::Field { field, value, rule } => {
                write!(f, "header field {field} = {value} is invalid: {rule}")
            }
            Self::Layout { field, value, expected } => write!(
                f,
                "header field {field} = {value}, but the layout of this segment puts it at {expected}"
            ),
            Self::Peer { index, field, value, expected } => write!(
                f,
                "guest {} (peer id {}): {field} = {value}, but the layout of this segment puts it at {expected}",
                index,
                crate::peer_entry::PeerId::from_index(*index).map_or(0, crate::peer_entry::PeerId::get)
            ),
            Self::Class { index, field, value, rule } => {
                write!(f, "size class {index}: {field} = {value} is invalid: {rule}")
            }
            Self::Truncated { field, needed, mapped } => write!(
                f,
                "{field} needs {needed} bytes but the segment maps only {mapped}: the file is truncated"
            ),
        }
    }
}

impl core::error::Error for HeaderError {}

impl HeaderSnapshot {
    /// Checks the header-only rules: magic, version, sizes, counts and that
    /// the sizes fit `mapped` bytes. The pool's class headers are checked by
    /// [`crate::segment::Segment::open_validated`].
    pub fn check(&self, mapped: u64) -> Result<(), HeaderError> {
        if self.magic == [0; 8] {
            return Err(HeaderError::NotInitialized);
        }
        if self.magic != MAGIC {
            return Err(HeaderError::BadMagic { found: self.magic });
        }
        if self.version != SEGMENT_VERSION {
            return Err(HeaderError::Version {
                found: self.version,
            });
        }
        if self.header_size != 128 {
            return Err(HeaderError::Field {
                field: "header_size",
                value: self.header_size as u64,
                rule: "must be 128",
            });
        }
        if self.max_guests == 0 || self.max_guests > crate::layout::MAX_GUESTS {
            return Err(HeaderError::Field {
                field: "max_guests",
                value: self.max_guests as u64,
                rule: "must be 1..=255",
            });
        }
        if self.bipbuf_capacity < 32 || self.bipbuf_capacity > 1 << 30 {
            return Err(HeaderError::Field {
                field: "bipbuf_capacity",
                value: self.bipbuf_capacity as u64,
                rule: "must be 32 bytes..=1 GiB",
            });
        }
        if self.peer_table_offset != crate::layout::SEGMENT_HEADER_SIZE {
            return Err(HeaderError::Layout {
                field: "peer_table_offset",
                value: self.peer_table_offset,
                expected: crate::layout::SEGMENT_HEADER_SIZE,
            });
        }
        if self.num_var_slot_classes == 0
            || self.num_var_slot_classes as usize > crate::layout::MAX_SIZE_CLASSES
        {
            return Err(HeaderError::Field {
                field: "num_var_slot_classes",
                value: self.num_var_slot_classes as u64,
                rule: "must be 1..=16",
            });
        }
        if self.total_size > mapped {
            return Err(HeaderError::Truncated {
                field: "total_size",
                needed: self.total_size,
                mapped,
            });
        }
        if self.current_size > mapped {
            return Err(HeaderError::Truncated {
                field: "current_size",
                needed: self.current_size,
                mapped,
            });
        }
        if self.features & !KNOWN_FEATURES != 0 {
            return Err(HeaderError::Field {
                field: "features",
                value: self.features as u64,
                rule: "unknown shmrt feature bits are set",
            });
        }
        Ok(())
    }
}
