//! `scalewise run`: the daemon, or with no config the embedded demo.

use std::io::Write;
use std::path::PathBuf;

use crate::clock::{Clock, wall_clock_ms};
use crate::config::Config;
use crate::daemon::{Daemon, DaemonError};
use crate::demo;

use super::RunArgs;

/// Runs the daemon (or the demo) until SIGINT/SIGTERM or `--for` elapses.
pub fn run(args: &RunArgs, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("scalewise")
        .build()?;
    let result = runtime.block_on(async {
        match &args.config {
            Some(path) => run_config(path.clone(), args).await,
            None => run_demo(args, out).await,
        }
    });
    match result {
        Ok(()) => Ok(0),
        Err(e) => {
            writeln!(err, "error: {e}")?;
            Ok(1)
        }
    }
}

async fn run_config(path: PathBuf, args: &RunArgs) -> Result<(), DaemonError> {
    let mut config = Config::load(&path)?;
    if let Some(listen) = args.listen {
        config.api.listen = listen;
    }
    let clock = Clock::starting_at(wall_clock_ms(), config.clock.speed);
    tracing::info!(config = %path.display(), scalers = config.scalers.len(), "Starting Scalewise.");
    let mut daemon = Daemon::build_with_compiler(config, clock, args.compiler.clone()).await?;
    // SIGHUP, or the file changing, re-reads it; --listen keeps applying.
    daemon.enable_config_reload(args.listen);
    let listener = daemon.bind_api().await?;
    daemon.run(Some(listener), stop_signal(args)).await
}

async fn run_demo(args: &RunArgs, out: &mut dyn Write) -> Result<(), DaemonError> {
    let policy_dir = demo::policy_dir(args.policy_dir.clone())?;
    let state_dir = std::env::temp_dir().join(format!("scalewise-demo-{}", std::process::id()));
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| DaemonError::Setup(format!("cannot create {}: {e}", state_dir.display())))?;
    let daemon = demo::build(&policy_dir, &state_dir, args.listen, args.compiler.clone()).await?;
    let listener = daemon.bind_api().await?;
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let speed = daemon.config().clock.speed;
    let _ = writeln!(
        out,
        "Scalewise demo: two simulated services scaled by the bundled policies ({}).\n\
         Simulated time runs {speed}x faster than real time. Dashboard: http://{addr}/ · \
         API: http://{addr}/v1/scalers · journal: {}\n\
         One line per decision: simulated time, scaler, current → desired, ready replicas, why. \
         Ctrl-C stops.\n",
        policy_dir.display(),
        daemon.config().journal.path.display(),
    );
    let _ = out.flush();
    let printer = tokio::spawn(demo::print_decisions(
        daemon.subscribe(),
        daemon.clock().now_ms(),
        std::io::stdout(),
    ));
    let result = daemon.run(Some(listener), stop_signal(args)).await;
    printer.abort();
    result
}

/// Resolves on SIGINT or SIGTERM, or after `--for`.
async fn stop_signal(args: &RunArgs) {
    let run_for = args.run_for;
    let timer = async move {
        match run_for {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
        _ = timer => {}
    }
}
