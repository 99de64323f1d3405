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

#[cfg(all(target_family = "wasm", not(shmrt_guest_atomics)))]
compile_error!(
    "shmrt guests must be built with wasm atomics, or a guest polling its ring can hang forever: \
     set RUSTFLAGS=\"-C target-feature=+atomics,+bulk-memory\" (or put `rustflags = [\"-C\", \
     \"target-feature=+atomics,+bulk-memory\"]` under [build] in .cargo/config.toml), or use `shmrt build`"
);

pub mod host;
pub mod log;

mod channel;

pub use channel::{
    Channel, DEFAULT_SLOT_WAIT_NS, EXIT_SLOTS_EXHAUSTED, Inbox, Message, OpenError, Outbox,
    SendError,
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
