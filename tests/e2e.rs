//! The control loop end to end: the real daemon built from a config, the
//! bundled policy modules (and fixtures) run by the real runtime, the real
//! journal on disk, simulated targets. Most tests step the scalers on a
//! manual clock ([`Harness`]); the one about a slow policy not delaying
//! other scalers runs the daemon's own scheduler in real time.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use scalewise::clock::Clock;
use scalewise::config::{Config, Mode};
use scalewise::daemon::{Daemon, tick_offset_ms};
use scalewise::journal::{ActuationRecord, EvaluationOutcome, TickRecord};
use scalewise::simulator::MetricFault;
use scalewise_tests::artifacts;
use scalewise_tests::e2e::{
    Harness, MINUTE, SECOND, T0, check_behavior, check_envelope_steps, scale_events, story,
};
use tokio::sync::{Mutex, MutexGuard};
use tower::ServiceExt;

/// The tests of this file one at a time: the real-time one measures tick
/// lag, which the CPU-heavy stepped runs would disturb on a 2-core machine.
static SERIAL: Mutex<()> = Mutex::const_new(());

async fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// The bundled policies under their module names.
fn bundled() -> tempfile::TempDir {
    scalewise_tests::policy_dir(&[
        ("target-tracking", artifacts::TARGET_TRACKING),
        ("threshold", artifacts::THRESHOLD),
    ])
}

/// Asserts the journal of each named scaler obeys its config's bounds and
/// behaviour, and every record's envelope steps add up.
async fn assert_rules_hold(h: &Harness, config: &Config) {
    for scaler in &config.scalers {
        let scaler = scaler.get_ref();
        let name = scaler.name.get_ref();
        let records = h.journal_of(name).await;
        assert!(!records.is_empty(), "{name} has records");
        let problems = check_behavior(
            &records,
            &scaler.behavior,
            *scaler.min.get_ref(),
            *scaler.max.get_ref(),
        );
        assert!(
            problems.is_empty(),
            "{name} broke its behaviour: {problems:#?}\nstory: {}",
            story(&records)
        );
        let problems = check_envelope_steps(&records);
        assert!(problems.is_empty(), "{name}: {problems:#?}");
    }
}

/// The highest and lowest replica count asked for by ticks in `[from, to)`
/// (seconds after the start).
fn range_between(records: &[TickRecord], from_s: i64, to_s: i64) -> (u32, u32) {
    let counts: Vec<u32> = records
        .iter()
        .filter(|r| (T0 + from_s * SECOND..T0 + to_s * SECOND).contains(&r.time_ms))
        .map(|r| r.desired)
        .collect();
    assert!(!counts.is_empty(), "ticks between {from_s}s and {to_s}s");
    (*counts.iter().max().unwrap(), *counts.iter().min().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_scales_out_for_the_spike_and_back_in_within_its_rules() {
    let _serial = serial().await;
    let policies = bundled();
    let state = tempfile::tempdir().unwrap();
    let config = Config::demo(policies.path(), &state.path().join("journal.db"));
    config.validate().expect("the demo config is valid");
    let mut h = Harness::build(config.clone(), T0).await;
    h.run_until(T0 + 30 * MINUTE).await;

    let web = h.journal_of("web").await;
    let worker = h.journal_of("worker").await;
    assert_eq!(
        web.len(),
        121,
        "a tick every 15s for 30 minutes, both ends included"
    );
    assert_eq!(worker.len(), 121);
    println!("web: {}", story(&web));
    println!("worker: {}", story(&worker));

    // web: the spike (8m-12m) doubles the load; web scales out for it, holds
    // for the 5m scale-down stabilisation window after it, then scales in.
    let (before_spike, _) = range_between(&web, 6 * 60, 8 * 60);
    let (at_spike, _) = range_between(&web, 8 * 60, 12 * 60 + 30);
    let (_, after) = range_between(&web, 25 * 60, 30 * 60 + 1);
    assert!(
        at_spike >= before_spike + 4,
        "web scaled out for the spike: {before_spike} before, {at_spike} during; {}",
        story(&web)
    );
    assert!(
        after + 4 <= at_spike,
        "web scaled back in after the spike: {at_spike} during, {after} at the end; {}",
        story(&web)
    );
    let events = scale_events(&web);
    let last_up = events
        .iter()
        .filter(|e| e.to > e.from && e.time_ms < T0 + 13 * MINUTE)
        .map(|e| e.time_ms)
        .max()
        .expect("web scaled up during the spike");
    let first_down = events
        .iter()
        .find(|e| e.to < e.from && e.time_ms > last_up)
        .expect("web scaled down after the spike");
    assert!(
        first_down.time_ms >= last_up + 5 * MINUTE,
        "the first scale-in waits for the spike's recommendations to leave the 5m window: {}",
        story(&web)
    );

    // worker: its burst (15m-19m) fills the queue; threshold adds 2 at a
    // time, then it sheds one at a time, no faster than its cooldown.
    let (before_burst, _) = range_between(&worker, 10 * 60, 15 * 60);
    let (at_burst, _) = range_between(&worker, 15 * 60, 21 * 60);
    let (_, end) = range_between(&worker, 28 * 60, 30 * 60 + 1);
    assert!(
        at_burst >= before_burst + 2,
        "worker scaled out for its burst: {before_burst} → {at_burst}; {}",
        story(&worker)
    );
    assert!(
        end < at_burst,
        "worker scaled back in: {at_burst} → {end}; {}",
        story(&worker)
    );
    for e in scale_events(&worker) {
        let step = i64::from(e.to) - i64::from(e.from);
        assert!(
            step == 2 || step == -1,
            "worker steps +2/-1: {}",
            story(&worker)
        );
    }

    assert_rules_hold(&h, &config).await;
    // The simulated service ends where the journal says.
    let sim = h.daemon.simulation();
    let last = web.last().unwrap();
    let (replicas, _) = sim.service("web").unwrap().lock().replicas(last.time_ms);
    assert_eq!(replicas, last.desired);
    h.close().await;
}

/// A config of simulated services and scalers, with `{policies}` and
/// `{journal}` to fill in.
fn config_text(template: &str, policies: &Path, journal: &Path) -> String {
    template
        .replace("{policies}", &policies.display().to_string())
        .replace("{journal}", &journal.display().to_string())
}

const FAILING: &str = r#"
policy_dir = "{policies}"

[runtime]
# The looping policy burns this much of a blocking thread at every tick.
timeout = "1s"

[journal]
path = "{journal}"

[simulations.steady]
capacity_per_replica = 100.0
initial_replicas = 4
load = { base = 200.0 }

[simulations.busy]
capacity_per_replica = 100.0
initial_replicas = 2
load = { base = 400.0 }

[simulations.loopy]
capacity_per_replica = 100.0
initial_replicas = 3
load = { base = 1000.0 }

[[scalers]]
name = "steady"
interval = "1s"
min = 1
max = 10
target = { kind = "simulator", service = "steady" }
metrics.cpu = { source = "simulator", query = "cpu" }
policies = [{ module = "target-tracking", params = { metric = "cpu", target = 50.0 } }]

# Target tracking wants 4 (CPU 100% of 2), but the other policy errors: hold.
[[scalers]]
name = "busy"
interval = "1s"
min = 1
max = 10
target = { kind = "simulator", service = "busy" }
metrics.cpu = { source = "simulator", query = "cpu" }
policies = [
  { module = "target-tracking", params = { metric = "cpu", target = 50.0 } },
  { module = "always-errors" },
]

# Spins until the deadline at every tick.
[[scalers]]
name = "loopy"
interval = "1s"
min = 1
max = 10
target = { kind = "simulator", service = "loopy" }
policies = [{ module = "faults", params = { mode = "loop" } }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_policy_holds_its_scaler_and_never_delays_the_others() {
    let _serial = serial().await;
    let policies = scalewise_tests::policy_dir(&[
        ("target-tracking", artifacts::TARGET_TRACKING),
        ("always-errors", artifacts::ALWAYS_ERRORS),
        ("faults", artifacts::FAULTS),
    ]);
    let state = tempfile::tempdir().unwrap();
    let journal = state.path().join("journal.db");
    let text = config_text(FAILING, policies.path(), &journal);
    let config = Config::parse(&text, &state.path().join("failing.toml")).unwrap();

    // The daemon's own scheduler, in real time: the point is concurrency.
    let daemon = Daemon::build(config, Clock::system()).await.unwrap();
    let telemetry = daemon.app_state().telemetry;
    let started = Instant::now();
    daemon
        .run(None, tokio::time::sleep(Duration::from_millis(6_500)))
        .await
        .unwrap();
    let ran = started.elapsed();

    let reader = scalewise::journal::Journal::open_read_only(&journal).unwrap();
    let of = |name: &str| {
        reader
            .query_blocking(&scalewise::journal::Query::scaler(name, 1000))
            .unwrap()
    };
    let (steady, busy, loopy) = (of("steady"), of("busy"), of("loopy"));

    // The looping policy timed out at every tick, and its scaler held.
    assert!(loopy.len() >= 3, "{} loopy ticks", loopy.len());
    for r in &loopy {
        let EvaluationOutcome::Failed { kind, .. } = &r.evaluations[0].outcome else {
            panic!("the loop answered: {r:?}")
        };
        assert_eq!(kind, "timeout");
        assert_eq!((r.desired, r.actuation.clone()), (3, ActuationRecord::None));
    }

    // One failing policy of two: the scaler holds although the other
    // policy wants 4, and the journal says why.
    assert!(busy.len() >= 5, "{} busy ticks", busy.len());
    for r in &busy {
        assert_eq!(r.proposal, Some(4), "target tracking still answered");
        let EvaluationOutcome::Failed { kind, error } = &r.evaluations[1].outcome else {
            panic!("always-errors answered: {r:?}")
        };
        assert_eq!(kind, "policy_error");
        assert!(error.contains("always-errors refuses to decide"), "{error}");
        assert_eq!(r.desired, 2, "held at the current count");
        assert_eq!(
            r.envelope.last().map(|s| s.rule.as_str()),
            Some("policy-failed")
        );
    }

    // The healthy scaler ticked on schedule all along: every tick started
    // close to its slot, never a timeout's length late, and none was skipped.
    let offset = tick_offset_ms("steady", 1_000);
    let lags: Vec<i64> = steady
        .iter()
        .map(|r| (r.time_ms - offset).rem_euclid(1_000))
        .collect();
    // (Bounds with room for a CI machine that is busy with other tests.)
    assert!(
        lags.iter().all(|&lag| lag < 500),
        "steady's ticks were delayed (ms late): {lags:?}"
    );
    // Counted over the run until the stop, not the shutdown after it,
    // which waits for a loopy tick in progress.
    let expected = 6_500 / 1_000;
    assert!(
        steady.len() + 1 >= expected,
        "steady ticked {} times in {ran:?}",
        steady.len()
    );
    let mut times: Vec<i64> = steady.iter().map(|r| r.time_ms).collect();
    times.sort_unstable();
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            (500..1_500).contains(&gap),
            "ticks {gap} ms apart: {times:?}"
        );
    }
    let metrics = telemetry.encode();
    for line in [
        "scalewise_policy_errors_total{module=\"faults\",kind=\"timeout\"}",
        "scalewise_policy_errors_total{module=\"always-errors\",kind=\"policy_error\"}",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_journals_decisions_and_changes_nothing() {
    let _serial = serial().await;
    let policies = bundled();
    let state = tempfile::tempdir().unwrap();
    let mut config = Config::demo(policies.path(), &state.path().join("journal.db"));
    for scaler in &mut config.scalers {
        scaler.get_mut().mode = Mode::DryRun;
    }
    config.validate().unwrap();
    let mut h = Harness::build(config, T0).await;
    let sim = h.daemon.simulation();
    let services = ["web", "worker"].map(|name| sim.service(name).unwrap());
    let initial = services.each_ref().map(|s| s.lock().replicas(T0).0);

    // Through web's spike, checking the service after every tick.
    let mut t = T0;
    while t <= T0 + 14 * MINUTE {
        let records = h.run_until(t).await;
        for r in &records {
            assert_eq!(r.mode, Mode::DryRun);
            let i = usize::from(r.scaler == "worker");
            assert_eq!(r.target.current, initial[i], "{r:?}");
            match r.actuation {
                ActuationRecord::DryRun => assert_ne!(r.desired, r.target.current),
                ActuationRecord::None => assert_eq!(r.desired, r.target.current),
                ref other => panic!("dry-run actuated: {other:?}"),
            }
        }
        for (service, initial) in services.iter().zip(initial) {
            assert_eq!(service.lock().replicas(t), (initial, initial), "at {t}");
        }
        t += 15 * SECOND;
    }

    let journal = h.journal_of("web").await;
    let decided: Vec<u32> = journal
        .iter()
        .filter(|r| r.actuation == ActuationRecord::DryRun)
        .map(|r| r.desired)
        .collect();
    // The service never grows, so its CPU saturates at 100% and
    // target-tracking asks at most current × 100 / target (4 × 100/60 → 7).
    assert!(
        decided.iter().any(|&d| d > initial[0]),
        "the journal shows the scale-out it would have made: {decided:?}"
    );
    assert!(scale_events(&journal).is_empty());
    let metrics = h.daemon.app_state().telemetry.encode();
    assert!(
        metrics.contains(&format!(
            "scalewise_actuations_total{{scaler=\"web\",result=\"dry_run\"}} {}",
            decided.len()
        )),
        "{metrics}"
    );
    assert!(!metrics.contains("result=\"done\""), "{metrics}");
    h.close().await;
}

const MISSING: &str = r#"
policy_dir = "{policies}"

[journal]
path = "{journal}"

# 1,000 requests/s for the first minute, then 200.
[simulations.web]
capacity_per_replica = 100.0
initial_replicas = 10
load = { base = 200.0, spikes = [{ at = "0s", duration = "1m", extra = 800.0 }] }

# A dependency whose latency web's scaler also watches.
[simulations.db]
capacity_per_replica = 100.0
initial_replicas = 1
load = { base = 10.0 }

[[scalers]]
name = "web"
interval = "15s"
min = 2
max = 40
target = { kind = "simulator", service = "web" }
metrics.cpu = { source = "simulator", query = "cpu" }
metrics.db_latency = { source = "simulator", query = "db/p95_latency_ms" }
policies = [{ module = "target-tracking", params = { metric = "cpu", target = 50.0 } }]
# No scale-down stabilisation: only the missing metric can stop a scale-in.
behavior.scale_down = { stabilization_window = "0s" }
"#;

/// Ten replicas for a load one can serve; scale-in is limited to one
/// replica a minute and nothing else holds it back.
const RATE_LIMITED: &str = r#"policy_dir = "{policies}"

[journal]
path = "{journal}"

[simulations.web]
capacity_per_replica = 100.0
initial_replicas = 10
load = { base = 20.0 }

[[scalers]]
name = "web"
interval = "15s"
min = 1
max = 20
target = { kind = "simulator", service = "web" }
metrics.cpu = { source = "simulator", query = "cpu" }
policies = [{ module = "target-tracking", params = { metric = "cpu", target = 50.0 } }]
behavior.scale_down = { stabilization_window = "0s", limits = [{ pods = 1, period = "1m" }] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_period_counts_from_tick_slots_not_from_jitter() {
    let _serial = serial().await;
    let policies = bundled();
    // Ticks start a millisecond or three after their slot, unevenly, as
    // they do on a busy host. Scale-in events, whichever tick made them,
    // are then exactly 4 ticks (1 minute) apart when the envelope counts
    // from slots; counted from start times, a tick 1 ms earlier in its slot
    // than the event's finds the event 59,999 ms old and waits a 5th tick.
    let gaps = |grid: bool| {
        let policies = policies.path().to_owned();
        async move {
            let state = tempfile::tempdir().unwrap();
            let text = config_text(RATE_LIMITED, &policies, &state.path().join("journal.db"));
            let config = Config::parse(&text, &state.path().join("rate.toml")).unwrap();
            let mut h = Harness::build(config, T0).await;
            let scaler = h.daemon.scalers_mut().next().unwrap();
            let mut scale_times = Vec::new();
            for k in 0..30i64 {
                let slot = T0 + k * 15 * SECOND;
                let started = slot + [3, 1, 2][(k % 3) as usize];
                let record = if grid {
                    scaler.tick_on_grid(started, slot).await
                } else {
                    scaler.tick(started).await
                };
                if record.desired < record.target.current {
                    scale_times.push(slot);
                }
            }
            scale_times
                .windows(2)
                .map(|w| w[1] - w[0])
                .collect::<Vec<i64>>()
        }
    };
    let on_grid = gaps(true).await;
    assert!(on_grid.len() >= 5, "{on_grid:?}");
    assert!(on_grid.iter().all(|&gap| gap == MINUTE), "{on_grid:?}");
    // The same ticks dated by their start alone: some steps wait a tick.
    let by_start = gaps(false).await;
    assert!(by_start.contains(&(MINUTE + 15 * SECOND)), "{by_start:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_metric_blocks_scale_in_but_not_scale_out() {
    let _serial = serial().await;
    let policies = bundled();
    let state = tempfile::tempdir().unwrap();
    let text = config_text(MISSING, policies.path(), &state.path().join("journal.db"));
    let config = Config::parse(&text, &state.path().join("missing.toml")).unwrap();
    let mut h = Harness::build(config.clone(), T0).await;
    let db = h.daemon.simulation().service("db").unwrap();
    db.lock().set_metric_outage(Some(MetricFault::Unreachable));

    // The spike: CPU 100% on 10 replicas; scaling out is still allowed.
    let first = h.run_until(T0).await;
    assert_eq!((first[0].target.current, first[0].desired), (10, 20));
    assert_eq!(first[0].metric_errors.len(), 1);
    assert_eq!(first[0].metric_errors[0].metric, "db_latency");
    assert_eq!(first[0].metric_errors[0].kind, "unreachable");
    // The API's status of the scaler names the metric with its source.
    let handles = h.daemon.telemetry().scalers().load_full();
    let status = handles[first[0].scaler.as_str()].status.load_full();
    assert!(
        status
            .problems
            .iter()
            .any(|p| p.starts_with("metric db_latency (source simulator): ")),
        "{:?}",
        status.problems
    );

    // The load falls to 200 at 1m; target tracking wants 4, but with the
    // db metric missing the count holds.
    let falling = h.run_until(T0 + 2 * MINUTE).await;
    let blocked: Vec<&TickRecord> = falling.iter().filter(|r| r.time_ms > T0 + MINUTE).collect();
    assert_eq!(blocked.len(), 4);
    for r in &blocked {
        assert_eq!(r.proposal, Some(4), "{r:?}");
        assert_eq!((r.target.current, r.desired), (20, 20));
        assert_eq!(r.metric_errors[0].kind, "unreachable");
        let step = &r.envelope[0];
        assert_eq!(
            (step.rule.as_str(), step.from, step.to),
            ("missing-metrics", 4, 20)
        );
        assert!(
            step.reason
                .contains("scale-in blocked: metric db_latency unavailable"),
            "{}",
            step.reason
        );
    }

    // The metric is back: the scale-in goes ahead at the next tick.
    db.lock().set_metric_outage(None);
    let back = h.run_until(T0 + 2 * MINUTE + 15 * SECOND).await;
    assert_eq!((back[0].target.current, back[0].desired), (20, 4));
    assert!(back[0].metric_errors.is_empty());
    assert_rules_hold(&h, &config).await;
    h.close().await;
}

const RESTART: &str = r#"
policy_dir = "{policies}"

# The probe busy-loops on purpose: a deadline a starved machine meets.
[runtime]
timeout = "10s"

[journal]
path = "{journal}"

# Overloaded below 16 replicas.
[simulations.web]
capacity_per_replica = 100.0
initial_replicas = {web_replicas}
load = { base = 800.0 }

# A burst in the first 40s, then quiet.
[simulations.api]
capacity_per_replica = 100.0
initial_replicas = 8
load = { base = 100.0, spikes = [{ at = "0s", duration = "40s", extra = 700.0 }] }

# Overloaded at 2 replicas.
[simulations.batch]
capacity_per_replica = 100.0
initial_replicas = 2
load = { base = 400.0 }

# Scales 4 → 8 at once, then waits out a 3m cooldown before 8 → 16. The
# probe holds and keeps a state (what it saw) from tick to tick.
[[scalers]]
name = "web"
interval = "15s"
min = 1
max = 20
target = { kind = "simulator", service = "web" }
metrics.cpu = { source = "simulator", query = "cpu" }
policies = [
  { module = "target-tracking", params = { metric = "cpu", target = 50.0 } },
  { module = "sandbox-probe" },
]
behavior.scale_up = { cooldown = "3m" }

# At max during the burst; after it, HPA's 5m scale-down stabilisation
# keeps it there until the burst's recommendations are 5m old.
[[scalers]]
name = "api"
interval = "15s"
min = 1
max = 8
target = { kind = "simulator", service = "api" }
metrics.cpu = { source = "simulator", query = "cpu" }
policies = [{ module = "target-tracking", params = { metric = "cpu", target = 50.0 } }]

# Paused through the API before the restart.
[[scalers]]
name = "batch"
interval = "15s"
min = 1
max = 10
target = { kind = "simulator", service = "batch" }
metrics.cpu = { source = "simulator", query = "cpu" }
policies = [{ module = "target-tracking", params = { metric = "cpu", target = 50.0 } }]
"#;

fn restart_policies() -> tempfile::TempDir {
    scalewise_tests::policy_dir(&[
        ("target-tracking", artifacts::TARGET_TRACKING),
        ("sandbox-probe", artifacts::SANDBOX_PROBE),
    ])
}

/// The restart scenario's config; `web_replicas` is what the simulated web
/// service runs when the host starts (a real target keeps its replicas
/// while the host is down; the simulation restarts with the host).
async fn restart_harness(policies: &Path, state: &Path, web_replicas: u32) -> Harness {
    let text = config_text(RESTART, policies, &state.join("journal.db"))
        .replace("{web_replicas}", &web_replicas.to_string());
    Harness::from_text(&text, &state.join("restart.toml"), T0).await
}

/// POSTs or GETs `uri` on the daemon's API in-process; the JSON answer.
async fn api(h: &Harness, method: &str, uri: &str) -> (StatusCode, serde_json::Value) {
    let router = scalewise::api::router(h.daemon.app_state());
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    // From loopback, as the server would tell: writes need no token there.
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            50000,
        ))));
    let response = router.oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

/// Before the restart: batch is paused through the API, then every scaler
/// ticks at 0s, 15s and 30s; web scales 4 → 8 at 0s and starts its
/// cooldown. Returns the records as the loop returned them (with ids).
async fn first_run(h: &mut Harness) -> Vec<TickRecord> {
    let (status, body) = api(h, "POST", "/v1/scalers/batch/pause").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["paused"], true);
    let records = h.run_until(T0 + 30 * SECOND).await;
    assert_eq!(records.len(), 9);
    let web: Vec<&TickRecord> = records.iter().filter(|r| r.scaler == "web").collect();
    assert_eq!((web[0].target.current, web[0].desired), (4, 8));
    assert!(matches!(web[0].actuation, ActuationRecord::Done { .. }));
    for r in &web[1..] {
        assert_eq!(r.envelope.last().unwrap().rule, "cooldown", "{r:?}");
    }
    for r in records.iter().filter(|r| r.scaler == "batch") {
        assert_eq!(r.envelope[0].rule, "paused", "{r:?}");
        assert_eq!(r.desired, 2);
    }
    records
}

/// After the restart (at 45s, web's target still at 8): every record of
/// the first run is in the journal; the cooldown, the stabilisation window,
/// the probe's state and batch's pause flag carry over; resuming batch
/// lets it scale.
async fn second_run(policies: &Path, state: &Path, before: &[TickRecord]) {
    let mut h = restart_harness(policies, state, 8).await;
    for record in before {
        let id = record.id.expect("acknowledged records have ids");
        let stored = h.daemon.journal().get(id).await.unwrap();
        assert_eq!(
            stored.as_ref(),
            Some(record),
            "record {id} survived as written"
        );
    }
    let handles = h.daemon.app_state().scalers.load_full();
    assert!(handles["batch"].is_paused(), "the pause flag survived");
    assert!(!handles["web"].is_paused());

    h.resume_at(T0 + 45 * SECOND);
    let after = h.run_until(T0 + 6 * MINUTE).await;
    let of =
        |name: &str| -> Vec<&TickRecord> { after.iter().filter(|r| r.scaler == name).collect() };

    // web: held by the restored cooldown until 3m after its scale-up.
    for r in of("web") {
        let age = r.time_ms - T0;
        if age < 3 * MINUTE {
            assert_eq!((r.target.current, r.desired), (8, 8), "at {age} ms");
            let last = r.envelope.last().unwrap();
            assert_eq!(last.rule, "cooldown", "at {age} ms: {:?}", r.envelope);
            assert!(
                last.reason.contains("scale_up.cooldown is 3m"),
                "{}",
                last.reason
            );
        } else if age == 3 * MINUTE {
            assert_eq!((r.target.current, r.desired), (8, 16), "{r:?}");
        }
    }
    // The probe got back the state it left at the last tick before.
    let last_before = before.iter().rfind(|r| r.scaler == "web").unwrap();
    let EvaluationOutcome::Decided { decision } = &last_before.evaluations[1].outcome else {
        panic!("the probe failed: {last_before:?}")
    };
    let first_after = of("web")[0];
    assert_eq!(first_after.evaluations[1].context.state, decision.state);
    let seen: serde_json::Value =
        serde_json::from_slice(decision.state.as_deref().unwrap()).unwrap();
    assert_eq!(seen["wall_ms"]["Ok"], T0 + 30 * SECOND, "{seen}");

    // api: held by the restored stabilisation window until the burst's
    // recommendations (the last at 30s) are 5m old.
    for r in of("api") {
        let age = r.time_ms - T0;
        if age < 30 * SECOND + 5 * MINUTE {
            assert_eq!((r.proposal, r.desired), (Some(2), 8), "at {age} ms");
            assert_eq!(r.envelope[0].rule, "stabilization", "at {age} ms");
        } else if age == 30 * SECOND + 5 * MINUTE {
            assert_eq!((r.target.current, r.desired), (8, 2), "{r:?}");
        }
    }

    // batch stays paused, then scales once resumed.
    assert!(
        of("batch")
            .iter()
            .all(|r| r.envelope[0].rule == "paused" && r.desired == 2)
    );
    let (status, body) = api(&h, "POST", "/v1/scalers/batch/resume").await;
    assert_eq!(
        (status, body["paused"].clone()),
        (StatusCode::OK, false.into())
    );
    let resumed = h.run_until(T0 + 6 * MINUTE + 15 * SECOND).await;
    let batch = resumed.iter().find(|r| r.scaler == "batch").unwrap();
    assert_eq!((batch.target.current, batch.desired), (2, 4), "{batch:?}");

    // The daemon keeps only its config's settings; the scalers come from
    // the text it started with.
    let origin = h.daemon.config().origin();
    let config = Config::parse(&origin.text(), origin.path()).unwrap();
    assert!(!config.scalers.is_empty());
    assert_rules_hold(&h, &config).await;
    let web = h.journal_of("web").await;
    assert_eq!(
        story(&web),
        "0s 4→8, 180s 8→16",
        "no change the cooldown forbids"
    );
    assert_eq!(story(&h.journal_of("api").await), "330s 8→2");
    h.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_keeps_the_journal_cooldowns_state_and_pause() {
    let _serial = serial().await;
    let policies = restart_policies();
    let state = tempfile::tempdir().unwrap();
    let mut h = restart_harness(policies.path(), state.path(), 4).await;
    let before = first_run(&mut h).await;
    h.close().await;
    second_run(policies.path(), state.path(), &before).await;
}

/// Set in the child process of the kill -9 test.
const CHILD_STATE: &str = "SCALEWISE_E2E_RESTART_STATE";
const CHILD_POLICIES: &str = "SCALEWISE_E2E_RESTART_POLICIES";
const CHILD_DONE: &str = "FIRST RUN DONE";

/// The kill -9 test's child: runs the first half, prints every record it
/// got back, then waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of a_restart_after_kill_9_keeps_the_journal_cooldowns_state_and_pause"]
async fn restart_child() {
    let (Some(state), Some(policies)) = (
        std::env::var_os(CHILD_STATE),
        std::env::var_os(CHILD_POLICIES),
    ) else {
        panic!("run only by a_restart_after_kill_9_keeps_the_journal_cooldowns_state_and_pause");
    };
    let mut h = restart_harness(Path::new(&policies), Path::new(&state), 4).await;
    for record in first_run(&mut h).await {
        println!("RECORD {}", serde_json::to_string(&record).unwrap());
    }
    println!("{CHILD_DONE}");
    // No close, no flush: the parent kills this process.
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_kill_9_keeps_the_journal_cooldowns_state_and_pause() {
    let _serial = serial().await;
    let policies = restart_policies();
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "restart_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_STATE, state.path())
        .env(CHILD_POLICIES, policies.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut records = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            // libtest may print "test restart_child ... " ahead of the
            // first line under --nocapture.
            if let Some((_, json)) = line.split_once("RECORD ") {
                records.push(serde_json::from_str::<TickRecord>(json).unwrap());
            } else if line.ends_with(CHILD_DONE) {
                return Some(records);
            }
        }
        None
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    while !reader.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed: {status:?}");
    let before = reader
        .join()
        .unwrap()
        .expect("the child finished its first run");
    assert_eq!(before.len(), 9);
    second_run(policies.path(), state.path(), &before).await;
}

/// One simulated service at twice the CPU its 2 replicas want, scaled by
/// target-tracking every second: the daemon built on `clock`, with the
/// folders it uses (kept while they are).
async fn one_busy_service(clock: Clock) -> (tempfile::TempDir, tempfile::TempDir, Daemon) {
    let policies = bundled();
    let state = tempfile::tempdir().unwrap();
    let text = config_text(
        r#"policy_dir = "{policies}"

[journal]
path = "{journal}"

[simulations.web]
capacity_per_replica = 100.0
initial_replicas = 2
load = { base = 400.0 }

[[scalers]]
name = "web"
interval = "1s"
min = 1
max = 10
target = { kind = "simulator", service = "web" }
metrics.cpu = { source = "simulator", query = "cpu" }
policies = [{ module = "target-tracking", params = { metric = "cpu", target = 50.0 } }]
"#,
        policies.path(),
        &state.path().join("journal.db"),
    );
    let config = Config::parse(&text, &state.path().join("busy.toml")).unwrap();
    let daemon = Daemon::build(config, clock).await.unwrap();
    (policies, state, daemon)
}

/// An actuator that is the one it wraps, but for what a test asks of it:
/// its first observation panics (a bug in a tick), and the next waits for
/// `go_on`; every clock jump it is told of is noted in `jumps`.
#[derive(Debug)]
struct Wrapped {
    inner: std::sync::Arc<dyn scalewise::actuators::Actuator>,
    /// Panic at the next observation (false once it did).
    panic_first: std::sync::atomic::AtomicBool,
    /// The observation after the panic is yet to come.
    after_panic: std::sync::atomic::AtomicBool,
    /// The observation after the panic waits for this (the test has seen
    /// the panic in the status, which the next tick clears).
    go_on: std::sync::Arc<tokio::sync::Semaphore>,
    jumps: std::sync::Arc<std::sync::Mutex<Vec<i64>>>,
}

impl Wrapped {
    /// `daemon`'s only scaler's actuator, wrapped: panicking first when
    /// `panic_first`. Returns the wrapper's `go_on` and `jumps`.
    #[allow(clippy::type_complexity)]
    fn around(
        daemon: &mut Daemon,
        panic_first: bool,
    ) -> (
        std::sync::Arc<tokio::sync::Semaphore>,
        std::sync::Arc<std::sync::Mutex<Vec<i64>>>,
    ) {
        let scaler = daemon.scalers_mut().next().unwrap();
        let wrapped = Wrapped {
            inner: scaler.actuator().clone(),
            panic_first: panic_first.into(),
            after_panic: false.into(),
            go_on: std::sync::Arc::new(tokio::sync::Semaphore::new(0)),
            jumps: Default::default(),
        };
        let handles = (wrapped.go_on.clone(), wrapped.jumps.clone());
        scaler.reconfigure(
            scaler.spec().clone(),
            Some(std::sync::Arc::new(wrapped)),
            false,
        );
        handles
    }
}

#[async_trait::async_trait]
impl scalewise::actuators::Actuator for Wrapped {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn target_name(&self) -> String {
        self.inner.target_name()
    }

    async fn observe(
        &self,
        now_ms: i64,
    ) -> Result<scalewise::actuators::Observed, scalewise::actuators::ActuatorError> {
        if self
            .panic_first
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            self.after_panic
                .store(true, std::sync::atomic::Ordering::SeqCst);
            panic!("a bug in an actuator");
        }
        if self
            .after_panic
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            let _ = self.go_on.acquire().await;
        }
        self.inner.observe(now_ms).await
    }

    async fn scale(
        &self,
        now_ms: i64,
        current: u32,
        desired: u32,
    ) -> Result<scalewise::actuators::Actuation, scalewise::actuators::ActuatorError> {
        self.inner.scale(now_ms, current, desired).await
    }

    async fn clock_jumped(&self, by_ms: i64) {
        self.jumps.lock().unwrap().push(by_ms);
    }
}

/// A tick that panics is caught: the scaler says so (status, log counter)
/// and ticks on at its next slot, where it scales; it used to stop for
/// good, its task gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_that_panics_holds_and_the_scaler_ticks_on() {
    let _serial = serial().await;
    let (_policies, _state, mut daemon) = one_busy_service(Clock::system()).await;
    let (go_on, _) = Wrapped::around(&mut daemon, true);
    let telemetry = daemon.telemetry().clone();
    let handles = telemetry.scalers();
    let status = move || handles.load()["web"].status.load_full();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(daemon.run(None, async {
        let _ = stopped.await;
    }));
    let panicked = scalewise_tests::wait_until("the panic told", Duration::from_secs(30), || {
        let status = status();
        async move {
            match status.problems.iter().find(|p| p.contains("tick panicked")) {
                Some(problem) => Ok(problem.clone()),
                None => Err(format!("{status:?}")),
            }
        }
    })
    .await
    .unwrap();
    assert!(panicked.contains("a bug in an actuator"), "{panicked}");
    let metrics = telemetry.encode();
    assert!(
        metrics.contains("scalewise_tick_panics_total 1"),
        "{metrics}"
    );
    go_on.add_permits(1_000);
    // The next ticks run: CPU 200 % of 2 replicas wants more.
    scalewise_tests::wait_until("the scale-out", Duration::from_secs(30), || {
        let status = status();
        async move {
            match status.current {
                Some(n) if n > 2 => Ok(()),
                _ => Err(format!("{status:?}")),
            }
        }
    })
    .await
    .unwrap();
    assert!(
        status().problems.is_empty(),
        "a later tick clears it: {:?}",
        status()
    );
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
}

/// A tick that comes to make its change while a pause or resume of its
/// scaler is being recorded (the API holds the scaler's `acting` lock: the
/// test holds it here in the API's place) makes none, and does not wait
/// for it (the API server may be slow): the next tick decides again, and
/// once the pause is recorded, holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_not_made_while_a_pause_is_being_recorded() {
    let _serial = serial().await;
    let (_policies, _state, daemon) = one_busy_service(Clock::system()).await;
    let journal = daemon.journal().clone();
    let handle = daemon.telemetry().scalers().load()["web"].clone();
    let acting = handle.acting().await.expect("no change under way yet");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(daemon.run(None, async {
        let _ = stopped.await;
    }));
    // The first tick (within its 1 s interval) decides 2 -> 4 and makes no
    // change.
    let record = scalewise_tests::wait_until("the tick's record", Duration::from_secs(30), || {
        let journal = journal.clone();
        async move {
            let records = journal
                .query(scalewise::journal::Query::scaler("web", 10))
                .await
                .map_err(|e| e.to_string())?;
            records
                .into_iter()
                .find(|r| r.actuation != ActuationRecord::Pending)
                .ok_or_else(|| "not yet".to_owned())
        }
    })
    .await
    .unwrap();
    assert_eq!(record.target.current, 2, "{record:?}");
    assert!(record.desired > 2, "a scale-out was decided: {record:?}");
    assert_eq!(
        record.actuation,
        ActuationRecord::Failed {
            kind: "failed".into(),
            error: "not scaled: a pause or resume of this scaler was being recorded; the next \
                    tick decides again"
                .into()
        }
    );
    // The pause is recorded: the next ticks hold, and the service stays at 2.
    handle
        .paused
        .store(true, std::sync::atomic::Ordering::Relaxed);
    drop(acting);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(handle.status.load().current, Some(2));
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
}

/// The wall clock a test moves: the machine's plus [`WALL_MOVED_MS`].
static WALL_MOVED_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

fn moved_wall() -> i64 {
    scalewise::clock::wall_clock_ms() + WALL_MOVED_MS.load(std::sync::atomic::Ordering::SeqCst)
}

/// The wall clock moves an hour ahead under a running daemon (a suspend,
/// NTP setting it): the scaler's actuator is told once, by the hour, so a
/// change in flight does not count it; the tick lag does not count it
/// either; the scaler ticks on, on the moved clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_moving_ahead_is_told_to_the_actuator_once() {
    let _serial = serial().await;
    let (_policies, _state, mut daemon) = one_busy_service(Clock::keeping_to(moved_wall)).await;
    let (_, jumps) = Wrapped::around(&mut daemon, false);
    let telemetry = daemon.telemetry().clone();
    let handles = telemetry.scalers();
    let ticks = move || handles.load()["web"].status.load().ticks;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(daemon.run(None, async {
        let _ = stopped.await;
    }));
    let wait_ticks = |n: u64| {
        let ticks = ticks.clone();
        async move {
            scalewise_tests::wait_until("ticks", Duration::from_secs(30), || {
                let seen = ticks();
                async move {
                    if seen >= n {
                        Ok(())
                    } else {
                        Err(format!("{seen} ticks"))
                    }
                }
            })
            .await
            .unwrap();
        }
    };
    wait_ticks(2).await;
    let before = ticks();
    WALL_MOVED_MS.fetch_add(3_600_000, std::sync::atomic::Ordering::SeqCst);
    wait_ticks(before + 4).await;
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    let told = jumps.lock().unwrap().clone();
    assert_eq!(told.len(), 1, "{told:?}");
    assert!((3_599_000..3_602_000).contains(&told[0]), "{told:?}");
    // No tick counted the hour as lateness (the buckets end at 8.192 s).
    let metrics = telemetry.encode();
    let count = |line: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{line} in\n{metrics}"))
    };
    assert_eq!(
        count("scalewise_tick_lag_seconds_bucket{le=\"8.192\"}"),
        count("scalewise_tick_lag_seconds_count"),
        "{metrics}"
    );
}

/// The clock set an hour ahead while web's 3m cooldown runs: the envelope
/// does not count the jump, and neither does a rebuild of it from the
/// journal (a reload that lengthens a window), whose ticks from before the
/// jump are moved by it as the live envelope was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_envelope_does_not_count_a_jump_of_the_clock() {
    let _serial = serial().await;
    let policies = restart_policies();
    let state = tempfile::tempdir().unwrap();
    let mut h = restart_harness(policies.path(), state.path(), 4).await;
    let web = h
        .daemon
        .scalers_mut()
        .find(|s| s.spec().name == "web")
        .unwrap();
    let first = web.tick(T0).await;
    assert_eq!((first.target.current, first.desired), (4, 8));
    const HOUR: i64 = 3_600 * SECOND;
    let seen = T0 + 15 * SECOND + HOUR;
    web.clock_jumped(seen, HOUR).await;
    let held = web.tick(seen).await;
    assert_eq!(held.envelope.last().unwrap().rule, "cooldown", "{held:?}");
    web.remember_further(seen + 5 * SECOND).await.unwrap();
    let rebuilt = web.tick(T0 + 30 * SECOND + HOUR).await;
    assert_eq!(
        rebuilt.envelope.last().map(|c| c.rule.as_str()),
        Some("cooldown"),
        "the rebuilt envelope still counts the cooldown from the scale-up: {rebuilt:?}"
    );
    assert_eq!(rebuilt.desired, 8, "{rebuilt:?}");
}
