//! The registry against a real policy folder: good modules load, bad ones
//! are recorded as failures and never stop the others.

use std::path::Path;

use scalewise::registry::{INCOMPATIBLE_WITH_CONFIG, Registry};
use scalewise::watch::FileStamp;
use scalewise_tests::{artifacts, fault, runtime};

fn copy(from: &str, dir: &Path, name: &str) {
    std::fs::copy(from, dir.join(name)).unwrap();
}

#[test]
fn one_bad_module_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    copy(artifacts::FAULTS, d, "faults.wasm");
    copy(artifacts::ALWAYS_ERRORS, d, "always-errors.wasm");
    copy(artifacts::WRONG_VERSION, d, "wrong-version.wasm");
    copy(artifacts::DESCRIBE_PANICS, d, "describe-panics.wasm");
    std::fs::write(d.join("garbage.wasm"), b"\0asm but not really").unwrap();
    std::fs::write(d.join("README.md"), b"not a module").unwrap();
    std::fs::create_dir(d.join("nested.wasm")).unwrap();

    let registry = Registry::load_dir(runtime(), d).unwrap();
    let snap = registry.snapshot();
    assert_eq!(
        snap.modules.keys().collect::<Vec<_>>(),
        ["always-errors", "faults"]
    );
    let kinds: Vec<(&str, &str)> = snap
        .failures
        .iter()
        .map(|(name, f)| (name.as_str(), f.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("describe-panics", "describe_failed"),
            ("garbage", "compile"),
            // A folder named like a module is a failure that says so.
            ("nested", "io"),
            ("wrong-version", "wrong_wit_version"),
        ]
    );
    let failure = &snap.failures["wrong-version"];
    assert_eq!(failure.path, d.join("wrong-version.wasm"));
    assert!(failure.error.contains("0.2.0"), "{}", failure.error);
    assert!(failure.at_ms > 1_600_000_000_000);

    let faults = registry.get("faults").expect("faults is loaded");
    assert_eq!(faults.name(), "faults");
    faults.evaluate(&fault("ok")).unwrap();
    assert!(registry.get("wrong-version").is_none());
    assert_eq!(registry.dir(), d);
}

#[cfg(unix)]
#[test]
fn symlinked_modules_load_like_a_configmap_mount() {
    // Kubernetes mounts a ConfigMap as symlinks into a hidden `..data` dir.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("..data");
    std::fs::create_dir(&data).unwrap();
    copy(artifacts::FAULTS, &data, "faults.wasm");
    std::os::unix::fs::symlink("..data/faults.wasm", dir.path().join("faults.wasm")).unwrap();
    let registry = Registry::load_dir(runtime(), dir.path()).unwrap();
    assert!(
        registry.get("faults").is_some(),
        "{:?}",
        registry.snapshot().failures
    );
}

#[test]
fn an_empty_folder_is_an_empty_registry() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::load_dir(runtime(), dir.path()).unwrap();
    let snap = registry.snapshot();
    assert!(snap.modules.is_empty() && snap.failures.is_empty());
}

/// A module file still being written when the daemon starts is read again
/// until it holds still; one that keeps changing is a failure that says so
/// (before, it was left out without a word, and config naming it was
/// refused as naming an unknown module).
#[test]
fn a_file_being_written_at_start_is_waited_for_or_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let bytes = std::fs::read(artifacts::FAULTS).unwrap();
    std::fs::write(d.join("settling.wasm"), &bytes).unwrap();
    std::fs::write(d.join("busy.wasm"), &bytes).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Rewritten (length changing) every 5 ms: for 300 ms, and for good.
    let writer = |name: &'static str, for_ms: Option<u64>| {
        let (d, bytes, stop) = (d.clone(), bytes.clone(), stop.clone());
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let mut extra = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && for_ms.is_none_or(|ms| started.elapsed().as_millis() < u128::from(ms))
            {
                extra = (extra + 1) % 7;
                let mut b = bytes.clone();
                b.extend(std::iter::repeat_n(0, extra));
                std::fs::write(d.join(name), &b).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            std::fs::write(d.join(name), &bytes).unwrap();
        })
    };
    let settling = writer("settling.wasm", Some(300));
    let busy = writer("busy.wasm", None);
    let registry = Registry::load_dir(runtime(), &d).unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    settling.join().unwrap();
    busy.join().unwrap();
    let snap = registry.snapshot();
    assert!(snap.modules.contains_key("settling"), "{:?}", snap.failures);
    let failure = &snap.failures["busy"];
    assert!(
        failure
            .error
            .contains("kept changing while the daemon started"),
        "{}",
        failure.error
    );
    // Still as it was once the writer stopped, it is what the watcher
    // loads: the stamp known of it is one no file has, so the scan finds it
    // changed. (The stamp taken after the wait was kept: a file that held
    // still from just before then looked unchanged to the watcher, and
    // stayed failed.)
    let known = registry.known();
    assert_eq!(known.get("busy"), Some(&FileStamp::UNREAD), "{known:?}");
    let on_disk = registry.scan().unwrap();
    assert_ne!(on_disk.get("busy"), known.get("busy"));
    registry.reload(&["busy".to_owned()], &[]);
    assert!(registry.snapshot().modules.contains_key("busy"));
}

/// A config reload may apply between the gate's first look at a new version
/// and the swap (the version was checked against the old config only): the
/// gate has a last word just before the swap, and a version it then refuses
/// does not serve; the one before it keeps deciding.
#[test]
fn the_gate_has_the_last_word_before_a_new_version_serves() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    copy(artifacts::TARGET_TRACKING, d, "policy.wasm");
    let registry = Registry::load_dir(runtime(), d).unwrap();
    let first = registry.get("policy").unwrap().digest().to_owned();

    // Fits the config at the first look, not at the second (a reload has
    // applied a config it does not fit in between).
    let looks = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&looks);
    registry.set_gate(Arc::new(move |_module: &str, _catalog: &_| {
        match counted.fetch_add(1, Ordering::SeqCst) {
            0 => Ok(()),
            _ => Err("does not fit the config applied since".to_owned()),
        }
    }));
    copy(artifacts::THRESHOLD, d, "policy.wasm");
    let report = registry.reload(&["policy".into()], &[]);
    assert_eq!(looks.load(Ordering::SeqCst), 2, "two looks: {report:?}");
    assert!(report.loaded.is_empty(), "{report:?}");
    let snap = registry.snapshot();
    assert_eq!(
        snap.modules["policy"].digest(),
        first,
        "the old version serves"
    );
    let failure = &snap.failures["policy"];
    assert_eq!(failure.kind, INCOMPATIBLE_WITH_CONFIG);
    assert!(failure.error.contains("applied since"), "{}", failure.error);
    assert_eq!(
        failure.refused_info.as_ref().map(|i| i.name.as_str()),
        Some("threshold"),
        "kept for a config that may be written for it"
    );
    assert_ne!(failure.digest.as_deref(), Some(first.as_str()));

    // Fitting at both looks, it serves.
    registry.set_gate(Arc::new(|_module: &str, _catalog: &_| Ok(())));
    let report = registry.recheck_refused();
    assert_eq!(report.loaded.len(), 1, "{report:?}");
    assert_eq!(registry.get("policy").unwrap().info().name, "threshold");
    assert!(registry.snapshot().failures.is_empty());
}
