//! An AWS Auto Scaling group as an actuator (`kind = "aws-asg"`).
//!
//! Scale-out raises the group's desired capacity. Scale-in never lowers it
//! and lets the group pick: Scalewise chooses each victim itself, drains it,
//! and only then lifts its scale-in protection and terminates exactly that
//! instance, decrementing the desired capacity with it:
//!
//! 1. victims are chosen ([`choose_victims`]): unhealthy instances first,
//!    then from the Availability Zone with the most instances (the group
//!    stays balanced), then instances on an outdated launch configuration or
//!    template, then ones not yet in service, then the highest instance id;
//! 2. each victim is drained: the drain webhook, when one is configured, is
//!    POSTed `{"group", "instance_id", "availability_zone"}` every tick until
//!    it answers 200 (drained; 202 means still draining), and at least
//!    `drain_delay` passes (a load balancer's deregistration delay). A drain
//!    that takes longer than `drain_timeout` is cut short;
//! 3. its scale-in protection is lifted and it is terminated with
//!    `TerminateInstanceInAutoScalingGroup`, which lowers the desired
//!    capacity by one.
//!
//! Victims are counted from the instances that run (pending or in service),
//! not from the desired capacity, which launches that fail leave above them;
//! a count outside the group's MinSize and MaxSize, a desired capacity that
//! changed since the tick read it, and a group that weighs its instances are
//! refused before anything is drained.
//!
//! While victims drain, [`Actuator::observe`] reports the change in flight
//! and advances it, so the control loop starts no other change
//! ([`Actuator::observe_only`], for a paused or dry-run scaler, does not
//! advance it). A termination AWS refuses as invalid, or one still failing
//! 5 minutes after `drain_timeout`, gives its victim up: protected
//! again, it stays in service. The desired capacity drops only when a
//! victim is terminated.
//!
//! A scale-in under way is kept in the journal
//! ([`Actuator::saved_in_flight`]) at every tick it changes, and before the
//! drain webhook hears of its victims ([`Actuator::set_checkpoint`]), so a daemon
//! restarted (or killed) in the middle of a drain carries it on with the
//! same victims, whatever the first decision after the restart says: a
//! victim already drained out of its load balancer would otherwise stay in
//! service, serving nothing. One older than `drain_timeout` and the 5
//! minutes of termination retries, which would have ended by then, is not
//! resumed (the log names its victims), nor one saved for another group.
//! A resumed scale-in, and one a paused or dry-run scaler held, is given up
//! when the group's desired capacity is no longer what it left (someone
//! changed it meanwhile); the time a drain is held does not count towards
//! its delay and timeout. The drain webhook may be called again for the
//! same instance after a restart and must be idempotent.
//!
//! A victim given up that the drain webhook was asked about stays in
//! service drained, serving nothing, unless something undoes the drain:
//! with an `undrain_webhook`, it is POSTed the same body when the tick
//! reads the group (the one that gave it up, or the next), and at each tick
//! until it answers 2xx, for at most [`UNDRAIN_PATIENCE`] (an instance
//! chosen again meanwhile is not undrained, one no longer running in the
//! group is dropped). Pending undrains are journaled with the scale-in, so
//! a restart carries them on, and a reload of the same group hands them
//! over. A scale-in this replica started before it last lost the lead is
//! given up (undrained, protected again) at its next read of the group.
//!
//! With `protect_instances` (the default) every scale call also protects the
//! group's in-service instances from scale-in and sets the group's
//! `NewInstancesProtectedFromScaleIn`, so nothing but Scalewise picks a
//! victim (a lowered desired capacity, say, cannot terminate an undrained
//! instance). Dry-run never calls the actuator's `scale`, so it changes
//! nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_autoscaling::Client;
use aws_sdk_autoscaling::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_autoscaling::types::{
    AutoScalingGroup, Instance, LaunchTemplateSpecification, LifecycleState,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::clients::{Lazy, SharedClient, TargetClients, aws_client};
use super::{Actuation, Actuator, ActuatorError, Checkpoint, InFlight, MayAct, Observed};
use crate::config::AwsAsgTarget;
use crate::outbound::AuthedClient;

/// The longest one call to the drain webhook may take.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after `drain_timeout` a termination that keeps failing is
/// retried before its victim is given up (and protected again).
const TERMINATE_GRACE: Duration = Duration::from_secs(300);
/// The most instances one `SetInstanceProtection` call takes.
const PROTECTION_BATCH: usize = 50;
/// How long after a scale-in is restored a clock jump is taken for the
/// boot's clock being set right (NTP's first sync), not a suspend.
const BOOT_CORRECTION: Duration = Duration::from_secs(600);
/// How long a victim given up is offered to the undrain webhook.
pub const UNDRAIN_PATIENCE: Duration = Duration::from_secs(600);

/// Scales one Auto Scaling group.
#[derive(Debug)]
pub struct AwsAsgActuator {
    settings: AwsAsgTarget,
    /// Built on first use: loading the AWS configuration (credentials,
    /// region) may take network calls, which belong in a tick, not in
    /// start-up. Shared with the daemon's other groups reached alike.
    client: SharedClient<Client>,
    /// The drain webhook's client, with its credentials.
    drain: Option<AuthedClient>,
    /// The undrain webhook's client, with its credentials.
    undrain: Option<AuthedClient>,
    draining: Mutex<Option<ScaleIn>>,
    /// Victims given up that the undrain webhook has not yet taken.
    undrains: std::sync::Mutex<Vec<Undrain>>,
    /// Saves a scale-in before the drain webhook is first asked.
    checkpoint: std::sync::OnceLock<Checkpoint>,
}

/// A victim given up after the drain webhook was asked about it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Undrain {
    id: String,
    zone: String,
    /// When it was given up, by the tick's clock.
    since_ms: i64,
}

/// A scale-in in progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ScaleIn {
    /// The desired capacity once every victim is gone.
    desired: u32,
    /// When it started; moved on by the time it spent frozen (a paused or
    /// dry-run scaler), which does not count towards the drain's delay and
    /// timeout.
    since_ms: i64,
    victims: Vec<Victim>,
    /// The group's desired capacity as this scale-in leaves it so far
    /// (each termination lowers it by one).
    #[serde(default)]
    group_desired: Option<u32>,
    /// Since when it has been frozen, if it is.
    #[serde(default)]
    frozen_ms: Option<i64>,
    /// Resumed after a restart or a freeze: the group is checked to be as
    /// it was left before a victim is taken further.
    #[serde(default)]
    recheck: bool,
    /// Why it is to be given up at the next read of the group (victims
    /// undrained, protected again): started in an earlier leadership term
    /// of this replica (what the leader between did may have overtaken
    /// it), or its scaler is gone.
    #[serde(default)]
    abandon: Option<String>,
    /// Restored from the journal at a start (when, by this run's clock):
    /// its times are the wall clock's of the run that saved it, not this
    /// run's reckoning, so a jump of this run's clock (set right after a
    /// boot) is not taken off them. Cleared by that first jump, or once
    /// [`BOOT_CORRECTION`] has passed without one.
    #[serde(skip)]
    restored_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Victim {
    id: String,
    zone: String,
    /// The webhook answered 200 (or there is no webhook).
    drained: bool,
    /// The drain webhook was called about it (whatever it answered).
    #[serde(default)]
    asked: bool,
    /// A termination was sent for it (whatever the API answered).
    #[serde(default)]
    termination_sent: bool,
    /// What the last drain or termination attempt said.
    note: String,
    terminated: bool,
}

impl ScaleIn {
    /// Past [`BOOT_CORRECTION`] after its restore, a clock jump is this
    /// run's (a suspend), not the boot's clock set right.
    fn boot_corrected(&mut self, now_ms: i64) {
        let window = BOOT_CORRECTION.as_millis() as i64;
        if self
            .restored_ms
            .is_some_and(|at| now_ms.saturating_sub(at) > window)
        {
            self.restored_ms = None;
        }
    }
}

/// A scale-in and the victims given up still to undrain, as the journal
/// keeps them across a restart, with the group they belong to.
#[derive(Debug, Serialize, Deserialize)]
struct SavedScaleIn {
    group: String,
    /// The region its calls went to: the target's, else the SDK's default
    /// then (`None` in records written before the default was kept, or
    /// when no client was built).
    region: Option<String>,
    endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scale_in: Option<ScaleIn>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    undrains: Vec<Undrain>,
}

/// What a reload hands to the actuator that replaces this one on the same
/// group ([`Actuator::take_in_flight`]).
struct Carried {
    scale_in: Option<ScaleIn>,
    undrains: Vec<Undrain>,
}

/// Why a termination failed.
#[derive(Debug)]
enum Refusal {
    /// Worth trying again (throttling, an outage).
    Retry(ActuatorError),
    /// AWS finds the request invalid; it would fail again.
    Final(ActuatorError),
}

impl AwsAsgActuator {
    /// The actuator of the group `settings.group`, with the AWS client of
    /// its region and endpoint from `clients`, loaded from the environment
    /// (credentials chain, region) on first use. Fails when the drain
    /// webhook's credentials or CA file cannot be read (the error names the
    /// setting: `drain_webhook.bearer_token: ...`).
    pub fn new(settings: AwsAsgTarget, clients: &TargetClients) -> Result<Self, String> {
        Ok(AwsAsgActuator {
            drain: drain_client(&settings)?,
            undrain: undrain_client(&settings)?,
            client: clients.aws_cell(settings.region.as_deref(), settings.endpoint.as_deref()),
            settings,
            draining: Mutex::new(None),
            undrains: Default::default(),
            checkpoint: Default::default(),
        })
    }

    /// The actuator of `settings.group` with a client already built (tests,
    /// or an embedding program with its own AWS configuration).
    pub fn with_client(settings: AwsAsgTarget, client: Client) -> Result<Self, String> {
        Ok(AwsAsgActuator {
            drain: drain_client(&settings)?,
            undrain: undrain_client(&settings)?,
            settings,
            client: Arc::new(Lazy::ready(client)),
            draining: Mutex::new(None),
            undrains: Default::default(),
            checkpoint: Default::default(),
        })
    }

    /// The region the built client calls, if it is built.
    fn built_region(&self) -> Option<String> {
        Some(self.client.get()?.config().region()?.to_string())
    }

    async fn client(&self) -> Result<&Client, ActuatorError> {
        let settings = &self.settings;
        aws_client(
            &self.client,
            settings.region.as_deref(),
            settings.endpoint.as_deref(),
        )
        .await
        .map_err(ActuatorError::Failed)
    }

    async fn describe(&self) -> Result<AutoScalingGroup, ActuatorError> {
        let group = &self.settings.group;
        let out = self
            .client()
            .await?
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(group)
            .send()
            .await
            .map_err(|e| api_error("DescribeAutoScalingGroups", e))?;
        out.auto_scaling_groups()
            .iter()
            .find(|g| g.auto_scaling_group_name() == Some(group.as_str()))
            .cloned()
            .ok_or_else(|| {
                ActuatorError::NotFound(format!(
                    "Auto Scaling group {group:?}{}",
                    self.settings
                        .region
                        .as_ref()
                        .map(|r| format!(" in {r}"))
                        .unwrap_or_default()
                ))
            })
    }

    /// Protects the in-service instances that are not yet protected, and
    /// new instances from now on. Returns what it did, if anything.
    async fn protect(&self, group: &AutoScalingGroup) -> Result<Option<String>, ActuatorError> {
        if !self.settings.protect_instances {
            return Ok(None);
        }
        let client = self.client().await?;
        let mut done = Vec::new();
        if group.new_instances_protected_from_scale_in() != Some(true) {
            client
                .update_auto_scaling_group()
                .auto_scaling_group_name(&self.settings.group)
                .new_instances_protected_from_scale_in(true)
                .send()
                .await
                .map_err(|e| api_error("UpdateAutoScalingGroup", e))?;
            done.push("new instances are protected from scale-in".to_owned());
        }
        // AWS sets protection on in-service instances only (a pending one
        // is refused; it is protected at launch by the group's setting), at
        // most 50 a call.
        let unprotected: Vec<String> = group
            .instances()
            .iter()
            .filter(|i| {
                i.lifecycle_state() == Some(&LifecycleState::InService)
                    && i.protected_from_scale_in() != Some(true)
            })
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect();
        for batch in unprotected.chunks(PROTECTION_BATCH) {
            self.set_protection(batch, true).await?;
        }
        if !unprotected.is_empty() {
            done.push(match unprotected.as_slice() {
                [one] => format!("protected {one} from scale-in"),
                many => format!("protected {} instances from scale-in", many.len()),
            });
        }
        Ok((!done.is_empty()).then(|| done.join("; ")))
    }

    /// Takes each victim of `scale_in` one step further: drain, then lift
    /// its protection and terminate it, each while `may_act`. Errors are
    /// kept in the victim's note and retried next tick.
    async fn advance(
        &self,
        now_ms: i64,
        scale_in: &mut ScaleIn,
        group: &AutoScalingGroup,
        may_act: MayAct<'_>,
    ) {
        let present: BTreeMap<&str, &Instance> = group
            .instances()
            .iter()
            .filter_map(|i| Some((i.instance_id()?, i)))
            .collect();
        let elapsed = Duration::from_millis((now_ms - scale_in.since_ms).max(0) as u64);
        // The drain webhook asked about every victim still running and not
        // drained, all at once (one slow drainer times out once, not once
        // per victim), while the lease holds (the webhook can take
        // seconds: another replica may be acting on the group after).
        if !may_act() {
            return;
        }
        let to_drain = scale_in.victims.iter_mut().filter(|v| {
            !v.terminated && !v.drained && present.get(v.id.as_str()).is_some_and(|i| runs(i))
        });
        futures::future::join_all(to_drain.map(|victim| self.drain_step(victim))).await;
        for victim in scale_in.victims.iter_mut().filter(|v| !v.terminated) {
            // A termination this scale-in sent that the API reported as
            // failed (a lost answer) lowered the desired capacity all the
            // same: what the scale-in left goes down with it, as a later
            // check of the group compares it.
            let ours = |victim: &Victim, left: &mut Option<u32>| {
                if victim.termination_sent {
                    *left = left.map(|d| d.saturating_sub(1));
                }
            };
            let Some(instance) = present.get(victim.id.as_str()) else {
                // Gone (terminated by someone else, or by us on a retry the
                // API reported as failed). The desired capacity may not have
                // dropped with it; the next decision sees the real count.
                victim.terminated = true;
                victim.note = "left the group".into();
                ours(victim, &mut scale_in.group_desired);
                continue;
            };
            match instance.lifecycle_state() {
                Some(
                    LifecycleState::Terminating
                    | LifecycleState::TerminatingWait
                    | LifecycleState::TerminatingProceed
                    | LifecycleState::Terminated,
                ) => {
                    victim.terminated = true;
                    victim.note = "terminating".into();
                    ours(victim, &mut scale_in.group_desired);
                    continue;
                }
                Some(
                    LifecycleState::InService
                    | LifecycleState::Pending
                    | LifecycleState::PendingWait
                    | LifecycleState::PendingProceed,
                ) => {}
                other => {
                    // Put in standby, being detached: someone else has it now.
                    let state = other.map(LifecycleState::as_str).unwrap_or("unknown");
                    victim.terminated = true;
                    victim.note = format!("left service ({state}); left alone");
                    continue;
                }
            }
            let timed_out = elapsed >= self.settings.drain_timeout;
            if elapsed < self.settings.drain_delay || !(victim.drained || timed_out) {
                continue;
            }
            if !victim.drained {
                victim.note = format!(
                    "drain timed out after {}; terminating anyway",
                    humantime::format_duration(self.settings.drain_timeout)
                );
                tracing::warn!(
                    group = %self.settings.group,
                    instance = %victim.id,
                    "The drain did not finish in time; terminating the instance anyway."
                );
            }
            if !may_act() {
                return;
            }
            match self.terminate(instance, &mut victim.termination_sent).await {
                Ok(()) => {
                    tracing::info!(
                        group = %self.settings.group,
                        instance = %victim.id,
                        drained = victim.drained,
                        "Terminated a scale-in victim."
                    );
                    victim.terminated = true;
                    scale_in.group_desired = scale_in.group_desired.map(|d| d.saturating_sub(1));
                    if victim.drained {
                        victim.note = "drained and terminated".into();
                    } else {
                        victim.note.push_str("; terminated");
                    }
                }
                Err(Refusal::Final(e)) => {
                    // The SDK resends a request whose answer was lost: a
                    // resend refused as invalid can follow a first send AWS
                    // carried out. The group says which (unreadable now:
                    // the next tick looks again).
                    match self
                        .describe()
                        .await
                        .map(|g| terminating_in(&g, &victim.id))
                    {
                        Ok(true) => {
                            victim.terminated = true;
                            victim.note = "terminating".into();
                            scale_in.group_desired =
                                scale_in.group_desired.map(|d| d.saturating_sub(1));
                        }
                        Ok(false) => self.give_up(now_ms, victim, &e.to_string()).await,
                        Err(read) => {
                            victim.note =
                                format!("termination refused ({e}); the group unread ({read})")
                        }
                    }
                }
                Err(Refusal::Retry(e))
                    if elapsed >= self.settings.drain_timeout.saturating_add(TERMINATE_GRACE) =>
                {
                    self.give_up(
                        now_ms,
                        victim,
                        &format!(
                            "still failing after {}: {e}",
                            humantime::format_duration(elapsed)
                        ),
                    )
                    .await
                }
                Err(Refusal::Retry(e)) => {
                    victim.note = format!("termination failed, retrying: {e}")
                }
            }
        }
    }

    /// Calls the drain webhook once for `victim` (or marks it drained when
    /// there is none).
    async fn drain_step(&self, victim: &mut Victim) {
        let (Some(webhook), Some(http)) = (&self.settings.drain_webhook, &self.drain) else {
            victim.drained = true;
            victim.note = "waiting out the drain delay".into();
            return;
        };
        // Chosen again: an undrain still pending would undo this drain.
        self.lock_undrains().retain(|u| u.id != victim.id);
        victim.asked = true;
        match http
            .post(&webhook.url)
            .json(&self.webhook_body(&victim.id, &victim.zone))
            .send()
            .await
        {
            Ok(resp) if resp.status() == reqwest::StatusCode::OK => {
                victim.drained = true;
                victim.note = "drained".into();
            }
            Ok(resp) if resp.status() == reqwest::StatusCode::ACCEPTED => {
                victim.note = "draining".into();
            }
            Ok(resp) => {
                victim.note = format!(
                    "drain webhook answered {}; asking again next tick",
                    resp.status()
                );
            }
            Err(e) => {
                victim.note = format!(
                    "drain webhook failed ({}); asking again next tick",
                    crate::outbound::causes(&e)
                );
            }
        }
    }

    async fn set_protection(&self, ids: &[String], on: bool) -> Result<(), ActuatorError> {
        self.client()
            .await?
            .set_instance_protection()
            .auto_scaling_group_name(&self.settings.group)
            .set_instance_ids(Some(ids.to_vec()))
            .protected_from_scale_in(on)
            .send()
            .await
            .map_err(|e| api_error("SetInstanceProtection", e))?;
        Ok(())
    }

    async fn set_desired(&self, desired: u32) -> Result<(), ActuatorError> {
        self.client()
            .await?
            .set_desired_capacity()
            .auto_scaling_group_name(&self.settings.group)
            .desired_capacity(i32::try_from(desired).unwrap_or(i32::MAX))
            .honor_cooldown(false)
            .send()
            .await
            .map_err(|e| api_error("SetDesiredCapacity", e))?;
        Ok(())
    }

    /// Lifts the protection Scalewise set on `instance` (AWS takes that of
    /// an in-service instance only) and terminates it, lowering the desired
    /// capacity by one. `sent` is set once the termination is sent.
    async fn terminate(&self, instance: &Instance, sent: &mut bool) -> Result<(), Refusal> {
        let id = instance.instance_id().unwrap_or_default();
        if self.settings.protect_instances
            && instance.protected_from_scale_in() == Some(true)
            && instance.lifecycle_state() == Some(&LifecycleState::InService)
        {
            self.set_protection(&[id.to_owned()], false)
                .await
                .map_err(Refusal::Retry)?;
        }
        let client = self.client().await.map_err(Refusal::Retry)?;
        *sent = true;
        client
            .terminate_instance_in_auto_scaling_group()
            .instance_id(id)
            .should_decrement_desired_capacity(true)
            .send()
            .await
            .map_err(|e| {
                // A request AWS finds invalid (the group at its MinSize, the
                // instance no longer in a state it terminates) fails again
                // however often it is sent; throttling and outages pass.
                let final_ = e
                    .as_service_error()
                    .and_then(ProvideErrorMetadata::code)
                    .is_some_and(|code| code == "ValidationError");
                let e = api_error("TerminateInstanceInAutoScalingGroup", e);
                if final_ {
                    Refusal::Final(e)
                } else {
                    Refusal::Retry(e)
                }
            })?;
        Ok(())
    }

    /// What the drain and undrain webhooks are POSTed about an instance.
    fn webhook_body(&self, id: &str, zone: &str) -> serde_json::Value {
        serde_json::json!({
            "group": self.settings.group,
            "instance_id": id,
            "availability_zone": zone,
        })
    }

    fn lock_undrains(&self) -> std::sync::MutexGuard<'_, Vec<Undrain>> {
        self.undrains.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `scale_in` and the undrains pending as the journal keeps them; `None`
    /// when there is neither.
    fn saved(&self, scale_in: Option<&ScaleIn>) -> Option<serde_json::Value> {
        let undrains = self.lock_undrains().clone();
        if scale_in.is_none() && undrains.is_empty() {
            return None;
        }
        let saved = SavedScaleIn {
            group: self.settings.group.clone(),
            region: self.settings.region.clone().or_else(|| self.built_region()),
            endpoint: self.settings.endpoint.clone(),
            scale_in: scale_in.cloned(),
            undrains,
        };
        serde_json::to_value(saved).ok()
    }

    /// Offers `victims` given up to the undrain webhook, those the drain
    /// webhook was asked about.
    fn undrain_later<'a>(&self, now_ms: i64, victims: impl IntoIterator<Item = &'a Victim>) {
        self.keep_undrains(
            victims
                .into_iter()
                .filter(|v| v.asked)
                .map(|victim| Undrain {
                    id: victim.id.clone(),
                    zone: victim.zone.clone(),
                    since_ms: now_ms,
                }),
        );
    }

    /// Adds `more` to the undrains pending (none without an undrain
    /// webhook); an instance already pending keeps its first date.
    fn keep_undrains(&self, more: impl IntoIterator<Item = Undrain>) {
        if self.undrain.is_none() {
            return;
        }
        let mut undrains = self.lock_undrains();
        for undrain in more {
            if !undrains.iter().any(|u| u.id == undrain.id) {
                undrains.push(undrain);
            }
        }
    }

    /// Drops the undrains pending for instances no longer running in
    /// `group` (terminated meanwhile, or terminating): nothing to undo.
    fn prune_undrains(&self, group: &AutoScalingGroup) {
        self.lock_undrains().retain(|u| {
            group
                .instances()
                .iter()
                .any(|i| i.instance_id() == Some(u.id.as_str()) && runs(i))
        });
    }

    /// Calls the undrain webhook once for each victim waiting for it; one
    /// that answers 2xx, or has waited [`UNDRAIN_PATIENCE`], is done.
    async fn deliver_undrains(&self, now_ms: i64) {
        let (Some(webhook), Some(http)) = (&self.settings.undrain_webhook, &self.undrain) else {
            return;
        };
        let pending = self.lock_undrains().clone();
        if pending.is_empty() {
            return;
        }
        // All at once: a webhook that hangs costs the tick its timeout
        // once, not once per instance.
        let answers = futures::future::join_all(pending.iter().map(|undrain| async move {
            match http
                .post(&webhook.url)
                .json(&self.webhook_body(&undrain.id, &undrain.zone))
                .send()
                .await
            {
                Ok(resp) if resp.status().is_success() => None,
                Ok(resp) => Some(format!("it answered {}", resp.status())),
                Err(e) => Some(crate::outbound::causes(&e)),
            }
        }))
        .await;
        for (undrain, failure) in pending.iter().zip(answers) {
            let waited = Duration::from_millis((now_ms - undrain.since_ms).max(0) as u64);
            match failure {
                None => tracing::info!(
                    group = %self.settings.group,
                    instance = %undrain.id,
                    "The undrain webhook took a victim given up back into service."
                ),
                Some(why) if waited < UNDRAIN_PATIENCE => {
                    tracing::debug!(group = %self.settings.group, instance = %undrain.id, %why, "The undrain webhook failed; asking again next tick.");
                    continue;
                }
                Some(why) => tracing::warn!(
                    group = %self.settings.group,
                    instance = %undrain.id,
                    "The undrain webhook failed for {} ({why}); the instance stays in service drained: undo its drain by hand.",
                    humantime::format_duration(UNDRAIN_PATIENCE)
                ),
            }
            self.lock_undrains().retain(|u| u.id != undrain.id);
        }
    }

    /// Stops trying to terminate `victim`: it stays in service, protected
    /// again, and the change ends when the other victims are done; the
    /// next tick decides again from the group as it is.
    async fn give_up(&self, now_ms: i64, victim: &mut Victim, why: &str) {
        tracing::warn!(
            group = %self.settings.group,
            instance = %victim.id,
            drained = victim.drained,
            "Giving up terminating a scale-in victim ({why}); it stays in service."
        );
        if self.settings.protect_instances
            && let Err(e) = self
                .set_protection(std::slice::from_ref(&victim.id), true)
                .await
        {
            tracing::warn!(group = %self.settings.group, instance = %victim.id, error = %e, "Could not protect the instance again.");
        }
        victim.terminated = true;
        victim.note = format!("not terminated: {why}");
        self.undrain_later(now_ms, [&*victim]);
    }

    /// Whether `scale_in`, frozen (a paused or dry-run scaler) or resumed
    /// after a restart, may be taken further on `group` as it is now. Its
    /// clock moves on by the time it was frozen. It is given up when it
    /// has outlived `drain_timeout` and the termination retries (a replica
    /// that followed for hours before it led again), or when the group's
    /// desired capacity is no longer what the scale-in left (an operator, a
    /// scheduled action or another replica changed it meanwhile; a
    /// termination made but not yet saved when the daemon died is allowed
    /// for). Its victims not yet terminated then stay in service, protected
    /// again, and the next tick decides from the group as it is.
    async fn still_applies(
        &self,
        now_ms: i64,
        scale_in: &mut ScaleIn,
        group: &AutoScalingGroup,
    ) -> bool {
        if let Some(frozen) = scale_in.frozen_ms.take() {
            scale_in.since_ms += (now_ms - frozen).max(0);
            scale_in.recheck = true;
        }
        let why = if let Some(why) = scale_in.abandon.take() {
            why
        } else if !std::mem::take(&mut scale_in.recheck) {
            return true;
        } else if let Err(why) = self.within_lifetime(now_ms, scale_in) {
            why
        } else {
            let now = desired_of(group);
            // Victims terminated after the last save: each lowered the
            // desired capacity by one.
            let unsaved = scale_in
                .victims
                .iter()
                .filter(|v| !v.terminated && terminating_in(group, &v.id))
                .count() as u32;
            match scale_in.group_desired {
                Some(left) if now > left || now < left.saturating_sub(unsaved) => format!(
                    "the group's desired capacity is {now}, not the {left} the scale-in left: \
                     it changed meanwhile"
                ),
                _ => {
                    // What the unsaved terminations left: the next check
                    // starts from it, and they are counted in it.
                    scale_in.group_desired = Some(now);
                    for victim in scale_in.victims.iter_mut() {
                        if !victim.terminated && terminating_in(group, &victim.id) {
                            victim.termination_sent = false;
                        }
                    }
                    return true;
                }
            }
        };
        tracing::warn!(
            group = %self.settings.group,
            change = %Self::in_flight(scale_in).detail,
            "The scale-in is given up ({why}); its victims not yet terminated stay in service."
        );
        // Those still in the group: one gone or terminating needs nothing.
        self.undrain_later(
            now_ms,
            scale_in.victims.iter().filter(|v| {
                !v.terminated
                    && group
                        .instances()
                        .iter()
                        .any(|i| i.instance_id() == Some(v.id.as_str()) && runs(i))
            }),
        );
        if self.settings.protect_instances {
            let in_service: Vec<String> = scale_in
                .victims
                .iter()
                .filter(|v| !v.terminated)
                .filter(|v| {
                    group.instances().iter().any(|i| {
                        i.instance_id() == Some(v.id.as_str())
                            && i.lifecycle_state() == Some(&LifecycleState::InService)
                            && i.protected_from_scale_in() != Some(true)
                    })
                })
                .map(|v| v.id.clone())
                .collect();
            for batch in in_service.chunks(PROTECTION_BATCH) {
                if let Err(e) = self.set_protection(batch, true).await {
                    tracing::warn!(group = %self.settings.group, error = %e, "Could not protect the victims given up again.");
                }
            }
        }
        false
    }

    /// Refuses a scale-in older than `drain_timeout` and the termination
    /// retries (it would have ended by then), naming its victims not yet
    /// terminated. The time it was held (frozen) does not count.
    fn within_lifetime(&self, now_ms: i64, scale_in: &ScaleIn) -> Result<(), String> {
        let until = scale_in.frozen_ms.unwrap_or(now_ms);
        let age = Duration::from_millis((until - scale_in.since_ms).max(0) as u64);
        let lifetime = self.settings.drain_timeout.saturating_add(TERMINATE_GRACE);
        if age <= lifetime {
            return Ok(());
        }
        let left: Vec<String> = scale_in
            .victims
            .iter()
            .filter(|v| !v.terminated)
            .map(|v| {
                let drained = if v.drained { ", drained" } else { "" };
                format!("{}{drained}", v.id)
            })
            .collect();
        Err(format!(
            "it started {} ago, more than drain_timeout ({}) and {} of retries: the group has \
             moved on. Its victims not yet terminated stay in service: {}",
            humantime::format_duration(Duration::from_secs(age.as_secs())),
            humantime::format_duration(self.settings.drain_timeout),
            humantime::format_duration(TERMINATE_GRACE),
            left.join(", ")
        ))
    }

    /// [`Actuator::observe`] but the undrains: the group, with the scale-in
    /// in flight taken a step further.
    async fn observe_and_advance(
        &self,
        now_ms: i64,
        may_act: MayAct<'_>,
    ) -> Result<Observed, ActuatorError> {
        let mut draining = self.draining.lock().await;
        if let Some(scale_in) = draining.as_mut() {
            scale_in.boot_corrected(now_ms);
        }
        let mut group = self.describe().await?;
        counts_instances(&group)?;
        self.prune_undrains(&group);
        let mut in_flight = None;
        if let Some(scale_in) = draining.as_mut()
            && !self.still_applies(now_ms, scale_in, &group).await
        {
            *draining = None;
        }
        if let Some(scale_in) = draining.as_mut() {
            self.advance(now_ms, scale_in, &group, may_act).await;
            if scale_in.victims.iter().all(|v| v.terminated) {
                *draining = None;
                // What the terminations changed.
                group = self.describe().await?;
            } else {
                in_flight = Some(Self::in_flight(scale_in));
            }
        }
        Ok(Observed {
            current: current_of(&group),
            ready: ready_of(&group),
            in_flight,
            facts: facts_of(&group),
        })
    }

    fn in_flight(scale_in: &ScaleIn) -> InFlight {
        let victims: Vec<String> = scale_in
            .victims
            .iter()
            .map(|v| format!("{} ({})", v.id, v.note))
            .collect();
        InFlight {
            desired: scale_in.desired,
            since_ms: scale_in.since_ms,
            detail: format!("scale-in to {}: {}", scale_in.desired, victims.join(", ")),
        }
    }
}

/// The undrain webhook's client, when there is one.
fn undrain_client(settings: &AwsAsgTarget) -> Result<Option<AuthedClient>, String> {
    let Some(webhook) = &settings.undrain_webhook else {
        return Ok(None);
    };
    AuthedClient::build("undrain_webhook", webhook.http_auth(), WEBHOOK_TIMEOUT).map(Some)
}

/// The drain webhook's client, when there is a webhook.
fn drain_client(settings: &AwsAsgTarget) -> Result<Option<AuthedClient>, String> {
    let Some(webhook) = &settings.drain_webhook else {
        return Ok(None);
    };
    AuthedClient::build("drain_webhook", webhook.http_auth(), WEBHOOK_TIMEOUT).map(Some)
}

/// An API failure in words: the operation, then the service's error code and
/// message, or the whole chain of a transport failure.
fn api_error<E, R>(operation: &str, err: SdkError<E, R>) -> ActuatorError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let message = match err.as_service_error() {
        Some(service) => format!(
            "{}: {}",
            service.code().unwrap_or("error"),
            service.message().unwrap_or("(no message)")
        ),
        None => DisplayErrorContext(&err).to_string(),
    };
    ActuatorError::Failed(format!("{operation}: {message}"))
}

fn desired_of(group: &AutoScalingGroup) -> u32 {
    group.desired_capacity().unwrap_or(0).max(0) as u32
}

/// Whether the instance `id` is no longer running in `group`: terminating,
/// terminated, or gone from it.
fn terminating_in(group: &AutoScalingGroup, id: &str) -> bool {
    group
        .instances()
        .iter()
        .find(|i| i.instance_id() == Some(id))
        .is_none_or(|i| {
            i.lifecycle_state()
                .is_some_and(|s| s.as_str().starts_with("Terminat"))
        })
}

/// The replica count the scaler works from: the desired capacity, or the
/// instances that run when more do. Someone lowering the desired capacity
/// under protected instances (a scheduled action, an operator) leaves them
/// running; judged from the lowered count, a rise back towards them (or
/// `min`) would look like a scale-out, pass the envelope as one, and be
/// made by removing instances (see [`plan`]).
/// While an instance is still launching above the desired capacity, AWS is
/// replacing instances (an instance refresh, a rebalance): the excess is
/// its, for a moment, and not counted.
fn current_of(group: &AutoScalingGroup) -> u32 {
    if launching_above_desired(group) {
        desired_of(group)
    } else {
        desired_of(group).max(live_count(group))
    }
}

/// Whether more instances run than the desired capacity while one of them
/// is still launching (see [`current_of`]).
fn launching_above_desired(group: &AutoScalingGroup) -> bool {
    live_count(group) > desired_of(group)
        && group
            .instances()
            .iter()
            .any(|i| runs(i) && i.lifecycle_state() != Some(&LifecycleState::InService))
}

/// Whether `instance` counts towards the desired capacity and may be a
/// victim: in service, or launching (pending, also held by a launch
/// lifecycle hook: `Pending:Wait`, `Pending:Proceed`).
fn runs(instance: &Instance) -> bool {
    matches!(
        instance.lifecycle_state(),
        Some(
            LifecycleState::InService
                | LifecycleState::Pending
                | LifecycleState::PendingWait
                | LifecycleState::PendingProceed
        )
    )
}

/// The instances that count towards the desired capacity ([`runs`]).
fn live_count(group: &AutoScalingGroup) -> u32 {
    group.instances().iter().filter(|i| runs(i)).count() as u32
}

/// Refuses a group whose capacity is not a count of instances: with
/// instance weights or a `DesiredCapacityType` of vcpu or memory-mib, one
/// instance is several units, and victims counted one per unit would take
/// far more than asked.
fn counts_instances(group: &AutoScalingGroup) -> Result<(), ActuatorError> {
    let name = group.auto_scaling_group_name().unwrap_or_default();
    if let Some(kind) = group.desired_capacity_type()
        && kind != "units"
    {
        return Err(ActuatorError::Failed(format!(
            "Auto Scaling group {name:?} counts its desired capacity in {kind}; Scalewise \
             scales groups that count instances (DesiredCapacityType units, no instance weights)"
        )));
    }
    let weighted = group
        .instances()
        .iter()
        .find(|i| i.weighted_capacity().is_some_and(|w| w.trim() != "1"));
    if let Some(i) = weighted {
        return Err(ActuatorError::Failed(format!(
            "Auto Scaling group {name:?} weighs its instances ({} counts {}); Scalewise scales \
             groups that count instances (no instance weights in the mixed instances policy)",
            i.instance_id().unwrap_or_default(),
            i.weighted_capacity().unwrap_or_default()
        )));
    }
    // Weights the policy gives before any instance has one (a group not
    // yet launched): its first scale-out would be in units.
    let overrides = group
        .mixed_instances_policy()
        .and_then(|m| m.launch_template())
        .map(|t| t.overrides())
        .unwrap_or_default();
    if let Some(o) = overrides
        .iter()
        .find(|o| o.weighted_capacity().is_some_and(|w| w.trim() != "1"))
    {
        return Err(ActuatorError::Failed(format!(
            "Auto Scaling group {name:?} weighs its instances ({} counts {}); Scalewise scales \
             groups that count instances (no instance weights in the mixed instances policy)",
            o.instance_type().unwrap_or("an override"),
            o.weighted_capacity().unwrap_or_default()
        )));
    }
    Ok(())
}

/// Refuses a desired capacity outside the group's MinSize and MaxSize,
/// naming both sides' settings (AWS would refuse it, or fail the last
/// termination of a scale-in, with a ValidationError).
fn within_group_bounds(group: &AutoScalingGroup, desired: u32) -> Result<(), ActuatorError> {
    let name = group.auto_scaling_group_name().unwrap_or_default();
    let desired = i32::try_from(desired).unwrap_or(i32::MAX);
    if let Some(max) = group.max_size()
        && desired > max
    {
        return Err(ActuatorError::Failed(format!(
            "{desired} is above the MaxSize ({max}) of Auto Scaling group {name:?}; raise the \
             group's MaxSize or lower the scaler's max"
        )));
    }
    if let Some(min) = group.min_size()
        && desired < min
    {
        return Err(ActuatorError::Failed(format!(
            "{desired} is below the MinSize ({min}) of Auto Scaling group {name:?}; lower the \
             group's MinSize or raise the scaler's min"
        )));
    }
    Ok(())
}

/// What a group reports beyond its replica counts (metrics of the `target`
/// source), counted over its instances.
pub const FACTS: &[&str] = &[
    "in_service",
    "pending",
    "terminating",
    "standby",
    "unhealthy",
    "protected",
];

/// The [`FACTS`] of `group`.
fn facts_of(group: &AutoScalingGroup) -> BTreeMap<String, f64> {
    let instances = group.instances();
    let count = |holds: &dyn Fn(&Instance) -> bool| instances.iter().filter(|i| holds(i)).count();
    let state = |i: &Instance| {
        i.lifecycle_state()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default()
    };
    let counts = [
        count(&|i| state(i) == "InService"),
        count(&|i| state(i).starts_with("Pending") || state(i).starts_with("Warmed:Pending")),
        count(&|i| state(i).starts_with("Terminat")),
        count(&|i| state(i).contains("Standby")),
        count(&|i| {
            !i.health_status()
                .is_some_and(|h| h.eq_ignore_ascii_case("healthy"))
        }),
        count(&|i| i.protected_from_scale_in() == Some(true)),
    ];
    FACTS
        .iter()
        .zip(counts)
        .map(|(name, n)| ((*name).to_owned(), n as f64))
        .collect()
}

fn ready_of(group: &AutoScalingGroup) -> u32 {
    group
        .instances()
        .iter()
        .filter(|i| {
            i.lifecycle_state() == Some(&LifecycleState::InService)
                && i.health_status()
                    .is_some_and(|h| h.eq_ignore_ascii_case("healthy"))
        })
        .count() as u32
}

/// How a group gets to a desired capacity.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Set the desired capacity: a scale-out, or a scale-in that only lowers
    /// what the group has not reached (launches failing, capacity short).
    SetDesired,
    /// Remove these instances (id, zone), after setting the desired
    /// capacity to the count that runs when it is not that (each
    /// termination lowers it by one, so they must start from there).
    Remove {
        first_set_to: Option<u32>,
        victims: Vec<(String, String)>,
    },
}

/// What taking `group` to `desired` takes. Victims are counted from the
/// instances that run (pending or in service), not from the desired
/// capacity: a group asking for 10 and running 5 goes to 6 by removing
/// none, and to 3 by removing 2; one whose desired capacity someone lowered
/// to 3 below the 5 its protected instances keep running goes to 4 by
/// removing one (setting the desired capacity alone would leave AWS to pick
/// an undrained victim, or with protection none at all).
fn plan(
    group: &AutoScalingGroup,
    desired: u32,
    skip_protected: bool,
) -> Result<Plan, ActuatorError> {
    let now = desired_of(group);
    let live = live_count(group);
    if desired >= live {
        return Ok(Plan::SetDesired);
    }
    if launching_above_desired(group) {
        // Victims counted from what runs would fight AWS's own replacement
        // (and pending instances, its new ones, would go first).
        return Err(ActuatorError::Failed(format!(
            "Auto Scaling group {:?} is launching instances above its desired capacity ({live} \
             running, desired {now}: an instance refresh or a rebalance); a change to fewer \
             than run waits until they settle",
            group.auto_scaling_group_name().unwrap_or_default()
        )));
    }
    let victims = choose_victims(group, live - desired, skip_protected);
    if victims.is_empty() {
        return Err(ActuatorError::Failed(format!(
            "no instance of Auto Scaling group {:?} can be removed (none pending or in \
             service{})",
            group.auto_scaling_group_name().unwrap_or_default(),
            if skip_protected {
                " without scale-in protection; with protect_instances = false Scalewise picks \
                 none that something protected, including the protection it set itself while \
                 protect_instances was on: lift it (SetInstanceProtection, and the group's \
                 NewInstancesProtectedFromScaleIn) or turn protect_instances back on"
            } else {
                ""
            }
        )));
    }
    Ok(Plan::Remove {
        first_set_to: (now != live).then_some(live),
        victims,
    })
}

/// Picks `count` instances of `group` to remove, best first: unhealthy ones;
/// then from the Availability Zone that has the most candidates (so the group
/// stays balanced); then ones on a launch configuration or template other
/// than the group's; then ones still pending; then the highest instance id
/// (a stable order, so that a restarted daemon picks the same ones). Only
/// pending and in-service instances are candidates: ones in standby, being
/// detached or terminated are left alone, and with `skip_protected` (when
/// Scalewise does not protect instances itself) so are the ones something
/// else protected from scale-in.
pub fn choose_victims(
    group: &AutoScalingGroup,
    count: u32,
    skip_protected: bool,
) -> Vec<(String, String)> {
    let count = count as usize;
    let mut candidates: Vec<&Instance> = group
        .instances()
        .iter()
        .filter(|i| {
            i.instance_id().is_some()
                && runs(i)
                && !(skip_protected && i.protected_from_scale_in() == Some(true))
        })
        .collect();
    let mut chosen = Vec::new();
    while chosen.len() < count && !candidates.is_empty() {
        let mut per_zone: BTreeMap<&str, usize> = BTreeMap::new();
        for i in &candidates {
            *per_zone
                .entry(i.availability_zone().unwrap_or(""))
                .or_default() += 1;
        }
        let best = candidates
            .iter()
            .enumerate()
            .max_by(|(_, a), (_, b)| {
                victim_rank(group, a, &per_zone).cmp(&victim_rank(group, b, &per_zone))
            })
            .map(|(index, _)| index)
            .expect("candidates is not empty");
        let victim = candidates.swap_remove(best);
        chosen.push((
            victim.instance_id().unwrap_or_default().to_owned(),
            victim.availability_zone().unwrap_or_default().to_owned(),
        ));
    }
    chosen
}

/// Higher is removed first (see [`choose_victims`]).
fn victim_rank<'a>(
    group: &AutoScalingGroup,
    instance: &'a Instance,
    per_zone: &BTreeMap<&str, usize>,
) -> (bool, usize, bool, bool, &'a str) {
    let unhealthy = !instance
        .health_status()
        .is_some_and(|h| h.eq_ignore_ascii_case("healthy"));
    let zone = per_zone
        .get(instance.availability_zone().unwrap_or(""))
        .copied()
        .unwrap_or(0);
    // The group's launch template, or its mixed instances policy's.
    let template = group.launch_template().or_else(|| {
        group
            .mixed_instances_policy()
            .and_then(|m| m.launch_template())
            .and_then(|t| t.launch_template_specification())
    });
    let outdated = match (group.launch_configuration_name(), template) {
        (Some(config), _) => instance.launch_configuration_name() != Some(config),
        (None, Some(template)) => {
            let own = instance.launch_template();
            let is = |spec: &LaunchTemplateSpecification| match spec.launch_template_id() {
                Some(id) => own.and_then(|t| t.launch_template_id()) == Some(id),
                None => {
                    spec.launch_template_name().is_none()
                        || own.and_then(|t| t.launch_template_name()) == spec.launch_template_name()
                }
            };
            // An override's own template (an ARM image for Graviton
            // types, say) is as current as the group's.
            let overrides = group
                .mixed_instances_policy()
                .and_then(|m| m.launch_template())
                .map(|t| t.overrides())
                .unwrap_or_default();
            let other_template = !is(template)
                && !overrides
                    .iter()
                    .filter_map(|o| o.launch_template_specification())
                    .any(is);
            // A version the group names by number ("$Latest" and
            // "$Default" say which only to EC2).
            let other_version = is(template)
                && match (template.version(), own.and_then(|t| t.version())) {
                    (Some(wanted), Some(has)) => !wanted.starts_with('$') && wanted != has,
                    _ => false,
                };
            other_template || other_version
        }
        (None, None) => false,
    };
    let pending = runs(instance) && instance.lifecycle_state() != Some(&LifecycleState::InService);
    (
        unhealthy,
        zone,
        outdated,
        pending,
        instance.instance_id().unwrap_or(""),
    )
}

#[async_trait]
impl Actuator for AwsAsgActuator {
    fn kind(&self) -> &'static str {
        "aws-asg"
    }

    fn target_name(&self) -> String {
        self.settings.group.clone()
    }

    async fn observe(&self, now_ms: i64) -> Result<Observed, ActuatorError> {
        self.observe_while(now_ms, &|| true).await
    }

    async fn observe_while(
        &self,
        now_ms: i64,
        may_act: MayAct<'_>,
    ) -> Result<Observed, ActuatorError> {
        let observed = self.observe_and_advance(now_ms, may_act).await;
        // Whether the group could be read or not: the webhook is elsewhere.
        // (Undrains only put back what a drain took: sent whoever leads.)
        self.deliver_undrains(now_ms).await;
        observed
    }

    async fn observe_only(&self, now_ms: i64) -> Result<Observed, ActuatorError> {
        let mut draining = self.draining.lock().await;
        if let Some(scale_in) = draining.as_mut() {
            scale_in.boot_corrected(now_ms);
            scale_in.frozen_ms.get_or_insert(now_ms);
        }
        let group = self.describe().await?;
        counts_instances(&group)?;
        Ok(Observed {
            current: current_of(&group),
            ready: ready_of(&group),
            in_flight: draining.as_ref().map(Self::in_flight),
            facts: facts_of(&group),
        })
    }

    async fn take_in_flight(&self) -> Option<Box<dyn std::any::Any + Send>> {
        let scale_in = self.draining.lock().await.take();
        let undrains = std::mem::take(&mut *self.lock_undrains());
        if scale_in.is_none() && undrains.is_empty() {
            return None;
        }
        Some(Box::new(Carried { scale_in, undrains }))
    }

    async fn resume_in_flight(&self, change: Box<dyn std::any::Any + Send>) {
        if let Ok(carried) = change.downcast::<Carried>() {
            let Carried { scale_in, undrains } = *carried;
            *self.draining.lock().await = scale_in;
            // Dropped when the reload removed the undrain webhook.
            self.keep_undrains(undrains);
        }
    }

    fn set_checkpoint(&self, checkpoint: Checkpoint) {
        let _ = self.checkpoint.set(checkpoint);
    }

    async fn saved_in_flight(&self) -> Option<serde_json::Value> {
        let draining = self.draining.lock().await;
        self.saved(draining.as_ref())
    }

    async fn restore_in_flight(
        &self,
        now_ms: i64,
        saved: serde_json::Value,
    ) -> Result<String, String> {
        let saved: SavedScaleIn = serde_json::from_value(saved)
            .map_err(|e| format!("the saved change does not read as a scale-in ({e})"))?;
        let settings = &self.settings;
        // Compared where the calls go: a target that now names the region
        // it left to the default (or the other way round) is the same
        // group if the default is that region. A record without its
        // region was saved for the default then, taken to be today's.
        let here = match &settings.region {
            Some(region) => Some(region.clone()),
            None => {
                // Not built (the instance metadata service not answering
                // yet, at a boot): the region is not known, and the
                // scale-in is kept rather than lost. Its victims are
                // instance ids, which a group of the same name elsewhere
                // does not have: there they would only be found gone.
                if let Err(e) = self.client().await {
                    tracing::warn!(group = %settings.group, error = %e, "The region of the restored scale-in cannot be compared with this target's yet; carrying it on.");
                }
                self.built_region()
            }
        };
        let other_region = match (&saved.region, &here) {
            (Some(there), Some(here)) => there != here,
            (None, Some(_)) => settings.region.is_some(),
            (_, None) => false,
        };
        if (&saved.group, &saved.endpoint) != (&settings.group, &settings.endpoint) || other_region
        {
            return Err(format!(
                "it was saved for Auto Scaling group {:?}{}, not this scaler's target",
                saved.group,
                saved
                    .region
                    .as_ref()
                    .map(|r| format!(" in {r}"))
                    .unwrap_or_default()
            ));
        }
        // Victims given up before the stop: their drain is still to undo,
        // unless they have waited for it too long already.
        let patience = UNDRAIN_PATIENCE.as_millis() as i64;
        let (undrains, late): (Vec<Undrain>, Vec<Undrain>) = saved
            .undrains
            .into_iter()
            .partition(|u| now_ms.saturating_sub(u.since_ms) < patience);
        // Dropped when there is no undrain webhook now.
        self.keep_undrains(undrains);
        let pending = self.lock_undrains().len();
        let late = late.iter().map(|u| u.id.as_str()).collect::<Vec<_>>();
        if !late.is_empty() && (pending > 0 || saved.scale_in.is_some()) {
            tracing::warn!(
                group = %settings.group,
                instances = %late.join(", "),
                "Victims given up before the stop waited for the undrain webhook longer than {}; undo their drain by hand.",
                humantime::format_duration(UNDRAIN_PATIENCE)
            );
        }
        let Some(scale_in) = saved.scale_in else {
            return match (pending, late.is_empty()) {
                (0, true) => Err("nothing was left to carry on".into()),
                (0, false) => Err(format!(
                    "the victims given up waited for the undrain webhook longer than {} ({}): \
                     undo their drain by hand",
                    humantime::format_duration(UNDRAIN_PATIENCE),
                    late.join(", ")
                )),
                (n, _) => Ok(format!("undrain {n} victim(s) given up")),
            };
        };
        // Past this age the scale-in would have ended anyway: its victims
        // terminated even undrained, or given up.
        if let Err(why) = self.within_lifetime(now_ms, &scale_in) {
            self.undrain_later(now_ms, scale_in.victims.iter().filter(|v| !v.terminated));
            return Err(why);
        }
        let mut draining = self.draining.lock().await;
        if let Some(ongoing) = draining.as_ref() {
            return Err(format!(
                "a change is already in flight ({})",
                Self::in_flight(ongoing).detail
            ));
        }
        let mut detail = Self::in_flight(&scale_in).detail;
        if pending > 0 {
            detail.push_str(&format!("; and undrain {pending} victim(s) given up"));
        }
        *draining = Some(ScaleIn {
            recheck: true,
            restored_ms: Some(now_ms),
            ..scale_in
        });
        Ok(detail)
    }

    async fn clock_jumped(&self, by_ms: i64) {
        for undrain in self.lock_undrains().iter_mut() {
            undrain.since_ms += by_ms;
        }
        let mut draining = self.draining.lock().await;
        let Some(scale_in) = draining.as_mut() else {
            return;
        };
        if scale_in.restored_ms.take().is_some() {
            // Dated by the wall clock of the run that saved it: the first
            // jump, setting this run's clock right, makes its age right.
            // Checked again against its lifetime on the corrected clock.
            // Later jumps (a suspend) are this run's, as for any drain.
            scale_in.recheck = true;
            return;
        }
        scale_in.since_ms += by_ms;
        if let Some(frozen) = &mut scale_in.frozen_ms {
            *frozen += by_ms;
        }
    }

    async fn abandon_in_flight(&self, now_ms: i64, why: &str) -> Option<String> {
        let detail = {
            let mut draining = self.draining.lock().await;
            draining.as_mut().map(|scale_in| {
                scale_in.abandon = Some(why.to_owned());
                Self::in_flight(scale_in).detail
            })
        };
        if detail.is_none() && self.lock_undrains().is_empty() {
            return None;
        }
        // Given up at this read of the group: victims still in it are
        // protected again; they and the victims given up earlier are
        // offered to the undrain webhook, once.
        let read = self.observe_and_advance(now_ms, &|| false).await;
        self.deliver_undrains(now_ms).await;
        let mut said = match (&detail, read) {
            (Some(detail), Ok(_)) => {
                format!("{detail}: given up, victims not yet terminated stay in service")
            }
            (Some(detail), Err(e)) => format!(
                "{detail}: dropped, the group could not be read ({e}); victims not yet \
                 terminated stay in service as they are (drained or unprotected ones need a hand)"
            ),
            (None, _) => "victims given up earlier were still to undrain".to_owned(),
        };
        let left: Vec<String> = self.lock_undrains().iter().map(|u| u.id.clone()).collect();
        if !left.is_empty() {
            said.push_str(&format!(
                "; not undrained (undo by hand): {}",
                left.join(", ")
            ));
        }
        Some(said)
    }

    async fn forget_in_flight(&self) {
        if let Some(scale_in) = self.draining.lock().await.as_mut() {
            tracing::warn!(
                group = %self.settings.group,
                change = %Self::in_flight(scale_in).detail,
                "A new leadership term: the scale-in this replica started when it last led is given up at the next read of the group; its victims not yet terminated stay in service."
            );
            scale_in.abandon = Some(
                "this replica lost the lead after starting it, and what the leader between did \
                 may have overtaken it"
                    .into(),
            );
        }
    }

    async fn scale(
        &self,
        now_ms: i64,
        current: u32,
        desired: u32,
    ) -> Result<Actuation, ActuatorError> {
        self.scale_while(now_ms, current, desired, &|| true).await
    }

    async fn scale_while(
        &self,
        now_ms: i64,
        current: u32,
        desired: u32,
        may_act: MayAct<'_>,
    ) -> Result<Actuation, ActuatorError> {
        let mut draining = self.draining.lock().await;
        if let Some(scale_in) = draining.as_ref() {
            return Err(ActuatorError::Failed(format!(
                "a change is already in flight ({})",
                Self::in_flight(scale_in).detail
            )));
        }
        let group = self.describe().await?;
        counts_instances(&group)?;
        let name = &self.settings.group;
        let now = desired_of(&group);
        if current_of(&group) != current {
            // A scheduled action, an operator or another tool changed it
            // since the tick read it: the decision was taken on a count that
            // is gone (a scale-out from 4 to 5 must not become a scale-in
            // from 10 to 5).
            return Err(ActuatorError::Failed(format!(
                "the capacity of Auto Scaling group {name:?} changed since this tick read it \
                 ({current} → {}); the next tick decides again from what it reads",
                current_of(&group)
            )));
        }
        within_group_bounds(&group, desired)?;
        let protected = self.protect(&group).await?;
        let with_protection = |detail: String| match &protected {
            Some(p) => format!("{detail}; {p}"),
            None => detail,
        };
        let (first_set_to, victims) = match plan(&group, desired, !self.settings.protect_instances)?
        {
            Plan::SetDesired => {
                self.set_desired(desired).await?;
                return Ok(Actuation::Done {
                    detail: with_protection(format!(
                        "set the desired capacity of Auto Scaling group {name:?} to {desired} (was {now})"
                    )),
                });
            }
            Plan::Remove {
                first_set_to,
                victims,
            } => (first_set_to, victims),
        };
        let live = first_set_to.unwrap_or(now);
        if let Some(live) = first_set_to {
            // Each termination lowers the desired capacity by one: from the
            // count that runs, so that they end at `desired` (no launch: as
            // many run).
            self.set_desired(live).await?;
        }
        let mut scale_in = ScaleIn {
            desired: live - victims.len() as u32,
            since_ms: now_ms,
            group_desired: Some(live),
            frozen_ms: None,
            recheck: false,
            abandon: None,
            restored_ms: None,
            victims: victims
                .into_iter()
                .map(|(id, zone)| Victim {
                    id,
                    zone,
                    drained: false,
                    asked: false,
                    termination_sent: false,
                    note: "chosen".into(),
                    terminated: false,
                })
                .collect(),
        };
        // Kept before the drain webhook hears of a victim: a daemon killed
        // in this tick carries the drain on after its restart.
        if self.drain.is_some()
            && let Some(checkpoint) = self.checkpoint.get()
            && let Some(saved) = self.saved(Some(&scale_in))
        {
            checkpoint.save(saved).await;
        }
        self.advance(now_ms, &mut scale_in, &group, may_act).await;
        let ids: Vec<&str> = scale_in.victims.iter().map(|v| v.id.as_str()).collect();
        if scale_in.victims.iter().all(|v| v.terminated) {
            // Done at once (no drain): those given up or left alone are
            // named apart, and not counted as removed.
            let (gone, kept): (Vec<&Victim>, Vec<&Victim>) =
                scale_in.victims.iter().partition(|v| {
                    !(v.note.starts_with("not terminated") || v.note.starts_with("left service"))
                });
            let gone: Vec<&str> = gone.iter().map(|v| v.id.as_str()).collect();
            let mut detail = format!(
                "terminated {} of Auto Scaling group {name:?} ({live} → {})",
                if gone.is_empty() {
                    "none".to_owned()
                } else {
                    gone.join(", ")
                },
                live - gone.len() as u32
            );
            if !kept.is_empty() {
                let kept: Vec<String> = kept
                    .iter()
                    .map(|v| format!("{} ({})", v.id, v.note))
                    .collect();
                detail.push_str(&format!("; kept in service: {}", kept.join(", ")));
            }
            return Ok(Actuation::Done {
                detail: with_protection(detail),
            });
        }
        let detail = with_protection(format!(
            "draining {} of Auto Scaling group {name:?} before terminating ({live} → {})",
            ids.join(", "),
            scale_in.desired
        ));
        *draining = Some(scale_in);
        Ok(Actuation::Started { detail })
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_autoscaling::types::LaunchTemplateSpecification;

    use super::*;

    fn instance(id: &str, zone: &str, state: LifecycleState, health: &str) -> Instance {
        Instance::builder()
            .instance_id(id)
            .availability_zone(zone)
            .lifecycle_state(state)
            .health_status(health)
            .launch_configuration_name("lc-2")
            .protected_from_scale_in(true)
            .build()
    }

    fn group(instances: Vec<Instance>) -> AutoScalingGroup {
        AutoScalingGroup::builder()
            .auto_scaling_group_name("web")
            .launch_configuration_name("lc-2")
            .min_size(0)
            .max_size(10)
            .desired_capacity(instances.len() as i32)
            .default_cooldown(0)
            .availability_zones("a")
            .health_check_type("EC2")
            .created_time(aws_sdk_autoscaling::primitives::DateTime::from_secs(0))
            .set_instances(Some(instances))
            .build()
    }

    fn ids(victims: Vec<(String, String)>) -> Vec<String> {
        victims.into_iter().map(|(id, _)| id).collect()
    }

    #[test]
    fn victims_keep_the_zones_balanced() {
        let g = group(vec![
            instance("i-1", "a", LifecycleState::InService, "Healthy"),
            instance("i-2", "a", LifecycleState::InService, "Healthy"),
            instance("i-3", "a", LifecycleState::InService, "Healthy"),
            instance("i-4", "b", LifecycleState::InService, "Healthy"),
        ]);
        // Zone a has three: take from it until it is even with b, then the
        // highest id.
        assert_eq!(ids(choose_victims(&g, 2, false)), ["i-3", "i-2"]);
        assert_eq!(ids(choose_victims(&g, 3, false)), ["i-3", "i-2", "i-4"]);
    }

    #[test]
    fn unhealthy_then_outdated_then_pending_go_first() {
        let mut outdated = instance("i-1", "a", LifecycleState::InService, "Healthy");
        outdated.launch_configuration_name = Some("lc-1".into());
        let g = group(vec![
            outdated,
            instance("i-2", "a", LifecycleState::Pending, "Healthy"),
            instance("i-3", "a", LifecycleState::InService, "Healthy"),
            instance("i-4", "a", LifecycleState::InService, "Unhealthy"),
        ]);
        assert_eq!(
            ids(choose_victims(&g, 4, false)),
            ["i-4", "i-1", "i-2", "i-3"]
        );
    }

    #[test]
    fn instances_in_standby_or_terminating_are_never_chosen() {
        let g = group(vec![
            instance("i-1", "a", LifecycleState::Standby, "Healthy"),
            instance("i-2", "a", LifecycleState::Terminating, "Healthy"),
            instance("i-3", "a", LifecycleState::InService, "Healthy"),
        ]);
        assert_eq!(ids(choose_victims(&g, 3, false)), ["i-3"]);
    }

    #[test]
    fn a_scale_in_counts_victims_from_the_instances_that_run() {
        let running = |n: usize| {
            (0..n)
                .map(|i| instance(&format!("i-{i}"), "a", LifecycleState::InService, "Healthy"))
                .collect::<Vec<_>>()
        };
        // Asking for 10, running 5 (launches failing): to 6 removes none.
        let mut g = group(running(5));
        g.desired_capacity = Some(10);
        assert_eq!(plan(&g, 6, false).unwrap(), Plan::SetDesired);
        // To 3 removes two, after lowering the desired capacity to the 5.
        let Plan::Remove {
            first_set_to,
            victims,
        } = plan(&g, 3, false).unwrap()
        else {
            panic!("a scale-in below what runs removes instances")
        };
        assert_eq!((first_set_to, victims.len()), (Some(5), 2));
        // Someone lowered it to 3 below the 5 protected ones running: to 2
        // removes three, to 4 one, each from the count that runs.
        g.desired_capacity = Some(3);
        for (to, removed) in [(2, 3), (4, 1)] {
            let Plan::Remove {
                first_set_to,
                victims,
            } = plan(&g, to, false).unwrap()
            else {
                panic!("to {to}")
            };
            assert_eq!((first_set_to, victims.len()), (Some(5), removed), "to {to}");
        }
        assert_eq!(plan(&g, 5, false).unwrap(), Plan::SetDesired);
        // Asking for what runs: no lowering first.
        let g = group(running(4));
        let Plan::Remove {
            first_set_to,
            victims,
        } = plan(&g, 3, false).unwrap()
        else {
            panic!()
        };
        assert_eq!((first_set_to, victims.len()), (None, 1));
        // Instances a launch lifecycle hook holds run (AWS counts them in
        // the desired capacity): asking 6 with 4 in service and 2 held, to
        // 3 removes three, the held ones first, without lowering first.
        let mut with_held = running(4);
        with_held.push(instance("i-7", "a", LifecycleState::PendingWait, "Healthy"));
        with_held.push(instance(
            "i-6",
            "a",
            LifecycleState::PendingProceed,
            "Healthy",
        ));
        let mut g = group(with_held);
        g.desired_capacity = Some(6);
        let Plan::Remove {
            first_set_to,
            victims,
        } = plan(&g, 3, false).unwrap()
        else {
            panic!("held instances run")
        };
        assert_eq!(first_set_to, None);
        assert_eq!(ids(victims), ["i-7", "i-6", "i-3"]);
        // Terminating and standby instances do not run.
        let mut with_leaving = running(3);
        with_leaving.push(instance("i-9", "a", LifecycleState::Terminating, "Healthy"));
        with_leaving.push(instance("i-8", "a", LifecycleState::Standby, "Healthy"));
        let mut g = group(with_leaving);
        g.desired_capacity = Some(3);
        let Plan::Remove { victims, .. } = plan(&g, 2, false).unwrap() else {
            panic!()
        };
        assert_eq!(ids(victims), ["i-2"]);
    }

    #[test]
    fn without_our_protection_instances_protected_by_others_are_never_chosen() {
        let mut free = instance("i-1", "a", LifecycleState::InService, "Healthy");
        free.protected_from_scale_in = Some(false);
        let g = group(vec![
            free,
            instance("i-2", "a", LifecycleState::InService, "Healthy"),
            instance("i-3", "a", LifecycleState::InService, "Healthy"),
        ]);
        assert_eq!(ids(choose_victims(&g, 2, true)), ["i-1"]);
        assert_eq!(ids(choose_victims(&g, 1, false)), ["i-3"]);
        let Plan::Remove { victims, .. } = plan(&g, 1, true).unwrap() else {
            panic!()
        };
        assert_eq!(ids(victims), ["i-1"]);
    }

    #[test]
    fn weighted_groups_and_counts_outside_the_groups_sizes_are_refused() {
        let mut g = group(vec![instance(
            "i-1",
            "a",
            LifecycleState::InService,
            "Healthy",
        )]);
        assert!(counts_instances(&g).is_ok());
        g.desired_capacity_type = Some("vcpu".into());
        let err = counts_instances(&g).unwrap_err().to_string();
        assert!(err.contains("counts its desired capacity in vcpu"), "{err}");
        g.desired_capacity_type = Some("units".into());
        g.instances.as_mut().unwrap()[0].weighted_capacity = Some("4".into());
        let err = counts_instances(&g).unwrap_err().to_string();
        assert!(err.contains("weighs its instances (i-1 counts 4)"), "{err}");
        // Weights in the policy, before any instance runs.
        let mut g = group(vec![]);
        g.mixed_instances_policy = Some(
            aws_sdk_autoscaling::types::MixedInstancesPolicy::builder()
                .launch_template(
                    aws_sdk_autoscaling::types::LaunchTemplate::builder()
                        .overrides(
                            aws_sdk_autoscaling::types::LaunchTemplateOverrides::builder()
                                .instance_type("m5.2xlarge")
                                .weighted_capacity("8")
                                .build(),
                        )
                        .build(),
                )
                .build(),
        );
        let err = counts_instances(&g).unwrap_err().to_string();
        assert!(
            err.contains("weighs its instances (m5.2xlarge counts 8)"),
            "{err}"
        );

        let mut g = group(vec![]);
        g.min_size = Some(2);
        g.max_size = Some(5);
        assert!(within_group_bounds(&g, 2).is_ok());
        assert!(within_group_bounds(&g, 5).is_ok());
        let err = within_group_bounds(&g, 6).unwrap_err().to_string();
        assert!(err.starts_with("6 is above the MaxSize (5)"), "{err}");
        let err = within_group_bounds(&g, 1).unwrap_err().to_string();
        assert!(err.starts_with("1 is below the MinSize (2)"), "{err}");
        assert!(err.contains("raise the scaler's min"), "{err}");
    }

    #[test]
    fn a_launch_template_group_prefers_instances_on_another_template() {
        let template = |id: &str| {
            LaunchTemplateSpecification::builder()
                .launch_template_id(id)
                .build()
        };
        let mut old = instance("i-1", "a", LifecycleState::InService, "Healthy");
        old.launch_configuration_name = None;
        old.launch_template = Some(template("lt-old"));
        let mut new = instance("i-2", "a", LifecycleState::InService, "Healthy");
        new.launch_configuration_name = None;
        new.launch_template = Some(template("lt-new"));
        let mut g = group(vec![old, new]);
        g.launch_configuration_name = None;
        g.launch_template = Some(template("lt-new"));
        assert_eq!(ids(choose_victims(&g, 1, false)), ["i-1"]);
    }

    /// More instances running than desired count, unless one is still
    /// launching (AWS replacing instances): then the desired capacity
    /// counts, and no scale-in fights the replacement.
    #[test]
    fn instances_above_the_desired_capacity_count_unless_aws_is_launching() {
        let running = |state| {
            group(vec![
                instance("i-1", "a", LifecycleState::InService, "Healthy"),
                instance("i-2", "a", LifecycleState::InService, "Healthy"),
                instance("i-3", "a", LifecycleState::InService, "Healthy"),
                instance("i-4", "a", state, "Healthy"),
            ])
        };
        let mut lowered = running(LifecycleState::InService);
        lowered.desired_capacity = Some(2);
        assert_eq!(current_of(&lowered), 4);
        assert!(matches!(
            plan(&lowered, 3, false),
            Ok(Plan::Remove { first_set_to: Some(4), ref victims }) if victims.len() == 1
        ));
        let mut refreshing = running(LifecycleState::Pending);
        refreshing.desired_capacity = Some(3);
        assert_eq!(current_of(&refreshing), 3);
        let err = plan(&refreshing, 2, false).unwrap_err().to_string();
        assert!(
            err.contains("is launching instances above its desired capacity"),
            "{err}"
        );
    }

    /// A new version of the same template (a new AMI rolled out) makes
    /// the instances on an older one outdated, also when the template is
    /// the mixed instances policy's; a symbolic version says nothing here.
    #[test]
    fn an_older_version_of_the_template_goes_first() {
        let template = |version: &str| {
            LaunchTemplateSpecification::builder()
                .launch_template_id("lt-1")
                .version(version)
                .build()
        };
        let on = |id: &str, version: &str| {
            let mut i = instance(id, "a", LifecycleState::InService, "Healthy");
            i.launch_configuration_name = None;
            i.launch_template = Some(template(version));
            i
        };
        let mut g = group(vec![on("i-1", "3"), on("i-2", "2"), on("i-3", "3")]);
        g.launch_configuration_name = None;
        g.launch_template = Some(template("3"));
        assert_eq!(ids(choose_victims(&g, 1, false)), ["i-2"]);
        g.launch_template = Some(template("$Latest"));
        assert_eq!(ids(choose_victims(&g, 1, false)), ["i-3"], "by id alone");
        g.launch_template = None;
        g.mixed_instances_policy = Some(
            aws_sdk_autoscaling::types::MixedInstancesPolicy::builder()
                .launch_template(
                    aws_sdk_autoscaling::types::LaunchTemplate::builder()
                        .launch_template_specification(template("3"))
                        .build(),
                )
                .build(),
        );
        assert_eq!(ids(choose_victims(&g, 1, false)), ["i-2"]);
        // An override's own template is as current as the group's.
        let mut graviton = on("i-4", "7");
        graviton.launch_template = Some(
            LaunchTemplateSpecification::builder()
                .launch_template_id("lt-arm")
                .version("7")
                .build(),
        );
        let mut g = group(vec![on("i-1", "3"), graviton, on("i-3", "2")]);
        g.launch_configuration_name = None;
        g.mixed_instances_policy = Some(
            aws_sdk_autoscaling::types::MixedInstancesPolicy::builder()
                .launch_template(
                    aws_sdk_autoscaling::types::LaunchTemplate::builder()
                        .launch_template_specification(template("3"))
                        .overrides(
                            aws_sdk_autoscaling::types::LaunchTemplateOverrides::builder()
                                .instance_type("m7g.large")
                                .launch_template_specification(
                                    LaunchTemplateSpecification::builder()
                                        .launch_template_id("lt-arm")
                                        .build(),
                                )
                                .build(),
                        )
                        .build(),
                )
                .build(),
        );
        assert_eq!(ids(choose_victims(&g, 2, false)), ["i-3", "i-4"]);
    }
}
