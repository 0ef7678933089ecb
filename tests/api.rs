//! The HTTP API in-process (`tower::ServiceExt::oneshot` on
//! `scalewise::api::router`) over a real daemon whose scalers were stepped,
//! and the journal commands of the binary over the journal it wrote.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use scalewise::api::AppState;
use scalewise::config::Config;
use scalewise::journal::{ActuationRecord, TickRecord};
use scalewise_tests::artifacts;
use scalewise_tests::e2e::{Harness, MINUTE, SECOND, T0};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tower::ServiceExt;

const CONFIG: &str = r#"
policy_dir = "{policies}"

[journal]
path = "{journal}"

[simulations.web]
capacity_per_replica = 100.0
initial_replicas = 4
load = { base = 800.0 }

[simulations.broken]
capacity_per_replica = 100.0
initial_replicas = 2
load = { base = 100.0 }

# 4 → 8 → 16, then holds at 50% CPU.
[[scalers]]
name = "web"
interval = "15s"
min = 2
max = 20
target = { kind = "simulator", service = "web" }
metrics.cpu = { source = "simulator", query = "cpu" }
policies = [{ module = "target-tracking", params = { metric = "cpu", target = 50.0 } }]

[[scalers]]
name = "broken"
interval = "15s"
min = 1
max = 5
target = { kind = "simulator", service = "broken" }
policies = [{ module = "always-errors" }]
"#;

struct Setup {
    policies: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            policies: scalewise_tests::policy_dir(&[
                ("target-tracking", artifacts::TARGET_TRACKING),
                ("always-errors", artifacts::ALWAYS_ERRORS),
            ]),
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn journal(&self) -> PathBuf {
        self.state.path().join("journal.db")
    }

    fn config(&self) -> Config {
        let text = CONFIG
            .replace("{policies}", &self.policies.path().display().to_string())
            .replace("{journal}", &self.journal().display().to_string());
        Config::parse(&text, &self.state.path().join("api.toml")).unwrap()
    }
}

/// Where the in-process requests come from, as the server would tell.
const LOOPBACK: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50000);

/// One request from loopback: (status, content type, body).
async fn call(state: &AppState, method: &str, uri: &str) -> (StatusCode, String, String) {
    call_from(state, method, uri, LOOPBACK).await
}

/// One request from `peer`: (status, content type, body).
async fn call_from(
    state: &AppState,
    method: &str,
    uri: &str,
    peer: SocketAddr,
) -> (StatusCode, String, String) {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    request.extensions_mut().insert(ConnectInfo(peer));
    let response = scalewise::api::router(state.clone())
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// A request answered with JSON: (status, the JSON).
async fn json(state: &AppState, method: &str, uri: &str) -> (StatusCode, Value) {
    let (status, content_type, body) = call(state, method, uri).await;
    assert!(
        content_type.starts_with("application/json"),
        "{method} {uri}: {content_type} {body}"
    );
    (status, serde_json::from_str(&body).unwrap())
}

/// Asserts a JSON error answer with this status and code.
async fn assert_error(
    state: &AppState,
    method: &str,
    uri: &str,
    status: StatusCode,
    code: &str,
) -> String {
    let (got, body) = json(state, method, uri).await;
    assert_eq!(got, status, "{method} {uri}: {body}");
    assert_eq!(body["error"]["code"], code, "{method} {uri}: {body}");
    let message = body["error"]["message"].as_str().unwrap().to_owned();
    assert!(!message.is_empty());
    message
}

fn records(value: &Value) -> Vec<TickRecord> {
    serde_json::from_value(value.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_health_metrics_scalers_decisions_and_policies() {
    let setup = Setup::new();
    let mut h = Harness::build(setup.config(), T0).await;
    let state = h.daemon.app_state();

    let (status, _, body) = call(&state, "GET", "/healthz").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    let (status, _, _) = call(&state, "GET", "/readyz").await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready before the scalers run"
    );

    h.run_until(T0 + 2 * MINUTE).await;
    let web = h.journal_of("web").await;
    assert_eq!(web.len(), 9);
    let story: Vec<(u32, u32)> = web
        .iter()
        .filter(|r| r.desired != r.target.current)
        .map(|r| (r.target.current, r.desired))
        .collect();
    assert_eq!(story, [(4, 8), (8, 16)]);

    // /metrics: the host's own metrics, named and labelled as documented.
    let (status, content_type, metrics) = call(&state, "GET", "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    for line in [
        "scalewise_ticks_total{scaler=\"web\"} 9",
        "scalewise_ticks_total{scaler=\"broken\"} 9",
        "scalewise_policy_evaluation_duration_seconds_count{module=\"target-tracking\"} 9",
        "scalewise_policy_evaluation_duration_seconds_count{module=\"always-errors\"} 9",
        // Every evaluation's memory, in buckets of 1, 2, 4, ... MiB: the
        // bundled policy's 448 KiB (stack, data, initial heap) falls in the
        // first.
        "scalewise_policy_memory_bytes_count{module=\"target-tracking\"} 9",
        "scalewise_policy_memory_bytes_bucket{le=\"1048576.0\",module=\"target-tracking\"} 9",
        "scalewise_policy_errors_total{module=\"always-errors\",kind=\"policy_error\"} 9",
        "scalewise_actuations_total{scaler=\"web\",result=\"done\"} 2",
        "scalewise_replicas_current{scaler=\"web\"} 16",
        "scalewise_replicas_desired{scaler=\"web\"} 16",
        "scalewise_replicas_ready{scaler=\"web\"} 16",
        "scalewise_replicas_current{scaler=\"broken\"} 2",
        "scalewise_replicas_desired{scaler=\"broken\"} 2",
        "scalewise_modules_loaded 2",
        // web's one metric, read at each tick; both targets observed at
        // each tick, web's scaled twice.
        "scalewise_metric_fetch_duration_seconds_count{source=\"simulator\"} 9",
        "scalewise_target_call_duration_seconds_count{kind=\"simulator\",call=\"observe\"} 18",
        "scalewise_target_call_duration_seconds_count{kind=\"simulator\",call=\"scale\"} 2",
        "# TYPE scalewise_tick_lag_seconds histogram",
        "# TYPE scalewise_policy_evaluation_duration_seconds histogram",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    assert!(
        !metrics.contains("policy_errors_total{module=\"target-tracking\""),
        "{metrics}"
    );
    // The bundled policies never grow their memory (their initial heap).
    assert!(
        !metrics.contains("policy_memory_growths_total{"),
        "{metrics}"
    );

    // /v1/scalers and /v1/scalers/{name}.
    let (status, scalers) = json(&state, "GET", "/v1/scalers").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = scalers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["broken", "web"]);
    let (status, one) = json(&state, "GET", "/v1/scalers/web").await;
    assert_eq!(status, StatusCode::OK);
    let newest = web.last().unwrap();
    assert_eq!(one["desired"], 16);
    assert_eq!(one["current"], 16);
    assert_eq!(one["ticks"], 9);
    assert_eq!(one["paused"], false);
    assert_eq!(one["last_record_id"], newest.id.unwrap());
    assert_eq!(one["last_tick_ms"], newest.time_ms);
    assert_eq!(one["policies"][0]["module"], "target-tracking");
    let (_, broken) = json(&state, "GET", "/v1/scalers/broken").await;
    assert!(
        broken["problems"][0]
            .as_str()
            .unwrap()
            .contains("policy always-errors: always-errors refuses to decide"),
        "{broken}"
    );
    assert_error(
        &state,
        "GET",
        "/v1/scalers/nope",
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // History: the same ticks' columns, oldest first, for the dashboard.
    let (status, history) = json(&state, "GET", "/v1/scalers/web/history?limit=3").await;
    assert_eq!(status, StatusCode::OK);
    let history = history.as_array().unwrap();
    let oldest_first: Vec<&TickRecord> = web.iter().rev().take(3).rev().collect();
    assert_eq!(history.len(), 3);
    for (summary, record) in history.iter().zip(&oldest_first) {
        assert_eq!(summary["id"], record.id.unwrap());
        assert_eq!(summary["time_ms"], record.time_ms);
        assert_eq!(summary["current"], record.target.current);
        assert_eq!(summary["desired"], record.desired);
        assert!(
            summary.get("evaluations").is_none(),
            "no contexts: {summary}"
        );
    }
    let message = assert_error(
        &state,
        "GET",
        "/v1/scalers/web/history?limit=0",
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert!(message.contains("between 1 and 10000"), "{message}");

    // Decisions, from the journal, newest first.
    let (status, latest) = json(&state, "GET", "/v1/scalers/web/decisions?limit=3").await;
    assert_eq!(status, StatusCode::OK);
    let newest_three: Vec<TickRecord> = web.iter().rev().take(3).cloned().collect();
    assert_eq!(records(&latest), newest_three);
    let since = T0 + MINUTE;
    let (_, recent) = json(
        &state,
        "GET",
        &format!("/v1/scalers/web/decisions?since={since}"),
    )
    .await;
    let recent = records(&recent);
    assert_eq!(recent.len(), 5, "60s, 75s, ..., 120s");
    assert!(
        recent
            .iter()
            .all(|r| r.scaler == "web" && r.time_ms >= since)
    );
    assert!(
        recent.windows(2).all(|w| w[0].time_ms > w[1].time_ms),
        "newest first"
    );
    let until = T0 + 30 * SECOND;
    let (_, early) = json(
        &state,
        "GET",
        &format!("/v1/scalers/web/decisions?since=2023-11-14T22:13:20Z&until={until}"),
    )
    .await;
    let early: Vec<i64> = records(&early).iter().map(|r| r.time_ms).collect();
    assert_eq!(early, [T0 + 15 * SECOND, T0]);
    for (uri, says) in [
        (
            "/v1/scalers/web/decisions?limit=0",
            "limit must be a whole number between 1 and 1000, got \"0\"",
        ),
        ("/v1/scalers/web/decisions?limit=5000", "got \"5000\""),
        (
            "/v1/scalers/web/decisions?limit=-1",
            "limit must be a whole number between 1 and 1000, got \"-1\"",
        ),
        ("/v1/scalers/web/decisions?limit=1.5", "got \"1.5\""),
        ("/v1/scalers/web/decisions?limit=many", "limit"),
        (
            "/v1/scalers/web/decisions?since=2000&until=1000",
            "since (2000) is after until (1000)",
        ),
        (
            "/v1/scalers/web/decisions?since=99999999999999999999",
            "number too large",
        ),
        (
            "/v1/scalers/web/decisions?since=yesterday",
            "since: expected ms since the epoch or an RFC 3339 time",
        ),
        ("/v1/scalers/web/decisions?limt=3", "limt"),
        (
            "/v1/scalers/web/decisions?since=2023-11-14T23:13:20+01:00",
            "write the offset's + as %2B",
        ),
    ] {
        let message =
            assert_error(&state, "GET", uri, StatusCode::BAD_REQUEST, "bad_request").await;
        assert!(message.contains(says), "{uri}: {message}");
    }
    assert_error(
        &state,
        "GET",
        "/v1/scalers/nope/decisions",
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // Times with an offset are the same instant.
    let (_, offset) = json(
        &state,
        "GET",
        &format!("/v1/scalers/web/decisions?since=2023-11-14T23:13:20%2B01:00&until={until}"),
    )
    .await;
    let offset: Vec<i64> = records(&offset).iter().map(|r| r.time_ms).collect();
    assert_eq!(offset, early);
    // A known endpoint asked with the wrong method: JSON, like every error.
    let message = assert_error(
        &state,
        "POST",
        "/v1/scalers",
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    assert_eq!(message, "/v1/scalers does not take POST");

    // One decision by id.
    let scale_up = web.iter().find(|r| r.desired == 8).unwrap();
    let id = scale_up.id.unwrap();
    let (status, one) = json(&state, "GET", &format!("/v1/decisions/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_value::<TickRecord>(one).unwrap(),
        *scale_up
    );
    assert!(matches!(scale_up.actuation, ActuationRecord::Done { .. }));
    // And in words, as `scalewise journal explain` prints it.
    let (status, content_type, text) =
        call(&state, "GET", &format!("/v1/decisions/{id}/explain")).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let lines: Vec<String> = scalewise::journal::explain(scale_up)
        .iter()
        .map(|l| scalewise::runtime::log_safe(l).into_owned())
        .collect();
    assert_eq!(text.lines().collect::<Vec<_>>(), lines);
    assert!(
        text.starts_with(&format!("record {id}: scaler \"web\" at ")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "desired   8 (scale out from {})",
            scale_up.target.current
        )),
        "{text}"
    );
    assert_error(
        &state,
        "GET",
        "/v1/decisions/999999/explain",
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        &state,
        "GET",
        "/v1/decisions/999999",
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        &state,
        "GET",
        "/v1/decisions/first",
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    // A path segment that is not UTF-8 once decoded: JSON too.
    for path in ["/v1/scalers/%FF", "/v1/decisions/%FF/explain"] {
        assert_error(&state, "GET", path, StatusCode::BAD_REQUEST, "bad_request").await;
    }

    // The loaded modules, with the digests of their files.
    let (status, policies) = json(&state, "GET", "/v1/policies").await;
    assert_eq!(status, StatusCode::OK);
    let modules = policies["modules"].as_array().unwrap();
    let listed: Vec<(&str, &str)> = modules
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["digest"].as_str().unwrap()))
        .collect();
    let digest = |path: &str| hex::encode(Sha256::digest(std::fs::read(path).unwrap()));
    assert_eq!(
        listed,
        [
            ("always-errors", digest(artifacts::ALWAYS_ERRORS).as_str()),
            (
                "target-tracking",
                digest(artifacts::TARGET_TRACKING).as_str()
            ),
        ]
    );
    assert_eq!(modules[1]["info"]["name"], "target-tracking");
    assert!(modules.iter().all(|m| m["last_error"].is_null()));
    assert_eq!(policies["failures"], Value::Array(vec![]));

    // Anything else: a JSON 404.
    assert_error(
        &state,
        "GET",
        "/v2/scalers",
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        &state,
        "POST",
        "/v1/scalers/nope/pause",
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // Pause holds the scaler (and is kept in the journal); resume lets it go.
    h.daemon
        .simulation()
        .service("web")
        .unwrap()
        .lock()
        .set_replicas(T0 + 2 * MINUTE, 4);
    let (status, paused) = json(&state, "POST", "/v1/scalers/web/pause").await;
    assert_eq!(
        (status, paused["paused"].clone()),
        (StatusCode::OK, true.into())
    );
    assert_eq!(h.daemon.journal().paused("web").await.unwrap(), Some(true));
    let held = h.run_until(T0 + 2 * MINUTE + 15 * SECOND).await;
    let held = held.iter().find(|r| r.scaler == "web").unwrap();
    assert_eq!(
        (held.target.current, held.proposal, held.desired),
        (4, Some(8), 4)
    );
    assert_eq!(held.envelope[0].rule, "paused");
    let (_, shown) = json(&state, "GET", "/v1/scalers/web").await;
    assert_eq!(shown["paused"], true);
    let (status, resumed) = json(&state, "POST", "/v1/scalers/web/resume").await;
    assert_eq!(
        (status, resumed["paused"].clone()),
        (StatusCode::OK, false.into())
    );
    assert_eq!(h.daemon.journal().paused("web").await.unwrap(), Some(false));
    let went = h.run_until(T0 + 2 * MINUTE + 30 * SECOND).await;
    let went = went.iter().find(|r| r.scaler == "web").unwrap();
    assert_eq!((went.target.current, went.desired), (4, 8));
    h.close().await;
}

/// A scaler removed from the config keeps its decisions and history
/// readable through the API for as long as the journal keeps them; a name
/// the journal never saw is still a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_scalers_decisions_stay_readable() {
    let setup = Setup::new();
    let mut h = Harness::build(setup.config(), T0).await;
    h.run_until(T0 + MINUTE).await;
    let kept = h.journal_of("broken").await.len();
    assert!(kept > 0);
    h.close().await;

    let mut config = setup.config();
    config
        .scalers
        .retain(|s| s.get_ref().name.get_ref() != "broken");
    let h = Harness::build(config, T0).await;
    let state = h.daemon.app_state();
    assert_error(
        &state,
        "GET",
        "/v1/scalers/broken",
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let (status, decisions) = json(&state, "GET", "/v1/scalers/broken/decisions").await;
    assert_eq!(status, StatusCode::OK, "{decisions}");
    let decisions = records(&decisions);
    assert_eq!(decisions.len(), kept);
    assert!(decisions.iter().all(|r| r.scaler == "broken"));
    let (status, history) = json(&state, "GET", "/v1/scalers/broken/history").await;
    assert_eq!(status, StatusCode::OK, "{history}");
    assert_eq!(history.as_array().map(Vec::len), Some(kept));
    // Outside its time range: an empty page, not a 404.
    let (status, none) = json(
        &state,
        "GET",
        "/v1/scalers/broken/decisions?since=2100-01-01T00:00:00Z",
    )
    .await;
    assert_eq!((status, none), (StatusCode::OK, serde_json::json!([])));
    for uri in ["/v1/scalers/nope/decisions", "/v1/scalers/nope/history"] {
        let message = assert_error(&state, "GET", uri, StatusCode::NOT_FOUND, "not_found").await;
        assert!(message.contains("no scaler named \"nope\""), "{message}");
    }
    h.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_once_the_scalers_run() {
    let setup = Setup::new();
    let h = Harness::build(setup.config(), T0).await;
    let state = h.daemon.app_state();
    let (status, _, _) = call(&state, "GET", "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(h.daemon.run(None, async {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, body) = call(&state, "GET", "/readyz").await;
        if status == StatusCode::OK {
            assert_eq!(body, "ready");
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {status} {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_writes_come_from_loopback_only() {
    let setup = Setup::new();
    let h = Harness::build(setup.config(), T0).await;
    let state = h.daemon.app_state();
    let remote = SocketAddr::from(([10, 0, 0, 7], 41000));
    let (status, _, body) = call_from(&state, "POST", "/v1/scalers/web/pause", remote).await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("[api] token"), "{message}");
    assert!(message.contains("10.0.0.7"), "{message}");
    assert_eq!(h.daemon.journal().paused("web").await.unwrap(), None);
    // Reads stay open to every peer.
    let (status, _, _) = call_from(&state, "GET", "/v1/scalers/web", remote).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call_from(&state, "GET", "/metrics", remote).await;
    assert_eq!(status, StatusCode::OK);
    // Without leader election this replica acts.
    let (status, leader) = json(&state, "GET", "/v1/leader").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        leader,
        serde_json::json!({"election": false, "leading": true, "leader": null})
    );
    // From loopback the write is taken.
    let (status, paused) = json(&state, "POST", "/v1/scalers/web/pause").await;
    assert_eq!(
        (status, &paused["paused"]),
        (StatusCode::OK, &Value::Bool(true))
    );
    h.close().await;
}

/// A page served under a name an attacker points at 127.0.0.1 (DNS
/// rebinding) is same-origin with itself: without a token, a loopback
/// write naming another host is refused. And the dashboard is never framed
/// by another site (its writes would come from its own origin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebound_name_cannot_write_and_the_dashboard_is_not_framed() {
    let setup = Setup::new();
    let h = Harness::build(setup.config(), T0).await;
    let state = h.daemon.app_state();
    let send = |host: &str| {
        let mut request = Request::builder()
            .method("POST")
            .uri("/v1/scalers/web/pause")
            .header(header::HOST, host)
            .header(header::ORIGIN, format!("http://{host}"))
            .header("sec-fetch-site", "same-origin")
            .body(Body::empty())
            .unwrap();
        request.extensions_mut().insert(ConnectInfo(LOOPBACK));
        scalewise::api::router(state.clone()).oneshot(request)
    };
    let refused = send("evil.example:9464").await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(h.daemon.journal().paused("web").await.unwrap(), None);
    let taken = send("127.0.0.1:9464").await.unwrap();
    assert_eq!(taken.status(), StatusCode::OK);
    assert_eq!(h.daemon.journal().paused("web").await.unwrap(), Some(true));

    let mut page = Request::builder().uri("/").body(Body::empty()).unwrap();
    page.extensions_mut().insert(ConnectInfo(LOOPBACK));
    let page = scalewise::api::router(state.clone())
        .oneshot(page)
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()[header::X_FRAME_OPTIONS], "DENY");
    // Only the page's own script runs (allowed by its hash): a policy's
    // text the page failed to escape could not run script.
    let csp = page.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_owned();
    let body = axum::body::to_bytes(page.into_body(), usize::MAX)
        .await
        .unwrap();
    let body = String::from_utf8(body.to_vec()).unwrap();
    assert_eq!(body.matches("<script>").count(), 1, "one inline script");
    let script = body
        .split_once("<script>")
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .unwrap()
        .0;
    let hash = {
        use base64::Engine as _;
        use sha2::Digest as _;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script))
    };
    for directive in [
        "default-src 'none'".to_owned(),
        format!("script-src 'sha256-{hash}'"),
        "connect-src 'self'".to_owned(),
        "base-uri 'none'".to_owned(),
        "frame-ancestors 'none'".to_owned(),
    ] {
        assert!(csp.contains(&directive), "{directive:?} not in {csp:?}");
    }
    let script_src = csp
        .split(';')
        .find(|d| d.trim().starts_with("script-src"))
        .unwrap();
    assert!(!script_src.contains("unsafe"), "{script_src}");
    // No inline event handler: the policy forbids them.
    for handler in [" onclick=", " onload=", " onerror=", " onchange="] {
        assert!(!body.contains(handler), "{handler} in the page");
    }
    h.close().await;
}

/// A daemon whose scaler `web` (a simulated service at 2 replicas, the
/// counter policy wanting 5) is in its first tick, waiting on its metric
/// from a Prometheus that never answers (for up to `timeout`); `head` goes
/// at the top of the config. Returns it and its decisions.
async fn daemon_waiting_on_a_metric(
    head: &str,
    timeout: &str,
) -> (
    scalewise_tests::running::RunningDaemon,
    tokio::sync::broadcast::Receiver<std::sync::Arc<TickRecord>>,
) {
    use std::sync::atomic::Ordering;

    use scalewise::clock::Clock;
    use scalewise_tests::running::{RunningDaemon, simulation};
    use scalewise_tests::stub_http::counted_silent_listener;

    let (addr, accepted) = counted_silent_listener().await.unwrap();
    let config = format!(
        r#"policy_dir = "policies"
{head}

[sources.slow]
kind = "prometheus"
url = "http://{addr}"
timeout = "{timeout}"

{web}[[scalers]]
name = "web"
interval = "10s"
min = 1
max = 10
target = {{ kind = "simulator", service = "web" }}

[scalers.metrics.queue]
source = "slow"
query = "sum(queue)"

[[scalers.policies]]
module = "counter"
params = {{ scale_to = 5 }}
"#,
        web = simulation("web", 2),
    );
    let daemon = RunningDaemon::with(&config)
        .clock(Clock::system())
        .policies(|dir| {
            std::fs::copy(artifacts::COUNTER, dir.join("counter.wasm")).unwrap();
        })
        .start()
        .await
        .unwrap();
    let decisions = daemon.decisions();
    scalewise_tests::wait_until(
        "a tick reading the metric",
        Duration::from_secs(90),
        || async {
            match accepted.load(Ordering::SeqCst) {
                0 => Err("no connection yet".to_owned()),
                _ => Ok(()),
            }
        },
    )
    .await
    .unwrap();
    (daemon, decisions)
}

/// A pause answered while a tick reads its metrics holds that tick's
/// change too: the tick reads the pause flag again when it decides. Here
/// the tick waits 10 s on a Prometheus that never answers (the counter
/// policy, which reads no metric, still wants 5: a failed metric blocks
/// scale-in only), and the pause comes in meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_answered_during_a_tick_holds_that_tick() {
    let (mut daemon, mut decisions) = daemon_waiting_on_a_metric("", "10s").await;
    let api = daemon.api().unwrap();
    let asked_ms = scalewise::clock::wall_clock_ms();
    let paused = reqwest::Client::new()
        .post(format!("http://{api}/v1/scalers/web/pause"))
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status(), StatusCode::OK);
    let record = tokio::time::timeout(Duration::from_secs(30), decisions.recv())
        .await
        .expect("the tick ends after the metric's timeout")
        .unwrap();
    // The first tick, which started before the pause was asked.
    assert!(
        record.time_ms < asked_ms,
        "{} >= {asked_ms}",
        record.time_ms
    );
    assert_eq!(record.proposal, Some(5), "the policy wanted 5: {record:?}");
    assert_eq!(
        (record.target.current, record.desired),
        (2, 2),
        "{record:?}"
    );
    assert!(
        record.envelope.iter().any(|step| step.rule == "paused"),
        "{:?}",
        record.envelope
    );
    assert_eq!(daemon.replicas("web").unwrap().0, 2);
    daemon.stop().await.unwrap();
}

/// A pause answered while the tick's change is being recorded (the
/// journal's group commit waits up to 1 s here) stops that change too: once
/// the API has answered, the replicas do not move. The tick reads the pause
/// flag again under the lock the pause is stored under, just before it
/// calls the actuator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_answered_while_the_change_is_recorded_stops_it() {
    let (mut daemon, mut decisions) = daemon_waiting_on_a_metric(
        "\n[journal]\npath = \"journal.db\"\ncommit_delay = \"1s\"\n",
        "2s",
    )
    .await;
    // The metric fails after 2 s; the tick then decides 2 -> 5 and waits
    // for its record's commit.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let api = daemon.api().unwrap();
    let paused = reqwest::Client::new()
        .post(format!("http://{api}/v1/scalers/web/pause"))
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status(), StatusCode::OK);
    let answered_at = daemon.replicas("web").unwrap().0;
    let record = tokio::time::timeout(Duration::from_secs(30), decisions.recv())
        .await
        .expect("the tick ends")
        .unwrap();
    assert_eq!(record.proposal, Some(5), "{record:?}");
    assert_eq!(
        daemon.replicas("web").unwrap().0,
        answered_at,
        "the replicas moved after the pause was answered: {:?}",
        record.actuation
    );
    // Not made: the tick found the pause being recorded, or recorded.
    if answered_at == 2 {
        let ActuationRecord::Failed { error, .. } = &record.actuation else {
            panic!("{:?}", record.actuation)
        };
        assert!(
            error == "not scaled: the scaler was paused during the tick"
                || error
                    .starts_with("not scaled: a pause or resume of this scaler was being recorded"),
            "{error}"
        );
    }
    daemon.stop().await.unwrap();
}

/// `scalewise run`'s daemon with `[api] token` = "correct-horse" (from a
/// file in the folder returned) and `more` in `[api]`, scaling `web`.
async fn with_api_token(
    more: &str,
) -> (tempfile::TempDir, scalewise_tests::running::RunningDaemon) {
    use scalewise::clock::Clock;
    use scalewise_tests::running::{RunningDaemon, queue_scaler, simulation};

    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("api-token");
    std::fs::write(&token_file, "correct-horse\n").unwrap();
    let config = format!(
        "policy_dir = \"policies\"\n\n[api]\ntoken = {{ file = {:?} }}\n{more}\n{}{}",
        token_file.display().to_string(),
        simulation("web", 2),
        queue_scaler("web", "simulator", "queue_depth")
    );
    let daemon = RunningDaemon::start(&config, Clock::system())
        .await
        .unwrap();
    (secrets, daemon)
}

/// Over HTTP, against `scalewise run`'s own server (the peer address comes
/// from the connection): with `[api] token`, a write needs the token, from
/// loopback too; a browser cannot send one for another site.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_writes_need_it_over_http() {
    let (_secrets, mut daemon) = with_api_token("").await;
    let api = daemon.api().unwrap();
    let client = reqwest::Client::new();
    let pause = format!("http://{api}/v1/scalers/web/pause");
    let post = |auth: Option<&str>, origin: Option<&str>| {
        let mut request = client.post(&pause);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };

    let refused = post(None, None).await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        refused.headers()["www-authenticate"],
        r#"Bearer realm="scalewise""#
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    let wrong = post(Some("Bearer correct-horse-battery"), None)
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let other_site = post(Some("Bearer correct-horse"), Some("https://evil.example"))
        .await
        .unwrap();
    assert_eq!(other_site.status(), StatusCode::FORBIDDEN);
    assert_eq!(daemon.journal().paused("web").await.unwrap(), None);
    let read = client
        .get(format!("http://{api}/v1/scalers/web"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);

    let taken = post(Some("Bearer correct-horse"), None).await.unwrap();
    assert_eq!(taken.status(), StatusCode::OK);
    let body: Value = taken.json().await.unwrap();
    assert_eq!(body["paused"], true, "{body}");
    assert_eq!(daemon.journal().paused("web").await.unwrap(), Some(true));
    // The dashboard's own requests carry the API's origin.
    let resume = client
        .post(format!("http://{api}/v1/scalers/web/resume"))
        .header("authorization", "Bearer correct-horse")
        .header("origin", format!("http://{api}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resume.status(), StatusCode::OK);
    assert_eq!(daemon.journal().paused("web").await.unwrap(), Some(false));
    daemon.stop().await.unwrap();
}

/// With `[api] tls` the API speaks HTTPS only, with the configured
/// certificate; the write guard still knows the peer; `scalewise pause`
/// trusts the daemon's certificate (`--ca-file`, or the config's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_the_api_speaks_https_and_the_cli_trusts_its_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (certs.path().join("tls.crt"), certs.path().join("tls.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let (config, mut daemon) = start_with_tls(&cert, &key).await;
    let api = daemon.api().unwrap();
    let trusted = reqwest::Certificate::from_pem_bundle(certified.cert.pem().as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only(trusted)
        .build()
        .unwrap();
    let health = client
        .get(format!("https://{api}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    // Plain HTTP is not answered; a client that does not trust the
    // certificate refuses the connection.
    assert!(reqwest::get(format!("http://{api}/healthz")).await.is_err());
    assert!(
        reqwest::get(format!("https://{api}/healthz"))
            .await
            .is_err()
    );
    // No token: writes from loopback only, so the guard saw the peer.
    let paused = client
        .post(format!("https://{api}/v1/scalers/web/pause"))
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status(), StatusCode::OK);
    assert_eq!(daemon.journal().paused("web").await.unwrap(), Some(true));

    let url = format!("https://{api}");
    let cert_arg = cert.to_str().unwrap();
    let (code, out, err) = scalewise(&["resume", "web", "--api", &url, "--ca-file", cert_arg]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(daemon.journal().paused("web").await.unwrap(), Some(false));
    let (code, _, err) = scalewise(&["pause", "web", "--api", &url]);
    assert_eq!(
        code,
        Some(1),
        "the system's roots do not vouch for it: {err}"
    );
    assert!(err.contains("cannot reach the API"), "{err}");
    // With --config: https and the daemon's own certificate.
    let cli_config = config.replace("[api]\n", &format!("[api]\nlisten = \"{api}\"\n"));
    std::fs::write(daemon.dir().join("cli.toml"), cli_config).unwrap();
    let (code, out, err) = scalewise_in(daemon.dir(), &["pause", "web", "--config", "cli.toml"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(daemon.journal().paused("web").await.unwrap(), Some(true));
    daemon.stop().await.unwrap();
}

/// A self-signed certificate made as `openssl req -x509` makes one, marked
/// as a CA: a client's usual checks refuse it as a server's own, but the
/// CLI given that very file (`--ca-file`, or the daemon's config) trusts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_trusts_a_self_signed_certificate_marked_as_a_ca() {
    let certs = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let certified = params.self_signed(&key).unwrap();
    let (cert, key_file) = (certs.path().join("tls.crt"), certs.path().join("tls.key"));
    std::fs::write(&cert, certified.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let (config, mut daemon) = start_with_tls(&cert, &key_file).await;
    let api = daemon.api().unwrap();
    // The usual checks: a CA's certificate is no server's.
    let strict = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(certified.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let refused = strict
        .get(format!("https://{api}/healthz"))
        .send()
        .await
        .unwrap_err();
    let refused = scalewise::outbound::causes(&refused);
    assert!(refused.contains("CaUsedAsEndEntity"), "{refused}");

    let url = format!("https://{api}");
    let cert_arg = cert.to_str().unwrap();
    let (code, out, err) = scalewise(&["pause", "web", "--api", &url, "--ca-file", cert_arg]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(daemon.journal().paused("web").await.unwrap(), Some(true));
    let cli_config = config.replace("[api]\n", &format!("[api]\nlisten = \"{api}\"\n"));
    std::fs::write(daemon.dir().join("cli.toml"), cli_config).unwrap();
    let (code, out, err) = scalewise_in(daemon.dir(), &["resume", "web", "--config", "cli.toml"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(daemon.journal().paused("web").await.unwrap(), Some(false));
    // Another self-signed certificate is not this one: refused, saying why.
    let other = tempfile::tempdir().unwrap();
    let stranger = other.path().join("other.crt");
    let other_key = rcgen::KeyPair::generate().unwrap();
    let mut other_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    other_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(
        &stranger,
        other_params.self_signed(&other_key).unwrap().pem(),
    )
    .unwrap();
    let (code, _, err) = scalewise(&[
        "pause",
        "web",
        "--api",
        &url,
        "--ca-file",
        stranger.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot reach the API") && err.contains("certificate"),
        "{err}"
    );
    daemon.stop().await.unwrap();
}

/// `scalewise run`'s daemon serving HTTPS with the pair `cert`, `key`,
/// scaling `web`; and its config's text.
async fn start_with_tls(
    cert: &Path,
    key: &Path,
) -> (String, scalewise_tests::running::RunningDaemon) {
    use scalewise::clock::Clock;
    use scalewise_tests::running::{RunningDaemon, queue_scaler, simulation};
    let config = format!(
        "policy_dir = \"policies\"\n\n[api]\ntls = {{ cert = {:?}, key = {:?} }}\n\n{}{}",
        cert.display().to_string(),
        key.display().to_string(),
        simulation("web", 2),
        queue_scaler("web", "simulator", "queue_depth")
    );
    let daemon = RunningDaemon::start(&config, Clock::system())
        .await
        .unwrap();
    (config, daemon)
}

/// With `reads = "token"` every `/v1/...` read needs the token, from
/// loopback too; the probes, `/metrics` and the dashboard page stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_reads_closed_v1_needs_the_token_and_probes_do_not() {
    let (_secrets, mut daemon) = with_api_token("reads = \"token\"\n").await;
    let api = daemon.api().unwrap();
    let client = reqwest::Client::new();
    let get = |path: &str, auth: Option<&str>| {
        let mut request = client.get(format!("http://{api}{path}"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.send()
    };
    for path in [
        "/v1/scalers",
        "/v1/scalers/web",
        "/v1/scalers/web/decisions",
        "/v1/scalers/web/history",
        "/v1/policies",
        "/v1/config",
        "/v1/leader",
    ] {
        let refused = get(path, None).await.unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{path}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{path}: {body}");
        let wrong = get(path, Some("Bearer battery")).await.unwrap();
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{path}");
        let taken = get(path, Some("Bearer correct-horse")).await.unwrap();
        assert_eq!(taken.status(), StatusCode::OK, "{path}");
    }
    for path in ["/", "/healthz", "/metrics"] {
        assert_eq!(
            get(path, None).await.unwrap().status(),
            StatusCode::OK,
            "{path}"
        );
    }
    daemon.stop().await.unwrap();
}

/// Runs the binary; (exit code, stdout, stderr).
fn scalewise(args: &[&str]) -> (Option<i32>, String, String) {
    scalewise_in(Path::new("."), args)
}

/// [`scalewise`] run in `dir`.
fn scalewise_in(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_scalewise-cli"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journaled_decisions_replay_and_export_through_the_binary() {
    let setup = Setup::new();
    let mut h = Harness::build(setup.config(), T0).await;
    h.run_until(T0 + 2 * MINUTE).await;
    let web = h.journal_of("web").await;
    let broken = h.journal_of("broken").await;
    h.close().await;
    let journal = setup.journal();
    let journal = journal.to_str().unwrap();
    let module = |name: &str| setup.policies.path().join(format!("{name}.wasm"));

    // Every journaled evaluation replays to the same answer, same digest.
    let scale_up = web.iter().find(|r| r.desired == 8).unwrap();
    for record in [scale_up, web.last().unwrap()] {
        let id = record.id.unwrap().to_string();
        let (code, out, err) = scalewise(&[
            "eval",
            module("target-tracking").to_str().unwrap(),
            "--record",
            &id,
            "--journal",
            journal,
        ]);
        assert_eq!(code, Some(0), "{out}\n{err}");
        let replay: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(replay["outcome_matches"], true, "{out}");
        assert_eq!(replay["digest_matches"], true, "{out}");
        assert_eq!(
            replay["digest"],
            record.evaluations[0].digest.as_deref().unwrap(),
            "{out}"
        );
        assert_eq!(
            replay["outcome"],
            serde_json::to_value(&record.evaluations[0].outcome).unwrap()
        );
    }
    // A failure replays as the same failure.
    let id = broken[0].id.unwrap().to_string();
    let always_errors = module("always-errors");
    let (code, out, _) = scalewise(&[
        "eval",
        always_errors.to_str().unwrap(),
        "--record",
        &id,
        "--journal",
        journal,
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["outcome"]["kind"],
        "policy_error"
    );

    // journal show: one record, as JSON.
    let id = scale_up.id.unwrap().to_string();
    let (code, out, err) = scalewise(&["journal", "show", "--journal", journal, &id]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(serde_json::from_str::<TickRecord>(&out).unwrap(), *scale_up);
    let (code, _, err) = scalewise(&["journal", "show", "--journal", journal, "424242"]);
    assert_eq!(code, Some(1));
    let missing = format!("error: no record with id 424242 in {journal}\n");
    assert!(err.ends_with(&missing), "{err}");
    // eval says it the same way, once.
    let (code, _, err) = scalewise(&[
        "eval",
        always_errors.to_str().unwrap(),
        "--record",
        "424242",
        "--journal",
        journal,
    ]);
    assert_eq!(code, Some(1));
    assert!(err.ends_with(&missing), "{err}");

    // journal export: JSON lines, oldest first, filtered.
    let (code, out, err) =
        scalewise(&["journal", "export", "--journal", journal, "--scaler", "web"]);
    assert_eq!(code, Some(0), "{err}");
    let exported: Vec<TickRecord> = scalewise::journal::read_jsonl(out.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(exported, web);
    let since = (T0 + MINUTE).to_string();
    let (_, out, _) = scalewise(&["journal", "export", "--journal", journal, "--since", &since]);
    assert_eq!(
        out.lines().count(),
        10,
        "5 ticks of each scaler from 60s on"
    );
    // A scaler the journal never saw is an error, not an empty export...
    let (code, out, err) =
        scalewise(&["journal", "export", "--journal", journal, "--scaler", "wbe"]);
    assert_eq!((code, out.as_str()), (Some(1), ""), "{err}");
    assert!(err.contains("no record of a scaler named \"wbe\""), "{err}");
    // ...while a known one with nothing in the range exports nothing.
    let (code, out, err) = scalewise(&[
        "journal",
        "export",
        "--journal",
        journal,
        "--scaler",
        "web",
        "--since",
        "9999999999999",
    ]);
    assert_eq!((code, out.as_str()), (Some(0), ""), "{err}");
    let (code, out, err) = scalewise(&[
        "journal",
        "export",
        "--journal",
        journal,
        "--since",
        "2000",
        "--until",
        "1000",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        err.contains("--since (2000) is after --until (1000)"),
        "{err}"
    );

    // An exported record replays from the file too.
    let file = setup.state.path().join("record.json");
    std::fs::write(&file, serde_json::to_string(scale_up).unwrap()).unwrap();
    let (code, out, _) = scalewise(&[
        "eval",
        module("target-tracking").to_str().unwrap(),
        "--context",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(Path::new(journal).exists());
}

/// `scalewise pause`, `resume` and `status` against `scalewise run` (reads
/// closed too): the address and token from the daemon's config, or given as
/// flags; the API's refusals and errors as the exit status and a message.
#[test]
fn pause_resume_and_status_from_the_command_line() {
    use scalewise_tests::daemon_process::DaemonProcess;
    use scalewise_tests::running::{install_policies, queue_scaler, simulation};

    let dir = tempfile::tempdir().unwrap();
    install_policies(&dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("api-token"), "tok3n\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "policy_dir = \"policies\"\n\n[api]\nlisten = \"127.0.0.1:{port}\"\n\
         token = {{ file = \"api-token\" }}\nreads = \"token\"\n\n[journal]\npath = \"journal.db\"\n\n{}{}",
        simulation("web", 2),
        queue_scaler("web", "simulator", "queue_depth")
    );
    let daemon = DaemonProcess::start(
        env!("CARGO_BIN_EXE_scalewise-cli"),
        dir.path(),
        &config,
        |_| {},
    )
    .unwrap();
    let started = Instant::now();
    while daemon.api_addr().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let in_dir = |args: &[&str]| scalewise_in(dir.path(), args);
    let api = format!("http://127.0.0.1:{port}");

    let (code, out, err) = in_dir(&["pause", "web", "--config", "scalewise.toml"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("web: paused (current "), "{out}");
    // status: a line per scaler, one in detail, or the JSON.
    let (code, out, err) = in_dir(&["status", "--config", "scalewise.toml"]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{out}");
    assert!(
        lines[1].starts_with("web")
            && lines[1].contains("simulator web")
            && lines[1].contains("paused"),
        "{out}"
    );
    let (code, out, err) = in_dir(&["status", "web", "--config", "scalewise.toml"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("web: simulator web, enforce, every "),
        "{out}"
    );
    assert!(out.contains("  state      paused\n"), "{out}");
    let (code, out, err) = in_dir(&["status", "--config", "scalewise.toml", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let all: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(all[0]["name"], "web", "{out}");
    // Reads are closed: without the token, status is refused.
    let (code, _, err) = in_dir(&["status", "--api", &api]);
    assert_eq!(code, Some(1));
    assert!(err.contains("error: unauthorized (401"), "{err}");
    // A config whose token file cannot be read here: asked anyway (reads may
    // be open), and the refusal says why no token went.
    std::fs::write(
        dir.path().join("unreadable.toml"),
        config.replace("\"api-token\"", "\"missing-token\""),
    )
    .unwrap();
    let (code, _, err) = in_dir(&["status", "--config", "unreadable.toml"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("unauthorized (401")
            && err.contains("api.token could not be read")
            && err.contains("missing-token"),
        "{err}"
    );
    let (code, _, err) = in_dir(&["status", "webb", "--config", "scalewise.toml"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no scaler named \"webb\""), "{err}");
    let (code, _, err) = in_dir(&["resume", "web", "--api", &api]);
    assert_eq!(code, Some(1));
    assert!(err.contains("error: unauthorized (401"), "{err}");
    assert!(err.contains("[api] token"), "{err}");
    let (code, out, err) = in_dir(&["resume", "web", "--api", &api, "--token-file", "api-token"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("web: running (current "), "{out}");
    let (code, _, err) = in_dir(&["pause", "webb", "--config", "scalewise.toml"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not_found (404"), "{err}");
    assert!(err.contains("no scaler named \"webb\""), "{err}");
    // A typo elsewhere in the file (an edit a reload refused) does not stop
    // the commands that need only [api] or [journal]: said, and done.
    std::fs::write(
        dir.path().join("typo.toml"),
        config.replacen("[[scalers]]\n", "[[scalers]]\nintervall = \"15s\"\n", 1),
    )
    .unwrap();
    let (code, out, err) = in_dir(&["status", "web", "--config", "typo.toml"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("web: simulator web"), "{out}");
    assert!(
        err.contains("note: only [api] was read") && err.contains("unknown field \"intervall\""),
        "{err}"
    );
    // The journal the file names is read (exported: it may hold no tick yet).
    let (code, _, err) = in_dir(&["journal", "export", "--config", "typo.toml"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("note: only [journal] was read"), "{err}");
    // The same edit made to the running daemon's file: its reload is
    // refused, and status says the config before it runs.
    std::fs::copy(
        dir.path().join("typo.toml"),
        dir.path().join("scalewise.toml"),
    )
    .unwrap();
    let refused = "The config file's last change was refused at ";
    let started = Instant::now();
    let out = loop {
        let (code, out, err) = in_dir(&["status", "--config", "scalewise.toml"]);
        assert_eq!(code, Some(0), "{err}");
        if out.contains(refused) || started.elapsed() > Duration::from_secs(30) {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        out.contains(refused) && out.contains("unknown field \"intervall\""),
        "{out}\n{}",
        daemon.log()
    );
    daemon.stop().unwrap();
    let (code, _, err) = in_dir(&["pause", "web", "--config", "scalewise.toml"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot reach the API at http://127.0.0.1:")
            && err.contains("a daemon started with --listen is reached with --api URL"),
        "{err}"
    );
    let (code, _, err) = in_dir(&["pause", "web", "--api", "127.0.0.1:9464"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("give the API's URL"), "{err}");
}
