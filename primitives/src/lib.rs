//! The shared-memory segment format of shmrt, byte-compatible with the crates
//! shm-primitives 0.3.1 and vox-shm 0.3.1.
//!
//! One definition for every party: the runtime on the host (x86_64, `std`),
//! guests inside wasm32 sandboxes (`no_std`, no allocator), and native peers
//! of the format. All integers are little-endian and fixed-width, so wasm32
//! and x86_64 see identical layouts.
//!
//! A segment is laid out as
//!
//! ```text
//! 0                      segment header (128 B)            [segment_header]
//! 128                    peer table: max_guests x 64 B     [peer_entry]
//! 128 + 64 * max_guests  per guest: G2H ring, H2G ring     [ring]
//!                        (128 B header + capacity, stride rounded to 64)
//! var_pool_offset        size-class headers, then per class
//!                        slot metas and slot data          [slot_pool]
//! ```
//!
//! and [`layout::SegmentLayout`] computes those offsets exactly as vox-shm does.
//!
//! # Two ways in
//!
//! Shared memory may be written by a party we do not trust (a sandboxed
//! guest writes its whole window). Every value this crate reads from shared
//! memory that the *other* side writes (a cursor, a frame header, a slot
//! ref, a free-list link, a length prefix) is loaded once into a local,
//! checked against the reader's own copy of the layout, and only then used;
//! a violation is a [`ProtocolError`], never a panic, a hang or an
//! out-of-bounds access. Values a side writes itself (its own cursor) are
//! kept privately and never re-read. The trusting entry point,
//! [`segment::Segment::open_trusting`], takes the layout from the header as
//! written; it is for the side that owns the memory and is the only one
//! writing its configuration (a guest inside its own window). The validated
//! entry point, [`segment::Segment::open_validated`], checks every header
//! field against the mapping and the canonical layout first, and
//! [`segment::Segment::from_layout`] lets a host that created the segment
//! keep its own copy and never re-read the header at all.
#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(any(feature = "std", test, loom))]
extern crate std;

pub mod call_header;
pub mod callback_cursors;
pub mod channel;
pub mod checksum;
pub mod doorbell;
pub mod error;
pub mod frame;
#[cfg(any(feature = "std", test))]
pub mod heap_region;
pub mod layout;
pub mod peer_entry;
pub mod ring;
pub mod segment;
pub mod segment_header;
pub mod shared_bytes;
pub mod slot_pool;
mod sync;

pub use channel::{HeldSlot, Message, Receiver, SendError, Sender};
pub use doorbell::{Doorbell, WaitOutcome};
pub use error::{FrameError, LayoutError, ProtocolError, SlotError};
pub use frame::{Frame, MmapRef, SlotRef};
pub use layout::{ClassLayout, SegmentConfig, SegmentLayout, SizeClass, SizeClasses};
pub use peer_entry::{PeerEntry, PeerId, PeerState};
pub use ring::{Consumer, Producer, RingHeader};
pub use segment::Segment;
pub use segment_header::{HeaderError, HeaderSnapshot, SegmentHeader};
pub use shared_bytes::{SharedBytes, SharedBytesMut};
pub use slot_pool::{ClassHolders, SizeClassHeader, SlotMeta, SlotPool};
