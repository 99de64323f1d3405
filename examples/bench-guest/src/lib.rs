//! The guest of `shmrt bench`. Its first message picks the workload:
//!
//! - `spin`: echo every message, spinning on the ring; after echoing an
//!   empty message, park until the next one;
//! - `park`: echo every message, parking in `wait` as soon as the ring is
//!   empty;
//! - `stream`: count 64-byte messages; answer an empty message with the
//!   count (u64 LE) and park, a 1-byte message with the count and spin;
//!   at goodbye, send the count;
//! - `checksum`: answer every message with the sum of its payload's u64
//!   words (u64 LE), read in place with SIMD128, spinning between messages;
//! - `calls` (callback mode only): every later message is a call by name
//!   of `echo` (the input back), `host_calls_64b` (input: u32 n; calls the
//!   host function `echo64` n times with 64 bytes and uses each 64-byte
//!   answer) or `host_call_1mib` (input: u32 n; hands the host function
//!   `sum` a 1 MiB buffer n times, which it reads in place);
//! - anything else: echo every message, that first one included, each
//!   answered in place (the plugin of the `cli_*` workloads, which run it
//!   through `shmrt run` against `cat`); packed lines are echoed line by
//!   line through the SDK (`lines::each_line`), so `shmrt run` packs them
//!   (the module exports the marker).
//!
//! It also exports `bench_buffer` and `bench_checksum` for the baseline
//! that copies a payload into guest memory and calls an export (the way
//! Extism and proxy-wasm hand data to a plugin).
//!
//! Run: `shmrt bench` (build.rs builds this crate into the binary).
#![no_std]

use core::arch::wasm32::{i64x2_add, i64x2_extract_lane, i64x2_splat, v128, v128_load};
use shmrt_guest::lines::each_line;
use shmrt_guest::{Channel, Inbox, Message, Outbox, SendError};

const BUFFER: usize = (1 << 20) + 64;
/// Cache-line aligned, so that offsets into it are offsets from a line.
#[repr(align(64))]
struct Buffer([u8; BUFFER]);
static mut BUF: Buffer = Buffer([0; BUFFER]);

/// Where the copy-call baseline writes its payload.
#[unsafe(no_mangle)]
pub extern "C" fn bench_buffer() -> *mut u8 {
    // SAFETY: only the address is taken.
    unsafe { (&raw mut BUF.0) as *mut u8 }
}

/// The sum of the u64 words of `len` bytes at `ptr`, the same function
/// the slot workload runs in place.
#[unsafe(no_mangle)]
#[expect(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "an export the host calls with an address in this module's memory: a wrong one \
              traps in wasm, it can not reach outside it"
)]
pub extern "C" fn bench_checksum(ptr: *const u8, len: usize) -> u64 {
    // SAFETY: the host wrote `len` bytes at `ptr`, inside the buffer.
    sum64(unsafe { core::slice::from_raw_parts(ptr, len.min(BUFFER)) })
}

/// `shmrt_primitives::checksum::sum64`, with SIMD128: a word sum does not
/// depend on the order of the additions, so the lanes give the same value.
fn sum64(bytes: &[u8]) -> u64 {
    // wasmtime supports SIMD128 (on by default); on wasm, a missing
    // feature fails validation, so the call needs no `unsafe`.
    sum64_simd(bytes)
}

/// Bytes per loop iteration, in independent chains of adds of
/// `PER_CHAIN` vectors. The loop is written for wasmtime's epoch checks:
/// each loop header may call into the runtime, so Cranelift keeps every
/// value that lives across iterations on the stack (all vector registers
/// are caller-saved), and each iteration pays a few loads for the check and
/// the accumulator. A large body makes them rare: this loop is bound by
/// loads (two 16-byte loads a cycle here), not by arithmetic.
const BLOCK: usize = 1024;
const PER_CHAIN: usize = 8;
const CHAINS: usize = BLOCK / 16 / PER_CHAIN;
const _: () = assert!(CHAINS == 8, "`sum_blocks` writes out 8 chains");

/// Words on 8-byte boundaries are read from the next 16-byte boundary,
/// as aligned vectors; any others as they come. A slot payload follows
/// its 4-byte length prefix, so its words sit 4 bytes past 8-byte
/// boundaries, and a quarter of its 16-byte loads cross a cache line.
/// Re-joining aligned loads with a shuffle costs more than that: it reads
/// every vector twice, or (the loads shared) shuffles on one port, one
/// vector a cycle either way; the crossing loads take one more load slot
/// in four (a 1 MiB payload: 15 us against 21 us re-joined, and 13 us
/// aligned, on an Intel Xeon).
fn sum64_simd(bytes: &[u8]) -> u64 {
    let skip = if bytes.as_ptr() as usize % 16 == 8 {
        8
    } else {
        0
    };
    sum64_from(bytes, skip)
}

/// The word sum of bytes anywhere, with loads from `skip` bytes in (a
/// multiple of 8): aligned ones when that is a 16-byte boundary. Its own
/// function, so that the compiler allocates registers for this loop alone.
#[target_feature(enable = "simd128")]
#[inline(never)]
fn sum64_from(bytes: &[u8], skip: usize) -> u64 {
    let (sum, from, to) = sum_blocks(bytes, skip);
    sum.wrapping_add(sum_tail(&bytes[..from]))
        .wrapping_add(sum_tail(&bytes[to..]))
}

/// Sums the words of the whole blocks of `bytes[skip..]`. Returns the
/// sum and the range of `bytes` it covers.
#[target_feature(enable = "simd128")]
#[inline]
fn sum_blocks(bytes: &[u8], skip: usize) -> (u64, usize, usize) {
    let blocks = bytes.len().saturating_sub(skip) / BLOCK;
    if blocks == 0 {
        return (0, 0, 0);
    }
    let mut acc = i64x2_splat(0);
    for b in 0..blocks {
        // SAFETY: block `b` ends at `skip + (b + 1) * BLOCK`, inside
        // `bytes`.
        let block = unsafe { bytes.as_ptr().add(skip + b * BLOCK) };
        // Opaque, so that the loop optimizer does not rewrite the loads'
        // addresses into running pointers: from a plain base, the offsets
        // fold into the wasm loads (no address arithmetic per load).
        let block = core::hint::black_box(block);
        // Written out, not looped: a loop would get its own epoch check.
        macro_rules! chains {
            ($($c:literal)*) => {
                $(acc = i64x2_add(acc, chain(block, $c * PER_CHAIN));)*
            };
        }
        chains!(0 1 2 3 4 5 6 7);
    }
    let sum =
        (i64x2_extract_lane::<0>(acc) as u64).wrapping_add(i64x2_extract_lane::<1>(acc) as u64);
    (sum, skip, skip + blocks * BLOCK)
}

/// The word sum of a short run (whole vectors, then words).
#[target_feature(enable = "simd128")]
fn sum_tail(bytes: &[u8]) -> u64 {
    let mut vectors = bytes.chunks_exact(16);
    let mut v = i64x2_splat(0);
    for c in &mut vectors {
        // SAFETY: 16 bytes; no alignment requirement.
        v = i64x2_add(v, unsafe { v128_load(c.as_ptr() as *const v128) });
    }
    let mut total =
        (i64x2_extract_lane::<0>(v) as u64).wrapping_add(i64x2_extract_lane::<1>(v) as u64);
    for w in vectors.remainder().chunks(8) {
        let mut word = [0u8; 8];
        word[..w.len()].copy_from_slice(w);
        total = total.wrapping_add(u64::from_le_bytes(word));
    }
    total
}

/// Where each chain's sum is written, and never read.
static mut CHAIN_SINK: v128 = unsafe { core::mem::zeroed() };

/// The sum of the `PER_CHAIN` vectors from vector `first` of a block.
///
/// The sum is also written to `CHAIN_SINK`, which shapes the code twice:
/// a value with a second use stays a value of its own, so LLVM cannot fold
/// the accumulator into the chain (which would make the whole chain wait
/// for the previous block); and the write is a side effect at this point of
/// the loop, so Cranelift computes the chain here, a few registers at a
/// time, instead of loading every vector of the block before the first
/// add. A store costs no load; the reload a `black_box` would add does.
#[target_feature(enable = "simd128")]
#[inline]
fn chain(block: *const u8, first: usize) -> v128 {
    // SAFETY: the block's vectors, inside the bytes summed; `v128_load`
    // has no alignment requirement.
    let load = |i: usize| unsafe { v128_load(block.add(16 * i) as *const v128) };
    let mut sum = load(first);
    for i in first + 1..first + PER_CHAIN {
        sum = i64x2_add(sum, load(i));
    }
    // SAFETY: a plain static, written by this thread only (each sandbox is
    // one thread); nothing reads it.
    unsafe { core::ptr::write_volatile(&raw mut CHAIN_SINK, sum) };
    sum
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
    let Some(first) = inbox.recv() else {
        return 2;
    };
    let n = first.len().min(16);
    mode[..n].copy_from_slice(&first.as_bytes()[..n]);
    let named =
        n == first.len() && matches!(&mode[..n], b"spin" | b"park" | b"stream" | b"checksum");
    if !named {
        // Anything else is echoed, the first message included, each in
        // place: the plugin `shmrt bench` runs through `shmrt run` for its
        // workloads against `cat`.
        if each_line(first, outbox, echo_in_place).is_err() {
            return 1;
        }
        while let Some(msg) = inbox.recv() {
            if each_line(msg, outbox, echo_in_place).is_err() {
                return 1;
            }
        }
        return 0;
    }
    drop(first);
    match &mode[..n] {
        b"spin" => loop {
            // Poll the ring directly, as the native echo thread does.
            let rest = match inbox.try_recv() {
                Ok(Some(msg)) => {
                    if outbox.send(msg.as_bytes()).is_err() {
                        return 1;
                    }
                    Some(msg.is_empty())
                }
                Ok(None) => None,
                Err(_) => return 1,
            };
            let Some(rest) = rest else {
                if inbox.host_goodbye() {
                    return 0;
                }
                core::hint::spin_loop();
                continue;
            };
            if rest {
                // An empty message ends a measured phase: park until the
                // next one, so as not to spin while the host measures
                // something else.
                inbox.set_spin(0);
                match inbox.recv() {
                    Some(msg) if outbox.send(msg.as_bytes()).is_ok() => {}
                    Some(_) => return 1,
                    None => return 0,
                }
            }
        },
        b"park" => {
            inbox.set_spin(0);
            echo(inbox, outbox)
        }
        b"stream" => {
            // A pure consumer gives ring room back lazily. An empty message
            // ends a phase: answer the count so far, then park; a 1-byte
            // message starts one: answer the count, then spin.
            inbox.set_lazy_release(true);
            let mut count = 0u64;
            while inbox.wait() {
                // Everything that is there, in one inlined loop.
                let mut mark = None;
                while let Ok(Some(msg)) = inbox.try_recv() {
                    match msg.len() {
                        0 => mark = Some(0),
                        1 => mark = Some(u32::MAX),
                        len => {
                            count += len as u64 / 64;
                            continue;
                        }
                    }
                    break;
                }
                if let Some(spin) = mark {
                    inbox.publish();
                    if outbox.send(&count.to_le_bytes()).is_err() {
                        return 1;
                    }
                    inbox.set_spin(spin);
                }
            }
            if outbox.send(&count.to_le_bytes()).is_err() {
                1
            } else {
                0
            }
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
        _ => unreachable!("a named mode"),
    }
}

shmrt_guest::entry!(run);
shmrt_guest::packed_lines_export!();

/// A message (or a line of a packed one) answered with itself, in place.
fn echo_in_place(msg: Message<'_>, outbox: &mut Outbox) -> Result<(), SendError> {
    msg.reply_in_place(outbox, |b| b.len())
}

/// The mode of the callback entry, named by the first message: 1 checksum
/// (each message answered with its sum), else 0, echo in place.
static CALLBACK_MODE: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(u32::MAX);

fn answer(msg: Message<'_>, outbox: &mut Outbox) -> Result<(), SendError> {
    use core::sync::atomic::Ordering::Relaxed;
    match CALLBACK_MODE.load(Relaxed) {
        u32::MAX => {
            let mode = match msg.as_bytes() {
                b"checksum" => 1,
                b"calls" => 2,
                _ => 0,
            };
            CALLBACK_MODE.store(mode, Relaxed);
            if mode != 0 {
                return Ok(());
            }
            each_line(msg, outbox, echo_in_place)
        }
        2 => shmrt_guest::calls::dispatch(msg, outbox, route_call),
        1 => {
            let sum = sum64(msg.as_bytes());
            drop(msg);
            outbox.send(&sum.to_le_bytes())
        }
        _ => each_line(msg, outbox, echo_in_place),
    }
}

/// The callback entry (`--exec callback`, the callback workloads of
/// `shmrt bench`): echo in place, or checksums after a first `checksum`.
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_on_messages() -> i32 {
    shmrt_guest::callback::with_channel(|channel| channel.answer_queued(answer))
}

/// The exports of the `calls` workload.
fn route_call(call: shmrt_guest::calls::Call<'_>, outbox: &mut Outbox) -> Result<(), SendError> {
    match call.name() {
        "echo" => call.run(outbox, |input: &[u8]| Ok::<_, &str>(input)),
        "host_calls_64b" => call.run(outbox, host_calls_64b),
        "host_call_1mib" => call.run(outbox, host_call_1mib),
        _ => call.no_such_export(outbox, &["echo", "host_calls_64b", "host_call_1mib"]),
    }
}

/// `n` host calls of `echo64`, 64 bytes each way; the answer's bytes are
/// summed so that none of it is dead.
fn host_calls_64b(n: u32) -> Result<u64, &'static str> {
    let mut input = [7u8; 64];
    let mut out = [0u8; 64];
    let mut total = 0u64;
    for i in 0..n {
        input[0] = i as u8;
        let answer =
            shmrt_guest::host_fn::call("echo64", &input, &mut out).map_err(|_| "echo64 failed")?;
        total = total.wrapping_add(u64::from(answer[0]) + u64::from(answer[63]));
    }
    Ok(total)
}

/// `n` host calls of `sum`, each handing the host the 1 MiB buffer.
fn host_call_1mib(n: u32) -> Result<u64, &'static str> {
    // SAFETY: the buffer is only read here, by the host, in place.
    let buf = unsafe { &(&raw const BUF.0).as_ref().expect("static")[..1 << 20] };
    let mut out = [0u8; 8];
    let mut total = 0u64;
    for _ in 0..n {
        let sum = shmrt_guest::host_fn::call("sum", buf, &mut out).map_err(|_| "sum failed")?;
        total = total.wrapping_add(u64::from_le_bytes(sum.try_into().map_err(|_| "8 bytes")?));
    }
    Ok(total)
}
