//! Notifications: webhooks told of every change of replicas the scalers
//! make, and of every failure to make one (`[[notifications]]`).
//!
//! A scaler hands each change to the [`Notifier`] once the journal has its
//! outcome; a task of the notifier's own delivers it, so a slow or failing
//! endpoint never holds a tick. Each POST is tried three times (again after
//! 1 s and 2 s; a 4xx answer other than 408 and 429 is not retried); what
//! still fails is logged and counted (`scalewise_notifications_total{result}`).
//! At most [`QUEUE`] changes wait for delivery; more are dropped, counted and
//! logged. Dry-run scalers change nothing, so they notify nothing. A config
//! reload replaces the webhooks whole ([`Notifier::replace`]): changes made
//! after it go to the new ones, changes already waiting to the old.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use crate::actuators::Announcement;
use crate::clock::format_ms;
use crate::config::{HeaderSetting, NotificationConfig, NotifyEvent, NotifyFormat};
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

/// One webhook, ready to post.
#[derive(Debug)]
struct Webhook {
    url: String,
    events: BTreeSet<&'static str>,
    scalers: BTreeSet<String>,
    format: NotifyFormat,
    token: Option<String>,
    client: reqwest::Client,
}

impl Webhook {
    fn wants(&self, a: &Announcement) -> bool {
        self.events.contains(event_of(a))
            && (self.scalers.is_empty() || self.scalers.contains(&a.scaler))
    }

    fn body(&self, a: &Announcement) -> serde_json::Value {
        match self.format {
            NotifyFormat::Json => payload(a),
            NotifyFormat::Slack => serde_json::json!({ "text": text(a) }),
        }
    }

    /// Posts `body`, trying again after a failure that may pass.
    async fn post(&self, body: &serde_json::Value) -> Result<(), String> {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
            }
            let mut request = self.client.post(&self.url).json(body);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            match request.send().await {
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
                }
                Err(err) => last = err.to_string(),
            }
        }
        Err(last)
    }
}

/// The configured webhooks, built (secrets read, clients made): what a
/// config reload swaps in whole.
#[derive(Debug, Default)]
pub struct Webhooks(Vec<Webhook>);

impl Webhooks {
    /// Builds `[[notifications]]`; bearer tokens and secret headers are
    /// read now, so a secret
    /// that cannot be read fails the start, or the reload, that names it.
    pub fn build(webhooks: &[NotificationConfig]) -> Result<Webhooks, String> {
        let mut built = Vec::with_capacity(webhooks.len());
        for (i, w) in webhooks.iter().enumerate() {
            let token = match &w.bearer_token {
                Some(secret) => Some(
                    secret
                        .resolve()
                        .map_err(|e| format!("notifications[{i}].bearer_token: {e}"))?,
                ),
                None => None,
            };
            let mut headers = reqwest::header::HeaderMap::new();
            for (header, setting) in &w.headers {
                let bad = |why: String| format!("notifications[{i}].headers.{header}: {why}");
                let name = reqwest::header::HeaderName::from_bytes(header.as_bytes())
                    .map_err(|e| bad(e.to_string()))?;
                let value = setting.resolve().map_err(|e| bad(e.to_string()))?;
                let mut value = reqwest::header::HeaderValue::from_str(&value)
                    .map_err(|_| bad("the value has characters HTTP does not allow".into()))?;
                // Kept out of debug output (reqwest's and ours).
                value.set_sensitive(matches!(setting, HeaderSetting::Secret(_)));
                headers.insert(name, value);
            }
            let client = reqwest::Client::builder()
                .timeout(w.timeout)
                .default_headers(headers)
                .build()
                .map_err(|e| format!("notifications[{i}]: cannot build the HTTP client: {e}"))?;
            built.push(Webhook {
                url: w.url.clone(),
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
                token,
                client,
            });
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

    fn wanting<'a>(&'a self, a: &'a Announcement) -> impl Iterator<Item = &'a Webhook> {
        self.0.iter().filter(|w| w.wants(a))
    }
}

/// Delivers changes to the configured webhooks, off the scalers' ticks.
#[derive(Debug)]
pub struct Notifier {
    /// Each change with the webhooks in force when it happened.
    queue: mpsc::Sender<(Announcement, Arc<Webhooks>)>,
    webhooks: ArcSwap<Webhooks>,
    telemetry: Arc<Telemetry>,
}

impl Notifier {
    /// Starts delivering to `webhooks` (none is fine: a reload may add
    /// some) on the current tokio runtime.
    pub fn start(webhooks: Webhooks, telemetry: Arc<Telemetry>) -> Arc<Notifier> {
        let (queue, mut changes) = mpsc::channel::<(Announcement, Arc<Webhooks>)>(QUEUE);
        let counts = telemetry.clone();
        tokio::spawn(async move {
            while let Some((change, webhooks)) = changes.recv().await {
                for webhook in webhooks.wanting(&change) {
                    match webhook.post(&webhook.body(&change)).await {
                        Ok(()) => counts.notification("sent"),
                        Err(error) => {
                            counts.notification("failed");
                            tracing::warn!(
                                url = %webhook.url,
                                scaler = %change.scaler,
                                %error,
                                "A notification could not be delivered after {ATTEMPTS} attempts."
                            );
                        }
                    }
                }
            }
        });
        Arc::new(Notifier {
            queue,
            webhooks: ArcSwap::from_pointee(webhooks),
            telemetry,
        })
    }

    /// Tells later changes to `webhooks` (a config reload); changes already
    /// waiting go where they were going.
    pub fn replace(&self, webhooks: Webhooks) {
        self.webhooks.store(Arc::new(webhooks));
    }

    /// Queues `change` for delivery to the webhooks that want it; never
    /// waits.
    pub fn notify(&self, change: Announcement) {
        let webhooks = self.webhooks.load_full();
        if webhooks.wanting(&change).next().is_none() {
            return;
        }
        if let Err(err) = self.queue.try_send((change, webhooks)) {
            self.telemetry.notification("dropped");
            tracing::warn!(
                scaler = %err.into_inner().0.scaler,
                "A notification was dropped: {QUEUE} are already waiting for delivery."
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
