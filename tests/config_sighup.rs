//! SIGHUP reloads the config. In a binary of its own: the signal goes to the
//! whole test process, and every daemon in it would hear it.

use std::time::Duration;

use scalewise_tests::reload::{config_text, counter_daemon, wait_until_async};

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_config_when_the_file_is_not_watched() {
    // With [watch] off, only SIGHUP reloads (the policy folder is not
    // watched either).
    let text = config_text(4.0, 50, "native", "") + "\n";
    let text = text.replace("mode = \"native\"", "mode = \"native\"\nenabled = false");
    let hup = || {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };

    // A SIGHUP while the daemon starts (compiling, restoring: minutes at
    // 10,000 scalers) neither kills it (SIGHUP's default action) nor is
    // lost: the file is read again once it runs.
    let mut d = counter_daemon(&text)
        .while_starting(hup)
        .start()
        .await
        .unwrap();
    let telemetry = d.telemetry().clone();
    wait_until_async(
        Duration::from_secs(10),
        "the reload asked at start",
        move || {
            telemetry
                .encode()
                .contains("scalewise_config_reloads_total{result=\"unchanged\"} 1")
        },
    )
    .await;
    d.stop().await.unwrap();

    let mut d = counter_daemon(&text).start().await.unwrap();
    // Ticking means run() is past installing the SIGHUP handler.
    d.next_decision(Duration::from_secs(5), |_| true)
        .await
        .unwrap();
    std::fs::write(d.config_path(), text.replace("max = 10", "max = 7")).unwrap();
    // Unwatched: nothing happens by itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(d.get("/v1/scalers/web").await.unwrap()["max"], 10);

    hup();
    let telemetry = d.telemetry().clone();
    wait_until_async(Duration::from_secs(10), "the reload", move || {
        telemetry
            .encode()
            .contains("scalewise_config_reloads_total{result=\"applied\"} 1")
    })
    .await;
    // The scaler takes the new config between ticks, on its own task.
    scalewise_tests::wait_until("the API to show max 7", Duration::from_secs(5), || async {
        let max = d.get("/v1/scalers/web").await.unwrap()["max"].clone();
        if max == 7 {
            Ok(())
        } else {
            Err(format!("max {max}"))
        }
    })
    .await
    .unwrap();
    let record = d
        .next_decision(Duration::from_secs(5), |r| r.target.max == 7)
        .await
        .unwrap();
    assert_eq!(record.scaler, "web");

    // A second SIGHUP with the file unchanged applies nothing.
    hup();
    let telemetry = d.telemetry().clone();
    wait_until_async(Duration::from_secs(10), "the no-op reload", move || {
        telemetry
            .encode()
            .contains("scalewise_config_reloads_total{result=\"unchanged\"} 1")
    })
    .await;
    assert_eq!(d.get("/v1/config").await.unwrap()["reloads"], 1);
    d.stop().await.unwrap();
}
