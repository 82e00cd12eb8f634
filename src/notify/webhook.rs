//! Notification payloads, one per `format`: `json` (the deploy object as the API answers it),
//! `slack` (`{"text": …}`, which Slack, Mattermost and Rocket.Chat incoming webhooks take) and
//! `ntfy` (a plain-text body with ntfy's `Title`, `Priority` and `Tags` headers). No I/O.

use serde_json::json;

use super::Request;
use crate::config::{NotifyEvent, NotifyFormat, NotifyTarget};
use crate::model::Deploy;

/// The event a deploy in this phase is, if any.
pub fn event_of(phase: crate::model::Phase) -> Option<NotifyEvent> {
    use crate::model::Phase;
    Some(match phase {
        Phase::Failed => NotifyEvent::Failed,
        Phase::RolledBack => NotifyEvent::RolledBack,
        Phase::Succeeded => NotifyEvent::Succeeded,
        Phase::AwaitingApproval => NotifyEvent::AwaitingApproval,
        Phase::Cancelled => NotifyEvent::Cancelled,
        Phase::Interrupted => NotifyEvent::Interrupted,
        _ => return None,
    })
}

/// One line a person reads: the app, what happened, the commit, why, and where to look.
pub fn summary(d: &Deploy, event: NotifyEvent, link: Option<&str>) -> String {
    let what = match event {
        NotifyEvent::Failed => "failed",
        NotifyEvent::RolledBack => "was rolled back",
        NotifyEvent::Succeeded => "succeeded",
        NotifyEvent::AwaitingApproval => "awaits approval",
        NotifyEvent::Cancelled => "was cancelled",
        NotifyEvent::Interrupted => "was interrupted",
    };
    let mut s = format!("{}: deploy {} {what}", d.app, d.deploy_id);
    if let Some(c) = &d.commit {
        s.push_str(&format!(" (commit {})", &c.as_str()[..c.as_str().len().min(12)]));
    }
    if let Some(why) = reason(d, event) {
        s.push_str(&format!(": {why}"));
    }
    if let Some(l) = link {
        s.push_str(&format!(" {l}"));
    }
    s
}

/// Why, in one line: the deploy's error, or what the step holding it says.
pub fn reason(d: &Deploy, event: NotifyEvent) -> Option<String> {
    let text = match event {
        NotifyEvent::AwaitingApproval => d.running_step().map(|s| s.detail.clone()).filter(|t| !t.is_empty()),
        _ => d.error.clone().filter(|t| !t.is_empty()),
    }?;
    text.lines().next().map(|l| l.trim().to_owned())
}

/// The request that tells `target` of `event`.
pub fn request(target: &NotifyTarget, d: &Deploy, event: NotifyEvent, link: Option<&str>) -> Request {
    let text = summary(d, event, link);
    let (body, content_type, headers) = match target.format {
        NotifyFormat::Json => (serde_json::to_vec(d).expect("a deploy serialises"), "application/json", Vec::new()),
        NotifyFormat::Slack => {
            (serde_json::to_vec(&json!({ "text": text })).expect("JSON"), "application/json", Vec::new())
        }
        NotifyFormat::Ntfy => {
            let urgent = matches!(event, NotifyEvent::Failed | NotifyEvent::RolledBack);
            let tags = match event {
                NotifyEvent::Succeeded => "white_check_mark",
                NotifyEvent::Failed => "x",
                NotifyEvent::RolledBack => "rewind",
                NotifyEvent::AwaitingApproval => "hourglass",
                NotifyEvent::Cancelled | NotifyEvent::Interrupted => "stop_sign",
            };
            let mut headers = vec![
                ("Title", format!("{} {}", d.app, event.as_str().replace('_', " "))),
                ("Priority", if urgent { "high" } else { "default" }.to_owned()),
                ("Tags", tags.to_owned()),
            ];
            if let Some(l) = link {
                headers.push(("Click", l.to_owned()));
            }
            (text.into_bytes(), "text/plain; charset=utf-8", headers)
        }
    };
    Request { url: target.url.clone(), headers, content_type, body }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeployId, Phase};

    fn deploy(phase: Phase, error: Option<&str>) -> Deploy {
        let mut d: Deploy = serde_json::from_value(json!({
            "deploy_id": DeployId::new().as_str(),
            "app": "hello",
            "phase": phase.as_str(),
            "trigger": {"source": "api", "delivery": null, "ref": "refs/heads/main", "requested_commit": null},
            "commit_before": null,
            "commit": "0123456789abcdef0123456789abcdef01234567",
            "created_at": "2026-01-01T00:00:00Z",
            "started_at": null,
            "finished_at": null,
            "steps": [],
            "images": {},
            "previous_images": {},
            "verify": null,
            "error": null
        }))
        .unwrap();
        d.error = error.map(str::to_owned);
        d
    }

    fn target(format: NotifyFormat) -> NotifyTarget {
        NotifyTarget {
            url: "https://hooks.example/x?token=t0ps3cret".into(),
            format,
            events: NotifyEvent::DEFAULT.to_vec(),
        }
    }

    #[test]
    fn json_posts_the_deploy_object_as_the_api_answers_it() {
        let d = deploy(Phase::Succeeded, None);
        let r = request(&target(NotifyFormat::Json), &d, NotifyEvent::Succeeded, None);
        assert_eq!(r.content_type, "application/json");
        let back: Deploy = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(back.deploy_id, d.deploy_id);
        assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&d).unwrap());
    }

    #[test]
    fn slack_posts_one_text_with_the_app_the_outcome_the_reason_and_the_link() {
        let d = deploy(Phase::RolledBack, Some("verify: web exited (status 1)\nmore"));
        let r = request(
            &target(NotifyFormat::Slack),
            &d,
            NotifyEvent::RolledBack,
            Some("https://deploy.example/api/v1/deploys/x"),
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let text = v["text"].as_str().unwrap();
        assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
        assert!(
            text.starts_with(&format!("hello: deploy {} was rolled back (commit 0123456789ab)", d.deploy_id)),
            "{text}"
        );
        assert!(text.contains(": verify: web exited (status 1) https://deploy.example/api/v1/deploys/x"), "{text}");
        assert!(!text.contains("more"), "{text}");
    }

    #[test]
    fn ntfy_gets_plain_text_and_high_priority_only_for_failures() {
        let d = deploy(Phase::Failed, Some("build failed"));
        let r = request(&target(NotifyFormat::Ntfy), &d, NotifyEvent::Failed, None);
        assert!(r.content_type.starts_with("text/plain"));
        assert!(String::from_utf8(r.body).unwrap().ends_with(": build failed"));
        assert!(r.headers.contains(&("Priority", "high".to_owned())));
        assert!(r.headers.contains(&("Title", "hello failed".to_owned())));
        let ok = request(&target(NotifyFormat::Ntfy), &deploy(Phase::Succeeded, None), NotifyEvent::Succeeded, None);
        assert!(ok.headers.contains(&("Priority", "default".to_owned())));
        assert!(ok.headers.contains(&("Tags", "white_check_mark".to_owned())));
    }

    #[test]
    fn only_the_phases_people_hear_of_are_events() {
        assert_eq!(event_of(Phase::Running), None);
        assert_eq!(event_of(Phase::Queued), None);
        assert_eq!(event_of(Phase::AwaitingApproval), Some(NotifyEvent::AwaitingApproval));
        assert_eq!(event_of(Phase::RolledBack), Some(NotifyEvent::RolledBack));
    }
}
