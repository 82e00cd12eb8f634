//! Watches recreated service containers until they prove themselves: each runs the expected image
//! ID, started after the recreate began, is running (and healthy, with a healthcheck), and stays
//! so for `stable_s` without a restart. Polls every 50 ms so a healthy container is reported at once;
//! a container that exits, restarts or turns unhealthy fails the watch without waiting out the
//! timeout.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::{ContainerInfo, Docker, DockerError};
use crate::model::{parse_time, Images, ProjectName, ServiceCheck, ServiceName, VerifyReport};

const POLL: Duration = Duration::from_millis(50);

/// How long to wait, and how long a container must hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    pub stable: Duration,
}

/// The watch's answer: the report for the deploy record, and why it failed if it did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub report: VerifyReport,
    pub failure: Option<String>,
}

enum Verdict {
    Ready,
    Waiting(String),
    Broken(String),
}

fn judge(c: &ContainerInfo, expected: &str, recreate_started_at: DateTime<Utc>) -> Verdict {
    if c.image != expected {
        return Verdict::Broken(format!("container {} runs image {}, expected {}", c.name, c.image, expected));
    }
    match parse_time(&c.started_at) {
        Some(t) if t > recreate_started_at => {}
        _ if c.state == "created" => return Verdict::Waiting(format!("container {} has not started yet", c.name)),
        _ => {
            return Verdict::Broken(format!(
                "container {} started at {}, before the recreate began: it was not recreated",
                c.name, c.started_at
            ))
        }
    }
    if c.restart_count > 0 || c.state == "restarting" {
        return Verdict::Broken(format!(
            "container {} restarted ({} restarts, state {})",
            c.name, c.restart_count, c.state
        ));
    }
    match c.state.as_str() {
        "running" => {}
        "created" => return Verdict::Waiting(format!("container {} has not started yet", c.name)),
        other => return Verdict::Broken(format!("container {} is {other}, not running", c.name)),
    }
    match c.health.as_str() {
        "none" | "healthy" => Verdict::Ready,
        "unhealthy" => Verdict::Broken(format!("container {} reports unhealthy", c.name)),
        other => Verdict::Waiting(format!("container {} health is {other}", c.name)),
    }
}

/// Watches `expected`'s services of `project` until they all hold for `limits.stable`, one of them
/// breaks, the timeout passes, or `cancel` fires.
pub async fn verify_services(
    docker: &Docker,
    project: &ProjectName,
    expected: &Images,
    recreate_started_at: &str,
    limits: Limits,
    cancel: &CancellationToken,
) -> Result<Outcome, DockerError> {
    let since = parse_time(recreate_started_at).unwrap_or_else(Utc::now);
    let deadline = Instant::now() + limits.timeout;
    let mut stable_since: Option<Instant> = None;
    // Containers are listed once; after that one `inspect` of their ids per poll is enough (a
    // restart keeps the id). A container that disappears makes the service be listed again.
    let mut known: BTreeMap<ServiceName, Vec<String>> = BTreeMap::new();
    loop {
        let mut checks = Vec::new();
        let mut waiting = None;
        let mut broken = None;
        let inspected = if known.len() == expected.len() {
            let ids: Vec<&str> = known.values().flatten().map(String::as_str).collect();
            docker.inspect_containers(&ids).await?
        } else {
            Vec::new()
        };
        for (service, image) in expected {
            let containers = match known.get(service) {
                Some(ids) if known.len() == expected.len() => {
                    let found: Vec<ContainerInfo> = inspected.iter().filter(|c| ids.contains(&c.id)).cloned().collect();
                    if found.len() < ids.len() {
                        known.remove(service);
                    }
                    found
                }
                _ => {
                    let listed = docker.service_containers(project, service).await?;
                    if !listed.is_empty() {
                        known.insert(service.clone(), listed.iter().map(|c| c.id.clone()).collect());
                    }
                    listed
                }
            };
            if containers.is_empty() {
                waiting.get_or_insert_with(|| format!("service {service} has no container"));
                checks.push(ServiceCheck {
                    service: service.clone(),
                    container_id: None,
                    expected_image: image.clone(),
                    running_image: None,
                    state: "missing".into(),
                    health: "none".into(),
                    started_at: None,
                });
            }
            for c in containers {
                match judge(&c, image.as_str(), since) {
                    Verdict::Ready => {}
                    Verdict::Waiting(why) => {
                        waiting.get_or_insert(why);
                    }
                    Verdict::Broken(why) => {
                        broken.get_or_insert(why);
                    }
                }
                checks.push(ServiceCheck {
                    service: service.clone(),
                    container_id: Some(c.id),
                    expected_image: image.clone(),
                    running_image: Some(c.image),
                    state: c.state,
                    health: c.health,
                    started_at: Some(c.started_at),
                });
            }
        }
        let report = |ok| VerifyReport { ok, recreate_started_at: recreate_started_at.to_owned(), services: checks };
        if let Some(why) = broken {
            return Ok(Outcome { report: report(false), failure: Some(why) });
        }
        let now = Instant::now();
        match waiting {
            None => {
                let held = now - *stable_since.get_or_insert(now);
                if held >= limits.stable {
                    return Ok(Outcome { report: report(true), failure: None });
                }
            }
            Some(why) => {
                stable_since = None;
                if now >= deadline {
                    let why = format!("not verified within {}s: {why}", limits.timeout.as_secs());
                    return Ok(Outcome { report: report(false), failure: Some(why) });
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = cancel.cancelled() => {
                return Err(DockerError::Run(crate::host::RunError::Cancelled { program: "verify".into() }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(state: &str, health: &str, started: &str, restarts: i64) -> ContainerInfo {
        ContainerInfo {
            id: "c1".into(),
            name: "app-web-1".into(),
            image: "sha256:new".into(),
            state: state.into(),
            health: health.into(),
            started_at: started.into(),
            restart_count: restarts,
            exit_code: 0,
        }
    }

    fn since() -> DateTime<Utc> {
        parse_time("2026-01-01T00:00:00Z").unwrap()
    }

    #[test]
    fn a_running_healthy_recreated_container_of_the_right_image_is_ready() {
        let c = container("running", "healthy", "2026-01-01T00:00:01.5Z", 0);
        assert!(matches!(judge(&c, "sha256:new", since()), Verdict::Ready));
    }

    #[test]
    fn a_container_of_another_image_is_broken() {
        let c = container("running", "none", "2026-01-01T00:00:01Z", 0);
        assert!(matches!(judge(&c, "sha256:old", since()), Verdict::Broken(_)));
    }

    #[test]
    fn a_container_started_before_the_recreate_is_broken() {
        let c = container("running", "none", "2025-12-31T23:59:59Z", 0);
        assert!(matches!(judge(&c, "sha256:new", since()), Verdict::Broken(_)));
    }

    #[test]
    fn starting_health_waits_and_unhealthy_or_exited_or_restarted_breaks() {
        let t = "2026-01-01T00:00:02Z";
        assert!(matches!(judge(&container("running", "starting", t, 0), "sha256:new", since()), Verdict::Waiting(_)));
        assert!(matches!(judge(&container("running", "unhealthy", t, 0), "sha256:new", since()), Verdict::Broken(_)));
        assert!(matches!(judge(&container("exited", "none", t, 0), "sha256:new", since()), Verdict::Broken(_)));
        assert!(matches!(judge(&container("running", "none", t, 2), "sha256:new", since()), Verdict::Broken(_)));
    }
}
