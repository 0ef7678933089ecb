//! Table-driven tests of loading, validating and checking configs against
//! policy modules, with real files in temporary folders.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value as Json, json};

use super::*;
use crate::policy::{ParameterKind, ParameterSpec, PolicyInfo};

/// A valid config exercising most parts, written so that edits below can
/// break one thing at a time.
const BASE: &str = r#"policy_dir = "."

[runtime]
max_memory = "64 MiB"
timeout = "100ms"

[clock]
speed = 1.0

[sources.prom]
kind = "prometheus"
url = "http://127.0.0.1:9090"
timeout = "5s"

[simulations.web]
capacity_per_replica = 100.0
initial_replicas = 2

[simulations.web.load]
base = 100.0
spikes = [{ at = "1m", duration = "2m", extra = 50.0 }]

[[scalers]]
name = "web"
interval = "15s"
min = 1
max = 10
target = { kind = "simulator", service = "web" }

[scalers.metrics.cpu]
source = "simulator"
query = "cpu"

[scalers.metrics.latency]
source = "prom"
query = "histogram_quantile(0.95, rate(x[1m]))"
window = "10m"
step = "30s"
max_age = "1m"

[[scalers.policies]]
module = "target-tracking"
params = { metric = "cpu", target = 60.0 }

[scalers.behavior.scale_up]
stabilization_window = "0s"
limits = [{ pods = 4, period = "15s" }, { percent = 100, period = "15s" }]
"#;

/// The environment tests see: one token, nothing else.
fn env(name: &str) -> Option<String> {
    match name {
        "PROMETHEUS_TOKEN" => Some("t0k3n".to_owned()),
        "SCALEWISE_TEST_SPACED_TOKEN" => Some("two words".to_owned()),
        _ => None,
    }
}

/// Writes nothing; parses `text` as if read from `dir/scalewise.toml`.
fn parse_in(dir: &Path, text: &str) -> Result<Config, ConfigError> {
    Config::parse_with_env(text, &dir.join("scalewise.toml"), &env)
}

/// Applies `(from, to)` replacements, each of which must match.
fn edit(text: &str, edits: &[(&str, &str)]) -> String {
    let mut text = text.to_owned();
    for (from, to) in edits {
        assert!(text.contains(from), "edit {from:?} does not apply");
        text = text.replacen(from, to, 1);
    }
    text
}

/// Asserts that each `(from, to, needle, message)` edit of `text` is
/// refused with `message`, located at `needle`'s line and column and under
/// the table `path`.
fn assert_refused_at(dir: &Path, text: &str, path: &str, cases: &[(&str, &str, &str, &str)]) {
    for &(from, to, needle, message) in cases {
        let bad = edit(text, &[(from, to)]);
        let err = parse_in(dir, &bad).expect_err(message);
        let (line, column) = position_of(&bad, needle);
        assert!(
            err.problems().iter().any(|p| p.line == line
                && p.column == column
                && p.path == path
                && p.message.contains(message)),
            "{message}: not at {line}:{column}:\n{err}"
        );
    }
}

/// [`ASG`] with its scaler's target table replaced by `target`.
fn asg_with_target(target: &str) -> String {
    edit(
        ASG,
        &[(
            "kind = \"aws-asg\"\ngroup = \"workers-asg\"\nregion = \"eu-west-1\"\nendpoint = \"https://autoscaling.eu-west-1.amazonaws.com\"\ndrain_webhook = \"http://drainer.internal:8080/drain\"\ndrain_delay = \"30s\"\ndrain_timeout = \"5m\"\n",
            target,
        )],
    )
}

/// The `[[scalers]]` entry of `text` again, renamed `workers-2`: a second
/// scaler of the same target.
fn second_scaler(text: &str) -> String {
    text.split_once("[[scalers]]")
        .map(|(_, scaler)| format!("[[scalers]]{scaler}"))
        .unwrap()
        .replace(
            "name = \"workers\"\ninterval",
            "name = \"workers-2\"\ninterval",
        )
}

/// 1-based line and column of the first occurrence of `needle`.
fn position_of(text: &str, needle: &str) -> (usize, usize) {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("needle {needle:?} not in text"));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.chars().rev().take_while(|&c| c != '\n').count() + 1;
    (line, column)
}

#[test]
fn base_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let config = parse_in(dir.path(), BASE).unwrap();
    assert_eq!(config.scalers.len(), 1);
    assert_eq!(config.policy_dir.get_ref(), &dir.path().join("."));
    assert_eq!(config.runtime.max_memory, ByteSize::mib(64));
}

/// What pause, status and journal read of a config: [api] and [journal]
/// despite a mistake elsewhere (said), but not despite a misspelt table
/// name at the top (its defaults would reach another daemon), nor a
/// mistake in the two tables themselves (said, not another).
#[test]
fn the_operator_sections_are_read_past_a_mistake_elsewhere_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scalewise.toml");
    let with_api = |api: &str, text: &str| {
        format!("{api}\n\n[journal]\npath = \"j.db\"\n\n{text}").replacen(
            "policy_dir = \".\"\n",
            "",
            1,
        )
    };
    let typo = BASE.replace("interval = \"15s\"", "intervall = \"15s\"");
    let load = |text: String| {
        std::fs::write(&path, format!("policy_dir = \".\"\n{text}")).unwrap();
        Config::load_operator_sections(&path)
    };
    let (api, journal, problem) =
        load(with_api("[api]\nlisten = \"127.0.0.1:9500\"", &typo)).unwrap();
    assert_eq!(api.listen.to_string(), "127.0.0.1:9500");
    assert_eq!(journal.path, dir.path().join("j.db"));
    assert!(problem.unwrap().contains("intervall"));
    let misspelt = load(with_api("[apii]\nlisten = \"127.0.0.1:9500\"", &typo));
    assert!(
        misspelt
            .as_ref()
            .is_err_and(|e| e.to_string().contains("apii")),
        "{misspelt:?}"
    );
    // Misspelt after another mistake, or written inline: the same.
    let late = load(format!(
        "{}\n[apii]\nlisten = \"127.0.0.1:9500\"\n",
        with_api("", &typo)
    ));
    assert!(late.is_err_and(|e| e.to_string().contains("apii")));
    let inline = load(with_api("apii = { listen = \"127.0.0.1:9500\" }", &typo));
    assert!(inline.is_err_and(|e| e.to_string().contains("apii")));
    // Every top-level table of a full config is known to the fallback.
    let example = include_str!("../../../docs/config.example.toml");
    let example = example.replacen("[[scalers]]", "[[scalers]]\nintervall = \"1s\"", 1);
    std::fs::write(&path, example).unwrap();
    let (_, _, problem) = Config::load_operator_sections(&path).unwrap();
    assert!(problem.unwrap().contains("intervall"));
    let bad_listen = load(with_api("[api]\nlisten = \"localhost:9500\"", &typo));
    assert!(
        bad_listen
            .as_ref()
            .is_err_and(|e| e.to_string().contains("localhost:9500")),
        "{bad_listen:?}"
    );
}

#[test]
fn settings_keep_everything_but_scalers_and_simulations() {
    let dir = tempfile::tempdir().unwrap();
    let config = parse_in(dir.path(), BASE).unwrap();
    let slim = config.settings();
    assert!(slim.scalers.is_empty() && slim.simulations.is_empty());
    assert!(!config.scalers.is_empty() && !config.simulations.is_empty());
    assert_eq!(slim.policy_dir, config.policy_dir);
    assert_eq!(slim.runtime, config.runtime);
    assert_eq!(slim.api, config.api);
    assert_eq!(slim.watch, config.watch);
    assert_eq!(slim.journal, config.journal);
    assert_eq!(slim.clock, config.clock);
    assert_eq!(slim.sources, config.sources);
    assert!(!slim.sources.is_empty());
    assert_eq!(slim.origin().digest(), config.origin().digest());
}

/// A running daemon keeps fingerprints of its scalers and simulations, not
/// the parsed config: they must change with the content and only with it.
#[test]
fn fingerprints_follow_the_content_not_the_layout() {
    let dir = tempfile::tempdir().unwrap();
    let parse = |text: &str| parse_in(dir.path(), text).unwrap();
    let scaler = |config: &Config| config.scalers[0].get_ref().fingerprint();
    let base = parse(BASE);

    // Moved down the file, other spacing, a comment: the same content.
    let laid_out = edit(
        BASE,
        &[
            ("policy_dir = \".\"\n", "policy_dir = \".\"\n\n# fleet\n\n"),
            (
                "min = 1\nmax = 10",
                "min   =   1   # at least one\nmax = 10",
            ),
            ("base = 100.0", "base   = 100.0"),
        ],
    );
    let laid_out = parse(&laid_out);
    assert_ne!(
        base.scalers[0].span(),
        laid_out.scalers[0].span(),
        "the edit moved the scaler"
    );
    assert_eq!(scaler(&base), scaler(&laid_out));
    assert_eq!(
        base.simulations_fingerprint(),
        laid_out.simulations_fingerprint()
    );

    // Any change of a value, however deep, is a change.
    let changes: &[(&str, &str)] = &[
        ("max = 10", "max = 11"),
        ("interval = \"15s\"", "interval = \"16s\""),
        ("target = 60.0 }", "target = 61.0 }"),
        ("window = \"10m\"", "window = \"11m\""),
        ("{ pods = 4, period", "{ pods = 5, period"),
        ("max = 10\n", "max = 10\npaused = true\n"),
    ];
    for change in changes {
        let changed = parse(&edit(BASE, &[*change]));
        assert_ne!(scaler(&base), scaler(&changed), "{change:?}");
        assert_eq!(
            base.simulations_fingerprint(),
            changed.simulations_fingerprint(),
            "{change:?}"
        );
    }
    for change in [
        ("initial_replicas = 2", "initial_replicas = 3"),
        ("extra = 50.0", "extra = 50.5"),
    ] {
        let changed = parse(&edit(BASE, &[change]));
        assert_ne!(
            base.simulations_fingerprint(),
            changed.simulations_fingerprint(),
            "{change:?}"
        );
        assert_eq!(scaler(&base), scaler(&changed), "{change:?}");
    }
}

/// A secret written in the config in place of where to read it is refused
/// without being quoted (config errors end up in logs, the API and CI),
/// wherever it is: a tagged table's field, a webhook, the API.
#[test]
fn a_secret_written_inline_is_refused_unquoted() {
    const VALUE: &str = "eyJhbGciOiJIUzI1NiJ9.s3cr3t";
    let inline = format!("\"{VALUE}\"");
    for (from, to) in [
        (
            "timeout = \"5s\"".to_owned(),
            format!("timeout = \"5s\"\nbearer_token = {inline}"),
        ),
        (
            "timeout = \"5s\"".to_owned(),
            format!("timeout = \"5s\"\nbasic_auth = {{ username = \"u\", password = {inline} }}"),
        ),
        (
            "[clock]".to_owned(),
            format!("[api]\ntoken = {inline}\n\n[clock]"),
        ),
        (
            "[clock]".to_owned(),
            format!(
                "[[notifications]]\nurl = \"http://127.0.0.1:9/hook\"\nbearer_token = {inline}\n\n[clock]"
            ),
        ),
        (
            "timeout = \"5s\"".to_owned(),
            format!("timeout = \"5s\"\nbearer_token = {{ env = \"A\", file = {inline} }}"),
        ),
        (
            "timeout = \"5s\"".to_owned(),
            "timeout = \"5s\"\nbearer_token = 12345678".to_owned(),
        ),
    ] {
        let text = edit(BASE, &[(&from, &to)]);
        let err = parse_in(Path::new("/cfg"), &text).expect_err(&to);
        let said = err.to_string();
        assert!(
            !said.contains("s3cr3t") && !said.contains("12345678"),
            "{said}"
        );
        assert!(
            said.contains("not written in the config") || said.contains("not both"),
            "{said}"
        );
        assert!(said.contains("scalewise.toml:"), "located: {said}");
    }
}

/// One broken thing per case: the error must point at `needle`'s line and
/// column and say `message` (a substring) in the context `path`.
#[test]
fn each_problem_is_reported_at_its_place() {
    struct Case {
        name: &'static str,
        edits: &'static [(&'static str, &'static str)],
        needle: &'static str,
        path: &'static str,
        message: &'static str,
        kind: &'static str,
    }
    const fn case(
        name: &'static str,
        edits: &'static [(&'static str, &'static str)],
        needle: &'static str,
        path: &'static str,
        message: &'static str,
    ) -> Case {
        Case {
            name,
            edits,
            needle,
            path,
            message,
            kind: "invalid",
        }
    }
    const fn parse_case(
        name: &'static str,
        edits: &'static [(&'static str, &'static str)],
        needle: &'static str,
        path: &'static str,
        message: &'static str,
    ) -> Case {
        Case {
            name,
            edits,
            needle,
            path,
            message,
            kind: "parse",
        }
    }
    const WEB: &str = "scalers[0] \"web\"";
    let cases = [
        // Shape errors (serde): the first one stops parsing.
        parse_case(
            "unknown field",
            &[("interval = ", "intervall = ")],
            "intervall",
            WEB,
            "unknown field \"intervall\", expected one of \"name\", \"interval\"",
        ),
        parse_case(
            "missing field",
            &[("interval = \"15s\"\n", "")],
            "[[scalers]]",
            WEB,
            "missing field \"interval\"",
        ),
        parse_case(
            "wrong type",
            &[("min = 1", "min = \"one\"")],
            "\"one\"",
            WEB,
            "min: invalid type: string \"one\", expected u32",
        ),
        parse_case(
            "negative count",
            &[("max = 10", "max = -1")],
            "-1",
            WEB,
            "max: invalid value: integer \"-1\", expected u32",
        ),
        parse_case(
            "bad duration",
            &[("\"15s\"\n", "\"15 parsecs\"\n")],
            "\"15 parsecs\"",
            WEB,
            "interval: \"15 parsecs\" is not a duration (unknown time unit \"parsecs\"",
        ),
        parse_case(
            "a duration written as a number",
            &[("\"15s\"\n", "15\n")],
            "15\n",
            WEB,
            "interval: 15 is not a duration: write it as text with a unit, e.g. \"15s\" or \"15m\"",
        ),
        parse_case(
            "a duration written as a boolean",
            &[("\"15s\"\n", "true\n")],
            "true\n",
            WEB,
            "interval: invalid type: boolean \"true\", expected a duration as text with a unit",
        ),
        parse_case(
            "a duration written as a float inside a tagged table, beside a 5",
            &[(
                "timeout = \"5s\"",
                "timeout = 5.0\nheaders = { X-Five = \"5\" }",
            )],
            "5.0",
            "sources.prom",
            "timeout: 5.0 is not a duration",
        ),
        parse_case(
            "a duration without its unit",
            &[("\"15s\"\n", "\"15\"\n")],
            "\"15\"",
            WEB,
            "interval: \"15\" is not a duration (time unit needed",
        ),
        parse_case(
            "unknown target kind",
            &[("kind = \"simulator\"", "kind = \"nomad\"")],
            "\"nomad\"",
            "scalers[0] \"web\".target",
            "kind: unknown variant \"nomad\", expected one of \"simulator\", \"aws-asg\", \"kubernetes\", \"rebalance\"",
        ),
        parse_case(
            "unknown field inside a tagged table",
            &[("url = ", "urll = ")],
            "urll",
            "sources.prom",
            "unknown field \"urll\"",
        ),
        parse_case(
            "bad duration inside a tagged table",
            &[("timeout = \"5s\"", "timeout = \"soon\"")],
            "\"soon\"",
            "sources.prom",
            "\"soon\" is not a duration (",
        ),
        parse_case(
            "wrong type inside a tagged table",
            &[("timeout = \"5s\"", "timeout = 5")],
            "5\n\n[simulations.web]",
            "sources.prom",
            "timeout: 5 is not a duration: write it as text with a unit, e.g. \"5s\" or \"5m\"",
        ),
        parse_case(
            "wrong type inside a tagged table, its text written twice",
            &[(
                "timeout = \"5s\"",
                "timeout = 5\nheaders = { X-Five = \"5\" }",
            )],
            "[sources.prom]",
            "sources.prom",
            "5 is not a duration: write it as text with a unit",
        ),
        parse_case(
            "unknown secret kind",
            &[(
                "timeout = \"5s\"",
                "timeout = \"5s\"\nbearer_token = { vault = \"x\" }",
            )],
            "vault",
            "sources.prom.bearer_token",
            "unknown field \"vault\", expected \"env\" or \"file\"",
        ),
        parse_case(
            "bad rate limit field",
            &[("{ pods = 4, period", "{ pod = 4, period")],
            "pod ",
            "scalers[0] \"web\".behavior.scale_up.limits[0]",
            "unknown field \"pod\"",
        ),
        parse_case(
            "TOML syntax",
            &[("max = 10", "max = [10")],
            "\nmax = [10\n",
            "",
            "",
        ),
        // Semantic errors.
        case(
            "min above max",
            &[("min = 1", "min = 5"), ("max = 10", "max = 3")],
            "5\nmax",
            WEB,
            "min (5) is greater than max (3)",
        ),
        case(
            "max zero",
            &[("max = 10", "max = 0"), ("min = 1", "min = 0")],
            "0\ntarget",
            WEB,
            "max must be at least 1",
        ),
        case(
            "max above the runtime ceiling",
            &[("max = 10", "max = 200000")],
            "200000",
            WEB,
            "max (200000) is above runtime.max_replicas (100000)",
        ),
        case(
            "runtime ceiling beyond what actuators take",
            &[(
                "timeout = \"100ms\"",
                "timeout = \"100ms\"\nmax_replicas = 4000000000",
            )],
            "4000000000",
            "runtime",
            "max_replicas (4000000000) must be from 1 to 1000000",
        ),
        case(
            "interval too short",
            &[("\"15s\"\n", "\"500ms\"\n")],
            "\"500ms\"",
            WEB,
            "interval (500ms) must be between 1s and 24h",
        ),
        case(
            "interval too long",
            &[("\"15s\"\n", "\"2d\"\n")],
            "\"2d\"",
            WEB,
            "interval (2days) must be between",
        ),
        case(
            "empty scaler name",
            &[("name = \"web\"", "name = \"\"")],
            "\"\"",
            "scalers[0] \"\"",
            "name \"\" must be non-empty",
        ),
        case(
            "bad scaler name",
            &[("name = \"web\"", "name = \"Web app\"")],
            "\"Web app\"",
            "scalers[0] \"Web app\"",
            "use only a-z, 0-9",
        ),
        case(
            "a scaler name a URL path drops",
            &[("name = \"web\"", "name = \"..\"")],
            "\"..\"",
            "scalers[0] \"..\"",
            "not \".\" or \"..\"",
        ),
        case(
            "unknown simulation",
            &[("service = \"web\"", "service = \"db\"")],
            "\"db\"",
            "scalers[0] \"web\".target",
            "target service \"db\" is not a [simulations] entry; defined: web",
        ),
        case(
            "no policy",
            &[
                (
                    "service = \"web\" }\n",
                    "service = \"web\" }\npolicies = []\n",
                ),
                (
                    "[[scalers.policies]]\nmodule = \"target-tracking\"\nparams = { metric = \"cpu\", target = 60.0 }\n",
                    "",
                ),
            ],
            "[]",
            WEB,
            "a scaler needs at least one policy",
        ),
        case(
            "empty module name",
            &[("module = \"target-tracking\"", "module = \"\"")],
            "\"\"",
            "scalers[0] \"web\".policies[0] \"\"",
            "module name is empty",
        ),
        case(
            "metric name not an identifier",
            &[("[scalers.metrics.cpu]", "[scalers.metrics.\"cpu load\"]")],
            "\"cpu load\"",
            "scalers[0] \"web\".metrics",
            "metric name \"cpu load\" must be an identifier",
        ),
        case(
            "undefined metric source",
            &[("source = \"prom\"", "source = \"thanos\"")],
            "\"thanos\"",
            "scalers[0] \"web\".metrics.latency",
            "source \"thanos\" is not defined; use \"simulator\", \"target\" or one of the [sources]: prom",
        ),
        case(
            "target metric the target kind does not report",
            &[
                ("source = \"prom\"", "source = \"target\""),
                (
                    "query = \"histogram_quantile(0.95, rate(x[1m]))\"",
                    "query = \"shards\"",
                ),
            ],
            "\"shards\"",
            "scalers[0] \"web\".metrics.latency",
            "query \"shards\" is not something a simulator target reports; known: replicas, ready, unready",
        ),
        case(
            "simulator metric of an unknown simulation",
            &[("query = \"cpu\"", "query = \"db/cpu\"")],
            "\"db/cpu\"",
            "scalers[0] \"web\".metrics.cpu",
            "query \"db/cpu\" names simulation \"db\", which is not defined; defined: web",
        ),
        case(
            "step longer than window",
            &[("step = \"30s\"", "step = \"20m\"")],
            "\"20m\"",
            "scalers[0] \"web\".metrics.latency",
            "step (20m) is longer than window (10m)",
        ),
        case(
            "a window shorter than its default step",
            &[
                ("step = \"30s\"\n", ""),
                ("window = \"10m\"", "window = \"10s\""),
            ],
            "\"10s\"",
            "scalers[0] \"web\".metrics.latency",
            "window (10s) is shorter than its step, which is the scaler's interval (15s) when none is set",
        ),
        case(
            "a max_age past a year",
            &[("max_age = \"1m\"", "max_age = \"500000000y\"")],
            "\"500000000y\"",
            "scalers[0] \"web\".metrics.latency",
            "is longer than a year",
        ),
        case(
            "a step finer than a millisecond",
            &[("step = \"30s\"", "step = \"1500us\"")],
            "\"1500us\"",
            "scalers[0] \"web\".metrics.latency",
            "step (1ms 500us) must be whole milliseconds",
        ),
        case(
            "a Prometheus step whose grid misses the tick",
            &[
                ("step = \"30s\"", "step = \"1500ms\""),
                ("window = \"10m\"", "window = \"5s\""),
            ],
            "\"1500ms\"",
            "scalers[0] \"web\".metrics.latency",
            "window (5s) at step (1s 500ms) would give points that do not end at the tick's time",
        ),
        case(
            "step without window",
            &[("window = \"10m\"\n", "")],
            "\"30s\"\nmax_age",
            "scalers[0] \"web\".metrics.latency",
            "step is set without a window",
        ),
        case(
            "zero step",
            &[("step = \"30s\"", "step = \"0s\"")],
            "\"0s\"",
            "scalers[0] \"web\".metrics.latency",
            "step must be longer than 0s",
        ),
        case(
            "too many points",
            &[("window = \"10m\"", "window = \"30d\"")],
            "\"30s\"\nmax_age",
            "scalers[0] \"web\".metrics.latency",
            "window (30days) at step (30s) gives more than 11000 points",
        ),
        case(
            "zero max_age",
            &[("max_age = \"1m\"", "max_age = \"0s\"")],
            "\"0s\"",
            "scalers[0] \"web\".metrics.latency",
            "max_age must be longer than 0s",
        ),
        case(
            "rate limit with pods and percent",
            &[("{ pods = 4, period", "{ pods = 4, percent = 5, period")],
            "{ pods = 4, percent",
            "scalers[0] \"web\".behavior.scale_up.limits[0]",
            "give exactly one of pods or percent",
        ),
        case(
            "rate limit with neither",
            &[("{ pods = 4, period", "{ period")],
            "{ period",
            "scalers[0] \"web\".behavior.scale_up.limits[0]",
            "give exactly one of pods or percent",
        ),
        case(
            "zero pods",
            &[("pods = 4", "pods = 0")],
            "0, period",
            "scalers[0] \"web\".behavior.scale_up.limits[0]",
            "pods must be at least 1",
        ),
        case(
            "period over HPA's limit",
            &[(
                "percent = 100, period = \"15s\"",
                "percent = 100, period = \"31m\"",
            )],
            "\"31m\"",
            "scalers[0] \"web\".behavior.scale_up.limits[1]",
            "period (31m) must be longer than 0s and at most 30m (HPA's limit)",
        ),
        case(
            "zero period",
            &[("pods = 4, period = \"15s\"", "pods = 4, period = \"0s\"")],
            "\"0s\" }",
            "scalers[0] \"web\".behavior.scale_up.limits[0]",
            "period (0s) must be longer than 0s",
        ),
        case(
            "empty limits",
            &[(
                "limits = [{ pods = 4, period = \"15s\" }, { percent = 100, period = \"15s\" }]",
                "limits = []",
            )],
            "[]",
            "scalers[0] \"web\".behavior.scale_up",
            "limits is empty",
        ),
        case(
            "long cooldown",
            &[(
                "stabilization_window = \"0s\"",
                "stabilization_window = \"0s\"\ncooldown = \"2d\"",
            )],
            "\"2d\"",
            "scalers[0] \"web\".behavior.scale_up",
            "cooldown (2days) is longer than 24h",
        ),
        case(
            "simulator metric name",
            &[("query = \"cpu\"", "query = \"cpu%\"")],
            "\"cpu%\"",
            "scalers[0] \"web\".metrics.cpu",
            "query \"cpu%\" is not a simulator metric; known: cpu, load",
        ),
        case(
            "unknown simulator metric",
            &[("query = \"cpu\"", "query = \"cpu_seconds\"")],
            "\"cpu_seconds\"",
            "scalers[0] \"web\".metrics.cpu",
            "query \"cpu_seconds\" is not a simulator metric; known: cpu,",
        ),
        case(
            "bad header name",
            &[(
                "timeout = \"5s\"",
                "timeout = \"5s\"\nheaders = { \"X Tenant\" = \"a\" }",
            )],
            "\"X Tenant\"",
            "sources.prom.headers",
            "\"X Tenant\" is not a valid header name",
        ),
        case(
            "one header name in two spellings",
            &[(
                "timeout = \"5s\"",
                "timeout = \"5s\"\nheaders = { X-Tenant = \"a\", x-tenant = \"b\" }",
            )],
            "x-tenant =",
            "sources.prom.headers",
            "header \"x-tenant\" is also given as \"X-Tenant\": header names ignore case; give it once",
        ),
        case(
            "bad header value",
            &[(
                "timeout = \"5s\"",
                "timeout = \"5s\"\nheaders = { X-Tenant = \"a\\nb\" }",
            )],
            "\"a\\nb\"",
            "sources.prom.headers",
            "the value of header \"X-Tenant\" has characters HTTP does not allow",
        ),
        case(
            "zero trace scale",
            &[(
                "base = 100.0",
                "trace = { path = \"scalewise.toml\", scale = 0.0 }",
            )],
            "0.0 }",
            "simulations.web.load.trace",
            "scale (0) must be a finite number above zero",
        ),
        case(
            "long stabilization window",
            &[(
                "stabilization_window = \"0s\"",
                "stabilization_window = \"2h\"",
            )],
            "\"2h\"",
            "scalers[0] \"web\".behavior.scale_up",
            "stabilization_window (2h) is longer than 1h",
        ),
        case(
            "url that does not parse",
            &[("\"http://127.0.0.1:9090\"", "\"http://[::1\"")],
            "\"http://[::1\"",
            "sources.prom",
            "url \"http://[::1\" is not a URL: invalid IPv6 address",
        ),
        case(
            "url without a scheme",
            &[("\"http://127.0.0.1:9090\"", "\"prometheus:9090\"")],
            "\"prometheus:9090\"",
            "sources.prom",
            "url \"prometheus:9090\" must start with http:// or https://",
        ),
        case(
            "url with another scheme",
            &[("\"http://127.0.0.1:9090\"", "\"ftp://127.0.0.1\"")],
            "\"ftp://127.0.0.1\"",
            "sources.prom",
            "must start with http:// or https://",
        ),
        case(
            "zero source timeout",
            &[("timeout = \"5s\"", "timeout = \"0s\"")],
            "\"0s\"",
            "sources.prom",
            "timeout must be longer than 0s",
        ),
        case(
            "missing env secret",
            &[(
                "timeout = \"5s\"",
                "timeout = \"5s\"\nbearer_token = { env = \"SCALEWISE_UNSET_TOKEN\" }",
            )],
            "{ env",
            "sources.prom",
            "bearer_token: environment variable \"SCALEWISE_UNSET_TOKEN\" is not set",
        ),
        case(
            "unreadable API token",
            &[(
                "[clock]",
                "[api]\ntoken = { file = \"missing-api-token\" }\n\n[clock]",
            )],
            "{ file",
            "api",
            "token: cannot read secret file ",
        ),
        case(
            "API token with a space",
            &[(
                "[clock]",
                "[api]\ntoken = { env = \"SCALEWISE_TEST_SPACED_TOKEN\" }\n\n[clock]",
            )],
            "{ env",
            "api",
            "the token must be printable ASCII without spaces",
        ),
        case(
            "unreadable TLS certificate",
            &[(
                "[clock]",
                "[api]\ntls = { cert = \"missing.crt\", key = \"missing.key\" }\n\n[clock]",
            )],
            "{ cert",
            "api",
            "tls: cert: ",
        ),
        case(
            "closed reads without a token",
            &[("[clock]", "[api]\nreads = \"token\"\n\n[clock]")],
            "\"token\"",
            "api",
            "reads: \"token\" needs [api] token",
        ),
        case(
            "unreadable secret file",
            &[(
                "timeout = \"5s\"",
                "timeout = \"5s\"\nbasic_auth = { username = \"u\", password = { file = \"missing-pw\" } }",
            )],
            "{ file",
            "sources.prom.basic_auth",
            "password: cannot read secret file ",
        ),
        case(
            "blank secret variable",
            &[(
                "timeout = \"5s\"",
                "timeout = \"5s\"\nbearer_token = { env = \"\" }",
            )],
            "{ env",
            "sources.prom",
            "bearer_token: env: \"\" is a blank variable name",
        ),
        case(
            "blank secret file",
            &[(
                "timeout = \"5s\"",
                "timeout = \"5s\"\nbearer_token = { file = \"\" }",
            )],
            "{ file",
            "sources.prom",
            "bearer_token: file: \"\" is a blank path; give the secret file's name",
        ),
        case(
            "two kinds of auth",
            &[(
                "timeout = \"5s\"",
                "timeout = \"5s\"\nbearer_token = { env = \"PROMETHEUS_TOKEN\" }\nbasic_auth = { username = \"u\", password = { env = \"PROMETHEUS_TOKEN\" } }",
            )],
            "{ username",
            "sources.prom",
            "give at most one of bearer_token and basic_auth",
        ),
        case(
            "authorization header",
            &[(
                "timeout = \"5s\"",
                "timeout = \"5s\"\nheaders = { Authorization = \"Bearer x\" }",
            )],
            "\"Bearer x\"",
            "sources.prom.headers",
            "give Authorization as a secret",
        ),
        case(
            "a source's missing CA file",
            &[(
                "timeout = \"5s\"",
                "timeout = \"5s\"\nca_file = \"missing-ca.pem\"",
            )],
            "\"missing-ca.pem\"",
            "sources.prom",
            "ca_file: ",
        ),
        case(
            "a source's client certificate without its key",
            &[(
                "timeout = \"5s\"",
                "timeout = \"5s\"\nclient_cert = \"client.crt\"",
            )],
            "\"client.crt\"",
            "sources.prom",
            "client_cert: given without client_key",
        ),
        case(
            "a webhook's missing client certificate",
            &[(
                "[clock]",
                "[[notifications]]\nurl = \"https://127.0.0.1:9/hook\"\nclient_cert = \"client.crt\"\nclient_key = \"missing.key\"\n\n[clock]",
            )],
            "\"client.crt\"",
            "notifications[0]",
            "client_cert: ",
        ),
        case(
            "a webhook's missing CA file",
            &[(
                "[clock]",
                "[[notifications]]\nurl = \"https://127.0.0.1:9/hook\"\nca_file = \"missing-ca.pem\"\n\n[clock]",
            )],
            "\"missing-ca.pem\"",
            "notifications[0]",
            "ca_file: ",
        ),
        case(
            "a webhook's plain Authorization header",
            &[(
                "[clock]",
                "[[notifications]]\nurl = \"http://127.0.0.1:9/hook\"\nheaders = { Authorization = \"GenieKey x\" }\n\n[clock]",
            )],
            "\"GenieKey x\"",
            "notifications[0].headers",
            "give Authorization as a secret",
        ),
        case(
            "a webhook's Authorization header beside its bearer_token",
            &[(
                "[clock]",
                "[[notifications]]\nurl = \"http://127.0.0.1:9/hook\"\nbearer_token = { env = \"HOME\" }\nheaders = { Authorization = { env = \"HOME\" } }\n\n[clock]",
            )],
            "Authorization",
            "notifications[0].headers",
            "bearer_token sets Authorization already: give one of the two",
        ),
        case(
            "a webhook's header secret that is not set",
            &[(
                "[clock]",
                "[[notifications]]\nurl = \"http://127.0.0.1:9/hook\"\nheaders = { X-Api-Key = { env = \"SCALEWISE_TEST_NOT_SET\" } }\n\n[clock]",
            )],
            "{ env = \"SCALEWISE_TEST_NOT_SET\" }",
            "notifications[0].headers",
            "header \"X-Api-Key\": environment variable \"SCALEWISE_TEST_NOT_SET\" is not set",
        ),
        parse_case(
            "a webhook's header that is neither text nor a secret",
            &[(
                "[clock]",
                "[[notifications]]\nurl = \"http://127.0.0.1:9/hook\"\nheaders = { X-Api-Key = 5 }\n\n[clock]",
            )],
            "5 }",
            "notifications[0].headers",
            r#"expected a string, or a secret: { env = "VAR" } or { file = "path" }"#,
        ),
        case(
            "reserved source name",
            &[
                ("[sources.prom]", "[sources.simulator]"),
                ("\"prom\"", "\"simulator\""),
            ],
            "simulator]",
            "sources",
            "the source name \"simulator\" is reserved",
        ),
        case(
            "long journal commit delay",
            &[("[clock]", "[journal]\ncommit_delay = \"2s\"\n\n[clock]")],
            "\"2s\"",
            "journal",
            "commit_delay (2s) is above the maximum of 1s: every tick waits for its record",
        ),
        case(
            "zero clock speed",
            &[("speed = 1.0", "speed = 0.0")],
            "0.0",
            "clock",
            "speed (0) must be a finite number above zero",
        ),
        case(
            "sped-up clock with a Prometheus source",
            &[("speed = 1.0", "speed = 10.0")],
            "10.0",
            "clock",
            "speed (10) must be 1 while a Prometheus source is configured (sources: prom)",
        ),
        case(
            "NaN clock speed",
            &[("speed = 1.0", "speed = nan")],
            "nan",
            "clock",
            "speed (NaN) must be a finite number above zero",
        ),
        case(
            "tiny memory",
            &[("\"64 MiB\"", "\"512 KiB\"")],
            "\"512 KiB\"",
            "runtime",
            "max_memory (512.0 KiB) is below the minimum of 1.0 MiB",
        ),
        case(
            "journal path is a folder",
            &[("[clock]", "[journal]\npath = \"./\"\n\n[clock]")],
            "\"./\"",
            "journal",
            "is a folder; give the database file",
        ),
        parse_case(
            "blank journal path",
            &[("[clock]", "[journal]\npath = \"  \"\n\n[clock]")],
            "\"  \"",
            "journal",
            "path: \"  \" is a blank path; give a file or folder name",
        ),
        parse_case(
            "blank policy folder",
            &[("policy_dir = ", "policy_dir = \"\"\n# was ")],
            "\"\"",
            "",
            "policy_dir: \"\" is a blank path",
        ),
        parse_case(
            "blank cache folder",
            &[(
                "timeout = \"100ms\"",
                "timeout = \"100ms\"\ncache_dir = \"\"",
            )],
            "\"\"",
            "runtime",
            "cache_dir: \"\" is a blank path",
        ),
        parse_case(
            "not a size",
            &[("\"64 MiB\"", "\"lots\"")],
            "\"lots\"",
            "runtime",
            "max_memory: \"lots\" is not a size",
        ),
        case(
            "tiny Wasm stack",
            &[(
                "timeout = \"100ms\"",
                "timeout = \"100ms\"\nmax_wasm_stack = \"1 KiB\"",
            )],
            "\"1 KiB\"",
            "runtime",
            "max_wasm_stack (1.0 KiB) must be at least 16 KiB",
        ),
        case(
            "state larger than memory",
            &[(
                "timeout = \"100ms\"",
                "timeout = \"100ms\"\nmax_state_bytes = \"1 GiB\"",
            )],
            "\"1 GiB\"",
            "runtime",
            "max_state_bytes (1.0 GiB) is more than max_memory (64.0 MiB)",
        ),
        case(
            "a trace and a curve",
            &[(
                "base = 100.0",
                "base = 100.0\ntrace = { path = \"scalewise.toml\" }",
            )],
            "100.0\ntrace",
            "simulations.web.load",
            "base does not apply with a trace, which replaces the synthetic curve",
        ),
        case(
            "huge memory",
            &[("\"64 MiB\"", "\"100 GiB\"")],
            "\"100 GiB\"",
            "runtime",
            "max_memory (100.0 GiB) is above the maximum of 4.0 GiB (a 32-bit Wasm memory)",
        ),
        case(
            "Wasm stack beyond wasmtime's",
            &[(
                "timeout = \"100ms\"",
                "timeout = \"100ms\"\nmax_wasm_stack = \"3 MiB\"",
            )],
            "\"3 MiB\"",
            "runtime",
            "max_wasm_stack (3.0 MiB) must be at most 1 MiB (it shares the stack of the thread it runs on)",
        ),
        case(
            "absurd clock speed",
            &[("speed = 1.0", "speed = 1e308")],
            "1e308",
            "clock",
            "must be at most 1000",
        ),
        case(
            "zero evaluation timeout",
            &[("timeout = \"100ms\"", "timeout = \"0s\"")],
            "\"0s\"",
            "runtime",
            "timeout must be longer than 0s",
        ),
        case(
            "missing policy folder",
            &[("policy_dir = \".\"", "policy_dir = \"no-such-folder\"")],
            "\"no-such-folder\"",
            "",
            "no-such-folder does not exist",
        ),
        case(
            "bad simulation name",
            &[
                ("[simulations.web]", "[simulations.\"Web/1\"]"),
                ("[simulations.web.load]", "[simulations.\"Web/1\".load]"),
            ],
            "\"Web/1\"]",
            "simulations",
            "simulation name \"Web/1\" must be non-empty, not \".\" or \"..\", and use only a-z, 0-9",
        ),
        case(
            "a retention shorter than a restart restores",
            &[("[clock]", "[journal]\nretention = \"5s\"\n\n[clock]")],
            "\"5s\"",
            "journal",
            "retention (5s) is shorter than what a restart restores from the journal: 1h (the \
             hour of scale events a policy's context carries)",
        ),
        case(
            "a retention shorter than a target metric's window",
            &[
                ("[clock]", "[journal]\nretention = \"1h\"\n\n[clock]"),
                (
                    "[[scalers.policies]]",
                    "[scalers.metrics.ready]\nsource = \"target\"\nquery = \"ready\"\nwindow = \"6h\"\n\n[[scalers.policies]]",
                ),
            ],
            "\"1h\"",
            "journal",
            "retention (1h) is shorter than what a restart restores from the journal: 6h 15s \
             (scaler \"web\"'s target metric \"ready\": its window and one interval)",
        ),
        case(
            "a step on a target metric",
            &[(
                "[[scalers.policies]]",
                "[scalers.metrics.ready]\nsource = \"target\"\nquery = \"ready\"\nwindow = \"2h\"\nstep = \"30m\"\n\n[[scalers.policies]]",
            )],
            "\"30m\"",
            "scalers[0] \"web\".metrics.ready",
            "step has no effect on a `target` metric",
        ),
        case(
            "a target metric over the point cap",
            &[(
                "[[scalers.policies]]",
                "[scalers.metrics.ready]\nsource = \"target\"\nquery = \"ready\"\nwindow = \"3d\"\n\n[[scalers.policies]]",
            )],
            "\"3d\"",
            "scalers[0] \"web\".metrics.ready",
            "window (3days) at the scaler's interval (15s) gives more than 11000 points, a target metric's limit",
        ),
        case(
            "more initial replicas than any scaler may have",
            &[("initial_replicas = 2", "initial_replicas = 4000000000")],
            "4000000000",
            "simulations.web",
            "initial_replicas (4000000000) is above runtime.max_replicas (100000)",
        ),
        case(
            "a policy timeout past any tick",
            &[("timeout = \"100ms\"", "timeout = \"9223372036854775807s\"")],
            "\"9223372036854775807s\"",
            "runtime",
            "must be at most 10m: an evaluation holds its scaler's tick",
        ),
        case(
            "zero capacity",
            &[("capacity_per_replica = 100.0", "capacity_per_replica = 0.0")],
            "0.0\n",
            "simulations.web",
            "capacity_per_replica (0) must be a finite number above zero",
        ),
        case(
            "negative noise",
            &[("base = 100.0", "base = 100.0\nnoise = -0.5")],
            "-0.5",
            "simulations.web.load",
            "noise (-0.5) must be a finite number zero or more",
        ),
        case(
            "zero-length spike",
            &[("duration = \"2m\"", "duration = \"0s\"")],
            "\"0s\"",
            "simulations.web.load.spikes[0]",
            "duration must be longer than 0s",
        ),
        case(
            "missing trace file",
            &[("base = 100.0", "trace = { path = \"traces/missing.csv\" }")],
            "\"traces/missing.csv\"",
            "simulations.web.load.trace",
            "traces/missing.csv does not exist",
        ),
        case(
            "duplicate scaler name",
            &[(
                "[scalers.behavior.scale_up]",
                "[[scalers]]\nname = \"web\" # again\ninterval = \"15s\"\nmin = 1\nmax = 2\ntarget = { kind = \"simulator\", service = \"other\" }\npolicies = [{ module = \"x\" }]\n\n[[scalers]]\nname = \"z\"\ninterval = \"15s\"\nmin = 1\nmax = 2\ntarget = { kind = \"simulator\", service = \"web\" }\npolicies = [{ module = \"x\" }]\n[scalers.behavior.scale_up]",
            )],
            "\"web\" # again",
            "scalers[1] \"web\"",
            "name \"web\" is already used by scalers[0]",
        ),
    ];

    let dir = tempfile::tempdir().unwrap();
    for case in cases {
        let text = edit(BASE, case.edits);
        let err = match parse_in(dir.path(), &text) {
            Ok(_) => panic!("{}: accepted", case.name),
            Err(err) => err,
        };
        assert_eq!(err.kind(), case.kind, "{}: {err}", case.name);
        let (line, column) = position_of(&text, case.needle);
        let (line, column) = if case.name == "TOML syntax" {
            // The parser reports where the array should have closed.
            (line + 2, 1)
        } else {
            (line, column)
        };
        let found = err
            .problems()
            .iter()
            .find(|p| p.line == line && p.column == column && p.message.contains(case.message));
        let Some(problem) = found else {
            panic!(
                "{}: no problem at {line}:{column} saying {:?}; got:\n{err}",
                case.name, case.message
            );
        };
        assert_eq!(problem.path, case.path, "{}: {problem}", case.name);
        assert_eq!(
            problem.file,
            dir.path().join("scalewise.toml"),
            "{}",
            case.name
        );
    }
}

#[test]
fn problems_print_as_file_line_column_path_message() {
    let text = edit(BASE, &[("min = 1", "min = 5"), ("max = 10", "max = 3")]);
    // The folder the tests run in exists, so `policy_dir = "."` is fine.
    let err = Config::parse_with_env(&text, Path::new("scalewise.toml"), &env).unwrap_err();
    let (line, column) = position_of(&text, "5\nmax");
    assert_eq!(
        err.to_string(),
        format!(
            "scalewise.toml:{line}:{column}: scalers[0] \"web\": min (5) is greater than max (3)"
        )
    );
    let text = edit(BASE, &[("interval = ", "intervall = ")]);
    let err = Config::parse_with_env(&text, Path::new("scalewise.toml"), &env).unwrap_err();
    let (line, _) = position_of(&text, "intervall");
    assert!(
        err.to_string().starts_with(&format!(
            "scalewise.toml:{line}:1: scalers[0] \"web\": unknown field \"intervall\", expected one of"
        )),
        "{err}"
    );
}

#[test]
fn a_sped_up_clock_is_fine_without_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let text = edit(
        BASE,
        &[
            ("speed = 1.0", "speed = 10.0"),
            (
                "[sources.prom]\nkind = \"prometheus\"\nurl = \"http://127.0.0.1:9090\"\ntimeout = \"5s\"\n",
                "",
            ),
            (
                "[scalers.metrics.latency]\nsource = \"prom\"",
                "[scalers.metrics.latency]\nsource = \"simulator\"",
            ),
            (
                "query = \"histogram_quantile(0.95, rate(x[1m]))\"",
                "query = \"p95_latency_ms\"",
            ),
        ],
    );
    let config = parse_in(dir.path(), &text).unwrap();
    assert_eq!(config.clock.speed, 10.0);
}

/// With min = 0, scale-up limits that allow only percents (or the smaller
/// of a pods and a percent limit) never leave 0: a warning at the limits.
/// A pods limit under select = "max", as HPA's default, is fine.
#[test]
fn scale_up_limits_that_never_leave_zero_are_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    const LIMITS: &str =
        "limits = [{ pods = 4, period = \"15s\" }, { percent = 100, period = \"15s\" }]";
    let at_zero = |limits: &str| edit(BASE, &[("min = 1", "min = 0"), (LIMITS, limits)]);
    for fine in [
        at_zero(LIMITS),
        edit(
            BASE,
            &[(LIMITS, "limits = [{ percent = 100, period = \"15s\" }]")],
        ),
    ] {
        assert_eq!(parse_in(dir.path(), &fine).unwrap().warnings(), []);
    }
    for stuck in [
        "limits = [{ percent = 100, period = \"15s\" }]".to_owned(),
        format!("select = \"min\"\n{LIMITS}"),
    ] {
        let text = at_zero(&stuck);
        let warnings = parse_in(dir.path(), &text).unwrap().warnings();
        assert_eq!(warnings.len(), 1, "{stuck}: {warnings:?}");
        let (line, _) = position_of(&text, "limits = ");
        assert_eq!(warnings[0].line, line, "{}", warnings[0]);
        assert!(
            warnings[0]
                .message
                .starts_with("with min = 0, these scale-up limits allow nothing from 0 replicas"),
            "{}",
            warnings[0]
        );
    }
    // select = "min" over HPA's default limits (4 pods, 100 %): warned at
    // `select`; "max" over them is fine.
    let defaults = |select: &str| at_zero(select);
    assert_eq!(
        parse_in(dir.path(), &defaults("select = \"max\""))
            .unwrap()
            .warnings(),
        []
    );
    let text = defaults("select = \"min\"");
    let warnings = parse_in(dir.path(), &text).unwrap().warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(
        warnings[0].line,
        position_of(&text, "select = ").0,
        "{}",
        warnings[0]
    );
    assert!(
        warnings[0].message.starts_with(
            "with min = 0, select = \"min\" over the default scale-up limits (4 pods, 100 %) \
             allows nothing from 0 replicas"
        ),
        "{}",
        warnings[0]
    );
}

/// A range query's grid ends at the tick when the window's whole steps,
/// rounded down to whole seconds (the range's start is rounded up to one),
/// are whole steps.
#[test]
fn a_prometheus_window_and_step_load_when_their_grid_ends_at_the_tick() {
    let dir = tempfile::tempdir().unwrap();
    let with = |window: &str, step: &str| {
        edit(
            BASE,
            &[
                ("step = \"30s\"", &format!("step = \"{step}\"")),
                ("window = \"10m\"", &format!("window = \"{window}\"")),
            ],
        )
    };
    for (window, step) in [("30s", "1500ms"), ("2800ms", "400ms"), ("10m", "250ms")] {
        assert!(
            parse_in(dir.path(), &with(window, step)).is_ok(),
            "{window} at {step}"
        );
    }
    // 1200ms at 400ms: the range is 1 s, its newest point 200 ms before the
    // tick.
    for (window, step) in [("5s", "1500ms"), ("1200ms", "400ms")] {
        let err = parse_in(dir.path(), &with(window, step))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("would give points that do not end at the tick's time"),
            "{window} at {step}: {err}"
        );
    }
}

/// PromQL the parser here cannot read is a warning at the query, not an
/// error: Prometheus (or a compatible store) judges its own language.
#[test]
fn promql_this_build_cannot_parse_is_a_located_warning() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(parse_in(dir.path(), BASE).unwrap().warnings(), []);

    let cases = [
        // Unbalanced: Prometheus would refuse it too.
        (
            "histogram_quantile(0.95, rate(x[1m])",
            "unclosed left parenthesis",
        ),
        // MetricsQL (VictoriaMetrics), not PromQL.
        ("sum(rate(x[1m])) keep_metric_names", ""),
    ];
    for (query, says) in cases {
        let text = edit(
            BASE,
            &[(
                "query = \"histogram_quantile(0.95, rate(x[1m]))\"",
                &format!("query = {query:?}"),
            )],
        );
        let config = parse_in(dir.path(), &text).expect("a warning, not an error");
        let warnings = config.warnings();
        assert_eq!(warnings.len(), 1, "{query}: {warnings:?}");
        let warning = &warnings[0];
        let (line, column) = position_of(&text, &format!("{query:?}"));
        assert_eq!((warning.line, warning.column), (line, column), "{warning}");
        assert_eq!(warning.path, "scalers[0] \"web\".metrics.latency");
        assert!(
            warning
                .message
                .starts_with("query does not parse as PromQL here")
                && warning.message.contains(says)
                && warning.message.contains("still sent to \"prom\""),
            "{warning}"
        );
    }

    // Simulator queries are not PromQL.
    let text = edit(
        BASE,
        &[("query = \"cpu\"", "query = \"cpu\" # not PromQL either")],
    );
    assert_eq!(parse_in(dir.path(), &text).unwrap().warnings(), []);
}

#[test]
fn every_problem_is_reported_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let text = edit(
        BASE,
        &[
            ("speed = 1.0", "speed = -1.0"),
            ("min = 1", "min = 20"),
            ("source = \"prom\"", "source = \"thanos\""),
            ("pods = 4", "pods = 0"),
            ("\"http://127.0.0.1:9090\"", "\"ftp://x\""),
        ],
    );
    let err = parse_in(dir.path(), &text).unwrap_err();
    let problems = err.problems();
    let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(problems.len(), 5, "{err}");
    let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
    for (message, needle) in messages.iter().zip([
        "speed (-1)",
        "url \"ftp://x\" must start",
        "min (20) is greater than max (10)",
        "source \"thanos\"",
        "pods must be at least 1",
    ]) {
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }
    assert_eq!(err.to_string().lines().count(), 5);
}

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let root = tempfile::tempdir().unwrap();
    let conf = root.path().join("conf");
    for folder in ["policies", "conf/secrets", "conf/traces"] {
        std::fs::create_dir_all(root.path().join(folder)).unwrap();
    }
    std::fs::write(conf.join("secrets/pw"), "hunter2\n").unwrap();
    std::fs::write(conf.join("traces/t.csv"), "timestamp_s,requests\n0,1\n").unwrap();
    let absolute_journal = root.path().join("elsewhere.db");
    let text = edit(
        BASE,
        &[
            ("policy_dir = \".\"", "policy_dir = \"../policies\""),
            (
                "[clock]",
                &format!("[journal]\npath = {:?}\n\n[clock]", absolute_journal),
            ),
            (
                "timeout = \"5s\"",
                "timeout = \"5s\"\nbasic_auth = { username = \"u\", password = { file = \"secrets/pw\" } }",
            ),
            ("base = 100.0", "trace = { path = \"traces/t.csv\" }"),
        ],
    ) + "\n[[notifications]]\nurl = \"http://127.0.0.1:9/hook\"\nbearer_token = { file = \"secrets/pw\" }\n\
        headers = { X-Api-Key = { file = \"secrets/pw\" }, X-Team = \"checkout\" }\n\
        \n[api]\ntoken = { file = \"secrets/pw\" }\n";
    let config = parse_in(&conf, &text).unwrap();
    assert_eq!(
        config.api.token,
        Some(Secret::File(conf.join("secrets/pw")))
    );
    let hook = config.notifications[0].get_ref();
    let token = hook.bearer_token.as_ref();
    assert_eq!(token, Some(&Secret::File(conf.join("secrets/pw"))));
    assert_eq!(
        hook.headers["X-Api-Key"],
        HeaderSetting::Secret(Secret::File(conf.join("secrets/pw")))
    );
    assert_eq!(hook.headers["X-Api-Key"].resolve().unwrap(), "hunter2");
    assert_eq!(
        hook.headers["X-Team"],
        HeaderSetting::Value("checkout".into())
    );
    assert_eq!(config.policy_dir.get_ref(), &conf.join("../policies"));
    assert_eq!(config.journal.path, absolute_journal);
    let SourceConfig::Prometheus(prom) = config.sources["prom"].get_ref();
    let password = &prom.basic_auth.as_ref().unwrap().password;
    assert_eq!(password, &Secret::File(conf.join("secrets/pw")));
    assert_eq!(password.resolve().unwrap(), "hunter2");
    let trace = config.simulations["web"]
        .get_ref()
        .load
        .trace
        .as_ref()
        .unwrap();
    assert_eq!(trace.path, conf.join("traces/t.csv"));
    assert_eq!(config.origin().dir(), conf);

    // The journal's default file lands next to the config too.
    let config = parse_in(&conf, &BASE.replace("\".\"", "\"../policies\"")).unwrap();
    assert_eq!(config.journal.path, conf.join("scalewise-journal.db"));

    // A bare file name is relative to the working folder.
    assert_eq!(
        base_dir(Path::new("scalewise.toml")),
        std::env::current_dir().unwrap()
    );
}

#[test]
fn metrics_keep_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let text = edit(
        BASE,
        &[
            ("[scalers.metrics.cpu]", "[scalers.metrics.zeta]"),
            ("[scalers.metrics.latency]", "[scalers.metrics.alpha]"),
            ("metric = \"cpu\"", "metric = \"zeta\""),
        ],
    );
    let config = parse_in(dir.path(), &text).unwrap();
    let names: Vec<&String> = config.scalers[0].get_ref().metrics.keys().collect();
    assert_eq!(names, ["zeta", "alpha"]);
}

#[test]
fn load_reads_the_file_and_names_it_when_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scalewise.toml");
    let err = Config::load(&path).unwrap_err();
    assert_eq!(err.kind(), "read");
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read", path.display()))
    );

    std::fs::write(&path, BASE).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.origin().path(), path);
    assert_eq!(config.origin().text(), BASE);
}

// --- The demo and the example ----------------------------------------------

fn param(name: &str, kind: ParameterKind, required: bool, default: Option<Json>) -> ParameterSpec {
    ParameterSpec {
        name: name.into(),
        description: format!("the {name}"),
        kind,
        required,
        default,
    }
}

/// What the bundled policies declare (their parameter names and kinds).
fn bundled() -> BTreeMap<String, PolicyInfo> {
    use ParameterKind::*;
    let info = |name: &str, parameters| PolicyInfo {
        name: name.into(),
        version: "0.1.0".into(),
        description: String::new(),
        parameters,
    };
    BTreeMap::from([
        (
            "target-tracking".to_owned(),
            info(
                "target-tracking",
                vec![
                    param("metric", Metric, true, None),
                    param("target", Number, true, None),
                    param("tolerance", Number, false, Some(json!(0.1))),
                ],
            ),
        ),
        (
            "threshold".to_owned(),
            info(
                "threshold",
                vec![
                    param("metric", Metric, true, None),
                    param("upper", Number, true, None),
                    param("lower", Number, true, None),
                    param("up_for", Duration, false, Some(json!("0s"))),
                    param("down_for", Duration, false, Some(json!("0s"))),
                    param("step_up", Integer, false, Some(json!(1))),
                    param("step_down", Integer, false, Some(json!(1))),
                    param("enabled", Boolean, false, Some(json!(true))),
                    param("note", Text, false, None),
                ],
            ),
        ),
    ])
}

#[test]
fn the_demo_parses_validates_and_matches_the_bundled_policies() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.db");
    let config = Config::demo(dir.path(), &journal);
    config.validate_with_env(&env).unwrap();
    config.check_policies(&bundled()).unwrap();

    assert_eq!(config.policy_dir.get_ref(), dir.path());
    assert_eq!(config.journal.path, journal);
    assert_eq!(config.clock.speed, 10.0);
    let names: Vec<&str> = config
        .scalers
        .iter()
        .map(|s| s.get_ref().name.get_ref().as_str())
        .collect();
    assert_eq!(names, ["web", "worker"]);
    let web = config.scalers[0].get_ref();
    assert_eq!(
        web.policies[0].get_ref().module.get_ref(),
        "target-tracking"
    );
    // The web scaler keeps HPA's default behaviour.
    assert_eq!(web.behavior, Behavior::default());
    let spike = &config.simulations["web"].get_ref().load.spikes[0];
    assert_eq!(
        (spike.at, spike.duration),
        (
            std::time::Duration::from_secs(8 * 60),
            std::time::Duration::from_secs(4 * 60)
        )
    );
    // The whole story (through scale-in after the web spike, 12m + 5m
    // stabilisation) fits in about 3 minutes of real time.
    let story = 30.0 * 60.0 / config.clock.speed;
    assert!((150.0..=200.0).contains(&story), "{story}s");

    let worker = config.scalers[1].get_ref();
    let params = worker.policies[0]
        .get_ref()
        .parameters(&bundled()["threshold"]);
    assert_eq!(
        params,
        json!({
            "metric": "queue_depth", "upper": 100.0, "lower": 10.0, "up_for": "1m",
            "down_for": "3m", "step_up": 2, "step_down": 1, "enabled": true,
        })
    );
}

#[test]
fn the_demo_text_is_the_embedded_constant() {
    let config = Config::parse_unvalidated(DEMO_CONFIG, Path::new("demo.toml")).unwrap();
    assert_eq!(config.scalers.len(), 2);
}

const EXAMPLE: &str = include_str!("../../../docs/config.example.toml");

#[test]
fn the_example_parses_and_validates_with_its_files_present() {
    let dir = tempfile::tempdir().unwrap();
    for folder in ["policies", "secrets", "traces"] {
        std::fs::create_dir(dir.path().join(folder)).unwrap();
    }
    std::fs::write(dir.path().join("secrets/mimir-password"), "pw\n").unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["mimir.example.com".to_owned()]).unwrap();
    std::fs::write(dir.path().join("secrets/mimir-ca.pem"), ca.cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("traces/nasa_jul95_per_minute.csv"),
        "timestamp_s,requests\n0,42\n60,62\n",
    )
    .unwrap();
    let config = parse_in(dir.path(), EXAMPLE).unwrap();
    config.check_policies(&bundled()).unwrap();

    let checkout = config.scalers[0].get_ref();
    let metrics: Vec<&String> = checkout.metrics.keys().collect();
    assert_eq!(metrics, ["queue", "p95_latency", "cpu"]);
    assert_eq!(checkout.behavior.scale_down.select, Select::Min);
    assert_eq!(config.scalers[1].get_ref().mode, Mode::DryRun);
    let SourceConfig::Prometheus(mimir) = config.sources["mimir"].get_ref();
    assert_eq!(mimir.headers["X-Scope-OrgID"], "team-checkout".into());
    assert_eq!(
        mimir.ca_file.as_deref(),
        Some(dir.path().join("secrets/mimir-ca.pem").as_path())
    );

    // Without the token in the environment it is refused up front.
    let err =
        Config::parse_with_env(EXAMPLE, &dir.path().join("scalewise.toml"), &|_| None).unwrap_err();
    assert_eq!(err.problems().len(), 1, "{err}");
    assert!(err.to_string().contains("PROMETHEUS_TOKEN"), "{err}");
}

// --- Checking against policy modules ----------------------------------------

#[test]
fn policies_are_checked_against_what_modules_declare() {
    struct Case {
        name: &'static str,
        policy: &'static str,
        needle: &'static str,
        path: &'static str,
        message: &'static str,
    }
    const P: &str = "scalers[0] \"web\".policies[0] \"threshold\".params";
    let cases = [
        Case {
            name: "unknown module",
            policy: "module = \"target-trackin\"",
            needle: "\"target-trackin\"",
            path: "scalers[0] \"web\".policies[0] \"target-trackin\"",
            message: "unknown module \"target-trackin\"; loaded modules: target-tracking, threshold",
        },
        Case {
            name: "unknown parameter",
            policy: "module = \"threshold\"\nparams = { metric = \"cpu\", upper = 1, lower = 0, uper = 2 }",
            needle: "uper =",
            path: P,
            message: "unknown parameter \"uper\"; threshold accepts: metric, upper, lower, up_for, down_for, step_up, step_down, enabled, note",
        },
        Case {
            name: "missing required parameter",
            policy: "module = \"threshold\"\nparams = { metric = \"cpu\", upper = 1 }",
            needle: "{ metric",
            path: "scalers[0] \"web\".policies[0] \"threshold\"",
            message: "missing required parameter \"lower\" (number: the lower)",
        },
        Case {
            name: "missing params table",
            policy: "module = \"threshold\"",
            needle: "[[scalers.policies]]",
            path: "scalers[0] \"web\".policies[0] \"threshold\"",
            message: "missing required parameter \"metric\"",
        },
        Case {
            name: "number given text",
            policy: "module = \"threshold\"\nparams = { metric = \"cpu\", upper = \"80%\", lower = 0 }",
            needle: "\"80%\"",
            path: P,
            message: "upper: expected a number, got text \"80%\"",
        },
        Case {
            name: "integer given a float",
            policy: "module = \"threshold\"\nparams = { metric = \"cpu\", upper = 1, lower = 0, step_up = 1.5 }",
            needle: "1.5",
            path: P,
            message: "step_up: expected an integer, got the number 1.5",
        },
        Case {
            name: "integer given a whole float",
            policy: "module = \"threshold\"\nparams = { metric = \"cpu\", upper = 1, lower = 0, step_up = 2.0 }",
            needle: "2.0",
            path: P,
            message: "step_up: expected an integer, got the number 2.0; write it as 2",
        },
        Case {
            name: "boolean given text",
            policy: "module = \"threshold\"\nparams = { metric = \"cpu\", upper = 1, lower = 0, enabled = \"yes\" }",
            needle: "\"yes\"",
            path: P,
            message: "enabled: expected true or false, got text \"yes\"",
        },
        Case {
            name: "text given a number",
            policy: "module = \"threshold\"\nparams = { metric = \"cpu\", upper = 1, lower = 0, note = 3 }",
            needle: "3 }",
            path: P,
            message: "note: expected text, got the integer 3",
        },
        Case {
            name: "bad duration",
            policy: "module = \"threshold\"\nparams = { metric = \"cpu\", upper = 1, lower = 0, up_for = \"5 minutes later\" }",
            needle: "\"5 minutes later\"",
            path: P,
            message: "up_for: \"5 minutes later\" is not a duration",
        },
        Case {
            name: "unknown metric",
            policy: "module = \"threshold\"\nparams = { metric = \"cpuu\", upper = 1, lower = 0 }",
            needle: "\"cpuu\"",
            path: P,
            message: "metric: unknown metric \"cpuu\"; this scaler's metrics: cpu, latency",
        },
        Case {
            name: "infinite number",
            policy: "module = \"threshold\"\nparams = { metric = \"cpu\", upper = inf, lower = 0 }",
            needle: "inf,",
            path: P,
            message: "upper: expected a finite number, got inf",
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    let modules = bundled();
    for case in cases {
        let text = edit(
            BASE,
            &[(
                "module = \"target-tracking\"\nparams = { metric = \"cpu\", target = 60.0 }",
                case.policy,
            )],
        );
        let config = parse_in(dir.path(), &text)
            .unwrap_or_else(|err| panic!("{}: static check failed: {err}", case.name));
        let err = config.check_policies(&modules).unwrap_err();
        let (line, column) = position_of(&text, case.needle);
        let found = err
            .problems()
            .iter()
            .find(|p| p.line == line && p.column == column && p.message.contains(case.message));
        let Some(problem) = found else {
            panic!(
                "{}: no problem at {line}:{column} saying {:?}; got:\n{err}",
                case.name, case.message
            );
        };
        assert_eq!(problem.path, case.path, "{}", case.name);
    }
}

/// Locating problems needs a second, span-keeping parse of the text: it is
/// made only when there is a problem to locate (for a fleet's config it is
/// the largest allocation of a start).
#[test]
fn the_text_is_parsed_again_only_to_locate_a_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = parse_in(dir.path(), BASE).unwrap();
    let text = OnceCell::new();
    let doc = Document::of(config.origin(), &text);
    assert!(validate::check(&config, &doc, &env).is_empty());
    assert!(validate::warnings(&config, &doc).is_empty());
    config.check_policies_in(&doc, &bundled()).unwrap();
    assert!(!doc.is_parsed(), "a valid config was parsed again");
    assert!(
        text.get().is_none(),
        "a valid config's text was decompressed"
    );

    let bad = edit(BASE, &[("target = 60.0", "target = \"high\"")]);
    let config = parse_in(dir.path(), &bad).unwrap();
    let text = OnceCell::new();
    let doc = Document::of(config.origin(), &text);
    let err = config.check_policies_in(&doc, &bundled()).unwrap_err();
    assert!(doc.is_parsed());
    assert_eq!(text.get().map(String::as_str), Some(bad.as_str()));
    let problem = &err.problems()[0];
    assert_eq!(
        (problem.line, problem.column),
        position_of(&bad, "\"high\""),
        "{err}"
    );
}

/// What a running daemon keeps for the module gate: the scalers' policies
/// grouped by content. A group is checked once, but a problem is reported
/// at every place the group has, as the whole config's check reports it.
#[test]
fn policy_uses_report_a_grouped_problem_at_each_place() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"{BASE}
[simulations.api]
capacity_per_replica = 50.0
initial_replicas = 1
load = {{ base = 10.0 }}

[[scalers]]
name = "api"
interval = "15s"
min = 1
max = 4
target = {{ kind = "simulator", service = "api" }}

[scalers.metrics.cpu]
source = "simulator"
query = "cpu"

[scalers.metrics.latency]
source = "simulator"
query = "p95_latency_ms"

[[scalers.policies]]
module = "target-tracking"
params = {{ metric = "cpu", target = 60.0 }}

[[scalers.policies]]
module = "threshold"
params = {{ metric = "latency", upper = 500, lower = 100 }}
"#
    );
    let config = parse_in(dir.path(), &text).unwrap();
    let uses = PolicyUses::of(&config);
    // web's and api's target-tracking read the same (same parameters and
    // metric names): one group; api's threshold: another.
    assert_eq!(uses.group_count(), 2);
    let modules = bundled();
    config.check_policies(&modules).unwrap();
    for module in ["target-tracking", "threshold", "absent"] {
        uses.check_module(module, config.origin(), &modules)
            .unwrap();
    }

    // A version of target-tracking without `target`.
    let mut narrowed = modules.clone();
    let info = narrowed.get_mut("target-tracking").unwrap();
    info.parameters.retain(|p| p.name != "target");
    let err = uses
        .check_module("target-tracking", config.origin(), &narrowed)
        .unwrap_err();
    let places: Vec<(usize, usize)> = err.problems().iter().map(|p| (p.line, p.column)).collect();
    let last = text.rfind("target = 60.0").unwrap();
    let second = (
        text[..last].matches('\n').count() + 1,
        last - text[..last].rfind('\n').unwrap(),
    );
    assert_eq!(
        places,
        [position_of(&text, "target = 60.0"), second],
        "{err}"
    );
    for problem in err.problems() {
        assert!(
            problem.message.starts_with("unknown parameter \"target\""),
            "{problem}"
        );
    }
    // The same problems the whole config's check finds, and nothing of
    // threshold's.
    assert_eq!(
        err.problems(),
        config.check_policies(&narrowed).unwrap_err().problems()
    );
    uses.check_module("threshold", config.origin(), &narrowed)
        .unwrap();
}

#[test]
fn policy_problems_are_all_reported() {
    let dir = tempfile::tempdir().unwrap();
    let text = edit(
        BASE,
        &[(
            "params = { metric = \"cpu\", target = 60.0 }",
            "params = { metric = \"mem\", target = \"high\", extra = 1 }",
        )],
    );
    let config = parse_in(dir.path(), &text).unwrap();
    let err = config.check_policies(&bundled()).unwrap_err();
    assert_eq!(err.kind(), "invalid");
    assert_eq!(err.problems().len(), 3, "{err}");
    let empty: BTreeMap<String, PolicyInfo> = BTreeMap::new();
    let err = config.check_policies(&empty).unwrap_err();
    assert!(err.to_string().ends_with("loaded modules: none"), "{err}");
}

#[test]
fn parameters_get_declared_defaults_and_keep_given_values() {
    let modules = bundled();
    let cases: Vec<(&str, Json)> = vec![
        (
            "{ metric = \"cpu\", target = 60.0 }",
            json!({"metric": "cpu", "target": 60.0, "tolerance": 0.1}),
        ),
        (
            "{ metric = \"cpu\", target = 60, tolerance = 0 }",
            json!({"metric": "cpu", "target": 60, "tolerance": 0}),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (params, expected) in cases {
        let text = edit(BASE, &[("{ metric = \"cpu\", target = 60.0 }", params)]);
        let config = parse_in(dir.path(), &text).unwrap();
        let policy = config.scalers[0].get_ref().policies[0].get_ref();
        assert_eq!(
            policy.parameters(&modules["target-tracking"]),
            expected,
            "{params}"
        );
    }
    // No params table at all: only defaults.
    let policy = PolicyRef {
        module: Spanned::new(0..0, "target-tracking".into()),
        params: None,
    };
    assert_eq!(
        policy.parameters(&modules["target-tracking"]),
        json!({"tolerance": 0.1})
    );
}

#[test]
fn toml_values_convert_to_json() {
    let table: toml::Table = toml::from_str(
        "s = \"x\"\ni = 3\nf = 1.5\nb = true\nd = 1979-05-27T07:32:00Z\na = [1, \"two\"]\nt = { k = nan }\n",
    )
    .unwrap();
    assert_eq!(
        toml_to_json(&toml::Value::Table(table)),
        json!({
            "s": "x", "i": 3, "f": 1.5, "b": true, "d": "1979-05-27T07:32:00Z",
            "a": [1, "two"], "t": {"k": null},
        })
    );
}

/// Scalers given the same policy parameters share one parsed table; other
/// tables stay their own, and every scaler still reads its own values.
#[test]
fn identical_policy_params_are_parsed_into_one_shared_table() {
    let dir = tempfile::tempdir().unwrap();
    let scaler = |name: &str, params: &str| {
        format!(
            "\n[simulations.{name}]\ncapacity_per_replica = 100.0\ninitial_replicas = 2\n\
             [simulations.{name}.load]\nbase = 100.0\n\
             \n[[scalers]]\nname = \"{name}\"\ninterval = \"15s\"\nmin = 1\nmax = 10\n\
             target = {{ kind = \"simulator\", service = \"{name}\" }}\n\
             [scalers.metrics.cpu]\nsource = \"simulator\"\nquery = \"cpu\"\n\
             [[scalers.policies]]\nmodule = \"target-tracking\"\nparams = {params}\n"
        )
    };
    let mut text = BASE.to_owned();
    text.push_str(&scaler("a", "{ metric = \"cpu\", target = 60.0 }"));
    text.push_str(&scaler("b", "{ metric = \"cpu\", target = 70.0 }"));
    text.push_str(&scaler("c", "{ metric = \"cpu\", target = 60.0 }"));
    let config = parse_in(dir.path(), &text).unwrap();
    config.check_policies(&bundled()).unwrap();
    let params: Vec<&Arc<toml::Table>> = config
        .scalers
        .iter()
        .map(|s| {
            s.get_ref().policies[0]
                .get_ref()
                .params
                .as_ref()
                .unwrap()
                .get_ref()
        })
        .collect();
    let targets: Vec<f64> = params
        .iter()
        .map(|t| t["target"].as_float().unwrap())
        .collect();
    assert_eq!(targets, [60.0, 60.0, 70.0, 60.0]);
    // "web" (BASE), "a" and "c": one table.
    assert!(Arc::ptr_eq(params[0], params[1]));
    assert!(Arc::ptr_eq(params[0], params[3]));
    assert!(!Arc::ptr_eq(params[0], params[2]));
    assert_eq!(Arc::strong_count(params[0]), 3);
}

#[test]
fn sizes_round_trip_exactly_through_json() {
    let limits = RuntimeLimits {
        max_memory: ByteSize::b(1_376_256),
        ..RuntimeLimits::default()
    };
    let json = serde_json::to_value(&limits).unwrap();
    assert_eq!(json["max_memory"], 1_376_256, "1.3 MiB would round");
    assert_eq!(json["max_state_bytes"], "64.0 KiB");
    let back: RuntimeLimits = serde_json::from_value(json).unwrap();
    assert_eq!(back, limits);
}

/// A scaler of an AWS Auto Scaling group, its metric read from a simulated
/// service (any source would do).
const ASG: &str = r#"policy_dir = "."

[simulations.load]
capacity_per_replica = 100.0
initial_replicas = 2

[simulations.load.load]
base = 100.0

[[scalers]]
name = "workers"
interval = "15s"
min = 1
max = 10

[scalers.target]
kind = "aws-asg"
group = "workers-asg"
region = "eu-west-1"
endpoint = "https://autoscaling.eu-west-1.amazonaws.com"
drain_webhook = "http://drainer.internal:8080/drain"
drain_delay = "30s"
drain_timeout = "5m"

[scalers.metrics.cpu]
source = "simulator"
query = "load/cpu"

[[scalers.policies]]
module = "target-tracking"
params = { metric = "cpu", target = 60.0 }
"#;

#[test]
fn an_auto_scaling_group_target_parses_with_its_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let config = parse_in(dir.path(), ASG).unwrap();
    let target = config.scalers[0].get_ref().target.get_ref().clone();
    assert_eq!(target.kind(), "aws-asg");
    let TargetConfig::AwsAsg(asg) = target else {
        panic!("{target:?}")
    };
    assert_eq!(asg.group, "workers-asg");
    assert_eq!(asg.drain_delay, Duration::from_secs(30));
    assert!(asg.protect_instances, "protection is on by default");

    let minimal = edit(
        ASG,
        &[(
            "region = \"eu-west-1\"\nendpoint = \"https://autoscaling.eu-west-1.amazonaws.com\"\ndrain_webhook = \"http://drainer.internal:8080/drain\"\ndrain_delay = \"30s\"\ndrain_timeout = \"5m\"\n",
            "",
        )],
    );
    let config = parse_in(dir.path(), &minimal).unwrap();
    let TargetConfig::AwsAsg(asg) = config.scalers[0].get_ref().target.get_ref().clone() else {
        panic!()
    };
    assert_eq!(
        (asg.region, asg.endpoint, asg.drain_webhook),
        (None, None, None)
    );
    assert_eq!(asg.drain_delay, Duration::ZERO);
    assert_eq!(asg.drain_timeout, Duration::from_secs(300));
}

#[test]
fn auto_scaling_group_problems_are_reported_at_their_place() {
    const AT: &str = "scalers[0] \"workers\".target";
    /// Name, edits, where the problem is, what it says.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        (
            "webhook without a scheme",
            &[("\"http://drainer.internal:8080/drain\"", "\"drainer:8080\"")],
            "\"drainer:8080\"",
            "drain_webhook \"drainer:8080\" must start with http:// or https://",
        ),
        (
            "endpoint that does not parse",
            &[(
                "\"https://autoscaling.eu-west-1.amazonaws.com\"",
                "\"http://[::1\"",
            )],
            "\"http://[::1\"",
            "endpoint \"http://[::1\" is not a URL",
        ),
        (
            "timeout shorter than the delay",
            &[("drain_timeout = \"5m\"", "drain_timeout = \"10s\"")],
            "\"10s\"",
            "drain_timeout (10s) is shorter than drain_delay (30s)",
        ),
        (
            "blank group",
            &[("\"workers-asg\"", "\" \"")],
            "\" \"",
            "group \" \" must be an Auto Scaling group's name",
        ),
        (
            "not a region",
            &[("\"eu-west-1\"", "\"EU West\"")],
            "\"EU West\"",
            "region \"EU West\" is not an AWS region name",
        ),
        (
            "undrain webhook without a scheme",
            &[(
                "drain_delay = ",
                "undrain_webhook = \"undrainer:8080\"\ndrain_delay = ",
            )],
            "\"undrainer:8080\"",
            "undrain_webhook \"undrainer:8080\" must start with http:// or https://",
        ),
        (
            "undrain webhook without a drain webhook",
            &[(
                "drain_webhook = \"http://drainer.internal:8080/drain\"",
                "undrain_webhook = \"http://drainer.internal:8080/undrain\"",
            )],
            "\"http://drainer.internal:8080/undrain\"",
            "undrain_webhook without drain_webhook: nothing is drained to undo",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, edits, needle, message) in cases {
        let text = edit(ASG, edits);
        let err = parse_in(dir.path(), &text).expect_err(name);
        let (line, column) = position_of(&text, needle);
        let found = err
            .problems()
            .iter()
            .find(|p| p.line == line && p.column == column && p.message.contains(message));
        let Some(problem) = found else {
            panic!("{name}: no problem at {line}:{column} saying {message:?}; got:\n{err}");
        };
        // A webhook's problems are the webhook's, in either of its forms.
        let expected = match message.split_once(' ') {
            Some((field @ ("drain_webhook" | "undrain_webhook"), url)) if url.starts_with('"') => {
                format!("{AT}.{field}")
            }
            _ => AT.to_owned(),
        };
        assert_eq!(problem.path, expected, "{name}: {problem}");
    }

    // An unknown field stops the parse, located at the field.
    let text = edit(ASG, &[("drain_delay = ", "drain_dealy = ")]);
    let err = parse_in(dir.path(), &text).unwrap_err();
    assert_eq!(err.kind(), "parse");
    let (line, _) = position_of(&text, "drain_dealy");
    assert!(
        err.problems()
            .iter()
            .any(|p| p.line == line && p.message.contains("unknown field \"drain_dealy\"")),
        "{err}"
    );

    // Two scalers of one group would fight.
    let second = ASG
        .split_once("[[scalers]]")
        .map(|(_, scaler)| format!("[[scalers]]{scaler}"))
        .unwrap()
        .replace("name = \"workers\"", "name = \"workers-2\"");
    let text = format!("{ASG}\n{second}");
    let err = parse_in(dir.path(), &text).unwrap_err();
    assert!(
        err.to_string().contains(
            "scalers[1] \"workers-2\".target: Auto Scaling group \"workers-asg\" is already scaled by scalers[0]"
        ),
        "{err}"
    );
    // So do two whose endpoint is written otherwise (a trailing slash, the
    // host in capitals).
    for written in [
        "https://autoscaling.eu-west-1.amazonaws.com/",
        "https://AutoScaling.EU-WEST-1.amazonaws.com:443",
    ] {
        let text = format!(
            "{ASG}\n{}",
            second.replace("https://autoscaling.eu-west-1.amazonaws.com", written)
        );
        let err = parse_in(dir.path(), &text).unwrap_err().to_string();
        assert!(
            err.contains("is already scaled by scalers[0]"),
            "{written}: {err}"
        );
    }
}

#[test]
fn a_kubernetes_target_defaults_to_a_deployment_and_is_checked_at_its_place() {
    let text = asg_with_target("kind = \"kubernetes\"\nname = \"workers\"\nnamespace = \"jobs\"\n");
    let dir = tempfile::tempdir().unwrap();
    let config = parse_in(dir.path(), &text).unwrap();
    let TargetConfig::Kubernetes(k8s) = config.scalers[0].get_ref().target.get_ref().clone() else {
        panic!()
    };
    assert_eq!(
        (k8s.api_version.as_str(), k8s.object.as_str(), k8s.plural),
        ("apps/v1", "Deployment", None)
    );

    const AT: &str = "scalers[0] \"workers\".target";
    let cases = [
        (
            "name = \"workers\"\nnamespace",
            "name = \"Workers_1\"\nnamespace",
            "\"Workers_1\"",
            "name \"Workers_1\" is not a Kubernetes object name",
        ),
        (
            "namespace = \"jobs\"",
            "namespace = \"jobs.prod\"",
            "\"jobs.prod\"",
            "namespace \"jobs.prod\" is not a Kubernetes namespace name",
        ),
        (
            "namespace = \"jobs\"",
            "namespace = \"jobs\"\napi_version = \"apps\"",
            "\"apps\"",
            "api_version \"apps\" is not an API version",
        ),
        (
            "namespace = \"jobs\"",
            "namespace = \"jobs\"\nobject = \"deployment\"",
            "\"deployment\"",
            "object \"deployment\" is not a Kubernetes kind",
        ),
        (
            "namespace = \"jobs\"",
            "namespace = \"jobs\"\nplural = \"Worker Pools\"",
            "\"Worker Pools\"",
            "plural \"Worker Pools\" is not a resource name",
        ),
    ];
    assert_refused_at(dir.path(), &text, AT, &cases);
    let second = second_scaler(&text);
    let err = parse_in(dir.path(), &format!("{text}\n{second}")).unwrap_err();
    assert!(
        err.to_string().contains(
            "scalers[1] \"workers-2\".target: Deployment \"workers\" is already scaled by scalers[0]"
        ),
        "{err}"
    );
}

#[test]
fn two_scalers_of_one_simulated_service_are_refused_at_the_second() {
    let second = "\n[[scalers]]\nname = \"web-2\"\ninterval = \"15s\"\nmin = 1\nmax = 10\ntarget = { kind = \"simulator\", service = \"web\" }\n\n[[scalers.policies]]\nmodule = \"target-tracking\"\nparams = { metric = \"cpu\", target = 60.0 }\n";
    let text = format!("{BASE}{second}");
    let dir = tempfile::tempdir().unwrap();
    let err = parse_in(dir.path(), &text).unwrap_err();
    assert!(
        err.to_string().contains(
            "scalers[1] \"web-2\".target: target service \"web\" is already scaled by scalers[0]; two scalers on one target would fight"
        ),
        "{err}"
    );
}

#[test]
fn a_rebalance_target_is_checked_at_its_place() {
    let text =
        asg_with_target("kind = \"rebalance\"\nendpoint = \"http://coordinator.jobs:8080/api\"\n");
    let dir = tempfile::tempdir().unwrap();
    let config = parse_in(dir.path(), &text).unwrap();
    let target = config.scalers[0].get_ref().target.get_ref().clone();
    assert_eq!(target.kind(), "rebalance");
    let TargetConfig::Rebalance(workers) = target else {
        panic!()
    };
    assert_eq!(workers.timeout, std::time::Duration::from_secs(600));

    const AT: &str = "scalers[0] \"workers\".target";
    let cases = [
        (
            "endpoint = \"http://coordinator.jobs:8080/api\"",
            "endpoint = \"coordinator:8080\"",
            "\"coordinator:8080\"",
            "endpoint \"coordinator:8080\" must start with http:// or https://",
        ),
        (
            "endpoint = \"http://coordinator.jobs:8080/api\"",
            "endpoint = \"http://coordinator.jobs:8080/api\"\ntimeout = \"0s\"",
            "\"0s\"",
            "timeout (0s) must be at least 1s",
        ),
        (
            "endpoint = \"http://coordinator.jobs:8080/api\"",
            "endpoint = \"http://coordinator.jobs:8080/api\"\ntimeout = \"20s\"",
            "\"20s\"",
            "timeout (20s) must be at least twice the scaler's interval (15s)",
        ),
    ];
    assert_refused_at(dir.path(), &text, AT, &cases);
    // An interval too long to double is refused at its place (the timeout
    // check overflowed and panicked).
    let err = parse_in(
        dir.path(),
        &text.replace("interval = \"15s\"", "interval = \"300000000000y\""),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("scalers[0] \"workers\": interval (")
            && err.contains("must be between 1s and 24h"),
        "{err}"
    );
    assert!(!err.contains("timeout"), "{err}");
    let second = second_scaler(&text).replace("8080/api\"", "8080/api/\"");
    let err = parse_in(dir.path(), &format!("{text}\n{second}")).unwrap_err();
    assert!(
        err.to_string().contains(
            "scalers[1] \"workers-2\".target: shard coordinator \"http://coordinator.jobs:8080/api/\" is already scaled by scalers[0]"
        ),
        "{err}"
    );
    // The same URL written otherwise (the host in capitals), or with
    // credentials in it (which the error does not quote).
    for written in [
        "http://Coordinator.JOBS",
        "http://ops:s3cret@coordinator.jobs",
    ] {
        let second = second_scaler(&text).replace("http://coordinator.jobs", written);
        let err = parse_in(dir.path(), &format!("{text}\n{second}")).unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("is already scaled by scalers[0]"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}

#[test]
fn drain_webhook_and_coordinator_credentials_parse_and_are_checked_at_their_place() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("drain-token"), "t\n").unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["drainer".to_owned()]).unwrap();
    std::fs::write(dir.path().join("ca.pem"), certified.cert.pem()).unwrap();
    const WEBHOOK: &str = "drain_webhook = \"http://drainer.internal:8080/drain\"";
    let text = edit(
        ASG,
        &[(
            WEBHOOK,
            "drain_webhook = { url = \"https://drainer.internal:8443/drain\", bearer_token = { file = \"drain-token\" }, headers = { X-Team = \"ops\" }, ca_file = \"ca.pem\" }",
        )],
    );
    let config = parse_in(dir.path(), &text).unwrap();
    let TargetConfig::AwsAsg(asg) = config.scalers[0].get_ref().target.get_ref().clone() else {
        panic!()
    };
    let webhook = asg.drain_webhook.unwrap();
    assert_eq!(webhook.url, "https://drainer.internal:8443/drain");
    assert_eq!(
        webhook.bearer_token,
        Some(Secret::File(dir.path().join("drain-token"))),
        "relative to the config's folder"
    );
    assert_eq!(webhook.ca_file, Some(dir.path().join("ca.pem")));
    assert_eq!(
        webhook.headers.get("X-Team"),
        Some(&HeaderSetting::Value("ops".into()))
    );
    // The plain URL form is the same webhook without credentials.
    let config = parse_in(dir.path(), ASG).unwrap();
    let TargetConfig::AwsAsg(asg) = config.scalers[0].get_ref().target.get_ref().clone() else {
        panic!()
    };
    assert_eq!(
        asg.drain_webhook,
        Some(DrainWebhook::at("http://drainer.internal:8080/drain"))
    );

    const AT: &str = "scalers[0] \"workers\".target.drain_webhook";
    let table = |inner: &str| format!("drain_webhook = {{ {inner} }}");
    let cases = [
        (
            WEBHOOK,
            table("url = \"drainer:8080\""),
            "\"drainer:8080\"",
            "drain_webhook \"drainer:8080\" must start with http:// or https://",
        ),
        (
            WEBHOOK,
            table("url = \"https://d/drain\", bearer_token = { file = \"missing-token\" }"),
            "{ file = \"missing-token\" }",
            "bearer_token: cannot read secret file",
        ),
        (
            WEBHOOK,
            table("url = \"https://d/drain\", ca_file = \"missing-ca.pem\""),
            "\"missing-ca.pem\"",
            "ca_file: ",
        ),
    ];
    let cases: Vec<(&str, &str, &str, &str)> = cases
        .iter()
        .map(|(a, b, c, d)| (*a, b.as_str(), *c, *d))
        .collect();
    assert_refused_at(dir.path(), ASG, AT, &cases);
    let plain_authorization =
        table("url = \"https://d/drain\", headers = { Authorization = \"Bearer x\" }");
    assert_refused_at(
        dir.path(),
        ASG,
        &format!("{AT}.headers"),
        &[(
            WEBHOOK,
            &plain_authorization,
            "\"Bearer x\"",
            "give Authorization as a secret",
        )],
    );
    let text = edit(
        ASG,
        &[(WEBHOOK, &table("url = \"https://d/drain\", token = \"x\""))],
    );
    let err = parse_in(dir.path(), &text).unwrap_err();
    assert!(
        err.problems()
            .iter()
            .any(|p| p.message.contains("unknown field \"token\"")),
        "{err}"
    );

    // The coordinator's, as fields of the target.
    let text =
        asg_with_target("kind = \"rebalance\"\nendpoint = \"https://coordinator.jobs:8443/api\"\n");
    const TARGET: &str = "scalers[0] \"workers\".target";
    const ENDPOINT: &str = "endpoint = \"https://coordinator.jobs:8443/api\"";
    let cases = [
        (
            ENDPOINT,
            "endpoint = \"https://coordinator.jobs:8443/api\"\nbearer_token = { env = \"SCALEWISE_TEST_UNSET_TOKEN\" }",
            "{ env = \"SCALEWISE_TEST_UNSET_TOKEN\" }",
            "bearer_token: environment variable \"SCALEWISE_TEST_UNSET_TOKEN\" is not set",
        ),
        (
            ENDPOINT,
            "endpoint = \"https://coordinator.jobs:8443/api\"\nca_file = \"missing-ca.pem\"",
            "\"missing-ca.pem\"",
            "ca_file: ",
        ),
        (
            ENDPOINT,
            "endpoint = \"https://coordinator.jobs:8443/api\"\nbearer_token = { file = \"two-lines\" }",
            "{ file = \"two-lines\" }",
            "bearer_token: secret file ",
        ),
    ];
    std::fs::write(dir.path().join("two-lines"), "a\nb\n").unwrap();
    assert_refused_at(dir.path(), &text, TARGET, &cases);
    assert_refused_at(
        dir.path(),
        &text,
        &format!("{TARGET}.headers"),
        &[(
            ENDPOINT,
            "endpoint = \"https://coordinator.jobs:8443/api\"\nheaders = { \"Bad Header\" = \"x\" }",
            "\"Bad Header\"",
            "\"Bad Header\" is not a valid header name",
        )],
    );
    let text = edit(
        &text,
        &[(
            ENDPOINT,
            "endpoint = \"https://coordinator.jobs:8443/api\"\nbearer_token = { file = \"drain-token\" }\nca_file = \"ca.pem\"",
        )],
    );
    let config = parse_in(dir.path(), &text).unwrap();
    let TargetConfig::Rebalance(workers) = config.scalers[0].get_ref().target.get_ref().clone()
    else {
        panic!()
    };
    assert_eq!(workers.ca_file, Some(dir.path().join("ca.pem")));
}

#[test]
fn leader_election_has_client_go_defaults_and_is_checked_at_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{BASE}\n[leader_election]\nnamespace = \"ops\"\n");
    let config = parse_in(dir.path(), &text).unwrap();
    let election = config.leader_election.clone().unwrap();
    assert_eq!(election.lease, "scalewise");
    assert_eq!(
        (
            election.lease_duration.as_secs(),
            election.renew_deadline.as_secs(),
            election.retry_period.as_secs()
        ),
        (15, 10, 2)
    );
    assert_eq!(config.settings().leader_election, config.leader_election);

    let cases = [
        (
            "namespace = \"ops\"",
            "namespace = \"ops\"\nlease = \"Scale_wise\"",
            "\"Scale_wise\"",
            "lease \"Scale_wise\" is not a Kubernetes object name",
        ),
        (
            "namespace = \"ops\"",
            "namespace = \"ops.prod\"",
            "\"ops.prod\"",
            "namespace \"ops.prod\" is not a Kubernetes namespace name",
        ),
        (
            "namespace = \"ops\"",
            "namespace = \"ops\"\nrenew_deadline = \"20s\"",
            "\"20s\"",
            "renew_deadline (20s) must be shorter than lease_duration (15s)",
        ),
        (
            "namespace = \"ops\"",
            "namespace = \"ops\"\nretry_period = \"10s\"",
            "\"10s\"",
            "retry_period (10s) must be above zero and shorter than renew_deadline (10s)",
        ),
        (
            "namespace = \"ops\"",
            "namespace = \"ops\"\nidentity = \" \"",
            "\" \"",
            "identity \" \" must be printable and not blank",
        ),
    ];
    assert_refused_at(dir.path(), &text, "leader_election", &cases);
    // A reload cannot change it: the running section stays, and says so.
    let changed = edit(&text, &[("namespace = \"ops\"", "namespace = \"infra\"")]);
    let reloaded = parse_in(dir.path(), &changed).unwrap();
    reloaded.validate_against_running(&config).unwrap();
}

/// A reload cannot raise `[journal] retention` (it applies at a restart),
/// so a longer cooldown it brings is checked against the retention the
/// journal runs with: refused, even though the file raises both.
#[test]
fn a_reload_needing_more_retention_than_runs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let running = parse_in(
        dir.path(),
        &edit(
            BASE,
            &[("[clock]", "[journal]\nretention = \"2h\"\n\n[clock]")],
        ),
    )
    .unwrap();
    let text = edit(
        BASE,
        &[
            ("[clock]", "[journal]\nretention = \"12h\"\n\n[clock]"),
            (
                "stabilization_window = \"0s\"\n",
                "stabilization_window = \"0s\"\ncooldown = \"12h\"\n",
            ),
        ],
    );
    let reloaded = parse_in(dir.path(), &text).expect("valid on its own");
    let err = reloaded.validate_against_running(&running).unwrap_err();
    assert!(
        err.to_string()
            .contains("retention (2h) is shorter than what a restart restores from the journal"),
        "{err}"
    );
}

/// `[simulations]` change at a restart, with `[runtime]`: a file raising
/// `runtime.max_replicas` and a simulation's `initial_replicas` together is
/// a valid pair, not refused against the running limit (the running
/// simulations keep running meanwhile). A scaler's `max` is still held to
/// the running limit.
#[test]
fn a_reload_holds_new_simulations_to_the_new_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let running = parse_in(
        dir.path(),
        &edit(
            BASE,
            &[(
                "timeout = \"100ms\"",
                "timeout = \"100ms\"\nmax_replicas = 100",
            )],
        ),
    )
    .unwrap();
    let raised = edit(
        BASE,
        &[
            (
                "timeout = \"100ms\"",
                "timeout = \"100ms\"\nmax_replicas = 1000",
            ),
            ("initial_replicas = 2", "initial_replicas = 500"),
        ],
    );
    let reloaded = parse_in(dir.path(), &raised).expect("valid on its own");
    reloaded.validate_against_running(&running).unwrap();
    let max = edit(&raised, &[("max = 10", "max = 500")]);
    let err = parse_in(dir.path(), &max)
        .unwrap()
        .validate_against_running(&running)
        .unwrap_err();
    assert!(err.to_string().contains("max_replicas (100)"), "{err}");
}

/// Durations past a year are refused wherever they are counted in an
/// `i64` of milliseconds or added to a clock instant (a lease deadline
/// that far ahead panics the clock's addition).
#[test]
fn durations_past_a_year_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (from, to) in [
        ("timeout = \"5s\"", "timeout = \"2y\""),
        ("[clock]", "[watch]\npoll_interval = \"2y\"\n\n[clock]"),
        (
            "[clock]",
            "[leader_election]\nnamespace = \"ops\"\nlease_duration = \"2y\"\n\n[clock]",
        ),
        (
            "initial_replicas = 2",
            "initial_replicas = 2\nstartup_delay = \"2y\"",
        ),
        ("duration = \"2m\"", "duration = \"2y\""),
    ] {
        let text = edit(BASE, &[(from, to)]);
        let err = parse_in(dir.path(), &text).expect_err(to);
        let (line, _) = position_of(&text, "\"2y\"");
        assert!(
            err.problems()
                .iter()
                .any(|p| p.line == line && p.message.contains("(2years) is longer than a year")),
            "{to}: {err}"
        );
    }
}

/// The simulator steps once a second: a wave shorter than a minute is
/// sampled flat, a spike of a fraction of a second is lost or counted
/// whole; latency is reported up to a minute.
#[test]
fn simulations_are_held_to_what_one_step_a_second_can_show() {
    let dir = tempfile::tempdir().unwrap();
    for (from, to, needle, message) in [
        (
            "base = 100.0",
            "base = 100.0\ndiurnal_amplitude = 10.0\ndiurnal_period = \"2s\"",
            "\"2s\"",
            "diurnal_period (2s) must be at least 1m",
        ),
        (
            "at = \"1m\"",
            "at = \"1500ms\"",
            "\"1500ms\"",
            "at (1s 500ms) must be whole seconds",
        ),
        (
            "duration = \"2m\"",
            "duration = \"400ms\"",
            "\"400ms\"",
            "duration (400ms) must be whole seconds",
        ),
        (
            "initial_replicas = 2",
            "initial_replicas = 2\nbase_latency = \"2m\"",
            "\"2m\"\n",
            "base_latency (2m) must be at most 1m",
        ),
    ] {
        let text = edit(BASE, &[(from, to)]);
        let err = parse_in(dir.path(), &text).expect_err(to);
        let (line, column) = position_of(&text, needle);
        assert!(
            err.problems()
                .iter()
                .any(|p| p.line == line && p.column == column && p.message.contains(message)),
            "{to}: {err}"
        );
    }
}

/// What the journal keeps of a target tells apart what a move changes, and
/// only that: not credentials in a URL, nor how a URL is written, nor a
/// namespace or region a default may fill.
#[test]
fn target_keys_follow_what_the_target_is() {
    let key = |text: &str| {
        toml::from_str::<TargetConfig>(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .target_key()
    };
    let coordinator = key(r#"kind = "rebalance"
endpoint = "http://coord:8080/api""#);
    assert_eq!(
        coordinator,
        key(r#"kind = "rebalance"
endpoint = "HTTP://ops:s3cret@Coord:8080/api/""#)
    );
    assert_ne!(
        coordinator,
        key(r#"kind = "rebalance"
endpoint = "http://coord:8080/other""#)
    );
    let web = key(r#"kind = "kubernetes"
object = "Deployment"
name = "web""#);
    assert_eq!(
        web,
        key(r#"kind = "kubernetes"
object = "Deployment"
name = "web"
namespace = "shop""#)
    );
    assert_ne!(
        web,
        key(r#"kind = "kubernetes"
object = "StatefulSet"
name = "web""#)
    );
    assert_ne!(
        web,
        key(r#"kind = "simulator"
service = "web""#)
    );
    // An AWS endpoint compares as a URL; the key versions before that wrote
    // (the endpoint as written) is kept beside it, so their rows are of the
    // same target. The region is a default's.
    let asg = |text: &str| toml::from_str::<TargetConfig>(text).unwrap();
    let slash = asg(r#"kind = "aws-asg"
group = "workers"
endpoint = "http://localstack:4566/""#);
    let plain = asg(r#"kind = "aws-asg"
group = "workers"
region = "eu-west-1"
endpoint = "HTTP://LocalStack:4566""#);
    assert_eq!(slash.target_key(), plain.target_key());
    assert_eq!(
        slash.earlier_target_key(),
        crate::config::Fingerprint::of(&"aws-asg\0http://localstack:4566/\0\0workers")
    );
    assert_ne!(slash.earlier_target_key(), plain.earlier_target_key());
    assert_eq!(coordinator, {
        let c = asg(r#"kind = "rebalance"
endpoint = "http://coord:8080/api""#);
        c.earlier_target_key()
    });
}
