//! What the hot-reload and config-reload tests share: the config of a daemon
//! that reloads (run with [`crate::running::RunningDaemon`]), waits, and
//! reading the `counter` fixture's reasons.

use std::time::{Duration, Instant};

use crate::artifacts;
use crate::running::{RunningDaemon, Start};

/// A daemon of `config` whose policy folder holds the `counter` fixture (as
/// `counter.wasm`), with config reload on; add options, then `start()`.
pub fn counter_daemon(config: &str) -> Start<'_> {
    RunningDaemon::with(config)
        .policies(|dir| {
            std::fs::copy(artifacts::COUNTER, dir.join("counter.wasm"))
                .expect("the counter fixture copies into the policy folder");
        })
        .config_reload()
}

/// The config of one simulated service `web` scaled by one scaler `web`
/// every `1s` of host time with the `counter` module; the host clock runs
/// `speed` times faster than real time. `extra` is appended (more scalers,
/// other settings).
pub fn config_text(speed: f64, debounce_ms: u64, mode: &str, extra: &str) -> String {
    format!(
        r#"policy_dir = "policies"

[runtime]
timeout = "5s"

[clock]
speed = {speed:?}

[journal]
path = "journal.db"

[watch]
debounce = "{debounce_ms}ms"
mode = "{mode}"
poll_interval = "100ms"

[simulations.web]
capacity_per_replica = 100.0
initial_replicas = 3

[simulations.web.load]
base = 200.0

[simulations.api]
capacity_per_replica = 50.0
initial_replicas = 2

[simulations.api.load]
base = 80.0

[[scalers]]
name = "web"
interval = "1s"
min = 1
max = 10
target = {{ kind = "simulator", service = "web" }}

[[scalers.policies]]
module = "counter"
{extra}"#
    )
}

/// Waits (polling every 5 ms) until `cond` holds, or panics naming `what`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// [`wait_until`] for async tests: polls without blocking the runtime.
pub async fn wait_until_async(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The `N` in a counter fixture's reason (`counter v1: evaluation N`), and
/// its version.
pub fn counter_reason(reason: &str) -> Option<(u32, u64)> {
    let rest = reason.strip_prefix("counter v")?;
    let (version, count) = rest.split_once(": evaluation ")?;
    Some((version.parse().ok()?, count.parse().ok()?))
}

/// Waits (30 s at most) until the host's own metrics hold `line` (a series
/// with its value, as exposed). The reload callback counts loads and
/// failures after the registry has swapped, so what a test saw in the
/// registry may not be counted yet.
pub async fn wait_for_telemetry(d: &RunningDaemon, line: &str) {
    let telemetry = d.telemetry().clone();
    let needle = line.to_owned();
    wait_until_async(Duration::from_secs(30), line, move || {
        telemetry.encode().contains(&needle)
    })
    .await;
}

/// Waits (30 s at most) until the API's view of scaler `name` satisfies
/// `cond`. An applied config reaches a scaler between its ticks, so its view
/// may show the old settings for the rest of a tick in progress.
pub async fn wait_for_scaler(
    d: &RunningDaemon,
    name: &str,
    what: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view = d
            .get(&format!("/v1/scalers/{name}"))
            .await
            .expect("the API answers");
        if cond(&view) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for scaler {name}: {what}; it shows {view}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Rewrites the daemon's config file as an editor would: a new file
/// renamed over it.
pub fn rewrite_config(d: &RunningDaemon, text: &str) {
    let tmp = d.dir().join(".scalewise.toml.tmp");
    std::fs::write(&tmp, text).expect("the new config is written");
    std::fs::rename(&tmp, d.config_path()).expect("the new config is renamed over the old");
}

/// Waits (30 s at most) until the daemon has counted `n` config reloads
/// with `result` (`applied`, `refused`, `unchanged`).
pub async fn wait_for_reloads(d: &RunningDaemon, result: &str, n: u64) {
    let line = format!("scalewise_config_reloads_total{{result=\"{result}\"}} {n}");
    wait_for_telemetry(d, &line).await;
}
