//! The Prometheus source against a real Prometheus server (Debian's
//! `prometheus` package), scraping an exporter the tests control.
//!
//! The tests share one live server (started once, scraping two exporters
//! every second); each test uses its own series names. Range queries run
//! against a second server loaded with fixed history. Failure modes that
//! need a misbehaving peer (refused connections, a server that never
//! answers, a proxy's HTTP errors, recorded auth headers, counted requests)
//! use the stubs of `scalewise_tests::stub_http`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scalewise::clock::wall_clock_ms;
use scalewise::config::{BasicAuth, HeaderSetting, PrometheusConfig, Secret};
use scalewise::policy::Point;
use scalewise::sources::prometheus::{MAX_ANSWER_BYTES, PrometheusSource};
use scalewise::sources::{MetricError, MetricQuery, Source, check_series};
use scalewise_tests::prometheus::{Exporter, PrometheusServer};
use scalewise_tests::stub_http::{
    Canned, CountingProxy, RecordingServer, closed_port, silent_listener,
};
use scalewise_tests::wait_until;
use tokio::sync::OnceCell;

/// Long enough for a loaded 2-core CI machine; the waits end as soon as
/// their condition holds.
const WAIT: Duration = Duration::from_secs(30);

/// The server shared by the tests of this file.
struct Live {
    prometheus: PrometheusServer,
    /// Scraped as job `app`; tests add their own series.
    exporter: Exporter,
    /// Scraped as job `doomed`; one test stops it.
    doomed: Mutex<Exporter>,
}

static LIVE: OnceCell<Live> = OnceCell::const_new();

async fn live() -> &'static Live {
    LIVE.get_or_init(|| async {
        let exporter = Exporter::start().expect("exporter");
        let doomed = Exporter::start().expect("exporter");
        exporter.set("sw_up", 1.0);
        doomed.set("sw_doomed", 9.0);
        let prometheus = PrometheusServer::builder()
            .scrape("app", exporter.addr())
            .scrape("doomed", doomed.addr())
            .start()
            .await
            .expect("a real Prometheus server (is it installed?)");
        prometheus
            .wait_for_value("sw_up", WAIT, |v| v == 1.0)
            .await
            .expect("the first scrape");
        eprintln!(
            "shared Prometheus answers its first sample {:?} after start",
            prometheus.started().elapsed()
        );
        Live {
            prometheus,
            exporter,
            doomed: Mutex::new(doomed),
        }
    })
    .await
}

fn config(url: &str) -> PrometheusConfig {
    PrometheusConfig {
        url: url.to_owned(),
        timeout: Duration::from_secs(5),
        bearer_token: None,
        basic_auth: None,
        headers: Default::default(),
        ca_file: None,
        client_cert: None,
        client_key: None,
    }
}

fn source(url: &str) -> PrometheusSource {
    PrometheusSource::new("prom", &config(url)).expect("a valid source")
}

fn instant(query: &str) -> MetricQuery {
    MetricQuery {
        query: query.to_owned(),
        window_ms: None,
        step_ms: 1000,
    }
}

fn windowed(query: &str, window_ms: i64, step_ms: i64) -> MetricQuery {
    MetricQuery {
        query: query.to_owned(),
        window_ms: Some(window_ms),
        step_ms,
    }
}

async fn fetch_now(source: &PrometheusSource, query: &str) -> Result<Vec<Point>, MetricError> {
    source.fetch(&instant(query), wall_clock_ms()).await
}

/// Polls the source until its instant answer for `query` has this value.
async fn wait_for_source_value(source: &PrometheusSource, query: &str, value: f64) -> Vec<Point> {
    wait_until(&format!("{query} = {value}"), WAIT, move || async move {
        match fetch_now(source, query).await {
            Ok(points) if points.len() == 1 && points[0].value == value => Ok(points),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap()
}

/// Polls the source until fetching `query` fails with `expected`.
async fn wait_for_source_error(source: &PrometheusSource, query: &str, expected: MetricError) {
    let expected = &expected;
    wait_until(
        &format!("{query} to fail with {expected}"),
        WAIT,
        move || async move {
            match fetch_now(source, query).await {
                Err(e) if &e == expected => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn instant_value_follows_the_exporter() {
    let live = live().await;
    let source = source(live.prometheus.url());
    live.exporter.set("sw_instant", 3.0);
    let points = wait_for_source_value(&source, "sw_instant", 3.0).await;

    // The point carries the time of the scrape, not the evaluation time.
    let now = wall_clock_ms();
    let age = now - points[0].timestamp_ms;
    assert!((0..5_000).contains(&age), "sample age {age} ms");
    assert_eq!(check_series(&points, now, Some(5_000)), Ok(()));

    let changed = Instant::now();
    live.exporter.set("sw_instant", 7.5);
    wait_for_source_value(&source, "sw_instant", 7.5).await;
    eprintln!(
        "a changed value reached the source after {:?}",
        changed.elapsed()
    );

    // Scalewise's time 10 minutes ahead of the wall clock (it was set back
    // while the daemon ran; Scalewise's time never goes back): Prometheus
    // is asked at the wall clock's time and the answer comes dated on
    // Scalewise's time, fresh, not 10 minutes stale (or empty, past the
    // lookback) until a restart.
    let ahead = wall_clock_ms() + 600_000;
    let points = source.fetch(&instant("sw_instant"), ahead).await.unwrap();
    assert_eq!(points[0].value, 7.5);
    let age = ahead - points[0].timestamp_ms;
    assert!((0..5_000).contains(&age), "sample age {age} ms");
    assert_eq!(check_series(&points, ahead, Some(5_000)), Ok(()));
    let window = source
        .fetch(&windowed("sw_instant", 30_000, 5_000), ahead)
        .await
        .unwrap();
    let newest = window.last().unwrap().timestamp_ms;
    assert!((0..=5_000).contains(&(ahead - newest)), "{window:?}");
}

#[tokio::test]
async fn several_series_are_refused_naming_their_count() {
    let live = live().await;
    let source = source(live.prometheus.url());
    for (pod, value) in [("a", 1.0), ("b", 2.0), ("c", 3.0)] {
        live.exporter
            .set(&format!("sw_pods{{pod=\"{pod}\"}}"), value);
    }
    // Aggregated, the data is one series (waiting for it through the
    // source: it evaluates at whole seconds, Prometheus' own "now" may be
    // later).
    let points = wait_for_source_value(&source, "sum(sw_pods)", 6.0).await;
    assert_eq!(points.len(), 1);

    let err = fetch_now(&source, "sw_pods").await.unwrap_err();
    assert_eq!(err, MetricError::MultipleSeries(3));
    assert!(err.to_string().contains("3 series"), "{err}");
    let err = source
        .fetch(&windowed("sw_pods", 10_000, 1_000), wall_clock_ms())
        .await
        .unwrap_err();
    assert_eq!(err, MetricError::MultipleSeries(3));
}

#[tokio::test]
async fn refused_queries_carry_prometheus_message() {
    let live = live().await;
    let source = source(live.prometheus.url());

    // A syntax error: Prometheus answers 400 bad_data.
    let MetricError::Query(message) = fetch_now(&source, "sum(sw_up").await.unwrap_err() else {
        panic!("expected a query error");
    };
    assert!(message.contains("parse error"), "{message}");

    // An execution error: Prometheus answers 422 execution.
    let two_series = r#"(label_replace(vector(1), "a", "1", "", "") or label_replace(vector(2), "a", "2", "", ""))"#;
    let query = format!("{two_series} * on() {two_series}");
    let MetricError::Query(message) = fetch_now(&source, &query).await.unwrap_err() else {
        panic!("expected a query error");
    };
    assert!(message.contains("duplicate series"), "{message}");

    // A window too fine for Prometheus' 11,000 points per series.
    let err = source
        .fetch(&windowed("sum(sw_up)", 3_600_000, 100), wall_clock_ms())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MetricError::Query(m) if m.contains("11,000 points")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_series_nobody_exports_is_empty() {
    let live = live().await;
    let source = source(live.prometheus.url());
    assert_eq!(
        fetch_now(&source, "sw_never_exported").await,
        Err(MetricError::Empty)
    );
    assert_eq!(
        fetch_now(&source, "sum(sw_never_exported)").await,
        Err(MetricError::Empty)
    );
}

#[tokio::test]
async fn nan_and_infinite_values_fail_the_host_check() {
    let live = live().await;
    let source = &source(live.prometheus.url());
    live.exporter.set("sw_nan", f64::NAN);
    live.exporter.set("sw_inf", f64::INFINITY);
    for query in ["sw_nan", "sw_inf"] {
        let points = wait_until(
            &format!("{query} to be scraped"),
            WAIT,
            move || async move { fetch_now(source, query).await.map_err(|e| e.to_string()) },
        )
        .await
        .unwrap();
        assert!(!points[0].value.is_finite(), "{points:?}");
        let err = check_series(&points, wall_clock_ms(), None).unwrap_err();
        assert_eq!(err.kind(), "not_finite", "{err}");
    }
}

#[tokio::test]
async fn a_vanished_series_fails_instead_of_repeating_its_last_value() {
    let live = live().await;
    let source = source(live.prometheus.url());
    live.exporter.set("sw_vanishing", 5.0);
    wait_for_source_value(&source, "sum(sw_vanishing)", 5.0).await;

    let removed = Instant::now();
    live.exporter.remove("sw_vanishing");
    // Prometheus marks the series stale at the next scrape; without that the
    // lookback would keep answering 5 for five minutes.
    wait_for_source_error(&source, "sum(sw_vanishing)", MetricError::Empty).await;
    eprintln!("a removed series failed after {:?}", removed.elapsed());
}

#[tokio::test]
async fn a_stopped_exporter_makes_its_metric_fail() {
    let live = live().await;
    let source = source(live.prometheus.url());
    wait_for_source_value(&source, "sum(sw_doomed)", 9.0).await;

    let stopped = Instant::now();
    live.doomed.lock().unwrap().stop();
    wait_for_source_error(&source, "sum(sw_doomed)", MetricError::Empty).await;
    eprintln!(
        "a stopped exporter's metric failed after {:?}",
        stopped.elapsed()
    );
}

/// A counter whose target stops reporting: Prometheus marks its series
/// stale at the next scrape, but `rate(x[1m])` still computes from the
/// samples of the minute before, falling as if traffic dropped (a scale-in
/// on nothing). No current sample, older ones within the range: stale, also
/// beside a fresh input. A counter never exported, read `or vector(0)`, has
/// no sample at all: 0, as before.
#[tokio::test]
async fn a_rate_over_a_target_that_stopped_reporting_is_stale() {
    let live = live().await;
    let source = source(live.prometheus.url());
    live.exporter.set("sw_gone_total", 10.0);
    wait_for_source_value(&source, "sum(sw_gone_total)", 10.0).await;
    live.exporter.set("sw_gone_total", 100.0);
    wait_for_source_value(&source, "sum(sw_gone_total)", 100.0).await;
    let queries = [
        "sum(rate(sw_gone_total[1m]))",
        "sum(rate(sw_gone_total[1m])) + sum(sw_up)",
    ];
    for query in queries {
        let points = fetch_now(&source, query).await.unwrap();
        assert!(points[0].value > 0.0, "{query}: {points:?}");
    }

    live.exporter.remove("sw_gone_total");
    for query in queries {
        wait_until(&format!("{query} stale"), WAIT, || async {
            match fetch_now(&source, query).await {
                Err(e @ MetricError::NotCurrent) => Ok(e),
                other => Err(format!("{other:?}")),
            }
        })
        .await
        .unwrap();
    }
    assert_eq!(
        fetch_now(&source, "sum(sw_gone_total)").await,
        Err(MetricError::Empty),
        "the instant read is empty at once"
    );
    let never = fetch_now(&source, "sum(rate(sw_never_total[1m])) or vector(0)")
        .await
        .unwrap();
    assert_eq!(never.len(), 1);
    assert_eq!(never[0].value, 0.0);
}

#[tokio::test]
async fn data_without_staleness_markers_is_dated_by_its_own_timestamp() {
    let live = live().await;
    let source = source(live.prometheus.url());
    // A sample stamped 30 s ago by its exporter (as federation or the
    // Pushgateway do): Prometheus keeps answering it for the 5-minute
    // lookback and writes no staleness marker.
    let frozen_ms = wall_clock_ms() - 30_000;
    live.exporter.set_at("sw_frozen", 4.0, frozen_ms);
    live.exporter.set("sw_companion", 1.0);
    wait_for_source_value(&source, "sum(sw_frozen) + sum(sw_companion)", 5.0).await;

    // Prometheus' own answer looks fresh: stamped with the evaluation time.
    let naive = live
        .prometheus
        .client()
        .query("sum(sw_frozen)")
        .get()
        .await
        .unwrap();
    let naive_ms = (naive.data().as_vector().unwrap()[0].sample().timestamp() * 1000.0) as i64;
    assert!(wall_clock_ms() - naive_ms < 2_000);

    // The source dates it by the sample's own time, so max_age catches it.
    let now = wall_clock_ms();
    for query in [
        "sum(sw_frozen)",
        "sum(sw_frozen) + sum(sw_companion)",
        "sw_frozen * 2",
    ] {
        let points = source.fetch(&instant(query), now).await.unwrap();
        assert_eq!(points.len(), 1, "{query}");
        assert_eq!(points[0].timestamp_ms, frozen_ms, "{query}");
        let err = check_series(&points, now, Some(10_000)).unwrap_err();
        assert!(
            matches!(err, MetricError::Stale { age_ms, max_age_ms: 10_000 } if age_ms >= 30_000),
            "{query}: {err:?}"
        );
    }

    // A window: every point after the data's time only repeats it.
    let points = source
        .fetch(&windowed("sum(sw_frozen)", 10_000, 1_000), now)
        .await
        .unwrap();
    assert_eq!(
        points,
        vec![Point {
            timestamp_ms: frozen_ms,
            value: 4.0
        }]
    );
    assert_eq!(
        check_series(&points, now, Some(10_000)).unwrap_err().kind(),
        "stale"
    );

    // The fresh input alone passes.
    let points = source
        .fetch(&instant("sum(sw_companion)"), now)
        .await
        .unwrap();
    assert_eq!(check_series(&points, now, Some(10_000)), Ok(()));
}

/// History loaded with promtool: `sw_history` = i at T0 + 15·i s for i in
/// 0..=80 (20 minutes), and two pods' series.
fn history(t0_s: i64) -> String {
    let mut om = String::from("# TYPE sw_history gauge\n");
    for i in 0..=80 {
        om.push_str(&format!("sw_history {i} {}\n", t0_s + 15 * i));
    }
    om.push_str("# TYPE sw_history_pods gauge\n");
    for pod in ["a", "b"] {
        for i in 0..=80 {
            om.push_str(&format!(
                "sw_history_pods{{pod=\"{pod}\"}} 1 {}\n",
                t0_s + 15 * i
            ));
        }
    }
    om.push_str("# EOF\n");
    om
}

#[tokio::test]
async fn range_queries_deliver_the_window_at_the_step_oldest_first() {
    // Three hours ago: inside the retention, clear of the live head block.
    let t0_s = (wall_clock_ms() / 1000 - 3 * 3600) / 60 * 60;
    let prometheus = PrometheusServer::builder()
        .backfill(&history(t0_s))
        .start()
        .await
        .expect("a real Prometheus server with backfilled history");
    let source = source(prometheus.url());
    let t0_ms = t0_s * 1000;

    // 10 minutes in (plus 400 ms, dropped: evaluation is per whole second),
    // a 5-minute window at 30 s: 11 points on the 30 s grid ending at now.
    let now = t0_ms + 600_000 + 400;
    let points = source
        .fetch(&windowed("sw_history", 300_000, 30_000), now)
        .await
        .unwrap();
    let expected: Vec<Point> = (0..=10)
        .map(|k| {
            let t = 300 + 30 * k;
            Point {
                timestamp_ms: t0_ms + t * 1000,
                value: (t / 15) as f64,
            }
        })
        .collect();
    assert_eq!(points, expected);
    assert_eq!(check_series(&points, now, Some(60_000)), Ok(()));

    // An instant query between two samples: the value of the older one,
    // dated by that sample.
    let points = source
        .fetch(&instant("sw_history"), t0_ms + 607_000)
        .await
        .unwrap();
    assert_eq!(
        points,
        vec![Point {
            timestamp_ms: t0_ms + 600_000,
            value: 40.0
        }]
    );

    // Several series in a window are refused; aggregated they are one.
    let window = windowed("sw_history_pods", 60_000, 15_000);
    assert_eq!(
        source.fetch(&window, now).await,
        Err(MetricError::MultipleSeries(2))
    );
    let points = source
        .fetch(&windowed("sum(sw_history_pods)", 60_000, 15_000), now)
        .await
        .unwrap();
    assert_eq!(points.len(), 5);
    assert!(points.iter().all(|p| p.value == 2.0), "{points:?}");

    // Two minutes after the history ends, the lookback still answers 80 on
    // the whole grid; the source dates it at the last sample, so the host
    // sees it as two minutes old.
    let end_ms = t0_ms + 1_200_000;
    let points = source
        .fetch(&windowed("sw_history", 60_000, 15_000), end_ms + 120_000)
        .await
        .unwrap();
    assert_eq!(
        points,
        vec![Point {
            timestamp_ms: end_ms,
            value: 80.0
        }]
    );
    assert_eq!(
        check_series(&points, end_ms + 120_000, Some(60_000)),
        Err(MetricError::Stale {
            age_ms: 120_000,
            max_age_ms: 60_000
        })
    );
}

#[tokio::test]
async fn a_server_that_is_down_is_unreachable() {
    let addr = closed_port().unwrap();
    let source = source(&format!("http://{addr}"));
    let started = Instant::now();
    let err = fetch_now(&source, "up").await.unwrap_err();
    let MetricError::Unreachable(message) = &err else {
        panic!("expected unreachable, got {err:?}");
    };
    assert!(message.to_lowercase().contains("refused"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let addr = silent_listener().await.unwrap();
    let mut config = config(&format!("http://{addr}"));
    config.timeout = Duration::from_millis(300);
    let source = PrometheusSource::new("prom", &config).unwrap();
    let started = Instant::now();
    assert_eq!(
        fetch_now(&source, "up").await,
        Err(MetricError::Timeout(300))
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(290) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}

/// Every query, instant or over a window, asks Thanos (or another querier
/// that fans out to stores) to fail rather than answer from the stores that
/// answered: a partial sum looks valid and would scale in. A recording
/// server stands in for Thanos, which does not run here; Prometheus
/// ignores the parameter.
#[tokio::test]
async fn every_query_refuses_a_partial_response() {
    let recorder = RecordingServer::start(Canned::prometheus_sample(1.0, 5.0))
        .await
        .unwrap();
    let recorded = source(&recorder.url());
    // One time for both: the freshness check is shared within a second,
    // and the second fetch in the next second would ask it again.
    let now = wall_clock_ms();
    recorded.fetch(&instant("sum(up)"), now).await.unwrap();
    let _ = recorded
        .fetch(&windowed("sum(up)", 60_000, 15_000), now)
        .await;
    let uris = recorder.uris();
    // The instant query, its freshness check (max(timestamp(...))) and
    // the range query.
    assert_eq!(uris.len(), 3, "{uris:?}");
    assert!(uris[1].contains("timestamp"), "{uris:?}");
    assert!(
        uris.iter().all(|u| u.contains("partial_response=false")),
        "{uris:?}"
    );
}

#[tokio::test]
async fn http_error_statuses_are_reported_with_their_status() {
    let unauthorized = RecordingServer::start(Canned::text_error(401, "Unauthorized\n"))
        .await
        .unwrap();
    assert_eq!(
        fetch_now(&source(&unauthorized.url()), "up").await,
        Err(MetricError::Http {
            status: 401,
            message: "Unauthorized".into()
        })
    );
    let overloaded = RecordingServer::start(Canned::text_error(503, "upstream overloaded"))
        .await
        .unwrap();
    assert_eq!(
        fetch_now(&source(&overloaded.url()), "up")
            .await
            .unwrap_err()
            .kind(),
        "http"
    );

    // An answer too large to hold (a query that forgot its sum() over a
    // fleet) is not read whole, and says what to do.
    let huge = RecordingServer::start(Canned {
        status: 200,
        content_type: "application/json",
        body: " ".repeat(MAX_ANSWER_BYTES + 1),
        headers: Vec::new(),
    })
    .await
    .unwrap();
    let err = fetch_now(&source(&huge.url()), "up").await.unwrap_err();
    assert_eq!(err.kind(), "query", "{err}");
    assert!(
        err.to_string().contains("larger than 8 MiB") && err.to_string().contains("sum(...)"),
        "{err}"
    );

    // A redirect is not followed (it would carry the source's credentials
    // to wherever it points), even to a real Prometheus: it says what to do.
    let live = live().await;
    let redirect = RecordingServer::start(Canned {
        status: 302,
        content_type: "text/plain",
        body: String::new(),
        headers: vec![(
            "location",
            format!("{}/api/v1/query?query=up", live.prometheus.url()),
        )],
    })
    .await
    .unwrap();
    let err = fetch_now(&source(&redirect.url()), "up").await.unwrap_err();
    assert!(
        matches!(&err, MetricError::Http { status: 302, message } if message.contains("not followed")),
        "{err:?}"
    );

    // The real server, asked under a path prefix it does not serve.
    let wrong_prefix = source(&format!("{}/not-prometheus", live.prometheus.url()));
    let err = fetch_now(&wrong_prefix, "up").await.unwrap_err();
    assert!(
        matches!(err, MetricError::Http { status: 404, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn auth_and_custom_headers_are_sent_and_never_shown() {
    let server = RecordingServer::start(Canned::prometheus_sample(1_700_000_000.0, 42.0))
        .await
        .unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, "tok-3f9a\n").unwrap();
    let password_file = secrets.path().join("password");
    std::fs::write(&password_file, "pa55-w0rd").unwrap();

    let key_file = secrets.path().join("key");
    std::fs::write(&key_file, "k3y-77\n").unwrap();

    let mut bearer = config(&server.url());
    bearer.bearer_token = Some(Secret::File(token_file));
    bearer
        .headers
        .insert("X-Scope-OrgID".into(), "team-a".into());
    bearer.headers.insert(
        "X-Api-Key".into(),
        HeaderSetting::Secret(Secret::File(key_file)),
    );
    let bearer = PrometheusSource::new("prom", &bearer).unwrap();
    assert_eq!(fetch_now(&bearer, "sum(up)").await.unwrap()[0].value, 42.0);

    let mut basic = config(&server.url());
    basic.basic_auth = Some(BasicAuth {
        username: "scalewise".into(),
        password: Secret::File(password_file),
    });
    let basic = PrometheusSource::new("prom", &basic).unwrap();
    assert_eq!(fetch_now(&basic, "sum(up)").await.unwrap()[0].value, 42.0);

    let requests = server.requests();
    // Each fetch sends the query and its freshness query.
    assert_eq!(requests.len(), 4, "{requests:?}");
    for headers in &requests[..2] {
        assert_eq!(headers["authorization"], "Bearer tok-3f9a");
        assert_eq!(headers["x-scope-orgid"], "team-a");
        assert_eq!(headers["x-api-key"], "k3y-77");
    }
    use base64::Engine as _;
    let expected_basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("scalewise:pa55-w0rd")
    );
    for headers in &requests[2..] {
        assert_eq!(headers["authorization"], expected_basic.as_str());
        assert!(headers.get("x-scope-orgid").is_none());
    }

    for source in [&bearer, &basic] {
        let debug = format!("{source:?}");
        assert!(
            !debug.contains("tok-3f9a") && !debug.contains("pa55") && !debug.contains("k3y"),
            "{debug}"
        );
    }
}

#[tokio::test]
async fn concurrent_fetches_of_one_query_make_one_request() {
    let live = live().await;
    live.exporter.set("sw_shared", 11.0);
    // Waited for directly, so that the proxy counts only the fetches below.
    wait_for_source_value(&source(live.prometheus.url()), "sum(sw_shared)", 11.0).await;
    let proxy = CountingProxy::start(live.prometheus.url()).await.unwrap();
    let source = Arc::new(source(&proxy.url()));

    // Twenty scalers sharing the query tick in the same second, and three
    // others ask for a different one over the same series.
    let now = wall_clock_ms();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..23 {
        let source = source.clone();
        let query = if i < 20 {
            "sum(sw_shared)"
        } else {
            "max(sw_shared)"
        };
        tasks.spawn(async move { source.fetch(&instant(query), now).await });
    }
    let answers = tasks.join_all().await;
    let finished = Instant::now();
    for answer in &answers {
        assert_eq!(answer.as_ref().unwrap()[0].value, 11.0);
    }
    assert_eq!(proxy.count("sum(sw_shared)"), 1, "{:?}", proxy.counts());
    assert_eq!(proxy.count("max(sw_shared)"), 1, "{:?}", proxy.counts());
    // Both read the same selector: one freshness query serves them.
    assert_eq!(
        proxy.count("max(timestamp(sw_shared))"),
        1,
        "{:?}",
        proxy.counts()
    );

    // Later in the same second: the finished answer is reused (for a
    // second of real time after it came; a starved machine may take longer
    // to get here, and then a new request is right).
    let asked = Instant::now();
    source.fetch(&instant("sum(sw_shared)"), now).await.unwrap();
    if asked.duration_since(finished) < Duration::from_millis(500) {
        assert_eq!(proxy.count("sum(sw_shared)"), 1);
    }
    // The next second is a new answer.
    source
        .fetch(&instant("sum(sw_shared)"), now + 1_000)
        .await
        .unwrap();
    assert_eq!(proxy.count("sum(sw_shared)"), 2);
}

/// A real Prometheus that asks clients for a certificate its CA signed
/// (mutual TLS, through its own web config): a source without
/// `client_cert` cannot read it, nor one presenting a certificate another
/// CA signed; one with the right `client_cert` and `client_key` reads.
#[tokio::test]
async fn mutual_tls_presents_the_client_certificate() {
    use scalewise_tests::https::ClientCertificate;

    let server = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let client = ClientCertificate::mint("scalewise").unwrap();
    let prometheus = PrometheusServer::builder()
        .tls(&server.cert.pem(), &server.signing_key.serialize_pem())
        .require_client_cert(&client.ca_pem, &client.identity_pem())
        .start()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, server.cert.pem()).unwrap();
    let mut config = config(prometheus.url());
    config.ca_file = Some(ca);

    let without = PrometheusSource::new("prom", &config).unwrap();
    let err = fetch_now(&without, "vector(4)").await.unwrap_err();
    assert_eq!(err.kind(), "unreachable", "{err:?}");

    let stranger = ClientCertificate::mint("stranger").unwrap();
    let other = tempfile::tempdir().unwrap();
    let (cert, key) = stranger.write_to(other.path()).unwrap();
    let refused = PrometheusSource::new(
        "prom",
        &PrometheusConfig {
            client_cert: Some(cert),
            client_key: Some(key),
            ..config.clone()
        },
    )
    .unwrap();
    let err = fetch_now(&refused, "vector(4)").await.unwrap_err();
    assert_eq!(err.kind(), "unreachable", "{err:?}");

    let (cert, key) = client.write_to(dir.path()).unwrap();
    config.client_cert = Some(cert);
    config.client_key = Some(key);
    let presenting = PrometheusSource::new("prom", &config).unwrap();
    let points = fetch_now(&presenting, "vector(4)").await.unwrap();
    assert_eq!(
        points.iter().map(|p| p.value).collect::<Vec<_>>(),
        vec![4.0]
    );
}

/// A real Prometheus serving HTTPS with a certificate no system trusts (as
/// a private CA's): unreachable without `ca_file`, read with it.
#[tokio::test]
async fn https_with_a_private_ca_is_read_with_its_ca_file() {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let prometheus = PrometheusServer::builder()
        .tls(
            &certified.cert.pem(),
            &certified.signing_key.serialize_pem(),
        )
        .start()
        .await
        .unwrap();
    assert!(prometheus.url().starts_with("https://"));
    let err = fetch_now(&source(prometheus.url()), "vector(4)")
        .await
        .unwrap_err();
    assert!(matches!(err, MetricError::Unreachable(_)), "{err:?}");
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, certified.cert.pem()).unwrap();
    let mut config = config(prometheus.url());
    config.ca_file = Some(ca);
    let trusting = PrometheusSource::new("prom", &config).unwrap();
    let points = fetch_now(&trusting, "vector(4)").await.unwrap();
    assert_eq!(
        points.iter().map(|p| p.value).collect::<Vec<_>>(),
        vec![4.0]
    );
}
