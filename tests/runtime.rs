//! The runtime against real components: every fault is an error for that
//! call only, limits hold, and bad modules are refused at load with clear
//! errors.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use scalewise::config::RuntimeLimits;
use scalewise::runtime::{EvalErrorKind, LoadError, POLICY_LOG_TARGET, Runtime, WIT_VERSION};
use scalewise_tests::{artifacts, context, fault, load, runtime};
use serde_json::json;

#[test]
fn every_fault_is_contained_and_the_next_call_works() {
    // A generous deadline: filling memory must hit the memory limit, not
    // the deadline, even on a busy machine.
    let rt = Runtime::new(RuntimeLimits {
        timeout: Duration::from_secs(1),
        max_memory: ByteSize::mib(16),
        ..RuntimeLimits::default()
    })
    .unwrap();
    let module = rt.load_file(Path::new(artifacts::FAULTS)).unwrap();
    let cases = [
        ("loop", EvalErrorKind::Timeout, "ran past its 1s deadline"),
        (
            "oom",
            EvalErrorKind::OutOfMemory,
            "the limit is 16777216 bytes",
        ),
        (
            "panic",
            EvalErrorKind::Trap,
            "the faults fixture panics on purpose",
        ),
        (
            "recurse",
            EvalErrorKind::StackOverflow,
            "exhausted its 512.0 KiB Wasm stack",
        ),
        ("exit", EvalErrorKind::Trap, "called exit"),
        (
            "no-such-mode",
            EvalErrorKind::PolicyError,
            "unknown mode \"no-such-mode\"",
        ),
    ];
    for (mode, kind, text) in cases {
        let err = module
            .evaluate(&fault(mode))
            .expect_err(&format!("mode {mode} must fail"));
        assert_eq!(err.kind, kind, "mode {mode}: {}", err.message);
        assert!(err.message.contains(text), "mode {mode}: {}", err.message);
        let ok = module
            .evaluate(&fault("ok"))
            .unwrap_or_else(|e| panic!("the call after {mode} failed: {e}"));
        assert_eq!(ok.reason, "fine at 3");
    }
}

#[test]
fn traps_carry_the_guest_backtrace() {
    let module = load(artifacts::FAULTS);
    let err = module.evaluate(&fault("panic")).unwrap_err();
    assert!(err.message.contains("wasm backtrace"), "{}", err.message);
    assert!(err.message.contains("unreachable"), "{}", err.message);
    // Readable: the summary, what the policy printed, then the frames of
    // this stripped module as offsets on one line, each cause said once.
    let lines: Vec<&str> = err.message.lines().collect();
    assert_eq!(
        lines[0], "the policy trapped: wasm trap: wasm `unreachable` instruction executed",
        "{}",
        err.message
    );
    assert_eq!(lines[1], "policy stderr:", "{}", err.message);
    let panic = lines
        .iter()
        .position(|l| l.contains("panics on purpose"))
        .unwrap();
    let frames = lines
        .iter()
        .position(|l| l.starts_with("wasm backtrace"))
        .unwrap();
    assert!(
        panic < frames && frames == lines.len() - 1,
        "{}",
        err.message
    );
    assert!(
        lines[frames].contains("no function names"),
        "{}",
        err.message
    );
    assert!(!err.message.contains("<unknown>"), "{}", err.message);
    assert_eq!(
        err.message.matches("instruction executed").count(),
        1,
        "{}",
        err.message
    );
    // A recursion's frames are one offset, written once with its count.
    let err = module.evaluate(&fault("recurse")).unwrap_err();
    let frames = err.message.lines().last().unwrap();
    assert!(frames.contains(" ×"), "{frames}");
    assert!(frames.len() < 300, "{frames}");
}

#[test]
fn fuel_bounds_a_loop_when_enabled() {
    let rt = Runtime::new(RuntimeLimits {
        fuel: 10_000_000,
        timeout: Duration::from_secs(30),
        ..RuntimeLimits::default()
    })
    .unwrap();
    let module = rt.load_file(Path::new(artifacts::FAULTS)).unwrap();
    let err = module.evaluate(&fault("loop")).unwrap_err();
    assert_eq!(err.kind, EvalErrorKind::OutOfFuel, "{}", err.message);
    assert!(err.message.contains("10000000 fuel"), "{}", err.message);
    // Fuel is per evaluation, not per module.
    module.evaluate(&fault("ok")).unwrap();
    module.evaluate(&fault("ok")).unwrap();
}

#[test]
fn the_timeout_is_the_configured_one() {
    let timeout = Duration::from_millis(30);
    let rt = Runtime::new(RuntimeLimits {
        timeout,
        ..RuntimeLimits::default()
    })
    .unwrap();
    let module = rt.load_file(Path::new(artifacts::FAULTS)).unwrap();
    let start = Instant::now();
    let err = module.evaluate(&fault("loop")).unwrap_err();
    let took = start.elapsed();
    assert_eq!(err.kind, EvalErrorKind::Timeout);
    assert!(err.message.contains("30ms deadline"), "{}", err.message);
    // Never before the deadline; the upper bound only guards against a
    // deadline that does not fire at all (the machine is shared and noisy).
    assert!(took >= timeout, "stopped after {took:?}");
    assert!(took < Duration::from_secs(10), "stopped after {took:?}");
}

#[test]
fn memory_and_stack_limits_are_the_configured_ones() {
    let rt = Runtime::new(RuntimeLimits {
        max_memory: ByteSize::mib(8),
        max_wasm_stack: ByteSize::kib(64),
        timeout: Duration::from_secs(5),
        ..RuntimeLimits::default()
    })
    .unwrap();
    let module = rt.load_file(Path::new(artifacts::FAULTS)).unwrap();
    let oom = module.evaluate(&fault("oom")).unwrap_err();
    assert_eq!(oom.kind, EvalErrorKind::OutOfMemory);
    assert!(
        oom.message.contains("the limit is 8388608 bytes"),
        "{}",
        oom.message
    );
    let deep = module.evaluate(&fault("recurse")).unwrap_err();
    assert_eq!(deep.kind, EvalErrorKind::StackOverflow);
    assert!(deep.message.contains("64.0 KiB"), "{}", deep.message);
    module.evaluate(&fault("ok")).unwrap();
}

/// The largest Wasm stack the config allows, on a thread with the stack
/// the daemon's evaluating threads have and on a default 2 MiB one (the
/// test harness's): a recursing policy traps as a stack overflow, it never
/// reaches the thread's guard page (which aborts the process).
#[test]
fn the_largest_wasm_stack_traps_on_the_threads_that_evaluate() {
    let rt = Runtime::new(RuntimeLimits {
        max_wasm_stack: ByteSize::b(scalewise::runtime::MAX_WASM_STACK),
        timeout: Duration::from_secs(30),
        ..RuntimeLimits::default()
    })
    .unwrap();
    let module = rt.load_file(Path::new(artifacts::FAULTS)).unwrap();
    for stack in [scalewise::runtime::THREAD_STACK, 2 * 1024 * 1024] {
        let module = module.clone();
        let kind = std::thread::Builder::new()
            .stack_size(stack)
            .spawn(move || module.evaluate(&fault("recurse")).unwrap_err().kind)
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(
            kind,
            EvalErrorKind::StackOverflow,
            "on a {stack}-byte stack"
        );
    }
    // Above it, refused.
    assert!(
        Runtime::new(RuntimeLimits {
            max_wasm_stack: ByteSize::b(scalewise::runtime::MAX_WASM_STACK + 1),
            ..RuntimeLimits::default()
        })
        .is_err()
    );
}

#[test]
fn a_sleeping_policy_does_not_block_the_host() {
    let module = load(artifacts::FAULTS);
    let start = Instant::now();
    let decision = module.evaluate(&fault("sleep")).unwrap();
    // The policy asked for an hour; virtual time does not pass.
    assert_eq!(decision.reason, "slept; the clock says 0 ns passed");
    assert!(start.elapsed() < Duration::from_secs(60));
}

#[test]
fn evaluations_work_on_tokio_blocking_threads() {
    // The control loop runs evaluations with spawn_blocking; WASI's sync
    // host calls (stdout writes, polling a sleep) then run inside tokio.
    let module = load(artifacts::FAULTS);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for mode in ["print-flood", "sleep", "ok", "panic", "ok"] {
            let module = module.clone();
            let result = tokio::task::spawn_blocking(move || module.evaluate(&fault(mode)))
                .await
                .expect("the evaluation does not panic the thread");
            assert_eq!(result.is_ok(), mode != "panic", "{mode}: {result:?}");
        }
    });
}

#[test]
fn policy_errors_are_returned_as_is() {
    let module = load(artifacts::ALWAYS_ERRORS);
    for _ in 0..3 {
        let err = module.evaluate(&fault("ok")).unwrap_err();
        assert_eq!(err.kind, EvalErrorKind::PolicyError);
        assert_eq!(
            err.message,
            "always-errors refuses to decide for scaler \"web\""
        );
    }
}

#[test]
fn absurd_decisions_are_refused() {
    let module = load(artifacts::ABSURD);
    let cases = [
        (
            "count",
            "asked for 4294967295 replicas, above the host's ceiling of 100000",
        ),
        (
            "reason",
            "the reason is 1048575 bytes long; the limit is 1024 bytes",
        ),
        (
            "state",
            "the state is 1048576 bytes; the limit is 65536 bytes",
        ),
    ];
    for (what, text) in cases {
        let err = module
            .evaluate(&context(0, json!({ "what": what }), 1))
            .unwrap_err();
        assert_eq!(err.kind, EvalErrorKind::InvalidDecision, "{what}");
        assert!(err.message.contains(text), "{what}: {}", err.message);
    }
    // A host with a higher ceiling accepts a count below it.
    let lenient = Runtime::new(RuntimeLimits {
        max_replicas: u32::MAX,
        ..RuntimeLimits::default()
    })
    .unwrap()
    .load_file(Path::new(artifacts::ABSURD))
    .unwrap();
    let d = lenient.evaluate(&context(0, json!({}), 1)).unwrap();
    assert_eq!(d.desired, Some(u32::MAX));
}

#[test]
fn a_context_the_contract_forbids_is_refused_before_the_call() {
    let module = load(artifacts::FAULTS);
    let mut ctx = fault("ok");
    ctx.parameters = json!(["ok"]);
    let err = module.evaluate(&ctx).unwrap_err();
    assert_eq!(err.kind, EvalErrorKind::InvalidContext);
    assert!(
        err.message.contains("parameters must be a JSON object"),
        "{}",
        err.message
    );
}

#[test]
fn a_module_outlives_its_runtime_handle() {
    let module = {
        let rt = Runtime::new(RuntimeLimits {
            timeout: Duration::from_millis(200),
            ..RuntimeLimits::default()
        })
        .unwrap();
        rt.load_file(Path::new(artifacts::FAULTS)).unwrap()
    };
    // The epoch ticker still runs: the deadline still fires.
    let err = module.evaluate(&fault("loop")).unwrap_err();
    assert_eq!(err.kind, EvalErrorKind::Timeout);
}

#[test]
fn evaluations_run_in_parallel_on_one_module() {
    let module = load(artifacts::BENCH_HPA);
    let ctx = context(1_000_000, json!({"metric": "cpu", "target": 30}), 100);
    let expected = module.evaluate(&ctx).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..100 {
                    assert_eq!(module.evaluate(&ctx).unwrap(), expected);
                }
            });
        }
    });
}

#[test]
fn loads_know_digest_and_info() {
    let module = load(artifacts::FAULTS);
    let bytes = std::fs::read(artifacts::FAULTS).unwrap();
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    assert_eq!(module.digest(), digest);
    assert_eq!(module.name(), "faults");
    let info = module.info();
    assert_eq!(info.name, "faults");
    assert_eq!(info.version, "0.1.0");
    assert_eq!(info.parameters.len(), 1);
    assert_eq!(info.parameters[0].name, "mode");
    assert_eq!(info.parameters[0].default, Some(json!("ok")));
    module.instantiate_check().unwrap();
}

/// The bundled policies start with a small memory that already has enough
/// heap for a 1,000-sample window (policies/.cargo/config.toml): without the
/// initial heap every evaluation grows the memory once, and the host
/// re-protects the grown pages before the slot is reused, ~4–5 µs per
/// evaluation; with Rust's default 1 MiB stack the slot's reset scans a
/// memory four times as large (tests/benches/runtime.rs).
#[test]
fn bundled_policies_evaluate_without_growing_their_memory() {
    let cases = [
        (
            artifacts::TARGET_TRACKING,
            json!({"metric": "cpu", "target": 50.0, "aggregate": "mean"}),
        ),
        (
            artifacts::THRESHOLD,
            json!({"metric": "cpu", "upper": 70.0, "lower": 30.0}),
        ),
    ];
    for (path, params) in cases {
        let module = load(path);
        let (decision, usage) =
            module.evaluate_with_usage(&context(1_700_000_000_000, params, 1_000));
        decision.unwrap();
        assert_eq!(usage.memory_growths, 0, "{path}: {usage:?}");
        assert!(usage.memory_bytes <= 512 << 10, "{path}: {usage:?}");
    }
    // The count is real: a policy that allocates past its heap grows it,
    // and the largest size it reached is reported (under load()'s generous
    // deadline: filling memory must hit the limit, not the deadline).
    let module = load(artifacts::FAULTS);
    let (result, usage) = module.evaluate_with_usage(&fault("oom"));
    assert_eq!(result.unwrap_err().kind, EvalErrorKind::OutOfMemory);
    assert!(usage.memory_growths > 0, "{usage:?}");
    assert!(usage.memory_bytes > 4 << 20, "{usage:?}");
    assert!(
        usage.memory_bytes <= RuntimeLimits::default().max_memory.as_u64(),
        "{usage:?}"
    );
}

fn load_error(bytes: &[u8]) -> LoadError {
    runtime()
        .load("under-test", bytes)
        .expect_err("the module must be refused")
}

#[test]
fn a_module_of_another_wit_version_is_refused_naming_both() {
    let bytes = std::fs::read(artifacts::WRONG_VERSION).unwrap();
    let err = load_error(&bytes);
    assert!(
        matches!(&err, LoadError::WrongWitVersion { found, expected }
            if found == &["0.2.0"] && *expected == WIT_VERSION),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("scalewise:policy/evaluator@0.2.0"), "{text}");
    assert!(text.contains("@0.1.0"), "{text}");
}

#[test]
fn corrupt_and_foreign_bytes_are_refused() {
    let good = std::fs::read(artifacts::FAULTS).unwrap();
    let truncated = &good[..good.len() / 2];
    let mut flipped = good.clone();
    for b in &mut flipped[100..400] {
        *b ^= 0xa5;
    }
    let core = wat::parse_str("(module (func (export \"f\")))").unwrap();
    let cases: [(&[u8], &str, &str); 5] = [
        (
            b"",
            "not_a_component",
            "does not start with the Wasm magic bytes",
        ),
        (b"#!/bin/sh\necho hi\n", "not_a_component", "magic bytes"),
        (&core, "not_a_component", "core Wasm module"),
        (truncated, "compile", "does not compile"),
        (&flipped, "compile", "does not compile"),
    ];
    for (bytes, kind, text) in cases {
        let err = load_error(bytes);
        assert_eq!(err.kind(), kind, "{err}");
        assert!(err.to_string().contains(text), "{err}");
    }
}

#[test]
fn components_that_are_not_policies_are_refused() {
    let empty = wat::parse_str("(component)").unwrap();
    let err = load_error(&empty);
    assert_eq!(err.kind(), "missing_export");
    assert!(err.to_string().contains("its exports: none"), "{err}");

    // Exports the interface name, but `describe` has the wrong type.
    let bad_export = wat::parse_str(
        r#"(component
            (core module $m (func (export "f") (result i32) i32.const 1))
            (core instance $i (instantiate $m))
            (func $describe (result u32) (canon lift (core func $i "f")))
            (instance $evaluator (export "describe" (func $describe)))
            (export "scalewise:policy/evaluator@0.1.0" (instance $evaluator)))"#,
    )
    .unwrap();
    let err = load_error(&bad_export);
    assert_eq!(err.kind(), "bad_export", "{err}");

    // Wants an import the host never gives a policy.
    let wants_http = wat::parse_str(
        r#"(component
            (import "wasi:http/outgoing-handler@0.2.0" (instance
                (export "handle" (func))))
            (core module $m (func (export "f") (result i32) i32.const 1))
            (core instance $i (instantiate $m))
            (func $describe (result u32) (canon lift (core func $i "f")))
            (instance $evaluator (export "describe" (func $describe)))
            (export "scalewise:policy/evaluator@0.1.0" (instance $evaluator)))"#,
    )
    .unwrap();
    let err = load_error(&wants_http);
    assert_eq!(err.kind(), "unsupported_imports", "{err}");
    assert!(
        matches!(&err, LoadError::UnsupportedImports { imports, .. }
            if imports == &["wasi:http/outgoing-handler@0.2.0"]),
        "{err:?}"
    );
}

#[test]
fn describe_must_work_and_make_sense() {
    let panics = std::fs::read(artifacts::DESCRIBE_PANICS).unwrap();
    let err = load_error(&panics);
    assert!(
        matches!(&err, LoadError::DescribeFailed { kind: EvalErrorKind::Trap, message }
            if message.contains("describe-panics will not say what it is")),
        "{err:?}"
    );
    let bad_info = std::fs::read(artifacts::BAD_INFO).unwrap();
    let err = load_error(&bad_info);
    assert_eq!(err.kind(), "invalid_info");
    assert!(
        err.to_string()
            .contains("parameter \"target\" is declared twice"),
        "{err}"
    );
    // 30 MiB of descriptions: refused before the host copies it all.
    let huge = std::fs::read(artifacts::HUGE_INFO).unwrap();
    let err = load_error(&huge);
    assert!(
        matches!(&err, LoadError::DescribeFailed { kind: EvalErrorKind::InvalidDecision, message }
            if message.contains("handed the host more than")),
        "{err:?}"
    );
}

#[test]
fn every_policy_and_fixture_loads_except_the_broken_ones() {
    // (big-memory loads only under a memory limit above the default.)
    let broken = [
        "wrong-version",
        "bad-info",
        "describe-panics",
        "huge-info",
        "big-memory",
    ];
    let rt = runtime();
    for (name, path) in artifacts::ALL {
        let result = rt.load_file(Path::new(path));
        assert_eq!(
            result.is_err(),
            broken.contains(name),
            "{name}: {:?}",
            result.err()
        );
    }
}

/// One event logged to the policy target: its fields as text.
#[derive(Debug, Default)]
struct LogEvent {
    level: Option<tracing::Level>,
    fields: std::collections::BTreeMap<String, String>,
}

impl tracing::field::Visit for LogEvent {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.fields
            .insert(field.name().to_string(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.fields
            .insert(field.name().to_string(), value.to_string());
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.fields
            .insert(field.name().to_string(), value.to_string());
    }
}

/// Collects the events logged to the policy target while `f` runs.
fn policy_log(f: impl FnOnce()) -> Vec<LogEvent> {
    struct Collect(Arc<Mutex<Vec<LogEvent>>>);
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Collect {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            if event.metadata().target() == POLICY_LOG_TARGET {
                let mut e = LogEvent {
                    level: Some(*event.metadata().level()),
                    ..LogEvent::default()
                };
                event.record(&mut e);
                self.0.lock().unwrap().push(e);
            }
        }
    }
    use tracing_subscriber::layer::SubscriberExt as _;
    let events = Arc::new(Mutex::new(Vec::new()));
    let subscriber = tracing_subscriber::registry().with(Collect(Arc::clone(&events)));
    tracing::subscriber::with_default(subscriber, f);
    std::mem::take(&mut *events.lock().unwrap())
}

#[test]
fn a_failed_calls_stderr_is_in_its_error_not_repeated_as_a_warning() {
    let module = load(artifacts::FAULTS);
    let mut err = None;
    let events = policy_log(|| err = module.evaluate(&fault("panic")).err());
    let err = err.expect("the panic fails the call");
    assert!(err.message.contains("panics on purpose"), "{}", err.message);
    // At the debug level only: the scaler logs the error (with this text)
    // when the failure starts or changes, not on every tick.
    let stderr: Vec<_> = events
        .iter()
        .filter(|e| e.fields.get("stream").map(String::as_str) == Some("stderr"))
        .collect();
    assert_eq!(stderr.len(), 1);
    assert_eq!(stderr[0].level, Some(tracing::Level::DEBUG));
    // A policy that writes to stderr and then refuses: its error is what
    // it returned, followed by what it wrote; nothing at WARN.
    let mut err = None;
    let events = policy_log(|| err = module.evaluate(&fault("complain")).err());
    let err = err.expect("the policy refuses");
    assert_eq!(err.kind, EvalErrorKind::PolicyError);
    assert_eq!(
        err.message,
        "the faults fixture refuses after complaining\npolicy stderr:\n\
         the faults fixture complains on stderr at 3"
    );
    assert!(
        events
            .iter()
            .all(|e| e.level == Some(tracing::Level::DEBUG)),
        "{events:?}"
    );
    // A call that succeeds still sends its output to the log as it is.
    let events = policy_log(|| {
        module.evaluate(&fault("print-flood")).unwrap();
    });
    assert!(
        events
            .iter()
            .all(|e| e.level != Some(tracing::Level::DEBUG))
    );
}

#[test]
fn policy_logs_are_tagged_and_bounded() {
    let module = load(artifacts::FAULTS);
    let events = policy_log(|| {
        module.evaluate(&fault("log-flood")).unwrap();
    });
    // 64 messages kept, plus one saying the rest were dropped.
    assert_eq!(events.len(), 65, "{} events", events.len());
    for e in &events[..64] {
        assert_eq!(e.fields["module"], "faults");
        assert_eq!(e.fields["scaler"], "web");
        let message = &e.fields["message"];
        assert!(message.ends_with("[6144 bytes cut]"), "cut at 4 KiB");
        assert!(message.starts_with(&"x".repeat(4096)));
    }
    assert_eq!(events[64].fields["dropped"], "936");
}

#[test]
fn policy_output_is_captured_and_bounded() {
    let module = load(artifacts::FAULTS);
    let events = policy_log(|| {
        module.evaluate(&fault("print-flood")).unwrap();
    });
    let streams: Vec<&str> = events.iter().map(|e| e.fields["stream"].as_str()).collect();
    assert_eq!(streams, ["stdout", "stderr"]);
    for e in &events {
        let message = &e.fields["message"];
        assert!(message.contains(" bytes dropped] …"), "bounded");
        assert!(message.len() < 17 * 1024, "{} bytes", message.len());
        assert_eq!(e.fields["module"], "faults");
    }
}
