//! One scaler and its tick.
//!
//! A tick: observe the target (advancing any change in flight) → fetch the
//! scaler's metrics → evaluate each policy → combine (scale-out wins) → the
//! envelope → actuate, or only record in dry-run → journal. The record is
//! appended before the actuator is called and updated after, so a crash in
//! between leaves a visible `pending` record rather than an unexplained
//! change.
//!
//! Scheduling lives in [`crate::daemon`]; a tick is an ordinary async
//! function of the time, so tests drive it step by step.

use std::collections::BTreeMap;
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::actuators::{Actuation, Actuator, ActuatorError, Announcement, Observed};
use crate::clock::format_ms;
use crate::config::{Behavior, Mode};
use crate::envelope::{self, EnvelopeState};
use crate::journal::{
    ActuationRecord, Evaluation, EvaluationOutcome, Journal, MetricFailure, PolicyState, Query,
    SavedChange, TickRecord, TickSummary,
};
use crate::policy::{Context, Metric, ParameterKind, PolicyInfo, ScaleEvent, Target};
use crate::registry::{Registry, Snapshot};
use crate::runtime::{EvalErrorKind, EvalUsage, PolicyModule, log_safe};
use crate::sources::target::TargetHistory;
use crate::sources::{MetricQuery, Source, check_series, drop_gaps};
use crate::telemetry::{ModuleLabels, RuleLabels, Telemetry};

/// How far back scale events are given to policies, and history is restored.
const HISTORY_MS: i64 = 3_600_000;

/// A metric of a scaler, bound to its source.
#[derive(Debug, Clone)]
pub struct BoundMetric {
    /// The metric's name in the scaler's config.
    pub name: String,
    /// The source's name, for the host's metrics.
    pub source_name: String,
    /// The source.
    pub source: Arc<dyn Source>,
    /// What to ask it.
    pub query: MetricQuery,
    /// The newest sample may be at most this old.
    pub max_age_ms: Option<i64>,
}

/// A policy module a scaler consults, with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct BoundPolicy {
    /// The module's name in the registry.
    pub module: String,
    /// Parameters from the config (a JSON object). Each evaluation adds the
    /// defaults declared by the module version that runs it, so a reloaded
    /// module's new defaults apply at once. Shared between scalers with the
    /// same parameters.
    pub parameters: Arc<serde_json::Value>,
}

/// Everything a scaler needs that does not change between ticks.
#[derive(Debug, Clone)]
pub struct ScalerSpec {
    /// The scaler's name.
    pub name: String,
    /// Time between ticks.
    pub interval: Duration,
    /// Lower bound.
    pub min: u32,
    /// Upper bound.
    pub max: u32,
    /// Enforce or dry-run.
    pub mode: Mode,
    /// Its metrics, in config order.
    pub metrics: Vec<BoundMetric>,
    /// Its policies, in config order.
    pub policies: Vec<BoundPolicy>,
    /// The envelope's behaviour.
    pub behavior: Behavior,
    /// What each tick observed of the target, kept for the scaler's
    /// `target` metrics (none when it has none).
    pub target_history: Option<Arc<TargetHistory>>,
    /// What its target is, as its journal records keep it
    /// (`TargetConfig::target_key`): a restart rebuilds the envelope from
    /// the ticks of this target only.
    pub target_key: crate::config::Fingerprint,
    /// The key an earlier version wrote for the same target
    /// (`TargetConfig::earlier_target_key`), whose rows are this target's
    /// too.
    pub earlier_target_key: crate::config::Fingerprint,
}

impl ScalerSpec {
    /// Its target's keys, as the journal's rows may hold them.
    pub fn target_keys(&self) -> crate::journal::TargetKeys {
        [self.target_key.as_i64(), self.earlier_target_key.as_i64()]
    }
}

/// What the API shows about a scaler; replaced after every tick. The
/// strings that do not change from tick to tick are shared between
/// snapshots: a fleet keeps one snapshot per scaler.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScalerStatus {
    /// The scaler's name.
    pub name: Arc<str>,
    /// Enforce or dry-run.
    pub mode: Option<Mode>,
    /// Whether the scaler is paused.
    pub paused: bool,
    /// Actuator kind.
    pub target_kind: &'static str,
    /// Target name.
    pub target_name: Arc<str>,
    /// Lower bound.
    pub min: u32,
    /// Upper bound.
    pub max: u32,
    /// Interval between ticks, in ms.
    pub interval_ms: u64,
    /// Replicas asked for at the last tick.
    pub current: Option<u32>,
    /// Replicas ready at the last tick.
    pub ready: Option<u32>,
    /// Replicas decided at the last tick.
    pub desired: Option<u32>,
    /// When the last tick ran.
    pub last_tick_ms: Option<i64>,
    /// The journal id of the last tick's record.
    pub last_record_id: Option<i64>,
    /// One line on the last decision.
    pub last_decision: Option<String>,
    /// Problems seen at the last tick (failed metrics, policies, actuator).
    pub problems: Vec<String>,
    /// Modules consulted, with the digest that answered last.
    pub policies: Vec<PolicyStatus>,
    /// A change in flight, if any.
    pub in_flight: Option<String>,
    /// What the target reported besides its replica counts at the last
    /// tick (shards, instances by state, ...: the `target` source's facts).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, f64>,
    /// Ticks run since start.
    pub ticks: u64,
}

/// A policy's part in a scaler's status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PolicyStatus {
    /// Module name.
    pub module: Arc<str>,
    /// Digest of the module that answered last, if any.
    pub digest: Option<Arc<str>>,
    /// The last error, if the last evaluation failed.
    pub last_error: Option<String>,
}

/// Handles shared between a running scaler and the API.
#[derive(Debug)]
pub struct ScalerHandle {
    /// The scaler's name.
    pub name: Arc<str>,
    /// Pause flag; the API flips it, the scaler reads it every tick.
    pub paused: AtomicBool,
    /// Ticks run since the daemon started (`scalewise_ticks_total`).
    pub ticks: AtomicU64,
    /// The latest status.
    pub status: ArcSwap<ScalerStatus>,
    /// Held by a tick from its last look at the pause flag until the
    /// actuator's call returns; the API's pause stores the flag under it
    /// ([`ScalerHandle::acting`]), so once a pause is answered no change
    /// starts, and one that had started has been made.
    acting: tokio::sync::Mutex<()>,
}

impl ScalerHandle {
    /// A handle with an initial status.
    pub fn new(status: ScalerStatus) -> Arc<Self> {
        Arc::new(ScalerHandle {
            name: status.name.clone(),
            paused: AtomicBool::new(status.paused),
            ticks: AtomicU64::new(0),
            status: ArcSwap::from_pointee(status),
            acting: tokio::sync::Mutex::new(()),
        })
    }

    /// Whether the scaler is paused.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Waits until no change of the scaler's is being made, and keeps any
    /// from starting while the guard is held (a tick that comes to make one
    /// meanwhile does not: see `Scaler::actuate`): a pause flag stored under
    /// it is seen by every later change. Waits at most [`ACTING_WAIT`] (an
    /// actuator's call is bounded by its client's timeouts, but a pause
    /// must not wait for good): `None` then.
    pub async fn acting(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        let guard = tokio::time::timeout(ACTING_WAIT, self.acting.lock()).await;
        if guard.is_err() {
            tracing::warn!(scaler = %self.name, "A change of the scaler's, or another pause or resume of it, has not finished after {}; the pause flag is set anyway.", humantime::format_duration(ACTING_WAIT));
        }
        guard.ok()
    }
}

/// The longest [`ScalerHandle::acting`] waits for a change under way.
pub const ACTING_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The services a scaler's tick uses.
#[derive(Debug, Clone)]
pub struct Services {
    /// The loaded policy modules.
    pub registry: Arc<Registry>,
    /// The decision journal.
    pub journal: Journal,
    /// The host's metrics.
    pub telemetry: Arc<Telemetry>,
    /// Every tick's record, for live subscribers (the demo's terminal lines).
    pub decisions: tokio::sync::broadcast::Sender<Arc<TickRecord>>,
    /// Whether this replica acts (leader election; always without it).
    pub leadership: crate::leader::Leadership,
    /// Where changes of replicas are told (`[[notifications]]`), if anywhere.
    pub notifier: Option<Arc<crate::notify::Notifier>>,
}

/// One scaler: its spec, its actuator and the state it keeps between ticks.
#[derive(Debug)]
pub struct Scaler {
    spec: ScalerSpec,
    actuator: Arc<dyn Actuator>,
    services: Services,
    handle: Arc<ScalerHandle>,
    envelope: EnvelopeState,
    /// Each policy's opaque state, by policy index.
    policy_states: Vec<Option<Vec<u8>>>,
    /// Per policy index: what was already said about the policy.
    notes: Vec<PolicyNotes>,
    ticks: u64,
    /// The leadership term this scaler last ticked in (see
    /// [`Leadership::term`](crate::leader::Leadership::term)).
    term: u64,
    /// When this replica took the Lease back after leading before in this
    /// run (another may have acted in between): a rebuild of the envelope
    /// from the journal reads nothing older.
    retaken_ms: Option<i64>,
    /// The failure last told to the webhooks: the same failure again (an
    /// actuator refusing at every tick) is told once, until a change goes
    /// through or the failure changes, as the target's own Events are.
    told_failure: Option<String>,
    /// Which of the first 64 metrics failed at the last tick (bit i: metric
    /// i of the spec), so that a failure is logged when it starts and when
    /// it ends, not at every tick.
    failing_metrics: u64,
    /// The actuator's change in flight as the journal keeps it
    /// ([`Actuator::saved_in_flight`]), so that it is written only when it
    /// changes.
    in_flight_saved: Option<Box<str>>,
    /// The actuator may have saved a change through its checkpoint since
    /// then ([`Actuator::set_checkpoint`], during a `scale`), so the
    /// journal's copy may not be `in_flight_saved`: the next keep writes
    /// what is in flight (or deletes the copy) whatever `in_flight_saved`
    /// says. Without it, a scale-in the checkpoint saved and the same tick
    /// finished stayed in the journal, and a restart carried it on.
    in_flight_unsure: bool,
    /// The actuator carries on with a change the journal kept from before a
    /// restart, which the first leadership term keeps (see
    /// [`Scaler::tick_on_grid`]).
    in_flight_restored: bool,
    /// The clock's jumps ahead this scaler has seen: (when it saw the
    /// jump, by how much). Its journal's earlier ticks are moved by them
    /// when the envelope is rebuilt from it, as the live envelope was
    /// (boxed: most scalers never see one).
    jumps: Option<Box<Jumps>>,
}

/// The clock's jumps ahead a scaler has seen: (when, by how much), oldest
/// first.
#[derive(Debug, Default)]
struct Jumps(Vec<(i64, i64)>);

/// The most jumps of the clock a scaler remembers ([`Scaler::clock_jumped`]).
const MAX_JUMPS_KEPT: usize = 16;

/// The log target of the line each change of replicas gets (and each one a
/// dry-run scaler would make), at INFO. The demo, which prints its own line
/// per decision, leaves it out.
pub const SCALE_LOG_TARGET: &str = "scalewise::scale";

/// What a scaler has said about one of its policies, so that a failure that
/// lasts is logged when it starts, when it changes and when it ends, not on
/// every tick (a policy missing its metric for an hour at 15 s would
/// otherwise log 240 lines). Each tick's outcome is in the journal anyway.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct PolicyNotes {
    /// When the load failure last written to the journal happened, so each
    /// is journaled once.
    load_failure: Option<i64>,
    /// A digest of the failure last logged; 0 when the policy last decided.
    logged: u64,
}

/// `text` with each number (digits, with any sign, point or exponent
/// among them) replaced by one `#`.
fn without_numbers(text: &str) -> impl Iterator<Item = char> + '_ {
    let mut in_number = false;
    text.chars().filter_map(move |c| {
        let part = c.is_ascii_digit() || (in_number && matches!(c, '.' | 'e' | 'E' | '-' | '+'));
        let was = std::mem::replace(&mut in_number, part);
        match (part, was) {
            (true, true) => None,
            (true, false) => Some('#'),
            (false, _) => Some(c),
        }
    })
}

impl PolicyNotes {
    /// Notes a failure; whether to log it (it is not the one logged last).
    fn failed(&mut self, kind: &str, error: &str, abstained: bool) -> bool {
        let mut hasher = std::hash::DefaultHasher::new();
        // Numbers left out: a panic that quotes the metric's value is the
        // same failure on every tick, whatever its digits.
        (kind, abstained).hash(&mut hasher);
        without_numbers(error).for_each(|c| c.hash(&mut hasher));
        // 0 stands for "decided".
        let digest = hasher.finish().max(1);
        std::mem::replace(&mut self.logged, digest) != digest
    }

    /// Notes a decision; whether to log that the policy decides again.
    fn decided(&mut self) -> bool {
        std::mem::take(&mut self.logged) != 0
    }
}

impl Scaler {
    /// A scaler with empty history; call [`Scaler::restore`] to pick up
    /// where a previous run left off.
    pub fn new(spec: ScalerSpec, actuator: Arc<dyn Actuator>, services: Services) -> Self {
        actuator.set_checkpoint(checkpoint(&services, &spec.name));
        let status = ScalerStatus {
            name: spec.name.as_str().into(),
            mode: Some(spec.mode),
            target_kind: actuator.kind(),
            target_name: actuator.target_name().into(),
            min: spec.min,
            max: spec.max,
            interval_ms: spec.interval.as_millis() as u64,
            policies: spec
                .policies
                .iter()
                .map(|p| PolicyStatus {
                    module: p.module.as_str().into(),
                    ..PolicyStatus::default()
                })
                .collect(),
            ..ScalerStatus::default()
        };
        let policy_states = vec![None; spec.policies.len()];
        Scaler {
            handle: ScalerHandle::new(status),
            notes: vec![PolicyNotes::default(); spec.policies.len()],
            spec,
            actuator,
            services,
            envelope: EnvelopeState::new(),
            policy_states,
            ticks: 0,
            term: 0,
            retaken_ms: None,
            told_failure: None,
            failing_metrics: 0,
            in_flight_saved: None,
            in_flight_unsure: false,
            in_flight_restored: false,
            jumps: None,
        }
    }

    /// Applies a changed config between ticks. The envelope's history
    /// (cooldowns, stabilisation windows, rate-limit periods) stays, and so
    /// does each policy's state where the policy at the same index names the
    /// same module (the rule used when restoring from the journal). A new
    /// `actuator` replaces the scaler's (a changed target); `None` keeps
    /// it, with any change it has in flight. For `another_target` the
    /// envelope's history and the target's observed history begin again,
    /// as a new scaler's: the old target's counts (3 replicas, say) in the
    /// scale-down window would let a target of 20 drop at once.
    pub fn reconfigure(
        &mut self,
        spec: ScalerSpec,
        actuator: Option<Arc<dyn Actuator>>,
        another_target: bool,
    ) {
        let actuator = match actuator {
            Some(actuator) => {
                actuator.set_checkpoint(checkpoint(&self.services, &spec.name));
                actuator
            }
            None => self.actuator.clone(),
        };
        if another_target {
            self.envelope = EnvelopeState::new();
        }
        let saved: Vec<PolicyState> = self
            .spec
            .policies
            .iter()
            .zip(&self.policy_states)
            .enumerate()
            .map(|(index, (p, state))| PolicyState {
                index,
                module: p.module.clone(),
                digest: None,
                state: state.clone(),
                time_ms: 0,
            })
            .collect();
        self.policy_states = restore_policy_states(&spec.policies, &saved);
        self.notes = vec![PolicyNotes::default(); spec.policies.len()];
        // Kept by position: the metrics may have moved.
        self.failing_metrics = 0;
        let mut status = (**self.handle.status.load()).clone();
        status.mode = Some(spec.mode);
        status.target_kind = actuator.kind();
        status.target_name = actuator.target_name().into();
        status.min = spec.min;
        status.max = spec.max;
        status.interval_ms = spec.interval.as_millis() as u64;
        status.policies = spec
            .policies
            .iter()
            .map(|p| PolicyStatus {
                module: p.module.as_str().into(),
                ..PolicyStatus::default()
            })
            .collect();
        self.handle.status.store(Arc::new(status));
        if let (Some(new), Some(old), false) = (
            &spec.target_history,
            &self.spec.target_history,
            another_target,
        ) {
            new.adopt(old);
        }
        self.spec = spec;
        self.actuator = actuator;
    }

    /// The handle the API uses.
    pub fn handle(&self) -> Arc<ScalerHandle> {
        self.handle.clone()
    }

    /// Whether this replica may tick its scalers now: it is the leader, or
    /// there is no leader election.
    pub fn may_act(&self) -> bool {
        self.services.leadership.is_leading()
    }

    /// Whether this replica still leads in the term this scaler's tick
    /// runs in, and the scaler is not paused (a pause answered while the
    /// tick reads its target), for an actuator to ask between the steps of
    /// a change.
    fn may_go_on(&self) -> impl Fn() -> bool + Send + Sync + use<> {
        let leadership = self.services.leadership.clone();
        let handle = Arc::clone(&self.handle);
        let term = self.term;
        move || leadership.is_leading() && leadership.term() == term && !handle.is_paused()
    }

    /// Shows in the status that this replica follows: the replica figures
    /// of its last tick as leader are another replica's to report now (a
    /// frozen `scalewise_replicas_desired` of a former leader would sit
    /// beside the leader's own).
    pub fn follow(&self) {
        let previous = self.handle.status.load();
        if previous.current.is_none()
            && previous.desired.is_none()
            && previous.last_tick_ms.is_none()
            && previous.facts.is_empty()
        {
            return;
        }
        self.handle.status.store(Arc::new(ScalerStatus {
            current: None,
            ready: None,
            desired: None,
            // Its gauge would age on a follower, firing a "stopped ticking"
            // alert: the leader reports it.
            last_tick_ms: None,
            in_flight: None,
            facts: BTreeMap::new(),
            problems: Vec::new(),
            last_decision: Some("following: another replica leads and decides".to_owned()),
            ..(**previous).clone()
        }));
    }

    /// The clock jumped `by_ms` ahead: the envelope's history moves with it
    /// (its windows, rate-limit periods and cooldowns do not count the
    /// jump), and so does a change the actuator has in flight.
    pub async fn clock_jumped(&mut self, at_ms: i64, by_ms: i64) {
        let jumps = &mut self.jumps.get_or_insert_default().0;
        jumps.push((at_ms, by_ms));
        // A bound for a clock that keeps jumping: the oldest go (their
        // ticks are past any window by then, as a rule).
        if jumps.len() > MAX_JUMPS_KEPT {
            jumps.remove(0);
        }
        // Another replica may have taken the Lease meanwhile.
        self.services.leadership.clock_jumped();
        self.envelope.clock_jumped(by_ms);
        self.actuator.clock_jumped(by_ms).await;
    }

    /// Says that a tick panicked (a bug): in the log, the status and
    /// `scalewise_tick_panics_total`. The scaler held (whatever the tick
    /// had not done yet stays undone) and goes on ticking.
    pub fn tick_panicked(&self, message: &str) {
        self.services.telemetry.tick_panics.inc();
        tracing::error!(
            scaler = %self.spec.name, panic = %log_safe(message),
            "A tick panicked; the scaler holds and ticks again at its next slot. This is a bug: \
             please report it with this log."
        );
        let previous = self.handle.status.load();
        let problems = with_panic(&previous.problems, message);
        self.handle.status.store(Arc::new(ScalerStatus {
            problems,
            ..(**previous).clone()
        }));
    }

    /// Removes this scaler's series from the host's metrics, once a reload
    /// has removed it (after its last tick).
    pub fn forget_metrics(&self) {
        self.services.telemetry.forget_scaler(&self.spec.name);
    }

    /// The actuator the scaler acts through.
    pub fn actuator(&self) -> &Arc<dyn Actuator> {
        &self.actuator
    }

    /// The scaler's spec.
    pub fn spec(&self) -> &ScalerSpec {
        &self.spec
    }

    /// How far back a restart reads the journal: the hour of scale events
    /// the policies' context carries, or the envelope's longest window,
    /// period or cooldown when that is longer (a 3h cooldown outlives a
    /// restart too).
    fn restore_horizon_ms(&self) -> i64 {
        let needed = crate::envelope::memory_needed(&self.spec.behavior).as_millis();
        HISTORY_MS.max(i64::try_from(needed).unwrap_or(i64::MAX))
    }

    /// The envelope's state as the journal's `ticks` (oldest first, read
    /// from [`restore_horizon_ms`](Self::restore_horizon_ms) before
    /// `now_ms`) leave it.
    fn envelope_from(
        &self,
        ticks: &[TickSummary],
        begins_history: bool,
        now_ms: i64,
    ) -> EnvelopeState {
        // Live ticks count the envelope's time from their slot on the
        // scaler's grid; the journal has when they started.
        let key = crate::daemon::phase_key(&self.spec);
        let interval_ms = self.spec.interval.as_millis() as i64;
        let slot = |time_ms| crate::daemon::slot_near(&key, interval_ms, time_ms);
        // The daemon was down for as long as a tick seeds after (and more
        // than a tick or so: a scaler ticking less often than its window
        // does not seed at every tick).
        let window_ms = i64::try_from(envelope::seed_after(&self.spec.behavior).as_millis())
            .unwrap_or(i64::MAX);
        let outage_ms = window_ms.max(interval_ms + interval_ms / 2);
        let history = (!begins_history).then(|| now_ms - self.restore_horizon_ms());
        restore_envelope(ticks, history, outage_ms, slot)
    }

    /// What the journal holds of this scaler, as far back as a restart
    /// reads it ([`restore_horizon_ms`](Self::restore_horizon_ms)).
    async fn recover(&self, now_ms: i64) -> Result<crate::journal::Recovery, String> {
        let target = self.spec.target_keys();
        let since_ms = now_ms - self.restore_horizon_ms();
        let recovery = self
            .services
            .journal
            .recover_on(&self.spec.name, since_ms, Some(target))
            .await
            .map_err(|e| e.to_string())?;
        if let Some(moved_ms) = recovery.moved_ms {
            tracing::info!(
                scaler = %self.spec.name,
                until = %format_ms(moved_ms),
                "The journal's ticks of this scaler until then are of another target; its cooldowns and windows are rebuilt from the ticks since only."
            );
        }
        Ok(recovery)
    }

    /// After a reload that makes the envelope remember further back (a
    /// longer stabilisation window, rate-limit period or cooldown): its
    /// history is rebuilt from the journal, as at a restart. What it kept
    /// reached only as far back as the old settings needed, so a scale-down
    /// a 30-minute window should hold would have gone through at once.
    ///
    /// Ticks the journal has from before a jump of the clock ahead are moved
    /// by it, as the live envelope was: a cooldown running when the clock
    /// was set an hour ahead still runs after the rebuild.
    pub async fn remember_further(&mut self, now_ms: i64) -> Result<(), String> {
        let jumps = self.jumps.as_deref().map_or(&[][..], |j| j.0.as_slice());
        let jumped: i64 = jumps.iter().map(|&(_, by)| by).sum();
        // As far back as a restart reads, from before the jumps.
        let mut recovery = self.recover(now_ms - jumped).await?;
        if let Some(retaken) = self.retaken_ms {
            // What this replica did before another led is forgotten (see
            // `EnvelopeState::forget_and_reseed`); the term's first tick
            // seeded the history. (On the journal's own times: a jump
            // since moves older ticks forward, not this one's.)
            recovery.ticks.retain(|tick| tick.time_ms >= retaken);
            recovery.begins_history = true;
        }
        for tick in &mut recovery.ticks {
            tick.time_ms += jumps
                .iter()
                .filter(|&&(at, _)| tick.time_ms < at)
                .map(|&(_, by)| by)
                .sum::<i64>();
        }
        let mut rebuilt = self.envelope_from(&recovery.ticks, recovery.begins_history, now_ms);
        rebuilt.carry_seed_from(&self.envelope);
        self.envelope = rebuilt;
        Ok(())
    }

    /// Rebuilds cooldowns, stabilisation windows, rate-limit periods, each
    /// policy's state and the pause flag from the journal. `paused_default`
    /// applies when the journal has no pause flag for this scaler. A change
    /// the journal has as under way when the daemon stopped (`pending`) is
    /// counted as made, for cooldowns and rate limits, and said in the log.
    pub async fn restore(&mut self, now_ms: i64, paused_default: bool) -> Result<usize, String> {
        let recovery = self.recover(now_ms).await?;
        let paused = recovery.paused.unwrap_or(paused_default);
        if paused != paused_default {
            // The flag last set (by the API, or by a config applied in an
            // earlier run) outlives a restart; say so, as it overrides the
            // file.
            tracing::warn!(
                scaler = %self.spec.name,
                paused,
                config_paused = paused_default,
                "The scaler's pause flag from the journal differs from its config's `paused`; \
                 the journal's flag stays (use POST /v1/scalers/{{name}}/pause or /resume, or \
                 change `paused` in the config while the daemon runs)."
            );
        }
        self.handle.paused.store(paused, Ordering::Relaxed);
        self.envelope = self.envelope_from(&recovery.ticks, recovery.begins_history, now_ms);
        for tick in recovery
            .ticks
            .iter()
            .filter(|t| matches!(t.actuation, ActuationRecord::Pending))
        {
            tracing::warn!(
                scaler = %self.spec.name,
                id = tick.id,
                from = tick.current,
                to = tick.desired,
                at = %format_ms(tick.time_ms),
                "A change was under way when the daemon stopped; whether the target made it is not known. It counts as made for cooldowns and rate limits; the target's state is read again at the next tick."
            );
        }
        self.policy_states = restore_policy_states(&self.spec.policies, &recovery.policy_states);
        if let Some(history) = &self.spec.target_history
            && let Err(error) = self.restore_target_history(history, now_ms).await
        {
            // The target's metrics build up again from the next ticks.
            tracing::warn!(scaler = %self.spec.name, %error, "Could not read back what the journal observed of the target; its metrics build up from now.");
        }
        if let Some(saved) = recovery.in_flight {
            self.resume_in_flight(now_ms, saved).await;
        }
        Ok(recovery.ticks.len())
    }

    /// Hands the actuator the change it had in flight when the daemon
    /// stopped, as the journal kept it.
    async fn resume_in_flight(&mut self, now_ms: i64, saved: SavedChange) {
        // The journal keeps it until a tick says what is in flight now.
        self.in_flight_saved = Some(saved.change.as_str().into());
        let resumed = match serde_json::from_str(&saved.change) {
            Ok(change) => self.actuator.restore_in_flight(now_ms, change).await,
            Err(err) => Err(format!("the journal's copy does not read as JSON ({err})")),
        };
        match resumed {
            Ok(change) => {
                self.in_flight_restored = true;
                tracing::info!(
                    scaler = %self.spec.name,
                    %change,
                    saved_at = %format_ms(saved.updated_ms),
                    "Carrying on with the change that was in flight when the daemon stopped."
                );
            }
            Err(why) => {
                tracing::warn!(
                    scaler = %self.spec.name,
                    saved_at = %format_ms(saved.updated_ms),
                    "The change in flight when the daemon stopped is not carried on: {why}"
                );
                // Never to be resumed: the first tick deletes the journal's
                // copy (not now: a reload that adds this scaler may still
                // be refused, and must change nothing).
            }
        }
    }

    /// Drops the change in flight this scaler restored from the journal at
    /// its start: a removed scaler of the same name, which it waited for,
    /// has given it up since (undrained its victims), and carrying it on
    /// would terminate them undrained.
    pub async fn drop_restored_in_flight(&mut self) {
        if std::mem::take(&mut self.in_flight_restored)
            && self.actuator.take_in_flight().await.is_some()
        {
            tracing::info!(scaler = %self.spec.name, "The change in flight restored from the journal was given up by the removed scaler this one replaces; it is not carried on.");
        }
    }

    /// Gives up the actuator's change in flight, undoing what it half did
    /// where it can, for `why` (a reload removed the scaler, or moved it to
    /// another target): nothing else would carry it on. The journal's copy
    /// goes with it. Only a leader acts on the target.
    pub async fn retire(&mut self, now_ms: i64, why: &str) {
        if !self.may_act() {
            return;
        }
        if let Some(what) = self.actuator.abandon_in_flight(now_ms, why).await {
            tracing::warn!(scaler = %self.spec.name, "A change was in flight when {why}: {what}.");
        }
        self.write_in_flight(None).await;
    }

    /// Brings the journal's copy of the actuator's change in flight up to
    /// date; written only when it changed, deleted when the change ended.
    async fn keep_in_flight(&mut self) {
        let change = self
            .actuator
            .saved_in_flight()
            .await
            .map(|change| change.to_string());
        self.write_in_flight(change).await;
    }

    /// Makes the journal's copy of the change in flight `change` (none:
    /// deleted), when it is not that already.
    async fn write_in_flight(&mut self, change: Option<String>) {
        if !self.in_flight_unsure && change.as_deref() == self.in_flight_saved.as_deref() {
            return;
        }
        match self
            .services
            .journal
            .save_in_flight(&self.spec.name, change.as_deref())
            .await
        {
            Ok(()) => {
                self.in_flight_saved = change.map(Into::into);
                self.in_flight_unsure = false;
            }
            Err(err) => {
                self.services.telemetry.journal_errors.inc();
                tracing::error!(scaler = %self.spec.name, error = %err, "Could not keep the change in flight in the journal; a restart would not carry it on.");
            }
        }
    }

    /// Refills `history` with what the journal's ticks since as far back as
    /// it keeps observed of the target (of this target: those after the
    /// newest tick of another one).
    async fn restore_target_history(
        &self,
        history: &TargetHistory,
        now_ms: i64,
    ) -> Result<(), String> {
        let since_ms = now_ms.saturating_sub(history.keep_ms());
        let moved_ms = self
            .services
            .journal
            .moved_since(&self.spec.name, since_ms, self.spec.target_keys())
            .await
            .map_err(|e| e.to_string())?;
        let mut records = self
            .services
            .journal
            .query(Query {
                scaler: Some(self.spec.name.clone()),
                // Ticks dated ahead of now (a clock that ran ahead) too: the
                // first live observation displaces them.
                since_ms: Some(moved_ms.map_or(since_ms, |moved| moved + 1)),
                until_ms: None,
                limit: usize::MAX,
            })
            .await
            .map_err(|e| e.to_string())?;
        records.sort_by_key(|r| r.time_ms);
        history.restore_older(
            records
                .into_iter()
                .filter(|r| !matches!(r.actuation, ActuationRecord::ObserveFailed { .. }))
                .map(|r| (r.time_ms, r.target.current, r.target.ready, r.facts)),
        );
        Ok(())
    }

    /// After a reload that makes the target's history longer (a `target`
    /// metric's window lengthened, or the first windowed one): what it
    /// kept reached only as far back as the old windows, so the journal's
    /// ticks before that are read back, as at a restart. Otherwise a
    /// policy would see a short series (and hold) for a whole window.
    pub async fn remember_target_further(&self, now_ms: i64) {
        let Some(history) = &self.spec.target_history else {
            return;
        };
        if let Err(error) = self.restore_target_history(history, now_ms).await {
            tracing::warn!(scaler = %self.spec.name, %error, "Could not read back what the journal observed of the target for the longer window; its metrics build up from now.");
        }
    }

    /// Runs one tick at `now_ms` and returns its journal record.
    pub async fn tick(&mut self, now_ms: i64) -> TickRecord {
        self.tick_on_grid(now_ms, now_ms).await
    }

    /// Runs one tick that started at `now_ms` for its slot `slot_ms` on the
    /// scaler's grid. The envelope (stabilisation windows, rate-limit
    /// periods, cooldowns) counts time from slots, so a millisecond of
    /// jitter in when ticks start does not decide whether an event lies
    /// inside a period: "1 pod per 1m" at 15 s ticks allows a step every
    /// fourth tick, not every fourth or fifth. Everything else (the target,
    /// metrics, the policies' context, the journal) uses `now_ms`.
    pub async fn tick_on_grid(&mut self, now_ms: i64, slot_ms: i64) -> TickRecord {
        let term = self.services.leadership.term();
        if term != self.term {
            // This replica took the Lease since this scaler last ticked: what
            // the leader before did lately is not in this replica's journal.
            // A change restored from it at start is kept by the first term
            // (the actuator checks the target was left as it was saved);
            // one this replica started in an earlier term is not.
            let restored = self.term == 0 && std::mem::take(&mut self.in_flight_restored);
            // A term after this scaler's last one took the Lease: another
            // replica may have led in between. Otherwise this replica
            // renewed its own after its deadline passed: nobody else did,
            // and its history and change in flight stand.
            let taken = self.services.leadership.last_taken_term() > self.term;
            let kept = self.term != 0 && !taken;
            if self.term == 0 || kept {
                self.envelope.reseed();
            } else {
                self.envelope.forget_and_reseed();
                self.retaken_ms = Some(now_ms);
            }
            self.term = term;
            if !(restored || kept) {
                self.actuator.forget_in_flight().await;
            }
            tracing::debug!(scaler = %self.spec.name, term, "A new leadership term: the envelope's history begins again.");
        }
        self.ticks += 1;
        self.handle.ticks.fetch_add(1, Ordering::Relaxed);
        let paused = self.handle.is_paused();

        // A paused or dry-run scaler leaves a change in flight where it is.
        let asked = std::time::Instant::now();
        let observed = if paused || self.spec.mode == Mode::DryRun {
            self.actuator.observe_only(now_ms).await
        } else {
            self.actuator.observe_while(now_ms, &self.may_go_on()).await
        };
        self.services
            .telemetry
            .target_called(self.actuator.kind(), "observe", asked.elapsed());
        let observed = match observed {
            Ok(observed) => observed,
            Err(err) => return self.observe_failed(now_ms, err.to_string()).await,
        };
        if let Some(history) = &self.spec.target_history {
            history.record(now_ms, &observed);
        }
        let target = Target {
            kind: self.actuator.kind().to_owned(),
            name: self.actuator.target_name(),
            current: observed.current,
            ready: observed.ready,
            min: self.spec.min,
            max: self.spec.max,
        };

        let (metrics, metric_errors) = self.fetch_metrics(now_ms).await;
        self.note_metric_failures(&metric_errors);
        let (evaluations, abstained) = self.evaluate(now_ms, &target, metrics).await;
        let combined = combine(target.current, &evaluations, &abstained);
        let proposal = combined.proposal;

        let verdict = envelope::apply(
            &mut self.envelope,
            &envelope::Input {
                now_ms: slot_ms,
                current: target.current,
                min: self.spec.min,
                max: self.spec.max,
                proposal,
                failed_metrics: &metric_errors,
                policy_failed: combined.any_failed,
                no_votes: combined.no_votes,
                // Read again: a pause answered while this tick read and
                // decided (a slow source, a slow policy) holds it too.
                paused: self.handle.is_paused(),
                in_flight: observed.in_flight.as_ref(),
                behavior: &self.spec.behavior,
            },
        );
        for step in &verdict.steps {
            self.services
                .telemetry
                .envelope_interventions
                .get_or_create(&RuleLabels {
                    rule: step.rule.clone(),
                })
                .inc();
        }

        let mut record = TickRecord {
            id: None,
            time_ms: now_ms,
            scaler: self.spec.name.clone(),
            mode: self.spec.mode,
            target,
            facts: observed.facts.clone(),
            metric_errors,
            evaluations,
            proposal,
            envelope: verdict.steps,
            desired: verdict.desired,
            recommendation: verdict.recommendation,
            actuation: ActuationRecord::None,
        };
        self.actuate(now_ms, slot_ms, &mut record).await;
        self.keep_in_flight().await;
        self.publish(&record, &observed);
        record
    }

    async fn observe_failed(&mut self, now_ms: i64, error: String) -> TickRecord {
        tracing::warn!(scaler = %self.spec.name, %error, "Could not observe the target; holding.");
        self.services
            .telemetry
            .actuation(&self.spec.name, "observe_failed");
        let mut record = TickRecord {
            id: None,
            time_ms: now_ms,
            scaler: self.spec.name.clone(),
            mode: self.spec.mode,
            target: Target {
                kind: self.actuator.kind().to_owned(),
                name: self.actuator.target_name(),
                current: 0,
                ready: 0,
                min: self.spec.min,
                max: self.spec.max,
            },
            facts: BTreeMap::new(),
            metric_errors: Vec::new(),
            evaluations: Vec::new(),
            proposal: None,
            envelope: Vec::new(),
            desired: 0,
            recommendation: None,
            actuation: ActuationRecord::ObserveFailed { error },
        };
        record.id = self.append(&record).await;
        // A change a new leadership term dropped is no longer kept.
        self.keep_in_flight().await;
        let observed = Observed::new(0, 0, None);
        self.publish(&record, &observed);
        record
    }

    /// Logs a metric that starts failing (naming the scaler, the metric,
    /// its source and query, and why) and one that reads again; the journal
    /// and `scalewise_metric_errors_total` have every tick's.
    fn note_metric_failures(&mut self, failures: &[MetricFailure]) {
        let mut failing = 0u64;
        for (i, m) in self.spec.metrics.iter().enumerate().take(64) {
            let bit = 1u64 << i;
            let failure = failures.iter().find(|f| f.metric == m.name);
            if let Some(f) = failure {
                failing |= bit;
                if self.failing_metrics & bit == 0 {
                    tracing::warn!(
                        scaler = %self.spec.name, metric = %m.name, source = %m.source_name,
                        query = %log_safe(&m.query.query), kind = %f.kind, error = %log_safe(&f.error),
                        "A metric cannot be read; no scale-in until it can (said again when it reads)."
                    );
                }
            } else if self.failing_metrics & bit != 0 {
                tracing::info!(scaler = %self.spec.name, metric = %m.name, source = %m.source_name, "A metric reads again.");
            }
        }
        self.failing_metrics = failing;
    }

    /// Fetches every metric concurrently; failures become errors on the
    /// metric (and in the list the envelope sees), never a failed tick.
    async fn fetch_metrics(&self, now_ms: i64) -> (Vec<Metric>, Vec<MetricFailure>) {
        let telemetry = &self.services.telemetry;
        let fetches = self.spec.metrics.iter().map(|m| async move {
            let asked = std::time::Instant::now();
            let result = m.source.fetch(&m.query, now_ms).await;
            telemetry.metric_fetched(&m.source_name, asked.elapsed());
            let result = result.and_then(|mut points| {
                drop_gaps(&mut points);
                check_series(&points, now_ms, m.max_age_ms)?;
                Ok(points)
            });
            (m, result)
        });
        let mut metrics = Vec::with_capacity(self.spec.metrics.len());
        let mut failures = Vec::new();
        for (m, result) in futures::future::join_all(fetches).await {
            match result {
                Ok(points) => metrics.push(Metric {
                    name: m.name.clone(),
                    points,
                    error: None,
                }),
                Err(err) => {
                    self.services
                        .telemetry
                        .metric_error(&m.source_name, err.kind());
                    failures.push(MetricFailure {
                        metric: m.name.clone(),
                        kind: err.kind().to_owned(),
                        error: err.to_string(),
                    });
                    metrics.push(Metric {
                        name: m.name.clone(),
                        points: Vec::new(),
                        error: Some(err.to_string()),
                    });
                }
            }
        }
        (metrics, failures)
    }

    /// Evaluates every policy, off the async runtime's worker threads.
    /// Returns the evaluations and, for each, whether the policy abstains:
    /// it failed with its own error while a metric it reads could not be
    /// read this tick, so the failure is the metric's (see [`combine`]).
    async fn evaluate(
        &mut self,
        now_ms: i64,
        target: &Target,
        metrics: Vec<Metric>,
    ) -> (Vec<Evaluation>, Vec<bool>) {
        let snapshot = self.services.registry.snapshot();
        let failed_metrics: Vec<&str> = metrics
            .iter()
            .filter(|m| m.error.is_some())
            .map(|m| m.name.as_str())
            .collect();
        let reads_failed_metric: Vec<bool> = self
            .spec
            .policies
            .iter()
            .map(|policy| {
                snapshot.modules.get(&policy.module).is_some_and(|module| {
                    reads_any(module.info(), &policy.parameters, &failed_metrics)
                })
            })
            .collect();
        let mut jobs = Vec::with_capacity(self.spec.policies.len());
        for (i, policy) in self.spec.policies.iter().enumerate() {
            // Cloned here: the tick evaluates this version even if a reload
            // swaps another in meanwhile.
            let module = snapshot.modules.get(&policy.module).cloned();
            let parameters = match &module {
                Some(m) => with_defaults(&policy.parameters, m.info()),
                None => (*policy.parameters).clone(),
            };
            let unavailable = module
                .is_none()
                .then(|| unavailable_reason(&snapshot, &policy.module));
            let load_error = match (&module, snapshot.failures.get(&policy.module)) {
                (Some(serving), Some(failure))
                    if self.notes[i].load_failure != Some(failure.at_ms) =>
                {
                    self.notes[i].load_failure = Some(failure.at_ms);
                    Some(format!(
                        "a newer version of module {:?} failed to load at {} ({}): {}; \
                         still deciding with digest {}",
                        policy.module,
                        format_ms(failure.at_ms),
                        failure.kind,
                        failure.error,
                        serving.digest()
                    ))
                }
                _ => None,
            };
            let context = Context {
                now_ms,
                scaler: self.spec.name.clone(),
                target: target.clone(),
                metrics: metrics.clone(),
                events: self
                    .envelope
                    .events_since(now_ms - HISTORY_MS)
                    .copied()
                    .collect(),
                parameters,
                state: self.policy_states[i].clone(),
            };
            jobs.push(Job {
                name: policy.module.clone(),
                module,
                unavailable,
                load_error,
                context,
                configured: Arc::clone(&policy.parameters),
            });
        }
        let evaluations = tokio::task::spawn_blocking(move || {
            jobs.into_iter().map(evaluate_one).collect::<Vec<_>>()
        })
        .await
        .unwrap_or_else(|join_err| match join_err.try_into_panic() {
            // A panic in the host's own code (not a guest's, which is an
            // error value): the tick panics, counted and named as any tick
            // panic is (the scaler holds, nothing half-recorded).
            Ok(panic) => std::panic::resume_unwind(panic),
            // Cancelled: the runtime is going away; the scaler holds.
            Err(_) => Vec::new(),
        });

        let (mut evaluations, usages): (Vec<Evaluation>, Vec<Option<EvalUsage>>) =
            evaluations.into_iter().unzip();
        let mut abstained = vec![false; evaluations.len()];
        for (i, (evaluation, usage)) in evaluations.iter().zip(&usages).enumerate() {
            let telemetry = &self.services.telemetry;
            let labels = ModuleLabels {
                module: evaluation.module.clone(),
            };
            // A module that did not run (not loaded) took no time: a 0 s
            // sample per tick would drag its latency towards 0.
            if let Some(usage) = usage {
                telemetry
                    .evaluation_duration
                    .get_or_create(&labels)
                    .observe(evaluation.duration_us as f64 / 1e6);
                telemetry
                    .policy_memory
                    .get_or_create(&labels)
                    .observe(usage.memory_bytes as f64);
                if usage.memory_growths > 0 {
                    telemetry
                        .policy_memory_growths
                        .get_or_create(&labels)
                        .inc_by(u64::from(usage.memory_growths));
                }
            }
            let (scaler, module) = (&self.spec.name, &evaluation.module);
            match &evaluation.outcome {
                EvaluationOutcome::Decided { decision } => {
                    self.policy_states[i] = decision.state.clone();
                    if self.notes[i].decided() {
                        tracing::info!(%scaler, %module, "A policy decides again.");
                    }
                }
                // The metric's failure is already counted, under its source.
                EvaluationOutcome::Failed { kind, error }
                    if kind == EvalErrorKind::PolicyError.as_str() && reads_failed_metric[i] =>
                {
                    abstained[i] = true;
                    if self.notes[i].failed(kind, error, true) {
                        tracing::info!(
                            %scaler, %module, error = %log_safe(error),
                            "A policy could not decide without a metric it reads; it abstains and scale-in stays blocked until it decides again (said again only if the error changes)."
                        );
                    } else {
                        tracing::debug!(%scaler, %module, error = %log_safe(error), "A policy abstains again.");
                    }
                }
                EvaluationOutcome::Failed { kind, error } => {
                    telemetry.policy_error(module, kind);
                    if self.notes[i].failed(kind, error, false) {
                        tracing::warn!(
                            %scaler, %module, %kind, error = %log_safe(error),
                            "Policy evaluation failed; the scaler holds until it decides again (said again only if the error changes)."
                        );
                    } else {
                        tracing::debug!(%scaler, %module, %kind, error = %log_safe(error), "Policy evaluation failed again.");
                    }
                }
            }
        }
        for (evaluation, abstained) in evaluations.iter_mut().zip(&abstained) {
            evaluation.abstained = *abstained;
        }
        (evaluations, abstained)
    }

    async fn actuate(&mut self, now_ms: i64, slot_ms: i64, record: &mut TickRecord) {
        let current = record.target.current;
        let desired = record.desired;
        let telemetry = self.services.telemetry.clone();
        if desired == current {
            record.id = self.append(record).await;
            return;
        }
        if self.spec.mode == Mode::DryRun {
            record.actuation = ActuationRecord::DryRun;
            record.id = self.append(record).await;
            telemetry.actuation(&self.spec.name, "dry_run");
            // Said when the change it would make is new: a dry-run target
            // stays where it is, so the same change comes back every tick.
            let last = self.handle.status.load();
            if last.current == Some(current) && last.desired == Some(desired) {
                tracing::debug!(target: SCALE_LOG_TARGET, scaler = %self.spec.name, id = record.id, "Would still scale: {}", log_safe(&summarize(record)));
            } else {
                tracing::info!(target: SCALE_LOG_TARGET, scaler = %self.spec.name, id = record.id, "Would scale: {}", log_safe(&summarize(record)));
            }
            return;
        }
        record.actuation = ActuationRecord::Pending;
        record.id = self.append(record).await;
        if record.id.is_none() {
            // The record comes before the change, or the change is not
            // made: a change no record explains would also be missing from
            // the cooldowns a restart restores.
            telemetry.actuation(&self.spec.name, "not_recorded");
            tracing::error!(
                scaler = %self.spec.name, current, desired,
                "Not scaling: the journal could not record the change first; the scaler holds until it can."
            );
            record.actuation = ActuationRecord::Failed {
                kind: "journal".to_owned(),
                error: "not scaled: the journal could not record the change first".to_owned(),
            };
            return;
        }
        // The lease may have been lost while the tick read and decided (a
        // slow source, a slow target): a replica that no longer leads makes
        // no change, since another may be acting already; nor one that lost
        // it and took it again meanwhile (its reading of the target and its
        // envelope are of the term before, and another replica may have
        // acted in between). Nor a scaler paused meanwhile (a pause answered
        // while the record was written): looked at under `acting`, which
        // the API's pause holds while it records the flag. Never waited
        // for: held by a pause or resume being recorded (it may wait on
        // the API server), the change is not made and the next tick
        // decides again from what it reads then.
        let handle = self.handle.clone();
        let acting = handle.acting.try_lock();
        let leads = self.may_act() && self.services.leadership.term() == self.term;
        let paused = self.handle.is_paused();
        let acts = acting.is_ok() && leads && !paused;
        let scaled = if acts {
            let asked = std::time::Instant::now();
            self.in_flight_unsure = true;
            let scaled = self
                .actuator
                .scale_while(now_ms, current, desired, &self.may_go_on())
                .await;
            telemetry.target_called(self.actuator.kind(), "scale", asked.elapsed());
            scaled
        } else if !leads {
            Err(ActuatorError::Failed(
                "not scaled: this replica lost the lease during the tick".to_owned(),
            ))
        } else if acting.is_err() {
            Err(ActuatorError::Failed(
                "not scaled: a pause or resume of this scaler was being recorded; the next tick \
                 decides again"
                    .to_owned(),
            ))
        } else {
            Err(ActuatorError::Failed(
                "not scaled: the scaler was paused during the tick".to_owned(),
            ))
        };
        drop(acting);
        let outcome = match scaled {
            Ok(Actuation::Done { detail }) => {
                self.envelope.record_scale(slot_ms, current, desired);
                telemetry.actuation(&self.spec.name, "done");
                ActuationRecord::Done { detail }
            }
            Ok(Actuation::Started { detail }) => {
                self.envelope.record_scale(slot_ms, current, desired);
                telemetry.actuation(&self.spec.name, "started");
                ActuationRecord::Started { detail }
            }
            Err(err) => {
                // Not made because the lease moved on (or a pause came) is
                // not a failure of the target's system: no alert on failed
                // actuations.
                if acts {
                    telemetry.actuation(&self.spec.name, "failed");
                    tracing::warn!(scaler = %self.spec.name, error = %err, current, desired, "The actuator failed to scale the target.");
                } else {
                    tracing::info!(scaler = %self.spec.name, why = %err, current, desired, "The change was not made.");
                }
                ActuationRecord::Failed {
                    kind: err.kind().to_owned(),
                    error: err.to_string(),
                }
            }
        };
        record.actuation = outcome.clone();
        let summary = summarize(record);
        if !matches!(outcome, ActuationRecord::Failed { .. }) {
            tracing::info!(target: SCALE_LOG_TARGET, scaler = %self.spec.name, id = record.id, "Scaled: {}", log_safe(&summary));
        }
        let announcement = Announcement {
            time_ms: now_ms,
            scaler: self.spec.name.clone(),
            target_kind: record.target.kind.clone(),
            target_name: record.target.name.clone(),
            from: current,
            to: desired,
            reason: summary,
            error: match &outcome {
                ActuationRecord::Failed { error, .. } => Some(error.clone()),
                _ => None,
            },
            record: record.id,
        };
        // The outcome and, when a webhook wants to hear of it, the change
        // to tell it of: in one transaction, so a crash loses neither.
        let repeat = announcement.error.is_some() && announcement.error == self.told_failure;
        // A lease lost during the tick is no failure to alarm anyone with:
        // the replica that leads now decides (nor a pause, the operator's
        // own). The journal keeps it.
        if acts {
            self.told_failure = announcement.error.clone();
        }
        let notifier = self.services.notifier.as_ref().filter(|_| !repeat && acts);
        let owe = notifier
            .filter(|n| n.wants(&announcement))
            .map(|_| &announcement);
        let mut owed = None;
        if let Some(id) = record.id {
            match self
                .services
                .journal
                .update_actuation(id, outcome, owe)
                .await
            {
                Ok(id) => owed = id,
                Err(err) => {
                    self.services.telemetry.journal_errors.inc();
                    tracing::error!(scaler = %self.spec.name, id, error = %err, "Could not record the actuation's outcome in the journal.");
                }
            }
        }
        if let Some(notifier) = notifier {
            notifier.notify(announcement.clone(), owed);
        }
        // Nor the target's own channel (a Kubernetes `FailedRescale`
        // warning at each handover that lands mid-tick).
        if acts {
            let actuator = self.actuator.clone();
            tokio::spawn(async move { actuator.announce(announcement).await });
        }
    }

    async fn append(&self, record: &TickRecord) -> Option<i64> {
        let target = self.spec.target_key.as_i64();
        match self
            .services
            .journal
            .append_on(record.clone(), Some(target))
            .await
        {
            Ok(id) => Some(id),
            Err(err) => {
                self.services.telemetry.journal_errors.inc();
                tracing::error!(scaler = %self.spec.name, error = %err, "Could not append the tick to the journal.");
                None
            }
        }
    }

    fn publish(&self, record: &TickRecord, observed: &Observed) {
        if self.services.decisions.receiver_count() > 0 {
            let _ = self.services.decisions.send(Arc::new(record.clone()));
        }
        // The replica gauges are read from this status when /metrics is
        // scraped (`telemetry::ScalerMetrics`).
        let previous = self.handle.status.load();
        let mut problems: Vec<String> = record
            .metric_errors
            .iter()
            .map(|f| {
                // Named with its source: "metric rps (source prom): HTTP 503".
                match self.spec.metrics.iter().find(|m| m.name == f.metric) {
                    Some(m) => format!(
                        "metric {} (source {}): {}",
                        f.metric, m.source_name, f.error
                    ),
                    None => format!("metric {}: {}", f.metric, f.error),
                }
            })
            .collect();
        let snapshot = self.services.registry.snapshot();
        let policies = self
            .spec
            .policies
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let evaluation = record.evaluations.get(i);
                let last_error = match evaluation.map(|e| &e.outcome) {
                    Some(EvaluationOutcome::Failed { error, .. }) => Some(error.clone()),
                    _ => None,
                };
                if let Some(error) = &last_error {
                    problems.push(format!("policy {}: {error}", p.module));
                } else if let Some(failure) = snapshot.failures.get(&p.module) {
                    // Deciding, but on an older version than the folder's.
                    problems.push(format!(
                        "policy {}: a newer version failed to load ({}): {}",
                        p.module, failure.kind, failure.error
                    ));
                }
                // The name as the last snapshot holds it, shared.
                let module = match previous.policies.get(i) {
                    Some(last) if *last.module == *p.module => Arc::clone(&last.module),
                    _ => p.module.as_str().into(),
                };
                PolicyStatus {
                    module,
                    digest: evaluation.and_then(|e| e.digest.clone()),
                    last_error,
                }
            })
            .collect();
        if record.id.is_none() {
            problems.push(
                "journal: this tick could not be recorded (see the log); changes are held until \
                 it can"
                    .to_owned(),
            );
        }
        match &record.actuation {
            ActuationRecord::Failed { kind, .. } if kind == "journal" => {}
            ActuationRecord::Failed { error, .. } => problems.push(format!("actuator: {error}")),
            ActuationRecord::ObserveFailed { error } => problems.push(format!("target: {error}")),
            _ => {}
        }
        let known = !matches!(record.actuation, ActuationRecord::ObserveFailed { .. });
        // What does not change between ticks is taken from the last
        // snapshot (shared strings), the rest from this tick.
        let status = ScalerStatus {
            name: Arc::clone(&previous.name),
            mode: previous.mode,
            target_kind: previous.target_kind,
            target_name: Arc::clone(&previous.target_name),
            min: previous.min,
            max: previous.max,
            interval_ms: previous.interval_ms,
            paused: self.handle.is_paused(),
            // Unknown when the target could not be read (not 0: the
            // replica gauges would show the workload gone).
            current: known.then_some(observed.current),
            ready: known.then_some(observed.ready),
            desired: known.then_some(record.desired),
            last_tick_ms: Some(record.time_ms),
            last_record_id: record.id,
            last_decision: Some(summarize(record)),
            problems,
            policies,
            facts: observed.facts.clone(),
            in_flight: match (&observed.in_flight, &record.actuation) {
                (Some(f), _) => Some(format!(
                    "→ {} since {}: {}",
                    f.desired, f.since_ms, f.detail
                )),
                // Started this tick: in flight from now until a later
                // tick's observation says otherwise.
                (None, ActuationRecord::Started { detail }) => Some(format!(
                    "→ {} since {}: {detail}",
                    record.desired, record.time_ms
                )),
                (None, _) => None,
            },
            ticks: self.ticks,
        };
        self.handle.status.store(Arc::new(status));
    }
}

/// One policy evaluation to run on a blocking thread.
struct Job {
    name: String,
    module: Option<PolicyModule>,
    /// Why `module` is `None`.
    unavailable: Option<String>,
    load_error: Option<String>,
    context: Context,
    /// The parameters as configured (`context` has the module's defaults
    /// filled in): what a sample for a new version's trial keeps.
    configured: Arc<serde_json::Value>,
}

/// Runs one policy; never panics, whatever the guest does. The memory it
/// used, when it ran.
fn evaluate_one(job: Job) -> (Evaluation, Option<EvalUsage>) {
    let Job {
        name,
        module,
        unavailable,
        load_error,
        context,
        configured,
    } = job;
    let Some(module) = module else {
        let evaluation = Evaluation {
            digest: None,
            context,
            outcome: EvaluationOutcome::Failed {
                kind: "module_unavailable".into(),
                error: unavailable
                    .unwrap_or_else(|| format!("module {name:?} is not in the policy folder")),
            },
            duration_us: 0,
            load_error,
            limits: None,
            module: name,
            abstained: false,
        };
        return (evaluation, None);
    };
    let started = Instant::now();
    let (result, usage) = module.evaluate_with_usage(&context);
    let duration_us = started.elapsed().as_micros() as u64;
    let outcome = match result {
        Ok(decision) => {
            // What a new version of the module is tried on first.
            module.offer_sample(&context, &configured);
            EvaluationOutcome::Decided { decision }
        }
        Err(err) => EvaluationOutcome::Failed {
            kind: err.kind.as_str().to_owned(),
            error: err.message,
        },
    };
    let evaluation = Evaluation {
        module: name,
        digest: Some(module.shared_digest()),
        context,
        outcome,
        duration_us,
        load_error,
        limits: module.recorded_limits(),
        abstained: false,
    };
    (evaluation, Some(usage))
}

/// A status's problems with the latest panic of a tick said once: a tick
/// that panics every time would otherwise add a line at every tick.
fn with_panic(problems: &[String], message: &str) -> Vec<String> {
    const PANICKED: &str = "tick panicked (a bug; see the log): ";
    problems
        .iter()
        .filter(|p| !p.starts_with(PANICKED))
        .cloned()
        .chain([format!("{PANICKED}{message}")])
        .collect()
}

/// Why a scaler's module is not in the snapshot, for its journal and status.
fn unavailable_reason(snapshot: &Snapshot, name: &str) -> String {
    match (snapshot.removed.get(name), snapshot.failures.get(name)) {
        (Some(removed), None) => format!(
            "module {name:?} was deleted from the policy folder at {} (its last digest: {}); \
             holding until it comes back",
            format_ms(removed.at_ms),
            removed.digest
        ),
        (Some(removed), Some(failure)) => format!(
            "module {name:?} was deleted from the policy folder at {} and the file that came \
             back failed to load ({}): {}",
            format_ms(removed.at_ms),
            failure.kind,
            failure.error
        ),
        (None, Some(failure)) => format!("module {name:?} is not loaded: {}", failure.error),
        (None, None) => format!("module {name:?} is not in the policy folder"),
    }
}

/// The configured parameters plus the defaults `info` declares for the
/// ones the config leaves out.
pub(crate) fn with_defaults(
    configured: &serde_json::Value,
    info: &PolicyInfo,
) -> serde_json::Value {
    let mut object = configured.as_object().cloned().unwrap_or_default();
    for spec in &info.parameters {
        if let Some(default) = &spec.default
            && !object.contains_key(&spec.name)
        {
            object.insert(spec.name.clone(), default.clone());
        }
    }
    serde_json::Value::Object(object)
}

/// The policies' combined answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Combined {
    /// The largest count a policy asked for; `None` when every policy held
    /// (or none voted).
    pub proposal: Option<u32>,
    /// Whether a policy failed (the envelope then holds the scaler).
    pub any_failed: bool,
    /// Whether no policy voted at all: every one abstained. The tick holds
    /// and keeps no recommendation, as HPA does when every metric failed.
    pub no_votes: bool,
}

/// Combines the policies' answers: scale-out wins. A policy that holds votes
/// for the current count, so scale-in needs every policy to agree; when
/// every policy holds the answer is hold (`proposal: None`).
///
/// A policy marked in `abstained` (it failed because a metric it reads
/// could not be read) neither votes nor counts as failed: as in HPA, the
/// other policies may still scale out, and the envelope's missing-metrics
/// rule blocks any scale-in they propose.
pub fn combine(current: u32, evaluations: &[Evaluation], abstained: &[bool]) -> Combined {
    let mut any_failed = evaluations.is_empty();
    let mut proposal: Option<u32> = None;
    let mut any_scale = false;
    let mut votes = 0;
    for (i, evaluation) in evaluations.iter().enumerate() {
        if abstained.get(i).copied().unwrap_or(false) {
            continue;
        }
        votes += 1;
        match &evaluation.outcome {
            EvaluationOutcome::Decided { decision } => {
                let vote = match decision.desired {
                    Some(n) => {
                        any_scale = true;
                        n
                    }
                    None => current,
                };
                proposal = Some(proposal.map_or(vote, |p| p.max(vote)));
            }
            EvaluationOutcome::Failed { .. } => any_failed = true,
        }
    }
    Combined {
        proposal: if any_scale { proposal } else { None },
        any_failed,
        no_votes: votes == 0 && !evaluations.is_empty(),
    }
}

/// Whether a policy of `info` configured with `configured` reads one of
/// `metrics`. With the module's defaults: a metric parameter left out of
/// the config still names a metric it reads.
fn reads_any(info: &PolicyInfo, configured: &serde_json::Value, metrics: &[&str]) -> bool {
    let parameters = with_defaults(configured, info);
    metrics_read(info, &parameters).any(|name| metrics.contains(&name))
}

/// The scaler's metrics a policy reads: the values of the parameters its
/// module declares as metrics.
pub(crate) fn metrics_read<'a>(
    info: &'a PolicyInfo,
    parameters: &'a serde_json::Value,
) -> impl Iterator<Item = &'a str> {
    info.parameters
        .iter()
        .filter(|spec| spec.kind == ParameterKind::Metric)
        .filter_map(|spec| parameters.get(&spec.name)?.as_str())
}

/// Rebuilds the envelope's history from the journal's tick summaries
/// (oldest first): every tick's recommendation (those that kept one), and a scale event for each
/// tick whose actuation was carried out, each at the time `slot` gives for
/// when the tick started (its slot on the scaler's grid).
///
/// `history_since`: when the journal was read from, if the scaler's history
/// began before that (`None`: its first tick is among `ticks`).
fn restore_envelope(
    ticks: &[TickSummary],
    history_since: Option<i64>,
    outage_ms: i64,
    slot: impl Fn(i64) -> i64,
) -> EnvelopeState {
    // A tick seeded the history with the count it found (HPA's initial
    // recommendation) when nothing younger than one of its windows was left
    // in it (`outage_ms`): a new scaler's first tick, and the first after a restart once
    // the daemon was down that long, or once its ticks kept no
    // recommendation for that long (metrics missing, a policy failing).
    // The journal does not say where restarts were: seeded here at the
    // first tick after every such stretch (`outage_ms`), so that a restart
    // soon after one does not let the scaler scale down at once (a
    // crash-looping daemon, restarted again a minute after an outage). Where
    // no restart came, this holds scale-in a window longer than it did.
    let mut recommendations = Vec::new();
    // When a recommendation was last kept; a history that began before
    // these ticks counts as kept when the journal was read from: a first
    // tick long after that came after an outage too (one that began before
    // the read, say two hours down, then a crash a minute after the
    // restart's seed).
    let mut kept: Option<i64> = history_since;
    for tick in ticks {
        if matches!(tick.actuation, ActuationRecord::ObserveFailed { .. }) {
            // The envelope never saw this tick.
            continue;
        }
        let at = slot(tick.time_ms);
        if kept.is_none_or(|kept| at.saturating_sub(kept) >= outage_ms.max(1)) {
            recommendations.push((at, tick.current));
            kept = Some(at);
        }
        if let Some(recommendation) = tick.recommendation {
            recommendations.push((at, recommendation));
            kept = Some(at);
        }
    }
    // A pending change (the daemon stopped while the actuator was asked)
    // most likely happened: counted, so a restart does not scale again
    // inside its cooldown.
    let events = ticks.iter().filter_map(|t| match t.actuation {
        ActuationRecord::Done { .. }
        | ActuationRecord::Started { .. }
        | ActuationRecord::Pending => Some(ScaleEvent {
            timestamp_ms: slot(t.time_ms),
            from: t.current,
            to: t.desired,
        }),
        _ => None,
    });
    EnvelopeState::restore(recommendations, events)
}

/// Each policy's last state. A policy is matched by its index and module
/// name, so reordering the config never hands one policy another's state.
fn restore_policy_states(policies: &[BoundPolicy], saved: &[PolicyState]) -> Vec<Option<Vec<u8>>> {
    policies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            saved
                .iter()
                .find(|s| s.index == i && s.module == p.module)
                .and_then(|s| s.state.clone())
        })
        .collect()
}

/// One line for operators: "4 → 6: cpu 83% vs 60% (envelope: ...)".
pub fn summarize(record: &TickRecord) -> String {
    let current = record.target.current;
    let reasons: Vec<String> = record
        .evaluations
        .iter()
        .map(|e| match &e.outcome {
            EvaluationOutcome::Decided { decision } => format!("{}: {}", e.module, decision.reason),
            EvaluationOutcome::Failed { kind, error } => {
                format!("{} failed ({kind}): {error}", e.module)
            }
        })
        .collect();
    let mut line = if record.desired == current {
        format!("{current} = {current} hold")
    } else {
        format!("{current} → {}", record.desired)
    };
    if let ActuationRecord::ObserveFailed { error } = &record.actuation {
        return format!("target unobservable: {error}");
    }
    if !reasons.is_empty() {
        line.push_str(" — ");
        line.push_str(&reasons.join("; "));
    }
    if let Some(step) = record.envelope.last() {
        line.push_str(&format!(" [envelope: {}]", step.reason));
    }
    match &record.actuation {
        ActuationRecord::DryRun => line.push_str(" (dry-run)"),
        ActuationRecord::Failed { error, .. } => {
            line.push_str(&format!(" (actuator failed: {error})"))
        }
        ActuationRecord::Started { detail } => line.push_str(&format!(" (started: {detail})")),
        _ => {}
    }
    line
}

/// Where the actuator of scaler `name` saves a change it starts before its
/// first step outside the target (see [`Actuator::set_checkpoint`]): the
/// scaler's row of changes in flight in the journal, which the tick's end
/// brings up to date again.
fn checkpoint(services: &Services, name: &str) -> crate::actuators::Checkpoint {
    let journal = services.journal.clone();
    let name: Arc<str> = name.into();
    crate::actuators::Checkpoint::new(move |change| {
        let (journal, name) = (journal.clone(), name.clone());
        Box::pin(async move {
            if let Err(err) = journal
                .save_in_flight(&name, Some(&change.to_string()))
                .await
            {
                tracing::error!(scaler = %name, error = %err, "Could not keep the change just started in the journal; a restart within this tick would not carry it on.");
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Decision, ParameterSpec};

    fn evaluation(outcome: EvaluationOutcome) -> Evaluation {
        Evaluation {
            module: "m".into(),
            digest: None,
            load_error: None,
            limits: None,
            abstained: false,
            context: Context {
                now_ms: 0,
                scaler: "web".into(),
                target: Target {
                    kind: "simulator".into(),
                    name: "web".into(),
                    current: 4,
                    ready: 4,
                    min: 1,
                    max: 10,
                },
                metrics: Vec::new(),
                events: Vec::new(),
                parameters: serde_json::json!({}),
                state: None,
            },
            outcome,
            duration_us: 0,
        }
    }

    #[tokio::test]
    async fn a_pause_is_stored_once_a_change_under_way_is_made() {
        let handle = ScalerHandle::new(ScalerStatus::default());
        let acting = handle.acting.lock().await;
        // As the API's pause does: the flag stored under `acting`.
        let pause = |handle: Arc<ScalerHandle>, paused: bool| async move {
            let _acting = handle.acting().await;
            handle.paused.store(paused, Ordering::Relaxed);
        };
        let pausing = tokio::spawn(pause(handle.clone(), true));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!handle.is_paused(), "stored while a change was under way");
        drop(acting);
        pausing.await.unwrap();
        assert!(handle.is_paused());
        // Nothing under way: at once.
        pause(handle.clone(), false).await;
        assert!(!handle.is_paused());
    }

    #[test]
    fn a_tick_that_panics_again_is_one_problem() {
        let mut problems = vec!["metric cpu is stale".to_owned()];
        for i in 0..3 {
            problems = with_panic(&problems, &format!("boom {i}"));
        }
        assert_eq!(
            problems,
            [
                "metric cpu is stale",
                "tick panicked (a bug; see the log): boom 2"
            ]
        );
    }

    fn decided(desired: Option<u32>) -> Evaluation {
        evaluation(EvaluationOutcome::Decided {
            decision: Decision {
                desired,
                reason: String::new(),
                state: None,
            },
        })
    }

    fn failed() -> Evaluation {
        evaluation(EvaluationOutcome::Failed {
            kind: "policy_error".into(),
            error: "metric \"queue\" could not be read: query returned no data".into(),
        })
    }

    /// What `state` settles on at `now_ms` for a scaler at `current` (bounds
    /// 1..20) whose policies propose `proposal`.
    fn desired_of(
        mut state: EnvelopeState,
        behavior: &crate::config::Behavior,
        now_ms: i64,
        current: u32,
        proposal: u32,
    ) -> u32 {
        let input = envelope::Input {
            now_ms,
            current,
            min: 1,
            max: 20,
            proposal: Some(proposal),
            failed_metrics: &[],
            policy_failed: false,
            no_votes: false,
            paused: false,
            in_flight: None,
            behavior,
        };
        envelope::apply(&mut state, &input).desired
    }

    /// A journaled tick that held at `current`, keeping `recommendation`.
    fn tick(time_ms: i64, current: u32, recommendation: Option<u32>) -> TickSummary {
        TickSummary {
            id: 1,
            time_ms,
            mode: crate::config::Mode::Enforce,
            current,
            desired: current,
            recommendation,
            actuation: ActuationRecord::None,
        }
    }

    #[test]
    fn a_restart_in_a_new_scalers_first_window_seeds_it_again() {
        // A new scaler found 10 replicas and was asked for 2 twice, held by
        // the seed of its first tick; the daemon restarts a minute in.
        let ticks = [tick(0, 10, Some(2)), tick(15_000, 10, Some(2))];
        let behavior = crate::config::Behavior::default();
        let desired = |state, now_ms| desired_of(state, &behavior, now_ms, 10, 2);
        let at = |t| t;
        assert_eq!(
            desired(restore_envelope(&ticks, None, 300_000, at), 60_000),
            10
        );
        assert_eq!(
            desired(restore_envelope(&ticks, None, 300_000, at), 301_000),
            2,
            "the seed holds for the scale-down window only"
        );
        assert_eq!(
            desired(restore_envelope(&ticks, Some(-1), 300_000, at), 60_000),
            2,
            "a history that began before these ticks has no seed among them"
        );
    }

    #[test]
    fn a_second_restart_inside_the_window_after_an_outage_keeps_its_seed() {
        // The scaler ran at 10 wanting 10, the daemon was down 11 minutes,
        // came back at T (its first tick seeded 10 again) to a policy
        // asking for 2, and restarts once more a minute later.
        let t = 1_000_000;
        let ticks = [
            tick(t - 660_000 - 15_000, 10, Some(10)),
            tick(t - 660_000, 10, Some(10)),
            tick(t, 10, Some(2)),
            tick(t + 15_000, 10, Some(2)),
            tick(t + 30_000, 10, Some(2)),
            tick(t + 45_000, 10, Some(2)),
        ];
        let behavior = crate::config::Behavior::default();
        let desired = |state, now_ms| desired_of(state, &behavior, now_ms, 10, 2);
        let at = |t| t;
        assert_eq!(
            desired(
                restore_envelope(&ticks, Some(t - 675_001), 300_000, at),
                t + 60_000
            ),
            10,
            "the seed at T holds scale-down until T + 5m"
        );
        assert_eq!(
            desired(
                restore_envelope(&ticks, Some(t - 675_001), 300_000, at),
                t + 301_000
            ),
            2
        );
        // Ticks that kept no recommendation for the window (metrics
        // missing) before it: the same.
        let missing: Vec<_> = (0..30)
            .map(|i| tick(t - 450_000 + i * 15_000, 10, None))
            .chain([tick(t, 10, Some(2)), tick(t + 15_000, 10, Some(2))])
            .collect();
        let with_before: Vec<_> = [tick(t - 465_000, 10, Some(10))]
            .into_iter()
            .chain(missing)
            .collect();
        assert_eq!(
            desired(
                restore_envelope(&with_before, Some(t - 465_001), 300_000, at),
                t + 60_000
            ),
            10,
            "seeded after five minutes without a recommendation"
        );
        // Without the outage, nothing seeds: 2 within the window.
        let steady: Vec<_> = (0..8)
            .map(|i| tick(t - 60_000 + i * 15_000, 10, Some(2)))
            .collect();
        assert_eq!(
            desired(
                restore_envelope(&steady, Some(t - 60_001), 300_000, at),
                t + 60_000
            ),
            2
        );
    }

    #[test]
    fn a_crash_soon_after_an_outage_longer_than_the_read_keeps_its_seed() {
        // Down two hours, back at T (its first tick seeded 10) to a policy
        // asking for 2, and restarted a minute later: the journal is read
        // from an hour back, so the ticks before the outage are not among
        // the ticks read, and the first one read follows a gap.
        let t = 10_000_000;
        let ticks = [
            tick(t, 10, Some(2)),
            tick(t + 15_000, 10, Some(2)),
            tick(t + 30_000, 10, Some(2)),
        ];
        let behavior = crate::config::Behavior::default();
        let now = t + 60_000;
        let read_from = now - 3_600_000;
        assert_eq!(
            desired_of(
                restore_envelope(&ticks, Some(read_from), 300_000, |t| t),
                &behavior,
                now,
                10,
                2
            ),
            10,
            "the seed at T holds scale-down until T + 5m"
        );
    }

    #[test]
    fn an_outage_longer_than_the_scale_down_window_only_seeds_again() {
        // A 10-minute scale-up window, the default 5-minute scale-down one;
        // the scaler ran at 10 wanting 10 and the daemon was down 7 minutes:
        // the scale-up window still holds the old ticks, the scale-down
        // window nothing, and HPA, starting afresh, would seed it.
        let mut behavior = crate::config::Behavior::default();
        behavior.scale_up.stabilization_window = Some(std::time::Duration::from_secs(600));
        let t = 10_000_000;
        let ticks: Vec<_> = (0..10)
            .map(|i| tick(t - 420_000 - i * 15_000, 10, Some(10)))
            .rev()
            .collect();
        let state = || restore_envelope(&ticks, Some(t - 3_600_000), 300_000, |t| t);
        assert_eq!(desired_of(state(), &behavior, t, 10, 2), 10);
    }

    #[test]
    fn a_restart_counts_rate_limits_from_the_slots_the_ticks_counted_from() {
        // One pod a minute, ticks every 15 s. A tick that started 300 ms late
        // scaled 5 -> 6; live, the envelope dated it at its slot, so a minute
        // after the slot 7 is allowed. The restored state must agree.
        let key = "web";
        let offset = crate::daemon::tick_offset_ms(key, 15_000);
        let slot_ms = 1_700_000_000_000 - 1_700_000_000_000 % 15_000 + offset;
        let tick = TickSummary {
            id: 1,
            time_ms: slot_ms + 300,
            mode: crate::config::Mode::Enforce,
            current: 5,
            desired: 6,
            recommendation: Some(7),
            actuation: ActuationRecord::Done {
                detail: String::new(),
            },
        };
        let mut behavior = crate::config::Behavior::default();
        behavior.scale_up.limits = Some(std::sync::Arc::new([crate::config::RateLimit::pods(
            1,
            std::time::Duration::from_secs(60),
        )]));
        let desired = |state| desired_of(state, &behavior, slot_ms + 60_000, 6, 7);
        let slot = |t| crate::daemon::slot_near(key, 15_000, t);
        assert_eq!(slot(slot_ms + 300), slot_ms);
        assert_eq!(
            slot(slot_ms - 200),
            slot_ms,
            "early, as a sped-up clock wakes"
        );
        assert_eq!(
            slot(slot_ms + 5_000),
            slot_ms + 5_000,
            "late: when it started"
        );
        assert_eq!(
            desired(restore_envelope(
                std::slice::from_ref(&tick),
                Some(slot_ms - 1),
                300_000,
                slot
            )),
            7
        );
        assert_eq!(
            desired(restore_envelope(&[tick], Some(slot_ms - 1), 300_000, |t| t)),
            6,
            "dated when it started, the minute is not over"
        );
    }

    #[test]
    fn a_lasting_failure_is_logged_when_it_starts_changes_and_ends() {
        let mut notes = PolicyNotes::default();
        assert!(!notes.decided(), "deciding from the start is not news");
        assert!(
            notes.failed("policy-error", "no metric cpu", true),
            "starts"
        );
        assert!(
            !notes.failed("policy-error", "no metric cpu", true),
            "lasts"
        );
        assert!(
            notes.failed("policy-error", "no metric rps", true),
            "changes"
        );
        assert!(
            notes.failed("policy-error", "no metric rps", false),
            "abstains no more"
        );
        assert!(notes.failed("trap", "no metric rps", false), "another kind");
        assert!(notes.decided(), "ends");
        assert!(!notes.decided());
        assert!(notes.failed("trap", "no metric rps", false), "starts again");
        notes.load_failure = Some(5);
        assert!(
            !notes.failed("trap", "no metric rps", false),
            "kept apart from the journal's note"
        );
        assert!(
            notes.failed("trap", "queue 1204 above 1000", false),
            "changes"
        );
        assert!(
            !notes.failed("trap", "queue 1375 above 1000", false),
            "the same but for a number"
        );
        assert!(
            !notes.failed("trap", "queue 146.99 above 1000", false),
            "whatever its digits"
        );
        let normal: String = without_numbers("depth 2230.09 > 1e3, -4").collect();
        assert_eq!(normal, "depth # > #, -#");
    }

    #[test]
    fn scale_out_wins_and_abstaining_policies_do_not_vote() {
        // (evaluations, abstained) -> (proposal, any_failed, no_votes), at 4 replicas.
        type Case = (Vec<Evaluation>, Vec<bool>, (Option<u32>, bool, bool));
        let cases: Vec<Case> = vec![
            (
                vec![decided(Some(6)), decided(Some(2))],
                vec![],
                (Some(6), false, false),
            ),
            // A hold votes for the current count: no scale-in unless all agree.
            (
                vec![decided(None), decided(Some(2))],
                vec![],
                (Some(4), false, false),
            ),
            (
                vec![decided(None), decided(None)],
                vec![],
                (None, false, false),
            ),
            // A failed policy holds the scaler (the envelope makes it hold).
            (
                vec![failed(), decided(Some(6))],
                vec![false, false],
                (Some(6), true, false),
            ),
            // Failed for want of its metric: it abstains, the other decides;
            // scale-in is then the envelope's missing-metrics rule's to block.
            (
                vec![failed(), decided(Some(6))],
                vec![true, false],
                (Some(6), false, false),
            ),
            (
                vec![failed(), decided(Some(2))],
                vec![true, false],
                (Some(2), false, false),
            ),
            (
                vec![failed(), decided(None)],
                vec![true, false],
                (None, false, false),
            ),
            // Every policy abstained: no vote at all (no recommendation kept).
            (vec![failed()], vec![true], (None, false, true)),
            // No evaluation at all (the host's evaluation task died): hold.
            (vec![], vec![], (None, true, false)),
        ];
        for (i, (evaluations, abstained, expected)) in cases.into_iter().enumerate() {
            let c = combine(4, &evaluations, &abstained);
            assert_eq!((c.proposal, c.any_failed, c.no_votes), expected, "case {i}");
        }
    }

    #[test]
    fn a_policy_reads_the_metrics_its_metric_parameters_name() {
        let spec = |name: &str, kind| ParameterSpec {
            name: name.into(),
            description: String::new(),
            kind,
            required: false,
            default: None,
        };
        let info = PolicyInfo {
            name: "p".into(),
            version: "1".into(),
            description: String::new(),
            parameters: vec![
                spec("metric", ParameterKind::Metric),
                spec("guard", ParameterKind::Metric),
                spec("mode", ParameterKind::Text),
            ],
        };
        let parameters = serde_json::json!({"metric": "queue", "mode": "latency", "other": "cpu"});
        assert_eq!(
            metrics_read(&info, &parameters).collect::<Vec<_>>(),
            ["queue"]
        );
    }

    #[test]
    fn a_metric_parameter_left_to_its_default_names_a_metric_read() {
        let spec = |name: &str, default: Option<&str>| ParameterSpec {
            name: name.into(),
            description: String::new(),
            kind: ParameterKind::Metric,
            required: default.is_none(),
            default: default.map(|d| serde_json::json!(d)),
        };
        let info = PolicyInfo {
            name: "p".into(),
            version: "1".into(),
            description: String::new(),
            parameters: vec![spec("metric", None), spec("guard", Some("errors"))],
        };
        // `guard` is not configured: its default names the metric read.
        let configured = serde_json::json!({"metric": "queue"});
        assert!(reads_any(&info, &configured, &["errors"]));
        assert!(reads_any(&info, &configured, &["queue"]));
        assert!(!reads_any(&info, &configured, &["cpu"]));
        // Configured, the default is not read.
        let configured = serde_json::json!({"metric": "queue", "guard": "latency"});
        assert!(!reads_any(&info, &configured, &["errors"]));
        assert!(reads_any(&info, &configured, &["latency"]));
    }
}
