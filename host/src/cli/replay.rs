//! `scalewise replay`: what would another module (a new version, other
//! parameters) have decided on the inputs the journal recorded?
//!
//! Every recorded evaluation of the policy is run again with its recorded
//! context (the parameters changed by `--params`, and by default the state
//! the replayed module itself returned at the scaler's previous record), and
//! the new answer is compared with the recorded one. The inputs are what
//! happened: a different decision would have changed the replica counts
//! that followed, which a replay cannot know. It answers "where, and which
//! way, would this module have decided differently", the question to ask
//! before rolling a new policy version out.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use clap::ValueEnum;
use serde::Serialize;

use crate::clock::{format_ms, parse_time_ms};
use crate::config::RuntimeLimits;
use crate::journal::{EvaluationOutcome, Journal, Query};
use crate::runtime::{PolicyModule, Runtime, json_safe, log_safe, outcome_of};

use super::journal::locate;
use super::{ReplayArgs, apply_params, param_problems};

/// Which state each replayed evaluation is handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum StateSource {
    /// The state the replayed module returned at the scaler's previous
    /// record (the recorded one at the scaler's first).
    #[default]
    Own,
    /// The state recorded with each evaluation.
    Recorded,
}

/// How a replayed answer compares with the recorded one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Verdict {
    /// The same action (hold, or the same replica count).
    Same,
    /// Asks for more replicas than was recorded.
    Higher,
    /// Asks for fewer replicas.
    Lower,
    /// Fails where the recording decided.
    FailsNow,
    /// Decides where the recording failed.
    DecidesNow,
    /// Both failed, the same way (the same kind of failure).
    BothFail,
    /// Both failed, differently (ran out of fuel then, traps now).
    FailsDifferently,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Same => "same",
            Verdict::Higher => "higher",
            Verdict::Lower => "lower",
            Verdict::FailsNow => "fails-now",
            Verdict::DecidesNow => "decides-now",
            Verdict::BothFail => "both-fail",
            Verdict::FailsDifferently => "fails-differently",
        }
    }
}

#[derive(Debug, Serialize)]
struct Row<'a> {
    id: Option<i64>,
    time_ms: i64,
    scaler: &'a str,
    /// The policy's index in its scaler (a scaler may run a module twice).
    policy: usize,
    verdict: Verdict,
    recorded: &'a EvaluationOutcome,
    replayed: &'a EvaluationOutcome,
}

/// The replica count an answer asks for: a hold keeps `current`.
fn asked(outcome: &EvaluationOutcome, current: u32) -> Option<u32> {
    match outcome {
        EvaluationOutcome::Decided { decision } => Some(decision.desired.unwrap_or(current)),
        EvaluationOutcome::Failed { .. } => None,
    }
}

fn verdict(recorded: &EvaluationOutcome, replayed: &EvaluationOutcome, current: u32) -> Verdict {
    match (asked(recorded, current), asked(replayed, current)) {
        (Some(then), Some(now)) if now > then => Verdict::Higher,
        (Some(then), Some(now)) if now < then => Verdict::Lower,
        (Some(_), Some(_)) => Verdict::Same,
        (Some(_), None) => Verdict::FailsNow,
        (None, Some(_)) => Verdict::DecidesNow,
        (None, None) => match (recorded, replayed) {
            (
                EvaluationOutcome::Failed { kind: then, .. },
                EvaluationOutcome::Failed { kind: now, .. },
            ) if then != now => Verdict::FailsDifferently,
            _ => Verdict::BothFail,
        },
    }
}

fn describe(outcome: &EvaluationOutcome) -> String {
    match outcome {
        EvaluationOutcome::Decided { decision } => {
            let action = match decision.desired {
                Some(n) => format!("scale to {n}"),
                None => "hold".to_owned(),
            };
            format!("{action} — {}", log_safe(&decision.reason))
        }
        EvaluationOutcome::Failed { kind, error } => {
            let first = error.lines().next().unwrap_or_default();
            format!("failed ({kind}): {}", log_safe(first))
        }
    }
}

/// Runs `scalewise replay`: 0 when every answer is the same, 1 when some
/// differ, 2 on an error, as `diff` does (so a mistyped flag, which the
/// argument parser answers with 2, never reads as "differ").
pub fn replay(args: &ReplayArgs, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<u8> {
    match run(args, out, err) {
        Ok(code) => Ok(code),
        Err(e) => {
            writeln!(err, "error: {e}")?;
            Ok(2)
        }
    }
}

fn run(args: &ReplayArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<u8, String> {
    let path = locate(&args.at)?;
    let parse = |what: &str, t: &str| parse_time_ms(t).map_err(|e| format!("{what}: {e}"));
    let since_ms = args
        .since
        .as_deref()
        .map(|t| parse("--since", t))
        .transpose()?;
    let until_ms = args
        .until
        .as_deref()
        .map(|t| parse("--until", t))
        .transpose()?;
    // The module under each set of limits the journal recorded (flags
    // override them), as `eval --record` replays one call: a call that ran
    // out of fuel in production runs out again here. Key: the limits as
    // JSON; "" for the defaults.
    // Read once: every set of limits runs the bytes whose digest the
    // summary names, even if the file is replaced meanwhile.
    let bytes = std::fs::read(&args.module)
        .map_err(|e| format!("cannot read {}: {e}", args.module.display()))?;
    let name = args
        .module
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let load = |limits: RuntimeLimits| -> Result<PolicyModule, String> {
        let runtime = Runtime::new(limits).map_err(|e| e.to_string())?;
        runtime
            .load(&name, &bytes)
            // The module's own words (its describe()'s stderr) escaped.
            .map_err(|e| format!("{}: {}", args.module.display(), log_safe(&e.to_string())))
    };
    if let (Some(since), Some(until)) = (since_ms, until_ms)
        && since >= until
    {
        return Err(format!(
            "--since {} is not before --until {}",
            format_ms(since),
            format_ms(until)
        ));
    }
    let journal = Journal::open_read_only(&path).map_err(|e| e.to_string())?;
    let mut records = journal
        .query_blocking(&Query {
            scaler: args.scaler.clone(),
            since_ms,
            until_ms,
            limit: args.limit,
        })
        .map_err(|e| e.to_string())?;
    if records.len() >= args.limit {
        // The newest `limit` ticks (of every scaler and policy) were read:
        // older evaluations in the range are not replayed.
        writeln!(
            err,
            "warning: only the newest {} ticks of the range were read (--limit); older ones are \
             not replayed: narrow it with --since, --until or --scaler, or raise --limit",
            args.limit
        )
        .map_err(|e| e.to_string())?;
    }
    records.sort_by_key(|r| (r.time_ms, r.id));
    // Loaded first under the limits the newest records ran under (a module
    // that needs more memory or stack than the defaults give would not
    // load under those), for its name and the parameter check.
    let first = records
        .iter()
        .rev()
        .flat_map(|r| &r.evaluations)
        .find_map(|e| e.limits.as_deref().cloned());
    let first_key = first
        .as_ref()
        .map(|l| serde_json::to_string(l).unwrap_or_default())
        .unwrap_or_default();
    let module = load(args.limits.applied_to(first.unwrap_or_default()))?;
    let mut modules: HashMap<String, PolicyModule> = HashMap::new();
    modules.insert(first_key, module.clone());
    let policy = args
        .policy
        .clone()
        .unwrap_or_else(|| module.name().to_string());

    // Each policy's own state, by scaler and the policy's index there.
    let mut own_state: HashMap<(String, usize), Option<Vec<u8>>> = HashMap::new();
    let mut counts: BTreeMap<Verdict, usize> = BTreeMap::new();
    let mut params_checked = false;
    // Every evaluation of the policy: a scaler may run one module twice
    // (two targets for target tracking, say).
    let evaluations = records.iter().flat_map(|record| {
        record
            .evaluations
            .iter()
            .enumerate()
            .filter(|(_, e)| e.module == policy)
            .map(move |(index, e)| (record, index, e))
    });
    // Evaluations no module ran (its file was missing or failed to load):
    // nothing to compare with, so they are counted apart, not as differing.
    let mut not_run = 0usize;
    for (record, index, evaluation) in evaluations {
        if evaluation.digest.is_none() {
            not_run += 1;
            continue;
        }
        let several = record
            .evaluations
            .iter()
            .filter(|e| e.module == policy)
            .count()
            > 1;
        let mut ctx = evaluation.context.clone();
        apply_params(&mut ctx.parameters, &args.params)?;
        if !args.params.is_empty() && !params_checked {
            // Checked once, on the first context: the same overrides apply
            // to every record.
            let problems = param_problems(&module, &ctx)?;
            let ours: Vec<_> = problems
                .iter()
                .filter(|p| {
                    p.key()
                        .is_some_and(|key| args.params.iter().any(|(k, _)| k == key))
                })
                .collect();
            if !ours.is_empty() {
                let messages: Vec<&str> = ours.iter().map(|p| p.message()).collect();
                return Err(format!("--params: {}", messages.join("; ")));
            }
            params_checked = true;
        }
        // As the daemon would hand them to this module: the parameters it
        // declares, with its own defaults for those not given (the record
        // holds the recorded version's defaults beside the config's
        // values, and one it does not declare would be refused). After the
        // check, which refuses an undeclared one given with --params.
        if let serde_json::Value::Object(map) = &mut ctx.parameters {
            let declared = &module.info().parameters;
            map.retain(|key, value| !value.is_null() && declared.iter().any(|p| p.name == *key));
        }
        ctx.parameters = crate::scaler::with_defaults(&ctx.parameters, module.info());
        let own_key = (record.scaler.clone(), index);
        if args.state == StateSource::Own
            && let Some(state) = own_state.get(&own_key)
        {
            ctx.state = state.clone();
        }
        let key = evaluation
            .limits
            .as_deref()
            .map(|l| serde_json::to_string(l).unwrap_or_default())
            .unwrap_or_default();
        if !modules.contains_key(&key) {
            let recorded = evaluation.limits.as_deref().cloned().unwrap_or_default();
            modules.insert(key.clone(), load(args.limits.applied_to(recorded))?);
        }
        let replayed = outcome_of(modules[&key].evaluate(&ctx));
        match &replayed {
            EvaluationOutcome::Decided { decision } => {
                own_state.insert(own_key, decision.state.clone());
            }
            // As the daemon does: a failed call leaves the state it was
            // given for the next one (not the recording's next state, which
            // the recorded version's answers made).
            _ => {
                own_state
                    .entry(own_key)
                    .or_insert_with(|| ctx.state.clone());
            }
        }
        let v = verdict(&evaluation.outcome, &replayed, ctx.target.current);
        *counts.entry(v).or_default() += 1;
        if v == Verdict::Same && !args.all {
            continue;
        }
        if args.json {
            let row = Row {
                id: record.id,
                time_ms: record.time_ms,
                scaler: &record.scaler,
                policy: index,
                verdict: v,
                recorded: &evaluation.outcome,
                replayed: &replayed,
            };
            let line = serde_json::to_string(&row).map_err(|e| e.to_string())?;
            writeln!(out, "{}", json_safe(line)).map_err(|e| e.to_string())?;
        } else {
            writeln!(
                out,
                "#{} {} {}{} {} (current {})\n  recorded: {}\n  replayed: {}",
                record.id.unwrap_or_default(),
                format_ms(record.time_ms),
                log_safe(&record.scaler),
                if several {
                    format!(" policies[{index}]")
                } else {
                    String::new()
                },
                v.as_str(),
                ctx.target.current,
                describe(&evaluation.outcome),
                describe(&replayed),
            )
            .map_err(|e| e.to_string())?;
        }
    }
    let replayed_count: usize = counts.values().sum();
    if replayed_count == 0 && not_run > 0 {
        return Err(format!(
            "{}: the {not_run} recorded evaluations of policy {policy:?} ran no module (it was \
             missing or failed to load then): nothing to replay",
            path.display()
        ));
    }
    if replayed_count == 0 {
        return Err(format!(
            "{}: no recorded evaluation of policy {policy:?}{} to replay (--policy names the \
             recorded one when the file is named otherwise)",
            path.display(),
            args.scaler
                .as_deref()
                .map(|s| format!(" by scaler {s:?}"))
                .unwrap_or_default()
        ));
    }
    let mut summary: Vec<String> = counts
        .iter()
        .map(|(v, n)| format!("{n} {}", v.as_str()))
        .collect();
    if not_run > 0 {
        summary.push(format!("{not_run} skipped (no module ran then)"));
    }
    writeln!(
        err,
        "replayed {replayed_count} evaluations of {policy:?} with {} ({}): {}",
        args.module.display(),
        &module.digest()[..12],
        summary.join(", ")
    )
    .map_err(|e| e.to_string())?;
    let same = counts
        .keys()
        .all(|v| matches!(v, Verdict::Same | Verdict::BothFail));
    Ok(if same { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Decision;

    fn decided(desired: Option<u32>) -> EvaluationOutcome {
        EvaluationOutcome::Decided {
            decision: Decision {
                desired,
                reason: "r".into(),
                state: None,
            },
        }
    }

    fn failed() -> EvaluationOutcome {
        EvaluationOutcome::Failed {
            kind: "trap".into(),
            error: "boom".into(),
        }
    }

    #[test]
    fn a_hold_asks_for_the_current_count() {
        assert_eq!(verdict(&decided(None), &decided(Some(3)), 3), Verdict::Same);
        assert_eq!(
            verdict(&decided(None), &decided(Some(4)), 3),
            Verdict::Higher
        );
        assert_eq!(
            verdict(&decided(Some(5)), &decided(None), 3),
            Verdict::Lower
        );
        assert_eq!(verdict(&decided(Some(5)), &failed(), 3), Verdict::FailsNow);
        assert_eq!(verdict(&failed(), &decided(None), 3), Verdict::DecidesNow);
        assert_eq!(verdict(&failed(), &failed(), 3), Verdict::BothFail);
        let timeout = EvaluationOutcome::Failed {
            kind: "timeout".into(),
            error: "slow".into(),
        };
        assert_eq!(verdict(&timeout, &failed(), 3), Verdict::FailsDifferently);
    }
}
