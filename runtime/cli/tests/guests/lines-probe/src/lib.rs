//! A `handler!` plugin (so `shmrt run` packs its lines) driven by each
//! line: `twice TEXT` answers TEXT twice, `short TEXT` answers TEXT in
//! place (shorter than its line), `none` answers nothing, `boom`
//! panics, `liar` sends a malformed packed-lines answer (a header whose
//! body does not end with a newline, through `Outbox::reserve`, which the
//! gathering does not wrap); anything else is echoed in place.
#![no_std]

use shmrt_guest::primitives::call_header::PACKED_LINES_HEADER;
use shmrt_guest::{Message, Outbox, SendError};

fn answer(msg: Message<'_>, outbox: &mut Outbox) -> Result<(), SendError> {
    let bytes = msg.as_bytes();
    if let Some(text) = bytes.strip_prefix(b"twice ") {
        outbox.send(text)?;
        return outbox.send(text);
    }
    if bytes.starts_with(b"short ") {
        return msg.reply_in_place(outbox, |b| {
            b.copy_within(6.., 0);
            b.len() - 6
        });
    }
    match bytes {
        b"none" => Ok(()),
        b"boom" => panic!("boom"),
        b"liar" => {
            let mut r = outbox.reserve(PACKED_LINES_HEADER.len() + 4)?;
            let out = r.as_mut_slice();
            out[..16].copy_from_slice(&PACKED_LINES_HEADER);
            out[16..].copy_from_slice(b"oops");
            r.commit(20);
            Ok(())
        }
        _ => msg.reply_in_place(outbox, |b| b.len()),
    }
}

shmrt_guest::handler!(answer);
