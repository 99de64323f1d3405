//! vox-shm 0.3.1's framing rules, restated from its source
//! (src/framing.rs) on top of shm-primitives' rings, for tests that need a
//! reference peer (vox-shm itself does not build today). Shared by the
//! primitives' compatibility tests and the runtime's attach tests.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use shm_primitives as theirs;

// vox-shm framing, restated: header = total_len u32, flags u8, reserved u8,
// inline_payload_len u16; inline padded to 4; slot ref = 20 bytes.
pub fn vox_write_inline(p: &mut theirs::BipBufProducer<'_>, payload: &[u8]) -> bool {
    let total = (8 + payload.len() as u32 + 3) & !3;
    let Some(buf) = p.try_grant(total) else {
        return false;
    };
    buf[0..4].copy_from_slice(&total.to_le_bytes());
    buf[4] = 0;
    buf[5] = 0;
    buf[6..8].copy_from_slice(&(payload.len() as u16).to_le_bytes());
    buf[8..8 + payload.len()].copy_from_slice(payload);
    buf[8 + payload.len()..].fill(0);
    p.commit(total);
    true
}

pub fn vox_write_slot_ref(p: &mut theirs::BipBufProducer<'_>, r: &theirs::SlotRef) -> bool {
    let Some(buf) = p.try_grant(20) else {
        return false;
    };
    buf[0..4].copy_from_slice(&20u32.to_le_bytes());
    buf[4] = 1;
    buf[5] = 0;
    buf[6..8].fill(0);
    buf[8] = r.class_idx;
    buf[9] = r.extent_idx;
    buf[10..12].fill(0);
    buf[12..16].copy_from_slice(&r.slot_idx.to_le_bytes());
    buf[16..20].copy_from_slice(&r.generation.to_le_bytes());
    p.commit(20);
    true
}

pub enum VoxFrame {
    Inline(Vec<u8>),
    Slot(theirs::SlotRef),
}

/// vox-shm's `read_frame`, restated (with the zero-length rule).
pub fn vox_read_frame(c: &mut theirs::BipBufConsumer<'_>) -> Option<VoxFrame> {
    let data = c.try_read()?;
    let total = u32::from_le_bytes(data[0..4].try_into().unwrap());
    assert!(
        total >= 8 && total % 4 == 0 && data.len() >= total as usize,
        "bad frame total_len {total}"
    );
    let flags = data[4];
    let frame = if flags & 1 != 0 {
        assert_eq!(total, 20);
        VoxFrame::Slot(theirs::SlotRef {
            class_idx: data[8],
            extent_idx: data[9],
            slot_idx: u32::from_le_bytes(data[12..16].try_into().unwrap()),
            generation: u32::from_le_bytes(data[16..20].try_into().unwrap()),
        })
    } else {
        assert_eq!(flags, 0);
        let n = u16::from_le_bytes([data[6], data[7]]) as usize;
        let end = if n > 0 { 8 + n } else { total as usize };
        VoxFrame::Inline(data[8..end].to_vec())
    };
    c.release(total);
    Some(frame)
}

/// Where vox-shm 0.3.1's `Segment::create` puts things (src/segment.rs,
/// src/peer_table.rs): peer table at 128, rings after it, the pool after
/// the rings, all 64-aligned.
pub struct VoxLayout {
    pub max_guests: usize,
    pub capacity: u32,
    pub stride: usize,
    pub ring_base: usize,
    pub var_pool_offset: usize,
    pub total_size: usize,
    /// The header's max_payload_size: 64 KiB, or the largest slot payload.
    pub max_payload_size: u32,
}

impl VoxLayout {
    pub fn new(max_guests: usize, capacity: u32, classes: &[theirs::SizeClassConfig]) -> Self {
        let stride = (theirs::BIPBUF_HEADER_SIZE + capacity as usize + 63) & !63;
        let ring_base = 128 + max_guests * 64;
        let var_pool_offset = (ring_base + max_guests * 2 * stride + 63) & !63;
        let total_size = var_pool_offset + theirs::VarSlotPool::required_size(classes);
        let largest = classes.iter().map(|c| c.slot_size - 4).max().unwrap_or(0);
        VoxLayout {
            max_payload_size: largest.max(65536),
            max_guests,
            capacity,
            stride,
            ring_base,
            var_pool_offset,
            total_size,
        }
    }

    /// Writes the header, the peer table, every ring and the pool with
    /// shm-primitives' own initializers, as vox-shm does.
    ///
    /// # Safety
    ///
    /// `r` holds `total_size` zeroed bytes that nobody else uses yet.
    pub unsafe fn init(
        &self,
        r: theirs::Region,
        classes: &[theirs::SizeClassConfig],
        heartbeat_interval: u64,
    ) {
        // SAFETY: the caller's promise; every offset is inside total_size.
        unsafe {
            r.get_mut::<theirs::SegmentHeader>(0)
                .init(theirs::SegmentHeaderInit {
                    total_size: self.total_size as u64,
                    max_payload_size: self.max_payload_size,
                    inline_threshold: 0,
                    max_guests: self.max_guests as u32,
                    bipbuf_capacity: self.capacity,
                    peer_table_offset: 128,
                    var_pool_offset: self.var_pool_offset as u64,
                    heartbeat_interval,
                    num_var_slot_classes: classes.len() as u32,
                });
            for i in 0..self.max_guests {
                let ring_offset = self.ring_base + i * 2 * self.stride;
                r.get_mut::<theirs::PeerEntry>(128 + 64 * i)
                    .init(ring_offset as u64);
                theirs::BipBuf::init(r, ring_offset, self.capacity);
                theirs::BipBuf::init(r, ring_offset + self.stride, self.capacity);
            }
            theirs::VarSlotPool::init(r, self.var_pool_offset, classes);
        }
    }
}
