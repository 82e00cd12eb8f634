//! What runs now, compared with what the last successful deploy verified: the answer of
//! `runtime-status`, and its `drift` flag.

use crate::config::AppConfig;
use tokio_util::sync::CancellationToken;

use crate::docker::compose::Compose;
use crate::docker::{Docker, DockerError};
use crate::git::Git;
use crate::host::{Host, NoLog, Redactor};
use crate::model::{ContainerStatus, Deploy, RuntimeStatus, ServiceStatus};

/// Reads the live state of `app`'s services. `last_deploy` is shown as is; drift is judged
/// against `last_succeeded`: a service whose containers do not all run its verified image,
/// running and not unhealthy (or still starting), or that has none, has drifted.
pub async fn runtime_status(
    app: &AppConfig,
    redactor: &Redactor,
    last_deploy: Option<Deploy>,
    last_succeeded: Option<&Deploy>,
) -> Result<RuntimeStatus, DockerError> {
    let host = Host::new(app.host.clone(), redactor.clone());
    let docker = Docker::new(host.clone());
    let git_head = Git::new(host.clone(), app.repo.clone()).head().await.ok().map(|c| c.to_string());
    // The project a deploy resolved; else the registry's; else what Compose resolves now.
    let recorded = last_deploy.as_ref().and_then(|d| d.project.clone()).or_else(|| app.project.clone());
    let project = match recorded {
        Some(p) => p,
        None => {
            let compose = Compose::new(host.clone(), app.repo.clone(), None, app.compose_files.clone());
            compose.resolve(&CancellationToken::new(), &NoLog).await?.project
        }
    };
    let mut services = Vec::new();
    let mut drift = false;
    for service in &app.services {
        let expected = last_succeeded.and_then(|d| d.images.get(service));
        let containers = docker.service_containers(&project, service).await?;
        if containers.is_empty() && last_succeeded.is_some() {
            drift = true;
        }
        let containers: Vec<ContainerStatus> = containers
            .into_iter()
            .map(|c| {
                let matches = expected.is_some_and(|e| e.as_str() == c.image)
                    && c.state == "running"
                    && matches!(c.health.as_str(), "none" | "healthy");
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
