//! Route handlers.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ApiError, AppState};
use crate::daemon::ConfigStatus;
use crate::journal::TickRecord;
use crate::leader::RecordError;
use crate::policy::PolicyInfo;
use crate::scaler::{ScalerHandle, ScalerStatus};

/// The one segment a route's path captures (a scaler's name, a record's
/// id), refused as a JSON error like every other: axum's own rejection of a
/// segment that is not UTF-8 once decoded (`/v1/scalers/%FF`) is plain text.
#[derive(Debug)]
pub struct Segment(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(segment)| Segment(segment))
            .map_err(|rejection| ApiError::BadRequest(format!("path: {}", rejection.body_text())))
    }
}

/// Liveness: the process answers.
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: every scaler has been started.
pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response()
    }
}

/// The host's own metrics, Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.telemetry.encode(),
    )
        .into_response()
}

/// The dashboard page.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The dashboard's Content-Security-Policy: its one inline script, allowed
/// by its hash, and nothing else that runs (no inline handlers, no other
/// script, no plugin, no `<base>`); requests to this origin only. A policy's
/// text the page fails to escape still cannot run. Never inside another
/// site's frame: a framed dashboard sends its pause and resume from its own
/// origin, which the write guard takes (clickjacking).
fn dashboard_csp() -> &'static str {
    static CSP: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        use base64::Engine as _;
        use sha2::Digest as _;
        let script = DASHBOARD
            .split_once("<script>")
            .and_then(|(_, rest)| rest.split_once("</script>"))
            .map_or("", |(script, _)| script);
        // Browsers hash the script with its line breaks as LF (a checkout
        // that turned them into CRLF would otherwise block it).
        let script = script.replace("\r\n", "\n");
        let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script));
        format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'"
        )
    });
    &CSP
}

pub async fn dashboard() -> impl axum::response::IntoResponse {
    use axum::http::header;
    (
        [
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CONTENT_SECURITY_POLICY, dashboard_csp()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        Html(DASHBOARD),
    )
}

/// Every scaler's status.
pub async fn list_scalers(State(state): State<AppState>) -> Json<Vec<ScalerStatus>> {
    Json(
        state
            .scalers
            .load()
            .values()
            .map(|h| status_of(h))
            .collect(),
    )
}

/// One scaler's status.
pub async fn get_scaler(
    State(state): State<AppState>,
    Segment(name): Segment,
) -> Result<Json<ScalerStatus>, ApiError> {
    let handle = scaler(&state, &name)?;
    Ok(Json(status_of(&handle)))
}

/// Query parameters of the decisions endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionsQuery {
    /// Oldest time, in ms since the epoch or RFC 3339.
    since: Option<String>,
    /// Newest time, in ms since the epoch or RFC 3339.
    until: Option<String>,
    /// At most this many records (default 100, at most 1000). Text, so
    /// that a bad value gets the same message as an out-of-range one.
    limit: Option<String>,
}

/// A scaler's decisions from the journal, newest first.
pub async fn scaler_decisions(
    State(state): State<AppState>,
    Segment(name): Segment,
    query: Result<Query<DecisionsQuery>, QueryRejection>,
) -> Result<Json<Vec<TickRecord>>, ApiError> {
    let configured = scaler(&state, &name);
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let since = q
        .since
        .as_deref()
        .map(|t| parse_time("since", t))
        .transpose()?;
    let until = q
        .until
        .as_deref()
        .map(|t| parse_time("until", t))
        .transpose()?;
    if let (Some(since), Some(until)) = (since, until)
        && since > until
    {
        return Err(ApiError::BadRequest(format!(
            "since ({since}) is after until ({until}): no record can match"
        )));
    }
    let limit = parse_limit(q.limit.as_deref(), 100, 1000)?;
    let records = state
        .journal
        .query(crate::journal::Query {
            scaler: Some(name.clone()),
            since_ms: since,
            until_ms: until,
            limit,
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if records.is_empty() {
        known_to_journal(&state, &name, configured).await?;
    }
    Ok(Json(records))
}

/// For a scaler's journal reads: `Ok` if it is configured, or if the
/// journal still holds ticks of it (a scaler since removed from the config:
/// its decisions stay readable until retention deletes them); the
/// configured lookup's 404 otherwise.
async fn known_to_journal(
    state: &AppState,
    name: &str,
    configured: Result<Arc<ScalerHandle>, ApiError>,
) -> Result<(), ApiError> {
    let Err(not_found) = configured else {
        return Ok(());
    };
    let newest = state
        .journal
        .summaries(name, 1)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if newest.is_empty() {
        Err(not_found)
    } else {
        Ok(())
    }
}

/// Query parameters of the history endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// At most this many ticks (default 200, at most 10,000).
    limit: Option<String>,
}

/// A scaler's newest ticks as summaries (time, mode, current, desired,
/// recommendation, actuation), oldest first: what a chart needs, read from
/// the journal's indexed columns without decoding records.
pub async fn scaler_history(
    State(state): State<AppState>,
    Segment(name): Segment,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Vec<crate::journal::TickSummary>>, ApiError> {
    let configured = scaler(&state, &name);
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = parse_limit(q.limit.as_deref(), 200, 10_000)?;
    let ticks = state
        .journal
        .summaries(&name, limit)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if ticks.is_empty() {
        // Configured, or a 404: the journal has no tick of it.
        configured?;
    }
    Ok(Json(ticks))
}

/// One journal record by id.
pub async fn get_decision(
    State(state): State<AppState>,
    Segment(id): Segment,
) -> Result<Json<TickRecord>, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("decision id must be a number, got {id:?}")))?;
    state
        .journal
        .get(id)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no decision with id {id}")))
}

/// One journal record in words, as `scalewise journal explain` prints it
/// (plain text, a line each).
pub async fn explain_decision(
    state: State<AppState>,
    id: Segment,
) -> Result<([(header::HeaderName, &'static str); 1], String), ApiError> {
    let Json(record) = get_decision(state, id).await?;
    let text: String = crate::journal::explain(&record)
        .iter()
        .map(|line| format!("{}\n", crate::runtime::log_safe(line)))
        .collect();
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text))
}

/// Pauses a scaler: it keeps ticking and journaling, but holds.
pub async fn pause_scaler(
    State(state): State<AppState>,
    Segment(name): Segment,
) -> Result<Json<ScalerStatus>, ApiError> {
    set_paused_detached(state, name, true).await
}

/// Resumes a paused scaler.
pub async fn resume_scaler(
    State(state): State<AppState>,
    Segment(name): Segment,
) -> Result<Json<ScalerStatus>, ApiError> {
    set_paused_detached(state, name, false).await
}

/// [`set_paused`] on a task of its own: a request given up half way (a
/// client or proxy timing out, a shutdown) must not leave the Lease and the
/// journal saying one thing and the running flag another.
async fn set_paused_detached(
    state: AppState,
    name: String,
    paused: bool,
) -> Result<Json<ScalerStatus>, ApiError> {
    tokio::spawn(async move { set_paused(&state, &name, paused).await })
        .await
        .unwrap_or_else(|e| {
            Err(ApiError::Internal(format!(
                "recording the pause flag failed ({e}); see the log"
            )))
        })
}

/// A loaded module, as `/v1/policies` shows it.
#[derive(Debug, Serialize)]
pub struct ModuleView {
    /// Module name.
    name: String,
    /// sha256 of its bytes.
    digest: String,
    /// What it says about itself.
    info: PolicyInfo,
    /// `compiled` at load, or from the on-disk `cache`.
    origin: &'static str,
    /// How long loading took, in ms.
    load_ms: f64,
    /// The last error loading a newer version of it, if any.
    last_error: Option<String>,
}

/// Loaded policy modules, modules that failed to load, and modules deleted
/// from the folder.
pub async fn list_policies(State(state): State<AppState>) -> Json<serde_json::Value> {
    let snapshot = state.registry.snapshot();
    let modules: Vec<ModuleView> = snapshot
        .modules
        .iter()
        .map(|(name, module)| ModuleView {
            name: name.clone(),
            digest: module.digest().to_owned(),
            info: module.info().clone(),
            origin: module.origin().as_str(),
            load_ms: module.load_time().as_secs_f64() * 1e3,
            last_error: snapshot.failures.get(name).map(|f| f.error.clone()),
        })
        .collect();
    let removed: Vec<serde_json::Value> = snapshot
        .removed
        .iter()
        .map(|(name, r)| {
            json!({
                "name": name,
                "path": r.path.display().to_string(),
                "digest": r.digest,
                "deleted_at_ms": r.at_ms,
            })
        })
        .collect();
    let failures: Vec<serde_json::Value> = snapshot
        .failures
        .iter()
        .map(|(name, f)| {
            json!({
                "name": name,
                "path": f.path.display().to_string(),
                "kind": f.kind,
                "error": f.error,
                "at_ms": f.at_ms,
                "digest": f.digest,
                "serving_previous": snapshot.modules.contains_key(name),
                "serving_digest": snapshot.modules.get(name).map(|m| m.digest()),
            })
        })
        .collect();
    Json(json!({
        "generation": snapshot.generation,
        "modules": modules,
        "failures": failures,
        "removed": removed,
    }))
}

/// The config applied, whether it reloads, settings awaiting a restart, and
/// the last refused reload with its located problems.
pub async fn config_status(State(state): State<AppState>) -> Json<ConfigStatus> {
    Json((**state.config.load()).clone())
}

/// Leader election as this replica sees it: `{"election", "leading",
/// "leader"}` (`leader`: the Lease's holder, when known).
pub async fn leader(State(state): State<AppState>) -> Json<serde_json::Value> {
    let l = &state.leadership;
    Json(serde_json::json!({
        "election": l.is_elected(),
        "leading": l.is_leading(),
        "leader": l.leader(),
    }))
}

/// Unknown routes answer JSON too.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

/// An endpoint asked with a method it does not take.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} does not take {method}", uri.path()))
}

fn scaler(state: &AppState, name: &str) -> Result<Arc<ScalerHandle>, ApiError> {
    state
        .scalers
        .load()
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("no scaler named {name:?}")))
}

fn status_of(handle: &ScalerHandle) -> ScalerStatus {
    let mut status = (**handle.status.load()).clone();
    status.paused = handle.is_paused();
    status
}

/// How long a pause or resume may take to reach the Lease (and twice that
/// to wait for another in progress).
pub(crate) const LEASE_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn set_paused(
    state: &AppState,
    name: &str,
    paused: bool,
) -> Result<Json<ScalerStatus>, ApiError> {
    let handle = scaler(state, name)?;
    // A follower's flag would change nothing the leader does: say so,
    // rather than answer as if the scaler were paused.
    let verb = if paused { "pause" } else { "resume" };
    let not_leader = |leader: Option<String>| {
        ApiError::NotLeader(match leader {
            Some(leader) => format!(
                "this replica does not act ({leader:?} holds the lease): {verb} {name:?} on \
                 the leader, or set `paused` in the config, which every replica reads"
            ),
            None => format!(
                "this replica does not act and no leader is known yet: {verb} {name:?} on the \
                 leader once there is one, or set `paused` in the config, which every replica \
                 reads"
            ),
        })
    };
    if !state.leadership.is_leading() {
        return Err(not_leader(state.leadership.leader()));
    }
    // A change the scaler is making is made first, and none starts until
    // the flag is set (taken before PAUSES, which is then held only for
    // the writes below).
    let _acting = handle.acting().await;
    // One change of a flag at a time: two requests crossing would leave the
    // Lease, the journal and the running flag disagreeing.
    // Each wait bounded: an API server that does not answer must not hold
    // every later pause back.
    let _one = tokio::time::timeout(2 * LEASE_WRITE_TIMEOUT, crate::daemon::PAUSES.lock())
        .await
        .map_err(|_| {
            ApiError::Internal(
                "another pause or resume is still being recorded; nothing changed, try again"
                    .to_owned(),
            )
        })?;
    // In the Lease first, so that the flag outlasts this replica: whoever
    // leads next applies it before acting.
    let scalers = state.scalers.load();
    let recorded = tokio::time::timeout(
        LEASE_WRITE_TIMEOUT,
        state
            .leadership
            .record_pause(name, paused, |n| scalers.contains_key(n)),
    )
    .await
    .unwrap_or_else(|_| {
        Err(RecordError::Failed(format!(
            "no answer within {} (the API server may still take it)",
            humantime::format_duration(LEASE_WRITE_TIMEOUT)
        )))
    });
    recorded.map_err(|e| match e {
        RecordError::NotLeader(holder) => not_leader(holder),
        RecordError::Failed(why) => ApiError::Internal(format!(
            "cannot record the pause flag in the lease, where the next leader reads it \
             ({why}); not applied here"
        )),
    })?;
    // The Lease holds the flag now, so the next leader applies it: this
    // replica applies it too, even if its journal cannot record it (a full
    // disk during an incident must not leave a pause half made).
    let persisted = state.journal.set_paused(name, paused).await;
    handle.paused.store(paused, Ordering::Relaxed);
    let done = if paused { "paused" } else { "resumed" };
    if let Err(e) = persisted {
        tracing::error!(scaler = %name, paused, error = %e, "A scaler was {done} through the API, but the journal could not record it: a restart of this replica would not keep it.");
        return Err(ApiError::Internal(format!(
            "{name:?} is {done}, but the journal could not record it ({e}): a restart of this \
             replica would not keep it (with leader election, the Lease does); try again"
        )));
    }
    tracing::info!(scaler = %name, paused, "A scaler was {done} through the API.");
    Ok(Json(status_of(&handle)))
}

/// A `limit` query parameter: `default` when absent, else a whole number
/// in `1..=max` (text, so that every bad value gets this message).
fn parse_limit(text: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    let Some(text) = text else {
        return Ok(default);
    };
    text.parse::<usize>()
        .ok()
        .filter(|l| (1..=max).contains(l))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "limit must be a whole number between 1 and {max}, got {text:?}"
            ))
        })
}

fn parse_time(field: &str, text: &str) -> Result<i64, ApiError> {
    crate::clock::parse_time_ms(text).map_err(|e| {
        // A `+` of an offset left unencoded in the query arrives as a space.
        let hint = if text.contains(' ') {
            " (a `+` in a URL's query is read as a space: write the offset's + as %2B)"
        } else {
            ""
        };
        ApiError::BadRequest(format!("{field}: {e}{hint}"))
    })
}
