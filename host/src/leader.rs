//! Leader election: several replicas of the daemon, one acting.
//!
//! Run as a service with more than one replica (for availability), every
//! replica would otherwise scale the same targets. With `[leader_election]`
//! the replicas share a Kubernetes Lease (`coordination.k8s.io/v1`), as
//! Kubernetes' own controllers do: the holder renews it every
//! `retry_period`; the others try to take it every `retry_period` and may
//! once it has gone unrenewed for `lease_duration`, as measured on their own
//! clock from when they last saw it change (so clock skew between machines
//! does not matter). Every write carries the Lease's `resourceVersion`, so
//! of two replicas racing for it exactly one wins.
//!
//! Only the leader ticks its scalers; the others serve the API and keep
//! their policies loaded, ready to take over. A leader that cannot renew
//! for `renew_deadline` (shorter than `lease_duration`) stops acting before
//! any other replica may start. A leader that shuts down releases the Lease,
//! so another takes over at its next try instead of a lease duration later.
//!
//! A new leader's journal lacks what the leader before it recommended and
//! changed lately. Like the HPA's controller after a failover, it begins
//! each scaler's envelope history again at the scaler's first tick of the
//! new term ([`Leadership::term`]): the count found counts as recommended,
//! so nothing scales down within the scale-down window of a takeover.
//! Cooldowns start from its own records.
//!
//! Pause flags are the exception: an operator who paused a scaler through
//! the leader's API during an incident must not see it resume because the
//! leader died. The leader records every pause and resume in the Lease's
//! [`PAUSES_ANNOTATION`] before it answers, and a replica that takes the
//! Lease applies those flags before its scalers first tick.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

use crate::config::LeaderElectionConfig;

/// The Lease annotation that carries the scalers' pause flags from one
/// leader to the next: a JSON object of scaler name to `true` (paused) or
/// `false` (resumed), for every scaler paused or resumed while some replica
/// led.
pub const PAUSES_ANNOTATION: &str = "scalewise.dev/pauses";

/// Scaler name to pause flag, as the Lease carries them.
pub type Pauses = BTreeMap<String, bool>;

/// What a replica runs when it takes the Lease, before it acts: applies the
/// pause flags the Lease carries.
pub type TakeoverHook = Arc<dyn Fn(Pauses) -> BoxFuture<'static, ()> + Send + Sync>;

/// How many times a pause is retried when the Lease changes under it (a
/// renewal between the read and the write).
const RECORD_TRIES: usize = 5;

/// The Lease this replica takes part in, for writes besides the election's.
#[derive(Clone)]
struct LeaseRef {
    api: Api<Lease>,
    name: String,
    identity: String,
}

impl std::fmt::Debug for LeaseRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseRef")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .finish()
    }
}

/// Why a pause flag was not recorded in the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// This replica does not hold the Lease (its holder, if any).
    NotLeader(Option<String>),
    /// The API server did not take the write.
    Failed(String),
}

/// Whether this replica may act. Cheap to clone and to ask.
#[derive(Debug, Clone)]
pub struct Leadership {
    /// Whether this replica takes part in an election at all.
    elected: bool,
    leading: Arc<AtomicBool>,
    /// The Lease's holder as this replica last saw it (elected replicas).
    leader: Arc<Mutex<Option<String>>>,
    /// The Lease, once an [`Elector`] runs for this replica.
    lease: Arc<OnceLock<LeaseRef>>,
    /// How many times this replica has become the leader.
    terms: Arc<AtomicU64>,
    /// The last term that began by taking the Lease (from another holder,
    /// released, deleted or new) rather than renewing this process's own
    /// after its deadline had passed; 0 for none.
    taken_term: Arc<AtomicU64>,
    /// Until when an elected leader may act: its renew deadline, counted
    /// from when the last renewal was sent. Past it the replica stops
    /// acting whatever the next try says, however late that comes (an API
    /// server that answered slowly, a try that failed just before it). The
    /// monotonic clock stands still in a suspend, so a leader that wakes
    /// from one would still be within it: the deadline is also kept by the
    /// wall clock (a tick that was under way when the host slept must not
    /// act when it wakes, before the daemon's clock sees the jump; nor a
    /// renewal sent before the sleep and answered after it count from
    /// then), and the daemon's clock ends it when it sees the wall clock
    /// jump ([`Leadership::clock_jumped`]).
    acting_until: Arc<Mutex<Option<(Instant, SystemTime)>>>,
    /// Mirrors `leading` for the host's metrics, when given.
    gauge: Option<Gauge>,
}

impl Leadership {
    /// A replica that always acts (no leader election configured).
    pub fn always() -> Leadership {
        Leadership {
            elected: false,
            leading: Arc::new(AtomicBool::new(true)),
            leader: Arc::default(),
            lease: Arc::default(),
            terms: Arc::default(),
            taken_term: Arc::default(),
            acting_until: Arc::default(),
            gauge: None,
        }
    }

    /// A replica that acts only once it is elected.
    pub fn elected() -> Leadership {
        Leadership {
            elected: true,
            leading: Arc::new(AtomicBool::new(false)),
            leader: Arc::default(),
            lease: Arc::default(),
            terms: Arc::default(),
            taken_term: Arc::default(),
            acting_until: Arc::default(),
            gauge: None,
        }
    }

    /// Whether leader election is on for this replica.
    pub fn is_elected(&self) -> bool {
        self.elected
    }

    /// Who holds the Lease, as this replica last saw it: `None` before the
    /// first look, or without leader election.
    pub fn leader(&self) -> Option<String> {
        self.leader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records `scaler`'s pause flag in the Lease, where the replica that
    /// leads next reads it; entries for scalers `known` no longer names are
    /// dropped on the way. Nothing to do without leader election. Refused
    /// when this replica does not hold the Lease.
    pub async fn record_pause(
        &self,
        scaler: &str,
        paused: bool,
        known: impl Fn(&str) -> bool,
    ) -> Result<(), RecordError> {
        let Some(lease) = self.lease.get() else {
            return Ok(());
        };
        let name = &lease.name;
        for _ in 0..RECORD_TRIES {
            let current = lease
                .api
                .get_opt(name)
                .await
                .map_err(|e| RecordError::Failed(format!("reading lease {name}: {e}")))?;
            let Some(mut current) = current else {
                return Err(RecordError::NotLeader(None));
            };
            let holder = current
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty());
            if holder.as_deref() != Some(lease.identity.as_str()) {
                return Err(RecordError::NotLeader(holder));
            }
            let mut pauses = pauses_of(&current, name);
            pauses.retain(|scaler, _| known(scaler));
            pauses.insert(scaler.to_owned(), paused);
            let text = serde_json::to_string(&pauses).unwrap_or_default();
            current
                .metadata
                .annotations
                .get_or_insert_default()
                .insert(PAUSES_ANNOTATION.to_owned(), text);
            match lease
                .api
                .replace(name, &PostParams::default(), &current)
                .await
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(RecordError::Failed(format!("updating lease {name}: {e}"))),
            }
        }
        Err(RecordError::Failed(format!(
            "lease {name} changed under this replica {RECORD_TRIES} times in a row"
        )))
    }

    fn saw_leader(&self, holder: &str) {
        let mut leader = self.leader.lock().unwrap_or_else(PoisonError::into_inner);
        if leader.as_deref() != Some(holder) {
            *leader = Some(holder.to_owned());
        }
    }

    /// Reports the state to `gauge` (1 acting, 0 following) from now on.
    pub fn reported_to(mut self, gauge: Gauge) -> Leadership {
        gauge.set(i64::from(self.is_leading()));
        self.gauge = Some(gauge);
        self
    }

    /// Whether this replica acts now: it leads, and (elected) its renew
    /// deadline has not passed.
    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::Acquire)
            && (!self.elected
                || self
                    .acting_until
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_none_or(|(until, wall)| Instant::now() < until && SystemTime::now() < wall))
    }

    /// The wall clock jumped ahead of the monotonic one (a suspend, the
    /// clock set): others may have taken the Lease meanwhile, so an elected
    /// leader stops acting until its next renewal says it still holds it.
    pub fn clock_jumped(&self) {
        if self.elected {
            self.act_until(Instant::now(), SystemTime::now());
        }
    }

    /// Sets when an elected leader's renew deadline passes.
    fn act_until(&self, until: Instant, wall: SystemTime) {
        *self
            .acting_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((until, wall));
    }

    /// How many times this replica has become the leader (0 before the
    /// first time, and always without leader election). A scaler that sees
    /// it change starts its envelope's history again
    /// ([`EnvelopeState::reseed`](crate::envelope::EnvelopeState::reseed)).
    pub fn term(&self) -> u64 {
        self.terms.load(Ordering::Acquire)
    }

    /// The last term that began by taking the Lease rather than renewing
    /// this process's own (0: none): after it, another replica may have
    /// led since this one last did.
    pub fn last_taken_term(&self) -> u64 {
        self.taken_term.load(Ordering::Acquire)
    }

    fn set(&self, leading: bool) -> bool {
        if let Some(gauge) = &self.gauge {
            gauge.set(i64::from(leading));
        }
        // The term is counted before `leading` is set, so a scaler that
        // sees this replica leading sees the term it leads in.
        if leading && !self.leading.load(Ordering::Acquire) {
            self.terms.fetch_add(1, Ordering::AcqRel);
        }
        self.leading.swap(leading, Ordering::AcqRel)
    }
}

/// When `lease` says it was last renewed.
fn renew_time(lease: &Lease) -> Option<Timestamp> {
    lease.spec.as_ref()?.renew_time.as_ref().map(|t| t.0)
}

/// This replica's default name in the Lease: `POD_NAME` (set from the
/// downward API), else the host's name, with the process id.
pub fn default_identity() -> String {
    format!("{}-{}", host_name(), std::process::id())
}

/// `POD_NAME` (set from the downward API), else the host's name (the
/// kernel's, as `HOSTNAME` is seldom exported to a daemon's environment).
pub fn host_name() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "scalewise".into())
}

/// The pause flags `lease` carries; none when it carries none, or carries
/// something unreadable (logged: the flags then start afresh).
fn pauses_of(lease: &Lease, name: &str) -> Pauses {
    parse_pauses(pauses_text(lease), name)
}

/// The Lease's [`PAUSES_ANNOTATION`], as text.
fn pauses_text(lease: &Lease) -> Option<&str> {
    lease
        .metadata
        .annotations
        .as_ref()?
        .get(PAUSES_ANNOTATION)
        .map(String::as_str)
}

/// [`pauses_of`] on the annotation's text.
fn parse_pauses(text: Option<&str>, name: &str) -> Pauses {
    let Some(text) = text else {
        return Pauses::new();
    };
    serde_json::from_str(text).unwrap_or_else(|e| {
        tracing::warn!(
            lease = %name,
            "The lease's {PAUSES_ANNOTATION} annotation is not a JSON object of scaler names \
             to true or false ({e}); its pause flags are ignored."
        );
        Pauses::new()
    })
}

/// The Lease as last seen, and when this replica saw it change.
struct Seen {
    holder: Option<String>,
    renewed: Option<Timestamp>,
    at: Instant,
}

/// One replica's part in the election.
pub struct Elector {
    settings: LeaderElectionConfig,
    identity: String,
    api: Api<Lease>,
    leadership: Leadership,
    seen: Option<Seen>,
    /// When this replica last renewed (or took) the Lease.
    renewed_at: Option<Instant>,
    /// Run on taking the Lease, before acting.
    takeover: Option<TakeoverHook>,
    /// The Lease's pause flags (the annotation's text) as the last try
    /// read them; parsed only on taking the Lease, or when they change
    /// while this replica follows.
    pauses: Option<String>,
    /// The pause flags last handed to the hook while following.
    followed: Option<String>,
    /// The last try took the Lease from another holder (or created it, or
    /// took it released), rather than renewing it.
    acquired: bool,
    /// The `renewTime` of this process's last write of the Lease, as the
    /// server keeps it: a Lease held under this replica's identity is
    /// this process's only with it (another process under the same name
    /// -- an identity set in a config the replicas share, a pod back
    /// under its name while its old self still runs -- is another
    /// replica; so is this process's earlier run).
    written: Option<Timestamp>,
    /// The `renewTime` of this process's last write sent, answered or not:
    /// a renewal the server applied whose answer was lost (a timeout, a
    /// connection reset) is this process's all the same.
    sent: Option<Timestamp>,
    /// Whether the write `sent` took the Lease (created it, or took it
    /// from another holder) rather than renewed it: a take whose answer
    /// was lost is still a take.
    sent_takes: bool,
}

/// One try's result, or a conflict with a write of this replica's own (a
/// pause recorded between the read and the renewal), worth one more try.
enum Try {
    Done(Outcome),
    OwnConflict,
}

/// What one try found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// This replica holds the Lease.
    Leading,
    /// Another replica (named) holds it.
    Following(String),
    /// The try failed or lost a race; the state is unchanged.
    Failed(String),
}

impl Elector {
    /// An elector for `settings` on `client`, publishing to `leadership`.
    pub fn new(
        settings: LeaderElectionConfig,
        client: kube::Client,
        leadership: Leadership,
    ) -> Elector {
        let api = match &settings.namespace {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::default_namespaced(client),
        };
        let identity = settings.identity.clone().unwrap_or_else(default_identity);
        let _ = leadership.lease.set(LeaseRef {
            api: api.clone(),
            name: settings.lease.clone(),
            identity: identity.clone(),
        });
        Elector {
            settings,
            identity,
            api,
            leadership,
            seen: None,
            renewed_at: None,
            takeover: None,
            pauses: None,
            followed: None,
            acquired: false,
            written: None,
            sent: None,
            sent_takes: false,
        }
    }

    /// Runs `hook` with the Lease's pause flags whenever this replica takes
    /// the Lease, before it starts acting, and while it follows whenever
    /// they change.
    pub fn on_takeover(&mut self, hook: TakeoverHook) {
        self.takeover = Some(hook);
    }

    /// This replica's name in the Lease.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The Lease's duration in whole seconds, rounded up: followers wait
    /// at least `lease_duration` (rounded down, 1.5s would let them take
    /// it after 1s, no later than this leader's own renew deadline).
    fn lease_seconds(&self) -> i32 {
        let d = self.settings.lease_duration;
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        secs.clamp(1, i32::MAX as u64) as i32
    }

    /// The Lease as this process writes it, its renewTime kept as sent
    /// ([`Elector::sent`]).
    fn spec_taking(
        &mut self,
        acquired: Option<MicroTime>,
        transitions: i32,
        takes: bool,
    ) -> LeaseSpec {
        self.sent_takes = takes;
        // To the microsecond, as the server keeps it.
        let now = Timestamp::from_microsecond(Timestamp::now().as_microsecond())
            .unwrap_or_else(|_| Timestamp::now());
        self.sent = Some(now);
        let now = MicroTime(now);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_seconds()),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One try to take or renew the Lease; updates the published state.
    pub async fn try_once(&mut self) -> Outcome {
        // An API server that takes the request and never answers must not
        // keep a leader acting past its renew deadline (another replica may
        // take the Lease a lease duration after the last renewal): the try
        // is cut short when the deadline comes, as client-go's renewal is.
        let limit = match self.renewed_at {
            Some(at) => {
                (at + self.settings.renew_deadline).saturating_duration_since(Instant::now())
            }
            None => self.settings.renew_deadline,
        };
        // A renewal counts from when it was sent: followers count a lease
        // duration from when they see it written, which is no earlier.
        let (sent, sent_wall) = (Instant::now(), SystemTime::now());
        let outcome = match tokio::time::timeout(limit, self.attempt()).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Failed(format!(
                "the API server did not answer in {}",
                humantime::format_duration(limit)
            )),
        };
        match &outcome {
            Outcome::Leading => self.leadership.saw_leader(&self.identity),
            Outcome::Following(holder) => self.leadership.saw_leader(holder),
            Outcome::Failed(_) => {}
        }
        let now = Instant::now();
        let leading = match &outcome {
            Outcome::Leading => {
                self.renewed_at = Some(sent);
                self.leadership.act_until(
                    sent + self.settings.renew_deadline,
                    sent_wall + self.settings.renew_deadline,
                );
                true
            }
            Outcome::Following(_) => false,
            // Keep acting through a failed renewal, until the deadline.
            Outcome::Failed(_) => self
                .renewed_at
                .is_some_and(|at| now.duration_since(at) < self.settings.renew_deadline),
        };
        if !leading {
            self.renewed_at = None;
        }
        // Taken from another holder, or a Lease released or deleted, while
        // this replica still counted itself the leader (it made no try for
        // longer than a lease: a suspend, a stall): a new term, as after
        // any takeover. Its scalers' envelopes seed again, the pause flags
        // the Lease carries apply, and a tick of the term before makes no
        // change (another replica led in between).
        if leading && self.acquired && self.leadership.leading.load(Ordering::Acquire) {
            self.leadership.set(false);
        }
        if leading {
            // What a follower applied is not what the Lease says by the
            // next time this replica follows.
            self.followed = None;
        }
        if leading
            && !self.leadership.leading.load(Ordering::Acquire)
            && let Some(hook) = &self.takeover
        {
            let pauses = parse_pauses(self.pauses.as_deref(), &self.settings.lease);
            hook(pauses).await;
        }
        // A follower keeps its pause flags as the leader records them, so
        // that its API and `scaler_paused` say what the leader does (they
        // would otherwise keep what this replica last set, long after a
        // later leader changed it); taking over applies them anyway.
        if let Outcome::Following(_) = &outcome
            && self.pauses != self.followed
            && let Some(hook) = &self.takeover
        {
            let pauses = parse_pauses(self.pauses.as_deref(), &self.settings.lease);
            hook(pauses).await;
            self.followed = self.pauses.clone();
        }
        if leading && self.acquired && !self.leadership.leading.load(Ordering::Acquire) {
            // The term `set` is about to begin.
            let term = self.leadership.terms.load(Ordering::Acquire) + 1;
            self.leadership.taken_term.store(term, Ordering::Release);
        }
        let was = self.leadership.set(leading);
        let lease = &self.settings.lease;
        match (was, leading, &outcome) {
            (false, true, _) => tracing::info!(
                identity = %self.identity, %lease,
                "This replica is the leader now: its scalers act."
            ),
            (true, false, Outcome::Failed(why)) => tracing::error!(
                identity = %self.identity, %lease,
                "This replica could not renew the lease for {} ({why}); it stops acting.",
                humantime::format_duration(self.settings.renew_deadline)
            ),
            (true, false, _) => tracing::warn!(
                identity = %self.identity, %lease,
                "This replica lost the lease; it stops acting."
            ),
            (_, _, Outcome::Failed(why)) => tracing::warn!(
                identity = %self.identity, %lease, "Leader election: {why}"
            ),
            _ => {}
        }
        outcome
    }

    async fn attempt(&mut self) -> Outcome {
        match self.attempt_once().await {
            Try::Done(outcome) => outcome,
            Try::OwnConflict => match self.attempt_once().await {
                Try::Done(outcome) => outcome,
                Try::OwnConflict => Outcome::Failed(format!(
                    "lease {} changed under this replica",
                    self.settings.lease
                )),
            },
        }
    }

    async fn attempt_once(&mut self) -> Try {
        self.acquired = false;
        let name = self.settings.lease.clone();
        let current = match self.api.get_opt(&name).await {
            Ok(lease) => lease,
            Err(e) => return Try::Done(Outcome::Failed(format!("reading lease {name}: {e}"))),
        };
        let Some(mut lease) = current else {
            self.pauses = None;
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec_taking(None, 0, true)),
            };
            return Try::Done(
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(created) => {
                        self.written = renew_time(&created);
                        self.acquired = true;
                        Outcome::Leading
                    }
                    Err(e) => Outcome::Failed(format!("creating lease {name}: {e}")),
                },
            );
        };
        self.pauses = pauses_text(&lease).map(str::to_owned);
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let renewed = spec.renew_time.as_ref().map(|t| t.0);
        let now = Instant::now();
        let changed = self
            .seen
            .as_ref()
            .is_none_or(|s| s.holder != holder || s.renewed != renewed);
        if changed {
            self.seen = Some(Seen {
                holder: holder.clone(),
                renewed,
                at: now,
            });
        }
        let named_mine = holder.as_deref() == Some(self.identity.as_str());
        let ours = |t: &Option<Timestamp>| t.is_some() && renewed == *t;
        let mine = named_mine && (ours(&self.written) || ours(&self.sent));
        // This process's last write took the Lease and was applied, its
        // answer lost: renewing it now completes that take.
        let taken_unanswered =
            named_mine && !ours(&self.written) && ours(&self.sent) && self.sent_takes;
        if named_mine && !mine && changed {
            tracing::warn!(
                identity = %self.identity,
                "The Lease is held under this replica's identity by another process (another \
                 replica given the same identity, or this one's earlier run that did not release \
                 it): two replicas under one name would both lead; this one follows until the \
                 Lease goes unrenewed. Give each replica its own [leader_election] identity."
            );
        }
        let duration = spec
            .lease_duration_seconds
            .map_or(self.settings.lease_duration, |s| {
                Duration::from_secs(s.max(0) as u64)
            });
        let expired = self
            .seen
            .as_ref()
            .is_some_and(|s| now.duration_since(s.at) >= duration);
        if let Some(other) = holder.as_ref().filter(|_| !mine && !expired) {
            return Try::Done(Outcome::Following(other.clone()));
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine {
            spec.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(self.spec_taking(acquired, transitions, !mine));
        Try::Done(
            match self
                .api
                .replace(&name, &PostParams::default(), &lease)
                .await
            {
                Ok(replaced) => {
                    self.written = renew_time(&replaced);
                    self.acquired = !mine || taken_unanswered;
                    Outcome::Leading
                }
                Err(kube::Error::Api(e)) if e.code == 409 => match holder {
                    Some(h) if !mine => Outcome::Following(h),
                    _ => return Try::OwnConflict,
                },
                Err(e) => Outcome::Failed(format!("updating lease {name}: {e}")),
            },
        )
    }

    /// Gives the Lease up if this replica holds it, so another may take it
    /// at its next try (a graceful shutdown).
    pub async fn release(&mut self) {
        if !self.leadership.set(false) {
            return;
        }
        let name = self.settings.lease.clone();
        let Ok(Some(mut lease)) = self.api.get_opt(&name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str())
            || !(spec.renew_time.as_ref().map(|t| t.0) == self.written
                || spec.renew_time.as_ref().map(|t| t.0) == self.sent)
        {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                tracing::info!(identity = %self.identity, lease = %name, "Released the lease.")
            }
            Err(e) => {
                tracing::warn!(identity = %self.identity, lease = %name, "Could not release the lease: {e}")
            }
        }
    }

    /// Tries every `retry_period` until `stop` is cancelled, then releases.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            self.try_once().await;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(self.settings.retry_period) => {}
            }
        }
        self.release().await;
    }
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("lease", &self.settings.lease)
            .field("identity", &self.identity)
            .field("leading", &self.leadership.is_leading())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The renew deadline holds by the wall clock too: after a suspend the
    /// monotonic deadline has not passed (that clock stood still), the wall
    /// clock's has, and the leader stops acting before anything tells it
    /// the clock jumped.
    #[test]
    fn a_renew_deadline_passed_by_the_wall_clock_ends_acting() {
        let leadership = Leadership::elected();
        leadership.set(true);
        let ahead = Instant::now() + Duration::from_secs(10);
        leadership.act_until(ahead, SystemTime::now() + Duration::from_secs(10));
        assert!(leadership.is_leading());
        leadership.act_until(ahead, SystemTime::now() - Duration::from_secs(1));
        assert!(!leadership.is_leading(), "past by the wall clock");
    }
}
