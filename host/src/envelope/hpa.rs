//! Kubernetes HPA `behavior` semantics: stabilisation windows and rate
//! limits, as upstream's `normalizeDesiredReplicasWithBehaviors` applies
//! them (pkg/controller/podautoscaler/horizontal.go), over the envelope's
//! own history.
//!
//! Two deliberate differences from upstream, both on the cautious side:
//! percent limits are computed in exact integer arithmetic (upstream's
//! float64 turns 10 × (1 − 0.8) into 1.999… and truncates it to 1, removing
//! 90% under an 80% limit), and history entries stamped in the future (the
//! clock went back) count as just now instead of being misread.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{RateLimit, ScalingRules, Select};
use crate::policy::ScaleEvent;

use super::state::{Recommendation, age_ms};

/// Which way a change goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    /// More replicas.
    Up,
    /// Fewer replicas.
    Down,
}

impl Direction {
    /// The config table holding this direction's rules.
    pub(super) fn config_key(self) -> &'static str {
        match self {
            Direction::Up => "scale_up",
            Direction::Down => "scale_down",
        }
    }

    /// The operator's word for a change this way.
    pub(super) fn noun(self) -> &'static str {
        match self {
            Direction::Up => "scale-up",
            Direction::Down => "scale-down",
        }
    }
}

/// One direction's rules with HPA's defaults filled in for what config left
/// out.
#[derive(Debug, Clone)]
pub(super) struct Rules {
    pub direction: Direction,
    pub window_ms: i64,
    pub select: Select,
    /// `None` in config means HPA's default limits; an empty list means no
    /// rate limit at all.
    pub limits: Arc<[RateLimit]>,
    pub cooldown_ms: i64,
}

impl Rules {
    /// Resolves `rules` for `direction`, taking HPA's defaults (see
    /// [`ScalingRules::default_up`] and [`ScalingRules::default_down`]) for
    /// a missing window or missing limits.
    pub(super) fn resolve(rules: &ScalingRules, direction: Direction) -> Self {
        let defaults = || match direction {
            Direction::Up => ScalingRules::default_up(),
            Direction::Down => ScalingRules::default_down(),
        };
        let window = match rules.stabilization_window {
            Some(window) => window,
            None => defaults().stabilization_window.unwrap_or_default(),
        };
        let limits = match &rules.limits {
            Some(limits) => Arc::clone(limits),
            None => defaults().limits.unwrap_or_else(|| Arc::new([])),
        };
        Rules {
            direction,
            window_ms: duration_ms(window),
            select: rules.select,
            limits,
            cooldown_ms: duration_ms(rules.cooldown),
        }
    }

    /// The longest rate-limit period: older events cannot affect a limit.
    pub(super) fn longest_period_ms(&self) -> i64 {
        self.limits
            .iter()
            .map(|limit| duration_ms(limit.period))
            .max()
            .unwrap_or(0)
    }
}

/// The outcome of the stabilisation windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stabilized {
    /// The stabilised replica count.
    pub value: u32,
    /// The lowest recommendation within the scale-up window (this tick's included).
    pub lowest: u32,
    /// The highest recommendation within the scale-down window (this tick's included).
    pub highest: u32,
}

/// Upstream's `stabilizeRecommendationWithBehaviors`: the count may rise only
/// as far as the lowest recommendation within the scale-up window and fall
/// only as far as the highest within the scale-down window. `history` is
/// the earlier ticks' recommendations; `recommendation` is this tick's.
pub(super) fn stabilize(
    history: &[Recommendation],
    now_ms: i64,
    recommendation: u32,
    current: u32,
    up_window_ms: i64,
    down_window_ms: i64,
) -> Stabilized {
    let mut lowest = recommendation;
    let mut highest = recommendation;
    for past in history {
        let age = age_ms(now_ms, past.time_ms);
        if age < up_window_ms {
            lowest = lowest.min(past.replicas);
        }
        if age < down_window_ms {
            highest = highest.max(past.replicas);
        }
    }
    // lowest <= recommendation <= highest, so this never panics.
    let value = current.max(lowest).min(highest);
    Stabilized {
        value,
        lowest,
        highest,
    }
}

/// Replicas added and removed by events younger than `period_ms`
/// (upstream's `getReplicasChangePerPeriod`, one sum per direction).
pub(super) fn changes_within(events: &[ScaleEvent], now_ms: i64, period_ms: i64) -> (i64, i64) {
    let mut added = 0i64;
    let mut removed = 0i64;
    for event in events {
        if age_ms(now_ms, event.timestamp_ms) >= period_ms {
            continue;
        }
        let delta = i64::from(event.to) - i64::from(event.from);
        if delta > 0 {
            added = added.saturating_add(delta);
        } else {
            removed = removed.saturating_add(-delta);
        }
    }
    (added, removed)
}

/// How much one rate limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Amount {
    /// This many replicas per period.
    Pods(u32),
    /// This percentage of the replicas at the period's start.
    Percent(u32),
}

/// The rate limit that decided the bound, for the operator's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Chosen {
    pub amount: Amount,
    pub period: Duration,
    /// current − added + removed within the period.
    pub period_start: i64,
}

/// What the rate limits allow this tick in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Limit {
    /// No rate limit is configured.
    Unlimited,
    /// `select = "disabled"`: no change this way at all.
    Disabled,
    /// The furthest the count may go (up: highest; down: lowest). It may lie
    /// on the wrong side of the current count after many recent events;
    /// callers then hold at the current count, as upstream does.
    Bound {
        /// The bound.
        replicas: i64,
        /// The limit that set it.
        chosen: Chosen,
    },
}

/// Upstream's `calculateScaleUpLimitWithScalingRules` and
/// `calculateScaleDownLimitWithBehaviors`: each limit allows a change
/// measured from the count at the start of its period; `select` picks the
/// limit allowing the largest (max) or smallest (min) change.
pub(super) fn rate_limit(rules: &Rules, current: u32, events: &[ScaleEvent], now_ms: i64) -> Limit {
    if rules.select == Select::Disabled {
        return Limit::Disabled;
    }
    // "Largest change" is the highest bound going up and the lowest going down.
    let prefer_higher = (rules.direction == Direction::Up) == (rules.select == Select::Max);
    let mut best: Option<(i64, Chosen)> = None;
    for limit in rules.limits.iter() {
        let period_ms = duration_ms(limit.period);
        let (added, removed) = changes_within(events, now_ms, period_ms);
        let period_start = i64::from(current)
            .saturating_sub(added)
            .saturating_add(removed);
        let amounts = [
            limit.pods.map(Amount::Pods),
            limit.percent.map(Amount::Percent),
        ];
        for amount in amounts.into_iter().flatten() {
            let replicas = bound(rules.direction, amount, period_start);
            let better = match best {
                None => true,
                Some((so_far, _)) if prefer_higher => replicas > so_far,
                Some((so_far, _)) => replicas < so_far,
            };
            if better {
                let chosen = Chosen {
                    amount,
                    period: limit.period,
                    period_start,
                };
                best = Some((replicas, chosen));
            }
        }
    }
    match best {
        Some((replicas, chosen)) => Limit::Bound { replicas, chosen },
        None => Limit::Unlimited,
    }
}

/// The count one limit allows from `period_start`. Percent up rounds up (so
/// a small count can still grow) and percent down truncates, as upstream;
/// in exact integer arithmetic.
fn bound(direction: Direction, amount: Amount, period_start: i64) -> i64 {
    let start = i128::from(period_start);
    let replicas = match (direction, amount) {
        (Direction::Up, Amount::Pods(pods)) => start + i128::from(pods),
        (Direction::Down, Amount::Pods(pods)) => start - i128::from(pods),
        (Direction::Up, Amount::Percent(percent)) => {
            let scaled = start * (100 + i128::from(percent));
            -((-scaled).div_euclid(100))
        }
        // Division truncates toward zero, like Go's int32(float64) conversion.
        (Direction::Down, Amount::Percent(percent)) => start * (100 - i128::from(percent)) / 100,
    };
    i64::try_from(replicas).unwrap_or(if replicas < 0 { i64::MIN } else { i64::MAX })
}

/// A config duration in ms, saturating.
pub(super) fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
