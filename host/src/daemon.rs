//! The daemon: builds every part from a validated config, runs each scaler
//! on its own interval as its own task, serves the API, keeps the policy
//! modules and the config in step with their files (hot reload), and shuts
//! down gracefully (ticks in progress finish, then the journal is flushed).
//!
//! Config reload (SIGHUP, or the file changing when `[watch]` is on): the
//! file is read and validated as at start, and checked against the modules
//! loaded now; an invalid one is refused (logged with file:line, counted in
//! `scalewise_config_reloads_total{result="refused"}`, shown by
//! `GET /v1/config`) and the running config stays. A valid one is applied
//! between ticks: scalers are added, removed or changed (a changed scaler
//! keeps its envelope history and each policy's state where the policy at
//! that position names the same module). `policy_dir`, `[runtime]`, `[api]`,
//! `[journal]`, `[clock]`, `[simulations]` and `[watch]` are read only at
//! start: a change to them is logged as needing a restart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::actuators::Actuator;
use crate::actuators::aws_asg::AwsAsgActuator;
use crate::actuators::clients::TargetClients;
use crate::actuators::kubernetes::KubernetesActuator;
use crate::actuators::rebalance::RebalanceActuator;
use crate::actuators::simulator::SimulatorActuator;
use crate::api::{self, ApiAccess, AppState};
use crate::clock::{Clock, wall_clock_ms};
use crate::config::{
    Config, ConfigError, DefaultsNeeded, Fingerprint, MetricConfig, NotificationConfig,
    SIMULATOR_SOURCE, ScalerConfig, SourceConfig, TargetConfig, TargetDefaults, toml_to_json,
};
use crate::journal::{Durability, Journal, JournalOptions, TickRecord};
use crate::leader::{Elector, Leadership, Pauses, RecordError};
use crate::notify::{Notifier, Webhooks};
use crate::policy::PolicyInfo;
use crate::registry::{INCOMPATIBLE_WITH_CONFIG, Registry, ReloadReport, Snapshot};
use crate::runtime::{Compiler, Runtime};
use crate::scaler::{BoundMetric, BoundPolicy, Scaler, ScalerHandle, ScalerSpec, Services};
use crate::simulator::Simulation;
use crate::sources::prometheus::PrometheusSource;
use crate::sources::simulator::SimulatorSource;
use crate::sources::target::{TARGET_SOURCE, TargetHistory, TargetSource};
use crate::sources::{MetricQuery, Source};
use crate::telemetry::{ScalerHandles, Telemetry};
use crate::watch::{FileStamp, FolderWatch, Watched};

mod applied;
pub(crate) mod trial;
use applied::Applied;

/// How long shutdown waits for ticks in progress before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long stopping may wait for the Lease's release.
const LEASE_RELEASE_GRACE: Duration = Duration::from_secs(5);
/// How long shutdown then waits for notifications still being delivered
/// (a retry or two; Kubernetes gives a pod 30 s in all by default).
const NOTIFY_GRACE: Duration = Duration::from_secs(10);

/// The compiled-code cache's folder when `[runtime] cache_dir` is not set:
/// next to the journal.
pub const DEFAULT_CACHE_DIR_NAME: &str = "scalewise-cache";

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

impl DaemonError {
    /// A fixed label for this kind of error.
    pub fn kind(&self) -> &'static str {
        match self {
            DaemonError::Config(e) => e.kind(),
            DaemonError::Setup(_) => "setup",
            DaemonError::Listen { .. } => "listen",
        }
    }
}

/// The config the daemon runs with, as `GET /v1/config` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigStatus {
    /// The config file (`<embedded demo.toml>` for the demo).
    pub path: String,
    /// sha256 of the text applied, hex.
    pub digest: String,
    /// When it was applied (wall clock, ms since the Unix epoch).
    pub applied_at_ms: i64,
    /// Whether SIGHUP or a change to the file reloads it.
    pub reload_enabled: bool,
    /// Reloads applied since start.
    pub reloads: u64,
    /// Settings changed in the file that take effect only at a restart.
    pub restart_required: Vec<String>,
    /// The last reload that was refused, if it is newer than the last one
    /// applied.
    pub last_error: Option<ReloadFailure>,
}

/// A refused config reload.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadFailure {
    /// When (wall clock, ms since the Unix epoch).
    pub at_ms: i64,
    /// A fixed label (`read`, `parse`, `invalid`, `setup`).
    pub kind: &'static str,
    /// Every problem, one per line, each with file:line:column.
    pub error: String,
    /// The located problems.
    pub problems: Vec<ProblemView>,
}

/// One located problem of a refused config.
#[derive(Debug, Clone, Serialize)]
pub struct ProblemView {
    /// The file.
    pub file: String,
    /// 1-based line (0: unknown).
    pub line: usize,
    /// 1-based column (0: unknown).
    pub column: usize,
    /// The table it is in.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Where a reloaded config comes from.
#[derive(Debug, Clone)]
struct ReloadSource {
    path: PathBuf,
    listen_override: Option<SocketAddr>,
    /// The file's stamp from before it was read ([`ReloadStart`]).
    stamp: Option<FileStamp>,
}

/// What config reload needs from before the config file is first read, so
/// that nothing in a long start (compiling modules, restoring scalers) is
/// missed: SIGHUP is caught from then on (its default action would kill the
/// daemon) and kept for when it runs, and an edit made meanwhile is seen
/// (the stamp the watcher compares with is the one before the read).
#[derive(Debug)]
pub struct ReloadStart {
    stamp: Option<FileStamp>,
    #[cfg(unix)]
    hangups: Option<tokio::signal::unix::Signal>,
}

impl ReloadStart {
    /// Takes `path`'s stamp and starts catching SIGHUP (within a tokio
    /// runtime): call it before reading the config file.
    pub fn begin(path: &Path) -> Self {
        #[cfg(unix)]
        let hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hangups) => Some(hangups),
            Err(err) => {
                tracing::warn!(error = %err, "Cannot listen for SIGHUP; the config reloads only when its file changes.");
                None
            }
        };
        ReloadStart {
            stamp: FileStamp::of(path).ok(),
            #[cfg(unix)]
            hangups,
        }
    }
}

/// What asked for a config reload.
#[derive(Debug, Clone, Copy)]
enum ReloadTrigger {
    Signal,
    File,
    /// A module version was refused for not fitting the running config
    /// while the config file holds a refused change: the two may fit each
    /// other (a parameter renamed in both, config first).
    Module,
}

/// A changed scaler config, applied by the scaler's own task between ticks.
struct Reconfigure {
    spec: ScalerSpec,
    /// A new actuator for a changed target; `None` keeps the scaler's own.
    actuator: Option<Arc<dyn Actuator>>,
    /// Whether the new actuator is for the same target with other settings:
    /// it takes over the old one's change in flight.
    same_target: bool,
    /// For a move to another target: released (dropped) once the scaler
    /// has let go of the target it leaves (its change in flight there
    /// given up), so that a scaler added on that target waits for it, as
    /// for a removed one. However the update goes (applied, replaced, its
    /// task ended or panicked), dropping it releases. Set by
    /// [`ScalerSet::reconfigure`].
    released: Option<Release>,
    /// For a move onto a target: the scalers that were on it (removed, or
    /// moved off it, by this reload or an earlier one) and may not have let
    /// go of it yet. The scaler waits for them before its next tick, as an
    /// added one does. Set by [`ScalerSet::reconfigure`].
    predecessors: Vec<Arc<Control>>,
}

/// Marks a move's marker finished when dropped.
struct Release(Arc<Control>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.finished.store(true, Ordering::Release);
    }
}

/// A daemon built from a config, ready to run.
#[derive(Debug)]
pub struct Daemon {
    /// The settings of the config as started ([`Config::settings`]): what
    /// restart-only settings are.
    config: Arc<Config>,
    /// The started config's `[simulations]`, as a fingerprint.
    simulations: Fingerprint,
    /// What is kept of the config applied now; the module gate reads it.
    applied: Arc<ArcSwap<Applied>>,
    clock: Clock,
    registry: Arc<Registry>,
    journal: Journal,
    telemetry: Arc<Telemetry>,
    simulation: Simulation,
    /// The Kubernetes and AWS clients the targets share, kept across reloads.
    clients: TargetClients,
    sources: NamedSources,
    services: Services,
    scalers: Vec<Scaler>,
    handles: Arc<ArcSwap<BTreeMap<String, Arc<ScalerHandle>>>>,
    decisions: broadcast::Sender<Arc<TickRecord>>,
    ready: Arc<AtomicBool>,
    config_status: Arc<ArcSwap<ConfigStatus>>,
    /// Who may read, and pause and resume scalers, through the API
    /// (`[api] token`, `reads`).
    access: Arc<ApiAccess>,
    /// The config's pause flags a reload could not record in the Lease yet.
    lease_pauses: Arc<LeasePauses>,
    /// The API's TLS settings, with `[api] tls`.
    tls: Option<Arc<rustls::ServerConfig>>,
    reload: Option<ReloadSource>,
    /// SIGHUP, listened for since before the config file was read.
    #[cfg(unix)]
    hangups: Option<tokio::signal::unix::Signal>,
    /// This replica's part in leader election, when `[leader_election]` is
    /// set; run by [`Daemon::run`].
    elector: Option<Elector>,
    /// The `[[notifications]]` in force (a reload may change them).
    notifications: Vec<NotificationConfig>,
}

impl Daemon {
    /// Builds every part: the runtime and its modules, the journal, the
    /// simulations, sources, actuators and scalers (restored from the
    /// journal). Checks the config against the loaded modules first, so a
    /// config naming an unknown module, parameter or metric is refused here.
    /// Modules are compiled in this process.
    pub async fn build(config: Config, clock: Clock) -> Result<Daemon, DaemonError> {
        Daemon::build_with_compiler(config, clock, Compiler::InProcess).await
    }

    /// [`Daemon::build`], compiling policy modules (at start and on every
    /// hot reload) where `compiler` says. `scalewise run` compiles in a
    /// child process of its own binary ([`Compiler::this_binary`]).
    pub async fn build_with_compiler(
        config: Config,
        clock: Clock,
        compiler: Compiler,
    ) -> Result<Daemon, DaemonError> {
        Daemon::build_inner(config, clock, compiler, Durability::Full).await
    }

    /// [`Daemon::build`] for a backtest (`scalewise simulate`): the journal
    /// is a run's scratch record, so an append is acknowledged once it is in
    /// SQLite's log, without waiting for an fsync ([`Durability::Normal`]).
    pub async fn build_for_simulation(config: Config, clock: Clock) -> Result<Daemon, DaemonError> {
        Daemon::build_inner(config, clock, Compiler::InProcess, Durability::Normal).await
    }

    async fn build_inner(
        config: Config,
        clock: Clock,
        compiler: Compiler,
        durability: Durability,
    ) -> Result<Daemon, DaemonError> {
        for warning in config.warnings() {
            tracing::warn!(%warning, "The config has a value that may not work as intended; starting anyway.");
        }
        let clients = TargetClients::default();
        let defaults = target_defaults(&config, DefaultsNeeded::default(), &clients).await;
        config.check_resolved_targets(&defaults)?;
        let telemetry = Arc::new(Telemetry::new());
        let mut limits = config.runtime.clone();
        if limits.cache_dir.is_none() {
            limits.cache_dir = Some(default_cache_dir(&config.journal.path));
        }
        let runtime = Runtime::with_compiler(limits, compiler)
            .map_err(|e| DaemonError::Setup(format!("cannot start the policy runtime: {e}")))?;
        let policy_dir = config.policy_dir.get_ref().clone();
        let registry =
            tokio::task::spawn_blocking(move || Registry::load_dir(runtime, &policy_dir))
                .await
                .map_err(|e| DaemonError::Setup(e.to_string()))?
                .map_err(|e| DaemonError::Setup(e.to_string()))?;
        let registry = Arc::new(registry);
        // A version that replaced, while the daemon was down, the one the
        // scalers last ran, and that the config does not fit: refused as a
        // running daemon refuses it (its scalers hold), not the whole start.
        // The journal is asked read-only: a config refused leaves no
        // journal behind.
        if config.check_policies(&*registry.snapshot()).is_err()
            && let Ok(past) = Journal::open_read_only(&config.journal.path)
        {
            for (module, why) in replaced_unfit(&config, &registry, &past).await? {
                registry.refuse_loaded(&module, why);
            }
        }
        let trials = {
            let snapshot = registry.snapshot();
            telemetry.modules_loaded.set(snapshot.modules.len() as i64);
            for (name, module) in &snapshot.modules {
                telemetry.module_loaded(name, module.origin().as_str());
            }
            for (name, failure) in &snapshot.failures {
                telemetry.module_load_error(name, failure.kind);
            }
            // A module whose file failed to load is not an error here: its
            // scalers hold, saying why, until a good version is dropped in.
            config.check_policies(&*snapshot)?;
            trial::idle_trials(&config, &snapshot, None)
        };
        let now_ms = clock.now_ms();
        let found = tokio::task::spawn_blocking(move || trial::run_trials(trials, now_ms))
            .await
            .map_err(|e| DaemonError::Setup(format!("trying the policies panicked: {e}")))?;
        for warning in config.params_warnings(&found) {
            tracing::warn!(%warning, "A policy failed its first trial; starting all the same.");
        }
        let journal = Journal::open_with(
            &config.journal.path,
            JournalOptions {
                clock,
                commit_delay: config.journal.commit_delay,
                durability,
                ..JournalOptions::new(config.journal.retention)
            },
        )
        // The config's field, so the operator knows what to change (a
        // backtest's journal is its --journal, or a scratch file).
        .map_err(|e| {
            DaemonError::Setup(match durability {
                Durability::Full => {
                    format!("{}: [journal] path: {e}", config.origin().path().display())
                }
                Durability::Normal => format!("the simulation's journal: {e}"),
            })
        })?;
        warn_of_orphaned_changes(&config, &journal).await;
        let simulation =
            Simulation::from_config(&config.simulations, config.origin().dir(), clock.now_ms())
                .map_err(|e| DaemonError::Setup(e.to_string()))?;
        // Keep only as much simulated history as the longest window needs.
        simulation.set_history(longest_window_ms(&config));
        let (decisions, _) = broadcast::channel(1024);
        let (leadership, elector) = match &config.leader_election {
            None => (
                Leadership::always().reported_to(telemetry.leader.clone()),
                None,
            ),
            Some(settings) => {
                let leadership = Leadership::elected().reported_to(telemetry.leader.clone());
                // The Kubernetes targets' client: one set of connections
                // and credentials for the process.
                let client = clients
                    .kube()
                    .await
                    .map_err(|e| DaemonError::Setup(format!("[leader_election]: {e}")))?;
                let mut elector = Elector::new(settings.clone(), client, leadership.clone());
                let (handles, journal) = (telemetry.scalers(), journal.clone());
                elector.on_takeover(Arc::new(move |pauses| {
                    let (handles, journal) = (handles.clone(), journal.clone());
                    Box::pin(async move { apply_lease_pauses(&journal, &handles, pauses).await })
                }));
                tracing::info!(
                    identity = elector.identity(),
                    lease = %settings.lease,
                    "Leader election is on: this replica acts only while it holds the lease."
                );
                (leadership, Some(elector))
            }
        };
        let notifications: Vec<_> = config
            .notifications
            .iter()
            .map(|n| n.get_ref().clone())
            .collect();
        let webhooks = Webhooks::build(&notifications).map_err(DaemonError::Setup)?;
        let notifier = Some(Notifier::start(
            webhooks,
            telemetry.clone(),
            Some(journal.clone()),
        ));
        let access = Arc::new(ApiAccess::from_config(&config.api).map_err(DaemonError::Setup)?);
        let tls = config
            .api
            .tls
            .as_ref()
            .map(api::tls::server_config)
            .transpose()
            .map_err(|e| DaemonError::Setup(format!("api.tls: {e}")))?;
        let services = Services {
            registry: registry.clone(),
            journal: journal.clone(),
            telemetry: telemetry.clone(),
            decisions: decisions.clone(),
            leadership,
            notifier,
        };

        let sources = build_named_sources(&config)?;
        let now_ms = clock.now_ms();
        let mut scalers = Vec::with_capacity(config.scalers.len());
        let mut params = SharedParams::default();
        for scaler_config in &config.scalers {
            let scaler_config = scaler_config.get_ref();
            let scaler = build_scaler(
                &sources,
                &mut params,
                scaler_config,
                &simulation,
                &clients,
                services.clone(),
                now_ms,
            )
            .await?;
            scalers.push(scaler);
        }
        // One map for the API and the per-scaler metrics.
        let handles = telemetry.scalers();
        handles.store(Arc::new(
            scalers
                .iter()
                .map(|s| (s.spec().name.clone(), s.handle()))
                .collect(),
        ));
        // Of the parsed config only its settings are kept, and of its
        // scalers what tells a reload's changes apart.
        let applied = Arc::new(ArcSwap::from_pointee(Applied::of(&config)));
        registry.set_gate(config_gate(applied.clone()));
        let simulations = config.simulations_fingerprint();
        let config = Arc::new(config.settings());
        let config_status = Arc::new(ArcSwap::from_pointee(ConfigStatus {
            path: config.origin().path().display().to_string(),
            digest: config.origin().digest().to_owned(),
            applied_at_ms: wall_clock_ms(),
            ..ConfigStatus::default()
        }));
        Ok(Daemon {
            config,
            simulations,
            applied,
            clock,
            registry,
            journal,
            telemetry,
            simulation,
            clients,
            sources,
            services,
            scalers,
            handles,
            decisions,
            ready: Arc::new(AtomicBool::new(false)),
            config_status,
            access,
            lease_pauses: Arc::default(),
            tls,
            reload: None,
            #[cfg(unix)]
            hangups: None,
            elector,
            notifications,
        })
    }

    /// Re-reads the config from the file it was loaded from on SIGHUP and,
    /// when `[watch]` is on, whenever the file changes. `listen_override`
    /// (the `--listen` flag) keeps overriding `[api] listen`.
    pub fn enable_config_reload(
        &mut self,
        listen_override: Option<SocketAddr>,
        start: ReloadStart,
    ) {
        let path = self.config.origin().path().to_path_buf();
        self.reload = Some(ReloadSource {
            stamp: start.stamp,
            path,
            listen_override,
        });
        #[cfg(unix)]
        {
            self.hangups = start.hangups;
        }
        self.config_status.rcu(|status| ConfigStatus {
            reload_enabled: true,
            ..(**status).clone()
        });
    }

    /// The state the HTTP API serves from.
    pub fn app_state(&self) -> AppState {
        AppState {
            scalers: self.handles.clone(),
            registry: self.registry.clone(),
            journal: self.journal.clone(),
            telemetry: self.telemetry.clone(),
            ready: self.ready.clone(),
            config: self.config_status.clone(),
            access: self.access.clone(),
            leadership: self.services.leadership.clone(),
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

    /// The loaded policy modules.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The host's metrics.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// The settings of the config the daemon started with: all of it but
    /// its `[[scalers]]` and `[simulations]` ([`Config::settings`]).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The scalers, in config order. Tests step them with
    /// [`Scaler::tick`] on a clock of their own instead of [`Daemon::run`].
    pub fn scalers_mut(&mut self) -> impl Iterator<Item = &mut Scaler> {
        self.scalers.iter_mut()
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
    /// ticks in progress finish and flushes the journal. Meanwhile the
    /// policy folder is watched (`[watch]`) and, when enabled, the config
    /// is reloaded on SIGHUP or when its file changes.
    pub async fn run(
        mut self,
        listener: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), DaemonError> {
        let token = CancellationToken::new();
        let state = self.app_state();
        let api_task = listener.map(|listener| {
            let writes = if state.access.has_token() {
                "with the API token"
            } else {
                "from loopback only"
            };
            let reads = if state.access.reads_need_token() {
                "with the API token"
            } else {
                "open"
            };
            let router = api::router(state);
            let token = token.clone();
            tracing::info!(
                addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                scheme = if self.tls.is_some() { "https" } else { "http" },
                writes,
                reads,
                "The HTTP API is listening."
            );
            let tls = self.tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => api::serve::serve(listener, router, token).await,
                    Some(tls) => match api::tls::TlsListener::new(listener, tls) {
                        Ok(listener) => api::serve::serve(listener, router, token).await,
                        Err(error) => tracing::error!(%error, "The HTTP API stopped."),
                    },
                }
            })
        });

        // Stopped only after the last tick finished, so a successor never
        // acts while this replica still does.
        let election_stop = CancellationToken::new();
        let election = self
            .elector
            .take()
            .map(|elector| tokio::spawn(elector.run(election_stop.clone())));
        let (reload_tx, mut reload_rx) = mpsc::unbounded_channel();
        let _policy_watch = self.watch_policies(&reload_tx)?;
        let mut set = ScalerSet {
            tasks: tokio::task::JoinSet::new(),
            running: BTreeMap::new(),
            stopping: Vec::new(),
            clock: self.clock,
            telemetry: self.telemetry.clone(),
        };
        // What the webhooks were owed when this process last stopped is
        // queued again (off this task: a large backlog waits for room). It
        // is read before any scaler ticks, so that what one notifies now is
        // not read back as owed as well and sent twice.
        if let Some(notifier) = self.services.notifier.clone() {
            let owed = notifier.read_owed().await;
            tokio::spawn(async move { notifier.queue_owed(owed).await });
        }
        let applied = self.applied.load_full();
        for scaler in std::mem::take(&mut self.scalers) {
            let claim = applied.scalers[scaler.spec().name.as_str()].claim;
            set.spawn(scaler, claim);
        }
        let _config_watch = self.watch_config(&reload_tx)?;
        #[cfg(unix)]
        if let Some(hangups) = self.hangups.take() {
            listen_for_sighup(hangups, reload_tx.clone(), token.clone());
        }
        self.ready.store(true, Ordering::Relaxed);
        tracing::info!(scalers = set.running.len(), "Scalewise is running.");

        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                // Looked at first: a stop signal is never left for a reload
                // queued beside it.
                biased;
                _ = &mut shutdown => break,
                Some(trigger) = reload_rx.recv() => self.reload_config(trigger, &mut set).await,
            }
        }
        tracing::info!("Shutting down: letting ticks in progress finish.");
        token.cancel();
        set.stop_all();
        // Stopped off this task and not waited for: a watcher compiling a
        // new module version (up to its compile timeout) would hold the
        // shutdown back, on a thread of the async runtime.
        let watches = (_policy_watch, _config_watch);
        let _ = std::thread::Builder::new()
            .name("scalewise-unwatch".into())
            .spawn(move || drop(watches));
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while set.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("Some ticks did not finish within the grace period.");
            set.tasks.abort_all();
        }
        election_stop.cancel();
        // Before the Lease is released: a write of it now would race the
        // release.
        self.lease_pauses.stop.cancel();
        if let Some(election) = election {
            // Releasing the Lease lets a successor take it at once; an API
            // server that does not answer within LEASE_RELEASE_GRACE makes
            // it wait out the lease's duration instead.
            if tokio::time::timeout(LEASE_RELEASE_GRACE, election)
                .await
                .is_err()
            {
                tracing::warn!(
                    "The lease was not released in time; another replica takes it once it expires."
                );
            }
        }
        if let Some(api_task) = api_task {
            let _ = api_task.await;
        }
        if let Some(notifier) = &self.services.notifier {
            let left = notifier.drain(NOTIFY_GRACE).await;
            if left > 0 {
                tracing::warn!(
                    left,
                    "Stopping with notifications undelivered: their webhooks did not answer \
                     within {}. The journal keeps them; they are sent at the next start.",
                    humantime::format_duration(NOTIFY_GRACE)
                );
            }
        }
        self.journal
            .close()
            .await
            .map_err(|e| DaemonError::Setup(format!("cannot flush the journal: {e}")))?;
        tracing::info!("Scalewise stopped; the journal is flushed.");
        Ok(())
    }

    /// Starts watching the policy folder, when `[watch]` is on. A version
    /// refused for not fitting the config, or one loaded, while the config
    /// file holds a refused change, asks for that change to be tried again:
    /// the version may be what it lacked (a module it names, a parameter
    /// only the new version takes).
    fn watch_policies(
        &self,
        reload_tx: &mpsc::UnboundedSender<ReloadTrigger>,
    ) -> Result<Option<FolderWatch>, DaemonError> {
        if !self.config.watch.enabled {
            return Ok(None);
        }
        let count = self.module_reload_counter();
        let retry = self.reload.is_some().then(|| {
            let (tx, status) = (reload_tx.clone(), self.config_status.clone());
            move || {
                if status.load().last_error.is_some() {
                    let _ = tx.send(ReloadTrigger::Module);
                }
            }
        });
        self.registry
            .watch(&self.config.watch, move |report: &ReloadReport| {
                count(report);
                let refused_for_config = report
                    .failed
                    .iter()
                    .any(|(_, failure)| failure.kind == INCOMPATIBLE_WITH_CONFIG);
                if let (true, Some(retry)) =
                    (refused_for_config || !report.loaded.is_empty(), &retry)
                {
                    retry();
                }
            })
            .map(Some)
            .map_err(|e| DaemonError::Setup(e.to_string()))
    }

    /// Removes the series of modules that are neither in the policy folder
    /// nor named by the applied config: a module whose file left while
    /// scalers still named it counted their `module_unavailable` errors
    /// again, and the series stayed once the config stopped naming it
    /// (one more at every versioned file name swapped that way).
    /// Their errors are no longer counted either: a tick of the config
    /// before (`replaced`), still under way, would bring the series back;
    /// its modules are retired too when unused, whether or not they have
    /// series yet (a file deleted and the config switched within one tick
    /// left none).
    fn forget_unused_modules(&self, replaced: &crate::config::PolicyUses) {
        let applied = self.applied.load_full();
        let registry = &self.registry;
        let candidates = self
            .telemetry
            .modules_counted()
            .into_iter()
            .chain(replaced.modules().map(str::to_owned))
            .collect();
        // Judged under the metrics' lock: a module that loads meanwhile is
        // counted after it, and keeps its series.
        self.telemetry.retire_modules(candidates, |module| {
            let snapshot = registry.snapshot();
            snapshot.modules.contains_key(module)
                || snapshot.failures.contains_key(module)
                || applied.policies.names(module)
        });
    }

    /// Removes the series of `[sources]` the applied config no longer has
    /// (removed, or renamed): they would stay in `/metrics`, frozen, until
    /// a restart. A tick of the config before (`replaced`) still fetching
    /// from one counts nothing.
    fn forget_removed_sources(&self, replaced: &Applied) {
        let applied = self.applied.load_full();
        let candidates = self
            .telemetry
            .sources_counted()
            .into_iter()
            .chain(replaced.sources.keys().cloned())
            .collect();
        self.telemetry.retire_sources(candidates, |source| {
            applied.sources.contains_key(source)
                || source == SIMULATOR_SOURCE
                || source == TARGET_SOURCE
        });
    }

    /// Counts what a reload of modules did in the host's metrics.
    fn module_reload_counter(&self) -> impl Fn(&ReloadReport) + Send + 'static {
        let telemetry = self.telemetry.clone();
        let registry = Arc::downgrade(&self.registry);
        move |report: &ReloadReport| {
            for loaded in &report.loaded {
                telemetry.module_loaded(&loaded.name, loaded.origin.as_str());
            }
            for (name, failure) in &report.failed {
                telemetry.module_load_error(name, failure.kind);
            }
            for name in &report.gone {
                telemetry.forget_module(name);
            }
            if let Some(registry) = registry.upgrade() {
                telemetry
                    .modules_loaded
                    .set(registry.snapshot().modules.len() as i64);
            }
        }
    }

    /// Loads again the module versions refused for not fitting the config,
    /// now that another config applies.
    /// On a thread of its own, not awaited: it waits for the watcher's
    /// lock, which a module's compile holds for up to two minutes, and the
    /// main loop (a stop signal, the next reload) must not wait for that;
    /// nor, at exit, the runtime (as it waits for blocking tasks).
    fn recheck_refused_modules(&self) {
        let registry = self.registry.clone();
        let count = self.module_reload_counter();
        let spawned = std::thread::Builder::new()
            .name("scalewise-recheck".into())
            // It runs trial evaluations: the stack of threads that run policies.
            .stack_size(crate::runtime::THREAD_STACK)
            .spawn(move || {
                let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    registry.recheck_refused()
                }));
                match checked {
                    Ok(report) if report.changed_anything() => count(&report),
                    Ok(_) => {}
                    Err(_) => {
                        tracing::error!("Checking refused modules against the new config panicked.")
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("Could not check refused modules against the new config: {e}");
        }
    }

    /// Starts watching the config file, when reload and `[watch]` are on.
    fn watch_config(
        &self,
        reload_tx: &mpsc::UnboundedSender<ReloadTrigger>,
    ) -> Result<Option<FolderWatch>, DaemonError> {
        let Some(reload) = &self.reload else {
            return Ok(None);
        };
        if !self.config.watch.enabled {
            return Ok(None);
        }
        let path = std::path::absolute(&reload.path).unwrap_or_else(|_| reload.path.clone());
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(DaemonError::Setup(format!(
                "cannot watch the config file {}: it has no folder",
                path.display()
            )));
        };
        let watched = ConfigFile {
            known: reload.stamp.clone(),
            name: name.to_owned(),
            path: path.clone(),
            tx: reload_tx.clone(),
        };
        FolderWatch::start(dir, &self.config.watch, watched)
            .map(Some)
            .map_err(|e| DaemonError::Setup(e.to_string()))
    }

    /// Re-reads the config file and applies it, or refuses it and keeps the
    /// running one.
    async fn reload_config(&mut self, trigger: ReloadTrigger, set: &mut ScalerSet) {
        let Some(source) = self.reload.clone() else {
            return;
        };
        tracing::info!(
            config = %source.path.display(),
            trigger = match trigger {
                ReloadTrigger::Signal => "sighup",
                ReloadTrigger::File => "file",
                ReloadTrigger::Module => "a policy module changed",
            },
            "Reloading the config file."
        );
        let path = source.path.clone();
        let running = Arc::clone(&self.config);
        // Its modules: those the reload stops naming may go from the metrics.
        let replaced = self.applied.load_full();
        let simulation = self.simulation.clone();
        let listen_override = source.listen_override;
        let loaded = tokio::task::spawn_blocking(move || {
            read_settled(&path).and_then(|loaded| {
                let mut config = loaded?;
                // Before comparing with the running config, whose
                // api.listen is the override too.
                if let Some(listen) = listen_override {
                    config.api.listen = listen;
                }
                config.validate_against_running(&running)?;
                config.check_running_simulations(&|name| simulation.contains(name))?;
                Ok(config)
            })
        })
        .await
        .map_err(|e| DaemonError::Setup(format!("the config reload panicked: {e}")));
        // Said once the reload applies, as at start.
        let mut warnings = Vec::new();
        let result = match loaded {
            Ok(Ok(config)) => {
                warnings = config.warnings();
                // A target that now names the default it left out (or the
                // other way round) is the same target if the default is
                // what it names: its change in flight is handed over.
                let running = self.applied.load_full();
                let compare = config
                    .scalers
                    .iter()
                    .filter_map(|s| {
                        let s = s.get_ref();
                        let before = running.scalers.get(s.name.get_ref().as_str())?;
                        Some(before.defaults_to_compare(s.target.get_ref()))
                    })
                    .fold(DefaultsNeeded::default(), DefaultsNeeded::or);
                let defaults = target_defaults(&config, compare, &self.clients).await;
                if !unknown_defaults(compare, &defaults).is_empty() {
                    tracing::warn!(
                        "A reloaded target names the namespace or region it left to the default \
                         (or the other way round), and the default could not be found: it counts \
                         as another target, and a change in flight is not handed over."
                    );
                }
                match config.check_resolved_targets(&defaults) {
                    Ok(()) => self.apply_config(config, &defaults, set).await,
                    Err(err) => Err(err.into()),
                }
            }
            Ok(Err(err)) => Err(err),
            Err(err) => Err(err),
        };
        match result {
            Ok(Some(summary)) => {
                for warning in &warnings {
                    tracing::warn!(%warning, "The reloaded config has a value that may not work as intended; applying it anyway.");
                }
                for warning in &summary.trial_warnings {
                    tracing::warn!(%warning, "A policy failed its first trial; applying the reloaded config all the same.");
                }
                self.forget_unused_modules(&replaced.policies);
                self.forget_removed_sources(&replaced);
                self.telemetry.config_reload("applied");
                tracing::info!(
                    added = summary.added,
                    removed = summary.removed,
                    changed = summary.changed,
                    "Applied the reloaded config."
                );
                self.recheck_refused_modules();
            }
            Ok(None) => {
                // The file says again what runs (a refused edit undone):
                // the refusal no longer describes it.
                if self.config_status.load().last_error.is_some() {
                    self.config_status.rcu(|status| ConfigStatus {
                        last_error: None,
                        ..(**status).clone()
                    });
                    tracing::info!(
                        "The config file is back to the running config; the last refusal no longer applies."
                    );
                } else {
                    tracing::info!("The config file is unchanged; nothing to apply.");
                }
                self.telemetry.config_reload("unchanged");
            }
            Err(err) => {
                // Indented, and safe: a problem may quote what a policy
                // declared in describe().
                let said = crate::runtime::log_safe(&err.to_string()).into_owned();
                tracing::error!(
                    kind = err.kind(),
                    "The reloaded config was refused; the running config stays:\n    {said}"
                );
                let problems = match &err {
                    DaemonError::Config(c) => c
                        .problems()
                        .iter()
                        .map(|p| ProblemView {
                            file: p.file.display().to_string(),
                            line: p.line,
                            column: p.column,
                            path: p.path.clone(),
                            message: p.message.clone(),
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                self.config_status.rcu(|status| ConfigStatus {
                    last_error: Some(ReloadFailure {
                        at_ms: wall_clock_ms(),
                        kind: err.kind(),
                        error: err.to_string(),
                        problems: problems.clone(),
                    }),
                    ..(**status).clone()
                });
                // Counted once the status says why: who sees the count
                // then reads this refusal's error, not the one before.
                self.telemetry.config_reload("refused");
            }
        }
    }

    /// Tries the policies of the changed scalers (indices into
    /// `config.scalers`) whose parameters changed on the context their
    /// scaler last decided with the old ones (from the journal): the same
    /// data and the same module version, so a policy that decided then and
    /// fails now refuses its new parameters (an unknown aggregate, a
    /// threshold whose bounds cross), and the reload is refused at them
    /// rather than applied to hold that scaler on every tick. Each distinct
    /// (module, parameters) is tried once, on the first scaler that has
    /// such a context; scalers new or never decided are not tried, nor
    /// parameters naming a metric the context lacks or could not read.
    async fn try_new_parameters(
        &self,
        config: &Config,
        changed: &[usize],
    ) -> Result<(), DaemonError> {
        let snapshot = self.registry.snapshot();
        let mut tried: HashSet<(String, String)> = HashSet::new();
        let mut trials = Vec::new();
        for &i in changed {
            let scaler = config.scalers[i].get_ref();
            let name = scaler.name.get_ref();
            let mut last: Option<TickRecord> = None;
            for (p, policy) in scaler.policies.iter().enumerate() {
                let policy = policy.get_ref();
                let module_name = policy.module.get_ref();
                let Some(module) = snapshot.modules.get(module_name) else {
                    continue;
                };
                let parameters =
                    crate::scaler::with_defaults(&configured_params(policy), module.info());
                let key = (module_name.clone(), parameters.to_string());
                if tried.contains(&key) {
                    continue;
                }
                if last.is_none() {
                    let records = self
                        .journal
                        .query(crate::journal::Query::scaler(name.clone(), 5))
                        .await
                        .unwrap_or_default();
                    last = records
                        .into_iter()
                        .filter(|r| !r.evaluations.is_empty())
                        .max_by_key(|r| r.time_ms);
                }
                let Some(evaluation) = last.as_ref().and_then(|r| r.evaluations.get(p)) else {
                    continue;
                };
                let decided = matches!(
                    evaluation.outcome,
                    crate::journal::EvaluationOutcome::Decided { .. }
                );
                if evaluation.module != *module_name || !decided {
                    continue;
                }
                // Parameters that read a metric the context lacks (renamed
                // with them, or new) or could not read cannot be judged on
                // it: a tick would give the policy that metric, or let it
                // abstain without it.
                let judged =
                    crate::scaler::metrics_read(module.info(), &parameters).all(|metric| {
                        evaluation
                            .context
                            .metrics
                            .iter()
                            .any(|m| m.name == metric && m.error.is_none())
                    });
                if !judged {
                    continue;
                }
                // Tried once per (module, parameters); parameters a scaler
                // decides with now need no trial at all (a fleet-wide
                // change of something else then reads one scaler's record).
                tried.insert(key);
                if evaluation.context.parameters == parameters {
                    continue;
                }
                let mut context = evaluation.context.clone();
                context.parameters = parameters;
                trials.push((i, p, module.clone(), context));
            }
        }
        if trials.is_empty() {
            return Ok(());
        }
        let found = tokio::task::spawn_blocking(move || {
            trials
                .into_iter()
                .filter_map(|(i, p, module, context)| {
                    let err = module.evaluate(&context).err()?;
                    Some((
                        i,
                        p,
                        format!(
                            "the policy refuses these parameters: on the context scaler {:?} \
                             decided at {} with the ones running, it now fails ({}): {}",
                            context.scaler,
                            crate::clock::format_ms(context.now_ms),
                            err.kind.as_str(),
                            err.message.lines().next().unwrap_or_default()
                        ),
                    ))
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| DaemonError::Setup(format!("trying the new parameters panicked: {e}")))?;
        config.params_problems(&found).map_err(DaemonError::from)
    }

    /// Checks `config` against the running daemon and applies it; nothing
    /// is applied unless everything checks out. `Ok(None)`: unchanged.
    async fn apply_config(
        &mut self,
        config: Config,
        defaults: &TargetDefaults,
        set: &mut ScalerSet,
    ) -> Result<Option<ApplySummary>, DaemonError> {
        let running = self.applied.load_full();
        if config.origin().digest() == running.origin.digest()
            && config.api.listen == running.listen
        {
            return Ok(None);
        }
        check_modules(&config, &self.registry.snapshot())?;
        // What will be kept of it once applied; its fingerprints also tell
        // the changed scalers.
        let next = Arc::new(Applied::of(&config));
        // Indices into config.scalers, ascending: running ones the file
        // changed, and those with the new ones too.
        let (mut changed_scalers, mut new_or_changed) = (Vec::new(), Vec::new());
        for (i, scaler) in config.scalers.iter().enumerate() {
            let name = scaler.get_ref().name.get_ref().as_str();
            match running.scalers.get(name) {
                Some(before) if before.fingerprint == next.scalers[name].fingerprint => {}
                Some(_) => {
                    changed_scalers.push(i);
                    new_or_changed.push(i);
                }
                None => new_or_changed.push(i),
            }
        }
        self.try_new_parameters(&config, &changed_scalers).await?;
        // The new and changed scalers' policies once on an idle target, as
        // at start: a new scaler, or a policy no real context could judge,
        // is otherwise first tried by its ticks. Warnings, said once the
        // reload applies.
        let trials = trial::idle_trials(&config, &self.registry.snapshot(), Some(&new_or_changed));
        let now_ms = self.clock.now_ms();
        let found = tokio::task::spawn_blocking(move || trial::run_trials(trials, now_ms))
            .await
            .map_err(|e| DaemonError::Setup(format!("trying the policies panicked: {e}")))?;
        let trial_warnings = config.params_warnings(&found);
        let simulations_changed = config.simulations_fingerprint() != self.simulations;
        let restart_required = restart_only_changes(&self.config, simulations_changed, &config);

        // Webhooks: built (their secrets read) only when they changed.
        let notifications: Vec<NotificationConfig> = config
            .notifications
            .iter()
            .map(|n| n.get_ref().clone())
            .collect();
        let webhooks = if notifications == self.notifications {
            None
        } else {
            Some(Webhooks::build(&notifications).map_err(DaemonError::Setup)?)
        };

        // Sources: each rebuilt only when its own config changed. The
        // others stay the instances their scalers share (one fetch per
        // query and second across them, whichever scalers the reload built
        // anew).
        let sources: NamedSources = config
            .sources
            .iter()
            .map(|(name, source)| match self.sources.get(name) {
                Some(kept) if running.sources.get(name) == Some(source) => {
                    Ok((name.clone(), Arc::clone(kept)))
                }
                _ => Ok((name.clone(), build_named_source(name, source.get_ref())?)),
            })
            .collect::<Result<_, DaemonError>>()?;
        let changed_sources: Vec<&String> = config
            .sources
            .iter()
            .filter(|(name, source)| running.sources.get(*name) != Some(*source))
            .map(|(name, _)| name)
            .collect();

        // Bind every new or changed scaler before touching any.
        let now_ms = self.clock.now_ms();
        let mut added = Vec::new();
        let mut changed = Vec::new();
        let mut params = SharedParams::default();
        for scaler_config in &config.scalers {
            let scaler_config = scaler_config.get_ref();
            let name = scaler_config.name.get_ref().as_str();
            let uses_changed_source = scaler_config
                .metrics
                .values()
                .any(|m| changed_sources.contains(&&m.get_ref().source));
            let hint = |e: DaemonError| {
                if simulations_changed {
                    DaemonError::Setup(format!("{e} ([simulations] change only at a restart)"))
                } else {
                    e
                }
            };
            let fingerprint = next.scalers[name].fingerprint;
            match running.scalers.get(name) {
                None => {
                    let scaler = build_scaler(
                        &sources,
                        &mut params,
                        scaler_config,
                        &self.simulation,
                        &self.clients,
                        self.services.clone(),
                        now_ms,
                    )
                    .await
                    .map_err(hint)?;
                    added.push((scaler, scaler_config.paused));
                }
                Some(before) if before.fingerprint != fingerprint || uses_changed_source => {
                    let spec = bind_scaler(&sources, &mut params, scaler_config, &self.simulation)
                        .map_err(hint)?;
                    // The same target keeps its actuator, and with it a
                    // change in flight (an ASG drain, a shard move): a
                    // new one would know nothing of it.
                    // The same target reached with other settings (a drain
                    // timeout, a token) gets a new actuator that takes the
                    // change over.
                    let next = &next.scalers[name];
                    let actuator = if before.target == next.target {
                        None
                    } else {
                        Some(
                            build_actuator(scaler_config, &self.simulation, &self.clients)
                                .map_err(hint)?,
                        )
                    };
                    let same_target = before.same_target(scaler_config.target.get_ref(), defaults);
                    changed.push((
                        spec,
                        actuator,
                        same_target,
                        scaler_config.paused,
                        before.paused,
                        next.claim,
                    ));
                }
                Some(_) => {}
            }
        }
        let kept: HashSet<&str> = config
            .scalers
            .iter()
            .map(|s| s.get_ref().name.get_ref().as_str())
            .collect();
        let mut removed: Vec<String> = running
            .scalers
            .keys()
            .filter(|name| !kept.contains(&***name))
            .map(|name| name.to_string())
            .collect();
        removed.sort();

        // The last check against the modules serving, and the module gate
        // pointed at this config, with module swaps held off in between: a
        // version the folder watcher loaded since the check above was gated
        // against the old config only. Nothing below can fail.
        {
            let _swaps = self.registry.lock_swaps();
            check_modules(&config, &self.registry.snapshot())?;
            self.applied.store(Arc::clone(&next));
        }

        // Apply.
        let summary = ApplySummary {
            added: added.len(),
            removed: removed.len(),
            changed: changed.len(),
            trial_warnings,
        };
        for name in &removed {
            set.stop(name);
            tracing::info!(scaler = %name, "A scaler was removed by the reloaded config; its journal stays.");
        }
        // The pause flags this reload changes, under one hold of PAUSES
        // and one deadline for their Lease writes: an API server that does
        // not answer holds the reload (and a stop signal behind it) that
        // long, not that long per scaler.
        let mut pauses = PauseBatch {
            held: None,
            journal: self.journal.clone(),
            leadership: self.services.leadership.clone(),
            later: self.lease_pauses.clone(),
            handles: self.handles.clone(),
        };
        let mut updates = Vec::with_capacity(changed.len());
        for (spec, actuator, same_target, paused, was_paused, claim) in changed {
            let name = spec.name.clone();
            if paused != was_paused {
                pauses.set(set, &name, paused).await;
            }
            tracing::info!(scaler = %name, "A scaler was changed by the reloaded config.");
            let update = Reconfigure {
                spec,
                actuator,
                same_target,
                released: None,
                predecessors: Vec::new(),
            };
            updates.push((name, update, claim));
        }
        set.reconfigure(updates);
        for (scaler, paused) in added {
            let name = scaler.spec().name.clone();
            tracing::info!(scaler = %name, "A scaler was added by the reloaded config.");
            // Its `paused` is the config's change while the daemon runs: it
            // wins over a flag the journal kept from an earlier life.
            let restored = scaler.handle().is_paused();
            // Before its first tick; kept (journal, Lease) just after.
            scaler.handle().paused.store(paused, Ordering::Relaxed);
            set.spawn(scaler, next.scalers[name.as_str()].claim);
            if restored != paused {
                pauses.set(set, &name, paused).await;
            }
        }
        // Removed scalers that have ended were matched by those added;
        // scalers added later are built after they ended, from a journal
        // they left as it is.
        set.prune_stopping();
        self.sources = sources;
        if let Some(webhooks) = webhooks {
            if let Some(notifier) = &self.services.notifier {
                notifier.replace(webhooks);
            }
            tracing::info!(
                webhooks = notifications.len(),
                "The reloaded config's [[notifications]] apply to the changes made from now on."
            );
            self.notifications = notifications;
        }
        if next.longest_window_ms > running.longest_window_ms {
            self.simulation.set_history(next.longest_window_ms);
        }
        for setting in &restart_required {
            tracing::warn!(
                setting = %setting,
                "The config file changes a setting read only at start; it takes effect at the next restart."
            );
        }
        if config.policy_dir.get_ref() != self.config.policy_dir.get_ref() {
            // What the next start will look for there.
            let dir = config.policy_dir.get_ref();
            let mut missing: Vec<&str> = config
                .scalers
                .iter()
                .flat_map(|s| s.get_ref().policies.iter())
                .map(|p| p.get_ref().module.get_ref().as_str())
                .filter(|module| !dir.join(format!("{module}.wasm")).is_file())
                .collect();
            missing.sort_unstable();
            missing.dedup();
            if !missing.is_empty() {
                tracing::warn!(
                    policy_dir = %dir.display(),
                    missing = %missing.join(", "),
                    "The new policy_dir lacks modules the config uses; the next start will refuse this config unless they are put there."
                );
            }
        }
        self.handles.store(Arc::new(set.handles()));
        let digest = config.origin().digest().to_owned();
        self.config_status.rcu(|status| ConfigStatus {
            digest: digest.clone(),
            applied_at_ms: wall_clock_ms(),
            reloads: status.reloads + 1,
            restart_required: restart_required.clone(),
            last_error: None,
            ..(**status).clone()
        });
        Ok(Some(summary))
    }
}

/// What an applied reload changed.
struct ApplySummary {
    added: usize,
    removed: usize,
    changed: usize,
    /// What the idle trial of the new and changed scalers' policies found.
    trial_warnings: Vec<crate::config::Problem>,
}

/// The running scalers' tasks, by name.
struct ScalerSet {
    tasks: tokio::task::JoinSet<()>,
    running: BTreeMap<String, RunningScaler>,
    /// Scalers asked to stop whose task may still be finishing a tick: a
    /// task holds its `Control` until it ends.
    stopping: Vec<Stopping>,
    clock: Clock,
    telemetry: Arc<Telemetry>,
}

struct RunningScaler {
    handle: Arc<ScalerHandle>,
    control: Arc<Control>,
    /// What its target is (`AppliedScaler::claim`).
    claim: Fingerprint,
}

/// A scaler a reload removed whose task may still be finishing a tick, or
/// one a reload moved off a target it has not let go of yet (no name:
/// matched by target only; its control is the move's marker).
struct Stopping {
    name: String,
    claim: Fingerprint,
    control: Arc<Control>,
}

/// How the daemon reaches a running scaler between its ticks: a config
/// change to apply, or a stop (one scaler's, or all of them at shutdown).
/// One small allocation per scaler, where a channel and a cancellation token
/// per scaler cost ~600 bytes (6 MiB at 10,000 scalers).
#[derive(Default)]
struct Control {
    /// The newest config change not yet applied; a newer one replaces it
    /// (each is built from the whole new config).
    update: Mutex<Option<Box<Reconfigure>>>,
    stop: AtomicBool,
    /// Stopped because a reload removed the scaler (not at shutdown): its
    /// change in flight is given up, since nothing would carry it on.
    removed: AtomicBool,
    /// Its task has ended (set when the task's future is dropped, however
    /// it ends).
    finished: AtomicBool,
    /// Wakes the scaler's task to look at `update` and `stop`.
    wake: Notify,
}

impl Control {
    /// Asks the scaler to stop: at once when idle, else after its tick (the
    /// wake-up is kept until its task next waits).
    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn take_update(&self) -> Option<Box<Reconfigure>> {
        self.update
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

impl ScalerSet {
    /// Starts `scaler`, whose target is `claim` (`AppliedScaler::claim`).
    fn spawn(&mut self, scaler: Scaler, claim: Fingerprint) {
        let name = scaler.spec().name.clone();
        let control = Arc::new(Control::default());
        let handle = scaler.handle();
        // A scaler of this name, or of this target (a rename), that a
        // reload removed may still be in its last tick: the new one waits
        // for it (see `run_scaler`). Matched even once finished (it may have
        // given up, since this one was built, the change this one restored),
        // and left for others to match (a rename and a new scaler of the
        // old name in one reload): pruned after the reload.
        let predecessors = self
            .stopping
            .iter()
            .filter(|stopping| stopping.name == name || stopping.claim == claim)
            .map(|stopping| stopping.control.clone())
            .collect();
        self.tasks.spawn(run_scaler(
            scaler,
            self.clock,
            self.telemetry.clone(),
            control.clone(),
            predecessors,
        ));
        self.running.insert(
            name,
            RunningScaler {
                handle,
                control,
                claim,
            },
        );
    }

    /// Stops a scaler a reload removed after its tick in progress, if any;
    /// its change in flight is given up.
    fn stop(&mut self, name: &str) {
        if let Some(running) = self.running.remove(name) {
            running.control.removed.store(true, Ordering::Release);
            running.control.stop();
            self.stopping.push(Stopping {
                name: name.to_owned(),
                claim: running.claim,
                control: running.control,
            });
        }
    }

    /// Forgets the removed scalers whose task has ended: once a reload
    /// has started those it added.
    fn prune_stopping(&mut self) {
        self.stopping
            .retain(|stopping| !stopping.control.finished.load(Ordering::Acquire));
        // The tasks of scalers that ended (removed by a reload): a join set
        // keeps each one's memory until it is joined, so a fleet whose
        // scalers are renamed would otherwise grow at every reload.
        while let Some(ended) = self.tasks.try_join_next() {
            if let Err(error) = ended
                && error.is_panic()
            {
                tracing::error!("A scaler's task ended in a panic: {error}");
            }
        }
    }

    /// Stops every scaler after its tick in progress, if any.
    fn stop_all(&mut self) {
        for running in std::mem::take(&mut self.running).into_values() {
            running.control.stop();
        }
    }

    /// Hands running scalers their changed configs: (name, change, what its
    /// target is now). Done for all of one reload's changes at once, holding
    /// their pending updates meanwhile: a scaler that moves onto a target
    /// waits for those leaving it in the same reload (two scalers that swap
    /// targets each wait for the other's move, released as it is applied,
    /// before its own next tick; neither waits for good).
    fn reconfigure(&mut self, changes: Vec<(String, Reconfigure, Fingerprint)>) {
        let mut controls = Vec::with_capacity(changes.len());
        let mut staged = Vec::with_capacity(changes.len());
        for (name, update, claim) in changes {
            if let Some(running) = self.running.get_mut(&name) {
                let left = std::mem::replace(&mut running.claim, claim);
                controls.push(running.control.clone());
                staged.push((update, claim, left));
            }
        }
        // First the markers of every move, so that each scaler moving onto
        // a target finds all of those leaving it.
        let mut pendings: Vec<_> = controls
            .iter()
            .map(|control| {
                control
                    .update
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
            })
            .collect();
        for (((update, claim, left), pending), control) in
            staged.iter_mut().zip(&mut pendings).zip(&controls)
        {
            // A move: scalers added on the target it leaves wait until it
            // has let go of it (matched by claim only, as a removed one's
            // target is). A move not applied yet keeps its marker: the
            // scaler is still on the first target.
            // A task that has ended (a panic) takes no update: no marker
            // then, or an added scaler would wait for it for good.
            let ended = control.finished.load(Ordering::Acquire);
            match pending.as_mut().and_then(|older| older.released.take()) {
                Some(marker) => update.released = Some(marker),
                None if left != claim && !ended => {
                    let marker = Arc::new(Control::default());
                    self.stopping.push(Stopping {
                        name: String::new(),
                        claim: *left,
                        control: marker.clone(),
                    });
                    update.released = Some(Release(marker));
                }
                None => {}
            }
        }
        for (((mut update, claim, _), mut pending), control) in
            staged.into_iter().zip(pendings).zip(&controls)
        {
            // Those on the target it is on now that may not have let go of
            // it (its own marker, for a move back, excepted).
            update.predecessors = self
                .stopping
                .iter()
                .filter(|stopping| stopping.claim == claim)
                .filter(|stopping| {
                    update
                        .released
                        .as_ref()
                        .is_none_or(|own| !Arc::ptr_eq(&own.0, &stopping.control))
                })
                .map(|stopping| stopping.control.clone())
                .collect();
            // A newer change replaces one the scaler has not applied yet; it
            // was compared with that one, so a new actuator the older one
            // brought (a rotated token) must not be lost with it, and a move
            // to another target it brought is still a move from the target
            // the scaler is on.
            if let Some(older) = pending.take()
                && older.actuator.is_some()
            {
                if update.actuator.is_none() {
                    update.actuator = older.actuator;
                    update.same_target = older.same_target;
                } else {
                    update.same_target &= older.same_target;
                }
            }
            *pending = Some(Box::new(update));
            drop(pending);
            control.wake.notify_one();
        }
    }

    fn handles(&self) -> BTreeMap<String, Arc<ScalerHandle>> {
        self.running
            .iter()
            .map(|(name, r)| (name.clone(), r.handle.clone()))
            .collect()
    }
}

/// Held while a pause flag is recorded (Lease, journal, running flag), by
/// the API's pause and resume and by a reload's change of `paused`: two at
/// once could leave the three disagreeing.
pub(crate) static PAUSES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The pause flags one reload changes: PAUSES held once for all of them
/// (waited for as the API's pause waits), and one deadline for their Lease
/// writes, counted from when it is held.
struct PauseBatch {
    held: Option<(
        Option<tokio::sync::MutexGuard<'static, ()>>,
        tokio::time::Instant,
    )>,
    journal: Journal,
    leadership: Leadership,
    /// Where a flag not recorded in the Lease goes.
    later: Arc<LeasePauses>,
    /// The scalers by name, as the API has them.
    handles: Arc<ArcSwap<BTreeMap<String, Arc<ScalerHandle>>>>,
}

impl PauseBatch {
    /// Sets a scaler's pause flag from the config, as the API would (the
    /// leader also records it in the Lease, for the replica that leads next;
    /// a write the API server does not take in time is tried again in the
    /// background).
    async fn set(&mut self, set: &ScalerSet, name: &str, paused: bool) {
        let Some(running) = set.running.get(name) else {
            return;
        };
        let lease_by = self.hold().await;
        // Written without PAUSES, it could cross another write: the last one
        // is made under it, with the flag as it is then.
        let mut later = matches!(self.held, Some((None, _)));
        if self.leadership.is_leading()
            && let Err(err) = tokio::time::timeout_at(
                lease_by,
                self.leadership
                    .record_pause(name, paused, |n| set.running.contains_key(n)),
            )
            .await
            .unwrap_or_else(|_| {
                Err(RecordError::Failed(
                    "the API server did not answer in time".to_owned(),
                ))
            })
        {
            match err {
                RecordError::NotLeader(_) => tracing::warn!(
                    scaler = %name, paused,
                    "Could not record the config's pause flag in the lease: this replica no longer \
                     holds it (the replica that does reads the config too)."
                ),
                RecordError::Failed(why) => {
                    tracing::warn!(
                        scaler = %name, paused,
                        "Could not record the config's pause flag in the lease ({why}); tried again \
                         in the background. Until it is, a replica that takes over applies the flag \
                         the lease holds."
                    );
                    later = true;
                }
            }
        }
        if let Err(err) = self.journal.set_paused(name, paused).await {
            tracing::error!(scaler = %name, error = %err, "Could not persist the pause flag.");
        }
        running.handle.paused.store(paused, Ordering::Relaxed);
        // After the flag is set: the writer writes the flag as it is then.
        if later && self.leadership.is_elected() {
            self.later.queue(name, &self.leadership, &self.handles);
        }
    }

    /// Holds PAUSES (once); the deadline of the Lease writes.
    async fn hold(&mut self) -> tokio::time::Instant {
        if let Some((_, lease_by)) = &self.held {
            return *lease_by;
        }
        let wait = 2 * crate::api::handlers::LEASE_WRITE_TIMEOUT;
        let guard = tokio::time::timeout(wait, PAUSES.lock()).await.ok();
        if guard.is_none() {
            tracing::warn!(
                "Another pause or resume is still being recorded; the config's pause flags are set without waiting for it."
            );
        }
        let lease_by = tokio::time::Instant::now() + crate::api::handlers::LEASE_WRITE_TIMEOUT;
        self.held = Some((guard, lease_by));
        lease_by
    }
}

/// The config's pause flags a reload could not record in the Lease (the API
/// server did not answer in time, or another pause held PAUSES): written in
/// the background by one task, about every 10 s while this replica leads,
/// each for 3 minutes from when it was queued, under PAUSES, with the flag
/// as it is when written (a pause through the API since wins) and the
/// scalers running then.
#[derive(Debug, Default)]
pub(crate) struct LeasePauses {
    /// The names to write, and when to give each up.
    pending: std::sync::Mutex<BTreeMap<String, tokio::time::Instant>>,
    writing: AtomicBool,
    /// Cancelled when the daemon stops (before it releases the Lease).
    stop: CancellationToken,
}

/// How long [`LeasePauses`] tries to write a flag.
const LEASE_PAUSE_TRIES_FOR: std::time::Duration = std::time::Duration::from_secs(180);

impl LeasePauses {
    fn queue(
        self: &Arc<Self>,
        name: &str,
        leadership: &Leadership,
        handles: &Arc<ArcSwap<BTreeMap<String, Arc<ScalerHandle>>>>,
    ) {
        let give_up = tokio::time::Instant::now() + LEASE_PAUSE_TRIES_FOR;
        self.pending().insert(name.to_owned(), give_up);
        if !self.writing.swap(true, Ordering::SeqCst) {
            tokio::spawn(self.clone().write(leadership.clone(), handles.clone()));
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, tokio::time::Instant>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn write(
        self: Arc<Self>,
        leadership: Leadership,
        handles: Arc<ArcSwap<BTreeMap<String, Arc<ScalerHandle>>>>,
    ) {
        loop {
            let stop = self.stop.clone();
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = self.rounds(&leadership, &handles) => {}
            }
            self.writing.store(false, Ordering::SeqCst);
            // One queued as this task was ending is written by it still.
            if self.stop.is_cancelled()
                || self.pending().is_empty()
                || self.writing.swap(true, Ordering::SeqCst)
            {
                return;
            }
        }
    }

    /// Rounds of writes until nothing is pending.
    async fn rounds(
        &self,
        leadership: &Leadership,
        handles: &Arc<ArcSwap<BTreeMap<String, Arc<ScalerHandle>>>>,
    ) {
        use crate::api::handlers::LEASE_WRITE_TIMEOUT;
        while !self.pending().is_empty() {
            tokio::time::sleep(LEASE_WRITE_TIMEOUT).await;
            let now = tokio::time::Instant::now();
            let expired: Vec<String> = {
                let mut pending = self.pending();
                let expired = pending
                    .iter()
                    .filter(|(_, give_up)| **give_up <= now)
                    .map(|(name, _)| name.clone())
                    .collect::<Vec<_>>();
                for name in &expired {
                    pending.remove(name);
                }
                expired
            };
            let running = handles.load_full();
            let expired: Vec<&String> = expired
                .iter()
                .filter(|n| running.contains_key(n.as_str()))
                .collect();
            if !expired.is_empty() {
                tracing::error!(scalers = ?expired, "Pause flags could not be recorded in the lease; a replica that takes over applies the flags the lease holds. Pause or resume these scalers through the API to record them.");
            }
            // Not leading for now (a renewal late, say): tried again at
            // the next round; the Lease itself says when another leads.
            if !leadership.is_leading() {
                continue;
            }
            let Ok(_one) = tokio::time::timeout(2 * LEASE_WRITE_TIMEOUT, PAUSES.lock()).await
            else {
                continue;
            };
            let names: Vec<String> = self.pending().keys().cloned().collect();
            let deadline = tokio::time::Instant::now() + LEASE_WRITE_TIMEOUT;
            for name in names {
                let running = handles.load_full();
                // A scaler a reload is adding is there in a moment.
                let Some(handle) = running.get(&name) else {
                    continue;
                };
                let paused = handle.is_paused();
                let written = tokio::time::timeout_at(
                    deadline,
                    leadership.record_pause(&name, paused, |n| running.contains_key(n)),
                )
                .await;
                match written {
                    Ok(Ok(())) => {
                        self.pending().remove(&name);
                        tracing::info!(scaler = %name, paused, "The pause flag is recorded in the lease now.");
                    }
                    Ok(Err(RecordError::NotLeader(holder))) => {
                        let left: Vec<String> =
                            std::mem::take(&mut *self.pending()).into_keys().collect();
                        tracing::warn!(scalers = ?left, holder = ?holder, "Another replica holds the lease now; it reads the config's pause flags itself. These were not recorded in the lease by this one.");
                        return;
                    }
                    Ok(Err(RecordError::Failed(_))) | Err(_) => {}
                }
            }
        }
    }
}

/// On taking the Lease, and while following when they change: the pause
/// flags the leaders recorded in it replace this replica's own (before its
/// scalers act).
async fn apply_lease_pauses(journal: &Journal, handles: &ScalerHandles, pauses: Pauses) {
    let handles = handles.load();
    for (name, paused) in pauses {
        let Some(handle) = handles.get(&name) else {
            continue;
        };
        if handle.is_paused() == paused {
            continue;
        }
        if let Err(err) = journal.set_paused(&name, paused).await {
            tracing::error!(scaler = %name, error = %err, "Could not persist the pause flag.");
        }
        handle.paused.store(paused, Ordering::Relaxed);
        tracing::info!(
            scaler = %name, paused,
            "The scaler is {} as the leader left it (the lease records it).",
            if paused { "paused" } else { "resumed" }
        );
    }
}

/// Forwards SIGHUP as a config reload until `token` is cancelled.
/// Reads the config file at `path` when it holds still: a file that
/// changed while it was read (an editor or tool rewriting it in place: a
/// prefix that ends at a line is valid TOML with fewer scalers) is read
/// again, a few times.
fn read_settled(path: &Path) -> Result<Result<Config, ConfigError>, DaemonError> {
    for _ in 0..5 {
        let before = FileStamp::of(path).ok();
        let loaded = Config::load(path);
        if FileStamp::of(path).ok() == before {
            return Ok(loaded);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(DaemonError::Setup(format!(
        "{} kept changing while it was read; not applied (the next change or SIGHUP reads it again)",
        path.display()
    )))
}

#[cfg(unix)]
fn listen_for_sighup(
    mut hangups: tokio::signal::unix::Signal,
    tx: mpsc::UnboundedSender<ReloadTrigger>,
    token: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                got = hangups.recv() => match got {
                    Some(()) => {
                        if tx.send(ReloadTrigger::Signal).is_err() {
                            return;
                        }
                    }
                    None => return,
                },
            }
        }
    });
}

/// The config file as [`FolderWatch`] sees it: a change that has settled
/// asks the daemon to reload.
struct ConfigFile {
    path: PathBuf,
    name: OsString,
    tx: mpsc::UnboundedSender<ReloadTrigger>,
    known: Option<FileStamp>,
}

impl Watched for ConfigFile {
    fn relevant(&self, name: &OsStr) -> bool {
        // The file, and the hidden `..data` entries of a ConfigMap mount.
        name == self.name || name.to_string_lossy().starts_with("..")
    }

    fn scan(&mut self) -> BTreeMap<String, FileStamp> {
        FileStamp::of(&self.path)
            .ok()
            .map(|stamp| (self.name.to_string_lossy().into_owned(), stamp))
            .into_iter()
            .collect()
    }

    fn known(&self) -> BTreeMap<String, FileStamp> {
        self.known
            .clone()
            .map(|stamp| (self.name.to_string_lossy().into_owned(), stamp))
            .into_iter()
            .collect()
    }

    fn apply(&mut self, changed: &[String], removed: &[String]) -> Vec<String> {
        if !changed.is_empty() {
            self.known = FileStamp::of(&self.path).ok();
            let _ = self.tx.send(ReloadTrigger::File);
        } else if !removed.is_empty() {
            self.known = None;
            tracing::warn!(config = %self.path.display(), "The config file was deleted; the running config stays.");
        }
        Vec::new()
    }
}

/// Builds one scaler and restores its history from the journal.
async fn build_scaler(
    sources: &NamedSources,
    params: &mut SharedParams,
    scaler_config: &ScalerConfig,
    simulation: &Simulation,
    clients: &TargetClients,
    services: Services,
    now_ms: i64,
) -> Result<Scaler, DaemonError> {
    let spec = bind_scaler(sources, params, scaler_config, simulation)?;
    let actuator = build_actuator(scaler_config, simulation, clients)?;
    let mut scaler = Scaler::new(spec, actuator, services);
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
    Ok(scaler)
}

/// How far from its slot a tick may start and still be dated at its slot
/// for the envelope ([`Scaler::tick_on_grid`]).
const ON_TIME_MS: i64 = 1_000;

/// The time the envelope counts a tick from: its slot `next` if it
/// `started` on time, else when it started.
fn slot_of(started: i64, next: i64) -> i64 {
    if (started - next).abs() <= ON_TIME_MS {
        next
    } else {
        started
    }
}

/// The slot on the grid of key `key` and `interval_ms` a tick journaled at
/// `time_ms` counted the envelope's time from ([`slot_of`] of the nearest
/// grid point): what a restart restores windows and rate limits from, as
/// the ticks that lived through them counted.
pub(crate) fn slot_near(key: &str, interval_ms: i64, time_ms: i64) -> i64 {
    let interval_ms = interval_ms.max(1);
    let after = next_tick_ms(key, interval_ms, time_ms);
    let before = after - interval_ms;
    let nearest = if after - time_ms <= time_ms - before {
        after
    } else {
        before
    };
    slot_of(time_ms, nearest)
}

/// Runs one scaler's ticks on its interval until its [`Control`] stops it,
/// applying config changes between ticks. Ticks fall on the scaler's grid
/// ([`next_tick_ms`] of its [`phase_key`]): many scalers do not tick in
/// lockstep, scalers that share a query do, and a restarted daemon keeps
/// each scaler's phase.
///
/// This future lives as long as its scaler, so it is kept small. A plain
/// function returning an `async move` block, not an `async fn`: an `async
/// fn` keeps its arguments twice in its future (as captured and as moved
/// into the body, rust-lang/rust#62958): 1,216 bytes with the `Scaler` held
/// twice, 744 without (`run_scaler_future_holds_the_scaler_once`). It waits
/// on its control alone (a stop at shutdown comes that way too), not also on
/// a cancellation token: 648 bytes then, a 768-byte tokio task (heaptrack's
/// figure at 10,000 scalers) where 744 made 896 by tokio's 128-byte cells.
/// The Scaler has grown since (528 bytes on 2026-12-07) and the future with
/// it, to 856; what a tick or a config change keeps across its waits is in
/// a boxed future of its own, alive only while it runs.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would store the Scaler twice in every scaler's task"
)]
fn run_scaler(
    mut scaler: Scaler,
    clock: Clock,
    telemetry: Arc<Telemetry>,
    control: Arc<Control>,
    predecessors: Vec<Arc<Control>>,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        /// Says the task ended however it ends (returned, aborted, panicked),
        /// and that a move it did not get to has let go of its target.
        struct Finished(Arc<Control>);
        impl Drop for Finished {
            fn drop(&mut self) {
                // Finished first: a reload that comes after this sees it
                // and keeps no marker for a move nobody will make.
                self.0.finished.store(true, Ordering::Release);
                drop(self.0.take_update());
            }
        }
        let _finished = Finished(control.clone());
        if !predecessors.is_empty() {
            Box::pin(after_predecessors(&mut scaler, predecessors, clock)).await;
        }
        let mut interval_ms = (scaler.spec().interval.as_millis() as i64).max(1);
        let mut next = next_tick_ms(&phase_key(scaler.spec()), interval_ms, clock.now_ms());
        let mut ahead_seen = clock.moved_ahead_ms();
        loop {
            tokio::select! {
                biased;
                _ = control.wake.notified() => {
                    if control.stop.load(Ordering::Acquire) {
                        if control.removed.load(Ordering::Acquire) {
                            let why = "a reload removed its scaler";
                            Box::pin(scaler.retire(clock.now_ms(), why)).await;
                            scaler.forget_metrics();
                        }
                        return;
                    }
                    if let Some(update) = control.take_update() {
                        // Boxed, as a whole: what applying it keeps across
                        // its waits is not part of an idle scaler's task.
                        Box::pin(apply_update(&mut scaler, update, clock)).await;
                        // A new interval, or a new phase (the queries the
                        // phase comes from changed: scalers that now share
                        // one tick together, and their fetches are one).
                        let interval = (scaler.spec().interval.as_millis() as i64).max(1);
                        let key = phase_key(scaler.spec());
                        if interval != interval_ms
                            || next.rem_euclid(interval) != tick_offset_ms(&key, interval)
                        {
                            interval_ms = interval;
                            next = next_tick_ms(&key, interval_ms, clock.now_ms());
                        }
                    }
                    continue;
                }
                _ = clock.sleep_until(next) => {}
            }
            let started = clock.now_ms();
            // The clock jumped ahead meanwhile (a suspend, the clock set):
            // this tick is not that late, and neither the envelope's
            // windows nor a change in flight count the jump.
            let ahead = clock.moved_ahead_ms();
            let jumped = ahead - std::mem::replace(&mut ahead_seen, ahead);
            if jumped > 0 {
                Box::pin(scaler.clock_jumped(started, jumped)).await;
            }
            telemetry
                .tick_lag
                .observe((started - next - jumped).max(0) as f64 / 1000.0 / clock.speed());
            // A tick that starts on time (within ON_TIME_MS either way: a
            // sped-up clock can wake a little early) counts the envelope's
            // time from its slot; a late one from when it started.
            // Not raced against a stop: a tick in progress finishes. Boxed,
            // so that an idle scaler's task does not carry a tick's state.
            // A replica that is not the leader skips its ticks.
            if scaler.may_act() {
                let tick = Box::pin(scaler.tick_on_grid(started, slot_of(started, next)));
                // A bug that panics a tick must not stop the scaler for good
                // (unnoticed: its status and gauges would freeze).
                if let Err(panic) = guarded(tick).await {
                    scaler.tick_panicked(&panic);
                }
            } else {
                scaler.follow();
            }
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
}

/// Applies a config change to a running scaler between its ticks: a move
/// gives up the old target's change in flight, new settings for the same
/// target take it over; the scaler waits for those letting go of a target
/// it moves onto, and reads the journal further back for a longer history.
async fn apply_update(scaler: &mut Scaler, update: Box<Reconfigure>, clock: Clock) {
    let another_target = update.actuator.is_some() && !update.same_target;
    if another_target {
        let why = "a reload moved its scaler to another target";
        scaler.retire(clock.now_ms(), why).await;
    }
    if let (true, Some(next)) = (update.same_target, &update.actuator) {
        hand_over(scaler.actuator(), next, &update.spec.name).await;
    }
    let (windows, events) = crate::envelope::memory_kept(&scaler.spec().behavior);
    let kept_of = |spec: &ScalerSpec| spec.target_history.as_ref().map(|h| h.keep_ms());
    let target_further = !another_target && kept_of(&update.spec) > kept_of(scaler.spec());
    let Reconfigure {
        spec,
        actuator,
        released,
        predecessors,
        ..
    } = *update;
    scaler.reconfigure(spec, actuator, another_target);
    // A move's marker is released here (not with the box, after the wait
    // below: two scalers swapping targets would wait for each other for
    // good), and scalers waiting for this one's target may act.
    drop(released);
    // Moved onto a target others are letting go of.
    if !predecessors.is_empty() {
        let name = &scaler.spec().name;
        wait_for(&predecessors, name).await;
    }
    // Either kind of history needed further back than it was kept (a longer
    // window beside a cooldown longer still, say) is read again.
    let needed = crate::envelope::memory_kept(&scaler.spec().behavior);
    // Not for a scaler moved to another target: the journal's ticks of this
    // name are the old one's.
    if !another_target && (needed.0 > windows || needed.1 > events) {
        let rebuilt = scaler.remember_further(clock.now_ms()).await;
        if let Err(error) = rebuilt {
            tracing::warn!(scaler = %scaler.spec().name, %error, "Could not read the journal for the longer history the new behaviour needs; it builds up from now.");
        }
    }
    if target_further {
        scaler.remember_target_further(clock.now_ms()).await;
    }
}

/// Waits for the tasks of scalers of the same name or target, removed by
/// an earlier reload, to finish their tick in progress and give up their
/// change in flight (each holds its `Control`; the other reference is
/// here): two must not act on one target at once, however long that
/// takes. What those ticks did is then read back from the journal into
/// the envelope, which was restored before it was written; a change in
/// flight this scaler restored from the journal meanwhile was given up by
/// them, and is dropped.
async fn after_predecessors(scaler: &mut Scaler, predecessors: Vec<Arc<Control>>, clock: Clock) {
    wait_for(&predecessors, &scaler.spec().name).await;
    scaler.drop_restored_in_flight().await;
    if let Err(error) = scaler.remember_further(clock.now_ms()).await {
        tracing::warn!(scaler = %scaler.spec().name, %error, "Could not read back the last tick of the scaler this one replaces.");
    }
}

/// Waits until the tasks of `predecessors` (scalers removed, or moved off
/// a target, by a reload) have ended or let go of their target, however
/// long that takes: two scalers must not act on one target at once.
async fn wait_for(predecessors: &[Arc<Control>], scaler: &str) {
    let started = tokio::time::Instant::now();
    let mut warned = false;
    while predecessors
        .iter()
        .any(|p| !p.finished.load(Ordering::Acquire))
    {
        if !warned && started.elapsed() >= SHUTDOWN_GRACE {
            warned = true;
            tracing::warn!(%scaler, "A scaler a reload removed or moved off this scaler's target has not finished its tick; this one waits for it before it acts.");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Hands `previous`'s change in flight, if any, to `next`: the same target
/// reached with other settings after a reload.
async fn hand_over(previous: &Arc<dyn Actuator>, next: &Arc<dyn Actuator>, scaler: &str) {
    if let Some(change) = previous.take_in_flight().await {
        tracing::info!(%scaler, "The reloaded target settings carry on with the change in flight.");
        next.resume_in_flight(change).await;
    }
}

/// Runs `future`, catching a panic as its message.
async fn guarded<F: Future>(future: F) -> Result<F::Output, String> {
    use futures::FutureExt as _;
    std::panic::AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|panic| {
            panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(a panic without a message)".to_owned())
        })
}

/// What a scaler's tick phase is derived from: its first query (in sorted
/// order) to a `[sources]` entry, else its name. Scalers that share that
/// query and their interval then tick at the same moments, and a source
/// answers them with one fetch per tick (sources share a request per query
/// and second); scalers reading different data stay spread out.
pub(crate) fn phase_key(spec: &ScalerSpec) -> String {
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
        .filter(|(source, _)| *source != SIMULATOR_SOURCE && *source != TARGET_SOURCE)
        .map(|(source, query)| format!("{source}\u{0}{query}"))
        .min()
        .unwrap_or_else(|| name.to_owned())
}

/// Where in its interval a scaler ticks: a stable offset in
/// `[0, interval)` derived from its phase key (`phase_key`), the same in
/// every run and build.
pub fn tick_offset_ms(key: &str, interval_ms: i64) -> i64 {
    let interval_ms = interval_ms.max(1);
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_le_bytes(first) % interval_ms as u64) as i64
}

/// The scaler's first scheduled tick at or after `now_ms`. A scaler ticks at
/// [`tick_offset_ms`] past every multiple of its interval (host clock), so
/// its schedule does not depend on when the daemon started; how late a tick
/// started is `(time - offset) mod interval`.
pub fn next_tick_ms(key: &str, interval_ms: i64, now_ms: i64) -> i64 {
    let interval_ms = interval_ms.max(1);
    let past_grid = (now_ms - tick_offset_ms(key, interval_ms)).rem_euclid(interval_ms);
    if past_grid == 0 {
        now_ms
    } else {
        now_ms + (interval_ms - past_grid)
    }
}

/// Whether `config`'s policies fit the versions serving in `snapshot`;
/// failing that, the versions refused for not fitting the running config,
/// which `config` may be written for (they load right after it applies).
fn check_modules(config: &Config, snapshot: &Snapshot) -> Result<(), ConfigError> {
    let Err(err) = config.check_policies(snapshot) else {
        return Ok(());
    };
    // Only when some version was refused is there anything else to try.
    let any_refused = snapshot.failures.values().any(|f| f.refused_info.is_some());
    if !any_refused || config.check_policies(&snapshot.pending_catalog()).is_err() {
        return Err(err);
    }
    Ok(())
}

/// The check a new module version must pass before it serves: it must not
/// make the applied config invalid (a parameter it no longer accepts, a
/// required one the config does not give, ...). Only problems the new
/// version brings count.
fn config_gate(applied: Arc<ArcSwap<Applied>>) -> Arc<crate::registry::Gate> {
    Arc::new(
        move |module: &str, candidate: &BTreeMap<String, PolicyInfo>| {
            let applied = applied.load_full();
            // Only the uses of this module: problems elsewhere (another
            // module deleted since) are not this version's doing.
            let Err(problems) = applied
                .policies
                .check_module(module, &applied.origin, candidate)
            else {
                return Ok(());
            };
            let new: Vec<String> = problems.problems().iter().map(|p| p.to_string()).collect();
            if new.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "this version does not fit the running config:\n{}",
                    new.join("\n")
                ))
            }
        },
    )
}

/// Settings read only at start that `new` changes from `started` (the
/// started config's settings; whether `[simulations]` changed is told
/// apart by fingerprint).
fn restart_only_changes(started: &Config, simulations_changed: bool, new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    let mut check = |differs: bool, name: &str| {
        if differs {
            changed.push(name.to_owned());
        }
    };
    check(started.policy_dir != new.policy_dir, "policy_dir");
    check(started.runtime != new.runtime, "[runtime]");
    check(started.api != new.api, "[api]");
    check(started.journal != new.journal, "[journal]");
    check(started.clock != new.clock, "[clock]");
    check(simulations_changed, "[simulations]");
    check(started.watch != new.watch, "[watch]");
    check(
        started.leader_election != new.leader_election,
        "[leader_election]",
    );
    changed
}

/// Where compiled modules are cached when `[runtime] cache_dir` is not set:
/// `scalewise-cache` next to the journal file.
pub fn default_cache_dir(journal: &Path) -> PathBuf {
    journal
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join(DEFAULT_CACHE_DIR_NAME)
}

/// Policy parameters shared between the scalers bound together (at start,
/// or by one reload): a generated fleet gives thousands of scalers the same
/// parameters, ~400 bytes each as JSON.
#[derive(Default)]
struct SharedParams(HashMap<String, Arc<serde_json::Value>>);

impl SharedParams {
    fn share(&mut self, parameters: serde_json::Value) -> Arc<serde_json::Value> {
        // Objects print with sorted keys: equal values, equal keys.
        self.0
            .entry(parameters.to_string())
            .or_insert_with(|| Arc::new(parameters))
            .clone()
    }
}

/// A policy's parameters as the config gives them (JSON; `{}` for none),
/// without the module's defaults.
fn configured_params(policy: &crate::config::PolicyRef) -> serde_json::Value {
    match &policy.params {
        Some(table) => toml_to_json(&toml::Value::Table((**table.get_ref()).clone())),
        None => serde_json::Value::Object(serde_json::Map::new()),
    }
}

/// Binds a scaler's metrics and policies.
fn bind_scaler(
    sources: &NamedSources,
    params: &mut SharedParams,
    scaler: &ScalerConfig,
    simulation: &Simulation,
) -> Result<ScalerSpec, DaemonError> {
    let name = scaler.name.get_ref().clone();
    let interval_ms = scaler.interval.as_millis() as i64;
    let mut metrics = Vec::with_capacity(scaler.metrics.len());
    // One history of the target for all of the scaler's `target` metrics,
    // as long as the longest window (a tick more, for the newest point).
    let target_history = scaler
        .metrics
        .values()
        .map(|m| m.get_ref())
        .filter(|m| m.source == TARGET_SOURCE)
        .map(|m| m.window.map_or(0, |w| w.as_millis() as i64))
        .max()
        .map(|keep_ms| Arc::new(TargetHistory::new(keep_ms + interval_ms)));
    for (metric_name, metric) in &scaler.metrics {
        let metric = metric.get_ref();
        let (source_name, source): (String, Arc<dyn Source>) = match &target_history {
            Some(history) if metric.source == TARGET_SOURCE => (
                TARGET_SOURCE.into(),
                Arc::new(TargetSource::new(history.clone())),
            ),
            _ => build_source(sources, scaler, metric, simulation)?,
        };
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
    let policies = scaler
        .policies
        .iter()
        .map(|p| {
            let p = p.get_ref();
            // The module's defaults are added at each evaluation, from the
            // version that runs it.
            let parameters = params.share(configured_params(p));
            BoundPolicy {
                parameters,
                module: p.module.get_ref().clone(),
            }
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
        target_history,
        target_key: scaler.target.get_ref().target_key(),
        earlier_target_key: scaler.target.get_ref().earlier_target_key(),
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
        .map(|(name, source)| Ok((name.clone(), build_named_source(name, source.get_ref())?)))
        .collect()
}

/// The source `[sources.<name>]` configures.
fn build_named_source(name: &str, source: &SourceConfig) -> Result<Arc<dyn Source>, DaemonError> {
    Ok(match source {
        SourceConfig::Prometheus(prometheus) => Arc::new(
            PrometheusSource::new(name, prometheus)
                .map_err(|e| DaemonError::Setup(format!("source {name:?}: {e}")))?,
        ),
    })
}

/// Warns of each change in flight the journal keeps for a scaler the config
/// does not have (removed or renamed while the daemon was down, mid-drain
/// say): no scaler carries it on or undoes it, as a reload that removes a
/// scaler gives its change up.
async fn warn_of_orphaned_changes(config: &Config, journal: &Journal) {
    let saved = match journal.all_in_flight().await {
        Ok(saved) => saved,
        Err(error) => {
            tracing::warn!(%error, "Could not read the changes in flight from the journal.");
            return;
        }
    };
    for (scaler, change) in saved {
        if config
            .scalers
            .iter()
            .any(|s| *s.get_ref().name.get_ref() == scaler)
        {
            continue;
        }
        tracing::warn!(
            %scaler,
            saved_at = %crate::clock::format_ms(change.updated_ms),
            change = %crate::runtime::log_safe(&change.change),
            "A change was in flight when the daemon stopped for a scaler this config does not \
             have (removed or renamed since): nothing carries it on or undoes it. Undo what it \
             began by hand (a victim drained but not terminated, a shard move); it is not \
             kept, so this is said once."
        );
        if let Err(error) = journal.save_in_flight(&scaler, None).await {
            tracing::warn!(%scaler, %error, "Could not drop the change from the journal.");
        }
    }
}

/// The loaded modules the config does not fit because they changed, each
/// with what does not fit: for every policy of the module that does not
/// fit, the journal's newest evaluation of it (by `journal`, read only)
/// was of another version, or of none (its scalers held: the module was
/// refused, or gone), while the policy's configured parameters are those
/// it was given then. A version dropped in while the daemon was down, or
/// refused while it ran and the version before it since gone, so. A
/// policy that does not fit the version it ran, one with parameters that
/// changed too, or one the journal has not seen is the config's problem:
/// the start is refused as before.
async fn replaced_unfit(
    config: &Config,
    registry: &Registry,
    journal: &Journal,
) -> Result<Vec<(String, String)>, DaemonError> {
    let snapshot = registry.snapshot();
    // By module: whether every policy not fitting it is excused, and why
    // they do not fit.
    let mut verdicts: BTreeMap<String, (bool, Vec<String>)> = BTreeMap::new();
    for (i, p, module, problems) in config.policies_not_fitting(&*snapshot) {
        let Some(loaded) = snapshot.modules.get(&module) else {
            continue;
        };
        let scaler = config.scalers[i].get_ref();
        let mut recent = journal
            .query(crate::journal::Query::scaler(
                scaler.name.get_ref().clone(),
                100,
            ))
            .await
            .map_err(|e| DaemonError::Setup(format!("reading the journal: {e}")))?;
        recent.sort_by_key(|r| std::cmp::Reverse(r.id));
        // The newest tick that asked this policy (ticks that could not read
        // the target ask none).
        let last = recent
            .iter()
            .filter_map(|r| r.evaluations.get(p))
            .find(|e| e.module == module);
        let configured = configured_params(scaler.policies[p].get_ref());
        let excused = last.is_some_and(|e| {
            e.digest.as_deref() != Some(loaded.digest())
                && given_then(&configured, &e.context.parameters)
        });
        let verdict = verdicts.entry(module).or_insert((true, Vec::new()));
        verdict.0 &= excused;
        verdict.1.push(problems.to_string());
    }
    Ok(verdicts
        .into_iter()
        .filter(|(_, (excused, _))| *excused)
        .map(|(module, (_, problems))| {
            (
                module,
                format!(
                    "this version does not fit the config, and the version its scalers last ran \
                     is no longer in the folder: {}",
                    problems.join("; ")
                ),
            )
        })
        .collect())
}

/// Whether every parameter in `configured` has the value it has in `then`
/// (the parameters an evaluation was given, defaults filled in).
fn given_then(configured: &serde_json::Value, then: &serde_json::Value) -> bool {
    configured.as_object().is_none_or(|configured| {
        configured
            .iter()
            .all(|(key, value)| then.get(key) == Some(value))
    })
}

/// The defaults `config`'s targets leave out (the Kubernetes client's
/// namespace, the AWS SDK's region), looked up only where two targets could
/// be one ([`Config::defaults_needed`]) or `also` asks, and logged when two
/// targets could be one but the default cannot be found (the check then
/// cannot tell).
async fn target_defaults(
    config: &Config,
    also: DefaultsNeeded,
    clients: &TargetClients,
) -> TargetDefaults {
    let pairs = config.defaults_needed();
    let defaults = find_target_defaults(pairs.or(also), Some(clients), true).await;
    for what in unknown_defaults(pairs, &defaults) {
        tracing::warn!(
            "Two scalers may scale one target: {what}. Name it on both targets to be sure."
        );
    }
    defaults
}

/// The defaults `needed` asks for, those found. The namespace is the built
/// Kubernetes client's (the one the targets use), else the client
/// configuration's (local files: kubeconfig, the pod's service account).
/// The region is a built default-region AWS client's, else the AWS SDK's
/// from the environment and profile, and with `ask_instance_metadata` from
/// the instance metadata service too (at most 5 s: it does not answer off
/// EC2).
pub(crate) async fn find_target_defaults(
    needed: DefaultsNeeded,
    clients: Option<&TargetClients>,
    ask_instance_metadata: bool,
) -> TargetDefaults {
    let namespace = match needed.namespace {
        true => match clients.and_then(TargetClients::kube_namespace) {
            Some(namespace) => Some(namespace),
            None => kube::Config::infer()
                .await
                .ok()
                .map(|c| c.default_namespace),
        },
        false => None,
    };
    let region = match (
        needed.region,
        clients.and_then(TargetClients::aws_default_region),
    ) {
        (false, _) => None,
        (true, Some(region)) => Some(region),
        (true, None) => match ask_instance_metadata {
            true => tokio::time::timeout(
                Duration::from_secs(5),
                aws_config::default_provider::region::DefaultRegionChain::builder()
                    .build()
                    .region(),
            )
            .await
            .ok()
            .flatten(),
            false => {
                aws_config::meta::region::RegionProviderChain::first_try(
                    aws_config::environment::EnvironmentVariableRegionProvider::new(),
                )
                .or_else(aws_config::profile::ProfileFileRegionProvider::new())
                .region()
                .await
            }
        }
        .map(|r| r.to_string()),
    };
    TargetDefaults { namespace, region }
}

/// What `pairs` ([`Config::defaults_needed`]) needed and `defaults` lack,
/// in words: where two targets could be one and the check cannot tell.
pub(crate) fn unknown_defaults(pairs: DefaultsNeeded, defaults: &TargetDefaults) -> Vec<String> {
    let mut unknown = Vec::new();
    if pairs.namespace && defaults.namespace.is_none() {
        unknown.push(
            "a Kubernetes target names its namespace and another of the same name leaves it to \
             the client's default, which could not be found"
                .to_owned(),
        );
    }
    if pairs.region && defaults.region.is_none() {
        unknown.push(
            "an Auto Scaling target names its region and another of the same group leaves it \
             to the AWS SDK's default, which could not be found"
                .to_owned(),
        );
    }
    unknown
}

fn build_actuator(
    scaler: &ScalerConfig,
    simulation: &Simulation,
    clients: &TargetClients,
) -> Result<Arc<dyn Actuator>, DaemonError> {
    match scaler.target.get_ref() {
        TargetConfig::Simulator { service } => {
            let actuator = SimulatorActuator::for_service(simulation, service)
                .map_err(|e| DaemonError::Setup(e.to_string()))?;
            Ok(Arc::new(actuator))
        }
        TargetConfig::AwsAsg(settings) => match AwsAsgActuator::new(settings.clone(), clients) {
            Ok(actuator) => Ok(Arc::new(actuator)),
            Err(e) => Err(target_setup(scaler, &e)),
        },
        TargetConfig::Rebalance(settings) => match RebalanceActuator::new(settings.clone()) {
            Ok(actuator) => Ok(Arc::new(actuator)),
            Err(e) => Err(target_setup(scaler, &e)),
        },
        TargetConfig::Kubernetes(settings) => {
            Ok(Arc::new(KubernetesActuator::new(settings.clone(), clients)))
        }
    }
}

/// A target that could not be set up (its credentials unreadable, say),
/// named by its scaler.
fn target_setup(scaler: &ScalerConfig, error: &str) -> DaemonError {
    DaemonError::Setup(format!(
        "scaler {:?}: target.{error}",
        scaler.name.get_ref()
    ))
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

    /// The tasks of scalers that ended (a reload removed them) are reaped
    /// at the next reload's pruning: the join set kept each one until
    /// shutdown.
    #[tokio::test]
    async fn ended_scaler_tasks_are_reaped() {
        let mut set = ScalerSet {
            tasks: tokio::task::JoinSet::new(),
            running: BTreeMap::new(),
            stopping: Vec::new(),
            clock: Clock::system(),
            telemetry: Arc::new(Telemetry::new()),
        };
        let (ended_tx, ended) = tokio::sync::oneshot::channel();
        set.tasks.spawn(async move {
            let _ = ended_tx.send(());
        });
        let pending = set.tasks.spawn(std::future::pending());
        ended.await.unwrap();
        // Past the send: the task is done once it is polled no more.
        tokio::time::sleep(Duration::from_millis(50)).await;
        set.prune_stopping();
        assert_eq!(set.tasks.len(), 1, "the running one stays");
        pending.abort();
    }

    #[test]
    fn equal_parameters_are_one_shared_value() {
        let mut params = SharedParams::default();
        let a = params.share(serde_json::json!({"metric": "cpu", "target": 60.0}));
        let b = params.share(serde_json::json!({"target": 60.0, "metric": "cpu"}));
        let c = params.share(serde_json::json!({"metric": "cpu", "target": 70.0}));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c["target"], 70.0);
    }

    /// The size of the future `f` returns, without calling it.
    fn future_size<F, Fut>(_: &F) -> usize
    where
        F: FnOnce(Scaler, Clock, Arc<Telemetry>, Arc<Control>, Vec<Arc<Control>>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    #[tokio::test]
    async fn a_panicking_tick_is_caught_with_its_message() {
        assert_eq!(guarded(async { 7 }).await, Ok(7));
        let name = "web";
        let caught = guarded(async move {
            if !name.is_empty() {
                panic!("index out of bounds in {name}");
            }
        })
        .await;
        assert_eq!(caught, Err("index out of bounds in web".to_owned()));
        let caught = guarded(async { std::panic::panic_any(3_u8) }).await;
        assert_eq!(caught, Err("(a panic without a message)".to_owned()));
    }

    #[test]
    fn run_scaler_future_holds_the_scaler_once() {
        // Every scaler's task holds this future for as long as it runs; an
        // `async fn` would hold the Scaler twice (rust-lang/rust#62958).
        let size = future_size(&run_scaler);
        let scaler = std::mem::size_of::<Scaler>();
        assert!(
            size < 2 * scaler,
            "run_scaler's future is {size} bytes, a Scaler {scaler}"
        );
    }

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
        let shared =
            |name: &str| tick_offset_ms(&phase_key_of(name, [("prom", "sum(q)")]), interval);
        assert_eq!(shared("web"), shared("api"));
        assert!((0..interval).contains(&shared("web")));
    }

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
