//! The host's own metrics, in Prometheus exposition format on `/metrics`.
//!
//! Every metric is described here, once. Label values come from fixed sets
//! (error kinds, actuation results, envelope rules) or from names in the
//! config (scalers, modules, sources), so label cardinality is bounded by the
//! config, never by data.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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

/// Labels for an actuation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActuationLabels {
    /// The scaler's name.
    pub scaler: String,
    /// `done`, `started`, `dry_run` or `failed`.
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

/// Labels for a config reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConfigReloadLabels {
    /// `applied`, `unchanged` or `refused`.
    pub result: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn memory_histogram() -> Histogram {
    // 1 MiB .. 4 GiB (the largest 32-bit memory): a Rust policy starts
    // at about 2 MiB; runtime.max_memory defaults to 64 MiB.
    Histogram::new(exponential_buckets(1_048_576.0, 2.0, 13))
}

fn latency_histogram() -> Histogram {
    // 10 µs .. ~5 s: evaluations are microseconds, timeouts are 100 ms+.
    Histogram::new(exponential_buckets(0.000_01, 2.5, 15))
}

/// Every metric the host exposes about itself.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    /// Ticks run, per scaler.
    pub ticks: Family<ScalerLabels, Counter>,
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
    /// Actuations, by scaler and result.
    pub actuations: Family<ActuationLabels, Counter>,
    /// Changes the envelope made to policies' answers, by rule.
    pub envelope_interventions: Family<RuleLabels, Counter>,
    /// Replicas each target is asked to run.
    pub replicas_current: Family<ScalerLabels, Gauge>,
    /// Replicas each target is ready with.
    pub replicas_ready: Family<ScalerLabels, Gauge>,
    /// Replicas the host last decided on, per scaler.
    pub replicas_desired: Family<ScalerLabels, Gauge>,
    /// Policy modules that failed to load, by module and kind.
    pub module_load_errors: Family<LoadErrorLabels, Counter>,
    /// Policy modules loaded and serving.
    pub modules_loaded: Gauge,
    /// Module versions loaded (at start and by hot reload), by module and
    /// where their code came from.
    pub module_loads: Family<ModuleLoadLabels, Counter>,
    /// Config reloads, by result.
    pub config_reloads: Family<ConfigReloadLabels, Counter>,
    /// Journal appends or updates that failed.
    pub journal_errors: Counter,
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
            ticks: Family::default(),
            tick_lag: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            evaluation_duration: Family::new_with_constructor(latency_histogram),
            policy_memory: Family::new_with_constructor(memory_histogram),
            policy_memory_growths: Family::default(),
            policy_errors: Family::default(),
            metric_errors: Family::default(),
            actuations: Family::default(),
            envelope_interventions: Family::default(),
            replicas_current: Family::default(),
            replicas_ready: Family::default(),
            replicas_desired: Family::default(),
            module_load_errors: Family::default(),
            modules_loaded: Gauge::default(),
            module_loads: Family::default(),
            config_reloads: Family::default(),
            journal_errors: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("ticks", "Scaler ticks run", t.ticks.clone());
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
            "replicas_current",
            "Replicas the target is asked to run",
            t.replicas_current.clone(),
        );
        registry.register(
            "replicas_ready",
            "Replicas of the target that are ready",
            t.replicas_ready.clone(),
        );
        registry.register(
            "replicas_desired",
            "Replicas the host last decided on",
            t.replicas_desired.clone(),
        );
        registry.register(
            "module_load_errors",
            "Policy modules that failed to load",
            t.module_load_errors.clone(),
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
            "journal_errors",
            "Journal writes that failed",
            t.journal_errors.clone(),
        );
        Telemetry { registry, ..t }
    }

    /// The exposition text for `/metrics`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a failed policy evaluation.
    pub fn policy_error(&self, module: &str, kind: &str) {
        self.policy_errors
            .get_or_create(&PolicyErrorLabels {
                module: module.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts a failed metric fetch.
    pub fn metric_error(&self, source: &str, kind: &str) {
        self.metric_errors
            .get_or_create(&MetricErrorLabels {
                source: source.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts an actuation.
    pub fn actuation(&self, scaler: &str, result: &str) {
        self.actuations
            .get_or_create(&ActuationLabels {
                scaler: scaler.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts a module version that loaded.
    pub fn module_loaded(&self, module: &str, origin: &str) {
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
            .get_or_create(&ConfigReloadLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts a failed module load.
    pub fn module_load_error(&self, module: &str, kind: &str) {
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
    fn exposition_names_every_metric_with_prefix() {
        let t = Telemetry::new();
        t.ticks
            .get_or_create(&ScalerLabels {
                scaler: "web".into(),
            })
            .inc();
        t.policy_error("tt", "trap");
        t.tick_lag.observe(0.002);
        let text = t.encode();
        assert!(
            text.contains("scalewise_ticks_total{scaler=\"web\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("scalewise_policy_errors_total{module=\"tt\",kind=\"trap\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("scalewise_tick_lag_seconds_count 1"),
            "{text}"
        );
    }
}
