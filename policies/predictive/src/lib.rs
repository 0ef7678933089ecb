//! `predictive`: provisions ahead of a load that repeats, from its own
//! history. Reactive policies add replicas once the load is already there
//! and wait out the replicas' start-up; for a service whose day looks like
//! the days before it, the load of the coming minutes is already known.
//!
//! At each tick the policy looks at the same moment of each of the last
//! `cycles` periods (a day, by default) and takes the peak of the metric in
//! the `horizon` that followed it there: what the coming `horizon` brought
//! on each of those days. Those peaks combine (`median` by default, so one
//! unusual day neither leads nor misleads) into the forecast, and
//!
//! ```text
//! desired = ceil(forecast × headroom / per_replica)
//! ```
//!
//! within the scaler's `min`..`max`.
//!
//! With fewer than `min_cycles` past periods in the metric's samples (a new
//! service, a history shorter than the window) it holds, saying so; a hold
//! votes for the current count, so beside a reactive policy it blocks that
//! policy's scale-in until the forecast exists. `without_forecast = "min"`
//! answers the scaler's `min` instead, leaving the count to the others (on
//! its own, that scales the target in to `min`).
//!
//! # Use it beside a reactive policy
//!
//! Give a scaler this policy *and* a reactive one (`target-tracking` on CPU,
//! say): the host takes the larger answer (scale-out wins), so capacity is
//! there before the daily rise and the reactive policy still answers what
//! history did not foresee. Scale-in needs both to agree, so this policy
//! never holds a scaler above what the forecast needs, nor drags it below
//! what the reactive policy needs now.
//!
//! # Parameters
//!
//! | name | kind | default | meaning |
//! |---|---|---|---|
//! | `metric` | metric | required | the load (requests/s, jobs/s): a sum over the whole service, not a per-replica average |
//! | `per_replica` | number | required, > 0 | the load one replica should carry (at the utilisation you want, not at its limit) |
//! | `horizon` | duration | `"10m"` | how far ahead to provision: a replica's start-up time plus a tick or two |
//! | `period` | duration | `"1d"` | the length of the load's cycle (`"7d"` for a weekly one) |
//! | `cycles` | integer | `7` | how many past periods to look at |
//! | `min_cycles` | integer | `2` | hold unless at least this many past periods have samples |
//! | `combine` | text | `"median"` | how the past periods' peaks become the forecast: `median`, `mean` or `max` |
//! | `headroom` | number | `1.0` | multiplies the forecast |
//! | `without_forecast` | text | `"hold"` | with fewer than `min_cycles` periods: `hold`, or `min` (the scaler's min, so the other policies decide) |
//! | `timezone` | text | `"UTC"` | the IANA time zone the load's days follow: with a `period` of whole days, each past day is looked at at the same local time, across daylight-saving changes |
//!
//! The metric needs a `window` in the scaler's config of `cycles × period`
//! (the oldest moment looked at; an hour more in a `timezone` with daylight
//! saving, where a past day can be 25 hours long) and a `step` no longer
//! than `horizon` (each past horizon must hold a sample): `window = "7d"`,
//! `step = "5m"` for the defaults (`"7d 1h"` in such a zone), 2,017 samples
//! a tick. `horizon` must be shorter than `period`.
//!
//! The logic is the plain function [`decide`]; the Wasm export only calls it.
#![deny(missing_docs)]

use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};
use scalewise_sdk::params::ParamSpec;
use scalewise_sdk::prelude::*;
use serde::Deserialize;

/// Slack for floating-point noise in `ceil`.
const EPSILON: f64 = 1e-9;

/// The parameters this policy accepts; the source of both `describe()` and
/// [`Params`].
pub const PARAMS: &[ParamSpec] = &[
    ParamSpec::required(
        "metric",
        ParameterKind::Metric,
        "The load, summed over the whole service (requests/s). Give it a window of cycles × \
         period (an hour more in a time zone with daylight saving) and a step no longer than \
         horizon.",
    ),
    ParamSpec::required(
        "per_replica",
        ParameterKind::Number,
        "The load one replica should carry, > 0.",
    ),
    ParamSpec::optional(
        "horizon",
        ParameterKind::Duration,
        "\"10m\"",
        "How far ahead to provision: a replica's start-up time plus a tick or two.",
    ),
    ParamSpec::optional(
        "period",
        ParameterKind::Duration,
        "\"1d\"",
        "The length of the load's cycle; longer than horizon.",
    ),
    ParamSpec::optional(
        "cycles",
        ParameterKind::Integer,
        "7",
        "How many past periods to look at, at least 1.",
    ),
    ParamSpec::optional(
        "min_cycles",
        ParameterKind::Integer,
        "2",
        "Hold unless at least this many past periods have samples; 1 to cycles.",
    ),
    ParamSpec::optional(
        "combine",
        ParameterKind::Text,
        "\"median\"",
        "How the past periods' peaks become the forecast: median, mean or max.",
    ),
    ParamSpec::optional(
        "headroom",
        ParameterKind::Number,
        "1.0",
        "Multiplies the forecast, > 0.",
    ),
    ParamSpec::optional(
        "without_forecast",
        ParameterKind::Text,
        "\"hold\"",
        "What to answer with fewer than min_cycles periods: hold (blocks the other policies' \
         scale-in) or min (the scaler's min, leaving the count to the other policies).",
    ),
    ParamSpec::optional(
        "timezone",
        ParameterKind::Text,
        "\"UTC\"",
        "The IANA time zone the load's days follow (e.g. \"Europe/Berlin\"): with a period of \
         whole days, each past day is looked at at the same local time, across daylight-saving \
         changes.",
    ),
];

/// A day, ms.
const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// What the policy answers while it has no forecast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum WithoutForecast {
    /// Hold: the count stays unless another policy scales out.
    Hold,
    /// The scaler's `min`: a vote that never outbids the other policies.
    Min,
}

impl TryFrom<String> for WithoutForecast {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        match name.as_str() {
            "hold" => Ok(WithoutForecast::Hold),
            "min" => Ok(WithoutForecast::Min),
            _ => Err(format!(
                "parameter without_forecast must be hold or min, got {name:?}"
            )),
        }
    }
}

/// How the past periods' peaks combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Combine {
    /// The middle peak (the mean of the two middle ones for an even count).
    Median,
    /// The mean of the peaks.
    Mean,
    /// The highest peak.
    Max,
}

impl TryFrom<String> for Combine {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        match name.as_str() {
            "median" => Ok(Combine::Median),
            "mean" => Ok(Combine::Mean),
            "max" => Ok(Combine::Max),
            _ => Err(format!(
                "parameter combine must be median, mean or max, got {name:?}"
            )),
        }
    }
}

impl Combine {
    /// The forecast from the peaks (not empty).
    pub fn apply(self, peaks: &[f64]) -> f64 {
        match self {
            Combine::Max => peaks.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Combine::Mean => peaks.iter().sum::<f64>() / peaks.len() as f64,
            Combine::Median => {
                let mut sorted = peaks.to_vec();
                sorted.sort_by(f64::total_cmp);
                let mid = sorted.len() / 2;
                if sorted.len() % 2 == 1 {
                    sorted[mid]
                } else {
                    (sorted[mid - 1] + sorted[mid]) / 2.0
                }
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Combine::Median => "median",
            Combine::Mean => "mean",
            Combine::Max => "max",
        }
    }
}

/// The policy's parameters, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Params {
    /// The load metric.
    pub metric: String,
    /// The load one replica should carry.
    pub per_replica: f64,
    /// How far ahead to provision.
    pub horizon: DurationMs,
    /// The length of the load's cycle.
    pub period: DurationMs,
    /// How many past periods to look at.
    pub cycles: i64,
    /// How many must have samples.
    pub min_cycles: i64,
    /// How their peaks combine.
    pub combine: Combine,
    /// Multiplies the forecast.
    pub headroom: f64,
    /// What to answer without a forecast.
    pub without_forecast: WithoutForecast,
    /// The time zone the load's days follow.
    #[serde(deserialize_with = "time_zone")]
    pub timezone: TimeZone,
}

/// A time zone of the IANA database, by name.
fn time_zone<'de, D: serde::Deserializer<'de>>(de: D) -> Result<TimeZone, D::Error> {
    let name = String::deserialize(de)?;
    TimeZone::get(&name).map_err(|_| {
        serde::de::Error::custom(format!(
            "parameter timezone: {name:?} is not a time zone of the IANA database (e.g. \
             \"Europe/Berlin\", \"America/New_York\", \"UTC\")"
        ))
    })
}

impl Params {
    /// Reads and checks the parameters of `ctx`.
    pub fn from_context(ctx: &Context) -> Result<Self, String> {
        let params: Params = ctx.params_checked(PARAMS)?;
        params.validate()?;
        Ok(params)
    }

    /// Checks the values the kinds alone do not rule out.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("per_replica", self.per_replica),
            ("headroom", self.headroom),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(format!(
                    "parameter {name} must be a number > 0, got {}",
                    format_number(value)
                ));
            }
        }
        if self.horizon.ms() <= 0 || self.horizon.ms() >= self.period.ms() {
            return Err(format!(
                "parameter horizon ({}) must be longer than 0s and shorter than period ({})",
                self.horizon, self.period
            ));
        }
        if !(1..=1000).contains(&self.cycles) {
            return Err(format!(
                "parameter cycles must be between 1 and 1000, got {}",
                self.cycles
            ));
        }
        if !(1..=self.cycles).contains(&self.min_cycles) {
            return Err(format!(
                "parameter min_cycles must be between 1 and cycles ({}), got {}",
                self.cycles, self.min_cycles
            ));
        }
        Ok(())
    }
}

/// The peak of `metric` in the `horizon` that followed `now_ms` in each of
/// the last `cycles` periods, most recent period first; `None` for a
/// period whose horizon holds no sample.
pub fn past_peaks(p: &Params, metric: &Metric, now_ms: i64) -> Vec<Option<f64>> {
    (1..=p.cycles)
        .map(|k| {
            let then = period_before(p, now_ms, k);
            // The samples in [then, then + horizon].
            metric.max_over(then.saturating_add(p.horizon.ms()), p.horizon.ms())
        })
        .collect()
}

/// The same moment `k` periods before `now_ms`. A period of whole days
/// counts days of the time zone's calendar: the same local time, so a day
/// of 23 or 25 hours (a daylight-saving change) does not shift the days
/// before it by an hour. A local time a change skipped that day is taken
/// an hour later, one it repeated at its first occurrence.
pub fn period_before(p: &Params, now_ms: i64, k: i64) -> i64 {
    let fixed = now_ms.saturating_sub(k.saturating_mul(p.period.ms()));
    if p.period.ms() % DAY_MS != 0 {
        return fixed;
    }
    let days = k.saturating_mul(p.period.ms() / DAY_MS);
    let local = Timestamp::from_millisecond(now_ms)
        .ok()
        .map(|now| now.to_zoned(p.timezone.clone()));
    local
        .and_then(|now| now.checked_sub(Span::new().try_days(days).ok()?).ok())
        .map_or(fixed, |then| then.timestamp().as_millisecond())
}

/// The window the metric needs: `cycles × period`, and an hour more for a
/// period of whole days in a named time zone (past a fall-back of the
/// clocks the oldest day looked at is an hour further back; a zone without
/// daylight saving gets the hour too, harmlessly).
pub fn window_needed(p: &Params) -> DurationMs {
    let span = p.cycles.saturating_mul(p.period.ms());
    let local_days = p.period.ms() % DAY_MS == 0 && p.timezone.to_fixed_offset().is_err();
    DurationMs(match local_days {
        true => span.saturating_add(60 * 60 * 1000),
        false => span,
    })
}

/// `ceil(load / per_replica)`, with results within 10⁻⁹ of a whole
/// number taken as that number.
pub fn replicas_for(load: f64, per_replica: f64) -> u32 {
    let exact = load / per_replica;
    let rounded = exact.round();
    let whole = if (exact - rounded).abs() < EPSILON {
        rounded
    } else {
        exact.ceil()
    };
    whole.clamp(0.0, f64::from(u32::MAX)) as u32
}

/// Decides one tick: reads the parameters and the metric from `ctx`,
/// forecasts the coming horizon's peak from the past periods and sizes for
/// it. This is everything `evaluate` does.
pub fn decide(ctx: &Context) -> Result<Decision, String> {
    let p = Params::from_context(ctx)?;
    let metric = ctx.metric_checked(&p.metric)?;
    let t = &ctx.target;
    let peaks = past_peaks(&p, metric, ctx.now_ms);
    let found: Vec<f64> = peaks.iter().flatten().copied().collect();
    let name = &p.metric;
    if (found.len() as i64) < p.min_cycles {
        let why = format!(
            "{name} has samples in {} of the last {} periods of {} at this time of the period, \
             fewer than min_cycles {}: no forecast",
            found.len(),
            p.cycles,
            p.period,
            p.min_cycles,
        );
        let window = window_needed(&p);
        return Ok(match p.without_forecast {
            WithoutForecast::Hold => Decision::hold(format!(
                "{why}, hold at {} (is the metric's window {window}?)",
                t.current
            )),
            WithoutForecast::Min => Decision::scale_to(
                t.min,
                format!("{why}: min {} (the other policies decide)", t.min),
            ),
        });
    }
    let forecast = p.combine.apply(&found) * p.headroom;
    let needed = replicas_for(forecast, p.per_replica);
    // Not `clamp`: it panics on a context with min above max.
    let desired = needed.max(t.min).min(t.max);
    let headroom = if p.headroom == 1.0 {
        String::new()
    } else {
        format!(" × headroom {}", format_number(p.headroom))
    };
    let bound = if desired == needed {
        String::new()
    } else if desired == t.max {
        format!(" (max {desired})")
    } else {
        format!(" (min {desired})")
    };
    let outcome = if desired == t.current {
        format!("hold at {desired}")
    } else {
        format!("{} → {desired}", t.current)
    };
    let reason = format!(
        "{name} forecast for the next {}: {} ({} of the peaks of {} past periods of {}{headroom}), \
         {} per replica needs {needed}: {outcome}{bound}",
        p.horizon,
        format_number(forecast),
        p.combine.name(),
        found.len(),
        p.period,
        format_number(p.per_replica),
    );
    Ok(Decision::scale_or_hold(t.current, desired, reason))
}

/// The policy's self-description.
pub fn info() -> Info {
    Info::new(
        "predictive",
        env!("CARGO_PKG_VERSION"),
        "Provisions for the load the coming horizon brought in past periods (days): the \
         combined peak of the metric there, divided by per_replica. Use beside a reactive policy.",
    )
    .with_params(PARAMS)
}

/// The exported policy.
#[derive(Debug)]
pub struct Predictive;

impl Policy for Predictive {
    fn describe() -> Info {
        info()
    }

    fn evaluate(ctx: Context) -> Result<Decision, String> {
        decide(&ctx)
    }
}

scalewise_sdk::export_policy!(Predictive);

#[cfg(test)]
mod tests;
