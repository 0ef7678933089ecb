//! A real AWS Auto Scaling API for tests: the moto server (PyPI
//! `moto[server]`, installed by scripts/install-test-deps), on loopback.
//!
//! [`MotoServer::start`] runs `moto_server` on a free port under a watchdog
//! that kills it when the test process goes away, even by abort.
//! [`MotoServer::client`] is an Auto Scaling client for it with test
//! credentials, and [`MotoServer::create_group`] makes a group with running
//! instances through the same API (a launch configuration, then the group).
//! [`DrainWebhook`] is a drain webhook the test controls.
//!
//! What moto does differently from AWS (checked on moto 5.2): every call
//! takes effect at once (instances are `InService` as soon as they are
//! asked for); a desired capacity above the group's maximum is accepted;
//! calls naming an unknown group or instance fail with HTTP 500, not a
//! `ValidationError`; lifecycle-hook completion is not implemented.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use aws_sdk_autoscaling::Client;
use aws_sdk_autoscaling::config::retry::RetryConfig;
use aws_sdk_autoscaling::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_autoscaling::types::AutoScalingGroup;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;

use crate::prometheus::find_binary;

/// What to tell someone whose machine lacks moto.
const INSTALL_HINT: &str = "run scripts/install-test-deps (it installs PyPI's `moto[server]`, \
     which provides `moto_server`; CI runs it)";

/// Runs the server, and kills it when our end of its stdin closes.
const WATCHDOG: &str = r#"
exec 3<&0
"$@" </dev/null 3<&- &
server=$!
( while read -r _ <&3; do :; done; kill -KILL "$server" 2>/dev/null ) &
wait "$server"
"#;

/// The region every test group lives in.
pub const REGION: &str = "us-east-1";

/// A moto server on loopback; killed when dropped.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    url: String,
    log: tempfile::NamedTempFile,
}

impl MotoServer {
    /// Starts a server and waits until it answers (about 1.5 s).
    ///
    /// The port is picked free and handed over; if another process takes it
    /// in between (a test starting its own server), this one exits, and
    /// another port is tried.
    pub async fn start() -> anyhow::Result<MotoServer> {
        let mut last_error = None;
        for _ in 0..3 {
            match MotoServer::start_once().await {
                Ok(server) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("three attempts"))
    }

    async fn start_once() -> anyhow::Result<MotoServer> {
        let program = find_binary("moto_server").context(INSTALL_HINT)?;
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            listener.local_addr()?.port()
        };
        let log = tempfile::NamedTempFile::new()?;
        let output = log.reopen()?;
        let child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("moto-watchdog")
            .arg(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::piped())
            // One open file for both, sharing its offset: two would each
            // write from the start, over the other's lines (readiness reads
            // the server's "Running on").
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let mut server = MotoServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        server.wait_ready(Duration::from_secs(60)).await?;
        Ok(server)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let reset = format!("{}/moto-api/reset", self.url);
        // Only this server's answer counts: another on the port (which
        // took it first) would answer too, while this one exits.
        let listening = format!("Running on {}", self.url);
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_text().contains(&listening)
                && let Ok(resp) = http.post(&reset).send().await
                && resp.status().is_success()
            {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "moto_server exited ({status}) before it was ready:\n{}",
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "moto_server did not answer within {timeout:?}:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What the server logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// The server's base URL, for `endpoint` in a config.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// An Auto Scaling client for this server: test credentials, [`REGION`],
    /// and one retry (moto answers a bad request with a 500, which the SDK
    /// would otherwise retry with backoff).
    pub fn client(&self) -> Client {
        client_for(&self.url, 2)
    }

    /// Creates the group `name` with `desired` running instances (0 to 10)
    /// over two Availability Zones.
    pub async fn create_group(&self, name: &str, desired: i32) -> anyhow::Result<()> {
        let client = self.client();
        let config = format!("{name}-lc");
        client
            .create_launch_configuration()
            .launch_configuration_name(&config)
            .image_id("ami-12c6146b")
            .instance_type("t2.micro")
            .send()
            .await
            .context("CreateLaunchConfiguration")?;
        client
            .create_auto_scaling_group()
            .auto_scaling_group_name(name)
            .launch_configuration_name(&config)
            .min_size(0)
            .max_size(10)
            .desired_capacity(desired)
            .availability_zones(format!("{REGION}a"))
            .availability_zones(format!("{REGION}b"))
            .send()
            .await
            .context("CreateAutoScalingGroup")?;
        Ok(())
    }

    /// The group `name` as the API describes it now.
    pub async fn group(&self, name: &str) -> anyhow::Result<AutoScalingGroup> {
        let out = self
            .client()
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
            .context("DescribeAutoScalingGroups")?;
        out.auto_scaling_groups()
            .first()
            .cloned()
            .with_context(|| format!("no group {name:?}"))
    }

    /// The ids of the group's instances, sorted.
    pub async fn instance_ids(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let mut ids: Vec<String> = self
            .group(name)
            .await?
            .instances()
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect();
        ids.sort();
        Ok(ids)
    }
}

/// An Auto Scaling client for the API at `url`: test credentials,
/// [`REGION`], at most `attempts` tries a call.
pub fn client_for(url: &str, attempts: u32) -> Client {
    let config = aws_sdk_autoscaling::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(url)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .retry_config(RetryConfig::standard().with_max_attempts(attempts))
        .build();
    Client::from_conf(config)
}

/// A drain webhook for the Auto Scaling group actuator on a loopback port:
/// answers every POST with the status the test sets and records its body.
#[derive(Debug, Clone)]
pub struct DrainWebhook {
    status: Arc<AtomicU16>,
    calls: Arc<Mutex<Vec<serde_json::Value>>>,
    /// How long each answer waits, in ms.
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Requests being answered now, and the most there were at once.
    in_flight: Arc<Mutex<(usize, usize)>>,
    url: String,
    secured: Option<Arc<crate::https::Secured>>,
}

impl DrainWebhook {
    fn new(status: StatusCode, url: String) -> DrainWebhook {
        DrainWebhook {
            status: Arc::new(AtomicU16::new(status.as_u16())),
            calls: Arc::default(),
            delay_ms: Arc::default(),
            in_flight: Arc::default(),
            url,
            secured: None,
        }
    }

    fn app(&self) -> axum::Router {
        axum::Router::new()
            .route("/drain", post(Self::handle))
            .with_state(self.clone())
    }

    /// Serves `/drain` on the caller's runtime, answering `status`.
    pub async fn start(status: StatusCode) -> anyhow::Result<DrainWebhook> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let webhook = DrainWebhook::new(status, format!("http://{}/drain", listener.local_addr()?));
        let app = webhook.app();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(webhook)
    }

    /// Serves `/drain` over HTTPS with a certificate no system trusts,
    /// answering only requests with the bearer token ([`crate::https`]).
    pub async fn start_secured(status: StatusCode) -> anyhow::Result<DrainWebhook> {
        let mut webhook = DrainWebhook::new(status, String::new());
        let secured = crate::https::serve(webhook.app()).await?;
        webhook.url = secured.url("/drain");
        webhook.secured = Some(Arc::new(secured));
        Ok(webhook)
    }

    /// Its HTTPS side and token, when [`start_secured`](Self::start_secured).
    pub fn secured(&self) -> Option<&crate::https::Secured> {
        self.secured.as_deref()
    }

    async fn handle(
        State(w): State<DrainWebhook>,
        Json(body): Json<serde_json::Value>,
    ) -> StatusCode {
        w.calls.lock().unwrap().push(body);
        {
            let mut at_once = w.in_flight.lock().unwrap();
            at_once.0 += 1;
            at_once.1 = at_once.1.max(at_once.0);
        }
        let delay = w.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        w.in_flight.lock().unwrap().0 -= 1;
        StatusCode::from_u16(w.status.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK)
    }

    /// Waits `ms` before each answer from now on.
    pub fn delay(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// The most requests it was answering at once.
    pub fn most_at_once(&self) -> usize {
        self.in_flight.lock().unwrap().1
    }

    /// Its URL, for `drain_webhook`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Answers `status` from now on (202: draining, 200: drained).
    pub fn answer(&self, status: StatusCode) {
        self.status.store(status.as_u16(), Ordering::SeqCst);
    }

    /// Every body received, oldest first.
    pub fn calls(&self) -> Vec<serde_json::Value> {
        self.calls.lock().unwrap().clone()
    }

    /// The instance ids it was asked to drain, each once.
    pub fn instance_ids(&self) -> BTreeSet<String> {
        self.calls()
            .iter()
            .filter_map(|c| c["instance_id"].as_str().map(str::to_owned))
            .collect()
    }

    /// Forgets the calls so far.
    pub fn clear(&self) {
        self.calls.lock().unwrap().clear();
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        // Closing stdin tells the watchdog to kill the server.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}
