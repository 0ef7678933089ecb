//! `target-tracking`: keeps a metric at a target value with the Kubernetes
//! Horizontal Pod Autoscaler's replica formula.
//!
//! ```text
//! desired = ceil(ready × metric / target)
//! ```
//!
//! and no change while the ratio `metric / target` stays within a tolerance
//! band around 1 (default ±0.1, HPA's default), so small wobbles do not move
//! the replica count.
//!
//! # Parameters
//!
//! | name | kind | default | meaning |
//! |---|---|---|---|
//! | `metric` | metric | required | the metric to track |
//! | `target` | number | required, > 0 | the value the metric should have (per replica, see `metric_type`) |
//! | `metric_type` | text | `"average"` | `average`: the metric is a per-replica average (CPU %, requests/s per replica); `total`: it is a sum over the whole target (queue length, total requests/s) and `target` is what one replica should handle |
//! | `tolerance` | number | `0.1` | hold while the ratio metric / target is within 1 ± tolerance |
//! | `scale_up_tolerance` | number | `tolerance` | the band's upper side (HPA `behavior.scaleUp.tolerance`) |
//! | `scale_down_tolerance` | number | `tolerance` | the band's lower side (HPA `behavior.scaleDown.tolerance`) |
//! | `aggregate` | text | `"latest"` | how the metric's samples become one value: `latest`, `mean`, `min`, `max`, `median`, `pNN` |
//! | `window` | duration | every sample | aggregate only the samples of the last `window` |
//!
//! HPA reads CPU from metrics-server, which already averages over about a
//! minute; `aggregate = "mean"` over a `window` gives the same smoothing for
//! a metric the host delivers as a series. `max` or `p95` track the busiest
//! moment of the window instead.
//!
//! # Ready versus current replicas
//!
//! Like HPA, the formula multiplies by the **ready** replicas, not the
//! current (asked-for) ones: an `average` metric is the average over the
//! replicas that serve load, so `ready × metric` is the load to share out.
//! Replicas that are not ready yet are treated as HPA treats unready pods:
//!
//! - Scaling down, they are left out: `desired = ceil(ready × ratio)`.
//! - Scaling up, they are counted as idle (load 0), which gives the ratio
//!   `ratio × ready / current`. If that ratio is inside the band or below 1,
//!   the replicas still starting are likely to absorb the load and the
//!   policy holds; otherwise `desired = ceil(ready × ratio)`.
//! - With no replica ready (but some asked for) the policy holds.
//! - A result that would move against the metric (more replicas while the
//!   metric is below target, which happens when more replicas are ready
//!   than asked for during a rollout surge) is a hold.
//!
//! The reason string says when the count was computed over fewer ready
//! replicas than current ones ("ratio 3.00 over 2 ready of 3 replicas").
//!
//! Two deliberate differences from upstream: HPA counts unready pods as idle
//! only for pod and CPU metrics, while for object and external `Value`
//! metrics it multiplies by the ready pods directly and can scale down while
//! the metric is above target as pods start; this policy applies the idle
//! rule to every average, so it holds there. And HPA's handling of ready
//! pods without a sample ("missing" pods) has no counterpart, because the
//! host delivers one aggregated series, not one per replica.
//!
//! For `metric_type = "total"` (HPA's `AverageValue` target on an object or
//! external metric) readiness plays no part, as in HPA:
//! `desired = ceil(metric / target)`, holding while
//! `metric / (target × current)` is inside the band.
//!
//! At zero replicas the ratio is taken against one replica without a band
//! (HPA's scale-from-zero): `desired = ceil(metric / target)`.
//!
//! Counts are whole numbers computed as `ceil`, with products formed before
//! the division and results within 10⁻⁹ (relative) of a whole number taken
//! as that number, so `0.2 × 3 / 0.1` is 6 and not 7 from floating-point
//! noise. The
//! policy keeps its answer within the scaler's `min`..`max` (the host would
//! clamp it anyway) and says so in the reason.
//!
//! The logic is the plain function [`decide`]; the Wasm export only calls it.
#![deny(missing_docs)]

use scalewise_sdk::params::ParamSpec;
use scalewise_sdk::prelude::*;
use serde::Deserialize;

/// Slack for floating-point noise in the band test and in `ceil`.
const EPSILON: f64 = 1e-9;

/// The parameters this policy accepts; the source of both `describe()` and
/// [`Params`].
pub const PARAMS: &[ParamSpec] = &[
    ParamSpec::required(
        "metric",
        ParameterKind::Metric,
        "The metric to keep at the target.",
    ),
    ParamSpec::required(
        "target",
        ParameterKind::Number,
        "The value the metric should have, > 0: per replica (e.g. 60 for 60% CPU, or \
         requests/s one replica should serve).",
    ),
    ParamSpec::optional(
        "metric_type",
        ParameterKind::Text,
        "\"average\"",
        "average: the metric is a per-replica average (HPA Utilization and AverageValue on \
         pod metrics, Value on object metrics); total: the metric is a sum over the whole \
         target (queue length, total requests/s) and target is one replica's share (HPA \
         AverageValue on object and external metrics).",
    )
    .one_of(&["average", "total"]),
    ParamSpec::optional(
        "tolerance",
        ParameterKind::Number,
        "0.1",
        "Hold while the usage ratio is within 1 ± tolerance (HPA's default 0.1): metric/target \
         for average, metric/(target × current) for total.",
    ),
    ParamSpec::optional_without_default(
        "scale_up_tolerance",
        ParameterKind::Number,
        "The band above the target, overriding tolerance (HPA behavior.scaleUp.tolerance).",
    ),
    ParamSpec::optional_without_default(
        "scale_down_tolerance",
        ParameterKind::Number,
        "The band below the target, overriding tolerance (HPA behavior.scaleDown.tolerance).",
    ),
    ParamSpec::optional(
        "aggregate",
        ParameterKind::Text,
        "\"latest\"",
        "How the metric's samples become one value: latest, mean, min, max, median or pNN \
         (e.g. p95).",
    ),
    ParamSpec::optional_without_default(
        "window",
        ParameterKind::Duration,
        "Aggregate only the samples of the last window (default: every sample the host \
         delivers, i.e. the metric's configured window).",
    ),
];

/// What the metric measures, and so what `target` is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetricType {
    /// A per-replica average, compared with `target` directly.
    Average,
    /// A sum over the whole target; `target` is one replica's share.
    Total,
}

/// The policy's parameters, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Params {
    /// The metric to track.
    pub metric: String,
    /// The value the metric should have (per replica).
    pub target: f64,
    /// What the metric measures.
    pub metric_type: MetricType,
    /// The band's half-width.
    pub tolerance: f64,
    /// The band above the target, if it differs from `tolerance`.
    pub scale_up_tolerance: Option<f64>,
    /// The band below the target, if it differs from `tolerance`.
    pub scale_down_tolerance: Option<f64>,
    /// How the samples become one value.
    pub aggregate: Aggregate,
    /// Only samples this recent are aggregated.
    pub window: Option<DurationMs>,
}

impl Params {
    /// Parameters with the given metric and target and every default.
    pub fn new(metric: &str, target: f64) -> Self {
        Params {
            metric: metric.into(),
            target,
            metric_type: MetricType::Average,
            tolerance: 0.1,
            scale_up_tolerance: None,
            scale_down_tolerance: None,
            aggregate: Aggregate::Latest,
            window: None,
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
        if !(self.target > 0.0 && self.target.is_finite()) {
            return Err(format!("parameter target must be > 0, got {}", self.target));
        }
        for (name, value) in [
            ("tolerance", Some(self.tolerance)),
            ("scale_up_tolerance", self.scale_up_tolerance),
            ("scale_down_tolerance", self.scale_down_tolerance),
        ] {
            if let Some(v) = value
                && !(v >= 0.0 && v.is_finite())
            {
                return Err(format!("parameter {name} must be >= 0, got {v}"));
            }
        }
        if let Some(w) = self.window
            && w.ms() <= 0
        {
            return Err("parameter window must be longer than 0s".into());
        }
        Ok(())
    }

    /// The band above the target.
    pub fn up_tolerance(&self) -> f64 {
        self.scale_up_tolerance.unwrap_or(self.tolerance)
    }

    /// The band below the target.
    pub fn down_tolerance(&self) -> f64 {
        self.scale_down_tolerance.unwrap_or(self.tolerance)
    }
}

/// Why the formula gave the count it gave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// The ratio is outside the band: `desired` is the formula's count.
    Scale,
    /// The ratio is inside the band: hold.
    WithinTolerance,
    /// Scaling up with unready replicas: counting them as idle gives
    /// `adjusted`, which is inside the band or below 1, so hold.
    UnreadyAbsorb {
        /// The ratio with unready replicas counted at load 0.
        adjusted: f64,
    },
    /// The metric is below target but the formula's count (`wanted`) is
    /// above the current one (more replicas ready than asked for): hold.
    DirectionFlip {
        /// What the formula gave.
        wanted: u32,
    },
    /// Replicas are asked for but none is ready: hold.
    NoReadyReplicas,
    /// The target runs no replica: `desired = ceil(ratio)`, no band.
    FromZero,
}

/// The formula's recommendation for one observation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recommendation {
    /// The replica count to run; the current count when holding.
    pub desired: u32,
    /// `metric / target` for an average, `metric / (target × current)` for a
    /// total (`metric / target` at zero replicas).
    pub ratio: f64,
    /// Why.
    pub outcome: Outcome,
}

/// Whether `ratio` is inside the band `[1 − down, 1 + up]` (bounds
/// included, as in HPA).
pub fn within_tolerance(ratio: f64, up: f64, down: f64) -> bool {
    if ratio >= 1.0 {
        ratio - 1.0 <= up + EPSILON
    } else {
        1.0 - ratio <= down + EPSILON
    }
}

/// `ceil(x)` as a replica count: 0 for `x ≤ 0` (or NaN), `u32::MAX` at
/// most, and a value within 10⁻⁹ (relative) of a whole number is taken as
/// that number rather than rounded up by floating-point noise.
pub fn ceil_replicas(x: f64) -> u32 {
    if x.is_nan() || x <= 0.0 {
        return 0;
    }
    let nearest = x.round();
    let count = if (x - nearest).abs() <= EPSILON * nearest.max(1.0) {
        nearest
    } else {
        x.ceil()
    };
    // `as` saturates at u32::MAX.
    count as u32
}

/// The HPA replica calculation for one (already aggregated) metric `value`
/// with `current` replicas asked for and `ready` of them ready. Pure: no
/// bounds, no context.
pub fn recommend(p: &Params, value: f64, current: u32, ready: u32) -> Recommendation {
    let (up, down) = (p.up_tolerance(), p.down_tolerance());
    let hold = |ratio, outcome| Recommendation {
        desired: current,
        ratio,
        outcome,
    };
    let scale = |ratio, desired| Recommendation {
        desired,
        ratio,
        outcome: Outcome::Scale,
    };
    if current == 0 {
        let ratio = value / p.target;
        return Recommendation {
            desired: ceil_replicas(ratio),
            ratio,
            outcome: Outcome::FromZero,
        };
    }
    match p.metric_type {
        MetricType::Total => {
            let ratio = value / (p.target * f64::from(current));
            if within_tolerance(ratio, up, down) {
                return hold(ratio, Outcome::WithinTolerance);
            }
            scale(ratio, ceil_replicas(value / p.target))
        }
        MetricType::Average => {
            let ratio = value / p.target;
            if ready == 0 {
                return hold(ratio, Outcome::NoReadyReplicas);
            }
            // Products before the division keep whole-number inputs exact.
            let wanted = ceil_replicas(value * f64::from(ready) / p.target);
            if ready < current && ratio > 1.0 {
                let adjusted = ratio * f64::from(ready) / f64::from(current);
                if adjusted < 1.0 || within_tolerance(adjusted, up, down) {
                    return hold(ratio, Outcome::UnreadyAbsorb { adjusted });
                }
                return scale(ratio, wanted);
            }
            if within_tolerance(ratio, up, down) {
                return hold(ratio, Outcome::WithinTolerance);
            }
            // More ready than asked-for replicas (a rollout surge) can make
            // the count rise while the metric is below target.
            if ratio < 1.0 && wanted > current {
                return hold(ratio, Outcome::DirectionFlip { wanted });
            }
            scale(ratio, wanted)
        }
    }
}

/// Decides one tick: reads the parameters and the metric from `ctx`, runs
/// [`recommend`], keeps the count within the scaler's bounds and explains
/// the result in the reason. This is everything `evaluate` does.
pub fn decide(ctx: &Context) -> Result<Decision, String> {
    let p = Params::from_context(ctx)?;
    let value = ctx.metric_value(&p.metric, p.aggregate, p.window.map(DurationMs::ms))?;
    if value < 0.0 {
        return Err(format!(
            "metric {:?} is negative ({}); target-tracking needs a value >= 0",
            p.metric,
            format_number(value)
        ));
    }
    let target = &ctx.target;
    let rec = recommend(&p, value, target.current, target.ready);
    let bounded = if target.min <= target.max {
        rec.desired.clamp(target.min, target.max)
    } else {
        rec.desired
    };
    let scaling = matches!(rec.outcome, Outcome::Scale | Outcome::FromZero);
    let desired = if scaling { bounded } else { target.current };
    let reason = reason(&p, value, target, &rec, desired);
    Ok(Decision::scale_or_hold(target.current, desired, reason))
}

/// The operator-facing explanation of `rec`.
fn reason(p: &Params, value: f64, target: &Target, rec: &Recommendation, desired: u32) -> String {
    let (current, ready) = (target.current, target.ready);
    let label = match (p.aggregate, p.window) {
        (Aggregate::Latest, _) => p.metric.clone(),
        (how, Some(w)) => format!("{} {how} over {w}", p.metric),
        (how, None) => format!("{} {how}", p.metric),
    };
    let ratio = rec.ratio;
    let observed = match p.metric_type {
        MetricType::Average => {
            let over = if ready != current && current > 0 {
                format!(" over {ready} ready of {current} replicas")
            } else {
                String::new()
            };
            format!(
                "{label} {} vs target {} (ratio {ratio:.2}{over})",
                format_number(value),
                format_number(p.target)
            )
        }
        MetricType::Total if current > 0 => format!(
            "{label} {} vs {} per replica × {current} replicas (ratio {ratio:.2})",
            format_number(value),
            format_number(p.target)
        ),
        MetricType::Total => format!(
            "{label} {} vs {} per replica (ratio {ratio:.2})",
            format_number(value),
            format_number(p.target)
        ),
    };
    let limit = if desired == rec.desired {
        String::new()
    } else if rec.desired > desired {
        // Clamped down: the upper bound stopped it (also when min = max).
        format!(" ({} wanted, max {})", rec.desired, target.max)
    } else {
        format!(" ({} wanted, min {})", rec.desired, target.min)
    };
    match rec.outcome {
        Outcome::Scale | Outcome::FromZero if desired != current => {
            format!("{observed}: {current} → {desired}{limit}")
        }
        Outcome::Scale | Outcome::FromZero => format!("{observed}: hold at {current}{limit}"),
        Outcome::WithinTolerance => {
            let (up, down) = (p.up_tolerance(), p.down_tolerance());
            let band = if up == down {
                format!("±{up}")
            } else {
                format!("+{up}/-{down}")
            };
            format!("{observed} within tolerance {band}: hold at {current}")
        }
        Outcome::UnreadyAbsorb { adjusted } => format!(
            "{observed}; counting the {} unready as idle the ratio is {adjusted:.2}, \
             so they should absorb the load: hold at {current}",
            current - ready
        ),
        Outcome::DirectionFlip { wanted } => format!(
            "{observed}: below target, yet {ready} ready replicas give {wanted} > {current}: \
             hold at {current}"
        ),

        Outcome::NoReadyReplicas => {
            format!("{observed}: none of {current} replicas is ready yet: hold")
        }
    }
}

/// The policy's self-description.
pub fn info() -> Info {
    Info::new(
        "target-tracking",
        env!("CARGO_PKG_VERSION"),
        "Keeps a metric at a target value with the Kubernetes HPA formula: desired = \
         ceil(ready × metric / target), holding while the ratio is within a tolerance band.",
    )
    .with_params(PARAMS)
}

/// The exported policy.
#[derive(Debug)]
pub struct TargetTracking;

impl Policy for TargetTracking {
    fn describe() -> Info {
        info()
    }

    fn evaluate(ctx: Context) -> Result<Decision, String> {
        decide(&ctx)
    }
}

scalewise_sdk::export_policy!(TargetTracking);

#[cfg(test)]
mod tests;
