//! The target's own state as metrics (`source = "target"`).
//!
//! Each tick starts by observing the target; the scaler keeps what it saw
//! in a [`TargetHistory`] (as far back as its longest `target` metric's
//! window) and a [`TargetSource`] serves it as series: the replicas asked
//! for (`replicas`), `ready` and `unready`, and what the target's kind
//! reports besides ([`facts_of`]: shards for shard-rebalanced workers,
//! instances by lifecycle state for an Auto Scaling group, available and
//! updated replicas for a Kubernetes workload). A windowed metric has one
//! point per tick; after a restart the history is rebuilt from the journal.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;

use super::{MetricError, MetricQuery, Source};
use crate::actuators::{COMMON_FACTS, Observed, facts_of};
use crate::policy::Point;

/// The reserved source name.
pub const TARGET_SOURCE: &str = "target";

/// How much later than this tick the tick a window ago may have started
/// and still be in the window (scheduling jitter: a few ms, tens on a busy
/// host or a sped-up clock).
const JITTER_MS: i64 = 250;

/// Every name a `target` metric may ask for on a target of actuator kind
/// `kind`.
pub fn names_for(kind: &str) -> Vec<&'static str> {
    COMMON_FACTS.iter().chain(facts_of(kind)).copied().collect()
}

/// What one tick saw.
#[derive(Debug, Clone, PartialEq)]
struct Observation {
    time_ms: i64,
    replicas: u32,
    ready: u32,
    /// Read back from the journal at a restart, not seen live.
    restored: bool,
    facts: BTreeMap<String, f64>,
}

impl Observation {
    fn value(&self, name: &str) -> Option<f64> {
        match name {
            "replicas" => Some(f64::from(self.replicas)),
            "ready" => Some(f64::from(self.ready)),
            "unready" => Some(f64::from(self.replicas.saturating_sub(self.ready))),
            fact => self.facts.get(fact).copied(),
        }
    }
}

/// A scaler's observations of its target, oldest first, as far back as
/// `keep_ms` before the newest.
#[derive(Debug)]
pub struct TargetHistory {
    keep_ms: i64,
    observations: Mutex<VecDeque<Observation>>,
}

impl TargetHistory {
    /// An empty history keeping `keep_ms`.
    pub fn new(keep_ms: i64) -> Self {
        TargetHistory {
            keep_ms,
            observations: Mutex::new(VecDeque::new()),
        }
    }

    /// Adds what a tick at `time_ms` observed. Restored observations dated
    /// after it are dropped first: they came from a journal written while
    /// the clock ran ahead, and would otherwise shadow every live one until
    /// the clock caught up. Otherwise an observation not after the newest
    /// one kept replaces nothing and is dropped.
    pub fn record(&self, time_ms: i64, observed: &Observed) {
        let mut kept = self.lock();
        while kept
            .back()
            .is_some_and(|newest| newest.restored && newest.time_ms > time_ms)
        {
            kept.pop_back();
        }
        self.push_into(
            &mut kept,
            Observation {
                time_ms,
                replicas: observed.current,
                ready: observed.ready,
                restored: false,
                facts: observed.facts.clone(),
            },
        );
    }

    /// Adds a past observation, as the journal's are at a restart (see
    /// [`TargetHistory::restore_older`]).
    #[cfg(test)]
    pub fn restore(&self, time_ms: i64, replicas: u32, ready: u32, facts: BTreeMap<String, f64>) {
        self.push(Observation {
            time_ms,
            replicas,
            ready,
            restored: true,
            facts,
        });
    }

    /// Adds past observations (`(time_ms, replicas, ready, facts)` from the
    /// journal, oldest first) before the oldest one kept: what a reload
    /// that lengthens the history reads back. Those at or after the oldest
    /// kept are already here (the journal's newest may not be, yet).
    pub fn restore_older(
        &self,
        past: impl IntoIterator<Item = (i64, u32, u32, BTreeMap<String, f64>)>,
    ) {
        let mut kept = self.lock();
        let oldest = kept.front().map_or(i64::MAX, |o| o.time_ms);
        let mut merged = VecDeque::new();
        for (time_ms, replicas, ready, facts) in past {
            if time_ms < oldest
                && merged
                    .back()
                    .is_none_or(|o: &Observation| o.time_ms < time_ms)
            {
                merged.push_back(Observation {
                    time_ms,
                    replicas,
                    ready,
                    restored: true,
                    facts,
                });
            }
        }
        merged.append(&mut kept);
        self.trim(&mut merged);
        *kept = merged;
    }

    /// Takes over what `older` holds (a scaler's history across a reload).
    pub fn adopt(&self, older: &TargetHistory) {
        let older: Vec<Observation> = older.lock().iter().cloned().collect();
        for observation in older {
            self.push(observation);
        }
    }

    /// How far back it keeps, ms before the newest observation.
    pub fn keep_ms(&self) -> i64 {
        self.keep_ms
    }

    /// How many observations are kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&self, observation: Observation) {
        self.push_into(&mut self.lock(), observation);
    }

    /// [`TargetHistory::push`] with the lock held (one lock per tick).
    fn push_into(&self, kept: &mut VecDeque<Observation>, observation: Observation) {
        if kept
            .back()
            .is_some_and(|newest| newest.time_ms >= observation.time_ms)
        {
            return;
        }
        kept.push_back(observation);
        self.trim(kept);
    }

    /// Drops what is older than the history's length before its newest.
    fn trim(&self, kept: &mut VecDeque<Observation>) {
        let Some(newest) = kept.back().map(|o| o.time_ms) else {
            return;
        };
        let cutoff = newest.saturating_sub(self.keep_ms);
        while kept.front().is_some_and(|o| o.time_ms < cutoff) {
            kept.pop_front();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Observation>> {
        self.observations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One scaler's `target` metrics, served from its [`TargetHistory`].
#[derive(Debug, Clone)]
pub struct TargetSource {
    history: Arc<TargetHistory>,
}

impl TargetSource {
    /// A source over `history`.
    pub fn new(history: Arc<TargetHistory>) -> Self {
        TargetSource { history }
    }
}

#[async_trait]
impl Source for TargetSource {
    async fn fetch(&self, query: &MetricQuery, now_ms: i64) -> Result<Vec<Point>, MetricError> {
        let kept = self.history.lock();
        let name = query.query.as_str();
        let newest = kept.iter().rev().find(|o| o.time_ms <= now_ms);
        let Some(newest) = newest else {
            return Err(MetricError::Empty);
        };
        if newest.value(name).is_none() {
            let reported: Vec<&str> = COMMON_FACTS
                .iter()
                .copied()
                .chain(newest.facts.keys().map(String::as_str))
                .collect();
            return Err(MetricError::Other(format!(
                "the target did not report {name:?} (it reported {})",
                reported.join(", ")
            )));
        }
        let point = |o: &Observation| {
            o.value(name).map(|value| Point {
                timestamp_ms: o.time_ms,
                value,
            })
        };
        Ok(match query.window_ms {
            None => point(newest).into_iter().collect(),
            Some(window_ms) => {
                // Ticks start a few ms late, each by its own: the tick a
                // window ago counts when it woke later than this one (a
                // window of whole ticks has the same number of points
                // whatever their jitter, as a range query's grid has). A
                // quarter step at most: the tick before it would have to
                // have been three quarters of a step later than this one.
                let slack = (query.step_ms / 4).clamp(0, JITTER_MS);
                let start = now_ms.saturating_sub(window_ms).saturating_sub(slack);
                kept.iter()
                    .filter(|o| o.time_ms >= start && o.time_ms <= now_ms)
                    .filter_map(point)
                    .collect()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(current: u32, ready: u32, shards: Option<f64>) -> Observed {
        let mut o = Observed::new(current, ready, None);
        if let Some(shards) = shards {
            o.facts.insert("shards".into(), shards);
        }
        o
    }

    fn query(name: &str, window_ms: Option<i64>) -> MetricQuery {
        MetricQuery {
            query: name.into(),
            window_ms,
            step_ms: 15_000,
        }
    }

    /// Observations restored from a journal dated ahead of the clock (it
    /// ran ahead before a restart) give way to the live ones: the live
    /// value is served at once, not the old restored one for hours.
    #[tokio::test]
    async fn a_live_observation_replaces_those_dated_after_it() {
        let history = Arc::new(TargetHistory::new(3_600_000));
        let source = TargetSource::new(history.clone());
        history.restore(100_000, 2, 2, BTreeMap::new());
        history.restore(2_000_000, 9, 9, BTreeMap::new());
        history.record(200_000, &observed(5, 4, None));
        let latest = source
            .fetch(&query("replicas", None), 200_000)
            .await
            .unwrap();
        assert_eq!(latest, vec![Point::from((200_000, 5.0))]);
        assert_eq!(history.len(), 2, "the future-dated one is gone");
        // Restored (or adopted) ones older than what is kept are dropped
        // as before; a live one at the same time leaves the first.
        history.restore(150_000, 7, 7, BTreeMap::new());
        history.record(200_000, &observed(6, 6, None));
        let latest = source
            .fetch(&query("replicas", None), 200_000)
            .await
            .unwrap();
        assert_eq!(latest, vec![Point::from((200_000, 5.0))]);
    }

    #[tokio::test]
    async fn each_tick_is_a_point_and_the_window_bounds_the_series() {
        let history = Arc::new(TargetHistory::new(60_000));
        let source = TargetSource::new(history.clone());
        for (i, (current, ready)) in [(2, 2), (4, 2), (4, 3), (4, 4), (3, 3)].iter().enumerate() {
            history.record(i as i64 * 15_000, &observed(*current, *ready, Some(12.0)));
        }
        let now = 60_000;
        let latest = source.fetch(&query("unready", None), now).await.unwrap();
        assert_eq!(latest, vec![Point::from((60_000, 0.0))]);
        let series = source
            .fetch(&query("unready", Some(30_000)), now)
            .await
            .unwrap();
        assert_eq!(
            series,
            vec![
                Point::from((30_000, 1.0)),
                Point::from((45_000, 0.0)),
                Point::from((60_000, 0.0))
            ]
        );
        // Asked about an earlier time, the series ends there.
        let then = source
            .fetch(&query("replicas", None), 20_000)
            .await
            .unwrap();
        assert_eq!(then, vec![Point::from((15_000, 4.0))]);
        let shards = source.fetch(&query("shards", None), now).await.unwrap();
        assert_eq!(shards, vec![Point::from((60_000, 12.0))]);
    }

    /// A window of whole ticks holds as many points whatever each tick's
    /// few ms of lateness: here the tick a minute ago woke 3 ms late and
    /// this one 5 ms late, and it still counts.
    #[tokio::test]
    async fn a_window_of_whole_ticks_holds_them_whatever_their_jitter() {
        let history = Arc::new(TargetHistory::new(600_000));
        let source = TargetSource::new(history.clone());
        for t in [3, 15_001, 30_000, 45_002, 60_005] {
            history.record(t, &observed(2, 2, None));
        }
        let series = source
            .fetch(&query("ready", Some(60_000)), 60_005)
            .await
            .unwrap();
        assert_eq!(series.len(), 5, "{series:?}");
        // Not a tick more: the one before is a whole step out (and kept).
        history.record(75_004, &observed(2, 2, None));
        let series = source
            .fetch(&query("ready", Some(60_000)), 75_004)
            .await
            .unwrap();
        assert_eq!(series.first().map(|p| p.timestamp_ms), Some(15_001));
        // Every second, a tick 600 ms late a window ago stays out.
        let history = Arc::new(TargetHistory::new(60_000));
        let source = TargetSource::new(history.clone());
        history.record(-400, &observed(2, 2, None));
        for t in (0..=10_000).step_by(1_000) {
            history.record(t, &observed(2, 2, None));
        }
        let mut second = query("ready", Some(10_000));
        second.step_ms = 1_000;
        let series = source.fetch(&second, 10_000).await.unwrap();
        assert_eq!(series.len(), 11, "{series:?}");
    }

    /// A reload that lengthens the history reads older observations back
    /// from the journal before those kept; the ones kept stay.
    #[test]
    fn older_observations_go_before_those_kept() {
        let history = TargetHistory::new(60_000);
        history.record(45_000, &observed(5, 5, None));
        history.record(60_000, &observed(6, 6, None));
        let past = [0, 15_000, 30_000, 45_000, 60_000].map(|t| (t, 1, 1, BTreeMap::new()));
        history.restore_older(past);
        let kept: Vec<(i64, u32)> = history
            .lock()
            .iter()
            .map(|o| (o.time_ms, o.replicas))
            .collect();
        assert_eq!(
            kept,
            [(0, 1), (15_000, 1), (30_000, 1), (45_000, 5), (60_000, 6)]
        );
        // Trimmed to what it keeps, from the newest.
        let short = TargetHistory::new(20_000);
        short.restore_older([0, 15_000, 30_000].map(|t| (t, 1, 1, BTreeMap::new())));
        assert_eq!(short.len(), 2);
    }

    #[tokio::test]
    async fn history_is_kept_as_long_as_asked_and_survives_a_reload() {
        let history = TargetHistory::new(30_000);
        for t in 0..10 {
            history.record(t * 15_000, &observed(1, 1, None));
        }
        // 135 s is the newest: 105, 120 and 135 are within 30 s of it.
        assert_eq!(history.len(), 3);
        // A tick that is not newer is dropped.
        history.record(120_000, &observed(9, 9, None));
        assert_eq!(history.len(), 3);
        let reloaded = Arc::new(TargetHistory::new(60_000));
        reloaded.adopt(&history);
        assert_eq!(reloaded.len(), 3);
        let source = TargetSource::new(reloaded);
        let ready = source
            .fetch(&query("ready", Some(60_000)), 135_000)
            .await
            .unwrap();
        assert_eq!(ready.len(), 3);
    }

    #[tokio::test]
    async fn a_fact_the_target_did_not_report_and_an_empty_history_are_errors() {
        let history = Arc::new(TargetHistory::new(60_000));
        let source = TargetSource::new(history.clone());
        assert_eq!(
            source.fetch(&query("ready", None), 0).await,
            Err(MetricError::Empty)
        );
        history.record(0, &observed(1, 1, None));
        let err = source.fetch(&query("shards", None), 0).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "the target did not report \"shards\" (it reported replicas, ready, unready)"
        );
        assert_eq!(
            names_for("rebalance"),
            [
                "replicas",
                "ready",
                "unready",
                "shards",
                "unassigned_shards",
                "max_shards_per_worker"
            ]
        );
    }
}
