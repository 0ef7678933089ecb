//! Table tests: upstream HPA's cases (pkg/controller/podautoscaler/
//! horizontal_test.go, each named after the upstream case it ports) and
//! Scalewise's own rules, plus a long run over the NASA July 1995 trace that
//! checks every tick against the rules and against a state restored from
//! the "journal".

use std::time::Duration;

use super::hpa::{self, Direction, Limit, Rules};
use super::*;
use crate::config::{RateLimit, ScalingRules, Select};
use crate::policy::ScaleEvent;

/// An arbitrary "now" (2023-11-14T22:13:20Z).
const NOW: i64 = 1_700_000_000_000;
const SECOND: i64 = 1_000;
const MINUTE: i64 = 60 * SECOND;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Upstream's `generateScalingRules`: a pods and/or a percent limit (0 =
/// absent), select max, and a stabilisation window, all in seconds.
fn rules(
    pods: u32,
    pods_period: u64,
    percent: u32,
    percent_period: u64,
    window: u64,
) -> ScalingRules {
    let mut limits = Vec::new();
    if pods != 0 {
        limits.push(RateLimit::pods(pods, secs(pods_period)));
    }
    if percent != 0 {
        limits.push(RateLimit::percent(percent, secs(percent_period)));
    }
    ScalingRules {
        stabilization_window: Some(secs(window)),
        select: Select::Max,
        limits: Some(limits.into()),
        cooldown: Duration::ZERO,
    }
}

/// A behaviour with HPA's defaults where a direction is `None`.
fn behavior(up: Option<ScalingRules>, down: Option<ScalingRules>) -> Behavior {
    Behavior {
        scale_up: up.unwrap_or_else(ScalingRules::default_up),
        scale_down: down.unwrap_or_else(ScalingRules::default_down),
    }
}

/// Upstream's `generateEventsUniformDistribution`: one event per change,
/// each in the middle of its share of the last `period_s` seconds, oldest
/// first. Only the size of each change matters to the envelope.
fn uniform_events(changes: &[u32], period_s: i64, direction: Direction) -> Vec<ScaleEvent> {
    let n = changes.len() as i64;
    changes
        .iter()
        .enumerate()
        .map(|(i, &change)| {
            let segment_ms = period_s * SECOND / n;
            let ago_ms = period_s * SECOND - segment_ms * (i as i64 + 1) + segment_ms / 2;
            let (from, to) = match direction {
                Direction::Up => (100, 100 + change),
                Direction::Down => (100 + change, 100),
            };
            ScaleEvent {
                timestamp_ms: NOW - ago_ms,
                from,
                to,
            }
        })
        .collect()
}

/// An input at `NOW` with no failures, not paused, nothing in flight.
fn input(
    current: u32,
    min: u32,
    max: u32,
    proposal: Option<u32>,
    behavior: &Behavior,
) -> Input<'_> {
    Input {
        now_ms: NOW,
        current,
        min,
        max,
        proposal,
        failed_metrics: &[],
        policy_failed: false,
        no_votes: false,
        paused: false,
        in_flight: None,
        behavior,
    }
}

/// [`input`] at `NOW + offset_ms`.
fn input_at(
    offset_ms: i64,
    current: u32,
    min: u32,
    max: u32,
    proposal: Option<u32>,
    behavior: &Behavior,
) -> Input<'_> {
    Input {
        now_ms: NOW + offset_ms,
        ..input(current, min, max, proposal, behavior)
    }
}

fn step(rule: Rule, from: u32, to: u32, reason: &str) -> EnvelopeStep {
    EnvelopeStep {
        rule: rule.as_str().to_string(),
        from,
        to,
        reason: reason.to_string(),
    }
}

fn failure(metric: &str, kind: &str, error: &str) -> MetricFailure {
    MetricFailure {
        metric: metric.to_string(),
        kind: kind.to_string(),
        error: error.to_string(),
    }
}

/// Upstream's expected HPA condition, as the envelope rule that fired last.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Condition {
    DesiredWithinRange,
    ScaleUpLimit,
    ScaleDownLimit,
    TooManyReplicas,
    TooFewReplicas,
}

impl Condition {
    fn rule(self) -> Option<Rule> {
        match self {
            Condition::DesiredWithinRange => None,
            Condition::ScaleUpLimit | Condition::ScaleDownLimit => Some(Rule::RateLimit),
            Condition::TooManyReplicas | Condition::TooFewReplicas => Some(Rule::Bounds),
        }
    }
}

struct ScalingCase {
    name: &'static str,
    up_events: &'static [u32],
    down_events: &'static [u32],
    min: u32,
    max: u32,
    up: Option<ScalingRules>,
    down: Option<ScalingRules>,
    current: u32,
    proposal: u32,
    expected: u32,
    condition: Condition,
}

impl Default for ScalingCase {
    fn default() -> Self {
        ScalingCase {
            name: "",
            up_events: &[],
            down_events: &[],
            min: 1,
            max: 1000,
            up: None,
            down: None,
            current: 0,
            proposal: 0,
            expected: 0,
            condition: Condition::DesiredWithinRange,
        }
    }
}

#[test]
fn scaling_with_rules_upstream_table() {
    use Condition::*;
    let cases = vec![
        ScalingCase {
            name: "prenormalized desired replicas within range",
            current: 5,
            proposal: 7,
            min: 3,
            max: 8,
            expected: 7,
            condition: DesiredWithinRange,
            ..Default::default()
        },
        ScalingCase {
            name: "prenormalized desired replicas < minReplicas",
            current: 3,
            proposal: 1,
            min: 2,
            max: 8,
            expected: 2,
            condition: TooFewReplicas,
            ..Default::default()
        },
        ScalingCase {
            name: "prenormalized desired replicas within range when minReplicas is 0",
            current: 1,
            proposal: 0,
            min: 0,
            max: 10,
            expected: 0,
            condition: DesiredWithinRange,
            ..Default::default()
        },
        ScalingCase {
            name: "maxReplicas is the limit because maxReplicas < scaleUpLimit",
            current: 20,
            proposal: 1000,
            min: 1,
            max: 10,
            expected: 10,
            condition: TooManyReplicas,
            ..Default::default()
        },
        ScalingCase {
            name: "desired replica count is more than the maximum replica count",
            current: 100,
            proposal: 1000,
            min: 100,
            max: 150,
            expected: 150,
            condition: TooManyReplicas,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleUpLimit is the limit because scaleUpLimit < maxReplicas with user policies",
            current: 3,
            proposal: 1000,
            min: 1,
            max: 2000,
            up: Some(rules(0, 0, 1, 60, 0)),
            expected: 4,
            condition: ScaleUpLimit,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleDownLimit is the limit because scaleDownLimit > minReplicas with user defined policies",
            current: 1000,
            proposal: 3,
            min: 3,
            max: 2000,
            down: Some(rules(20, 60, 0, 0, 0)),
            expected: 980,
            condition: ScaleDownLimit,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleUp with default behavior",
            current: 10,
            proposal: 50,
            expected: 20,
            condition: ScaleUpLimit,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleUp with pods policy larger than percent policy",
            up: Some(rules(100, 60, 100, 60, 0)),
            current: 10,
            proposal: 500,
            expected: 110,
            condition: ScaleUpLimit,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleUp with percent policy larger than pods policy",
            up: Some(rules(2, 60, 100, 60, 0)),
            current: 10,
            proposal: 500,
            expected: 20,
            condition: ScaleUpLimit,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleUp with spec MaxReplicas limitation with large pod policy",
            up: Some(rules(100, 60, 0, 0, 0)),
            current: 10,
            proposal: 50,
            expected: 50,
            condition: DesiredWithinRange,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleUp with spec MaxReplicas limitation with large percent policy",
            up: Some(rules(10000, 60, 0, 0, 0)),
            current: 10,
            proposal: 50,
            expected: 50,
            condition: DesiredWithinRange,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleUp with pod policy limitation",
            up: Some(rules(30, 60, 0, 0, 0)),
            current: 10,
            proposal: 50,
            expected: 40,
            condition: ScaleUpLimit,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleUp with percent policy limitation",
            up: Some(rules(0, 0, 200, 60, 0)),
            current: 10,
            proposal: 50,
            expected: 30,
            condition: ScaleUpLimit,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleDown with percent policy larger than pod policy",
            down: Some(rules(20, 60, 1, 60, 300)),
            current: 100,
            proposal: 2,
            expected: 80,
            condition: ScaleDownLimit,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleDown with pod policy larger than percent policy",
            down: Some(rules(2, 60, 1, 60, 300)),
            current: 100,
            proposal: 2,
            expected: 98,
            condition: ScaleDownLimit,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleDown with spec MinReplicas=nil limitation with large pod policy",
            down: Some(rules(100, 60, 0, 0, 300)),
            current: 10,
            proposal: 0,
            expected: 1,
            condition: TooFewReplicas,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleDown with spec MinReplicas limitation with large percent policy",
            min: 5,
            down: Some(rules(0, 0, 100, 60, 300)),
            current: 10,
            proposal: 2,
            expected: 5,
            condition: TooFewReplicas,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleDown with pod policy limitation",
            down: Some(rules(5, 60, 0, 0, 300)),
            current: 10,
            proposal: 2,
            expected: 5,
            condition: ScaleDownLimit,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleDown with percent policy limitation",
            down: Some(rules(0, 0, 50, 60, 300)),
            current: 10,
            proposal: 5,
            expected: 5,
            condition: DesiredWithinRange,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleUp with spec MaxReplicas limitation with large pod policy and events",
            up_events: &[1, 5, 9],
            max: 200,
            up: Some(rules(300, 60, 0, 0, 0)),
            current: 100,
            proposal: 500,
            expected: 200,
            condition: TooManyReplicas,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleUp with spec MaxReplicas limitation with large percent policy and events",
            up_events: &[1, 5, 9],
            max: 200,
            up: Some(rules(0, 0, 10000, 60, 0)),
            current: 100,
            proposal: 500,
            expected: 200,
            condition: TooManyReplicas,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleUp with currentReplicas limitation with rate.PeriodSeconds with a lot of recent scale up events",
            up_events: &[1, 5, 9],
            up: Some(rules(5, 120, 0, 0, 0)),
            current: 100,
            proposal: 500,
            expected: 100,
            condition: ScaleUpLimit,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleUp with pod policy and previous scale up events",
            up_events: &[1, 5, 9],
            up: Some(rules(150, 120, 0, 0, 0)),
            current: 100,
            proposal: 500,
            expected: 235,
            condition: ScaleUpLimit,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleUp with percent policy and previous scale up events",
            up_events: &[1, 5, 9],
            up: Some(rules(0, 0, 200, 120, 0)),
            current: 100,
            proposal: 500,
            expected: 255,
            condition: ScaleUpLimit,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleDown with default policy and previous events",
            down_events: &[1, 5, 9],
            current: 10,
            proposal: 5,
            expected: 5,
            condition: DesiredWithinRange,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleDown with spec MinReplicas=nil limitation with large pod policy and previous events",
            down_events: &[1, 5, 9],
            down: Some(rules(115, 120, 0, 0, 300)),
            current: 100,
            proposal: 0,
            expected: 1,
            condition: TooFewReplicas,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleDown with spec MinReplicas limitation with large pod policy and previous events",
            down_events: &[1, 5, 9],
            min: 5,
            down: Some(rules(130, 120, 0, 0, 300)),
            current: 100,
            proposal: 0,
            expected: 5,
            condition: TooFewReplicas,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleDown with spec MinReplicas limitation with large percent policy and previous events",
            down_events: &[1, 5, 9],
            min: 5,
            down: Some(rules(0, 0, 100, 120, 300)),
            current: 100,
            proposal: 2,
            expected: 5,
            condition: TooFewReplicas,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleDown with pod policy limitation and previous events",
            down_events: &[1, 5, 9],
            down: Some(rules(5, 120, 0, 0, 300)),
            current: 100,
            proposal: 2,
            expected: 100,
            condition: ScaleDownLimit,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleDown with percent policy limitation and previous events",
            down_events: &[2, 4, 6],
            down: Some(rules(0, 0, 50, 120, 300)),
            current: 100,
            proposal: 0,
            expected: 56,
            condition: ScaleDownLimit,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleDown with previous events preventing further scale down",
            down_events: &[10, 10, 10],
            down: Some(rules(0, 0, 10, 120, 300)),
            current: 100,
            proposal: 0,
            expected: 100,
            condition: ScaleDownLimit,
            ..Default::default()
        },
        ScalingCase {
            name: "scaleDown with with previous events still allowing more scale down",
            down_events: &[10, 10, 10],
            down: Some(rules(0, 0, 1000, 120, 300)),
            current: 10,
            proposal: 5,
            expected: 5,
            condition: DesiredWithinRange,
            ..Default::default()
        },
        ScalingCase {
            name: "check 'outdated' flag for events for one behavior for up",
            up_events: &[8, 12, 9, 11],
            up: Some(rules(1000, 60, 0, 0, 0)),
            current: 100,
            proposal: 200,
            expected: 200,
            condition: DesiredWithinRange,
            ..Default::default()
        },
        ScalingCase {
            name: "check that events were not marked 'outdated' for two different policies in the behavior for up",
            up_events: &[8, 12, 9, 11],
            up: Some(rules(1000, 120, 100, 60, 0)),
            current: 100,
            proposal: 200,
            expected: 200,
            condition: DesiredWithinRange,
            ..Default::default()
        },
        ScalingCase {
            name: "check that events were marked 'outdated' for two different policies in the behavior for up",
            up_events: &[8, 12, 9, 11],
            up: Some(rules(1000, 30, 100, 60, 0)),
            current: 100,
            proposal: 200,
            expected: 200,
            condition: DesiredWithinRange,
            ..Default::default()
        },
        ScalingCase {
            name: "check 'outdated' flag for events for one behavior for down",
            down_events: &[8, 12, 9, 11],
            down: Some(rules(1000, 60, 0, 0, 300)),
            current: 100,
            proposal: 5,
            expected: 5,
            condition: DesiredWithinRange,
            ..Default::default()
        },
        ScalingCase {
            name: "check that events were not marked 'outdated' for two different policies in the behavior for down",
            down_events: &[8, 12, 9, 11],
            down: Some(rules(1000, 120, 100, 60, 300)),
            current: 100,
            proposal: 5,
            expected: 5,
            condition: DesiredWithinRange,
            ..Default::default()
        },
        ScalingCase {
            name: "check that events were marked 'outdated' for two different policies in the behavior for down",
            down_events: &[8, 12, 9, 11],
            down: Some(rules(1000, 30, 100, 60, 300)),
            current: 100,
            proposal: 5,
            expected: 5,
            condition: DesiredWithinRange,
            ..Default::default()
        },
        // Scalewise's own: upstream's period start (current − added +
        // removed) counts events of both directions.
        ScalingCase {
            name: "scale-up period start adds back replicas removed in the period",
            up_events: &[4],
            down_events: &[2],
            up: Some(rules(0, 0, 300, 120, 0)),
            current: 6,
            proposal: 20,
            expected: 16, // (6 − 4 + 2) × 400%
            condition: ScaleUpLimit,
            ..Default::default()
        },
        ScalingCase {
            name: "scale-down period start takes away replicas added in the period",
            up_events: &[2],
            down_events: &[4],
            down: Some(rules(0, 0, 50, 120, 300)),
            current: 10,
            proposal: 0,
            expected: 6, // (10 − 2 + 4) × 50%
            condition: ScaleDownLimit,
            ..Default::default()
        },
    ];

    for case in cases {
        let behavior = behavior(case.up.clone(), case.down.clone());
        let mut events = uniform_events(case.up_events, 120, Direction::Up);
        events.extend(uniform_events(case.down_events, 120, Direction::Down));
        // No recommendation history: stabilisation has nothing to say, as in
        // upstream's test of convertDesiredReplicasWithBehaviorRate.
        let mut state = EnvelopeState::restore([], events).begun();
        let verdict = apply(
            &mut state,
            &input(
                case.current,
                case.min,
                case.max,
                Some(case.proposal),
                &behavior,
            ),
        );
        assert_eq!(verdict.desired, case.expected, "{}: {verdict:?}", case.name);
        let last_rule = verdict.steps.last().map(|s| s.rule.clone());
        assert_eq!(
            last_rule,
            case.condition.rule().map(|r| r.as_str().to_string()),
            "{} (upstream condition {:?}): {verdict:?}",
            case.name,
            case.condition
        );
        // Upstream computes (and keeps) no recommendation for a count
        // outside the bounds: it goes to the bound at once.
        let within = (case.min..=case.max).contains(&case.current);
        assert_eq!(
            verdict.recommendation,
            within.then_some(case.proposal),
            "{}",
            case.name
        );
    }
}

#[test]
fn calculate_scale_up_limit_with_scaling_rules_upstream() {
    // Upstream's TestCalculateScaleUpLimitWithScalingRules: select min of
    // 2 pods (→ 3) and 50% (→ ceil(1.5) = 2) from 1 replica.
    let config = ScalingRules {
        stabilization_window: Some(secs(300)),
        select: Select::Min,
        limits: Some(
            vec![
                RateLimit::pods(2, secs(60)),
                RateLimit::percent(50, secs(60)),
            ]
            .into(),
        ),
        cooldown: Duration::ZERO,
    };
    let rules = Rules::resolve(&config, Direction::Up);
    match hpa::rate_limit(&rules, 1, &[], NOW) {
        Limit::Bound { replicas, chosen } => {
            assert_eq!(replicas, 2);
            assert_eq!(chosen.amount, hpa::Amount::Percent(50));
        }
        other => panic!("expected a bound, got {other:?}"),
    }
}

#[test]
fn calculate_scale_down_limit_with_behaviors_upstream() {
    // Upstream's TestCalculateScaleDownLimitWithBehaviors: select min
    // (smallest change) of 2 pods (→ 3) and 50% (→ trunc(2.5) = 2) from 5.
    let config = ScalingRules {
        stabilization_window: Some(secs(300)),
        select: Select::Min,
        limits: Some(
            vec![
                RateLimit::pods(2, secs(60)),
                RateLimit::percent(50, secs(60)),
            ]
            .into(),
        ),
        cooldown: Duration::ZERO,
    };
    let rules = Rules::resolve(&config, Direction::Down);
    match hpa::rate_limit(&rules, 5, &[], NOW) {
        Limit::Bound { replicas, chosen } => {
            assert_eq!(replicas, 3);
            assert_eq!(chosen.amount, hpa::Amount::Pods(2));
        }
        other => panic!("expected a bound, got {other:?}"),
    }
}

/// A history entry `ago_ms` before `NOW`.
fn rec(replicas: u32, ago_ms: i64) -> Recommendation {
    Recommendation {
        time_ms: NOW - ago_ms,
        replicas,
    }
}

/// One case of upstream's TestNormalizeDesiredReplicasWithBehavior.
struct StabilizeCase {
    name: &'static str,
    history: Vec<Recommendation>,
    current: u32,
    proposal: u32,
    up_window_s: i64,
    down_window_s: i64,
    expected: u32,
}

#[test]
fn normalize_desired_replicas_with_behavior_upstream_table() {
    let case =
        |name, history, current, proposal, (up_window_s, down_window_s), expected| StabilizeCase {
            name,
            history,
            current,
            proposal,
            up_window_s,
            down_window_s,
            expected,
        };
    let cases = vec![
        case(
            "empty recommendations for scaling down",
            vec![],
            100,
            5,
            (0, 0),
            5,
        ),
        case(
            "simple scale down stabilization",
            vec![rec(4, 2 * MINUTE), rec(5, MINUTE)],
            100,
            3,
            (0, 180),
            5,
        ),
        case(
            "simple scale up stabilization",
            vec![rec(4, 2 * MINUTE), rec(5, MINUTE)],
            1,
            7,
            (300, 0),
            4,
        ),
        case(
            "no scale down stabilization",
            vec![rec(1, 2 * MINUTE), rec(2, MINUTE)],
            100,
            3,
            (300, 0),
            3,
        ),
        case(
            "no scale up stabilization",
            vec![rec(4, 2 * MINUTE), rec(5, MINUTE)],
            1,
            3,
            (0, 300),
            3,
        ),
        case(
            "no scale down stabilization, reuse recommendation element",
            vec![rec(10, 10 * MINUTE), rec(9, 9 * MINUTE)],
            100,
            3,
            (0, 0),
            3,
        ),
        case(
            "no scale up stabilization, reuse recommendation element",
            vec![rec(10, 10 * MINUTE), rec(9, 9 * MINUTE)],
            1,
            100,
            (0, 0),
            100,
        ),
        case(
            "scale down stabilization, reuse one of obsolete recommendation element",
            vec![
                rec(10, 10 * MINUTE),
                rec(4, MINUTE),
                rec(5, 2 * MINUTE),
                rec(9, 9 * MINUTE),
            ],
            100,
            3,
            (0, 180),
            5,
        ),
        case(
            "scale up stabilization, reuse one of obsolete recommendation element",
            vec![
                rec(10, 100 * MINUTE),
                rec(6, MINUTE),
                rec(5, 2 * MINUTE),
                rec(9, 3 * MINUTE),
            ],
            1,
            100,
            (300, 300),
            5,
        ),
        case(
            "scale up and down stabilization, do not scale up when prenormalized rec goes down",
            vec![rec(2, 2 * MINUTE), rec(3, 3 * MINUTE)],
            2,
            1,
            (300, 300),
            2,
        ),
        case(
            "scale up and down stabilization, do not scale down when prenormalized rec goes up",
            vec![rec(2, 2 * MINUTE), rec(1, 3 * MINUTE)],
            2,
            3,
            (300, 300),
            2,
        ),
    ];
    for c in cases {
        let name = c.name;
        let got = hpa::stabilize(
            &c.history,
            NOW,
            c.proposal,
            c.current,
            c.up_window_s * SECOND,
            c.down_window_s * SECOND,
        );
        assert_eq!(got.value, c.expected, "{name}: {got:?}");

        // Through the whole envelope, with no rate limits in the way, the
        // same count comes out, the step says why, and the history keeps
        // only what a window can still see.
        let unlimited = |window_s: i64| ScalingRules {
            stabilization_window: Some(secs(window_s as u64)),
            select: Select::Max,
            limits: Some(vec![].into()),
            cooldown: Duration::ZERO,
        };
        let behavior = behavior(
            Some(unlimited(c.up_window_s)),
            Some(unlimited(c.down_window_s)),
        );
        let mut state =
            EnvelopeState::restore(c.history.iter().map(|r| (r.time_ms, r.replicas)), []);
        let verdict = apply(
            &mut state,
            &input(c.current, 0, 1000, Some(c.proposal), &behavior),
        );
        assert_eq!(verdict.desired, c.expected, "{name}: {verdict:?}");
        if c.expected != c.proposal {
            assert_eq!(verdict.steps.len(), 1, "{name}: {verdict:?}");
            assert_eq!(verdict.steps[0].rule, "stabilization", "{name}");
        }
        let longest = c.up_window_s.max(c.down_window_s) * SECOND;
        for kept in state.recommendations() {
            assert!(
                kept.time_ms == NOW || NOW - kept.time_ms < longest,
                "{name}: kept {kept:?}"
            );
        }
        assert_eq!(
            state.recommendations().last(),
            Some(&Recommendation {
                time_ms: NOW,
                replicas: c.proposal
            }),
            "{name}"
        );
    }
}

#[test]
fn normalize_desired_replicas_upstream_table() {
    // Upstream's TestNormalizeDesiredReplicas covers the pre-behaviour
    // algorithm: the highest recommendation of the last 5 minutes. That is
    // behaviour with a 5m scale-down window when scaling down (current 10).
    let cases: Vec<(&str, Vec<Recommendation>, u32, u32)> = vec![
        ("empty log", vec![], 5, 5),
        ("stabilize", vec![rec(4, 2 * MINUTE), rec(5, MINUTE)], 3, 5),
        (
            "no stabilize",
            vec![rec(1, 2 * MINUTE), rec(2, MINUTE)],
            3,
            3,
        ),
        (
            "no stabilize - old recommendations",
            vec![rec(10, 10 * MINUTE), rec(9, 9 * MINUTE)],
            3,
            3,
        ),
        (
            "stabilize - old recommendations",
            vec![
                rec(10, 10 * MINUTE),
                rec(4, MINUTE),
                rec(5, 2 * MINUTE),
                rec(9, 9 * MINUTE),
            ],
            3,
            5,
        ),
    ];
    for (name, history, proposal, expected) in cases {
        let got = hpa::stabilize(&history, NOW, proposal, 10, 0, 5 * MINUTE);
        assert_eq!(got.value, expected, "{name}");
    }
}

#[test]
fn store_scale_events_upstream_table() {
    // Upstream's TestStoreScaleEvents asks how many replicas changed in the
    // last 60 s; events at exactly the period's edge or beyond do not count.
    let ev = |change: u32, ago_s: i64| ScaleEvent {
        timestamp_ms: NOW - ago_s * SECOND,
        from: 10,
        to: 10 + change,
    };
    let cases: Vec<(&str, Vec<ScaleEvent>, i64)> = vec![
        ("empty entries with default behavior", vec![], 0),
        (
            "one outdated entry to be replaced with behavior",
            vec![ev(7, 61)],
            0,
        ),
        (
            "one actual entry to be not touched with behavior",
            vec![ev(7, 58)],
            7,
        ),
        (
            "two entries, one of them to be replaced",
            vec![ev(7, 61), ev(6, 59)],
            6,
        ),
        (
            "replace one entry, use policies with different periods",
            vec![ev(8, 29), ev(6, 59), ev(7, 61), ev(9, 61)],
            14,
        ),
        ("two entries, both actual", vec![ev(7, 58), ev(6, 59)], 13),
        (
            "an event exactly one period old is outside it",
            vec![ev(5, 60)],
            0,
        ),
    ];
    for (name, events, expected) in cases {
        let (added, removed) = hpa::changes_within(&events, NOW, 60 * SECOND);
        assert_eq!((added, removed), (expected, 0), "{name}");
        // The same events the other way round count as removed.
        let flipped: Vec<ScaleEvent> = events
            .iter()
            .map(|e| ScaleEvent {
                from: e.to,
                to: e.from,
                ..*e
            })
            .collect();
        assert_eq!(
            hpa::changes_within(&flipped, NOW, 60 * SECOND),
            (0, expected),
            "{name}"
        );
    }
}

/// A clock step ahead (a suspend, NTP setting the clock) moves the history
/// with it, as HPA's monotonic timestamps would not see the step: the 20
/// recommended a minute before a 10-minute step still holds the default
/// 5-minute scale-down window, and a scale-up made just before it still
/// counts in its 15 s period. Unmoved, the step emptied both.
#[test]
fn a_clock_step_ahead_does_not_empty_the_history() {
    let default = Behavior::default();
    let step = 10 * MINUTE;
    let history = || {
        let mut state = EnvelopeState::new();
        apply(
            &mut state,
            &input_at(-MINUTE, 20, 2, 100, Some(20), &default),
        );
        state.record_scale(NOW - 5 * SECOND, 16, 20);
        state
    };
    let mut moved = history();
    moved.clock_jumped(step);
    let down = apply(&mut moved, &input_at(step, 20, 2, 100, Some(3), &default));
    assert_eq!(down.desired, 20, "{:?}", down.steps);
    let mut moved = history();
    moved.clock_jumped(step);
    let up = apply(&mut moved, &input_at(step, 20, 2, 100, Some(100), &default));
    // 100 % of the 16 the period started from, or 4 pods: 32.
    assert_eq!(up.desired, 32, "{:?}", up.steps);

    let mut unmoved = history();
    let down = apply(&mut unmoved, &input_at(step, 20, 2, 100, Some(3), &default));
    assert_eq!(
        down.desired, 3,
        "the step emptied the window: {:?}",
        down.steps
    );
}

#[test]
fn scale_events_older_than_every_use_are_pruned() {
    let behavior = behavior(
        Some(ScalingRules {
            cooldown: secs(2 * 3600),
            ..ScalingRules::default_up()
        }),
        None,
    );
    let mut state = EnvelopeState::new();
    state.record_scale(NOW - 3 * 3600 * SECOND, 1, 2); // beyond everything
    state.record_scale(NOW - 90 * MINUTE, 2, 3); // kept for the 2h cooldown
    state.record_scale(NOW - 30 * MINUTE, 3, 4); // the policies' last hour
    state.record_scale(NOW - 30 * MINUTE, 4, 4); // not a change: ignored
    apply(&mut state, &input(4, 1, 10, None, &behavior));
    let kept: Vec<u32> = state.events().iter().map(|e| e.to).collect();
    assert_eq!(kept, vec![3, 4]);
    assert_eq!(state.events_since(NOW - 3600 * SECOND).count(), 1);

    // Without the long cooldown only the last hour stays.
    let default = Behavior::default();
    apply(&mut state, &input(4, 1, 10, None, &default));
    let kept: Vec<u32> = state.events().iter().map(|e| e.to).collect();
    assert_eq!(kept, vec![4]);
}

#[test]
fn scale_up_one_metric_empty_upstream() {
    // Upstream's TestScaleUpOneMetricEmpty: one metric fails, the others
    // ask for more replicas: scale up anyway.
    let behavior = Behavior::default();
    let failures = [failure("qps", "source_error", "something went wrong")];
    let mut state = EnvelopeState::new();
    let verdict = apply(
        &mut state,
        &Input {
            failed_metrics: &failures,
            ..input(3, 2, 6, Some(4), &behavior)
        },
    );
    assert_eq!(verdict.desired, 4);
    assert!(verdict.steps.is_empty(), "{verdict:?}");
    assert_eq!(verdict.recommendation, Some(4));
}

#[test]
fn no_scale_down_one_metric_invalid_upstream() {
    // Upstream's TestNoScaleDownOneMetricInvalid / TestNoScaleDownOneMetricEmpty:
    // one metric is unusable, the others would scale down: hold.
    let behavior = Behavior::default();
    let failures = [failure(
        "cheddar",
        "invalid",
        "unknown metric type CheddarCheese",
    )];
    let mut state = EnvelopeState::new();
    let verdict = apply(
        &mut state,
        &Input {
            failed_metrics: &failures,
            ..input(5, 2, 6, Some(3), &behavior)
        },
    );
    assert_eq!(verdict.desired, 5);
    assert_eq!(
        verdict.steps,
        vec![step(
            Rule::MissingMetrics,
            3,
            5,
            "scale-in blocked: metric cheddar unavailable (unknown metric type CheddarCheese)"
        )]
    );
    // The blocked scale-in is not remembered (upstream returns before it
    // computes a recommendation): the window holds only the first tick's
    // seed, so a metric that comes back does not wait out a window for it.
    assert_eq!(verdict.recommendation, None);
    assert_eq!(state.recommendations().len(), 1, "{state:?}");
}

#[test]
fn missing_metrics_reason_names_every_metric() {
    let behavior = Behavior::default();
    let long = "x".repeat(400);
    let failures = [
        failure("cpu", "timeout", "timeout after 5000 ms"),
        failure("queue", "stale", ""),
        failure("latency", "source_error", &long),
    ];
    let mut state = EnvelopeState::new();
    let verdict = apply(
        &mut state,
        &Input {
            failed_metrics: &failures,
            ..input(8, 1, 10, Some(2), &behavior)
        },
    );
    assert_eq!(verdict.desired, 8);
    let reason = &verdict.steps[0].reason;
    assert!(
        reason.starts_with(
            "scale-in blocked: metrics unavailable: cpu (timeout after 5000 ms), queue (stale), latency (xxx"
        ),
        "{reason}"
    );
    assert!(reason.ends_with("…)"), "{reason}");
    assert!(reason.len() < 300, "{reason}");
}

#[test]
fn paused_holds_and_says_so() {
    let behavior = Behavior::default();
    let mut state = EnvelopeState::new();
    let verdict = apply(
        &mut state,
        &Input {
            paused: true,
            ..input(5, 1, 10, Some(8), &behavior)
        },
    );
    assert_eq!(verdict.desired, 5);
    assert_eq!(
        verdict.steps,
        vec![step(Rule::Paused, 8, 5, "scaler is paused")]
    );
    // The recommendation still counts for the windows after resume.
    assert_eq!(verdict.recommendation, Some(8));

    // A paused scaler whose policies hold has nothing to explain.
    let verdict = apply(
        &mut state,
        &Input {
            paused: true,
            ..input(5, 1, 10, None, &behavior)
        },
    );
    assert_eq!(verdict.desired, 5);
    assert!(verdict.steps.is_empty());
}

#[test]
fn in_flight_change_holds_and_names_it() {
    let behavior = Behavior::default();
    let change = InFlight {
        desired: 4,
        since_ms: NOW - 30 * SECOND,
        detail: "draining i-0abc".to_string(),
    };
    let mut state = EnvelopeState::new();
    let verdict = apply(
        &mut state,
        &Input {
            in_flight: Some(&change),
            ..input(5, 1, 10, Some(2), &behavior)
        },
    );
    assert_eq!(verdict.desired, 5);
    assert_eq!(
        verdict.steps,
        vec![step(
            Rule::InFlight,
            2,
            5,
            "change to 4 in progress: draining i-0abc"
        )]
    );
}

#[test]
fn cooldown_blocks_each_direction_for_its_own_time() {
    let behavior = behavior(
        Some(ScalingRules {
            cooldown: secs(60),
            ..ScalingRules::default_up()
        }),
        Some(ScalingRules {
            stabilization_window: Some(Duration::ZERO),
            cooldown: secs(300),
            ..ScalingRules::default_down()
        }),
    );
    let cases: Vec<(&str, i64, u32, u32, Option<&str>)> = vec![
        // (name, last event age, current, proposal, cooldown reason)
        (
            "scale-up 40s after an event",
            40 * SECOND + 400,
            5,
            7,
            Some("cooldown: last scale event 40s ago, scale_up.cooldown is 1m"),
        ),
        (
            "scale-up once the cooldown has passed",
            60 * SECOND,
            5,
            7,
            None,
        ),
        (
            "scale-down 40s after an event",
            40 * SECOND,
            5,
            3,
            Some("cooldown: last scale event 40s ago, scale_down.cooldown is 5m"),
        ),
        (
            "scale-down 4m59s after an event",
            299 * SECOND,
            5,
            3,
            Some("cooldown: last scale event 4m 59s ago, scale_down.cooldown is 5m"),
        ),
        (
            "scale-down once the cooldown has passed",
            300 * SECOND,
            5,
            3,
            None,
        ),
    ];
    for (name, age, current, proposal, reason) in cases {
        let mut state = EnvelopeState::new();
        state.record_scale(NOW - 2 * 3600 * SECOND + 1, 4, 2); // older, not the last
        state.record_scale(NOW - age, 4, current);
        let verdict = apply(
            &mut state,
            &input(current, 1, 10, Some(proposal), &behavior),
        );
        match reason {
            Some(reason) => {
                assert_eq!(verdict.desired, current, "{name}");
                assert_eq!(
                    verdict.steps,
                    vec![step(Rule::Cooldown, proposal, current, reason)],
                    "{name}"
                );
            }
            None => {
                assert_eq!(verdict.desired, proposal, "{name}: {verdict:?}");
                assert!(verdict.steps.is_empty(), "{name}: {verdict:?}");
            }
        }
    }
}

#[test]
fn cooldown_in_one_direction_leaves_the_other_free() {
    // Only scale-down has a cooldown: a scale-up right after an event goes ahead.
    let behavior = behavior(
        None,
        Some(ScalingRules {
            cooldown: secs(300),
            ..ScalingRules::default_down()
        }),
    );
    let mut state = EnvelopeState::new();
    state.record_scale(NOW - SECOND, 4, 5);
    let verdict = apply(&mut state, &input(5, 1, 10, Some(7), &behavior));
    assert_eq!(verdict.desired, 7);
    assert!(verdict.steps.is_empty());
}

#[test]
fn reasons_read_as_operators_expect() {
    // Rate limit, from the count at the period's start.
    let down = behavior(None, Some(rules(20, 60, 0, 0, 0)));
    let mut state = EnvelopeState::new();
    let verdict = apply(&mut state, &input(100, 1, 200, Some(10), &down));
    assert_eq!(
        verdict.steps,
        vec![step(
            Rule::RateLimit,
            10,
            80,
            "scale-down limited to 20 pods per 1m (period start 100)"
        )]
    );

    // After scaling down 15 in the period, the start is 115: 95 allowed.
    let mut state = EnvelopeState::restore([], uniform_events(&[15], 60, Direction::Down));
    let verdict = apply(&mut state, &input(100, 1, 200, Some(10), &down));
    assert_eq!(verdict.desired, 95);
    assert_eq!(
        verdict.steps[0].reason,
        "scale-down limited to 20 pods per 1m (period start 115, current 100)"
    );

    // Scale-up stabilisation over a 3m window.
    let up = behavior(Some(rules(100, 60, 0, 0, 180)), None);
    let mut state = EnvelopeState::restore([(NOW - 2 * MINUTE, 5), (NOW - MINUTE, 9)], []);
    let verdict = apply(&mut state, &input(3, 1, 10, Some(12), &up));
    assert_eq!(
        verdict.steps,
        vec![step(
            Rule::Stabilization,
            12,
            5,
            "scale-up stabilised: lowest recommendation in the last 3m is 5"
        )]
    );

    // Scale-down stabilisation with HPA's default 5m window.
    let default = Behavior::default();
    let mut state = EnvelopeState::restore([(NOW - 4 * MINUTE, 7)], []);
    let verdict = apply(&mut state, &input(9, 1, 10, Some(2), &default));
    assert_eq!(
        verdict.steps,
        vec![step(
            Rule::Stabilization,
            2,
            7,
            "scale-down stabilised: highest recommendation in the last 5m is 7"
        )]
    );

    // Bounds.
    let mut state = EnvelopeState::new();
    let verdict = apply(&mut state, &input(8, 1, 10, Some(12), &default));
    assert_eq!(
        verdict.steps,
        vec![step(Rule::Bounds, 12, 10, "clamped to max 10")]
    );
    let verdict = apply(
        &mut state,
        &input(
            3,
            2,
            10,
            Some(0),
            &behavior(None, Some(rules(0, 0, 0, 0, 0))),
        ),
    );
    assert_eq!(
        verdict.steps,
        vec![step(Rule::Bounds, 0, 2, "clamped to min 2")]
    );

    // A percent limit names itself; one pod is singular.
    let one = behavior(Some(rules(1, 30, 0, 0, 0)), None);
    let verdict = apply(&mut EnvelopeState::new(), &input(3, 1, 10, Some(9), &one));
    assert_eq!(
        verdict.steps[0].reason,
        "scale-up limited to 1 pod per 30s (period start 3)"
    );
    let verdict = apply(
        &mut EnvelopeState::new(),
        &input(10, 1, 100, Some(90), &default),
    );
    assert_eq!(
        verdict.steps[0].reason,
        "scale-up limited to 100% per 15s (period start 10)"
    );
}

#[test]
fn select_disabled_forbids_that_direction_only() {
    let no_down = behavior(
        None,
        Some(ScalingRules {
            select: Select::Disabled,
            ..ScalingRules::default_down()
        }),
    );
    let mut state = EnvelopeState::new().begun();
    let verdict = apply(&mut state, &input(6, 1, 10, Some(2), &no_down));
    assert_eq!(
        verdict.steps,
        vec![step(
            Rule::RateLimit,
            2,
            6,
            "scale-down disabled (scale_down.select is disabled)"
        )]
    );
    let verdict = apply(&mut state, &input(6, 1, 10, Some(8), &no_down));
    assert_eq!(verdict.desired, 8);

    let no_up = behavior(
        Some(ScalingRules {
            select: Select::Disabled,
            ..ScalingRules::default_up()
        }),
        None,
    );
    let verdict = apply(&mut EnvelopeState::new(), &input(6, 1, 10, Some(9), &no_up));
    assert_eq!(verdict.desired, 6);
    assert_eq!(
        verdict.steps[0].reason,
        "scale-up disabled (scale_up.select is disabled)"
    );
    // Bounds still apply when a direction is disabled: a target above max comes down.
    let verdict = apply(
        &mut EnvelopeState::new(),
        &input(12, 1, 10, Some(12), &no_down),
    );
    assert_eq!(verdict.desired, 10);
}

#[test]
fn current_outside_bounds_returns_at_once() {
    // As upstream: straight to the bound, whatever the rate limits, windows,
    // missing metrics or cooldown say.
    let slow = behavior(
        Some(ScalingRules {
            cooldown: secs(600),
            ..rules(1, 600, 0, 0, 600)
        }),
        Some(ScalingRules {
            cooldown: secs(600),
            ..rules(1, 600, 0, 0, 600)
        }),
    );
    let mut state = EnvelopeState::restore([(NOW - MINUTE, 50)], []);
    state.record_scale(NOW - SECOND, 40, 50);
    let failures = [failure("cpu", "timeout", "timeout")];
    let verdict = apply(
        &mut state,
        &Input {
            failed_metrics: &failures,
            ..input(50, 1, 10, Some(3), &slow)
        },
    );
    assert_eq!(verdict.desired, 10);
    assert_eq!(
        verdict.steps,
        vec![step(Rule::Bounds, 3, 10, "current 50 is above max 10")]
    );

    let verdict = apply(&mut EnvelopeState::new(), &input(1, 2, 10, None, &slow));
    assert_eq!(
        verdict.steps,
        vec![step(Rule::Bounds, 1, 2, "current 1 is below min 2")]
    );
}

#[test]
fn small_counts_and_zero() {
    let default = Behavior::default();
    let percent_only = |percent| {
        let rules = ScalingRules {
            limits: Some(vec![RateLimit::percent(percent, secs(60))].into()),
            ..rules(0, 0, 0, 0, 0)
        };
        behavior(Some(rules.clone()), Some(rules))
    };
    // (name, behaviour, current, min, proposal, expected)
    let cases: Vec<(&str, Behavior, u32, u32, u32, u32)> = vec![
        (
            "from zero the 4-pod default applies",
            default.clone(),
            0,
            0,
            10,
            4,
        ),
        ("from zero to a little", default.clone(), 0, 0, 3, 3),
        (
            "down to zero when min is 0",
            behavior(None, Some(rules(0, 0, 100, 15, 0))),
            3,
            0,
            0,
            0,
        ),
        (
            "percent cannot grow from zero (as upstream)",
            percent_only(100),
            0,
            0,
            5,
            0,
        ),
        (
            "10% of 1 rounds up to one more",
            percent_only(10),
            1,
            0,
            5,
            2,
        ),
        ("50% of 3 down truncates to 1", percent_only(50), 3, 0, 0, 1),
        // Upstream's float64 computes 10 × (1 − 0.8) = 1.999… and keeps 1;
        // 80% of 10 is 8, so 2 must stay.
        ("80% of 10 down leaves 2", percent_only(80), 10, 0, 0, 2),
        // Upstream's float64 computes 25 × 1.12 = 28.000000000000004 → 29.
        (
            "12% of 25 up is exactly 28",
            percent_only(12),
            25,
            0,
            100,
            28,
        ),
        ("0% allows nothing", percent_only(0), 5, 0, 9, 5),
    ];
    for (name, behavior, current, min, proposal, expected) in cases {
        let verdict = apply(
            &mut EnvelopeState::new(),
            &input(current, min, 100, Some(proposal), &behavior),
        );
        assert_eq!(verdict.desired, expected, "{name}: {verdict:?}");
    }
}

#[test]
fn empty_limit_list_means_no_rate_limit() {
    let unlimited = behavior(
        Some(ScalingRules {
            limits: Some(vec![].into()),
            ..ScalingRules::default_up()
        }),
        None,
    );
    let verdict = apply(
        &mut EnvelopeState::new(),
        &input(1, 1, 1000, Some(900), &unlimited),
    );
    assert_eq!(verdict.desired, 900);
    // While leaving limits out of config means HPA's defaults.
    let defaults = behavior(
        Some(ScalingRules {
            limits: None,
            stabilization_window: None,
            ..ScalingRules::default_up()
        }),
        None,
    );
    let verdict = apply(
        &mut EnvelopeState::new(),
        &input(1, 1, 1000, Some(900), &defaults),
    );
    assert_eq!(verdict.desired, 5);
}

#[test]
fn period_boundaries_are_exclusive() {
    let up = behavior(Some(rules(2, 60, 0, 0, 0)), None);
    // An event exactly one period ago no longer counts...
    let mut state = EnvelopeState::new();
    state.record_scale(NOW - 60 * SECOND, 3, 5);
    let verdict = apply(&mut state, &input(5, 1, 100, Some(20), &up));
    assert_eq!(verdict.desired, 7);
    // ...one millisecond younger, it does.
    let mut state = EnvelopeState::new();
    state.record_scale(NOW - 60 * SECOND + 1, 3, 5);
    let verdict = apply(&mut state, &input(5, 1, 100, Some(20), &up));
    assert_eq!(verdict.desired, 5);

    // Same for a stabilisation window.
    let windowed = behavior(Some(rules(100, 60, 0, 0, 60)), None);
    let mut state = EnvelopeState::restore([(NOW - 60 * SECOND, 2)], []);
    assert_eq!(
        apply(&mut state, &input(2, 1, 100, Some(9), &windowed)).desired,
        9
    );
    let mut state = EnvelopeState::restore([(NOW - 60 * SECOND + 1, 2)], []);
    assert_eq!(
        apply(&mut state, &input(2, 1, 100, Some(9), &windowed)).desired,
        2
    );
}

#[test]
fn clock_going_backwards_is_cautious_and_never_panics() {
    let behavior = behavior(
        Some(ScalingRules {
            cooldown: secs(60),
            ..rules(0, 0, 0, 0, 0)
        }),
        None,
    );
    // History from "the future": the clock went back an hour.
    let mut state = EnvelopeState::restore([(NOW + 3600 * SECOND, 3)], []);
    state.record_scale(NOW + 3600 * SECOND, 1, 3);
    let verdict = apply(&mut state, &input(3, 1, 100, Some(9), &behavior));
    // The future event counts as just now: cooldown holds.
    assert_eq!(verdict.desired, 3);
    assert_eq!(verdict.steps.last().unwrap().rule, "cooldown");
    assert!(verdict.steps.last().unwrap().reason.contains("0s ago"));
    // Nothing was forgotten, but they are dated now: a cooldown later the
    // scaler scales again, not an hour later when the clock catches up.
    assert_eq!(state.events().len(), 1);
    assert_eq!(state.recommendations().len(), 2);
    let later = apply(
        &mut state,
        &Input {
            now_ms: NOW + 61 * SECOND,
            ..input(3, 1, 100, Some(9), &behavior)
        },
    );
    assert_eq!(later.desired, 9, "{later:?}");

    // Extreme times and counts.
    let default = Behavior::default();
    for now_ms in [i64::MIN, -1, 0, i64::MAX] {
        let mut state = EnvelopeState::restore([(i64::MAX, u32::MAX), (i64::MIN, 0)], []);
        state.record_scale(i64::MIN, u32::MAX, 0);
        state.record_scale(i64::MAX, 0, u32::MAX);
        for (current, proposal) in [(0, u32::MAX), (u32::MAX, 0), (u32::MAX, u32::MAX), (7, 3)] {
            let verdict = apply(
                &mut state,
                &Input {
                    now_ms,
                    ..input(current, 0, u32::MAX, Some(proposal), &default)
                },
            );
            // Whatever the history, the answer lies between where the
            // target is and where the policies want it.
            assert!(
                (current.min(proposal)..=current.max(proposal)).contains(&verdict.desired),
                "{verdict:?}"
            );
        }
    }
}

#[test]
fn extreme_configs_never_panic() {
    let huge = ScalingRules {
        stabilization_window: Some(Duration::MAX),
        select: Select::Max,
        limits: Some(
            vec![
                RateLimit::pods(u32::MAX, Duration::MAX),
                RateLimit::percent(u32::MAX, Duration::MAX),
                RateLimit {
                    pods: None,
                    percent: None,
                    period: Duration::ZERO,
                },
            ]
            .into(),
        ),
        cooldown: Duration::MAX,
    };
    let behavior = behavior(Some(huge.clone()), Some(huge));
    let mut state = EnvelopeState::new();
    for i in 0..5 {
        state.record_scale(NOW - i, u32::MAX, 0);
        state.record_scale(NOW - i, 0, u32::MAX);
    }
    for (current, proposal, min, max) in [
        (5, u32::MAX, 0, u32::MAX),
        (u32::MAX, 0, 0, u32::MAX),
        (5, 9, 8, 3), // min > max: max wins
        (0, 0, 0, 0),
    ] {
        let verdict = apply(
            &mut state,
            &input(current, min, max, Some(proposal), &behavior),
        );
        assert!(verdict.desired <= max.max(min.min(max)), "{verdict:?}");
    }
    let verdict = apply(
        &mut EnvelopeState::new(),
        &input(5, 8, 3, Some(9), &Behavior::default()),
    );
    assert_eq!(verdict.desired, 3);
}

#[test]
fn history_stays_small() {
    let default = Behavior::default();
    let mut state = EnvelopeState::new();
    // A steady scaler: one entry however long it runs.
    for tick in 0..1000 {
        apply(
            &mut state,
            &Input {
                now_ms: NOW + tick * 15 * SECOND,
                ..input(4, 1, 10, Some(4), &default)
            },
        );
    }
    assert_eq!(state.recommendations().len(), 1);
    // A restless one: only the 5-minute window's worth (20 ticks of 15 s).
    for tick in 1000..2000 {
        apply(
            &mut state,
            &Input {
                now_ms: NOW + tick * 15 * SECOND,
                ..input(4, 1, 10, Some(3 + (tick % 2) as u32 * 2), &default)
            },
        );
    }
    assert_eq!(state.recommendations().len(), 20);
    // A stalled clock cannot grow it past the cap.
    for tick in 0..(MAX_HISTORY as u32 + 50) {
        apply(&mut state, &input(4, 1, 10, Some(tick % 7), &default));
    }
    assert_eq!(state.recommendations().len(), MAX_HISTORY);
}

/// A scripted minute of a scaler's life for the long runs below.
struct Tick {
    now_ms: i64,
    proposal: Option<u32>,
    failed: Vec<MetricFailure>,
    paused: bool,
    in_flight: Option<InFlight>,
}

/// What the control loop would journal for one tick.
struct Journaled {
    time_ms: i64,
    recommendation: Option<u32>,
}

/// The NASA July 1995 trace the repository carries for tests.
fn nasa_trace() -> Vec<u32> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/traces/nasa_jul95_per_minute.csv");
    let text = std::fs::read_to_string(&path).expect("read the NASA trace");
    text.lines()
        .skip(1)
        .map(|line| {
            let (_, requests) = line.split_once(',').expect("timestamp_s,requests");
            requests.trim().parse().expect("a request count")
        })
        .collect()
}

/// Two days of NASA web traffic, one tick a minute, with metric failures,
/// pauses and in-flight changes sprinkled in: every verdict obeys the rules
/// (checked by independent arithmetic over the full event log), and a state
/// restored from the journal, or round-tripped through JSON, gives the same
/// verdict as the state that lived through it.
#[test]
fn nasa_trace_run_obeys_every_rule_and_restores_exactly() {
    let trace = nasa_trace();
    let behavior = Behavior {
        scale_up: ScalingRules {
            stabilization_window: Some(secs(120)),
            select: Select::Max,
            limits: Some(
                vec![
                    RateLimit::pods(3, secs(120)),
                    RateLimit::percent(20, secs(300)),
                ]
                .into(),
            ),
            cooldown: Duration::ZERO,
        },
        scale_down: ScalingRules {
            stabilization_window: Some(secs(300)),
            select: Select::Min,
            limits: Some(
                vec![
                    RateLimit::pods(2, secs(120)),
                    RateLimit::percent(20, secs(60)),
                ]
                .into(),
            ),
            cooldown: secs(180),
        },
    };
    let (min, max) = (2, 40);
    let ticks: Vec<Tick> = trace
        .iter()
        .take(2 * 24 * 60)
        .enumerate()
        .map(|(i, &requests)| Tick {
            // An irregular interval, as a loaded host would tick.
            now_ms: NOW + i as i64 * MINUTE + (i as i64 % 7) * 900,
            // Target tracking at 2 requests per replica-minute.
            proposal: (i % 11 != 0).then(|| requests.div_ceil(2)),
            failed: if i % 37 == 0 {
                vec![failure("latency", "stale", "newest sample 5m old")]
            } else {
                vec![]
            },
            paused: (600..640).contains(&i),
            in_flight: (i % 101 == 0).then(|| InFlight {
                desired: 3,
                since_ms: NOW,
                detail: "draining worker-7".to_string(),
            }),
        })
        .collect();

    let mut state = EnvelopeState::new();
    let mut current = 2u32;
    let mut journal: Vec<Journaled> = Vec::new();
    let mut all_events: Vec<ScaleEvent> = Vec::new();
    let mut rules_seen = std::collections::BTreeSet::new();
    let (mut ups, mut downs) = (0, 0);

    for (i, tick) in ticks.iter().enumerate() {
        let input = Input {
            now_ms: tick.now_ms,
            current,
            min,
            max,
            proposal: tick.proposal,
            failed_metrics: &tick.failed,
            policy_failed: false,
            no_votes: false,
            paused: tick.paused,
            in_flight: tick.in_flight.as_ref(),
            behavior: &behavior,
        };

        // What a restart right now would rebuild, from the journal and from a snapshot.
        let mut restored = EnvelopeState::restore(
            journal
                .iter()
                .filter_map(|j| Some((j.time_ms, j.recommendation?))),
            all_events.iter().copied(),
        );
        let mut thawed: EnvelopeState =
            serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();

        let verdict = apply(&mut state, &input);
        assert_eq!(apply(&mut restored, &input), verdict, "tick {i}: restored");
        assert_eq!(apply(&mut thawed, &input), verdict, "tick {i}: thawed");

        let desired = verdict.desired;
        for s in &verdict.steps {
            rules_seen.insert(s.rule.clone());
            assert_ne!(s.from, s.to, "tick {i}: {s:?}");
        }
        if let Some(first) = verdict.steps.first() {
            assert_eq!(first.from, tick.proposal.unwrap_or(current), "tick {i}");
        }
        if let Some(last) = verdict.steps.last() {
            assert_eq!(last.to, desired, "tick {i}");
        }

        // Every rule, checked independently.
        assert!((min..=max).contains(&desired), "tick {i}: {verdict:?}");
        let proposed = tick.proposal.unwrap_or(current);
        assert!(
            (current.min(proposed)..=current.max(proposed)).contains(&desired),
            "tick {i}: {verdict:?} is not between {current} and {proposed}"
        );
        if tick.paused || tick.in_flight.is_some() {
            assert_eq!(desired, current, "tick {i}: {verdict:?}");
        }
        if !tick.failed.is_empty() {
            assert!(desired >= current, "tick {i}: scaled in on missing data");
        }
        let since_last = all_events
            .last()
            .map(|e| tick.now_ms - e.timestamp_ms)
            .unwrap_or(i64::MAX);
        let in_window = |window_ms: i64| {
            journal
                .iter()
                .filter(move |j| tick.now_ms - j.time_ms < window_ms)
                .filter_map(|j| j.recommendation)
                .chain(verdict.recommendation)
        };
        let period_start = |period_ms: i64| {
            let mut start = i64::from(current);
            for e in all_events
                .iter()
                .filter(|e| tick.now_ms - e.timestamp_ms < period_ms)
            {
                start -= i64::from(e.to) - i64::from(e.from);
            }
            start
        };
        if desired > current {
            ups += 1;
            let lowest = in_window(120 * SECOND).min().unwrap();
            assert!(
                desired <= lowest,
                "tick {i}: above the up window's lowest {lowest}"
            );
            // select max: the more generous of the two limits.
            let by_pods = period_start(120 * SECOND) + 3;
            let start = period_start(300 * SECOND);
            let by_percent = (start * 120 + 99).div_euclid(100);
            assert!(
                i64::from(desired) <= by_pods.max(by_percent),
                "tick {i}: too fast up"
            );
        }
        if desired < current {
            downs += 1;
            assert!(
                since_last >= 180 * SECOND,
                "tick {i}: scale-down in cooldown"
            );
            let highest = in_window(300 * SECOND).max().unwrap();
            assert!(
                desired >= highest,
                "tick {i}: below the down window's highest {highest}"
            );
            // select min: the stingier of the two limits.
            let by_pods = period_start(120 * SECOND) - 2;
            let by_percent = period_start(60 * SECOND) * 80 / 100;
            assert!(
                i64::from(desired) >= by_pods.max(by_percent),
                "tick {i}: too fast down"
            );
        }

        journal.push(Journaled {
            time_ms: tick.now_ms,
            recommendation: verdict.recommendation,
        });
        if desired != current {
            state.record_scale(tick.now_ms, current, desired);
            all_events.push(ScaleEvent {
                timestamp_ms: tick.now_ms,
                from: current,
                to: desired,
            });
            current = desired;
        }
    }

    // The run exercised what it claims to check.
    assert!(ups > 20 && downs > 20, "ups {ups}, downs {downs}");
    let expected: std::collections::BTreeSet<String> = [
        "paused",
        "in-flight",
        "missing-metrics",
        "stabilization",
        "rate-limit",
        "bounds",
        "cooldown",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(rules_seen, expected);
}

#[test]
fn a_new_scaler_does_not_scale_down_within_its_first_window() {
    // Upstream HPA seeds a new autoscaler's history with the current count
    // (recordInitialRecommendation): with the default 5-minute scale-down
    // window, a new scaler at 10 asked for 2 holds for 5 minutes.
    let default = Behavior::default();
    let mut state = EnvelopeState::new();
    let first = apply(&mut state, &input_at(0, 10, 1, 20, Some(2), &default));
    assert_eq!(first.desired, 10, "{first:?}");
    assert_eq!(
        first.steps[0].reason,
        "scale-down stabilised: highest recommendation in the last 5m is 10"
    );
    let later = apply(&mut state, &input_at(299_000, 10, 1, 20, Some(2), &default));
    assert_eq!(later.desired, 10);
    let after = apply(&mut state, &input_at(301_000, 10, 1, 20, Some(2), &default));
    assert_eq!(after.desired, 2, "{after:?}");
    // Scale-up is not held back (no scale-up window by default).
    let mut fresh = EnvelopeState::new();
    assert_eq!(
        apply(&mut fresh, &input_at(0, 10, 1, 40, Some(14), &default)).desired,
        14
    );
    // A history restored from the journal, still within the window, is
    // kept as it is: nothing is seeded, and its 2 lets the scaler go to 2.
    let mut restored = EnvelopeState::restore([(NOW, 2)], []);
    assert_eq!(
        apply(
            &mut restored,
            &input_at(100_000, 10, 1, 20, Some(2), &default)
        )
        .desired,
        2
    );
}

#[test]
fn a_restart_after_a_longer_outage_than_the_window_seeds_the_history_again() {
    // Ticks journaled at 10 for a minute; the daemon is back 11 minutes
    // later (past the 5-minute scale-down window) with 10 replicas and a
    // policy that wants 2. HPA's controller, starting, would seed 10 and
    // hold for the window; so does the restored state, whose history has
    // aged out.
    let default = Behavior::default();
    let journaled: Vec<(i64, u32)> = (0..=4).map(|i| (NOW + i * 15_000, 10)).collect();
    let mut state = EnvelopeState::restore(journaled, []);
    let back = 11 * 60_000;
    let first = apply(&mut state, &input_at(back, 10, 1, 20, Some(2), &default));
    assert_eq!(first.desired, 10, "{first:?}");
    assert_eq!(
        first.steps[0].reason,
        "scale-down stabilised: highest recommendation in the last 5m is 10"
    );
    let held = apply(
        &mut state,
        &input_at(back + 299_000, 10, 1, 20, Some(2), &default),
    );
    assert_eq!(held.desired, 10, "{held:?}");
    let after = apply(
        &mut state,
        &input_at(back + 301_000, 10, 1, 20, Some(2), &default),
    );
    assert_eq!(after.desired, 2, "{after:?}");
}

#[test]
fn a_target_scaled_to_zero_is_left_there_as_hpa_does() {
    // `kubectl scale --replicas=0` with min 1: autoscaling is off for the
    // target, whatever the policies want, until something scales it up.
    let default = Behavior::default();
    let mut state = EnvelopeState::new();
    let verdict = apply(&mut state, &input_at(0, 0, 1, 20, Some(5), &default));
    assert_eq!(verdict.desired, 0, "{verdict:?}");
    assert_eq!(verdict.steps.len(), 1, "{verdict:?}");
    assert_eq!(verdict.steps[0].rule, Rule::ScaledToZero.as_str());
    assert_eq!(
        verdict.steps[0].reason,
        "the target is scaled to 0: autoscaling is off for it until it is scaled up (min 1 \
         applies from then on)"
    );
    // Scaled up again by hand: from then on min applies as before.
    let verdict = apply(&mut state, &input_at(15_000, 1, 2, 20, Some(1), &default));
    assert_eq!(verdict.desired, 2, "{verdict:?}");
    // With min 0, zero is an ordinary count: scale-out from it happens.
    let mut state = EnvelopeState::new();
    let verdict = apply(&mut state, &input_at(0, 0, 0, 20, Some(3), &default));
    assert_eq!(verdict.desired, 3, "{verdict:?}");
}

#[test]
fn a_new_leader_does_not_scale_down_within_its_first_window() {
    // A replica that takes the Lease has its own, stale history (from when
    // it last led): re-seeded, it holds a scale-down for a window as a new
    // scaler does, whatever the leader before it did lately.
    let default = Behavior::default();
    let mut state = EnvelopeState::restore([(0, 2)], []);
    state.reseed();
    let first = apply(&mut state, &input_at(400_000, 10, 1, 20, Some(2), &default));
    assert_eq!(first.desired, 10, "{first:?}");
    assert_eq!(
        first.steps[0].reason,
        "scale-down stabilised: highest recommendation in the last 5m is 10"
    );
    let after = apply(&mut state, &input_at(701_000, 10, 1, 20, Some(2), &default));
    assert_eq!(after.desired, 2, "{after:?}");
    // Once: later ticks of the same term are not seeded again.
    let again = apply(&mut state, &input_at(702_000, 5, 1, 20, Some(2), &default));
    assert_eq!(again.desired, 2, "{again:?}");
    // Scale-up is not held back.
    let mut up = EnvelopeState::restore([(0, 2)], []);
    up.reseed();
    assert_eq!(
        apply(&mut up, &input_at(400_000, 10, 1, 40, Some(14), &default)).desired,
        14
    );
}

#[test]
fn a_leader_taking_the_lease_back_measures_rate_limits_from_what_it_finds() {
    // This replica scaled 10 -> 14, another took the Lease and scaled
    // 14 -> 12, and this one takes it back at 12. "2 pods per 10m" down:
    // its own 10 -> 14 alone would say the period began at 8 (12 - 4) and
    // allow 12 -> 6; knowing nothing of what happened since it last led,
    // it measures from the 12 it finds, as a new HPA controller does.
    let limited = behavior(None, Some(rules(2, 600, 0, 0, 60)));
    let mut state = EnvelopeState::restore([(0, 14)], []);
    state.record_scale(NOW, 10, 14);
    let mut stale = state.clone();
    state.forget_and_reseed();
    assert!(state.events().is_empty());
    let seeded = apply(&mut state, &input_at(120_000, 12, 1, 20, Some(1), &limited));
    assert_eq!(seeded.desired, 12, "held for the window: {seeded:?}");
    let after = apply(&mut state, &input_at(195_000, 12, 1, 20, Some(1), &limited));
    assert_eq!(after.desired, 10, "{after:?}");
    // Re-seeded only, the stale event misstates the period's start.
    stale.reseed();
    apply(&mut stale, &input_at(120_000, 12, 1, 20, Some(1), &limited));
    let wrong = apply(&mut stale, &input_at(195_000, 12, 1, 20, Some(1), &limited));
    assert_eq!(wrong.desired, 6, "{wrong:?}");
}

#[test]
fn a_metric_that_drops_out_now_and_then_does_not_block_scale_in_for_good() {
    // 10 replicas, policies wanting 4 every 15 s, and one metric failing
    // every fourth minute. Were a blocked tick remembered as "stay at 10",
    // each would hold scale-in back for another 5-minute window: never
    // scaling in. As upstream keeps nothing for such a tick, scale-in
    // comes once the first tick's seed leaves the window. Whether another
    // policy still votes on the failing ticks (4), or every policy
    // abstained for want of the metric (no proposal, no vote).
    let default = Behavior::default();
    let failures = [failure("cpu", "timeout", "timeout")];
    for every_policy_abstained in [false, true] {
        let mut state = EnvelopeState::new();
        let mut current = 10;
        let mut first_scale_in = None;
        for i in 0..80_i64 {
            let now = i * 15_000;
            let dropped_out = i % 16 == 15;
            let abstained = dropped_out && every_policy_abstained;
            let proposal = if abstained { None } else { Some(4) };
            let verdict = apply(
                &mut state,
                &Input {
                    failed_metrics: if dropped_out { &failures } else { &[] },
                    no_votes: abstained,
                    ..input_at(now, current, 1, 20, proposal, &default)
                },
            );
            if dropped_out {
                assert_eq!(verdict.desired, current, "tick {i}: blocked");
                if abstained || current > 4 {
                    assert_eq!(verdict.recommendation, None, "tick {i}: none kept");
                }
            }
            if verdict.desired < current && first_scale_in.is_none() {
                first_scale_in = Some(now);
            }
            current = verdict.desired;
        }
        let case = if every_policy_abstained {
            "every policy abstained"
        } else {
            "another policy voted"
        };
        assert_eq!(
            first_scale_in,
            Some(300_000),
            "{case}: once the seed is 5m old"
        );
        assert_eq!(current, 4, "{case}");
    }
}

#[test]
fn a_failed_policy_holds_within_the_bounds_and_the_bounds_come_first() {
    let default = Behavior::default();
    // Within the bounds, other policies asking for more: one step, the
    // hold, and no recommendation of the incomplete answer.
    let failed = Input {
        policy_failed: true,
        ..input(6, 5, 10, Some(20), &default)
    };
    let verdict = apply(&mut EnvelopeState::new().begun(), &failed);
    assert_eq!(verdict.desired, 6);
    assert_eq!(verdict.recommendation, None);
    assert_eq!(
        verdict.steps,
        vec![step(
            Rule::PolicyFailed,
            20,
            6,
            "a policy failed this tick; holding"
        )]
    );
    // Below min (min raised by a reload) or above max (max lowered): the
    // bounds are the operator's and apply whatever the policies said, as
    // upstream HPA corrects them before it reads any metric.
    let below = Input {
        current: 1,
        ..failed
    };
    let verdict = apply(&mut EnvelopeState::new().begun(), &below);
    assert_eq!(verdict.desired, 5);
    assert_eq!(verdict.recommendation, None);
    assert_eq!(
        verdict.steps,
        vec![step(Rule::Bounds, 20, 5, "current 1 is below min 5")]
    );
    let above = Input {
        current: 20,
        proposal: None,
        ..failed
    };
    assert_eq!(apply(&mut EnvelopeState::new().begun(), &above).desired, 10);
    // Pause still comes first.
    let paused = Input {
        paused: true,
        ..below
    };
    let verdict = apply(&mut EnvelopeState::new().begun(), &paused);
    assert_eq!(verdict.steps[0].rule, "paused");
    assert_eq!(verdict.steps.len(), 1);
    assert_eq!(verdict.desired, 1);
}

/// A reload that makes the envelope remember further back rebuilds it from
/// the journal while the scaler runs on: it must not seed again as a
/// restart would (a scaler ticking every 5 minutes finds its newest
/// recommendation a scale-down window old at every tick), which would hold
/// scale-up for the 10-minute scale-up window at the current count.
#[test]
fn a_rebuild_while_running_does_not_seed_again() {
    let up = behavior(Some(rules(100, 60, 0, 0, 600)), None);
    let mut running = EnvelopeState::new();
    // Its first tick seeded 10 and held there against a 12.
    let first = apply(
        &mut running,
        &input_at(-300 * SECOND, 10, 1, 100, Some(12), &up),
    );
    assert_eq!(first.desired, 10);
    let rebuilt = || EnvelopeState::restore([(NOW - 300 * SECOND, 12)], []);
    let mut carried = rebuilt();
    carried.carry_seed_from(&running);
    assert_eq!(
        apply(&mut carried, &input(10, 1, 100, Some(14), &up)).desired,
        12,
        "the lowest recommendation of the window, 12"
    );
    assert_eq!(
        apply(&mut rebuilt(), &input(10, 1, 100, Some(14), &up)).desired,
        10,
        "a restart seeds 10 (the scale-down window is empty)"
    );
}
