//! Backtesting: a config's scalers run against its simulated services for a
//! stretch of simulated time, as fast as the CPU allows (`scalewise
//! simulate`).
//!
//! Everything is the daemon's own: the real policy modules, the envelope,
//! the simulator as metric source and actuator, and a journal of every
//! tick. Only the clock differs: it stands still, and [`run`] hands each
//! tick its time, so a week of 15-second ticks takes seconds. Each scaler
//! ticks at the start and every `interval` after it, in config order within
//! a second; every simulated second of each scaled service is measured, and
//! the [`Report`] says what the scaling cost (replica-hours) and what it
//! bought (saturation, latency).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::config::{Config, Mode};
use crate::daemon::Daemon;
use crate::journal::{ActuationRecord, EvaluationOutcome, TickRecord};
use crate::simulator::{STEP_MS, Sample, SharedService};

/// The speed of the clock a backtest's daemon runs on: it all but stands
/// still (a simulated second would take 30 years of real time), so every
/// time the host sees is one [`run`] hands it.
pub const STANDING_STILL: f64 = 1e-9;

/// The longest stretch one backtest may cover.
pub const MAX_DURATION_MS: i64 = 366 * 24 * 3_600_000;

/// What one scaler of a backtest is about, read from the config before the
/// daemon is built (the daemon keeps only its settings).
#[derive(Debug, Clone)]
pub struct Plan {
    /// The scaler's name.
    pub scaler: String,
    /// The simulated service it scales.
    pub service: String,
    /// Enforce or dry-run (a dry-run scaler leaves its service as it is).
    pub mode: Mode,
    /// Its policy modules, in config order.
    pub policies: Vec<String>,
}

impl Plan {
    /// One plan per scaler of `config`, in config order. The config must
    /// have passed [`Config::check_simulated`].
    pub fn of(config: &Config) -> Vec<Plan> {
        config
            .scalers
            .iter()
            .map(|scaler| {
                let scaler = scaler.get_ref();
                Plan {
                    scaler: scaler.name.get_ref().clone(),
                    service: scaler
                        .target
                        .get_ref()
                        .simulation()
                        .unwrap_or_default()
                        .to_owned(),
                    mode: scaler.mode,
                    policies: scaler
                        .policies
                        .iter()
                        .map(|p| p.get_ref().module.get_ref().clone())
                        .collect(),
                }
            })
            .collect()
    }
}

/// The stretch of simulated time a backtest runs, ms since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Span {
    /// The first simulated instant: the simulations start here.
    pub start_ms: i64,
    /// Where the report starts counting. The time before is a warm-up:
    /// scalers tick and metrics gather history (a policy looking at past
    /// days needs some), but nothing is counted.
    pub counted_from_ms: i64,
    /// The end (exclusive).
    pub end_ms: i64,
}

/// What a backtest found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// What ran, and what is counted.
    #[serde(flatten)]
    pub span: Span,
    /// Ticks of every scaler together, after the warm-up (as each scaler's).
    pub ticks: u64,
    /// Per scaler, in config order.
    pub scalers: Vec<ScalerReport>,
}

/// One scaler's backtest: what it did, and what its service went through.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScalerReport {
    /// The scaler.
    pub scaler: String,
    /// The simulated service it scales.
    pub service: String,
    /// Enforce or dry-run.
    pub mode: Mode,
    /// Its policy modules.
    pub policies: Vec<String>,
    /// Ticks counted (after the warm-up).
    pub ticks: u64,
    /// Ticks that raised the replica count (in dry-run: would have).
    pub scale_outs: u64,
    /// Ticks that lowered it (in dry-run: would have).
    pub scale_ins: u64,
    /// Ticks in which at least one policy failed (the scaler held for it).
    pub policy_error_ticks: u64,
    /// Ticks in which at least one metric could not be read.
    pub metric_error_ticks: u64,
    /// Ticks whose change the actuator refused or could not make.
    pub actuation_failures: u64,
    /// How often each envelope rule changed the policies' answer.
    pub envelope: BTreeMap<String, u64>,
    /// Replicas asked for, over every simulated second.
    pub replicas: Spread,
    /// Replicas ready, over every simulated second.
    pub ready: Spread,
    /// Replicas asked for, summed over time: what the scaling cost.
    pub replica_hours: f64,
    /// Offered load, requests/s.
    pub load: Spread,
    /// CPU utilisation of the ready replicas, percent.
    pub cpu: Spread,
    /// Seconds in which demand exceeded what the ready replicas could serve
    /// (requests waited in a queue, or no replica was ready).
    pub saturated_seconds: u64,
    /// The longest queue of waiting requests.
    pub max_queue: f64,
    /// The service's p95 latency (ms), as percentiles over the seconds.
    pub p95_latency_ms: Percentiles,
    /// Seconds with the p95 latency above the objective, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slo: Option<SloReport>,
}

/// Lowest, mean and highest of a quantity over the simulated seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Lowest.
    pub min: f64,
    /// Time-weighted mean.
    pub mean: f64,
    /// Highest.
    pub max: f64,
}

/// Percentiles of a quantity over the simulated seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Highest.
    pub max: f64,
}

/// Time spent above a latency objective.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SloReport {
    /// The objective: p95 latency at most this many ms.
    pub latency_ms: f64,
    /// Seconds the service's p95 latency was above it.
    pub seconds_above: u64,
}

/// Runs every scaler of `daemon` over `span` on the simulated services
/// `plans` name, calling `on_tick` with each tick's record (warm-up
/// included). The daemon must have been built on a clock standing still at
/// `span.start_ms` (its simulations start there). `slo_latency_ms` adds the
/// time above that p95 latency to the report.
pub async fn run(
    daemon: &mut Daemon,
    plans: &[Plan],
    span: Span,
    slo_latency_ms: Option<f64>,
    mut on_tick: impl FnMut(&TickRecord),
) -> Result<Report, String> {
    let Span {
        start_ms,
        counted_from_ms,
        end_ms,
    } = span;
    let simulation = daemon.simulation();
    let mut tallies = Vec::with_capacity(plans.len());
    for plan in plans {
        let service = simulation
            .service(&plan.service)
            .map_err(|e| e.to_string())?;
        tallies.push(Tally::new(service));
    }
    let intervals: Vec<i64> = daemon
        .scalers_mut()
        .map(|s| s.spec().interval.as_millis() as i64)
        .collect();
    if intervals.len() != plans.len() {
        return Err(format!(
            "the daemon runs {} scalers where the config names {}",
            intervals.len(),
            plans.len()
        ));
    }
    let mut ticks = 0;
    let mut now = start_ms;
    // Each scaler's next tick: every `interval` from the start, at its own
    // millisecond (a 1500ms interval ticks twice in 3 s, not once).
    let mut next: Vec<i64> = vec![start_ms; intervals.len()];
    while now < end_ms {
        let counted = now >= counted_from_ms;
        for tally in tallies.iter_mut().filter(|_| counted) {
            let sample = tally.service.lock().sample(now);
            tally.observe(&sample, slo_latency_ms);
        }
        for (((scaler, interval), tally), next) in daemon
            .scalers_mut()
            .zip(&intervals)
            .zip(&mut tallies)
            .zip(&mut next)
        {
            while *next < (now + STEP_MS).min(end_ms) {
                let record = scaler.tick(*next).await;
                if *next >= counted_from_ms {
                    tally.count(&record);
                    // The report's ticks are the counted ones, as its
                    // scalers' are (warm-up ticks are not).
                    ticks += 1;
                }
                on_tick(&record);
                *next += interval;
            }
        }
        now += STEP_MS;
    }
    Ok(Report {
        span,
        ticks,
        scalers: plans
            .iter()
            .zip(tallies)
            .map(|(plan, tally)| tally.report(plan, slo_latency_ms))
            .collect(),
    })
}

/// What is counted of one scaler while a backtest runs.
struct Tally {
    service: SharedService,
    seconds: u64,
    ticks: u64,
    scale_outs: u64,
    scale_ins: u64,
    policy_error_ticks: u64,
    metric_error_ticks: u64,
    actuation_failures: u64,
    envelope: BTreeMap<String, u64>,
    replicas: Accumulator,
    ready: Accumulator,
    load: Accumulator,
    cpu: Accumulator,
    saturated_seconds: u64,
    max_queue: f64,
    latencies: Latencies,
    seconds_above_slo: u64,
}

/// The service's p95 latency over the simulated seconds, for percentiles:
/// a histogram in microseconds to three significant digits (within 0.1 %),
/// ~70 KiB however long the run, where one value per second took 253 MB
/// for a year. The highest is kept exactly.
struct Latencies {
    micros: Histogram<u32>,
    max_ms: f64,
}

/// The simulator caps latency at a minute.
const MAX_LATENCY_MICROS: u64 = 60_000_000;

impl Latencies {
    fn new() -> Self {
        Latencies {
            micros: Histogram::new_with_max(MAX_LATENCY_MICROS, 3)
                .expect("a valid histogram range"),
            max_ms: 0.0,
        }
    }

    fn record(&mut self, ms: f64) {
        // Capped at the histogram's range (the simulator's cap already);
        // a count per second cannot overflow u32 within the year allowed.
        let micros = (ms * 1000.0).round().clamp(0.0, MAX_LATENCY_MICROS as f64) as u64;
        self.micros.saturating_record(micros);
        self.max_ms = self.max_ms.max(ms);
    }

    /// Nearest-rank percentiles; zeros when nothing was recorded.
    fn percentiles(&self) -> Percentiles {
        if self.micros.is_empty() {
            return Percentiles {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                max: 0.0,
            };
        }
        // A bucket's middle value: within 0.1 % of any it holds.
        let rank = |q: f64| {
            let micros = self.micros.value_at_quantile(q);
            let middle = self.micros.median_equivalent(micros) as f64 / 1000.0;
            middle.min(self.max_ms)
        };
        Percentiles {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: self.max_ms,
        }
    }
}

impl Tally {
    fn new(service: SharedService) -> Self {
        Tally {
            service,
            seconds: 0,
            ticks: 0,
            scale_outs: 0,
            scale_ins: 0,
            policy_error_ticks: 0,
            metric_error_ticks: 0,
            actuation_failures: 0,
            envelope: BTreeMap::new(),
            replicas: Accumulator::default(),
            ready: Accumulator::default(),
            load: Accumulator::default(),
            cpu: Accumulator::default(),
            saturated_seconds: 0,
            max_queue: 0.0,
            latencies: Latencies::new(),
            seconds_above_slo: 0,
        }
    }

    /// One simulated second of the service.
    fn observe(&mut self, sample: &Sample, slo_latency_ms: Option<f64>) {
        self.seconds += 1;
        self.replicas.add(f64::from(sample.replicas));
        self.ready.add(f64::from(sample.ready));
        self.load.add(sample.load);
        self.cpu.add(sample.cpu);
        if is_saturated(sample) {
            self.saturated_seconds += 1;
        }
        self.max_queue = self.max_queue.max(sample.queue_depth);
        self.latencies.record(sample.p95_latency_ms);
        if slo_latency_ms.is_some_and(|slo| sample.p95_latency_ms > slo) {
            self.seconds_above_slo += 1;
        }
    }

    /// One tick's record.
    fn count(&mut self, record: &TickRecord) {
        self.ticks += 1;
        let acted = matches!(
            record.actuation,
            ActuationRecord::Done { .. }
                | ActuationRecord::Started { .. }
                | ActuationRecord::DryRun
        );
        if acted && record.desired > record.target.current {
            self.scale_outs += 1;
        } else if acted && record.desired < record.target.current {
            self.scale_ins += 1;
        }
        if matches!(
            record.actuation,
            ActuationRecord::Failed { .. } | ActuationRecord::ObserveFailed { .. }
        ) {
            self.actuation_failures += 1;
        }
        if record
            .evaluations
            .iter()
            .any(|e| matches!(e.outcome, EvaluationOutcome::Failed { .. }))
        {
            self.policy_error_ticks += 1;
        }
        if !record.metric_errors.is_empty() {
            self.metric_error_ticks += 1;
        }
        for step in &record.envelope {
            *self.envelope.entry(step.rule.clone()).or_default() += 1;
        }
    }

    fn report(self, plan: &Plan, slo_latency_ms: Option<f64>) -> ScalerReport {
        ScalerReport {
            scaler: plan.scaler.clone(),
            service: plan.service.clone(),
            mode: plan.mode,
            policies: plan.policies.clone(),
            ticks: self.ticks,
            scale_outs: self.scale_outs,
            scale_ins: self.scale_ins,
            policy_error_ticks: self.policy_error_ticks,
            metric_error_ticks: self.metric_error_ticks,
            actuation_failures: self.actuation_failures,
            envelope: self.envelope,
            replica_hours: self.replicas.sum * STEP_MS as f64 / 3_600_000.0,
            replicas: self.replicas.spread(),
            ready: self.ready.spread(),
            load: self.load.spread(),
            cpu: self.cpu.spread(),
            saturated_seconds: self.saturated_seconds,
            max_queue: self.max_queue,
            p95_latency_ms: self.latencies.percentiles(),
            slo: slo_latency_ms.map(|latency_ms| SloReport {
                latency_ms,
                seconds_above: self.seconds_above_slo,
            }),
        }
    }
}

/// Whether the ready replicas could not serve the demand in this second:
/// requests waited, or nothing was ready while load arrived.
pub fn is_saturated(sample: &Sample) -> bool {
    sample.queue_depth > 0.0 || (sample.ready == 0 && sample.load > 0.0)
}

/// Sum, count, lowest and highest of a series of values.
#[derive(Debug, Clone, Copy)]
struct Accumulator {
    sum: f64,
    count: u64,
    min: f64,
    max: f64,
}

impl Default for Accumulator {
    fn default() -> Self {
        Accumulator {
            sum: 0.0,
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl Accumulator {
    fn add(&mut self, value: f64) {
        self.sum += value;
        self.count += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    fn spread(&self) -> Spread {
        if self.count == 0 {
            return Spread {
                min: 0.0,
                mean: 0.0,
                max: 0.0,
            };
        }
        Spread {
            min: self.min,
            mean: self.sum / self.count as f64,
            max: self.max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_within_a_tenth_of_a_percent() {
        let of = |values: &[f64]| {
            let mut latencies = Latencies::new();
            for &v in values {
                latencies.record(v);
            }
            latencies.percentiles()
        };
        let close = |got: f64, want: f64| {
            assert!((got - want).abs() <= want * 0.001, "{got} for {want}");
        };
        let values: Vec<f64> = (1..=200).rev().map(|v| f64::from(v) * 1.5).collect();
        let p = of(&values);
        close(p.p50, 150.0);
        close(p.p90, 270.0);
        close(p.p99, 297.0);
        assert_eq!(p.max, 300.0);
        // A single value, sub-millisecond, and the cap.
        let p = of(&[7.25]);
        assert_eq!((p.p50, p.p99, p.max), (7.25, 7.25, 7.25));
        let p = of(&[0.4, 0.4, 60_000.0]);
        close(p.p50, 0.4);
        assert_eq!((p.p99, p.max), (60_000.0, 60_000.0));
        assert_eq!(of(&[]).max, 0.0);
    }

    #[test]
    fn latencies_of_a_year_take_a_fixed_few_kib() {
        let mut latencies = Latencies::new();
        let before = latencies.micros.distinct_values();
        for second in 0..366 * 86_400u64 / 100 {
            latencies.record((second % 60_001) as f64 * 1.0001);
        }
        assert_eq!(latencies.micros.distinct_values(), before);
        assert!(before * 4 <= 80 * 1024, "{before} counters");
    }

    #[test]
    fn spread_is_the_mean_over_the_values_seen() {
        let mut acc = Accumulator::default();
        for v in [2.0, 2.0, 5.0, 3.0] {
            acc.add(v);
        }
        assert_eq!(
            acc.spread(),
            Spread {
                min: 2.0,
                mean: 3.0,
                max: 5.0
            }
        );
        assert_eq!(Accumulator::default().spread().mean, 0.0);
    }

    fn sample(ready: u32, load: f64, queue_depth: f64) -> Sample {
        Sample {
            timestamp_ms: 0,
            load,
            throughput: 0.0,
            cpu: 0.0,
            in_flight: 0.0,
            queue_depth,
            p95_latency_ms: 0.0,
            replicas: ready,
            ready,
        }
    }

    #[test]
    fn saturation_is_a_queue_or_load_with_nothing_ready() {
        assert!(!is_saturated(&sample(2, 100.0, 0.0)));
        assert!(is_saturated(&sample(2, 100.0, 0.5)));
        assert!(is_saturated(&sample(0, 1.0, 0.0)));
        assert!(!is_saturated(&sample(0, 0.0, 0.0)));
    }
}
