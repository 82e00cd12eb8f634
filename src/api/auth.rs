//! Bearer-token auth for `/api/v1/*`, compared in constant time: the admin token may do
//! everything, the viewer token (when one is set) only reads — it gets 403 on anything but GET.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::error::ApiError;

/// The tokens the API takes.
#[derive(Clone, Default)]
pub struct Tokens {
    pub admin: Arc<String>,
    /// Read-only: `KUA_VIEWER_TOKEN` or `--viewer-token-file`; none unless given.
    pub viewer: Option<Arc<String>>,
}

/// Takes the tokens alone (not the whole `ApiState`), so the routes can be built, and
/// documented, without a running queue.
pub async fn require_token(State(tokens): State<Tokens>, req: Request, next: Next) -> Result<Response, ApiError> {
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token);
    let is_viewer = |t: &str| tokens.viewer.as_ref().is_some_and(|v| bool::from(t.as_bytes().ct_eq(v.as_bytes())));
    match given {
        Some(token) if bool::from(token.as_bytes().ct_eq(tokens.admin.as_bytes())) => Ok(next.run(req).await),
        Some(token) if is_viewer(token) => {
            if req.method() == Method::GET || req.method() == Method::HEAD {
                Ok(next.run(req).await)
            } else {
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "the viewer token only reads; use the admin token to change anything",
                ))
            }
        }
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the bearer token is wrong")),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing `Authorization: Bearer <token>` header (the admin token from KUA_ADMIN_TOKEN or the token file)",
        )),
    }
}

/// The token of an `Authorization` value with the Bearer scheme. Auth schemes are case-insensitive
/// (RFC 9110 §11.1), so `bearer` and `BEARER` count too; the scheme and token are separated by
/// one or more spaces.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        for value in ["Bearer tok", "bearer tok", "BEARER tok", "bEaReR   tok ", " Bearer tok"] {
            assert_eq!(bearer_token(value), Some("tok"), "{value:?}");
        }
    }

    #[test]
    fn other_schemes_and_a_bare_token_are_not_a_bearer_token() {
        for value in ["Basic dG9rCg==", "tok", "Bearer", "Bearer ", "Bearertok", "Bearer-x tok", ""] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }
}
