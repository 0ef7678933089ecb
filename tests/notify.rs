//! `[[notifications]]`: webhooks told of each change of replicas and each
//! failure to make one, by the real daemon (stepped, simulated targets) to
//! recording HTTP servers on loopback: the JSON and Slack bodies, the
//! filters, the bearer token and custom headers, three attempts at an endpoint that fails, a
//! retry still delivered while `scalewise run` stops gracefully, a change still told after
//! the daemon was killed before telling it, and a backtest that tells nobody.

use std::path::Path;
use std::time::Duration;

use scalewise::actuators::Announcement;
use scalewise::config::{NotificationConfig, NotifyEvent, NotifyFormat};
use scalewise::notify::{Notifier, Webhooks};
use scalewise::simulator::ActuatorFault;
use scalewise_tests::e2e::{Harness, T0};
use scalewise_tests::stub_http::{Canned, RecordingServer};
use scalewise_tests::{artifacts, policy_dir, wait_until};

fn ok() -> Canned {
    Canned {
        status: 200,
        content_type: "text/plain",
        body: "ok".into(),
        headers: Vec::new(),
    }
}

/// The stepped daemon of [`config`] in `dir`, whose `api` service refuses
/// every change.
async fn failing_api(policies: &Path, dir: &Path, notifications: &str) -> Harness {
    let text = config(policies, &dir.join("journal.db"), notifications);
    let h = Harness::from_text(&text, &dir.join("notify.toml"), T0).await;
    h.daemon
        .simulation()
        .service("api")
        .unwrap()
        .lock()
        .set_actuator_fault(Some(ActuatorFault::ScaleFails));
    h
}

/// Two simulated services, `web` asked to go 2 → 4 and `api` 2 → 3, and
/// the given `[[notifications]]`.
fn config(policies: &Path, journal: &Path, notifications: &str) -> String {
    format!(
        r#"policy_dir = "{policies}"

[journal]
path = "{journal}"

[simulations.web]
capacity_per_replica = 10.0
initial_replicas = 2

[simulations.web.load]
base = 10.0

[simulations.api]
capacity_per_replica = 10.0
initial_replicas = 2

[simulations.api.load]
base = 10.0

[[scalers]]
name = "web"
interval = "15s"
min = 1
max = 10
target = {{ kind = "simulator", service = "web" }}
policies = [{{ module = "counter", params = {{ scale_to = 4 }} }}]

[[scalers]]
name = "api"
interval = "15s"
min = 1
max = 10
target = {{ kind = "simulator", service = "api" }}
policies = [{{ module = "counter", params = {{ scale_to = 3 }} }}]

{notifications}"#,
        policies = policies.display(),
        journal = journal.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_and_failures_are_told_to_the_webhooks_that_want_them() {
    let all = RecordingServer::start(ok()).await.unwrap();
    let chat = RecordingServer::start(ok()).await.unwrap();
    let failures = RecordingServer::start(ok()).await.unwrap();
    let broken = RecordingServer::start(Canned::text_error(503, "down"))
        .await
        .unwrap();
    let policies = policy_dir(&[("counter", artifacts::COUNTER)]);
    let dir = tempfile::tempdir().unwrap();
    let notifications = format!(
        r#"
[[notifications]]
url = "{all}/hook"
bearer_token = {{ file = "{token}" }}

[[notifications]]
url = "{chat}/slack"
format = "slack"
scalers = ["web"]
headers = {{ X-Team = "checkout", Authorization = {{ file = "{genie}" }} }}

[[notifications]]
url = "{failures}/failures"
events = ["failed"]

[[notifications]]
url = "{broken}/down"
scalers = ["web"]
"#,
        all = all.url(),
        chat = chat.url(),
        failures = failures.url(),
        broken = broken.url(),
        token = dir.path().join("token").display(),
        genie = dir.path().join("genie").display(),
    );
    std::fs::write(dir.path().join("token"), "h00k\n").unwrap();
    std::fs::write(dir.path().join("genie"), "GenieKey s3cret\n").unwrap();
    let mut h = failing_api(policies.path(), dir.path(), &notifications).await;
    let records = h.run_until(T0).await;
    assert_eq!(records.len(), 2);

    // Every change and failure, as JSON, with the token.
    let mut told = all.json_bodies(2).await;
    told.sort_by_key(|b| b["scaler"].as_str().unwrap().to_owned());
    let (api, web) = (&told[0], &told[1]);
    assert_eq!(web["event"], "scaled");
    assert_eq!(
        (web["from"].as_u64(), web["to"].as_u64()),
        (Some(2), Some(4))
    );
    assert_eq!(web["target"]["kind"], "simulator");
    assert_eq!(web["time"], "2023-11-14T22:13:20.000Z");
    assert!(
        web["reason"]
            .as_str()
            .unwrap()
            .starts_with("2 → 4 — counter: counter v1: evaluation 1"),
        "{web}"
    );
    let web_record = records.iter().find(|r| r.scaler == "web").unwrap();
    assert_eq!(web["record"].as_i64(), web_record.id);
    assert_eq!(api["event"], "failed");
    assert!(api["error"].as_str().unwrap().contains("api"), "{api}");
    for headers in all.requests() {
        assert_eq!(headers["authorization"], "Bearer h00k");
    }

    // Slack's shape, for web only, with its headers (one read from a file).
    let slack = chat.json_bodies(1).await;
    let headers = &chat.requests()[0];
    assert_eq!(headers["x-team"], "checkout");
    assert_eq!(headers["authorization"], "GenieKey s3cret");
    assert_eq!(headers["content-type"], "application/json");
    let line = slack[0]["text"].as_str().unwrap();
    assert!(
        line.starts_with("Scalewise: web (simulator web) 2 → 4: 2 → 4 — counter"),
        "{line}"
    );
    // Failures only: api's.
    let failed = failures.json_bodies(1).await;
    assert_eq!(failed[0]["scaler"], "api");

    // An endpoint that keeps failing is tried three times, then counted.
    wait_until("three attempts", Duration::from_secs(30), || async {
        match broken.requests().len() {
            3 => Ok(()),
            n => Err(format!("{n} attempts")),
        }
    })
    .await
    .unwrap();
    let metrics = wait_until("the failure counted", Duration::from_secs(10), || async {
        let metrics = h.daemon.telemetry().encode();
        if metrics.contains("scalewise_notifications_total{result=\"failed\"} 1") {
            Ok(metrics)
        } else {
            Err(metrics)
        }
    })
    .await
    .unwrap();
    assert!(
        metrics.contains("scalewise_notifications_total{result=\"sent\"}"),
        "{metrics}"
    );
    // Nothing more was told, and nothing arrived twice.
    assert_eq!(all.bodies().len(), 2);
    assert_eq!(chat.bodies().len(), 1);
    assert_eq!(failures.bodies().len(), 1);
    h.close().await;
}

/// `scalewise run` stopped (SIGTERM) right after a change whose first
/// delivery attempt failed: the retry, a second later, still goes out
/// before the process exits (the delivery task would die with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_delivers_the_notifications_still_waiting() {
    use scalewise_tests::daemon_process::DaemonProcess;

    let hook = RecordingServer::start_sequence(vec![Canned::text_error(503, "busy"), ok()])
        .await
        .unwrap();
    let policies = policy_dir(&[("counter", artifacts::COUNTER)]);
    let dir = tempfile::tempdir().unwrap();
    let notifications = format!(
        "[[notifications]]\nurl = \"{}/hook\"\nscalers = [\"web\"]\n\n[api]\nlisten = \"127.0.0.1:0\"\n",
        hook.url()
    );
    // Ticking every second, so the change comes at once.
    let config = config(
        policies.path(),
        &dir.path().join("journal.db"),
        &notifications,
    )
    .replace("interval = \"15s\"", "interval = \"1s\"");
    let daemon = DaemonProcess::start(
        env!("CARGO_BIN_EXE_scalewise-cli"),
        dir.path(),
        &config,
        |_| {},
    )
    .unwrap();
    wait_until("the first attempt", Duration::from_secs(60), || async {
        match hook.requests().len() {
            0 => Err("no request yet".to_owned()),
            _ => Ok(()),
        }
    })
    .await
    .unwrap();
    let log = daemon.log();
    daemon.stop().unwrap();
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 2, "the retry went out before the exit: {log}");
    let told: serde_json::Value = serde_json::from_str(&bodies[1]).unwrap();
    assert_eq!(
        (&told["event"], &told["from"], &told["to"]),
        (&"scaled".into(), &2.into(), &4.into()),
        "{told}"
    );
    let log = scalewise_tests::daemon_process::log_in(dir.path());
    assert!(!log.contains("undelivered"), "{log}");
}

/// A change a webhook wants is kept in the journal until it is told: the
/// daemon killed (SIGKILL, no drain) while the webhook hangs on the first
/// attempt tells it after the restart - to the webhook configured then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_owed_when_the_daemon_dies_is_sent_after_its_restart() {
    use scalewise_tests::daemon_process::DaemonProcess;

    let hanging = scalewise_tests::stub_http::silent_listener().await.unwrap();
    let hook = RecordingServer::start(ok()).await.unwrap();
    let policies = policy_dir(&[("counter", artifacts::COUNTER)]);
    let dir = tempfile::tempdir().unwrap();
    let config = |url: &str| {
        let notifications = format!(
            "[[notifications]]\nurl = \"{url}/hook\"\nscalers = [\"web\"]\ntimeout = \"30s\"\n"
        );
        config(
            policies.path(),
            &dir.path().join("journal.db"),
            &notifications,
        )
        .replace("interval = \"15s\"", "interval = \"1s\"")
    };
    let daemon = DaemonProcess::start(
        env!("CARGO_BIN_EXE_scalewise-cli"),
        dir.path(),
        &config(&format!("http://{hanging}")),
        |_| {},
    )
    .unwrap();
    // The change's outcome is in the journal, and with it what is owed.
    let record = wait_until(
        "web's change in the journal",
        Duration::from_secs(60),
        || async {
            let lines = daemon.journal_export("web").map_err(|e| e.to_string())?;
            lines
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|r| r["actuation"]["status"] == "done")
                .map(|r| r["id"].clone())
                .ok_or_else(|| "no change yet".to_owned())
        },
    )
    .await
    .unwrap();
    drop(daemon);
    assert!(hook.bodies().is_empty());
    let daemon = DaemonProcess::start(
        env!("CARGO_BIN_EXE_scalewise-cli"),
        dir.path(),
        &config(&hook.url()),
        |_| {},
    )
    .unwrap();
    let owed = wait_until("the owed change", Duration::from_secs(60), || async {
        hook.bodies()
            .iter()
            .filter_map(|b| serde_json::from_str::<serde_json::Value>(b).ok())
            .find(|b| b["record"] == record)
            .ok_or_else(|| format!("{} bodies, none for record {record}", hook.bodies().len()))
    })
    .await
    .unwrap();
    assert_eq!(
        (&owed["event"], &owed["scaler"], &owed["from"], &owed["to"]),
        (&"scaled".into(), &"web".into(), &2.into(), &4.into()),
        "{owed}"
    );
    let log = daemon.log();
    assert!(
        log.contains("Delivering the notifications owed from before the last stop"),
        "{log}"
    );
    daemon.stop().unwrap();
}

#[test]
fn a_notification_for_an_unknown_scaler_or_a_bad_url_is_refused_at_its_place() {
    let policies = policy_dir(&[("counter", artifacts::COUNTER)]);
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        policies.path(),
        &dir.path().join("journal.db"),
        "[[notifications]]\nurl = \"ftp://hooks\"\nscalers = [\"wbe\"]\n\
         [[notifications]]\nurl = \"hxxps://hooks.example/services/T0/B0/s3cr3t\"\n",
    );
    let err = scalewise::config::Config::parse(&text, Path::new("n.toml"))
        .unwrap_err()
        .to_string();
    for want in [
        "n.toml:37:7: notifications[0]: url \"ftp://hooks\" must start with http:// or https://",
        "n.toml:38:12: notifications[0].scalers[0]: no scaler is named \"wbe\"; scalers: web, api",
        // Without the path, where webhooks keep their secret.
        "notifications[1]: url \"hxxps://hooks.example/…\" must start with http:// or https://",
    ] {
        assert!(err.contains(want), "missing {want:?} in\n{err}");
    }
    assert!(!err.contains("s3cr3t"), "{err}");
}

/// A webhook at `url` told of every change and failure, a second per
/// attempt, no credentials.
fn webhook(url: String, format: NotifyFormat) -> NotificationConfig {
    NotificationConfig {
        url,
        events: vec![NotifyEvent::Scaled, NotifyEvent::Failed],
        scalers: Vec::new(),
        format,
        bearer_token: None,
        headers: Default::default(),
        timeout: Duration::from_secs(1),
        ca_file: None,
        client_cert: None,
        client_key: None,
    }
}

/// A change of `web` from 2 to `to` replicas, for `reason`.
fn change(to: u32, reason: &str) -> Announcement {
    Announcement {
        time_ms: T0,
        scaler: "web".into(),
        target_kind: "simulator".into(),
        target_name: "web".into(),
        from: 2,
        to,
        reason: reason.into(),
        error: None,
        record: None,
    }
}

/// Each webhook has its own queue: one that takes connections and never
/// answers (three attempts of a second each, per change) does not hold up
/// the one that answers, which gets every change at once. A Slack body's
/// markup characters are escaped.
#[tokio::test]
async fn a_dead_webhook_does_not_hold_up_the_others() {
    let hanging = scalewise_tests::stub_http::silent_listener().await.unwrap();
    let healthy = RecordingServer::start(ok()).await.unwrap();
    let webhooks = Webhooks::build(&[
        webhook(
            format!("http://{hanging}/services/T0/B0/SECRET"),
            NotifyFormat::Json,
        ),
        webhook(healthy.url(), NotifyFormat::Slack),
    ])
    .unwrap();
    let telemetry = std::sync::Arc::new(scalewise::telemetry::Telemetry::new());
    let notifier = Notifier::start(webhooks, telemetry, None);
    let started = std::time::Instant::now();
    for to in 3..6 {
        notifier.notify(change(to, "load <!channel> & more"), None);
    }
    let bodies = healthy.json_bodies(3).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the healthy webhook waited {:?}",
        started.elapsed()
    );
    let text = bodies[0]["text"].as_str().unwrap();
    assert!(text.contains("load &lt;!channel&gt; &amp; more"), "{text}");
}

/// A webhook that answers 429 with `Retry-After: 3` (a rate-limited chat
/// webhook) is tried again no sooner than it asks (the default wait is
/// 1 s), and the notification is delivered.
#[tokio::test]
async fn a_rate_limited_webhook_is_tried_again_when_it_asks() {
    let limited = RecordingServer::start_sequence(vec![
        Canned {
            status: 429,
            content_type: "text/plain",
            body: "rate limited".into(),
            headers: vec![("retry-after", "3".to_owned())],
        },
        ok(),
    ])
    .await
    .unwrap();
    let webhooks = Webhooks::build(&[webhook(
        format!("{}/hook", limited.url()),
        NotifyFormat::Json,
    )])
    .unwrap();
    let telemetry = std::sync::Arc::new(scalewise::telemetry::Telemetry::new());
    let notifier = Notifier::start(webhooks, telemetry, None);
    let started = std::time::Instant::now();
    notifier.notify(change(3, "load"), None);
    let bodies = limited.json_bodies(2).await;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "tried again after {:?}",
        started.elapsed()
    );
    assert_eq!(bodies[0], bodies[1], "the same notification, delivered");
}

/// An actuator that refuses at every tick is told once, not every 15 s:
/// the same failure again is not told until a change goes through (the
/// target's own Events work the same way).
#[tokio::test]
async fn the_same_failure_at_every_tick_is_told_once() {
    let failures = RecordingServer::start(ok()).await.unwrap();
    let policies = policy_dir(&[("counter", artifacts::COUNTER)]);
    let dir = tempfile::tempdir().unwrap();
    let notifications = format!(
        "[[notifications]]\nurl = \"{}/failures\"\nevents = [\"failed\"]\n",
        failures.url()
    );
    let mut h = failing_api(policies.path(), dir.path(), &notifications).await;
    let records = h.run_until(T0 + 45_000).await;
    let failed = records
        .iter()
        .filter(|r| r.scaler == "api" && r.is_scale())
        .count();
    assert_eq!(failed, 4, "api tried at every tick: {records:#?}");
    let told = failures.json_bodies(1).await;
    assert_eq!(told[0]["scaler"], "api");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(failures.bodies().len(), 1, "{:?}", failures.bodies());
}

/// A webhook behind mutual TLS (a server that asks for a client
/// certificate from its own CA) is reached with `client_cert` and
/// `client_key`; the same webhook without them is refused at the handshake
/// and the notification counts as failed.
#[tokio::test]
async fn a_webhook_behind_mutual_tls_is_reached_with_the_client_certificate() {
    use axum::routing::post;
    use scalewise::config::Secret;
    use scalewise_tests::https::{ClientCertificate, serve_requiring_client_cert};
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let app = axum::Router::new().route(
        "/hook",
        post({
            let received = received.clone();
            move |body: String| async move {
                received.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let client = ClientCertificate::mint("scalewise").unwrap();
    let server = serve_requiring_client_cert(app, &client.ca_pem)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = client.write_to(dir.path()).unwrap();
    let secured = |client_cert: Option<std::path::PathBuf>, key| NotificationConfig {
        bearer_token: Some(Secret::File(server.token_file.clone())),
        ca_file: Some(server.ca_file.clone()),
        client_cert,
        client_key: key,
        ..webhook(server.url("/hook"), NotifyFormat::Json)
    };
    let deliver = |config: NotificationConfig| async move {
        let telemetry = std::sync::Arc::new(scalewise::telemetry::Telemetry::new());
        let notifier =
            Notifier::start(Webhooks::build(&[config]).unwrap(), telemetry.clone(), None);
        notifier.notify(change(3, "load"), None);
        wait_until("an outcome", Duration::from_secs(30), || async {
            let metrics = telemetry.encode();
            for result in ["sent", "failed"] {
                if metrics.contains(&format!(
                    "scalewise_notifications_total{{result=\"{result}\"}} 1"
                )) {
                    return Ok(result);
                }
            }
            Err(metrics)
        })
        .await
        .unwrap()
    };
    assert_eq!(deliver(secured(Some(cert), Some(key))).await, "sent");
    assert_eq!(received.lock().unwrap().len(), 1);
    assert!(
        received.lock().unwrap()[0].contains("\"to\":3"),
        "{:?}",
        received.lock().unwrap()
    );
    assert_eq!(deliver(secured(None, None)).await, "failed");
    assert_eq!(
        received.lock().unwrap().len(),
        1,
        "refused at the handshake"
    );
}
