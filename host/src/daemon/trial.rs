//! A first trial of every policy, at start and in `scalewise check
//! --config`: each is evaluated once on an idle target (at its scaler's
//! `min`, or 1, with every metric reading 0 over its window). Parameters
//! only a policy can judge (a time zone, a schedule's entries, an
//! aggregate's name) are otherwise first judged at the first tick, which
//! then fails at every tick and holds the scaler. A failure here is a
//! warning, not a refusal: a policy may fail on zeros for reasons of its
//! own (a reload, which has the scaler's last real context, refuses).

use std::collections::HashSet;

use crate::config::{Config, ScalerConfig};
use crate::policy::{Context, Metric, Point, Target};
use crate::registry::Snapshot;
use crate::runtime::PolicyModule;

/// One policy to try: `(scaler index, policy index, module, context)`.
pub(crate) type Trial = (usize, usize, PolicyModule, Context);

/// The trials of `config`'s policies whose module is loaded, at `now_ms`:
/// one per distinct (module, parameters, metrics, bounds), on the first
/// scaler that has it.
pub(crate) fn idle_trials(config: &Config, snapshot: &Snapshot, now_ms: i64) -> Vec<Trial> {
    let mut tried = HashSet::new();
    let mut trials = Vec::new();
    for (i, scaler) in config.scalers.iter().enumerate() {
        let scaler = scaler.get_ref();
        let metrics = idle_metrics(scaler, now_ms);
        let shape: Vec<(&str, usize)> = metrics
            .iter()
            .map(|m| (m.name.as_str(), m.points.len()))
            .collect();
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
                "{module_name}\0{parameters}\0{}\0{:?}\0{}\0{}",
                target.kind, shape, min, max
            );
            if !tried.insert(key) {
                continue;
            }
            let context = Context {
                now_ms,
                scaler: scaler.name.get_ref().clone(),
                target: target.clone(),
                metrics: metrics.clone(),
                events: Vec::new(),
                parameters,
                state: None,
            };
            trials.push((i, p, module.clone(), context));
        }
    }
    trials
}

/// Runs `trials` (blocking: call off the async runtime's threads) and
/// returns each failure as `(scaler index, policy index, message)`, for
/// [`Config::params_warnings`].
pub(crate) fn run_trials(trials: Vec<Trial>) -> Vec<(usize, usize, String)> {
    trials
        .into_iter()
        .filter_map(|(i, p, module, context)| {
            let err = module.evaluate(&context).err()?;
            Some((
                i,
                p,
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

/// The scaler's metrics reading 0: one point at `now_ms` for an instant
/// one, a point a step (its `step`, else the interval) over its window for
/// a windowed one.
fn idle_metrics(scaler: &ScalerConfig, now_ms: i64) -> Vec<Metric> {
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
            let steps = metric.window.map_or(0, |w| w.as_millis() as i64 / step_ms);
            Metric {
                name: name.clone(),
                points: (0..=steps)
                    .rev()
                    .map(|k| Point {
                        timestamp_ms: now_ms - k * step_ms,
                        value: 0.0,
                    })
                    .collect(),
                error: None,
            }
        })
        .collect()
}
