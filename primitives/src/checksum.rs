//! A fast 64-bit checksum over a byte slice, read in place at memory
//! speed: four independent lanes of u64 words (so the multiplies overlap),
//! folded at the end. Used by the checksum example and the benchmarks, on
//! both sides of the sandbox, so that they agree on every byte.

const K: u64 = 0x9E37_79B9_7F4A_7C15;

/// The checksum of `bytes`.
pub fn checksum64(bytes: &[u8]) -> u64 {
    let mut lanes = [K, K.rotate_left(16), K.rotate_left(32), K.rotate_left(48)];
    let mut chunks = bytes.chunks_exact(32);
    for c in &mut chunks {
        for (i, lane) in lanes.iter_mut().enumerate() {
            let w = u64::from_le_bytes(c[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
            *lane = (*lane ^ w).wrapping_mul(K).rotate_left(29);
        }
    }
    let mut h =
        lanes[0] ^ lanes[1].rotate_left(7) ^ lanes[2].rotate_left(13) ^ lanes[3].rotate_left(19);
    for &b in chunks.remainder() {
        h = (h ^ b as u64).wrapping_mul(K);
    }
    (h ^ bytes.len() as u64).wrapping_mul(K) ^ (h >> 31)
}

/// The wrapping sum of `bytes` read as little-endian u64 words (the tail
/// zero-padded to a word). A sum is the same in any order, so a SIMD
/// version over lanes gives the same value: this is the "read at memory
/// speed" workload of the benchmarks.
pub fn sum64(bytes: &[u8]) -> u64 {
    let mut lanes = [0u64; 4];
    let mut chunks = bytes.chunks_exact(32);
    for c in &mut chunks {
        for (i, lane) in lanes.iter_mut().enumerate() {
            *lane = lane.wrapping_add(u64::from_le_bytes(
                c[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]),
            ));
        }
    }
    let mut total = lanes.iter().fold(0u64, |a, &l| a.wrapping_add(l));
    for w in chunks.remainder().chunks(8) {
        let mut word = [0u8; 8];
        word[..w.len()].copy_from_slice(w);
        total = total.wrapping_add(u64::from_le_bytes(word));
    }
    total
}

#[cfg(test)]
mod tests {
    use super::{checksum64, sum64};

    #[test]
    fn sum64_adds_words_with_a_padded_tail() {
        assert_eq!(sum64(&[]), 0);
        assert_eq!(sum64(&[1, 0, 0, 0, 0, 0, 0, 0, 2]), 3);
        let v: std::vec::Vec<u8> = (0..100u8).collect();
        let by_words: u64 = v
            .chunks(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w[..c.len()].copy_from_slice(c);
                u64::from_le_bytes(w)
            })
            .fold(0, |a, b| a.wrapping_add(b));
        assert_eq!(sum64(&v), by_words);
    }

    #[test]
    fn every_byte_and_the_length_count() {
        let a = [7u8; 100];
        let mut b = a;
        b[63] ^= 1;
        assert_ne!(checksum64(&a), checksum64(&b));
        assert_ne!(checksum64(&a[..99]), checksum64(&a));
        assert_ne!(checksum64(&[]), checksum64(&[0]));
        assert_eq!(checksum64(&a), checksum64(&[7u8; 100]));
    }
}
