//! The simulated service: replicas that take time to start, a queue that
//! fills when the load exceeds the ready capacity, and the metrics a real
//! service would report.
//!
//! State changes only on a fixed [`STEP_MS`] grid of host-clock time
//! (integrated lazily up to whatever time is asked about) and on
//! [`SimulatedService::set_replicas`], so the same seed and the same scale
//! calls give the same series however often, and in whichever order, the
//! service is queried.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use super::load::{LoadModel, Trace};
use super::{Metric, STEP_MS, SimulatorError};
use crate::config::SimulationConfig;
use crate::policy::Point;

/// Latency reported when nothing can serve (no ready replica) and the most
/// ever reported: a typical client timeout.
pub const MAX_LATENCY_MS: f64 = 60_000.0;

/// The M/M/1 slowdown `1 / (1 − ρ)` is capped here (ρ = 0.99), so a
/// saturated replica answers 100× slower than an idle one before queueing.
const MAX_SLOWDOWN: f64 = 100.0;

/// History kept by default: enough for windows of a few hours.
pub const DEFAULT_HISTORY_MS: i64 = 3 * 3_600_000;

/// Most steps one windowed query may span, as Prometheus' limit (and the
/// config's check): `window / step` at most this, so at most one more
/// point than this.
pub const MAX_POINTS: i64 = 11_000;

/// All metrics of a simulated service at one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The step's time (host clock, ms since the Unix epoch).
    pub timestamp_ms: i64,
    /// Offered load, requests/s.
    pub load: f64,
    /// Requests served per second (capacity-bound; above the load while a backlog drains).
    pub throughput: f64,
    /// CPU utilisation of the ready replicas, percent (0–100; 100 with none
    /// ready and requests waiting, 0 with none ready and no demand).
    pub cpu: f64,
    /// Requests in flight: being served (Little's law) plus waiting.
    pub in_flight: f64,
    /// The backlog: requests that arrived beyond what the ready replicas
    /// could serve, carried into the next second. The waiting inside a busy
    /// replica (the M/M/1 slowdown below saturation) is not counted here: it
    /// shows in `in_flight` and the latency.
    pub queue_depth: f64,
    /// p95 request latency, ms: the base latency grown by utilisation, plus queueing delay.
    pub p95_latency_ms: f64,
    /// Replicas asked for.
    pub replicas: u32,
    /// Replicas running and ready.
    pub ready: u32,
}

impl Sample {
    /// The value of one metric.
    pub fn get(&self, metric: Metric) -> f64 {
        match metric {
            Metric::Cpu => self.cpu,
            Metric::Load => self.load,
            Metric::Throughput => self.throughput,
            Metric::InFlight => self.in_flight,
            Metric::QueueDepth => self.queue_depth,
            Metric::P95LatencyMs => self.p95_latency_ms,
            Metric::Replicas => f64::from(self.replicas),
            Metric::Ready => f64::from(self.ready),
        }
    }
}

/// The fixed parameters of a service's performance model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServiceParams {
    /// Requests/s one ready replica serves at 100% CPU.
    pub capacity_per_replica: f64,
    /// Latency of a request on an idle replica, ms.
    pub base_latency_ms: f64,
    /// Time from asking for a replica to it being ready, ms.
    pub startup_delay_ms: i64,
}

/// What is stored per step; every metric derives from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepState {
    /// Offered load, requests/s.
    pub load: f64,
    /// Replicas asked for.
    pub replicas: u32,
    /// Replicas ready.
    pub ready: u32,
    /// Requests waiting at the step's start.
    pub queue: f64,
}

/// The metrics of one step: a pure function of its state and the model's
/// parameters.
pub fn derive(timestamp_ms: i64, s: &StepState, p: &ServiceParams) -> Sample {
    let capacity = f64::from(s.ready) * p.capacity_per_replica;
    // The most ever reported (the config keeps base_latency below it).
    let latency_cap = MAX_LATENCY_MS.max(p.base_latency_ms);
    let (throughput, cpu, service_ms, p95_latency_ms) = if capacity > 0.0 {
        // A backlog is served at full capacity on top of the new load.
        let demand = s.load + s.queue / (STEP_MS as f64 / 1000.0);
        let throughput = demand.min(capacity);
        let rho = throughput / capacity;
        // 1 / (1 - rho), as capacity over its headroom: 1 - 50/60 is not
        // exactly 1/6 in floating point, and a latency exactly at an
        // objective would count as above it.
        let slowdown = (capacity / (capacity - throughput)).min(MAX_SLOWDOWN);
        let service_ms = p.base_latency_ms * slowdown;
        let wait_ms = s.queue / capacity * 1000.0;
        let p95 = (service_ms + wait_ms).min(latency_cap);
        (throughput, 100.0 * rho, service_ms, p95)
    } else if s.load > 0.0 || s.queue > 0.0 {
        // Demand and nothing ready to serve it.
        (0.0, 100.0, 0.0, latency_cap)
    } else {
        // Scaled to zero with nothing asked of it: idle, not overloaded (a
        // latency or CPU policy would otherwise start a replica for no
        // traffic at all).
        (0.0, 0.0, 0.0, p.base_latency_ms)
    };
    Sample {
        timestamp_ms,
        load: s.load,
        throughput,
        cpu,
        in_flight: throughput * service_ms / 1000.0 + s.queue,
        queue_depth: s.queue,
        p95_latency_ms,
        replicas: s.replicas,
        ready: s.ready,
    }
}

/// A way a simulated metric can fail, for tests of the control loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricFault {
    /// The source cannot be reached (`MetricError::Unreachable`).
    Unreachable,
    /// The query returns no samples.
    Empty,
    /// The newest sample is NaN.
    NotFinite,
    /// The series stopped this long ago: samples end at `now - age_ms`.
    Stale {
        /// How old the newest sample is.
        age_ms: i64,
    },
}

/// A way the simulated actuator can fail, for tests of the control loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActuatorFault {
    /// Observing works; every scale request fails.
    ScaleFails,
    /// Both observing and scaling fail.
    Unreachable,
}

/// The faults injected into a service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Faults {
    all_metrics: Option<MetricFault>,
    metrics: BTreeMap<Metric, MetricFault>,
    actuator: Option<ActuatorFault>,
}

/// One simulated service.
#[derive(Debug)]
pub struct SimulatedService {
    name: String,
    params: ServiceParams,
    load: LoadModel,
    start_ms: i64,
    /// When each asked-for replica is (or becomes) ready, oldest first;
    /// non-decreasing because calls never go back in time.
    replicas: Vec<i64>,
    /// The latest time any call has seen.
    latest_ms: i64,
    /// Index of the next step to integrate.
    next_step: i64,
    /// Requests waiting at the next step's start.
    queue: f64,
    /// What steps `first_step..next_step` had (their load is recomputed).
    history: History,
    first_step: i64,
    history_steps: usize,
    faults: Faults,
}

impl SimulatedService {
    /// The service `[simulations.<name>]` describes, starting at `start_ms`
    /// with its initial replicas ready. A trace path is resolved against
    /// `config_dir`.
    pub fn new(
        name: &str,
        cfg: &SimulationConfig,
        config_dir: &Path,
        start_ms: i64,
    ) -> Result<Self, SimulatorError> {
        let trace = match &cfg.load.trace {
            Some(t) => Some(Arc::new(Trace::load(&config_dir.join(&t.path))?)),
            None => None,
        };
        Self::with_trace(name, cfg, trace, start_ms)
    }

    /// As [`new`](Self::new), with the trace `cfg.load.trace` names already
    /// loaded (so services sharing a file share one copy).
    pub fn with_trace(
        name: &str,
        cfg: &SimulationConfig,
        trace: Option<Arc<Trace>>,
        start_ms: i64,
    ) -> Result<Self, SimulatorError> {
        if !(cfg.capacity_per_replica.is_finite() && cfg.capacity_per_replica > 0.0) {
            return Err(SimulatorError::Config {
                service: name.to_owned(),
                field: "capacity_per_replica".into(),
                message: format!("must be a number > 0, not {}", cfg.capacity_per_replica),
            });
        }
        let load = LoadModel::new(name, &cfg.load, cfg.seed, trace)?;
        let params = ServiceParams {
            capacity_per_replica: cfg.capacity_per_replica,
            base_latency_ms: cfg.base_latency.as_secs_f64() * 1000.0,
            startup_delay_ms: i64::try_from(cfg.startup_delay.as_millis()).unwrap_or(i64::MAX),
        };
        Ok(SimulatedService {
            name: name.to_owned(),
            params,
            load,
            start_ms,
            replicas: vec![start_ms; cfg.initial_replicas as usize],
            latest_ms: start_ms,
            next_step: 0,
            queue: 0.0,
            history: History::default(),
            first_step: 0,
            history_steps: steps_for(DEFAULT_HISTORY_MS),
            faults: Faults::default(),
        })
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The model's parameters.
    pub fn params(&self) -> ServiceParams {
        self.params
    }

    /// When the simulation started (host clock, ms).
    pub fn start_ms(&self) -> i64 {
        self.start_ms
    }

    /// Offered load at `at_ms`, without touching the service's state.
    pub fn load_at(&self, at_ms: i64) -> f64 {
        self.load.rate(at_ms - self.start_ms)
    }

    /// Keeps at least `history_ms` of history for windowed queries (memory:
    /// 24 bytes per change of replicas, and per second with a queue).
    /// Shrinking drops the oldest steps.
    pub fn set_history(&mut self, history_ms: i64) {
        self.history_steps = steps_for(history_ms);
        self.trim_history();
    }

    /// Integrates every step up to `now_ms`. Calls with an earlier time than
    /// one already seen change nothing.
    pub fn advance_to(&mut self, now_ms: i64) {
        self.latest_ms = self.latest_ms.max(now_ms);
        let dt_s = STEP_MS as f64 / 1000.0;
        while self.step_time(self.next_step) <= self.latest_ms {
            let t = self.step_time(self.next_step);
            let ready = self.ready_at(t);
            let load = self.load.rate(t - self.start_ms);
            self.history.push(Run {
                step: self.next_step,
                replicas: self.replicas.len() as u32,
                ready,
                queue: self.queue,
            });
            let capacity = f64::from(ready) * self.params.capacity_per_replica;
            self.queue = (self.queue + (load - capacity) * dt_s).max(0.0);
            self.next_step += 1;
            self.trim_history();
        }
    }

    /// Asks for `replicas` replicas as of `now_ms`: new ones become ready
    /// after the start-up delay; removed ones go at once, those not yet
    /// ready (the newest) first. A time earlier than one already seen acts
    /// at the latest time seen.
    pub fn set_replicas(&mut self, now_ms: i64, replicas: u32) {
        // Steps up to now were served by the old replicas.
        self.advance_to(now_ms);
        let now_ms = self.latest_ms;
        let target = replicas as usize;
        let before = self.replicas.len();
        if target > before {
            // On the grid, as every other change: ready from the first step
            // at or after the delay, so the replicas the target reports
            // ready are the ones the metrics of that moment were served by.
            let ready_at = now_ms.saturating_add(self.params.startup_delay_ms);
            let step = (ready_at - self.start_ms).saturating_add(STEP_MS - 1) / STEP_MS;
            self.replicas
                .resize(target, self.start_ms.saturating_add(step * STEP_MS));
        } else {
            self.replicas.truncate(target);
        }
        tracing::debug!(service = %self.name, from = before, to = target, "Simulated service was asked for a new replica count.");
    }

    /// Replicas asked for and replicas ready at `now_ms`.
    pub fn replicas(&mut self, now_ms: i64) -> (u32, u32) {
        self.advance_to(now_ms);
        (
            self.replicas.len() as u32,
            self.ready_at(now_ms.max(self.latest_ms)),
        )
    }

    /// All metrics at `now_ms`: those of the latest step at or before it.
    /// Times before the simulation's start, or older than the history kept,
    /// answer with the oldest step kept.
    pub fn sample(&mut self, now_ms: i64) -> Sample {
        self.advance_to(now_ms);
        let step = self
            .step_of(now_ms)
            .clamp(self.first_step, self.next_step - 1);
        self.sample_of(step)
            .expect("a step within the kept history has a sample")
    }

    /// The series of `metric` over `[now_ms - window_ms, now_ms]`, a point
    /// every `step_ms` ending at `now_ms`, oldest first; each point is the
    /// latest step at or before its time. Times before the simulation's
    /// start or older than the history kept have no point. A window of 0
    /// gives the one point at `now_ms`.
    pub fn series(
        &mut self,
        metric: Metric,
        now_ms: i64,
        window_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<Point>, SimulatorError> {
        if step_ms <= 0 || window_ms < 0 {
            return Err(SimulatorError::BadQuery(format!(
                "window {window_ms} ms and step {step_ms} ms must be >= 0 and > 0"
            )));
        }
        let count = window_ms / step_ms + 1;
        if count > MAX_POINTS + 1 {
            return Err(SimulatorError::BadQuery(format!(
                "a window of {window_ms} ms at a step of {step_ms} ms is {} steps; \
                 at most {MAX_POINTS} are allowed",
                count - 1
            )));
        }
        self.advance_to(now_ms);
        Ok((0..count)
            .rev()
            .filter_map(|j| {
                let t = now_ms - j * step_ms;
                if t < self.start_ms {
                    return None;
                }
                self.sample_of(self.step_of(t)).map(|s| Point {
                    timestamp_ms: t,
                    value: s.get(metric),
                })
            })
            .collect())
    }

    /// Makes every metric of this service fail with `fault` (or stop failing).
    pub fn set_metric_outage(&mut self, fault: Option<MetricFault>) {
        self.faults.all_metrics = fault;
    }

    /// Makes one metric fail with `fault` (or stop failing).
    pub fn set_metric_fault(&mut self, metric: Metric, fault: Option<MetricFault>) {
        match fault {
            Some(f) => self.faults.metrics.insert(metric, f),
            None => self.faults.metrics.remove(&metric),
        };
    }

    /// The fault `metric` currently has, if any (a service-wide outage first).
    pub fn metric_fault(&self, metric: Metric) -> Option<MetricFault> {
        self.faults
            .all_metrics
            .or_else(|| self.faults.metrics.get(&metric).copied())
    }

    /// Makes the service's actuator fail (or stop failing).
    pub fn set_actuator_fault(&mut self, fault: Option<ActuatorFault>) {
        self.faults.actuator = fault;
    }

    /// The actuator's current fault, if any.
    pub fn actuator_fault(&self) -> Option<ActuatorFault> {
        self.faults.actuator
    }

    fn step_time(&self, step: i64) -> i64 {
        self.start_ms + step * STEP_MS
    }

    fn step_of(&self, t: i64) -> i64 {
        (t - self.start_ms).div_euclid(STEP_MS)
    }

    fn sample_of(&self, step: i64) -> Option<Sample> {
        if !(self.first_step..self.next_step).contains(&step) {
            return None;
        }
        let t = self.step_time(step);
        let run = self.history.at(step)?;
        let state = StepState {
            load: self.load.rate(t - self.start_ms),
            replicas: run.replicas,
            ready: run.ready,
            queue: if run.step == step { run.queue } else { 0.0 },
        };
        Some(derive(t, &state, &self.params))
    }

    fn ready_at(&self, t: i64) -> u32 {
        self.replicas.partition_point(|&ready| ready <= t) as u32
    }

    fn trim_history(&mut self) {
        let keep = i64::try_from(self.history_steps).unwrap_or(i64::MAX);
        self.first_step = self.first_step.max(self.next_step.saturating_sub(keep));
        self.history.drop_before(self.first_step);
    }
}

/// The steps kept, stored only where something changes: the load of a step
/// is a pure function of its time (recomputed from the load model), replicas
/// change only when scaled or when one becomes ready, and the queue is empty
/// while capacity keeps up. So a service that holds steady keeps a few runs
/// however long its history, instead of one state per second.
#[derive(Debug, Default)]
struct History {
    /// Oldest first, by step.
    runs: VecDeque<Run>,
}

/// From `step` until the next run's step: `replicas` asked for and `ready`
/// ready; `queue` requests waiting at `step` itself and none at the later
/// steps of the run (a step with a queue, and the step after it, always
/// start a run of their own).
#[derive(Debug, Clone, Copy)]
struct Run {
    step: i64,
    replicas: u32,
    ready: u32,
    queue: f64,
}

impl History {
    /// Records the next step (one after the last recorded).
    fn push(&mut self, next: Run) {
        if let Some(last) = self.runs.back()
            && last.replicas == next.replicas
            && last.ready == next.ready
            && last.queue == 0.0
            && next.queue == 0.0
        {
            return;
        }
        self.runs.push_back(next);
    }

    /// The run `step` falls in, if a recorded run starts at or before it.
    fn at(&self, step: i64) -> Option<&Run> {
        let i = self.runs.partition_point(|r| r.step <= step);
        self.runs.get(i.checked_sub(1)?)
    }

    /// Forgets the runs that end before `step`.
    fn drop_before(&mut self, step: i64) {
        while self.runs.get(1).is_some_and(|next| next.step <= step) {
            self.runs.pop_front();
        }
    }
}

fn steps_for(history_ms: i64) -> usize {
    usize::try_from(history_ms / STEP_MS + 1)
        .unwrap_or(usize::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{LoadConfig, SpikeConfig};

    const T0: i64 = 1_700_000_000_000;
    const MIN: i64 = 60_000;

    fn params() -> ServiceParams {
        ServiceParams {
            capacity_per_replica: 100.0,
            base_latency_ms: 50.0,
            startup_delay_ms: 30_000,
        }
    }

    fn state(load: f64, ready: u32, queue: f64) -> StepState {
        StepState {
            load,
            replicas: ready,
            ready,
            queue,
        }
    }

    /// 12 replicas of 5 requests/s serving 50: 1/(1 - 5/6) is 6 exactly,
    /// so the latency is exactly 6 × 50 ms (a backtest's "above 300 ms"
    /// counted every such second).
    #[test]
    fn a_latency_at_a_whole_slowdown_is_exact() {
        let p = ServiceParams {
            capacity_per_replica: 5.0,
            ..params()
        };
        let sample = derive(T0, &state(50.0, 12, 0.0), &p);
        assert_eq!(sample.p95_latency_ms, 300.0);
        // Full capacity still caps rather than dividing by zero.
        let full = derive(T0, &state(60.0, 12, 0.0), &p);
        assert_eq!(full.p95_latency_ms, 50.0 * MAX_SLOWDOWN);
    }

    #[test]
    fn metrics_derive_from_load_and_ready_capacity() {
        // (what, state, throughput, cpu, p95 ms, in flight)
        let cases = [
            ("idle", state(0.0, 2, 0.0), 0.0, 0.0, 50.0, 0.0),
            ("half busy", state(100.0, 2, 0.0), 100.0, 50.0, 100.0, 10.0),
            ("90% busy", state(180.0, 2, 0.0), 180.0, 90.0, 500.0, 90.0),
            // Saturated: the slowdown is capped at 100×; in flight = 200 × 5 s.
            (
                "overloaded",
                state(300.0, 2, 0.0),
                200.0,
                100.0,
                5_000.0,
                1_000.0,
            ),
            // A backlog of 400 waits 2 s at 200 req/s.
            (
                "backlog",
                state(300.0, 2, 400.0),
                200.0,
                100.0,
                7_000.0,
                1_400.0,
            ),
            // A small backlog is served within the step on top of the load.
            ("draining", state(100.0, 2, 50.0), 150.0, 75.0, 450.0, 80.0),
            (
                "scaled to zero, no load",
                state(0.0, 0, 0.0),
                0.0,
                0.0,
                50.0,
                0.0,
            ),
            (
                "no ready replica",
                state(100.0, 0, 30.0),
                0.0,
                100.0,
                60_000.0,
                30.0,
            ),
        ];
        for (what, s, throughput, cpu, p95, in_flight) in cases {
            let got = derive(T0, &s, &params());
            let ok = |a: f64, b: f64| (a - b).abs() < 1e-6;
            assert!(ok(got.throughput, throughput), "{what}: {got:?}");
            assert!(ok(got.cpu, cpu), "{what}: {got:?}");
            assert!(ok(got.p95_latency_ms, p95), "{what}: {got:?}");
            assert!(ok(got.in_flight, in_flight), "{what}: {got:?}");
            assert_eq!(got.queue_depth, s.queue, "{what}");
        }
    }

    #[test]
    fn latency_is_capped_even_with_a_huge_backlog() {
        let got = derive(T0, &state(100.0, 1, 1e9), &params());
        assert_eq!(got.p95_latency_ms, MAX_LATENCY_MS);
    }

    fn config(base: f64, noise: f64, replicas: u32) -> SimulationConfig {
        SimulationConfig {
            seed: 7,
            capacity_per_replica: 100.0,
            startup_delay: Duration::from_secs(30),
            initial_replicas: replicas,
            base_latency: Duration::from_millis(50),
            load: LoadConfig {
                base,
                diurnal_amplitude: base / 2.0,
                diurnal_period: Duration::from_secs(3600),
                noise,
                spikes: vec![SpikeConfig {
                    at: Duration::from_secs(600),
                    duration: Duration::from_secs(300),
                    extra: base,
                }],
                trace: None,
            },
        }
    }

    fn service(base: f64, noise: f64, replicas: u32) -> SimulatedService {
        SimulatedService::new("web", &config(base, noise, replicas), Path::new("."), T0).unwrap()
    }

    #[test]
    fn new_replicas_become_ready_after_the_startup_delay() {
        let mut svc = service(100.0, 0.0, 2);
        assert_eq!(svc.replicas(T0), (2, 2));
        svc.set_replicas(T0 + 10_000, 5);
        assert_eq!(svc.replicas(T0 + 10_000), (5, 2));
        assert_eq!(svc.replicas(T0 + 39_999), (5, 2));
        assert_eq!(svc.replicas(T0 + 40_000), (5, 5));
        assert_eq!(svc.sample(T0 + 39_999).ready, 2);
        assert_eq!(svc.sample(T0 + 40_000).ready, 5);
    }

    #[test]
    fn replicas_asked_for_between_steps_become_ready_on_the_grid() {
        let mut svc = service(100.0, 0.0, 2);
        // Ready after the delay at T0 + 40.5 s: from the step at 41 s, when
        // the metrics are served by them too.
        svc.set_replicas(T0 + 10_500, 5);
        for (now, ready) in [(40_600, 2), (40_999, 2), (41_000, 5), (41_500, 5)] {
            assert_eq!(svc.replicas(T0 + now), (5, ready), "at {now}");
            assert_eq!(svc.sample(T0 + now).ready, ready, "at {now}");
        }
    }

    #[test]
    fn scale_in_removes_starting_replicas_first_and_at_once() {
        let mut svc = service(100.0, 0.0, 2);
        svc.set_replicas(T0, 5);
        svc.set_replicas(T0 + 5_000, 3);
        assert_eq!(svc.replicas(T0 + 5_000), (3, 2));
        assert_eq!(
            svc.replicas(T0 + 30_000),
            (3, 3),
            "the one left still starts"
        );
        svc.set_replicas(T0 + 31_000, 1);
        assert_eq!(
            svc.replicas(T0 + 31_000),
            (1, 1),
            "ready ones go at once too"
        );
        svc.set_replicas(T0 + 32_000, 0);
        assert_eq!(svc.replicas(T0 + 32_000), (0, 0));
    }

    #[test]
    fn a_call_from_the_past_acts_at_the_latest_time_seen() {
        let mut svc = service(100.0, 0.0, 1);
        svc.advance_to(T0 + 60_000);
        svc.set_replicas(T0, 2);
        assert_eq!(svc.replicas(T0 + 60_000), (2, 1));
        assert_eq!(svc.replicas(T0 + 90_000), (2, 2));
    }

    #[test]
    fn more_ready_replicas_mean_lower_cpu_and_latency() {
        let mut prev: Option<Sample> = None;
        // About 500 req/s at 5 min; 6 replicas serve 600.
        for n in 6..12 {
            let mut svc = service(400.0, 0.0, n);
            let s = svc.sample(T0 + 5 * MIN);
            assert_eq!(s.ready, n);
            if let Some(p) = prev {
                assert!(s.cpu < p.cpu, "{n} replicas: cpu {} vs {}", s.cpu, p.cpu);
                assert!(s.p95_latency_ms < p.p95_latency_ms, "{n} replicas");
                assert!(s.in_flight < p.in_flight, "{n} replicas");
            }
            prev = Some(s);
        }
    }

    #[test]
    fn overload_fills_the_queue_and_scale_out_drains_it() {
        // 400 req/s plus the wave; 3 replicas serve 300 req/s.
        let mut svc = service(400.0, 0.0, 3);
        let early = svc.sample(T0 + MIN);
        let later = svc.sample(T0 + 5 * MIN);
        assert_eq!(early.cpu, 100.0);
        assert!(later.queue_depth > early.queue_depth && early.queue_depth > 0.0);
        // Integrated excess load: ∑(load − 300) over the steps.
        let excess: f64 = (0..300).map(|s| svc.load_at(T0 + s * 1_000) - 300.0).sum();
        assert!(
            (later.queue_depth - excess).abs() < 1e-6,
            "{later:?} vs {excess}"
        );
        assert!(later.p95_latency_ms > early.p95_latency_ms);

        svc.set_replicas(T0 + 5 * MIN, 12);
        let starting = svc.sample(T0 + 5 * MIN + 29_000);
        assert!(starting.queue_depth > later.queue_depth, "still starting");
        let recovered = svc.sample(T0 + 8 * MIN);
        assert_eq!(recovered.queue_depth, 0.0, "{recovered:?}");
        assert!(recovered.cpu < 60.0 && recovered.p95_latency_ms < 150.0);
    }

    #[test]
    fn with_no_ready_replica_nothing_is_served() {
        let mut svc = service(100.0, 0.0, 0);
        let s = svc.sample(T0 + MIN);
        assert_eq!((s.cpu, s.throughput), (100.0, 0.0));
        assert_eq!(s.p95_latency_ms, MAX_LATENCY_MS);
        assert!(s.queue_depth > 5_000.0, "{s:?}");
    }

    fn all_series(svc: &mut SimulatedService, now: i64) -> Vec<Vec<Point>> {
        Metric::ALL
            .iter()
            .map(|&m| svc.series(m, now, 3_600_000, 1_000).unwrap())
            .collect()
    }

    #[test]
    fn same_seed_gives_same_series_however_it_is_queried() {
        let scale_calls = [(7 * MIN + 300, 6), (19 * MIN, 3), (40 * MIN + 1, 9)];
        // `a` is looked at every second, `b` at odd moments, newest first.
        let mut a = service(400.0, 0.2, 3);
        let mut b = service(400.0, 0.2, 3);
        let mut pending = scale_calls.iter().peekable();
        for t in (0..=60 * MIN).step_by(1_000) {
            while let Some(&&(at, n)) = pending.peek()
                && at <= t
            {
                a.set_replicas(T0 + at, n);
                pending.next();
            }
            a.sample(T0 + t);
        }
        let mut last = 0;
        for &(at, n) in &scale_calls {
            let moments: Vec<i64> = (last..at).step_by(37_013).collect();
            for &t in moments.iter().rev() {
                b.series(Metric::Cpu, T0 + t, 600_000, 15_000).unwrap();
            }
            b.set_replicas(T0 + at, n);
            last = at;
        }
        let now = T0 + 60 * MIN;
        let got_a = all_series(&mut a, now);
        let got_b = all_series(&mut b, now);
        assert_eq!(got_a.len(), Metric::ALL.len());
        assert_eq!(got_a[0].len(), 3_601);
        assert_eq!(got_a, got_b);

        let mut cfg = config(400.0, 0.2, 3);
        cfg.seed = 8;
        let mut other_seed = SimulatedService::new("web", &cfg, Path::new("."), T0).unwrap();
        let loads = other_seed
            .series(Metric::Load, now, 3_600_000, 1_000)
            .unwrap();
        assert_ne!(loads, got_a[1]);
    }

    #[test]
    fn series_points_end_at_now_and_skip_times_before_the_start() {
        let mut svc = service(100.0, 0.0, 2);
        let now = T0 + 10 * MIN + 500;
        let pts = svc.series(Metric::Replicas, now, 60_000, 15_000).unwrap();
        let times: Vec<i64> = pts.iter().map(|p| p.timestamp_ms).collect();
        assert_eq!(
            times,
            (0..5).rev().map(|j| now - j * 15_000).collect::<Vec<_>>()
        );
        assert!(pts.iter().all(|p| p.value == 2.0));
        // The instant value is the last point of any window.
        let load = svc.series(Metric::Load, now, 0, 1).unwrap();
        assert_eq!(load.len(), 1);
        assert_eq!(load[0].value, svc.sample(now).load);
        // The simulation started 5 s before: six one-second points.
        let early = svc.series(Metric::Cpu, T0 + 5_000, 60_000, 1_000).unwrap();
        assert_eq!(early.len(), 6);
        assert_eq!(early[0].timestamp_ms, T0);
    }

    #[test]
    fn history_is_bounded() {
        let mut svc = service(100.0, 0.0, 2);
        svc.set_history(3_600_000);
        let now = T0 + 10 * 3_600_000;
        let pts = svc.series(Metric::Cpu, now, 2 * 3_600_000, 1_000).unwrap();
        assert_eq!(pts.len(), 3_601);
        assert_eq!(pts[0].timestamp_ms, now - 3_600_000);
        assert!(svc.history.runs.len() <= 3_601);
    }

    #[test]
    fn a_steady_service_keeps_a_few_runs_and_a_queue_is_kept_step_by_step() {
        // A flat load of 150 on two replicas of 100: no queue, nothing changes.
        let mut cfg = config(150.0, 0.0, 2);
        cfg.load.diurnal_amplitude = 0.0;
        cfg.load.spikes.clear();
        let mut svc = SimulatedService::new("web", &cfg, Path::new("."), T0).unwrap();
        svc.set_history(3_600_000);
        let now = T0 + 3_600_000;
        let steady = svc.series(Metric::Cpu, now, 600_000, 1_000).unwrap();
        assert_eq!(svc.history.runs.len(), 1);
        assert!(steady.iter().all(|p| (p.value - 75.0).abs() < 1e-9));

        // Down to one replica: the queue grows by 50 each second from the
        // step after, and every one of those steps is kept.
        svc.set_replicas(now, 1);
        let later = now + 10_000;
        let queue = svc
            .series(Metric::QueueDepth, later, 10_000, 1_000)
            .unwrap();
        let depths: Vec<f64> = queue.iter().map(|p| p.value).collect();
        let expected: Vec<f64> = (0..=10).map(|i| f64::from((i - 1).max(0)) * 50.0).collect();
        assert_eq!(depths, expected);
        assert!(svc.history.runs.len() >= 10, "{}", svc.history.runs.len());

        // Enough replicas to drain it: once empty, the steps share one run
        // again, however long the service runs.
        svc.set_replicas(later, 20);
        assert_eq!(svc.sample(later + 600_000).queue_depth, 0.0);
        let runs = svc.history.runs.len();
        assert_eq!(svc.sample(later + 1_200_000).queue_depth, 0.0);
        assert_eq!(svc.history.runs.len(), runs);
    }

    #[test]
    fn bad_windows_are_refused() {
        let mut svc = service(100.0, 0.0, 2);
        for (window, step) in [(60_000, 0), (-1, 1_000), (86_400_000, 1_000)] {
            let err = svc.series(Metric::Cpu, T0, window, step).unwrap_err();
            assert_eq!(err.kind(), "bad_query", "{err}");
        }
        // The config's limit (and Prometheus's): window / step at most
        // 11,000, so a window of exactly that many steps is answered.
        svc.series(Metric::Cpu, T0, 11_000_000, 1_000).unwrap();
        let err = svc.series(Metric::Cpu, T0, 11_001_000, 1_000).unwrap_err();
        assert!(err.to_string().contains("11001 steps"), "{err}");
    }

    #[test]
    fn faults_are_per_metric_or_service_wide() {
        let mut svc = service(100.0, 0.0, 2);
        svc.set_metric_fault(Metric::Cpu, Some(MetricFault::NotFinite));
        assert_eq!(svc.metric_fault(Metric::Cpu), Some(MetricFault::NotFinite));
        assert_eq!(svc.metric_fault(Metric::Load), None);
        svc.set_metric_outage(Some(MetricFault::Unreachable));
        assert_eq!(
            svc.metric_fault(Metric::Load),
            Some(MetricFault::Unreachable)
        );
        svc.set_metric_outage(None);
        svc.set_metric_fault(Metric::Cpu, None);
        assert_eq!(svc.metric_fault(Metric::Cpu), None);
        svc.set_actuator_fault(Some(ActuatorFault::ScaleFails));
        assert_eq!(svc.actuator_fault(), Some(ActuatorFault::ScaleFails));
    }

    #[test]
    fn zero_capacity_is_refused() {
        let mut cfg = config(100.0, 0.0, 1);
        cfg.capacity_per_replica = 0.0;
        let err = SimulatedService::new("api", &cfg, Path::new("."), T0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "simulation `api`: capacity_per_replica: must be a number > 0, not 0"
        );
    }
}
