//! The `shmrt` command line.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_tracing(&args);
    match args.command.execute() {
        Ok(code) => code,
        Err(failure) => {
            // Errors quote what a module holds (import names, say): one
            // line of plain text, whatever the module put there.
            eprintln!(
                "shmrt: {}",
                shmrt::escape_line(&format!("{:#}", failure.error))
            );
            ExitCode::from(failure.code)
        }
    }
}
