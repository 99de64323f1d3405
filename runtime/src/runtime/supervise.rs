//! Supervision: run a plugin again, on a fresh segment, when its sandbox
//! fails, under a policy the embedder chooses.
//!
//! A restart is a new sandbox: new instance, new segment. The failed
//! sandbox's segment is dropped with it, so no slot, ring byte or mapping
//! of a crashed guest outlives it; messages that were in flight to the
//! failed guest are lost (the embedder's session decides what to resend).

use super::Runtime;
use crate::error::SandboxError;
use crate::host::sandbox::Sandbox;
use crate::state::options::SandboxOptions;

/// When to start a failed plugin again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Never: the first failure is the result.
    #[default]
    Never,
    /// After a trap, a timeout, running out of fuel or memory, or a
    /// protocol violation, up to `max_restarts` times.
    OnFailure {
        /// Restarts allowed before the failure is the result.
        max_restarts: u32,
    },
}

/// Whether `e` is a failure of the guest (worth a restart), as opposed to
/// an error in what the host asked for (a bad file or module).
pub fn is_guest_failure(e: &SandboxError) -> bool {
    matches!(
        e,
        SandboxError::Trap { .. }
            | SandboxError::Timeout { .. }
            | SandboxError::OutOfFuel { .. }
            | SandboxError::MemoryLimit { .. }
            | SandboxError::Protocol { .. }
    )
}

impl Runtime {
    /// Spawns `wasm` and hands the sandbox to `session` (which talks to it
    /// and joins it); when the session ends with a guest failure and the
    /// policy allows, spawns a fresh sandbox and calls `session` again
    /// with the attempt number. Returns the exit status of the last run,
    /// or the failure that ended supervision.
    pub fn supervise(
        &self,
        wasm: &[u8],
        options: &SandboxOptions,
        policy: RestartPolicy,
        mut session: impl FnMut(Sandbox, u32) -> Result<i32, SandboxError>,
    ) -> Result<i32, SandboxError> {
        let mut attempt = 0;
        loop {
            let sandbox = self.spawn(wasm, options.clone())?;
            match session(sandbox, attempt) {
                Ok(status) => return Ok(status),
                Err(e) => {
                    let allowed = match policy {
                        RestartPolicy::Never => false,
                        RestartPolicy::OnFailure { max_restarts } => attempt < max_restarts,
                    };
                    if !allowed || !is_guest_failure(&e) {
                        return Err(e);
                    }
                    attempt += 1;
                    tracing::warn!("{e}; restarting it on a fresh segment (restart {attempt})");
                }
            }
        }
    }
}
