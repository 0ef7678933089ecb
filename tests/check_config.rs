//! `scalewise check --config`: a config checked as `scalewise run --config`
//! checks it before starting, against real policy modules, without
//! starting. In-process through `scalewise::cli::run_cli`.

use std::path::Path;

use scalewise::clock::Clock;
use scalewise::config::Config;
use scalewise::daemon::Daemon;
use scalewise_tests::{artifacts, cli, policy_dir};

/// A config with a simulated service scaled by target-tracking and
/// threshold; `extra` is appended to its scaler's `[[scalers.policies]]`
/// list and the rest of the file.
fn config_text(policies: &Path, extra: &str) -> String {
    format!(
        r#"policy_dir = "{policies}"

[journal]
path = "journal.db"

[simulations.web]
capacity_per_replica = 100.0
initial_replicas = 4
[simulations.web.load]
base = 300.0

[[scalers]]
name = "web"
interval = "15s"
min = 2
max = 20
mode = "dry-run"
target = {{ kind = "simulator", service = "web" }}

[scalers.metrics.cpu]
source = "simulator"
query = "cpu"

[[scalers.policies]]
module = "target-tracking"
params = {{ metric = "cpu", target = 60.0 }}

[[scalers.policies]]
module = "threshold"
params = {{ metric = "cpu", upper = 80.0, lower = 20.0 }}
{extra}"#,
        policies = policies.display()
    )
}

fn write(dir: &Path, text: &str) -> String {
    let path = dir.join("scalewise.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The line of `text` (1-based) that holds `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} is not in the config"))
        + 1
}

#[test]
fn a_config_that_runs_passes_and_says_what_it_runs() {
    let modules = policy_dir(&[
        ("target-tracking", artifacts::TARGET_TRACKING),
        ("threshold", artifacts::THRESHOLD),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(modules.path(), "");
    let path = write(dir.path(), &text);

    let (code, out, err) = cli(&["check", "--config", &path]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("{path}: ok\n")), "{out}");
    assert!(
        out.contains(&format!(
            "  policies  {}: target-tracking 0.1.0, threshold 0.1.0",
            modules.path().display()
        )),
        "{out}"
    );
    assert!(
        out.contains(
            "  scaler    web: simulated service \"web\", 2..20 every 15s, dry-run; target-tracking, threshold"
        ),
        "{out}"
    );
    assert!(!err.contains("warning"), "{err}");
    // Nothing written: no journal, no compiled-code cache.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["scalewise.toml"]);

    // And the daemon does start with it.
    let config = Config::load(Path::new(&path)).unwrap();
    let started = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(Daemon::build(config, Clock::starting_at(0, 1.0)));
    assert!(started.is_ok(), "{:?}", started.err());
}

#[test]
fn every_problem_is_named_with_its_line_and_nothing_else_passes() {
    let modules = policy_dir(&[
        ("target-tracking", artifacts::TARGET_TRACKING),
        ("threshold", artifacts::THRESHOLD),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[[scalers.policies]]
module = "target-trackng"

[[notifications]]
url = "http://127.0.0.1:9/hook"
bearer_token = { file = "no-such-token" }
"#;
    let text = config_text(modules.path(), extra).replace("target = 60.0", "targett = 60.0");
    let path = write(dir.path(), &text);

    // The file's own problems first: the token is read at load.
    let (code, out, err) = cli(&["check", "--config", &path]);
    assert_eq!(code, 1, "{out}");
    let token = line_of(&text, "no-such-token");
    assert!(
        err.contains(&format!("{path}:{token}:")) && err.contains("no-such-token"),
        "{err}"
    );
    assert!(err.contains(&format!("{path}: refused;")), "{err}");
    assert_eq!(out, "");

    // With the token there, the policies' problems: each at its line.
    std::fs::write(dir.path().join("no-such-token"), "s3cret\n").unwrap();
    let (code, out, err) = cli(&["check", "--config", &path]);
    assert_eq!(code, 1, "{out}");
    let param = line_of(&text, "targett");
    let module = line_of(&text, "target-trackng");
    for (line, says) in [
        (param, "unknown parameter \"targett\""),
        (
            module,
            "unknown module \"target-trackng\"; loaded modules: target-tracking, threshold",
        ),
    ] {
        assert!(
            err.lines()
                .any(|l| l.starts_with(&format!("{path}:{line}:")) && l.contains(says)),
            "no {says:?} at line {line}:\n{err}"
        );
    }
    assert!(
        err.contains("missing required parameter \"target\""),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "a secret is never shown: {err}");
}

#[test]
fn a_module_a_scaler_uses_must_load_and_one_no_scaler_uses_is_a_warning() {
    let modules = policy_dir(&[
        ("target-tracking", artifacts::TARGET_TRACKING),
        ("threshold", artifacts::WRONG_VERSION),
        ("spare", artifacts::WRONG_VERSION),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(modules.path(), "");
    let path = write(dir.path(), &text);

    let (code, out, err) = cli(&["check", "--config", &path]);
    assert_eq!(code, 1, "{out}");
    // The daemon would start (its scaler holding until a good version
    // comes); the check does not pass it.
    let line = line_of(&text, "module = \"threshold\"");
    let located = err
        .lines()
        .find(|l| l.starts_with(&format!("{path}:{line}:")))
        .unwrap_or_else(|| panic!("nothing at line {line}:\n{err}"));
    assert!(
        located.contains("module \"threshold\" does not load: the module exports scalewise:policy/evaluator@0.2.0"),
        "{located}"
    );
    let spare = modules.path().join("spare.wasm");
    assert!(
        err.contains(&format!(
            "warning: {}: no scaler uses it, and it does not load:",
            spare.display()
        )),
        "{err}"
    );

    // Only the unused one broken: a warning, and the check passes.
    std::fs::copy(artifacts::THRESHOLD, modules.path().join("threshold.wasm")).unwrap();
    let (code, out, err) = cli(&["check", "--config", &path]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": ok"), "{out}");
    assert!(
        err.contains("warning: ") && err.contains("spare.wasm"),
        "{err}"
    );
}

#[test]
fn policy_dir_replaces_the_folder_the_file_names() {
    let modules = policy_dir(&[
        ("target-tracking", artifacts::TARGET_TRACKING),
        ("threshold", artifacts::THRESHOLD),
    ]);
    let dir = tempfile::tempdir().unwrap();
    // The folder the production file names does not exist here.
    let text = config_text(Path::new("/etc/scalewise/no-such-policies"), "");
    let path = write(dir.path(), &text);

    let (code, _, err) = cli(&["check", "--config", &path]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "{path}:1:14: policy_dir /etc/scalewise/no-such-policies does not exist"
        )),
        "{err}"
    );

    let folder = modules.path().display().to_string();
    let (code, out, err) = cli(&["check", "--config", &path, "--policy-dir", &folder]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("  policies  {folder}: ")), "{out}");
}

#[test]
fn a_config_that_does_not_parse_is_refused_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "policy_dir = \"/tmp\"\n\n[[scalers]]\nname = \"web\"\nfrobnicate = 1\n",
    );
    let (code, out, err) = cli(&["check", "--config", &path]);
    assert_eq!(code, 1, "{out}");
    assert!(err.starts_with(&format!("{path}:5:1:")), "{err}");
    assert!(err.contains("frobnicate"), "{err}");
}
