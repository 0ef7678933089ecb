//! Re-running a journaled evaluation: same context, same module, and the
//! answer must be the same.

use serde::Serialize;

use crate::journal::{Evaluation, EvaluationOutcome};
use crate::policy::Decision;

use super::{EvalError, PolicyModule};

/// The result of evaluating a module against a recorded [`Evaluation`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayOutcome {
    /// The module that ran now.
    pub module: String,
    /// Its digest.
    pub digest: String,
    /// The digest of the module that answered when the record was written.
    pub recorded_digest: Option<String>,
    /// Whether the two digests are equal (the same module bytes).
    pub digest_matches: bool,
    /// What the module answered now.
    pub outcome: EvaluationOutcome,
    /// What was answered then.
    pub recorded: EvaluationOutcome,
    /// Whether the answers agree: equal decisions, or failures of the same
    /// kind (failure messages may differ, e.g. backtraces).
    pub outcome_matches: bool,
}

impl ReplayOutcome {
    /// Whether the replay reproduced the record exactly (same module, same answer).
    pub fn matches(&self) -> bool {
        self.digest_matches && self.outcome_matches
    }
}

/// The journal's form of an evaluation's result.
pub fn outcome_of(result: Result<Decision, EvalError>) -> EvaluationOutcome {
    match result {
        Ok(decision) => EvaluationOutcome::Decided { decision },
        Err(err) => EvaluationOutcome::Failed {
            kind: err.kind.as_str().to_string(),
            error: err.message,
        },
    }
}

/// Evaluates `module` with the recorded context and compares its answer and
/// its digest with the record's.
pub fn eval_against_record(module: &PolicyModule, evaluation: &Evaluation) -> ReplayOutcome {
    let outcome = outcome_of(module.evaluate(&evaluation.context));
    let outcome_matches = match (&outcome, &evaluation.outcome) {
        (
            EvaluationOutcome::Decided { decision: now },
            EvaluationOutcome::Decided { decision: then },
        ) => now == then,
        (
            EvaluationOutcome::Failed { kind: now, .. },
            EvaluationOutcome::Failed { kind: then, .. },
        ) => now == then,
        _ => false,
    };
    ReplayOutcome {
        module: module.name().to_string(),
        digest: module.digest().to_string(),
        recorded_digest: evaluation.digest.as_deref().map(str::to_owned),
        digest_matches: evaluation.digest.as_deref() == Some(module.digest()),
        outcome,
        recorded: evaluation.outcome.clone(),
        outcome_matches,
    }
}
