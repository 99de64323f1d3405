//! shmrt-guest: the SDK for plugins that run inside a shmrt sandbox.
#![no_std]

#[cfg(all(target_family = "wasm", not(shmrt_guest_atomics)))]
compile_error!(
    "shmrt guests must be built with wasm atomics, or a guest polling its ring can hang forever: \
     set RUSTFLAGS=\"-C target-feature=+atomics,+bulk-memory\" (or put `rustflags = [\"-C\", \
     \"target-feature=+atomics,+bulk-memory\"]` under [build] in .cargo/config.toml), or use `shmrt build`"
);

pub use shmrt_primitives as primitives;
