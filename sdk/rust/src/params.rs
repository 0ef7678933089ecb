//! Typed policy parameters, declared once.
//!
//! A policy lists the parameters it accepts as a `const` slice of
//! [`ParamSpec`]. The same slice feeds `describe()` (through
//! [`Info::with_params`](crate::Info::with_params)) and reading the values in
//! `evaluate` (through [`Context::params_checked`](crate::Context::params_checked)
//! or [`parse`]), so the defaults the host shows operators and the defaults
//! the policy uses cannot drift apart.
//!
//! ```
//! use scalewise_sdk::params::{self, DurationMs, ParamSpec};
//! use scalewise_sdk::ParameterKind;
//!
//! const PARAMS: &[ParamSpec] = &[
//!     ParamSpec::required("metric", ParameterKind::Metric, "The load metric."),
//!     ParamSpec::optional("step", ParameterKind::Integer, "1", "Replicas added per step."),
//!     ParamSpec::optional("for", ParameterKind::Duration, "\"5m\"", "How long load must stay high."),
//! ];
//!
//! #[derive(serde::Deserialize)]
//! struct Params {
//!     metric: String,
//!     step: u32,
//!     #[serde(rename = "for")]
//!     sustained: DurationMs,
//! }
//!
//! let p: Params = params::parse(PARAMS, r#"{"metric": "cpu"}"#).unwrap();
//! assert_eq!((p.metric.as_str(), p.step, p.sustained.0), ("cpu", 1, 300_000));
//! let err = params::parse::<Params>(PARAMS, r#"{"metric": "cpu", "step": "two"}"#);
//! assert_eq!(err.err().unwrap(), "parameter step must be an integer, got \"two\"");
//! ```

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::{Parameter, ParameterKind};

/// One parameter a policy accepts, as static data: the source of both the
/// `describe()` entry and the checks applied when the values are read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamSpec {
    /// The key in the scaler's `params` table.
    pub name: &'static str,
    /// The JSON type its value must have.
    pub kind: ParameterKind,
    /// Whether config must give it.
    pub required: bool,
    /// The value used when config does not give it, as JSON text
    /// (`"0.1"`, `"\"5m\""`, `"true"`).
    pub default: Option<&'static str>,
    /// The only values accepted, for text parameters that pick one of a
    /// fixed set; empty when any value of the kind is accepted.
    pub choices: &'static [&'static str],
    /// What the parameter means, for operators.
    pub description: &'static str,
}

impl ParamSpec {
    /// A parameter config must give.
    pub const fn required(
        name: &'static str,
        kind: ParameterKind,
        description: &'static str,
    ) -> Self {
        ParamSpec {
            name,
            kind,
            required: true,
            default: None,
            choices: &[],
            description,
        }
    }

    /// A parameter with a default, given as JSON text: `"0.1"` for a number,
    /// `"\"5m\""` for a duration or text.
    pub const fn optional(
        name: &'static str,
        kind: ParameterKind,
        default: &'static str,
        description: &'static str,
    ) -> Self {
        ParamSpec {
            name,
            kind,
            required: false,
            default: Some(default),
            choices: &[],
            description,
        }
    }

    /// A parameter config may leave out and that has no default value; read
    /// it into an `Option` field. The description should say what leaving it
    /// out means.
    pub const fn optional_without_default(
        name: &'static str,
        kind: ParameterKind,
        description: &'static str,
    ) -> Self {
        ParamSpec {
            name,
            kind,
            required: false,
            default: None,
            choices: &[],
            description,
        }
    }

    /// Restricts a text parameter to a fixed set of values.
    pub const fn one_of(mut self, choices: &'static [&'static str]) -> Self {
        self.choices = choices;
        self
    }

    /// The WIT record `describe()` returns for this parameter.
    pub fn to_parameter(&self) -> Parameter {
        Parameter {
            name: self.name.into(),
            description: self.description.into(),
            kind: self.kind,
            required: self.required,
            default: self.default.map(Into::into),
        }
    }

    /// Checks that `value` has this parameter's kind (and is one of its
    /// choices, if it has any). The error names the parameter.
    pub fn check(&self, value: &Value) -> Result<(), String> {
        let name = self.name;
        let ok = match self.kind {
            ParameterKind::Number => value.is_number(),
            ParameterKind::Integer => is_integer(value),
            ParameterKind::Boolean => value.is_boolean(),
            ParameterKind::Text | ParameterKind::Metric => value.is_string(),
            ParameterKind::Duration => match value.as_str() {
                Some(text) => {
                    return crate::duration_ms(text)
                        .map(drop)
                        .map_err(|e| format!("parameter {name}: {e}"));
                }
                None => false,
            },
        };
        if !ok {
            return Err(format!(
                "parameter {name} must be {}, got {value}",
                kind_phrase(self.kind)
            ));
        }
        if !self.choices.is_empty() {
            let text = value.as_str().unwrap_or_default();
            if !self.choices.contains(&text) {
                return Err(format!(
                    "parameter {name} must be one of {}, got {value}",
                    self.choices.join(", ")
                ));
            }
        }
        Ok(())
    }
}

fn is_integer(value: &Value) -> bool {
    match value {
        Value::Number(n) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

fn kind_phrase(kind: ParameterKind) -> &'static str {
    match kind {
        ParameterKind::Number => "a number",
        ParameterKind::Integer => "an integer",
        ParameterKind::Boolean => "true or false",
        ParameterKind::Text => "a string",
        ParameterKind::Duration => "a duration string such as \"5m\"",
        ParameterKind::Metric => "the name of one of the scaler's metrics",
    }
}

/// Reads a parameters JSON object against `specs`: refuses unknown names,
/// missing required parameters and values of the wrong kind, and fills in
/// defaults. A `null` value counts as not given.
pub fn resolve(specs: &[ParamSpec], parameters: &str) -> Result<Map<String, Value>, String> {
    let given: Value = if parameters.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        serde_json::from_str(parameters)
            .map_err(|e| format!("parameters are not valid JSON: {e}"))?
    };
    let Value::Object(mut given) = given else {
        return Err(format!("parameters must be a JSON object, got {given}"));
    };
    given.retain(|_, v| !v.is_null());
    if let Some(unknown) = given.keys().find(|k| !specs.iter().any(|s| s.name == *k)) {
        let accepted: Vec<&str> = specs.iter().map(|s| s.name).collect();
        return Err(if accepted.is_empty() {
            format!("unknown parameter {unknown} (this policy takes none)")
        } else {
            format!(
                "unknown parameter {unknown} (accepted: {})",
                accepted.join(", ")
            )
        });
    }
    for spec in specs {
        match given.get_mut(spec.name) {
            Some(value) => {
                spec.check(value)?;
                normalize(spec.kind, value);
            }
            None if spec.required => {
                return Err(format!("missing required parameter {}", spec.name));
            }
            None => {
                if let Some(default) = spec.default {
                    let value = serde_json::from_str(default).map_err(|e| {
                        format!("the default of parameter {} is not JSON: {e}", spec.name)
                    })?;
                    given.insert(spec.name.to_owned(), value);
                }
            }
        }
    }
    Ok(given)
}

/// Writes whole floats given for integer parameters (`3.0`) as integers, so
/// they deserialize into integer fields.
fn normalize(kind: ParameterKind, value: &mut Value) {
    if kind == ParameterKind::Integer
        && let Some(f) = value
            .as_f64()
            .filter(|_| !value.is_i64() && !value.is_u64())
        && f.abs() < 9.0e15
    {
        *value = Value::from(f as i64);
    }
}

/// [`resolve`]s the parameters and deserializes them into `T`. Parameters
/// without a default that config leaves out are absent: read them into
/// `Option` fields.
pub fn parse<T: DeserializeOwned>(specs: &[ParamSpec], parameters: &str) -> Result<T, String> {
    let map = resolve(specs, parameters)?;
    serde_path_to_error::deserialize(Value::Object(map)).map_err(crate::helpers::params_error)
}

/// Checks a policy's own declarations: names unique, required parameters
/// without defaults, every default valid JSON of the declared kind (and one
/// of the choices). Call it from a unit test of the policy.
pub fn check_specs(specs: &[ParamSpec]) -> Result<(), String> {
    for (i, spec) in specs.iter().enumerate() {
        if specs[..i].iter().any(|s| s.name == spec.name) {
            return Err(format!("parameter {} is declared twice", spec.name));
        }
        if spec.required && spec.default.is_some() {
            return Err(format!(
                "parameter {} is required but has a default",
                spec.name
            ));
        }
        if !spec.choices.is_empty() && spec.kind != ParameterKind::Text {
            return Err(format!(
                "parameter {} has choices but is not text",
                spec.name
            ));
        }
        if let Some(default) = spec.default {
            let value: Value = serde_json::from_str(default)
                .map_err(|e| format!("the default of parameter {} is not JSON: {e}", spec.name))?;
            spec.check(&value)
                .map_err(|e| format!("bad default: {e}"))?;
        }
    }
    Ok(())
}

/// A duration parameter, in milliseconds. Deserializes from a duration
/// string (`"30s"`, `"5m"`, `"1h 30m"`) and displays the same way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurationMs(pub i64);

impl DurationMs {
    /// The duration in milliseconds.
    pub fn ms(self) -> i64 {
        self.0
    }
}

impl fmt::Display for DurationMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = u64::try_from(self.0).unwrap_or(0);
        write!(
            f,
            "{}",
            humantime::format_duration(std::time::Duration::from_millis(ms))
        )
    }
}

impl std::str::FromStr for DurationMs {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        crate::duration_ms(text).map(DurationMs)
    }
}

impl<'de> Deserialize<'de> for DurationMs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for DurationMs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Aggregate;

    const SPECS: &[ParamSpec] = &[
        ParamSpec::required("metric", ParameterKind::Metric, "m"),
        ParamSpec::required("target", ParameterKind::Number, "t"),
        ParamSpec::optional("tolerance", ParameterKind::Number, "0.1", "tol"),
        ParamSpec::optional("step", ParameterKind::Integer, "1", "s"),
        ParamSpec::optional("dry", ParameterKind::Boolean, "false", "d"),
        ParamSpec::optional("for", ParameterKind::Duration, "\"5m\"", "f"),
        ParamSpec::optional_without_default("window", ParameterKind::Duration, "w"),
        ParamSpec::optional("aggregate", ParameterKind::Text, "\"latest\"", "a"),
        ParamSpec::optional("mode", ParameterKind::Text, "\"average\"", "mo")
            .one_of(&["average", "total"]),
    ];

    #[derive(Debug, Deserialize, PartialEq)]
    struct P {
        metric: String,
        target: f64,
        tolerance: f64,
        step: u32,
        dry: bool,
        #[serde(rename = "for")]
        sustained: DurationMs,
        window: Option<DurationMs>,
        aggregate: Aggregate,
        mode: String,
    }

    #[test]
    fn defaults_are_filled_in() {
        let p: P = parse(SPECS, r#"{"metric":"cpu","target":60}"#).unwrap();
        assert_eq!(
            p,
            P {
                metric: "cpu".into(),
                target: 60.0,
                tolerance: 0.1,
                step: 1,
                dry: false,
                sustained: DurationMs(300_000),
                window: None,
                aggregate: Aggregate::Latest,
                mode: "average".into(),
            }
        );
        let p: P = parse(
            SPECS,
            r#"{"metric":"cpu","target":60.5,"tolerance":0,"step":3.0,"dry":true,
                "for":"90s","window":"1h 30m","aggregate":"p95","mode":"total"}"#,
        )
        .unwrap();
        assert_eq!(p.tolerance, 0.0);
        assert_eq!(p.step, 3);
        assert!(p.dry);
        assert_eq!(p.sustained, DurationMs(90_000));
        assert_eq!(p.window, Some(DurationMs(5_400_000)));
        assert_eq!(p.aggregate, Aggregate::Percentile(95.0));
        assert_eq!(p.mode, "total");
    }

    #[test]
    fn bad_parameters_are_named() {
        let cases: &[(&str, &str)] = &[
            (r#"{"target":60}"#, "missing required parameter metric"),
            (
                r#"{"metric":"cpu","target":"sixty"}"#,
                "parameter target must be a number, got \"sixty\"",
            ),
            (
                r#"{"metric":"cpu","target":1,"step":1.5}"#,
                "parameter step must be an integer, got 1.5",
            ),
            (
                r#"{"metric":"cpu","target":1,"dry":"yes"}"#,
                "parameter dry must be true or false, got \"yes\"",
            ),
            (
                r#"{"metric":5,"target":1}"#,
                "parameter metric must be the name of one of the scaler's metrics, got 5",
            ),
            (
                r#"{"metric":"cpu","target":1,"for":"five"}"#,
                "parameter for: invalid duration \"five\"",
            ),
            (
                r#"{"metric":"cpu","target":1,"for":300}"#,
                "parameter for must be a duration string such as \"5m\", got 300",
            ),
            (
                r#"{"metric":"cpu","target":1,"mode":"sum"}"#,
                "parameter mode must be one of average, total, got \"sum\"",
            ),
            (
                r#"{"metric":"cpu","target":1,"tolerence":0.2}"#,
                "unknown parameter tolerence (accepted: metric, target, tolerance, step, dry, for, window, aggregate, mode)",
            ),
            (r#"[1]"#, "parameters must be a JSON object, got [1]"),
            (r#"{"#, "parameters are not valid JSON"),
            (
                r#"{"metric":"cpu","target":1,"aggregate":"avg2"}"#,
                "parameter aggregate: unknown aggregate \"avg2\"",
            ),
        ];
        for (json, want) in cases {
            let err = parse::<P>(SPECS, json).unwrap_err();
            assert!(err.starts_with(want), "{json}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn null_counts_as_not_given_and_empty_text_as_empty_object() {
        let p: P = parse(SPECS, r#"{"metric":"cpu","target":1,"tolerance":null}"#).unwrap();
        assert_eq!(p.tolerance, 0.1);
        assert_eq!(resolve(&SPECS[2..], "").unwrap().len(), 6);
        assert_eq!(
            resolve(&[], r#"{"x":1}"#).unwrap_err(),
            "unknown parameter x (this policy takes none)"
        );
    }

    #[test]
    fn spec_declarations_are_checked() {
        assert_eq!(check_specs(SPECS), Ok(()));
        let cases: &[(ParamSpec, &str)] = &[
            (
                ParamSpec::optional("x", ParameterKind::Number, "\"1\"", ""),
                "bad default: parameter x must be a number, got \"1\"",
            ),
            (
                ParamSpec::optional("x", ParameterKind::Duration, "5m", ""),
                "the default of parameter x is not JSON",
            ),
            (
                ParamSpec::optional("x", ParameterKind::Text, "\"c\"", "").one_of(&["a", "b"]),
                "bad default: parameter x must be one of a, b, got \"c\"",
            ),
            (
                ParamSpec::optional("x", ParameterKind::Number, "1", "").one_of(&["1"]),
                "parameter x has choices but is not text",
            ),
            (
                ParamSpec {
                    default: Some("1"),
                    ..ParamSpec::required("x", ParameterKind::Number, "")
                },
                "parameter x is required but has a default",
            ),
        ];
        for (spec, want) in cases {
            let err = check_specs(&[*spec]).unwrap_err();
            assert!(err.starts_with(want), "got {err:?}, want {want:?}");
        }
        assert_eq!(
            check_specs(&[SPECS[0], SPECS[0]]).unwrap_err(),
            "parameter metric is declared twice"
        );
    }

    #[test]
    fn to_parameter_keeps_every_field() {
        let p = SPECS[2].to_parameter();
        assert_eq!(p.name, "tolerance");
        assert_eq!(p.kind, ParameterKind::Number);
        assert!(!p.required);
        assert_eq!(p.default.as_deref(), Some("0.1"));
        assert_eq!(p.description, "tol");
        assert_eq!(SPECS[6].to_parameter().default, None);
        assert!(SPECS[0].to_parameter().required);
    }

    #[test]
    fn durations_display_and_round_trip() {
        let cases = [
            ("5m", 300_000, "5m"),
            ("90s", 90_000, "1m 30s"),
            ("0s", 0, "0s"),
        ];
        for (text, ms, shown) in cases {
            let d: DurationMs = text.parse().unwrap();
            assert_eq!(d.ms(), ms);
            assert_eq!(d.to_string(), shown);
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(serde_json::from_str::<DurationMs>(&json).unwrap(), d);
        }
    }
}
