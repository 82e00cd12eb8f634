//! The OpenAPI document, `GET /api/v1/openapi.json`. Its operations come from the handlers'
//! `#[utoipa::path]` attributes, collected by the same `routes!` calls that build the router
//! (`super::routes`), and its schemas from the request and response types themselves; this file
//! adds what is common to all: the info, the auth schemes and the error answers every operation
//! can give.

use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use super::types::ErrorBody;

/// Security scheme names, as handlers' `security(...)` name them.
pub const ADMIN_TOKEN: &str = "admin_token";
pub const WEBHOOK_SCHEMES: [(&str, &str, &str); 4] = [
    ("forgejo_signature", "X-Forgejo-Signature", "hex HMAC-SHA256 of the JSON payload with the app's webhook secret"),
    ("gitea_signature", "X-Gitea-Signature", "hex HMAC-SHA256 of the JSON payload with the app's webhook secret"),
    ("github_signature", "X-Hub-Signature-256", "`sha256=` and the hex HMAC-SHA256 of the body as sent"),
    ("gitlab_token", "X-Gitlab-Token", "the app's webhook secret itself, as GitLab sends it"),
];

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kua-deploy",
        description = "Deploy orchestrator for Docker Compose apps: trigger deploys, follow them, read \
                       their history and logs, and receive push webhooks. Every error answer is \
                       `{\"error\": {\"code\", \"message\"}}`.",
        license(name = "MIT")
    ),
    modifiers(&SecuritySchemes),
    components(schemas(ErrorBody)),
    tags(
        (name = "apps", description = "the apps of the registry and their deploys"),
        (name = "deploys", description = "one deploy: its state, its log, approve and cancel"),
        (name = "webhooks", description = "push webhooks; the signature (GitLab: the token) is the authentication"),
        (name = "server", description = "health and this document; no token"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            ADMIN_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("the admin token (KUA_ADMIN_TOKEN or the token file)"))
                    .build(),
            ),
        );
        for (name, header, what) in WEBHOOK_SCHEMES {
            components.add_security_scheme(
                name,
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(header, what))),
            );
        }
    }
}

/// Adds the answers every operation can give besides its own: 401 where a credential is needed
/// (the auth middleware and the webhooks' checks answer it before the handler runs), 403 on the
/// admin API's POSTs (the viewer token only reads) and 500. An answer a handler documents itself
/// is left as it is.
pub fn finish(mut doc: Document) -> Document {
    let error = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name(ErrorBody::name()))).build(),
                )
                .build(),
        )
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        if path.starts_with("/api/v1/") {
            if let Some(op) = item.post.as_mut() {
                op.responses.responses.entry("403".into()).or_insert_with(|| {
                    error("`forbidden`: the viewer token only reads; use the admin token. Nothing was done")
                });
            }
        }
        for op in operations(item) {
            let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
            let responses = &mut op.responses.responses;
            if secured {
                responses
                    .entry("401".into())
                    .or_insert_with(|| error("`unauthorized`: the credential is missing or wrong; nothing was done"));
            }
            responses.entry("500".into()).or_insert_with(|| error("`internal`: a fault of the server, logged"));
        }
    }
    doc
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch, &mut item.head]
        .into_iter()
        .filter_map(Option::as_mut)
}

/// The document as served: serialized once, when the router is built.
#[derive(Clone)]
pub struct Served(Bytes);

impl Served {
    pub fn new(doc: &Document) -> Self {
        Served(doc.to_pretty_json().expect("the OpenAPI document serializes").into())
    }
}

/// This document: every route, its parameters, bodies and answers, and the auth schemes.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "server",
    operation_id = "openapi",
    responses((status = 200, description = "the OpenAPI 3.1 document", content_type = "application/json", body = Object)),
)]
pub async fn document(Extension(doc): Extension<Served>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], doc.0).into_response()
}
