//! The AWS Auto Scaling group actuator against a real Auto Scaling API (the
//! moto server): scale-out, scale-in through chosen, drained victims,
//! timeouts, restarts, errors. Times are passed in, so drains that take
//! minutes are tested without waiting; the API and the drain webhook are
//! real servers on loopback.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::http::StatusCode;
use scalewise::actuators::aws_asg::{AwsAsgActuator, UNDRAIN_PATIENCE};
use scalewise::actuators::{Actuation, Actuator, ActuatorError};
use scalewise::config::{self, AwsAsgTarget};
use scalewise_tests::moto::{DrainWebhook, MotoServer, client_for};
use tokio::sync::OnceCell;

const T0: i64 = 1_700_000_000_000;
const SECOND: i64 = 1_000;

/// One server for the whole file; each test uses its own group.
async fn moto() -> &'static MotoServer {
    static MOTO: OnceCell<MotoServer> = OnceCell::const_new();
    MOTO.get_or_init(|| async { MotoServer::start().await.expect("moto starts") })
        .await
}

fn settings(group: &str) -> AwsAsgTarget {
    AwsAsgTarget {
        group: group.into(),
        region: Some(scalewise_tests::moto::REGION.into()),
        endpoint: None,
        protect_instances: true,
        drain_webhook: None,
        undrain_webhook: None,
        drain_delay: Duration::ZERO,
        drain_timeout: Duration::from_secs(300),
    }
}

async fn actuator(moto: &MotoServer, settings: AwsAsgTarget) -> AwsAsgActuator {
    AwsAsgActuator::with_client(settings, moto.client()).unwrap()
}

#[tokio::test]
async fn scale_out_raises_the_desired_capacity_and_protects_the_instances() {
    let moto = moto().await;
    moto.create_group("out", 2).await.unwrap();
    let asg = actuator(moto, settings("out")).await;

    let before = asg.observe(T0).await.unwrap();
    assert_eq!((before.current, before.ready), (2, 2));
    assert!(before.in_flight.is_none());

    let done = asg.scale(T0, 2, 5).await.unwrap();
    let Actuation::Done { detail } = done else {
        panic!("scale-out is done at once: {done:?}")
    };
    assert!(detail.contains("to 5 (was 2)"), "{detail}");
    assert!(detail.contains("protected"), "{detail}");

    let group = moto.group("out").await.unwrap();
    assert_eq!(group.desired_capacity(), Some(5));
    assert_eq!(group.new_instances_protected_from_scale_in(), Some(true));
    // The two that were there were protected by the call; the three new ones
    // by the group's setting.
    assert_eq!(group.instances().len(), 5);
    for i in group.instances() {
        assert_eq!(i.protected_from_scale_in(), Some(true), "{i:?}");
    }
    let after = asg.observe(T0 + SECOND).await.unwrap();
    assert_eq!((after.current, after.ready), (5, 5));
    // What the group reports besides, as the `target` source serves it.
    let fact = |o: &scalewise::actuators::Observed, name: &str| o.facts[name];
    assert_eq!(
        (fact(&before, "in_service"), fact(&before, "protected")),
        (2.0, 0.0)
    );
    assert_eq!(
        (fact(&after, "in_service"), fact(&after, "protected")),
        (5.0, 5.0)
    );
    for idle in ["pending", "terminating", "standby", "unhealthy"] {
        assert_eq!(fact(&after, idle), 0.0, "{idle}");
    }
}

#[tokio::test]
async fn without_protection_the_instances_are_left_as_they_are() {
    let moto = moto().await;
    moto.create_group("unprotected", 1).await.unwrap();
    let asg = actuator(
        moto,
        AwsAsgTarget {
            protect_instances: false,
            ..settings("unprotected")
        },
    )
    .await;
    asg.scale(T0, 1, 3).await.unwrap();
    let group = moto.group("unprotected").await.unwrap();
    assert_eq!(group.desired_capacity(), Some(3));
    assert_ne!(group.new_instances_protected_from_scale_in(), Some(true));
    assert!(
        group
            .instances()
            .iter()
            .all(|i| i.protected_from_scale_in() != Some(true))
    );
}

#[tokio::test]
async fn scale_in_drains_the_chosen_victims_then_terminates_exactly_them() {
    let moto = moto().await;
    moto.create_group("in", 4).await.unwrap();
    let drainer = DrainWebhook::start(StatusCode::ACCEPTED).await.unwrap();
    let url = drainer.url().to_owned();
    let asg = actuator(
        moto,
        AwsAsgTarget {
            drain_webhook: Some(config::DrainWebhook::at(url)),
            ..settings("in")
        },
    )
    .await;
    let all = moto.instance_ids("in").await.unwrap();

    let started = asg.scale(T0, 4, 2).await.unwrap();
    let Actuation::Started { detail } = started else {
        panic!("a drained scale-in takes several ticks: {started:?}")
    };
    assert!(detail.contains("draining"), "{detail}");
    let victims = drainer.instance_ids();
    assert_eq!(victims.len(), 2, "two victims asked to drain: {victims:?}");
    // Nothing is terminated, and the desired capacity is unchanged, until
    // the victims are drained.
    assert_eq!(moto.instance_ids("in").await.unwrap(), all);
    let group = moto.group("in").await.unwrap();
    assert_eq!(group.desired_capacity(), Some(4));
    for i in group.instances() {
        assert_eq!(i.protected_from_scale_in(), Some(true), "{i:?}");
    }

    // Still draining: the change is in flight, and a second change is refused.
    let observed = asg.observe(T0 + 15 * SECOND).await.unwrap();
    let in_flight = observed.in_flight.expect("the scale-in is in flight");
    assert_eq!(in_flight.desired, 2);
    assert!(
        in_flight.detail.contains("draining"),
        "{}",
        in_flight.detail
    );
    assert_eq!(observed.current, 4);
    let refused = asg.scale(T0 + 15 * SECOND, 4, 3).await.unwrap_err();
    assert!(refused.to_string().contains("in flight"), "{refused}");
    assert_eq!(moto.instance_ids("in").await.unwrap(), all);

    // Drained: exactly the victims go, with the desired capacity.
    drainer.answer(StatusCode::OK);
    let observed = asg.observe(T0 + 30 * SECOND).await.unwrap();
    assert!(observed.in_flight.is_none(), "{observed:?}");
    assert_eq!((observed.current, observed.ready), (2, 2));
    let left: BTreeSet<String> = moto.instance_ids("in").await.unwrap().into_iter().collect();
    let expected: BTreeSet<String> = all
        .iter()
        .filter(|id| !victims.contains(*id))
        .cloned()
        .collect();
    assert_eq!(left, expected);
    let group = moto.group("in").await.unwrap();
    assert_eq!(group.desired_capacity(), Some(2));
    for i in group.instances() {
        assert_eq!(i.protected_from_scale_in(), Some(true), "{i:?}");
    }
    let call = drainer.calls()[0].clone();
    assert_eq!(call["group"], "in");
    assert!(
        call["availability_zone"]
            .as_str()
            .unwrap()
            .starts_with("us-east-1")
    );
}

#[tokio::test]
async fn a_drain_that_never_finishes_is_cut_short_at_its_timeout() {
    let moto = moto().await;
    moto.create_group("stuck", 3).await.unwrap();
    let drainer = DrainWebhook::start(StatusCode::ACCEPTED).await.unwrap();
    let url = drainer.url().to_owned();
    let asg = actuator(
        moto,
        AwsAsgTarget {
            drain_webhook: Some(config::DrainWebhook::at(url)),
            drain_timeout: Duration::from_secs(120),
            ..settings("stuck")
        },
    )
    .await;
    assert!(matches!(
        asg.scale(T0, 3, 2).await.unwrap(),
        Actuation::Started { .. }
    ));
    let observed = asg.observe(T0 + 119 * SECOND).await.unwrap();
    assert!(observed.in_flight.is_some());
    assert_eq!(moto.instance_ids("stuck").await.unwrap().len(), 3);

    let observed = asg.observe(T0 + 120 * SECOND).await.unwrap();
    assert!(observed.in_flight.is_none(), "{observed:?}");
    assert_eq!(observed.current, 2);
    let left = moto.instance_ids("stuck").await.unwrap();
    assert_eq!(left.len(), 2);
    let victim = drainer.instance_ids().into_iter().next().unwrap();
    assert!(!left.contains(&victim), "the drained victim went: {left:?}");
}

#[tokio::test]
async fn without_a_webhook_the_drain_delay_holds_the_termination() {
    let moto = moto().await;
    moto.create_group("delay", 3).await.unwrap();
    let asg = actuator(
        moto,
        AwsAsgTarget {
            drain_delay: Duration::from_secs(30),
            ..settings("delay")
        },
    )
    .await;
    assert!(matches!(
        asg.scale(T0, 3, 1).await.unwrap(),
        Actuation::Started { .. }
    ));
    let observed = asg.observe(T0 + 29 * SECOND).await.unwrap();
    let in_flight = observed.in_flight.expect("in flight during the delay");
    assert!(
        in_flight.detail.contains("drain delay"),
        "{}",
        in_flight.detail
    );
    assert_eq!(moto.instance_ids("delay").await.unwrap().len(), 3);
    let observed = asg.observe(T0 + 30 * SECOND).await.unwrap();
    assert!(observed.in_flight.is_none());
    assert_eq!(moto.instance_ids("delay").await.unwrap().len(), 1);
    assert_eq!(
        moto.group("delay").await.unwrap().desired_capacity(),
        Some(1)
    );
}

/// A paused (or dry-run) scaler observes without advancing: a drain under
/// way stays where it is, its victim in service, until the scaler acts again.
#[tokio::test]
async fn observing_only_leaves_a_drain_where_it_is() {
    let moto = moto().await;
    moto.create_group("held", 3).await.unwrap();
    let asg = actuator(
        moto,
        AwsAsgTarget {
            drain_delay: Duration::from_secs(30),
            ..settings("held")
        },
    )
    .await;
    asg.scale(T0, 3, 2).await.unwrap();
    let observed = asg.observe_only(T0 + 60 * SECOND).await.unwrap();
    assert!(observed.in_flight.is_some(), "still in flight");
    assert_eq!(moto.instance_ids("held").await.unwrap().len(), 3);
    let observed = asg.observe(T0 + 61 * SECOND).await.unwrap();
    assert!(observed.in_flight.is_none());
    assert_eq!(moto.instance_ids("held").await.unwrap().len(), 2);
}

/// A victim the drain webhook was asked about that is then given up (here:
/// the group's desired capacity changed while the scaler was paused) is
/// offered to the undrain webhook at the end of the tick, again at each
/// tick while it fails, and no more once it answers 2xx; a scale-in given
/// up without an undrain webhook calls nothing.
#[tokio::test]
async fn a_drained_victim_given_up_is_undrained() {
    let moto = moto().await;
    let drainer = DrainWebhook::start(StatusCode::OK).await.unwrap();
    let undrainer = DrainWebhook::start(StatusCode::SERVICE_UNAVAILABLE)
        .await
        .unwrap();
    // Drained at once, terminated only after drain_delay: given up between.
    let target = |group: &str, undrain: bool| AwsAsgTarget {
        drain_webhook: Some(config::DrainWebhook::at(drainer.url().to_owned())),
        undrain_webhook: undrain
            .then(|| config::DrainWebhook::at(undrainer.url().to_owned()).into()),
        drain_delay: Duration::from_secs(60),
        ..settings(group)
    };
    let give_up = |asg: AwsAsgActuator, group: &'static str| async move {
        moto.create_group(group, 3).await.unwrap();
        asg.scale(T0, 3, 2).await.unwrap();
        asg.observe_only(T0 + 10 * SECOND).await.unwrap();
        moto.client()
            .set_desired_capacity()
            .auto_scaling_group_name(group)
            .desired_capacity(4)
            .send()
            .await
            .unwrap();
        let observed = asg.observe(T0 + 20 * SECOND).await.unwrap();
        assert!(observed.in_flight.is_none(), "given up: {observed:?}");
        asg
    };

    let asg = give_up(actuator(moto, target("undrain", true)).await, "undrain").await;
    let victims = drainer.instance_ids();
    assert_eq!(victims.len(), 1, "{victims:?}");
    assert_eq!(
        undrainer.instance_ids(),
        victims,
        "asked in the giving-up tick"
    );
    assert_eq!(undrainer.calls()[0]["group"], "undrain");
    let running = moto.instance_ids("undrain").await.unwrap();
    assert!(
        victims.iter().all(|v| running.contains(v)),
        "it stays in service"
    );
    asg.observe(T0 + 30 * SECOND).await.unwrap();
    assert_eq!(undrainer.calls().len(), 2, "asked again while it fails");
    undrainer.answer(StatusCode::OK);
    asg.observe(T0 + 40 * SECOND).await.unwrap();
    asg.observe(T0 + 50 * SECOND).await.unwrap();
    assert_eq!(undrainer.calls().len(), 3, "done once it answers 200");

    undrainer.clear();
    drainer.clear();
    give_up(
        actuator(moto, target("no-undrain", false)).await,
        "no-undrain",
    )
    .await;
    assert_eq!(drainer.calls().len(), 1);
    assert!(undrainer.calls().is_empty(), "{:?}", undrainer.calls());
}

/// An undrain for a victim chosen again is dropped (the new drain is not
/// undone), and one the webhook keeps failing is given up after
/// UNDRAIN_PATIENCE. Here the victims are given up by a restart that comes
/// too late to carry their scale-in on.
#[tokio::test]
async fn an_undrain_never_undoes_a_new_drain_and_gives_up_in_time() {
    let moto = moto().await;
    let drainer = DrainWebhook::start(StatusCode::ACCEPTED).await.unwrap();
    let undrainer = DrainWebhook::start(StatusCode::SERVICE_UNAVAILABLE)
        .await
        .unwrap();
    moto.create_group("again", 3).await.unwrap();
    let target = AwsAsgTarget {
        drain_webhook: Some(config::DrainWebhook::at(drainer.url().to_owned())),
        undrain_webhook: Some(config::DrainWebhook::at(undrainer.url().to_owned()).into()),
        ..settings("again")
    };
    let first = actuator(moto, target.clone()).await;
    first.scale(T0, 3, 2).await.unwrap();
    let saved = first.saved_in_flight().await.unwrap();
    drop(first);
    let victims = drainer.instance_ids();
    assert_eq!(victims.len(), 1, "{victims:?}");
    // Past drain_timeout (5m) and the 5 minutes of retries.
    let late = T0 + 700 * SECOND;

    // Given up, then chosen again by the next scale-in (a stable order).
    let second = actuator(moto, target.clone()).await;
    second
        .restore_in_flight(late, saved.clone())
        .await
        .unwrap_err();
    drainer.clear();
    second.scale(late, 3, 2).await.unwrap();
    assert_eq!(drainer.instance_ids(), victims, "chosen again");
    second.observe(late + 10 * SECOND).await.unwrap();
    assert!(undrainer.calls().is_empty(), "{:?}", undrainer.calls());

    // Given up, never answered.
    let third = actuator(moto, target).await;
    third.restore_in_flight(late, saved).await.unwrap_err();
    let patience = UNDRAIN_PATIENCE.as_millis() as i64;
    third.observe(late).await.unwrap();
    assert_eq!(undrainer.instance_ids(), victims);
    third.observe(late + patience - SECOND).await.unwrap();
    assert_eq!(
        undrainer.calls().len(),
        2,
        "asked again within its patience"
    );
    third.observe(late + patience).await.unwrap();
    assert_eq!(undrainer.calls().len(), 3, "the last try");
    third.observe(late + patience + 10 * SECOND).await.unwrap();
    assert_eq!(undrainer.calls().len(), 3, "given up");
}

/// Undrains still pending are kept with the scale-in: a restart carries
/// them on (within their patience; later ones are named and dropped), a
/// reload of the same group hands them over, and one whose instance is no
/// longer in the group is dropped.
#[tokio::test]
async fn pending_undrains_survive_a_restart_and_a_reload() {
    let moto = moto().await;
    let drainer = DrainWebhook::start(StatusCode::OK).await.unwrap();
    let undrainer = DrainWebhook::start(StatusCode::SERVICE_UNAVAILABLE)
        .await
        .unwrap();
    moto.create_group("kept-undrain", 3).await.unwrap();
    let target = AwsAsgTarget {
        drain_webhook: Some(config::DrainWebhook::at(drainer.url().to_owned())),
        undrain_webhook: Some(config::DrainWebhook::at(undrainer.url().to_owned()).into()),
        // Drained at once, terminated only after the delay.
        drain_delay: Duration::from_secs(60),
        ..settings("kept-undrain")
    };
    // Given up by a restart too late to carry the scale-in on; the
    // undrain fails once.
    let first = actuator(moto, target.clone()).await;
    first.scale(T0, 3, 2).await.unwrap();
    let victims = drainer.instance_ids();
    let late = T0 + 700 * SECOND;
    let second = actuator(moto, target.clone()).await;
    second
        .restore_in_flight(late, first.saved_in_flight().await.unwrap())
        .await
        .unwrap_err();
    second.observe(late).await.unwrap();
    assert_eq!(undrainer.instance_ids(), victims);
    let saved = second.saved_in_flight().await.expect("the undrain is kept");
    assert!(saved.get("scale_in").is_none(), "{saved}");
    drop(second);

    // Restarted: asked again.
    let third = actuator(moto, target.clone()).await;
    let resumed = third
        .restore_in_flight(late + 60 * SECOND, saved.clone())
        .await
        .unwrap();
    assert!(resumed.contains("undrain 1 victim"), "{resumed}");
    third.observe(late + 70 * SECOND).await.unwrap();
    assert_eq!(undrainer.calls().len(), 2, "asked after the restart");

    // Reloaded with other settings: handed over, asked again.
    let reloaded = actuator(
        moto,
        AwsAsgTarget {
            drain_delay: Duration::from_secs(5),
            ..target.clone()
        },
    )
    .await;
    reloaded
        .resume_in_flight(third.take_in_flight().await.expect("handed over"))
        .await;
    assert_eq!(third.saved_in_flight().await, None, "given away");
    reloaded.observe(late + 80 * SECOND).await.unwrap();
    assert_eq!(undrainer.calls().len(), 3, "asked after the reload");
    // Its scaler removed: asked once more, and named when it still fails.
    let said = reloaded
        .abandon_in_flight(late + 90 * SECOND, "a reload removed its scaler")
        .await
        .expect("the undrain pending is said");
    assert_eq!(undrainer.calls().len(), 4, "asked when given up");
    assert!(said.contains("not undrained (undo by hand)"), "{said}");
    assert!(said.contains(victims.first().unwrap()), "{said}");

    // Restarted past its patience: not carried on, named.
    let fourth = actuator(moto, target.clone()).await;
    let patience = UNDRAIN_PATIENCE.as_millis() as i64;
    let why = fourth
        .restore_in_flight(late + patience, saved.clone())
        .await
        .unwrap_err();
    let victim = victims.first().unwrap();
    assert!(why.contains(victim), "{why}");
    fourth.observe(late + patience).await.unwrap();
    assert_eq!(undrainer.calls().len(), 4, "{why}");

    // The instance terminated meanwhile: nothing to undo.
    moto.client()
        .terminate_instance_in_auto_scaling_group()
        .instance_id(victim)
        .should_decrement_desired_capacity(true)
        .send()
        .await
        .unwrap();
    let fifth = actuator(moto, target).await;
    fifth
        .restore_in_flight(late + 60 * SECOND, saved)
        .await
        .unwrap();
    fifth.observe(late + 70 * SECOND).await.unwrap();
    assert_eq!(undrainer.calls().len(), 4, "not asked for a gone instance");
    assert_eq!(fifth.saved_in_flight().await, None, "dropped");
}

/// A scale-in is handed to the checkpoint (the journal, in the daemon)
/// before the drain webhook hears of a victim, so that a daemon killed in
/// the tick that chose the victims carries the drain on after its restart.
#[tokio::test]
async fn a_scale_in_is_saved_before_the_drain_webhook_is_asked() {
    let moto = moto().await;
    let drainer = DrainWebhook::start(StatusCode::ACCEPTED).await.unwrap();
    moto.create_group("checkpoint", 3).await.unwrap();
    let target = AwsAsgTarget {
        drain_webhook: Some(config::DrainWebhook::at(drainer.url().to_owned())),
        ..settings("checkpoint")
    };
    let asg = actuator(moto, target.clone()).await;
    let saved = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (into, webhook) = (saved.clone(), drainer.clone());
    asg.set_checkpoint(scalewise::actuators::Checkpoint::new(move |change| {
        // What the webhook had heard when the change was kept.
        into.lock().unwrap().push((change, webhook.calls().len()));
        Box::pin(async {})
    }));
    asg.scale(T0, 3, 2).await.unwrap();
    let victims = drainer.instance_ids();
    assert_eq!(victims.len(), 1, "{victims:?}");
    let saved = saved.lock().unwrap().clone();
    assert_eq!(saved.len(), 1, "{saved:?}");
    let (change, heard) = &saved[0];
    assert_eq!(*heard, 0, "kept before the webhook was asked");
    // What a restart would find: the same victim, carried on.
    let restarted = actuator(moto, target).await;
    let resumed = restarted
        .restore_in_flight(T0 + SECOND, change.clone())
        .await
        .unwrap();
    assert!(resumed.contains(victims.first().unwrap()), "{resumed}");
}

/// A scale-in this replica started before it lost the lead is given up at
/// the first read of the group in its next term: the victim the drain
/// webhook was asked about is undrained and stays in service.
#[tokio::test]
async fn a_scale_in_of_an_earlier_term_is_given_up_and_undrained() {
    let moto = moto().await;
    let drainer = DrainWebhook::start(StatusCode::ACCEPTED).await.unwrap();
    let undrainer = DrainWebhook::start(StatusCode::OK).await.unwrap();
    moto.create_group("old-term", 3).await.unwrap();
    let asg = actuator(
        moto,
        AwsAsgTarget {
            drain_webhook: Some(config::DrainWebhook::at(drainer.url().to_owned())),
            undrain_webhook: Some(config::DrainWebhook::at(undrainer.url().to_owned()).into()),
            ..settings("old-term")
        },
    )
    .await;
    asg.scale(T0, 3, 2).await.unwrap();
    let victims = drainer.instance_ids();
    assert_eq!(victims.len(), 1, "{victims:?}");
    asg.forget_in_flight().await;
    let observed = asg.observe(T0 + 10 * SECOND).await.unwrap();
    assert!(observed.in_flight.is_none(), "given up: {observed:?}");
    assert_eq!(observed.current, 3);
    assert_eq!(undrainer.instance_ids(), victims, "undrained");
    let group = moto.group("old-term").await.unwrap();
    let victim = group
        .instances()
        .iter()
        .find(|i| i.instance_id() == victims.first().map(String::as_str))
        .expect("it stays in the group");
    assert_eq!(victim.protected_from_scale_in(), Some(true));
    assert_eq!(drainer.calls().len(), 1, "not drained further");
}

/// The time a drain spends held (a paused or dry-run scaler) does not count
/// towards its timeout: a victim the webhook has not drained yet is not
/// terminated undrained the moment the scaler acts again.
#[tokio::test]
async fn a_held_drain_does_not_time_out_while_it_is_held() {
    let moto = moto().await;
    moto.create_group("frozen", 3).await.unwrap();
    let drainer = DrainWebhook::start(StatusCode::ACCEPTED).await.unwrap();
    let asg = actuator(
        moto,
        AwsAsgTarget {
            drain_webhook: Some(config::DrainWebhook::at(drainer.url().to_owned())),
            ..settings("frozen")
        },
    )
    .await;
    asg.scale(T0, 3, 2).await.unwrap();
    asg.observe_only(T0 + 10 * SECOND).await.unwrap();
    // Held for an hour, well past the 5-minute drain_timeout.
    let observed = asg.observe(T0 + 3_610 * SECOND).await.unwrap();
    assert!(observed.in_flight.is_some(), "{observed:?}");
    assert_eq!(moto.instance_ids("frozen").await.unwrap().len(), 3);
    assert_eq!(drainer.calls().len(), 2, "asked again, still draining");
    // Its own 5 minutes run out after it acts again.
    let observed = asg.observe(T0 + 3_910 * SECOND).await.unwrap();
    assert!(observed.in_flight.is_none(), "{observed:?}");
    assert_eq!(moto.instance_ids("frozen").await.unwrap().len(), 2);
}

/// The host's clock jumps an hour ahead mid-drain (a suspend, NTP setting
/// a wrong clock): the jump does not count towards drain_timeout, so the
/// victim is not terminated undrained; its own time still runs out.
#[tokio::test]
async fn a_clock_jump_does_not_cut_a_drain_short() {
    let moto = moto().await;
    moto.create_group("jumped", 3).await.unwrap();
    let drainer = DrainWebhook::start(StatusCode::ACCEPTED).await.unwrap();
    let asg = actuator(
        moto,
        AwsAsgTarget {
            drain_webhook: Some(config::DrainWebhook::at(drainer.url().to_owned())),
            ..settings("jumped")
        },
    )
    .await;
    asg.scale(T0, 3, 2).await.unwrap();
    asg.observe(T0 + 10 * SECOND).await.unwrap();
    asg.clock_jumped(3_600 * SECOND).await;
    let observed = asg.observe(T0 + 3_620 * SECOND).await.unwrap();
    assert!(observed.in_flight.is_some(), "{observed:?}");
    assert_eq!(moto.instance_ids("jumped").await.unwrap().len(), 3);
    // 5 minutes of its own (drain_timeout) after the start, jump aside.
    let observed = asg.observe(T0 + 3_900 * SECOND).await.unwrap();
    assert!(observed.in_flight.is_none(), "{observed:?}");
    assert_eq!(moto.instance_ids("jumped").await.unwrap().len(), 2);
}

/// A scale-in restored at a start while the clock was an hour behind (a
/// machine booted with a wrong clock), which NTP then sets right: its
/// times are the saving run's wall clock, so the jump is not taken off its
/// age, and its drain ends at drain_timeout of real time rather than an
/// hour later. A later jump (a suspend) is not counted, as for any drain.
#[tokio::test]
async fn a_restored_scale_in_keeps_its_age_when_the_clock_is_set_right() {
    let moto = moto().await;
    moto.create_group("restored-jump", 3).await.unwrap();
    let drainer = DrainWebhook::start(StatusCode::ACCEPTED).await.unwrap();
    let with_webhook = AwsAsgTarget {
        drain_webhook: Some(config::DrainWebhook::at(drainer.url().to_owned())),
        ..settings("restored-jump")
    };
    let first = actuator(moto, with_webhook.clone()).await;
    first.scale(T0, 3, 2).await.unwrap();
    let saved = first.saved_in_flight().await.unwrap();
    drop(first);
    let second = actuator(moto, with_webhook).await;
    let behind = T0 + 60 * SECOND - 3_600 * SECOND;
    second.restore_in_flight(behind, saved).await.unwrap();
    second.clock_jumped(3_600 * SECOND).await;
    let observed = second.observe(T0 + 120 * SECOND).await.unwrap();
    assert!(observed.in_flight.is_some(), "{observed:?}");
    second.clock_jumped(3_600 * SECOND).await;
    let observed = second.observe(T0 + 3_730 * SECOND).await.unwrap();
    assert!(
        observed.in_flight.is_some(),
        "the suspend not counted: {observed:?}"
    );
    let observed = second.observe(T0 + 3_910 * SECOND).await.unwrap();
    assert!(observed.in_flight.is_none(), "{observed:?}");
    assert_eq!(moto.instance_ids("restored-jump").await.unwrap().len(), 2);
}

/// A scale-in restored while the clock was already right: ten minutes on,
/// a jump (a suspend) is this run's, not the boot's clock set right, and
/// does not count towards the drain (it is not taken for a correction and
/// the scale-in given up as too old).
#[tokio::test]
async fn a_suspend_long_after_a_restore_does_not_count_towards_the_drain() {
    let moto = moto().await;
    moto.create_group("restored-suspend", 3).await.unwrap();
    let drainer = DrainWebhook::start(StatusCode::ACCEPTED).await.unwrap();
    let target = AwsAsgTarget {
        drain_webhook: Some(config::DrainWebhook::at(drainer.url().to_owned())),
        drain_timeout: Duration::from_secs(3_600),
        ..settings("restored-suspend")
    };
    let first = actuator(moto, target.clone()).await;
    first.scale(T0, 3, 2).await.unwrap();
    let saved = first.saved_in_flight().await.unwrap();
    drop(first);
    let second = actuator(moto, target).await;
    second
        .restore_in_flight(T0 + 60 * SECOND, saved)
        .await
        .unwrap();
    let observed = second.observe(T0 + 720 * SECOND).await.unwrap();
    assert!(observed.in_flight.is_some(), "{observed:?}");
    second.clock_jumped(3 * 3_600 * SECOND).await;
    let observed = second
        .observe(T0 + (730 + 3 * 3_600) * SECOND)
        .await
        .unwrap();
    assert!(
        observed.in_flight.is_some(),
        "the suspend not counted: {observed:?}"
    );
    assert_eq!(
        moto.instance_ids("restored-suspend").await.unwrap().len(),
        3
    );
}

/// Someone changes the desired capacity between the tick's read and its
/// change (a scheduled action, an operator): the change, decided on the
/// count before, is refused and nothing is terminated.
#[tokio::test]
async fn a_desired_capacity_changed_since_the_tick_read_it_is_not_acted_on() {
    let moto = moto().await;
    moto.create_group("moved", 4).await.unwrap();
    let asg = actuator(moto, settings("moved")).await;
    moto.client()
        .set_desired_capacity()
        .auto_scaling_group_name("moved")
        .desired_capacity(8)
        .send()
        .await
        .unwrap();
    let err = asg.scale(T0, 4, 5).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("changed since this tick read it (4 → 8)"),
        "{err}"
    );
    let group = moto.group("moved").await.unwrap();
    assert_eq!(group.desired_capacity(), Some(8));
    assert_eq!(group.instances().len(), 8);
}

/// Someone lowers the desired capacity under instances Scalewise protects
/// (a scheduled action, an operator): they keep running, and the scaler
/// works from them. From the lowered count a rise back towards them (to
/// `min`, or a threshold's step) would have looked like a scale-out, passed
/// the envelope as one, and been made by draining and terminating
/// instances.
#[tokio::test]
async fn a_desired_capacity_lowered_under_protected_instances_counts_what_runs() {
    let moto = moto().await;
    moto.create_group("lowered", 4).await.unwrap();
    let asg = actuator(moto, settings("lowered")).await;
    asg.scale(T0, 4, 5).await.unwrap();
    moto.client()
        .set_desired_capacity()
        .auto_scaling_group_name("lowered")
        .desired_capacity(2)
        .send()
        .await
        .unwrap();
    let group = moto.group("lowered").await.unwrap();
    assert_eq!(group.desired_capacity(), Some(2));
    assert_eq!(group.instances().len(), 5, "protected: none terminated");

    let seen = asg.observe(T0 + SECOND).await.unwrap();
    assert_eq!((seen.current, seen.ready), (5, 5));
    // A decision taken on the count before is refused as before.
    let err = asg.scale(T0 + SECOND, 2, 4).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("changed since this tick read it (2 → 5)"),
        "{err}"
    );
    // One taken from what runs goes the way it says: 5 → 4 removes one.
    asg.scale(T0 + SECOND, 5, 4).await.unwrap();
    let seen = asg.observe(T0 + 2 * SECOND).await.unwrap();
    assert_eq!(seen.current, 4);
    assert_eq!(moto.instance_ids("lowered").await.unwrap().len(), 4);
    let group = moto.group("lowered").await.unwrap();
    assert_eq!(group.desired_capacity(), Some(4));
}

/// The drain webhook is asked about every victim at once: a slow drainer
/// costs a tick its delay once, not once per victim.
#[tokio::test]
async fn the_victims_are_drained_at_once() {
    let moto = moto().await;
    moto.create_group("at-once", 5).await.unwrap();
    let drainer = DrainWebhook::start(StatusCode::ACCEPTED).await.unwrap();
    drainer.delay(300);
    let asg = actuator(
        moto,
        AwsAsgTarget {
            drain_webhook: Some(config::DrainWebhook::at(drainer.url().to_owned())),
            ..settings("at-once")
        },
    )
    .await;
    asg.scale(T0, 5, 2).await.unwrap();
    assert_eq!(drainer.instance_ids().len(), 3);
    assert_eq!(drainer.most_at_once(), 3);
}

/// A tick whose replica loses the lease while it runs (a drain webhook
/// can take seconds) takes no further step: victims drained but not yet
/// terminated stay, for the replica that leads now to decide on.
#[tokio::test]
async fn a_scale_in_takes_no_step_once_the_lease_is_lost() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let moto = moto().await;
    moto.create_group("lease-lost", 4).await.unwrap();
    let drainer = DrainWebhook::start(StatusCode::ACCEPTED).await.unwrap();
    let asg = actuator(
        moto,
        AwsAsgTarget {
            drain_webhook: Some(config::DrainWebhook::at(drainer.url().to_owned())),
            ..settings("lease-lost")
        },
    )
    .await;
    let all = moto.instance_ids("lease-lost").await.unwrap();
    let Actuation::Started { .. } = asg.scale(T0, 4, 2).await.unwrap() else {
        panic!("a drained scale-in takes several ticks")
    };
    assert_eq!(drainer.instance_ids().len(), 2);
    drainer.answer(StatusCode::OK);
    // Lost before the tick's first step: nothing more is asked.
    let seen = asg
        .observe_while(T0 + 15 * SECOND, &|| false)
        .await
        .unwrap();
    assert!(seen.in_flight.is_some());
    assert_eq!(drainer.calls().len(), 2);
    assert_eq!(moto.instance_ids("lease-lost").await.unwrap(), all);
    // Lost after two asks (the drains, all at once; the first victim's
    // termination): the second victim is left as it is.
    let asked = AtomicUsize::new(0);
    let leads = || asked.fetch_add(1, Ordering::SeqCst) < 2;
    let seen = asg.observe_while(T0 + 30 * SECOND, &leads).await.unwrap();
    assert!(seen.in_flight.is_some(), "{seen:?}");
    assert_eq!(moto.instance_ids("lease-lost").await.unwrap().len(), 3);
    // Leading again, the change finishes.
    let seen = asg.observe(T0 + 45 * SECOND).await.unwrap();
    assert!(seen.in_flight.is_none(), "{seen:?}");
    assert_eq!(moto.instance_ids("lease-lost").await.unwrap().len(), 2);
}

/// A scale-in below the group's MinSize is refused before anything is
/// drained (AWS would refuse the last termination, again every tick).
#[tokio::test]
async fn a_count_below_the_groups_min_size_is_refused_before_draining() {
    let moto = moto().await;
    moto.create_group("floor", 3).await.unwrap();
    moto.client()
        .update_auto_scaling_group()
        .auto_scaling_group_name("floor")
        .min_size(2)
        .send()
        .await
        .unwrap();
    let drainer = DrainWebhook::start(StatusCode::OK).await.unwrap();
    let asg = actuator(
        moto,
        AwsAsgTarget {
            drain_webhook: Some(config::DrainWebhook::at(drainer.url().to_owned())),
            ..settings("floor")
        },
    )
    .await;
    let err = asg.scale(T0, 3, 1).await.unwrap_err();
    assert!(
        err.to_string().starts_with("1 is below the MinSize (2)"),
        "{err}"
    );
    assert!(drainer.calls().is_empty(), "nothing drained");
    assert_eq!(moto.instance_ids("floor").await.unwrap().len(), 3);
    // Down to the floor works.
    asg.scale(T0, 3, 2).await.unwrap();
    assert_eq!(moto.instance_ids("floor").await.unwrap().len(), 2);
}

/// Without `protect_instances`, an instance something else protected from
/// scale-in (a busy worker, ECS's managed termination protection) is never
/// a victim.
#[tokio::test]
async fn without_protection_an_instance_protected_by_others_is_never_a_victim() {
    let moto = moto().await;
    moto.create_group("others", 3).await.unwrap();
    let ids = moto.instance_ids("others").await.unwrap();
    moto.client()
        .set_instance_protection()
        .auto_scaling_group_name("others")
        .instance_ids(&ids[1])
        .instance_ids(&ids[2])
        .protected_from_scale_in(true)
        .send()
        .await
        .unwrap();
    let asg = actuator(
        moto,
        AwsAsgTarget {
            protect_instances: false,
            ..settings("others")
        },
    )
    .await;
    asg.scale(T0, 3, 1).await.unwrap();
    assert_eq!(moto.instance_ids("others").await.unwrap(), ids[1..]);
    let err = asg.scale(T0, 2, 1).await.unwrap_err();
    for part in [
        "without scale-in protection",
        "including the protection it set itself while protect_instances was on",
    ] {
        assert!(err.to_string().contains(part), "{part:?}: {err}");
    }
}

#[tokio::test]
async fn without_a_drain_the_victims_are_terminated_at_once() {
    let moto = moto().await;
    moto.create_group("quick", 3).await.unwrap();
    let asg = actuator(moto, settings("quick")).await;
    let done = asg.scale(T0, 3, 2).await.unwrap();
    let Actuation::Done { detail } = done else {
        panic!("no drain: done at once: {done:?}")
    };
    assert!(detail.contains("terminated i-"), "{detail}");
    assert_eq!(moto.instance_ids("quick").await.unwrap().len(), 2);
    assert_eq!(
        moto.group("quick").await.unwrap().desired_capacity(),
        Some(2)
    );
}

#[tokio::test]
async fn a_restart_mid_drain_finds_the_group_unchanged() {
    let moto = moto().await;
    moto.create_group("restart", 3).await.unwrap();
    let drainer = DrainWebhook::start(StatusCode::ACCEPTED).await.unwrap();
    let url = drainer.url().to_owned();
    let with_webhook = AwsAsgTarget {
        drain_webhook: Some(config::DrainWebhook::at(url)),
        ..settings("restart")
    };
    let first = actuator(moto, with_webhook.clone()).await;
    first.scale(T0, 3, 2).await.unwrap();
    let victim = drainer.instance_ids().into_iter().next().unwrap();
    drop(first);

    // A new daemon: the victim is still in service and protected, and the
    // group still wants 3; nothing is in flight.
    let second = actuator(moto, with_webhook).await;
    let observed = second.observe(T0 + 60 * SECOND).await.unwrap();
    assert_eq!((observed.current, observed.ready), (3, 3));
    assert!(observed.in_flight.is_none());
    let group = moto.group("restart").await.unwrap();
    let instance = group
        .instances()
        .iter()
        .find(|i| i.instance_id() == Some(victim.as_str()))
        .expect("the victim is still in the group");
    assert_eq!(instance.protected_from_scale_in(), Some(true));
    // Deciding again picks the same victim.
    drainer.clear();
    second.scale(T0 + 60 * SECOND, 3, 2).await.unwrap();
    assert_eq!(
        drainer.instance_ids().into_iter().collect::<Vec<_>>(),
        [victim]
    );
}

/// What a restarted daemon does with the scale-in its journal kept: the
/// same victim is drained on and terminated, whatever is decided after the
/// restart; a scale-in saved for another group, or too old to carry on, is
/// not resumed and says why. The region is compared where the calls go:
/// saved by a target that left it to the default, the scale-in carries on
/// under one that names that region, not under one that names another.
#[tokio::test]
async fn a_saved_scale_in_is_carried_on_after_a_restart() {
    let moto = moto().await;
    moto.create_group("resume", 3).await.unwrap();
    let drainer = DrainWebhook::start(StatusCode::ACCEPTED).await.unwrap();
    let with_webhook = AwsAsgTarget {
        drain_webhook: Some(config::DrainWebhook::at(drainer.url().to_owned())),
        ..settings("resume")
    };
    let defaulted = AwsAsgTarget {
        region: None,
        ..with_webhook.clone()
    };
    let first = actuator(moto, defaulted.clone()).await;
    assert_eq!(first.saved_in_flight().await, None, "nothing in flight");
    first.scale(T0, 3, 2).await.unwrap();
    let victim = drainer.instance_ids().into_iter().next().unwrap();
    let saved = first.saved_in_flight().await.expect("a scale-in to keep");
    assert!(saved.to_string().contains(&victim), "{saved}");
    assert_eq!(saved["region"], scalewise_tests::moto::REGION, "{saved}");
    drop(first);

    // The default region written out, or still left out: the same group.
    for settings in [with_webhook.clone(), defaulted] {
        let restarted = actuator(moto, settings).await;
        restarted
            .restore_in_flight(T0 + 60 * SECOND, saved.clone())
            .await
            .unwrap();
    }
    let elsewhere = actuator(
        moto,
        AwsAsgTarget {
            region: Some("eu-west-1".into()),
            ..with_webhook.clone()
        },
    )
    .await;
    let why = elsewhere
        .restore_in_flight(T0 + 60 * SECOND, saved.clone())
        .await
        .unwrap_err();
    assert!(
        why.contains(&format!(
            "saved for Auto Scaling group \"resume\" in {}",
            scalewise_tests::moto::REGION
        )),
        "{why}"
    );

    // Not resumed: another group's, or one past drain_timeout (5m) and the
    // 5 minutes of termination retries.
    let other = actuator(moto, settings("resume-other")).await;
    let why = other
        .restore_in_flight(T0, saved.clone())
        .await
        .unwrap_err();
    assert!(
        why.contains("saved for Auto Scaling group \"resume\""),
        "{why}"
    );
    let late = actuator(moto, with_webhook.clone()).await;
    let why = late
        .restore_in_flight(T0 + 601 * SECOND, saved.clone())
        .await
        .unwrap_err();
    assert!(why.contains("10m 1s ago") && why.contains(&victim), "{why}");
    assert!(
        late.observe(T0 + 601 * SECOND)
            .await
            .unwrap()
            .in_flight
            .is_none()
    );

    // Resumed: the same victim, asked again, terminated once drained.
    let second = actuator(moto, with_webhook).await;
    let detail = second
        .restore_in_flight(T0 + 60 * SECOND, saved.clone())
        .await
        .unwrap();
    assert!(detail.contains(&victim), "{detail}");
    let why = second
        .restore_in_flight(T0 + 60 * SECOND, saved)
        .await
        .unwrap_err();
    assert!(why.contains("already in flight"), "{why}");
    drainer.clear();
    let observed = second.observe(T0 + 60 * SECOND).await.unwrap();
    assert!(observed.in_flight.is_some(), "still draining");
    assert_eq!(drainer.instance_ids(), BTreeSet::from([victim.clone()]));
    drainer.answer(StatusCode::OK);
    let observed = second.observe(T0 + 70 * SECOND).await.unwrap();
    assert!(observed.in_flight.is_none(), "{observed:?}");
    assert_eq!(observed.current, 2);
    assert!(!moto.instance_ids("resume").await.unwrap().contains(&victim));
    assert_eq!(second.saved_in_flight().await, None, "the change ended");

    // A group whose desired capacity someone changed while the daemon was
    // down: the saved scale-in is given up at the first look, its victim
    // left in service and not asked to drain again.
    moto.create_group("resume-changed", 3).await.unwrap();
    let changed = AwsAsgTarget {
        drain_webhook: Some(config::DrainWebhook::at(drainer.url().to_owned())),
        ..settings("resume-changed")
    };
    let first = actuator(moto, changed.clone()).await;
    drainer.clear();
    drainer.answer(StatusCode::ACCEPTED);
    first.scale(T0, 3, 2).await.unwrap();
    let victim = drainer.instance_ids().into_iter().next().unwrap();
    let saved = first.saved_in_flight().await.unwrap();
    drop(first);
    moto.client()
        .set_desired_capacity()
        .auto_scaling_group_name("resume-changed")
        .desired_capacity(4)
        .send()
        .await
        .unwrap();
    let again = actuator(moto, changed).await;
    again
        .restore_in_flight(T0 + 60 * SECOND, saved)
        .await
        .unwrap();
    drainer.clear();
    let observed = again.observe(T0 + 60 * SECOND).await.unwrap();
    assert!(observed.in_flight.is_none(), "given up: {observed:?}");
    assert_eq!(observed.current, 4);
    assert!(drainer.calls().is_empty(), "{:?}", drainer.calls());
    assert!(
        moto.instance_ids("resume-changed")
            .await
            .unwrap()
            .contains(&victim)
    );
    assert_eq!(again.saved_in_flight().await, None);
}

/// A termination whose answer was lost (sent, reported failed, done all
/// the same) lowers what the scale-in left when the victim is seen gone:
/// a later check of the group (after a pause) finds it as left and the
/// scale-in goes on, instead of being given up as changed meanwhile.
#[tokio::test]
async fn a_termination_whose_answer_was_lost_is_counted_when_it_is_seen() {
    let moto = moto().await;
    moto.create_group("lost", 4).await.unwrap();
    let drainer = DrainWebhook::start(StatusCode::ACCEPTED).await.unwrap();
    let target = AwsAsgTarget {
        drain_webhook: Some(config::DrainWebhook::at(drainer.url().to_owned())),
        ..settings("lost")
    };
    let first = actuator(moto, target.clone()).await;
    first.scale(T0, 4, 2).await.unwrap();
    let mut saved = first.saved_in_flight().await.unwrap();
    drop(first);
    // The first victim's termination sent, its answer lost.
    let victim = saved["scale_in"]["victims"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    saved["scale_in"]["victims"][0]["termination_sent"] = true.into();
    let asg = actuator(moto, target).await;
    asg.restore_in_flight(T0 + 10 * SECOND, saved)
        .await
        .unwrap();
    let observed = asg.observe(T0 + 10 * SECOND).await.unwrap();
    assert!(observed.in_flight.is_some(), "{observed:?}");
    // ... and done at AWS after all.
    moto.client()
        .terminate_instance_in_auto_scaling_group()
        .instance_id(&victim)
        .should_decrement_desired_capacity(true)
        .send()
        .await
        .unwrap();
    let observed = asg.observe(T0 + 20 * SECOND).await.unwrap();
    assert!(observed.in_flight.is_some(), "{observed:?}");
    assert_eq!(observed.current, 3);
    // Paused, then acting again: the group is checked against what the
    // scale-in left, the lost termination counted.
    asg.observe_only(T0 + 30 * SECOND).await.unwrap();
    let observed = asg.observe(T0 + 40 * SECOND).await.unwrap();
    assert!(
        observed
            .in_flight
            .as_ref()
            .is_some_and(|f| f.detail.contains("left the group")),
        "goes on: {observed:?}"
    );
}

/// A resumed scale-in allows for a termination it made but had not saved
/// when the daemon died (the group is one lower than saved: it goes on
/// with the other victim), and ends once past its drain timeout and
/// retries, counted from its start (a replica that followed for a long
/// time before it led again).
#[tokio::test]
async fn a_resumed_scale_in_allows_for_an_unsaved_termination_and_ends_past_its_lifetime() {
    let moto = moto().await;
    moto.create_group("unsaved", 4).await.unwrap();
    let drainer = DrainWebhook::start(StatusCode::ACCEPTED).await.unwrap();
    let with_webhook = AwsAsgTarget {
        drain_webhook: Some(config::DrainWebhook::at(drainer.url().to_owned())),
        ..settings("unsaved")
    };
    let first = actuator(moto, with_webhook.clone()).await;
    first.scale(T0, 4, 2).await.unwrap();
    let saved = first.saved_in_flight().await.unwrap();
    drop(first);
    let victims: Vec<String> = drainer.instance_ids().into_iter().collect();
    assert_eq!(victims.len(), 2);
    // The daemon terminated one victim, then died before saving.
    moto.client()
        .terminate_instance_in_auto_scaling_group()
        .instance_id(&victims[0])
        .should_decrement_desired_capacity(true)
        .send()
        .await
        .unwrap();
    let second = actuator(moto, with_webhook.clone()).await;
    second
        .restore_in_flight(T0 + 60 * SECOND, saved.clone())
        .await
        .unwrap();
    drainer.clear();
    let observed = second.observe(T0 + 60 * SECOND).await.unwrap();
    assert!(observed.in_flight.is_some(), "goes on: {observed:?}");
    assert_eq!(
        drainer.instance_ids().into_iter().collect::<Vec<_>>(),
        [victims[1].clone()]
    );
    // Held (a pause) and taken further again: the group is checked again,
    // against what the accepted termination left.
    second.observe_only(T0 + 70 * SECOND).await.unwrap();
    let observed = second.observe(T0 + 80 * SECOND).await.unwrap();
    assert!(observed.in_flight.is_some(), "still goes on: {observed:?}");

    // Restored while young, first looked at past drain_timeout (5m) and
    // the 5 minutes of retries: given up, its victim left in service.
    let third = actuator(moto, with_webhook).await;
    third
        .restore_in_flight(T0 + 60 * SECOND, saved)
        .await
        .unwrap();
    drainer.clear();
    let observed = third.observe(T0 + 700 * SECOND).await.unwrap();
    assert!(observed.in_flight.is_none(), "given up: {observed:?}");
    assert!(drainer.calls().is_empty(), "{:?}", drainer.calls());
    assert!(
        moto.instance_ids("unsaved")
            .await
            .unwrap()
            .contains(&victims[1])
    );
}

#[tokio::test]
async fn a_failing_webhook_is_asked_again_and_reported() {
    let moto = moto().await;
    moto.create_group("flaky", 2).await.unwrap();
    let drainer = DrainWebhook::start(StatusCode::INTERNAL_SERVER_ERROR)
        .await
        .unwrap();
    let url = drainer.url().to_owned();
    let asg = actuator(
        moto,
        AwsAsgTarget {
            drain_webhook: Some(config::DrainWebhook::at(url)),
            ..settings("flaky")
        },
    )
    .await;
    asg.scale(T0, 2, 1).await.unwrap();
    let observed = asg.observe(T0 + 15 * SECOND).await.unwrap();
    let detail = observed.in_flight.unwrap().detail;
    assert!(detail.contains("500"), "{detail}");
    assert_eq!(drainer.calls().len(), 2);
    drainer.answer(StatusCode::OK);
    let observed = asg.observe(T0 + 30 * SECOND).await.unwrap();
    assert!(observed.in_flight.is_none());
    assert_eq!(moto.instance_ids("flaky").await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_unknown_group_is_not_found_and_changes_nothing() {
    let moto = moto().await;
    let asg = actuator(moto, settings("no-such-group")).await;
    let err = asg.observe(T0).await.unwrap_err();
    assert!(matches!(err, ActuatorError::NotFound(_)), "{err:?}");
    assert!(err.to_string().contains("\"no-such-group\""), "{err}");
    let err = asg.scale(T0, 1, 2).await.unwrap_err();
    assert!(matches!(err, ActuatorError::NotFound(_)), "{err:?}");
}

#[tokio::test]
async fn an_unreachable_api_is_an_error_that_names_the_call() {
    let closed = scalewise_tests::stub_http::closed_port().unwrap();
    let client = client_for(&format!("http://{closed}"), 1);
    let asg = AwsAsgActuator::with_client(settings("web"), client).unwrap();
    let err = asg.observe(T0).await.unwrap_err();
    assert!(matches!(err, ActuatorError::Failed(_)), "{err:?}");
    assert!(
        err.to_string().starts_with("DescribeAutoScalingGroups: "),
        "{err}"
    );
}

/// A drain webhook behind HTTPS with a private CA's certificate and a
/// bearer token: without the token every victim's drain is refused (401)
/// and nothing is terminated; with `ca_file` and `bearer_token` the
/// victims drain and go.
#[tokio::test]
async fn a_drain_webhook_behind_https_and_a_token_is_called_with_its_credentials() {
    let moto = moto().await;
    moto.create_group("secured", 3).await.unwrap();
    let drainer = DrainWebhook::start_secured(StatusCode::OK).await.unwrap();
    let secured = drainer.secured().unwrap();
    let url = drainer.url().to_owned();
    assert!(url.starts_with("https://"), "{url}");
    let all = moto.instance_ids("secured").await.unwrap();

    let no_token = actuator(
        moto,
        AwsAsgTarget {
            drain_webhook: Some(config::DrainWebhook {
                ca_file: Some(secured.ca_file.clone()),
                ..config::DrainWebhook::at(&url)
            }),
            ..settings("secured")
        },
    )
    .await;
    let started = no_token.scale(T0, 3, 2).await.unwrap();
    assert!(matches!(started, Actuation::Started { .. }), "{started:?}");
    let observed = no_token.observe(T0 + 15 * SECOND).await.unwrap();
    let in_flight = observed.in_flight.expect("still draining");
    assert!(in_flight.detail.contains("401"), "{}", in_flight.detail);
    assert_eq!(moto.instance_ids("secured").await.unwrap(), all);
    assert!(drainer.calls().is_empty(), "refused before the handler");

    let with_token = actuator(
        moto,
        AwsAsgTarget {
            drain_webhook: Some(config::DrainWebhook {
                bearer_token: Some(config::Secret::File(secured.token_file.clone())),
                ca_file: Some(secured.ca_file.clone()),
                ..config::DrainWebhook::at(&url)
            }),
            ..settings("secured")
        },
    )
    .await;
    assert!(matches!(
        with_token.scale(T0, 3, 2).await.unwrap(),
        Actuation::Done { .. } | Actuation::Started { .. }
    ));
    let observed = with_token.observe(T0 + 15 * SECOND).await.unwrap();
    assert!(observed.in_flight.is_none(), "{observed:?}");
    assert_eq!(observed.current, 2);
    let victims = drainer.instance_ids();
    assert_eq!(victims.len(), 1, "{victims:?}");
    let left = moto.instance_ids("secured").await.unwrap();
    assert_eq!(left.len(), 2);
    assert!(!left.iter().any(|id| victims.contains(id)));
}
