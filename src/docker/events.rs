//! The engine's container events for one Compose project, followed as they happen: one
//! long-lived `docker events` on the app's host (over SSH, one connection for as long as it is
//! followed), its lines handed on as they arrive. Verify waits on these instead of asking the
//! engine on a timer.
//!
//! Each event is printed as a small JSON object of the four fields verify reads, not as the
//! whole event (`{{json .}}`): a whole event carries every label of its container, which with a
//! reverse proxy's label set runs to kilobytes, and the host cuts long output lines.

use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{argv, Docker, ONEOFF_LABEL, PROJECT_LABEL, SERVICE_LABEL};
use crate::host::{Cmd, LogSink, Output, RunError, Stream};
use crate::model::ProjectName;

/// The actions that can change what verify judges; the engine is asked for these only (not the
/// `exec_*` events a healthcheck makes at every probe, nor attach, rename, ...).
pub const ACTIONS: &[&str] = &["start", "restart", "die", "oom", "pause", "unpause", "health_status", "destroy"];

/// One container event, as far as verify needs it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ContainerEvent {
    /// The container's full id.
    pub id: String,
    /// `start`, `die`, `health_status` (without the status after its colon), ...
    pub action: String,
    /// The container's `com.docker.compose.service` label ("" without one).
    #[serde(default)]
    pub service: String,
    /// Its `com.docker.compose.oneoff` label: `False` for the containers Compose creates for a
    /// service ("" without one).
    #[serde(default)]
    pub oneoff: String,
}

impl ContainerEvent {
    /// One line of the events command; None for anything else it might print.
    pub fn parse(line: &str) -> Option<Self> {
        let mut ev: ContainerEvent = serde_json::from_str(line.trim()).ok()?;
        // `health_status: healthy` and the like: the status is read by inspecting.
        if let Some((action, _)) = ev.action.split_once(':') {
            ev.action = action.trim().to_owned();
        }
        (!ev.id.is_empty()).then_some(ev)
    }
}

/// `docker events --format` for [`ContainerEvent`]: JSON, one object per line.
fn format() -> String {
    format!(
        "{{\"id\":{{{{json .Actor.ID}}}},\"action\":{{{{json .Action}}}},\
         \"service\":{{{{json (index .Actor.Attributes \"{SERVICE_LABEL}\")}}}},\
         \"oneoff\":{{{{json (index .Actor.Attributes \"{ONEOFF_LABEL}\")}}}}}}"
    )
}

/// The `docker events` argv for `project`'s containers from `since` until `until` (Unix seconds).
fn events_argv(project: &ProjectName, since: &str, until: i64) -> Vec<String> {
    let mut args = argv(["docker", "events", "--format", &format(), "--since", since, "--until", &until.to_string()]);
    args.extend(["--filter".to_owned(), "type=container".to_owned()]);
    args.extend(["--filter".to_owned(), format!("label={PROJECT_LABEL}={project}")]);
    for action in ACTIONS {
        args.extend(["--filter".to_owned(), format!("event={action}")]);
    }
    args
}

/// Hands each event line on to the watch as it is read.
struct Forward(mpsc::UnboundedSender<ContainerEvent>);

impl LogSink for Forward {
    fn line(&self, stream: Stream, text: &str) {
        if stream == Stream::Stdout {
            if let Some(ev) = ContainerEvent::parse(text) {
                let _ = self.0.send(ev);
            }
        }
    }
}

/// Events as the engine reports them. Dropping it stops the command (its process group, or the
/// SSH connection, is killed).
pub struct EventStream {
    rx: mpsc::UnboundedReceiver<ContainerEvent>,
    run: Option<tokio::task::JoinHandle<Result<Output, RunError>>>,
    _stop: DropGuard,
}

impl EventStream {
    /// The next event; None once the command has ended (see [`Self::ended`] for why).
    pub async fn next(&mut self) -> Option<ContainerEvent> {
        self.rx.recv().await
    }

    /// An event already received, without waiting.
    pub fn try_next(&mut self) -> Option<ContainerEvent> {
        self.rx.try_recv().ok()
    }

    /// Why the command ended, in a few words, once [`Self::next`] returned None.
    pub async fn ended(&mut self) -> String {
        let Some(run) = self.run.take() else { return "it ended".into() };
        match run.await {
            Ok(Ok(out)) if out.success() => "docker events ended".into(),
            Ok(Ok(out)) => format!(
                "docker events exited with {}: {}",
                out.code.map_or("a signal".into(), |c| format!("status {c}")),
                out.last_line()
            ),
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("docker events stopped: {e}"),
        }
    }
}

impl Docker {
    /// Follows the events of `project`'s containers, starting with those since `since` (RFC 3339;
    /// the engine replays what it still holds), for at most `within`: the command also ends on
    /// its own then (`--until`), so it cannot outlive its reader on a remote host.
    pub fn container_events(&self, project: &ProjectName, since: &str, within: Duration) -> EventStream {
        let until = chrono::Utc::now().timestamp() + within.as_secs() as i64 + 1;
        let cmd = Cmd::new(events_argv(project, since, until)).timeout(within + Duration::from_secs(30));
        let host = self.host.clone();
        let stop = CancellationToken::new();
        let (tx, rx) = mpsc::unbounded_channel();
        let token = stop.clone();
        let run = tokio::spawn(async move { host.run(&cmd, &token, &Forward(tx)).await });
        EventStream { rx, run: Some(run), _stop: stop.drop_guard() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_line_of_the_format_parses_and_a_health_status_loses_its_status() {
        let line = r#"{"id":"5b63f5","action":"health_status: healthy","service":"web","oneoff":"False"}"#;
        let ev = ContainerEvent::parse(line).unwrap();
        assert_eq!(ev.id, "5b63f5");
        assert_eq!(ev.action, "health_status");
        assert_eq!((ev.service.as_str(), ev.oneoff.as_str()), ("web", "False"));
        let bare = ContainerEvent::parse(r#"{"id":"c1","action":"die","service":"","oneoff":""}"#).unwrap();
        assert_eq!((bare.action.as_str(), bare.service.as_str()), ("die", ""));
    }

    #[test]
    fn anything_else_on_the_stream_is_no_event() {
        assert_eq!(ContainerEvent::parse(""), None);
        assert_eq!(ContainerEvent::parse("Error response from daemon: bad filter"), None);
        assert_eq!(ContainerEvent::parse(r#"{"id":"","action":"start"}"#), None);
        assert_eq!(ContainerEvent::parse(r#"{"action":"start"}"#), None);
    }

    #[test]
    fn the_format_is_a_go_template_printing_one_json_object() {
        assert_eq!(
            format(),
            "{\"id\":{{json .Actor.ID}},\"action\":{{json .Action}},\
             \"service\":{{json (index .Actor.Attributes \"com.docker.compose.service\")}},\
             \"oneoff\":{{json (index .Actor.Attributes \"com.docker.compose.oneoff\")}}}"
        );
    }

    #[test]
    fn the_command_asks_only_for_the_project_s_containers_and_the_actions_verify_reads() {
        let project = ProjectName::parse("shop").unwrap();
        let args = events_argv(&project, "2026-01-01T00:00:00.000001Z", 1_800_000_000);
        let joined = args.join(" ");
        assert!(args.starts_with(&argv(["docker", "events", "--format"])));
        assert!(joined.contains("--since 2026-01-01T00:00:00.000001Z --until 1800000000"));
        assert!(joined.contains("--filter type=container --filter label=com.docker.compose.project=shop"));
        for action in ACTIONS {
            assert!(joined.contains(&format!("--filter event={action}")), "{action}");
        }
        assert!(!joined.contains("exec_"));
    }
}
