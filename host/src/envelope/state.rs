//! What the envelope remembers between ticks: recent recommendations (for
//! the stabilisation windows) and recent scale events (for rate limits,
//! cooldowns and the policies' context).
//!
//! Plain data with serde, so the host can show it and rebuild it from the
//! journal after a restart ([`EnvelopeState::restore`]).

use serde::{Deserialize, Serialize};

use crate::policy::ScaleEvent;

/// Scale events are kept at least this long: the control loop gives
/// policies the last hour of events in their context.
pub const EVENT_RETENTION_MS: i64 = 3_600_000;

/// A backstop against a stalled clock: time-based pruning keeps the history
/// as short as the longest window, but if the clock stops advancing nothing
/// ever ages out. Past this many entries the oldest are dropped.
pub const MAX_HISTORY: usize = 10_000;

/// One tick's recommendation: the replica count the policies asked for,
/// after the missing-metrics rule, before stabilisation and rate limits
/// (what upstream HPA keeps as `timestampedRecommendation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recommendation {
    /// When, in ms since the Unix epoch.
    pub time_ms: i64,
    /// Replicas recommended.
    pub replicas: u32,
}

/// The envelope's memory of one scaler.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeState {
    /// Recent recommendations, in the order they were recorded.
    recommendations: Vec<Recommendation>,
    /// Recent changes the host made to the target, in the order they were made.
    events: Vec<ScaleEvent>,
    /// Whether the history has begun: upstream HPA seeds a new autoscaler's
    /// recommendations with the current count (`recordInitialRecommendation`),
    /// so a new scaler does not scale down within its first scale-down
    /// window; [`apply`](super::apply) does the same on a scaler's first tick,
    /// and on the first tick after a restart whose restored history has
    /// aged out of its scale-down window.
    #[serde(default)]
    seeded: bool,
    /// Seed again at the next tick even though there is history: set when
    /// this replica takes over from another leader ([`reseed`](Self::reseed)).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    reseeding: bool,
}

impl EnvelopeState {
    /// A scaler with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the state from the journal at restart: each tick's
    /// `(time_ms, recommendation)` and each change the actuator made, both
    /// oldest first. Feeding a scaler's journaled ticks gives the same
    /// verdicts as the state that lived through them when the caller also
    /// feeds, first, a new scaler's initial recommendation (its count at its
    /// first tick, as upstream HPA seeds it), which is not a column of the
    /// journal: the scaler's restore does, from its first journaled tick.
    ///
    /// The first tick after the restore seeds the history with the count it
    /// finds only if nothing restored is still within the scale-down window
    /// then (the daemon was down longer than it): as HPA's controller does when it
    /// starts, so a restart after a long outage does not scale down at once
    /// on an empty window.
    pub fn restore(
        recommendations: impl IntoIterator<Item = (i64, u32)>,
        events: impl IntoIterator<Item = ScaleEvent>,
    ) -> Self {
        let mut state = Self::new();
        for (time_ms, replicas) in recommendations {
            state.record_recommendation(time_ms, replicas);
        }
        for event in events {
            state.record_scale(event.timestamp_ms, event.from, event.to);
        }
        state
    }

    /// Records that the actuator changed the target from `from` to `to`
    /// replicas at `time_ms`. Call it only when the target really changed
    /// (not in dry-run): rate limits and cooldowns count these events.
    pub fn record_scale(&mut self, time_ms: i64, from: u32, to: u32) {
        if from == to {
            return;
        }
        self.events.push(ScaleEvent {
            timestamp_ms: time_ms,
            from,
            to,
        });
        cap(&mut self.events);
    }

    /// Recent scale events, in the order they were made (at least the last
    /// hour's, once [`apply`](super::apply) has pruned).
    pub fn events(&self) -> &[ScaleEvent] {
        &self.events
    }

    /// Scale events at or after `since_ms`, in the order they were made
    /// (the policy context gets the last hour).
    pub fn events_since(&self, since_ms: i64) -> impl Iterator<Item = &ScaleEvent> + '_ {
        self.events
            .iter()
            .filter(move |event| event.timestamp_ms >= since_ms)
    }

    /// The most recent scale event (by time), if any is remembered.
    pub fn last_event(&self) -> Option<&ScaleEvent> {
        self.events.iter().max_by_key(|event| event.timestamp_ms)
    }

    /// Recent recommendations, in the order they were recorded.
    pub fn recommendations(&self) -> &[Recommendation] {
        &self.recommendations
    }

    /// This state as one whose history has begun (no initial
    /// recommendation to seed): for tests of the rules alone, as upstream
    /// tests them.
    #[cfg(test)]
    pub(crate) fn begun(mut self) -> Self {
        self.seeded = true;
        self
    }

    /// Begins the history again at the next tick, as a new scaler's: the
    /// count found then counts as recommended, so no scale-down happens
    /// within the scale-down window. For a replica that takes the Lease: the
    /// previous leader's recent recommendations and changes are in its own
    /// journal, not this replica's, as HPA's controller loses its in-memory
    /// history when another instance takes over and seeds it again.
    pub fn reseed(&mut self) {
        self.seeded = false;
        self.reseeding = true;
    }

    /// [`reseed`](Self::reseed), forgetting the recommendations and scale
    /// events kept so far: for a replica that takes the Lease back after
    /// another led. Its own changes from when it last led, without the
    /// other's since, would misstate the count a rate-limit period began
    /// at (a "2 pods per 10m" letting 12 go to 6: the other's 14 → 12
    /// missing from 10 → 14). As a new HPA controller, it measures from
    /// the count it finds.
    pub fn forget_and_reseed(&mut self) {
        self.recommendations.clear();
        self.events.clear();
        self.reseed();
    }

    /// Takes over whether `running` (the state this one replaces while the
    /// scaler runs on: a rebuild from the journal after a reload) has
    /// begun its history and owes a seed: a scaler that never stopped
    /// does not seed again (its newest recommendation may be a scale-down
    /// window old when it ticks that seldom).
    pub fn carry_seed_from(&mut self, running: &EnvelopeState) {
        self.seeded = running.seeded;
        self.reseeding = running.reseeding;
    }

    /// On a scaler's first tick (since it began or was restored) with no
    /// history left in its scale-down window (nothing younger than
    /// `window_ms`; see [`seed_after`](super::seed_after)), or the first after
    /// [`reseed`](Self::reseed): remembers `current` as recommended at
    /// `time_ms` (HPA's initial recommendation) and returns it; afterwards
    /// `None`. A restart after an outage longer than the scale-down window
    /// but not the scale-up one seeds too: its empty scale-down window
    /// would have let the first tick scale down at once.
    pub(super) fn seed(&mut self, time_ms: i64, current: u32, window_ms: i64) -> Option<u32> {
        if self.seeded {
            return None;
        }
        self.seeded = true;
        let again = std::mem::take(&mut self.reseeding);
        let aged = match self.recommendations.last() {
            None => true,
            Some(newest) => window_ms > 0 && age_ms(time_ms, newest.time_ms) >= window_ms,
        };
        (aged || again).then(|| {
            self.record_recommendation(time_ms, current);
            current
        })
    }

    /// Remembers one tick's recommendation.
    pub(super) fn record_recommendation(&mut self, time_ms: i64, replicas: u32) {
        // Windows only ask "lowest/highest value younger than W", so of two
        // consecutive equal values only the newer one can ever matter.
        // Collapsing them keeps a steady scaler's history tiny.
        if let Some(last) = self.recommendations.last_mut()
            && last.replicas == replicas
        {
            last.time_ms = last.time_ms.max(time_ms);
            return;
        }
        self.recommendations
            .push(Recommendation { time_ms, replicas });
        cap(&mut self.recommendations);
    }

    /// The clock jumped `by_ms` ahead (a suspend, the wall clock set): the
    /// history moves with it, so its ages stay what they were. HPA's
    /// timestamps carry the monotonic clock, which such a step does not
    /// move; without this a step past the windows emptied them at once, and
    /// the next tick scaled down on nothing.
    pub fn clock_jumped(&mut self, by_ms: i64) {
        for r in &mut self.recommendations {
            r.time_ms = r.time_ms.saturating_add(by_ms);
        }
        for e in &mut self.events {
            e.timestamp_ms = e.timestamp_ms.saturating_add(by_ms);
        }
    }

    /// Forgets recommendations `keep_recommendations_ms` old or older and
    /// events `keep_events_ms` old or older: they can no longer affect a
    /// decision. Entries from the future (the clock went back, or the
    /// journal was written by a clock that ran fast) are kept but dated now:
    /// they hold for one window or cooldown from now, not until the clock
    /// catches up with them (hours, after a large step back).
    pub(super) fn prune(&mut self, now_ms: i64, keep_recommendations_ms: i64, keep_events_ms: i64) {
        for r in &mut self.recommendations {
            r.time_ms = r.time_ms.min(now_ms);
        }
        for e in &mut self.events {
            e.timestamp_ms = e.timestamp_ms.min(now_ms);
        }
        self.recommendations
            .retain(|r| age_ms(now_ms, r.time_ms) < keep_recommendations_ms);
        self.events
            .retain(|e| age_ms(now_ms, e.timestamp_ms) < keep_events_ms.max(EVENT_RETENTION_MS));
    }
}

/// How long ago `time_ms` was, never negative: an entry stamped in the
/// future (the clock went back) counts as just now, which keeps windows,
/// rate limits and cooldowns on the cautious side.
pub(super) fn age_ms(now_ms: i64, time_ms: i64) -> i64 {
    now_ms.saturating_sub(time_ms).max(0)
}

fn cap<T>(entries: &mut Vec<T>) {
    if entries.len() > MAX_HISTORY {
        let excess = entries.len() - MAX_HISTORY;
        entries.drain(..excess);
    }
}
