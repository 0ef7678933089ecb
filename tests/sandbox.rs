//! What a policy can reach: nothing real. The `sandbox-probe` fixture tries
//! files, environment, network, clocks and randomness and reports what it
//! saw; and the same context always gives the same decision bytes.

use std::path::Path;

use scalewise::policy::Decision;
use scalewise::runtime::PolicyModule;
use scalewise_tests::{artifacts, context, load, runtime};
use serde_json::{Value, json};

fn probe(module: &PolicyModule, now_ms: i64) -> Value {
    let decision = module.evaluate(&context(now_ms, json!({}), 1)).unwrap();
    assert_eq!(decision.desired, None);
    serde_json::from_slice(&decision.state.expect("the probe reports in its state")).unwrap()
}

#[test]
fn the_clocks_read_the_context_time_and_stand_still() {
    let module = load(artifacts::SANDBOX_PROBE);
    for now_ms in [1_700_000_000_000, 86_400_000, 0] {
        let seen = probe(&module, now_ms);
        assert_eq!(seen["wall_ms"], json!({ "Ok": now_ms }), "{seen}");
        assert_eq!(seen["busy_elapsed_ns"], 0, "monotonic time does not pass");
        assert_eq!(seen["sleep_elapsed_ns"], 0, "a sleep returns at once");
    }
}

#[test]
fn no_environment_arguments_or_files() {
    let seen = probe(&load(artifacts::SANDBOX_PROBE), 1_000);
    assert_eq!(seen["env"], json!([]), "{seen}");
    assert_eq!(seen["args"], json!([]), "{seen}");
    let files = seen["files"].as_object().unwrap();
    for probe in [
        "read /etc/passwd",
        "read /proc/self/environ",
        "read passwd",
        "read ../Cargo.toml",
        "list /",
        "list .",
        "write /tmp/scalewise-probe",
    ] {
        assert!(
            files[probe].get("Err").is_some(),
            "{probe}: {}",
            files[probe]
        );
    }
    assert!(
        !Path::new("/tmp/scalewise-probe").exists(),
        "nothing was written"
    );
}

/// The NaN a float operation makes is the same on every CPU (x86 makes
/// one with the sign bit set, ARM without): a policy that keeps a float's
/// bits in its state, or sorts with `total_cmp`, replays the same elsewhere.
#[test]
fn a_nan_has_the_same_bits_on_every_cpu() {
    let seen = probe(&load(artifacts::SANDBOX_PROBE), 1_000);
    assert_eq!(
        seen["nan_bits"].as_u64(),
        Some(0x7FF8_0000_0000_0000),
        "{:#x}",
        seen["nan_bits"].as_u64().unwrap_or_default()
    );
}

#[test]
fn no_network() {
    let seen = probe(&load(artifacts::SANDBOX_PROBE), 1_000);
    assert!(seen["tcp"].get("Err").is_some(), "tcp: {}", seen["tcp"]);
    assert!(seen["dns"].get("Err").is_some(), "dns: {}", seen["dns"]);
}

fn decision_bytes(d: &Decision) -> Vec<u8> {
    serde_json::to_vec(d).unwrap()
}

#[test]
fn same_context_same_decision_bytes() {
    // The probe reads clocks and randomness, so it is the hardest case.
    let module = load(artifacts::SANDBOX_PROBE);
    let ctx = context(1_700_000_000_000, json!({}), 60);
    let first = decision_bytes(&module.evaluate(&ctx).unwrap());
    for i in 0..1_000 {
        let again = decision_bytes(&module.evaluate(&ctx).unwrap());
        assert!(again == first, "evaluation {i} differs");
    }
    // A new runtime (new engine, new compilation) answers the same.
    let other = runtime()
        .load_file(Path::new(artifacts::SANDBOX_PROBE))
        .unwrap();
    assert_eq!(decision_bytes(&other.evaluate(&ctx).unwrap()), first);
    // And from another thread.
    let from_thread =
        std::thread::scope(|s| s.spawn(|| module.evaluate(&ctx).unwrap()).join()).unwrap();
    assert_eq!(decision_bytes(&from_thread), first);
}

#[test]
fn decisions_depend_on_the_context() {
    // The determinism above must not come from ignoring the input.
    let module = load(artifacts::BENCH_HPA);
    let low = context(1_000_000, json!({"metric": "cpu", "target": 200}), 100);
    let high = context(1_000_000, json!({"metric": "cpu", "target": 10}), 100);
    let (a, b) = (
        module.evaluate(&low).unwrap(),
        module.evaluate(&high).unwrap(),
    );
    assert_ne!(a.desired, b.desired);
    for _ in 0..100 {
        assert_eq!(module.evaluate(&low).unwrap(), a);
        assert_eq!(module.evaluate(&high).unwrap(), b);
    }
}
