//! A guest's end: how its entry point's return, its exit, a trap or an
//! interrupt becomes its exit status or error ([`status`],
//! [`exit_status`]), the same for a thread, a fiber and a callback guest
//! (and a start function), and what it left unread.

use std::time::Duration;

use crate::error::SandboxError;
use crate::state::escape::escape_line;
use crate::state::guest_output::LogRate;
use crate::state::interrupts::{DeadlineExceeded, Stopped};
use crate::state::shared::SandboxShared;

/// The end of a guest whose entry point (or last call) gave `result`:
/// the log lines it had `dropped` said, then its status.
pub(crate) fn status(
    result: wasmtime::Result<i32>,
    dropped: u64,
    shared: &SandboxShared,
    timeout: Option<Duration>,
) -> Result<i32, SandboxError> {
    report_dropped(shared, dropped);
    result.or_else(|e| exit_status(e, shared, timeout))
}

/// Says how many log lines of the guest the rate limit dropped, if any.
pub(crate) fn report_dropped(shared: &SandboxShared, dropped: u64) {
    if dropped > 0 {
        tracing::warn!(
            target: "shmrt::guest",
            sandbox = shared.name(),
            "{dropped} more log lines of this guest were dropped (more than {} a second)",
            LogRate::PER_SECOND
        );
    }
}

/// Maps how a guest call failed to an exit status or an error.
pub(crate) fn exit_status(
    e: wasmtime::Error,
    shared: &SandboxShared,
    timeout: Option<Duration>,
) -> Result<i32, SandboxError> {
    let sandbox = shared.name();
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Ok(exit.0);
    }
    if e.downcast_ref::<DeadlineExceeded>().is_some() {
        return Err(SandboxError::Timeout {
            sandbox: sandbox.into(),
            after: timeout.unwrap_or_default(),
        });
    }
    if e.downcast_ref::<Stopped>().is_some() {
        return Err(SandboxError::Stopped {
            sandbox: sandbox.into(),
        });
    }
    // The backtrace names functions from the module's name section.
    let failure = escape_line(&format!("{e:?}"));
    tracing::debug!(sandbox, "guest failed: {failure}");
    if let Some(wasmtime::Trap::OutOfFuel) = e.downcast_ref::<wasmtime::Trap>() {
        return Err(SandboxError::OutOfFuel {
            sandbox: sandbox.into(),
        });
    }
    // The trap itself, without the wasm backtrace (logged at debug).
    let mut message = match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => e.root_cause().to_string(),
    };
    if let Some(last) = shared.last_error_log().take() {
        message = format!("{last} ({message})");
    }
    if shared.memory_refused() {
        return Err(SandboxError::MemoryLimit {
            sandbox: sandbox.into(),
            message: format!("a memory.grow was refused, then the guest trapped: {message}"),
        });
    }
    Err(SandboxError::Trap {
        sandbox: sandbox.into(),
        message,
    })
}

/// Messages left in the host-to-guest ring of a guest that has ended,
/// taken as the guest would take them (slots freed): bounded by the
/// ring's size.
pub(crate) fn unread_messages(shared: &SandboxShared) -> Option<usize> {
    let segment = shared.segment_file().segment();
    let (_, mut rx) = segment.guest_channel(shared.guest_index()).ok()?;
    let most = segment.layout().ring_capacity as usize / 8 + 1;
    for n in 0..most {
        match rx.try_recv() {
            Ok(Some(_)) => {}
            Ok(None) => return Some(n),
            Err(_) => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::file::SegmentFile;
    use crate::state::interrupts::SegmentTruncated;
    use crate::state::options::SandboxOptions;
    use crate::state::shared::GuestKind;
    use std::sync::Arc;

    fn shared() -> SandboxShared {
        let mut config = shmrt_primitives::SegmentConfig::single_guest();
        config.ring_capacity = 4096;
        let file = SegmentFile::create_memfd(&config).expect("a memfd segment");
        let options = SandboxOptions {
            name: "t".into(),
            ..SandboxOptions::default()
        };
        SandboxShared::new(&options, Arc::new(file), GuestKind::Spawned)
    }

    fn status(e: wasmtime::Error, shared: &SandboxShared) -> Result<i32, SandboxError> {
        exit_status(e, shared, Some(Duration::from_secs(2)))
    }

    #[test]
    fn exit_classification() {
        let s = shared();
        assert_eq!(
            status(wasmtime::Error::new(wasmtime_wasi::I32Exit(7)), &s).ok(),
            Some(7)
        );
        assert!(matches!(
            status(wasmtime::Error::new(DeadlineExceeded), &s),
            Err(SandboxError::Timeout { after, .. }) if after == Duration::from_secs(2)
        ));
        assert!(matches!(
            status(wasmtime::Error::new(Stopped), &s),
            Err(SandboxError::Stopped { .. })
        ));
        assert!(matches!(
            status(wasmtime::Error::new(wasmtime::Trap::OutOfFuel), &s),
            Err(SandboxError::OutOfFuel { .. })
        ));
        match status(wasmtime::Error::new(SegmentTruncated), &s) {
            Err(SandboxError::Trap { message, .. }) => {
                assert_eq!(message, SegmentTruncated.to_string())
            }
            other => panic!("{other:?}"),
        }
        // The guest's last error log explains the trap that follows.
        *s.last_error_log() = Some("panicked at lib.rs".into());
        match status(
            wasmtime::Error::new(wasmtime::Trap::UnreachableCodeReached),
            &s,
        ) {
            Err(SandboxError::Trap { message, .. }) => {
                assert!(message.starts_with("panicked at lib.rs ("), "{message}")
            }
            other => panic!("{other:?}"),
        }
        // A refused memory.grow turns a later trap into a memory limit.
        s.refuse_memory();
        assert!(matches!(
            status(
                wasmtime::Error::new(wasmtime::Trap::UnreachableCodeReached),
                &s
            ),
            Err(SandboxError::MemoryLimit { .. })
        ));
    }
}
