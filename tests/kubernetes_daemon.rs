//! `scalewise run` scaling a Kubernetes Deployment end to end through the
//! binary, with the client configured by `KUBECONFIG` as in production. The
//! API server is the suite's fake (`src/fake_kube.rs`): no real one can run
//! where this suite runs.

use std::path::Path;
use std::time::Duration;

use axum::http::Method;
use scalewise_tests::daemon_process::{journal_export, log_in};
use scalewise_tests::fake_kube::FakeKube;
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
