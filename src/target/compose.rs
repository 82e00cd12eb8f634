//! Docker Compose on a host as a [`Target`]: the project and files as Compose itself resolves
//! them in the checkout, `compose build`, a detached `compose up --no-deps --force-recreate` of
//! services whose image tags were first pointed at the exact IDs, and the verify watch over the
//! containers Compose created for them.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{Container, Limits, Plan, Started, Target, TargetError, Targets, Verified};
use crate::config::AppConfig;
use crate::docker::compose::Compose;
use crate::docker::watch;
use crate::host::{Host, LogSink, ProcessRef, RunError, Stream};
use crate::model::{parse_time, ImageId, Images, ProjectName, ServiceName};
use std::collections::BTreeMap;

/// How long one `compose up` may take before it is killed.
const APPLY_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// One app's Compose project on its host.
pub struct ComposeTarget {
    /// The project is fixed by the first [`Target::resolve`] (or given).
    compose: Mutex<Compose>,
    /// Where the detached `compose up` writes its output.
    output: PathBuf,
    /// The image names the last resolve or build read from the checkout.
    names: Mutex<std::collections::BTreeMap<ServiceName, String>>,
}

impl ComposeTarget {
    /// `project` and `files` as the registry (or an earlier resolve) gives them; None: Compose's own.
    pub fn new(
        host: Host,
        repo: PathBuf,
        project: Option<ProjectName>,
        files: Option<Vec<String>>,
        output: PathBuf,
    ) -> Self {
        let compose = Compose::new(host, repo, project, files);
        Self { compose: Mutex::new(compose), output, names: Mutex::default() }
    }

    fn compose(&self) -> Compose {
        self.compose.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The services' image names: as the last resolve or build read them (the checkout has not
    /// moved since, or the caller resolved again), else read now.
    async fn image_names(
        &self,
        services: &[ServiceName],
        log: &dyn LogSink,
    ) -> Result<std::collections::BTreeMap<ServiceName, String>, TargetError> {
        let known = self.names.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if services.iter().all(|s| known.contains_key(s)) {
            return Ok(known);
        }
        let resolved = self.compose().resolve(&CancellationToken::new(), log).await?;
        let names = Compose::image_names(&resolved, services)?;
        self.remember(&names);
        Ok(names)
    }

    fn remember(&self, names: &std::collections::BTreeMap<ServiceName, String>) {
        *self.names.lock().unwrap_or_else(|e| e.into_inner()) = names.clone();
    }
}

/// A [`ComposeTarget`] per deploy, its detached `compose up` writing to `<runs_dir>/<deploy>.log`.
pub struct ComposeTargets {
    pub runs_dir: PathBuf,
}

impl Targets for ComposeTargets {
    fn target(&self, app: &AppConfig, project: Option<ProjectName>, run: &str, host: Host) -> Arc<dyn Target> {
        Arc::new(ComposeTarget::new(
            host,
            app.repo.clone(),
            project.or_else(|| app.project.clone()),
            app.compose_files.clone(),
            self.runs_dir.join(format!("{run}.log")),
        ))
    }
}

#[async_trait]
impl Target for ComposeTarget {
    async fn resolve(
        &self,
        services: &[ServiceName],
        cancel: &CancellationToken,
        log: &dyn LogSink,
    ) -> Result<Plan, TargetError> {
        let resolved = self.compose().resolve(cancel, log).await?;
        // A service that is missing or has nothing to build is the build's failure to report,
        // in its words; resolving only says what the checkout gives.
        let image_names = Compose::image_names(&resolved, services).unwrap_or_default();
        self.remember(&image_names);
        let mut compose = self.compose.lock().unwrap_or_else(|e| e.into_inner());
        *compose = compose.clone().with_project(resolved.project.clone());
        Ok(Plan { project: resolved.project, files: resolved.files, image_names, unset: resolved.unset })
    }

    async fn build(
        &self,
        services: &[ServiceName],
        cancel: &CancellationToken,
        log: &dyn LogSink,
    ) -> Result<Images, TargetError> {
        let compose = self.compose();
        // Reading the configuration (for the image names) does not depend on the build, so both
        // run at once; a configuration error is the clearer of the two when both fail.
        let (resolved, built) = tokio::join!(compose.resolve(cancel, log), compose.build(services, cancel, log));
        let names = match (resolved, built) {
            (Err(e), _) | (Ok(_), Err(e)) => return Err(e.into()),
            (Ok(resolved), Ok(())) => Compose::image_names(&resolved, services)?,
        };
        self.remember(&names);
        // Read each tag right after the build, so the ID is this build's; from here on only the ID is used.
        let docker = compose.docker();
        let mut images = Images::new();
        for (service, name) in names {
            let id = docker.image_id(&name).await?;
            log.line(Stream::Info, &format!("built {service}: {name} = {id}"));
            images.insert(service, id);
        }
        Ok(images)
    }

    async fn snapshot(&self, services: &[ServiceName]) -> Result<Images, TargetError> {
        let compose = self.compose();
        let docker = compose.docker();
        let mut running = Images::new();
        for service in services {
            let containers = docker.service_containers(compose.project(), service).await?;
            let c = containers.iter().find(|c| c.state == "running").or(containers.first());
            if let Some(id) = c.and_then(|c| ImageId::parse(&c.image).ok()) {
                running.insert(service.clone(), id);
            }
        }
        Ok(running)
    }

    async fn apply(
        &self,
        images: &Images,
        started: Started<'_>,
        stop: &CancellationToken,
        log: &dyn LogSink,
    ) -> Result<(), TargetError> {
        let services: Vec<ServiceName> = images.keys().cloned().collect();
        // Not stopped by shutdown: the recreate these prepare must be all or nothing.
        let names = self.image_names(&services, log).await?;
        let compose = self.compose();
        let docker = compose.docker();
        for (service, id) in images {
            docker.tag(id, &names[service]).await?;
        }
        let detached = compose.start_recreate(&services, &self.output, log).await?;
        started(detached.process().to_string());
        match detached.wait(self.compose().host().redactor(), APPLY_TIMEOUT, stop, log).await {
            Ok(out) => {
                let _ = std::fs::remove_file(&self.output);
                if out.success() {
                    Ok(())
                } else {
                    Err(TargetError::Failed(format!("docker compose up failed: {}", out.last_line())))
                }
            }
            // Shutdown: the recreate goes on without this process.
            Err(RunError::Cancelled { .. }) => Err(TargetError::Stopped),
            Err(e) => Err(TargetError::Failed(e.to_string())),
        }
    }

    async fn wait_applied(&self, process: &str, log: &dyn LogSink) {
        let Some(p) = ProcessRef::parse(process) else { return };
        if p.is_alive() {
            log.line(Stream::Info, &format!("waiting for the recreate started before the restart (process {})", p.pid));
            if !p.wait_gone(APPLY_TIMEOUT).await {
                // Two `compose up` of one app at once would fight: the overdue one goes.
                log.line(Stream::Info, &format!("the recreate process {} still runs: killing it", p.pid));
                p.kill_group();
            }
        }
        // What it printed after the process that followed it died is still in its file.
        if self.output.exists() {
            log.line(Stream::Info, "the output of the recreate started before the restart, whole:");
            crate::host::replay_output(&self.output, self.compose().host().redactor(), log);
            let _ = std::fs::remove_file(&self.output);
        }
    }

    async fn runs(&self, images: &Images, since: &str) -> Result<bool, TargetError> {
        let compose = self.compose();
        let docker = compose.docker();
        let since = parse_time(since);
        for (service, id) in images {
            let containers = docker.service_containers(compose.project(), service).await?;
            let ok = !containers.is_empty()
                && containers.iter().all(|c| {
                    c.image == id.as_str()
                        && c.state == "running"
                        && since.is_some_and(|s| parse_time(&c.started_at) > Some(s))
                });
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn verify(
        &self,
        images: &Images,
        since: &str,
        limits: Limits,
        cancel: &CancellationToken,
        log: &dyn LogSink,
    ) -> Result<Verified, TargetError> {
        let compose = self.compose();
        let limits = watch::Limits { timeout: limits.timeout, stable: limits.stable };
        let o =
            watch::verify_services(&compose.docker(), compose.project(), images, since, limits, cancel, log).await?;
        Ok(Verified { report: o.report, failure: o.failure })
    }

    async fn restore(&self, snapshot: &Images, log: &dyn LogSink) -> Result<(), TargetError> {
        let services: Vec<ServiceName> = snapshot.keys().cloned().collect();
        let names = self.image_names(&services, log).await?;
        let docker = self.compose().docker();
        for (service, id) in snapshot {
            docker.tag(id, &names[service]).await?;
            log.line(Stream::Info, &format!("{} points at {} again, the image that runs", names[service], id.short()));
        }
        Ok(())
    }

    async fn containers(&self, services: &[ServiceName]) -> Result<BTreeMap<ServiceName, Vec<Container>>, TargetError> {
        if !self.compose().has_project() {
            self.resolve(services, &CancellationToken::new(), &crate::host::NoLog).await?;
        }
        let compose = self.compose();
        // Two commands for the whole project, however many services.
        let all = compose.docker().project_containers(compose.project()).await?;
        let mut by_service: BTreeMap<ServiceName, Vec<Container>> =
            services.iter().map(|s| (s.clone(), Vec::new())).collect();
        for c in all {
            let Some(list) = c.service.as_deref().and_then(|s| by_service.iter_mut().find(|(k, _)| k.as_str() == s))
            else {
                continue;
            };
            list.1.push(Container {
                id: c.id,
                name: c.name,
                image: c.image,
                state: c.state,
                health: c.health,
                started_at: c.started_at,
            });
        }
        Ok(by_service)
    }

    fn use_secrets(&self, vars: &[(String, String)]) {
        let mut compose = self.compose.lock().unwrap_or_else(|e| e.into_inner());
        *compose = compose.clone().with_secret_env(vars);
    }

    async fn run_oneoff(
        &self,
        service: &ServiceName,
        command: &[String],
        timeout: Duration,
        cancel: &CancellationToken,
        log: &dyn LogSink,
    ) -> Result<(), TargetError> {
        Ok(self.compose().run_oneoff(service, command, timeout, cancel, log).await?)
    }
}
