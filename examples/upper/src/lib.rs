//! Upper-cases ASCII letters of every message, written straight into the
//! reply's ring or slot memory.
//!
//! Run: `printf 'hello\nworld\n' | shmrt run $(shmrt build examples/upper)`
#![no_std]

use shmrt_guest::Channel;

fn run(mut channel: Channel) -> i32 {
    let (inbox, outbox) = channel.split();
    while let Some(msg) = inbox.recv() {
        let input = msg.as_bytes();
        let sent = outbox.send_with(input.len(), |out| {
            for (o, i) in out.iter_mut().zip(input) {
                *o = i.to_ascii_uppercase();
            }
        });
        if let Err(e) = sent {
            shmrt_guest::error!("upper failed: {}", e);
            return 1;
        }
    }
    0
}

shmrt_guest::entry!(run);
