//! shmrt: a WebAssembly sandbox runtime whose host and guests exchange
//! messages through a shared-memory segment mapped inside guest memory.

pub use shmrt_primitives as primitives;
