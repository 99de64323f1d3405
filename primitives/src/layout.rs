//! Segment configuration and the byte layout computed from it.
//!
//! The computation is the one of vox-shm 0.3.1 (`SegmentLayout::compute`
//! and `VarSlotPool::layout`): peer table at 128, rings at
//! `128 + 64 * max_guests`, each ring `128 + capacity` bytes rounded up to
//! 64, a G2H/H2G pair per guest, then the var-slot pool 64-aligned; inside
//! the pool, `num_classes` 64-byte class headers (rounded to 64), then per
//! class its slot metas and its slot data, each rounded to 64.
//!
//! All arithmetic is checked and done in `u64`, so a hostile header can not
//! overflow it on wasm32, and nothing here allocates.

use crate::error::LayoutError;

/// Size of the segment header.
pub const SEGMENT_HEADER_SIZE: u64 = 128;
/// Size of one peer table entry.
pub const PEER_ENTRY_SIZE: u64 = 64;
/// Size of a ring (BipBuffer) header.
pub const RING_HEADER_SIZE: u64 = 128;
/// Size of one size-class header in the pool.
pub const CLASS_HEADER_SIZE: u64 = 64;
/// Size of one slot meta.
pub const SLOT_META_SIZE: u64 = 16;
/// Largest number of guests a segment can describe.
pub const MAX_GUESTS: u32 = 255;
/// Largest number of size classes this implementation handles. A bound
/// keeps the pool usable without an allocator; vox-shm segments use a
/// handful.
pub const MAX_SIZE_CLASSES: usize = 16;
/// Inline threshold used when the header says 0.
pub const DEFAULT_INLINE_THRESHOLD: u32 = 256;
/// Bytes at the start of a slot that hold the payload length (u32 LE).
pub const SLOT_LEN_PREFIX: u32 = 4;
/// Every slot size is a multiple of this.
///
/// Slot `i` of a class starts at `data_offset + i * slot_size`, and
/// `data_offset` is 64-aligned; its first word is the u32 length prefix,
/// which both sides access as an `AtomicU32` (so that a peer rewriting it
/// is not a data race on the host, and because a wasm atomic on an
/// unaligned address traps). A multiple of 4 keeps every prefix aligned.
/// 8 would buy nothing: no 8-byte word is accessed inside slot data (the
/// 16-byte metas live in their own 64-aligned array), and the payload
/// starts 4 bytes into the slot, so it is never 8-aligned anyway; u64
/// readers of payloads ([`crate::checksum`]) read unaligned. The common
/// sizes of the format are multiples of 4 but not of 8 (64 KiB + 4).
/// shm-primitives 0.3.1 accepts any non-zero size; shmrt refuses the
/// others, on creation and when opening a header another program wrote.
pub const SLOT_ALIGN: u32 = 4;
/// Segment files and windows are sized in wasm pages.
pub const WASM_PAGE_SIZE: u64 = 65536;

/// The valid slot sizes next to `slot_size`: the multiples of
/// [`SLOT_ALIGN`] just below and just above it that are larger than the
/// length prefix (`None` where there is none). A valid size is its own
/// neighbour on both sides.
pub const fn nearest_slot_sizes(slot_size: u32) -> (Option<u32>, Option<u32>) {
    let down = slot_size / SLOT_ALIGN * SLOT_ALIGN;
    let below = if down > SLOT_LEN_PREFIX {
        Some(down)
    } else {
        None
    };
    let up = if down == slot_size {
        Some(down)
    } else {
        down.checked_add(SLOT_ALIGN)
    };
    let above = match up {
        Some(u) if u > SLOT_LEN_PREFIX => Some(u),
        Some(_) => Some(SLOT_LEN_PREFIX + SLOT_ALIGN),
        None => None,
    };
    (below, above)
}

const fn align64(n: u64) -> Option<u64> {
    match n.checked_add(63) {
        Some(v) => Some(v & !63),
        None => None,
    }
}

/// One size class of the slot pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeClass {
    /// Bytes per slot, length prefix included.
    pub slot_size: u32,
    /// Number of slots.
    pub slot_count: u32,
}

impl SizeClass {
    /// A class of `slot_count` slots that each carry up to `max_payload`
    /// bytes, the size `shmrt run --slot-classes PAYLOAD:COUNT` takes: the
    /// slot is 4 bytes larger (its length prefix). `max_payload` must be a
    /// multiple of 4, so that each prefix stays aligned; checked as
    /// [`Self::check`] does.
    pub const fn for_payload(max_payload: u32, slot_count: u32) -> Result<Self, LayoutError> {
        let Some(slot_size) = max_payload.checked_add(SLOT_LEN_PREFIX) else {
            return Err(LayoutError::SizeClass {
                index: 0,
                slot_size: max_payload,
                slot_count,
            });
        };
        let class = SizeClass {
            slot_size,
            slot_count,
        };
        match class.check(0) {
            Ok(()) => Ok(class),
            Err(e) => Err(e),
        }
    }

    /// Checks what every slot needs: room beyond the length prefix, a
    /// size that keeps each prefix aligned ([`SLOT_ALIGN`]), and a count
    /// in 1..u32::MAX. `index` is the class's place in the pool.
    pub const fn check(&self, index: u32) -> Result<(), LayoutError> {
        if self.slot_size <= SLOT_LEN_PREFIX || self.slot_count == 0 || self.slot_count == u32::MAX
        {
            return Err(LayoutError::SizeClass {
                index,
                slot_size: self.slot_size,
                slot_count: self.slot_count,
            });
        }
        if !self.slot_size.is_multiple_of(SLOT_ALIGN) {
            return Err(LayoutError::SlotSizeAlignment {
                index,
                slot_size: self.slot_size,
            });
        }
        Ok(())
    }

    /// Largest payload a slot of this class carries (the length prefix
    /// takes 4 bytes).
    pub const fn max_payload(&self) -> u32 {
        self.slot_size.saturating_sub(SLOT_LEN_PREFIX)
    }
}

/// A bounded list of size classes, so that no allocator is needed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SizeClasses {
    classes: [SizeClass; MAX_SIZE_CLASSES],
    len: usize,
}

impl SizeClasses {
    /// Copies `classes`, each checked with [`SizeClass::check`]; more
    /// than [`MAX_SIZE_CLASSES`] is an error.
    pub fn new(classes: &[SizeClass]) -> Result<Self, LayoutError> {
        if classes.len() > MAX_SIZE_CLASSES {
            return Err(LayoutError::TooManySizeClasses {
                count: classes.len() as u64,
                max: MAX_SIZE_CLASSES as u32,
            });
        }
        for (i, c) in classes.iter().enumerate() {
            c.check(i as u32)?;
        }
        let mut out = SizeClasses {
            classes: [SizeClass {
                slot_size: 0,
                slot_count: 0,
            }; MAX_SIZE_CLASSES],
            len: classes.len(),
        };
        out.classes[..classes.len()].copy_from_slice(classes);
        Ok(out)
    }

    /// The classes, in pool order.
    pub fn as_slice(&self) -> &[SizeClass] {
        &self.classes[..self.len]
    }
}

impl core::fmt::Debug for SizeClasses {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// What the creator of a segment chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentConfig {
    /// Number of guest entries in the peer table (1..=255).
    pub max_guests: u32,
    /// Data bytes per ring, per direction.
    pub ring_capacity: u32,
    /// Advisory largest payload, written to the header for peers.
    pub max_payload_size: u32,
    /// A message goes inline when `8 + len <= inline_threshold`; 0 means 256.
    pub inline_threshold: u32,
    /// Heartbeat interval in nanoseconds, 0 = off.
    pub heartbeat_interval_ns: u64,
    /// Slot pool classes, smallest first.
    pub size_classes: SizeClasses,
    /// shmrt feature bits written into the header's reserved bytes
    /// (see [`crate::segment_header::FEATURE_DOORBELLS`]).
    pub features: u32,
}

impl SegmentConfig {
    /// One guest, 64 KiB rings, slots carrying 4 KiB (64 of them), 64 KiB
    /// (16) and 1 MiB (4) payloads, the default inline threshold and
    /// doorbells on.
    pub fn single_guest() -> Self {
        const CLASSES: [SizeClass; 3] = [
            SizeClass {
                slot_size: 4096 + SLOT_LEN_PREFIX,
                slot_count: 64,
            },
            SizeClass {
                slot_size: 65536 + SLOT_LEN_PREFIX,
                slot_count: 16,
            },
            SizeClass {
                slot_size: (1 << 20) + SLOT_LEN_PREFIX,
                slot_count: 4,
            },
        ];
        SegmentConfig {
            max_guests: 1,
            ring_capacity: 64 * 1024,
            max_payload_size: 1 << 20,
            inline_threshold: 0,
            heartbeat_interval_ns: 0,
            size_classes: match SizeClasses::new(&CLASSES) {
                Ok(c) => c,
                Err(_) => unreachable!(),
            },
            features: crate::segment_header::FEATURE_DOORBELLS,
        }
    }
}

impl SegmentConfig {
    /// Sets the slot pool's classes, smallest first, and the header's
    /// advisory largest payload from them.
    pub fn set_size_classes(&mut self, classes: SizeClasses) {
        self.size_classes = classes;
        self.max_payload_size = classes
            .as_slice()
            .iter()
            .map(SizeClass::max_payload)
            .max()
            .unwrap_or(0);
    }
}

/// Offsets of one size class, absolute from the segment start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ClassLayout {
    /// Bytes per slot, length prefix included.
    pub slot_size: u32,
    /// Number of slots.
    pub slot_count: u32,
    /// Offset of this class's 64-byte header.
    pub header_offset: u64,
    /// Offset of the first of `slot_count` 16-byte metas.
    pub meta_offset: u64,
    /// Offset of slot 0's data.
    pub data_offset: u64,
}

impl ClassLayout {
    /// Largest payload one slot carries.
    pub const fn max_payload(&self) -> u32 {
        self.slot_size.saturating_sub(SLOT_LEN_PREFIX)
    }
}

/// Every offset and size of a segment, computed locally. A host keeps this
/// copy and never re-reads configuration from shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentLayout {
    /// Guests in the peer table.
    pub max_guests: u32,
    /// Data bytes per ring.
    pub ring_capacity: u32,
    /// Bytes from one ring header to the next (header + capacity, 64-aligned).
    pub ring_stride: u64,
    /// Offset of guest 1's G2H ring.
    pub ring_base: u64,
    /// Offset of the pool (its class headers).
    pub var_pool_offset: u64,
    /// Bytes the layout needs; the segment may be longer.
    pub total_size: u64,
    /// The header's `inline_threshold` as written (0 = default).
    pub inline_threshold_raw: u32,
    /// The header's `max_payload_size`.
    pub max_payload_size: u32,
    /// The header's heartbeat interval in ns.
    pub heartbeat_interval_ns: u64,
    /// shmrt feature bits.
    pub features: u32,
    classes: [ClassLayout; MAX_SIZE_CLASSES],
    num_classes: u32,
}

impl SegmentLayout {
    /// Computes the layout of `config`, checking every value.
    pub fn compute(config: &SegmentConfig) -> Result<Self, LayoutError> {
        if config.max_guests == 0 || config.max_guests > MAX_GUESTS {
            return Err(LayoutError::MaxGuests {
                value: config.max_guests,
            });
        }
        if config.ring_capacity < 64
            || !config.ring_capacity.is_multiple_of(4)
            || config.ring_capacity > 1 << 30
        {
            return Err(LayoutError::RingCapacity {
                value: config.ring_capacity,
            });
        }
        let classes = config.size_classes.as_slice();
        if classes.is_empty() {
            return Err(LayoutError::NoSizeClasses);
        }
        for (i, c) in classes.iter().enumerate() {
            c.check(i as u32)?;
            if i > 0 && classes[i - 1].slot_size > c.slot_size {
                return Err(LayoutError::SizeClassOrder { index: i as u32 });
            }
        }
        let mut layout = Self::canonical(config.max_guests, config.ring_capacity, classes)?;
        layout.inline_threshold_raw = config.inline_threshold;
        layout.max_payload_size = config.max_payload_size;
        layout.heartbeat_interval_ns = config.heartbeat_interval_ns;
        layout.features = config.features;
        Ok(layout)
    }

    /// The offsets vox-shm computes for these values, without judging the
    /// values beyond what the arithmetic and the alignment of every word
    /// need (slot sizes are multiples of [`SLOT_ALIGN`]). Used both to
    /// create a segment and to check a header another program wrote, so
    /// no layout with a misaligned slot prefix can be built.
    pub(crate) fn canonical(
        max_guests: u32,
        ring_capacity: u32,
        classes: &[SizeClass],
    ) -> Result<Self, LayoutError> {
        if classes.len() > MAX_SIZE_CLASSES {
            return Err(LayoutError::TooManySizeClasses {
                count: classes.len() as u64,
                max: MAX_SIZE_CLASSES as u32,
            });
        }
        for (i, c) in classes.iter().enumerate() {
            if !c.slot_size.is_multiple_of(SLOT_ALIGN) {
                return Err(LayoutError::SlotSizeAlignment {
                    index: i as u32,
                    slot_size: c.slot_size,
                });
            }
        }
        let overflow = LayoutError::Overflow;
        let ring_stride = align64(RING_HEADER_SIZE + ring_capacity as u64).ok_or(overflow)?;
        let ring_base = SEGMENT_HEADER_SIZE + PEER_ENTRY_SIZE * max_guests as u64;
        let rings = (max_guests as u64)
            .checked_mul(2 * ring_stride)
            .ok_or(overflow)?;
        let var_pool_offset =
            align64(ring_base.checked_add(rings).ok_or(overflow)?).ok_or(overflow)?;
        let mut out = [ClassLayout::default(); MAX_SIZE_CLASSES];
        let mut offset = align64(classes.len() as u64 * CLASS_HEADER_SIZE).ok_or(overflow)?;
        for (i, c) in classes.iter().enumerate() {
            let metas = align64(SLOT_META_SIZE * c.slot_count as u64).ok_or(overflow)?;
            let data = align64(c.slot_size as u64 * c.slot_count as u64).ok_or(overflow)?;
            out[i] = ClassLayout {
                slot_size: c.slot_size,
                slot_count: c.slot_count,
                header_offset: var_pool_offset + i as u64 * CLASS_HEADER_SIZE,
                meta_offset: var_pool_offset.checked_add(offset).ok_or(overflow)?,
                data_offset: var_pool_offset
                    .checked_add(offset)
                    .and_then(|v| v.checked_add(metas))
                    .ok_or(overflow)?,
            };
            offset = offset
                .checked_add(metas)
                .and_then(|v| v.checked_add(data))
                .ok_or(overflow)?;
        }
        let total_size = var_pool_offset.checked_add(offset).ok_or(overflow)?;
        Ok(SegmentLayout {
            max_guests,
            ring_capacity,
            ring_stride,
            ring_base,
            var_pool_offset,
            total_size,
            inline_threshold_raw: 0,
            max_payload_size: 0,
            heartbeat_interval_ns: 0,
            features: 0,
            classes: out,
            num_classes: classes.len() as u32,
        })
    }

    /// The pool's classes with their offsets.
    pub fn classes(&self) -> &[ClassLayout] {
        &self.classes[..self.num_classes as usize]
    }

    /// Offset of guest `index`'s (0-based) peer entry.
    pub fn peer_entry_offset(&self, index: u32) -> u64 {
        SEGMENT_HEADER_SIZE + PEER_ENTRY_SIZE * index as u64
    }

    /// Offset of guest `index`'s ring pair (its G2H ring), the value of the
    /// peer entry's `ring_offset`.
    pub fn ring_pair_offset(&self, index: u32) -> u64 {
        self.ring_base + index as u64 * 2 * self.ring_stride
    }

    /// Offset of guest `index`'s guest-to-host ring header.
    pub fn g2h_ring_offset(&self, index: u32) -> u64 {
        self.ring_pair_offset(index)
    }

    /// Offset of guest `index`'s host-to-guest ring header.
    pub fn h2g_ring_offset(&self, index: u32) -> u64 {
        self.ring_pair_offset(index) + self.ring_stride
    }

    /// The threshold in effect: 0 means 256.
    pub fn inline_threshold(&self) -> u32 {
        if self.inline_threshold_raw == 0 {
            DEFAULT_INLINE_THRESHOLD
        } else {
            self.inline_threshold_raw
        }
    }

    /// Largest payload that goes inline: `8 + len <= threshold`, bounded by
    /// the u16 length field and by what one ring grant can hold.
    pub fn max_inline_payload(&self) -> u32 {
        let by_threshold = self
            .inline_threshold()
            .saturating_sub(crate::frame::FRAME_HEADER_SIZE);
        let by_field = u16::MAX as u32;
        // A grant must stay strictly below the capacity so a wrapped ring
        // never looks empty; keep room for the header and padding.
        let by_ring = self
            .ring_capacity
            .saturating_sub(crate::frame::FRAME_HEADER_SIZE + 4);
        by_threshold.min(by_field).min(by_ring)
    }

    /// Largest payload any slot carries.
    pub fn max_slot_payload(&self) -> u32 {
        self.classes()
            .iter()
            .map(|c| c.max_payload())
            .max()
            .unwrap_or(0)
    }

    /// `total_size` rounded up to whole 64 KiB pages: the size of a segment
    /// file or window.
    pub fn window_size(&self) -> u64 {
        self.total_size.div_ceil(WASM_PAGE_SIZE) * WASM_PAGE_SIZE
    }

    /// Sets the header-only values a foreign header carries.
    pub(crate) fn with_header_values(
        mut self,
        inline_threshold_raw: u32,
        max_payload_size: u32,
        heartbeat_interval_ns: u64,
        features: u32,
    ) -> Self {
        self.inline_threshold_raw = inline_threshold_raw;
        self.max_payload_size = max_payload_size;
        self.heartbeat_interval_ns = heartbeat_interval_ns;
        self.features = features;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(classes: &[SizeClass]) -> SegmentConfig {
        SegmentConfig {
            max_guests: 4,
            ring_capacity: 4096,
            max_payload_size: 65536,
            inline_threshold: 0,
            heartbeat_interval_ns: 0,
            size_classes: SizeClasses::new(classes).unwrap(),
            features: 0,
        }
    }

    /// Sizes are given as payloads, as `--slot-classes` takes them: a
    /// class for 2 MiB payloads carries exactly 2 MiB.
    #[test]
    fn a_class_for_a_payload_carries_that_payload() {
        let class = SizeClass::for_payload(2 << 20, 3).unwrap();
        assert_eq!(class.max_payload(), 2 << 20);
        assert_eq!(class.slot_size, (2 << 20) + SLOT_LEN_PREFIX);
        let mut c = SegmentConfig::single_guest();
        c.set_size_classes(SizeClasses::new(&[class]).unwrap());
        assert_eq!(c.max_payload_size, 2 << 20);
        let layout = SegmentLayout::compute(&c).unwrap();
        assert_eq!(layout.max_slot_payload(), 2 << 20);
        assert!(matches!(
            SizeClass::for_payload(1001, 1),
            Err(LayoutError::SlotSizeAlignment { .. })
        ));
        assert!(SizeClass::for_payload(u32::MAX, 1).is_err());
        assert!(SizeClass::for_payload(64, 0).is_err());
    }

    #[test]
    fn offsets_follow_the_vox_rules() {
        let l = SegmentLayout::compute(&config(&[
            SizeClass {
                slot_size: 1024,
                slot_count: 8,
            },
            SizeClass {
                slot_size: 16384,
                slot_count: 4,
            },
        ]))
        .unwrap();
        assert_eq!(l.ring_base, 128 + 4 * 64);
        assert_eq!(l.ring_stride, 128 + 4096);
        assert_eq!(l.var_pool_offset, 384 + 8 * 4224);
        let c = l.classes();
        assert_eq!(c[0].header_offset, l.var_pool_offset);
        assert_eq!(c[1].header_offset, l.var_pool_offset + 64);
        assert_eq!(c[0].meta_offset, l.var_pool_offset + 128);
        assert_eq!(c[0].data_offset, c[0].meta_offset + 128);
        assert_eq!(c[1].meta_offset, c[0].data_offset + 8192);
        assert_eq!(c[1].data_offset, c[1].meta_offset + 64);
        assert_eq!(l.total_size, c[1].data_offset + 65536);
        assert_eq!(l.h2g_ring_offset(1), l.ring_base + 3 * l.ring_stride);
    }

    #[test]
    fn odd_capacities_round_ring_strides_to_64() {
        let l = SegmentLayout::canonical(
            1,
            100,
            &[SizeClass {
                slot_size: 8,
                slot_count: 3,
            }],
        )
        .unwrap();
        assert_eq!(l.ring_stride, 256);
        // 3 metas = 48 bytes, rounded to 64; 3 slots of 8 = 24, rounded to 64.
        assert_eq!(l.total_size, l.var_pool_offset + 64 + 64 + 64);
    }

    #[test]
    fn bad_configs_are_refused_with_the_value() {
        let mut c = config(&[SizeClass {
            slot_size: 1024,
            slot_count: 8,
        }]);
        c.max_guests = 0;
        assert_eq!(
            SegmentLayout::compute(&c),
            Err(LayoutError::MaxGuests { value: 0 })
        );
        c.max_guests = 1;
        c.ring_capacity = 30;
        assert_eq!(
            SegmentLayout::compute(&c),
            Err(LayoutError::RingCapacity { value: 30 })
        );
        let c = config(&[]);
        assert_eq!(SegmentLayout::compute(&c), Err(LayoutError::NoSizeClasses));
        let c = config(&[
            SizeClass {
                slot_size: 4096,
                slot_count: 8,
            },
            SizeClass {
                slot_size: 1024,
                slot_count: 8,
            },
        ]);
        assert_eq!(
            SegmentLayout::compute(&c),
            Err(LayoutError::SizeClassOrder { index: 1 })
        );
        let too_many = [SizeClass {
            slot_size: 64,
            slot_count: 1,
        }; MAX_SIZE_CLASSES + 1];
        assert!(matches!(
            SizeClasses::new(&too_many),
            Err(LayoutError::TooManySizeClasses { .. })
        ));
    }

    #[test]
    fn slot_sizes_must_keep_every_length_prefix_aligned() {
        let class = |slot_size| SizeClass {
            slot_size,
            slot_count: 8,
        };
        for bad in [301, 305, 1026, u32::MAX] {
            let want = LayoutError::SlotSizeAlignment {
                index: 1,
                slot_size: bad,
            };
            assert_eq!(
                SizeClasses::new(&[class(64), class(bad)]),
                Err(want),
                "{bad}"
            );
            assert_eq!(
                SegmentLayout::canonical(1, 4096, &[class(64), class(bad)]),
                Err(want),
                "{bad}"
            );
            let mut c = config(&[class(64)]);
            c.size_classes.classes[1] = class(bad);
            c.size_classes.len = 2;
            assert_eq!(SegmentLayout::compute(&c), Err(want), "{bad}");
        }
        let msg = std::string::ToString::to_string(&LayoutError::SlotSizeAlignment {
            index: 0,
            slot_size: 305,
        });
        assert!(msg.contains("nearest valid: 304 or 308"), "{msg}");
        assert_eq!(nearest_slot_sizes(305), (Some(304), Some(308)));
        assert_eq!(nearest_slot_sizes(304), (Some(304), Some(304)));
        assert_eq!(nearest_slot_sizes(3), (None, Some(8)));
        assert_eq!(nearest_slot_sizes(6), (None, Some(8)));
        assert_eq!(nearest_slot_sizes(u32::MAX), (Some(u32::MAX - 3), None));
        // Multiples of 4 that are not multiples of 8 are fine (64 KiB + 4).
        SegmentLayout::compute(&config(&[class(300), class(65540)])).unwrap();
    }

    #[test]
    fn every_meta_array_and_data_region_is_64_aligned() {
        let sizes = [8u32, 12, 100, 4100, 65540];
        for guests in [1, 3, 255] {
            for cap in [64u32, 100, 4096] {
                for count in [1u32, 3, 7] {
                    let classes: std::vec::Vec<_> = sizes
                        .iter()
                        .map(|&slot_size| SizeClass {
                            slot_size,
                            slot_count: count,
                        })
                        .collect();
                    let l = SegmentLayout::canonical(guests, cap, &classes).unwrap();
                    for c in l.classes() {
                        assert_eq!(c.header_offset % 64, 0);
                        assert_eq!(c.meta_offset % 64, 0);
                        assert_eq!(c.data_offset % 64, 0);
                        for slot in 0..count as u64 {
                            let prefix = c.data_offset + slot * c.slot_size as u64;
                            assert_eq!(prefix % 4, 0, "{c:?} slot {slot}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn inline_threshold_zero_means_256() {
        let l = SegmentLayout::compute(&config(&[SizeClass {
            slot_size: 1024,
            slot_count: 8,
        }]))
        .unwrap();
        assert_eq!(l.inline_threshold(), 256);
        assert_eq!(l.max_inline_payload(), 248);
    }

    #[test]
    fn default_config_fits_in_whole_pages() {
        let l = SegmentLayout::compute(&SegmentConfig::single_guest()).unwrap();
        assert_eq!(l.window_size() % WASM_PAGE_SIZE, 0);
        assert!(l.window_size() >= l.total_size);
        assert_eq!(l.max_slot_payload(), 1 << 20);
    }
}
