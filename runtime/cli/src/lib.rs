//! The `shmrt` command line as a library: [`main`] runs it on the given
//! arguments. The `shmrt` binary is a call of it; the containerd shim
//! (`containerd-shim-shmrt-v1`, in `shim/`) calls it too, with the
//! `shmrt run` command line it makes of a container's spec, so that a
//! container runs a plugin exactly as `shmrt run` does (framing, modes,
//! restarts, signals, exit statuses).

mod cli;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

/// The status `code` stands for (each the CLI returns is made of a `u8`).
pub fn exit_status(code: ExitCode) -> u8 {
    (0..=u8::MAX)
        .find(|&n| ExitCode::from(n) == code)
        .unwrap_or(1)
}

/// Runs the command line `args` (the first is the program's name, as in
/// `std::env::args_os()`) and returns the status to exit with. A command
/// line clap refuses prints its message and exits the process (status 2),
/// as `--help` and `--version` exit with 0.
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = cli::Cli::parse_from(args);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_round_trip() {
        for n in 0..=u8::MAX {
            assert_eq!(exit_status(ExitCode::from(n)), n);
        }
        assert_eq!(exit_status(ExitCode::SUCCESS), 0);
        assert_eq!(exit_status(ExitCode::FAILURE), 1);
    }
}
