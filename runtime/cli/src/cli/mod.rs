//! One struct per subcommand, each with `execute()`.

mod bench;
mod build;
mod build_native;
mod exit_codes;
mod inspect;
mod new;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use exit_codes::Failure;

/// shmrt: run WebAssembly plugins that share zero-copy rings with their host.
#[derive(Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// More logging on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a plugin crate NAME that builds and runs as it is.
    New(new::NewCommand),
    /// Run a plugin; stdin is cut into messages for it, its messages go to stdout.
    Run(Box<run::RunCommand>),
    /// Build the plugin in DIR (Rust, C, C++ or Zig) for wasm32 and print the path of the .wasm.
    Build(build::BuildCommand),
    /// Show a segment file: header, peers, rings, slot pool; validated as read.
    Inspect(inspect::InspectCommand),
    /// Measure round trips, streams and payload hand-offs against native baselines.
    Bench(bench::BenchCommand),
}

impl Command {
    pub fn execute(self) -> Result<ExitCode, Failure> {
        match self {
            Command::New(c) => c.execute(),
            Command::Run(c) => c.execute(),
            Command::Build(c) => c.execute(),
            Command::Inspect(c) => c.execute(),
            Command::Bench(c) => c.execute(),
        }
    }
}

/// Logs go to stderr; `RUST_LOG` overrides `-v`/`-q`. The levels are
/// shmrt's own (the guests' `log` calls included, target `shmrt::guest`):
/// by default warnings of shmrt and the guests' info; `-v` shmrt's info
/// too; `-vv` debug and `-vvv` trace, of shmrt and the guests. wasmtime's
/// and cranelift's own events only through `RUST_LOG` (at debug they are
/// thousands of lines for one message). Colours only on a terminal, and
/// never with `NO_COLOR` set.
pub fn init_tracing(cli: &Cli) {
    let default = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn,shmrt::guest=info",
        (false, 1) => "warn,shmrt=info",
        (false, 2) => "warn,shmrt=debug",
        _ => "warn,shmrt=trace",
    };
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
    };
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let ansi = std::io::stderr().is_terminal() && !no_color;
    let subscriber = || {
        tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
    };
    // `log` records (wasmtime's, cranelift's) go through tracing too,
    // unless the process set a `log` logger before (the containerd shim
    // runs the CLI in its container's process): then tracing alone.
    if subscriber().try_init().is_err() {
        let _ = tracing::subscriber::set_global_default(subscriber().finish());
    }
}
