//! The Kubernetes actuator against a fake API server (`src/fake_kube.rs`):
//! no real Kubernetes API server can run where this suite runs, so the
//! fake serves the scale subresource and the workload as the real server
//! shapes them, and the tests check the requests the actuator makes as well
//! as what it reports.

use axum::http::Method;
use scalewise::actuators::kubernetes::KubernetesActuator;
use scalewise::actuators::{Actuation, Actuator, ActuatorError, Announcement};
use scalewise::config::KubernetesTarget;
use scalewise_tests::fake_kube::{FakeKube, Workload};

const T0: i64 = 1_700_000_000_000;

fn deployment(name: &str, namespace: Option<&str>) -> KubernetesTarget {
    KubernetesTarget {
        api_version: "apps/v1".into(),
        object: "Deployment".into(),
        name: name.into(),
        namespace: namespace.map(Into::into),
        plural: None,
        events: true,
    }
}

fn workload(replicas: u32, ready: Option<u32>) -> Workload {
    Workload {
        replicas,
        ready,
        ..Workload::default()
    }
}

#[tokio::test]
async fn a_deployment_is_observed_and_scaled_through_its_scale_subresource() {
    let kube = FakeKube::start().await.unwrap();
    kube.put(
        "apps/v1",
        "deployments",
        "shop",
        "web",
        Workload {
            available: Some(1),
            updated: Some(3),
            ..workload(3, Some(2))
        },
    );
    let actuator =
        KubernetesActuator::with_client(deployment("web", Some("shop")), kube.client("default"));
    assert_eq!(actuator.kind(), "kubernetes");
    assert_eq!(actuator.target_name(), "shop/web");

    let observed = actuator.observe(T0).await.unwrap();
    assert_eq!((observed.current, observed.ready), (3, 2));
    assert!(observed.in_flight.is_none());
    // The pods the scale's status counts, and the status's counts.
    assert_eq!(
        observed.facts.into_iter().collect::<Vec<_>>(),
        [
            ("available".to_owned(), 1.0),
            ("pods".to_owned(), 3.0),
            ("updated".to_owned(), 3.0)
        ]
    );

    let done = actuator.scale(T0, 3, 5).await.unwrap();
    let Actuation::Done { detail } = done else {
        panic!("a patch is done at once: {done:?}")
    };
    assert_eq!(
        detail,
        "set the replicas of Deployment \"web\" in namespace \"shop\" to 5 (was 3)"
    );
    assert_eq!(
        kube.workload("apps/v1", "deployments", "shop", "web")
            .unwrap()
            .replicas,
        5
    );
    // One merge patch of spec.replicas, on the scale subresource,
    // conditional on the resourceVersion the tick read.
    let patches: Vec<_> = kube
        .seen()
        .into_iter()
        .filter(|s| s.method == Method::PATCH)
        .collect();
    assert_eq!(patches.len(), 1);
    assert_eq!(
        patches[0].path,
        "/apis/apps/v1/namespaces/shop/deployments/web/scale"
    );
    assert_eq!(
        patches[0].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(patches[0].body["spec"], serde_json::json!({"replicas": 5}));
    assert!(
        patches[0].body["metadata"]["resourceVersion"].is_string(),
        "{}",
        patches[0].body
    );

    // The new pods are not ready yet: the next tick sees 5 asked, 2 ready.
    let observed = actuator.observe(T0 + 15_000).await.unwrap();
    assert_eq!((observed.current, observed.ready), (5, 2));
}

#[tokio::test]
async fn without_a_namespace_the_clients_default_is_used() {
    let kube = FakeKube::start().await.unwrap();
    kube.put(
        "apps/v1",
        "deployments",
        "team-a",
        "api",
        workload(2, Some(2)),
    );
    let actuator = KubernetesActuator::with_client(deployment("api", None), kube.client("team-a"));
    let observed = actuator.observe(T0).await.unwrap();
    assert_eq!((observed.current, observed.ready), (2, 2));
    assert!(kube.seen().iter().all(|s| {
        s.path
            .starts_with("/apis/apps/v1/namespaces/team-a/deployments/api")
    }));
}

#[tokio::test]
async fn a_deployment_with_no_ready_pod_reports_zero_ready() {
    // The apps/v1 kinds leave readyReplicas out when it is 0.
    let kube = FakeKube::start().await.unwrap();
    kube.put(
        "apps/v1",
        "statefulsets",
        "data",
        "kafka",
        workload(3, None),
    );
    let target = KubernetesTarget {
        object: "StatefulSet".into(),
        ..deployment("kafka", Some("data"))
    };
    let actuator = KubernetesActuator::with_client(target, kube.client("default"));
    let observed = actuator.observe(T0).await.unwrap();
    assert_eq!((observed.current, observed.ready), (3, 0));
    // So do availableReplicas and updatedReplicas: no pod is available.
    assert_eq!(observed.facts.get("available"), Some(&0.0));
    assert_eq!(observed.facts.get("updated"), Some(&0.0));
}

#[tokio::test]
async fn a_custom_resource_with_its_own_plural_scales_too() {
    let kube = FakeKube::start().await.unwrap();
    kube.put(
        "example.com/v1alpha1",
        "workerpools",
        "jobs",
        "crunch",
        workload(4, None),
    );
    let target = KubernetesTarget {
        api_version: "example.com/v1alpha1".into(),
        object: "Worker".into(),
        name: "crunch".into(),
        namespace: Some("jobs".into()),
        plural: Some("workerpools".into()),
        events: true,
    };
    let actuator = KubernetesActuator::with_client(target, kube.client("default"));
    // A kind that does not report ready replicas: the scale's status counts.
    let observed = actuator.observe(T0).await.unwrap();
    assert_eq!((observed.current, observed.ready), (4, 4));
    assert!(!observed.facts.contains_key("available"), "{observed:?}");
    actuator.scale(T0, 4, 6).await.unwrap();
    assert_eq!(
        kube.workload("example.com/v1alpha1", "workerpools", "jobs", "crunch")
            .unwrap()
            .replicas,
        6
    );
}

/// Argo Rollouts' status leaves readyReplicas and availableReplicas out when
/// they are 0, as the built-in kinds do: once a custom resource has reported
/// them, a missing one is 0, not "does not report it" (which counts every
/// pod as ready).
/// The Argo Rollout `web` in `shop`, with Events.
fn rollout_web() -> KubernetesTarget {
    KubernetesTarget {
        api_version: "argoproj.io/v1alpha1".into(),
        object: "Rollout".into(),
        name: "web".into(),
        namespace: Some("shop".into()),
        plural: None,
        events: true,
    }
}

#[tokio::test]
async fn a_custom_resource_that_reported_ready_replicas_reads_zero_when_it_leaves_them_out() {
    let kube = FakeKube::start().await.unwrap();
    let put = |w: Workload| kube.put("argoproj.io/v1alpha1", "rollouts", "shop", "web", w);
    put(Workload {
        available: Some(5),
        ..workload(5, Some(5))
    });
    let target = rollout_web();
    let actuator = KubernetesActuator::with_client(target, kube.client("default"));
    let observed = actuator.observe(T0).await.unwrap();
    assert_eq!((observed.current, observed.ready), (5, 5));
    assert_eq!(observed.facts.get("available"), Some(&5.0));

    // Every pod crash-looping.
    put(workload(5, None));
    let observed = actuator.observe(T0 + 15_000).await.unwrap();
    assert_eq!((observed.current, observed.ready), (5, 0));
    assert_eq!(observed.facts.get("available"), Some(&0.0));
    assert!(!observed.facts.contains_key("updated"), "{observed:?}");
}

/// What a workload reported is kept by the daemon's clients: a reload that
/// changes the target's other settings (its Events) builds a new actuator,
/// which still reads a count left out as 0, not as every pod ready.
#[tokio::test]
async fn what_a_workload_reported_outlives_a_reload_of_its_settings() {
    let kube = FakeKube::start().await.unwrap();
    let put = |w: Workload| kube.put("argoproj.io/v1alpha1", "rollouts", "shop", "web", w);
    put(workload(5, Some(5)));
    let target = rollout_web();
    let clients = scalewise::actuators::clients::TargetClients::with_kube(kube.client("default"));
    let before = KubernetesActuator::new(target.clone(), &clients);
    assert_eq!(before.observe(T0).await.unwrap().ready, 5);
    let reloaded = KubernetesActuator::new(
        KubernetesTarget {
            events: false,
            ..target
        },
        &clients,
    );
    put(workload(5, None));
    let observed = reloaded.observe(T0 + 15_000).await.unwrap();
    assert_eq!((observed.current, observed.ready), (5, 0));
}

#[tokio::test]
async fn a_missing_workload_is_not_found_and_a_forbidden_one_names_the_permissions() {
    let kube = FakeKube::start().await.unwrap();
    let missing =
        KubernetesActuator::with_client(deployment("ghost", Some("shop")), kube.client("default"));
    let err = missing.observe(T0).await.unwrap_err();
    assert!(matches!(err, ActuatorError::NotFound(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("Deployment \"ghost\" in namespace \"shop\""),
        "{err}"
    );
    let err = missing.scale(T0, 1, 2).await.unwrap_err();
    assert!(matches!(err, ActuatorError::NotFound(_)), "{err:?}");

    kube.put(
        "apps/v1",
        "deployments",
        "shop",
        "locked",
        Workload {
            forbidden: true,
            ..workload(2, Some(2))
        },
    );
    let locked =
        KubernetesActuator::with_client(deployment("locked", Some("shop")), kube.client("default"));
    let err = locked.scale(T0, 2, 3).await.unwrap_err();
    assert!(matches!(err, ActuatorError::Failed(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("forbidden"), "{text}");
    assert!(
        text.contains("get on deployments and get and patch on deployments/scale"),
        "{text}"
    );
    assert_eq!(
        kube.workload("apps/v1", "deployments", "shop", "locked")
            .unwrap()
            .replicas,
        2
    );
}

/// A 404 from `/scale` is told apart: the object missing (above), its kind
/// serving no scale subresource (a CustomResourceDefinition without
/// `subresources.scale`), or no such resource served at all (a misspelt
/// kind or plural, a CRD not installed) - each says what to fix.
#[tokio::test]
async fn a_kind_without_scale_and_an_unserved_resource_each_say_what_to_fix() {
    let kube = FakeKube::start().await.unwrap();
    kube.put(
        "example.com/v1",
        "workers",
        "jobs",
        "crunch",
        Workload {
            no_scale: true,
            ..workload(3, None)
        },
    );
    let target = |name: &str| KubernetesTarget {
        api_version: "example.com/v1".into(),
        object: "Worker".into(),
        name: name.into(),
        namespace: Some("jobs".into()),
        plural: None,
        events: true,
    };
    let actuator = KubernetesActuator::with_client(target("crunch"), kube.client("default"));
    let err = actuator.observe(T0).await.unwrap_err();
    assert!(matches!(err, ActuatorError::Failed(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with("Worker \"crunch\" in namespace \"jobs\" has no scale subresource"),
        "{text}"
    );
    assert!(text.contains("subresources.scale"), "{text}");

    // Another object of the same kind that does not exist is still not found.
    let ghost = KubernetesActuator::with_client(target("ghost"), kube.client("default"));
    let err = ghost.observe(T0).await.unwrap_err();
    assert!(matches!(err, ActuatorError::NotFound(_)), "{err:?}");

    kube.unserve("example.com/v1", "workers");
    let err = actuator.observe(T0).await.unwrap_err();
    assert!(matches!(err, ActuatorError::Failed(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with("the API server serves no workers in example.com/v1"),
        "{text}"
    );
    assert!(text.contains("api_version, object and plural"), "{text}");
}

#[tokio::test]
async fn an_unreachable_api_server_is_an_error_that_names_the_target() {
    let closed = scalewise_tests::stub_http::closed_port().unwrap();
    let config = kube::Config::new(format!("http://{closed}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let actuator = KubernetesActuator::with_client(deployment("web", Some("shop")), client);
    let err = actuator.observe(T0).await.unwrap_err();
    assert!(matches!(err, ActuatorError::Failed(_)), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("reading the scale of Deployment \"web\" in namespace \"shop\": "),
        "{err}"
    );
}

/// Someone scales the workload between the tick's read and its change
/// (kubectl scale, GitOps): the change, conditional on what was read, is
/// refused as a conflict and theirs stays, as HPA's update of the scale
/// would be; the next tick reads theirs and may change it.
#[tokio::test]
async fn a_change_made_meanwhile_by_someone_else_is_not_overwritten() {
    let kube = FakeKube::start().await.unwrap();
    kube.put_deployment("shop", "web", 3);
    let actuator =
        KubernetesActuator::with_client(deployment("web", Some("shop")), kube.client("default"));
    assert_eq!(actuator.observe(T0).await.unwrap().current, 3);
    kube.put_deployment("shop", "web", 8);
    let err = actuator.scale(T0, 3, 5).await.unwrap_err();
    assert!(matches!(err, ActuatorError::Failed(_)), "{err:?}");
    let replicas = |kube: &FakeKube| {
        kube.workload("apps/v1", "deployments", "shop", "web")
            .unwrap()
            .replicas
    };
    assert_eq!(replicas(&kube), 8, "theirs stays");
    assert!(err.to_string().contains("(3 → 8; conflict)"), "{err}");
    assert_eq!(actuator.observe(T0 + 15_000).await.unwrap().current, 8);
    actuator.scale(T0 + 15_000, 8, 6).await.unwrap();
    assert_eq!(replicas(&kube), 6);

    // Someone else set the very count this tick wanted: made, not a
    // failure (no FailedRescale warning for a workload at the count asked).
    assert_eq!(actuator.observe(T0 + 30_000).await.unwrap().current, 6);
    kube.put_deployment("shop", "web", 7);
    let done = actuator.scale(T0 + 30_000, 6, 7).await.unwrap();
    let Actuation::Done { detail } = done else {
        panic!("{done:?}")
    };
    assert!(
        detail.contains("are 7 already (was 6; set by another writer"),
        "{detail}"
    );
    assert_eq!(replicas(&kube), 7);
}

/// A write to the workload that leaves its replicas as the tick read them
/// (its status: pods becoming ready, a rollout's progress) moves its
/// resourceVersion too; the change is not refused for it, as it would be
/// at almost every tick of a rollout.
#[tokio::test]
async fn a_write_that_keeps_the_replicas_does_not_refuse_the_change() {
    let kube = FakeKube::start().await.unwrap();
    kube.put_deployment("shop", "web", 3);
    let actuator =
        KubernetesActuator::with_client(deployment("web", Some("shop")), kube.client("default"));
    assert_eq!(actuator.observe(T0).await.unwrap().current, 3);
    kube.put_deployment("shop", "web", 3);
    actuator.scale(T0, 3, 5).await.unwrap();
    let workload = kube
        .workload("apps/v1", "deployments", "shop", "web")
        .unwrap();
    assert_eq!(workload.replicas, 5);
}

#[tokio::test]
async fn changes_are_told_as_events_on_the_workload_and_a_lasting_failure_once() {
    let kube = FakeKube::start().await.unwrap();
    kube.put_deployment("shop", "web", 3);
    let actuator =
        KubernetesActuator::with_client(deployment("web", Some("shop")), kube.client("default"));
    // Observed first, as every tick does: the Events name the object's uid,
    // which `kubectl describe` finds them by.
    actuator.observe(T0).await.unwrap();
    let told = |to: u32, error: Option<&str>| Announcement {
        time_ms: T0,
        scaler: "web".into(),
        target_kind: "kubernetes".into(),
        target_name: "shop/web".into(),
        from: 3,
        to,
        reason: format!("3 → {to} — target-tracking: cpu 90.0 vs target 60.0"),
        error: error.map(Into::into),
        record: None,
    };
    actuator.announce(told(5, None)).await;
    for _ in 0..3 {
        actuator.announce(told(6, Some("forbidden"))).await;
    }
    actuator.announce(told(6, Some("timed out"))).await;
    let events = kube.events();
    let reasons: Vec<&str> = events
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["SuccessfulRescale", "FailedRescale", "FailedRescale"]
    );
    let first = &events[0];
    assert_eq!(first["type"], "Normal");
    assert_eq!(first["eventTime"], "2023-11-14T22:13:20.000000Z");
    assert_eq!(first["action"], "Scale");
    assert_eq!(
        first["note"],
        "New size: 5; scaler \"web\": 3 → 5 — target-tracking: cpu 90.0 vs target 60.0"
    );
    assert_eq!(
        (
            first["regarding"]["apiVersion"].as_str(),
            first["regarding"]["namespace"].as_str()
        ),
        (Some("apps/v1"), Some("shop"))
    );
    assert_eq!(first["regarding"]["uid"], "uid-shop-deployments-web");
    assert!(
        first["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("web.")
    );
    assert_eq!(events[1]["type"], "Warning");
    assert!(
        events[1]["note"]
            .as_str()
            .unwrap()
            .starts_with("New size 6 not set (scaler \"web\"): forbidden"),
        "{}",
        events[1]["note"]
    );

    // `events = false`: nothing told.
    let quiet = KubernetesActuator::with_client(
        KubernetesTarget {
            events: false,
            ..deployment("web", Some("shop"))
        },
        kube.client("default"),
    );
    quiet.announce(told(7, None)).await;
    assert_eq!(kube.events().len(), 3);
}
