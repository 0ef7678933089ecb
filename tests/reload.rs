//! Hot reload of policy modules against the real file system, the real
//! watcher (inotify, or notify's polling) and real compiled modules: the
//! registry and its watcher alone, and a whole daemon whose scalers keep
//! ticking while their module changes under them.

use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scalewise::config::{WatchConfig, WatchMode};
use scalewise::journal::{EvaluationOutcome, TickRecord};
use scalewise::registry::{Registry, ReloadReport};
use scalewise::watch::{ActiveMode, FolderWatch};
use scalewise_tests::reload::{
    config_text, counter_daemon, counter_reason, rewrite_config, wait_for_reloads,
    wait_for_telemetry, wait_until, wait_until_async,
};
use scalewise_tests::running::RunningDaemon;
use scalewise_tests::{artifacts, context, runtime};
use sha2::{Digest as _, Sha256};

const SECOND: Duration = Duration::from_secs(1);

fn digest_of(path: &str) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn watch_config(debounce_ms: u64, mode: WatchMode) -> WatchConfig {
    WatchConfig {
        enabled: true,
        debounce: Duration::from_millis(debounce_ms),
        mode,
        poll_interval: Duration::from_millis(100),
    }
}

/// A registry over a temporary folder, watched, with every reload report.
struct Watching {
    dir: tempfile::TempDir,
    registry: Arc<Registry>,
    reports: Arc<Mutex<Vec<ReloadReport>>>,
    watch: FolderWatch,
}

impl Watching {
    fn start(dir: tempfile::TempDir, config: &WatchConfig) -> Watching {
        Self::start_in(dir, None, config)
    }

    fn start_in(dir: tempfile::TempDir, sub: Option<&str>, config: &WatchConfig) -> Watching {
        let folder = match sub {
            Some(sub) => dir.path().join(sub),
            None => dir.path().to_path_buf(),
        };
        let registry = Arc::new(Registry::load_dir(runtime(), &folder).unwrap());
        let reports = Arc::new(Mutex::new(Vec::new()));
        let sink = reports.clone();
        let watch = registry
            .watch(config, move |report: &ReloadReport| {
                sink.lock().unwrap().push(report.clone())
            })
            .unwrap();
        Watching {
            dir,
            registry,
            reports,
            watch,
        }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn digest(&self, module: &str) -> Option<String> {
        self.registry.get(module).map(|m| m.digest().to_owned())
    }

    /// Waits until `module` serves `digest` and the reload that loaded it
    /// has been reported (the report comes after the swap).
    fn wait_for_digest(&self, module: &str, digest: &str, timeout: Duration) {
        wait_until(timeout, &format!("{module} to be {digest}"), || {
            self.digest(module).as_deref() == Some(digest)
                && self
                    .loads()
                    .iter()
                    .any(|(name, loaded)| name == module && loaded == digest)
        });
    }

    /// Every (module, kind) load failure reported so far.
    fn failures(&self) -> Vec<(String, &'static str)> {
        self.reports
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.failed.iter().map(|(n, f)| (n.clone(), f.kind)))
            .collect()
    }

    /// Every (module, digest) load reported so far.
    fn loads(&self) -> Vec<(String, String)> {
        self.reports
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.loaded.iter().map(|l| (l.name.clone(), l.digest.clone())))
            .collect()
    }
}

fn folder_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, from) in files {
        std::fs::copy(from, dir.path().join(name)).unwrap();
    }
    dir
}

#[test]
fn a_module_written_in_chunks_with_long_pauses_is_loaded_only_when_complete() {
    let w = Watching::start(folder_with(&[]), &watch_config(100, WatchMode::Native));
    assert_eq!(w.watch.mode(), ActiveMode::Native);
    let bytes = std::fs::read(artifacts::COUNTER_V2).unwrap();
    let full = hex::encode(Sha256::digest(&bytes));
    // One writer keeps the file open and pauses far longer than the debounce
    // window between chunks: only its close says the file is complete.
    let mut file = std::fs::File::create(w.path("counter.wasm")).unwrap();
    for chunk in bytes.chunks(bytes.len().div_ceil(4)) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        std::thread::sleep(Duration::from_millis(400));
        assert!(w.digest("counter").is_none(), "loaded while being written");
    }
    drop(file);
    w.wait_for_digest("counter", &full, 30 * SECOND);
    assert_eq!(w.failures(), [], "no half-written file was tried");
    assert_eq!(w.loads(), [("counter".to_string(), full)]);
}

/// Opens `counter.wasm` for writing as `open` does (creating or
/// truncating it), then stalls past the debounce window before writing
/// `artifact`, as a descheduled writer would: the empty file must not be
/// tried, and the complete one loads.
fn slow_writer_of_counter(w: &Watching, artifact: &str, what: &str) {
    let bytes = std::fs::read(artifact).unwrap();
    let digest = hex::encode(Sha256::digest(&bytes));
    let mut file = std::fs::File::create(w.path("counter.wasm")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(w.failures(), [], "the {what} file was tried");
    file.write_all(&bytes).unwrap();
    drop(file);
    w.wait_for_digest("counter", &digest, 30 * SECOND);
    assert_eq!(w.failures(), []);
}

#[test]
fn a_new_file_is_not_loaded_empty_while_its_writer_is_slow_to_write() {
    let w = Watching::start(folder_with(&[]), &watch_config(50, WatchMode::Native));
    slow_writer_of_counter(&w, artifacts::COUNTER, "empty");
}

#[test]
fn a_hard_link_into_the_folder_is_not_waited_for_as_a_writer() {
    // `ln` makes a second name for a complete file: no writer, no close.
    // It loads after the debounce window, not after the writer wait (ten
    // windows): with a 1 s window, well before 10 s.
    let w = Watching::start(folder_with(&[]), &watch_config(1_000, WatchMode::Native));
    let store = tempfile::tempdir().unwrap();
    let kept = store.path().join("counter.wasm");
    std::fs::copy(artifacts::COUNTER, &kept).unwrap();
    let linked = Instant::now();
    std::fs::hard_link(&kept, w.path("counter.wasm")).unwrap();
    w.wait_for_digest("counter", &digest_of(artifacts::COUNTER), 30 * SECOND);
    assert!(
        linked.elapsed() < Duration::from_secs(6),
        "loaded after {:?}",
        linked.elapsed()
    );
    assert_eq!(w.failures(), []);
}

#[test]
fn a_module_truncated_for_a_rewrite_is_not_loaded_before_its_writer_writes() {
    // The rewrite of an existing file (`>`, open with O_TRUNC).
    let w = Watching::start(
        folder_with(&[("counter.wasm", artifacts::COUNTER)]),
        &watch_config(50, WatchMode::Native),
    );
    slow_writer_of_counter(&w, artifacts::COUNTER_V2, "truncated");
}

#[test]
fn a_module_appended_in_chunks_with_short_pauses_is_loaded_only_when_complete() {
    let w = Watching::start(folder_with(&[]), &watch_config(300, WatchMode::Native));
    let bytes = std::fs::read(artifacts::COUNTER).unwrap();
    let full = hex::encode(Sha256::digest(&bytes));
    // Several writers one after the other (`cat part >> file`): each closes
    // the file, but none pauses as long as the debounce window.
    for chunk in bytes.chunks(bytes.len().div_ceil(5)) {
        let mut file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(w.path("counter.wasm"))
            .unwrap();
        file.write_all(chunk).unwrap();
        drop(file);
        std::thread::sleep(Duration::from_millis(60));
    }
    w.wait_for_digest("counter", &full, 30 * SECOND);
    assert_eq!(w.failures(), [], "no partial file was tried");
    assert_eq!(w.loads(), [("counter".to_string(), full)]);
}

#[test]
fn a_replaced_module_serves_new_ticks_and_ticks_in_progress_finish_on_the_old() {
    let w = Watching::start(
        folder_with(&[("counter.wasm", artifacts::COUNTER)]),
        &watch_config(50, WatchMode::Native),
    );
    let v1 = digest_of(artifacts::COUNTER);
    let v2 = digest_of(artifacts::COUNTER_V2);
    assert_eq!(w.digest("counter").as_deref(), Some(v1.as_str()));
    let generation = w.registry.snapshot().generation;
    // A tick takes its module from the snapshot before evaluating.
    let in_progress = w.registry.get("counter").unwrap();
    std::fs::copy(artifacts::COUNTER_V2, w.path("counter.wasm")).unwrap();
    w.wait_for_digest("counter", &v2, 30 * SECOND);
    assert_eq!(w.registry.snapshot().generation, generation + 1);

    let ctx = context(1_700_000_000_000, serde_json::json!({}), 3);
    let old = in_progress.evaluate(&ctx).unwrap();
    assert_eq!(counter_reason(&old.reason), Some((1, 1)), "{}", old.reason);
    assert_eq!(in_progress.digest(), v1);
    let new = w.registry.get("counter").unwrap().evaluate(&ctx).unwrap();
    assert_eq!(counter_reason(&new.reason), Some((2, 1)), "{}", new.reason);
}

#[test]
fn corrupt_and_wrong_version_modules_never_replace_the_serving_one() {
    let w = Watching::start(
        folder_with(&[("counter.wasm", artifacts::COUNTER)]),
        &watch_config(50, WatchMode::Native),
    );
    let v1 = digest_of(artifacts::COUNTER);
    /// What is wrong, how to write it, the failure kind expected.
    type Case = (&'static str, fn(&Path), &'static str);
    let cases: [Case; 4] = [
        (
            "not Wasm",
            |p| std::fs::write(p, b"#!/bin/sh\necho not a module\n").unwrap(),
            "not_a_component",
        ),
        (
            "truncated",
            |p| {
                let bytes = std::fs::read(artifacts::COUNTER_V2).unwrap();
                std::fs::write(p, &bytes[..bytes.len() / 2]).unwrap()
            },
            "compile",
        ),
        (
            "wrong WIT version",
            |p| {
                std::fs::copy(artifacts::WRONG_VERSION, p).unwrap();
            },
            "wrong_wit_version",
        ),
        (
            "describe() traps",
            |p| {
                std::fs::copy(artifacts::DESCRIBE_PANICS, p).unwrap();
            },
            "describe_failed",
        ),
    ];
    for (i, (name, write, kind)) in cases.into_iter().enumerate() {
        write(&w.path("counter.wasm"));
        wait_until(30 * SECOND, name, || w.failures().len() == i + 1);
        assert_eq!(
            w.failures()[i],
            ("counter".to_string(), kind),
            "{name}: {:?}",
            w.registry
                .snapshot()
                .failures
                .get("counter")
                .map(|f| &f.error)
        );
        let snapshot = w.registry.snapshot();
        assert_eq!(
            snapshot.modules["counter"].digest(),
            v1,
            "{name}: v1 serves"
        );
        let failure = &snapshot.failures["counter"];
        assert_eq!(failure.kind, kind, "{name}: {}", failure.error);
        assert_eq!(failure.path, w.path("counter.wasm"));
    }
    // A good version clears the failure.
    std::fs::copy(artifacts::COUNTER_V2, w.path("counter.wasm")).unwrap();
    w.wait_for_digest("counter", &digest_of(artifacts::COUNTER_V2), 30 * SECOND);
    assert!(w.registry.snapshot().failures.is_empty());
}

#[test]
fn a_configmap_style_symlink_swap_is_seen() {
    // The layout kubelet makes: the visible files are symlinks through
    // `..data`, itself a symlink to a timestamped folder.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let first = d.join("..2026_11_23_10_00_00.000000001");
    std::fs::create_dir(&first).unwrap();
    std::fs::copy(artifacts::COUNTER, first.join("counter.wasm")).unwrap();
    std::os::unix::fs::symlink("..2026_11_23_10_00_00.000000001", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/counter.wasm", d.join("counter.wasm")).unwrap();
    let w = Watching::start(dir, &watch_config(50, WatchMode::Native));
    let d = w.dir.path();
    assert_eq!(w.digest("counter"), Some(digest_of(artifacts::COUNTER)));

    // An update, as kubelet's atomic writer does it: a new folder, a new
    // `..data_tmp` link renamed over `..data`, the old folder removed, and
    // links for keys that are new.
    let swap = |stamp: &str, files: &[(&str, &str)], old: &str| {
        let next = d.join(stamp);
        std::fs::create_dir(&next).unwrap();
        for (name, from) in files {
            std::fs::copy(from, next.join(name)).unwrap();
        }
        std::os::unix::fs::symlink(stamp, d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        std::fs::remove_dir_all(d.join(old)).unwrap();
    };
    swap(
        "..2026_11_23_10_05_00.000000002",
        &[
            ("counter.wasm", artifacts::COUNTER_V2),
            ("faults.wasm", artifacts::FAULTS),
        ],
        "..2026_11_23_10_00_00.000000001",
    );
    std::os::unix::fs::symlink("..data/faults.wasm", d.join("faults.wasm")).unwrap();
    w.wait_for_digest("counter", &digest_of(artifacts::COUNTER_V2), 30 * SECOND);
    w.wait_for_digest("faults", &digest_of(artifacts::FAULTS), 30 * SECOND);

    // A key dropped from the ConfigMap: its link goes, the module with it.
    swap(
        "..2026_11_23_10_10_00.000000003",
        &[("faults.wasm", artifacts::FAULTS)],
        "..2026_11_23_10_05_00.000000002",
    );
    std::fs::remove_file(d.join("counter.wasm")).unwrap();
    wait_until(30 * SECOND, "counter to be removed", || {
        w.registry.snapshot().removed.contains_key("counter")
    });
    assert!(w.registry.get("counter").is_none());
    assert!(w.registry.get("faults").is_some());
    assert_eq!(w.failures(), []);
}

#[test]
fn the_policy_folder_replaced_by_another_is_watched_again() {
    // The policy folder is a symlink that is re-pointed at another folder
    // (the watched inode goes away).
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (sub, module) in [("a", artifacts::COUNTER), ("b", artifacts::COUNTER_V2)] {
        std::fs::create_dir(d.join(sub)).unwrap();
        std::fs::copy(module, d.join(sub).join("counter.wasm")).unwrap();
    }
    std::os::unix::fs::symlink("a", d.join("policies")).unwrap();
    // A debounce longer than `rm -rf` takes between the folder's last file
    // and the folder itself on a busy machine: files deleted from a folder
    // that stays are deleted modules.
    let w = Watching::start_in(
        dir,
        Some("policies"),
        &watch_config(1_000, WatchMode::Native),
    );
    let d = w.dir.path();
    assert_eq!(w.digest("counter"), Some(digest_of(artifacts::COUNTER)));
    std::os::unix::fs::symlink("b", d.join("policies.new")).unwrap();
    std::fs::rename(d.join("policies.new"), d.join("policies")).unwrap();
    w.wait_for_digest("counter", &digest_of(artifacts::COUNTER_V2), 30 * SECOND);
    // And changes in the new folder are seen.
    std::fs::copy(artifacts::FAULTS, d.join("b").join("faults.wasm")).unwrap();
    w.wait_for_digest("faults", &digest_of(artifacts::FAULTS), 30 * SECOND);

    // The folder deleted: its modules keep serving (a vanished folder
    // says nothing about them); recreated with other contents: those load.
    std::fs::remove_dir_all(d.join("b")).unwrap();
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(w.digest("counter"), Some(digest_of(artifacts::COUNTER_V2)));
    assert!(w.registry.get("faults").is_some());
    std::fs::create_dir(d.join("b")).unwrap();
    std::fs::copy(artifacts::COUNTER, d.join("b").join("counter.wasm")).unwrap();
    w.wait_for_digest("counter", &digest_of(artifacts::COUNTER), 30 * SECOND);
    wait_until(30 * SECOND, "faults to be removed", || {
        w.registry.get("faults").is_none()
    });
    assert_eq!(w.failures(), []);
}

#[test]
fn polling_sees_new_changed_and_deleted_modules() {
    let w = Watching::start(folder_with(&[]), &watch_config(50, WatchMode::Poll));
    assert_eq!(w.watch.mode(), ActiveMode::Poll);
    let v1 = digest_of(artifacts::COUNTER);
    let v2 = digest_of(artifacts::COUNTER_V2);
    std::fs::copy(artifacts::COUNTER, w.path("counter.wasm")).unwrap();
    w.wait_for_digest("counter", &v1, 30 * SECOND);
    // Two rewrites within the same second: notify's poller compares
    // mtimes in whole seconds, the registry's stamps do not.
    std::fs::copy(artifacts::COUNTER_V2, w.path("counter.wasm")).unwrap();
    w.wait_for_digest("counter", &v2, 30 * SECOND);
    std::fs::copy(artifacts::COUNTER, w.path("counter.wasm")).unwrap();
    w.wait_for_digest("counter", &v1, 30 * SECOND);
    std::fs::remove_file(w.path("counter.wasm")).unwrap();
    wait_until(30 * SECOND, "counter to be removed", || {
        w.registry.get("counter").is_none()
    });
    assert_eq!(w.failures(), []);
}

/// A daemon ticking every 250 ms of real time (1 s of host time at 4×).
async fn ticking(extra: &str) -> RunningDaemon {
    counter_daemon(&config_text(4.0, 50, "native", extra))
        .start()
        .await
        .unwrap()
}

/// A [`ticking`] daemon once `counter` v1 has decided a tick; and v1's digest.
async fn ticking_on_v1() -> (RunningDaemon, String) {
    let mut d = ticking("").await;
    let v1 = digest_of(artifacts::COUNTER);
    d.next_decision(5 * SECOND, |r| decided_by(r, &v1).is_some())
        .await
        .unwrap();
    (d, v1)
}

/// Writes `artifact` over the daemon's `counter.wasm`.
fn replace_counter(d: &RunningDaemon, artifact: &str) {
    std::fs::copy(artifact, d.policy_dir().join("counter.wasm")).unwrap();
}

fn decided_by<'a>(record: &'a TickRecord, digest: &str) -> Option<&'a str> {
    let evaluation = record.evaluations.first()?;
    match &evaluation.outcome {
        EvaluationOutcome::Decided { decision } if evaluation.digest.as_deref() == Some(digest) => {
            Some(&decision.reason)
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_module_while_scalers_tick_loses_no_decision() {
    let mut d = ticking("").await;
    let v1 = digest_of(artifacts::COUNTER);
    let v2 = digest_of(artifacts::COUNTER_V2);
    for _ in 0..4 {
        d.next_decision(5 * SECOND, |r| decided_by(r, &v1).is_some())
            .await
            .unwrap();
    }
    replace_counter(&d, artifacts::COUNTER_V2);
    let first_v2 = d
        .next_decision(30 * SECOND, |r| decided_by(r, &v2).is_some())
        .await
        .unwrap();
    for _ in 0..3 {
        d.next_decision(5 * SECOND, |r| decided_by(r, &v2).is_some())
            .await
            .unwrap();
    }
    d.stop().await.unwrap();
    let records = d.records("web").await.unwrap();

    // Every tick decided, first with v1 then with v2, and the count the
    // policy keeps in its state went on across the swap.
    let mut seen_v2 = false;
    let mut counts = Vec::new();
    for record in &records {
        let evaluation = &record.evaluations[0];
        let digest = evaluation
            .digest
            .as_deref()
            .expect("every tick names its digest");
        let EvaluationOutcome::Decided { decision } = &evaluation.outcome else {
            panic!("a tick without a decision: {:?}", evaluation.outcome);
        };
        let (version, count) = counter_reason(&decision.reason).unwrap();
        if digest == v2 {
            seen_v2 = true;
            assert_eq!(version, 2);
        } else {
            assert_eq!(digest, v1);
            assert!(!seen_v2, "v1 decided after v2 had");
            assert_eq!(version, 1);
        }
        counts.push(count);
    }
    assert!(seen_v2);
    let expected: Vec<u64> = (1..=counts.len() as u64).collect();
    assert_eq!(
        counts, expected,
        "one evaluation per tick, state carried over"
    );
    assert!(records.iter().any(|r| r.id == first_v2.id));
    // The scheduler kept going through the swap: no run of skipped ticks.
    // (The clock runs 4x: 4 s here is 1 s of real time, which a starved
    // machine may lose once without anything being wrong.)
    for pair in records.windows(2) {
        let gap = pair[1].time_ms - pair[0].time_ms;
        assert!(
            gap < 4_000,
            "a gap of {gap} ms between ticks (interval 1 s)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_module_is_reported_everywhere_and_the_old_one_keeps_deciding() {
    let (mut d, v1) = ticking_on_v1().await;
    replace_counter(&d, artifacts::WRONG_VERSION);
    let registry = d.registry().clone();
    wait_until_async(30 * SECOND, "the failure", || {
        registry.snapshot().failures.contains_key("counter")
    })
    .await;

    // The journal: the next tick notes the failure once, decided by v1.
    let noted = d
        .next_decision(5 * SECOND, |r| {
            r.evaluations
                .first()
                .is_some_and(|e| e.load_error.is_some())
        })
        .await
        .unwrap();
    let evaluation = &noted.evaluations[0];
    assert_eq!(evaluation.digest.as_deref(), Some(v1.as_str()));
    assert!(matches!(
        evaluation.outcome,
        EvaluationOutcome::Decided { .. }
    ));
    let note = evaluation.load_error.as_deref().unwrap();
    for part in [
        "a newer version of module \"counter\" failed to load",
        "(wrong_wit_version)",
        "0.2.0",
        &format!("still deciding with digest {v1}"),
    ] {
        assert!(note.contains(part), "{part:?} missing in {note}");
    }
    let next = d.next_decision(5 * SECOND, |_| true).await.unwrap();
    assert_eq!(next.evaluations[0].load_error, None, "noted once");
    assert!(decided_by(&next, &v1).is_some());

    // The API: the failure, and that the previous version serves.
    let policies = d.get("/v1/policies").await.unwrap();
    let failure = &policies["failures"][0];
    assert_eq!(failure["name"], "counter");
    assert_eq!(failure["kind"], "wrong_wit_version");
    assert_eq!(failure["serving_previous"], true);
    assert_eq!(failure["serving_digest"], v1.as_str());
    assert_eq!(policies["modules"][0]["last_error"], failure["error"]);
    let status = d.get("/v1/scalers/web").await.unwrap();
    let problems = status["problems"].to_string();
    assert!(
        problems.contains("a newer version failed to load"),
        "{problems}"
    );

    // The host's metrics.
    wait_for_telemetry(
        &d,
        "scalewise_module_load_errors_total{module=\"counter\",kind=\"wrong_wit_version\"} 1",
    )
    .await;
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_fails_on_a_live_context_does_not_replace_the_serving_one() {
    let (mut d, v1) = ticking_on_v1().await;
    // v2 replaces v1; absurd follows at once, before v2 has decided
    // anything: it is tried on what v1 decided (the contexts belong to the
    // module, not to a version). absurd loads, describes itself and accepts
    // the config (no parameters), but answers u32::MAX replicas.
    let v2 = digest_of(artifacts::COUNTER_V2);
    let registry = d.registry().clone();
    replace_counter(&d, artifacts::COUNTER_V2);
    wait_until_async(30 * SECOND, "v2 to load", || {
        registry.get("counter").is_some_and(|m| m.digest() == v2)
    })
    .await;
    replace_counter(&d, artifacts::ABSURD);
    wait_until_async(30 * SECOND, "the refusal", || {
        registry.snapshot().failures.contains_key("counter")
    })
    .await;
    let failure = registry.snapshot().failures["counter"].clone();
    assert_eq!(failure.kind, "fails_on_live_context");
    for part in [
        "this version fails (invalid_decision) on a context an earlier version decided",
        "scaler \"web\"",
    ] {
        assert!(
            failure.error.contains(part),
            "{part:?} missing in {}",
            failure.error
        );
    }
    let next = d
        .next_decision(5 * SECOND, |r| decided_by(r, &v2).is_some())
        .await
        .unwrap();
    assert!(decided_by(&next, &v2).is_some(), "{next:?}");
    wait_for_telemetry(
        &d,
        "scalewise_module_load_errors_total{module=\"counter\",kind=\"fails_on_live_context\"} 1",
    )
    .await;

    // Deleted and restored: the file comes back as absurd, still tried.
    std::fs::remove_file(d.policy_dir().join("counter.wasm")).unwrap();
    wait_until_async(30 * SECOND, "the removal", || {
        registry.get("counter").is_none()
    })
    .await;
    replace_counter(&d, artifacts::ABSURD);
    wait_until_async(30 * SECOND, "the second refusal", || {
        registry
            .snapshot()
            .failures
            .get("counter")
            .is_some_and(|f| f.kind == "fails_on_live_context" && f.at_ms > failure.at_ms)
    })
    .await;
    assert!(registry.get("counter").is_none());

    // A version that works loads as usual.
    replace_counter(&d, artifacts::COUNTER);
    d.next_decision(30 * SECOND, |r| decided_by(r, &v1).is_some())
        .await
        .unwrap();
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_version_stays_refused_after_a_restart() {
    let (mut d, _) = ticking_on_v1().await;
    replace_counter(&d, artifacts::ABSURD);
    let registry = d.registry().clone();
    wait_until_async(30 * SECOND, "the refusal", || {
        registry.snapshot().failures.contains_key("counter")
    })
    .await;
    d.stop().await.unwrap();

    // A restarted daemon has no contexts to try the file on; it does not
    // serve it untried: the scaler holds, saying why.
    let config = scalewise::config::Config::load(&d.config_path()).unwrap();
    let restarted = scalewise::daemon::Daemon::build(config, scalewise::clock::Clock::system())
        .await
        .unwrap();
    let snapshot = restarted.registry().snapshot();
    assert!(!snapshot.modules.contains_key("counter"));
    let failure = &snapshot.failures["counter"];
    assert_eq!(failure.kind, "fails_on_live_context");
    for part in [
        "by an earlier run of the daemon, and not loaded untried",
        "this version fails (invalid_decision)",
        "to load this one anyway",
    ] {
        assert!(
            failure.error.contains(part),
            "{part:?} missing in {}",
            failure.error
        );
    }
    drop(restarted);

    // Under other limits (here what a decision may ask for) the refusal
    // does not stand: the version may pass under them, and loads as one
    // never tried.
    let text = std::fs::read_to_string(d.config_path()).unwrap();
    let text = text.replace("[runtime]\n", "[runtime]\nmax_replicas = 5000\n");
    std::fs::write(d.config_path(), text).unwrap();
    let config = scalewise::config::Config::load(&d.config_path()).unwrap();
    let raised = scalewise::daemon::Daemon::build(config, scalewise::clock::Clock::system())
        .await
        .unwrap();
    let snapshot = raised.registry().snapshot();
    assert!(
        snapshot.modules.contains_key("counter"),
        "{:?}",
        snapshot.failures.get("counter")
    );
}

/// A remembered refusal deleted while the daemon runs, as its message
/// says, is let go when the module's file is touched: the version loads
/// (nothing to try it on), where before the same bytes were skipped until
/// a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_deleted_while_running_lets_the_touched_file_load() {
    use std::os::unix::fs::PermissionsExt as _;
    let v2 = digest_of(artifacts::COUNTER_V2);
    let marker = Arc::new(Mutex::new(None));
    let planted = marker.clone();
    let mut d = RunningDaemon::with(&config_text(4.0, 50, "native", ""))
        .policies(|dir| {
            std::fs::copy(artifacts::COUNTER_V2, dir.join("counter.wasm")).unwrap();
            let cache = dir.parent().unwrap().join("scalewise-cache");
            let refused = cache.join("refused");
            std::fs::create_dir_all(&refused).unwrap();
            for folder in [&cache, &refused] {
                std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o700)).unwrap();
            }
            let path = refused.join(format!("{v2}.txt"));
            std::fs::write(&path, "2026-12-01T00:00:00Z\nit failed then\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            *planted.lock().unwrap() = Some(path);
        })
        .config_reload()
        .start()
        .await
        .unwrap();
    let registry = d.registry().clone();
    let failure = registry.snapshot().failures["counter"].clone();
    assert_eq!(failure.kind, "fails_on_live_context");
    assert!(
        failure.error.contains("and touch the module's file"),
        "{}",
        failure.error
    );
    let marker = marker.lock().unwrap().take().unwrap();
    std::fs::remove_file(&marker).unwrap();
    let module = d.policy_dir().join("counter.wasm");
    std::fs::File::options()
        .write(true)
        .open(&module)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    wait_until_async(30 * SECOND, "the touched version to load", || {
        registry
            .snapshot()
            .modules
            .get("counter")
            .map(|m| m.digest().to_owned())
            == Some(v2.clone())
    })
    .await;
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_refusal_is_forgotten_when_the_version_passes_a_trial() {
    // An earlier run refused v2 (its context then made it fail); this run
    // has contexts to try it on, and there it works: it loads, and the
    // refusal is forgotten, so a restart does not refuse it again.
    let (mut d, _) = ticking_on_v1().await;
    let registry = d.registry().clone();
    let v2 = digest_of(artifacts::COUNTER_V2);
    let cache = registry.runtime().limits().cache_dir.clone().unwrap();
    let marker = cache.join("refused").join(format!("{v2}.txt"));
    std::fs::create_dir_all(marker.parent().unwrap()).unwrap();
    std::fs::write(&marker, "2026-12-01T00:00:00Z\nit failed then\n").unwrap();
    replace_counter(&d, artifacts::COUNTER_V2);
    d.next_decision(30 * SECOND, |r| decided_by(r, &v2).is_some())
        .await
        .unwrap();
    assert!(!marker.exists(), "{} stays", marker.display());
    assert!(!registry.snapshot().failures.contains_key("counter"));
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_module_holds_its_scalers_until_it_comes_back() {
    let mut d = ticking("").await;
    let v1 = digest_of(artifacts::COUNTER);
    let before = d
        .next_decision(5 * SECOND, |r| decided_by(r, &v1).is_some())
        .await
        .unwrap();
    std::fs::remove_file(d.policy_dir().join("counter.wasm")).unwrap();
    let held = d
        .next_decision(30 * SECOND, |r| {
            r.evaluations.first().is_some_and(|e| e.digest.is_none())
        })
        .await
        .unwrap();
    let EvaluationOutcome::Failed { kind, error } = &held.evaluations[0].outcome else {
        panic!("{:?}", held.evaluations[0].outcome);
    };
    assert_eq!(kind, "module_unavailable");
    for part in [
        "module \"counter\" was deleted from the policy folder at 20",
        &format!("its last digest: {v1}"),
        "holding until it comes back",
    ] {
        assert!(error.contains(part), "{part:?} missing in {error}");
    }
    assert_eq!(held.desired, held.target.current, "held");
    let policies = d.get("/v1/policies").await.unwrap();
    assert_eq!(policies["removed"][0]["name"], "counter");
    assert_eq!(policies["removed"][0]["digest"], v1.as_str());
    wait_for_telemetry(&d, "scalewise_modules_loaded 0").await;

    // Back: from the compiled-code cache, and the state goes on from the
    // last decision.
    replace_counter(&d, artifacts::COUNTER);
    let back = d
        .next_decision(30 * SECOND, |r| decided_by(r, &v1).is_some())
        .await
        .unwrap();
    let last = counter_reason(decided_by(&before, &v1).unwrap()).unwrap().1;
    let now = counter_reason(decided_by(&back, &v1).unwrap()).unwrap().1;
    assert!(now > last, "{now} after {last}");
    let policies = d.get("/v1/policies").await.unwrap();
    assert_eq!(policies["modules"][0]["origin"], "cache");
    assert_eq!(policies["removed"], serde_json::json!([]));
    wait_for_telemetry(
        &d,
        "scalewise_module_loads_total{module=\"counter\",origin=\"cache\"} 1",
    )
    .await;
    d.stop().await.unwrap();
}

/// A version the running daemon refused for not fitting the config, the
/// version before it gone: a restart does not turn that contained problem
/// into a daemon that does not start. The version is refused as the
/// running daemon refused it (its scalers hold). Without a journal saying
/// the scalers ran another version, the same folder and config are a
/// config that does not fit its module, refused at start as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_only_a_version_the_config_does_not_fit_starts_and_holds() {
    let text = config_text(4.0, 50, "native", "params = { scale_to = 0 }\n");
    let mut d = counter_daemon(&text).start().await.unwrap();
    let v1 = digest_of(artifacts::COUNTER);
    d.next_decision(5 * SECOND, |r| decided_by(r, &v1).is_some())
        .await
        .unwrap();
    replace_counter(&d, artifacts::FAULTS);
    let registry = d.registry().clone();
    wait_until_async(30 * SECOND, "the refusal", || {
        registry.snapshot().failures.contains_key("counter")
    })
    .await;
    d.stop().await.unwrap();

    let load = || scalewise::config::Config::load(&d.config_path()).unwrap();
    let restarted = scalewise::daemon::Daemon::build(load(), scalewise::clock::Clock::system())
        .await
        .expect("the daemon starts");
    let snapshot = restarted.registry().snapshot();
    assert!(!snapshot.modules.contains_key("counter"));
    let failure = &snapshot.failures["counter"];
    assert_eq!(failure.kind, "incompatible_with_config");
    for part in [
        "the version its scalers last ran is no longer in the folder",
        "unknown parameter \"scale_to\"; counter accepts: mode",
    ] {
        assert!(failure.error.contains(part), "{part:?}: {}", failure.error);
    }
    // It runs a while, its scaler holding for want of the module (ticks
    // that journal no digest), and restarts again: still the module's
    // problem, not the config's.
    let journal = restarted.journal().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(restarted.run(None, async move {
        let _ = stopped.await;
    }));
    let held = || {
        journal
            .query_blocking(&scalewise::journal::Query::scaler("web", 1))
            .unwrap()
            .first()
            .and_then(|r| r.evaluations.first())
            .is_some_and(|e| e.digest.is_none())
    };
    wait_until_async(30 * SECOND, "a tick that holds", held).await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let again = scalewise::daemon::Daemon::build(load(), scalewise::clock::Clock::system())
        .await
        .expect("the daemon starts again");
    assert_eq!(
        again.registry().snapshot().failures["counter"].kind,
        "incompatible_with_config"
    );
    drop(again);

    // The config's parameters changed too: not the module's problem alone.
    let path = d.config_path();
    let original = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, original.replace("scale_to = 0", "scale_to = 1")).unwrap();
    assert!(
        scalewise::daemon::Daemon::build(load(), scalewise::clock::Clock::system())
            .await
            .is_err(),
        "a config that changed with the module is refused"
    );
    std::fs::write(&path, original).unwrap();

    for file in std::fs::read_dir(d.dir()).unwrap() {
        let path = file.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("journal.db")
        {
            std::fs::remove_file(path).unwrap();
        }
    }
    let Err(refused) =
        scalewise::daemon::Daemon::build(load(), scalewise::clock::Clock::system()).await
    else {
        panic!("a config that does not fit its module is refused");
    };
    assert!(
        refused
            .to_string()
            .contains("unknown parameter \"scale_to\"; counter accepts: mode"),
        "{refused}"
    );
    assert!(
        !d.dir().join("journal.db").exists(),
        "a config refused leaves no journal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_that_does_not_fit_the_config_is_refused_until_the_config_changes() {
    // The config gives the counter a parameter that `faults` does not take.
    let text = config_text(4.0, 50, "native", "params = { scale_to = 0 }\n");
    let mut d = counter_daemon(&text).start().await.unwrap();
    let v1 = digest_of(artifacts::COUNTER);
    replace_counter(&d, artifacts::FAULTS);
    let registry = d.registry().clone();
    wait_until_async(30 * SECOND, "the refusal", || {
        registry.snapshot().failures.contains_key("counter")
    })
    .await;
    let failure = registry.snapshot().failures["counter"].clone();
    assert_eq!(failure.kind, "incompatible_with_config");
    assert!(
        failure
            .error
            .contains("unknown parameter \"scale_to\"; counter accepts: mode"),
        "{}",
        failure.error
    );
    // Located in the config file, at the parameter's line.
    let line = text
        .lines()
        .position(|l| l.contains("scale_to"))
        .expect("the config gives scale_to")
        + 1;
    let file = d.config_path().display().to_string();
    assert!(
        failure.error.contains(&format!("{file}:{line}:")),
        "{file}:{line}: {}",
        failure.error
    );
    d.next_decision(5 * SECOND, |r| decided_by(r, &v1).is_some())
        .await
        .unwrap();

    // The gate checks the config applied now, not the one started with:
    // once a reload gives the refused version's parameters (which the
    // version serving does not take: the config is checked against the
    // refused one), it is tried again and loads, its file untouched.
    rewrite_config(
        &d,
        &config_text(4.0, 50, "native", "params = { mode = \"ok\" }\n"),
    );
    wait_for_reloads(&d, "applied", 1).await;
    let faults = digest_of(artifacts::FAULTS);
    wait_until_async(30 * SECOND, "the version to serve", || {
        registry
            .get("counter")
            .is_some_and(|m| m.digest() == faults)
    })
    .await;
    assert!(!registry.snapshot().failures.contains_key("counter"));
    d.next_decision(5 * SECOND, |r| {
        decided_by(r, &faults).is_some_and(|reason| reason.starts_with("fine at"))
    })
    .await
    .unwrap();
    wait_for_telemetry(
        &d,
        "scalewise_module_loads_total{module=\"counter\",origin=\"cache\"} 1",
    )
    .await;
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_that_fails_to_load_at_start_holds_its_scalers_until_a_good_one_comes() {
    // The daemon starts (a restart must not turn a contained bad module
    // into an autoscaler that is down); the scaler holds and says why.
    let mut d = RunningDaemon::with(&config_text(4.0, 50, "native", ""))
        .policies(|dir| std::fs::write(dir.join("counter.wasm"), b"not wasm").unwrap())
        .config_reload()
        .start()
        .await
        .unwrap();
    let held = d
        .next_decision(30 * SECOND, |r| r.scaler == "web")
        .await
        .unwrap();
    let EvaluationOutcome::Failed { kind, error } = &held.evaluations[0].outcome else {
        panic!("{:?}", held.evaluations[0].outcome);
    };
    assert_eq!(kind, "module_unavailable", "{error}");
    assert!(error.contains("counter"), "{error}");
    assert_eq!(held.desired, held.target.current, "held");
    let policies = d.get("/v1/policies").await.unwrap();
    assert_eq!(policies["modules"], serde_json::json!([]), "{policies}");

    // A good version is checked against the config and serves.
    let v1 = digest_of(artifacts::COUNTER);
    replace_counter(&d, artifacts::COUNTER);
    d.next_decision(30 * SECOND, |r| decided_by(r, &v1).is_some())
        .await
        .unwrap();
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_change_refused_first_applies_when_its_module_arrives() {
    // Counter serves with its own parameter; the config is changed first
    // to the parameters of the version to come (refused: the counter does
    // not take them), then that version is dropped in (refused: it does
    // not fit the running config). Neither waits for the other forever.
    let text = config_text(4.0, 50, "native", "params = { scale_to = 0 }\n");
    let mut d = counter_daemon(&text).start().await.unwrap();
    rewrite_config(
        &d,
        &config_text(4.0, 50, "native", "params = { mode = \"ok\" }\n"),
    );
    wait_for_reloads(&d, "refused", 1).await;

    replace_counter(&d, artifacts::FAULTS);
    let faults = digest_of(artifacts::FAULTS);
    let registry = d.registry().clone();
    wait_until_async(30 * SECOND, "the new version to serve", || {
        registry
            .get("counter")
            .is_some_and(|m| m.digest() == faults)
    })
    .await;
    d.next_decision(5 * SECOND, |r| {
        decided_by(r, &faults).is_some_and(|reason| reason.starts_with("fine at"))
    })
    .await
    .unwrap();
    let status = d.get("/v1/config").await.unwrap();
    assert_eq!(status["last_error"], serde_json::Value::Null, "{status}");
    d.stop().await.unwrap();
}
