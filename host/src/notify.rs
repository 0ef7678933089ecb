//! Notifications: webhooks told of every change of replicas the scalers
//! make, and of every failure to make one (`[[notifications]]`).
//!
//! A scaler hands each change to the [`Notifier`] once the journal has its
//! outcome; each webhook has a queue and a task of its own that deliver it,
//! so a slow or failing endpoint never holds a tick, nor another webhook.
//! Each POST is tried three times (again after 1 s and 2 s; a 4xx answer
//! other than 408 and 429 is not retried); what still fails is logged (the
//! URL's scheme and host only: a chat webhook's path is its secret) and
//! counted (`scalewise_notifications_total{result}`). At most [`QUEUE`]
//! changes wait for one webhook; more are dropped for it, counted and logged,
//! and stay in the outbox, so a restart tells them again. A graceful shutdown waits a while for those still waiting
//! ([`Notifier::drain`]). Dry-run scalers change nothing, so they notify nothing. A config
//! reload replaces the webhooks whole ([`Notifier::replace`]): changes made
//! after it go to the new ones, changes already waiting to the old.
//!
//! Nothing is lost to a crash: a change some webhook wants is kept in the
//! journal's outbox, written in the transaction that records the change's
//! outcome, and taken out once every webhook that wanted it was told or
//! given up on. At start the daemon delivers what the outbox still holds
//! ([`Notifier::read_owed`], [`Notifier::queue_owed`]) to the webhooks then configured. Delivery is
//! therefore at least once: a webhook told just before a crash may be told
//! again after it (the body's `time` and `record` tell a repeat apart).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use crate::actuators::Announcement;
use crate::clock::format_ms;
use crate::config::{NotificationConfig, NotifyEvent, NotifyFormat};
use crate::journal::Journal;
use crate::outbound::AuthedClient;
use crate::telemetry::Telemetry;

/// Changes that may wait for delivery.
pub const QUEUE: usize = 1024;

/// Attempts per notification and webhook.
const ATTEMPTS: u32 = 3;

/// The JSON body of a change: `{"time", "event", "scaler", "target": {"kind",
/// "name"}, "from", "to", "reason", "error"?, "record"?}`.
pub fn payload(a: &Announcement) -> serde_json::Value {
    let mut body = serde_json::json!({
        "time": format_ms(a.time_ms),
        "event": event_of(a),
        "scaler": a.scaler,
        "target": {"kind": a.target_kind, "name": a.target_name},
        "from": a.from,
        "to": a.to,
        "reason": a.reason,
    });
    if let Some(error) = &a.error {
        body["error"] = serde_json::json!(error);
    }
    if let Some(record) = a.record {
        body["record"] = serde_json::json!(record);
    }
    body
}

/// The line [`text`] makes, escaped as Slack's `text` field wants it: `&`,
/// `<` and `>` are markup there (a reason with `<!channel>` would ping the
/// channel).
pub fn slack_text(a: &Announcement) -> String {
    text(a)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One line for a chat channel.
pub fn text(a: &Announcement) -> String {
    let head = format!(
        "Scalewise: {} ({} {}) {} → {}",
        a.scaler, a.target_kind, a.target_name, a.from, a.to
    );
    match &a.error {
        None => format!("{head}: {}", a.reason),
        Some(error) => format!("{head} FAILED: {error} ({})", a.reason),
    }
}

/// `scaled`, or `failed` when the change failed.
fn event_of(a: &Announcement) -> &'static str {
    if a.error.is_some() {
        "failed"
    } else {
        "scaled"
    }
}

/// The longest a webhook's `Retry-After` is waited for before the next
/// attempt: a webhook asking for more is tried again then, and given up on
/// after its last attempt as any other failure.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// How long a response's `Retry-After` asks to wait, as of `now`: seconds,
/// or an HTTP date (a date passed is no wait). `None` without a header or
/// with one that reads as neither.
fn retry_after(
    headers: &reqwest::header::HeaderMap,
    now: std::time::SystemTime,
) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// One webhook, ready to post.
#[derive(Debug)]
struct Webhook {
    url: String,
    /// The URL as logs show it: scheme, host and port (the path of a chat
    /// webhook is its credential).
    shown: String,
    events: BTreeSet<&'static str>,
    scalers: BTreeSet<String>,
    format: NotifyFormat,
    client: AuthedClient,
}

impl Webhook {
    fn wants(&self, a: &Announcement) -> bool {
        self.events.contains(event_of(a))
            && (self.scalers.is_empty() || self.scalers.contains(&a.scaler))
    }

    fn body(&self, a: &Announcement) -> serde_json::Value {
        match self.format {
            NotifyFormat::Json => payload(a),
            NotifyFormat::Slack => serde_json::json!({ "text": slack_text(a) }),
        }
    }

    /// Posts `body`, trying again after a failure that may pass: 1 s, then
    /// 2 s later, or as much later as the webhook's `Retry-After` asks (a
    /// rate-limited chat webhook's 429), up to [`MAX_RETRY_AFTER`].
    async fn post(&self, body: &serde_json::Value) -> Result<(), String> {
        let mut last = String::new();
        let mut asked = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                let wait = Duration::from_secs(u64::from(attempt));
                let wait = asked
                    .take()
                    .map_or(wait, |after: Duration| after.min(MAX_RETRY_AFTER).max(wait));
                tokio::time::sleep(wait).await;
            }
            match self.client.post(&self.url).json(body).send().await {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => {
                    let status = response.status();
                    last = format!("HTTP {status}");
                    let retry = status.is_server_error()
                        || status == reqwest::StatusCode::REQUEST_TIMEOUT
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                    if !retry {
                        break;
                    }
                    asked = retry_after(response.headers(), std::time::SystemTime::now());
                    if let Some(after) = asked {
                        last.push_str(&format!(
                            " (retry after {})",
                            humantime::format_duration(after)
                        ));
                    }
                }
                Err(err) => last = crate::outbound::causes(&err),
            }
        }
        Err(last)
    }
}

/// The configured webhooks, built (secrets read, clients made): what a
/// config reload swaps in whole.
#[derive(Debug, Default)]
pub struct Webhooks(Vec<Arc<Webhook>>);

impl Webhooks {
    /// Builds `[[notifications]]`; bearer tokens and secret headers are
    /// read now, so a secret
    /// that cannot be read fails the start, or the reload, that names it.
    pub fn build(webhooks: &[NotificationConfig]) -> Result<Webhooks, String> {
        let mut built = Vec::with_capacity(webhooks.len());
        for (i, w) in webhooks.iter().enumerate() {
            let client =
                AuthedClient::build(&format!("notifications[{i}]"), w.http_auth(), w.timeout)?;
            built.push(Arc::new(Webhook {
                url: w.url.clone(),
                shown: shown_url(&w.url),
                events: w
                    .events
                    .iter()
                    .map(|e| match e {
                        NotifyEvent::Scaled => "scaled",
                        NotifyEvent::Failed => "failed",
                    })
                    .collect(),
                scalers: w.scalers.iter().cloned().collect(),
                format: w.format,
                client,
            }));
        }
        Ok(Webhooks(built))
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `url` without its path, query or credentials: what logs may show.
fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}", u.scheme()),
            (Some(host), None) => format!("{}://{host}", u.scheme()),
            (None, _) => u.scheme().to_owned(),
        },
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// One webhook's queue: its own task delivers what is sent to it.
#[derive(Debug)]
struct Lane {
    webhook: Arc<Webhook>,
    queue: mpsc::Sender<Arc<Delivery>>,
}

/// The lanes of the webhooks in force: what a reload swaps (changes
/// already queued finish in the old lanes, whose tasks end with them).
#[derive(Debug, Default)]
struct Lanes(Vec<Lane>);

impl Lanes {
    fn start(webhooks: &Webhooks, shared: &Arc<Shared>) -> Lanes {
        Lanes(
            webhooks
                .0
                .iter()
                .map(|webhook| {
                    let (queue, mut jobs) = mpsc::channel::<Arc<Delivery>>(QUEUE);
                    let (webhook, shared) = (webhook.clone(), shared.clone());
                    let lane = Lane {
                        webhook: webhook.clone(),
                        queue,
                    };
                    tokio::spawn(async move {
                        while let Some(job) = jobs.recv().await {
                            match webhook.post(&webhook.body(&job.change)).await {
                                Ok(()) => shared.telemetry.notification("sent"),
                                Err(error) => {
                                    shared.telemetry.notification("failed");
                                    tracing::warn!(
                                        url = %webhook.shown,
                                        scaler = %job.change.scaler,
                                        %error,
                                        "A notification could not be delivered after {ATTEMPTS} attempts."
                                    );
                                }
                            }
                            shared.finish(&job).await;
                        }
                    });
                    lane
                })
                .collect(),
        )
    }

    fn wanting<'a>(&'a self, a: &'a Announcement) -> impl Iterator<Item = &'a Lane> {
        self.0.iter().filter(|l| l.webhook.wants(a))
    }
}

/// One change on its way to the webhooks that want it.
#[derive(Debug)]
struct Delivery {
    change: Announcement,
    /// Its id in the journal's outbox, when kept there.
    owed: Option<i64>,
    /// Webhooks that have not yet delivered or given up on it.
    remaining: AtomicUsize,
    /// Some webhook dropped it (its queue was full): it stays in the outbox.
    dropped: std::sync::atomic::AtomicBool,
}

/// What every lane's task shares.
#[derive(Debug)]
struct Shared {
    telemetry: Arc<Telemetry>,
    /// Changes queued and not yet handled (delivered or given up on).
    pending: Pending,
    /// Where the outbox is, when there is one.
    journal: Option<Journal>,
}

impl Shared {
    /// One webhook is done with `job`; the last one settles it.
    async fn finish(&self, job: &Delivery) {
        if job.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        if !job.dropped.load(Ordering::Acquire)
            && let (Some(id), Some(journal)) = (job.owed, &self.journal)
        {
            settle(journal, id).await;
        }
        self.pending.done();
    }
}

/// Delivers changes to the configured webhooks, off the scalers' ticks.
#[derive(Debug)]
pub struct Notifier {
    /// The webhooks in force, each with its queue.
    lanes: ArcSwap<Lanes>,
    shared: Arc<Shared>,
}

/// A count of changes waiting, and a wake-up when it falls to zero.
#[derive(Debug, Default)]
struct Pending {
    count: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Pending {
    fn add(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    fn done(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

impl Notifier {
    /// Starts delivering to `webhooks` (none is fine: a reload may add
    /// some) on the current tokio runtime.
    /// Delivered changes are settled in `journal`'s outbox, when given.
    pub fn start(
        webhooks: Webhooks,
        telemetry: Arc<Telemetry>,
        journal: Option<Journal>,
    ) -> Arc<Notifier> {
        let shared = Arc::new(Shared {
            telemetry,
            pending: Pending::default(),
            journal,
        });
        Arc::new(Notifier {
            lanes: ArcSwap::from_pointee(Lanes::start(&webhooks, &shared)),
            shared,
        })
    }

    /// The changes the journal's outbox still holds (the process stopped
    /// or died before their delivery). Read before any
    /// scaler ticks: a change notified live after the read started would
    /// otherwise be read back too, and sent twice.
    pub async fn read_owed(&self) -> Vec<(i64, Announcement)> {
        let Some(journal) = &self.shared.journal else {
            return Vec::new();
        };
        match journal.owed_notifications().await {
            Ok(owed) => owed,
            Err(err) => {
                tracing::error!(error = %err, "Could not read the notifications owed from the journal.");
                Vec::new()
            }
        }
    }

    /// Queues `owed` ([`Notifier::read_owed`]) for the webhooks configured
    /// now, waiting for room in each queue; those no webhook wants any
    /// more are settled. Returns how many were queued.
    pub async fn queue_owed(&self, owed: Vec<(i64, Announcement)>) -> usize {
        let mut queued = 0;
        for (id, change) in owed {
            if self.wants(&change) {
                queued += 1;
            }
            self.queue_change(change, Some(id)).await;
        }
        if queued > 0 {
            tracing::info!(
                queued,
                "Delivering the notifications owed from before the last stop."
            );
        }
        queued
    }

    /// Whether some webhook configured now wants `change` (so it is worth
    /// keeping in the outbox).
    pub fn wants(&self, change: &Announcement) -> bool {
        self.lanes.load().wanting(change).next().is_some()
    }

    /// The delivery of `change` to the webhooks in force that want it, with
    /// their lanes; `None` (and the change settled) when none does.
    fn delivery(
        &self,
        change: Announcement,
        owed: Option<i64>,
    ) -> Option<(Arc<Lanes>, Arc<Delivery>)> {
        let lanes = self.lanes.load_full();
        let wanting = lanes.wanting(&change).count();
        if wanting == 0 {
            self.settle_later(owed);
            return None;
        }
        self.shared.pending.add();
        let job = Arc::new(Delivery {
            change,
            owed,
            remaining: AtomicUsize::new(wanting),
            dropped: std::sync::atomic::AtomicBool::new(false),
        });
        Some((lanes, job))
    }

    async fn queue_change(&self, change: Announcement, owed: Option<i64>) {
        let Some((lanes, job)) = self.delivery(change, owed) else {
            return;
        };
        for lane in lanes.wanting(&job.change) {
            // Waits for room (a large backlog after a long outage).
            if lane.queue.send(job.clone()).await.is_err() {
                self.shared.finish(&job).await;
            }
        }
    }

    /// Waits until every change queued so far is delivered or given up on,
    /// `within` at most (a graceful shutdown: the delivery task dies with
    /// the process). Returns how many were still waiting.
    pub async fn drain(&self, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let idle = self.shared.pending.idle.notified();
            tokio::pin!(idle);
            // Registered before the count is read, so a change handled in
            // between still wakes this wait.
            idle.as_mut().enable();
            let waiting = self.shared.pending.count.load(Ordering::Acquire);
            if waiting == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.shared.pending.count.load(Ordering::Acquire);
            }
        }
    }

    /// Tells later changes to `webhooks` (a config reload); changes already
    /// waiting go where they were going.
    pub fn replace(&self, webhooks: Webhooks) {
        self.lanes
            .store(Arc::new(Lanes::start(&webhooks, &self.shared)));
    }

    /// Queues `change` for delivery to the webhooks that want it; never
    /// waits. `owed`: its id in the journal's outbox, settled once it is
    /// handled (or dropped).
    pub fn notify(&self, change: Announcement, owed: Option<i64>) {
        let Some((lanes, job)) = self.delivery(change, owed) else {
            return;
        };
        for lane in lanes.wanting(&job.change) {
            if lane.queue.try_send(job.clone()).is_err() {
                // This webhook is far behind; the others still get it, and
                // the outbox keeps it for a restart to tell again.
                job.dropped.store(true, Ordering::Release);
                self.shared.telemetry.notification("dropped");
                tracing::warn!(
                    url = %lane.webhook.shown,
                    scaler = %job.change.scaler,
                    "A notification was dropped for this webhook: {QUEUE} are already waiting for it; the journal keeps it for the next start."
                );
                let (shared, job) = (self.shared.clone(), job.clone());
                tokio::spawn(async move { shared.finish(&job).await });
            }
        }
    }

    fn settle_later(&self, owed: Option<i64>) {
        if let (Some(id), Some(journal)) = (owed, &self.shared.journal) {
            let journal = journal.clone();
            tokio::spawn(async move { settle(&journal, id).await });
        }
    }
}

/// Takes notification `id` out of `journal`'s outbox; a failure is logged
/// (the change is told again after a restart).
async fn settle(journal: &Journal, id: i64) {
    if let Err(err) = journal.settle_notification(id).await {
        tracing::warn!(
            id, error = %err,
            "Could not take a delivered notification out of the journal; it will be sent again after a restart."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_or_a_date() {
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let header = |value: &str| {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(
                reqwest::header::RETRY_AFTER,
                reqwest::header::HeaderValue::from_str(value).unwrap(),
            );
            retry_after(&headers, now)
        };
        assert_eq!(header("7"), Some(Duration::from_secs(7)));
        assert_eq!(header(" 0 "), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(header(&later), Some(Duration::from_secs(90)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(header(&past), Some(Duration::ZERO));
        assert_eq!(header("soon"), None);
        assert_eq!(header("-3"), None);
        assert_eq!(retry_after(&reqwest::header::HeaderMap::new(), now), None);
    }

    #[test]
    fn a_webhook_built_from_config_posts_with_its_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let (token, key) = (dir.path().join("token"), dir.path().join("key"));
        std::fs::write(&token, "t2").unwrap();
        std::fs::write(&key, "k1").unwrap();
        let config: NotificationConfig = toml::from_str(&format!(
            "url = \"http://127.0.0.1:9/hook\"\nbearer_token = {{ file = {token:?} }}\n\
             headers = {{ X-Api-Key = {{ file = {key:?} }}, X-Team = \"a\" }}\n",
        ))
        .unwrap();
        let built = Webhooks::build(&[config]).unwrap();
        let hook = &built.0[0];
        let request = hook.client.post(&hook.url).build().unwrap();
        let headers = request.headers();
        assert_eq!(headers["authorization"], "Bearer t2");
        assert_eq!(headers["x-api-key"], "k1");
        let debug = format!("{built:?}");
        assert!(!debug.contains("t2") && !debug.contains("k1"), "{debug}");
    }

    fn change(error: Option<&str>) -> Announcement {
        Announcement {
            time_ms: 1_700_000_000_000,
            scaler: "web".into(),
            target_kind: "kubernetes".into(),
            target_name: "shop/web".into(),
            from: 2,
            to: 4,
            reason: "2 → 4 — target-tracking: cpu 92.0 vs target 60.0".into(),
            error: error.map(Into::into),
            record: Some(7),
        }
    }

    /// A webhook nobody listens at: three attempts, 1 s and 2 s apart.
    fn unreachable_webhook() -> Webhooks {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Webhooks::build(&[NotificationConfig {
            url: format!("http://127.0.0.1:{port}/hook"),
            events: vec![NotifyEvent::Scaled, NotifyEvent::Failed],
            scalers: Vec::new(),
            format: NotifyFormat::default(),
            bearer_token: None,
            headers: Default::default(),
            timeout: Duration::from_secs(1),
            ca_file: None,
            client_cert: None,
            client_key: None,
        }])
        .unwrap()
    }

    #[tokio::test]
    async fn drain_waits_for_the_changes_queued_and_no_longer() {
        let telemetry = Arc::new(Telemetry::new());
        let idle = Notifier::start(Webhooks::build(&[]).unwrap(), telemetry.clone(), None);
        assert_eq!(
            idle.drain(Duration::from_secs(5)).await,
            0,
            "nothing queued"
        );

        let notifier = Notifier::start(unreachable_webhook(), telemetry.clone(), None);
        notifier.notify(change(None), None);
        let started = std::time::Instant::now();
        assert_eq!(notifier.drain(Duration::from_millis(200)).await, 1);
        assert!(started.elapsed() < Duration::from_secs(1));
        // Given up on after its three attempts (1 s and 2 s apart).
        assert_eq!(notifier.drain(Duration::from_secs(20)).await, 0);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(2900), "{took:?}");
        let metrics = telemetry.encode();
        assert!(
            metrics.contains("scalewise_notifications_total{result=\"failed\"} 1"),
            "{metrics}"
        );
    }

    #[test]
    fn logs_show_a_webhooks_scheme_and_host_only() {
        assert_eq!(
            shown_url("https://hooks.slack.com/services/T0/B0/SECRET"),
            "https://hooks.slack.com"
        );
        assert_eq!(
            shown_url("http://user:pw@127.0.0.1:8080/hook?key=SECRET"),
            "http://127.0.0.1:8080"
        );
        let mut markup = change(None);
        markup.reason = "<!channel> & <http://x|y>".into();
        assert!(
            slack_text(&markup).ends_with("&lt;!channel&gt; &amp; &lt;http://x|y&gt;"),
            "{}",
            slack_text(&markup)
        );
    }

    #[test]
    fn a_change_reads_as_json_and_as_one_line() {
        let scaled = change(None);
        assert_eq!(
            payload(&scaled),
            serde_json::json!({
                "time": "2023-11-14T22:13:20.000Z",
                "event": "scaled",
                "scaler": "web",
                "target": {"kind": "kubernetes", "name": "shop/web"},
                "from": 2,
                "to": 4,
                "reason": "2 → 4 — target-tracking: cpu 92.0 vs target 60.0",
                "record": 7
            })
        );
        assert_eq!(
            text(&scaled),
            "Scalewise: web (kubernetes shop/web) 2 → 4: 2 → 4 — target-tracking: cpu 92.0 vs \
             target 60.0"
        );
        let failed = change(Some("forbidden"));
        assert_eq!(payload(&failed)["event"], "failed");
        assert_eq!(payload(&failed)["error"], "forbidden");
        assert!(
            text(&failed)
                .starts_with("Scalewise: web (kubernetes shop/web) 2 → 4 FAILED: forbidden"),
            "{}",
            text(&failed)
        );
    }
}
