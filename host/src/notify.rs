//! Notifications: webhooks told of every change of replicas the scalers
//! make, and of every failure to make one (`[[notifications]]`).
//!
//! A scaler hands each change to the [`Notifier`] once the journal has its
//! outcome; a task of the notifier's own delivers it, so a slow or failing
//! endpoint never holds a tick. Each POST is tried three times (again after
//! 1 s and 2 s; a 4xx answer other than 408 and 429 is not retried); what
//! still fails is logged and counted (`scalewise_notifications_total{result}`).
//! At most [`QUEUE`] changes wait for delivery; more are dropped, counted and
//! logged. Dry-run scalers change nothing, so they notify nothing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::clock::format_ms;
use crate::config::{NotificationConfig, NotifyEvent, NotifyFormat};
use crate::telemetry::Telemetry;

/// Changes that may wait for delivery.
pub const QUEUE: usize = 1024;

/// Attempts per notification and webhook.
const ATTEMPTS: u32 = 3;

/// A change of replicas to tell, as the scaler saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notice {
    /// When the tick ran (RFC 3339).
    pub time: String,
    /// `scaled` or `failed`.
    pub event: &'static str,
    /// The scaler.
    pub scaler: String,
    /// The target's actuator kind and name.
    pub target: NoticeTarget,
    /// Replicas before.
    pub from: u32,
    /// Replicas asked for.
    pub to: u32,
    /// Why, as the log line says it.
    pub reason: String,
    /// The actuator's error, for `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The journal record of the tick, for `scalewise journal show`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<i64>,
}

/// What a notice's target is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NoticeTarget {
    /// `kubernetes`, `aws-asg`, `rebalance` or `simulator`.
    pub kind: String,
    /// Its name as the actuator knows it.
    pub name: String,
}

impl Notice {
    /// A notice of a tick at `time_ms`; `error` makes it a `failed` one.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        time_ms: i64,
        scaler: &str,
        target: NoticeTarget,
        from: u32,
        to: u32,
        reason: String,
        error: Option<String>,
        record: Option<i64>,
    ) -> Self {
        Notice {
            time: format_ms(time_ms),
            event: if error.is_some() { "failed" } else { "scaled" },
            scaler: scaler.to_owned(),
            target,
            from,
            to,
            reason,
            error,
            record,
        }
    }

    /// One line for a chat channel.
    pub fn text(&self) -> String {
        let head = format!(
            "Scalewise: {} ({} {}) {} → {}",
            self.scaler, self.target.kind, self.target.name, self.from, self.to
        );
        match &self.error {
            None => format!("{head}: {}", self.reason),
            Some(error) => format!("{head} FAILED: {error} ({})", self.reason),
        }
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
    fn wants(&self, notice: &Notice) -> bool {
        self.events.contains(notice.event)
            && (self.scalers.is_empty() || self.scalers.contains(&notice.scaler))
    }

    fn body(&self, notice: &Notice) -> serde_json::Value {
        match self.format {
            NotifyFormat::Json => serde_json::to_value(notice).unwrap_or_default(),
            NotifyFormat::Slack => serde_json::json!({ "text": notice.text() }),
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

/// Delivers notices to the configured webhooks, off the scalers' ticks.
#[derive(Debug)]
pub struct Notifier {
    queue: mpsc::Sender<Notice>,
    telemetry: Arc<Telemetry>,
}

impl Notifier {
    /// Starts delivering to `webhooks` on the current tokio runtime; `None`
    /// when there are none. Bearer tokens are read now.
    pub fn start(
        webhooks: &[NotificationConfig],
        telemetry: Arc<Telemetry>,
    ) -> Result<Option<Arc<Notifier>>, String> {
        if webhooks.is_empty() {
            return Ok(None);
        }
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
            let client = reqwest::Client::builder()
                .timeout(w.timeout)
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
        let (queue, mut notices) = mpsc::channel::<Notice>(QUEUE);
        let counts = telemetry.clone();
        tokio::spawn(async move {
            while let Some(notice) = notices.recv().await {
                for webhook in built.iter().filter(|w| w.wants(&notice)) {
                    match webhook.post(&webhook.body(&notice)).await {
                        Ok(()) => counts.notification("sent"),
                        Err(error) => {
                            counts.notification("failed");
                            tracing::warn!(
                                url = %webhook.url,
                                scaler = %notice.scaler,
                                %error,
                                "A notification could not be delivered after {ATTEMPTS} attempts."
                            );
                        }
                    }
                }
            }
        });
        Ok(Some(Arc::new(Notifier { queue, telemetry })))
    }

    /// Queues `notice` for delivery; never waits.
    pub fn notify(&self, notice: Notice) {
        if let Err(err) = self.queue.try_send(notice) {
            self.telemetry.notification("dropped");
            tracing::warn!(
                scaler = %err.into_inner().scaler,
                "A notification was dropped: {QUEUE} are already waiting for delivery."
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(error: Option<&str>) -> Notice {
        Notice::new(
            1_700_000_000_000,
            "web",
            NoticeTarget {
                kind: "kubernetes".into(),
                name: "shop/web".into(),
            },
            2,
            4,
            "2 → 4 — target-tracking: cpu 92.0 vs target 60.0".into(),
            error.map(Into::into),
            Some(7),
        )
    }

    #[test]
    fn a_notice_reads_as_json_and_as_one_line() {
        let scaled = notice(None);
        assert_eq!(
            serde_json::to_value(&scaled).unwrap(),
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
            scaled.text(),
            "Scalewise: web (kubernetes shop/web) 2 → 4: 2 → 4 — target-tracking: cpu 92.0 vs \
             target 60.0"
        );
        let failed = notice(Some("forbidden"));
        assert_eq!(failed.event, "failed");
        assert!(
            failed
                .text()
                .starts_with("Scalewise: web (kubernetes shop/web) 2 → 4 FAILED: forbidden"),
            "{}",
            failed.text()
        );
    }
}
