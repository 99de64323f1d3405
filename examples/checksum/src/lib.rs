//! Answers every message with one line, `<length> <checksum64 in hex>\n`,
//! computed over the payload in place (a slot payload is never copied).
//! The reply carries its own newline, so run it with `--framing raw`.
//!
//! Run: `head -c 3000000 /dev/urandom | shmrt run --framing raw $(shmrt build examples/checksum)`
#![no_std]

use core::fmt::Write;

use shmrt_guest::Channel;
use shmrt_guest::primitives::checksum::checksum64;

/// A fixed buffer to format the answer without an allocator.
struct Line {
    buf: [u8; 48],
    len: usize,
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(core::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn run(mut channel: Channel) -> i32 {
    let (inbox, outbox) = channel.split();
    while let Some(msg) = inbox.recv() {
        let mut line = Line {
            buf: [0; 48],
            len: 0,
        };
        let _ = writeln!(line, "{} {:016x}", msg.len(), checksum64(msg.as_bytes()));
        drop(msg);
        if let Err(e) = outbox.send(&line.buf[..line.len]) {
            shmrt_guest::error!("checksum failed: {}", e);
            return 1;
        }
    }
    0
}

shmrt_guest::entry!(run);
