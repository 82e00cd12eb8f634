//! The deploy target: the runtime an app's services run on, as the pipeline sees it. The steps
//! talk to it through [`Target`] alone — build, snapshot what runs, apply exact images, watch them
//! (verify), restore a snapshot's tags, one-off runs — and never name a runtime's command.
//! [`compose`] is Docker Compose on a host (local or over OpenSSH); a second runtime (Docker Swarm
//! services) would be one more module beside it. [`fake`] is an in-memory target for the
//! pipeline's unit tests.

pub mod compose;
pub mod fake;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::config::AppConfig;
use crate::host::{Host, LogSink, RunError};
use crate::model::{CommitSha, Deploy, DeployId, ImageId, Images, ProjectName, ServiceName, VerifyReport};
use crate::store::Store;

/// What the checkout at hand deploys, as the runtime reads it.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The project the services belong to (Compose's project name).
    pub project: ProjectName,
    /// The configuration files read, relative to the checkout.
    pub files: Vec<String>,
    /// The image name each service builds to.
    pub image_names: BTreeMap<ServiceName, String>,
    /// Variables the configuration uses that nobody set (the runtime took them as empty).
    pub unset: Vec<String>,
}

/// How long verify may take, and how long the services must hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    pub stable: Duration,
}

/// What verify saw, and why it failed if it did.
#[derive(Debug, Clone)]
pub struct Verified {
    pub report: VerifyReport,
    pub failure: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Cancel or shutdown stopped it; an apply left running goes on without the caller.
    #[error("stopped")]
    Stopped,
    #[error("{0}")]
    Failed(String),
}

impl From<crate::docker::DockerError> for TargetError {
    fn from(e: crate::docker::DockerError) -> Self {
        match e {
            crate::docker::DockerError::Run(RunError::Cancelled { .. }) => TargetError::Stopped,
            e => TargetError::Failed(e.to_string()),
        }
    }
}

/// Told the process that applies images, as soon as it runs: recorded so that a restarted server
/// can wait for it.
pub type Started<'a> = &'a (dyn Fn(String) + Send + Sync);

/// An app's runtime. Every method works on the app's checkout as it is now (git is the caller's).
#[async_trait]
pub trait Target: Send + Sync {
    /// Reads the checkout's configuration: the project, the files, each service's image name.
    /// From then on the target works on that project.
    async fn resolve(
        &self,
        services: &[ServiceName],
        cancel: &CancellationToken,
        log: &dyn LogSink,
    ) -> Result<Plan, TargetError>;

    /// Builds `services`; the image ID each one built.
    async fn build(
        &self,
        services: &[ServiceName],
        cancel: &CancellationToken,
        log: &dyn LogSink,
    ) -> Result<Images, TargetError>;

    /// The image each of `services` runs now; one with nothing running is left out.
    async fn snapshot(&self, services: &[ServiceName]) -> Result<Images, TargetError>;

    /// Makes exactly `images` run, with the checkout's configuration, and waits for it. What does
    /// it outlives the caller: `stop` returns [`TargetError::Stopped`] and leaves it going.
    async fn apply(
        &self,
        images: &Images,
        started: Started<'_>,
        stop: &CancellationToken,
        log: &dyn LogSink,
    ) -> Result<(), TargetError>;

    /// Waits for an apply a previous process started (`process` as `started` was told), then
    /// hands on what it printed.
    async fn wait_applied(&self, process: &str, log: &dyn LogSink);

    /// Whether every one of `images`' services runs its image, started after `since`.
    async fn runs(&self, images: &Images, since: &str) -> Result<bool, TargetError>;

    /// Watches `images`' services, recreated after `since`, until they hold for `limits.stable`
    /// or one breaks, or `limits.timeout` passes.
    async fn verify(
        &self,
        images: &Images,
        since: &str,
        limits: Limits,
        cancel: &CancellationToken,
        log: &dyn LogSink,
    ) -> Result<Verified, TargetError>;

    /// Points the services' image names back at `snapshot`'s images, without recreating anything:
    /// a deploy that ends before its recreate leaves the names as it found them.
    async fn restore(&self, snapshot: &Images, log: &dyn LogSink) -> Result<(), TargetError>;

    /// Every container of each of `services`, running or not (none: an empty list).
    async fn containers(&self, services: &[ServiceName]) -> Result<BTreeMap<ServiceName, Vec<Container>>, TargetError>;

    /// From now on, gives `vars` (a vault's values) to every build, apply and one-off run as
    /// environment — never in an argv, a file or a log line — and redacts their values from the
    /// output it hands on.
    fn use_secrets(&self, vars: &[(String, String)]);

    /// Runs `command` in a one-off container of `service` from the image just built.
    async fn run_oneoff(
        &self,
        service: &ServiceName,
        command: &[String],
        timeout: Duration,
        cancel: &CancellationToken,
        log: &dyn LogSink,
    ) -> Result<(), TargetError>;
}

/// Makes the target a deploy (or a runtime-status read) works on, so a runtime is chosen in one
/// place ([`compose::ComposeTargets`] in the server, [`fake::FakeTargets`] in unit tests).
pub trait Targets: Send + Sync {
    /// The runtime of `app`'s services on `host`. `project`: as a deploy resolved it (None: the
    /// registry's, else the runtime's own). `run` names what a detached apply writes its output to.
    fn target(
        &self,
        app: &AppConfig,
        project: Option<ProjectName>,
        run: &str,
        host: Host,
    ) -> std::sync::Arc<dyn Target>;
}

/// One container of a service, as the runtime reports it.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub image: String,
    pub state: String,
    pub health: String,
    pub started_at: String,
}

/// What a handoff of kua-deploy's own recreate needs of the deploy.
pub struct HandOffRequest<'a> {
    pub store: &'a Store,
    pub id: &'a DeployId,
    pub app: &'a AppConfig,
    /// The project the deploy resolved.
    pub project: ProjectName,
    /// The commit whose configuration ran before: a rollback returns the checkout to it.
    pub previous_commit: Option<CommitSha>,
    /// The local host, with the server's redaction and secret variables kept out.
    pub host: Host,
    pub image: ImageId,
    pub previous: Option<ImageId>,
    pub recreate_started_at: String,
    pub cancel: &'a CancellationToken,
    pub log: &'a dyn LogSink,
}

/// How a handoff ended for the process that asked for it.
#[derive(Debug)]
pub enum HandOffEnd {
    /// This process is being replaced: the one that comes back ends the deploy.
    Replaced,
    /// The handoff did not happen; the deploy is `running` again, with this reason.
    Failed(String),
}

/// Recreating kua-deploy's own service kills the process doing it: the recreate is handed to
/// something that outlives it (for Compose, `selfupdate`'s transient container), which the
/// deploy is marked as handed to through the store's lifecycle.
#[async_trait]
pub trait SelfHandOff: Send + Sync {
    /// kua-deploy's own service.
    fn service(&self) -> &ServiceName;

    async fn hand_off(&self, req: HandOffRequest<'_>) -> HandOffEnd;
}

/// kua-deploy's own container, as the process that came back after a handoff sees it.
#[derive(Debug, Clone)]
pub struct SelfRuns {
    pub service: ServiceName,
    pub container_id: String,
    pub image: String,
    pub state: String,
    pub health: String,
    pub started_at: String,
}

/// What the process that came back after a handoff finds.
#[derive(Debug, Clone)]
pub struct HandOffSeen {
    /// The transient container's exit status (0 verified, 1 rolled back, else neither); None: it
    /// left none (removed before it was read).
    pub verdict: Option<i64>,
    /// kua-deploy's own container; None: this process runs outside the self app's container.
    pub own: Option<SelfRuns>,
}

/// Reads the outcome of a handoff, for the process that came back: the pipeline's completion
/// judges it and ends the deploy.
#[async_trait]
pub trait HandOffWitness: Send + Sync {
    /// Waits, at most `limit`, for what took `deploy`'s recreate over to end, hands on what it
    /// printed, and looks at kua-deploy's own container. `Err`: why nothing can be judged (it did
    /// not end in time, the own container cannot be read).
    async fn seen(&self, deploy: &Deploy, limit: Duration, log: &dyn LogSink) -> Result<HandOffSeen, String>;
}
