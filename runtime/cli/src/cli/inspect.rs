//! `shmrt inspect PATH [--json]`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::Failure;
use super::exit_codes::{BAD_SEGMENT, INCONSISTENT, UNREADABLE};

#[derive(Args)]
pub struct InspectCommand {
    /// The segment file.
    path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

impl InspectCommand {
    pub fn execute(self) -> Result<ExitCode, Failure> {
        let report = shmrt::inspect::inspect(&self.path)
            .with_context(|| format!("cannot read segment {}", self.path.display()))
            .map_err(|error| Failure {
                error,
                code: UNREADABLE,
            })?;
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("the report serializes")
            );
        } else {
            print!("{}", shmrt::inspect::render_text(&report));
        }
        Ok(if report.header_invalid() {
            ExitCode::from(BAD_SEGMENT)
        } else if !report.problems().is_empty() {
            ExitCode::from(INCONSISTENT)
        } else {
            ExitCode::SUCCESS
        })
    }
}
