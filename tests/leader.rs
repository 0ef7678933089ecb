//! Leader election through a Kubernetes Lease. No real API server can run
//! where this suite runs, so the Lease lives in the suite's fake
//! (`src/fake_kube.rs`), which refuses a write against a stale
//! `resourceVersion` as the real server does: the race between replicas is
//! the server's optimistic concurrency, not the test's timing.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use k8s_openapi::api::coordination::v1::Lease;
use scalewise::config::LeaderElectionConfig;
use scalewise::leader::{Elector, Leadership, Outcome, PAUSES_ANNOTATION, Pauses, RecordError};
use scalewise_tests::daemon_process::DaemonProcess;
use scalewise_tests::fake_kube::FakeKube;
use scalewise_tests::stub_http::counted_silent_listener;
use scalewise_tests::{artifacts, wait_until};

fn settings(identity: &str) -> LeaderElectionConfig {
    LeaderElectionConfig {
        lease: "scalewise".into(),
        namespace: Some("ops".into()),
        identity: Some(identity.into()),
        lease_duration: Duration::from_millis(2_000),
        renew_deadline: Duration::from_millis(1_000),
        retry_period: Duration::from_millis(100),
    }
}

fn elector(kube: &FakeKube, identity: &str) -> (Elector, Leadership) {
    let leadership = Leadership::elected();
    let elector = Elector::new(settings(identity), kube.client("ops"), leadership.clone());
    (elector, leadership)
}

/// The pause flags `elector`'s takeover hook was last handed (the test
/// takes them out as it checks them).
fn last_takeover(elector: &mut Elector) -> Arc<Mutex<Option<Pauses>>> {
    let taken: Arc<Mutex<Option<Pauses>>> = Arc::default();
    let seen = taken.clone();
    elector.on_takeover(Arc::new(move |pauses| {
        *seen.lock().unwrap() = Some(pauses);
        Box::pin(async {})
    }));
    taken
}

fn holder(kube: &FakeKube) -> Option<String> {
    kube.lease("ops", "scalewise")?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test]
async fn one_replica_leads_and_the_other_follows_it() {
    let kube = FakeKube::start().await.unwrap();
    let (mut a, a_leads) = elector(&kube, "a");
    let (mut b, b_leads) = elector(&kube, "b");
    assert_eq!(a.try_once().await, Outcome::Leading);
    assert_eq!(b.try_once().await, Outcome::Following("a".into()));
    for _ in 0..5 {
        assert_eq!(a.try_once().await, Outcome::Leading, "the leader renews");
        assert_eq!(b.try_once().await, Outcome::Following("a".into()));
    }
    assert!(a_leads.is_leading() && !b_leads.is_leading());
    // Renewals are one term; the follower has led in none.
    assert_eq!((a_leads.term(), b_leads.term()), (1, 0));
    // Both know who leads (a follower's API names it).
    assert_eq!(a_leads.leader().as_deref(), Some("a"));
    assert_eq!(b_leads.leader().as_deref(), Some("a"));
    let lease = kube.lease("ops", "scalewise").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "a");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 2);
    assert_eq!(lease["spec"]["leaseTransitions"], 0);
}

#[tokio::test]
async fn a_lease_left_unrenewed_is_taken_over_after_its_duration() {
    let kube = FakeKube::start().await.unwrap();
    let (mut a, _) = elector(&kube, "a");
    let (mut b, b_leads) = elector(&kube, "b");
    assert_eq!(a.try_once().await, Outcome::Leading);
    assert_eq!(b.try_once().await, Outcome::Following("a".into()));
    // a stops renewing (its process hangs or dies without releasing).
    drop(a);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        b.try_once().await,
        Outcome::Following("a".into()),
        "not yet"
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(b.try_once().await, Outcome::Leading);
    assert!(b_leads.is_leading());
    assert_eq!(b_leads.last_taken_term(), b_leads.term(), "taken");
    let lease = kube.lease("ops", "scalewise").unwrap();
    assert_eq!(
        (holder(&kube).as_deref(), &lease["spec"]["leaseTransitions"]),
        (Some("b"), &1.into())
    );
}

/// Two processes under one identity (set in a config the replicas share;
/// a pod back under its name while its old self still runs) are two
/// replicas: the second follows, as it would a replica of another name,
/// rather than renew the first's Lease as its own and lead beside it. Its
/// release leaves the leader's Lease alone.
#[tokio::test]
async fn a_second_process_under_the_same_identity_follows() {
    let kube = FakeKube::start().await.unwrap();
    let (mut first, first_leads) = elector(&kube, "scalewise-0");
    let (mut twin, twin_leads) = elector(&kube, "scalewise-0");
    assert_eq!(first.try_once().await, Outcome::Leading);
    for _ in 0..5 {
        assert_eq!(
            twin.try_once().await,
            Outcome::Following("scalewise-0".into())
        );
        assert_eq!(
            first.try_once().await,
            Outcome::Leading,
            "the leader renews"
        );
    }
    assert!(first_leads.is_leading() && !twin_leads.is_leading());
    twin.release().await;
    assert_eq!(holder(&kube).as_deref(), Some("scalewise-0"));
    assert_eq!(first.try_once().await, Outcome::Leading);
    // Left unrenewed, the Lease is the twin's after its duration.
    drop(first);
    twin.try_once().await;
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_eq!(twin.try_once().await, Outcome::Leading);
}

/// A renewal the server applied whose answer was lost (a timeout, a reset
/// connection) is this process's own: the next try renews it, rather than
/// follow the Lease as another process's and leave nobody leading.
#[tokio::test]
async fn a_renewal_whose_answer_was_lost_is_still_this_processs() {
    let kube = FakeKube::start().await.unwrap();
    let (mut a, a_leads) = elector(&kube, "a");
    assert_eq!(a.try_once().await, Outcome::Leading);
    let before = kube.lease("ops", "scalewise").unwrap()["spec"]["renewTime"].clone();
    kube.lose_lease_write_answers(true);
    assert!(matches!(a.try_once().await, Outcome::Failed(_)));
    let applied = kube.lease("ops", "scalewise").unwrap()["spec"]["renewTime"].clone();
    assert_ne!(applied, before, "the renewal was applied");
    kube.lose_lease_write_answers(false);
    assert_eq!(a.try_once().await, Outcome::Leading);
    assert!(a_leads.is_leading());
    // Its own Lease renewed past its deadline: a new term, but not taken
    // (nobody else led in between: the envelope keeps its history).
    assert_eq!(a_leads.term(), 2);
    assert_eq!(a_leads.last_taken_term(), 1, "the first term created it");
}

/// A takeover the server applied whose answer was lost is completed by the
/// next try, and that term counts as taken (another replica led before).
#[tokio::test]
async fn a_takeover_whose_answer_was_lost_is_still_a_takeover() {
    let kube = FakeKube::start().await.unwrap();
    let (mut a, _) = elector(&kube, "a");
    let (mut b, b_leads) = elector(&kube, "b");
    assert_eq!(a.try_once().await, Outcome::Leading);
    assert_eq!(b.try_once().await, Outcome::Following("a".into()));
    drop(a);
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    kube.lose_lease_write_answers(true);
    assert!(matches!(b.try_once().await, Outcome::Failed(_)));
    assert_eq!(
        holder(&kube).as_deref(),
        Some("b"),
        "the takeover was applied"
    );
    kube.lose_lease_write_answers(false);
    assert_eq!(b.try_once().await, Outcome::Leading);
    assert_eq!(b_leads.last_taken_term(), b_leads.term(), "taken");
}

#[tokio::test]
async fn a_released_lease_is_taken_at_the_next_try() {
    let kube = FakeKube::start().await.unwrap();
    let (mut a, a_leads) = elector(&kube, "a");
    let (mut b, _) = elector(&kube, "b");
    a.try_once().await;
    b.try_once().await;
    a.release().await;
    assert!(!a_leads.is_leading());
    assert_eq!(holder(&kube), None);
    assert_eq!(b.try_once().await, Outcome::Leading);
    assert_eq!(a.try_once().await, Outcome::Following("b".into()));
}

#[tokio::test]
async fn of_two_replicas_racing_for_a_free_lease_exactly_one_wins() {
    for _ in 0..10 {
        let kube = FakeKube::start().await.unwrap();
        let (mut a, a_leads) = elector(&kube, "a");
        let (mut b, b_leads) = elector(&kube, "b");
        let (x, y) = tokio::join!(a.try_once(), b.try_once());
        assert_ne!(a_leads.is_leading(), b_leads.is_leading(), "{x:?} {y:?}");
        let leader = if a_leads.is_leading() { "a" } else { "b" };
        assert_eq!(holder(&kube).as_deref(), Some(leader));
    }
}

/// An API server that takes the renewal and never answers: the try is cut
/// short at the renew deadline and the leader stops acting then, before the
/// follower may take the Lease (a lease duration after the last renewal).
#[tokio::test]
async fn a_leader_whose_renewal_hangs_stops_acting_at_its_renew_deadline() {
    let kube = FakeKube::start().await.unwrap();
    let (mut a, a_leads) = elector(&kube, "a");
    assert_eq!(a.try_once().await, Outcome::Leading);
    kube.hang_leases(true);
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(30), a.try_once())
        .await
        .expect("the try is cut short, not left hanging");
    assert!(
        matches!(&outcome, Outcome::Failed(why) if why.contains("did not answer")),
        "{outcome:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(2_000),
        "{:?}",
        started.elapsed()
    );
    assert!(!a_leads.is_leading(), "past renew_deadline it stops");
    kube.hang_leases(false);
    assert_eq!(a.try_once().await, Outcome::Leading);
}

/// The wall clock jumped ahead under a leader (a suspend: its monotonic
/// clock, and so its renew deadline, stood still while others' ran): it
/// stops acting until its next renewal says it still holds the Lease, in
/// the same term.
#[tokio::test]
async fn after_a_clock_jump_a_leader_acts_again_only_once_it_renewed() {
    let kube = FakeKube::start().await.unwrap();
    let (mut a, a_leads) = elector(&kube, "a");
    assert_eq!(a.try_once().await, Outcome::Leading);
    assert!(a_leads.is_leading());
    a_leads.clock_jumped();
    assert!(!a_leads.is_leading());
    assert_eq!(a.try_once().await, Outcome::Leading);
    assert!(a_leads.is_leading());
    assert_eq!(a_leads.term(), 1, "the same term");
    // Without leader election nothing changes.
    let always = Leadership::always();
    always.clock_jumped();
    assert!(always.is_leading());
}

#[tokio::test]
async fn a_leader_that_cannot_renew_stops_acting_before_its_lease_runs_out() {
    let kube = FakeKube::start().await.unwrap();
    let (mut a, a_leads) = elector(&kube, "a");
    a.try_once().await;
    kube.fail_leases(Some(StatusCode::INTERNAL_SERVER_ERROR));
    assert!(matches!(a.try_once().await, Outcome::Failed(_)));
    assert!(
        a_leads.is_leading(),
        "a failed renewal within the deadline keeps it acting"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // Its renew deadline, counted from when the last renewal was sent, has
    // passed: it stops acting now, not when its next try says so (a try
    // that failed fast just before the deadline is followed by a whole
    // retry_period of sleep).
    assert!(
        !a_leads.is_leading(),
        "past renew_deadline it stops at once"
    );
    assert!(matches!(a.try_once().await, Outcome::Failed(_)));
    assert!(!a_leads.is_leading(), "past renew_deadline it stops");
    kube.fail_leases(None);
    assert_eq!(
        a.try_once().await,
        Outcome::Leading,
        "and takes its own lease back"
    );
    // A new term: its scalers start their envelope's history again.
    assert_eq!(a_leads.term(), 2);
}

/// The Lease is deleted under its leader, which still counts itself the
/// leader (within its renew deadline; after a suspend, too, as its
/// monotonic clock stood still); another replica creates it, pauses a
/// scaler and releases it. Taking it back is a new term, with the Lease's
/// pause flags applied, as any takeover: it was taken as a renewal (the
/// same term, so a tick of the old term could still act, and the pause was
/// never applied).
#[tokio::test]
async fn a_lease_taken_back_while_still_counted_leading_is_a_new_term() {
    let kube = FakeKube::start().await.unwrap();
    let (mut a, a_leads) = elector(&kube, "a");
    let (mut b, b_leads) = elector(&kube, "b");
    let taken = last_takeover(&mut a);
    assert_eq!(a.try_once().await, Outcome::Leading);
    assert_eq!(a_leads.term(), 1);
    taken.lock().unwrap().take();
    kube.delete_lease("ops", "scalewise");
    assert_eq!(b.try_once().await, Outcome::Leading);
    b_leads.record_pause("web", true, |_| true).await.unwrap();
    b.release().await;
    // a tries again, within its renew deadline: it takes the released
    // Lease.
    assert!(a_leads.is_leading(), "a still counts itself the leader");
    assert_eq!(a.try_once().await, Outcome::Leading);
    assert_eq!(a_leads.term(), 2, "a new term");
    assert_eq!(
        taken.lock().unwrap().take(),
        Some(Pauses::from([("web".to_owned(), true)])),
        "the pause b recorded applies"
    );
    assert_eq!(a.try_once().await, Outcome::Leading);
    assert_eq!(a_leads.term(), 2, "renewals stay in it");
}

/// A follower's flags follow the Lease after it led in between: what it
/// applied while following before does not hide a later change.
#[tokio::test]
async fn a_follower_that_led_in_between_follows_the_lease_flags_again() {
    let kube = FakeKube::start().await.unwrap();
    let (mut a, a_leads) = elector(&kube, "a");
    let (mut b, b_leads) = elector(&kube, "b");
    let taken: Arc<Mutex<Vec<Pauses>>> = Arc::default();
    let seen = taken.clone();
    b.on_takeover(Arc::new(move |pauses| {
        seen.lock().unwrap().push(pauses);
        Box::pin(async {})
    }));
    let known = |_: &str| true;
    let web = |paused| Pauses::from([("web".to_owned(), paused)]);
    a.try_once().await;
    a_leads.record_pause("web", false, known).await.unwrap();
    assert_eq!(b.try_once().await, Outcome::Following("a".into()));
    a.release().await;
    assert_eq!(b.try_once().await, Outcome::Leading);
    b_leads.record_pause("web", true, known).await.unwrap();
    b.release().await;
    assert_eq!(a.try_once().await, Outcome::Leading);
    a_leads.record_pause("web", false, known).await.unwrap();
    taken.lock().unwrap().clear();
    assert_eq!(b.try_once().await, Outcome::Following("a".into()));
    assert_eq!(*taken.lock().unwrap(), [web(false)], "resumed again");
}

#[tokio::test]
async fn the_leader_records_pauses_in_the_lease_and_the_next_leader_gets_them() {
    let kube = FakeKube::start().await.unwrap();
    let (mut a, a_leads) = elector(&kube, "a");
    let (mut b, b_leads) = elector(&kube, "b");
    let taken = last_takeover(&mut b);
    let known = |name: &str| name != "gone";
    // No election yet: nobody may record.
    assert_eq!(
        a_leads.record_pause("web", true, known).await,
        Err(RecordError::NotLeader(None))
    );
    a.try_once().await;
    b.try_once().await;
    // Only the holder writes; a follower is told who holds the lease.
    assert_eq!(
        b_leads.record_pause("web", true, known).await,
        Err(RecordError::NotLeader(Some("a".into())))
    );
    for (name, paused) in [("gone", true), ("web", true), ("api", false)] {
        a_leads.record_pause(name, paused, known).await.unwrap();
    }
    // Entries of scalers no longer configured are dropped on the next write.
    let want = serde_json::json!({"api": false, "web": true});
    assert_eq!(lease_pauses(&kube), Some(want.clone()));
    // Renewals keep them.
    for _ in 0..3 {
        assert_eq!(a.try_once().await, Outcome::Leading);
    }
    assert_eq!(lease_pauses(&kube), Some(want));
    // A follower keeps its flags as the leader records them, once per
    // change.
    let expected = Pauses::from([("api".to_owned(), false), ("web".to_owned(), true)]);
    assert_eq!(b.try_once().await, Outcome::Following("a".into()));
    assert_eq!(taken.lock().unwrap().take(), Some(expected.clone()));
    assert_eq!(b.try_once().await, Outcome::Following("a".into()));
    assert_eq!(*taken.lock().unwrap(), None, "unchanged: not again");
    a.release().await;
    assert_eq!(b.try_once().await, Outcome::Leading);
    assert_eq!(taken.lock().unwrap().take(), Some(expected));
    assert_eq!(b.try_once().await, Outcome::Leading);
    assert_eq!(*taken.lock().unwrap(), None, "only on taking the lease");
}

#[tokio::test]
async fn an_unreadable_pauses_annotation_is_ignored_and_replaced() {
    let kube = FakeKube::start().await.unwrap();
    let (mut a, _) = elector(&kube, "a");
    let (mut b, b_leads) = elector(&kube, "b");
    let taken = last_takeover(&mut b);
    a.try_once().await;
    let api: kube::Api<Lease> = kube::Api::namespaced(kube.client("ops"), "ops");
    let mut lease = api.get("scalewise").await.unwrap();
    lease.metadata.annotations = Some(
        [(PAUSES_ANNOTATION.to_owned(), "web=paused".to_owned())]
            .into_iter()
            .collect(),
    );
    api.replace("scalewise", &Default::default(), &lease)
        .await
        .unwrap();
    a.release().await;
    assert_eq!(b.try_once().await, Outcome::Leading);
    assert_eq!(taken.lock().unwrap().take(), Some(Pauses::new()));
    b_leads.record_pause("web", true, |_| true).await.unwrap();
    assert_eq!(lease_pauses(&kube), Some(serde_json::json!({"web": true})));
}

#[tokio::test]
async fn a_pause_the_lease_does_not_take_is_an_error() {
    let kube = FakeKube::start().await.unwrap();
    let (mut a, a_leads) = elector(&kube, "a");
    a.try_once().await;
    kube.fail_leases(Some(StatusCode::INTERNAL_SERVER_ERROR));
    let err = a_leads
        .record_pause("web", true, |_| true)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RecordError::Failed(why) if why.contains("reading lease scalewise")),
        "{err:?}"
    );
    kube.fail_leases(None);
    assert_eq!(lease_pauses(&kube), None, "nothing was written");
}

fn config(scale_to: u32, identity: &str) -> String {
    format!(
        r#"policy_dir = "policies"

[api]
listen = "127.0.0.1:0"

[journal]
path = "journal.db"

[leader_election]
lease = "scalewise"
namespace = "ops"
identity = "{identity}"
lease_duration = "6s"
renew_deadline = "4s"
retry_period = "300ms"

[[scalers]]
name = "web"
interval = "1s"
min = 1
max = 8
target = {{ kind = "kubernetes", object = "Deployment", name = "web" }}

[[scalers.policies]]
module = "counter"
params = {{ scale_to = {scale_to} }}
"#
    )
}

/// `scalewise run` with the `counter` policy in `dir`, on the fake server.
fn start(dir: &Path, kube: &FakeKube, config: &str) -> DaemonProcess {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::copy(artifacts::COUNTER, dir.join("policies/counter.wasm")).unwrap();
    kube.run_daemon(env!("CARGO_BIN_EXE_scalewise-cli"), dir, "shop", config)
        .unwrap()
}

/// The fake server with Deployment shop/web at 2 replicas.
async fn with_web_at_2() -> FakeKube {
    let kube = FakeKube::start().await.unwrap();
    kube.put_deployment("shop", "web", 2);
    kube
}

/// shop/web's replicas now.
fn replicas(kube: &FakeKube) -> u32 {
    kube.workload("apps/v1", "deployments", "shop", "web")
        .unwrap()
        .replicas
}

/// Waits until `identity` holds the Lease.
async fn leader_becomes(kube: &FakeKube, identity: &str) {
    wait_until(
        &format!("{identity} leads"),
        Duration::from_secs(60),
        || async {
            match holder(kube) {
                Some(h) if h == identity => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .unwrap();
}

/// Waits until `daemon`'s API is up.
async fn api_up(daemon: &DaemonProcess) {
    wait_until("the API", Duration::from_secs(60), || async {
        daemon.api_addr().ok_or_else(|| "not yet".to_owned())
    })
    .await
    .unwrap();
}

async fn replicas_become(kube: &FakeKube, want: u32) -> anyhow::Result<()> {
    wait_until(
        &format!("{want} replicas"),
        Duration::from_secs(60),
        || async {
            let now = kube
                .workload("apps/v1", "deployments", "shop", "web")
                .map(|w| w.replicas);
            if now == Some(want) {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            }
        },
    )
    .await
}

/// GETs `path` from `daemon`'s API: the JSON.
async fn get(daemon: &DaemonProcess, path: &str) -> serde_json::Value {
    serde_json::from_str(&get_text(daemon, path).await).unwrap()
}

/// GETs `path` from `daemon`'s API: the body as text.
async fn get_text(daemon: &DaemonProcess, path: &str) -> String {
    let addr = daemon.api_addr().expect("the daemon's API is up");
    reqwest::get(format!("http://{addr}{path}"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// POSTs `/v1/scalers/web/{verb}` to `daemon`'s API from loopback: (status,
/// JSON).
async fn pause(daemon: &DaemonProcess, verb: &str) -> (u16, serde_json::Value) {
    let addr = daemon.api_addr().expect("the daemon's API is up");
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/scalers/web/{verb}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Two `scalewise run` processes on one Deployment, wanting different
/// counts: only the leader's is applied; when it stops, the other's is. A
/// pause made on the leader outlasts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_one_workload_only_the_leader_acts() {
    let kube = with_web_at_2().await;
    let dir = tempfile::tempdir().unwrap();
    let first = start(&dir.path().join("a"), &kube, &config(3, "a"));
    replicas_become(&kube, 3).await.unwrap();
    assert_eq!(holder(&kube).as_deref(), Some("a"));
    let second = start(&dir.path().join("b"), &kube, &config(5, "b"));
    // b is up (its API answers) and follows: 3 stays for several of its ticks.
    api_up(&second).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(replicas(&kube), 3, "the follower changed nothing");
    // Each replica's API says who leads.
    assert_eq!(
        get(&second, "/v1/leader").await,
        serde_json::json!({"election": true, "leading": false, "leader": "a"})
    );
    assert_eq!(
        get(&first, "/v1/leader").await,
        serde_json::json!({"election": true, "leading": true, "leader": "a"})
    );
    // Only the leader reports the target's replicas (a follower's would
    // sit beside them); both say whether web is paused.
    let (leading, following) = (
        get_text(&first, "/metrics").await,
        get_text(&second, "/metrics").await,
    );
    for text in [&leading, &following] {
        assert!(
            text.contains("scalewise_scaler_paused{scaler=\"web\"} 0"),
            "{text}"
        );
    }
    assert!(
        leading.contains("scalewise_replicas_desired{scaler=\"web\"} 3"),
        "{leading}"
    );
    assert!(
        leading.contains("scalewise_last_tick_timestamp_seconds{scaler=\"web\"}"),
        "{leading}"
    );
    assert!(
        !following.contains("scalewise_replicas_desired{"),
        "{following}"
    );
    // Pausing through the follower's API would change nothing the leader
    // does: refused, naming the leader. The leader takes it.
    let (status, body) = pause(&second, "pause").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "not_leader", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"a\" holds the lease"), "{message}");
    // The leader records each flag in the Lease before it answers.
    let (status, body) = pause(&first, "pause").await;
    assert_eq!((status, &body["paused"]), (200, &true.into()), "{body}");
    assert_eq!(lease_pauses(&kube), Some(serde_json::json!({"web": true})));
    let (status, body) = pause(&first, "resume").await;
    assert_eq!((status, &body["paused"]), (200, &false.into()), "{body}");
    assert_eq!(lease_pauses(&kube), Some(serde_json::json!({"web": false})));
    // An incident: web is paused on a, then a goes away (a graceful stop
    // releases the lease). b takes over with web still paused: it changes
    // nothing, although its policy wants 5.
    let (status, body) = pause(&first, "pause").await;
    assert_eq!((status, &body["paused"]), (200, &true.into()), "{body}");
    first.stop().unwrap();
    leader_becomes(&kube, "b").await;
    wait_until(
        "b to say web is paused",
        Duration::from_secs(10),
        || async {
            let web = get(&second, "/v1/scalers/web").await;
            if web["paused"] == true {
                Ok(())
            } else {
                Err(web.to_string())
            }
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(replicas(&kube), 3, "the new leader kept web paused");
    let log = second.log();
    assert!(log.contains("This replica is the leader now"), "{log}");
    assert!(
        log.contains("The scaler is paused as the leader left it"),
        "{log}"
    );
    // Resumed on b, the scaler acts again.
    let (status, body) = pause(&second, "resume").await;
    assert_eq!((status, &body["paused"]), (200, &false.into()), "{body}");
    assert_eq!(lease_pauses(&kube), Some(serde_json::json!({"web": false})));
    replicas_become(&kube, 5).await.unwrap();
    second.stop().unwrap();
}

/// The pause flags the Lease carries, parsed.
fn lease_pauses(kube: &FakeKube) -> Option<serde_json::Value> {
    let lease = kube.lease("ops", "scalewise")?;
    let text = lease["metadata"]["annotations"]["scalewise.dev/pauses"].as_str()?;
    serde_json::from_str(text).ok()
}

/// A config's pause flag the Lease refuses (its API server failing the
/// write) is applied at once, and recorded in the Lease in the background
/// once it takes it: until then, a replica that took over would apply the
/// Lease's older flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configs_pause_the_lease_refused_is_recorded_later() {
    let kube = with_web_at_2().await;
    let dir = tempfile::tempdir().unwrap();
    let a = start(dir.path(), &kube, &config(2, "a"));
    leader_becomes(&kube, "a").await;
    api_up(&a).await;
    kube.fail_pause_writes(true);
    std::fs::write(
        dir.path().join("scalewise.toml"),
        config(2, "a").replace("max = 8\n", "max = 8\npaused = true\n"),
    )
    .unwrap();
    wait_until("the refused write", Duration::from_secs(60), || async {
        match a.log().contains("tried again in the background") {
            true => Ok(()),
            false => Err("not yet".to_owned()),
        }
    })
    .await
    .unwrap();
    // Applied here at once; not in the Lease.
    wait_until("web paused", Duration::from_secs(30), || async {
        match get(&a, "/v1/scalers/web").await["paused"].as_bool() {
            Some(true) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    assert_eq!(
        lease_pauses(&kube).and_then(|p| p.get("web").cloned()),
        None
    );
    // The API server takes it again: the flag reaches the Lease.
    kube.fail_pause_writes(false);
    wait_until("the flag in the lease", Duration::from_secs(60), || async {
        match lease_pauses(&kube) {
            Some(pauses) if pauses["web"] == true => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    assert!(
        a.log()
            .contains("The pause flag is recorded in the lease now."),
        "{}",
        a.log()
    );
    a.stop().unwrap();
}

/// The replica that takes over has a history of its own (it led before)
/// but not the leader's: like a new scaler, it does not scale down within
/// its scale-down window, whatever its stale history allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_waits_a_scale_down_window_before_scaling_down() {
    let kube = with_web_at_2().await;
    let dir = tempfile::tempdir().unwrap();
    // (Room for a busy machine: checked 2 s into an 8 s window.)
    let window = "\n[scalers.behavior.scale_down]\nstabilization_window = \"8s\"\n";
    // b leads first and holds at 2: its journal has a history.
    let b_dir = dir.path().join("b");
    let b = start(&b_dir, &kube, &(config(2, "b") + window));
    wait_until("b's ticks", Duration::from_secs(60), || async {
        match b.journal_export("web") {
            Ok(lines) if lines.lines().count() >= 2 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    b.stop().unwrap();
    // a leads and scales to 3.
    let a = start(&dir.path().join("a"), &kube, &config(3, "a"));
    replicas_become(&kube, 3).await.unwrap();
    // b comes back (restoring its history) wanting 1, and takes over when a
    // stops.
    let b = start(&b_dir, &kube, &(config(1, "b") + window));
    api_up(&b).await;
    a.stop().unwrap();
    leader_becomes(&kube, "b").await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(
        replicas(&kube),
        3,
        "b held the scale-down within its window"
    );
    replicas_become(&kube, 1).await.unwrap();
    b.stop().unwrap();
}

/// A tick whose term ends while it reads its metrics makes no change, and
/// tells nobody of a failure: not the workload's Events either (a
/// `FailedRescale` warning at every handover that lands mid-tick, while the
/// new leader scales as it should). The journal keeps why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_whose_term_ends_while_it_reads_posts_no_warning() {
    let kube = with_web_at_2().await;
    let dir = tempfile::tempdir().unwrap();
    let (hanging, asked) = counted_silent_listener().await.unwrap();
    let slow = format!(
        r#"
[scalers.metrics.load]
source = "stuck"
query = "up"

[sources.stuck]
kind = "prometheus"
url = "http://{hanging}"
timeout = "4s"
"#
    );
    let a = start(dir.path(), &kube, &(config(5, "a") + &slow));
    // a's first tick has read the workload and waits for its metric.
    wait_until("the metric asked for", Duration::from_secs(60), || async {
        match asked.load(std::sync::atomic::Ordering::SeqCst) {
            0 => Err("not yet".to_owned()),
            _ => Ok(()),
        }
    })
    .await
    .unwrap();
    // Its Lease goes (a new term begins when a takes it again).
    kube.delete_lease("ops", "scalewise");
    let failed = wait_until("the tick's record", Duration::from_secs(60), || async {
        let lines = a.journal_export("web").map_err(|e| e.to_string())?;
        lines
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|r| r["actuation"]["status"] == "failed")
            .ok_or(lines)
    })
    .await
    .unwrap();
    assert!(
        failed["actuation"]["error"]
            .as_str()
            .unwrap()
            .contains("lost the lease during the tick"),
        "{failed}"
    );
    // The next term scales.
    replicas_become(&kube, 5).await.unwrap();
    let warnings: Vec<_> = kube
        .events()
        .into_iter()
        .filter(|e| e["type"] == "Warning")
        .collect();
    assert!(warnings.is_empty(), "{warnings:?}");
    a.stop().unwrap();
}

/// A reload that records a pause in the Lease while the API server does
/// not answer holds the daemon's loop for a while (up to the write's 10 s
/// bound): a stop signal then waits for it, but a second one stops at once
/// (it was not listened for until the loop looked at the first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_at_once_during_a_reload_that_waits() {
    let kube = with_web_at_2().await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = start(dir.path(), &kube, &config(2, "a"));
    leader_becomes(&kube, "a").await;
    api_up(&a).await;
    kube.hang_leases(true);
    std::fs::write(
        dir.path().join("scalewise.toml"),
        config(2, "a").replace("max = 8\n", "max = 8\npaused = true\n"),
    )
    .unwrap();
    // The reload is under way, waiting on the Lease.
    wait_until("the reload", Duration::from_secs(30), || async {
        match a.log().contains("Reloading the config file.") {
            true => Ok(()),
            false => Err("not yet".to_owned()),
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    a.signal("TERM").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.signal("TERM").unwrap();
    let exited = a.exited_within(Duration::from_secs(3)).unwrap();
    assert_eq!(
        exited.and_then(|s| s.code()),
        Some(130),
        "{exited:?}\n{}",
        a.log()
    );
}

/// A leader that loses its Lease (renewals failing past the renew
/// deadline) stops reporting the target's replicas and its last tick, as a
/// follower that never led: gauges left from its term would sit beside the
/// new leader's. Leading again, it reports them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_former_leader_stops_reporting_the_targets_replicas() {
    let kube = with_web_at_2().await;
    let dir = tempfile::tempdir().unwrap();
    let a = start(dir.path(), &kube, &config(3, "a"));
    replicas_become(&kube, 3).await.unwrap();
    api_up(&a).await;
    let reports = |text: &str| {
        text.contains("scalewise_replicas_desired{scaler=\"web\"}")
            || text.contains("scalewise_replicas_current{scaler=\"web\"}")
            || text.contains("scalewise_last_tick_timestamp_seconds{scaler=\"web\"}")
    };
    // The tick that scaled sets the gauges once its record is written,
    // after the target was patched.
    wait_until(
        "a to report the target",
        Duration::from_secs(30),
        || async {
            let metrics = get_text(&a, "/metrics").await;
            if reports(&metrics) {
                Ok(())
            } else {
                Err(metrics)
            }
        },
    )
    .await
    .unwrap();

    kube.fail_leases(Some(StatusCode::INTERNAL_SERVER_ERROR));
    wait_until("a to follow", Duration::from_secs(30), || async {
        let metrics = get_text(&a, "/metrics").await;
        let leading = get(&a, "/v1/leader").await;
        if leading["leading"] == false && !reports(&metrics) {
            Ok(())
        } else {
            Err(format!("{leading}\n{metrics}"))
        }
    })
    .await
    .unwrap();
    let web = get(&a, "/v1/scalers/web").await;
    assert!(
        web["current"].is_null() && web["desired"].is_null(),
        "{web}"
    );

    kube.fail_leases(None);
    wait_until(
        "a to lead and report again",
        Duration::from_secs(30),
        || async {
            let metrics = get_text(&a, "/metrics").await;
            if metrics.contains("scalewise_replicas_desired{scaler=\"web\"} 3") {
                Ok(())
            } else {
                Err(metrics)
            }
        },
    )
    .await
    .unwrap();
    a.stop().unwrap();
}

/// A leader stopping while the API server takes its Lease requests and
/// never answers: the release is given up after its grace (5 s) and the
/// daemon exits, the lease left to expire. Without the bound it hung for
/// good, past any terminationGracePeriodSeconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_the_api_server_never_answers_does_not_hold_the_exit() {
    let kube = with_web_at_2().await;
    let dir = tempfile::tempdir().unwrap();
    // Renewals 20 s apart: right after taking the Lease the elector sleeps,
    // so the stop finds it there and goes straight to the release.
    let text = config(2, "a")
        .replace("lease_duration = \"6s\"", "lease_duration = \"60s\"")
        .replace("renew_deadline = \"4s\"", "renew_deadline = \"50s\"")
        .replace("retry_period = \"300ms\"", "retry_period = \"20s\"");
    let mut daemon = start(dir.path(), &kube, &text);
    leader_becomes(&kube, "a").await;
    // Its SIGTERM handler is in place once it runs (installed as the line
    // is logged, with no wait between).
    wait_until("the daemon to run", Duration::from_secs(60), || async {
        match daemon.log().contains("Scalewise is running.") {
            true => Ok(()),
            false => Err(daemon.log()),
        }
    })
    .await
    .unwrap();
    kube.hang_leases(true);
    let stopping = std::time::Instant::now();
    daemon.signal("TERM").unwrap();
    let exit = daemon.exited_within(Duration::from_secs(30)).unwrap();
    let took = stopping.elapsed();
    kube.hang_leases(false);
    assert!(
        exit.is_some_and(|s| s.success()),
        "{exit:?}\n{}",
        daemon.log()
    );
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(15),
        "{took:?}\n{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("The lease was not released in time"),
        "{}",
        daemon.log()
    );
    assert_eq!(holder(&kube).as_deref(), Some("a"), "left to expire");
}
