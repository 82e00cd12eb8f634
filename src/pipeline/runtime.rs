//! What runs now, compared with what the last successful deploy verified: the answer of
//! `runtime-status`, and its `drift` flag.

use crate::config::AppConfig;
use crate::docker::{Docker, DockerError};
use crate::git::Git;
use crate::host::{Host, Redactor};
use crate::model::{ContainerStatus, Deploy, RuntimeStatus, ServiceStatus};

/// Reads the live state of `app`'s services. `last_deploy` is shown as is; drift is judged
/// against `last_succeeded`: a service whose containers do not all run its verified image, or
/// that has none, has drifted.
pub async fn runtime_status(
    app: &AppConfig,
    redactor: &Redactor,
    last_deploy: Option<Deploy>,
    last_succeeded: Option<&Deploy>,
) -> Result<RuntimeStatus, DockerError> {
    let host = Host::new(app.host.clone(), redactor.clone());
    let docker = Docker::new(host.clone());
    let git_head = Git::new(host.clone(), app.repo.clone()).head().await.ok().map(|c| c.to_string());
    let mut services = Vec::new();
    let mut drift = false;
    for service in &app.services {
        let expected = last_succeeded.and_then(|d| d.images.get(service));
        let containers = docker.service_containers(&app.project, service).await?;
        if containers.is_empty() && last_succeeded.is_some() {
            drift = true;
        }
        let containers: Vec<ContainerStatus> = containers
            .into_iter()
            .map(|c| {
                let matches = expected.is_some_and(|e| e.as_str() == c.image) && c.state == "running";
                if last_succeeded.is_some() && !matches {
                    drift = true;
                }
                ContainerStatus {
                    id: c.id,
                    name: c.name,
                    image: c.image,
                    state: c.state,
                    health: c.health,
                    started_at: c.started_at,
                    matches_last_deploy: matches,
                }
            })
            .collect();
        services.push(ServiceStatus { service: service.to_string(), containers });
    }
    Ok(RuntimeStatus { app: app.name.clone(), host: host.label(), git_head, last_deploy, services, drift })
}
