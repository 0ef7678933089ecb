//! The host's safety envelope: whatever the policies propose, the replica
//! count the host actually asks for, with every change explained in words an
//! operator understands.
//!
//! Pure logic over plain data: no I/O, no clock reads. The rules, in order
//! (each one that changes the number adds an [`EnvelopeStep`]):
//!
//! 1. `paused`: a paused scaler holds. `in-flight`: while an actuator is
//!    still carrying out a change, the scaler holds. `scaled-to-zero`: a
//!    target scaled to 0 while `min` is above 0 is left there.
//! 2. `bounds`: a current count outside min/max is brought to the nearest
//!    bound at once, as upstream HPA does before it looks at metrics -
//!    whatever the policies said, failed or not.
//! 3. `policy-failed`: a policy failed this tick, the scaler holds. The
//!    proposal (`None` = every policy held = the current count);
//!    `missing-metrics`: if any metric could not be read this tick, no
//!    scale-in; scale-out on the remaining data is still allowed, as HPA does.
//! 4. Kubernetes HPA `behavior`, as upstream applies it: `stabilization`
//!    windows (up: the lowest recommendation in the window, down: the
//!    highest), `rate-limit` (pods or percent per period, from the count at
//!    the period's start; select max/min/disabled; HPA's defaults when
//!    config gives none), then the `bounds`.
//! 5. `cooldown` (Scalewise's addition): no scale-up within
//!    `scale_up.cooldown`, and no scale-down within `scale_down.cooldown`,
//!    of the last scale event.
//!
//! HPA seeds its in-memory history with the current count whenever it
//! starts. The envelope's history is restored from the journal instead
//! ([`EnvelopeState::restore`]), and seeded as HPA's only where there is
//! none within the windows: a brand-new scaler's first tick, the first
//! after a restart that followed a longer outage, and the first after a
//! takeover of the Lease ([`EnvelopeState::reseed`]).
//!
//! A target scaled to 0 while `min` is above 0 is left there
//! (`scaled-to-zero`): as HPA does, scaling it to zero turns autoscaling
//! off for it until something scales it up again.

mod hpa;
mod state;

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::actuators::InFlight;
use crate::config::Behavior;
use crate::journal::{EnvelopeStep, MetricFailure};

use hpa::{Amount, Chosen, Direction, Limit, Rules};

pub use state::{EVENT_RETENTION_MS, EnvelopeState, MAX_HISTORY, Recommendation};

/// Longest metric error quoted in a reason; the journal keeps the full one.
const MAX_QUOTED_ERROR: usize = 160;

/// Which envelope rule changed the count (the journal's `EnvelopeStep::rule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// The scaler is paused.
    Paused,
    /// A change is still being carried out.
    InFlight,
    /// The target was scaled to 0 (with `min` above 0): autoscaling is off
    /// for it, as HPA's `ScalingDisabled`.
    ScaledToZero,
    /// A metric could not be read, so no scale-in.
    MissingMetrics,
    /// A policy of the scaler failed this tick: hold.
    PolicyFailed,
    /// A stabilisation window.
    Stabilization,
    /// A pods/percent per period limit, or `select = "disabled"`.
    RateLimit,
    /// The scaler's min/max.
    Bounds,
    /// Too soon after the last scale event.
    Cooldown,
}

impl Rule {
    /// Every rule, in the order the envelope applies them.
    pub const ALL: [Rule; 9] = [
        Rule::Paused,
        Rule::InFlight,
        Rule::ScaledToZero,
        Rule::Bounds,
        Rule::PolicyFailed,
        Rule::MissingMetrics,
        Rule::Stabilization,
        Rule::RateLimit,
        Rule::Cooldown,
    ];

    /// The rule's fixed name, as written in the journal and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Paused => "paused",
            Rule::InFlight => "in-flight",
            Rule::ScaledToZero => "scaled-to-zero",
            Rule::PolicyFailed => "policy-failed",
            Rule::MissingMetrics => "missing-metrics",
            Rule::Stabilization => "stabilization",
            Rule::RateLimit => "rate-limit",
            Rule::Bounds => "bounds",
            Rule::Cooldown => "cooldown",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything the envelope needs to know about one tick of one scaler.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The tick's time (host clock, ms since the Unix epoch).
    pub now_ms: i64,
    /// Replicas the target is asked to run now.
    pub current: u32,
    /// The scaler's lower bound.
    pub min: u32,
    /// The scaler's upper bound (wins if config ever let min exceed it).
    pub max: u32,
    /// The policies' combined answer; `None` = every policy held.
    pub proposal: Option<u32>,
    /// Metrics that could not be read this tick (missing, stale or NaN).
    pub failed_metrics: &'a [MetricFailure],
    /// Whether a policy of the scaler failed this tick (error, trap,
    /// timeout, out of memory, invalid answer): the scaler holds.
    pub policy_failed: bool,
    /// Whether every policy abstained (each failed for want of a metric it
    /// reads): the tick holds and, like a tick whose metrics failed, keeps
    /// no recommendation.
    pub no_votes: bool,
    /// Whether the scaler is paused.
    pub paused: bool,
    /// A change the actuator is still carrying out, if any.
    pub in_flight: Option<&'a InFlight>,
    /// The scaler's HPA-style behaviour and cooldowns.
    pub behavior: &'a Behavior,
}

/// What the envelope decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The replica count the host settles on (the current count to hold).
    pub desired: u32,
    /// The recommendation recorded for the stabilisation windows: the
    /// proposal (the current count when the policies held). `None` when
    /// the tick recorded none, as HPA records none when it does not compute
    /// one: a policy failed, scale-in was blocked for missing metrics, the
    /// current count was outside the bounds, or the target is scaled to 0.
    /// Journal it; [`EnvelopeState::restore`] takes it back.
    pub recommendation: Option<u32>,
    /// Every change the envelope made to the proposal, in order.
    pub steps: Vec<EnvelopeStep>,
}

/// How far back the envelope's memory of a scaler with `behavior` must
/// reach: its longest stabilisation window, rate-limit period or cooldown
/// (HPA's defaults where the config gives none). What a restart must
/// restore, and what the journal must keep.
pub fn memory_needed(behavior: &Behavior) -> Duration {
    let up = Rules::resolve(&behavior.scale_up, Direction::Up);
    let down = Rules::resolve(&behavior.scale_down, Direction::Down);
    let longest = events_needed_ms(&up, &down)
        .max(up.window_ms)
        .max(down.window_ms);
    Duration::from_millis(u64::try_from(longest).unwrap_or(0))
}

/// How far back the live envelope keeps what it keeps: recommendations
/// as far as the longest stabilisation window, scale events as far as the
/// longest rate-limit period or cooldown. A behaviour that needs either
/// further back than another kept must have its history read again.
pub fn memory_kept(behavior: &Behavior) -> (Duration, Duration) {
    let up = Rules::resolve(&behavior.scale_up, Direction::Up);
    let down = Rules::resolve(&behavior.scale_down, Direction::Down);
    let ms = |ms: i64| Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    (
        ms(up.window_ms.max(down.window_ms)),
        ms(events_needed_ms(&up, &down)),
    )
}

/// How old the newest recommendation can be before a scaler's first tick
/// (since it began or was restored) seeds its history again: the
/// scale-down stabilisation window (HPA's default where the config gives
/// none), as that window with nothing in it would let the tick scale down
/// at once; the longest window when it is zero (nothing is left then).
pub fn seed_after(behavior: &Behavior) -> Duration {
    let up = Rules::resolve(&behavior.scale_up, Direction::Up);
    let down = Rules::resolve(&behavior.scale_down, Direction::Down);
    Duration::from_millis(u64::try_from(seed_after_ms(&up, &down)).unwrap_or(0))
}

fn seed_after_ms(up: &Rules, down: &Rules) -> i64 {
    if down.window_ms > 0 {
        down.window_ms
    } else {
        up.window_ms
    }
}

/// How long scale events can still matter: the longest rate-limit period
/// or cooldown of either direction.
fn events_needed_ms(up: &Rules, down: &Rules) -> i64 {
    [
        up.longest_period_ms(),
        down.longest_period_ms(),
        up.cooldown_ms,
        down.cooldown_ms,
    ]
    .into_iter()
    .max()
    .unwrap_or(0)
}

/// Passes one tick's proposal through the envelope, recording this tick's
/// recommendation in `state` and forgetting history too old to matter.
pub fn apply(state: &mut EnvelopeState, input: &Input<'_>) -> Verdict {
    let now_ms = input.now_ms;
    let current = input.current;
    let up = Rules::resolve(&input.behavior.scale_up, Direction::Up);
    let down = Rules::resolve(&input.behavior.scale_down, Direction::Down);

    state.prune(
        now_ms,
        up.window_ms.max(down.window_ms),
        events_needed_ms(&up, &down),
    );

    state.seed(now_ms, current, seed_after_ms(&up, &down));
    let proposed = input.proposal.unwrap_or(current);
    let scale_in_blocked = proposed < current && !input.failed_metrics.is_empty();
    let min = input.min.min(input.max);
    let out_of_bounds = current > input.max || current < min;
    let scaled_to_zero = current == 0 && min > 0;
    // Upstream HPA records a recommendation only when it computed one: not
    // when the metrics failed (wholly, or where it would scale in), nor when
    // the count is outside its bounds or scaled to zero. Recording the
    // current count instead would hold scale-in back for a whole window
    // after every such tick: intermittently missing data would block it for
    // good. Those ticks hold (or go to a bound) without stabilisation.
    let recommendation = (!(scale_in_blocked
        || input.no_votes
        || input.policy_failed
        || out_of_bounds
        || scaled_to_zero))
        .then_some(proposed);
    let stabilized = hpa::stabilize(
        state.recommendations(),
        now_ms,
        recommendation.unwrap_or(current),
        current,
        up.window_ms,
        down.window_ms,
    );
    if let Some(recommendation) = recommendation {
        state.record_recommendation(now_ms, recommendation);
    }

    let mut trail = Trail {
        value: proposed,
        steps: Vec::new(),
    };
    steer(&mut trail, state, input, &up, &down, stabilized);
    Verdict {
        desired: trail.value,
        recommendation,
        steps: trail.steps,
    }
}

/// Applies the rules in order to `trail`, which starts at the proposal.
fn steer(
    trail: &mut Trail,
    state: &EnvelopeState,
    input: &Input<'_>,
    up: &Rules,
    down: &Rules,
    stabilized: hpa::Stabilized,
) {
    let current = input.current;
    // A min above max is refused when config loads; should one get here,
    // max wins rather than a panic.
    let max = input.max;
    let min = input.min.min(max);

    if input.paused {
        trail.change(Rule::Paused, current, || "scaler is paused".to_string());
        return;
    }
    if let Some(in_flight) = input.in_flight {
        trail.change(Rule::InFlight, current, || {
            format!(
                "change to {} in progress: {}",
                in_flight.desired, in_flight.detail
            )
        });
        return;
    }
    if current == 0 && min > 0 {
        // HPA's ScalingDisabled: someone scaled the target to zero on
        // purpose (`kubectl scale --replicas=0`), and min does not undo it.
        trail.change(Rule::ScaledToZero, 0, || {
            format!(
                "the target is scaled to 0: autoscaling is off for it until it is scaled up \
                 (min {min} applies from then on)"
            )
        });
        return;
    }
    // Upstream HPA brings a count outside its bounds straight back, before
    // and without metrics (so whatever the policies said, failed or not),
    // stabilisation or rate limits: the bounds are the operator's.
    if current > max {
        trail.change(Rule::Bounds, max, || {
            format!("current {current} is above max {max}")
        });
        return;
    }
    if current < min {
        trail.change(Rule::Bounds, min, || {
            format!("current {current} is below min {min}")
        });
        return;
    }
    if input.policy_failed {
        // Never scale on a failed policy's tick otherwise: what the other
        // policies said is incomplete.
        trail.change(Rule::PolicyFailed, current, || {
            "a policy failed this tick; holding".to_string()
        });
        return;
    }
    if trail.value < current && !input.failed_metrics.is_empty() {
        trail.change(Rule::MissingMetrics, current, || {
            missing_metrics_reason(input.failed_metrics)
        });
    }

    let wanted = trail.value;
    trail.change(Rule::Stabilization, stabilized.value, || {
        if wanted > current {
            format!(
                "scale-up stabilised: lowest recommendation in the last {} is {}",
                fmt_ms(up.window_ms),
                stabilized.lowest
            )
        } else {
            format!(
                "scale-down stabilised: highest recommendation in the last {} is {}",
                fmt_ms(down.window_ms),
                stabilized.highest
            )
        }
    });

    let events = state.events();
    if trail.value > current {
        match hpa::rate_limit(up, current, events, input.now_ms) {
            Limit::Unlimited => {}
            Limit::Disabled => trail.change(Rule::RateLimit, current, || disabled_reason(up)),
            Limit::Bound { replicas, chosen } => {
                // Many recent scale-ups can put the bound below the current
                // count; hold then, as upstream does.
                let ceiling = replicas.max(i64::from(current));
                if ceiling < i64::from(max) && i64::from(trail.value) > ceiling {
                    let to = u32::try_from(ceiling).unwrap_or(max);
                    trail.change(Rule::RateLimit, to, || limit_reason(up, chosen, current));
                }
            }
        }
        if trail.value > max {
            trail.change(Rule::Bounds, max, || format!("clamped to max {max}"));
        }
    } else if trail.value < current {
        match hpa::rate_limit(down, current, events, input.now_ms) {
            Limit::Unlimited => {}
            Limit::Disabled => trail.change(Rule::RateLimit, current, || disabled_reason(down)),
            Limit::Bound { replicas, chosen } => {
                let floor = replicas.min(i64::from(current));
                if floor > i64::from(min) && i64::from(trail.value) < floor {
                    let to = u32::try_from(floor).unwrap_or(current);
                    trail.change(Rule::RateLimit, to, || limit_reason(down, chosen, current));
                }
            }
        }
        if trail.value < min {
            trail.change(Rule::Bounds, min, || format!("clamped to min {min}"));
        }
    }

    let rules = if trail.value > current {
        up
    } else if trail.value < current {
        down
    } else {
        return;
    };
    if rules.cooldown_ms > 0
        && let Some(last) = state.last_event()
    {
        let age = state::age_ms(input.now_ms, last.timestamp_ms);
        if age < rules.cooldown_ms {
            trail.change(Rule::Cooldown, current, || {
                format!(
                    "cooldown: last scale event {} ago, {}.cooldown is {}",
                    fmt_ms(age / 1000 * 1000),
                    rules.direction.config_key(),
                    fmt_ms(rules.cooldown_ms)
                )
            });
        }
    }
}

/// The count as the rules move it, and the steps that moved it.
struct Trail {
    value: u32,
    steps: Vec<EnvelopeStep>,
}

impl Trail {
    /// Moves the count to `to` under `rule`; a rule that changes nothing
    /// leaves no step.
    fn change(&mut self, rule: Rule, to: u32, reason: impl FnOnce() -> String) {
        if to == self.value {
            return;
        }
        self.steps.push(EnvelopeStep {
            rule: rule.as_str().to_string(),
            from: self.value,
            to,
            reason: reason(),
        });
        self.value = to;
    }
}

fn missing_metrics_reason(failures: &[MetricFailure]) -> String {
    let why = |failure: &MetricFailure| {
        let error = if failure.error.is_empty() {
            &failure.kind
        } else {
            &failure.error
        };
        shorten(error, MAX_QUOTED_ERROR)
    };
    match failures {
        [one] => format!(
            "scale-in blocked: metric {} unavailable ({})",
            one.metric,
            why(one)
        ),
        many => {
            let listed: Vec<String> = many
                .iter()
                .map(|failure| format!("{} ({})", failure.metric, why(failure)))
                .collect();
            format!(
                "scale-in blocked: metrics unavailable: {}",
                listed.join(", ")
            )
        }
    }
}

fn disabled_reason(rules: &Rules) -> String {
    format!(
        "{} disabled ({}.select is disabled)",
        rules.direction.noun(),
        rules.direction.config_key()
    )
}

fn limit_reason(rules: &Rules, chosen: Chosen, current: u32) -> String {
    let amount = match chosen.amount {
        Amount::Pods(1) => "1 pod".to_string(),
        Amount::Pods(pods) => format!("{pods} pods"),
        Amount::Percent(percent) => format!("{percent}%"),
    };
    let start = if chosen.period_start == i64::from(current) {
        format!("period start {}", chosen.period_start)
    } else {
        format!("period start {}, current {current}", chosen.period_start)
    };
    format!(
        "{} limited to {amount} per {} ({start})",
        rules.direction.noun(),
        fmt_duration(chosen.period)
    )
}

fn fmt_ms(ms: i64) -> String {
    fmt_duration(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

fn fmt_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests;
