//! `shmrt run PLUGIN.wasm`: the CLI is the host. Standard input is cut
//! into messages for the guest; the guest's messages go to standard output.

use std::io::{self, BufRead, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use shmrt::primitives::layout::{
    SLOT_LEN_PREFIX, SegmentConfig, SegmentLayout, SizeClass, SizeClasses,
};
use shmrt::{
    Execution, HostReceiver, HostSender, ReadSend, RestartPolicy, Runtime, RuntimeConfig,
    SandboxError, SandboxOptions, SegmentSource, SendReadError,
};

use super::Failure;

/// Restart policy of `shmrt run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Restart {
    Never,
    OnFailure,
}

/// How standard input and output are cut into messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Framing {
    /// One message per input line (newline removed); each guest message is
    /// written followed by a newline.
    Lines,
    /// Input cut into messages of `--chunk` bytes, read straight into
    /// ring or slot memory; guest messages written as they are.
    Raw,
    /// u32 little-endian length-prefixed records, both ways.
    Len32,
}

#[derive(Args)]
pub struct RunCommand {
    /// The plugin (.wasm).
    plugin: PathBuf,
    /// How stdin and stdout are cut into messages.
    #[arg(long, value_enum, default_value = "lines")]
    framing: Framing,
    /// Message size for `--framing raw` (e.g. 4096, 64KiB, 1MiB; default
    /// 64KiB).
    #[arg(long, value_parser = parse_size)]
    chunk: Option<u64>,
    /// Wall-clock limit for the guest (e.g. 500ms, 2s, 1m; more than 0).
    #[arg(long, value_parser = parse_timeout)]
    timeout: Option<Duration>,
    /// How long guest code may hold shmrt's thread at once (a callback's
    /// call, which the SDK ends after 20 ms of a batch, so in effect one
    /// message's handling; a start function): e.g. 5s; default 1s. Past
    /// it the guest fails (70).
    #[arg(long, value_parser = parse_timeout, value_name = "DURATION")]
    callback_slice: Option<Duration>,
    /// Fuel (roughly, wasm instructions) the guest may use, at least 1;
    /// out of fuel ends the run with status 71.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    fuel: Option<u64>,
    /// What the guest may make the host allocate (e.g. 64MiB): one budget
    /// across all of its linear memories and tables (8 bytes a table
    /// element; the segment window not counted). A refused memory.grow or
    /// table.grow returns -1; a module that declares more is refused.
    #[arg(long, value_parser = parse_size)]
    max_memory: Option<u64>,
    /// Rounds the host spins on an empty or full ring before it parks on
    /// the futex doorbell (0 parks at once: least CPU, a wake-up per
    /// message when traffic is sparse; more: lower latency, a busy core).
    #[arg(long, default_value_t = shmrt::SpinBudget::default().0)]
    spin: u32,
    /// Data bytes of each ring, per direction.
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    ring_capacity: u64,
    /// Messages of up to THRESHOLD - 8 bytes go inline in the ring (0 = 256).
    #[arg(long, default_value_t = 0)]
    inline_threshold: u32,
    /// Slot classes as PAYLOAD:COUNT pairs, smallest first
    /// (default 4KiB:64,64KiB:16,1MiB:4). Each slot also holds a 4-byte length.
    #[arg(long, value_parser = parse_classes)]
    slot_classes: Option<SizeClasses>,
    /// Give the guest a host directory: HOST or HOST::GUEST (WASI guests).
    #[arg(long = "dir")]
    dirs: Vec<String>,
    /// An environment variable for the guest: KEY=VALUE (WASI guests).
    #[arg(long = "env")]
    env: Vec<String>,
    /// Run the plugin as a guest of this existing segment file, made by
    /// another program that is the host (shmrt, shm-primitives / vox-shm,
    /// or any writer of the format). stdin and stdout are not used.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["segment", "framing", "chunk"])]
    attach: Option<PathBuf>,
    /// With --attach: the guest's peer id (claims that Reserved entry);
    /// default: the first Empty entry.
    #[arg(long, requires = "attach")]
    peer: Option<u32>,
    /// Create the sandbox's segment as this named file (exclusively, mode
    /// 0600) so that other processes and `shmrt inspect` can see it.
    #[arg(long, value_name = "PATH")]
    segment: Option<PathBuf>,
    /// With --segment: leave the file in place on exit.
    #[arg(long, requires = "segment")]
    keep_segment: bool,
    /// With --segment: replace a stale segment at PATH, one left by a shmrt
    /// that is gone (`shmrt inspect` says so); a live one is never replaced.
    #[arg(long, requires = "segment")]
    replace_stale: bool,
    /// Start the plugin again on a fresh segment when its sandbox fails
    /// (trap, timeout, fuel, memory limit, protocol violation). Messages in
    /// flight to the failed sandbox are lost; the rest of stdin goes to the
    /// new one.
    #[arg(long, value_enum, default_value = "never")]
    restart: Restart,
    /// With --restart on-failure: at most this many restarts.
    #[arg(long, default_value_t = 3)]
    max_restarts: u32,
    /// Where the guest runs: `thread` (a thread of its own: shmrt and the
    /// guest work at once, on two cores), `fiber` (on shmrt's threads,
    /// resumed when a message is there) or `callback` (plugins made with
    /// `shmrt_guest::handler!`, called with the messages queued) or `auto`.
    /// An --attach guest always runs on a thread. Default: $SHMRT_EXEC if
    /// set, else `auto`: `callback` for a plugin that exports one, else
    /// `thread`.
    #[arg(long = "exec", value_name = "MODE", value_parser = parse_execution)]
    execution: Option<Execution>,
    /// Compile the plugin afresh and keep nothing: by default compiled
    /// modules are kept in $XDG_CACHE_HOME/shmrt (or ~/.cache/shmrt),
    /// keyed by the module's bytes and the engine's settings, so that a
    /// plugin run again starts without compiling.
    #[arg(long)]
    no_cache: bool,
    /// Arguments for the guest (WASI guests), after `--`.
    #[arg(last = true)]
    args: Vec<String>,
}

impl RunCommand {
    pub fn execute(mut self) -> Result<ExitCode, Failure> {
        if self.execution.is_none()
            && let Some(mode) = std::env::var_os("SHMRT_EXEC").filter(|m| !m.is_empty())
        {
            let mode = mode.to_string_lossy();
            let parsed = parse_execution(&mode)
                .map_err(|e| Failure::usage(anyhow::anyhow!("SHMRT_EXEC={mode}: {e}")))?;
            // An attached guest runs on a thread whatever the environment.
            if self.attach.is_none() {
                self.execution = Some(parsed);
            }
        }
        let execution = match (self.execution, &self.attach) {
            (Some(mode), Some(_)) if !matches!(mode, Execution::Thread | Execution::Auto) => {
                return Err(Failure::usage(anyhow::anyhow!(
                    "--exec {} can not be used with --attach: an attached guest's host is another \
                     process, so the guest runs on a thread of its own (--exec thread)",
                    mode.name()
                )));
            }
            (Some(mode), _) => mode,
            (None, _) => Execution::Auto,
        };
        let mut options = SandboxOptions {
            name: self.plugin.display().to_string(),
            timeout: self.timeout,
            callback_slice: Some(self.callback_slice.unwrap_or(shmrt::DEFAULT_CALLBACK_SLICE)),
            execution,
            spin: shmrt::SpinBudget(self.spin),
            ..SandboxOptions::default()
        };
        options.segment.ring_capacity = u32::try_from(self.ring_capacity).map_err(|_| {
            Failure::usage(anyhow::anyhow!(
                "--ring-capacity {} is too large: a ring holds at most 4 GiB - 1 bytes, and a \
                 segment must fit a 32-bit linear memory",
                self.ring_capacity
            ))
        })?;
        options.segment.inline_threshold = self.inline_threshold;
        if let Some(classes) = self.slot_classes {
            options.segment.set_size_classes(classes);
        }
        options.args = std::iter::once(self.plugin.display().to_string())
            .chain(self.args.iter().cloned())
            .collect();
        for e in &self.env {
            let (k, v) = e
                .split_once('=')
                .with_context(|| format!("--env {e}: expected KEY=VALUE"))
                .map_err(Failure::other)?;
            options.env.push((k.into(), v.into()));
        }
        for d in &self.dirs {
            let (host, guest) = d.split_once("::").unwrap_or((d, d));
            if !std::path::Path::new(host).is_dir() {
                return Err(Failure::usage(anyhow::anyhow!(
                    "--dir {d}: {host} is not a directory this user can open; give an existing directory"
                )));
            }
            options.dirs.push((host.into(), guest.into()));
        }
        let chunk = match (self.framing, self.chunk) {
            (Framing::Raw, chunk) => {
                let chunk = chunk.unwrap_or(64 << 10);
                check_chunk(chunk, &options.segment).map_err(Failure::usage)?;
                usize::try_from(chunk).unwrap_or(usize::MAX)
            }
            (_, Some(_)) => {
                return Err(Failure::usage(anyhow::anyhow!(
                    "--chunk applies to --framing raw only (lines and len32 records are cut by their framing)"
                )));
            }
            (_, None) => 0,
        };
        if let Some(path) = &self.segment {
            options.segment_source = SegmentSource::Named {
                path: path.clone(),
                keep: self.keep_segment,
                replace_stale: self.replace_stale,
            };
        }

        options.fuel = self.fuel;
        options.max_memory = self
            .max_memory
            .map(|m| usize::try_from(m).unwrap_or(usize::MAX));
        let runtime = Runtime::with_config(RuntimeConfig {
            fuel: self.fuel.is_some(),
            module_cache: if self.no_cache {
                None
            } else {
                RuntimeConfig::default_module_cache()
            },
        })?;
        let named_segment = match &self.segment {
            Some(path) if !self.keep_segment => Some(path.clone()),
            _ => None,
        };
        // Raised once a sandbox made the named segment: only then is the
        // file at that path ours to remove (it may be someone else's when
        // the creation failed).
        let segment_made = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let interrupts = Interrupts::install(named_segment.clone(), segment_made.clone())
            .map_err(Failure::other)?;
        if let Some(segment) = &self.attach {
            let wasm = shmrt::read_module_file(&self.plugin)?;
            let (handle, peer) =
                runtime
                    .attach(&wasm, segment, self.peer, options)
                    .map_err(|e| match e {
                        // The file another program made is too large a window.
                        e @ SandboxError::WindowTooLarge { .. } => Failure {
                            error: e.into(),
                            code: super::exit_codes::BAD_SEGMENT,
                        },
                        e => Failure::from(e),
                    })?;
            tracing::info!(
                "{} attached to {} as peer {peer}",
                self.plugin.display(),
                segment.display()
            );
            interrupts.watch(handle.stop_handle());
            let status = handle.join();
            if let Some(code) = interrupts.exit_code() {
                return Ok(code);
            }
            return Ok(super::exit_codes::guest_status(status?));
        }
        let wasm = shmrt::read_module_file(&self.plugin)?;
        // The plugin prepared here is kept by the runtime: the spawn below
        // does not compile or check it again. An invalid one is reported
        // by the spawn.
        if let Ok(plugin) = runtime.prepare(&wasm)
            && !plugin.imports_shmrt()
        {
            return self.run_plain_command(&runtime, &plugin, options, &interrupts);
        }
        let policy = match self.restart {
            Restart::Never => RestartPolicy::Never,
            Restart::OnFailure => RestartPolicy::OnFailure {
                max_restarts: self.max_restarts,
            },
        };
        // One feeder for the whole run: it cuts stdin into messages and
        // sends each to the current sandbox's sender, waiting for the next
        // one when a sandbox fails. It may stay blocked on stdin after the
        // last guest ends; it is not joined.
        // The largest message the segment carries bounds what stdin may
        // make us buffer (a line or a len32 record).
        let max_message = SegmentLayout::compute(&options.segment)
            .map(|l| l.max_slot_payload().max(l.max_inline_payload()) as usize)
            .unwrap_or(usize::MAX);
        let feeder = Arc::new(Feeder {
            max_message,
            ..Feeder::default()
        });
        let f = feeder.clone();
        let (framing, chunk) = (self.framing, chunk);
        std::thread::Builder::new()
            .name("shmrt-stdin".into())
            // It may run a callback guest (a send calls it for room).
            .stack_size(shmrt::GUEST_THREAD_STACK)
            .spawn(move || f.run(io::stdin().lock(), framing, chunk))
            .context("starting the stdin thread")?;
        // Messages sent to sandboxes that failed and never read by them.
        let lost = std::cell::Cell::new(0usize);
        let lost_unknown = std::cell::Cell::new(false);
        let restarts = std::cell::Cell::new(0u32);
        let plugin_name = self.plugin.display();
        let segment_kib =
            SegmentLayout::compute(&options.segment).map_or(0, |l| l.window_size() >> 10);
        let started = std::time::Instant::now();
        let code = runtime.supervise(&wasm, &options, policy, |sandbox, attempt| {
            segment_made.store(true, std::sync::atomic::Ordering::Release);
            restarts.set(attempt);
            let (mut tx, mut rx, handle) = sandbox.split();
            tracing::info!(
                "{}: {} guest{}, segment of {} KiB in its memory",
                plugin_name,
                handle.execution().name(),
                if attempt > 0 {
                    format!(" (restart {attempt})")
                } else {
                    String::new()
                },
                segment_kib
            );
            // stdin is fed in bulk, far faster than a guest answers: a full
            // ring parks the feeder at once, leaving the cores to the guest
            // and the drain (spinning there made a million lines 10x slower
            // on two cores).
            tx.set_spin(0);
            interrupts.watch(handle.stop_handle());
            feeder.hand_over(tx);
            let drained = drain(&mut rx, framing);
            if drained.is_err() {
                // Output failed (or the guest broke the protocol): the
                // guest would block on a ring nobody drains.
                handle.stop();
            }
            let (status, unread) = handle.join_counting_unread();
            if let Err(e) = &status
                && shmrt::is_guest_failure(e)
            {
                lost.set(lost.get() + unread.unwrap_or(0));
                lost_unknown.set(lost_unknown.get() || unread.is_none());
                if let Some(n) = unread.filter(|&n| n > 0) {
                    // A guest gives ring room back lazily: some of them
                    // may have been read, even answered.
                    tracing::warn!(
                        "up to {n} messages sent to the failed sandbox may not have been handled: \
                         they were still in its ring (unread, or read and not yet released)"
                    );
                }
            }
            match (drained, status) {
                // Output failed: that, not the stop it caused.
                (Err(e @ SandboxError::Io { .. }), _) => Err(e),
                // A guest failure explains a drain that stopped early.
                (_, Err(e)) | (Err(e), Ok(_)) => Err(e),
                (Ok(()), Ok(code)) => Ok(code),
            }
        });
        if let Some(path) = &named_segment
            && segment_made.load(std::sync::atomic::Ordering::Acquire)
        {
            // The stdin thread may still hold the last sandbox's sender
            // (stdin still open): the file goes now, not with it.
            remove_segment_file(path);
        }
        if let Some(code) = interrupts.exit_code() {
            return Ok(code);
        }
        if let Err(SandboxError::Io { what, source }) = &code
            && *what == OUTPUT
        {
            if source.kind() == io::ErrorKind::BrokenPipe {
                // Whoever read our output is gone: end as `cat` does.
                die_of_sigpipe();
            }
            return Err(Failure {
                error: anyhow::anyhow!("{what}: {source}"),
                code: super::exit_codes::OUTPUT_FAILED,
            });
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
        let code = code?;
        tracing::info!(
            "{plugin_name}: the guest returned {code} after {:.1?}",
            started.elapsed()
        );
        if restarts.get() > 0 {
            let lost = match (lost.get(), lost_unknown.get()) {
                (n, false) => format!("up to {n} messages may have been lost"),
                (n, true) => format!(
                    "an unknown number of messages (at least {n} counted) may have been lost"
                ),
            };
            eprintln!(
                "shmrt: the plugin was restarted {} times; {lost} (still in the rings of the sandboxes that failed: unread, or read and not yet released)",
                restarts.get()
            );
            if code == 0 {
                return Ok(ExitCode::from(super::exit_codes::RESTARTED));
            }
        }
        Ok(super::exit_codes::guest_status(code))
    }
}

impl RunCommand {
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
        Ok(super::exit_codes::guest_status(status?))
    }
}

/// The stdin side of a run, shared with the sandboxes it feeds in turn.
#[derive(Default)]
struct Feeder {
    /// The current sandbox's sender; `None` between sandboxes.
    current: Mutex<Option<HostSender>>,
    changed: std::sync::Condvar,
    /// stdin has ended: every sender handed over gets goodbye at once.
    eof: std::sync::atomic::AtomicBool,
    /// Reading stdin or sending failed.
    error: Mutex<Option<anyhow::Error>>,
    /// The largest message the segment carries.
    max_message: usize,
}

impl Feeder {
    /// Gives the feeder the next sandbox's sender.
    fn hand_over(&self, mut tx: HostSender) {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if self.eof.load(std::sync::atomic::Ordering::Acquire) {
            tx.goodbye();
        }
        *cur = Some(tx);
        self.changed.notify_all();
    }

    /// Sends `msg` to the current sandbox, waiting for a new one when the
    /// current one has ended.
    fn deliver(&self, msg: &[u8]) -> Result<(), SandboxError> {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match cur.as_mut() {
                Some(tx) => match tx.send(msg) {
                    Ok(()) => return Ok(()),
                    // That guest is gone: the message goes to the next.
                    Err(SandboxError::Closed { .. }) => *cur = None,
                    Err(e) => return Err(e),
                },
                None => cur = self.changed.wait(cur).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    fn run(&self, input: impl BufRead, framing: Framing, chunk: usize) {
        let mut progress = Progress::new();
        let result = self.feed(input, framing, chunk, &mut progress);
        progress.done();
        if let Err(e) = result {
            *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        }
        self.eof.store(true, std::sync::atomic::Ordering::Release);
        if let Some(tx) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            tx.goodbye();
        }
    }

    /// Takes the current sandbox's sender out (waiting for one), so that
    /// a restart can hand over the next while this one is in use.
    fn take_current(&self) -> HostSender {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(tx) = cur.take() {
                return tx;
            }
            cur = self.changed.wait(cur).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Puts a sender taken out back, unless a newer one came meanwhile.
    fn put_back(&self, tx: HostSender) {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.is_none() {
            *cur = Some(tx);
        }
    }

    /// Raw input, read straight into the guest's ring or slot memory in
    /// messages of up to `chunk` bytes: no copy on the host.
    fn feed_raw(
        &self,
        input: std::os::fd::BorrowedFd<'_>,
        chunk: usize,
        progress: &mut Progress,
    ) -> anyhow::Result<()> {
        loop {
            let mut tx = self.take_current();
            match tx.send_from_reader(chunk, |buf| read_full_into(&input, buf)) {
                Ok(ReadSend::Sent(n)) => {
                    self.put_back(tx);
                    progress.add(n);
                }
                Ok(ReadSend::Eof) => {
                    self.put_back(tx);
                    return Ok(());
                }
                Ok(ReadSend::GuestGone(bytes)) => {
                    // Read for a guest that has ended: the next one gets it.
                    drop(tx);
                    self.deliver(&bytes)?;
                    progress.add(bytes.len());
                }
                // That guest is gone before anything was read: wait for the
                // next one.
                Err(SendReadError::Sandbox(SandboxError::Closed { .. })) => drop(tx),
                Err(SendReadError::Sandbox(e)) => {
                    self.put_back(tx);
                    return Err(e.into());
                }
                Err(SendReadError::Read(e)) => {
                    self.put_back(tx);
                    return Err(e.into());
                }
            }
        }
    }

    /// Lines, read in large blocks and sent as a batch per block: the
    /// lines of a block go into the ring without waking the guest, and
    /// one notification follows (no syscall or fence per line).
    fn feed_lines(
        &self,
        input: std::os::fd::BorrowedFd<'_>,
        progress: &mut Progress,
    ) -> anyhow::Result<()> {
        const BLOCK: usize = 1 << 16;
        let mut buf = vec![0u8; 4 * BLOCK];
        let (mut start, mut end) = (0, 0);
        loop {
            if end - start > self.max_message {
                anyhow::bail!(
                    "a line of more than {} bytes, the largest message the segment carries: \
                     give --slot-classes a larger class, or use --framing raw",
                    self.max_message
                );
            }
            // Room for a block: move the partial line to the front, or
            // grow for a line longer than the buffer.
            if buf.len() - end < BLOCK {
                if start > 0 {
                    buf.copy_within(start..end, 0);
                    end -= start;
                    start = 0;
                } else {
                    buf.resize(buf.len() * 2, 0);
                }
            }
            let n = read_some(input, &mut buf[end..])?;
            if n == 0 {
                if start < end {
                    // The last line, without its newline.
                    self.deliver(&buf[start..end])?;
                    progress.add(end - start);
                }
                return Ok(());
            }
            end += n;
            let mut batch = self.current.lock().unwrap_or_else(|e| e.into_inner());
            let base = start;
            for nl in memchr::memchr_iter(b'\n', &buf[base..end]) {
                let line = base + nl;
                let text = &buf[start..line];
                let sent = match batch.as_mut() {
                    Some(tx) => tx.try_send_no_notify(text).unwrap_or(false),
                    None => false,
                };
                if !sent {
                    // Full, or between sandboxes, or an error to report:
                    // the waiting path, without the lock.
                    if let Some(tx) = batch.as_ref() {
                        tx.notify();
                    }
                    drop(batch);
                    self.deliver(text)?;
                    batch = self.current.lock().unwrap_or_else(|e| e.into_inner());
                }
                progress.add(text.len());
                start = line + 1;
            }
            if let Some(tx) = batch.as_ref() {
                tx.notify();
            }
        }
    }

    /// Cuts `input` into messages and delivers them.
    fn feed(
        &self,
        mut input: impl BufRead,
        framing: Framing,
        chunk: usize,
        progress: &mut Progress,
    ) -> anyhow::Result<()> {
        // Nothing was read through `input`'s buffer yet: raw and line
        // input read the file descriptor themselves.
        let stdin = io::stdin();
        let fd = std::os::fd::AsFd::as_fd(&stdin);
        match framing {
            Framing::Raw => return self.feed_raw(fd, chunk, progress),
            Framing::Lines => return self.feed_lines(fd, progress),
            Framing::Len32 => {}
        }
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let more = match framing {
                Framing::Lines => {
                    let n = input.read_until(b'\n', &mut buf)?;
                    if buf.last() == Some(&b'\n') {
                        buf.pop();
                    }
                    n > 0
                }
                Framing::Raw => unreachable!("fed by feed_raw"),
                Framing::Len32 => {
                    let mut len = [0u8; 4];
                    match read_full(&mut input, &mut len)? {
                        0 => return Ok(()),
                        4 => {}
                        n => anyhow::bail!(
                            "stdin ends inside a len32 length prefix: {n} of its 4 bytes are there"
                        ),
                    }
                    let n = u32::from_le_bytes(len) as u64;
                    if n > self.max_message as u64 {
                        anyhow::bail!(
                            "a len32 record announces {n} bytes, more than the largest message the \
                             segment carries ({} bytes): give --slot-classes a larger class",
                            self.max_message
                        );
                    }
                    (&mut input).take(n).read_to_end(&mut buf)?;
                    if (buf.len() as u64) < n {
                        anyhow::bail!(
                            "a len32 record announces {n} bytes but stdin ends after {}",
                            buf.len()
                        );
                    }
                    true
                }
            };
            if !more {
                return Ok(());
            }
            self.deliver(&buf)?;
            progress.add(buf.len());
        }
    }
}

/// Reads from `input` until `buf` is full or the input ends, straight
/// into the shared bytes (the kernel writes them; no slice of shared
/// memory is made); how many bytes it read.
fn read_full_into(
    input: &impl std::os::fd::AsFd,
    mut buf: shmrt::SharedBytesMut<'_>,
) -> io::Result<usize> {
    let fd = input.as_fd();
    let mut n = 0;
    while n < buf.len() {
        let at = buf.as_mut_ptr().wrapping_add(n);
        // SAFETY: `[at, at + len - n)` lies inside the view, which is
        // writable while borrowed; read(2) writes through the pointer and
        // makes no Rust reference.
        let got = unsafe {
            libc::read(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                at.cast(),
                buf.len() - n,
            )
        };
        match got {
            0 => break,
            k if k > 0 => n += k as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(n)
}

/// One `read(2)` of what is there (retried when interrupted).
fn read_some(input: std::os::fd::BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match rustix::io::read(input, &mut *buf) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads until `buf` is full or the input ends; how many bytes it read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Bytes sent so far, shown on stderr twice a second when it is a
/// terminal (never on stdout, which carries messages).
struct Progress {
    show: bool,
    bytes: u64,
    last: std::time::Instant,
    shown: bool,
}

impl Progress {
    fn new() -> Self {
        use std::io::IsTerminal;
        Progress {
            show: io::stderr().is_terminal(),
            bytes: 0,
            last: std::time::Instant::now(),
            shown: false,
        }
    }

    fn add(&mut self, n: usize) {
        self.bytes += n as u64;
        if self.show && self.last.elapsed() >= Duration::from_millis(500) {
            self.last = std::time::Instant::now();
            self.shown = true;
            eprint!(
                "\r\x1b[Kshmrt: sent {:.1} MiB",
                self.bytes as f64 / (1 << 20) as f64
            );
        }
    }

    fn done(&self) {
        if self.shown {
            eprint!("\r\x1b[K");
        }
    }
}

/// What a failed write of the guest's messages is called.
const OUTPUT: &str = "writing standard output";

/// Writes the guest's messages until it has ended and all are read.
/// Everything queued is taken in one pass and written with one `write`
/// when the pass ends or the buffer fills (no syscall per message); a
/// large message goes straight from ring or slot memory to the file
/// descriptor. The guest may rewrite its bytes meanwhile: they are copied
/// or handed to the kernel through the view, never borrowed as a slice.
fn drain(rx: &mut HostReceiver, framing: Framing) -> Result<(), SandboxError> {
    let mut out = Output::new();
    loop {
        while let Some(msg) = rx.try_recv()? {
            out.message(framing, msg.bytes())?;
        }
        // Nothing queued: wait a moment for more before writing (a write
        // per message made a million lines 700,000 syscalls), then show
        // what we have before waiting for as long as it takes.
        let wait = if out.is_empty() {
            None
        } else {
            Some(OUTPUT_LINGER)
        };
        match rx.recv_timeout(wait) {
            Ok(Some(msg)) => out.message(framing, msg.bytes())?,
            Ok(None) => out.flush()?,
            Err(SandboxError::Closed { .. }) => break,
            Err(e) => return Err(e),
        }
    }
    out.flush()
}

/// How long output waits for more before it is written, when the guest
/// has nothing queued: short enough for a person at a terminal.
const OUTPUT_LINGER: Duration = Duration::from_millis(1);

/// Standard output, written with `write(2)` on file descriptor 1: small
/// messages are gathered in a buffer, large ones go straight from shared
/// memory to the kernel.
struct Output {
    buf: Vec<u8>,
}

impl Output {
    /// Flushed at this size; messages this large skip the buffer.
    const BUF: usize = 1 << 16;

    fn new() -> Self {
        Output {
            buf: Vec::with_capacity(Self::BUF),
        }
    }

    fn err(source: io::Error) -> SandboxError {
        SandboxError::Io {
            what: OUTPUT,
            source,
        }
    }

    /// One guest message, framed for stdout.
    fn message(
        &mut self,
        framing: Framing,
        bytes: shmrt::SharedBytes<'_>,
    ) -> Result<(), SandboxError> {
        match framing {
            Framing::Lines => {
                self.put(bytes)?;
                self.extend(b"\n")
            }
            Framing::Raw => self.put(bytes),
            Framing::Len32 => {
                self.extend(&(bytes.len() as u32).to_le_bytes())?;
                self.put(bytes)
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn extend(&mut self, bytes: &[u8]) -> Result<(), SandboxError> {
        if self.buf.len() + bytes.len() > Self::BUF {
            self.flush()?;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Appends shared bytes: copied once into the buffer, or, when large,
    /// written from where they are.
    fn put(&mut self, bytes: shmrt::SharedBytes<'_>) -> Result<(), SandboxError> {
        let len = bytes.len();
        if len >= Self::BUF / 4 {
            self.flush()?;
            // SAFETY: `bytes` is readable for its length while borrowed;
            // write(2) reads it in the kernel, and no Rust reference is
            // made over memory the guest may write.
            return unsafe { write_all_raw(bytes.as_ptr(), len) }.map_err(Self::err);
        }
        if self.buf.len() + len > Self::BUF {
            self.flush()?;
        }
        let start = self.buf.len();
        self.buf.resize(start + len, 0);
        bytes.copy_to(&mut self.buf[start..]);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SandboxError> {
        if !self.buf.is_empty() {
            // SAFETY: our own buffer, initialized for its length.
            unsafe { write_all_raw(self.buf.as_ptr(), self.buf.len()) }.map_err(Self::err)?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Writes `len` bytes at `ptr` to standard output, all of them.
///
/// # Safety
///
/// `ptr..ptr + len` is readable for the duration of the call.
unsafe fn write_all_raw(mut ptr: *const u8, mut len: usize) -> io::Result<()> {
    while len > 0 {
        // SAFETY: the caller's promise; the kernel reads the bytes.
        let n = unsafe { libc::write(libc::STDOUT_FILENO, ptr.cast(), len) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        // SAFETY: `n <= len` bytes were written, so still inside the range.
        ptr = unsafe { ptr.add(n as usize) };
        len -= n as usize;
    }
    Ok(())
}

/// `--chunk` must fit one message of the segment: said before the guest
/// starts, not at the first message.
fn check_chunk(chunk: u64, segment: &SegmentConfig) -> anyhow::Result<()> {
    if chunk == 0 {
        anyhow::bail!("--chunk 0: a raw message needs at least 1 byte");
    }
    // A configuration the layout refuses is reported when the sandbox starts.
    let Ok(layout) = SegmentLayout::compute(segment) else {
        return Ok(());
    };
    let largest = layout.max_slot_payload().max(layout.max_inline_payload());
    if chunk > u64::from(largest) {
        anyhow::bail!(
            "--chunk {chunk} is larger than the largest message the segment carries ({largest} bytes): \
             lower --chunk, or give --slot-classes a class of at least {chunk} bytes"
        );
    }
    Ok(())
}

/// `4096`, `64KiB`, `1MiB`, `2GiB` (also K, M, G, KB, MB, GB as binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 4096, 64KiB, 1MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{s}` (use KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// An `--exec` mode.
fn parse_execution(s: &str) -> Result<Execution, String> {
    s.parse()
}

/// A `--timeout`: a duration of more than 0.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(
            "a timeout of 0 would end the guest before it starts; give more, e.g. 500ms".into(),
        );
    }
    Ok(d)
}

/// Removes a named segment file this shmrt made, if it is still there
/// (never another run's file of that name).
fn remove_segment_file(path: &std::path::Path) {
    if let Err(e) = shmrt::remove_if_created_here(path) {
        tracing::warn!("could not remove segment file {}: {e}", path.display());
    }
}

/// Ends the process by SIGPIPE, as a writer to a closed pipe does by
/// default (a shell reports status 141); Rust ignores SIGPIPE, so it is
/// restored and raised here once everything is cleaned up.
fn die_of_sigpipe() -> ! {
    // SAFETY: plain libc calls; restoring the default action and raising
    // the signal ends the process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(128 + libc::SIGPIPE)
}

/// SIGINT, SIGTERM and SIGHUP during a run: the guest is stopped (it
/// drains nothing more), a named segment is removed unless kept, and shmrt
/// exits with 128 + the signal's number, as a shell reports a process the
/// signal ended (130, 143, 129). A second signal, or a run that has not
/// ended 3 s after the first, exits at once after removing the segment.
struct Interrupts {
    shared: Arc<InterruptState>,
}

#[derive(Default)]
struct InterruptState {
    /// The signal received first; 0 for none.
    signal: std::sync::atomic::AtomicI32,
    /// The sandbox running now.
    current: Mutex<Option<shmrt::StopHandle>>,
}

impl Interrupts {
    fn install(
        named_segment: Option<PathBuf>,
        segment_made: Arc<std::sync::atomic::AtomicBool>,
    ) -> anyhow::Result<Self> {
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
                state
                    .signal
                    .store(first, std::sync::atomic::Ordering::Release);
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
                if let Some(path) = &named_segment
                    && segment_made.load(std::sync::atomic::Ordering::Acquire)
                {
                    remove_segment_file(path);
                }
                std::process::exit(128 + last);
            })
            .context("starting the signal thread")?;
        Ok(Interrupts { shared })
    }

    /// Makes `stop` the sandbox a signal stops; stops it now if a signal
    /// came already.
    fn watch(&self, stop: shmrt::StopHandle) {
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
    fn exit_code(&self) -> Option<ExitCode> {
        match self
            .shared
            .signal
            .load(std::sync::atomic::Ordering::Acquire)
        {
            0 => None,
            sig => Some(ExitCode::from((128 + sig).clamp(0, 255) as u8)),
        }
    }
}

/// `500ms`, `2s`, `1m`, `250us`, `10ns`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 500ms, 2s, 1m)"))?;
    let secs = match unit {
        "ns" => n / 1e9,
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" | "" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{s}` (use ms, s, m)"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{s}` is not a valid duration"))
}

/// `PAYLOAD:COUNT,...`, e.g. `4KiB:64,64KiB:16,1MiB:4`.
pub fn parse_classes(s: &str) -> Result<SizeClasses, String> {
    use shmrt::primitives::layout::{SLOT_ALIGN, nearest_slot_sizes};
    let mut classes = Vec::new();
    for part in s.split(',') {
        let (size, count) = part.split_once(':').ok_or_else(|| {
            format!("`{part}` in --slot-classes: expected PAYLOAD:COUNT, e.g. 64KiB:16")
        })?;
        let payload = parse_size(size)?;
        let slot_size = u32::try_from(payload + SLOT_LEN_PREFIX as u64)
            .map_err(|_| format!("slot payload `{size}` is too large (at most 4 GiB - 5 bytes)"))?;
        if !slot_size.is_multiple_of(SLOT_ALIGN) {
            // The prefix is 4 bytes, so the valid payloads are the
            // multiples of 4 too: name the nearest ones.
            let (below, above) = nearest_slot_sizes(slot_size);
            let valid: Vec<String> = [below, above]
                .into_iter()
                .flatten()
                .map(|s| (s - SLOT_LEN_PREFIX).to_string())
                .collect();
            return Err(format!(
                "--slot-classes: slot payload `{}` ({payload} bytes) is not a multiple of {SLOT_ALIGN}: \
                 each slot starts with a 4-byte length that must stay aligned; use {}",
                size.trim(),
                valid.join(" or ")
            ));
        }
        let slot_count: u32 = count
            .trim()
            .parse()
            .map_err(|_| format!("`{count}` is not a slot count"))?;
        classes.push(SizeClass {
            slot_size,
            slot_count,
        });
    }
    SizeClasses::new(&classes).map_err(|e| e.to_string())
}
