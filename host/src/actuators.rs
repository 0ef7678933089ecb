//! Actuators: what changes a target's replica count.
//!
//! A change may take several ticks to complete: an ASG scale-in picks a
//! victim, drains it and only then terminates it; a shard rebalance moves
//! shards before a worker is removed. An actuator therefore reports a change
//! in flight from [`Actuator::observe`], which the control loop calls at the
//! start of every tick and which also advances such a change by a step. While
//! a change is in flight the loop does not start another.

pub mod aws_asg;
pub mod clients;
pub mod kubernetes;
pub mod rebalance;
pub mod simulator;

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Saves a change in flight where a restart finds it (the scaler's row in
/// the journal), as [`Actuator::saved_in_flight`] would give it: see
/// [`Actuator::set_checkpoint`].
#[derive(Clone)]
pub struct Checkpoint(
    std::sync::Arc<
        dyn Fn(serde_json::Value) -> futures::future::BoxFuture<'static, ()> + Send + Sync,
    >,
);

impl Checkpoint {
    /// A checkpoint that hands each change to `save`.
    pub fn new(
        save: impl Fn(serde_json::Value) -> futures::future::BoxFuture<'static, ()>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Checkpoint(std::sync::Arc::new(save))
    }

    /// Saves `change`, returning once it is kept (or failed, which the
    /// saver reports).
    pub async fn save(&self, change: serde_json::Value) {
        (self.0)(change).await
    }
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Checkpoint")
    }
}

/// The target's state as an actuator observed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    /// Replicas the target is asked to run.
    pub current: u32,
    /// Replicas running and ready.
    pub ready: u32,
    /// A change still being carried out, if any.
    pub in_flight: Option<InFlight>,
    /// What else this kind of target reports about itself, by name (the
    /// names [`facts_of`] lists for its kind): scalers read them as metrics
    /// from the `target` source.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, f64>,
}

impl Observed {
    /// A state with no facts beyond the replica counts.
    pub fn new(current: u32, ready: u32, in_flight: Option<InFlight>) -> Self {
        Observed {
            current,
            ready,
            in_flight,
            facts: BTreeMap::new(),
        }
    }
}

/// What every target reports, as metrics of the `target` source: replicas
/// asked for, ready, and the difference.
pub const COMMON_FACTS: &[&str] = &["replicas", "ready", "unready"];

/// The facts a target of actuator kind `kind` reports beyond
/// [`COMMON_FACTS`].
pub fn facts_of(kind: &str) -> &'static [&'static str] {
    match kind {
        "aws-asg" => aws_asg::FACTS,
        "kubernetes" => kubernetes::FACTS,
        "rebalance" => rebalance::FACTS,
        _ => &[],
    }
}

/// A change that has started but not finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// The replica count being moved to.
    pub desired: u32,
    /// When the change started (ms since the Unix epoch).
    pub since_ms: i64,
    /// What is happening, for operators ("draining i-0abc").
    pub detail: String,
}

/// What [`Actuator::scale`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Actuation {
    /// The target now asks for the new count.
    Done {
        /// What was done.
        detail: String,
    },
    /// The change has started and will be advanced by later `observe` calls.
    Started {
        /// What was started.
        detail: String,
    },
}

/// Why an actuator could not observe or change its target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActuatorError {
    /// The target does not exist.
    #[error("target not found: {0}")]
    NotFound(String),
    /// The system that owns the target refused or failed the request.
    #[error("{0}")]
    Failed(String),
}

impl ActuatorError {
    /// A fixed, small label for the host's metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ActuatorError::NotFound(_) => "not_found",
            ActuatorError::Failed(_) => "failed",
        }
    }
}

/// Whether the tick may still change the target: its replica still leads,
/// in the term the tick began in. An actuator that takes a change several
/// steps asks before each step that changes something (a drain, a
/// termination, a shard move, a worker stopped), so that a tick whose
/// replica lost the lease while it ran stops where it is: another replica
/// may be acting on the target already.
pub type MayAct<'a> = &'a (dyn Fn() -> bool + Send + Sync);

/// Something whose replica count Scalewise controls.
#[async_trait]
pub trait Actuator: Send + Sync + fmt::Debug {
    /// The actuator kind, as in config and in the policy's `target.kind`.
    fn kind(&self) -> &'static str;

    /// The target's name as this actuator knows it.
    fn target_name(&self) -> String;

    /// Reads the target's state as of `now_ms`, advancing any change in
    /// flight by one step.
    async fn observe(&self, now_ms: i64) -> Result<Observed, ActuatorError>;

    /// Reads the target's state as [`observe`](Actuator::observe) does but
    /// leaves a change in flight where it is: a paused or dry-run scaler
    /// changes nothing, not even by finishing what it started (no victim
    /// terminated, no worker stopped). The same as `observe` for an
    /// actuator whose changes complete at once.
    async fn observe_only(&self, now_ms: i64) -> Result<Observed, ActuatorError> {
        self.observe(now_ms).await
    }

    /// [`observe`](Actuator::observe), each step of a change in flight
    /// taken only while `may_act` says so (what a tick calls). By default
    /// asked once, before.
    async fn observe_while(
        &self,
        now_ms: i64,
        may_act: MayAct<'_>,
    ) -> Result<Observed, ActuatorError> {
        if may_act() {
            self.observe(now_ms).await
        } else {
            self.observe_only(now_ms).await
        }
    }

    /// The host's clock moved `by_ms` ahead at once (it followed the wall
    /// clock after a suspend or after NTP set it): a change in flight
    /// measured by it (a drain's timeout) does not count the jump as time
    /// the change took. Nothing by default.
    async fn clock_jumped(&self, _by_ms: i64) {}

    /// Gives up a change in flight without finishing it: this replica has
    /// just taken the lead, and what it started when it last led may have
    /// been overtaken by what the leader between did. An actuator may undo
    /// what it half did at its next read of the target (an Auto Scaling
    /// group's victims are undrained and protected again). Nothing by
    /// default.
    async fn forget_in_flight(&self) {}

    /// Gives up the change in flight now, undoing what it half did where
    /// the actuator can (an Auto Scaling group's victims are protected
    /// again and undrained): its scaler is gone, or moved to another
    /// target, for `why`. Says what was given up and how it was left;
    /// `None` when nothing was in flight (and by default).
    async fn abandon_in_flight(&self, _now_ms: i64, _why: &str) -> Option<String> {
        None
    }

    /// Gives up the change in flight, if any, for the actuator that
    /// replaces this one on the same target with other settings (a reload
    /// that changed a drain timeout, a webhook, a token): see
    /// [`resume_in_flight`](Actuator::resume_in_flight). `None` by default.
    async fn take_in_flight(&self) -> Option<Box<dyn Any + Send>> {
        None
    }

    /// Carries on with a change in flight another actuator of the same kind
    /// and target gave up ([`take_in_flight`](Actuator::take_in_flight)),
    /// under this one's settings; one of another kind is dropped. Nothing by
    /// default.
    async fn resume_in_flight(&self, _change: Box<dyn Any + Send>) {}

    /// Gives the actuator the way to save a change it starts before its
    /// first step outside the target: an Auto Scaling group's drain
    /// webhook is asked within the tick that chooses the victims, and a
    /// daemon killed before the tick's end would otherwise keep nothing of
    /// a victim already drained. Nothing by default.
    fn set_checkpoint(&self, _checkpoint: Checkpoint) {}

    /// The change in flight as data the journal keeps, so that a restarted
    /// daemon carries it on ([`restore_in_flight`](Actuator::restore_in_flight))
    /// rather than leave it half done: an Auto Scaling group's victims, some
    /// drained out of their load balancer, would otherwise stay in service
    /// and serve nothing. `None` when nothing is in flight, and by default:
    /// an actuator whose half-done change the target itself shows (a
    /// rebalance re-plans from the shards' owners) keeps nothing.
    async fn saved_in_flight(&self) -> Option<serde_json::Value> {
        None
    }

    /// Carries on, after a restart, with the change `saved` (what
    /// [`saved_in_flight`](Actuator::saved_in_flight) returned before it)
    /// at `now_ms`. Says what it resumed, or why not: a change saved for
    /// another target, or one too old to carry on (the target's own state
    /// has moved on), is not resumed.
    async fn restore_in_flight(
        &self,
        _now_ms: i64,
        _saved: serde_json::Value,
    ) -> Result<String, String> {
        Err(format!("a {} target resumes no change", self.kind()))
    }

    /// Starts moving the target from `current` to `desired` replicas.
    async fn scale(
        &self,
        now_ms: i64,
        current: u32,
        desired: u32,
    ) -> Result<Actuation, ActuatorError>;

    /// [`scale`](Actuator::scale), each step after the first taken only
    /// while `may_act` says so (what a tick calls, having asked it just
    /// before). By default the same as `scale`.
    async fn scale_while(
        &self,
        now_ms: i64,
        current: u32,
        desired: u32,
        may_act: MayAct<'_>,
    ) -> Result<Actuation, ActuatorError> {
        let _ = may_act;
        self.scale(now_ms, current, desired).await
    }

    /// Tells the target's own system what a change did, where it keeps
    /// such a record (a Kubernetes workload's events). Best effort, off the
    /// tick: the journal already has the outcome, so a failure here is only
    /// logged. Nothing by default.
    async fn announce(&self, _announcement: Announcement) {}
}

/// A change of replicas a scaler made, or failed to make, in words: what
/// [`Actuator::announce`] and the webhooks ([`crate::notify`]) are told.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Announcement {
    /// When the tick ran (ms since the Unix epoch).
    pub time_ms: i64,
    /// The scaler.
    pub scaler: String,
    /// The target's actuator kind (`kubernetes`, `aws-asg`, ...).
    pub target_kind: String,
    /// The target's name as its actuator knows it.
    pub target_name: String,
    /// Replicas before.
    pub from: u32,
    /// Replicas asked for.
    pub to: u32,
    /// Why, as the log line says it (the policies' reasons, the envelope's).
    pub reason: String,
    /// The actuator's error, when the change failed.
    pub error: Option<String>,
    /// The tick's journal record, if it was written.
    pub record: Option<i64>,
}
