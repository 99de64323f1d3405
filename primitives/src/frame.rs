//! Frames: what one ring entry holds.
//!
//! ```text
//! header, 8 bytes:  total_len u32 (multiple of 4, header included)
//!                   flags u8 (bit 0 SLOT_REF, bit 1 MMAP_REF, never both)
//!                   reserved u8
//!                   inline_payload_len u16 (0 = unknown: runs to total_len)
//! inline:           payload, zero-padded to a multiple of 4
//! slot ref, 12 B:   class_idx u8, extent_idx u8, reserved u16,
//!                   slot_idx u32, generation u32        (20-byte frame)
//! mmap ref, 24 B:   map_id u32, map_generation u32, map_offset u64,
//!                   payload_len u32, reserved u32       (32-byte frame)
//! ```
//!
//! Parsing works on words already loaded by the ring consumer: each header
//! or body word is read from shared memory exactly once.

use core::mem::{offset_of, size_of};

use crate::error::FrameError;

/// Bytes of a frame header.
pub const FRAME_HEADER_SIZE: u32 = 8;
/// Flag: the body is a slot reference.
pub const FLAG_SLOT_REF: u8 = 0x01;
/// Flag: the body is an mmap reference.
pub const FLAG_MMAP_REF: u8 = 0x02;
/// Bytes of a slot-ref frame.
pub const SLOT_REF_FRAME_SIZE: u32 = 20;
/// Bytes of an mmap-ref frame.
pub const MMAP_REF_FRAME_SIZE: u32 = 32;

/// The frame header as laid out in the ring (for size and offset checks;
/// the code reads and writes it as two little-endian words).
#[repr(C)]
#[derive(Debug)]
pub struct FrameHeader {
    pub total_len: u32,
    pub flags: u8,
    pub reserved: u8,
    pub inline_payload_len: [u8; 2],
}

/// The slot-ref body as laid out in the ring.
#[repr(C)]
#[derive(Debug)]
pub struct SlotRefBody {
    pub class_idx: u8,
    pub extent_idx: u8,
    pub reserved: [u8; 2],
    pub slot_idx: u32,
    pub generation: u32,
}

const _: () = {
    assert!(size_of::<FrameHeader>() == 8);
    assert!(offset_of!(FrameHeader, flags) == 4);
    assert!(offset_of!(FrameHeader, inline_payload_len) == 6);
    assert!(size_of::<SlotRefBody>() == 12);
    assert!(offset_of!(SlotRefBody, slot_idx) == 4);
    assert!(offset_of!(SlotRefBody, generation) == 8);
};

/// A reference to a slot of the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotRef {
    /// Size class.
    pub class_idx: u8,
    /// Extent, always 0 in this format version.
    pub extent_idx: u8,
    /// Slot within the class.
    pub slot_idx: u32,
    /// The slot's generation when it was allocated.
    pub generation: u32,
}

/// A reference to a region of an external mapping (parsed and reported;
/// this crate maps no external regions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmapRef {
    pub map_id: u32,
    pub map_generation: u32,
    pub map_offset: u64,
    pub payload_len: u32,
}

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// `len` payload bytes start at `offset` within the ring data.
    Inline { offset: u32, len: u32 },
    /// The payload is in a slot.
    SlotRef(SlotRef),
    /// The payload is in an external mapping.
    MmapRef(MmapRef),
}

/// A parsed frame and the ring bytes it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedFrame {
    pub frame: Frame,
    pub total_len: u32,
}

/// Rounds up to a multiple of 4.
#[inline(always)]
pub const fn align4(n: u32) -> u32 {
    (n + 3) & !3
}

/// Ring bytes taken by an inline frame of `len` payload bytes.
#[inline(always)]
pub const fn inline_frame_len(len: u32) -> u32 {
    align4(FRAME_HEADER_SIZE + len)
}

/// The two header words of an inline frame of `len` bytes.
#[inline(always)]
pub fn inline_header_words(len: u16) -> [u32; 2] {
    let total = inline_frame_len(len as u32);
    [total, (len as u32) << 16]
}

/// The five words of a slot-ref frame.
#[inline(always)]
pub fn slot_ref_words(r: &SlotRef) -> [u32; 5] {
    [
        SLOT_REF_FRAME_SIZE,
        FLAG_SLOT_REF as u32,
        r.class_idx as u32 | (r.extent_idx as u32) << 8,
        r.slot_idx,
        r.generation,
    ]
}

/// The eight words of an mmap-ref frame.
#[inline(always)]
pub fn mmap_ref_words(r: &MmapRef) -> [u32; 8] {
    [
        MMAP_REF_FRAME_SIZE,
        FLAG_MMAP_REF as u32,
        r.map_id,
        r.map_generation,
        r.map_offset as u32,
        (r.map_offset >> 32) as u32,
        r.payload_len,
        0,
    ]
}

/// Parses a frame at `offset` of the ring data, with `available` readable
/// contiguous bytes there. `word(i)` loads the i-th little-endian u32 of
/// the frame (i = 0 is total_len); it is called at most once per word and
/// only for words inside the validated `total_len`.
#[inline(always)]
pub fn parse(
    offset: u32,
    available: u32,
    mut word: impl FnMut(u32) -> u32,
) -> Result<ParsedFrame, FrameError> {
    if available < FRAME_HEADER_SIZE {
        return Err(FrameError::Truncated { available });
    }
    let total_len = word(0);
    if total_len < FRAME_HEADER_SIZE || !total_len.is_multiple_of(4) || total_len > available {
        return Err(FrameError::TotalLen {
            value: total_len,
            available,
        });
    }
    let w1 = word(1);
    let flags = w1 as u8;
    let inline_len = (w1 >> 16) as u16;
    let known = FLAG_SLOT_REF | FLAG_MMAP_REF;
    if flags & !known != 0 || flags == known {
        return Err(FrameError::Flags { value: flags });
    }
    let frame = if flags == FLAG_SLOT_REF {
        if total_len < SLOT_REF_FRAME_SIZE {
            return Err(FrameError::BodyLen {
                total_len,
                needed: SLOT_REF_FRAME_SIZE,
            });
        }
        let w2 = word(2);
        Frame::SlotRef(SlotRef {
            class_idx: w2 as u8,
            extent_idx: (w2 >> 8) as u8,
            slot_idx: word(3),
            generation: word(4),
        })
    } else if flags == FLAG_MMAP_REF {
        if total_len < MMAP_REF_FRAME_SIZE {
            return Err(FrameError::BodyLen {
                total_len,
                needed: MMAP_REF_FRAME_SIZE,
            });
        }
        Frame::MmapRef(MmapRef {
            map_id: word(2),
            map_generation: word(3),
            map_offset: word(4) as u64 | (word(5) as u64) << 32,
            payload_len: word(6),
        })
    } else {
        let room = total_len - FRAME_HEADER_SIZE;
        let len = if inline_len == 0 {
            room
        } else {
            inline_len as u32
        };
        if len > room {
            return Err(FrameError::InlineLen {
                value: inline_len,
                total_len,
            });
        }
        Frame::Inline {
            offset: offset + FRAME_HEADER_SIZE,
            len,
        }
    };
    Ok(ParsedFrame { frame, total_len })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(words: &[u32]) -> Result<ParsedFrame, FrameError> {
        parse(0, (words.len() * 4) as u32, |i| words[i as usize])
    }

    #[test]
    fn inline_roundtrip_with_padding() {
        let [w0, w1] = inline_header_words(5);
        assert_eq!(w0, 16);
        let f = parse_words(&[w0, w1, 0, 0]).unwrap();
        assert_eq!(
            f,
            ParsedFrame {
                frame: Frame::Inline { offset: 8, len: 5 },
                total_len: 16
            }
        );
    }

    #[test]
    fn zero_inline_len_means_up_to_total_len() {
        let f = parse_words(&[12, 0, 0]).unwrap();
        assert_eq!(f.frame, Frame::Inline { offset: 8, len: 4 });
        let f = parse_words(&[8, 0]).unwrap();
        assert_eq!(f.frame, Frame::Inline { offset: 8, len: 0 });
    }

    #[test]
    fn slot_ref_roundtrip() {
        let r = SlotRef {
            class_idx: 2,
            extent_idx: 0,
            slot_idx: 7,
            generation: 42,
        };
        let f = parse_words(&slot_ref_words(&r)).unwrap();
        assert_eq!(
            f,
            ParsedFrame {
                frame: Frame::SlotRef(r),
                total_len: 20
            }
        );
    }

    #[test]
    fn mmap_ref_roundtrip() {
        let r = MmapRef {
            map_id: 3,
            map_generation: 9,
            map_offset: 1 << 40 | 5,
            payload_len: 77,
        };
        let f = parse_words(&mmap_ref_words(&r)).unwrap();
        assert_eq!(
            f,
            ParsedFrame {
                frame: Frame::MmapRef(r),
                total_len: 32
            }
        );
    }

    #[test]
    fn violations_are_typed() {
        assert_eq!(
            parse_words(&[4]),
            Err(FrameError::Truncated { available: 4 })
        );
        assert_eq!(
            parse_words(&[4, 0]),
            Err(FrameError::TotalLen {
                value: 4,
                available: 8
            })
        );
        assert_eq!(
            parse_words(&[10, 0, 0]),
            Err(FrameError::TotalLen {
                value: 10,
                available: 12
            })
        );
        assert_eq!(
            parse_words(&[64, 0]),
            Err(FrameError::TotalLen {
                value: 64,
                available: 8
            })
        );
        assert_eq!(
            parse_words(&[20, 3, 0, 0, 0]),
            Err(FrameError::Flags { value: 3 })
        );
        assert_eq!(
            parse_words(&[20, 0x10, 0, 0, 0]),
            Err(FrameError::Flags { value: 0x10 })
        );
        assert_eq!(
            parse_words(&[12, 9 << 16, 0]),
            Err(FrameError::InlineLen {
                value: 9,
                total_len: 12
            })
        );
        assert_eq!(
            parse_words(&[16, 1, 0, 0]),
            Err(FrameError::BodyLen {
                total_len: 16,
                needed: 20
            })
        );
        assert_eq!(
            parse_words(&[20, 2, 0, 0, 0]),
            Err(FrameError::BodyLen {
                total_len: 20,
                needed: 32
            })
        );
    }
}
