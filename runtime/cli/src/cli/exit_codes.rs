//! Exit statuses of the CLI, one per way a run can end badly, so that
//! scripts can tell them apart. A guest's own status passes through as is.

use shmrt::SandboxError;

/// Something failed outside the guest (I/O, a bad argument).
pub const OTHER: u8 = 1;
/// A command line shmrt can not run: an option's value is wrong (as clap
/// says of the usage errors it finds itself).
pub const USAGE: u8 = 2;
/// `--restart on-failure` restarted the plugin and its last run returned
/// 0: stderr says how many restarts and how many messages were lost.
pub const RESTARTED: u8 = 3;
/// `shmrt inspect` read the segment and found it inconsistent (or stale):
/// each problem is reported. Not 2, which says the command line was wrong.
pub const INCONSISTENT: u8 = 4;
/// `shmrt run --call`: at least one call returned the plugin's error
/// (each reported on stderr); the plugin itself ended well.
pub const CALL_FAILED: u8 = 5;
/// Writing the guest's messages to standard output failed (EX_IOERR),
/// e.g. a full disk. A closed pipe ends the run by SIGPIPE instead.
pub const OUTPUT_FAILED: u8 = 74;
/// The plugin file could not be read (EX_NOINPUT).
pub const UNREADABLE: u8 = 66;
/// Not a valid module, or one shmrt refuses (EX_DATAERR).
pub const INVALID_MODULE: u8 = 65;
/// The segment to attach to is invalid or has no entry for us.
pub const BAD_SEGMENT: u8 = 67;
/// The guest trapped (EX_SOFTWARE).
pub const TRAP: u8 = 70;
/// The guest broke the shared-memory protocol (EX_PROTOCOL).
pub const PROTOCOL: u8 = 76;
/// The guest used up its `--fuel`.
pub const OUT_OF_FUEL: u8 = 71;
/// The guest trapped after `--max-memory` refused it memory.
pub const MEMORY_LIMIT: u8 = 73;
/// A send found no free slot within the slot wait: the other side holds
/// them (EX_TEMPFAIL; a plugin built on the guest SDK ends with it too).
pub const SLOTS_EXHAUSTED: u8 = 75;
/// The guest ran past `--timeout` (as timeout(1)).
pub const TIMEOUT: u8 = 124;

/// An error and the status to exit with.
pub struct Failure {
    pub error: anyhow::Error,
    pub code: u8,
}

impl Failure {
    pub fn other(error: anyhow::Error) -> Self {
        Failure { error, code: OTHER }
    }

    pub fn usage(error: anyhow::Error) -> Self {
        Failure { error, code: USAGE }
    }
}

impl From<SandboxError> for Failure {
    fn from(e: SandboxError) -> Self {
        let code = match &e {
            SandboxError::Read { .. } => UNREADABLE,
            SandboxError::Attach(_) | SandboxError::Peer { .. } => BAD_SEGMENT,
            // The segment options shmrt was given can not make a segment.
            SandboxError::Config(_) | SandboxError::WindowTooLarge { .. } => USAGE,
            SandboxError::Compile { .. }
            | SandboxError::Refused { .. }
            | SandboxError::Instantiate { .. } => INVALID_MODULE,
            SandboxError::Trap { .. } => TRAP,
            SandboxError::Protocol { .. } => PROTOCOL,
            SandboxError::Timeout { .. } => TIMEOUT,
            SandboxError::OutOfFuel { .. } => OUT_OF_FUEL,
            SandboxError::MemoryLimit { .. } => MEMORY_LIMIT,
            SandboxError::SlotsExhausted { .. } => SLOTS_EXHAUSTED,
            _ => OTHER,
        };
        Failure {
            error: e.into(),
            code,
        }
    }
}

/// The exit status for a guest's own status: as it is in 0..=255; any
/// other value (a negative `shmrt_main`) is a failure, 1, and said.
pub fn guest_status(code: i32) -> std::process::ExitCode {
    match u8::try_from(code) {
        Ok(status) => std::process::ExitCode::from(status),
        Err(_) => {
            eprintln!("shmrt: the guest ended with status {code}, outside 0..=255: exiting with 1");
            std::process::ExitCode::from(OTHER)
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        match error.downcast::<SandboxError>() {
            Ok(e) => e.into(),
            Err(error) => Failure::other(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: SandboxError) -> u8 {
        Failure::from(e).code
    }

    /// Each status means one thing: a script can tell every ending apart.
    #[test]
    fn exit_statuses_are_distinct_and_not_success() {
        let all = [
            OTHER,
            USAGE,
            RESTARTED,
            INCONSISTENT,
            OUTPUT_FAILED,
            UNREADABLE,
            INVALID_MODULE,
            BAD_SEGMENT,
            TRAP,
            PROTOCOL,
            OUT_OF_FUEL,
            MEMORY_LIMIT,
            SLOTS_EXHAUSTED,
            TIMEOUT,
        ];
        let distinct: std::collections::BTreeSet<u8> = all.into_iter().collect();
        assert_eq!(distinct.len(), all.len(), "{all:?}");
        assert!(!distinct.contains(&0));
    }

    #[test]
    fn sandbox_errors_map_to_their_exit_statuses() {
        let sandbox = || "s".to_string();
        let message = || "m".to_string();
        assert_eq!(
            code(SandboxError::Compile {
                sandbox: sandbox(),
                message: message()
            }),
            INVALID_MODULE
        );
        assert_eq!(
            code(SandboxError::Refused {
                sandbox: sandbox(),
                reason: message()
            }),
            INVALID_MODULE
        );
        assert_eq!(
            code(SandboxError::EngineSetup {
                what: "the engine",
                message: message()
            }),
            OTHER
        );
        assert_eq!(
            code(SandboxError::Trap {
                sandbox: sandbox(),
                message: message()
            }),
            TRAP
        );
        assert_eq!(
            code(SandboxError::Timeout {
                sandbox: sandbox(),
                after: Default::default()
            }),
            TIMEOUT
        );
        assert_eq!(
            code(SandboxError::OutOfFuel { sandbox: sandbox() }),
            OUT_OF_FUEL
        );
        assert_eq!(
            code(SandboxError::WindowTooLarge {
                sandbox: sandbox(),
                window: 1,
                initial: 1
            }),
            USAGE
        );
        assert_eq!(
            code(SandboxError::Read {
                path: "p".into(),
                source: std::io::ErrorKind::NotFound.into()
            }),
            UNREADABLE
        );
        assert_eq!(code(SandboxError::Stopped { sandbox: sandbox() }), OTHER);
        // Through anyhow, as the commands return them.
        let wrapped: anyhow::Error = SandboxError::OutOfFuel { sandbox: sandbox() }.into();
        assert_eq!(Failure::from(wrapped).code, OUT_OF_FUEL);
    }
}
