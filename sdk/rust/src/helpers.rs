//! Helpers on the generated types that policy authors need again and again.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Action, Context, Decision, Info, Metric, Parameter, ParameterKind, Point};

/// Parses a duration such as `"30s"`, `"5m"`, `"1h 30m"` or `"250ms"`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

/// Parses a duration (see [`parse_duration`]) into whole milliseconds.
pub fn duration_ms(text: &str) -> Result<i64, String> {
    let d = parse_duration(text)?;
    i64::try_from(d.as_millis()).map_err(|_| format!("duration {text:?} is too long"))
}

impl Context {
    /// The metric the scaler's config names `name`, if the config defines it.
    pub fn metric(&self, name: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.name == name)
    }

    /// The policy's parameters, deserialized into `T`. The error names the
    /// parameter that did not fit, so it can be returned from `evaluate` as is.
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_str(&self.parameters).map_err(|e| format!("invalid parameters: {e}"))
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

impl Metric {
    /// The newest sample's value.
    pub fn latest(&self) -> Option<f64> {
        self.points.last().map(|p| p.value)
    }

    /// The newest sample.
    pub fn latest_point(&self) -> Option<&Point> {
        self.points.last()
    }

    /// The samples taken in the last `duration_ms` before `now_ms` (inclusive
    /// of the window's start), oldest first.
    pub fn window(&self, now_ms: i64, duration_ms: i64) -> &[Point] {
        let start = now_ms.saturating_sub(duration_ms);
        let first = self.points.partition_point(|p| p.timestamp_ms < start);
        let last = self.points.partition_point(|p| p.timestamp_ms <= now_ms);
        &self.points[first..last.max(first)]
    }

    /// Mean of the samples in the window, `None` when it holds none.
    pub fn mean_over(&self, now_ms: i64, duration_ms: i64) -> Option<f64> {
        let w = self.window(now_ms, duration_ms);
        (!w.is_empty()).then(|| w.iter().map(|p| p.value).sum::<f64>() / w.len() as f64)
    }

    /// Largest sample in the window.
    pub fn max_over(&self, now_ms: i64, duration_ms: i64) -> Option<f64> {
        self.window(now_ms, duration_ms)
            .iter()
            .map(|p| p.value)
            .reduce(f64::max)
    }

    /// Smallest sample in the window.
    pub fn min_over(&self, now_ms: i64, duration_ms: i64) -> Option<f64> {
        self.window(now_ms, duration_ms)
            .iter()
            .map(|p| p.value)
            .reduce(f64::min)
    }

    /// The `q`-th percentile (0–100) of the samples in the window, by linear
    /// interpolation between the closest ranks.
    pub fn percentile_over(&self, now_ms: i64, duration_ms: i64, q: f64) -> Option<f64> {
        let mut values: Vec<f64> = self
            .window(now_ms, duration_ms)
            .iter()
            .map(|p| p.value)
            .collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let rank = (q.clamp(0.0, 100.0) / 100.0) * (values.len() - 1) as f64;
        let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
        Some(values[lo] + (values[hi] - values[lo]) * (rank - lo as f64))
    }

    /// Whether every sample in the last `duration_ms` is above `threshold`
    /// and the samples reach back to the start of that duration (within one
    /// sample interval), so a series that only began a minute ago is not
    /// "above for five minutes".
    pub fn above_for(&self, threshold: f64, now_ms: i64, duration_ms: i64) -> bool {
        self.holds_for(now_ms, duration_ms, |v| v > threshold)
    }

    /// Whether every sample in the last `duration_ms` is below `threshold`,
    /// with the same coverage rule as [`Metric::above_for`].
    pub fn below_for(&self, threshold: f64, now_ms: i64, duration_ms: i64) -> bool {
        self.holds_for(now_ms, duration_ms, |v| v < threshold)
    }

    fn holds_for(&self, now_ms: i64, duration_ms: i64, pred: impl Fn(f64) -> bool) -> bool {
        let w = self.window(now_ms, duration_ms);
        let Some(first) = w.first() else {
            return false;
        };
        // One sample interval of slack: the largest gap between samples, or
        // the whole duration when the window holds a single sample.
        let interval = w
            .windows(2)
            .map(|p| p[1].timestamp_ms - p[0].timestamp_ms)
            .max()
            .unwrap_or(0);
        // A point just before the window also proves coverage.
        let before = self
            .points
            .iter()
            .rev()
            .find(|p| p.timestamp_ms < now_ms.saturating_sub(duration_ms));
        let covered =
            before.is_some() || first.timestamp_ms <= now_ms - duration_ms + interval.max(1);
        covered && w.iter().all(|p| pred(p.value))
    }
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
            points: points
                .iter()
                .map(|&(timestamp_ms, value)| Point {
                    timestamp_ms,
                    value,
                })
                .collect(),
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
    fn durations() {
        assert_eq!(duration_ms("5m"), Ok(300_000));
        assert_eq!(duration_ms("1h 30m"), Ok(5_400_000));
        assert!(duration_ms("five").is_err());
    }
}
