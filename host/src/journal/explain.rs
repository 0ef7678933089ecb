//! A journal record in words (`scalewise journal explain`, the API's
//! `/v1/decisions/{id}/explain`): the operator's answer to "why did it do
//! that?".

use crate::clock::format_ms;
use crate::config::Mode;

use super::{ActuationRecord, EvaluationOutcome, TickRecord};

/// A record in words, a line each. What policies wrote is in it as they
/// wrote it: make it safe for where it goes (`runtime::log_safe`).
pub fn explain(record: &TickRecord) -> Vec<String> {
    let mut lines = Vec::new();
    let id = record
        .id
        .map_or_else(|| "-".to_owned(), |id| id.to_string());
    let mode = match record.mode {
        Mode::Enforce => "enforce",
        Mode::DryRun => "dry-run",
    };
    lines.push(format!(
        "record {id}: scaler {:?} at {} ({mode})",
        record.scaler,
        format_ms(record.time_ms)
    ));
    let t = &record.target;
    if let ActuationRecord::ObserveFailed { error } = &record.actuation {
        lines.push(format!(
            "target    {} {}: could not be read: {error}",
            t.kind, t.name
        ));
        lines.push("decision  none: nothing is decided without the target's state".into());
        return lines;
    }
    lines.push(format!(
        "target    {} {}: current {}, ready {}; bounds {}..{}",
        t.kind, t.name, t.current, t.ready, t.min, t.max
    ));
    if !record.facts.is_empty() {
        let facts: Vec<String> = record
            .facts
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        lines.push(format!("          {}", facts.join(", ")));
    }

    // Every policy saw the same metrics: the first one's context has them.
    let read = record
        .evaluations
        .first()
        .map(|e| e.context.metrics.as_slice());
    let mut first = true;
    for metric in read.unwrap_or_default() {
        let label = if std::mem::take(&mut first) {
            "metrics"
        } else {
            ""
        };
        let text = match (&metric.error, metric.points.last()) {
            (Some(error), _) => format!("{}: not read: {error}", metric.name),
            (None, Some(newest)) => format!(
                "{}: {} at {} ({} point{})",
                metric.name,
                short(newest.value),
                format_ms(newest.timestamp_ms),
                metric.points.len(),
                if metric.points.len() == 1 { "" } else { "s" }
            ),
            (None, None) => format!("{}: no points", metric.name),
        };
        lines.push(format!("{label:<10}{text}"));
    }

    let mut first = true;
    for e in &record.evaluations {
        let label = if std::mem::take(&mut first) {
            "policies"
        } else {
            ""
        };
        let digest = e
            .digest
            .as_deref()
            .map(|d| format!(" sha256:{}", &d[..d.len().min(12)]))
            .unwrap_or_default();
        // As `combine` counts them: a hold is a vote for the current
        // count; a failure is no vote, and holds the scaler unless the
        // policy abstained for want of a metric.
        let answer = match &e.outcome {
            EvaluationOutcome::Decided { decision } => match decision.desired {
                Some(n) => format!("{n}: {}", decision.reason),
                None => format!("hold (stay at {}): {}", t.current, decision.reason),
            },
            EvaluationOutcome::Failed { kind, error } => {
                let error = error.lines().next().unwrap_or_default();
                if e.abstained {
                    format!("abstained, no vote (a metric it reads was not read; {kind}): {error}")
                } else {
                    format!("failed ({kind}), no vote: {error}")
                }
            }
        };
        lines.push(format!("{label:<10}{}{digest} → {answer}", e.module));
        if let Some(load_error) = &e.load_error {
            let load_error = load_error.lines().next().unwrap_or_default();
            lines.push(format!(
                "{:<10}  (ran on the version serving: a newer file failed to load: {load_error})",
                ""
            ));
        }
    }
    lines.push(match record.proposal {
        Some(n) if record.evaluations.len() > 1 => {
            format!("proposal  {n}: the largest answer (scale-out wins)")
        }
        Some(n) => format!("proposal  {n}"),
        None => "proposal  hold: no policy asked for a count".into(),
    });
    let mut first = true;
    for step in &record.envelope {
        let label = if std::mem::take(&mut first) {
            "envelope"
        } else {
            ""
        };
        lines.push(format!(
            "{label:<10}{} → {}  {}: {}",
            step.from, step.to, step.rule, step.reason
        ));
    }
    if record.envelope.is_empty() {
        lines.push("envelope  no change".into());
    }
    let change = match record.desired.cmp(&t.current) {
        std::cmp::Ordering::Greater => "scale out",
        std::cmp::Ordering::Less => "scale in",
        std::cmp::Ordering::Equal => "hold",
    };
    lines.push(format!(
        "desired   {} ({change} from {})",
        record.desired, t.current
    ));
    lines.push(match &record.actuation {
        ActuationRecord::None => "actuator  nothing to do".into(),
        ActuationRecord::DryRun => {
            "actuator  not called: dry-run, the change is only recorded".into()
        }
        ActuationRecord::Pending => {
            "actuator  called, no answer recorded: the call was under way when this was read, \
             or the daemon stopped during it, or the journal could not record its answer"
                .into()
        }
        ActuationRecord::Done { detail } => format!("actuator  done: {detail}"),
        ActuationRecord::Started { detail } => format!("actuator  started: {detail}"),
        ActuationRecord::Failed { kind, error } => format!("actuator  failed ({kind}): {error}"),
        ActuationRecord::ObserveFailed { error } => format!("actuator  target unreadable: {error}"),
    });
    lines
}

/// A metric's value for reading: at most three decimals, no trailing zeros
/// (the record keeps the exact value).
fn short(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::{explain, short};
    use crate::journal::TickRecord;

    /// At 5: A asks for 3, B holds, C abstained for want of its metric, D
    /// trapped (the scaler then holds).
    fn record() -> TickRecord {
        let context = serde_json::json!({
            "now_ms": 1_000, "scaler": "web",
            "target": {"kind": "simulator", "name": "web", "current": 5, "ready": 5, "min": 1, "max": 10},
            "metrics": [], "events": [], "parameters": {}, "state": null
        });
        let evaluation = |module: &str, outcome: serde_json::Value, abstained: bool| {
            serde_json::json!({
                "module": module, "digest": null, "context": context, "outcome": outcome,
                "duration_us": 1, "abstained": abstained
            })
        };
        serde_json::from_value(serde_json::json!({
            "time_ms": 1_000, "scaler": "web", "mode": "enforce",
            "target": context["target"],
            "evaluations": [
                evaluation("a", serde_json::json!({"status": "decided", "decision": {"desired": 3, "reason": "low"}}), false),
                evaluation("b", serde_json::json!({"status": "decided", "decision": {"desired": null, "reason": "fine"}}), false),
                evaluation("c", serde_json::json!({"status": "failed", "kind": "policy_error", "error": "no cpu"}), true),
                evaluation("d", serde_json::json!({"status": "failed", "kind": "trap", "error": "boom"}), false),
            ],
            "proposal": 5, "desired": 5, "recommendation": 5,
            "actuation": {"status": "pending"}
        }))
        .unwrap()
    }

    #[test]
    fn each_answer_is_told_as_the_scaler_counted_it() {
        let text = explain(&record()).join("\n");
        for line in [
            "a → 3: low",
            "b → hold (stay at 5): fine",
            "c → abstained, no vote (a metric it reads was not read; policy_error): no cpu",
            "d → failed (trap), no vote: boom",
            "actuator  called, no answer recorded: the call was under way when this was read",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("counted as hold"), "{text}");
    }

    #[test]
    fn values_read_short() {
        for (value, text) in [
            (34.43221923402024, "34.432"),
            (100.0, "100"),
            (0.5, "0.5"),
            (-2.25, "-2.25"),
            (0.0001, "0"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(short(value), text, "{value}");
        }
    }
}
