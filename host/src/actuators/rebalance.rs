//! Shard rebalancing for stateful workers (`target.kind = "rebalance"`).
//!
//! A stream processor whose state is split into shards runs workers, each
//! owning some shards. Adding a worker is useless until shards move to it;
//! removing one loses work unless its shards have moved off first. This
//! actuator owns the assignment of shards to workers, through the system's
//! shard coordinator API (see the README, "Scaling stateful workers"):
//!
//! - `GET {endpoint}/workers`: every shard, and each worker with whether it
//!   is ready and the shards it owns now (moves finished);
//! - `POST {endpoint}/workers`: start one worker; answers its id;
//! - `PUT {endpoint}/assignment`: the shards each worker should own; the
//!   coordinator moves them (the old owner releases a shard, then the new
//!   one takes it). Sent again each tick until the moves are done;
//! - `DELETE {endpoint}/workers/{id}`: stop a worker that owns nothing.
//!
//! Scale-out starts the new workers, waits until they are ready, then moves
//! shards onto them. Scale-in chooses the victims (not ready first, then
//! the fewest shards, then the highest id), moves their shards to the
//! workers that stay, and stops each victim only once it owns no shard.
//! Either way the change is in flight until it is done, and the assignment
//! is balanced (shard counts differ by at most one) with as few moves as
//! that allows. A change that is not done within `timeout` is given up with
//! an error: nothing is stopped, and the next tick decides afresh from what
//! the coordinator reports. The change's state is kept in memory: a daemon
//! restarted mid-change finds the workers as they are and decides again,
//! and never stops a worker that still owns shards.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{Actuation, Actuator, ActuatorError, InFlight, MayAct, Observed};
use crate::config::RebalanceTarget;
use crate::outbound::AuthedClient;

/// How long one request to the coordinator may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What `GET {endpoint}/workers` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// Every shard of the system.
    pub shards: Vec<String>,
    /// The workers running now.
    pub workers: Vec<Worker>,
}

/// What the workers report beyond their count (metrics of the `target`
/// source): every shard of the system, those no worker owns, and the most
/// one worker owns.
pub const FACTS: &[&str] = &["shards", "unassigned_shards", "max_shards_per_worker"];

impl Cluster {
    /// The [`FACTS`] of this cluster.
    pub fn facts(&self) -> BTreeMap<String, f64> {
        let owned: BTreeSet<&str> = self
            .workers
            .iter()
            .flat_map(|w| w.shards.iter().map(String::as_str))
            .collect();
        let unassigned = self
            .shards
            .iter()
            .filter(|s| !owned.contains(s.as_str()))
            .count();
        let most = self
            .workers
            .iter()
            .map(|w| w.shards.len())
            .max()
            .unwrap_or(0);
        FACTS
            .iter()
            .zip([self.shards.len(), unassigned, most])
            .map(|(name, n)| ((*name).to_owned(), n as f64))
            .collect()
    }
}

/// One worker as the coordinator reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    /// Its id.
    pub id: String,
    /// Whether it runs and can take shards.
    pub ready: bool,
    /// The shards it owns now.
    #[serde(default)]
    pub shards: Vec<String>,
}

/// What `POST {endpoint}/workers` answers.
#[derive(Debug, Deserialize)]
struct Started {
    id: String,
}

/// The body of `PUT {endpoint}/assignment`.
#[derive(Debug, Serialize)]
struct AssignmentBody<'a> {
    assignment: &'a Assignment,
}

/// Shards by worker id.
pub type Assignment = BTreeMap<String, Vec<String>>;

/// A change being carried out.
#[derive(Debug, Clone)]
struct Change {
    desired: u32,
    since_ms: i64,
    /// Workers this change started, still to become ready.
    starting: Vec<String>,
    /// Workers this change stops once they own nothing.
    victims: Vec<String>,
    /// The assignment being moved to, once the new workers are ready.
    plan: Option<Assignment>,
    /// Since when the change has been held where it is (a pause, dry-run:
    /// [`Actuator::observe_only`]); that time does not count towards its
    /// timeout.
    held_ms: Option<i64>,
    /// Why its last step failed (the coordinator refused an assignment or
    /// a stop), until one succeeds: said in its detail.
    step_error: Option<String>,
}

/// The actuator of one scaler's sharded workers.
#[derive(Debug)]
pub struct RebalanceActuator {
    settings: RebalanceTarget,
    /// The coordinator's client, with its credentials.
    http: AuthedClient,
    change: Mutex<Option<Change>>,
    /// When a change was last given up for taking longer than `timeout`
    /// (`i64::MIN`: never).
    gave_up_ms: AtomicI64,
}

impl RebalanceActuator {
    /// The actuator for `settings`; nothing is contacted until the first
    /// tick. Fails when the coordinator's credentials or CA file cannot be
    /// read (the error names the setting: `bearer_token: ...`).
    pub fn new(settings: RebalanceTarget) -> Result<Self, String> {
        let http = AuthedClient::build("", settings.http_auth(), REQUEST_TIMEOUT)?;
        Ok(RebalanceActuator {
            http,
            settings,
            change: Mutex::new(None),
            gave_up_ms: AtomicI64::new(i64::MIN),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.settings.endpoint.trim_end_matches('/'))
    }

    async fn request(
        &self,
        what: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ActuatorError> {
        let response = req.send().await.map_err(|e| {
            ActuatorError::Failed(format!(
                "shard coordinator {}: {what}: {}",
                self.settings.endpoint,
                crate::outbound::causes(&e)
            ))
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND && what == "list workers" {
            return Err(ActuatorError::NotFound(format!(
                "shard coordinator {}: {what}: HTTP 404",
                self.settings.endpoint
            )));
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(300).collect();
            return Err(ActuatorError::Failed(format!(
                "shard coordinator {}: {what}: HTTP {}{}",
                self.settings.endpoint,
                status.as_u16(),
                if body.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", body.trim())
                }
            )));
        }
        Ok(response)
    }

    async fn cluster(&self) -> Result<Cluster, ActuatorError> {
        let response = self
            .request("list workers", self.http.get(self.url("workers")))
            .await?;
        response.json::<Cluster>().await.map_err(|e| {
            ActuatorError::Failed(format!(
                "shard coordinator {}: list workers: the answer is not {{shards, workers}}: {e}",
                self.settings.endpoint
            ))
        })
    }

    async fn start_worker(&self) -> Result<String, ActuatorError> {
        let response = self
            .request("start a worker", self.http.post(self.url("workers")))
            .await?;
        let started: Started = response.json().await.map_err(|e| {
            ActuatorError::Failed(format!(
                "shard coordinator {}: start a worker: the answer has no id: {e}",
                self.settings.endpoint
            ))
        })?;
        Ok(started.id)
    }

    async fn assign(&self, plan: &Assignment) -> Result<(), ActuatorError> {
        let body = AssignmentBody { assignment: plan };
        self.request(
            "assign shards",
            self.http.put(self.url("assignment")).json(&body),
        )
        .await
        .map(drop)
    }

    async fn stop_worker(&self, id: &str) -> Result<(), ActuatorError> {
        let url = worker_url(&self.settings.endpoint, id).map_err(|e| {
            ActuatorError::Failed(format!(
                "shard coordinator {}: stop worker {id}: {e}",
                self.settings.endpoint
            ))
        })?;
        self.request(&format!("stop worker {id}"), self.http.delete(url))
            .await
            .map(drop)
    }

    /// Advances `change` by one step against `cluster`; true when it is done.
    async fn advance(
        &self,
        change: &mut Change,
        cluster: &Cluster,
        may_act: MayAct<'_>,
    ) -> Result<bool, ActuatorError> {
        let ready: BTreeSet<&str> = cluster
            .workers
            .iter()
            .filter(|w| w.ready)
            .map(|w| w.id.as_str())
            .collect();
        change.starting.retain(|id| !ready.contains(id.as_str()));
        if !change.starting.is_empty() {
            return Ok(false);
        }
        // A plan the cluster no longer fits (a shard added or removed, a
        // keeper gone, a coordinator that restarted with new ids) would be
        // refused at every PUT: plan again from what is there now.
        if change
            .plan
            .as_ref()
            .is_some_and(|plan| !plan_fits(cluster, plan))
        {
            tracing::warn!(
                target = %self.settings.endpoint,
                "The shards or workers changed under a rebalance; planning it again."
            );
            change.plan = None;
        }
        let plan = match &change.plan {
            Some(plan) => plan.clone(),
            None => {
                let keep: Vec<&str> = cluster
                    .workers
                    .iter()
                    .map(|w| w.id.as_str())
                    .filter(|id| !change.victims.iter().any(|v| v == id))
                    .collect();
                let plan = balance(cluster, &keep);
                change.plan = Some(plan.clone());
                plan
            }
        };
        // Each step only while this tick's replica leads (another may be
        // acting on the cluster once the lease is lost).
        if !owns_as_planned(cluster, &plan, &change.victims) {
            if may_act() {
                // Idempotent: a coordinator that restarted learns it again.
                self.assign(&plan).await?;
            }
            return Ok(false);
        }
        let mut stopped = 0;
        for victim in &change.victims {
            if !may_act() {
                return Ok(false);
            }
            if cluster.workers.iter().any(|w| &w.id == victim) {
                match self.stop_worker(victim).await {
                    Ok(()) => stopped += 1,
                    // Workers already stopped are a change made: it stays
                    // in flight (the next tick stops the rest, and the
                    // scaler counts it for its cooldowns and rate limits)
                    // rather than fail as if nothing had changed.
                    Err(error) if stopped > 0 => {
                        tracing::warn!(
                            target = %self.settings.endpoint,
                            %error,
                            "Stopped {stopped} worker(s) of this scale-in, then could not stop {victim}; trying again at the next tick."
                        );
                        return Ok(false);
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(true)
    }
}

/// Whether `plan` still fits `cluster`: it places exactly the cluster's
/// shards, every worker it names is there, and none that is not ready is
/// to take a shard it does not own (one that went not ready since the
/// plan was made could take none: the change would wait for its timeout).
fn plan_fits(cluster: &Cluster, plan: &Assignment) -> bool {
    let planned: BTreeSet<&String> = plan.values().flatten().collect();
    let shards: BTreeSet<&String> = cluster.shards.iter().collect();
    let worker = |id: &String| cluster.workers.iter().find(|w| &w.id == id);
    // As `balance` plans: with no keeper ready, every one gets its share.
    let any_ready = plan.keys().any(|id| worker(id).is_some_and(|w| w.ready));
    planned == shards
        && plan.iter().all(|(id, shards)| {
            worker(id).is_some_and(|w| {
                w.ready || !any_ready || shards.iter().all(|s| w.shards.contains(s))
            })
        })
}

/// The assignment that places shards nobody owns, or gives shards to a
/// worker that owns none while another owns two or more (one started by a
/// scale-out that did not finish: a restart, a timeout), when one is due;
/// never while a worker is not ready (one restarting keeps its shards). An
/// uneven spread alone is left as it is: a scale-in cut short leaves its
/// victim with fewer shards, and the next decision finishes it.
fn unbalanced(cluster: &Cluster) -> Option<Assignment> {
    if !cluster.workers.iter().any(|w| w.ready) {
        return None;
    }
    let owned: BTreeSet<&String> = cluster.workers.iter().flat_map(|w| &w.shards).collect();
    let unowned = cluster.shards.iter().any(|s| !owned.contains(s));
    // Shards nobody owns go to the ready workers even while one is not
    // ready (one crash-looping released its shards: they would wait for
    // it); an idle worker waits until all are (one restarting keeps its
    // shards, and gets none).
    let all_ready = cluster.workers.iter().all(|w| w.ready);
    let idle = all_ready
        && cluster.workers.iter().any(|w| w.shards.is_empty())
        && cluster.workers.iter().any(|w| w.shards.len() >= 2);
    if !unowned && !idle {
        return None;
    }
    let keep: Vec<&str> = cluster.workers.iter().map(|w| w.id.as_str()).collect();
    let plan = balance(cluster, &keep);
    (!owns_as_planned(cluster, &plan, &[])).then_some(plan)
}

/// Whether every worker of `plan` owns exactly its planned shards and the
/// victims own none.
fn owns_as_planned(cluster: &Cluster, plan: &Assignment, victims: &[String]) -> bool {
    cluster.workers.iter().all(|w| {
        let owned: BTreeSet<&String> = w.shards.iter().collect();
        match plan.get(&w.id) {
            Some(planned) => owned == planned.iter().collect(),
            None => !victims.contains(&w.id) || owned.is_empty(),
        }
    })
}

/// A balanced assignment of every shard to the workers `keep`, moving as
/// few shards as that allows: each keeper's quota is ⌊S/K⌋ or one more
/// (the extra ones going to the workers that own the most already), each
/// keeps as many of its own shards as its quota takes, and the rest (from
/// workers that go, from over-full keepers, or owned by nobody) fill the
/// keepers below quota, all in sorted order, so the same state always gives
/// the same plan.
///
/// A keeper that is not ready keeps the shards it owns and gets no more
/// (it cannot take any): the rest are balanced over the ready keepers,
/// when there are any.
pub fn balance(cluster: &Cluster, keep: &[&str]) -> Assignment {
    let is_ready = |id: &str| cluster.workers.iter().any(|w| w.id == id && w.ready);
    let (ready, waiting): (Vec<&str>, Vec<&str>) = keep.iter().partition(|id| is_ready(id));
    if ready.is_empty() || waiting.is_empty() {
        return balance_over(cluster, keep, &BTreeSet::new());
    }
    let wanted: BTreeSet<&String> = cluster.shards.iter().collect();
    let mut held: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for w in cluster
        .workers
        .iter()
        .filter(|w| waiting.contains(&w.id.as_str()))
    {
        let own = w.shards.iter().filter(|s| wanted.contains(s)).cloned();
        held.entry(w.id.as_str()).or_default().extend(own);
    }
    let kept: BTreeSet<&String> = held.values().flatten().collect();
    let mut plan = balance_over(cluster, &ready, &kept);
    for id in waiting {
        let mut own = held.remove(id).unwrap_or_default();
        own.sort();
        own.dedup();
        plan.insert(id.to_owned(), own);
    }
    plan
}

/// [`balance`] over `keep`, leaving out the shards in `kept`.
fn balance_over(cluster: &Cluster, keep: &[&str], kept: &BTreeSet<&String>) -> Assignment {
    let mut plan: Assignment = keep.iter().map(|id| (id.to_string(), Vec::new())).collect();
    if keep.is_empty() {
        return plan;
    }
    let shards: BTreeSet<&String> = cluster
        .shards
        .iter()
        .filter(|s| !kept.contains(s))
        .collect();
    let mut owner: BTreeMap<&String, &str> = BTreeMap::new();
    for w in &cluster.workers {
        for s in &w.shards {
            if shards.contains(s) {
                owner.entry(s).or_insert(w.id.as_str());
            }
        }
    }
    let owned_count = |id: &str| owner.values().filter(|o| **o == id).count();
    let mut by_load: Vec<&str> = keep.to_vec();
    by_load.sort_by(|a, b| owned_count(b).cmp(&owned_count(a)).then(a.cmp(b)));
    let (base, extra) = (shards.len() / keep.len(), shards.len() % keep.len());
    let quota: BTreeMap<&str, usize> = by_load
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, base + usize::from(i < extra)))
        .collect();
    let mut pool: Vec<&String> = Vec::new();
    for s in &shards {
        match owner.get(s).and_then(|o| plan.get_mut(*o)) {
            Some(list) if list.len() < quota[owner[s]] => list.push((*s).clone()),
            _ => pool.push(s),
        }
    }
    let mut pool = pool.into_iter();
    for (id, list) in plan.iter_mut() {
        while list.len() < quota[id.as_str()] {
            match pool.next() {
                Some(s) => list.push(s.clone()),
                None => break,
            }
        }
    }
    plan
}

/// How many shards `plan` moves from their owners in `cluster`.
pub fn moves(cluster: &Cluster, plan: &Assignment) -> usize {
    plan.iter()
        .flat_map(|(id, shards)| shards.iter().map(move |s| (id, s)))
        .filter(|(id, s)| {
            !cluster
                .workers
                .iter()
                .any(|w| &w.id == *id && w.shards.contains(s))
        })
        .count()
}

/// The victims of a scale-in by `count`: workers not ready first, then
/// those owning the fewest shards (the least to move), then the highest id.
pub fn choose_victims(cluster: &Cluster, count: usize) -> Vec<String> {
    let mut order: Vec<&Worker> = cluster.workers.iter().collect();
    order.sort_by(|a, b| {
        a.ready
            .cmp(&b.ready)
            .then(a.shards.len().cmp(&b.shards.len()))
            .then(b.id.cmp(&a.id))
    });
    order
        .into_iter()
        .take(count)
        .map(|w| w.id.clone())
        .collect()
}

/// `{endpoint}/workers/{id}`, the id escaped as one path segment.
fn worker_url(endpoint: &str, id: &str) -> Result<url::Url, String> {
    let mut url = url::Url::parse(endpoint).map_err(|e| e.to_string())?;
    url.path_segments_mut()
        .map_err(|()| "the endpoint cannot take a path".to_owned())?
        .pop_if_empty()
        .extend(["workers", id]);
    Ok(url)
}

fn list(ids: &[String]) -> String {
    ids.join(", ")
}

#[async_trait]
impl Actuator for RebalanceActuator {
    fn kind(&self) -> &'static str {
        "rebalance"
    }

    fn target_name(&self) -> String {
        self.settings.endpoint.clone()
    }

    async fn observe(&self, now_ms: i64) -> Result<Observed, ActuatorError> {
        self.observe_while(now_ms, &|| true).await
    }

    async fn observe_while(
        &self,
        now_ms: i64,
        may_act: MayAct<'_>,
    ) -> Result<Observed, ActuatorError> {
        let mut guard = self.change.lock().await;
        if let Some(change) = guard.as_mut()
            && let Some(held) = change.held_ms.take()
        {
            change.since_ms += (now_ms - held).max(0);
        }
        let mut cluster = self.cluster().await?;
        let timeout = self.settings.timeout.as_millis() as i64;
        // Given up before another step, so that a step failing at every tick
        // (a coordinator refusing it) cannot hold the scaler for good.
        if guard
            .as_ref()
            .is_some_and(|change| now_ms - change.since_ms > timeout)
        {
            tracing::error!(
                target = %self.settings.endpoint,
                "A shard rebalance towards {} workers did not finish within {}; giving it up \
                 (no worker is stopped while it owns shards). The next tick decides afresh.",
                guard.as_ref().map_or(0, |c| c.desired),
                humantime::format_duration(self.settings.timeout)
            );
            *guard = None;
            self.gave_up_ms.store(now_ms, Ordering::Relaxed);
        }
        // For one timeout after giving a change up, no rebalance of its own
        // starts: the same plan, failing the same way, would otherwise be
        // in flight again at once and hold the scaler for good. The scaler
        // decides meanwhile (a scale-in choosing the idle worker ends it).
        let resting = now_ms.saturating_sub(self.gave_up_ms.load(Ordering::Relaxed)) <= timeout;
        if guard.is_none() && !resting && may_act() {
            // Workers started by a change that did not finish (a restart,
            // a reload, a timeout), shards nobody owns: a count that stays
            // the same never calls scale, so they are placed here.
            *guard = unbalanced(&cluster).map(|plan| Change {
                desired: cluster.workers.len() as u32,
                since_ms: now_ms,
                starting: Vec::new(),
                victims: Vec::new(),
                plan: Some(plan),
                held_ms: None,
                step_error: None,
            });
        }
        // A step that fails (the coordinator refusing a stop) leaves the
        // change in flight, saying why, and the reading of the workers
        // stands: the tick goes on (its policies asked, its `target`
        // metrics kept), and the timeout ends a step that never works.
        if let Some(change) = guard.as_mut() {
            match self.advance(change, &cluster, may_act).await {
                Ok(true) => {
                    *guard = None;
                    cluster = self.cluster().await?;
                }
                Ok(false) => change.step_error = None,
                Err(error) => {
                    tracing::warn!(
                        target = %self.settings.endpoint,
                        %error,
                        "A step of the rebalance in flight failed; trying again at the next tick."
                    );
                    change.step_error = Some(error.to_string());
                }
            }
        }
        Ok(observed(&cluster, guard.as_ref()))
    }

    async fn observe_only(&self, now_ms: i64) -> Result<Observed, ActuatorError> {
        let mut guard = self.change.lock().await;
        if let Some(change) = guard.as_mut() {
            change.held_ms.get_or_insert(now_ms);
        }
        let cluster = self.cluster().await?;
        Ok(observed(&cluster, guard.as_ref()))
    }

    async fn take_in_flight(&self) -> Option<Box<dyn std::any::Any + Send>> {
        let change = self.change.lock().await.take()?;
        Some(Box::new(change))
    }

    async fn resume_in_flight(&self, change: Box<dyn std::any::Any + Send>) {
        if let Ok(change) = change.downcast::<Change>() {
            *self.change.lock().await = Some(*change);
        }
    }

    async fn clock_jumped(&self, by_ms: i64) {
        if let Some(change) = self.change.lock().await.as_mut() {
            change.since_ms += by_ms;
            if let Some(held) = &mut change.held_ms {
                *held += by_ms;
            }
        }
        let _ = self
            .gave_up_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |at| {
                (at != i64::MIN).then(|| at.saturating_add(by_ms))
            });
    }

    async fn abandon_in_flight(&self, _now_ms: i64, _why: &str) -> Option<String> {
        let change = self.change.lock().await.take()?;
        Some(format!(
            "the rebalance to {} workers is dropped (workers started: {}; to stop: {}); the \
             coordinator's assignment stays as it is",
            change.desired,
            list_or_none(&change.starting),
            list_or_none(&change.victims)
        ))
    }

    async fn forget_in_flight(&self) {
        if let Some(change) = self.change.lock().await.take() {
            tracing::warn!(
                target = %self.settings.endpoint,
                desired = change.desired,
                "A new leadership term: the rebalance this replica started when it last led is dropped; the next tick decides afresh."
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
        _current: u32,
        desired: u32,
        may_act: MayAct<'_>,
    ) -> Result<Actuation, ActuatorError> {
        let mut guard = self.change.lock().await;
        let cluster = self.cluster().await?;
        let current = cluster.workers.len();
        let desired_n = desired as usize;
        if desired_n == 0 && !cluster.shards.is_empty() {
            return Err(ActuatorError::Failed(format!(
                "cannot stop every worker: {} shard(s) need at least one (set the scaler's min to 1 or more)",
                cluster.shards.len()
            )));
        }
        let mut change = Change {
            desired,
            since_ms: now_ms,
            starting: Vec::new(),
            victims: Vec::new(),
            plan: None,
            held_ms: None,
            step_error: None,
        };
        let started = if desired_n > current {
            let mut failure = None;
            for n in current..desired_n {
                // The first was asked for just before the call.
                if n > current && !may_act() {
                    failure = Some(ActuatorError::Failed(
                        "the tick may act no more (the lease lost, or the scaler paused)".into(),
                    ));
                    break;
                }
                match self.start_worker().await {
                    Ok(id) => change.starting.push(id),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            match failure {
                // Nothing started: nothing to follow.
                Some(e) if change.starting.is_empty() => return Err(e),
                // The ones started are followed (shards move to them); the
                // next tick decides on the rest.
                Some(e) => {
                    change.desired = (current + change.starting.len()) as u32;
                    format!(
                        "started {} of {} worker(s) ({}), then: {e}; shards move to them once \
                         they are ready",
                        change.starting.len(),
                        desired_n - current,
                        list(&change.starting)
                    )
                }
                None => format!(
                    "started {} worker(s) ({}); shards move to them once they are ready",
                    change.starting.len(),
                    list(&change.starting)
                ),
            }
        } else if desired_n < current {
            change.victims = choose_victims(&cluster, current - desired_n);
            let keep: Vec<&str> = cluster
                .workers
                .iter()
                .map(|w| w.id.as_str())
                .filter(|id| !change.victims.contains(&id.to_string()))
                .collect();
            let plan = balance(&cluster, &keep);
            let moving = moves(&cluster, &plan);
            change.plan = Some(plan);
            format!(
                "stopping {} once their shards have moved ({moving} shard(s) to move)",
                list(&change.victims)
            )
        } else {
            return Ok(Actuation::Done {
                detail: format!("already {current} workers"),
            });
        };
        if self.advance(&mut change, &cluster, may_act).await? {
            return Ok(Actuation::Done { detail: started });
        }
        *guard = Some(change);
        Ok(Actuation::Started { detail: started })
    }
}

/// The workers as `cluster` has them, with `change` in flight.
fn observed(cluster: &Cluster, change: Option<&Change>) -> Observed {
    let ready = cluster.workers.iter().filter(|w| w.ready).count();
    Observed {
        current: cluster.workers.len() as u32,
        ready: ready as u32,
        in_flight: change.map(|change| InFlight {
            desired: change.desired,
            since_ms: change.since_ms,
            detail: detail(change, cluster),
        }),
        facts: cluster.facts(),
    }
}

/// What an in-flight change is waiting for, in words.
fn detail(change: &Change, cluster: &Cluster) -> String {
    let waiting = waiting_for(change, cluster);
    match &change.step_error {
        Some(error) => format!("{waiting}; the last step failed: {error}"),
        None => waiting,
    }
}

/// What `change` waits for, its failures aside.
fn waiting_for(change: &Change, cluster: &Cluster) -> String {
    if !change.starting.is_empty() {
        return format!("waiting for {} to be ready", list(&change.starting));
    }
    let Some(plan) = &change.plan else {
        return "planning the assignment".into();
    };
    // Every shard not yet with its planned owner, the victims' included.
    let left = moves(cluster, plan);
    if change.victims.is_empty() {
        format!("moving shards: {left} still to move")
    } else {
        format!(
            "draining {}: {left} shard move(s) left before they stop",
            list(&change.victims)
        )
    }
}

/// `ids` joined, or "none".
fn list_or_none(ids: &[String]) -> String {
    if ids.is_empty() {
        "none".to_owned()
    } else {
        ids.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(workers: &[(&str, bool, &[&str])], shards: usize) -> Cluster {
        Cluster {
            shards: (0..shards).map(|i| format!("s{i:02}")).collect(),
            workers: workers
                .iter()
                .map(|(id, ready, owned)| Worker {
                    id: id.to_string(),
                    ready: *ready,
                    shards: owned.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
        }
    }

    fn counts(plan: &Assignment) -> Vec<usize> {
        plan.values().map(Vec::len).collect()
    }

    #[test]
    fn scale_out_moves_only_what_the_new_worker_needs() {
        let all: Vec<String> = (0..12).map(|i| format!("s{i:02}")).collect();
        let (a, b): (Vec<&str>, Vec<&str>) = (
            all[..6].iter().map(String::as_str).collect(),
            all[6..].iter().map(String::as_str).collect(),
        );
        let c = cluster(&[("w1", true, &a), ("w2", true, &b), ("w3", true, &[])], 12);
        let plan = balance(&c, &["w1", "w2", "w3"]);
        assert_eq!(counts(&plan), [4, 4, 4]);
        assert_eq!(moves(&c, &plan), 4, "{plan:?}");
        // Every shard exactly once.
        let mut placed: Vec<&String> = plan.values().flatten().collect();
        placed.sort();
        assert_eq!(placed, all.iter().collect::<Vec<_>>());
    }

    #[test]
    fn scale_in_moves_the_victims_shards_and_no_others() {
        let c = cluster(
            &[
                ("w1", true, &["s00", "s01", "s02"]),
                ("w2", true, &["s03", "s04", "s05"]),
                ("w3", true, &["s06", "s07", "s08"]),
            ],
            9,
        );
        let plan = balance(&c, &["w1", "w2"]);
        assert_eq!(moves(&c, &plan), 3);
        let mut sizes = counts(&plan);
        sizes.sort();
        assert_eq!(sizes, [4, 5]);
        assert!(plan["w1"].starts_with(&["s00".into(), "s01".into(), "s02".into()]));
    }

    #[test]
    fn uneven_counts_keep_the_extra_shard_where_it_is() {
        // 7 shards on 2 workers: the one owning 4 keeps them all.
        let c = cluster(
            &[
                ("w1", true, &["s00", "s01", "s02"]),
                ("w2", true, &["s03", "s04", "s05", "s06"]),
            ],
            7,
        );
        assert_eq!(moves(&c, &balance(&c, &["w1", "w2"])), 0);
    }

    #[test]
    fn orphans_and_unknown_shards_are_placed_and_dropped() {
        let c = cluster(&[("w1", true, &["s00", "zz"]), ("w2", true, &[])], 4);
        let plan = balance(&c, &["w1", "w2"]);
        assert_eq!(plan["w1"], ["s00", "s01"]);
        assert_eq!(plan["w2"], ["s02", "s03"]);
    }

    #[test]
    fn victims_are_unready_then_lightest_then_newest() {
        let c = cluster(
            &[
                ("w1", true, &["s00"]),
                ("w2", true, &["s01", "s02"]),
                ("w3", false, &["s03", "s04"]),
                ("w4", true, &["s05"]),
            ],
            6,
        );
        assert_eq!(choose_victims(&c, 1), ["w3"]);
        assert_eq!(choose_victims(&c, 3), ["w3", "w4", "w1"]);
    }

    #[test]
    fn the_plan_is_done_only_when_the_victims_own_nothing() {
        let c = cluster(&[("w1", true, &["s00", "s01"]), ("w2", true, &[])], 2);
        let victims = vec!["w1".to_string()];
        let plan = balance(&c, &["w2"]);
        assert!(!owns_as_planned(&c, &plan, &victims));
        let moved = cluster(&[("w1", true, &[]), ("w2", true, &["s00", "s01"])], 2);
        assert!(owns_as_planned(&moved, &plan, &victims));
    }

    #[test]
    fn worker_ids_are_escaped_in_paths() {
        let url = |endpoint, id| worker_url(endpoint, id).unwrap().to_string();
        assert_eq!(
            url("http://c:8080/api", "pod/w 1"),
            "http://c:8080/api/workers/pod%2Fw%201"
        );
        assert_eq!(
            url("http://c:8080/api/", "w-1_a.b~"),
            "http://c:8080/api/workers/w-1_a.b~"
        );
    }
}
