//! `shmrt run --call NAME`: every input message (in the run's framing)
//! becomes a call of the plugin's export NAME, and each call's output is
//! written with the same framing, in input order. Up to [`IN_FLIGHT`]
//! calls are in flight at once. A call's error (the plugin's `Err`, a
//! name it does not export) is reported on stderr with the input's number
//! and the run goes on; the exit status is then [`CALL_FAILED`]. A failure
//! of the sandbox itself (trap, timeout, fuel) ends the run with its
//! status, as without `--call`.

use std::collections::VecDeque;
use std::io::{self, BufRead, Read, Write};
use std::process::ExitCode;

use shmrt::{CallError, PendingCall, Runtime, SandboxOptions};

use super::framing::{self, Framing};
use super::output::die_of_sigpipe;
use super::signals::Interrupts;
use super::{Failure, RunCommand};
use crate::cli::exit_codes::{CALL_FAILED, OUTPUT_FAILED, guest_status};

/// Calls sent and not yet answered, at most.
const IN_FLIGHT: usize = 32;

impl RunCommand {
    pub(super) fn run_calls(
        &self,
        function: &str,
        runtime: &Runtime,
        wasm: &[u8],
        options: SandboxOptions,
        chunk: usize,
        interrupts: &Interrupts,
    ) -> Result<ExitCode, Failure> {
        if self.restart != super::options::Restart::Never {
            return Err(Failure::usage(anyhow::anyhow!(
                "--call and --restart can not be used together: a restarted plugin would lose \
                 the state its calls built"
            )));
        }
        let max_message = framing::max_message(&options.segment);
        let sandbox = runtime.spawn(wasm, options)?;
        let (caller, handle) = sandbox.into_caller();
        interrupts.watch(handle.stop_handle());
        let mut run = CallRun {
            function,
            pending: VecDeque::new(),
            out: io::BufWriter::with_capacity(64 << 10, io::stdout().lock()),
            framing: self.framing,
            failed: 0,
            ended: None,
        };
        let fed = run.feed(&caller, self.framing, chunk, max_message);
        while run.ended.is_none() && run.answer_oldest().is_some() {}
        let flushed = run.out.flush();
        caller.goodbye();
        let status = handle.join();
        if let Some(code) = interrupts.exit_code() {
            return Ok(code);
        }
        output_ok(flushed)?;
        fed.map_err(|e| Failure::from(e.context("feeding standard input to the guest")))?;
        let code = status?;
        if let Some(e) = run.ended {
            return Err(Failure::from(anyhow::Error::new(e)));
        }
        if run.failed > 0 && code == 0 {
            eprintln!(
                "shmrt: {} call{} of `{function}` failed (reported above)",
                run.failed,
                if run.failed == 1 { "" } else { "s" }
            );
            return Ok(ExitCode::from(CALL_FAILED));
        }
        Ok(guest_status(code))
    }
}

struct CallRun<'a, W: Write> {
    function: &'a str,
    /// Calls in flight, oldest first, with their input's number.
    pending: VecDeque<(u64, PendingCall)>,
    out: W,
    framing: Framing,
    failed: u64,
    /// Why no more calls can be answered (the sandbox ended).
    ended: Option<CallError>,
}

impl<W: Write> CallRun<'_, W> {
    /// Reads stdin message by message and calls the function with each.
    fn feed(
        &mut self,
        caller: &shmrt::Caller,
        framing: Framing,
        chunk: usize,
        max_message: usize,
    ) -> anyhow::Result<()> {
        let mut input = io::stdin().lock();
        let mut buf = Vec::new();
        let mut number = 0u64;
        loop {
            let more = match framing {
                Framing::Lines => read_line(&mut input, &mut buf, max_message)?,
                Framing::Len32 => framing::read_len32(&mut input, &mut buf, max_message)?,
                Framing::Raw => {
                    buf.clear();
                    (&mut input).take(chunk as u64).read_to_end(&mut buf)? > 0
                }
            };
            if !more || self.ended.is_some() {
                return Ok(());
            }
            number += 1;
            if self.pending.len() >= IN_FLIGHT {
                self.answer_oldest();
            }
            match caller.start(self.function, &buf) {
                Ok(call) => self.pending.push_back((number, call)),
                Err(e) => self.report(number, e)?,
            }
        }
    }

    /// Waits for the oldest call in flight and writes its output; `None`
    /// when none is in flight.
    fn answer_oldest(&mut self) -> Option<()> {
        let (number, call) = self.pending.pop_front()?;
        match call.wait(None) {
            Ok(output) => self.write(&output),
            Err(e) => {
                if let Err(e) = self.report(number, e) {
                    self.ended = Some(CallError::Sandbox(shmrt::SandboxError::Io {
                        what: "writing the calls' output",
                        source: io::Error::other(e.to_string()),
                    }));
                }
            }
        }
        Some(())
    }

    fn write(&mut self, output: &[u8]) {
        let written = match self.framing {
            Framing::Lines => self
                .out
                .write_all(output)
                .and_then(|()| self.out.write_all(b"\n")),
            Framing::Raw => self.out.write_all(output),
            Framing::Len32 => self
                .out
                .write_all(&(output.len() as u32).to_le_bytes())
                .and_then(|()| self.out.write_all(output)),
        };
        if let Err(e) = written {
            if e.kind() == io::ErrorKind::BrokenPipe {
                die_of_sigpipe();
            }
            self.ended = Some(CallError::Sandbox(shmrt::SandboxError::Io {
                what: "writing the calls' output",
                source: e,
            }));
        }
    }

    /// A call's error: the plugin's own is reported and the run goes on;
    /// the sandbox's end stops the run.
    fn report(&mut self, number: u64, e: CallError) -> anyhow::Result<()> {
        match e {
            CallError::Sandbox(shmrt::SandboxError::TooLarge { .. }) => {
                self.failed += 1;
                let _ = self.out.flush();
                eprintln!("shmrt: input {number}: {e}");
            }
            CallError::Sandbox(_) => self.ended = Some(e),
            e => {
                self.failed += 1;
                let _ = self.out.flush();
                eprintln!("shmrt: input {number}: {e}");
            }
        }
        Ok(())
    }
}

/// One line into `buf` (its newline removed), false at the end of input.
/// A line longer than `max_message` is kept to `max_message + 1` bytes
/// (its call fails as too large) and the rest of it skipped, so that a
/// line without end does not fill the memory.
fn read_line(input: &mut impl BufRead, buf: &mut Vec<u8>, max_message: usize) -> io::Result<bool> {
    buf.clear();
    let limit = max_message.saturating_add(1) as u64;
    let n = input.by_ref().take(limit).read_until(b'\n', buf)?;
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if n as u64 == limit {
        let mut rest = Vec::new();
        while input.by_ref().take(1 << 16).read_until(b'\n', &mut rest)? > 0 {
            if rest.last() == Some(&b'\n') {
                break;
            }
            rest.clear();
        }
    }
    Ok(n > 0)
}

fn output_ok(flushed: io::Result<()>) -> Result<(), Failure> {
    match flushed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => die_of_sigpipe(),
        Err(e) => Err(Failure {
            error: anyhow::anyhow!("writing the calls' output: {e}"),
            code: OUTPUT_FAILED,
        }),
    }
}
