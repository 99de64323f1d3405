//! The host's side of a sandbox, above the code that runs its guest: the
//! ends of its channel (`sender.rs`, `receiver.rs`, and a slot the
//! host reserves, `reserved.rs`) and how they wait for
//! and wake the guest (`wait.rs`), a running sandbox as a whole
//! (`sandbox.rs`), and a segment this process hosts for guests in other
//! processes (`host_segment.rs`).

pub(crate) mod calls;
pub(crate) mod host_segment;
pub(crate) mod receiver;
pub(crate) mod reserved;
pub(crate) mod sandbox;
pub(crate) mod sender;
pub(crate) mod wait;
