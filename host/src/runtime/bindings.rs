//! The host side of `wit/policy.wit` (the one `bindgen!` of the host) and the
//! conversions between the generated types and the serde types of
//! [`crate::policy`].

use crate::policy;

use super::errors::{EvalError, EvalErrorKind};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "policy",
});

pub(crate) use self::scalewise::policy::types;

/// The interface a policy must export, without its version.
pub(crate) const EVALUATOR_INTERFACE: &str = "scalewise:policy/evaluator";

/// The version of `scalewise:policy` this host implements.
pub const WIT_VERSION: &str = "0.1.0";

/// Builds the guest's context from the host's, refusing what the contract
/// forbids (parameters that are not an object, non-finite samples).
pub(crate) fn context_to_guest(ctx: &policy::Context) -> Result<types::Context, EvalError> {
    if !ctx.parameters.is_object() {
        return Err(EvalError::new(
            EvalErrorKind::InvalidContext,
            format!(
                "parameters must be a JSON object, got {}",
                json_type(&ctx.parameters)
            ),
        ));
    }
    let mut metrics = Vec::with_capacity(ctx.metrics.len());
    for m in &ctx.metrics {
        // Checked in a pass of its own, then copied by plain maps, which
        // vectorise where a checked push per sample does not (that loop
        // was 15% of an evaluation over 1,000 samples).
        if let Some(p) = m.points.iter().find(|p| !p.value.is_finite()) {
            return Err(EvalError::new(
                EvalErrorKind::InvalidContext,
                format!(
                    "metric {:?} has a non-finite sample ({}) at {} ms",
                    m.name, p.value, p.timestamp_ms
                ),
            ));
        }
        metrics.push(types::Metric {
            name: m.name.clone(),
            timestamps_ms: m.points.iter().map(|p| p.timestamp_ms).collect(),
            values: m.points.iter().map(|p| p.value).collect(),
            error: m.error.clone(),
        });
    }
    Ok(types::Context {
        now_ms: ctx.now_ms,
        scaler: ctx.scaler.clone(),
        target: types::Target {
            kind: ctx.target.kind.clone(),
            name: ctx.target.name.clone(),
            current: ctx.target.current,
            ready: ctx.target.ready,
            min: ctx.target.min,
            max: ctx.target.max,
        },
        metrics,
        events: ctx
            .events
            .iter()
            .map(|e| types::ScaleEvent {
                timestamp_ms: e.timestamp_ms,
                from: e.from,
                to: e.to,
            })
            .collect(),
        parameters: ctx.parameters.to_string(),
        state: ctx.state.clone(),
    })
}

/// The host's view of the guest's decision (not yet validated).
pub(crate) fn decision_from_guest(d: types::Decision) -> policy::Decision {
    policy::Decision {
        desired: match d.action {
            types::Action::Hold => None,
            types::Action::ScaleTo(n) => Some(n),
        },
        reason: d.reason,
        state: d.state,
    }
}

/// The host's view of the guest's info; a default that is not JSON is an error.
pub(crate) fn info_from_guest(info: types::Info) -> Result<policy::PolicyInfo, String> {
    let mut parameters = Vec::with_capacity(info.parameters.len());
    for p in info.parameters {
        let default = match p.default {
            None => None,
            Some(text) => Some(serde_json::from_str(&text).map_err(|e| {
                format!(
                    "parameter {:?}: default {text:?} is not valid JSON ({e})",
                    p.name
                )
            })?),
        };
        parameters.push(policy::ParameterSpec {
            name: p.name,
            description: p.description,
            kind: match p.kind {
                types::ParameterKind::Number => policy::ParameterKind::Number,
                types::ParameterKind::Integer => policy::ParameterKind::Integer,
                types::ParameterKind::Boolean => policy::ParameterKind::Boolean,
                types::ParameterKind::Text => policy::ParameterKind::Text,
                types::ParameterKind::Duration => policy::ParameterKind::Duration,
                types::ParameterKind::Metric => policy::ParameterKind::Metric,
            },
            required: p.required,
            default,
        });
    }
    Ok(policy::PolicyInfo {
        name: info.name,
        version: info.version,
        description: info.description,
        parameters,
    })
}

/// The JSON type of `v`, for error messages.
pub(crate) fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Context, Metric, Point, Target};

    fn ctx() -> Context {
        Context {
            now_ms: 10,
            scaler: "web".into(),
            target: Target {
                kind: "simulator".into(),
                name: "web".into(),
                current: 2,
                ready: 2,
                min: 1,
                max: 5,
            },
            metrics: vec![Metric {
                name: "cpu".into(),
                points: vec![Point::from((1, 0.5))],
                error: None,
            }],
            events: vec![],
            parameters: serde_json::json!({"target": 60}),
            state: Some(vec![1, 2]),
        }
    }

    #[test]
    fn context_converts_field_for_field() {
        let g = context_to_guest(&ctx()).unwrap();
        assert_eq!(g.now_ms, 10);
        assert_eq!(g.parameters, r#"{"target":60}"#);
        assert_eq!(g.metrics[0].values[0], 0.5);
        assert_eq!(g.metrics[0].timestamps_ms[0], 1);
        assert_eq!(g.target.max, 5);
        assert_eq!(g.state, Some(vec![1, 2]));
    }

    #[test]
    fn context_refusals() {
        let cases: Vec<(serde_json::Value, f64, &str)> = vec![
            (
                serde_json::json!([1]),
                0.5,
                "parameters must be a JSON object, got an array",
            ),
            (serde_json::json!("x"), 0.5, "got a string"),
            (serde_json::json!({}), f64::NAN, "non-finite sample (NaN)"),
            (
                serde_json::json!({}),
                f64::INFINITY,
                "non-finite sample (inf)",
            ),
        ];
        for (params, value, want) in cases {
            let mut c = ctx();
            c.parameters = params;
            c.metrics[0].points[0].value = value;
            let err = context_to_guest(&c).unwrap_err();
            assert_eq!(err.kind, EvalErrorKind::InvalidContext);
            assert!(err.message.contains(want), "{} !~ {want}", err.message);
        }
    }

    #[test]
    fn info_default_must_be_json() {
        let info = types::Info {
            name: "p".into(),
            version: "1".into(),
            description: "d".into(),
            parameters: vec![types::Parameter {
                name: "target".into(),
                description: "t".into(),
                kind: types::ParameterKind::Number,
                required: false,
                default: Some("sixty".into()),
            }],
        };
        let err = info_from_guest(info).unwrap_err();
        assert!(err.contains("parameter \"target\""), "{err}");
    }
}
