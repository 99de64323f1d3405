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

#![warn(missing_docs)]

// The layers, each using only those above it in this list's reverse:
// `segment` (the shared memory), `state` (one sandbox's state and
// limits), `exec` (running guest code), `host` (the host's ends),
// `module` (a module before it runs), `runtime` (the engine and the
// spawn). See docs/architecture.md.
mod error;
mod exec;
mod host;
mod module;
mod runtime;
mod segment;
mod state;

pub use error::{BatchError, OpenSegmentError, SandboxError};
pub use exec::handle::{SandboxHandle, StopHandle};
pub use exec::host_imports;
pub use host::calls::{CallError, Caller, MAX_PLUGIN_MESSAGE, PendingCall, call_codes};
pub use host::host_segment::HostSegment;
pub use host::receiver::{HostMessage, HostReceiver, RecvWait};
pub use host::reserved::ReservedSlot;
pub use host::sandbox::Sandbox;
pub use host::sender::{HostSender, ReadSend, SendReadError};
pub use module::bytes::{MAX_MODULE_BYTES, read_module_file};
pub use runtime::plugin::Plugin;
pub use runtime::supervise::{RestartPolicy, is_guest_failure};
pub use runtime::{Runtime, RuntimeConfig};
pub use segment::file::SegmentFile;
pub use segment::owner::{
    OWNER_TAG, OWNER_XATTR, Owner, OwnerRecord, lock_held, remove_if_created_here,
};
pub use segment::{doorbell_futex, inspect, monotonic_ns};
pub use shmrt_primitives as primitives;
pub use shmrt_primitives::{SharedBytes, SharedBytesMut};
pub use state::contract::{
    HostFnError, HostFunctions, HostOutput, MAX_CONFIG_BYTES, MAX_HOST_ERROR_MESSAGE,
};
pub use state::escape::escape_line;
pub use state::guest_stack::{GUEST_ENTRY_STACK, GUEST_THREAD_STACK, MAX_WASM_STACK};
pub use state::options::{
    DEFAULT_CALLBACK_SLICE, DEFAULT_SLOT_WAIT, Execution, GuestStdin, GuestStdout, SandboxOptions,
    SegmentSource, SpinBudget,
};
pub use state::shared::ABANDON_AFTER;
