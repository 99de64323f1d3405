//! The guest of `shmrt bench`. Its first message picks the workload:
//!
//! - `spin`: echo every message, spinning on the ring (never parks);
//! - `park`: echo every message, parking in `wait` as soon as the ring is
//!   empty;
//! - `stream`: count messages until goodbye, then send the count (u64 LE);
//! - `checksum`: answer every message with the sum of its payload's u64
//!   words (u64 LE), read in place with SIMD128, spinning between messages.
//!
//! It also exports `bench_buffer` and `bench_checksum` for the baseline
//! that copies a payload into guest memory and calls an export (the way
//! Extism and proxy-wasm hand data to a plugin).
//!
//! Run: `shmrt bench` (it builds this crate with `shmrt build`).
#![no_std]

use core::arch::wasm32::{i64x2_add, i64x2_extract_lane, i64x2_splat, v128, v128_load};
use shmrt_guest::{Channel, Inbox, Outbox};

const BUFFER: usize = (1 << 20) + 64;
static mut BUF: [u8; BUFFER] = [0; BUFFER];

/// Where the copy-call baseline writes its payload.
#[unsafe(no_mangle)]
pub extern "C" fn bench_buffer() -> *mut u8 {
    &raw mut BUF as *mut u8
}

/// The sum of the u64 words of `len` bytes at `ptr`, the same function
/// the slot workload runs in place.
#[unsafe(no_mangle)]
pub extern "C" fn bench_checksum(ptr: *const u8, len: usize) -> u64 {
    // SAFETY: the host wrote `len <= BUFFER` bytes at `ptr` (the buffer).
    sum64(unsafe { core::slice::from_raw_parts(ptr, len.min(BUFFER)) })
}

/// `shmrt_primitives::checksum::sum64`, with SIMD128: a word sum does not
/// depend on the order of the additions, so the lanes give the same value.
fn sum64(bytes: &[u8]) -> u64 {
    // SAFETY: wasmtime supports SIMD128 (on by default).
    unsafe { sum64_simd(bytes) }
}

#[target_feature(enable = "simd128")]
fn sum64_simd(bytes: &[u8]) -> u64 {
    let mut acc = [i64x2_splat(0); 4];
    let mut chunks = bytes.chunks_exact(64);
    for c in &mut chunks {
        for (i, a) in acc.iter_mut().enumerate() {
            // SAFETY: 16 bytes at offset 16 * i of a 64-byte chunk;
            // `v128_load` has no alignment requirement.
            let v = unsafe { v128_load(c.as_ptr().add(16 * i) as *const v128) };
            *a = i64x2_add(*a, v);
        }
    }
    let v = i64x2_add(i64x2_add(acc[0], acc[1]), i64x2_add(acc[2], acc[3]));
    let mut total = (i64x2_extract_lane::<0>(v) as u64).wrapping_add(i64x2_extract_lane::<1>(v) as u64);
    for w in chunks.remainder().chunks(8) {
        let mut word = [0u8; 8];
        word[..w.len()].copy_from_slice(w);
        total = total.wrapping_add(u64::from_le_bytes(word));
    }
    total
}

fn echo(inbox: &mut Inbox, outbox: &mut Outbox) -> i32 {
    while let Some(msg) = inbox.recv() {
        if outbox.send(msg.as_bytes()).is_err() {
            return 1;
        }
    }
    0
}

fn run(mut channel: Channel) -> i32 {
    let (inbox, outbox) = channel.split();
    let mut mode = [0u8; 16];
    let n = match inbox.recv() {
        Some(m) => {
            let n = m.len().min(16);
            mode[..n].copy_from_slice(&m.as_bytes()[..n]);
            n
        }
        None => return 2,
    };
    match &mode[..n] {
        b"spin" => {
            // Poll the ring directly, as the native echo thread does.
            loop {
                let got = match inbox.try_recv() {
                    Ok(Some(msg)) => {
                        if outbox.send(msg.as_bytes()).is_err() {
                            return 1;
                        }
                        true
                    }
                    Ok(None) => false,
                    Err(_) => return 1,
                };
                if !got {
                    if inbox.host_goodbye() {
                        return 0;
                    }
                    core::hint::spin_loop();
                }
            }
        }
        b"park" => {
            inbox.set_spin(0);
            echo(inbox, outbox)
        }
        b"stream" => {
            // Poll the ring directly, as the native counting thread does.
            let mut count = 0u64;
            let mut goodbye = false;
            loop {
                let got = match inbox.try_recv() {
                    Ok(Some(msg)) => {
                        count += msg.len() as u64 / 64;
                        true
                    }
                    Ok(None) => false,
                    Err(_) => return 1,
                };
                if !got {
                    // Messages sent before the goodbye are visible once it
                    // is: one more empty look after seeing it ends the run.
                    if goodbye {
                        break;
                    }
                    goodbye = inbox.host_goodbye();
                    core::hint::spin_loop();
                }
            }
            if outbox.send(&count.to_le_bytes()).is_err() { 1 } else { 0 }
        }
        b"checksum" => {
            inbox.set_spin(u32::MAX);
            while let Some(msg) = inbox.recv() {
                let sum = sum64(msg.as_bytes());
                drop(msg);
                if outbox.send(&sum.to_le_bytes()).is_err() {
                    return 1;
                }
            }
            0
        }
        _ => 3,
    }
}

shmrt_guest::entry!(run);
