//! Reading a delivery: the JSON (raw, or inside a form body's `payload` field) and the few fields
//! of a push that matter: repository, ref, `before` and `after`. Where a forge puts them is its
//! provider's business ([`parse`] reads the `repository.full_name` of Forgejo, Gitea and GitHub);
//! what they mean is checked here, the same for every forge: a ref that is not a valid branch or
//! tag name, or an `after` that is not a hex object id, is refused.

use std::borrow::Cow;

use serde::Deserialize;

use crate::model::{BranchName, CommitSha};

#[derive(Debug, PartialEq, Eq)]
pub enum PayloadError {
    /// The form body has no `payload` field.
    NoPayloadField,
    Malformed(String),
    Missing(&'static str),
    Invalid(String),
}

impl std::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PayloadError::NoPayloadField => f.write_str("the form body has no `payload` field"),
            PayloadError::Malformed(e) => write!(f, "the payload is not valid JSON: {e}"),
            PayloadError::Missing(field) => write!(f, "the payload has no `{field}`"),
            PayloadError::Invalid(why) => f.write_str(why),
        }
    }
}

/// The JSON document of a delivery: the body itself, or for a form body
/// (`application/x-www-form-urlencoded`) the decoded `payload` field.
pub fn json_of<'a>(content_type: Option<&str>, body: &'a [u8]) -> Result<Cow<'a, [u8]>, PayloadError> {
    let is_form = content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|ct| ct.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    if !is_form {
        return Ok(Cow::Borrowed(body));
    }
    form_urlencoded::parse(body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| Cow::Owned(v.into_owned().into_bytes()))
        .ok_or(PayloadError::NoPayloadField)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = PushRepository)]
pub(super) struct RawRepository {
    /// `owner/name`: selects the apps whose `webhook.repository` it is, and so the secrets.
    #[schema(required = true, min_length = 1)]
    full_name: Option<String>,
}

/// The fields of a Forgejo, Gitea or GitHub payload that are read; the rest is ignored. A push
/// needs them all; other events only the repository.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = PushPayload)]
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
    #[schema(required = true, value_type = RawRepository)]
    repository: Option<RawRepository>,
}

/// The fields of any delivery kua-deploy looks at; only the repository is needed to check the
/// signature, so the rest is read (and validated) only for a push.
#[derive(Debug)]
pub struct Delivery {
    pub repository: String,
    git_ref: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
    before: Option<serde_json::Value>,
}

/// The payload of Forgejo, Gitea and GitHub: the repository is `repository.full_name`.
pub fn parse(json: &[u8]) -> Result<Delivery, PayloadError> {
    let raw: RawDelivery = serde_json::from_slice(json).map_err(|e| PayloadError::Malformed(e.to_string()))?;
    let repository = raw
        .repository
        .and_then(|r| r.full_name)
        .filter(|n| !n.is_empty())
        .ok_or(PayloadError::Missing("repository.full_name"))?;
    Ok(Delivery { repository, git_ref: raw.git_ref, after: raw.after, before: raw.before })
}

/// What a push's ref names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushRef {
    Branch(BranchName),
    Tag(String),
}

/// A push, checked: the ref and `after` (None for a deletion: all zeros).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub git_ref: String,
    pub target: PushRef,
    pub after: Option<CommitSha>,
    /// `before` equals `after`: no real push leaves its ref where it was. It is what the "Test
    /// Delivery" of Forgejo and Gitea sends: the branch's latest commit as both, or for a
    /// repository without commits (and in recent Gitea always) the zero id as both, with one
    /// made-up commit of that id.
    pub test_delivery: bool,
}

impl Delivery {
    /// A delivery from the fields as its forge sent them, not yet validated; `repository` must
    /// not be empty.
    pub fn new(
        repository: String,
        git_ref: Option<serde_json::Value>,
        after: Option<serde_json::Value>,
        before: Option<serde_json::Value>,
    ) -> Delivery {
        Delivery { repository, git_ref, after, before }
    }

    /// The raw ref and after, for the record, before they are validated.
    pub fn raw_ref(&self) -> Option<String> {
        self.git_ref.as_ref().and_then(|v| v.as_str()).map(|s| s.chars().take(300).collect())
    }
    pub fn raw_after(&self) -> Option<String> {
        self.after.as_ref().and_then(|v| v.as_str()).map(|s| s.chars().take(100).collect())
    }

    pub fn push(&self) -> Result<Push, PayloadError> {
        let git_ref = self.git_ref.as_ref().ok_or(PayloadError::Missing("ref"))?;
        let git_ref = git_ref.as_str().ok_or_else(|| PayloadError::Invalid("`ref` is not a string".into()))?;
        let after = self.after.as_ref().ok_or(PayloadError::Missing("after"))?;
        let after = after.as_str().ok_or_else(|| PayloadError::Invalid("`after` is not a string".into()))?;
        let after = CommitSha::parse(after).map_err(|e| PayloadError::Invalid(format!("`after`: {e}")))?;
        let target = if let Some(b) = git_ref.strip_prefix("refs/heads/") {
            PushRef::Branch(BranchName::parse(b).map_err(|e| PayloadError::Invalid(format!("`ref`: {e}")))?)
        } else if let Some(t) = git_ref.strip_prefix("refs/tags/") {
            PushRef::Tag(t.chars().take(200).collect())
        } else {
            return Err(PayloadError::Invalid(format!(
                "`ref` {:?} is neither refs/heads/<branch> nor refs/tags/<tag>",
                git_ref.chars().take(100).collect::<String>()
            )));
        };
        let before = self.before.as_ref().and_then(|v| v.as_str()).and_then(|b| CommitSha::parse(b).ok());
        Ok(Push {
            git_ref: git_ref.to_owned(),
            target,
            test_delivery: before.as_ref() == Some(&after),
            after: (!after.is_zero()).then_some(after),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/fixtures/webhooks/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn a_forgejo_push_names_its_repository_branch_and_commit() {
        let d = parse(&fixture("forgejo-push-branch-3-commits.json")).unwrap();
        let p = d.push().unwrap();
        assert!(matches!(p.target, PushRef::Branch(ref b) if b.as_str() == "main"));
        assert!(p.after.is_some());
        assert!(d.repository.contains('/'));
    }

    #[test]
    fn a_github_tag_deletion_is_a_tag_push_without_a_commit() {
        let p = parse(&fixture("github-push-tag-delete.json")).unwrap().push().unwrap();
        assert!(matches!(p.target, PushRef::Tag(ref t) if t == "simple-tag"));
        assert_eq!(p.after, None);
    }

    #[test]
    fn a_gitea_delete_event_still_names_its_repository() {
        let d = parse(&fixture("gitea-delete-branch.json")).unwrap();
        assert!(!d.repository.is_empty());
    }

    #[test]
    fn a_form_body_yields_the_decoded_payload_field() {
        let body = b"payload=%7B%22a%22%3A1%7D&other=x";
        let json = json_of(Some("application/x-www-form-urlencoded; charset=utf-8"), body).unwrap();
        assert_eq!(&*json, br#"{"a":1}"#);
        assert_eq!(json_of(Some("application/x-www-form-urlencoded"), b"x=1"), Err(PayloadError::NoPayloadField));
        assert_eq!(&*json_of(Some("application/json"), b"{}").unwrap(), b"{}");
    }

    #[test]
    fn a_ref_or_after_crafted_as_a_git_option_is_refused() {
        let bad_after =
            br#"{"ref":"refs/heads/main","after":"--upload-pack=touch /tmp/x","repository":{"full_name":"a/b"}}"#;
        assert!(matches!(parse(bad_after).unwrap().push(), Err(PayloadError::Invalid(_))));
        let sha = "a".repeat(40);
        let bad_ref =
            format!(r#"{{"ref":"refs/heads/--upload-pack=x","after":"{sha}","repository":{{"full_name":"a/b"}}}}"#);
        assert!(matches!(parse(bad_ref.as_bytes()).unwrap().push(), Err(PayloadError::Invalid(_))));
        let bare = format!(r#"{{"ref":"--upload-pack=x","after":"{sha}","repository":{{"full_name":"a/b"}}}}"#);
        assert!(matches!(parse(bare.as_bytes()).unwrap().push(), Err(PayloadError::Invalid(_))));
    }

    #[test]
    fn missing_fields_and_bad_json_are_named() {
        assert!(matches!(parse(b"{nope"), Err(PayloadError::Malformed(_))));
        assert_eq!(parse(b"{}").err(), Some(PayloadError::Missing("repository.full_name")));
        let no_after = parse(br#"{"ref":"refs/heads/main","repository":{"full_name":"a/b"}}"#).unwrap();
        assert_eq!(no_after.push(), Err(PayloadError::Missing("after")));
    }

    #[test]
    fn a_push_that_leaves_its_ref_where_it_was_is_a_test_delivery_and_a_deletion_is_not() {
        let body = |before: &str, after: &str, commits: &str| {
            format!(
                r#"{{"ref":"refs/heads/main","before":"{before}","after":"{after}","commits":{commits},"repository":{{"full_name":"a/b"}}}}"#
            )
        };
        let (zero, zero64, sha) = ("0".repeat(40), "0".repeat(64), "a".repeat(40));
        let fake = format!(r#"[{{"id":"{zero}","message":"This is a fake commit"}}]"#);
        for text in [body(&zero, &zero, &fake), body(&zero, &zero, "[]"), body(&zero64, &zero64, "[]")] {
            let p = parse(text.as_bytes()).unwrap().push().unwrap();
            assert!(p.test_delivery && p.after.is_none(), "{text}");
        }
        // Forgejo's test delivery of a repository with commits: its latest commit as both.
        let p = parse(body(&sha, &sha, "[]").as_bytes()).unwrap().push().unwrap();
        assert!(p.test_delivery && p.after.is_some());
        let other = "b".repeat(40);
        for text in [body(&sha, &zero, "[]"), body(&zero, &sha, "[]"), body(&other, &sha, "[]")] {
            assert!(!parse(text.as_bytes()).unwrap().push().unwrap().test_delivery, "{text}");
        }
        // A push without `before` (or with a malformed one) is judged by `after` alone.
        let no_before = format!(r#"{{"ref":"refs/heads/main","after":"{zero}","repository":{{"full_name":"a/b"}}}}"#);
        assert!(!parse(no_before.as_bytes()).unwrap().push().unwrap().test_delivery);
    }

    #[test]
    fn sixty_four_zeros_is_a_deletion_too() {
        let body =
            format!(r#"{{"ref":"refs/heads/main","after":"{}","repository":{{"full_name":"a/b"}}}}"#, "0".repeat(64));
        assert_eq!(parse(body.as_bytes()).unwrap().push().unwrap().after, None);
    }
}
