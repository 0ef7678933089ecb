//! The daemon: builds every part from a validated config, runs each scaler
//! on its own interval as its own task, serves the API, and shuts down
//! gracefully (ticks in progress finish, then the journal is flushed).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
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

    /// The scalers, in config order. Tests step them with
    /// [`Scaler::tick`] on a clock of their own instead of [`Daemon::run`].
    pub fn scalers_mut(&mut self) -> &mut [Scaler] {
        &mut self.scalers
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

/// Runs one scaler's ticks on its interval until cancelled. Ticks fall on
/// the scaler's grid ([`next_tick_ms`]), so many scalers do not tick in
/// lockstep and a restarted daemon keeps each scaler's phase.
async fn run_scaler(
    mut scaler: Scaler,
    clock: Clock,
    telemetry: Arc<Telemetry>,
    token: CancellationToken,
) {
    let interval_ms = (scaler.spec().interval.as_millis() as i64).max(1);
    let mut next = next_tick_ms(&scaler.spec().name, interval_ms, clock.now_ms());
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

/// Where in its interval a scaler ticks: a stable offset in
/// `[0, interval)` derived from its name, the same in every run and build.
pub fn tick_offset_ms(name: &str, interval_ms: i64) -> i64 {
    let interval_ms = interval_ms.max(1);
    let digest = Sha256::digest(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_le_bytes(first) % interval_ms as u64) as i64
}

/// The scaler's first scheduled tick at or after `now_ms`. A scaler ticks at
/// [`tick_offset_ms`] past every multiple of its interval (host clock), so
/// its schedule does not depend on when the daemon started; how late a tick
/// started is `(time - offset) mod interval`.
pub fn next_tick_ms(name: &str, interval_ms: i64, now_ms: i64) -> i64 {
    let interval_ms = interval_ms.max(1);
    let past_grid = (now_ms - tick_offset_ms(name, interval_ms)).rem_euclid(interval_ms);
    if past_grid == 0 {
        now_ms
    } else {
        now_ms + (interval_ms - past_grid)
    }
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
    if metric.source == "simulator" {
        let own = scaler.target.get_ref().simulation();
        let source = SimulatorSource::new(simulation.clone(), own)
            .map_err(|e| DaemonError::Setup(e.to_string()))?;
        return Ok(("simulator".into(), Arc::new(source)));
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
    fn ticks_fall_on_a_stable_grid_per_scaler() {
        let interval = 15_000;
        let offset = tick_offset_ms("web", interval);
        assert!((0..interval).contains(&offset));
        assert_eq!(offset, tick_offset_ms("web", interval), "stable");
        assert_ne!(
            (0..20)
                .map(|i| tick_offset_ms(&format!("svc-{i}"), interval))
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            1,
            "scalers are spread over the interval"
        );
        let grid = 1_700_000_000_000 - 1_700_000_000_000 % interval + offset;
        // (now, first tick at or after it)
        let cases = [
            (grid, grid),
            (grid - 1, grid),
            (grid + 1, grid + interval),
            (grid - interval + 1, grid),
            (grid + interval, grid + interval),
        ];
        for (now, want) in cases {
            assert_eq!(next_tick_ms("web", interval, now), want, "now {now}");
        }
        // A restarted daemon keeps the scaler's phase.
        for now in [grid + 7, grid + 3 * interval + 1_234] {
            assert_eq!(
                (next_tick_ms("web", interval, now) - offset).rem_euclid(interval),
                0
            );
        }
    }
}
