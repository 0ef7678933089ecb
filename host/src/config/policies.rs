//! The second phase: each scaler's policies checked against what the loaded
//! modules say about themselves (`describe()`), and the parameters object
//! each policy is given.

use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};

use serde_json::Value as Json;
use toml::Value as Toml;

use super::location::{Document, keys};
use super::{Config, ConfigError, PolicyRef, Problem, ScalerConfig, into_result};
use crate::policy::{ParameterKind, PolicyInfo};

/// The loaded policy modules, as the config checker needs to see them.
pub trait PolicyCatalog {
    /// What the module named `module` (its file name without `.wasm`) says
    /// about itself, if such a module is loaded.
    fn describe(&self, module: &str) -> Option<PolicyInfo>;

    /// The names of every loaded module, for error messages.
    fn modules(&self) -> Vec<String>;
}

impl PolicyCatalog for BTreeMap<String, PolicyInfo> {
    fn describe(&self, module: &str) -> Option<PolicyInfo> {
        self.get(module).cloned()
    }

    fn modules(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
}

impl PolicyCatalog for HashMap<String, PolicyInfo> {
    fn describe(&self, module: &str) -> Option<PolicyInfo> {
        self.get(module).cloned()
    }

    fn modules(&self) -> Vec<String> {
        let mut names: Vec<String> = self.keys().cloned().collect();
        names.sort();
        names
    }
}

impl Config {
    /// Checks every scaler's policies against the loaded modules: the module
    /// exists, every parameter is one it accepts, every required one is
    /// given, and every value has the declared kind (a `metric` parameter
    /// must name one of the scaler's metrics). Reports every problem.
    pub fn check_policies(&self, catalog: &dyn PolicyCatalog) -> Result<(), ConfigError> {
        let text = OnceCell::new();
        self.check_policies_in(&Document::of(&self.origin, &text), catalog)
    }

    /// [`Config::check_policies`], locating problems in `doc`.
    pub(super) fn check_policies_in(
        &self,
        doc: &Document<'_>,
        catalog: &dyn PolicyCatalog,
    ) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        for (i, scaler) in self.scalers.iter().enumerate() {
            for (p, policy) in scaler.get_ref().policies.iter().enumerate() {
                check_policy(
                    doc,
                    catalog,
                    scaler.get_ref(),
                    policy.get_ref(),
                    (i, p),
                    &mut problems,
                );
            }
        }
        into_result(problems)
    }
}

fn check_policy(
    doc: &Document<'_>,
    catalog: &dyn PolicyCatalog,
    scaler: &ScalerConfig,
    policy: &PolicyRef,
    (i, p): (usize, usize),
    problems: &mut Vec<Problem>,
) {
    let module = policy.module.get_ref();
    let Some(info) = catalog.describe(module) else {
        let known = catalog.modules();
        let known = if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        };
        problems.push(doc.value_problem(
            &keys!["scalers", i, "policies", p, "module"],
            format!("unknown module {module:?}; loaded modules: {known}"),
        ));
        return;
    };
    let empty = toml::Table::new();
    let params = policy.params.as_ref().map_or(&empty, |t| &**t.get_ref());
    let param_path = |key: &str| keys!["scalers", i, "policies", p, "params", key];

    for (key, value) in params {
        let Some(spec) = info.parameters.iter().find(|s| &s.name == key) else {
            let accepted: Vec<&str> = info.parameters.iter().map(|s| s.name.as_str()).collect();
            let accepted = if accepted.is_empty() {
                "none".to_owned()
            } else {
                accepted.join(", ")
            };
            problems.push(doc.key_problem(
                &param_path(key),
                format!("unknown parameter {key:?}; {module} accepts: {accepted}"),
            ));
            continue;
        };
        if let Err(why) = check_kind(spec.kind, value, scaler) {
            problems.push(doc.value_problem(&param_path(key), format!("{key}: {why}")));
        }
    }
    for spec in &info.parameters {
        if spec.required && !params.contains_key(&spec.name) {
            problems.push(doc.value_problem(
                &keys!["scalers", i, "policies", p, "params"],
                format!(
                    "missing required parameter {:?} ({}: {})",
                    spec.name,
                    spec.kind.as_str(),
                    spec.description
                ),
            ));
        }
    }
}

/// Whether `value` is of `kind`; the error says what was expected and got.
fn check_kind(kind: ParameterKind, value: &Toml, scaler: &ScalerConfig) -> Result<(), String> {
    let expected = match kind {
        ParameterKind::Number => "a number",
        ParameterKind::Integer => "an integer",
        ParameterKind::Boolean => "true or false",
        ParameterKind::Text => "text",
        ParameterKind::Duration => "a duration such as \"30s\" or \"5m\"",
        ParameterKind::Metric => "the name of one of this scaler's metrics",
    };
    let wrong = || format!("expected {expected}, got {}", describe(value));
    match (kind, value) {
        (ParameterKind::Number, Toml::Float(f)) if !f.is_finite() => {
            Err(format!("expected a finite number, got {f}"))
        }
        (ParameterKind::Number, Toml::Integer(_) | Toml::Float(_))
        | (ParameterKind::Integer, Toml::Integer(_))
        | (ParameterKind::Boolean, Toml::Boolean(_))
        | (ParameterKind::Text, Toml::String(_)) => Ok(()),
        (ParameterKind::Duration, Toml::String(text)) => {
            humantime::parse_duration(text).map(|_| ()).map_err(|err| {
                format!("{text:?} is not a duration ({err}); write e.g. \"30s\" or \"5m\"")
            })
        }
        (ParameterKind::Metric, Toml::String(name)) => {
            if scaler.metrics.contains_key(name) {
                Ok(())
            } else {
                let names: Vec<&str> = scaler.metrics.keys().map(String::as_str).collect();
                let names = if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                };
                Err(format!(
                    "unknown metric {name:?}; this scaler's metrics: {names}"
                ))
            }
        }
        _ => Err(wrong()),
    }
}

/// A TOML value described for an error message.
fn describe(value: &Toml) -> String {
    match value {
        Toml::String(s) => format!("text {s:?}"),
        Toml::Integer(i) => format!("the integer {i}"),
        Toml::Float(f) => format!("the number {f}"),
        Toml::Boolean(b) => format!("{b}"),
        Toml::Datetime(d) => format!("the date-time {d}"),
        Toml::Array(_) => "an array".to_owned(),
        Toml::Table(_) => "a table".to_owned(),
    }
}

impl PolicyRef {
    /// The parameters object handed to the policy in its context: the
    /// configured values as JSON, plus the declared default of every
    /// parameter `info` lists that the config leaves out.
    pub fn parameters(&self, info: &PolicyInfo) -> Json {
        let mut object = serde_json::Map::new();
        if let Some(params) = &self.params {
            for (key, value) in params.get_ref().iter() {
                object.insert(key.clone(), toml_to_json(value));
            }
        }
        for spec in &info.parameters {
            if let Some(default) = &spec.default
                && !object.contains_key(&spec.name)
            {
                object.insert(spec.name.clone(), default.clone());
            }
        }
        Json::Object(object)
    }
}

/// Converts a TOML value to JSON. Date-times become their TOML text; floats
/// JSON cannot hold (NaN, infinities) become null.
pub fn toml_to_json(value: &Toml) -> Json {
    match value {
        Toml::String(s) => Json::String(s.clone()),
        Toml::Integer(i) => Json::from(*i),
        Toml::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Toml::Boolean(b) => Json::Bool(*b),
        Toml::Datetime(d) => Json::String(d.to_string()),
        Toml::Array(items) => Json::Array(items.iter().map(toml_to_json).collect()),
        Toml::Table(table) => Json::Object(
            table
                .iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}
