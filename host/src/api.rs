//! The HTTP API: health, readiness, the host's metrics, scalers, decisions
//! from the journal, loaded policies, the config's reload status, and a
//! dashboard page.
//!
//! [`router`] builds the whole API from an [`AppState`], so tests drive it
//! in-process with `tower::ServiceExt::oneshot`.

mod error;
mod guard;
pub(crate) mod handlers;
mod peers;
pub mod serve;
pub mod tls;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arc_swap::ArcSwap;
use axum::Router;
use axum::routing::{get, post};

pub use error::ApiError;
pub use guard::ApiAccess;

use crate::daemon::ConfigStatus;
use crate::journal::Journal;
use crate::leader::Leadership;
use crate::registry::Registry;
use crate::scaler::ScalerHandle;
use crate::telemetry::Telemetry;

/// What the API serves from; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Every scaler, by name (swapped whole when a config reload adds or
    /// removes scalers).
    pub scalers: Arc<ArcSwap<BTreeMap<String, Arc<ScalerHandle>>>>,
    /// The loaded policy modules.
    pub registry: Arc<Registry>,
    /// The decision journal.
    pub journal: Journal,
    /// The host's metrics.
    pub telemetry: Arc<Telemetry>,
    /// Set once every scaler is running.
    pub ready: Arc<AtomicBool>,
    /// The config applied and the last refused reload.
    pub config: Arc<ArcSwap<ConfigStatus>>,
    /// Who may read, and who may pause and resume scalers.
    pub access: Arc<ApiAccess>,
    /// Whether this replica acts (leader election); a follower takes no
    /// writes.
    pub leadership: Leadership,
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    // Pausing and resuming change what the daemon does: guarded (see
    // `guard`). Everything else only reads.
    let writes = Router::new()
        .route("/v1/scalers/{name}/pause", post(handlers::pause_scaler))
        .route("/v1/scalers/{name}/resume", post(handlers::resume_scaler))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::writes,
        ));
    // What `[api] reads = "token"` closes.
    let reads = Router::new()
        .route("/v1/scalers", get(handlers::list_scalers))
        .route("/v1/scalers/{name}", get(handlers::get_scaler))
        .route(
            "/v1/scalers/{name}/decisions",
            get(handlers::scaler_decisions),
        )
        .route("/v1/scalers/{name}/history", get(handlers::scaler_history))
        .route("/v1/decisions/{id}", get(handlers::get_decision))
        .route(
            "/v1/decisions/{id}/explain",
            get(handlers::explain_decision),
        )
        .route("/v1/policies", get(handlers::list_policies))
        .route("/v1/config", get(handlers::config_status))
        .route("/v1/leader", get(handlers::leader))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::reads,
        ));
    Router::new()
        .merge(writes)
        .merge(reads)
        .route("/", get(handlers::dashboard))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .with_state(state)
}
