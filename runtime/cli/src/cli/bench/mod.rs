//! `shmrt bench [--json] [--quick]`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Args;

mod workloads;

use workloads::{self as bench, BenchPlan};

use super::Failure;

/// examples/bench-guest, built for wasm32 with the guest flags by build.rs
/// when this binary was: `shmrt bench` needs no source tree and no cargo.
pub(crate) const BENCH_GUEST: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/shmrt_bench_guest.wasm"));

#[derive(Args)]
pub struct BenchCommand {
    /// Print JSON (`{"machine", "workloads", "ratios", "targets"}`) instead of a table.
    #[arg(long)]
    json: bool,
    /// A short run (well under a minute).
    #[arg(long)]
    quick: bool,
}

impl BenchCommand {
    pub fn execute(self) -> Result<ExitCode, Failure> {
        let plan = if self.quick {
            BenchPlan::quick()
        } else {
            BenchPlan::full()
        };
        let show =
            std::io::stderr().is_terminal() || std::env::var_os("SHMRT_BENCH_PROGRESS").is_some();
        let progress = |name: &str| {
            if show {
                eprint!("\r\x1b[Kshmrt bench: {name}");
            }
        };
        let mut report = bench::run(BENCH_GUEST, plan, progress)?;
        let cli = cli_workloads(self.quick, progress).map_err(Failure::other)?;
        report.workloads.extend(cli.workloads);
        report.paired.extend(cli.ratios);
        report.notes.extend(cli.notes);
        if show {
            eprint!("\r\x1b[K");
        }
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report.json()).expect("the report serializes")
            );
        } else {
            print!("{}", report.table());
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The `shmrt run` bridge against `cat` on the same file, output to
/// /dev/null, process start included: `cli_lines` (lines framing) and
/// `cli_raw` (`--framing raw --chunk 1MiB`), with the bench guest as the
/// echo plugin (any first message but a mode name makes it echo, in
/// place). Each side runs in alternating phases; the ratio is the median
/// of shmrt's times over the median of cat's.
struct CliWorkloads {
    workloads: Vec<bench::Workload>,
    ratios: Vec<(&'static str, f64)>,
    notes: Vec<String>,
}

fn cli_workloads(quick: bool, mut progress: impl FnMut(&str)) -> anyhow::Result<CliWorkloads> {
    use anyhow::Context;
    use std::io::Write;
    use std::process::{Command, Stdio};
    use std::time::Instant;

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
    {
        let mut out =
            std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&lines_file)?);
        for i in 1..=lines {
            writeln!(out, "{i}")?;
        }
        out.flush()?;
    }
    let raw_file = dir.join("raw.bin");
    {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&raw_file)?);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..raw_bytes >> 20 {
            for w in block.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                w.copy_from_slice(&x.to_le_bytes());
            }
            out.write_all(&block)?;
        }
        out.flush()?;
    }
    let shmrt = std::env::current_exe().context("finding the shmrt binary")?;
    // `cat` from PATH, else where systems keep it.
    let cat = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/bin".into(), "/bin".into()])
        .map(|d| d.join("cat"))
        .find(|c| c.is_file())
        .context(
            "cat is not on PATH, nor in /usr/bin or /bin: the cli workloads measure against it",
        )?;
    // One timed run of a command with `input` on stdin, output discarded.
    let time = |cmd: &mut Command, input: &std::path::Path| -> anyhow::Result<f64> {
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
    };
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
        let out = shmrt_run(raw)
            .stdin(std::fs::File::open(input)?)
            .stderr(Stdio::inherit())
            .output()?;
        anyhow::ensure!(
            out.status.success() && out.stdout.len() as u64 == std::fs::metadata(input)?.len(),
            "the echo through shmrt run did not give every byte back ({} of {})",
            out.stdout.len(),
            std::fs::metadata(input)?.len()
        );
    }
    let mut workloads = Vec::new();
    let mut ratios = Vec::new();
    for (name, cat_name, key, raw, input) in [
        (
            "cli_lines",
            "cat_lines",
            "cli_lines_vs_cat",
            false,
            &lines_file,
        ),
        ("cli_raw", "cat_raw", "cli_raw_vs_cat", true, &raw_file),
    ] {
        progress(&format!("{name}, {cat_name}"));
        let (mut ours, mut cats) = (Vec::new(), Vec::new());
        for _ in 0..phases {
            cats.push(time(Command::new(&cat).arg(input), input)?);
            ours.push(time(&mut shmrt_run(raw), input)?);
        }
        let (ours, cats) = (bench::median(&ours), bench::median(&cats));
        workloads.push(bench::Workload {
            name,
            unit: "ms",
            median: ours,
            p99: None,
        });
        workloads.push(bench::Workload {
            name: cat_name,
            unit: "ms",
            median: cats,
            p99: None,
        });
        ratios.push((key, ours / cats));
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

/// Removes the benchmark's files however it ends.
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
