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
