//! The HTTP API: the router, bearer auth for `/api/v1/*`, the admin handlers, the push webhooks,
//! the error type every handler answers with, the OpenAPI document of all of it, and the listener
//! that serves the router within connection limits. Handlers talk to the queue and the store only.

mod access;
mod admin;
mod auth;
pub mod error;
pub mod listener;
pub mod openapi;
pub mod tls;
pub mod types;
pub mod webhook;

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{middleware, Extension, Json, Router};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::host::Redactor;
use crate::metrics::Metrics;
use crate::pipeline::queue::Queue;
use types::Health;

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiState {
    pub queue: Queue,
    pub admin_token: Arc<String>,
    /// The read-only token, if one is set.
    pub viewer_token: Option<Arc<String>>,
    pub redactor: Redactor,
    /// Cancelled when the server stops: long answers (log follow streams) end with it.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Where the webhook intake counts deliveries and runtime-status notes drift.
    pub metrics: Metrics,
}

pub fn router(state: ApiState) -> Router {
    let tokens = auth::Tokens { admin: state.admin_token.clone(), viewer: state.viewer_token.clone() };
    let (router, doc) = routes(tokens).split_for_parts();
    router
        .layer(Extension(openapi::Served::new(&openapi::finish(doc))))
        .fallback(admin::no_route)
        .layer(middleware::map_response(error::json_errors))
        .layer(middleware::from_fn(access::log))
        .with_state(state)
}

/// The OpenAPI document of every route, as `GET /api/v1/openapi.json` serves it.
pub fn document() -> utoipa::openapi::OpenApi {
    openapi::finish(routes(auth::Tokens::default()).into_openapi())
}

/// Every route, in one place. `routes!` takes each route's method and path from its handler's
/// `#[utoipa::path]` and adds its operation to the OpenAPI document, so the router and the
/// document are made from the same list and cannot disagree (a test checks nothing is routed
/// around it).
fn routes(tokens: auth::Tokens) -> OpenApiRouter<ApiState> {
    let admin = OpenApiRouter::new()
        .routes(routes!(admin::list_apps))
        .routes(routes!(admin::trigger_deploy))
        .routes(routes!(admin::progress))
        .routes(routes!(admin::runtime_status))
        .routes(routes!(admin::history))
        .routes(routes!(admin::deliveries))
        .routes(routes!(admin::get_deploy))
        .routes(routes!(admin::logs))
        .routes(routes!(admin::approve))
        .routes(routes!(admin::cancel))
        .fallback(admin::no_route)
        .layer(middleware::from_fn_with_state(tokens, auth::require_token));
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        // Under /api/v1 yet outside the nested router: the document needs no token.
        .routes(routes!(openapi::document))
        .routes(routes!(webhook::forgejo))
        .routes(routes!(webhook::gitea))
        .routes(routes!(webhook::github))
        .routes(routes!(webhook::gitlab))
        .nest("/api/v1", admin)
}

/// 200 `ok`, or 503 `degraded` while storage fails (full disk, I/O errors, a deploy whose end is
/// still to be recorded): a monitor sees it without reading the log.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "server",
    responses(
        (status = 200, description = "`ok`: the server runs and storage works", body = Health),
        (status = 503, description = "`degraded`: storage fails; `storage` says what", body = Health),
    ),
)]
async fn healthz(State(state): State<ApiState>) -> (StatusCode, Json<Health>) {
    let storage = state.queue.store().health();
    let (code, status) =
        if storage.ok { (StatusCode::OK, "ok") } else { (StatusCode::SERVICE_UNAVAILABLE, "degraded") };
    (code, Json(Health { status: status.into(), version: env!("CARGO_PKG_VERSION").into(), storage }))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// `(METHOD, path)` of every route a router serves. axum has no API that lists routes, so they
    /// are read from its `Debug` form (each route's `Allow` header and its path); a change of that
    /// form fails here loudly rather than finding nothing.
    fn served(router: &Router<ApiState>) -> BTreeSet<(String, String)> {
        let text = format!("{router:?}");
        let path_router = text.split("fallback_router:").next().expect("a path router");
        let (endpoints, node) = path_router.split_once("node: Node").expect("axum's Router Debug form changed");
        let methods: BTreeMap<&str, &str> = endpoints
            .split("RouteId(")
            .skip(1)
            .filter_map(|e| {
                let (id, rest) = e.split_once(')')?;
                let allow = rest.split_once("allow_header: Bytes(b\"")?.1.split('"').next()?;
                Some((id, allow))
            })
            .collect();
        let mut routes = BTreeSet::new();
        for entry in node.split("RouteId(").skip(1) {
            let (id, rest) = entry.split_once("): \"").expect("a route's path");
            let path = rest.split('"').next().unwrap();
            let allow = methods.get(id).unwrap_or_else(|| panic!("no methods found for route {path}: {text}"));
            // axum answers HEAD wherever it answers GET.
            for method in allow.split(',').filter(|m| *m != "HEAD") {
                routes.insert((method.to_owned(), path.to_owned()));
            }
        }
        assert!(routes.len() > 10, "found too few routes in the router's Debug form: {routes:?}\n{text}");
        routes
    }

    /// `(METHOD, path)` of every operation in the document.
    fn documented(doc: &utoipa::openapi::OpenApi) -> BTreeSet<(String, String)> {
        let doc = serde_json::to_value(doc).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        paths
            .iter()
            .flat_map(|(p, item)| item.as_object().unwrap().keys().map(|m| (m.to_uppercase(), p.clone())))
            .collect()
    }

    #[test]
    fn every_route_the_router_serves_is_in_the_openapi_document_and_nothing_else_is() {
        let (router, doc) = routes(auth::Tokens::default()).split_for_parts();
        let served = served(&router);
        let doc = openapi::finish(doc);
        let documented = documented(&doc);
        assert_eq!(served, documented, "the router and the OpenAPI document disagree");
        // The routes the spec's API table names.
        for (method, path) in [
            ("POST", "/api/v1/apps/{app}/deploy"),
            ("GET", "/api/v1/apps/{app}/progress"),
            ("GET", "/api/v1/apps/{app}/runtime-status"),
            ("GET", "/api/v1/apps"),
            ("GET", "/api/v1/apps/{app}/deploys"),
            ("GET", "/api/v1/apps/{app}/deliveries"),
            ("GET", "/api/v1/deploys/{id}"),
            ("GET", "/api/v1/deploys/{id}/logs"),
            ("POST", "/api/v1/deploys/{id}/approve"),
            ("POST", "/api/v1/deploys/{id}/cancel"),
            ("POST", "/webhook/forgejo"),
            ("POST", "/webhook/gitea"),
            ("POST", "/webhook/github"),
            ("POST", "/webhook/gitlab"),
            ("GET", "/healthz"),
            ("GET", "/api/v1/openapi.json"),
        ] {
            assert!(served.contains(&(method.to_owned(), path.to_owned())), "{method} {path} is not served");
        }
    }

    #[test]
    fn the_admin_api_needs_the_bearer_token_webhooks_their_signature_and_health_and_the_document_nothing() {
        let doc = serde_json::to_value(document()).unwrap();
        let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let names: BTreeSet<&str> = op["security"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|r| r.as_object().unwrap().keys().map(String::as_str))
                    .collect();
                let expected: BTreeSet<&str> = match path.as_str() {
                    "/healthz" | "/api/v1/openapi.json" => [].into(),
                    p if p.starts_with("/api/v1/") => [openapi::ADMIN_TOKEN].into(),
                    "/webhook/forgejo" | "/webhook/gitea" => ["forgejo_signature", "gitea_signature"].into(),
                    "/webhook/github" => ["github_signature"].into(),
                    "/webhook/gitlab" => ["gitlab_token"].into(),
                    other => panic!("{method} {other}: which credential does it need?"),
                };
                assert_eq!(names, expected, "{method} {path}");
                for name in &names {
                    assert!(schemes.contains_key(*name), "{method} {path}: scheme {name} is not defined");
                }
                let responses = op["responses"].as_object().unwrap();
                assert!(responses.contains_key("500"), "{method} {path}");
                assert_eq!(responses.contains_key("401"), !expected.is_empty(), "{method} {path}");
            }
        }
    }

    #[test]
    fn every_error_answer_is_documented_with_the_error_body() {
        let doc = document();
        let json = serde_json::to_value(&doc).unwrap();
        for (path, item) in json["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for (status, resp) in op["responses"].as_object().unwrap() {
                    let schema = &resp["content"]["application/json"]["schema"]["$ref"];
                    if status.starts_with('4') || (status.starts_with('5') && path != "/healthz") {
                        assert_eq!(schema, "#/components/schemas/ErrorBody", "{method} {path} {status}");
                    }
                }
            }
        }
    }
}
