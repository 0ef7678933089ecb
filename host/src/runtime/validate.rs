//! Checks on what a policy answers: its `describe()` info at load and each
//! decision. Pure functions over plain data.

use std::collections::BTreeSet;

use crate::config::RuntimeLimits;
use crate::policy::{Decision, ParameterKind, PolicyInfo};

use super::bindings::json_type;

/// The most parameters a policy may declare.
const MAX_PARAMETERS: usize = 256;
/// The most text (names, version, descriptions) a policy's `describe()`
/// may answer: it is kept for the module's life and shown by the API.
const MAX_INFO_TEXT: usize = 64 * 1024;

/// Whether `value` has the JSON type a parameter of `kind` must have. The
/// error says what was expected and what was found.
pub fn check_parameter_value(kind: ParameterKind, value: &serde_json::Value) -> Result<(), String> {
    use serde_json::Value;
    let fits = match (kind, value) {
        (ParameterKind::Number, Value::Number(_)) => true,
        (ParameterKind::Integer, Value::Number(n)) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        (ParameterKind::Boolean, Value::Bool(_)) => true,
        (ParameterKind::Text | ParameterKind::Metric, Value::String(_)) => true,
        (ParameterKind::Duration, Value::String(s)) => {
            return humantime::parse_duration(s).map(|_| ()).map_err(|e| {
                format!("expected a duration such as \"30s\" or \"5m\", got {s:?} ({e})")
            });
        }
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        Err(format!(
            "expected {}, got {}",
            match kind {
                ParameterKind::Number => "a number",
                ParameterKind::Integer => "a whole number",
                ParameterKind::Boolean => "true or false",
                ParameterKind::Text => "a string",
                ParameterKind::Duration => "a duration string",
                ParameterKind::Metric => "a string naming a metric",
            },
            match value {
                Value::Number(n) => format!("{n}"),
                other => json_type(other).to_string(),
            }
        ))
    }
}

/// Checks a module's `describe()` answer: a name, unique non-empty parameter
/// names, and defaults of the declared kind.
pub(crate) fn validate_info(info: &PolicyInfo) -> Result<(), String> {
    if info.parameters.len() > MAX_PARAMETERS {
        return Err(format!(
            "the policy declares {} parameters; a policy takes at most {MAX_PARAMETERS}",
            info.parameters.len()
        ));
    }
    let text = info.name.len()
        + info.version.len()
        + info.description.len()
        + info
            .parameters
            .iter()
            .map(|p| p.name.len() + p.description.len())
            .sum::<usize>();
    if text > MAX_INFO_TEXT {
        return Err(format!(
            "the policy describes itself in {text} bytes of names and descriptions; at most \
             {} KiB are kept",
            MAX_INFO_TEXT / 1024
        ));
    }
    if info.name.trim().is_empty() {
        return Err("the policy's name is empty".into());
    }
    if let Some(c) = unprintable(&info.name) {
        return Err(format!(
            "the policy's name {:?} holds the character U+{:04X}; a name is one line of plain text",
            info.name, c as u32
        ));
    }
    if let Some(c) = unprintable(&info.version) {
        return Err(format!(
            "the policy's version {:?} holds the character U+{:04X}; a version is one line of plain text",
            info.version, c as u32
        ));
    }
    let mut seen = BTreeSet::new();
    for p in &info.parameters {
        if p.name.trim().is_empty() {
            return Err("a parameter has an empty name".into());
        }
        if let Some(c) = unprintable(&p.name) {
            return Err(format!(
                "parameter {:?} holds the character U+{:04X} in its name; a parameter's name is \
                 a key config files write, one line of plain text",
                p.name, c as u32
            ));
        }
        if !seen.insert(p.name.as_str()) {
            return Err(format!("parameter {:?} is declared twice", p.name));
        }
        if let Some(default) = &p.default {
            check_parameter_value(p.kind, default).map_err(|e| {
                format!(
                    "parameter {:?} ({}): default {default}: {e}",
                    p.name,
                    p.kind.as_str()
                )
            })?;
        }
    }
    Ok(())
}

/// The first character of `name` that has no place in a name: a control
/// character (tabs and line breaks too), or one that logs escape.
fn unprintable(name: &str) -> Option<char> {
    name.chars()
        .find(|&c| c.is_control() || super::host::needs_escape(c))
}

/// Checks a decision against the runtime's limits.
pub(crate) fn validate_decision(d: &Decision, limits: &RuntimeLimits) -> Result<(), String> {
    if let Some(desired) = d.desired
        && desired > limits.max_replicas
    {
        return Err(format!(
            "the policy asked for {desired} replicas, above the host's ceiling of {} \
             (runtime.max_replicas)",
            limits.max_replicas
        ));
    }
    if d.reason.len() > limits.max_reason_bytes {
        return Err(format!(
            "the reason is {} bytes long; the limit is {} bytes (runtime.max_reason_bytes)",
            d.reason.len(),
            limits.max_reason_bytes
        ));
    }
    if let Some(state) = &d.state
        && state.len() as u64 > limits.max_state_bytes.as_u64()
    {
        return Err(format!(
            "the state is {} bytes; the limit is {} bytes (runtime.max_state_bytes)",
            state.len(),
            limits.max_state_bytes.as_u64()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ParameterSpec;
    use serde_json::json;

    #[test]
    fn parameter_values_by_kind() {
        use ParameterKind::*;
        let cases = [
            (Number, json!(1.5), true),
            (Number, json!("1"), false),
            (Integer, json!(3), true),
            (Integer, json!(-3), true),
            (Integer, json!(3.0), true),
            (Integer, json!(3.5), false),
            (Boolean, json!(true), true),
            (Boolean, json!(1), false),
            (Text, json!("x"), true),
            (Text, json!(null), false),
            (Duration, json!("5m"), true),
            (Duration, json!("1h 30m"), true),
            (Duration, json!("soon"), false),
            (Duration, json!(300), false),
            (Metric, json!("cpu"), true),
            (Metric, json!(["cpu"]), false),
        ];
        for (kind, value, ok) in cases {
            assert_eq!(
                check_parameter_value(kind, &value).is_ok(),
                ok,
                "{kind:?} {value}"
            );
        }
    }

    fn info(params: Vec<ParameterSpec>) -> PolicyInfo {
        PolicyInfo {
            name: "p".into(),
            version: "1.0.0".into(),
            description: "d".into(),
            parameters: params,
        }
    }

    fn param(name: &str, kind: ParameterKind, default: Option<serde_json::Value>) -> ParameterSpec {
        ParameterSpec {
            name: name.into(),
            description: String::new(),
            kind,
            required: false,
            default,
        }
    }

    #[test]
    fn info_checks() {
        let cases: Vec<(PolicyInfo, Option<&str>)> = vec![
            (info(vec![]), None),
            (
                info(vec![param(
                    "target",
                    ParameterKind::Number,
                    Some(json!(60)),
                )]),
                None,
            ),
            (
                PolicyInfo {
                    name: " ".into(),
                    ..info(vec![])
                },
                Some("name is empty"),
            ),
            (
                info(vec![param("", ParameterKind::Number, None)]),
                Some("empty name"),
            ),
            (
                info(vec![
                    param("a", ParameterKind::Number, None),
                    param("a", ParameterKind::Text, None),
                ]),
                Some("\"a\" is declared twice"),
            ),
            (
                info(vec![param(
                    "window",
                    ParameterKind::Duration,
                    Some(json!("later")),
                )]),
                Some("parameter \"window\" (duration): default \"later\""),
            ),
            (
                info(vec![param("n", ParameterKind::Integer, Some(json!(0.5)))]),
                Some("expected a whole number, got 0.5"),
            ),
            (
                info(vec![param("a\nb", ParameterKind::Number, None)]),
                Some("parameter \"a\\nb\" holds the character U+000A in its name"),
            ),
            (
                info(vec![param("up\u{202e}", ParameterKind::Number, None)]),
                Some("U+202E"),
            ),
            (
                PolicyInfo {
                    name: "tt\r".into(),
                    ..info(vec![])
                },
                Some("the policy's name \"tt\\r\" holds the character U+000D"),
            ),
            (
                PolicyInfo {
                    version: "0.1.0\n\u{1b}[31mX".into(),
                    ..info(vec![])
                },
                Some("the policy's version \"0.1.0\\n\\u{1b}[31mX\" holds the character U+000A"),
            ),
            // Names in any script are fine.
            (
                info(vec![param("größe_µs", ParameterKind::Number, None)]),
                None,
            ),
            (
                info(
                    (0..257)
                        .map(|i| param(&format!("p{i}"), ParameterKind::Number, None))
                        .collect(),
                ),
                Some("declares 257 parameters; a policy takes at most 256"),
            ),
            (
                PolicyInfo {
                    description: "d".repeat(64 * 1024),
                    ..info(vec![])
                },
                Some("at most 64 KiB"),
            ),
        ];
        for (i, want) in cases {
            match (validate_info(&i), want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => assert!(e.contains(w), "{e:?} !~ {w:?}"),
                (got, want) => panic!("{i:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn decision_checks() {
        let limits = RuntimeLimits::default();
        let d = |desired: Option<u32>, reason: usize, state: Option<usize>| Decision {
            desired,
            reason: "r".repeat(reason),
            state: state.map(|n| vec![0; n]),
        };
        let cases = [
            (d(None, 10, None), None),
            (d(Some(100_000), 1024, Some(64 * 1024)), None),
            (d(Some(100_001), 1, None), Some("100001 replicas")),
            (d(Some(u32::MAX), 1, None), Some("4294967295 replicas")),
            (d(Some(1), 1025, None), Some("reason is 1025 bytes")),
            (
                d(Some(1), 1, Some(64 * 1024 + 1)),
                Some("state is 65537 bytes"),
            ),
        ];
        for (decision, want) in cases {
            match (validate_decision(&decision, &limits), want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => assert!(e.contains(w), "{e:?} !~ {w:?}"),
                (got, want) => panic!("got {got:?}, want {want:?}"),
            }
        }
    }
}
