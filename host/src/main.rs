//! The `scalewise` binary: parse the command line, set up logging, dispatch.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOC: scalewise::Allocator = scalewise::Allocator;

fn main() -> ExitCode {
    let mut cli = scalewise::cli::Cli::parse();
    // The daemon compiles policy modules in a child process of this binary
    // (`compile-worker`), so the compiler's memory never stays in it.
    if let scalewise::cli::Command::Run(args) = &mut cli.command {
        args.compiler = scalewise::runtime::Compiler::this_binary();
    }
    // Logs go to stderr so that stdout carries only command output (JSON),
    // coloured only on a terminal (not in a file, a pipe or a log collector).
    // The demo prints a line per decision itself: the log leaves out its
    // own line per change of replicas there, unless RUST_LOG names it.
    let demo = matches!(&cli.command, scalewise::cli::Command::Run(args) if args.config.is_none());
    let scale_target = scalewise::scaler::SCALE_LOG_TARGET;
    // A backtest's output is its report: the daemon's info lines (a line per
    // change of replicas, a week of them) only with RUST_LOG.
    let simulate = matches!(&cli.command, scalewise::cli::Command::Simulate(_));
    let default_level = if simulate { "warn" } else { "info" };
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let named = std::env::var("RUST_LOG").is_ok_and(|v| v.contains(scale_target));
    if demo && !named {
        filter = filter.add_directive(
            format!("{scale_target}=warn")
                .parse()
                .expect("a valid directive"),
        );
    }
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // Not locked: the daemon's threads log to stderr and the demo prints
    // decisions to stdout while the command runs.
    let code = scalewise::cli::run_cli(cli, &mut std::io::stdout(), &mut std::io::stderr());
    ExitCode::from(code)
}
