//! End to end: a real Prometheus (Debian's `prometheus`) scraping exporters
//! the tests control → the real daemon (the real `target-tracking` and
//! `threshold` modules, a real journal, the HTTP API) → a simulated target
//! as the actuator.
//!
//! One Prometheus serves every test of this file: it scrapes two exporters
//! every second (one of them is stopped by a test) and holds half an hour of
//! backfilled history, one sample a second, three hours ago. Each test uses
//! its own series and its own daemon. Everything is waited for by polling.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use scalewise::clock::{Clock, wall_clock_ms};
use scalewise::journal::{ActuationRecord, EvaluationOutcome, TickRecord};
use scalewise::policy::{Decision, Point};
use scalewise_tests::prometheus::{Exporter, PrometheusServer};
use scalewise_tests::running::{RunningDaemon, queue_scaler, simulation};
use scalewise_tests::stub_http::CountingProxy;
use scalewise_tests::wait_until;
use tokio::sync::OnceCell;

/// Long enough for a loaded 2-core CI machine; the waits end as soon as
/// their condition holds.
const WAIT: Duration = Duration::from_secs(30);

/// Backfilled history: `sw_e2e_history` = seconds since its start, one
/// sample a second, for this long.
const HISTORY_S: i64 = 1800;

struct Live {
    prometheus: PrometheusServer,
    /// Scraped as job `app`; tests add their own series.
    exporter: Exporter,
    /// Scraped as job `doomed`; one test stops it.
    doomed: Mutex<Exporter>,
    /// Where the backfilled history starts, in whole seconds.
    history_start_s: i64,
}

static LIVE: OnceCell<Live> = OnceCell::const_new();

async fn live() -> &'static Live {
    LIVE.get_or_init(|| async {
        let exporter = Exporter::start().expect("exporter");
        let doomed = Exporter::start().expect("exporter");
        exporter.set("sw_e2e_up", 1.0);
        // Three hours ago: inside the retention, clear of the live head block.
        let history_start_s = (wall_clock_ms() / 1000 - 3 * 3600) / 60 * 60;
        let mut history = String::from("# TYPE sw_e2e_history gauge\n");
        for i in 0..=HISTORY_S {
            history.push_str(&format!("sw_e2e_history {i} {}\n", history_start_s + i));
        }
        history.push_str("# EOF\n");
        let prometheus = PrometheusServer::builder()
            .scrape("app", exporter.addr())
            .scrape("doomed", doomed.addr())
            .backfill(&history)
            .start()
            .await
            .expect("a real Prometheus server (is it installed?)");
        prometheus
            .wait_for_value("sw_e2e_up", WAIT, |v| v == 1.0)
            .await
            .expect("the first scrape");
        Live {
            prometheus,
            exporter,
            doomed: Mutex::new(doomed),
            history_start_s,
        }
    })
    .await
}

/// The decision of the record's `i`-th policy, if it decided.
fn decision(record: &TickRecord, i: usize) -> Option<&Decision> {
    match &record.evaluations.get(i)?.outcome {
        EvaluationOutcome::Decided { decision } => Some(decision),
        EvaluationOutcome::Failed { .. } => None,
    }
}

/// The points the record's `i`-th policy was given for `metric`.
fn points<'r>(record: &'r TickRecord, i: usize, metric: &str) -> &'r [Point] {
    record.evaluations[i]
        .context
        .metrics
        .iter()
        .find(|m| m.name == metric)
        .map(|m| m.points.as_slice())
        .unwrap_or_default()
}

fn latest(record: &TickRecord, i: usize, metric: &str) -> Option<f64> {
    points(record, i, metric).last().map(|p| p.value)
}

fn is_done(record: &TickRecord) -> bool {
    matches!(record.actuation, ActuationRecord::Done { .. })
}

#[tokio::test]
async fn load_rising_in_prometheus_scales_the_simulated_target_out() {
    let live = live().await;
    live.exporter.set("sw_e2e_out_queue", 20.0);
    let config = format!(
        r#"policy_dir = "policies"

[sources.prom]
kind = "prometheus"
url = "{url}"
timeout = "2s"

{web}{scaler}"#,
        url = live.prometheus.url(),
        web = simulation("web", 2),
        scaler = queue_scaler("web", "prom", "sum(sw_e2e_out_queue)"),
    );
    let mut daemon = RunningDaemon::start(&config, Clock::system())
        .await
        .unwrap();

    // 20 queued for 2 replicas at 10 each: on target, hold.
    let steady = daemon
        .wait_for_record("web", "a hold on a queue of 20", WAIT, |r| {
            latest(r, 0, "queue") == Some(20.0)
        })
        .await
        .unwrap();
    assert_eq!(decision(&steady, 0).unwrap().desired, None);
    assert_eq!(daemon.replicas("web").unwrap(), (2, 2));

    let raised = Instant::now();
    live.exporter.set("sw_e2e_out_queue", 60.0);
    let scaled = daemon
        .wait_for_record("web", "a scale-out", WAIT, is_done)
        .await
        .unwrap();
    eprintln!(
        "exporter change → actuator call: {:?} (tick at {} ms)",
        raised.elapsed(),
        scaled.time_ms
    );
    // The policy read 60 through Prometheus and asked for 6; the envelope
    // (HPA's default: +4 pods or +100% per 15 s) let it through.
    assert_eq!(latest(&scaled, 0, "queue"), Some(60.0));
    assert_eq!(decision(&scaled, 0).unwrap().desired, Some(6));
    assert_eq!((scaled.target.current, scaled.desired), (2, 6));
    assert!(
        scaled.metric_errors.is_empty(),
        "{:?}",
        scaled.metric_errors
    );
    assert_eq!(daemon.replicas("web").unwrap().0, 6);
    let done = daemon
        .host_metric(r#"scalewise_actuations_total{scaler="web",result="done"}"#)
        .await
        .unwrap();
    assert_eq!(done, Some(1.0));
    // Nothing scaled before the change reached it.
    let records = daemon.records("web").await.unwrap();
    let first_scale = records.iter().position(TickRecord::is_scale).unwrap();
    assert_eq!(records[first_scale].id, scaled.id);
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn a_stopped_exporter_blocks_scale_in_and_is_reported_but_scale_out_goes_on() {
    let live = live().await;
    live.doomed.lock().unwrap().set("sw_e2e_doomed_queue", 20.0);
    live.exporter.set("sw_e2e_latency", 0.3);
    // "web" reads a queue from the exporter that will stop and a latency
    // from the one that stays; "control" reads only the latency, to show
    // that the latency alone would scale in. Scale-down is not stabilised,
    // so nothing but the missing metric can stop it.
    let scaler = |name: &str, with_queue: bool| {
        let queue = if with_queue {
            "[scalers.metrics.queue]\nsource = \"prom\"\nquery = \"sum(sw_e2e_doomed_queue)\"\n\n\
             [[scalers.policies]]\nmodule = \"target-tracking\"\n\
             params = { metric = \"queue\", target = 10.0, metric_type = \"total\" }\n\n"
        } else {
            ""
        };
        format!(
            r#"[[scalers]]
name = "{name}"
interval = "1s"
min = 1
max = 10
target = {{ kind = "simulator", service = "{name}" }}

[scalers.metrics.latency]
source = "prom"
query = "max(sw_e2e_latency)"

{queue}[[scalers.policies]]
module = "threshold"
params = {{ metric = "latency", upper = 0.5, lower = 0.1, up_for = "0s", down_for = "0s" }}

[scalers.behavior.scale_down]
stabilization_window = "0s"

"#
        )
    };
    let config = format!(
        "policy_dir = \"policies\"\n\n[sources.prom]\nkind = \"prometheus\"\nurl = \"{}\"\n\n{}{}{}{}",
        live.prometheus.url(),
        simulation("web", 2),
        simulation("control", 2),
        scaler("web", true),
        scaler("control", false),
    );
    let mut daemon = RunningDaemon::start(&config, Clock::system())
        .await
        .unwrap();
    let threshold = 1; // web's second policy

    let both = daemon
        .wait_for_record("web", "both metrics read", WAIT, |r| {
            latest(r, 0, "queue") == Some(20.0) && latest(r, 0, "latency") == Some(0.3)
        })
        .await
        .unwrap();

    let stopped = Instant::now();
    live.doomed.lock().unwrap().stop();
    // Only records after both metrics were read: the first ticks ran before
    // Prometheus had scraped the latency at all. The first tick that finds
    // the queue's series marked stale by Prometheus (on a busy machine a
    // tick may first find its last sample too old, and a late scrape may
    // leave the latency briefly too old as well: those are not this check).
    let failing = daemon
        .wait_for_record("web", "the queue to fail", WAIT, |r| {
            r.id > both.id
                && r.metric_errors
                    .iter()
                    .any(|f| f.metric == "queue" && f.kind == "empty")
                && r.metric_errors.iter().all(|f| f.metric == "queue")
        })
        .await
        .unwrap();
    eprintln!(
        "a stopped exporter failed its metric after {:?}",
        stopped.elapsed()
    );
    // Prometheus marked the stopped target's series stale: no data.
    assert_eq!(
        failing.metric_errors.len(),
        1,
        "{:?}",
        failing.metric_errors
    );
    let failure = &failing.metric_errors[0];
    assert_eq!(
        (failure.metric.as_str(), failure.kind.as_str()),
        ("queue", "empty")
    );
    assert_eq!(failure.error, "query returned no data");
    // The policy reading it could not decide; the one reading latency did.
    assert!(matches!(
        &failing.evaluations[0].outcome,
        EvaluationOutcome::Failed { kind, error } if kind == "policy_error" && error.contains("\"queue\" could not be read")
    ));
    // It abstained (no vote), which the record keeps for `explain`.
    assert!(
        failing.evaluations[0].abstained,
        "{:?}",
        failing.evaluations
    );
    assert!(
        !failing.evaluations[1].abstained,
        "{:?}",
        failing.evaluations
    );
    assert_eq!(decision(&failing, threshold).unwrap().desired, None);

    // Latency drops below the threshold: the control scales in...
    live.exporter.set("sw_e2e_latency", 0.05);
    let control = daemon
        .wait_for_record("control", "a scale-in", WAIT, |r| {
            is_done(r) && r.desired < r.target.current
        })
        .await
        .unwrap();
    assert_eq!((control.target.current, control.desired), (2, 1));
    // ...while web, whose threshold policy asks the same, holds: the
    // envelope refuses scale-in while a metric is missing, and says why.
    let blocked = daemon
        .wait_for_record("web", "a blocked scale-in", WAIT, |r| {
            r.id > failing.id && decision(r, threshold).is_some_and(|d| d.desired == Some(1))
        })
        .await
        .unwrap();
    assert_eq!(blocked.proposal, Some(1));
    assert_eq!(blocked.desired, 2);
    assert_eq!(blocked.actuation, ActuationRecord::None);
    assert_eq!(blocked.metric_errors[0].kind, "empty");
    let step = &blocked.envelope[0];
    assert_eq!(
        (step.rule.as_str(), step.from, step.to),
        ("missing-metrics", 1, 2),
        "{:?}",
        blocked.envelope
    );
    assert!(
        step.reason
            .contains("scale-in blocked: metric queue unavailable (query returned no data)"),
        "{}",
        step.reason
    );

    // Latency climbs above the threshold: scale-out goes on without the queue.
    live.exporter.set("sw_e2e_latency", 0.9);
    let out = daemon
        .wait_for_record("web", "a scale-out", WAIT, is_done)
        .await
        .unwrap();
    assert_eq!((out.target.current, out.desired), (2, 3));
    assert_eq!(out.metric_errors[0].metric, "queue");
    assert_eq!(daemon.replicas("web").unwrap().0, 3);

    // Web never scaled in.
    let records = daemon.records("web").await.unwrap();
    assert!(
        records.iter().all(|r| r.desired >= r.target.current),
        "web scaled in"
    );
    let missing = records
        .iter()
        .filter(|r| r.metric_errors.iter().any(|f| f.kind == "empty"))
        .count();

    // Each failed fetch is counted in the host's metrics, by source and kind.
    let counted = daemon
        .host_metric(r#"scalewise_metric_errors_total{source="prom",kind="empty"}"#)
        .await
        .unwrap()
        .expect("the metric error is exposed");
    assert!(counted >= missing as f64, "{counted} < {missing}");
    assert!(counted >= 3.0, "{counted}");
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn a_range_query_policy_sees_the_window_prometheus_has() {
    let live = live().await;
    let start_ms = live.history_start_s * 1000;
    // The daemon lives twenty minutes into the backfilled history: its
    // clock starts there and runs at real speed.
    let clock = Clock::starting_at(start_ms + 1_200_000, 1.0);
    let config = format!(
        r#"policy_dir = "policies"

[sources.prom]
kind = "prometheus"
url = "{url}"

{history}
[[scalers]]
name = "history"
interval = "1s"
min = 1
max = 10
target = {{ kind = "simulator", service = "history" }}

[scalers.metrics.ramp]
source = "prom"
query = "sw_e2e_history"
window = "1m"
step = "5s"

[[scalers.policies]]
module = "threshold"
params = {{ metric = "ramp", upper = 10.0, lower = 5.0, up_for = "1m", down_for = "5m" }}
"#,
        url = live.prometheus.url(),
        history = simulation("history", 2),
    );
    let mut daemon = RunningDaemon::start(&config, clock).await.unwrap();
    let record = daemon
        .wait_for_record("history", "a decision", WAIT, |r| decision(r, 0).is_some())
        .await
        .unwrap();
    daemon.stop().await.unwrap();

    // The window ends at the tick's whole second, one point every 5 s:
    // 60 / 5 + 1 points, oldest first, each the value Prometheus holds then.
    let end_ms = record.time_ms.div_euclid(1000) * 1000;
    let expected: Vec<Point> = (0..=12)
        .map(|k| {
            let t = end_ms - 60_000 + k * 5_000;
            Point {
                timestamp_ms: t,
                value: ((t - start_ms) / 1000) as f64,
            }
        })
        .collect();
    let got = points(&record, 0, "ramp");
    assert_eq!(got, expected.as_slice());

    // The same as Prometheus answers the range query itself.
    let answer = live
        .prometheus
        .client()
        .query_range("sw_e2e_history", end_ms / 1000 - 60, end_ms / 1000, 5.0)
        .get()
        .await
        .unwrap();
    let matrix = answer.data().as_matrix().unwrap();
    assert_eq!(matrix.len(), 1);
    let theirs: Vec<Point> = matrix[0]
        .samples()
        .iter()
        .map(|s| Point {
            timestamp_ms: (s.timestamp() * 1000.0).round() as i64,
            value: s.value(),
        })
        .collect();
    assert_eq!(got, theirs.as_slice());

    // Above 10 for the whole minute: the policy saw it and scaled out.
    assert_eq!(decision(&record, 0).unwrap().desired, Some(3));
    assert!(is_done(&record), "{:?}", record.actuation);
}

#[tokio::test]
async fn scalers_sharing_a_query_share_one_fetch_per_tick() {
    let live = live().await;
    live.exporter.set("sw_e2e_shared", 20.0);
    let proxy = CountingProxy::start(live.prometheus.url()).await.unwrap();
    let scaler = |name: &str| queue_scaler(name, "proxied", "sum(sw_e2e_shared)");
    let config = format!(
        "policy_dir = \"policies\"\n\n[sources.proxied]\nkind = \"prometheus\"\nurl = \"{}\"\n\n{}{}{}{}",
        proxy.url(),
        simulation("checkout", 2),
        simulation("payments", 2),
        scaler("checkout"),
        scaler("payments"),
    );
    let mut daemon = RunningDaemon::start(&config, Clock::system())
        .await
        .unwrap();
    wait_until(
        "six ticks of each scaler that read the queue",
        WAIT,
        || async {
            let mut read = Vec::new();
            for name in ["checkout", "payments"] {
                let records = daemon.records(name).await.map_err(|e| e.to_string())?;
                read.push(
                    records
                        .iter()
                        .filter(|r| r.metric_errors.is_empty())
                        .count(),
                );
            }
            if read.iter().all(|&n| n >= 6) {
                Ok(())
            } else {
                Err(format!("{read:?}"))
            }
        },
    )
    .await
    .unwrap();
    daemon.stop().await.unwrap();

    let checkout = daemon.records("checkout").await.unwrap();
    let payments = daemon.records("payments").await.unwrap();
    let seconds = |records: &[TickRecord]| -> BTreeSet<i64> {
        records.iter().map(|r| r.time_ms.div_euclid(1000)).collect()
    };
    let (a, b) = (seconds(&checkout), seconds(&payments));
    let asked: BTreeSet<i64> = a.union(&b).copied().collect();
    // One request per second asked about, however many scalers asked (and
    // one freshness query with it).
    let counts = proxy.counts();
    assert_eq!(proxy.count("sum(sw_e2e_shared)"), asked.len(), "{counts:?}");
    assert_eq!(
        proxy.count("max(timestamp(sw_e2e_shared))"),
        asked.len(),
        "{counts:?}"
    );
    // The daemon ticks scalers that share a query together (rather than at
    // offsets spread by their names), so they ask about the same seconds:
    // about half the requests two separate schedules would make. (A tick
    // that starts a millisecond either side of a second's boundary may
    // split one pair.)
    let together = checkout
        .iter()
        .filter(|r| payments.iter().any(|p| (p.time_ms - r.time_ms).abs() < 100))
        .count();
    assert!(
        together + 1 >= checkout.len().min(payments.len()),
        "only {together} of {} ticks were together: {:?} vs {:?}",
        checkout.len(),
        checkout.iter().map(|r| r.time_ms).collect::<Vec<_>>(),
        payments.iter().map(|r| r.time_ms).collect::<Vec<_>>()
    );
    let shared = a.intersection(&b).count();
    assert!(
        shared + 2 >= a.len().min(b.len()),
        "only {shared} of {} and {} seconds shared",
        a.len(),
        b.len()
    );
    let ticks = checkout.len() + payments.len();
    assert!(
        asked.len() * 2 <= ticks + 4,
        "{} requests for {ticks} ticks",
        asked.len()
    );
    eprintln!(
        "{ticks} ticks of two scalers made {} requests for their shared query",
        asked.len()
    );
}

/// A metric that cannot be read is logged once when it starts failing
/// (naming the scaler, the metric, its source and query), not at every
/// tick, and once when it reads again: through `scalewise run`, whose log
/// the test reads. The series is missing from Prometheus at first (an
/// empty answer), then the exporter starts reporting it.
#[tokio::test]
async fn a_failing_metric_is_logged_when_it_starts_and_when_it_ends() {
    use scalewise_tests::daemon_process::queue_daemon_on_prometheus;

    let live = live().await;
    // A scrape that comes late must not make the metric stale (and fail
    // again) just after it reads.
    let (_dir, daemon) = queue_daemon_on_prometheus(
        env!("CARGO_BIN_EXE_scalewise-cli"),
        live.prometheus.url(),
        "",
        "sum(sw_e2e_flaky)",
        "max_age = \"30s\"",
    )
    .unwrap();
    let failing = "A metric cannot be read; no scale-in until it can";
    let reads = "A metric reads again.";
    let ticks = || async {
        let api = daemon.api_addr().ok_or("no API yet")?;
        let history: serde_json::Value =
            reqwest::get(format!("http://{api}/v1/scalers/web/history"))
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
        Ok::<usize, String>(history.as_array().map_or(0, Vec::len))
    };
    wait_until("four ticks without the metric", WAIT, || async {
        match ticks().await? {
            n if n >= 4 => Ok(()),
            n => Err(format!("{n} ticks\n{}", daemon.log())),
        }
    })
    .await
    .unwrap();
    let log = daemon.log();
    assert_eq!(log.matches(failing).count(), 1, "{log}");
    let line = log.lines().find(|l| l.contains(failing)).unwrap();
    for field in [
        "scaler=web",
        "metric=queue",
        "source=prom",
        "sum(sw_e2e_flaky)",
    ] {
        assert!(line.contains(field), "{field}: {line}");
    }
    assert!(!log.contains(reads), "{log}");

    live.exporter.set("sw_e2e_flaky", 3.0);
    wait_until("the metric to read again", WAIT, || async {
        match daemon.log() {
            log if log.contains(reads) => Ok(()),
            log => Err(log),
        }
    })
    .await
    .unwrap();
    let before = ticks().await.unwrap();
    wait_until("three more ticks", WAIT, || async {
        match ticks().await? {
            n if n >= before + 3 => Ok(()),
            n => Err(format!("{n} ticks")),
        }
    })
    .await
    .unwrap();
    let log = daemon.log();
    assert_eq!(log.matches(failing).count(), 1, "{log}");
    assert_eq!(log.matches(reads).count(), 1, "{log}");
    daemon.stop().unwrap();
}
