//! `shmrt bench [--json] [--quick]`.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use shmrt::bench::{self, BenchPlan};

use super::Failure;

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
        let guest_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bench-guest");
        let wasm_path = super::build::build(&guest_dir, None, true)
            .with_context(|| format!("building the bench guest in {}", guest_dir.display()))?;
        let wasm = std::fs::read(&wasm_path)
            .with_context(|| format!("reading {}", wasm_path.display()))?;
        let plan = if self.quick {
            BenchPlan::quick()
        } else {
            BenchPlan::full()
        };
        let show =
            std::io::stderr().is_terminal() || std::env::var_os("SHMRT_BENCH_PROGRESS").is_some();
        let report = bench::run(&wasm, plan, |name| {
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
