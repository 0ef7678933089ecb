//! Building contexts for native unit tests of a policy.
//!
//! ```
//! use scalewise_sdk::testing::ContextBuilder;
//!
//! let ctx = ContextBuilder::new()
//!     .now_ms(60_000)
//!     .replicas(4, 1, 10)
//!     .metric("cpu", &[(0, 50.0), (60_000, 90.0)])
//!     .params(serde_json::json!({ "metric": "cpu", "target": 60 }))
//!     .build();
//! assert_eq!(ctx.metric("cpu").unwrap().latest(), Some(90.0));
//!
//! // Five minutes of samples every 15 s, the last one at `now`.
//! let ctx = ContextBuilder::new()
//!     .now_ms(300_000)
//!     .series("cpu", 0, 15_000, &[80.0; 21])
//!     .build();
//! assert!(ctx.metric("cpu").unwrap().above_for(70.0, 300_000, 300_000));
//! ```

use crate::{Context, Metric, ScaleEvent, Target};

/// Builds a [`Context`] with sensible defaults: time 0, a `simulator` target
/// named `test` with 1 replica (bounds 1–10), no metrics, no events, no
/// parameters and no state.
#[derive(Debug, Clone)]
pub struct ContextBuilder {
    ctx: Context,
}

impl Default for ContextBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ContextBuilder {
    /// Starts from the defaults.
    pub fn new() -> Self {
        ContextBuilder {
            ctx: Context {
                now_ms: 0,
                scaler: "test".into(),
                target: Target {
                    kind: "simulator".into(),
                    name: "test".into(),
                    current: 1,
                    ready: 1,
                    min: 1,
                    max: 10,
                },
                metrics: Vec::new(),
                events: Vec::new(),
                parameters: "{}".into(),
                state: None,
            },
        }
    }

    /// Sets the tick's time.
    pub fn now_ms(mut self, now_ms: i64) -> Self {
        self.ctx.now_ms = now_ms;
        self
    }

    /// Sets current (and ready) replicas and the scaler's bounds.
    pub fn replicas(mut self, current: u32, min: u32, max: u32) -> Self {
        self.ctx.target.current = current;
        self.ctx.target.ready = current;
        self.ctx.target.min = min;
        self.ctx.target.max = max;
        self
    }

    /// Sets the ready replica count (after [`ContextBuilder::replicas`]).
    pub fn ready(mut self, ready: u32) -> Self {
        self.ctx.target.ready = ready;
        self
    }

    /// Adds a metric from `(timestamp_ms, value)` samples, oldest first.
    pub fn metric(mut self, name: &str, samples: &[(i64, f64)]) -> Self {
        self.ctx.metrics.push(Metric {
            name: name.into(),
            timestamps_ms: samples.iter().map(|s| s.0).collect(),
            values: samples.iter().map(|s| s.1).collect(),
            error: None,
        });
        self
    }

    /// Adds a metric sampled every `step_ms` from `start_ms`: `values[i]` is
    /// the sample at `start_ms + i * step_ms`.
    pub fn series(self, name: &str, start_ms: i64, step_ms: i64, values: &[f64]) -> Self {
        let samples: Vec<(i64, f64)> = (0i64..)
            .zip(values)
            .map(|(i, &v)| (start_ms + i * step_ms, v))
            .collect();
        self.metric(name, &samples)
    }

    /// Sets the target's actuator kind and name.
    pub fn target(mut self, kind: &str, name: &str) -> Self {
        self.ctx.target.kind = kind.into();
        self.ctx.target.name = name.into();
        self
    }

    /// Adds a metric that could not be read this tick.
    pub fn failed_metric(mut self, name: &str, error: &str) -> Self {
        self.ctx.metrics.push(Metric {
            name: name.into(),
            timestamps_ms: Vec::new(),
            values: Vec::new(),
            error: Some(error.into()),
        });
        self
    }

    /// Adds a scale event.
    pub fn event(mut self, timestamp_ms: i64, from: u32, to: u32) -> Self {
        self.ctx.events.push(ScaleEvent {
            timestamp_ms,
            from,
            to,
        });
        self
    }

    /// Sets the parameters (a JSON object).
    pub fn params(mut self, params: serde_json::Value) -> Self {
        self.ctx.parameters = params.to_string();
        self
    }

    /// Sets the state returned last time.
    pub fn state(mut self, state: Option<Vec<u8>>) -> Self {
        self.ctx.state = state;
        self
    }

    /// Finishes the context.
    pub fn build(self) -> Context {
        self.ctx
    }
}
