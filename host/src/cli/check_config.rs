//! `scalewise check --config FILE`: everything `scalewise run --config`
//! checks before it starts, without starting: the file (every located
//! problem), the secrets it names, the policy folder and every module in it,
//! each scaler's policies against what their modules declare, and the
//! simulations' traces. Nothing is contacted (Prometheus, Kubernetes, AWS,
//! coordinators, webhooks) and nothing is written (no journal, no compiled
//! code cache), so it runs in CI on a config and the modules it will run with.

use std::io::Write;
use std::path::Path;

use toml::Spanned;

use crate::config::{Config, ConfigError, Mode, SourceConfig, TargetConfig};
use crate::registry::{Registry, Snapshot};
use crate::runtime::{Runtime, log_safe};
use crate::simulator::Simulation;
use crate::sources::prometheus::PrometheusSource;

use super::LimitArgs;

/// Checks the config at `path` (its modules from `policy_dir` when given,
/// else the config's `policy_dir`). Exit code 0: `scalewise run --config`
/// would start with it and every scaler would have its policies; 1: a
/// problem, each named on stderr with the file and line.
pub fn check_config(
    path: &Path,
    policy_dir: Option<&Path>,
    limits: &LimitArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<u8> {
    let config = match load(path, policy_dir) {
        Ok(config) => config,
        Err(e) => {
            write_problems(err, &e)?;
            return refused(err, path);
        }
    };
    let warnings = config.warnings();
    let mut problems = 0;

    // Compiled here, cached nowhere: a check leaves no files behind.
    let mut runtime_limits = limits.applied_to(config.runtime.clone());
    runtime_limits.cache_dir = None;
    let folder = config.policy_dir.get_ref().clone();
    let snapshot = match Runtime::new(runtime_limits)
        .map_err(|e| format!("cannot start the policy runtime: {e}"))
        .and_then(|rt| Registry::load_dir(rt, &folder).map_err(|e| format!("policy_dir: {e}")))
    {
        Ok(registry) => Some(registry.snapshot()),
        Err(e) => {
            problems += 1;
            writeln!(err, "{}: {e}", path.display())?;
            None
        }
    };
    if let Some(snapshot) = &snapshot {
        for result in [
            config.check_modules_load(&**snapshot),
            config.check_policies(&**snapshot),
        ] {
            problems += report(err, result)?;
        }
    }
    for (name, source) in &config.sources {
        let built = match source.get_ref() {
            SourceConfig::Prometheus(p) => PrometheusSource::new(name, p).map(drop),
        };
        if let Err(e) = built {
            problems += 1;
            writeln!(err, "{}: sources.{name}: {e}", path.display())?;
        }
    }
    if let Err(e) = Simulation::from_config(&config.simulations, config.origin().dir(), 0) {
        problems += 1;
        writeln!(err, "{}: simulations: {e}", path.display())?;
    }
    for warning in &warnings {
        writeln!(err, "warning: {warning}")?;
    }
    if let Some(snapshot) = &snapshot {
        // Modules no scaler uses: a broken one is worth knowing about, not
        // a reason to refuse the config (the daemon starts with it).
        let used = used_modules(&config);
        for (name, failure) in &snapshot.failures {
            if !used.iter().any(|m| m == name) {
                let why = failure.error.lines().next().unwrap_or_default();
                writeln!(
                    err,
                    "warning: {}: no scaler uses it, and it does not load: {}",
                    failure.path.display(),
                    log_safe(why)
                )?;
            }
        }
    }
    if problems > 0 {
        return refused(err, path);
    }
    summary(out, path, &config, &folder, snapshot.as_deref())?;
    Ok(0)
}

/// The config at `path`, validated as `run --config` validates it, with
/// `policy_dir` in place of the file's (before the check: the file's folder
/// need not exist where the check runs).
fn load(path: &Path, policy_dir: Option<&Path>) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut config = Config::parse_unvalidated(&text, path)?;
    if let Some(dir) = policy_dir {
        let span = config.policy_dir.span();
        config.policy_dir = Spanned::new(span, dir.to_path_buf());
    }
    config.validate()?;
    Ok(config)
}

/// Writes a refused check's located problems; how many there were.
fn report(err: &mut dyn Write, result: Result<(), ConfigError>) -> std::io::Result<usize> {
    match result {
        Ok(()) => Ok(0),
        Err(e) => {
            write_problems(err, &e)?;
            Ok(e.problems().len().max(1))
        }
    }
}

/// A line per problem, file:line:column first. A message may quote what a
/// module declared in `describe()`: written as the log writes a policy's
/// words, nothing that drives the terminal.
fn write_problems(err: &mut dyn Write, e: &ConfigError) -> std::io::Result<()> {
    if e.problems().is_empty() {
        return writeln!(err, "{e}");
    }
    for problem in e.problems() {
        writeln!(err, "{}", log_safe(&problem.to_string()))?;
    }
    Ok(())
}

fn refused(err: &mut dyn Write, path: &Path) -> std::io::Result<u8> {
    writeln!(
        err,
        "{}: refused; `scalewise run --config` would not start with it",
        path.display()
    )?;
    Ok(1)
}

/// The module names the scalers' policies use, sorted, once each.
fn used_modules(config: &Config) -> Vec<String> {
    let mut used: Vec<String> = config
        .scalers
        .iter()
        .flat_map(|s| s.get_ref().policies.iter())
        .map(|p| p.get_ref().module.get_ref().clone())
        .collect();
    used.sort();
    used.dedup();
    used
}

/// What a passed check found: the scalers and what they run.
fn summary(
    out: &mut dyn Write,
    path: &Path,
    config: &Config,
    folder: &Path,
    snapshot: Option<&Snapshot>,
) -> std::io::Result<()> {
    writeln!(out, "{}: ok", path.display())?;
    if let Some(snapshot) = snapshot {
        let modules: Vec<String> = snapshot
            .modules
            .iter()
            .map(|(name, m)| format!("{name} {}", m.info().version))
            .collect();
        writeln!(
            out,
            "  policies  {}: {}",
            folder.display(),
            if modules.is_empty() {
                "none".to_owned()
            } else {
                modules.join(", ")
            }
        )?;
    }
    for (name, source) in &config.sources {
        match source.get_ref() {
            SourceConfig::Prometheus(p) => {
                writeln!(out, "  source    {name}: prometheus {}", p.url)?
            }
        }
    }
    for scaler in &config.scalers {
        let s = scaler.get_ref();
        let policies: Vec<&str> = s
            .policies
            .iter()
            .map(|p| p.get_ref().module.get_ref().as_str())
            .collect();
        let mode = match (s.mode, s.paused) {
            (Mode::DryRun, true) => ", dry-run, paused",
            (Mode::DryRun, false) => ", dry-run",
            (Mode::Enforce, true) => ", paused",
            (Mode::Enforce, false) => "",
        };
        writeln!(
            out,
            "  scaler    {}: {}, {}..{} every {}{mode}; {}",
            s.name.get_ref(),
            target_text(s.target.get_ref()),
            s.min.get_ref(),
            s.max.get_ref(),
            humantime::format_duration(s.interval),
            policies.join(", "),
        )?;
    }
    Ok(())
}

/// What a scaler scales, in a few words.
fn target_text(target: &TargetConfig) -> String {
    match target {
        TargetConfig::Simulator { service } => format!("simulated service {service:?}"),
        TargetConfig::Kubernetes(k8s) => format!(
            "{} {:?} in {}",
            k8s.object,
            k8s.name,
            k8s.namespace
                .as_deref()
                .map_or("the client's namespace".to_owned(), |ns| format!(
                    "namespace {ns:?}"
                ))
        ),
        other => other.claim().what,
    }
}
