//! `scalewise run` with no config: the embedded demo.
//!
//! Two simulated services under a compressed day of load with a spike, scaled
//! by the bundled policies, the API up on loopback, and one readable line per
//! decision on the terminal.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::clock::{Clock, wall_clock_ms};
use crate::config::Config;
use crate::daemon::{Daemon, DaemonError};
use crate::journal::TickRecord;
use crate::runtime::Compiler;

/// Where the demo looks for the bundled policy modules when neither
/// `--policy-dir` nor `SCALEWISE_POLICY_DIR` says otherwise.
pub const DEFAULT_POLICY_DIR: &str = "policies/dist";

/// Finds the bundled policies: the flag, then the environment, then
/// `policies/dist` under the current folder.
pub fn policy_dir(flag: Option<PathBuf>) -> Result<PathBuf, DaemonError> {
    let dir = flag
        .or_else(|| std::env::var_os("SCALEWISE_POLICY_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_POLICY_DIR));
    let has_modules = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "wasm"))
        })
        .unwrap_or(false);
    if !has_modules {
        return Err(DaemonError::Setup(format!(
            "the demo needs the bundled policy modules in {} (none found); build them with \
             `scripts/build-policies` or point --policy-dir at a folder of .wasm files",
            dir.display()
        )));
    }
    Ok(dir)
}

/// Builds the demo daemon: the embedded config with the given policy folder
/// and a journal in `state_dir`, compiling its modules where `compiler` says.
pub async fn build(
    policy_dir: &Path,
    state_dir: &Path,
    listen: Option<SocketAddr>,
    compiler: Compiler,
) -> Result<Daemon, DaemonError> {
    let mut config = Config::demo(policy_dir, &state_dir.join("demo-journal.db"));
    if let Some(listen) = listen {
        config.api.listen = listen;
    }
    config.validate()?;
    let clock = Clock::starting_at(wall_clock_ms(), config.clock.speed);
    Daemon::build_with_compiler(config, clock, compiler).await
}

/// Prints one line per decision until the channel closes.
pub async fn print_decisions(
    mut decisions: broadcast::Receiver<Arc<TickRecord>>,
    start_ms: i64,
    mut out: impl Write + Send,
) {
    loop {
        match decisions.recv().await {
            Ok(record) => {
                let _ = writeln!(out, "{}", decision_line(&record, start_ms));
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let _ = writeln!(out, "… {n} decisions not shown (terminal too slow)");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// One terminal line: simulated time since start, scaler, from → to, reason.
pub fn decision_line(record: &TickRecord, start_ms: i64) -> String {
    let secs = (record.time_ms - start_ms).max(0) / 1000;
    let clock = format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    );
    let current = record.target.current;
    let arrow = if record.desired > current {
        format!("{current:>3} ↑ {:<3}", record.desired)
    } else if record.desired < current {
        format!("{current:>3} ↓ {:<3}", record.desired)
    } else {
        format!("{current:>3} = {:<3}", record.desired)
    };
    let reason = crate::scaler::summarize(record);
    let reason = reason.split_once(" — ").map(|(_, r)| r).unwrap_or(&reason);
    // A policy's words, on the operator's terminal.
    let reason = crate::runtime::log_safe(reason);
    format!(
        "sim {clock}  {:<8} {arrow} ready {:>3}  {reason}",
        record.scaler, record.target.ready
    )
}
