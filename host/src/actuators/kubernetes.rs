//! A Kubernetes workload as an actuator (`kind = "kubernetes"`), through its
//! scale subresource: a Deployment, a StatefulSet, a ReplicaSet, or any
//! custom resource that serves `/scale`, as the HorizontalPodAutoscaler
//! scales them.
//!
//! - `current` is the scale's `spec.replicas`; `ready` is the object's
//!   `status.readyReplicas` (the apps/v1 kinds leave it out when it is 0),
//!   or, for a kind that does not report it, the scale's `status.replicas`;
//! - a change is one merge patch of the scale's `spec.replicas`, done at
//!   once: the workload's controller starts or stops the pods, and the next
//!   ticks see them become ready.
//!
//! The client comes from the environment on first use, as `kubectl`'s does:
//! `KUBECONFIG` or `~/.kube/config` (its current context), else the pod's
//! service account in a cluster. It needs `get` on the workload and `get`
//! and `patch` on its `scale` subresource, and `create` on `events.k8s.io`
//! events for the Event each change leaves on the workload (`events`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};

use super::clients::{Lazy, SharedClient, TargetClients, kube_client};
use super::{Actuation, Actuator, ActuatorError, Announcement, Observed};
use crate::config::KubernetesTarget;

/// The kinds whose status has `readyReplicas` and `availableReplicas`,
/// each left out of the object when it is 0.
const READY_REPLICAS_KINDS: &[&str] = &[
    "Deployment",
    "StatefulSet",
    "ReplicaSet",
    "ReplicationController",
];

/// The kinds whose status has `updatedReplicas`, left out when it is 0.
const UPDATED_REPLICAS_KINDS: &[&str] = &["Deployment", "StatefulSet"];

/// Whether `kind`'s status has `field` (left out of the object when 0).
fn kind_has(kind: &str, field: &str) -> bool {
    match field {
        "readyReplicas" | "availableReplicas" => READY_REPLICAS_KINDS.contains(&kind),
        "updatedReplicas" => UPDATED_REPLICAS_KINDS.contains(&kind),
        _ => false,
    }
}

/// Scales one workload through its scale subresource.
pub struct KubernetesActuator {
    settings: KubernetesTarget,
    resource: ApiResource,
    /// Built on first use, from the environment, and shared with the
    /// daemon's other Kubernetes targets; a failure is retried at the next
    /// tick.
    client: SharedClient<Client>,
    /// The last failure told as an Event, so a lasting one is told once.
    last_failure: std::sync::Mutex<Option<String>>,
    /// What the last observation read: the scale's resourceVersion (the
    /// change made next is conditional on it, as HPA's update of the scale
    /// is) and the object's uid (what `kubectl describe` finds Events by).
    observed: std::sync::Mutex<Seen>,
    /// The status fields this workload has reported: a custom resource's
    /// controller (Argo Rollouts, say) leaves a count out when it is 0, as
    /// the built-in kinds do, so once reported a missing one reads 0. Kept
    /// by the daemon's clients across reloads.
    reported: super::clients::Reported,
}

/// See [`KubernetesActuator::observed`].
#[derive(Debug, Default, Clone)]
struct Seen {
    resource_version: Option<String>,
    uid: Option<String>,
}

impl KubernetesActuator {
    /// The actuator of `settings`, with the Kubernetes client of `clients`
    /// (inferred from the environment on first use).
    pub fn new(settings: KubernetesTarget, clients: &TargetClients) -> Self {
        let resource = api_resource(&settings);
        let workload = format!(
            "{} {} {:?}/{}",
            settings.api_version, settings.object, settings.namespace, settings.name
        );
        KubernetesActuator {
            reported: clients.kube_reported(workload),
            settings,
            resource,
            client: clients.kube_cell(),
            last_failure: std::sync::Mutex::new(None),
            observed: std::sync::Mutex::default(),
        }
    }

    /// The actuator of `settings` with a client already built.
    pub fn with_client(settings: KubernetesTarget, client: Client) -> Self {
        let resource = api_resource(&settings);
        KubernetesActuator {
            settings,
            resource,
            client: Arc::new(Lazy::ready(client)),
            last_failure: std::sync::Mutex::new(None),
            observed: std::sync::Mutex::default(),
            reported: super::clients::Reported::default(),
        }
    }

    async fn api(&self) -> Result<Api<DynamicObject>, ActuatorError> {
        let client = self.client().await?;
        let api = match &self.settings.namespace {
            Some(ns) => Api::namespaced_with(client, ns, &self.resource),
            None => Api::default_namespaced_with(client, &self.resource),
        };
        Ok(api)
    }

    async fn client(&self) -> Result<Client, ActuatorError> {
        kube_client(&self.client)
            .await
            .map_err(ActuatorError::Failed)
    }

    /// The Event that says what `a` did to the workload, in `namespace`.
    fn event(&self, namespace: &str, a: &Announcement) -> Event {
        let (kind, reason, note) = match &a.error {
            None => (
                "Normal",
                "SuccessfulRescale",
                format!("New size: {}; scaler {:?}: {}", a.to, a.scaler, a.reason),
            ),
            Some(error) => (
                "Warning",
                "FailedRescale",
                format!(
                    "New size {} not set (scaler {:?}): {error}; {}",
                    a.to, a.scaler, a.reason
                ),
            ),
        };
        Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", self.settings.name)),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(
                Timestamp::from_millisecond(a.time_ms).unwrap_or(Timestamp::UNIX_EPOCH),
            )),
            action: Some("Scale".into()),
            reason: Some(reason.into()),
            note: Some(truncate_at_char(&note, MAX_EVENT_NOTE).to_owned()),
            type_: Some(kind.into()),
            regarding: Some(ObjectReference {
                api_version: Some(self.settings.api_version.clone()),
                kind: Some(self.settings.object.clone()),
                name: Some(self.settings.name.clone()),
                namespace: Some(namespace.to_owned()),
                // kubectl describe finds an object's Events by its uid.
                uid: self.seen().uid,
                ..ObjectReference::default()
            }),
            reporting_controller: Some(REPORTING_CONTROLLER.into()),
            reporting_instance: Some(reporting_instance()),
            ..Event::default()
        }
    }

    fn seen(&self) -> Seen {
        self.observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// `Deployment "web"` (`in namespace "shop"` when one is set).
    fn describe(&self) -> String {
        let mut s = format!("{} {:?}", self.settings.object, self.settings.name);
        if let Some(ns) = &self.settings.namespace {
            s.push_str(&format!(" in namespace {ns:?}"));
        }
        s
    }

    fn error(&self, operation: &str, err: kube::Error) -> ActuatorError {
        match err {
            kube::Error::Api(status) if status.code == 404 => ActuatorError::NotFound(format!(
                "{} ({operation}: {})",
                self.describe(),
                status.message
            )),
            kube::Error::Api(status) if status.code == 403 => ActuatorError::Failed(format!(
                "{operation} {}: forbidden: {}; the client needs get on {} and get and patch on \
                 {}/scale",
                self.describe(),
                status.message,
                self.resource.plural,
                self.resource.plural
            )),
            kube::Error::Api(status) => ActuatorError::Failed(format!(
                "{operation} {}: {} {}: {}",
                self.describe(),
                status.code,
                status.reason,
                status.message
            )),
            other => ActuatorError::Failed(format!("{operation} {}: {other}", self.describe())),
        }
    }

    async fn scale_of(&self, api: &Api<DynamicObject>) -> Result<Scale, ActuatorError> {
        match api.get_scale(&self.settings.name).await {
            Ok(scale) => Ok(scale),
            Err(kube::Error::Api(status)) if status.code == 404 => {
                Err(self.why_no_scale(api).await)
            }
            Err(e) => Err(self.error("reading the scale of", e)),
        }
    }

    /// Why `/scale` answered 404, in words that point at the fix: the
    /// object is missing, it exists but its kind serves no scale
    /// subresource (a CustomResourceDefinition without
    /// `subresources.scale`), or no such resource is served at all (a
    /// wrong `api_version`, `object` or `plural`).
    async fn why_no_scale(&self, api: &Api<DynamicObject>) -> ActuatorError {
        let resource = format!("{} in {}", self.resource.plural, self.settings.api_version);
        match api.get(&self.settings.name).await {
            Ok(_) => ActuatorError::Failed(format!(
                "{} has no scale subresource: its kind must serve /scale (a \
                 CustomResourceDefinition declares it under subresources.scale with \
                 specReplicasPath and statusReplicasPath), as kubectl scale and the \
                 HorizontalPodAutoscaler need too",
                self.describe()
            )),
            // A missing object's 404 names it; an unserved resource's says
            // only that the server could not find the requested resource.
            Err(kube::Error::Api(status))
                if status.code == 404
                    && status.details.as_ref().is_none_or(|d| d.name.is_empty()) =>
            {
                ActuatorError::Failed(format!(
                    "the API server serves no {resource} (looking for {}): check the target's \
                     api_version, object and plural (`kubectl api-resources` lists what is \
                     served; it said: {})",
                    self.describe(),
                    status.message
                ))
            }
            Err(e) => self.error("reading the scale of", e),
        }
    }
}

impl std::fmt::Debug for KubernetesActuator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client has no Debug; what it talks to is in the settings.
        f.debug_struct("KubernetesActuator")
            .field("settings", &self.settings)
            .field("client_ready", &self.client.is_built())
            .finish_non_exhaustive()
    }
}

fn api_resource(settings: &KubernetesTarget) -> ApiResource {
    let (group, version) = settings
        .api_version
        .split_once('/')
        .unwrap_or(("", &settings.api_version));
    let gvk = GroupVersionKind::gvk(group, version, &settings.object);
    match &settings.plural {
        Some(plural) => ApiResource::from_gvk_with_plural(&gvk, plural),
        None => ApiResource::from_gvk(&gvk),
    }
}

fn spec_replicas(scale: &Scale) -> u32 {
    scale
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(0)
        .max(0) as u32
}

/// What a workload reports beyond its replica counts (metrics of the
/// `target` source): `pods`, the replicas that exist (the scale's
/// `status.replicas`), and the workload's `status.availableReplicas` and
/// `status.updatedReplicas` where its kind has them.
pub const FACTS: &[&str] = &["pods", "available", "updated"];

/// The counts of `object`'s status, read as its kind writes them.
struct StatusCounts<'a> {
    kind: &'a str,
    status: Option<&'a serde_json::Value>,
    /// The fields the workload reported before (see
    /// [`KubernetesActuator::reported`]); the ones read now are added.
    reported: &'a mut BTreeSet<&'static str>,
}

impl StatusCounts<'_> {
    /// `status.<field>`: 0 when left out by a kind that has the field or a
    /// workload that reported it before; `None` when it never had it.
    fn get(&mut self, field: &'static str) -> Option<u32> {
        match self
            .status
            .and_then(|s| s.get(field))
            .and_then(serde_json::Value::as_u64)
        {
            Some(n) => {
                self.reported.insert(field);
                Some(n.min(u64::from(u32::MAX)) as u32)
            }
            None if kind_has(self.kind, field) || self.reported.contains(field) => Some(0),
            None => None,
        }
    }

    /// The ready replicas; `fallback` (the pods) for a workload that never
    /// reported them.
    fn ready(&mut self, fallback: u32) -> u32 {
        self.get("readyReplicas").unwrap_or(fallback)
    }

    /// The [`FACTS`]; one the workload does not have is left out.
    fn facts(&mut self, status_replicas: u32) -> BTreeMap<String, f64> {
        let mut facts = BTreeMap::from([("pods".to_owned(), f64::from(status_replicas))]);
        for (fact, field) in [
            ("available", "availableReplicas"),
            ("updated", "updatedReplicas"),
        ] {
            if let Some(n) = self.get(field) {
                facts.insert(fact.to_owned(), f64::from(n));
            }
        }
        facts
    }
}

/// Who the workloads' Events say reported them.
const REPORTING_CONTROLLER: &str = "scalewise";

/// The API server's limit on an Event's note.
const MAX_EVENT_NOTE: usize = 1024;

/// This process, as its Events name it: the pod (`POD_NAME`) or the host.
fn reporting_instance() -> String {
    let name = crate::leader::host_name();
    truncate_at_char(&format!("{REPORTING_CONTROLLER}-{name}"), 128).to_owned()
}

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary.
fn truncate_at_char(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[async_trait]
impl Actuator for KubernetesActuator {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn target_name(&self) -> String {
        match &self.settings.namespace {
            Some(ns) => format!("{ns}/{}", self.settings.name),
            None => self.settings.name.clone(),
        }
    }

    async fn observe(&self, _now_ms: i64) -> Result<Observed, ActuatorError> {
        let api = self.api().await?;
        let scale = self.scale_of(&api).await?;
        let status_replicas = scale
            .status
            .as_ref()
            .map(|s| s.replicas.max(0) as u32)
            .unwrap_or(0);
        let object = api
            .get(&self.settings.name)
            .await
            .map_err(|e| self.error("reading", e))?;
        *self
            .observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Seen {
            resource_version: scale.metadata.resource_version.clone(),
            uid: object.metadata.uid.clone(),
        };
        let mut reported = self
            .reported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut counts = StatusCounts {
            kind: &self.settings.object,
            status: object.data.get("status"),
            reported: &mut reported,
        };
        Ok(Observed {
            current: spec_replicas(&scale),
            ready: counts.ready(status_replicas),
            in_flight: None,
            facts: counts.facts(status_replicas),
        })
    }

    async fn scale(
        &self,
        _now_ms: i64,
        current: u32,
        desired: u32,
    ) -> Result<Actuation, ActuatorError> {
        let api = self.api().await?;
        // Conditional on the scale this tick read, as HPA's update of the
        // scale is: a change someone else made meanwhile (kubectl scale,
        // GitOps, another controller) is not overwritten by a decision
        // taken on the count before it.
        let patch = |version: Option<String>| {
            let mut patch = serde_json::json!({ "spec": { "replicas": desired } });
            if let Some(version) = version {
                patch["metadata"] = serde_json::json!({ "resourceVersion": version });
            }
            patch
        };
        let send = |patch: serde_json::Value| {
            let api = &api;
            async move {
                api.patch_scale(
                    &self.settings.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            }
        };
        let conflict = |now: Option<u32>| {
            ActuatorError::Failed(match now {
                Some(now) => format!(
                    "scaling {}: its replicas changed since this tick read them ({current} → \
                     {now}; conflict); the next tick decides again from what it reads",
                    self.describe()
                ),
                None => format!(
                    "scaling {}: the workload was written again while the change was sent \
                     (a conflict twice); the next tick decides again from what it reads",
                    self.describe()
                ),
            })
        };
        let scale = match send(patch(self.seen().resource_version)).await {
            Ok(scale) => scale,
            // The version moves at every write to the workload, its status
            // too (pods becoming ready, a rollout's progress): a conflict
            // whose replicas are still the ones the tick read is sent again
            // against the version read now. Only a changed count refuses.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let fresh = self.scale_of(&api).await?;
                let now = spec_replicas(&fresh);
                // Someone else set the count this tick wanted: it is made.
                if now == desired {
                    return Ok(Actuation::Done {
                        detail: format!(
                            "the replicas of {} are {desired} already (was {current}; set by \
                             another writer since this tick read them)",
                            self.describe()
                        ),
                    });
                }
                if now != current {
                    return Err(conflict(Some(now)));
                }
                match send(patch(fresh.metadata.resource_version.clone())).await {
                    Ok(scale) => scale,
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        return Err(conflict(None));
                    }
                    Err(other) => return Err(self.error("scaling", other)),
                }
            }
            Err(other) => return Err(self.error("scaling", other)),
        };
        Ok(Actuation::Done {
            detail: format!(
                "set the replicas of {} to {} (was {current})",
                self.describe(),
                spec_replicas(&scale)
            ),
        })
    }

    async fn announce(&self, announcement: Announcement) {
        if !self.settings.events {
            return;
        }
        // A failure is told when it starts or changes, not every tick.
        {
            let mut last = self
                .last_failure
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match &announcement.error {
                Some(error) if last.as_deref() == Some(error.as_str()) => return,
                error => *last = error.clone(),
            }
        }
        let Ok(client) = self.client().await else {
            // The tick that failed to scale has said why already.
            return;
        };
        let namespace = match &self.settings.namespace {
            Some(ns) => ns.clone(),
            None => client.default_namespace().to_owned(),
        };
        let event = self.event(&namespace, &announcement);
        let events: Api<Event> = Api::namespaced(client, &namespace);
        if let Err(err) = events.create(&PostParams::default(), &event).await {
            tracing::warn!(
                scaler = %announcement.scaler,
                error = %err,
                "Could not record the change as an Event on {} (the client needs create on \
                 events.k8s.io events in its namespace; `events = false` in the target turns \
                 Events off).",
                self.describe()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(api_version: &str, object: &str, plural: Option<&str>) -> KubernetesTarget {
        KubernetesTarget {
            api_version: api_version.into(),
            object: object.into(),
            name: "web".into(),
            namespace: None,
            plural: plural.map(Into::into),
            events: true,
        }
    }

    #[test]
    fn the_resource_path_comes_from_api_version_and_object() {
        let r = api_resource(&target("apps/v1", "Deployment", None));
        assert_eq!(
            (r.group.as_str(), r.version.as_str(), r.plural.as_str()),
            ("apps", "v1", "deployments")
        );
        let r = api_resource(&target("v1", "ReplicationController", None));
        assert_eq!(
            (r.group.as_str(), r.plural.as_str()),
            ("", "replicationcontrollers")
        );
        let r = api_resource(&target(
            "example.com/v1alpha1",
            "Worker",
            Some("workerpools"),
        ));
        assert_eq!(
            (r.group.as_str(), r.version.as_str(), r.plural.as_str()),
            ("example.com", "v1alpha1", "workerpools")
        );
    }

    /// Reads `status` as a workload of `kind` that reported `before`:
    /// (ready, facts other than pods) and what it has reported now.
    fn read(
        kind: &str,
        before: &[&'static str],
        status: serde_json::Value,
    ) -> (u32, Vec<(String, f64)>, Vec<&'static str>) {
        let mut reported = before.iter().copied().collect();
        let mut counts = StatusCounts {
            kind,
            status: Some(&status),
            reported: &mut reported,
        };
        let ready = counts.ready(3);
        let facts = counts
            .facts(3)
            .into_iter()
            .filter(|(fact, _)| fact != "pods")
            .collect();
        (ready, facts, reported.into_iter().collect())
    }

    #[test]
    fn counts_left_out_mean_zero_for_kinds_that_have_them() {
        let all = serde_json::json!({
            "replicas": 3, "readyReplicas": 2, "availableReplicas": 1, "updatedReplicas": 3
        });
        let (ready, facts, _) = read("Deployment", &[], all.clone());
        assert_eq!(ready, 2);
        assert_eq!(
            facts,
            [("available".to_owned(), 1.0), ("updated".to_owned(), 3.0)]
        );
        assert_eq!(read("Worker", &[], all).0, 2);

        // The built-in kinds leave each count out when it is 0.
        let none = serde_json::json!({"replicas": 3});
        let (ready, facts, _) = read("Deployment", &[], none.clone());
        assert_eq!(ready, 0);
        assert_eq!(
            facts,
            [("available".to_owned(), 0.0), ("updated".to_owned(), 0.0)]
        );
        let (ready, facts, _) = read("ReplicationController", &[], none.clone());
        assert_eq!(ready, 0);
        assert_eq!(facts, [("available".to_owned(), 0.0)]);

        // A custom kind that never reported them: ready is the pods, no
        // facts.
        let (ready, facts, reported) = read("Worker", &[], none.clone());
        assert_eq!((ready, facts, reported), (3, vec![], vec![]));
    }

    #[test]
    fn a_custom_kind_that_reported_a_count_reads_zero_when_it_leaves_it_out() {
        let (_, _, reported) = read(
            "Rollout",
            &[],
            serde_json::json!({"replicas": 5, "readyReplicas": 5, "availableReplicas": 5}),
        );
        assert_eq!(reported, ["availableReplicas", "readyReplicas"]);
        // Argo Rollouts leaves both out when no pod is ready.
        let (ready, facts, _) = read("Rollout", &reported, serde_json::json!({"replicas": 5}));
        assert_eq!(ready, 0);
        assert_eq!(facts, [("available".to_owned(), 0.0)]);
    }
}
