//! The access log: one line per request, at the end of its answer's head — method, the route
//! template that matched (`/api/v1/deploys/{id}`, never the path as sent: no ids to correlate, no
//! query string, nothing a client chose), status and duration. Headers are never logged, so the
//! bearer token and webhook signatures cannot leak through it.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

/// What the access log names when no route matched (a 404 of the fallback).
pub const UNMATCHED: &str = "(unmatched)";

/// The middleware; the router adds it outermost, so the status is the one sent.
pub async fn log(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    // Set by the routing before any layer of the router runs, nested routes with their prefix.
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let started = Instant::now();
    let resp = next.run(req).await;
    tracing::info!(
        target: "kua_deploy::access",
        method = %method,
        route = route.as_deref().unwrap_or(UNMATCHED),
        status = resp.status().as_u16(),
        duration_ms = started.elapsed().as_micros() as f64 / 1000.0,
        "request"
    );
    resp
}
