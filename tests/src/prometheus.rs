//! A real Prometheus server, and an exporter it scrapes, for tests.
//!
//! [`Exporter`] serves `/metrics` in the text format with values the test
//! sets; [`PrometheusServer`] runs Debian's `prometheus` binary on loopback
//! with a temporary config and TSDB, scraping exporters every second, or
//! serving history loaded with `promtool tsdb create-blocks-from openmetrics`.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use scalewise_tests::prometheus::{Exporter, PrometheusServer};
//!
//! let exporter = Exporter::start()?;
//! exporter.set("queue_depth", 12.0);
//! let prometheus = PrometheusServer::builder().scrape("app", exporter.addr()).start().await?;
//! prometheus.wait_for_value("queue_depth", Duration::from_secs(20), |v| v == 12.0).await?;
//! # Ok(()) }
//! ```
//!
//! Everything is waited for by polling, never by fixed sleeps: the server is
//! ready in ~0.2 s, but the first sample of a new target becomes queryable
//! only ~5.5 s after start (target discovery), and a changed value ~0.7 s
//! after the change at a 1 s scrape interval.
//!
//! The server runs under a small shell watchdog that holds a pipe from the
//! test process: when the test process goes away, even by abort, the pipe
//! closes and the watchdog kills Prometheus and removes its data, so servers
//! kept in statics (shared by the tests of a file) do not outlive the run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// What to tell someone whose machine lacks the Prometheus binaries.
const INSTALL_HINT: &str = "run scripts/install-test-deps (it installs Debian's `prometheus` \
     package, which provides `prometheus` and `promtool`; CI runs it)";

/// Runs the server and kills it (and removes `$SCALEWISE_PROMETHEUS_DIR`)
/// when our end of its stdin closes. `$@` is the server's command line.
const WATCHDOG: &str = r#"
exec 3<&0
"$@" </dev/null 3<&- &
server=$!
(
  while read -r _ <&3; do :; done
  kill -KILL "$server" 2>/dev/null
  while kill -0 "$server" 2>/dev/null; do sleep 0.05; done
  rm -rf "$SCALEWISE_PROMETHEUS_DIR"
) &
watcher=$!
wait "$server"
status=$?
# 137 is the watcher's SIGKILL: let it finish cleaning up. Otherwise the
# server stopped on its own and its log stays for the test to read.
if [ "$status" -eq 137 ]; then wait "$watcher"; else kill "$watcher" 2>/dev/null; fi
exit "$status"
"#;

/// Finds `program` on `PATH`, or fails saying how to install it.
pub fn find_binary(program: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("`{program}` is not on PATH: {INSTALL_HINT}"))
}

// ---------------------------------------------------------------------------
// Exporter

/// A `/metrics` endpoint whose series and values the test sets. It runs on
/// its own thread and runtime, so it can outlive any one test's runtime.
#[derive(Debug)]
pub struct Exporter {
    addr: SocketAddr,
    state: Arc<Mutex<ExporterState>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct ExporterState {
    /// Series (`name{labels}`) → the rest of its line (value, timestamp).
    lines: BTreeMap<String, String>,
    scrapes: u64,
}

impl Exporter {
    /// Starts serving on a free loopback port.
    pub fn start() -> anyhow::Result<Exporter> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the exporter")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(ExporterState::default()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new()
            .route("/metrics", get(serve_metrics))
            .with_state(state.clone());
        let thread = std::thread::Builder::new()
            .name(format!("exporter-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("exporter runtime");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("exporter listener");
                    tokio::select! {
                        _ = axum::serve(listener, app) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime drops every open connection with it.
            })?;
        Ok(Exporter {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address Prometheus scrapes.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Exposes `series` (a name with optional labels: `q{queue="a"}`) with
    /// `value`; NaN and infinities are written as Prometheus writes them.
    pub fn set(&self, series: &str, value: f64) {
        self.set_line(series, format_value(value));
    }

    /// Exposes `series` with `value` and an explicit sample timestamp, as
    /// federation or the Pushgateway do. Prometheus writes no staleness
    /// markers for such samples.
    pub fn set_at(&self, series: &str, value: f64, timestamp_ms: i64) {
        self.set_line(series, format!("{} {timestamp_ms}", format_value(value)));
    }

    /// Stops exposing `series` (Prometheus marks it stale at the next scrape).
    pub fn remove(&self, series: &str) {
        self.lock().lines.remove(series);
    }

    /// How many times `/metrics` has been served.
    pub fn scrapes(&self) -> u64 {
        self.lock().scrapes
    }

    /// Stops the exporter: the port refuses connections from now on, so
    /// scrapes fail and Prometheus marks every series of this target stale.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn set_line(&self, series: &str, rest: String) {
        self.lock().lines.insert(series.to_owned(), rest);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ExporterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve_metrics(State(state): State<Arc<Mutex<ExporterState>>>) -> impl IntoResponse {
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    state.scrapes += 1;
    let mut body = String::new();
    for (series, rest) in &state.lines {
        let _ = writeln!(body, "{series} {rest}");
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body,
    )
}

/// A value as the text exposition format writes it.
pub fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value == f64::INFINITY {
        "+Inf".to_owned()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        value.to_string()
    }
}

// ---------------------------------------------------------------------------
// Prometheus

/// How to start a [`PrometheusServer`].
#[derive(Debug, Clone)]
pub struct PrometheusBuilder {
    targets: Vec<(String, SocketAddr)>,
    scrape_interval: Duration,
    backfill: Option<String>,
    /// HTTPS with this certificate and key (PEM).
    tls: Option<(String, String)>,
    /// Clients must present a certificate this CA (PEM) signed; the
    /// readiness probe presents this identity (key and certificate, PEM).
    client_auth: Option<(String, String)>,
}

/// A running Prometheus server on loopback; killed (and its data removed)
/// when dropped or when the test process exits.
#[derive(Debug)]
pub struct PrometheusServer {
    url: String,
    dir: tempfile::TempDir,
    child: Child,
    /// Our end of the watchdog's pipe; closing it stops the server.
    lifeline: Option<ChildStdin>,
    started: Instant,
}

impl PrometheusBuilder {
    /// Scrapes `target`'s `/metrics` as job `job` (label `job="<job>"`).
    pub fn scrape(mut self, job: &str, target: SocketAddr) -> Self {
        self.targets.push((job.to_owned(), target));
        self
    }

    /// How often targets are scraped (1 s by default).
    pub fn scrape_interval(mut self, interval: Duration) -> Self {
        self.scrape_interval = interval;
        self
    }

    /// Loads this OpenMetrics text (fixed timestamps, ending with `# EOF`)
    /// into the TSDB before the server starts. Keep its timestamps inside
    /// the retention (15 days) and at least a few minutes in the past.
    pub fn backfill(mut self, openmetrics: &str) -> Self {
        self.backfill = Some(openmetrics.to_owned());
        self
    }

    /// Serves HTTPS only, with this certificate and key (PEM), through
    /// Prometheus' own web config (`tls_server_config`).
    pub fn tls(mut self, cert_pem: &str, key_pem: &str) -> Self {
        self.tls = Some((cert_pem.to_owned(), key_pem.to_owned()));
        self
    }

    /// Asks every client for a certificate signed by the CA `ca_pem`
    /// (`client_auth_type: RequireAndVerifyClientCert`), refusing the
    /// connection without one: mutual TLS, with [`tls`](Self::tls). The
    /// readiness probe presents `probe_identity_pem` (a key and a
    /// certificate that CA signed, PEM).
    pub fn require_client_cert(mut self, ca_pem: &str, probe_identity_pem: &str) -> Self {
        self.client_auth = Some((ca_pem.to_owned(), probe_identity_pem.to_owned()));
        self
    }

    /// Starts the server and waits until it is ready (not for the first
    /// scrape: see [`PrometheusServer::wait_for_value`]).
    pub async fn start(self) -> anyhow::Result<PrometheusServer> {
        let prometheus = find_binary("prometheus")?;
        let dir = tempfile::Builder::new()
            .prefix("scalewise-prometheus-")
            .tempdir()?;
        let tsdb = dir.path().join("tsdb");
        std::fs::create_dir_all(&tsdb)?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, self.config_yaml())?;
        if let Some(openmetrics) = &self.backfill {
            backfill(dir.path(), &tsdb, openmetrics)?;
        }
        let web = match &self.tls {
            None => None,
            Some((cert, key)) => {
                let (cert_path, key_path) =
                    (dir.path().join("tls.crt"), dir.path().join("tls.key"));
                std::fs::write(&cert_path, cert)?;
                std::fs::write(&key_path, key)?;
                let web = dir.path().join("web.yml");
                let mut yaml = format!(
                    "tls_server_config:\n  cert_file: {:?}\n  key_file: {:?}\n",
                    cert_path.display().to_string(),
                    key_path.display().to_string()
                );
                let mut probe = None;
                if let Some((ca, identity)) = &self.client_auth {
                    let ca_path = dir.path().join("client-ca.crt");
                    std::fs::write(&ca_path, ca)?;
                    yaml.push_str(&format!(
                        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {:?}\n",
                        ca_path.display().to_string()
                    ));
                    probe = Some(identity.as_str());
                }
                std::fs::write(&web, yaml)?;
                Some((web, cert.as_str(), probe))
            }
        };
        let scheme = if web.is_some() { "https" } else { "http" };
        // The port is picked free and handed over; if another process takes
        // it in between, Prometheus exits and we try another.
        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port()?;
            match start_on(&prometheus, dir.path(), &config, &tsdb, port, web.clone()).await {
                Ok((child, lifeline, started)) => {
                    return Ok(PrometheusServer {
                        url: format!("{scheme}://127.0.0.1:{port}"),
                        dir,
                        child,
                        lifeline: Some(lifeline),
                        started,
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("three attempts"))
    }

    fn config_yaml(&self) -> String {
        let interval = format!("{}ms", self.scrape_interval.as_millis());
        let mut yaml = format!(
            "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  \
             evaluation_interval: {interval}\nscrape_configs:\n"
        );
        if self.targets.is_empty() {
            yaml.push_str("  []\n");
        }
        for (job, target) in &self.targets {
            let _ = write!(
                yaml,
                "  - job_name: {job:?}\n    static_configs:\n      - targets: [\"{target}\"]\n"
            );
        }
        yaml
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn backfill(dir: &Path, tsdb: &Path, openmetrics: &str) -> anyhow::Result<()> {
    let promtool = find_binary("promtool")?;
    let input = dir.join("backfill.om");
    std::fs::write(&input, openmetrics)?;
    let output = Command::new(promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics", "--quiet"])
        .arg(&input)
        .arg(tsdb)
        .output()
        .context("running promtool")?;
    if !output.status.success() {
        bail!(
            "promtool could not load the backfill ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

async fn start_on(
    prometheus: &Path,
    dir: &Path,
    config: &Path,
    tsdb: &Path,
    port: u16,
    web: Option<(PathBuf, &str, Option<&str>)>,
) -> anyhow::Result<(Child, ChildStdin, Instant)> {
    let log_path = dir.join("prometheus.log");
    let log = std::fs::File::create(&log_path)?;
    let started = Instant::now();
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(WATCHDOG)
        .arg("scalewise-prometheus-watchdog")
        .arg(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", tsdb.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let mut http = reqwest::Client::builder();
    let mut scheme = "http";
    if let Some((web, cert, probe)) = &web {
        command.arg(format!("--web.config.file={}", web.display()));
        http = http.tls_certs_only(reqwest::Certificate::from_pem_bundle(cert.as_bytes())?);
        if let Some(identity) = probe {
            http = http.identity(reqwest::Identity::from_pem(identity.as_bytes())?);
        }
        scheme = "https";
    }
    let mut child = command
        .env("SCALEWISE_PROMETHEUS_DIR", dir)
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting prometheus")?;
    let lifeline = child.stdin.take().expect("piped stdin");
    let ready_url = format!("{scheme}://127.0.0.1:{port}/-/ready");
    let http = http.build()?;
    let deadline = started + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "prometheus exited ({status}) before it was ready:\n{}",
                tail(&log_path)
            );
        }
        if let Ok(response) = http.get(&ready_url).send().await
            && response.status().is_success()
        {
            return Ok((child, lifeline, started));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("prometheus was not ready after 30 s:\n{}", tail(&log_path));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl PrometheusServer {
    /// A builder: no targets, 1 s scrape interval, no backfill.
    pub fn builder() -> PrometheusBuilder {
        PrometheusBuilder {
            targets: Vec::new(),
            scrape_interval: Duration::from_secs(1),
            backfill: None,
            tls: None,
            client_auth: None,
        }
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// When the process was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log(&self) -> String {
        tail(&self.dir.path().join("prometheus.log"))
    }

    /// A query client for this server (the harness' own, independent of
    /// the source under test).
    pub fn client(&self) -> prometheus_http_query::Client {
        prometheus_http_query::Client::try_from(self.url.as_str()).expect("a valid URL")
    }

    /// Polls `promql` (an instant query now) until it returns one sample
    /// whose value satisfies `accept`, and returns that value. Fails after
    /// `timeout` with the last answer and the server's log.
    pub async fn wait_for_value(
        &self,
        promql: &str,
        timeout: Duration,
        accept: impl Fn(f64) -> bool,
    ) -> anyhow::Result<f64> {
        let client = self.client();
        let deadline = Instant::now() + timeout;
        loop {
            let last = match client.query(promql).get().await {
                Ok(result) => match result.data().as_vector().map(|v| v.as_slice()) {
                    Some([one]) if accept(one.sample().value()) => {
                        return Ok(one.sample().value());
                    }
                    other => format!("{other:?}"),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                bail!(
                    "{promql} did not give an accepted value within {timeout:?}; last answer: \
                     {last}\nprometheus log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        // Closing the pipe makes the watchdog kill the server.
        drop(self.lifeline.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
