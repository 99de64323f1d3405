//! The `shmrt` command line.

mod bench;
mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_tracing(&args);
    match args.command.execute() {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("shmrt: {:#}", failure.error);
            ExitCode::from(failure.code)
        }
    }
}
