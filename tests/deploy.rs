//! docs/deploy/kubernetes.yaml: the manifests are the Kubernetes objects
//! they say they are; their config loads against the bundled policies and
//! fits the StatefulSet's mounts, flags and probes; and their RBAC rules
//! allow every request `scalewise run` makes. No Kubernetes API server can
//! run here, so the requests are those the daemon made to the fake API
//! server (`src/fake_kube.rs`, which records them), scaling a Deployment
//! and electing itself leader as the manifests' config does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::Method;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role, RoleBinding};
use scalewise::config::{Config, TargetConfig};
use scalewise_tests::fake_kube::{FakeKube, Workload};
use scalewise_tests::running::POLICY_MODULES;
use scalewise_tests::{artifacts, load, wait_until};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The manifests, one JSON value per YAML document.
fn documents() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy/kubernetes.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The document of `kind` named `name`, as its Kubernetes type.
fn object<T: DeserializeOwned>(docs: &[Value], kind: &str, name: &str) -> T {
    let doc = docs
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name:?} in the manifests"));
    serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{kind} {name:?}: {e}"))
}

/// The module files the manifests' `kubectl create configmap
/// scalewise-policies` puts in the ConfigMap; the README gives the same
/// command.
fn policies_config_map() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let command = |file: &str| {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let line = text
            .lines()
            .find(|l| l.contains("create configmap scalewise-policies"))
            .unwrap_or_else(|| panic!("{file} does not create the policies ConfigMap"));
        line.trim_start_matches(['#', ' ']).trim().to_owned()
    };
    let manifests = command("docs/deploy/kubernetes.yaml");
    assert_eq!(manifests, command("README.md"));
    manifests
        .split_whitespace()
        .filter_map(|a| a.strip_prefix("--from-file=policies/dist/"))
        .map(|f| {
            assert!(
                f.ends_with(".wasm"),
                "--from-file={f}: a whole folder may exceed 1 MiB"
            );
            f.to_owned()
        })
        .collect()
}

fn container(set: &StatefulSet) -> Container {
    let pod = set.spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.containers.len(), 1);
    pod.containers[0].clone()
}

/// The value after `flag` in the container's arguments.
fn flag(container: &Container, flag: &str) -> String {
    let args = container.args.as_ref().unwrap();
    let at = args.iter().position(|a| a == flag).unwrap();
    args[at + 1].clone()
}

/// The mount path of the pod volume (or claim template) `volume`.
fn mount(container: &Container, volume: &str) -> PathBuf {
    let mounts = container.volume_mounts.as_ref().unwrap();
    let m = mounts.iter().find(|m| m.name == volume).unwrap();
    PathBuf::from(&m.mount_path)
}

#[test]
fn the_manifests_are_the_objects_they_say_and_fit_together() {
    let docs = documents();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ClusterRole",
            "RoleBinding",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Service",
            "StatefulSet"
        ]
    );
    let account: ServiceAccount = object(&docs, "ServiceAccount", "scalewise");
    let set: StatefulSet = object(&docs, "StatefulSet", "scalewise");
    let service: Service = object(&docs, "Service", "scalewise");
    let config_map: ConfigMap = object(&docs, "ConfigMap", "scalewise-config");
    let spec = set.spec.clone();
    let pod = spec.template.spec.clone().unwrap();
    assert_eq!(pod.service_account_name, account.metadata.name);
    assert_eq!(
        service.spec.unwrap().selector.unwrap(),
        spec.template.metadata.unwrap().labels.unwrap()
    );
    let c = container(&set);

    // The config file `--config` names is the ConfigMap's, mounted there.
    let config_path = PathBuf::from(flag(&c, "--config"));
    assert_eq!(config_path.parent().unwrap(), mount(&c, "config"));
    let volumes = pod.volumes.unwrap();
    let config_volume = volumes.iter().find(|v| v.name == "config").unwrap();
    assert_eq!(
        config_volume.config_map.as_ref().unwrap().name,
        "scalewise-config"
    );
    let file_name = config_path.file_name().unwrap().to_str().unwrap();
    let text = &config_map.data.unwrap()[file_name];

    // It loads, laid out as in the container, against the bundled modules:
    // policies from their ConfigMap's mount, the journal on the volume.
    let root = tempfile::tempdir().unwrap();
    let inside = |p: &Path| root.path().join(p.strip_prefix("/").unwrap());
    // Only the modules the documented `create configmap` puts there.
    let modules = policies_config_map();
    let policies = inside(&mount(&c, "policies"));
    std::fs::create_dir_all(&policies).unwrap();
    let mut size = 0;
    for module in &modules {
        let (_, path) = POLICY_MODULES
            .iter()
            .find(|(name, _)| format!("{name}.wasm") == *module)
            .unwrap_or_else(|| panic!("{module} is not a bundled module"));
        size += std::fs::copy(path, policies.join(module)).unwrap();
    }
    // Kubernetes refuses a ConfigMap larger than this.
    assert!(
        size <= 1 << 20,
        "{modules:?} are {size} bytes, over a ConfigMap's 1 MiB"
    );
    // The kubelet's default ("Always") makes the volume group-writable at
    // every mount; the module cache beside the journal refuses that.
    let security = pod.security_context.clone().unwrap();
    if security.fs_group.is_some() {
        assert_eq!(
            security.fs_group_change_policy.as_deref(),
            Some("OnRootMismatch")
        );
    }
    std::fs::create_dir_all(inside(config_path.parent().unwrap())).unwrap();
    let config = Config::parse(text, &inside(&config_path))
        .unwrap_or_else(|e| panic!("the ConfigMap's config:\n{e}"));
    let catalog = POLICY_MODULES
        .iter()
        .filter(|(name, _)| modules.contains(&format!("{name}.wasm")))
        .map(|(name, path)| (name.to_string(), load(path).info().clone()))
        .collect::<BTreeMap<_, _>>();
    config.check_policies(&catalog).unwrap();
    assert_eq!(
        std::fs::canonicalize(config.policy_dir.get_ref()).unwrap(),
        std::fs::canonicalize(inside(&mount(&c, "policies"))).unwrap()
    );
    assert_eq!(
        config.journal.path.parent().unwrap(),
        mount(&c, "journal"),
        "the journal is on the persistent volume"
    );
    let claims = spec.volume_claim_templates.unwrap();
    assert_eq!(claims[0].metadata.name.as_deref(), Some("journal"));

    // The API listens where the probes and the Service look.
    let listen = flag(&c, "--listen");
    let port = c.ports.as_ref().unwrap()[0].clone();
    assert_eq!(port.name.as_deref(), Some("http"));
    assert!(
        listen.ends_with(&format!(":{}", port.container_port)),
        "{listen}"
    );
    let probe_path =
        |p: Option<k8s_openapi::api::core::v1::Probe>| p.unwrap().http_get.unwrap().path.unwrap();
    assert_eq!(probe_path(c.readiness_probe.clone()), "/readyz");
    assert_eq!(probe_path(c.liveness_probe.clone()), "/healthz");

    // Leader election: its identity from the pod's name, its Lease the one
    // the Role names.
    let env = c.env.clone().unwrap();
    let pod_name = env.iter().find(|e| e.name == "POD_NAME").unwrap();
    let field = pod_name.value_from.clone().unwrap().field_ref.unwrap();
    assert_eq!(field.field_path, "metadata.name");
    let election = config.leader_election.clone().unwrap();
    let role: Role = object(&docs, "Role", "scalewise-leader-election");
    let named = role
        .rules
        .unwrap()
        .iter()
        .find_map(|r| r.resource_names.clone());
    assert_eq!(named, Some(vec![election.lease.clone()]));

    // Every scaled workload's namespace has the scaler role bound.
    let binding: RoleBinding = object(&docs, "RoleBinding", "scalewise-scaler");
    for scaler in &config.scalers {
        let TargetConfig::Kubernetes(target) = scaler.get_ref().target.get_ref() else {
            panic!("the example scales Kubernetes workloads")
        };
        assert_eq!(target.namespace, binding.metadata.namespace);
    }
}

/// A request to the API server as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Access {
    namespace: String,
    verb: String,
    group: String,
    resource: String,
    name: Option<String>,
}

/// Reads `/apis/{group}/{version}/namespaces/{ns}/{plural}[/{name}[/{sub}]]`
/// (or `/api/v1/...` for the core group).
fn access(method: &Method, path: &str) -> Access {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts[0] {
        "api" => ("", &parts[2..]),
        _ => (parts[1], &parts[3..]),
    };
    assert_eq!(rest[0], "namespaces", "a namespaced request: {path}");
    let name = rest.get(3).map(|n| n.to_string());
    let resource = match rest.get(4) {
        Some(sub) => format!("{}/{sub}", rest[2]),
        None => rest[2].to_owned(),
    };
    let verb = match (method.as_str(), &name) {
        ("GET", Some(_)) => "get",
        ("GET", None) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", _) => "delete",
        (other, _) => panic!("unexpected method {other}"),
    };
    Access {
        namespace: rest[1].to_owned(),
        verb: verb.into(),
        group: group.into(),
        resource,
        name,
    }
}

fn allows(rule: &PolicyRule, a: &Access) -> bool {
    let has = |list: &Option<Vec<String>>, want: &str| {
        list.as_ref()
            .is_some_and(|l| l.iter().any(|x| x == "*" || x == want))
    };
    let names_ok = match (&rule.resource_names, &a.name) {
        (None, _) => true,
        (Some(names), _) if names.is_empty() => true,
        (Some(names), Some(name)) => names.contains(name),
        (Some(_), None) => false,
    };
    rule.verbs.iter().any(|v| v == "*" || *v == a.verb)
        && has(&rule.api_groups, &a.group)
        && has(&rule.resources, &a.resource)
        && names_ok
}

/// The rules bound to the service account in `namespace`.
fn rules_in(docs: &[Value], namespace: &str) -> Vec<PolicyRule> {
    let mut rules = Vec::new();
    for doc in docs.iter().filter(|d| d["kind"] == "RoleBinding") {
        let binding: RoleBinding = serde_json::from_value(doc.clone()).unwrap();
        let for_account = binding.subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount"
                && s.name == "scalewise"
                && s.namespace.as_deref() == Some("scalewise")
        });
        if binding.metadata.namespace.as_deref() != Some(namespace) || !for_account {
            continue;
        }
        let r = &binding.role_ref;
        rules.extend(
            match r.kind.as_str() {
                "ClusterRole" => object::<ClusterRole>(docs, "ClusterRole", &r.name).rules,
                _ => object::<Role>(docs, "Role", &r.name).rules,
            }
            .into_iter()
            .flatten(),
        );
    }
    rules
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rbac_rules_allow_every_request_the_daemon_makes() {
    let docs = documents();
    let kube = FakeKube::start().await.unwrap();
    kube.put(
        "apps/v1",
        "deployments",
        "shop",
        "checkout",
        Workload {
            replicas: 2,
            ready: Some(2),
            ..Workload::default()
        },
    );
    // The manifests' scaler and leader election, with a policy that asks
    // for 4 (no Prometheus here) and quick lease timings.
    let config = r#"policy_dir = "policies"

[api]
listen = "127.0.0.1:0"

[journal]
path = "journal.db"

[leader_election]
lease = "scalewise"
lease_duration = "2s"
renew_deadline = "1500ms"
retry_period = "200ms"

[[scalers]]
name = "checkout"
interval = "1s"
min = 2
max = 30
target = { kind = "kubernetes", object = "Deployment", name = "checkout", namespace = "shop" }

[[scalers.policies]]
module = "counter"
params = { scale_to = 4 }
"#;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::copy(artifacts::COUNTER, dir.path().join("policies/counter.wasm")).unwrap();
    // In the pod the client's namespace is the daemon's own: `scalewise`.
    let daemon = kube
        .run_daemon(
            env!("CARGO_BIN_EXE_scalewise-cli"),
            dir.path(),
            "scalewise",
            config,
        )
        .unwrap();
    wait_until("the Deployment at 4", Duration::from_secs(60), || async {
        match kube.workload("apps/v1", "deployments", "shop", "checkout") {
            Some(w) if w.replicas == 4 => Ok(()),
            other => Err(format!("{other:?}\n{}", daemon.log())),
        }
    })
    .await
    .unwrap();
    // The change's Event is posted beside the tick; wait for it.
    wait_until("the rescale Event", Duration::from_secs(30), || async {
        match kube.events().len() {
            0 => Err("none yet".to_owned()),
            _ => Ok(()),
        }
    })
    .await
    .unwrap();
    // A graceful stop releases the lease: that request is checked too.
    daemon.stop().unwrap();

    let mut made: Vec<Access> = kube
        .requests()
        .iter()
        .map(|(method, path)| access(method, path))
        .collect();
    made.sort();
    made.dedup();
    let denied: Vec<&Access> = made
        .iter()
        .filter(|a| !rules_in(&docs, &a.namespace).iter().any(|r| allows(r, a)))
        .collect();
    assert!(
        denied.is_empty(),
        "denied by the manifests' RBAC: {denied:#?}"
    );
    // The run made every kind of request the daemon needs, so the check
    // covered them all.
    let kinds: Vec<(&str, &str)> = made
        .iter()
        .map(|a| (a.verb.as_str(), a.resource.as_str()))
        .collect();
    for want in [
        ("get", "deployments"),
        ("get", "deployments/scale"),
        ("patch", "deployments/scale"),
        ("create", "events"),
        ("create", "leases"),
        ("get", "leases"),
        ("update", "leases"),
    ] {
        assert!(kinds.contains(&want), "{want:?} not made: {made:#?}");
    }
    // And the rules are no wider than that: what it never does is denied.
    for (namespace, verb, resource) in [
        ("shop", "delete", "deployments"),
        ("shop", "update", "deployments"),
        ("shop", "get", "leases"),
        ("scalewise", "patch", "deployments/scale"),
    ] {
        let a = Access {
            namespace: namespace.into(),
            verb: verb.into(),
            group: if resource == "leases" {
                "coordination.k8s.io".into()
            } else {
                "apps".into()
            },
            resource: resource.into(),
            name: Some("x".into()),
        };
        assert!(
            !rules_in(&docs, namespace).iter().any(|r| allows(r, &a)),
            "{a:?} is allowed"
        );
    }
}
