//! What the journal promises the control loop, through the real daemon
//! stepped by hand (`e2e::Harness`) on a simulated service: no change is
//! made that the journal could not record first, and a restart restores
//! every change that can still hold a scaler back — one under way when the
//! daemon stopped, and cooldowns longer than the hour of events the
//! policies see.

use std::path::Path;

use scalewise::journal::{ActuationRecord, TickRecord};
use scalewise_tests::artifacts;
use scalewise_tests::e2e::{Harness, SECOND, T0};

const HOUR: i64 = 3_600 * SECOND;

/// One scaler, `web`, every second on a simulated service of 2 replicas,
/// asking the counter fixture for `scale_to` replicas (0: hold), with
/// `behavior` (TOML lines under `[scalers.behavior.scale_up]`).
fn config(dir: &Path, policies: &Path, scale_to: u32, scale_up: &str) -> String {
    format!(
        r#"
policy_dir = "{policies}"

[journal]
path = "{journal}"

[simulations.web]
capacity_per_replica = 100.0
initial_replicas = 2

[simulations.web.load]
base = 100.0

[[scalers]]
name = "web"
interval = "1s"
min = 1
max = 10
target = {{ kind = "simulator", service = "web" }}
policies = [{{ module = "counter", params = {{ scale_to = {scale_to} }} }}]

[scalers.behavior.scale_up]
{scale_up}
"#,
        policies = policies.display(),
        journal = dir.join("journal.db").display(),
    )
}

fn rules(records: &[TickRecord]) -> Vec<Vec<String>> {
    records
        .iter()
        .map(|r| r.envelope.iter().map(|s| s.rule.clone()).collect())
        .collect()
}

/// Whether the cooldown is what held `record` (its last step).
fn held_by_cooldown(record: &TickRecord) -> bool {
    !record.is_scale() && record.envelope.last().is_some_and(|s| s.rule == "cooldown")
}

#[tokio::test]
async fn a_change_the_journal_cannot_record_first_is_not_made() {
    let dir = tempfile::tempdir().unwrap();
    let policies = scalewise_tests::policy_dir(&[("counter", artifacts::COUNTER)]);
    let text = config(dir.path(), policies.path(), 5, "");
    let mut h = Harness::from_text(&text, &dir.path().join("web.toml"), T0).await;
    // The journal stops taking records (a full disk, say).
    h.daemon.journal().clone().close().await.unwrap();
    let out = h.run_until(T0 + 2 * SECOND).await;
    assert_eq!(out.len(), 3);
    for record in &out {
        assert_eq!(record.id, None, "{record:?}");
        assert_eq!(
            (record.target.current, record.desired),
            (2, 5),
            "the scaler wants 5 and the target stays at 2: {record:?}"
        );
        assert!(
            matches!(&record.actuation, ActuationRecord::Failed { kind, .. } if kind == "journal"),
            "{:?}",
            record.actuation
        );
    }
    let handle = h.daemon.scalers_mut().next().unwrap().handle();
    let problems = handle.status.load().problems.clone();
    assert!(
        problems.iter().any(|p| p.starts_with("journal: ")),
        "the API says why: {problems:?}"
    );
}

#[tokio::test]
async fn a_change_under_way_at_a_crash_counts_for_the_cooldown_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let policies = scalewise_tests::policy_dir(&[("counter", artifacts::COUNTER)]);
    let path = dir.path().join("web.toml");
    let hold = config(dir.path(), policies.path(), 0, "cooldown = \"60s\"");
    let mut h = Harness::from_text(&hold, &path, T0).await;
    let first = h.run_until(T0).await.remove(0);
    // The daemon asked the target for 5 and died before the answer: the
    // journal's last word on it is `pending`.
    let pending = TickRecord {
        id: None,
        time_ms: T0 + 5 * SECOND,
        desired: 5,
        actuation: ActuationRecord::Pending,
        ..first
    };
    h.daemon.journal().append(pending).await.unwrap();
    h.close().await;

    let scale = config(dir.path(), policies.path(), 5, "cooldown = \"60s\"");
    let mut h = Harness::from_text(&scale, &path, T0).await;
    h.resume_at(T0 + 10 * SECOND);
    let held = h.run_until(T0 + 64 * SECOND).await;
    assert!(
        held.iter().all(held_by_cooldown),
        "no scale-up within 60s of the change under way: {:?}",
        rules(&held)
    );
    let after = h.run_until(T0 + 66 * SECOND).await;
    assert!(
        after.iter().any(TickRecord::is_scale),
        "{:?}",
        rules(&after)
    );
    h.close().await;
}

#[tokio::test]
async fn a_cooldown_longer_than_an_hour_outlives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let policies = scalewise_tests::policy_dir(&[("counter", artifacts::COUNTER)]);
    let path = dir.path().join("web.toml");
    let text = |scale_to| config(dir.path(), policies.path(), scale_to, "cooldown = \"3h\"");
    let mut h = Harness::from_text(&text(5), &path, T0).await;
    let first = h.run_until(T0).await;
    assert!(first[0].is_scale(), "{first:?}");
    h.close().await;

    // Two hours later, a policy that wants more: still within the 3h
    // cooldown of the change before the restart.
    let mut h = Harness::from_text(&text(8), &path, T0).await;
    h.resume_at(T0 + 2 * HOUR);
    let held = h.run_until(T0 + 2 * HOUR).await;
    assert!(held_by_cooldown(&held[0]), "{:?}", rules(&held));
    assert_eq!(
        held[0].envelope.last().unwrap().reason,
        "cooldown: last scale event 1h 59m 59s ago, scale_up.cooldown is 3h"
    );
    h.close().await;
}
