//! `scalewise replay` on a journal the real daemon wrote: the same module
//! and parameters answer the same everywhere, other parameters are shown
//! where and which way they would have decided differently, and mistakes
//! (a policy name the journal does not have, parameters the module refuses)
//! are errors that say so.

use std::path::{Path, PathBuf};
use std::time::Duration;

use scalewise_tests::running::RunningDaemon;
use scalewise_tests::{artifacts, cli};
use serde_json::Value;
use tokio::sync::OnceCell;

/// Simulated time runs 20× real time: a tick every 50 ms.
const CONFIG: &str = r#"policy_dir = "policies"

[clock]
speed = 20.0

[journal]
path = "journal.db"

[simulations.web]
capacity_per_replica = 100.0
initial_replicas = 2

[simulations.web.load]
base = 300.0

[[scalers]]
name = "web"
interval = "1s"
min = 1
max = 10
target = { kind = "simulator", service = "web" }

[scalers.metrics.cpu]
source = "simulator"
query = "cpu"

[[scalers.policies]]
module = "target-tracking"
params = { metric = "cpu", target = 60.0 }
"#;

/// The bundled module as an operator has it: `target-tracking.wasm`, the
/// name the journal records.
fn module() -> String {
    static MODULE: std::sync::OnceLock<(tempfile::TempDir, String)> = std::sync::OnceLock::new();
    let (_, path) = MODULE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("target-tracking.wasm");
        std::fs::copy(artifacts::TARGET_TRACKING, &path).unwrap();
        (dir, path.to_str().unwrap().to_owned())
    });
    path.clone()
}

/// `scalewise replay` of the bundled module on `journal` with `extra`
/// arguments, run off the async runtime.
async fn replay(journal: impl AsRef<Path>, extra: &[&str]) -> (u8, String, String) {
    let mut args = vec![
        "replay".to_owned(),
        module(),
        "--journal".into(),
        journal.as_ref().to_str().unwrap().into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&args)
    })
    .await
    .unwrap()
}

/// A journal of 20 ticks of the daemon on `config`, kept in a folder of
/// its own.
async fn write_journal(config: &str) -> (tempfile::TempDir, PathBuf) {
    let mut daemon = RunningDaemon::with(config).start().await.unwrap();
    daemon
        .wait_for_record("web", "20 ticks", Duration::from_secs(60), |r| {
            r.id.unwrap_or_default() >= 20
        })
        .await
        .unwrap();
    daemon.stop().await.unwrap();
    let keep = tempfile::tempdir().unwrap();
    let path = keep.path().join("journal.db");
    std::fs::copy(daemon.dir().join("journal.db"), &path).unwrap();
    for suffix in ["-wal", "-shm"] {
        let from = daemon.dir().join(format!("journal.db{suffix}"));
        if from.exists() {
            std::fs::copy(&from, keep.path().join(format!("journal.db{suffix}"))).unwrap();
        }
    }
    (keep, path)
}

/// A journal of 20 ticks of the daemon scaling `web` out and holding,
/// written once for the file's tests.
async fn journal() -> &'static Path {
    static JOURNAL: OnceCell<(tempfile::TempDir, PathBuf)> = OnceCell::const_new();
    let (_, path) = JOURNAL.get_or_init(|| write_journal(CONFIG)).await;
    path
}

/// A scaler that runs the module twice (two targets): both are replayed,
/// each with its own recorded context, and told apart; `eval --record`
/// asks which one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_a_scaler_runs_twice_is_replayed_twice() {
    let config = format!(
        "{CONFIG}\n[[scalers.policies]]\nmodule = \"target-tracking\"\nparams = {{ metric = \"cpu\", target = 95.0 }}\n"
    );
    let (_keep, journal) = write_journal(&config).await;
    let (code, out, err) = replay(&journal, &["--all", "--json"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |index: u64| rows.iter().filter(|r| r["policy"] == index).count();
    assert!(
        of(0) >= 20 && of(0) == of(1),
        "both policies, every tick: {rows:?}"
    );
    assert!(
        err.contains(&format!("replayed {} evaluations", rows.len())),
        "{err}"
    );

    let journal = journal.to_str().unwrap().to_owned();
    let (refused, chosen) = tokio::task::spawn_blocking(move || {
        let module = module();
        let args = ["eval", &module, "--journal", &journal, "--record", "5"];
        let mut with_index = args.to_vec();
        with_index.extend(["--index", "1"]);
        (cli(&args), cli(&with_index))
    })
    .await
    .unwrap();
    assert_eq!(refused.0, 1);
    assert!(refused.2.contains("give --index N"), "{}", refused.2);
    assert_eq!(chosen.0, 0, "{}", chosen.2);
    assert!(
        chosen.2.contains("replay: the answer matches the record"),
        "the second policy's own evaluation: {}",
        chosen.2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_module_and_parameters_answer_the_same_everywhere() {
    let journal = journal().await.to_str().unwrap().to_owned();
    let (code, out, err) = replay(&journal, &[]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out, "", "only differences are printed");
    assert!(err.contains("evaluations of \"target-tracking\""), "{err}");
    assert!(err.contains(" same"), "{err}");
    assert!(!err.contains("higher") && !err.contains("lower"), "{err}");
}

/// A range that ends before it starts is an error naming both ends; a
/// limit the range exceeds is warned about (older ticks not replayed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backwards_range_is_refused_and_a_short_limit_warned_about() {
    let journal = journal().await;
    let (code, _, err) = replay(journal, &["--since", "2000", "--until", "1000"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--since 1970-01-01T00:00:02.000Z is not before --until"),
        "{err}"
    );
    let (code, _, err) = replay(journal, &["--limit", "3"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: only the newest 3 ticks"), "{err}");
    assert!(err.contains("replayed 3 evaluations"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_parameters_show_where_and_which_way_they_decide_differently() {
    let journal = journal().await.to_str().unwrap().to_owned();
    let (code, out, err) = replay(&journal, &["--params", "target=30", "--json"]).await;
    assert_eq!(code, 1, "some answers differ: {out}\n{err}");
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!rows.is_empty());
    // Half the target: every difference asks for more replicas.
    for row in &rows {
        assert_eq!(row["verdict"], "higher", "{row}");
        assert_eq!(row["scaler"], "web");
        let then = &row["recorded"]["decision"];
        let now = &row["replayed"]["decision"];
        assert!(
            now["reason"].as_str().unwrap().contains("target 30.0"),
            "{now}"
        );
        assert!(
            then["reason"].as_str().unwrap().contains("target 60.0"),
            "{then}"
        );
    }
    assert!(err.contains("higher"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_named_otherwise_needs_the_recorded_policy_name() {
    let journal = journal().await.to_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let renamed = dir.path().join("tt-v2.wasm");
    std::fs::copy(artifacts::TARGET_TRACKING, &renamed).unwrap();
    let renamed = renamed.to_str().unwrap().to_owned();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let without = cli(&["replay", &renamed, "--journal", &journal]);
        let with = cli(&[
            "replay",
            &renamed,
            "--journal",
            &journal,
            "--policy",
            "target-tracking",
            "--all",
        ]);
        (without, with)
    })
    .await
    .map(|(without, with)| {
        assert_eq!(without.0, 2, "an error: {without:?}");
        assert!(
            without
                .2
                .contains("no recorded evaluation of policy \"tt-v2\""),
            "{}",
            without.2
        );
        with
    })
    .unwrap();
    assert_eq!(code, 0, "{out}\n{err}");
    // --all prints every evaluation.
    assert!(
        out.lines().filter(|l| l.starts_with('#')).count() >= 20,
        "{out}"
    );
    assert!(out.contains(" same (current "), "{out}");
}

/// Another module replays with the parameters the daemon would hand it:
/// those it declares (target-tracking's, recorded with its own defaults,
/// are not), with its defaults for the rest. Here the sandbox probe, which
/// shows what it was given in its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_module_gets_the_parameters_it_declares_with_its_defaults() {
    let journal = journal().await.to_str().unwrap().to_owned();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        cli(&[
            "replay",
            artifacts::SANDBOX_PROBE,
            "--journal",
            &journal,
            "--policy",
            "target-tracking",
            "--json",
            "--all",
            "--limit",
            "3",
        ])
    })
    .await
    .unwrap();
    // 1 where the probe holds and target tracking scaled.
    assert!(code <= 1, "{out}\n{err}");
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3, "{out}\n{err}");
    for row in rows {
        assert_eq!(
            row["replayed"]["decision"]["reason"],
            "probed the sandbox (parameters {\"label\":\"probe\"})",
            "{row}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_the_module_refuses_are_an_error() {
    let journal = journal().await.to_str().unwrap().to_owned();
    let (code, out, err) = replay(&journal, &["--params", "target=high"]).await;
    assert_eq!(code, 2, "an error, as a mistyped flag: {out}\n{err}");
    assert!(
        err.contains("--params: target: expected a number, got text \"high\""),
        "{err}"
    );
    // A misspelt name too, not left out as a recorded one the module does
    // not declare is.
    let (code, out, err) = replay(&journal, &["--params", "tagret=30"]).await;
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        err.contains("--params: unknown parameter \"tagret\""),
        "{err}"
    );
}

/// A journal written under `[runtime] fuel = 20000`: enough for describe()
/// (about 14,000), too little for any evaluation (about 34,000), so every
/// call ran out of fuel and the scaler held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_evaluation_replays_under_the_limits_it_ran_under() {
    let config = CONFIG.replace("[journal]", "[runtime]\nfuel = 20000\n\n[journal]");
    let (_keep, journal) = write_journal(&config).await;
    // Under the recorded fuel the module runs out again: the same answer.
    let (code, out, err) = replay(&journal, &[]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains(" both-fail"), "{err}");
    // A flag overrides the recorded limit: without fuel metering it decides.
    let (code, out, err) = replay(&journal, &["--fuel", "0"]).await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains(" decides-now"), "{err}");
    assert!(out.contains("recorded: failed (out_of_fuel)"), "{out}");
}

/// A module whose memory starts above the default limit (80 MiB), run under
/// `[runtime] max_memory = "128MiB"`: the replay loads it under the
/// recorded limit from the start (it failed, exit 2, loading it under the
/// defaults first); `eval --record` likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_that_needs_the_recorded_limits_to_load_is_replayed() {
    let config = CONFIG
        .replace(
            "[journal]",
            "[runtime]\nmax_memory = \"128MiB\"\n\n[journal]",
        )
        .replace(
            "module = \"target-tracking\"\nparams = { metric = \"cpu\", target = 60.0 }",
            "module = \"big-memory\"",
        );
    let mut daemon = RunningDaemon::with(&config)
        .policies(|dir| {
            std::fs::copy(artifacts::BIG_MEMORY, dir.join("big-memory.wasm")).unwrap();
        })
        .start()
        .await
        .unwrap();
    daemon
        .wait_for_record("web", "3 ticks", Duration::from_secs(60), |r| {
            r.id.unwrap_or_default() >= 3
        })
        .await
        .unwrap();
    daemon.stop().await.unwrap();
    let journal = daemon.dir().join("journal.db");
    let module = daemon.policy_dir().join("big-memory.wasm");
    let (module, journal) = (module.to_str().unwrap(), journal.to_str().unwrap());
    let (code, out, err) =
        tokio::task::block_in_place(|| cli(&["replay", module, "--journal", journal]));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains(" same"), "{err}");
    let (code, out, err) = tokio::task::block_in_place(|| {
        cli(&["eval", module, "--record", "1", "--journal", journal])
    });
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("\"outcome_matches\": true"), "{out}");
}

/// Evaluations no module ran (its file failed to load then) are skipped and
/// counted apart, not reported as the module deciding now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluations_no_module_ran_are_skipped() {
    let mut daemon = RunningDaemon::with(CONFIG)
        .policies(|dir| std::fs::write(dir.join("target-tracking.wasm"), b"\0asm not yet").unwrap())
        .start()
        .await
        .unwrap();
    daemon
        .wait_for_record("web", "3 ticks", Duration::from_secs(60), |r| {
            r.id.unwrap_or_default() >= 3
        })
        .await
        .unwrap();
    daemon.stop().await.unwrap();
    let (code, out, err) = replay(daemon.dir().join("journal.db"), &[]).await;
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains("ran no module"), "{err}");
}
