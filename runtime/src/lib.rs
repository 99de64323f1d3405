//! shmrt: a WebAssembly sandbox runtime whose host and guests exchange
//! messages through a shared-memory segment mapped inside guest memory,
//! with zero copies.
//!
//! ```no_run
//! use shmrt::{Runtime, SandboxOptions};
//!
//! let runtime = Runtime::new()?;
//! let mut sandbox = runtime.spawn_file("echo.wasm".as_ref(), SandboxOptions::default())?;
//! sandbox.sender().send(b"hello")?;
//! let reply = sandbox.receiver().recv()?;
//! // The guest may rewrite its bytes at any moment: copied out to compare.
//! assert_eq!(reply.to_vec(), b"hello");
//! drop(reply);
//! sandbox.sender().goodbye();
//! let status = sandbox.join()?;
//! # Ok::<(), shmrt::SandboxError>(())
//! ```

mod calls;
pub mod doorbell_futex;
mod epoch_ticker;
pub mod error;
mod guest_driver;
mod guest_output;
mod guest_stack;
mod guest_thread;
mod host_channel;
mod host_functions;
pub mod host_imports;
pub mod host_segment;
pub mod inspect;
mod instantiate;
mod interrupts;
mod memory_limit;
mod memory_window;
mod module_cache;
mod module_check;
mod options;
mod plugin;
mod runtime;
pub mod sandbox;
mod sandbox_state;
pub mod segment_file;
mod segment_template;
mod sigbus;
pub mod supervise;
mod wake_timer;
mod wasi_poll;

pub use calls::{CallError, Caller, PendingCall, call_codes};
pub use error::SandboxError;
pub use guest_output::escape_line;
pub use guest_stack::{GUEST_ENTRY_STACK, GUEST_THREAD_STACK, MAX_WASM_STACK};
pub use host_functions::{HostFnError, HostFunctions, HostOutput, MAX_CONFIG_BYTES};
pub use host_segment::HostSegment;
pub use plugin::Plugin;
pub use sandbox::{
    Execution, GuestStdin, GuestStdout, HostMessage, HostReceiver, HostSender, ReadSend, Runtime,
    RuntimeConfig, Sandbox, SandboxHandle, SandboxOptions, SegmentSource, SendReadError,
    StopHandle,
};
pub use shmrt_primitives as primitives;
pub use shmrt_primitives::{SharedBytes, SharedBytesMut};
pub use supervise::RestartPolicy;
