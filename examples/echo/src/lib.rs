//! Sends every message back unchanged. A message that came in a slot is
//! answered with that same slot (no allocation, no copy); an inline one
//! is copied into the reply's ring bytes.
//!
//! Run: `printf 'hello\nworld\n' | shmrt run $(shmrt build examples/echo)`
#![no_std]

use shmrt_guest::Channel;

fn run(mut channel: Channel) -> i32 {
    let (inbox, outbox) = channel.split();
    while let Some(msg) = inbox.recv() {
        if let Err(e) = msg.reply_in_place(outbox, |bytes| bytes.len()) {
            shmrt_guest::error!("echo failed: {}", e);
            return e.exit_status();
        }
    }
    0
}

shmrt_guest::entry!(run);
