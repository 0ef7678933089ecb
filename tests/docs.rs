//! The config snippets of the documentation load: every ```toml block of
//! the README's Prometheus section ("Scaling on Prometheus metrics") and the
//! examples of its Kubernetes and Auto Scaling group sections parses, passes the
//! config checks, names only parameters the real bundled policy modules
//! declare, and has PromQL this build can read.
//!
//! A block without a top-level `policy_dir` is a fragment (one source's
//! table, say); it is checked as a config of its own with
//! `policy_dir = "policies"` put in front. The secrets the snippets name
//! are provided: `PROM_TOKEN` and `MIMIR_PASSWORD` in the environment the
//! check sees, the files under `secrets/` next to the config.

use std::collections::BTreeMap;
use std::path::Path;

use scalewise::config::{Config, ConfigError, SourceConfig};
use scalewise::policy::PolicyInfo;
use scalewise_tests::load;
use scalewise_tests::running::{POLICY_MODULES, install_policies};

/// A fenced block and the line of the file it starts on.
struct Block {
    line: usize,
    text: String,
}

/// The blocks fenced as ```` ```{lang} ````.
fn fenced_blocks(markdown: &str, lang: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    let opening = format!("```{lang}");
    for (i, line) in markdown.lines().enumerate() {
        let fence = line.trim_start();
        match &mut open {
            None if fence == opening => {
                open = Some(Block {
                    line: i + 2,
                    text: String::new(),
                });
            }
            Some(_) if fence.starts_with("```") => blocks.extend(open.take()),
            Some(block) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            None => {}
        }
    }
    assert!(open.is_none(), "a ```{lang} block is not closed");
    blocks
}

/// The ```toml blocks of the README's Prometheus section, with their lines
/// in README.md.
fn prometheus_blocks() -> Vec<Block> {
    section_blocks("## Scaling on Prometheus metrics", "toml")
}

/// The ```` ```{lang} ```` blocks of the README section under `heading`,
/// with their lines in README.md.
fn section_blocks(heading: &str, lang: &str) -> Vec<Block> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let markdown = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = markdown.lines().collect();
    let start = lines
        .iter()
        .position(|l| *l == heading)
        .unwrap_or_else(|| panic!("the README has a section {heading:?}"));
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with("## "))
        .map_or(lines.len(), |i| start + 1 + i);
    fenced_blocks(&markdown, lang)
        .into_iter()
        .filter(|b| (start + 1..=end).contains(&b.line))
        .collect()
}

fn env(name: &str) -> Option<String> {
    match name {
        "PROM_TOKEN" => Some("prom-t0k3n".into()),
        "MIMIR_PASSWORD" => Some("mimir-pa55".into()),
        _ => None,
    }
}

fn catalog() -> BTreeMap<String, PolicyInfo> {
    POLICY_MODULES
        .iter()
        .map(|(name, path)| (name.to_string(), load(path).info().clone()))
        .collect()
}

#[test]
fn every_config_snippet_of_the_prometheus_section_loads() {
    let blocks = prometheus_blocks();
    assert!(blocks.len() >= 3, "only {} toml blocks", blocks.len());

    let dir = tempfile::tempdir().unwrap();
    install_policies(&dir.path().join("policies")).unwrap();
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    std::fs::write(dir.path().join("secrets/prom-token"), "file-t0k3n\n").unwrap();
    // The mutual TLS example's files.
    std::fs::create_dir(dir.path().join("tls")).unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["scalewise".to_owned()]).unwrap();
    std::fs::write(dir.path().join("tls/ca.crt"), certified.cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls/tls.crt"), certified.cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("tls/tls.key"),
        certified.signing_key.serialize_pem(),
    )
    .unwrap();
    let catalog = catalog();

    let mut prometheus_sources = 0;
    let mut full_examples = 0;
    for block in &blocks {
        let complete = block
            .text
            .lines()
            .any(|l| l.trim_start().starts_with("policy_dir"));
        let text = if complete {
            block.text.clone()
        } else {
            format!("policy_dir = \"policies\"\n{}", block.text)
        };
        // Problems are reported at their line in the markdown file.
        let added = usize::from(!complete);
        let at_doc_line = |e: ConfigError| -> String {
            let lines: Vec<String> = e
                .problems()
                .iter()
                .map(|p| {
                    let line = (block.line + p.line).saturating_sub(1 + added);
                    format!("README.md:{line}: {}: {}", p.path, p.message)
                })
                .collect();
            if lines.is_empty() {
                e.to_string()
            } else {
                lines.join("\n")
            }
        };
        let origin = dir.path().join("snippet.toml");
        let config = Config::parse_with_env(&text, &origin, &env)
            .unwrap_or_else(|e| panic!("{}", at_doc_line(e)));
        config
            .check_policies(&catalog)
            .unwrap_or_else(|e| panic!("{}", at_doc_line(e)));
        let warnings = config.warnings();
        assert!(
            warnings.is_empty(),
            "README.md block at line {}: {warnings:?}",
            block.line
        );
        prometheus_sources += config
            .sources
            .values()
            .filter(|s| matches!(s.get_ref(), SourceConfig::Prometheus(_)))
            .count();
        if !config.scalers.is_empty() {
            full_examples += 1;
        }
    }
    assert!(full_examples >= 1, "no block defines a scaler");
    assert_eq!(
        prometheus_sources,
        blocks.len(),
        "a block without a Prometheus source"
    );

    // The worked example: two metrics from Prometheus, one instant and one
    // windowed, read by the two bundled policies.
    let example = blocks
        .iter()
        .find(|b| b.text.contains("[[scalers]]"))
        .unwrap();
    let config =
        Config::parse_with_env(&example.text, &dir.path().join("example.toml"), &env).unwrap();
    let scaler = config.scalers[0].get_ref();
    let metrics: Vec<(&str, Option<u64>)> = scaler
        .metrics
        .iter()
        .map(|(name, m)| (name.as_str(), m.get_ref().window.map(|w| w.as_secs())))
        .collect();
    assert_eq!(metrics, [("queue", None), ("p95_latency", Some(600))]);
    let modules: Vec<&str> = scaler
        .policies
        .iter()
        .map(|p| p.get_ref().module.get_ref().as_str())
        .collect();
    assert_eq!(modules, ["target-tracking", "threshold"]);
}

#[test]
fn the_snippets_need_the_secrets_they_name() {
    let example = prometheus_blocks()
        .into_iter()
        .find(|b| b.text.contains("[[scalers]]"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    install_policies(&dir.path().join("policies")).unwrap();
    // Without PROM_TOKEN the example is refused, naming the variable.
    let err = Config::parse_with_env(&example.text, &dir.path().join("example.toml"), &|_| None)
        .unwrap_err();
    assert!(err.to_string().contains("PROM_TOKEN"), "{err}");
}

/// A Prometheus source for examples whose metrics need one.
const PROM: &str = "[sources.prom]\nkind = \"prometheus\"\nurl = \"http://prometheus:9090\"\n";

/// The one ```toml example of the README section under `heading`, loaded
/// after `prefix` with the bundled policies and checked against them.
fn load_example(heading: &str, prefix: &str) -> Config {
    let blocks = section_blocks(heading, "toml");
    assert_eq!(blocks.len(), 1, "{heading} has one example");
    let block = &blocks[0];
    let dir = tempfile::tempdir().unwrap();
    install_policies(&dir.path().join("policies")).unwrap();
    let text = format!("policy_dir = \"policies\"\n{prefix}{}", block.text);
    let config = Config::parse_with_env(&text, &dir.path().join("snippet.toml"), &env)
        .unwrap_or_else(|e| panic!("README.md block at line {}: {e}", block.line));
    config.check_policies(&catalog()).unwrap();
    config
}

#[test]
fn the_auto_scaling_group_example_loads_with_the_fields_it_explains() {
    let config = load_example("## Scaling an AWS Auto Scaling group", "");
    let scalewise::config::TargetConfig::AwsAsg(asg) =
        config.scalers[0].get_ref().target.get_ref().clone()
    else {
        panic!("the example's target is an Auto Scaling group")
    };
    assert_eq!(asg.group, "workers-asg");
    assert!(asg.drain_webhook.is_some() && asg.protect_instances);
    assert_eq!(
        (asg.drain_delay.as_secs(), asg.drain_timeout.as_secs()),
        (30, 300)
    );
}

#[test]
fn the_minimal_config_loads_as_it_is() {
    let blocks = section_blocks("## Configuration", "toml");
    let minimal = &blocks[0];
    assert!(
        minimal.text.starts_with("policy_dir = "),
        "{}",
        minimal.text
    );
    let dir = tempfile::tempdir().unwrap();
    install_policies(&dir.path().join("policies")).unwrap();
    let config = Config::parse_with_env(&minimal.text, &dir.path().join("scalewise.toml"), &env)
        .unwrap_or_else(|e| panic!("README.md block at line {}: {e}", minimal.line));
    config.check_policies(&catalog()).unwrap();
}

#[test]
fn the_kubernetes_example_loads() {
    let config = load_example("## Scaling a Kubernetes workload", PROM);
    assert_eq!(
        config.scalers[0].get_ref().target.get_ref().kind(),
        "kubernetes"
    );
}

#[test]
fn the_rebalance_example_loads() {
    let config = load_example("## Scaling stateful workers (shard rebalancing)", PROM);
    let scalewise::config::TargetConfig::Rebalance(workers) =
        config.scalers[0].get_ref().target.get_ref().clone()
    else {
        panic!("the example's target is a shard coordinator")
    };
    assert_eq!(workers.timeout.as_secs(), 600);
}

#[test]
fn the_leader_election_example_loads() {
    let config = load_example("## Running several replicas (leader election)", "");
    let election = config.leader_election.expect("the section is read");
    assert_eq!(
        (election.lease.as_str(), election.namespace.as_deref()),
        ("scalewise", Some("ops"))
    );
    assert_eq!(election.lease_duration.as_secs(), 15);
}

#[test]
fn the_predictive_example_loads_with_both_policies() {
    // The example is a scaler's metric and policies; a scaler and its CPU
    // metric go in front.
    let prefix = "[sources.prometheus]\nkind = \"prometheus\"\nurl = \"http://prometheus:9090\"\n\n\
                  [[scalers]]\nname = \"site\"\ninterval = \"30s\"\nmin = 2\nmax = 40\n\
                  target = { kind = \"kubernetes\", object = \"Deployment\", name = \"site\" }\n\n\
                  [scalers.metrics.cpu]\nsource = \"prometheus\"\nquery = \"avg(cpu)\"\n\n";
    let config = load_example("## Predictive scaling", prefix);
    let scaler = config.scalers[0].get_ref();
    let modules: Vec<&str> = scaler
        .policies
        .iter()
        .map(|p| p.get_ref().module.get_ref().as_str())
        .collect();
    assert_eq!(modules, ["target-tracking", "predictive"]);
    let load = scaler.metrics["load"].get_ref();
    assert_eq!(load.window.map(|w| w.as_secs()), Some(7 * 24 * 3600));
}

#[test]
fn the_schedule_example_loads_and_the_module_reads_its_windows() {
    let prefix = format!(
        "{}\n[[scalers]]\nname = \"shop\"\ninterval = \"30s\"\nmin = 2\nmax = 40\n\
         target = {{ kind = \"simulator\", service = \"shop\" }}\n\n\
         [scalers.metrics.cpu]\nsource = \"simulator\"\nquery = \"cpu\"\n\n",
        scalewise_tests::running::simulation("shop", 2)
    );
    let config = load_example("## Scheduled scaling", &prefix);
    let policy = config.scalers[0].get_ref().policies[1].get_ref();
    assert_eq!(policy.module.get_ref(), "schedule");
    let params = serde_json::to_value(policy.params.as_ref().unwrap().get_ref().as_ref()).unwrap();

    // The real module on the example's windows (Europe/Berlin, lead 10m),
    // from 3 replicas between the scaler's 2 and 40.
    let module = load(scalewise_tests::artifacts::SCHEDULE);
    let desired = |utc: &str| {
        let now_ms = scalewise::clock::parse_time_ms(utc).unwrap();
        let mut ctx = scalewise_tests::context(now_ms, params.clone(), 0);
        ctx.target.max = 40;
        ctx.target.min = 2;
        let decision = module
            .evaluate(&ctx)
            .unwrap_or_else(|e| panic!("at {utc}: {e}"));
        (
            decision.desired.unwrap_or(ctx.target.current),
            decision.reason,
        )
    };
    // Thursday 2026-12-03, 08:20 in Berlin (UTC+1): the office's lead.
    assert_eq!(desired("2026-12-03T07:20:00Z").0, 10);
    assert_eq!(desired("2026-12-03T07:19:00Z").0, 2);
    // Friday night's batch, still running on Saturday at 01:00.
    assert_eq!(desired("2026-12-05T00:00:00Z").0, 6);
    // The sale, and Christmas Eve (a Thursday) below the office's count.
    assert_eq!(desired("2026-11-27T20:00:00Z").0, 30);
    let (christmas, why) = desired("2026-12-24T10:00:00Z");
    assert_eq!(christmas, 2, "{why}");
    assert!(
        why.contains("window `2026-12-24..2026-12-26 00:00-24:00 2` (Europe/Berlin)"),
        "{why}"
    );
}

#[test]
fn the_target_metrics_example_loads() {
    let prefix = "[[scalers]]\nname = \"consumers\"\ninterval = \"15s\"\nmin = 1\nmax = 8\n\
                  target = { kind = \"rebalance\", endpoint = \"http://coordinator:8080\" }\n\n";
    let config = load_example("### The target's own state as metrics", prefix);
    let shards = config.scalers[0].get_ref().metrics["shards"].get_ref();
    assert_eq!(
        (shards.source.as_str(), shards.query.as_str()),
        ("target", "shards")
    );

    // The same query on a Kubernetes target is refused, naming what it has.
    let text = format!(
        "policy_dir = \"policies\"\n{}",
        section_blocks("### The target's own state as metrics", "toml")[0].text
    );
    let prefix = "[[scalers]]\nname = \"web\"\ninterval = \"15s\"\nmin = 1\nmax = 8\n\
                  target = { kind = \"kubernetes\", object = \"Deployment\", name = \"web\" }\n\n";
    let text = text.replacen(
        "policy_dir = \"policies\"\n",
        &format!("policy_dir = \"policies\"\n{prefix}"),
        1,
    );
    let err = Config::parse(&text, Path::new("k8s.toml")).unwrap_err();
    assert!(
        err.to_string().contains(
            "query \"shards\" is not something a kubernetes target reports; known: replicas, \
             ready, unready, pods, available, updated"
        ),
        "{err}"
    );
}

#[test]
fn the_notifications_example_loads() {
    let prefix = "[[scalers]]\nname = \"checkout\"\ninterval = \"15s\"\nmin = 1\nmax = 8\n\
                  target = { kind = \"kubernetes\", object = \"Deployment\", name = \"checkout\" }\n\
                  policies = [{ module = \"threshold\", params = { metric = \"cpu\", upper = 80, lower = 20 } }]\n\
                  metrics.cpu = { source = \"prom\", query = \"avg(cpu)\", window = \"10m\" }\n\n";
    let config = load_example("## Notifications", &format!("{PROM}\n{prefix}"));
    let hook = config.notifications[0].get_ref();
    assert_eq!(hook.format, scalewise::config::NotifyFormat::Slack);
    assert_eq!(hook.scalers, ["checkout"]);
    assert_eq!(hook.timeout.as_secs(), 5);
}

const LANGUAGES: &str = "## Writing a policy in Python, JavaScript or C";

/// The README's C policy compiles (natively, syntax and types only) against
/// the C SDK and the bindings generated from `wit/`.
#[test]
fn the_c_example_compiles_against_the_sdk() {
    let blocks = section_blocks(LANGUAGES, "c");
    assert_eq!(blocks.len(), 1, "one C example");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("example.c");
    std::fs::write(&file, &blocks[0].text).unwrap();
    let out = std::process::Command::new("cc")
        .args([
            "-fsyntax-only",
            "-Wall",
            "-Werror",
            "-Wno-unused-function",
            "-I",
        ])
        .arg(env!("SCALEWISE_C_BINDINGS"))
        .arg("-I")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/c"))
        .arg(&file)
        .output()
        .expect("cc runs");
    assert!(
        out.status.success(),
        "README.md block at line {}: {}",
        blocks[0].line,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The README's Python policy is valid Python.
#[test]
fn the_python_examples_parse() {
    for block in section_blocks(LANGUAGES, "python") {
        let out = std::process::Command::new("python3")
            .args(["-c", "import ast, sys; ast.parse(sys.stdin.read())"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write as _;
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(block.text.as_bytes())?;
                child.wait_with_output()
            })
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "README.md block at line {}: {}",
            block.line,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
