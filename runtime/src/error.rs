//! The runtime library's public errors. Each names the sandbox (and the
//! file, when there is one) and says what to do where that is known.

use std::path::PathBuf;
use std::time::Duration;

use shmrt_primitives::{HeaderError, LayoutError, ProtocolError};

/// Why a sandbox could not be created, or how it ended badly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// An OS call failed.
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The plugin file could not be read.
    #[error("cannot read plugin {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A named segment file could not be created.
    #[error(
        "cannot create segment file {} (its directory must exist, the file must not yet)",
        path.display()
    )]
    NamedSegment {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An existing segment could not be opened for attaching.
    #[error(transparent)]
    Attach(#[from] OpenSegmentError),
    /// The peer entry to attach as is not available.
    #[error("segment {}: {reason}", path.display())]
    Peer { path: PathBuf, reason: String },
    /// The segment configuration is invalid.
    #[error("invalid segment configuration: {0}")]
    Config(LayoutError),
    /// The segment does not fit the 4 GiB of a 32-bit linear memory after
    /// the module's own initial memory: a segment configuration (or a file
    /// to attach to) too large, not a bad module.
    #[error(
        "sandbox {sandbox}: the segment window ({window} bytes) does not fit a 32-bit linear memory \
         after the module's {initial} bytes of initial memory (4 GiB in all); give the segment fewer \
         or smaller slots (`--slot-classes`) or a smaller ring (`--ring-capacity`)"
    )]
    WindowTooLarge {
        sandbox: String,
        window: u64,
        initial: u64,
    },
    /// The runtime itself could not be set up (the wasmtime engine or its
    /// linker): no module is involved, so not a module's fault.
    #[error("cannot set up the wasmtime runtime ({what}): {message}")]
    EngineSetup { what: &'static str, message: String },
    /// The bytes are not a valid WebAssembly module for this runtime.
    #[error("sandbox {sandbox}: invalid WebAssembly module: {message}")]
    Compile { sandbox: String, message: String },
    /// A valid module that shmrt will not run, and why.
    #[error("sandbox {sandbox}: {reason}")]
    Refused { sandbox: String, reason: String },
    /// Instantiation failed (a missing import, a start function trap).
    #[error("sandbox {sandbox}: instantiation failed: {message}")]
    Instantiate { sandbox: String, message: String },
    /// The guest trapped.
    #[error("sandbox {sandbox}: guest trapped: {message}")]
    Trap { sandbox: String, message: String },
    /// The host stopped the sandbox ([`crate::SandboxHandle::stop`]): not
    /// a failure of the guest's, so never a reason to restart it.
    #[error("sandbox {sandbox}: stopped by the host")]
    Stopped { sandbox: String },
    /// The guest used up its fuel.
    #[error("sandbox {sandbox}: out of fuel (the --fuel limit was reached)")]
    OutOfFuel { sandbox: String },
    /// The memory limit refused the guest memory: its module's initial
    /// memory, or a `memory.grow` after which the guest trapped.
    #[error("sandbox {sandbox}: memory limit reached: {message}")]
    MemoryLimit { sandbox: String, message: String },
    /// The guest ran past its deadline.
    #[error("sandbox {sandbox}: timed out after {after:?}")]
    Timeout { sandbox: String, after: Duration },
    /// The guest broke the shared-memory protocol.
    #[error("sandbox {sandbox}: protocol violation: {error}")]
    Protocol {
        sandbox: String,
        error: ProtocolError,
    },
    /// The guest has ended and everything it sent has been read.
    #[error("sandbox {sandbox}: the guest has ended")]
    Closed { sandbox: String },
    /// A callback guest was ended after the host's goodbye with requests
    /// it never took: a call moved nothing (it ignores its inbox, or its
    /// answers fill a ring nobody reads; those stay readable).
    #[error(
        "sandbox {sandbox}: ended after the host's goodbye with {unread} requests it never took \
         (a call read and answered nothing: read its answers before the goodbye, or let it read \
         its inbox)"
    )]
    Unanswered { sandbox: String, unread: usize },
    /// A message larger than any slot.
    #[error(
        "sandbox {sandbox}: message of {len} bytes exceeds the largest slot payload of {max} bytes; \
         raise the largest size class (`--slot-classes` of `shmrt run`, `SegmentConfig::size_classes` in the library)"
    )]
    TooLarge {
        sandbox: String,
        len: usize,
        max: u32,
    },
    /// A send found no free slot of the class it needed for the sandbox's
    /// slot wait, while the guest freed none: who holds them, and what
    /// waited.
    #[error(
        "sandbox {sandbox}: no slot for a {len}-byte message after {waited:.1?}: class {class} \
         ({slot_payload}-byte payloads) has {slot_count} slots: {by_host} allocated by the host \
         (messages the guest received and has not freed) and {by_guest} by the guest, and the \
         guest freed none; it holds what it received (answer in place, or free messages sooner), \
         or give the segment more slots of this class (`--slot-classes`)"
    )]
    SlotsExhausted {
        sandbox: String,
        len: usize,
        class: u8,
        slot_payload: u32,
        slot_count: u32,
        by_host: u32,
        by_guest: u32,
        waited: Duration,
    },
    /// A blocking call ran out of time.
    #[error("sandbox {sandbox}: {what} timed out after {after:?}")]
    WouldBlock {
        sandbox: String,
        what: &'static str,
        after: Duration,
    },
}

/// Why an existing segment file could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenSegmentError {
    #[error("cannot open segment {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("segment {} is {len} bytes, too small or too large to map", path.display())]
    Size { path: PathBuf, len: u64 },
    #[error("segment {} is not valid: {error}", path.display())]
    Header { path: PathBuf, error: HeaderError },
    #[error("segment {} was truncated while it was being opened", path.display())]
    Truncated { path: PathBuf },
}

impl SandboxError {
    pub(crate) fn io(what: &'static str, source: std::io::Error) -> Self {
        SandboxError::Io { what, source }
    }
}
