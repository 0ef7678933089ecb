//! Helpers on the generated types that policy authors need again and again.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::params::{self, ParamSpec};
use crate::{Action, Context, Decision, Info, Metric, Parameter, ParameterKind};

/// Parses a duration such as `"30s"`, `"5m"`, `"1h 30m"` or `"250ms"`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

/// Parses a duration (see [`parse_duration`]) into whole milliseconds.
pub fn duration_ms(text: &str) -> Result<i64, String> {
    let d = parse_duration(text)?;
    i64::try_from(d.as_millis()).map_err(|_| format!("duration {text:?} is too long"))
}

/// A computed replica count as the `u32` a decision takes, or an error
/// that names it when it is not a whole number from 0 to `u32::MAX`: a NaN
/// (0/0 over an empty window) or a negative would become 0 through `as u32`
/// and scale in to `min`, a fraction would be cut. Round first
/// (`replicas((load / per).ceil())?`); the error makes the scaler hold.
pub fn replicas(count: f64) -> Result<u32, String> {
    if count.is_finite() && count.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&count) {
        Ok(count as u32)
    } else {
        Err(format!(
            "replica count {count} is not a whole number from 0 to {}",
            u32::MAX
        ))
    }
}

/// Formats a metric value for a reason string: one decimal from 1 up
/// (`83.0`, `1234.5`), no decimals from 100,000 up, three significant
/// digits below 1 (`0.0425`), and an exponent beyond 10¹⁵ or below 10⁻⁶
/// (`1.00e20`), so small and large metrics both read well.
pub fn format_number(value: f64) -> String {
    let magnitude = value.abs();
    if !value.is_finite() {
        format!("{value}")
    } else if magnitude >= 1e15 || (magnitude > 0.0 && magnitude < 1e-6) {
        // Beyond what digits read well: 1.23e20, 4.50e-9.
        format!("{value:.2e}")
    } else if magnitude >= 100_000.0 {
        format!("{value:.0}")
    } else if magnitude >= 1.0 || magnitude == 0.0 {
        format!("{value:.1}")
    } else {
        // Three significant digits, at most 9 decimals.
        let decimals = (2 - magnitude.log10().floor() as i32).clamp(1, 9) as usize;
        format!("{value:.decimals$}")
    }
}

/// A parameter that does not fit, named: `parameter aggregate: unknown
/// aggregate "p95x" ...` rather than only what serde says of its value.
pub(crate) fn params_error(e: serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    if path.is_empty() || path == "." {
        format!("invalid parameters: {}", e.inner())
    } else {
        format!("parameter {path}: {}", e.inner())
    }
}

impl Context {
    /// The metric the scaler's config names `name`, if the config defines it.
    pub fn metric(&self, name: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.name == name)
    }

    /// The policy's parameters, deserialized into `T`. The error names the
    /// parameter that did not fit, so it can be returned from `evaluate` as is.
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, String> {
        let mut json = serde_json::Deserializer::from_str(&self.parameters);
        serde_path_to_error::deserialize(&mut json).map_err(params_error)
    }

    /// The policy's parameters checked against its declarations (unknown
    /// names, missing required ones, wrong kinds, metric parameters that
    /// name no metric of the scaler), with defaults filled in, deserialized
    /// into `T`. See [`params`].
    pub fn params_checked<T: DeserializeOwned>(&self, specs: &[ParamSpec]) -> Result<T, String> {
        let map = params::resolve(specs, &self.parameters)?;
        for spec in specs.iter().filter(|s| s.kind == ParameterKind::Metric) {
            if let Some(name) = map.get(spec.name).and_then(|v| v.as_str())
                && self.metric(name).is_none()
            {
                self.metric_checked(name)
                    .map_err(|e| format!("parameter {}: {e}", spec.name))?;
            }
        }
        serde_path_to_error::deserialize(serde_json::Value::Object(map)).map_err(params_error)
    }

    /// The state this policy returned last time, decoded from JSON. `None` on
    /// the first evaluation or when the stored state is not valid JSON for `T`
    /// (for example after a new version changed its shape).
    pub fn state_json<T: DeserializeOwned>(&self) -> Option<T> {
        self.state
            .as_deref()
            .and_then(|bytes| serde_json::from_slice(bytes).ok())
    }

    /// Whether every metric was read successfully this tick.
    pub fn all_metrics_ok(&self) -> bool {
        self.metrics.iter().all(|m| m.error.is_none())
    }
}

/// One sample of a metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// When it was taken, in ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// Its value (finite).
    pub value: f64,
}

/// A run of a metric's samples (oldest first), as two parallel slices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window<'a> {
    /// Sample times, ms since the Unix epoch.
    pub timestamps_ms: &'a [i64],
    /// Sample values, same length as `timestamps_ms`.
    pub values: &'a [f64],
}

impl<'a> Window<'a> {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether it holds no samples.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The oldest sample.
    pub fn first(&self) -> Option<Point> {
        self.get(0)
    }

    /// The newest sample.
    pub fn last(&self) -> Option<Point> {
        self.len().checked_sub(1).and_then(|i| self.get(i))
    }

    /// The `i`-th sample, oldest first.
    pub fn get(&self, i: usize) -> Option<Point> {
        Some(Point {
            timestamp_ms: *self.timestamps_ms.get(i)?,
            value: *self.values.get(i)?,
        })
    }

    /// The samples, oldest first.
    pub fn iter(self) -> impl DoubleEndedIterator<Item = Point> + 'a {
        self.timestamps_ms
            .iter()
            .zip(self.values)
            .map(|(&timestamp_ms, &value)| Point {
                timestamp_ms,
                value,
            })
    }
}

impl Metric {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.values.len().min(self.timestamps_ms.len())
    }

    /// Whether the metric holds no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every sample, oldest first.
    pub fn all(&self) -> Window<'_> {
        let n = self.len();
        Window {
            timestamps_ms: &self.timestamps_ms[..n],
            values: &self.values[..n],
        }
    }

    /// The samples, oldest first.
    pub fn points(&self) -> impl DoubleEndedIterator<Item = Point> + '_ {
        self.all().iter()
    }

    /// The newest sample's value.
    pub fn latest(&self) -> Option<f64> {
        self.all().last().map(|p| p.value)
    }

    /// The newest sample.
    pub fn latest_point(&self) -> Option<Point> {
        self.all().last()
    }

    /// The samples taken in the last `duration_ms` before `now_ms` (inclusive
    /// of the window's start), oldest first.
    pub fn window(&self, now_ms: i64, duration_ms: i64) -> Window<'_> {
        let all = self.all();
        let start = now_ms.saturating_sub(duration_ms);
        let first = all.timestamps_ms.partition_point(|&t| t < start);
        let last = all
            .timestamps_ms
            .partition_point(|&t| t <= now_ms)
            .max(first);
        Window {
            timestamps_ms: &all.timestamps_ms[first..last],
            values: &all.values[first..last],
        }
    }

    /// Mean of the samples in the window, `None` when it holds none.
    pub fn mean_over(&self, now_ms: i64, duration_ms: i64) -> Option<f64> {
        let w = self.window(now_ms, duration_ms).values;
        (!w.is_empty()).then(|| w.iter().sum::<f64>() / w.len() as f64)
    }

    /// Largest sample in the window.
    pub fn max_over(&self, now_ms: i64, duration_ms: i64) -> Option<f64> {
        self.window(now_ms, duration_ms)
            .values
            .iter()
            .copied()
            .reduce(f64::max)
    }

    /// Smallest sample in the window.
    pub fn min_over(&self, now_ms: i64, duration_ms: i64) -> Option<f64> {
        self.window(now_ms, duration_ms)
            .values
            .iter()
            .copied()
            .reduce(f64::min)
    }

    /// The `q`-th percentile (0–100) of the samples in the window, by linear
    /// interpolation between the closest ranks.
    pub fn percentile_over(&self, now_ms: i64, duration_ms: i64, q: f64) -> Option<f64> {
        let mut values: Vec<f64> = self.window(now_ms, duration_ms).values.to_vec();
        if values.is_empty() {
            return None;
        }
        let rank = (q.clamp(0.0, 100.0) / 100.0) * (values.len() - 1) as f64;
        let lo = rank.floor() as usize;
        // Selecting the two ranks is linear; a full sort is n log n.
        let (_, &mut low, above) = values.select_nth_unstable_by(lo, f64::total_cmp);
        let high = if rank > lo as f64 {
            above.iter().copied().reduce(f64::min).unwrap_or(low)
        } else {
            low
        };
        Some(low + (high - low) * (rank - lo as f64))
    }

    /// Whether every sample in the last `duration_ms` is above `threshold`
    /// and the samples cover that duration ([`Metric::held_for`]), so a
    /// series that only began a minute ago is not "above for five minutes".
    pub fn above_for(&self, threshold: f64, now_ms: i64, duration_ms: i64) -> bool {
        self.held_for(now_ms, duration_ms, |v| v > threshold) == Held::Yes
    }

    /// Whether every sample in the last `duration_ms` is below `threshold`,
    /// with the same coverage rule as [`Metric::above_for`].
    pub fn below_for(&self, threshold: f64, now_ms: i64, duration_ms: i64) -> bool {
        self.held_for(now_ms, duration_ms, |v| v < threshold) == Held::Yes
    }

    /// Whether `holds` has been true of the metric for the last
    /// `duration_ms` before `now_ms`, and if not, why not. It has when every
    /// sample of that duration satisfies it and the samples cover the
    /// duration: the sample before it (the value in effect when the
    /// duration began) satisfies it too and is no further from the next one
    /// than the duration, or than the gap before it (a series sampled less
    /// often than the duration); or, with no sample before it (the series
    /// or the window read begins inside it), the first one lies within one
    /// sample interval (the shortest spacing of the duration's samples: the
    /// series' step, told by three samples at least; two alone could be any
    /// distance apart, and are allowed no slack) of its start. A duration of 0 or less: the newest
    /// sample decides alone.
    pub fn held_for(&self, now_ms: i64, duration_ms: i64, holds: impl Fn(f64) -> bool) -> Held {
        let newest = self.points().rev().find(|p| p.timestamp_ms <= now_ms);
        if duration_ms <= 0 {
            return match newest {
                Some(p) if holds(p.value) => Held::Yes,
                Some(_) => Held::No,
                None => Held::NoRecentSamples {
                    newest_age_ms: None,
                },
            };
        }
        let w = self.window(now_ms, duration_ms);
        let Some(first) = w.first() else {
            return Held::NoRecentSamples {
                newest_age_ms: newest.map(|p| now_ms - p.timestamp_ms),
            };
        };
        if !w.values.iter().all(|&v| holds(v)) {
            return Held::No;
        }
        // The step, not the widest gap: one gap (points dropped as NaN, say)
        // as long as the stretch missing at the start excused it. Two
        // samples tell no step: at -60 s and 0 they would have covered a
        // two-minute duration.
        let interval = if w.timestamps_ms.len() < 3 {
            0
        } else {
            w.timestamps_ms
                .windows(2)
                .map(|t| t[1] - t[0])
                .filter(|&d| d > 0)
                .min()
                .unwrap_or(0)
        };
        let start = now_ms.saturating_sub(duration_ms);
        if first.timestamp_ms <= start {
            return Held::Yes;
        }
        // The samples before the duration, newest last.
        let before = &self.timestamps_ms[..self.timestamps_ms.partition_point(|&t| t < start)];
        let Some(&prev_ms) = before.last() else {
            // The series (or the window the host read) begins inside the
            // duration: its first sample stands for its start when it lies
            // within one sample interval of it.
            if first.timestamp_ms <= start.saturating_add(interval.max(1)) {
                return Held::Yes;
            }
            return Held::ShortSeries {
                reach_ms: now_ms - first.timestamp_ms,
            };
        };
        // The value in effect when the duration began must hold too: with
        // samples at -130 s (50) and -61 s (85), "above 70 for 2m" has held
        // for 61 s, not 2 minutes.
        if !holds(self.values[before.len() - 1]) {
            return Held::No;
        }
        let gap = first.timestamp_ms - prev_ms;
        let gap_before = match before {
            [.., a, b] => b - a,
            _ => 0,
        };
        if gap <= duration_ms.max(interval).max(gap_before) {
            Held::Yes
        } else {
            Held::Gap { gap_ms: gap }
        }
    }
}

/// What [`Metric::held_for`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The condition held for the whole duration.
    Yes,
    /// A sample of the duration, or the one in effect at its start, does
    /// not satisfy it.
    No,
    /// No sample in the duration; `newest_age_ms`: how old the newest
    /// sample is (`None`: there is none).
    NoRecentSamples {
        /// Age of the newest sample at `now_ms`.
        newest_age_ms: Option<i64>,
    },
    /// Every sample there is satisfies it, but the series begins after the
    /// duration's start: it reaches back only `reach_ms` (the metric's
    /// window is shorter than the duration, or the series just began).
    ShortSeries {
        /// From the first sample to `now_ms`.
        reach_ms: i64,
    },
    /// Every sample of the duration satisfies it, and so does the one
    /// before, but between them lies a gap longer than the duration: what
    /// the metric did then is not known.
    Gap {
        /// The gap's length.
        gap_ms: i64,
    },
}

impl Decision {
    /// Keep the current replica count.
    pub fn hold(reason: impl Into<String>) -> Self {
        Decision {
            action: Action::Hold,
            reason: reason.into(),
            state: None,
        }
    }

    /// Run `replicas` replicas.
    pub fn scale_to(replicas: u32, reason: impl Into<String>) -> Self {
        Decision {
            action: Action::ScaleTo(replicas),
            reason: reason.into(),
            state: None,
        }
    }

    /// Scale from `current` to `desired` replicas, or hold when they are the
    /// same, so the journal shows a hold rather than a no-op scale.
    pub fn scale_or_hold(current: u32, desired: u32, reason: impl Into<String>) -> Self {
        if desired == current {
            Decision::hold(reason)
        } else {
            Decision::scale_to(desired, reason)
        }
    }

    /// Attaches raw state bytes to hand back next time.
    pub fn with_state(mut self, state: Vec<u8>) -> Self {
        self.state = Some(state);
        self
    }

    /// Attaches `state` encoded as JSON; read it back with [`Context::state_json`].
    pub fn with_state_json<T: Serialize>(self, state: &T) -> Self {
        // Serializing plain data to JSON does not fail; an empty state is the
        // safe fallback if a custom Serialize impl does.
        self.with_state(serde_json::to_vec(state).unwrap_or_default())
    }

    /// The desired replica count, or `None` for hold.
    pub fn desired(&self) -> Option<u32> {
        match self.action {
            Action::Hold => None,
            Action::ScaleTo(n) => Some(n),
        }
    }
}

impl Info {
    /// A description with no parameters yet.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Info {
            name: name.into(),
            version: version.into(),
            description: description.into(),
            parameters: Vec::new(),
        }
    }

    /// Adds an accepted parameter.
    pub fn parameter(mut self, parameter: Parameter) -> Self {
        self.parameters.push(parameter);
        self
    }

    /// Adds every parameter declared in `specs` (see [`params`]).
    pub fn with_params(mut self, specs: &[ParamSpec]) -> Self {
        self.parameters
            .extend(specs.iter().map(ParamSpec::to_parameter));
        self
    }
}

impl Parameter {
    /// A parameter config must give.
    pub fn required(
        name: impl Into<String>,
        kind: ParameterKind,
        description: impl Into<String>,
    ) -> Self {
        Parameter {
            name: name.into(),
            description: description.into(),
            kind,
            required: true,
            default: None,
        }
    }

    /// A parameter with a default, given as a JSON value (`json!(0.1)`).
    pub fn optional(
        name: impl Into<String>,
        kind: ParameterKind,
        default: serde_json::Value,
        description: impl Into<String>,
    ) -> Self {
        Parameter {
            name: name.into(),
            description: description.into(),
            kind,
            required: false,
            default: Some(default.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(points: &[(i64, f64)]) -> Metric {
        Metric {
            name: "m".into(),
            timestamps_ms: points.iter().map(|p| p.0).collect(),
            values: points.iter().map(|p| p.1).collect(),
            error: None,
        }
    }

    #[test]
    fn window_and_aggregates() {
        let m = series(&[(0, 1.0), (10, 2.0), (20, 3.0), (30, 4.0)]);
        assert_eq!(m.latest(), Some(4.0));
        assert_eq!(m.window(30, 10).len(), 2);
        assert_eq!(m.mean_over(30, 10), Some(3.5));
        assert_eq!(m.max_over(30, 30), Some(4.0));
        assert_eq!(m.min_over(30, 15), Some(3.0));
        assert_eq!(m.mean_over(100, 10), None);
    }

    #[test]
    fn percentile_interpolates() {
        let m = series(&[(1, 10.0), (2, 20.0), (3, 30.0), (4, 40.0), (5, 50.0)]);
        assert_eq!(m.percentile_over(5, 10, 50.0), Some(30.0));
        assert_eq!(m.percentile_over(5, 10, 100.0), Some(50.0));
        assert_eq!(m.percentile_over(5, 10, 0.0), Some(10.0));
        assert_eq!(m.percentile_over(5, 10, 75.0), Some(40.0));
        assert_eq!(m.percentile_over(5, 10, 90.0), Some(46.0));
    }

    #[test]
    fn percentile_matches_a_full_sort() {
        // Unsorted values with duplicates, from a fixed linear congruential sequence.
        let mut x: u64 = 42;
        let values: Vec<f64> = (0..257)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) % 50) as f64
            })
            .collect();
        let pts: Vec<(i64, f64)> = (0i64..).zip(values.iter().copied()).collect();
        let m = series(&pts);
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        for q in [0.0, 1.0, 12.5, 33.3, 50.0, 90.0, 95.0, 99.0, 99.9, 100.0] {
            let rank = q / 100.0 * (sorted.len() - 1) as f64;
            let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
            let want = sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64);
            assert_eq!(m.percentile_over(1000, 10_000, q), Some(want), "p{q}");
        }
        assert_eq!(series(&[(0, 7.0)]).percentile_over(0, 1, 95.0), Some(7.0));
    }

    #[test]
    fn above_for_needs_coverage_and_all_points() {
        // Samples every 15 s for 5 minutes, all above 70.
        let pts: Vec<(i64, f64)> = (0..=20).map(|i| (i * 15_000, 80.0)).collect();
        let m = series(&pts);
        assert!(m.above_for(70.0, 300_000, 300_000));
        assert!(!m.above_for(90.0, 300_000, 300_000));
        // Only the last minute of data: not "above for five minutes".
        let short = series(&pts[16..]);
        assert!(!short.above_for(70.0, 300_000, 300_000));
        // One dip inside the window breaks it.
        let mut dip = pts.clone();
        dip[10].1 = 50.0;
        assert!(!series(&dip).above_for(70.0, 300_000, 300_000));
        assert!(series(&dip).below_for(100.0, 300_000, 300_000));
        assert!(!series(&[]).above_for(0.0, 0, 1));
    }

    #[test]
    fn held_for_says_why_not() {
        // 15 s samples, the last 5 minutes all above 70 (and before them 50).
        let mut pts: Vec<(i64, f64)> = (0..=20).map(|i| (600_000 + i * 15_000, 80.0)).collect();
        pts.insert(0, (300_000, 50.0));
        let now = 900_000;
        let above = |v: f64| v > 70.0;
        assert_eq!(series(&pts).held_for(now, 300_000, above), Held::Yes);
        // The value in effect when the duration began did not hold.
        let late: Vec<_> = [(now - 130_000, 50.0), (now, 150.0)].into();
        assert_eq!(series(&late).held_for(now, 120_000, above), Held::No);
        // Sparse samples: the one at -130 s was in effect when the 2 minutes
        // began, so above 70 since -61 s is 61 s, not 2 minutes (the widest
        // gap inside the duration does not excuse it).
        let sparse_start: Vec<_> =
            [(now - 130_000, 50.0), (now - 61_000, 85.0), (now, 85.0)].into();
        assert_eq!(
            series(&sparse_start).held_for(now, 120_000, above),
            Held::No
        );
        // An hour-old sample that did hold does not vouch for the hour since.
        let gap: Vec<_> = [(now - 3_600_000, 80.0), (now - 20_000, 80.0), (now, 80.0)].into();
        assert_eq!(
            series(&gap).held_for(now, 300_000, above),
            Held::Gap { gap_ms: 3_580_000 }
        );
        // A series sampled every minute, judged over 30 s: the sample before
        // the duration is one interval back, which is no gap.
        let sparse: Vec<_> = [
            (now - 130_000, 80.0),
            (now - 70_000, 80.0),
            (now - 10_000, 80.0),
        ]
        .into();
        assert_eq!(series(&sparse).held_for(now, 30_000, above), Held::Yes);
        // Nothing in the duration: how old the newest sample is.
        let old: Vec<_> = [(now - 200_000, 80.0)].into();
        assert_eq!(
            series(&old).held_for(now, 120_000, above),
            Held::NoRecentSamples {
                newest_age_ms: Some(200_000)
            }
        );
        // Samples every 15 s since -30 s, and one at -165 s (those between
        // dropped, as NaN): the 135 s gap does not stand for the 135 s
        // missing at the start of 5 minutes.
        let gapped: Vec<_> = [-165_000, -30_000, -15_000, 0]
            .map(|t| (now + t, 80.0))
            .into();
        assert_eq!(
            series(&gapped).held_for(now, 300_000, above),
            Held::ShortSeries { reach_ms: 165_000 }
        );
        // A series whose first point is one step into the duration covers
        // it.
        let stepped: Vec<_> = (1..=20)
            .map(|i| (now - 300_000 + i * 15_000, 80.0))
            .collect();
        assert_eq!(series(&stepped).held_for(now, 300_000, above), Held::Yes);
        // Two samples a minute apart are not two minutes, however they are
        // spaced; three a minute apart, from -2m, are.
        let two: Vec<_> = [(now - 60_000, 80.0), (now, 80.0)].into();
        assert_eq!(
            series(&two).held_for(now, 120_000, above),
            Held::ShortSeries { reach_ms: 60_000 }
        );
        let three: Vec<_> = [-120_000, -60_000, 0].map(|t| (now + t, 80.0)).into();
        assert_eq!(series(&three).held_for(now, 120_000, above), Held::Yes);
        // Three tell the step: the first stands for one step before it.
        let slack: Vec<_> = [-50_000, -25_000, 0].map(|t| (now + t, 80.0)).into();
        assert_eq!(series(&slack).held_for(now, 60_000, above), Held::Yes);
        // Began a minute ago.
        let short: Vec<_> = (0..5).map(|i| (now - 60_000 + i * 15_000, 80.0)).collect();
        assert_eq!(
            series(&short).held_for(now, 300_000, above),
            Held::ShortSeries { reach_ms: 60_000 }
        );
        assert_eq!(
            series(&[]).held_for(now, 0, above),
            Held::NoRecentSamples {
                newest_age_ms: None
            }
        );
    }

    #[test]
    fn replica_counts_are_checked() {
        assert_eq!(replicas(4.0), Ok(4));
        assert_eq!(replicas(0.0), Ok(0));
        assert_eq!(replicas(f64::from(u32::MAX)), Ok(u32::MAX));
        for bad in [f64::NAN, -1.0, 4.7, f64::INFINITY, 5e9] {
            assert!(replicas(bad).is_err(), "{bad}");
        }
        assert_eq!(
            replicas(f64::NAN).unwrap_err(),
            "replica count NaN is not a whole number from 0 to 4294967295"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ms("5m"), Ok(300_000));
        assert_eq!(duration_ms("1h 30m"), Ok(5_400_000));
        assert!(duration_ms("five").is_err());
    }

    #[test]
    fn zero_duration_means_the_newest_sample() {
        let m = series(&[(0, 80.0), (10_000, 90.0), (20_000, 50.0)]);
        assert!(m.above_for(70.0, 15_000, 0));
        assert!(!m.above_for(70.0, 25_000, 0));
        assert!(m.below_for(60.0, 25_000, 0));
        assert!(!series(&[]).below_for(60.0, 25_000, 0));
    }

    #[test]
    fn numbers_read_well_in_reasons() {
        let cases = [
            (83.0, "83.0"),
            (60.0, "60.0"),
            (1.38, "1.4"),
            (1234.56, "1234.6"),
            (123_456.7, "123457"),
            (0.0, "0.0"),
            (0.5, "0.500"),
            (0.04251, "0.0425"),
            (0.000_012_34, "0.0000123"),
            (-2.5, "-2.5"),
            (-0.25, "-0.250"),
            (1e-12, "1.00e-12"),
            (1e-300, "1.00e-300"),
            (1e300, "1.00e300"),
            (-2.5e18, "-2.50e18"),
            (9.9e14, "990000000000000"),
        ];
        for (value, want) in cases {
            assert_eq!(format_number(value), want, "{value}");
        }
    }

    #[test]
    fn scale_or_hold_holds_on_no_change() {
        assert_eq!(Decision::scale_or_hold(4, 4, "same").action, Action::Hold);
        assert_eq!(
            Decision::scale_or_hold(4, 6, "up").action,
            Action::ScaleTo(6)
        );
        assert_eq!(Decision::scale_or_hold(4, 6, "up").reason, "up");
    }

    #[test]
    fn params_checked_fills_defaults_and_checks_metric_names() {
        use crate::testing::ContextBuilder;
        const SPECS: &[ParamSpec] = &[
            ParamSpec::required("metric", ParameterKind::Metric, "m"),
            ParamSpec::optional("target", ParameterKind::Number, "60", "t"),
        ];
        #[derive(serde::Deserialize)]
        struct P {
            metric: String,
            target: f64,
        }
        let info = Info::new("x", "1", "d").with_params(SPECS);
        assert_eq!(info.parameters.len(), 2);
        assert_eq!(info.parameters[1].default.as_deref(), Some("60"));

        let ctx = ContextBuilder::new()
            .metric("cpu", &[(0, 1.0)])
            .params(serde_json::json!({"metric": "cpu"}))
            .build();
        let p: P = ctx.params_checked(SPECS).unwrap();
        assert_eq!((p.metric.as_str(), p.target), ("cpu", 60.0));

        let ctx = ContextBuilder::new()
            .metric("cpu", &[(0, 1.0)])
            .params(serde_json::json!({"metric": "mem"}))
            .build();
        assert_eq!(
            ctx.params_checked::<P>(SPECS).err().unwrap(),
            "parameter metric: metric \"mem\" is not one of the scaler's metrics (cpu)"
        );
        // A metric that failed this tick is still the scaler's metric.
        let ctx = ContextBuilder::new()
            .failed_metric("cpu", "down")
            .params(serde_json::json!({"metric": "cpu"}))
            .build();
        assert!(ctx.params_checked::<P>(SPECS).is_ok());
    }
}
