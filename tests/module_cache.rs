//! The on-disk compiled-code cache with real modules: a restart loads from
//! it without compiling, a damaged or foreign file is recompiled (never run,
//! never a crash), and flipping back to an earlier version is a cache hit.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use scalewise::config::RuntimeLimits;
use scalewise::registry::Registry;
use scalewise::runtime::{CodeOrigin, PolicyModule, Runtime};
use scalewise_tests::{artifacts, context};
use sha2::{Digest as _, Sha256};

fn cached_runtime(cache: &Path) -> Runtime {
    Runtime::new(RuntimeLimits {
        cache_dir: Some(cache.to_path_buf()),
        ..RuntimeLimits::default()
    })
    .unwrap()
}

fn load(rt: &Runtime, path: &str) -> PolicyModule {
    rt.load_file(Path::new(path)).unwrap()
}

fn decides(module: &PolicyModule) {
    let ctx = context(1_700_000_000_000, serde_json::json!({}), 3);
    let decision = module.evaluate(&ctx).unwrap();
    assert!(
        decision.reason.starts_with("counter v"),
        "{}",
        decision.reason
    );
}

/// The cache file of `module` in `rt`'s cache.
fn cache_file(rt: &Runtime, module: &PolicyModule) -> PathBuf {
    rt.cache_dir()
        .unwrap()
        .join(format!("{}.cwasm", module.digest()))
}

#[test]
fn a_restart_loads_from_the_cache_without_compiling() {
    let cache = tempfile::tempdir().unwrap();
    let first = load(&cached_runtime(cache.path()), artifacts::COUNTER);
    assert_eq!(first.origin(), CodeOrigin::Compiled);
    // A new runtime (a new engine, as after a restart) with the same settings.
    let again = load(&cached_runtime(cache.path()), artifacts::COUNTER);
    assert_eq!(again.origin(), CodeOrigin::Cache);
    assert_eq!(again.digest(), first.digest());
    assert_eq!(again.info(), first.info());
    decides(&again);
}

#[test]
fn other_engine_settings_use_their_own_cache_folder() {
    let cache = tempfile::tempdir().unwrap();
    let plain = cached_runtime(cache.path());
    load(&plain, artifacts::COUNTER);
    let fueled = Runtime::new(RuntimeLimits {
        cache_dir: Some(cache.path().to_path_buf()),
        fuel: 1_000_000,
        ..RuntimeLimits::default()
    })
    .unwrap();
    assert_ne!(fueled.cache_dir(), plain.cache_dir());
    let module = load(&fueled, artifacts::COUNTER);
    assert_eq!(module.origin(), CodeOrigin::Compiled);
    decides(&module);
}

#[test]
fn a_damaged_cache_file_is_recompiled_and_replaced() {
    let cache = tempfile::tempdir().unwrap();
    let rt = cached_runtime(cache.path());
    let module = load(&rt, artifacts::COUNTER);
    let file = cache_file(&rt, &module);
    let good = std::fs::read(&file).unwrap();

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x5a;
    let damages: [(&str, Vec<u8>); 4] = [
        ("a flipped byte", flipped),
        ("truncated", good[..good.len() * 2 / 3].to_vec()),
        ("empty", Vec::new()),
        ("garbage", b"this is not compiled code".repeat(100)),
    ];
    for (what, bytes) in damages {
        std::fs::write(&file, &bytes).unwrap();
        let module = load(&cached_runtime(cache.path()), artifacts::COUNTER);
        assert_eq!(module.origin(), CodeOrigin::Compiled, "{what}");
        decides(&module);
        // The file was rewritten: the next load is a hit again.
        let module = load(&cached_runtime(cache.path()), artifacts::COUNTER);
        assert_eq!(module.origin(), CodeOrigin::Cache, "{what}");
    }
}

#[test]
fn code_from_another_engine_with_a_valid_checksum_is_refused_by_wasmtime() {
    let cache = tempfile::tempdir().unwrap();
    let rt = cached_runtime(cache.path());
    let module = load(&rt, artifacts::COUNTER);
    let file = cache_file(&rt, &module);
    // Compiled by an engine with other settings, framed exactly as the
    // cache frames it: only wasmtime's own check stands in the way.
    let other = {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true).consume_fuel(true);
        wasmtime::Engine::new(&config).unwrap()
    };
    let bytes = std::fs::read(artifacts::COUNTER).unwrap();
    let artifact = wasmtime::component::Component::new(&other, &bytes)
        .unwrap()
        .serialize()
        .unwrap();
    let good = std::fs::read(&file).unwrap();
    let mut forged = good[..16].to_vec(); // the layout's magic
    forged.extend_from_slice(&Sha256::digest(&artifact));
    forged.extend_from_slice(&artifact);
    std::fs::write(&file, forged).unwrap();

    let module = load(&cached_runtime(cache.path()), artifacts::COUNTER);
    assert_eq!(module.origin(), CodeOrigin::Compiled);
    decides(&module);
}

#[cfg(unix)]
#[test]
fn a_cache_folder_others_can_write_is_not_used() {
    use std::os::unix::fs::PermissionsExt as _;
    let cache = tempfile::tempdir().unwrap();
    std::fs::set_permissions(cache.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let rt = cached_runtime(cache.path());
    assert_eq!(rt.cache_dir(), None);
    let module = load(&rt, artifacts::COUNTER);
    assert_eq!(module.origin(), CodeOrigin::Compiled);
    decides(&module);
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0);
}

#[test]
fn flipping_back_to_an_earlier_version_is_a_cache_hit() {
    let cache = tempfile::tempdir().unwrap();
    let folder = tempfile::tempdir().unwrap();
    let target = folder.path().join("counter.wasm");
    std::fs::copy(artifacts::COUNTER, &target).unwrap();
    let registry =
        Arc::new(Registry::load_dir(cached_runtime(cache.path()), folder.path()).unwrap());
    let names = ["counter".to_string()];
    let mut origins = Vec::new();
    for version in [
        artifacts::COUNTER_V2,
        artifacts::COUNTER,
        artifacts::COUNTER_V2,
    ] {
        std::fs::copy(version, &target).unwrap();
        let report = registry.reload(&names, &[]);
        assert_eq!(report.loaded.len(), 1, "{report:?}");
        origins.push(report.loaded[0].origin);
        assert_eq!(
            registry.get("counter").unwrap().digest(),
            hex::encode(Sha256::digest(std::fs::read(version).unwrap()))
        );
    }
    assert_eq!(
        origins,
        [CodeOrigin::Compiled, CodeOrigin::Cache, CodeOrigin::Cache]
    );
}
