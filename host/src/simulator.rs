//! The simulator: simulated services, so the whole control loop runs with no
//! external system (the embedded demo and many tests use it).
//!
//! A [`SimulatedService`] has an offered load (a synthetic curve with a daily
//! wave, spikes and noise, or a recorded trace), replicas that become ready
//! after a start-up delay, and the metrics a real service would report,
//! derived from load and ready replicas (see [`Metric`]). A [`Simulation`]
//! holds every `[simulations.<name>]` of a config; the scalers read it through
//! the [`SimulatorSource`](crate::sources::simulator::SimulatorSource) and
//! scale it through the
//! [`SimulatorActuator`](crate::actuators::simulator::SimulatorActuator).
//!
//! Everything is deterministic given the seed: all times are host-clock ms
//! passed in (the simulator never reads a clock), state changes only on a
//! fixed one-second grid, and the noise of each grid step is drawn from its
//! own ChaCha stream.

mod load;
mod service;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use toml::Spanned;

use crate::config::SimulationConfig;

pub use load::{LoadModel, Trace, TraceWriteError, WrittenTrace, write_trace};
pub use service::{
    ActuatorFault, DEFAULT_HISTORY_MS, MAX_LATENCY_MS, MAX_POINTS, MetricFault, Sample,
    ServiceParams, SimulatedService, StepState, derive,
};

/// The simulator's internal step (host-clock ms): state is integrated, noise
/// drawn and history kept at this resolution.
pub const STEP_MS: i64 = 1_000;

/// Why a simulation could not be built or queried.
#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    /// A `[simulations.<service>]` setting is invalid.
    #[error("simulation `{service}`: {field}: {message}")]
    Config {
        /// The simulated service.
        service: String,
        /// The field, e.g. `load.spikes[1].extra`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A trace file could not be read.
    #[error("trace {}: {source}", path.display())]
    TraceRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A trace file is not a valid `timestamp_s,requests` CSV.
    #[error("trace {}:{line}: {message}", path.display())]
    TraceFormat {
        /// The file.
        path: PathBuf,
        /// The 1-based line.
        line: u64,
        /// What is wrong there.
        message: String,
    },
    /// A query names a metric the simulator does not have.
    #[error("unknown simulated metric `{0}`; known metrics: {known}", known = Metric::names())]
    UnknownMetric(String),
    /// A query or target names a service that is not simulated.
    #[error("unknown simulated service `{service}`; known services: {known}")]
    UnknownService {
        /// The name asked for.
        service: String,
        /// The services there are, comma-separated.
        known: String,
    },
    /// A query without a service name where there is no default service.
    #[error(
        "`{0}` names no simulated service and this scaler's target is not simulated; \
         write `service/{0}`"
    )]
    NoService(String),
    /// A window or step that cannot be served.
    #[error("{0}")]
    BadQuery(String),
}

impl SimulatorError {
    /// A fixed, small label for the host's metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SimulatorError::Config { .. } => "config",
            SimulatorError::TraceRead { .. } => "trace_read",
            SimulatorError::TraceFormat { .. } => "trace_format",
            SimulatorError::UnknownMetric(_) => "unknown_metric",
            SimulatorError::UnknownService { .. } => "unknown_service",
            SimulatorError::NoService(_) => "no_service",
            SimulatorError::BadQuery(_) => "bad_query",
        }
    }
}

/// A metric of a simulated service, as named in queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// `cpu`: utilisation of the ready replicas, percent (0–100).
    Cpu,
    /// `load`: offered load, requests/s.
    Load,
    /// `throughput`: requests served, requests/s.
    Throughput,
    /// `in_flight`: requests in flight (served and waiting).
    InFlight,
    /// `queue_depth`: requests waiting for a replica.
    QueueDepth,
    /// `p95_latency_ms`: request latency, ms, as a queueing model's mean
    /// time in the service (a lower bound for a real p95 under load).
    P95LatencyMs,
    /// `replicas`: replicas asked for.
    Replicas,
    /// `ready`: replicas running and ready.
    Ready,
}

impl Metric {
    /// Every metric, in documentation order.
    pub const ALL: [Metric; 8] = [
        Metric::Cpu,
        Metric::Load,
        Metric::Throughput,
        Metric::InFlight,
        Metric::QueueDepth,
        Metric::P95LatencyMs,
        Metric::Replicas,
        Metric::Ready,
    ];

    /// The name used in queries.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cpu => "cpu",
            Metric::Load => "load",
            Metric::Throughput => "throughput",
            Metric::InFlight => "in_flight",
            Metric::QueueDepth => "queue_depth",
            Metric::P95LatencyMs => "p95_latency_ms",
            Metric::Replicas => "replicas",
            Metric::Ready => "ready",
        }
    }

    /// The unit of its values.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::Cpu => "percent",
            Metric::Load | Metric::Throughput => "requests/s",
            Metric::InFlight | Metric::QueueDepth => "requests",
            Metric::P95LatencyMs => "ms",
            Metric::Replicas | Metric::Ready => "replicas",
        }
    }

    /// All names, comma-separated, for error messages.
    pub fn names() -> String {
        Metric::ALL.map(Metric::as_str).join(", ")
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Metric {
    type Err = SimulatorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Metric::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| SimulatorError::UnknownMetric(s.to_owned()))
    }
}

/// Splits a simulator query, `metric` or `service/metric`, into the service
/// it names (if any) and the metric.
pub fn parse_query(query: &str) -> Result<(Option<&str>, Metric), SimulatorError> {
    let query = query.trim();
    match query.split_once('/') {
        Some((service, metric)) => Ok((Some(service.trim()), metric.trim().parse()?)),
        None => Ok((None, query.parse()?)),
    }
}

/// A simulated service shared by the sources and the actuator that use it.
#[derive(Debug, Clone)]
pub struct SharedService {
    name: Arc<str>,
    inner: Arc<Mutex<SimulatedService>>,
}

impl SharedService {
    /// Shares `service`.
    pub fn new(service: SimulatedService) -> Self {
        SharedService {
            name: service.name().into(),
            inner: Arc::new(Mutex::new(service)),
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Locks the service. Every method of [`SimulatedService`] leaves it
    /// consistent, so a panic elsewhere while it was locked does not make
    /// it unusable.
    pub fn lock(&self) -> MutexGuard<'_, SimulatedService> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// All simulated services of a config, by name. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Simulation {
    services: Arc<BTreeMap<String, SharedService>>,
}

impl Simulation {
    /// Builds every `[simulations.<name>]`, starting at `start_ms`. Trace
    /// paths are resolved against `config_dir`; services playing the same
    /// file share one copy of it.
    pub fn from_config(
        simulations: &BTreeMap<String, Spanned<SimulationConfig>>,
        config_dir: &Path,
        start_ms: i64,
    ) -> Result<Self, SimulatorError> {
        let mut traces: HashMap<PathBuf, Arc<Trace>> = HashMap::new();
        let mut services = Vec::with_capacity(simulations.len());
        for (name, cfg) in simulations {
            let cfg = cfg.get_ref();
            let trace = match &cfg.load.trace {
                Some(t) => {
                    let path = config_dir.join(&t.path);
                    let trace = match traces.get(&path) {
                        Some(trace) => trace.clone(),
                        None => Arc::new(Trace::load(&path)?),
                    };
                    traces.insert(path, trace.clone());
                    Some(trace)
                }
                None => None,
            };
            services.push(SimulatedService::with_trace(name, cfg, trace, start_ms)?);
        }
        Ok(Simulation::new(services))
    }

    /// A simulation of the given services.
    pub fn new(services: impl IntoIterator<Item = SimulatedService>) -> Self {
        Simulation {
            services: Arc::new(
                services
                    .into_iter()
                    .map(|s| (s.name().to_owned(), SharedService::new(s)))
                    .collect(),
            ),
        }
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Result<SharedService, SimulatorError> {
        self.services
            .get(name)
            .cloned()
            .ok_or_else(|| SimulatorError::UnknownService {
                service: name.to_owned(),
                known: self.names().collect::<Vec<_>>().join(", "),
            })
    }

    /// Whether there is a service called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.services.contains_key(name)
    }

    /// The services' names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(String::as_str)
    }

    /// Keeps at least `history_ms` of history in every service (the longest
    /// window any scaler asks for).
    pub fn set_history(&self, history_ms: i64) {
        for service in self.services.values() {
            service.lock().set_history(history_ms);
        }
    }

    /// Checks that `query` names a known metric of a known service; `own`
    /// is the scaler's simulated target, if it has one. For config
    /// validation, before anything runs.
    pub fn check_query(&self, query: &str, own: Option<&str>) -> Result<(), SimulatorError> {
        self.resolve(query, own).map(|_| ())
    }

    /// The service and metric `query` names; a bare metric is `own`'s.
    pub fn resolve(
        &self,
        query: &str,
        own: Option<&str>,
    ) -> Result<(SharedService, Metric), SimulatorError> {
        let (service, metric) = parse_query(query)?;
        let service = service
            .or(own)
            .ok_or_else(|| SimulatorError::NoService(metric.as_str().to_owned()))?;
        Ok((self.service(service)?, metric))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[test]
    fn queries_name_a_metric_and_maybe_a_service() {
        let cases = [
            ("cpu", Ok((None, Metric::Cpu))),
            (" p95_latency_ms ", Ok((None, Metric::P95LatencyMs))),
            ("web/queue_depth", Ok((Some("web"), Metric::QueueDepth))),
            ("web/in_flight", Ok((Some("web"), Metric::InFlight))),
            ("memory", Err("unknown simulated metric `memory`")),
            (
                "web/cpu_percent",
                Err("unknown simulated metric `cpu_percent`"),
            ),
        ];
        for (query, want) in cases {
            match (parse_query(query), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{query}"),
                (Err(err), Err(want)) => {
                    let shown = err.to_string();
                    assert!(shown.starts_with(want), "{query}: {shown}");
                    assert!(
                        shown.contains("known metrics: cpu, load, throughput"),
                        "{shown}"
                    );
                }
                (got, _) => panic!("{query}: {got:?}"),
            }
        }
        for m in Metric::ALL {
            assert_eq!(m.as_str().parse::<Metric>().unwrap(), m);
        }
    }

    #[derive(Deserialize)]
    struct Simulations {
        simulations: BTreeMap<String, Spanned<SimulationConfig>>,
    }

    fn simulations(toml_text: &str) -> BTreeMap<String, Spanned<SimulationConfig>> {
        toml::from_str::<Simulations>(toml_text)
            .unwrap()
            .simulations
    }

    const CONFIG: &str = r#"
        [simulations.web]
        seed = 1
        capacity_per_replica = 50
        initial_replicas = 2
        startup_delay = "30s"
        load = { base = 100, diurnal_amplitude = 40, diurnal_period = "1h", noise = 0.05 }

        [simulations.nasa]
        capacity_per_replica = 2
        initial_replicas = 1
        load = { trace = { path = "traces/nasa_jul95_per_minute.csv", scale = 2.0, speed = 60 } }

        [simulations.nasa-copy]
        capacity_per_replica = 2
        initial_replicas = 1
        load = { trace = { path = "traces/nasa_jul95_per_minute.csv" } }
    "#;

    fn data_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data")
    }

    #[test]
    fn a_simulation_holds_every_configured_service() {
        let sim = Simulation::from_config(&simulations(CONFIG), &data_dir(), 0).unwrap();
        assert_eq!(
            sim.names().collect::<Vec<_>>(),
            ["nasa", "nasa-copy", "web"]
        );
        let web = sim.service("web").unwrap();
        assert_eq!(web.name(), "web");
        assert_eq!(web.lock().replicas(0), (2, 2));
        // The trace, 60× faster and doubled: the launch spike 1072140 s in.
        let nasa = sim.service("nasa").unwrap();
        let load = nasa.lock().load_at(1_072_140_000 / 60);
        assert!((load - 409.0 / 60.0 * 2.0).abs() < 1e-9, "{load}");

        let (svc, metric) = sim.resolve("cpu", Some("web")).unwrap();
        assert_eq!((svc.name(), metric), ("web", Metric::Cpu));
        let (svc, metric) = sim.resolve("nasa/load", Some("web")).unwrap();
        assert_eq!((svc.name(), metric), ("nasa", Metric::Load));
        let err = sim.check_query("db/cpu", Some("web")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown simulated service `db`; known services: nasa, nasa-copy, web"
        );
        assert_eq!(
            sim.check_query("cpu", None).unwrap_err().kind(),
            "no_service"
        );
    }

    #[test]
    fn a_missing_trace_names_the_resolved_path() {
        let cfg = CONFIG.replace("traces/nasa_jul95", "traces/nope");
        let err = Simulation::from_config(&simulations(&cfg), &data_dir(), 0).unwrap_err();
        assert_eq!(err.kind(), "trace_read");
        let shown = err.to_string();
        assert!(
            shown.contains(
                &data_dir()
                    .join("traces/nope_per_minute.csv")
                    .display()
                    .to_string()
            ),
            "{shown}"
        );
    }
}
