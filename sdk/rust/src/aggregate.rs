//! Reducing a metric's window to one value, chosen by name in config.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::params::DurationMs;
use crate::{Context, Metric};

/// How a metric's samples are reduced to one value: by name in config
/// (`"latest"`, `"mean"`, `"min"`, `"max"`, `"median"`, `"p95"`, `"p99.9"`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Aggregate {
    /// The newest sample.
    #[default]
    Latest,
    /// The arithmetic mean.
    Mean,
    /// The smallest sample.
    Min,
    /// The largest sample.
    Max,
    /// The 50th percentile.
    Median,
    /// The given percentile (0–100), interpolated between closest ranks.
    Percentile(f64),
}

/// The names [`Aggregate`] accepts, for parameter descriptions.
pub const AGGREGATE_NAMES: &str = "latest, mean, min, max, median or pNN (e.g. p95)";

impl FromStr for Aggregate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("unknown aggregate {text:?}: use {AGGREGATE_NAMES}");
        Ok(match text {
            "latest" | "last" => Aggregate::Latest,
            "mean" | "avg" | "average" => Aggregate::Mean,
            "min" => Aggregate::Min,
            "max" => Aggregate::Max,
            "median" => Aggregate::Median,
            _ => {
                // Digits and a point only: no sign, exponent, inf or NaN.
                let q: f64 = text
                    .strip_prefix('p')
                    .filter(|q| {
                        q.starts_with(|c: char| c.is_ascii_digit())
                            && q.chars().all(|c| c.is_ascii_digit() || c == '.')
                    })
                    .and_then(|q| q.parse().ok())
                    .ok_or_else(bad)?;
                if !(0.0..=100.0).contains(&q) {
                    return Err(bad());
                }
                Aggregate::Percentile(q)
            }
        })
    }
}

impl fmt::Display for Aggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Aggregate::Latest => f.write_str("latest"),
            Aggregate::Mean => f.write_str("mean"),
            Aggregate::Min => f.write_str("min"),
            Aggregate::Max => f.write_str("max"),
            Aggregate::Median => f.write_str("median"),
            Aggregate::Percentile(q) => write!(f, "p{q}"),
        }
    }
}

impl<'de> Deserialize<'de> for Aggregate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Aggregate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Metric {
    /// Reduces the samples of the last `window_ms` before `now_ms` (every
    /// sample up to `now_ms` when `None`) to one value; `None` when there
    /// are no such samples. `Latest` with a window is the newest sample if it
    /// is inside the window.
    pub fn aggregate(&self, how: Aggregate, now_ms: i64, window_ms: Option<i64>) -> Option<f64> {
        let span = window_ms.unwrap_or(i64::MAX);
        match how {
            Aggregate::Latest => self.window(now_ms, span).last().map(|p| p.value),
            Aggregate::Mean => self.mean_over(now_ms, span),
            Aggregate::Min => self.min_over(now_ms, span),
            Aggregate::Max => self.max_over(now_ms, span),
            Aggregate::Median => self.percentile_over(now_ms, span, 50.0),
            Aggregate::Percentile(q) => self.percentile_over(now_ms, span, q),
        }
    }
}

impl Context {
    /// The value of the metric named `name`, reduced with `how` over the
    /// last `window_ms` (every sample when `None`). The error names the
    /// problem in words fit for a decision's error: the metric is not the
    /// scaler's, could not be read, or has no samples (in the window).
    pub fn metric_value(
        &self,
        name: &str,
        how: Aggregate,
        window_ms: Option<i64>,
    ) -> Result<f64, String> {
        let metric = self.metric_checked(name)?;
        metric
            .aggregate(how, self.now_ms, window_ms)
            .ok_or_else(|| match window_ms {
                Some(w) if !metric.is_empty() => format!(
                    "metric {name:?} has no samples in the last {}",
                    DurationMs(w)
                ),
                _ => format!("metric {name:?} has no samples"),
            })
    }

    /// The metric named `name`, or an error that says it is not one of the
    /// scaler's metrics or could not be read this tick.
    pub fn metric_checked(&self, name: &str) -> Result<&Metric, String> {
        let Some(metric) = self.metric(name) else {
            let names: Vec<&str> = self.metrics.iter().map(|m| m.name.as_str()).collect();
            return Err(if names.is_empty() {
                format!("metric {name:?} is not one of the scaler's metrics (it has none)")
            } else {
                format!(
                    "metric {name:?} is not one of the scaler's metrics ({})",
                    names.join(", ")
                )
            });
        };
        match &metric.error {
            Some(error) => Err(format!("metric {name:?} could not be read: {error}")),
            None => Ok(metric),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ContextBuilder;

    #[test]
    fn names_parse_and_display() {
        let cases = [
            ("latest", Aggregate::Latest, "latest"),
            ("last", Aggregate::Latest, "latest"),
            ("mean", Aggregate::Mean, "mean"),
            ("avg", Aggregate::Mean, "mean"),
            ("average", Aggregate::Mean, "mean"),
            ("min", Aggregate::Min, "min"),
            ("max", Aggregate::Max, "max"),
            ("median", Aggregate::Median, "median"),
            ("p95", Aggregate::Percentile(95.0), "p95"),
            ("p99.9", Aggregate::Percentile(99.9), "p99.9"),
            ("p0", Aggregate::Percentile(0.0), "p0"),
            ("p100", Aggregate::Percentile(100.0), "p100"),
        ];
        for (text, want, shown) in cases {
            let got: Aggregate = text.parse().unwrap();
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string(), shown);
        }
        for bad in [
            "", "p", "p101", "p-1", "p-0", "p+5", "p1e1", "pinf", "pxx", "Mean", "sum",
        ] {
            let err = bad.parse::<Aggregate>().unwrap_err();
            assert!(err.starts_with("unknown aggregate"), "{bad}: {err}");
        }
        let json = serde_json::to_string(&Aggregate::Percentile(90.0)).unwrap();
        assert_eq!(json, "\"p90\"");
        assert_eq!(
            serde_json::from_str::<Aggregate>(&json).unwrap(),
            Aggregate::Percentile(90.0)
        );
    }

    #[test]
    fn aggregates_over_window_or_whole_series() {
        // Samples at 0..=40 s; a sample "from the future" (clock skew) is ignored.
        let ctx = ContextBuilder::new()
            .now_ms(40_000)
            .metric(
                "cpu",
                &[
                    (0, 10.0),
                    (10_000, 50.0),
                    (20_000, 20.0),
                    (30_000, 40.0),
                    (40_000, 30.0),
                    (50_000, 1000.0),
                ],
            )
            .build();
        let m = ctx.metric("cpu").unwrap();
        let cases = [
            (Aggregate::Latest, None, Some(30.0)),
            (Aggregate::Mean, None, Some(30.0)),
            (Aggregate::Min, None, Some(10.0)),
            (Aggregate::Max, None, Some(50.0)),
            (Aggregate::Median, None, Some(30.0)),
            (Aggregate::Percentile(100.0), None, Some(50.0)),
            (Aggregate::Mean, Some(20_000), Some(30.0)),
            (Aggregate::Max, Some(20_000), Some(40.0)),
            (Aggregate::Min, Some(15_000), Some(30.0)),
            (Aggregate::Median, Some(20_000), Some(30.0)),
            (Aggregate::Latest, Some(5_000), Some(30.0)),
        ];
        for (how, window, want) in cases {
            assert_eq!(m.aggregate(how, 40_000, window), want, "{how} {window:?}");
        }
        // The newest sample is 10 s old: a 5 s window holds nothing.
        assert_eq!(
            m.aggregate(Aggregate::Latest, 50_000 - 1, Some(5_000)),
            None
        );
    }

    #[test]
    fn metric_value_names_the_problem() {
        let ctx = ContextBuilder::new()
            .now_ms(600_000)
            .metric("cpu", &[(0, 50.0)])
            .metric("empty", &[])
            .failed_metric("rps", "prometheus timed out")
            .build();
        assert_eq!(ctx.metric_value("cpu", Aggregate::Latest, None), Ok(50.0));
        let cases = [
            (
                "cpu",
                Some(60_000),
                "metric \"cpu\" has no samples in the last 1m",
            ),
            ("empty", None, "metric \"empty\" has no samples"),
            ("empty", Some(60_000), "metric \"empty\" has no samples"),
            (
                "rps",
                None,
                "metric \"rps\" could not be read: prometheus timed out",
            ),
            (
                "mem",
                None,
                "metric \"mem\" is not one of the scaler's metrics (cpu, empty, rps)",
            ),
        ];
        for (name, window, want) in cases {
            assert_eq!(
                ctx.metric_value(name, Aggregate::Mean, window).unwrap_err(),
                want
            );
        }
        let none = ContextBuilder::new().build();
        assert_eq!(
            none.metric_value("cpu", Aggregate::Latest, None)
                .unwrap_err(),
            "metric \"cpu\" is not one of the scaler's metrics (it has none)"
        );
    }
}
