//! Push webhooks: `POST /webhook/forgejo` (also `/webhook/gitea`), `/webhook/github` and
//! `/webhook/gitlab`. What differs between forges — how a delivery proves its sender, which
//! header names its event and delivery, where the push fields sit in the payload — is a
//! [`Provider`], one file each: [`forgejo`] (Forgejo and Gitea), [`github`], [`gitlab`], and one
//! documented route each here. What is
//! the same for all lives here: the body limit, JSON or form decoding, finding the apps configured
//! for the payload's repository, what a push means (branch, tag, deletion, test delivery), the
//! queue submission and the answers.
//!
//! The credential is the authentication: it must match the secret of an app configured for the
//! repository. A push to that app's branch queues a deploy of exactly `after`; everything else is
//! answered 202 with the reason. The answer comes at once — the deploy runs later, from the queue.

pub mod forgejo;
pub mod github;
pub mod gitlab;
pub mod payload;
pub mod signature;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::ApiError;
use super::listener::BodyReadTimeout;
use super::types::{AppResult, ErrorBody, WebhookAnswer};
use super::ApiState;
use crate::config::AppConfig;
use crate::model::{now_rfc3339, BranchName, CommitSha, Delivery, Trigger, TriggerSource};
use crate::pipeline::queue::Request as QueueRequest;
use crate::store::PushRecord;
use payload::{PayloadError, Push, PushRef};

/// The largest body read; a larger one is refused unread.
pub const MAX_BODY: usize = 5 * 1024 * 1024;

/// What a forge says a delivery is about. Only a push can deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A push of commits to a ref (Forgejo, Gitea and GitHub send tag pushes as pushes too).
    Push,
    /// An event of its own for tags (GitLab's `Tag Push Hook`): never deploys.
    TagPush,
    Other,
}

/// What the headers of one delivery say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The name in records and answers: `forgejo`, `gitea`, `github`, `gitlab`.
    pub provider: &'static str,
    /// The event as sent, cut to 64 characters.
    pub event: String,
    pub kind: EventKind,
    /// The forge's id of the delivery, kept for redelivery detection; cut to 100 characters.
    pub delivery_id: Option<String>,
    pub credential: Credential,
}

/// The proof a delivery carries that its sender knows the app's secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The header it came in, named in refusals.
    pub header: &'static str,
    /// What it is, for refusals: `signature` or `token`.
    pub noun: &'static str,
    /// As sent (a signature without its scheme prefix); empty when missing or malformed.
    pub value: String,
}

/// The bytes a credential may cover: the body as received, and the JSON document of the delivery
/// (the same bytes, or the decoded `payload` field of a form body).
pub struct Received<'a> {
    pub body: &'a [u8],
    pub json: &'a [u8],
}

/// One forge's way of sending push webhooks. Adding a forge is one file implementing this, one
/// `webhook_route!` here and one line in `api::routes`.
pub trait Provider: Send + Sync {
    /// Reads the headers: the forge (or header family), the event, the delivery id and the
    /// credential. `Err` says which event header is missing; it is answered 400.
    fn envelope(&self, headers: &HeaderMap) -> Result<Envelope, String>;

    /// The repository, ref, `before` and `after` of the payload, as sent (checked later, and only
    /// for a push). The repository must be there for every event: it selects the apps whose secret
    /// authenticates the delivery.
    fn fields(&self, json: &[u8]) -> Result<payload::Delivery, PayloadError>;

    /// Whether `credential` (never empty) proves that the sender knows `secret`. Compares in
    /// constant time, over the exact bytes received where the credential is a signature.
    fn authenticate(&self, credential: &str, received: &Received<'_>, secret: &[u8]) -> bool;
}

/// One webhook route: its handler and its OpenAPI operation (the same answers for every forge; the
/// headers and the credential differ).
macro_rules! webhook_route {
    ($(#[$doc:meta])* $name:ident, $path:literal, $provider:expr, $payload:ty, security($($scheme:literal),+), headers($($header:literal: $hty:ty = $what:literal),+ $(,)?)) => {
        $(#[$doc])*
        #[utoipa::path(
            post,
            path = $path,
            tag = "webhooks",
            params($(($header = $hty, Header, description = $what)),+),
            request_body(
                description = "the push payload as the forge sends it: JSON, or a form with the JSON in its `payload` field",
                content(($payload = "application/json"), ("application/x-www-form-urlencoded")),
            ),
            security($(($scheme = [])),+),
            responses(
                (status = 202, description = "accepted: for each app configured for the repository, whether a deploy was queued, is a duplicate, or why the delivery was ignored", body = WebhookAnswer),
                (status = 400, description = "`bad_request`: no event header, a body that is not JSON (or a form without `payload`), or a push without its repository, ref or commits", body = ErrorBody),
                (status = 401, description = "`unauthorized`: the signature (token) is missing, empty or wrong, or no app with a webhook secret is configured for the repository; nothing was queued", body = ErrorBody),
                (status = 408, description = "`request_timeout`: the body did not arrive in time", body = ErrorBody),
                (status = 413, description = "`payload_too_large`: the body is over 5 MiB", body = ErrorBody),
                (status = 503, description = "`storage_unavailable`: the delivery cannot be recorded; nothing was queued, the forge may redeliver", body = ErrorBody),
            ),
        )]
        pub async fn $name(State(state): State<ApiState>, req: Request) -> Result<Response, ApiError> {
            // The route names the sender in the metrics until the headers say which forge it was.
            let mut sender: &'static str = stringify!($name);
            let answer = receive(&state, &$provider, req, &mut sender).await;
            // An accepted delivery was counted per app it was for; a refused one is counted once.
            if let Err(e) = &answer {
                state.metrics.webhook_delivery(sender, e.code);
            }
            answer
        }
    };
}

webhook_route!(
    /// A push from Forgejo (it sends Gitea's headers too; its own are used first).
    forgejo, "/webhook/forgejo", forgejo::Forgejo, payload::RawDelivery,
    security("forgejo_signature", "gitea_signature"),
    headers(
        "X-Forgejo-Event": Option<String> = "the event (`push` deploys); this or X-Gitea-Event is required",
        "X-Gitea-Event": Option<String> = "the event, when X-Forgejo-Event is absent",
        "X-Forgejo-Delivery": Option<String> = "the delivery id, kept to spot redeliveries",
        "X-Gitea-Delivery": Option<String> = "the delivery id, when X-Forgejo-Delivery is absent",
    )
);
webhook_route!(
    /// A push from Gitea (Forgejo's headers are read too).
    gitea, "/webhook/gitea", forgejo::Forgejo, payload::RawDelivery,
    security("gitea_signature", "forgejo_signature"),
    headers(
        "X-Gitea-Event": Option<String> = "the event (`push` deploys); this or X-Forgejo-Event is required",
        "X-Forgejo-Event": Option<String> = "the event, from Forgejo",
        "X-Gitea-Delivery": Option<String> = "the delivery id, kept to spot redeliveries",
        "X-Forgejo-Delivery": Option<String> = "the delivery id, from Forgejo",
    )
);
webhook_route!(
    /// A push from GitHub.
    github, "/webhook/github", github::GitHub, payload::RawDelivery,
    security("github_signature"),
    headers(
        "X-GitHub-Event": String = "the event (`push` deploys); required",
        "X-GitHub-Delivery": Option<String> = "the delivery id, kept to spot redeliveries",
    )
);
webhook_route!(
    /// A push from GitLab.
    gitlab, "/webhook/gitlab", gitlab::GitLab, gitlab::RawDelivery,
    security("gitlab_token"),
    headers(
        "X-Gitlab-Event": String = "the event (`Push Hook` deploys; `Tag Push Hook` never does); required",
        "Idempotency-Key": Option<String> = "the delivery id (GitLab 17.4 and later), kept to spot redeliveries",
        "X-Gitlab-Event-UUID": Option<String> = "the delivery id, when Idempotency-Key is absent",
    )
);

/// A header's value, when it is there and readable.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// At most `max` characters of `s`: header values end up in records and answers.
pub fn cut(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
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

/// Takes one delivery; `sender` becomes the forge its headers name, as soon as they are read.
async fn receive(
    state: &ApiState,
    provider: &dyn Provider,
    req: Request,
    sender: &mut &'static str,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    let envelope = provider.envelope(headers).map_err(ApiError::bad_request)?;
    *sender = envelope.provider;
    let body = read_body(body, headers).await?;
    let json =
        payload::json_of(header(headers, "content-type"), &body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let delivery = provider.fields(&json).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let received = Received { body: &body, json: &json };
    let apps = authenticated_apps(state, provider, &envelope, &delivery, &received)?;

    let Envelope { provider: name, event, kind, delivery_id, .. } = envelope;
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
    let push = match kind {
        EventKind::Push | EventKind::TagPush => {
            Some(delivery.push().map_err(|e| ApiError::bad_request(e.to_string()))?)
        }
        EventKind::Other => None,
    };
    let mut results = Vec::new();
    for app in apps {
        let (after, p) = match decide(&app.branch, &event, kind, push.as_ref()) {
            Decision::Ignore(reason) => {
                store.insert_delivery(&app.name, &record("ignored", reason.clone()))?;
                results.push(AppResult {
                    app: app.name.clone(),
                    outcome: "ignored".into(),
                    reason,
                    deploy_id: None,
                    superseded: vec![],
                });
                continue;
            }
            Decision::Deploy(after, p) => (after, p),
        };
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
        results.push(match state.queue.submit_push(req, record("", String::new()))? {
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
        });
    }
    for r in &results {
        state.metrics.webhook_delivery(name, &r.outcome);
    }
    let answer = WebhookAnswer { provider: name.to_owned(), event, delivery: delivery_id, results };
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// The apps configured for the delivery's repository whose secret its credential matches; 401
/// (logged, never with the secret or the body) when there are none.
fn authenticated_apps<'s>(
    state: &'s ApiState,
    provider: &dyn Provider,
    envelope: &Envelope,
    delivery: &payload::Delivery,
    received: &Received<'_>,
) -> Result<Vec<&'s AppConfig>, ApiError> {
    let reject = |why: &str| {
        tracing::warn!(
            provider = envelope.provider,
            delivery = ?envelope.delivery_id,
            repository = %delivery.repository,
            "webhook refused: {why}"
        );
        unauthorized(format!("{why}; nothing was queued"))
    };
    let credential = &envelope.credential;
    if credential.value.is_empty() {
        return Err(reject(&format!("missing or empty {} header", credential.header)));
    }
    let mut any_secret = false;
    let verified: Vec<&AppConfig> = state
        .queue
        .registry()
        .apps
        .values()
        .filter(|a| a.webhook.as_ref().is_some_and(|w| w.repository.eq_ignore_ascii_case(&delivery.repository)))
        .filter(|a| {
            let Some(secret) = a.webhook.as_ref().and_then(|w| w.secret.read()) else { return false };
            any_secret = true;
            provider.authenticate(&credential.value, received, secret.as_bytes())
        })
        .collect();
    if verified.is_empty() {
        return Err(reject(&if any_secret {
            format!("the {} does not match the secret of any app configured for this repository", credential.noun)
        } else {
            "no app with a webhook secret is configured for this repository".to_owned()
        }));
    }
    Ok(verified)
}

/// What a delivery means for an app on `branch`.
#[derive(Debug, PartialEq, Eq)]
enum Decision<'p> {
    /// Deploy exactly this commit, pushed by this push.
    Deploy(&'p CommitSha, &'p Push),
    /// Nothing to deploy, and why.
    Ignore(String),
}

/// The same for every forge: only a push that moves the app's branch to a commit deploys; a test
/// delivery, a tag, another branch, a deletion and every other event are ignored with the reason.
fn decide<'p>(branch: &BranchName, event: &str, kind: EventKind, push: Option<&'p Push>) -> Decision<'p> {
    let Some(p) = push.filter(|_| kind != EventKind::Other) else {
        return Decision::Ignore(format!("event {event:?} does not deploy; only pushes do"));
    };
    if p.test_delivery {
        return Decision::Ignore(match &p.after {
            None => "a test delivery from an empty repository (`before` and `after` are both the zero id, \
                     as Gitea's \"Test Delivery\" sends): nothing to deploy"
                .to_owned(),
            Some(c) => format!(
                "a test delivery (`before` and `after` are both {}: the branch did not move): nothing to deploy",
                c.short()
            ),
        });
    }
    match (&p.target, &p.after) {
        (PushRef::Tag(t), _) => Decision::Ignore(format!("tag {t} does not deploy; only pushes to branch {branch}")),
        (PushRef::Branch(b), _) if kind == EventKind::TagPush => Decision::Ignore(format!(
            "event {event:?} is a tag push, yet names branch {b}: tags do not deploy; only pushes to branch {branch}"
        )),
        (PushRef::Branch(b), None) => Decision::Ignore(format!("branch {b} was deleted; nothing to deploy")),
        (PushRef::Branch(b), Some(_)) if b != branch => {
            Decision::Ignore(format!("branch {b} is not the app's branch {branch}"))
        }
        (PushRef::Branch(_), Some(after)) => Decision::Deploy(after, p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(git_ref: &str, before: &str, after: &str) -> Push {
        let body = format!(
            r#"{{"ref":"{git_ref}","before":"{before}","after":"{after}","repository":{{"full_name":"a/b"}}}}"#
        );
        payload::parse(body.as_bytes()).unwrap().push().unwrap()
    }

    fn ignored(d: Decision<'_>) -> String {
        match d {
            Decision::Ignore(reason) => reason,
            Decision::Deploy(c, _) => panic!("deploys {c}"),
        }
    }

    #[test]
    fn a_push_to_the_apps_branch_deploys_its_after_commit() {
        let main = BranchName::parse("main").unwrap();
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        let p = push("refs/heads/main", &a, &b);
        match decide(&main, "push", EventKind::Push, Some(&p)) {
            Decision::Deploy(c, _) => assert_eq!(c.as_str(), b),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tags_other_branches_deletions_test_deliveries_and_other_events_are_ignored_with_the_reason() {
        let main = BranchName::parse("main").unwrap();
        let (zero, a, b) = ("0".repeat(40), "a".repeat(40), "b".repeat(40));
        let cases = [
            (EventKind::Push, push("refs/tags/v1", &zero, &b), "tag v1 does not deploy"),
            (EventKind::TagPush, push("refs/tags/v1", &zero, &b), "tag v1 does not deploy"),
            (EventKind::TagPush, push("refs/heads/main", &a, &b), "is a tag push"),
            (EventKind::Push, push("refs/heads/feature", &a, &b), "not the app's branch main"),
            (EventKind::Push, push("refs/heads/main", &a, &zero), "branch main was deleted"),
            (EventKind::Push, push("refs/heads/main", &b, &b), "test delivery"),
            (EventKind::Push, push("refs/heads/main", &zero, &zero), "empty repository"),
        ];
        for (kind, p, why) in &cases {
            let reason = ignored(decide(&main, "e", *kind, Some(p)));
            assert!(reason.contains(why), "{kind:?} {p:?}: {reason}");
        }
        let p = push("refs/heads/main", &a, &b);
        let reason = ignored(decide(&main, "Merge Request Hook", EventKind::Other, Some(&p)));
        assert_eq!(reason, "event \"Merge Request Hook\" does not deploy; only pushes do");
        assert!(ignored(decide(&main, "delete", EventKind::Other, None)).contains("\"delete\""));
    }
}
