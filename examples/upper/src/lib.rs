//! Upper-cases ASCII letters of every message where it is: a message that
//! came in a slot is rewritten in that slot and sent back with it (no
//! allocation, no copy); an inline one is rewritten in the reply's ring
//! bytes.
//!
//! Run: `printf 'hello\nworld\n' | shmrt run $(shmrt build examples/upper)`
#![no_std]

use shmrt_guest::{Message, Outbox, SendError};

/// Upper-cases `msg` where it is and sends it back. A handler: the plugin
/// runs in every execution mode of the host.
fn upper(msg: Message<'_>, outbox: &mut Outbox) -> Result<(), SendError> {
    msg.reply_in_place(outbox, |bytes| {
        bytes.make_ascii_uppercase();
        bytes.len()
    })
}

shmrt_guest::handler!(upper);
