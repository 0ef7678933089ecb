//! How `scalewise run` stops, through the binary: SIGTERM lets a tick in
//! progress finish (up to its grace period), and a second SIGTERM or
//! Ctrl-C stops at once, as an operator pressing Ctrl-C twice expects.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use scalewise_tests::daemon_process::queue_daemon_on_prometheus;
use scalewise_tests::stub_http::counted_silent_listener;
use scalewise_tests::wait_until;

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_at_once_while_the_first_waits_for_a_tick() {
    // A "Prometheus" that never answers holds a tick for the whole of the
    // source's timeout.
    let (addr, accepted) = counted_silent_listener().await.unwrap();
    let (_dir, mut daemon) = queue_daemon_on_prometheus(
        env!("CARGO_BIN_EXE_scalewise-cli"),
        &format!("http://{addr}"),
        "timeout = \"60s\"",
        "sum(queue)",
        "",
    )
    .unwrap();
    // A tick is reading the metric: it will wait 60 s for an answer.
    wait_until(
        "a tick reading the metric",
        Duration::from_secs(60),
        || async {
            match accepted.load(Ordering::SeqCst) {
                0 => Err(daemon.log()),
                _ => Ok(()),
            }
        },
    )
    .await
    .unwrap();

    // The first SIGTERM waits for that tick.
    daemon.signal("TERM").unwrap();
    let status = daemon.exited_within(Duration::from_secs(2)).unwrap();
    assert_eq!(
        status,
        None,
        "stopped without waiting for the tick:\n{}",
        daemon.log()
    );

    // The second stops at once, saying so.
    let second = Instant::now();
    daemon.signal("TERM").unwrap();
    let status = daemon
        .exited_within(Duration::from_secs(10))
        .unwrap()
        .unwrap_or_else(|| {
            panic!(
                "still running 10 s after a second SIGTERM:\n{}",
                daemon.log()
            )
        });
    assert_eq!(status.code(), Some(130), "{}", daemon.log());
    assert!(second.elapsed() < Duration::from_secs(10));
    assert!(
        daemon.log().contains("Stopping at once (a second signal)"),
        "{}",
        daemon.log()
    );
}
