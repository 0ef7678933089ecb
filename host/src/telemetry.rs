//! The host's own metrics, in Prometheus exposition format on `/metrics`.
//!
//! Every metric is described here, once. Label values come from fixed sets
//! (error kinds, actuation results, envelope rules) or from names in the
//! config (scalers, modules, sources), so label cardinality is bounded by the
//! config, never by data. A scaler a reload removes, or a module whose file
//! leaves the policy folder, takes its series along
//! ([`Telemetry::forget_scaler`], [`Telemetry::forget_module`]): names that
//! come and go (renames, versioned file names) do not pile up.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::scaler::{ScalerHandle, ScalerStatus};

/// Labels naming a scaler.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScalerLabels {
    /// The scaler's name.
    pub scaler: String,
}

/// Labels naming a policy module.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModuleLabels {
    /// The module's name.
    pub module: String,
}

/// Labels for a policy evaluation failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyErrorLabels {
    /// The module's name.
    pub module: String,
    /// A fixed error kind (`trap`, `timeout`, ...).
    pub kind: String,
}

/// Labels for a metric fetch failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetricErrorLabels {
    /// The source's name (`simulator` or a `[sources.<name>]` key).
    pub source: String,
    /// A fixed error kind (`timeout`, `stale`, ...).
    pub kind: String,
}

/// Labels naming a metric source.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// The source's name (`simulator`, `target` or a `[sources.<name>]` key).
    pub source: String,
}

/// Labels for a call to a target's system.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetCallLabels {
    /// The target's kind (`kubernetes`, `aws-asg`, `rebalance`, `simulator`).
    pub kind: String,
    /// `observe` (read its state, and take a change in flight a step on) or
    /// `scale` (start a change).
    pub call: String,
}

/// Labels for an actuation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActuationLabels {
    /// The scaler's name.
    pub scaler: String,
    /// `done`, `started`, `dry_run`, `failed`, `observe_failed` or
    /// `not_recorded`.
    pub result: String,
}

/// Labels for a change the envelope made.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    /// The envelope rule (`stabilization`, `rate-limit`, ...).
    pub rule: String,
}

/// Labels for a module load failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoadErrorLabels {
    /// The module's name.
    pub module: String,
    /// A fixed error kind.
    pub kind: String,
}

/// Labels for a module version that loaded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModuleLoadLabels {
    /// The module's name.
    pub module: String,
    /// `compiled` or `cache`.
    pub origin: String,
}

/// Labels for how something went: a config reload, a notification.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `applied`, `unchanged` or `refused` (a reload); `sent`, `failed` or
    /// `dropped` (a notification).
    pub result: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn memory_histogram() -> Histogram {
    // 1 MiB .. 4 GiB (the largest 32-bit memory): a Rust policy starts
    // at about 2 MiB; runtime.max_memory defaults to 64 MiB.
    Histogram::new(exponential_buckets(1_048_576.0, 2.0, 13))
}

/// The running scalers' handles, by name (shared, swapped whole on reload).
pub type ScalerHandles = Arc<ArcSwap<BTreeMap<String, Arc<ScalerHandle>>>>;

/// One replica figure of a scaler's status.
type ReplicaValue = fn(&ScalerStatus) -> Option<u32>;

/// The per-scaler series, read from the scalers' handles at each scrape
/// rather than kept in label maps: at 10,000 scalers a heap profile put the
/// per-scaler families (a copy of the name, the map's slot, the value per
/// entry) at ~4 MiB, and every tick paid for four map lookups. A scaler removed by a
/// reload drops out of the exposition with its handle.
#[derive(Debug)]
struct ScalerMetrics {
    scalers: ScalerHandles,
}

impl Collector for ScalerMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let scalers = self.scalers.load();
        let ticks = ConstCounter::new(0u64);
        // Help texts end with a full stop, as `Registry::register` makes them.
        let mut family =
            encoder.encode_descriptor("ticks", "Scaler ticks run.", None, ticks.metric_type())?;
        for (name, handle) in scalers.iter() {
            let labels = ScalerLabels {
                scaler: name.clone(),
            };
            ConstCounter::new(handle.ticks.load(Ordering::Relaxed))
                .encode(family.encode_family(&labels)?)?;
        }
        let statuses: Vec<_> = scalers.values().map(|h| h.status.load()).collect();
        let gauges: [(&str, &str, ReplicaValue); 3] = [
            (
                "replicas_current",
                "Replicas the target is asked to run.",
                |s| s.current,
            ),
            (
                "replicas_ready",
                "Replicas of the target that are ready.",
                |s| s.ready,
            ),
            (
                "replicas_desired",
                "Replicas the host last decided on.",
                |s| s.desired,
            ),
        ];
        for (name, help, value) in gauges {
            let mut family =
                encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
            // A scaler that has not ticked yet has no value to show.
            for (scaler, status) in scalers.keys().zip(&statuses) {
                if let Some(v) = value(status) {
                    let labels = ScalerLabels {
                        scaler: scaler.clone(),
                    };
                    ConstGauge::new(i64::from(v)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        // For alerts: a pause left on after an incident, a scaler that
        // stopped ticking.
        let mut family = encoder.encode_descriptor(
            "scaler_paused",
            "1 while the scaler is paused, else 0.",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for (scaler, handle) in scalers.iter() {
            let labels = ScalerLabels {
                scaler: scaler.clone(),
            };
            ConstGauge::new(i64::from(handle.is_paused()))
                .encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "last_tick_timestamp_seconds",
            "When the scaler's last tick ran, in seconds since the Unix epoch.",
            None,
            ConstGauge::new(0f64).metric_type(),
        )?;
        for (scaler, status) in scalers.keys().zip(&statuses) {
            if let Some(ms) = status.last_tick_ms {
                let labels = ScalerLabels {
                    scaler: scaler.clone(),
                };
                ConstGauge::new(ms as f64 / 1000.0).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Evaluation latency buckets, 10 µs .. 600 s (evaluations take
/// microseconds; `runtime.timeout` is 100 ms by default and may be up to
/// 600 s, so a timed-out evaluation lands in a bucket of its own rather
/// than only in `+Inf`): 1-2.5-5 steps written out,
/// so the `le` labels read as written (2.5× steps computed by
/// multiplication gave `le="0.006103515625000001"`).
const LATENCY_BUCKETS: [f64; 22] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 600.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Buckets for calls to other systems (a Prometheus query, an API server, a
/// webhook): milliseconds to a minute, past the 20 s a Kubernetes or AWS
/// call may take and a query's configured timeout.
const CALL_BUCKETS: [f64; 16] = [
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];

fn call_histogram() -> Histogram {
    Histogram::new(CALL_BUCKETS)
}

/// Every metric the host exposes about itself.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    /// The running scalers, by name: the per-scaler series (ticks, replicas)
    /// are read from their handles at each scrape ([`ScalerMetrics`]). The
    /// daemon keeps this map current; the HTTP API serves it too.
    scalers: ScalerHandles,
    /// How late a tick started versus its schedule, in seconds of host clock.
    pub tick_lag: Histogram,
    /// Duration of one policy evaluation, per module.
    pub evaluation_duration: HistogramFamily<ModuleLabels>,
    /// The largest size a policy's memory reached in one evaluation, per module.
    pub policy_memory: HistogramFamily<ModuleLabels>,
    /// Growths of a policy's memory during evaluations, per module.
    pub policy_memory_growths: Family<ModuleLabels, Counter>,
    /// Failed policy evaluations, by module and kind.
    pub policy_errors: Family<PolicyErrorLabels, Counter>,
    /// Failed metric fetches, by source and kind.
    pub metric_errors: Family<MetricErrorLabels, Counter>,
    /// How long a metric took to read, by source (failures included).
    pub metric_fetch_duration: HistogramFamily<SourceLabels>,
    /// How long the target's system took to answer a call, by target kind
    /// and call.
    pub target_call_duration: HistogramFamily<TargetCallLabels>,
    /// Actuations, by scaler and result.
    pub actuations: Family<ActuationLabels, Counter>,
    /// Changes the envelope made to policies' answers, by rule.
    pub envelope_interventions: Family<RuleLabels, Counter>,
    /// Policy modules that failed to load, by module and kind.
    pub module_load_errors: Family<LoadErrorLabels, Counter>,
    /// Policy modules loaded and serving.
    pub modules_loaded: Gauge,
    /// Module versions loaded (at start and by hot reload), by module and
    /// where their code came from.
    pub module_loads: Family<ModuleLoadLabels, Counter>,
    /// Config reloads, by result.
    pub config_reloads: Family<ResultLabels, Counter>,
    /// Webhook notifications, by result (`sent`, `failed`, `dropped`).
    pub notifications: Family<ResultLabels, Counter>,
    /// Journal appends or updates that failed.
    pub journal_errors: Counter,
    /// Ticks that panicked (a bug; the log names the scaler).
    pub tick_panics: Counter,
    /// 1 while this replica acts (it leads, or there is no leader
    /// election), 0 while it follows.
    pub leader: Gauge,
    /// The second labels used with each module name, so that the name's
    /// series can be removed when it goes (a `Family` cannot list its own;
    /// modules are few).
    seen: Mutex<Seen>,
}

/// Every `result` of `actuations_total`: a scaler that goes takes each
/// one's series along (a fixed list, not a map per scaler: at 10,000
/// scalers that map cost megabytes).
pub const ACTUATION_RESULTS: [&str; 6] = [
    "done",
    "started",
    "dry_run",
    "failed",
    "observe_failed",
    "not_recorded",
];

/// Second label values used per module name, by family.
#[derive(Debug, Default)]
struct Seen {
    /// Policy error kinds, by module.
    policy_errors: Labels,
    /// Load failure kinds, by module.
    load_errors: Labels,
    /// Code origins of loads, by module.
    loads: Labels,
    /// Modules a reload left neither in the policy folder nor named by the
    /// config ([`Telemetry::retire_modules`]): their errors are not
    /// counted (a tick of the config before, still under way, would bring
    /// their series back), until the module loads again.
    /// (Each with how many reloads since retired: after a few, no tick of
    /// a config that named it can still be under way, and it is let go,
    /// so that versioned names do not pile up here instead.)
    retired: BTreeMap<String, u32>,
    /// Metric error kinds, by source name.
    source_errors: Labels,
    /// Sources with a fetch latency series.
    sources_fetched: BTreeSet<String>,
    /// Sources a reload removed ([`Telemetry::retire_sources`]), as
    /// `retired` is for modules: nothing more is counted of them until a
    /// config names them again.
    retired_sources: BTreeMap<String, u32>,
}

/// Reloads a retired module stays retired through when no config uses it
/// (ticks of the configs before may still be under way).
const RETIRED_RELOADS: u32 = 2;

/// Second label values, by name.
type Labels = BTreeMap<String, BTreeSet<String>>;

/// The names retired after a reload: those retired `before` (with how many
/// reloads ago) for fewer than [`RETIRED_RELOADS`] reloads, and the
/// `candidates`, unless `in_use`.
fn retire(
    before: BTreeMap<String, u32>,
    candidates: BTreeSet<String>,
    in_use: impl Fn(&str) -> bool,
) -> BTreeMap<String, u32> {
    let mut retired: BTreeMap<String, u32> = before
        .into_iter()
        .filter(|(_, reloads)| *reloads < RETIRED_RELOADS)
        .map(|(name, reloads)| (name, reloads + 1))
        .collect();
    for name in candidates {
        retired.insert(name, 0);
    }
    retired.retain(|name, _| !in_use(name));
    retired
}

/// Notes `label` under `name`, copying the strings only the first time.
fn note(labels: &mut Labels, name: &str, label: &str) {
    match labels.get_mut(name) {
        Some(set) if set.contains(label) => {}
        Some(set) => {
            set.insert(label.to_owned());
        }
        None => {
            labels.insert(name.to_owned(), BTreeSet::from([label.to_owned()]));
        }
    }
}

/// Takes the labels noted under `name`.
fn take(labels: &mut Labels, name: &str) -> BTreeSet<String> {
    labels.remove(name).unwrap_or_default()
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    /// Creates and registers every metric under the `scalewise` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("scalewise");
        let t = Telemetry {
            scalers: ScalerHandles::default(),
            tick_lag: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            evaluation_duration: Family::new_with_constructor(latency_histogram),
            policy_memory: Family::new_with_constructor(memory_histogram),
            policy_memory_growths: Family::default(),
            policy_errors: Family::default(),
            metric_errors: Family::default(),
            metric_fetch_duration: Family::new_with_constructor(call_histogram),
            target_call_duration: Family::new_with_constructor(call_histogram),
            actuations: Family::default(),
            envelope_interventions: Family::default(),
            module_load_errors: Family::default(),
            modules_loaded: Gauge::default(),
            module_loads: Family::default(),
            config_reloads: Family::default(),
            notifications: Family::default(),
            journal_errors: Counter::default(),
            tick_panics: Counter::default(),
            leader: Gauge::default(),
            seen: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register(
            "tick_lag_seconds",
            "How late ticks start versus their schedule",
            t.tick_lag.clone(),
        );
        registry.register(
            "policy_evaluation_duration_seconds",
            "Duration of one policy evaluation",
            t.evaluation_duration.clone(),
        );
        registry.register(
            "metric_fetch_duration_seconds",
            "How long reading a metric took, by source (failed reads included)",
            t.metric_fetch_duration.clone(),
        );
        registry.register(
            "target_call_duration_seconds",
            "How long the target's system took to answer, by target kind and call (observe, scale)",
            t.target_call_duration.clone(),
        );
        registry.register(
            "policy_memory_bytes",
            "The largest size a policy's memory reached in one evaluation",
            t.policy_memory.clone(),
        );
        registry.register(
            "policy_memory_growths",
            "Growths of a policy's memory during evaluations (each costs the host microseconds)",
            t.policy_memory_growths.clone(),
        );
        registry.register(
            "policy_errors",
            "Failed policy evaluations by kind",
            t.policy_errors.clone(),
        );
        registry.register(
            "metric_errors",
            "Metric fetches that failed, by source and kind",
            t.metric_errors.clone(),
        );
        registry.register(
            "actuations",
            "Changes made (or only recorded, in dry-run) to targets",
            t.actuations.clone(),
        );
        registry.register(
            "envelope_interventions",
            "Changes the safety envelope made to policies' answers",
            t.envelope_interventions.clone(),
        );
        registry.register(
            "module_load_errors",
            "Policy modules that failed to load",
            t.module_load_errors.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica acts (it holds the leader lease, or there is no leader election), 0 while it follows",
            t.leader.clone(),
        );
        registry.register(
            "modules_loaded",
            "Policy modules loaded and serving",
            t.modules_loaded.clone(),
        );
        registry.register(
            "module_loads",
            "Policy module versions loaded, by where their code came from (compiled or cache)",
            t.module_loads.clone(),
        );
        registry.register(
            "config_reloads",
            "Config file reloads, by result (applied, unchanged, refused)",
            t.config_reloads.clone(),
        );
        registry.register(
            "notifications",
            "Webhook notifications of changes of replicas, by result (sent, failed, dropped)",
            t.notifications.clone(),
        );
        registry.register(
            "journal_errors",
            "Journal writes that failed",
            t.journal_errors.clone(),
        );
        registry.register(
            "tick_panics",
            "Scaler ticks that panicked (a bug: the scaler held and went on; the log names it)",
            t.tick_panics.clone(),
        );
        registry.register_collector(Box::new(ScalerMetrics {
            scalers: t.scalers.clone(),
        }));
        Telemetry { registry, ..t }
    }

    /// The running scalers' handles, by name, that the per-scaler series are
    /// read from. The daemon stores the current set here.
    pub fn scalers(&self) -> ScalerHandles {
        self.scalers.clone()
    }

    /// The exposition text for `/metrics`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes the series of a scaler a reload removed (its actuation
    /// counts; the per-scaler gauges leave with its handle).
    pub fn forget_scaler(&self, scaler: &str) {
        for result in ACTUATION_RESULTS {
            self.actuations.remove(&ActuationLabels {
                scaler: scaler.to_owned(),
                result: result.to_owned(),
            });
        }
    }

    /// Removes the series of a module whose file left the policy folder:
    /// its loads, load failures, evaluation latency, memory and errors.
    /// Scalers that still use it count its `module_unavailable` errors
    /// again from 0.
    pub fn forget_module(&self, module: &str) {
        self.forget_module_in(&mut self.seen(), module);
    }

    fn forget_module_in(&self, seen: &mut Seen, module: &str) {
        let (kinds, load_kinds, origins) = (
            take(&mut seen.policy_errors, module),
            take(&mut seen.load_errors, module),
            take(&mut seen.loads, module),
        );
        let labels = ModuleLabels {
            module: module.to_owned(),
        };
        self.evaluation_duration.remove(&labels);
        self.policy_memory.remove(&labels);
        self.policy_memory_growths.remove(&labels);
        for kind in kinds {
            self.policy_errors.remove(&PolicyErrorLabels {
                module: module.to_owned(),
                kind,
            });
        }
        for kind in load_kinds {
            self.module_load_errors.remove(&LoadErrorLabels {
                module: module.to_owned(),
                kind,
            });
        }
        for origin in origins {
            self.module_loads.remove(&ModuleLoadLabels {
                module: module.to_owned(),
                origin,
            });
        }
    }

    /// The modules that have series of their own (loads, load failures,
    /// errors).
    pub fn modules_counted(&self) -> BTreeSet<String> {
        let seen = self.seen();
        [&seen.policy_errors, &seen.load_errors, &seen.loads]
            .into_iter()
            .flat_map(|labels| labels.keys().cloned())
            .collect()
    }

    /// Removes the series of those of `candidates` not `in_use` (a reload
    /// left them neither in the policy folder nor named by the config),
    /// and counts no more errors of theirs, until one loads again. Those
    /// retired before stay so unless now in use (a tick of the config
    /// before the last two reloads may still be under way). `in_use` is
    /// asked under the lock loads are counted under, so a module counted
    /// as loaded is seen in use.
    pub fn retire_modules(&self, candidates: BTreeSet<String>, in_use: impl Fn(&str) -> bool) {
        // Under the lock `policy_error` counts under: an error counted
        // after this brings no series back.
        let mut seen = self.seen();
        let retired = retire(std::mem::take(&mut seen.retired), candidates, in_use);
        for module in retired.keys() {
            self.forget_module_in(&mut seen, module);
        }
        seen.retired = retired;
    }

    /// The sources with series.
    pub fn sources_counted(&self) -> BTreeSet<String> {
        let seen = self.seen();
        let errors = seen.source_errors.keys();
        errors.chain(&seen.sources_fetched).cloned().collect()
    }

    /// Removes the series of those of `candidates` not `in_use` (sources a
    /// reload removed or renamed) and counts nothing more of theirs until
    /// a config names them again, as [`Telemetry::retire_modules`] does
    /// for modules (a tick of the config before may still be fetching).
    pub fn retire_sources(&self, candidates: BTreeSet<String>, in_use: impl Fn(&str) -> bool) {
        let mut seen = self.seen();
        let retired = retire(
            std::mem::take(&mut seen.retired_sources),
            candidates,
            in_use,
        );
        for source in retired.keys() {
            for kind in take(&mut seen.source_errors, source) {
                self.metric_errors.remove(&MetricErrorLabels {
                    source: source.clone(),
                    kind,
                });
            }
            if seen.sources_fetched.remove(source) {
                self.metric_fetch_duration.remove(&SourceLabels {
                    source: source.clone(),
                });
            }
        }
        seen.retired_sources = retired;
    }

    /// Counts a failed policy evaluation (not of a retired module).
    pub fn policy_error(&self, module: &str, kind: &str) {
        let mut seen = self.seen();
        if seen.retired.contains_key(module) {
            return;
        }
        note(&mut seen.policy_errors, module, kind);
        self.policy_errors
            .get_or_create(&PolicyErrorLabels {
                module: module.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts a failed metric fetch (not of a retired source).
    pub fn metric_error(&self, source: &str, kind: &str) {
        let mut seen = self.seen();
        if seen.retired_sources.contains_key(source) {
            return;
        }
        note(&mut seen.source_errors, source, kind);
        self.metric_errors
            .get_or_create(&MetricErrorLabels {
                source: source.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Records how long reading a metric from `source` took (not of a
    /// retired source).
    pub fn metric_fetched(&self, source: &str, took: std::time::Duration) {
        let mut seen = self.seen();
        if seen.retired_sources.contains_key(source) {
            return;
        }
        if !seen.sources_fetched.contains(source) {
            seen.sources_fetched.insert(source.to_owned());
        }
        self.metric_fetch_duration
            .get_or_create(&SourceLabels {
                source: source.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Records how long a `call` to a target of `kind` took.
    pub fn target_called(&self, kind: &str, call: &str, took: std::time::Duration) {
        self.target_call_duration
            .get_or_create(&TargetCallLabels {
                kind: kind.to_owned(),
                call: call.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts an actuation.
    pub fn actuation(&self, scaler: &str, result: &str) {
        debug_assert!(ACTUATION_RESULTS.contains(&result), "{result}");
        self.actuations
            .get_or_create(&ActuationLabels {
                scaler: scaler.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts a module version that loaded.
    pub fn module_loaded(&self, module: &str, origin: &str) {
        let mut seen = self.seen();
        seen.retired.remove(module);
        note(&mut seen.loads, module, origin);
        self.module_loads
            .get_or_create(&ModuleLoadLabels {
                module: module.to_owned(),
                origin: origin.to_owned(),
            })
            .inc();
    }

    /// Counts a config reload.
    pub fn config_reload(&self, result: &str) {
        self.config_reloads
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts a webhook notification's outcome.
    pub fn notification(&self, result: &str) {
        self.notifications
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts a failed module load.
    pub fn module_load_error(&self, module: &str, kind: &str) {
        let mut seen = self.seen();
        seen.retired.remove(module);
        note(&mut seen.load_errors, module, kind);
        self.module_load_errors
            .get_or_create(&LoadErrorLabels {
                module: module.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_labels_read_as_written() {
        let t = Telemetry::new();
        let labels = ModuleLabels { module: "m".into() };
        t.evaluation_duration.get_or_create(&labels).observe(0.003);
        t.tick_lag.observe(0.003);
        let text = t.encode();
        let les: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("_bucket{"))
            .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
            .collect();
        assert!(les.contains(&"0.0025") && les.contains(&"0.008"), "{les:?}");
        for le in les {
            assert!(le.len() <= 12, "bucket label with float noise: {le}");
        }
    }

    #[test]
    fn exposition_names_every_metric_with_prefix() {
        let t = Telemetry::new();
        let web = ScalerHandle::new(ScalerStatus {
            name: "web".into(),
            current: Some(3),
            ready: Some(2),
            desired: Some(5),
            ..ScalerStatus::default()
        });
        web.ticks.fetch_add(7, Ordering::Relaxed);
        // Not ticked yet: a tick count, no replica values.
        let new = ScalerHandle::new(ScalerStatus {
            name: "new".into(),
            ..ScalerStatus::default()
        });
        t.scalers().store(Arc::new(BTreeMap::from([
            ("web".to_owned(), web),
            ("new".to_owned(), new),
        ])));
        t.policy_error("tt", "trap");
        t.tick_lag.observe(0.002);
        let text = t.encode();
        for line in [
            "# TYPE scalewise_ticks counter",
            "scalewise_ticks_total{scaler=\"web\"} 7",
            "scalewise_ticks_total{scaler=\"new\"} 0",
            "# TYPE scalewise_replicas_current gauge",
            "# HELP scalewise_replicas_current Replicas the target is asked to run.",
            "scalewise_replicas_current{scaler=\"web\"} 3",
            "scalewise_replicas_ready{scaler=\"web\"} 2",
            "scalewise_replicas_desired{scaler=\"web\"} 5",
            "scalewise_policy_errors_total{module=\"tt\",kind=\"trap\"} 1",
            "scalewise_tick_lag_seconds_count 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("replicas_current{scaler=\"new\"}"), "{text}");

        // A scaler removed (by a reload) drops out.
        t.scalers().store(Arc::new(BTreeMap::new()));
        let text = t.encode();
        assert!(!text.contains("scaler=\"web\""), "{text}");
        assert!(text.contains("# TYPE scalewise_ticks counter"), "{text}");
    }

    /// A retired module's errors are not counted (a tick of the config
    /// before, under way when the reload applied, brought its series back
    /// for good), until it loads again; a later retirement of other
    /// modules counts its errors again.
    #[test]
    fn a_retired_modules_errors_are_not_counted_until_it_loads() {
        let t = Telemetry::new();
        t.policy_error("tt-v1", "module_unavailable");
        t.policy_error("in-use", "trap");
        // "gone" has no series yet (its file went and the config moved on
        // before a tick counted it): retired all the same.
        let candidates = ["tt-v1", "in-use", "gone"].map(str::to_owned);
        t.retire_modules(BTreeSet::from(candidates), |m| m == "in-use");
        assert!(!t.encode().contains("tt-v1"));
        t.policy_error("tt-v1", "module_unavailable");
        t.policy_error("gone", "module_unavailable");
        t.policy_error("in-use", "trap");
        let text = t.encode();
        assert!(
            !text.contains("tt-v1") && !text.contains("gone"),
            "not brought back: {text}"
        );
        assert!(
            text.contains("scalewise_policy_errors_total{module=\"in-use\",kind=\"trap\"} 2"),
            "{text}"
        );
        t.module_loaded("tt-v1", "compiled");
        t.policy_error("tt-v1", "trap");
        let text = t.encode();
        assert!(
            text.contains("scalewise_policy_errors_total{module=\"tt-v1\",kind=\"trap\"} 1"),
            "{text}"
        );
        t.retire_modules(BTreeSet::from(["tt-v2".to_owned()]), |_| false);
        t.policy_error("tt-v1", "trap");
        assert!(t.encode().contains("kind=\"trap\"} 2"));
        // "gone" stays retired through a later reload that does not use it.
        t.policy_error("gone", "module_unavailable");
        assert!(!t.encode().contains("gone"));
        // Until a reload uses it again.
        t.retire_modules(BTreeSet::new(), |m| m == "gone");
        t.policy_error("gone", "module_unavailable");
        assert!(t.encode().contains("module=\"gone\""));
        // Or two more reloads passed (no tick of a config naming it is under
        // way any more): let go, so versioned names do not pile up.
        let unused = |_: &str| false;
        t.retire_modules(BTreeSet::from(["old".to_owned()]), unused);
        t.retire_modules(BTreeSet::new(), unused);
        t.retire_modules(BTreeSet::new(), unused);
        t.policy_error("old", "module_unavailable");
        assert!(!t.encode().contains("module=\"old\""), "retired still");
        t.retire_modules(BTreeSet::new(), unused);
        t.policy_error("old", "module_unavailable");
        assert!(t.encode().contains("module=\"old\""), "let go");
    }

    #[test]
    fn a_name_that_goes_takes_its_series_along() {
        let t = Telemetry::new();
        for (scaler, result) in [("web", "done"), ("web", "failed"), ("api", "done")] {
            t.actuation(scaler, result);
        }
        for module in ["tt-v1", "tt-v2"] {
            t.module_loaded(module, "compiled");
            t.module_load_error(module, "compile");
            t.policy_error(module, "trap");
            t.evaluation_duration
                .get_or_create(&ModuleLabels {
                    module: module.into(),
                })
                .observe(0.001);
        }
        t.forget_scaler("web");
        t.forget_module("tt-v1");
        let text = t.encode();
        assert!(!text.contains("scaler=\"web\""), "{text}");
        assert!(!text.contains("module=\"tt-v1\""), "{text}");
        for line in [
            "scalewise_actuations_total{scaler=\"api\",result=\"done\"} 1",
            "scalewise_module_loads_total{module=\"tt-v2\",origin=\"compiled\"} 1",
            "scalewise_module_load_errors_total{module=\"tt-v2\",kind=\"compile\"} 1",
            "scalewise_policy_errors_total{module=\"tt-v2\",kind=\"trap\"} 1",
            "scalewise_policy_evaluation_duration_seconds_count{module=\"tt-v2\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // Back again, counted from 0.
        t.actuation("web", "done");
        let text = t.encode();
        assert!(
            text.contains("scalewise_actuations_total{scaler=\"web\",result=\"done\"} 1"),
            "{text}"
        );
    }
}
