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
//! While victims drain, [`Actuator::observe`] reports the change in flight
//! and advances it, so the control loop starts no other change. The desired
//! capacity drops only when a victim is terminated: a daemon restarted in the
//! middle of a drain finds the group as it was (the victims still in service
//! and protected) and decides again, and a victim is never terminated
//! undrained. The drain webhook may therefore be called again for the same
//! instance and must be idempotent.
//!
//! With `protect_instances` (the default) every scale call also protects the
//! group's in-service instances from scale-in and sets the group's
//! `NewInstancesProtectedFromScaleIn`, so nothing but Scalewise picks a
//! victim (a lowered desired capacity, say, cannot terminate an undrained
//! instance). Dry-run never calls the actuator's `scale`, so it changes
//! nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_autoscaling::Client;
use aws_sdk_autoscaling::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_autoscaling::types::{AutoScalingGroup, Instance, LifecycleState};
use tokio::sync::{Mutex, OnceCell};

use super::{Actuation, Actuator, ActuatorError, InFlight, Observed};
use crate::config::AwsAsgTarget;
use crate::outbound::AuthedClient;

/// The longest one call to the Auto Scaling API may take, retries included.
const API_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest one call to the drain webhook may take.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Scales one Auto Scaling group.
#[derive(Debug)]
pub struct AwsAsgActuator {
    settings: AwsAsgTarget,
    /// Built on first use: loading the AWS configuration (credentials,
    /// region) may take network calls, which belong in a tick, not in start-up.
    client: OnceCell<Client>,
    /// The drain webhook's client, with its credentials.
    drain: Option<AuthedClient>,
    draining: Mutex<Option<ScaleIn>>,
}

/// A scale-in in progress.
#[derive(Debug, Clone)]
struct ScaleIn {
    /// The desired capacity once every victim is gone.
    desired: u32,
    since_ms: i64,
    victims: Vec<Victim>,
}

#[derive(Debug, Clone)]
struct Victim {
    id: String,
    zone: String,
    /// The webhook answered 200 (or there is no webhook).
    drained: bool,
    /// What the last drain or termination attempt said.
    note: String,
    terminated: bool,
}

impl AwsAsgActuator {
    /// The actuator of the group `settings.group`, with an AWS client loaded
    /// from the environment (credentials chain, region) on first use. Fails
    /// when the drain webhook's credentials or CA file cannot be read (the
    /// error names the setting: `drain_webhook.bearer_token: ...`).
    pub fn new(settings: AwsAsgTarget) -> Result<Self, String> {
        Ok(AwsAsgActuator {
            drain: drain_client(&settings)?,
            settings,
            client: OnceCell::new(),
            draining: Mutex::new(None),
        })
    }

    /// The actuator of `settings.group` with a client already built (tests,
    /// or an embedding program with its own AWS configuration).
    pub fn with_client(settings: AwsAsgTarget, client: Client) -> Result<Self, String> {
        Ok(AwsAsgActuator {
            drain: drain_client(&settings)?,
            settings,
            client: OnceCell::new_with(Some(client)),
            draining: Mutex::new(None),
        })
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .timeout_config(
                        aws_config::timeout::TimeoutConfig::builder()
                            .operation_timeout(API_TIMEOUT)
                            .build(),
                    );
                if let Some(region) = &self.settings.region {
                    loader = loader.region(aws_config::Region::new(region.clone()));
                }
                if let Some(endpoint) = &self.settings.endpoint {
                    loader = loader.endpoint_url(endpoint.clone());
                }
                Client::new(&loader.load().await)
            })
            .await
    }

    async fn describe(&self) -> Result<AutoScalingGroup, ActuatorError> {
        let group = &self.settings.group;
        let out = self
            .client()
            .await
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
        let client = self.client().await;
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
        let unprotected: Vec<String> = group
            .instances()
            .iter()
            .filter(|i| {
                matches!(
                    i.lifecycle_state(),
                    Some(LifecycleState::InService | LifecycleState::Pending)
                ) && i.protected_from_scale_in() != Some(true)
            })
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect();
        if !unprotected.is_empty() {
            client
                .set_instance_protection()
                .auto_scaling_group_name(&self.settings.group)
                .set_instance_ids(Some(unprotected.clone()))
                .protected_from_scale_in(true)
                .send()
                .await
                .map_err(|e| api_error("SetInstanceProtection", e))?;
            done.push(match unprotected.as_slice() {
                [one] => format!("protected {one} from scale-in"),
                many => format!("protected {} instances from scale-in", many.len()),
            });
        }
        Ok((!done.is_empty()).then(|| done.join("; ")))
    }

    /// Takes each victim of `scale_in` one step further: drain, then lift
    /// its protection and terminate it. Errors are kept in the victim's note
    /// and retried next tick.
    async fn advance(&self, now_ms: i64, scale_in: &mut ScaleIn, group: &AutoScalingGroup) {
        let present: BTreeMap<&str, &Instance> = group
            .instances()
            .iter()
            .filter_map(|i| Some((i.instance_id()?, i)))
            .collect();
        let elapsed = Duration::from_millis((now_ms - scale_in.since_ms).max(0) as u64);
        for victim in scale_in.victims.iter_mut().filter(|v| !v.terminated) {
            let Some(instance) = present.get(victim.id.as_str()) else {
                // Gone (terminated by someone else, or by us on a retry the
                // API reported as failed). The desired capacity may not have
                // dropped with it; the next decision sees the real count.
                victim.terminated = true;
                victim.note = "left the group".into();
                continue;
            };
            if matches!(
                instance.lifecycle_state(),
                Some(
                    LifecycleState::Terminating
                        | LifecycleState::TerminatingWait
                        | LifecycleState::TerminatingProceed
                        | LifecycleState::Terminated
                )
            ) {
                victim.terminated = true;
                victim.note = "terminating".into();
                continue;
            }
            if !victim.drained {
                self.drain_step(victim).await;
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
            match self.terminate(&victim.id).await {
                Ok(()) => {
                    tracing::info!(
                        group = %self.settings.group,
                        instance = %victim.id,
                        drained = victim.drained,
                        "Terminated a scale-in victim."
                    );
                    victim.terminated = true;
                    if victim.drained {
                        victim.note = "drained and terminated".into();
                    } else {
                        victim.note.push_str("; terminated");
                    }
                }
                Err(e) => victim.note = format!("termination failed, retrying: {e}"),
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
        let body = serde_json::json!({
            "group": self.settings.group,
            "instance_id": victim.id,
            "availability_zone": victim.zone,
        });
        match http.post(&webhook.url).json(&body).send().await {
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

    async fn terminate(&self, id: &str) -> Result<(), ActuatorError> {
        let client = self.client().await;
        if self.settings.protect_instances {
            client
                .set_instance_protection()
                .auto_scaling_group_name(&self.settings.group)
                .instance_ids(id)
                .protected_from_scale_in(false)
                .send()
                .await
                .map_err(|e| api_error("SetInstanceProtection", e))?;
        }
        client
            .terminate_instance_in_auto_scaling_group()
            .instance_id(id)
            .should_decrement_desired_capacity(true)
            .send()
            .await
            .map_err(|e| api_error("TerminateInstanceInAutoScalingGroup", e))?;
        Ok(())
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

/// Picks `count` instances of `group` to remove, best first: unhealthy ones;
/// then from the Availability Zone that has the most candidates (so the group
/// stays balanced); then ones on a launch configuration or template other
/// than the group's; then ones still pending; then the highest instance id
/// (a stable order, so that a restarted daemon picks the same ones). Only
/// pending and in-service instances are candidates: ones in standby, being
/// detached or terminated are left alone.
pub fn choose_victims(group: &AutoScalingGroup, count: usize) -> Vec<(String, String)> {
    let mut candidates: Vec<&Instance> = group
        .instances()
        .iter()
        .filter(|i| {
            i.instance_id().is_some()
                && matches!(
                    i.lifecycle_state(),
                    Some(LifecycleState::InService | LifecycleState::Pending)
                )
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
    let outdated = match (
        group.launch_configuration_name(),
        group.launch_template().and_then(|t| t.launch_template_id()),
    ) {
        (Some(config), _) => instance.launch_configuration_name() != Some(config),
        (None, Some(template)) => {
            instance
                .launch_template()
                .and_then(|t| t.launch_template_id())
                != Some(template)
        }
        (None, None) => false,
    };
    let pending = instance.lifecycle_state() == Some(&LifecycleState::Pending);
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
        let mut draining = self.draining.lock().await;
        let mut group = self.describe().await?;
        let mut in_flight = None;
        if let Some(scale_in) = draining.as_mut() {
            self.advance(now_ms, scale_in, &group).await;
            if scale_in.victims.iter().all(|v| v.terminated) {
                *draining = None;
                // What the terminations changed.
                group = self.describe().await?;
            } else {
                in_flight = Some(Self::in_flight(scale_in));
            }
        }
        Ok(Observed {
            current: desired_of(&group),
            ready: ready_of(&group),
            in_flight,
            facts: facts_of(&group),
        })
    }

    async fn scale(
        &self,
        now_ms: i64,
        // The group's own desired capacity is read again below: it is what
        // a scale-in counts down from.
        _current: u32,
        desired: u32,
    ) -> Result<Actuation, ActuatorError> {
        let mut draining = self.draining.lock().await;
        if let Some(scale_in) = draining.as_ref() {
            return Err(ActuatorError::Failed(format!(
                "a change is already in flight ({})",
                Self::in_flight(scale_in).detail
            )));
        }
        let group = self.describe().await?;
        let protected = self.protect(&group).await?;
        let with_protection = |detail: String| match &protected {
            Some(p) => format!("{detail}; {p}"),
            None => detail,
        };
        let name = &self.settings.group;
        let now = desired_of(&group);
        if desired >= now {
            self.client()
                .await
                .set_desired_capacity()
                .auto_scaling_group_name(name)
                .desired_capacity(desired as i32)
                .honor_cooldown(false)
                .send()
                .await
                .map_err(|e| api_error("SetDesiredCapacity", e))?;
            return Ok(Actuation::Done {
                detail: with_protection(format!(
                    "set the desired capacity of Auto Scaling group {name:?} to {desired} (was {now})"
                )),
            });
        }
        let victims = choose_victims(&group, (now - desired) as usize);
        if victims.is_empty() {
            return Err(ActuatorError::Failed(format!(
                "no instance of Auto Scaling group {name:?} can be removed (none pending or in service)"
            )));
        }
        let mut scale_in = ScaleIn {
            desired: now - victims.len() as u32,
            since_ms: now_ms,
            victims: victims
                .into_iter()
                .map(|(id, zone)| Victim {
                    id,
                    zone,
                    drained: false,
                    note: "chosen".into(),
                    terminated: false,
                })
                .collect(),
        };
        self.advance(now_ms, &mut scale_in, &group).await;
        let ids: Vec<&str> = scale_in.victims.iter().map(|v| v.id.as_str()).collect();
        if scale_in.victims.iter().all(|v| v.terminated) {
            return Ok(Actuation::Done {
                detail: with_protection(format!(
                    "terminated {} of Auto Scaling group {name:?} ({now} → {})",
                    ids.join(", "),
                    scale_in.desired
                )),
            });
        }
        let detail = with_protection(format!(
            "draining {} of Auto Scaling group {name:?} before terminating ({now} → {})",
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
        assert_eq!(ids(choose_victims(&g, 2)), ["i-3", "i-2"]);
        assert_eq!(ids(choose_victims(&g, 3)), ["i-3", "i-2", "i-4"]);
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
        assert_eq!(ids(choose_victims(&g, 4)), ["i-4", "i-1", "i-2", "i-3"]);
    }

    #[test]
    fn instances_in_standby_or_terminating_are_never_chosen() {
        let g = group(vec![
            instance("i-1", "a", LifecycleState::Standby, "Healthy"),
            instance("i-2", "a", LifecycleState::Terminating, "Healthy"),
            instance("i-3", "a", LifecycleState::InService, "Healthy"),
        ]);
        assert_eq!(ids(choose_victims(&g, 3)), ["i-3"]);
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
        assert_eq!(ids(choose_victims(&g, 1)), ["i-1"]);
    }
}
