//! A first trial of every policy, at start, in `scalewise check --config`
//! and, for the new and changed scalers, at a reload: each is evaluated
//! once on an idle target (at its scaler's `min`, or 1, with every metric
//! reading 0 over its window). Parameters only a policy can judge (a time
//! zone, a schedule's entries, an aggregate's name) are otherwise first
//! judged at the first tick, which then fails at every tick and holds the
//! scaler. A failure here is a warning, not a refusal: a policy may fail on
//! zeros for reasons of its own. (A reload also tries a running scaler's
//! new parameters on its last real context, and refuses those that fail
//! there: the daemon's `try_new_parameters`.)

use std::collections::HashSet;

use crate::config::{Config, ScalerConfig};
use crate::policy::{Context, Metric, Point, Target};
use crate::registry::Snapshot;
use crate::runtime::PolicyModule;

/// One policy to try, small until it runs (a trial's context, with a point
/// per step over each window, is built only then: at 10,000 scalers the
/// contexts of every trial at once would take hundreds of MiB).
pub(crate) struct Trial {
    scaler: usize,
    policy: usize,
    module: PolicyModule,
    name: String,
    target: Target,
    /// Each metric's name, window and step, ms.
    metrics: Vec<(String, i64, i64)>,
    parameters: serde_json::Value,
}

/// The trials of the policies of `config`'s scalers `which` (indices in
/// ascending order; all when `None`) whose module is loaded: one per distinct (module, parameters,
/// metrics, bounds), on the first scaler that has it.
pub(crate) fn idle_trials(
    config: &Config,
    snapshot: &Snapshot,
    which: Option<&[usize]>,
) -> Vec<Trial> {
    let mut tried = HashSet::new();
    let mut trials = Vec::new();
    for (i, scaler) in config.scalers.iter().enumerate() {
        if which.is_some_and(|which| which.binary_search(&i).is_err()) {
            continue;
        }
        let scaler = scaler.get_ref();
        let metrics = metric_shapes(scaler);
        let (min, max) = (*scaler.min.get_ref(), *scaler.max.get_ref());
        let replicas = min.max(1).min(max);
        let target = Target {
            kind: scaler.target.get_ref().kind().to_owned(),
            name: scaler.name.get_ref().clone(),
            current: replicas,
            ready: replicas,
            min,
            max,
        };
        for (p, policy) in scaler.policies.iter().enumerate() {
            let policy = policy.get_ref();
            let module_name = policy.module.get_ref();
            let Some(module) = snapshot.modules.get(module_name) else {
                continue;
            };
            let parameters =
                crate::scaler::with_defaults(&super::configured_params(policy), module.info());
            let key = format!(
                "{module_name}\0{parameters}\0{}\0{metrics:?}\0{min}\0{max}",
                target.kind
            );
            if !tried.insert(key) {
                continue;
            }
            trials.push(Trial {
                scaler: i,
                policy: p,
                module: module.clone(),
                name: scaler.name.get_ref().clone(),
                target: target.clone(),
                metrics: metrics.clone(),
                parameters,
            });
        }
    }
    trials
}

/// Runs `trials` at `now_ms` (blocking: call off the async runtime's
/// threads), one context at a time, and returns each failure as `(scaler
/// index, policy index, message)`, for [`Config::params_warnings`].
pub(crate) fn run_trials(trials: Vec<Trial>, now_ms: i64) -> Vec<(usize, usize, String)> {
    trials
        .into_iter()
        .filter_map(|trial| {
            let context = Context {
                now_ms,
                scaler: trial.name,
                target: trial.target,
                metrics: idle_metrics(&trial.metrics, now_ms),
                events: Vec::new(),
                parameters: trial.parameters,
                state: None,
            };
            let err = trial.module.evaluate(&context).err()?;
            Some((
                trial.scaler,
                trial.policy,
                format!(
                    "the policy fails on an idle target ({} replicas, every metric 0) ({}): {}; \
                     if its parameters are the cause, every tick will fail alike and hold the \
                     scaler",
                    context.target.current,
                    err.kind.as_str(),
                    crate::runtime::log_safe(err.message.lines().next().unwrap_or_default())
                ),
            ))
        })
        .collect()
}

/// Each of the scaler's metrics: its name, its window (0 for an instant
/// one) and its step (its `step`, else the interval), ms.
fn metric_shapes(scaler: &ScalerConfig) -> Vec<(String, i64, i64)> {
    let interval_ms = scaler.interval.as_millis() as i64;
    scaler
        .metrics
        .iter()
        .map(|(name, metric)| {
            let metric = metric.get_ref();
            let step_ms = metric
                .step
                .map_or(interval_ms, |s| s.as_millis() as i64)
                .max(1);
            let window_ms = metric.window.map_or(0, |w| w.as_millis() as i64);
            (name.clone(), window_ms, step_ms)
        })
        .collect()
}

/// The metrics reading 0: a point a step over each window, ending at
/// `now_ms` (one point for an instant metric).
fn idle_metrics(shapes: &[(String, i64, i64)], now_ms: i64) -> Vec<Metric> {
    shapes
        .iter()
        .map(|(name, window_ms, step_ms)| Metric {
            name: name.clone(),
            points: (0..=window_ms / step_ms)
                .rev()
                .map(|k| Point {
                    timestamp_ms: now_ms - k * step_ms,
                    value: 0.0,
                })
                .collect(),
            error: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trial holds no series until it runs: a point per step over a
    /// week's window is built for one trial at a time.
    #[test]
    fn a_trial_holds_its_metrics_shape_not_its_points() {
        let shapes = vec![("load".to_owned(), 7 * 24 * 3_600_000, 300_000)];
        let metrics = idle_metrics(&shapes, 1_000_000_000_000);
        assert_eq!(metrics[0].points.len(), 2_017);
        assert_eq!(metrics[0].points[2_016].timestamp_ms, 1_000_000_000_000);
        assert!(metrics[0].points.iter().all(|p| p.value == 0.0));
        let instant = idle_metrics(&[("cpu".to_owned(), 0, 15_000)], 5);
        assert_eq!(
            instant[0].points,
            vec![Point {
                timestamp_ms: 5,
                value: 0.0
            }]
        );
    }
}
