//! The second phase: each scaler's policies checked against what the loaded
//! modules say about themselves (`describe()`), and the parameters object
//! each policy is given.

use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};

use serde_json::Value as Json;
use toml::Value as Toml;

use super::location::{Document, keys};
use super::{
    Config, ConfigError, Fingerprint, Origin, PolicyRef, Problem, ScalerConfig, into_result,
};
use crate::policy::{ParameterKind, PolicyInfo};

/// The loaded policy modules, as the config checker needs to see them.
pub trait PolicyCatalog {
    /// What the module named `module` (its file name without `.wasm`) says
    /// about itself, if such a module is loaded.
    fn describe(&self, module: &str) -> Option<PolicyInfo>;

    /// The names of every loaded module, for error messages.
    fn modules(&self) -> Vec<String>;

    /// Why the module named `module` failed to load, when its file is in
    /// the folder but no version of it loaded. Its scalers hold until a
    /// good version comes (which is then checked against the config), so
    /// the config's use of it is not an error.
    fn failure(&self, _module: &str) -> Option<String> {
        None
    }
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
            let metrics = metric_names(scaler.get_ref());
            for (p, policy) in scaler.get_ref().policies.iter().enumerate() {
                check_policy(
                    doc,
                    catalog,
                    &metrics,
                    policy.get_ref(),
                    (i, p),
                    &mut problems,
                );
            }
        }
        into_result(problems)
    }

    /// The policies whose loaded module they do not fit (an unknown
    /// parameter, a wrong type, one missing): `(scaler index, policy index,
    /// module, problems as [`Config::check_policies`] would say them)`.
    pub fn policies_not_fitting(
        &self,
        catalog: &dyn PolicyCatalog,
    ) -> Vec<(usize, usize, String, ConfigError)> {
        let text = OnceCell::new();
        let doc = Document::of(&self.origin, &text);
        let mut found = Vec::new();
        for (i, scaler) in self.scalers.iter().enumerate() {
            let metrics = metric_names(scaler.get_ref());
            for (p, policy) in scaler.get_ref().policies.iter().enumerate() {
                let module = policy.get_ref().module.get_ref();
                if catalog.describe(module).is_none() {
                    continue;
                }
                let mut problems = Vec::new();
                check_policy(
                    &doc,
                    catalog,
                    &metrics,
                    policy.get_ref(),
                    (i, p),
                    &mut problems,
                );
                if let Err(e) = into_result(problems) {
                    found.push((i, p, module.clone(), e));
                }
            }
        }
        found
    }

    /// The policies whose module's file is in the folder but did not load
    /// ([`PolicyCatalog::failure`]), each a problem at its `module` value
    /// quoting why. [`Config::check_policies`] lets these through (the
    /// daemon starts, and their scalers hold until a good version comes);
    /// `scalewise check --config` does not.
    pub fn check_modules_load(&self, catalog: &dyn PolicyCatalog) -> Result<(), ConfigError> {
        let text = OnceCell::new();
        let doc = Document::of(&self.origin, &text);
        let mut problems = Vec::new();
        for (i, scaler) in self.scalers.iter().enumerate() {
            for (p, policy) in scaler.get_ref().policies.iter().enumerate() {
                let module = policy.get_ref().module.get_ref();
                if catalog.describe(module).is_some() {
                    continue;
                }
                if let Some(why) = catalog.failure(module) {
                    let why = why.lines().next().unwrap_or_default();
                    problems.push(doc.value_problem(
                        &keys!["scalers", i, "policies", p, "module"],
                        format!("module {module:?} does not load: {why}"),
                    ));
                }
            }
        }
        into_result(problems)
    }
}

impl Config {
    /// Problems at policies' `params` values, each `(scaler index, policy
    /// index, message)`: what a running daemon found when it tried new
    /// parameters ([`crate::daemon`]'s reload). `Ok` when there are none.
    pub fn params_problems(&self, found: &[(usize, usize, String)]) -> Result<(), ConfigError> {
        into_result(self.params_warnings(found))
    }

    /// [`Config::params_problems`] as warnings: what a first trial of the
    /// policies found (`crate::daemon`'s idle trial), located at each
    /// policy's `params` (at the policy when it has none).
    pub fn params_warnings(&self, found: &[(usize, usize, String)]) -> Vec<Problem> {
        let text = OnceCell::new();
        let doc = Document::of(&self.origin, &text);
        found
            .iter()
            .map(|(i, p, message)| {
                doc.value_problem(
                    &keys!["scalers", *i, "policies", *p, "params"],
                    message.clone(),
                )
            })
            .collect()
    }
}

fn metric_names(scaler: &ScalerConfig) -> Vec<&str> {
    scaler.metrics.keys().map(String::as_str).collect()
}

/// Every scaler's policies, as checking them against the modules reads
/// them: grouped by module, parameters and the scaler's metric names, with
/// where each one is in the file. What a running daemon keeps so that a
/// new module version can be checked against the applied config without
/// keeping the config; a fleet written from a template is a few groups.
#[derive(Debug, Default)]
pub struct PolicyUses {
    groups: Vec<UseGroup>,
}

/// Policies that read the same to the checker.
#[derive(Debug)]
struct UseGroup {
    policy: PolicyRef,
    metrics: Vec<String>,
    /// Each one's scaler and policy index in the file.
    at: Vec<(u32, u32)>,
}

impl PolicyUses {
    /// The modules the scalers' policies name (a module once per policy
    /// group: repeats possible).
    pub fn modules(&self) -> impl Iterator<Item = &str> {
        self.groups
            .iter()
            .map(|g| g.policy.module.get_ref().as_str())
    }

    /// Whether a scaler's policy names `module`.
    pub fn names(&self, module: &str) -> bool {
        self.groups
            .iter()
            .any(|g| g.policy.module.get_ref() == module)
    }

    /// The policies of `config`'s scalers.
    pub fn of(config: &Config) -> PolicyUses {
        let mut groups: Vec<UseGroup> = Vec::new();
        let mut by_content: HashMap<Fingerprint, usize> = HashMap::new();
        for (i, scaler) in config.scalers.iter().enumerate() {
            let metrics = metric_names(scaler.get_ref());
            for (p, policy) in scaler.get_ref().policies.iter().enumerate() {
                let policy = policy.get_ref();
                let at = (i as u32, p as u32);
                let content = Fingerprint::of(&(policy, &metrics));
                match by_content.get(&content) {
                    Some(&group) => groups[group].at.push(at),
                    None => {
                        by_content.insert(content, groups.len());
                        groups.push(UseGroup {
                            policy: policy.clone(),
                            metrics: metrics.iter().map(|m| m.to_string()).collect(),
                            at: vec![at],
                        });
                    }
                }
            }
        }
        for group in &mut groups {
            group.at.shrink_to_fit();
        }
        PolicyUses { groups }
    }

    /// How many groups there are (for tests of the grouping).
    #[cfg(test)]
    pub(super) fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// [`Config::check_policies`] for the policies that consult `module`,
    /// locating problems in the text `origin` keeps (read only when there
    /// is a problem). Each group is checked once; a group with a problem
    /// is checked at each of its places, so that every one is reported
    /// where it is.
    pub fn check_module(
        &self,
        module: &str,
        origin: &Origin,
        catalog: &dyn PolicyCatalog,
    ) -> Result<(), ConfigError> {
        let text = OnceCell::new();
        let doc = Document::of(origin, &text);
        let mut problems = Vec::new();
        let groups = self
            .groups
            .iter()
            .filter(|g| g.policy.module.get_ref() == module);
        for group in groups {
            let metrics: Vec<&str> = group.metrics.iter().map(String::as_str).collect();
            let index = |&(i, p): &(u32, u32)| (i as usize, p as usize);
            let mut first = Vec::new();
            check_policy(
                &doc,
                catalog,
                &metrics,
                &group.policy,
                index(&group.at[0]),
                &mut first,
            );
            if first.is_empty() {
                continue;
            }
            problems.append(&mut first);
            for at in &group.at[1..] {
                check_policy(
                    &doc,
                    catalog,
                    &metrics,
                    &group.policy,
                    index(at),
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
    metrics: &[&str],
    policy: &PolicyRef,
    (i, p): (usize, usize),
    problems: &mut Vec<Problem>,
) {
    let module = policy.module.get_ref();
    let described = catalog.describe(module);
    if described.is_none() && catalog.failure(module).is_some() {
        return;
    }
    let Some(info) = described else {
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
    for problem in param_problems(module, &info, params, metrics) {
        problems.push(match problem {
            ParamProblem::Unknown { key, message } => doc.key_problem(
                &keys!["scalers", i, "policies", p, "params", key.as_str()],
                message,
            ),
            ParamProblem::Kind { key, message } => doc.value_problem(
                &keys!["scalers", i, "policies", p, "params", key.as_str()],
                message,
            ),
            ParamProblem::Missing { message } => {
                doc.value_problem(&keys!["scalers", i, "policies", p, "params"], message)
            }
        });
    }
}

/// One way a policy's parameters disagree with what its module declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamProblem {
    /// A parameter the module does not accept.
    Unknown {
        /// The parameter's name.
        key: String,
        /// What is wrong, for the operator.
        message: String,
    },
    /// A value of the wrong kind (or an unknown metric, or a bad duration).
    Kind {
        /// The parameter's name.
        key: String,
        /// What is wrong, for the operator.
        message: String,
    },
    /// A required parameter left out.
    Missing {
        /// What is wrong, for the operator.
        message: String,
    },
}

impl ParamProblem {
    /// The parameter it is about; `None` for a missing one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ParamProblem::Unknown { key, .. } | ParamProblem::Kind { key, .. } => Some(key),
            ParamProblem::Missing { .. } => None,
        }
    }

    /// What is wrong, for the operator.
    pub fn message(&self) -> &str {
        match self {
            ParamProblem::Unknown { message, .. }
            | ParamProblem::Kind { message, .. }
            | ParamProblem::Missing { message } => message,
        }
    }
}

/// Checks a policy's parameters against what `module` declares in `info`:
/// no unknown names, every required one given, each value of its kind
/// (`metrics`: the names a `metric` parameter may take). The daemon runs it
/// on every scaler's policies at load and reload, `scalewise eval` on the
/// parameters it is given.
pub fn param_problems(
    module: &str,
    info: &PolicyInfo,
    params: &toml::Table,
    metrics: &[&str],
) -> Vec<ParamProblem> {
    let mut problems = Vec::new();
    for (key, value) in params {
        let Some(spec) = info.parameters.iter().find(|s| &s.name == key) else {
            let accepted: Vec<&str> = info.parameters.iter().map(|s| s.name.as_str()).collect();
            let accepted = if accepted.is_empty() {
                "none".to_owned()
            } else {
                accepted.join(", ")
            };
            problems.push(ParamProblem::Unknown {
                key: key.clone(),
                message: format!("unknown parameter {key:?}; {module} accepts: {accepted}"),
            });
            continue;
        };
        if let Err(why) = check_kind(spec.kind, value, metrics) {
            problems.push(ParamProblem::Kind {
                key: key.clone(),
                message: format!("{key}: {why}"),
            });
        }
    }
    for spec in &info.parameters {
        if spec.required && !params.contains_key(&spec.name) {
            problems.push(ParamProblem::Missing {
                message: format!(
                    "missing required parameter {:?} ({}: {})",
                    spec.name,
                    spec.kind.as_str(),
                    spec.description
                ),
            });
        }
    }
    problems
}

/// Whether `value` is of `kind`; the error says what was expected and got.
fn check_kind(kind: ParameterKind, value: &Toml, metrics: &[&str]) -> Result<(), String> {
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
        (ParameterKind::Integer, Toml::Float(f)) if f.fract() == 0.0 && f.abs() < 1e15 => Err(
            format!("expected an integer, got the number {f:?}; write it as {f:.0}"),
        ),
        (ParameterKind::Metric, Toml::String(name)) => {
            if metrics.contains(&name.as_str()) {
                Ok(())
            } else {
                let names = if metrics.is_empty() {
                    "none".to_owned()
                } else {
                    metrics.join(", ")
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
        Toml::Float(f) => format!("the number {f:?}"),
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
