//! Native unit tests: the HPA replica-calculator cases ported from upstream,
//! then the policy's own edges, reasons and errors.

use super::*;
use scalewise_sdk::params;
use scalewise_sdk::serde_json::{self, json};
use scalewise_sdk::testing::ContextBuilder;

use MetricType::{Average, Total};

/// One case of Kubernetes' `pkg/controller/podautoscaler/replica_calculator_test.go`
/// mapped onto this policy's inputs.
///
/// Upstream describes pods one by one (readiness, phase, start time, per-pod
/// usage and requests); here the host delivers one aggregated value and the
/// target's `current` and `ready` counts. The mapping:
/// - `value` is what upstream averages over the pods it counts: for CPU,
///   total usage / total requests of the ready pods, in percent; for pod
///   custom metrics, the mean over the pods with samples; for object and
///   external metrics, the single value.
/// - `current` is upstream's `currentReplicas` (failed and terminating pods
///   are not in it, pending ones are).
/// - `ready` is the pods upstream counts as ready: for CPU, those neither
///   unready, pending nor in the CPU initialization period ("hot"); for
///   other metrics every running pod (upstream ignores readiness there).
/// - Utilization, pod `AverageValue` and object/external `Value` targets are
///   `metric_type = average`; object/external `AverageValue` targets are
///   `metric_type = total`.
///
/// Not ported, because they need per-pod data the host does not deliver:
/// the missing-metrics cases (a ready pod without a sample: upstream assumes
/// 100% of the request on scale-down and 0% on scale-up), the rolling-update
/// surge case that depends on them, requests missing from a pod, metrics from
/// pods unknown to the selector, and `groupPods` itself.
struct HpaCase {
    upstream: &'static str,
    metric_type: MetricType,
    value: f64,
    target: f64,
    current: u32,
    ready: u32,
    want: u32,
}

const fn case(
    upstream: &'static str,
    metric_type: MetricType,
    value: f64,
    target: f64,
    current: u32,
    ready: u32,
    want: u32,
) -> HpaCase {
    HpaCase {
        upstream,
        metric_type,
        value,
        target,
        current,
        ready,
        want,
    }
}

const HPA_CASES: &[HpaCase] = &[
    // CPU 30%, 50%, 70% of 1 core; target 30%.
    case("TestReplicaCalcScaleUp", Average, 50.0, 30.0, 3, 3, 5),
    // The unready pod is left out (ready 50% and 70%), then counted as idle:
    // ratio 2.00 × 2/3 = 1.33 is still above the band, so ceil(2 × 2.00).
    case(
        "TestReplicaCalcScaleUpUnreadyLessScale",
        Average,
        60.0,
        30.0,
        3,
        2,
        4,
    ),
    case(
        "TestReplicaCalcScaleUpHotCpuLessScale",
        Average,
        60.0,
        30.0,
        3,
        2,
        4,
    ),
    // One ready pod at 40%: counting the two unready as idle gives 0.44 < 1.
    case(
        "TestReplicaCalcScaleUpUnreadyNoScale",
        Average,
        40.0,
        30.0,
        3,
        1,
        3,
    ),
    case(
        "TestReplicaCalcScaleHotCpuNoScale",
        Average,
        40.0,
        30.0,
        3,
        1,
        3,
    ),
    // Failed and terminating pods are not in currentReplicas at all.
    case(
        "TestReplicaCalcScaleUpIgnoresFailedPods",
        Average,
        60.0,
        30.0,
        2,
        2,
        4,
    ),
    case(
        "TestReplicaCalcScaleUpIgnoresDeletionPods",
        Average,
        60.0,
        30.0,
        2,
        2,
        4,
    ),
    // Pod custom metric qps 20, 10, 30; target 15 per pod.
    case("TestReplicaCalcScaleUpCM", Average, 20.0, 15.0, 3, 3, 4),
    // Custom metrics count unready and hot pods: all three are "ready".
    case(
        "TestReplicaCalcScaleUpCMUnreadyHotCpuNoLessScale",
        Average,
        30.0,
        15.0,
        3,
        3,
        6,
    ),
    case(
        "TestReplicaCalcScaleUpCMUnreadyHotCpuScaleWouldScaleDown",
        Average,
        95.0 / 3.0,
        15.0,
        3,
        3,
        7,
    ),
    case(
        "TestReplicaCalcScaleUpCMObject",
        Average,
        20.0,
        15.0,
        3,
        3,
        4,
    ),
    case(
        "TestReplicaCalcScaleUpCMPerPodObject",
        Total,
        20.0,
        5.0,
        3,
        3,
        4,
    ),
    // Object value 50 vs 10 over the single ready pod (15 if unready counted).
    case(
        "TestReplicaCalcScaleUpCMObjectIgnoresUnreadyPods",
        Average,
        50.0,
        10.0,
        3,
        1,
        5,
    ),
    case(
        "TestReplicaCalcScaleUpCMExternal",
        Average,
        8.6,
        4.4,
        1,
        1,
        2,
    ),
    // Upstream's external-metric path multiplies by the ready pods without
    // the unready adjustment and answers 2: a scale-down from 3 while the
    // metric is at twice its target. This policy applies the pod-metric rule
    // to every average (unready count as idle: ratio 1.95 × 1/3 = 0.65 < 1)
    // and holds at 3. A deliberate difference.
    case(
        "TestReplicaCalcScaleUpCMExternalIgnoresUnreadyPods",
        Average,
        8.6,
        4.4,
        3,
        1,
        3,
    ),
    case(
        "TestReplicaCalcScaleUpCMExternalNoLabels",
        Average,
        8.6,
        4.4,
        1,
        1,
        2,
    ),
    case(
        "TestReplicaCalcScaleUpPerPodCMExternal",
        Total,
        8.6,
        2.15,
        3,
        3,
        4,
    ),
    // CPU 10%, 30%, 50%, 25%, 25% (mean 28%); target 50%.
    case("TestReplicaCalcScaleDown", Average, 28.0, 50.0, 5, 5, 3),
    case("TestReplicaCalcScaleDownCM", Average, 12.0, 20.0, 5, 5, 3),
    case(
        "TestReplicaCalcScaleDownPerPodCMObject",
        Total,
        6.0,
        2.0,
        5,
        5,
        3,
    ),
    case(
        "TestReplicaCalcScaleDownCMObject",
        Average,
        12.0,
        20.0,
        5,
        5,
        3,
    ),
    case(
        "TestReplicaCalcScaleDownCMExternal",
        Average,
        8.6,
        14.334,
        5,
        5,
        3,
    ),
    case(
        "TestReplicaCalcScaleDownPerPodCMExternal",
        Total,
        8.6,
        2.867,
        5,
        5,
        3,
    ),
    // Scale-down over the 3 ready pods only (10%, 30%, 50%): ceil(3 × 0.6).
    case(
        "TestReplicaCalcScaleDownIncludeUnreadyPods",
        Average,
        30.0,
        50.0,
        5,
        3,
        2,
    ),
    // 4 pending pods, 1 running at 10%.
    case(
        "TestReplicaCalcScaleDownExcludeUnscheduledPods",
        Average,
        10.0,
        50.0,
        5,
        1,
        1,
    ),
    case(
        "TestReplicaCalcScaleDownIgnoreHotCpuPods",
        Average,
        30.0,
        50.0,
        5,
        3,
        2,
    ),
    case(
        "TestReplicaCalcScaleDownIgnoresFailedPods",
        Average,
        28.0,
        50.0,
        5,
        5,
        3,
    ),
    case(
        "TestReplicaCalcScaleDownIgnoresDeletionPods",
        Average,
        28.0,
        50.0,
        5,
        5,
        3,
    ),
    // Usage 1010m + 1030m + 1020m over requests 0.9 + 1.0 + 1.1 cores: 102%.
    case("TestReplicaCalcTolerance", Average, 102.0, 100.0, 3, 3, 3),
    case(
        "TestReplicaCalcToleranceCM",
        Average,
        62.0 / 3.0,
        20.0,
        3,
        3,
        3,
    ),
    case(
        "TestReplicaCalcToleranceCMObject",
        Average,
        20.666,
        20.0,
        3,
        3,
        3,
    ),
    case(
        "TestReplicaCalcTolerancePerPodCMObject",
        Total,
        20.166,
        5.0,
        4,
        4,
        4,
    ),
    case(
        "TestReplicaCalcToleranceCMExternal",
        Average,
        8.6,
        8.888,
        3,
        3,
        3,
    ),
    case(
        "TestReplicaCalcTolerancePerPodCMExternal",
        Total,
        8.6,
        2.9,
        3,
        3,
        3,
    ),
    // Total usage 28.7 cores over 4 × 1 core requested is 587.5%.
    case(
        "TestReplicaCalcSuperfluousMetrics",
        Average,
        587.5,
        100.0,
        4,
        4,
        24,
    ),
    // Pods at 50% of their request; targets 56% and 55% (just outside and
    // just inside the band).
    case(
        "TestReplicaCalcComputedToleranceAlgImplementation",
        Average,
        50.0,
        56.0,
        10,
        10,
        9,
    ),
    case(
        "TestReplicaCalcComputedToleranceAlgImplementation (unscaling)",
        Average,
        50.0,
        55.0,
        10,
        10,
        10,
    ),
];

#[test]
fn hpa_replica_calculator_cases() {
    let mut failures = Vec::new();
    for c in HPA_CASES {
        let p = Params {
            metric_type: c.metric_type,
            ..Params::new("m", c.target)
        };
        let got = recommend(&p, c.value, c.current, c.ready).desired;
        if got != c.want {
            failures.push(format!("{}: got {got}, want {}", c.upstream, c.want));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(HPA_CASES.len() >= 35);
}

#[test]
fn hpa_cases_give_the_same_decision_through_the_context() {
    for c in HPA_CASES {
        let metric_type = match c.metric_type {
            Average => "average",
            Total => "total",
        };
        let ctx = ContextBuilder::new()
            .replicas(c.current, 0, 1000)
            .ready(c.ready)
            .metric("m", &[(0, c.value)])
            .params(json!({"metric": "m", "target": c.target, "metric_type": metric_type}))
            .build();
        let d = decide(&ctx).unwrap();
        let want = (c.want != c.current).then_some(c.want);
        assert_eq!(d.desired(), want, "{}: {}", c.upstream, d.reason);
    }
}

/// Inputs and the expected outcome of [`recommend`] for this policy's own
/// edges.
struct Edge {
    name: &'static str,
    params: Params,
    value: f64,
    current: u32,
    ready: u32,
    desired: u32,
    outcome: Outcome,
}

fn edges() -> Vec<Edge> {
    let avg = |target| Params::new("m", target);
    let total = |target| Params {
        metric_type: Total,
        ..Params::new("m", target)
    };
    let with_tol = |up: Option<f64>, down: Option<f64>| Params {
        scale_up_tolerance: up,
        scale_down_tolerance: down,
        ..Params::new("m", 60.0)
    };
    let edge = |name, params, value, current, ready, desired, outcome| Edge {
        name,
        params,
        value,
        current,
        ready,
        desired,
        outcome,
    };
    vec![
        edge(
            "the brief's example",
            avg(60.0),
            83.0,
            4,
            4,
            6,
            Outcome::Scale,
        ),
        // 0.2 × 3 / 0.1 is 6.000000000000001 in floating point.
        edge(
            "no rounding up from float noise",
            avg(0.1),
            0.2,
            3,
            3,
            6,
            Outcome::Scale,
        ),
        // 66 / 60 − 1 is 0.10000000000000009: still on the band's edge.
        edge(
            "band edge holds",
            avg(60.0),
            66.0,
            3,
            3,
            3,
            Outcome::WithinTolerance,
        ),
        edge(
            "just outside the band",
            avg(60.0),
            66.1,
            3,
            3,
            4,
            Outcome::Scale,
        ),
        edge(
            "lower band edge holds",
            avg(60.0),
            54.0,
            3,
            3,
            3,
            Outcome::WithinTolerance,
        ),
        edge(
            "at target",
            avg(60.0),
            60.0,
            3,
            3,
            3,
            Outcome::WithinTolerance,
        ),
        edge(
            "zero tolerance scales on any change",
            Params {
                tolerance: 0.0,
                ..avg(60.0)
            },
            61.0,
            3,
            3,
            4,
            Outcome::Scale,
        ),
        edge(
            "a tight upper band scales up",
            with_tol(Some(0.05), None),
            66.0,
            3,
            3,
            4,
            Outcome::Scale,
        ),
        edge(
            "a wide lower band holds",
            with_tol(None, Some(0.3)),
            45.0,
            4,
            4,
            4,
            Outcome::WithinTolerance,
        ),
        edge(
            "a wide lower band does not widen the upper one",
            with_tol(None, Some(0.3)),
            75.0,
            4,
            4,
            5,
            Outcome::Scale,
        ),
        edge(
            "idle metric asks for zero",
            avg(60.0),
            0.0,
            4,
            4,
            0,
            Outcome::Scale,
        ),
        edge(
            "no replica ready holds",
            avg(60.0),
            90.0,
            3,
            0,
            3,
            Outcome::NoReadyReplicas,
        ),
        // A rollout surge: 3 ready of 2 asked for, metric below target.
        edge(
            "more ready than current never scales up below target",
            avg(50.0),
            40.0,
            2,
            3,
            2,
            Outcome::DirectionFlip { wanted: 3 },
        ),
        edge(
            "more ready than current scales down on ready",
            avg(50.0),
            10.0,
            2,
            3,
            1,
            Outcome::Scale,
        ),
        edge(
            "unready within the band after counting them idle",
            avg(30.0),
            40.0,
            4,
            3,
            4,
            Outcome::UnreadyAbsorb { adjusted: 1.0 },
        ),
        edge("from zero", avg(4.4), 8.6, 0, 0, 2, Outcome::FromZero),
        edge(
            "stays at zero when idle",
            avg(4.4),
            0.0,
            0,
            0,
            0,
            Outcome::FromZero,
        ),
        edge(
            "total from zero",
            total(100.0),
            250.0,
            0,
            0,
            3,
            Outcome::FromZero,
        ),
        edge(
            "total ignores readiness",
            total(100.0),
            550.0,
            3,
            1,
            6,
            Outcome::Scale,
        ),
        edge(
            "total within the band",
            total(100.0),
            310.0,
            3,
            3,
            3,
            Outcome::WithinTolerance,
        ),
        edge(
            "huge values saturate",
            avg(1.0),
            1e30,
            3,
            3,
            u32::MAX,
            Outcome::Scale,
        ),
    ]
}

#[test]
fn edges_of_the_formula() {
    for e in edges() {
        let rec = recommend(&e.params, e.value, e.current, e.ready);
        assert_eq!(rec.desired, e.desired, "{}", e.name);
        match (rec.outcome, e.outcome) {
            (Outcome::UnreadyAbsorb { adjusted: a }, Outcome::UnreadyAbsorb { adjusted: b }) => {
                assert!((a - b).abs() < 1e-12, "{}: adjusted {a} vs {b}", e.name);
            }
            (got, want) => assert_eq!(got, want, "{}", e.name),
        }
    }
}

#[test]
fn ceil_replicas_cases() {
    let cases = [
        (0.0, 0),
        (-1.0, 0),
        (f64::NAN, 0),
        (0.000_1, 1),
        (1.0, 1),
        (1.000_000_000_000_1, 1),
        (1.000_01, 2),
        (2.999_999_999_999_9, 3),
        (2.5, 3),
        (4_294_967_295.0, u32::MAX),
        (1e20, u32::MAX),
        (f64::INFINITY, u32::MAX),
    ];
    for (x, want) in cases {
        assert_eq!(ceil_replicas(x), want, "{x}");
    }
}

#[test]
fn tolerance_band_cases() {
    let cases = [
        (1.0, 0.1, 0.1, true),
        (1.1, 0.1, 0.1, true),
        (1.100_001, 0.1, 0.1, false),
        (0.9, 0.1, 0.1, true),
        (0.899_999, 0.1, 0.1, false),
        (1.04, 0.05, 0.5, true),
        (1.06, 0.05, 0.5, false),
        (0.6, 0.05, 0.5, true),
        (1.0, 0.0, 0.0, true),
        (1.01, 0.0, 0.0, false),
    ];
    for (ratio, up, down, want) in cases {
        assert_eq!(
            within_tolerance(ratio, up, down),
            want,
            "{ratio} +{up}/-{down}"
        );
    }
}

fn ctx(current: u32, ready: u32, values: &[f64], params: serde_json::Value) -> Context {
    ContextBuilder::new()
        .now_ms(600_000)
        .replicas(current, 1, 10)
        .ready(ready)
        .series(
            "cpu",
            600_000 - 15_000 * (values.len() as i64 - 1),
            15_000,
            values,
        )
        .params(params)
        .build()
}

#[test]
fn reasons_read_well() {
    let cpu60 = json!({"metric": "cpu", "target": 60});
    let cases: Vec<(&str, Context, Option<u32>, &str)> = vec![
        (
            "scale up",
            ctx(4, 4, &[83.0], cpu60.clone()),
            Some(6),
            "cpu 83.0 vs target 60.0 (ratio 1.38): 4 → 6",
        ),
        (
            "scale down",
            ctx(4, 4, &[30.0], cpu60.clone()),
            Some(2),
            "cpu 30.0 vs target 60.0 (ratio 0.50): 4 → 2",
        ),
        (
            "within tolerance",
            ctx(4, 4, &[62.0], cpu60.clone()),
            None,
            "cpu 62.0 vs target 60.0 (ratio 1.03) within tolerance ±0.1: hold at 4",
        ),
        (
            "asymmetric band",
            ctx(
                4,
                4,
                &[62.0],
                json!({"metric": "cpu", "target": 60, "scale_up_tolerance": 0.05,
                       "scale_down_tolerance": 0.2}),
            ),
            None,
            "cpu 62.0 vs target 60.0 (ratio 1.03) within tolerance +0.05/-0.2: hold at 4",
        ),
        (
            "computed over ready replicas",
            ctx(3, 2, &[90.0], json!({"metric": "cpu", "target": 30})),
            Some(6),
            "cpu 90.0 vs target 30.0 (ratio 3.00 over 2 ready of 3 replicas): 3 → 6",
        ),
        (
            "unready absorb",
            ctx(3, 1, &[40.0], json!({"metric": "cpu", "target": 30})),
            None,
            "cpu 40.0 vs target 30.0 (ratio 1.33 over 1 ready of 3 replicas); counting the 2 \
             unready as idle the ratio is 0.44, so they should absorb the load: hold at 3",
        ),
        (
            "none ready",
            ctx(3, 0, &[90.0], cpu60.clone()),
            None,
            "cpu 90.0 vs target 60.0 (ratio 1.50 over 0 ready of 3 replicas): none of 3 \
             replicas is ready yet: hold",
        ),
        (
            "surge",
            ctx(2, 3, &[40.0], json!({"metric": "cpu", "target": 50})),
            None,
            "cpu 40.0 vs target 50.0 (ratio 0.80 over 3 ready of 2 replicas): below target, \
             yet 3 ready replicas give 3 > 2: hold at 2",
        ),
        (
            "capped at max",
            ctx(4, 4, &[300.0], cpu60.clone()),
            Some(10),
            "cpu 300.0 vs target 60.0 (ratio 5.00): 4 → 10 (20 wanted, max 10)",
        ),
        (
            "already at max",
            ctx(10, 10, &[300.0], cpu60.clone()),
            None,
            "cpu 300.0 vs target 60.0 (ratio 5.00): hold at 10 (50 wanted, max 10)",
        ),
        (
            "floored at min",
            ctx(4, 4, &[0.0], cpu60.clone()),
            Some(1),
            "cpu 0.0 vs target 60.0 (ratio 0.00): 4 → 1 (0 wanted, min 1)",
        ),
        (
            "total",
            ctx(
                3,
                3,
                &[860.0],
                json!({"metric": "cpu", "target": 215, "metric_type": "total"}),
            ),
            Some(4),
            "cpu 860.0 vs 215.0 per replica × 3 replicas (ratio 1.33): 3 → 4",
        ),
        (
            "mean over a window",
            ctx(
                4,
                4,
                &[200.0, 80.0, 86.0],
                json!({"metric": "cpu", "target": 60, "aggregate": "mean", "window": "20s"}),
            ),
            Some(6),
            "cpu mean over 20s 83.0 vs target 60.0 (ratio 1.38): 4 → 6",
        ),
        (
            "max over every sample",
            ctx(
                4,
                4,
                &[90.0, 30.0, 30.0],
                json!({"metric": "cpu", "target": 60, "aggregate": "max"}),
            ),
            Some(6),
            "cpu max 90.0 vs target 60.0 (ratio 1.50): 4 → 6",
        ),
        (
            "small values keep their digits",
            ctx(2, 2, &[0.0426], json!({"metric": "cpu", "target": 0.02})),
            Some(5),
            "cpu 0.0426 vs target 0.0200 (ratio 2.13): 2 → 5",
        ),
    ];
    for (name, ctx, want, reason) in cases {
        let d = decide(&ctx).unwrap();
        assert_eq!(d.desired(), want, "{name}: {}", d.reason);
        assert_eq!(d.reason, reason, "{name}");
        assert_eq!(d.state, None, "{name}");
        assert!(d.reason.len() <= 1024);
    }
}

#[test]
fn from_zero_reason() {
    let ctx = ContextBuilder::new()
        .replicas(0, 0, 10)
        .metric("queue", &[(0, 250.0)])
        .params(json!({"metric": "queue", "target": 100, "metric_type": "total"}))
        .build();
    let d = decide(&ctx).unwrap();
    assert_eq!(d.desired(), Some(3));
    assert_eq!(
        d.reason,
        "queue 250.0 vs 100.0 per replica (ratio 2.50): 0 → 3"
    );
}

#[test]
fn errors_name_the_problem() {
    let cases: Vec<(&str, Context, &str)> = vec![
        (
            "no samples",
            ContextBuilder::new()
                .metric("cpu", &[])
                .params(json!({"metric": "cpu", "target": 60}))
                .build(),
            "metric \"cpu\" has no samples",
        ),
        (
            "no samples in the window",
            ContextBuilder::new()
                .now_ms(600_000)
                .metric("cpu", &[(0, 50.0)])
                .params(json!({"metric": "cpu", "target": 60, "aggregate": "mean",
                               "window": "1m"}))
                .build(),
            "metric \"cpu\" has no samples in the last 1m",
        ),
        (
            "metric could not be read",
            ContextBuilder::new()
                .failed_metric("cpu", "prometheus timed out")
                .params(json!({"metric": "cpu", "target": 60}))
                .build(),
            "metric \"cpu\" could not be read: prometheus timed out",
        ),
        (
            "metric not configured",
            ContextBuilder::new()
                .metric("rps", &[(0, 1.0)])
                .params(json!({"metric": "cpu", "target": 60}))
                .build(),
            "parameter metric: metric \"cpu\" is not one of the scaler's metrics (rps)",
        ),
        (
            "target zero",
            ctx(4, 4, &[50.0], json!({"metric": "cpu", "target": 0})),
            "parameter target must be > 0, got 0",
        ),
        (
            "target negative",
            ctx(4, 4, &[50.0], json!({"metric": "cpu", "target": -5})),
            "parameter target must be > 0, got -5",
        ),
        (
            "tolerance negative",
            ctx(
                4,
                4,
                &[50.0],
                json!({"metric": "cpu", "target": 60, "scale_down_tolerance": -0.1}),
            ),
            "parameter scale_down_tolerance must be >= 0, got -0.1",
        ),
        (
            "window zero",
            ctx(
                4,
                4,
                &[50.0],
                json!({"metric": "cpu", "target": 60, "aggregate": "max", "window": "0s"}),
            ),
            "parameter window must be longer than 0s",
        ),
        (
            "target missing",
            ctx(4, 4, &[50.0], json!({"metric": "cpu"})),
            "missing required parameter target",
        ),
        (
            "unknown parameter",
            ctx(
                4,
                4,
                &[50.0],
                json!({"metric": "cpu", "target": 60, "tolerence": 0.2}),
            ),
            "unknown parameter tolerence (accepted: metric, target, metric_type, tolerance, \
             scale_up_tolerance, scale_down_tolerance, aggregate, window)",
        ),
        (
            "bad metric type",
            ctx(
                4,
                4,
                &[50.0],
                json!({"metric": "cpu", "target": 60, "metric_type": "sum"}),
            ),
            "parameter metric_type must be one of average, total, got \"sum\"",
        ),
        (
            "bad aggregate",
            ctx(
                4,
                4,
                &[50.0],
                json!({"metric": "cpu", "target": 60, "aggregate": "p200"}),
            ),
            "parameter aggregate: unknown aggregate \"p200\": use latest, mean, min, max, \
             median or pNN (e.g. p95)",
        ),
        (
            "negative metric",
            ctx(4, 4, &[-3.0], json!({"metric": "cpu", "target": 60})),
            "metric \"cpu\" is negative (-3.0); target-tracking needs a value >= 0",
        ),
    ];
    for (name, ctx, want) in cases {
        assert_eq!(decide(&ctx).unwrap_err(), want, "{name}");
    }
}

#[test]
fn describe_matches_the_declarations() {
    params::check_specs(PARAMS).unwrap();
    let info = TargetTracking::describe();
    assert_eq!(info.name, "target-tracking");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    let names: Vec<&str> = info.parameters.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "metric",
            "target",
            "metric_type",
            "tolerance",
            "scale_up_tolerance",
            "scale_down_tolerance",
            "aggregate",
            "window"
        ]
    );
    let required: Vec<&str> = info
        .parameters
        .iter()
        .filter(|p| p.required)
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(required, ["metric", "target"]);
    let tolerance = &info.parameters[3];
    assert_eq!(tolerance.kind, ParameterKind::Number);
    assert_eq!(tolerance.default.as_deref(), Some("0.1"));
    // Every name the aggregate parameter's description lists is accepted.
    for name in ["latest", "mean", "min", "max", "median", "p95"] {
        assert!(info.parameters[6].description.contains(name), "{name}");
        name.parse::<Aggregate>().unwrap();
    }
}

#[test]
fn defaults_from_describe_are_the_ones_used() {
    let ctx = ctx(4, 4, &[50.0], json!({"metric": "cpu", "target": 60}));
    assert_eq!(
        Params::from_context(&ctx).unwrap(),
        Params::new("cpu", 60.0)
    );
}

#[test]
fn evaluate_is_decide() {
    let ctx = ctx(4, 4, &[83.0], json!({"metric": "cpu", "target": 60}));
    assert_eq!(TargetTracking::evaluate(ctx.clone()), decide(&ctx));
}

#[test]
fn latest_ignores_older_samples_of_a_long_window() {
    // A 1,000-point window (the benchmark's shape): only the newest counts.
    let mut values = vec![500.0; 999];
    values.push(83.0);
    let ctx = ctx(4, 4, &values, json!({"metric": "cpu", "target": 60}));
    assert_eq!(decide(&ctx).unwrap().desired(), Some(6));
}

#[test]
fn the_reason_names_the_bound_that_stopped_the_count() {
    // min = max = 5: a count of 1 is stopped by the lower bound.
    let at = |values: &[(i64, f64)]| {
        ContextBuilder::new()
            .now_ms(600_000)
            .replicas(5, 5, 5)
            .metric("cpu", values)
            .params(json!({"metric": "cpu", "target": 60}))
            .build()
    };
    let low = decide(&at(&[(600_000, 6.0)])).unwrap();
    assert_eq!(low.desired(), None);
    assert!(
        low.reason.ends_with("hold at 5 (1 wanted, min 5)"),
        "{}",
        low.reason
    );
    let high = decide(&at(&[(600_000, 600.0)])).unwrap();
    assert!(
        high.reason.ends_with("hold at 5 (50 wanted, max 5)"),
        "{}",
        high.reason
    );
}
