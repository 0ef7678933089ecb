//! The Prometheus metric source: a scaler's metric as a PromQL query.
//!
//! # Configuration
//!
//! ```toml
//! [sources.prom]
//! kind = "prometheus"
//! url = "http://prometheus.monitoring:9090"   # a path prefix is kept: http://proxy/prometheus
//! timeout = "2s"                               # per request (default 5s); also sent as the query timeout
//! bearer_token = { env = "PROM_TOKEN" }        # or { file = "/var/run/secrets/prom-token" }
//! # basic_auth = { username = "scalewise", password = { file = "/etc/scalewise/prom-password" } }
//! headers = { "X-Scope-OrgID" = "team-a" }     # sent with every request
//!
//! [[scalers]]
//! # ...
//! [scalers.metrics.queue]
//! source = "prom"
//! query = 'sum(rabbitmq_queue_messages_ready{queue="jobs"})'
//! max_age = "30s"                              # default: 3 × the scaler's interval
//!
//! [scalers.metrics.p95_latency]
//! source = "prom"
//! query = 'histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{app="web"}[2m])))'
//! window = "10m"                               # deliver the last 10 minutes...
//! step = "30s"                                 # ...one point every 30 s
//! ```
//!
//! Secrets are read from the environment or a file when the source is built
//! (a file's trailing newline is dropped) and are never logged: the source's
//! `Debug` output names the kind of auth and the header names, not values.
//!
//! # What a query returns
//!
//! Without a `window`, the source runs an instant query at the tick's time
//! and delivers one point. With a `window`, it runs a range query over
//! `[now − window, now]` at `step` (the points fall on `now − k·step`, so the
//! newest is at `now`) and delivers the series oldest first. Times are whole
//! seconds: the tick's time is rounded down to the second.
//!
//! **One series per metric.** A policy receives each metric as one series,
//! so the query must reduce to one series itself: aggregate across pods,
//! instances or queues with `sum(...)`, `avg(...)`, `max(...)` (no `by`
//! clause, or a `by` whose labels have a single value). A query that returns
//! several series fails with `multiple_series`, naming how many, rather than
//! the source picking one: which series matters, and how they combine, is a
//! decision for the query's author. A scalar result (`scalar(...)`, `1 + 1`)
//! is one series.
//!
//! # Staleness
//!
//! Prometheus stamps an instant query's answer with the evaluation time and
//! fills gaps from samples up to 5 minutes old (the lookback delta), so the
//! answer's own timestamp never shows that the data stopped. Two mechanisms
//! cover that:
//!
//! 1. **Staleness markers.** When a scrape target goes away or fails (the
//!    exporter stopped, crashed or hangs past the scrape timeout), or a
//!    series disappears from its page, Prometheus marks its series stale at
//!    the next scrape and they vanish from query results. The metric then
//!    fails with `empty` within one scrape interval.
//! 2. **The freshness query.** Data that carries no staleness markers —
//!    samples with explicit timestamps (federation, the Pushgateway,
//!    exporters that set timestamps) or remote-written samples whose sender
//!    died — keeps answering with the last value for up to 5 minutes. To see
//!    that, the source sends a second query alongside each one that asks when
//!    the newest sample of every selector in the expression was really
//!    written: `sum(rate(http_requests_total[1m]))` is accompanied by
//!    `max(timestamp(http_requests_total))` (`timestamp()` on a bare selector
//!    returns the sample's own time); with several selectors the stalest one
//!    counts. The newest delivered point is stamped with that time when it is
//!    older than the evaluation time, so the host's `max_age` check
//!    ([`check_series`](super::check_series)) fails the metric with `stale`
//!    once the data is older than `max_age`. In a windowed series the points
//!    after that time, which only repeat old data, are dropped.
//!
//! Because the age is real, `max_age` must exceed the scrape interval (plus
//! the scrape's duration): with a 30 s scrape interval the newest sample is up
//! to ~30 s old between scrapes. Selectors pinned with `@` are not checked.
//! If the parser used here cannot read a query that Prometheus accepts, the
//! query still runs and only the freshness check is skipped (with a warning).
//!
//! # Failures
//!
//! Each failure is one [`MetricError`], labelled by its `kind()`:
//!
//! | kind | when |
//! |---|---|
//! | `unreachable` | no connection (refused, DNS, reset) |
//! | `timeout` | no answer within `timeout`, or Prometheus' own query timeout |
//! | `http` | an HTTP error status from Prometheus or a proxy in front (401, 503…) |
//! | `query` | Prometheus refused the query (syntax or execution error), with its message |
//! | `empty` | no samples (also: the series went stale, see above) |
//! | `multiple_series` | more than one series (see the one-series rule) |
//! | `not_finite` | a `NaN` or `±Inf` sample (Prometheus' `"NaN"` arrives as NaN) |
//! | `stale` | the newest data is older than `max_age` |
//!
//! # One request per query per tick
//!
//! Scalers that share a query share the request: fetches of the same query,
//! window and step for the same second wait for one request in flight, and a
//! result is reused for a second after it arrived. Freshness queries are
//! shared the same way, also between different queries over the same
//! selectors. One source serves every scaler that names it, so the sharing
//! spans scalers; the daemon ticks scalers that share a query (and an
//! interval) at the same moments, so they fall in the same second.
//!
//! # Latency
//!
//! A change in an exporter reaches the scaler's decision within the sum of
//! the scrape interval (until Prometheus has the sample), one second
//! (evaluation times are whole seconds, so a sample counts from the next
//! whole second on) and the scaler's interval, plus the query's own time.
//! `tests/benches/prometheus_latency.rs` measures it at a 1 s scrape and a
//! 1 s scaler interval.

mod coalesce;
mod freshness;

use freshness::Freshness;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use prometheus_http_query::response::{Data, PromqlResult, Sample};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use self::coalesce::Coalescer;
use super::{MetricError, MetricQuery, Source};
use crate::config::{HeaderSetting, PrometheusConfig, Rebuilt, Refreshed, Secret, SecretError};
use crate::outbound::causes;
use crate::policy::Point;

/// Points per range query of [`PrometheusSource::history`]: Prometheus
/// refuses a query that would give a series more than 11,000.
pub const MAX_POINTS_PER_QUERY: i64 = 10_000;

/// Evaluation times are rounded down to this, so that scalers ticking in the
/// same second share a request (and because the client takes whole seconds).
const EVALUATION_GRANULARITY_MS: i64 = 1000;
/// How long a finished answer is reused.
const FINISHED_TTL: Duration = Duration::from_secs(1);
/// Distinct (query, window, step, second) answers held at once.
const MAX_SHARED_ANSWERS: usize = 4096;
/// Longest body excerpt quoted in an HTTP error.
const MAX_ERROR_BODY: usize = 512;
/// The largest answer read: one series of the most points a windowed query
/// may ask for takes well under 1 MiB; a query that forgot its `sum()` over
/// a large fleet can answer hundreds, all held in memory by the daemon
/// that runs every scaler.
pub const MAX_ANSWER_BYTES: usize = 8 << 20;
/// Asked of every query: Thanos (and Cortex-style query paths that honour
/// it) then fail a query a store could not answer, rather than answer a
/// sum over the stores that did - a too-low number that looks valid, and
/// would scale in. Prometheus ignores the parameter.
const PARTIAL_RESPONSE: &str = "partial_response";

/// Why a Prometheus source could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A secret could not be read.
    #[error("source {name}: cannot read {what}: {error}")]
    Secret {
        /// The source's name.
        name: String,
        /// Which secret (`bearer_token`, `basic_auth.password`).
        what: &'static str,
        /// What went wrong; it names the variable or file, never the value.
        #[source]
        error: SecretError,
    },
    /// The URL is not a valid base URL.
    #[error("source {name}: invalid url {url:?}: {reason}")]
    Url {
        /// The source's name.
        name: String,
        /// The configured URL, as a config error quotes it (no password,
        /// path or query).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A header name or value cannot be sent.
    #[error("source {name}: invalid header {header:?}: {reason}")]
    Header {
        /// The source's name.
        name: String,
        /// The header's name.
        header: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("source {name}: cannot build the HTTP client: {reason}")]
    Client {
        /// The source's name.
        name: String,
        /// What went wrong.
        reason: String,
    },
}

impl Error {
    /// A fixed, small label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Secret { .. } => "secret",
            Error::Url { .. } => "url",
            Error::Header { .. } => "header",
            Error::Client { .. } => "client",
        }
    }
}

/// One answer, keyed so that scalers asking the same thing share it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AnswerKey {
    query: MetricQuery,
    evaluation_ms: i64,
}

type Answer = Result<Vec<Point>, MetricError>;

/// A Prometheus server's HTTP API as a metric source.
pub struct PrometheusSource {
    name: String,
    /// The URL with any credentials removed, for messages.
    display_url: String,
    timeout: Duration,
    /// Headers whose values are secrets: `Authorization` from the auth
    /// settings, and custom headers given as secrets.
    credentials: Vec<Credentials>,
    header_names: Vec<String>,
    /// Built again when its TLS files change.
    client: Rebuilt<prometheus_http_query::Client>,
    answers: Coalescer<AnswerKey, Answer>,
    /// Freshness answers, shared by the queries that read the same
    /// selectors (`sum(x)` and `max(x)` both ask `max(timestamp(x))`).
    data_times: Coalescer<(Arc<str>, i64), Result<Option<DataTime>, MetricError>>,
    /// Probe answers (the inputs with any sample within reach; `None`:
    /// refused), shared alike; asked only when an input has no current
    /// sample.
    probes: Coalescer<(Arc<str>, i64), Result<Option<Inputs>, MetricError>>,
    /// The freshness queries of each query seen (`None`: nothing to check).
    freshness: Mutex<HashMap<String, Option<Arc<Freshness>>>>,
    /// The warnings logged last, by query (forgotten when the query is
    /// answered without any).
    warnings: Mutex<HashMap<String, String>>,
}

impl fmt::Debug for PrometheusSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusSource")
            .field("name", &self.name)
            .field("url", &self.display_url)
            .field("timeout", &self.timeout)
            .field("auth", &self.credentials)
            .field("headers", &self.header_names)
            .finish_non_exhaustive()
    }
}

impl PrometheusSource {
    /// Builds the source `[sources.<name>]` from its config: reads its
    /// secrets and prepares an HTTP client that sends the auth and custom
    /// headers with every request and gives up after `timeout`.
    pub fn new(name: &str, config: &PrometheusConfig) -> Result<Self, Error> {
        let mut headers = HeaderMap::new();
        let mut credentials: Vec<Credentials> = Credentials::from_config(name, config)?
            .into_iter()
            .collect();
        for (header, setting) in &config.headers {
            let bad = |reason: String| Error::Header {
                name: name.to_owned(),
                header: header.clone(),
                reason,
            };
            let header_name =
                HeaderName::from_bytes(header.as_bytes()).map_err(|e| bad(e.to_string()))?;
            match setting {
                HeaderSetting::Value(value) => {
                    let value = HeaderValue::from_str(value).map_err(|e| bad(e.to_string()))?;
                    headers.insert(header_name, value);
                }
                // Sent like the auth header: re-read as its file rotates.
                HeaderSetting::Secret(secret) => {
                    credentials.push(Credentials::for_header(name, header_name, secret)?);
                }
            }
        }
        // Quoted without a password written in it (`scalewise trace
        // --prometheus` hands a URL here unchecked).
        let mut url = reqwest::Url::parse(&config.url).map_err(|e| Error::Url {
            name: name.to_owned(),
            url: crate::config::quoted_url(&config.url),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::Url {
                name: name.to_owned(),
                url: crate::config::quoted_url(&config.url),
                reason: "the scheme must be http or https".to_owned(),
            });
        }
        let base = base_url(&config.url).to_owned();
        let tls = config.tls_files();
        let files = tls.owned();
        let timeout = config.timeout;
        let build = move || {
            // No redirects, as every outbound call: one to another host
            // would carry the credentials there.
            let builder = reqwest::Client::builder()
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .default_headers(headers.clone());
            let http =
                crate::config::tls_configured(builder, files.as_files()).and_then(|builder| {
                    builder
                        .build()
                        .map_err(|e| crate::outbound::error_chain(&e))
                })?;
            prometheus_http_query::Client::from(http, &base).map_err(|e| e.to_string())
        };
        let client = Rebuilt::new(format!("sources.{name}"), tls, build).map_err(|reason| {
            Error::Client {
                name: name.to_owned(),
                reason,
            }
        })?;
        // Credentials in the URL itself are not for messages either.
        let _ = url.set_username("");
        let _ = url.set_password(None);

        let mut header_names: Vec<String> = config.headers.keys().cloned().collect();
        header_names.sort();
        Ok(PrometheusSource {
            name: name.to_owned(),
            display_url: url.to_string(),
            timeout: config.timeout,
            credentials,
            header_names,
            client,
            answers: Coalescer::new(
                FINISHED_TTL,
                config.timeout + FINISHED_TTL,
                MAX_SHARED_ANSWERS,
            ),
            data_times: Coalescer::new(
                FINISHED_TTL,
                config.timeout + FINISHED_TTL,
                MAX_SHARED_ANSWERS,
            ),
            probes: Coalescer::new(
                FINISHED_TTL,
                config.timeout + FINISHED_TTL,
                MAX_SHARED_ANSWERS,
            ),
            freshness: Mutex::new(HashMap::new()),
            warnings: Mutex::new(HashMap::new()),
        })
    }

    /// The source's name (`[sources.<name>]`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many range queries [`PrometheusSource::history`] sends for a
    /// span (a valid one: `step_s` > 0, `end_s` >= `start_s`).
    pub fn history_queries(start_s: i64, end_s: i64, step_s: i64) -> i64 {
        (end_s - start_s) / step_s / MAX_POINTS_PER_QUERY + 1
    }

    /// The query's history, one series sampled every `step_s` seconds from
    /// `start_s` to `end_s` (both included), oldest first: as many range
    /// queries as Prometheus's limit of points per series and query needs,
    /// each with the source's auth and headers. Steps without data are not
    /// in the answer; no data at all is [`MetricError::Empty`].
    pub async fn history(
        &self,
        query: &str,
        start_s: i64,
        end_s: i64,
        step_s: i64,
    ) -> Result<Vec<Point>, MetricError> {
        if step_s <= 0 || end_s < start_s {
            return Err(MetricError::Query(format!(
                "a history runs from its start ({start_s}) to its end ({end_s}) at a positive \
                 step ({step_s} s)"
            )));
        }
        let mut points = Vec::new();
        let mut from_s = start_s;
        while from_s <= end_s {
            let to_s = end_s.min(from_s.saturating_add((MAX_POINTS_PER_QUERY - 1) * step_s));
            let mut request = self
                .client
                .get()
                .query_range(query, from_s, to_s, step_s as f64)
                .timeout(self.timeout_ms() as i64)
                .query(PARTIAL_RESPONSE, "false");
            for credentials in &self.credentials {
                request = request.header(credentials.header_name.clone(), credentials.header());
            }
            match one_series(self.send(query, request.get_raw()).await?) {
                Ok(chunk) => points.extend(chunk),
                Err(MetricError::Empty) => {}
                Err(e) => return Err(e),
            }
            from_s = to_s.saturating_add(step_s);
        }
        if points.is_empty() {
            return Err(MetricError::Empty);
        }
        Ok(points)
    }

    fn timeout_ms(&self) -> u64 {
        self.timeout.as_millis().try_into().unwrap_or(u64::MAX)
    }

    /// The freshness queries for `query`, computed once per distinct query.
    fn freshness_query(&self, query: &str) -> Option<Arc<Freshness>> {
        let mut memo = self.freshness.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = memo.get(query) {
            return known.clone();
        }
        let rewritten = match freshness::freshness(query) {
            Ok(rewritten) => rewritten.map(Arc::new),
            Err(reason) => {
                tracing::warn!(
                    source = %self.name,
                    query,
                    %reason,
                    "The query could not be parsed here, so its data's age will not be checked; Prometheus still runs it."
                );
                None
            }
        };
        memo.insert(query.to_owned(), rewritten.clone());
        rewritten
    }

    /// Runs the query and its freshness query (in parallel) at `evaluation_ms`.
    async fn fetch_uncached(&self, query: &MetricQuery, evaluation_ms: i64) -> Answer {
        let freshness_query = self.freshness_query(&query.query);
        let evaluation_s = evaluation_ms / 1000;
        let timeout_ms = self.timeout_ms();
        let answer = async {
            let data = match query.window_ms {
                None => {
                    let request = self
                        .client
                        .get()
                        .query(&query.query)
                        .at(evaluation_s)
                        .timeout(timeout_ms as i64)
                        .query(PARTIAL_RESPONSE, "false");
                    self.send(&query.query, self.authorize(request).get_raw())
                        .await?
                }
                Some(window_ms) => {
                    let (start_s, step_s) = range_of(window_ms, query.step_ms, evaluation_ms)?;
                    let mut request = self
                        .client
                        .get()
                        .query_range(&query.query, start_s, evaluation_s, step_s)
                        .timeout(timeout_ms as i64)
                        .query(PARTIAL_RESPONSE, "false");
                    for credentials in &self.credentials {
                        request =
                            request.header(credentials.header_name.clone(), credentials.header());
                    }
                    self.send(&query.query, request.get_raw()).await?
                }
            };
            one_series(data)
        };
        let newest_data = async {
            let Some(freshness) = &freshness_query else {
                return Ok(None);
            };
            let key = (Arc::from(freshness.query.as_str()), evaluation_ms);
            self.data_times
                .run(key, || {
                    self.newest_data(&query.query, &freshness.query, evaluation_s)
                })
                .await
        };
        let (points, newest_data) = tokio::join!(answer, newest_data);
        let points = points?;
        let Some(dated) = newest_data? else {
            return Ok(points);
        };
        if let Some(freshness) = &freshness_query
            && dated.inputs.len() < freshness.inputs
        {
            // An input with no current sample: none at all (`or vector(0)`
            // over a counter never exported), or only stale ones that a
            // range still computes from (its target stopped reporting).
            let key = (Arc::from(freshness.probe.as_str()), evaluation_ms);
            let within_reach = self
                .probes
                .run(key, || {
                    self.inputs_within_reach(&query.query, &freshness.probe, evaluation_s)
                })
                .await?;
            if within_reach.is_some_and(|found| !found.is_subset(&dated.inputs)) {
                return Err(MetricError::NotCurrent);
            }
        }
        Ok(stamp_with_data_time(points, dated.newest_ms))
    }

    /// Runs a probe: which inputs have a sample within reach (`None`: the
    /// server refused the probe, and the check is skipped).
    async fn inputs_within_reach(
        &self,
        query: &str,
        probe: &str,
        evaluation_s: i64,
    ) -> Result<Option<Inputs>, MetricError> {
        let data = self.run_check(query, probe, "probe", evaluation_s).await?;
        Ok(data.map(|data| inputs_of(&data)))
    }

    /// Runs a freshness query: the time of the newest data behind `query`,
    /// and which of its inputs have a current sample (`None`: not checked).
    async fn newest_data(
        &self,
        query: &str,
        freshness_query: &str,
        evaluation_s: i64,
    ) -> Result<Option<DataTime>, MetricError> {
        let data = self
            .run_check(query, freshness_query, "freshness query", evaluation_s)
            .await?;
        Ok(data.map(|data| DataTime {
            newest_ms: newest_data_ms(&data),
            inputs: inputs_of(&data),
        }))
    }

    /// Runs `check`, a query of ours about `query`'s data (`what` it is);
    /// `None` when the server refuses it. Only our rewrite can make it fail
    /// while the query itself runs (a store without `last_over_time`, say):
    /// the check is skipped, and logged, rather than the metric failed.
    async fn run_check(
        &self,
        query: &str,
        check: &str,
        what: &str,
        evaluation_s: i64,
    ) -> Result<Option<Data>, MetricError> {
        let request = self
            .client
            .get()
            .query(check)
            .at(evaluation_s)
            .timeout(self.timeout_ms() as i64)
            .query(PARTIAL_RESPONSE, "false");
        match self.send(check, self.authorize(request).get_raw()).await {
            Ok(data) => Ok(Some(data)),
            Err(MetricError::Query(reason)) => {
                tracing::warn!(
                    source = %self.name,
                    query,
                    check,
                    %reason,
                    "Prometheus refused the {what}, so this answer is not checked by it."
                );
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn authorize(
        &self,
        request: prometheus_http_query::InstantQueryBuilder,
    ) -> prometheus_http_query::InstantQueryBuilder {
        self.credentials
            .iter()
            .fold(request, |request, credentials| {
                request.header(credentials.header_name.clone(), credentials.header())
            })
    }

    /// Sends one query and decodes the answer, mapping every failure to a
    /// [`MetricError`].
    async fn send(
        &self,
        query: &str,
        request: impl Future<Output = Result<reqwest::Response, prometheus_http_query::Error>>,
    ) -> Result<Data, MetricError> {
        let response = request.await.map_err(|e| self.transport_error(&e))?;
        let status = response.status().as_u16();
        if response.status().is_redirection() {
            return Err(MetricError::Http {
                status,
                message: "a redirect, not followed (it would take the source's credentials \
                          along): put the URL it points to in the source's url"
                    .to_owned(),
            });
        }
        let is_json = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        let Some(body) = read_capped(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| self.reqwest_error(&e))?
        else {
            let limit = format!("larger than {} MiB", MAX_ANSWER_BYTES >> 20);
            return Err(if (200..300).contains(&status) {
                MetricError::Query(format!(
                    "the answer is {limit} (not read): aggregate the query to one series \
                     (sum(...), avg(...)), or widen its step"
                ))
            } else {
                MetricError::Http {
                    status,
                    message: format!("(an answer {limit}, not read)"),
                }
            });
        };
        let (data, warnings) = decode_response(status, is_json, &body, self.timeout_ms())?;
        self.note_warnings(query, &warnings);
        Ok(data)
    }

    /// Logs the warnings of an answer to `query` when they differ from the
    /// last ones logged for it (the same query every tick would repeat
    /// them); an answer without any forgets them.
    fn note_warnings(&self, query: &str, warnings: &[String]) {
        let mut logged = self.warnings.lock().unwrap_or_else(PoisonError::into_inner);
        if warnings.is_empty() {
            if !logged.is_empty() {
                logged.remove(query);
            }
            return;
        }
        let text = warnings.join("; ");
        if logged.get(query) != Some(&text) {
            tracing::warn!(
                source = %self.name, query = %crate::runtime::log_safe(query),
                warnings = %crate::runtime::log_safe(&text),
                "Prometheus answered with warnings (said again when they change); its data may be incomplete."
            );
            logged.insert(query.to_owned(), text);
        }
    }

    fn transport_error(&self, error: &prometheus_http_query::Error) -> MetricError {
        match error {
            prometheus_http_query::Error::Client(client) => match client.inner() {
                Some(e) => self.reqwest_error(e),
                None => MetricError::Other(client.to_string()),
            },
            other => MetricError::Other(other.to_string()),
        }
    }

    fn reqwest_error(&self, error: &reqwest::Error) -> MetricError {
        if error.is_timeout() {
            MetricError::Timeout(self.timeout_ms())
        } else if error.is_connect() || error.is_request() {
            MetricError::Unreachable(format!("{}: {}", self.display_url, causes(error)))
        } else {
            MetricError::Other(format!("{}: {}", self.display_url, causes(error)))
        }
    }
}

#[async_trait]
impl Source for PrometheusSource {
    async fn fetch(&self, query: &MetricQuery, now_ms: i64) -> Result<Vec<Point>, MetricError> {
        // Scalewise's time never goes back: after the wall clock is set
        // back it stays ahead of it. Prometheus is asked at the wall
        // clock's time and its answer moved onto Scalewise's time, or
        // every sample would look that much older (stale, or missing past
        // the lookback) until a restart.
        // (Within a step of it, as the clock tells a step, it is the same
        // time.)
        let behind = now_ms.saturating_sub(crate::clock::wall_clock_ms()).max(0);
        let behind = if behind > crate::clock::WALL_STEP_MS {
            behind
        } else {
            0
        };
        let asked_ms = now_ms - behind;
        let evaluation_ms =
            asked_ms.div_euclid(EVALUATION_GRANULARITY_MS) * EVALUATION_GRANULARITY_MS;
        let key = AnswerKey {
            query: query.clone(),
            evaluation_ms,
        };
        let mut points = self
            .answers
            .run(key, || self.fetch_uncached(query, evaluation_ms))
            .await?;
        if behind > 0 {
            for point in &mut points {
                point.timestamp_ms = point.timestamp_ms.saturating_add(behind);
            }
        }
        Ok(points)
    }
}

/// Reads `secret` with the config's resolver (the same rules the config
/// check applied at load), naming the source and which secret on failure.
fn read_secret(name: &str, what: &'static str, secret: &Secret) -> Result<String, Error> {
    secret.resolve().map_err(|error| Error::Secret {
        name: name.to_owned(),
        what,
        error,
    })
}

/// A header whose value holds a secret: `Authorization` from a bearer
/// token or basic auth, or a custom header given as a secret.
struct Credentials {
    name: String,
    header_name: HeaderName,
    scheme: Scheme,
    current: Refreshed<HeaderValue>,
}

enum Scheme {
    Bearer(Secret),
    Basic {
        username: String,
        password: Secret,
    },
    /// The secret is the header's value.
    Raw(Secret),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The kind of auth only: never the secret, nor where it is read from.
        match self.scheme {
            Scheme::Bearer(_) => f.write_str("bearer"),
            Scheme::Basic { .. } => f.write_str("basic"),
            Scheme::Raw(_) => write!(f, "secret header {}", self.header_name),
        }
    }
}

impl Credentials {
    /// Reads the configured secret now, so that a missing one fails at start.
    fn from_config(name: &str, config: &PrometheusConfig) -> Result<Option<Self>, Error> {
        let scheme = match (&config.bearer_token, &config.basic_auth) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(Error::Header {
                    name: name.to_owned(),
                    header: "Authorization".to_owned(),
                    reason: "set bearer_token or basic_auth, not both".to_owned(),
                });
            }
            (Some(token), None) => Scheme::Bearer(token.clone()),
            (None, Some(basic)) => Scheme::Basic {
                username: basic.username.clone(),
                password: basic.password.clone(),
            },
        };
        let value = read_header(name, &AUTHORIZATION, &scheme)?;
        Ok(Some(Credentials {
            name: name.to_owned(),
            header_name: AUTHORIZATION,
            current: Refreshed::new(value, scheme.secret()),
            scheme,
        }))
    }

    /// The custom header `header_name`, its value the secret, read now.
    fn for_header(name: &str, header_name: HeaderName, secret: &Secret) -> Result<Self, Error> {
        let scheme = Scheme::Raw(secret.clone());
        let value = read_header(name, &header_name, &scheme)?;
        Ok(Credentials {
            name: name.to_owned(),
            header_name,
            current: Refreshed::new(value, secret),
            scheme,
        })
    }

    /// The header value, re-read from its file once it is older than
    /// [`SECRET_REFRESH`] ([`Refreshed`]).
    fn header(&self) -> HeaderValue {
        self.current.get(&self.name, || {
            read_header(&self.name, &self.header_name, &self.scheme)
        })
    }
}

impl Scheme {
    /// The secret the header is made from.
    fn secret(&self) -> &Secret {
        match self {
            Scheme::Bearer(secret)
            | Scheme::Raw(secret)
            | Scheme::Basic {
                password: secret, ..
            } => secret,
        }
    }
}

/// The value of `header` for `scheme`, its secret read now.
fn read_header(name: &str, header: &HeaderName, scheme: &Scheme) -> Result<HeaderValue, Error> {
    let value = match scheme {
        Scheme::Raw(secret) => secret.resolve().map_err(|e| Error::Header {
            name: name.to_owned(),
            header: header.to_string(),
            // Where it was looked for, never the value.
            reason: e.to_string(),
        })?,
        Scheme::Bearer(token) => format!("Bearer {}", read_secret(name, "bearer_token", token)?),
        Scheme::Basic { username, password } => {
            let password = read_secret(name, "basic_auth.password", password)?;
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            format!("Basic {encoded}")
        }
    };
    let mut value = HeaderValue::from_str(&value).map_err(|_| Error::Header {
        name: name.to_owned(),
        header: header.to_string(),
        // Never the value itself: it holds the secret.
        reason: "the credentials contain characters not allowed in a header".to_owned(),
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// The range query's start (whole seconds) and step (seconds) for a window
/// ending at `evaluation_ms`: a whole number of steps, so that the newest
/// point falls on the evaluation time.
fn range_of(window_ms: i64, step_ms: i64, evaluation_ms: i64) -> Result<(i64, f64), MetricError> {
    if step_ms <= 0 || window_ms < 0 {
        return Err(MetricError::Query(format!(
            "window ({window_ms} ms) and step ({step_ms} ms) must be positive"
        )));
    }
    let span_ms = window_ms / step_ms * step_ms;
    let start_s = (evaluation_ms - span_ms).div_euclid(1000)
        + i64::from((evaluation_ms - span_ms).rem_euclid(1000) != 0);
    Ok((start_s, step_ms as f64 / 1000.0))
}

/// The body of every API answer.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<PromqlResult>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
    /// What the server says went wrong without failing the query (a store
    /// of a Thanos or Cortex query path that did not answer, say).
    #[serde(default)]
    warnings: Vec<String>,
}

/// `url` without the slashes that end its path: the client appends
/// `/api/v1/query` to a path prefix as it is, so `https://mimir/prometheus/`
/// asked for `/prometheus//api/v1/query` (a proxy that does not clean paths
/// answers 404).
fn base_url(url: &str) -> &str {
    if url.contains(['?', '#']) {
        return url;
    }
    let trimmed = url.trim_end_matches('/');
    // Never into the scheme's `//`.
    if trimmed.ends_with(':') { url } else { trimmed }
}

/// Reads `response`'s body, or `None` once it passes `cap` bytes (the rest
/// is not read).
async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response
        .content_length()
        .is_some_and(|length| length > cap as u64)
    {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > cap {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// Maps one HTTP answer to the query's data, with the warnings the server
/// sent beside it, or to the error it means.
fn decode_response(
    status: u16,
    is_json: bool,
    body: &[u8],
    timeout_ms: u64,
) -> Result<(Data, Vec<String>), MetricError> {
    let success = (200..300).contains(&status);
    let excerpt = || {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        match text.char_indices().nth(MAX_ERROR_BODY) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text.to_owned(),
        }
    };
    if !is_json {
        return Err(if success {
            MetricError::Other(format!("expected a JSON answer, got: {}", excerpt()))
        } else {
            MetricError::Http {
                status,
                message: excerpt(),
            }
        });
    }
    let envelope: Envelope = match serde_json::from_slice(body) {
        Ok(envelope) => envelope,
        Err(e) if success => {
            return Err(MetricError::Other(format!("cannot read the answer: {e}")));
        }
        Err(_) => {
            return Err(MetricError::Http {
                status,
                message: excerpt(),
            });
        }
    };
    if envelope.status == "success" && success {
        let warnings = envelope.warnings;
        return envelope
            .data
            .map(|result| (result.into_inner().0, warnings))
            .ok_or_else(|| MetricError::Other("a success answer without data".to_owned()));
    }
    let error_type = envelope.error_type.unwrap_or_default();
    let message = envelope.error.unwrap_or_default();
    Err(match error_type.as_str() {
        "bad_data" | "execution" => MetricError::Query(message),
        "timeout" => MetricError::Timeout(timeout_ms),
        _ if !success => MetricError::Http {
            status,
            message: format!("{error_type}: {message}"),
        },
        _ => MetricError::Other(format!("{error_type}: {message}")),
    })
}

fn point(sample: &Sample) -> Point {
    Point {
        timestamp_ms: seconds_to_ms(sample.timestamp()),
        value: sample.value(),
    }
}

fn seconds_to_ms(seconds: f64) -> i64 {
    (seconds * 1000.0).round() as i64
}

/// The one series of an answer, oldest first.
fn one_series(data: Data) -> Result<Vec<Point>, MetricError> {
    let mut points = match data {
        Data::Scalar(sample) => vec![point(&sample)],
        Data::Vector(vector) => match vector.as_slice() {
            [] => return Err(MetricError::Empty),
            [one] => vec![point(one.sample())],
            many => return Err(MetricError::MultipleSeries(many.len())),
        },
        Data::Matrix(matrix) => match matrix.as_slice() {
            [] => return Err(MetricError::Empty),
            [one] => one.samples().iter().map(point).collect(),
            many => return Err(MetricError::MultipleSeries(many.len())),
        },
    };
    if points.is_empty() {
        return Err(MetricError::Empty);
    }
    points.sort_by_key(|p| p.timestamp_ms);
    Ok(points)
}

/// Which inputs of an expression a freshness query or probe answered for,
/// by their index.
type Inputs = std::collections::BTreeSet<usize>;

/// What a freshness query answered.
#[derive(Debug, Clone)]
struct DataTime {
    /// The newest sample of the stalest input that has a current one.
    newest_ms: Option<i64>,
    /// The inputs that have a current sample.
    inputs: Inputs,
}

/// The inputs a freshness query or probe answered for: each sample's
/// [`freshness::INPUT_LABEL`], or input 0 when there is one input.
fn inputs_of(data: &Data) -> Inputs {
    match data {
        Data::Vector(vector) => vector
            .iter()
            .map(|v| {
                v.metric()
                    .get(freshness::INPUT_LABEL)
                    .and_then(|i| i.parse().ok())
                    .unwrap_or(0)
            })
            .collect(),
        Data::Scalar(_) => Inputs::from([0]),
        Data::Matrix(_) => Inputs::new(),
    }
}

/// The time of the newest data behind an answer, from the freshness query's
/// answer: the stalest input's (`None`: no input has a current sample).
fn newest_data_ms(data: &Data) -> Option<i64> {
    let seconds = match data {
        Data::Vector(vector) => vector
            .iter()
            .map(|v| v.sample().value())
            .fold(None, |min: Option<f64>, v| {
                Some(min.map_or(v, |m| m.min(v)))
            })?,
        Data::Scalar(sample) => sample.value(),
        Data::Matrix(_) => return None,
    };
    seconds.is_finite().then(|| seconds_to_ms(seconds))
}

/// Stamps the newest point with the time of the newest data behind it when
/// that is older, and drops the points in between, which only repeat that
/// data (see the module docs on staleness).
fn stamp_with_data_time(mut points: Vec<Point>, newest_data_ms: Option<i64>) -> Vec<Point> {
    let Some(data_ms) = newest_data_ms else {
        return points;
    };
    let Some(newest) = points.pop() else {
        return points;
    };
    if newest.timestamp_ms <= data_ms {
        points.push(newest);
        return points;
    }
    points.retain(|p| p.timestamp_ms < data_ms);
    points.push(Point {
        timestamp_ms: data_ms,
        value: newest.value,
    });
    points
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::BasicAuth;
    use crate::sources::check_series;

    fn p(t: i64, v: f64) -> Point {
        Point {
            timestamp_ms: t,
            value: v,
        }
    }

    fn data(json: &str) -> Data {
        let body = format!(r#"{{"status":"success","data":{json}}}"#);
        decode_response(200, true, body.as_bytes(), 1000).unwrap().0
    }

    #[test]
    fn warnings_come_with_the_data() {
        let body = r#"{"status":"success","warnings":["store s1 unavailable"],"data":{"resultType":"vector","result":[{"metric":{},"value":[1,"2"]}]}}"#;
        let (data, warnings) = decode_response(200, true, body.as_bytes(), 1000).unwrap();
        assert_eq!(warnings, ["store s1 unavailable"]);
        assert_eq!(one_series(data).unwrap(), [p(1000, 2.0)]);
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(
            decode_response(200, true, body.as_bytes(), 1000)
                .unwrap()
                .1
                .is_empty()
        );
    }

    #[test]
    fn a_path_prefix_loses_its_trailing_slashes() {
        for (url, base) in [
            ("https://mimir/prometheus/", "https://mimir/prometheus"),
            ("https://mimir/prometheus//", "https://mimir/prometheus"),
            ("https://mimir/prometheus", "https://mimir/prometheus"),
            ("http://127.0.0.1:9090/", "http://127.0.0.1:9090"),
            ("http://127.0.0.1:9090", "http://127.0.0.1:9090"),
            ("http://h/p/?x=1", "http://h/p/?x=1"),
        ] {
            assert_eq!(base_url(url), base, "{url}");
        }
        // The client joins /api/v1/query onto the path once.
        let http = reqwest::Client::new();
        let client =
            prometheus_http_query::Client::from(http, base_url("https://mimir/prometheus/"))
                .unwrap();
        assert_eq!(client.base_url().path(), "/prometheus");
    }

    #[test]
    fn answers_become_one_series_oldest_first() {
        let cases: &[(&str, Result<Vec<Point>, MetricError>)] = &[
            (
                r#"{"resultType":"vector","result":[{"metric":{},"value":[1700000000.5,"42"]}]}"#,
                Ok(vec![p(1_700_000_000_500, 42.0)]),
            ),
            (
                r#"{"resultType":"scalar","result":[1700000000,"2"]}"#,
                Ok(vec![p(1_700_000_000_000, 2.0)]),
            ),
            (
                r#"{"resultType":"matrix","result":[{"metric":{"job":"a"},"values":[[1700000015,"2"],[1700000000,"1"]]}]}"#,
                Ok(vec![p(1_700_000_000_000, 1.0), p(1_700_000_015_000, 2.0)]),
            ),
            (
                r#"{"resultType":"vector","result":[]}"#,
                Err(MetricError::Empty),
            ),
            (
                r#"{"resultType":"matrix","result":[]}"#,
                Err(MetricError::Empty),
            ),
            (
                r#"{"resultType":"vector","result":[{"metric":{"pod":"a"},"value":[1,"1"]},{"metric":{"pod":"b"},"value":[1,"2"]},{"metric":{"pod":"c"},"value":[1,"3"]}]}"#,
                Err(MetricError::MultipleSeries(3)),
            ),
            (
                r#"{"resultType":"matrix","result":[{"metric":{"pod":"a"},"values":[[1,"1"]]},{"metric":{"pod":"b"},"values":[[1,"2"]]}]}"#,
                Err(MetricError::MultipleSeries(2)),
            ),
        ];
        for (json, expected) in cases {
            assert_eq!(&one_series(data(json)), expected, "for {json}");
        }
    }

    #[test]
    fn prometheus_special_values_reach_the_host_check_as_floats() {
        for (text, kind) in [
            ("NaN", "not_finite"),
            ("+Inf", "not_finite"),
            ("-Inf", "not_finite"),
        ] {
            let json = format!(
                r#"{{"resultType":"vector","result":[{{"metric":{{}},"value":[1,"{text}"]}}]}}"#
            );
            let points = one_series(data(&json)).unwrap();
            assert_eq!(check_series(&points, 1000, None).unwrap_err().kind(), kind);
        }
    }

    #[test]
    fn responses_map_to_named_errors() {
        let json = |s: &str| s.as_bytes().to_vec();
        let cases: Vec<(u16, bool, Vec<u8>, MetricError)> = vec![
            (
                400,
                true,
                json(
                    r#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unclosed left parenthesis"}"#,
                ),
                MetricError::Query("1:5: parse error: unclosed left parenthesis".into()),
            ),
            (
                422,
                true,
                json(
                    r#"{"status":"error","errorType":"execution","error":"many-to-many matching not allowed"}"#,
                ),
                MetricError::Query("many-to-many matching not allowed".into()),
            ),
            (
                503,
                true,
                json(
                    r#"{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}"#,
                ),
                MetricError::Timeout(2500),
            ),
            (
                503,
                true,
                json(r#"{"status":"error","errorType":"unavailable","error":"TSDB not ready"}"#),
                MetricError::Http {
                    status: 503,
                    message: "unavailable: TSDB not ready".into(),
                },
            ),
            (
                401,
                false,
                json("Unauthorized\n"),
                MetricError::Http {
                    status: 401,
                    message: "Unauthorized".into(),
                },
            ),
            (
                502,
                true,
                json("<not json>"),
                MetricError::Http {
                    status: 502,
                    message: "<not json>".into(),
                },
            ),
            (
                200,
                false,
                json("<html>login</html>"),
                MetricError::Other("expected a JSON answer, got: <html>login</html>".into()),
            ),
        ];
        for (status, is_json, body, expected) in cases {
            assert_eq!(
                decode_response(status, is_json, &body, 2500).unwrap_err(),
                expected,
                "for HTTP {status}"
            );
        }
        let long = vec![b'x'; 10_000];
        let MetricError::Http { message, .. } = decode_response(500, false, &long, 1).unwrap_err()
        else {
            panic!("expected an HTTP error");
        };
        assert!(message.chars().count() <= MAX_ERROR_BODY + 1);
    }

    #[test]
    fn range_ends_on_the_evaluation_time_in_whole_steps() {
        let t = 1_700_000_000_000;
        let cases = [
            // (window, step) -> (start_s, step_s)
            ((300_000, 15_000), Ok((1_699_999_700, 15.0))),
            // A window that is not a whole number of steps is shortened.
            ((310_000, 15_000), Ok((1_699_999_700, 15.0))),
            ((60_000, 500), Ok((1_699_999_940, 0.5))),
            // Whole steps that are whole seconds (the config refuses 5s).
            ((30_000, 1_500), Ok((1_699_999_970, 1.5))),
            ((0, 1_000), Ok((1_700_000_000, 1.0))),
        ];
        for ((window, step), expected) in cases {
            assert_eq!(range_of(window, step, t), expected, "{window}/{step}");
        }
        assert_eq!(range_of(60_000, 0, t).unwrap_err().kind(), "query");
    }

    #[test]
    fn newest_point_carries_the_time_of_its_data() {
        let grid = || vec![p(0, 1.0), p(15_000, 2.0), p(30_000, 3.0), p(45_000, 4.0)];
        let cases = [
            // Unknown or fresh data: untouched.
            (None, grid()),
            (Some(45_000), grid()),
            (
                Some(44_300),
                vec![p(0, 1.0), p(15_000, 2.0), p(30_000, 3.0), p(44_300, 4.0)],
            ),
            // Data stopped at 20 s: later points only repeat it.
            (
                Some(20_000),
                vec![p(0, 1.0), p(15_000, 2.0), p(20_000, 4.0)],
            ),
            (Some(15_000), vec![p(0, 1.0), p(15_000, 4.0)]),
            (Some(-5_000), vec![p(-5_000, 4.0)]),
        ];
        for (data_ms, expected) in cases {
            assert_eq!(
                stamp_with_data_time(grid(), data_ms),
                expected,
                "{data_ms:?}"
            );
        }
        // The host's max_age check then sees the real age.
        let stamped = stamp_with_data_time(grid(), Some(20_000));
        assert_eq!(
            check_series(&stamped, 45_000, Some(10_000)),
            Err(MetricError::Stale {
                age_ms: 25_000,
                max_age_ms: 10_000
            })
        );
    }

    #[test]
    fn freshness_answer_is_the_stalest_input() {
        let answer = data(
            r#"{"resultType":"vector","result":[{"metric":{"scalewise_input":"0"},"value":[1,"1700000000.25"]},{"metric":{"scalewise_input":"1"},"value":[1,"1699999990"]}]}"#,
        );
        assert_eq!(newest_data_ms(&answer), Some(1_699_999_990_000));
        assert_eq!(
            newest_data_ms(&data(r#"{"resultType":"vector","result":[]}"#)),
            None
        );
    }

    /// Inputs are told apart by their label, not counted: a freshness
    /// answer for input 0 and a probe answer for input 1 are not the same
    /// one input.
    #[test]
    fn the_inputs_answered_are_read_from_their_label() {
        let labelled = data(
            r#"{"resultType":"vector","result":[
                {"metric":{"scalewise_input":"0"},"value":[1,"5"]},
                {"metric":{"scalewise_input":"2"},"value":[1,"6"]}]}"#,
        );
        assert_eq!(inputs_of(&labelled), Inputs::from([0, 2]));
        let one = data(r#"{"resultType":"vector","result":[{"metric":{},"value":[1,"5"]}]}"#);
        assert_eq!(inputs_of(&one), Inputs::from([0]));
        let none = data(r#"{"resultType":"vector","result":[]}"#);
        assert!(inputs_of(&none).is_empty());
        let probe = data(
            r#"{"resultType":"vector","result":[{"metric":{"scalewise_input":"1"},"value":[1,"1"]}]}"#,
        );
        let fresh = data(
            r#"{"resultType":"vector","result":[{"metric":{"scalewise_input":"0"},"value":[1,"5"]}]}"#,
        );
        assert!(!inputs_of(&probe).is_subset(&inputs_of(&fresh)));
    }

    fn config(url: &str) -> PrometheusConfig {
        PrometheusConfig {
            ca_file: None,
            client_cert: None,
            client_key: None,
            url: url.to_owned(),
            timeout: Duration::from_secs(2),
            bearer_token: None,
            basic_auth: None,
            headers: BTreeMap::new(),
        }
    }

    #[test]
    fn secrets_come_from_files_and_never_show_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cr3t-token\n").unwrap();
        let mut cfg = config("http://user:hunter2@prom.example:9090/prefix");
        cfg.bearer_token = Some(Secret::File(token.clone()));
        cfg.headers.insert("X-Scope-OrgID".into(), "team-a".into());
        let source = PrometheusSource::new("prom", &cfg).unwrap();
        let debug = format!("{source:?}");
        for secret in ["s3cr3t", "hunter2", "team-a"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(
            debug.contains("bearer") && debug.contains("X-Scope-OrgID"),
            "{debug}"
        );
        assert_eq!(
            read_secret("prom", "t", &Secret::File(token)).unwrap(),
            "s3cr3t-token"
        );
    }

    #[test]
    fn rotated_secret_files_are_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "first").unwrap();
        let mut cfg = config("http://prom:9090");
        cfg.bearer_token = Some(Secret::File(token.clone()));
        let credentials = Credentials::from_config("prom", &cfg).unwrap().unwrap();
        let age = |c: &Credentials| {
            c.current.expire();
        };
        std::fs::write(&token, "second").unwrap();
        assert_eq!(credentials.header(), "Bearer first", "not yet due");
        age(&credentials);
        assert_eq!(credentials.header(), "Bearer second", "rotated");
        std::fs::remove_file(&token).unwrap();
        age(&credentials);
        assert_eq!(credentials.header(), "Bearer second", "last good kept");
        assert!(credentials.header().is_sensitive());
    }

    #[test]
    fn a_secret_header_is_read_again_as_its_file_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "k1\n").unwrap();
        let mut cfg = config("http://prom:9090");
        cfg.headers.insert(
            "X-Api-Key".into(),
            HeaderSetting::Secret(Secret::File(key.clone())),
        );
        cfg.headers.insert("X-Scope-OrgID".into(), "team-a".into());
        let source = PrometheusSource::new("prom", &cfg).unwrap();
        // The secret one is sent like the auth header; the text one is the
        // client's own.
        let [credentials] = source.credentials.as_slice() else {
            panic!("{source:?}");
        };
        assert_eq!(credentials.header_name, "x-api-key");
        assert_eq!(credentials.header(), "k1");
        assert!(credentials.header().is_sensitive());
        std::fs::write(&key, "k2\n").unwrap();
        credentials.current.expire();
        assert_eq!(credentials.header(), "k2", "rotated");
        let debug = format!("{source:?}");
        assert!(
            debug.contains("secret header x-api-key") && !debug.contains("k2"),
            "{debug}"
        );

        // A secret that cannot be read fails the build, naming the header.
        cfg.headers.insert(
            "X-Api-Key".into(),
            HeaderSetting::Secret(Secret::File(dir.path().join("nope"))),
        );
        let err = PrometheusSource::new("prom", &cfg).unwrap_err().to_string();
        assert!(err.contains("x-api-key") && err.contains("nope"), "{err}");
    }

    #[test]
    fn a_bad_url_is_refused_without_its_password() {
        for url in [
            "htp://admin:hunter2@prom:9090",
            "http://admin:hunter2@[::1/x",
        ] {
            let err = PrometheusSource::new("prom", &config(url))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("invalid url") && err.contains("…@") && !err.contains("hunter2"),
                "{err}"
            );
        }
    }

    #[test]
    fn env_secrets_are_read() {
        // PATH is set wherever tests run; setting a variable is unsafe in Rust 2024.
        let mut cfg = config("http://prom:9090");
        cfg.basic_auth = Some(BasicAuth {
            username: "u".into(),
            password: Secret::Env("PATH".into()),
        });
        let credentials = Credentials::from_config("prom", &cfg).unwrap().unwrap();
        let expected = base64::engine::general_purpose::STANDARD
            .encode(format!("u:{}", std::env::var("PATH").unwrap()));
        assert_eq!(credentials.header(), format!("Basic {expected}").as_str());
    }

    #[test]
    fn bad_configs_are_refused_naming_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let missing = dir.path().join("missing");
        let mut cases: Vec<(PrometheusConfig, &str, &str)> = Vec::new();

        let mut c = config("http://prom:9090");
        c.bearer_token = Some(Secret::Env("SCALEWISE_TEST_SURELY_UNSET_VAR".into()));
        cases.push((c, "secret", "SCALEWISE_TEST_SURELY_UNSET_VAR"));

        let mut c = config("http://prom:9090");
        c.bearer_token = Some(Secret::File(empty));
        cases.push((c, "secret", "empty"));

        let mut c = config("http://prom:9090");
        c.basic_auth = Some(BasicAuth {
            username: "u".into(),
            password: Secret::File(missing),
        });
        cases.push((c, "secret", "basic_auth.password"));

        let mut c = config("http://prom:9090");
        c.bearer_token = Some(Secret::Env("PATH".into()));
        c.basic_auth = Some(BasicAuth {
            username: "u".into(),
            password: Secret::Env("PATH".into()),
        });
        cases.push((c, "header", "not both"));

        cases.push((config("prom:9090/no-scheme"), "url", "scheme"));
        cases.push((config("not a url"), "url", "not a url"));

        let mut c = config("http://prom:9090");
        c.headers.insert("bad header".into(), "v".into());
        cases.push((c, "header", "bad header"));

        let mut c = config("http://prom:9090");
        c.headers.insert("X-Ok".into(), "line\nbreak".into());
        cases.push((c, "header", "X-Ok"));

        for (cfg, kind, mentions) in cases {
            let err = PrometheusSource::new("prom", &cfg).unwrap_err();
            assert_eq!(err.kind(), kind, "{err}");
            let text = err.to_string();
            assert!(text.contains(mentions) && text.contains("prom"), "{text}");
        }
    }

    /// A writer into a shared buffer, for reading what was logged.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn warnings_are_logged_once_per_query_until_they_change() {
        let source = PrometheusSource::new("prom", &config("http://prom:9090")).unwrap();
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let store = |s: &str| vec![format!("store {s} unavailable")];
        tracing::subscriber::with_default(subscriber, || {
            // Every tick asks again: said once.
            for _ in 0..3 {
                source.note_warnings("sum(queue)", &store("s1"));
            }
            // Other warnings: said again.
            source.note_warnings("sum(queue)", &store("s2"));
            // Another query with the same warnings: its own line.
            source.note_warnings("sum(cpu)", &store("s2"));
            // A clean answer forgets them; their return is news.
            source.note_warnings("sum(queue)", &[]);
            source.note_warnings("sum(queue)", &store("s2"));
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        for (line, (query, store)) in lines.iter().zip([
            ("sum(queue)", "s1"),
            ("sum(queue)", "s2"),
            ("sum(cpu)", "s2"),
            ("sum(queue)", "s2"),
        ]) {
            assert!(line.contains("answered with warnings"), "{line}");
            assert!(line.contains(query), "{line}");
            assert!(
                line.contains(&format!("store {store} unavailable")),
                "{line}"
            );
        }
    }
}
