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

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        ApiError::internal(format!("state database: {e}"))
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
            QueueError::Store(e) => e.into(),
        }
    }
}
