//! The real daemon, run in-process from a config text, for end-to-end tests
//! and benchmarks.
//!
//! [`RunningDaemon::start`] writes the config into a temporary folder next
//! to a `policies/` folder holding the real `target-tracking` and
//! `threshold` modules built from `policies/`, then loads it the way
//! `scalewise run --config` does, builds the [`Daemon`] and runs it with the
//! HTTP API on a free loopback port. Relative paths in the config (the
//! journal, secret files) land in that folder. [`RunningDaemon::with`]
//! starts one with other modules, the config's own clock, or config reload
//! on (the hot-reload tests).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use scalewise::clock::Clock;
//! use scalewise_tests::running::RunningDaemon;
//!
//! let config = r#"
//! policy_dir = "policies"
//! # ... [simulations.web], [[scalers]] ...
//! "#;
//! let mut daemon = RunningDaemon::start(config, Clock::system()).await?;
//! let scaled = daemon
//!     .wait_for_record("web", "a scale-out", Duration::from_secs(30), |r| r.desired > r.target.current)
//!     .await?;
//! daemon.stop().await?;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::body::Body;
use axum::http::Request;
use scalewise::api::{AppState, router};
use scalewise::clock::{Clock, wall_clock_ms};
use scalewise::config::Config;
use scalewise::daemon::{Daemon, DaemonError, ReloadStart};
use scalewise::journal::{ActuationRecord, Journal, Query, TickRecord};
use scalewise::registry::Registry;
use scalewise::simulator::Simulation;
use scalewise::telemetry::Telemetry;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use tower::ServiceExt as _;

use crate::artifacts;
use crate::wait_until;

/// The policy modules every daemon started here can use, by module name.
pub const POLICY_MODULES: &[(&str, &str)] = &[
    ("target-tracking", artifacts::TARGET_TRACKING),
    ("threshold", artifacts::THRESHOLD),
    ("predictive", artifacts::PREDICTIVE),
    ("schedule", artifacts::SCHEDULE),
];

/// At most this many records are read back per scaler.
const MAX_RECORDS: usize = 100_000;

/// A daemon running on the caller's tokio runtime; stopped by
/// [`RunningDaemon::stop`], or when dropped.
#[derive(Debug)]
pub struct RunningDaemon {
    dir: tempfile::TempDir,
    api: Option<SocketAddr>,
    journal: Journal,
    simulation: Simulation,
    clock: Clock,
    registry: Arc<Registry>,
    telemetry: Arc<Telemetry>,
    app: AppState,
    decisions: broadcast::Receiver<Arc<TickRecord>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), DaemonError>>>,
}

/// What puts the modules into a fresh policy folder.
type FillPolicies<'a> = Box<dyn FnOnce(&Path) + 'a>;

/// How a [`RunningDaemon`] starts: [`RunningDaemon::with`], then options,
/// then [`Start::start`].
pub struct Start<'a> {
    config: &'a str,
    clock: Option<Clock>,
    policies: Option<FillPolicies<'a>>,
    config_reload: bool,
    listen: bool,
    starting: Option<Box<dyn FnOnce() + 'a>>,
}

impl std::fmt::Debug for Start<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Start")
            .field("clock", &self.clock)
            .field("own_policies", &self.policies.is_some())
            .field("config_reload", &self.config_reload)
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl<'a> Start<'a> {
    /// Runs the daemon on `clock` (by default a clock at the wall clock's
    /// time, running at the config's `[clock] speed`).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Lets `fill` put the modules into the (empty) policy folder instead of
    /// the bundled [`POLICY_MODULES`].
    pub fn policies(mut self, fill: impl FnOnce(&Path) + 'a) -> Self {
        self.policies = Some(Box::new(fill));
        self
    }

    /// Reloads the config when its file changes (and on SIGHUP), as
    /// `scalewise run --config` does.
    pub fn config_reload(mut self) -> Self {
        self.config_reload = true;
        self
    }

    /// Calls `hook` when the daemon starts, before its config is read (a
    /// signal sent then must not kill it).
    pub fn while_starting(mut self, hook: impl FnOnce() + 'a) -> Self {
        self.starting = Some(Box::new(hook));
        self
    }

    /// Serves the API on no port, and leaves `[api] listen` as the config
    /// file says (a test that reloads a changed `[api]` needs that); the API
    /// is still reached in-process with [`RunningDaemon::get`].
    pub fn no_listener(mut self) -> Self {
        self.listen = false;
        self
    }

    /// Writes the config and the modules to a temporary folder, loads the
    /// config from there and runs the daemon. The API listens on a free
    /// loopback port whatever the config says (unless
    /// [`Start::no_listener`]).
    pub async fn start(self) -> anyhow::Result<RunningDaemon> {
        let dir = tempfile::Builder::new()
            .prefix("scalewise-daemon-")
            .tempdir()?;
        let policy_dir = dir.path().join("policies");
        match self.policies {
            Some(fill) => {
                std::fs::create_dir(&policy_dir)?;
                fill(&policy_dir);
            }
            None => install_policies(&policy_dir)?,
        }
        let path = dir.path().join("scalewise.toml");
        std::fs::write(&path, self.config)?;
        let reload = self.config_reload.then(|| ReloadStart::begin(&path));
        if let Some(hook) = self.starting {
            hook();
        }
        let mut config = Config::load(&path)?;
        // As `--listen` does (reloads keep the override).
        let listen = self.listen.then(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        if let Some(listen) = listen {
            config.api.listen = listen;
        }
        let clock = self
            .clock
            .unwrap_or_else(|| Clock::starting_at(wall_clock_ms(), config.clock.speed));
        let mut daemon = Daemon::build(config, clock).await?;
        if let Some(reload) = reload {
            daemon.enable_config_reload(listen, reload);
        }
        let listener = match listen {
            Some(_) => Some(daemon.bind_api().await?),
            None => None,
        };
        let api = listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let (journal, simulation, app) = (
            daemon.journal().clone(),
            daemon.simulation(),
            daemon.app_state(),
        );
        let (registry, telemetry) = (daemon.registry().clone(), daemon.telemetry().clone());
        let decisions = daemon.subscribe();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(daemon.run(listener, async move {
            let _ = stopped.await;
        }));
        Ok(RunningDaemon {
            dir,
            api,
            journal,
            simulation,
            clock,
            registry,
            telemetry,
            app,
            decisions,
            stop: Some(stop),
            task: Some(task),
        })
    }
}

impl RunningDaemon {
    /// Loads `config` (a whole config file; `policy_dir = "policies"` finds
    /// the bundled modules) from a temporary folder and runs the daemon on
    /// `clock`.
    pub async fn start(config: &str, clock: Clock) -> anyhow::Result<RunningDaemon> {
        RunningDaemon::with(config).clock(clock).start().await
    }

    /// A daemon of `config` to start with other options.
    pub fn with(config: &str) -> Start<'_> {
        Start {
            config,
            clock: None,
            policies: None,
            config_reload: false,
            listen: true,
            starting: None,
        }
    }

    /// The folder the config was written to.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `<dir>/policies`, the policy folder.
    pub fn policy_dir(&self) -> PathBuf {
        self.dir().join("policies")
    }

    /// `<dir>/scalewise.toml`, the config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir().join("scalewise.toml")
    }

    /// The HTTP API's address (`None` with [`Start::no_listener`]).
    pub fn api(&self) -> Option<SocketAddr> {
        self.api
    }

    /// The daemon's journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The daemon's clock.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// The loaded policy modules.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The host's own metrics.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// Every tick's record from now on, as the daemon publishes it (after
    /// the actuator was called).
    pub fn decisions(&self) -> broadcast::Receiver<Arc<TickRecord>> {
        self.decisions.resubscribe()
    }

    /// The next published tick record that satisfies `accept`, among those
    /// published since the daemon started or since the last call; fails
    /// after `timeout`.
    pub async fn next_decision(
        &mut self,
        timeout: Duration,
        accept: impl Fn(&TickRecord) -> bool,
    ) -> anyhow::Result<Arc<TickRecord>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Ok(got) = tokio::time::timeout_at(deadline, self.decisions.recv()).await else {
                bail!("no such decision within {timeout:?}");
            };
            match got {
                Ok(record) if accept(&record) => return Ok(record),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => bail!("the daemon stopped"),
            }
        }
    }

    /// The simulated service `name`'s replicas now: (asked for, ready).
    pub fn replicas(&self, service: &str) -> anyhow::Result<(u32, u32)> {
        let service = self.simulation.service(service)?;
        let mut service = service.lock();
        Ok(service.replicas(self.clock.now_ms()))
    }

    /// The scaler's records so far, oldest first.
    pub async fn records(&self, scaler: &str) -> anyhow::Result<Vec<TickRecord>> {
        let mut records = self
            .journal
            .query(Query::scaler(scaler, MAX_RECORDS))
            .await?;
        records.reverse();
        Ok(records)
    }

    /// Polls the journal until one of the scaler's records satisfies
    /// `accept`, and returns the oldest that does (records whose actuation
    /// is still in progress are not offered). Fails after `timeout`
    /// with the newest record's one-line summary.
    pub async fn wait_for_record(
        &self,
        scaler: &str,
        what: &str,
        timeout: Duration,
        accept: impl Fn(&TickRecord) -> bool,
    ) -> anyhow::Result<TickRecord> {
        let accept = &accept;
        wait_until(&format!("{scaler}: {what}"), timeout, || async move {
            let records = self.records(scaler).await.map_err(|e| e.to_string())?;
            // A record is written before the actuator is called and updated
            // after: one still `Pending` is read again at the next poll.
            let settled = |r: &&TickRecord| r.actuation != ActuationRecord::Pending;
            match records.iter().filter(settled).find(|r| accept(r)) {
                Some(found) => Ok(found.clone()),
                None => Err(records.last().map_or_else(
                    || "no record yet".to_owned(),
                    |r| {
                        format!(
                            "{} records; newest: {} (metric errors: {:?})",
                            records.len(),
                            scalewise::scaler::summarize(r),
                            r.metric_errors
                        )
                    },
                )),
            }
        })
        .await
    }

    /// GETs `path` from the API's router in-process and parses the JSON
    /// (or returns the text as a JSON string).
    pub async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let response = router(self.app.clone())
            .oneshot(Request::get(path).body(Body::empty())?)
            .await?;
        let bytes = axum::body::to_bytes(response.into_body(), 16 << 20).await?;
        Ok(serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into())))
    }

    /// The value of one series of the host's own `/metrics`, read over
    /// HTTP (`series` is the name with its labels, exactly as exposed);
    /// `None` when the series is not exposed.
    pub async fn host_metric(&self, series: &str) -> anyhow::Result<Option<f64>> {
        let api = self
            .api
            .context("the API serves on no port (no_listener)")?;
        let text = reqwest::get(format!("http://{api}/metrics"))
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(text.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            value.trim().parse().ok()
        }))
    }

    /// Shuts the daemon down gracefully (ticks in progress finish, the
    /// journal is flushed) and reports how it ended. The journal stays
    /// readable through [`RunningDaemon::records`], and the folder stays
    /// until the value is dropped.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match tokio::time::timeout(Duration::from_secs(60), task).await {
            Ok(Ok(result)) => result.context("the daemon stopped with an error")?,
            Ok(Err(join)) => bail!("the daemon's task failed: {join}"),
            Err(_) => bail!("the daemon did not stop within 60 s"),
        }
        // The daemon closed its journal; read the file from now on.
        self.journal = Journal::open_read_only(self.journal.path())?;
        Ok(())
    }
}

impl Drop for RunningDaemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Copies the bundled modules into `dir` as `<module>.wasm`.
pub fn install_policies(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (module, path) in POLICY_MODULES {
        std::fs::copy(path, dir.join(format!("{module}.wasm")))
            .with_context(|| format!("copying the {module} module from {path}"))?;
    }
    Ok(())
}

/// Config text: a simulated service `name` with `replicas` replicas of 100
/// each, ready at once, under a base load of 10 that nothing reads.
pub fn simulation(name: &str, replicas: u32) -> String {
    format!(
        "[simulations.{name}]\ncapacity_per_replica = 100.0\ninitial_replicas = {replicas}\n\n\
         [simulations.{name}.load]\nbase = 10.0\n\n"
    )
}

/// Config text: a scaler `name` of the simulated service `name`, ticking
/// every second (1 to 10 replicas), whose `target-tracking` policy keeps
/// the metric `queue` (the PromQL `query` on `source`) at 10 per replica.
/// Tables that extend the scaler (`[scalers.behavior...]`) may follow it.
pub fn queue_scaler(name: &str, source: &str, query: &str) -> String {
    format!(
        r#"[[scalers]]
name = "{name}"
interval = "1s"
min = 1
max = 10
target = {{ kind = "simulator", service = "{name}" }}

[scalers.metrics.queue]
source = "{source}"
query = '{query}'

[[scalers.policies]]
module = "target-tracking"
params = {{ metric = "queue", target = 10.0, metric_type = "total" }}

"#
    )
}
