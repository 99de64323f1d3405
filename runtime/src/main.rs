use clap::Parser;

/// shmrt: run WebAssembly plugins that share zero-copy rings with their host.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
