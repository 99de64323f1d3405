//! `shmrt bench [--json] [--quick]`: a ladder of workloads measured in one
//! process and one run, so that their ratios are comparable on a noisy
//! machine, then the `shmrt run` bridge against `cat`.
//!
//! Latencies are measured in batches of round trips (the clock read costs
//! about as much as a cache-line transfer), and reported per round trip:
//! the median and the 99th percentile over the batches.
//!
//! Each ratio compares a pair of workloads run in alternating phases, both
//! sides alive throughout, and is the median over phases of the ratio
//! within each phase: on shared hardware the speed between two cores
//! drifts within milliseconds, and both sides of a pair see the same
//! drift. The bench's thread stays on one CPU and every peer starts on
//! another (see [`cpus`]).
//!
//! - [`workloads`]: the in-process ladder, one file per family of
//!   workloads;
//! - [`bridge`]: `shmrt run` against `cat`, each a process of its own;
//! - [`measure`]: batches, phases and the one median;
//! - [`report`]: the workloads, the ratios and their targets, as a table or
//!   as JSON.

mod bridge;
mod cpus;
mod measure;
mod report;
mod workloads;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Args;

use super::Failure;

/// examples/bench-guest, built for wasm32 with the guest flags by build.rs
/// when this binary was: `shmrt bench` needs no source tree and no cargo.
const BENCH_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/shmrt_bench_guest.wasm"));

#[derive(Args)]
pub struct BenchCommand {
    /// Print JSON (`{"machine", "workloads", "ratios", "targets", "notes"}`)
    /// instead of a table.
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
        let mut report = workloads::run(BENCH_GUEST, plan, progress)?;
        let cli = bridge::cli_workloads(self.quick, progress).map_err(Failure::other)?;
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

/// How long to measure.
#[derive(Clone, Copy, Debug)]
struct BenchPlan {
    /// Latency batches per workload.
    batches: usize,
    /// Round trips per batch.
    batch: usize,
    /// Messages per stream.
    stream: usize,
    /// Payload hand-offs per size.
    payloads: usize,
    /// Alternating phases of the native and the guest side of a pair of
    /// workloads (see the module doc).
    phases: usize,
    /// Sandboxes kept alive at once by the density workloads.
    sandboxes: usize,
}

impl BenchPlan {
    /// Well under a minute on a small machine.
    fn quick() -> Self {
        BenchPlan {
            batches: 300,
            batch: 20,
            stream: 300_000,
            payloads: 60,
            phases: 30,
            sandboxes: 1000,
        }
    }

    /// The full run.
    fn full() -> Self {
        BenchPlan {
            batches: 2000,
            batch: 50,
            stream: 3_000_000,
            payloads: 400,
            phases: 120,
            sandboxes: 10_000,
        }
    }
}
