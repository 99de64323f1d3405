//! A test guest driven by its messages: `exit N` returns N, `panic TEXT`
//! panics with TEXT, `log LEVEL TEXT` logs, `wait NS` calls the host's
//! wait with that timeout and answers with its result, `spin` loops
//! forever; anything else is echoed.
#![no_std]

use shmrt_guest::Channel;

fn number(bytes: &[u8]) -> Option<i64> {
    let s = core::str::from_utf8(bytes).ok()?;
    s.trim().parse().ok()
}

fn run(mut channel: Channel) -> i32 {
    let (inbox, outbox) = channel.split();
    while let Some(msg) = inbox.recv() {
        let b = msg.as_bytes();
        if let Some(n) = b.strip_prefix(b"exit ").and_then(number) {
            return n as i32;
        } else if let Some(text) = b.strip_prefix(b"panic ") {
            panic!("{}", core::str::from_utf8(text).unwrap_or("?"));
        } else if let Some(rest) = b.strip_prefix(b"log ") {
            let level = rest.first().map_or(2, |l| (l - b'0') as i32);
            shmrt_guest::host::log(level, rest.get(2..).unwrap_or(&[]));
        } else if let Some(ns) = b.strip_prefix(b"wait ").and_then(number) {
            drop(msg);
            let r = shmrt_guest::host::wait(ns);
            let _ = outbox.send(&[b'0' + r as u8]);
        } else if b == b"spin" {
            #[allow(clippy::empty_loop)]
            loop {}
        } else if outbox.send(b).is_err() {
            return 1;
        }
    }
    0
}

shmrt_guest::entry!(run);
