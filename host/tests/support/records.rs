//! Realistic tick records for the journal's tests and benchmark: two
//! policies, each given three metrics with a five-minute window at 15 s
//! steps, opaque state, envelope steps on scale ticks. Deterministic: the
//! same arguments always build the same record.

#![allow(dead_code)]

use scalewise::config::Mode;
use scalewise::journal::{
    ActuationRecord, EnvelopeStep, Evaluation, EvaluationOutcome, MetricFailure, TickRecord,
};
use scalewise::policy::{Context, Decision, Metric, Point, ScaleEvent, Target};

/// splitmix64: tiny, and enough to vary values and bytes.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Points in a metric window.
pub const WINDOW_POINTS: usize = 20;
/// Seconds between points.
pub const STEP_MS: i64 = 15_000;

/// The record of tick `tick` of scaler `scaler` at `time_ms`; `load(t)` is
/// the request rate (per second) at time `t`.
pub fn tick_record(scaler: &str, tick: u64, time_ms: i64, load: &dyn Fn(i64) -> f64) -> TickRecord {
    let mut rng = Rng::new(tick.wrapping_mul(31).wrapping_add(fxhash(scaler)));
    let capacity = 40.0;
    let rate = load(time_ms);
    let current = ((rate / capacity).ceil() as u32).clamp(2, 50);
    let ready = current - u32::from(rng.unit() < 0.1);
    let target = Target {
        kind: "simulator".into(),
        name: format!("{scaler}-svc"),
        current,
        ready,
        min: 2,
        max: 50,
    };
    let window = |f: &mut dyn FnMut(i64, f64) -> f64| -> Vec<Point> {
        (0..WINDOW_POINTS as i64)
            .rev()
            .map(|back| {
                let at = time_ms - back * STEP_MS;
                Point {
                    timestamp_ms: at,
                    value: f(at, load(at)),
                }
            })
            .collect()
    };
    let mut noise = Rng::new(rng.next_u64());
    let metrics = vec![
        Metric {
            name: "requests_per_second".into(),
            points: window(&mut |_, rate| rate * (0.95 + 0.1 * noise.unit())),
            error: None,
        },
        Metric {
            name: "cpu_utilisation".into(),
            points: window(&mut |_, rate| (rate / (f64::from(ready.max(1)) * capacity)).min(1.0)),
            error: None,
        },
        Metric {
            name: "p95_latency_ms".into(),
            points: window(&mut |_, rate| {
                let utilisation = (rate / (f64::from(ready.max(1)) * capacity)).min(0.99);
                25.0 / (1.0 - utilisation) + 3.0 * noise.unit()
            }),
            error: None,
        },
    ];
    let utilisation = metrics[1].points.last().map_or(0.0, |p| p.value);
    let tracking_desired = ((f64::from(current) * utilisation / 0.6).ceil() as u32).max(1);
    let events = vec![
        ScaleEvent {
            timestamp_ms: time_ms - 3_600_000,
            from: current.saturating_sub(1).max(2),
            to: current,
        },
        ScaleEvent {
            timestamp_ms: time_ms - 900_000,
            from: current,
            to: current + 1,
        },
    ];
    let context = |parameters: serde_json::Value, state: Vec<u8>| Context {
        now_ms: time_ms,
        scaler: scaler.into(),
        target: target.clone(),
        metrics: metrics.clone(),
        events: events.clone(),
        parameters,
        state: Some(state),
    };
    let bytes = |rng: &mut Rng, n: usize| (0..n).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>();
    let tracking_state = bytes(&mut rng, 24);
    let threshold_state = bytes(&mut rng, 16);
    let threshold_fails = tick % 17 == 5;
    let evaluations = vec![
        Evaluation {
            module: "target-tracking".into(),
            digest: Some(format!("{:016x}{:016x}{:016x}{:016x}", rng.next_u64(), 1, 2, 3).into()),
            context: context(
                serde_json::json!({"metric": "cpu_utilisation", "target": 0.6, "tolerance": 0.1}),
                tracking_state,
            ),
            outcome: EvaluationOutcome::Decided {
                decision: Decision {
                    desired: Some(tracking_desired),
                    reason: format!(
                        "cpu_utilisation {utilisation:.3} against target 0.600 over {current} replicas asks for {tracking_desired}"
                    ),
                    state: Some(bytes(&mut rng, 24)),
                },
            },
            duration_us: 2 + rng.next_u64() % 5,
            load_error: None,
            limits: None,
            abstained: false,
        },
        Evaluation {
            module: "threshold".into(),
            digest: Some(format!("{:016x}{:016x}{:016x}{:016x}", rng.next_u64(), 4, 5, 6).into()),
            context: context(
                serde_json::json!({"metric": "p95_latency_ms", "up": 250.0, "down": 80.0, "for": "5m", "step": 1}),
                threshold_state,
            ),
            outcome: if threshold_fails {
                EvaluationOutcome::Failed {
                    kind: "trap".into(),
                    error: "wasm trap: integer divide by zero".into(),
                }
            } else {
                EvaluationOutcome::Decided {
                    decision: Decision {
                        desired: None,
                        reason: "p95_latency_ms between thresholds; holding".into(),
                        state: Some(bytes(&mut rng, 16)),
                    },
                }
            },
            duration_us: 2 + rng.next_u64() % 5,
            load_error: None,
            limits: None,
            abstained: false,
        },
    ];
    let desired = tracking_desired.clamp(2, 50);
    let envelope = if desired != tracking_desired {
        vec![EnvelopeStep {
            rule: "bounds".into(),
            from: tracking_desired,
            to: desired,
            reason: "clamped to the scaler's bounds 2..=50".into(),
        }]
    } else {
        vec![]
    };
    let metric_errors = if tick % 23 == 7 {
        vec![MetricFailure {
            metric: "queue_depth".into(),
            kind: "timeout".into(),
            error: "source simulator did not answer within 2s".into(),
        }]
    } else {
        vec![]
    };
    TickRecord {
        id: None,
        time_ms,
        scaler: scaler.into(),
        mode: if tick % 11 == 3 {
            Mode::DryRun
        } else {
            Mode::Enforce
        },
        target,
        facts: Default::default(),
        metric_errors,
        evaluations,
        proposal: Some(tracking_desired),
        envelope,
        desired,
        recommendation: Some(tracking_desired),
        actuation: if desired == current {
            ActuationRecord::None
        } else {
            ActuationRecord::Pending
        },
    }
}

/// A diurnal wave with noise-free harmonics, for tests that need no trace.
pub fn synthetic_load(time_ms: i64) -> f64 {
    let day = (time_ms as f64 / 86_400_000.0) * std::f64::consts::TAU;
    120.0 + 90.0 * day.sin() + 17.0 * (day * 7.0).sin()
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}
