//! Error types. Each names the field and the value that was wrong, so that
//! a report about a hostile or corrupt segment says exactly what was seen.

use core::fmt;

/// A segment configuration that can not be laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// `max_guests` must be 1..=255.
    MaxGuests { value: u32 },
    /// Ring capacity must be a multiple of 4 in 64..=1 GiB.
    RingCapacity { value: u32 },
    /// At least one size class is needed.
    NoSizeClasses,
    /// More classes than [`crate::layout::MAX_SIZE_CLASSES`].
    TooManySizeClasses { count: u64, max: u32 },
    /// A class with a slot too small for the length prefix, or no slots.
    SizeClass {
        index: u32,
        slot_size: u32,
        slot_count: u32,
    },
    /// A slot size that is not a multiple of
    /// [`crate::layout::SLOT_ALIGN`]: the length prefixes of its slots
    /// would be misaligned.
    SlotSizeAlignment { index: u32, slot_size: u32 },
    /// Classes must be given smallest first.
    SizeClassOrder { index: u32 },
    /// The sizes overflow 64-bit offsets.
    Overflow,
    /// The memory given is smaller than the layout.
    RegionTooSmall { needed: u64, available: u64 },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MaxGuests { value } => write!(f, "max_guests is {value}; it must be 1..=255"),
            Self::RingCapacity { value } => write!(
                f,
                "ring capacity is {value} bytes; it must be a multiple of 4 between 64 bytes and 1 GiB"
            ),
            Self::NoSizeClasses => f.write_str("no slot size classes; give at least one"),
            Self::TooManySizeClasses { count, max } => {
                write!(f, "{count} slot size classes; at most {max} are supported")
            }
            Self::SizeClass {
                index,
                slot_size,
                slot_count,
            } => write!(
                f,
                "size class {index} has slot_size {slot_size} and slot_count {slot_count}; \
                 slots must be larger than the 4-byte length prefix and the count must be 1..u32::MAX"
            ),
            Self::SlotSizeAlignment { index, slot_size } => {
                write!(
                    f,
                    "size class {index} has slot_size {slot_size}, not a multiple of 4: the u32 length \
                     prefix at the start of each slot must be 4-byte aligned"
                )?;
                match crate::layout::nearest_slot_sizes(*slot_size) {
                    (Some(down), Some(up)) => write!(f, " (nearest valid: {down} or {up})"),
                    (Some(v), None) | (None, Some(v)) => write!(f, " (nearest valid: {v})"),
                    (None, None) => Ok(()),
                }
            }
            Self::SizeClassOrder { index } => {
                write!(
                    f,
                    "size class {index} is smaller than the one before it; list classes smallest first"
                )
            }
            Self::Overflow => f.write_str("segment sizes overflow 64-bit offsets"),
            Self::RegionTooSmall { needed, available } => {
                write!(
                    f,
                    "segment needs {needed} bytes but only {available} are mapped"
                )
            }
        }
    }
}

impl core::error::Error for LayoutError {}

/// Which ring cursor a [`ProtocolError::Cursor`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CursorField {
    /// The consumer's `read`.
    Read,
    /// The producer's `write`.
    Write,
    /// The producer's wrap `watermark`.
    Watermark,
}

impl CursorField {
    /// The field's name in the format.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Watermark => "watermark",
        }
    }
}

/// A frame in a ring that breaks the framing rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer than 8 bytes readable where a frame must start.
    Truncated { available: u32 },
    /// `total_len` below 8, not a multiple of 4, or past the readable bytes.
    TotalLen { value: u32, available: u32 },
    /// Both SLOT_REF and MMAP_REF set, or a reserved flag bit set.
    Flags { value: u8 },
    /// `inline_payload_len` larger than the frame.
    InlineLen { value: u16, total_len: u32 },
    /// A slot-ref or mmap-ref frame too short for its body.
    BodyLen { total_len: u32, needed: u32 },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { available } => {
                write!(
                    f,
                    "frame header truncated: only {available} bytes readable, 8 needed"
                )
            }
            Self::TotalLen { value, available } => write!(
                f,
                "frame total_len {value} is invalid (must be >= 8, a multiple of 4 and <= {available} readable bytes)"
            ),
            Self::Flags { value } => write!(
                f,
                "frame flags {value:#04x} are invalid (SLOT_REF and MMAP_REF together, or a reserved bit)"
            ),
            Self::InlineLen { value, total_len } => {
                write!(
                    f,
                    "frame inline_payload_len {value} exceeds total_len {total_len} - 8"
                )
            }
            Self::BodyLen { total_len, needed } => {
                write!(
                    f,
                    "frame total_len {total_len} is too short for its {needed}-byte reference"
                )
            }
        }
    }
}

impl core::error::Error for FrameError {}

/// A slot reference or slot meta that does not check out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotError {
    /// `class_idx` past the pool's classes.
    Class { value: u8, classes: u32 },
    /// `extent_idx` other than 0 (extents are not supported).
    Extent { value: u8 },
    /// `slot_idx` past the class's slots.
    Index {
        class: u8,
        value: u32,
        slot_count: u32,
    },
    /// The slot's generation differs from the reference's.
    Generation {
        class: u8,
        slot: u32,
        expected: u32,
        found: u32,
    },
    /// The slot is not allocated (a double free or a stale reference).
    NotAllocated { class: u8, slot: u32, state: u32 },
    /// The length prefix exceeds what the slot can carry.
    PayloadLen {
        class: u8,
        slot: u32,
        value: u32,
        max: u32,
    },
    /// A free-list link (`free_head` or `next_free`) outside the class.
    Link {
        class: u8,
        field: &'static str,
        value: u32,
        slot_count: u32,
    },
    /// A slot taken from a free list was not marked free: the list is
    /// corrupt (a cycle or a pushed allocated slot).
    FreeListCorrupt { class: u8, slot: u32, state: u32 },
    /// A free-list CAS kept failing: another party rewrites the head
    /// without end.
    Contended { class: u8 },
}

impl fmt::Display for SlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Class { value, classes } => {
                write!(
                    f,
                    "slot ref class_idx {value} out of range ({classes} classes)"
                )
            }
            Self::Extent { value } => write!(f, "slot ref extent_idx {value} is not 0"),
            Self::Index {
                class,
                value,
                slot_count,
            } => {
                write!(
                    f,
                    "slot ref slot_idx {value} out of range in class {class} ({slot_count} slots)"
                )
            }
            Self::Generation {
                class,
                slot,
                expected,
                found,
            } => write!(
                f,
                "slot {class}/{slot} generation is {found}, the reference says {expected} (stale or forged reference)"
            ),
            Self::NotAllocated { class, slot, state } => {
                write!(
                    f,
                    "slot {class}/{slot} is not allocated (state {state}): double free or stale reference"
                )
            }
            Self::PayloadLen {
                class,
                slot,
                value,
                max,
            } => {
                write!(
                    f,
                    "slot {class}/{slot} length prefix {value} exceeds its capacity {max}"
                )
            }
            Self::Link {
                class,
                field,
                value,
                slot_count,
            } => {
                write!(
                    f,
                    "class {class} free list {field} = {value} out of range ({slot_count} slots)"
                )
            }
            Self::FreeListCorrupt { class, slot, state } => write!(
                f,
                "class {class} free list handed out slot {slot} in state {state}: the free list is corrupt"
            ),
            Self::Contended { class } => {
                write!(
                    f,
                    "class {class} free list head kept changing; gave up after a bounded number of tries"
                )
            }
        }
    }
}

impl core::error::Error for SlotError {}

/// A violation of the protocol by the party on the other side of the
/// memory. It concerns one segment (one sandbox) only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// A cursor outside the ring.
    Cursor {
        field: CursorField,
        value: u32,
        capacity: u32,
    },
    /// A cursor that contradicts the reader's own cursor.
    CursorOrder {
        field: CursorField,
        value: u32,
        read: u32,
    },
    /// A bad frame.
    Frame(FrameError),
    /// A bad slot reference, slot meta or free list.
    Slot(SlotError),
    /// An mmap-ref frame: parsed, but this runtime maps no external regions.
    MmapRefUnsupported { map_id: u32, payload_len: u32 },
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cursor {
                field,
                value,
                capacity,
            } => {
                write!(
                    f,
                    "ring {} cursor {value} is past the capacity {capacity}",
                    field.name()
                )
            }
            Self::CursorOrder { field, value, read } => write!(
                f,
                "ring {} cursor {value} is behind the read cursor {read} with no wrap announced",
                field.name()
            ),
            Self::Frame(e) => e.fmt(f),
            Self::Slot(e) => e.fmt(f),
            Self::MmapRefUnsupported {
                map_id,
                payload_len,
            } => write!(
                f,
                "mmap-ref frame (map {map_id}, {payload_len} bytes) received; external mmap regions are not supported"
            ),
        }
    }
}

/// Transparent over [`FrameError`] and [`SlotError`] (its `Display` is
/// theirs), so they are not also its `source`: a chain would say it twice.
impl core::error::Error for ProtocolError {}

impl From<FrameError> for ProtocolError {
    fn from(e: FrameError) -> Self {
        Self::Frame(e)
    }
}

impl From<SlotError> for ProtocolError {
    fn from(e: SlotError) -> Self {
        Self::Slot(e)
    }
}

/// Every error this crate returns is a `core::error::Error`.
const _: () = {
    const fn is_error<E: core::error::Error>() {}
    is_error::<LayoutError>();
    is_error::<FrameError>();
    is_error::<SlotError>();
    is_error::<ProtocolError>();
    is_error::<crate::segment_header::HeaderError>();
    is_error::<crate::peer_entry::StateMismatch>();
    is_error::<crate::slot_pool::AllocError>();
    is_error::<crate::channel::SendError>();
};
