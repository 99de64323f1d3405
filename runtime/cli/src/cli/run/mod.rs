//! `shmrt run PLUGIN.wasm`: the CLI is the host. Standard input is cut
//! into messages for the guest; the guest's messages go to standard output.
//!
//! A run takes one of three paths: a guest attached to another host's
//! segment file (`--attach`), a module that imports nothing from shmrt run
//! as a plain WASI command, or a plugin under supervision, started again
//! after a failure with `--restart on-failure`. Its parts:
//!
//! - [`options`]: the flags, and the sandbox options, runtime and restart
//!   policy they make;
//! - [`framing`]: how stdin and stdout are cut into messages;
//! - [`feed`]: the stdin thread, feeding each sandbox of the run in turn;
//! - [`output`]: the guest's messages written to stdout;
//! - [`signals`]: SIGINT, SIGTERM and SIGHUP, and the named segment file
//!   removed as the run ends.

mod calls;
mod feed;
mod framing;
mod options;
mod output;
mod signals;

use std::cell::Cell;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use shmrt::primitives::layout::SegmentLayout;
use shmrt::{Execution, Runtime, Sandbox, SandboxError, SandboxOptions};

pub use options::RunCommand;

use super::Failure;
use super::exit_codes::{BAD_SEGMENT, RESTARTED, guest_status};
use feed::Feeder;
use framing::Framing;
use options::Restart;
use output::{drain, output_failure};
use signals::{Interrupts, NamedSegment};

impl RunCommand {
    pub fn execute(mut self) -> Result<ExitCode, Failure> {
        self.take_exec_from_env()?;
        let options = self.sandbox_options()?;
        let chunk = framing::raw_chunk(self.framing, self.chunk, &options.segment)?;
        let runtime = self.runtime()?;
        let segment = NamedSegment::new(match &self.segment {
            Some(path) if !self.keep_segment => Some(path.clone()),
            _ => None,
        });
        let interrupts = Interrupts::install(segment.clone()).map_err(Failure::other)?;
        if let Some(path) = &self.attach {
            return self.run_attached(&runtime, path, options, &interrupts);
        }
        let wasm = shmrt::read_module_file(&self.plugin)?;
        // The plugin prepared here is kept by the runtime: the spawn below
        // does not compile or check it again. An invalid one is reported
        // by the spawn.
        let plugin = runtime.prepare(&wasm);
        if let Ok(plugin) = &plugin
            && !plugin.imports_shmrt()
        {
            return self.run_plain_command(&runtime, plugin, options, &interrupts);
        }
        if let Some(function) = &self.call {
            return self.run_calls(function, &runtime, &wasm, options, chunk, &interrupts);
        }
        let mut options = options;
        // A callback's slice (1 s by default) bounds one call, which would
        // be a whole pack of lines: packs go to a fiber, which an epoch
        // tick preempts, and a callback asked for by name gets a line a
        // message, its slice bounding one line's handling as before.
        let packed = self.framing == Framing::Lines
            && options.execution != Execution::Callback
            && plugin.as_ref().is_ok_and(reads_packed_lines);
        if packed && options.execution == Execution::Auto {
            options.execution = Execution::Fiber;
        }
        if packed {
            // The plugin said it reads packed lines; this says we pack.
            use shmrt::primitives::call_header::{
                PACKED_LINES_CONFIG_KEY, PACKED_LINES_CONFIG_VALUE,
            };
            std::sync::Arc::make_mut(&mut options.config).insert(
                PACKED_LINES_CONFIG_KEY.into(),
                PACKED_LINES_CONFIG_VALUE.into(),
            );
            tracing::debug!("{}: lines go packed", self.plugin.display());
        }
        self.run_plugin(&runtime, &wasm, &options, chunk, &interrupts, &segment)
    }

    /// Runs the plugin as a guest of the segment file at `path`, made by
    /// another program that is the host: stdin and stdout are not used.
    fn run_attached(
        &self,
        runtime: &Runtime,
        path: &Path,
        options: SandboxOptions,
        interrupts: &Interrupts,
    ) -> Result<ExitCode, Failure> {
        let wasm = shmrt::read_module_file(&self.plugin)?;
        let (handle, peer) =
            runtime
                .attach(&wasm, path, self.peer, options)
                .map_err(|e| match e {
                    // The file another program made is too large a window.
                    e @ SandboxError::WindowTooLarge { .. } => Failure {
                        error: e.into(),
                        code: BAD_SEGMENT,
                    },
                    e => Failure::from(e),
                })?;
        tracing::info!(
            "{} attached to {} as peer {peer}",
            self.plugin.display(),
            path.display()
        );
        interrupts.watch(handle.stop_handle());
        let status = handle.join();
        if let Some(code) = interrupts.exit_code() {
            return Ok(code);
        }
        Ok(guest_status(status?))
    }

    /// Runs a module that does not import the shmrt interface as
    /// `wasmtime run` would: a WASI command with the host's stdin and
    /// stdout, whose exit status passes through. It has no channel, so
    /// there are no messages to frame or restart for.
    fn run_plain_command(
        &self,
        runtime: &Runtime,
        plugin: &shmrt::Plugin,
        mut options: SandboxOptions,
        interrupts: &Interrupts,
    ) -> Result<ExitCode, Failure> {
        if self.restart != Restart::Never || self.segment.is_some() {
            return Err(Failure::usage(anyhow::anyhow!(
                "{} imports nothing from `shmrt`: it is a plain WASI program, not a plugin, and \
                 runs as a command (its stdin, stdout and exit status passed through); --restart \
                 and --segment apply to plugins only",
                self.plugin.display()
            )));
        }
        tracing::info!(
            "{} imports nothing from `shmrt`: running it as a plain WASI command (stdin, stdout \
             and exit status passed through)",
            self.plugin.display()
        );
        options.stdin = shmrt::GuestStdin::Inherit;
        options.stdout = shmrt::GuestStdout::RawStdout;
        options.execution = Execution::Thread;
        let sandbox = runtime.spawn_plugin(plugin, options)?;
        let (mut tx, _rx, handle) = sandbox.split();
        // Nothing will come through the channel: the program ends on its own.
        tx.goodbye();
        interrupts.watch(handle.stop_handle());
        let status = handle.join();
        if let Some(code) = interrupts.exit_code() {
            return Ok(code);
        }
        Ok(guest_status(status?))
    }

    /// Runs a plugin under supervision: stdin fed to each sandbox in turn,
    /// its messages drained to stdout, a failed sandbox replaced as
    /// `--restart` allows.
    fn run_plugin(
        &self,
        runtime: &Runtime,
        wasm: &[u8],
        options: &SandboxOptions,
        chunk: usize,
        interrupts: &Interrupts,
        segment: &NamedSegment,
    ) -> Result<ExitCode, Failure> {
        // Set by `execute` alone (a user's --config of it is refused).
        let packed = options
            .config
            .contains_key(shmrt::primitives::call_header::PACKED_LINES_CONFIG_KEY);
        let feeder = Feeder::start(&options.segment, self.framing, chunk, packed)?;
        let run = PluginRun {
            plugin: &self.plugin,
            segment_kib: SegmentLayout::compute(&options.segment)
                .map_or(0, |l| l.window_size() >> 10),
            framing: self.framing,
            packed,
            feeder: &feeder,
            interrupts,
            segment,
            lost: Cell::new(0),
            lost_unknown: Cell::new(false),
            restarts: Cell::new(0),
        };
        let started = Instant::now();
        let end = runtime.supervise(wasm, options, self.restart_policy(), |sandbox, attempt| {
            run.serve(sandbox, attempt)
        });
        // The stdin thread may still hold the last sandbox's sender (stdin
        // still open): the file goes now, not with it.
        segment.remove();
        if let Some(code) = interrupts.exit_code() {
            return Ok(code);
        }
        if let Some(failure) = output_failure(&end) {
            return Err(failure);
        }
        if let Some(e) = feeder
            .error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Err(Failure::from(
                e.context("feeding standard input to the guest"),
            ));
        }
        let code = end?;
        tracing::info!(
            "{}: the guest returned {code} after {:.1?}",
            self.plugin.display(),
            started.elapsed()
        );
        if run.restarts.get() > 0 {
            eprintln!("shmrt: {}", run.restarts_note());
            if code == 0 {
                return Ok(ExitCode::from(RESTARTED));
            }
        }
        Ok(guest_status(code))
    }
}

/// Whether `plugin` reads packed-lines messages: it exports the marker
/// function of the guest SDK's `handler!` (`shmrt_packed_lines_v1`).
fn reads_packed_lines(plugin: &shmrt::Plugin) -> bool {
    matches!(
        plugin
            .module()
            .get_export(shmrt::primitives::call_header::PACKED_LINES_EXPORT),
        Some(wasmtime::ExternType::Func(_))
    )
}

/// A plugin's run under supervision: what each of its sandboxes in turn
/// is given, and what the run counts across restarts.
struct PluginRun<'a> {
    plugin: &'a Path,
    segment_kib: u64,
    framing: Framing,
    /// Lines go packed both ways.
    packed: bool,
    feeder: &'a Arc<Feeder>,
    interrupts: &'a Interrupts,
    segment: &'a NamedSegment,
    /// Messages sent to sandboxes that failed and never read by them.
    lost: Cell<usize>,
    /// A failed sandbox could not count its unread messages.
    lost_unknown: Cell<bool>,
    restarts: Cell<u32>,
}

impl PluginRun<'_> {
    /// One sandbox of the run, `attempt` the restarts before it: fed by
    /// the stdin thread and drained here until it ends; the guest's status,
    /// or why it failed.
    fn serve(&self, sandbox: Sandbox, attempt: u32) -> Result<i32, SandboxError> {
        self.segment.made();
        self.restarts.set(attempt);
        let (mut tx, mut rx, handle) = sandbox.split();
        tracing::info!(
            "{}: {} guest{}, segment of {} KiB in its memory",
            self.plugin.display(),
            handle.execution().name(),
            if attempt > 0 {
                format!(" (restart {attempt})")
            } else {
                String::new()
            },
            self.segment_kib
        );
        // stdin is fed in bulk, far faster than a guest answers: a full
        // ring parks the feeder at once, leaving the cores to the guest
        // and the drain (spinning there made a million lines 10x slower
        // on two cores).
        tx.set_spin(0);
        self.interrupts.watch(handle.stop_handle());
        self.feeder.hand_over(tx);
        let drained = drain(&mut rx, self.framing, self.packed);
        if drained.is_err() {
            // Output failed (or the guest broke the protocol): the
            // guest would block on a ring nobody drains.
            handle.stop();
        }
        let (status, unread) = handle.join_counting_unread();
        if let Err(e) = &status
            && shmrt::is_guest_failure(e)
        {
            self.count_lost(unread);
        }
        match (drained, status) {
            // Output failed: that, not the stop it caused.
            (Err(e @ SandboxError::Io { .. }), _) => Err(e),
            // A guest failure explains a drain that stopped early.
            (_, Err(e)) | (Err(e), Ok(_)) => Err(e),
            (Ok(()), Ok(code)) => Ok(code),
        }
    }

    /// Counts the messages a failed sandbox left in its ring (`None`: it
    /// could not tell).
    fn count_lost(&self, unread: Option<usize>) {
        self.lost.set(self.lost.get() + unread.unwrap_or(0));
        self.lost_unknown
            .set(self.lost_unknown.get() || unread.is_none());
        if let Some(n) = unread.filter(|&n| n > 0) {
            // A guest gives ring room back lazily: some of them may have
            // been read, even answered.
            tracing::warn!(
                "up to {n} messages sent to the failed sandbox may not have been handled: \
                 they were still in its ring (unread, or read and not yet released)"
            );
        }
    }

    /// What stderr says of a run that restarted: how many times, and how
    /// many messages may have been lost.
    fn restarts_note(&self) -> String {
        let lost = match (self.lost.get(), self.lost_unknown.get()) {
            (n, false) => format!("up to {n} messages may have been lost"),
            (n, true) => {
                format!("an unknown number of messages (at least {n} counted) may have been lost")
            }
        };
        // Packed, a message is a batch of lines: a batch the guest failed
        // in is lost whole (the answers it gathered for it go with it).
        let batches = if self.packed {
            "; lines went packed, so each message is a batch of lines, lost whole with the \
             answers gathered for it"
        } else {
            ""
        };
        format!(
            "the plugin was restarted {} times; {lost} (still in the rings of the sandboxes that failed: unread, or read and not yet released){batches}",
            self.restarts.get()
        )
    }
}
