//! Sends every message back unchanged, inline or in a slot by size.
//!
//! Run: `printf 'hello\nworld\n' | shmrt run $(shmrt build examples/echo)`
#![no_std]

use shmrt_guest::Channel;

fn run(mut channel: Channel) -> i32 {
    let (inbox, outbox) = channel.split();
    while let Some(msg) = inbox.recv() {
        if let Err(e) = outbox.send(msg.as_bytes()) {
            shmrt_guest::error!("echo failed: {}", e);
            return 1;
        }
    }
    0
}

shmrt_guest::entry!(run);
