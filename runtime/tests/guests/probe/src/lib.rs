//! A test guest driven by its messages: `exit N` returns N, `panic TEXT`
//! panics with TEXT, `log LEVEL TEXT` logs, `wait NS` calls the host's
//! wait with that timeout and answers with its result, `spin` loops
//! forever; the hostile ones: `poke OFFSET VALUE` writes a u32 into its
//! segment window, `chaos SEED COUNT` writes COUNT pseudo-random words over
//! the window's rings and pool while sending, `lograce OFFSET LEN COUNT`
//! sends COUNT messages and logs the LEN bytes at OFFSET of the window after each
//! (bytes the host rewrites meanwhile, such as a ring cursor), `badlog`
//! calls `log` with a pointer outside its memory; anything else is echoed.
#![no_std]

use shmrt_guest::Channel;

fn number(bytes: &[u8]) -> Option<i64> {
    let s = core::str::from_utf8(bytes).ok()?;
    s.trim().parse().ok()
}

fn run(mut channel: Channel) -> i32 {
    let (inbox, outbox) = channel.split();
    while let Some(msg) = inbox.recv() {
        if let Some(status) = handle(msg, outbox) {
            return status;
        }
    }
    0
}

/// The callback entry (`--exec callback`): the same commands, for the
/// messages queued at each call; 0 to be called again, else the status
/// (an `exit 0` can not end a callback plugin early: it is called again).
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_on_messages() -> i32 {
    shmrt_guest::callback::with_channel(|channel| {
        let (inbox, outbox) = channel.split();
        while let Ok(Some(msg)) = inbox.try_recv() {
            if let Some(status) = handle(msg, outbox) {
                return status;
            }
        }
        0
    })
}

/// Does what `msg` says; `Some(status)` to end with it.
fn handle(msg: shmrt_guest::Message<'_>, outbox: &mut shmrt_guest::Outbox) -> Option<i32> {
    {
        let b = msg.as_bytes();
        if let Some(n) = b.strip_prefix(b"exit ").and_then(number) {
            return Some(n as i32);
        } else if let Some(text) = b.strip_prefix(b"panic ") {
            panic!("{}", core::str::from_utf8(text).unwrap_or("?"));
        } else if let Some(rest) = b.strip_prefix(b"log ") {
            let level = rest.first().map_or(2, |l| (l - b'0') as i32);
            shmrt_guest::host::log(level, rest.get(2..).unwrap_or(&[]));
        } else if let Some(ns) = b.strip_prefix(b"wait ").and_then(number) {
            drop(msg);
            let r = shmrt_guest::host::wait(ns);
            let _ = outbox.send(&[b'0' + r as u8]);
        } else if let Some(rest) = b.strip_prefix(b"poke ") {
            let mut it = rest.split(|&c| c == b' ').filter_map(number);
            if let (Some(off), Some(val)) = (it.next(), it.next()) {
                poke(off as usize, val as u32);
            }
        } else if let Some(rest) = b.strip_prefix(b"chaos ") {
            let mut it = rest.split(|&c| c == b' ').filter_map(number);
            let (seed, count) = (it.next().unwrap_or(1) as u64, it.next().unwrap_or(1000));
            drop(msg);
            let mut x = seed | 1;
            let size = shmrt_guest::host::segment_size();
            for i in 0..count {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Anywhere past the header and peer table, word-aligned.
                let off = 192 + (x as usize % (size - 196)) / 4 * 4;
                poke(off, (x >> 32) as u32);
                if i % 64 == 0 {
                    let _ = outbox.send(&x.to_le_bytes());
                }
            }
            return Some(0);
        } else if let Some(rest) = b.strip_prefix(b"lograce ") {
            let mut it = rest.split(|&c| c == b' ').filter_map(number);
            let (off, len) = (it.next().unwrap_or(0) as usize, it.next().unwrap_or(1));
            let count = it.next().unwrap_or(1);
            drop(msg);
            let at = (shmrt_guest::host::segment_base() + off) as u32;
            for _ in 0..count {
                let _ = outbox.send(b"x");
                // SAFETY: a range of our own window whose bytes the host
                // rewrites while it reads them (here, a ring cursor).
                unsafe { raw_log(2, at, len as u32) };
            }
        } else if b == b"badlog" {
            drop(msg);
            // SAFETY: deliberately a pointer outside linear memory: the
            // host must refuse it without reading.
            unsafe { bad_log() };
        } else if b == b"spin" {
            #[allow(clippy::empty_loop)]
            loop {}
        } else if let Err(e) = outbox.send(b) {
            shmrt_guest::error!("could not answer: {}", e);
            return Some(e.exit_status());
        }
    }
    None
}

/// Writes `value` at `offset` of the segment window, as a hostile guest
/// would.
fn poke(offset: usize, value: u32) {
    let at = shmrt_guest::host::segment_base() + offset;
    // SAFETY: inside our own linear memory (the window); the host must not
    // be hurt by anything written there.
    unsafe { core::ptr::write_volatile(at as *mut u32, value) };
}

#[link(wasm_import_module = "shmrt")]
unsafe extern "C" {
    #[link_name = "log"]
    fn raw_log(level: i32, ptr: u32, len: u32);
}

unsafe fn bad_log() {
    // SAFETY: see the caller: the host checks the range.
    unsafe { raw_log(4, 0xFFFF_FF00, 0x1000) };
}

shmrt_guest::entry!(run);
