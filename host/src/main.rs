//! The `scalewise` binary: parse the command line, set up logging, dispatch.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOC: scalewise::Allocator = scalewise::Allocator;

fn main() -> ExitCode {
    let cli = scalewise::cli::Cli::parse();
    // Logs go to stderr so that stdout carries only command output (JSON).
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Not locked: the daemon's threads log to stderr and the demo prints
    // decisions to stdout while the command runs.
    let code = scalewise::cli::run_cli(cli, &mut std::io::stdout(), &mut std::io::stderr());
    ExitCode::from(code)
}
