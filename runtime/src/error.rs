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
        /// What was being done.
        what: &'static str,
        /// The error underneath.
        #[source]
        source: std::io::Error,
    },
    /// The plugin file could not be read.
    #[error("cannot read plugin {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error underneath.
        #[source]
        source: std::io::Error,
    },
    /// A named segment file could not be created.
    #[error(
        "cannot create segment file {} (its directory must exist, the file must not yet)",
        path.display()
    )]
    NamedSegment {
        /// The file.
        path: PathBuf,
        /// The error underneath.
        #[source]
        source: std::io::Error,
    },
    /// An existing segment could not be opened for attaching.
    #[error(transparent)]
    Attach(#[from] OpenSegmentError),
    /// The peer entry to attach as is not available.
    #[error("segment {}: {reason}", path.display())]
    Peer {
        /// The file.
        path: PathBuf,
        /// Why, and what to do.
        reason: String,
    },
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
        /// The sandbox's name.
        sandbox: String,
        /// The segment window's bytes.
        window: u64,
        /// The module's initial memory, in bytes.
        initial: u64,
    },
    /// The runtime itself could not be set up (the wasmtime engine or its
    /// linker): no module is involved, so not a module's fault.
    #[error("cannot set up the wasmtime runtime ({what}): {message}")]
    EngineSetup {
        /// What was being done.
        what: &'static str,
        /// What failed, as wasmtime or the check said it.
        message: String,
    },
    /// The bytes are not a valid WebAssembly module for this runtime.
    #[error("sandbox {sandbox}: invalid WebAssembly module: {message}")]
    Compile {
        /// The sandbox's name.
        sandbox: String,
        /// What failed, as wasmtime or the check said it.
        message: String,
    },
    /// A valid module that shmrt will not run, and why.
    #[error("sandbox {sandbox}: {reason}")]
    Refused {
        /// The sandbox's name.
        sandbox: String,
        /// Why, and what to do.
        reason: String,
    },
    /// Instantiation failed (a missing import, a start function trap).
    #[error("sandbox {sandbox}: instantiation failed: {message}")]
    Instantiate {
        /// The sandbox's name.
        sandbox: String,
        /// What failed, as wasmtime or the check said it.
        message: String,
    },
    /// The guest trapped.
    #[error("sandbox {sandbox}: guest trapped: {message}")]
    Trap {
        /// The sandbox's name.
        sandbox: String,
        /// What failed, as wasmtime or the check said it.
        message: String,
    },
    /// The host stopped the sandbox ([`crate::SandboxHandle::stop`]): not
    /// a failure of the guest's, so never a reason to restart it.
    #[error("sandbox {sandbox}: stopped by the host")]
    Stopped {
        /// The sandbox's name.
        sandbox: String,
    },
    /// The guest used up its fuel.
    #[error("sandbox {sandbox}: out of fuel (the --fuel limit was reached)")]
    OutOfFuel {
        /// The sandbox's name.
        sandbox: String,
    },
    /// The memory limit refused the guest memory: its module's initial
    /// memory, or a `memory.grow` after which the guest trapped.
    #[error("sandbox {sandbox}: memory limit reached: {message}")]
    MemoryLimit {
        /// The sandbox's name.
        sandbox: String,
        /// What failed, as wasmtime or the check said it.
        message: String,
    },
    /// The guest ran past its deadline.
    #[error("sandbox {sandbox}: timed out after {after:?}")]
    Timeout {
        /// The sandbox's name.
        sandbox: String,
        /// How long it had.
        after: Duration,
    },
    /// The guest broke the shared-memory protocol.
    #[error("sandbox {sandbox}: protocol violation: {error}")]
    Protocol {
        /// The sandbox's name.
        sandbox: String,
        /// The violation found.
        error: ProtocolError,
    },
    /// The guest has ended and everything it sent has been read.
    #[error("sandbox {sandbox}: the guest has ended")]
    Closed {
        /// The sandbox's name.
        sandbox: String,
    },
    /// A callback guest was ended after the host's goodbye with requests
    /// it never took: a call moved nothing (it ignores its inbox, or its
    /// answers fill a ring nobody reads; those stay readable).
    #[error(
        "sandbox {sandbox}: ended after the host's goodbye with {unread} requests it never took \
         (a call read and answered nothing: read its answers before the goodbye, or let it read \
         its inbox)"
    )]
    Unanswered {
        /// The sandbox's name.
        sandbox: String,
        /// Requests the guest never took.
        unread: usize,
    },
    /// A host function of this sandbox waited on the sandbox's own
    /// channel: its guest is suspended in that host function and can
    /// neither send nor free room until it returns.
    #[error(
        "sandbox {sandbox}: a host function of this sandbox waited on its own channel, whose \
         guest is suspended in that host function: send and receive after it returns, or \
         use try_send and try_recv"
    )]
    Reentrant {
        /// The sandbox.
        sandbox: String,
    },
    /// A message larger than any slot.
    #[error(
        "sandbox {sandbox}: message of {len} bytes exceeds the largest slot payload of {max} bytes; \
         raise the largest size class (`--slot-classes` of `shmrt run`, `SegmentConfig::size_classes` in the library)"
    )]
    TooLarge {
        /// The sandbox's name.
        sandbox: String,
        /// Bytes of the message.
        len: usize,
        /// The largest slot payload, in bytes.
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
        /// The sandbox's name.
        sandbox: String,
        /// Bytes of the message.
        len: usize,
        /// The size class.
        class: u8,
        /// The class's payload bytes per slot.
        slot_payload: u32,
        /// The class's slots.
        slot_count: u32,
        /// Slots of the class the host allocated (messages the guest received and has not freed).
        by_host: u32,
        /// Slots of the class the guest allocated.
        by_guest: u32,
        /// How long the send waited.
        waited: Duration,
    },
    /// A slot reserved in one sandbox's segment was given to another
    /// sandbox's sender; nothing was sent, and the slot was given back.
    #[error(
        "sandbox {sandbox}: the slot was reserved in sandbox {reserved_in}'s segment, so only \
         that sandbox can send it; reserve it from this sandbox's sender"
    )]
    ForeignSlot {
        /// The sandbox asked to send it.
        sandbox: String,
        /// The sandbox whose segment holds the slot.
        reserved_in: String,
    },
    /// A blocking call ran out of time.
    #[error("sandbox {sandbox}: {what} timed out after {after:?}")]
    WouldBlock {
        /// The sandbox's name.
        sandbox: String,
        /// What was being done.
        what: &'static str,
        /// How long it had.
        after: Duration,
    },
}

/// Why an existing segment file could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenSegmentError {
    /// The file could not be opened or mapped.
    #[error("cannot open segment {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error underneath.
        #[source]
        source: std::io::Error,
    },
    /// The file's length can not be a segment's.
    #[error("segment {} is {len} bytes, too small or too large to map", path.display())]
    Size {
        /// The file.
        path: PathBuf,
        /// The file's bytes.
        len: u64,
    },
    /// The header is not a valid segment header.
    #[error("segment {} is not valid: {error}", path.display())]
    Header {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        error: HeaderError,
    },
    /// Pages of the file vanished while it was being validated.
    #[error("segment {} was truncated while it was being opened", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
    },
}

impl SandboxError {
    /// An OS call failed while doing `what`.
    pub(crate) fn io(what: &'static str, source: std::io::Error) -> Self {
        SandboxError::Io { what, source }
    }
}

/// A batch that failed part way ([`crate::HostSender::send_batch`]): the
/// payloads before the failing one were sent (and published), the rest
/// were not. `?` turns it into the [`SandboxError`] underneath.
#[derive(Debug, thiserror::Error)]
#[error("{error} ({sent} of the batch were sent before it; send the rest again from there)")]
pub struct BatchError {
    /// How many of the batch's payloads went out before the error.
    pub sent: usize,
    /// Why the next one did not.
    pub error: SandboxError,
}

impl From<BatchError> for SandboxError {
    fn from(e: BatchError) -> Self {
        e.error
    }
}
