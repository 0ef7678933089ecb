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
pub(crate) const INPUT_LABEL: &str = "scalewise_input";

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
    collect_terms(&expr, Context::default(), &mut terms);
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

/// Where a selector sits: what enclosing subqueries add to its own range
/// (`reach`), and to its own offset (`shift_ms`, signed: an offset back in
/// time is positive).
#[derive(Debug, Clone, Copy, Default)]
struct Context {
    reach: Duration,
    shift_ms: i128,
}

/// Walks the expression and adds one term per distinct selector, in the
/// order they appear.
fn collect_terms(expr: &Expr, at: Context, terms: &mut Vec<Term>) {
    match expr {
        Expr::Aggregate(aggregate) => {
            collect_terms(&aggregate.expr, at, terms);
            if let Some(param) = &aggregate.param {
                collect_terms(param, at, terms);
            }
        }
        Expr::Unary(unary) => collect_terms(&unary.expr, at, terms),
        Expr::Binary(binary) => {
            collect_terms(&binary.lhs, at, terms);
            collect_terms(&binary.rhs, at, terms);
        }
        Expr::Paren(paren) => collect_terms(&paren.expr, at, terms),
        Expr::Subquery(subquery) => {
            if subquery.at.is_none() {
                let inner = Context {
                    reach: at.reach + subquery.range,
                    shift_ms: at.shift_ms + offset_ms(subquery.offset.as_ref()),
                };
                collect_terms(&subquery.expr, inner, terms);
            }
        }
        Expr::Call(call) => {
            for arg in &call.args.args {
                collect_terms(arg, at, terms);
            }
        }
        Expr::VectorSelector(selector) => add_term(selector, at.reach + LOOKBACK, at, terms),
        Expr::MatrixSelector(matrix) => add_term(&matrix.vs, at.reach + matrix.range, at, terms),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// An offset in ms, back in time positive.
fn offset_ms(offset: Option<&Offset>) -> i128 {
    match offset {
        Some(Offset::Pos(d)) => d.as_millis() as i128,
        Some(Offset::Neg(d)) => -(d.as_millis() as i128),
        None => 0,
    }
}

fn add_term(selector: &VectorSelector, reach: Duration, at: Context, terms: &mut Vec<Term>) {
    if selector.at.is_some() {
        return;
    }
    // The selector's own offset and its subqueries' together: data read
    // that far back on purpose is fresh if it was fresh then.
    let mut bare = selector.clone();
    let shift_ms = offset_ms(bare.offset.take().as_ref()) + at.shift_ms;
    let (offset, back) = match shift_ms {
        0 => (String::new(), String::new()),
        ms if ms > 0 => (
            format!(" offset {ms}ms"),
            format!(" + {}", ms as f64 / 1000.0),
        ),
        ms => (
            format!(" offset {ms}ms"),
            format!(" - {}", -ms as f64 / 1000.0),
        ),
    };
    let newest = format!("max(timestamp({bare}{offset})){back}");
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
                Some("max(timestamp(load offset 604800000ms)) + 604800"),
            ),
            // A subquery's too.
            (
                "max_over_time(rate(x[1m] offset 1m)[10m:1m] offset 5m)",
                Some("max(timestamp(x offset 360000ms)) + 360"),
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
            // A subquery's offset moves its selectors back too.
            (
                "max_over_time(rate(x[1m] offset 1m)[10m:1m] offset 5m)",
                1,
                "count(last_over_time(x[660000ms] offset 360000ms))",
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
