//! A plugin whose handler does real work: each message is a number of
//! microseconds to compute (a busy loop on the host's clock), then it is
//! echoed. Made with `handler!`, so by default it runs as a callback.
#![no_std]

use shmrt_guest::{Message, Outbox, SendError};

fn work(msg: Message<'_>, outbox: &mut Outbox) -> Result<(), SendError> {
    let micros = core::str::from_utf8(msg.as_bytes())
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let until = shmrt_guest::host::now_ns() + micros * 1000;
    while shmrt_guest::host::now_ns() < until {}
    msg.reply_in_place(outbox, |bytes| bytes.len())
}

shmrt_guest::handler!(work);
