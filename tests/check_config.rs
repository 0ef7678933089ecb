//! `scalewise check --config`: a config checked as `scalewise run --config`
//! checks it before starting, against real policy modules, without
//! starting; in-process through `scalewise::cli::run_cli`. `--tick` through
//! the binary, against a real Prometheus server and the moto server, and
//! the suite's fake Kubernetes API server (no real one can run here).

use std::path::Path;
use std::time::Duration;

use axum::http::Method;
use scalewise::clock::Clock;
use scalewise::config::Config;
use scalewise::daemon::Daemon;
use scalewise_tests::fake_kube::FakeKube;
use scalewise_tests::moto::{MotoServer, REGION};
use scalewise_tests::prometheus::{Exporter, PrometheusServer};
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

/// A policy folder with the two modules [`config_text`]'s scaler uses.
fn both_policies() -> tempfile::TempDir {
    policy_dir(&[
        ("target-tracking", artifacts::TARGET_TRACKING),
        ("threshold", artifacts::THRESHOLD),
    ])
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
fn credentials_written_into_a_source_url_stay_out_of_the_summary() {
    let modules = both_policies();
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(modules.path(), "")
        + "\n[sources.prom]\nkind = \"prometheus\"\nurl = \"http://ops:s3cret@127.0.0.1:9/prom\"\n";
    let path = write(dir.path(), &text);
    let (code, out, err) = cli(&["check", "--config", &path]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("  source    prom: prometheus http://127.0.0.1:9/prom"),
        "{out}"
    );
    assert!(
        !out.contains("s3cret") && !err.contains("s3cret"),
        "{out}{err}"
    );
}

#[test]
fn a_config_that_runs_passes_and_says_what_it_runs() {
    let modules = both_policies();
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
    assert!(
        out.contains(
            "  api       http://127.0.0.1:9464; pause and resume from loopback only; reads open\n"
        ),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "  journal   {}, records kept 7days\n",
            dir.path().join("journal.db").display()
        )),
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
    // The journal it writes to passes a check, the daemon running.
    let (code, _, err) = cli(&["check", "--config", &path]);
    assert_eq!(code, 0, "{err}");
}

/// A journal the daemon could not open is refused by the check, at
/// `[journal] path`, as the daemon refuses it at start: a folder that is
/// a file, a file that is not a journal.
#[test]
fn a_journal_the_daemon_cannot_open_is_refused() {
    let modules = both_policies();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("notes.txt"),
        "not a database, not a folder\n",
    )
    .unwrap();
    let at = |file: &str| dir.path().join(file).display().to_string();
    for (journal, problem) in [
        (
            "notes.txt/journal.db",
            format!(
                "cannot write in the folder of the journal {}: Not a directory",
                at("notes.txt/journal.db")
            ),
        ),
        (
            "notes.txt",
            format!(
                "the journal {} is corrupt or not a SQLite database",
                at("notes.txt")
            ),
        ),
    ] {
        let text = config_text(modules.path(), "")
            .replace(r#"path = "journal.db""#, &format!("path = {journal:?}"));
        let path = write(dir.path(), &text);
        let (code, out, err) = cli(&["check", "--config", &path]);
        assert_eq!(code, 1, "{journal}: {out}");
        assert!(
            err.contains(&format!("{path}: [journal] path: {problem}")),
            "{journal}: {err}"
        );
        // Changed nothing.
        assert_eq!(
            std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(),
            "not a database, not a folder\n"
        );
    }
    // A folder the daemon would create where it runs (a check in CI need
    // not have the production folder), and an empty file it would set up,
    // pass; nothing is created.
    std::fs::write(dir.path().join("empty.db"), "").unwrap();
    for journal in ["var/lib/scalewise/journal.db", "empty.db"] {
        let text = config_text(modules.path(), "")
            .replace(r#"path = "journal.db""#, &format!("path = {journal:?}"));
        let path = write(dir.path(), &text);
        let (code, _, err) = cli(&["check", "--config", &path]);
        assert_eq!(code, 0, "{journal}: {err}");
    }
    assert!(!dir.path().join("var").exists());
    assert_eq!(std::fs::read(dir.path().join("empty.db")).unwrap(), b"");
}

/// A parameter only its policy can judge (a time zone that does not
/// exist) is found by trying each policy once on an idle target: a warning
/// at its `params`, from `check` as from a start, instead of silence until
/// every tick fails and holds the scaler.
#[test]
fn a_policy_that_fails_on_an_idle_target_is_a_warning_at_its_params() {
    let modules = policy_dir(&[
        ("target-tracking", artifacts::TARGET_TRACKING),
        ("schedule", artifacts::SCHEDULE),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(modules.path(), "").replace(
        "module = \"threshold\"\nparams = { metric = \"cpu\", upper = 80.0, lower = 20.0 }",
        "module = \"schedule\"\nparams = { windows = \"mon-fri 09:00-17:00 12\", timezone = \"Europe/Berlinn\" }",
    );
    let path = write(dir.path(), &text);
    let (code, _, err) = cli(&["check", "--config", &path]);
    assert_eq!(code, 0, "a warning, not a refusal: {err}");
    let line = line_of(&text, "Europe/Berlinn");
    let warning = err
        .lines()
        .find(|l| l.starts_with(&format!("warning: {path}:{line}:")))
        .unwrap_or_else(|| panic!("no warning at line {line}: {err}"));
    assert!(
        warning.contains("scalers[0] \"web\".policies[1] \"schedule\""),
        "{warning}"
    );
    assert!(
        warning.contains("the policy fails on an idle target"),
        "{warning}"
    );
    assert!(
        warning.contains("\"Europe/Berlinn\" is not a time zone"),
        "{warning}"
    );
    // Target tracking, on zeros, does not fail.
    assert_eq!(err.matches("warning").count(), 1, "{err}");
}

#[test]
fn every_problem_is_named_with_its_line_and_nothing_else_passes() {
    let modules = both_policies();
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
    // The verdict says so, rather than that the daemon would not start.
    assert!(
        err.ends_with(&format!(
            "{path}: refused; `scalewise run --config` would start with it, but the scalers of \
             the modules above would hold until a version that loads is in the policy folder\n"
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
    let modules = both_policies();
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

    // A problem of the flag's folder is located at the file's policy_dir,
    // which is not wrong: the check says whose folder it was.
    let (code, _, err) = cli(&["check", "--config", &path, "--policy-dir", "no-such-dir"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("policy_dir no-such-dir does not exist")
            && err.contains("note: --policy-dir no-such-dir replaced the file's policy_dir"),
        "{err}"
    );
}

/// The limit flags are checked with the config, as what the scalers run
/// under: a scaler's max above `--max-replicas` is refused at its line.
#[test]
fn limit_flags_are_checked_with_the_config() {
    let modules = both_policies();
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(modules.path(), "");
    let path = write(dir.path(), &text);
    let (code, _, err) = cli(&["check", "--config", &path, "--max-replicas", "20"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&["check", "--config", &path, "--max-replicas", "10"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("note: --max-replicas replaced the file's [runtime] values"),
        "{err}"
    );
    let line = line_of(&text, "max = 20");
    assert!(
        err.contains(&format!(
            "{path}:{line}:7: scalers[0] \"web\": max (20) is above runtime.max_replicas (10)"
        )),
        "{err}"
    );
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

/// A config of scalers of Auto Scaling groups on `moto`, each on the
/// Prometheus series `series`.
fn tick_config(policies: &Path, prometheus: &str, moto: &str, scalers: &[(&str, &str)]) -> String {
    let mut text = format!(
        r#"policy_dir = "{policies}"

# The check is not a replica: it neither takes the lease nor needs a
# Kubernetes client for it (there is none here).
[leader_election]
lease = "scalewise"

[sources.prom]
kind = "prometheus"
url = "{prometheus}"
"#,
        policies = policies.display()
    );
    for (group, series) in scalers {
        text.push_str(&format!(
            r#"
[[scalers]]
name = "{group}"
interval = "15s"
min = 1
max = 8

[scalers.target]
kind = "aws-asg"
group = "{group}"
endpoint = "{moto}"

[scalers.metrics.load]
source = "prom"
query = "{series}"

[[scalers.policies]]
module = "target-tracking"
params = {{ metric = "load", target = 10.0, metric_type = "total" }}
"#
        ));
    }
    text
}

/// `scalewise check` through the binary, with AWS settings in its
/// environment as in production.
fn check_binary(args: &[&str]) -> (Option<i32>, String, String) {
    check_binary_with(args, |c| {
        c.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", REGION)
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT");
    })
}

/// `scalewise check` through the binary, its environment set by `env`:
/// exit code, stdout, stderr.
fn check_binary_with(
    args: &[&str],
    env: impl FnOnce(&mut std::process::Command),
) -> (Option<i32>, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_scalewise-cli"));
    command.args(args).env("RUST_LOG", "error");
    env(&mut command);
    let out = command.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A simulated service runs before the tick for the longest window its
/// scalers read, so a rule over the last five minutes is judged on five
/// minutes of samples, not cut short.
#[test]
fn tick_gives_simulated_services_the_history_their_windows_read() {
    let modules = both_policies();
    let dir = tempfile::tempdir().unwrap();
    // 300 requests/s on 4 replicas of 100: cpu 75 %, under `lower` = 80.
    let text = config_text(modules.path(), "")
        .replace(
            "query = \"cpu\"\n",
            "query = \"cpu\"\nwindow = \"5m\"\nstep = \"15s\"\n",
        )
        .replace(
            "upper = 80.0, lower = 20.0",
            "upper = 90.0, lower = 80.0, down_for = \"5m\"",
        );
    let path = write(dir.path(), &text);
    let (code, out, err) = check_binary(&["check", "--config", &path, "--tick"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("    metric cpu: "), "{out}");
    assert!(out.contains("threshold: cpu below 80.0 for 5m"), "{out}");
    assert!(!out.contains("reach back only"), "{out}");
}

#[test]
fn tick_reads_every_target_and_metric_and_changes_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let exporter = Exporter::start().unwrap();
    exporter.set("sw_check_load", 42.0);
    let (prometheus, moto) = rt.block_on(async {
        let prometheus = PrometheusServer::builder()
            .scrape("app", exporter.addr())
            .start()
            .await
            .expect("a real Prometheus server (is it installed?)");
        prometheus
            .wait_for_value("sw_check_load", Duration::from_secs(30), |v| v == 42.0)
            .await
            .unwrap();
        let moto = MotoServer::start()
            .await
            .expect("the moto server (is it installed?)");
        moto.create_group("checked", 2).await.unwrap();
        (prometheus, moto)
    });
    let modules = policy_dir(&[("target-tracking", artifacts::TARGET_TRACKING)]);
    let dir = tempfile::tempdir().unwrap();

    let text = tick_config(
        modules.path(),
        prometheus.url(),
        moto.url(),
        &[("checked", "sw_check_load")],
    );
    let path = write(dir.path(), &text);
    let (code, out, err) = check_binary(&["check", "--config", &path, "--tick"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    for line in [
        "  checked (aws-asg checked): current 2, ready 2",
        "    metric load: 42 (1 point read)",
        "    2 → 5 — target-tracking: ",
    ] {
        assert!(out.contains(line), "no {line:?} in\n{out}");
    }
    // Dry-run: the group is as it was, not even protected.
    let group = rt.block_on(moto.group("checked")).unwrap();
    assert_eq!(group.desired_capacity(), Some(2));
    assert!(
        group
            .instances()
            .iter()
            .all(|i| i.protected_from_scale_in() != Some(true)),
        "{group:?}"
    );
    // Nothing kept: no journal, no compiled code beside the config.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["scalewise.toml"]);

    // A group that does not exist and a series with no data: each named,
    // exit 1; the good scaler still reported.
    let text = tick_config(
        modules.path(),
        prometheus.url(),
        moto.url(),
        &[
            ("checked", "sw_check_load"),
            ("no-such-group", "sw_check_load"),
            ("checked-too", "sw_no_such_series"),
        ],
    );
    rt.block_on(moto.create_group("checked-too", 1)).unwrap();
    let path = write(dir.path(), &text);
    let (code, out, err) = check_binary(&["check", "--config", &path, "--tick"]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    for line in [
        "  checked (aws-asg checked): current 2, ready 2",
        "  no-such-group: cannot read the target: target not found: Auto Scaling group \"no-such-group\"",
        "    metric load: query returned no data",
    ] {
        assert!(out.contains(line), "no {line:?} in\n{out}");
    }
    assert!(
        err.contains("2 of 3 scalers could not read their target or metrics, or a policy failed"),
        "{err}"
    );
}

#[test]
fn tick_reads_a_deployment_without_patching_it_or_taking_the_lease() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let kube = rt.block_on(FakeKube::start()).unwrap();
    kube.put_deployment("shop", "web", 2);
    let modules = policy_dir(&[("counter", artifacts::COUNTER)]);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    kube.kubeconfig(&kubeconfig, "shop").unwrap();
    let text = format!(
        r#"policy_dir = "{policies}"

[leader_election]
lease = "scalewise"

[[scalers]]
name = "web"
interval = "15s"
min = 1
max = 8
target = {{ kind = "kubernetes", object = "Deployment", name = "web" }}

[[scalers.policies]]
module = "counter"
params = {{ scale_to = 4 }}
"#,
        policies = modules.path().display()
    );
    let path = write(dir.path(), &text);
    let (code, stdout, stderr) = check_binary_with(&["check", "--config", &path, "--tick"], |c| {
        c.env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT");
    });
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    for line in [
        "  web (kubernetes web): current 2, ready 2",
        "    2 → 4 — counter: ",
    ] {
        assert!(stdout.contains(line), "no {line:?} in\n{stdout}");
    }
    // Read, never patched, no Event, and the lease neither taken nor waited for.
    let seen = kube.seen();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|s| s.method == Method::GET), "{seen:?}");
    assert!(kube.events().is_empty());
    assert!(kube.lease("shop", "scalewise").is_none());
    assert_eq!(
        kube.workload("apps/v1", "deployments", "shop", "web")
            .unwrap()
            .replicas,
        2
    );
}

/// Two scalers of one Auto Scaling group, one naming its region and one
/// leaving it to the SDK's default: refused when the default (here
/// AWS_REGION) is that region, as the daemon refuses them at start; passed
/// when it is another; a warning when no default can be found.
#[test]
fn a_group_named_with_and_without_its_default_region_is_refused() {
    let policies = policy_dir(&[("counter", artifacts::COUNTER)]);
    let dir = tempfile::tempdir().unwrap();
    let mut text = format!(
        "policy_dir = \"{}\"\n\n[journal]\npath = \"journal.db\"\n",
        policies.path().display()
    );
    for (name, region) in [("named", ", region = \"eu-west-1\""), ("defaulted", "")] {
        text.push_str(&format!(
            r#"
[[scalers]]
name = "{name}"
interval = "15s"
min = 1
max = 5
target = {{ kind = "aws-asg", group = "workers"{region} }}
policies = [{{ module = "counter" }}]
"#
        ));
    }
    let path = write(dir.path(), &text);
    let check = |region: Option<&str>| {
        check_binary_with(&["check", "--config", &path], |c| {
            c.env_remove("AWS_REGION")
                .env_remove("AWS_DEFAULT_REGION")
                .env_remove("AWS_PROFILE")
                .env("AWS_CONFIG_FILE", "/nonexistent/aws-config");
            if let Some(region) = region {
                c.env("AWS_REGION", region);
            }
        })
    };
    let (code, _, err) = check(Some("eu-west-1"));
    assert_eq!(code, Some(1), "{err}");
    let line = line_of(&text, "name = \"defaulted\"") + 4;
    assert!(
        err.contains(&format!("scalewise.toml:{line}:"))
            && err.contains(
                "Auto Scaling group \"workers\" (region \"eu-west-1\", the AWS SDK's default) is \
                 already scaled by scalers[0]"
            ),
        "{err}"
    );
    let (code, _, err) = check(Some("us-east-1"));
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = check(None);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(
            "warning: two scalers may scale one target: an Auto Scaling target names its region"
        ),
        "{err}"
    );
}
