//! Commit statuses on the forges: the request each forge's status API takes (Forgejo and Gitea
//! `POST /repos/{owner}/{repo}/statuses/{sha}` with `Authorization: token`, GitHub the same path
//! with a bearer token, GitLab `POST /projects/{id}/statuses/{sha}` with `PRIVATE-TOKEN`). No I/O.

use serde_json::json;

use super::Request;
use crate::config::{Forge, StatusConfig};
use crate::model::{CommitSha, Phase};

/// What a status says of a commit, in kua-deploy's words; each forge spells it its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Success,
    Failure,
    /// Stopped before it could say (cancelled, interrupted).
    Stopped,
}

impl State {
    /// The end state of a deploy ending in `phase`.
    pub fn of(phase: Phase) -> State {
        match phase {
            Phase::Succeeded => State::Success,
            Phase::Cancelled | Phase::Interrupted => State::Stopped,
            _ => State::Failure,
        }
    }

    fn spelled(self, forge: Forge) -> &'static str {
        match (self, forge) {
            (State::Pending, Forge::GitLab) => "running",
            (State::Pending, _) => "pending",
            (State::Success, _) => "success",
            (State::Failure, Forge::GitLab) => "failed",
            (State::Failure, _) => "failure",
            (State::Stopped, Forge::GitLab) => "canceled",
            (State::Stopped, _) => "error",
        }
    }
}

/// GitHub refuses a description longer than 140 characters; the others take more, none less.
pub const MAX_DESCRIPTION: usize = 140;

/// `text`'s first line, cut to [`MAX_DESCRIPTION`] characters (marked `…` when cut).
pub fn description(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    if line.chars().count() <= MAX_DESCRIPTION {
        return line.to_owned();
    }
    let mut cut: String = line.chars().take(MAX_DESCRIPTION - 1).collect();
    cut.push('…');
    cut
}

/// The request that sets `state` on `sha` under `context`.
pub fn request(
    cfg: &StatusConfig,
    token: &str,
    sha: &CommitSha,
    state: State,
    context: &str,
    description: &str,
    target_url: Option<&str>,
) -> Request {
    let mut body = json!({
        "state": state.spelled(cfg.forge),
        "description": description,
    });
    if let Some(u) = target_url {
        body["target_url"] = json!(u);
    }
    let (url, headers) = match cfg.forge {
        Forge::Forgejo | Forge::Gitea => {
            body["context"] = json!(context);
            (
                format!("{}/repos/{}/statuses/{sha}", cfg.api, cfg.repository),
                vec![("Authorization", format!("token {token}"))],
            )
        }
        Forge::GitHub => {
            body["context"] = json!(context);
            (
                format!("{}/repos/{}/statuses/{sha}", cfg.api, cfg.repository),
                vec![
                    ("Authorization", format!("Bearer {token}")),
                    ("Accept", "application/vnd.github+json".to_owned()),
                    ("X-GitHub-Api-Version", "2022-11-28".to_owned()),
                ],
            )
        }
        Forge::GitLab => {
            body["name"] = json!(context);
            // A project's path goes in one path segment, its slashes encoded.
            let project = cfg.repository.replace('/', "%2F");
            (format!("{}/projects/{project}/statuses/{sha}", cfg.api), vec![("PRIVATE-TOKEN", token.to_owned())])
        }
    };
    Request {
        url,
        headers,
        content_type: "application/json",
        body: serde_json::to_vec(&body).expect("a JSON object serialises"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretSource;

    fn cfg(forge: Forge, api: &str, repository: &str) -> StatusConfig {
        StatusConfig {
            forge,
            api: api.to_owned(),
            token: SecretSource::Env("T".into()),
            repository: repository.to_owned(),
        }
    }

    fn sha() -> CommitSha {
        CommitSha::parse("0123456789abcdef0123456789abcdef01234567").unwrap()
    }

    fn body(r: &Request) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn forgejo_and_gitea_get_their_statuses_path_a_token_header_and_a_context() {
        for forge in [Forge::Forgejo, Forge::Gitea] {
            let c = cfg(forge, "https://git.example/api/v1", "kua/hello");
            let r = request(
                &c,
                "tok",
                &sha(),
                State::Failure,
                "kua-deploy/hello",
                "rolled_back: verify",
                Some("https://d/x"),
            );
            assert_eq!(r.url, format!("https://git.example/api/v1/repos/kua/hello/statuses/{}", sha()));
            assert_eq!(r.headers, vec![("Authorization", "token tok".to_owned())]);
            let b = body(&r);
            assert_eq!(b["state"], "failure");
            assert_eq!(b["context"], "kua-deploy/hello");
            assert_eq!(b["target_url"], "https://d/x");
            assert_eq!(b["description"], "rolled_back: verify");
        }
    }

    #[test]
    fn github_gets_a_bearer_token_and_its_media_type() {
        let c = cfg(Forge::GitHub, "https://api.github.com", "kua/hello");
        let r = request(&c, "tok", &sha(), State::Pending, "kua-deploy/hello", "deploying", None);
        assert_eq!(r.url, format!("https://api.github.com/repos/kua/hello/statuses/{}", sha()));
        assert!(r.headers.contains(&("Authorization", "Bearer tok".to_owned())));
        assert!(r.headers.contains(&("Accept", "application/vnd.github+json".to_owned())));
        assert_eq!(body(&r)["state"], "pending");
        assert!(body(&r).get("target_url").is_none(), "no public URL, no target_url");
        assert_eq!(request(&c, "t", &sha(), State::Stopped, "c", "d", None).body, body_of("error", "c"));
    }

    fn body_of(state: &str, context: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({"state": state, "description": "d", "context": context})).unwrap()
    }

    #[test]
    fn gitlab_gets_the_encoded_project_path_a_private_token_and_its_own_state_names() {
        let c = cfg(Forge::GitLab, "https://gitlab.example/api/v4", "group/sub/hello");
        let r = request(&c, "tok", &sha(), State::Pending, "kua-deploy/hello", "deploying", None);
        assert_eq!(r.url, format!("https://gitlab.example/api/v4/projects/group%2Fsub%2Fhello/statuses/{}", sha()));
        assert_eq!(r.headers, vec![("PRIVATE-TOKEN", "tok".to_owned())]);
        assert_eq!(body(&r)["state"], "running");
        assert_eq!(body(&r)["name"], "kua-deploy/hello");
        let states: Vec<_> =
            [State::Success, State::Failure, State::Stopped].iter().map(|s| s.spelled(Forge::GitLab)).collect();
        assert_eq!(states, ["success", "failed", "canceled"]);
    }

    #[test]
    fn a_description_is_one_line_cut_to_what_the_forges_accept() {
        assert_eq!(description("failed: build\nsecond line"), "failed: build");
        let long = "é".repeat(300);
        let d = description(&long);
        assert_eq!(d.chars().count(), MAX_DESCRIPTION);
        assert!(d.ends_with('…'));
    }

    #[test]
    fn each_end_phase_has_its_state() {
        assert_eq!(State::of(Phase::Succeeded), State::Success);
        assert_eq!(State::of(Phase::RolledBack), State::Failure);
        assert_eq!(State::of(Phase::Failed), State::Failure);
        assert_eq!(State::of(Phase::Cancelled), State::Stopped);
        assert_eq!(State::of(Phase::Interrupted), State::Stopped);
    }
}
