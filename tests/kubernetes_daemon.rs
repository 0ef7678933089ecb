//! `scalewise run` scaling a Kubernetes Deployment end to end through the
//! binary, with the client configured by `KUBECONFIG` as in production. The
//! API server is the suite's fake (`src/fake_kube.rs`): no real one can run
//! where this suite runs.

use std::path::Path;
use std::time::Duration;

use axum::http::Method;
use scalewise_tests::daemon_process::{DaemonProcess, journal_export, log_in};
use scalewise_tests::fake_kube::{FakeKube, exec_plugin};
use scalewise_tests::{artifacts, wait_until};

fn config(scale_to: u32, mode: &str) -> String {
    format!(
        r#"policy_dir = "policies"

[api]
listen = "127.0.0.1:0"

[journal]
path = "journal.db"

[[scalers]]
name = "web"
interval = "1s"
min = 1
max = 8
mode = "{mode}"
target = {{ kind = "kubernetes", object = "Deployment", name = "web" }}

[[scalers.policies]]
module = "counter"
params = {{ scale_to = {scale_to} }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_scales_a_deployment_and_dry_run_changes_nothing() {
    let kube = FakeKube::start().await.unwrap();
    kube.put_deployment("shop", "web", 2);
    let dir = tempfile::tempdir().unwrap();
    let start = |dir: &Path, config: &str| {
        kube.run_daemon(env!("CARGO_BIN_EXE_scalewise-cli"), dir, "shop", config)
            .unwrap()
    };
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::copy(artifacts::COUNTER, dir.path().join("policies/counter.wasm")).unwrap();
    let log = || log_in(dir.path());
    let replicas = || {
        kube.workload("apps/v1", "deployments", "shop", "web")
            .unwrap()
            .replicas
    };

    // Dry-run: the decision is logged, the Deployment is read, never patched.
    let daemon = start(dir.path(), &config(4, "dry-run"));
    wait_until("a dry-run decision", Duration::from_secs(60), || async {
        if log().contains("Would scale") {
            Ok(())
        } else {
            Err(log())
        }
    })
    .await
    .unwrap();
    daemon.stop().unwrap();
    assert_eq!(replicas(), 2);
    assert!(kube.seen().iter().all(|s| s.method == Method::GET));
    assert!(kube.events().is_empty(), "dry-run changed nothing to tell");
    assert!(
        kube.seen()
            .iter()
            .any(|s| s.path == "/apis/apps/v1/namespaces/shop/deployments/web/scale"),
        "the kubeconfig's namespace is used: {:?}",
        kube.seen()
    );

    // Enforce: patched to 4.
    let daemon = start(dir.path(), &config(4, "enforce"));
    wait_until("the Deployment at 4", Duration::from_secs(60), || async {
        match replicas() {
            4 => Ok(()),
            n => Err(format!("{n}\n{}", log())),
        }
    })
    .await
    .unwrap();
    // The change is on the Deployment's events, as HPA leaves it.
    let event = wait_until("the rescale Event", Duration::from_secs(30), || async {
        kube.events()
            .into_iter()
            .find(|e| e["reason"] == "SuccessfulRescale")
            .ok_or_else(|| format!("{:?}", kube.events()))
    })
    .await
    .unwrap();
    daemon.stop().unwrap();
    assert!(log().contains("Scaled: 2 → 4"), "{}", log());
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["metadata"]["namespace"], "shop");
    assert_eq!(event["regarding"]["kind"], "Deployment");
    assert_eq!(event["regarding"]["name"], "web");
    assert_eq!(event["reportingController"], "scalewise");
    let note = event["note"].as_str().unwrap();
    assert!(
        note.starts_with("New size: 4; scaler \"web\": 2 → 4 — counter"),
        "{note}"
    );
    let journal = journal_export(
        Path::new(env!("CARGO_BIN_EXE_scalewise-cli")),
        dir.path(),
        "web",
    )
    .unwrap();
    assert!(
        journal.contains("set the replicas of Deployment \\\"web\\\" to 4 (was 2)"),
        "{journal}"
    );
    assert!(journal.contains("\"kind\":\"kubernetes\""), "{journal}");
    assert!(journal.contains("\"name\":\"web\""), "{journal}");
}

/// Three Deployments and leader election through one Kubernetes client:
/// the kubeconfig's exec credential plugin (as EKS's and GKE's kubeconfigs
/// have) runs as often as building one client runs it, not that many times
/// per target, and every request carries its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_target_and_the_lease_share_one_client() {
    let kube = FakeKube::start().await.unwrap();
    let names = ["web", "api", "jobs"];
    for name in names {
        kube.put_deployment("shop", name, 1);
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::copy(artifacts::COUNTER, dir.path().join("policies/counter.wasm")).unwrap();
    let (plugin, runs) = (dir.path().join("credential.sh"), dir.path().join("runs"));
    exec_plugin(&plugin, &runs, "shared-token").unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    kube.kubeconfig_with_exec(&kubeconfig, "shop", &plugin)
        .unwrap();
    let mut config = String::from(
        r#"policy_dir = "policies"

[api]
listen = "127.0.0.1:0"

[journal]
path = "journal.db"

[leader_election]
lease = "scalewise"
lease_duration = "2s"
renew_deadline = "1500ms"
retry_period = "200ms"
"#,
    );
    for name in names {
        config.push_str(&format!(
            r#"
[[scalers]]
name = "{name}"
interval = "1s"
min = 1
max = 8
target = {{ kind = "kubernetes", object = "Deployment", name = "{name}" }}

[[scalers.policies]]
module = "counter"
params = {{ scale_to = 3 }}
"#
        ));
    }
    let daemon = DaemonProcess::start(
        env!("CARGO_BIN_EXE_scalewise-cli"),
        dir.path(),
        &config,
        |c| {
            c.env("KUBECONFIG", &kubeconfig)
                .env_remove("KUBERNETES_SERVICE_HOST")
                .env_remove("KUBERNETES_SERVICE_PORT");
        },
    )
    .unwrap();
    let log = || log_in(dir.path());
    wait_until("every Deployment at 3", Duration::from_secs(60), || async {
        let replicas: Vec<u32> = names
            .iter()
            .map(|n| {
                kube.workload("apps/v1", "deployments", "shop", n)
                    .unwrap()
                    .replicas
            })
            .collect();
        match replicas == [3, 3, 3] {
            true => Ok(()),
            false => Err(format!("{replicas:?}\n{}", log())),
        }
    })
    .await
    .unwrap();
    daemon.stop().unwrap();
    assert!(kube.lease("shop", "scalewise").is_some(), "{}", log());
    // What building one client costs (kube runs the plugin for the TLS
    // identity and the token alike).
    let (one_plugin, one_runs) = (dir.path().join("one.sh"), dir.path().join("one-runs"));
    exec_plugin(&one_plugin, &one_runs, "shared-token").unwrap();
    let one_kubeconfig = dir.path().join("one-kubeconfig");
    kube.kubeconfig_with_exec(&one_kubeconfig, "shop", &one_plugin)
        .unwrap();
    let options = kube::config::KubeConfigOptions::default();
    let file = kube::config::Kubeconfig::read_from(&one_kubeconfig).unwrap();
    let one = kube::Config::from_custom_kubeconfig(file, &options)
        .await
        .unwrap();
    kube::Client::try_from(one).unwrap();
    let per_client = std::fs::read_to_string(&one_runs).unwrap().lines().count();
    assert!(per_client >= 1);
    let runs = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(
        runs.lines().count(),
        per_client,
        "plugin runs:\n{runs}\n{}",
        log()
    );
    let seen = kube.seen();
    assert!(seen.len() >= 6, "{seen:?}");
    for request in seen {
        assert_eq!(
            request.authorization.as_deref(),
            Some("Bearer shared-token"),
            "{request:?}"
        );
    }
}

/// Two scalers of one Deployment, one naming its namespace and one leaving
/// it to the kubeconfig's default, which is the same: refused at start, at
/// the second one's place in the file, as two written alike are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_named_once_with_its_namespace_and_once_without_is_refused() {
    let kube = FakeKube::start().await.unwrap();
    kube.put_deployment("shop", "web", 2);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::copy(artifacts::COUNTER, dir.path().join("policies/counter.wasm")).unwrap();
    let twice = format!(
        "{}{}",
        config(4, "enforce"),
        r#"
[[scalers]]
name = "web-again"
interval = "1s"
min = 1
max = 8
target = { kind = "kubernetes", object = "Deployment", name = "web", namespace = "shop" }

[[scalers.policies]]
module = "counter"
params = { scale_to = 2 }
"#
    );
    let mut daemon = kube
        .run_daemon(
            env!("CARGO_BIN_EXE_scalewise-cli"),
            dir.path(),
            "shop",
            &twice,
        )
        .unwrap();
    let exit = daemon.exited_within(Duration::from_secs(60)).unwrap();
    let log = log_in(dir.path());
    assert!(exit.is_some_and(|s| !s.success()), "{exit:?}\n{log}");
    assert!(
        log.contains("scalewise.toml:26:")
            && log.contains(
                "Deployment \"web\" is already scaled by scalers[0] (its namespace left to the \
                 default)"
            ),
        "{log}"
    );
    assert!(kube.seen().is_empty(), "nothing was asked of the workloads");
    // In another namespace it is another Deployment: both run.
    let apart = twice.replace("namespace = \"shop\"", "namespace = \"team-b\"");
    let daemon = kube
        .run_daemon(
            env!("CARGO_BIN_EXE_scalewise-cli"),
            dir.path(),
            "shop",
            &apart,
        )
        .unwrap();
    scalewise_tests::wait_until("a tick", Duration::from_secs(60), || async {
        match log_in(dir.path()).contains("Scalewise is running") {
            true => Ok(()),
            false => Err(log_in(dir.path())),
        }
    })
    .await
    .unwrap();
    daemon.stop().unwrap();
}
