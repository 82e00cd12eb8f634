//! Push webhooks: `POST /webhook/forgejo` (Forgejo and Gitea) and `POST /webhook/github`. The
//! signature is the authentication: it must verify, over the bytes received, with the secret of
//! an app configured for the payload's repository. A push to that app's branch queues a deploy of
//! exactly `after`; everything else is answered 202 with the reason. The answer comes at once —
//! the deploy runs later, from the queue.

pub mod payload;
pub mod signature;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::ApiError;
use super::listener::BodyReadTimeout;
use super::types::{AppResult, WebhookAnswer};
use super::ApiState;
use crate::config::AppConfig;
use crate::model::{now_rfc3339, Delivery, Trigger, TriggerSource};
use crate::pipeline::queue::Request as QueueRequest;
use crate::store::PushRecord;
use payload::PushRef;

/// The largest body read; a larger one is refused unread.
pub const MAX_BODY: usize = 5 * 1024 * 1024;

/// The header names one provider family uses.
struct Provider {
    /// Header families, in order of preference: (name in records, event, signature, delivery).
    families: &'static [(&'static str, &'static str, &'static str, &'static str)],
    /// GitHub prefixes its signature with `sha256=`.
    signature_prefix: &'static str,
    /// Forgejo and Gitea sign the JSON inside a form body; GitHub signs the body as sent.
    signs_form_payload: bool,
}

const FORGEJO: Provider = Provider {
    families: &[
        ("forgejo", "x-forgejo-event", "x-forgejo-signature", "x-forgejo-delivery"),
        ("gitea", "x-gitea-event", "x-gitea-signature", "x-gitea-delivery"),
    ],
    signature_prefix: "",
    signs_form_payload: true,
};

const GITHUB: Provider = Provider {
    families: &[("github", "x-github-event", "x-hub-signature-256", "x-github-delivery")],
    signature_prefix: "sha256=",
    signs_form_payload: false,
};

pub async fn forgejo(State(state): State<ApiState>, req: Request) -> Result<Response, ApiError> {
    receive(&state, &FORGEJO, req).await
}

pub async fn github(State(state): State<ApiState>, req: Request) -> Result<Response, ApiError> {
    receive(&state, &GITHUB, req).await
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

async fn read_body(body: Body, headers: &HeaderMap) -> Result<axum::body::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("the body is over {MAX_BODY} bytes"))
    };
    if header(headers, "content-length").and_then(|l| l.parse::<usize>().ok()).is_some_and(|l| l > MAX_BODY) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|e| {
        if BodyReadTimeout::caused(&e) {
            ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", e.to_string())
        } else {
            too_large()
        }
    })
}

async fn receive(state: &ApiState, provider: &Provider, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    let Some(&(name, event_h, sig_h, delivery_h)) =
        provider.families.iter().find(|(_, event_h, _, _)| headers.contains_key(*event_h))
    else {
        let expected: Vec<&str> = provider.families.iter().map(|f| f.1).collect();
        return Err(ApiError::bad_request(format!("no event header: expected one of {}", expected.join(", "))));
    };
    let event = header(headers, event_h).unwrap_or_default().chars().take(64).collect::<String>();
    let delivery_id = header(headers, delivery_h).map(|d| d.chars().take(100).collect::<String>());
    let body = read_body(body, headers).await?;
    let json =
        payload::json_of(header(headers, "content-type"), &body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let delivery = payload::parse(&json).map_err(|e| ApiError::bad_request(e.to_string()))?;

    let signed: &[u8] = if provider.signs_form_payload { &json } else { &body };
    let signature = header(headers, sig_h).unwrap_or_default();
    let signature = signature.strip_prefix(provider.signature_prefix).unwrap_or("");
    let apps: Vec<&AppConfig> = state
        .queue
        .registry()
        .apps
        .values()
        .filter(|a| a.webhook.as_ref().is_some_and(|w| w.repository.eq_ignore_ascii_case(&delivery.repository)))
        .collect();
    let reject = |why: &str| {
        tracing::warn!(provider = name, delivery = ?delivery_id, repository = %delivery.repository, "webhook refused: {why}");
        unauthorized(format!("{why}; nothing was queued"))
    };
    if signature.is_empty() {
        return Err(reject(&format!("missing or empty {sig_h} header")));
    }
    let mut any_secret = false;
    let verified: Vec<&AppConfig> = apps
        .into_iter()
        .filter(|a| {
            let Some(secret) = a.webhook.as_ref().and_then(|w| w.secret.read()) else { return false };
            any_secret = true;
            signature::verify(secret.as_bytes(), signed, signature)
        })
        .collect();
    if verified.is_empty() {
        return Err(reject(if any_secret {
            "the signature does not match the secret of any app configured for this repository"
        } else {
            "no app with a webhook secret is configured for this repository"
        }));
    }

    let record = |outcome: &str, reason: String| Delivery {
        id: delivery_id.clone(),
        provider: name.to_owned(),
        event: event.clone(),
        repository: delivery.repository.clone(),
        git_ref: delivery.raw_ref(),
        after: delivery.raw_after(),
        outcome: outcome.to_owned(),
        reason,
        deploy_id: None,
        received_at: now_rfc3339(),
    };
    let store = state.queue.store();
    let mut results = Vec::new();
    let push =
        if event == "push" { Some(delivery.push().map_err(|e| ApiError::bad_request(e.to_string()))?) } else { None };
    for app in verified {
        let ignore = |reason: String| -> Result<AppResult, ApiError> {
            store.insert_delivery(&app.name, &record("ignored", reason.clone()))?;
            Ok(AppResult {
                app: app.name.clone(),
                outcome: "ignored".into(),
                reason,
                deploy_id: None,
                superseded: vec![],
            })
        };
        let result = match &push {
            None => ignore(format!("event {event:?} does not deploy; only pushes do"))?,
            Some(p) if p.test_delivery => ignore(match &p.after {
                None => "a test delivery from an empty repository (`before` and `after` are both the zero id, \
                         as Gitea's \"Test Delivery\" sends): nothing to deploy"
                    .to_owned(),
                Some(c) => format!(
                    "a test delivery (`before` and `after` are both {}: the branch did not move): nothing to deploy",
                    c.short()
                ),
            })?,
            Some(p) => match (&p.target, &p.after) {
                (PushRef::Tag(t), _) => {
                    ignore(format!("tag {t} does not deploy; only pushes to branch {}", app.branch))?
                }
                (PushRef::Branch(b), None) => ignore(format!("branch {b} was deleted; nothing to deploy"))?,
                (PushRef::Branch(b), Some(_)) if b != &app.branch => {
                    ignore(format!("branch {b} is not the app's branch {}", app.branch))?
                }
                (PushRef::Branch(_), Some(after)) => {
                    let req = QueueRequest {
                        app: app.name.clone(),
                        trigger: Trigger {
                            source: TriggerSource::Webhook,
                            delivery: delivery_id.clone(),
                            git_ref: p.git_ref.clone(),
                            requested_commit: Some(after.clone()),
                        },
                        approve_migrations: false,
                        reason: Some(format!("{name} push of {} to {}", after.short(), p.git_ref)),
                    };
                    match state.queue.submit_push(req, record("", String::new()))? {
                        PushRecord::Queued { deploy_id, superseded } => AppResult {
                            app: app.name.clone(),
                            outcome: "queued".into(),
                            reason: format!("queued a deploy of {}", after.short()),
                            deploy_id: Some(deploy_id),
                            superseded,
                        },
                        PushRecord::Duplicate { deploy_id, reason } => AppResult {
                            app: app.name.clone(),
                            outcome: "duplicate".into(),
                            reason,
                            deploy_id: Some(deploy_id),
                            superseded: vec![],
                        },
                    }
                }
            },
        };
        results.push(result);
    }
    let answer = WebhookAnswer { provider: name.to_owned(), event, delivery: delivery_id, results };
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}
