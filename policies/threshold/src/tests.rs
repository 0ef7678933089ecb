//! Native unit tests: trigger tables over sample series, steps within
//! bounds, reasons and errors.

use super::*;
use scalewise_sdk::params;
use scalewise_sdk::serde_json::{self, json};
use scalewise_sdk::testing::ContextBuilder;

const NOW: i64 = 600_000;
const STEP: i64 = 15_000;

/// Samples every 15 s ending at `NOW`, oldest first: `(value, count)` runs.
fn samples(runs: &[(f64, usize)]) -> Vec<(i64, f64)> {
    let values: Vec<f64> = runs
        .iter()
        .flat_map(|&(v, n)| std::iter::repeat_n(v, n))
        .collect();
    let first = NOW - STEP * (values.len() as i64 - 1);
    (0i64..)
        .zip(values)
        .map(|(i, v)| (first + i * STEP, v))
        .collect()
}

fn ctx(runs: &[(f64, usize)], current: u32, extra: serde_json::Value) -> Context {
    let mut params = json!({"metric": "cpu", "lower": 30, "upper": 70});
    for (k, v) in extra.as_object().unwrap() {
        params[k] = v.clone();
    }
    ContextBuilder::new()
        .now_ms(NOW)
        .replicas(current, 1, 10)
        .metric("cpu", &samples(runs))
        .params(params)
        .build()
}

struct Case {
    name: &'static str,
    runs: &'static [(f64, usize)],
    current: u32,
    params: serde_json::Value,
    desired: Option<u32>,
    reason: &'static str,
}

fn cases() -> Vec<Case> {
    let none = || json!({});
    let case = |name, runs, current, params, desired, reason| Case {
        name,
        runs,
        current,
        params,
        desired,
        reason,
    };
    vec![
        case(
            "above for 10m",
            &[(85.0, 41)],
            4,
            none(),
            Some(5),
            "cpu above 70.0 for 2m (newest 85.0): 4 → 5",
        ),
        case(
            "above for exactly up_for",
            &[(50.0, 32), (85.0, 9)],
            4,
            none(),
            Some(5),
            "cpu above 70.0 for 2m (newest 85.0): 4 → 5",
        ),
        case(
            "above one sample short of up_for",
            &[(50.0, 33), (85.0, 8)],
            4,
            none(),
            None,
            "cpu 85.0 above 70.0, not yet for 2m: hold at 4",
        ),
        case(
            "above for the last minute only",
            &[(50.0, 36), (85.0, 5)],
            4,
            none(),
            None,
            "cpu 85.0 above 70.0, not yet for 2m: hold at 4",
        ),
        case(
            "a dip inside the window",
            &[(85.0, 35), (60.0, 1), (85.0, 5)],
            4,
            none(),
            None,
            "cpu 85.0 above 70.0, not yet for 2m: hold at 4",
        ),
        case(
            "series shorter than up_for",
            &[(85.0, 5)],
            4,
            none(),
            None,
            "cpu 85.0 above 70.0, but its samples reach back only 1m of 2m: hold at 4 \
             (is the metric's window at least 2m?)",
        ),
        case(
            "one sample: no window configured",
            &[(85.0, 1)],
            4,
            none(),
            None,
            "cpu 85.0 above 70.0, but its samples reach back only 0s of 2m: hold at 4 \
             (is the metric's window at least 2m?)",
        ),
        case(
            "below for down_for",
            &[(50.0, 20), (10.0, 21)],
            4,
            none(),
            Some(3),
            "cpu below 30.0 for 5m (newest 10.0): 4 → 3",
        ),
        case(
            "below for 4m of 5m",
            &[(50.0, 24), (10.0, 17)],
            4,
            none(),
            None,
            "cpu 10.0 below 30.0, not yet for 5m: hold at 4",
        ),
        case(
            "series shorter than down_for",
            &[(10.0, 9)],
            4,
            none(),
            None,
            "cpu 10.0 below 30.0, but its samples reach back only 2m of 5m: hold at 4 \
             (is the metric's window at least 5m?)",
        ),
        case(
            "between",
            &[(50.0, 41)],
            4,
            none(),
            None,
            "cpu 50.0 between 30.0 and 70.0: hold at 4",
        ),
        case(
            "on the upper threshold is not above",
            &[(70.0, 41)],
            4,
            none(),
            None,
            "cpu 70.0 between 30.0 and 70.0: hold at 4",
        ),
        case(
            "on the lower threshold is not below",
            &[(30.0, 41)],
            4,
            none(),
            None,
            "cpu 30.0 between 30.0 and 70.0: hold at 4",
        ),
        case(
            "back between after a long high",
            &[(85.0, 40), (60.0, 1)],
            4,
            none(),
            None,
            "cpu 60.0 between 30.0 and 70.0: hold at 4",
        ),
        case(
            "bigger step",
            &[(85.0, 41)],
            4,
            json!({"step_up": 3}),
            Some(7),
            "cpu above 70.0 for 2m (newest 85.0): 4 → 7",
        ),
        case(
            "step capped at max",
            &[(85.0, 41)],
            8,
            json!({"step_up": 3}),
            Some(10),
            "cpu above 70.0 for 2m (newest 85.0): 8 → 10 (max 10)",
        ),
        case(
            "at max",
            &[(85.0, 41)],
            10,
            none(),
            None,
            "cpu above 70.0 for 2m (newest 85.0): hold at max 10",
        ),
        case(
            "above max already",
            &[(85.0, 41)],
            12,
            none(),
            Some(10),
            "cpu above 70.0 for 2m (newest 85.0): 12 → 10 (max 10)",
        ),
        case(
            "step down by two",
            &[(10.0, 41)],
            4,
            json!({"step_down": 2}),
            Some(2),
            "cpu below 30.0 for 5m (newest 10.0): 4 → 2",
        ),
        case(
            "step down floored at min",
            &[(10.0, 41)],
            2,
            json!({"step_down": 5}),
            Some(1),
            "cpu below 30.0 for 5m (newest 10.0): 2 → 1 (min 1)",
        ),
        case(
            "at min",
            &[(10.0, 41)],
            1,
            none(),
            None,
            "cpu below 30.0 for 5m (newest 10.0): hold at min 1",
        ),
        case(
            "zero duration: the newest sample decides",
            &[(50.0, 40), (85.0, 1)],
            4,
            json!({"up_for": "0s"}),
            Some(5),
            "cpu 85.0 above 70.0: 4 → 5",
        ),
        case(
            "seed table: > 70 for 5m up, < 30 for 10m down",
            &[(20.0, 41)],
            6,
            json!({"up_for": "5m", "down_for": "10m"}),
            Some(5),
            "cpu below 30.0 for 10m (newest 20.0): 6 → 5",
        ),
        case(
            "seed table: 9m low is not enough",
            &[(50.0, 5), (20.0, 36)],
            6,
            json!({"up_for": "5m", "down_for": "10m"}),
            None,
            "cpu 20.0 below 30.0, not yet for 10m: hold at 6",
        ),
    ]
}

#[test]
fn trigger_table() {
    for c in cases() {
        let d = decide(&ctx(c.runs, c.current, c.params)).unwrap();
        assert_eq!(d.desired(), c.desired, "{}: {}", c.name, d.reason);
        assert_eq!(d.reason, c.reason, "{}", c.name);
        assert_eq!(d.state, None, "{}", c.name);
    }
}

#[test]
fn signals() {
    let p = Params::new("cpu", 30.0, 70.0);
    let metric = |runs: &[(f64, usize)]| {
        let samples = samples(runs);
        Metric {
            name: "cpu".into(),
            timestamps_ms: samples.iter().map(|s| s.0).collect(),
            values: samples.iter().map(|s| s.1).collect(),
            error: None,
        }
    };
    let cases: &[(&[(f64, usize)], Signal)] = &[
        (&[(85.0, 41)], Signal::Up),
        (&[(10.0, 41)], Signal::Down),
        (&[(50.0, 41)], Signal::Between),
        (&[], Signal::Between),
        (&[(50.0, 36), (85.0, 5)], Signal::Above(Held::No)),
        (
            &[(85.0, 5)],
            Signal::Above(Held::ShortSeries { reach_ms: 60_000 }),
        ),
        (&[(50.0, 30), (10.0, 11)], Signal::Below(Held::No)),
        (
            &[(10.0, 11)],
            Signal::Below(Held::ShortSeries { reach_ms: 150_000 }),
        ),
    ];
    for (runs, want) in cases {
        assert_eq!(signal(&p, &metric(runs), NOW), *want, "{runs:?}");
    }
}

#[test]
fn steps_stay_within_bounds() {
    let p = Params {
        step_up: 2,
        step_down: 3,
        ..Params::new("cpu", 30.0, 70.0)
    };
    // (signal, current, min, max, want)
    let cases = [
        (Signal::Up, 4, 1, 10, 6),
        (Signal::Up, 9, 1, 10, 10),
        (Signal::Up, 10, 1, 10, 10),
        (Signal::Up, 12, 1, 10, 10),
        (Signal::Up, 0, 0, 10, 2),
        (Signal::Up, u32::MAX - 1, 0, u32::MAX, u32::MAX),
        (Signal::Down, 6, 1, 10, 3),
        (Signal::Down, 3, 1, 10, 1),
        (Signal::Down, 1, 1, 10, 1),
        (Signal::Down, 0, 1, 10, 1),
        (Signal::Down, 15, 1, 10, 10),
        (Signal::Up, 0, 3, 10, 3),
        (Signal::Down, 2, 0, 10, 0),
        (Signal::Between, 4, 1, 10, 4),
        (
            Signal::Above(Held::ShortSeries { reach_ms: 0 }),
            4,
            1,
            10,
            4,
        ),
        (Signal::Below(Held::No), 4, 1, 10, 4),
    ];
    for (signal, current, min, max, want) in cases {
        assert_eq!(
            next_replicas(signal, &p, current, min, max),
            want,
            "{signal:?} from {current} in {min}..{max}"
        );
    }
}

/// A context with these `(age, value)` samples of cpu before `NOW`.
fn aged(
    points: &[(i64, f64)],
    current: u32,
    min: u32,
    max: u32,
    extra: serde_json::Value,
) -> Context {
    let mut params = json!({"metric": "cpu", "lower": 30, "upper": 70});
    for (k, v) in extra.as_object().unwrap() {
        params[k] = v.clone();
    }
    let points: Vec<(i64, f64)> = points.iter().map(|&(age, v)| (NOW - age, v)).collect();
    ContextBuilder::new()
        .now_ms(NOW)
        .replicas(current, min, max)
        .metric("cpu", &points)
        .params(params)
        .build()
}

#[test]
fn old_samples_vouch_only_for_what_they_saw() {
    let cases: &[(&[(i64, f64)], &str)] = &[
        // The value in effect when up_for began was below: not yet.
        (
            &[(130_000, 50.0), (0, 85.0)],
            "cpu 85.0 above 70.0, not yet for 2m: hold at 4",
        ),
        // An hour-old low sample, then 20 s of low data: not 5 minutes.
        (
            &[(3_600_000, 50.0), (20_000, 10.0), (0, 10.0)],
            "cpu 10.0 below 30.0, not yet for 5m: hold at 4",
        ),
        // An hour-old sample that was low too: an hour's gap.
        (
            &[(3_600_000, 10.0), (20_000, 10.0), (0, 10.0)],
            "cpu 10.0 below 30.0, but its samples have a gap of 59m 40s in the last 5m: hold at 4",
        ),
        // Nothing in the last 2 minutes.
        (
            &[(200_000, 85.0)],
            "cpu 85.0 above 70.0, but that sample is 3m 20s old and none is newer than 2m: \
             hold at 4",
        ),
    ];
    for (points, want) in cases {
        let d = decide(&aged(points, 4, 1, 10, json!({}))).unwrap();
        assert_eq!(d.desired(), None, "{points:?}: {}", d.reason);
        assert_eq!(d.reason, *want, "{points:?}");
    }
}

#[test]
fn answers_stay_within_bounds_when_the_count_is_outside_them() {
    let high: &[(i64, f64)] = &[(0, 85.0)];
    let low: &[(i64, f64)] = &[(0, 10.0)];
    let now = json!({"up_for": "0s", "down_for": "0s"});
    let cases = [
        (
            low,
            15,
            1,
            10,
            Some(10),
            "cpu 10.0 below 30.0: 15 → 10 (max 10)",
        ),
        (
            high,
            15,
            1,
            10,
            Some(10),
            "cpu 85.0 above 70.0: 15 → 10 (max 10)",
        ),
        (
            high,
            0,
            3,
            10,
            Some(3),
            "cpu 85.0 above 70.0: 0 → 3 (min 3)",
        ),
        (low, 5, 5, 5, None, "cpu 10.0 below 30.0: hold at min 5"),
        (high, 5, 5, 5, None, "cpu 85.0 above 70.0: hold at max 5"),
        // Down from 0 with min 0: nowhere to go, said as a hold.
        (low, 0, 0, 5, None, "cpu 10.0 below 30.0: hold at 0"),
    ];
    for (points, current, min, max, desired, reason) in cases {
        let d = decide(&aged(points, current, min, max, now.clone())).unwrap();
        assert_eq!(d.desired(), desired, "{reason}: {}", d.reason);
        assert_eq!(d.reason, reason);
    }
}

#[test]
fn samples_after_now_are_ignored() {
    let mut points = samples(&[(85.0, 41)]);
    points.push((NOW + STEP, 10.0));
    let ctx = ContextBuilder::new()
        .now_ms(NOW)
        .replicas(4, 1, 10)
        .metric("cpu", &points)
        .params(json!({"metric": "cpu", "lower": 30, "upper": 70}))
        .build();
    assert_eq!(decide(&ctx).unwrap().desired(), Some(5));
}

#[test]
fn errors_name_the_problem() {
    let series = &[(50.0, 41)];
    let cases: Vec<(&str, Context, &str)> = vec![
        (
            "lower equal to upper",
            ctx(series, 4, json!({"lower": 70})),
            "parameter lower (70.0) must be less than upper (70.0)",
        ),
        (
            "lower above upper",
            ctx(series, 4, json!({"lower": 80.5})),
            "parameter lower (80.5) must be less than upper (70.0)",
        ),
        (
            "zero step",
            ctx(series, 4, json!({"step_up": 0})),
            "parameter step_up must be between 1 and 4294967295, got 0",
        ),
        (
            "negative step",
            ctx(series, 4, json!({"step_down": -1})),
            "parameter step_down must be between 1 and 4294967295, got -1",
        ),
        (
            "fractional step",
            ctx(series, 4, json!({"step_up": 1.5})),
            "parameter step_up must be an integer, got 1.5",
        ),
        (
            "bad duration",
            ctx(series, 4, json!({"up_for": "soon"})),
            "parameter up_for: invalid duration \"soon\"",
        ),
        (
            "missing upper",
            ContextBuilder::new()
                .metric("cpu", &[(0, 1.0)])
                .params(json!({"metric": "cpu", "lower": 30}))
                .build(),
            "missing required parameter upper",
        ),
        (
            "no samples",
            ContextBuilder::new()
                .metric("cpu", &[])
                .params(json!({"metric": "cpu", "lower": 30, "upper": 70}))
                .build(),
            "metric \"cpu\" has no samples",
        ),
        (
            "only samples after now",
            ContextBuilder::new()
                .now_ms(0)
                .metric("cpu", &[(STEP, 50.0)])
                .params(json!({"metric": "cpu", "lower": 30, "upper": 70}))
                .build(),
            "metric \"cpu\" has no samples",
        ),
        (
            "metric could not be read",
            ContextBuilder::new()
                .failed_metric("cpu", "prometheus timed out")
                .params(json!({"metric": "cpu", "lower": 30, "upper": 70}))
                .build(),
            "metric \"cpu\" could not be read: prometheus timed out",
        ),
    ];
    for (name, ctx, want) in cases {
        let err = decide(&ctx).unwrap_err();
        assert!(err.starts_with(want), "{name}: got {err:?}, want {want:?}");
    }
}

#[test]
fn describe_matches_the_declarations() {
    params::check_specs(PARAMS).unwrap();
    let info = Threshold::describe();
    assert_eq!(info.name, "threshold");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    let names: Vec<&str> = info.parameters.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "metric",
            "upper",
            "lower",
            "up_for",
            "down_for",
            "step_up",
            "step_down"
        ]
    );
    let required: Vec<&str> = info
        .parameters
        .iter()
        .filter(|p| p.required)
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(required, ["metric", "upper", "lower"]);
    assert_eq!(info.parameters[3].kind, ParameterKind::Duration);
    assert_eq!(info.parameters[3].default.as_deref(), Some("\"2m\""));
}

#[test]
fn defaults_from_describe_are_the_ones_used() {
    let ctx = ctx(&[(50.0, 1)], 4, json!({}));
    assert_eq!(
        Params::from_context(&ctx).unwrap(),
        Params::new("cpu", 30.0, 70.0)
    );
}

#[test]
fn evaluate_is_decide() {
    let ctx = ctx(&[(85.0, 41)], 4, json!({}));
    assert_eq!(Threshold::evaluate(ctx.clone()), decide(&ctx));
}
