//! The `shmrt run` bridge against `cat` on the same file, output to
//! /dev/null, process start included: `cli_lines` (lines framing) and
//! `cli_raw` (`--framing raw --chunk 1MiB`), with the bench guest as the
//! echo plugin (any first message but a mode name makes it echo, in
//! place). Each side runs in alternating phases; the ratio is the median
//! of shmrt's times over the median of cat's.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context;

use super::BENCH_GUEST;
use super::measure::median;
use super::report::Workload;

/// The bridge's workloads, its ratios (keyed as in the report's ratios)
/// and what the reader needs to know of its inputs.
pub(super) struct CliWorkloads {
    pub(super) workloads: Vec<Workload>,
    pub(super) ratios: Vec<(&'static str, f64)>,
    pub(super) notes: Vec<String>,
}

/// One framing measured against `cat`: the two workloads' names, the
/// ratio's key and the input both read.
struct Bridge<'a> {
    name: &'static str,
    cat_name: &'static str,
    key: &'static str,
    raw: bool,
    input: &'a Path,
}

/// Measures both framings against `cat`; `progress` hears each pair's
/// names.
pub(super) fn cli_workloads(
    quick: bool,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<CliWorkloads> {
    let (lines, raw_bytes, phases) = if quick {
        (1_000_000u64, 64u64 << 20, 3)
    } else {
        (10_000_000u64, 1u64 << 30, 5)
    };
    let dir = std::env::temp_dir().join(format!("shmrt-bench-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let cleanup = Cleanup(dir.clone());
    let plugin = dir.join("bench-guest.wasm");
    std::fs::write(&plugin, BENCH_GUEST)?;
    let lines_file = dir.join("lines.txt");
    write_lines(&lines_file, lines)?;
    let raw_file = dir.join("raw.bin");
    write_raw(&raw_file, raw_bytes)?;
    let shmrt = std::env::current_exe().context("finding the shmrt binary")?;
    let cat = find_cat()?;
    let shmrt_run = |raw: bool| {
        let mut c = Command::new(&shmrt);
        c.arg("-q").arg("run");
        if raw {
            c.args(["--framing", "raw", "--chunk", "1MiB"]);
        }
        c.arg(&plugin);
        c
    };
    // The echo is checked once per framing (every byte back), which also
    // compiles the plugin into the cache, as any second run finds it.
    for (raw, input) in [(false, &lines_file), (true, &raw_file)] {
        check_echo(&mut shmrt_run(raw), input)?;
    }
    let mut workloads = Vec::new();
    let mut ratios = Vec::new();
    for bridge in [
        Bridge {
            name: "cli_lines",
            cat_name: "cat_lines",
            key: "cli_lines_vs_cat",
            raw: false,
            input: &lines_file,
        },
        Bridge {
            name: "cli_raw",
            cat_name: "cat_raw",
            key: "cli_raw_vs_cat",
            raw: true,
            input: &raw_file,
        },
    ] {
        progress(&format!("{}, {}", bridge.name, bridge.cat_name));
        let (mut ours, mut cats) = (Vec::new(), Vec::new());
        for _ in 0..phases {
            cats.push(time(Command::new(&cat).arg(bridge.input), bridge.input)?);
            ours.push(time(&mut shmrt_run(bridge.raw), bridge.input)?);
        }
        let (ours, cats) = (median(&ours), median(&cats));
        for (name, median) in [(bridge.name, ours), (bridge.cat_name, cats)] {
            workloads.push(Workload {
                name,
                unit: "ms",
                median,
                p99: None,
            });
        }
        ratios.push((bridge.key, ours / cats));
    }
    let lines_mb = std::fs::metadata(&lines_file).map_or(0, |m| m.len()) as f64 / 1e6;
    drop(cleanup);
    let notes = vec![format!(
        "cli_lines: {lines} lines ({lines_mb:.1} MB), cli_raw: {} MiB{}",
        raw_bytes >> 20,
        if quick {
            " (--quick; the full run: 10,000,000 lines and 1 GiB)"
        } else {
            ""
        }
    )];
    Ok(CliWorkloads {
        workloads,
        ratios,
        notes,
    })
}

/// The lines input: the numbers 1 to `lines`, one a line.
fn write_lines(path: &Path, lines: u64) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    for i in 1..=lines {
        writeln!(out, "{i}")?;
    }
    out.flush()?;
    Ok(())
}

/// The raw input: `bytes` (whole MiB) of xorshift noise.
fn write_raw(path: &Path, bytes: u64) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..bytes >> 20 {
        for w in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        out.write_all(&block)?;
    }
    out.flush()?;
    Ok(())
}

/// `cat` from PATH, else where systems keep it.
fn find_cat() -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/bin".into(), "/bin".into()])
        .map(|d| d.join("cat"))
        .find(|c| c.is_file())
        .context(
            "cat is not on PATH, nor in /usr/bin or /bin: the cli workloads measure against it",
        )
}

/// Runs `shmrt run` once on `input` and checks that every byte came back.
fn check_echo(shmrt_run: &mut Command, input: &Path) -> anyhow::Result<()> {
    let out = shmrt_run
        .stdin(std::fs::File::open(input)?)
        .stderr(Stdio::inherit())
        .output()?;
    anyhow::ensure!(
        out.status.success() && out.stdout.len() as u64 == std::fs::metadata(input)?.len(),
        "the echo through shmrt run did not give every byte back ({} of {})",
        out.stdout.len(),
        std::fs::metadata(input)?.len()
    );
    Ok(())
}

/// One timed run of a command with `input` on stdin, output discarded: ms.
fn time(cmd: &mut Command, input: &Path) -> anyhow::Result<f64> {
    let stdin = std::fs::File::open(input)?;
    let start = Instant::now();
    let status = cmd
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()?;
    let elapsed = start.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(elapsed)
}

/// Removes the benchmark's files however it ends.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
