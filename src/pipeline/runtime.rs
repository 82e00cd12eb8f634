//! What runs now, compared with what the last successful deploy verified: the answer of
//! `runtime-status`, and its `drift` flag. Read through the app's deploy target.

use crate::config::AppConfig;
use crate::git::Git;
use crate::host::{Host, Redactor};
use crate::model::{ContainerStatus, Deploy, RuntimeStatus, ServiceStatus};
use crate::target::{Target, TargetError};

/// Why the runtime of an app could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the state database fails ({0}); GET /healthz says what")]
    Store(#[from] rusqlite::Error),
    #[error(transparent)]
    Target(#[from] TargetError),
}

/// Reads the live state of `app`'s services through `target` (working on the project the last
/// deploy resolved, else the registry's, else the runtime's own). `last_deploy` is shown as is;
/// drift is judged against `last_succeeded`: a service whose containers do not all run its
/// verified image, running and not unhealthy (or still starting), or that has none, has drifted.
pub async fn runtime_status(
    app: &AppConfig,
    target: &dyn Target,
    redactor: &Redactor,
    last_deploy: Option<Deploy>,
    last_succeeded: Option<&Deploy>,
) -> Result<RuntimeStatus, TargetError> {
    let host = Host::new(app.host.clone(), redactor.clone());
    let git_head = Git::new(host.clone(), app.repo.clone()).head().await.ok().map(|c| c.to_string());
    let mut by_service = target.containers(&app.services).await?;
    let mut services = Vec::new();
    let mut drift = false;
    for service in &app.services {
        let expected = last_succeeded.and_then(|d| d.images.get(service));
        let containers = by_service.remove(service).unwrap_or_default();
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
