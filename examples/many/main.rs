//! One host thread serving many sandboxes of one plugin through the async
//! API: the plugin is prepared once, N sandboxes are spawned from it (as
//! fibers or callbacks on this thread, none with a thread of its own), and
//! a tokio current-thread runtime drives them all, one task per sandbox.
//! It prints what a sandbox costs (spawn time, RSS, memory mappings, file
//! descriptors), a histogram of request round trips, and the exit status
//! of every sandbox after its goodbye.
//!
//! Run (with the echo plugin, which answers every message with itself):
//!
//! ```sh
//! cargo build --release --locked -p shmrt-cli -p shmrt --bin shmrt --examples
//! target/release/examples/many $(target/release/shmrt build examples/echo) --count 10000
//! ```
//!
//! Options: `--count N` sandboxes (default 1000), `--rounds R` requests
//! to each (default 10), `--exec fiber|callback` (default callback).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shmrt::{Execution, Runtime, Sandbox, SandboxError, SandboxOptions};

const USAGE: &str = "usage: many PLUGIN.wasm [--count N] [--rounds R] [--exec fiber|callback]
  PLUGIN.wasm  a plugin that answers every message with itself, e.g. the path
               that `shmrt build examples/echo` prints
  --count N    sandboxes to spawn (default 1000)
  --rounds R   requests to each sandbox, one at a time (default 10)
  --exec MODE  fiber or callback: where each guest runs on this thread
               (default callback)";

/// The bytes of one request: inline in the ring, as small requests are.
const REQUEST_LEN: usize = 64;
/// Bounds that keep a typo from asking for terabytes of bookkeeping.
const MAX_COUNT: usize = 1_000_000;
const MAX_REQUESTS: usize = 100_000_000;
/// A progress line on stderr every this many spawns.
const PROGRESS_EVERY: usize = 500;

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("many: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("many: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug)]
struct Args {
    plugin: PathBuf,
    count: usize,
    rounds: usize,
    execution: Execution,
}

/// The arguments, `None` for `--help`, or what is wrong with them.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut plugin = None;
    let mut count = 1000;
    let mut rounds = 10;
    let mut execution = Execution::Callback;
    while let Some(arg) = args.next() {
        // `--count=N` and `--count N` alike.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "-h" | "--help" => return Ok(None),
            "--count" => count = whole_number(flag, &value()?, MAX_COUNT)?,
            "--rounds" => rounds = whole_number(flag, &value()?, MAX_REQUESTS)?,
            "--exec" => {
                execution = match value()?.as_str() {
                    "fiber" => Execution::Fiber,
                    "callback" => Execution::Callback,
                    "thread" => {
                        return Err("--exec thread gives every sandbox a thread of its own; \
                             this example serves them all from one: give fiber or callback"
                            .into());
                    }
                    other => {
                        return Err(format!("unknown --exec `{other}`: give fiber or callback"));
                    }
                }
            }
            _ if flag.starts_with('-') => return Err(format!("unknown option `{arg}`")),
            _ if plugin.is_none() => plugin = Some(PathBuf::from(&arg)),
            _ => return Err(format!("unexpected argument `{arg}`: give one plugin")),
        }
    }
    let plugin = plugin.ok_or("give the plugin's .wasm file")?;
    if count.saturating_mul(rounds) > MAX_REQUESTS {
        return Err(format!(
            "--count {count} times --rounds {rounds} is more than {MAX_REQUESTS} requests: give fewer"
        ));
    }
    Ok(Some(Args {
        plugin,
        count,
        rounds,
        execution,
    }))
}

/// `text` as a number in 1..=max, or an error naming `flag`.
fn whole_number(flag: &str, text: &str, max: usize) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{flag} wants a whole number from 1 to {max}, not `{text}`"
        )),
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let wasm = shmrt::read_module_file(&args.plugin).map_err(|e| {
        anyhow::anyhow!(
            "{:#}; give the path of a built plugin: `target/release/shmrt build examples/echo` \
             builds the echo plugin and prints its path",
            anyhow::Error::new(e)
        )
    })?;
    let runtime = Runtime::new().context("setting up the shmrt runtime")?;
    let started = Instant::now();
    let plugin = runtime
        .prepare(&wasm)
        .with_context(|| format!("preparing the plugin {}", args.plugin.display()))?;
    println!(
        "prepared {} once in {:.1} ms; {} sandboxes as {}s on one thread",
        args.plugin.display(),
        ms(started.elapsed()),
        args.count,
        args.execution.name()
    );

    let limits = Limits::now();
    let before = Usage::now();
    let mut sandboxes = Vec::with_capacity(args.count);
    let mut spawn_times = Vec::with_capacity(args.count);
    let spawning = Instant::now();
    for i in 0..args.count {
        let options = SandboxOptions {
            name: format!("many-{i}"),
            execution: args.execution,
            ..SandboxOptions::default()
        };
        let started = Instant::now();
        let sandbox = runtime.spawn_plugin(&plugin, options);
        let took = started.elapsed();
        match sandbox {
            Ok(sandbox) => sandboxes.push(sandbox),
            Err(e) => {
                eprintln!();
                return Err(spawn_failed(e, i, args.count, &args.plugin, &limits));
            }
        }
        spawn_times.push(took);
        if (i + 1) % PROGRESS_EVERY == 0 || i + 1 == args.count {
            eprint!("\rspawned {}/{}", i + 1, args.count);
        }
    }
    let spawn_total = spawning.elapsed();
    eprintln!();
    let after = Usage::now();
    spawn_times.sort_unstable();
    println!(
        "spawn: {} sandboxes in {:.2} s, {:.1} us per sandbox (p50 {:.1}, p99 {:.1}, max {:.1} us)",
        args.count,
        spawn_total.as_secs_f64(),
        us(spawn_total) / args.count as f64,
        us(percentile(&spawn_times, 50.0)),
        us(percentile(&spawn_times, 99.0)),
        us(percentile(&spawn_times, 100.0)),
    );
    after.print_against(&before, args.count, "after spawning");

    let tokio = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("starting the tokio runtime")?;

    let serving = Instant::now();
    let (sandboxes, mut latencies) = tokio.block_on(serve_all(sandboxes, args.rounds))?;
    let serve_total = serving.elapsed();
    latencies.sort_unstable();
    println!(
        "rounds: {} x {} requests of {REQUEST_LEN} bytes in {:.2} s on one thread ({:.0} round trips/s)",
        args.rounds,
        args.count,
        serve_total.as_secs_f64(),
        latencies.len() as f64 / serve_total.as_secs_f64()
    );
    print_histogram(&latencies);

    let ending = Instant::now();
    let statuses = tokio.block_on(goodbye_all(sandboxes))?;
    let failed: Vec<_> = statuses
        .iter()
        .enumerate()
        .filter(|(_, status)| !matches!(status, Ok(0)))
        .collect();
    if let Some((i, status)) = failed.first() {
        let why = match status {
            Ok(code) => format!("exited {code}"),
            Err(e) => e.to_string(),
        };
        bail!(
            "{} of {} sandboxes did not exit 0; the first, many-{i}: {why}",
            failed.len(),
            args.count
        );
    }
    println!(
        "goodbye: all {} sandboxes exited 0, joined in {:.1} ms",
        args.count,
        ms(ending.elapsed())
    );
    Usage::now().print_against(&before, args.count, "after joining");
    Ok(())
}

/// Runs `rounds` requests through every sandbox, one task per sandbox on
/// this thread, and gives the sandboxes back with every round trip's time.
async fn serve_all(
    sandboxes: Vec<Sandbox>,
    rounds: usize,
) -> anyhow::Result<(Vec<Sandbox>, Vec<Duration>)> {
    let tasks: Vec<_> = sandboxes
        .into_iter()
        .enumerate()
        .map(|(i, sandbox)| tokio::spawn(serve(i, sandbox, rounds)))
        .collect();
    let mut sandboxes = Vec::with_capacity(tasks.len());
    let mut latencies = Vec::with_capacity(tasks.len() * rounds);
    for task in tasks {
        let (sandbox, times) = task.await.context("a sandbox's task panicked")??;
        sandboxes.push(sandbox);
        latencies.extend(times);
    }
    Ok((sandboxes, latencies))
}

/// One sandbox's requests: each sent, answered and checked before the
/// next; between two, the task lets every other one take its turn, so
/// that the sandboxes go through the rounds together.
async fn serve(
    i: usize,
    mut sandbox: Sandbox,
    rounds: usize,
) -> anyhow::Result<(Sandbox, Vec<Duration>)> {
    let mut times = Vec::with_capacity(rounds);
    let mut reply = [0u8; REQUEST_LEN];
    for round in 0..rounds {
        let request = request(i, round);
        let started = Instant::now();
        sandbox
            .sender()
            .send_async(&request)
            .await
            .with_context(|| format!("sending request {round} to many-{i}"))?;
        let same_len = {
            let message = sandbox
                .receiver()
                .recv_async()
                .await
                .with_context(|| format!("receiving reply {round} from many-{i}"))?;
            // Copied out once: the guest may rewrite the bytes it sent.
            let same_len = message.len() == REQUEST_LEN;
            if same_len {
                message.bytes().copy_to(&mut reply);
            }
            same_len
        };
        times.push(started.elapsed());
        if !same_len || reply != request {
            bail!(
                "many-{i} answered request {round} with other bytes: give a plugin that \
                 answers every message with itself, as examples/echo does"
            );
        }
        tokio::task::yield_now().await;
    }
    Ok((sandbox, times))
}

/// Request `round` to sandbox `i`: both numbers, then a filler, so that a
/// reply meant for another request is told apart.
fn request(i: usize, round: usize) -> [u8; REQUEST_LEN] {
    let mut bytes = [b'.'; REQUEST_LEN];
    bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
    bytes[8..16].copy_from_slice(&(round as u64).to_le_bytes());
    bytes
}

/// Says goodbye to every sandbox, one task each, and gives back each
/// one's exit status once it has drained its ring and returned.
async fn goodbye_all(sandboxes: Vec<Sandbox>) -> anyhow::Result<Vec<Result<i32, SandboxError>>> {
    let tasks: Vec<_> = sandboxes
        .into_iter()
        .map(|sandbox| tokio::spawn(goodbye(sandbox)))
        .collect();
    let mut statuses = Vec::with_capacity(tasks.len());
    for task in tasks {
        statuses.push(task.await.context("a sandbox's task panicked")?);
    }
    Ok(statuses)
}

async fn goodbye(mut sandbox: Sandbox) -> Result<i32, SandboxError> {
    sandbox.sender().goodbye();
    let (_tx, mut rx, handle) = sandbox.split();
    // The guest runs (fiber, callback) inside these polls until it has
    // returned; the echo plugin sends nothing more, anything is dropped.
    loop {
        match rx.recv_async().await {
            Ok(_) => continue,
            Err(SandboxError::Closed { .. }) => break,
            Err(e) => return Err(e),
        }
    }
    handle.join()
}

/// A spawn that failed, with the process's counts that usually explain
/// it (memory mappings, file descriptors) next to their limits.
fn spawn_failed(
    e: SandboxError,
    live: usize,
    count: usize,
    plugin: &Path,
    limits: &Limits,
) -> anyhow::Error {
    let now = Usage::now();
    let limit = |value: Option<u64>| value.map_or("unknown".into(), |v| v.to_string());
    let (max_maps, max_fds) = (limit(limits.max_map_count), limit(limits.open_files));
    let held = match (now.maps, now.fds) {
        (Some(maps), Some(fds)) => format!(
            "the process holds {maps} memory mappings (vm.max_map_count {max_maps}) and {fds} \
             open fds (soft limit {max_fds})"
        ),
        _ => format!(
            "/proc could not be read (no file descriptor left?); vm.max_map_count is {max_maps}, \
             the soft limit on open fds {max_fds}"
        ),
    };
    anyhow::Error::new(e).context(format!(
        "spawning sandbox {} of {count} of {} failed with {live} live; {held}: give a smaller \
         --count, or raise the limit that was reached",
        live + 1,
        plugin.display(),
    ))
}

/// The limits a spawn runs into first, read before spawning (a process
/// out of file descriptors can not open /proc to read them).
#[derive(Debug)]
struct Limits {
    max_map_count: Option<u64>,
    open_files: Option<u64>,
}

impl Limits {
    fn now() -> Limits {
        Limits {
            max_map_count: read_number("/proc/sys/vm/max_map_count"),
            open_files: open_files_soft_limit(),
        }
    }
}

/// The process's resident memory, memory mappings and open file
/// descriptors, from /proc (`None` where it cannot be read). `VmRSS`
/// counts a page shared by many mappings once per mapping (the segment
/// template's pages, mapped by every window); the proportional set size
/// (`Pss`) counts it once.
#[derive(Debug)]
struct Usage {
    rss_kib: Option<u64>,
    pss_kib: Option<u64>,
    maps: Option<usize>,
    fds: Option<usize>,
}

impl Usage {
    fn now() -> Usage {
        let status = std::fs::read_to_string("/proc/self/status").ok();
        Usage {
            rss_kib: status.as_deref().and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            }),
            pss_kib: std::fs::read_to_string("/proc/self/smaps_rollup")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("Pss:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                }),
            maps: std::fs::read_to_string("/proc/self/maps")
                .ok()
                .map(|m| m.lines().count()),
            fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|dir| dir.count()),
        }
    }

    /// Prints the counts and what each grew by per sandbox since `before`.
    fn print_against(&self, before: &Usage, count: usize, when: &str) {
        let per = |now: Option<u64>, then: Option<u64>, unit: &str| match (now, then) {
            (Some(now), Some(then)) => format!(
                "{now}{unit} ({:+.1}{unit} per sandbox)",
                (now as f64 - then as f64) / count as f64
            ),
            _ => "unknown".into(),
        };
        let wide = |v: Option<usize>| v.map(|v| v as u64);
        println!(
            "{when}: RSS {}, PSS {}, memory mappings {}, open fds {}",
            per(self.rss_kib, before.rss_kib, " KiB"),
            per(self.pss_kib, before.pss_kib, " KiB"),
            per(wide(self.maps), wide(before.maps), ""),
            per(wide(self.fds), wide(before.fds), ""),
        );
    }
}

fn read_number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The soft limit on open files, from /proc/self/limits.
fn open_files_soft_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// p50, p90, p99 and max, then the count in each power-of-two bucket of
/// microseconds, as bars.
fn print_histogram(sorted: &[Duration]) {
    if sorted.is_empty() {
        return;
    }
    println!(
        "round trip: p50 {:.1} us, p90 {:.1} us, p99 {:.1} us, max {:.1} us",
        us(percentile(sorted, 50.0)),
        us(percentile(sorted, 90.0)),
        us(percentile(sorted, 99.0)),
        us(percentile(sorted, 100.0)),
    );
    // Bucket b holds [2^(b-1), 2^b) us; bucket 0 is under 1 us.
    let bucket = |d: &Duration| {
        let whole_us = d.as_micros().min(u64::MAX as u128) as u64;
        (u64::BITS - whole_us.leading_zeros()) as usize
    };
    let mut counts = vec![0usize; bucket(&sorted[sorted.len() - 1]) + 1];
    for d in sorted {
        counts[bucket(d)] += 1;
    }
    let most = counts.iter().copied().max().unwrap_or(1).max(1);
    for (b, &n) in counts.iter().enumerate() {
        let range = if b == 0 {
            "< 1 us".to_string()
        } else {
            format!("{}-{} us", 1u64 << (b - 1), 1u64 << b)
        };
        let bar = "#".repeat((n * 50).div_ceil(most));
        println!("  {range:>16} {n:>9} {bar}");
    }
}

/// The value below which `pct` percent of `sorted` lie (nearest rank).
fn percentile(sorted: &[Duration], pct: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
