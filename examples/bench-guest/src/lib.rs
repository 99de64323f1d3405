//! The guest of `shmrt bench`. Its first message picks the workload:
//!
//! - `spin`: echo every message, spinning on the ring (never parks);
//! - `park`: echo every message, parking in `wait` as soon as the ring is
//!   empty;
//! - `stream`: count messages until goodbye, then send the count (u64 LE);
//! - `checksum`: answer every message with the checksum of its payload
//!   (u64 LE), read in place, spinning between messages.
//!
//! It also exports `bench_buffer` and `bench_checksum` for the baseline
//! that copies a payload into guest memory and calls an export (the way
//! Extism and proxy-wasm hand data to a plugin).
//!
//! Run: `shmrt bench` (it builds this crate with `shmrt build`).
#![no_std]

use shmrt_guest::primitives::checksum::checksum64;
use shmrt_guest::{Channel, Inbox, Outbox};

const BUFFER: usize = (1 << 20) + 64;
static mut BUF: [u8; BUFFER] = [0; BUFFER];

/// Where the copy-call baseline writes its payload.
#[unsafe(no_mangle)]
pub extern "C" fn bench_buffer() -> *mut u8 {
    &raw mut BUF as *mut u8
}

/// The checksum of `len` bytes at `ptr`, the same function the slot
/// workload runs in place.
#[unsafe(no_mangle)]
pub extern "C" fn bench_checksum(ptr: *const u8, len: usize) -> u64 {
    // SAFETY: the host wrote `len <= BUFFER` bytes at `ptr` (the buffer).
    checksum64(unsafe { core::slice::from_raw_parts(ptr, len.min(BUFFER)) })
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
            inbox.set_spin(u32::MAX);
            echo(inbox, outbox)
        }
        b"park" => {
            inbox.set_spin(0);
            echo(inbox, outbox)
        }
        b"stream" => {
            inbox.set_spin(u32::MAX);
            let mut count = 0u64;
            while let Some(msg) = inbox.recv() {
                count += msg.len() as u64 / 64;
            }
            if outbox.send(&count.to_le_bytes()).is_err() { 1 } else { 0 }
        }
        b"checksum" => {
            inbox.set_spin(u32::MAX);
            while let Some(msg) = inbox.recv() {
                let sum = checksum64(msg.as_bytes());
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
