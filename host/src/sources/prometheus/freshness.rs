//! When was the newest data behind a PromQL expression written?
//!
//! Prometheus stamps every sample of an instant query with the evaluation
//! time, and an instant selector silently reuses a sample up to the lookback
//! delta (5 minutes by default) old, so a query's answer says nothing about
//! the age of its data. `timestamp()` applied directly to a selector is the
//! exception: it returns the time each sample was really written. This
//! module rewrites an expression into one query that asks exactly that, for
//! every selector the expression reads:
//!
//! - each selector `s` (instant, or the selector inside a range `s[5m]`)
//!   becomes `max(timestamp(s))`: the newest sample among its series, plus
//!   the selector's `offset` (data that is deliberately an hour old is fresh
//!   if it was fresh an hour ago);
//! - several selectors each give their own sample, labelled apart: the
//!   answer is as old as its stalest input, and an input with no current
//!   sample is seen missing (not hidden behind the others);
//! - selectors pinned with `@` (and subqueries pinned with `@`) are left
//!   out: they read a fixed time on purpose.
//!
//! An input with no current sample may have none at all (a counter never
//! yet exported, read `or vector(0)`), or only older ones within the
//! expression's reach: its series were marked stale (the target stopped
//! reporting) while a range (`rate(x[2m])`, `avg_over_time(x[10m])`) still
//! computes from the samples before. The probe tells the two apart: it asks
//! which inputs have any sample within their reach (their range, or the
//! 5-minute lookback of an instant selector, plus an enclosing subquery's
//! range).
//!
//! An expression with no selector left (`vector(1)`) has no freshness query.

use std::fmt::Write as _;
use std::time::Duration;

use promql_parser::parser::{self, Expr, Offset, VectorSelector};

/// The label that keeps the inputs apart when several are combined (two
/// label-less vectors would otherwise collapse into one under `or`).
const INPUT_LABEL: &str = "scalewise_input";

/// Prometheus' default lookback delta: how old a sample an instant selector
/// still answers.
const LOOKBACK: Duration = Duration::from_secs(300);

/// What to ask Prometheus about the age of the data behind an expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Freshness {
    /// One sample per input that has a current sample: the time in seconds
    /// of its newest sample (labelled [`INPUT_LABEL`] when there are
    /// several inputs).
    pub query: String,
    /// How many inputs the expression reads.
    pub inputs: usize,
    /// One sample per input that has any sample within its reach, labelled
    /// alike: an input here but not in `query`'s answer has only stale
    /// samples.
    pub probe: String,
}

/// The freshness query of `promql`; `None` if the expression reads no data.
/// Fails with the parser's message if `promql` does not parse.
pub(crate) fn freshness(promql: &str) -> Result<Option<Freshness>, String> {
    let expr = parser::parse(promql)?;
    let mut terms = Vec::new();
    collect_terms(&expr, Duration::ZERO, &mut terms);
    if terms.is_empty() {
        return Ok(None);
    }
    let combined = |part: fn(&Term) -> &str| match terms.as_slice() {
        [only] => part(only).to_owned(),
        _ => {
            let mut combined = String::new();
            for (i, term) in terms.iter().enumerate() {
                if i > 0 {
                    combined.push_str(" or ");
                }
                let _ = write!(
                    combined,
                    "label_replace({}, \"{INPUT_LABEL}\", \"{i}\", \"\", \"\")",
                    part(term)
                );
            }
            combined
        }
    };
    Ok(Some(Freshness {
        query: combined(|t| &t.newest),
        inputs: terms.len(),
        probe: combined(|t| &t.probe),
    }))
}

/// One input: the time of its newest current sample, and whether it has
/// any sample within its reach.
#[derive(Debug, PartialEq)]
struct Term {
    newest: String,
    probe: String,
    reach: Duration,
}

/// Walks the expression and adds one term per distinct selector, in the
/// order they appear; `reach` is what enclosing subqueries add to a
/// selector's own range.
fn collect_terms(expr: &Expr, reach: Duration, terms: &mut Vec<Term>) {
    match expr {
        Expr::Aggregate(aggregate) => {
            collect_terms(&aggregate.expr, reach, terms);
            if let Some(param) = &aggregate.param {
                collect_terms(param, reach, terms);
            }
        }
        Expr::Unary(unary) => collect_terms(&unary.expr, reach, terms),
        Expr::Binary(binary) => {
            collect_terms(&binary.lhs, reach, terms);
            collect_terms(&binary.rhs, reach, terms);
        }
        Expr::Paren(paren) => collect_terms(&paren.expr, reach, terms),
        Expr::Subquery(subquery) => {
            if subquery.at.is_none() {
                collect_terms(&subquery.expr, reach + subquery.range, terms);
            }
        }
        Expr::Call(call) => {
            for arg in &call.args.args {
                collect_terms(arg, reach, terms);
            }
        }
        Expr::VectorSelector(selector) => add_term(selector, reach + LOOKBACK, terms),
        Expr::MatrixSelector(matrix) => add_term(&matrix.vs, reach + matrix.range, terms),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

fn add_term(selector: &VectorSelector, reach: Duration, terms: &mut Vec<Term>) {
    if selector.at.is_some() {
        return;
    }
    let mut newest = format!("max(timestamp({selector}))");
    let mut bare = selector.clone();
    let offset = match bare.offset.take() {
        Some(Offset::Pos(d)) if !d.is_zero() => {
            let _ = write!(newest, " + {}", d.as_secs_f64());
            format!(" offset {}ms", d.as_millis())
        }
        Some(Offset::Neg(d)) if !d.is_zero() => {
            let _ = write!(newest, " - {}", d.as_secs_f64());
            format!(" offset -{}ms", d.as_millis())
        }
        _ => String::new(),
    };
    let probe = format!(
        "count(last_over_time({bare}[{}ms]{offset}))",
        reach.as_millis()
    );
    match terms.iter_mut().find(|t| t.newest == newest) {
        // The same selector read twice: one input, with the longer reach.
        Some(known) => {
            if reach > known.reach {
                known.probe = probe;
                known.reach = reach;
            }
        }
        None => terms.push(Term {
            newest,
            probe,
            reach,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_each_selector_into_its_newest_sample_time() {
        let cases: &[(&str, Option<&str>)] = &[
            ("queue_depth", Some("max(timestamp(queue_depth))")),
            (
                r#"sum(queue_depth{app="web", zone=~"eu-.*"})"#,
                Some(r#"max(timestamp(queue_depth{app="web",zone=~"eu-.*"}))"#),
            ),
            (
                "sum(rate(http_requests_total[1m]))",
                Some("max(timestamp(http_requests_total))"),
            ),
            (
                "histogram_quantile(0.95, sum by (le) (rate(latency_bucket[5m])))",
                Some("max(timestamp(latency_bucket))"),
            ),
            // The same selector twice is one input.
            ("sum(x) / count(x)", Some("max(timestamp(x))")),
            (
                "sum(inflight) / sum(capacity)",
                Some(
                    r#"label_replace(max(timestamp(inflight)), "scalewise_input", "0", "", "") or label_replace(max(timestamp(capacity)), "scalewise_input", "1", "", "")"#,
                ),
            ),
            // An offset is added back: week-old data read on purpose is not stale.
            (
                "sum(load offset 1w)",
                Some("max(timestamp(load offset 1w)) + 604800"),
            ),
            (
                "max_over_time(sum(rate(reqs[1m]))[10m:1m])",
                Some("max(timestamp(reqs))"),
            ),
            // Pinned with @: a fixed time on purpose, not an input.
            ("sum(x @ 1700000000)", None),
            ("max_over_time(sum(x)[10m:1m] @ 1700000000)", None),
            ("sum(x @ 1700000000) + sum(y)", Some("max(timestamp(y))")),
            // No data read at all.
            ("vector(1)", None),
            ("1 + 1", None),
            ("sum(x) or vector(0)", Some("max(timestamp(x))")),
        ];
        for (query, expected) in cases {
            assert_eq!(
                freshness(query).unwrap().map(|f| f.query).as_deref(),
                *expected,
                "for {query}"
            );
        }
    }

    /// The probe asks each input for any sample within its reach: its
    /// range, the lookback of an instant selector, plus an enclosing
    /// subquery's range; with the selector's offset.
    #[test]
    fn the_probe_reaches_as_far_back_as_the_expression_reads() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "queue_depth",
                1,
                "count(last_over_time(queue_depth[300000ms]))",
            ),
            (
                "sum(rate(reqs[2m]))",
                1,
                "count(last_over_time(reqs[120000ms]))",
            ),
            (
                "max_over_time(sum(rate(reqs[1m]))[10m:1m])",
                1,
                "count(last_over_time(reqs[660000ms]))",
            ),
            (
                "sum(load offset 1w)",
                1,
                "count(last_over_time(load[300000ms] offset 604800000ms))",
            ),
            // Read twice: the longer reach.
            (
                "sum(rate(x[1m])) / avg_over_time(x[10m])",
                1,
                "count(last_over_time(x[600000ms]))",
            ),
            (
                "sum(rate(a[5m])) / sum(b)",
                2,
                r#"label_replace(count(last_over_time(a[300000ms])), "scalewise_input", "0", "", "") or label_replace(count(last_over_time(b[300000ms])), "scalewise_input", "1", "", "")"#,
            ),
        ];
        for (query, inputs, probe) in cases {
            let f = freshness(query).unwrap().unwrap();
            assert_eq!(
                (f.inputs, f.probe.as_str()),
                (*inputs, *probe),
                "for {query}"
            );
            parser::parse(&f.probe).unwrap_or_else(|e| panic!("{}: {e}", f.probe));
        }
    }

    #[test]
    fn every_rewrite_parses_again() {
        for query in [
            r#"sum(queue_depth{app="web", path=~"/api/.*\\.json"})"#,
            "sum(inflight) / sum(capacity) * on() group_left() vector(2)",
            "topk(3, rate(x[5m] offset -1m))",
        ] {
            let rewritten = freshness(query).unwrap().unwrap();
            for query in [rewritten.query, rewritten.probe] {
                parser::parse(&query).unwrap_or_else(|e| panic!("{query}: {e}"));
            }
        }
    }

    #[test]
    fn unparsable_query_names_the_problem() {
        let err = freshness("sum(").unwrap_err();
        assert!(err.contains("unclosed"), "{err}");
    }
}
