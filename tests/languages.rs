//! Policies written in Python (componentize-py), JavaScript
//! (componentize-js) and C (clang for wasm32-wasi, bindings generated from
//! `wit/`), built by `build.rs` from `policies/python/`, `policies/js/` and
//! `policies/c/` with the SDKs in `sdk/`: they load,
//! describe themselves, decide as their documentation says, fail as errors
//! rather than traps, are deterministic, reach nothing outside the sandbox,
//! and scale a simulated service in the real daemon.
//!
//! Compiling one of these modules takes seconds (the Python interpreter and
//! the JavaScript engine are in them), so each is loaded once per test
//! binary.

use std::path::Path;
use std::sync::LazyLock;

use scalewise::config::RuntimeLimits;
use scalewise::journal::{EvaluationOutcome, TickRecord};
use scalewise::policy::{Context, Decision, Metric, ParameterKind, Point, Target};
use scalewise::runtime::{EvalErrorKind, PolicyModule, Runtime};
use scalewise_tests::artifacts;
use scalewise_tests::e2e::{Harness, MINUTE, SECOND, T0};
use serde_json::{Value, json};

/// Compiled code shared by this binary's tests and its daemon, so each
/// module compiles once per run.
fn cache_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("languages-module-cache")
}

static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    Runtime::new(RuntimeLimits {
        // A starved CI machine must not fail a test by the default 100 ms.
        timeout: std::time::Duration::from_secs(10),
        cache_dir: Some(cache_dir()),
        ..RuntimeLimits::default()
    })
    .expect("the runtime starts")
});

fn load(path: &str) -> PolicyModule {
    RUNTIME
        .load_file(Path::new(path))
        .unwrap_or_else(|e| panic!("{path} does not load: {e}"))
}

static CAPACITY: LazyLock<PolicyModule> = LazyLock::new(|| load(artifacts::CAPACITY));
static QUEUE_TIERS: LazyLock<PolicyModule> = LazyLock::new(|| load(artifacts::QUEUE_TIERS));
static PY_PROBE: LazyLock<PolicyModule> = LazyLock::new(|| load(artifacts::PY_SANDBOX_PROBE));
static ERROR_GUARD: LazyLock<PolicyModule> = LazyLock::new(|| load(artifacts::ERROR_GUARD));

/// A context for a target at `current` replicas (bounds 1–20) with one
/// metric `name` sampled every 15 s, `values` oldest first, the newest at
/// `T0`.
fn ctx(current: u32, name: &str, values: &[f64], params: Value) -> Context {
    let n = values.len() as i64;
    let points = values
        .iter()
        .enumerate()
        .map(|(i, &v)| Point::from((T0 - (n - 1 - i as i64) * 15 * SECOND, v)))
        .collect();
    Context {
        now_ms: T0,
        scaler: "svc".into(),
        target: Target {
            kind: "simulator".into(),
            name: "svc".into(),
            current,
            ready: current,
            min: 1,
            max: 20,
        },
        metrics: vec![Metric {
            name: name.into(),
            points,
            error: None,
        }],
        events: Vec::new(),
        parameters: params,
        state: None,
    }
}

fn decide(module: &PolicyModule, ctx: &Context) -> Decision {
    module
        .evaluate(ctx)
        .unwrap_or_else(|e| panic!("{}: {e}", module.name()))
}

fn refusal(module: &PolicyModule, ctx: &Context) -> String {
    let err = module.evaluate(ctx).expect_err("the policy refuses");
    assert_eq!(err.kind, EvalErrorKind::PolicyError, "{err}");
    err.message
}

#[test]
fn each_describes_itself_with_typed_parameters() {
    let info = CAPACITY.info();
    assert_eq!(
        (info.name.as_str(), info.version.as_str()),
        ("capacity", "0.1.0")
    );
    let kinds: Vec<_> = info
        .parameters
        .iter()
        .map(|p| (p.name.as_str(), p.kind, p.required, p.default.clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("metric", ParameterKind::Metric, true, None),
            ("capacity", ParameterKind::Number, true, None),
            ("headroom", ParameterKind::Number, false, Some(json!(0.2))),
            (
                "peak_over",
                ParameterKind::Duration,
                false,
                Some(json!("1m"))
            ),
            ("step_down", ParameterKind::Integer, false, Some(json!(1))),
        ]
    );
    let info = QUEUE_TIERS.info();
    assert_eq!(info.name, "queue-tiers");
    let kinds: Vec<_> = info
        .parameters
        .iter()
        .map(|p| (p.name.as_str(), p.kind, p.required))
        .collect();
    assert_eq!(
        kinds,
        [
            ("metric", ParameterKind::Metric, true),
            ("tiers", ParameterKind::Text, true),
            ("down_for", ParameterKind::Duration, false),
        ]
    );
}

#[test]
fn capacity_sizes_for_the_peak_and_scales_in_a_step_at_a_time() {
    let params = json!({ "metric": "inflight", "capacity": 100.0 });
    // Peak 530 over the last minute at 80 per replica: 7 replicas.
    let up = decide(
        &CAPACITY,
        &ctx(
            4,
            "inflight",
            &[100.0, 530.0, 300.0, 310.0, 320.0],
            params.clone(),
        ),
    );
    assert_eq!(up.desired, Some(7), "{}", up.reason);
    assert_eq!(
        up.reason,
        "inflight peak 530.0 over 1m at 80.0 per replica needs 7: 4 → 7"
    );
    // The 900 is older than a minute: the peak is 320, 4 replicas; from 7
    // one at a time.
    let down = decide(
        &CAPACITY,
        &ctx(
            7,
            "inflight",
            &[900.0, 300.0, 310.0, 320.0, 150.0, 100.0],
            params.clone(),
        ),
    );
    assert_eq!(down.desired, Some(6), "{}", down.reason);
    assert!(
        down.reason.ends_with("7 → 6 (at most 1 fewer per tick)"),
        "{}",
        down.reason
    );
    let two_at_a_time =
        json!({ "metric": "inflight", "capacity": 100.0, "step_down": 2, "headroom": 0.0 });
    let down = decide(&CAPACITY, &ctx(7, "inflight", &[320.0], two_at_a_time));
    assert_eq!(down.desired, Some(5), "{}", down.reason);
    let held = decide(&CAPACITY, &ctx(4, "inflight", &[320.0], params));
    assert_eq!(held.desired, None, "{}", held.reason);
    assert!(
        held.reason.ends_with("needs 4: hold at 4"),
        "{}",
        held.reason
    );
}

#[test]
fn capacity_refuses_bad_parameters_and_unreadable_metrics_as_errors() {
    let good = json!({ "metric": "inflight", "capacity": 100.0 });
    let cases = [
        (
            json!({ "metric": "inflight", "capacity": 0 }),
            "parameter 'capacity' must be above 0",
        ),
        (
            json!({ "metric": "inflight" }),
            "parameter 'capacity' is required",
        ),
        (
            json!({ "metric": "inflight", "capacity": "lots" }),
            "parameter 'capacity' must be a number, not \"lots\"",
        ),
        (
            json!({ "metric": "inflight", "capacity": 1, "peak_over": "soon" }),
            "parameter 'peak_over': invalid duration 'soon'",
        ),
        (
            json!({ "metric": "inflight", "capacity": 1, "target": 5 }),
            "unknown parameter 'target'",
        ),
        (
            json!({ "metric": "cpu", "capacity": 1 }),
            "no metric named 'cpu' in the context",
        ),
    ];
    for (params, expected) in cases {
        let message = refusal(&CAPACITY, &ctx(3, "inflight", &[1.0], params.clone()));
        assert!(message.contains(expected), "{params}: {message}");
    }
    let mut down = ctx(3, "inflight", &[], good.clone());
    down.metrics[0].error = Some("source unreachable".into());
    assert_eq!(
        refusal(&CAPACITY, &down),
        "metric inflight: source unreachable"
    );
    // Samples, but none in the last minute.
    let mut stale = ctx(3, "inflight", &[50.0], good.clone());
    stale.now_ms += 5 * MINUTE;
    assert_eq!(
        refusal(&CAPACITY, &stale),
        "metric inflight: no sample in the last 1m"
    );
    // The module is unharmed: the next call decides.
    assert_eq!(
        decide(&CAPACITY, &ctx(3, "inflight", &[500.0], good)).desired,
        Some(7)
    );
}

#[test]
fn queue_tiers_scales_out_at_once_and_in_after_down_for() {
    let params =
        json!({ "metric": "queue", "tiers": "0:1, 100:2, 500:4, 2000:8", "down_for": "1m" });
    let up = decide(
        &QUEUE_TIERS,
        &ctx(2, "queue", &[10.0, 80.0, 650.0], params.clone()),
    );
    assert_eq!(up.desired, Some(4), "{}", up.reason);
    assert_eq!(
        up.reason,
        "queue 650.0 is in tier 3 (from 500: 4 replicas): 2 → 4"
    );
    // Below 500 for only 30 s: hold at 4.
    let waiting = decide(
        &QUEUE_TIERS,
        &ctx(
            4,
            "queue",
            &[600.0, 600.0, 620.0, 300.0, 200.0, 150.0],
            params.clone(),
        ),
    );
    assert_eq!(waiting.desired, None, "{}", waiting.reason);
    assert!(
        waiting
            .reason
            .ends_with("but not below 500 for 1m yet: hold at 4"),
        "{}",
        waiting.reason
    );
    // Below 500 for more than a minute: down to tier 2.
    let down = decide(
        &QUEUE_TIERS,
        &ctx(
            4,
            "queue",
            &[600.0, 300.0, 200.0, 150.0, 120.0, 150.0],
            params.clone(),
        ),
    );
    assert_eq!(down.desired, Some(2), "{}", down.reason);
    assert!(
        down.reason.ends_with("below 500 for 1m: 4 → 2"),
        "{}",
        down.reason
    );
    // A series shorter than down_for does not count as "below for 1m".
    let short = decide(
        &QUEUE_TIERS,
        &ctx(4, "queue", &[150.0, 120.0], params.clone()),
    );
    assert_eq!(short.desired, None, "{}", short.reason);
    // Above the top tier's count: straight down to it.
    let top = decide(&QUEUE_TIERS, &ctx(12, "queue", &[5000.0], params));
    assert_eq!(top.desired, Some(8), "{}", top.reason);
}

#[test]
fn queue_tiers_refuses_a_bad_table_naming_the_tier() {
    let cases = [
        (
            "0:1, 100:2, 50:4",
            "depths must rise, but tier 3 (50) does not",
        ),
        (
            "0:1, 100:2, 500:1",
            "replicas must not fall, but tier 3 (1) does",
        ),
        (
            "10:1, 100:2",
            "the first tier must start at depth 0, not 10",
        ),
        ("0:1, lots", "tier 2 (\"lots\") is not depth:replicas"),
    ];
    for (tiers, expected) in cases {
        let params = json!({ "metric": "queue", "tiers": tiers });
        let message = refusal(&QUEUE_TIERS, &ctx(2, "queue", &[10.0], params));
        assert!(message.contains(expected), "{tiers}: {message}");
    }
    let message = refusal(
        &QUEUE_TIERS,
        &ctx(
            2,
            "queue",
            &[10.0],
            json!({ "metric": "queue", "tiers": "0:1", "down_for": 5 }),
        ),
    );
    assert_eq!(message, "parameter 'down_for' must be a string, not 5");
}

#[test]
fn error_guard_in_c_holds_on_errors_and_steps_down_when_quiet() {
    let info = ERROR_GUARD.info();
    assert_eq!(info.name, "error-guard");
    let kinds: Vec<_> = info
        .parameters
        .iter()
        .map(|p| (p.name.as_str(), p.kind, p.default.clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("metric", ParameterKind::Metric, None),
            ("limit", ParameterKind::Number, None),
            ("quiet_for", ParameterKind::Duration, Some(json!("5m"))),
            ("step_down", ParameterKind::Integer, Some(json!(1))),
        ]
    );
    let params = json!({ "metric": "errors", "limit": 1.0, "quiet_for": "1m" });
    let quiet = decide(
        &ERROR_GUARD,
        &ctx(6, "errors", &[0.2, 0.1, 0.3, 0.2, 0.1], params.clone()),
    );
    assert_eq!(quiet.desired, Some(5), "{}", quiet.reason);
    assert_eq!(
        quiet.reason,
        "errors at most 1.0 for 1m: scale-in allowed to 5 (6 → 5)"
    );
    let rising = decide(
        &ERROR_GUARD,
        &ctx(6, "errors", &[0.2, 0.1, 0.3, 0.2, 2.5], params.clone()),
    );
    assert_eq!(rising.desired, None, "{}", rising.reason);
    assert_eq!(
        rising.reason,
        "errors 2.5 above 1.0: no scale-in; hold at 6"
    );
    let message = refusal(
        &ERROR_GUARD,
        &ctx(6, "errors", &[0.1], json!({ "metric": "errors" })),
    );
    assert_eq!(message, "parameter 'limit' is required");
    let mut down = ctx(6, "errors", &[], params.clone());
    down.metrics[0].error = Some("timeout".into());
    assert_eq!(refusal(&ERROR_GUARD, &down), "metric errors: timeout");
    assert_eq!(
        decide(&ERROR_GUARD, &ctx(6, "errors", &[0.2; 5], params)).desired,
        Some(5)
    );
}

/// Compiles `sources` with the system's C compiler against the generated
/// `policy.h`, the C SDK and `includes`, with warnings as errors, and runs
/// the program: it must exit 0.
fn run_native_c_tests(name: &str, includes: &[&Path], sources: &[&Path], extra_flags: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let exe = tempfile::tempdir().unwrap();
    let binary = exe.path().join(name);
    let mut cc = std::process::Command::new("cc");
    cc.args(["-Wall", "-Werror", "-Wno-unused-function"])
        .args(extra_flags)
        .arg("-I")
        .arg(env!("SCALEWISE_C_BINDINGS"))
        .arg("-I")
        .arg(root.join("sdk/c"));
    for include in includes {
        cc.arg("-I").arg(include);
    }
    let status = cc
        .args(sources)
        .args(["-lm", "-o"])
        .arg(&binary)
        .status()
        .expect("cc runs");
    assert!(status.success(), "{name}: the native tests compile");
    let out = std::process::Command::new(&binary).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The C policy's logic, compiled natively with the system's C compiler
/// against the same generated `policy.h`, passes its own unit tests.
#[test]
fn the_c_policy_passes_its_native_tests() {
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/c/error-guard");
    run_native_c_tests(
        "test_error_guard",
        &[&policy],
        &[
            &policy.join("test_error_guard.c"),
            &policy.join("error_guard.c"),
        ],
        &[],
    );
}

/// The C SDK's helpers (scalewise.h), compiled natively against the
/// generated `policy.h`, pass their own unit tests: durations, numbers as
/// the Rust SDK writes them, parameters from the context's JSON, metric
/// windows and "held for".
#[test]
fn the_c_sdk_passes_its_native_tests() {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/c");
    run_native_c_tests(
        "test_scalewise",
        &[],
        &[&sdk.join("test_scalewise.c")],
        &["-Wextra"],
    );
}

#[test]
fn the_same_context_gives_the_same_decision_bytes() {
    let cases = [
        (
            &*CAPACITY,
            ctx(
                4,
                "inflight",
                &[100.0, 530.0],
                json!({ "metric": "inflight", "capacity": 100.0 }),
            ),
        ),
        (
            &*QUEUE_TIERS,
            ctx(
                2,
                "queue",
                &[650.0],
                json!({ "metric": "queue", "tiers": "0:1, 500:4" }),
            ),
        ),
        (&*PY_PROBE, ctx(2, "queue", &[650.0], json!({}))),
        (
            &*ERROR_GUARD,
            ctx(
                6,
                "errors",
                &[0.1, 0.2],
                json!({ "metric": "errors", "limit": 1.0, "quiet_for": "15s" }),
            ),
        ),
    ];
    for (module, context) in cases {
        let first = serde_json::to_vec(&decide(module, &context)).unwrap();
        for _ in 0..20 {
            let again = serde_json::to_vec(&decide(module, &context)).unwrap();
            assert_eq!(again, first, "{}", module.name());
        }
    }
}

#[test]
fn a_python_policy_reaches_no_file_environment_network_or_clock() {
    // A real server the probe is told to connect to.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "secret").unwrap();
    let params = json!({ "port": port, "file": file.path() });
    let decision = decide(&PY_PROBE, &ctx(2, "queue", &[1.0], params));
    let seen: Value = serde_json::from_slice(&decision.state.unwrap()).unwrap();
    for attempt in ["read_file", "list_root", "connect", "resolve"] {
        assert!(seen[attempt].get("error").is_some(), "{attempt}: {seen}");
    }
    assert_eq!(seen["environ"], json!({ "ok": "{}" }), "{seen}");
    // The clock is the context's time, and monotonic time does not pass.
    let now_s = T0 as f64 / 1000.0;
    assert_eq!(
        seen["time"],
        json!({ "ok": format!("{now_s:?}") }),
        "{seen}"
    );
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "nothing connected to the listener"
    );
}

#[test]
fn the_daemon_scales_with_python_javascript_and_c_policies() {
    let dir = tempfile::tempdir().unwrap();
    let policies = scalewise_tests::policy_dir(&[
        ("capacity", artifacts::CAPACITY),
        ("queue-tiers", artifacts::QUEUE_TIERS),
        ("error-guard", artifacts::ERROR_GUARD),
        ("target-tracking", artifacts::TARGET_TRACKING),
    ]);
    let config = format!(
        r#"
policy_dir = "{policies}"

[runtime]
timeout = "10s"
cache_dir = "{cache}"

[journal]
path = "{journal}"

# 100 requests/s per replica; 1,000 requests/s from the first minute on.
[simulations.api]
capacity_per_replica = 100.0
initial_replicas = 2
load = {{ base = 150.0, spikes = [{{ at = "1m", duration = "10m", extra = 850.0 }}] }}

# 20 jobs/s per worker; a burst of 200 jobs/s for two minutes.
[simulations.jobs]
capacity_per_replica = 20.0
initial_replicas = 1
load = {{ base = 10.0, spikes = [{{ at = "1m", duration = "2m", extra = 200.0 }}] }}

[[scalers]]
name = "api"
interval = "15s"
min = 1
max = 20
target = {{ kind = "simulator", service = "api" }}
metrics.inflight = {{ source = "simulator", query = "in_flight", window = "1m" }}
policies = [{{ module = "capacity", params = {{ metric = "inflight", capacity = 20.0 }} }}]

[[scalers]]
name = "jobs"
interval = "15s"
min = 1
max = 10
target = {{ kind = "simulator", service = "jobs" }}
metrics.queue = {{ source = "simulator", query = "queue_depth", window = "2m" }}
policies = [{{ module = "queue-tiers", params = {{ metric = "queue", tiers = "0:1, 50:3, 500:6", down_for = "1m" }} }}]
# The policy's own down_for is the hysteresis under test.
behavior.scale_down = {{ stabilization_window = "0s" }}

# 100 requests/s per replica at 40 ms; 1,200 requests/s for the first two
# minutes, then 200.
[simulations.web]
capacity_per_replica = 100.0
initial_replicas = 4
base_latency = "40ms"
load = {{ base = 200.0, spikes = [{{ at = "0s", duration = "2m", extra = 1000.0 }}] }}

# Target tracking sizes web; error-guard (in C) lets it shrink one replica
# a tick once p95 latency has stayed under 100 ms for a minute.
[[scalers]]
name = "web"
interval = "15s"
min = 1
max = 20
target = {{ kind = "simulator", service = "web" }}
metrics.cpu = {{ source = "simulator", query = "cpu" }}
metrics.p95 = {{ source = "simulator", query = "p95_latency_ms", window = "2m" }}
policies = [
  {{ module = "target-tracking", params = {{ metric = "cpu", target = 50.0 }} }},
  {{ module = "error-guard", params = {{ metric = "p95", limit = 100.0, quiet_for = "1m" }} }},
]
behavior.scale_down = {{ stabilization_window = "0s" }}
"#,
        policies = policies.path().display(),
        journal = dir.path().join("journal.db").display(),
        cache = cache_dir().display(),
    );
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut h = Harness::from_text(&config, &dir.path().join("languages.toml"), T0).await;
        let records = h.run_until(T0 + 8 * MINUTE).await;
        let reason = |r: &TickRecord| match &r.evaluations.last().unwrap().outcome {
            EvaluationOutcome::Decided { decision } => decision.reason.clone(),
            EvaluationOutcome::Failed { error, .. } => panic!("{}: {error}", r.scaler),
        };
        let changes = |scaler: &str| -> Vec<(u32, u32, String)> {
            records
                .iter()
                .filter(|r| r.scaler == scaler && r.desired != r.target.current)
                .map(|r| (r.target.current, r.desired, reason(r)))
                .collect()
        };
        let api = changes("api");
        assert!(
            api.iter()
                .any(|(from, to, why)| to > from && why.starts_with("inflight peak")),
            "api scaled out on its requests in flight: {api:?}"
        );
        let jobs = changes("jobs");
        assert!(
            jobs.iter()
                .any(|(from, to, why)| to > from && why.starts_with("queue ")),
            "jobs scaled out on its queue: {jobs:?}"
        );
        assert!(
            jobs.iter().any(|(from, to, _)| to < from),
            "jobs scaled back in after the burst: {jobs:?}"
        );
        // web: out during the spike, then in one replica a tick, each
        // step allowed by the guard.
        let web = changes("web");
        assert!(
            web.iter().any(|(from, to, _)| to > from),
            "web scaled out: {web:?}"
        );
        let ins: Vec<_> = web.iter().filter(|(from, to, _)| to < from).collect();
        assert!(ins.len() >= 2, "web scaled in step by step: {web:?}");
        for (from, to, why) in &ins {
            assert_eq!(*to, from - 1, "one replica a tick: {web:?}");
            assert!(
                why.starts_with("p95 at most 100.0 for 1m: scale-in allowed"),
                "{why}"
            );
        }
        h.close().await;
    });
}

#[test]
fn check_prints_what_each_policy_says_of_itself() {
    for (path, name) in [
        (artifacts::CAPACITY, "capacity"),
        (artifacts::QUEUE_TIERS, "queue-tiers"),
    ] {
        let (code, out, err) = scalewise_tests::cli(&["check", path]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains(&format!("name         {name}")), "{out}");
    }
}
