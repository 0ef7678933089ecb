//! `scalewise simulate`: backtests on a real trace (NASA's web server, July
//! 1995) with the real target-tracking module, checked against the journal
//! the run wrote; the demo with no config; configs it cannot simulate.

use std::path::Path;

use scalewise::journal::{ActuationRecord, Journal, Query, TickRecord};
use scalewise_tests::prometheus::PrometheusServer;
use scalewise_tests::{artifacts, cli, policy_dir};
use serde_json::Value;

/// 2023-11-14T22:13:20Z.
const START: &str = "1700000000000";

/// `docs/<name>`: the README's backtest examples.
fn docs_config(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name)
}

/// `text`, a config from docs/, with its paths made absolute so that it
/// can be written elsewhere (they are relative to docs/: `"../...`).
fn rebased(text: &str) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    text.replace("\"../", &format!("\"{}/", repo.display()))
}

/// docs/backtest.toml (NASA's July 1995 trace twenty times over: a mean of
/// 16 requests/s, minutes above 100; target tracking on CPU) with the
/// bounds `min`/`max`, written to `dir`.
fn backtest_config(dir: &Path, min: u32, max: u32) -> std::path::PathBuf {
    let text = std::fs::read_to_string(docs_config("backtest.toml")).unwrap();
    let bounds = "min = 1\nmax = 20\n";
    assert!(
        text.contains(bounds),
        "docs/backtest.toml has no {bounds:?}"
    );
    let text = rebased(&text.replace(bounds, &format!("min = {min}\nmax = {max}\n")));
    let path = dir.join(format!("site-{min}-{max}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn simulate_json(args: &[&str]) -> Value {
    let (code, out, err) = cli(&[&["simulate", "--json", "--start", START], args].concat());
    assert_eq!(code, 0, "stderr: {err}\nstdout: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

fn records(journal: &Path) -> Vec<TickRecord> {
    let journal = Journal::open_read_only(journal).expect("the run's journal opens");
    let mut records = journal
        .query_blocking(&Query {
            scaler: Some("site".into()),
            since_ms: None,
            until_ms: None,
            limit: usize::MAX,
        })
        .expect("the journal reads");
    records.sort_by_key(|r| r.time_ms);
    records
}

fn acted(record: &TickRecord) -> bool {
    matches!(record.actuation, ActuationRecord::Done { .. })
}

#[test]
fn a_backtest_on_a_real_trace_agrees_with_its_journal_and_repeats_exactly() {
    // The README's example, docs/backtest.toml, with the modules this test
    // run built.
    let policies = policy_dir(&[("target-tracking", artifacts::TARGET_TRACKING)]);
    let policies = policies.path().to_str().unwrap();
    let config = docs_config("backtest.toml");
    let config = config.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("kept.db");
    let report = simulate_json(&[
        "--config",
        config,
        "--policy-dir",
        policies,
        "--for",
        "12h",
        "--slo-latency",
        "300ms",
        "--journal",
        journal.to_str().unwrap(),
    ]);
    let site = &report["scalers"][0];
    assert_eq!(site["scaler"], "site");
    assert_eq!(site["service"], "site");
    // 12 hours of 30-second ticks.
    assert_eq!(report["ticks"], 1440);
    assert_eq!(site["ticks"], 1440);

    // The night's lull scales it in, the morning's rise out.
    let (outs, ins) = (site["scale_outs"].as_u64(), site["scale_ins"].as_u64());
    assert!(outs > Some(0) && ins > Some(0), "{site:#}");
    let replicas = &site["replicas"];
    assert!(replicas["min"].as_f64() >= Some(1.0), "{site:#}");
    assert!(replicas["max"].as_f64() <= Some(20.0), "{site:#}");
    assert!(
        replicas["max"].as_f64() > replicas["min"].as_f64(),
        "{site:#}"
    );
    assert_eq!(site["policy_error_ticks"], 0);

    // The journal it kept holds every tick, and its changes are the
    // report's, counted with the journal's own fields.
    let records = records(&journal);
    assert_eq!(records.len(), 1440);
    let changes = |up: bool| {
        records
            .iter()
            .filter(|r| acted(r) && (r.desired > r.target.current) == up)
            .count() as u64
    };
    assert_eq!((Some(changes(true)), Some(changes(false))), (outs, ins));
    // Replica-hours, from the journal alone: the simulated actuator changes
    // the count at once, so each 30 s is one second at the count the tick
    // found and 29 at the count it left.
    let replica_seconds: u64 = records
        .iter()
        .map(|r| {
            let after = if acted(r) {
                r.desired
            } else {
                r.target.current
            };
            u64::from(r.target.current) + 29 * u64::from(after)
        })
        .sum();
    let hours = site["replica_hours"].as_f64().unwrap();
    assert!(
        (hours - replica_seconds as f64 / 3600.0).abs() < 1e-9,
        "report {hours}, journal {}",
        replica_seconds as f64 / 3600.0
    );
    let slo = &site["slo"];
    assert_eq!(slo["latency_ms"], 300.0);
    assert!(slo["seconds_above"].as_u64() <= site["saturated_seconds"].as_u64().map(|s| s + 600));

    // Same config, same start: the same report to the last digit.
    let again = simulate_json(&[
        "--config",
        config,
        "--policy-dir",
        policies,
        "--for",
        "12h",
        "--slo-latency",
        "300ms",
    ]);
    assert_eq!(again, report);
}

#[test]
fn scaling_on_the_trace_serves_what_a_fixed_fleet_cannot() {
    let policies = policy_dir(&[("target-tracking", artifacts::TARGET_TRACKING)]);
    let dir = tempfile::tempdir().unwrap();
    let policies = policies.path().to_str().unwrap();
    let scaled = backtest_config(dir.path(), 1, 20);
    let fixed = backtest_config(dir.path(), 2, 2);
    let run = |config: &Path| {
        let config = config.to_str().unwrap();
        let report = simulate_json(&["--config", config, "--policy-dir", policies, "--for", "6h"]);
        report["scalers"][0].clone()
    };
    let (scaled, fixed) = (run(&scaled), run(&fixed));

    // Two replicas all the time: exactly 12 replica-hours, never a change.
    assert_eq!(fixed["replica_hours"], 12.0);
    assert_eq!(
        (fixed["scale_outs"].as_u64(), fixed["scale_ins"].as_u64()),
        (Some(0), Some(0))
    );
    // As the README says: saturated all six hours (the first second aside).
    assert!(
        fixed["saturated_seconds"].as_u64() >= Some(6 * 3600 - 60),
        "two replicas should fall behind this load: {fixed:#}"
    );
    assert!(
        scaled["saturated_seconds"].as_u64() < fixed["saturated_seconds"].as_u64(),
        "scaled {scaled:#}\nfixed {fixed:#}"
    );
    assert!(
        scaled["p95_latency_ms"]["p99"].as_f64() < fixed["p95_latency_ms"]["p99"].as_f64(),
        "scaled {scaled:#}\nfixed {fixed:#}"
    );
}

/// A trace `scalewise trace` recorded is dated: without `--start` a run
/// playing it starts where it begins, after its `offset` (office hours
/// play at their own hours, a schedule's dates line up with the traffic),
/// not at the wall clock's now.
#[test]
fn a_dated_trace_plays_at_its_own_dates_by_default() {
    let policies = policy_dir(&[("target-tracking", artifacts::TARGET_TRACKING)]);
    let dir = tempfile::tempdir().unwrap();
    // 2026-11-02T00:00:00Z, a row a minute for an hour.
    let first_s = 1_793_577_600_i64;
    let rows: String = (0..60)
        .map(|m| format!("{},{}\n", first_s + m * 60, 60 * (m + 1)))
        .collect();
    let trace = dir.path().join("dated.csv");
    std::fs::write(&trace, format!("timestamp_s,requests\n{rows}")).unwrap();
    let config = backtest_config(dir.path(), 1, 20);
    let text: String = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .map(|l| match l.starts_with("trace = ") {
            // Past the hour's end: it goes round to 00:10, as it plays.
            true => format!("trace = {{ path = {:?}, offset = \"70m\" }}\n", trace),
            false => format!("{l}\n"),
        })
        .collect();
    assert!(text.contains("dated.csv"), "{text}");
    std::fs::write(&config, text).unwrap();
    let journal = dir.path().join("run.db");
    let (code, out, err) = cli(&[
        "simulate",
        "--config",
        config.to_str().unwrap(),
        "--policy-dir",
        policies.path().to_str().unwrap(),
        "--for",
        "1m",
        "--journal",
        journal.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "stderr: {err}\nstdout: {out}");
    assert!(out.contains("from 2026-11-02T00:10:00"), "{out}");
    let first = &records(&journal)[0];
    assert_eq!(first.time_ms, (first_s + 600) * 1000);
}

/// An interval that is not a whole number of seconds ticks at its own
/// times: 1500ms over a minute is 40 ticks (the simulator's one-second steps
/// used to give 20, one every 3 s).
#[test]
fn an_interval_of_a_fraction_of_seconds_ticks_as_often_as_it_says() {
    let policies = policy_dir(&[("target-tracking", artifacts::TARGET_TRACKING)]);
    let dir = tempfile::tempdir().unwrap();
    let config = backtest_config(dir.path(), 1, 20);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("interval = \"30s\"", "interval = \"1500ms\""),
    )
    .unwrap();
    let report = simulate_json(&[
        "--config",
        config.to_str().unwrap(),
        "--policy-dir",
        policies.path().to_str().unwrap(),
        "--for",
        "1m",
        "--warmup",
        "0s",
    ]);
    assert_eq!(report["scalers"][0]["ticks"], 40, "{report:#}");
}

#[test]
fn predictive_scaling_serves_the_rises_that_reactive_scaling_is_late_for() {
    // docs/backtest-predictive.toml as it is, and without its predictive
    // policy: target tracking alone. Two days of warm-up give predictive
    // its history; the third day is compared.
    let policies = policy_dir(&[
        ("target-tracking", artifacts::TARGET_TRACKING),
        ("predictive", artifacts::PREDICTIVE),
    ]);
    let policies = policies.path().to_str().unwrap();
    let both = docs_config("backtest-predictive.toml");
    let text = std::fs::read_to_string(&both).unwrap();
    let block = text
        .find("# Replicas for the peak")
        .expect("docs/backtest-predictive.toml ends with the predictive policy");
    let dir = tempfile::tempdir().unwrap();
    let reactive = dir.path().join("reactive.toml");
    std::fs::write(&reactive, rebased(&text[..block])).unwrap();
    let run = |config: &Path| {
        let report = simulate_json(&[
            "--config",
            config.to_str().unwrap(),
            "--policy-dir",
            policies,
            "--warmup",
            "2d",
            "--for",
            "1d",
            "--slo-latency",
            "300ms",
        ]);
        report["scalers"][0].clone()
    };
    let (reactive, predictive) = (run(&reactive), run(&both));
    assert_eq!(reactive["policies"], serde_json::json!(["target-tracking"]));
    assert_eq!(
        predictive["policies"],
        serde_json::json!(["target-tracking", "predictive"])
    );
    // The third day alone is counted.
    assert_eq!(predictive["ticks"], 2880);
    assert_eq!(predictive["policy_error_ticks"], 0);
    let seconds = |r: &Value, key: &str| r[key].as_u64().unwrap();
    let above = |r: &Value| r["slo"]["seconds_above"].as_u64().unwrap();
    // Replicas that take five minutes to start come late to every rise
    // unless they were asked for ahead of it.
    assert!(
        seconds(&predictive, "saturated_seconds") * 3 < seconds(&reactive, "saturated_seconds"),
        "predictive {predictive:#}\nreactive {reactive:#}"
    );
    assert!(
        above(&predictive) * 2 < above(&reactive),
        "predictive {predictive:#}\nreactive {reactive:#}"
    );
    // For a few more replica-hours, not a fleet kept at its peak.
    let hours = |r: &Value| r["replica_hours"].as_f64().unwrap();
    assert!(
        hours(&predictive) < hours(&reactive) * 1.15,
        "predictive {predictive:#}\nreactive {reactive:#}"
    );
    // The README's table is these two runs.
    for (row, report) in [
        ("| target-tracking alone |", &reactive),
        ("| target-tracking + predictive |", &predictive),
    ] {
        let expected = format!(
            "{row} {:.1} | {} | {} | {} |",
            hours(report),
            duration(seconds(report, "saturated_seconds")),
            latency(report["p95_latency_ms"]["p99"].as_f64().unwrap()),
            duration(above(report)),
        );
        assert!(
            readme().lines().any(|l| l == expected),
            "README.md has no row {expected:?}"
        );
    }
}

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap()
}

/// Seconds as the report prints them: `57m 31s`, `1h 5s`, `0s`.
fn duration(seconds: u64) -> String {
    let parts = [
        (seconds / 3600, "h"),
        (seconds / 60 % 60, "m"),
        (seconds % 60, "s"),
    ];
    let text: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    match text.is_empty() {
        true => "0s".to_owned(),
        false => text.join(" "),
    }
}

/// A latency as the report prints it: `316 ms`, `12.06 s`.
fn latency(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

#[test]
fn with_no_config_it_backtests_the_demo() {
    let policies = policy_dir(&[
        ("target-tracking", artifacts::TARGET_TRACKING),
        ("threshold", artifacts::THRESHOLD),
    ]);
    let dir = policies.path().to_str().unwrap();
    let (code, out, err) = cli(&[
        "simulate",
        "--policy-dir",
        dir,
        "--for",
        "30m",
        "--decisions",
    ]);
    assert_eq!(code, 0, "{err}");
    for text in [
        "Simulated 30m from ",
        ": 240 ticks of 2 scalers.",
        "web (service web; target-tracking)",
        "worker (service worker; threshold)",
        "replica-hours",
        "(--journal FILE keeps the run's journal.)",
    ] {
        assert!(out.contains(text), "missing {text:?} in\n{out}");
    }
    // The demo's spike scales web out: a decision line says so.
    assert!(
        out.lines()
            .any(|l| l.starts_with("sim ") && l.contains(" web ") && l.contains(" ↑ ")),
        "{out}"
    );
}

#[test]
fn what_cannot_be_simulated_is_refused_and_located() {
    let policies = policy_dir(&[("target-tracking", artifacts::TARGET_TRACKING)]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prod.toml");
    std::fs::write(
        &config,
        format!(
            r#"policy_dir = "{}"

[sources.prom]
kind = "prometheus"
url = "http://127.0.0.1:9"

[[scalers]]
name = "api"
interval = "30s"
min = 1
max = 10
target = {{ kind = "kubernetes", object = "Deployment", name = "api", namespace = "shop" }}

[scalers.metrics.cpu]
source = "prom"
query = "avg(rate(cpu_seconds_total[1m]))"

[[scalers.policies]]
module = "target-tracking"
params = {{ metric = "cpu", target = 60.0 }}
"#,
            policies.path().display()
        ),
    )
    .unwrap();
    let path = config.to_str().unwrap();
    let (code, _, err) = cli(&["simulate", "--config", path]);
    assert_eq!(code, 1);
    for text in [
        &format!("{path}:12:10: scalers[0] \"api\": a kubernetes target cannot be simulated"),
        &format!(
            "{path}:15:10: scalers[0] \"api\".metrics.cpu: source \"prom\" cannot be simulated"
        ),
    ] {
        assert!(err.contains(text.as_str()), "missing {text:?} in\n{err}");
    }

    // A journal that exists is never written into.
    let site = backtest_config(dir.path(), 1, 20);
    let existing = dir.path().join("existing.db");
    std::fs::write(&existing, b"precious").unwrap();
    let (code, _, err) = cli(&[
        "simulate",
        "--config",
        site.to_str().unwrap(),
        "--journal",
        existing.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("the file exists"), "{err}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"precious");

    let (code, _, err) = cli(&[
        "simulate",
        "--config",
        site.to_str().unwrap(),
        "--for",
        "0s",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("a simulation runs from 1s to"), "{err}");

    // Counted in whole seconds: 1.5 s would count 2.
    let (code, _, err) = cli(&[
        "simulate",
        "--config",
        site.to_str().unwrap(),
        "--for",
        "1500ms",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("--for 1s 500ms: give whole seconds"), "{err}");
}

/// A Prometheus server holding six hours of a request counter, ending an
/// hour ago: `http_requests_total{job="site"}` at 10 requests/s for three
/// hours, then 50, scraped every 15 s; and two series of
/// `pod_requests_total` (for the refusal of several series). Returns the
/// server and the history's first sample time (seconds).
fn prometheus_with_traffic() -> (PrometheusServer, i64) {
    let t0_s = (scalewise::clock::wall_clock_ms() / 1000 - 7 * 3600) / 60 * 60;
    let mut om = String::from("# TYPE http_requests counter\n");
    let mut total = 0.0;
    for i in 0..=(6 * 3600 / 15) {
        om.push_str(&format!(
            "http_requests_total{{job=\"site\"}} {total} {}\n",
            t0_s + 15 * i
        ));
        total += if i < 3 * 3600 / 15 { 150.0 } else { 750.0 };
    }
    om.push_str("# TYPE pod_requests counter\n");
    for pod in ["a", "b"] {
        for i in 0..=40 {
            om.push_str(&format!(
                "pod_requests_total{{pod=\"{pod}\"}} {} {}\n",
                i * 15,
                t0_s + 15 * i
            ));
        }
    }
    om.push_str("# EOF\n");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime
        .block_on(PrometheusServer::builder().backfill(&om).start())
        .expect("a real Prometheus server with backfilled history");
    (server, t0_s)
}

#[test]
fn a_trace_of_prometheus_history_is_a_backtest_on_real_traffic() {
    let (prometheus, t0_s) = prometheus_with_traffic();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("site.csv");
    let query = "sum(rate(http_requests_total{job=\"site\"}[1m]))";
    // Every second of 5h55m: 21,301 samples, three range queries.
    let (start_s, end_s) = (t0_s + 300, t0_s + 6 * 3600);
    let (code, out, err) = cli(&[
        "trace",
        "--prometheus",
        prometheus.url(),
        "--query",
        query,
        "--start",
        &(start_s * 1000).to_string(),
        "--end",
        &(end_s * 1000).to_string(),
        "--step",
        "1s",
        "--output",
        trace.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(out, "", "the trace went to the file");
    assert!(
        err.contains("Wrote 21301 rows") && err.contains("(3 range queries)"),
        "{err}"
    );
    assert!(!err.contains("no data"), "no gaps: {err}");

    let text = std::fs::read_to_string(&trace).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("timestamp_s,requests"));
    let rows: Vec<(i64, f64)> = lines
        .map(|line| {
            let (t, n) = line.split_once(',').unwrap();
            (t.parse().unwrap(), n.parse().unwrap())
        })
        .collect();
    assert_eq!(rows.len(), 21_301);
    // A row every second, none twice where the range queries meet.
    assert!(
        rows.iter()
            .zip(start_s..)
            .all(|(&(t, _), expected)| t == expected),
        "rows are not every second from the start"
    );
    // A second's requests: 10 for three hours, 50 after (a minute of
    // ramp where rate()'s window straddles the change).
    let change_s = t0_s + 3 * 3600;
    for &(t, requests) in &rows {
        let expected = if t <= change_s {
            10.0
        } else if t >= change_s + 60 {
            50.0
        } else {
            continue;
        };
        assert!(
            (requests - expected).abs() < 1e-6,
            "{requests} requests in second {t}, not {expected}"
        );
    }

    // The same from a config's source (its URL and headers), to standard
    // output, every minute. Only the source is read: the daemon's policy
    // folder and API token need not be there where the trace is taken.
    let config = dir.path().join("prod.toml");
    std::fs::write(
        &config,
        format!(
            "policy_dir = \"/nonexistent/policies\"\n\n[api]\ntoken = {{ file = \"absent-token\" }}\n\n[sources.prom]\nkind = \"prometheus\"\nurl = \"{}\"\nheaders = {{ X-Scope-OrgID = \"site\" }}\n",
            prometheus.url()
        ),
    )
    .unwrap();
    let (code, out, err) = cli(&[
        "trace",
        "--config",
        config.to_str().unwrap(),
        "--source",
        "prom",
        "--query",
        query,
        "--start",
        &(start_s * 1000).to_string(),
        "--end",
        &(end_s * 1000).to_string(),
    ]);
    assert_eq!(code, 0, "stderr: {err}");
    assert!(
        err.contains("Wrote 356 rows") && err.contains("(1 range query)"),
        "{err}"
    );
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 357, "a header and 356 rows");
    assert_eq!(rows[0], "timestamp_s,requests");
    let (t, requests) = rows[1].split_once(',').unwrap();
    assert_eq!(t, start_s.to_string());
    assert!(
        (requests.parse::<f64>().unwrap() - 600.0).abs() < 1e-6,
        "{out}"
    );
    // The source's own problems are still refused, as the daemon would:
    // a header written twice, under a name written plainly or quoted.
    let refused = |file: &str, edit: (&str, &str), source: &str| {
        let path = dir.path().join(file);
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace(
                "X-Scope-OrgID = \"site\"",
                "X-Scope-OrgID = \"site\", x-scope-orgid = \"other\"",
            )
            .replace(edit.0, edit.1);
        std::fs::write(&path, text).unwrap();
        let (code, _, err) = cli(&[
            "trace",
            "--config",
            path.to_str().unwrap(),
            "--source",
            source,
            "--query",
            query,
            "--start",
            &(start_s * 1000).to_string(),
        ]);
        assert_eq!(code, 1, "{err}");
        assert!(!err.contains("policy_dir"), "{err}");
        err
    };
    let err = refused("twice.toml", ("[sources.prom]", "[sources.prom]"), "prom");
    assert!(err.contains("sources.prom"), "{err}");
    let err = refused(
        "quoted.toml",
        ("[sources.prom]", "[sources.\"prom.eu\"]"),
        "prom.eu",
    );
    assert!(err.contains("sources.\"prom.eu\""), "{err}");

    // Played back: docs/backtest.toml's service (5 requests/s a replica,
    // target tracking at 60 % CPU) on this trace sees the traffic
    // Prometheus saw.
    let policies = policy_dir(&[("target-tracking", artifacts::TARGET_TRACKING)]);
    let nasa =
        "trace = { path = \"../tests/data/traces/nasa_jul95_per_minute.csv\", scale = 20.0 }";
    let text = std::fs::read_to_string(docs_config("backtest.toml")).unwrap();
    assert!(text.contains(nasa), "docs/backtest.toml has no {nasa:?}");
    let site = dir.path().join("site.toml");
    let text = text.replace(nasa, &format!("trace = {{ path = {trace:?} }}"));
    std::fs::write(&site, rebased(&text)).unwrap();
    let report = simulate_json(&[
        "--config",
        site.to_str().unwrap(),
        "--policy-dir",
        policies.path().to_str().unwrap(),
        "--for",
        "5h",
    ]);
    let site = &report["scalers"][0];
    let load = &site["load"];
    assert!(
        (load["min"].as_f64().unwrap() - 10.0).abs() < 1e-6
            && (load["max"].as_f64().unwrap() - 50.0).abs() < 1e-6,
        "{load}"
    );
    // Three hours at 10 (2 replicas at 60 %: 3.3 -> 4) and two at 50 (17).
    let replicas = &site["replicas"];
    assert!(replicas["max"].as_f64().unwrap() >= 16.0, "{replicas}");
    assert!(site["scale_outs"].as_u64().unwrap() >= 2, "{site}");
}

#[test]
fn a_trace_prometheus_cannot_give_is_refused_and_nothing_written() {
    let (prometheus, t0_s) = prometheus_with_traffic();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("load.csv");
    std::fs::write(&output, "precious").unwrap();
    let start = (t0_s * 1000 + 60_000).to_string();
    let end = (t0_s * 1000 + 600_000).to_string();
    let trace = |query: &str, extra: &[&str]| {
        let mut args = vec![
            "trace",
            "--query",
            query,
            "--start",
            &start,
            "--end",
            &end,
            "--output",
            output.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = cli(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert_eq!(out, "");
        assert_eq!(std::fs::read_to_string(&output).unwrap(), "precious");
        err
    };
    let url = prometheus.url();
    let err = trace("rate(pod_requests_total[1m])", &["--prometheus", url]);
    assert!(
        err.contains("query returned 2 series; aggregate it to one"),
        "{err}"
    );
    let err = trace("sum(rate(nothing_total[1m]))", &["--prometheus", url]);
    assert!(err.contains("query returned no data"), "{err}");
    let err = trace("sum(rate(http_requests_total[1m])", &["--prometheus", url]);
    assert!(err.contains("query error"), "{err}");
    let err = trace(
        "0 - sum(rate(http_requests_total[1m]))",
        &["--prometheus", url],
    );
    assert!(
        err.contains("the query gave -10") && err.contains("never negative"),
        "{err}"
    );
    let err = trace("up", &["--prometheus", "http://127.0.0.1:9"]);
    assert!(err.contains("unreachable"), "{err}");
    let err = trace("up", &["--prometheus", url, "--step", "1500ms"]);
    assert!(
        err.contains("--step 1s 500ms: a whole number of seconds"),
        "{err}"
    );

    let config = dir.path().join("prod.toml");
    std::fs::write(
        &config,
        format!(
            "policy_dir = \"{}\"\n\n[sources.prom]\nkind = \"prometheus\"\nurl = \"http://127.0.0.1:9\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let err = trace("up", &["--config", config, "--source", "thanos"]);
    assert!(
        err.contains(&format!(
            "--source thanos: {config} has no [sources.thanos]; it has: prom"
        )),
        "{err}"
    );
}

#[test]
fn a_schedule_is_a_floor_the_load_lifts_and_leaves_on_time() {
    // Target tracking at 60 % CPU on a steady 10 requests/s (4 replicas of
    // 5; 100 from 12:00 to 12:30), plus `schedule`: at least 12 replicas on weekdays 09:00-17:00 UTC
    // from 10 minutes early, and Friday 2026-12-11 a holiday of 1. A day
    // and a half from Thursday 00:00.
    let policies = policy_dir(&[
        ("target-tracking", artifacts::TARGET_TRACKING),
        ("schedule", artifacts::SCHEDULE),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site.toml");
    std::fs::write(
        &site,
        format!(
            r#"policy_dir = "{}"

[journal]
path = "{}"

[simulations.site]
capacity_per_replica = 5.0
initial_replicas = 4
startup_delay = "1m"

[simulations.site.load]
base = 10.0
spikes = [{{ at = "12h", duration = "30m", extra = 90.0 }}]

[[scalers]]
name = "site"
interval = "30s"
min = 1
max = 20
target = {{ kind = "simulator", service = "site" }}

[scalers.metrics.cpu]
source = "simulator"
query = "cpu"

[[scalers.policies]]
module = "target-tracking"
params = {{ metric = "cpu", target = 60.0 }}

[[scalers.policies]]
module = "schedule"
params = {{ lead = "10m", windows = "mon-fri 09:00-17:00 12; 2026-12-11 00:00-24:00 1" }}
"#,
            policies.path().display(),
            dir.path().join("journal.db").display()
        ),
    )
    .unwrap();
    let journal = dir.path().join("kept.db");
    let (code, out, err) = cli(&[
        "simulate",
        "--config",
        site.to_str().unwrap(),
        "--policy-dir",
        policies.path().to_str().unwrap(),
        "--start",
        "2026-12-10T00:00:00Z",
        "--for",
        "36h",
        "--journal",
        journal.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "stderr: {err}\nstdout: {out}");
    let records = records(&journal);
    let thursday = scalewise::clock::parse_time_ms("2026-12-10T00:00:00Z").unwrap();
    let at = |h: f64| thursday + (h * 3_600_000.0) as i64;
    let replicas_at = |h: f64| {
        let r = records
            .iter()
            .rfind(|r| r.time_ms <= at(h))
            .expect("a record before");
        r.target.current
    };
    let in_window = |r: &TickRecord| (at(8.0 + 50.0 / 60.0)..at(17.0)).contains(&r.time_ms);
    // Before the lead, target tracking alone.
    assert_eq!(replicas_at(8.8), 4, "at 08:48");
    // In the window (its lead included, a tick to act): never fewer than 12.
    let low: Vec<(i64, u32)> = records
        .iter()
        .filter(|r| in_window(r) && r.time_ms >= at(8.0 + 52.0 / 60.0))
        .map(|r| (r.time_ms, r.target.current))
        .filter(|(_, current)| *current < 12)
        .collect();
    assert!(low.is_empty(), "below the floor in the window: {low:?}");
    // The load lifts the floor: the spike at noon takes the scaler's max.
    assert_eq!(replicas_at(12.4), 20, "at 12:24");
    // The reason names the window.
    let reasons: String = records
        .iter()
        .filter(|r| in_window(r))
        .flat_map(|r| r.evaluations.iter())
        .map(|e| serde_json::to_string(&e.outcome).unwrap())
        .take(4)
        .collect();
    assert!(
        reasons.contains("window `mon-fri 09:00-17:00 12` (UTC)"),
        "{reasons}"
    );
    // After 17:00 the floor goes (down as fast as the envelope lets it),
    // and on the holiday it does not come back at 09:00.
    assert_eq!(replicas_at(19.0), 4, "at 19:00");
    assert_eq!(replicas_at(24.0 + 10.0), 4, "at Friday 10:00");
}

#[test]
fn journal_explain_says_in_words_what_a_record_holds() {
    let policies = policy_dir(&[
        ("target-tracking", artifacts::TARGET_TRACKING),
        ("threshold", artifacts::THRESHOLD),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("run.db");
    let journal = journal.to_str().unwrap();
    let (code, _, err) = cli(&[
        "simulate",
        "--policy-dir",
        policies.path().to_str().unwrap(),
        "--for",
        "20m",
        "--start",
        START,
        "--journal",
        journal,
    ]);
    assert_eq!(code, 0, "{err}");

    // A tick the envelope changed (the demo's web holds through its
    // scale-down stabilisation window), as the journal has it.
    let (code, export, err) = cli(&["journal", "export", "--journal", journal]);
    assert_eq!(code, 0, "{err}");
    let records: Vec<serde_json::Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let changed = records
        .iter()
        .find(|r| r.get("envelope").is_some())
        .expect("a tick the envelope changed");
    let id = changed["id"].as_i64().unwrap().to_string();
    let (code, out, err) = cli(&["journal", "explain", "--journal", journal, &id]);
    assert_eq!(code, 0, "{err}");
    let text = |v: &serde_json::Value| v.as_str().unwrap().to_owned();
    let target = &changed["target"];
    let step = &changed["envelope"][0];
    let evaluation = &changed["evaluations"][0];
    let decision = &evaluation["outcome"]["decision"];
    for line in [
        format!("record {id}: scaler {:?} at ", text(&changed["scaler"])),
        format!(
            "target    simulator {}: current {}, ready {}; bounds {}..{}",
            text(&target["name"]),
            target["current"],
            target["ready"],
            target["min"],
            target["max"]
        ),
        format!(
            "policies  {} sha256:{} → {}: {}",
            text(&evaluation["module"]),
            &text(&evaluation["digest"])[..12],
            decision["desired"],
            text(&decision["reason"])
        ),
        format!(
            "envelope  {} → {}  {}: {}",
            step["from"],
            step["to"],
            text(&step["rule"]),
            text(&step["reason"])
        ),
        format!("desired   {} (", changed["desired"]),
    ] {
        assert!(out.contains(&line), "no {line:?} in\n{out}");
    }
    assert!(out.lines().any(|l| l.starts_with("metrics   ")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("actuator  ")), "{out}");

    let (code, _, err) = cli(&["journal", "explain", "--journal", journal, "999999"]);
    assert_eq!(code, 1);
    assert!(err.contains("no record with id 999999"), "{err}");

    // A scaler's newest record, without looking up its id.
    let newest = records
        .iter()
        .rev()
        .find(|r| r["scaler"] == "worker")
        .unwrap();
    let (code, out, err) = cli(&[
        "journal",
        "explain",
        "--journal",
        journal,
        "--scaler",
        "worker",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("record {}: scaler \"worker\" at ", newest["id"])),
        "{out}"
    );
    let (code, _, err) = cli(&[
        "journal",
        "explain",
        "--journal",
        journal,
        "--scaler",
        "wrker",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no record of a scaler named \"wrker\""),
        "{err}"
    );

    // Through the daemon's config, from a shell that has none of its
    // secrets and not its policy folder: only the journal's path is read.
    let config = dir.path().join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "policy_dir = \"/nonexistent/policies\"\n\n[journal]\npath = {journal:?}\n\n\
             [sources.prom]\nkind = \"prometheus\"\nurl = \"http://prometheus:9090\"\n\
             bearer_token = {{ env = \"SCALEWISE_TEST_UNSET_TOKEN\" }}\n"
        ),
    )
    .unwrap();
    let (code, out, err) = cli(&[
        "journal",
        "explain",
        "--config",
        config.to_str().unwrap(),
        "--scaler",
        "worker",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("record "), "{out}");
}
