//! Upper-cases ASCII letters of every message where it is: a message that
//! came in a slot is rewritten in that slot and sent back with it (no
//! allocation, no copy); an inline one is rewritten in the reply's ring
//! bytes.
//!
//! Run: `printf 'hello\nworld\n' | shmrt run $(shmrt build examples/upper)`
#![no_std]

use shmrt_guest::Channel;

fn run(mut channel: Channel) -> i32 {
    let (inbox, outbox) = channel.split();
    while let Some(msg) = inbox.recv() {
        let sent = msg.reply_in_place(outbox, |bytes| {
            bytes.make_ascii_uppercase();
            bytes.len()
        });
        if let Err(e) = sent {
            shmrt_guest::error!("upper failed: {}", e);
            return e.exit_status();
        }
    }
    0
}

shmrt_guest::entry!(run);
