//! The frame parser on arbitrary words.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmrt_primitives::frame;

fuzz_target!(|data: &[u8]| {
    let words: Vec<u32> = data
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let avail = (words.len() * 4) as u32;
    if let Ok(f) = frame::parse(64, avail, |i| words[i as usize]) {
        assert!(f.total_len >= 8 && f.total_len <= avail && f.total_len % 4 == 0);
        if let frame::Frame::Inline { offset, len } = f.frame {
            assert!(offset - 64 + len <= f.total_len);
        }
    }
});
