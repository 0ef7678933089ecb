//! The `rebalance` actuator against a shard coordinator. No stock system
//! speaks the coordinator API here, so the peer is the fake in
//! `src/shard_coordinator.rs` (it says so), which moves shards a few per
//! poll and refuses anything unsafe; every test asserts it refused nothing.

use std::path::Path;
use std::time::Duration;

use scalewise::actuators::rebalance::RebalanceActuator;
use scalewise::actuators::{Actuation, Actuator, ActuatorError, Observed};
use scalewise::config::RebalanceTarget;
use scalewise::journal::{ActuationRecord, TickRecord};
use scalewise_tests::artifacts;
use scalewise_tests::e2e::{Harness, SECOND, T0};
use scalewise_tests::reload::{rewrite_config, wait_for_reloads};
use scalewise_tests::running::RunningDaemon;
use scalewise_tests::shard_coordinator::{ShardCoordinator, World};

fn actuator(coordinator: &ShardCoordinator, timeout: Duration) -> RebalanceActuator {
    RebalanceActuator::new(RebalanceTarget {
        timeout,
        ..RebalanceTarget::at(coordinator.endpoint())
    })
    .unwrap()
}

/// Observes once a second from `start_ms` until no change is in flight;
/// returns the in-flight details seen and the last observation.
async fn settle(actuator: &RebalanceActuator, start_ms: i64) -> (Vec<String>, Observed) {
    let mut seen = Vec::new();
    for step in 1..200 {
        let observed = actuator.observe(start_ms + step * SECOND).await.unwrap();
        match &observed.in_flight {
            Some(f) => seen.push(f.detail.clone()),
            None => return (seen, observed),
        }
    }
    panic!("the change never finished: {seen:?}");
}

/// A config of one scaler, `consumers`, ticking every second on the
/// workers of `coordinator` (1 to 8), with the policies in `policies` and
/// its journal in `dir`; `scaler` ends the scaler's table (its metrics,
/// policies, behaviour).
fn consumers(dir: &Path, policies: &Path, coordinator: &ShardCoordinator, scaler: &str) -> String {
    format!(
        r#"
policy_dir = "{policies}"

[journal]
path = "{journal}"

[[scalers]]
name = "consumers"
interval = "1s"
min = 1
max = 8
target = {{ kind = "rebalance", endpoint = "{endpoint}" }}
{scaler}"#,
        policies = policies.display(),
        journal = dir.join("journal.db").display(),
        endpoint = coordinator.endpoint(),
    )
}

/// How many shards each worker owns, in worker order.
fn shard_counts(coordinator: &ShardCoordinator) -> Vec<usize> {
    coordinator.with(|w| w.counts().into_values().collect())
}

fn no_violations(coordinator: &ShardCoordinator) {
    let violations = coordinator.with(|w| w.violations.clone());
    assert!(violations.is_empty(), "{violations:?}");
}

#[tokio::test]
async fn scale_out_waits_for_the_new_workers_then_moves_only_what_they_need() {
    let coordinator = ShardCoordinator::start(World::new(12, 2)).await;
    let actuator = actuator(&coordinator, Duration::from_secs(600));
    let before = actuator.observe(T0).await.unwrap();
    assert_eq!(
        (before.current, before.ready, before.in_flight),
        (2, 2, None)
    );

    let started = actuator.scale(T0, 2, 3).await.unwrap();
    let Actuation::Started { detail } = started else {
        panic!("{started:?}")
    };
    assert_eq!(
        detail,
        "started 1 worker(s) (w-3); shards move to them once they are ready"
    );
    let (seen, after) = settle(&actuator, T0).await;
    assert_eq!(seen[0], "waiting for w-3 to be ready", "{seen:?}");
    assert!(
        seen.iter().any(|d| d.starts_with("moving shards: ")),
        "{seen:?}"
    );
    assert_eq!((after.current, after.ready), (3, 3));
    let (counts, moves) = coordinator.with(|w| (w.counts(), w.moves));
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [4, 4, 4]);
    assert_eq!(moves, 4, "only the new worker's four shards moved");
    assert_eq!(coordinator.with(|w| w.owners().len()), 12, "no shard lost");
    no_violations(&coordinator);
}

#[tokio::test]
async fn scale_in_moves_every_shard_off_the_victims_before_stopping_them() {
    let coordinator = ShardCoordinator::start(World::new(10, 4)).await;
    coordinator.with(|w| w.moves_per_poll = 1);
    let actuator = actuator(&coordinator, Duration::from_secs(600));
    // w-3 and w-4 own two shards each, w-1 and w-2 three: the lightest,
    // newest two go.
    let started = actuator.scale(T0, 4, 2).await.unwrap();
    assert_eq!(
        started,
        Actuation::Started {
            detail: "stopping w-4, w-3 once their shards have moved (4 shard(s) to move)".into()
        }
    );
    let (seen, after) = settle(&actuator, T0).await;
    assert!(
        seen.iter().any(|d| d.starts_with("draining w-4, w-3: ")),
        "{seen:?}"
    );
    assert!(
        seen.len() >= 3,
        "one move a poll keeps it in flight: {seen:?}"
    );
    assert_eq!((after.current, after.ready, after.in_flight), (2, 2, None));
    let (counts, stopped) = coordinator.with(|w| (w.counts(), w.stopped.clone()));
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [5, 5]);
    assert_eq!(stopped, ["w-4", "w-3"]);
    assert_eq!(coordinator.with(|w| w.owners().len()), 10, "no shard lost");
    no_violations(&coordinator);
}

#[tokio::test]
async fn a_restarted_daemon_finds_the_workers_as_they_are_and_stops_none_with_shards() {
    let coordinator = ShardCoordinator::start(World::new(9, 3)).await;
    coordinator.with(|w| w.moves_per_poll = 1);
    let first = actuator(&coordinator, Duration::from_secs(600));
    first.scale(T0, 3, 2).await.unwrap();
    first.observe(T0 + SECOND).await.unwrap();
    drop(first);
    // A new process: no memory of the change. The victim still owns shards,
    // so it counts as a worker, and nothing is in flight.
    let second = actuator(&coordinator, Duration::from_secs(600));
    let seen = second.observe(T0 + 2 * SECOND).await.unwrap();
    assert_eq!((seen.current, seen.in_flight), (3, None));
    // The loop decides again and the change completes.
    second.scale(T0 + 2 * SECOND, 3, 2).await.unwrap();
    let (_, after) = settle(&second, T0 + 2 * SECOND).await;
    assert_eq!(after.current, 2);
    assert_eq!(coordinator.with(|w| w.owners().len()), 9);
    no_violations(&coordinator);
}

/// A scale-out whose daemon went away before the new worker was ready: a
/// count that stays the same never scales, so the next daemon's observe
/// gives the idle worker its shards.
#[tokio::test]
async fn a_worker_left_idle_by_an_unfinished_scale_out_gets_its_shards() {
    let coordinator = ShardCoordinator::start(World::new(12, 2)).await;
    coordinator.with(|w| w.ready_after_polls = 3);
    let first = actuator(&coordinator, Duration::from_secs(600));
    first.scale(T0, 2, 3).await.unwrap();
    drop(first);
    let second = actuator(&coordinator, Duration::from_secs(600));
    // Nothing happens while the worker is not ready; once it is, its shards
    // move to it.
    let mut after = None;
    for step in 1..20 {
        after = Some(second.observe(T0 + step * SECOND).await.unwrap());
    }
    let after = after.unwrap();
    assert_eq!((after.current, after.ready, after.in_flight), (3, 3, None));
    assert_eq!(shard_counts(&coordinator), [4, 4, 4]);
    no_violations(&coordinator);
}

/// The shards change under a scale-in (one added): the old plan would be
/// refused at every step; the change plans again and finishes.
#[tokio::test]
async fn a_plan_the_shards_outgrew_is_made_again() {
    let coordinator = ShardCoordinator::start(World::new(9, 3)).await;
    coordinator.with(|w| w.moves_per_poll = 1);
    let actuator = actuator(&coordinator, Duration::from_secs(600));
    actuator.scale(T0, 3, 2).await.unwrap();
    actuator.observe(T0 + SECOND).await.unwrap();
    coordinator.with(|w| w.shards.push("s99".into()));
    let (_, after) = settle(&actuator, T0 + SECOND).await;
    assert_eq!(after.current, 2);
    assert_eq!(
        coordinator.with(|w| w.owners().len()),
        10,
        "the new shard too"
    );
    assert_eq!(shard_counts(&coordinator), [5, 5]);
    no_violations(&coordinator);
}

/// The coordinator starts one worker of two, then refuses: the one started
/// is followed (it gets shards) instead of forgotten.
#[tokio::test]
async fn workers_started_before_a_failed_start_are_followed() {
    let coordinator = ShardCoordinator::start(World::new(12, 2)).await;
    coordinator.with(|w| w.starts_left = Some(1));
    let actuator = actuator(&coordinator, Duration::from_secs(600));
    let started = actuator.scale(T0, 2, 4).await.unwrap();
    let Actuation::Started { detail } = started else {
        panic!("{started:?}")
    };
    assert!(
        detail.starts_with("started 1 of 2 worker(s) (w-3), then: "),
        "{detail}"
    );
    let (_, after) = settle(&actuator, T0).await;
    assert_eq!((after.current, after.ready), (3, 3));
    assert_eq!(shard_counts(&coordinator), [4, 4, 4]);
    no_violations(&coordinator);
}

/// Two idle workers to stop at once, and the coordinator stops one, then
/// answers 503: the scale-in is under way (a worker is gone), so it stays
/// in flight and the next poll stops the other, instead of an error that
/// made the scaler record a failure, and change nothing in its cooldowns,
/// though the target had lost a worker.
#[tokio::test]
async fn a_scale_in_that_stops_one_victim_of_two_carries_on() {
    // Two shards over four workers: w-3 and w-4 own none.
    let coordinator = ShardCoordinator::start(World::new(2, 4)).await;
    coordinator.with(|w| w.stops_left = Some(1));
    let actuator = actuator(&coordinator, Duration::from_secs(600));
    let started = actuator.scale(T0, 4, 2).await.unwrap();
    assert!(
        matches!(&started, Actuation::Started { detail } if detail.starts_with("stopping w-4, w-3")),
        "{started:?}"
    );
    assert_eq!(coordinator.with(|w| w.stopped.clone()), ["w-4"]);
    coordinator.with(|w| w.stops_left = None);
    let (_, after) = settle(&actuator, T0).await;
    assert_eq!((after.current, after.in_flight), (2, None));
    assert_eq!(coordinator.with(|w| w.stopped.clone()), ["w-4", "w-3"]);
    no_violations(&coordinator);
}

/// A tick whose replica loses the lease while it runs takes no further
/// step (another replica may lead now): lost before the tick's first
/// step, no worker is stopped; lost after its first, one of the two.
/// Leading again, the change finishes.
#[tokio::test]
async fn a_rebalance_takes_no_step_once_the_lease_is_lost() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let coordinator = ShardCoordinator::start(World::new(8, 4)).await;
    let actuator = actuator(&coordinator, Duration::from_secs(600));
    actuator.scale(T0, 4, 2).await.unwrap();
    for step in 1..20 {
        let seen = actuator
            .observe_while(T0 + step * SECOND, &|| false)
            .await
            .unwrap();
        assert!(seen.in_flight.is_some());
    }
    assert!(coordinator.with(|w| w.stopped.is_empty()));
    assert_eq!(coordinator.with(|w| w.workers.len()), 4);
    // The lease lost after each tick's first step, until a worker stops.
    let mut step = 20;
    while coordinator.with(|w| w.stopped.is_empty()) {
        step += 1;
        assert!(step < 200, "no worker was ever stopped");
        let asked = AtomicUsize::new(0);
        let first_step_only = || asked.fetch_add(1, Ordering::SeqCst) == 0;
        let seen = actuator
            .observe_while(T0 + step * SECOND, &first_step_only)
            .await
            .unwrap();
        assert!(seen.in_flight.is_some(), "{seen:?}");
    }
    assert_eq!(coordinator.with(|w| w.stopped.clone()), ["w-4"]);
    let (_, after) = settle(&actuator, T0 + (step + 1) * SECOND).await;
    assert_eq!(after.current, 2);
    no_violations(&coordinator);
}

/// A worker that is not ready (crash-looping) and released its shards:
/// they go to the ready workers at once rather than wait for it, and a
/// scale-out meanwhile gives it none of the shares (it could take none,
/// and the change would sit in flight until its timeout).
#[tokio::test]
async fn a_worker_that_is_not_ready_gets_no_shards_and_its_released_ones_move_on() {
    let coordinator = ShardCoordinator::start(World::new(8, 3)).await;
    coordinator.with(|w| {
        let down = w.workers.get_mut("w-2").unwrap();
        down.polls_until_ready = u32::MAX;
        down.owned.clear();
    });
    let actuator = actuator(&coordinator, Duration::from_secs(600));
    let (_, placed) = settle(&actuator, T0).await;
    assert!(placed.in_flight.is_none());
    assert_eq!(
        coordinator.with(|w| w.owners().len()),
        8,
        "every shard owned"
    );
    assert_eq!(coordinator.with(|w| w.counts()["w-2"]), 0);

    actuator.scale(T0 + 300 * SECOND, 3, 4).await.unwrap();
    let (_, after) = settle(&actuator, T0 + 300 * SECOND).await;
    assert_eq!((after.current, after.ready), (4, 3));
    let counts = coordinator.with(|w| w.counts());
    assert_eq!(counts["w-2"], 0, "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 8);
    assert!(
        counts
            .iter()
            .filter(|(id, _)| *id != "w-2")
            .all(|(_, n)| *n >= 2),
        "{counts:?}"
    );
    no_violations(&coordinator);
}

/// A keeper that goes not ready mid-change (it crash-loops and releases
/// its shards) has the plan made again: its shards go to the ready
/// workers, rather than the change waiting for it until its timeout.
#[tokio::test]
async fn a_plan_is_made_again_when_a_keeper_goes_not_ready() {
    let coordinator = ShardCoordinator::start(World::new(8, 3)).await;
    coordinator.with(|w| w.moves_per_poll = 1);
    let actuator = actuator(&coordinator, Duration::from_secs(600));
    actuator.scale(T0, 3, 4).await.unwrap();
    let mut step = 0;
    while coordinator.with(|w| w.assignment.is_none()) {
        step += 1;
        assert!(step < 50, "no assignment was ever made");
        actuator.observe(T0 + step * SECOND).await.unwrap();
    }
    coordinator.with(|w| {
        let down = w.workers.get_mut("w-2").unwrap();
        down.polls_until_ready = u32::MAX;
        down.owned.clear();
    });
    let (_, after) = settle(&actuator, T0 + (step + 1) * SECOND).await;
    assert_eq!((after.current, after.ready), (4, 3));
    let counts = coordinator.with(|w| w.counts());
    assert_eq!(counts["w-2"], 0, "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 8, "every shard owned");
    no_violations(&coordinator);
}

/// A step of a change in flight that the coordinator refuses (a worker
/// stop) leaves the change in flight saying why; the reading of the
/// workers stands (the tick goes on), and the next tick tries again.
#[tokio::test]
async fn a_failed_step_is_said_in_the_change_and_the_workers_are_read() {
    let coordinator = ShardCoordinator::start(World::new(8, 4)).await;
    coordinator.with(|w| {
        w.moves_per_poll = 1;
        w.stops_left = Some(0);
    });
    let actuator = actuator(&coordinator, Duration::from_secs(600));
    actuator.scale(T0, 4, 2).await.unwrap();
    let mut failed = None;
    for step in 1..100 {
        let seen = actuator.observe(T0 + step * SECOND).await.unwrap();
        let detail = seen.in_flight.expect("in flight until a stop works").detail;
        if detail.contains("the last step failed") {
            failed = Some((seen.current, detail));
            break;
        }
    }
    let (current, detail) = failed.expect("the refused stop is said");
    assert_eq!(current, 4);
    assert!(
        detail.starts_with("draining w-4, w-3: 0 shard move(s) left"),
        "{detail}"
    );
    coordinator.with(|w| w.stops_left = None);
    let (_, after) = settle(&actuator, T0 + 100 * SECOND).await;
    assert_eq!(after.current, 2);
    no_violations(&coordinator);
}

/// The time a change is held (a pause, dry-run) does not count towards
/// its timeout: resumed after longer than the timeout, it carries on
/// rather than be given up at once.
#[tokio::test]
async fn a_held_rebalance_does_not_time_out_while_it_is_held() {
    let coordinator = ShardCoordinator::start(World::new(8, 4)).await;
    let actuator = actuator(&coordinator, Duration::from_secs(60));
    actuator.scale(T0, 4, 2).await.unwrap();
    for minute in 1..=5 {
        let seen = actuator
            .observe_only(T0 + minute * 60 * SECOND)
            .await
            .unwrap();
        assert!(seen.in_flight.is_some());
    }
    let (_, after) = settle(&actuator, T0 + 5 * 60 * SECOND).await;
    assert_eq!(after.current, 2, "carried on, not given up");
    assert_eq!(coordinator.with(|w| w.stopped.len()), 2);
    no_violations(&coordinator);
}

/// A paused scaler observes without advancing: no shard moves, no worker
/// stops, until it acts again.
#[tokio::test]
async fn observing_only_leaves_a_rebalance_where_it_is() {
    let coordinator = ShardCoordinator::start(World::new(8, 4)).await;
    let actuator = actuator(&coordinator, Duration::from_secs(600));
    actuator.scale(T0, 4, 2).await.unwrap();
    for step in 1..5 {
        let seen = actuator.observe_only(T0 + step * SECOND).await.unwrap();
        assert!(seen.in_flight.is_some());
    }
    // No victim stopped while held (the coordinator finishes the moves it
    // was given); acting again finishes the change.
    assert!(coordinator.with(|w| w.stopped.is_empty()));
    assert_eq!(coordinator.with(|w| w.workers.len()), 4);
    let (_, after) = settle(&actuator, T0 + 5 * SECOND).await;
    assert_eq!(after.current, 2);
    no_violations(&coordinator);
}

#[tokio::test]
async fn a_change_that_does_not_finish_in_time_is_given_up() {
    let coordinator = ShardCoordinator::start(World::new(4, 2)).await;
    coordinator.with(|w| w.ready_after_polls = 1_000);
    let actuator = actuator(&coordinator, Duration::from_secs(5));
    actuator.scale(T0, 2, 3).await.unwrap();
    let waiting = actuator.observe(T0 + 3 * SECOND).await.unwrap();
    assert!(waiting.in_flight.is_some());
    let given_up = actuator.observe(T0 + 6 * SECOND).await.unwrap();
    assert_eq!(given_up.in_flight, None);
    // The started worker stays: it is real, and the next tick counts it.
    assert_eq!((given_up.current, given_up.ready), (3, 2));
    assert_eq!(coordinator.with(|w| w.moves), 0);
    no_violations(&coordinator);
}

/// A rebalance that cannot finish (the coordinator never moves a shard) is
/// given up, and for one timeout no rebalance of the actuator's own starts
/// again: the same plan would be in flight again at once, holding the
/// scaler for good. The scaler decides meanwhile: a scale-in picks the
/// idle worker, which owns nothing, and ends at once.
#[tokio::test]
async fn a_rebalance_given_up_does_not_start_again_at_once() {
    let coordinator = ShardCoordinator::start(World::new(4, 2)).await;
    coordinator.with(|w| {
        w.ready_after_polls = 1;
        w.moves_per_poll = 0;
    });
    let actuator = actuator(&coordinator, Duration::from_secs(5));
    actuator.scale(T0, 2, 3).await.unwrap();
    for s in 1..=5 {
        let waiting = actuator.observe(T0 + s * SECOND).await.unwrap();
        assert!(waiting.in_flight.is_some(), "{s}: {waiting:?}");
    }
    let given_up = actuator.observe(T0 + 6 * SECOND).await.unwrap();
    assert_eq!(given_up.in_flight, None, "{given_up:?}");
    let resting = actuator.observe(T0 + 7 * SECOND).await.unwrap();
    assert_eq!(resting.in_flight, None, "{resting:?}");
    assert_eq!((resting.current, resting.ready), (3, 3));
    // The scaler's own decision: back to 2, the idle worker stopped.
    actuator.scale(T0 + 8 * SECOND, 3, 2).await.unwrap();
    let (_, after) = settle(&actuator, T0 + 8 * SECOND).await;
    assert_eq!(after.current, 2);
    assert_eq!(shard_counts(&coordinator), [2, 2]);
    no_violations(&coordinator);
}

/// A clock that jumps ahead mid-change (a suspend, NTP setting a wrong
/// clock) does not count the jump towards the change's timeout.
#[tokio::test]
async fn a_clock_jump_does_not_count_towards_the_timeout() {
    let coordinator = ShardCoordinator::start(World::new(4, 2)).await;
    coordinator.with(|w| w.ready_after_polls = 1_000);
    let actuator = actuator(&coordinator, Duration::from_secs(5));
    actuator.scale(T0, 2, 3).await.unwrap();
    actuator.observe(T0 + 3 * SECOND).await.unwrap();
    actuator.clock_jumped(3_600 * SECOND).await;
    let waiting = actuator.observe(T0 + 3_604 * SECOND).await.unwrap();
    assert!(waiting.in_flight.is_some(), "{waiting:?}");
    let given_up = actuator.observe(T0 + 3_606 * SECOND).await.unwrap();
    assert_eq!(given_up.in_flight, None);
    no_violations(&coordinator);
}

#[tokio::test]
async fn coordinator_failures_are_errors_that_name_it() {
    let coordinator = ShardCoordinator::start(World::new(4, 2)).await;
    let actuator = actuator(&coordinator, Duration::from_secs(600));
    coordinator.with(|w| w.fail_with = Some(503));
    let err = actuator.observe(T0).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "shard coordinator {}: list workers: HTTP 503: {{\"error\":\"the coordinator is failing on purpose\"}}",
            coordinator.endpoint()
        )
    );
    coordinator.with(|w| w.fail_with = None);
    let err = actuator.scale(T0, 2, 0).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "cannot stop every worker: 4 shard(s) need at least one (set the scaler's min to 1 or more)"
    );
    assert_eq!(
        coordinator.with(|w| w.workers.len()),
        2,
        "nothing was stopped"
    );
    coordinator.with(|w| w.fail_with = Some(404));
    assert!(matches!(
        actuator.observe(T0).await,
        Err(ActuatorError::NotFound(_))
    ));

    let nowhere = RebalanceActuator::new(RebalanceTarget::at("http://127.0.0.1:9/api")).unwrap();
    let err = nowhere.observe(T0).await.unwrap_err().to_string();
    assert!(
        err.starts_with("shard coordinator http://127.0.0.1:9/api: list workers: "),
        "{err}"
    );
}

#[tokio::test]
async fn the_daemon_scales_sharded_workers_out_and_in_without_stopping_a_busy_one() {
    let coordinator = ShardCoordinator::start(World::new(16, 2)).await;
    coordinator.with(|w| w.moves_per_poll = 3);
    let dir = tempfile::tempdir().unwrap();
    let policies = scalewise_tests::policy_dir(&[("counter", artifacts::COUNTER)]);
    let config = |scale_to: u32| {
        consumers(
            dir.path(),
            policies.path(),
            &coordinator,
            &format!(
                "policies = [{{ module = \"counter\", params = {{ scale_to = {scale_to} }} }}]\n\
                 behavior.scale_down = {{ stabilization_window = \"0s\" }}\n"
            ),
        )
    };
    let path = dir.path().join("rebalance.toml");
    let mut h = Harness::from_text(&config(4), &path, T0).await;
    let out = h.run_until(T0 + 30 * SECOND).await;
    assert_eq!(shard_counts(&coordinator), [4, 4, 4, 4]);
    let in_flight = |records: &[TickRecord]| {
        records
            .iter()
            .filter(|r| r.envelope.iter().any(|s| s.rule == "in-flight"))
            .count()
    };
    // 2 → 4 at once: the workers start at the first tick; the moves follow
    // in later ticks' observations.
    let started: Vec<_> = out
        .iter()
        .filter(|r| matches!(r.actuation, ActuationRecord::Started { .. }))
        .collect();
    assert_eq!(started.len(), 1, "{out:#?}");
    assert_eq!((started[0].target.current, started[0].desired), (2, 4));
    h.close().await;

    let mut h = Harness::from_text(&config(2), &path, T0).await;
    h.resume_at(T0 + 31 * SECOND);
    let back = h.run_until(T0 + 60 * SECOND).await;
    // 4 → 2: the workers stay while their shards move, and the loop starts
    // nothing on top of that.
    assert!(in_flight(&back) > 0, "the loop waited for the moves");
    let last = back.last().unwrap();
    assert_eq!((last.target.current, last.desired), (2, 2));
    assert_eq!(shard_counts(&coordinator), [8, 8]);
    assert_eq!(coordinator.with(|w| w.owners().len()), 16);
    no_violations(&coordinator);
    h.close().await;
}

#[tokio::test]
async fn workers_follow_the_shard_count_the_target_reports() {
    // One worker per 4 shards: target tracking on the coordinator's own
    // shard count (`source = "target"`), no metric system in between.
    let coordinator = ShardCoordinator::start(World::new(8, 2)).await;
    coordinator.with(|w| w.moves_per_poll = 4);
    let dir = tempfile::tempdir().unwrap();
    let policies = scalewise_tests::policy_dir(&[("target-tracking", artifacts::TARGET_TRACKING)]);
    let config = consumers(
        dir.path(),
        policies.path(),
        &coordinator,
        "metrics.shards = { source = \"target\", query = \"shards\", window = \"10s\" }\n\
         policies = [{ module = \"target-tracking\", params = { metric = \"shards\", \
         metric_type = \"total\", target = 4.0 } }]\n",
    );
    let path = dir.path().join("shards.toml");
    let mut h = Harness::from_text(&config, &path, T0).await;
    let quiet = h.run_until(T0 + 5 * SECOND).await;
    // 8 shards on 2 workers: where it should be.
    assert!(quiet.iter().all(|r| !r.is_scale()), "{quiet:#?}");
    assert_eq!(quiet[4].facts["shards"], 8.0);
    assert_eq!(quiet[4].facts["max_shards_per_worker"], 4.0);
    // The policy saw the shard count as a series, one point a tick.
    let shards = &quiet[4].evaluations[0].context.metrics[0];
    assert_eq!(shards.name, "shards");
    assert_eq!(shards.points.len(), 5);

    // Eight more shards, owned by nobody yet: placed on the workers there
    // are at once (nobody processes an unowned shard), then spread over the
    // workers the policy adds.
    coordinator.with(|w| w.shards.extend((8..16).map(|i| format!("s{i:02}"))));
    let grown = h.run_until(T0 + 25 * SECOND).await;
    let first = &grown[0];
    assert_eq!(
        (first.facts["shards"], first.facts["unassigned_shards"]),
        (16.0, 8.0)
    );
    assert_eq!((first.target.current, first.desired), (2, 2), "{first:#?}");
    assert!(
        first
            .envelope
            .iter()
            .any(|step| step.reason.contains("placing") || step.reason.contains("moving shards")),
        "{:#?}",
        first.envelope
    );
    let scale = grown.iter().find(|r| r.is_scale()).expect("a scale-out");
    assert_eq!((scale.target.current, scale.desired), (2, 4), "{scale:#?}");
    assert_eq!(shard_counts(&coordinator), [4, 4, 4, 4]);
    assert_eq!(coordinator.with(|w| w.owners().len()), 16);
    no_violations(&coordinator);
    // The API's status of the scaler shows what the target reported.
    let handles = h.daemon.telemetry().scalers().load_full();
    let status = handles["consumers"].status.load_full();
    assert_eq!(
        (status.facts["shards"], status.facts["unassigned_shards"]),
        (16.0, 0.0)
    );
    h.close().await;

    // After a restart the series is there again, from the journal.
    let mut h = Harness::from_text(&config, &path, T0).await;
    h.resume_at(T0 + 26 * SECOND);
    let after = h.run_until(T0 + 26 * SECOND).await;
    let shards = &after[0].evaluations[0].context.metrics[0];
    assert!(shards.points.len() > 5, "{shards:?}");
    assert!(shards.points.iter().all(|p| p.value == 16.0), "{shards:?}");
    h.close().await;
}

/// A coordinator behind HTTPS with a private CA's certificate and a bearer
/// token: unreachable without `ca_file`, refused (401) without the token,
/// and scaled through with both, given as paths relative to the config.
#[tokio::test]
async fn a_coordinator_behind_https_and_a_token_is_reached_with_ca_file_and_bearer_token() {
    let coordinator = ShardCoordinator::start_secured(World::new(6, 2)).await;
    coordinator.with(|w| w.moves_per_poll = 6);
    let secured = coordinator.secured.as_ref().unwrap();
    let endpoint = coordinator.endpoint();
    assert!(endpoint.starts_with("https://"), "{endpoint}");

    let untrusting = RebalanceActuator::new(RebalanceTarget::at(&endpoint)).unwrap();
    let err = untrusting.observe(T0).await.unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("shard coordinator {endpoint}: list workers: ")),
        "{err}"
    );
    assert!(err.contains("certificate"), "{err}");
    let no_token = RebalanceActuator::new(RebalanceTarget {
        ca_file: Some(secured.ca_file.clone()),
        ..RebalanceTarget::at(&endpoint)
    })
    .unwrap();
    let err = no_token.observe(T0).await.unwrap_err().to_string();
    assert_eq!(
        err,
        format!("shard coordinator {endpoint}: list workers: HTTP 401")
    );

    // The daemon, from a config that names the CA and the token file
    // relative to its own folder.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&secured.ca_file, dir.path().join("coordinator-ca.pem")).unwrap();
    std::fs::copy(&secured.token_file, dir.path().join("coordinator-token")).unwrap();
    let policies = scalewise_tests::policy_dir(&[("counter", artifacts::COUNTER)]);
    let config = format!(
        r#"
policy_dir = "{policies}"

[journal]
path = "journal.db"

[[scalers]]
name = "consumers"
interval = "1s"
min = 1
max = 8
policies = [{{ module = "counter", params = {{ scale_to = 3 }} }}]

[scalers.target]
kind = "rebalance"
endpoint = "{endpoint}"
bearer_token = {{ file = "coordinator-token" }}
ca_file = "coordinator-ca.pem"
headers = {{ X-Team = "streams" }}
"#,
        policies = policies.path().display(),
    );
    let path = dir.path().join("secured.toml");
    let mut h = Harness::from_text(&config, &path, T0).await;
    let out = h.run_until(T0 + 10 * SECOND).await;
    assert!(!out.is_empty());
    assert!(
        out.iter().all(|r| !matches!(
            r.actuation,
            ActuationRecord::Failed { .. } | ActuationRecord::ObserveFailed { .. }
        )),
        "every tick reached the coordinator: {out:#?}"
    );
    assert_eq!(shard_counts(&coordinator), [2, 2, 2]);
    no_violations(&coordinator);
    h.close().await;
}

/// A reload that changes the scaler (a policy parameter) but not its target
/// keeps the actuator, and with it the drain in flight: the scaler keeps
/// holding for it instead of starting another change on top of it. One that
/// changes how the target is reached (its timeout) builds a new actuator,
/// which takes the drain over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_keeps_the_target_keeps_its_change_in_flight() {
    let coordinator = ShardCoordinator::start(World::new(8, 4)).await;
    // The coordinator never finishes a move: the drain stays in flight.
    coordinator.with(|w| w.moves_per_poll = 0);
    let config = |scale_to: u32, timeout: &str| {
        format!(
            r#"policy_dir = "policies"

[journal]
path = "journal.db"

[[scalers]]
name = "consumers"
interval = "1s"
min = 1
max = 8
target = {{ kind = "rebalance", endpoint = "{endpoint}", timeout = "{timeout}" }}
policies = [{{ module = "counter", params = {{ scale_to = {scale_to} }} }}]
behavior.scale_down = {{ stabilization_window = "0s" }}
"#,
            endpoint = coordinator.endpoint()
        )
    };
    let d = RunningDaemon::with(&config(2, "10m"))
        .config_reload()
        .no_listener()
        .policies(|dir| {
            std::fs::copy(artifacts::COUNTER, dir.join("counter.wasm")).unwrap();
        })
        .start()
        .await
        .unwrap();
    let in_flight = |r: &TickRecord| r.envelope.iter().any(|s| s.rule == "in-flight");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !d.records("consumers").await.unwrap().iter().any(in_flight) {
        assert!(std::time::Instant::now() < deadline, "no drain in flight");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut seen = Vec::new();
    for (reloads, (scale_to, timeout)) in [(3, "10m"), (3, "20m")].into_iter().enumerate() {
        rewrite_config(&d, &config(scale_to, timeout));
        wait_for_reloads(&d, "applied", reloads as u64 + 1).await;
        let from = d.records("consumers").await.unwrap().len();
        seen.push(from);
        while d.records("consumers").await.unwrap().len() < from + 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "no ticks after reload {reloads}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let seen = seen[0];
    let records = d.records("consumers").await.unwrap();
    let scales: Vec<_> = records.iter().filter(|r| r.is_scale()).collect();
    assert_eq!(
        scales.len(),
        1,
        "one change, not a second on top: {scales:#?}"
    );
    assert!(
        records[seen..].iter().all(in_flight),
        "{:#?}",
        &records[seen..]
    );
    assert!(coordinator.with(|w| w.stopped.is_empty()));
    assert_eq!(coordinator.with(|w| w.workers.len()), 4);
}
