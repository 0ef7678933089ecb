//! Config reload by a change to the file (the watcher), against a running
//! daemon: a valid change is applied between ticks, an invalid one refused
//! with the running config kept, settings read only at start say they need
//! a restart, and notifications follow the reloaded config. (SIGHUP has its
//! own test binary: a signal reaches every daemon in the process.)

use std::sync::atomic::Ordering;
use std::time::Duration;

use scalewise::journal::{EvaluationOutcome, TickRecord};
use scalewise_tests::reload::{
    config_text, counter_daemon, counter_reason, rewrite_config, wait_for_reloads, wait_for_scaler,
    wait_until_async,
};
use scalewise_tests::running::RunningDaemon;
use scalewise_tests::stub_http::{Canned, RecordingServer, counted_silent_listener};

const SECOND: Duration = Duration::from_secs(1);

/// A second scaler, on the `api` simulation, with the counter module.
const API_SCALER: &str = r#"
[[scalers]]
name = "api"
interval = "1s"
min = 1
max = 5
target = { kind = "simulator", service = "api" }

[[scalers.policies]]
module = "counter"
"#;

async fn start(extra: &str) -> RunningDaemon {
    counter_daemon(&config_text(4.0, 50, "native", extra))
        .no_listener()
        .start()
        .await
        .unwrap()
}

/// How many scalers the API lists.
async fn scaler_count(d: &RunningDaemon) -> usize {
    let scalers = d.get("/v1/scalers").await.unwrap();
    scalers.as_array().map_or(0, Vec::len)
}

fn count_of(record: &TickRecord) -> u64 {
    match &record.evaluations[0].outcome {
        EvaluationOutcome::Decided { decision } => counter_reason(&decision.reason).unwrap().1,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_change_is_applied_and_keeps_history_and_policy_state() {
    let mut d = start("").await;
    let before = d
        .next_decision(5 * SECOND, |r| r.scaler == "web")
        .await
        .unwrap();
    assert_eq!(scaler_count(&d).await, 1);

    // web's bounds change (same policies), a scaler is added.
    let text = config_text(4.0, 50, "native", API_SCALER).replace("max = 10", "max = 8");
    rewrite_config(&d, &text);
    wait_for_reloads(&d, "applied", 1).await;

    wait_for_scaler(&d, "web", "max 8", |web| web["max"] == 8).await;
    let api = d
        .next_decision(5 * SECOND, |r| r.scaler == "api")
        .await
        .unwrap();
    assert_eq!(count_of(&api), 1, "a new scaler starts afresh");
    let after = d
        .next_decision(5 * SECOND, |r| r.scaler == "web" && r.target.max == 8)
        .await
        .unwrap();
    assert!(
        count_of(&after) > count_of(&before),
        "web's policy state carried over: {} then {}",
        count_of(&before),
        count_of(&after)
    );
    let names: Vec<String> = d
        .get("/v1/scalers")
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["api", "web"]);
    let status = d.get("/v1/config").await.unwrap();
    assert_eq!(status["reloads"], 1);
    assert_eq!(status["reload_enabled"], true);
    assert_eq!(status["last_error"], serde_json::Value::Null);
    assert_eq!(status["restart_required"], serde_json::json!([]));

    // Removed again: it stops; its journal stays.
    rewrite_config(&d, &config_text(4.0, 50, "native", ""));
    wait_for_reloads(&d, "applied", 2).await;
    assert_eq!(scaler_count(&d).await, 1);
    assert_eq!(
        d.get("/v1/scalers/api").await.unwrap()["error"]["code"],
        "not_found"
    );
    d.stop().await.unwrap();
    let web_records = d.records("web").await.unwrap();
    let api_records = d.records("api").await.unwrap();
    assert!(!api_records.is_empty());
    // One journal for web throughout: its counts run on without a gap.
    let counts: Vec<u64> = web_records.iter().map(count_of).collect();
    let expected: Vec<u64> = (1..=counts.len() as u64).collect();
    assert_eq!(counts, expected);
}

/// The config of the move tests: `web` on the simulated `service`, its
/// policy asking for 1 replica (the scale-down window holds it), its
/// journal at `journal` (a restart keeps it) or in the daemon's folder.
fn moving(service: &str, journal: Option<&str>) -> String {
    let text = config_text(1.0, 50, "native", "params = { scale_to = 1 }\n")
        .replace("service = \"web\"", &format!("service = \"{service}\""));
    match journal {
        Some(journal) => text.replace("path = \"journal.db\"", &format!("path = {journal:?}")),
        None => text,
    }
}

async fn start_moving(service: &str, journal: Option<&str>) -> RunningDaemon {
    counter_daemon(&moving(service, journal))
        .no_listener()
        .start()
        .await
        .unwrap()
}

/// Waits for `web`'s next tick on `target` and checks it held `web` at
/// `replicas` (as many as it has).
async fn held_at(d: &mut RunningDaemon, target: &str, replicas: u32) {
    let held = d
        .next_decision(5 * SECOND, |r| r.scaler == "web" && r.target.name == target)
        .await
        .unwrap();
    assert_eq!(
        (held.target.current, held.desired),
        (replicas, replicas),
        "{}",
        scalewise::scaler::summarize(&held)
    );
}

/// Starts `web` on api (2 replicas: held at 2 by the scale-down window).
async fn on_api(journal: Option<&str>) -> RunningDaemon {
    let mut d = start_moving("api", journal).await;
    held_at(&mut d, "api", 2).await;
    d
}

/// Three ticks of `web` on web (3 replicas), each held at 3: not let down
/// to the 2 of api's ticks.
async fn held_at_web(d: &mut RunningDaemon) {
    for _ in 0..3 {
        held_at(d, "web", 3).await;
    }
}

/// A reload that moves a scaler to another target starts its envelope
/// afresh: the old target's counts in the scale-down window (2 replicas)
/// must not let the new target (3 replicas) drop to them at once. The
/// scale-down window holds it at its own count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaler_moved_to_another_target_starts_its_envelope_afresh() {
    let mut d = on_api(None).await;
    rewrite_config(&d, &moving("web", None));
    wait_for_reloads(&d, "applied", 1).await;
    held_at_web(&mut d).await;
    d.stop().await.unwrap();
}

/// The same across a restart: a scaler whose config names another target
/// when the daemon starts again does not take the journal's envelope of the
/// one before (its windows held the new target at the old one's count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaler_retargeted_across_a_restart_starts_its_envelope_afresh() {
    let state = tempfile::tempdir().unwrap();
    let journal = state.path().join("journal.db").display().to_string();
    on_api(Some(&journal)).await.stop().await.unwrap();
    let mut d = start_moving("web", Some(&journal)).await;
    held_at_web(&mut d).await;
    d.stop().await.unwrap();
}

/// A scaler moved by a reload, then restarted: its envelope is rebuilt
/// from its ticks on the target it has now only (the old target's
/// recommendations let the new one drop to their count after the restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_a_move_reads_back_the_new_targets_ticks_only() {
    let state = tempfile::tempdir().unwrap();
    let journal = state.path().join("journal.db").display().to_string();
    let mut d = on_api(Some(&journal)).await;
    rewrite_config(&d, &moving("web", Some(&journal)));
    wait_for_reloads(&d, "applied", 1).await;
    held_at(&mut d, "web", 3).await;
    d.stop().await.unwrap();
    let mut d = start_moving("web", Some(&journal)).await;
    held_at_web(&mut d).await;
    d.stop().await.unwrap();
}

/// A scaler a reload moves onto the target of a scaler it removes waits
/// for that one's tick in progress to end before it acts there: two
/// scalers never act on one target at once. `slow` ticks for 10 s (its
/// metric's source never answers, up to the source's timeout); `web` is
/// moved onto its target while `slow` waits. (Before, only a scaler the
/// reload added waited; `web` ticked on `api` within a second.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaler_moved_onto_a_removed_scalers_target_waits_for_its_tick() {
    let (hanging, asked) = counted_silent_listener().await.unwrap();
    let slow = format!(
        r#"
[[scalers]]
name = "slow"
interval = "1s"
min = 1
max = 5
target = {{ kind = "simulator", service = "api" }}

[scalers.metrics.load]
source = "stuck"
query = "up"

[[scalers.policies]]
module = "counter"

[sources.stuck]
kind = "prometheus"
url = "http://{hanging}"
timeout = "10s"
"#
    );
    // At the wall clock's pace, as a Prometheus source requires.
    let mut d = counter_daemon(&config_text(1.0, 50, "native", &slow))
        .no_listener()
        .start()
        .await
        .unwrap();
    // The first slow tick waits for its metric.
    wait_until_async(30 * SECOND, "slow's metric to be asked for", || {
        asked.load(Ordering::SeqCst) > 0
    })
    .await;
    rewrite_config(
        &d,
        &config_text(1.0, 50, "native", "").replace("service = \"web\"", "service = \"api\""),
    );
    wait_for_reloads(&d, "applied", 1).await;
    let reloaded_at = d.clock().now_ms();
    let moved = d
        .next_decision(30 * SECOND, |r| r.scaler == "web" && r.target.name == "api")
        .await
        .unwrap();
    let slow = d.records("slow").await.unwrap();
    let last = slow.last().expect("the tick in progress was journaled");
    // It lasted the source's 10 s.
    assert!(
        reloaded_at < last.time_ms + 9_000,
        "the reload came after slow's tick ({} ms in)",
        reloaded_at - last.time_ms
    );
    assert!(
        moved.time_ms >= last.time_ms + 9_000,
        "web ticked on api {} ms after the removed scaler's last tick began",
        moved.time_ms - last.time_ms
    );
    d.stop().await.unwrap();
}

/// Two scalers a reload swaps between two targets each wait for the other
/// to let go of its new target, and neither waits for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scalers_swapped_between_targets_both_go_on() {
    let mut d = start(API_SCALER).await;
    d.next_decision(5 * SECOND, |r| r.scaler == "api")
        .await
        .unwrap();
    let swapped = config_text(4.0, 50, "native", API_SCALER)
        .replace("service = \"web\"", "service = \"tmp\"")
        .replace("service = \"api\"", "service = \"web\"")
        .replace("service = \"tmp\"", "service = \"api\"");
    rewrite_config(&d, &swapped);
    wait_for_reloads(&d, "applied", 1).await;
    d.next_decision(10 * SECOND, |r| r.scaler == "web" && r.target.name == "api")
        .await
        .unwrap();
    d.next_decision(10 * SECOND, |r| r.scaler == "api" && r.target.name == "web")
        .await
        .unwrap();
    d.stop().await.unwrap();
}

/// A scaler added by a reload takes the config's `paused`, not a flag the
/// journal kept from an earlier life of the same name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaler_added_by_reload_takes_the_configs_pause_flag() {
    let mut d = start("").await;
    let paused_api = API_SCALER.replace("max = 5", "max = 5\npaused = true");
    let with = |api: &str| config_text(4.0, 50, "native", api);
    rewrite_config(&d, &with(&paused_api));
    wait_for_reloads(&d, "applied", 1).await;
    wait_for_scaler(&d, "api", "paused", |api| api["paused"] == true).await;
    // Resumed by the config: the journal keeps `false`.
    rewrite_config(&d, &with(API_SCALER));
    wait_for_reloads(&d, "applied", 2).await;
    wait_for_scaler(&d, "api", "resumed", |api| api["paused"] == false).await;
    // Removed, then added again paused.
    rewrite_config(&d, &with(""));
    wait_for_reloads(&d, "applied", 3).await;
    rewrite_config(&d, &with(&paused_api));
    wait_for_reloads(&d, "applied", 4).await;
    wait_for_scaler(&d, "api", "paused again", |api| api["paused"] == true).await;
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_change_is_refused_and_the_running_config_stays() {
    let mut d = start("").await;
    d.next_decision(5 * SECOND, |r| r.scaler == "web")
        .await
        .unwrap();

    // min above max, and a module that does not exist.
    let text = config_text(4.0, 50, "native", "")
        .replace("min = 1", "min = 12")
        .replace("module = \"counter\"", "module = \"countr\"");
    rewrite_config(&d, &text);
    wait_for_reloads(&d, "refused", 1).await;
    let status = d.get("/v1/config").await.unwrap();
    let error = &status["last_error"];
    assert_eq!(error["kind"], "invalid");
    let text = error["error"].as_str().unwrap();
    assert!(text.contains("scalewise.toml:"), "{text}");
    assert!(text.contains("min (12) is greater than max (10)"), "{text}");
    let problem = &error["problems"][0];
    assert!(problem["line"].as_u64().unwrap() > 0, "{problem}");
    assert!(
        problem["file"]
            .as_str()
            .unwrap()
            .ends_with("scalewise.toml")
    );
    assert_eq!(status["reloads"], 0);

    // Still running with the old config.
    let record = d
        .next_decision(5 * SECOND, |r| r.scaler == "web")
        .await
        .unwrap();
    assert_eq!(record.target.min, 1);
    assert!(matches!(
        record.evaluations[0].outcome,
        EvaluationOutcome::Decided { .. }
    ));

    // An unknown module is refused too (checked against the loaded ones).
    let text =
        config_text(4.0, 50, "native", "").replace("module = \"counter\"", "module = \"countr\"");
    rewrite_config(&d, &text);
    wait_for_reloads(&d, "refused", 2).await;
    let error = d.get("/v1/config").await.unwrap()["last_error"]["error"].clone();
    assert!(
        error
            .as_str()
            .unwrap()
            .contains("unknown module \"countr\"; loaded modules: counter"),
        "{error}"
    );

    // Undone (the file as it runs): nothing to apply, and the refusal no
    // longer describes the file.
    rewrite_config(&d, &config_text(4.0, 50, "native", ""));
    wait_for_reloads(&d, "unchanged", 1).await;
    let status = d.get("/v1/config").await.unwrap();
    assert_eq!(status["last_error"], serde_json::Value::Null, "{status}");
    assert_eq!(status["reloads"], 0);

    // Fixed: applied, the error cleared.
    rewrite_config(
        &d,
        &config_text(4.0, 50, "native", "").replace("module = \"counter\"", "module = \"countr\""),
    );
    wait_for_reloads(&d, "refused", 3).await;
    rewrite_config(
        &d,
        &config_text(4.0, 50, "native", "").replace("max = 10", "max = 9"),
    );
    wait_for_reloads(&d, "applied", 1).await;
    let status = d.get("/v1/config").await.unwrap();
    assert_eq!(status["last_error"], serde_json::Value::Null);
    wait_for_scaler(&d, "web", "max 9", |web| web["max"] == 9).await;
    d.stop().await.unwrap();
}

/// A config refused for a module the folder does not hold yet is applied
/// once the module arrives, the file untouched: the order of the two
/// changes does not matter. (Only a version refused for not fitting the
/// config asked for the refused change to be tried again; one that loaded
/// did not, and the change stayed refused until the file was saved again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_refused_for_a_module_not_there_yet_is_applied_when_it_comes() {
    let mut d = start("").await;
    d.next_decision(5 * SECOND, |r| r.scaler == "web")
        .await
        .unwrap();
    let text = config_text(4.0, 50, "native", "").replace(
        "module = \"counter\"",
        "module = \"faults\"\nparams = { mode = \"ok\" }",
    );
    rewrite_config(&d, &text);
    wait_for_reloads(&d, "refused", 1).await;
    let error = d.get("/v1/config").await.unwrap()["last_error"]["error"].clone();
    assert!(
        error
            .as_str()
            .unwrap()
            .contains("unknown module \"faults\""),
        "{error}"
    );

    std::fs::copy(
        scalewise_tests::artifacts::FAULTS,
        d.policy_dir().join("faults.wasm"),
    )
    .unwrap();
    wait_for_reloads(&d, "applied", 1).await;
    let status = d.get("/v1/config").await.unwrap();
    assert_eq!(status["last_error"], serde_json::Value::Null, "{status}");
    d.next_decision(10 * SECOND, |r| {
        r.scaler == "web" && r.evaluations.first().is_some_and(|e| e.module == "faults")
    })
    .await
    .unwrap();
    d.stop().await.unwrap();
}

/// A module whose file left while a scaler still named it, then dropped
/// from the config: its series leave the host's metrics. (The scaler's
/// `module_unavailable` errors brought them back after the file left, and
/// nothing removed them once the config stopped naming it: one series more
/// for every versioned file name swapped that way.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_neither_in_the_folder_nor_named_leaves_the_metrics() {
    let mut d = start("").await;
    d.next_decision(5 * SECOND, |r| r.scaler == "web")
        .await
        .unwrap();
    std::fs::remove_file(d.policy_dir().join("counter.wasm")).unwrap();
    scalewise_tests::reload::wait_for_telemetry(
        &d,
        "scalewise_policy_errors_total{module=\"counter\",kind=\"module_unavailable\"}",
    )
    .await;
    std::fs::copy(
        scalewise_tests::artifacts::FAULTS,
        d.policy_dir().join("faults.wasm"),
    )
    .unwrap();
    let faults =
        config_text(4.0, 50, "native", "").replace("module = \"counter\"", "module = \"faults\"");
    rewrite_config(&d, &faults);
    wait_for_reloads(&d, "applied", 1).await;
    d.next_decision(10 * SECOND, |r| {
        r.scaler == "web" && r.evaluations.first().is_some_and(|e| e.module == "faults")
    })
    .await
    .unwrap();
    // A tick of the old config still under way when the reload applied
    // counts no error of it (that brought its series back for good).
    let text = d.telemetry().encode();
    assert!(!text.contains("module=\"counter\""), "{text}");
    assert!(text.contains("module=\"faults\""), "{text}");
    d.stop().await.unwrap();
}

/// The same when the file goes and the config moves on before a tick
/// counted an error of the module: it is retired as one the replaced
/// config named, so a tick of that config still under way (the error
/// counted here stands for it) brings no series back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_the_replaced_config_named_is_retired_without_series() {
    // Hourly ticks: none between the file going and the reload, most runs.
    let hourly = |text: String| text.replace("interval = \"1s\"", "interval = \"1h\"");
    let mut d = counter_daemon(&hourly(config_text(4.0, 50, "native", "")))
        .no_listener()
        .start()
        .await
        .unwrap();
    let registry = d.registry().clone();
    std::fs::remove_file(d.policy_dir().join("counter.wasm")).unwrap();
    wait_until_async(30 * SECOND, "the module gone", || {
        registry.get("counter").is_none()
    })
    .await;
    std::fs::copy(
        scalewise_tests::artifacts::FAULTS,
        d.policy_dir().join("faults.wasm"),
    )
    .unwrap();
    wait_until_async(30 * SECOND, "faults loaded", || {
        registry.get("faults").is_some()
    })
    .await;
    rewrite_config(
        &d,
        &hourly(config_text(4.0, 50, "native", ""))
            .replace("module = \"counter\"", "module = \"faults\""),
    );
    wait_for_reloads(&d, "applied", 1).await;
    d.telemetry().policy_error("counter", "module_unavailable");
    let text = d.telemetry().encode();
    assert!(!text.contains("module=\"counter\""), "{text}");
    d.stop().await.unwrap();
}

/// New parameters the policy refuses (a negative count where it reads an
/// unsigned one): the config check cannot know, but the scaler's last
/// context, decided with the old ones, fails with the new: the reload is
/// refused at the parameters and the scaler keeps deciding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_the_policy_refuses_are_refused_at_reload() {
    let mut d = start("").await;
    d.next_decision(5 * SECOND, |r| r.scaler == "web")
        .await
        .unwrap();
    let with_params = |params: &str| {
        config_text(4.0, 50, "native", "").replace(
            "module = \"counter\"",
            &format!("module = \"counter\"\nparams = {{ {params} }}"),
        )
    };
    let text = with_params("scale_to = -1");
    rewrite_config(&d, &text);
    wait_for_reloads(&d, "refused", 1).await;
    let error = d.get("/v1/config").await.unwrap()["last_error"].clone();
    let problem = &error["problems"][0];
    assert_eq!(
        problem["path"], "scalers[0] \"web\".policies[0] \"counter\"",
        "{error}"
    );
    let line = text
        .lines()
        .position(|l| l.starts_with("params = "))
        .unwrap()
        + 1;
    assert_eq!(problem["line"].as_u64(), Some(line as u64), "{error}");
    let message = problem["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "the policy refuses these parameters: on the context scaler \"web\" decided at "
        ) && message.contains("it now fails (policy_error): "),
        "{message}"
    );
    // Still deciding with the running parameters.
    let record = d
        .next_decision(5 * SECOND, |r| r.scaler == "web")
        .await
        .unwrap();
    assert!(matches!(
        record.evaluations[0].outcome,
        EvaluationOutcome::Decided { .. }
    ));

    // Parameters it takes are applied.
    rewrite_config(&d, &with_params("scale_to = 2"));
    wait_for_reloads(&d, "applied", 1).await;
    let record = d
        .next_decision(5 * SECOND, |r| {
            r.scaler == "web" && r.evaluations[0].context.parameters["scale_to"] == 2
        })
        .await
        .unwrap();
    assert!(matches!(
        record.evaluations[0].outcome,
        EvaluationOutcome::Decided { .. }
    ));
    d.stop().await.unwrap();
}

/// New parameters that read a metric the last context lacks (renamed, or
/// new) cannot be judged on it: the trial is skipped and the reload
/// applied (it was refused: "metric cpu_usage is not one of the scaler's
/// metrics (cpu)", so renaming a metric took a restart or three reloads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metric_renamed_with_the_parameters_naming_it_is_applied() {
    let with_metric = |name: &str| {
        config_text(4.0, 50, "native", "").replace(
            "[[scalers.policies]]\nmodule = \"counter\"\n",
            &format!(
                "metrics.{name} = {{ source = \"simulator\", query = \"cpu\" }}\n\n\
                 [[scalers.policies]]\nmodule = \"target-tracking\"\n\
                 params = {{ metric = \"{name}\", target = 60.0 }}\n"
            ),
        )
    };
    let mut d = RunningDaemon::with(&with_metric("cpu"))
        .policies(|dir| {
            std::fs::copy(
                scalewise_tests::artifacts::TARGET_TRACKING,
                dir.join("target-tracking.wasm"),
            )
            .unwrap();
        })
        .config_reload()
        .no_listener()
        .start()
        .await
        .unwrap();
    d.next_decision(5 * SECOND, |r| {
        r.scaler == "web" && matches!(r.evaluations[0].outcome, EvaluationOutcome::Decided { .. })
    })
    .await
    .unwrap();
    rewrite_config(&d, &with_metric("cpu_usage"));
    wait_for_reloads(&d, "applied", 1).await;
    let record = d
        .next_decision(5 * SECOND, |r| {
            r.scaler == "web" && r.evaluations[0].context.parameters["metric"] == "cpu_usage"
        })
        .await
        .unwrap();
    assert!(
        matches!(
            record.evaluations[0].outcome,
            EvaluationOutcome::Decided { .. }
        ),
        "{:?}",
        record.evaluations[0].outcome
    );
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_read_at_start_are_reported_as_needing_a_restart() {
    let mut d = start("").await;
    let text = config_text(4.0, 50, "native", "")
        .replace("speed = 4.0", "speed = 2.0")
        .replace("initial_replicas = 3", "initial_replicas = 4")
        + "\n[api]\nlisten = \"127.0.0.1:9999\"\n";
    rewrite_config(&d, &text);
    wait_for_reloads(&d, "applied", 1).await;
    let status = d.get("/v1/config").await.unwrap();
    assert_eq!(
        status["restart_required"],
        serde_json::json!(["[api]", "[clock]", "[simulations]"])
    );
    // The rest applies, and the scalers keep running.
    let record = d
        .next_decision(5 * SECOND, |r| r.scaler == "web")
        .await
        .unwrap();
    assert!(matches!(
        record.evaluations[0].outcome,
        EvaluationOutcome::Decided { .. }
    ));

    // Later reloads still compare with the settings the daemon started with
    // (it keeps them without its scalers, [simulations] as a fingerprint).
    rewrite_config(&d, &format!("{text}\n# a second edit\n"));
    wait_for_reloads(&d, "applied", 2).await;
    let status = d.get("/v1/config").await.unwrap();
    assert_eq!(
        status["restart_required"],
        serde_json::json!(["[api]", "[clock]", "[simulations]"])
    );
    rewrite_config(
        &d,
        &format!(
            "{}\n# back as started\n",
            config_text(4.0, 50, "native", "")
        ),
    );
    wait_for_reloads(&d, "applied", 3).await;
    let status = d.get("/v1/config").await.unwrap();
    assert_eq!(status["restart_required"], serde_json::json!([]));
    assert_eq!(scaler_count(&d).await, 1);
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_checked_against_the_settings_that_stay_until_a_restart() {
    // The [runtime] table of config_text, with a ceiling of `n` replicas.
    let with_ceiling = |text: String, n: u32| {
        text.replace("[runtime]\n", &format!("[runtime]\nmax_replicas = {n}\n"))
    };
    let mut d = counter_daemon(&with_ceiling(config_text(4.0, 50, "native", ""), 10))
        .no_listener()
        .start()
        .await
        .unwrap();
    d.next_decision(5 * SECOND, |r| r.scaler == "web")
        .await
        .unwrap();

    // The new file is valid on its own (it raises the ceiling too), but the
    // running ceiling stays 10 until a restart: a max of 500 is refused,
    // not applied to a scaler that would then fail every tick.
    let text =
        with_ceiling(config_text(4.0, 50, "native", ""), 1000).replace("max = 10", "max = 500");
    rewrite_config(&d, &text);
    wait_for_reloads(&d, "refused", 1).await;
    let error = d.get("/v1/config").await.unwrap()["last_error"].clone();
    let message = error["error"].as_str().unwrap();
    assert!(
        message.contains("max (500) is above runtime.max_replicas (10)"),
        "{message}"
    );
    assert!(
        message.contains("checked against the running [runtime], which change only at a restart"),
        "{message}"
    );
    assert!(
        error["problems"][0]["line"].as_u64().unwrap() > 0,
        "{error}"
    );

    // Likewise a Prometheus source while the running clock is 4x: it
    // would be asked about times that have not happened yet.
    let text = with_ceiling(config_text(1.0, 50, "native", ""), 10)
        + "\n[sources.prom]\nkind = \"prometheus\"\nurl = \"http://127.0.0.1:1\"\n";
    rewrite_config(&d, &text);
    wait_for_reloads(&d, "refused", 2).await;
    let message = d.get("/v1/config").await.unwrap()["last_error"]["error"].clone();
    assert!(
        message
            .as_str()
            .unwrap()
            .contains("speed (4) must be 1 while a Prometheus source is configured"),
        "{message}"
    );

    // A scaler on a simulation added in the same file: [simulations] are
    // read only at start, so it is refused, at the scaler's target.
    let text = with_ceiling(config_text(4.0, 50, "native", ""), 10)
        + "\n[simulations.jobs]\ncapacity_per_replica = 10.0\ninitial_replicas = 1\n\n\
           [simulations.jobs.load]\nbase = 5.0\n\n[[scalers]]\nname = \"jobs\"\n\
           interval = \"1s\"\nmin = 1\nmax = 5\n\
           target = { kind = \"simulator\", service = \"jobs\" }\n\n\
           [[scalers.policies]]\nmodule = \"counter\"\n";
    rewrite_config(&d, &text);
    wait_for_reloads(&d, "refused", 3).await;
    let error = d.get("/v1/config").await.unwrap()["last_error"].clone();
    let message = error["error"].as_str().unwrap();
    assert!(
        message.contains("simulation \"jobs\" is new in this file"),
        "{message}"
    );
    let target_line = text
        .lines()
        .position(|l| l.contains("service = \"jobs\""))
        .unwrap()
        + 1;
    assert_eq!(
        error["problems"][0]["line"].as_u64(),
        Some(target_line as u64),
        "{error}"
    );
    assert_eq!(scaler_count(&d).await, 1);
    assert_eq!(d.get("/v1/scalers/web").await.unwrap()["max"], 10);
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_follow_the_reloaded_config() {
    let ok = || Canned {
        status: 200,
        content_type: "text/plain",
        body: "ok".into(),
        headers: Vec::new(),
    };
    let first = RecordingServer::start(ok()).await.unwrap();
    let second = RecordingServer::start(ok()).await.unwrap();
    let mut d = start("").await;
    d.next_decision(5 * SECOND, |r| r.scaler == "web")
        .await
        .unwrap();
    let hook = |url: String| format!("\n[[notifications]]\nurl = \"{url}/hook\"\n");

    // Added by a reload that also raises web's min from 1 to 5 (it runs
    // 3): the change that follows is told.
    let text = config_text(4.0, 50, "native", &hook(first.url())).replace("min = 1", "min = 5");
    rewrite_config(&d, &text);
    wait_for_reloads(&d, "applied", 1).await;
    let body = &first.json_bodies(1).await[0];
    assert_eq!(
        (
            body["scaler"].as_str(),
            body["from"].as_u64(),
            body["to"].as_u64()
        ),
        (Some("web"), Some(3), Some(5)),
        "{body}"
    );
    let status = d.get("/v1/config").await.unwrap();
    assert_eq!(
        status["restart_required"],
        serde_json::json!([]),
        "{status}"
    );

    // Another endpoint: the next change goes there, not to the first.
    let text = config_text(4.0, 50, "native", &hook(second.url())).replace("min = 1", "min = 7");
    rewrite_config(&d, &text);
    wait_for_reloads(&d, "applied", 2).await;
    let body = &second.json_bodies(1).await[0];
    assert_eq!(
        (body["from"].as_u64(), body["to"].as_u64()),
        (Some(5), Some(7))
    );
    assert_eq!(first.bodies().len(), 1, "the first endpoint was replaced");

    // A token that cannot be read refuses the reload; the webhook stays.
    let missing = d.dir().join("no-such-token");
    let text = config_text(
        4.0,
        50,
        "native",
        &format!(
            "{}bearer_token = {{ file = \"{}\" }}\n",
            hook(first.url()),
            missing.display()
        ),
    )
    .replace("min = 1", "min = 8");
    rewrite_config(&d, &text);
    wait_for_reloads(&d, "refused", 1).await;
    let error = d.get("/v1/config").await.unwrap()["last_error"]["error"].clone();
    assert!(
        error
            .as_str()
            .unwrap()
            .contains("scalewise.toml:43:16: notifications[0]: bearer_token: cannot read secret"),
        "{error}"
    );
    let web = d.get("/v1/scalers/web").await.unwrap();
    assert_eq!(web["min"], 7, "the running config stays: {web}");
    d.stop().await.unwrap();
    assert_eq!(first.bodies().len(), 1);
    assert_eq!(second.bodies().len(), 1);
}

/// A reload that lengthens a stabilisation window: the envelope had kept
/// only what the old window needed, and remembers the new one's worth from
/// the journal, as a restart would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_longer_window_by_reload_holds_what_the_journal_remembers() {
    longer_window_by_reload("").await;
}

/// The same beside a rate-limit period longer than both windows: the
/// history the envelope needed as a whole did not grow, but the
/// recommendations it kept (as far back as the old window) did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_longer_window_beside_a_longer_period_still_reads_the_journal() {
    longer_window_by_reload("limits = [{ percent = 100, period = \"30m\" }]\n").await;
}

async fn longer_window_by_reload(down: &str) {
    let config = |scale_to: u32, min: u32, window: &str| {
        let extra = format!(
            "params = {{ scale_to = {scale_to} }}\n\n[scalers.behavior.scale_down]\n\
             stabilization_window = \"{window}\"\n{down}"
        );
        config_text(4.0, 50, "native", &extra).replace("min = 1\n", &format!("min = {min}\n"))
    };
    let mut d = counter_daemon(&config(6, 1, "0s"))
        .no_listener()
        .start()
        .await
        .unwrap();
    // At 6, wanting 6, for a few ticks (a 0s window keeps none of them).
    for _ in 0..3 {
        d.next_decision(10 * SECOND, |r| r.scaler == "web" && r.target.current == 6)
            .await
            .unwrap();
    }
    // Wanting 3, held at 6 by min: the envelope keeps only the newest 3.
    rewrite_config(&d, &config(3, 6, "0s"));
    wait_for_reloads(&d, "applied", 1).await;
    for _ in 0..2 {
        let record = d
            .next_decision(10 * SECOND, |r| r.scaler == "web" && r.target.min == 6)
            .await
            .unwrap();
        assert_eq!(record.desired, 6, "{record:#?}");
    }
    // min back to 1 under a 10m window: the journal's last minutes wanted
    // 6, so the scale-down waits (without them it would go to 3 at once).
    rewrite_config(&d, &config(3, 1, "10m"));
    wait_for_reloads(&d, "applied", 2).await;
    for _ in 0..4 {
        let record = d
            .next_decision(10 * SECOND, |r| r.scaler == "web" && r.target.min == 1)
            .await
            .unwrap();
        assert_eq!(record.desired, 6, "{record:#?}");
        assert!(
            record.envelope.iter().any(|s| s.rule == "stabilization"),
            "{record:#?}"
        );
    }
    d.stop().await.unwrap();
}

/// A reload lengthening a `target` metric's window reads the journal's
/// older observations back, as a restart does: the next context has the
/// whole new window, not only what the shorter one kept (a rule over it
/// would hold for a whole window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_longer_target_window_by_reload_reads_the_journal_back() {
    let config = |window: &str, max: u32| {
        let extra = format!(
            "\n[scalers.metrics.ready]\nsource = \"target\"\nquery = \"ready\"\nwindow = \"{window}\"\n"
        );
        config_text(4.0, 50, "native", &extra).replace("max = 10\n", &format!("max = {max}\n"))
    };
    let mut d = counter_daemon(&config("2s", 10))
        .no_listener()
        .start()
        .await
        .unwrap();
    // Fifteen ticks: 15 s of the daemon's time in the journal.
    for _ in 0..15 {
        d.next_decision(10 * SECOND, |r| r.scaler == "web")
            .await
            .unwrap();
    }
    let points = |r: &TickRecord| {
        let metrics = &r.evaluations[0].context.metrics;
        metrics
            .iter()
            .find(|m| m.name == "ready")
            .unwrap()
            .points
            .len()
    };
    rewrite_config(&d, &config("10s", 9));
    wait_for_reloads(&d, "applied", 1).await;
    let record = d
        .next_decision(10 * SECOND, |r| r.scaler == "web" && r.target.max == 9)
        .await
        .unwrap();
    // One point a second over 10 s (without the read-back: the 3 or 4 the
    // 2s window kept, and this tick's).
    assert!(points(&record) >= 10, "{record:#?}");
    d.stop().await.unwrap();
}

/// `--listen` (here the harness's free port) overrides `[api] listen` for
/// the whole run: a reload compares the file with the running config after
/// applying it again, so an edit elsewhere is not taken for an `[api]`
/// change that needs a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_listen_override_and_asks_no_restart_for_it() {
    let mut d = counter_daemon(&config_text(4.0, 50, "native", ""))
        .start()
        .await
        .unwrap();
    let text = config_text(4.0, 50, "native", "").replace("max = 10", "max = 8");
    rewrite_config(&d, &text);
    wait_for_reloads(&d, "applied", 1).await;
    wait_for_scaler(&d, "web", "max 8", |web| web["max"] == 8).await;
    let status = d.get("/v1/config").await.unwrap();
    assert_eq!(
        status["restart_required"],
        serde_json::json!([]),
        "{status}"
    );
    // The file's own [api] listen changed: still nothing to restart for,
    // the override stands.
    let text = text.replace("[runtime]", "[api]\nlisten = \"127.0.0.1:9\"\n\n[runtime]");
    rewrite_config(&d, &text);
    wait_for_reloads(&d, "applied", 2).await;
    let status = d.get("/v1/config").await.unwrap();
    assert_eq!(
        status["restart_required"],
        serde_json::json!([]),
        "{status}"
    );
    d.stop().await.unwrap();
}

/// Two scalers on one `[sources]` query tick together and share one fetch
/// per tick. A reload that changes one of them (not the source) builds it
/// anew on the source instance the other still uses, so they go on sharing;
/// rebuilding the unchanged source too would leave each its own and double
/// the requests to Prometheus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_an_unchanged_source_shared() {
    use scalewise_tests::stub_http::{Canned, RecordingServer};
    let now_s = scalewise::clock::wall_clock_ms() as f64 / 1000.0;
    let prometheus = RecordingServer::start(Canned::prometheus_sample(now_s, 5.0))
        .await
        .unwrap();
    let url = prometheus.url();
    let b = |b_max: u32| {
        format!(
            "\n{}",
            scaler_on("b", "api", "prom").replace("max = 10", &format!("max = {b_max}"))
        )
    };
    let text = |b_max: u32| prometheus_config(&url, "prom", &b(b_max));
    // Requests for the scalers' query per second over `seconds`.
    let rate = |seconds: u64| {
        let prometheus = &prometheus;
        async move {
            let count = || {
                prometheus
                    .uris()
                    .iter()
                    .filter(|u| u.contains("sum%28load%29"))
                    .count()
            };
            let before = count();
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            (count() - before) as f64 / seconds as f64
        }
    };
    let mut d = counter_daemon(&text(10)).start().await.unwrap();
    d.next_decision(5 * SECOND, |r| r.scaler == "b")
        .await
        .unwrap();
    let shared = rate(5).await;
    assert!((0.5..1.5).contains(&shared), "{shared} a second before");
    rewrite_config(&d, &text(9));
    wait_for_reloads(&d, "applied", 1).await;
    d.next_decision(5 * SECOND, |r| r.scaler == "b" && r.target.max == 9)
        .await
        .unwrap();
    let after = rate(5).await;
    assert!(
        (0.5..1.5).contains(&after),
        "{after} a second after the reload"
    );
    d.stop().await.unwrap();
}

/// A source renamed by a reload takes its series in `/metrics` along (they
/// stayed, frozen, until a restart, one more set at each rename).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_source_leaves_the_metrics() {
    let now_s = scalewise::clock::wall_clock_ms() as f64 / 1000.0;
    let prometheus = RecordingServer::start(Canned::prometheus_sample(now_s, 5.0))
        .await
        .unwrap();
    let url = prometheus.url();
    let text = |source: &str| prometheus_config(&url, source, "");
    let mut d = counter_daemon(&text("prom")).start().await.unwrap();
    d.next_decision(5 * SECOND, |r| r.scaler == "a")
        .await
        .unwrap();
    let exposed = d.telemetry().encode();
    assert!(exposed.contains("source=\"prom\""), "{exposed}");
    rewrite_config(&d, &text("prom2"));
    wait_for_reloads(&d, "applied", 1).await;
    // Two ticks: the second is surely of the new config.
    for _ in 0..2 {
        d.next_decision(5 * SECOND, |r| r.scaler == "a")
            .await
            .unwrap();
    }
    let exposed = d.telemetry().encode();
    assert!(exposed.contains("source=\"prom2\""), "{exposed}");
    assert!(!exposed.contains("source=\"prom\""), "{exposed}");
    d.stop().await.unwrap();
}

/// A scaler a reload adds has its policies tried once on an idle target,
/// as those the daemon starts with: a time zone that does not exist is
/// said in the log when the reload applies (its ticks would all fail and
/// hold it), and not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaler_added_by_reload_has_its_policies_tried() {
    use scalewise_tests::daemon_process::{CONFIG_FILE, DaemonProcess};

    let dir = tempfile::tempdir().unwrap();
    scalewise_tests::running::install_policies(&dir.path().join("policies")).unwrap();
    let scaler = |name: &str, zone: &str| {
        format!(
            r#"
[[scalers]]
name = "{name}"
interval = "1s"
min = 1
max = 10
target = {{ kind = "simulator", service = "{name}" }}
policies = [{{ module = "schedule", params = {{ windows = "daily 09:00-17:00 5", timezone = "{zone}" }} }}]
"#
        )
    };
    let config = |scalers: &str| {
        format!(
            r#"policy_dir = "policies"

[watch]
debounce = "50ms"
mode = "poll"
poll_interval = "100ms"

[journal]
path = "journal.db"

[simulations.web]
capacity_per_replica = 100.0
initial_replicas = 3
load = {{ base = 200.0 }}

[simulations.api]
capacity_per_replica = 100.0
initial_replicas = 3
load = {{ base = 200.0 }}
{scalers}"#
        )
    };
    let daemon = DaemonProcess::start(
        env!("CARGO_BIN_EXE_scalewise-cli"),
        dir.path(),
        &config(&scaler("web", "Europe/Berlin")),
        |_| {},
    )
    .unwrap();
    let logged = |what: &'static str| {
        let daemon = &daemon;
        async move {
            scalewise_tests::wait_until(what, Duration::from_secs(60), || async {
                match daemon.log().contains(what) {
                    true => Ok(()),
                    false => Err(daemon.log()),
                }
            })
            .await
            .unwrap();
        }
    };
    logged("Scalewise is running.").await;
    assert!(!daemon.log().contains("first trial"), "{}", daemon.log());
    let added = scaler("web", "Europe/Berlin") + &scaler("api", "Europe/Berlinn");
    std::fs::write(dir.path().join(CONFIG_FILE), config(&added)).unwrap();
    logged("Applied the reloaded config.").await;
    let log = daemon.log();
    daemon.stop().unwrap();
    let warning = log
        .lines()
        .find(|l| l.contains("A policy failed its first trial"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(warning.contains("scalers[1]"), "{warning}");
    assert!(warning.contains("Europe/Berlinn"), "{warning}");
}

/// A config whose scaler `a` (on the simulated `web`) reads `sum(load)`
/// from the Prometheus source `source` at `url`; `more` is appended (a
/// second scaler, on the simulated `api`).
fn prometheus_config(url: &str, source: &str, more: &str) -> String {
    format!(
        r#"policy_dir = "policies"

[watch]
debounce = "50ms"
mode = "poll"
poll_interval = "100ms"

[journal]
path = "journal.db"

[sources.{source}]
kind = "prometheus"
url = "{url}"

[simulations.web]
capacity_per_replica = 100.0
initial_replicas = 3
load = {{ base = 200.0 }}

[simulations.api]
capacity_per_replica = 100.0
initial_replicas = 3
load = {{ base = 200.0 }}

{}{more}"#,
        scaler_on("a", "web", source)
    )
}

/// A scaler `name` of the simulated `service` with the counter module,
/// reading `sum(load)` from `source`.
fn scaler_on(name: &str, service: &str, source: &str) -> String {
    format!(
        r#"[[scalers]]
name = "{name}"
interval = "1s"
min = 1
max = 10
target = {{ kind = "simulator", service = "{service}" }}
metrics.load = {{ source = "{source}", query = "sum(load)" }}
policies = [{{ module = "counter" }}]
"#
    )
}
