//! GitLab (`/webhook/gitlab`). No signature: the webhook's secret token comes as sent in
//! `X-Gitlab-Token`, and is compared in constant time with the app's secret. The event is
//! `X-Gitlab-Event`: `Push Hook` for branches, `Tag Push Hook` for tags (which never deploy). The
//! delivery id is `Idempotency-Key` where GitLab sends it (17.4 and later: the same on every retry
//! of a delivery), else `X-Gitlab-Event-UUID`. The repository is `project.path_with_namespace`,
//! which has as many parts as the project has groups (`group/sub/app`).

use axum::http::HeaderMap;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::payload::{self, PayloadError};
use super::{cut, header, Credential, Envelope, EventKind, Provider, Received};

const EVENT: &str = "x-gitlab-event";
const TOKEN: &str = "x-gitlab-token";
const EVENT_UUID: &str = "x-gitlab-event-uuid";
const IDEMPOTENCY_KEY: &str = "idempotency-key";

pub struct GitLab;

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = GitLabProject)]
pub(super) struct RawProject {
    /// `group/…/name`: selects the apps whose `webhook.repository` it is, and so the secrets.
    #[schema(required = true, min_length = 1)]
    path_with_namespace: Option<String>,
}

/// The fields of a GitLab payload that are read; the rest is ignored. A push needs them all;
/// other events only the project.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = GitLabPushPayload)]
pub(super) struct RawDelivery {
    /// `refs/heads/<branch>` or `refs/tags/<tag>`.
    #[serde(rename = "ref")]
    #[schema(value_type = Option<String>)]
    git_ref: Option<serde_json::Value>,
    /// The commit the ref now points at (40 or 64 hex; all zeros: the ref was deleted).
    #[schema(value_type = Option<String>)]
    after: Option<serde_json::Value>,
    /// The commit it pointed at before.
    #[schema(value_type = Option<String>)]
    before: Option<serde_json::Value>,
    #[schema(required = true, value_type = RawProject)]
    project: Option<RawProject>,
}

impl Provider for GitLab {
    fn envelope(&self, headers: &HeaderMap) -> Result<Envelope, String> {
        let event = header(headers, EVENT).ok_or_else(|| format!("no event header: expected one of {EVENT}"))?;
        let event = cut(event, 64);
        let kind = match event.as_str() {
            "Push Hook" => EventKind::Push,
            "Tag Push Hook" => EventKind::TagPush,
            _ => EventKind::Other,
        };
        let delivery_id = [IDEMPOTENCY_KEY, EVENT_UUID]
            .iter()
            .find_map(|h| header(headers, h).filter(|v| !v.trim().is_empty()))
            .map(|d| cut(d, 100));
        Ok(Envelope {
            provider: "gitlab",
            event,
            kind,
            delivery_id,
            credential: Credential {
                header: TOKEN,
                noun: "token",
                value: header(headers, TOKEN).unwrap_or_default().to_owned(),
            },
        })
    }

    fn fields(&self, json: &[u8]) -> Result<payload::Delivery, PayloadError> {
        let raw: RawDelivery = serde_json::from_slice(json).map_err(|e| PayloadError::Malformed(e.to_string()))?;
        let repository = raw
            .project
            .and_then(|p| p.path_with_namespace)
            .filter(|n| !n.is_empty())
            .ok_or(PayloadError::Missing("project.path_with_namespace"))?;
        Ok(payload::Delivery::new(repository, raw.git_ref, raw.after, raw.before))
    }

    /// The token is the secret itself. Both are hashed first so that the comparison takes the same
    /// time whatever their lengths, and a wrong length tells nothing either.
    fn authenticate(&self, credential: &str, _received: &Received<'_>, secret: &[u8]) -> bool {
        let given = Sha256::digest(credential.as_bytes());
        let expected = Sha256::digest(secret);
        bool::from(given.as_slice().ct_eq(expected.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::webhook::payload::PushRef;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (axum::http::HeaderName::from_static(k), v.parse().unwrap())).collect()
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/fixtures/webhooks/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    const NOTHING: Received<'static> = Received { body: b"", json: b"" };

    #[test]
    fn push_hook_is_a_push_tag_push_hook_a_tag_push_and_the_rest_other_events() {
        for (event, kind) in [
            ("Push Hook", EventKind::Push),
            ("Tag Push Hook", EventKind::TagPush),
            ("Merge Request Hook", EventKind::Other),
            ("System Hook", EventKind::Other),
            ("push", EventKind::Other),
        ] {
            let e = GitLab.envelope(&headers(&[("x-gitlab-event", event)])).unwrap();
            assert_eq!((e.provider, e.kind, e.event.as_str()), ("gitlab", kind, event));
        }
        let err = GitLab.envelope(&headers(&[("x-forgejo-event", "push"), ("x-gitlab-token", "t")])).unwrap_err();
        assert!(err.contains("x-gitlab-event"), "{err}");
    }

    #[test]
    fn the_delivery_id_is_the_idempotency_key_where_sent_else_the_event_uuid() {
        let uuid = ("x-gitlab-event-uuid", "13792a34-cac6-4fda-95a8-c58e00a3954e");
        let key = ("idempotency-key", "f5e5f430-f57b-4e6e-9fac-d9128cd7232f");
        let id = |h: &[(&'static str, &str)]| GitLab.envelope(&headers(h)).unwrap().delivery_id;
        let push = ("x-gitlab-event", "Push Hook");
        assert_eq!(id(&[push, uuid]).as_deref(), Some(uuid.1));
        assert_eq!(id(&[push, uuid, key]).as_deref(), Some(key.1));
        assert_eq!(id(&[push, uuid, ("idempotency-key", " ")]).as_deref(), Some(uuid.1));
        assert_eq!(id(&[push]), None);
    }

    #[test]
    fn only_the_exact_secret_authenticates() {
        let e = GitLab.envelope(&headers(&[("x-gitlab-event", "Push Hook"), ("x-gitlab-token", "s3cret")])).unwrap();
        assert_eq!((e.credential.header, e.credential.noun), ("x-gitlab-token", "token"));
        assert!(GitLab.authenticate(&e.credential.value, &NOTHING, b"s3cret"));
        for wrong in ["s3cre", "s3cret ", "S3cret", "s3cret\n", "other"] {
            assert!(!GitLab.authenticate(wrong, &NOTHING, b"s3cret"), "{wrong:?}");
        }
        let missing = GitLab.envelope(&headers(&[("x-gitlab-event", "Push Hook")])).unwrap();
        assert_eq!(missing.credential.value, "", "a missing token is empty, refused before any secret is read");
    }

    #[test]
    fn a_documented_push_names_its_nested_group_project_branch_and_after() {
        let d = GitLab.fields(&fixture("gitlab-push.json")).unwrap();
        assert_eq!(d.repository, "mike/web/diaspora");
        let p = d.push().unwrap();
        assert_eq!(p.target, PushRef::Branch(crate::model::BranchName::parse("master").unwrap()));
        assert_eq!(p.after.map(|c| c.as_str().to_owned()).as_deref(), Some("da1560886d4f094c3e6c9ef40349f7d38b5d27d7"));
        assert!(!p.test_delivery);
    }

    #[test]
    fn a_documented_tag_push_names_its_tag() {
        let d = GitLab.fields(&fixture("gitlab-tag-push.json")).unwrap();
        assert_eq!(d.repository, "jsmith/example");
        assert_eq!(d.push().unwrap().target, PushRef::Tag("v1.0.0".into()));
    }

    #[test]
    fn a_branch_deletion_has_no_after_commit() {
        let mut v: serde_json::Value = serde_json::from_slice(&fixture("gitlab-push.json")).unwrap();
        v["after"] = "0".repeat(40).into();
        v["checkout_sha"] = serde_json::Value::Null;
        v["commits"] = serde_json::json!([]);
        let p = GitLab.fields(&serde_json::to_vec(&v).unwrap()).unwrap().push().unwrap();
        assert_eq!(p.after, None);
        assert!(!p.test_delivery);
    }

    #[test]
    fn a_payload_without_a_project_path_is_refused_by_name() {
        assert_eq!(
            GitLab.fields(br#"{"ref":"refs/heads/main"}"#).unwrap_err(),
            PayloadError::Missing("project.path_with_namespace")
        );
        let forgejo_shaped = br#"{"repository":{"full_name":"a/b"}}"#;
        assert_eq!(GitLab.fields(forgejo_shaped).unwrap_err(), PayloadError::Missing("project.path_with_namespace"));
        assert!(matches!(GitLab.fields(b"{nope"), Err(PayloadError::Malformed(_))));
    }
}
