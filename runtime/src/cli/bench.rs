//! `shmrt bench [--json] [--quick]`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Args;
use shmrt::bench::{self, BenchPlan};

use super::Failure;

/// examples/bench-guest, built for wasm32 with the guest flags by build.rs
/// when this binary was: `shmrt bench` needs no source tree and no cargo.
const BENCH_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/shmrt_bench_guest.wasm"));

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
        let report = bench::run(BENCH_GUEST, plan, |name| {
            if show {
                eprint!("\r\x1b[Kshmrt bench: {name}");
            }
        })?;
        if show {
            eprint!("\r\x1b[K");
        }
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report.json()).expect("JSON values serialize")
            );
        } else {
            print!("{}", report.table());
        }
        Ok(ExitCode::SUCCESS)
    }
}
