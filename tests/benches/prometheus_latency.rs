//! Benchmark (issue 5): time from an exporter's value change to the
//! actuator's call, through a real Prometheus scraping every second and the
//! real daemon ticking every second.
//!
//! ```text
//! cargo bench -p scalewise-tests --bench prometheus_latency [-- --trials 20]
//! ```
//!
//! Four exporters, one Prometheus scraping them every second and, per
//! trial, a fresh daemon with one scaler (1 s interval, the real `target-tracking`
//! module, a simulated target whose replicas are ready at once, no
//! stabilisation or rate limit in the way). Each trial starts the daemon,
//! waits for it to hold on a queue of 20 (2 replicas), raises the queue to
//! 40 at T0 and polls the simulated target every 2 ms for the actuator's
//! call (4 replicas).
//!
//! The latency depends on three phases within the second: when the value
//! changes, when Prometheus scrapes (fixed per target: hence four exporters,
//! taken in turn) and when the scaler ticks (fixed by its query: scalers tick
//! on a grid, see `scalewise::daemon::tick_offset_ms`). The trials spread
//! the change over the second and take the exporters in turn, so the figures
//! cover the phases rather than one lucky alignment; each line shows the
//! phases it ran with. The report gives min / median / p90 / max
//! of the latency and of its two parts: change → start of the tick that
//! acted on it, and tick start → actuator call. The goal is ≤ 3 s (HPA
//! averages ~27 s).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use scalewise::clock::{Clock, wall_clock_ms};
use scalewise_tests::prometheus::{Exporter, PrometheusServer};
use scalewise_tests::running::{RunningDaemon, queue_scaler, simulation};

const SERIES: &str = "bench_queue";
/// Exporters, each scraped at its own phase of the second.
const EXPORTERS: usize = 4;
const SCALER: &str = "bench";
const GOAL: Duration = Duration::from_secs(3);
/// No trial should take anywhere near this long.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// One trial's figures.
#[derive(Debug, Clone, Copy)]
struct Trial {
    /// Change → the actuator's call (seen on the simulated target).
    total: Duration,
    /// Change → the start of the tick that scaled.
    to_tick: Duration,
    /// Where in the second the daemon's scaler ticked.
    tick_phase_ms: i64,
}

fn main() -> anyhow::Result<()> {
    let trials = trials_from_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(trials))
}

/// `--trials N` (default 20); other arguments (cargo passes `--bench`) are ignored.
fn trials_from_args() -> anyhow::Result<usize> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--trials") {
        Some(i) => {
            let n: usize = args
                .get(i + 1)
                .context("--trials needs a number")?
                .parse()
                .context("--trials needs a number")?;
            if n == 0 {
                bail!("--trials must be at least 1");
            }
            Ok(n)
        }
        None => Ok(20),
    }
}

async fn run(trials: usize) -> anyhow::Result<()> {
    let mut exporters = Vec::with_capacity(EXPORTERS);
    let mut builder = PrometheusServer::builder().scrape_interval(Duration::from_secs(1));
    for k in 0..EXPORTERS {
        let exporter = Exporter::start()?;
        exporter.set(SERIES, 20.0);
        builder = builder.scrape(&format!("bench-{k}"), exporter.addr());
        exporters.push(exporter);
    }
    let prometheus = builder.start().await?;
    let mut scrape_phases_ms = Vec::with_capacity(EXPORTERS);
    for k in 0..EXPORTERS {
        scrape_phases_ms.push(scrape_phase_ms(&prometheus, &selector(k)).await?);
    }

    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "Prometheus source latency ({profile} build): exporter change → actuator call, \
         1 s scrape interval, 1 s scaler interval, {trials} trials"
    );
    println!("Phases are ms into the wall-clock second.");
    println!("trial  scrape_phase  tick_phase  change_phase  change→tick_ms  change→actuator_ms");
    let mut results = Vec::with_capacity(trials);
    for i in 0..trials {
        let k = i % EXPORTERS;
        // The daemon's start is spread evenly over the second, the change
        // by the golden ratio, so the pairs do not line up.
        let start_phase_ms = (i * 1000 / trials) as i64;
        let change_phase_ms = ((i as f64 * 0.618_034).fract() * 1000.0) as i64;
        let trial = one_trial(
            &config(prometheus.url(), &selector(k)),
            &exporters[k],
            &prometheus,
            &selector(k),
            start_phase_ms,
            change_phase_ms,
        )
        .await?;
        println!(
            "{i:>5}  {:>12}  {:>10}  {change_phase_ms:>12}  {:>14}  {:>18}",
            scrape_phases_ms[k],
            trial.tick_phase_ms,
            trial.to_tick.as_millis(),
            trial.total.as_millis()
        );
        results.push(trial);
    }

    let total: Vec<Duration> = results.iter().map(|t| t.total).collect();
    let to_tick: Vec<Duration> = results.iter().map(|t| t.to_tick).collect();
    let tick_to_call: Vec<Duration> = results
        .iter()
        .map(|t| t.total.saturating_sub(t.to_tick))
        .collect();
    println!();
    println!("                     min  median     p90     max");
    for (name, values) in [
        ("change → actuator", &total),
        ("change → tick", &to_tick),
        ("tick → actuator", &tick_to_call),
    ] {
        let s = Summary::of(values);
        println!(
            "{name:<18} {:>6} {:>7} {:>7} {:>7}   ms",
            s.min.as_millis(),
            s.median.as_millis(),
            s.p90.as_millis(),
            s.max.as_millis()
        );
    }
    let worst = Summary::of(&total).max;
    println!(
        "goal ≤ {} s: {} (worst trial {} ms)",
        GOAL.as_secs(),
        if worst <= GOAL { "met" } else { "NOT met" },
        worst.as_millis()
    );
    Ok(())
}

/// The `k`-th exporter's queue.
fn selector(k: usize) -> String {
    format!("{SERIES}{{job=\"bench-{k}\"}}")
}

/// The daemon's config: one scaler on the queue `selector`, scaling up with
/// nothing (stabilisation, rate limits) in the way.
fn config(url: &str, selector: &str) -> String {
    format!(
        r#"policy_dir = "policies"

[sources.prom]
kind = "prometheus"
url = "{url}"
timeout = "2s"

{simulation}{scaler}[scalers.behavior.scale_up]
stabilization_window = "0s"
limits = [{{ pods = 100, period = "1s" }}]
"#,
        simulation = simulation(SCALER, 2),
        scaler = queue_scaler(SCALER, "prom", &format!("sum({selector})")),
    )
}

/// Where in the second Prometheus scrapes the series `selector`, from the
/// timestamps of its samples.
async fn scrape_phase_ms(prometheus: &PrometheusServer, selector: &str) -> anyhow::Result<i64> {
    let seconds = prometheus
        .wait_for_value(&format!("timestamp({selector})"), TRIAL_TIMEOUT, |_| true)
        .await?;
    Ok(((seconds * 1000.0).round() as i64).rem_euclid(1000))
}

/// Sleeps until `phase_ms` into the next wall-clock second.
async fn sleep_to_phase(phase_ms: i64) {
    let now = wall_clock_ms();
    let at = (now / 1000 + 1) * 1000 + phase_ms;
    tokio::time::sleep(Duration::from_millis((at - now) as u64)).await;
}

/// Starts a daemon at `start_phase_ms` into a second, waits for it to hold
/// on 20, raises the queue at `change_phase_ms` into a second and times the
/// scale-out; then stops the daemon and puts the queue back.
async fn one_trial(
    config: &str,
    exporter: &Exporter,
    prometheus: &PrometheusServer,
    selector: &str,
    start_phase_ms: i64,
    change_phase_ms: i64,
) -> anyhow::Result<Trial> {
    sleep_to_phase(start_phase_ms).await;
    let mut daemon = RunningDaemon::start(config, Clock::system()).await?;
    let settled = daemon
        .wait_for_record(SCALER, "a hold on 20", TRIAL_TIMEOUT, |r| {
            r.evaluations.first().is_some_and(|e| {
                e.context
                    .metrics
                    .first()
                    .and_then(|m| m.points.last())
                    .is_some_and(|p| p.value == 20.0)
            })
        })
        .await?;
    let tick_phase_ms = settled.time_ms.rem_euclid(1000);

    sleep_to_phase(change_phase_ms).await;
    let changed = Instant::now();
    let changed_wall_ms = wall_clock_ms();
    exporter.set(SERIES, 40.0);
    let total = wait_for_replicas(&daemon, 4, changed).await?;
    let scaled = daemon
        .wait_for_record(SCALER, "the scale-out's record", TRIAL_TIMEOUT, |r| {
            r.time_ms >= changed_wall_ms && r.target.current == 2 && r.desired == 4
        })
        .await?;
    let to_tick = Duration::from_millis((scaled.time_ms - changed_wall_ms).max(0) as u64);
    daemon.stop().await?;

    exporter.set(SERIES, 20.0);
    prometheus
        .wait_for_value(selector, TRIAL_TIMEOUT, |v| v == 20.0)
        .await?;
    Ok(Trial {
        total,
        to_tick,
        tick_phase_ms,
    })
}

/// Polls the simulated target every 2 ms until it is asked for `replicas`;
/// returns the time since `since`.
async fn wait_for_replicas(
    daemon: &RunningDaemon,
    replicas: u32,
    since: Instant,
) -> anyhow::Result<Duration> {
    loop {
        if daemon.replicas(SCALER)?.0 == replicas {
            return Ok(since.elapsed());
        }
        if since.elapsed() > TRIAL_TIMEOUT {
            bail!("the target was not scaled to {replicas} within {TRIAL_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Order statistics of a set of durations.
struct Summary {
    min: Duration,
    median: Duration,
    p90: Duration,
    max: Duration,
}

impl Summary {
    fn of(values: &[Duration]) -> Summary {
        let mut sorted = values.to_vec();
        sorted.sort();
        // Nearest rank.
        let rank =
            |q: f64| sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
        Summary {
            min: sorted[0],
            median: rank(0.5),
            p90: rank(0.9),
            max: sorted[sorted.len() - 1],
        }
    }
}
