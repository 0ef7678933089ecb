//! The daemon: builds every part from a validated config, runs each scaler
//! on its own interval as its own task, serves the API, and shuts down
//! gracefully (ticks in progress finish, then the journal is flushed).

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::actuators::Actuator;
use crate::actuators::simulator::SimulatorActuator;
use crate::api::{self, AppState};
use crate::clock::Clock;
use crate::config::{Config, ConfigError, MetricConfig, ScalerConfig, SourceConfig, TargetConfig};
use crate::journal::{Journal, JournalOptions, TickRecord};
use crate::policy::PolicyInfo;
use crate::registry::Registry;
use crate::runtime::Runtime;
use crate::scaler::{BoundMetric, BoundPolicy, Scaler, ScalerHandle, ScalerSpec, Services};
use crate::simulator::Simulation;
use crate::sources::prometheus::PrometheusSource;
use crate::sources::simulator::SimulatorSource;
use crate::sources::{MetricQuery, Source};
use crate::telemetry::Telemetry;

/// The metric source name that means the simulator, not a `[sources]` entry.
const SIMULATOR_SOURCE: &str = "simulator";
/// How long shutdown waits for ticks in progress before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config is invalid (including its references to policy modules).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Something the config names could not be set up.
    #[error("{0}")]
    Setup(String),
    /// The API could not listen.
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        error: std::io::Error,
    },
}

/// A daemon built from a config, ready to run.
#[derive(Debug)]
pub struct Daemon {
    config: Config,
    clock: Clock,
    registry: Arc<Registry>,
    journal: Journal,
    telemetry: Arc<Telemetry>,
    simulation: Simulation,
    scalers: Vec<Scaler>,
    handles: Arc<BTreeMap<String, Arc<ScalerHandle>>>,
    decisions: broadcast::Sender<Arc<TickRecord>>,
    ready: Arc<AtomicBool>,
}

impl Daemon {
    /// Builds every part: the runtime and its modules, the journal, the
    /// simulations, sources, actuators and scalers (restored from the
    /// journal). Checks the config against the loaded modules first, so a
    /// config naming an unknown module, parameter or metric is refused here.
    pub async fn build(config: Config, clock: Clock) -> Result<Daemon, DaemonError> {
        for warning in config.warnings() {
            tracing::warn!(%warning, "The config has a value that may not work as intended; starting anyway.");
        }
        let telemetry = Arc::new(Telemetry::new());
        let runtime = Runtime::new(config.runtime.clone())
            .map_err(|e| DaemonError::Setup(format!("cannot start the policy runtime: {e}")))?;
        let policy_dir = config.policy_dir.get_ref().clone();
        let registry =
            tokio::task::spawn_blocking(move || Registry::load_dir(runtime, &policy_dir))
                .await
                .map_err(|e| DaemonError::Setup(e.to_string()))?
                .map_err(|e| DaemonError::Setup(e.to_string()))?;
        let registry = Arc::new(registry);
        {
            let snapshot = registry.snapshot();
            telemetry.modules_loaded.set(snapshot.modules.len() as i64);
            for (name, failure) in &snapshot.failures {
                telemetry.module_load_error(name, failure.kind);
                tracing::warn!(module = %name, path = %failure.path.display(), error = %failure.error, "A policy module failed to load.");
            }
            let catalog: BTreeMap<String, PolicyInfo> = snapshot
                .modules
                .iter()
                .map(|(name, module)| (name.clone(), module.info().clone()))
                .collect();
            config.check_policies(&catalog)?;
        }

        let journal = Journal::open_with(
            &config.journal.path,
            JournalOptions {
                clock,
                ..JournalOptions::new(config.journal.retention)
            },
        )
        .map_err(|e| DaemonError::Setup(e.to_string()))?;
        let simulation =
            Simulation::from_config(&config.simulations, config.origin().dir(), clock.now_ms())
                .map_err(|e| DaemonError::Setup(e.to_string()))?;
        // Keep only as much simulated history as the longest window needs.
        simulation.set_history(longest_window_ms(&config));
        let (decisions, _) = broadcast::channel(1024);
        let services = Services {
            registry: registry.clone(),
            journal: journal.clone(),
            telemetry: telemetry.clone(),
            decisions: decisions.clone(),
        };

        let sources = build_named_sources(&config)?;
        let now_ms = clock.now_ms();
        let mut scalers = Vec::with_capacity(config.scalers.len());
        for scaler_config in &config.scalers {
            let scaler_config = scaler_config.get_ref();
            let spec = bind_scaler(&sources, scaler_config, &registry, &simulation)?;
            let actuator = build_actuator(scaler_config, &simulation)?;
            let mut scaler = Scaler::new(spec, actuator, services.clone());
            let restored = scaler
                .restore(now_ms, scaler_config.paused)
                .await
                .map_err(|e| {
                    DaemonError::Setup(format!(
                        "cannot restore scaler {:?} from the journal: {e}",
                        scaler_config.name.get_ref()
                    ))
                })?;
            if restored > 0 {
                tracing::info!(scaler = %scaler_config.name.get_ref(), records = restored, "Restored the scaler's history from the journal.");
            }
            scalers.push(scaler);
        }
        let handles = Arc::new(
            scalers
                .iter()
                .map(|s| (s.spec().name.clone(), s.handle()))
                .collect(),
        );
        Ok(Daemon {
            config,
            clock,
            registry,
            journal,
            telemetry,
            simulation,
            scalers,
            handles,
            decisions,
            ready: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The state the HTTP API serves from.
    pub fn app_state(&self) -> AppState {
        AppState {
            scalers: self.handles.clone(),
            registry: self.registry.clone(),
            journal: self.journal.clone(),
            telemetry: self.telemetry.clone(),
            ready: self.ready.clone(),
        }
    }

    /// A stream of every tick's record as it happens (the demo prints it).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<TickRecord>> {
        self.decisions.subscribe()
    }

    /// The simulated services, for tests and the demo.
    pub fn simulation(&self) -> Simulation {
        self.simulation.clone()
    }

    /// The host clock.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// The journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The config the daemon runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Binds the API's listener on the configured address.
    pub async fn bind_api(&self) -> Result<TcpListener, DaemonError> {
        let addr = self.config.api.listen;
        TcpListener::bind(addr)
            .await
            .map_err(|error| DaemonError::Listen {
                addr: addr.to_string(),
                error,
            })
    }

    /// Runs every scaler and the API until `shutdown` resolves, then lets
    /// ticks in progress finish and flushes the journal.
    pub async fn run(
        self,
        listener: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), DaemonError> {
        let token = CancellationToken::new();
        let state = self.app_state();
        let api_task = listener.map(|listener| {
            let router = api::router(state);
            let token = token.clone();
            tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "The HTTP API is listening.");
            tokio::spawn(async move {
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(async move { token.cancelled().await })
                    .await;
                if let Err(error) = served {
                    tracing::error!(%error, "The HTTP API stopped.");
                }
            })
        });

        let clock = self.clock;
        let telemetry = self.telemetry.clone();
        let mut tasks = tokio::task::JoinSet::new();
        for scaler in self.scalers {
            tasks.spawn(run_scaler(scaler, clock, telemetry.clone(), token.clone()));
        }
        self.ready.store(true, Ordering::Relaxed);
        tracing::info!(scalers = tasks.len(), "Scalewise is running.");

        shutdown.await;
        tracing::info!("Shutting down: letting ticks in progress finish.");
        token.cancel();
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("Some ticks did not finish within the grace period.");
            tasks.abort_all();
        }
        if let Some(api_task) = api_task {
            let _ = api_task.await;
        }
        self.journal
            .close()
            .await
            .map_err(|e| DaemonError::Setup(format!("cannot flush the journal: {e}")))?;
        tracing::info!("Scalewise stopped; the journal is flushed.");
        Ok(())
    }
}

/// Runs one scaler's ticks on its interval until cancelled. The first tick
/// is offset by a stable jitter (see [`phase_key`]) so many scalers do not
/// tick in lockstep, while scalers that share a query do.
async fn run_scaler(
    mut scaler: Scaler,
    clock: Clock,
    telemetry: Arc<Telemetry>,
    token: CancellationToken,
) {
    let interval_ms = (scaler.spec().interval.as_millis() as i64).max(1);
    let mut next = clock.now_ms() + jitter_ms(&phase_key(scaler.spec()), interval_ms);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = clock.sleep_until(next) => {}
        }
        let started = clock.now_ms();
        telemetry
            .tick_lag
            .observe((started - next).max(0) as f64 / 1000.0 / clock.speed());
        // Not raced against the token: a tick in progress finishes.
        scaler.tick(started).await;
        next += interval_ms;
        let now = clock.now_ms();
        if next <= now {
            // Ticks were missed (a slow source or actuator): skip them
            // rather than firing a burst.
            let missed = (now - next) / interval_ms + 1;
            next += missed * interval_ms;
        }
    }
}

/// What a scaler's tick phase is derived from: its first query (in sorted
/// order) to a `[sources]` entry, else its name. Scalers that share that
/// query and their interval then tick at the same moments, and a source
/// answers them with one fetch per tick (sources share a request per query
/// and second); scalers reading different data stay spread out.
fn phase_key(spec: &ScalerSpec) -> String {
    let queries = spec
        .metrics
        .iter()
        .map(|m| (m.source_name.as_str(), m.query.query.as_str()));
    phase_key_of(&spec.name, queries)
}

/// [`phase_key`] over plain data: the scaler's name and its metrics'
/// `(source, query)` pairs.
fn phase_key_of<'a>(name: &str, queries: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    queries
        .into_iter()
        .filter(|(source, _)| *source != SIMULATOR_SOURCE)
        .map(|(source, query)| format!("{source}\u{0}{query}"))
        .min()
        .unwrap_or_else(|| name.to_owned())
}

/// A stable offset in `[0, interval)` derived from `key`.
fn jitter_ms(key: &str, interval_ms: i64) -> i64 {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % interval_ms as u64) as i64
}

/// Binds a scaler's metrics and policies.
fn bind_scaler(
    sources: &NamedSources,
    scaler: &ScalerConfig,
    registry: &Registry,
    simulation: &Simulation,
) -> Result<ScalerSpec, DaemonError> {
    let name = scaler.name.get_ref().clone();
    let interval_ms = scaler.interval.as_millis() as i64;
    let mut metrics = Vec::with_capacity(scaler.metrics.len());
    for (metric_name, metric) in &scaler.metrics {
        let metric = metric.get_ref();
        let (source_name, source) = build_source(sources, scaler, metric, simulation)?;
        let window_ms = metric.window.map(|w| w.as_millis() as i64);
        metrics.push(BoundMetric {
            name: metric_name.clone(),
            source_name,
            source,
            query: MetricQuery {
                query: metric.query.clone(),
                window_ms,
                step_ms: metric
                    .step
                    .map(|s| s.as_millis() as i64)
                    .unwrap_or(interval_ms),
            },
            max_age_ms: Some(
                metric
                    .max_age
                    .map(|a| a.as_millis() as i64)
                    .unwrap_or(3 * interval_ms),
            ),
        });
    }
    let snapshot = registry.snapshot();
    let policies = scaler
        .policies
        .iter()
        .map(|p| {
            let p = p.get_ref();
            let module = p.module.get_ref().clone();
            // check_policies made sure every module is loaded.
            let parameters = match snapshot.modules.get(&module) {
                Some(m) => p.parameters(m.info()),
                None => serde_json::Value::Object(serde_json::Map::new()),
            };
            BoundPolicy { parameters, module }
        })
        .collect();
    Ok(ScalerSpec {
        name,
        interval: scaler.interval,
        min: *scaler.min.get_ref(),
        max: *scaler.max.get_ref(),
        mode: scaler.mode,
        metrics,
        policies,
        behavior: scaler.behavior.clone(),
    })
}

fn build_source(
    sources: &NamedSources,
    scaler: &ScalerConfig,
    metric: &MetricConfig,
    simulation: &Simulation,
) -> Result<(String, Arc<dyn Source>), DaemonError> {
    if metric.source == SIMULATOR_SOURCE {
        let own = scaler.target.get_ref().simulation();
        let source = SimulatorSource::new(simulation.clone(), own)
            .map_err(|e| DaemonError::Setup(e.to_string()))?;
        return Ok((SIMULATOR_SOURCE.into(), Arc::new(source)));
    }
    // Validation made sure every named source exists.
    let source = sources.get(&metric.source).cloned().ok_or_else(|| {
        DaemonError::Setup(format!(
            "scaler {:?}: source {:?} is not defined",
            scaler.name.get_ref(),
            metric.source
        ))
    })?;
    Ok((metric.source.clone(), source))
}

/// The config's `[sources]`, built once and shared by every scaler, so a
/// query several scalers share is fetched once per tick.
type NamedSources = BTreeMap<String, Arc<dyn Source>>;

fn build_named_sources(config: &Config) -> Result<NamedSources, DaemonError> {
    config
        .sources
        .iter()
        .map(|(name, source)| {
            let built: Arc<dyn Source> = match source.get_ref() {
                SourceConfig::Prometheus(prometheus) => Arc::new(
                    PrometheusSource::new(name, prometheus)
                        .map_err(|e| DaemonError::Setup(format!("source {name:?}: {e}")))?,
                ),
            };
            Ok((name.clone(), built))
        })
        .collect()
}

fn build_actuator(
    scaler: &ScalerConfig,
    simulation: &Simulation,
) -> Result<Arc<dyn Actuator>, DaemonError> {
    match scaler.target.get_ref() {
        TargetConfig::Simulator { service } => {
            let actuator = SimulatorActuator::for_service(simulation, service)
                .map_err(|e| DaemonError::Setup(e.to_string()))?;
            Ok(Arc::new(actuator))
        }
    }
}

/// The longest metric window any scaler asks for, plus a margin.
fn longest_window_ms(config: &Config) -> i64 {
    let longest = config
        .scalers
        .iter()
        .flat_map(|s| s.get_ref().metrics.values())
        .filter_map(|m| m.get_ref().window)
        .max()
        .unwrap_or_default();
    longest.as_millis() as i64 + 60_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalers_sharing_a_query_share_their_phase() {
        // (scaler, its metrics' (source, query)) -> phase key
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("web", &[], "web"),
            ("web", &[("simulator", "cpu")], "web"),
            ("web", &[("prom", "sum(q)")], "prom\u{0}sum(q)"),
            // The smallest query decides, whatever the metrics' order.
            (
                "web",
                &[("prom", "sum(z)"), ("simulator", "cpu"), ("prom", "sum(q)")],
                "prom\u{0}sum(q)",
            ),
            (
                "api",
                &[("prom", "sum(q)"), ("thanos", "a")],
                "prom\u{0}sum(q)",
            ),
        ];
        for (name, queries, expected) in cases {
            assert_eq!(
                phase_key_of(name, queries.iter().copied()),
                *expected,
                "{name} {queries:?}"
            );
        }
        let interval = 15_000;
        let shared = |name: &str| jitter_ms(&phase_key_of(name, [("prom", "sum(q)")]), interval);
        assert_eq!(shared("web"), shared("api"));
        assert!((0..interval).contains(&shared("web")));
    }
}
