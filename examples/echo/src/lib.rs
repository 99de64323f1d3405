//! Sends every message back unchanged. A message that came in a slot is
//! answered with that same slot (no allocation, no copy); an inline one
//! is copied into the reply's ring bytes.
//!
//! Run: `printf 'hello\nworld\n' | shmrt run $(shmrt build examples/echo)`
#![no_std]

use shmrt_guest::{Message, Outbox, SendError};

/// Answers `msg` with its own bytes, in place. Defined as a handler, the
/// plugin runs in every execution mode of the host (thread, fiber and
/// callback).
fn echo(msg: Message<'_>, outbox: &mut Outbox) -> Result<(), SendError> {
    msg.reply_in_place(outbox, |bytes| bytes.len())
}

shmrt_guest::handler!(echo);
