//! Integration and end-to-end tests of Scalewise against real components.
//!
//! `build.rs` builds every guest module of `policies/` (real policies and the
//! fixtures under `policies/fixtures/`) for wasm32-wasip2, and the Python,
//! JavaScript and C policies of `policies/python`, `policies/js` and
//! `policies/c`; [`artifacts`] holds their paths. The tests themselves are the `[[test]]` targets next
//! to this crate's manifest: `runtime.rs` (faults, limits, loading),
//! `sandbox.rs` (what a policy can reach, determinism), `languages.rs`
//! (policies in Python, JavaScript and C), `registry.rs` and
//! `cli.rs`; `benches/runtime.rs` is the runtime benchmark.
//!
//! [`e2e`] steps the real daemon on a manual clock and checks its journal
//! against the envelope's rules.
//!
//! Harnesses for real peers:
//! - [`prometheus`]: a real Prometheus server and an exporter it scrapes.
//! - [`stub_http`]: HTTP and TCP peers that misbehave on purpose.
//! - [`https`]: a peer behind HTTPS (a certificate no system trusts) and a
//!   bearer token, for `ca_file` and `bearer_token`.
//! - [`shard_coordinator`]: a fake shard coordinator for the `rebalance`
//!   actuator (no stock system speaks its API).
//! - [`reload`]: what the hot-reload and config-reload tests share (a
//!   reloading daemon's config, waits, the `counter` fixture's reasons).
//! - [`running`]: the real daemon, run in-process from a config text, with
//!   the bundled policy modules (end-to-end tests and benchmarks).

pub mod daemon_process;
pub mod e2e;
pub mod fake_kube;
pub mod https;
pub mod moto;
pub mod prometheus;
pub mod reload;
pub mod running;
pub mod shard_coordinator;
pub mod stub_http;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use scalewise::config::RuntimeLimits;
use scalewise::policy::{Context, Metric, Point, Target};
use scalewise::runtime::{PolicyModule, Runtime};

/// Paths of the guest modules built from `policies/`, one constant per
/// module (`FAULTS`, `SANDBOX_PROBE`, `TARGET_TRACKING`, ...) and [`ALL`](artifacts::ALL).
pub mod artifacts {
    include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
}

/// A temporary policy folder holding the given built modules under the
/// given module names (`("target-tracking", artifacts::TARGET_TRACKING)`
/// becomes `target-tracking.wasm`), as a policy folder in production would.
pub fn policy_dir(modules: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary folder");
    for (name, artifact) in modules {
        let to = dir.path().join(format!("{name}.wasm"));
        std::fs::copy(artifact, &to)
            .unwrap_or_else(|e| panic!("cannot copy {artifact} to {}: {e}", to.display()));
    }
    dir
}

/// `tests/data`, where example contexts live.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// A runtime with the default limits but a 10 s deadline: a test on a
/// starved CI machine must not fail by running past the default 100 ms
/// (tests of the deadline set their own).
pub fn runtime() -> Runtime {
    Runtime::new(RuntimeLimits {
        timeout: std::time::Duration::from_secs(10),
        ..RuntimeLimits::default()
    })
    .expect("the test runtime starts")
}

/// Loads the module at `path` with [`runtime`]'s limits, or panics with why.
pub fn load(path: &str) -> PolicyModule {
    runtime()
        .load_file(Path::new(path))
        .unwrap_or_else(|e| panic!("{path} does not load: {e}"))
}

/// A context at `now_ms` for scaler `web` (3 replicas, bounds 1–10) with
/// the given parameters and one `cpu` metric of `points` samples, one a
/// second, ending at `now_ms`, cycling between 40 and 80.
pub fn context(now_ms: i64, parameters: serde_json::Value, points: usize) -> Context {
    let points = (0..points)
        .map(|i| {
            let age = (points - 1 - i) as i64 * 1000;
            Point::from((now_ms - age, 40.0 + (i % 41) as f64))
        })
        .collect();
    Context {
        now_ms,
        scaler: "web".into(),
        target: Target {
            kind: "simulator".into(),
            name: "web".into(),
            current: 3,
            ready: 3,
            min: 1,
            max: 10,
        },
        metrics: vec![Metric {
            name: "cpu".into(),
            points,
            error: None,
        }],
        events: Vec::new(),
        parameters,
        state: None,
    }
}

/// Runs the `scalewise` command line in-process with `args` (no program
/// name) and returns its exit code, stdout and stderr.
pub fn cli(args: &[&str]) -> (u8, String, String) {
    use clap::Parser as _;
    let cli = scalewise::cli::Cli::try_parse_from(
        std::iter::once("scalewise").chain(args.iter().copied()),
    )
    .unwrap_or_else(|e| panic!("{args:?} does not parse: {e}"));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = scalewise::cli::run_cli(cli, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).expect("stdout is UTF-8"),
        String::from_utf8(err).expect("stderr is UTF-8"),
    )
}

/// The `faults` fixture's context for `mode`.
pub fn fault(mode: &str) -> Context {
    context(1_700_000_000_000, serde_json::json!({ "mode": mode }), 3)
}

/// Polls `probe` every 100 ms until it returns `Ok`, or fails after
/// `timeout` saying what was awaited and what `probe` last reported (its
/// `Err`). For anything a test awaits through an async call: a query's
/// answer, a journal record, an API field.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(value) => return Ok(value),
            Err(state) => state,
        };
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
