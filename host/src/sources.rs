//! Metric sources: where a scaler's named metrics come from.
//!
//! A [`Source`] answers one [`MetricQuery`] at a time. The host checks every
//! answer the same way whatever the source (finite values, not stale, not
//! empty) in [`check_series`], so each source only reports what it got.

pub mod prometheus;
pub mod simulator;
pub mod target;

use std::fmt;

use async_trait::async_trait;

use crate::policy::Point;

/// What a scaler asks a source for, for one metric.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MetricQuery {
    /// The source-specific query (PromQL for Prometheus, a metric name for the simulator).
    pub query: String,
    /// With a window: the series over `[now - window, now]`; without: the latest value.
    pub window_ms: Option<i64>,
    /// Resolution of a windowed series.
    pub step_ms: i64,
}

/// Why a metric could not be read this tick.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricError {
    /// The source could not be reached at all.
    #[error("source unreachable: {0}")]
    Unreachable(String),
    /// The source did not answer in time.
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// The source answered with an HTTP error status.
    #[error("HTTP {status}: {message}")]
    Http {
        /// The status code.
        status: u16,
        /// What the server said.
        message: String,
    },
    /// The source refused the query itself (e.g. a PromQL syntax error).
    #[error("query error: {0}")]
    Query(String),
    /// The query returned no samples.
    #[error("query returned no data")]
    Empty,
    /// The query returned several series where one was expected.
    #[error("query returned {0} series; aggregate it to one (e.g. sum(...) or avg(...))")]
    MultipleSeries(usize),
    /// A sample was NaN or infinite.
    #[error("value is not finite ({0})")]
    NotFinite(f64),
    /// The newest sample is older than the metric's `max_age`.
    #[error("stale: newest sample is {age_ms} ms old (max_age {max_age_ms} ms)")]
    Stale {
        /// Age of the newest sample.
        age_ms: i64,
        /// The configured limit.
        max_age_ms: i64,
    },
    /// An input of the query has no current sample, only older ones within
    /// the range the query reads (its target stopped reporting, and its
    /// series were marked stale): the answer would be computed from them.
    #[error(
        "stale: an input of the query has no current sample, only older ones within the range \
         it reads (did its target stop reporting?)"
    )]
    NotCurrent,
    /// Anything else the source reports.
    #[error("{0}")]
    Other(String),
}

impl MetricError {
    /// A fixed, small label for the host's metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            MetricError::Unreachable(_) => "unreachable",
            MetricError::Timeout(_) => "timeout",
            MetricError::Http { .. } => "http",
            MetricError::Query(_) => "query",
            MetricError::Empty => "empty",
            MetricError::MultipleSeries(_) => "multiple_series",
            MetricError::NotFinite(_) => "not_finite",
            MetricError::Stale { .. } | MetricError::NotCurrent => "stale",
            MetricError::Other(_) => "other",
        }
    }
}

/// A place metrics come from.
#[async_trait]
pub trait Source: Send + Sync + fmt::Debug {
    /// Reads `query` as of `now_ms`: one point for an instant query, the
    /// series over the window (oldest first) for a windowed one.
    async fn fetch(&self, query: &MetricQuery, now_ms: i64) -> Result<Vec<Point>, MetricError>;
}

/// Drops the NaN points of a window but its newest: gaps where the query
/// had nothing to divide (`rate(errors) / rate(requests)` or
/// `histogram_quantile` over a quiet minute are 0/0), not values. Failing
/// the whole window for one would block scale-in for as long as the window
/// is, exactly when a quiet service should scale in. A NaN newest point
/// still fails the metric ([`check_series`]), as do infinities anywhere.
pub fn drop_gaps(points: &mut Vec<Point>) {
    let Some((newest, older)) = points.split_last() else {
        return;
    };
    if older.iter().any(|p| p.value.is_nan()) {
        let newest = *newest;
        points.pop();
        points.retain(|p| !p.value.is_nan());
        points.push(newest);
    }
}

/// The checks every fetched series must pass, whatever its source: not
/// empty, every value finite, and (with `max_age_ms`) the newest sample no
/// older than that.
pub fn check_series(
    points: &[Point],
    now_ms: i64,
    max_age_ms: Option<i64>,
) -> Result<(), MetricError> {
    let newest = points.last().ok_or(MetricError::Empty)?;
    if let Some(bad) = points.iter().find(|p| !p.value.is_finite()) {
        return Err(MetricError::NotFinite(bad.value));
    }
    if let Some(max_age_ms) = max_age_ms {
        let age_ms = now_ms.saturating_sub(newest.timestamp_ms);
        if age_ms > max_age_ms {
            return Err(MetricError::Stale { age_ms, max_age_ms });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_in_a_window_are_dropped_but_not_its_newest_point() {
        let p = |t, v| Point {
            timestamp_ms: t,
            value: v,
        };
        let values = |points: &[Point]| points.iter().map(|p| p.timestamp_ms).collect::<Vec<_>>();
        let mut window = vec![
            p(0, 1.0),
            p(1, f64::NAN),
            p(2, 3.0),
            p(3, f64::NAN),
            p(4, 5.0),
        ];
        drop_gaps(&mut window);
        assert_eq!(values(&window), [0, 2, 4]);
        assert_eq!(check_series(&window, 4, None), Ok(()));
        // The newest is NaN: kept, and the metric fails.
        let mut window = vec![p(0, f64::NAN), p(1, 2.0), p(2, f64::NAN)];
        drop_gaps(&mut window);
        assert_eq!(values(&window), [1, 2]);
        assert_eq!(
            check_series(&window, 2, None).unwrap_err().kind(),
            "not_finite"
        );
        // Infinities are values (a quantile in the +Inf bucket): they fail.
        let mut window = vec![p(0, f64::INFINITY), p(1, 2.0)];
        drop_gaps(&mut window);
        assert_eq!(
            check_series(&window, 1, None).unwrap_err().kind(),
            "not_finite"
        );
        let mut empty = Vec::new();
        drop_gaps(&mut empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn checks_name_the_problem() {
        let p = |t, v| Point {
            timestamp_ms: t,
            value: v,
        };
        assert_eq!(check_series(&[], 0, None), Err(MetricError::Empty));
        assert_eq!(
            check_series(&[p(0, 1.0), p(1, f64::NAN)], 1, None)
                .unwrap_err()
                .kind(),
            "not_finite"
        );
        assert_eq!(
            check_series(&[p(0, 1.0)], 60_001, Some(60_000)),
            Err(MetricError::Stale {
                age_ms: 60_001,
                max_age_ms: 60_000
            })
        );
        assert_eq!(check_series(&[p(0, 1.0)], 60_000, Some(60_000)), Ok(()));
    }
}
