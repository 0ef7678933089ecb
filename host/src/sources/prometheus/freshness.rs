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
//! - several selectors are combined with `min`: the answer is as old as its
//!   stalest input;
//! - selectors pinned with `@` (and subqueries pinned with `@`) are left
//!   out: they read a fixed time on purpose.
//!
//! An expression with no selector left (`vector(1)`) has no freshness query.

use std::fmt::Write as _;

use promql_parser::parser::{self, Expr, Offset, VectorSelector};

/// The label that keeps the inputs apart when several are combined (two
/// label-less vectors would otherwise collapse into one under `or`).
const INPUT_LABEL: &str = "scalewise_input";

/// The query that returns, as one sample, the time in seconds of the newest
/// sample of the stalest input of `promql`; `None` if the expression reads no
/// data. Fails with the parser's message if `promql` does not parse.
pub(crate) fn freshness_query(promql: &str) -> Result<Option<String>, String> {
    let expr = parser::parse(promql)?;
    let mut terms = Vec::new();
    collect_terms(&expr, &mut terms);
    Ok(match terms.as_slice() {
        [] => None,
        [only] => Some(only.clone()),
        _ => {
            let mut combined = String::from("min(");
            for (i, term) in terms.iter().enumerate() {
                if i > 0 {
                    combined.push_str(" or ");
                }
                let _ = write!(
                    combined,
                    "label_replace({term}, \"{INPUT_LABEL}\", \"{i}\", \"\", \"\")"
                );
            }
            combined.push(')');
            Some(combined)
        }
    })
}

/// Walks the expression and adds one term per distinct selector, in the
/// order they appear.
fn collect_terms(expr: &Expr, terms: &mut Vec<String>) {
    match expr {
        Expr::Aggregate(aggregate) => {
            collect_terms(&aggregate.expr, terms);
            if let Some(param) = &aggregate.param {
                collect_terms(param, terms);
            }
        }
        Expr::Unary(unary) => collect_terms(&unary.expr, terms),
        Expr::Binary(binary) => {
            collect_terms(&binary.lhs, terms);
            collect_terms(&binary.rhs, terms);
        }
        Expr::Paren(paren) => collect_terms(&paren.expr, terms),
        Expr::Subquery(subquery) => {
            if subquery.at.is_none() {
                collect_terms(&subquery.expr, terms);
            }
        }
        Expr::Call(call) => {
            for arg in &call.args.args {
                collect_terms(arg, terms);
            }
        }
        Expr::VectorSelector(selector) => add_term(selector, terms),
        Expr::MatrixSelector(matrix) => add_term(&matrix.vs, terms),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

fn add_term(selector: &VectorSelector, terms: &mut Vec<String>) {
    if selector.at.is_some() {
        return;
    }
    let mut term = format!("max(timestamp({selector}))");
    match &selector.offset {
        Some(Offset::Pos(d)) if !d.is_zero() => {
            let _ = write!(term, " + {}", d.as_secs_f64());
        }
        Some(Offset::Neg(d)) if !d.is_zero() => {
            let _ = write!(term, " - {}", d.as_secs_f64());
        }
        _ => {}
    }
    if !terms.contains(&term) {
        terms.push(term);
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
                    r#"min(label_replace(max(timestamp(inflight)), "scalewise_input", "0", "", "") or label_replace(max(timestamp(capacity)), "scalewise_input", "1", "", ""))"#,
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
                freshness_query(query).unwrap().as_deref(),
                *expected,
                "for {query}"
            );
        }
    }

    #[test]
    fn every_rewrite_parses_again() {
        for query in [
            r#"sum(queue_depth{app="web", path=~"/api/.*\\.json"})"#,
            "sum(inflight) / sum(capacity) * on() group_left() vector(2)",
            "topk(3, rate(x[5m] offset -1m))",
        ] {
            let rewritten = freshness_query(query).unwrap().unwrap();
            parser::parse(&rewritten).unwrap_or_else(|e| panic!("{rewritten}: {e}"));
        }
    }

    #[test]
    fn unparsable_query_names_the_problem() {
        let err = freshness_query("sum(").unwrap_err();
        assert!(err.contains("unclosed"), "{err}");
    }
}
