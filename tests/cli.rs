//! `scalewise check` and `scalewise eval`: in-process through
//! `scalewise::cli::run_cli`, and through the real binary.

use std::path::Path;
use std::process::Command;

use scalewise::journal::{Evaluation, EvaluationOutcome};
use scalewise::runtime::outcome_of;
use scalewise_tests::{artifacts, cli, context, data_dir, load, policy_dir};
use serde_json::{Value, json};

fn write_json(dir: &Path, name: &str, value: &impl serde::Serialize) -> String {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    path.display().to_string()
}

#[test]
fn check_prints_what_each_module_says() {
    let (code, out, err) = cli(&["check", artifacts::FAULTS, artifacts::BENCH_HPA]);
    assert_eq!(code, 0, "{err}");
    let digest = load(artifacts::FAULTS).digest().to_string();
    for text in [
        &format!("{}: ok", artifacts::FAULTS),
        "  name         faults",
        "  version      0.1.0",
        "  description  Misbehaves on request (runtime test fixture).",
        &format!("  digest       sha256:{digest}"),
        "NAME       KIND    REQUIRED  DEFAULT  DESCRIPTION",
        "metric     metric  yes       -        The metric.",
        "tolerance  number  no        0.1      No change",
    ] {
        assert!(out.contains(text), "missing {text:?} in\n{out}");
    }
}

#[test]
fn check_fails_naming_the_file_and_the_problem() {
    let (code, out, err) = cli(&["check", artifacts::FAULTS, artifacts::WRONG_VERSION]);
    assert_eq!(code, 1);
    assert!(
        out.contains("name         faults"),
        "the good one is still shown: {out}"
    );
    assert!(
        err.contains(&format!(
            "error: {}: the module exports scalewise:policy/evaluator@0.2.0",
            artifacts::WRONG_VERSION
        )),
        "{err}"
    );
    assert!(err.contains("1 of 2 modules failed to load"), "{err}");

    let (code, _, err) = cli(&["check", "/no/such/module.wasm"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read /no/such/module.wasm"), "{err}");
}

/// What a module prints when its describe() fails is its own text: written
/// escaped, it cannot drive the operator's terminal (clear it, reorder
/// what they read).
#[test]
fn a_modules_own_words_in_an_error_do_not_drive_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = write_json(dir.path(), "ctx.json", &context(5, json!({}), 1));
    for args in [
        vec!["check", artifacts::DESCRIBE_PANICS],
        vec!["eval", artifacts::DESCRIBE_PANICS, "--context", &ctx],
    ] {
        let (code, out, err) = cli(&args);
        assert_eq!(code, 1, "{args:?}");
        assert!(err.contains("will not say what it is"), "{args:?}: {err}");
        for raw in ['\x1b', '\u{202e}'] {
            assert!(
                !out.contains(raw) && !err.contains(raw),
                "{args:?}: {raw:?} in {err:?}"
            );
        }
        assert!(err.contains("\\u{1b}[2J\\u{202e}"), "{args:?}: {err}");
    }
}

#[test]
fn eval_prints_the_decision_as_json() {
    let example = data_dir().join("contexts").join("example.json");
    let ctx = example.to_str().unwrap();
    let (code, out, err) = cli(&["eval", artifacts::BENCH_HPA, "--context", ctx]);
    assert_eq!(code, 0, "{err}");
    let decision: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(decision["desired"], 5, "{out}");
    assert!(
        decision["reason"]
            .as_str()
            .unwrap()
            .contains("vs target 60"),
        "{out}"
    );

    // --params overrides the file's parameters.
    let (code, out, _) = cli(&[
        "eval",
        artifacts::BENCH_HPA,
        "--context",
        ctx,
        "--params",
        "target=200",
        "tolerance=0.5",
    ]);
    assert_eq!(code, 0);
    let decision: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(decision["desired"], 2, "{out}");
}

#[test]
fn a_module_larger_than_the_memory_limit_is_refused_in_our_words() {
    // wasmtime's own text, not a copy of it: the parser that rewords it
    // must keep up with the wasmtime in use.
    let example = data_dir().join("contexts").join("example.json");
    let (code, out, err) = cli(&[
        "eval",
        artifacts::FAULTS,
        "--context",
        example.to_str().unwrap(),
        "--max-memory",
        "1MiB",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("the module's memory starts at "), "{err}");
    assert!(
        err.contains(
            " bytes), more than the memory limit of 1.0 MiB (runtime.max_memory, or --max-memory)"
        ),
        "{err}"
    );
}

#[test]
fn eval_usage_reports_the_memory_the_call_used() {
    let example = data_dir().join("contexts").join("example.json");
    let ctx = example.to_str().unwrap();
    let (code, _, err) = cli(&["eval", artifacts::BENCH_HPA, "--context", ctx]);
    assert_eq!((code, err.as_str()), (0, ""), "no usage line unless asked");

    let (code, out, err) = cli(&[
        "eval",
        artifacts::BENCH_HPA,
        "--context",
        ctx,
        "--usage",
        "--max-memory",
        "32MiB",
    ]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<Value>(&out).expect("stdout is still the decision alone");
    // 7 pages: a 128 KiB stack, the data and the 256 KiB initial heap.
    assert_eq!(
        err.trim_end(),
        "usage: memory 448.0 KiB at its largest (limit 32.0 MiB), grown 0 times during the call"
    );

    let dir = tempfile::tempdir().unwrap();
    let ctx = write_json(dir.path(), "ctx.json", &context(5, json!({}), 1));
    let (code, _, err) = cli(&[
        "eval",
        artifacts::FAULTS,
        "--context",
        &ctx,
        "--params",
        "mode=oom",
        "--usage",
        "--max-memory",
        "16MiB",
        "--timeout",
        "1s",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("(limit 16.0 MiB), grown "), "{err}");
    assert!(!err.contains("grown 0 times"), "{err}");

    // With fuel metering on, the fuel burned too (a count, not a time: the
    // same call burns the same fuel every time).
    let example = data_dir().join("contexts").join("example.json");
    let ctx = example.to_str().unwrap();
    let usage = |fuel: &str| {
        let (code, _, err) = cli(&[
            "eval",
            artifacts::BENCH_HPA,
            "--context",
            ctx,
            "--usage",
            "--fuel",
            fuel,
        ]);
        assert_eq!(code, 0, "{err}");
        err.trim_end()
            .rsplit_once(", fuel ")
            .unwrap_or_else(|| panic!("no fuel in {err:?}"))
            .1
            .to_owned()
    };
    let used = usage("10000000");
    let (burned, limit) = used.split_once(" of ").unwrap();
    assert_eq!(limit, "10000000");
    let burned: u64 = burned.parse().unwrap();
    assert!(burned > 1_000 && burned < 10_000_000, "{used}");
    assert_eq!(usage("10000000"), used);
}

#[test]
fn eval_prints_an_evaluation_error_as_json_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = write_json(dir.path(), "ctx.json", &context(5, json!({}), 1));
    let (code, out, _) = cli(&[
        "eval",
        artifacts::FAULTS,
        "--context",
        &ctx,
        "--params",
        "mode=loop",
        "--timeout",
        "20ms",
    ]);
    assert_eq!(code, 1);
    let error: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(error["error"]["kind"], "timeout", "{out}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("20ms deadline")
    );
}

#[test]
fn eval_refuses_a_bad_context_file_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.json");
    std::fs::write(&typo, r#"{"now_ms": 1, "target": {"kind": "k", "name": "n", "current": 1, "ready": 1, "min": 1, "max": 2}, "paramters": {}}"#).unwrap();
    let (code, _, err) = cli(&[
        "eval",
        artifacts::FAULTS,
        "--context",
        typo.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("typo.json: not a valid context: paramters: unknown field `paramters`"),
        "{err}"
    );
}

#[test]
fn eval_checks_params_against_what_the_module_declares() {
    let dir = tempfile::tempdir().unwrap();
    // The file's parameters are target-tracking's: faults only warns.
    let ctx = write_json(
        dir.path(),
        "ctx.json",
        &context(5, json!({"metric": "cpu"}), 1),
    );
    let (code, out, err) = cli(&["eval", artifacts::FAULTS, "--context", &ctx]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"desired\""), "{out}");
    assert!(
        err.contains("warning:")
            && err.contains("unknown parameter \"metric\"; faults accepts: mode (left out;"),
        "{err}"
    );
    // Left out of the call: a policy that checks its parameters (the SDK's
    // threshold) decides on one example context made for another policy.
    let (code, out, err) = cli(&[
        "eval",
        artifacts::THRESHOLD,
        "--context",
        &ctx,
        "--params",
        "upper=80",
        "lower=20",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("\"reason\""), "{out}");
    // A misspelt --params is refused, as config load would refuse it.
    let (code, out, err) = cli(&[
        "eval",
        artifacts::FAULTS,
        "--context",
        &ctx,
        "--params",
        "mod=loop",
    ]);
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("error: --params: unknown parameter \"mod\"; faults accepts: mode"),
        "{err}"
    );
    // So is a value of the wrong kind.
    let (code, _, err) = cli(&[
        "eval",
        artifacts::TARGET_TRACKING,
        "--context",
        &ctx,
        "--params",
        "target=high",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--params: target: expected a number, got text \"high\""),
        "{err}"
    );
}

/// A parameter the context leaves out (or gives as null) reaches the
/// policy with the default its `describe()` declares, as the daemon hands
/// it; one given is kept.
#[test]
fn eval_fills_in_the_declared_defaults_as_the_daemon_does() {
    let dir = tempfile::tempdir().unwrap();
    for (parameters, seen) in [
        (json!({}), r#"{"label":"probe"}"#),
        (json!({"label": null}), r#"{"label":"probe"}"#),
        (json!({"label": "mine"}), r#"{"label":"mine"}"#),
    ] {
        let ctx = write_json(dir.path(), "ctx.json", &context(5, parameters.clone(), 1));
        let (code, out, err) = cli(&["eval", artifacts::SANDBOX_PROBE, "--context", &ctx]);
        assert_eq!(code, 0, "{err}");
        let decision: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            decision["reason"],
            format!("probed the sandbox (parameters {seen})"),
            "{parameters}"
        );
    }
}

/// A journal evaluation of the module at `path` (default limits), as the
/// control loop writes it.
fn recorded(path: &str, parameters: Value) -> Evaluation {
    recorded_by(&load(path), parameters, 30)
}

/// A journal evaluation by `module`, with its limits, of a context with
/// `points` samples.
fn recorded_by(
    module: &scalewise::runtime::PolicyModule,
    parameters: Value,
    points: usize,
) -> Evaluation {
    let ctx = context(1_700_000_000_000, parameters, points);
    Evaluation {
        module: module.name().to_string(),
        digest: Some(module.shared_digest()),
        outcome: outcome_of(module.evaluate(&ctx)),
        context: ctx,
        duration_us: 42,
        load_error: None,
        limits: module.recorded_limits(),
        abstained: false,
    }
}

#[test]
fn eval_against_a_record_reproduces_it() {
    let dir = tempfile::tempdir().unwrap();
    let evaluation = recorded(artifacts::BENCH_HPA, json!({"metric": "cpu", "target": 20}));
    assert!(matches!(
        evaluation.outcome,
        EvaluationOutcome::Decided { .. }
    ));
    let file = write_json(dir.path(), "evaluation.json", &evaluation);
    let (code, out, err) = cli(&["eval", artifacts::BENCH_HPA, "--context", &file]);
    assert_eq!(code, 0, "{out}\n{err}");
    let replay: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(replay["outcome_matches"], true);
    assert_eq!(replay["digest_matches"], true);
    assert_eq!(replay["outcome"], replay["recorded"]);
    assert!(err.contains("the answer matches the record"), "{err}");

    // A failure replays as the same kind of failure.
    let failed = recorded(artifacts::FAULTS, json!({"mode": "panic"}));
    let file = write_json(dir.path(), "failed.json", &failed);
    let (code, out, _) = cli(&["eval", artifacts::FAULTS, "--context", &file]);
    assert_eq!(code, 0, "{out}");

    // A tick whose module was not there ran nothing: the replay says so,
    // rather than only that the digests differ.
    let mut unavailable = recorded(artifacts::BENCH_HPA, json!({"metric": "cpu", "target": 20}));
    unavailable.digest = None;
    unavailable.outcome = EvaluationOutcome::Failed {
        kind: "module_unavailable".into(),
        error: "module \"bench-hpa\" was deleted".into(),
    };
    let file = write_json(dir.path(), "unavailable.json", &unavailable);
    let (code, _, err) = cli(&["eval", artifacts::BENCH_HPA, "--context", &file]);
    assert_eq!(code, 1);
    assert!(
        err.contains("the record's evaluation ran no module"),
        "{err}"
    );
}

#[test]
fn a_record_replays_under_the_limits_it_ran_under() {
    // A scaler whose config gives little fuel: target-tracking runs out.
    let limits = scalewise::config::RuntimeLimits {
        fuel: 20_000,
        ..Default::default()
    };
    let module = scalewise::runtime::Runtime::new(limits)
        .unwrap()
        .load_file(Path::new(artifacts::TARGET_TRACKING))
        .unwrap();
    let evaluation = recorded_by(
        &module,
        json!({"metric": "cpu", "target": 50, "aggregate": "p95"}),
        1000,
    );
    let EvaluationOutcome::Failed { kind, .. } = &evaluation.outcome else {
        panic!("{:?}", evaluation.outcome);
    };
    assert_eq!(kind, "out_of_fuel");
    assert_eq!(evaluation.limits.as_ref().unwrap().fuel, 20_000);

    let dir = tempfile::tempdir().unwrap();
    let file = write_json(dir.path(), "evaluation.json", &evaluation);
    let (code, out, err) = cli(&["eval", artifacts::TARGET_TRACKING, "--context", &file]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("the answer matches the record"), "{err}");
    // A flag still overrides what was recorded.
    let (code, out, _) = cli(&[
        "eval",
        artifacts::TARGET_TRACKING,
        "--context",
        &file,
        "--fuel",
        "0",
    ]);
    assert_eq!(code, 1, "{out}");
    let replay: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(replay["outcome_matches"], false);
}

#[test]
fn eval_against_a_record_reports_a_different_answer_or_module() {
    let dir = tempfile::tempdir().unwrap();
    let good = recorded(artifacts::BENCH_HPA, json!({"metric": "cpu", "target": 20}));

    let mut other_answer = good.clone();
    other_answer.outcome = EvaluationOutcome::Decided {
        decision: scalewise::policy::Decision {
            desired: Some(1),
            reason: "made up".into(),
            state: None,
        },
    };
    let file = write_json(dir.path(), "answer.json", &other_answer);
    let (code, out, err) = cli(&["eval", artifacts::BENCH_HPA, "--context", &file]);
    assert_eq!(code, 1);
    let replay: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            replay["outcome_matches"].clone(),
            replay["digest_matches"].clone()
        ),
        (json!(false), json!(true))
    );
    assert!(err.contains("the answer DIFFERS FROM the record"), "{err}");

    let mut other_module = good.clone();
    other_module.digest = Some("0".repeat(64).into());
    let file = write_json(dir.path(), "module.json", &other_module);
    let (code, out, err) = cli(&["eval", artifacts::BENCH_HPA, "--context", &file]);
    assert_eq!(code, 1);
    let replay: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            replay["outcome_matches"].clone(),
            replay["digest_matches"].clone()
        ),
        (json!(true), json!(false))
    );
    // Both digests named, so the module that ran then can be found.
    let now = &replay["digest"].as_str().unwrap()[..12];
    assert!(
        err.contains(&format!(
            "the module digest {now} DIFFERS FROM the recorded one, 000000000000"
        )),
        "{err}"
    );

    // --params would change the recorded context: refused.
    let file = write_json(dir.path(), "good.json", &good);
    let (code, _, err) = cli(&[
        "eval",
        artifacts::BENCH_HPA,
        "--context",
        &file,
        "--params",
        "target=1",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--params cannot be used with a journal record"),
        "{err}"
    );
}

#[test]
fn eval_finds_its_evaluation_in_a_tick_record() {
    let dir = tempfile::tempdir().unwrap();
    let hpa = recorded(artifacts::BENCH_HPA, json!({"metric": "cpu", "target": 20}));
    let faults = recorded(artifacts::FAULTS, json!({"mode": "ok"}));
    let tick = json!({
        "id": 7, "time_ms": 1_700_000_000_000i64, "scaler": "web", "mode": "dry-run",
        "target": hpa.context.target,
        "evaluations": [faults, hpa],
        "proposal": 4, "desired": 4, "recommendation": 4,
        "actuation": {"status": "dry-run"}
    });
    let file = write_json(dir.path(), "tick.json", &tick);
    let (code, out, err) = cli(&["eval", artifacts::BENCH_HPA, "--context", &file]);
    assert_eq!(code, 0, "{out}\n{err}");
    let replay: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(replay["module"], "bench_hpa", "the file stem");
    assert_eq!(replay["outcome"]["status"], "decided");
}

#[test]
fn the_demo_without_its_policies_says_how_to_build_them() {
    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path().to_str().unwrap();
    let (code, _, err) = cli(&["run", "--policy-dir", dir]);
    assert_eq!(code, 1);
    assert!(err.contains("bundled policy modules"), "{err}");
    assert!(err.contains("scripts/build-policies"), "{err}");
}

/// A journal the daemon cannot open is refused naming the config's field
/// (here its folder's place is taken by a file), and nothing is started.
#[test]
fn a_journal_that_cannot_be_opened_names_the_configs_field() {
    let dir = tempfile::tempdir().unwrap();
    let policies = policy_dir(&[("target-tracking", artifacts::TARGET_TRACKING)]);
    std::fs::write(dir.path().join("taken"), "a file").unwrap();
    let config = format!(
        "policy_dir = {:?}\n\n[journal]\npath = \"taken/journal.db\"\n\n{}{}",
        policies.path(),
        scalewise_tests::running::simulation("web", 2),
        scalewise_tests::running::queue_scaler("web", "simulator", "queue_depth")
    );
    let path = dir.path().join("scalewise.toml");
    std::fs::write(&path, config).unwrap();
    let path = path.to_str().unwrap();
    let (code, _, err) = cli(&["run", "--config", path, "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("{path}: [journal] path: ")) && err.contains("taken"),
        "{err}"
    );
    // A backtest's journal is its --journal, not the file's.
    let journal = dir.path().join("taken/run.db");
    let (code, _, err) = cli(&[
        "simulate",
        "--config",
        path,
        "--for",
        "1m",
        "--journal",
        journal.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("the simulation's journal: ") && !err.contains("[journal] path"),
        "{err}"
    );
}

/// The `scalewise` binary: this crate's `scalewise-cli`, built by cargo
/// from the host's own `main.rs` along with these tests.
fn scalewise_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_scalewise-cli"))
}

#[test]
fn the_binary_checks_and_evaluates() {
    let bin = scalewise_bin();
    let check = Command::new(bin)
        .args(["check", artifacts::FAULTS])
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&check.stdout).contains("name         faults"));

    let bad = Command::new(bin)
        .args(["check", artifacts::WRONG_VERSION])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("evaluator@0.2.0"));

    let example = data_dir().join("contexts").join("example.json");
    let eval = Command::new(bin)
        .args(["eval", artifacts::BENCH_HPA, "--context"])
        .arg(&example)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(
        eval.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let decision: Value = serde_json::from_slice(&eval.stdout).expect("stdout is only JSON");
    assert_eq!(decision["desired"], 5);

    let empty = tempfile::tempdir().unwrap();
    let run = Command::new(bin)
        .args(["run", "--policy-dir"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains("bundled policy modules"));

    let usage = Command::new(bin)
        .args(["eval", artifacts::FAULTS])
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(2), "clap's usage error");
    assert!(String::from_utf8_lossy(&usage.stderr).contains("--context"));
}

#[test]
fn the_binary_sends_policy_logs_to_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = write_json(
        dir.path(),
        "ctx.json",
        &context(5, json!({"mode": "print-flood"}), 1),
    );
    let out = Command::new(scalewise_bin())
        // 2 MiB of output through the host's writes: a deadline a starved
        // machine meets.
        .args([
            "eval",
            artifacts::FAULTS,
            "--context",
            &ctx,
            "--timeout",
            "10s",
        ])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("scalewise::policy"), "{stderr}");
    let decision: Value = serde_json::from_slice(&out.stdout).expect("stdout is only JSON");
    assert_eq!(decision["reason"], "printed a lot");
}

/// The bundled policies under their module names, as `scripts/build-policies`
/// leaves them in `policies/dist`.
fn bundled() -> tempfile::TempDir {
    scalewise_tests::policy_dir(&[
        ("target-tracking", artifacts::TARGET_TRACKING),
        ("threshold", artifacts::THRESHOLD),
    ])
}

#[test]
fn the_binary_runs_the_demo() {
    let policies = bundled();
    let out = Command::new(scalewise_bin())
        .args([
            "run",
            "--for",
            "6s",
            "--listen",
            "127.0.0.1:0",
            "--policy-dir",
        ])
        .arg(policies.path())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Scalewise demo: two simulated services"),
        "{stdout}"
    );
    // Its own line per decision, not the log's too (RUST_LOG does not name
    // the scale target).
    assert!(!stderr.contains("Scaled: "), "{stderr}");
    // It ends saying where its journal stays, and the journal is there.
    let last = stdout.lines().last().unwrap_or_default();
    let journal = last
        .strip_prefix("The demo's journal stays at ")
        .and_then(|rest| rest.split_once(": "))
        .map(|(path, _)| std::path::PathBuf::from(path))
        .unwrap_or_else(|| panic!("last line: {last:?}"));
    assert!(journal.is_file(), "{}", journal.display());
    let _ = std::fs::remove_dir_all(journal.parent().unwrap());
    // The demo's clock runs 10x: 6s shows the first ticks of both scalers
    // (in the first simulated minute), one line per decision.
    for scaler in ["web", "worker"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("sim 00:00:") && l.contains(&format!(" {scaler} "))),
            "no decision line for {scaler}:\n{stdout}"
        );
    }
}

/// A valid config: one simulated service scaled by target tracking.
const GOOD: &str = r#"policy_dir = "{policies}"

[journal]
path = "{journal}"

[simulations.web]
capacity_per_replica = 100.0
initial_replicas = 2
load = { base = 100.0 }

[[scalers]]
name = "web"
interval = "15s"
min = 1
max = 5
target = { kind = "simulator", service = "web" }
metrics.cpu = { source = "simulator", query = "cpu" }

[[scalers.policies]]
module = "target-tracking"
params = { metric = "cpu", target = 60.0 }
"#;

/// Runs `scalewise run --config` on `text` (with `{policies}` and
/// `{journal}` filled in): (exit code, stderr, the file's path).
fn run_config(text: &str) -> (Option<i32>, String, String) {
    run_config_logging(text, "error")
}

/// [`run_config`], logging what `RUST_LOG=filter` lets through.
fn run_config_logging(text: &str, filter: &str) -> (Option<i32>, String, String) {
    let policies = scalewise_tests::policy_dir(&[("target-tracking", artifacts::TARGET_TRACKING)]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scalewise.toml");
    let text = text
        .replace("{policies}", &policies.path().display().to_string())
        .replace(
            "{journal}",
            &dir.path().join("journal.db").display().to_string(),
        );
    std::fs::write(&path, text).unwrap();
    // --for: a config wrongly accepted stops instead of running on.
    let out = Command::new(scalewise_bin())
        .args(["run", "--for", "1s", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .env("RUST_LOG", filter)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

/// The demo binds its port before it compiles or writes anything: a port in
/// use refuses it at once, naming the flag, and leaves no demo folder.
#[test]
fn a_port_in_use_refuses_the_demo_before_it_writes_anything() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let child = Command::new(scalewise_bin())
        .args(["run", "--for", "5s", "--listen", &addr.to_string()])
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on {addr} (--listen): ")),
        "{err}"
    );
    let demo_dir = std::env::temp_dir().join(format!("scalewise-demo-{pid}"));
    assert!(!demo_dir.exists(), "{} left behind", demo_dir.display());
}

#[test]
fn a_port_in_use_refuses_the_start_naming_the_setting_and_leaves_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let policies = scalewise_tests::policy_dir(&[("target-tracking", artifacts::TARGET_TRACKING)]);
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.db");
    let path = dir.path().join("scalewise.toml");
    let text = GOOD
        .replace("{policies}", &policies.path().display().to_string())
        .replace("{journal}", &journal.display().to_string())
        + &format!("\n[api]\nlisten = \"{addr}\"\n");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(scalewise_bin())
        .args(["run", "--for", "1s", "--config"])
        .arg(&path)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot listen on {addr} (api.listen in {}): ",
            path.display()
        )),
        "{err}"
    );
    assert!(!journal.exists(), "nothing written before the refusal");
    assert!(!dir.path().join("scalewise-cache").exists());

    // --policy-dir is the demo's: with --config it is refused, not ignored.
    let out = Command::new(scalewise_bin())
        .args(["run", "--policy-dir", "elsewhere", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(taken);
}

#[test]
fn a_restart_at_a_faster_clock_resumes_after_the_journal() {
    // A run at 100x dates its records up to 100 s ahead of the wall clock;
    // the next run must not write its ticks before them (its windows and
    // cooldowns would come from its own future).
    let policies = scalewise_tests::policy_dir(&[("target-tracking", artifacts::TARGET_TRACKING)]);
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.db");
    let path = dir.path().join("scalewise.toml");
    let text = GOOD
        .replace("{policies}", &policies.path().display().to_string())
        .replace("{journal}", &journal.display().to_string())
        + "\n[clock]\nspeed = 100.0\n";
    std::fs::write(&path, text).unwrap();
    let run = || {
        let out = Command::new(scalewise_bin())
            .args(["run", "--for", "1s", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    run();
    let second = run();
    assert!(
        second.contains("Simulated time resumes after the journal's newest record"),
        "{second}"
    );
    let journal = scalewise::journal::Journal::open_read_only(&journal).unwrap();
    let mut records = journal
        .query_blocking(&scalewise::journal::Query::latest(1_000))
        .unwrap();
    records.sort_by_key(|r| r.id);
    assert!(records.len() >= 4, "{} records", records.len());
    for pair in records.windows(2) {
        assert!(
            pair[0].time_ms <= pair[1].time_ms,
            "record {} at {} was written after record {} at {}",
            pair[1].id.unwrap(),
            pair[1].time_ms,
            pair[0].id.unwrap(),
            pair[0].time_ms
        );
    }
}

#[test]
fn the_log_has_a_line_per_change_of_replicas() {
    // One replica at 100 % CPU against a target of 60: target tracking
    // scales out on the first tick (the clock runs 100x, 15 s ticks).
    let text =
        GOOD.replace("initial_replicas = 2", "initial_replicas = 1") + "\n[clock]\nspeed = 100.0\n";
    let (code, stderr, _) = run_config_logging(&text, "scalewise::scale=info");
    assert_eq!(code, Some(0), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("Scaled: 1 → 2 — target-tracking: "))
        .unwrap_or_else(|| panic!("no line for the scale-out in\n{stderr}"));
    assert!(line.contains("scaler=web"), "{line}");
}

#[test]
fn the_binary_runs_a_good_config() {
    let (code, stderr, _) = run_config(GOOD);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn the_daemon_compiles_its_modules_in_a_child_process() {
    let (code, stderr, _) = run_config_logging(GOOD, "scalewise::runtime=debug");
    assert_eq!(code, Some(0), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("Compiled a policy module in a child process."))
        .unwrap_or_else(|| panic!("no compiler process in\n{stderr}"));
    // The daemon's own binary, for its one module.
    assert!(line.contains("target-tracking"), "{line}");
    assert!(
        line.contains(&scalewise_bin().display().to_string()),
        "{line}"
    );
    assert!(!stderr.contains("WARN"), "{stderr}");
}

#[test]
fn the_binary_refuses_bad_configs_naming_file_line_and_field() {
    // (what, text replaced, replacement, the problem's line, the message)
    let cases = [
        (
            "unknown field",
            "interval = \"15s\"",
            "intervall = \"15s\"",
            "intervall",
            "scalers[0] \"web\": unknown field \"intervall\", expected one of",
        ),
        (
            "min > max",
            "min = 1",
            "min = 7",
            "min = 7",
            "scalers[0] \"web\": min (7) is greater than max (5)",
        ),
        (
            "unknown policy module",
            "module = \"target-tracking\"",
            "module = \"target-trackin\"",
            "module = ",
            "policies[0] \"target-trackin\": unknown module \"target-trackin\"; loaded modules: target-tracking",
        ),
        (
            "unknown metric",
            "metric = \"cpu\"",
            "metric = \"memory\"",
            "params = ",
            "metric: unknown metric \"memory\"; this scaler's metrics: cpu",
        ),
    ];
    for (what, from, to, at, message) in cases {
        assert!(GOOD.contains(from), "{what}");
        let bad = GOOD.replacen(from, to, 1);
        let line = bad
            .lines()
            .position(|l| l.contains(at))
            .map(|i| i + 1)
            .unwrap();
        let (code, stderr, path) = run_config(&bad);
        assert_eq!(code, Some(1), "{what} is refused: {stderr}");
        let located = format!("error: {path}:{line}:");
        assert!(
            stderr.contains(&located) && stderr.contains(message),
            "{what}: expected {located:?} and {message:?} in\n{stderr}"
        );
    }
}
