//! The data exchanged with policies, as the host sees it.
//!
//! These mirror the records of `wit/policy.wit` one for one, with serde so
//! that the same shapes are used by the journal, the HTTP API and the
//! `scalewise eval` context files. The runtime converts them to and from the
//! generated Wasm bindings.

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One sample of a metric. In JSON a point is `[timestamp_ms, value]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "(i64, f64)", into = "(i64, f64)")]
pub struct Point {
    /// When the sample was taken, in ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// The sample's value (finite).
    pub value: f64,
}

impl From<(i64, f64)> for Point {
    fn from((timestamp_ms, value): (i64, f64)) -> Self {
        Point {
            timestamp_ms,
            value,
        }
    }
}

impl From<Point> for (i64, f64) {
    fn from(p: Point) -> Self {
        (p.timestamp_ms, p.value)
    }
}

/// One named metric of a scaler, as given to a policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metric {
    /// The name the scaler's config gives it.
    pub name: String,
    /// Samples, oldest first; empty when `error` is set.
    #[serde(default)]
    pub points: Vec<Point>,
    /// Why the metric could not be read this tick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The thing being scaled, as observed at the start of a tick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Actuator kind (`simulator`, `kubernetes`, `aws-asg`, ...).
    pub kind: String,
    /// The target's name as its actuator knows it.
    pub name: String,
    /// Replicas the target is asked to run.
    pub current: u32,
    /// Replicas running and ready.
    pub ready: u32,
    /// The scaler's lower bound.
    pub min: u32,
    /// The scaler's upper bound.
    pub max: u32,
}

/// A change the host made to a target's replica count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleEvent {
    /// When, in ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// Replicas before.
    pub from: u32,
    /// Replicas asked for.
    pub to: u32,
}

/// Everything a policy is given for one evaluation.
///
/// This is also the format of the file `scalewise eval --context` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// The tick's time, in ms since the Unix epoch.
    pub now_ms: i64,
    /// The scaler's name.
    #[serde(default)]
    pub scaler: String,
    /// The target's observed state.
    pub target: Target,
    /// The scaler's metrics, in config order.
    #[serde(default)]
    pub metrics: Vec<Metric>,
    /// Recent scale events, oldest first.
    #[serde(default)]
    pub events: Vec<ScaleEvent>,
    /// The policy's parameters (a JSON object).
    #[serde(default = "empty_object")]
    pub parameters: serde_json::Value,
    /// The state the policy returned last time; base64 in JSON.
    #[serde(default, with = "base64_opt", skip_serializing_if = "Option::is_none")]
    pub state: Option<Vec<u8>>,
}

impl Context {
    /// Checks what the types alone do not: metric names unique, each
    /// metric's points oldest first with one per timestamp, events oldest
    /// first, `min <= max`. The daemon builds contexts that pass; a
    /// hand-written context file for `scalewise eval` might not, and a
    /// policy given one would silently read the wrong sample. The error
    /// names the field, e.g. `metrics[0].points[2]`.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.target;
        if t.min > t.max {
            return Err(format!("target: min {} is above max {}", t.min, t.max));
        }
        for (i, metric) in self.metrics.iter().enumerate() {
            if let Some(first) = self.metrics[..i].iter().position(|m| m.name == metric.name) {
                return Err(format!(
                    "metrics[{i}]: a second metric named {:?} (the first is metrics[{first}])",
                    metric.name
                ));
            }
            for (j, pair) in metric.points.windows(2).enumerate() {
                if pair[1].timestamp_ms <= pair[0].timestamp_ms {
                    return Err(format!(
                        "metrics[{i}].points[{}] (metric {:?}): timestamp {} is not after the \
                         previous point's {}; points go oldest first, one per timestamp",
                        j + 1,
                        metric.name,
                        pair[1].timestamp_ms,
                        pair[0].timestamp_ms
                    ));
                }
            }
        }
        for (j, pair) in self.events.windows(2).enumerate() {
            if pair[1].timestamp_ms < pair[0].timestamp_ms {
                return Err(format!(
                    "events[{}]: timestamp {} is before the previous event's {}; events go \
                     oldest first",
                    j + 1,
                    pair[1].timestamp_ms,
                    pair[0].timestamp_ms
                ));
            }
        }
        Ok(())
    }
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// A policy's answer for one tick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// The desired replica count, or `None` to hold.
    pub desired: Option<u32>,
    /// Why, for operators.
    pub reason: String,
    /// State to hand back next time; base64 in JSON.
    #[serde(default, with = "base64_opt", skip_serializing_if = "Option::is_none")]
    pub state: Option<Vec<u8>>,
}

/// The JSON type a policy parameter must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ParameterKind {
    /// A number.
    Number,
    /// A whole number.
    Integer,
    /// true/false.
    Boolean,
    /// A string.
    Text,
    /// A duration string such as "5m".
    Duration,
    /// A string naming one of the scaler's metrics.
    Metric,
}

impl ParameterKind {
    /// The kind's name as written in WIT and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            ParameterKind::Number => "number",
            ParameterKind::Integer => "integer",
            ParameterKind::Boolean => "boolean",
            ParameterKind::Text => "text",
            ParameterKind::Duration => "duration",
            ParameterKind::Metric => "metric",
        }
    }
}

/// A parameter a policy accepts, from its `describe()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParameterSpec {
    /// Key in the scaler's `params`.
    pub name: String,
    /// What it means.
    pub description: String,
    /// The type its value must have.
    pub kind: ParameterKind,
    /// Whether config must give it.
    pub required: bool,
    /// Default value, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
}

/// What a policy says about itself, from its `describe()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// Short name.
    pub name: String,
    /// The policy's own version.
    pub version: String,
    /// What it does.
    pub description: String,
    /// Parameters it accepts.
    pub parameters: Vec<ParameterSpec>,
}

/// Serde helpers for optional byte strings as base64 text.
pub mod base64_opt {
    use super::*;

    /// Writes `Some(bytes)` as a base64 string and `None` as null.
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(bytes) => {
                s.serialize_some(&base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            None => s.serialize_none(),
        }
    }

    /// Reads a base64 string (or null).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| {
            base64::engine::general_purpose::STANDARD
                .decode(t.as_bytes())
                .map_err(|e| serde::de::Error::custom(format!("not base64: {e}")))
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_json_round_trips_exactly() {
        let ctx = Context {
            now_ms: 1_700_000_000_123,
            scaler: "web".into(),
            target: Target {
                kind: "simulator".into(),
                name: "web".into(),
                current: 3,
                ready: 2,
                min: 1,
                max: 10,
            },
            metrics: vec![Metric {
                name: "cpu".into(),
                points: vec![
                    (1, 0.1 + 0.2).into(),
                    (2, 1e-300).into(),
                    (3, 71.234_567_891_234_5).into(),
                ],
                error: None,
            }],
            events: vec![ScaleEvent {
                timestamp_ms: 5,
                from: 2,
                to: 3,
            }],
            parameters: serde_json::json!({"metric": "cpu", "target": 60}),
            state: Some(vec![0, 1, 2, 255]),
        };
        let text = serde_json::to_string(&ctx).unwrap();
        assert!(
            text.contains(r#""points":[[1,0.30000000000000004],"#),
            "{text}"
        );
        let back: Context = serde_json::from_str(&text).unwrap();
        assert_eq!(back, ctx);
    }

    #[test]
    fn decision_hold_is_null_desired() {
        let d: Decision = serde_json::from_str(r#"{"desired":null,"reason":"ok"}"#).unwrap();
        assert_eq!(d.desired, None);
        assert!(
            serde_json::from_str::<Decision>(r#"{"desired":1,"reason":"x","extra":1}"#).is_err()
        );
    }
}
