//! SIGINT, SIGTERM and SIGHUP during a run ([`Interrupts`]), and the
//! named segment file a run removes as it ends, by a signal or not
//! ([`NamedSegment`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

/// The `--segment` file of a run without `--keep-segment`, removed as the
/// run ends, but only once a sandbox made it: until then the file at that
/// path may be someone else's (the creation failed).
#[derive(Clone, Debug, Default)]
pub(super) struct NamedSegment {
    path: Option<PathBuf>,
    made: Arc<AtomicBool>,
}

impl NamedSegment {
    /// `path`, if any, to remove once made.
    pub(super) fn new(path: Option<PathBuf>) -> Self {
        NamedSegment {
            path,
            made: Arc::default(),
        }
    }

    /// A sandbox made the file: from now on it is ours to remove.
    pub(super) fn made(&self) {
        self.made.store(true, Ordering::Release);
    }

    /// Removes the file if a sandbox made it and it is still there (never
    /// another run's file of that name).
    pub(super) fn remove(&self) {
        if let Some(path) = &self.path
            && self.made.load(Ordering::Acquire)
            && let Err(e) = shmrt::remove_if_created_here(path)
        {
            tracing::warn!("could not remove segment file {}: {e}", path.display());
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP during a run: the guest is stopped (it
/// drains nothing more), a named segment is removed unless kept, and shmrt
/// exits with 128 + the signal's number, as a shell reports a process the
/// signal ended (130, 143, 129). A second signal, or a run that has not
/// ended 3 s after the first, exits at once after removing the segment.
pub(super) struct Interrupts {
    shared: Arc<InterruptState>,
}

#[derive(Default)]
struct InterruptState {
    /// The signal received first; 0 for none.
    signal: AtomicI32,
    /// The sandbox running now.
    current: Mutex<Option<shmrt::StopHandle>>,
}

impl Interrupts {
    /// Installs the handlers and starts the thread that acts on them;
    /// `segment` is removed before a signal ends the process.
    pub(super) fn install(segment: NamedSegment) -> anyhow::Result<Self> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
            .context("installing the signal handlers")?;
        let shared = Arc::new(InterruptState::default());
        let state = shared.clone();
        std::thread::Builder::new()
            .name("shmrt-signals".into())
            .spawn(move || {
                let Some(first) = signals.forever().next() else {
                    return;
                };
                state.signal.store(first, Ordering::Release);
                tracing::info!("signal {first}: stopping the guest");
                if let Some(stop) = state
                    .current
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                {
                    stop.stop();
                }
                let grace = std::time::Instant::now() + Duration::from_secs(3);
                let mut last = first;
                while std::time::Instant::now() < grace {
                    if let Some(again) = signals.pending().next() {
                        last = again;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                segment.remove();
                std::process::exit(128 + last);
            })
            .context("starting the signal thread")?;
        Ok(Interrupts { shared })
    }

    /// Makes `stop` the sandbox a signal stops; stops it now if a signal
    /// came already.
    pub(super) fn watch(&self, stop: shmrt::StopHandle) {
        let mut current = self
            .shared
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.exit_code().is_some() {
            stop.stop();
        }
        *current = Some(stop);
    }

    /// The status to exit with when a signal ended the run.
    pub(super) fn exit_code(&self) -> Option<ExitCode> {
        match self.shared.signal.load(Ordering::Acquire) {
            0 => None,
            sig => Some(ExitCode::from((128 + sig).clamp(0, 255) as u8)),
        }
    }
}
