//! The `shmrt` command line (see the library, `shmrt_cli::main`).

use std::process::ExitCode;

fn main() -> ExitCode {
    shmrt_cli::main(std::env::args_os())
}
