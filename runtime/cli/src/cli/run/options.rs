//! `shmrt run`'s flags ([`RunCommand`]), their parsers, and the sandbox
//! options, runtime and restart policy they make.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use shmrt::primitives::layout::{SLOT_LEN_PREFIX, SizeClass, SizeClasses};
use shmrt::{Execution, RestartPolicy, Runtime, RuntimeConfig, SandboxOptions, SegmentSource};

use super::framing::Framing;
use crate::cli::Failure;

/// Restart policy of `shmrt run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum Restart {
    Never,
    OnFailure,
}

/// `shmrt run`'s flags.
#[derive(Args)]
pub struct RunCommand {
    /// The plugin (.wasm).
    pub(super) plugin: PathBuf,
    /// How stdin and stdout are cut into messages.
    #[arg(long, value_enum, default_value = "lines")]
    pub(super) framing: Framing,
    /// Message size for `--framing raw` (e.g. 4096, 64KiB, 1MiB; default
    /// 64KiB).
    #[arg(long, value_parser = parse_size)]
    pub(super) chunk: Option<u64>,
    /// Wall-clock limit for the guest (e.g. 500ms, 2s, 1m; more than 0).
    #[arg(long, value_parser = parse_timeout)]
    pub(super) timeout: Option<Duration>,
    /// How long guest code may hold shmrt's thread at once (a callback's
    /// call, which the SDK ends after 20 ms of a batch, so in effect one
    /// message's handling; a start function): e.g. 5s; default 1s. Past
    /// it the guest fails (70).
    #[arg(long, value_parser = parse_timeout, value_name = "DURATION")]
    pub(super) callback_slice: Option<Duration>,
    /// Fuel (roughly, wasm instructions) the guest may use, at least 1;
    /// out of fuel ends the run with status 71.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(super) fuel: Option<u64>,
    /// What the guest may make the host allocate (e.g. 64MiB): one budget
    /// across all of its linear memories and tables (8 bytes a table
    /// element; the segment window not counted). A refused memory.grow or
    /// table.grow returns -1; a module that declares more is refused.
    #[arg(long, value_parser = parse_size)]
    pub(super) max_memory: Option<u64>,
    /// Rounds the host spins on an empty or full ring before it parks on
    /// the futex doorbell (0 parks at once: least CPU, a wake-up per
    /// message when traffic is sparse; more: lower latency, a busy core).
    #[arg(long, default_value_t = shmrt::SpinBudget::default().0)]
    pub(super) spin: u32,
    /// Data bytes of each ring, per direction.
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    pub(super) ring_capacity: u64,
    /// Messages of up to THRESHOLD - 8 bytes go inline in the ring (0 = 256).
    #[arg(long, default_value_t = 0)]
    pub(super) inline_threshold: u32,
    /// Slot classes as PAYLOAD:COUNT pairs, smallest first
    /// (default 4KiB:64,64KiB:16,1MiB:4). Each slot also holds a 4-byte length.
    #[arg(long, value_parser = parse_classes)]
    pub(super) slot_classes: Option<SizeClasses>,
    /// Give the guest a host directory: HOST or HOST::GUEST (WASI guests).
    #[arg(long = "dir")]
    pub(super) dirs: Vec<String>,
    /// An environment variable for the guest: KEY=VALUE (WASI guests).
    #[arg(long = "env")]
    pub(super) env: Vec<String>,
    /// Run the plugin as a guest of this existing segment file, made by
    /// another program that is the host (shmrt, shm-primitives / vox-shm,
    /// or any writer of the format). stdin and stdout are not used.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["segment", "framing", "chunk"])]
    pub(super) attach: Option<PathBuf>,
    /// With --attach: the guest's peer id (claims that Reserved entry);
    /// default: the first Empty entry.
    #[arg(long, requires = "attach")]
    pub(super) peer: Option<u32>,
    /// Create the sandbox's segment as this named file (exclusively, mode
    /// 0600) so that other processes and `shmrt inspect` can see it.
    #[arg(long, value_name = "PATH")]
    pub(super) segment: Option<PathBuf>,
    /// With --segment: leave the file in place on exit.
    #[arg(long, requires = "segment")]
    pub(super) keep_segment: bool,
    /// With --segment: replace a stale segment at PATH, one left by a shmrt
    /// that is gone (`shmrt inspect` says so); a live one is never replaced.
    #[arg(long, requires = "segment")]
    pub(super) replace_stale: bool,
    /// Start the plugin again on a fresh segment when its sandbox fails
    /// (trap, timeout, fuel, memory limit, protocol violation). Messages in
    /// flight to the failed sandbox are lost; the rest of stdin goes to the
    /// new one.
    #[arg(long, value_enum, default_value = "never")]
    pub(super) restart: Restart,
    /// With --restart on-failure: at most this many restarts.
    #[arg(long, default_value_t = 3)]
    pub(super) max_restarts: u32,
    /// Where the guest runs: `thread` (a thread of its own: shmrt and the
    /// guest work at once, on two cores), `fiber` (on shmrt's threads,
    /// resumed when a message is there) or `callback` (plugins made with
    /// `shmrt_guest::handler!`, called with the messages queued) or `auto`.
    /// An --attach guest always runs on a thread. Default: $SHMRT_EXEC if
    /// set, else `auto`: `callback` for a plugin that exports one, else
    /// `thread`.
    #[arg(long = "exec", value_name = "MODE", value_parser = parse_execution)]
    pub(super) execution: Option<Execution>,
    /// Call the plugin's exported function NAME once per input message
    /// (plugins made with `shmrt_guest::exports!` or `plugin!`): each
    /// call's output is written with the same framing; a call's error is
    /// reported on stderr and the run goes on (exit status 5 at the end).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["attach", "segment"])]
    pub(super) call: Option<String>,
    /// Configuration for the plugin, KEY=VALUE (repeatable); it reads it
    /// with `shmrt_guest::config::get`. Given after --config-file, it wins.
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub(super) config: Vec<String>,
    /// Configuration from a file: one KEY=VALUE a line; blank lines and
    /// lines starting with `#` are skipped.
    #[arg(long, value_name = "PATH")]
    pub(super) config_file: Option<PathBuf>,
    /// Compile the plugin afresh and keep nothing: by default compiled
    /// modules are kept in $XDG_CACHE_HOME/shmrt (or ~/.cache/shmrt),
    /// keyed by the module's bytes and the engine's settings, so that a
    /// plugin run again starts without compiling.
    #[arg(long)]
    pub(super) no_cache: bool,
    /// Keep compiled modules in DIR (its `modules/` directory) instead of
    /// the user's cache directory; it must be this user's own.
    #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
    pub(super) cache_dir: Option<PathBuf>,
    /// Arguments for the guest (WASI guests), after `--`.
    #[arg(last = true)]
    pub(super) args: Vec<String>,
}

impl RunCommand {
    /// `$SHMRT_EXEC` as the `--exec` mode when none was given; an
    /// attached guest runs on a thread whatever the environment.
    pub(super) fn take_exec_from_env(&mut self) -> Result<(), Failure> {
        if self.execution.is_none()
            && let Some(mode) = std::env::var_os("SHMRT_EXEC").filter(|m| !m.is_empty())
        {
            let mode = mode.to_string_lossy();
            let parsed = parse_execution(&mode)
                .map_err(|e| Failure::usage(anyhow::anyhow!("SHMRT_EXEC={mode}: {e}")))?;
            if self.attach.is_none() {
                self.execution = Some(parsed);
            }
        }
        Ok(())
    }

    /// The `--exec` mode, refused with `--attach` unless a thread.
    fn execution(&self) -> Result<Execution, Failure> {
        match (self.execution, &self.attach) {
            (Some(mode), Some(_)) if !matches!(mode, Execution::Thread | Execution::Auto) => {
                Err(Failure::usage(anyhow::anyhow!(
                    "--exec {} can not be used with --attach: an attached guest's host is another \
                     process, so the guest runs on a thread of its own (--exec thread)",
                    mode.name()
                )))
            }
            (Some(mode), _) => Ok(mode),
            (None, _) => Ok(Execution::Auto),
        }
    }

    /// The options each sandbox of the run is spawned with.
    pub(super) fn sandbox_options(&self) -> Result<SandboxOptions, Failure> {
        let mut options = SandboxOptions {
            name: self.plugin.display().to_string(),
            timeout: self.timeout,
            callback_slice: Some(self.callback_slice.unwrap_or(shmrt::DEFAULT_CALLBACK_SLICE)),
            execution: self.execution()?,
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
        if let Some(path) = &self.segment {
            options.segment_source = SegmentSource::Named {
                path: path.clone(),
                keep: self.keep_segment,
                replace_stale: self.replace_stale,
            };
        }
        options.config = std::sync::Arc::new(self.config()?);
        options.fuel = self.fuel;
        options.max_memory = self
            .max_memory
            .map(|m| usize::try_from(m).unwrap_or(usize::MAX));
        Ok(options)
    }

    /// The plugin's configuration: --config-file's lines, then --config.
    fn config(&self) -> Result<std::collections::BTreeMap<String, String>, Failure> {
        let mut config = std::collections::BTreeMap::new();
        if let Some(path) = &self.config_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--config-file {}: cannot read it", path.display()))
                .map_err(Failure::usage)?;
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (k, v) = line.split_once('=').ok_or_else(|| {
                    Failure::usage(anyhow::anyhow!(
                        "--config-file {} line {}: expected KEY=VALUE",
                        path.display(),
                        i + 1
                    ))
                })?;
                config.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        for c in &self.config {
            let (k, v) = c.split_once('=').ok_or_else(|| {
                Failure::usage(anyhow::anyhow!("--config {c}: expected KEY=VALUE"))
            })?;
            config.insert(k.to_string(), v.to_string());
        }
        let key = shmrt::primitives::call_header::PACKED_LINES_CONFIG_KEY;
        if config.contains_key(key) {
            return Err(Failure::usage(anyhow::anyhow!(
                "the configuration key `{key}` is shmrt run's own (it tells a plugin that lines \
                 come packed): give your key another name"
            )));
        }
        Ok(config)
    }

    /// The runtime: fuel metering when `--fuel` is given, the module
    /// cache unless `--no-cache`.
    pub(super) fn runtime(&self) -> Result<Runtime, Failure> {
        Ok(Runtime::with_config(RuntimeConfig {
            fuel: self.fuel.is_some(),
            module_cache: if self.no_cache {
                None
            } else {
                self.cache_dir
                    .clone()
                    .or_else(RuntimeConfig::default_module_cache)
            },
        })?)
    }

    /// `--restart` and `--max-restarts`.
    pub(super) fn restart_policy(&self) -> RestartPolicy {
        match self.restart {
            Restart::Never => RestartPolicy::Never,
            Restart::OnFailure => RestartPolicy::OnFailure {
                max_restarts: self.max_restarts,
            },
        }
    }
}

/// `4096`, `64KiB`, `1MiB`, `2GiB` (also K, M, G, KB, MB, GB as binary units).
fn parse_size(s: &str) -> Result<u64, String> {
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

/// `500ms`, `2s`, `1m`, `250us`, `10ns`.
fn parse_duration(s: &str) -> Result<Duration, String> {
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

/// A `--timeout` or `--callback-slice`: a duration of more than 0.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(
            "a timeout of 0 would end the guest before it starts; give more, e.g. 500ms".into(),
        );
    }
    Ok(d)
}

/// An `--exec` mode.
fn parse_execution(s: &str) -> Result<Execution, String> {
    s.parse()
}

/// `PAYLOAD:COUNT,...`, e.g. `4KiB:64,64KiB:16,1MiB:4`.
fn parse_classes(s: &str) -> Result<SizeClasses, String> {
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
