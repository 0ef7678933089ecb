//! `scalewise run` scaling a real Auto Scaling API (the moto server), end
//! to end through the binary: credentials and region come from the
//! environment as in production, the decision comes from a real policy
//! module, scale-in waits for the drain webhook, and dry-run changes
//! nothing (not even instance protection).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use axum::http::StatusCode;
use scalewise_tests::daemon_process::{DaemonProcess, journal_export, log_in};
use scalewise_tests::moto::{DrainWebhook, MotoServer, REGION};
use scalewise_tests::{artifacts, wait_until};

/// The config of one scaler of the group `group`, asking the counter
/// fixture for `scale_to` replicas every second.
fn config(moto: &MotoServer, group: &str, scale_to: u32, mode: &str, webhook: &str) -> String {
    format!(
        r#"policy_dir = "policies"

[api]
listen = "127.0.0.1:0"

[journal]
path = "journal.db"

[[scalers]]
name = "{group}"
interval = "1s"
min = 1
max = 8
mode = "{mode}"

[scalers.target]
kind = "aws-asg"
group = "{group}"
endpoint = "{endpoint}"
drain_webhook = "{webhook}"
drain_timeout = "10m"

[[scalers.policies]]
module = "counter"
params = {{ scale_to = {scale_to} }}

[scalers.behavior.scale_down]
stabilization_window = "0s"
"#,
        endpoint = moto.url(),
    )
}

/// `scalewise run` in `dir`, with AWS settings in its environment as in
/// production.
fn start(dir: &Path, config: &str) -> DaemonProcess {
    DaemonProcess::start(env!("CARGO_BIN_EXE_scalewise-cli"), dir, config, |c| {
        c.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", REGION)
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL");
    })
    .unwrap()
}

/// A moto server with the group `group` of `desired` instances, a drain
/// webhook answering 202 (still draining), and a daemon folder with the
/// counter policy.
async fn setup(group: &str, desired: i32) -> (MotoServer, DrainWebhook, tempfile::TempDir) {
    let moto = MotoServer::start().await.unwrap();
    moto.create_group(group, desired).await.unwrap();
    let drainer = DrainWebhook::start(StatusCode::ACCEPTED).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::copy(artifacts::COUNTER, dir.path().join("policies/counter.wasm")).unwrap();
    (moto, drainer, dir)
}

/// Waits until the daemon's API shows `scaler` draining victims.
async fn api_shows_a_drain(daemon: &DaemonProcess, scaler: &str) {
    let api = wait_until("the API address", Duration::from_secs(60), || async {
        daemon.api_addr().ok_or_else(|| daemon.log())
    })
    .await
    .unwrap();
    let url = format!("http://{api}/v1/scalers/{scaler}");
    wait_until(
        "the API to show the drain",
        Duration::from_secs(60),
        || async {
            let status: serde_json::Value = reqwest::get(&url)
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            match status["in_flight"].as_str() {
                Some(f) if f.contains("draining i-") => Ok(()),
                _ => Err(format!("{status}\n{}", daemon.log())),
            }
        },
    )
    .await
    .unwrap();
}

/// Waits until none of `victims` is left in `group`.
async fn victims_terminated(
    moto: &MotoServer,
    group: &str,
    victims: &BTreeSet<String>,
    log: impl Fn() -> String,
) {
    wait_until(
        "the victims terminated",
        Duration::from_secs(60),
        || async {
            let ids: BTreeSet<String> = moto
                .instance_ids(group)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .collect();
            if ids.is_disjoint(victims) {
                Ok(())
            } else {
                Err(format!("{ids:?}\n{}", log()))
            }
        },
    )
    .await
    .unwrap();
}

async fn desired_and_count(moto: &MotoServer, group: &str) -> (i32, usize) {
    let g = moto.group(group).await.unwrap();
    (g.desired_capacity().unwrap_or(-1), g.instances().len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_scales_a_group_out_then_in_through_a_drain_and_dry_run_changes_nothing() {
    let (moto, drainer, dir) = setup("web", 2).await;
    let webhook = drainer.url().to_owned();

    let log = || log_in(dir.path());

    // Dry-run: decisions are journaled, the group is left alone.
    let daemon = start(dir.path(), &config(&moto, "web", 5, "dry-run", &webhook));
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
    let group = moto.group("web").await.unwrap();
    assert_eq!(group.desired_capacity(), Some(2), "{}", log());
    assert!(
        group
            .instances()
            .iter()
            .all(|i| i.protected_from_scale_in() != Some(true)),
        "dry-run protected instances: {group:?}"
    );

    // Enforce: out to 5.
    let daemon = start(dir.path(), &config(&moto, "web", 5, "enforce", &webhook));
    wait_until("the group at 5", Duration::from_secs(60), || async {
        match desired_and_count(&moto, "web").await {
            (5, 5) => Ok(()),
            other => Err(format!("{other:?}\n{}", log())),
        }
    })
    .await
    .unwrap();
    daemon.stop().unwrap();
    let before: BTreeSet<String> = moto
        .instance_ids("web")
        .await
        .unwrap()
        .into_iter()
        .collect();

    // In to 3: two victims drain (202), nothing is terminated until the
    // webhook says they are drained.
    let daemon = start(dir.path(), &config(&moto, "web", 3, "enforce", &webhook));
    wait_until(
        "two victims asked to drain",
        Duration::from_secs(60),
        || async {
            let asked: BTreeSet<String> = drainer.instance_ids();
            if asked.len() == 2 {
                Ok(())
            } else {
                Err(format!("{asked:?}\n{}", log()))
            }
        },
    )
    .await
    .unwrap();
    // The API shows the change in flight.
    api_shows_a_drain(&daemon, "web").await;
    // The webhook is asked again at later ticks; meanwhile the group is
    // untouched.
    wait_until(
        "the webhook asked again",
        Duration::from_secs(30),
        || async {
            match drainer.calls().len() {
                n if n >= 4 => Ok(()),
                n => Err(format!("{n} calls")),
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(desired_and_count(&moto, "web").await, (5, 5), "{}", log());
    let victims: BTreeSet<String> = drainer.instance_ids();
    assert_eq!(victims.len(), 2, "the same two victims: {victims:?}");

    drainer.answer(StatusCode::OK);
    wait_until("the group at 3", Duration::from_secs(60), || async {
        match desired_and_count(&moto, "web").await {
            (3, 3) => Ok(()),
            other => Err(format!("{other:?}\n{}", log())),
        }
    })
    .await
    .unwrap();
    daemon.stop().unwrap();
    let after: BTreeSet<String> = moto
        .instance_ids("web")
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(
        after,
        before
            .difference(&victims)
            .cloned()
            .collect::<BTreeSet<_>>(),
        "exactly the drained victims were terminated"
    );
    assert!(
        moto.group("web")
            .await
            .unwrap()
            .instances()
            .iter()
            .all(|i| i.protected_from_scale_in() == Some(true))
    );

    // The journal tells the story.
    let journal = journal_export(
        Path::new(env!("CARGO_BIN_EXE_scalewise-cli")),
        dir.path(),
        "web",
    )
    .unwrap();
    assert!(journal.contains("draining i-"), "{journal}");
    assert!(log().contains("Terminated a scale-in victim."), "{}", log());
}

/// A daemon killed (SIGKILL) while two victims drain carries the scale-in
/// on after its restart, from the journal: the same two victims are asked
/// again and terminated once drained, though the policy now asks for as
/// many instances as run. Without it they would stay in service, drained
/// out of their load balancer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_in_cut_short_by_a_crash_is_carried_on_after_the_restart() {
    crash_mid_drain_then_restart(None).await;
}

/// The same with leader election (a Lease in the fake Kubernetes API): the
/// restarted replica's first term carries the change on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_leader_election_the_first_term_after_a_crash_carries_the_scale_in_on() {
    let kube = scalewise_tests::fake_kube::FakeKube::start().await.unwrap();
    crash_mid_drain_then_restart(Some(&kube)).await;
}

async fn crash_mid_drain_then_restart(kube: Option<&scalewise_tests::fake_kube::FakeKube>) {
    let (moto, drainer, dir) = setup("crash", 5).await;
    let webhook = drainer.url().to_owned();
    let log = || log_in(dir.path());
    let election = "\n[leader_election]\nlease = \"scalewise\"\nnamespace = \"ops\"\n\
                    identity = \"a\"\nlease_duration = \"2s\"\nrenew_deadline = \"1500ms\"\n\
                    retry_period = \"200ms\"\n";
    let config = |scale_to| {
        let text = config(&moto, "crash", scale_to, "enforce", &webhook);
        match kube {
            // Top-level tables go before the first [[scalers]].
            Some(_) => text.replacen("\n[[scalers]]", &format!("{election}\n[[scalers]]"), 1),
            None => text,
        }
    };
    let start = |config: &str| match kube {
        Some(kube) => {
            let kubeconfig = dir.path().join("kubeconfig");
            kube.kubeconfig(&kubeconfig, "ops").unwrap();
            DaemonProcess::start(
                env!("CARGO_BIN_EXE_scalewise-cli"),
                dir.path(),
                config,
                |c| {
                    c.env("AWS_ACCESS_KEY_ID", "testing")
                        .env("AWS_SECRET_ACCESS_KEY", "testing")
                        .env("AWS_REGION", REGION)
                        .env_remove("AWS_PROFILE")
                        .env_remove("AWS_ENDPOINT_URL")
                        .env("KUBECONFIG", &kubeconfig)
                        .env_remove("KUBERNETES_SERVICE_HOST")
                        .env_remove("KUBERNETES_SERVICE_PORT");
                },
            )
            .unwrap()
        }
        None => start(dir.path(), config),
    };

    let daemon = start(&config(3));
    // Once the API shows the drain, the tick that started it has kept it
    // in the journal.
    api_shows_a_drain(&daemon, "crash").await;
    let victims = drainer.instance_ids();
    assert_eq!(victims.len(), 2, "{victims:?}");
    drop(daemon); // SIGKILL
    assert_eq!(desired_and_count(&moto, "crash").await, (5, 5));

    // Restarted with a policy that now holds at 5.
    drainer.clear();
    let daemon = start(&config(5));
    wait_until(
        "the victims asked again",
        Duration::from_secs(60),
        || async {
            match drainer.instance_ids() {
                asked if asked == victims => Ok(()),
                asked => Err(format!("{asked:?}\n{}", log())),
            }
        },
    )
    .await
    .unwrap();
    assert!(
        log().contains("Carrying on with the change that was in flight when the daemon stopped."),
        "{}",
        log()
    );
    assert_eq!(
        desired_and_count(&moto, "crash").await,
        (5, 5),
        "nothing terminated undrained"
    );
    drainer.answer(StatusCode::OK);
    victims_terminated(&moto, "crash", &victims, log).await;
    daemon.stop().unwrap();
}

/// A scaler renamed while the daemon was down, mid-drain: nothing carries
/// the drain on or undoes it, and the start says so, naming the old
/// scaler and its victims, rather than leaving them drained in silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaler_renamed_while_down_mid_drain_is_warned_of_at_start() {
    let (moto, drainer, dir) = setup("renamed", 5).await;
    let webhook = drainer.url().to_owned();
    let daemon = start(
        dir.path(),
        &config(&moto, "renamed", 3, "enforce", &webhook),
    );
    api_shows_a_drain(&daemon, "renamed").await;
    let victims = drainer.instance_ids();
    assert_eq!(victims.len(), 2, "{victims:?}");
    drop(daemon); // SIGKILL

    let text = config(&moto, "renamed", 5, "enforce", &webhook)
        .replace("name = \"renamed\"", "name = \"renamed-workers\"");
    let daemon = start(dir.path(), &text);
    let log = || log_in(dir.path());
    wait_until("the warning", Duration::from_secs(60), || async {
        let log = log();
        if log.contains("for a scaler this config does not have") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await
    .unwrap();
    let warning = log()
        .lines()
        .find(|l| l.contains("for a scaler this config does not have"))
        .unwrap()
        .to_owned();
    assert!(warning.contains("scaler=renamed "), "{warning}");
    for victim in &victims {
        assert!(warning.contains(victim.as_str()), "{victim}: {warning}");
    }
    daemon.stop().unwrap();
    // Said once: the change is not kept for the next start to say again.
    let daemon = start(dir.path(), &text);
    wait_until("the API", Duration::from_secs(60), || async {
        daemon.api_addr().map(drop).ok_or_else(log)
    })
    .await
    .unwrap();
    assert!(
        !log().contains("for a scaler this config does not have"),
        "{}",
        log()
    );
    daemon.stop().unwrap();
}

/// A scale-in that ends in the tick that starts it (the drain webhook
/// answers "drained" at once) leaves nothing in flight in the journal: a
/// restart carries nothing on. (The checkpoint that keeps a drain before
/// its webhook is asked wrote the scale-in to the journal, and the tick's
/// end, seeing nothing in flight, left the row there: the restart logged
/// that it carried on a change long done.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_in_finished_in_its_tick_is_not_carried_on_after_a_restart() {
    let (moto, drainer, dir) = setup("quick", 4).await;
    drainer.answer(StatusCode::OK);
    let webhook = drainer.url().to_owned();
    let log = || log_in(dir.path());
    let ticks = |daemon: &DaemonProcess| daemon.journal_export("quick").unwrap().lines().count();

    let daemon = start(dir.path(), &config(&moto, "quick", 3, "enforce", &webhook));
    wait_until("the group at 3", Duration::from_secs(60), || async {
        match desired_and_count(&moto, "quick").await {
            (3, 3) => Ok(()),
            other => Err(format!("{other:?}\n{}", log())),
        }
    })
    .await
    .unwrap();
    assert_eq!(drainer.instance_ids().len(), 1, "{}", log());
    // Two ticks after the one that scaled in: that tick has ended.
    let scaled = ticks(&daemon);
    wait_until("two more ticks", Duration::from_secs(60), || async {
        match ticks(&daemon) {
            n if n >= scaled + 2 => Ok(()),
            n => Err(format!("{n} ticks\n{}", log())),
        }
    })
    .await
    .unwrap();
    drop(daemon); // SIGKILL

    let daemon = start(dir.path(), &config(&moto, "quick", 3, "enforce", &webhook));
    let before = ticks(&daemon);
    wait_until(
        "a tick after the restart",
        Duration::from_secs(60),
        || async {
            match ticks(&daemon) {
                n if n > before => Ok(()),
                n => Err(format!("{n} ticks\n{}", log())),
            }
        },
    )
    .await
    .unwrap();
    assert!(
        !log().contains("in flight when the daemon stopped"),
        "a finished scale-in carried on:\n{}",
        log()
    );
    assert_eq!(desired_and_count(&moto, "quick").await, (3, 3));
    daemon.stop().unwrap();
}

/// A reload that writes out the region the group was left to (the SDK's
/// default, from AWS_REGION) is the same group: the drain in flight is
/// handed over to the new settings and ends in the victims' termination,
/// though the reloaded policy now holds. (Counted as another group, the
/// drain was dropped and the victims stayed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_names_the_default_region_carries_the_drain_on() {
    let (moto, drainer, dir) = setup("named", 5).await;
    let webhook = drainer.url().to_owned();
    let log = || log_in(dir.path());
    let daemon = start(dir.path(), &config(&moto, "named", 3, "enforce", &webhook));
    api_shows_a_drain(&daemon, "named").await;
    let victims = drainer.instance_ids();
    assert_eq!(victims.len(), 2, "{victims:?}");

    let named = config(&moto, "named", 5, "enforce", &webhook).replace(
        "group = \"named\"\n",
        &format!("group = \"named\"\nregion = \"{REGION}\"\n"),
    );
    assert!(named.contains("region = "), "{named}");
    std::fs::write(dir.path().join("scalewise.toml"), named).unwrap();
    daemon.signal("HUP").unwrap();
    wait_until("the drain handed over", Duration::from_secs(60), || async {
        match log() {
            l if l.contains("The reloaded target settings carry on with the change in flight.") => {
                Ok(())
            }
            l => Err(l),
        }
    })
    .await
    .unwrap();
    drainer.answer(StatusCode::OK);
    victims_terminated(&moto, "named", &victims, log).await;
    daemon.stop().unwrap();
}

/// A reload that removes the scaler in the middle of a drain gives the
/// scale-in up at once, as nothing would carry it on: its victims stay in
/// the group, protected, and the undrain webhook is asked to put them back
/// into service. (Before, the drain was dropped without a word, its
/// victims left drained.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaler_removed_mid_drain_gives_its_scale_in_up() {
    scaler_gone_mid_drain("removed", "the-removed").await;
}

/// The same when a reload moves the scaler to another group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaler_moved_to_another_group_mid_drain_gives_its_scale_in_up() {
    scaler_gone_mid_drain("moved", "moved").await;
}

/// Drains two victims of `group` under the scaler `group`, then reloads a
/// config whose one scaler, `then_named`, scales the group `other`.
async fn scaler_gone_mid_drain(group: &str, then_named: &str) {
    let (moto, drainer, dir) = setup(group, 5).await;
    moto.create_group("other", 2).await.unwrap();
    let undrainer = DrainWebhook::start(StatusCode::OK).await.unwrap();
    let log = || log_in(dir.path());
    let with_undrain = |text: String| {
        text.replace(
            "drain_timeout",
            &format!("undrain_webhook = \"{}\"\ndrain_timeout", undrainer.url()),
        )
    };
    let daemon = start(
        dir.path(),
        &with_undrain(config(&moto, group, 3, "enforce", drainer.url())),
    );
    api_shows_a_drain(&daemon, group).await;
    let victims = drainer.instance_ids();
    assert_eq!(victims.len(), 2, "{victims:?}");

    let other = config(&moto, "other", 2, "enforce", drainer.url())
        .replace("name = \"other\"", &format!("name = \"{then_named}\""));
    std::fs::write(dir.path().join("scalewise.toml"), with_undrain(other)).unwrap();
    daemon.signal("HUP").unwrap();
    wait_until("the drain given up", Duration::from_secs(60), || async {
        match log() {
            l if l.contains("A change was in flight when a reload") => Ok(()),
            l => Err(l),
        }
    })
    .await
    .unwrap();
    assert_eq!(undrainer.instance_ids(), victims, "{}", log());
    let group = moto.group(group).await.unwrap();
    for victim in &victims {
        let instance = group
            .instances()
            .iter()
            .find(|i| i.instance_id() == Some(victim.as_str()))
            .unwrap_or_else(|| panic!("{victim} stays in the group\n{}", log()));
        assert_eq!(instance.protected_from_scale_in(), Some(true), "{victim}");
    }
    daemon.stop().unwrap();
}

/// Three groups of one region and endpoint through one AWS client: the
/// profile's `credential_process` (as an SSO or Vault helper is set up)
/// runs once for the process, not once per group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_of_one_region_share_one_client() {
    use std::os::unix::fs::PermissionsExt;
    let (moto, drainer, dir) = setup("web", 2).await;
    let groups = ["web", "api", "jobs"];
    for group in &groups[1..] {
        moto.create_group(group, 2).await.unwrap();
    }
    let (helper, runs) = (dir.path().join("credentials.sh"), dir.path().join("runs"));
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\necho run >> '{}'\n\
             echo '{{\"Version\": 1, \"AccessKeyId\": \"testing\", \"SecretAccessKey\": \"testing\"}}'\n",
            runs.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let profile = dir.path().join("aws-config");
    std::fs::write(
        &profile,
        format!("[default]\ncredential_process = {}\n", helper.display()),
    )
    .unwrap();
    let config: String = groups
        .iter()
        .map(|g| config(&moto, g, 3, "enforce", drainer.url()))
        .enumerate()
        // One file: the settings once, then each group's scaler.
        .map(|(i, c)| match i {
            0 => c,
            _ => c[c.find("[[scalers]]").unwrap()..].to_owned(),
        })
        .collect();
    let daemon = DaemonProcess::start(
        env!("CARGO_BIN_EXE_scalewise-cli"),
        dir.path(),
        &config,
        |c| {
            c.env("AWS_CONFIG_FILE", &profile)
                .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
                .env("AWS_REGION", REGION)
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .env_remove("AWS_ACCESS_KEY_ID")
                .env_remove("AWS_SECRET_ACCESS_KEY")
                .env_remove("AWS_SESSION_TOKEN")
                .env_remove("AWS_PROFILE")
                .env_remove("AWS_ENDPOINT_URL");
        },
    )
    .unwrap();
    wait_until("every group at 3", Duration::from_secs(90), || async {
        let mut desired = Vec::new();
        for group in groups {
            desired.push(desired_and_count(&moto, group).await.0);
        }
        match desired == [3, 3, 3] {
            true => Ok(()),
            false => Err(format!("{desired:?}\n{}", daemon.log())),
        }
    })
    .await
    .unwrap();
    daemon.stop().unwrap();
    let runs = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(
        runs.lines().count(),
        1,
        "helper runs:\n{runs}\n{}",
        log_in(dir.path())
    );
}
