//! API errors, always answered as JSON: `{"error": {"code": ..., "message": ...}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered by the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The endpoint exists but not with this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A write without the API token, or with a wrong one.
    #[error("{0}")]
    Unauthorized(String),
    /// A write this API does not take from where it came.
    #[error("{0}")]
    Forbidden(String),
    /// A write to a replica that does not lead (leader election).
    #[error("{0}")]
    NotLeader(String),
    /// Something failed inside the host.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotLeader(_) => (StatusCode::CONFLICT, "not_leader"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = json!({ "error": { "code": code, "message": self.to_string() } });
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static(r#"Bearer realm="scalewise""#),
            );
        }
        response
    }
}
