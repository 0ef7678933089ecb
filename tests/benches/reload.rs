//! The hot reload benchmark: time from a module file's last write to the
//! first decision by the new version, for a Rust policy (the `counter`
//! fixture), with its code compiled (cold) and from the on-disk cache.
//! Goals: ≤ 300 ms beyond the debounce window cold, ≤ 30 ms from the cache.
//!
//! `cargo bench -p scalewise-tests --bench reload`
//!
//! What is measured, per iteration, with the real registry and watcher
//! (inotify) on a temporary folder:
//! 1. the new bytes are written over `counter.wasm` (create/truncate, write,
//!    close); the clock starts when `close` returns: the file's last write;
//! 2. the watcher sees the close, waits the debounce window (quiet, stamp
//!    stable), reads the file, loads it (compiled in a child process of the
//!    real binary, as `scalewise run` does, or from the cache), checks it
//!    (WIT exports, describe(), the config gate) and swaps the snapshot;
//! 3. the registry's change notification wakes the bench, which takes the
//!    module from the snapshot and evaluates it once, as a scaler's next
//!    tick would; the clock stops when that decision is returned.
//!
//! A scaler's tick comes on its own schedule, so in the daemon the decision
//! waits for the next tick too; this measures everything up to that point
//! plus the evaluation itself. Cold iterations use versions never seen
//! before (the fixture with a unique custom section appended, so its digest
//! and cache key are new); cache iterations flip between two versions
//! already compiled once (the A → B → A case, or a restart).
//!
//! `BENCH_DEBOUNCE_MS` (default 50) sets the debounce window;
//! `BENCH_ITERATIONS` (default 15) the iterations per case.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scalewise::config::{RuntimeLimits, WatchConfig, WatchMode};
use scalewise::registry::Registry;
use scalewise::runtime::{CodeOrigin, Compiler, Runtime};
use scalewise_tests::{artifacts, context};
use sha2::{Digest as _, Sha256};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `component` with a custom section appended: the same code, other bytes.
fn variant(component: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"scalewise-bench";
    let mut content = Vec::new();
    leb(name.len(), &mut content);
    content.extend_from_slice(name);
    content.extend_from_slice(tag.as_bytes());
    let mut out = component.to_vec();
    out.push(0); // custom section
    leb(content.len(), &mut out);
    out.extend_from_slice(&content);
    out
}

struct Sample {
    total: Duration,
    load: Duration,
    evaluate: Duration,
    origin: CodeOrigin,
}

fn main() {
    // `cargo bench` passes `--bench`; listing asks for nothing to run.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let debounce = Duration::from_millis(env_u64("BENCH_DEBOUNCE_MS", 50));
    let iterations = env_u64("BENCH_ITERATIONS", 15) as usize;
    let work = tempfile::tempdir().unwrap();
    let folder = work.path().join("policies");
    std::fs::create_dir(&folder).unwrap();
    let target = folder.join("counter.wasm");
    let base = std::fs::read(artifacts::COUNTER).unwrap();
    std::fs::write(&target, &base).unwrap();

    // Compiling in a child process of the real binary, as `scalewise run`
    // does.
    let runtime = Runtime::with_compiler(
        RuntimeLimits {
            cache_dir: Some(work.path().join("cache")),
            ..RuntimeLimits::default()
        },
        Compiler::process(env!("CARGO_BIN_EXE_scalewise-cli")),
    )
    .unwrap();
    let registry = Arc::new(Registry::load_dir(runtime, &folder).unwrap());
    let config = WatchConfig {
        enabled: true,
        debounce,
        mode: WatchMode::Native,
        poll_interval: Duration::from_secs(1),
    };
    let _watch = registry.watch(&config, |_| {}).unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut changes = registry.subscribe();
    let ctx = context(1_700_000_000_000, serde_json::json!({}), 60);

    let mut measure = |bytes: &[u8]| -> Sample {
        let expected = hex::encode(Sha256::digest(bytes));
        changes.borrow_and_update();
        let mut file = std::fs::File::create(&target).unwrap();
        file.write_all(bytes).unwrap();
        drop(file);
        let written = Instant::now();
        // A change can also be a refused load: the watcher may read the
        // file between its truncation and the write when an event from the
        // previous iteration is still settling. The good version stays, and
        // the file's last event loads the new one: wait for that.
        let new_version = async {
            loop {
                changes.changed().await.unwrap();
                let module = registry.get("counter").unwrap();
                if module.digest() == expected {
                    return module;
                }
            }
        };
        let module = tokio
            .block_on(async { tokio::time::timeout(Duration::from_secs(30), new_version).await })
            .expect("the version just written serves within 30 s");
        let started = Instant::now();
        let decision = module.evaluate(&ctx).unwrap();
        let done = Instant::now();
        assert!(decision.reason.starts_with("counter v1"));
        Sample {
            total: done - written,
            load: module.load_time(),
            evaluate: done - started,
            origin: module.origin(),
        }
    };

    let run = std::process::id();
    // Warm-up: the first compile in a process is slower (lazy init).
    measure(&variant(&base, &format!("{run}-warmup")));

    let cold: Vec<Sample> = (0..iterations)
        .map(|i| measure(&variant(&base, &format!("{run}-cold-{i}"))))
        .collect();
    assert!(cold.iter().all(|s| s.origin == CodeOrigin::Compiled));

    let a = variant(&base, &format!("{run}-a"));
    let b = variant(&base, &format!("{run}-b"));
    measure(&a);
    measure(&b);
    let cached: Vec<Sample> = (0..iterations)
        .map(|i| measure(if i % 2 == 0 { &a } else { &b }))
        .collect();
    assert!(cached.iter().all(|s| s.origin == CodeOrigin::Cache));

    println!(
        "hot reload, last write -> first decision by the new version ({} bytes, debounce {} ms, {iterations} iterations each)",
        base.len(),
        debounce.as_millis()
    );
    report(
        "cold (compiled)",
        &cold,
        debounce,
        Duration::from_millis(300),
    );
    report("cache hit", &cached, debounce, Duration::from_millis(30));
}

fn report(name: &str, samples: &[Sample], debounce: Duration, goal: Duration) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let stats = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        (at(0.0), at(0.5), at(0.9), at(1.0))
    };
    let (min, median, p90, max) = stats(samples.iter().map(|s| ms(s.total)).collect());
    let beyond = |t: f64| t - ms(debounce);
    let (_, load, _, _) = stats(samples.iter().map(|s| ms(s.load)).collect());
    let (_, eval, _, _) = stats(samples.iter().map(|s| ms(s.evaluate) * 1e3).collect());
    println!(
        "  {name:<16} total median {median:7.1} ms  p90 {p90:7.1}  min {min:7.1}  max {max:7.1}  \
         | beyond debounce: median {:6.1} ms, p90 {:6.1} (goal <= {} ms) \
         | load median {load:6.1} ms, evaluate median {eval:5.0} us",
        beyond(median),
        beyond(p90),
        goal.as_millis()
    );
}
