//! `scalewise run`: the daemon, or with no config the embedded demo.

use std::io::Write;
use std::path::PathBuf;

use crate::clock::{Clock, format_ms, wall_clock_ms};
use crate::config::Config;
use crate::daemon::{Daemon, DaemonError, ReloadStart};
use crate::demo;
use crate::journal::Journal;

use super::RunArgs;

/// Runs the daemon (or the demo) until SIGINT/SIGTERM or `--for` elapses.
pub fn run(args: &RunArgs, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(crate::runtime::THREAD_STACK)
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
    let reload = ReloadStart::begin(&path);
    let mut config = Config::load(&path)?;
    let setting = match args.listen {
        Some(listen) => {
            config.api.listen = listen;
            "--listen".to_owned()
        }
        None => format!("api.listen in {}", path.display()),
    };
    // Bound before the journal or the code cache is opened: a port in use
    // refuses the start and leaves nothing behind.
    let addr = config.api.listen;
    let listener =
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|error| DaemonError::Listen {
                addr: format!("{addr} ({setting})"),
                error,
            })?;
    let clock = start_clock(&config, wall_clock_ms());
    tracing::info!(config = %path.display(), scalers = config.scalers.len(), "Starting Scalewise.");
    let mut daemon = Daemon::build_with_compiler(config, clock, args.compiler.clone()).await?;
    // SIGHUP, or the file changing, re-reads it; --listen keeps applying.
    daemon.enable_config_reload(args.listen, reload);
    daemon.run(Some(listener), stop_signal(args)).await
}

/// The real clock (following the wall clock) at speed 1, else a clock
/// sped up from `now_ms`.
fn real_or_sped(now_ms: i64, speed: f64) -> Clock {
    match speed == 1.0 {
        true => Clock::system(),
        false => Clock::starting_at(now_ms, speed),
    }
}

/// The daemon's clock, at `now_ms` (the wall clock) and the config's speed;
/// a faster clock resumes after the journal's newest record instead. A run
/// at 10x leaves records dated ahead of the wall clock: a restart at wall
/// time would write its ticks before them, restore windows and cooldowns
/// from its own future and list the old run's records as the newest.
pub fn start_clock(config: &Config, now_ms: i64) -> Clock {
    let speed = config.clock.speed;
    let path = &config.journal.path;
    let newest = match path.exists() {
        true => Journal::open_read_only(path).and_then(|journal| journal.newest_time_ms_blocking()),
        false => Ok(None),
    };
    match newest {
        Ok(Some(newest)) if newest >= now_ms && speed != 1.0 => {
            tracing::info!(
                journal = %path.display(),
                newest = %format_ms(newest),
                "Simulated time resumes after the journal's newest record, which an earlier run at a faster clock dated ahead of the wall clock."
            );
            Clock::starting_at(newest + 1, speed)
        }
        Ok(Some(newest)) if newest > now_ms => {
            tracing::warn!(
                journal = %path.display(),
                newest = %format_ms(newest),
                "The journal has records dated after now (an earlier run with a faster clock, or the wall clock moved back); windows and cooldowns restored from them may hold the scalers until then."
            );
            real_or_sped(now_ms, speed)
        }
        // An unreadable journal is reported when the daemon opens it.
        _ => real_or_sped(now_ms, speed),
    }
}

async fn run_demo(args: &RunArgs, out: &mut dyn Write) -> Result<(), DaemonError> {
    // Bound first: a port in use refuses the demo before anything is
    // compiled or written, and says how to pick another.
    let addr = args
        .listen
        .unwrap_or_else(|| crate::config::ApiConfig::default().listen);
    let listener =
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|error| DaemonError::Listen {
                addr: match args.listen {
                    Some(_) => format!("{addr} (--listen)"),
                    None => format!(
                        "{addr} (the demo's default; `--listen 127.0.0.1:0` picks a free port)"
                    ),
                },
                error,
            })?;
    let policy_dir = demo::policy_dir(args.policy_dir.clone())?;
    let state_dir = std::env::temp_dir().join(format!("scalewise-demo-{}", std::process::id()));
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| DaemonError::Setup(format!("cannot create {}: {e}", state_dir.display())))?;
    let daemon = demo::build(&policy_dir, &state_dir, Some(addr), args.compiler.clone()).await?;
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
    let journal = daemon.config().journal.path.clone();
    let result = daemon.run(Some(listener), stop_signal(args)).await;
    printer.abort();
    if result.is_ok() {
        // The run's record stays for a look afterwards; the folder is the
        // system's temporary one, which it cleans.
        let _ = writeln!(
            out,
            "\nThe demo's journal stays at {}: `scalewise journal export --journal {0}` prints \
             every decision as JSON lines.",
            journal.display()
        );
    }
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
    // Listened for on a task of its own, which the daemon's loop may not
    // poll for a while (a reload waiting on an API server): the second
    // signal is listened for as soon as the first comes.
    let signalled = tokio::spawn(async {
        interrupted().await;
        // A second Ctrl-C or SIGTERM stops at once: what the journal
        // acknowledged is on disk already (each append is committed), so
        // only a tick in progress and undelivered notifications are cut.
        tokio::spawn(async {
            interrupted().await;
            tracing::warn!("Stopping at once (a second signal): a tick in progress is cut short.");
            std::process::exit(130);
        });
    });
    tokio::select! {
        _ = signalled => {}
        _ = timer => {}
    }
}

/// Ctrl-C or SIGTERM.
async fn interrupted() {
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
    }
}
