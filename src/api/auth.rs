//! Bearer-token auth for `/api/v1/*`, compared in constant time.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::ApiState;

pub async fn require_token(State(state): State<ApiState>, req: Request, next: Next) -> Result<Response, ApiError> {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(token) if bool::from(token.as_bytes().ct_eq(state.admin_token.as_bytes())) => Ok(next.run(req).await),
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the bearer token is wrong")),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing `Authorization: Bearer <token>` header (the admin token from KUA_ADMIN_TOKEN or the token file)",
        )),
    }
}
