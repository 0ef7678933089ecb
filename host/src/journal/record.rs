//! What one tick of one scaler leaves in the journal.
//!
//! A record holds enough to explain the decision (every input and every
//! step) and to re-run each policy evaluation exactly: the full context each
//! policy was given and the digest of the module that answered.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{Mode, RuntimeLimits};
use crate::policy::{Context, Decision, Target};

/// One tick of one scaler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TickRecord {
    /// Assigned by the journal when the record is appended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    /// When the tick ran (host clock, ms since the Unix epoch).
    pub time_ms: i64,
    /// The scaler's name.
    pub scaler: String,
    /// Enforce or dry-run, at the time of the tick.
    pub mode: Mode,
    /// The target as observed at the start of the tick (with the scaler's bounds).
    pub target: Target,
    /// What else the target reported about itself at the start of the tick
    /// (shards, instances by lifecycle state, ...: the `target` source's
    /// metrics beyond the replica counts).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, f64>,
    /// Metrics that could not be read this tick, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metric_errors: Vec<MetricFailure>,
    /// Each policy's evaluation, in config order.
    pub evaluations: Vec<Evaluation>,
    /// The policies' combined answer (scale-out wins; `None` = every policy held
    /// or failed).
    pub proposal: Option<u32>,
    /// What the envelope changed, step by step, in words for operators.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub envelope: Vec<EnvelopeStep>,
    /// The replica count the host settled on (equal to `target.current` when holding).
    pub desired: u32,
    /// The recommendation kept for stabilisation windows (HPA semantics);
    /// `None` when the tick kept none (see [`crate::envelope::Verdict`]).
    pub recommendation: Option<u32>,
    /// What the actuator did.
    pub actuation: ActuationRecord,
}

impl TickRecord {
    /// Whether this tick changed (or, in dry-run, would have changed) the target.
    pub fn is_scale(&self) -> bool {
        self.desired != self.target.current
    }
}

/// A metric that could not be read this tick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricFailure {
    /// The metric's name in the scaler's config.
    pub metric: String,
    /// A fixed label for the kind of failure (`timeout`, `stale`, ...).
    pub kind: String,
    /// The full error.
    pub error: String,
}

/// One policy's evaluation within a tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The module's name (file stem in the policy folder).
    pub module: String,
    /// sha256 of the module's bytes, hex; `None` when the module was not loaded.
    pub digest: Option<Arc<str>>,
    /// Exactly what the policy was given.
    pub context: Context,
    /// What it answered.
    pub outcome: EvaluationOutcome,
    /// How long the call took, in microseconds.
    pub duration_us: u64,
    /// Set on the first tick after a newer file of this module failed to
    /// load: that error, and that this evaluation ran on the version still
    /// serving (`digest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_error: Option<String>,
    /// The runtime limits the call ran under, when they are not the
    /// defaults (`[runtime]` in the config): a replay runs under the same
    /// ones, or a call that ran out of fuel would replay as a decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Arc<RuntimeLimits>>,
    /// The policy failed for want of a metric it reads that could not be
    /// read this tick: it abstained (no vote; scale-in stays blocked by the
    /// missing metric), rather than making the scaler hold. Records written
    /// before this was kept do not say.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub abstained: bool,
}

impl Evaluation {
    /// `limits` as [`Evaluation::limits`] records them: `None` for the
    /// defaults; where compiled code is cached plays no part. The runtime
    /// works this out once ([`crate::runtime::PolicyModule::recorded_limits`]).
    pub fn recorded_limits(limits: &RuntimeLimits) -> Option<Arc<RuntimeLimits>> {
        let limits = RuntimeLimits {
            cache_dir: None,
            ..limits.clone()
        };
        (limits != RuntimeLimits::default()).then(|| Arc::new(limits))
    }
}

/// A policy's answer, or why there was none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum EvaluationOutcome {
    /// The policy decided.
    Decided {
        /// The decision.
        decision: Decision,
    },
    /// The call failed; the scaler held for this policy.
    Failed {
        /// A fixed label (`policy_error`, `trap`, `timeout`, `out_of_memory`,
        /// `stack_overflow`, `invalid_decision`, `module_unavailable`).
        kind: String,
        /// The full error.
        error: String,
    },
}

/// One change the envelope made to the policies' answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeStep {
    /// Which rule: `paused`, `in-flight`, `missing-metrics`, `stabilization`,
    /// `rate-limit`, `bounds`, `cooldown`.
    pub rule: String,
    /// Replicas before this step.
    pub from: u32,
    /// Replicas after it.
    pub to: u32,
    /// Why, for operators ("scale-down limited to 20 pods per 60s").
    pub reason: String,
}

/// What the actuator did with the tick's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum ActuationRecord {
    /// Nothing to do: the decision equals the current count.
    None,
    /// Dry-run: the change was only recorded.
    DryRun,
    /// About to call the actuator (a record is written before the call and
    /// updated after, so a crash in between is visible).
    Pending,
    /// The change was made.
    Done {
        /// What the actuator reported.
        detail: String,
    },
    /// The change started and will take several ticks.
    Started {
        /// What the actuator reported.
        detail: String,
    },
    /// The actuator failed.
    Failed {
        /// A fixed label.
        kind: String,
        /// The error.
        error: String,
    },
    /// The target could not be observed; nothing was decided.
    ObserveFailed {
        /// The error.
        error: String,
    },
}
