//! shmrt-guest: the SDK for plugins that run inside a shmrt sandbox.
//!
//! A plugin exchanges messages with its host through a segment that lives
//! in its own linear memory: what the host writes, the plugin reads in
//! place, and back. `no_std`, no allocator needed. A plugin crate
//! (`#![no_std]`, `crate-type = ["cdylib"]`, as `shmrt new` makes it):
//!
//! ```no_run
//! use shmrt_guest::Channel;
//!
//! fn run(mut ch: Channel) -> i32 {
//!     let (inbox, outbox) = ch.split();
//!     while let Some(msg) = inbox.recv() {
//!         if outbox.send(msg.as_bytes()).is_err() {
//!             return 1;
//!         }
//!         shmrt_guest::debug!("echoed {} bytes", msg.len());
//!     }
//!     0
//! }
//! shmrt_guest::entry!(run);
//! # fn main() {}
//! ```
//!
//! Build with `shmrt build DIR`, or with
//! `-C target-feature=+atomics,+bulk-memory` for `wasm32-unknown-unknown`
//! or `wasm32-wasip1`: without atomics, a guest polling its ring can hang
//! forever, so this crate refuses to compile.
#![no_std]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;

#[cfg(all(target_family = "wasm", not(shmrt_guest_atomics)))]
compile_error!(
    "shmrt guests must be built with wasm atomics, or a guest polling its ring can hang forever: \
     set RUSTFLAGS=\"-C target-feature=+atomics,+bulk-memory\" (or put `rustflags = [\"-C\", \
     \"target-feature=+atomics,+bulk-memory\"]` under [build] in .cargo/config.toml), or use `shmrt build`"
);

pub mod calls;
pub mod config;
pub mod host;
pub mod host_fn;
pub mod log;

mod channel;

/// Lines packed many to a message by a host that feeds the plugin text
/// lines (`shmrt run --framing lines`): see [`lines::each_line`].
pub mod lines {
    pub use crate::channel::packed::each_line;
}

#[cfg(feature = "json")]
pub use calls::Json;
pub use calls::{Error, Failure};
pub use channel::{
    BATCH_BUDGET_NS, Channel, DEFAULT_SLOT_WAIT_NS, EXIT_SLOTS_EXHAUSTED, Inbox, Message,
    OpenError, Outbox, Reservation, SendError,
};
pub use shmrt_primitives as primitives;

/// Defines the plugin's entry point, `shmrt_main`, which opens the channel
/// and calls `$main(channel) -> i32`; its value is the exit status.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn shmrt_main() -> i32 {
            match $crate::Channel::open() {
                Ok(channel) => $main(channel),
                Err(e) => {
                    $crate::error!("cannot open the shmrt channel: {}", e);
                    101
                }
            }
        }
    };
}

/// Defines a plugin by its message handler, `fn(Message, &mut Outbox) ->
/// Result<(), SendError>`, so that it runs in every execution mode of the
/// host: `shmrt_main` (thread and fiber mode) loops over the messages
/// until the goodbye; `shmrt_on_messages` (callback mode) answers the
/// messages queued at each call and returns. Both hand the handler the
/// lines of a packed-lines message one at a time ([`lines::each_line`]),
/// and the plugin exports the marker that says so
/// ([`packed_lines_export!`]), so that `shmrt run` packs its lines.
///
/// ```no_run
/// use shmrt_guest::{Message, Outbox, SendError};
///
/// fn upper(msg: Message<'_>, outbox: &mut Outbox) -> Result<(), SendError> {
///     msg.reply_in_place(outbox, |bytes| {
///         bytes.make_ascii_uppercase();
///         bytes.len()
///     })
/// }
/// shmrt_guest::handler!(upper);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! handler {
    ($handle:path) => {
        $crate::entry!(__shmrt_serve_messages);

        fn __shmrt_serve_messages(channel: $crate::Channel) -> i32 {
            channel.serve_messages(|msg, outbox| $crate::lines::each_line(msg, outbox, $handle))
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn shmrt_on_messages() -> i32 {
            $crate::callback::with_channel(|channel| {
                channel.answer_queued(|msg, outbox| $crate::lines::each_line(msg, outbox, $handle))
            })
        }

        $crate::packed_lines_export!();
    };
}

/// Exports `shmrt_packed_lines_v1`, the marker by which a plugin tells its
/// host that it reads packed-lines messages: every message it receives
/// goes through [`lines::each_line`] (as [`handler!`]'s do). A host such
/// as `shmrt run` then packs many lines into one message; without the
/// marker it sends one line a message.
#[macro_export]
macro_rules! packed_lines_export {
    () => {
        /// The marker of a plugin that reads packed lines (never called).
        #[unsafe(no_mangle)]
        pub extern "C" fn shmrt_packed_lines_v1() {}
    };
}

/// What [`handler!`]'s callback entry keeps between calls.
#[doc(hidden)]
pub mod callback {
    use core::cell::UnsafeCell;

    use crate::Channel;

    struct Kept(UnsafeCell<Option<Channel>>);

    // SAFETY: a plugin instance runs one call at a time (the host calls
    // `shmrt_on_messages` from one thread, and never re-entrantly); no
    // other code touches the cell.
    unsafe impl Sync for Kept {}

    static CHANNEL: Kept = Kept(UnsafeCell::new(None));

    /// Runs `f` with the channel, opened at the first call; 101 when it
    /// can not be opened (logged). While `f` runs, a send that finds no
    /// room fails instead of waiting (nothing frees room until the
    /// callback returns).
    pub fn with_channel(f: impl FnOnce(&mut Channel) -> i32) -> i32 {
        // SAFETY: see `Kept`: calls do not overlap, so this is the only
        // reference to the cell's contents while it lives.
        let kept = unsafe { &mut *CHANNEL.0.get() };
        if kept.is_none() {
            match Channel::open() {
                Ok(channel) => *kept = Some(channel),
                Err(e) => {
                    crate::error!("cannot open the shmrt channel: {}", e);
                    return 101;
                }
            }
        }
        let channel = kept.as_mut().expect("opened above");
        let _answering = crate::channel::Answering::start();
        f(channel)
    }
}

/// Logs the panic through the host and traps (enable the `panic-handler`
/// feature in `no_std` plugins).
#[cfg(all(feature = "panic-handler", target_family = "wasm"))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crate::log::write(
        crate::log::Level::Error,
        format_args!("plugin panicked: {info}"),
    );
    core::arch::wasm32::unreachable()
}
