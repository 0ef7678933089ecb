//! `threshold`: the trigger table of runbooks and PaaS autoscalers. Scale up
//! by `step_up` replicas when a metric has stayed above `upper` for
//! `up_for`; scale down by `step_down` when it has stayed below `lower` for
//! `down_for`; otherwise hold.
//!
//! "Stayed above for 5m" means every sample of the last five minutes is
//! above the threshold *and* the samples reach back five minutes (within one
//! sample interval; or the sample just before, the value in effect when the
//! five minutes began, is above too and no gap longer than the duration lies
//! between them), so a series that began a minute ago, or resumed after an
//! hour's gap, does not count (`Metric::held_for` in the SDK). The
//! metric therefore needs a `window` in the scaler's config at least as long
//! as the longer of `up_for` and `down_for`; when it is shorter the reason
//! says so. A duration of `0s` lets the newest sample decide alone.
//!
//! # Parameters
//!
//! | name | kind | default | meaning |
//! |---|---|---|---|
//! | `metric` | metric | required | the metric the thresholds apply to |
//! | `upper` | number | required | scale up above this |
//! | `lower` | number | required, < `upper` | scale down below this |
//! | `up_for` | duration | `"2m"` | how long the metric must stay above `upper` |
//! | `down_for` | duration | `"5m"` | how long the metric must stay below `lower` |
//! | `step_up` | integer | `1` | replicas added per scale-up |
//! | `step_down` | integer | `1` | replicas removed per scale-down |
//!
//! The defaults scale out sooner than in, the habit of the field. Cooldowns
//! between steps belong to the host's envelope (`behavior.*.cooldown`), not
//! to this policy, which keeps no state. Comparisons are strict: a sample
//! equal to a threshold is not beyond it. The policy keeps its answer within
//! the scaler's `min`..`max` (also when the current count is outside them)
//! and says which bound moved it off a plain step.
//!
//! The logic is the plain function [`decide`]; the Wasm export only calls it.
#![deny(missing_docs)]

use scalewise_sdk::params::ParamSpec;
use scalewise_sdk::prelude::*;
use serde::Deserialize;

/// The parameters this policy accepts; the source of both `describe()` and
/// [`Params`].
pub const PARAMS: &[ParamSpec] = &[
    ParamSpec::required(
        "metric",
        ParameterKind::Metric,
        "The metric the thresholds apply to. Give it a window in the scaler's config at \
         least as long as up_for and down_for.",
    ),
    ParamSpec::required(
        "upper",
        ParameterKind::Number,
        "Scale up when every sample of the last up_for is above this.",
    ),
    ParamSpec::required(
        "lower",
        ParameterKind::Number,
        "Scale down when every sample of the last down_for is below this. Less than upper.",
    ),
    ParamSpec::optional(
        "up_for",
        ParameterKind::Duration,
        "\"2m\"",
        "How long the metric must stay above upper (0s: the newest sample decides).",
    ),
    ParamSpec::optional(
        "down_for",
        ParameterKind::Duration,
        "\"5m\"",
        "How long the metric must stay below lower (0s: the newest sample decides).",
    ),
    ParamSpec::optional(
        "step_up",
        ParameterKind::Integer,
        "1",
        "Replicas added per scale-up, at least 1.",
    ),
    ParamSpec::optional(
        "step_down",
        ParameterKind::Integer,
        "1",
        "Replicas removed per scale-down, at least 1.",
    ),
];

/// The policy's parameters, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Params {
    /// The metric the thresholds apply to.
    pub metric: String,
    /// Scale up above this.
    pub upper: f64,
    /// Scale down below this.
    pub lower: f64,
    /// How long the metric must stay above `upper`.
    pub up_for: DurationMs,
    /// How long the metric must stay below `lower`.
    pub down_for: DurationMs,
    /// Replicas added per scale-up.
    pub step_up: i64,
    /// Replicas removed per scale-down.
    pub step_down: i64,
}

impl Params {
    /// Parameters with the given metric and thresholds and every default.
    pub fn new(metric: &str, lower: f64, upper: f64) -> Self {
        Params {
            metric: metric.into(),
            upper,
            lower,
            up_for: DurationMs(120_000),
            down_for: DurationMs(300_000),
            step_up: 1,
            step_down: 1,
        }
    }

    /// Reads and checks the parameters of `ctx`.
    pub fn from_context(ctx: &Context) -> Result<Self, String> {
        let params: Params = ctx.params_checked(PARAMS)?;
        params.validate()?;
        Ok(params)
    }

    /// Checks the values the kinds alone do not rule out.
    pub fn validate(&self) -> Result<(), String> {
        if self.lower >= self.upper {
            return Err(format!(
                "parameter lower ({}) must be less than upper ({})",
                format_number(self.lower),
                format_number(self.upper)
            ));
        }
        for (name, step) in [("step_up", self.step_up), ("step_down", self.step_down)] {
            if !(1..=i64::from(u32::MAX)).contains(&step) {
                return Err(format!(
                    "parameter {name} must be between 1 and {}, got {step}",
                    u32::MAX
                ));
            }
        }
        Ok(())
    }

    fn step(step: i64) -> u32 {
        u32::try_from(step).unwrap_or(u32::MAX)
    }
}

/// Where the metric stands against the thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Every sample of the last `up_for` is above `upper`: scale up.
    Up,
    /// Every sample of the last `down_for` is below `lower`: scale down.
    Down,
    /// The newest sample is above `upper`, but not for `up_for`; why not
    /// (never [`Held::Yes`]).
    Above(Held),
    /// The newest sample is below `lower`, but not for `down_for`.
    Below(Held),
    /// The newest sample is between the thresholds (or on one).
    Between,
}

/// The newest sample taken at or before `now_ms`.
pub fn newest(metric: &Metric, now_ms: i64) -> Option<Point> {
    metric.points().rev().find(|p| p.timestamp_ms <= now_ms)
}

/// Compares the metric's samples up to `now_ms` with the thresholds.
pub fn signal(p: &Params, metric: &Metric, now_ms: i64) -> Signal {
    let above = metric.held_for(now_ms, p.up_for.ms(), |v| v > p.upper);
    if above == Held::Yes {
        return Signal::Up;
    }
    let below = metric.held_for(now_ms, p.down_for.ms(), |v| v < p.lower);
    if below == Held::Yes {
        return Signal::Down;
    }
    match newest(metric, now_ms) {
        Some(latest) if latest.value > p.upper => Signal::Above(above),
        Some(latest) if latest.value < p.lower => Signal::Below(below),
        _ => Signal::Between,
    }
}

/// The replica count `signal` asks for from `current`: one step, then
/// within the scaler's bounds `min`..`max` (also when `current` is outside
/// them).
pub fn next_replicas(signal: Signal, p: &Params, current: u32, min: u32, max: u32) -> u32 {
    let stepped = match signal {
        Signal::Up => current.saturating_add(Params::step(p.step_up)),
        Signal::Down => current.saturating_sub(Params::step(p.step_down)),
        _ => return current,
    };
    // Not `clamp`: it panics on a context with min above max.
    stepped.max(min).min(max)
}

/// Decides one tick: reads the parameters and the metric from `ctx`,
/// compares the metric with the thresholds and takes one step. This is
/// everything `evaluate` does.
pub fn decide(ctx: &Context) -> Result<Decision, String> {
    let p = Params::from_context(ctx)?;
    let metric = ctx.metric_checked(&p.metric)?;
    let Some(latest) = newest(metric, ctx.now_ms) else {
        return Err(format!("metric {:?} has no samples", p.metric));
    };
    let t = &ctx.target;
    let signal = signal(&p, metric, ctx.now_ms);
    let desired = next_replicas(signal, &p, t.current, t.min, t.max);
    let reason = reason(&p, latest.value, signal, t, desired);
    Ok(Decision::scale_or_hold(t.current, desired, reason))
}

/// The operator-facing explanation of a decision.
fn reason(p: &Params, latest: f64, signal: Signal, t: &Target, desired: u32) -> String {
    let name = &p.metric;
    let (value, upper, lower) = (
        format_number(latest),
        format_number(p.upper),
        format_number(p.lower),
    );
    let current = t.current;
    let sustained = |side: &str, threshold: &str, duration: DurationMs| {
        if duration.ms() > 0 {
            format!("{name} {side} {threshold} for {duration} (newest {value})")
        } else {
            format!("{name} {value} {side} {threshold}")
        }
    };
    let step = |what: String| {
        let stepped = match signal {
            Signal::Up => current.saturating_add(Params::step(p.step_up)),
            _ => current.saturating_sub(Params::step(p.step_down)),
        };
        // The bound that moved the answer off a plain step, if one did.
        let bound = if desired == stepped {
            None
        } else if desired == t.max && stepped > t.max {
            Some("max")
        } else {
            Some("min")
        };
        match bound {
            // A step that goes nowhere (down from 0): a hold.
            None if desired == current => format!("{what}: hold at {current}"),
            None => format!("{what}: {current} → {desired}"),
            Some(bound) if desired == current => format!("{what}: hold at {bound} {desired}"),
            Some(bound) => format!("{what}: {current} → {desired} ({bound} {desired})"),
        }
    };
    let not_yet = |side: &str, threshold: &str, duration: DurationMs, held: Held| match held {
        Held::ShortSeries { reach_ms } => format!(
            "{name} {value} {side} {threshold}, but its samples reach back only {} of \
             {duration}: hold at {current} (is the metric's window at least {duration}?)",
            DurationMs(reach_ms)
        ),
        Held::NoRecentSamples {
            newest_age_ms: Some(age),
        } => format!(
            "{name} {value} {side} {threshold}, but that sample is {} old and none is newer \
             than {duration}: hold at {current}",
            DurationMs(age)
        ),
        Held::Gap { gap_ms } => format!(
            "{name} {value} {side} {threshold}, but its samples have a gap of {} in the last \
             {duration}: hold at {current}",
            DurationMs(gap_ms)
        ),
        _ => {
            format!("{name} {value} {side} {threshold}, not yet for {duration}: hold at {current}")
        }
    };
    match signal {
        Signal::Up => step(sustained("above", &upper, p.up_for)),
        Signal::Down => step(sustained("below", &lower, p.down_for)),
        Signal::Above(held) => not_yet("above", &upper, p.up_for, held),
        Signal::Below(held) => not_yet("below", &lower, p.down_for, held),
        Signal::Between => {
            format!("{name} {value} between {lower} and {upper}: hold at {current}")
        }
    }
}

/// The policy's self-description.
pub fn info() -> Info {
    Info::new(
        "threshold",
        env!("CARGO_PKG_VERSION"),
        "Scales up by step_up when a metric stays above upper for up_for, down by step_down \
         when it stays below lower for down_for.",
    )
    .with_params(PARAMS)
}

/// The exported policy.
#[derive(Debug)]
pub struct Threshold;

impl Policy for Threshold {
    fn describe() -> Info {
        info()
    }

    fn evaluate(ctx: Context) -> Result<Decision, String> {
        decide(&ctx)
    }
}

scalewise_sdk::export_policy!(Threshold);

#[cfg(test)]
mod tests;
