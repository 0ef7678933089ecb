//! `scalewise check --config FILE`: everything `scalewise run --config`
//! checks before it starts, without starting: the file (every located
//! problem), the secrets it names, the policy folder and every module in it,
//! each scaler's policies against what their modules declare, the
//! simulations' traces, and two scalers of one target once the defaults a
//! target leaves out are filled in (from local files and the environment).
//! Nothing is contacted (Prometheus, Kubernetes, AWS,
//! coordinators, webhooks) and nothing is written (no journal, no compiled
//! code cache), so it runs in CI on a config and the modules it will run with.
//!
//! With `--tick`, then one dry-run tick of every scaler against the real
//! systems (read only), with a scratch journal that is deleted.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::clock::{Clock, format_ms, wall_clock_ms};
use crate::config::{Config, ConfigError, Mode, SIMULATOR_SOURCE, SourceConfig, TargetConfig};
use crate::daemon::{Daemon, DaemonError};
use crate::journal::{ActuationRecord, EvaluationOutcome, TickRecord};
use crate::registry::{Registry, Snapshot};
use crate::runtime::{Runtime, log_safe};
use crate::scaler::summarize;
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
    tick: bool,
    limits: &LimitArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<u8> {
    // The flags' limits are validated with the rest: a scaler whose max is
    // above `--max-replicas` is refused, as `describe()` runs under them.
    let mut config =
        match Config::load_with_overrides(path, policy_dir, |runtime| limits.applied_to(runtime)) {
            Ok(config) => config,
            Err(e) => {
                write_problems(err, &e)?;
                policy_dir_note(err, policy_dir)?;
                // A problem located at a [runtime] key may be a flag's value.
                let given = limits.given();
                if !given.is_empty() {
                    writeln!(
                        err,
                        "note: {} replaced the file's [runtime] values in this check",
                        given.join(", ")
                    )?;
                }
                return refused(err, path);
            }
        };
    let mut warnings = config.warnings();
    let mut problems = 0;

    // Compiled here; a check leaves no files behind. With --tick the code
    // is cached in a scratch folder, where the tick's daemon finds it
    // instead of compiling every module again.
    let scratch = if tick {
        Some(tempfile::tempdir()?)
    } else {
        None
    };
    config.runtime.cache_dir = scratch.as_ref().map(|d| d.path().join("cache"));
    let folder = config.policy_dir.get_ref().clone();
    let snapshot = match Runtime::new(config.runtime.clone())
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
    // Scalers whose module does not load: the daemon would start and hold
    // them, so they refuse the check but not a start.
    let mut unloaded = 0;
    if let Some(snapshot) = &snapshot {
        unloaded = report(err, config.check_modules_load(&**snapshot))?;
        let refused = report(err, config.check_policies(&**snapshot))?;
        problems += refused;
        // Each policy once on an idle target, as `run` does at start.
        if refused == 0 {
            let trials = crate::daemon::trial::idle_trials(&config, snapshot, None);
            let found = crate::daemon::trial::run_trials(trials, wall_clock_ms());
            warnings.extend(config.params_warnings(&found));
        }
    }
    for (name, source) in &config.sources {
        let built = match source.get_ref() {
            SourceConfig::Prometheus(p) => PrometheusSource::new(name, p).map(drop),
        };
        if let Err(e) = built {
            problems += 1;
            writeln!(
                err,
                "{}: {}: {e}",
                path.display(),
                crate::config::source_path(name)
            )?;
        }
    }
    // The daemon's journal (a tick's daemon writes a scratch one).
    if let Err(e) = crate::journal::Journal::check_openable(&config.journal.path) {
        problems += 1;
        writeln!(err, "{}: [journal] path: {e}", path.display())?;
    }
    if let Err(e) = Simulation::from_config(&config.simulations, config.origin().dir(), 0) {
        problems += 1;
        writeln!(err, "{}: simulations: {e}", path.display())?;
    }
    // Two targets that are one once the defaults are filled in, as the
    // daemon refuses them: the namespace from the client configuration,
    // the region from the environment and the AWS profile (local files;
    // the instance metadata service is not asked).
    let needed = config.defaults_needed();
    let defaults = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(crate::daemon::find_target_defaults(needed, None, false));
    problems += report(err, config.check_resolved_targets(&defaults))?;
    for what in crate::daemon::unknown_defaults(needed, &defaults) {
        writeln!(
            err,
            "warning: two scalers may scale one target: {what}; name it on both targets to be sure"
        )?;
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
    if problems > 0 || unloaded > 0 {
        policy_dir_note(err, policy_dir)?;
    }
    if problems > 0 {
        return refused(err, path);
    }
    if unloaded > 0 {
        writeln!(
            err,
            "{}: refused; `scalewise run --config` would start with it, but the scalers of the \
             modules above would hold until a version that loads is in the policy folder",
            path.display()
        )?;
        return Ok(1);
    }
    summary(out, path, &config, &folder, snapshot.as_deref())?;
    if let Some(scratch) = scratch {
        return tick_once(config, scratch.path(), out, err);
    }
    Ok(0)
}

/// The least and the most simulated history simulated services have at
/// the tick (see [`simulated_lead`]).
const MIN_SIMULATED_LEAD: Duration = Duration::from_secs(60);
const MAX_SIMULATED_LEAD: Duration = Duration::from_secs(24 * 3600);

/// How long simulated services run before the tick, so that their metrics
/// have the history the scalers read: the longest window a scaler asks of
/// the simulator (a minute at least, a day at most).
fn simulated_lead(config: &Config) -> Duration {
    config
        .scalers
        .iter()
        .flat_map(|s| s.get_ref().metrics.values())
        .map(|m| m.get_ref())
        .filter(|m| m.source == SIMULATOR_SOURCE)
        .filter_map(|m| m.window)
        .max()
        .unwrap_or_default()
        .clamp(MIN_SIMULATED_LEAD, MAX_SIMULATED_LEAD)
}

/// How long one scaler's tick may take before it is reported as hanging.
const TICK_TIMEOUT: Duration = Duration::from_secs(60);

/// `--tick`: one tick of every scaler against the real systems, in dry-run
/// and with a scratch journal: each target read, each metric fetched, each
/// policy asked. Nothing is changed, notified or kept. Exit 1 when a
/// target or a metric cannot be read or a policy fails.
/// `scratch` holds its journal, and the code the check compiled.
fn tick_once(
    mut config: Config,
    scratch: &Path,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<u8> {
    for scaler in &mut config.scalers {
        scaler.get_mut().mode = Mode::DryRun;
    }
    config.journal.path = scratch.join("journal.db");
    config.notifications.clear();
    // This process is not a replica of the daemon: it neither takes the
    // lease nor waits for it.
    config.leader_election = None;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(crate::runtime::THREAD_STACK)
        .worker_threads(2)
        .enable_all()
        .build()?;
    let now_ms = wall_clock_ms();
    let lead = simulated_lead(&config);
    let ticked = runtime.block_on(async {
        // Simulated services start early, so that their metrics have the
        // samples the scalers read (real systems ignore the clock).
        let started = Clock::starting_at(now_ms - lead.as_millis() as i64, 1.0);
        let mut daemon = Daemon::build(config, started).await?;
        let mut records = Vec::new();
        for scaler in daemon.scalers_mut() {
            let name = scaler.spec().name.clone();
            let metrics: Vec<String> = scaler
                .spec()
                .metrics
                .iter()
                .map(|m| m.name.clone())
                .collect();
            let record = tokio::time::timeout(TICK_TIMEOUT, scaler.tick(now_ms)).await;
            records.push((name, metrics, record.ok()));
        }
        Ok::<_, DaemonError>(records)
    });
    let records = match ticked {
        Ok(records) => records,
        Err(e) => {
            writeln!(err, "error: --tick: {}", log_safe(&e.to_string()))?;
            return Ok(1);
        }
    };
    writeln!(
        out,
        "one tick of each scaler at {}, in dry-run (nothing is changed, notified or kept):",
        format_ms(now_ms)
    )?;
    let mut failed = 0;
    for (name, metrics, record) in &records {
        let Some(record) = record else {
            failed += 1;
            writeln!(
                out,
                "  {name}: no answer within {} (a target or source that does not answer)",
                humantime::format_duration(TICK_TIMEOUT)
            )?;
            continue;
        };
        let (line, problems) = tick_lines(record, metrics);
        failed += usize::from(problems);
        for l in line {
            writeln!(out, "{}", log_safe(&l))?;
        }
    }
    if failed > 0 {
        writeln!(
            err,
            "{failed} of {} scalers could not read their target or metrics, or a policy failed",
            records.len()
        )?;
        return Ok(1);
    }
    Ok(0)
}

/// What one tick read and decided, a line each; and whether anything
/// failed.
fn tick_lines(record: &TickRecord, metrics: &[String]) -> (Vec<String>, bool) {
    let name = &record.scaler;
    if let ActuationRecord::ObserveFailed { error } = &record.actuation {
        return (
            vec![format!("  {name}: cannot read the target: {error}")],
            true,
        );
    }
    let t = &record.target;
    let mut lines = vec![format!(
        "  {name} ({} {}): current {}, ready {}",
        t.kind, t.name, t.current, t.ready
    )];
    let read = record.evaluations.first().map(|e| &e.context.metrics);
    for metric in metrics {
        if let Some(failure) = record.metric_errors.iter().find(|f| &f.metric == metric) {
            lines.push(format!(
                "    metric {metric}: {} ({})",
                failure.error, failure.kind
            ));
            continue;
        }
        let points = read
            .and_then(|m| m.iter().find(|m| &m.name == metric))
            .map(|m| m.points.as_slice())
            .unwrap_or_default();
        match points.last() {
            Some(newest) => lines.push(format!(
                "    metric {metric}: {} ({} point{} read)",
                newest.value,
                points.len(),
                if points.len() == 1 { "" } else { "s" }
            )),
            None => lines.push(format!("    metric {metric}: no points")),
        }
    }
    lines.push(format!("    {}", summarize(record)));
    let failed = !record.metric_errors.is_empty()
        || record
            .evaluations
            .iter()
            .any(|e| matches!(e.outcome, EvaluationOutcome::Failed { .. }));
    (lines, failed)
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

/// With `--policy-dir`, says that problems at the file's `policy_dir` (or
/// of its modules) are of the flag's folder: the file's line is not wrong.
fn policy_dir_note(err: &mut dyn Write, policy_dir: Option<&Path>) -> std::io::Result<()> {
    match policy_dir {
        Some(dir) => writeln!(
            err,
            "note: --policy-dir {} replaced the file's policy_dir in this check",
            dir.display()
        ),
        None => Ok(()),
    }
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
    let writes = if config.api.token.is_some() {
        "pause and resume with the API token"
    } else {
        "pause and resume from loopback only"
    };
    let reads = match config.api.reads {
        crate::config::ApiReads::Open => "reads open",
        crate::config::ApiReads::Token => "reads with the API token",
    };
    let scheme = if config.api.tls.is_some() {
        "https"
    } else {
        "http"
    };
    writeln!(
        out,
        "  api       {scheme}://{}; {writes}; {reads}",
        config.api.listen
    )?;
    writeln!(
        out,
        "  journal   {}, records kept {}",
        config.journal.path.display(),
        humantime::format_duration(config.journal.retention)
    )?;
    for (name, source) in &config.sources {
        match source.get_ref() {
            SourceConfig::Prometheus(p) => {
                // Credentials written into the URL are not for CI logs.
                let url = match url::Url::parse(&p.url) {
                    Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
                        let _ = url.set_username("");
                        let _ = url.set_password(None);
                        url.to_string()
                    }
                    _ => p.url.clone(),
                };
                writeln!(out, "  source    {name}: prometheus {url}")?
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
