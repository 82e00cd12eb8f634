//! The HTTP API: the router, bearer auth for `/api/v1/*`, the admin handlers, the push webhooks,
//! the error type every handler answers with, and the listener that serves the router within
//! connection limits. Handlers talk to the queue and the store only.

mod access;
mod admin;
mod auth;
pub mod error;
pub mod listener;
pub mod tls;
pub mod types;
pub mod webhook;

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{middleware, Json, Router};

use crate::host::Redactor;
use crate::metrics::Metrics;
use crate::pipeline::queue::Queue;
use types::Health;

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiState {
    pub queue: Queue,
    pub admin_token: Arc<String>,
    pub redactor: Redactor,
    /// Cancelled when the server stops: long answers (log follow streams) end with it.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Where the webhook intake counts deliveries and runtime-status notes drift.
    pub metrics: Metrics,
}

pub fn router(state: ApiState) -> Router {
    let admin = Router::new()
        .route("/apps", get(admin::list_apps))
        .route("/apps/{app}/deploy", post(admin::trigger_deploy))
        .route("/apps/{app}/progress", get(admin::progress))
        .route("/apps/{app}/runtime-status", get(admin::runtime_status))
        .route("/apps/{app}/deploys", get(admin::history))
        .route("/apps/{app}/deliveries", get(admin::deliveries))
        .route("/deploys/{id}", get(admin::get_deploy))
        .route("/deploys/{id}/logs", get(admin::logs))
        .route("/deploys/{id}/approve", post(admin::approve))
        .route("/deploys/{id}/cancel", post(admin::cancel))
        .fallback(admin::no_route)
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(webhook::routes())
        .nest("/api/v1", admin)
        .fallback(admin::no_route)
        .layer(middleware::map_response(error::json_errors))
        .layer(middleware::from_fn(access::log))
        .with_state(state)
}

/// 200 `ok`, or 503 `degraded` while storage fails (full disk, I/O errors, a deploy whose end is
/// still to be recorded): a monitor sees it without reading the log.
async fn healthz(State(state): State<ApiState>) -> (StatusCode, Json<Health>) {
    let storage = state.queue.store().health();
    let (code, status) =
        if storage.ok { (StatusCode::OK, "ok") } else { (StatusCode::SERVICE_UNAVAILABLE, "degraded") };
    (code, Json(Health { status: status.into(), version: env!("CARGO_PKG_VERSION").into(), storage }))
}
