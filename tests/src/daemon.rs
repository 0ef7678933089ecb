//! A real daemon running in a temporary folder: its config file, policy
//! folder, journal and module cache all live there. Hot reload and config
//! reload tests drive it through its files and read it through its API,
//! journal and decision stream.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use scalewise::api::{AppState, router};
use scalewise::clock::{Clock, wall_clock_ms};
use scalewise::config::Config;
use scalewise::daemon::{Daemon, DaemonError};
use scalewise::journal::{Journal, Query, TickRecord};
use scalewise::registry::Registry;
use scalewise::telemetry::Telemetry;
use tempfile::TempDir;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use tower::ServiceExt as _;

/// The config of one simulated service `web` scaled by one scaler `web`
/// every `1s` of host time with the `counter` module; the host clock runs
/// `speed` times faster than real time. `extra` is appended (more scalers,
/// other settings).
pub fn config_text(speed: f64, debounce_ms: u64, mode: &str, extra: &str) -> String {
    format!(
        r#"policy_dir = "policies"

[clock]
speed = {speed:?}

[journal]
path = "journal.db"

[watch]
debounce = "{debounce_ms}ms"
mode = "{mode}"
poll_interval = "100ms"

[simulations.web]
capacity_per_replica = 100.0
initial_replicas = 3

[simulations.web.load]
base = 200.0

[simulations.api]
capacity_per_replica = 50.0
initial_replicas = 2

[simulations.api.load]
base = 80.0

[[scalers]]
name = "web"
interval = "1s"
min = 1
max = 10
target = {{ kind = "simulator", service = "web" }}

[[scalers.policies]]
module = "counter"
{extra}"#
    )
}

/// A daemon running on a tokio task.
#[derive(Debug)]
pub struct RunningDaemon {
    /// The temporary folder everything lives in.
    pub dir: TempDir,
    /// `<dir>/policies`.
    pub policy_dir: PathBuf,
    /// `<dir>/scalewise.toml`.
    pub config_path: PathBuf,
    /// The loaded modules.
    pub registry: Arc<Registry>,
    /// The host's metrics.
    pub telemetry: Arc<Telemetry>,
    /// The journal (usable until [`RunningDaemon::stop`]).
    pub journal: Journal,
    /// What the API serves from.
    pub app: AppState,
    /// Every tick's record, from before the first tick.
    pub decisions: broadcast::Receiver<Arc<TickRecord>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), DaemonError>>>,
}

impl RunningDaemon {
    /// Writes `config` to `<dir>/scalewise.toml`, lets `setup` fill the
    /// policy folder, then builds and runs the daemon with config reload on.
    pub async fn start(config: &str, setup: impl FnOnce(&Path)) -> RunningDaemon {
        let dir = tempfile::tempdir().unwrap();
        let policy_dir = dir.path().join("policies");
        std::fs::create_dir(&policy_dir).unwrap();
        setup(&policy_dir);
        let config_path = dir.path().join("scalewise.toml");
        std::fs::write(&config_path, config).unwrap();
        let config = Config::load(&config_path).unwrap_or_else(|e| panic!("{e}"));
        let clock = Clock::starting_at(wall_clock_ms(), config.clock.speed);
        let mut daemon = Daemon::build(config, clock)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        daemon.enable_config_reload(None);
        let registry = daemon.registry().clone();
        let telemetry = daemon.telemetry().clone();
        let journal = daemon.journal().clone();
        let app = daemon.app_state();
        let decisions = daemon.subscribe();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(daemon.run(None, async move {
            let _ = stopped.await;
        }));
        RunningDaemon {
            dir,
            policy_dir,
            config_path,
            registry,
            telemetry,
            journal,
            app,
            decisions,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// The next tick record that satisfies `pred`, waiting at most `timeout`.
    pub async fn next_decision(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&TickRecord) -> bool,
    ) -> Arc<TickRecord> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = tokio::time::timeout_at(deadline, self.decisions.recv())
                .await
                .unwrap_or_else(|_| panic!("no such decision within {timeout:?}"));
            match got {
                Ok(record) if pred(&record) => return record,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("the daemon stopped"),
            }
        }
    }

    /// GETs `path` from the API and parses the JSON (or returns the text
    /// as a JSON string).
    pub async fn get(&self, path: &str) -> serde_json::Value {
        let response = router(self.app.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
            .await
            .unwrap();
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()))
    }

    /// Stops the daemon (ticks in progress finish, the journal is flushed)
    /// and returns every record of `scaler`, oldest first.
    pub async fn stop(mut self, scaler: &str) -> (TempDir, Vec<TickRecord>) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        let journal = Journal::open_read_only(&self.dir.path().join("journal.db")).unwrap();
        let mut records = journal
            .query_blocking(&Query {
                scaler: Some(scaler.into()),
                since_ms: None,
                until_ms: None,
                limit: 100_000,
            })
            .unwrap();
        records.sort_by_key(|r| (r.time_ms, r.id));
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (dir, records)
    }
}

impl Drop for RunningDaemon {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Waits (polling every 5 ms) until `cond` holds, or panics naming `what`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// [`wait_until`] for async tests: polls without blocking the runtime.
pub async fn wait_until_async(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The `N` in a counter fixture's reason (`counter v1: evaluation N`), and
/// its version.
pub fn counter_reason(reason: &str) -> Option<(u32, u64)> {
    let rest = reason.strip_prefix("counter v")?;
    let (version, count) = rest.split_once(": evaluation ")?;
    Some((version.parse().ok()?, count.parse().ok()?))
}
