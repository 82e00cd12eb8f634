//! `ApiError`: every failure the API reports, mapped to a status and the spec's JSON shape
//! `{"error": {"code", "message"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::types::{ErrorBody, ErrorDetail};
use crate::model::DeployId;
use crate::pipeline::queue::QueueError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub deploy_id: Option<DeployId>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), deploy_id: None }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    pub fn internal(message: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {message}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("internal error: {message}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail { code: self.code.to_owned(), message: self.message, deploy_id: self.deploy_id },
        };
        (self.status, Json(body)).into_response()
    }
}

/// Answers that axum makes itself (a path segment that is not UTF-8, a wrong method, a body that
/// is not valid) come as plain text; this gives them the same JSON shape as every other error.
pub async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let text = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let (code, fallback) = match status {
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "this endpoint does not take that HTTP method"),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the body is too large"),
        StatusCode::NOT_FOUND => ("not_found", "no such endpoint"),
        s if s.is_server_error() => ("internal", "internal error"),
        _ => ("bad_request", "the request is not valid"),
    };
    let message = if text.trim().is_empty() { fallback.to_owned() } else { text.trim().to_owned() };
    ApiError::new(status, code, message).into_response()
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        match crate::store::storage_failure(&e) {
            Some(what) => {
                tracing::error!("state database: {what}: {e}");
                let msg = format!("{what} ({e}); try again once storage is fixed (GET /healthz says what fails)");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", msg)
            }
            None => ApiError::internal(format!("state database: {e}")),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        let message = e.to_string();
        match e {
            QueueError::UnknownApp(_) => ApiError::not_found("unknown_app", message),
            QueueError::InProgress { deploy_id, .. } => ApiError {
                deploy_id: Some(deploy_id),
                ..ApiError::new(StatusCode::CONFLICT, "deploy_in_progress", message)
            },
            QueueError::NoSuchDeploy(_) => ApiError::not_found("not_found", message),
            QueueError::AlreadyFinished { .. } => ApiError::new(StatusCode::CONFLICT, "already_finished", message),
            QueueError::CancelRefused(id) => {
                ApiError { deploy_id: Some(id), ..ApiError::new(StatusCode::CONFLICT, "cancel_refused", message) }
            }
            QueueError::NotAwaitingApproval { .. } => {
                ApiError::new(StatusCode::CONFLICT, "not_awaiting_approval", message)
            }
            QueueError::Unrecorded(id) => ApiError {
                deploy_id: Some(id),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", message)
            },
            QueueError::Store(e) => e.into(),
        }
    }
}
